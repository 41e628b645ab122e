/* SPDX-License-Identifier: MIT */
/*
 * nbd.c - the "nbd" protocol driver: an image on an NBD server, named by a URL (nbd://host[:port][/export],
 * nbds:// with TLS, nbd+unix:///export?socket=PATH), through libnbd.  It owns a small pool of connections
 * (one only when the server is writable here and does not promise multi-conn consistency), each with many
 * commands in flight: a request sends its command at once and waits for its reply while one of the waiters
 * of that connection polls its socket for all of them; read, write (acknowledged only once the server acknowledged it),
 * flush, trim, write-zeroes and block status from the server's base:allocation context.  Every request has a
 * deadline (nbd.timeout, --timeout, default 30 s): a server that is gone or silent costs the caller -EIO by
 * then, never a hang; the connection is dropped and the next request connects again.  It knows no format and
 * nothing of the backing policy (lib/backing.c decides which URLs are followed).
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <libnbd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define NBD_MAX_CONNECTIONS 4
#define NBD_DEFAULT_TIMEOUT 30          /* seconds */
#define NBD_MAX_TIMEOUT 3600
#define NBD_MAX_REQUEST (32 * MiB)      /* the most servers take in one command */
#define NBD_MAX_STATUS (1 * GiB)        /* one block-status question */
#define NBD_DISCONNECT_MS 1000          /* a polite goodbye at close, no longer */

typedef struct NbdConn {
    pthread_mutex_t lock;
    pthread_cond_t round;               /* a poll round ended: commands may have completed, polling is free */
    struct nbd_handle *h;               /* NULL: not connected (yet, or dropped after a failure) */
    uint64_t gen;                       /* bumped when h is closed: its other commands fail with EIO */
    bool polling;                       /* one waiter polls h's socket for all the commands in flight */
    bool doomed;                        /* h is to be closed by the poller once its poll returns */
    int kick;                           /* eventfd: wakes the poller (a command to send, h doomed) */
} NbdConn;

typedef struct NbdState {
    int64_t size;
    int timeout_ms;
    int n_conn;
    bool can_flush, can_fua, can_trim, can_zero, can_status, multi_conn;
    atomic_uint next;
    NbdConn conn[NBD_MAX_CONNECTIONS];
} NbdState;

static const BlockOptionSpec nbd_options[] = {
    { "timeout", BDRV_OPT_INT, 0, "seconds a request may take before it fails with EIO (default 30)" },
    { NULL, 0, 0, NULL }
};

static int nbd_errno(void)
{
    int e = nbd_get_errno();
    return e > 0 ? e : EIO;
}

/* Runs h's state machine until done(h, cookie) says 1 (0), it fails (-errno) or deadline passes (-ETIMEDOUT).
 * For a handle nobody else uses (connecting, closing). */
static int nbd_wait(struct nbd_handle *h, int64_t cookie, int64_t deadline)
{
    for (;;) {
        int r = cookie >= 0 ? nbd_aio_command_completed(h, (uint64_t)cookie) : nbd_aio_is_ready(h);
        if (r == 1)
            return 0;
        if (r < 0)
            return -nbd_errno();
        if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h))
            return -EIO;
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        if (nbd_poll(h, (int)MIN(left, 1000)) < 0)
            return -nbd_errno();
    }
}

/* A new connection to uri, ready for commands, or NULL with the reason in why. */
static struct nbd_handle *nbd_connect(const char *uri, int64_t deadline, char *why, size_t whylen)
{
    struct nbd_handle *h = nbd_create();
    int r = h ? 0 : -1;
    if (r == 0)
        r = nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (r == 0)
        r = nbd_set_uri_allow_local_file(h, true); /* tls-psk-file=, tls-certificates= of the user's URL */
    if (r == 0)
        r = nbd_aio_connect_uri(h, uri);
    if (r == 0 && (r = nbd_wait(h, -1, deadline)) < 0 && r == -ETIMEDOUT)
        snprintf(why, whylen, "no answer from the server within the timeout");
    else if (r < 0)
        snprintf(why, whylen, "%s", nbd_get_error() ? nbd_get_error() : strerror(nbd_errno()));
    if (r < 0 && h) {
        nbd_close(h);
        h = NULL;
    }
    return h;
}

