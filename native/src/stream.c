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

#include "device.h"
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

/* After an encoder pass over n_pos positions of the pending mel frames
 * (their encoder rows enc, adapter rows out): they are consumed, the
 * adapter rows are queued for the decoder. */
static int encoder_done(vx_stream *s, int n_pos, const float *enc, const float *out, int passes) {
    const vx_model *m = s->m;
    vx_state *st = &s->st;
    const int nmel = m->p.n_mels, ed = m->p.enc.dim, dim = m->p.dec.dim;
    const int nm = n_pos * VX_POS_FRAMES, ne = n_pos * VX_POS_ENC_FRAMES;
    s->stats.encoder_passes += passes;
    st->n_mel_pend -= nm;
    memmove(st->mel_pend, st->mel_pend + (size_t)nm * nmel,
            sizeof(float) * (size_t)st->n_mel_pend * nmel);
    if (capture_rows(s, VX_DEBUG_ENCODER, enc, ne, ed) != 0 ||
        capture_rows(s, VX_DEBUG_ADAPTER, out, n_pos, dim) != 0 ||
        append_adapter_rows(st, out, n_pos, dim) != 0)
        return -1;
    s->stats.encoder_frames += ne;
    return 0;
}

/* One encoder pass over n_pos whole positions of the pending mel frames. */
static int run_encoder(vx_stream *s, int n_pos) {
    const vx_model *m = s->m;
    vx_state *st = &s->st;
    const int ed = m->p.enc.dim, dim = m->p.dec.dim;
    const int ne = n_pos * VX_POS_ENC_FRAMES;
    if (n_pos <= 0) return 0;
    if (n_pos * VX_POS_FRAMES > st->n_mel_pend) return -1;
    const double t0 = now_ms();
    float *enc = malloc(sizeof(float) * (size_t)ne * ed);
    float *out = malloc(sizeof(float) * (size_t)n_pos * dim);
    int rc = -1;
    if (enc && out) {
        const int passes = vx_encoder_pass(m, &st->enc, &s->enc_s, st->mel_pend, n_pos, enc, out);
        if (passes >= 0) rc = encoder_done(s, n_pos, enc, out, passes);
    }
    s->stats.encoder_ms += now_ms() - t0;
    free(enc);
    free(out);
    return rc;
}

static int run_audio(vx_stream *s, int force) {
    vx_state *st = &s->st;
    if (!force && st->n_mel_pend < s->interval_frames) return 0;
    const int n_pos = st->n_mel_pend / VX_POS_FRAMES;
    if (s->enc_defer) { /* the group runs it (group_encode) */
        if (n_pos > s->enc_pending) s->enc_pending = n_pos;
        return 0;
    }
    return run_encoder(s, n_pos);
}

static int prompt_token(const vx_stream *s, int64_t p) {
    return p == 0 ? s->m->bos_id : s->m->pad_id;
}

/* Input row i: adapter row ad[i] plus the embedding e of its input token. */
static void input_row(float *x, const float *ad, const float *e, int i, int dim) {
    for (int c = 0; c < dim; c++) x[i * dim + c] = ad[i * dim + c] + e[c];
}

/* The outputs of a pass of k rows from position p (their logits): tokens up
 * to the first non-pad one (or the end of the utterance); returns how many,
 * or -1. */
