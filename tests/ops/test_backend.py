"""The CPU backend object (transformer.ops.cpu.CPUBackend: what a model binds at placement, without
checks) against the checked op fronts, which run on the same object: bit for bit, on fresh random inputs, with
every output allocated NaN-poisoned so that an unwritten element shows. The fused residual +
norm (add_norm) has no front: it is held to the float64 reference."""
import types

import numpy as np
import pytest

from transformer import ops
from transformer.ops import reference
from transformer.ops.backend import VarlenPlan
from transformer.ops.cpu import CPUBackend


def _poisoned(threads=2):
    """A CPU backend (a fresh one, not the shared object) whose every output array starts as
    NaN."""
    k = CPUBackend(threads)
    k.xp = types.SimpleNamespace(empty=lambda shape, dtype: np.full(shape, np.nan, dtype),
                                 asarray=np.asarray, ascontiguousarray=np.ascontiguousarray)
    return k


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("N,K,O", [(1, 64, 64), (5, 33, 70), (40, 96, 17)])
@pytest.mark.parametrize("activation", [None, "gelu", "silu"])
@pytest.mark.parametrize("dtype", ["float32", "int8", "bfloat16"])
def test_linear_equals_front(rng, N, K, O, activation, dtype):
    k = _poisoned()
    x, w, b = _f32(rng, N, K), _f32(rng, O, K), _f32(rng, O)
    if dtype != "float32":
        w = ops.PackedWeight.pack(w, dtype)
    np.testing.assert_array_equal(k.linear(x, w, b, activation),
                                  ops.linear(x, w, b, activation, threads=2))


@pytest.mark.parametrize("N,C", [(1, 64), (7, 45)])
def test_norms_and_add_norm(rng, N, C):
    k = _poisoned()
    h, y, w, b = _f32(rng, N, C), _f32(rng, N, C), _f32(rng, C), _f32(rng, C)
    np.testing.assert_array_equal(k.rms_norm(h, w, 1e-6), ops.rms_norm(h, w, 1e-6, threads=2))
    np.testing.assert_array_equal(k.layer_norm(h, w, b, 1e-5, residual=y),
                                  ops.layer_norm(h, w, b, 1e-5, residual=y, threads=2))
    h64 = h.astype(np.float64) + y
    for rms in (True, False):
        s, out = k.add_norm(h, y, w, None if rms else b, 1e-5, rms)
        np.testing.assert_array_equal(s, h + y)  # the residual stream, exactly float32 h + y
        want = reference.rms_norm(h64, w, 1e-5) if rms else reference.layer_norm(h64, w, b,
                                                                                 1e-5)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_row_ops_equal_fronts(rng):
    k = _poisoned()
    gate_up = _f32(rng, 6, 2 * 37)
    for act in ("silu", "gelu", "gelu_tanh", "relu"):
        np.testing.assert_array_equal(k.swiglu(gate_up, act),
                                      ops.swiglu(gate_up, threads=2, activation=act))
    cos, sin = ops.rotary_tables(50, 8)
    positions = rng.integers(0, 50, 6)
    qkv = _f32(rng, 6, 5 * 8)
    want = ops.rotary(qkv.copy(), positions, cos, sin, 3, threads=2)
    np.testing.assert_array_equal(k.rotary(qkv, positions, cos, sin, 3, False), want)
    word, pos, types_ = _f32(rng, 30, 16), _f32(rng, 12, 16), _f32(rng, 2, 16)
    ids, p, t = rng.integers(0, 30, 9), rng.integers(0, 12, 9), rng.integers(0, 2, 9)
    nw, nb = _f32(rng, 16), _f32(rng, 16)
    np.testing.assert_array_equal(
        k.embedding(ids, p, word, pos, nw, nb, 1e-12, t, types_),
        ops.embedding(ids, word, pos, p, t, types_, nw, nb, 1e-12, threads=2))
    packed = ops.PackedWeight.pack(word, "int8")
    np.testing.assert_array_equal(k.embedding(ids, p, packed, pos),
                                  ops.embedding(ids, packed, pos, p, threads=2))