/* pthread_cond_timedwait until deadline (monotonic ms); false once it has passed. */
static bool conn_sleep(NbdConn *c, int64_t deadline)
{
    int64_t left = deadline - now_ms();
    if (left <= 0)
        return false;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += left / 1000;
    ts.tv_nsec += (left % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&c->round, &c->lock, &ts);
    return true;
}

/* Closes c's handle (nobody polls it): every command still in flight on it fails with EIO. Under c->lock. */
static void conn_close(NbdConn *c)
{
    nbd_close(c->h);
    c->h = NULL;
    c->gen++;
    c->doomed = false;
    pthread_cond_broadcast(&c->round);
}

/* A connection whose transport failed or timed out is dropped (the next request connects again); if a
 * waiter polls it, that one closes it once its poll returns (woken now, and waited for). Under c->lock. */
static void conn_drop(BlockNode *bs, NbdConn *c, int r)
{
    if (!c->h || c->doomed)
        return;
    log_msg("%s: %s; the connection is dropped", bs->node_name,
            r == -ETIMEDOUT ? "the server did not answer within the timeout" : "the connection was lost");
    if (!c->polling) {
        conn_close(c);
        return;
    }
    c->doomed = true;
    eventfd_write(c->kick, 1);
    while (c->polling) /* it may be moving a reply into a caller's buffer */
        pthread_cond_wait(&c->round, &c->lock);
}

