/* SPDX-License-Identifier: MIT */
/*
 * workerpool.c - handles of a library that is not thread-safe (libewf, AFFLIB), one per concurrent
 * reader.  The pool owns only the locking: which worker a thread gets (a free one, else a newly opened
 * one up to one per CPU and WORKER_POOL_MAX, else the next in turn, waited for), and when another is
 * opened (the driver's open callback, once per worker, under the pool's own lock).  The handles
 * themselves stay in the driver's array, indexed like the pool's workers; the pool knows no format.
 */
#include "block.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct WorkerPool {
    pthread_mutex_t grow;                    /* opening another worker */
    pthread_mutex_t busy[WORKER_POOL_MAX];   /* held by the thread using worker i */
    _Atomic int n;                           /* workers open */
    int max;                                 /* at most this many (grow held) */
    _Atomic unsigned rr;                     /* the next one to wait for when all are busy */
    int (*open)(void *ctx, int i);
    void *ctx;
};

WorkerPool *worker_pool_new(int (*open)(void *ctx, int i), void *ctx)
{
    WorkerPool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    pthread_mutex_init(&p->grow, NULL);
    for (int i = 0; i < WORKER_POOL_MAX; i++)
        pthread_mutex_init(&p->busy[i], NULL);
    p->open = open;
    p->ctx = ctx;
    p->max = 1;
    return p;
}

void worker_pool_started(WorkerPool *p)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    p->max = (int)MAX(1, MIN(cpus, WORKER_POOL_MAX));
    atomic_store(&p->n, 1);
}

int worker_pool_count(WorkerPool *p)
{
    return p ? atomic_load(&p->n) : 0;
}

int worker_pool_get(WorkerPool *p)
{
    int n = atomic_load(&p->n);
    for (int i = 0; i < n; i++)
        if (pthread_mutex_trylock(&p->busy[i]) == 0)
            return i;
    pthread_mutex_lock(&p->grow);
    n = atomic_load(&p->n);
    if (n < p->max) {
        if (p->open(p->ctx, n) == 0) {
            pthread_mutex_lock(&p->busy[n]);
            atomic_store(&p->n, n + 1);
            pthread_mutex_unlock(&p->grow);
            return n;
        }
        p->max = n; /* no more: share the ones there are */
    }
    pthread_mutex_unlock(&p->grow);
    int i = (int)(atomic_fetch_add(&p->rr, 1) % (unsigned)n);
    pthread_mutex_lock(&p->busy[i]);
    return i;
}

void worker_pool_put(WorkerPool *p, int i)
{
    pthread_mutex_unlock(&p->busy[i]);
}

void worker_pool_free(WorkerPool *p)
{
    if (!p)
        return;
    for (int i = 0; i < WORKER_POOL_MAX; i++)
        pthread_mutex_destroy(&p->busy[i]);
    pthread_mutex_destroy(&p->grow);
    free(p);
}
