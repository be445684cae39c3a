# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""CPU backend kernels: OpenMP loops (prange, GIL released) over the C row kernels of kernels.c,
and BLAS sgemm from scipy.linalg.cython_blas for every matrix product.

No argument checking happens here: transformer.ops validates shapes, dtypes and ranges first.
BLAS is always called single-threaded from inside our own parallel loops (the caller holds
transformer._threads.blas_single_threaded()), so there is one thread pool, never two nested.
"""
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.math cimport INFINITY
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t
from scipy.linalg.cython_blas cimport sgemm

from kernels cimport (TF_ACT_NONE, TF_ACT_RELU, TF_ACT_GELU, TF_ACT_GELU_TANH, TF_ACT_SILU,
                      tf_layer_norm_row, tf_softmax_row, tf_bias_act_row, tf_embed_row,
                      tf_online_softmax_tile, tf_attention_finalize, tf_rms_norm_row,
                      tf_rotary_row, tf_gated_act_row, tf_gemm_small, tf_decode_attention_chunk,
                      tf_decode_attention_combine, tf_beam_topk_row, tf_topk_merge,
                      tf_pos_bias, tf_position_bias_tile)
from gemm cimport (TF_GEMM_PORTABLE, TF_GEMM_AVX2, TF_GEMM_AVX512, TF_INT8, TF_BF16, TF_INT4,
                   TF_F32, tf_gemm_best_variant, tf_pack_int8, tf_pack_bf16, tf_pack_f32,
                   tf_unpack_row_int8, tf_unpack_row_bf16, tf_unpack_row_int4,
                   tf_unpack_row_f32, tf_group_sums_int8, tf_quantize_row_int8,
                   tf_round_row_bf16, tf_gemm_int8_raw, tf_gemm_int8, tf_gemm_bf16,
                   tf_gemm_f32, tf_gemm_int4_raw, tf_gemm_int4)

ACTIVATIONS = {None: TF_ACT_NONE, "relu": TF_ACT_RELU, "gelu": TF_ACT_GELU,
               "gelu_tanh": TF_ACT_GELU_TANH, "silu": TF_ACT_SILU}

# Attention tile sizes (queries x keys). Scratch per thread: BQ*BK + BQ*D + 2*BQ floats.
cdef enum:
    BQ = 64
    BK = 64
    # linear: up to SMALL_ROWS rows go through tf_gemm_small in blocks of SMALL_BLOCK output
    # features, SMALL_N rows at a time (each block's weights stay in cache); more rows go
    # through sgemm. Intel Xeon VM (AVX-512), 2 threads, K 384-1536: tf_gemm_small 105-175 GFLOP/s at 17-64 rows
    # where sgemm, which packs the weights on every call, gets 65-135 (even at 128 rows).
    SMALL_N = 16
    SMALL_ROWS = 64
    SMALL_BLOCK = 64


cdef extern from *:
    """
    #ifdef _OPENMP
    static int _openmp(void) { return 1; }
    #else
    static int _openmp(void) { return 0; }
    #endif
    """
    int _openmp()
    const char *TRANSFORMER_BUILD_FLAGS


cdef bint _pos_bias(tf_pos_bias *pb, const float[::1] slopes, const float[:, ::1] table,
                    const int[::1] bucket_of, int half, bint bidirectional):
    """Fill pb from the optional position-bias arrays; False when there is none."""
    pb.slopes = &slopes[0] if slopes is not None else NULL
    pb.table = &table[0, 0] if table is not None else NULL
    pb.n_buckets = table.shape[1] if table is not None else 0
    pb.bucket_of = &bucket_of[0] if bucket_of is not None else NULL
    pb.n_tab = bucket_of.shape[0] if bucket_of is not None else 0
    pb.half = half
    pb.bidirectional = bidirectional
    return slopes is not None or table is not None


def build_flags():
    """Compiler flags the extension was built with (recorded by setup.py)."""
    return TRANSFORMER_BUILD_FLAGS.decode()


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(_openmp())


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int _release_threads(void) { return omp_pause_resource_all(omp_pause_soft); }
    #else
    static int _release_threads(void) { return 0; }
    #endif
    """
    int _release_threads() nogil


def release_threads():
    """Release the OpenMP worker threads of the calling thread's team (OpenMP 5.0
    omp_pause_resource_all(omp_pause_soft); libgomp frees the caller's thread pool). With
    libgomp, once more threads are kept in teams than there are cores, idle workers stop
    spinning and every parallel region pays a futex wake-up: a thread that ran kernels
    (e.g. the main thread at load) and then leaves them to another (a serving engine's
    scheduler, a web app's workers) makes that other thread's kernels several times slower.
    Returns 0 on success (also without OpenMP)."""
    return _release_threads()


cdef inline void _gemm_nt(int M, int N, int K, float alpha, const float *a, int lda,
                          const float *b, int ldb, float beta, float *c, int ldc) noexcept nogil:
    # Row-major c (M, N) = alpha * a (M, K) @ b (N, K)^T + beta * c, as column-major
    # c^T (N, M) = b^T... i.e. sgemm('T', 'N', N, M, K, b, a).
    cdef char ta = b'T'
    cdef char tb = b'N'
    sgemm(&ta, &tb, &N, &M, &K, &alpha, <float *>b, &ldb, <float *>a, &lda, &beta, c, &ldc)


