/* encoder.c - the audio side, whole text positions (8 mel frames) at a
 * time: causal conv stem with carried state, the encoder transformer over its
 * rolling sliding-window cache, the final norm, and the adapter (4 encoder
 * frames -> one decoder-sized row). Whole positions keep the conv stride and
 * the 4-frame grouping aligned, so no partial state is needed beyond the two
 * previous mel frames and the last conv output. */
#include <stdlib.h>
#include <string.h>

#include "stages.h"

void vx_enc_state_free(vx_enc_state *e) {
    free(e->mel_hist);
    free(e->c0_last);
    vx_kv_free(&e->kv);
    memset(e, 0, sizeof *e);
}

int vx_enc_state_init(vx_enc_state *e, const vx_model *m, int kv_f16) {
    const vx_params *p = &m->p;
    memset(e, 0, sizeof *e);
    e->mel_hist = calloc((size_t)2 * p->n_mels, sizeof(float));
    e->c0_last = calloc((size_t)p->enc.dim, sizeof(float));
    if (!e->mel_hist || !e->c0_last ||
        vx_kv_init(&e->kv, m->dev, p->enc.n_layers, p->enc.n_kv_heads * p->enc.head_dim,
                   (int64_t)p->enc.window + VX_ENC_BATCH, kv_f16) != 0) {
        vx_enc_state_free(e);
        return -1;
    }
    return 0;
}

int vx_enc_state_copy(vx_enc_state *dst, const vx_enc_state *src, const vx_model *m) {
    if (vx_kv_copy(&dst->kv, &src->kv) != 0) return -1;
    memcpy(dst->mel_hist, src->mel_hist, sizeof(float) * 2 * (size_t)m->p.n_mels);
    memcpy(dst->c0_last, src->c0_last, sizeof(float) * (size_t)m->p.enc.dim);
    dst->pos = src->pos;
    return 0;
}

static void gelu_rows(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = vx_gelu(x[i]);
}

/* Conv stem on nm mel frames -> nm/2 encoder input rows in e. */
static int conv_stem(const vx_model *m, vx_enc_state *es, const float *mel, int nm, float *e) {
    const int nmel = m->p.n_mels, ed = m->p.enc.dim;
    float *x0 = malloc(sizeof(float) * (size_t)nm * nmel * 3);
    float *c0 = malloc(sizeof(float) * (size_t)nm * ed);
    float *x1 = malloc(sizeof(float) * (size_t)(nm / 2) * ed * 3);
    if (!x0 || !c0 || !x1) {
        free(x0);
        free(c0);
        free(x1);
        return -1;
    }
    /* first conv, kernel 3, stride 1, left context = the two previous frames:
     * row r, column i*3+k takes frame r-2+k (weights are [out, in, k]) */
    for (int r = 0; r < nm; r++)
        for (int k = 0; k < 3; k++) {
            int f = r - 2 + k;
            const float *src = f < 0 ? es->mel_hist + (size_t)(f + 2) * nmel
                                     : mel + (size_t)f * nmel;
            for (int i = 0; i < nmel; i++) x0[((size_t)r * nmel + i) * 3 + k] = src[i];
        }
    vx_matmul(m, &m->conv0, x0, nm, c0, m->conv0_b);
    gelu_rows(c0, (size_t)nm * ed);
    /* second conv, stride 2: output j takes first-conv outputs 2j-1, 2j, 2j+1 */
    for (int j = 0; j < nm / 2; j++)
        for (int k = 0; k < 3; k++) {
            int f = 2 * j - 1 + k;
            const float *src = f < 0 ? es->c0_last : c0 + (size_t)f * ed;
            for (int i = 0; i < ed; i++) x1[((size_t)j * ed + i) * 3 + k] = src[i];
        }
    vx_matmul(m, &m->conv1, x1, nm / 2, e, m->conv1_b);
    gelu_rows(e, (size_t)(nm / 2) * ed);
    /* carry: the last two mel frames and the last first-conv output */
    memcpy(es->mel_hist, mel + (size_t)(nm - 2) * nmel, sizeof(float) * 2 * nmel);
    memcpy(es->c0_last, c0 + (size_t)(nm - 1) * ed, sizeof(float) * ed);
    free(x0);
    free(c0);
    free(x1);
    return 0;
}

int vx_encoder_pass(const vx_model *m, vx_enc_state *es, vx_scratch *s, const float *mel,
                    int n_pos, float *enc, float *out) {
    const int ed = m->p.enc.dim, dim = m->p.dec.dim;
    const int nm = n_pos * VX_POS_FRAMES, ne = n_pos * VX_POS_ENC_FRAMES;
    if (n_pos <= 0) return 0;
    if (conv_stem(m, es, mel, nm, enc) != 0) return -1;
    int passes = 0;
    for (int i0 = 0; i0 < ne; i0 += VX_ENC_BATCH) {
        int nb = ne - i0 < VX_ENC_BATCH ? ne - i0 : VX_ENC_BATCH;
        if (vx_stack_forward(m, &m->p.enc, m->enc_layers, NULL, &es->kv, s,
                             enc + (size_t)i0 * ed, nb, es->pos) != 0)
            return -1;
        es->pos += nb;
        passes++;
    }
    for (int i = 0; i < ne; i++)
        vx_rmsnorm(enc + (size_t)i * ed, enc + (size_t)i * ed, m->enc_norm, ed, m->p.enc.norm_eps);

    /* adapter: frames 4k..4k+3 are already contiguous = one [4*ed] row */
    float *mid = malloc(sizeof(float) * (size_t)n_pos * dim);
    if (!mid) return -1;
    vx_matmul(m, &m->adapt0, enc, n_pos, mid, NULL);
    gelu_rows(mid, (size_t)n_pos * dim);
    vx_matmul(m, &m->adapt2, mid, n_pos, out, NULL);
    free(mid);
    return passes;
}
