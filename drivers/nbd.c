/* SPDX-License-Identifier: MIT */
/*
 * nbd.c - the "nbd" protocol driver: an image on an NBD server, named by a URL (nbd://host[:port][/export],
 * nbds:// with TLS, nbd+unix:///export?socket=PATH), through libnbd.  It owns a small pool of connections
 * (several requests in flight: one per connection; one connection only when the server is writable here and
 * does not promise multi-conn consistency), read, write (acknowledged only once the server acknowledged it),
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
#include <time.h>

#define NBD_MAX_CONNECTIONS 4
#define NBD_DEFAULT_TIMEOUT 30          /* seconds */
#define NBD_MAX_TIMEOUT 3600
#define NBD_MAX_REQUEST (32 * MiB)      /* the most servers take in one command */
#define NBD_MAX_STATUS (1 * GiB)        /* one block-status question */
#define NBD_DISCONNECT_MS 1000          /* a polite goodbye at close, no longer */

typedef struct NbdConn {
    pthread_mutex_t lock;
    struct nbd_handle *h;               /* NULL: not connected (yet, or dropped after a failure) */
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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int nbd_errno(void)
{
    int e = nbd_get_errno();
    return e > 0 ? e : EIO;
}

/* Runs h's state machine until done(h, cookie) says 1 (0), it fails (-errno) or deadline passes (-ETIMEDOUT). */
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

/* The connection for one request, locked, connected; NULL (-EIO, -ETIMEDOUT) when none by the deadline. */
static NbdConn *conn_get(BlockNode *bs, int64_t deadline, int *ret)
{
    NbdState *s = bs->opaque;
    NbdConn *c = NULL;
    for (int i = 0; i < s->n_conn && !c; i++)
        if (pthread_mutex_trylock(&s->conn[i].lock) == 0)
            c = &s->conn[i];
    if (!c) {
        NbdConn *w = &s->conn[atomic_fetch_add(&s->next, 1) % (unsigned)s->n_conn];
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t left = MAX(deadline - now_ms(), 0);
        ts.tv_sec += left / 1000;
        ts.tv_nsec += (left % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        if (pthread_mutex_timedlock(&w->lock, &ts) != 0) {
            *ret = -EIO;
            return NULL;
        }
        c = w;
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
    return c;
}

/* Ends a request: a connection whose transport failed or timed out is dropped (the next request connects
 * again); an error the server answered keeps it. The caller sees -EIO for a lost server. */
static int conn_put(BlockNode *bs, NbdConn *c, int r)
{
    if (r < 0 && (r == -ETIMEDOUT || nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h))) {
        log_msg("%s: %s; the connection is dropped", bs->node_name,
                r == -ETIMEDOUT ? "the server did not answer within the timeout" : "the connection was lost");
        nbd_close(c->h);
        c->h = NULL;
        r = -EIO;
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

typedef enum { NBD_OP_READ, NBD_OP_WRITE, NBD_OP_ZERO, NBD_OP_TRIM, NBD_OP_FLUSH } NbdOp;

/* One command on one connection of the pool, waited for until its deadline. */
static int nbd_command(BlockNode *bs, NbdOp op, int64_t offset, int64_t bytes, void *buf, uint32_t flags)
{
    NbdState *s = bs->opaque;
    int64_t deadline = now_ms() + s->timeout_ms;
    int r = 0;
    NbdConn *c = conn_get(bs, deadline, &r);
    if (!c)
        return r;
    int64_t cookie;
    switch (op) {
    case NBD_OP_READ:
        cookie = nbd_aio_pread(c->h, buf, (size_t)bytes, (uint64_t)offset, NBD_NULL_COMPLETION, 0);
        break;
    case NBD_OP_WRITE:
        cookie = nbd_aio_pwrite(c->h, buf, (size_t)bytes, (uint64_t)offset, NBD_NULL_COMPLETION, flags);
        break;
    case NBD_OP_ZERO:
        cookie = nbd_aio_zero(c->h, (uint64_t)bytes, (uint64_t)offset, NBD_NULL_COMPLETION, flags);
        break;
    case NBD_OP_TRIM:
        cookie = nbd_aio_trim(c->h, (uint64_t)bytes, (uint64_t)offset, NBD_NULL_COMPLETION, flags);
        break;
    default:
        cookie = nbd_aio_flush(c->h, NBD_NULL_COMPLETION, 0);
        break;
    }
    r = cookie < 0 ? -nbd_errno() : nbd_wait(c->h, cookie, deadline);
    return conn_put(bs, c, r);
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
        int64_t deadline = now_ms() + s->timeout_ms;
        NbdConn *c = &s->conn[i];
        pthread_mutex_lock(&c->lock);
        if (!c->h) { /* never connected, or dropped: it holds nothing unflushed */
            pthread_mutex_unlock(&c->lock);
            continue;
        }
        int64_t cookie = nbd_aio_flush(c->h, NBD_NULL_COMPLETION, 0);
        r = conn_put(bs, c, cookie < 0 ? -nbd_errno() : nbd_wait(c->h, cookie, deadline));
    }
    return r;
}

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
    int64_t ask = MIN(bytes, NBD_MAX_STATUS), deadline = now_ms() + s->timeout_ms;
    int r = 0;
    NbdConn *c = conn_get(bs, deadline, &r);
    if (!c)
        return r;
    NbdExtent e = { 0 };
    nbd_extent_callback cb = { .callback = nbd_extent_cb, .user_data = &e };
    int64_t cookie = nbd_aio_block_status(c->h, (uint64_t)ask, (uint64_t)offset, cb, NBD_NULL_COMPLETION,
                                          LIBNBD_CMD_FLAG_REQ_ONE);
    r = conn_put(bs, c, cookie < 0 ? -nbd_errno() : nbd_wait(c->h, cookie, deadline));
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
    for (int i = 0; i < NBD_MAX_CONNECTIONS; i++)
        pthread_mutex_init(&s->conn[i].lock, NULL);
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
