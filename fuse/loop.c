/* SPDX-License-Identifier: MIT */
/*
 * loop.c - the FUSE request loop, over libfuse's lowlevel session (receive a request, process it), in
 * place of libfuse's multi-threaded loop.  Leader and followers: one thread at a time, the leader, waits
 * in the kernel for a request; the others wait here.  A leader that finds no second request queued
 * behind the one it got keeps the lead and serves its request itself, then reads the next one: at one
 * request in flight the same thread serves every request and no thread is woken on our side.  When more
 * are queued it hands the lead to a follower (started on demand, up to max_threads, never stopped before
 * unmount) and so up to max_threads requests are served at once.  A request served by the leader must not
 * hold up the others for long: the calling thread checks every LOOP_TICK_MS while requests come and
 * hands the lead on if the same one is still being served (and sleeps while the mount is idle).  It also
 * receives the signals: the workers block them, as libfuse's loop does.  It knows nothing of what the
 * requests are about (fs.c).
 */
#include "fs_int.h"

#include <errno.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOOP_MAX_THREADS 64
#define LOOP_TICK_MS 1          /* a request served by the leader holds the others up for 1-2 ticks at most */
#define LOOP_QUIET_TICKS 100    /* ticks without a request before the checker sleeps */
#define LOOP_IDLE_MS 1000       /* the sleeping checker still looks at the session this often */

enum { LEAD_FREE, LEAD_READING, LEAD_SERVING };

typedef struct Loop {
    struct fuse_session *se;
    int fd;
    unsigned max_threads;
    pthread_mutex_t lock;
    pthread_cond_t followers;
    unsigned n_threads, n_idle;  /* under lock */
    bool stop;                   /* under lock */
    atomic_int lead;             /* LEAD_*: FREE -> READING under lock, the rest by the leader or the checker */
    atomic_uint_fast64_t served; /* requests the leader kept */
    atomic_bool parked;          /* the checker sleeps until the leader keeps a request */
    atomic_int error;
    sem_t wake;                  /* the checker: session over, or a request after a quiet spell */
    pthread_t threads[LOOP_MAX_THREADS];
} Loop;

static void *loop_worker(void *arg);

