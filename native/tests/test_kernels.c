/* test_kernels.c - every matmul backend compiled in and usable on this CPU
 * (portable always; avx2 and neon where present) against a double-precision
 * reference, for every weight dtype; plus the seam's determinism contract,
 * the exact integer definition of Q8/Q4 products and the Q8/Q4 round trips.
 *
 * F32/F16/BF16 accuracy: |y - ref| <= 1e-5 * sum_c |w_c| |x_c| + 1e-30 per
 * output, where ref and w are the exact weights (vx_row_to_f32). A float32
 * sum of k terms is off by at most ~k * 2^-24 of that sum in the worst case
 * and ~sqrt(k) * 2^-24 typically, so the columns below (<= 1088, 8 lanes)
 * sit far inside the bound, while a wrong element, block scale or nibble
 * order moves an output by ~1e-2 relative.
 *
 * Q8/Q4 multiply int8-quantized activations (vx_quantize_act_q8): each x_c
 * is replaced by dx * q_c with |dx * q_c - x_c| <= dx / 2 (round to nearest;
 * dx = amax / 127 of its block, up to one float rounding in dx and in the
 * scaled value), so on top of the float bound above the output may move by
 * sum_c |w_c| * dx_b(c) / 2, to which 1e-3 relative slack is added for those
 * float roundings - a rigorous bound, ~1/254 of the block's amax per weight,
 * still far below what a wrong scale, element or nibble does. Exactness is
 * checked separately: every backend must give bitwise the result of
 * ref_matmul_q below, an independent plain-C reading of engine.h's
 * definition.
 *
 * Determinism (engine.h): Y[i, r] must be bitwise the same whether computed
 * with n = 1, inside a batch of 17 or 64 at any position, and with any r0/r1
 * split of the rows. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine.h"
#include "quant.h"
#include "vec4.h"


/* xorshift64*: reproducible data without libc's rand state. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}
static float nrand(void) { /* roughly normal: sum of 4 uniforms */
    return (float)((urand() + urand() + urand() + urand() - 2.0) * 1.7320508);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

