/* membw.c - machine measurements for `voxd bench` (voxd_bench.h): sustained
 * memory read bandwidth and peak FMA throughput, measured with the same
 * compiler and thread count as the engine, so that the benchmark's roofline
 * fractions compare like with like.
 *
 * Every repetition starts its threads afresh (the caller thread works too)
 * and is timed from before the first start to after the last join; thread
 * start-up costs tens of microseconds against tens of milliseconds of work.
 * The SIMD paths are chosen at run time (x86: __builtin_cpu_supports and a
 * target attribute, so this file needs no special compile flags). */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* clock_gettime, posix_memalign, madvise under -std=c11 */
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "util.h"
#include "voxd_bench.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define VX_BENCH_X86 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#define PAGE 4096
#define MAX_THREADS 1024
#define FMA_REPS 5   /* best of: a shared machine's other load only slows a repetition */
#define FMA_CHAINS 12 /* > latency x ports on current cores (5 x 2 on Haswell, 4 x 2 on A76) */

/* The peak loops (FMA and int8 dot products, every ISA): FMA_CHAINS
 * independent chains a0..a11, named because an array of vectors may be kept
 * in memory; chain c starts at INIT(c) and takes a = OP(a) iters times.
 * SUM12(ADD) adds them up so the compiler cannot drop the work. PIN keeps
 * each chain in a register through every link: without it GCC kept the
 * AVX2 and AVX-VNNI integer chains half on the stack (a store per link and
 * loads back), and those loops measured 0.4-0.5x what the core can issue. */
#if defined(__x86_64__) || defined(__i386__)
#define PIN(a) __asm__("" : "+x"(a))
#elif defined(__aarch64__)
#define PIN(a) __asm__("" : "+w"(a))
#else
#define PIN(a) ((void)0)
#endif
#define CHAINS12(T, INIT, OP)                                                                  \
    T a0 = INIT(0), a1 = INIT(1), a2 = INIT(2), a3 = INIT(3), a4 = INIT(4), a5 = INIT(5),      \
      a6 = INIT(6), a7 = INIT(7), a8 = INIT(8), a9 = INIT(9), a10 = INIT(10), a11 = INIT(11);  \
    for (long it = 0; it < iters; it++) {                                                      \
        a0 = OP(a0); PIN(a0);                                                                  \
        a1 = OP(a1); PIN(a1);                                                                  \
        a2 = OP(a2); PIN(a2);                                                                  \
        a3 = OP(a3); PIN(a3);                                                                  \
        a4 = OP(a4); PIN(a4);                                                                  \
        a5 = OP(a5); PIN(a5);                                                                  \
        a6 = OP(a6); PIN(a6);                                                                  \
        a7 = OP(a7); PIN(a7);                                                                  \
        a8 = OP(a8); PIN(a8);                                                                  \
        a9 = OP(a9); PIN(a9);                                                                  \
        a10 = OP(a10); PIN(a10);                                                               \
        a11 = OP(a11); PIN(a11);                                                               \
    }
#define SUM12(ADD)                                                                             \
    ADD(ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7))),                     \
        ADD(ADD(a8, a9), ADD(a10, a11)))

enum { TASK_FILL, TASK_READ, TASK_FMA, TASK_DOT };

typedef struct {
    int kind;
    int simd;             /* use the SIMD kernel (decided once per call) */
    unsigned char *p;     /* TASK_FILL / TASK_READ: this thread's part */
    size_t n;             /* bytes of the part (a multiple of PAGE) */
    long iters;           /* TASK_FMA / TASK_DOT */
    uint64_t isink;       /* results, so the compiler cannot drop the work */
    float fsink;
} task;

static volatile uint64_t g_isink;
static volatile float g_fsink;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
}

/* ---- kernels ---- */

static uint64_t read_words(const unsigned char *p, size_t n) {
    const uint64_t *w = (const uint64_t *)(const void *)p; /* p is page aligned */
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i + 4 <= n / 8; i += 4) {
        a0 += w[i];
        a1 += w[i + 1];
        a2 += w[i + 2];
        a3 += w[i + 3];
    }
    return a0 ^ a1 ^ a2 ^ a3;
}

