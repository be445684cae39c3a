"""Where a model's weights live and in which dtype: device "cpu" (NumPy float32, csrc/cpu) or
"cuda" (CuPy arrays on the current GPU, csrc/cuda) in float32, float16 or bfloat16. CuPy has no
bfloat16 dtype: bfloat16 tensors are uint16 arrays of bf16 bit patterns (transformer.ops)."""
import numpy as np

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")


def check(device, dtype):
    """(device, dtype) validated, dtype defaulting to "float32". Raises ValueError for an unknown
    device or dtype (the CPU runs float32 only) and RuntimeError when device="cuda" but CuPy or a
    GPU is missing (the message says what to install)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    dtype = "float32" if dtype is None else dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (or None for float32), got {dtype!r}")
    if device == "cpu" and dtype != "float32":
        raise ValueError(f"the CPU backend runs float32 only, got dtype={dtype!r}")
    if device == "cuda":
        from .ops import cuda
        cuda.cupy()  # RuntimeError naming the missing piece
    return device, dtype


def to_device(a, device, dtype="float32"):
    """A host float array as a contiguous array of `device` in `dtype`."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if device == "cpu":
        return a
    from .ops import cuda
    return cuda.from_float32(cuda.cupy().asarray(a), dtype)


def to_numpy(a):
    """A NumPy array of a host or device array; device floats come back as float32 (bfloat16
    decoded), integers as they are."""
    if type(a).__module__.split(".")[0] != "cupy":
        return a
    from .ops import cuda
    if a.dtype.kind == "f" or a.dtype == np.uint16:
        a = cuda.to_float32(a)
    return cuda.cupy().asnumpy(a)


class DeviceModel:
    """Mixin of the model classes: `self.weights` ({name: array}) moved by `to(device, dtype)`;
    `self.device` / `self.dtype` say where they are. Families list the devices they run on in
    DEVICES."""

    DEVICES = ("cpu",)
    device, dtype = "cpu", "float32"

    def to(self, device, dtype=None):
        """Move the weights to device ("cpu" or "cuda") in dtype (default float32); returns self.
        Tensors shared between names (tied embeddings and LM head) stay shared.
        Raises ValueError for a device this family does not run on, RuntimeError without CuPy or
        a GPU."""
        device, dtype = check(device, dtype)
        if device not in self.DEVICES:
            raise ValueError(f"{type(self).__name__} runs on {self.DEVICES}, not {device!r}")
        moved = {}  # id of a source array -> its copy, so that tied tensors stay one array
        for v in self.weights.values():
            if id(v) not in moved:
                moved[id(v)] = to_device(to_numpy(v), device, dtype)
        self.weights = {k: moved[id(v)] for k, v in self.weights.items()}
        self.device, self.dtype = device, dtype
        self._moved()
        return self

    def _moved(self):
        """Hook: refresh tables derived from the weights after `to`."""

    def _output(self, x):
        """A float output as returned to the user: x itself (NumPy float32 on the CPU; CuPy
        float32 or float16 on the GPU), except bfloat16 device arrays (uint16 bits), decoded to
        CuPy float32."""
        if self.dtype == "bfloat16":
            from .ops import cuda
            return cuda.to_float32(x)
        return x

    def _host_output(self, a):
        """A host array computed for the user (token ids, scores) as returned: a itself on the
        CPU, a CuPy copy on the GPU (outputs live where the model does; to_numpy brings them
        back)."""
        if self.device == "cpu":
            return a
        from .ops import cuda
        return cuda.cupy().asarray(a)
