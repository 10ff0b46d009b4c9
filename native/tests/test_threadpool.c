/* test_threadpool.c - the pool runs every task of every job exactly once and
 * returns only when all are done: jobs back to back (workers still spinning),
 * jobs after a pause (workers asleep), one-task and empty jobs, several pool
 * sizes, two callers sharing a pool, and freeing idle and fresh pools. Run it
 * under ThreadSanitizer too (scripts/test-all.sh does). */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "engine.h"

#define MAX_TASKS 300

typedef struct {
    atomic_int hits[MAX_TASKS];
    int job; /* written by the caller between jobs: tasks must see it */
    int seen_job[MAX_TASKS];
} job_ctx;

static void count_task(void *ctx, int task) {
    job_ctx *c = ctx;
    atomic_fetch_add(&c->hits[task], 1);
    c->seen_job[task] = c->job;
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Runs jobs of n_tasks on p; returns how many had a task not run exactly once
 * or not seeing this job's data. (No CHECK here: two threads call it.) */
static int run_jobs(vx_pool *p, job_ctx *c, int jobs, int n_tasks, long pause_us) {
    int bad = 0;
    for (int j = 0; j < jobs; j++) {
        for (int t = 0; t < MAX_TASKS; t++) atomic_store(&c->hits[t], 0);
        c->job = j + 1;
        vx_pool_run(p, n_tasks, count_task, c);
        int ok = 1;
        for (int t = 0; t < MAX_TASKS; t++) {
            int want = t < n_tasks;
            if (atomic_load(&c->hits[t]) != want || (want && c->seen_job[t] != j + 1)) ok = 0;
        }
        bad += !ok;
        if (pause_us) sleep_us(pause_us);
    }
    return bad;
}

typedef struct {
    vx_pool *p;
    job_ctx c;
    int bad;
} caller_arg;

static void *caller(void *arg) {
    caller_arg *a = arg;
    a->bad = run_jobs(a->p, &a->c, 200, 37, 0);
    return NULL;
}

int main(void) {
    static job_ctx c;
    for (int threads = 1; threads <= 4; threads++) {
        vx_pool *p = vx_pool_new(threads);
        CHECK(p != NULL);
        if (!p) continue;
        CHECK(vx_pool_size(p) == threads);
        CHECKF(run_jobs(p, &c, 500, 8, 0) == 0, "back to back, %d threads", threads);
        CHECKF(run_jobs(p, &c, 5, MAX_TASKS, 0) == 0, "many tasks, %d threads", threads);
        CHECKF(run_jobs(p, &c, 5, 1, 0) == 0, "one task, %d threads", threads);
        CHECKF(run_jobs(p, &c, 8, 3, 2000) == 0, "after pauses, %d threads", threads);
        vx_pool_run(p, 0, count_task, &c);   /* nothing to do */
        /* two threads submitting to one pool take turns */
        static caller_arg a1, a2;
        a1.p = a2.p = p;
        pthread_t t1, t2;
        CHECK(pthread_create(&t1, NULL, caller, &a1) == 0);
        CHECK(pthread_create(&t2, NULL, caller, &a2) == 0);
        pthread_join(t1, NULL);
        pthread_join(t2, NULL);
        CHECKF(a1.bad == 0 && a2.bad == 0, "two callers, %d threads: %d, %d bad jobs", threads,
               a1.bad, a2.bad);
        sleep_us(2000);
        vx_pool_free(p); /* idle workers asleep */
    }
    vx_pool_free(vx_pool_new(3)); /* freed while its workers may still be spinning */
    vx_pool_run(NULL, 4, count_task, &c);
    return check_report("test_threadpool");
}