static float fma_plain(long iters) {
    float a[FMA_CHAINS][8];
    const float m = 0.999999f, k = 1e-7f;
    for (int c = 0; c < FMA_CHAINS; c++)
        for (int l = 0; l < 8; l++) a[c][l] = (float)(c + l);
    for (long it = 0; it < iters; it++)
        for (int c = 0; c < FMA_CHAINS; c++)
            for (int l = 0; l < 8; l++) a[c][l] = a[c][l] * m + k;
    float s = 0;
    for (int c = 0; c < FMA_CHAINS; c++)
        for (int l = 0; l < 8; l++) s += a[c][l];
    return s;
}
#define FLOP_PLAIN (FMA_CHAINS * 8 * 2)

#if defined(VX_BENCH_X86)
static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

__attribute__((target("avx2"))) static uint64_t read_avx2(const unsigned char *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(const void *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(const void *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(const void *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(const void *)(p + i + 96)));
    }
    __m256i s = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)(void *)t, s);
    return t[0] ^ t[1] ^ t[2] ^ t[3];
}

__attribute__((target("avx2,fma"))) static float fma_avx2(long iters) {
    const __m256 m = _mm256_set1_ps(0.999999f), k = _mm256_set1_ps(1e-7f);
#define INIT(c) _mm256_set1_ps((float)(c))
#define OP(a) _mm256_fmadd_ps(a, m, k)
    CHAINS12(__m256, INIT, OP)
#undef INIT
#undef OP
    const __m256 s = SUM12(_mm256_add_ps);
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#define FLOP_SIMD (FMA_CHAINS * 8 * 2)

/* The same on zmm, where the CPU has AVX-512: Zen 5 and Intel servers with
 * two 512-bit FMA units retire twice the flops of ymm, so the peak has to
 * be measured on zmm or the int8 and float kernels are credited with 2x. */
static int have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

__attribute__((target("avx512f"))) static float fma_avx512(long iters) {
    const __m512 m = _mm512_set1_ps(0.999999f), k = _mm512_set1_ps(1e-7f);
#define INIT(c) _mm512_set1_ps((float)(c))
#define OP(a) _mm512_fmadd_ps(a, m, k)
    CHAINS12(__m512, INIT, OP)
#undef INIT
#undef OP
    return _mm512_reduce_add_ps(SUM12(_mm512_add_ps));
}
#define FLOP_SIMD512 (FMA_CHAINS * 16 * 2)

/* int8 dot products (the Q8/Q4 kernels' instructions): 12 chains of
 * vpdpbusd on zmm (AVX512-VNNI), on ymm (AVX-VNNI), or vpmaddubsw +
 * vpaddw (AVX2, below). Level 3 / 2 / 1; 0: none. */
static int dot_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512f")) return 3;
    if (__builtin_cpu_supports("avxvnni")) return 2;
    return have_avx2() ? 1 : 0;
}

/* Each chain starts from its own value: chains that start equal compute
 * the same thing, and the compiler merges them into one (which measured the
 * latency of one chain and counted it 12 times). */
#define INIT512(c) _mm512_set1_epi32(c)
#define INIT256(c) _mm256_set1_epi32(c)

__attribute__((target("avx512f,avx512vnni"))) static uint64_t dot_avx512(long iters) {
    const __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-5);
#define OP(a) _mm512_dpbusd_epi32(a, u, v)
    CHAINS12(__m512i, INIT512, OP)
#undef OP
    return (uint64_t)(uint32_t)_mm512_reduce_add_epi32(SUM12(_mm512_add_epi32));
}

__attribute__((target("avx2,avxvnni"))) static uint64_t dot_avxvnni(long iters) {
    const __m256i u = _mm256_set1_epi8(3), v = _mm256_set1_epi8(-5);
#define OP(a) _mm256_dpbusd_avx_epi32(a, u, v)
    CHAINS12(__m256i, INIT256, OP)
#undef OP
    return (uint64_t)(uint32_t)_mm256_extract_epi32(SUM12(_mm256_add_epi32), 0);
}

/* AVX2: vpmaddubsw with its pair sums added in int16, the Q4 kernels' inner
 * pair (they widen once per 8 vpmaddubsw). On a Zen 3 core it runs at 1.9x
 * the rate of vpmaddubsw + vpmaddwd + vpaddd (both multiplies share the two
 * multiply pipes), so it is the ceiling for Q4. Q8's pairs can fill int16
 * and need the widening per product: Q8 on AVX2 is held to a rate it cannot
 * reach. */
