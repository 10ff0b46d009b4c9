/* bench_kernels.c - throughput of the matmul backends against this machine's
 * limits (not part of the build; the numbers go into the kernel notes).
 *
 *   FMA peak   : vx_measure_fma_peak (membw.c), 1 and 2 threads (and, in
 *                "ab", the int8 dot-product peak, vx_measure_int8_peak)
 *   memory     : vx_measure_read_bandwidth over 1 GiB, 1 and 2 threads
 *   matmul     : W [5120 x 1280] x 64 input rows (encoder FFN shape), GFLOP/s
 *   matvec     : W [9216 x 3072] x 1 row (decoder FFN shape), GB/s of weights
 *                (Q8 / Q4 also x 2, 4, 8 rows: decoder steps of several streams,
 *                with the time against n = 1); several copies are cycled so
 *                the working set exceeds the L3.
 *
 * Build (x86-64, from the repository root):
 *   cmake -S native -B build/bench -G Ninja -DVX_BUILD_TESTS=ON && ninja -C build/bench
 *   gcc -O2 -mavx2 -mfma -Inative/src -Inative/include native/bench/bench_kernels.c \
 *       build/bench/libvoxd_engine_static.a -lm -lpthread -o build/bench/bench_kernels
 *   build/bench/bench_kernels [backend [dtypes]]
 *   build/bench/bench_kernels ab [A B [threads [rounds]]]   (see run_ab)
 *   build/bench/bench_kernels step [backend [rounds]]     (see run_step)
 * dtypes: a comma-separated subset (e.g. Q8,Q4) to time only those, which
 * also skips the FMA-peak measurement unless it names "peak" (Q8,Q4,peak).
 * backend "avx2" takes the best x86 int8 dot product (VNNI where present),
 * "avx2-plain" vpmaddubsw: alternate them for an A/B of the Q8/Q4 kernels.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "engine.h"
#include "quant.h"
#include "voxd_bench.h"


static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xmalloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 1) != 0) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

static double cpu_mhz(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0;
    char line[256];
    double mhz = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "cpu MHz", 7) == 0) {
            const char *c = strchr(line, ':');
            if (c) mhz = atof(c + 1);
            break;
        }
    fclose(f);
    return mhz;
}

/* ---- matmul through the engine's own threaded vx_matmul */

static void fill_weight(vx_weight *w, int dt, int64_t rows, int64_t cols, unsigned seed) {
    size_t rb = vx_row_bytes(dt, cols);
    uint8_t *data = xmalloc(rb * (size_t)rows);
    float *src = xmalloc(sizeof(float) * (size_t)cols);
    uint32_t s = seed * 2654435761u + 1;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            s = s * 1664525u + 1013904223u;
            src[c] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 0.1f;
        }
        uint8_t *row = data + (size_t)r * rb;
        if (dt == VX_DT_Q8) vx_quantize_row_q8(src, cols, row);
        else if (dt == VX_DT_Q4) vx_quantize_row_q4(src, cols, row);
        else if (dt == VX_DT_F32) memcpy(row, src, (size_t)cols * 4);
        else
            for (int64_t c = 0; c < cols; c++) {
                uint32_t u;
                memcpy(&u, &src[c], 4);
                uint16_t h = dt == VX_DT_BF16 ? (uint16_t)(u >> 16) : vx_f32_to_f16(src[c]);
                memcpy(row + c * 2, &h, 2);
            }
    }
    free(src);
    if (dt == VX_DT_Q8 || dt == VX_DT_Q4) { /* row-major blocks -> row groups (quant.h) */
        uint8_t *packed = xmalloc(rb * (size_t)rows);
        vx_q_pack_rows(dt, data, rows, cols, packed);
        free(data);
        data = packed;
    }
    w->dtype = (vx_dtype)dt;
    w->rows = rows;
    w->cols = cols;
    w->data = data;
}

static const char *dt_name(int dt) {
    static const char *const names[] = {"F32", "F16", "BF16", "Q8", "Q4"};
    return dt >= 0 && dt <= 4 ? names[dt] : "?";
}

/* Is dt in the comma-separated list (NULL: every dtype)? */
static int wanted(const char *list, int dt) {
    if (!list) return 1;
    const char *name = dt_name(dt);
    size_t len = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == len && strncasecmp(p, name, len) == 0) return 1;
        p += n + (e != NULL);
    }
    return 0;
}

