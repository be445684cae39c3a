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

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
/* One clone per x86-64 micro-architecture level, chosen at load time through an ifunc. */
#define TF_HAVE_CLONES 1
#define TF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TF_CLONES
#endif

#define TF_ACT_NONE 0
#define TF_ACT_RELU 1
#define TF_ACT_GELU 2      /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
#define TF_ACT_GELU_TANH 3 /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
#define TF_ACT_SILU 4      /* x sigmoid(x), a.k.a. swish */

/* out (n) = layer_norm(x (+ res)) * gamma + beta; res may be NULL; out may alias x or res. */
void tf_layer_norm_row(const float *x, const float *res, const float *gamma, const float *beta,
                       float eps, int n, float *out);

/* Skinny matmul for few rows (decode steps): out (N, O; row stride ldo) = x (N, K) @ w (O, K)^T,
 * each row of w read from memory once and used for all N rows of x (which stay in cache), so the
 * product costs one pass over the weights: the memory-bandwidth bound of batch-1 decoding. */
void tf_gemm_small(const float *x, int N, int K, const float *w, int O, float *out, long ldo);

/* out (n) = x / sqrt(mean(x^2) + eps) * weight (RMSNorm, Zhang & Sennrich 2019); out may alias x. */
void tf_rms_norm_row(const float *x, const float *weight, float eps, int n, float *out);

/* Rotary position embedding (RoFormer, Su et al. 2021) of n_heads heads of D values each, laid
 * out with head stride `head_stride`, in place, for one position whose angles give cos/sin (D/2).
 * interleaved: pairs (2i, 2i+1) (llama2.c, GPT-J); else pairs (i, i + D/2) (HF rotate_half). */
void tf_rotary_row(float *x, int n_heads, long head_stride, int D, const float *cos_t,
                   const float *sin_t, int interleaved);

/* out (F) = act(gate_up[0:F]) * gate_up[F:2F], the gated linear units of Shazeer 2020 ("GLU
 * Variants Improve Transformer"): act TF_ACT_SILU SwiGLU, TF_ACT_GELU / TF_ACT_GELU_TANH GEGLU,
 * TF_ACT_RELU ReGLU, TF_ACT_NONE bilinear; the activation formulas of tf_bias_act_row.
 * out may alias gate_up. */
void tf_gated_act_row(const float *gate_up, int F, int act, float *out);

/* out (n) = softmax(x + mask); mask may be NULL; a row whose every entry is -inf gives zeros. */
void tf_softmax_row(const float *x, const float *mask, int n, float *out);

/* x (n) = act(x + bias), in place; bias may be NULL. */
void tf_bias_act_row(float *x, const float *bias, int n, int act);

/* out (n) = word + pos (+ type), then layer norm when gamma is not NULL. */
void tf_embed_row(const float *word, const float *pos, const float *type, const float *gamma,
                  const float *beta, float eps, int n, float *out);

/* Position bias added to attention scores inside the kernels (never an (H, T, S) tensor):
 * ALiBi (Press et al. 2022; HF BLOOM): slopes[h] * key position;
 * relative position buckets (T5, Raffel et al. 2020; MPNet): table[h * n_buckets + bucket(d)],
 * d = key position - query position; bidirectional: bucket(d) = (d > 0 ? half : 0) +
 * bucket_of[min(|d|, n_tab - 1)], else bucket(d) = bucket_of[min(max(-d, 0), n_tab - 1)]
 * (bucket_of precomputed with HF's float32 log formula, saturated at its last entry). */
typedef struct {
    const float *slopes; /* (H) or NULL */
    const float *table;  /* (H, n_buckets) or NULL */
    int n_buckets;
    const int *bucket_of; /* (n_tab) */
    int n_tab;
    int half;
    int bidirectional;
} tf_pos_bias;

/* s (rows, ld) += the position bias of head h for queries at q0, q0 + 1, ... against keys at
 * k0 .. k0 + cols - 1. */
void tf_position_bias_tile(const tf_pos_bias *pb, int h, float *s, long ld, int rows, int cols,
                           long q0, long k0);

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

/* Split-K decode attention for one (sequence, key/value head, chunk of keys): the G query heads
 * of the group (q: G rows of D, stride ldq) against n keys/values. Key j is at
 * k + planes[j] * kps + j * ldk (value j likewise with vps, ldv): planes (n) picks a cache plane
 * per key (a beam's cache rows reordered by an index table), or NULL for one plane (k, v).
 * kbias (n) additive or NULL; pb: the position bias of query heads h0.. h0 + G - 1 at query
 * position qpos against keys k0.., or NULL. Writes per query head the chunk's max m[g], sum
 * l[g] and unnormalised acc[g*D..] = sum_j exp(s_j - m) v_j; `scores` is scratch of G*n floats. */
void tf_decode_attention_chunk(const float *q, long ldq, int G, const float *k, long kps,
                               long ldk, const float *v, long vps, long ldv, const int *planes,
                               int n, int D, float scale, const float *kbias, float *scores,
                               float *m, float *l, float *acc, const tf_pos_bias *pb, int h0,
                               long qpos, long k0);

/* Combine n_split partial results (m, l: n_split; acc: n_split x D) of one query head into
 * out (D) = sum_c exp(m_c - M) acc_c / sum_c exp(m_c - M) l_c; zeros when no key was seen. */
void tf_decode_attention_combine(const float *m, const float *l, const float *acc, int n_split,
                                 int D, float *out);

/* Log-softmax statistics of one row x (n): m = max x and lse = log(sum exp(x - m)) (the sum
 * accumulated in double, rounded to float once), so log_softmax(x) = (x - m) - lse.
 * A row of -inf gives m = -inf, lse = -inf. */
void tf_log_softmax_stats(const float *x, int n, float *m_out, float *lse_out);

/* Beam search candidates of one row x (n) of logits: the k best of
 * score_j = ((x_j - m) - lse) + s in float32 (m, lse from tf_log_softmax_stats; rounded as
 * NumPy's float32 log_softmax plus the beam's running score s), written best first to vals (k)
 * and idx (k) = offset + j, equal scores in ascending j. Returns min(k, n), the entries written. */
int tf_beam_topk_row(const float *x, int n, float s, long offset, int k, float *vals, long *idx);

/* Merge n candidates (v, i), given in ascending i among equal v, into the sorted top-k list
 * vals/idx of *count entries (best first, equal values in ascending i). */
void tf_topk_merge(const float *v, const long *i, int n, int k, float *vals, long *idx,
                   int *count);

#endif
