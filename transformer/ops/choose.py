"""Which backend object runs: `backend(device, dtype, threads)` for a model at placement,
`backend_for(array, threads)` for the op fronts (where the operands live). Each object is built
once per (device, dtype, threads) and shared. The objects themselves and their interface:
transformer.ops.backend; this module sits above the backends, which never import it."""
import threading

import numpy as np

from .._threads import resolve_threads
from .backend import on_device

_GPU_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
               np.dtype(np.uint16): "bfloat16"}
_BACKENDS = {}
_LOCK = threading.Lock()


def backend(device="cpu", dtype="float32", threads=None, row_invariant=False):
    """The backend object of device ("cpu" / "cuda") for a model of dtype (a compute type of
    transformer.dtypes) and threads (transformer._threads), with row-invariant products or not
    (transformer.ops.backend.Backend), built once and shared. Raises RuntimeError for "cuda"
    without CuPy or a GPU."""
    threads = resolve_threads(threads)
    if device == "cpu":
        key = (device, dtype, threads, row_invariant)
        found = _BACKENDS.get(key)
        if found is not None:  # the op fronts' common case: no import statement
            return found
        from .cpu import CPUBackend as cls
    else:
        from . import cuda
        cls = cuda.CUDABackend
        key = (device, dtype, threads, row_invariant, cuda.cupy)  # a stand-in cupy (tests) gets its own
    found = _BACKENDS.get(key)
    if found is None:
        found = cls(threads, dtype, row_invariant)
        with _LOCK:
            found = _BACKENDS.setdefault(key, found)
    return found



def backend_for(a, threads=None):
    """The backend of where array `a` lives (NumPy: the CPU; CuPy: the GPU, in a's float dtype,
    float32 for other dtypes), for the op fronts."""
    if on_device(a):
        return backend("cuda", _GPU_DTYPES.get(a.dtype, "float32"), threads)
    return backend("cpu", "float32", threads)
