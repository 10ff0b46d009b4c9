/* kernels_neon.c - AArch64 Advanced SIMD backend for F32, F16, BF16, Q8 and Q4
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
 * ci/aarch64-test.sh runs the tests on an emulated A57 to make sure the
 * compiler, allowed +fp16+dotprod by CMake, did not slip such an instruction
 * into the other paths.
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

#define CHUNK 512 /* columns widened at a time: BR rows x 2 KB stay in L1 */
#define BR 8      /* rows per block of the batched path */
#define MAX_N 64  /* rows of X per call (kernels.c's BATCH) */
#define MV_ROWS 4 /* rows per matrix-vector step: 8 chains cover FMA latency */

#define DTYPES                                                                               \
    ((1u << VX_DT_F32) | (1u << VX_DT_F16) | (1u << VX_DT_BF16) | (1u << VX_DT_Q8) |          \
     (1u << VX_DT_Q4))

#define INLINE static inline __attribute__((always_inline))

typedef struct {
    float32x4_t lo, hi; /* lanes 0-3 and 4-7 */
} acc8;

typedef struct {
    float32x4_t lo, hi;
} f8; /* 8 consecutive weights or inputs */

INLINE acc8 acc_zero(void) {
    acc8 a = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    return a;
}

INLINE acc8 fma8(acc8 a, f8 w, f8 x) {
    a.lo = vfmaq_f32(a.lo, w.lo, x.lo);
    a.hi = vfmaq_f32(a.hi, w.hi, x.hi);
    return a;
}

INLINE float hsum8(acc8 a) {
    float32x4_t s = vaddq_f32(a.lo, a.hi);                         /* a0+a4 .. a3+a7 */
    float32x2_t t = vadd_f32(vget_low_f32(s), vget_high_f32(s));   /* s0+s2, s1+s3 */
    return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}

/* Q4's four lanes: (a0+a2) + (a1+a3). */
INLINE float hsum4(float32x4_t a) {
    float32x2_t t = vadd_f32(vget_low_f32(a), vget_high_f32(a));
    return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}

INLINE f8 load_x(const float *x) {
    f8 v = {vld1q_f32(x), vld1q_f32(x + 4)};
    return v;
}

/* A block's fp16 scale in all four lanes, by FCVTL (base ARMv8, exact). */
INLINE float32x4_t scale_of(const uint8_t *blk) {
    uint16_t h;
    memcpy(&h, blk, 2);
    return vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h)));
}

INLINE size_t elem_bytes(int dt) { return dt == VX_DT_F32 ? 4 : 2; }

/* 8 consecutive elements of a plain-dtype row, starting at byte p. */
INLINE f8 load8(int dt, const uint8_t *p) {
    f8 v;
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

/* ---------------- n == 1: matrix-vector, weights dequantized in registers */

/* Rows w[0..R) (R = 1 or MV_ROWS, a compile-time constant at each call). */
INLINE void matvec_rows(int dt, int R, const uint8_t *const *w, const float *x, int64_t cols,
                        float *y) {
    acc8 a[MV_ROWS];
    for (int k = 0; k < R; k++) a[k] = acc_zero();
    const size_t es = elem_bytes(dt);
    for (int64_t c = 0; c < cols; c += 8) {
        f8 xv = load_x(x + c);
        for (int k = 0; k < R; k++) a[k] = fma8(a[k], load8(dt, w[k] + (size_t)c * es), xv);
    }
    for (int k = 0; k < R; k++) y[k] = hsum8(a[k]);
}

INLINE void matvec(int dt, const uint8_t *base, size_t row_bytes, const float *x, int64_t cols,
                   float *Y, int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + MV_ROWS <= r1; r += MV_ROWS) {
        const uint8_t *w[MV_ROWS];
        for (int k = 0; k < MV_ROWS; k++) w[k] = base + (size_t)(r + k) * row_bytes;
        matvec_rows(dt, MV_ROWS, w, x, cols, Y + r);
    }
    for (; r < r1; r++) {
        const uint8_t *w[1] = {base + (size_t)r * row_bytes};
        matvec_rows(dt, 1, w, x, cols, Y + r);
    }
}

