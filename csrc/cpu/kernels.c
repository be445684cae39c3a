/* Row kernels of the CPU backend; see kernels.h for the contract of each function. */
#include <math.h>
#include <string.h>
#include "kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
/* One clone per x86-64 micro-architecture level, chosen at load time through an ifunc. */
#define TF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
/* glibc's libmvec holds vector versions of these; declaring them SIMD lets GCC call them from
 * vectorised loops without -ffinite-math-only (we rely on -inf for masks). */
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float erff(float);
__attribute__((simd("notinbranch"))) float tanhf(float);
#else
#define TF_CLONES
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

TF_CLONES
void tf_softmax_row(const float *x, const float *mask, int n, float *out) {
    float mx = -INFINITY;
    if (mask) {
        for (int i = 0; i < n; i++) out[i] = x[i] + mask[i];
    } else if (out != x) {
        memcpy(out, x, (size_t)n * sizeof(float));
    }
    for (int i = 0; i < n; i++) mx = out[i] > mx ? out[i] : mx;
    if (mx == -INFINITY) { /* every entry masked: zeros, not NaN */
        memset(out, 0, (size_t)n * sizeof(float));
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
            for (int j = 0; j < c; j++) row[j] += kbias[j];
        float mx = -INFINITY;
        for (int j = 0; j < c; j++) mx = row[j] > mx ? row[j] : mx;
        if (mx == -INFINITY) { /* this row sees no key in this tile */
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
        if (l[i] > 0.f) {
            const float inv = 1.f / l[i];
            for (int d = 0; d < D; d++) o[d] = a[d] * inv;
        } else {
            for (int d = 0; d < D; d++) o[d] = 0.f;
        }
    }
}
