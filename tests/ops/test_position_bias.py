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
