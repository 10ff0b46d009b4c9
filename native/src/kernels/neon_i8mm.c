/* neon_i8mm.c - the NEON backend with SMMLA (FEAT_I8MM: Neoverse V1, N2,
 * V2 and V3 - Jetson Thor's CPU -, Cortex-A710/X2 and later) in its Q8/Q4
 * kernels for two or more inputs (the encoder, prefill, several streams'
 * decoder steps). Its other paths are neon.c's: the float kernels,
 * attention, and one input's matrix-vector product, which is bound by
 * memory and stays on SDOT. Compiled with +i8mm (CMakeLists.txt) and chosen
 * at run time only where the CPU has it (HWCAP2_I8MM); the Raspberry Pi 5's
 * Cortex-A76 and Jetson Orin's A78AE do not.
 *
 * SMMLA multiplies a 2 x 8 int8 matrix by the transpose of another into a
 * 2 x 2 int32 accumulator: with two weight rows as the first operand and two
 * inputs as the second, four SMMLA over a block's 32 columns leave the
 * block's four sums (row 0 x input 0, row 0 x input 1, row 1 x input 0,
 * row 1 x input 1) in one register, 32 multiply-adds per instruction where
 * SDOT does 16, and no reduction across lanes. engine.h's definition holds
 * as in neon.c: one exact int32 sum per block, then per output
 * acc = fma((float)isum, dw * dx, acc) in block order, so the results are
 * the portable backend's bits. Q4 multiplies the plain nibbles and starts
 * each sum from -8 x the input block's sum (the quantizer's X->s).
 *
 * Layout per pass of QCHUNK blocks: the inputs are first interleaved in
 * pairs, 8 columns of one then 8 of the other (SMMLA's second operand), with
 * each pair's scales [dx0, dx1, dx0, dx1] and Q4 corrections beside them;
 * an odd last input is paired with itself. Then every tile of 4 rows (two
 * SMMLA rows, within one row group) takes up to TILE_PAIRS pairs at a time,
 * the weights unpacked and interleaved once for all of them. */
#if defined(VX_HAVE_NEON_I8MM)
#include <arm_neon.h>
#include <string.h>
#include <sys/auxv.h>

#include "engine.h"
#include "neon.h"
#include "quant.h"

#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif

#define INLINE static inline __attribute__((always_inline))

#define MAX_PAIRS 32  /* inputs per call (kernels.c's BATCH, 64) in pairs */
#define QCHUNK 16     /* blocks per pass: the interleaved inputs, 48 KB at 64 inputs */
#define TILE_PAIRS 4  /* input pairs per register tile: 8 accumulators of 32 */
#define TILE_ROWS 4   /* two SMMLA row pairs */

/* One pass's inputs: x[p][bb][k] columns 8k..8k+7 of pair p's two inputs
 * in block bb (8 of the first, then 8 of the second), dx[p][bb] the block
 * scales [dx0, dx1, dx0, dx1], corr[p][bb] Q4's [-8 s0, -8 s1, -8 s0, -8 s1]. */
typedef struct {
    int8x16_t x[MAX_PAIRS][QCHUNK][4];
    float32x4_t dx[MAX_PAIRS][QCHUNK];
    int32x4_t corr[MAX_PAIRS][QCHUNK];
} pass_inputs;

static void interleave_inputs(const vx_qact *X, int n, int64_t cols, int64_t c0, int nb,
                              pass_inputs *in) {
    const int64_t nblk = cols / VX_QBLOCK;
    for (int p = 0; p < (n + 1) / 2; p++) {
        const int i0 = 2 * p, i1 = 2 * p + 1 < n ? 2 * p + 1 : 2 * p;
        for (int bb = 0; bb < nb; bb++) {
            const size_t b0 = (size_t)i0 * (size_t)nblk + (size_t)(c0 + bb);
            const size_t b1 = (size_t)i1 * (size_t)nblk + (size_t)(c0 + bb);
            const int8_t *x0 = X->q + b0 * VX_QBLOCK, *x1 = X->q + b1 * VX_QBLOCK;
            for (int h = 0; h < 2; h++) { /* columns 16h..16h+15 */
                const int64x2_t a = vreinterpretq_s64_s8(vld1q_s8(x0 + 16 * h));
                const int64x2_t b = vreinterpretq_s64_s8(vld1q_s8(x1 + 16 * h));
                in->x[p][bb][2 * h] = vreinterpretq_s8_s64(vzip1q_s64(a, b));
                in->x[p][bb][2 * h + 1] = vreinterpretq_s8_s64(vzip2q_s64(a, b));
            }
            const float d[4] = {X->d[b0], X->d[b1], X->d[b0], X->d[b1]};
            const int32_t c[4] = {-8 * X->s[b0], -8 * X->s[b1], -8 * X->s[b0], -8 * X->s[b1]};
            in->dx[p][bb] = vld1q_f32(d);
            in->corr[p][bb] = vld1q_s32(c);
        }
    }
}

