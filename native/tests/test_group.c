/* test_group.c - several streams stepped together (vx_group_feed) give each
 * stream exactly the events it gives alone: on tiny_model.h's model, 2 to 4
 * streams with different delays, speculation depths and audio (noise of
 * different loudness, silence), fed in seeded random interleavings (random
 * piece sizes, random subsets per call, streams joining late and leaving
 * early), with flushes mid-way (each naming a random count of its last
 * samples as silence, some beyond the padding), against each stream run
 * alone with vx_stream_feed / vx_stream_flush_after_silence. The model runs
 * with F32 weights and again with the decoder quantized as the q4 models are
 * (Q4 layers, a Q8 embedding), so the integer kernels' rows are checked
 * stacked too. */
#include "check.h"
#include "quant.h"
#include "stream.h"
#include "tiny_model.h"

enum { MAX_STREAMS = 4, MAX_FLUSHES = 3, MAX_EVENTS = 4096 };

typedef struct {
    int delay_ms, max_spec;
    float *audio;
    size_t n;
    size_t flush_at[MAX_FLUSHES]; /* flush after this many samples (ascending) */
    size_t silence[MAX_FLUSHES];  /* the samples before it its flush calls silence */
    int n_flush;                  /* the last flush is at n: the stream's end */
} stream_case;

typedef struct {
    vx_event ev[MAX_EVENTS];
    int n;
    float *logits; /* every logits row the stream computed (VX_DEBUG_LOGITS) */
    int64_t n_logits;
} event_log;

/* The stream's logits rows into log (before the stream is freed). */
static void keep_logits(vx_stream *s, event_log *log) {
    const float *d = NULL;
    int64_t rows = 0, cols = 0;
    CHECK(vx_stream_debug_get(s, VX_DEBUG_LOGITS, &d, &rows, &cols) == VX_OK);
    log->n_logits = rows * cols;
    log->logits = tiny_alloc(sizeof(float) * (size_t)log->n_logits);
    if (log->n_logits) memcpy(log->logits, d, sizeof(float) * (size_t)log->n_logits);
}

static uint64_t rng_next(uint64_t *r) {
    *r ^= *r >> 12;
    *r ^= *r << 25;
    *r ^= *r >> 27;
    return *r * 2685821657736338717ull;
}

static int rng_below(uint64_t *r, int n) { return (int)(rng_next(r) >> 33) % n; }

static void drain(vx_stream *s, event_log *log) {
    vx_event buf[64];
    size_t k;
    while ((k = vx_stream_read_events(s, buf, 64)) > 0)
        for (size_t i = 0; i < k; i++)
            if (log->n < MAX_EVENTS) log->ev[log->n++] = buf[i];
}

static vx_stream *new_stream(vx_model *m, const stream_case *c) {
    vx_stream_options opt = {.delay_ms = c->delay_ms, .max_speculation = c->max_spec};
    vx_stream *s = NULL;
    CHECK(vx_stream_new(m, &opt, &s) == VX_OK);
    if (s) CHECK(vx_stream_debug_enable(s, VX_DEBUG_LOGITS) == VX_OK);
    return s;
}

/* The stream alone: pieces of 1000 samples, a flush at each flush point. */
static void run_solo(vx_model *m, const stream_case *c, event_log *log) {
    vx_stream *s = new_stream(m, c);
    if (!s) return;
    size_t at = 0;
    for (int f = 0; f < c->n_flush; f++) {
        while (at < c->flush_at[f]) {
            size_t k = c->flush_at[f] - at < 1000 ? c->flush_at[f] - at : 1000;
            CHECK(vx_stream_feed(s, c->audio + at, k) == VX_OK);
            at += k;
        }
        CHECK(vx_stream_flush_after_silence(s, c->silence[f]) == VX_OK);
    }
    drain(s, log);
    keep_logits(s, log);
    vx_stream_free(s);
}

