/* encoder.c - the audio side, one whole text position (8 mel frames) at a
 * time: causal conv stem with carried state, the encoder transformer over its
 * rolling sliding-window cache, the final norm, and the adapter (4 encoder
 * frames -> one decoder-sized row). Whole positions keep the conv stride and
 * the 4-frame grouping aligned, so no partial state is needed beyond the two
 * previous mel frames and the last conv output. */
#include <stdlib.h>
#include <string.h>

#include "stream.h"
#include "util.h"

static void gelu_rows(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = vx_gelu(x[i]);
}

/* Conv stem on nm pending mel frames -> nm/2 encoder input rows in e. */
static int conv_stem(vx_stream *s, int nm, float *e) {
    const vx_model *m = s->m;
    vx_state *st = &s->st;
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
            const float *src = f < 0 ? st->mel_hist + (size_t)(f + 2) * nmel
                                     : st->mel_pend + (size_t)f * nmel;
            for (int i = 0; i < nmel; i++) x0[((size_t)r * nmel + i) * 3 + k] = src[i];
        }
    vx_matmul(m, &m->conv0, x0, nm, c0, m->conv0_b);
    gelu_rows(c0, (size_t)nm * ed);
    /* second conv, stride 2: output j takes first-conv outputs 2j-1, 2j, 2j+1 */
    for (int j = 0; j < nm / 2; j++)
        for (int k = 0; k < 3; k++) {
            int f = 2 * j - 1 + k;
            const float *src = f < 0 ? st->c0_last : c0 + (size_t)f * ed;
            for (int i = 0; i < ed; i++) x1[((size_t)j * ed + i) * 3 + k] = src[i];
        }
    vx_matmul(m, &m->conv1, x1, nm / 2, e, m->conv1_b);
    gelu_rows(e, (size_t)(nm / 2) * ed);
    /* carry: the last two mel frames and the last first-conv output */
    memcpy(st->mel_hist, st->mel_pend + (size_t)(nm - 2) * nmel, sizeof(float) * 2 * nmel);
    memcpy(st->c0_last, c0 + (size_t)(nm - 1) * ed, sizeof(float) * ed);
    free(x0);
    free(c0);
    free(x1);
    return 0;
}

static int append_adapter_rows(vx_state *st, const float *rows, int64_t n, int dim) {
    if (vx_grow((void **)&st->adq, &st->adq_cap, st->adq_n + n, sizeof(float) * (size_t)dim, 16) != 0)
        return -1;
    memcpy(st->adq + (size_t)st->adq_n * dim, rows, sizeof(float) * (size_t)n * dim);
    st->adq_n += n;
    return 0;
}

int vx_encode_positions(vx_stream *s, int n_pos) {
    vx_model *m = s->m;
    vx_state *st = &s->st;
    const int nmel = m->p.n_mels, ed = m->p.enc.dim, dim = m->p.dec.dim;
    const int nm = n_pos * VX_POS_FRAMES, ne = nm / 2;
    if (n_pos <= 0) return 0;
    if (nm > st->n_mel_pend) return -1;
    double t0 = vx_now_ms();
    float *e = malloc(sizeof(float) * (size_t)ne * ed);
    float *mid = malloc(sizeof(float) * (size_t)n_pos * dim);
    float *out = malloc(sizeof(float) * (size_t)n_pos * dim);
    int rc = -1;
    if (!e || !mid || !out) goto done;
    if (conv_stem(s, nm, e) != 0) goto done;
    st->n_mel_pend -= nm;
    memmove(st->mel_pend, st->mel_pend + (size_t)nm * nmel, sizeof(float) * (size_t)st->n_mel_pend * nmel);

    for (int i0 = 0; i0 < ne; i0 += VX_ENC_BATCH) {
        int nb = ne - i0 < VX_ENC_BATCH ? ne - i0 : VX_ENC_BATCH;
        if (vx_stack_forward(m, &m->p.enc, m->enc_layers, NULL, &st->enc_kv, &s->enc_s,
                             e + (size_t)i0 * ed, nb, st->enc_pos) != 0)
            goto done;
        st->enc_pos += nb;
        s->stats.encoder_passes += 1;
    }
    for (int i = 0; i < ne; i++)
        vx_rmsnorm(e + (size_t)i * ed, e + (size_t)i * ed, m->enc_norm, ed, m->p.enc.norm_eps);
    if (vx_capture_rows(s, VX_DEBUG_ENCODER, e, ne, ed) != 0) goto done;

    /* adapter: frames 4k..4k+3 are already contiguous = one [4*ed] row */
    vx_matmul(m, &m->adapt0, e, n_pos, mid, NULL);
    gelu_rows(mid, (size_t)n_pos * dim);
    vx_matmul(m, &m->adapt2, mid, n_pos, out, NULL);
    if (vx_capture_rows(s, VX_DEBUG_ADAPTER, out, n_pos, dim) != 0) goto done;
    if (append_adapter_rows(st, out, n_pos, dim) != 0) goto done;
    s->stats.encoder_frames += ne;
    rc = 0;
done:
    s->stats.encoder_ms += vx_now_ms() - t0;
    free(e);
    free(mid);
    free(out);
    return rc;
}
