"""The CUDA backend. Without a GPU: every csrc/cuda/*.cu compiles with nvcc for sm_80 and sm_90
(`nvcc --cubin`) and under NVRTC (what cupy.RawModule uses at run time) when CuPy's NVRTC is
installed; device="cuda" fails with a clear error. With a GPU (tests marked `gpu`): every op
front on CuPy arrays in float32, float16 and bfloat16 against the float64 reference on the same
(rounded) inputs, outputs poisoned where the op takes `out`; the position biases (ALiBi,
relative buckets bidirectional and causal) in the prefill / varlen (SIMT and tensor-core paths)
and decode kernels; the gated activations."""
import math
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import transformer.ops as ops
from transformer.ops import cuda
from transformer.ops import reference as ref
from transformer.ops.position_bias import PositionBias, alibi_slopes

SOURCES = sorted(cuda.source_dir().glob("*.cu"))
NVCC = shutil.which("nvcc") or next((str(p) for p in pathlib.Path("/usr/local").glob(
    "cuda*/bin/nvcc")), None)


def test_sources_found():
    assert {p.name for p in SOURCES} >= {"rows.cu", "attention.cu"}


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(tmp_path, source, arch):
    run = subprocess.run([NVCC, "--cubin", f"-arch={arch}", "-std=c++17", "-O3", "-Werror",
                          "all-warnings", "-o", str(tmp_path / "k.cubin"), str(source)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # not installed, or no libnvrtc
        pytest.skip(f"NVRTC not available ({type(e).__name__})")
    return nvrtc


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvrtc_compiles(source):
    """The run-time path: NVRTC with the options of transformer.ops.cuda._module."""
    nvrtc = _nvrtc()
    code = f'#line 1 "{source}"\n' + source.read_text()
    prog = nvrtc.createProgram(code, source.name, [], [])
    error = None
    try:
        nvrtc.compileProgram(prog, ["--std=c++17", f"-I{source.parent}", "-arch=compute_80"])
    except nvrtc.NVRTCError:
        error = nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)
    assert error is None, error


def test_cuda_unavailable_is_a_clear_error(monkeypatch):
    if cuda.available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        cuda.cupy()


# -- on a GPU ------------------------------------------------------------------------------------
gpu = pytest.mark.gpu
DTYPES = ["float32", "float16", "bfloat16"]
TOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 3e-2}


@pytest.fixture
def cp():
    if not cuda.available():
        pytest.skip("no CUDA GPU (needs CuPy and a device)")
    return cuda.cupy()


def dev(a, dtype):
    """A host float array on the GPU in dtype (bfloat16 as uint16 bits)."""
    return cuda.from_float32(cuda.cupy().asarray(np.asarray(a, np.float32)), dtype)


def host(a):
    """A device array back as float64 (bf16 decoded)."""
    return cuda.cupy().asnumpy(cuda.to_float32(a)).astype(np.float64)


def rounded(rng, dtype, *shape, scale=1.0):
    """(host float64 values exactly representable in dtype, the device array)."""
    d = dev(rng.standard_normal(shape) * scale, dtype)
    return host(d), d


def assert_close(got, want, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(host(got), want, rtol=tol, atol=tol * scale)


def poisoned(cp, shape, dtype):
    return dev(np.full(shape, np.nan), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K,O", [(1, 384, 1536), (33, 120, 77), (257, 64, 130), (5, 768, 3)])
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
def test_linear(cp, rng, dtype, N, K, O, activation):
    x, xd = rounded(rng, dtype, N, K)
    w, wd = rounded(rng, dtype, O, K, scale=K ** -0.5)
    b, bd = rounded(rng, dtype, O)
    assert_close(ops.linear(xd, wd, bd, activation), ref.linear(x, w, b, activation), dtype, 2)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(1, 1), (3, 384), (257, 120), (4, 4096)])
