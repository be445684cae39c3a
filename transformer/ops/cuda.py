"""CUDA backend: the math only, on arguments that transformer.ops has already checked (CuPy
arrays of one dtype, C-contiguous where the front says so, shapes consistent, indices in range).

Kernels: csrc/cuda/*.cu (shipped in a wheel as package data, transformer/_cuda_src), compiled
once per process by NVRTC through cupy.RawModule and cached; each source is read with a `#line`
prefix so compiler messages name the real file. Matmuls: cuBLAS gemmEx on 2-D operands (fp32
compute for every dtype; tensor cores for fp16/bf16). Element types: float32, float16 and
bfloat16; CuPy has no bfloat16 dtype, so bfloat16 tensors are uint16 arrays of bf16 bit patterns.
The module's functions launch the kernels (each takes `threads` and ignores it);
CUDABackend, the backend object (transformer.ops.backend), calls them with the CPU backend's
method names and argument lists.
"""
import collections
import functools
import math
import pathlib
import threading

import numpy as np

from .backend import Backend, on_device

SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.uint16): "bf16"}
ACT_CODES = {None: 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}
MAX_ROW = 12288  # row kernels stage a row in 48 KiB of shared memory
_NULL = np.uint64(0)


def source_dir():
    """The folder holding the .cu sources: the wheel's transformer/_cuda_src or the checkout's
    csrc/cuda. Raises FileNotFoundError when neither is there."""
    here = pathlib.Path(__file__).resolve().parents[1]
    for d in (here / "_cuda_src", here.parent / "csrc" / "cuda"):
        if (d / "common.cuh").is_file():
            return d
    raise FileNotFoundError(f"the CUDA kernel sources (csrc/cuda) are missing near {here}")


def cupy():
    """The cupy module, with a GPU present. Raises RuntimeError (what to install or why not)."""
    try:
        import cupy as cp
    except ImportError as e:
        raise RuntimeError("device='cuda' needs CuPy: pip install 'transformer[cuda12]' or "
                           f"'transformer[cuda13]' (matching your CUDA driver) ({e})") from None
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, insufficient driver, ...
        raise RuntimeError(f"device='cuda' but CuPy cannot reach a GPU: {e}") from None
    if n < 1:
        raise RuntimeError("device='cuda' but no CUDA GPU is visible")
    return cp


def available():
    """True when CuPy is installed and a GPU is visible."""
    try:
        cupy()
    except RuntimeError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _module(name):
    cp = cupy()
    path = source_dir() / name
    code = f'#line 1 "{path}"\n' + path.read_text()
    return cp.RawModule(code=code, options=("--std=c++17", f"-I{path.parent}"), backend="nvrtc")


def kernel(file, name, dtype=None):
    """The compiled kernel `name` (with the dtype's suffix _f32/_f16/_bf16 when dtype is given)
    of csrc/cuda/file."""
    if dtype is not None:
        name = f"{name}_{SUFFIX[np.dtype(dtype)]}"
    return _module(file).get_function(name)


def _ptr(a):
    return _NULL if a is None else a


