/* neon.c - AArch64 Advanced SIMD backend for F32, F16, BF16, Q8 and Q4
 * (Raspberry Pi 5's Cortex-A76, Jetson's A57/A78).
 *
 * F32 / F16 / BF16 (matmul_rows). Summation order (the seam's contract), the
 * same as the AVX2 backend's: each output Y[i, r] is one 8-lane FMA chain -
 * lanes 0-3 and 4-7 held in two q registers - over c = 0, 8, 16, ... from
 * zero, then the fixed reduction ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
 * BF16 widens by a 16-bit shift and F16 by FCVTL, both exact, so results
 * never depend on n, r0 or r1 and agree bitwise with the AVX2 backend.
 *
 * Q8 / Q4 (matmul_rows_q): integer dot products with the int8 activations of
 * vx_quantize_act_q8, in the order engine.h defines: Q8's int32 lane j of a
 * block is the exact sum of the products of elements 4j..4j+3 (lanes 0-3
 * from bytes 0-15, 4-7 from bytes 16-31); Q4's lane j (of 4) adds those of
 * elements 16+4j..16+4j+3 (weights as signed values: Q8's q, Q4's nibble - 8
 * in [-8, 7]). With the dot product extension (FEAT_DotProd: A76, A78) SDOT
 * gives exactly those sums (Q4: a second SDOT into the first); without it
 * (A57) SMULL products (|w * x| <= 128 * 127, fits int16) are added pairwise
 * twice (SADDLP, ADDP) into the same integers. Integer sums are exact in any
 * order, SCVTF of |isum| < 2^16 is exact and FMLA rounds once per lane like
 * fmaf, with the scale dw * dx one float multiply; then Q8's reduction above
 * or Q4's (a0+a2) + (a1+a3). So Q8/Q4 results equal the portable and AVX2
 * backends' bit for bit.
 *
 * Base ARMv8.0 Advanced SIMD is all the float paths use: no FP16 arithmetic
 * (an fp16 product would round). SDOT is only executed when the kernel's
 * HWCAP says the core has it, so vx_backend_neon() still needs only ASIMD
 * and the backend runs on ARMv8.0 cores (Jetson Nano's A57);
 * scripts/aarch64-test.sh runs the tests on an emulated A57 to make sure the
 * compiler, allowed +fp16+dotprod by CMake, did not slip such an instruction
 * into the other paths.
 *
 * The float paths' driver (row blocking, batched tiles, prefetch, attention
 * tiling) is simd_driver.h, shared with the AVX2 backend: this file holds
 * the NEON vector primitives and its Q8/Q4 kernels.
 *
 * Weight data is only guaranteed 2-byte aligned (safetensors.h): F32 rows
 * are loaded as bytes, and the fp16 block scales through memcpy. */
#include <arm_neon.h>
#include <math.h>
#include <string.h>
#include <sys/auxv.h>

#include "engine.h"
#include "quant.h"

#ifndef HWCAP_FP
#define HWCAP_FP (1 << 0)
#endif
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif

#define INLINE static inline __attribute__((always_inline))

/* ---------------- the driver's primitives (simd_driver.h) */

typedef struct {
    float32x4_t lo, hi; /* lanes 0-3 and 4-7 */
} vf8;

/* 4 rows x 2 inputs: 16 accumulator, 4 x and 2 w registers of the 32; 4
 * matrix-vector rows are 8 chains, enough for the FMA latency. */
#define MV_ROWS 4
#define TILE_N 2
#define SIMD_ALIGN 16
#define FUSED_WIDEN 0
#define SCORES_4X2 0

INLINE vf8 vf8_zero(void) {
    vf8 a = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    return a;
}

INLINE vf8 vf8_fma(vf8 a, vf8 w, vf8 x) {
    a.lo = vfmaq_f32(a.lo, w.lo, x.lo);
    a.hi = vfmaq_f32(a.hi, w.hi, x.hi);
    return a;
}

INLINE vf8 vf8_loadu(const float *x) {
    vf8 v = {vld1q_f32(x), vld1q_f32(x + 4)};
    return v;
}

