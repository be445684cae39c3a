// Attention kernels of the CUDA backend (transformer/ops/cuda.py).
//
// attention_*: softmax(Q K^T * scale + key_bias) V over ragged batches, FlashAttention-2 style
// (Dao 2023, Algorithm 1): the grid runs over (query tile, sequence x head); K/V tiles stream
// through shared memory; an online softmax keeps a running max m and sum l per query row, with
// the scale folded into exp2 (scores are scaled by scale * log2(e)); causal tiles in the future
// are never loaded; a row that sees no key gets zeros. Memory is O(tile), linear in sequence
// length. fp16/bf16 with D in {64, 128} use tensor cores (mma.sync m16n8k16, fp32 accumulate);
// every dtype and D <= 128 has a SIMT path with fp32 math.
//
// Operand addressing (elements): query t of sequence b, head h is at
//   q + plane[b] * q_b + (q_start[b] + t) * q_t + h * q_h
// and likewise for o; key s at k + plane[b] * k_b + (k_start[b] + s) * k_t + (h / (H / Hkv)) * k_h
// (grouped-query attention without copies), likewise v.
// Sequence b has q_len[b] queries and k_len[b] keys; causal: query t sees keys
// s <= t + k_len[b] - q_len[b]. key_bias: (B, kb_stride) float additive (0 / -inf) or null.
//
// Position bias (every kernel; PB_ARGS, the CPU's tf_pos_bias of csrc/cpu/kernels.h, filled from
// the same ops.PositionBias kernel arguments): added to the scaled score of query head h at
// query position i against key position j, computed here per score, never stored as (H, T, S):
//   ALiBi (Press et al. 2022; HF BLOOM): pb_slopes[h] * j;
//   relative buckets (T5, Raffel et al. 2020; MPNet): pb_table[h * pb_n_buckets + bucket(j - i)],
//   bucket(d) = (pb_bidirectional && d > 0 ? pb_half : 0) + pb_bucket_of[min(n, pb_n_tab - 1)],
//   n = |d| when bidirectional, else max(-d, 0); pb_bucket_of holds HF's float32 log-bucket of
//   each distance (transformer/ops/position_bias.py), so buckets equal the CPU kernel's exactly.
// Positions: prefill / varlen queries sit at the end of their keys (query t at t + k_len[b] -
// q_len[b]), keys at 0.. k_len[b] - 1 of their sequence; decode: the query at lengths[b] - 1.
//
// decode_attention_*: one query per sequence against its KV cache, split over keys (split-K,
// "flash-decoding"): each block reduces one chunk of keys to (m, l, acc[D]) in a float
// workspace, then decode_combine merges the chunks.
#include "common.cuh"

// The position bias arguments of every attention kernel (see the top of this file); both
// pointers null: no bias.
#define PB_ARGS                                                                              \
    const float *pb_slopes, const float *pb_table, int pb_n_buckets, const int *pb_bucket_of, \
        int pb_n_tab, int pb_half, int pb_bidirectional
#define PB_CALL pb_slopes, pb_table, pb_n_buckets, pb_bucket_of, pb_n_tab, pb_half, pb_bidirectional

// The position bias of one query head, as few registers as the tile loops can keep live.
struct HeadBias {
    bool on;               // any bias at all
    float slope;           // ALiBi slope of the head, or 0
    const float* row;      // the head's row of the bucket table, or null
    const int* bucket_of;  // bucket of each distance 0.. last
    int last;              // n_tab - 1: the saturated distance
    int half;              // bidirectional: first bucket of keys after the query; causal: -1
    // The bias (natural-log units) of query position i against key position j; the terms of
    // tf_position_bias_tile (csrc/cpu/kernels.c).
    __device__ __forceinline__ float operator()(int i, int j) const {
        float b = slope * (float)j;
        if (row) {
            const int d = j - i;
            const int n = min(half >= 0 ? (d < 0 ? -d : d) : (d < 0 ? -d : 0), last);
            b += row[bucket_of[n] + (half >= 0 && d > 0 ? half : 0)];
        }
        return b;
    }
};

