/* Packed float32, int8, int4 and bf16 matrix products; see gemm.h for the layouts and the
 * contract.
 *
 * Register tiles: AVX-512, MR rows (up to 6) x one panel of 64 outputs (4 zmm accumulators per
 * row, 24 in all): per step of k, 4 weight vectors are loaded and each row's 4 (int8) or 2
 * (bf16) values are broadcast, 4 * MR dot-product instructions (bf16 without AVX512-BF16: 4 rows,
 * each pair widened to float32 for two FMAs).  AVX2: up to 2 (int8) or 3 (bf16)
 * rows x 16 or 32 outputs.  int4: up to 2 rows x 64 or 4 rows x 32 outputs (int32 group sums
 * and float32 totals, 8 + 8 zmm) on AVX-512, 2 rows x 16 outputs on AVX2.  f32: 6 rows x 64
 * outputs (one FMA per accumulator and k) on AVX-512, 6 rows x 16 outputs on AVX2.  The portable
 * twin loops over the same packed layout.
 */
#include <math.h>
#include <string.h>
#include "gemm.h"
#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TF_X86 1
#define TGT_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define TGT_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define TGT2 __attribute__((target("avx2,fma")))
#define TGT_F32 __attribute__((target("avx512f")))
#define INLINE static inline __attribute__((always_inline))
#else
#define TF_X86 0
#endif

#define PANEL 64
#define MR512 6

int tf_gemm_best_variant(int kind) {
#if TF_X86
    __builtin_cpu_init();
    if (kind == TF_F32 || kind == TF_BF16 ? __builtin_cpu_supports("avx512f")
                                          : __builtin_cpu_supports("avx512bw") &&
                                                __builtin_cpu_supports("avx512vnni"))
        return TF_GEMM_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return TF_GEMM_AVX2;
#endif
    (void)kind;
    return TF_GEMM_PORTABLE;
}

/* ---- packing ------------------------------------------------------------------------------ */

void tf_pack_int8(const int8_t *w, int O, int K, int8_t *packed, int32_t *comp) {
    const int K4 = (K + 3) & ~3, O64 = (O + PANEL - 1) / PANEL * PANEL;
    memset(packed, 0, (size_t)O64 * K4);
    for (int o = 0; o < O64; o++) {
        int32_t sum = 0;
        if (o < O) {
            int8_t *dst = packed + (size_t)(o / 16) * K4 * 16 + (o % 16) * 4;
            for (int k = 0; k < K; k++) {
                dst[(size_t)(k / 4) * 64 + k % 4] = w[(size_t)o * K + k];
                sum += w[(size_t)o * K + k];
            }
        }
        comp[o] = 128 * sum;
    }
}

void tf_pack_bf16(const uint16_t *w, int O, int K, uint16_t *packed) {
    const int K2 = (K + 1) & ~1, O64 = (O + PANEL - 1) / PANEL * PANEL;
    memset(packed, 0, (size_t)O64 * K2 * sizeof(uint16_t));
    for (int o = 0; o < O; o++) {
        uint16_t *dst = packed + (size_t)(o / 16) * K2 * 16 + (o % 16) * 2;
        for (int k = 0; k < K; k++) dst[(size_t)(k / 2) * 32 + k % 2] = w[(size_t)o * K + k];
    }
}

void tf_pack_f32(const float *w, int O, int K, float *packed) {
    const int O64 = (O + PANEL - 1) / PANEL * PANEL;
    memset(packed, 0, (size_t)O64 * K * sizeof(float));
    for (int o = 0; o < O; o++) {
        float *dst = packed + (size_t)(o / 16) * K * 16 + o % 16;
        for (int k = 0; k < K; k++) dst[(size_t)k * 16] = w[(size_t)o * K + k];
    }
}

void tf_unpack_row_f32(const float *packed, int K, int o, float *out) {
    const float *src = packed + (size_t)(o / 16) * K * 16 + o % 16;
    for (int k = 0; k < K; k++) out[k] = src[(size_t)k * 16];
}

void tf_unpack_row_int8(const int8_t *packed, int K, int o, float inv_scale, float *out) {
    const int K4 = (K + 3) & ~3;
    const int8_t *src = packed + (size_t)(o / 16) * K4 * 16 + (o % 16) * 4;
    for (int k = 0; k < K; k++) out[k] = (float)src[(size_t)(k / 4) * 64 + k % 4] * inv_scale;
}

static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void tf_unpack_row_bf16(const uint16_t *packed, int K, int o, float *out) {
    const int K2 = (K + 1) & ~1;
    const uint16_t *src = packed + (size_t)(o / 16) * K2 * 16 + (o % 16) * 2;
    for (int k = 0; k < K; k++) out[k] = bf16_to_float(src[(size_t)(k / 2) * 32 + k % 2]);
}

/* ---- activations ---------------------------------------------------------------------------- */

#if TF_X86
__attribute__((target("avx512f,avx512bw"))) static float quantize_row_512(const float *x, int K,
                                                                          int8_t *q) {
    __m512 vmax = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) /* max(new, vmax): a NaN x leaves vmax as it is, as fmaxf does */
        vmax = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + k)), vmax);
    float amax = _mm512_reduce_max_ps(vmax);
    for (; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    const float s = amax > 0.f ? 127.f / amax : 1.f;
    const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
    for (k = 0; k + 16 <= K; k += 16) {
        __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(x + k), vs),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    for (; k < K; k++) q[k] = (int8_t)(int)fminf(fmaxf(rintf(x[k] * s), -127.f), 127.f);
    return s;
}

/* The same on AVX2: max|x| (exact in any order), q = round-half-even(x * s) clamped, packed
 * from int32 to int8 through saturating packs (values already in [-127, 127]). */
