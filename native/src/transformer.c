/* transformer.c - the pre-norm transformer stack shared by the encoder and
 * the decoder: RMSNorm, GQA attention with interleaved RoPE over a sliding
 * window held in a rolling KV cache, SwiGLU feed-forward. The encoder adds
 * biases; the decoder adds the ada-norm scale. Written once, used twice, and
 * run on a device (device.h), which owns the caches and the activations. */
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "stages.h"
#include "util.h"

/* ---- rolling KV cache ---- */

int vx_kv_init(vx_kv *kv, const vx_device *dev, int n_layers, int kv_dim, int64_t cap_max,
               int f16) {
    memset(kv, 0, sizeof *kv);
    kv->dev = dev;
    kv->n_layers = n_layers;
    kv->kv_dim = kv_dim;
    kv->f16 = f16 != 0;
    kv->cap_max = cap_max;
    kv->k = calloc((size_t)n_layers, sizeof(vx_dbuf *));
    kv->v = calloc((size_t)n_layers, sizeof(vx_dbuf *));
    if (!kv->k || !kv->v) {
        vx_kv_free(kv);
        return -1;
    }
    return 0;
}

/* *b grown from old to bytes, keeping its contents (a device has no realloc). */
static int dbuf_grow(const vx_device *dev, vx_dbuf **b, size_t old, size_t bytes) {
    vx_dbuf *nb = dev->alloc(dev, bytes);
    if (!nb) return -1;
    if (*b) {
        dev->copy(dev, nb, 0, *b, 0, old);
        dev->release(dev, *b);
    }
    *b = nb;
    return 0;
}

int vx_kv_reserve(vx_kv *kv, int64_t pos_end) {
    int64_t need = pos_end < kv->cap_max ? pos_end : kv->cap_max;
    if (need <= kv->cap) return 0;
    int64_t cap = vx_grow_cap(kv->cap, need, 64);
    if (cap > kv->cap_max) cap = kv->cap_max;
    const size_t row = (size_t)kv->kv_dim * vx_kv_elem_bytes(kv);
    const size_t old = (size_t)kv->cap * row, bytes = (size_t)cap * row;
    for (int l = 0; l < kv->n_layers; l++)
        if (dbuf_grow(kv->dev, &kv->k[l], old, bytes) != 0 ||
            dbuf_grow(kv->dev, &kv->v[l], old, bytes) != 0)
            return -1; /* kv->cap stays: the layers grown so far only have spare room */
    kv->cap = cap;
    return 0;
}

