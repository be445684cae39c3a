"""Every op of every backend against the float64 reference (transformer/ops/reference.py), on
fresh random inputs and odd sizes, with outputs poisoned (NaN) before the kernel writes them,
so an element the kernel forgets to write fails the test. One harness: backends x dtypes x
shapes; a new backend adds itself to BACKENDS."""
import importlib

import numpy as np
import pytest

import transformer.ops as ops
from transformer.ops import reference as ref

BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5)}  # fp16/bf16: tests/ops/test_cuda.py
DTYPES = list(TOL)


class DeviceBackend:
    """The cuda backend object behind NumPy arguments: arrays (NaN-poisoned outputs included)
    go to the GPU as they are (float32), the result comes back."""

    def __init__(self, obj, cp):
        self.obj, self.cp = obj, cp

    def __getattr__(self, name):
        fn = getattr(self.obj, name)

        def call(*args, **kwargs):
            args = [self.cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            kwargs = {k: self.cp.asarray(a) if isinstance(a, np.ndarray) else a
                      for k, a in kwargs.items()}
            return self.cp.asnumpy(fn(*args, **kwargs))
        return call


@pytest.fixture(params=BACKENDS)
def backend(request):
    """backend(threads): the backend object of the parametrized device for `threads`."""
    module = importlib.import_module(f"transformer.ops.{request.param}")
    if request.param == "cuda":
        if not module.available():
            pytest.skip("no CUDA GPU (needs CuPy and a device)")
        return lambda threads: DeviceBackend(module.CUDABackend(threads), module.cupy())
    return module.CPUBackend


def assert_close(got, want, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale)


def poison(shape, dtype=np.float32):
    return np.full(shape, np.nan, dtype)


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K,O", [(1, 1, 1), (1, 384, 1536), (33, 120, 77), (257, 24, 130),
                                   (16, 64, 67), (17, 24, 9), (8, 768, 131),
                                   (5, 64, 3)])
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_linear(backend, rng, dtype, N, K, O, activation, threads):
    x, w, b = randn(rng, N, K), randn(rng, O, K) / K ** 0.5, randn(rng, O)
    out = backend(threads).linear(x, w, b, activation, out=poison((N, O)))
    assert_close(out, ref.linear(x, w, b, activation), dtype)
    out = backend(threads).linear(x, w, None, activation, out=poison((N, O)))
    assert_close(out, ref.linear(x, w, None, activation), dtype)


@pytest.mark.parametrize("activation", ops.ACTIVATIONS[1:])
def test_activations_front(rng, activation):
    x = randn(rng, 7, 257) * 4
    b = randn(rng, 257)
    assert_close(ops.bias_act(x, b, activation), ref.bias_act(x, b, activation), np.float32)
    fn = {"gelu": ops.gelu, "gelu_tanh": ops.gelu_tanh, "relu": ops.relu,
          "silu": ops.silu}[activation]
    assert_close(fn(x[0]), ref.bias_act(x[0], None, activation), np.float32)


