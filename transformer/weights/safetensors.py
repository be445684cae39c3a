"""Read a safetensors file (https://github.com/huggingface/safetensors, format in its README:
8-byte little-endian header size, JSON header of dtype/shape/offsets, then raw little-endian data)
through the safetensors library, one tensor at a time (`safe_open`): every tensor is a
transformer.weights.lazy.Lazy read when the model places it. Floating tensors (F64, F32, F16,
BF16) become float32 as they are read; integer buffers (e.g. BERT's position_ids) stay as
stored. NumPy has no bfloat16, so a BF16 tensor is read from the file's memory map at the
offsets of its header (checked against the file by the library first) and widened: float32 bits
= bf16 bits << 16, exact."""
import json
import os
import struct

import numpy as np

from .lazy import Lazy
from .mapping import WeightsError

FLOATS = {"F64", "F32", "F16", "BF16"}
INTEGERS = {"I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64,
            "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}


def _corrupt(path, e):
    return WeightsError(f"cannot read {path}: truncated or corrupt safetensors file ({e})")


def open_safetensors(path):
    """Every tensor of the safetensors file at `path`, as {name: Lazy} (see the module
    docstring), nothing read but the header.

    Raises FileNotFoundError for a missing file and WeightsError for a truncated or corrupt one
    (the library checks the header against the file size before any data is read); a tensor of
    a dtype other than the floats and integers above raises WeightsError naming it when read."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        f = safe_open(path, framework="numpy")
        specs = {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape()))
                 for name in f.keys()}
    except (SafetensorError, ValueError, OSError, TypeError, OverflowError) as e:
        raise _corrupt(path, e)  # bad header, short file
    except BaseException as e:  # the library's Rust panics (pyo3 PanicException)
        if type(e).__name__ != "PanicException":
            raise
        raise _corrupt(path, e)
    header = None
    if any(dtype == "BF16" for dtype, _ in specs.values()):
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n)), 8 + n

    def reader(name, dtype, shape):
        if dtype == "BF16":
            meta, base = header
            begin = meta[name]["data_offsets"][0]

            def read():
                bits = np.memmap(path, np.dtype("<u2"), "r", base + begin, shape)
                return (bits.astype(np.uint32) << 16).view(np.float32)
            return read

        def read():
            try:
                a = f.get_tensor(name)
            except Exception as e:  # a dtype NumPy lacks (F8_*), or the file changed
                raise WeightsError(f"{path}: tensor {name} of dtype {dtype} cannot be read "
                                   f"(floats {sorted(FLOATS)} and integers are): {e}")
            return a.astype(np.float32) if dtype in FLOATS else a
        return read

    return {name: Lazy(shape, INTEGERS.get(dtype, np.float32), reader(name, dtype, shape),
                       name=name) for name, (dtype, shape) in specs.items()}