static void same_log(const event_log *a, const event_log *b, int stream, uint64_t seed) {
    CHECKF(a->n == b->n, "seed %llu stream %d: %d events grouped, %d alone",
           (unsigned long long)seed, stream, a->n, b->n);
    for (int i = 0; i < a->n && i < b->n; i++) {
        const vx_event *x = &a->ev[i], *y = &b->ev[i];
        CHECKF(x->kind == y->kind && x->token == y->token && x->position == y->position &&
                   x->audio_time == y->audio_time && strcmp(x->text, y->text) == 0,
               "seed %llu stream %d event %d: kind %d token %d pos %lld grouped, kind %d "
               "token %d pos %lld alone",
               (unsigned long long)seed, stream, i, x->kind, x->token, (long long)x->position,
               y->kind, y->token, (long long)y->position);
    }
    /* not only the same argmax: the same bits in every logit */
    CHECKF(a->n_logits > 0 && a->n_logits == b->n_logits &&
               memcmp(a->logits, b->logits, sizeof(float) * (size_t)a->n_logits) == 0,
           "seed %llu stream %d: logits differ (%lld grouped, %lld alone)",
           (unsigned long long)seed, stream, (long long)a->n_logits, (long long)b->n_logits);
}

/* The streams in a random interleaving: each call feeds a random subset of
 * the streams that have joined and not left, each a random piece (cut at
 * its next flush point, flushing there); stream i joins at call join[i]. */
static void run_grouped(vx_model *m, const stream_case *c, int ns, uint64_t seed,
                        event_log *logs, vx_group_stats *gst) {
    vx_group *g = NULL;
    CHECK(vx_group_new(m, &g) == VX_OK);
    if (!g) return;
    uint64_t r = seed * 0x9e3779b97f4a7c15ull + 1;
    vx_stream *s[MAX_STREAMS] = {0};
    size_t at[MAX_STREAMS] = {0};
    int next_flush[MAX_STREAMS] = {0}, join[MAX_STREAMS];
    for (int i = 0; i < ns; i++) join[i] = i == 0 ? 0 : rng_below(&r, 12);
    for (int call = 0;; call++) {
        vx_stream *cs[MAX_STREAMS];
        const float *pcm[MAX_STREAMS];
        size_t n[MAX_STREAMS], sil[MAX_STREAMS];
        int fl[MAX_STREAMS], who[MAX_STREAMS], count = 0, live = 0;
        for (int i = 0; i < ns; i++) {
            if (next_flush[i] == c[i].n_flush) continue; /* left */
            live++;
            if (call < join[i] || rng_below(&r, 4) == 0) continue; /* not yet, or idle */
            if (!s[i] && !(s[i] = new_stream(m, &c[i]))) return;
            const size_t lim = c[i].flush_at[next_flush[i]];
            size_t k = (size_t)rng_below(&r, 4) == 0 ? 0 : (size_t)rng_below(&r, 3000);
            if (k > lim - at[i]) k = lim - at[i];
            cs[count] = s[i];
            pcm[count] = c[i].audio + at[i];
            n[count] = k;
            fl[count] = at[i] + k == lim && rng_below(&r, 3) != 0;
            sil[count] = c[i].silence[next_flush[i]];
            who[count++] = i;
            at[i] += k;
        }
        if (!live) break;
        if (!count) continue;
        vx_status st[MAX_STREAMS];
        CHECK(vx_group_feed(g, cs, pcm, n, fl, sil, count, st) == VX_OK);
        for (int j = 0; j < count; j++) {
            const int i = who[j];
            CHECKF(st[j] == VX_OK, "seed %llu stream %d: %s", (unsigned long long)seed, i,
                   vx_stream_error(cs[j]));
            drain(cs[j], &logs[i]);
            if (fl[j] && ++next_flush[i] == c[i].n_flush) { /* leaves the group */
                keep_logits(s[i], &logs[i]);
                vx_stream_free(s[i]);
                s[i] = NULL;
            }
        }
    }
    vx_group_get_stats(g, gst);
    vx_group_free(g);
}

