/* avx2.c - x86-64 AVX2 + FMA backend for F32, F16, BF16, Q8 and Q4.
 *
 * F32 / F16 / BF16 (matmul_rows). Summation order (the seam's contract):
 * every output Y[i, r] is one chain of 8-lane FMAs,
 * acc = fma(w[c..c+8), x[c..c+8), acc) for c = 0, 8, 16, ... starting from
 * zero, then hsum8(). BF16/F16 widen exactly, so all paths below -
 * matrix-vector, register-blocked batches, odd row counts - give bitwise the
 * same Y[i, r] whatever n, r0 or r1. Only the schedule differs:
 *
 *  n == 1 (decoder step, memory bound): MV_ROWS rows are streamed at once,
 *    widened in registers and FMA'd with one shared load of x; their
 *    independent chains hide the FMA latency, and the weights are read
 *    exactly once with nothing written back to memory.
 *  n >= 2 (encoder, prefill; compute bound): a CHUNK of BR rows is widened
 *    once into an L1-resident buffer, then 4-row x 3-input register tiles
 *    walk it: each widened weight vector feeds three inputs and each x vector
 *    four rows (7 loads per 12 FMAs), and the x chunk of three inputs is
 *    reused from L1 by all BR rows. The next chunk is prefetched meanwhile.
 *
 * Q8 / Q4 (matmul_rows_q): integer dot products with the int8 activations of
 * vx_quantize_act_q8, in the order engine.h defines (one int32 sum per
 * block, one float chain per output). The kernels are x86_q.h's, compiled
 * here with vpmaddubsw + vpmaddwd (|w| x sign(x, w): a pair is at most
 * 2 * 128 * 127 = 32512, no int16 saturation) and in avxvnni.c /
 * avx512vnni.c with vpdpbusd; the integer sums are exact, so all give the
 * portable backend's bits. x86_q.h explains its three schedules.
 *
 * The float paths' driver (row blocking, batched tiles, prefetch, attention
 * tiling) is simd_driver.h, shared with the NEON backend: this file holds
 * AVX2's vector primitives and reductions.
 *
 * Weight data is only guaranteed 2-byte aligned (safetensors.h), so every
 * load is an unaligned one and nothing wider than 2 bytes is dereferenced
 * through a typed pointer. */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "engine.h"
#include "quant.h"

#define INLINE static inline __attribute__((always_inline))

#define XQ_VNNI 0
#include "x86_q.h"

/* hsum8 of eight vectors at once, the same additions in the same order:
 * one vaddps of 128-bit halves for two vectors, then two rounds of vhaddps
 * on lanes put in the order (s0, s2, s1, s3), so every result is
 * (s0 + s2) + (s1 + s3) with s_l = a_l + a_{l+4}, as in hsum8. A score
 * tile's 8 dot products of 8 FMAs each spent as much on single hsum8s as
 * on the FMAs. r = [hsum8(v0), hsum8(v2), hsum8(v4), hsum8(v6),
 *                   hsum8(v1), hsum8(v3), hsum8(v5), hsum8(v7)]. */
INLINE __m256 hsum8_pair(__m256 a, __m256 b) {
    const __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20),
                                   _mm256_permute2f128_ps(a, b, 0x31));
    return _mm256_permute_ps(s, _MM_SHUFFLE(3, 1, 2, 0));
}

INLINE void hsum8x8(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 v4, __m256 v5, __m256 v6,
                    __m256 v7, float *r) {
    const __m256 h01 = _mm256_hadd_ps(hsum8_pair(v0, v1), hsum8_pair(v2, v3));
    const __m256 h23 = _mm256_hadd_ps(hsum8_pair(v4, v5), hsum8_pair(v6, v7));
    _mm256_store_ps(r, _mm256_hadd_ps(h01, h23));
}

/* ---------------- the driver's primitives (simd_driver.h) */

typedef __m256 vf8;

/* MV_ROWS chains cover the FMA latency (4-5 cycles x 2 ports); with 4 the
 * loop was latency bound. 4 rows x 3 inputs: 12 accumulators + 3 x + 1 w =
 * the 16 ymm registers, 7 loads per 12 FMAs. */
#define MV_ROWS 8
#define TILE_N 3
#define SIMD_ALIGN 32
#define FUSED_WIDEN 1
#define SCORES_4X2 1

INLINE vf8 vf8_zero(void) { return _mm256_setzero_ps(); }
INLINE vf8 vf8_fma(vf8 acc, vf8 a, vf8 b) { return _mm256_fmadd_ps(a, b, acc); }
INLINE vf8 vf8_loadu(const float *p) { return _mm256_loadu_ps(p); }
INLINE vf8 vf8_load_a(const float *p) { return _mm256_load_ps(p); }
INLINE void vf8_store_a(float *p, vf8 v) { _mm256_store_ps(p, v); }
INLINE void vf8_storeu(float *p, vf8 v) { _mm256_storeu_ps(p, v); }
INLINE vf8 vf8_bcast(const float *p) { return _mm256_broadcast_ss(p); }
INLINE float vf8_hsum(vf8 v) { return hsum8(v); }
INLINE float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }
INLINE void prefetch_line(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

/* 8 consecutive elements of a plain-dtype row, starting at byte p. */
INLINE __m256 load8(int dt, const uint8_t *p) {
    if (dt == VX_DT_F32) return _mm256_loadu_ps((const float *)(const void *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    if (dt == VX_DT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* BF16 */
}

/* 8 elements of a KV row (fp16 widened exactly, or float) at element c. */
INLINE __m256 kv_load8(const void *row, int f16, int c) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)row + c)));
    return _mm256_loadu_ps((const float *)row + c);
}