__device__ __forceinline__ HeadBias head_bias(int h, PB_ARGS) {
    HeadBias hb;
    hb.on = pb_slopes != nullptr || pb_table != nullptr;
    hb.slope = pb_slopes ? pb_slopes[h] : 0.0f;
    hb.row = pb_table ? pb_table + (long long)h * pb_n_buckets : nullptr;
    hb.bucket_of = pb_bucket_of;
    hb.last = pb_n_tab - 1;
    hb.half = pb_bidirectional ? pb_half : -1;
    return hb;
}

#define ATTN_ARGS(T)                                                                          \
    (const T* q, const T* k, const T* v, T* o, long long q_b, long long q_t, long long q_h,    \
     long long k_b, long long k_t, long long k_h, long long v_b, long long v_t, long long v_h, \
     long long o_b, long long o_t, long long o_h, const int* plane, const int* q_start,        \
     const int* q_len,                                                                         \
     const int* k_start, const int* k_len, const float* key_bias, long long kb_stride, int H,  \
     int Hkv, int D, int causal, float scale_log2, PB_ARGS)
#define ATTN_CALL                                                                            \
    (q, k, v, o, q_b, q_t, q_h, k_b, k_t, k_h, v_b, v_t, v_h, o_b, o_t, o_h, plane, q_start, \
     q_len,                                                                                 \
     k_start, k_len, key_bias, kb_stride, H, Hkv, D, causal, scale_log2, PB_CALL)

// Keys [0, end) that the query tile [q0, q0 + rows) of a sequence can see.
__device__ __forceinline__ int key_end(int q0, int rows, int T, int S, int causal) {
    if (!causal) return S;
    const int last = min(q0 + rows, T) - 1;
    return max(0, min(S, last + S - T + 1));
}

// ---------------------------------------------------------------------------------------------
// SIMT path: 16 queries per block (4 warps x 4), 32 keys per tile; lane j scores key j of the
// tile, then the lanes split D for the P V update. D <= 128.
#define SIMT_BQ 16
#define SIMT_BK 32
#define SIMT_MAXD 128

