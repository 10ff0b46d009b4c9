/* test_device.c - the device seam (device.h) holds: the transformer stacks
 * reach the memory of their activations and KV caches only through the
 * device's operations. A "boxed" device runs the CPU device's operations on
 * memory whose handles are not host pointers (each points at a header in
 * front of the data, checked on every use), so any code that used a handle
 * as memory would compute garbage or break a header. A stream on the tiny
 * model must give bitwise the same mel, encoder, adapter and logits rows on
 * it as on the CPU device; rows must go to the device once per stack pass
 * and come back only from passes whose rows the stream reads (not from the
 * prompt's prefill); and every buffer must be released. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"
#include "tiny_model.h"

#define MAGIC 0x766f78642d627566ull /* "voxd-buf" */
#define MAX_LAYERS 8

typedef struct {
    uint64_t magic;
    size_t bytes;
    uint64_t pad[2]; /* the data 32 bytes in, aligned as malloc aligns */
} box;

static long n_alloc, n_release, n_upload, n_download, bad_handles;

static void *unbox(const vx_dbuf *h) {
    if (!h) return NULL;
    box *b = (box *)(void *)h;
    if (b->magic != MAGIC) bad_handles++;
    return b + 1;
}

/* The CPU device's handle for the memory of a boxed one. */
static vx_dbuf *inner(const vx_dbuf *h) { return (vx_dbuf *)unbox(h); }

static const vx_device *cpu(void) { return vx_device_cpu(); }

static vx_dbuf *box_alloc(const vx_device *d, size_t bytes) {
    box *b = malloc(sizeof(box) + bytes);
    if (!b) return NULL;
    b->magic = MAGIC;
    b->bytes = bytes;
    n_alloc++;
    return (vx_dbuf *)(void *)b;
}

static void box_release(const vx_device *d, vx_dbuf *h) {
    if (!h) return;
    unbox(h);
    ((box *)(void *)h)->magic = 0; /* a use after release is a bad handle */
    free(h);
    n_release++;
}

static void box_upload(const vx_device *d, vx_dbuf *dst, size_t off, const void *src,
                       size_t bytes) {
    CHECK(off + bytes <= ((box *)(void *)dst)->bytes);
    cpu()->upload(cpu(), inner(dst), off, src, bytes);
    n_upload++;
}

static void box_download(const vx_device *d, void *dst, const vx_dbuf *src, size_t off,
                         size_t bytes) {
    CHECK(off + bytes <= ((const box *)(const void *)src)->bytes);
    cpu()->download(cpu(), dst, inner(src), off, bytes);
    n_download++;
}

static void box_copy(const vx_device *d, vx_dbuf *dst, size_t doff, const vx_dbuf *src,
                     size_t soff, size_t bytes) {
    CHECK(doff + bytes <= ((box *)(void *)dst)->bytes);
    CHECK(soff + bytes <= ((const box *)(const void *)src)->bytes);
    cpu()->copy(cpu(), inner(dst), doff, inner(src), soff, bytes);
}

static void box_rope_table(const vx_model *m, vx_dbuf *cs, int n, int hd, int64_t pos0,
                           double theta) {
    cpu()->rope_table(m, inner(cs), n, hd, pos0, theta);
}

static void box_rmsnorm(const vx_model *m, vx_dbuf *out, const vx_dbuf *x, const float *w,
                        const float *scale, int n, int dim, double eps) {
    cpu()->rmsnorm(m, inner(out), inner(x), w, scale, n, dim, eps);
}

static void box_matmul(const vx_model *m, int nw, const vx_weight *const *W, const vx_dbuf *X,
                       int n, vx_dbuf *const *Y, const float *const *bias) {
    vx_dbuf *y[VX_MATMUL_MAX];
    CHECK(nw <= VX_MATMUL_MAX);
    for (int p = 0; p < nw && p < VX_MATMUL_MAX; p++) y[p] = inner(Y[p]);
    cpu()->matmul(m, nw, W, inner(X), n, y, bias);
}

/* kv with its layers' handles as the CPU device's. */
typedef struct {
    vx_kv kv;
    vx_dbuf *k[MAX_LAYERS], *v[MAX_LAYERS];
} kv_view;

static void view_kv(kv_view *o, const vx_kv *kv) {
    o->kv = *kv;
    CHECK(kv->n_layers <= MAX_LAYERS);
    for (int l = 0; l < kv->n_layers && l < MAX_LAYERS; l++) {
        o->k[l] = inner(kv->k[l]);
        o->v[l] = inner(kv->v[l]);
    }
    o->kv.k = o->k;
    o->kv.v = o->v;
    o->kv.dev = cpu();
}