/* One function per dtype so each inner loop is compiled for its dtype. */
static void matvec_f32(const uint8_t *b, size_t rb, const float *x, int64_t c, float *Y, int64_t r0, int64_t r1) { matvec(VX_DT_F32, b, rb, x, c, Y, r0, r1); }
static void matvec_f16(const uint8_t *b, size_t rb, const float *x, int64_t c, float *Y, int64_t r0, int64_t r1) { matvec(VX_DT_F16, b, rb, x, c, Y, r0, r1); }
static void matvec_bf16(const uint8_t *b, size_t rb, const float *x, int64_t c, float *Y, int64_t r0, int64_t r1) { matvec(VX_DT_BF16, b, rb, x, c, Y, r0, r1); }

/* ---------------- n >= 2: widen a chunk once, register-blocked tiles */

INLINE void store8(float *o, f8 v) {
    vst1q_f32(o, v.lo);
    vst1q_f32(o + 4, v.hi);
}

/* Widen elements [c0, c0+len) of a row (multiples of 8) to float: the very
 * values the matrix-vector path feeds to its FMAs. */
static void widen(int dt, const uint8_t *row, int64_t c0, int64_t len, float *out) {
    const uint8_t *p = row + (size_t)c0 * elem_bytes(dt);
    if (dt == VX_DT_F32)
        for (int64_t c = 0; c < len; c += 8) store8(out + c, load8(VX_DT_F32, p + c * 4));
    else if (dt == VX_DT_F16)
        for (int64_t c = 0; c < len; c += 8) store8(out + c, load8(VX_DT_F16, p + c * 2));
    else
        for (int64_t c = 0; c < len; c += 8) store8(out + c, load8(VX_DT_BF16, p + c * 2));
}

/* Tile of R widened rows (w, stride CHUNK) x N inputs (x, stride ldx) over
 * len columns; acc[i * BR + k] carries the chain of (input i, row k) across
 * chunks, so chunking does not reorder anything. 4 x 2 uses 16 accumulator,
 * 4 x and 2 w registers of the 32. */
INLINE void tile(int R, int N, const float *w, const float *x, int ldx, int64_t len, acc8 *acc) {
    acc8 a[2][4];
    for (int i = 0; i < N; i++)
        for (int k = 0; k < R; k++) a[i][k] = acc[i * BR + k];
    for (int64_t c = 0; c < len; c += 8) {
        f8 xv[2];
        for (int i = 0; i < N; i++) xv[i] = load_x(x + (size_t)i * ldx + c);
        for (int k = 0; k < R; k++) {
            f8 wv = load_x(w + k * CHUNK + c);
            for (int i = 0; i < N; i++) a[i][k] = fma8(a[i][k], wv, xv[i]);
        }
    }
    for (int i = 0; i < N; i++)
        for (int k = 0; k < R; k++) acc[i * BR + k] = a[i][k];
}

static void tile_4x2(const float *w, const float *x, int ldx, int64_t len, acc8 *acc) { tile(4, 2, w, x, ldx, len, acc); }
static void tile_4x1(const float *w, const float *x, int ldx, int64_t len, acc8 *acc) { tile(4, 1, w, x, ldx, len, acc); }
static void tile_1x2(const float *w, const float *x, int ldx, int64_t len, acc8 *acc) { tile(1, 2, w, x, ldx, len, acc); }
static void tile_1x1(const float *w, const float *x, int ldx, int64_t len, acc8 *acc) { tile(1, 1, w, x, ldx, len, acc); }

/* All tiles of one chunk for inputs [i, i+N) (N <= 2): their x chunk is
 * fetched once and reused from L1 by every row of the block. */
static void chunk_inputs(int N, int rows, const float *wbuf, const float *x, int ldx, int64_t len,
                         acc8 *acc) {
    int k = 0;
    for (; k + 4 <= rows; k += 4) {
        if (N == 2) tile_4x2(wbuf + k * CHUNK, x, ldx, len, acc + k);
        else tile_4x1(wbuf + k * CHUNK, x, ldx, len, acc + k);
    }
    for (; k < rows; k++) {
        if (N == 2) tile_1x2(wbuf + k * CHUNK, x, ldx, len, acc + k);
        else tile_1x1(wbuf + k * CHUNK, x, ldx, len, acc + k);
    }
}

/* Prefetch of the next block's weights, spread over this block's work (as
 * in kernels_avx2.c): the BR rows of a block are one contiguous run, and a
 * whole block ahead is enough to hide the memory latency, while a few lines
 * per step keep the fetches from piling up. */
typedef struct {
    const char *p, *end; /* lines still to ask for */
    size_t step;         /* bytes per step */
} pf_run;

