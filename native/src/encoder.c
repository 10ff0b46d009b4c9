/* encoder.c - the audio side, whole text positions (8 mel frames) at a
 * time: causal conv stem with carried state, the encoder transformer over its
 * rolling sliding-window cache, the final norm, and the adapter (4 encoder
 * frames -> one decoder-sized row). Whole positions keep the conv stride and
 * the 4-frame grouping aligned, so no partial state is needed beyond the two
 * previous mel frames and the last conv output. */
#include <stdlib.h>
#include <string.h>

#include "device.h"
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

/* The final norm of ne encoder rows, then the adapter (frames 4k..4k+3 are
 * already contiguous: one [4*ed] row) of their n_pos positions. */
static int norm_and_adapt(const vx_model *m, float *enc, int ne, int n_pos, float *out) {
    const int ed = m->p.enc.dim, dim = m->p.dec.dim;
    for (int i = 0; i < ne; i++)
        vx_rmsnorm(enc + (size_t)i * ed, enc + (size_t)i * ed, m->enc_norm, ed, m->p.enc.norm_eps);
    float *mid = malloc(sizeof(float) * (size_t)n_pos * dim);
    if (!mid) return -1;
    vx_matmul(m, &m->adapt0, enc, n_pos, mid, NULL);
    gelu_rows(mid, (size_t)n_pos * dim);
    vx_matmul(m, &m->adapt2, mid, n_pos, out, NULL);
    free(mid);
    return 0;
}

int vx_encoder_pass(const vx_model *m, vx_enc_state *es, vx_scratch *s, const float *mel,
                    int n_pos, float *enc, float *out) {
    const int ed = m->p.enc.dim;
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
    return norm_and_adapt(m, enc, ne, n_pos, out) != 0 ? -1 : passes;
}

/* The stack over the jobs' frames (conv outputs in job[j].enc), VX_ENC_BATCH
 * rows per stacked pass taken from the jobs in order. */
static int stack_jobs(const vx_model *m, vx_enc_job *job, int njob, vx_scratch *s, int *segs) {
    const vx_device *d = m->dev;
    const int ed = m->p.enc.dim;
    const size_t row = sizeof(float) * (size_t)ed;
    int *done = calloc((size_t)njob, sizeof *done), *who = malloc(sizeof *who * (size_t)njob);
    vx_stack_seg *seg = malloc(sizeof *seg * (size_t)njob);
    int passes = -1;
    if (!done || !who || !seg) goto out;
    for (passes = 0;; passes++) {
        int nseg = 0, rows = 0;
        for (int j = 0; j < njob && rows < VX_ENC_BATCH; j++) {
            const int left = job[j].n_pos * VX_POS_ENC_FRAMES - done[j];
            const int take = left < VX_ENC_BATCH - rows ? left : VX_ENC_BATCH - rows;
            if (take <= 0) continue;
            seg[nseg] = (vx_stack_seg){NULL, &job[j].es->kv, take, job[j].es->pos};
            who[nseg++] = j;
            rows += take;
        }
        if (nseg == 0) break;
        *segs += nseg;
        if (vx_stack_reserve_segs(m, &m->p.enc, seg, nseg, s) != 0) {
            passes = -1;
            break;
        }
        size_t off = 0;
        for (int k = 0; k < nseg; k++) {
            d->upload(d, s->x, off, job[who[k]].enc + (size_t)done[who[k]] * ed,
                      (size_t)seg[k].n * row);
            off += (size_t)seg[k].n * row;
        }
        vx_stack_layers_segs(m, &m->p.enc, m->enc_layers, seg, nseg, s);
        off = 0;
        for (int k = 0; k < nseg; k++) {
            const int j = who[k];
            d->download(d, job[j].enc + (size_t)done[j] * ed, s->x, off, (size_t)seg[k].n * row);
            off += (size_t)seg[k].n * row;
            done[j] += seg[k].n;
            job[j].es->pos += seg[k].n;
        }
    }
out:
    free(done);
    free(who);
    free(seg);
    return passes;
}

int vx_encoder_pass_jobs(const vx_model *m, vx_enc_job *job, int njob, vx_scratch *s,
                         int *segs) {
    const int ed = m->p.enc.dim, dim = m->p.dec.dim;
    *segs = 0;
    if (njob == 1 || !m->dev->host_visible) {
        int passes = 0;
        for (int j = 0; j < njob; j++) {
            const int p = vx_encoder_pass(m, job[j].es, s, job[j].mel, job[j].n_pos, job[j].enc,
                                          job[j].out);
            if (p < 0) return -1;
            passes += p;
            *segs += p;
        }
        return passes;
    }
    int n_pos = 0;
    for (int j = 0; j < njob; j++) {
        if (job[j].n_pos > 0 &&
            conv_stem(m, job[j].es, job[j].mel, job[j].n_pos * VX_POS_FRAMES, job[j].enc) != 0)
            return -1;
        n_pos += job[j].n_pos;
    }
    const int passes = stack_jobs(m, job, njob, s, segs);
    if (passes < 0) return -1;
    /* the norm and the adapter over all the jobs' rows at once */
    const size_t erow = (size_t)VX_POS_ENC_FRAMES * ed;
    float *enc = malloc(sizeof(float) * (size_t)n_pos * erow);
    float *out = malloc(sizeof(float) * (size_t)n_pos * dim);
    int rc = -1;
    if (enc && out) {
        size_t p = 0;
        for (int j = 0; j < njob; j++) {
            memcpy(enc + p * erow, job[j].enc, sizeof(float) * (size_t)job[j].n_pos * erow);
            p += (size_t)job[j].n_pos;
        }
        rc = norm_and_adapt(m, enc, n_pos * VX_POS_ENC_FRAMES, n_pos, out);
        p = 0;
        for (int j = 0; rc == 0 && j < njob; j++) {
            memcpy(job[j].enc, enc + p * erow, sizeof(float) * (size_t)job[j].n_pos * erow);
            memcpy(job[j].out, out + p * dim, sizeof(float) * (size_t)job[j].n_pos * dim);
            p += (size_t)job[j].n_pos;
        }
    }
    free(enc);
    free(out);
    return rc == 0 ? passes : -1;
}
