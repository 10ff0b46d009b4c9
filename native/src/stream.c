/* stream.c - the streaming schedule (spec section 8) and the public stream
 * API: audio in, mel frames as soon as their window is complete, the encoder
 * on whole positions, the decoder one position per 80 ms of audio, events
 * out. A flush pads the utterance like the offline recipe, drains it, and
 * restores the state saved after the left padding. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stream.h"
#include "util.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static vx_status set_err(vx_stream *s, vx_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static vx_status set_err(vx_stream *s, vx_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vx_verrf(s->err, sizeof s->err, NULL, fmt, ap);
    va_end(ap);
    return st;
}

/* Growing buffers of the stream start at 64 elements. */
static int grow(void **buf, int64_t *cap, int64_t need, size_t elem) {
    return vx_grow(buf, cap, need, elem, 64);
}

/* Debug capture (vx_stream_debug_enable): rows of a stage's output, kept
 * when kind is enabled. */
static int capture_rows(vx_stream *s, int kind, const float *rows, int64_t n, int64_t cols) {
    if (!(s->debug_kinds & kind)) return 0;
    vx_capture *c = kind == VX_DEBUG_MEL       ? &s->cap_mel
                    : kind == VX_DEBUG_ENCODER ? &s->cap_enc
                    : kind == VX_DEBUG_ADAPTER ? &s->cap_adapt
                                               : &s->cap_logits;
    if (grow((void **)&c->data, &c->cap_rows, c->rows + n, sizeof(float) * (size_t)cols) != 0)
        return -1;
    memcpy(c->data + (size_t)c->rows * cols, rows, sizeof(float) * (size_t)(n * cols));
    c->rows += n;
    c->cols = cols;
    return 0;
}

/* ---- state ---- */

static void state_free(vx_state *st) {
    free(st->smp);
    free(st->mel_pend);
    free(st->adq);
    vx_enc_state_free(&st->enc);
    vx_kv_free(&st->dec_kv);
    memset(st, 0, sizeof *st);
}

static int state_init(vx_state *st, const vx_model *m, int kv_f16) {
    memset(st, 0, sizeof *st);
    const vx_params *p = &m->p;
    if (vx_enc_state_init(&st->enc, m, kv_f16) != 0 ||
        vx_kv_init(&st->dec_kv, m->dev, p->dec.n_layers,
                   p->dec.n_kv_heads * p->dec.head_dim, (int64_t)p->dec.window + VX_DEC_BATCH,
                   kv_f16) != 0) {
        state_free(st);
        return -1;
    }
    st->last_token = -1;
    return 0;
}

/* dst = src, keeping dst's buffers where they are big enough. */
static int state_copy(vx_state *dst, const vx_state *src, const vx_model *m) {
    const int nmel = m->p.n_mels, dim = m->p.dec.dim;
    if (grow((void **)&dst->smp, &dst->smp_cap, src->smp_len, sizeof(float)) != 0) return -1;
    int64_t mcap = dst->mel_pend_cap;
    if (grow((void **)&dst->mel_pend, &mcap, src->n_mel_pend, sizeof(float) * nmel) != 0) return -1;
    dst->mel_pend_cap = (int)mcap;
    if (grow((void **)&dst->adq, &dst->adq_cap, src->adq_n, sizeof(float) * dim) != 0) return -1;
    if (vx_enc_state_copy(&dst->enc, &src->enc, m) != 0 ||
        vx_kv_copy(&dst->dec_kv, &src->dec_kv) != 0)
        return -1;
    if (src->smp_len) memcpy(dst->smp, src->smp, sizeof(float) * (size_t)src->smp_len);
    if (src->n_mel_pend)
        memcpy(dst->mel_pend, src->mel_pend, sizeof(float) * (size_t)src->n_mel_pend * nmel);
    if (src->adq_n) memcpy(dst->adq, src->adq, sizeof(float) * (size_t)src->adq_n * dim);
    dst->smp_len = src->smp_len;
    dst->smp_base = src->smp_base;
    dst->mel_next = src->mel_next;
    dst->n_mel_pend = src->n_mel_pend;
    dst->adq_base = src->adq_base;
    dst->adq_n = src->adq_n;
    dst->dec_pos = src->dec_pos;
    dst->last_token = src->last_token;
    dst->pad_run = src->pad_run;
    dst->eos = src->eos;
    dst->utt_samples = src->utt_samples;
    return 0;
}

/* ---- events ---- */