INLINE void pf_start(pf_run *f, const vx_weight *W, int64_t r_next, int64_t r1, int steps) {
    const size_t row_bytes = vx_row_bytes(W->dtype, W->cols);
    const int64_t rows = r1 - r_next < BR ? r1 - r_next : BR;
    f->p = f->end = (const char *)W->data; /* nothing to fetch after the last block */
    f->step = 0;
    if (rows <= 0) return;
    f->p += (size_t)r_next * row_bytes;
    f->end = f->p + (size_t)rows * row_bytes;
    f->step = ((size_t)rows * row_bytes / (size_t)steps + 63) & ~(size_t)63;
}

INLINE void pf_step(pf_run *f) {
    const char *stop = f->p + f->step < f->end ? f->p + f->step : f->end;
    for (; f->p < stop; f->p += 64) __builtin_prefetch(f->p, 0, 3);
}

static void batched(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                    int64_t r0, int64_t r1) {
    const int64_t cols = W->cols;
    const size_t row_bytes = vx_row_bytes(W->dtype, cols);
    const uint8_t *base = W->data;
    float wbuf[BR * CHUNK] __attribute__((aligned(16)));
    acc8 acc[MAX_N * BR]; /* [input][row of the block], 16 KB */
    const int steps = (int)((cols + CHUNK - 1) / CHUNK) * ((n + 1) / 2);
    for (int64_t r = r0; r < r1; r += BR) {
        const int rows = r1 - r < BR ? (int)(r1 - r) : BR;
        pf_run pf;
        pf_start(&pf, W, r + BR, r1, steps);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < rows; k++) acc[i * BR + k] = acc_zero();
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            const int64_t len = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            for (int k = 0; k < rows; k++)
                widen(W->dtype, base + (size_t)(r + k) * row_bytes, c0, len, wbuf + k * CHUNK);
            for (int i = 0; i < n; i += 2) {
                const int N = n - i < 2 ? n - i : 2;
                pf_step(&pf);
                chunk_inputs(N, rows, wbuf, X + (size_t)i * ldx + c0, ldx, len, acc + i * BR);
            }
        }
        for (int i = 0; i < n; i++)
            for (int k = 0; k < rows; k++) Y[(size_t)i * ldy + r + k] = hsum8(acc[i * BR + k]);
    }
}

static int neon_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                            int64_t r0, int64_t r1) {
    if (W->dtype != VX_DT_F32 && W->dtype != VX_DT_F16 && W->dtype != VX_DT_BF16) return -1;
    if (n > MAX_N || W->cols % 8 != 0) return -1;
    if (n <= 0 || r0 >= r1) return 0;
    if (n == 1) {
        const uint8_t *base = W->data;
        const size_t rb = vx_row_bytes(W->dtype, W->cols);
        switch (W->dtype) {
        case VX_DT_F32: matvec_f32(base, rb, X, W->cols, Y, r0, r1); break;
        case VX_DT_F16: matvec_f16(base, rb, X, W->cols, Y, r0, r1); break;
        case VX_DT_BF16: matvec_bf16(base, rb, X, W->cols, Y, r0, r1); break;
        default: return -1;
        }
        return 0;
    }
    batched(W, X, n, ldx, Y, ldy, r0, r1);
    return 0;
}

/* ---------------- attention (engine.h: attn_scores / attn_values); the
 * same chains and reduction as the AVX2 backend, so the same bits. */

/* 8 elements of a KV row (fp16 widened exactly, or float) at element c. */
INLINE f8 kv_load8(const void *row, int f16, int c) {
    if (f16) return load8(VX_DT_F16, (const uint8_t *)row + (size_t)c * 2);
    return load8(VX_DT_F32, (const uint8_t *)row + (size_t)c * 4);
}

/* Elements c .. c+rem of a row (or of a query), zero-padded to 8 lanes. */
INLINE f8 kv_tail8(const void *row, int f16, int c, int rem) {
    float t[8] = {0};
    for (int l = 0; l < rem; l++)
        t[l] = f16 ? vx_f16_to_f32(((const uint16_t *)row)[c + l]) : ((const float *)row)[c + l];
    return load_x(t);
}

