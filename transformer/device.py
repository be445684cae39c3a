"""Where a model's weights live and in which dtype: device "cpu" (csrc/cpu) in float32, int8, int4
or bfloat16, or "cuda" (CuPy arrays on the current GPU, csrc/cuda) in float32, float16 or
bfloat16 (transformer.dtypes.DTYPES).

On the CPU, int8, int4 and bfloat16 are compute types of the matrix products: every linear weight
and the word-embedding tables are packed once (transformer.ops.packed.PackedWeight; which ones:
transformer.ops.cpu.packs), everything else
(norms, biases, position tables, activations, attention, the KV cache) stays float32.
On the GPU, CuPy has no bfloat16 dtype: bfloat16 tensors are uint16 arrays of bf16 bit patterns
(transformer.ops).

This module places arrays (check, host_weights, to_numpy); the model base that
uses it is transformer.models.base.Model, and the per-device strategies are the backend objects
of transformer.ops.backend."""
import numpy as np

from .dtypes import DTYPES
from .ops.packed import PackedWeight

DEVICES = tuple(DTYPES)


def check(device, dtype):
    """(device, dtype) validated, dtype defaulting to "float32". Raises ValueError for an unknown
    device or a dtype the device does not run (transformer.dtypes.DTYPES; CPU: float32, int8,
    int4, bfloat16; GPU: float32, float16, bfloat16: int4 there is refused naming it) and
    RuntimeError when device="cuda" but CuPy or a GPU is missing (the
    message says what to install)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    dtype = "float32" if dtype is None else dtype
    if dtype not in DTYPES[device]:
        raise ValueError(f"dtype on device={device!r} must be one of {DTYPES[device]} (or None "
                         f"for float32), got {dtype!r}")
    if device == "cuda":
        from .ops import cuda
        cuda.cupy()  # RuntimeError naming the missing piece
    return device, dtype


def host_weights(weights):
    """{name: weight} with every array as C-contiguous float32 on the host, PackedWeights as
    they are (a model's __init__; tied arrays stay one object)."""
    return {k: v if isinstance(v, PackedWeight) else np.ascontiguousarray(v, np.float32)
            for k, v in weights.items()}


def to_numpy(a):
    """A NumPy array of a host or device array; device floats come back as float32 (bfloat16
    decoded), integers as they are."""
    if type(a).__module__.split(".")[0] != "cupy":
        return a
    from .ops import cuda
    if a.dtype.kind == "f" or a.dtype == np.uint16:
        a = cuda.to_float32(a)
    return cuda.cupy().asnumpy(a)
