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
 * vx_quantize_act_q8, as engine.h defines them: per block one int32 sum of
 * its 32 products, then one float chain per output, acc = fma((float)isum,
 * dw * dx, acc). Output rows sit in vector lanes, so that conversion and
 * FMA cost one instruction per 4 rows and block (not per 4 weights):
 *  - a tile is 4 rows of one row group (8 for n == 1: the group's whole
 *    contiguous stream), whose fp16 scales per block are consecutive (one
 *    load, one FCVTL per 4), times 1 or 2 inputs (n >= 2: each weight
 *    register is loaded and unpacked once for two inputs);
 *  - each row keeps a running int32x4 accumulator over the tile's blocks:
 *    SDOT (FEAT_DotProd: A76, A78), or without it SMULL (|w * x| <= 128 *
 *    127 fits int16) and SADALP (A57). Three pairwise adds (ADDP) per 4 rows
 *    put the 4 rows' running totals in one vector's lanes, and this
 *    block's isum is the difference from the previous block's totals (exact
 *    mod 2^32, as isum fits in int32): one SUB per 4 rows instead of zeroing
 *    every row's accumulator every block;
 *  - Q4 multiplies the plain nibbles (0..15: one AND and one USHR per 16
 *    bytes, no sign fix-up) and adds -8 * sum(x) of the block (from the
 *    quantizer's block sums, once per input and block for all rows:
 *    q_corr): one ADD per 4 rows;
 *  - the columns go in passes, all rows in each, the chains carried over in
 *    Y: for n >= 2 passes of 512 columns, so the inputs' chunk stays in L1
 *    while the weights stream; for n == 1 a single pass (Q4: 32768 columns,
 *    the room for its corrections);
 *  - (float)isum is exact (|isum| < 2^24), dw * dx is one FMUL and FMLA
 *    rounds once, like fmaf. So Q8/Q4 results equal the portable backend's
 *    bit for bit, whatever n, r0, r1, the tiling or the passes.
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
#include "neon.h"
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

/* ---------------- Q8 / Q4: int8 activations, integer dot products */

/* A block's 32 weights of one row (payload p) as two registers of bytes,
 * w0 against activations 0-15 and w1 against 16-31: Q8's q as stored; Q4's
 * nibbles as they are (0..15: a mask and a shift per 16 bytes), the - 8 of
 * every weight being added once per block and input as -8 * sum(x) (q_corr). */
INLINE void q_weights(int dt, const uint8_t *p, int8x16_t *w0, int8x16_t *w1) {
    if (dt == VX_DT_Q8) {
        *w0 = vld1q_s8((const int8_t *)(const void *)p);
        *w1 = vld1q_s8((const int8_t *)(const void *)(p + 16));
    } else {
        const uint8x16_t v = vld1q_u8(p);
        *w0 = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
        *w1 = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    }
}

/* a + the products of w and x, four per lane (which four does not matter:
 * only the sum of the lanes is used). SDOT; without it SMULL (|w * x| <=
 * 128 * 127 fits int16) and pairwise add-accumulate into the int32 lanes. */