TGT2 static float quantize_row_avx2(const float *x, int K, int8_t *q) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    __m256 vmax = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) /* max(new, vmax): a NaN x leaves vmax as it is, as fmaxf does */
        vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)), vmax);
    float lanes[8], amax = 0.f;
    _mm256_storeu_ps(lanes, vmax);
    for (int i = 0; i < 8; i++) amax = fmaxf(amax, lanes[i]);
    for (; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    const float s = amax > 0.f ? 127.f / amax : 1.f;
    const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (k = 0; k + 32 <= K; k += 32) {
        __m256i v[4];
        for (int i = 0; i < 4; i++) {
            const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * i), vs),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
        }
        /* packs work within 128-bit lanes: the dword permute restores k order */
        const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]),
                                             _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(q + k), _mm256_permutevar8x32_epi32(b, order));
    }
    for (; k < K; k++) q[k] = (int8_t)(int)fminf(fmaxf(rintf(x[k] * s), -127.f), 127.f);
    return s;
}
#endif

float tf_quantize_row_int8(const float *x, int K, int K4, int8_t *q) {
    float s;
    for (int k = K; k < K4; k++) q[k] = 0;
#if TF_X86
    static int has512 = -1, has2 = -1;
    if (has512 < 0) has512 = __builtin_cpu_supports("avx512bw");
    if (has512) return quantize_row_512(x, K, q);
    if (has2 < 0) has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (has2) return quantize_row_avx2(x, K, q);
#endif
    float amax = 0.f;
    for (int k = 0; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    s = amax > 0.f ? 127.f / amax : 1.f;
    for (int k = 0; k < K; k++) q[k] = (int8_t)(int)fminf(fmaxf(rintf(x[k] * s), -127.f), 127.f);
    return s;
}

TF_CLONES
void tf_round_row_bf16(const float *x, int K, int K2, uint16_t *q) {
    for (int k = 0; k < K; k++) {
        uint32_t u;
        memcpy(&u, &x[k], 4);
        const uint32_t nan = (u & 0x7fffffffu) > 0x7f800000u;
        const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; /* nearest, ties to even */
        q[k] = (uint16_t)(nan ? (u >> 16) | 0x40u : r);
    }
    for (int k = K; k < K2; k++) q[k] = 0;
}

/* ---- int8: portable ------------------------------------------------------------------------- */

/* acc (M, 64; stride lda) = xq (M, K4) @ panel^T, exact int32 (no shift: signed x). */
static void int8_panel_portable(const int8_t *xq, int M, int K4, const int8_t *panel,
                                int32_t *acc, long lda) {
    for (int m = 0; m < M; m++) {
        const int8_t *x = xq + (size_t)m * K4;
        for (int o = 0; o < PANEL; o++) {
            const int8_t *w = panel + (size_t)(o / 16) * K4 * 16 + (o % 16) * 4;
            int32_t s = 0;
            for (int kg = 0; kg < K4 / 4; kg++)
                for (int kk = 0; kk < 4; kk++) s += (int32_t)x[kg * 4 + kk] * w[kg * 64 + kk];
            acc[m * lda + o] = s;
        }
    }
}

#if TF_X86
/* ---- int8: AVX-512 VNNI --------------------------------------------------------------------- */

/* MR rows x 64 outputs: acc[i][j] = sum_k (x[i, k] + 128) w[16 j + lane, k] (u8 x s8 pairs of 4
 * through vpdpbusd), minus comp; then stored raw (inv_sx NULL: int32 into acc_out) or
 * dequantized, acc / (sx sw) + bias.  One function, so that the 4 MR accumulators stay in
 * registers (MR is a constant in every inlined copy). */
TGT_VNNI INLINE void int8_tile_512(const int8_t *x, long ldx, const int8_t *panel, int K4,
                                   const int MR, const int32_t *comp, const float *inv_sx,
                                   const float *inv_sw, const float *bias, int n,
                                   int32_t *acc_out, long lda, float *out, long ldo) {
    const long bs = (long)K4 * 16; /* bytes between the panel's 16-output blocks */
    const __m512i shift = _mm512_set1_epi8((char)0x80);
    __m512i acc[MR512][4];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_si512();
    for (int kg = 0; kg < K4 / 4; kg++) {
        const int8_t *w = panel + (long)kg * 64;
        const __m512i b0 = _mm512_loadu_si512(w), b1 = _mm512_loadu_si512(w + bs),
                      b2 = _mm512_loadu_si512(w + 2 * bs), b3 = _mm512_loadu_si512(w + 3 * bs);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            int32_t four;
            memcpy(&four, x + i * ldx + kg * 4, 4);
            const __m512i a = _mm512_xor_si512(_mm512_set1_epi32(four), shift);
            acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], a, b0);
            acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], a, b1);
            acc[i][2] = _mm512_dpbusd_epi32(acc[i][2], a, b2);
            acc[i][3] = _mm512_dpbusd_epi32(acc[i][3], a, b3);
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const int cnt = n - 16 * j;
        if (cnt <= 0) break;
        const __mmask16 k = cnt >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cnt) - 1);
        const __m512i c = _mm512_loadu_si512(comp + 16 * j);
        const __m512 sw = inv_sx ? _mm512_loadu_ps(inv_sw + 16 * j) : _mm512_setzero_ps();
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + 16 * j) : _mm512_setzero_ps();
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m512i d = _mm512_sub_epi32(acc[i][j], c);
            if (!inv_sx) {
                _mm512_mask_storeu_epi32(acc_out + i * lda + 16 * j, k, d);
            } else {
                const __m512 f = _mm512_fmadd_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(inv_sx[i])), sw, bv);
                _mm512_mask_storeu_ps(out + i * ldo + 16 * j, k, f);
            }
        }
    }
}

