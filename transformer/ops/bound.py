"""The kernels of one backend, bound once when a model is placed (load, `model.to()`): the math of
the op fronts in transformer.ops without their per-call checks and device dispatch.

The op fronts check every argument and choose the backend from where the operands live, on
every call; for a small model that bookkeeping costs more than the kernels (a stories260K decode
step made ~60 checked calls). A model checks its inputs once at its boundary (ids in range,
shapes, positions within the cache), then runs its stack through a `Kernels` object whose
methods go straight to the backend chosen at placement. What the fronts check, the model
guarantees here: activations are C-contiguous rows (N, C) of the model's dtype (float32 on the
CPU), weights are the placed ones (float32 / PackedWeight on the CPU, CuPy arrays of one dtype on
the GPU), indices are in range, and the caller holds `blas_single_threaded()` (the stack entry
points do).

On the CPU the hot methods call transformer._cpu (csrc/cpu/_cpu.pyx) directly rather than through
ops/cpu.py, one Python frame less per kernel; decode_self_attention is CPU only (the GPU runs
rotary, the cache write and decode_attention as three calls).

Direct callers use transformer.ops, whose checks stay as they are; tests/ops compare these
bound methods with the fronts (same kernels, so bit for bit)."""
import math

import numpy as np

from .. import _cpu
from .._threads import resolve_threads
from .packed import PackedWeight


