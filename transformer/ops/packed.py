"""Weights packed for the CPU's int8 and bfloat16 matrix products (csrc/cpu/gemm.c).

A `PackedWeight` stands where a float32 (O, K) weight would: `ops.linear(x, packed, bias, act)`
runs the packed product, `ops.embedding(ids, packed, ...)` gathers and dequantizes its rows (a
word-embedding table, tied or not to the LM head). Compute types:
- "int8", CTranslate2's int8: weights symmetric int8 with one float32 scale per output row,
  q = round(w * scale), scale = 127 / max|w[o]| (python/ctranslate2/specs/model_spec.py,
  `_quantize`); activations quantized the same way per row right before each product; int32
  accumulation; float32 out = acc / (scale_x * scale_w) + bias.
- "bfloat16": weights rounded to bf16 (nearest even), activations rounded to bf16 per product,
  float32 accumulation (AVX512-BF16 vdpbf16ps semantics).

Kernel variant, per compute type: the best this CPU runs (`best_variant`), or the environment's
TRANSFORMER_GEMM=portable|avx2|avx512 (all compute types; a variant the CPU lacks is refused),
kept in VARIANT for the process; tests set VARIANT to run each variant.
"""
import os

import numpy as np

from .. import _cpu

from ..dtypes import PACKED as DTYPES, VARIANTS as _VARIANT_ORDER


def best_variant(dtype):
    """"avx512" (VNNI for int8, AVX512-BF16 for bfloat16), "avx2" or "portable": the fastest
    kernel variant of `dtype`'s product this CPU runs."""
    return _cpu.best_gemm_variant(dtype)


def supported_variants(dtype):
    """The variants of `dtype`'s product this CPU runs, slowest first (portable always)."""
    return _VARIANT_ORDER[:_VARIANT_ORDER.index(best_variant(dtype)) + 1]


def _initial_variants():
    forced = os.environ.get("TRANSFORMER_GEMM", "").strip()
    out = {}
    for dtype in DTYPES:
        if forced and forced not in supported_variants(dtype):
            raise RuntimeError(f"TRANSFORMER_GEMM={forced!r}: this CPU runs "
                               f"{supported_variants(dtype)} for {dtype}")
        out[dtype] = forced or best_variant(dtype)
    return out


VARIANT = _initial_variants()


def _bf16_bits(w):
    """float32 array -> uint16 bf16 bits, rounded to nearest even (NaN kept a quiet NaN)."""
    u = np.ascontiguousarray(w, np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, ((u >> 16) | np.uint32(0x40)).astype(np.uint16), r)


