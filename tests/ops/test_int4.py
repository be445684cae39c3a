"""The int4 product (csrc/cpu/gemm.c, transformer.ops.packed) of every variant this CPU runs (the
portable twin always): per-group int32 sums bit-exact against an integer NumPy reference on odd
shapes, the float32 result against the float64 formula and within the quantization bound of the
float64 product; llama.cpp q4_0 blocks and AWQ / GPTQ zero points held as stored; outputs
poisoned before the kernels write them."""
import numpy as np
import pytest

import transformer.ops as ops
from transformer import device
from transformer.ops import packed
from transformer.ops import reference as ref
from transformer.ops.packed import PackedWeight, quantize_int4

SHAPES = [(1, 1, 1), (1, 32, 16), (3, 67, 17), (5, 96, 130), (17, 130, 129), (4, 768, 65),
          (9, 40, 200), (1, 768, 64), (2, 100, 70)]  # (M, K, O): K not a multiple of 32, O of 64
VARIANTS = list(packed.supported_variants("int4"))


@pytest.fixture(params=VARIANTS)
def variant(request, monkeypatch):
    monkeypatch.setitem(packed.VARIANT, "int4", request.param)
    return request.param


def _padded(a, K32):
    out = np.zeros((a.shape[0], K32), np.int64)
    out[:, :a.shape[1]] = a
    return out


def _group_sums(q, codes):
    """isum (M, O, G) int64 = sum over each group of 32 k of q[m, k] codes[o, k], and xsum (M, G),
    in exact integers (NumPy int64)."""
    K32 = -(-q.shape[1] // 32) * 32
    qg = _padded(q, K32).reshape(len(q), -1, 32)
    cg = _padded(codes, K32).reshape(len(codes), -1, 32)
    return np.einsum("mgk,ogk->mog", qg, cg), qg.sum(axis=2)


def _int8_rows(x):
    """Per-row symmetric int8 quantization in NumPy: q = rint(x * s), s = 127 / max|x|."""
    amax = np.abs(x).max(axis=1)
    s = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 1).astype(np.float32)
    return np.clip(np.rint(x * s[:, None]), -127, 127).astype(np.int8), s


def _dequantized(codes, scale, minimum):
    K = codes.shape[1]
    g = np.arange(K) // 32
    return codes * scale[:, g].astype(np.float64) + minimum[:, g]