/* Starts a follower with the session's signals blocked (they go to the checker). Under l->lock. */
static void loop_spawn(Loop *l)
{
    if (l->stop)
        return;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGQUIT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    if (pthread_create(&l->threads[l->n_threads], NULL, loop_worker, l) == 0)
        l->n_threads++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* The lead is free: a waiting follower takes it, or a new one. Under l->lock. */
static void loop_pass_lead(Loop *l)
{
    atomic_store(&l->lead, LEAD_FREE);
    if (l->n_idle > 0)
        pthread_cond_signal(&l->followers);
    else if (l->n_threads < l->max_threads)
        loop_spawn(l);
}

/* Waits as a follower until the lead is free and takes it; false when the loop ends. */
static bool loop_take_lead(Loop *l)
{
    bool got = false;
    pthread_mutex_lock(&l->lock);
    l->n_idle++;
    while (!l->stop && !fuse_session_exited(l->se)) {
        int free_lead = LEAD_FREE;
        if ((got = atomic_compare_exchange_strong(&l->lead, &free_lead, LEAD_READING)))
            break;
        pthread_cond_wait(&l->followers, &l->lock);
    }
    l->n_idle--;
    pthread_mutex_unlock(&l->lock);
    return got;
}

/* Is another request queued behind the one just read? */
static bool loop_more_queued(Loop *l)
{
    struct pollfd p = { .fd = l->fd, .events = POLLIN };
    return poll(&p, 1, 0) > 0;
}

/* The session is over (unmounted, or a read failed with r < 0): the checker is told. */
static void loop_end(Loop *l, int r)
{
    if (r < 0) {
        atomic_store(&l->error, r);
        fuse_session_exit(l->se);
    }
    sem_post(&l->wake);
}

static void loop_free_buf(void *arg)
{
    free(((struct fuse_buf *)arg)->mem);
}

/* One request as the leader; false when the session is over. *kept: the lead is still ours. */
static bool loop_serve_one(Loop *l, struct fuse_buf *buf, bool *kept)
{
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
    int r = fuse_session_receive_buf(l->se, buf);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    *kept = true;
    if (r == -EINTR || r == -EAGAIN || r == -ENOENT)
        return !fuse_session_exited(l->se);
    if (r <= 0) {
        loop_end(l, r);
        return false;
    }
    if (loop_more_queued(l)) {
        pthread_mutex_lock(&l->lock);
        loop_pass_lead(l);
        pthread_mutex_unlock(&l->lock);
        *kept = false;
    } else {
        atomic_store(&l->lead, LEAD_SERVING);
        atomic_fetch_add(&l->served, 1);
        if (atomic_load(&l->parked) && atomic_exchange(&l->parked, false))
            sem_post(&l->wake);
    }
    fuse_session_process_buf(l->se, buf);
    int serving = LEAD_SERVING;
    *kept = *kept && atomic_compare_exchange_strong(&l->lead, &serving, LEAD_READING);
    return true;
}

static void *loop_worker(void *arg)
{
    Loop *l = arg;
    struct fuse_buf buf;
    memset(&buf, 0, sizeof buf);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    pthread_cleanup_push(loop_free_buf, &buf);
    bool alive = true;
    while (alive && loop_take_lead(l)) {
        bool kept = true;
        while (alive && kept && !fuse_session_exited(l->se))
            alive = loop_serve_one(l, &buf, &kept);
        if (alive && kept) /* session exited while we led */
            alive = false;
    }
    pthread_cleanup_pop(1);
    return NULL;
}

static void deadline_in(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += ms * 1000000L;
    ts->tv_sec += ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

/* The calling thread until the session ends: hands the lead on when the leader serves one request for
 * a whole tick, sleeps while no request comes. */
static void loop_check(Loop *l)
{
    uint_fast64_t last = atomic_load(&l->served);
    unsigned quiet = 0;
    struct timespec ts;
    while (!fuse_session_exited(l->se)) {
        bool park = quiet >= LOOP_QUIET_TICKS;
        if (park)
            atomic_store(&l->parked, true);
        if (!park || atomic_load(&l->served) == last) {
            deadline_in(&ts, park ? LOOP_IDLE_MS : LOOP_TICK_MS);
            sem_timedwait(&l->wake, &ts); /* EINTR: a signal, the session may have exited */
        }
        atomic_store(&l->parked, false);
        uint_fast64_t now = atomic_load(&l->served);
        if (now == last && atomic_load(&l->lead) == LEAD_SERVING && !park) {
            pthread_mutex_lock(&l->lock);
            int serving = LEAD_SERVING;
            if (atomic_load(&l->served) == now && atomic_compare_exchange_strong(&l->lead, &serving, LEAD_FREE))
                loop_pass_lead(l);
            pthread_mutex_unlock(&l->lock);
        }
        quiet = now == last && atomic_load(&l->lead) != LEAD_SERVING ? quiet + 1 : 0;
        last = now;
    }
}

int fs_loop(struct fuse_session *se, unsigned max_threads)
{
    Loop *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->se = se;
    l->fd = fuse_session_fd(se);
    l->max_threads = max_threads < 1 ? 1 : max_threads > LOOP_MAX_THREADS ? LOOP_MAX_THREADS : max_threads;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->followers, NULL);
    sem_init(&l->wake, 0, 0);
    atomic_init(&l->lead, LEAD_FREE);
    pthread_mutex_lock(&l->lock);
    loop_spawn(l);
    unsigned started = l->n_threads;
    pthread_mutex_unlock(&l->lock);
    int r = -EAGAIN;
    if (started) {
        loop_check(l);
        pthread_mutex_lock(&l->lock);
        l->stop = true;
        pthread_cond_broadcast(&l->followers);
        for (unsigned i = 0; i < l->n_threads; i++)
            pthread_cancel(l->threads[i]); /* acts only on the leader, waiting in the kernel */
        unsigned n = l->n_threads;
        pthread_mutex_unlock(&l->lock);
        for (unsigned i = 0; i < n; i++)
            pthread_join(l->threads[i], NULL);
        r = atomic_load(&l->error);
    }
    fuse_session_reset(se);
    sem_destroy(&l->wake);
    pthread_cond_destroy(&l->followers);
    pthread_mutex_destroy(&l->lock);
    free(l);
    return r;
}