static int push_event(vx_stream *s, const vx_event *ev) {
    if (s->n_events == s->ev_cap && s->ev_head > 0) {
        memmove(s->events, s->events + s->ev_head, sizeof(vx_event) * (s->n_events - s->ev_head));
        s->n_events -= s->ev_head;
        s->ev_head = 0;
    }
    if (s->n_events == s->ev_cap) {
        int64_t cap = (int64_t)s->ev_cap;
        if (grow((void **)&s->events, &cap, (int64_t)s->n_events + 1, sizeof(vx_event)) != 0)
            return -1;
        s->ev_cap = (size_t)cap;
    }
    s->events[s->n_events++] = *ev;
    return 0;
}

/* Copy text into ev->text, cutting only at a character boundary if too long. */
static void set_event_text(vx_event *ev, const char *text, size_t len) {
    if (len >= VX_EVENT_TEXT_MAX) {
        len = VX_EVENT_TEXT_MAX - 1;
        while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80) len--;
    }
    memcpy(ev->text, text, len);
    ev->text[len] = 0;
    ev->text_len = (int32_t)len;
}

static double position_time(int64_t pos) {
    double t = (double)(pos + 1 - VX_LEFT_PAD_POS) * VX_POS_SAMPLES / 16000.0;
    return t > 0 ? t : 0;
}

static int emit_token(vx_stream *s, int token, int64_t pos) {
    vx_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = VX_EVENT_TOKEN;
    ev.token = token;
    ev.position = pos;
    ev.audio_time = position_time(pos);
    int len = 0;
    const unsigned char *b = vx_tok_bytes(&s->m->tok, token, &len);
    size_t need = 3 * ((size_t)len + 4) + 1;
    char small[VX_EVENT_TEXT_MAX * 4];
    char *out = need <= sizeof small ? small : malloc(need);
    if (!out) return -1;
    size_t n = b ? vx_utf8_push(&s->utf8, b, (size_t)len, out, need) : 0;
    set_event_text(&ev, out, n);
    if (out != small) free(out);
    return push_event(s, &ev);
}

static int emit_utterance_end(vx_stream *s) {
    vx_event ev;
    char tail[32];
    memset(&ev, 0, sizeof ev);
    ev.kind = VX_EVENT_UTTERANCE_END;
    ev.token = -1;
    ev.position = s->st.dec_pos;
    ev.audio_time = (double)s->st.utt_samples / 16000.0;
    size_t n = vx_utf8_flush(&s->utf8, tail, sizeof tail);
    set_event_text(&ev, tail, n);
    return push_event(s, &ev);
}

/* ---- the schedule ---- */

static int push_samples(vx_stream *s, const float *x, size_t n, int zeros) {
    vx_state *st = &s->st;
    if (grow((void **)&st->smp, &st->smp_cap, st->smp_len + (int64_t)n, sizeof(float)) != 0)
        return -1;
    if (zeros)
        memset(st->smp + st->smp_len, 0, sizeof(float) * n);
    else
        memcpy(st->smp + st->smp_len, x, sizeof(float) * n);
    st->smp_len += (int64_t)n;
    return 0;
}

/* Compute every mel frame whose window is complete (frame t is centered on
 * sample 160 t and needs samples up to 160 t + 199), up to frame_limit. */
static int produce_mel(vx_stream *s, int64_t frame_limit) {
    const vx_model *m = s->m;
    vx_state *st = &s->st;
    const int hop = m->p.hop, half = m->n_fft / 2, nmel = m->p.n_mels;
    double t0 = now_ms();
    float win[512], frame[512];
    int64_t end = st->smp_base + st->smp_len;
    while (st->mel_next < frame_limit && st->mel_next * hop + half - 1 < end) {
        int64_t a0 = st->mel_next * hop - half;
        /* before the stream start the reflected padding is zeros: the stream
         * always begins with 32 positions of zeros */
        for (int k = 0; k < m->n_fft; k++) {
            int64_t a = a0 + k;
            win[k] = a < st->smp_base ? 0.0f : st->smp[a - st->smp_base];
        }
        vx_mel_frame(m, win, frame);
        int64_t cap = st->mel_pend_cap;
        if (grow((void **)&st->mel_pend, &cap, st->n_mel_pend + 1, sizeof(float) * nmel) != 0)
            return -1;
        st->mel_pend_cap = (int)cap;
        memcpy(st->mel_pend + (size_t)st->n_mel_pend * nmel, frame, sizeof(float) * nmel);
        st->n_mel_pend++;
        if (capture_rows(s, VX_DEBUG_MEL, frame, 1, nmel) != 0) return -1;
        st->mel_next++;
    }
    /* drop samples no future frame needs */
    int64_t keep_from = st->mel_next * hop - half;
    if (keep_from > st->smp_base) {
        int64_t drop = keep_from - st->smp_base;
        if (drop > st->smp_len) drop = st->smp_len;
        memmove(st->smp, st->smp + drop, sizeof(float) * (size_t)(st->smp_len - drop));
        st->smp_len -= drop;
        st->smp_base += drop;
    }
    s->stats.mel_ms += now_ms() - t0;
    return 0;
}

