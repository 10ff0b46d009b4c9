/* transformer.c - the pre-norm transformer stack shared by the encoder and
 * the decoder: RMSNorm, GQA attention with interleaved RoPE over a sliding
 * window held in a rolling KV cache, SwiGLU feed-forward. The encoder adds
 * biases; the decoder adds the ada-norm scale. Written once, used twice. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "quant.h"
#include "util.h"

/* ---- rolling KV cache ---- */

static size_t kv_elem_bytes(const vx_kv *kv) { return kv->f16 ? sizeof(uint16_t) : sizeof(float); }

int vx_kv_init(vx_kv *kv, int n_layers, int kv_dim, int64_t cap_max, int f16) {
    memset(kv, 0, sizeof *kv);
    kv->n_layers = n_layers;
    kv->kv_dim = kv_dim;
    kv->f16 = f16 != 0;
    kv->cap_max = cap_max;
    kv->k = calloc((size_t)n_layers, sizeof(void *));
    kv->v = calloc((size_t)n_layers, sizeof(void *));
    if (!kv->k || !kv->v) {
        vx_kv_free(kv);
        return -1;
    }
    return 0;
}

int vx_kv_reserve(vx_kv *kv, int64_t pos_end) {
    int64_t need = pos_end < kv->cap_max ? pos_end : kv->cap_max;
    if (need <= kv->cap) return 0;
    int64_t cap = vx_grow_cap(kv->cap, need, 64);
    if (cap > kv->cap_max) cap = kv->cap_max;
    size_t bytes = (size_t)cap * (size_t)kv->kv_dim * kv_elem_bytes(kv);
    for (int l = 0; l < kv->n_layers; l++) {
        void *k = realloc(kv->k[l], bytes);
        if (!k) return -1;
        kv->k[l] = k;
        void *v = realloc(kv->v[l], bytes);
        if (!v) return -1;
        kv->v[l] = v;
    }
    kv->cap = cap;
    return 0;
}

