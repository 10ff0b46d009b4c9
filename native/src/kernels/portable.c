/* portable.c - the reference backend: plain C for every dtype.
 *
 * F32/F16/BF16 (matmul_rows): a weight row is converted to float in chunks
 * and dotted with each input row; 8 running sums per output keep the
 * compiler free to vectorise while fixing the summation order (results never
 * depend on batch or threads). Q8/Q4 weights go to matmul_rows_q.
 *
 * Q8/Q4 (matmul_rows_q): the integer definition of engine.h, written out
 * literally - per block of 32, the int32 sum isum of the 32 products of the
 * weights (Q8: q; Q4: nibble - 8) and the int8 activations; one float chain
 * acc = fmaf((float)isum, dw * dx, acc) over the blocks in order; Y = acc.
 * The integer sums are exact whatever their order, (float)isum is exact
 * (|isum| <= 32 * 127 * 127 < 2^24) and fmaf rounds once like a hardware FMA
 * lane, so this is bitwise the AVX2 and NEON result; it is their reference
 * in test_kernels. */
#include <math.h>
#include <string.h>

#include "engine.h"
#include "quant.h"

#define CHUNK 256
#define LANES 8
#define MAX_N 64

static int portable_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y,
                                int ldy, int64_t r0, int64_t r1) {
    if (n > MAX_N || vx_dt_is_block(W->dtype)) return -1;
    const int64_t cols = W->cols;
    const size_t row_bytes = vx_row_bytes(W->dtype, cols);
    float wbuf[CHUNK];
    float acc[MAX_N][LANES];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)W->data + (size_t)r * row_bytes;
        memset(acc, 0, sizeof(float) * LANES * (size_t)n);
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            int64_t len = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            vx_row_to_f32(W->dtype, row, c0, len, wbuf);
            int64_t len8 = len - len % LANES;
            for (int i = 0; i < n; i++) {
                const float *x = X + (size_t)i * ldx + c0;
                float *a = acc[i];
                for (int64_t c = 0; c < len8; c += LANES)
                    for (int l = 0; l < LANES; l++) a[l] += wbuf[c + l] * x[c + l];
                for (int64_t c = len8; c < len; c++) a[c % LANES] += wbuf[c] * x[c];
            }
        }
        for (int i = 0; i < n; i++) {
            const float *a = acc[i];
            Y[(size_t)i * ldy + r] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        }
    }
    return 0;
}

/* The int32 sum of one block's 32 products (dt a constant at each call, so
 * the loop unrolls and vectorises). */
static inline int32_t q_block_sum(int dt, const uint8_t *q, const int8_t *x) {
    int32_t t = 0;
    if (dt == VX_DT_Q8) {
        for (int e = 0; e < VX_QBLOCK; e++) t += (int8_t)q[e] * x[e];
    } else {
        for (int c = 0; c < VX_QBLOCK / 2; c++)
            t += ((q[c] & 0x0f) - 8) * x[c] + ((q[c] >> 4) - 8) * x[16 + c];
    }
    return t;
}

static inline void q_rows(int dt, const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                          int64_t r0, int64_t r1) {
    const int64_t cols = W->cols, nblk = cols / VX_QBLOCK;
    for (int64_t r = r0; r < r1; r++) {
        const vx_qrow w = vx_q_row(dt, W->data, W->rows, cols, r);
        for (int i = 0; i < n; i++) {
            const int8_t *x = X->q + (size_t)i * cols;
            const float *d = X->d + (size_t)i * nblk;
            float acc = 0.0f;
            for (int64_t b = 0; b < nblk; b++) {
                const uint8_t *sc = w.scale + (size_t)b * w.stride;
                const float dw = vx_f16_to_f32((uint16_t)(sc[0] | (sc[1] << 8)));
                const int32_t isum = q_block_sum(dt, w.payload + (size_t)b * w.stride, x + b * VX_QBLOCK);
                acc = fmaf((float)isum, dw * d[b], acc);
            }
            Y[(size_t)i * ldy + r] = acc;
        }
    }
}

static int portable_matmul_rows_q(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                                  int64_t r0, int64_t r1) {
    if (!vx_dt_is_block(W->dtype) || W->cols % VX_QBLOCK != 0) return -1;
    if (W->dtype == VX_DT_Q8) q_rows(VX_DT_Q8, W, X, n, Y, ldy, r0, r1);
    else q_rows(VX_DT_Q4, W, X, n, Y, ldy, r0, r1);
    return 0;
}

/* ---- attention: the same 8 running sums (scores) and a plain t-ordered
 * sum (values); f16 rows are widened exactly by vx_f16_to_f32. */

static float kv_elem(const void *row, int f16, int c) {
    return f16 ? vx_f16_to_f32(((const uint16_t *)row)[c]) : ((const float *)row)[c];
}

static void portable_attn_scores(const float *const *q, int nq, const void *K, int f16, size_t ldk,
                                 int64_t nk, int hd, float *S, size_t lds) {
    const size_t es = f16 ? 2 : 4;
    for (int64_t t = 0; t < nk; t++) {
        const void *row = (const uint8_t *)K + (size_t)t * ldk * es;
        for (int i = 0; i < nq; i++) {
            float a[LANES] = {0};
            for (int c = 0; c < hd; c++) a[c % LANES] += kv_elem(row, f16, c) * q[i][c];
            S[(size_t)i * lds + (size_t)t] =
                ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        }
    }
}

static void portable_attn_values(const float *P, size_t ldp, int nq, const void *V, int f16,
                                 size_t ldv, int64_t nk, int hd, float *const *o) {
    const size_t es = f16 ? 2 : 4;
    for (int64_t t = 0; t < nk; t++) {
        const void *row = (const uint8_t *)V + (size_t)t * ldv * es;
        for (int i = 0; i < nq; i++) {
            float p = P[(size_t)i * ldp + (size_t)t], *oi = o[i];
            for (int c = 0; c < hd; c++) oi[c] += p * kv_elem(row, f16, c);
        }
    }
}

static const vx_backend portable = {
    "portable", portable_matmul_rows, portable_matmul_rows_q,
    VX_WEIGHT_DTYPES,
    portable_attn_scores, portable_attn_values,
    vx_quantize_act_q8, vx_swiglu4};

const vx_backend *vx_backend_portable(void) { return &portable; }