static void box_rope_store(const vx_model *m, const vx_tf_params *p, vx_kv *kv, int layer,
                           vx_dbuf *q, vx_dbuf *k, const vx_dbuf *v, const vx_dbuf *cs, int n,
                           int64_t pos0) {
    kv_view o;
    view_kv(&o, kv);
    cpu()->rope_store(m, p, &o.kv, layer, inner(q), inner(k), inner(v), inner(cs), n, pos0);
}

static size_t box_attention_scratch(const vx_tf_params *p, int n, int64_t pos0) {
    return cpu()->attention_scratch(p, n, pos0);
}

static void box_attention(const vx_model *m, const vx_tf_params *p, const vx_kv *kv, int layer,
                          const vx_dbuf *q, vx_dbuf *att, vx_dbuf *scratch, int n, int64_t pos0) {
    kv_view o;
    view_kv(&o, kv);
    cpu()->attention(m, p, &o.kv, layer, inner(q), inner(att), inner(scratch), n, pos0);
}

static void box_add(const vx_model *m, vx_dbuf *h, const vx_dbuf *x, size_t count) {
    cpu()->add(m, inner(h), inner(x), count);
}

static void box_swiglu(const vx_model *m, vx_dbuf *h1, const vx_dbuf *h3, size_t count) {
    cpu()->swiglu(m, inner(h1), inner(h3), count);
}

static const vx_device boxed = {
    .name = "boxed",
    .alloc = box_alloc,
    .release = box_release,
    .upload = box_upload,
    .download = box_download,
    .copy = box_copy,
    .rope_table = box_rope_table,
    .rmsnorm = box_rmsnorm,
    .matmul = box_matmul,
    .rope_store = box_rope_store,
    .attention_scratch = box_attention_scratch,
    .attention = box_attention,
    .add = box_add,
    .swiglu = box_swiglu,
};

enum { KINDS = 4 };
static const int kinds[KINDS] = {VX_DEBUG_MEL, VX_DEBUG_ENCODER, VX_DEBUG_ADAPTER, VX_DEBUG_LOGITS};

typedef struct {
    float *rows[KINDS];
    int64_t n[KINDS], cols[KINDS];
    vx_stream_stats stats;
} run_t;

/* Feed 3 s of noise, flush, feed 1 s more; keep every capture. */
static run_t run_stream(const vx_device *dev, int kv_f16) {
    run_t r;
    memset(&r, 0, sizeof r);
    tiny_model t;
    tiny_model_init(&t, NULL, 2);
    t.m->dev = dev;
    vx_stream_options opt = {.kv_f32 = !kv_f16};
    vx_stream *s = NULL;
    CHECK(vx_stream_new(t.m, &opt, &s) == VX_OK);
    if (!s) {
        tiny_model_free(&t);
        return r;
    }
    CHECK(vx_stream_debug_enable(s, VX_DEBUG_MEL | VX_DEBUG_ENCODER | VX_DEBUG_ADAPTER |
                                        VX_DEBUG_LOGITS) == VX_OK);
    enum { N = 64000, PIECE = 2300 };
    float *audio = tiny_alloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) audio[i] = 0.3f * (float)(tiny_urand(&t) * 2.0 - 1.0);
    for (int i = 0; i < N; i += PIECE) {
        CHECK(vx_stream_feed(s, audio + i, (size_t)(N - i < PIECE ? N - i : PIECE)) == VX_OK);
        if (i < 48000 && i + PIECE >= 48000) CHECK(vx_stream_flush(s) == VX_OK);
    }
    for (int k = 0; k < KINDS; k++) {
        const float *d = NULL;
        CHECK(vx_stream_debug_get(s, kinds[k], &d, &r.n[k], &r.cols[k]) == VX_OK);
        r.rows[k] = tiny_alloc(sizeof(float) * (size_t)(r.n[k] * r.cols[k]));
        if (r.n[k]) memcpy(r.rows[k], d, sizeof(float) * (size_t)(r.n[k] * r.cols[k]));
    }
    vx_stream_get_stats(s, &r.stats);
    free(audio);
    vx_stream_free(s);
    tiny_model_free(&t);
    return r;
}

