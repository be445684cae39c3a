"""Read a safetensors file (https://github.com/huggingface/safetensors, format in its README:
8-byte little-endian header size, JSON header of dtype/shape/offsets, then raw little-endian data)
through the safetensors library, into float32 NumPy arrays."""
import os

import numpy as np

from .mapping import WeightsError


def read_safetensors(path, dtype=np.float32):
    """Every tensor of the safetensors file at `path`, as {name: ndarray}. Floating tensors become
    `dtype` (float32 by default); integer buffers (e.g. BERT's position_ids) stay as stored.

    Raises FileNotFoundError for a missing file and WeightsError for a truncated or corrupt one
    (the library checks the header against the file size before any data is read)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        tensors = load_file(path)
    except (SafetensorError, ValueError, OSError, TypeError, OverflowError) as e:
        # bad header, short file, odd dtype
        raise WeightsError(f"cannot read {path}: truncated or corrupt safetensors file ({e})")
    except BaseException as e:  # the library's Rust panics (pyo3 PanicException)
        if type(e).__name__ != "PanicException":
            raise
        raise WeightsError(f"cannot read {path}: truncated or corrupt safetensors file ({e})")
    return {name: (t.astype(dtype) if np.issubdtype(t.dtype, np.floating) else t)
            for name, t in tensors.items()}
