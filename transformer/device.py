"""Where a model's weights live and in which dtype: device "cpu" (csrc/cpu) in float32, int8 or
bfloat16, or "cuda" (CuPy arrays on the current GPU, csrc/cuda) in float32, float16 or bfloat16.

On the CPU, int8 and bfloat16 are compute types of the matrix products: every linear weight and
the word-embedding tables are packed once (transformer.ops.packed.PackedWeight), everything else
(norms, biases, position tables, activations, attention, the KV cache) stays float32.
On the GPU, CuPy has no bfloat16 dtype: bfloat16 tensors are uint16 arrays of bf16 bit patterns
(transformer.ops)."""
import numpy as np

from .dtypes import DTYPES
from .ops.packed import PackedWeight

DEVICES = tuple(DTYPES)


def check(device, dtype):
    """(device, dtype) validated, dtype defaulting to "float32". Raises ValueError for an unknown
    device or a dtype the device does not run (CPU: float32, int8, bfloat16; GPU: float32,
    float16, bfloat16) and RuntimeError when device="cuda" but CuPy or a GPU is missing (the
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


def packs(name, a):
    """True for a weight that a CPU int8 / bfloat16 model packs: a 2-D tensor named
    "*.weight" (a linear layer, the LM head) or "*embeddings.word" (a word-embedding table,
    gathered from the packed rows; tied to the LM head it stays one array)."""
    return getattr(a, "ndim", 0) == 2 and (name.endswith(".weight")
                                           or name.endswith("embeddings.word"))


def host_weights(weights):
    """{name: weight} with every array as C-contiguous float32 on the host, PackedWeights as
    they are (a model's __init__; tied arrays stay one object)."""
    return {k: v if isinstance(v, PackedWeight) else np.ascontiguousarray(v, np.float32)
            for k, v in weights.items()}


def to_device(a, device, dtype="float32"):
    """A host float array (or PackedWeight, dequantized) as a contiguous array of `device` in
    `dtype`; on the CPU float32 whatever the dtype (see `packs` for what the CPU packs)."""
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
        On the CPU, dtype "int8" / "bfloat16" packs the linear weights and word embeddings
        (`packs`; int8 quantized per row, CTranslate2's int8) and keeps the rest float32.
        Tensors shared between names (tied embeddings and LM head) stay shared.
        Raises ValueError for a device this family does not run on or a dtype the device does
        not run, RuntimeError without CuPy or a GPU."""
        device, dtype = check(device, dtype)
        if device not in self.DEVICES:
            raise ValueError(f"{type(self).__name__} runs on {self.DEVICES}, not {device!r}")
        from .ops.backend import backend
        place = backend(device, dtype, self.threads).place_weight
        moved = {}  # id of a source array -> its copy, so that tied tensors stay one array
        for k, v in self.weights.items():
            if id(v) not in moved:
                moved[id(v)] = place(k, v)
        self.weights = {k: moved[id(v)] for k, v in self.weights.items()}
        self.device, self.dtype = device, dtype
        self._moved()
        return self

    def _moved(self):
        """Hook: refresh tables derived from the weights after `to`."""

    @property
    def kernels(self):
        """The backend object (transformer.ops.backend) of the model's device, dtype and
        threads: chosen once, at the first forward after loading or `to()` (or a change of
        threads)."""
        k = self.__dict__.get("_kernels")
        if k is None or k.device != self.device or k.threads != self.threads \
                or k.dtype != self.dtype:
            from .ops.backend import backend
            k = self._kernels = backend(self.device, self.dtype, self.threads)
        return k

    def stack(self, prefix=""):
        """The blocks of the stack `prefix` ("" for a one-stack model, "encoder." / "decoder.")
        with their weights looked up once per placement: transformer.models.block.layers."""
        cache = self.__dict__.get("_stacks")
        if cache is None or cache[0] is not self.weights:
            cache = self._stacks = (self.weights, {})
        found = cache[1].get(prefix)
        if found is None:
            from .models.block import layers
            found = cache[1][prefix] = layers(self.weights, prefix)
        return found

    def _output(self, x):
        """A float output as returned to the user (the backend's output: float32 NumPy on the
        CPU whatever the compute type; CuPy float32 or float16 on the GPU, bfloat16 decoded to
        float32)."""
        return self.kernels.output(x)

    def _host_output(self, a):
        """A host array computed for the user (token ids, scores) as returned: where the model
        lives (the backend's from_host: a CuPy copy on the GPU; to_numpy brings it back)."""
        return self.kernels.from_host(a)
