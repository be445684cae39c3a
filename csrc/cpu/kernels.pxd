# nogil C-level declarations of the row kernels in kernels.c (contracts in kernels.h).
cdef extern from "kernels.h" nogil:
    int TF_ACT_NONE, TF_ACT_RELU, TF_ACT_GELU, TF_ACT_GELU_TANH
    void tf_layer_norm_row(const float *x, const float *res, const float *gamma,
                           const float *beta, float eps, int n, float *out)
    void tf_softmax_row(const float *x, const float *mask, int n, float *out)
    void tf_bias_act_row(float *x, const float *bias, int n, int act)
    void tf_embed_row(const float *word, const float *pos, const float *type, const float *gamma,
                      const float *beta, float eps, int n, float *out)
    int tf_online_softmax_tile(float *s, int ld, int rows, int cols, int causal, int diag,
                               const float *kbias, float *m, float *l, float *acc, int D)
    void tf_attention_finalize(const float *acc, const float *l, int rows, int D, float *out,
                               long ldo)
