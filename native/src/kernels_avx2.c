/* kernels_avx2.c - x86-64 AVX2 + FMA backend. A chunk of a weight row is
 * widened to float once and reused for every input row of the batch, so
 * batched (encoder, prefill) work reads each weight once per call. Per output
 * the summation order is fixed: 8 lanes, chunk by chunk, one final reduce. */
#include <immintrin.h>
#include <string.h>

#include "engine.h"
#include "quant.h"

#define CHUNK 256
#define MAX_N 64

static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Widen len (multiple of 8) elements of a row, starting at c0, to float. */
static void widen(int dtype, const uint8_t *row, int64_t c0, int64_t len, float *out) {
    if (dtype == VX_DT_BF16) {
        const uint16_t *p = (const uint16_t *)(const void *)row + c0;
        for (int64_t c = 0; c < len; c += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(p + c));
            __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            _mm256_storeu_ps(out + c, _mm256_castsi256_ps(w));
        }
    } else if (dtype == VX_DT_F16) {
        const uint16_t *p = (const uint16_t *)(const void *)row + c0;
        for (int64_t c = 0; c < len; c += 8)
            _mm256_storeu_ps(out + c, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p + c))));
    } else if (dtype == VX_DT_F32) {
        memcpy(out, row + c0 * 4, (size_t)len * 4);
    } else {
        vx_row_to_f32(dtype, row, c0, len, out);
    }
}

static int avx2_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                            int64_t r0, int64_t r1) {
    if (n > MAX_N || W->cols % 8 != 0) return -1;
    const int64_t cols = W->cols;
    const size_t row_bytes = vx_row_bytes(W->dtype, cols);
    float wbuf[CHUNK] __attribute__((aligned(32)));
    __m256 acc[MAX_N];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)W->data + (size_t)r * row_bytes;
        for (int i = 0; i < n; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            int64_t len = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            if (n == 1 && W->dtype == VX_DT_BF16) {
                /* matrix-vector: fuse the widening into the FMA loop */
                const uint16_t *p = (const uint16_t *)(const void *)row + c0;
                const float *x = X + c0;
                __m256 a = acc[0];
                for (int64_t c = 0; c < len; c += 8) {
                    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(p + c));
                    __m256 w = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
                    a = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + c), a);
                }
                acc[0] = a;
                continue;
            }
            widen(W->dtype, row, c0, len, wbuf);
            for (int i = 0; i < n; i++) {
                const float *x = X + (size_t)i * ldx + c0;
                __m256 a = acc[i];
                for (int64_t c = 0; c < len; c += 8)
                    a = _mm256_fmadd_ps(_mm256_load_ps(wbuf + c), _mm256_loadu_ps(x + c), a);
                acc[i] = a;
            }
        }
        for (int i = 0; i < n; i++) Y[(size_t)i * ldy + r] = hsum8(acc[i]);
    }
    return 0;
}

static const vx_backend avx2 = {"avx2", avx2_matmul_rows,
                                (1u << VX_DT_F32) | (1u << VX_DT_F16) | (1u << VX_DT_BF16)};

const vx_backend *vx_backend_avx2(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return &avx2;
    return NULL;
}
