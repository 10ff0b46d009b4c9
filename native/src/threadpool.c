/* threadpool.c - a fixed pool of worker threads for data-parallel loops.
 * The caller thread works too, so a pool of n threads has n-1 workers. Tasks
 * are claimed with an atomic counter; vx_pool_run returns when all are done. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "engine.h"

struct vx_pool {
    int n_threads;
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_mutex_t run_lock; /* one job at a time: streams may share the pool */
    pthread_cond_t wake, done;
    /* the job in flight */
    void (*fn)(void *, int);
    void *ctx;
    int n_tasks;
    atomic_int next;
    int busy;          /* workers still inside the current job */
    unsigned long gen; /* bumped per job so workers see a new one */
    int quit;
};

static void drain(vx_pool *p) {
    for (;;) {
        int t = atomic_fetch_add(&p->next, 1);
        if (t >= p->n_tasks) break;
        p->fn(p->ctx, t);
    }
}

static void *worker(void *arg) {
    vx_pool *p = arg;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->gen == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        drain(p);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

vx_pool *vx_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    vx_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
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
        p->quit = 1;
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    p->busy = p->n_threads - 1;
    p->gen++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    drain(p);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->run_lock);
}
