// Row kernels of the CUDA backend (transformer/ops/cuda.py): bias + activation, softmax,
// layer_norm (+ residual), rms_norm, gated activations (SwiGLU, GEGLU, ReGLU), embedding gather
// (+ LayerNorm), rotary, residual add and bfloat16 casts. Reductions: one block per row, warp
// shuffles then shared memory, fp32 accumulation; rows are staged once in shared memory as float
// (C * 4 bytes of dynamic shared memory), read from global memory with 16-byte vector loads where
// the row is aligned.
// Formulas as the float64 references in transformer/ops/reference.py.
#include "common.cuh"

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_GELU = 2, ACT_GELU_TANH = 3, ACT_SILU = 4 };

__device__ __forceinline__ float activate(float v, int act) {
    switch (act) {
        case ACT_RELU: return fmaxf(v, 0.0f);
        case ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
        case ACT_GELU_TANH:
            return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        case ACT_SILU: return v / (1.0f + expf(-v));
        default: return v;
    }
}

// dst[0:C] (shared, float) = src[0:C]; 16-byte loads when src is 16-byte aligned and C fits.
template <typename T>
__device__ __forceinline__ void load_row(const T* __restrict__ src, float* dst, int C) {
    const int N = 16 / sizeof(T);
    if (C % N == 0 && (reinterpret_cast<unsigned long long>(src) & 15) == 0) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        for (int i = threadIdx.x; i < C / N; i += blockDim.x) {
            uint4 u = s4[i];
            const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
            for (int j = 0; j < N; ++j) dst[i * N + j] = to_float(e[j]);
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) dst[i] = to_float(src[i]);
    }
}

// dst[0:C] = src[0:C] (shared float -> T); 16-byte stores where aligned.
template <typename T>
__device__ __forceinline__ void store_row(const float* src, T* __restrict__ dst, int C) {
    const int N = 16 / sizeof(T);
    if (C % N == 0 && (reinterpret_cast<unsigned long long>(dst) & 15) == 0) {
        uint4* d4 = reinterpret_cast<uint4*>(dst);
        for (int i = threadIdx.x; i < C / N; i += blockDim.x) {
            uint4 u;
            T* e = reinterpret_cast<T*>(&u);
#pragma unroll
            for (int j = 0; j < N; ++j) e[j] = from_float<T>(src[i * N + j]);
            d4[i] = u;
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) dst[i] = from_float<T>(src[i]);
    }
}

// x (n / O, O) = act(x + bias) in place; bias (O,) or null. Grid-stride over the n elements.
template <typename T>
__device__ __forceinline__ void bias_act_impl(T* x, const T* bias, long long n, int O, int act) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = to_float(x[i]);
        if (bias) v += to_float(bias[i % O]);
        x[i] = from_float<T>(activate(v, act));
    }
}
#define BIAS_ACT_ARGS(T) (T* x, const T* bias, long long n, int O, int act)
INSTANTIATE(bias_act, BIAS_ACT_ARGS, (x, bias, n, O, act))

// out = a + b elementwise (n elements): the residual add of pre-LN stacks.
template <typename T>
__device__ __forceinline__ void add_impl(const T* a, const T* b, T* out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}
#define ADD_ARGS(T) (const T* a, const T* b, T* out, long long n)
INSTANTIATE(add, ADD_ARGS, (a, b, out, n))

// out (N, S) = softmax(x + mask) over each row; mask (N, S) float additive or null. A row whose
// every entry is -inf gives zeros. Grid: N blocks; shared memory S floats.
template <typename T>
__device__ __forceinline__ void softmax_impl(const T* x, const float* mask, T* out, int S) {
    extern __shared__ float row[];
    const long long r = blockIdx.x;
    load_row(x + r * S, row, S);
    __syncthreads();
    float m = NEG_INF;
    for (int i = threadIdx.x; i < S; i += blockDim.x) {
        if (mask) row[i] += mask[r * S + i];
        m = fmaxf(m, row[i]);
    }
    m = block_reduce(m, true);
    float s = 0.0f;
    for (int i = threadIdx.x; i < S; i += blockDim.x) {
        const float e = m == NEG_INF ? 0.0f : expf(row[i] - m);
        row[i] = e;
        s += e;
    }
    s = block_reduce(s, false);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (int i = threadIdx.x; i < S; i += blockDim.x) row[i] *= inv;
    __syncthreads();
    store_row(row, out + r * S, S);
}
#define SOFTMAX_ARGS(T) (const T* x, const float* mask, T* out, int S)
INSTANTIATE(softmax, SOFTMAX_ARGS, (x, mask, out, S))

// row (shared, C floats) = LayerNorm(row) * weight + bias, or RMSNorm(row) * weight when
// bias is null and rms; two-pass mean / variance from shared memory.
template <typename T>
__device__ __forceinline__ void normalize_row(float* row, const T* weight, const T* bias,
                                              float eps, int C, bool rms) {
    float mean = 0.0f;
    if (!rms) {
        float s = 0.0f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) s += row[i];
        mean = block_reduce(s, false) / C;
    }
    float q = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const float d = row[i] - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(block_reduce(q, false) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float v = (row[i] - mean) * rstd * to_float(weight[i]);
        if (bias) v += to_float(bias[i]);
        row[i] = v;
    }
    __syncthreads();
}