def test_row_ops(cp, rng, dtype, N, C):
    x, xd = rounded(rng, dtype, N, C, scale=3)
    r, rd = rounded(rng, dtype, N, C)
    g, gd = rounded(rng, dtype, C)
    b, bd = rounded(rng, dtype, C)
    assert_close(ops.layer_norm(xd, gd, bd, 1e-5), ref.layer_norm(x, g, b, 1e-5), dtype, 4)
    assert_close(ops.layer_norm(xd, gd, bd, 1e-5, residual=rd), ref.layer_norm(x, g, b, 1e-5, r),
          dtype, 4)
    assert_close(ops.rms_norm(xd, gd, 1e-6), ref.rms_norm(x, g, 1e-6), dtype, 4)
    mask = np.where(rng.random((N, C)) < 0.3, -np.inf, 0.0)
    mask[0] = -np.inf  # a fully masked row gives zeros
    assert_close(ops.softmax(xd, cp.asarray(mask)), ref.softmax(x, mask), dtype)
    for act in ops.ACTIVATIONS[1:]:
        assert_close(ops.bias_act(xd, bd, act), ref.bias_act(x, b, act), dtype, 3)
    assert_close(ops.add(xd, rd), x + r, dtype, 3)
    if C % 2 == 0:
        assert_close(ops.swiglu(xd), ref.swiglu(x), dtype, 3)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
def test_embedding_and_rotary(cp, rng, dtype, interleaved):
    N, C, V, P = 37, 96, 50, 64
    word, wd = rounded(rng, dtype, V, C)
    pos, pd = rounded(rng, dtype, P, C)
    tt, td = rounded(rng, dtype, 2, C)
    g, gd = rounded(rng, dtype, C)
    b, bd = rounded(rng, dtype, C)
    ids, p, types = rng.integers(0, V, N), rng.integers(0, P, N), rng.integers(0, 2, N)
    assert_close(ops.embedding(ids, wd, pd, p, types, td, gd, bd, 1e-12),
          ref.embedding(ids, word, pos, p, types, tt, g, b, 1e-12), dtype, 4)
    with pytest.raises(IndexError, match="input_ids"):
        ops.embedding(ids + V, wd, pd, p)
    cos, sin = ops.rotary_tables(P, 32)
    x, xd = rounded(rng, dtype, N, 4 * 32 + 8)
    ops.rotary(xd, p, cos, sin, 3, interleaved)
    assert_close(xd, ref.rotary(x, p, 3, 32, interleaved=interleaved), dtype, 2)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 128, 40])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,H,Hkv,T,S", [(2, 4, 2, 77, 77), (1, 2, 2, 1, 300), (3, 3, 1, 130, 65)])
def test_attention(cp, rng, dtype, D, causal, B, H, Hkv, T, S):
    q, qd = rounded(rng, dtype, B, H, T, D)
    k, kd = rounded(rng, dtype, B, Hkv, S, D)
    v, vd = rounded(rng, dtype, B, Hkv, S, D)
    mask = (rng.random((B, S)) < 0.8).astype(np.int64)
    mask[0] = 0  # a sequence with no key: zeros
    assert_close(ops.attention(qd, kd, vd, mask, causal), ref.attention(q, k, v, mask, causal), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 128, 48])
def test_attention_varlen(cp, rng, dtype, D):
    lens_q, lens_k = [5, 0, 70, 130], [9, 3, 1, 200]
    cu, cu_k = np.cumsum([0] + lens_q), np.cumsum([0] + lens_k)
    H, Hkv = 4, 2
    qkv, qkvd = rounded(rng, dtype, cu[-1], 3, H, D)  # strided views of a fused projection
    kv, kvd = rounded(rng, dtype, cu_k[-1], 2, Hkv, D)
    for causal in (False, True):
        out = poisoned(cp, (cu[-1], H, D), dtype)
        ops.attention_varlen(qkvd[:, 0], qkvd[:, 1, :Hkv], qkvd[:, 2, :Hkv], cu, causal, out=out)
        want = ref.attention_varlen(qkv[:, 0], qkv[:, 1, :Hkv], qkv[:, 2, :Hkv], cu, causal)
        assert_close(out, want, dtype)
    out = poisoned(cp, (cu[-1], H, D), dtype)
    ops.attention_varlen(qkvd[:, 0], kvd[:, 0], kvd[:, 1], cu, out=out, cu_seqlens_k=cu_k)
    assert_close(out, ref.attention_varlen(qkv[:, 0], kv[:, 0], kv[:, 1], cu, cu_seqlens_k=cu_k), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [None, 64])
