"""The backend objects: one per device (transformer.ops.cpu.CPUBackend,
transformer.ops.cuda.CUDABackend) with the same methods and argument lists, chosen once.

A model chooses its backend at placement (load, `model.to()`): `backend(device, dtype,
threads)`; the checked op fronts in transformer.ops choose it per call from where the operands
live: `backend_for(array, threads)` (both in transformer.ops.choose). Either way the object is
built once per (device, dtype, threads) and shared.

The methods run the math without checks (the fronts check; a model checks its inputs once at
its boundary): activations are C-contiguous rows of the backend's activation dtype (float32 on
the CPU; on the GPU float32, float16 or bfloat16 as uint16 bits), weights the placed ones,
indices in range, and on the CPU the caller holds `blas_single_threaded()`. Device-specific
strategies are methods too, so that models and the search never test the device: how weights
are placed (`place_weight`, `place`, `upload`, `indices`), how outputs come back (`output`,
`from_host`, `to_host`), how a KV cache reorders (`reorder_cache`, `copy_on_reorder`) and how
packed rows are summed per sequence (`segment_sums`).

Shapes: N rows, C width, H query heads, Hkv key/value heads, D head_dim, O outputs, P planes."""
import math

import numpy as np

from .._threads import resolve_threads


class VarlenPlan:
    """The kernel arguments of a batch of sequences over planes of rows, made once per forward
    and shared by every layer: sequence b reads plane planes[b], its queries are rows
    starts[b] + [0, lens[b]) and its keys rows k_starts[b] + [0, k_lens[b]). All (B,) int32 host
    arrays. VarlenPlan(cu, cu_k): a packed ragged batch on one plane, sequence b's queries rows
    cu[b]:cu[b+1], its keys rows cu_k[b]:cu_k[b+1] (default cu); cu, cu_k: (B+1,)
    non-decreasing host integers."""

    def __init__(self, cu, cu_k=None):
        cu = np.asarray(cu)
        cu_k = cu if cu_k is None else np.asarray(cu_k)
        self.starts = np.ascontiguousarray(cu[:-1], np.int32)
        self.lens = np.ascontiguousarray(np.diff(cu), np.int32)
        self.k_starts = np.ascontiguousarray(cu_k[:-1], np.int32)
        self.k_lens = np.ascontiguousarray(np.diff(cu_k), np.int32)
        self.planes = np.zeros(len(self.lens), np.int32)

    @classmethod
    def padded(cls, B, T, S):
        """B sequences, one a plane: T queries and S keys each, from row 0."""
        plan = cls.__new__(cls)
        zeros = np.zeros(B, np.int32)
        plan.planes = np.arange(B, dtype=np.int32)
        plan.starts, plan.k_starts = zeros, zeros
        plan.lens, plan.k_lens = np.full(B, T, np.int32), np.full(B, S, np.int32)
        return plan


class Backend:
    """What both backends share. Subclasses set `device` ("cpu" / "cuda"), `xp` (the array
    module), `act_dtype` (the activations' NumPy dtype) and `copy_on_reorder`.

    row_invariant: every row of a product comes out with the same bits whatever the other rows
    of the call (batch invariance, which the serving engine needs to give a request the same
    output alone or among others). The CPU's int8 and bfloat16 products always are (per-row
    quantization, one summation order); its float32 products are only with this set (one
    kernel for every row count, csrc/cpu/_cpu.pyx linear; else BLAS above 16 rows). On the GPU
    it is recorded but not enforced (cuBLAS picks its algorithm by shape)."""

    device = None
    copy_on_reorder = False

    def __init__(self, threads=None, dtype="float32", row_invariant=False):
        self.threads = resolve_threads(threads)
        self.dtype = dtype
        self.row_invariant = bool(row_invariant)

    @staticmethod
    def attention_args(head_dim, scale, position_bias):
        """The attention kernels' scale (None: 1/sqrt(head_dim), Vaswani et al. 2017 eq. 1)
        and position-bias keywords (an ops.PositionBias's kernel_args(), or none)."""
        return (1.0 / math.sqrt(head_dim) if scale is None else scale,
                {} if position_bias is None else position_bias.kernel_args())

    def attention_varlen(self, q, k, v, plan, causal, scale, position_bias=None, out=None):
        """Attention of packed rows: q (N, H, D), k, v (Nk, Hkv, D) views; plan: a VarlenPlan;
        scale: of the scores (None: 1/sqrt(D)); position_bias: an ops.PositionBias or None.
        Returns out (N, H, D), allocated when None."""
        out = self.xp.empty(q.shape, q.dtype) if out is None else out
        self.attention(q[None], k[None], v[None], plan, causal, scale,
                       position_bias=position_bias, out=out[None])
        return out

    def empty(self, shape):
        """An uninitialised array of the activations' dtype on the device."""
        return self.xp.empty(shape, self.act_dtype)

    def zeros(self, shape, dtype=None):
        """A zero array on the device, of the activations' dtype unless dtype is given."""
        return self.xp.zeros(shape, self.act_dtype if dtype is None else dtype)

    def __repr__(self):
        return (f"{type(self).__name__}(threads={self.threads}, dtype={self.dtype!r}"
                + (", row_invariant=True)" if self.row_invariant else ")"))


_ON_DEVICE = {np.ndarray: False}  # type -> whether it is a CuPy array type


def on_device(a):
    """True for a CuPy (GPU) array."""
    t = type(a)
    known = _ON_DEVICE.get(t)
    if known is None:
        known = _ON_DEVICE[t] = t.__module__.split(".")[0] == "cupy"
    return known