INLINE int32x4_t dot_acc(int dp, int32x4_t a, int8x16_t w, int8x16_t x) {
#if defined(__ARM_FEATURE_DOTPROD)
    if (dp) return vdotq_s32(a, w, x);
#endif
    a = vpadalq_s16(a, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
    return vpadalq_s16(a, vmull_high_s8(w, x));
}

#define QV_MAX 2       /* vectors of 4 rows per tile: 8 rows (a group) for n == 1 */
#define QN_MAX 2       /* inputs per tile */
#define QCHUNK 16      /* blocks per pass for n >= 2 (512 columns) */
#define QCORR_MAX 1024 /* Q4 corrections per pass: inputs x blocks */
_Static_assert(MAX_N * QCHUNK <= QCORR_MAX, "a pass of n >= 2 inputs must fit the corrections");

/* Q4's correction of inputs [0, n), blocks [c0, c1): corr[i * (c1 - c0) +
 * b - c0] = -8 * the sum of block b's 32 activations of input i (the
 * quantizer's xs[i * nblk + b]). The inner loop adds it from memory (one
 * LD1R), which keeps its registers as they are. */
static void q_corr(const int32_t *xs, int n, int64_t nblk, int64_t c0, int64_t c1, int32_t *corr) {
    for (int i = 0; i < n; i++)
        for (int64_t b = c0; b < c1; b++)
            corr[(int64_t)i * (c1 - c0) + b - c0] = -8 * xs[(size_t)i * (size_t)nblk + (size_t)b];
}

/* The rows of a tile: consecutive rows of one group (the first row's
 * payload and scale of block 0, the group's block stride, the row count).
 * A partial tile (fewer than 4 rows) repeats its last row in the spare
 * lanes. */
typedef struct {
    const uint8_t *pay, *sc;
    size_t stride;
    int rows;
} qtile_rows;

/* Offset of lane k's payload from the tile's first row. */
INLINE size_t q_lane_off(int dt, int full, const qtile_rows *t, int k) {
    const size_t pb = dt == VX_DT_Q8 ? 32 : 16;
    return (size_t)(full || k < t->rows ? k : t->rows - 1) * pb;
}

/* One block b of the tile: NV vectors of 4 rows x N inputs. ia[i][k] is
 * row k's running int32 dot product with input i (its lanes summed are the
 * total over the tile's blocks so far; never reset inside the tile, which
 * saves a zeroing per row and block); pairwise adds put the 4 rows' totals
 * in the lanes of one vector and the difference from the previous block's
 * (rin) is this block's isum, exact mod 2^32 as it fits in int32 (Q4: plus
 * its correction, cr[i * cs]). Then one SCVTF, one FMUL (dw * dx) and one
 * FMLA per 4 rows and input. */
INLINE void q_step(int dp, int dt, int NV, int N, int full, const qtile_rows *t,
                   const int8_t *xq, const float *xd, const int32_t *cr, int64_t cs,
                   int64_t cols, int64_t b, int32x4_t ia[QN_MAX][4 * QV_MAX],
                   const int32x4_t *rin, int32x4_t *rout, float32x4_t *acc) {
    const int64_t nblk = cols / VX_QBLOCK;
    int8x16_t x0[QN_MAX], x1[QN_MAX];
    float dx[QN_MAX];
    _Pragma("GCC unroll 4")
    for (int i = 0; i < N; i++) {
        const int8_t *p = xq + (size_t)i * (size_t)cols + (size_t)b * VX_QBLOCK;
        x0[i] = vld1q_s8(p);
        x1[i] = vld1q_s8(p + 16);
        dx[i] = xd[(size_t)i * (size_t)nblk + (size_t)b];
    }
    /* the rows' fp16 scales, row order: consecutive in the group */
    const uint8_t *sc = t->sc + (size_t)b * t->stride;
    float32x4_t dw[QV_MAX];
    if (NV == 2) {
        const uint8x16_t h = vld1q_u8(sc);
        dw[0] = vcvt_f32_f16(vreinterpret_f16_u8(vget_low_u8(h)));
        dw[1] = vcvt_high_f32_f16(vreinterpretq_f16_u8(h));
    } else if (full) {
        dw[0] = vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(sc)));
    } else {
        uint16_t h[4];
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) memcpy(&h[k], sc + 2 * (k < t->rows ? k : t->rows - 1), 2);
        dw[0] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
    }
    const uint8_t *p = t->pay + (size_t)b * t->stride;
    _Pragma("GCC unroll 8")
    for (int k = 0; k < 4 * NV; k++) {
        int8x16_t w0, w1;
        q_weights(dt, p + q_lane_off(dt, full, t, k), &w0, &w1);
        _Pragma("GCC unroll 4")
        for (int i = 0; i < N; i++)
            ia[i][k] = dot_acc(dp, dot_acc(dp, ia[i][k], w0, x0[i]), w1, x1[i]);
    }
    _Pragma("GCC unroll 4")
    for (int i = 0; i < N; i++) {
        _Pragma("GCC unroll 2")
        for (int v = 0; v < NV; v++) {
            const int32x4_t r = vpaddq_s32(vpaddq_s32(ia[i][4 * v], ia[i][4 * v + 1]),
                                           vpaddq_s32(ia[i][4 * v + 2], ia[i][4 * v + 3]));
            int32x4_t s = vsubq_s32(r, rin[i * NV + v]);
            if (dt == VX_DT_Q4) s = vaddq_s32(s, vld1q_dup_s32(cr + i * cs));
            const float32x4_t scale = vmulq_n_f32(dw[v], dx[i]); /* dw * dx, per lane */
            acc[i * NV + v] = vfmaq_f32(acc[i * NV + v], vcvtq_f32_s32(s), scale);
            rout[i * NV + v] = r;
        }
    }
}

/* Blocks [b0, b1) of the tile's rows x N inputs (int8 rows of X at stride
 * cols, scales at stride cols / 32; Q4 corrections of block b at
 * corr[i * cs + b - b0]); acc[i * NV + v] (lane k: row 4v + k) carries the
 * float chain of input i in and out, so splitting the blocks reorders
 * nothing. Two blocks per iteration, so the two sets of row totals swap
 * roles without a register move. */