static uint16_t f32_to_bf16(float f) { /* round to nearest even (finite inputs) */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static const char *dt_name(int dt) {
    switch (dt) {
    case VX_DT_F32: return "F32";
    case VX_DT_F16: return "F16";
    case VX_DT_BF16: return "BF16";
    case VX_DT_Q8: return "Q8";
    case VX_DT_Q4: return "Q4";
    default: return "?";
    }
}

/* A [rows, cols] weight in dtype, stored at byte offset 2 of its buffer: model
 * files only guarantee 2-byte alignment, so kernels must not assume more. */
typedef struct {
    vx_weight w;
    uint8_t *buf;
    float *deq; /* [rows, cols] exact dequantized values */
} test_weight;

/* Q8/Q4 rows are quantized row-major into a scratch copy, then packed into
 * the row-group layout the kernels read (quant.h). */
static void make_weight(test_weight *t, int dt, int64_t rows, int64_t cols) {
    size_t rb = vx_row_bytes(dt, cols);
    t->buf = xmalloc(rb * (size_t)rows + 2);
    t->deq = xmalloc(sizeof(float) * (size_t)(rows * cols));
    uint8_t *data = t->buf + 2, *rowmajor = vx_dt_is_block(dt) ? xmalloc(rb * (size_t)rows) : data;
    float *src = xmalloc(sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        /* rows of different magnitude, and a few outliers per row, like real
         * weights; every 7th row so small that F16 values and Q8/Q4 block
         * scales are fp16 subnormals, which each backend must widen exactly */
        float scale = r % 7 == 3 ? 2e-5f : (float)(0.02 + 0.2 * urand());
        for (int64_t c = 0; c < cols; c++) {
            src[c] = nrand() * scale;
            if (urand() < 0.01) src[c] *= 20.0f;
        }
        uint8_t *row = rowmajor + (size_t)r * rb;
        for (int64_t c = 0; c < cols; c++) {
            if (dt == VX_DT_F32) {
                memcpy(row + c * 4, &src[c], 4);
            } else if (dt == VX_DT_F16 || dt == VX_DT_BF16) {
                uint16_t h = dt == VX_DT_F16 ? vx_f32_to_f16(src[c]) : f32_to_bf16(src[c]);
                row[c * 2] = (uint8_t)(h & 0xff);
                row[c * 2 + 1] = (uint8_t)(h >> 8);
            }
        }
        if (dt == VX_DT_Q8) vx_quantize_row_q8(src, cols, row);
        if (dt == VX_DT_Q4) vx_quantize_row_q4(src, cols, row);
        vx_row_to_f32(dt, row, 0, cols, t->deq + (size_t)(r * cols));
    }
    free(src);
    if (vx_dt_is_block(dt)) {
        vx_q_pack_rows(dt, rowmajor, rows, cols, data);
        free(rowmajor);
    }
    t->w.dtype = (vx_dtype)dt;
    t->w.rows = rows;
    t->w.cols = cols;
    t->w.data = data;
    /* the packed rows read back as the values they were quantized to */
    float *back = xmalloc(sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        vx_weight_row(&t->w, r, back);
        CHECKF(memcmp(back, t->deq + (size_t)(r * cols), sizeof(float) * (size_t)cols) == 0,
               "%s [%lld x %lld] row %lld reads back wrong", dt_name(dt), (long long)rows,
               (long long)cols, (long long)r);
    }
    free(back);
}

static void free_weight(test_weight *t) {
    free(t->buf);
    free(t->deq);
}

/* X (n rows at stride ldx) quantized as vx_matmul does for Q8/Q4 weights;
 * x the view the seam takes. */
typedef struct {
    int8_t *q;
    float *d;
    int32_t *s;
    vx_qact x;
} qx;

static qx quantize_x(const float *X, int n, int ldx, int64_t cols) {
    const size_t nb = (size_t)n * (size_t)(cols / 32);
    qx a = {xmalloc((size_t)n * (size_t)cols), xmalloc(sizeof(float) * nb), xmalloc(sizeof(int32_t) * nb),
            {0}};
    for (int i = 0; i < n; i++)
        vx_quantize_act_q8(X + (size_t)i * ldx, cols, a.q + (size_t)i * cols, a.d + (size_t)i * (cols / 32),
                           a.s + (size_t)i * (cols / 32));
    a.x = (vx_qact){a.q, a.d, a.s};
    return a;
}

static void free_qx(qx *a) {
    free(a->q);
    free(a->d);
    free(a->s);
}

/* Y = X W^T for rows [r0, r1) through one backend, the way the seam calls it:
 * matmul_rows for F32/F16/BF16, matmul_rows_q on quantized X for Q8/Q4. */
static int run_rows(const vx_backend *be, const test_weight *t, const float *X, int n, int ldx,
                    float *Y, int ldy, int64_t r0, int64_t r1) {
    if (!vx_dt_is_block(t->w.dtype)) return be->matmul_rows(&t->w, X, n, ldx, Y, ldy, r0, r1);
    qx a = quantize_x(X, n, ldx, t->w.cols);
    int rc = be->matmul_rows_q(&t->w, &a.x, n, Y, ldy, r0, r1);
    free_qx(&a);
    return rc;
}

/* Y = X W^T through one backend, rows [0, rows) split at the given cuts. */
static int run_split(const vx_backend *be, const test_weight *t, const float *X, int n, int ldx,
                     float *Y, int ldy, const int64_t *cuts, int n_cuts) {
    int64_t r0 = 0;
    for (int s = 0; s <= n_cuts; s++) {
        int64_t r1 = s < n_cuts ? cuts[s] : t->w.rows;
        if (run_rows(be, t, X, n, ldx, Y, ldy, r0, r1) != 0) return -1;
        r0 = r1;
    }
    return 0;
}

static void check_accuracy(const vx_backend *be, int dt, int64_t rows, int64_t cols, int n) {
    test_weight t;
    make_weight(&t, dt, rows, cols);
    /* padded strides catch kernels that assume ldx == cols or ldy == rows */
    const int ldx = (int)cols + 8, ldy = (int)rows + 3;
    float *X = xmalloc(sizeof(float) * (size_t)n * (size_t)ldx);
    float *Y = xmalloc(sizeof(float) * (size_t)n * (size_t)ldy);
    for (size_t i = 0; i < (size_t)n * (size_t)ldx; i++) X[i] = nrand();
    for (size_t i = 0; i < (size_t)n * (size_t)ldy; i++) Y[i] = 12345.0f; /* canary */
    int rc = run_rows(be, &t, X, n, ldx, Y, ldy, 0, rows);
    qx xa = {0};
    if (vx_dt_is_block(dt)) xa = quantize_x(X, n, ldx, cols);
    CHECKF(rc == 0, "%s %s [%lld x %lld] n=%d declined", be->name, dt_name(dt), (long long)rows,
          (long long)cols, n);
    if (rc == 0) {
        double worst = 0;
        for (int i = 0; i < n; i++) {
            const float *x = X + (size_t)i * ldx;
            for (int64_t r = 0; r < rows; r++) {
                const float *w = t.deq + (size_t)(r * cols);
                double ref = 0, mag = 0, qerr = 0;
                for (int64_t c = 0; c < cols; c++) {
                    ref += (double)w[c] * x[c];
                    mag += fabs((double)w[c] * x[c]);
                    if (vx_dt_is_block(dt)) qerr += fabs((double)w[c]) * xa.d[(size_t)i * (cols / 32) + c / 32] * 0.5;
                }
                double y = Y[(size_t)i * ldy + r];
                double err = fabs(y - ref), tol = 1e-5 * mag + qerr * 1.001 + 1e-30;
                if (err / tol > worst) worst = err / tol;
                CHECKF(err <= tol, "%s %s [%lld x %lld] n=%d: Y[%d,%lld] = %.9g, ref %.9g (tol %.3g)",
                      be->name, dt_name(dt), (long long)rows, (long long)cols, n, i, (long long)r,
                      y, ref, tol);
            }
            for (int64_t r = rows; r < ldy; r++)
                CHECKF(Y[(size_t)i * ldy + r] == 12345.0f, "%s %s wrote past row range at Y[%d,%lld]",
                      be->name, dt_name(dt), i, (long long)r);
        }
        if (getenv("VX_TEST_VERBOSE"))
            printf("  %-8s %-4s [%4lld x %4lld] n=%2d  worst err/tol %.3f\n", be->name,
                   dt_name(dt), (long long)rows, (long long)cols, n, worst);
    }
    if (vx_dt_is_block(dt)) free_qx(&xa);
    free(X);
    free(Y);
    free_weight(&t);
}

/* Every output row computed alone (n = 1), in a batch of 17 and in a batch of
 * 64, with various row splits, must be bitwise identical. */
static void check_determinism(const vx_backend *be, int dt, int64_t rows, int64_t cols) {
    test_weight t;
    make_weight(&t, dt, rows, cols);
    const int N = 64, ldx = (int)cols, ldy = (int)rows;
    float *X = xmalloc(sizeof(float) * (size_t)N * (size_t)ldx);
    float *ref = xmalloc(sizeof(float) * (size_t)N * (size_t)ldy);
    float *Y = xmalloc(sizeof(float) * (size_t)N * (size_t)ldy);
    for (size_t i = 0; i < (size_t)N * (size_t)ldx; i++) X[i] = nrand();

    /* reference: one input row at a time, all rows in one call */
    int ok = 1;
    for (int i = 0; i < N && ok; i++)
        ok = run_rows(be, &t, X + (size_t)i * ldx, 1, ldx, ref + (size_t)i * ldy, ldy, 0, rows) == 0;
    CHECKF(ok, "%s %s n=1 declined", be->name, dt_name(dt));

    const int64_t splits[][4] = {{0}, {1}, {5, 6, 7}, {3, 16, 19}, {2, 4, 8, 13}};
    const int n_splits[] = {0, 1, 3, 3, 4};
    for (int s = 0; ok && s < 5; s++) {
        int64_t cuts[4];
        int nc = 0;
        for (int k = 0; k < n_splits[s]; k++)
            if (splits[s][k] < rows) cuts[nc++] = splits[s][k];
        /* batches of 17 starting at odd offsets, the whole 64, and the
         * 2 .. 8 rows of a decoder step of several streams */
        const int batch[][2] = {{3, 17}, {20, 17}, {47, 17}, {0, 64},
                                {1, 2},  {9, 3},   {30, 4},  {40, 5}, {50, 8}};
        for (int b = 0; b < (int)(sizeof batch / sizeof batch[0]); b++) {
            int i0 = batch[b][0], nb = batch[b][1];
            memset(Y, 0, sizeof(float) * (size_t)N * (size_t)ldy);
            if (run_split(be, &t, X + (size_t)i0 * ldx, nb, ldx, Y, ldy, cuts, nc) != 0) {
                CHECKF(0, "%s %s batch of %d declined", be->name, dt_name(dt), nb);
                continue;
            }
            int same = memcmp(Y, ref + (size_t)i0 * ldy, sizeof(float) * (size_t)nb * (size_t)ldy) == 0;
            CHECKF(same, "%s %s [%lld x %lld]: batch %d@%d split %d differs from n=1", be->name,
                  dt_name(dt), (long long)rows, (long long)cols, nb, i0, s);
        }
        /* n = 1 with the same splits */
        memset(Y, 0, sizeof(float) * (size_t)ldy);
        if (run_split(be, &t, X + (size_t)5 * ldx, 1, ldx, Y, ldy, cuts, nc) == 0)
            CHECKF(memcmp(Y, ref + (size_t)5 * ldy, sizeof(float) * (size_t)ldy) == 0,
                  "%s %s n=1 split %d differs", be->name, dt_name(dt), s);
    }
    free(X);
    free(ref);
    free(Y);
    free_weight(&t);
}

static float block_scale(const uint8_t *blk) { return vx_f16_to_f32((uint16_t)(blk[0] | (blk[1] << 8))); }

/* engine.h's definition of a Q8/Q4 product, written independently of the
 * backends: per block the int32 sum of its 32 products (Q4: byte j's low
 * nibble is element j, its high nibble element j+16, each minus 8), then
 * one fmaf per block with the scale dw * dx, in block order from 0. */
static float ref_matmul_q(const vx_weight *W, const int8_t *xq, const float *xd, int64_t r) {
    const int64_t nblk = W->cols / 32;
    const vx_qrow row = vx_q_row(W->dtype, W->data, W->rows, W->cols, r);
    float acc = 0.0f;
    for (int64_t b = 0; b < nblk; b++) {
        const uint8_t *q = row.payload + (size_t)b * row.stride;
        const float s = block_scale(row.scale + (size_t)b * row.stride) * xd[b];
        int32_t isum = 0;
        for (int e = 0; e < 32; e++) {
            const int w = W->dtype == VX_DT_Q8 ? (int8_t)q[e]
                          : e < 16             ? (q[e] & 15) - 8
                                               : (q[e - 16] >> 4) - 8;
            isum += w * xq[b * 32 + e];
        }
        acc = fmaf((float)isum, s, acc);
    }
    return acc;
}

/* Every backend's Q8/Q4 product is bitwise ref_matmul_q, for n = 1 and
 * batches. Extreme inputs are mixed in: blocks of +-127 activations against
 * weights of -128 (possible in a file, though the quantizer never writes
 * it) and Q4 nibbles of 0 and 15, which would saturate an int16 step done
 * naively, plus all-zero blocks. */
static void check_q_exact(const vx_backend *be, int dt, int64_t rows, int64_t cols, int n) {
    test_weight t;
    make_weight(&t, dt, rows, cols);
    for (int64_t r = 0; r < rows; r += 3) { /* first block of every 3rd row: extremes */
        uint8_t *p = (uint8_t *)vx_q_row(dt, t.w.data, rows, cols, r).payload;
        memset(p, dt == VX_DT_Q8 ? 0x80 : (r % 2 ? 0xff : 0x00), vx_q_block_bytes(dt) - 2);
    }
    float *X = xmalloc(sizeof(float) * (size_t)n * (size_t)cols);
    for (size_t i = 0; i < (size_t)n * (size_t)cols; i++) X[i] = nrand();
    for (int i = 0; i < n; i++) {
        float *x = X + (size_t)i * cols;
        for (int e = 0; e < 32; e++) x[e] = (i + e) % 2 ? -1.0f : 1.0f; /* q = +-127 */
        if (cols >= 64)
            for (int e = 32; e < 64; e++) x[e] = 0.0f;
    }
    float *Y = xmalloc(sizeof(float) * (size_t)n * (size_t)rows);
    qx a = quantize_x(X, n, (int)cols, cols);
    int rc = be->matmul_rows_q(&t.w, &a.x, n, Y, (int)rows, 0, rows);
    CHECKF(rc == 0, "%s %s declined", be->name, dt_name(dt));
    int same = 1;
    for (int i = 0; rc == 0 && i < n; i++)
        for (int64_t r = 0; r < rows; r++) {
            float want = ref_matmul_q(&t.w, a.q + (size_t)i * cols, a.d + (size_t)i * (cols / 32), r);
            float got = Y[(size_t)i * rows + r];
            if (memcmp(&want, &got, 4) != 0 && same) {
                same = 0;
                CHECKF(0, "%s %s [%lld x %lld] n=%d: Y[%d,%lld] = %.9g, definition %.9g", be->name,
                      dt_name(dt), (long long)rows, (long long)cols, n, i, (long long)r, got, want);
            }
        }
    free_qx(&a);
    free(X);
    free(Y);
    free_weight(&t);
}

/* The activation quantizer as engine.h defines it, element by element: the
 * engine's vectorized one must give the same bytes, scales and block sums.
 * (This file is compiled with -ffp-contract=off, like quant.c.) */
static void ref_quantize_act_q8(const float *x, int64_t cols, int8_t *q, float *d, int32_t *s) {
    for (int64_t b = 0; b < cols / 32; b++) {
        const float *v = x + b * 32;
        float amax = 0;
        int finite = 1;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(v[j]);
            finite &= a <= FLT_MAX;
            amax = a > amax ? a : amax;
        }
        s[b] = 0;
        if (!finite || amax == 0) {
            memset(q + b * 32, 0, 32);
            d[b] = finite ? 0.0f : NAN;
            continue;
        }
        const float sc = amax < 0x1p-100f ? 0x1p100f : 1.0f, inv = 127.0f / (amax * sc);
        d[b] = amax / 127.0f;
        for (int j = 0; j < 32; j++) {
            float r = ((v[j] * sc) * inv + 12582912.0f) - 12582912.0f;
            r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
            q[b * 32 + j] = (int8_t)(int)r;
            s[b] += q[b * 32 + j];
        }
    }
}