/* ---- "ab": the Q8/Q4 kernels of two backends, interleaved in one process
 *
 * On a shared machine separate runs see different loads, so one run times,
 * round after round, every candidate once: the FMA peak and the read
 * bandwidth (membw.c), the F32 matmul (the float FMA path), and Q8/Q4 under
 * backend A and backend B; each keeps its best round. The ratios are of
 * those bests: int8 matmul operations (a multiply-add counts 2, like a
 * float FMA lane) over the FMA peak, and the decoder-shape matvec's weight
 * bytes per second over the read bandwidth. */
typedef struct {
    vx_model m;
    const vx_backend *be;
} ab_side;

static double time_matmul(ab_side *sd, const vx_weight *w, int nw, const float *X, int n,
                          float *Y) {
    sd->m.be = sd->be;
    double t0 = now();
    for (int k = 0; k < nw; k++) vx_matmul(&sd->m, &w[k], X, n, Y, NULL);
    return (now() - t0) / nw;
}

static int run_ab(const char *a_name, const char *b_name, int threads, int rounds) {
    char err[256];
    ab_side side[2];
    const char *names[2] = {a_name, b_name};
    for (int k = 0; k < 2; k++) {
        memset(&side[k], 0, sizeof side[k]);
        side[k].be = vx_backend_select(names[k], err, sizeof err);
        if (!side[k].be) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        side[k].m.pool = vx_pool_new(threads);
        side[k].m.n_threads = threads;
        side[k].m.act = vx_actbuf_new(5120);
        if (!side[k].m.pool || !side[k].m.act) return 2;
    }
    printf("A = %s, B = %s, %d thread(s), best of %d interleaved rounds\n", side[0].be->name,
           side[1].be->name, threads, rounds);
    const int n = 64;
    float *X = xmalloc(sizeof(float) * n * 5120), *Y = xmalloc(sizeof(float) * n * 9216);
    for (int i = 0; i < n * 5120; i++) X[i] = (float)((i * 7) % 13) * 0.1f - 0.6f;
    vx_weight f32, enc[2], dec[2][8];
    fill_weight(&f32, VX_DT_F32, 5120, 1280, 1);
    const int dts[2] = {VX_DT_Q8, VX_DT_Q4};
    int copies[2];
    for (int d = 0; d < 2; d++) {
        fill_weight(&enc[d], dts[d], 5120, 1280, 1);
        const size_t bytes = vx_row_bytes(dts[d], 3072) * 9216;
        copies[d] = (int)((200u << 20) / bytes) + 1; /* past the L3 */
        if (copies[d] > 8) copies[d] = 8;
        for (int k = 0; k < copies[d]; k++) fill_weight(&dec[d][k], dts[d], 9216, 3072, (unsigned)k + 2);
    }
    double peak = 0, ipeak = 0, bw = 0, t_f32 = 1e9, t_enc[2][2], t_dec[2][2];
    for (int d = 0; d < 2; d++)
        for (int k = 0; k < 2; k++) t_enc[d][k] = t_dec[d][k] = 1e9;
    for (int r = 0; r < rounds; r++) {
        const double p = vx_measure_fma_peak(threads), b = vx_measure_read_bandwidth((size_t)256 << 20, threads, 1);
        const double ip = vx_measure_int8_peak(threads);
        peak = p > peak ? p : peak;
        ipeak = ip > ipeak ? ip : ipeak;
        bw = b > bw ? b : bw;
        double t = time_matmul(&side[0], &f32, 1, X, n, Y);
        t_f32 = t < t_f32 ? t : t_f32;
        for (int d = 0; d < 2; d++)
            for (int k = 0; k < 2; k++) {
                const int sk = (r + k) % 2; /* alternate which side goes first */
                t = time_matmul(&side[sk], &enc[d], 1, X, n, Y);
                t_enc[d][sk] = t < t_enc[d][sk] ? t : t_enc[d][sk];
                t = time_matmul(&side[sk], dec[d], copies[d], X, 1, Y);
                t_dec[d][sk] = t < t_dec[d][sk] ? t : t_dec[d][sk];
            }
    }
    const double ops = 2.0 * 5120 * 1280 * n * 1e-9;
    printf("FMA peak %.1f GFLOP/s, int8 peak %.1f GOP/s, read bandwidth %.1f GB/s, F32 matmul [5120 x 1280] x %d: %.1f GFLOP/s = %.2f x peak\n",
           peak, ipeak, bw, n, ops / t_f32, ops / t_f32 / peak);
    for (int d = 0; d < 2; d++)
        for (int k = 0; k < 2; k++) {
            const double gb = (double)vx_row_bytes(dts[d], 3072) * 9216 * 1e-9;
            printf("%c %-16s %s: encoder matmul %.1f GOP/s = %.2f x FMA peak (%.2f of int8 peak) = %.2f x F32 matmul; "
                   "decoder matvec [9216 x 3072] %.1f GB/s = %.2f of read bandwidth\n",
                   'A' + k, side[k].be->name, dt_name(dts[d]), ops / t_enc[d][k], ops / t_enc[d][k] / peak,
                   ipeak > 0 ? ops / t_enc[d][k] / ipeak : 0.0, t_f32 / t_enc[d][k], gb / t_dec[d][k], gb / t_dec[d][k] / bw);
        }
    return 0;
}