template <typename T>
__device__ __forceinline__ void attention_impl ATTN_ARGS(T) {
    __shared__ float qs[SIMT_BQ][SIMT_MAXD];
    __shared__ float ks[SIMT_BK][SIMT_MAXD + 1];  // +1: lanes read different rows, no conflicts
    __shared__ float vs[SIMT_BK][SIMT_MAXD];
    const int b = blockIdx.y / H, h = blockIdx.y % H, hk = h / (H / Hkv);
    const int T_b = q_len[b], S_b = k_len[b], q0 = blockIdx.x * SIMT_BQ;
    if (q0 >= T_b) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long P = plane[b];
    const T* qb = q + P * q_b + (long long)(q_start[b] + q0) * q_t + h * q_h;
    const T* kb = k + P * k_b + (long long)k_start[b] * k_t + hk * k_h;
    const T* vb = v + P * v_b + (long long)k_start[b] * v_t + hk * v_h;
    const float* bias = key_bias ? key_bias + b * kb_stride : nullptr;
    const HeadBias pb = head_bias(h, PB_CALL);
    const int q_pos0 = S_b - T_b;  // position of query 0 among the keys
    for (int i = threadIdx.x; i < SIMT_BQ * D; i += blockDim.x) {
        const int r = i / D, d = i % D;
        qs[r][d] = q0 + r < T_b ? to_float(qb[r * q_t + d]) * scale_log2 : 0.0f;
    }
    float m[4], l[4], acc[4][SIMT_MAXD / 32];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        m[j] = NEG_INF;
        l[j] = 0.0f;
#pragma unroll
        for (int c = 0; c < SIMT_MAXD / 32; ++c) acc[j][c] = 0.0f;
    }
    const int end = key_end(q0, SIMT_BQ, T_b, S_b, causal);
    for (int k0 = 0; k0 < end; k0 += SIMT_BK) {
        __syncthreads();
        for (int i = threadIdx.x; i < SIMT_BK * D; i += blockDim.x) {
            const int r = i / D, d = i % D;
            const bool in = k0 + r < S_b;
            ks[r][d] = in ? to_float(kb[(long long)(k0 + r) * k_t + d]) : 0.0f;
            vs[r][d] = in ? to_float(vb[(long long)(k0 + r) * v_t + d]) : 0.0f;
        }
        __syncthreads();
        const int s = k0 + lane;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = warp * 4 + j, t = q0 + r;
            if (t >= T_b) break;  // warp-uniform
            float score = 0.0f;
            for (int d = 0; d < D; ++d) score += qs[r][d] * ks[lane][d];
            bool valid = s < S_b && (!causal || s <= t + S_b - T_b);
            if (valid && pb.on) score += pb(t + q_pos0, s) * LOG2E;
            if (valid && bias) score += bias[s] * LOG2E;
            score = valid ? score : NEG_INF;
            const float m_new = fmaxf(m[j], warp_max(score));
            if (m_new == NEG_INF) continue;  // nothing visible yet (warp-uniform)
            const float p = exp2f(score - m_new), alpha = exp2f(m[j] - m_new);
            l[j] = l[j] * alpha + warp_sum(p);
#pragma unroll
            for (int c = 0; c < SIMT_MAXD / 32; ++c) acc[j][c] *= alpha;
            for (int kk = 0; kk < SIMT_BK; ++kk) {
                const float pk = __shfl_sync(0xffffffffu, p, kk);
#pragma unroll
                for (int c = 0; c < SIMT_MAXD / 32; ++c) {
                    const int d = lane + 32 * c;
                    if (d < D) acc[j][c] += pk * vs[kk][d];
                }
            }
            m[j] = m_new;
        }
    }
    T* ob = o + P * o_b + (long long)(q_start[b] + q0) * o_t + h * o_h;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int r = warp * 4 + j;
        if (q0 + r >= T_b) break;
        const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
#pragma unroll
        for (int c = 0; c < SIMT_MAXD / 32; ++c) {
            const int d = lane + 32 * c;
            if (d < D) ob[(long long)r * o_t + d] = from_float<T>(acc[j][c] * inv);
        }
    }
}
INSTANTIATE(attention, ATTN_ARGS, ATTN_CALL)

// ---------------------------------------------------------------------------------------------
// Tensor-core path (fp16 / bf16): 64 queries per block, 4 warps of 16 rows, 64 keys per tile.
// Fragment layouts of mma.sync.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), with
// g = lane / 4 and c = lane % 4: A (16 x 16, row) regs {(g, 2c), (g + 8, 2c), (g, 2c + 8),
// (g + 8, 2c + 8)} each holding two consecutive columns; B (16 x 8, col) regs {(2c, g),
// (2c + 8, g)} each two consecutive rows; C (16 x 8, f32) {(g, 2c), (g, 2c + 1), (g + 8, 2c),
// (g + 8, 2c + 1)}. Two adjacent C tiles of S form the A fragment of P for P V (FA-2).
#define MMA_BQ 64
#define MMA_BK 64

template <typename T> __device__ __forceinline__ void mma16816(float* c, const unsigned* a,
                                                               unsigned b0, unsigned b1);