INLINE vf8 vf8_load_a(const float *x) { return vf8_loadu(x); }

INLINE void vf8_storeu(float *o, vf8 v) {
    vst1q_f32(o, v.lo);
    vst1q_f32(o + 4, v.hi);
}

INLINE void vf8_store_a(float *o, vf8 v) { vf8_storeu(o, v); }

INLINE vf8 vf8_bcast(const float *p) {
    const float32x4_t v = vdupq_n_f32(*p);
    vf8 r = {v, v};
    return r;
}

/* ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)) */
INLINE float vf8_hsum(vf8 a) {
    float32x4_t s = vaddq_f32(a.lo, a.hi);                         /* a0+a4 .. a3+a7 */
    float32x2_t t = vadd_f32(vget_low_f32(s), vget_high_f32(s));   /* s0+s2, s1+s3 */
    return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}

INLINE float f16_scalar(uint16_t h) { return vx_f16_to_f32(h); }
INLINE void prefetch_line(const void *p) { __builtin_prefetch(p, 0, 3); }

/* 8 consecutive elements of a plain-dtype row, starting at byte p. */
INLINE vf8 load8(int dt, const uint8_t *p) {
    vf8 v;
    if (dt == VX_DT_F32) {
        v.lo = vreinterpretq_f32_u8(vld1q_u8(p));
        v.hi = vreinterpretq_f32_u8(vld1q_u8(p + 16));
    } else {
        uint16x8_t h = vld1q_u16((const uint16_t *)(const void *)p);
        if (dt == VX_DT_F16) {
            v.lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
            v.hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
        } else { /* BF16: the top half of a float */
            v.lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
            v.hi = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(h), 16));
        }
    }
    return v;
}

/* 8 elements of a KV row (fp16 widened exactly, or float) at element c. */
INLINE vf8 kv_load8(const void *row, int f16, int c) {
    if (f16) return load8(VX_DT_F16, (const uint8_t *)row + (size_t)c * 2);
    return load8(VX_DT_F32, (const uint8_t *)row + (size_t)c * 4);
}


#include "simd_driver.h"

/* Q4's four lanes: (a0+a2) + (a1+a3). */
INLINE float hsum4(float32x4_t a) {
    float32x2_t t = vadd_f32(vget_low_f32(a), vget_high_f32(a));
    return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}

/* ---------------- Q8 / Q4: int8 activations, integer dot products */

/* A block's 32 weights (payload p) as signed bytes in element order (two
 * registers: elements 0-15 and 16-31): Q8's q, Q4's nibble - 8. */
INLINE void q_weights(int dt, const uint8_t *p, int8x16_t *w0, int8x16_t *w1) {
    if (dt == VX_DT_Q8) {
        *w0 = vld1q_s8((const int8_t *)(const void *)p);
        *w1 = vld1q_s8((const int8_t *)(const void *)(p + 16));
    } else {
        uint8x16_t v = vld1q_u8(p);
        *w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), vdupq_n_s8(8));
        *w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vdupq_n_s8(8));
    }
}

/* Lane j = sum of the products of bytes 4j..4j+3 of w and x (j < 4). */
INLINE int32x4_t dot16(int dp, int8x16_t w, int8x16_t x) {
#if defined(__ARM_FEATURE_DOTPROD)
    if (dp) return vdotq_s32(vdupq_n_s32(0), w, x);
#endif
    int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    int16x8_t hi = vmull_high_s8(w, x);
    return vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi));
}

/* Q4's lane j: the products of elements 4j..4j+3 (w0, x0) and 16+4j..
 * 16+4j+3 (w1, x1) in one sum; SDOT accumulates the second into the first. */
INLINE int32x4_t dot32(int dp, int8x16_t w0, int8x16_t x0, int8x16_t w1, int8x16_t x1) {
#if defined(__ARM_FEATURE_DOTPROD)
    if (dp) return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#endif
    return vaddq_s32(dot16(dp, w0, x0), dot16(dp, w1, x1));
}