/* ---- the EVEX pair step's instruction bound
 *
 * Per input, block and 16 rows the pair step (x86_q.h, qz_pair) issues 8
 * vpdpbusd, then a vmulps (the weights' scales times the input block's) and
 * a vfmadd231ps (the block's sum into the output). On a Zen 4 core the
 * float multiplies take the same pipes as the zmm vpdpbusd, so these 10
 * instructions, not the 8 dot products alone, are the step's floor once
 * enough inputs hide the rest: ns per input and 16-row block, on one
 * thread, best of 5. Called only for the avx512vnni backend, which is
 * offered only where the CPU has it (0 off x86). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

__attribute__((target("avx512f,avx512vnni"))) static double pair_bound_ns(void) {
    enum { ITERS = 4000000 };
    const __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-5);
    const __m512 g = _mm512_set1_ps(0.999f), h = _mm512_set1_ps(1e-3f);
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        /* chains from distinct values, so the compiler cannot merge them */
        __m512i a[8];
        for (int k = 0; k < 8; k++) a[k] = _mm512_set1_epi32(k + r);
        __m512 f = _mm512_set1_ps((float)r), m = _mm512_set1_ps(1.0f);
        const double t0 = now();
        for (int it = 0; it < ITERS; it++) {
            _Pragma("GCC unroll 8") /* the chains in registers, not in the array */
            for (int k = 0; k < 8; k++) a[k] = _mm512_dpbusd_epi32(a[k], u, v);
            m = _mm512_mul_ps(m, g);
            f = _mm512_fmadd_ps(m, h, f);
        }
        const double t = (now() - t0) / ITERS * 1e9;
        best = t < best ? t : best;
        __m512i sum = a[0];
        for (int k = 1; k < 8; k++) sum = _mm512_add_epi32(sum, a[k]);
        volatile int32_t isink = _mm512_reduce_add_epi32(sum);
        volatile float fsink = _mm512_reduce_add_ps(f);
        (void)isink, (void)fsink;
    }
    return best;
}

#else
static double pair_bound_ns(void) { return 0; }
#endif

/* ---- "step": the Q8/Q4 decoder-step kernels in cache
 *
 * One thread calls the backend's matmul_rows_q on a [128 x 3072] matrix
 * (216 KB as Q4, 408 KB as Q8: in L2 on current cores) with n = 1, 2, 3, 4
 * and 8 inputs, as the stacked decoder step of n streams does per task, so
 * memory stays out of the figure: what is left is the kernel's instruction
 * throughput, against the one-thread int8 peak taken in the same rounds
 * and, with AVX512-VNNI, against the pair step's instruction floor (above).
 * Best of the rounds for each, in ns per 8-row block of 32 columns. */