INLINE void q_tile(int dp, int dt, int NV, int N, int full, const qtile_rows *t,
                   const int8_t *xq, const float *xd, const int32_t *corr, int64_t cs,
                   int64_t cols, int64_t b0, int64_t b1, float32x4_t *acc) {
    int32x4_t ia[QN_MAX][4 * QV_MAX], ra[QN_MAX * QV_MAX], rb[QN_MAX * QV_MAX];
    float32x4_t a[QN_MAX * QV_MAX];
    _Pragma("GCC unroll 4")
    for (int i = 0; i < N; i++) {
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 4 * NV; k++) ia[i][k] = vdupq_n_s32(0);
        _Pragma("GCC unroll 2")
        for (int v = 0; v < NV; v++) {
            ra[i * NV + v] = vdupq_n_s32(0);
            a[i * NV + v] = acc[i * NV + v];
        }
    }
    int64_t b = b0;
    for (; b + 1 < b1; b += 2) {
        q_step(dp, dt, NV, N, full, t, xq, xd, corr + (b - b0), cs, cols, b, ia, ra, rb, a);
        /* keeps the second block's loads (and so its SDOTs) after the
         * first's: hoisted, they cost spills and register copies */
        __asm__ __volatile__("" ::: "memory");
        q_step(dp, dt, NV, N, full, t, xq, xd, corr + (b + 1 - b0), cs, cols, b + 1, ia, rb, ra, a);
    }
    if (b < b1) q_step(dp, dt, NV, N, full, t, xq, xd, corr + (b - b0), cs, cols, b, ia, ra, rb, a);
    _Pragma("GCC unroll 4")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 2")
        for (int v = 0; v < NV; v++) acc[i * NV + v] = a[i * NV + v];
}

/* Y rows [r, r + rows) of inputs [0, n), 4 rows per vector (acc[i * nv + v]):
 * loaded (a pass after the first carries the chains on) or stored. */
INLINE void q_acc_io(int store, float32x4_t *acc, int n, int nv, int rows, float *Y, int ldy,
                     int64_t r) {
    for (int i = 0; i < n; i++)
        for (int v = 0; v < nv; v++) {
            float *y = Y + (size_t)i * (size_t)ldy + (size_t)r + (size_t)(4 * v);
            float32x4_t *a = acc + i * nv + v;
            if (rows >= 4 * (v + 1)) {
                if (store) vst1q_f32(y, *a);
                else *a = vld1q_f32(y);
            } else {
                float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                if (store) vst1q_f32(o, *a);
                for (int k = 0; k < rows - 4 * v; k++) {
                    if (store) y[k] = o[k];
                    else o[k] = y[k];
                }
                if (!store) *a = vld1q_f32(o);
            }
        }
}

/* Blocks [c0, c1) of one tile's rows (at row r of Y) x all n inputs; the
 * float chains start at 0 (c0 == 0) or at Y, and end in Y. NV = 2 (a whole
 * group) is for n == 1; otherwise tiles of 4 rows x 2 inputs (the last one
 * alone when n is odd), so each weight register is loaded and unpacked once
 * per two inputs. */
INLINE void q_pass(int dp, int dt, int NV, int full, const qtile_rows *t, const vx_qact *X,
                   const int32_t *corr, int n, int64_t cols, int64_t c0, int64_t c1, float *Y,
                   int ldy, int64_t r) {
    const int64_t nblk = cols / VX_QBLOCK, cs = c1 - c0;
    float32x4_t acc[MAX_N * QV_MAX];
    if (c0 == 0)
        for (int j = 0; j < n * NV; j++) acc[j] = vdupq_n_f32(0.0f);
    else
        q_acc_io(0, acc, n, NV, t->rows, Y, ldy, r);
    for (int i = 0; i < n; i += QN_MAX) {
        const int8_t *x = X->q + (size_t)i * (size_t)cols;
        const float *d = X->d + (size_t)i * (size_t)nblk;
        const int32_t *cr = corr + (int64_t)i * cs;
        if (n - i >= 2 && NV == 1)
            q_tile(dp, dt, 1, 2, full, t, x, d, cr, cs, cols, c0, c1, acc + i);
        else q_tile(dp, dt, NV, 1, full, t, x, d, cr, cs, cols, c0, c1, acc + i * NV);
        if (NV == 2) break; /* n == 1 */
    }
    q_acc_io(1, acc, n, NV, t->rows, Y, ldy, r);
}