@pytest.mark.parametrize("M,K,O", SHAPES)
def test_int4_group_sums_exact(rng, variant, M, K, O):
    """int32 group sums equal the int64 NumPy ones, bit for bit, extremes included (codes all
    15 or 0, activations all -127, 127 or -128)."""
    codes = rng.integers(0, 16, (O, K), dtype=np.uint8)
    codes[0] = 15
    codes[-1] = 0 if O > 1 else codes[-1]
    w = PackedWeight.from_int4(codes, *np.ones((2, O, -(-K // 32)), np.float32))
    q = rng.integers(-127, 128, (M, K), dtype=np.int8)
    q[-1] = -127
    q[0, ::2] = -128 if M > 1 else q[0, ::2]
    out = np.full((M, O, -(-K // 32)), -12345, np.int32)
    w.int32_product(q, variant, out)
    assert np.array_equal(out, _group_sums(q, codes)[0])


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("M,K,O", SHAPES)
def test_int4_linear_matches_float64(rng, variant, activation, M, K, O):
    """The float32 result equals the float64 formula out = (sum_g scale isum + minimum xsum) /
    sx + bias on the same integers, and lies within the quantization bound of the float64
    product x @ w^T + bias: |x| . (scale / 2) for the weights plus |w_q| . (1 / 2 sx) for the
    activations."""
    x = rng.standard_normal((M, K)).astype(np.float32) * rng.uniform(0.1, 10)
    w = rng.standard_normal((O, K)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    pw = PackedWeight.pack(w, "int4")
    got = ops.linear(x, pw, b, activation)
    codes, scale, minimum = quantize_int4(w)
    q, sx = _int8_rows(x)
    isum, xsum = _group_sums(q, codes)
    exact = ((scale[None] * isum).sum(2) + xsum @ minimum.T.astype(np.float64)) / sx[:, None] + b
    want = exact if activation is None else ref.bias_act(exact, None, activation)
    scale_of = np.abs(xsum) @ np.abs(minimum.T) + (np.abs(scale[None]) * np.abs(isum)).sum(2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * (scale_of / sx[:, None]).max())
    lin = ops.linear(x, pw, b)
    wq = _dequantized(codes, scale, minimum)
    x64 = x.astype(np.float64)
    bound = (np.abs(x64) @ (scale[:, np.arange(K) // 32].T / 2)
             + 0.5 / sx[:, None] * np.abs(wq).sum(1)[None, :])
    assert np.all(np.abs(lin - (x64 @ w.T.astype(np.float64) + b)) <= bound * (1 + 1e-5) + 1e-4)


def test_int4_rows_independent_every_variant(rng, variant):
    """A row's result does not depend on the other rows (per-row quantization, the same
    operations per row in every tile): a batch equals its rows alone, bit for bit."""
    x = rng.standard_normal((23, 100)).astype(np.float32)
    pw = PackedWeight.pack(rng.standard_normal((150, 100)).astype(np.float32), "int4")
    out = np.full((23, 150), np.nan, np.float32)
    together = pw.linear(x, None, None, out, 2)
    alone = np.concatenate([ops.linear(x[i:i + 1], pw) for i in range(len(x))])
    assert np.array_equal(together, alone)


def test_quantize_int4_bound_and_round_trip(rng):
    """Codes in 0..15, minimum the group's min, scale (max - min) / 15, |deq - w| <= scale / 2;
    np.asarray dequantizes to code * scale + minimum; rows() gathers the same rows; a constant
    group is held exactly; a short last group (K = 70) uses its own min and max."""
    w = (rng.standard_normal((70, 70)) * rng.uniform(0.01, 100, (70, 1))).astype(np.float32)
    w[3, :32] = 0.25
    codes, scale, minimum = quantize_int4(w)
    assert codes.dtype == np.uint8 and codes.max() <= 15 and scale.shape == (70, 3)
    g = np.arange(70) // 32
    np.testing.assert_array_equal(minimum, np.stack([w[:, g == i].min(1) for i in range(3)], 1))
    np.testing.assert_allclose(scale * 15, np.stack([np.ptp(w[:, g == i], 1) for i in range(3)],
                                                    1), rtol=1e-6)
    deq = _dequantized(codes, scale, minimum)
    assert np.all(np.abs(deq - w) <= scale[:, g] / 2 * (1 + 1e-5) + 1e-6 * np.abs(w))
    pw = PackedWeight.pack(w, "int4")
    np.testing.assert_allclose(np.asarray(pw), deq, rtol=1e-6, atol=1e-6 * np.abs(w).max())
    assert np.all(np.asarray(pw)[3, :32] == 0.25)
    ids = np.array([3, 0, 69, 3])
    np.testing.assert_array_equal(pw.rows(ids), np.asarray(pw)[ids])
    np.testing.assert_allclose(np.asarray(pw.scaled(3.0)), 3 * np.asarray(pw), rtol=1e-6,
                               atol=1e-6 * np.abs(w).max())
    assert PackedWeight.pack(pw, "int4") is pw
    big = rng.standard_normal((320, 256)).astype(np.float32)
    assert PackedWeight.pack(big, "int4").nbytes <= 0.19 * big.nbytes  # 6 bits a weight


def test_llama_cpp_q4_0_and_zero_points_held_as_stored(rng):
    """llama.cpp's q4_0 block (value = (q - 8) d, ggml-quants.c dequantize_row_q4_0) is held
    exactly as scale d, minimum -8 d (d may be negative); an AWQ / GPTQ group with a zero point
    ((q - z) s) as scale s, minimum -s z."""
    O, K = 40, 96
    q = rng.integers(0, 16, (O, K), dtype=np.uint8)
    d = rng.standard_normal((O, K // 32)).astype(np.float16).astype(np.float32)
    pw = PackedWeight.from_int4(q, d, -8 * d)
    want = (q.astype(np.float32) - 8) * np.repeat(d, 32, axis=1)
    np.testing.assert_array_equal(np.asarray(pw), want)
    s = rng.uniform(0.001, 0.1, (O, K // 32)).astype(np.float32)
    z = rng.integers(0, 16, (O, K // 32)).astype(np.float32)
    want = (q - np.repeat(z, 32, axis=1)) * np.repeat(s, 32, axis=1).astype(np.float64)
    np.testing.assert_allclose(np.asarray(PackedWeight.from_int4(q, s, -s * z)), want,
                               rtol=1e-6, atol=1e-7)


def test_int4_bad_input():
    ones = np.ones((2, 1), np.float32)
    with pytest.raises(TypeError, match="codes"):
        PackedWeight.from_int4(np.zeros((2, 32), np.int8), ones, ones)
    with pytest.raises(ValueError, match="0..15"):
        PackedWeight.from_int4(np.full((2, 32), 16, np.uint8), ones, ones)
    with pytest.raises(ValueError, match="scale must have shape"):
        PackedWeight.from_int4(np.zeros((2, 33), np.uint8), ones, np.ones((2, 2)))
    with pytest.raises(ValueError, match="minimums must be finite"):
        PackedWeight.from_int4(np.zeros((2, 32), np.uint8), ones, ones * np.nan)
    with pytest.raises(ValueError, match="finite"):
        PackedWeight.pack(np.array([[1.0, np.inf]], np.float32), "int4")
    with pytest.raises(ValueError, match="2-D"):
        PackedWeight.pack(np.zeros(3, np.float32), "int4")


def test_int4_is_a_cpu_dtype_only():
    """The compute-type table puts int4 on the CPU; the GPU refuses it naming the dtype."""
    assert device.check("cpu", "int4") == ("cpu", "int4")
    with pytest.raises(ValueError, match="'int4'"):
        device.check("cuda", "int4")