/* One poll of h's socket (and of the kick), then the state machine moves on what it got. */
static int conn_poll(NbdConn *c, struct nbd_handle *h, int ms)
{
    int fd = nbd_aio_get_fd(h);
    unsigned dir = nbd_aio_get_direction(h);
    if (fd < 0)
        return -nbd_errno();
    struct pollfd p[2] = {
        { .fd = fd, .events = (short)(((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                                      ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0)) },
        { .fd = c->kick, .events = POLLIN },
    };
    int n = poll(p, 2, ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    if (p[1].revents & POLLIN) {
        eventfd_t v;
        eventfd_read(c->kick, &v);
    }
    int r = 0;
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
        r = nbd_aio_notify_read(h);
    else if (p[0].revents & POLLOUT)
        r = nbd_aio_notify_write(h);
    return r < 0 ? -nbd_errno() : 0;
}

/* Waits for one command of h (generation gen) while others are in flight on it: one waiter at a time polls
 * the socket for all of them, the others sleep until its round ends. Under c->lock. */
static int conn_wait(BlockNode *bs, NbdConn *c, uint64_t gen, int64_t cookie, int64_t deadline)
{
    for (;;) {
        if (!c->h || c->gen != gen)
            return -EIO; /* dropped meanwhile: the command went with it */
        struct nbd_handle *h = c->h;
        int r = nbd_aio_command_completed(h, (uint64_t)cookie);
        if (r == 1)
            return 0;
        if (r < 0 && !nbd_aio_is_dead(h) && !nbd_aio_is_closed(h))
            return -nbd_errno(); /* the server's answer: the connection stays */
        if (r < 0 || nbd_aio_is_dead(h) || nbd_aio_is_closed(h) || deadline <= now_ms()) {
            r = r < 0 || deadline > now_ms() ? -EIO : -ETIMEDOUT;
            conn_drop(bs, c, r);
            return -EIO;
        }
        if (c->polling || c->doomed) {
            conn_sleep(c, deadline);
            continue;
        }
        c->polling = true;
        pthread_mutex_unlock(&c->lock);
        r = conn_poll(c, h, (int)MIN(deadline - now_ms(), 1000));
        pthread_mutex_lock(&c->lock);
        c->polling = false;
        if (c->doomed)
            conn_close(c);
        pthread_cond_broadcast(&c->round);
        if (r < 0 && c->h == h && c->gen == gen) {
            conn_drop(bs, c, r);
            return -EIO;
        }
    }
}

/* The connection for one request, locked and connected (its generation in *gen); NULL (-EIO) when none
 * by the deadline. Requests share connections: each has several commands in flight. */
static NbdConn *conn_get(BlockNode *bs, NbdConn *c, int64_t deadline, uint64_t *gen, int *ret)
{
    pthread_mutex_lock(&c->lock);
    while (c->doomed)
        if (!conn_sleep(c, deadline)) {
            pthread_mutex_unlock(&c->lock);
            *ret = -EIO;
            return NULL;
        }
    if (!c->h) {
        char why[256];
        c->h = nbd_connect(bs->filename, deadline, why, sizeof(why));
        if (!c->h) {
            log_debug("%s: reconnect failed: %s", bs->node_name, why);
            pthread_mutex_unlock(&c->lock);
            *ret = -EIO;
            return NULL;
        }
        log_debug("%s: connected again", bs->node_name);
    }
    *gen = c->gen;
    return c;
}

typedef enum { NBD_OP_READ, NBD_OP_WRITE, NBD_OP_ZERO, NBD_OP_TRIM, NBD_OP_FLUSH, NBD_OP_STATUS } NbdOp;

typedef struct NbdExtent {
    uint32_t length, flags;
    bool seen;
} NbdExtent;

static int nbd_extent_cb(void *opaque, const char *context, uint64_t offset, uint32_t *entries, size_t n,
                         int *error)
{
    (void)offset;
    (void)error;
    NbdExtent *e = opaque;
    if (!e->seen && n >= 2 && strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0) {
        e->length = entries[0];
        e->flags = entries[1];
        e->seen = true;
    }
    return 0;
}

/* One command on connection c, sent at once (in flight with the others on c) and waited for until its
 * deadline. */
static int conn_command(BlockNode *bs, NbdConn *c, NbdOp op, int64_t offset, int64_t bytes, void *buf,
                        uint32_t flags)
{
    NbdState *s = bs->opaque;
    int64_t deadline = now_ms() + s->timeout_ms;
    int r = 0;
    uint64_t gen;
    if (!conn_get(bs, c, deadline, &gen, &r))
        return r;
    struct nbd_handle *h = c->h;
    int64_t cookie;
    switch (op) {
    case NBD_OP_READ:
        cookie = nbd_aio_pread(h, buf, (size_t)bytes, (uint64_t)offset, NBD_NULL_COMPLETION, 0);
        break;
    case NBD_OP_WRITE:
        cookie = nbd_aio_pwrite(h, buf, (size_t)bytes, (uint64_t)offset, NBD_NULL_COMPLETION, flags);
        break;
    case NBD_OP_ZERO:
        cookie = nbd_aio_zero(h, (uint64_t)bytes, (uint64_t)offset, NBD_NULL_COMPLETION, flags);
        break;
    case NBD_OP_TRIM:
        cookie = nbd_aio_trim(h, (uint64_t)bytes, (uint64_t)offset, NBD_NULL_COMPLETION, flags);
        break;
    case NBD_OP_STATUS: {
        nbd_extent_callback cb = { .callback = nbd_extent_cb, .user_data = buf };
        cookie = nbd_aio_block_status(h, (uint64_t)bytes, (uint64_t)offset, cb, NBD_NULL_COMPLETION, flags);
        break;
    }
    default:
        cookie = nbd_aio_flush(h, NBD_NULL_COMPLETION, 0);
        break;
    }
    if (cookie < 0) {
        r = -nbd_errno();
        if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h)) {
            conn_drop(bs, c, r);
            r = -EIO;
        }
    } else {
        if (c->polling && (nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_WRITE))
            eventfd_write(c->kick, 1); /* the poller waits for replies only: some of ours is still to send */
        r = conn_wait(bs, c, gen, cookie, deadline);
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* One command on the next connection of the pool. */
static int nbd_command(BlockNode *bs, NbdOp op, int64_t offset, int64_t bytes, void *buf, uint32_t flags)
{
    NbdState *s = bs->opaque;
    NbdConn *c = &s->conn[atomic_fetch_add(&s->next, 1) % (unsigned)s->n_conn];
    return conn_command(bs, c, op, offset, bytes, buf, flags);
}

static int nbd_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return nbd_command(bs, NBD_OP_READ, offset, bytes, buf, 0);
}

static int nbd_node_flush(BlockNode *bs);

static int nbd_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    NbdState *s = bs->opaque;
    bool fua = (flags & BDRV_REQ_FUA) != 0;
    int r = nbd_command(bs, NBD_OP_WRITE, offset, bytes, (void *)buf, fua && s->can_fua ? LIBNBD_CMD_FLAG_FUA : 0);
    if (r == 0 && fua && !s->can_fua)
        r = nbd_node_flush(bs);
    return r;
}