static int append_adapter_rows(vx_state *st, const float *rows, int64_t n, int dim) {
    const size_t row = sizeof(float) * (size_t)dim;
    if (vx_grow((void **)&st->adq, &st->adq_cap, st->adq_n + n, row, 16) != 0) return -1;
    memcpy(st->adq + (size_t)st->adq_n * dim, rows, sizeof(float) * (size_t)n * dim);
    st->adq_n += n;
    return 0;
}

/* One encoder pass over n_pos whole positions of the pending mel frames:
 * they are consumed, the adapter rows are queued for the decoder. */
static int run_encoder(vx_stream *s, int n_pos) {
    const vx_model *m = s->m;
    vx_state *st = &s->st;
    const int nmel = m->p.n_mels, ed = m->p.enc.dim, dim = m->p.dec.dim;
    const int nm = n_pos * VX_POS_FRAMES, ne = n_pos * VX_POS_ENC_FRAMES;
    if (n_pos <= 0) return 0;
    if (nm > st->n_mel_pend) return -1;
    const double t0 = now_ms();
    float *enc = malloc(sizeof(float) * (size_t)ne * ed);
    float *out = malloc(sizeof(float) * (size_t)n_pos * dim);
    int rc = -1;
    if (!enc || !out) goto done;
    const int passes = vx_encoder_pass(m, &st->enc, &s->enc_s, st->mel_pend, n_pos, enc, out);
    if (passes < 0) goto done;
    s->stats.encoder_passes += passes;
    st->n_mel_pend -= nm;
    memmove(st->mel_pend, st->mel_pend + (size_t)nm * nmel,
            sizeof(float) * (size_t)st->n_mel_pend * nmel);
    if (capture_rows(s, VX_DEBUG_ENCODER, enc, ne, ed) != 0 ||
        capture_rows(s, VX_DEBUG_ADAPTER, out, n_pos, dim) != 0 ||
        append_adapter_rows(st, out, n_pos, dim) != 0)
        goto done;
    s->stats.encoder_frames += ne;
    rc = 0;
done:
    s->stats.encoder_ms += now_ms() - t0;
    free(enc);
    free(out);
    return rc;
}

static int run_audio(vx_stream *s, int force) {
    vx_state *st = &s->st;
    if (!force && st->n_mel_pend < s->interval_frames) return 0;
    return run_encoder(s, st->n_mel_pend / VX_POS_FRAMES);
}

/* One decoder pass of the stream (vx_decoder_pass), counted. */
static int decoder_pass(vx_stream *s, float *x, int n, int64_t pos0, float *logits) {
    if (vx_decoder_pass(s->m, s->ada, &s->st.dec_kv, &s->dec_s, x, n, pos0, logits) != 0)
        return -1;
    s->stats.decoder_passes += 1;
    return 0;
}

static int prompt_token(const vx_stream *s, int64_t p) {
    return p == 0 ? s->m->bos_id : s->m->pad_id;
}

/* Input row i: adapter row ad[i] plus the embedding e of its input token. */
static void input_row(float *x, const float *ad, const float *e, int i, int dim) {
    for (int c = 0; c < dim; c++) x[i * dim + c] = ad[i * dim + c] + e[c];
}

/* Prompt positions [p, p+n) in one pass, no logits needed. */
static int prefill(vx_stream *s, int64_t p, int n, const float *ad) {
    const vx_model *m = s->m;
    const int dim = m->p.dec.dim;
    for (int i = 0; i < n; i++) {
        vx_weight_row(&m->tok_emb, prompt_token(s, p + i), s->dec_emb);
        input_row(s->dec_x, ad, s->dec_emb, i, dim);
    }
    const double tp = now_ms();
    if (decoder_pass(s, s->dec_x, n, p, NULL) != 0) return -1;
    s->st.dec_pos += n;
    s->stats.positions += n;
    s->stats.prompt_positions += n;
    s->stats.prompt_passes += 1;
    s->stats.prompt_ms += now_ms() - tp;
    return 0;
}

