/* bench_stages.c - the model's stages timed on their own, without a stream
 * (stages.h): an encoder pass over a batch of positions and decoder passes
 * of one position (the streaming step, with logits) and of a prompt batch
 * (prefill, no logits), on a model directory and its default backend.
 * Inputs are fixed pseudo-random rows: the timing does not depend on them.
 *
 * Build (from the repository root):
 *   cmake -S native -B build/bench -DVX_BUILD_TESTS=ON && cmake --build build/bench
 *   gcc -O2 -Inative/src -Inative/include native/bench/bench_stages.c \
 *       build/bench/libvoxd_engine_static.a -lm -lpthread -o build/bench/bench_stages
 *   build/bench/bench_stages MODEL_DIR [threads [reps]]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stages.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + 1e-6 * (double)ts.tv_nsec;
}

static float *rows(size_t n, uint32_t seed) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    return p;
}

/* reps encoder passes of n_pos positions each; ms per pass. */
static double bench_encoder(const vx_model *m, int n_pos, int reps) {
    vx_enc_state es;
    vx_scratch s;
    memset(&s, 0, sizeof s);
    if (vx_enc_state_init(&es, m, 1) != 0) return -1;
    float *mel = rows((size_t)n_pos * VX_POS_FRAMES * m->p.n_mels, 1);
    float *enc = rows((size_t)n_pos * VX_POS_ENC_FRAMES * m->p.enc.dim, 2);
    float *out = rows((size_t)n_pos * m->p.dec.dim, 3);
    double t = -1;
    if (vx_encoder_pass(m, &es, &s, mel, n_pos, enc, out) >= 0) { /* warm-up */
        const double t0 = now_ms();
        int r = 0;
        while (r < reps && vx_encoder_pass(m, &es, &s, mel, n_pos, enc, out) >= 0) r++;
        if (r == reps) t = (now_ms() - t0) / reps;
    }
    free(mel);
    free(enc);
    free(out);
    vx_scratch_free(&s);
    vx_enc_state_free(&es);
    return t;
}

/* reps decoder passes of n rows (logits when with_logits) after a prefix of
 * `prefix` positions; ms per pass. */
static double bench_decoder(const vx_model *m, int n, int with_logits, int64_t prefix, int reps) {
    const int dim = m->p.dec.dim;
    float **ada = vx_decoder_ada_new(m, 6);
    vx_kv kv;
    vx_scratch s;
    memset(&s, 0, sizeof s);
    const int kvd = m->p.dec.n_kv_heads * m->p.dec.head_dim;
    if (!ada ||
        vx_kv_init(&kv, m->dev, m->p.dec.n_layers, kvd, (int64_t)m->p.dec.window + VX_DEC_BATCH,
                   1) != 0)
        return -1;
    float *x = rows((size_t)VX_DEC_BATCH * dim, 4);
    float *logits = with_logits ? rows((size_t)n * m->p.vocab_size, 5) : NULL;
    double t = -1;
    int ok = 1;
    for (int64_t p = 0; ok && p < prefix; p += VX_DEC_BATCH) {
        const int k = prefix - p < VX_DEC_BATCH ? (int)(prefix - p) : VX_DEC_BATCH;
        ok = vx_decoder_pass(m, ada, &kv, &s, x, k, p, NULL) == 0;
    }
    if (ok) {
        const double t0 = now_ms();
        int r = 0;
        while (r < reps &&
               vx_decoder_pass(m, ada, &kv, &s, x, n, prefix + (int64_t)r * n, logits) == 0)
            r++;
        if (r == reps) t = (now_ms() - t0) / reps;
    }
    free(x);
    free(logits);
    vx_scratch_free(&s);
    vx_kv_free(&kv);
    vx_decoder_ada_free(m, ada);
    return t;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [threads [reps]]\n", argv[0]);
        return 2;
    }
    vx_model_options opt = {.n_threads = argc > 2 ? atoi(argv[2]) : 0};
    const int reps = argc > 3 && atoi(argv[3]) > 0 ? atoi(argv[3]) : 10;
    char err[1024];
    vx_model *m = NULL;
    vx_status st = vx_model_load(argv[1], &opt, &m, err, sizeof err);
    if (st != VX_OK) {
        fprintf(stderr, "%s: %s\n", vx_status_name(st), err);
        return 2;
    }
    vx_model_info info;
    vx_model_get_info(m, &info);
    printf("backend %s, %d thread(s), %d reps\n", info.backend, info.n_threads, reps);
    printf("encoder pass, 16 positions (64 frames): %8.3f ms\n", bench_encoder(m, 16, reps));
    printf("encoder pass,  1 position   (4 frames): %8.3f ms\n", bench_encoder(m, 1, reps));
    printf("decoder step, 1 position + logits:      %8.3f ms\n", bench_decoder(m, 1, 1, 40, reps));
    printf("decoder prefill, 32 positions:          %8.3f ms\n", bench_decoder(m, 32, 0, 0, reps));
    vx_model_free(m);
    return 0;
}