static int nbd_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    NbdState *s = bs->opaque;
    if (!s->can_zero)
        return -ENOTSUP;
    uint32_t f = (flags & BDRV_REQ_MAY_UNMAP) ? 0 : LIBNBD_CMD_FLAG_NO_HOLE;
    if ((flags & BDRV_REQ_FUA) && s->can_fua)
        f |= LIBNBD_CMD_FLAG_FUA;
    int r = 0;
    for (int64_t done = 0; r == 0 && done < bytes; done += MIN(bytes - done, NBD_MAX_STATUS))
        r = nbd_command(bs, NBD_OP_ZERO, offset + done, MIN(bytes - done, NBD_MAX_STATUS), NULL, f);
    if (r == 0 && (flags & BDRV_REQ_FUA) && !s->can_fua)
        r = nbd_node_flush(bs);
    return r;
}

static int nbd_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    NbdState *s = bs->opaque;
    if (!s->can_trim)
        return -ENOTSUP;
    int r = 0;
    for (int64_t done = 0; r == 0 && done < bytes; done += MIN(bytes - done, NBD_MAX_STATUS))
        r = nbd_command(bs, NBD_OP_TRIM, offset + done, MIN(bytes - done, NBD_MAX_STATUS), NULL, 0);
    return r;
}

/* A flush reaches every connection that may hold acknowledged writes in the server's cache (one is enough
 * when the server promises multi-conn consistency). */
static int nbd_node_flush(BlockNode *bs)
{
    NbdState *s = bs->opaque;
    if (!s->can_flush || bs->read_only)
        return 0;
    if (s->multi_conn)
        return nbd_command(bs, NBD_OP_FLUSH, 0, 0, NULL, 0);
    int r = 0;
    for (int i = 0; r == 0 && i < s->n_conn; i++) {
        NbdConn *c = &s->conn[i];
        pthread_mutex_lock(&c->lock);
        bool connected = c->h != NULL; /* never connected, or dropped: it holds nothing unflushed */
        pthread_mutex_unlock(&c->lock);
        if (connected)
            r = conn_command(bs, c, NBD_OP_FLUSH, 0, 0, NULL, 0);
    }
    return r;
}

/* The first extent the server's base:allocation context tells for [offset, offset+bytes). */
static int nbd_node_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    NbdState *s = bs->opaque;
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    st->bytes = bytes;
    st->host_offset = offset;
    st->host_file = bs;
    if (!s->can_status)
        return 0;
    NbdExtent e = { 0 };
    int r = nbd_command(bs, NBD_OP_STATUS, offset, MIN(bytes, NBD_MAX_STATUS), &e, LIBNBD_CMD_FLAG_REQ_ONE);
    if (r < 0)
        return r;
    if (e.seen && e.length > 0) {
        st->bytes = MIN(bytes, (int64_t)e.length);
        if (e.flags & LIBNBD_STATE_ZERO)
            st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    }
    return 0;
}

static int64_t nbd_getlength(BlockNode *bs)
{
    NbdState *s = bs->opaque;
    return s->size;
}

/* A polite disconnect, waited for at most NBD_DISCONNECT_MS (nbd_shutdown would wait for a hung server
 * forever), then the handle is closed. */
static void nbd_disconnect(struct nbd_handle *h)
{
    if (nbd_aio_is_ready(h) == 1 && nbd_aio_disconnect(h, 0) == 0) {
        int64_t deadline = now_ms() + NBD_DISCONNECT_MS;
        while (!nbd_aio_is_closed(h) && !nbd_aio_is_dead(h) && now_ms() < deadline)
            if (nbd_poll(h, (int)MAX(deadline - now_ms(), 1)) < 0)
                break;
    }
    nbd_close(h);
}

