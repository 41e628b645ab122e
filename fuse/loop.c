/* SPDX-License-Identifier: MIT */
/*
 * loop.c - the FUSE request loop, over libfuse's lowlevel session (receive a request, process it), in
 * place of libfuse's multi-threaded loop, whose idle threads all wait in the kernel, which wakes another
 * of them for each request.  Here the number of threads reading the kernel's queue follows the load: a
 * thread that was the only reader and finds nothing queued behind its request serves it and reads the
 * next one itself, so at one request in flight the same thread serves every request and nobody else is
 * woken; a thread that finds requests queued, or got a long one (a large read, a write), keeps reading
 * after serving (and, if it was the only reader, first asks a follower to read meanwhile), as libfuse's
 * threads do; a thread that served a quick request while others read and nothing was queued waits here
 * as a follower, so the readers drain to one when the load falls.  Threads are started on demand up to max_threads and live until unmount.  A
 * request served by the only reader must not hold up the others for long: the calling thread checks every
 * LOOP_TICK_MS while requests come (it sleeps while the mount is idle) and asks a follower to read when
 * one request has been served alone for a whole tick.  It also receives the signals: the workers block
 * them, as libfuse's do.  It knows nothing of what the requests are about (fs.c).
 */
#include "fs_int.h"

#include <errno.h>
#include <linux/fuse.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOOP_MAX_THREADS 64
#define LOOP_TICK_MS 1          /* a request served alone holds the others up for 1-2 ticks at most */
#define LOOP_QUIET_TICKS 100    /* ticks without a request before the checker sleeps */
#define LOOP_IDLE_MS 1000       /* the sleeping checker still looks at the session this often */
#define LOOP_QUICK_READ 32768   /* a read up to this size is quick to serve (from the page cache) */

typedef struct Loop {
    struct fuse_session *se;
    int fd;
    unsigned max_threads;
    pthread_mutex_t lock;
    pthread_cond_t followers;
    unsigned n_threads, n_idle;  /* under lock */
    unsigned wanted;             /* under lock: readers asked of the followers */
    bool stop;                   /* under lock */
    atomic_int readers;          /* threads in (or on their way into) the kernel's read */
    atomic_uint_fast64_t alone;  /* requests served by the only reader, nobody reading meanwhile */
    atomic_bool serving_alone;
    atomic_bool parked;          /* the checker sleeps until a request is served alone */
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

/* Nobody reads the kernel's queue: a waiting follower starts reading, or a new thread. */
static void loop_want_reader(Loop *l)
{
    pthread_mutex_lock(&l->lock);
    l->wanted++;
    if (l->n_idle > 0)
        pthread_cond_signal(&l->followers);
    else if (l->n_threads < l->max_threads)
        loop_spawn(l);
    pthread_mutex_unlock(&l->lock);
}

/* Waits as a follower until a reader is wanted; false when the loop ends. */
static bool loop_follow(Loop *l)
{
    bool go = false;
    pthread_mutex_lock(&l->lock);
    l->n_idle++;
    while (!l->stop && !fuse_session_exited(l->se) && !(go = l->wanted > 0))
        pthread_cond_wait(&l->followers, &l->lock);
    if (go)
        l->wanted--;
    l->n_idle--;
    pthread_mutex_unlock(&l->lock);
    return go;
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

/* Is this request quick to serve (a small read, a look-up)? A long one (a large read, a write, a flush)
 * is never served alone: another thread reads meanwhile, as in libfuse's loop. */
static bool loop_quick(const struct fuse_buf *buf)
{
    if ((buf->flags & FUSE_BUF_IS_FD) || buf->size < sizeof(struct fuse_in_header))
        return false;
    const struct fuse_in_header *in = buf->mem;
    switch (in->opcode) {
    case FUSE_READ: {
        const struct fuse_read_in *r = (const void *)(in + 1);
        return buf->size >= sizeof *in + sizeof *r && r->size <= LOOP_QUICK_READ;
    }
    case FUSE_LOOKUP: case FUSE_FORGET: case FUSE_BATCH_FORGET: case FUSE_GETATTR: case FUSE_OPEN:
    case FUSE_OPENDIR: case FUSE_READDIR: case FUSE_READDIRPLUS: case FUSE_RELEASEDIR: case FUSE_STATFS:
    case FUSE_GETXATTR: case FUSE_LISTXATTR: case FUSE_ACCESS: case FUSE_INTERRUPT:
        return true;
    default:
        return false;
    }
}

/* Reads and serves one request; false when the session is over. *again: read the next one at once
 * rather than wait as a follower, because this thread was the only reader and nothing else was queued
 * (one request in flight), or because requests were queued or this one was long (several in flight, as
 * libfuse's loop). A thread that served a quick request while others read and nothing was queued becomes
 * a follower: the readers drain to one when the load falls. */
static bool loop_serve_one(Loop *l, struct fuse_buf *buf, bool *again)
{
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
    int r = fuse_session_receive_buf(l->se, buf);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    int others = atomic_fetch_sub(&l->readers, 1) - 1;
    *again = true;
    if (r == -EINTR || r == -EAGAIN || r == -ENOENT)
        return !fuse_session_exited(l->se);
    if (r <= 0) {
        loop_end(l, r);
        return false;
    }
    bool quick = loop_quick(buf);
    bool queued = quick && loop_more_queued(l);
    bool alone = others == 0 && quick && !queued;
    if (others == 0 && !alone) {
        loop_want_reader(l);
    } else if (alone) {
        atomic_store(&l->serving_alone, true);
        atomic_fetch_add(&l->alone, 1);
        if (atomic_load(&l->parked) && atomic_exchange(&l->parked, false))
            sem_post(&l->wake);
    }
    fuse_session_process_buf(l->se, buf);
    if (alone)
        atomic_store(&l->serving_alone, false);
    *again = alone || queued || !quick || atomic_load(&l->readers) == 0;
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
    while (alive && loop_follow(l)) {
        bool again = true;
        while (alive && again && !fuse_session_exited(l->se)) {
            atomic_fetch_add(&l->readers, 1);
            alive = loop_serve_one(l, &buf, &again);
        }
        if (alive && again) /* the session exited */
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

/* The calling thread until the session ends: asks for another reader when one request has been served
 * alone for a whole tick, sleeps while no request comes. */
static void loop_check(Loop *l)
{
    uint_fast64_t last = atomic_load(&l->alone), rescued = 0;
    unsigned quiet = 0;
    struct timespec ts;
    while (!fuse_session_exited(l->se)) {
        bool park = quiet >= LOOP_QUIET_TICKS;
        if (park)
            atomic_store(&l->parked, true);
        if (!park || atomic_load(&l->alone) == last) {
            deadline_in(&ts, park ? LOOP_IDLE_MS : LOOP_TICK_MS);
            sem_timedwait(&l->wake, &ts); /* EINTR: a signal, the session may have exited */
        }
        atomic_store(&l->parked, false);
        uint_fast64_t now = atomic_load(&l->alone);
        bool busy = atomic_load(&l->serving_alone);
        if (now == last && busy && !park && rescued != now && atomic_load(&l->readers) == 0) {
            rescued = now;
            loop_want_reader(l);
        }
        quiet = now == last && !busy ? quiet + 1 : 0;
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
    pthread_mutex_lock(&l->lock);
    l->wanted = 1;
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
            pthread_cancel(l->threads[i]); /* acts only on readers, waiting in the kernel */
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