typedef void (*act_quant_fn)(const float *x, int64_t cols, int8_t *q, float *d, int32_t *s);

/* Random blocks over a wide range of scales, ties, tiny and non-finite ones,
 * through quant (vx_quantize_act_q8, or a backend's quantize_act). */
static void check_act_quant_vs_scalar(act_quant_fn quant, const char *name) {
    enum { COLS = 32 * 200 };
    static float x[COLS], d0[COLS / 32], d1[COLS / 32];
    static int8_t q0[COLS], q1[COLS];
    static int32_t s0[COLS / 32], s1[COLS / 32];
    for (int trial = 0; trial < 20; trial++) {
        for (int b = 0; b < COLS / 32; b++) {
            const float scale = (float)pow(2.0, -140.0 + 270.0 * urand());
            const int kind = (int)(urand() * 8);
            for (int j = 0; j < 32; j++) {
                float v = nrand() * scale;
                if (kind == 1) v = (float)(int)(nrand() * 64) * 0.5f; /* x.5 ties */
                if (kind == 2 && j == 3) v = urand() < 0.5 ? INFINITY : NAN;
                if (kind == 3) v = j == 7 ? -scale : 0.0f;
                x[b * 32 + j] = v;
            }
        }
        ref_quantize_act_q8(x, COLS, q0, d0, s0);
        quant(x, COLS, q1, d1, s1);
        int same_q = memcmp(q0, q1, sizeof q0) == 0, same_d = 1;
        int same_s = memcmp(s0, s1, sizeof s0) == 0;
        for (int b = 0; b < COLS / 32; b++)
            same_d &= memcmp(&d0[b], &d1[b], sizeof(float)) == 0 || (isnan(d0[b]) && isnan(d1[b]));
        CHECKF(same_q && same_d && same_s, "%s trial %d: bytes %s, scales %s, sums %s", name, trial,
               same_q ? "same" : "differ", same_d ? "same" : "differ", same_s ? "same" : "differ");
    }
}

