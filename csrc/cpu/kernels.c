/* Row kernels of the CPU backend; see kernels.h for the contract of each function. */
#include <math.h>
#include <string.h>
#include "kernels.h"

#ifdef TF_HAVE_CLONES
/* glibc's libmvec holds vector versions of these; declaring them SIMD lets GCC call them from
 * vectorised loops without -ffinite-math-only (we rely on -inf for masks). */
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float erff(float);
__attribute__((simd("notinbranch"))) float tanhf(float);
#endif

TF_CLONES
void tf_layer_norm_row(const float *x, const float *res, const float *gamma, const float *beta,
                       float eps, int n, float *out) {
    const float *src = x;
    if (res) {
        for (int i = 0; i < n; i++) out[i] = x[i] + res[i];
        src = out;
    }
    float sum = 0.f;
    for (int i = 0; i < n; i++) sum += src[i];
    const float mean = sum / (float)n;
    float var = 0.f;
    for (int i = 0; i < n; i++) {
        const float d = src[i] - mean;
        var += d * d;
    }
    const float rstd = 1.f / sqrtf(var / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = (src[i] - mean) * rstd * gamma[i] + beta[i];
}

/* Dot products of 4 weight rows with 4 rows of x: out[r*ldo + j] = x_r . w_j. The 16
 * accumulators vectorise along k; each loaded vector feeds 4 FMAs. */
static inline void gemm_4x4(const float *x, int K, const float *w, float *out, long ldo) {
    const float *x0 = x, *x1 = x + K, *x2 = x + 2L * K, *x3 = x + 3L * K;
    const float *w0 = w, *w1 = w + K, *w2 = w + 2L * K, *w3 = w + 3L * K;
    float a00 = 0.f, a01 = 0.f, a02 = 0.f, a03 = 0.f, a10 = 0.f, a11 = 0.f, a12 = 0.f, a13 = 0.f;
    float a20 = 0.f, a21 = 0.f, a22 = 0.f, a23 = 0.f, a30 = 0.f, a31 = 0.f, a32 = 0.f, a33 = 0.f;
    for (int k = 0; k < K; k++) {
        const float u0 = w0[k], u1 = w1[k], u2 = w2[k], u3 = w3[k];
        const float v0 = x0[k], v1 = x1[k], v2 = x2[k], v3 = x3[k];
        a00 += v0 * u0; a01 += v0 * u1; a02 += v0 * u2; a03 += v0 * u3;
        a10 += v1 * u0; a11 += v1 * u1; a12 += v1 * u2; a13 += v1 * u3;
        a20 += v2 * u0; a21 += v2 * u1; a22 += v2 * u2; a23 += v2 * u3;
        a30 += v3 * u0; a31 += v3 * u1; a32 += v3 * u2; a33 += v3 * u3;
    }
    out[0] = a00; out[1] = a01; out[2] = a02; out[3] = a03;
    out += ldo;
    out[0] = a10; out[1] = a11; out[2] = a12; out[3] = a13;
    out += ldo;
    out[0] = a20; out[1] = a21; out[2] = a22; out[3] = a23;
    out += ldo;
    out[0] = a30; out[1] = a31; out[2] = a32; out[3] = a33;
}

/* The same for one row of x and n_w (1..4) weight rows. */
static inline void gemm_1x4(const float *x, int K, const float *w, int n_w, float *out) {
    const float *w0 = w, *w1 = w + (n_w > 1 ? K : 0), *w2 = w + (n_w > 2 ? 2L * K : 0),
                *w3 = w + (n_w > 3 ? 3L * K : 0);
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    for (int k = 0; k < K; k++) {
        const float v = x[k];
        a0 += v * w0[k];
        a1 += v * w1[k];
        a2 += v * w2[k];
        a3 += v * w3[k];
    }
    const float a[4] = {a0, a1, a2, a3};
    for (int j = 0; j < n_w; j++) out[j] = a[j];
}

TF_CLONES
void tf_gemm_small(const float *x, int N, int K, const float *w, int O, float *out, long ldo) {
    for (int o = 0; o < O; o += 4) { /* 4 weight rows stay in L1 while every x row passes */
        const float *wo = w + (long)o * K;
        const int n_w = O - o < 4 ? O - o : 4;
        int n = 0;
        if (n_w == 4)
            for (; n + 4 <= N; n += 4) gemm_4x4(x + (long)n * K, K, wo, out + n * ldo + o, ldo);
        for (; n < N; n++) gemm_1x4(x + (long)n * K, K, wo, n_w, out + n * ldo + o);
    }
}

TF_CLONES
void tf_rms_norm_row(const float *x, const float *weight, float eps, int n, float *out) {
    float ss = 0.f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    const float r = 1.f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * r * weight[i];
}

TF_CLONES
void tf_rotary_row(float *x, int n_heads, long head_stride, int D, const float *cos_t,
                   const float *sin_t, int interleaved) {
    const int half = D / 2;
    for (int h = 0; h < n_heads; h++) {
        float *p = x + h * head_stride;
        if (interleaved) {
            for (int i = 0; i < half; i++) {
                const float a = p[2 * i], b = p[2 * i + 1];
                p[2 * i] = a * cos_t[i] - b * sin_t[i];
                p[2 * i + 1] = a * sin_t[i] + b * cos_t[i];
            }
        } else {
            for (int i = 0; i < half; i++) {
                const float a = p[i], b = p[i + half];
                p[i] = a * cos_t[i] - b * sin_t[i];
                p[i + half] = b * cos_t[i] + a * sin_t[i];
            }
        }
    }
}

TF_CLONES
void tf_gated_act_row(const float *gate_up, int F, int act, float *out) {
    const float *up = gate_up + F;
    switch (act) { /* one plain loop per activation, so that each vectorises */
    case TF_ACT_SILU:
        for (int i = 0; i < F; i++) {
            const float g = gate_up[i];
            out[i] = g / (1.f + expf(-g)) * up[i];
        }
        break;
    case TF_ACT_GELU:
        for (int i = 0; i < F; i++) {
            const float g = gate_up[i];
            out[i] = 0.5f * g * (1.f + erff(g * 0.70710678118654752f)) * up[i];
        }
        break;
    case TF_ACT_GELU_TANH:
        for (int i = 0; i < F; i++) {
            const float g = gate_up[i];
            out[i] = 0.5f * g * (1.f + tanhf(0.79788456080286536f * (g + 0.044715f * g * g * g)))
                     * up[i];
        }
        break;
    case TF_ACT_RELU:
        for (int i = 0; i < F; i++) {
            const float g = gate_up[i];
            out[i] = (g > 0.f ? g : 0.f) * up[i];
        }
        break;
    default:
        for (int i = 0; i < F; i++) out[i] = gate_up[i] * up[i];
        break;
    }
}

/* 1 when some x[i] is NaN (only called on the rare rows whose max is -inf, so NaN scores give
 * NaN outputs, as PyTorch, instead of the zeros of a fully masked row). */
static inline int any_nan(const float *x, int n) {
    for (int i = 0; i < n; i++)
        if (x[i] != x[i]) return 1;
    return 0;
}

TF_CLONES
void tf_softmax_row(const float *x, const float *mask, int n, float *out) {
    float mx = -INFINITY;
    if (mask) {
        /* a removed entry (-inf) stays removed whatever its score, even NaN */
        for (int i = 0; i < n; i++) out[i] = mask[i] == -INFINITY ? -INFINITY : x[i] + mask[i];
    } else if (out != x) {
        memcpy(out, x, (size_t)n * sizeof(float));
    }
    for (int i = 0; i < n; i++) mx = out[i] > mx ? out[i] : mx;
    if (mx == -INFINITY) { /* every entry masked: zeros, not NaN; a NaN row stays NaN */
        const float fill = any_nan(out, n) ? NAN : 0.f;
        for (int i = 0; i < n; i++) out[i] = fill;
        return;
    }
    float sum = 0.f;
    for (int i = 0; i < n; i++) {
        const float e = expf(out[i] - mx);
        out[i] = e;
        sum += e;
    }
    const float inv = 1.f / sum;
    for (int i = 0; i < n; i++) out[i] *= inv;
}

TF_CLONES
void tf_bias_act_row(float *x, const float *bias, int n, int act) {
    if (bias)
        for (int i = 0; i < n; i++) x[i] += bias[i];
    switch (act) {
    case TF_ACT_RELU:
        for (int i = 0; i < n; i++) x[i] = x[i] > 0.f ? x[i] : 0.f;
        break;
    case TF_ACT_GELU:
        for (int i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.f + erff(x[i] * 0.70710678118654752f));
        break;
    case TF_ACT_GELU_TANH:
        for (int i = 0; i < n; i++) {
            const float v = x[i];
            x[i] = 0.5f * v * (1.f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
        break;
    case TF_ACT_SILU:
        for (int i = 0; i < n; i++) x[i] = x[i] / (1.f + expf(-x[i]));
        break;
    default:
        break;
    }
}

TF_CLONES
void tf_embed_row(const float *word, const float *pos, const float *type, const float *gamma,
                  const float *beta, float eps, int n, float *out) {
    if (type)
        for (int i = 0; i < n; i++) out[i] = word[i] + pos[i] + type[i];
    else
        for (int i = 0; i < n; i++) out[i] = word[i] + pos[i];
    if (gamma) tf_layer_norm_row(out, NULL, gamma, beta, eps, n, out);
}

void tf_position_bias_tile(const tf_pos_bias *pb, int h, float *s, long ld, int rows, int cols,
                           long q0, long k0) {
    if (pb->slopes) {
        const float slope = pb->slopes[h];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) s[i * ld + j] += slope * (float)(k0 + j);
    }
    if (pb->table) {
        const float *t = pb->table + (long)h * pb->n_buckets;
        const long last = pb->n_tab - 1;
        for (int i = 0; i < rows; i++) {
            const long q = q0 + i;
            for (int j = 0; j < cols; j++) {
                const long d = k0 + j - q;
                long n = pb->bidirectional ? (d < 0 ? -d : d) : (d < 0 ? -d : 0);
                n = n < last ? n : last;
                s[i * ld + j] += t[pb->bucket_of[n] + (pb->bidirectional && d > 0 ? pb->half : 0)];
            }
        }
    }
}

TF_CLONES
int tf_online_softmax_tile(float *s, int ld, int rows, int cols, int causal, int diag,
                           const float *kbias, float *m, float *l, float *acc, int D) {
    int live = 0;
    for (int i = 0; i < rows; i++) {
        float *row = s + (long)i * ld;
        int c = cols;
        if (causal) {
            c = diag + i + 1;
            c = c < 0 ? 0 : (c > cols ? cols : c);
        }
        if (kbias)
            for (int j = 0; j < c; j++)
                row[j] = kbias[j] == -INFINITY ? -INFINITY : row[j] + kbias[j];
        float mx = -INFINITY;
        for (int j = 0; j < c; j++) mx = row[j] > mx ? row[j] : mx;
        if (mx == -INFINITY) { /* this row sees no key in this tile */
            if (any_nan(row, c)) { /* NaN scores: the row's output is NaN, never zeros */
                float *a = acc + (long)i * D;
                for (int d = 0; d < D; d++) a[d] = NAN;
                l[i] = NAN;
            }
            memset(row, 0, (size_t)cols * sizeof(float));
            continue;
        }
        live++;
        const float m_new = mx > m[i] ? mx : m[i];
        const float corr = expf(m[i] - m_new); /* 0 on the first tile, where m = -inf */
        float sum = 0.f;
        for (int j = 0; j < c; j++) {
            const float e = expf(row[j] - m_new);
            row[j] = e;
            sum += e;
        }
        for (int j = c; j < cols; j++) row[j] = 0.f;
        l[i] = l[i] * corr + sum;
        m[i] = m_new;
        if (corr != 1.f) {
            float *a = acc + (long)i * D;
            for (int d = 0; d < D; d++) a[d] *= corr;
        }
    }
    return live;
}

TF_CLONES
void tf_attention_finalize(const float *acc, const float *l, int rows, int D, float *out, long ldo) {
    for (int i = 0; i < rows; i++) {
        float *o = out + (long)i * ldo;
        const float *a = acc + (long)i * D;
        if (l[i] != 0.f) { /* l is NaN after NaN or +inf scores: NaN out */
            const float inv = 1.f / l[i];
            for (int d = 0; d < D; d++) o[d] = a[d] * inv;
        } else {
            for (int d = 0; d < D; d++) o[d] = 0.f;
        }
    }
}

TF_CLONES
void tf_decode_attention_chunk(const float *q, long ldq, int G, const float *k, long kps,
                               long ldk, const float *v, long vps, long ldv, const int *planes,
                               int n, int D, float scale, const float *kbias, float *scores,
                               float *m, float *l, float *acc, const tf_pos_bias *pb, int h0,
                               long qpos, long k0) {
    for (int g = 0; g < G; g++) {
        const float *qg = q + g * ldq;
        float *s = scores + (long)g * n;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            const float *kj = k + (planes ? planes[j] * kps : 0) + j * ldk;
            float dot = 0.f;
            for (int d = 0; d < D; d++) dot += qg[d] * kj[d];
            s[j] = dot * scale;
        }
        if (pb) tf_position_bias_tile(pb, h0 + g, s, n, 1, n, qpos, k0);
        for (int j = 0; j < n; j++) {
            if (kbias) s[j] = kbias[j] == -INFINITY ? -INFINITY : s[j] + kbias[j];
            mx = s[j] > mx ? s[j] : mx;
        }
        float *a = acc + (long)g * D;
        for (int d = 0; d < D; d++) a[d] = 0.f;
        m[g] = mx;
        l[g] = 0.f;
        if (mx == -INFINITY) { /* every key of the chunk masked, or NaN scores */
            if (any_nan(s, n)) {
                m[g] = l[g] = NAN;
                for (int d = 0; d < D; d++) a[d] = NAN;
            }
            continue;
        }
        float sum = 0.f;
        for (int j = 0; j < n; j++) {
            const float e = expf(s[j] - mx);
            s[j] = e;
            sum += e;
        }
        l[g] = sum;
        for (int j = 0; j < n; j++) {
            const float *vj = v + (planes ? planes[j] * vps : 0) + j * ldv;
            const float p = s[j];
            for (int d = 0; d < D; d++) a[d] += p * vj[d];
        }
    }
}

TF_CLONES
void tf_decode_attention_combine(const float *m, const float *l, const float *acc, int n_split,
                                 int D, float *out) {
    float M = -INFINITY;
    int nan = 0;
    for (int c = 0; c < n_split; c++) {
        M = m[c] > M ? m[c] : M;
        nan |= m[c] != m[c];
    }
    for (int d = 0; d < D; d++) out[d] = nan ? NAN : 0.f; /* NaN scores: NaN, never zeros */
    if (nan || M == -INFINITY) return;
    float L = 0.f;
    for (int c = 0; c < n_split; c++) {
        if (m[c] == -INFINITY) continue;
        const float w = expf(m[c] - M);
        L += w * l[c];
        for (int d = 0; d < D; d++) out[d] += w * acc[(long)c * D + d];
    }
    const float inv = 1.f / L;
    for (int d = 0; d < D; d++) out[d] *= inv;
}

/* max of x (n), in 16 lanes (a plain `mx = x > mx ? x : mx` reduction does not vectorise without
 * -ffinite-math-only). */
static inline float row_max(const float *x, int n) {
    float lane[16];
    int i = 0;
    for (int t = 0; t < 16; t++) lane[t] = -INFINITY;
    for (; i + 16 <= n; i += 16)
        for (int t = 0; t < 16; t++) lane[t] = x[i + t] > lane[t] ? x[i + t] : lane[t];
    float mx = -INFINITY;
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int t = 0; t < 16; t++) mx = lane[t] > mx ? lane[t] : mx;
    return mx;
}