/* A block of 4 consecutive rows of one group (row 0's payload at p, the
 * next rows' 32 (Q8) or 16 (Q4) bytes apart) as SMMLA operands: w[rp][k]
 * columns 8k..8k+7 of rows 2rp and 2rp + 1 (8 of each). Q8 as stored; Q4 as its nibbles (quant.h: byte j
 * holds elements j and j + 16), 0..15 and so valid signed bytes. */
INLINE void tile_weights(int dt, const uint8_t *p, int8x16_t w[2][4]) {
    int64x2_t lo[TILE_ROWS], hi[TILE_ROWS]; /* elements 0-15 and 16-31 of each row */
    for (int j = 0; j < TILE_ROWS; j++) {
        if (dt == VX_DT_Q8) {
            lo[j] = vreinterpretq_s64_u8(vld1q_u8(p + 32 * j));
            hi[j] = vreinterpretq_s64_u8(vld1q_u8(p + 32 * j + 16));
        } else {
            const uint8x16_t v = vld1q_u8(p + 16 * j);
            lo[j] = vreinterpretq_s64_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
            hi[j] = vreinterpretq_s64_u8(vshrq_n_u8(v, 4));
        }
    }
    for (int rp = 0; rp < 2; rp++) {
        w[rp][0] = vreinterpretq_s8_s64(vzip1q_s64(lo[2 * rp], lo[2 * rp + 1]));
        w[rp][1] = vreinterpretq_s8_s64(vzip2q_s64(lo[2 * rp], lo[2 * rp + 1]));
        w[rp][2] = vreinterpretq_s8_s64(vzip1q_s64(hi[2 * rp], hi[2 * rp + 1]));
        w[rp][3] = vreinterpretq_s8_s64(vzip2q_s64(hi[2 * rp], hi[2 * rp + 1]));
    }
}

/* The chains of a tile: acc[ip * 2 + rp] lanes (row 2rp, input 2p), (2rp,
 * 2p + 1), (2rp + 1, 2p), (2rp + 1, 2p + 1), p = p0 + ip, rows from r;
 * loaded from Y (a pass after the first) or stored to it; an input paired
 * with itself is read twice and written once. */
INLINE void tile_io(int store, float32x4_t *acc, int NP, int p0, int n, float *Y, int ldy,
                    int64_t r) {
    for (int ip = 0; ip < NP; ip++) {
        const int i0 = 2 * (p0 + ip), i1 = i0 + 1 < n ? i0 + 1 : i0;
        for (int rp = 0; rp < 2; rp++) {
            float *y0 = Y + (size_t)i0 * (size_t)ldy + (size_t)r + (size_t)(2 * rp);
            float *y1 = Y + (size_t)i1 * (size_t)ldy + (size_t)r + (size_t)(2 * rp);
            float v[4];
            if (store) {
                vst1q_f32(v, acc[ip * 2 + rp]);
                y0[0] = v[0], y0[1] = v[2];
                if (i1 != i0) y1[0] = v[1], y1[1] = v[3];
            } else {
                v[0] = y0[0], v[1] = y1[0], v[2] = y0[1], v[3] = y1[1];
                acc[ip * 2 + rp] = vld1q_f32(v);
            }
        }
    }
}

/* Rows [r, r + 4) (one group's, starting at w) x input pairs [p0, p0 + NP)
 * over the pass's nb blocks from c0 (first: the chains start at 0). */
