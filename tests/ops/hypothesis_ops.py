"""Property-based tests of every op front in transformer.ops (hypothesis). Run by
tests/ops/test_op_properties.py in a subprocess, so that a crash (segfault, SIGFPE) fails a test
instead of killing pytest; also runnable directly: pytest tests/ops/hypothesis_ops.py.

Inputs: random shapes (zero-size and 1 included), dtypes (float32, float64, float16, int32),
layouts (C order, Fortran order, negative, zero and step-2 strides), masks, lengths, indices in
and out of range, and scalar arguments. The property of every call: a TypeError, ValueError or
IndexError with a message, or a result equal to the float64 reference of transformer.ops.reference
computed on the same arrays."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer import ops
from transformer.ops import reference as ref

SETTINGS = settings(max_examples=int(os.environ.get("TRANSFORMER_HYPOTHESIS_N", 60)),
                    derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
CLEAR = (TypeError, ValueError, IndexError)
DTYPES = [np.float32, np.float32, np.float64, np.float16, np.int32]
LAYOUTS = ["c", "c", "f", "neg", "zero", "step"]


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN/inf inputs, references


def close(got, want, tol=2e-4):
    """got (float32) equals want (float64) within tol, NaN where want is NaN."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)


def outcome(fn, *args, **kwargs):
    """fn's result, or None after a clear error (one of CLEAR with a message)."""
    try:
        return fn(*args, **kwargs)
    except CLEAR as e:
        assert str(e), f"{type(e).__name__} without a message"
        return None