TF_CLONES
void tf_log_softmax_stats(const float *x, int n, float *m_out, float *lse_out) {
    const float mx = row_max(x, n);
    double sum = 0.0;
    if (mx != -INFINITY) {
        /* float lanes in blocks (vectorised expf), each block's sum added in double */
        for (int i0 = 0; i0 < n; i0 += 256) {
            const int i1 = i0 + 256 < n ? i0 + 256 : n;
            float s = 0.f;
            for (int i = i0; i < i1; i++) s += expf(x[i] - mx);
            sum += s;
        }
    }
    *m_out = mx;
    *lse_out = logf((float)sum);
}

/* The scores below must be rounded exactly as NumPy's float32 `((x - m) - lse) + s`: no
 * reassociation here, whatever the global flags say. */
#pragma GCC push_options
#pragma GCC optimize("no-associative-math")

/* Insert (v, i) into the sorted list vals/idx of *count (< k, or full and v beats the last)
 * entries: after every entry >= v (equal values keep the lower, earlier index first). */
static inline void topk_insert(float v, long i, int k, float *vals, long *idx, int *count) {
    int j = *count < k ? *count : k - 1;
    while (j > 0 && vals[j - 1] < v) {
        vals[j] = vals[j - 1];
        idx[j] = idx[j - 1];
        j--;
    }
    vals[j] = v;
    idx[j] = i;
    if (*count < k) (*count)++;
}

