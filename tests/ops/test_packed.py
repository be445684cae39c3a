"""The packed float32, int8 and bfloat16 products (csrc/cpu/gemm.c, transformer.ops.packed) of
every variant this CPU runs (the portable twin always): int8 int32 accumulators bit-exact against
an integer reference on odd shapes, the dequantized output within the quantization bound of the
float64 product, bf16 within bf16 bounds, float32 within float32 summation bounds and its
packing lossless; outputs poisoned before the kernels write them."""
import numpy as np
import pytest

import transformer.ops as ops
from transformer import _cpu
from transformer.ops import packed
from transformer.ops import reference as ref
from transformer.ops.packed import PackedWeight

SHAPES = [(1, 1, 1), (1, 5, 3), (3, 67, 17), (17, 130, 129), (129, 64, 16), (3, 768, 65),
          (16, 9, 200), (7, 2, 64)]  # (M rows, K, O): K not a multiple of 4 or 64, O of 16


def variants(dtype):
    return list(packed.supported_variants(dtype))


@pytest.fixture
def variant(request, monkeypatch):
    dtype, name = request.param
    monkeypatch.setitem(packed.VARIANT, dtype, name)
    return name


def _int8_reference(x):
    """Per-row symmetric quantization in NumPy: q = rint(x * s), s = 127 / max|x| (1 for 0)."""
    amax = np.abs(x).max(axis=1)
    s = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 1).astype(np.float32)
    return np.clip(np.rint(x * s[:, None]), -127, 127).astype(np.int8), s