class Kernels:
    """The kernels of `device` ("cpu" or "cuda") for `threads` (transformer._threads), bound once.

    Every method takes and returns arrays of the placed model (NumPy float32 on the CPU, CuPy
    arrays of the model's dtype on the GPU) and allocates its output beside its input. Shapes:
    N rows, C width, H query heads, Hkv key/value heads, D head_dim, O outputs. No argument is
    checked (see the module docstring); transformer.ops has the checked fronts."""

    def __init__(self, device="cpu", threads=None):
        if device == "cpu":
            from . import cpu as backend
            self.xp = np
        else:
            from . import cuda as backend
            self.xp = backend.cupy()
        self.device, self.backend = device, backend
        self.threads = resolve_threads(threads)
        self.cpu = device == "cpu"

    # -- rows ---------------------------------------------------------------------------------
    def linear(self, x, weight, bias=None, activation=None):
        """act(x (N, K) @ weight (O, K)^T + bias (O,)) -> (N, O); weight float or PackedWeight."""
        out = self.xp.empty((x.shape[0], weight.shape[0]), x.dtype)
        if type(weight) is PackedWeight:
            weight.linear(x, bias, activation, out, self.threads)
        elif self.cpu:
            _cpu.linear(x, weight, bias, out, activation, self.threads)
        else:
            self.backend.linear(x, weight, bias, activation, out, self.threads)
        return out

    def add(self, a, b):
        """a + b (N, C) -> a new array (the residual add; on the GPU bfloat16-aware)."""
        if self.cpu:
            return a + b
        out = self.xp.empty(a.shape, a.dtype)
        self.backend.add(a, b, out, None)
        return out

    def layer_norm(self, x, weight, bias, eps, residual=None):
        """LayerNorm(x + residual) * weight + bias over rows (N, C) -> (N, C)."""
        out = self.xp.empty(x.shape, x.dtype)
        if self.cpu:
            _cpu.layer_norm(x, residual, weight, bias, eps, out, self.threads)
        else:
            self.backend.layer_norm(x, residual, weight, bias, eps, out, self.threads)
        return out

    def rms_norm(self, x, weight, eps):
        """RMSNorm(x) * weight over rows (N, C) -> (N, C)."""
        out = self.xp.empty(x.shape, x.dtype)
        if self.cpu:
            _cpu.rms_norm(x, weight, eps, out, self.threads)
        else:
            self.backend.rms_norm(x, weight, eps, out, self.threads)
        return out

    def add_norm(self, h, y, weight, bias, eps, rms):
        """The pre-LN residual step fused with the next norm: s = h + y and norm(s) (RMSNorm
        when rms, else LayerNorm with bias) of rows (N, C). Returns (s, norm(s))."""
        s, out = self.xp.empty(h.shape, h.dtype), self.xp.empty(h.shape, h.dtype)
        if not self.cpu:
            self.backend.add(h, y, s, None)
            if rms:
                self.backend.rms_norm(s, weight, eps, out, self.threads)
            else:
                self.backend.layer_norm(s, None, weight, bias, eps, out, self.threads)
        elif rms:
            _cpu.rms_norm(y, weight, eps, out, self.threads, h, s)
        else:
            _cpu.layer_norm(y, h, weight, bias, eps, out, self.threads, s)
        return s, out

    def swiglu(self, gate_up, activation="silu"):
        """act(gate) * up of gate_up (N, 2F) -> (N, F); act one of ops.GATED_ACTIVATIONS
        (silu: SwiGLU)."""
        out = self.xp.empty((gate_up.shape[0], gate_up.shape[1] // 2), gate_up.dtype)
        if self.cpu:
            _cpu.swiglu(gate_up, out, self.threads, activation)
        else:
            self.backend.swiglu(gate_up, out, self.threads, activation=activation)
        return out

    def rotary(self, x, positions, cos, sin, n_heads, interleaved):
        """Rotary embedding of the first n_heads heads of each row of x (N, W) in place;
        positions (N,) int64 on x's device, cos / sin (P, D/2) float32 there."""
        if self.cpu:
            _cpu.rotary(x, positions, cos, sin, n_heads, 2 * cos.shape[1], interleaved,
                        self.threads)
        else:
            self.backend.rotary(x, positions, cos, sin, n_heads, 2 * cos.shape[1], interleaved,
                                self.threads)
        return x

    def embedding(self, ids, positions, word, position, norm_weight=None, norm_bias=None,
                  eps=0.0, token_types=None, token_type=None):
        """LayerNorm?(word[ids] + position[positions] + token_type[token_types]) -> (N, C);
        ids, positions, token_types (N,) int64 (host arrays are moved to the device here)."""
        if type(word) is PackedWeight:  # gather and dequantize the rows, then the fused sum
            word, ids = word.rows(ids, self.threads), np.arange(len(ids), dtype=np.int64)
        if not self.cpu:
            ids, positions = self.xp.asarray(ids), self.xp.asarray(positions)
            token_types = None if token_types is None else self.xp.asarray(token_types)
        out = self.xp.empty((len(ids), word.shape[1]), word.dtype)
        self.backend.embedding(ids, positions, token_types, word, position, token_type,
                               norm_weight, norm_bias, eps if norm_weight is not None else 0.0,
                               out, self.threads)
        return out

    # -- attention ----------------------------------------------------------------------------
    def attention_varlen(self, q, k, v, plan, causal, scale, position_bias=None):
        """Attention of packed rows: q (N, H, D), k, v (Nk, Hkv, D) views; plan: a VarlenPlan;
        scale: of the scores (None: 1/sqrt(D)); position_bias: an ops.PositionBias or None.
        Returns (N, H, D)."""
        out = self.xp.empty(q.shape, q.dtype)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        bias = {} if position_bias is None else position_bias.kernel_args()
        self.backend.attention(q[None], k[None], v[None], out[None], plan.planes, plan.starts,
                               plan.lens, plan.k_starts, plan.k_lens, None, causal, scale,
                               self.threads, **bias)
        return out

    def decode_attention(self, q, k_cache, v_cache, lengths, scale, kv_index=None,
                         kv_rows=None, position_bias=None):
        """One query per row q (R, H, D) against caches (Bkv, S_max, Hkv, D): row r attends to
        keys [0, lengths[r]) (int32 host array) of plane kv_index[r] (int32, default r), or
        through the plane table kv_rows (R, S_max) int32 (CPU). Returns (R, H, D)."""
        R, H, D = q.shape
        out = self.xp.empty(q.shape, q.dtype)
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        bias = {} if position_bias is None else position_bias.kernel_args()
        if not R:
            return out
        if not self.cpu:
            self.backend.decode_attention(q, k_cache, v_cache, kv_index, lengths, None, out,
                                          scale, None, self.threads, **bias)
            return out
        _cpu.decode_attention(q, k_cache, v_cache, kv_index, kv_rows, lengths, None, out, scale,
                              self.decode_chunk(lengths, k_cache.shape[2]), self.threads, **bias)
        return out

    def decode_self_attention(self, qkv, n_heads, positions, rope, interleaved, k_cache,
                              v_cache, lengths, scale, kv_rows=None, position_bias=None,
                              chunk=None):
        """A CPU decode step's self-attention, fused: qkv (R, (H + 2 Hkv) D) float32 fused
        projections of one new token per row, rotated in place by positions (R,) int64 when
        rope = (cos, sin) is given; each row's K and V heads stored at positions[r] of plane r
        of k_cache, v_cache (Bkv, S_max, Hkv, D) (one layer, C-contiguous); then its Q heads
        attend to keys [0, lengths[r]) (lengths = positions + 1, int32), through the plane
        table kv_rows (R, S_max) int32 when given. Returns (R, H, D)."""
        R, D = len(qkv), k_cache.shape[3]
        out = np.empty((R, n_heads, D), np.float32)
        cos, sin = (None, None) if rope is None else rope
        bias = {} if position_bias is None else position_bias.kernel_args()
        _cpu.decode_self_attention(
            qkv, n_heads, positions, cos, sin, interleaved, k_cache, v_cache, kv_rows, lengths,
            out, 1.0 / math.sqrt(D) if scale is None else scale,
            self.decode_chunk(lengths, k_cache.shape[2]) if chunk is None else chunk,
            self.threads, **bias)
        return out

    def decode_chunk(self, lengths, n_kv_heads):
        """Keys per work item of decode_attention for rows of `lengths` (host integers): at
        least two work items per thread, at least 32 keys per item (as ops.decode_attention)."""
        per_thread = max(1, -(-2 * self.threads // max(1, len(lengths) * n_kv_heads)))
        return max(32, -(-max(lengths.tolist()) // per_thread))


class VarlenPlan:
    """The kernel arguments of a packed ragged batch, made once per forward and shared by every
    layer: sequence b's queries are rows cu[b]:cu[b+1], its keys rows cu_k[b]:cu_k[b+1]
    (default cu). cu, cu_k: (B+1,) non-decreasing host integers. Fields: planes (B,) zeros,
    starts, lens, k_starts, k_lens (B,) int32."""

    def __init__(self, cu, cu_k=None):
        cu = np.asarray(cu)
        cu_k = cu if cu_k is None else np.asarray(cu_k)
        self.starts = np.ascontiguousarray(cu[:-1], np.int32)
        self.lens = np.ascontiguousarray(np.diff(cu), np.int32)
        self.k_starts = np.ascontiguousarray(cu_k[:-1], np.int32)
        self.k_lens = np.ascontiguousarray(np.diff(cu_k), np.int32)
        self.planes = np.zeros(len(self.lens), np.int32)
