# nogil C-level declarations of the row kernels in kernels.c (contracts in kernels.h).
cdef extern from "kernels.h" nogil:
    int TF_ACT_NONE, TF_ACT_RELU, TF_ACT_GELU, TF_ACT_GELU_TANH, TF_ACT_SILU
    ctypedef struct tf_pos_bias:
        const float *slopes
        const float *table
        int n_buckets
        const int *bucket_of
        int n_tab
        int half
        int bidirectional
    void tf_position_bias_tile(const tf_pos_bias *pb, int h, float *s, long ld, int rows,
                               int cols, long q0, long k0)
    void tf_layer_norm_row(const float *x, const float *res, const float *gamma,
                           const float *beta, float eps, int n, float *out)
    void tf_gemm_small(const float *x, int N, int K, const float *w, int O, float *out, long ldo)
    void tf_rms_norm_row(const float *x, const float *weight, float eps, int n, float *out)
    void tf_rotary_row(float *x, int n_heads, long head_stride, int D, const float *cos_t,
                       const float *sin_t, int interleaved)
    void tf_gated_act_row(const float *gate_up, int F, int act, float *out)
    void tf_decode_attention_chunk(const float *q, long ldq, int G, const float *k, long kps,
                                   long ldk, const float *v, long vps, long ldv,
                                   const int *planes, int n, int D, float scale,
                                   const float *kbias, float *scores, float *m, float *l,
                                   float *acc, const tf_pos_bias *pb, int h0, long qpos,
                                   long k0)
    void tf_decode_attention_combine(const float *m, const float *l, const float *acc,
                                     int n_split, int D, float *out)
    void tf_softmax_row(const float *x, const float *mask, int n, float *out)
    void tf_bias_act_row(float *x, const float *bias, int n, int act)
    void tf_embed_row(const float *word, const float *pos, const float *type, const float *gamma,
                      const float *beta, float eps, int n, float *out)
    int tf_online_softmax_tile(float *s, int ld, int rows, int cols, int causal, int diag,
                               const float *kbias, float *m, float *l, float *acc, int D)
    void tf_attention_finalize(const float *acc, const float *l, int rows, int D, float *out,
                               long ldo)
    void tf_log_softmax_stats(const float *x, int n, float *m_out, float *lse_out)
    int tf_beam_topk_row(const float *x, int n, float s, long offset, int k, float *vals,
                         long *idx)
    void tf_topk_merge(const float *v, const long *i, int n, int k, float *vals, long *idx,
                       int *count)
