"""Position biases computed inside the CPU attention kernels (ALiBi, relative position buckets,
bidirectional and causal) against the float64 reference with the dense (H, T, S) bias, on odd
sizes, masks, causal prefill, ragged batches and decode steps; outputs poisoned first."""
import numpy as np
import pytest

import transformer.ops as ops
from transformer.ops import reference as ref
from transformer.ops.position_bias import PositionBias, alibi_slopes, relative_bucket

TOL = dict(rtol=1e-5, atol=1e-5)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def biases(rng, H):
    """One bias of each kind for H heads: ALiBi, bidirectional buckets (MPNet/T5 encoder),
    causal buckets (T5 decoder), with a small max_distance so saturation shows."""
    return [PositionBias.alibi(alibi_slopes(H)),
            PositionBias.relative(randn(rng, H, 32), max_distance=20),
            PositionBias.relative(randn(rng, H, 16), max_distance=40, bidirectional=False)]


@pytest.mark.parametrize("B,H,Hkv,T,S,D", [(1, 1, 1, 1, 1, 8), (2, 3, 3, 70, 70, 24),
                                           (2, 4, 2, 17, 130, 16), (1, 6, 6, 129, 129, 4)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_attention_with_position_bias(rng, B, H, Hkv, T, S, D, causal, kind):
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, Hkv, S, D), randn(rng, B, Hkv, S, D)
    mask = (rng.random((B, S)) < 0.8).astype(np.int64)
    mask[:, -1] = 1
    pb = biases(rng, H)[kind]
    got = ops.attention(q, k, v, mask, causal=causal, position_bias=pb, threads=2)
    np.testing.assert_allclose(got, ref.attention(q, k, v, mask, causal, position_bias=pb), **TOL)


@pytest.mark.parametrize("lens", [[1], [5, 0, 25, 10], [130, 3]])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_attention_varlen_with_position_bias(rng, lens, kind):
    N, H, D = sum(lens), 4, 12
    cu = np.concatenate([[0], np.cumsum(lens)])
    qkv = randn(rng, N, 3, H, D)
    pb = biases(rng, H)[kind]
    out = np.full((N, H, D), np.nan, np.float32)
    got = ops.attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, causal=kind != 1, out=out,
                               position_bias=pb)
    want = ref.attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, kind != 1,
                                position_bias=pb)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_decode_attention_with_position_bias(rng, chunk, kind):
    """The query at position lengths[b] - 1 against keys 0.. (split-K chunks carry the key
    offset); equals the last row of causal prefill attention."""
    B, S, H, Hkv, D = 3, 90, 6, 3, 16
    q = randn(rng, B, H, D)
    k, v = randn(rng, B, S, Hkv, D), randn(rng, B, S, Hkv, D)
    lengths = np.array([S, 1, 47])
    pb = biases(rng, H)[kind]
    out = np.full((B, H, D), np.nan, np.float32)
    got = ops.decode_attention(q, k, v, lengths, chunk=chunk, out=out, threads=2,
                               position_bias=pb)
    for b in range(B):
        L = lengths[b]
        want = ref.attention(q[b][None, :, None], k[b, :L].transpose(1, 0, 2)[None],
                             v[b, :L].transpose(1, 0, 2)[None], position_bias=pb)[0, :, 0]
        np.testing.assert_allclose(got[b], want, **TOL)


def test_relative_bucket_formula():
    """HF's T5 buckets, written out: exact below num_buckets/2 (per direction), log-spaced up
    to max_distance, saturated after."""
    rel = np.arange(-300, 301)
    b = relative_bucket(rel, 32, 128, True)
    assert b[300] == 0 and b[301] == 17 and b[299] == 1  # d = 0, +1, -1
    assert b.min() == 0 and b.max() == 31 and b[0] == 15 and b[-1] == 31
    c = relative_bucket(rel, 32, 128, False)
    assert np.all(c[rel >= 0] == 0) and c[299] == 1 and c[0] == 31
    n = np.arange(0, 200)
    assert np.all(np.diff(relative_bucket(-n, 32, 128, True)) >= 0)


def test_alibi_slopes_match_bloom():
    """HF BLOOM's slopes: 8 heads 2^-1..2^-8; 12 heads add 2^-0.5, 2^-1.5, ... for the rest."""
    np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-6)
    s12 = alibi_slopes(12)
    np.testing.assert_allclose(s12[:8], 2.0 ** -np.arange(1, 9), rtol=1e-6)
    np.testing.assert_allclose(s12[8:], 2.0 ** -(np.arange(1, 8, 2) / 2), rtol=1e-6)


def test_position_bias_bad_input(rng):
    q, k = randn(rng, 1, 2, 3, 8), randn(rng, 1, 2, 3, 8)
    with pytest.raises(ValueError, match="3 heads, q has 2"):
        ops.attention(q, k, k, position_bias=PositionBias.alibi([0.5, 0.25, 0.1]))
    with pytest.raises(TypeError, match="position_bias"):
        ops.attention(q, k, k, position_bias=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="exactly one"):
        PositionBias()
    with pytest.raises(ValueError, match="num_buckets"):
        PositionBias.relative(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="finite"):
        PositionBias.alibi([np.nan])