static int keep_tokens(vx_stream *s, const float *logits, int64_t p, int k) {
    const vx_model *m = s->m;
    vx_state *st = &s->st;
    const int64_t vocab = m->p.vocab_size;
    int kept = 0;
    while (kept < k) {
        const float *row = logits + (size_t)kept * vocab;
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

/* One decoder pass of a stream, planned apart from running it so that a
 * group (vx_group_feed) can stack the passes of several streams. */
typedef struct {
    int64_t p; /* first position */
    int n;     /* rows */
    int step;  /* 1: a step (its rows need logits); 0: prompt prefill */
} dec_plan;

static int has_decoder_work(const vx_stream *s) {
    const vx_state *st = &s->st;
    return !st->eos && st->dec_pos < st->adq_base + st->adq_n;
}

/* The stream's next pass (has_decoder_work must hold), its input rows
 * written to x. Positions below prompt_len-1 are prefilled in batches (no
 * logits). After that a pass runs k >= 1 positions: the first with its known
 * input token, the others guessing that the previous output was
 * STREAMING_PAD, as far as the recent outputs justify (after a run of r
 * pads, r+1 rows; after text, one: a wrong guess costs a full row). */
static void plan_pass(vx_stream *s, dec_plan *pl, float *x) {
    const vx_model *m = s->m;
    const vx_state *st = &s->st;
    const int dim = m->p.dec.dim, L = s->prompt_len;
    const int64_t p = st->dec_pos, avail = st->adq_base + st->adq_n;
    const float *ad = st->adq + (size_t)(p - st->adq_base) * dim;
    pl->p = p;
    if (p < L - 1) {
        int64_t n = (L - 1 < avail ? L - 1 : avail) - p;
        pl->n = n > VX_DEC_BATCH ? VX_DEC_BATCH : (int)n;
        pl->step = 0;
        for (int i = 0; i < pl->n; i++) {
            vx_weight_row(&m->tok_emb, prompt_token(s, p + i), s->dec_emb);
            input_row(x, ad, s->dec_emb, i, dim);
        }
        return;
    }
    int k = st->pad_run + 1 < s->max_spec ? st->pad_run + 1 : s->max_spec;
    if (k > avail - p) k = (int)(avail - p);
    vx_weight_row(&m->tok_emb, p < L ? prompt_token(s, p) : st->last_token, s->dec_emb);
    for (int i = 0; i < k; i++) input_row(x, ad, i == 0 ? s->dec_emb : s->pad_emb, i, dim);
    pl->n = k;
    pl->step = 1;
}

/* The results of a planned pass that took ms: a step's tokens are kept up to
 * the first non-pad output; later rows had a wrong input and are dropped
 * (their KV slots are rewritten by the next pass before any read). */
static int finish_pass(vx_stream *s, const dec_plan *pl, const float *logits, double ms) {
    vx_state *st = &s->st;
    s->stats.decoder_passes += 1;
    if (!pl->step) {
        st->dec_pos += pl->n;
        s->stats.positions += pl->n;
        s->stats.prompt_positions += pl->n;
        s->stats.prompt_passes += 1;
        s->stats.prompt_ms += ms;
        return 0;
    }
    const int kept = keep_tokens(s, logits, pl->p, pl->n);
    if (kept < 0) return -1;
    st->dec_pos += kept;
    s->stats.positions += kept;
    s->stats.spec_guesses += pl->n - 1;
    s->stats.spec_accepted += kept - 1;
    return 0;
}

/* Every position that has adapter rows, one pass at a time (plan_pass).
 * Rows never influence each other's arithmetic, so the output is bitwise
 * the same as one position per pass, or as a pass stacked with other
 * streams' rows. */
static int run_decoder(vx_stream *s) {
    const double t0 = now_ms();
    int rc = 0;
    while (rc == 0 && has_decoder_work(s)) {
        dec_plan pl;
        plan_pass(s, &pl, s->dec_x);
        const double tp = now_ms();
        rc = vx_decoder_pass(s->m, s->ada, &s->st.dec_kv, &s->dec_s, s->dec_x, pl.n, pl.p,
                             pl.step ? s->dec_logits : NULL);
        if (rc == 0) rc = finish_pass(s, &pl, s->dec_logits, now_ms() - tp);
    }
    if (rc == 0) drop_used_rows(&s->st, s->m->p.dec.dim);
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

/* A feed up to the decoder: the checks, the left padding (once), samples to
 * mel frames to encoder passes. *decode says whether the decoder has to run
 * next (not for an empty feed, nor after the model ended the utterance). */
static vx_status feed_audio(vx_stream *s, const float *x, size_t n, int *decode) {
    *decode = 0;
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
    if (produce_mel(s, INT64_MAX) != 0 || run_audio(s, 0) != 0) return oom(s, "feed");
    *decode = 1;
    return VX_OK;
}

vx_status vx_stream_feed(vx_stream *s, const float *x, size_t n) {
    if (!s) return VX_ERR_ARG;
    int decode;
    vx_status st = feed_audio(s, x, n, &decode);
    if (st == VX_OK && decode && run_decoder(s) != 0) return oom(s, "feed");
    return st;
}

/* A flush up to the decoder: the offline recipe's right padding through the
 * encoder; *decode as in feed_audio. The last `silence` samples fed are
 * silence after the speech (an endpointer's hangover): the padding is counted
 * from the speech's end, so the decoder stops delay + 11 positions past the
 * last speech, not past the silence. Zeros never replace audio already fed. */
static vx_status flush_audio(vx_stream *s, int64_t silence, int *decode) {
    vx_state *st = &s->st;
    *decode = 0;
    vx_status rc = ensure_snapshot(s);
    if (rc != VX_OK) return rc;
    if (st->utt_samples > 0 && !st->eos) {
        /* the offline recipe's right padding, counted from the speech's end:
         * zeros to a whole position, then delay + 1 + 10 positions (at least
         * to the whole position the audio fed reaches); 40 more zeros
         * complete the last frame */
        const int64_t pos = VX_POS_SAMPLES;
        int64_t total = (int64_t)VX_LEFT_PAD_POS * pos + st->utt_samples;
        int64_t speech_end = total - (silence < st->utt_samples ? silence : st->utt_samples);
        int64_t end = (speech_end + pos - 1) / pos * pos + (int64_t)(s->delay_pos + 1 + 10) * pos;
        int64_t whole = (total + pos - 1) / pos * pos;
        int64_t pad = (end > whole ? end : whole) - total;
        int64_t frames = (total + pad) / s->m->p.hop;
        if (push_samples(s, NULL, (size_t)(pad + s->m->n_fft / 2), 1) != 0 ||
            produce_mel(s, frames) != 0 || run_audio(s, 1) != 0)
            return oom(s, "flush");
        *decode = 1;
    }
    return VX_OK;
}

/* A flush after the decoder: the utterance end, then the state saved after
 * the left padding. */
static vx_status flush_end(vx_stream *s) {
    if (emit_utterance_end(s) != 0) return oom(s, "flush");
    memset(&s->utf8, 0, sizeof s->utf8);
    if (state_copy(&s->st, &s->snap, s->m) != 0) return oom(s, "restoring the stream state");
    return VX_OK;
}

static vx_status flush_impl(vx_stream *s, int64_t silence) {
    int decode;
    vx_status rc = flush_audio(s, silence, &decode);
    if (rc != VX_OK) return rc;
    if (decode && run_decoder(s) != 0) return oom(s, "flush");
    return flush_end(s);
}

/* A caller's count of silent samples (more than any utterance holds is all of it). */
static int64_t silence_samples(size_t n) { return n > INT64_MAX ? INT64_MAX : (int64_t)n; }

vx_status vx_stream_flush_after_silence(vx_stream *s, size_t silence) {
    if (!s) return VX_ERR_ARG;
    s->err[0] = 0;
    if (s->finished)
        return set_err(s, VX_ERR_STATE, "flush after finish: call vx_stream_reset to start again");
    return flush_impl(s, silence_samples(silence));
}

vx_status vx_stream_flush(vx_stream *s) { return vx_stream_flush_after_silence(s, 0); }

vx_status vx_stream_finish(vx_stream *s) {
    if (!s) return VX_ERR_ARG;
    s->err[0] = 0;
    if (s->finished) return set_err(s, VX_ERR_STATE, "finish called twice");
    vx_status rc = flush_impl(s, 0);
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

vx_status vx_stream_prepare(vx_stream *s) {
    if (!s) return VX_ERR_ARG;
    s->err[0] = 0;
    return ensure_snapshot(s);
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

/* ---- groups: several streams' decoder passes in one read of the weights ---- */

struct vx_group {
    vx_model *m;
    vx_scratch s;           /* the stacked passes' activations */
    vx_scratch enc_s;       /* the stacked encoder passes' */
    vx_enc_job *job;        /* [cap] one per stream with encoder work */
    float *x;               /* [x_cap, dim] input rows of a stacked pass */
    float *logits;          /* [lg_cap, vocab] logits of its step rows */
    int64_t x_cap, lg_cap;  /* rows */
    vx_stack_seg *seg;      /* [cap] one per stream in a pass */
    dec_plan *plan;         /* [cap] */
    int *who;               /* [cap] the call's index of a segment's stream */
    int *active;            /* [cap] 1 while a stream of the call decodes */
    int *flush;             /* [cap] 1 when a stream of the call flushes */
    vx_status *st;          /* [cap] */
    int64_t cap;            /* streams per call the arrays hold */
    vx_group_stats stats;
};

vx_status vx_group_new(vx_model *m, vx_group **out) {
    if (!m || !out) return VX_ERR_ARG;
    *out = calloc(1, sizeof **out);
    if (!*out) return VX_ERR_NOMEM;
    (*out)->m = m;
    return VX_OK;
}

void vx_group_free(vx_group *g) {
    if (!g) return;
    vx_scratch_free(&g->s);
    vx_scratch_free(&g->enc_s);
    free(g->job);
    free(g->x);
    free(g->logits);
    free(g->seg);
    free(g->plan);
    free(g->who);
    free(g->active);
    free(g->flush);
    free(g->st);
    free(g);
}

void vx_group_get_stats(const vx_group *g, vx_group_stats *out) { *out = g->stats; }

/* Room for count streams: their rows of one pass and the logits of them. */
static int group_reserve(vx_group *g, vx_stream *const *s, int count) {
    const vx_model *m = g->m;
    int64_t lg = 0;
    for (int i = 0; i < count; i++) lg += s[i]->max_spec;
    if (count > g->cap) {
        int64_t c = g->cap, c2 = g->cap, c3 = g->cap, c4 = g->cap, c5 = g->cap, c6 = g->cap,
                c7 = g->cap;
        if (grow((void **)&g->seg, &c, count, sizeof *g->seg) != 0 ||
            grow((void **)&g->job, &c7, count, sizeof *g->job) != 0 ||
            grow((void **)&g->plan, &c2, count, sizeof *g->plan) != 0 ||
            grow((void **)&g->who, &c3, count, sizeof *g->who) != 0 ||
            grow((void **)&g->active, &c4, count, sizeof *g->active) != 0 ||
            grow((void **)&g->flush, &c5, count, sizeof *g->flush) != 0 ||
            grow((void **)&g->st, &c6, count, sizeof *g->st) != 0)
            return -1;
        g->cap = c;
    }
    if (grow((void **)&g->x, &g->x_cap, (int64_t)count * VX_DEC_BATCH,
             sizeof(float) * (size_t)m->p.dec.dim) != 0 ||
        grow((void **)&g->logits, &g->lg_cap, lg, sizeof(float) * (size_t)m->p.vocab_size) != 0)
        return -1;
    return 0;
}

/* Plans the next pass of every active stream that has decoder work: the
 * steps first (their rows need the output head), then the prefills. Returns
 * the number of segments; *rows and *n_logits count their rows. */
static int group_plan(vx_group *g, vx_stream *const *s, int count, int *rows, int *n_logits) {
    const int dim = g->m->p.dec.dim;
    int nseg = 0;
    *rows = *n_logits = 0;
    for (int want_step = 1; want_step >= 0; want_step--) {
        for (int i = 0; i < count; i++) {
            vx_stream *t = s[i];
            if (!g->active[i] || !has_decoder_work(t)) continue;
            if ((t->st.dec_pos >= t->prompt_len - 1) != want_step) continue;
            dec_plan *pl = &g->plan[nseg];
            plan_pass(t, pl, g->x + (size_t)*rows * dim);
            g->seg[nseg] = (vx_stack_seg){t->ada, &t->st.dec_kv, pl->n, pl->p};
            g->who[nseg] = i;
            *rows += pl->n;
            if (pl->step) *n_logits += pl->n;
            nseg++;
        }
    }
    return nseg;
}

/* Run the planned segments: one stacked pass, or one pass each where the
 * device cannot stack them. */
static int group_run(vx_group *g, int nseg, int n_logits) {
    const vx_model *m = g->m;
    if (vx_decoder_can_stack(m))
        return vx_decoder_pass_segs(m, g->seg, nseg, &g->s, g->x, n_logits, g->logits);
    const size_t dim = (size_t)m->p.dec.dim, vocab = (size_t)m->p.vocab_size;
    size_t r = 0, lr = 0;
    for (int j = 0; j < nseg; j++) {
        const int nl = g->plan[j].step ? g->seg[j].n : 0;
        if (vx_decoder_pass_segs(m, &g->seg[j], 1, &g->s, g->x + r * dim, nl,
                                 g->logits + lr * vocab) != 0)
            return -1;
        r += (size_t)g->seg[j].n;
        lr += (size_t)nl;
    }
    return 0;
}

/* The decoder of every active stream until none has work left, the ready
 * passes of all of them in each pass over the weights. */
static void group_decode(vx_group *g, vx_stream *const *s, int count) {
    const size_t vocab = (size_t)g->m->p.vocab_size;
    for (;;) {
        int rows, n_logits;
        const int nseg = group_plan(g, s, count, &rows, &n_logits);
        if (nseg == 0) break;
        const double t0 = now_ms();
        const int rc = group_run(g, nseg, n_logits);
        const double ms = now_ms() - t0;
        g->stats.passes += 1;
        g->stats.stream_passes += nseg;
        g->stats.rows += rows;
        if (nseg > g->stats.max_streams) g->stats.max_streams = nseg;
        size_t lr = 0;
        for (int j = 0; j < nseg; j++) {
            const int i = g->who[j];
            vx_stream *t = s[i];
            t->stats.decoder_ms += ms;
            if (rc != 0 || finish_pass(t, &g->plan[j], g->logits + lr * vocab, ms) != 0) {
                g->st[i] = oom(t, g->flush[i] ? "flush" : "feed");
                g->active[i] = 0;
            }
            if (g->plan[j].step) lr += (size_t)g->plan[j].n;
        }
    }
    for (int i = 0; i < count; i++)
        if (g->active[i]) drop_used_rows(&s[i]->st, g->m->p.dec.dim);
}

/* The encoder passes the streams' feeds and flushes asked for (enc_pending),
 * as one stacked pass (vx_encoder_pass_jobs); a stream whose pass fails is
 * out of the call. */
static void group_encode(vx_group *g, vx_stream *const *s, int count) {
    const vx_model *m = g->m;
    const int ed = m->p.enc.dim, dim = m->p.dec.dim;
    int nj = 0;
    for (int i = 0; i < count; i++) {
        vx_stream *t = s[i];
        const int n_pos = t->enc_pending;
        t->enc_defer = t->enc_pending = 0;
        if (g->st[i] != VX_OK || n_pos <= 0) continue;
        float *enc = malloc(sizeof(float) * (size_t)n_pos * VX_POS_ENC_FRAMES * ed);
        float *out = malloc(sizeof(float) * (size_t)n_pos * dim);
        if (!enc || !out) {
            free(enc);
            free(out);
            g->st[i] = oom(t, g->flush[i] ? "flush" : "feed");
            g->active[i] = 0;
            continue;
        }
        g->job[nj] = (vx_enc_job){&t->st.enc, t->st.mel_pend, n_pos, enc, out};
        g->who[nj++] = i;
    }
    if (nj > 0) {
        const double t0 = now_ms();
        int segs = 0;
        const int passes = vx_encoder_pass_jobs(m, g->job, nj, &g->enc_s, &segs);
        const double ms = now_ms() - t0;
        if (passes > 0 && segs > passes) { /* some passes stacked several streams */
            g->stats.encoder_passes += passes;
            g->stats.encoder_stream_passes += segs;
        }
        for (int k = 0; k < nj; k++) {
            const int i = g->who[k];
            vx_stream *t = s[i];
            t->stats.encoder_ms += ms;
            if (passes < 0 ||
                encoder_done(t, g->job[k].n_pos, g->job[k].enc, g->job[k].out, passes) != 0) {
                g->st[i] = oom(t, g->flush[i] ? "flush" : "feed");
                g->active[i] = 0;
            }
            free(g->job[k].enc);
            free(g->job[k].out);
        }
    }
}

vx_status vx_group_feed(vx_group *g, vx_stream *const *s, const float *const *samples,
                        const size_t *n, const int *flush, const size_t *silence, int count,
                        vx_status *status) {
    if (!g || count < 0 || (count > 0 && !s)) return VX_ERR_ARG;
    for (int i = 0; i < count; i++) {
        if (!s[i] || s[i]->m != g->m) return VX_ERR_ARG;
        for (int j = 0; j < i; j++)
            if (s[j] == s[i]) return VX_ERR_ARG;
    }
    if (group_reserve(g, s, count) != 0) return VX_ERR_NOMEM;
    g->stats.calls += 1;
    /* each stream's audio to mel frames (a flush pads it at once, so its
     * right padding decodes in the same stacked passes), then all their
     * encoder passes as one, then the decoders */
    for (int i = 0; i < count; i++) {
        vx_stream *t = s[i];
        int decode = 0, fdecode = 0;
        g->flush[i] = flush && flush[i];
        t->enc_defer = 1;
        t->enc_pending = 0;
        g->st[i] = feed_audio(t, samples ? samples[i] : NULL, n ? n[i] : 0, &decode);
        /* (a finished stream already failed its feed) */
        if (g->st[i] == VX_OK && g->flush[i])
            g->st[i] = flush_audio(t, silence ? silence_samples(silence[i]) : 0, &fdecode);
        g->active[i] = g->st[i] == VX_OK && (decode || fdecode);
    }
    group_encode(g, s, count);
    group_decode(g, s, count);
    vx_status first = VX_OK;
    for (int i = 0; i < count; i++) {
        if (g->st[i] == VX_OK && g->flush[i]) g->st[i] = flush_end(s[i]);
        if (status) status[i] = g->st[i];
        if (first == VX_OK) first = g->st[i];
    }
    return first;
}