@st.composite
def array(draw, shape, dtypes=DTYPES, layouts=LAYOUTS, scale=1.0):
    """A random array of `shape` in a random dtype and memory layout (values from a seeded
    generator; views keep their odd strides)."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    dtype = draw(st.sampled_from(dtypes))
    a = (rng.standard_normal(shape) * scale).astype(dtype) if np.dtype(dtype).kind == "f" \
        else rng.integers(-3, 3, shape).astype(dtype)
    kind = draw(st.sampled_from(layouts))
    if kind == "f":
        a = np.asfortranarray(a)
    elif kind == "neg" and a.ndim:
        ax = draw(st.integers(0, a.ndim - 1))
        a = np.flip(a, ax)
    elif kind == "zero" and a.ndim:
        ax = draw(st.integers(0, a.ndim - 1))
        a = np.broadcast_to(a.take([0] if a.shape[ax] else [], axis=ax), shape) \
            if a.shape[ax] else a
    elif kind == "step" and a.ndim:
        ax = draw(st.integers(0, a.ndim - 1))
        big = np.repeat(a, 2, axis=ax)
        a = big[(slice(None),) * ax + (slice(None, None, 2),)]
    return a


dims = st.integers(0, 5)
small = st.sampled_from([0, 1, 1, 2, 3, 7])


@SETTINGS
@given(st.data(), st.lists(small, min_size=1, max_size=3), small,
       st.sampled_from(ops.ACTIVATIONS + ("tanh",)), st.booleans())
def test_linear(data, lead, O, activation, with_bias):
    x = data.draw(array(tuple(lead)))
    K = x.shape[-1]
    w = data.draw(array((O, data.draw(st.sampled_from([K, K, K + 1])))))
    b = data.draw(array((data.draw(st.sampled_from([O, O, O + 1])),))) if with_bias else None
    got = outcome(ops.linear, x, w, b, activation, threads=2)
    if got is not None:
        close(got, ref.linear(x, w, b, activation))


@SETTINGS
@given(st.data(), st.lists(small, min_size=0, max_size=3),
       st.sampled_from(["gelu", "gelu_tanh", "relu", "silu", "bias_act", "add"]))
def test_elementwise(data, shape, name):
    x = data.draw(array(tuple(shape), scale=3.0))
    if name == "add":
        y = data.draw(array(data.draw(st.sampled_from([x.shape, x.shape[1:] + (1,)]))))
        got = outcome(ops.add, x, y)
        if got is not None:
            close(got, np.asarray(x, np.float64) + np.asarray(y, np.float64))
        return
    if name == "bias_act":
        act = data.draw(st.sampled_from(ops.ACTIVATIONS))
        b = data.draw(array((x.shape[-1] if x.ndim else 1,))) if data.draw(st.booleans()) \
            else None
        got = outcome(ops.bias_act, x, b, act, threads=2)
        if got is not None:
            close(got, ref.bias_act(x, b, act))
        return
    got = outcome(getattr(ops, name), x, threads=2)
    if got is not None:
        close(got, ref.bias_act(x, None, name))


@SETTINGS
@given(st.data(), st.lists(small, min_size=1, max_size=3), st.booleans(),
       st.sampled_from([1e-5, 1e-12, 0.0, -1.0, float("nan"), float("inf"), "x", True]))
def test_norms(data, shape, rms, eps):
    x = data.draw(array(tuple(shape)))
    C = x.shape[-1]
    w = data.draw(array((data.draw(st.sampled_from([C, C, C + 1])),)))
    if rms:
        got = outcome(ops.rms_norm, x, w, eps, threads=2)
        if got is not None:
            close(got, ref.rms_norm(x, w, eps), 1e-3)
        return
    b = data.draw(array((C,)))
    r = data.draw(array(x.shape)) if data.draw(st.booleans()) else None
    got = outcome(ops.layer_norm, x, w, b, eps, residual=r, threads=2)
    if got is not None:
        close(got, ref.layer_norm(x, w, b, eps, r), 1e-3)


@SETTINGS
@given(st.data(), st.lists(small, min_size=1, max_size=3), st.sampled_from([None, "row", "full"]),
       st.booleans())
def test_softmax(data, shape, mask_kind, poison):
    x = data.draw(array(tuple(shape), scale=3.0))
    if poison and x.size and x.dtype.kind == "f":
        x = np.array(x)
        x.flat[data.draw(st.integers(0, x.size - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
    mask = None
    if mask_kind:
        rng = np.random.default_rng(data.draw(st.integers(0, 99)))
        mshape = x.shape[-1:] if mask_kind == "row" else x.shape
        mask = np.where(rng.random(mshape) < 0.3, -np.inf, 0.0).astype(np.float32)
    got = outcome(ops.softmax, x, mask, threads=2)
    if got is not None:
        close(got, ref.softmax(x, mask))


@SETTINGS
@given(st.data(), small, st.sampled_from([1, 2, 3, 5]), small, st.booleans(), st.booleans(),
       st.booleans())
def test_embedding(data, V, C, T, with_pos_ids, with_types, with_norm):
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    shape = data.draw(st.sampled_from([(T,), (2, T), (1, 1)]))
    hi = data.draw(st.sampled_from([V, V, V + 1, 2 ** 33]))
    lo = data.draw(st.sampled_from([0, 0, 0, -1]))
    ids = rng.integers(lo, max(hi, lo + 1), shape).astype(
        data.draw(st.sampled_from([np.int64, np.int32, np.uint8, np.float32])))
    word = data.draw(array((V, C)))
    P = data.draw(st.sampled_from([T, T + 2, max(T - 1, 0)]))
    pos = data.draw(array((P, C)))
    pos_ids = rng.integers(0, max(P, 1) + data.draw(st.integers(0, 1)), shape) \
        if with_pos_ids else None
    types = data.draw(array((2, C))) if with_types else None
    type_ids = rng.integers(0, 3, shape) if with_types and data.draw(st.booleans()) else None
    nw = data.draw(array((C,))) if with_norm else None
    nb = data.draw(array((C,))) if with_norm else None
    eps = data.draw(st.sampled_from([1e-12, 1e-5, 0.0, float("nan")]))
    got = outcome(ops.embedding, ids, word, pos, pos_ids, type_ids, types, nw, nb, eps,
                  threads=2)
    if got is not None:
        close(got, ref.embedding(ids, word, pos, pos_ids, type_ids, types, nw, nb, eps), 1e-3)


@SETTINGS
@given(st.data(), small, st.sampled_from([0, 1, 2, 3, 4, 6]), st.integers(0, 3), small,
       st.booleans(), st.sampled_from([10000.0, 500000.0, 0.0, -1.0]))
def test_rotary(data, N, D, n_heads, P, interleaved, theta):
    cs = outcome(ops.rotary_tables, P, D, theta)
    if cs is None:
        return
    cos, sin = cs
    W = data.draw(st.sampled_from([n_heads * D, n_heads * D + 3, max(n_heads * D - 1, 0)]))
    x = data.draw(array((N, W), dtypes=[np.float32, np.float32, np.float64]))
    positions = np.random.default_rng(N).integers(0, P + data.draw(st.integers(0, 1)), N)
    before = np.array(x, np.float64)
    got = outcome(ops.rotary, x, positions, cos, sin, n_heads, interleaved, threads=2)
    if got is not None:
        assert got is x
        close(got, ref.rotary(before, positions, n_heads, D, theta, interleaved))


@SETTINGS
@given(st.data(), st.lists(small, min_size=1, max_size=3))
def test_swiglu(data, shape):
    x = data.draw(array(tuple(shape), scale=2.0))
    activation = data.draw(st.sampled_from(ops.GATED_ACTIVATIONS))
    got = outcome(ops.swiglu, x, threads=2, activation=activation)
    if got is not None:
        close(got, ref.swiglu(x, activation))


def _qkv(data, q_shape, k_shape):
    f32 = [np.float32] * 5 + [np.float64]
    q = data.draw(array(q_shape, dtypes=f32))
    k = data.draw(array(k_shape, dtypes=f32))
    v = data.draw(array(data.draw(st.sampled_from([k_shape, k_shape, k_shape[:-1] + (1,)])),
                        dtypes=f32))
    if data.draw(st.integers(0, 7)) == 0 and q.size:  # a NaN or +inf query
        q = np.array(q)
        q.flat[0] = data.draw(st.sampled_from([np.nan, np.inf]))
    return q, k, v


@SETTINGS
@given(st.data(), st.integers(0, 2), st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (3, 2)]),
       dims, dims, st.integers(0, 9), st.booleans(), st.booleans(),
       st.sampled_from([None, None, 0.5, 0.0, float("nan")]))
def test_attention(data, B, heads, T, S, D, causal, with_mask, scale):
    H, Hkv = heads
    q, k, v = _qkv(data, (B, H, T, D), (B, Hkv, S, D))
    mask = None
    if with_mask:
        mask = np.random.default_rng(S).integers(0, 2, (B, S))
    got = outcome(ops.attention, q, k, v, mask, causal, scale, threads=2)
    if got is not None:
        close(got, ref.attention(q, k, v, mask, causal, scale))


@SETTINGS
@given(st.data(), st.lists(st.integers(0, 4), min_size=0, max_size=3),
       st.sampled_from([(1, 1), (2, 1), (2, 2), (3, 2)]), st.integers(0, 6), st.booleans(),
       st.booleans())
def test_attention_varlen(data, lens, heads, D, causal, cross):
    H, Hkv = heads
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    cu_k = None
    Nk = int(cu[-1])
    if cross:
        klens = data.draw(st.lists(st.integers(0, 4), min_size=len(lens), max_size=len(lens)))
        cu_k = np.concatenate([[0], np.cumsum(klens)]).astype(np.int64)
        Nk = int(cu_k[-1])
    q, k, v = _qkv(data, (int(cu[-1]), H, D), (Nk, Hkv, D))
    if data.draw(st.integers(0, 5)) == 0 and len(cu) > 1:
        cu = cu.copy()
        cu[-1] += data.draw(st.sampled_from([-1, 1, 2 ** 33]))
    got = outcome(ops.attention_varlen, q, k, v, cu, causal, None, None, cu_k, threads=2)
    if got is not None:
        close(got, ref.attention_varlen(q, k, v, cu, causal, None, cu_k))


@SETTINGS
@given(st.data(), st.integers(0, 3), st.integers(0, 6),
       st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2)]), st.integers(0, 5),
       st.sampled_from([None, None, 1, 2, 3, 1000, 0, -1, 2.0, 2 ** 40]), st.booleans(),
       st.booleans())
def test_decode_attention(data, B, S_max, heads, D, chunk, with_mask, with_index):
    H, Hkv = heads
    Bkv = B + (1 if with_index else 0)
    q, k, v = _qkv(data, (B, H, D), (Bkv, S_max, Hkv, D))
    if data.draw(st.integers(0, 5)) == 0:  # v_cache with fewer positions (the old segfault)
        v = np.zeros((Bkv, max(S_max - 1, 0), Hkv, D), np.float32)
    rng = np.random.default_rng(S_max)
    lengths = rng.integers(0, S_max + 1 + data.draw(st.integers(0, 1)), B)
    mask = rng.integers(0, 2, (Bkv, S_max)) if with_mask else None
    kv_index = None
    if with_index:
        kv_index = rng.integers(0, Bkv + data.draw(st.sampled_from([0, 0, 1, 2 ** 32])), B)
    got = outcome(ops.decode_attention, q, k, v, lengths, mask, None, None, chunk, kv_index,
                  threads=2)
    if got is not None:
        close(got, ref.decode_attention(q, k, v, lengths, mask, None, kv_index))


@SETTINGS
@given(st.data(), st.integers(0, 4), st.integers(1, 3), st.integers(0, 9),
       st.sampled_from([1, 2, 3, 0, -1, 2.5]))
def test_beam_topk(data, B, num_beams, V, k):
    logits = data.draw(array((B * num_beams, V), scale=3.0))
    scores = data.draw(array((data.draw(st.sampled_from([B * num_beams, B * num_beams + 1])),)))
    nb = data.draw(st.sampled_from([num_beams, num_beams, 0, num_beams + 1]))
    got = outcome(ops.beam_topk, logits, scores, nb, k, threads=2)
    if got is not None:
        vals, idx = got
        want, _ = ref.beam_topk(logits, scores, nb, k)
        close(vals, want, 1e-4)
        lp = ref.beam_topk(logits, scores, nb, num_beams * V)[0]  # every score, sorted
        flat = (np.asarray(logits, np.float64) - 0).reshape(len(vals), -1)
        assert idx.shape == vals.shape and (idx >= 0).all() and (idx < flat.shape[1]).all()
        assert lp.shape[1] == flat.shape[1]
