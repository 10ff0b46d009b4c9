/* bench_kernels.c - throughput of the matmul backends against this machine's
 * limits (not part of the build; the numbers go into the kernel notes).
 *
 *   FMA peak   : a register-only FMA loop (10 independent chains) per thread
 *   memory     : AVX2 / NEON-free streaming sum over 1 GiB, 1 and 2 threads
 *   matmul     : W [5120 x 1280] x 64 input rows (encoder FFN shape), GFLOP/s
 *   matvec     : W [9216 x 3072] x 1 row (decoder FFN shape), GB/s of weights;
 *                several copies are cycled so the working set exceeds the L3.
 *
 * Build (x86-64, from the repository root):
 *   cmake -S native -B build/bench -G Ninja -DVX_BUILD_TESTS=ON && ninja -C build/bench
 *   gcc -O2 -mavx2 -mfma -Inative/src -Inative/include native/bench/bench_kernels.c \
 *       build/bench/libvoxd_engine_static.a -lm -lpthread -o build/bench/bench_kernels
 *   build/bench/bench_kernels [backend]
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "quant.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

/* ---- FMA peak and memory bandwidth (x86 only; elsewhere reported as 0) */

typedef struct {
    const float *p;
    size_t n;
    double result;
    int iters;
} bw_arg;

static void *fma_loop(void *arg) {
    bw_arg *a = arg;
#if defined(__AVX2__)
    /* 10 named chains (an array may be left in memory at -O2): enough to
     * cover 2 ports x 5 cycles of FMA latency */
    __m256 m = _mm256_set1_ps(0.999999f), k = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2),
           a3 = _mm256_set1_ps(3), a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5),
           a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7), a8 = _mm256_set1_ps(8),
           a9 = _mm256_set1_ps(9);
    for (int it = 0; it < a->iters; it++) {
        a0 = _mm256_fmadd_ps(a0, m, k);
        a1 = _mm256_fmadd_ps(a1, m, k);
        a2 = _mm256_fmadd_ps(a2, m, k);
        a3 = _mm256_fmadd_ps(a3, m, k);
        a4 = _mm256_fmadd_ps(a4, m, k);
        a5 = _mm256_fmadd_ps(a5, m, k);
        a6 = _mm256_fmadd_ps(a6, m, k);
        a7 = _mm256_fmadd_ps(a7, m, k);
        a8 = _mm256_fmadd_ps(a8, m, k);
        a9 = _mm256_fmadd_ps(a9, m, k);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(a8, a9));
    float t[8];
    _mm256_storeu_ps(t, s);
    a->result = t[0];
#else
    a->result = 0;
#endif
    return NULL;
}