__attribute__((target("avx2"))) static uint64_t dot_avx2(long iters) {
    const __m256i u = _mm256_set1_epi8(3), one = _mm256_set1_epi16(1);
    /* the chain runs through the multiply (with a fixed v, the products
     * would be hoisted out of the loop and only the adds measured); the
     * lanes' values do not matter */
#define OP(a) _mm256_add_epi16(one, _mm256_maddubs_epi16(u, a))
    CHAINS12(__m256i, INIT256, OP)
#undef OP
    return (uint64_t)(uint32_t)_mm256_extract_epi32(SUM12(_mm256_add_epi32), 0);
}

/* int8 operations (a multiply-add counts 2) per iteration of each level. */
static long dot_ops_per_iter(int level) {
    return level == 3 ? FMA_CHAINS * 128L : level >= 1 ? FMA_CHAINS * 64L : 0;
}

#elif defined(__aarch64__)
static int have_avx2(void) { return 0; }

static float fma_neon(long iters) {
    const float32x4_t m = vdupq_n_f32(0.999999f), k = vdupq_n_f32(1e-7f);
#define INIT(c) vdupq_n_f32((float)(c))
#define OP(a) vfmaq_f32(k, a, m)
    CHAINS12(float32x4_t, INIT, OP)
#undef INIT
#undef OP
    return vaddvq_f32(SUM12(vaddq_f32));
}
#define FLOP_SIMD (FMA_CHAINS * 4 * 2)

#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
/* SDOT (ARMv8.2 dot product, Cortex-A76 and later): level 1; 0 without. */
static int dot_level(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) ? 1 : 0; }

__attribute__((target("arch=armv8.2-a+dotprod"))) static uint64_t dot_sdot(long iters) {
    const int8x16_t u = vdupq_n_s8(3), v = vdupq_n_s8(-5);
#define INIT(c) vdupq_n_s32(c)
#define OP(a) vdotq_s32(a, u, v)
    CHAINS12(int32x4_t, INIT, OP)
#undef INIT
#undef OP
    return (uint64_t)(uint32_t)vaddvq_s32(SUM12(vaddq_s32));
}

static long dot_ops_per_iter(int level) { return level ? FMA_CHAINS * 32L : 0; }

#else
static int have_avx2(void) { return 0; }
static int dot_level(void) { return 0; }
static long dot_ops_per_iter(int level) { return (void)level, 0L; }
#endif

/* SIMD available for the FMA loop on this CPU (NEON is baseline on
 * AArch64): 0 none, 1 AVX2 / NEON, 2 AVX-512. */
static int fma_simd(void) {
#if defined(__aarch64__)
    return 1;
#elif defined(VX_BENCH_X86)
    return have_avx512() ? 2 : have_avx2();
#else
    return have_avx2();
#endif
}

static long fma_flop_per_iter(int simd) {
#if defined(VX_BENCH_X86)
    if (simd == 2) return FLOP_SIMD512;
#endif
#if defined(VX_BENCH_X86) || defined(__aarch64__)
    if (simd) return FLOP_SIMD;
#endif
    (void)simd;
    return FLOP_PLAIN;
}

static void *run_task(void *arg) {
    task *t = arg;
    switch (t->kind) {
    case TASK_FILL:
        for (size_t i = 0; i < t->n; i++) t->p[i] = (unsigned char)(i * 131u + 7u);
        break;
    case TASK_READ:
#if defined(VX_BENCH_X86)
        if (t->simd) {
            t->isink = read_avx2(t->p, t->n);
            break;
        }
#endif
        t->isink = read_words(t->p, t->n);
        break;
    case TASK_FMA:
#if defined(VX_BENCH_X86)
        if (t->simd == 2) {
            t->fsink = fma_avx512(t->iters);
            break;
        }
        if (t->simd) {
            t->fsink = fma_avx2(t->iters);
            break;
        }
#elif defined(__aarch64__)
        if (t->simd) {
            t->fsink = fma_neon(t->iters);
            break;
        }
#endif
        t->fsink = fma_plain(t->iters);
        break;
    case TASK_DOT:
#if defined(VX_BENCH_X86)
        t->isink = t->simd == 3 ? dot_avx512(t->iters) : t->simd == 2 ? dot_avxvnni(t->iters) : dot_avx2(t->iters);
#elif defined(__aarch64__)
        t->isink = dot_sdot(t->iters);
#endif
        break;
    default:
        break;
    }
    return NULL;
}

/* Run tasks[0..n) at once: tasks[1..n) on new threads, tasks[0] on this one.
 * Returns the wall seconds, or -1 when a thread could not be started (the
 * ones that did are joined first). */