@pytest.mark.parametrize("bias", [None, "alibi", "relative"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_varlen_equals_front(rng, bias, causal):
    k = _poisoned()
    lens = [5, 1, 13]
    cu = np.concatenate([[0], np.cumsum(lens)])
    N, H, Hkv, D = cu[-1], 4, 2, 8
    qkv = _f32(rng, N, (H + 2 * Hkv) * D)
    q = qkv[:, :H * D].reshape(N, H, D)
    kk = qkv[:, H * D:(H + Hkv) * D].reshape(N, Hkv, D)
    v = qkv[:, (H + Hkv) * D:].reshape(N, Hkv, D)
    pb = None if bias is None else ops.PositionBias.alibi(ops.position_bias.alibi_slopes(H)) \
        if bias == "alibi" else ops.PositionBias.relative(_f32(rng, H, 32), 20, not causal)
    got = k.attention_varlen(q, kk, v, VarlenPlan(cu), causal, 0.3, pb)
    want = ops.attention_varlen(q, kk, v, cu, causal=causal, scale=0.3, threads=2,
                                position_bias=pb)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("planes", [False, True])
def test_decode_attention_equals_front(rng, planes):
    k = _poisoned()
    R, H, Hkv, D, S = 3, 4, 2, 8, 70
    cache_k, cache_v = _f32(rng, R + 2, S, Hkv, D), _f32(rng, R + 2, S, Hkv, D)
    q = _f32(rng, R, H, D)
    lengths = np.array([1, 65, 33], np.int32)
    kv_rows = rng.integers(0, R + 2, (R, S)).astype(np.int32) if planes else None
    kc, vc = (cache_k, cache_v) if planes else (cache_k[:R], cache_v[:R])
    got = k.decode_attention(q, kc, vc, lengths, None, kv_rows=kv_rows)
    want = ops.decode_attention(q, kc, vc, lengths, threads=2, kv_rows=kv_rows)
    np.testing.assert_array_equal(got, want)
    index = np.array([4, 0, 4], np.int32)  # kv_index: rows sharing a plane
    np.testing.assert_array_equal(
        k.decode_attention(q, cache_k, cache_v, lengths, 0.5, kv_index=index),
        ops.decode_attention(q, cache_k, cache_v, lengths, scale=0.5, kv_index=index,
                             threads=2))


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("bias", [None, "alibi"])
def test_decode_self_attention_equals_separate_ops(rng, rotary, bias):
    """The fused CPU decode step (rotate, append to the cache, attend through the plane table)
    against the fronts run one after the other: the cache and the context bit for bit."""
    k = _poisoned()
    R, H, Hkv, D, S = 3, 4, 2, 8, 40
    cache_k, cache_v = _f32(rng, R + 1, S, Hkv, D), _f32(rng, R + 1, S, Hkv, D)
    qkv = _f32(rng, R, (H + 2 * Hkv) * D)
    positions = np.array([0, 17, 39], np.int64)
    kv_rows = rng.integers(0, R + 1, (R, S)).astype(np.int32)
    kv_rows[np.arange(R), positions] = np.arange(R)  # the new key of row r lies in plane r
    cos, sin = ops.rotary_tables(S, D)
    pb = None if bias is None else ops.PositionBias.alibi(ops.position_bias.alibi_slopes(H))
    want_qkv = qkv.copy()
    if rotary:
        ops.rotary(want_qkv, positions, cos, sin, H + Hkv, threads=2)
    want_k, want_v = cache_k.copy(), cache_v.copy()
    want_k[np.arange(R), positions] = want_qkv[:, H * D:(H + Hkv) * D].reshape(R, Hkv, D)
    want_v[np.arange(R), positions] = want_qkv[:, (H + Hkv) * D:].reshape(R, Hkv, D)
    lengths = (positions + 1).astype(np.int32)
    want = ops.decode_attention(want_qkv[:, :H * D].reshape(R, H, D), want_k, want_v, lengths,
                                threads=2, kv_rows=kv_rows, position_bias=pb)
    got = k.decode_self_attention(qkv, H, positions, (cos, sin) if rotary else None, False,
                                  cache_k, cache_v, lengths, None, kv_rows, pb)
    np.testing.assert_array_equal(cache_k, want_k)
    np.testing.assert_array_equal(cache_v, want_v)
    np.testing.assert_array_equal(got, want)


def test_backends_have_the_same_methods_and_signatures():
    """CPUBackend and CUDABackend: the same public methods with the same argument lists, so a
    model or the search never branches on the device (inspected without a GPU)."""
    import inspect

    from transformer.ops.cuda import CUDABackend

    def methods(cls):
        return {name: inspect.signature(getattr(cls, name)) for name in dir(cls)
                if not name.startswith("_") and callable(getattr(cls, name))}
    cpu, cuda = methods(CPUBackend), methods(CUDABackend)
    assert set(cpu) == set(cuda), set(cpu) ^ set(cuda)
    for name in cpu:
        assert cpu[name] == cuda[name], (name, cpu[name], cuda[name])
    assert {"decode_attention", "decode_self_attention", "beam_topk", "reorder_cache"} <= set(cpu)