static void *sum_loop(void *arg) {
    bw_arg *a = arg;
#if defined(__AVX2__)
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < a->n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(a->p + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(a->p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(a->p + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(a->p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    a->result = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
#else
    double s = 0;
    for (size_t i = 0; i < a->n; i++) s += a->p[i];
    a->result = s;
#endif
    return NULL;
}

/* Run fn on `threads` threads over equal parts; returns seconds. */
static double run_threads(void *(*fn)(void *), int threads, const float *p, size_t n, int iters) {
    pthread_t th[16];
    bw_arg args[16];
    size_t part = n / (size_t)threads / 32 * 32;
    double t0 = now();
    for (int t = 0; t < threads; t++) {
        args[t] = (bw_arg){p ? p + part * (size_t)t : NULL, part, 0, iters};
        if (pthread_create(&th[t], NULL, fn, &args[t]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(2);
        }
    }
    for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
    return now() - t0;
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
    w->dtype = (vx_dtype)dt;
    w->rows = rows;
    w->cols = cols;
    w->data = data;
}

static const char *dt_name(int dt) {
    static const char *const names[] = {"F32", "F16", "BF16", "Q8", "Q4"};
    return dt >= 0 && dt <= 4 ? names[dt] : "?";
}

int main(int argc, char **argv) {
    char err[256];
    const vx_backend *be = vx_backend_select(argc > 1 ? argv[1] : NULL, err, sizeof err);
    if (!be) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    double mhz = cpu_mhz();
    printf("backend %s, /proc/cpuinfo clock %.0f MHz\n", be->name, mhz);
    printf("nominal peak: %.1f GFLOP/s per core (2 FMA ports x 8 lanes x 2 flops x clock)\n",
           mhz * 1e-3 * 32);

    const int fma_iters = 50000000;
    for (int t = 1; t <= 2; t++) {
        double s = 1e9;
        for (int rep = 0; rep < 3; rep++) {
            double r = run_threads(fma_loop, t, NULL, 0, fma_iters);
            if (r < s) s = r;
        }
        printf("measured FMA peak, %d thread(s): %.1f GFLOP/s\n", t,
               (double)t * fma_iters * 10 * 16 / s * 1e-9);
    }

    const size_t gib = (size_t)1 << 30, nf = gib / 4;
    float *big = xmalloc(gib);
    for (size_t i = 0; i < nf; i++) big[i] = (float)(i & 1023);
    for (int t = 1; t <= 2; t++) {
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            double s = run_threads(sum_loop, t, big, nf, 0);
            if (s < best) best = s;
        }
        printf("memory read bandwidth, %d thread(s): %.1f GB/s\n", t, (double)gib / best * 1e-9);
    }
    free(big);

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

        /* encoder shape: [5120 x 1280] x 64 */
        const int n = 64;
        float *X = xmalloc(sizeof(float) * n * 5120);
        float *Y = xmalloc(sizeof(float) * n * 9216);
        for (int i = 0; i < n * 5120; i++) X[i] = (float)((i * 7) % 13) * 0.1f - 0.6f;
        const int dts[] = {VX_DT_BF16, VX_DT_F32, VX_DT_Q8, VX_DT_Q4};
        for (int d = 0; d < 4; d++) {
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
            printf("matmul %-4s [5120 x 1280] x %d, %d thread(s): %.1f GFLOP/s\n", dt_name(dts[d]), n,
                   threads, 2.0 * 5120 * 1280 * n / best * 1e-9);
            free((void *)w.data);
        }

        /* in-cache matvec [256 x 1024]: the kernels' compute ceiling for n = 1;
         * best of 20 batches (other processes on a shared machine only slow
         * runs down, so the minimum is the least disturbed figure) */
        const int dts3[] = {VX_DT_BF16, VX_DT_F32, VX_DT_Q8, VX_DT_Q4};
        for (int d = 0; d < 4; d++) {
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
            size_t bytes = vx_row_bytes(dts2[d], 3072) * 9216;
            int copies = (int)((400u << 20) / bytes) + 1;
            vx_weight *ws = xmalloc(sizeof(vx_weight) * (size_t)copies);
            for (int k = 0; k < copies; k++) fill_weight(&ws[k], dts2[d], 9216, 3072, (unsigned)k + 2);
            for (int k = 0; k < copies; k++) vx_matmul(&m, &ws[k], X, 1, Y, NULL);
            double s = 1e9;
            for (int b = 0; b < 5; b++) {
                double t0 = now();
                for (int k = 0; k < copies; k++) vx_matmul(&m, &ws[k], X, 1, Y, NULL);
                double t = (now() - t0) / copies;
                if (t < s) s = t;
            }
            printf("matvec %-4s [9216 x 3072] x 1, %d thread(s): %.1f GB/s of weights (%.2f ms)\n",
                   dt_name(dts2[d]), threads, (double)bytes / s * 1e-9, s * 1e3);
            for (int k = 0; k < copies; k++) free((void *)ws[k].data);
            free(ws);
        }
        free(X);
        free(Y);
        vx_pool_free(m.pool);
    }
    return 0;
}
