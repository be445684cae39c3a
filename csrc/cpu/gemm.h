/* Packed float32, int8, int4 and bfloat16 matrix products of the CPU backend:
 * out (M, O) = x (M, K) @ w (O, K)^T.
 *
 * The weights are packed once, at load, for the register tile of the kernels:
 *   f32:   (O64 = O rounded up to 64, K) as [O64/16][K][16] float32: one 64-byte vector holds
 *          one k of 16 consecutive outputs, the operand of an FMA against a broadcast x; zero
 *          padding.
 *   int8:  (O64 = O rounded up to 64, K4 = K rounded up to 4) as [O64/16][K4/4][16][4] int8: one
 *          64-byte vector holds 4 consecutive k of 16 consecutive outputs, the operand layout of
 *          AVX-512 VNNI vpdpbusd; zero padding.
 *   bf16:  (O64, K2 = K rounded up to 2) as [O64/16][K2/2][16][2] bf16 bits: the operand layout
 *          of AVX512-BF16 vdpbf16ps.
 *   int4:  codes 0..15 in groups of 32 along K (G = K32 / 32, K32 = K rounded up to 32), value =
 *          code * scale + minimum with a float32 scale and minimum per (output, group).  As
 *          [O64/16][G] records of TF_INT4_RECORD = 384 bytes, one per 16 outputs x 32 k: 4 chunks
 *          of 64 bytes (chunk c: byte 4 * o + kk holds the code of k = 8c + kk in its low nibble
 *          and of k = 8c + 4 + kk in its high nibble, o < 16, kk < 4: once the nibbles are split,
 *          each half is the u8 operand of vpdpbusd for 4 consecutive k of 16 outputs), then the
 *          16 scales, then the 16 minimums (float32).  Codes of k >= K and of rows >= O are 0,
 *          their scales and minimums 0.
 * A panel of 64 outputs (4 blocks of 16, K4 * 64 or K2 * 128 bytes) is the unit of work: the
 * kernels stream it once for a block of rows of x, which stay in registers.
 * Activations are prepared per row right before the product: int8 rows are quantized
 * symmetrically with one scale per row (q = round(x * s), s = 127 / max|x|, CTranslate2's int8),
 * bf16 rows rounded to nearest even.  Accumulation is int32 (exact) or float32; int4 sums each
 * group in int32 (isum), then out = (sum_g scale * isum + minimum * xsum) / sx + bias in float32,
 * xsum the group's sum of the int8 activations.
 *
 * Each product has three variants, chosen at run time (tf_gemm_variant): AVX-512 (VNNI for int8
 * and int4: the codes are vpdpbusd's unsigned operand, x its signed one; BF16 for bf16, or
 * where the CPU lacks it bf16 widened to float32 for FMA, 4 rows x 64 outputs), AVX2
 * (int8: vpmaddubsw on |w| and sign(w) x, exact since |x| <= 127, then vpmaddwd into int32;
 * int4: vpmaddubsw on the codes (u8) and x, int16 sums of a group, then vpmaddwd; bf16: widened
 * to float32 for FMA; f32: FMA on broadcast x, AVX-512F or AVX2) and a portable C twin, the
 * reference in tests and the fallback on any CPU.  All variants of a product give the same int32
 * accumulators (int8; int4 per group) or the same float32 products summed in another order
 * (bf16; int4's group terms) or in the same order (f32, but for FMA's single rounding).
 */
#ifndef TRANSFORMER_CPU_GEMM_H
#define TRANSFORMER_CPU_GEMM_H

#include <stdint.h>

#define TF_GEMM_PORTABLE 0
#define TF_GEMM_AVX2 1
#define TF_GEMM_AVX512 2

#define TF_INT8 0
#define TF_BF16 1
#define TF_INT4 2
#define TF_F32 3

#define TF_INT4_RECORD 384 /* bytes of one int4 record: 16 outputs x 32 k, see above */

/* Best variant this CPU runs for kind TF_INT8, TF_INT4, TF_BF16 or TF_F32 (TF_GEMM_AVX512
 * needs AVX512BW + VNNI for the integer kinds, AVX512F for f32 and bf16 (bf16: vdpbf16ps where
 * the CPU has AVX512_BF16, else each pair widened to float32 for two FMAs); TF_GEMM_AVX2 needs
 * AVX2 + FMA). */
int tf_gemm_best_variant(int kind);

/* packed (O64/16 * K4/4 * 64) = w (O, K) int8 row-major in the int8 layout; comp (O64) =
 * 128 * sum_k w[o, k] (the correction of the +128 shift that makes x unsigned for vpdpbusd). */
void tf_pack_int8(const int8_t *w, int O, int K, int8_t *packed, int32_t *comp);

