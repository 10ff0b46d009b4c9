/* test_attention.c - the attention kernels of every backend compiled in and
 * usable here (engine.h: attn_scores / attn_values), on fp16 and float32
 * cache rows and head sizes with and without a tail past the last 8:
 *
 *  - accuracy against a double-precision sum over the exact (widened) rows:
 *    |got - ref| <= 1e-5 * sum |terms| per output;
 *  - the seam's determinism: a query gives bitwise the same scores and
 *    outputs alone or inside a tile of any size, and a run of keys split in
 *    two (the rolling cache wrapping) gives bitwise what one run gives;
 *  - values accumulate onto what the output already holds. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine.h"
#include "quant.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static double urand(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}
static float nrand(void) { return (float)((urand() + urand() + urand() + urand() - 2.0) * 1.73); }

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* nk rows of ld elements (head at offset 0, hd used), fp16 or float. */
typedef struct {
    int f16, hd;
    int64_t nk;
    size_t ld;
    void *data;
} rows_t;

static rows_t make_rows(int f16, int64_t nk, int hd, size_t ld) {
    rows_t r = {f16, hd, nk, ld, xcalloc((size_t)nk * ld, f16 ? 2 : 4)};
    for (size_t i = 0; i < (size_t)nk * ld; i++) {
        float v = nrand();
        if (f16) ((uint16_t *)r.data)[i] = vx_f32_to_f16(v);
        else ((float *)r.data)[i] = v;
    }
    return r;
}

static double elem(const rows_t *r, int64_t t, int c) {
    size_t i = (size_t)t * r->ld + (size_t)c;
    return r->f16 ? vx_f16_to_f32(((const uint16_t *)r->data)[i]) : ((const float *)r->data)[i];
}

static const void *row_ptr(const rows_t *r, int64_t t) {
    return (const uint8_t *)r->data + (size_t)t * r->ld * (r->f16 ? 2 : 4);
}

static void check_backend(const vx_backend *be, int f16, int hd, int64_t nk, int nq) {
    const size_t ld = (size_t)hd * 3 + 5; /* rows of a wider cache: the head is a slice */
    rows_t K = make_rows(f16, nk, hd, ld), V = make_rows(f16, nk, hd, ld);
    float *qs = xcalloc((size_t)nq * hd, sizeof(float));
    for (int i = 0; i < nq * hd; i++) qs[i] = nrand();
    const float *q[64];
    float *o[64], *o1[1];
    for (int i = 0; i < nq; i++) q[i] = qs + (size_t)i * hd;
    float *S = xcalloc((size_t)nq * nk, sizeof(float));
    float *S1 = xcalloc((size_t)nk, sizeof(float));
    float *P = xcalloc((size_t)nq * nk, sizeof(float));
    float *os = xcalloc((size_t)nq * hd, sizeof(float));
    float *one = xcalloc((size_t)hd, sizeof(float));

    /* scores: accuracy, then the same bits alone and with the run split */
    be->attn_scores(q, nq, K.data, f16, ld, nk, hd, S, (size_t)nk);
    int bad = 0;
    for (int i = 0; i < nq; i++)
        for (int64_t t = 0; t < nk; t++) {
            double ref = 0, mag = 0;
            for (int c = 0; c < hd; c++) {
                ref += (double)q[i][c] * elem(&K, t, c);
                mag += fabs((double)q[i][c] * elem(&K, t, c));
            }
            if (fabs(S[(size_t)i * nk + t] - ref) > 1e-5 * mag + 1e-30) bad++;
        }
    CHECKF(bad == 0, "%s scores f16=%d hd=%d nk=%lld nq=%d: %d outputs off", be->name, f16, hd,
          (long long)nk, nq, bad);
    int64_t cut = nk / 3;
    for (int i = 0; i < nq; i++) {
        be->attn_scores(q + i, 1, K.data, f16, ld, cut, hd, S1, (size_t)nk);
        be->attn_scores(q + i, 1, row_ptr(&K, cut), f16, ld, nk - cut, hd, S1 + cut, (size_t)nk);
        CHECKF(memcmp(S1, S + (size_t)i * nk, sizeof(float) * (size_t)nk) == 0,
              "%s scores f16=%d hd=%d: query %d alone / split differs from the tile", be->name,
              f16, hd, i);
    }

    /* values: weights from a softmax-like row with exact zeros at both ends */
    for (int i = 0; i < nq; i++)
        for (int64_t t = 0; t < nk; t++)
            P[(size_t)i * nk + t] = (t < i || t >= nk - i) ? 0.0f : (float)urand();
    for (int i = 0; i < nq; i++) {
        o[i] = os + (size_t)i * hd;
        for (int c = 0; c < hd; c++) o[i][c] = 0.25f * (float)c; /* accumulated onto */
    }
    be->attn_values(P, (size_t)nk, nq, V.data, f16, ld, nk, hd, o);
    bad = 0;
    for (int i = 0; i < nq; i++)
        for (int c = 0; c < hd; c++) {
            double ref = 0.25 * c, mag = fabs(ref);
            for (int64_t t = 0; t < nk; t++) {
                ref += (double)P[(size_t)i * nk + t] * elem(&V, t, c);
                mag += fabs((double)P[(size_t)i * nk + t] * elem(&V, t, c));
            }
            if (fabs(o[i][c] - ref) > 1e-5 * mag + 1e-30) bad++;
        }
    CHECKF(bad == 0, "%s values f16=%d hd=%d nk=%lld nq=%d: %d outputs off", be->name, f16, hd,
          (long long)nk, nq, bad);
    for (int i = 0; i < nq; i++) {
        for (int c = 0; c < hd; c++) one[c] = 0.25f * (float)c;
        o1[0] = one;
        const float *Pi = P + (size_t)i * nk;
        be->attn_values(Pi, (size_t)nk, 1, V.data, f16, ld, cut, hd, o1);
        be->attn_values(Pi + cut, (size_t)nk, 1, row_ptr(&V, cut), f16, ld, nk - cut, hd, o1);
        CHECKF(memcmp(one, o[i], sizeof(float) * (size_t)hd) == 0,
              "%s values f16=%d hd=%d: query %d alone / split differs from the tile", be->name,
              f16, hd, i);
    }

    free(K.data);
    free(V.data);
    free(qs);
    free(S);
    free(S1);
    free(P);
    free(os);
    free(one);
}

int main(void) {
    const vx_backend *backends[3] = {vx_backend_portable(), vx_backend_avx2(), vx_backend_neon()};
    const int hds[] = {8, 12, 16, 20, 24, 64, 128};
    const int64_t nks[] = {1, 2, 7, 48, 751};
    const int nqs[] = {1, 3, 4, 9, 16};
    for (int b = 0; b < 3; b++) {
        const vx_backend *be = backends[b];
        if (!be) {
            printf("backend %s: not available here, skipped\n", b == 1 ? "avx2" : "neon");
            continue;
        }
        int before = failures;
        for (int f16 = 0; f16 < 2; f16++)
            for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++)
                for (size_t k = 0; k < sizeof nks / sizeof nks[0]; k++)
                    for (size_t n = 0; n < sizeof nqs / sizeof nqs[0]; n++)
                        check_backend(be, f16, hds[h], nks[k], nqs[n]);
        printf("backend %s: %s\n", be->name, failures == before ? "ok" : "FAILED");
    }
    return check_report("test_attention");
}
