/* threadpool.c - a fixed pool of worker threads for data-parallel loops.
 * The caller thread works too, so a pool of n threads has n-1 workers. Tasks
 * are claimed with an atomic counter; vx_pool_run returns when all are done.
 *
 * A decoder step is ~150 short jobs (one per matrix, attention and SwiGLU of
 * each layer), a few hundred microseconds each. Waking a sleeping thread
 * through a condition variable costs ~10 us each way, time in which only one
 * core streams weights; so workers and the caller first spin briefly on the
 * job counter and sleep only when no job comes (between audio chunks). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "engine.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void cpu_relax(void) {}
#endif

/* How long a thread spins before sleeping, in time rather than polls: a
 * pause costs ~10-140 cycles on x86 and a yield ~1 on ARM. 100 us covers the
 * gaps between one decoder step's jobs (norms, activation quantization). */
#define SPIN_NS 100000
#define POLLS_PER_CLOCK 64 /* polls between clock reads */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A spin of at most SPIN_NS: poll while spin_more() says so. */
typedef struct {
    int64_t end;
    int polls;
} spin_budget;

static spin_budget spin_start(void) { return (spin_budget){now_ns() + SPIN_NS, 0}; }

static int spin_more(spin_budget *b) {
    cpu_relax();
    return ++b->polls % POLLS_PER_CLOCK != 0 || now_ns() < b->end;
}

struct vx_pool {
    int n_threads;
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_mutex_t run_lock; /* one job at a time: streams may share the pool */
    pthread_cond_t wake, done;
    /* the job in flight: written by the caller before gen is bumped */
    void (*fn)(void *, int);
    void *ctx;
    int n_tasks;
    atomic_int next;
    atomic_int busy;          /* workers still inside the current job */
    atomic_ulong gen;         /* bumped per job so workers see a new one */
    int sleepers;             /* workers waiting on wake (under mu) */
    int caller_waiting;       /* the caller waits on done (under mu) */
    atomic_int quit;
};

static void drain(vx_pool *p) {
    for (;;) {
        int t = atomic_fetch_add(&p->next, 1);
        if (t >= p->n_tasks) break;
        p->fn(p->ctx, t);
    }
}

/* The next job's generation, or seen if the pool is quitting. */
static unsigned long wait_job(vx_pool *p, unsigned long seen) {
    unsigned long g;
    for (spin_budget b = spin_start(); spin_more(&b);) {
        g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&p->quit, memory_order_relaxed)) return g;
    }
    pthread_mutex_lock(&p->mu);
    p->sleepers++;
    while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->quit))
        pthread_cond_wait(&p->wake, &p->mu);
    p->sleepers--;
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker(void *arg) {
    vx_pool *p = arg;
    unsigned long seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        if (atomic_load(&p->quit)) break;
        drain(p);
        if (atomic_fetch_sub_explicit(&p->busy, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            if (p->caller_waiting) pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

vx_pool *vx_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    vx_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    atomic_init(&p->next, 0);
    atomic_init(&p->busy, 0);
    atomic_init(&p->gen, 0);
    atomic_init(&p->quit, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    if (pthread_mutex_init(&p->run_lock, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    if (pthread_cond_init(&p->wake, NULL) != 0 || pthread_cond_init(&p->done, NULL) != 0) {
        pthread_mutex_destroy(&p->run_lock);
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers) {
        vx_pool_free(p);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&p->workers[i], NULL, worker, p) != 0) {
            p->n_threads = i; /* only join what started */
            vx_pool_free(p);
            return NULL;
        }
    }
    return p;
}

void vx_pool_free(vx_pool *p) {
    if (!p) return;
    if (p->workers) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->quit, 1);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n_threads; i++) pthread_join(p->workers[i], NULL);
        free(p->workers);
    }
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->run_lock);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int vx_pool_size(const vx_pool *p) { return p ? p->n_threads : 1; }

void vx_pool_run(vx_pool *p, int n_tasks, void (*fn)(void *ctx, int task), void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t);
        return;
    }
    pthread_mutex_lock(&p->run_lock);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    atomic_store(&p->busy, p->n_threads - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    drain(p);
    for (spin_budget b = spin_start();
         atomic_load_explicit(&p->busy, memory_order_acquire) && spin_more(&b);) {
    }
    if (atomic_load_explicit(&p->busy, memory_order_acquire)) {
        pthread_mutex_lock(&p->mu);
        p->caller_waiting = 1;
        while (atomic_load(&p->busy) > 0) pthread_cond_wait(&p->done, &p->mu);
        p->caller_waiting = 0;
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->run_lock);
}