// out (N, C) = LayerNorm(x + residual) * weight + bias; residual (N, C) or null. Grid: N blocks.
template <typename T>
__device__ __forceinline__ void layer_norm_impl(const T* x, const T* residual, const T* weight,
                                                const T* bias, float eps, T* out, int C) {
    extern __shared__ float row[];
    const long long r = blockIdx.x;
    load_row(x + r * C, row, C);
    __syncthreads();
    if (residual) {
        for (int i = threadIdx.x; i < C; i += blockDim.x) row[i] += to_float(residual[r * C + i]);
        __syncthreads();
    }
    normalize_row(row, weight, bias, eps, C, false);
    store_row(row, out + r * C, C);
}
#define LAYER_NORM_ARGS(T) \
    (const T* x, const T* residual, const T* weight, const T* bias, float eps, T* out, int C)
INSTANTIATE(layer_norm, LAYER_NORM_ARGS, (x, residual, weight, bias, eps, out, C))

// out (N, C) = x / sqrt(mean(x^2) + eps) * weight. Grid: N blocks.
template <typename T>
__device__ __forceinline__ void rms_norm_impl(const T* x, const T* weight, float eps, T* out,
                                              int C) {
    extern __shared__ float row[];
    const long long r = blockIdx.x;
    load_row(x + r * C, row, C);
    __syncthreads();
    normalize_row(row, weight, (const T*)nullptr, eps, C, true);
    store_row(row, out + r * C, C);
}
#define RMS_NORM_ARGS(T) (const T* x, const T* weight, float eps, T* out, int C)
INSTANTIATE(rms_norm, RMS_NORM_ARGS, (x, weight, eps, out, C))

// out (N, F) = act(gate_up[:, :F]) * gate_up[:, F:], the gated linear units of Shazeer 2020
// (act ACT_SILU: SwiGLU; ACT_GELU / ACT_GELU_TANH: GEGLU; ACT_RELU: ReGLU; ACT_NONE: bilinear),
// in float32 and rounded to T once; grid-stride over N * F.
template <typename T>
__device__ __forceinline__ void swiglu_impl(const T* gate_up, T* out, long long n, int F,
                                            int act) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / F, c = i % F;
        const float g = to_float(gate_up[r * 2 * F + c]), u = to_float(gate_up[r * 2 * F + F + c]);
        out[i] = from_float<T>(activate(g, act) * u);
    }
}
#define SWIGLU_ARGS(T) (const T* gate_up, T* out, long long n, int F, int act)
INSTANTIATE(swiglu, SWIGLU_ARGS, (gate_up, out, n, F, act))

// out (N, C) = LayerNorm(word[ids] + position[pos] + token_type[types]); token_type / types and
// weight / bias may be null (no table, no norm). Indices were checked in the op front.
template <typename T>
__device__ __forceinline__ void embedding_impl(const long long* ids, const long long* pos,
                                               const long long* types, const T* word,
                                               const T* position, const T* token_type,
                                               const T* weight, const T* bias, float eps, T* out,
                                               int C) {
    extern __shared__ float row[];
    const long long r = blockIdx.x;
    const T* w = word + ids[r] * C;
    const T* p = position + pos[r] * C;
    const T* t = types ? token_type + types[r] * C : nullptr;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float v = to_float(w[i]) + to_float(p[i]);
        if (t) v += to_float(t[i]);
        row[i] = v;
    }
    __syncthreads();
    if (weight) normalize_row(row, weight, bias, eps, C, false);
    store_row(row, out + r * C, C);
}
#define EMBEDDING_ARGS(T)                                                                      \
    (const long long* ids, const long long* pos, const long long* types, const T* word,        \
     const T* position, const T* token_type, const T* weight, const T* bias, float eps, T* out, \
     int C)
INSTANTIATE(embedding, EMBEDDING_ARGS,
            (ids, pos, types, word, position, token_type, weight, bias, eps, out, C))

// Rotate the first n_heads heads (D values each) of every row of x (N, W) in place by the
// angles of positions (N,): cos, sin (P, D/2) float. interleaved: pairs (2j, 2j+1) (llama2.c);
// else (j, j + D/2) (HF rotate_half). RoFormer (Su et al. 2021) eq. 34.
template <typename T>
__device__ __forceinline__ void rotary_impl(T* x, const long long* positions, const float* cos,
                                            const float* sin, long long N, int W, int n_heads,
                                            int D, int interleaved) {
    const int half = D / 2;
    const long long n = N * n_heads * half;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / (n_heads * half);
        const int rem = (int)(i % (n_heads * half)), h = rem / half, j = rem % half;
        const long long p = positions[r];
        const float c = cos[p * half + j], s = sin[p * half + j];
        const long long i0 = r * W + h * D + (interleaved ? 2 * j : j);
        const long long i1 = i0 + (interleaved ? 1 : half);
        const float x0 = to_float(x[i0]), x1 = to_float(x[i1]);
        x[i0] = from_float<T>(x0 * c - x1 * s);
        x[i1] = from_float<T>(x0 * s + x1 * c);
    }
}
#define ROTARY_ARGS(T)                                                                      \
    (T* x, const long long* positions, const float* cos, const float* sin, long long N, int W, \
     int n_heads, int D, int interleaved)
INSTANTIATE(rotary, ROTARY_ARGS, (x, positions, cos, sin, N, W, n_heads, D, interleaved))

// bfloat16 <-> float32 casts (CuPy has no bfloat16 dtype: bf16 arrays are uint16 bit patterns).
extern "C" __global__ void cast_bf16_f32(const bf16* x, float* out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = to_float(x[i]);
}
extern "C" __global__ void cast_f32_bf16(const float* x, bf16* out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = from_float<bf16>(x[i]);
}