static int run_step(const char *name, int rounds) {
    char err[256];
    const vx_backend *be = vx_backend_select(name, err, sizeof err);
    if (!be) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    const int64_t rows = 128, cols = 3072, nblk = cols / VX_QBLOCK;
    enum { NS = 5, NMAX = 8, REPS = 400 };
    const int ns[NS] = {1, 2, 3, 4, 8};
    float *src = xmalloc(sizeof(float) * NMAX * cols), *Y = xmalloc(sizeof(float) * NMAX * rows);
    for (int64_t i = 0; i < NMAX * cols; i++) src[i] = (float)((i * 7919) % 255) / 255.0f - 0.5f;
    int8_t *q = xmalloc((size_t)(NMAX * cols));
    float *d = xmalloc(sizeof(float) * NMAX * nblk);
    int32_t *sums = xmalloc(sizeof(int32_t) * NMAX * nblk);
    for (int i = 0; i < NMAX; i++)
        vx_quantize_act_q8(src + i * cols, cols, q + i * cols, d + i * nblk, sums + i * nblk);
    const vx_qact X = {q, d, sums};
    const int dts[2] = {VX_DT_Q8, VX_DT_Q4};
    vx_weight w[2];
    double best[2][NS], ipeak = 0;
    for (int k = 0; k < 2; k++) {
        fill_weight(&w[k], dts[k], rows, cols, 7);
        for (int j = 0; j < NS; j++) best[k][j] = 1e9;
    }
    for (int r = 0; r < rounds; r++) {
        const double ip = vx_measure_int8_peak(1);
        ipeak = ip > ipeak ? ip : ipeak;
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < NS; j++) {
                const double t0 = now();
                for (int it = 0; it < REPS; it++)
                    if (be->matmul_rows_q(&w[k], &X, ns[j], Y, (int)rows, 0, rows) != 0) {
                        fprintf(stderr, "%s has no %s kernel\n", be->name, dt_name(dts[k]));
                        return 2;
                    }
                const double t = (now() - t0) / REPS;
                best[k][j] = t < best[k][j] ? t : best[k][j];
            }
    }
    const double blocks = (double)(rows / 8) * (double)nblk;
    const double mix = strstr(be->name, "avx512vnni") ? pair_bound_ns() : 0;
    printf("%s, 1 thread, [%d x %d] in cache, best of %d rounds; int8 peak %.1f GOP/s\n",
           be->name, (int)rows, (int)cols, rounds, ipeak);
    if (mix > 0) /* per 8-row block: half a 16-row step */
        printf("pair-step floor (8 vpdpbusd + vmulps + vfmadd231ps per input and 16 rows, zmm): "
               "%.3f ns per input and 8-row block; [x] = that floor x n / the kernel's time\n",
               mix / 2);
    for (int k = 0; k < 2; k++) {
        printf("%s:", dt_name(dts[k]));
        for (int j = 0; j < NS; j++) {
            const double gops = 2.0 * (double)rows * (double)cols * ns[j] / best[k][j] * 1e-9;
            const double ns_block = best[k][j] * 1e9 / blocks;
            printf("  n=%d %.2f ns/block %.0f GOP/s (%.2f)", ns[j], ns_block, gops,
                   ipeak > 0 ? gops / ipeak : 0.0);
            if (mix > 0 && ns[j] > 1) printf(" [%.2f]", mix / 2 * ns[j] / ns_block);
        }
        printf("\n");
        free((void *)w[k].data);
    }
    free(src);
    free(Y);
    free(q);
    free(d);
    free(sums);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "step") == 0) /* step [backend [rounds]] */
        return run_step(argc > 2 ? argv[2] : NULL, argc > 3 ? atoi(argv[3]) : 7);
    if (argc > 1 && strcmp(argv[1], "ab") == 0) /* ab A B [threads [rounds]] */
        return run_ab(argc > 2 ? argv[2] : "avx2-plain", argc > 3 ? argv[3] : "avx2",
                      argc > 4 ? atoi(argv[4]) : 1, argc > 5 ? atoi(argv[5]) : 15);
    char err[256];
    const vx_backend *be = vx_backend_select(argc > 1 ? argv[1] : NULL, err, sizeof err);
    if (!be) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    const char *only = argc > 2 ? argv[2] : NULL;
    double mhz = cpu_mhz();
    printf("backend %s, /proc/cpuinfo clock %.0f MHz\n", be->name, mhz);
    printf("nominal peak: %.1f GFLOP/s per core (2 FMA ports x 8 lanes x 2 flops x clock)\n",
           mhz * 1e-3 * 32);

    /* the same measurements voxd bench reports (native/src/membw.c); the
     * Q8/Q4 lines below give their ratio to these (int8 multiply-adds count
     * 2 operations, like a float FMA lane) */
    double peak[3] = {0}, bw[3] = {0};
    for (int t = 1; t <= 2; t++) {
        if (!only || strstr(only, "peak")) {
            peak[t] = vx_measure_fma_peak(t);
            printf("measured FMA peak, %d thread(s): %.1f GFLOP/s\n", t, peak[t]);
        }
        bw[t] = vx_measure_read_bandwidth((size_t)1 << 30, t, 5);
        printf("memory read bandwidth, %d thread(s): %.1f GB/s\n", t, bw[t]);
    }

    for (int threads = 1; threads <= 2; threads++) {
        vx_model m;
        memset(&m, 0, sizeof m);
        m.be = be;
        m.pool = vx_pool_new(threads);
        if (!m.pool) {
            fprintf(stderr, "vx_pool_new failed\n");
            return 2;
        }
        m.n_threads = threads;
        m.act = vx_actbuf_new(5120); /* int8 activations of the Q8/Q4 matmuls below */
        if (!m.act) {
            fprintf(stderr, "vx_actbuf_new failed\n");
            return 2;
        }

        /* encoder shape: [5120 x 1280] x 64 */
        const int n = 64;
        float *X = xmalloc(sizeof(float) * n * 5120);
        float *Y = xmalloc(sizeof(float) * n * 9216);
        for (int i = 0; i < n * 5120; i++) X[i] = (float)((i * 7) % 13) * 0.1f - 0.6f;
        const int dts[] = {VX_DT_BF16, VX_DT_F32, VX_DT_Q8, VX_DT_Q4};
        for (int d = 0; d < 4; d++) {
            if (!wanted(only, dts[d])) continue;
            vx_weight w;
            fill_weight(&w, dts[d], 5120, 1280, 1);
            vx_matmul(&m, &w, X, n, Y, NULL);
            double best = 1e9;
            for (int rep = 0; rep < 10; rep++) {
                double t0 = now();
                vx_matmul(&m, &w, X, n, Y, NULL);
                double s = now() - t0;
                if (s < best) best = s;
            }
            const double gops = 2.0 * 5120 * 1280 * n / best * 1e-9;
            printf("matmul %-4s [5120 x 1280] x %d, %d thread(s): %.1f GFLOP/s", dt_name(dts[d]), n,
                   threads, gops);
            if (peak[threads] > 0) printf(" = %.2f x FMA peak", gops / peak[threads]);
            printf("\n");
            free((void *)w.data);
        }

        /* in-cache matvec [256 x 1024]: the kernels' compute ceiling for n = 1;
         * best of 20 batches (other processes on a shared machine only slow
         * runs down, so the minimum is the least disturbed figure) */
        const int dts3[] = {VX_DT_BF16, VX_DT_F32, VX_DT_Q8, VX_DT_Q4};
        for (int d = 0; d < 4; d++) {
            if (!wanted(only, dts3[d])) continue;
            vx_weight w;
            fill_weight(&w, dts3[d], 256 * threads, 1024, 7);
            const int reps = 200;
            double best = 1e9;
            for (int b = 0; b < 20; b++) {
                double t0 = now();
                for (int rep = 0; rep < reps; rep++) vx_matmul(&m, &w, X, 1, Y, NULL);
                double s = (now() - t0) / reps;
                if (s < best) best = s;
            }
            printf("matvec %-4s [%d x 1024] in cache, %d thread(s): %.1f Gweights/s, %.1f GB/s\n",
                   dt_name(dts3[d]), 256 * threads, threads, 256.0 * threads * 1024 / best * 1e-9,
                   (double)vx_row_bytes(dts3[d], 1024) * 256 * threads / best * 1e-9);
            free((void *)w.data);
        }

        /* decoder shape: [9216 x 3072] x 1, cycling copies past the L3 */
        const int dts2[] = {VX_DT_BF16, VX_DT_Q8, VX_DT_Q4, VX_DT_F32};
        for (int d = 0; d < 4; d++) {
            if (!wanted(only, dts2[d])) continue;
            size_t bytes = vx_row_bytes(dts2[d], 3072) * 9216;
            int copies = (int)((400u << 20) / bytes) + 1;
            vx_weight *ws = xmalloc(sizeof(vx_weight) * (size_t)copies);
            for (int k = 0; k < copies; k++) fill_weight(&ws[k], dts2[d], 9216, 3072, (unsigned)k + 2);
            double s1 = 1.0; /* the n = 1 time */
            /* block weights also with 2, 4 and 8 input rows (the decoder
             * steps of several streams stacked): each row costs the
             * arithmetic of one, the weights are read once for all */
            const int nmax = vx_dt_is_block(dts2[d]) ? 8 : 1;
            for (int nn = 1; nn <= nmax; nn *= 2) {
                for (int k = 0; k < copies; k++) vx_matmul(&m, &ws[k], X, nn, Y, NULL);
                double s = 1e9;
                for (int b = 0; b < 5; b++) {
                    double t0 = now();
                    for (int k = 0; k < copies; k++) vx_matmul(&m, &ws[k], X, nn, Y, NULL);
                    double t = (now() - t0) / copies;
                    if (t < s) s = t;
                }
                printf("matvec %-4s [9216 x 3072] x %d, %d thread(s): %.1f GB/s of weights"
                       " (%.2f ms, %.2f x n = 1)"
                       " = %.2f of read bandwidth\n",
                       dt_name(dts2[d]), nn, threads, (double)bytes / s * 1e-9, s * 1e3,
                       nn == 1 ? 1.0 : s / s1, (double)bytes / s * 1e-9 / bw[threads]);
                if (nn == 1) s1 = s;
            }
            for (int k = 0; k < copies; k++) free((void *)ws[k].data);
            free(ws);
        }
        free(X);
        free(Y);
        vx_actbuf_free(m.act);
        vx_pool_free(m.pool);
    }
    return 0;
}
