/* kernels.c - the backend seam: picks kernels for this CPU, splits matrix
 * work over the thread pool, and holds the small element-wise operations. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "quant.h"
#include "util.h"
#include "vec4.h"

#if !defined(VX_HAVE_AVX2)
const vx_backend *vx_backend_avx2(void) { return NULL; }
#endif
#if !defined(VX_HAVE_AVXVNNI)
const vx_backend *vx_backend_avxvnni(void) { return NULL; }
#endif
#if !defined(VX_HAVE_AVX512VNNI)
const vx_backend *vx_backend_avx512vnni(void) { return NULL; }
#endif
#if !defined(VX_HAVE_NEON)
const vx_backend *vx_backend_neon(void) { return NULL; }
#endif
#if !defined(VX_HAVE_NEON_I8MM)
const vx_backend *vx_backend_neon_i8mm(void) { return NULL; }
#endif

/* "avx2": the AVX2 backend with the best int8 dot product this CPU has for
 * its Q8/Q4 kernels (vpdpbusd from AVX512-VNNI or AVX-VNNI, else
 * vpmaddubsw); "avx2-plain", "avxvnni" and "avx512vnni" name one variant
 * (tests and A/B timing). All give the same bits. */
static const vx_backend *x86_best(void) {
    const vx_backend *b = vx_backend_avx512vnni(); /* EVEX: 32 registers, wider tiles */
    if (!b) b = vx_backend_avxvnni();
    return b ? b : vx_backend_avx2();
}

/* "neon": likewise SMMLA where the CPU has FEAT_I8MM, else SDOT or the base
 * instructions; "neon-plain" and "neon-i8mm" name one. */
static const vx_backend *neon_best(void) {
    const vx_backend *b = vx_backend_neon_i8mm();
    return b ? b : vx_backend_neon();
}

/* The CPU backends, best first: the default is the first one this CPU and
 * build have. A new backend is one line here (and its file in kernels/). */
static const struct {
    const char *name;
    const vx_backend *(*get)(void); /* NULL where not compiled in or the CPU lacks it */
} backends[] = {
    {"avx2", x86_best},
    {"avx2-plain", vx_backend_avx2},
    {"avxvnni", vx_backend_avxvnni},
    {"avx512vnni", vx_backend_avx512vnni},
    {"neon", neon_best},
    {"neon-plain", vx_backend_neon},
    {"neon-i8mm", vx_backend_neon_i8mm},
    {"portable", vx_backend_portable},
};
#define N_BACKENDS (sizeof backends / sizeof backends[0])

const vx_backend *vx_backend_select(const char *name, char *err, size_t err_len) {
    if (name && *name) {
        for (size_t i = 0; i < N_BACKENDS; i++) {
            if (strcmp(name, backends[i].name) != 0) continue;
            const vx_backend *b = backends[i].get();
            if (!b)
                vx_errf(err, err_len, NULL, "backend '%s' is not available on this CPU/build",
                        name);
            return b;
        }
        char names[128] = "";
        for (size_t i = 0; i < N_BACKENDS; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                     backends[i].name);
        vx_errf(err, err_len, NULL, "unknown backend '%s' (%s)", name, names);
        return NULL;
    }
    for (size_t i = 0; i < N_BACKENDS; i++) {
        const vx_backend *b = backends[i].get();
        if (b) return b;
    }
    return vx_backend_portable();
}

/* ---- threaded matmul ---- */

#define BATCH 64 /* rows of X per kernel call (the kernels' stack limit) */

/* Up to VX_MATMUL_MAX weights that read the same X, run as one pool job:
 * their row ranges are the tasks of a single dispatch, and Q8/Q4 inputs are
 * quantized once for all of them. X is floats, or (Q8/Q4 weights) int8
 * blocks xq (values, scales, sums) quantized beforehand, for at most BATCH
 * rows in that case. */