@pytest.mark.parametrize("N,C", [(1, 1), (1, 384), (257, 120), (64, 24)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm(backend, rng, N, C, with_residual):
    x = randn(rng, N, C) * 3 + 1
    res = randn(rng, N, C) if with_residual else None
    g, b = randn(rng, C), randn(rng, C)
    out = backend(2).layer_norm(x, g, b, 1e-5, res, out=poison((N, C)))
    assert_close(out, ref.layer_norm(x, g, b, 1e-5, res), np.float32)


def test_layer_norm_in_place(rng):
    """out may alias the residual (the post-LN update h = LN(a + h))."""
    from transformer.ops.cpu import CPUBackend
    x, h = randn(rng, 9, 120), randn(rng, 9, 120)
    g, b = randn(rng, 120), randn(rng, 120)
    want = ref.layer_norm(x, g, b, 1e-12, h)
    CPUBackend(2).layer_norm(x, g, b, 1e-12, residual=h, out=h)
    assert_close(h, want, np.float32)


@pytest.mark.parametrize("N,S", [(1, 1), (3, 257), (64, 24), (10, 1000)])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax(backend, rng, N, S, masked):
    x = randn(rng, N, S) * 5
    mask = None
    if masked:
        mask = np.where(rng.random((N, S)) < 0.3, -np.inf, 0).astype(np.float32)
        mask[0] = -np.inf  # a fully masked row gives zeros, not NaN
    out = backend(2).softmax(x, mask, out=poison((N, S)))
    want = ref.softmax(x, mask)
    assert_close(out, want, np.float32)
    if masked:
        assert not np.isnan(out).any() and np.all(out[0] == 0)


def test_softmax_front_broadcast(rng):
    x = randn(rng, 2, 3, 5, 7)
    mask = np.where(rng.random((2, 1, 1, 7)) < 0.5, -np.inf, 0.0)
    assert_close(ops.softmax(x, mask), ref.softmax(x, mask), np.float32)


@pytest.mark.parametrize("N,C,V,P,TV", [(1, 1, 1, 1, 1), (37, 120, 50, 40, 2), (5, 384, 1000, 512, 0)])
@pytest.mark.parametrize("norm", [False, True])
def test_embedding(rng, N, C, V, P, TV, norm):
    word, pos = randn(rng, V, C), randn(rng, P, C)
    types_t = randn(rng, TV, C) if TV else None
    ids = rng.integers(0, V, (N,))
    pids = rng.integers(0, P, (N,))
    tids = rng.integers(0, TV, (N,)) if TV else None
    g, b = (randn(rng, C), randn(rng, C)) if norm else (None, None)
    got = ops.embedding(ids, word, pos, pids, tids, types_t, g, b, 1e-12)
    assert_close(got, ref.embedding(ids, word, pos, pids, tids, types_t, g, b, 1e-12), np.float32)


ATTN_SHAPES = [  # B, H, Hkv, T, S, D
    (1, 1, 1, 1, 1, 8), (2, 4, 4, 1, 257, 24), (2, 3, 3, 257, 257, 24), (3, 8, 2, 70, 130, 32),
    (1, 2, 1, 128, 64, 64), (2, 12, 12, 17, 17, 32), (1, 1, 1, 300, 5, 4),
]


@pytest.mark.parametrize("B,H,Hkv,T,S,D", ATTN_SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_attention(rng, B, H, Hkv, T, S, D, causal, masked, threads):
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, Hkv, S, D), randn(rng, B, Hkv, S, D)
    mask = None
    if masked:
        mask = (rng.random((B, S)) < 0.7).astype(np.int64)
        mask[0, :] = 1
        if B > 1:
            mask[-1, :] = 0  # a sequence with no key at all gives zeros
    got = ops.attention(q, k, v, mask, causal=causal, threads=threads)
    want = ref.attention(q, k, v, mask, causal=causal)
    want = np.nan_to_num(want)  # the reference's fully masked rows are zeros already
    assert_close(got, want, np.float32)


def test_attention_poisoned_strided(rng):
    """The backend writes every element of its output, reading q/k/v through strides."""
    from transformer.ops.backend import VarlenPlan
    from transformer.ops.cpu import CPUBackend
    B, T, H, D = 2, 130, 3, 24
    qkv = randn(rng, B, T, 3, H, D)
    out = poison((B, T, H, D))
    plan = VarlenPlan.padded(B, T, T)  # sequence b: plane b, queries and keys rows 0..T-1
    CPUBackend(2).attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], plan, False,
                            1 / np.sqrt(D), out=out)
    t = lambda a: a.transpose(0, 2, 1, 3)
    assert_close(t(out), ref.attention(t(qkv[:, :, 0]), t(qkv[:, :, 1]), t(qkv[:, :, 2])), np.float32)


@pytest.mark.parametrize("lens", [[1], [5, 0, 25, 10], [257, 3], [64, 64, 65]])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_varlen(rng, lens, causal):
    N, H, D = sum(lens), 4, 24
    cu = np.concatenate([[0], np.cumsum(lens)])
    qkv = randn(rng, N, 3, H, D)
    out = poison((N, H, D))
    got = ops.attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, causal=causal, out=out)
    assert_close(got, ref.attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, causal), np.float32)


# -- bad input: each error names the argument -------------------------------------------------

def test_linear_bad_input(rng):
    x, w = randn(rng, 4, 8), randn(rng, 5, 8)
    with pytest.raises(ValueError, match="features"):
        ops.linear(x, randn(rng, 5, 7))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        ops.linear(x.astype(np.int32), w)
    with pytest.raises(ValueError, match="bias"):
        ops.linear(x, w, randn(rng, 4))
    with pytest.raises(ValueError, match="activation"):
        ops.linear(x, w, activation="swish!")
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        ops.linear(x, randn(rng, 5, 8, 1))