INLINE void scores_tile(int QB, int NK, const float *const *q, const void *k0, const void *k1,
                        int f16, int hd, float *S, size_t lds, int64_t t) {
    acc8 a[4][2];
    for (int i = 0; i < QB; i++)
        for (int j = 0; j < NK; j++) a[i][j] = acc_zero();
    int hd8 = hd - hd % 8;
    for (int c = 0; c < hd8; c += 8) {
        f8 kv0 = kv_load8(k0, f16, c), kv1 = NK > 1 ? kv_load8(k1, f16, c) : kv0;
        for (int i = 0; i < QB; i++) {
            f8 qv = load_x(q[i] + c);
            a[i][0] = fma8(a[i][0], kv0, qv);
            if (NK > 1) a[i][1] = fma8(a[i][1], kv1, qv);
        }
    }
    if (hd8 < hd) {
        f8 kv0 = kv_tail8(k0, f16, hd8, hd - hd8);
        f8 kv1 = NK > 1 ? kv_tail8(k1, f16, hd8, hd - hd8) : kv0;
        for (int i = 0; i < QB; i++) {
            f8 qv = kv_tail8(q[i], 0, hd8, hd - hd8);
            a[i][0] = fma8(a[i][0], kv0, qv);
            if (NK > 1) a[i][1] = fma8(a[i][1], kv1, qv);
        }
    }
    for (int i = 0; i < QB; i++)
        for (int j = 0; j < NK; j++) S[(size_t)i * lds + (size_t)t + (size_t)j] = hsum8(a[i][j]);
}

INLINE void scores_rows(int QB, const float *const *q, const void *K, int f16, size_t ldk,
                        int64_t nk, int hd, float *S, size_t lds) {
    const size_t es = f16 ? 2 : 4;
    const uint8_t *base = K;
    int64_t t = 0;
    for (; t + 2 <= nk; t += 2)
        scores_tile(QB, 2, q, base + (size_t)t * ldk * es, base + (size_t)(t + 1) * ldk * es, f16,
                    hd, S, lds, t);
    if (t < nk) scores_tile(QB, 1, q, base + (size_t)t * ldk * es, NULL, f16, hd, S, lds, t);
}

static void neon_attn_scores(const float *const *q, int nq, const void *K, int f16, size_t ldk,
                             int64_t nk, int hd, float *S, size_t lds) {
    int i = 0;
    for (; i + 4 <= nq; i += 4) scores_rows(4, q + i, K, f16, ldk, nk, hd, S + (size_t)i * lds, lds);
    for (; i < nq; i++) scores_rows(1, q + i, K, f16, ldk, nk, hd, S + (size_t)i * lds, lds);
}

/* o[i][c..c+8*CB) += sum_t P[i, t] v_t for QB queries: QB x CB chains. */
INLINE void values_tile(int QB, int CB, const float *P, size_t ldp, const void *V, int f16,
                        size_t ldv, int64_t nk, float *const *o, int c) {
    const size_t es = f16 ? 2 : 4;
    const uint8_t *base = V;
    acc8 a[4][2];
    for (int i = 0; i < QB; i++)
        for (int b = 0; b < CB; b++) {
            f8 v = load_x(o[i] + c + 8 * b);
            a[i][b].lo = v.lo;
            a[i][b].hi = v.hi;
        }
    for (int64_t t = 0; t < nk; t++) {
        const void *row = base + (size_t)t * ldv * es;
        f8 v0 = kv_load8(row, f16, c), v1 = CB > 1 ? kv_load8(row, f16, c + 8) : v0;
        for (int i = 0; i < QB; i++) {
            float32x4_t p = vdupq_n_f32(P[(size_t)i * ldp + (size_t)t]);
            f8 pp = {p, p};
            a[i][0] = fma8(a[i][0], pp, v0);
            if (CB > 1) a[i][1] = fma8(a[i][1], pp, v1);
        }
    }
    for (int i = 0; i < QB; i++)
        for (int b = 0; b < CB; b++) {
            vst1q_f32(o[i] + c + 8 * b, a[i][b].lo);
            vst1q_f32(o[i] + c + 8 * b + 4, a[i][b].hi);
        }
}

