/* test_stages.c - the encoder and decoder passes on their own (stages.h),
 * without a stream, give bitwise what the stream computes with them:
 *
 *  - a stream (debug capture on) is fed random audio; its mel frames go
 *    through vx_encoder_pass in batches unlike the stream's, and the encoder
 *    and adapter rows must equal the stream's captures bit for bit;
 *  - the captured adapter rows, plus the embedding of each position's input
 *    token (the prompt's, then the previous greedy output), go through
 *    vx_decoder_pass one position at a time (the stream batches the prompt
 *    and speculates), and every row's logits must equal the stream's.
 *
 * On every backend compiled in and usable here, with fp16 and float32 KV
 * caches, on tiny_model.h's in-memory model (small windows, so both rolling
 * caches wrap). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "stages.h"
#include "tiny_model.h"

#define DELAY_MS 480
#define LEFT_PAD_POS 32 /* stream.h's VX_LEFT_PAD_POS: the prompt is BOS + these + delay */

typedef struct {
    const float *data;
    int64_t rows, cols;
} rows_t;

static rows_t captured(vx_stream *s, int kind) {
    rows_t r = {NULL, 0, 0};
    CHECK(vx_stream_debug_get(s, kind, &r.data, &r.rows, &r.cols) == VX_OK);
    return r;
}