#define MMA16816(T, PTX_TYPE)                                                                   \
    template <> __device__ __forceinline__ void mma16816<T>(float* c, const unsigned* a,        \
                                                            unsigned b0, unsigned b1) {         \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 "     \
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                     \
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                           \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));            \
    }
MMA16816(f16, "f16")
MMA16816(bf16, "bf16")

__device__ __forceinline__ unsigned pack_bits(unsigned short lo, unsigned short hi) {
    return static_cast<unsigned>(lo) | (static_cast<unsigned>(hi) << 16);
}

template <typename T, int HD>
__device__ __forceinline__ void attention_mma_impl ATTN_ARGS(T) {
    constexpr int LD = HD + 8;  // padded row (16-bit elements): conflict-free fragment reads
    __shared__ unsigned short ks[MMA_BK * LD];
    __shared__ unsigned short vs[MMA_BK * LD];
    const int b = blockIdx.y / H, h = blockIdx.y % H, hk = h / (H / Hkv);
    const int T_b = q_len[b], S_b = k_len[b], q0 = blockIdx.x * MMA_BQ;
    if (q0 >= T_b) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const long long P = plane[b];
    const unsigned short* qb = reinterpret_cast<const unsigned short*>(q + P * q_b + h * q_h) +
                               (long long)(q_start[b] + q0 + warp * 16) * q_t;
    const unsigned short* kb = reinterpret_cast<const unsigned short*>(
        k + P * k_b + (long long)k_start[b] * k_t + hk * k_h);
    const unsigned short* vb = reinterpret_cast<const unsigned short*>(
        v + P * v_b + (long long)k_start[b] * v_t + hk * v_h);
    const float* bias = key_bias ? key_bias + b * kb_stride : nullptr;
    const HeadBias pb = head_bias(h, PB_CALL);
    const int rows = T_b - q0 - warp * 16;  // valid rows of this warp's 16 (may be <= 0)
    const int t_lo = q0 + warp * 16 + g, t_hi = t_lo + 8;  // the two query rows of this thread

    // Q fragments in registers (rows past the sequence are zeros and are never written).
    unsigned qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = g + (r & 1) * 8, col = kk * 16 + 2 * c + (r >> 1) * 8;
            const unsigned short* p = qb + (long long)row * q_t + col;
            qa[kk][r] = row < rows ? pack_bits(p[0], p[1]) : 0u;
        }
    }
    float acc[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};

    const int end = key_end(q0, MMA_BQ, T_b, S_b, causal);
    for (int k0 = 0; k0 < end; k0 += MMA_BK) {
        __syncthreads();
        for (int i = threadIdx.x; i < MMA_BK * HD; i += blockDim.x) {
            const int r = i / HD, d = i % HD;
            const bool in = k0 + r < S_b;
            ks[r * LD + d] = in ? kb[(long long)(k0 + r) * k_t + d] : (unsigned short)0;
            vs[r * LD + d] = in ? vb[(long long)(k0 + r) * v_t + d] : (unsigned short)0;
        }
        __syncthreads();
        float s[MMA_BK / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_BK / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
            for (int n = 0; n < MMA_BK / 8; ++n) {
                const unsigned short* kr = ks + (n * 8 + g) * LD + kk * 16 + 2 * c;
                mma16816<T>(s[n], qa[kk], *reinterpret_cast<const unsigned*>(kr),
                            *reinterpret_cast<const unsigned*>(kr + 8));
            }
        }
        // scale, mask, online softmax (rows t_lo: s[n][0..1], t_hi: s[n][2..3])
        float tile_max[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int n = 0; n < MMA_BK / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + n * 8 + 2 * c + (e & 1), t = e < 2 ? t_lo : t_hi;
                bool valid = key < S_b && (!causal || key <= t + S_b - T_b);
                float x = s[n][e] * scale_log2;
                if (valid && pb.on) x += pb(t + S_b - T_b, key) * LOG2E;
                if (valid && bias) x += bias[key] * LOG2E;
                s[n][e] = valid ? x : NEG_INF;
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[n][e]);
            }
        }
        float alpha[2], m_use[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {  // the 4 lanes of a quad share rows
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            const float m_new = fmaxf(m[r], tile_max[r]);
            m_use[r] = m_new == NEG_INF ? 0.0f : m_new;
            alpha[r] = exp2f(m[r] - m_use[r]);  // 0 while nothing was visible
            m[r] = m_new;
        }
        float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < MMA_BK / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = exp2f(s[n][e] - m_use[e >> 1]);
                row_sum[e >> 1] += s[n][e];
            }
        }
        l[0] = l[0] * alpha[0] + row_sum[0];  // per-lane partial sums, reduced at the end
        l[1] = l[1] * alpha[1] + row_sum[1];
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            acc[n][0] *= alpha[0];
            acc[n][1] *= alpha[0];
            acc[n][2] *= alpha[1];
            acc[n][3] *= alpha[1];
        }
        // O += P V, P from registers (16 keys per k-step)