/* vx_quantize_act_q8 (or a backend's quantize_act): the block scale,
 * rounding (half to even), clamping and the special blocks. */
static void check_act_quant(act_quant_fn quant) {
    float x[32 * 6];
    int8_t q[32 * 6];
    float d[6];
    int32_t s[6];
    for (int j = 0; j < 32; j++) {
        x[j] = 0.0f;                                   /* all zero */
        x[32 + j] = (float)(j - 16) * 0.5f;            /* amax 8: q = x * 127 / 8 */
        x[64 + j] = j == 5 ? 127.0f : (float)j + 0.5f; /* amax 127: ties x.5 */
        x[96 + j] = j == 9 ? NAN : 1.0f;               /* non-finite */
        x[128 + j] = (float)(j - 16) * 1e-44f;         /* subnormal: 127/amax overflows */
        x[160 + j] = j == 0 ? -3.0f : 1.0f;            /* negative extreme */
    }
    quant(x, 32 * 6, q, d, s);
    for (int b = 0; b < 6; b++) {
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) sum += q[32 * b + j];
        CHECKF(s[b] == sum, "block %d: sum %d, its values add to %d", b, s[b], sum);
    }
    CHECKF(s[1] == -127, "block 1's sum %d", s[1]); /* the rounded (j - 16) x 127 / 16, j < 32 */
    for (int j = 0; j < 32; j++) CHECKF(q[j] == 0, "zero block q %d", q[j]);
    CHECKF(d[0] == 0.0f, "zero block d %g", d[0]);
    CHECKF(d[1] == 8.0f / 127.0f, "d %g", d[1]);
    for (int j = 0; j < 32; j++) {
        float v = (float)(j - 16) * 0.5f * (127.0f / 8.0f);
        CHECKF(q[32 + j] == (int8_t)lrintf(v), "q[%d] %d for %g", j, q[32 + j], v);
    }
    CHECKF(d[2] == 1.0f, "d %g", d[2]);
    for (int j = 0; j < 32; j++) {
        int want = j == 5 ? 127 : (int)lrintf((float)j + 0.5f); /* 0.5 -> 0, 1.5 -> 2, ... */
        CHECKF(q[64 + j] == want && want % 2 == (j == 5 ? 1 : 0), "tie %d -> %d", j, q[64 + j]);
    }
    CHECKF(isnan(d[3]), "NaN block d %g", d[3]);
    for (int j = 0; j < 32; j++) CHECKF(q[96 + j] == 0, "NaN block q %d", q[96 + j]);
    CHECKF(d[4] > 0.0f, "tiny block d %g", d[4]);
    CHECKF(q[128] == -127 && q[128 + 16] == 0 && q[128 + 31] == 119, "tiny block q %d %d %d",
          q[128], q[128 + 16], q[128 + 31]);
    CHECKF(q[160] == -127 && q[161] == 42, "negative extreme: q %d %d", q[160], q[161]);
}