static void neon_attn_values(const float *P, size_t ldp, int nq, const void *V, int f16,
                             size_t ldv, int64_t nk, int hd, float *const *o) {
    int hd8 = hd - hd % 8;
    for (int i = 0; i < nq; i += 4) {
        int qb = nq - i < 4 ? nq - i : 4;
        const float *Pi = P + (size_t)i * ldp;
        int c = 0;
        for (; c + 16 <= hd8; c += 16) {
            if (qb == 4) values_tile(4, 2, Pi, ldp, V, f16, ldv, nk, o + i, c);
            else for (int k = 0; k < qb; k++) values_tile(1, 2, Pi + (size_t)k * ldp, ldp, V, f16, ldv, nk, o + i + k, c);
        }
        for (; c < hd8; c += 8) {
            if (qb == 4) values_tile(4, 1, Pi, ldp, V, f16, ldv, nk, o + i, c);
            else for (int k = 0; k < qb; k++) values_tile(1, 1, Pi + (size_t)k * ldp, ldp, V, f16, ldv, nk, o + i + k, c);
        }
        /* columns past the last 8: the same fused multiply-add per element */
        vx_attn_values_fma_cols(Pi, ldp, qb, V, f16, ldv, nk, hd8, hd, o + i);
    }
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
#define QMAX_N 2 /* inputs per tile */
#define QCHUNK 16 /* blocks per chunk of the batched path (512 columns) */

/* Blocks [b0, b1) of R rows (row views w[k]) x N inputs (int8 rows of X at stride
 * cols, scales at stride cols / 32); acc[i * QA + k] carries the chain of
 * (input i, row k) in and out, so splitting the blocks reorders nothing. */
INLINE void qtile(int dp, int dt, int R, int N, const vx_qrow *w, const int8_t *xq,
                  const float *xd, int64_t cols, int64_t b0, int64_t b1, acc8 *acc) {
    const int64_t nblk = cols / VX_QBLOCK;
    acc8 a[QMAX_N][QA];
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
        _Pragma("GCC unroll 8")
        for (int k = 0; k < R; k++) {
            uint16_t h;
            memcpy(&h, w[k].scale + (size_t)b * w[k].stride, 2);
            const float dw = vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
            int8x16_t w0, w1;
            q_weights(dt, w[k].payload + (size_t)b * w[k].stride, &w0, &w1);
            _Pragma("GCC unroll 8")
            for (int i = 0; i < N; i++) {
                const float32x4_t s = vdupq_n_f32(dw * dx[i]);
                if (dt == VX_DT_Q4) { /* four lanes, in .lo */
                    a[i][k].lo = vfmaq_f32(a[i][k].lo, vcvtq_f32_s32(dot32(dp, w0, x0[i], w1, x1[i])), s);
                } else {
                    a[i][k].lo = vfmaq_f32(a[i][k].lo, vcvtq_f32_s32(dot16(dp, w0, x0[i])), s);
                    a[i][k].hi = vfmaq_f32(a[i][k].hi, vcvtq_f32_s32(dot16(dp, w1, x1[i])), s);
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
    acc8 acc[MAX_N * QA];
    for (int64_t r = r0; r < r1; r += QA) {
        const int rows = r1 - r < QA ? (int)(r1 - r) : QA;
        vx_qrow w[QA];
        for (int k = 0; k < rows; k++) w[k] = vx_q_row(dt, W->data, W->rows, cols, r + k);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < rows; k++) acc[i * QA + k] = acc_zero();
        for (int64_t b0 = 0; b0 < nblk; b0 += QCHUNK) {
            const int64_t b1 = nblk - b0 < QCHUNK ? nblk : b0 + QCHUNK;
            for (int i = 0; i < n; i += QMAX_N) {
                const int8_t *x = xq + (size_t)i * cols;
                const float *d = xd + (size_t)i * nblk;
                acc8 *ac = acc + i * QA;
                if (rows == QA) {
                    if (n - i >= 2) qtile(dp, dt, QA, 2, w, x, d, cols, b0, b1, ac);
                    else qtile(dp, dt, QA, 1, w, x, d, cols, b0, b1, ac);
                } else {
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
                    dt == VX_DT_Q4 ? hsum4(acc[i * QA + k].lo) : hsum8(acc[i * QA + k]);
    }
}

INLINE int matmul_rows_q(int dp, const vx_weight *W, const int8_t *xq, const float *xd, int n,
                         float *Y, int ldy, int64_t r0, int64_t r1) {
    if (!vx_dt_is_block(W->dtype) || W->cols % VX_QBLOCK != 0 || n > MAX_N)
        return -1;
    if (n <= 0 || r0 >= r1) return 0;
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

static const vx_backend neon_dot = {"neon", neon_matmul_rows, neon_matmul_rows_q_dot, DTYPES, neon_attn_scores, neon_attn_values};
static const vx_backend neon_base = {"neon", neon_matmul_rows, neon_matmul_rows_q_base, DTYPES, neon_attn_scores, neon_attn_values};

const vx_backend *vx_backend_neon(void) {
    unsigned long hw = getauxval(AT_HWCAP);
    if (!(hw & HWCAP_FP) || !(hw & HWCAP_ASIMD)) return NULL;
    return (hw & HWCAP_ASIMDDP) ? &neon_dot : &neon_base;
}
