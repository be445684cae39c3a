"""Read a safetensors file (https://github.com/huggingface/safetensors, format in its README:
8-byte little-endian header size, JSON header of dtype/shape/offsets, then raw little-endian data)
one tensor at a time: the safetensors library (`safe_open`) checks the header against the file
and lists names, dtypes and shapes; every tensor is a transformer.weights.lazy.Lazy read when the
model places it (2-D ones also a chunk of rows at a time), with plain file reads at the offsets of
the header, not through a memory map, so that what was read leaves the process's resident set
once converted. Floating tensors (F64, F32, F16, BF16) become float32 as they are read (BF16,
which NumPy lacks: float32 bits = bf16 bits << 16, exact); integer buffers (e.g. BERT's
position_ids) stay as stored."""
import json
import os
import struct

import numpy as np

from .lazy import Lazy
from .mapping import WeightsError

FLOATS = {"F64", "F32", "F16", "BF16"}
# safetensors dtype -> the little-endian NumPy dtype of its bytes (BF16: the bits, widened)
STORED = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
          "BOOL": "?"}
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
    with open(path, "rb") as fh:  # the header the library has just checked against the file
        (n,) = struct.unpack("<Q", fh.read(8))
        offsets = {k: v["data_offsets"][0] + 8 + n
                   for k, v in json.loads(fh.read(n)).items() if k != "__metadata__"}

    def rows(name, dtype, shape):
        """(start, stop) -> rows [start, stop) of the tensor, read with plain file reads (no
        memory map, so that pages already read do not stay in the process's resident set)."""
        stored = np.dtype(STORED.get(dtype, "u1"))
        row = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1

        def read_rows(start, stop):
            if dtype not in STORED:
                raise WeightsError(f"{path}: tensor {name} of dtype {dtype} cannot be read "
                                   f"(floats {sorted(FLOATS)} and integers are)")
            count = (stop - start) * row
            with open(path, "rb") as fh:
                fh.seek(offsets[name] + start * row * stored.itemsize)
                a = np.fromfile(fh, stored, count)
            if a.size != count:
                raise WeightsError(f"{path}: tensor {name} is truncated")
            a = a.reshape((stop - start,) + tuple(shape[1:]))
            if dtype == "BF16":
                return (a.astype(np.uint32) << 16).view(np.float32)
            return a.astype(np.float32, copy=False) if dtype in FLOATS else a
        return read_rows

    def cols(name, dtype, shape):
        """(start, stop) -> columns [start, stop) of a 2-D float tensor: a strided read through
        a memory map of the tensor alone, unmapped at once (its pages leave the resident set)."""
        def read_cols(start, stop):
            m = np.memmap(path, np.dtype(STORED[dtype]), "r", offsets[name], shape)
            a = np.array(m[:, start:stop])
            del m
            if dtype == "BF16":
                return (a.astype(np.uint32) << 16).view(np.float32)
            return a.astype(np.float32, copy=False)
        return read_cols

    def lazy(name, dtype, shape):
        read_rows = rows(name, dtype, shape)
        n = shape[0] if shape else 1

        def read():
            return read_rows(0, n).reshape(shape)
        matrix = len(shape) == 2 and dtype in FLOATS
        return Lazy(shape, INTEGERS.get(dtype, np.float32), read, name=name,
                    read_rows=read_rows if matrix else None,
                    read_cols=cols(name, dtype, shape) if matrix and all(shape) else None)

    return {name: lazy(name, dtype, shape) for name, (dtype, shape) in specs.items()}