#define TF_TOPK_BLOCK 32

TF_CLONES
int tf_beam_topk_row(const float *x, int n, float s, long offset, int k, float *vals, long *idx) {
    float m, lse;
    tf_log_softmax_stats(x, n, &m, &lse);
    int count = 0, j0 = 0;
    for (; j0 < n && count < k; j0++) /* fill the list with the first k entries */
        topk_insert(((x[j0] - m) - lse) + s, offset + j0, k, vals, idx, &count);
    if (count < k) return count;
    float buf[TF_TOPK_BLOCK];
    for (; j0 < n; j0 += TF_TOPK_BLOCK) {
        const int nb = n - j0 < TF_TOPK_BLOCK ? n - j0 : TF_TOPK_BLOCK;
        const float thr = vals[k - 1];
        int hit = 0;
        for (int t = 0; t < nb; t++) {
            buf[t] = ((x[j0 + t] - m) - lse) + s;
            hit |= buf[t] > thr;
        }
        if (!hit) continue;
        for (int t = 0; t < nb; t++)
            if (buf[t] > vals[k - 1]) topk_insert(buf[t], offset + j0 + t, k, vals, idx, &count);
    }
    return count;
}

void tf_topk_merge(const float *v, const long *i, int n, int k, float *vals, long *idx,
                   int *count) {
    for (int j = 0; j < n; j++)
        if (*count < k || v[j] > vals[k - 1]) topk_insert(v[j], i[j], k, vals, idx, count);
}

#pragma GCC pop_options