# -- the device path without a GPU: the stand-in of tests/fake_gpu.py ------------------------------
def _device(fake_gpu, a, dtype):
    return fake_gpu.FAKE_CUPY.asarray(fake_gpu.encode(a, np.dtype(dtype)))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_position_bias_device_paths(fake_gpu, rng, dtype, kind):
    """On CuPy operands the fronts pass the PositionBias's kernel arguments to the cuda backend
    as they pass them to the CPU one (no refusal): attention, attention_varlen and
    decode_attention give the CPU results (float32 exactly, 16-bit storage within its
    rounding); the tables go to the device once, however many calls."""
    from transformer.ops import cuda
    B, H, Hkv, T, S, D = 2, 4, 2, 9, 23, 8
    pb = biases(rng, H)[kind]
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, Hkv, S, D), randn(rng, B, Hkv, S, D)
    if dtype != np.float32:  # the CPU run on the values the device holds
        q, k, v = (fake_gpu.decode(fake_gpu.encode(a, np.dtype(dtype))) for a in (q, k, v))
    tol = dict(rtol=0, atol=0) if dtype == np.float32 else dict(rtol=2e-2, atol=2e-2)
    mask = (rng.random((B, S)) < 0.8).astype(np.int64)
    dq, dk, dv = (_device(fake_gpu, a, dtype) for a in (q, k, v))
    for causal in (False, True):
        got = ops.attention(dq, dk, dv, mask, causal=causal, position_bias=pb)
        assert ops.on_device(got) and got.dtype == dtype
        np.testing.assert_allclose(fake_gpu.decode(got),
                                   ops.attention(q, k, v, mask, causal, position_bias=pb), **tol)
    lens = [5, 0, 13]
    cu = np.concatenate([[0], np.cumsum(lens)])
    qkv = randn(rng, cu[-1], 3, H, D)
    if dtype != np.float32:
        qkv = fake_gpu.decode(fake_gpu.encode(qkv, np.dtype(dtype)))
    dqkv = _device(fake_gpu, qkv, dtype)
    got = ops.attention_varlen(dqkv[:, 0], dqkv[:, 1, :Hkv], dqkv[:, 2, :Hkv], cu, causal=True,
                               position_bias=pb)
    want = ops.attention_varlen(qkv[:, 0], qkv[:, 1, :Hkv], qkv[:, 2, :Hkv], cu, causal=True,
                                position_bias=pb)
    np.testing.assert_allclose(fake_gpu.decode(got), want, **tol)
    kc, vc = randn(rng, B, S, Hkv, D), randn(rng, B, S, Hkv, D)
    if dtype != np.float32:
        kc, vc = (fake_gpu.decode(fake_gpu.encode(a, np.dtype(dtype))) for a in (kc, vc))
    lengths = np.array([S, 7])
    got = ops.decode_attention(dq[:, :, 0], _device(fake_gpu, kc, dtype),
                               _device(fake_gpu, vc, dtype), lengths, position_bias=pb)
    want = ops.decode_attention(np.ascontiguousarray(q[:, :, 0]), kc, vc, lengths,
                                position_bias=pb)
    np.testing.assert_allclose(fake_gpu.decode(got), want, **tol)
    assert len(cuda._TABLES) == (1 if kind == 0 else 2)  # slopes, or table + bucket_of: once


def test_position_bias_args(fake_gpu, rng):
    """cuda.position_bias_args: the CPU keywords as kernel arguments, null pointers for none,
    clear errors for tables that do not fit (an out-of-range bucket would be an illegal
    address on the GPU)."""
    from transformer.ops import cuda
    null = cuda._NULL
    args = cuda.position_bias_args(3)
    assert args[0] is null and args[1] is null and args[3] is null
    assert [int(a) for a in (args[2], args[4], args[5], args[6])] == [0, 0, 0, 0]
    pb = PositionBias.relative(randn(rng, 3, 16), max_distance=40, bidirectional=True)
    _, table, nb, buckets, n_tab, half, bidi = cuda.position_bias_args(3, **pb.kernel_args())
    assert (int(nb), int(n_tab), int(half), int(bidi)) == (16, 42, 8, 1)
    np.testing.assert_array_equal(fake_gpu.decode(table), pb.table)
    assert cuda.position_bias_args(3, **pb.kernel_args())[1] is table  # cached, not re-uploaded
    kw = pb.kernel_args()
    with pytest.raises(ValueError, match=r"rel_table must have shape \(4, num_buckets\)"):
        cuda.position_bias_args(4, **kw)
    with pytest.raises(ValueError, match=r"alibi must have shape \(4,\)"):
        cuda.position_bias_args(4, alibi=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="bucket_of"):
        cuda.position_bias_args(3, **dict(kw, bucket_of=kw["bucket_of"] + 8))
    with pytest.raises(ValueError, match="needs bucket_of"):
        cuda.position_bias_args(3, rel_table=kw["rel_table"])
    with pytest.raises(TypeError, match="slopes"):
        cuda.position_bias_args(3, slopes=np.ones(3, np.float32))