TGT_VNNI static void int8_panel_512(const int8_t *xq, int M, int K4, const int8_t *panel,
                                    const int32_t *comp, const float *inv_sx,
                                    const float *inv_sw, const float *bias, int n,
                                    int32_t *acc_out, long lda, float *out, long ldo) {
    for (int m = 0; m < M; m += MR512) {
        const int8_t *x = xq + (size_t)m * K4;
        const float *isx = inv_sx ? inv_sx + m : NULL;
        int32_t *ao = acc_out ? acc_out + m * lda : NULL;
        float *o = out ? out + m * ldo : NULL;
        switch (M - m >= MR512 ? MR512 : M - m) { /* constant MR: accumulators in registers */
#define CASE(R) case R: int8_tile_512(x, K4, panel, K4, R, comp, isx, inv_sw, bias, n, ao, lda, \
                                      o, ldo); break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#undef CASE
        }
    }
}

/* ---- int8: AVX2 --------------------------------------------------------------------------- */

/* R rows x 16 outputs (block j of the panel): acc = x @ w^T, exact.  AVX2 has no u8 x s8 dot
 * product into int32 without saturation, so the product goes through vpmaddubsw with both
 * operands sign-moved onto x: |w| (u8, <= 128) times sign(w) x (s8, |x| <= 127) gives pairs of
 * int16 of at most 2 * 128 * 127 = 32512 (no saturation), summed to int32 by vpmaddwd with
 * ones.  A 32-byte slice of the panel is 8 outputs x 4 k, so each int32 lane is one output:
 * no horizontal adds.  x must lie in [-127, 127] (tf_quantize_row_int8's range); w may be -128. */
TGT2 INLINE void int8_tile_avx2(const int8_t *xq, long ldx, const int8_t *wb, int K4, const int R,
                                int32_t *acc_out, long lda) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[3][2];
    for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    for (int kg = 0; kg < K4 / 4; kg++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wb + kg * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wb + kg * 64 + 32));
        const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
        for (int i = 0; i < R; i++) {
            int32_t four;
            memcpy(&four, xq + i * ldx + kg * 4, 4);
            const __m256i xv = _mm256_set1_epi32(four);
            const __m256i p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(xv, w0));
            const __m256i p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(xv, w1));
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p0, ones));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(p1, ones));
        }
    }
    for (int i = 0; i < R; i++) {
        _mm256_storeu_si256((__m256i *)(acc_out + i * lda), acc[i][0]);
        _mm256_storeu_si256((__m256i *)(acc_out + i * lda + 8), acc[i][1]);
    }
}

/* acc (M, 64; stride lda) = xq @ panel^T, exact: tiles of 3 rows x 16 outputs (6 accumulators
 * and 4 weight registers, within AVX2's 16). */
TGT2 static void int8_panel_avx2(const int8_t *xq, int M, int K4, const int8_t *panel,
                                 int32_t *acc_out, long lda) {
    const long bs = (long)K4 * 16; /* bytes between the panel's 16-output blocks */
    for (int m = 0; m < M; m += 3) {
        const int8_t *x = xq + (size_t)m * K4;
        for (int j = 0; j < 4; j++) {
            int32_t *ao = acc_out + m * lda + 16 * j;
            switch (M - m >= 3 ? 3 : M - m) { /* constant R: accumulators in registers */
            case 3: int8_tile_avx2(x, K4, panel + j * bs, K4, 3, ao, lda); break;
            case 2: int8_tile_avx2(x, K4, panel + j * bs, K4, 2, ao, lda); break;
            default: int8_tile_avx2(x, K4, panel + j * bs, K4, 1, ao, lda);
            }
        }
    }
}
#endif

/* acc (M, 64) raw int32 products of one panel, by variant. */
static void int8_panel_acc(int variant, const int8_t *xq, int M, int K4, const int8_t *panel,
                           int32_t *acc, long lda) {
#if TF_X86
    if (variant == TF_GEMM_AVX2) {
        int8_panel_avx2(xq, M, K4, panel, acc, lda);
        return;
    }
#endif
    (void)variant;
    int8_panel_portable(xq, M, K4, panel, acc, lda);
}

void tf_gemm_int8_raw(int variant, const int8_t *xq, int M, int K4, const int8_t *packed,
                      const int32_t *comp, int o0, int n, int32_t *acc, long lda) {
    const int8_t *panel = packed + (size_t)o0 * K4;
#if TF_X86
    if (variant == TF_GEMM_AVX512) {
        int8_panel_512(xq, M, K4, panel, comp + o0, NULL, NULL, NULL, n, acc, lda, NULL, 0);
        return;
    }
#endif
    (void)comp;
    int32_t tmp[MR512 * PANEL];
    for (int m = 0; m < M; m += MR512) {
        const int rows = M - m >= MR512 ? MR512 : M - m;
        int8_panel_acc(variant, xq + (size_t)m * K4, rows, K4, panel, tmp, PANEL);
        for (int i = 0; i < rows; i++) memcpy(acc + (m + i) * lda, tmp + i * PANEL, 4 * n);
    }
}

void tf_gemm_int8(int variant, const int8_t *xq, int M, int K4, const float *inv_sx,
                  const int8_t *packed, const int32_t *comp, const float *inv_sw,
                  const float *bias, int o0, int n, float *out, long ldo) {
    const int8_t *panel = packed + (size_t)o0 * K4;
#if TF_X86
    if (variant == TF_GEMM_AVX512) {
        int8_panel_512(xq, M, K4, panel, comp + o0, inv_sx, inv_sw + o0,
                       bias ? bias + o0 : NULL, n, NULL, 0, out + o0, ldo);
        return;
    }
#endif
    int32_t tmp[MR512 * PANEL];
    for (int m = 0; m < M; m += MR512) {
        const int rows = M - m >= MR512 ? MR512 : M - m;
        int8_panel_acc(variant, xq + (size_t)m * K4, rows, K4, panel, tmp, PANEL);
        for (int i = 0; i < rows; i++) {
            float *o = out + (size_t)(m + i) * ldo + o0;
            const float isx = inv_sx[m + i];
            for (int c = 0; c < n; c++)
                o[c] = (float)tmp[i * PANEL + c] * isx * inv_sw[o0 + c] +
                       (bias ? bias[o0 + c] : 0.f);
        }
    }
}