INLINE void q_rows(int dp, int dt, const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                   int64_t r0, int64_t r1) {
    const int64_t cols = W->cols, nblk = cols / VX_QBLOCK;
    /* Passes over column ranges, all rows in each: n == 1 streams each
     * group's rows over all blocks at once (Q4: up to QCORR_MAX blocks, the
     * room for its corrections); n >= 2 takes QCHUNK blocks at a time, so
     * the inputs' chunk (n x 512 bytes) stays in L1 while every row tile
     * streams its part of the weights. */
    const int64_t pass = n > 1 ? QCHUNK : dt == VX_DT_Q4 ? QCORR_MAX : nblk;
    int32_t corr[QCORR_MAX];
    if (nblk == 0) /* no columns: empty sums */
        for (int i = 0; i < n; i++)
            for (int64_t r = r0; r < r1; r++) Y[(size_t)i * (size_t)ldy + (size_t)r] = 0.0f;
    for (int64_t c0 = 0; c0 < nblk; c0 += pass) {
        const int64_t c1 = nblk - c0 < pass ? nblk : c0 + pass;
        if (dt == VX_DT_Q4) q_corr(X->s, n, nblk, c0, c1, corr);
        /* tiles never cross a group (their rows' scales are consecutive):
         * n == 1 takes a whole group of 8 as one tile (one contiguous
         * stream), otherwise 4 rows; the 1-3 rows left in a group form a
         * partial tile */
        for (int64_t r = r0, rows; r < r1; r += rows) {
            const int64_t g0 = r - r % VX_QGROUP;
            const int64_t gend = g0 + VX_QGROUP < W->rows ? g0 + VX_QGROUP : W->rows;
            const int64_t e = gend < r1 ? gend : r1;
            const vx_qrow w = vx_q_row(dt, W->data, W->rows, cols, r);
            rows = e - r >= 8 && n == 1 ? 8 : e - r >= 4 ? 4 : e - r;
            const qtile_rows t = {w.payload, w.scale, w.stride, (int)rows};
            if (rows == 8) q_pass(dp, dt, 2, 1, &t, X, corr, n, cols, c0, c1, Y, ldy, r);
            else if (rows == 4) q_pass(dp, dt, 1, 1, &t, X, corr, n, cols, c0, c1, Y, ldy, r);
            else q_pass(dp, dt, 1, 0, &t, X, corr, n, cols, c0, c1, Y, ldy, r);
        }
    }
}

INLINE int matmul_rows_q(int dp, const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                         int64_t r0, int64_t r1) {
    const int run = q_args(W, n, r0, r1);
    if (run <= 0) return run;
    if (W->dtype == VX_DT_Q8) q_rows(dp, VX_DT_Q8, W, X, n, Y, ldy, r0, r1);
    else q_rows(dp, VX_DT_Q4, W, X, n, Y, ldy, r0, r1);
    return 0;
}

/* Two entry points, SDOT or not, so the choice is made once at load. */
int vx_neon_matmul_rows_q_dot(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                              int64_t r0, int64_t r1) {
    return matmul_rows_q(1, W, X, n, Y, ldy, r0, r1);
}
static int neon_matmul_rows_q_base(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                                   int64_t r0, int64_t r1) {
    return matmul_rows_q(0, W, X, n, Y, ldy, r0, r1);
}

/* The float paths, for neon_i8mm.c too. */
int vx_neon_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                        int64_t r0, int64_t r1) {
    return simd_matmul_rows(W, X, n, ldx, Y, ldy, r0, r1);
}
void vx_neon_attn_scores(const float *const *q, int nq, const void *K, int f16, size_t ldk,
                         int64_t nk, int hd, float *S, size_t lds) {
    simd_attn_scores(q, nq, K, f16, ldk, nk, hd, S, lds);
}
void vx_neon_attn_values(const float *P, size_t ldp, int nq, const void *V, int f16, size_t ldv,
                         int64_t nk, int hd, float *const *o) {
    simd_attn_values(P, ldp, nq, V, f16, ldv, nk, hd, o);
}

static const vx_backend neon_dot = {"neon",           simd_matmul_rows, vx_neon_matmul_rows_q_dot,
                                    VX_WEIGHT_DTYPES, simd_attn_scores, simd_attn_values,
                                    vx_quantize_act_q8, vx_swiglu4};
static const vx_backend neon_base = {"neon",           simd_matmul_rows, neon_matmul_rows_q_base,
                                     VX_WEIGHT_DTYPES, simd_attn_scores, simd_attn_values,
                                     vx_quantize_act_q8, vx_swiglu4};

const vx_backend *vx_backend_neon(void) {
    unsigned long hw = getauxval(AT_HWCAP);
    if (!(hw & HWCAP_FP) || !(hw & HWCAP_ASIMD)) return NULL;
    return (hw & HWCAP_ASIMDDP) ? &neon_dot : &neon_base;
}