def test_decode_attention(cp, rng, dtype, chunk):
    B, S, H, Hkv, D = 5, 333, 8, 2, 64
    q, qd = rounded(rng, dtype, B, H, D)
    k, kd = rounded(rng, dtype, 3, S, Hkv, D)
    v, vd = rounded(rng, dtype, 3, S, Hkv, D)
    lengths, kv_index = np.array([1, 333, 0, 100, 64]), np.array([0, 1, 2, 1, 0])
    mask = (rng.random((3, S)) < 0.9).astype(np.int64)
    out = poisoned(cp, (B, H, D), dtype)
    ops.decode_attention(qd, kd, vd, lengths, mask, out=out, chunk=chunk, kv_index=kv_index)
    want = ref.decode_attention(q, k, v, lengths, mask, kv_index=kv_index)
    assert_close(out, want, dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ops.GATED_ACTIVATIONS)
@pytest.mark.parametrize("N,F", [(1, 1), (33, 130), (5, 2731)])
def test_gated_activations(cp, rng, dtype, activation, N, F):
    gu, gud = rounded(rng, dtype, N, 2 * F, scale=3)
    got = ops.swiglu(gud, activation=activation)
    assert got.dtype == gud.dtype and got.shape == (N, F)
    assert_close(got, ref.swiglu(gu, activation), dtype, 3)


def _biases(rng, H):
    """ALiBi (H not a power of two: the interleaved slopes), bidirectional buckets (MPNet, T5
    encoder) and causal buckets (T5 decoder), small max_distance so that saturation shows."""
    return {"alibi": PositionBias.alibi(alibi_slopes(H)),
            "bidirectional": PositionBias.relative(rng.standard_normal((H, 32)), max_distance=20),
            "causal": PositionBias.relative(rng.standard_normal((H, 16)), max_distance=40,
                                            bidirectional=False)}


KINDS = ["alibi", "bidirectional", "causal"]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 128, 40])  # tensor cores (16-bit, 64 / 128) and SIMT
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B,H,Hkv,T,S", [(2, 6, 3, 77, 77), (1, 3, 1, 5, 300), (3, 2, 2, 130, 65)])
def test_attention_position_bias(cp, rng, dtype, D, causal, kind, B, H, Hkv, T, S):
    """Queries at the end of the keys (t at t + S - T), masked keys, a sequence with no key."""
    pb = _biases(rng, H)[kind]
    q, qd = rounded(rng, dtype, B, H, T, D)
    k, kd = rounded(rng, dtype, B, Hkv, S, D)
    v, vd = rounded(rng, dtype, B, Hkv, S, D)
    mask = (rng.random((B, S)) < 0.8).astype(np.int64)
    if B > 1:
        mask[1] = 0
    got = ops.attention(qd, kd, vd, mask, causal, position_bias=pb)
    assert_close(got, ref.attention(q, k, v, mask, causal, position_bias=pb), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 48])
@pytest.mark.parametrize("kind", KINDS)
def test_attention_varlen_position_bias(cp, rng, dtype, D, kind):
    """Ragged sequences (positions restart at each sequence), strided views of a fused QKV
    projection, causal and not; cross-attention with cu_seqlens_k (queries at the end)."""
    H, Hkv = 4, 2
    pb = _biases(rng, H)[kind]
    lens_q, lens_k = [5, 0, 70, 130, 1], [9, 3, 1, 200, 77]
    cu, cu_k = np.cumsum([0] + lens_q), np.cumsum([0] + lens_k)
    qkv, qkvd = rounded(rng, dtype, cu[-1], 3, H, D)
    kv, kvd = rounded(rng, dtype, cu_k[-1], 2, Hkv, D)
    for causal in (False, True):
        out = poisoned(cp, (cu[-1], H, D), dtype)
        ops.attention_varlen(qkvd[:, 0], qkvd[:, 1, :Hkv], qkvd[:, 2, :Hkv], cu, causal, out=out,
                             position_bias=pb)
        want = ref.attention_varlen(qkv[:, 0], qkv[:, 1, :Hkv], qkv[:, 2, :Hkv], cu, causal,
                                    position_bias=pb)
        assert_close(out, want, dtype)
    out = poisoned(cp, (cu[-1], H, D), dtype)
    ops.attention_varlen(qkvd[:, 0], kvd[:, 0], kvd[:, 1], cu, out=out, cu_seqlens_k=cu_k,
                         position_bias=pb)
    want = ref.attention_varlen(qkv[:, 0], kv[:, 0], kv[:, 1], cu, cu_seqlens_k=cu_k,
                                position_bias=pb)
    assert_close(out, want, dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [None, 7, 64])