/* out[i, o0 + c] = tmp[i, c] + bias[o0 + c] for rows [0, rows) and c < n (tmp's row stride
 * PANEL; bias (O) or NULL): a portable or AVX2 tile's float32 outputs in place. */
static void store_rows(const float *tmp, int rows, const float *bias, int o0, int n, float *out,
                       long ldo) {
    for (int i = 0; i < rows; i++) {
        float *o = out + (size_t)i * ldo + o0;
        for (int c = 0; c < n; c++) o[c] = tmp[i * PANEL + c] + (bias ? bias[o0 + c] : 0.f);
    }
}

#if TF_X86
/* out[i, 16 j + c] = acc[i][j][c] + bias[16 j + c] for the tile's MR rows and its first n (<= 64)
 * outputs (masked stores past n), bias (64) or NULL. */
TGT_F32 INLINE void store_tile_512(__m512 (*acc)[4], const int MR, const float *bias, int n,
                                   float *out, long ldo) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const int cnt = n - 16 * j;
        if (cnt <= 0) break;
        const __mmask16 k = cnt >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cnt) - 1);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + 16 * j) : _mm512_setzero_ps();
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++)
            _mm512_mask_storeu_ps(out + i * ldo + 16 * j, k, _mm512_add_ps(acc[i][j], bv));
    }
}
#endif

/* ---- bf16 ----------------------------------------------------------------------------------- */

static void bf16_panel_portable(const uint16_t *xb, int M, int K2, const uint16_t *panel,
                                float *acc, long lda) {
    for (int m = 0; m < M; m++) {
        const uint16_t *x = xb + (size_t)m * K2;
        for (int o = 0; o < PANEL; o++) {
            const uint16_t *w = panel + (size_t)(o / 16) * K2 * 16 + (o % 16) * 2;
            float s = 0.f;
            for (int kp = 0; kp < K2 / 2; kp++)
                s += bf16_to_float(x[2 * kp]) * bf16_to_float(w[kp * 32]) +
                     bf16_to_float(x[2 * kp + 1]) * bf16_to_float(w[kp * 32 + 1]);
            acc[m * lda + o] = s;
        }
    }
}

#if TF_X86
TGT_BF16 INLINE void bf16_tile_512(const uint16_t *x, long ldx, const uint16_t *panel, int K2,
                                   const int MR, const float *bias, int n, float *out,
                                   long ldo) {
    const long bs = (long)K2 * 16; /* elements between the panel's 16-output blocks */
    __m512 acc[MR512][4];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int kp = 0; kp < K2 / 2; kp++) {
        const uint16_t *w = panel + (long)kp * 32;
        const __m512i b0 = _mm512_loadu_si512(w), b1 = _mm512_loadu_si512(w + bs),
                      b2 = _mm512_loadu_si512(w + 2 * bs), b3 = _mm512_loadu_si512(w + 3 * bs);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            int32_t two;
            memcpy(&two, x + i * ldx + kp * 2, 4);
            const __m512i a = _mm512_set1_epi32(two);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)a, (__m512bh)b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)a, (__m512bh)b1);
            acc[i][2] = _mm512_dpbf16_ps(acc[i][2], (__m512bh)a, (__m512bh)b2);
            acc[i][3] = _mm512_dpbf16_ps(acc[i][3], (__m512bh)a, (__m512bh)b3);
        }
    }
    store_tile_512(acc, MR, bias, n, out, ldo);
}

TGT_BF16 static void bf16_panel_512(const uint16_t *xb, int M, int K2, const uint16_t *panel,
                                    const float *bias, int n, float *out, long ldo) {
    for (int m = 0; m < M; m += MR512) {
        const uint16_t *x = xb + (size_t)m * K2;
        float *o = out + (size_t)m * ldo;
        switch (M - m >= MR512 ? MR512 : M - m) {
#define CASE(R) case R: bf16_tile_512(x, K2, panel, K2, R, bias, n, o, ldo); break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#undef CASE
        }
    }
}

/* AVX-512F without AVX512-BF16: each pair widened to float32 (its first value: << 16; its
 * second: the high half), two FMAs; 4 rows x 64 outputs (16 accumulators, 8 widened weights). */
TGT_F32 INLINE void bf16_tile_512f(const uint16_t *x, long ldx, const uint16_t *panel, int K2,
                                   const int MR, const float *bias, int n, float *out,
                                   long ldo) {
    const long bs = (long)K2 * 16;
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int kp = 0; kp < K2 / 2; kp++) {
        const uint16_t *w = panel + (long)kp * 32;
        __m512 e[4], o[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512i b = _mm512_loadu_si512(w + j * bs);
            e[j] = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
            o[j] = _mm512_castsi512_ps(_mm512_and_si512(b, hi));
        }
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            int32_t two;
            memcpy(&two, x + i * ldx + kp * 2, 4);
            const __m512i a = _mm512_set1_epi32(two);
            const __m512 xe = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
            const __m512 xo = _mm512_castsi512_ps(_mm512_and_si512(a, hi));
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                acc[i][j] = _mm512_fmadd_ps(xo, o[j], _mm512_fmadd_ps(xe, e[j], acc[i][j]));
        }
    }
    store_tile_512(acc, MR, bias, n, out, ldo);
}

