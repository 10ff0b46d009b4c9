/* decoder.c - the text decoder: ada-norm scales for the stream's delay, the
 * shared transformer stack over a rolling KV cache, final norm and the output
 * head tied to the token embedding. Sampling is greedy (stream.c). */
#include <math.h>
#include <stdlib.h>

#include "stream.h"

int vx_decoder_init_ada(vx_stream *s) {
    const vx_model *m = s->m;
    const int dim = m->p.dec.dim, half = dim / 2, nl = m->p.dec.n_layers;
    float *t = malloc(sizeof(float) * (size_t)dim);
    float *mid = malloc(sizeof(float) * (size_t)m->p.ada_dim);
    s->ada = calloc((size_t)nl, sizeof(float *));
    int rc = -1;
    if (!t || !mid || !s->ada) goto done;
    /* t_cond: sinusoidal embedding of the delay (in positions) */
    for (int i = 0; i < half; i++) {
        double f = exp(-log(10000.0) * i / half) * (double)s->delay_pos;
        t[i] = (float)cos(f);
        t[half + i] = (float)sin(f);
    }
    for (int l = 0; l < nl; l++) {
        if (!(s->ada[l] = malloc(sizeof(float) * (size_t)dim))) goto done;
        vx_matmul(m, &m->dec_layers[l].ada_down, t, 1, mid, NULL);
        for (int i = 0; i < m->p.ada_dim; i++) mid[i] = vx_gelu(mid[i]);
        vx_matmul(m, &m->dec_layers[l].ada_up, mid, 1, s->ada[l], NULL);
        for (int i = 0; i < dim; i++) s->ada[l][i] += 1.0f;
    }
    rc = 0;
done:
    free(t);
    free(mid);
    return rc;
}

int vx_decoder_forward(vx_stream *s, float *x, int n, int64_t pos0, float *logits) {
    const vx_model *m = s->m;
    const int dim = m->p.dec.dim;
    if (vx_stack_forward(m, &m->p.dec, m->dec_layers, s->ada, &s->st.dec_kv, &s->dec_s, x, n,
                         pos0) != 0)
        return -1;
    s->stats.decoder_passes += 1;
    if (logits) {
        for (int i = 0; i < n; i++) {
            float *h = x + (size_t)i * dim;
            vx_rmsnorm(h, h, m->dec_norm, dim, m->p.dec.norm_eps);
        }
        vx_matmul(m, &m->tok_emb, x, n, logits, NULL);
    }
    return 0;
}