def test_attention_bad_input(rng):
    q, k = randn(rng, 1, 4, 3, 8), randn(rng, 1, 3, 5, 8)
    with pytest.raises(ValueError, match="multiple"):
        ops.attention(q, k, k)
    with pytest.raises(TypeError, match="q must be a float32"):
        ops.attention(q.astype(np.float64), k, k)
    k = randn(rng, 1, 2, 5, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        ops.attention(q, k, k, np.ones((1, 4), int))
    with pytest.raises(ValueError, match="k and v"):
        ops.attention(q, k, k[:, :, :4])
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.attention_varlen(q[0], q[0], q[0], np.array([0, 2]))


def test_embedding_bad_input(rng):
    word, pos = randn(rng, 10, 4), randn(rng, 6, 4)
    with pytest.raises(IndexError, match="input_ids must lie in"):
        ops.embedding(np.array([[1, 10]]), word, pos)
    with pytest.raises(IndexError, match="input_ids"):
        ops.embedding(np.array([[-1]]), word, pos)
    with pytest.raises(TypeError, match="input_ids must have an integer dtype"):
        ops.embedding(np.array([[1.0]]), word, pos)
    with pytest.raises(ValueError, match="exceeds"):
        ops.embedding(np.zeros((1, 7), int), word, pos)
    with pytest.raises(ValueError, match="token_type_ids given"):
        ops.embedding(np.zeros((1, 2), int), word, pos, token_type_ids=np.zeros((1, 2), int))


# -- decoder ops: RMSNorm, rotary, SwiGLU, split-K decode attention ---------------------------

@pytest.mark.parametrize("N,C", [(1, 1), (257, 120), (3, 64)])
def test_rms_norm(backend, rng, N, C):
    x, w = randn(rng, N, C) * 2, randn(rng, C)
    out = backend(2).rms_norm(x, w, 1e-5, out=poison((N, C)))
    assert_close(out, ref.rms_norm(x, w, 1e-5), np.float32)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("N,n_heads,D,extra", [(1, 1, 2, 0), (17, 12, 24, 24), (5, 3, 64, 7)])
def test_rotary(rng, interleaved, N, n_heads, D, extra):
    x = randn(rng, N, n_heads * D + extra)
    pos = rng.integers(0, 300, N)
    cos, sin = ops.rotary_tables(300, D, 10000.0)
    want = ref.rotary(x, pos, n_heads, D, 10000.0, interleaved)
    got = ops.rotary(x.copy(), pos, cos, sin, n_heads, interleaved)
    assert_close(got, want, np.float32, scale=10)  # angles up to 300 rad are rounded to float32
    np.testing.assert_array_equal(got[:, n_heads * D:], x[:, n_heads * D:])  # columns past the heads untouched


@pytest.mark.parametrize("N,F", [(1, 1), (33, 130), (4, 517)])
@pytest.mark.parametrize("activation", ops.GATED_ACTIVATIONS)
def test_swiglu(backend, rng, N, F, activation):
    """The gated activations act(gate) * up (SwiGLU, GEGLU exact and tanh, ReGLU)."""
    gu = randn(rng, N, 2 * F) * 3
    assert_close(backend(2).swiglu(gu, activation, out=poison((N, F))), ref.swiglu(gu, activation),
                 np.float32, scale=3)


@pytest.mark.parametrize("activation", ops.GATED_ACTIVATIONS)
def test_gated_front_matches_two_ops(rng, activation):
    """ops.swiglu(activation=a) equals bias_act(gate, a) * up (the unfused form it replaces) up
    to rounding (vector and scalar libm lanes differ in the last bit); the default is SwiGLU;
    (..., 2F) leading axes kept."""
    gu = randn(rng, 2, 5, 2 * 37) * 3
    got = ops.swiglu(gu, threads=2, activation=activation)
    assert got.shape == (2, 5, 37) and got.dtype == np.float32
    np.testing.assert_allclose(got, ops.bias_act(gu[..., :37], None, activation) * gu[..., 37:],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ops.swiglu(gu), ops.swiglu(gu, activation="silu"))
    row = gu[1, 2:3].copy()  # the kernel's out may alias gate_up (one row: a contiguous view)
    from transformer.ops.cpu import CPUBackend
    CPUBackend(1).swiglu(row, activation, out=row[:, :37])
    np.testing.assert_array_equal(row[0, :37], got[1, 2])


@pytest.mark.parametrize("B,S,H,Hkv,D", [(1, 1, 1, 1, 4), (3, 300, 8, 2, 16), (2, 1030, 12, 12, 64),
                                         (4, 65, 6, 3, 24)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [None, 7, 64])
def test_decode_attention(rng, B, S, H, Hkv, D, masked, chunk):
    qkv = randn(rng, B, H + 2 * Hkv, D)  # q a strided view of a fused projection
    q = qkv[:, :H]
    k, v = randn(rng, B, S, Hkv, D), randn(rng, B, S, Hkv, D)
    lengths = rng.integers(0, S + 1, B)
    lengths[0] = S
    mask = (rng.random((B, S)) < 0.8).astype(np.int64) if masked else None
    out = poison((B, H, D))
    got = ops.decode_attention(q, k, v, lengths, mask, chunk=chunk, out=out, threads=2)
    assert_close(got, ref.decode_attention(q, k, v, lengths, mask), np.float32)


def test_decode_matches_causal_attention(rng):
    """The last row of causal attention over T tokens equals the decode step at T-1."""
    B, H, T, D = 2, 4, 40, 16
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, H, T, D), randn(rng, B, H, T, D)
    full = ops.attention(q, k, v, causal=True)
    step = ops.decode_attention(np.ascontiguousarray(q[:, :, -1]), k.transpose(0, 2, 1, 3),
                                v.transpose(0, 2, 1, 3), np.full(B, T))
    assert_close(step, full[:, :, -1], np.float32)


def test_decoder_ops_bad_input(rng):
    with pytest.raises(ValueError, match="head_dim must be even"):
        ops.rotary_tables(10, 7)
    cos, sin = ops.rotary_tables(10, 8)
    with pytest.raises(IndexError, match="positions"):
        ops.rotary(randn(rng, 2, 8), np.array([0, 10]), cos, sin, 1)
    with pytest.raises(ValueError, match="do not fit"):
        ops.rotary(randn(rng, 2, 8), np.array([0, 1]), cos, sin, 2)
    with pytest.raises(ValueError, match="even last axis"):
        ops.swiglu(randn(rng, 2, 7))
    for bad in (None, "tanh", "GELU", 3):
        with pytest.raises(ValueError, match="activation must be one of"):
            ops.swiglu(randn(rng, 2, 8), activation=bad)
    with pytest.raises(TypeError, match="gate_up"):
        ops.swiglu(np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError, match="lengths must lie"):
        ops.decode_attention(randn(rng, 1, 2, 8), randn(rng, 1, 4, 2, 8), randn(rng, 1, 4, 2, 8),
                             np.array([5]))


def test_decode_attention_shared_planes(rng):
    """kv_index: several query rows (beams) read one K/V plane (their source sentence)."""
    B, Bkv, S, H, D = 6, 2, 50, 4, 8
    q = randn(rng, B, H, D)
    k, v = randn(rng, Bkv, S, H, D), randn(rng, Bkv, S, H, D)
    index = np.array([0, 0, 0, 1, 1, 1])
    lengths = np.array([50, 50, 50, 20, 20, 20])
    mask = (rng.random((Bkv, S)) < 0.8).astype(np.int64)
    got = ops.decode_attention(q, k, v, lengths, mask, kv_index=index)
    assert_close(got, ref.decode_attention(q, k, v, lengths, mask, kv_index=index), np.float32)


@pytest.mark.parametrize("lens_q,lens_k", [([3, 1, 7], [5, 9, 1]), ([70], [130]), ([0, 4], [6, 0])])
def test_attention_varlen_cross(rng, lens_q, lens_k):
    """Cross-attention layout: queries and keys packed with their own offsets."""
    H, D = 3, 16
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(x)]) for x in (lens_q, lens_k))
    q = randn(rng, cu_q[-1], H, D)
    kv = randn(rng, cu_k[-1], 2, H, D)
    got = ops.attention_varlen(q, kv[:, 0], kv[:, 1], cu_q, cu_seqlens_k=cu_k,
                               out=poison(q.shape))
    want = ref.attention_varlen(q, kv[:, 0], kv[:, 1], cu_q, cu_seqlens_k=cu_k)
    assert_close(got, want, np.float32)