static int same_bits(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/* The encoder on the stream's mel frames, n_step positions per pass. */
static void check_encoder(const vx_model *m, int kv_f16, rows_t mel, rows_t enc, rows_t ad,
                          int n_step) {
    const int ed = m->p.enc.dim, dim = m->p.dec.dim;
    const int64_t n_pos = ad.rows;
    CHECKF(enc.rows == n_pos * VX_POS_ENC_FRAMES && mel.rows >= n_pos * VX_POS_FRAMES,
           "%lld positions, %lld encoder rows, %lld mel frames", (long long)n_pos,
           (long long)enc.rows, (long long)mel.rows);
    if (enc.rows != n_pos * VX_POS_ENC_FRAMES || mel.rows < n_pos * VX_POS_FRAMES) return;
    vx_enc_state es;
    vx_scratch sc;
    memset(&sc, 0, sizeof sc);
    CHECK(vx_enc_state_init(&es, m, kv_f16) == 0);
    float *e = tiny_alloc(sizeof(float) * (size_t)n_step * VX_POS_ENC_FRAMES * ed);
    float *out = tiny_alloc(sizeof(float) * (size_t)n_step * dim);
    for (int64_t p = 0; p < n_pos; p += n_step) {
        const int n = n_pos - p < n_step ? (int)(n_pos - p) : n_step;
        const float *frames = mel.data + (size_t)p * VX_POS_FRAMES * mel.cols;
        const int passes = vx_encoder_pass(m, &es, &sc, frames, n, e, out);
        const int ne = n * VX_POS_ENC_FRAMES;
        CHECKF(passes == (ne + VX_ENC_BATCH - 1) / VX_ENC_BATCH, "%d passes for %d frames", passes,
               ne);
        CHECKF(same_bits(e, enc.data + (size_t)p * VX_POS_ENC_FRAMES * ed, (size_t)ne * ed),
               "encoder rows of positions %lld..%lld (step %d)", (long long)p, (long long)p + n - 1,
               n_step);
        CHECKF(same_bits(out, ad.data + (size_t)p * dim, (size_t)n * dim),
               "adapter rows of positions %lld..%lld (step %d)", (long long)p, (long long)p + n - 1,
               n_step);
    }
    CHECK(es.pos == n_pos * VX_POS_ENC_FRAMES);
    free(e);
    free(out);
    vx_scratch_free(&sc);
    vx_enc_state_free(&es);
}

/* The decoder one position at a time on the stream's adapter rows. */
static void check_decoder(const vx_model *m, int kv_f16, rows_t ad, rows_t logits) {
    const int dim = m->p.dec.dim, vocab = m->p.vocab_size;
    const int delay_pos = DELAY_MS / 80, L = 1 + LEFT_PAD_POS + delay_pos;
    CHECKF(logits.rows > 0 && logits.rows <= ad.rows - (L - 1),
           "%lld logits rows for %lld positions", (long long)logits.rows, (long long)ad.rows);
    float **ada = vx_decoder_ada_new(m, delay_pos);
    vx_kv kv;
    vx_scratch sc;
    memset(&sc, 0, sizeof sc);
    CHECK(ada != NULL);
    CHECK(vx_kv_init(&kv, m->dev, m->p.dec.n_layers, m->p.dec.n_kv_heads * m->p.dec.head_dim,
                     (int64_t)m->p.dec.window + VX_DEC_BATCH, kv_f16) == 0);
    float *x = tiny_alloc(sizeof(float) * (size_t)dim);
    float *emb = tiny_alloc(sizeof(float) * (size_t)dim);
    float *lg = tiny_alloc(sizeof(float) * (size_t)vocab);
    int token = -1, last = -1;
    for (int64_t p = 0; p < L - 1 + logits.rows; p++) {
        const int in = p == 0 ? m->bos_id : p < L ? m->pad_id : token;
        vx_weight_row(&m->tok_emb, in, emb);
        for (int c = 0; c < dim; c++) x[c] = ad.data[(size_t)p * dim + c] + emb[c];
        const int want_logits = p >= L - 1;
        CHECK(vx_decoder_pass(m, ada, &kv, &sc, x, 1, p, want_logits ? lg : NULL) == 0);
        if (!want_logits) continue;
        const float *ref = logits.data + (size_t)(p - (L - 1)) * vocab;
        CHECKF(same_bits(lg, ref, (size_t)vocab), "logits of position %lld", (long long)p);
        token = last = (int)vx_argmax(lg, vocab);
    }
    /* the stream stops early only at the end of the utterance */
    CHECKF(logits.rows == ad.rows - (L - 1) || last == m->eos_id,
           "%lld logits rows for %lld positions, last token %d", (long long)logits.rows,
           (long long)ad.rows, last);
    free(x);
    free(emb);
    free(lg);
    vx_scratch_free(&sc);
    vx_kv_free(&kv);
    vx_decoder_ada_free(m, ada);
}

static void check_backend(const vx_backend *be, int kv_f16) {
    tiny_model t;
    tiny_model_init(&t, be, 2);
    vx_stream_options opt = {.delay_ms = DELAY_MS, .kv_f32 = !kv_f16};
    vx_stream *s = NULL;
    CHECK(vx_stream_new(t.m, &opt, &s) == VX_OK);
    CHECK(vx_stream_prepare(NULL) == VX_ERR_ARG);
    if (!s) {
        tiny_model_free(&t);
        return;
    }
    CHECK(vx_stream_debug_enable(s, VX_DEBUG_MEL | VX_DEBUG_ENCODER | VX_DEBUG_ADAPTER |
                                        VX_DEBUG_LOGITS) == VX_OK);
    /* 3 s of noise in uneven pieces: with the left padding, past both windows */
    enum { N = 48000, PIECE = 1700 };
    float *audio = tiny_alloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) audio[i] = 0.3f * (float)(tiny_urand(&t) * 2.0 - 1.0);
    for (int i = 0; i < N; i += PIECE)
        CHECK(vx_stream_feed(s, audio + i, (size_t)(N - i < PIECE ? N - i : PIECE)) == VX_OK);
    rows_t mel = captured(s, VX_DEBUG_MEL), enc = captured(s, VX_DEBUG_ENCODER);
    rows_t ad = captured(s, VX_DEBUG_ADAPTER), lg = captured(s, VX_DEBUG_LOGITS);
    printf("  %s, kv %s: %lld mel frames, %lld positions, %lld logits rows\n", t.m->be->name,
           kv_f16 ? "f16" : "f32", (long long)mel.rows, (long long)ad.rows, (long long)lg.rows);
    check_encoder(t.m, kv_f16, mel, enc, ad, 1);
    check_encoder(t.m, kv_f16, mel, enc, ad, 7);
    check_encoder(t.m, kv_f16, mel, enc, ad, 40); /* 160 frames: three stack passes */
    check_decoder(t.m, kv_f16, ad, lg);
    free(audio);
    vx_stream_free(s);
    tiny_model_free(&t);
}

int main(void) {
    const vx_backend *backends[3] = {vx_backend_portable(), vx_backend_avx2(), vx_backend_neon()};
    for (int b = 0; b < 3; b++) {
        if (!backends[b]) continue;
        check_backend(backends[b], 1);
        check_backend(backends[b], 0);
    }
    return check_report("test_stages");
}
