"""Weights packed for the CPU's float32, int8, int4 and bfloat16 matrix products
(csrc/cpu/gemm.c).

A `PackedWeight` stands where a float32 (O, K) weight would: `ops.linear(x, packed, bias, act)`
runs the packed product, `ops.embedding(ids, packed, ...)` gathers and dequantizes its rows (a
word-embedding table, tied or not to the LM head). Compute types:
- "float32": the weights as they are, in panels of 64 outputs (csrc/cpu/gemm.h, f32), float32
  FMA. BLAS sgemm packs its operand on every call, which costs as much as the product itself for
  the few rows of a short sentence or a decode step; packed once at load, the panels serve every
  row count.
- "int8", CTranslate2's int8: weights symmetric int8 with one float32 scale per output row,
  q = round(w * scale), scale = 127 / max|w[o]| (python/ctranslate2/specs/model_spec.py,
  `_quantize`); activations quantized the same way per row right before each product; int32
  accumulation; float32 out = acc / (scale_x * scale_w) + bias.
- "int4": weight-only 4-bit, asymmetric, in groups of 32 along K: codes 0..15 with a float32
  scale and a float32 minimum per (output, group), value = code * scale + minimum. Asymmetric
  because it holds every common 4-bit format exactly: llama.cpp's q4_0 ((q - 8) * d: scale = d,
  minimum = -8 d), q4_1 (scale d, minimum m), q4_K's sub-blocks of 32 (scale = d * sc,
  minimum = -dmin * m; ggml-quants.c dequantize_row_q4_K) and AWQ / GPTQ groups with a zero
  point ((q - zero) * scale: minimum = -scale * zero), while a symmetric scale alone cannot hold
  q4_1, q4_K or a zero point. float32 because d * sc (fp16 times 6 bits) needs more than fp16's
  11 significant bits. `PackedWeight.pack(w, "int4")` quantizes per group: minimum = min,
  scale = (max - min) / 15, code = round((w - minimum) / scale). Activations are quantized per
  row to int8 as for "int8" (x ~ q / sx); per group the exact int32 isum = sum_k q[k] code[k] and
  xsum = sum_k q[k]; float32 out = (sum_g scale * isum + minimum * xsum) / sx + bias.
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
    """"avx512" (AVX-512F for float32 and bfloat16, which uses AVX512-BF16 where present; VNNI
    for int8 and int4), "avx2" or "portable": the fastest kernel variant of `dtype`'s product
    this CPU runs."""
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


def quantize_int4(w, rows_per_chunk=4096):
    """Asymmetric 4-bit quantization of w (O, K) float in groups of 32 along K: returns (codes
    (O, K) uint8 in 0..15, scale (O, G) float32, minimum (O, G) float32), G = ceil(K / 32), with
    minimum = min of the group, scale = (max - min) / 15 (0 for a constant group, whose codes are
    0), code = round((w - minimum) / scale) (half to even), so |code * scale + minimum - w| <=
    scale / 2 (plus float32 rounding). A last group shorter than 32 takes min and max over its
    own values. Works `rows_per_chunk` rows at a time (bounded temporaries). Raises ValueError
    for a weight that is not 2-D or holds NaN or infinity."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"only 2-D weights are quantized, got shape {w.shape}")
    O, K = w.shape
    G = -(-K // 32)
    codes = np.empty((O, K), np.uint8)
    scale, minimum = np.zeros((O, G), np.float32), np.zeros((O, G), np.float32)
    for r0 in range(0, O if K else 0, rows_per_chunk):
        c = w[r0:r0 + rows_per_chunk]
        if not np.isfinite(c).all():
            raise ValueError("int4 quantization needs finite weights (NaN or infinity found)")
        if K % 32:  # repeat the last value: the short group's min and max stay its own
            c = np.pad(c, ((0, 0), (0, 32 * G - K)), mode="edge")
        c = c.reshape(len(c), G, 32)
        lo = c.min(axis=2)
        step = (c.max(axis=2) - lo) / np.float32(15)
        q = np.rint((c - lo[..., None]) / np.where(step > 0, step, 1)[..., None])
        codes[r0:r0 + len(c)] = np.clip(q, 0, 15).reshape(len(c), 32 * G)[:, :K]
        scale[r0:r0 + len(c)], minimum[r0:r0 + len(c)] = step, lo
    return codes, scale, minimum


def _int4_records(codes, scale, minimum):
    """The packed int4 bytes (csrc/cpu/gemm.h, int4): (O64/16, G, 384) uint8 records, raveled,
    from codes (O, K) uint8 and scale, minimum (O, G) float32; codes of k >= K and rows >= O,
    their scales and minimums, zero."""
    O, K = codes.shape
    G, O64 = scale.shape[1], -(-O // 64) * 64
    c = np.zeros((O64, 32 * G), np.uint8)
    c[:O, :K] = codes
    # k = 32 g + 8 chunk + 4 half + kk -> byte chunk * 64 + 4 o + kk, half 1 in the high nibble
    c = c.reshape(O64 // 16, 16, G, 4, 2, 4).transpose(0, 2, 3, 1, 5, 4)
    nibbles = (c[..., 0] | (c[..., 1] << 4)).reshape(O64 // 16, G, 256)

    def params(a):
        p = np.zeros((O64, G), np.float32)
        p[:O] = a
        return p.reshape(O64 // 16, 16, G).transpose(0, 2, 1).copy().view(np.uint8)
    return np.concatenate([nibbles, params(scale), params(minimum)], axis=2).ravel()


class PackedWeight:
    """An (O, K) weight packed for the float32, int8, int4 or bfloat16 products (layouts in
    csrc/cpu/gemm.h).

    dtype: "float32", "int8", "int4" or "bfloat16"; shape: (O, K); data: the packed bytes
    (uint8, O64 * K * 4, O64 * K4, O64 * G * 24 (int4: codes, scales and minimums together) or
    O64 * K2 * 2 of them, O64 = O rounded up to 64, G = ceil(K / 32)); scale: (O,) float32 row scales (int8, value = q /
    scale; None otherwise); nbytes: bytes held. Build with `PackedWeight.pack(w, dtype)` from
    float32, `PackedWeight.from_int8(q, scale)` from stored int8 rows (a CTranslate2 int8 model,
    taken as stored) or `PackedWeight.from_int4(codes, scale, minimum)` from stored 4-bit
    groups. np.asarray(packed) gives the dequantized float32 weight."""

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
    def from_int4(cls, codes, scale, minimum):
        """From 4-bit groups: codes (O, K) uint8 in 0..15, scale and minimum (O, G) float32
        (value = code * scale + minimum for k in group g = k // 32), G = K // 32 when K is a
        multiple of 32, else ceil(K / 32): the last group is short, padded inside the packed
        layout with codes 0 that meet activations padded with 0 (they add nothing, to isum or
        to xsum). Any finite scale (q4_0's d may be negative) and minimum. Raises TypeError for
        codes that are not a 2-D uint8 array, ValueError for a code above 15, a scale or
        minimum of another shape or not finite."""
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise TypeError(f"codes must be a 2-D uint8 array, got {codes.dtype} {codes.shape}")
        O, K = codes.shape
        G = -(-K // 32)
        if codes.size and codes.max() > 15:
            raise ValueError(f"codes must lie in 0..15, got {int(codes.max())}")
        arrays = {}
        for name, a in (("scale", scale), ("minimum", minimum)):
            a = np.asarray(a, np.float32)
            if a.shape != (O, G):
                raise ValueError(f"{name} must have shape (O, ceil(K / 32)) = {(O, G)}, "
                                 f"got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"int4 {name}s must be finite")
            arrays[name] = a
        return cls("int4", (O, K), _int4_records(codes, arrays["scale"], arrays["minimum"]))

    @classmethod
    def pack(cls, w, dtype):
        """Quantize (int8: quantize_int8, int4: quantize_int4), round (bfloat16) or keep
        (float32) a float weight w (O, K) and pack it. A PackedWeight of the same dtype is returned as it is; a
        weight with read_rows (a transformer.weights.Lazy tensor of a file) is read and packed in
        chunks of rows (_pack_rows). Raises ValueError for
        another dtype, a weight that is not 2-D, or (int4) not finite."""
        if isinstance(w, PackedWeight):
            if w.dtype == dtype:
                return w
            w = np.asarray(w)
        if getattr(w, "read_rows", None) is not None and len(w.shape) == 2 and dtype in DTYPES:
            return cls._pack_rows(w, dtype)
        w = np.asarray(w, np.float32)
        if w.ndim != 2:
            raise ValueError(f"only 2-D weights are packed, got shape {w.shape}")
        if dtype == "int8":
            return cls.from_int8(*quantize_int8(w))
        if dtype == "int4":
            return cls.from_int4(*quantize_int4(w))
        if dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        O, K = w.shape
        O64 = -(-O // 64) * 64
        if dtype == "float32":
            data = np.zeros(O64 * K, np.float32)
            if O and K:
                _cpu.pack_f32(np.ascontiguousarray(w), data)
            return cls("float32", (O, K), data.view(np.uint8))
        K2 = -(-K // 2) * 2
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
        elif dtype == "int4":  # records of 16 rows (_int4_records): a chunk's are contiguous
            record = -(-K // 32) * 384
            data = np.zeros(O64 // 16 * record, np.uint8)
        elif dtype == "float32":
            data = np.zeros(O64 * K, np.float32)
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
            elif dtype == "int4":
                data[r0 // 16 * record:(r0 + n64) // 16 * record] = \
                    _int4_records(*quantize_int4(rows))
            elif dtype == "float32":
                _cpu.pack_f32(rows, data[r0 * K:(r0 + n64) * K])
            else:
                _cpu.pack_bf16(_bf16_bits(rows), data[r0 * K2:(r0 + n64) * K2])
        if dtype == "int8":
            if not np.all(np.isfinite(scale) & (scale > 0)):
                raise ValueError("int8 weight scales must be finite and positive")
            return cls("int8", (O, K), data.view(np.uint8), scale, comp)
        return cls(dtype, (O, K), data.view(np.uint8))

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
        the row scales (so an embedding scaled by sqrt(C) costs nothing), int4 keeps its codes
        and multiplies the group scales and minimums; float32 and bfloat16 scale the float32
        values (bfloat16 rounds again)."""
        if self.dtype == "int8":
            return PackedWeight("int8", self.shape, self.data,
                                (self.scale / np.float32(factor)).astype(np.float32),
                                self._comp)
        if self.dtype == "int4":
            records = self.data.reshape(-1, 384).copy()
            params = records[:, 256:].view(np.float32)  # the 16 scales and 16 minimums
            params *= np.float32(factor)
            return PackedWeight("int4", self.shape, records.ravel())
        return PackedWeight.pack(np.asarray(self) * np.float32(factor), self.dtype)

    def int32_product(self, q, variant=None, out=None):
        """The exact int32 accumulators of int8 rows q (M, K) (zero padded to K4, int4: K32,
        here unless q already has that many columns) with this weight's integers, by the kernel
        `variant` (default VARIANT[dtype]; one thread): int8 q @ w^T (M, O) int32; int4 the
        group sums (M, O, G) int32, [m, o, g] = sum over k in group g of q[m, k] code[o, k].
        Written into `out` when given. Raises ValueError for a bfloat16 weight or q of another
        width."""
        if self.dtype not in ("int8", "int4"):
            raise ValueError("int32_product needs an int8 or int4 PackedWeight")
        O, K = self.shape
        Kp = -(-K // 4) * 4 if self.dtype == "int8" else -(-K // 32) * 32
        q = np.asarray(q)
        if q.dtype != np.int8 or q.ndim != 2 or q.shape[1] not in (K, Kp):
            raise ValueError(f"q must be int8 of shape (M, {K}), got {q.dtype} {q.shape}")
        if q.shape[1] != Kp or not q.flags.c_contiguous:
            padded = np.zeros((len(q), Kp), np.int8)
            padded[:, :K] = q[:, :K]
            q = padded
        variant = variant or VARIANT[self.dtype]
        if self.dtype == "int4":
            out = np.empty((len(q), O, Kp // 32), np.int32) if out is None else out
            _cpu.gemm_int4_raw(variant, q, self.data, out)
            return out
        out = np.empty((len(q), O), np.int32) if out is None else out
        _cpu.gemm_int8_raw(variant, q, self.data, self._comp, out)
        return out

    def linear(self, x, bias, activation, out, threads):
        """out (N, O) = act(x (N, K) float32 @ self^T + bias), arguments checked by ops.linear."""
        _cpu.linear_packed(self.dtype, VARIANT[self.dtype], x, self.data, self._inv_scale,
                           self._comp, bias, out, activation, threads)
        return out

    def __repr__(self):
        return f"PackedWeight({self.dtype}, shape={self.shape})"
