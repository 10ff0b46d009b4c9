/* bench_kernels.c - throughput of the matmul backends against this machine's
 * limits (not part of the build; the numbers go into the kernel notes).
 *
 *   FMA peak   : vx_measure_fma_peak (membw.c), 1 and 2 threads
 *   memory     : vx_measure_read_bandwidth over 1 GiB, 1 and 2 threads
 *   matmul     : W [5120 x 1280] x 64 input rows (encoder FFN shape), GFLOP/s
 *   matvec     : W [9216 x 3072] x 1 row (decoder FFN shape), GB/s of weights;
 *                several copies are cycled so the working set exceeds the L3.
 *
 * Build (x86-64, from the repository root):
 *   cmake -S native -B build/bench -G Ninja -DVX_BUILD_TESTS=ON && ninja -C build/bench
 *   gcc -O2 -mavx2 -mfma -Inative/src -Inative/include native/bench/bench_kernels.c \
 *       build/bench/libvoxd_engine_static.a -lm -lpthread -o build/bench/bench_kernels
 *   build/bench/bench_kernels [backend [dtypes]]
 * dtypes: a comma-separated subset (e.g. Q8,Q4) to time only those, which
 * also skips the FMA-peak measurement (quick runs while tuning one kernel).
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

int main(int argc, char **argv) {
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

    /* the same measurements voxd bench reports (native/src/membw.c) */
    for (int t = 1; t <= 2; t++) {
        if (!only)
            printf("measured FMA peak, %d thread(s): %.1f GFLOP/s\n", t, vx_measure_fma_peak(t));
        printf("memory read bandwidth, %d thread(s): %.1f GB/s\n", t,
               vx_measure_read_bandwidth((size_t)1 << 30, t, 5));
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
            printf("matmul %-4s [5120 x 1280] x %d, %d thread(s): %.1f GFLOP/s\n", dt_name(dts[d]), n,
                   threads, 2.0 * 5120 * 1280 * n / best * 1e-9);
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
        vx_actbuf_free(m.act);
        vx_pool_free(m.pool);
    }
    return 0;
}