static void check_kv(int kv_f16) {
    run_t a = run_stream(vx_device_cpu(), kv_f16);
    n_alloc = n_release = n_upload = n_download = bad_handles = 0;
    run_t b = run_stream(&boxed, kv_f16);
    for (int k = 0; k < KINDS; k++) {
        CHECKF(a.n[k] > 0 && a.n[k] == b.n[k] && a.cols[k] == b.cols[k],
               "kind %d: %lld x %lld rows on the CPU device, %lld x %lld boxed", kinds[k],
               (long long)a.n[k], (long long)a.cols[k], (long long)b.n[k], (long long)b.cols[k]);
        if (a.n[k] == b.n[k] && a.cols[k] == b.cols[k])
            CHECKF(memcmp(a.rows[k], b.rows[k], sizeof(float) * (size_t)(a.n[k] * a.cols[k])) == 0,
                   "kind %d: rows differ between the CPU and the boxed device", kinds[k]);
        free(a.rows[k]);
        free(b.rows[k]);
    }
    /* rows go up once per pass and come back from encoder passes and from
     * decoder passes with logits (not from the prompt's prefill) */
    const long passes = (long)(b.stats.encoder_passes + b.stats.decoder_passes);
    const long back = passes - (long)b.stats.prompt_passes;
    printf("  kv %s: %ld stack passes (%ld prefill), %ld uploads, %ld downloads, %ld buffers\n",
           kv_f16 ? "f16" : "f32", passes, passes - back, n_upload, n_download, n_alloc);
    CHECKF(passes > back && back > 0 && n_upload == passes && n_download == back,
           "%ld stack passes, %ld with rows back; %ld uploads, %ld downloads", passes, back,
           n_upload, n_download);
    CHECKF(n_alloc > 0 && n_alloc == n_release, "%ld buffers allocated, %ld released", n_alloc,
           n_release);
    CHECKF(bad_handles == 0, "%ld uses of a handle that is not a live buffer", bad_handles);
}

/* Logits rows of two streams (delays 480 and 160 ms) fed 2 s of noise each
 * and flushed, alone or through a group; out[i] gets stream i's rows. */
static void run_pair(const vx_device *dev, int grouped, float *out[2], int64_t n[2]) {
    tiny_model t;
    tiny_model_init(&t, NULL, 2);
    t.m->dev = dev;
    vx_stream *s[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        vx_stream_options opt = {.delay_ms = i ? 160 : 480};
        CHECK(vx_stream_new(t.m, &opt, &s[i]) == VX_OK);
        if (s[i]) CHECK(vx_stream_debug_enable(s[i], VX_DEBUG_LOGITS) == VX_OK);
    }
    vx_group *g = NULL;
    CHECK(vx_group_new(t.m, &g) == VX_OK);
    enum { N = 32000, PIECE = 1900 };
    float *audio = tiny_alloc(sizeof(float) * N * 2);
    for (int i = 0; i < 2 * N; i++) audio[i] = 0.3f * (float)(tiny_urand(&t) * 2.0 - 1.0);
    for (int i = 0; s[0] && s[1] && g && i < N; i += PIECE) {
        const size_t k = (size_t)(N - i < PIECE ? N - i : PIECE);
        const float *pcm[2] = {audio + i, audio + N + i};
        const size_t nn[2] = {k, k};
        const int fl[2] = {i + PIECE >= N, i + PIECE >= N};
        if (grouped) {
            CHECK(vx_group_feed(g, s, pcm, nn, fl, NULL, 2, NULL) == VX_OK);
        } else {
            for (int j = 0; j < 2; j++) {
                CHECK(vx_stream_feed(s[j], pcm[j], k) == VX_OK);
                if (fl[j]) CHECK(vx_stream_flush(s[j]) == VX_OK);
            }
        }
    }
    for (int j = 0; j < 2; j++) {
        const float *d = NULL;
        int64_t cols = 0;
        n[j] = 0;
        out[j] = NULL;
        if (!s[j] || vx_stream_debug_get(s[j], VX_DEBUG_LOGITS, &d, &n[j], &cols) != VX_OK)
            continue;
        n[j] *= cols;
        out[j] = tiny_alloc(sizeof(float) * (size_t)n[j]);
        if (n[j]) memcpy(out[j], d, sizeof(float) * (size_t)n[j]);
        vx_stream_free(s[j]);
    }
    vx_group_free(g);
    free(audio);
    tiny_model_free(&t);
}

/* A device that is not host_visible cannot stack streams' rows: a group
 * runs their passes one by one there, with the same results. */
static void check_group(void) {
    float *a[2], *b[2];
    int64_t na[2], nb[2];
    run_pair(vx_device_cpu(), 0, a, na);
    n_alloc = n_release = bad_handles = 0;
    run_pair(&boxed, 1, b, nb);
    for (int j = 0; j < 2; j++) {
        CHECKF(na[j] > 0 && na[j] == nb[j], "stream %d: %lld logits alone, %lld grouped", j,
               (long long)na[j], (long long)nb[j]);
        if (na[j] == nb[j])
            CHECKF(memcmp(a[j], b[j], sizeof(float) * (size_t)na[j]) == 0,
                   "stream %d: grouped logits on the boxed device differ", j);
        free(a[j]);
        free(b[j]);
    }
    CHECKF(n_alloc == n_release && bad_handles == 0, "%ld buffers, %ld released, %ld bad handles",
           n_alloc, n_release, bad_handles);
}

int main(void) {
    check_kv(1);
    check_kv(0);
    check_group();
    return check_report("test_device");
}