TGT_F32 static void bf16_panel_512f(const uint16_t *xb, int M, int K2, const uint16_t *panel,
                                    const float *bias, int n, float *out, long ldo) {
    for (int m = 0; m < M; m += 4) {
        const uint16_t *x = xb + (size_t)m * K2;
        float *o = out + (size_t)m * ldo;
        switch (M - m >= 4 ? 4 : M - m) {
#define CASE(R) case R: bf16_tile_512f(x, K2, panel, K2, R, bias, n, o, ldo); break;
            CASE(1) CASE(2) CASE(3) CASE(4)
#undef CASE
        }
    }
}

/* bf16 widened to float32 (a pair's first value: << 16; its second: the high half), FMA. */
TGT2 INLINE void bf16_tile_avx2(const uint16_t *xb, int K2, const uint16_t *wb, const int MR,
                                float *acc, long lda) {
    const __m256i hi_mask = _mm256_set1_epi32((int)0xffff0000u);
    __m256 a[3][2];
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++) a[i][0] = a[i][1] = _mm256_setzero_ps();
    for (int kp = 0; kp < K2 / 2; kp++) {
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)(wb + kp * 32));
        const __m256i v1 = _mm256_loadu_si256((const __m256i *)(wb + kp * 32 + 16));
        const __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16));
        const __m256 o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, hi_mask));
        const __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16));
        const __m256 o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, hi_mask));
#pragma GCC unroll 3
        for (int i = 0; i < MR; i++) {
            int32_t two;
            memcpy(&two, xb + (size_t)i * K2 + 2 * kp, 4);
            const __m256i p = _mm256_set1_epi32(two);
            const __m256 x0 = _mm256_castsi256_ps(_mm256_slli_epi32(p, 16));
            const __m256 x1 = _mm256_castsi256_ps(_mm256_and_si256(p, hi_mask));
            a[i][0] = _mm256_fmadd_ps(x1, o0, _mm256_fmadd_ps(x0, e0, a[i][0]));
            a[i][1] = _mm256_fmadd_ps(x1, o1, _mm256_fmadd_ps(x0, e1, a[i][1]));
        }
    }
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++) {
        _mm256_storeu_ps(acc + i * lda, a[i][0]);
        _mm256_storeu_ps(acc + i * lda + 8, a[i][1]);
    }
}

/* Up to 3 rows (a constant per call site) x 16 outputs of one block at a time. */
TGT2 static void bf16_panel_avx2(const uint16_t *xb, int M, int K2, const uint16_t *panel,
                                 float *acc_out, long lda) {
    const long bs = (long)K2 * 16;
    for (int m = 0; m < M; m += 3)
        for (int j = 0; j < 4; j++) {
            const uint16_t *x = xb + (size_t)m * K2, *wb = panel + j * bs;
            float *acc = acc_out + m * lda + 16 * j;
            switch (M - m >= 3 ? 3 : M - m) {
#define CASE(R) case R: bf16_tile_avx2(x, K2, wb, R, acc, lda); break;
                CASE(1) CASE(2) CASE(3)
#undef CASE
            }
        }
}
#endif

void tf_gemm_bf16(int variant, const uint16_t *xb, int M, int K2, const uint16_t *packed,
                  const float *bias, int o0, int n, float *out, long ldo) {
    const uint16_t *panel = packed + (size_t)o0 * K2;
#if TF_X86
    if (variant == TF_GEMM_AVX512) {
        /* AVX512-BF16 vdpbf16ps where the CPU has it, else widened FMA (the same bound) */
        (__builtin_cpu_supports("avx512bf16") ? bf16_panel_512 : bf16_panel_512f)(
            xb, M, K2, panel, bias ? bias + o0 : NULL, n, out + o0, ldo);
        return;
    }
#endif
    float tmp[MR512 * PANEL];
    for (int m = 0; m < M; m += MR512) {
        const int rows = M - m >= MR512 ? MR512 : M - m;
#if TF_X86
        if (variant == TF_GEMM_AVX2)
            bf16_panel_avx2(xb + (size_t)m * K2, rows, K2, panel, tmp, PANEL);
        else
#endif
            bf16_panel_portable(xb + (size_t)m * K2, rows, K2, panel, tmp, PANEL);
        store_rows(tmp, rows, bias, o0, n, out + (size_t)m * ldo, ldo);
    }
}


/* ---- f32 ------------------------------------------------------------------------------------ */

/* Rows of x against a panel, one row at a time over the 4 blocks of 16 outputs: each output's
 * sum runs along k in order (the same order as the SIMD twins). */
static void f32_panel_portable(const float *x, int M, int K, const float *panel, float *acc,
                               long lda) {
    const long bs = (long)K * 16;
    for (int m = 0; m < M; m++)
        for (int j = 0; j < 4; j++) {
            float a[16] = {0.f};
            const float *w = panel + j * bs;
            for (int k = 0; k < K; k++) {
                const float v = x[(size_t)m * K + k];
                for (int c = 0; c < 16; c++) a[c] += v * w[(long)k * 16 + c];
            }
            memcpy(acc + m * lda + 16 * j, a, sizeof a);
        }
}

#if TF_X86
TGT_F32 INLINE void f32_tile_512(const float *x, long ldx, const float *panel, int K,
                                 const int MR, const float *bias, int n, float *out, long ldo) {
    const long bs = (long)K * 16;
    __m512 acc[MR512][4];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        const float *w = panel + (long)k * 16;
        const __m512 b0 = _mm512_loadu_ps(w), b1 = _mm512_loadu_ps(w + bs),
                     b2 = _mm512_loadu_ps(w + 2 * bs), b3 = _mm512_loadu_ps(w + 3 * bs);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m512 a = _mm512_set1_ps(x[i * ldx + k]);
            acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(a, b2, acc[i][2]);
            acc[i][3] = _mm512_fmadd_ps(a, b3, acc[i][3]);
        }
    }
    store_tile_512(acc, MR, bias, n, out, ldo);
}