/* The outputs of a pass of k rows from position p: tokens up to the first
 * non-pad one (or the end of the utterance); returns how many, or -1. */
static int keep_tokens(vx_stream *s, int64_t p, int k) {
    const vx_model *m = s->m;
    vx_state *st = &s->st;
    const int64_t vocab = m->p.vocab_size;
    int kept = 0;
    while (kept < k) {
        const float *row = s->dec_logits + (size_t)kept * vocab;
        int tok = (int)vx_argmax(row, vocab);
        if (capture_rows(s, VX_DEBUG_LOGITS, row, 1, vocab) != 0) return -1;
        if (emit_token(s, tok, p + kept) != 0) return -1;
        st->last_token = tok;
        st->pad_run = tok == m->pad_id ? st->pad_run + 1 : 0;
        kept++;
        if (tok == m->eos_id) {
            st->eos = 1;
            break;
        }
        if (tok != m->pad_id) break; /* the next row's guess was wrong */
    }
    return kept;
}

/* One pass from position p, avail - p positions having adapter rows: the
 * first row with its known input token, the others guessing STREAMING_PAD. */
static int step(vx_stream *s, int64_t p, int64_t avail, const float *ad) {
    const vx_model *m = s->m;
    vx_state *st = &s->st;
    const int dim = m->p.dec.dim, L = s->prompt_len;
    /* guess only as far as the recent outputs justify: after a run of r
     * pads, r+1 rows; after text, one (a wrong guess costs a full row) */
    int k = st->pad_run + 1 < s->max_spec ? st->pad_run + 1 : s->max_spec;
    if (k > avail - p) k = (int)(avail - p);
    vx_weight_row(&m->tok_emb, p < L ? prompt_token(s, p) : st->last_token, s->dec_emb);
    for (int i = 0; i < k; i++) input_row(s->dec_x, ad, i == 0 ? s->dec_emb : s->pad_emb, i, dim);
    if (decoder_pass(s, s->dec_x, k, p, s->dec_logits) != 0) return -1;
    const int kept = keep_tokens(s, p, k);
    if (kept < 0) return -1;
    st->dec_pos += kept;
    s->stats.positions += kept;
    s->stats.spec_guesses += k - 1;
    s->stats.spec_accepted += kept - 1;
    return 0;
}

/* Drop the adapter rows the decoder has consumed. */
static void drop_used_rows(vx_state *st, int dim) {
    int64_t used = st->dec_pos - st->adq_base;
    if (used > st->adq_n || st->eos) used = st->adq_n;
    if (used > 0) {
        memmove(st->adq, st->adq + (size_t)used * dim,
                sizeof(float) * (size_t)(st->adq_n - used) * dim);
        st->adq_n -= used;
        st->adq_base += used;
    }
}

/* Positions below prompt_len-1 are prefilled in batches (no logits). After
 * that each pass runs k >= 1 positions: the first with its known input token,
 * the others guessing that the previous output was STREAMING_PAD (as many as
 * the current run of pads suggests). Tokens are
 * kept up to the first non-pad output; later rows had a wrong input and are
 * dropped (their KV slots are rewritten by the next pass before any read).
 * Rows never influence each other's arithmetic, so the output is bitwise the
 * same as one position per pass. */
static int run_decoder(vx_stream *s) {
    vx_state *st = &s->st;
    const int dim = s->m->p.dec.dim, L = s->prompt_len;
    const double t0 = now_ms();
    int rc = 0;
    while (rc == 0 && !st->eos && st->dec_pos < st->adq_base + st->adq_n) {
        const int64_t p = st->dec_pos, avail = st->adq_base + st->adq_n;
        const float *ad = st->adq + (size_t)(p - st->adq_base) * dim;
        if (p < L - 1) {
            int64_t n = (L - 1 < avail ? L - 1 : avail) - p;
            rc = prefill(s, p, n > VX_DEC_BATCH ? VX_DEC_BATCH : (int)n, ad);
        } else {
            rc = step(s, p, avail, ad);
        }
    }
    if (rc == 0) drop_used_rows(st, dim);
    s->stats.decoder_ms += now_ms() - t0;
    return rc;
}