static double run_parallel(task *tasks, int n) {
    pthread_t *th = malloc(sizeof(pthread_t) * (size_t)n);
    if (!th) return -1;
    double t0 = now_s();
    int started = 0;
    for (int i = 1; i < n; i++) {
        if (pthread_create(&th[i], NULL, run_task, &tasks[i]) != 0) break;
        started++;
    }
    int ok = started == n - 1;
    if (ok) run_task(&tasks[0]);
    for (int i = 1; i <= started; i++) pthread_join(th[i], NULL);
    double dt = now_s() - t0;
    free(th);
    uint64_t is = 0;
    float fs = 0;
    for (int i = 0; i < n; i++) {
        is ^= tasks[i].isink;
        fs += tasks[i].fsink;
    }
    g_isink = is;
    g_fsink = fs;
    return ok ? dt : -1;
}

/* The shortest of reps runs of tasks in seconds; -1 if a run failed. */
static double best_of(task *tasks, int n, int reps) {
    double best = -1;
    for (int r = 0; r < reps; r++) {
        double s = run_parallel(tasks, n);
        if (s < 0) return -1;
        if (best < 0 || s < best) best = s;
    }
    return best;
}

/* ---- public ---- */

double vx_measure_read_bandwidth(size_t bytes, int n_threads, int reps) {
    int n = n_threads > 0 ? (n_threads > MAX_THREADS ? MAX_THREADS : n_threads) : cpu_count();
    if (reps <= 0) reps = 3;
    if (bytes < ((size_t)1 << 20)) bytes = (size_t)1 << 20;
    size_t part = bytes / (size_t)n / PAGE * PAGE;
    if (part < PAGE) part = PAGE;
    /* in huge pages where the kernel has them, as the engine's weights are
     * (vx_st_into_memory): the roof is what the memory gives at its best */
    void *buf = NULL;
    if (posix_memalign(&buf, vx_huge_page_size(), part * (size_t)n) != 0 || !buf) return -1;
#ifdef MADV_HUGEPAGE
    madvise(buf, part * (size_t)n, MADV_HUGEPAGE);
#endif
    task *tasks = calloc((size_t)n, sizeof(task));
    if (!tasks) {
        free(buf);
        return -1;
    }
    int simd = have_avx2();
    for (int i = 0; i < n; i++) {
        tasks[i].kind = TASK_FILL; /* each thread first-touches its own part */
        tasks[i].simd = simd;
        tasks[i].p = (unsigned char *)buf + part * (size_t)i;
        tasks[i].n = part;
    }
    double best = run_parallel(tasks, n);
    if (best >= 0) {
        for (int i = 0; i < n; i++) tasks[i].kind = TASK_READ;
        best = best_of(tasks, n, reps);
    }
    free(tasks);
    free(buf);
    if (best <= 0) return -1;
    return (double)part * (double)n / best * 1e-9;
}

/* The peak of a compute task kind (TASK_FMA at SIMD level simd, or
 * TASK_DOT at dot level simd) in G operations per second over n threads. */
static double measure_peak(int kind, int simd, long ops_per_iter, int n_threads) {
    int n = n_threads > 0 ? (n_threads > MAX_THREADS ? MAX_THREADS : n_threads) : cpu_count();
    /* calibrate on one thread: about 50 ms per repetition */
    task one = {.kind = kind, .simd = simd, .iters = 1L << 18};
    double t = run_parallel(&one, 1);
    if (t < 0) return -1;
    double want = (double)one.iters * 0.05 / (t > 1e-6 ? t : 1e-6);
    long iters = want < (double)(1L << 16) ? 1L << 16 : want > 1e9 ? 1000000000L : (long)want;
    task *tasks = calloc((size_t)n, sizeof(task));
    if (!tasks) return -1;
    for (int i = 0; i < n; i++) {
        tasks[i].kind = kind;
        tasks[i].simd = simd;
        tasks[i].iters = iters;
    }
    const double best = best_of(tasks, n, FMA_REPS);
    free(tasks);
    if (best <= 0) return -1;
    return (double)n * (double)iters * (double)ops_per_iter / best * 1e-9;
}

double vx_measure_fma_peak(int n_threads) {
    const int simd = fma_simd();
    return measure_peak(TASK_FMA, simd, fma_flop_per_iter(simd), n_threads);
}

double vx_measure_int8_peak(int n_threads) {
    const int level = dot_level();
    if (!level) return -1;
    return measure_peak(TASK_DOT, level, dot_ops_per_iter(level), n_threads);
}