TGT_F32 static void f32_panel_512(const float *x, int M, int K, const float *panel,
                                  const float *bias, int n, float *out, long ldo) {
    for (int m = 0; m < M; m += MR512) {
        const float *xm = x + (size_t)m * K;
        float *o = out + (size_t)m * ldo;
        switch (M - m >= MR512 ? MR512 : M - m) {
#define CASE(R) case R: f32_tile_512(xm, K, panel, K, R, bias, n, o, ldo); break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#undef CASE
        }
    }
}

/* MR (<= 6, a constant after inlining: the accumulators stay in registers) rows x 16 outputs of
 * one block, 12 ymm accumulators. */
TGT2 INLINE void f32_tile_avx2(const float *x, int K, const float *wb, const int MR, float *acc,
                               long lda) {
    __m256 a[6][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) a[i][0] = a[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        const __m256 w0 = _mm256_loadu_ps(wb + (long)k * 16);
        const __m256 w1 = _mm256_loadu_ps(wb + (long)k * 16 + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m256 v = _mm256_broadcast_ss(x + (size_t)i * K + k);
            a[i][0] = _mm256_fmadd_ps(v, w0, a[i][0]);
            a[i][1] = _mm256_fmadd_ps(v, w1, a[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        _mm256_storeu_ps(acc + i * lda, a[i][0]);
        _mm256_storeu_ps(acc + i * lda + 8, a[i][1]);
    }
}

TGT2 static void f32_panel_avx2(const float *x, int M, int K, const float *panel, float *acc_out,
                                long lda) {
    const long bs = (long)K * 16;
    for (int m = 0; m < M; m += 6)
        for (int j = 0; j < 4; j++) {
            const float *xm = x + (size_t)m * K, *wb = panel + j * bs;
            float *acc = acc_out + m * lda + 16 * j;
            switch (M - m >= 6 ? 6 : M - m) {
#define CASE(R) case R: f32_tile_avx2(xm, K, wb, R, acc, lda); break;
                CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#undef CASE
            }
        }
}
#endif

void tf_gemm_f32(int variant, const float *x, int M, int K, const float *packed,
                 const float *bias, int o0, int n, float *out, long ldo) {
    const float *panel = packed + (size_t)o0 * K;
#if TF_X86
    if (variant == TF_GEMM_AVX512) {
        f32_panel_512(x, M, K, panel, bias ? bias + o0 : NULL, n, out + o0, ldo);
        return;
    }
#endif
    float tmp[MR512 * PANEL];
    for (int m = 0; m < M; m += MR512) {
        const int rows = M - m >= MR512 ? MR512 : M - m;
#if TF_X86
        if (variant == TF_GEMM_AVX2)
            f32_panel_avx2(x + (size_t)m * K, rows, K, panel, tmp, PANEL);
        else
#endif
            f32_panel_portable(x + (size_t)m * K, rows, K, panel, tmp, PANEL);
        store_rows(tmp, rows, bias, o0, n, out + (size_t)m * ldo, ldo);
    }
}


/* ---- int4 ----------------------------------------------------------------------------------- */

#define REC TF_INT4_RECORD
#define MR4 4

void tf_unpack_row_int4(const uint8_t *packed, int K, int o, float *out) {
    const int G = (K + 31) / 32;
    const uint8_t *blk = packed + (size_t)(o / 16) * G * REC;
    const int ol = o % 16;
    for (int k = 0; k < K; k++) {
        const uint8_t *r = blk + (size_t)(k / 32) * REC;
        const int c = (k % 32) / 8, hi = (k % 8) / 4, kk = k % 4;
        const int code = (r[c * 64 + ol * 4 + kk] >> (4 * hi)) & 15;
        float scale, minimum;
        memcpy(&scale, r + 256 + 4 * ol, 4);
        memcpy(&minimum, r + 320 + 4 * ol, 4);
        out[k] = (float)code * scale + minimum;
    }
}

void tf_group_sums_int8(const int8_t *q, int G, float *xsum) {
    for (int g = 0; g < G; g++) {
        int32_t s = 0;
        for (int k = 0; k < 32; k++) s += q[g * 32 + k];
        xsum[g] = (float)s;
    }
}

/* Rows [0, M) x outputs [0, n) of one panel: raw group sums into acc_out, or the dequantized
 * product (the reference twin of the SIMD tiles, same packed layout). */
static void int4_panel_portable(const int8_t *xq, int M, int G, const uint8_t *panel,
                                const float *xsum, const float *inv_sx, const float *bias, int n,
                                int32_t *acc_out, long lda, float *out, long ldo) {
    const long bs = (long)G * REC; /* bytes between the panel's 16-output blocks */
    for (int m = 0; m < M; m++) {
        const int8_t *x = xq + (size_t)m * G * 32;
        for (int o = 0; o < n; o++) {
            const int ol = o % 16;
            float f = 0.f;
            for (int g = 0; g < G; g++) {
                const uint8_t *r = panel + (o / 16) * bs + (long)g * REC;
                const int8_t *xg = x + g * 32;
                int32_t s = 0;
                for (int c = 0; c < 4; c++)
                    for (int kk = 0; kk < 4; kk++) {
                        const int b = r[c * 64 + ol * 4 + kk];
                        s += (b & 15) * xg[8 * c + kk] + (b >> 4) * xg[8 * c + 4 + kk];
                    }
                if (acc_out) {
                    acc_out[m * lda + (long)o * G + g] = s;
                } else {
                    float scale, minimum;
                    memcpy(&scale, r + 256 + 4 * ol, 4);
                    memcpy(&minimum, r + 320 + 4 * ol, 4);
                    f += (float)s * scale + minimum * xsum[(long)m * G + g];
                }
            }
            if (!acc_out) out[m * ldo + o] = f * inv_sx[m] + (bias ? bias[o] : 0.f);
        }
    }
}

#if TF_X86
/* ---- int4: AVX-512 VNNI --------------------------------------------------------------------- */

/* MR rows x NB blocks of 16 outputs (b0, b0 + bs, ...; n outputs valid): per group, isum =
 * codes (u8, the nibbles split) . x (s8, 4 consecutive k broadcast) by vpdpbusd, exact; then
 * stored raw (acc_out) or folded into float32 totals, f += isum * scale; f += minimum * xsum;
 * finally out = f * inv_sx + bias.  The same operations in the same order for every row, so a
 * row's result does not depend on the others.  NB = 4 (the whole panel: 4 streams of weights in
 * flight) for up to 2 rows, NB = 2 for up to 4 (the registers: 2 NB MR accumulators). */
TGT_VNNI INLINE void int4_tile_512(const int8_t *x, long ldx, const uint8_t *b0, long bs, int G,
                                   const int MR, const int NB, const float *xsum,
                                   const float *inv_sx, const float *bias, int n,
                                   int32_t *acc_out, long lda, float *out, long ldo) {
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    __m512 f[MR4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) f[i][j] = _mm512_setzero_ps();
    for (int g = 0; g < G; g++) {
        const uint8_t *r0 = b0 + (long)g * REC;
        const int8_t *xg = x + g * 32;
        __m512i s[MR4][4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
            for (int j = 0; j < NB; j++) s[i][j] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512i l[4], h[4];
#pragma GCC unroll 4
            for (int j = 0; j < NB; j++) {
                const __m512i v = _mm512_loadu_si512(r0 + j * bs + 64 * c);
                l[j] = _mm512_and_si512(v, lo4);
                h[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                int32_t lo, hi;
                memcpy(&lo, xg + i * ldx + 8 * c, 4);
                memcpy(&hi, xg + i * ldx + 8 * c + 4, 4);
                const __m512i xl = _mm512_set1_epi32(lo), xh = _mm512_set1_epi32(hi);
#pragma GCC unroll 4
                for (int j = 0; j < NB; j++)
                    s[i][j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(s[i][j], l[j], xl), h[j],
                                                  xh);
            }
        }
        if (acc_out) {
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NB; j++) {
                    int32_t t[16];
                    _mm512_storeu_si512(t, s[i][j]);
                    for (int l = 0; l < 16 && 16 * j + l < n; l++)
                        acc_out[i * lda + (long)(16 * j + l) * G + g] = t[l];
                }
            continue;
        }
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) {
            const __m512 sc = _mm512_loadu_ps(r0 + j * bs + 256);
            const __m512 mn = _mm512_loadu_ps(r0 + j * bs + 320);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++)
                f[i][j] = _mm512_fmadd_ps(mn, _mm512_set1_ps(xsum[(long)i * G + g]),
                                          _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[i][j]), sc,
                                                          f[i][j]));
        }
    }
    if (acc_out) return;
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++) {
        const int cnt = n - 16 * j;
        if (cnt <= 0) break;
        const __mmask16 k = cnt >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cnt) - 1);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + 16 * j) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++)
            _mm512_mask_storeu_ps(out + i * ldo + 16 * j, k,
                                  _mm512_fmadd_ps(f[i][j], _mm512_set1_ps(inv_sx[i]), bv));
    }
}