static void check_roundtrip(void) {
    const int64_t cols = 32 * 64;
    float *x = xmalloc(sizeof(float) * (size_t)cols), *y = xmalloc(sizeof(float) * (size_t)cols);
    uint8_t *q8 = xmalloc(vx_row_bytes(VX_DT_Q8, cols)), *q4 = xmalloc(vx_row_bytes(VX_DT_Q4, cols));
    for (int trial = 0; trial < 20; trial++) {
        /* 1e-2 .. 10: keeps every block scale a normal fp16 (tiny blocks below) */
        float scale = (float)pow(10.0, -2.0 + 3.0 * urand());
        for (int64_t c = 0; c < cols; c++) x[c] = nrand() * scale;
        /* special blocks: all zero, one-hot positive / negative extremes, constant */
        for (int j = 0; j < 32; j++) {
            x[j] = 0.0f;
            x[32 + j] = j == 7 ? 3.0f * scale : 0.001f * scale * (float)(j - 16);
            x[64 + j] = j == 30 ? -3.0f * scale : 0.01f * scale * (float)(16 - j);
            x[96 + j] = 2.0f * scale;
            x[128 + j] = 1e-6f * nrand(); /* fp16-subnormal scale: only err <= amax holds */
        }
        vx_quantize_row_q8(x, cols, q8);
        vx_row_to_f32(VX_DT_Q8, q8, 0, cols, y);
        for (int64_t b = 0; b < cols / 32; b++) {
            const uint8_t *blk = q8 + b * VX_Q8_BLOCK_BYTES;
            float d = block_scale(blk), amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
            if (b == 4) {
                for (int j = 0; j < 32; j++)
                    CHECKF(fabsf(y[b * 32 + j] - x[b * 32 + j]) <= amax, "q8 tiny block");
                continue;
            }
            /* d is amax/127 rounded to fp16 (11 significant bits) */
            CHECKF(fabsf(d - amax / 127.0f) <= amax / 127.0f * (1.0f / 2048.0f) + 1e-30f,
                  "q8 block %lld scale %g for amax %g", (long long)b, d, amax);
            for (int j = 0; j < 32; j++) {
                float e = fabsf(y[b * 32 + j] - x[b * 32 + j]);
                CHECKF(e <= 0.5f * d * (1.0f + 1e-6f), "q8 err %g > d/2 (d %g) at %lld", e, d,
                      (long long)(b * 32 + j));
                CHECKF((int8_t)blk[2 + j] != -128, "q8 uses -128");
            }
        }
        vx_quantize_row_q4(x, cols, q4);
        vx_row_to_f32(VX_DT_Q4, q4, 0, cols, y);
        for (int64_t b = 0; b < cols / 32; b++) {
            const uint8_t *blk = q4 + b * VX_Q4_BLOCK_BYTES;
            float d = block_scale(blk), ext = 0;
            for (int j = 0; j < 32; j++)
                if (fabsf(x[b * 32 + j]) > fabsf(ext)) ext = x[b * 32 + j];
            float ad = fabsf(d);
            if (b == 4) {
                for (int j = 0; j < 32; j++)
                    CHECKF(fabsf(y[b * 32 + j] - x[b * 32 + j]) <= 2 * fabsf(ext), "q4 tiny block");
                continue;
            }
            CHECKF(fabsf(ad - fabsf(ext) / 8.0f) <= fabsf(ext) / 8.0f / 2048.0f + 1e-30f,
                  "q4 block %lld scale %g for extreme %g", (long long)b, d, ext);
            for (int j = 0; j < 32; j++) {
                float v = x[b * 32 + j], e = fabsf(y[b * 32 + j] - v);
                /* the signed extreme maps to level 0 (-8 d); values within 7.5 d
                 * of zero round to the nearest level; only the side opposite
                 * the extreme, beyond +7.5 d, is clamped to +7 d */
                float lim = (d != 0 && v / d > 7.5f) ? ad * 1.001f : 0.5f * ad * (1.0f + 1e-6f);
                CHECKF(e <= lim, "q4 err %g > %g (d %g, v %g) at %lld", e, lim, d, v,
                      (long long)(b * 32 + j));
                if (v == ext && ext != 0) {
                    int nib = j < 16 ? (blk[2 + j] & 15) : (blk[2 + j - 16] >> 4);
                    CHECKF(nib == 0, "q4 extreme %g got nibble %d", v, nib);
                }
            }
        }
        /* the all-zero block dequantizes to exact zeros */
        for (int j = 0; j < 32; j++) CHECKF(y[j] == 0.0f, "zero block q4 -> %g", y[j]);
    }
    free(x);
    free(y);
    free(q8);
    free(q4);
}