@pytest.mark.parametrize("D", [64, 40])
@pytest.mark.parametrize("kind", KINDS)
def test_decode_attention_position_bias(cp, rng, dtype, chunk, D, kind):
    """The query at lengths[b] - 1 against keys 0.. (split-K chunks carry the key offset),
    shared planes (kv_index), masked keys, lengths 0 and 1."""
    B, S, H, Hkv = 5, 333, 6, 2
    pb = _biases(rng, H)[kind]
    q, qd = rounded(rng, dtype, B, H, D)
    k, kd = rounded(rng, dtype, 3, S, Hkv, D)
    v, vd = rounded(rng, dtype, 3, S, Hkv, D)
    lengths, kv_index = np.array([1, 333, 0, 100, 64]), np.array([0, 1, 2, 1, 0])
    mask = (rng.random((3, S)) < 0.9).astype(np.int64)
    mask[:, 0] = 1
    out = poisoned(cp, (B, H, D), dtype)
    ops.decode_attention(qd, kd, vd, lengths, mask, out=out, chunk=chunk, kv_index=kv_index,
                         position_bias=pb)
    want = ref.decode_attention(q, k, v, lengths, mask, kv_index=kv_index, position_bias=pb)
    assert_close(out, want, dtype)


@gpu
def test_decode_matches_prefill_with_position_bias(cp, rng):
    """The decode step of the last token equals the last row of causal prefill, for each bias
    (the two kernels place the query alike)."""
    B, H, T, D = 2, 4, 57, 64
    for pb in _biases(rng, H).values():
        q, qd = rounded(rng, "float32", B, H, T, D)
        k, kd = rounded(rng, "float32", B, H, T, D)
        v, vd = rounded(rng, "float32", B, H, T, D)
        full = ops.attention(qd, kd, vd, causal=True, position_bias=pb)
        step = ops.decode_attention(cp.ascontiguousarray(qd[:, :, -1]),
                                    cp.ascontiguousarray(kd.transpose(0, 2, 1, 3)),
                                    cp.ascontiguousarray(vd.transpose(0, 2, 1, 3)),
                                    np.full(B, T), position_bias=pb)
        np.testing.assert_allclose(host(step), host(full[:, :, -1]), rtol=1e-5, atol=1e-5)


@gpu
def test_position_bias_tables_uploaded_once(cp, rng):
    """A PositionBias's host tables cross to the device on first use only."""
    H = 4
    pb = _biases(rng, H)["bidirectional"]
    q = dev(rng.standard_normal((1, H, 9, 64)), "float32")
    ops.attention(q, q, q, position_bias=pb)
    table = cuda.position_bias_args(H, **pb.kernel_args())[1]
    n = len(cuda._TABLES)
    for _ in range(3):
        ops.attention(q, q, q, position_bias=pb)
        ops.decode_attention(cp.ascontiguousarray(q[:, :, 0]),
                             cp.ascontiguousarray(q.transpose(0, 2, 1, 3)),
                             cp.ascontiguousarray(q.transpose(0, 2, 1, 3)), np.array([9]),
                             position_bias=pb)
    assert len(cuda._TABLES) == n
    assert cuda.position_bias_args(H, **pb.kernel_args())[1] is table


@gpu
def test_mixed_devices_are_an_error(cp, rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="weight must be a CuPy array"):
        ops.linear(cp.asarray(x), x)
    with pytest.raises(TypeError, match="dtype"):
        ops.linear(cp.asarray(x), cp.asarray(x, np.float16))
    assert math.isfinite(float(ops.linear(cp.asarray(x), cp.asarray(x)).sum()))