cdef inline void _gemm_nn(int M, int N, int K, float alpha, const float *a, int lda,
                          const float *b, int ldb, float beta, float *c, int ldc) noexcept nogil:
    # Row-major c (M, N) = alpha * a (M, K) @ b (K, N) + beta * c.
    cdef char t = b'N'
    sgemm(&t, &t, &N, &M, &K, &alpha, <float *>b, &ldb, <float *>a, &lda, &beta, c, &ldc)


def linear(const float[:, ::1] x,            # IN  (N, K)
           const float[:, ::1] weight,       # IN  (O, K), PyTorch nn.Linear layout
           const float[::1] bias,            # IN  (O) or None
           float[:, ::1] out,                # OUT (N, O)
           str activation, int n_threads, bint row_invariant=False):
    """out = act(x @ weight^T + bias). Up to SMALL_ROWS rows (decode steps, short sentences):
    blocks of output features across threads through tf_gemm_small, SMALL_N rows at a time
    inside each block of outputs (whose weights stay in cache). row_invariant: every row
    count takes that path, so each output row is the same bits whatever the other rows
    (tf_gemm_small sums each dot product in one order, whatever N and the row's place: batch
    invariance for the serving engine). More rows: each thread runs
    one single-threaded sgemm on its share of output columns, so each packs only its part of the
    weights (decode steps of many beams, N < O: the LM head runs 1.35x faster than split by rows),
    or on its share of rows when there are at least as many rows as output features. Bias and
    activation are applied to each block right after it is written, while it is still in cache."""
    cdef int N = x.shape[0], K = x.shape[1], O = weight.shape[0]
    cdef int act = ACTIVATIONS[activation]
    cdef const float *b = &bias[0] if bias is not None else NULL
    cdef int split_rows = N >= 4 * n_threads and N >= O
    cdef int n_chunks = n_threads if n_threads > 1 else 1
    cdef int chunk, r0, r1, c0, c1, r, step
    if N == 0 or O == 0:
        return
    if N <= SMALL_ROWS or row_invariant:
        with nogil:
            for chunk in prange((O + SMALL_BLOCK - 1) // SMALL_BLOCK, schedule="dynamic",
                                num_threads=n_threads):
                c0 = chunk * SMALL_BLOCK
                c1 = min(O, c0 + SMALL_BLOCK)
                r0 = 0
                while r0 < N:
                    r1 = min(N, r0 + SMALL_N)
                    tf_gemm_small(&x[r0, 0], r1 - r0, K, &weight[c0, 0], c1 - c0, &out[r0, c0],
                                  O)
                    if b != NULL or act != TF_ACT_NONE:
                        for r in range(r0, r1):
                            tf_bias_act_row(&out[r, c0], b + c0 if b != NULL else NULL,
                                            c1 - c0, act)
                    r0 = r1
        return
    if split_rows:
        step = (N + n_chunks - 1) // n_chunks
    else:
        step = (O + n_chunks - 1) // n_chunks
        step = (step + 15) // 16 * 16
    with nogil:
        for chunk in prange(n_chunks, schedule="static", num_threads=n_threads):
            if split_rows:
                r0 = chunk * step
                r1 = min(N, r0 + step)
                c0 = 0
                c1 = O
            else:
                r0 = 0
                r1 = N
                c0 = chunk * step
                c1 = min(O, c0 + step)
            if r1 <= r0 or c1 <= c0:
                continue
            _gemm_nt(r1 - r0, c1 - c0, K, 1.0, &x[r0, 0], K, &weight[c0, 0], K, 0.0,
                     &out[r0, c0], O)
            if b != NULL or act != TF_ACT_NONE:
                for r in range(r0, r1):
                    tf_bias_act_row(&out[r, c0], b + c0 if b != NULL else NULL, c1 - c0, act)


def bias_act(float[:, ::1] x,               # IN/OUT (N, O)
             const float[::1] bias,          # IN (O) or None
             str activation, int n_threads):
    """x = act(x + bias), in place, one row per iteration."""
    cdef int N = x.shape[0], O = x.shape[1], r
    cdef int act = ACTIVATIONS[activation]
    cdef const float *b = &bias[0] if bias is not None else NULL
    with nogil:
        for r in prange(N, schedule="static", num_threads=n_threads):
            tf_bias_act_row(&x[r, 0], b, O, act)


def layer_norm(const float[:, ::1] x,          # IN  (N, C)
               const float[:, ::1] residual,   # IN  (N, C) or None
               const float[::1] gamma,         # IN  (C)
               const float[::1] beta,          # IN  (C)
               float eps,
               float[:, ::1] out,              # OUT (N, C); may be x or residual
               int n_threads,
               float[:, ::1] sum_out=None):    # OUT (N, C) x + residual, or None
    """out = LayerNorm(x + residual), one row per iteration; with sum_out (and a residual) the
    sum is stored there too (the pre-LN residual stream, fused with the next norm)."""
    cdef int N = x.shape[0], C = x.shape[1], r
    cdef bint has_res = residual is not None
    cdef bint has_sum = sum_out is not None and has_res
    with nogil:
        for r in prange(N, schedule="static", num_threads=n_threads):
            if has_sum:
                _add_row(&x[r, 0], &residual[r, 0], C, &sum_out[r, 0])
                tf_layer_norm_row(&sum_out[r, 0], NULL, &gamma[0], &beta[0], eps, C, &out[r, 0])
            else:
                tf_layer_norm_row(&x[r, 0], &residual[r, 0] if has_res else NULL, &gamma[0],
                                  &beta[0], eps, C, &out[r, 0])