static void make_case(tiny_model *t, stream_case *c, int i, uint64_t *r) {
    static const int delays[] = {160, 480, 240, 80};
    static const int specs[] = {8, 1, 3, 8};
    c->delay_ms = delays[i];
    c->max_spec = specs[i];
    c->n = 12000 + (size_t)rng_below(r, 16000);
    c->audio = tiny_alloc(sizeof(float) * c->n);
    const float amp = 0.05f + 0.2f * (float)i;
    for (size_t k = 0; k < c->n; k++)
        c->audio[k] = (i == 3 && k < c->n / 2) ? 0.0f : amp * (float)(tiny_urand(t) * 2 - 1);
    c->n_flush = 1 + rng_below(r, MAX_FLUSHES);
    for (int f = 0; f < c->n_flush - 1; f++)
        c->flush_at[f] = c->n * (size_t)(f + 1) / (size_t)c->n_flush + (size_t)rng_below(r, 900);
    c->flush_at[c->n_flush - 1] = c->n;
    /* none, part of the padding's 17 positions, or more than all of it */
    for (int f = 0; f < c->n_flush; f++)
        c->silence[f] = rng_below(r, 3) == 0 ? 0 : (size_t)rng_below(r, 30000);
}

static void check_seed(tiny_model *t, int ns, uint64_t seed) {
    uint64_t r = seed + 77;
    stream_case c[MAX_STREAMS];
    static event_log solo[MAX_STREAMS], grouped[MAX_STREAMS];
    for (int i = 0; i < ns; i++) {
        make_case(t, &c[i], i, &r);
        solo[i].n = grouped[i].n = 0;
        solo[i].n_logits = grouped[i].n_logits = 0;
        run_solo(t->m, &c[i], &solo[i]);
    }
    vx_group_stats gs = {0};
    run_grouped(t->m, c, ns, seed, grouped, &gs);
    int tokens = 0;
    for (int i = 0; i < ns; i++) {
        same_log(&grouped[i], &solo[i], i, seed);
        tokens += solo[i].n;
        free(c[i].audio);
        free(solo[i].logits);
        free(grouped[i].logits);
        solo[i].logits = grouped[i].logits = NULL;
    }
    /* the group did stack streams: fewer reads of the weights than passes */
    CHECKF(gs.max_streams >= 2 && gs.passes < gs.stream_passes,
           "seed %llu: %lld passes for %lld stream passes, at most %lld streams",
           (unsigned long long)seed, (long long)gs.passes, (long long)gs.stream_passes,
           (long long)gs.max_streams);
    /* and their encoder passes: frames of several streams in one stack pass */
    CHECKF(gs.encoder_passes > 0 && gs.encoder_stream_passes > gs.encoder_passes,
           "seed %llu: %lld stacked encoder passes for %lld stream shares",
           (unsigned long long)seed, (long long)gs.encoder_passes,
           (long long)gs.encoder_stream_passes);
    printf("  %d streams, seed %llu: %d events, %lld passes for %lld stream passes, "
           "%lld stacked encoder passes\n", ns, (unsigned long long)seed, tokens,
           (long long)gs.passes, (long long)gs.stream_passes, (long long)gs.encoder_passes);
}