#pragma unroll
        for (int kc = 0; kc < MMA_BK / 16; ++kc) {
            unsigned pa[4] = {pack2<T>(s[2 * kc][0], s[2 * kc][1]),
                              pack2<T>(s[2 * kc][2], s[2 * kc][3]),
                              pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                              pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
            const unsigned short* v0 = vs + (kc * 16 + 2 * c) * LD + g;
#pragma unroll
            for (int n = 0; n < HD / 8; ++n) {
                const unsigned short* vr = v0 + n * 8;
                mma16816<T>(acc[n], pa, pack_bits(vr[0], vr[LD]),
                            pack_bits(vr[8 * LD], vr[9 * LD]));
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        l[r] = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    }
    T* ob = o + P * o_b + (long long)q_start[b] * o_t + h * o_h;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = g + (e >> 1) * 8, col = n * 8 + 2 * c + (e & 1);
            if (row < rows)
                ob[(long long)(q0 + warp * 16 + row) * o_t + col] =
                    from_float<T>(acc[n][e] * l[e >> 1]);
        }
    }
}

#define ATTN_MMA(TYPE, SUFFIX, DIM)                                                     \
    extern "C" __global__ void __launch_bounds__(128) attention_mma_##SUFFIX##_d##DIM \
        ATTN_ARGS(TYPE) { attention_mma_impl<TYPE, DIM> ATTN_CALL; }
ATTN_MMA(f16, f16, 64)
ATTN_MMA(f16, f16, 128)
ATTN_MMA(bf16, bf16, 64)
ATTN_MMA(bf16, bf16, 128)

// ---------------------------------------------------------------------------------------------
// Decode attention, split-K. q (B, H, D) at q + b * q_b + h * q_h; caches (Bkv, S_max, Hkv, D)
// contiguous; sequence b reads plane kv_index[b] (or b) up to lengths[b]; key_bias (Bkv, S_max)
// float or null. Grid (n_chunks, B * H), 128 threads: each warp scores keys (lanes over D), the
// four warps merge in shared memory, and the block writes (m, l, acc[0:D]) of its chunk to
// work[(b * H + h) * n_chunks + chunk][0 : D + 2]. D <= 256. Position bias (PB_ARGS): the
// query at position lengths[b] - 1, key s at s.
#define DEC_MAXD 256