cdef inline void _add_row(const float *a, const float *b, int n, float *out) noexcept nogil:
    cdef int i
    for i in range(n):
        out[i] = a[i] + b[i]


def rms_norm(const float[:, ::1] x,         # IN  (N, C)
             const float[::1] weight,        # IN  (C)
             float eps,
             float[:, ::1] out,              # OUT (N, C); may be x
             int n_threads,
             const float[:, ::1] residual=None,  # IN  (N, C) added to x first, or None
             float[:, ::1] sum_out=None):    # OUT (N, C) x + residual (needs residual), or None
    """out = RMSNorm(x + residual) * weight, one row per iteration; the sum x + residual goes
    to sum_out (the pre-LN residual stream, fused with the next norm)."""
    cdef int N = x.shape[0], C = x.shape[1], r
    cdef bint has_res = residual is not None and sum_out is not None
    with nogil:
        for r in prange(N, schedule="static", num_threads=n_threads):
            if has_res:
                _add_row(&x[r, 0], &residual[r, 0], C, &sum_out[r, 0])
                tf_rms_norm_row(&sum_out[r, 0], &weight[0], eps, C, &out[r, 0])
            else:
                tf_rms_norm_row(&x[r, 0], &weight[0], eps, C, &out[r, 0])


def rotary(float[:, ::1] x,                  # IN/OUT (N, W): heads at columns [0, n_heads*D)
           const long[::1] positions,        # IN  (N) int64, < P
           const float[:, ::1] cos,          # IN  (P, D/2)
           const float[:, ::1] sin,          # IN  (P, D/2)
           int n_heads, int D, bint interleaved, int n_threads):
    """Rotate the first n_heads heads of each row by its position, in place."""
    cdef int N = x.shape[0], r
    with nogil:
        for r in prange(N, schedule="static", num_threads=n_threads):
            tf_rotary_row(&x[r, 0], n_heads, D, D, &cos[positions[r], 0], &sin[positions[r], 0],
                          interleaved)


def swiglu(const float[:, ::1] gate_up,      # IN  (N, 2F): gate | up
           float[:, ::1] out,                # OUT (N, F)
           int n_threads, str activation="silu"):
    """out = act(gate) * up (act: a key of ACTIVATIONS; "silu": SwiGLU), one row per
    iteration."""
    cdef int N = gate_up.shape[0], F = out.shape[1], r
    cdef int act = ACTIVATIONS[activation]
    with nogil:
        for r in prange(N, schedule="static", num_threads=n_threads):
            tf_gated_act_row(&gate_up[r, 0], F, act, &out[r, 0])