/* Bad calls are refused before anything runs. */
static void check_args(tiny_model *t) {
    stream_case c = {.delay_ms = 480, .max_spec = 8};
    vx_stream *a = new_stream(t->m, &c);
    vx_group *g = NULL;
    CHECK(vx_group_new(t->m, &g) == VX_OK);
    if (!a || !g) return;
    vx_stream *twice[2] = {a, a};
    CHECK(vx_group_feed(g, twice, NULL, NULL, NULL, NULL, 2, NULL) == VX_ERR_ARG);
    CHECK(vx_group_feed(g, twice, NULL, NULL, NULL, NULL, -1, NULL) == VX_ERR_ARG);
    CHECK(vx_group_feed(g, twice, NULL, NULL, NULL, NULL, 0, NULL) == VX_OK);
    /* a NaN fails its stream only */
    tiny_model t2;
    tiny_model_init(&t2, t->m->be, 1);
    vx_stream *b = new_stream(t->m, &c), *other = new_stream(t2.m, &c);
    float bad[4] = {0, NAN, 0, 0}, good[4] = {0};
    vx_stream *two[2] = {a, b};
    const float *pcm[2] = {bad, good};
    size_t n[2] = {4, 4};
    vx_status st[2];
    CHECK(vx_group_feed(g, two, pcm, n, NULL, NULL, 2, st) == VX_ERR_ARG);
    CHECK(st[0] == VX_ERR_ARG && st[1] == VX_OK);
    CHECK(strstr(vx_stream_error(a), "NaN") != NULL);
    vx_stream *mixed[2] = {b, other}; /* another model's stream */
    CHECK(vx_group_feed(g, mixed, NULL, NULL, NULL, NULL, 2, NULL) == VX_ERR_ARG);
    vx_stream_free(other);
    tiny_model_free(&t2);
    vx_stream_free(a);
    vx_stream_free(b);
    vx_group_free(g);
}

/* w quantized to dtype in the row-group layout (the weight's data is kept in
 * t's list, freed with it). */
static void quantize_weight(tiny_model *t, vx_weight *w, int dtype) {
    const size_t rb = vx_row_bytes(dtype, w->cols);
    uint8_t *rowmajor = tiny_alloc(rb * (size_t)w->rows);
    uint8_t *packed = tiny_alloc(rb * (size_t)w->rows);
    for (int64_t r = 0; r < w->rows; r++) {
        const float *x = (const float *)w->data + (size_t)r * w->cols;
        if (dtype == VX_DT_Q4)
            vx_quantize_row_q4(x, w->cols, rowmajor + (size_t)r * rb);
        else
            vx_quantize_row_q8(x, w->cols, rowmajor + (size_t)r * rb);
    }
    vx_q_pack_rows(dtype, rowmajor, w->rows, w->cols, packed);
    free(rowmajor);
    if (t->n_weights == TINY_MAX_WEIGHTS) {
        fprintf(stderr, "test_group: raise TINY_MAX_WEIGHTS\n");
        exit(2);
    }
    t->weights[t->n_weights++] = packed;
    w->data = packed;
    w->dtype = dtype;
}

static void quantize_decoder(tiny_model *t) {
    vx_model *m = t->m;
    for (int l = 0; l < m->p.dec.n_layers; l++) {
        vx_layer *L = &m->dec_layers[l];
        vx_weight *w[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
        for (int i = 0; i < 7; i++) quantize_weight(t, w[i], VX_DT_Q4);
    }
    quantize_weight(t, &m->tok_emb, VX_DT_Q8);
}

int main(void) {
    const vx_backend *backends[4] = {vx_backend_portable(), vx_backend_avx2(), vx_backend_neon(),
                                     vx_backend_neon_i8mm()};
    for (int b = 0; b < 4 * 2; b++) {
        const int q4 = b % 2;
        if (!backends[b / 2]) continue;
        tiny_model t;
        tiny_model_init(&t, backends[b / 2], 2);
        if (q4) quantize_decoder(&t);
        printf("%s, decoder %s:\n", t.m->be->name, q4 ? "q4" : "f32");
        if (!q4) check_args(&t);
        /* three seeds per count on this CPU's best backend (F32), one on the
         * others (the stacking is the same code; the kernels differ) */
        const uint64_t seeds =
            !q4 && backends[b / 2] == vx_backend_select(NULL, NULL, 0) ? 3 : 1;
        for (int ns = 2; ns <= MAX_STREAMS; ns++)
            for (uint64_t seed = 1; seed <= seeds; seed++)
                check_seed(&t, ns, seed + 10 * (uint64_t)ns);
        tiny_model_free(&t);
    }
    return check_report("test_group");
}