/* packed (O64/16 * K2/2 * 32) = w (O, K) bf16 bits row-major in the bf16 layout. */
void tf_pack_bf16(const uint16_t *w, int O, int K, uint16_t *packed);

/* packed (O64/16 * K * 16) = w (O, K) float32 row-major in the f32 layout. */
void tf_pack_f32(const float *w, int O, int K, float *packed);

/* Row o of a packed matrix back in row-major order, as float32: out (K) = w[o, :] / scale
 * (int8; scale = the row's quantization scale) or the bf16 values. */
void tf_unpack_row_int8(const int8_t *packed, int K, int o, float inv_scale, float *out);
void tf_unpack_row_bf16(const uint16_t *packed, int K, int o, float *out);
void tf_unpack_row_f32(const float *packed, int K, int o, float *out);
/* out (K) = code * scale + minimum of row o of a packed int4 matrix. */
void tf_unpack_row_int4(const uint8_t *packed, int K, int o, float *out);

/* xsum (G) = sums of the int8 activations q (G * 32) over each group of 32 (as float; exact). */
void tf_group_sums_int8(const int8_t *q, int G, float *xsum);

/* q (K4) = round(x * s) in [-127, 127], zero padded from K to K4; returns s = 127 / max|x|
 * (1 for a row of zeros).  Round half to even, as nearbyintf in the default rounding mode. */
float tf_quantize_row_int8(const float *x, int K, int K4, int8_t *q);

/* q (K2) = x rounded to bf16 (nearest even; NaN stays NaN), zero padded from K to K2. */
void tf_round_row_bf16(const float *x, int K, int K2, uint16_t *q);

/* Raw int32 products of rows of quantized activations with outputs [o0, o0 + n) of a packed
 * int8 matrix: acc (M rows, stride lda) = xq (M, K4) @ w^T, exact (the shift corrected with
 * comp).  n <= 64, o0 a multiple of 64 (one panel). */
void tf_gemm_int8_raw(int variant, const int8_t *xq, int M, int K4, const int8_t *packed,
                      const int32_t *comp, int o0, int n, int32_t *acc, long lda);

/* Dequantized int8 product of a tile: out[m, o] = acc / (sx[m] * sw[o]) + bias[o] for rows
 * [0, M) and outputs [o0, o0 + n), n <= 64, o0 a multiple of 64; inv_sx (M) = 1 / sx,
 * inv_sw (O64) = 1 / sw, bias (O) or NULL; out row stride ldo. */
void tf_gemm_int8(int variant, const int8_t *xq, int M, int K4, const float *inv_sx,
                  const int8_t *packed, const int32_t *comp, const float *inv_sw,
                  const float *bias, int o0, int n, float *out, long ldo);

/* Raw int32 group products of rows of quantized activations xq (M, K32 = 32 G) with outputs
 * [o0, o0 + n) of a packed int4 matrix: acc[m * lda + o * G + g] = sum over the 32 k of group g
 * of xq[m, k] * code[o0 + o, k], exact.  n <= 64, o0 a multiple of 64. */
void tf_gemm_int4_raw(int variant, const int8_t *xq, int M, int G, const uint8_t *packed, int o0,
                      int n, int32_t *acc, long lda);

/* Dequantized int4 product of a tile: out[m, o] = (sum_g scale[o, g] isum[m, o, g] +
 * minimum[o, g] xsum[m, g]) inv_sx[m] + bias[o] for rows [0, M) and outputs [o0, o0 + n),
 * n <= 64, o0 a multiple of 64; xsum (M, G) from tf_group_sums_int8, bias (O) or NULL. */
void tf_gemm_int4(int variant, const int8_t *xq, int M, int G, const float *inv_sx,
                  const float *xsum, const uint8_t *packed, const float *bias, int o0, int n,
                  float *out, long ldo);

/* bf16 product of a tile: out[m, o] = sum_k xb[m, k] w[o, k] (float32 accumulation) + bias[o]
 * for rows [0, M) and outputs [o0, o0 + n), n <= 64, o0 a multiple of 64. xb (M, K2) bf16 bits
 * from tf_round_row_bf16. */
void tf_gemm_bf16(int variant, const uint16_t *xb, int M, int K2, const uint16_t *packed,
                  const float *bias, int o0, int n, float *out, long ldo);

/* float32 product of a tile: out[m, o] = x[m] . w[o] + bias[o] for rows [0, M) of x (M, K),
 * row stride K, and outputs [o0, o0 + n), n <= 64, o0 a multiple of 64.  Each row is summed on
 * its own (FMA along k, in order in the SIMD variants), so a row's result is the same bits
 * whatever the other rows and M: batch invariance. */
void tf_gemm_f32(int variant, const float *x, int M, int K, const float *packed,
                 const float *bias, int o0, int n, float *out, long ldo);

#endif