TGT_VNNI static void int4_panel_512(const int8_t *xq, int M, int G, const uint8_t *panel,
                                    const float *xsum, const float *inv_sx, const float *bias,
                                    int n, int32_t *acc_out, long lda, float *out, long ldo) {
    const long bs = (long)G * REC, K32 = 32L * G;
    if (M <= 2) { /* decode: the whole panel in one pass */
        if (M == 2)
            int4_tile_512(xq, K32, panel, bs, G, 2, 4, xsum, inv_sx, bias, n, acc_out, lda, out,
                          ldo);
        else
            int4_tile_512(xq, K32, panel, bs, G, 1, 4, xsum, inv_sx, bias, n, acc_out, lda, out,
                          ldo);
        return;
    }
    for (int h = 0; 32 * h < n; h++) { /* the panel's two halves of 32 outputs */
        const uint8_t *b0 = panel + 2 * h * bs;
        const float *bh = bias ? bias + 32 * h : NULL;
        for (int m = 0; m < M; m += MR4) {
            const int8_t *x = xq + m * K32;
            const float *xs = xsum ? xsum + (long)m * G : NULL;
            const float *isx = inv_sx ? inv_sx + m : NULL;
            int32_t *ao = acc_out ? acc_out + m * lda + 32L * h * G : NULL;
            float *o = out ? out + m * ldo + 32 * h : NULL;
            switch (M - m >= MR4 ? MR4 : M - m) { /* constant MR: accumulators in registers */
#define CASE(R) case R: int4_tile_512(x, K32, b0, bs, G, R, 2, xs, isx, bh, n - 32 * h, ao, \
                                      lda, o, ldo); break;
                CASE(1) CASE(2) CASE(3) CASE(4)
#undef CASE
            }
        }
    }
}

/* ---- int4: AVX2 ----------------------------------------------------------------------------- */

/* R rows x 16 outputs (one block): vpmaddubsw of the codes (u8 <= 15) with x (s8) gives int16
 * pairs of at most 2 * 15 * 128 = 3840, and a group's 8 of them per lane sum to at most 30720 in
 * int16 (exact); vpmaddwd with ones widens to one int32 per output.  A 32-byte half of a chunk
 * is 8 outputs x 4 k.  Then as the AVX-512 tile. */