@pytest.mark.parametrize("B,num_beams,V,k", [(1, 1, 7, 1), (3, 4, 101, 8), (2, 5, 33, 10),
                                             (32, 4, 1000, 8), (1, 2, 4, 4)])
@pytest.mark.parametrize("threads", [1, 3])
def test_beam_topk(rng, B, num_beams, V, k, threads):
    """Fused log_softmax + beam scores + top-k against the float64 reference (outputs poisoned)."""
    from transformer.ops.cpu import CPUBackend
    logits = randn(rng, B * num_beams, V) * 4
    scores = randn(rng, B * num_beams) * 3
    vals, idx = poison((B, k)), np.full((B, k), -1, np.int64)
    CPUBackend(threads).beam_topk(logits, scores, num_beams, k, out=(vals, idx))
    want_vals, want_idx = ref.beam_topk(logits, scores, num_beams, k)
    np.testing.assert_array_equal(idx, want_idx)
    assert_close(vals, want_vals, np.float32, scale=10)
    got_vals, got_idx = ops.beam_topk(logits, scores, num_beams, k, threads=threads)
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_array_equal(got_vals, vals)


def test_beam_topk_ties_and_float32_rounding(rng):
    """Equal scores keep the lower flat index first, and the float32 scores are rounded as NumPy's
    float32 log_softmax + beam score (beam search's reference path), so the same candidates win."""
    from transformer.generation.beam import _top
    from transformer.generation.sampling import log_softmax
    B, nb, V, k = 5, 4, 300, 8
    logits = rng.integers(-2, 3, (B * nb, V)).astype(np.float32)  # many exact ties
    scores = rng.integers(-1, 1, B * nb).astype(np.float32)
    scores.reshape(B, nb)[0, 1:] = -1.0e9  # the first step: one live beam
    vals, idx = ops.beam_topk(logits, scores, nb, k, threads=2)
    flat = (log_softmax(logits, np.float32).reshape(B, nb, V) + scores.reshape(B, nb, 1))
    flat = flat.reshape(B, nb * V)
    want = _top(flat, k)
    np.testing.assert_array_equal(idx, want)
    assert_close(vals, np.take_along_axis(flat, want, -1), np.float32)
    assert (idx[0] < V).all()