static void nbd_close_node(BlockNode *bs)
{
    NbdState *s = bs->opaque;
    for (int i = 0; i < NBD_MAX_CONNECTIONS; i++) {
        if (s->conn[i].h)
            nbd_disconnect(s->conn[i].h);
        if (s->conn[i].kick >= 0)
            close(s->conn[i].kick);
        pthread_cond_destroy(&s->conn[i].round);
        pthread_mutex_destroy(&s->conn[i].lock);
    }
}

/* What the first connection learnt at the handshake: size, limits, what the server can do. */
static int nbd_learn(BlockNode *bs, struct nbd_handle *h, Error *err)
{
    NbdState *s = bs->opaque;
    s->size = nbd_get_size(h);
    if (s->size < 0) {
        error_set(err, EIO, "cannot get the export's size: %s", nbd_get_error());
        return -EIO;
    }
    if (!bs->read_only && nbd_is_read_only(h) == 1) {
        error_set(err, EROFS, "the server exports it read-only");
        return -EROFS;
    }
    s->can_flush = nbd_can_flush(h) == 1;
    s->can_fua = nbd_can_fua(h) == 1;
    s->can_trim = nbd_can_trim(h) == 1;
    s->can_zero = nbd_can_zero(h) == 1;
    s->can_status = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    s->multi_conn = nbd_can_multi_conn(h) == 1;
    /* Without multi-conn, connections may not see each other's writes: one connection when writing. */
    s->n_conn = bs->read_only || s->multi_conn ? NBD_MAX_CONNECTIONS : 1;
    int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    bs->request_alignment = min > 1 && min <= 64 * KiB ? (uint32_t)min : 1;
    bs->max_transfer = max >= (int64_t)bs->request_alignment && max < NBD_MAX_REQUEST ? max : NBD_MAX_REQUEST;
    return 0;
}

static int nbd_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    (void)opts;
    NbdState *s = bs->opaque;
    int64_t t = bdrv_opt_int(bs, "timeout", NBD_DEFAULT_TIMEOUT);
    if (t < 1 || t > NBD_MAX_TIMEOUT) {
        error_set(err, EINVAL, "nbd option 'timeout': %lld is not between 1 and %d seconds", (long long)t,
                  NBD_MAX_TIMEOUT);
        return -EINVAL;
    }
    s->timeout_ms = (int)t * 1000;
    s->n_conn = 1;
    for (int i = 0; i < NBD_MAX_CONNECTIONS; i++) {
        pthread_mutex_init(&s->conn[i].lock, NULL);
        pthread_cond_init(&s->conn[i].round, NULL);
        s->conn[i].kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    for (int i = 0; i < NBD_MAX_CONNECTIONS; i++)
        if (s->conn[i].kick < 0) {
            int e = errno;
            error_set(err, e, "cannot make an eventfd: %s", strerror(e));
            nbd_close_node(bs);
            return -e;
        }
    char why[256];
    s->conn[0].h = nbd_connect(bs->filename, now_ms() + s->timeout_ms, why, sizeof(why));
    int r = s->conn[0].h ? nbd_learn(bs, s->conn[0].h, err) : -EIO;
    if (!s->conn[0].h)
        error_set(err, EIO, "cannot connect to the NBD server: %s", why);
    if (r < 0)
        nbd_close_node(bs); /* the core calls close only for nodes that opened */
    return r;
}

static void nbd_get_info(BlockNode *bs, InfoList *info)
{
    NbdState *s = bs->opaque;
    info_add_int(info, "nbd_connections", s->n_conn);
    info_add_int(info, "nbd_timeout", s->timeout_ms / 1000);
    info_add_bool(info, "nbd_block_status", s->can_status);
    info_add_bool(info, "nbd_multi_conn", s->multi_conn);
}

const BlockDriver bdrv_nbd = {
    .name = "nbd",
    .instance_size = sizeof(NbdState),
    .is_protocol = true,
    .options = nbd_options,
    .open = nbd_open,
    .close = nbd_close_node,
    .read = nbd_read,
    .write = nbd_write,
    .write_zeroes = nbd_write_zeroes,
    .discard = nbd_discard,
    .flush = nbd_node_flush,
    .block_status = nbd_node_block_status,
    .getlength = nbd_getlength,
    .get_info = nbd_get_info,
};