static vx_status oom(vx_stream *s, const char *where) {
    return set_err(s, VX_ERR_NOMEM, "out of memory in %s; call vx_stream_reset", where);
}

/* The first call computes the left padding once and saves the state. */
static vx_status ensure_snapshot(vx_stream *s) {
    if (s->have_snap) return VX_OK;
    if (push_samples(s, NULL, (size_t)VX_LEFT_PAD_POS * VX_POS_SAMPLES, 1) != 0 ||
        produce_mel(s, INT64_MAX) != 0 || run_audio(s, 1) != 0 || run_decoder(s) != 0)
        return oom(s, "the left padding");
    if (state_copy(&s->snap, &s->st, s->m) != 0) return oom(s, "saving the stream state");
    s->have_snap = 1;
    return VX_OK;
}

/* ---- public API ---- */

vx_status vx_stream_new(vx_model *m, const vx_stream_options *opt, vx_stream **out) {
    if (!m || !out) return VX_ERR_ARG;
    *out = NULL;
    int delay = opt && opt->delay_ms ? opt->delay_ms : 480;
    int interval = opt && opt->interval_ms ? opt->interval_ms : 80;
    int spec = opt && opt->max_speculation ? opt->max_speculation : 8;
    if (delay < 80 || delay > 2400 || delay % 80 != 0) return VX_ERR_ARG;
    if (interval < 0 || interval > 60000) return VX_ERR_ARG;
    if (spec < 1 || spec > VX_DEC_BATCH) return VX_ERR_ARG;
    if (opt && (opt->kv_f32 < 0 || opt->kv_f32 > 1)) return VX_ERR_ARG;
    const int kv_f16 = !(opt && opt->kv_f32);
    vx_stream *s = calloc(1, sizeof *s);
    if (!s) return VX_ERR_NOMEM;
    s->m = m;
    s->delay_pos = delay / 80;
    s->prompt_len = 1 + VX_LEFT_PAD_POS + s->delay_pos;
    s->interval_frames = interval / 10 < VX_POS_FRAMES ? VX_POS_FRAMES : interval / 10;
    s->max_spec = spec;
    const size_t dim = (size_t)m->p.dec.dim;
    s->dec_x = malloc(sizeof(float) * VX_DEC_BATCH * dim);
    s->dec_emb = malloc(sizeof(float) * dim);
    s->pad_emb = malloc(sizeof(float) * dim);
    s->dec_logits = malloc(sizeof(float) * (size_t)spec * (size_t)m->p.vocab_size);
    if (!s->dec_x || !s->dec_emb || !s->pad_emb || !s->dec_logits ||
        state_init(&s->st, m, kv_f16) != 0 || state_init(&s->snap, m, kv_f16) != 0 ||
        !(s->ada = vx_decoder_ada_new(m, s->delay_pos))) {
        vx_stream_free(s);
        return VX_ERR_NOMEM;
    }
    vx_weight_row(&m->tok_emb, m->pad_id, s->pad_emb);
    *out = s;
    return VX_OK;
}

void vx_stream_free(vx_stream *s) {
    if (!s) return;
    vx_decoder_ada_free(s->m, s->ada);
    state_free(&s->st);
    state_free(&s->snap);
    vx_scratch_free(&s->enc_s);
    vx_scratch_free(&s->dec_s);
    free(s->dec_x);
    free(s->dec_emb);
    free(s->pad_emb);
    free(s->dec_logits);
    free(s->events);
    free(s->cap_mel.data);
    free(s->cap_enc.data);
    free(s->cap_adapt.data);
    free(s->cap_logits.data);
    free(s);
}

vx_status vx_stream_feed(vx_stream *s, const float *x, size_t n) {
    if (!s) return VX_ERR_ARG;
    s->err[0] = 0;
    if (s->finished)
        return set_err(s, VX_ERR_STATE, "feed after finish: call vx_stream_reset to start again");
    if (n > 0 && !x) return set_err(s, VX_ERR_ARG, "samples is NULL");
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return set_err(s, VX_ERR_ARG, "sample %zu is %s; nothing of this call was used", i,
                           isnan(x[i]) ? "NaN" : "infinite");
    vx_status st = ensure_snapshot(s);
    if (st != VX_OK) return st;
    if (s->st.eos) return VX_OK; /* the model ended the utterance: wait for flush/reset */
    if (n == 0) return VX_OK;
    if (push_samples(s, x, n, 0) != 0) return oom(s, "feed");
    s->st.utt_samples += (int64_t)n;
    if (produce_mel(s, INT64_MAX) != 0 || run_audio(s, 0) != 0 || run_decoder(s) != 0)
        return oom(s, "feed");
    return VX_OK;
}