void vx_kv_free(vx_kv *kv) {
    for (int l = 0; l < kv->n_layers; l++) {
        if (kv->k) free(kv->k[l]);
        if (kv->v) free(kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

int vx_kv_copy(vx_kv *dst, const vx_kv *src) {
    if (dst->n_layers != src->n_layers || dst->kv_dim != src->kv_dim ||
        dst->cap_max != src->cap_max || dst->f16 != src->f16)
        return -1;
    if (vx_kv_reserve(dst, src->cap) != 0) return -1;
    size_t bytes = (size_t)src->cap * (size_t)src->kv_dim * kv_elem_bytes(src);
    for (int l = 0; l < src->n_layers; l++) {
        if (bytes) {
            memcpy(dst->k[l], src->k[l], bytes);
            memcpy(dst->v[l], src->v[l], bytes);
        }
    }
    return 0;
}

/* ---- scratch ---- */

int vx_scratch_reserve(vx_scratch *s, const vx_tf_params *p, int rows, size_t scores) {
    if (rows <= s->cap_rows && scores <= s->cap_scores) return 0;
    if (rows < s->cap_rows) rows = s->cap_rows;
    if (scores < s->cap_scores) scores = s->cap_scores;
    int qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    size_t r = (size_t)rows;
    float **bufs[] = {&s->x, &s->xn, &s->q, &s->k, &s->v, &s->att, &s->h1, &s->h3, &s->scores,
                      &s->rope};
    size_t sizes[] = {r * p->dim, r * (p->dim > qd ? p->dim : qd), r * qd, r * kvd, r * kvd,
                      r * qd, r * p->hidden_dim, r * p->hidden_dim,
                      scores, r * p->head_dim};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        float *b = realloc(*bufs[i], sizes[i] * sizeof(float));
        if (!b) return -1;
        *bufs[i] = b;
    }
    s->cap_rows = rows;
    s->cap_scores = scores;
    return 0;
}

void vx_scratch_free(vx_scratch *s) {
    free(s->x);
    free(s->xn);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->att);
    free(s->h1);
    free(s->h3);
    free(s->scores);
    free(s->rope);
    memset(s, 0, sizeof *s);
}

/* ---- attention ---- */

/* A task takes ATT_ROWS query rows x the query heads of one KV head, so each
 * key row read (and widened from fp16) serves up to ATT_ROWS x group queries.
 * The rows' windows differ by a few keys: scores are taken over their union
 * and each query's softmax puts exact zeros outside its own window, which
 * leaves its output bitwise what it would be alone (a zero weight adds +0). */
#define ATT_ROWS 4
#define ATT_MAXQ 16 /* queries per kernel call */

typedef struct {
    const vx_model *m;
    const vx_tf_params *p;
    const vx_kv *kv;
    int layer;
    const float *q;
    float *att, *scores;
    size_t scores_per_task; /* floats of scores one task may use */
    int64_t pos0;
    int n;
} att_job;

/* Queries per task and keys per query row of the score buffer. */
static int att_queries(const vx_tf_params *p) {
    int q = ATT_ROWS * (p->n_heads / p->n_kv_heads);
    return q < ATT_MAXQ ? q : ATT_MAXQ;
}

static void att_task(void *ctx, int task) {
    att_job *j = ctx;
    const vx_tf_params *p = j->p;
    const vx_backend *be = j->m->be;
    const int hd = p->head_dim, kvd = p->n_kv_heads * hd, grp = p->n_heads / p->n_kv_heads;
    const int g = task % p->n_kv_heads; /* consecutive query heads share a KV head */
    const int i0 = task / p->n_kv_heads * ATT_ROWS;
    const int i1 = i0 + ATT_ROWS < j->n ? i0 + ATT_ROWS : j->n;
    const int64_t cap = j->kv->cap_max;
    const size_t es = kv_elem_bytes(j->kv);
    const int f16 = j->kv->f16;
    const float scale = 1.0f / sqrtf((float)hd);

    /* union of the rows' windows [a, b] and its place in the rolling cache */
    int64_t a = j->pos0 + i0 - p->window + 1;
    if (a < 0) a = 0;
    const int64_t b = j->pos0 + i1 - 1, nk = b - a + 1;
    const int64_t s0 = a % cap, len0 = nk < cap - s0 ? nk : cap - s0;
    const uint8_t *K = (const uint8_t *)j->kv->k[j->layer] + (size_t)g * hd * es;
    const uint8_t *V = (const uint8_t *)j->kv->v[j->layer] + (size_t)g * hd * es;
    float *S = j->scores + (size_t)task * j->scores_per_task;

    const int total = (i1 - i0) * grp, maxq = att_queries(p);
    for (int q0 = 0; q0 < total; q0 += maxq) {
        const int nq = total - q0 < maxq ? total - q0 : maxq;
        const float *qp[ATT_MAXQ];
        float *op[ATT_MAXQ];
        for (int k = 0; k < nq; k++) {
            int i = i0 + (q0 + k) / grp, h = g * grp + (q0 + k) % grp;
            qp[k] = j->q + (size_t)i * p->n_heads * hd + (size_t)h * hd;
            op[k] = j->att + (size_t)i * p->n_heads * hd + (size_t)h * hd;
            memset(op[k], 0, sizeof(float) * (size_t)hd);
        }
        be->attn_scores(qp, nq, K + (size_t)s0 * kvd * es, f16, (size_t)kvd, len0, hd, S, (size_t)nk);
        if (len0 < nk)
            be->attn_scores(qp, nq, K, f16, (size_t)kvd, nk - len0, hd, S + len0, (size_t)nk);
        for (int k = 0; k < nq; k++) {
            int64_t pos = j->pos0 + i0 + (q0 + k) / grp;
            int64_t lo = pos - p->window + 1 < a ? 0 : pos - p->window + 1 - a, hi = pos - a;
            float *sc = S + (size_t)k * nk, mx = -INFINITY;
            for (int64_t t = lo; t <= hi; t++) {
                sc[t] *= scale;
                if (sc[t] > mx) mx = sc[t];
            }
            double sum = 0;
            for (int64_t t = lo; t <= hi; t++) {
                sc[t] = expf(sc[t] - mx);
                sum += sc[t];
            }
            float inv = (float)(1.0 / sum);
            for (int64_t t = 0; t < lo; t++) sc[t] = 0.0f;
            for (int64_t t = lo; t <= hi; t++) sc[t] *= inv;
            for (int64_t t = hi + 1; t < nk; t++) sc[t] = 0.0f;
        }
        be->attn_values(S, (size_t)nk, nq, V + (size_t)s0 * kvd * es, f16, (size_t)kvd, len0, hd, op);
        if (len0 < nk)
            be->attn_values(S + len0, (size_t)nk, nq, V, f16, (size_t)kvd, nk - len0, hd, op);
    }
}

/* A row of floats -> fp16, the same bits as vx_f32_to_f16 per element: a
 * branch-free pass (which the compiler vectorizes) that is exact for normal,
 * infinite and NaN results, then vx_f32_to_f16 for the rare elements whose
 * result is subnormal or zero. */
static void f16_row(uint16_t *out, const float *x, int n) {
    int32_t tiny = 0;
    for (int c = 0; c < n; c++) {
        uint32_t u;
        memcpy(&u, &x[c], 4);
        const int32_t a = (int32_t)(u & 0x7fffffff);
        /* (e - 112) << 10 | man >> 13, rounded to nearest even: the low 13
         * bits plus 0xfff plus the kept lsb carry iff they round up */
        uint32_t h = ((uint32_t)a - 0x38000000u) >> 13;
        h += (((uint32_t)a & 0x1fff) + 0xfff + (h & 1)) >> 13;
        h = a >= 0x47800000 ? 0x7c00 : h;            /* |x| >= 65536: inf */
        h = a > 0x7f800000 ? 0x7e00 : h;             /* NaN */
        out[c] = (uint16_t)(((u >> 16) & 0x8000) | h);
        tiny |= a < 0x38800000;                      /* below 2^-14 */
    }
    if (tiny)
        for (int c = 0; c < n; c++)
            if ((fabsf(x[c]) < 0x1p-14f)) out[c] = vx_f32_to_f16(x[c]);
}

/* RoPE on row i of q and k, then k/v row i into its slot of the cache (as
 * fp16 or float): one pool task per row, since these run for every row of
 * every layer and cost as much as a few percent of the matrix work alone. */
typedef struct {
    const vx_tf_params *p;
    vx_kv *kv;
    int layer;
    float *q, *k;
    const float *v, *rope;
    int64_t pos0;
} qkv_job;

static void qkv_task(void *ctx, int i) {
    qkv_job *j = ctx;
    const vx_tf_params *p = j->p;
    vx_kv *kv = j->kv;
    const int qd = p->n_heads * p->head_dim, kvd = kv->kv_dim;
    const int64_t pos = j->pos0 + i;
    float *ki = j->k + (size_t)i * kvd;
    const float *vi = j->v + (size_t)i * kvd;
    const float *cs = j->rope + (size_t)i * p->head_dim;
    vx_rope_apply(j->q + (size_t)i * qd, p->n_heads, p->head_dim, cs);
    vx_rope_apply(ki, p->n_kv_heads, p->head_dim, cs);
    const size_t slot = (size_t)(pos % kv->cap_max);
    if (kv->f16) {
        uint16_t *kd = (uint16_t *)kv->k[j->layer] + slot * kvd;
        uint16_t *vd = (uint16_t *)kv->v[j->layer] + slot * kvd;
        f16_row(kd, ki, kvd);
        f16_row(vd, vi, kvd);
    } else {
        memcpy((float *)kv->k[j->layer] + slot * kvd, ki, sizeof(float) * (size_t)kvd);
        memcpy((float *)kv->v[j->layer] + slot * kvd, vi, sizeof(float) * (size_t)kvd);
    }
}

/* h1 = silu(h1) * h3 on the pool: expf per element of [n, hidden] is the
 * largest element-wise cost of the feed-forward. */
#define SWIGLU_TASK 4096 /* elements per task */

typedef struct {
    float *h1;
    const float *h3;
    size_t count;
} swiglu_job;

static void swiglu_task(void *ctx, int t) {
    swiglu_job *j = ctx;
    const size_t i0 = (size_t)t * SWIGLU_TASK;
    const size_t i1 = i0 + SWIGLU_TASK < j->count ? i0 + SWIGLU_TASK : j->count;
    for (size_t i = i0; i < i1; i++) j->h1[i] = vx_silu(j->h1[i]) * j->h3[i];
}

int vx_stack_forward(const vx_model *m, const vx_tf_params *p, const vx_layer *layers,
                     float **ada, vx_kv *kv, vx_scratch *s, float *h, int n, int64_t pos0) {
    const int dim = p->dim;
    const int hid = p->hidden_dim;
    /* per attention task: its queries x the union of its rows' windows */
    const int n_tasks = (n + ATT_ROWS - 1) / ATT_ROWS * p->n_kv_heads;
    const int64_t keys = (p->window < pos0 + n ? p->window : pos0 + n) + ATT_ROWS - 1;
    const size_t per_task = (size_t)att_queries(p) * (size_t)keys;
    if (vx_scratch_reserve(s, p, n, (size_t)n_tasks * per_task) != 0) return -1;
    if (vx_kv_reserve(kv, pos0 + n) != 0) return -1;
    if (n > kv->cap_max - p->window + 1 && kv->cap_max < pos0 + n) return -1; /* would overwrite */
    for (int i = 0; i < n; i++)
        vx_rope_table(s->rope + (size_t)i * p->head_dim, p->head_dim, pos0 + i, p->rope_theta);

    for (int l = 0; l < p->n_layers; l++) {
        const vx_layer *L = &layers[l];
        for (int i = 0; i < n; i++)
            vx_rmsnorm(s->xn + (size_t)i * dim, h + (size_t)i * dim, L->attn_norm, dim, p->norm_eps);
        const vx_weight *wqkv[] = {&L->wq, &L->wk, &L->wv};
        float *yqkv[] = {s->q, s->k, s->v};
        const float *bqkv[] = {L->bq, NULL, L->bv};
        vx_matmul_multi(m, 3, wqkv, s->xn, n, yqkv, bqkv);
        qkv_job qj = {p, kv, l, s->q, s->k, s->v, s->rope, pos0};
        vx_pool_run(m->pool, n, qkv_task, &qj);
        att_job aj = {m, p, kv, l, s->q, s->att, s->scores, per_task, pos0, n};
        vx_pool_run(m->pool, n_tasks, att_task, &aj);
        vx_matmul(m, &L->wo, s->att, n, s->xn, L->bo);
        for (size_t i = 0; i < (size_t)n * dim; i++) h[i] += s->xn[i];

        for (int i = 0; i < n; i++) {
            float *xn = s->xn + (size_t)i * dim;
            vx_rmsnorm(xn, h + (size_t)i * dim, L->ffn_norm, dim, p->norm_eps);
            if (ada)
                for (int c = 0; c < dim; c++) xn[c] *= ada[l][c];
        }
        const vx_weight *w13[] = {&L->w1, &L->w3};
        float *y13[] = {s->h1, s->h3};
        const float *b13[] = {NULL, NULL};
        vx_matmul_multi(m, 2, w13, s->xn, n, y13, b13);
        swiglu_job sj = {s->h1, s->h3, (size_t)n * hid};
        vx_pool_run(m->pool, (int)((sj.count + SWIGLU_TASK - 1) / SWIGLU_TASK), swiglu_task, &sj);
        vx_matmul(m, &L->w2, s->h1, n, s->xn, L->b2);
        for (size_t i = 0; i < (size_t)n * dim; i++) h[i] += s->xn[i];
    }
    return 0;
}