#define QA 4     /* row stride of the accumulator arrays (= MV_ROWS) */

/* acc + v * lane k of s, one rounding (FMLA by element); k is a constant at
 * every call once the tiles are unrolled, the switch gives the intrinsic its
 * immediate even in an unoptimised build. */
INLINE float32x4_t fma_lane(float32x4_t acc, float32x4_t v, float32x4_t s, int k) {
    switch (k & 3) {
    case 0: return vfmaq_laneq_f32(acc, v, s, 0);
    case 1: return vfmaq_laneq_f32(acc, v, s, 1);
    case 2: return vfmaq_laneq_f32(acc, v, s, 2);
    default: return vfmaq_laneq_f32(acc, v, s, 3);
    }
}
#define QMAX_N 2 /* inputs per tile */
#define QCHUNK 16 /* blocks per chunk of the batched path (512 columns) */

/* Blocks [b0, b1) of R rows (row views w[k]) x N inputs (int8 rows of X at stride
 * cols, scales at stride cols / 32); acc[i * QA + k] carries the chain of
 * (input i, row k) in and out, so splitting the blocks reorders nothing. */
INLINE void qtile(int dp, int dt, int R, int N, const vx_qrow *w, const int8_t *xq,
                  const float *xd, int64_t cols, int64_t b0, int64_t b1, vf8 *acc) {
    const int64_t nblk = cols / VX_QBLOCK;
    vf8 a[QMAX_N][QA];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 8")
        for (int k = 0; k < R; k++) a[i][k] = acc[i * QA + k];
    for (int64_t b = b0; b < b1; b++) {
        int8x16_t x0[QMAX_N], x1[QMAX_N];
        float dx[QMAX_N];
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) {
            const int8_t *p = xq + (size_t)i * cols + b * VX_QBLOCK;
            x0[i] = vld1q_s8(p);
            x1[i] = vld1q_s8(p + 16);
            dx[i] = xd[(size_t)i * nblk + b];
        }
        /* the scales dw_k * dx_i, row k in lane k: a tile of QA rows is QA
         * consecutive rows of one group (q_rows forms no other), whose fp16
         * scales are 8 consecutive bytes: one load, one FCVTL and one FMUL
         * per input (the same IEEE products as scalar multiplies); the FMAs
         * take their lane by element (FMLA by element rounds once too) */
        float32x4_t dw;
        if (R == QA) {
            dw = vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(w[0].scale + (size_t)b * w[0].stride)));
        } else {
            uint16_t h;
            memcpy(&h, w[0].scale + (size_t)b * w[0].stride, 2);
            dw = vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h)));
        }
        float32x4_t s[QMAX_N];
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) s[i] = vmulq_n_f32(dw, dx[i]);
        _Pragma("GCC unroll 8")
        for (int k = 0; k < R; k++) {
            int8x16_t w0, w1;
            q_weights(dt, w[k].payload + (size_t)b * w[k].stride, &w0, &w1);
            _Pragma("GCC unroll 8")
            for (int i = 0; i < N; i++) {
                if (dt == VX_DT_Q4) { /* four lanes, in .lo */
                    a[i][k].lo = fma_lane(a[i][k].lo, vcvtq_f32_s32(dot32(dp, w0, x0[i], w1, x1[i])), s[i], k);
                } else {
                    a[i][k].lo = fma_lane(a[i][k].lo, vcvtq_f32_s32(dot16(dp, w0, x0[i])), s[i], k);
                    a[i][k].hi = fma_lane(a[i][k].hi, vcvtq_f32_s32(dot16(dp, w1, x1[i])), s[i], k);
                }
            }
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 8")
        for (int k = 0; k < R; k++) acc[i * QA + k] = a[i][k];
}