def _grid(n, block=256):
    return (max(1, min(-(-n // block), 65536)),)


def _row_block(C):
    if C > MAX_ROW:
        raise ValueError(f"rows of {C} values exceed the GPU row kernels' limit of {MAX_ROW}")
    return (128 if C <= 1024 else 256,)


def gemm(x, weight, out):
    """out (N, O) = x (N, K) @ weight (O, K)^T through cuBLAS gemmEx (row-major operands read as
    column-major transposes: out^T = weight x^T). fp32 accumulation."""
    cp = cupy()
    from cupy.cuda import cublas, runtime
    N, K = x.shape
    O = weight.shape[0]
    if N == 0 or O == 0:
        return out
    if K == 0:
        out.fill(0)
        return out
    dtype = {"f32": runtime.CUDA_R_32F, "f16": runtime.CUDA_R_16F,
             "bf16": runtime.CUDA_R_16BF}[SUFFIX[x.dtype]]
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    handle = cp.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    try:
        cublas.gemmEx(handle, cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, O, N, K, one.ctypes.data,
                      weight.data.ptr, dtype, K, x.data.ptr, dtype, K, zero.ctypes.data,
                      out.data.ptr, dtype, O, cublas.CUBLAS_COMPUTE_32F,
                      cublas.CUBLAS_GEMM_DEFAULT)
    finally:
        cublas.setPointerMode(handle, mode)
    return out


def linear(x, weight, bias, activation, out, threads):
    """out (N, O) = act(x (N, K) @ weight (O, K)^T + bias (O)): cuBLAS, then bias + activation
    in one row pass."""
    gemm(x, weight, out)
    if bias is not None or activation is not None:
        bias_act(out, bias, activation, threads)
    return out


def bias_act(x, bias, activation, threads):
    """x (N, O) = act(x + bias), in place."""
    n = x.size
    if n:
        kernel("rows.cu", "bias_act", x.dtype)(
            _grid(n), (256,), (x, _ptr(bias), np.int64(n), np.int32(x.shape[-1]),
                               np.int32(ACT_CODES[activation])))
    return x


def add(a, b, out, threads):
    """out = a + b elementwise (same shape, contiguous)."""
    n = out.size
    if n:
        kernel("rows.cu", "add", out.dtype)(_grid(n), (256,), (a, b, out, np.int64(n)))
    return out


def layer_norm(x, residual, weight, bias, eps, out, threads):
    """out (N, C) = LayerNorm(x + residual)."""
    N, C = x.shape
    if N:
        kernel("rows.cu", "layer_norm", x.dtype)(
            (N,), _row_block(C), (x, _ptr(residual), weight, bias, np.float32(eps), out,
                                  np.int32(C)), shared_mem=4 * C)
    return out


def rms_norm(x, weight, eps, out, threads):
    """out (N, C) = RMSNorm(x) * weight."""
    N, C = x.shape
    if N:
        kernel("rows.cu", "rms_norm", x.dtype)(
            (N,), _row_block(C), (x, weight, np.float32(eps), out, np.int32(C)),
            shared_mem=4 * C)
    return out


def softmax(x, mask, out, threads):
    """out (N, S) = softmax(x + mask) along the last axis; mask float32 (N, S) or None."""
    N, S = x.shape
    if N:
        kernel("rows.cu", "softmax", x.dtype)(
            (N,), _row_block(S), (x, _ptr(mask), out, np.int32(S)), shared_mem=4 * S)
    return out


def swiglu(gate_up, out, threads, activation="silu"):
    """out (N, F) = act(gate_up[:, :F]) * gate_up[:, F:], act "silu" (SwiGLU), "gelu",
    "gelu_tanh" or "relu" (the CPU backend's signature), in float32, rounded once."""
    n = out.size
    if n:
        kernel("rows.cu", "swiglu", out.dtype)(
            _grid(n), (256,), (gate_up, out, np.int64(n), np.int32(out.shape[-1]),
                               np.int32(ACT_CODES[activation])))
    return out


def embedding(input_ids, position_ids, token_type_ids, word, position, token_type,
              weight, bias, eps, out, threads):
    """out (N, C) = LayerNorm(word[ids] + position[pos] + token_type[types])."""
    N, C = out.shape
    if N:
        kernel("rows.cu", "embedding", out.dtype)(
            (N,), _row_block(C), (input_ids, position_ids, _ptr(token_type_ids), word, position,
                                  _ptr(token_type), _ptr(weight), _ptr(bias), np.float32(eps),
                                  out, np.int32(C)), shared_mem=4 * C)
    return out


def rotary(x, positions, cos, sin, n_heads, head_dim, interleaved, threads):
    """Rotate the first n_heads heads of each row of x (N, W) in place."""
    N, W = x.shape
    n = N * n_heads * (head_dim // 2)
    if n:
        kernel("rows.cu", "rotary", x.dtype)(
            _grid(n), (256,), (x, positions, cos, sin, np.int64(N), np.int32(W),
                               np.int32(n_heads), np.int32(head_dim), np.int32(interleaved)))
    return x


def to_float32(x):
    """A float32 copy of a device array (bfloat16 bit patterns decoded)."""
    cp = cupy()
    if x.dtype == np.uint16:
        out = cp.empty(x.shape, np.float32)
        if x.size:
            kernel("rows.cu", "cast_bf16_f32")(_grid(x.size), (256,),
                                               (cp.ascontiguousarray(x), out, np.int64(x.size)))
        return out
    return x.astype(np.float32)


def to_host(a):
    """A device array as NumPy: floats (bfloat16 bits included) as float32, integers as they
    are."""
    if a.dtype.kind == "f" or a.dtype == np.uint16:
        a = to_float32(a)
    return cupy().asnumpy(a)


def from_float32(x, dtype):
    """x (float32 device array) as dtype "float32", "float16" or "bfloat16" (uint16 bits)."""
    cp = cupy()
    x = cp.ascontiguousarray(x, dtype=np.float32)
    if dtype == "bfloat16":
        out = cp.empty(x.shape, np.uint16)
        if x.size:
            kernel("rows.cu", "cast_f32_bf16")(_grid(x.size), (256,), (x, out, np.int64(x.size)))
        return out
    return x.astype(dtype)


def _strides(a):
    return tuple(np.int64(s // a.itemsize) for s in a.strides)


# Host position-bias tables uploaded once: (id(host array), device id) -> (host array, device
# copy); the host array is kept so that its id cannot be reused while the entry lives.
_TABLES = collections.OrderedDict()
_TABLES_MAX = 64
_TABLES_LOCK = threading.Lock()


def _device_table(a, dtype):
    """a as a contiguous device array of dtype: a device array converted as needed; a host array
    uploaded on first use and cached by identity (an LRU of _TABLES_MAX entries per process), so
    a PositionBias's tables cross to the GPU once, not at every call (its arrays are not to be
    modified in place after use)."""
    cp = cupy()
    if type(a).__module__.split(".")[0] == "cupy":
        return cp.ascontiguousarray(a, dtype=dtype)
    key = (id(a), cp.cuda.Device().id)
    with _TABLES_LOCK:
        hit = _TABLES.get(key)
        if hit is not None and hit[0] is a and hit[1].dtype == dtype:
            _TABLES.move_to_end(key)
            return hit[1]
    d = cp.asarray(np.ascontiguousarray(a, dtype=dtype))
    with _TABLES_LOCK:
        _TABLES[key] = (a, d)
        while len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    return d


def position_bias_args(H, alibi=None, rel_table=None, bucket_of=None, half=0,
                       bidirectional=False):
    """The PB_ARGS of the attention kernels (csrc/cuda/attention.cu) for H query heads from the
    CPU backend's position-bias keywords (ops.PositionBias.kernel_args(): alibi (H,) slopes;
    or rel_table (H, num_buckets) with bucket_of (n_tab,) int, half, bidirectional), tables on
    the device (_device_table: uploaded once per host array). Returns (slopes, table,
    n_buckets, bucket_of, n_tab, half, bidirectional) as kernel arguments, null pointers for no
    bias. Raises TypeError for an unknown keyword, ValueError for tables that do not fit H or
    buckets outside the table (checked on host tables)."""
    slopes = table = buckets = None
    if alibi is not None:
        if np.shape(alibi) != (H,):
            raise ValueError(f"alibi must have shape ({H},), got {np.shape(alibi)}")
        slopes = _device_table(alibi, np.float32)
    if rel_table is not None:
        if len(np.shape(rel_table)) != 2 or np.shape(rel_table)[0] != H:
            raise ValueError(f"rel_table must have shape ({H}, num_buckets), got "
                             f"{np.shape(rel_table)}")
        if bucket_of is None or len(np.shape(bucket_of)) != 1 or not np.size(bucket_of):
            raise ValueError("rel_table needs bucket_of, the (n_tab,) bucket of each distance")
        nb = np.shape(rel_table)[1]
        if type(bucket_of).__module__.split(".")[0] != "cupy":
            top = int(np.max(bucket_of)) + (int(half) if bidirectional else 0)
            if int(np.min(bucket_of)) < 0 or top >= nb:
                raise ValueError(f"bucket_of (+ half) must lie in [0, {nb}), got "
                                 f"[{int(np.min(bucket_of))}, {top}]")
        table = _device_table(rel_table, np.float32)
        buckets = _device_table(bucket_of, np.int32)
    return (_ptr(slopes), _ptr(table), np.int32(0 if table is None else table.shape[1]),
            _ptr(buckets), np.int32(0 if buckets is None else buckets.size),
            np.int32(half if table is not None else 0),
            np.int32(bool(bidirectional) and table is not None))


def attention(q, k, v, out, plane, q_start, q_len, k_start, k_len, key_bias, causal, scale,
              threads, **position_bias):
    """Tiled attention over (P, rows, H, D) planes (same contract as the CPU backend): sequence
    b reads plane[b], queries q_start[b] + [0, q_len[b]) and keys k_start[b] + [0, k_len[b]).
    position_bias: the CPU backend's keywords (an ops.PositionBias's kernel_args(); see
    position_bias_args), the bias computed per score inside the kernels.
    Tensor cores for fp16/bf16 with D in (64, 128), else the SIMT kernel (D <= 128)."""
    cp = cupy()
    B = len(q_len)
    _, _, H, D = q.shape
    Hkv = k.shape[2]
    if D > 128:
        raise ValueError(f"head_dim {D} > 128 is not supported by the GPU attention kernel")
    pb = position_bias_args(H, **position_bias)
    T_max = int(q_len.max()) if B else 0
    if T_max == 0:
        return out
    dev = [cp.asarray(a, np.int32) for a in (plane, q_start, q_len, k_start, k_len)]
    bias = None if key_bias is None else cp.asarray(key_bias, np.float32)
    args = (q, k, v, out) + _strides(q)[:3] + _strides(k)[:3] + _strides(v)[:3] + \
        _strides(out)[:3] + tuple(dev) + (_ptr(bias), np.int64(0 if bias is None
                                                                else bias.shape[1]),
                                          np.int32(H), np.int32(Hkv), np.int32(D),
                                          np.int32(causal), np.float32(scale * math.log2(math.e)))
    args += pb
    suffix = SUFFIX[q.dtype]
    if suffix != "f32" and D in (64, 128):
        kernel("attention.cu", f"attention_mma_{suffix}_d{D}")((-(-T_max // 64), B * H), (128,),
                                                                args)
    else:
        kernel("attention.cu", "attention", q.dtype)((-(-T_max // 16), B * H), (128,), args)
    return out


def decode_attention(q, k, v, kv_index, lengths, key_bias, out, scale, chunk, threads,
                     **position_bias):
    """Split-K attention of one query per sequence against its KV cache, then the combine
    kernel. chunk: keys per block, or None for enough blocks to fill the GPU. position_bias:
    the CPU backend's keywords (see position_bias_args; the query at lengths[b] - 1)."""
    cp = cupy()
    B, H, D = q.shape
    S_max, Hkv = k.shape[1], k.shape[2]
    if D > 256:
        raise ValueError(f"head_dim {D} > 256 is not supported by the GPU decode kernel")
    pb = position_bias_args(H, **position_bias)
    longest = int(np.max(lengths)) if B else 0  # host lengths from the front: no device sync
    lengths = cp.asarray(lengths, np.int32)
    if chunk is None:  # about 4 blocks per SM across the (b, h) pairs, >= 64 keys each
        sms = cp.cuda.Device().attributes["MultiProcessorCount"]
        chunk = max(64, -(-max(longest, 1) // max(1, -(-4 * sms // (B * H)))))
    n_chunks = max(1, -(-longest // chunk))
    work = cp.empty((B * H, n_chunks, D + 2), np.float32)
    qs = _strides(q)
    kernel("attention.cu", "decode_attention", q.dtype)(
        (n_chunks, B * H), (128,),
        (q, k, v, _ptr(None if kv_index is None else cp.asarray(kv_index, np.int32)), lengths,
         _ptr(None if key_bias is None else cp.asarray(key_bias, np.float32)), work, qs[0], qs[1],
         np.int32(H), np.int32(Hkv), np.int32(D), np.int32(S_max), np.int32(chunk),
         np.float32(scale * math.log2(math.e))) + pb)
    kernel("attention.cu", "decode_combine", q.dtype)((B * H,), (128,),
                                                      (work, out, np.int32(n_chunks), np.int32(D)))
    return out


def beam_topk(logits, beam_scores, num_beams, k):
    """One beam-search selection step on the device (the CPU backend's fused beam_topk, in CuPy
    operations): log_softmax of logits (R, V) in float32 with the log-sum-exp summed in float64,
    plus beam_scores (R,), then per batch entry the k best of its num_beams * V scores
    (argpartition on the device); only those (B, k) values and indices come to the host, where
    they are sorted best first, equal values in ascending index. Returns NumPy (values (B, k)
    float32, indices (B, k) int64)."""
    cp = cupy()
    x = logits if logits.dtype == np.float32 else to_float32(logits)
    m = x.max(axis=1, keepdims=True)
    lse = cp.log(cp.exp(x - m).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    scores = (x - m) - lse + cp.asarray(beam_scores, np.float32)[:, None]
    R, V = scores.shape
    flat = scores.reshape(R // num_beams, num_beams * V)
    if k < flat.shape[1]:
        idx = cp.argpartition(-flat, k - 1, axis=1)[:, :k]
    else:
        idx = cp.broadcast_to(cp.arange(flat.shape[1]), flat.shape).copy()
    vals = cp.take_along_axis(flat, idx, 1).get()
    idx = idx.get().astype(np.int64)
    order = np.lexsort((idx, -vals), axis=-1)
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


class CUDABackend(Backend):
    """The kernels of csrc/cuda (the functions above) behind the CPU backend's methods, the
    same names and argument lists (transformer.ops.cpu.CPUBackend documents each); arrays are
    CuPy arrays of the model's dtype (float32, float16, bfloat16 as uint16 bits); host index
    arrays are moved here. Where the CPU has a fused op the GPU lacks (decode_self_attention),
    the method composes the kernels; what the GPU kernels cannot read (decode_attention's plane
    table kv_rows) is gathered first. threads is kept for the signature and not used."""

    device = "cuda"
    copy_on_reorder = True  # reorder_cache gathers rows: the plane table stays the identity

    def __init__(self, threads=None, dtype="float32", row_invariant=False):
        super().__init__(threads, dtype, row_invariant)
        self.xp = cupy()
        self.act_dtype = np.dtype(_DTYPES[dtype])
        self._step = None  # (host positions, device positions, cache write index): one step

    # -- rows ---------------------------------------------------------------------------------
    def linear(self, x, weight, bias=None, activation=None, out=None):
        if out is None:
            out = self.xp.empty((x.shape[0], weight.shape[0]), x.dtype)
        linear(x, weight, bias, activation, out, self.threads)
        return out

    def bias_act(self, x, bias, activation):
        bias_act(x, bias, activation, self.threads)
        return x

    def add(self, a, b, out=None):
        if out is None:
            out = self.xp.empty(a.shape, a.dtype)
        add(a, b, out, None)
        return out

    def layer_norm(self, x, weight, bias, eps, residual=None, out=None):
        if out is None:
            out = self.xp.empty(x.shape, x.dtype)
        layer_norm(x, residual, weight, bias, eps, out, self.threads)
        return out

    def rms_norm(self, x, weight, eps, out=None):
        if out is None:
            out = self.xp.empty(x.shape, x.dtype)
        rms_norm(x, weight, eps, out, self.threads)
        return out

    def add_norm(self, h, y, weight, bias, eps, rms):
        s, out = self.xp.empty(h.shape, h.dtype), self.xp.empty(h.shape, h.dtype)
        add(h, y, s, None)
        if rms:
            rms_norm(s, weight, eps, out, self.threads)
        else:
            layer_norm(s, None, weight, bias, eps, out, self.threads)
        return s, out

    def swiglu(self, gate_up, activation="silu", out=None):
        if out is None:
            out = self.xp.empty((gate_up.shape[0], gate_up.shape[1] // 2), gate_up.dtype)
        swiglu(gate_up, out, self.threads, activation=activation)
        return out

    def softmax(self, x, mask=None, out=None):
        if out is None:
            out = self.xp.empty(x.shape, x.dtype)
        softmax(x, mask, out, self.threads)
        return out

    def rotary(self, x, positions, cos, sin, n_heads, interleaved):
        rotary(x, positions, cos, sin, n_heads, 2 * cos.shape[1], interleaved, self.threads)
        return x

    def embedding(self, ids, positions, word, position, norm_weight=None, norm_bias=None,
                  eps=0.0, token_types=None, token_type=None, out=None):
        xp = self.xp
        ids, positions = xp.asarray(ids), xp.asarray(positions)
        token_types = None if token_types is None else xp.asarray(token_types)
        if out is None:
            out = xp.empty((len(ids), word.shape[1]), word.dtype)
        embedding(ids, positions, token_types, word, position, token_type, norm_weight,
                  norm_bias, eps if norm_weight is not None else 0.0, out, self.threads)
        return out

    # -- attention ----------------------------------------------------------------------------
    def attention(self, q, k, v, plan, causal, scale, key_bias=None, position_bias=None,
                  out=None):
        if out is None:
            out = self.xp.empty(q.shape, q.dtype)
        scale, bias = self.attention_args(q.shape[-1], scale, position_bias)
        attention(q, k, v, out, plan.planes, plan.starts, plan.lens, plan.k_starts, plan.k_lens,
                  key_bias, causal, scale, self.threads, **bias)
        return out

    def decode_attention(self, q, k_cache, v_cache, lengths, scale=None, kv_index=None,
                         kv_rows=None, key_bias=None, position_bias=None, chunk=None, out=None):
        if out is None:
            out = self.xp.empty(q.shape, q.dtype)
        if not len(q):
            return out
        scale, bias = self.attention_args(q.shape[2], scale, position_bias)
        if kv_rows is not None:  # the kernel reads planes: gather each row's keys first
            rows = self.xp.asarray(kv_rows)
            pos = self.xp.arange(kv_rows.shape[1])[None]
            k_cache = self.xp.ascontiguousarray(k_cache[rows, pos])
            v_cache = self.xp.ascontiguousarray(v_cache[rows, pos])
        decode_attention(q, k_cache, v_cache, kv_index, lengths, key_bias, out, scale, chunk,
                         self.threads, **bias)
        return out

    def decode_self_attention(self, qkv, n_heads, positions, rope, interleaved, k_cache,
                              v_cache, lengths, scale, kv_rows=None, position_bias=None,
                              chunk=None):
        """The CPU's fused step composed: rotary, the cache write, decode_attention. The cache
        reorders by copying (reorder_cache), so kv_rows is the identity and is not read; the
        device positions and write index are made once per step (positions: the same host
        array for every layer)."""
        R, (S_max, Hkv, D) = len(qkv), k_cache.shape[1:]
        step = self._step
        if step is None or step[0] is not positions:
            flat = np.arange(R) * S_max + positions
            index = slice(int(flat[0]), int(flat[0]) + 1) if R == 1 else self.xp.asarray(flat)
            step = self._step = (positions, self.xp.asarray(positions), index)
        if rope is not None:
            rotary(qkv, step[1], rope[0], rope[1], n_heads + Hkv, D, interleaved, self.threads)
        H = n_heads
        k_cache.reshape(-1, Hkv * D)[step[2]] = qkv[:, H * D:(H + Hkv) * D]
        v_cache.reshape(-1, Hkv * D)[step[2]] = qkv[:, (H + Hkv) * D:]
        return self.decode_attention(qkv[:, :H * D].reshape(R, H, D), k_cache[:R], v_cache[:R],
                                     lengths, scale, position_bias=position_bias)

    def decode_chunk(self, lengths, n_kv_heads):
        """None: the GPU kernel sizes its chunks to fill the device."""
        return None

    def beam_topk(self, logits, beam_scores, num_beams, k, out=None):
        vals, idx = beam_topk(logits, beam_scores, num_beams, k)
        if out is None:
            return vals, idx
        out[0][...], out[1][...] = vals, idx
        return out

    # -- placement and outputs ------------------------------------------------------------------
    def release_threads(self):
        """Nothing to release on the GPU (the CPU backend's OpenMP workers)."""

    def place_weight(self, name, a):
        return self.place(a)

    def place(self, a):
        host = self.to_host(a) if on_device(a) else a
        return from_float32(cupy().asarray(np.ascontiguousarray(host, dtype=np.float32)),
                            self.dtype)

    def upload(self, a):
        return self.xp.asarray(a)

    def indices(self, a):
        return self.xp.asarray(np.ascontiguousarray(a, np.int64))

    def to_host(self, a):
        return to_host(a)

    def output(self, x):
        return to_float32(x) if self.dtype == "bfloat16" else x

    def from_host(self, a):
        return self.xp.asarray(a)

    def segment_sums(self, h, cu):
        xp = self.xp  # segment sums from a float64 running sum
        s = xp.concatenate([xp.zeros((1, h.shape[1])), xp.cumsum(h, 0, dtype=np.float64)])
        return s[cu[1:]] - s[cu[:-1]]

    def reorder_cache(self, cache, index):
        """Keep sequences `index` (B',) of a KVCache in that order: the filled positions of
        the kept rows gathered into their new rows on the device (as Hugging Face's cache
        reorder); the plane table stays the identity."""
        index = np.asarray(index)
        R, S = len(index), int(cache.lengths[index].max(initial=0))
        rows = self.xp.asarray(index)
        cache.k[:, :R, :S] = self.xp.take(cache.k[:, :, :S], rows, axis=1)
        cache.v[:, :R, :S] = self.xp.take(cache.v[:, :, :S], rows, axis=1)
        cache.lengths[:R] = cache.lengths[index]
