/* kernels_portable.c - the reference backend: plain C for every dtype.
 * A weight row is converted to float in chunks and dotted with each input
 * row; 8 running sums per output keep the compiler free to vectorise while
 * fixing the summation order (results never depend on batch or threads). */
#include <string.h>

#include "engine.h"
#include "quant.h"

#define CHUNK 256
#define LANES 8
#define MAX_N 64

static int portable_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y,
                                int ldy, int64_t r0, int64_t r1) {
    if (n > MAX_N) return -1;
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
    "portable", portable_matmul_rows,
    (1u << VX_DT_F32) | (1u << VX_DT_F16) | (1u << VX_DT_BF16) | (1u << VX_DT_Q8) | (1u << VX_DT_Q4),
    portable_attn_scores, portable_attn_values};

const vx_backend *vx_backend_portable(void) { return &portable; }