typedef struct {
    const vx_weight *W;
    float *Y;
    const float *bias;
    int64_t rows_per_task;
    int first_task;
} mm_part;

typedef struct {
    const vx_model *m;
    const float *X;
    vx_qact xq; /* xq.q set: X quantized (Q8/Q4 weights) */
    int n;
    int n_parts;
    mm_part part[VX_MATMUL_MAX];
} mm_job;

static void mm_task(void *ctx, int task) {
    mm_job *j = ctx;
    int p = j->n_parts - 1;
    while (task < j->part[p].first_task) p--;
    const mm_part *pt = &j->part[p];
    const vx_weight *W = pt->W;
    const int64_t r0 = (int64_t)(task - pt->first_task) * pt->rows_per_task;
    const int64_t r1 = r0 + pt->rows_per_task < W->rows ? r0 + pt->rows_per_task : W->rows;
    const int ldy = (int)W->rows;
    const vx_backend *be = j->m->be, *portable = vx_backend_portable();
    if (!(be->dtypes & (1u << W->dtype))) be = portable;
    for (int i0 = 0; i0 < j->n; i0 += BATCH) {
        int nb = j->n - i0 < BATCH ? j->n - i0 : BATCH;
        float *y = pt->Y + (size_t)i0 * W->rows;
        /* a backend may decline a shape (e.g. cols not a multiple of its width) */
        if (j->xq.q) {
            if (be->matmul_rows_q(W, &j->xq, nb, y, ldy, r0, r1) != 0)
                portable->matmul_rows_q(W, &j->xq, nb, y, ldy, r0, r1);
        } else {
            const float *x = j->X + (size_t)i0 * W->cols;
            if (be->matmul_rows(W, x, nb, (int)W->cols, y, ldy, r0, r1) != 0)
                portable->matmul_rows(W, x, nb, (int)W->cols, y, ldy, r0, r1);
        }
        if (pt->bias)
            for (int i = 0; i < nb; i++)
                for (int64_t r = r0; r < r1; r++) y[(size_t)i * W->rows + r] += pt->bias[r];
    }
}

/* ---- Q8 / Q4 weights: X quantized to int8 once per call, integer dots */

struct vx_actbuf {
    pthread_mutex_t mu;
    int64_t max_cols;
    int8_t *q;  /* [BATCH, max_cols] */
    float *d;   /* [BATCH, max_cols / 32] */
    int32_t *s; /* [BATCH, max_cols / 32] */
};

vx_actbuf *vx_actbuf_new(int64_t max_cols) {
    vx_actbuf *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    if (max_cols < VX_QBLOCK) max_cols = VX_QBLOCK;
    a->max_cols = max_cols;
    a->q = malloc((size_t)BATCH * (size_t)max_cols);
    a->d = malloc(sizeof(float) * (size_t)BATCH * (size_t)(max_cols / VX_QBLOCK));
    a->s = malloc(sizeof(int32_t) * (size_t)BATCH * (size_t)(max_cols / VX_QBLOCK));
    if (!a->q || !a->d || !a->s || pthread_mutex_init(&a->mu, NULL) != 0) {
        free(a->q);
        free(a->d);
        free(a->s);
        free(a);
        return NULL;
    }
    return a;
}

void vx_actbuf_free(vx_actbuf *a) {
    if (!a) return;
    pthread_mutex_destroy(&a->mu);
    free(a->q);
    free(a->d);
    free(a->s);
    free(a);
}

static int64_t rows_per_task(const vx_model *m, const vx_weight *W) {
    int threads = vx_pool_size(m->pool);
    /* several tasks per thread balance uneven cores; rows stay in 16s for SIMD */
    int64_t tasks = (int64_t)threads * 4;
    int64_t per = (W->rows + tasks - 1) / tasks;
    per = (per + 15) / 16 * 16;
    return per < 16 ? 16 : per;
}