/* A 4 x 2 score tile's eight reductions at once (hsum8x8). */
INLINE void scores_store_4x2(vf8 a[4][2], float *S, size_t lds, int64_t t) {
    float r[8] __attribute__((aligned(32)));
    hsum8x8(a[0][0], a[0][1], a[1][0], a[1][1], a[2][0], a[2][1], a[3][0], a[3][1], r);
    for (int i = 0; i < 4; i++) {
        S[(size_t)i * lds + (size_t)t] = r[i];
        S[(size_t)i * lds + (size_t)t + 1] = r[4 + i];
    }
}

#include "simd_driver.h"

int vx_avx2_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                        int64_t r0, int64_t r1) {
    return simd_matmul_rows(W, X, n, ldx, Y, ldy, r0, r1);
}
void vx_avx2_attn_scores(const float *const *q, int nq, const void *K, int f16, size_t ldk,
                         int64_t nk, int hd, float *S, size_t lds) {
    simd_attn_scores(q, nq, K, f16, ldk, nk, hd, S, lds);
}
void vx_avx2_attn_values(const float *P, size_t ldp, int nq, const void *V, int f16, size_t ldv,
                         int64_t nk, int hd, float *const *o) {
    simd_attn_values(P, ldp, nq, V, f16, ldv, nk, hd, o);
}

/* vx_quantize_act_q8 (quant.h) a block in 4 ymm registers, for every x86
 * backend: the same operations per element (abs, max, the scale's multiply,
 * round half to even, clamp), so the same bytes. On a Zen 4 core a 9216-wide
 * row took 0.27-0.31 ns per element against 0.97-0.99 for the SSE2 4-lane
 * code, which stores its bytes one at a time. vcvtps2dq rounds half to even
 * as vx_round4 does (for |x| <= 2^22; here |x| <= 128). This file may fuse
 * a multiply into an add, but nothing here adds a product. */
void vx_avx2_quantize_act(const float *x, int64_t cols, int8_t *q, float *d, int32_t *s) {
    const __m256 abs_bits = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 fmax = _mm256_set1_ps(FLT_MAX);
    const __m256i lim = _mm256_set1_epi32(127), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < cols / VX_QBLOCK; b++) {
        const float *xb = x + b * VX_QBLOCK;
        __m256 v[4], a[4];
        int finite = 1;
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            a[k] = _mm256_and_ps(v[k], abs_bits);
            /* false for Inf and NaN */
            finite &= _mm256_movemask_ps(_mm256_cmp_ps(a[k], fmax, _CMP_LE_OQ)) == 0xff;
        }
        int8_t *o = q + b * VX_QBLOCK;
        if (!finite) {
            memset(o, 0, VX_QBLOCK);
            d[b] = NAN;
            s[b] = 0;
            continue;
        }
        /* all finite: the maximum is exact in any order */
        const __m256 m8 = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        if (amax == 0) {
            memset(o, 0, VX_QBLOCK);
            d[b] = 0.0f;
            s[b] = 0;
            continue;
        }
        float sc, inv;
        vx_act_block_factors(amax, &sc, &inv);
        d[b] = amax / 127.0f;
        __m256i n[4];
        for (int k = 0; k < 4; k++) {
            const __m256 t = _mm256_mul_ps(_mm256_mul_ps(v[k], _mm256_set1_ps(sc)), _mm256_set1_ps(inv));
            n[k] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(t), lim), _mm256_sub_epi32(_mm256_setzero_si256(), lim));
        }
        /* int32 -> int8 (in range: the packs do not saturate), then the
         * 128-bit lanes' dwords back in element order */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
        _mm256_storeu_si256((__m256i *)(void *)o, _mm256_permutevar8x32_epi32(p, order));
        const __m256i t8 = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t8), _mm256_extracti128_si256(t8, 1));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, _MM_SHUFFLE(1, 0, 3, 2)));
        s[b] = _mm_cvtsi128_si32(_mm_add_epi32(t4, _mm_shuffle_epi32(t4, _MM_SHUFFLE(2, 3, 0, 1))));
    }
}

static const vx_backend avx2 = {"avx2",           simd_matmul_rows, x86_matmul_rows_q,
                                VX_WEIGHT_DTYPES, simd_attn_scores, simd_attn_values,
                                vx_avx2_quantize_act, vx_avx2_swiglu};

const vx_backend *vx_backend_avx2(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return &avx2;
    return NULL;
}
