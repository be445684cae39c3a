# nogil C-level declarations of the packed float32 / int8 / int4 / bf16 products in gemm.c (contracts in gemm.h).
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t

cdef extern from "gemm.h" nogil:
    int TF_GEMM_PORTABLE, TF_GEMM_AVX2, TF_GEMM_AVX512, TF_INT8, TF_BF16, TF_INT4, TF_F32
    int tf_gemm_best_variant(int kind)
    void tf_pack_int8(const int8_t *w, int O, int K, int8_t *packed, int32_t *comp)
    void tf_pack_bf16(const uint16_t *w, int O, int K, uint16_t *packed)
    void tf_pack_f32(const float *w, int O, int K, float *packed)
    void tf_unpack_row_int8(const int8_t *packed, int K, int o, float inv_scale, float *out)
    void tf_unpack_row_bf16(const uint16_t *packed, int K, int o, float *out)
    void tf_unpack_row_f32(const float *packed, int K, int o, float *out)
    void tf_unpack_row_int4(const uint8_t *packed, int K, int o, float *out)
    void tf_group_sums_int8(const int8_t *q, int G, float *xsum)
    float tf_quantize_row_int8(const float *x, int K, int K4, int8_t *q)
    void tf_round_row_bf16(const float *x, int K, int K2, uint16_t *q)
    void tf_gemm_int8_raw(int variant, const int8_t *xq, int M, int K4, const int8_t *packed,
                          const int32_t *comp, int o0, int n, int32_t *acc, long lda)
    void tf_gemm_int8(int variant, const int8_t *xq, int M, int K4, const float *inv_sx,
                      const int8_t *packed, const int32_t *comp, const float *inv_sw,
                      const float *bias, int o0, int n, float *out, long ldo)
    void tf_gemm_bf16(int variant, const uint16_t *xb, int M, int K2, const uint16_t *packed,
                      const float *bias, int o0, int n, float *out, long ldo)
    void tf_gemm_f32(int variant, const float *x, int M, int K, const float *packed,
                     const float *bias, int o0, int n, float *out, long ldo)
    void tf_gemm_int4_raw(int variant, const int8_t *xq, int M, int G, const uint8_t *packed,
                          int o0, int n, int32_t *acc, long lda)
    void tf_gemm_int4(int variant, const int8_t *xq, int M, int G, const float *inv_sx,
                      const float *xsum, const uint8_t *packed, const float *bias, int o0, int n,
                      float *out, long ldo)
