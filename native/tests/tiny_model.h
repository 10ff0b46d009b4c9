/* tiny_model.h - a small random Voxtral-shaped model built in memory for the
 * C tests: no files, no Python, so it runs under the sanitizers and under
 * qemu alike. Every dimension is small but none is degenerate: grouped
 * attention (2 query heads per KV head), sliding windows that the stream
 * outruns (so the rolling caches wrap), encoder biases, the decoder's
 * ada-norm. Weights are F32 (random normal / sqrt(cols), deterministic);
 * the tokenizer is empty, so every token's text is "" (stream events still
 * carry the ids). */
#ifndef VX_TEST_TINY_MODEL_H
#define VX_TEST_TINY_MODEL_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"

#define TINY_MAX_WEIGHTS 64

typedef struct {
    vx_model *m;
    void *weights[TINY_MAX_WEIGHTS]; /* the weights' data: vx_model_free leaves it */
    int n_weights;
    uint64_t rng;
} tiny_model;

static double tiny_urand(tiny_model *t) {
    t->rng ^= t->rng >> 12;
    t->rng ^= t->rng << 25;
    t->rng ^= t->rng >> 27;
    return (double)((t->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static float tiny_nrand(tiny_model *t) {
    return (float)((tiny_urand(t) + tiny_urand(t) + tiny_urand(t) + tiny_urand(t) - 2.0) * 1.73);
}

static void *tiny_alloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "tiny_model: out of memory\n");
        exit(2);
    }
    return p;
}

static vx_weight tiny_weight(tiny_model *t, int64_t rows, int64_t cols) {
    if (t->n_weights == TINY_MAX_WEIGHTS) {
        fprintf(stderr, "tiny_model: raise TINY_MAX_WEIGHTS\n");
        exit(2);
    }
    float *d = tiny_alloc(sizeof(float) * (size_t)(rows * cols));
    const float sc = 1.0f / sqrtf((float)cols);
    for (int64_t i = 0; i < rows * cols; i++) d[i] = tiny_nrand(t) * sc;
    t->weights[t->n_weights++] = d;
    vx_weight w = {VX_DT_F32, rows, cols, d};
    return w;
}

/* base + spread * noise: norms near 1, biases near 0 (freed by vx_model_free). */
static float *tiny_vector(tiny_model *t, int64_t n, float base, float spread) {
    float *v = tiny_alloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = base + spread * tiny_nrand(t);
    return v;
}

static void tiny_stack(tiny_model *t, const vx_tf_params *p, vx_layer *layers, int encoder) {
    const int64_t dim = p->dim, qd = (int64_t)p->n_heads * p->head_dim,
                  kvd = (int64_t)p->n_kv_heads * p->head_dim, hid = p->hidden_dim;
    for (int l = 0; l < p->n_layers; l++) {
        vx_layer *L = &layers[l];
        L->wq = tiny_weight(t, qd, dim);
        L->wk = tiny_weight(t, kvd, dim);
        L->wv = tiny_weight(t, kvd, dim);
        L->wo = tiny_weight(t, dim, qd);
        L->w1 = tiny_weight(t, hid, dim);
        L->w3 = tiny_weight(t, hid, dim);
        L->w2 = tiny_weight(t, dim, hid);
        L->attn_norm = tiny_vector(t, dim, 1.0f, 0.1f);
        L->ffn_norm = tiny_vector(t, dim, 1.0f, 0.1f);
        if (encoder) {
            L->bq = tiny_vector(t, qd, 0.0f, 0.1f);
            L->bv = tiny_vector(t, kvd, 0.0f, 0.1f);
            L->bo = tiny_vector(t, dim, 0.0f, 0.1f);
            L->b2 = tiny_vector(t, dim, 0.0f, 0.1f);
        } else {
            L->ada_down = tiny_weight(t, 8, dim);
            L->ada_up = tiny_weight(t, dim, 8);
        }
    }
}

/* The model on backend be (NULL: the best for this CPU) with n_threads threads. */
static void tiny_model_init(tiny_model *t, const vx_backend *be, int n_threads) {
    memset(t, 0, sizeof *t);
    t->rng = 0x9e3779b97f4a7c15ull;
    vx_model *m = t->m = tiny_alloc(sizeof *m);
    vx_params *p = &m->p;
    p->dec = (vx_tf_params){32, 2, 4, 2, 8, 64, 16, 1e-5, 1e6};
    p->enc = (vx_tf_params){32, 2, 4, 2, 8, 48, 24, 1e-5, 1e6};
    p->vocab_size = 64;
    p->ada_dim = 8;
    p->n_mels = 16;
    p->sample_rate = 16000;
    p->hop = 160;
    p->window_size = 400;
    p->log_mel_max = 1.5;
    p->downsample = 4;
    m->bos_id = 1;
    m->eos_id = 2;
    m->pad_id = 32;
    const int64_t ed = p->enc.dim, d = p->dec.dim;
    m->enc_layers = tiny_alloc(sizeof(vx_layer) * (size_t)p->enc.n_layers);
    m->dec_layers = tiny_alloc(sizeof(vx_layer) * (size_t)p->dec.n_layers);
    m->conv0 = tiny_weight(t, ed, (int64_t)p->n_mels * 3);
    m->conv1 = tiny_weight(t, ed, ed * 3);
    m->conv0_b = tiny_vector(t, ed, 0.0f, 0.1f);
    m->conv1_b = tiny_vector(t, ed, 0.0f, 0.1f);
    tiny_stack(t, &p->enc, m->enc_layers, 1);
    m->enc_norm = tiny_vector(t, ed, 1.0f, 0.1f);
    m->adapt0 = tiny_weight(t, d, ed * p->downsample);
    m->adapt2 = tiny_weight(t, d, d);
    m->tok_emb = tiny_weight(t, p->vocab_size, d);
    tiny_stack(t, &p->dec, m->dec_layers, 0);
    m->dec_norm = tiny_vector(t, d, 1.0f, 0.1f);
    char err[256];
    m->dev = vx_device_cpu();
    m->be = be ? be : vx_backend_select(NULL, err, sizeof err);
    m->pool = vx_pool_new(n_threads);
    m->n_threads = n_threads;
    if (vx_mel_tables_init(m) != 0 || !m->pool) {
        fprintf(stderr, "tiny_model: out of memory\n");
        exit(2);
    }
}

static void tiny_model_free(tiny_model *t) {
    vx_model_free(t->m);
    for (int i = 0; i < t->n_weights; i++) free(t->weights[i]);
    memset(t, 0, sizeof *t);
}
#endif