INLINE void q_rows(int dp, int dt, const vx_weight *W, const int8_t *xq, const float *xd, int n,
                   float *Y, int ldy, int64_t r0, int64_t r1) {
    const int64_t cols = W->cols, nblk = cols / VX_QBLOCK;
    /* QA rows x all inputs (two at a time), a chunk of blocks at a time: the
     * rows' chunk and the inputs' chunk (n x 512 bytes) stay in cache; for
     * n == 1 this is the plain matrix-vector stream of QA rows */
    vf8 acc[MAX_N * QA];
    /* tiles of QA rows start at multiples of QA (so lie in one group, whose
     * scales qtile loads at once); rows before or after them one at a time */
    for (int64_t r = r0, rows; r < r1; r += rows) {
        const int64_t next = (r / QA + 1) * QA; /* the next multiple of QA */
        rows = r % QA == 0 && r + QA <= r1 ? QA : (next < r1 ? next : r1) - r;
        vx_qrow w[QA];
        for (int k = 0; k < rows; k++) w[k] = vx_q_row(dt, W->data, W->rows, cols, r + k);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < rows; k++) acc[i * QA + k] = vf8_zero();
        for (int64_t b0 = 0; b0 < nblk; b0 += QCHUNK) {
            const int64_t b1 = nblk - b0 < QCHUNK ? nblk : b0 + QCHUNK;
            for (int i = 0; i < n; i += QMAX_N) {
                const int8_t *x = xq + (size_t)i * cols;
                const float *d = xd + (size_t)i * nblk;
                vf8 *ac = acc + i * QA;
                if (rows == QA) {
                    if (n - i >= 2) qtile(dp, dt, QA, 2, w, x, d, cols, b0, b1, ac);
                    else qtile(dp, dt, QA, 1, w, x, d, cols, b0, b1, ac);
                } else { /* single rows: R = 1 takes w[k]'s own scale */
                    for (int k = 0; k < rows; k++) {
                        if (n - i >= 2) qtile(dp, dt, 1, 2, w + k, x, d, cols, b0, b1, ac + k);
                        else qtile(dp, dt, 1, 1, w + k, x, d, cols, b0, b1, ac + k);
                    }
                }
            }
        }
        for (int i = 0; i < n; i++)
            for (int k = 0; k < rows; k++)
                Y[(size_t)i * ldy + r + k] =
                    dt == VX_DT_Q4 ? hsum4(acc[i * QA + k].lo) : vf8_hsum(acc[i * QA + k]);
    }
}

INLINE int matmul_rows_q(int dp, const vx_weight *W, const int8_t *xq, const float *xd, int n,
                         float *Y, int ldy, int64_t r0, int64_t r1) {
    const int run = q_args(W, n, r0, r1);
    if (run <= 0) return run;
    if (W->dtype == VX_DT_Q8) q_rows(dp, VX_DT_Q8, W, xq, xd, n, Y, ldy, r0, r1);
    else q_rows(dp, VX_DT_Q4, W, xq, xd, n, Y, ldy, r0, r1);
    return 0;
}


/* Two entry points, SDOT or not, so the choice is made once at load. */
static int neon_matmul_rows_q_dot(const vx_weight *W, const int8_t *xq, const float *xd, int n,
                                  float *Y, int ldy, int64_t r0, int64_t r1) {
    return matmul_rows_q(1, W, xq, xd, n, Y, ldy, r0, r1);
}
static int neon_matmul_rows_q_base(const vx_weight *W, const int8_t *xq, const float *xd, int n,
                                   float *Y, int ldy, int64_t r0, int64_t r1) {
    return matmul_rows_q(0, W, xq, xd, n, Y, ldy, r0, r1);
}

static const vx_backend neon_dot = {"neon",  simd_matmul_rows, neon_matmul_rows_q_dot,
                                    DTYPES,  simd_attn_scores, simd_attn_values};
static const vx_backend neon_base = {"neon", simd_matmul_rows, neon_matmul_rows_q_base,
                                     DTYPES, simd_attn_scores, simd_attn_values};

const vx_backend *vx_backend_neon(void) {
    unsigned long hw = getauxval(AT_HWCAP);
    if (!(hw & HWCAP_FP) || !(hw & HWCAP_ASIMD)) return NULL;
    return (hw & HWCAP_ASIMDDP) ? &neon_dot : &neon_base;
}