/* quant.h's row-group layout, spelled out: in a [11, 64] tensor, rows 0-7
 * are a full group and rows 8-10 a group of 3; each group holds, block by
 * block, its rows' scales and then their payloads. */
static void check_layout(void) {
    for (int dt = VX_DT_Q8; dt <= VX_DT_Q4; dt++) {
        const size_t bb = dt == VX_DT_Q8 ? 34 : 18, p = bb - 2, nblk = 2;
        uint8_t data[11 * 2 * 34];
        for (int64_t r = 0; r < 11; r++) {
            const vx_qrow w = vx_q_row(dt, data, 11, 64, r);
            const size_t g0 = r < 8 ? 0 : 8 * nblk * bb, n = r < 8 ? 8 : 3, k = (size_t)(r % 8);
            CHECKF(w.scale == data + g0 + 2 * k && w.payload == data + g0 + 2 * n + k * p &&
                       w.stride == n * bb,
                   "%s row %lld: layout offsets", dt_name(dt), (long long)r);
        }
    }
}

/* vx_argmax against the plain scan it replaces, on lengths around its
 * 4-lane step, with ties (few distinct values), -inf and NaN sprinkled in. */
static void check_argmax(void) {
    static float v[1031];
    for (int n = 1; n <= 1031; n += (n < 40 ? 1 : 97)) {
        for (int trial = 0; trial < 20; trial++) {
            for (int i = 0; i < n; i++) {
                double u = urand();
                const double levels = trial % 2 ? 3 : 1000; /* few levels: many ties */
                v[i] = u < 0.05 ? NAN : u < 0.1 ? -INFINITY : (float)(int)(urand() * levels);
            }
            if (trial == 0) v[0] = NAN;
            if (trial == 1) v[n - 1] = INFINITY;
            int64_t want = 0;
            for (int64_t i = 1; i < n; i++)
                if (v[i] > v[want]) want = i;
            int64_t got = vx_argmax(v, n);
            CHECKF(got == want, "n=%d trial %d: %lld, want %lld", n, trial, (long long)got,
                   (long long)want);
        }
    }
}