def quantize_int8(w):
    """Symmetric per-row int8 quantization of w (O, K) float: returns (q (O, K) int8,
    scale (O,) float32) with q = round(w * scale) (half to even), scale = 127 / max|w[o]|
    (1 for a row of zeros), CTranslate2's convention (value = q / scale)."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    scale = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 1).astype(
        np.float32)
    q = np.clip(np.rint(w * scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


class PackedWeight:
    """An (O, K) weight packed for the int8 or bfloat16 products (layouts in csrc/cpu/gemm.h).

    dtype: "int8" or "bfloat16"; shape: (O, K); data: the packed bytes (uint8, O64 * K4 or
    O64 * K2 * 2 of them, O64 = O rounded up to 64); scale: (O,) float32 row scales (int8,
    value = q / scale); nbytes: bytes held. Build with `PackedWeight.pack(w, dtype)` from
    float32 or `PackedWeight.from_int8(q, scale)` from stored int8 rows (a CTranslate2 int8
    model, taken as stored). np.asarray(packed) gives the dequantized float32 weight."""

    ndim = 2

    def __init__(self, dtype, shape, data, scale=None, comp=None):
        self.dtype, self.shape, self.data = dtype, tuple(shape), data
        self.scale = scale
        self._comp = comp
        if dtype == "int8":
            O64 = -(-self.shape[0] // 64) * 64
            inv = np.ones(O64, np.float32)
            inv[:self.shape[0]] = 1.0 / scale
            self._inv_scale = inv
        else:
            self._inv_scale = None

    @classmethod
    def from_int8(cls, q, scale):
        """From int8 rows q (O, K) and their float32 scales (O,) or one scalar scale (value =
        q / scale). Raises TypeError for a non-int8 q, ValueError for a scale of another size or
        not finite and positive."""
        q = np.asarray(q)
        if q.dtype != np.int8 or q.ndim != 2:
            raise TypeError(f"q must be a 2-D int8 array, got {q.dtype} {q.shape}")
        scale = np.broadcast_to(np.asarray(scale, np.float32), (q.shape[0],)).copy()
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError("int8 weight scales must be finite and positive")
        O, K = q.shape
        O64, K4 = -(-O // 64) * 64, -(-K // 4) * 4
        data = np.empty(O64 * K4, np.int8)
        comp = np.empty(O64, np.int32)
        if O and K:
            _cpu.pack_int8(np.ascontiguousarray(q), data, comp)
        else:
            data[:], comp[:] = 0, 0
        return cls("int8", (O, K), data.view(np.uint8), scale, comp)

    @classmethod
    def pack(cls, w, dtype):
        """Quantize (int8) or round (bfloat16) a float weight w (O, K) and pack it. A
        PackedWeight of the same dtype is returned as it is; a weight with read_rows (a
        transformer.weights.Lazy tensor of a file) is read and packed in chunks of rows. Raises ValueError for another
        dtype or a weight that is not 2-D."""
        if isinstance(w, PackedWeight):
            if w.dtype == dtype:
                return w
            w = np.asarray(w)
        if getattr(w, "read_rows", None) is not None and len(w.shape) == 2 \
                and dtype in ("int8", "bfloat16"):
            return cls._pack_rows(w, dtype)
        w = np.asarray(w, np.float32)
        if w.ndim != 2:
            raise ValueError(f"only 2-D weights are packed, got shape {w.shape}")
        if dtype == "int8":
            return cls.from_int8(*quantize_int8(w))
        if dtype != "bfloat16":
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        O, K = w.shape
        O64, K2 = -(-O // 64) * 64, -(-K // 2) * 2
        data = np.zeros(O64 * K2, np.uint16)
        if O and K:
            _cpu.pack_bf16(_bf16_bits(w), data)
        return cls("bfloat16", (O, K), data.view(np.uint8))

    @classmethod
    def _pack_rows(cls, w, dtype, chunk_bytes=2 << 20):
        """pack(w, dtype), bit for bit, of a weight read in chunks of rows (w.read_rows(start,
        stop) -> float32 (stop - start, K): a transformer.weights.Lazy tensor of a file), so
        that the float32 weight never exists whole: each chunk of a multiple of 64 rows (about
        chunk_bytes of float32) is quantized or rounded and packed into its own slice of the
        layout (whole 16-row blocks are contiguous there: csrc/cpu/gemm.h)."""
        O, K = w.shape
        O64 = -(-O // 64) * 64
        step = max(64, chunk_bytes // max(4 * K, 1) // 64 * 64)
        if dtype == "int8":
            K4 = -(-K // 4) * 4
            data, comp = np.zeros(O64 * K4, np.int8), np.zeros(O64, np.int32)
            scale = np.ones(O, np.float32)
        else:
            K2 = -(-K // 2) * 2
            data = np.zeros(O64 * K2, np.uint16)
        for r0 in range(0, O if K else 0, step):
            r1 = min(O, r0 + step)
            rows = np.ascontiguousarray(w.read_rows(r0, r1), np.float32)
            n64 = -(-(r1 - r0) // 64) * 64
            if dtype == "int8":
                q, scale[r0:r1] = quantize_int8(rows)
                _cpu.pack_int8(q, data[r0 * K4:(r0 + n64) * K4], comp[r0:r0 + n64])
            else:
                _cpu.pack_bf16(_bf16_bits(rows), data[r0 * K2:(r0 + n64) * K2])
        if dtype == "int8":
            if not np.all(np.isfinite(scale) & (scale > 0)):
                raise ValueError("int8 weight scales must be finite and positive")
            return cls("int8", (O, K), data.view(np.uint8), scale, comp)
        return cls("bfloat16", (O, K), data.view(np.uint8))

    @property
    def nbytes(self):
        """Bytes held by the packed weight and its scales."""
        return sum(a.nbytes for a in (self.data, self.scale, self._comp, self._inv_scale)
                   if a is not None)

    def rows(self, ids, threads=1):
        """Rows ids (N,) int64 in [0, O) (checked by the caller) as float32 (N, K), dequantized."""
        ids = np.ascontiguousarray(ids, np.int64)
        out = np.empty((ids.size, self.shape[1]), np.float32)
        if ids.size and self.shape[1]:
            _cpu.unpack_rows(self.dtype, self.data, self._inv_scale, ids, out, threads)
        return out

    def __array__(self, dtype=None, copy=None):
        w = self.rows(np.arange(self.shape[0]))
        return w if dtype is None else w.astype(dtype)

    def scaled(self, factor):
        """The same weight times a positive float `factor`: int8 keeps its integers and divides
        the row scales (so an embedding scaled by sqrt(C) costs nothing); bfloat16 scales the
        float32 values and rounds again."""
        if self.dtype == "int8":
            return PackedWeight("int8", self.shape, self.data,
                                (self.scale / np.float32(factor)).astype(np.float32),
                                self._comp)
        return PackedWeight.pack(np.asarray(self) * np.float32(factor), "bfloat16")

    def int32_product(self, q, variant=None, out=None):
        """The exact int32 accumulators q @ w^T of int8 rows q (M, K) (zero padded to K4 here
        unless q already has K4 columns) with this int8 weight's integers, by the kernel
        `variant` (default VARIANT["int8"]; one thread): (M, O) int32, written into `out` when
        given. Raises ValueError for a bfloat16 weight or q of another width."""
        if self.dtype != "int8":
            raise ValueError("int32_product needs an int8 PackedWeight")
        O, K = self.shape
        K4 = -(-K // 4) * 4
        q = np.asarray(q)
        if q.dtype != np.int8 or q.ndim != 2 or q.shape[1] not in (K, K4):
            raise ValueError(f"q must be int8 of shape (M, {K}), got {q.dtype} {q.shape}")
        if q.shape[1] != K4 or not q.flags.c_contiguous:
            padded = np.zeros((len(q), K4), np.int8)
            padded[:, :K] = q[:, :K]
            q = padded
        out = np.empty((len(q), O), np.int32) if out is None else out
        _cpu.gemm_int8_raw(variant or VARIANT["int8"], q, self.data, self._comp, out)
        return out

    def linear(self, x, bias, activation, out, threads):
        """out (N, O) = act(x (N, K) float32 @ self^T + bias), arguments checked by ops.linear."""
        _cpu.linear_packed(self.dtype, VARIANT[self.dtype], x, self.data, self._inv_scale,
                           self._comp, bias, out, activation, threads)
        return out

    def __repr__(self):
        return f"PackedWeight({self.dtype}, shape={self.shape})"