template <typename T>
__device__ __forceinline__ void decode_attention_impl(
        const T* q, const T* k_cache, const T* v_cache, const int* kv_index, const int* lengths,
        const float* key_bias, float* work, long long q_b, long long q_h, int H, int Hkv, int D,
        int S_max, int chunk, float scale_log2, PB_ARGS) {
    __shared__ float qs[DEC_MAXD];
    __shared__ float wm[4], wl[4], wacc[4][DEC_MAXD];
    const int n_chunks = gridDim.x, ci = blockIdx.x, b = blockIdx.y / H, h = blockIdx.y % H;
    const int hk = h / (H / Hkv), plane = kv_index ? kv_index[b] : b;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int start = ci * chunk, stop = min(lengths[b], start + chunk);
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        qs[d] = to_float(q[b * q_b + h * q_h + d]) * scale_log2;
    __syncthreads();
    const long long row = (long long)Hkv * D;  // one cache position
    const T* kp = k_cache + (long long)plane * S_max * row + hk * D;
    const T* vp = v_cache + (long long)plane * S_max * row + hk * D;
    const float* bias = key_bias ? key_bias + (long long)plane * S_max : nullptr;
    const HeadBias pb = head_bias(h, PB_CALL);
    const int q_pos = lengths[b] - 1;
    float m = NEG_INF, l = 0.0f, acc[DEC_MAXD / 32];
#pragma unroll
    for (int c = 0; c < DEC_MAXD / 32; ++c) acc[c] = 0.0f;
    for (int s = start + warp; s < stop; s += 4) {
        float part = 0.0f;
        for (int d = lane; d < D; d += 32) part += qs[d] * to_float(kp[s * row + d]);
        float score = warp_sum(part);
        if (pb.on) score += pb(q_pos, s) * LOG2E;
        if (bias) score += bias[s] * LOG2E;
        if (score == NEG_INF) continue;  // a masked key (warp-uniform)
        const float m_new = fmaxf(m, score);
        const float alpha = exp2f(m - m_new), p = exp2f(score - m_new);
        l = l * alpha + p;
#pragma unroll
        for (int c = 0; c < DEC_MAXD / 32; ++c) {
            const int d = lane + 32 * c;
            acc[c] = acc[c] * alpha + (d < D ? p * to_float(vp[s * row + d]) : 0.0f);
        }
        m = m_new;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int c = 0; c < DEC_MAXD / 32; ++c) {
        const int d = lane + 32 * c;
        if (d < D) wacc[warp][d] = acc[c];
    }
    __syncthreads();
    const float M = fmaxf(fmaxf(wm[0], wm[1]), fmaxf(wm[2], wm[3]));
    float* out = work + ((long long)blockIdx.y * n_chunks + ci) * (D + 2);
    float scale[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) scale[w] = M == NEG_INF ? 0.0f : exp2f(wm[w] - M);
    if (threadIdx.x == 0) {
        out[0] = M;
        out[1] = wl[0] * scale[0] + wl[1] * scale[1] + wl[2] * scale[2] + wl[3] * scale[3];
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        out[2 + d] = wacc[0][d] * scale[0] + wacc[1][d] * scale[1] + wacc[2][d] * scale[2] +
                     wacc[3][d] * scale[3];
}
#define DECODE_ARGS(T)                                                                      \
    (const T* q, const T* k_cache, const T* v_cache, const int* kv_index, const int* lengths, \
     const float* key_bias, float* work, long long q_b, long long q_h, int H, int Hkv, int D, \
     int S_max, int chunk, float scale_log2, PB_ARGS)
INSTANTIATE(decode_attention, DECODE_ARGS,
            (q, k_cache, v_cache, kv_index, lengths, key_bias, work, q_b, q_h, H, Hkv, D, S_max,
             chunk, scale_log2, PB_CALL))

// out (B, H, D) contiguous = the merge of the n_chunks partial results of each (b, h) in work.
// Grid: B * H blocks; zeros for a sequence that saw no key.
template <typename T>
__device__ __forceinline__ void decode_combine_impl(const float* work, T* out, int n_chunks,
                                                    int D) {
    const float* w = work + (long long)blockIdx.x * n_chunks * (D + 2);
    float M = NEG_INF;
    for (int c = 0; c < n_chunks; ++c) M = fmaxf(M, w[c * (D + 2)]);
    float L = 0.0f;
    if (M != NEG_INF)
        for (int c = 0; c < n_chunks; ++c) L += w[c * (D + 2) + 1] * exp2f(w[c * (D + 2)] - M);
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.0f;
        if (M != NEG_INF)
            for (int c = 0; c < n_chunks; ++c)
                a += w[c * (D + 2) + 2 + d] * exp2f(w[c * (D + 2)] - M);
        out[(long long)blockIdx.x * D + d] = from_float<T>(a * inv);
    }
}
#define COMBINE_ARGS(T) (const float* work, T* out, int n_chunks, int D)
INSTANTIATE(decode_combine, COMBINE_ARGS, (work, out, n_chunks, D))