@pytest.mark.parametrize("B,num_beams,V,k", [(3, 4, 101, 8), (32, 4, 1000, 8), (1, 2, 4, 4)])
def test_beam_topk_device_path(fake_gpu, rng, B, num_beams, V, k):
    """Device logits: the selection runs through CuPy operations (the stand-in here) and only
    the (B, k) results come back, equal to the CPU kernel's (no ties in these scores)."""
    logits = randn(rng, B * num_beams, V) * 4
    scores = randn(rng, B * num_beams) * 3
    want_vals, want_idx = ops.beam_topk(logits, scores, num_beams, k)
    got_vals, got_idx = ops.beam_topk(fake_gpu.FAKE_CUPY.asarray(logits), scores, num_beams, k)
    assert type(got_vals) is np.ndarray and type(got_idx) is np.ndarray
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_allclose(got_vals, want_vals, rtol=1e-6, atol=1e-5)


def test_beam_topk_bad_input(rng):
    with pytest.raises(ValueError, match="num_beams"):
        ops.beam_topk(randn(rng, 6, 10), randn(rng, 6), 4, 2)
    with pytest.raises(ValueError, match="beam_scores"):
        ops.beam_topk(randn(rng, 8, 10), randn(rng, 7), 4, 2)
    with pytest.raises(ValueError, match="k must be"):
        ops.beam_topk(randn(rng, 8, 10), randn(rng, 8), 4, 11)
    with pytest.raises(TypeError, match="logits"):
        ops.beam_topk(np.zeros((8, 10), np.int64), randn(rng, 8), 4, 2)


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_attention_kv_rows(rng, threads):
    """kv_rows: key j of query row b read from plane kv_rows[b, j] (a beam cache reordered
    through a table), against the reference on the gathered planes."""
    B, S, H, Hkv, D = 5, 77, 4, 2, 24
    q = randn(rng, B, H, D)
    k, v = randn(rng, B, S, Hkv, D), randn(rng, B, S, Hkv, D)
    rows = rng.integers(0, B, (B, S)).astype(np.int32)
    lengths = rng.integers(0, S + 1, B)
    got = ops.decode_attention(q, k, v, lengths, out=poison((B, H, D)), chunk=16,
                               kv_rows=rows, threads=threads)
    pos = np.arange(S)[None]
    want = ref.decode_attention(q, k[rows, pos], v[rows, pos], lengths)
    assert_close(got, want, np.float32)
    with pytest.raises(IndexError, match="kv_rows"):
        ops.decode_attention(q, k, v, lengths, kv_rows=rows + 1)
    with pytest.raises(ValueError, match="kv_rows"):
        ops.decode_attention(q, k, v, lengths, kv_rows=rows, kv_index=np.arange(B))