TGT2 INLINE void int4_tile_avx2(const int8_t *x, long ldx, const uint8_t *blk, int G, const int R,
                                const float *xsum, const float *inv_sx, const float *bias, int n,
                                int32_t *acc_out, long lda, float *out, long ldo) {
    const __m256i lo4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 f[2][2];
    for (int i = 0; i < R; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < G; g++) {
        const uint8_t *r = blk + (long)g * REC;
        const int8_t *xg = x + g * 32;
        __m256i s[2][2];
        for (int i = 0; i < R; i++) s[i][0] = s[i][1] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)(r + 64 * c));
            const __m256i v1 = _mm256_loadu_si256((const __m256i *)(r + 64 * c + 32));
            const __m256i l0 = _mm256_and_si256(v0, lo4);
            const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), lo4);
            const __m256i l1 = _mm256_and_si256(v1, lo4);
            const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), lo4);
            for (int i = 0; i < R; i++) {
                int32_t lo, hi;
                memcpy(&lo, xg + i * ldx + 8 * c, 4);
                memcpy(&hi, xg + i * ldx + 8 * c + 4, 4);
                const __m256i xl = _mm256_set1_epi32(lo), xh = _mm256_set1_epi32(hi);
                s[i][0] = _mm256_add_epi16(s[i][0], _mm256_add_epi16(
                    _mm256_maddubs_epi16(l0, xl), _mm256_maddubs_epi16(h0, xh)));
                s[i][1] = _mm256_add_epi16(s[i][1], _mm256_add_epi16(
                    _mm256_maddubs_epi16(l1, xl), _mm256_maddubs_epi16(h1, xh)));
            }
        }
        for (int i = 0; i < R; i++)
            for (int j = 0; j < 2; j++) {
                const __m256i d = _mm256_madd_epi16(s[i][j], ones);
                if (acc_out) {
                    int32_t t[8];
                    _mm256_storeu_si256((__m256i *)t, d);
                    for (int l = 0; l < 8 && 8 * j + l < n; l++)
                        acc_out[i * lda + (long)(8 * j + l) * G + g] = t[l];
                    continue;
                }
                const __m256 sc = _mm256_loadu_ps((const float *)(r + 256) + 8 * j);
                const __m256 mn = _mm256_loadu_ps((const float *)(r + 320) + 8 * j);
                f[i][j] = _mm256_fmadd_ps(mn, _mm256_set1_ps(xsum[(long)i * G + g]),
                                          _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, f[i][j]));
            }
    }
    if (acc_out) return;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < 2; j++) {
            float t[8];
            _mm256_storeu_ps(t, _mm256_mul_ps(f[i][j], _mm256_set1_ps(inv_sx[i])));
            for (int l = 0; l < 8 && 8 * j + l < n; l++)
                out[i * ldo + 8 * j + l] = t[l] + (bias ? bias[8 * j + l] : 0.f);
        }
}

TGT2 static void int4_panel_avx2(const int8_t *xq, int M, int G, const uint8_t *panel,
                                 const float *xsum, const float *inv_sx, const float *bias, int n,
                                 int32_t *acc_out, long lda, float *out, long ldo) {
    const long bs = (long)G * REC, K32 = 32L * G;
    for (int j = 0; 16 * j < n; j++)
        for (int m = 0; m < M; m += 2) {
            const int8_t *x = xq + m * K32;
            const float *xs = xsum ? xsum + (long)m * G : NULL;
            const float *isx = inv_sx ? inv_sx + m : NULL;
            const float *bj = bias ? bias + 16 * j : NULL;
            int32_t *ao = acc_out ? acc_out + m * lda + 16L * j * G : NULL;
            float *o = out ? out + m * ldo + 16 * j : NULL;
            if (M - m >= 2)
                int4_tile_avx2(x, K32, panel + j * bs, G, 2, xs, isx, bj, n - 16 * j, ao, lda, o,
                               ldo);
            else
                int4_tile_avx2(x, K32, panel + j * bs, G, 1, xs, isx, bj, n - 16 * j, ao, lda, o,
                               ldo);
        }
}
#endif

static void int4_panel(int variant, const int8_t *xq, int M, int G, const uint8_t *packed,
                       int o0, const float *xsum, const float *inv_sx, const float *bias, int n,
                       int32_t *acc_out, long lda, float *out, long ldo) {
    const uint8_t *panel = packed + (size_t)(o0 / 16) * G * REC;
#if TF_X86
    if (variant == TF_GEMM_AVX512) {
        int4_panel_512(xq, M, G, panel, xsum, inv_sx, bias, n, acc_out, lda, out, ldo);
        return;
    }
    if (variant == TF_GEMM_AVX2) {
        int4_panel_avx2(xq, M, G, panel, xsum, inv_sx, bias, n, acc_out, lda, out, ldo);
        return;
    }
#endif
    (void)variant;
    int4_panel_portable(xq, M, G, panel, xsum, inv_sx, bias, n, acc_out, lda, out, ldo);
}

void tf_gemm_int4_raw(int variant, const int8_t *xq, int M, int G, const uint8_t *packed, int o0,
                      int n, int32_t *acc, long lda) {
    int4_panel(variant, xq, M, G, packed, o0, NULL, NULL, NULL, n, acc, lda, NULL, 0);
}

void tf_gemm_int4(int variant, const int8_t *xq, int M, int G, const float *inv_sx,
                  const float *xsum, const uint8_t *packed, const float *bias, int o0, int n,
                  float *out, long ldo) {
    int4_panel(variant, xq, M, G, packed, o0, xsum, inv_sx, bias ? bias + o0 : NULL, n, NULL, 0,
               out + o0, ldo);
}