void vx_kv_free(vx_kv *kv) {
    for (int l = 0; l < kv->n_layers; l++) {
        if (kv->k) kv->dev->release(kv->dev, kv->k[l]);
        if (kv->v) kv->dev->release(kv->dev, kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

int vx_kv_copy(vx_kv *dst, const vx_kv *src) {
    if (dst->n_layers != src->n_layers || dst->kv_dim != src->kv_dim ||
        dst->cap_max != src->cap_max || dst->f16 != src->f16 || dst->dev != src->dev)
        return -1;
    if (vx_kv_reserve(dst, src->cap) != 0) return -1;
    size_t bytes = (size_t)src->cap * (size_t)src->kv_dim * vx_kv_elem_bytes(src);
    for (int l = 0; l < src->n_layers; l++) {
        if (bytes) {
            src->dev->copy(src->dev, dst->k[l], 0, src->k[l], 0, bytes);
            src->dev->copy(src->dev, dst->v[l], 0, src->v[l], 0, bytes);
        }
    }
    return 0;
}

/* ---- scratch ---- */

static int scratch_reserve(vx_scratch *s, const vx_device *dev, const vx_tf_params *p, int rows,
                           size_t scores) {
    if (s->dev && s->dev != dev) return -1;
    s->dev = dev;
    if (rows <= s->cap_rows && scores <= s->cap_scores) return 0;
    if (rows < s->cap_rows) rows = s->cap_rows;
    if (scores < s->cap_scores) scores = s->cap_scores;
    int qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    size_t r = (size_t)rows;
    vx_dbuf **bufs[] = {&s->x, &s->xn, &s->q, &s->k, &s->v, &s->att, &s->h1, &s->h3, &s->scores,
                        &s->rope};
    size_t sizes[] = {r * p->dim, r * (p->dim > qd ? p->dim : qd), r * qd, r * kvd, r * kvd,
                      r * qd, r * p->hidden_dim, r * p->hidden_dim,
                      scores, r * p->head_dim};
    /* the contents need not survive: every pass writes before it reads */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        dev->release(dev, *bufs[i]);
        *bufs[i] = NULL;
    }
    s->cap_rows = s->cap_scores = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (!(*bufs[i] = dev->alloc(dev, sizes[i] * sizeof(float)))) return -1;
    s->cap_rows = rows;
    s->cap_scores = scores;
    return 0;
}

int vx_scratch_reserve_out(vx_scratch *s, const vx_device *dev, size_t out_floats) {
    if (s->dev && s->dev != dev) return -1;
    s->dev = dev;
    if (out_floats <= s->cap_out) return 0;
    dev->release(dev, s->out);
    s->cap_out = 0;
    if (!(s->out = dev->alloc(dev, out_floats * sizeof(float)))) return -1;
    s->cap_out = out_floats;
    return 0;
}

void vx_scratch_free(vx_scratch *s) {
    if (s->dev) {
        vx_dbuf *bufs[] = {s->x,  s->xn,     s->q,    s->k,  s->v, s->att,
                           s->h1, s->h3, s->scores, s->rope, s->out};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) s->dev->release(s->dev, bufs[i]);
    }
    memset(s, 0, sizeof *s);
}

/* ---- the stack ---- */

/* Row r0 onwards of a [rows, cols] buffer: the buffer itself for row 0, else
 * a host pointer into it (segments after the first need a host-visible
 * device; vx_stack_reserve_segs refuses them otherwise). */
static vx_dbuf *rows_at(const vx_device *d, vx_dbuf *b, int r0, int cols) {
    return r0 == 0 ? b : vx_dbuf_host(d, (float *)(void *)b + (size_t)r0 * cols);
}

int vx_stack_reserve_segs(const vx_model *m, const vx_tf_params *p, const vx_stack_seg *seg,
                          int nseg, vx_scratch *s) {
    const vx_device *d = m->dev;
    if (nseg < 1 || (nseg > 1 && !d->host_visible)) return -1;
    int rows = 0;
    size_t scores = 0;
    for (int i = 0; i < nseg; i++) {
        const vx_stack_seg *g = &seg[i];
        size_t sc = d->attention_scratch(p, g->n, g->pos0);
        if (sc > scores) scores = sc;
        rows += g->n;
        if (vx_kv_reserve(g->kv, g->pos0 + g->n) != 0) return -1;
        if (g->n > g->kv->cap_max - p->window + 1 && g->kv->cap_max < g->pos0 + g->n)
            return -1; /* would overwrite */
    }
    return scratch_reserve(s, d, p, rows, scores);
}

int vx_stack_reserve(const vx_model *m, const vx_tf_params *p, vx_kv *kv, vx_scratch *s, int n,
                     int64_t pos0) {
    const vx_stack_seg seg = {NULL, kv, n, pos0};
    return vx_stack_reserve_segs(m, p, &seg, 1, s);
}

/* One layer's attention for each segment: RoPE, its rows into its own
 * cache, and its rows' attention over that cache alone. The rows of the
 * other segments are untouched, so a segment's results are what it gives
 * alone (the CPU kernels' per-row contract). */
static void segs_attention(const vx_model *m, const vx_tf_params *p, const vx_stack_seg *seg,
                           int nseg, vx_scratch *s, int l) {
    const vx_device *d = m->dev;
    const int qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    int r = 0;
    for (int i = 0; i < nseg; i++) {
        const vx_stack_seg *g = &seg[i];
        vx_dbuf *q = rows_at(d, s->q, r, qd), *k = rows_at(d, s->k, r, kvd);
        vx_dbuf *v = rows_at(d, s->v, r, kvd), *att = rows_at(d, s->att, r, qd);
        vx_dbuf *cs = rows_at(d, s->rope, r, p->head_dim);
        d->rope_store(m, p, g->kv, l, q, k, v, cs, g->n, g->pos0);
        d->attention(m, p, g->kv, l, q, att, s->scores, g->n, g->pos0);
        r += g->n;
    }
}

void vx_stack_layers_segs(const vx_model *m, const vx_tf_params *p, const vx_layer *layers,
                          const vx_stack_seg *seg, int nseg, vx_scratch *s) {
    const vx_device *d = m->dev;
    const int dim = p->dim;
    int n = 0;
    for (int i = 0; i < nseg; i++) {
        d->rope_table(m, rows_at(d, s->rope, n, p->head_dim), seg[i].n, p->head_dim, seg[i].pos0,
                      p->rope_theta);
        n += seg[i].n;
    }

    for (int l = 0; l < p->n_layers; l++) {
        const vx_layer *L = &layers[l];
        /* attention: the matrices over every segment's rows at once (one
         * read of the weights), the cache work per segment */
        d->rmsnorm(m, s->xn, s->x, L->attn_norm, NULL, n, dim, p->norm_eps);
        const vx_weight *wqkv[] = {&L->wq, &L->wk, &L->wv};
        vx_dbuf *yqkv[] = {s->q, s->k, s->v};
        const float *bqkv[] = {L->bq, NULL, L->bv};
        d->matmul(m, 3, wqkv, s->xn, n, yqkv, bqkv);
        segs_attention(m, p, seg, nseg, s, l);
        const vx_weight *wo[] = {&L->wo};
        const float *bo[] = {L->bo};
        d->matmul(m, 1, wo, s->att, n, &s->xn, bo);
        d->add(m, s->x, s->xn, (size_t)n * dim);
        /* feed-forward: each segment's norm with its own ada-norm scale */
        for (int i = 0, r = 0; i < nseg; r += seg[i].n, i++)
            d->rmsnorm(m, rows_at(d, s->xn, r, dim), rows_at(d, s->x, r, dim), L->ffn_norm,
                       seg[i].ada ? seg[i].ada[l] : NULL, seg[i].n, dim, p->norm_eps);
        const vx_weight *w13[] = {&L->w1, &L->w3};
        vx_dbuf *y13[] = {s->h1, s->h3};
        const float *b13[] = {NULL, NULL};
        d->matmul(m, 2, w13, s->xn, n, y13, b13);
        d->swiglu(m, s->h1, s->h3, (size_t)n * p->hidden_dim);
        const vx_weight *w2[] = {&L->w2};
        const float *b2[] = {L->b2};
        d->matmul(m, 1, w2, s->h1, n, &s->xn, b2);
        d->add(m, s->x, s->xn, (size_t)n * dim);
    }
}

void vx_stack_layers(const vx_model *m, const vx_tf_params *p, const vx_layer *layers,
                     float **ada, vx_kv *kv, vx_scratch *s, int n, int64_t pos0) {
    const vx_stack_seg seg = {ada, kv, n, pos0};
    vx_stack_layers_segs(m, p, layers, &seg, 1, s);
}

int vx_stack_forward(const vx_model *m, const vx_tf_params *p, const vx_layer *layers,
                     float **ada, vx_kv *kv, vx_scratch *s, float *h, int n, int64_t pos0) {
    const vx_device *d = m->dev;
    const size_t bytes = sizeof(float) * (size_t)n * p->dim;
    if (vx_stack_reserve(m, p, kv, s, n, pos0) != 0) return -1;
    d->upload(d, s->x, 0, h, bytes);
    vx_stack_layers(m, p, layers, ada, kv, s, n, pos0);
    d->download(d, h, s->x, 0, bytes);
    return 0;
}