INLINE void mm_tile(int dt, int NP, vx_qrow w, const pass_inputs *in, int p0, int n,
                    int64_t c0, int nb, int first, float *Y, int ldy, int64_t r) {
    float32x4_t acc[TILE_PAIRS * 2];
    if (first)
        for (int j = 0; j < NP * 2; j++) acc[j] = vdupq_n_f32(0.0f);
    else
        tile_io(0, acc, NP, p0, n, Y, ldy, r);
    for (int bb = 0; bb < nb; bb++) {
        const size_t off = (size_t)(c0 + bb) * w.stride;
        int8x16_t wt[2][4];
        tile_weights(dt, w.payload + off, wt);
        /* the 4 rows' fp16 scales, consecutive in the group */
        uint16_t h[4];
        memcpy(h, w.scale + off, sizeof h);
        const float32x4_t dw = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
        const float32x4_t dwp[2] = {vzip1q_f32(dw, dw), vzip2q_f32(dw, dw)}; /* [d0 d0 d1 d1] */
        _Pragma("GCC unroll 4")
        for (int ip = 0; ip < NP; ip++) {
            const int8x16_t *x = in->x[p0 + ip][bb];
            _Pragma("GCC unroll 2")
            for (int rp = 0; rp < 2; rp++) {
                int32x4_t s = dt == VX_DT_Q4 ? in->corr[p0 + ip][bb] : vdupq_n_s32(0);
                _Pragma("GCC unroll 4")
                for (int k = 0; k < 4; k++) s = vmmlaq_s32(s, wt[rp][k], x[k]);
                const float32x4_t scale = vmulq_f32(dwp[rp], in->dx[p0 + ip][bb]);
                acc[ip * 2 + rp] = vfmaq_f32(acc[ip * 2 + rp], vcvtq_f32_s32(s), scale);
            }
        }
    }
    tile_io(1, acc, NP, p0, n, Y, ldy, r);
}

/* Rows [a, b) (a and b multiples of TILE_ROWS) x n >= 2 inputs. */
static void mm_rows(int dt, const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                    int64_t a, int64_t b) {
    const int64_t cols = W->cols, nblk = cols / VX_QBLOCK;
    const int pairs = (n + 1) / 2;
    pass_inputs in;
    for (int64_t c0 = 0; c0 < nblk; c0 += QCHUNK) {
        const int nb = (int)(nblk - c0 < QCHUNK ? nblk - c0 : QCHUNK);
        interleave_inputs(X, n, cols, c0, nb, &in);
        for (int64_t r = a; r < b; r += TILE_ROWS) {
            const vx_qrow w = vx_q_row(dt, W->data, W->rows, cols, r);
            for (int p0 = 0; p0 < pairs; p0 += TILE_PAIRS) {
                switch (pairs - p0 < TILE_PAIRS ? pairs - p0 : TILE_PAIRS) {
#define MM_CASE(NP)                                                                                \
    case NP:                                                                                       \
        if (dt == VX_DT_Q4) mm_tile(VX_DT_Q4, NP, w, &in, p0, n, c0, nb, c0 == 0, Y, ldy, r);      \
        else mm_tile(VX_DT_Q8, NP, w, &in, p0, n, c0, nb, c0 == 0, Y, ldy, r);                     \
        break
                    MM_CASE(4); MM_CASE(3); MM_CASE(2);
                default: MM_CASE(1);
#undef MM_CASE
                }
            }
        }
    }
}

static int i8mm_matmul_rows_q(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                              int64_t r0, int64_t r1) {
    if (!vx_dt_is_block(W->dtype) || W->cols % VX_QBLOCK != 0 || n > 2 * MAX_PAIRS) return -1;
    /* whole 4-row tiles through SMMLA; one input, and rows outside those
     * tiles, through neon.c's SDOT kernels */
    const int64_t a = (r0 + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS;
    const int64_t b = r1 / TILE_ROWS * TILE_ROWS;
    if (n < 2 || a >= b || W->cols == 0) return vx_neon_matmul_rows_q_dot(W, X, n, Y, ldy, r0, r1);
    if (r0 < a && vx_neon_matmul_rows_q_dot(W, X, n, Y, ldy, r0, a) != 0) return -1;
    mm_rows(W->dtype, W, X, n, Y, ldy, a, b);
    if (b < r1 && vx_neon_matmul_rows_q_dot(W, X, n, Y, ldy, b, r1) != 0) return -1;
    return 0;
}

static const vx_backend neon_i8mm = {"neon+i8mm",         vx_neon_matmul_rows,
                                     i8mm_matmul_rows_q,  VX_WEIGHT_DTYPES,
                                     vx_neon_attn_scores, vx_neon_attn_values,
                                     vx_quantize_act_q8, vx_swiglu4};

const vx_backend *vx_backend_neon_i8mm(void) {
    /* FEAT_I8MM comes with Armv8.6, where DotProd is mandatory; checked anyway */
    if (!vx_backend_neon() || !(getauxval(AT_HWCAP) & HWCAP_ASIMDDP) ||
        !(getauxval(AT_HWCAP2) & HWCAP2_I8MM))
        return NULL;
    return &neon_i8mm;
}
#endif
