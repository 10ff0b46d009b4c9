/* bench_group.c - decoder steps of N streams stacked in one pass
 * (vx_decoder_pass_segs, what vx_group_feed runs), for N = 1, 2, 4, 8: the
 * aggregate decoder positions per second, beside this machine's roofs for a
 * pass of N rows measured in the same run:
 *   bandwidth roof = N / (bytes read per pass / read bandwidth), the bytes
 *                    being the decoder's weights and output head (read once
 *                    for all N rows) plus each stream's KV cache;
 *   compute roof   = N / (time of the pass's arithmetic at the peaks): 2
 *                    operations per weight and row at the int8 dot-product
 *                    peak for Q8/Q4 weights (vx_measure_int8_peak; the FMA
 *                    peak for float weights), plus attention at the FMA
 *                    peak. The FMA-only roof is printed beside it.
 * Each stream has its own cache (a short prefix) and ada-norm scales, and its
 * one row per pass asks for logits, as a streaming step does. The counts are
 * taken in rounds that alternate their order (1,2,4,8 then 8,4,2,1 ...), so
 * a slow spell of a shared machine shows as spread, not as a trend; the
 * median, min and max of the rounds are printed, and the share of the
 * threads' time this process got (its CPU time / wall time / threads): on a
 * machine busy with other work, pos/s falls with it.
 * The read bandwidth is also measured between every two counts' passes
 * (256 MiB, best of 2), so each count's passes in a round lie between two
 * readings, and its pos/s there is set against the lower roof at the
 * higher of the two: on a VM whose memory bandwidth moves between spells
 * (here 26-36 GB/s, at times 50-63) within a second, a reading a round
 * away can belong to another spell than the passes, and where the spell
 * changed between the two readings the higher one does not overstate the
 * share. The "unsteady" column counts the rounds whose two readings
 * differed by more than a fifth. The "of lower" column is the median of
 * the rounds' shares (min..max); the bandwidth printed is the median (min..
 * max) of the readings used, and the bandwidth roof is at that median.
 * A second table says where those passes' time went, on the CPU device
 * (a GPU's operations return before they finish): each of the device's
 * layer operations is timed, the matrices by kind with the rate at which
 * their weights were read (rest: what runs outside the device's layer
 * operations: the RoPE table, copies in and out).
 *
 * Build (from the repository root):
 *   cmake -S native -B build/bench -DVX_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release
 *   cmake --build build/bench -j2 --target voxd_engine_static
 *   gcc -O2 -Inative/src -Inative/include native/bench/bench_group.c \
 *       build/bench/libvoxd_engine_static.a -lm -lpthread -o build/bench/bench_group
 *   build/bench/bench_group MODEL_DIR [threads [passes [rounds [backend]]]]
 * (backend: a CPU backend's name, as voxd bench's --backend; default the best)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device.h"
#include "quant.h"
#include "stages.h"
#include "voxd_bench.h"

#define MAX_N 8
#define PREFIX 4 /* positions each stream's cache holds before the timed steps */

static const int counts[] = {1, 2, 4, 8};
#define N_COUNTS 4

static double clock_ms(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e3 + 1e-6 * (double)ts.tv_nsec;
}

static double now_ms(void) { return clock_ms(CLOCK_MONOTONIC); }
static double cpu_ms(void) { return clock_ms(CLOCK_PROCESS_CPUTIME_ID); }

static void *xalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static float *rows(size_t n, uint32_t seed) {
    float *p = xalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    return p;
}

static double weight_bytes(const vx_weight *w) {
    return (double)vx_row_bytes(w->dtype, w->cols) * (double)w->rows;
}

/* Bytes of weights one decoder pass reads, and its matrix operations per
 * row: *int8_row for Q8/Q4 weights (int8 dot products), *flops_row for the
 * float ones. */
static void add_cost(const vx_weight *w, double *bytes, double *flops_row, double *int8_row) {
    *bytes += weight_bytes(w);
    const double ops = 2.0 * (double)w->rows * (double)w->cols;
    if (vx_dt_is_block(w->dtype)) *int8_row += ops;
    else *flops_row += ops;
}