/* Units in the last place between two non-negative floats. */
static int64_t ulp_distance(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

/* vx_exp4 against exp in double rounded to float: within 2 ulp from the
 * subnormal results up to FLT_MAX, +Inf and 0 past the ends, NaN kept, and
 * each lane's result the same in whichever lane it sits. */
static void check_exp4(void) {
    const float filler = vx_exp4(vx_splat4(0.5f))[0]; /* the other lanes' value */
    int64_t worst = 0;
    for (int i = 0; i <= 2000000; i++) {
        /* [-104, 88.72] evenly, then random points across the whole range */
        const float x = i < 1000000 ? -104.0f + 192.72f * (float)i / 1000000.0f
                                    : (float)(-110.0 + 200.0 * urand());
        const float want = (float)exp((double)x);
        const int lane = i % 4;
        vx_f32x4 v = vx_splat4(0.5f);
        v[lane] = x;
        const vx_f32x4 e = vx_exp4(v);
        const int64_t d = ulp_distance(e[lane], want);
        worst = d > worst ? d : worst;
        CHECKF(d <= 2, "exp(%.9g): %.9g, want %.9g (%lld ulp)", (double)x, (double)e[lane],
               (double)want, (long long)d);
        CHECKF(e[(lane + 1) % 4] == filler, "lane %d's neighbour", lane);
    }
    printf("vx_exp4: worst %lld ulp from the rounded exp\n", (long long)worst);
    const vx_f32x4 s = vx_exp4((vx_f32x4){INFINITY, -INFINITY, NAN, 0.0f});
    CHECKF(s[0] == INFINITY && s[1] == 0.0f && isnan(s[2]) && s[3] == 1.0f,
           "exp(inf, -inf, nan, 0): %g %g %g %g", (double)s[0], (double)s[1], (double)s[2],
           (double)s[3]);
    const vx_f32x4 t = vx_exp4((vx_f32x4){88.7229f, 89.5f, -103.98f, -120.0f});
    CHECKF(t[0] == INFINITY && t[1] == INFINITY && t[2] == 0.0f && t[3] == 0.0f,
           "exp past the ends: %g %g %g %g", (double)t[0], (double)t[1], (double)t[2],
           (double)t[3]);
}

/* A backend's swiglu against vx_swiglu4 (elementwise.c), bit for bit:
 * random values over the exponential's whole range, the specials, and
 * every tail length; vx_swiglu4 itself against silu in double. */
static void check_swiglu(const vx_backend *be) {
    enum { N = 4099 };
    static float x[N], h[N], a[N], b[N];
    for (int i = 0; i < N; i++) {
        x[i] = (float)(-120.0 + 240.0 * urand());
        if (i % 3 == 0) x[i] = nrand() * 4.0f;
        h[i] = nrand();
    }
    const float special[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 1e-40f, -1e-40f, 88.8f, -88.8f, 104.5f};
    for (size_t k = 0; k < sizeof special / sizeof special[0]; k++) x[7 * k + 1] = special[k];
    for (int len = 1; len <= 40; len++) { /* tails, at several offsets */
        const int off = (len * 37) % 200;
        memcpy(a, x + off, sizeof(float) * (size_t)len);
        memcpy(b, x + off, sizeof(float) * (size_t)len);
        vx_swiglu4(a, h + off, (size_t)len);
        be->swiglu(b, h + off, (size_t)len);
        CHECKF(memcmp(a, b, sizeof(float) * (size_t)len) == 0, "%s swiglu, %d elements at %d", be->name, len, off);
    }
    memcpy(a, x, sizeof x);
    memcpy(b, x, sizeof x);
    vx_swiglu4(a, h, N);
    be->swiglu(b, h, N);
    CHECKF(memcmp(a, b, sizeof a) == 0, "%s swiglu, %d elements", be->name, N);
    for (int i = 0; i < N; i++) {
        if (!isfinite(x[i])) continue;
        const double want = (double)x[i] / (1.0 + exp(-(double)x[i])) * (double)h[i];
        /* below x ~ -88.7, e^-x is +Inf and the result 0: |want| < 1e-35 there */
        CHECKF(fabs((double)a[i] - want) <= 1e-6 * fabs(want) + 1e-35, "swiglu(%g, %g) = %g, want %g",
               (double)x[i], (double)h[i], (double)a[i], want);
    }
}

int main(void) {
    /* the x86 variants differ only in their Q8/Q4 kernels' int8 dot product
     * (vpmaddubsw, AVX-VNNI / AVX512-VNNI vpdpbusd), the NEON ones in SDOT
     * or SMMLA (FEAT_I8MM); each must give the portable backend's bits */
    const vx_backend *backends[] = {vx_backend_portable(),   vx_backend_avx2(),
                                    vx_backend_avxvnni(),    vx_backend_avx512vnni(),
                                    vx_backend_neon(),       vx_backend_neon_i8mm()};
    const char *const names[] = {"portable", "avx2", "avx2+avxvnni", "avx2+avx512vnni",
                                 "neon",     "neon+i8mm"};
    const int dtypes[] = {VX_DT_F32, VX_DT_F16, VX_DT_BF16, VX_DT_Q8, VX_DT_Q4};
    const int64_t shapes[][2] = {{37, 64}, {5, 1088}, {3, 32}, {1, 256}, {67, 320}};
    const int ns[] = {1, 2, 3, 64};

    check_roundtrip();
    check_act_quant(vx_quantize_act_q8);
    check_act_quant_vs_scalar(vx_quantize_act_q8, "vx_quantize_act_q8");
    check_layout();
    check_argmax();
    check_exp4();
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        const vx_backend *be = backends[b];
        if (!be) {
            printf("backend %s: not available here, skipped\n", names[b]);
            continue;
        }
        int before = failures;
        check_act_quant(be->quantize_act);
        check_act_quant_vs_scalar(be->quantize_act, be->name);
        check_swiglu(be);
        for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
            int dt = dtypes[d];
            CHECKF(be->dtypes & (1u << dt), "%s lacks %s", be->name, dt_name(dt));
            if (!(be->dtypes & (1u << dt))) continue;
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
                    check_accuracy(be, dt, shapes[s][0], shapes[s][1], ns[k]);
            check_determinism(be, dt, 37, 320);
            check_determinism(be, dt, 6, 1088);
            if (vx_dt_is_block(dt)) {
                /* every tile shape and edge: n = 1 (8-row groups and the
                 * rows left over), n = 2..9 (tiles of 4, 3, 2 and 1 inputs,
                 * the group streams of 2..8 inputs), rows of several
                 * chunks, a single block, and a full batch */
                for (int n = 1; n <= 9; n++) check_q_exact(be, dt, 37, 320, n);
                for (int n = 2; n <= 8; n++) check_q_exact(be, dt, 21, 1088, n);
                /* pairs of groups (AVX-512 from 2 inputs, AVX2's Q4 from
                 * 3): an odd group left over, and rows of more than one
                 * chunk (x86's stacked steps: 320 blocks, so 700 are
                 * 320 + 320 + 60) */
                for (int n = 2; n <= 8; n++) check_q_exact(be, dt, 29, 1088, n);
                for (int n = 2; n <= 8; n *= 2) check_q_exact(be, dt, 16, 32 * 700, n);
                /* the stacked steps' chunks (from 2 inputs with AVX-512, 3
                 * with AVX2, 4 with AVX-VNNI): 21 blocks in one, and a
                 * chunk of one block after full ones (NEON's 16-block
                 * passes: 129; x86's 320-block chunks: 321) */
                for (int n = 2; n <= 8; n++) check_q_exact(be, dt, 32, 32 * 21, n);
                const int chunk_ns[] = {2, 3, 5};
                for (size_t k = 0; k < sizeof chunk_ns / sizeof chunk_ns[0]; k++) {
                    check_q_exact(be, dt, 16, 32 * 129, chunk_ns[k]);
                    check_q_exact(be, dt, 16, 32 * 321, chunk_ns[k]);
                }
                check_determinism(be, dt, 37, 1088);
                check_q_exact(be, dt, 16, 32, 1);
                check_q_exact(be, dt, 9, 32, 4);
                check_q_exact(be, dt, 19, 1088, 64);
                /* 21 blocks: an odd count (the loops take two blocks at a
                 * time) and a chunk of 16 plus a short one; groups ending in
                 * 3 and 6 rows (partial tiles of 3 and 2 rows) */
                for (int n = 1; n <= 3; n++) {
                    check_q_exact(be, dt, 11, 672, n);
                    check_q_exact(be, dt, 14, 672, n);
                }
                /* rows longer than one pass of a kernel that works through
                 * the columns in passes (NEON's Q4 matrix-vector: 1024
                 * blocks), the chains carried over in Y */
                check_q_exact(be, dt, 9, 32 * 1040, 1);
                check_q_exact(be, dt, 9, 32 * 1040, 2);
            }
        }
        printf("backend %s: %s\n", be->name, failures == before ? "ok" : "FAILED");
    }
    return check_report("test_kernels");
}