@pytest.mark.parametrize("M,K,O", SHAPES)
def test_quantize_rows_matches_numpy(rng, M, K, O):
    x = rng.standard_normal((M, K)).astype(np.float32) * rng.uniform(0.01, 100)
    x[0] = 0.0  # a row of zeros: scale 1, all q 0
    K4 = -(-K // 4) * 4
    q = np.full((M, K4), 99, np.int8)
    s = np.full(M, np.nan, np.float32)
    _cpu.quantize_rows_int8(x, q, s, 2)
    q_ref, s_ref = _int8_reference(x)
    assert np.array_equal(q[:, :K], q_ref) and not q[:, K:].any()
    assert np.array_equal(s, s_ref)


@pytest.mark.parametrize("name", variants("int8"))
@pytest.mark.parametrize("M,K,O", SHAPES)
def test_int8_accumulators_exact(rng, name, M, K, O):
    """int32 accumulators of xq @ q^T equal the int64 NumPy product, bit for bit (extreme
    values included: all +-127 rows, and weights of -128, which a stored int8 model may hold)."""
    q = rng.integers(-128, 128, (O, K), dtype=np.int8)
    q[0] = 127 if O > 1 else q[0]
    q[-1] = -128 if O > 2 else q[-1]
    w = PackedWeight.from_int8(q, np.ones(O, np.float32))
    K4 = -(-K // 4) * 4
    xq = np.zeros((M, K4), np.int8)
    xq[:, :K] = rng.integers(-127, 128, (M, K), dtype=np.int8)
    xq[-1, :K] = -127
    out = np.full((M, O), -12345, np.int32)
    w.int32_product(xq, name, out)
    want = xq[:, :K].astype(np.int64) @ q.T.astype(np.int64)
    assert np.array_equal(out, want)


@pytest.mark.parametrize("variant", [("int8", v) for v in variants("int8")], indirect=True)
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("M,K,O", SHAPES)
def test_int8_linear_within_quantization_bound(rng, variant, activation, M, K, O):
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((O, K)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    pw = PackedWeight.pack(w, "int8")
    got = ops.linear(x, pw, b, activation)
    # exact value of the quantized product, then the bound of quantizing x and w (|e| <= 1/2)
    qx, sx = _int8_reference(x)
    qw, sw = _int8_reference(w)
    exact_q = (qx.astype(np.int64) @ qw.T.astype(np.int64)) / (sx[:, None].astype(np.float64)
                                                             * sw[None, :]) + b
    want = exact_q if activation is None else ref.bias_act(exact_q, None, activation)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    bound = (0.5 / sw[None, :] * np.abs(x64).sum(1)[:, None]
             + 0.5 / sx[:, None] * np.abs(w64).sum(1)[None, :]
             + 0.25 * K / (sx[:, None] * sw[None, :]))
    lin = ops.linear(x, pw, b)
    assert np.all(np.abs(lin - (x64 @ w64.T + b)) <= bound + 1e-4)


@pytest.mark.parametrize("variant", [("bfloat16", v) for v in variants("bfloat16")],
                         indirect=True)
@pytest.mark.parametrize("M,K,O", SHAPES)
def test_bf16_linear_within_bf16_bound(rng, variant, M, K, O):
    """x and w rounded to bf16 (8 significant bits: relative error <= 2^-8 each), products
    summed in float32."""
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((O, K)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    got = ops.linear(x, PackedWeight.pack(w, "bfloat16"), b, "silu")
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    pre = x64 @ w64.T + b
    bound = (2 * 2.0 ** -8 + K * 2.0 ** -23) * (np.abs(x64) @ np.abs(w64).T) + 1e-6
    silu_slope = 1.1  # |d silu / dz| <= 1.1
    assert np.all(np.abs(got - ref.bias_act(pre, None, "silu")) <= silu_slope * bound)


@pytest.mark.parametrize("variant", [("float32", v) for v in variants("float32")],
                         indirect=True)
@pytest.mark.parametrize("M,K,O", SHAPES + [(6, 384, 1152), (64, 1536, 70)])
def test_f32_linear_within_float32_summation_bound(rng, variant, M, K, O):
    """float32 weights packed as they are (unpacked bit for bit), products summed in float32:
    within K * 2^-23 * |x| |w| (+ one rounding of the bias) of the float64 product, for tile
    edges (M not a multiple of 6, O of 64) and MiniLM's shapes."""
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((O, K)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    pw = PackedWeight.pack(w, "float32")
    assert np.array_equal(np.asarray(pw), w) and pw.shape == (O, K)
    assert np.array_equal(np.asarray(PackedWeight.pack(w.T.copy().T, "float32")), w)  # a view
    ids = rng.integers(0, O, 5)
    assert np.array_equal(pw.rows(ids), w[ids])
    got = ops.linear(x, pw, b, "relu")
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    bound = (K + 2) * 2.0 ** -23 * (np.abs(x64) @ np.abs(w64).T + np.abs(b)) + 1e-30
    assert np.all(np.abs(got - np.maximum(x64 @ w64.T + b, 0)) <= bound)
    np.testing.assert_array_equal(np.asarray(pw.scaled(2.0)), 2 * w)  # a power of two: exact


@pytest.mark.parametrize("dtype", packed.DTYPES)
def test_every_output_written(rng, dtype):
    """linear_packed writes every element of its output (poisoned with NaN first), for each
    variant, decode-sized and prefill-sized row counts."""
    for name in variants(dtype):
        for M, K, O in [(1, 33, 70), (16, 8, 129), (100, 40, 64), (50, 7, 1)]:
            x = rng.standard_normal((M, K)).astype(np.float32)
            pw = PackedWeight.pack(rng.standard_normal((O, K)).astype(np.float32), dtype)
            out = np.full((M, O), np.nan, np.float32)
            _cpu.linear_packed(dtype, name, x, pw.data, pw._inv_scale, pw._comp, None, out,
                               None, 2)
            assert np.isfinite(out).all(), (name, M, K, O)
            np.testing.assert_allclose(out, x @ np.asarray(pw).T, rtol=2e-2, atol=0.1 * K ** 0.5)


@pytest.mark.parametrize("dtype", packed.DTYPES)
def test_rows_are_independent(rng, dtype):
    """A row's result does not depend on the other rows of the batch (per-row quantization):
    a batch equals its rows alone, bit for bit."""
    x = rng.standard_normal((37, 96)).astype(np.float32)
    pw = PackedWeight.pack(rng.standard_normal((150, 96)).astype(np.float32), dtype)
    together = ops.linear(x, pw)
    alone = np.concatenate([ops.linear(x[i:i + 1], pw) for i in range(len(x))])
    assert np.array_equal(together, alone)


def test_packed_weight_round_trip_and_rows(rng):
    w = rng.standard_normal((70, 13)).astype(np.float32)
    q, s = packed.quantize_int8(w)
    p8 = PackedWeight.pack(w, "int8")
    np.testing.assert_allclose(np.asarray(p8), q / s[:, None], rtol=2e-7)  # q * (1 / s)
    np.testing.assert_allclose(np.asarray(p8), w, atol=np.abs(w).max() / 127)
    pb = PackedWeight.pack(w, "bfloat16")
    np.testing.assert_allclose(np.asarray(pb), w, rtol=2.0 ** -8)
    ids = np.array([3, 0, 69, 3])
    np.testing.assert_array_equal(pb.rows(ids), np.asarray(pb)[ids])
    np.testing.assert_allclose(np.asarray(p8.scaled(4.0)), 4 * np.asarray(p8), rtol=1e-6)
    assert PackedWeight.pack(p8, "int8") is p8
    assert pb.shape == (70, 13)
    big = rng.standard_normal((300, 256)).astype(np.float32)  # padding to 64 rows is small here
    assert PackedWeight.pack(big, "int8").nbytes < 0.3 * big.nbytes
    assert PackedWeight.pack(big, "bfloat16").nbytes < 0.55 * big.nbytes


def test_embedding_gathers_packed_rows(rng):
    V, C, P = 50, 24, 10
    word = rng.standard_normal((V, C)).astype(np.float32)
    pos = rng.standard_normal((P, C)).astype(np.float32)
    g, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    ids = rng.integers(0, V, (3, 7))
    for dtype in packed.DTYPES:
        pw = PackedWeight.pack(word, dtype)
        got = ops.embedding(ids, pw, pos, norm_weight=g, norm_bias=b)
        want = ops.embedding(ids, np.asarray(pw), pos, norm_weight=g, norm_bias=b)
        np.testing.assert_array_equal(got, want)
        with pytest.raises(IndexError, match="input_ids"):
            ops.embedding(np.array([[V]]), pw, pos)


def test_packed_bad_input(rng):
    pw = PackedWeight.pack(rng.standard_normal((8, 6)).astype(np.float32), "int8")
    with pytest.raises(ValueError, match="features"):
        ops.linear(np.zeros((2, 5), np.float32), pw)
    with pytest.raises(ValueError, match="bias"):
        ops.linear(np.zeros((2, 6), np.float32), pw, np.zeros(7, np.float32))
    with pytest.raises(TypeError, match="int8"):
        PackedWeight.from_int8(np.zeros((2, 2), np.int16), 1.0)
    with pytest.raises(ValueError, match="positive"):
        PackedWeight.from_int8(np.zeros((2, 2), np.int8), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="dtype"):
        PackedWeight.pack(np.zeros((2, 2), np.float32), "int3")
    with pytest.raises(ValueError, match="2-D"):
        PackedWeight.pack(np.zeros(3, np.float32), "bfloat16")