cdef int _decode(const float *qb, long qbs, long qrs, const float *kb, long kbs, long krs,
                 long khs, const float *vb, long vbs, long vrs, long vhs, const int *kv_index,
                 const int *kv_rows, long kv_rows_stride, const int *lengths, const float *kbias,
                 long kbias_stride, float *out, long obs, long ohs, int B, int H, int D,
                 int Hkv, float scale, int chunk, int n_threads,
                 const tf_pos_bias *pbp) noexcept nogil:
    """The split-K decode attention of `decode_attention` on raw pointers (strides in floats);
    returns -1 when the partials cannot be allocated."""
    cdef int G = H // Hkv, max_len = 0, b
    for b in range(B):
        max_len = max(max_len, lengths[b])
    cdef int n_split = max(1, (max_len + chunk - 1) // chunk)
    cdef long n_items = <long>B * Hkv * n_split
    # partials, indexed [b, h, split]: m and l (1 value), acc (D values)
    cdef float *pm = <float *>malloc(sizeof(float) * B * H * n_split * (D + 2))
    cdef float *pl = pm + <long>B * H * n_split
    cdef float *pacc = pl + <long>B * H * n_split
    cdef float *scores
    cdef float *tm
    cdef float *tl
    cdef float *tacc
    cdef long item
    cdef int hk, c, j0, n, g, h, bh, bk
    cdef bint has_rows = kv_rows != NULL
    if pm == NULL:
        return -1
    with parallel(num_threads=n_threads):
        scores = <float *>malloc(sizeof(float) * G * (chunk + 2 + D))
        tm = scores + G * chunk
        tl = tm + G
        tacc = tl + G
        for item in prange(n_items, schedule="dynamic"):
            b = item // (Hkv * n_split)
            hk = (item // n_split) % Hkv
            c = item % n_split
            j0 = c * chunk
            bk = kv_index[b] if kv_index != NULL else b
            n = min(chunk, lengths[b] - j0)
            if n <= 0:
                for g in range(G):
                    h = hk * G + g
                    pm[(b * H + h) * n_split + c] = -INFINITY
                    pl[(b * H + h) * n_split + c] = 0
                continue
            # with kv_rows each key's plane comes from the table (k, v at plane 0), else plane bk
            tf_decode_attention_chunk(qb + b * qbs + hk * G * qrs, qrs, G,
                                      kb + (0 if has_rows else bk * kbs) + j0 * krs + hk * khs,
                                      kbs, krs,
                                      vb + (0 if has_rows else bk * vbs) + j0 * vrs + hk * vhs,
                                      vbs, vrs, kv_rows + b * kv_rows_stride + j0 if has_rows
                                      else NULL, n, D,
                                      scale, kbias + bk * kbias_stride + j0 if kbias != NULL
                                      else NULL, scores, tm, tl, tacc, pbp, hk * G,
                                      lengths[b] - 1, j0)
            for g in range(G):
                h = hk * G + g
                pm[(b * H + h) * n_split + c] = tm[g]
                pl[(b * H + h) * n_split + c] = tl[g]
                memcpy(pacc + ((<long>b * H + h) * n_split + c) * D, tacc + g * D,
                       sizeof(float) * D)
        free(scores)
    for bh in prange(B * H, schedule="static", num_threads=n_threads):
        tf_decode_attention_combine(pm + <long>bh * n_split, pl + <long>bh * n_split,
                                    pacc + <long>bh * n_split * D, n_split, D,
                                    out + (bh // H) * obs + (bh % H) * ohs)
    free(pm)
    return 0


def decode_attention(const float[:, :, :] q,        # IN  (B, H, D), any row/head strides
                     const float[:, :, :, :] k,     # IN  (B, S_max, Hkv, D) KV cache
                     const float[:, :, :, :] v,     # IN  (B, S_max, Hkv, D)
                     const int[::1] kv_index,       # IN  (B) K/V plane of query row b, or None
                     const int[:, ::1] kv_rows,     # IN  (B, S_max) plane of key j of b, or None
                     const int[::1] lengths,        # IN  (B) keys of sequence b: [0, lengths[b])
                     const float[:, ::1] key_bias,  # IN  (B, S_max) additive, or None
                     float[:, :, ::1] out,          # OUT (B, H, D)
                     float scale, int chunk, int n_threads,
                     const float[::1] alibi=None,           # IN  (H) ALiBi slopes, or None
                     const float[:, ::1] rel_table=None,    # IN  (H, n_buckets), or None
                     const int[::1] bucket_of=None,         # IN  (n_tab) see tf_pos_bias
                     int half=0, bint bidirectional=False):
    """One new query per sequence against its cache, split over keys (split-K, as
    flash-decoding): work items (sequence, KV head, chunk of `chunk` keys) each give a partial
    max, sum and unnormalised output for the G = H / Hkv query heads that share that KV head (K/V
    read once per group, never copied); a second loop combines the chunks of each query head.
    kv_index lets several query rows share one K/V plane (beams over one source sentence);
    kv_rows picks the plane per key instead (beams whose cache was reordered by a table)."""
    cdef tf_pos_bias pb
    cdef const tf_pos_bias *pbp = &pb if _pos_bias(&pb, alibi, rel_table, bucket_of, half,
                                                    bidirectional) else NULL
    cdef int rc
    with nogil:
        rc = _decode(&q[0, 0, 0], q.strides[0] // 4, q.strides[1] // 4, &k[0, 0, 0, 0],
                     k.strides[0] // 4, k.strides[1] // 4, k.strides[2] // 4, &v[0, 0, 0, 0],
                     v.strides[0] // 4, v.strides[1] // 4, v.strides[2] // 4,
                     &kv_index[0] if kv_index is not None else NULL,
                     &kv_rows[0, 0] if kv_rows is not None else NULL,
                     kv_rows.shape[1] if kv_rows is not None else 0, &lengths[0],
                     &key_bias[0, 0] if key_bias is not None else NULL,
                     key_bias.shape[1] if key_bias is not None else 0, &out[0, 0, 0],
                     out.strides[0] // 4, out.strides[1] // 4, q.shape[0], q.shape[1],
                     q.shape[2], k.shape[2], scale, chunk, n_threads, pbp)
    if rc:
        raise MemoryError()


def decode_self_attention(float[:, ::1] qkv,          # IN/OUT (R, (H + 2 Hkv) D) new tokens
                          int n_heads,
                          const long[::1] positions,  # IN  (R) int64: lengths[r] - 1
                          const float[:, ::1] cos,    # IN  (P, D/2) rotary, or None
                          const float[:, ::1] sin,    # IN  (P, D/2), or None
                          bint interleaved,
                          float[:, :, :, ::1] k,      # IN/OUT (Bkv, S_max, Hkv, D) one layer
                          float[:, :, :, ::1] v,      # IN/OUT (Bkv, S_max, Hkv, D)
                          const int[:, ::1] kv_rows,  # IN  (R, S_max) plane table, or None
                          const int[::1] lengths,     # IN  (R) keys of row r, the new one last
                          float[:, :, ::1] out,       # OUT (R, H, D)
                          float scale, int chunk, int n_threads,
                          const float[::1] alibi=None,
                          const float[:, ::1] rel_table=None,
                          const int[::1] bucket_of=None,
                          int half=0, bint bidirectional=False):
    """A decode step's self-attention for one new token per cache row, fused (as
    FlashAttention's flash_attn_with_kvcache): rotate the Q and K heads of each fused QKV row
    by its position (when cos is given), store the row's K and V heads at position positions[r]
    of cache plane r, then decode_attention of its Q heads over keys [0, lengths[r]) (through
    kv_rows when given). D = cos.shape[1] * 2, or qkv's width / (H + 2 Hkv) with Hkv = k's."""
    cdef int R = qkv.shape[0], Hkv = k.shape[2], D = k.shape[3], H = n_heads, r
    cdef long W = qkv.shape[1]
    cdef tf_pos_bias pb
    cdef const tf_pos_bias *pbp = &pb if _pos_bias(&pb, alibi, rel_table, bucket_of, half,
                                                    bidirectional) else NULL
    cdef bint rotate = cos is not None
    cdef int rc
    with nogil:
        for r in range(R):
            if rotate:
                tf_rotary_row(&qkv[r, 0], H + Hkv, D, D, &cos[positions[r], 0],
                              &sin[positions[r], 0], interleaved)
            memcpy(&k[r, positions[r], 0, 0], &qkv[r, H * D], sizeof(float) * Hkv * D)
            memcpy(&v[r, positions[r], 0, 0], &qkv[r, (H + Hkv) * D], sizeof(float) * Hkv * D)
        rc = _decode(&qkv[0, 0], W, D, &k[0, 0, 0, 0], k.strides[0] // 4, k.strides[1] // 4,
                     D, &v[0, 0, 0, 0], v.strides[0] // 4, v.strides[1] // 4, D, NULL,
                     &kv_rows[0, 0] if kv_rows is not None else NULL,
                     kv_rows.shape[1] if kv_rows is not None else 0, &lengths[0], NULL, 0,
                     &out[0, 0, 0], out.strides[0] // 4, out.strides[1] // 4, R, H, D, Hkv,
                     scale, chunk, n_threads, pbp)
    if rc:
        raise MemoryError()


def softmax(const float[:, ::1] x,        # IN  (N, S)
            const float[:, ::1] mask,     # IN  (N, S) additive, or None
            float[:, ::1] out,            # OUT (N, S); may be x
            int n_threads):
    """out = softmax(x + mask) over the last axis, one row per iteration."""
    cdef int N = x.shape[0], S = x.shape[1], r
    cdef bint has_mask = mask is not None
    with nogil:
        for r in prange(N, schedule="static", num_threads=n_threads):
            tf_softmax_row(&x[r, 0], &mask[r, 0] if has_mask else NULL, S, &out[r, 0])


def embedding(const long[::1] input_ids,       # IN  (N) int64, checked in range
              const long[::1] position_ids,    # IN  (N) int64
              const long[::1] token_type_ids,  # IN  (N) int64 or None
              const float[:, ::1] word,        # IN  (V, C)
              const float[:, ::1] position,    # IN  (P, C)
              const float[:, ::1] token_type,  # IN  (TV, C) or None
              const float[::1] gamma,          # IN  (C) or None
              const float[::1] beta,           # IN  (C) or None
              float eps,
              float[:, ::1] out,               # OUT (N, C)
              int n_threads):
    """out = LayerNorm(word[ids] + position[pos] + token_type[types]): gather, sum and norm fused
    into one pass over each row."""
    cdef int N = input_ids.shape[0], C = word.shape[1], r
    cdef bint has_type = token_type is not None
    cdef bint has_norm = gamma is not None
    with nogil:
        for r in prange(N, schedule="static", num_threads=n_threads):
            tf_embed_row(&word[input_ids[r], 0], &position[position_ids[r], 0],
                         &token_type[token_type_ids[r], 0] if has_type else NULL,
                         &gamma[0] if has_norm else NULL, &beta[0] if has_norm else NULL,
                         eps, C, &out[r, 0])


def attention(const float[:, :, :, :] q,        # IN  (P, Tq_rows, H, D), any strides but the last
              const float[:, :, :, :] k,        # IN  (P, Sk_rows, Hkv, D)
              const float[:, :, :, :] v,        # IN  (P, Sk_rows, Hkv, D)
              float[:, :, :, ::1] out,         # OUT (P, Tq_rows, H, D)
              const int[::1] plane,            # IN  (n_seq) which P plane holds sequence s
              const int[::1] q_start,          # IN  (n_seq) first query row of s in its plane
              const int[::1] q_len,            # IN  (n_seq)
              const int[::1] k_start,          # IN  (n_seq)
              const int[::1] k_len,            # IN  (n_seq)
              const float[:, ::1] key_bias,    # IN  (n_seq, max k_len) additive, or None
              bint causal, float scale, int n_threads,
              const float[::1] alibi=None,            # IN  (H) ALiBi slopes, or None
              const float[:, ::1] rel_table=None,     # IN  (H, n_buckets), or None
              const int[::1] bucket_of=None,          # IN  (n_tab) see tf_pos_bias
              int half=0, bint bidirectional=False):
    """Fused multi-head attention, softmax(scale * Q K^T + mask) V, tiled: each work item is one
    (sequence, head, block of BQ queries); it streams blocks of BK keys, computes the score tile
    and the P V update with sgemm on strided tiles, and keeps an online softmax (running max and
    sum, FlashAttention-2 style), so memory is O(BQ * (BK + D)) per thread, never O(T * S).
    Key blocks entirely in the causal future are skipped; causal queries are aligned to the end of
    the keys (query i sees keys j <= i + k_len - q_len). Query head h reads key/value head
    h // (H / Hkv) (grouped-query attention without copies)."""
    cdef int n_seq = q_len.shape[0], H = q.shape[2], Hkv = k.shape[2], D = q.shape[3]
    cdef int group = H // Hkv
    cdef int max_t = 0, s, n_qb, item, n_items
    for s in range(n_seq):
        max_t = max(max_t, q_len[s])
    n_qb = (max_t + BQ - 1) // BQ
    n_items = n_seq * H * n_qb
    if n_items == 0:
        return
    # Strides in elements: rows and heads (the last axis is contiguous).
    cdef long qrs = q.strides[1] // 4, qhs = q.strides[2] // 4, qps = q.strides[0] // 4
    cdef long krs = k.strides[1] // 4, khs = k.strides[2] // 4, kps = k.strides[0] // 4
    cdef long vrs = v.strides[1] // 4, vhs = v.strides[2] // 4, vps = v.strides[0] // 4
    cdef long ors = out.strides[1] // 4, ohs = out.strides[2] // 4, ops = out.strides[0] // 4
    cdef const float *qb = &q[0, 0, 0, 0]
    cdef const float *kb = &k[0, 0, 0, 0]
    cdef const float *vb = &v[0, 0, 0, 0]
    cdef float *ob = &out[0, 0, 0, 0]
    cdef const float *kbias = &key_bias[0, 0] if key_bias is not None else NULL
    cdef long kbias_stride = key_bias.shape[1] if key_bias is not None else 0
    cdef float *scratch
    cdef float *S
    cdef float *acc
    cdef float *m
    cdef float *l
    cdef int h, hk, qblk, t0, rows, T, Sk, s0, cols, diag, kstop, i
    cdef const float *qp
    cdef const float *kp
    cdef const float *vp
    cdef float *op
    cdef tf_pos_bias pb
    cdef const tf_pos_bias *pbp = &pb if _pos_bias(&pb, alibi, rel_table, bucket_of, half,
                                                    bidirectional) else NULL
    with nogil, parallel(num_threads=n_threads):
        scratch = <float *>malloc(sizeof(float) * (BQ * BK + BQ * D + 2 * BQ))
        S = scratch
        acc = S + BQ * BK
        m = acc + BQ * D
        l = m + BQ
        for item in prange(n_items, schedule="dynamic"):
            s = item // (H * n_qb)
            h = (item // n_qb) % H
            qblk = item % n_qb
            T = q_len[s]
            Sk = k_len[s]
            t0 = qblk * BQ
            if t0 >= T:
                continue
            rows = min(BQ, T - t0)
            hk = h // group
            qp = qb + plane[s] * qps + (q_start[s] + t0) * qrs + h * qhs
            op = ob + plane[s] * ops + (q_start[s] + t0) * ors + h * ohs
            memset(acc, 0, sizeof(float) * rows * D)
            for i in range(rows):
                m[i] = -INFINITY
                l[i] = 0
            kstop = Sk
            if causal:
                # last key seen by the last query of this block
                kstop = min(Sk, t0 + rows + Sk - T)
            s0 = 0
            while s0 < kstop:
                cols = min(BK, kstop - s0)
                kp = kb + plane[s] * kps + (k_start[s] + s0) * krs + hk * khs
                vp = vb + plane[s] * vps + (k_start[s] + s0) * vrs + hk * vhs
                _gemm_nt(rows, cols, D, scale, qp, <int>qrs, kp, <int>krs, 0.0, S, BK)
                if pbp != NULL:  # queries at t0 + Sk - T.. (aligned at the end), keys at s0..
                    tf_position_bias_tile(pbp, h, S, BK, rows, cols, t0 + Sk - T, s0)
                diag = t0 + Sk - T - s0
                if tf_online_softmax_tile(S, BK, rows, cols, causal, diag,
                                          kbias + s * kbias_stride + s0 if kbias != NULL else NULL,
                                          m, l, acc, D) > 0:
                    _gemm_nn(rows, D, cols, 1.0, S, BK, vp, <int>vrs, 1.0, acc, D)
                s0 = s0 + BK
            tf_attention_finalize(acc, l, rows, D, op, ors)
        free(scratch)


def beam_topk(const float[:, ::1] logits,       # IN  (R, V), R = B * num_beams
              const float[::1] beam_scores,      # IN  (R) running score of each beam
              int num_beams, int k,
              float[:, ::1] row_vals,            # SCRATCH (R, k)
              long[:, ::1] row_idx,              # SCRATCH (R, k)
              float[:, ::1] vals,                # OUT (B, k) float32, best first
              long[:, ::1] idx,                  # OUT (B, k) int64 in [0, num_beams * V)
              int n_threads):
    """One beam-search selection step fused: per row r, score = log_softmax(logits[r]) +
    beam_scores[r] in float32; per batch entry b, the k best scores over its num_beams rows
    (flat index beam * V + token), best first, equal scores in ascending flat index.
    Rows in parallel (max and log-sum-exp, then a thresholded scan keeping the row's k best);
    then each batch entry merges its rows' lists. Needs k <= V."""
    cdef int R = logits.shape[0], V = logits.shape[1], B = R // num_beams
    cdef int r, b, j, count
    with nogil:
        for r in prange(R, schedule="dynamic", chunksize=4, num_threads=n_threads):
            tf_beam_topk_row(&logits[r, 0], V, beam_scores[r],
                             <long>(r % num_beams) * V, k, &row_vals[r, 0], &row_idx[r, 0])
        for b in range(B):
            count = 0
            for j in range(num_beams):
                tf_topk_merge(&row_vals[b * num_beams + j, 0], &row_idx[b * num_beams + j, 0],
                              k, k, &vals[b, 0], &idx[b, 0], &count)


# ---------------------------------------------------------------------------------------------
# Packed int8 / int4 / bfloat16 products (gemm.c; layouts in gemm.h)
# ---------------------------------------------------------------------------------------------

GEMM_VARIANTS = {"portable": TF_GEMM_PORTABLE, "avx2": TF_GEMM_AVX2, "avx512": TF_GEMM_AVX512}
GEMM_KINDS = {"int8": TF_INT8, "bfloat16": TF_BF16, "int4": TF_INT4, "float32": TF_F32}
cdef enum:
    PANEL = 64       # outputs per work item (the packed panel)
    ROW_CHUNK = 48   # rows per work item when there are fewer panels than 2 per thread


def best_gemm_variant(str kind):
    """Name of the fastest variant of the `kind` ("float32" / "int8" / "int4" / "bfloat16")
    product this CPU runs."""
    cdef int v = tf_gemm_best_variant(GEMM_KINDS[kind])
    return {TF_GEMM_PORTABLE: "portable", TF_GEMM_AVX2: "avx2", TF_GEMM_AVX512: "avx512"}[v]


def pack_int8(const int8_t[:, ::1] w,        # IN  (O, K) int8
              int8_t[::1] packed,             # OUT (O64 * K4) the int8 layout
              int32_t[::1] comp):             # OUT (O64) 128 * row sums
    """Pack quantized weights for tf_gemm_int8."""
    with nogil:
        tf_pack_int8(&w[0, 0], w.shape[0], w.shape[1], &packed[0], &comp[0])


def pack_bf16(const uint16_t[:, ::1] w,     # IN  (O, K) bf16 bits
              uint16_t[::1] packed):         # OUT (O64 * K2) the bf16 layout
    """Pack bf16 weights for tf_gemm_bf16."""
    with nogil:
        tf_pack_bf16(&w[0, 0], w.shape[0], w.shape[1], &packed[0])


def pack_f32(const float[:, ::1] w,         # IN  (O, K) float32
             float[::1] packed):              # OUT (O64 * K) the f32 layout
    """Pack float32 weights for tf_gemm_f32."""
    with nogil:
        tf_pack_f32(&w[0, 0], w.shape[0], w.shape[1], &packed[0])


def unpack_rows(str kind,
                const unsigned char[::1] packed,   # IN  the packed bytes of an (O, K) matrix
                const float[::1] inv_scale,        # IN  (O64) 1 / row scale (int8) or None
                const long[::1] rows,              # IN  (N) row indices < O
                float[:, ::1] out,                 # OUT (N, K) float32
                int n_threads):
    """out[i] = row rows[i] of a packed matrix, dequantized (the embedding gather of a packed
    table)."""
    cdef int N = out.shape[0], K = out.shape[1], i
    cdef int k = GEMM_KINDS[kind]
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            if k == TF_INT8:
                tf_unpack_row_int8(<const int8_t *>&packed[0], K, <int>rows[i],
                                   inv_scale[rows[i]], &out[i, 0])
            elif k == TF_INT4:
                tf_unpack_row_int4(&packed[0], K, <int>rows[i], &out[i, 0])
            elif k == TF_F32:
                tf_unpack_row_f32(<const float *>&packed[0], K, <int>rows[i], &out[i, 0])
            else:
                tf_unpack_row_bf16(<const uint16_t *>&packed[0], K, <int>rows[i], &out[i, 0])


def quantize_rows_int8(const float[:, ::1] x,   # IN  (M, K)
                       int8_t[:, ::1] q,         # OUT (M, K4) round(x * s), zero padded
                       float[::1] scale,         # OUT (M) s = 127 / max|x| per row
                       int n_threads):
    """Dynamic per-row symmetric quantization of activations (CTranslate2's int8)."""
    cdef int M = x.shape[0], K = x.shape[1], K4 = q.shape[1], r
    with nogil:
        for r in prange(M, schedule="static", num_threads=n_threads):
            scale[r] = tf_quantize_row_int8(&x[r, 0], K, K4, &q[r, 0])


def gemm_int8_raw(str variant,
                  const int8_t[:, ::1] xq,       # IN  (M, K4) quantized rows
                  const unsigned char[::1] packed,  # IN  packed (O, K) int8 weights
                  const int32_t[::1] comp,       # IN  (O64)
                  int32_t[:, ::1] out):          # OUT (M, O) exact int32 xq @ w^T
    """The int32 accumulators of one variant (tests compare them with an exact reference)."""
    cdef int M = xq.shape[0], K4 = xq.shape[1], O = out.shape[1], p, o0
    cdef int v = GEMM_VARIANTS[variant]
    if M == 0 or O == 0:
        return
    with nogil:
        for p in range((O + PANEL - 1) // PANEL):
            o0 = p * PANEL
            tf_gemm_int8_raw(v, &xq[0, 0], M, K4, <const int8_t *>&packed[0], &comp[0], o0,
                             min(PANEL, O - o0), &out[0, o0], O)


def gemm_int4_raw(str variant,
                  const int8_t[:, ::1] xq,          # IN  (M, K32) quantized rows
                  const unsigned char[::1] packed,  # IN  packed (O, K) int4 weights
                  int32_t[:, :, ::1] out):          # OUT (M, O, G) exact int32 group sums
    """The per-group int32 sums of one variant (tests compare them with an exact reference)."""
    cdef int M = xq.shape[0], O = out.shape[1], G = out.shape[2], p, o0
    cdef int v = GEMM_VARIANTS[variant]
    if M == 0 or O == 0 or G == 0:
        return
    with nogil:
        for p in range((O + PANEL - 1) // PANEL):
            o0 = p * PANEL
            tf_gemm_int4_raw(v, &xq[0, 0], M, G, &packed[0], o0, min(PANEL, O - o0),
                             &out[0, o0, 0], <long>O * G)


def linear_packed(str kind, str variant,
                  const float[:, ::1] x,            # IN  (M, K) float32
                  const unsigned char[::1] packed,  # IN  packed (O, K) weights
                  const float[::1] inv_scale,       # IN  (O64) 1 / weight row scale, int8 only
                  const int32_t[::1] comp,          # IN  (O64) int8 only (int4: scales and
                                                    #     minimums are in the packed records)
                  const float[::1] bias,            # IN  (O) or None
                  float[:, ::1] out,                # OUT (M, O) float32
                  str activation, int n_threads):
    """out = act(x @ w^T + bias) through the packed kernels: each row of x is first quantized
    (int8, int4: per-row scale; int4 also the per-group sums of the quantized row) or rounded to
    bf16, in parallel (float32: x as it is); then work items of one 64-output
    panel (x all rows when M <= 16: a decode step streams each weight once for every row; else
    blocks of rows when there are too few panels for the threads) run the register-tiled
    product with dequantization and bias fused, and the activation on the block while it is in
    cache."""
    cdef int M = x.shape[0], K = x.shape[1], O = out.shape[1]
    cdef int k = GEMM_KINDS[kind]
    cdef int is_int8 = k == TF_INT8 or k == TF_INT4   # int8 activations
    cdef int v = GEMM_VARIANTS[variant]
    cdef int act = ACTIVATIONS[activation]
    cdef int Kp = (K + 3) // 4 * 4 if k == TF_INT8 else (
        (K + 31) // 32 * 32 if k == TF_INT4 else (K + 1) // 2 * 2 if k == TF_BF16 else K)
    cdef int G = Kp // 32 if k == TF_INT4 else 0
    cdef int n_panels = (O + PANEL - 1) // PANEL
    cdef int n_rc = 1, rows_per, item, p, rc, m0, m1, o0, n, r
    cdef const float *b = &bias[0] if bias is not None else NULL
    if M == 0 or O == 0:
        return
    if M > 16:
        n_rc = max(1, min((M + ROW_CHUNK - 1) // ROW_CHUNK,
                          (2 * n_threads + n_panels - 1) // n_panels))
    rows_per = (M + n_rc - 1) // n_rc
    cdef size_t x_bytes = 0 if k == TF_F32 else \
        (<size_t>M * Kp * (1 if is_int8 else 2) + 3) // 4 * 4
    cdef char *xa = <char *>malloc(x_bytes + sizeof(float) * M * (1 + G))
    if xa == NULL:
        raise MemoryError()
    cdef float *inv_sx = <float *>(xa + x_bytes)
    cdef float *xsum = inv_sx + M                    # (M, G) int4 only
    cdef const unsigned char *pk = &packed[0]
    with nogil:
        for r in prange(M if k != TF_F32 else 0, schedule="static", num_threads=n_threads):
            if is_int8:
                inv_sx[r] = <float>1.0 / tf_quantize_row_int8(&x[r, 0], K, Kp,
                                                       <int8_t *>xa + <size_t>r * Kp)
                if G:
                    tf_group_sums_int8(<int8_t *>xa + <size_t>r * Kp, G, xsum + <size_t>r * G)
            else:
                tf_round_row_bf16(&x[r, 0], K, Kp, <uint16_t *>xa + <size_t>r * Kp)
        for item in prange(n_panels * n_rc, schedule="static", num_threads=n_threads):
            p = item // n_rc
            rc = item % n_rc
            m0 = rc * rows_per
            m1 = min(M, m0 + rows_per)
            if m1 <= m0:
                continue
            o0 = p * PANEL
            n = min(PANEL, O - o0)
            if k == TF_INT8:
                tf_gemm_int8(v, <int8_t *>xa + <size_t>m0 * Kp, m1 - m0, Kp, inv_sx + m0,
                             <const int8_t *>pk, &comp[0], &inv_scale[0], b, o0, n,
                             &out[m0, 0], O)
            elif k == TF_INT4:
                tf_gemm_int4(v, <int8_t *>xa + <size_t>m0 * Kp, m1 - m0, G, inv_sx + m0,
                             xsum + <size_t>m0 * G, pk, b, o0, n, &out[m0, 0], O)
            elif k == TF_F32:
                tf_gemm_f32(v, &x[m0, 0], m1 - m0, K, <const float *>pk, b, o0, n, &out[m0, 0],
                            O)
            else:
                tf_gemm_bf16(v, <uint16_t *>xa + <size_t>m0 * Kp, m1 - m0, Kp,
                             <const uint16_t *>pk, b, o0, n, &out[m0, 0], O)
            if act != TF_ACT_NONE:
                for r in range(m0, m1):
                    tf_bias_act_row(&out[r, o0], NULL, n, act)
    free(xa)