static vx_status flush_impl(vx_stream *s) {
    vx_state *st = &s->st;
    vx_status rc = ensure_snapshot(s);
    if (rc != VX_OK) return rc;
    if (st->utt_samples > 0 && !st->eos) {
        /* the offline recipe's right padding: zeros to a whole position, then
         * delay + 1 + 10 positions; 40 more zeros complete the last frame */
        int64_t total = (int64_t)VX_LEFT_PAD_POS * VX_POS_SAMPLES + st->utt_samples;
        int64_t pad = (VX_POS_SAMPLES - total % VX_POS_SAMPLES) % VX_POS_SAMPLES +
                      (int64_t)(s->delay_pos + 1 + 10) * VX_POS_SAMPLES;
        int64_t frames = (total + pad) / s->m->p.hop;
        if (push_samples(s, NULL, (size_t)(pad + s->m->n_fft / 2), 1) != 0 ||
            produce_mel(s, frames) != 0 || run_audio(s, 1) != 0 || run_decoder(s) != 0)
            return oom(s, "flush");
    }
    if (emit_utterance_end(s) != 0) return oom(s, "flush");
    memset(&s->utf8, 0, sizeof s->utf8);
    if (state_copy(st, &s->snap, s->m) != 0) return oom(s, "restoring the stream state");
    return VX_OK;
}

vx_status vx_stream_flush(vx_stream *s) {
    if (!s) return VX_ERR_ARG;
    s->err[0] = 0;
    if (s->finished)
        return set_err(s, VX_ERR_STATE, "flush after finish: call vx_stream_reset to start again");
    return flush_impl(s);
}

vx_status vx_stream_finish(vx_stream *s) {
    if (!s) return VX_ERR_ARG;
    s->err[0] = 0;
    if (s->finished) return set_err(s, VX_ERR_STATE, "finish called twice");
    vx_status rc = flush_impl(s);
    if (rc == VX_OK) s->finished = 1;
    return rc;
}

vx_status vx_stream_reset(vx_stream *s) {
    if (!s) return VX_ERR_ARG;
    s->err[0] = 0;
    s->finished = 0;
    s->n_events = s->ev_head = 0;
    memset(&s->utf8, 0, sizeof s->utf8);
    if (!s->have_snap) return ensure_snapshot(s);
    if (state_copy(&s->st, &s->snap, s->m) != 0) return oom(s, "reset");
    return VX_OK;
}

size_t vx_stream_read_events(vx_stream *s, vx_event *out, size_t max) {
    if (!s || !out) return 0;
    size_t n = s->n_events - s->ev_head;
    if (n > max) n = max;
    if (n == 0) return 0; /* events may still be NULL */
    memcpy(out, s->events + s->ev_head, n * sizeof(vx_event));
    s->ev_head += n;
    if (s->ev_head == s->n_events) s->ev_head = s->n_events = 0;
    return n;
}

const char *vx_stream_error(const vx_stream *s) { return s ? s->err : "no stream"; }

void vx_stream_get_stats(const vx_stream *s, vx_stream_stats *out) {
    *out = s->stats;
    int64_t w = s->m->p.dec.window;
    out->kv_positions = s->st.dec_pos < w ? s->st.dec_pos : w;
}

vx_status vx_stream_debug_enable(vx_stream *s, int kinds) {
    if (!s) return VX_ERR_ARG;
    s->debug_kinds = kinds;
    return VX_OK;
}

vx_status vx_stream_debug_get(const vx_stream *s, int kind, const float **data, int64_t *rows,
                              int64_t *cols) {
    if (!s || !data || !rows || !cols) return VX_ERR_ARG;
    const vx_capture *c = kind == VX_DEBUG_MEL       ? &s->cap_mel
                          : kind == VX_DEBUG_ENCODER ? &s->cap_enc
                          : kind == VX_DEBUG_ADAPTER ? &s->cap_adapt
                          : kind == VX_DEBUG_LOGITS  ? &s->cap_logits
                                                     : NULL;
    if (!c) return VX_ERR_ARG;
    *data = c->data;
    *rows = c->rows;
    *cols = c->cols;
    return VX_OK;
}
