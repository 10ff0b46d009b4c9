/* transformer.c - the pre-norm transformer stack shared by the encoder and
 * the decoder: RMSNorm, GQA attention with interleaved RoPE over a sliding
 * window held in a rolling KV cache, SwiGLU feed-forward. The encoder adds
 * biases; the decoder adds the ada-norm scale. Written once, used twice. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* ---- rolling KV cache ---- */

int vx_kv_init(vx_kv *kv, int n_layers, int kv_dim, int64_t cap_max) {
    memset(kv, 0, sizeof *kv);
    kv->n_layers = n_layers;
    kv->kv_dim = kv_dim;
    kv->cap_max = cap_max;
    kv->k = calloc((size_t)n_layers, sizeof(float *));
    kv->v = calloc((size_t)n_layers, sizeof(float *));
    if (!kv->k || !kv->v) {
        vx_kv_free(kv);
        return -1;
    }
    return 0;
}

int vx_kv_reserve(vx_kv *kv, int64_t pos_end) {
    int64_t need = pos_end < kv->cap_max ? pos_end : kv->cap_max;
    if (need <= kv->cap) return 0;
    int64_t cap = kv->cap ? kv->cap : 64;
    while (cap < need) cap *= 2;
    if (cap > kv->cap_max) cap = kv->cap_max;
    size_t bytes = (size_t)cap * (size_t)kv->kv_dim * sizeof(float);
    for (int l = 0; l < kv->n_layers; l++) {
        float *k = realloc(kv->k[l], bytes);
        if (!k) return -1;
        kv->k[l] = k;
        float *v = realloc(kv->v[l], bytes);
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
        dst->cap_max != src->cap_max)
        return -1;
    if (vx_kv_reserve(dst, src->cap) != 0) return -1;
    size_t bytes = (size_t)src->cap * (size_t)src->kv_dim * sizeof(float);
    for (int l = 0; l < src->n_layers; l++) {
        if (bytes) {
            memcpy(dst->k[l], src->k[l], bytes);
            memcpy(dst->v[l], src->v[l], bytes);
        }
    }
    return 0;
}

/* ---- scratch ---- */

int vx_scratch_reserve(vx_scratch *s, const vx_tf_params *p, int rows, int64_t keys) {
    if (rows <= s->cap_rows && keys <= s->cap_keys) return 0;
    if (rows < s->cap_rows) rows = s->cap_rows;
    if (keys < s->cap_keys) keys = s->cap_keys;
    int qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    size_t r = (size_t)rows;
    float **bufs[] = {&s->x, &s->xn, &s->q, &s->k, &s->v, &s->att, &s->h1, &s->h3, &s->scores};
    size_t sizes[] = {r * p->dim, r * (p->dim > qd ? p->dim : qd), r * qd, r * kvd, r * kvd,
                      r * qd, r * p->hidden_dim, r * p->hidden_dim,
                      r * (size_t)p->n_heads * (size_t)keys};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        float *b = realloc(*bufs[i], sizes[i] * sizeof(float));
        if (!b) return -1;
        *bufs[i] = b;
    }
    s->cap_rows = rows;
    s->cap_keys = keys;
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
    memset(s, 0, sizeof *s);
}

/* ---- attention ---- */

typedef struct {
    const vx_tf_params *p;
    const vx_kv *kv;
    int layer;
    const float *q;
    float *att, *scores;
    int64_t pos0, keys_max;
    int n;
} att_job;

/* 8 running sums in a fixed order: the compiler vectorises this without
 * reassociating (a plain reduction loop stays scalar), and the result does
 * not depend on anything but the two vectors. */