/* The job's parts and task numbering for W[0..nw); returns the task count. */
static int mm_plan(const vx_model *m, int nw, const vx_weight *const *W, float *const *Y,
                   const float *const *bias, mm_job *j) {
    int tasks = 0;
    j->n_parts = nw;
    for (int p = 0; p < nw; p++) {
        const int64_t per = rows_per_task(m, W[p]);
        j->part[p] = (mm_part){W[p], Y[p], bias[p], per, tasks};
        tasks += (int)((W[p]->rows + per - 1) / per);
    }
    return tasks;
}

/* Row i of a batch (X at the batch's first row) quantized into row i of the
 * activation buffer. With several rows (streams stacked in one decoder
 * pass, encoder batches) this is a pool job of one task per row, so that no
 * thread waits while one quantizes. */
typedef struct {
    const vx_backend *be;
    const float *X;
    int64_t cols;
    vx_actbuf *a;
} quant_job;

static void quant_task(void *ctx, int i) {
    const quant_job *q = ctx;
    const size_t cols = (size_t)q->cols, nblk = cols / VX_QBLOCK;
    q->be->quantize_act(q->X + (size_t)i * cols, q->cols, q->a->q + (size_t)i * cols,
                       q->a->d + (size_t)i * nblk, q->a->s + (size_t)i * nblk);
}

/* BATCH rows of X at a time are quantized into the model's buffer (held for
 * the whole call: the tasks read it) and multiplied on the pool. */
static void matmul_q(const vx_model *m, int nw, const vx_weight *const *W, const float *X, int n,
                     float *const *Y, const float *const *bias) {
    vx_actbuf *a = m->act;
    const int64_t cols = W[0]->cols;
    if (!a || a->max_cols < cols) {
        for (int p = 0; p < nw; p++)
            for (size_t k = 0; k < (size_t)n * (size_t)W[p]->rows; k++) Y[p][k] = NAN;
        return;
    }
    mm_job j = {.m = m};
    const int n_tasks = mm_plan(m, nw, W, Y, bias, &j);
    pthread_mutex_lock(&a->mu);
    for (int i0 = 0; i0 < n; i0 += BATCH) {
        const int nb = n - i0 < BATCH ? n - i0 : BATCH;
        quant_job qj = {m->be, X + (size_t)i0 * (size_t)cols, cols, a};
        if (nb > 1) vx_pool_run(m->pool, nb, quant_task, &qj);
        else quant_task(&qj, 0);
        j.xq = (vx_qact){a->q, a->d, a->s};
        j.n = nb;
        for (int p = 0; p < nw; p++) j.part[p].Y = Y[p] + (size_t)i0 * W[p]->rows;
        vx_pool_run(m->pool, n_tasks, mm_task, &j);
    }
    pthread_mutex_unlock(&a->mu);
}

void vx_matmul_multi(const vx_model *m, int nw, const vx_weight *const *W, const float *X, int n,
                     float *const *Y, const float *const *bias) {
    if (n <= 0 || nw <= 0) return;
    /* one job needs one kind of input (float or int8 blocks) of one width */
    int same = nw <= VX_MATMUL_MAX;
    for (int p = 1; p < nw && same; p++)
        same = W[p]->cols == W[0]->cols && vx_dt_is_block(W[p]->dtype) == vx_dt_is_block(W[0]->dtype);
    if (!same) {
        for (int p = 0; p < nw; p++) vx_matmul_multi(m, 1, &W[p], X, n, &Y[p], &bias[p]);
        return;
    }
    if (vx_dt_is_block(W[0]->dtype)) {
        matmul_q(m, nw, W, X, n, Y, bias);
        return;
    }
    mm_job j = {.m = m, .X = X, .n = n};
    const int n_tasks = mm_plan(m, nw, W, Y, bias, &j);
    vx_pool_run(m->pool, n_tasks, mm_task, &j);
}

