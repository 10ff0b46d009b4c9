/* decoder.c - the text decoder: ada-norm scales for a delay, the shared
 * transformer stack over a rolling KV cache, final norm and the output head
 * tied to the token embedding. Sampling is greedy (stream.c). */
#include <math.h>
#include <stdlib.h>

#include "stages.h"

void vx_decoder_ada_free(const vx_model *m, float **ada) {
    if (!ada) return;
    for (int l = 0; l < m->p.dec.n_layers; l++) free(ada[l]);
    free(ada);
}

float **vx_decoder_ada_new(const vx_model *m, int delay_pos) {
    const int dim = m->p.dec.dim, half = dim / 2, nl = m->p.dec.n_layers;
    float *t = malloc(sizeof(float) * (size_t)dim);
    float *mid = malloc(sizeof(float) * (size_t)m->p.ada_dim);
    float **ada = calloc((size_t)nl, sizeof(float *));
    int ok = 0;
    if (!t || !mid || !ada) goto done;
    /* t_cond: sinusoidal embedding of the delay (in positions) */
    for (int i = 0; i < half; i++) {
        double f = exp(-log(10000.0) * i / half) * (double)delay_pos;
        t[i] = (float)cos(f);
        t[half + i] = (float)sin(f);
    }
    for (int l = 0; l < nl; l++) {
        if (!(ada[l] = malloc(sizeof(float) * (size_t)dim))) goto done;
        vx_matmul(m, &m->dec_layers[l].ada_down, t, 1, mid, NULL);
        for (int i = 0; i < m->p.ada_dim; i++) mid[i] = vx_gelu(mid[i]);
        vx_matmul(m, &m->dec_layers[l].ada_up, mid, 1, ada[l], NULL);
        for (int i = 0; i < dim; i++) ada[l][i] += 1.0f;
    }
    ok = 1;
done:
    free(t);
    free(mid);
    if (!ok) {
        vx_decoder_ada_free(m, ada);
        return NULL;
    }
    return ada;
}

int vx_decoder_pass(const vx_model *m, float **ada, vx_kv *kv, vx_scratch *s, float *x, int n,
                    int64_t pos0, float *logits) {
    const int dim = m->p.dec.dim;
    if (vx_stack_forward(m, &m->p.dec, m->dec_layers, ada, kv, s, x, n, pos0) != 0) return -1;
    if (logits) {
        for (int i = 0; i < n; i++) {
            float *h = x + (size_t)i * dim;
            vx_rmsnorm(h, h, m->dec_norm, dim, m->p.dec.norm_eps);
        }
        vx_matmul(m, &m->tok_emb, x, n, logits, NULL);
    }
    return 0;
}