static void pass_cost(const vx_model *m, double *bytes, double *flops_row, double *int8_row) {
    *bytes = *flops_row = *int8_row = 0;
    add_cost(&m->tok_emb, bytes, flops_row, int8_row);
    for (int l = 0; l < m->p.dec.n_layers; l++) {
        const vx_layer *L = &m->dec_layers[l];
        const vx_weight *w[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
        for (int i = 0; i < 7; i++) add_cost(w[i], bytes, flops_row, int8_row);
    }
}

typedef struct {
    int n;
    float **ada[MAX_N];
    vx_kv kv[MAX_N];
    int64_t pos;
    vx_scratch s;
    float *x, *logits;
} group_t;

static int group_init(const vx_model *m, group_t *g, int n) {
    memset(g, 0, sizeof *g);
    g->n = n;
    const int kvd = m->p.dec.n_kv_heads * m->p.dec.head_dim;
    for (int i = 0; i < n; i++) {
        if (!(g->ada[i] = vx_decoder_ada_new(m, 6 + i)) ||
            vx_kv_init(&g->kv[i], m->dev, m->p.dec.n_layers, kvd,
                       (int64_t)m->p.dec.window + VX_DEC_BATCH, 1) != 0)
            return -1;
    }
    g->x = rows((size_t)n * PREFIX * m->p.dec.dim, 4);
    g->logits = xalloc(sizeof(float) * (size_t)n * (size_t)m->p.vocab_size);
    vx_stack_seg seg[MAX_N];
    for (int i = 0; i < n; i++) seg[i] = (vx_stack_seg){g->ada[i], &g->kv[i], PREFIX, 0};
    if (vx_decoder_pass_segs(m, seg, n, &g->s, g->x, 0, NULL) != 0) return -1;
    g->pos = PREFIX;
    return 0;
}

static void group_free(const vx_model *m, group_t *g) {
    for (int i = 0; i < g->n; i++) {
        vx_decoder_ada_free(m, g->ada[i]);
        vx_kv_free(&g->kv[i]);
    }
    vx_scratch_free(&g->s);
    free(g->x);
    free(g->logits);
}

/* passes stacked steps (one row per stream, logits for each); ms per pass. */
static double group_steps(const vx_model *m, group_t *g, int passes) {
    vx_stack_seg seg[MAX_N];
    const double t0 = now_ms();
    for (int r = 0; r < passes; r++, g->pos++) {
        for (int i = 0; i < g->n; i++) seg[i] = (vx_stack_seg){g->ada[i], &g->kv[i], 1, g->pos};
        if (vx_decoder_pass_segs(m, seg, g->n, &g->s, g->x, g->n, g->logits) != 0) return -1;
    }
    return (now_ms() - t0) / passes;
}

/* The read bandwidth between two counts' passes: 256 MiB (far past the last
 * level cache), best of 2, short enough to sit close to the passes. */
static double read_bandwidth(int n_threads) {
    return vx_measure_read_bandwidth((size_t)256 << 20, n_threads, 2);
}

/* ---- where a pass's time goes: the model's device, each layer operation
 * timed around the real device's function. A device's functions take no
 * context, so the clock is this file's one piece of state. */
enum { PH_QKV, PH_WO, PH_W13, PH_W2, PH_HEAD, PH_NORM, PH_ROPE, PH_ATT, PH_SWIGLU, PH_ADD, PH_COUNT };
static const char *const phase_names[PH_COUNT] = {"qkv",   "wo",      "w1+w3",     "w2",     "head",
                                                  "norms", "rope+kv", "attention", "swiglu", "adds"};

typedef struct {
    const vx_device *real;
    double ms[PH_COUNT], bytes[PH_COUNT]; /* since the last reset */
} phase_clock;
static phase_clock phases;

static void phase_add(int ph, double t0) { phases.ms[ph] += now_ms() - t0; }

static void timed_matmul(const vx_model *m, int nw, const vx_weight *const *W, const vx_dbuf *X,
                         int n, vx_dbuf *const *Y, const float *const *bias) {
    const double t0 = now_ms();
    phases.real->matmul(m, nw, W, X, n, Y, bias);
    /* the stack's calls: q/k/v together, w1 with w3, then wo or w2 (w2
     * reads the hidden width); the head is the token embedding */
    int ph = PH_WO;
    if (nw == 3) ph = PH_QKV;
    else if (nw == 2) ph = PH_W13;
    else if (W[0] == &m->tok_emb) ph = PH_HEAD;
    else if (W[0]->cols == m->p.dec.hidden_dim) ph = PH_W2;
    phase_add(ph, t0);
    for (int p = 0; p < nw; p++) phases.bytes[ph] += weight_bytes(W[p]);
}

static void timed_rmsnorm(const vx_model *m, vx_dbuf *out, const vx_dbuf *x, const float *w,
                          const float *scale, int n, int dim, double eps) {
    const double t0 = now_ms();
    phases.real->rmsnorm(m, out, x, w, scale, n, dim, eps);
    phase_add(PH_NORM, t0);
}

static void timed_rope_store(const vx_model *m, const vx_tf_params *p, vx_kv *kv, int layer,
                             vx_dbuf *q, vx_dbuf *k, const vx_dbuf *v, const vx_dbuf *cs, int n,
                             int64_t pos0) {
    const double t0 = now_ms();
    phases.real->rope_store(m, p, kv, layer, q, k, v, cs, n, pos0);
    phase_add(PH_ROPE, t0);
}

static void timed_attention(const vx_model *m, const vx_tf_params *p, const vx_kv *kv, int layer,
                            const vx_dbuf *q, vx_dbuf *att, vx_dbuf *scratch, int n,
                            int64_t pos0) {
    const double t0 = now_ms();
    phases.real->attention(m, p, kv, layer, q, att, scratch, n, pos0);
    phase_add(PH_ATT, t0);
}

static void timed_add(const vx_model *m, vx_dbuf *h, const vx_dbuf *x, size_t count) {
    const double t0 = now_ms();
    phases.real->add(m, h, x, count);
    phase_add(PH_ADD, t0);
}

static void timed_swiglu(const vx_model *m, vx_dbuf *h1, const vx_dbuf *h3, size_t count) {
    const double t0 = now_ms();
    phases.real->swiglu(m, h1, h3, count);
    phase_add(PH_SWIGLU, t0);
}

/* *timed: m's device with its layer operations timed; m runs on it from
 * here. Call it before any stream buffer is made: a scratch or KV cache
 * keeps the device it was made for and refuses another (transformer.c). */
static void time_phases(vx_model *m, vx_device *timed) {
    phases.real = m->dev;
    *timed = *m->dev;
    timed->matmul = timed_matmul;
    timed->rmsnorm = timed_rmsnorm;
    timed->rope_store = timed_rope_store;
    timed->attention = timed_attention;
    timed->add = timed_add;
    timed->swiglu = timed_swiglu;
    m->dev = timed;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* v's n values sorted into out; returns their median. */
static double sort_median(const double *v, int n, double *out) {
    memcpy(out, v, sizeof(double) * (size_t)n);
    qsort(out, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? out[n / 2] : 0.5 * (out[n / 2 - 1] + out[n / 2]);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [threads [passes [rounds [backend]]]]\n", argv[0]);
        return 2;
    }
    vx_model_options opt = {.n_threads = argc > 2 ? atoi(argv[2]) : 0,
                            .backend = argc > 5 ? argv[5] : NULL};
    const int passes = argc > 3 && atoi(argv[3]) > 0 ? atoi(argv[3]) : 3;
    const int rounds = argc > 4 && atoi(argv[4]) > 0 ? atoi(argv[4]) : 4;
    char err[1024];
    vx_model *m = NULL;
    vx_status st = vx_model_load(argv[1], &opt, &m, err, sizeof err);
    if (st != VX_OK) {
        fprintf(stderr, "%s: %s\n", vx_status_name(st), err);
        return 2;
    }
    vx_model_info info;
    vx_model_get_info(m, &info);
    double wbytes, flops_row, int8_row;
    pass_cost(m, &wbytes, &flops_row, &int8_row);
    const double bw0 = vx_measure_read_bandwidth((size_t)1 << 30, info.n_threads, 3);
    const double peak0 = vx_measure_fma_peak(info.n_threads);
    const double ipeak0 = vx_measure_int8_peak(info.n_threads);
    printf("backend %s, %d thread(s), %d passes x %d rounds per count\n", info.backend,
           info.n_threads, passes, rounds);
    printf("decoder weights + head %.3f GB per pass, %.2f GFLOP (float) + %.2f GOP (int8) per row\n",
           wbytes / 1e9, flops_row / 1e9, int8_row / 1e9);

    vx_device timed;
    const int timing = m->dev->host_visible; /* the CPU device */
    if (timing) time_phases(m, &timed);
    double ph_ms[N_COUNTS][PH_COUNT] = {{0}}, ph_bytes[N_COUNTS][PH_COUNT] = {{0}};

    group_t g[N_COUNTS];
    for (int c = 0; c < N_COUNTS; c++)
        if (group_init(m, &g[c], counts[c]) != 0) {
            fprintf(stderr, "out of memory for %d streams\n", counts[c]);
            return 2;
        }
    double ms[N_COUNTS][64], cpu[N_COUNTS] = {0}, wall[N_COUNTS] = {0}, bw_at[N_COUNTS][64];
    int unsteady[N_COUNTS] = {0};
    for (int c = 0; c < N_COUNTS; c++) group_steps(m, &g[c], 1); /* warm-up: pages in */
    double bw_before = read_bandwidth(info.n_threads);
    for (int r = 0; r < rounds && r < 64; r++)
        for (int k = 0; k < N_COUNTS; k++) {
            const int c = r % 2 ? N_COUNTS - 1 - k : k;
            memset(phases.ms, 0, sizeof phases.ms);
            memset(phases.bytes, 0, sizeof phases.bytes);
            const double w0 = now_ms(), c0 = cpu_ms();
            ms[c][r] = group_steps(m, &g[c], passes);
            cpu[c] += cpu_ms() - c0;
            wall[c] += now_ms() - w0;
            for (int ph = 0; ph < PH_COUNT; ph++) {
                ph_ms[c][ph] += phases.ms[ph];
                ph_bytes[c][ph] += phases.bytes[ph];
            }
            const double bw_after = read_bandwidth(info.n_threads);
            const double lo = bw_before < bw_after ? bw_before : bw_after;
            bw_at[c][r] = bw_before < bw_after ? bw_after : bw_before;
            if (bw_at[c][r] > 1.2 * lo) unsteady[c]++;
            bw_before = bw_after;
        }
    const double bw1 = vx_measure_read_bandwidth((size_t)1 << 30, info.n_threads, 3);
    const double peak1 = vx_measure_fma_peak(info.n_threads);
    const double ipeak1 = vx_measure_int8_peak(info.n_threads);
    const int nr = rounds < 64 ? rounds : 64;
    const double peak = peak0 > peak1 ? peak0 : peak1;
    /* no int8 instructions: the kernels' integer work runs at about the FMA rate */
    const double ipeak = ipeak0 > 0 || ipeak1 > 0 ? (ipeak0 > ipeak1 ? ipeak0 : ipeak1) : peak;
    printf("read bandwidth %.2f / %.2f GB/s (start / end); FMA peak %.1f / %.1f GFLOP/s, "
           "int8 peak %.1f / %.1f GOP/s\n",
           bw0, bw1, peak0, peak1, ipeak0, ipeak1);
    printf("streams  ms/pass (min..max)       pos/s  GB/s (min..max)  bw roof  compute roof (fma only)"
           "  of lower (min..max)  unsteady  cpu share\n");
    const int kvd = m->p.dec.n_kv_heads * m->p.dec.head_dim, nl = m->p.dec.n_layers;
    const int heads = m->p.dec.n_heads, hd = m->p.dec.head_dim;
    for (int c = 0; c < N_COUNTS; c++) {
        const int n = counts[c];
        double sorted[64], bw_sorted[64], shares[64], share_sorted[64];
        const double med = sort_median(ms[c], nr, sorted);
        const double bw = sort_median(bw_at[c], nr, bw_sorted);
        const double keys = (double)g[c].pos; /* about the cache length during the steps */
        const double bytes = wbytes + (double)n * nl * 2.0 * keys * kvd * 2.0;
        const double flops = (double)n * (flops_row + nl * 4.0 * heads * hd * keys);
        const double iops = (double)n * int8_row;
        const double pos_s = n * 1e3 / med;
        const double compute_roof = n / (flops / (peak * 1e9) + iops / (ipeak * 1e9));
        const double fma_roof = n / ((flops + iops) / (peak * 1e9));
        for (int r = 0; r < nr; r++) { /* each round against the roof at its own readings */
            const double roof = n / (bytes / (bw_at[c][r] * 1e9));
            shares[r] = n * 1e3 / ms[c][r] / (roof < compute_roof ? roof : compute_roof);
        }
        const double share = sort_median(shares, nr, share_sorted);
        printf("%7d  %7.1f (%6.1f..%6.1f) %7.2f  %4.1f (%4.1f..%4.1f) %8.2f %12.2f (%7.2f)  %4.0f%% "
               "(%3.0f..%3.0f%%)  %5d/%-2d  %8.0f%%\n",
               n, med, sorted[0], sorted[nr - 1], pos_s, bw, bw_sorted[0], bw_sorted[nr - 1],
               n / (bytes / (bw * 1e9)), compute_roof, fma_roof, 100.0 * share,
               100.0 * share_sorted[0], 100.0 * share_sorted[nr - 1], unsteady[c], nr,
               100.0 * cpu[c] / (wall[c] * info.n_threads));
    }
    if (timing) {
        printf("where the passes' time went, ms per pass (the matrices: GB/s of weights read)\n");
        printf("streams");
        for (int ph = 0; ph < PH_COUNT; ph++) printf(ph <= PH_HEAD ? " %13s" : " %9s", phase_names[ph]);
        printf(" %7s\n", "rest");
        for (int c = 0; c < N_COUNTS; c++) {
            const double n_passes = (double)nr * passes;
            double sum = 0, total = 0;
            for (int r = 0; r < nr; r++) total += ms[c][r] / nr;
            printf("%7d", counts[c]);
            for (int ph = 0; ph < PH_COUNT; ph++) {
                sum += ph_ms[c][ph] / n_passes;
                if (ph <= PH_HEAD)
                    printf(" %6.2f (%4.1f)", ph_ms[c][ph] / n_passes,
                           ph_bytes[c][ph] / (ph_ms[c][ph] * 1e6));
                else printf(" %9.2f", ph_ms[c][ph] / n_passes);
            }
            printf(" %7.2f\n", total - sum);
        }
        m->dev = phases.real;
    }
    for (int c = 0; c < N_COUNTS; c++) group_free(m, &g[c]);
    vx_model_free(m);
    return 0;
}
