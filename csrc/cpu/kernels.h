/* Row kernels of the CPU backend: plain C, one row per call, no threading.
 *
 * The OpenMP loops over rows live in _cpu.pyx; these functions hold the per-row math so that GCC
 * can vectorise them.  On x86-64 with GCC and glibc each function is compiled three times
 * (target_clones: x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA, baseline SSE2) and the dynamic loader
 * picks the best clone for the CPU the process runs on, so one binary is fast on a new machine and
 * still runs on any x86-64.  expf/erff/tanhf vectorise through glibc's libmvec.
 *
 * Shapes in comments use the letters of DESIGN.md: C model width, S keys, D head_dim.
 */
#ifndef TRANSFORMER_CPU_KERNELS_H
#define TRANSFORMER_CPU_KERNELS_H

#define TF_ACT_NONE 0
#define TF_ACT_RELU 1
#define TF_ACT_GELU 2      /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
#define TF_ACT_GELU_TANH 3 /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */

/* out (n) = layer_norm(x (+ res)) * gamma + beta; res may be NULL; out may alias x or res. */
void tf_layer_norm_row(const float *x, const float *res, const float *gamma, const float *beta,
                       float eps, int n, float *out);

/* out (n) = softmax(x + mask); mask may be NULL; a row whose every entry is -inf gives zeros. */
void tf_softmax_row(const float *x, const float *mask, int n, float *out);

/* x (n) = act(x + bias), in place; bias may be NULL. */
void tf_bias_act_row(float *x, const float *bias, int n, int act);

/* out (n) = word + pos (+ type), then layer norm when gamma is not NULL. */
void tf_embed_row(const float *word, const float *pos, const float *type, const float *gamma,
                  const float *beta, float eps, int n, float *out);

/* One online-softmax step of tiled attention (FlashAttention-2, Dao 2023, Algorithm 1).
 * s:   (rows, ld) scores of a query tile against a key tile, already scaled; overwritten with
 *      p = exp(s - m_new), zero where masked.
 * cols: keys in the tile; causal: row i sees only keys j <= diag + i.
 * kbias: (cols) additive key mask or NULL (-inf drops the key).
 * m, l: (rows) running max and running sum; acc: (rows, D) output accumulator, rescaled here.
 * Returns the number of rows that saw at least one key (0: the P V product can be skipped). */
int tf_online_softmax_tile(float *s, int ld, int rows, int cols, int causal, int diag,
                           const float *kbias, float *m, float *l, float *acc, int D);

/* out row i (D) = acc row i / l[i], or zeros where l[i] == 0 (every key masked). */
void tf_attention_finalize(const float *acc, const float *l, int rows, int D, float *out, long ldo);

#endif
