/* decoder.c - the text decoder: ada-norm scales for a delay, the shared
 * transformer stack over a rolling KV cache, final norm and the output head
 * tied to the token embedding. Sampling is greedy (stream.c). */
#include <math.h>
#include <stdlib.h>

#include "device.h"
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

int vx_decoder_can_stack(const vx_model *m) { return m->dev->host_visible; }

/* The rows stay on the device from the stack to the output head; only the
 * logits come back (a device with host memory writes them in place). */
int vx_decoder_pass_segs(const vx_model *m, const vx_stack_seg *seg, int nseg, vx_scratch *s,
                         const float *x, int n_logits, float *logits) {
    const vx_device *d = m->dev;
    const int dim = m->p.dec.dim;
    const size_t vocab = (size_t)m->p.vocab_size;
    int n = 0;
    for (int i = 0; i < nseg; i++) n += seg[i].n;
    if (n_logits < 0 || n_logits > n || (n_logits && !logits)) return -1;
    if (vx_stack_reserve_segs(m, &m->p.dec, seg, nseg, s) != 0) return -1;
    vx_dbuf *out = n_logits ? vx_dbuf_host(d, logits) : NULL;
    if (n_logits && !out) {
        if (vx_scratch_reserve_out(s, d, (size_t)n_logits * vocab) != 0) return -1;
        out = s->out;
    }
    d->upload(d, s->x, 0, x, sizeof(float) * (size_t)n * dim);
    vx_stack_layers_segs(m, &m->p.dec, m->dec_layers, seg, nseg, s);
    if (n_logits) {
        /* the head reads only the rows that need logits: the first n_logits */
        const vx_weight *head[] = {&m->tok_emb};
        const float *no_bias[] = {NULL};
        d->rmsnorm(m, s->xn, s->x, m->dec_norm, NULL, n_logits, dim, m->p.dec.norm_eps);
        d->matmul(m, 1, head, s->xn, n_logits, &out, no_bias);
        if (out != vx_dbuf_host(d, logits))
            d->download(d, logits, out, 0, sizeof(float) * (size_t)n_logits * vocab);
    }
    return 0;
}

int vx_decoder_pass(const vx_model *m, float **ada, vx_kv *kv, vx_scratch *s, const float *x,
                    int n, int64_t pos0, float *logits) {
    const vx_stack_seg seg = {ada, kv, n, pos0};
    return vx_decoder_pass_segs(m, &seg, 1, s, x, logits ? n : 0, logits);
}