static float dot(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int n8 = n - n % 8;
    for (int c = 0; c < n8; c += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[c + l] * b[c + l];
    for (int c = n8; c < n; c++) acc[c % 8] += a[c] * b[c];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* One (query row, head): softmax(q k^T / sqrt(hd)) v over the window. */
static void att_task(void *ctx, int task) {
    att_job *j = ctx;
    const vx_tf_params *p = j->p;
    int i = task / p->n_heads, h = task % p->n_heads;
    int hd = p->head_dim, kvd = p->n_kv_heads * hd;
    int kvh = h / (p->n_heads / p->n_kv_heads); /* consecutive query heads share a KV head */
    int64_t pos = j->pos0 + i;
    int64_t first = pos - p->window + 1;
    if (first < 0) first = 0;
    const float *q = j->q + (size_t)i * p->n_heads * hd + (size_t)h * hd;
    float *sc = j->scores + (size_t)task * j->keys_max;
    const float *K = j->kv->k[j->layer], *V = j->kv->v[j->layer];
    int64_t cap = j->kv->cap_max;
    float scale = 1.0f / sqrtf((float)hd), mx = -INFINITY;
    int64_t nk = pos - first + 1;
    for (int64_t t = 0; t < nk; t++) {
        const float *k = K + (size_t)((first + t) % cap) * kvd + (size_t)kvh * hd;
        sc[t] = dot(q, k, hd) * scale;
        if (sc[t] > mx) mx = sc[t];
    }
    double sum = 0;
    for (int64_t t = 0; t < nk; t++) {
        sc[t] = expf(sc[t] - mx);
        sum += sc[t];
    }
    float inv = (float)(1.0 / sum);
    float *o = j->att + (size_t)i * p->n_heads * hd + (size_t)h * hd;
    memset(o, 0, sizeof(float) * (size_t)hd);
    for (int64_t t = 0; t < nk; t++) {
        const float *v = V + (size_t)((first + t) % cap) * kvd + (size_t)kvh * hd;
        float w = sc[t] * inv;
        for (int c = 0; c < hd; c++) o[c] += w * v[c];
    }
}

int vx_stack_forward(const vx_model *m, const vx_tf_params *p, const vx_layer *layers,
                     float **ada, vx_kv *kv, vx_scratch *s, float *h, int n, int64_t pos0) {
    const int dim = p->dim, qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    const int hid = p->hidden_dim;
    int64_t keys_max = (p->window < pos0 + n ? p->window : pos0 + n);
    if (vx_scratch_reserve(s, p, n, keys_max) != 0) return -1;
    if (vx_kv_reserve(kv, pos0 + n) != 0) return -1;
    if (n > kv->cap_max - p->window + 1 && kv->cap_max < pos0 + n) return -1; /* would overwrite */

    for (int l = 0; l < p->n_layers; l++) {
        const vx_layer *L = &layers[l];
        for (int i = 0; i < n; i++)
            vx_rmsnorm(s->xn + (size_t)i * dim, h + (size_t)i * dim, L->attn_norm, dim, p->norm_eps);
        vx_matmul(m, &L->wq, s->xn, n, s->q, L->bq);
        vx_matmul(m, &L->wk, s->xn, n, s->k, NULL);
        vx_matmul(m, &L->wv, s->xn, n, s->v, L->bv);
        for (int i = 0; i < n; i++) {
            int64_t pos = pos0 + i;
            vx_rope_interleaved(s->q + (size_t)i * qd, p->n_heads, p->head_dim, pos, p->rope_theta);
            vx_rope_interleaved(s->k + (size_t)i * kvd, p->n_kv_heads, p->head_dim, pos,
                                p->rope_theta);
            size_t slot = (size_t)(pos % kv->cap_max);
            memcpy(kv->k[l] + slot * kvd, s->k + (size_t)i * kvd, sizeof(float) * (size_t)kvd);
            memcpy(kv->v[l] + slot * kvd, s->v + (size_t)i * kvd, sizeof(float) * (size_t)kvd);
        }
        att_job aj = {p, kv, l, s->q, s->att, s->scores, pos0, s->cap_keys, n};
        vx_pool_run(m->pool, n * p->n_heads, att_task, &aj);
        vx_matmul(m, &L->wo, s->att, n, s->xn, L->bo);
        for (size_t i = 0; i < (size_t)n * dim; i++) h[i] += s->xn[i];

        for (int i = 0; i < n; i++) {
            float *xn = s->xn + (size_t)i * dim;
            vx_rmsnorm(xn, h + (size_t)i * dim, L->ffn_norm, dim, p->norm_eps);
            if (ada)
                for (int c = 0; c < dim; c++) xn[c] *= ada[l][c];
        }
        vx_matmul(m, &L->w1, s->xn, n, s->h1, NULL);
        vx_matmul(m, &L->w3, s->xn, n, s->h3, NULL);
        for (size_t i = 0; i < (size_t)n * hid; i++) s->h1[i] = vx_silu(s->h1[i]) * s->h3[i];
        vx_matmul(m, &L->w2, s->h1, n, s->xn, L->b2);
        for (size_t i = 0; i < (size_t)n * dim; i++) h[i] += s->xn[i];
    }
    return 0;
}