void vx_matmul(const vx_model *m, const vx_weight *W, const float *X, int n, float *Y,
               const float *bias) {
    vx_matmul_multi(m, 1, &W, X, n, &Y, &bias);
}

void vx_weight_row(const vx_weight *W, int64_t r, float *out) {
    if (vx_dt_is_block(W->dtype)) {
        vx_q_row_to_f32(W->dtype, vx_q_row(W->dtype, W->data, W->rows, W->cols, r), 0, W->cols, out);
        return;
    }
    const uint8_t *row = (const uint8_t *)W->data + (size_t)r * vx_row_bytes(W->dtype, W->cols);
    vx_row_to_f32(W->dtype, row, 0, W->cols, out);
}

/* ---- attention ---- */

void vx_attn_values_fma_cols(const float *P, size_t ldp, int nq, const void *V, int f16,
                             size_t ldv, int64_t nk, int c0, int c1, float *const *o) {
    const size_t es = f16 ? 2 : 4;
    for (int k = 0; k < nq; k++)
        for (int c = c0; c < c1; c++) {
            float acc = o[k][c];
            for (int64_t t = 0; t < nk; t++) {
                const void *row = (const uint8_t *)V + (size_t)t * ldv * es;
                float v = f16 ? vx_f16_to_f32(((const uint16_t *)row)[c]) : ((const float *)row)[c];
                acc = fmaf(P[(size_t)k * ldp + (size_t)t], v, acc);
            }
            o[k][c] = acc;
        }
}

/* ---- element-wise ---- */

void vx_rmsnorm(float *out, const float *x, const float *w, int n, double eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

void vx_rope_table(float *cs, int head_dim, int64_t pos, double theta) {
    for (int j = 0; j < head_dim / 2; j++) {
        double a = (double)pos * pow(theta, -2.0 * j / head_dim);
        cs[2 * j] = (float)cos(a);
        cs[2 * j + 1] = (float)sin(a);
    }
}

void vx_rope_apply(float *x, int n_heads, int head_dim, const float *cs) {
    for (int h = 0; h < n_heads; h++)
        for (int j = 0; j < head_dim / 2; j++) {
            float *p = x + (size_t)h * head_dim + 2 * j;
            const float c = cs[2 * j], s = cs[2 * j + 1], x0 = p[0], x1 = p[1];
            p[0] = x0 * c - x1 * s;
            p[1] = x0 * s + x1 * c;
        }
}

/* In vec4.h's 4-lane vectors (SSE2, NEON): a scalar scan's
 * compare chain over the 131072 logits cost ~0.5 ms per decoder step, 0.8 %
 * of it. Each lane keeps its first index of its largest value (strict >), so
 * the answer is the lowest such index among the lanes holding the maximum. */
int64_t vx_argmax(const float *v, int64_t n) {
    if (n <= 0 || isnan(v[0])) return 0;
    int64_t i = 0, best = 0;
    float mx = v[0];
    if (n <= INT32_MAX) { /* lane indices are int32 */
        vx_f32x4 m = vx_splat4(v[0]);
        vx_i32x4 idx = {0, 0, 0, 0}, at = {0, 1, 2, 3};
        const vx_i32x4 four = {4, 4, 4, 4};
        for (; i + 4 <= n; i += 4, at += four) {
            const vx_f32x4 x = vx_load4(v + i);
            const vx_i32x4 gt = x > m;
            m = vx_select4(gt, x, m);
            idx = vx_select4i(gt, at, idx);
        }
        for (int k = 0; k < 4; k++)
            if (m[k] > mx || (m[k] == mx && idx[k] < best)) {
                mx = m[k];
                best = idx[k];
            }
    }
    for (; i < n; i++)
        if (v[i] > mx) {
            mx = v[i];
            best = i;
        }
    return best;
}

float vx_gelu(float x) { return (float)(0.5 * x * (1.0 + erf(x / sqrt(2.0)))); }

