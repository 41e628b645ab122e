/* SPDX-License-Identifier: MIT */
/*
 * rbd.c - the "rbd" protocol driver: an image of a Ceph cluster, named rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]
 * [:KEY=VALUE...] (qemu's spelling; KEY one of conf, id, keyring, key, mon_host; '\' escapes ':' '@' '/'),
 * through librbd.  Read, write (acknowledged only once the cluster acknowledged it: librbd's cache is off),
 * flush, discard, write-zeroes, block status (the allocated extents librbd's diff reports, from the image's
 * creation, of the head or of the open snapshot) and the image's RBD snapshots (listed, opened read-only,
 * created and removed on a writable node).  The cluster is found the usual way (CEPH_CONF, /etc/ceph/ceph.conf, its keyring),
 * or as the name's options and rbd.conf, rbd.id, rbd.keyring say.  Every request has a deadline (rbd.timeout,
 * --timeout, default 30 s), which also sets librados' own op and mount timeouts: a cluster that is gone costs
 * the caller -EIO by then, never a hang.  A request given up on keeps its own buffer until librbd finishes it.
 * A key in the name never leaves the driver: the node's name shows it as "key=***", and a name whose key shows
 * so (a backing image's, resolved from its overlay's shown name) takes the key of an open connection of the
 * same user, configuration and monitors.
 * librados and librbd are loaded with dlopen at the first open, so that imgfuse (and its Debian package)
 * does not depend on Ceph's libraries; without them an rbd: name fails with one line naming the package.
 */
#include "block.h"
#include "util.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RBD_DEFAULT_TIMEOUT 30          /* seconds */
#define RBD_MAX_TIMEOUT 3600
#define RBD_MAX_REQUEST (4 * MiB)       /* one request's bounce buffer */
#define RBD_MAX_SNAPSHOTS 4096
#define RBD_NAME_MAX 512
#define RBD_MAX_STATUS (256 * MiB)      /* the range one block-status request asks the cluster about, */
#define RBD_STATUS_OBJECTS 64           /* ... and at most this many of the image's objects */
#define RBD_FAST_STATUS_SPAN 64         /* with fast-diff: whole objects over this many times that range first */
#define RBD_MAX_EXTENTS 1024            /* extents one block-status request keeps */

/* ---------------------------------------------------------------- the libraries, loaded once */

typedef struct RbdLib {
    int (*rados_create)(rados_t *, const char *);
    int (*rados_conf_read_file)(rados_t, const char *);
    int (*rados_conf_parse_env)(rados_t, const char *);
    int (*rados_conf_set)(rados_t, const char *, const char *);
    int (*rados_connect)(rados_t);
    void (*rados_shutdown)(rados_t);
    int (*rados_ioctx_create)(rados_t, const char *, rados_ioctx_t *);
    void (*rados_ioctx_destroy)(rados_ioctx_t);
    void (*rados_ioctx_set_namespace)(rados_ioctx_t, const char *);
    int (*rbd_open)(rados_ioctx_t, const char *, rbd_image_t *, const char *);
    int (*rbd_open_read_only)(rados_ioctx_t, const char *, rbd_image_t *, const char *);
    int (*rbd_close)(rbd_image_t);
    int (*rbd_get_size)(rbd_image_t, uint64_t *);
    int (*rbd_stat)(rbd_image_t, rbd_image_info_t *, size_t);
    int (*rbd_get_features)(rbd_image_t, uint64_t *);
    int (*rbd_get_flags)(rbd_image_t, uint64_t *);
    int (*rbd_aio_create_completion)(void *, rbd_callback_t, rbd_completion_t *);
    ssize_t (*rbd_aio_get_return_value)(rbd_completion_t);
    void (*rbd_aio_release)(rbd_completion_t);
    int (*rbd_aio_read)(rbd_image_t, uint64_t, size_t, char *, rbd_completion_t);
    int (*rbd_aio_write)(rbd_image_t, uint64_t, size_t, const char *, rbd_completion_t);
    int (*rbd_aio_discard)(rbd_image_t, uint64_t, uint64_t, rbd_completion_t);
    int (*rbd_aio_write_zeroes)(rbd_image_t, uint64_t, size_t, rbd_completion_t, int, int);
    int (*rbd_aio_flush)(rbd_image_t, rbd_completion_t);
    int (*rbd_snap_list)(rbd_image_t, rbd_snap_info_t *, int *);
    void (*rbd_snap_list_end)(rbd_snap_info_t *);
    int (*rbd_snap_get_timestamp)(rbd_image_t, uint64_t, struct timespec *);
    int (*rbd_snap_create)(rbd_image_t, const char *);
    int (*rbd_snap_remove)(rbd_image_t, const char *);
    int (*rbd_diff_iterate2)(rbd_image_t, const char *, uint64_t, uint64_t, uint8_t, uint8_t,
                             int (*)(uint64_t, size_t, int, void *), void *);
} RbdLib;

static RbdLib lib;
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static char lib_error[256];

static void lib_load(void)
{
    void *rados = dlopen("librados.so.2", RTLD_NOW | RTLD_GLOBAL);
    void *rbd = rados ? dlopen("librbd.so.1", RTLD_NOW | RTLD_GLOBAL) : NULL;
    if (!rbd) {
        snprintf(lib_error, sizeof lib_error, "cannot load librbd (Debian package librbd1): %s", dlerror());
        return;
    }
    struct { void *dl; const char *name; void **slot; } syms[] = {
#define R(f) { rados, #f, (void **)&lib.f }
#define B(f) { rbd, #f, (void **)&lib.f }
        R(rados_create), R(rados_conf_read_file), R(rados_conf_parse_env), R(rados_conf_set), R(rados_connect),
        R(rados_shutdown), R(rados_ioctx_create), R(rados_ioctx_destroy), R(rados_ioctx_set_namespace),
        B(rbd_open), B(rbd_open_read_only), B(rbd_close), B(rbd_get_size), B(rbd_stat),
        B(rbd_get_features), B(rbd_get_flags), B(rbd_aio_create_completion),
        B(rbd_aio_get_return_value), B(rbd_aio_release), B(rbd_aio_read), B(rbd_aio_write), B(rbd_aio_discard),
        B(rbd_aio_write_zeroes), B(rbd_aio_flush), B(rbd_snap_list), B(rbd_snap_list_end),
        B(rbd_snap_get_timestamp), B(rbd_snap_create), B(rbd_snap_remove), B(rbd_diff_iterate2),
#undef R
#undef B
    };
    for (size_t i = 0; i < ARRAY_SIZE(syms); i++)
        if (!(*syms[i].slot = dlsym(syms[i].dl, syms[i].name))) {
            snprintf(lib_error, sizeof lib_error, "librbd has no %s", syms[i].name);
            return;
        }
}

/* ---------------------------------------------------------------- the name */

typedef struct RbdSpec {
    char pool[RBD_NAME_MAX], ns[RBD_NAME_MAX], image[RBD_NAME_MAX], snap[RBD_NAME_MAX];
    char conf[RBD_NAME_MAX], id[RBD_NAME_MAX], keyring[RBD_NAME_MAX], key[RBD_NAME_MAX], mon_host[RBD_NAME_MAX];
} RbdSpec;

/* Copies p up to an unescaped character of stop (or the end) into out, without the escapes; returns where it
 * stopped, NULL when out is too small. */
static const char *take(const char *p, const char *stop, char *out, size_t len)
{
    size_t n = 0;
    for (; *p && !strchr(stop, *p); p++) {
        if (*p == '\\' && p[1])
            p++;
        if (n + 1 >= len)
            return NULL;
        out[n++] = *p;
    }
    out[n] = '\0';
    return p;
}

/* rbd:POOL[/NS]/IMAGE[@SNAP][:KEY=VALUE]... into sp; 0, or -EINVAL with the reason in err. */
static int parse_name(const char *name, RbdSpec *sp, Error *err)
{
    char a[RBD_NAME_MAX], b[RBD_NAME_MAX], c[RBD_NAME_MAX];
    memset(sp, 0, sizeof *sp);
    const char *p = name + 4; /* "rbd:" */
    a[0] = b[0] = c[0] = '\0';
    if (!(p = take(p, "/@:", a, sizeof a)) || *p != '/')
        goto bad;
    if (!(p = take(p + 1, "/@:", b, sizeof b)))
        goto bad;
    if (*p == '/' && !(p = take(p + 1, "/@:", c, sizeof c)))
        goto bad;
    if (*p == '/')
        goto bad;
    snprintf(sp->pool, sizeof sp->pool, "%s", a);
    snprintf(sp->ns, sizeof sp->ns, "%s", c[0] ? b : "");
    snprintf(sp->image, sizeof sp->image, "%s", c[0] ? c : b);
    if (*p == '@' && (!(p = take(p + 1, ":", sp->snap, sizeof sp->snap)) || !sp->snap[0]))
        goto bad;
    if (!sp->pool[0] || !sp->image[0])
        goto bad;
    while (*p == ':') {
        char kv[RBD_NAME_MAX];
        if (!(p = take(p + 1, ":", kv, sizeof kv)))
            goto bad;
        char *eq = strchr(kv, '=');
        struct { const char *key; char *out; } keys[] = {
            { "conf", sp->conf }, { "id", sp->id }, { "keyring", sp->keyring }, { "key", sp->key },
            { "mon_host", sp->mon_host },
        };
        size_t i = 0;
        if (eq)
            *eq = '\0';
        while (eq && i < ARRAY_SIZE(keys) && strcmp(kv, keys[i].key) != 0)
            i++;
        if (!eq || i == ARRAY_SIZE(keys)) {
            error_set(err, EINVAL, "rbd option '%s' in the name is not supported (conf, id, keyring, key, mon_host)",
                      kv);
            return -EINVAL;
        }
        snprintf(keys[i].out, RBD_NAME_MAX, "%s", eq + 1);
    }
    return 0;
bad:
    error_set(err, EINVAL, "not an rbd name: rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:KEY=VALUE...]");
    return -EINVAL;
}

/* ---------------------------------------------------------------- the connection, shared with snapshot views */

typedef struct RbdConn {
    rados_t cluster;
    rados_ioctx_t io;
    atomic_int refs;
    /* Opened with a key in its name: who it authenticated as (conf, id, keyring, mon_host) and the key, in
     * the list of such connections. */
    char who[4 * RBD_NAME_MAX + 64], key[RBD_NAME_MAX];
    struct RbdConn *next_keyed;
} RbdConn;

#define RBD_SHOWN_KEY "***"

static pthread_mutex_t keyed_lock = PTHREAD_MUTEX_INITIALIZER;
static RbdConn *keyed;

static void keyed_remove(RbdConn *c)
{
    pthread_mutex_lock(&keyed_lock);
    for (RbdConn **p = &keyed; *p; p = &(*p)->next_keyed)
        if (*p == c) {
            *p = c->next_keyed;
            break;
        }
    pthread_mutex_unlock(&keyed_lock);
    explicit_bzero(c->key, sizeof c->key);
}

/* The key of an open connection that authenticated as who into key (RBD_NAME_MAX bytes); false if none. */
static bool keyed_recall(const char *who, char *key)
{
    bool found = false;
    pthread_mutex_lock(&keyed_lock);
    for (RbdConn *c = keyed; c && !found; c = c->next_keyed)
        if (strcmp(c->who, who) == 0) {
            memcpy(key, c->key, RBD_NAME_MAX);
            found = true;
        }
    pthread_mutex_unlock(&keyed_lock);
    return found;
}

static void conn_unref(RbdConn *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    keyed_remove(c);
    if (c->io)
        lib.rados_ioctx_destroy(c->io);
    if (c->cluster)
        lib.rados_shutdown(c->cluster);
    free(c);
}

static int conf_set(rados_t cl, const char *key, const char *value, Error *err)
{
    int r = value && value[0] ? lib.rados_conf_set(cl, key, value) : 0;
    if (r < 0)
        error_set(err, -r, "cannot set the Ceph option %s: %s", key, strerror(-r));
    return r;
}

/* Reads the configuration (sp's conf, else the usual places), applies sp's and the node's options and the
 * timeouts, connects and opens the pool's I/O context. */
static RbdConn *conn_open(BlockNode *bs, const RbdSpec *sp, int timeout_s, Error *err)
{
    RbdConn *c = calloc(1, sizeof *c);
    if (!c) {
        error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    const char *id = sp->id[0] ? sp->id : bdrv_opt_str(bs, "id");
    const char *conf = sp->conf[0] ? sp->conf : bdrv_opt_str(bs, "conf");
    const char *keyring = sp->keyring[0] ? sp->keyring : bdrv_opt_str(bs, "keyring");
    char t[32];
    snprintf(t, sizeof t, "%d", timeout_s);
    snprintf(c->who, sizeof c->who, "conf=%s\nid=%s\nkeyring=%s\nmon_host=%s", conf ? conf : "", id ? id : "",
             keyring ? keyring : "", sp->mon_host);
    /* A key shown as "***": the one this user gave for an image still open (the overlay of this backing). */
    const char *key = sp->key;
    if (strcmp(key, RBD_SHOWN_KEY) == 0 && keyed_recall(c->who, c->key))
        key = c->key;
    int r = lib.rados_create(&c->cluster, id && id[0] ? id : NULL);
    if (r < 0) {
        error_set(err, -r, "cannot create a Ceph client: %s", strerror(-r));
        c->cluster = NULL;
        conn_unref(c);
        return NULL;
    }
    /* Without a conf option a missing default file is fine (mon_host may say where the cluster is). */
    r = lib.rados_conf_read_file(c->cluster, conf && conf[0] ? conf : NULL);
    if (r < 0 && conf && conf[0])
        error_set(err, -r, "cannot read the Ceph configuration %s: %s", conf, strerror(-r));
    else
        r = lib.rados_conf_parse_env(c->cluster, NULL) < 0 ? 0 : 0; /* CEPH_ARGS, when set */
    const char *const opts[][2] = {
        { "keyring", keyring }, { "key", key }, { "mon_host", sp->mon_host },
        { "rados_osd_op_timeout", t }, { "rados_mon_op_timeout", t }, { "client_mount_timeout", t },
        { "rbd_cache", "false" }, { "log_to_stderr", "false" }, { "err_to_stderr", "false" },
    };
    for (size_t i = 0; r >= 0 && i < ARRAY_SIZE(opts); i++)
        r = conf_set(c->cluster, opts[i][0], opts[i][1], err);
    if (r >= 0 && (r = lib.rados_connect(c->cluster)) < 0)
        error_set(err, -r, "cannot connect to the Ceph cluster: %s", strerror(-r));
    if (r >= 0 && (r = lib.rados_ioctx_create(c->cluster, sp->pool, &c->io)) < 0)
        error_set(err, -r, "pool '%s': %s", sp->pool, strerror(-r));
    if (r < 0) {
        c->io = NULL;
        conn_unref(c);
        return NULL;
    }
    if (sp->ns[0])
        lib.rados_ioctx_set_namespace(c->io, sp->ns);
    if (key[0] && strcmp(key, RBD_SHOWN_KEY) != 0) {
        if (key != c->key)
            snprintf(c->key, sizeof c->key, "%s", key);
        pthread_mutex_lock(&keyed_lock);
        c->next_keyed = keyed;
        keyed = c;
        pthread_mutex_unlock(&keyed_lock);
    }
    return c;
}

/* ---------------------------------------------------------------- requests with a deadline */

typedef struct RbdState {
    RbdConn *conn;
    rbd_image_t image;
    char image_name[RBD_NAME_MAX], snap[RBD_NAME_MAX];
    int timeout_ms;
    int64_t size;
    int64_t status_max; /* the range one block status asks about: RBD_STATUS_OBJECTS objects */
    bool fast_diff;     /* a valid object map with fast-diff: which objects exist is known without asking */
    atomic_int diffs;   /* block-status threads still using image */
} RbdState;

static const BlockOptionSpec rbd_options[] = {
    { "timeout", BDRV_OPT_INT, 0, "seconds a request may take before it fails with EIO (default 30)" },
    { "conf", BDRV_OPT_STRING, 0, "the Ceph configuration file (default: CEPH_CONF, /etc/ceph/ceph.conf)" },
    { "id", BDRV_OPT_STRING, 0, "the Ceph user, without 'client.' (default: admin)" },
    { "keyring", BDRV_OPT_STRING, 0, "the keyring file of that user (default: as ceph.conf says)" },
    { NULL, 0, 0, NULL }
};

/* One librbd request: the caller waits until done or its deadline; a request given up on (abandoned) is
 * freed, with its buffer, by the completion when librbd ends it. */
typedef struct RbdReq {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done, abandoned;
    ssize_t ret;
    char *buf;
} RbdReq;

static void req_free(RbdReq *q)
{
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q->buf);
    free(q);
}

/* Ends q with ret; frees it when its caller gave up on it. */
static void req_done(RbdReq *q, ssize_t ret)
{
    pthread_mutex_lock(&q->lock);
    q->ret = ret;
    q->done = true;
    bool gone = q->abandoned;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    if (gone)
        req_free(q);
}

static void req_complete(rbd_completion_t c, void *arg)
{
    ssize_t ret = lib.rbd_aio_get_return_value(c);
    lib.rbd_aio_release(c);
    req_done(arg, ret);
}

static RbdReq *req_new(int64_t bytes)
{
    RbdReq *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&q->lock, NULL);
    if (bytes > 0 && !(q->buf = malloc((size_t)bytes))) {
        req_free(q);
        return NULL;
    }
    return q;
}

/* Waits for q until timeout_ms: its result (0 or -errno), or -EIO when the deadline passed (q is then left
 * to its completion). Frees q otherwise, after copying a read's bytes to out (NULL: none). */
static int req_wait(BlockNode *bs, RbdReq *q, void *out, int64_t bytes, const char *what)
{
    RbdState *s = bs->opaque;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += s->timeout_ms / 1000;
    int r = 0;
    pthread_mutex_lock(&q->lock);
    while (!q->done && r != ETIMEDOUT)
        r = pthread_cond_timedwait(&q->cond, &q->lock, &ts);
    if (!q->done) {
        q->abandoned = true;
        pthread_mutex_unlock(&q->lock);
        log_msg("%s: %s: the cluster did not answer within %d s", bs->node_name, what, s->timeout_ms / 1000);
        return -EIO;
    }
    pthread_mutex_unlock(&q->lock);
    ssize_t ret = q->ret;
    if (ret >= 0 && out)
        memcpy(out, q->buf, (size_t)bytes);
    req_free(q);
    if (ret < 0)
        log_debug("%s: %s: %s", bs->node_name, what, strerror((int)-ret));
    return ret < 0 ? (ret == -ETIMEDOUT ? -EIO : (int)ret) : 0;
}

typedef enum { RBD_OP_READ, RBD_OP_WRITE, RBD_OP_DISCARD, RBD_OP_ZERO, RBD_OP_FLUSH } RbdOp;

static int rbd_request(BlockNode *bs, RbdOp op, int64_t offset, int64_t bytes, void *buf)
{
    static const char *const names[] = { "read", "write", "discard", "write zeroes", "flush" };
    RbdState *s = bs->opaque;
    bool has_buf = op == RBD_OP_READ || op == RBD_OP_WRITE;
    RbdReq *q = req_new(has_buf ? bytes : 0);
    rbd_completion_t c;
    if (!q)
        return -ENOMEM;
    if (op == RBD_OP_WRITE)
        memcpy(q->buf, buf, (size_t)bytes);
    int r = lib.rbd_aio_create_completion(q, req_complete, &c);
    if (r < 0) {
        req_free(q);
        return r;
    }
    uint64_t off = (uint64_t)offset, len = (uint64_t)bytes;
    switch (op) {
    case RBD_OP_READ: r = lib.rbd_aio_read(s->image, off, len, q->buf, c); break;
    case RBD_OP_WRITE: r = lib.rbd_aio_write(s->image, off, len, q->buf, c); break;
    case RBD_OP_DISCARD: r = lib.rbd_aio_discard(s->image, off, len, c); break;
    case RBD_OP_ZERO: r = lib.rbd_aio_write_zeroes(s->image, off, len, c, 0, 0); break;
    default: r = lib.rbd_aio_flush(s->image, c); break;
    }
    if (r < 0) {
        lib.rbd_aio_release(c);
        req_free(q);
        return r;
    }
    return req_wait(bs, q, op == RBD_OP_READ ? buf : NULL, bytes, names[op]);
}

static int rbd_node_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return rbd_request(bs, RBD_OP_READ, offset, bytes, buf);
}

static int rbd_node_flush(BlockNode *bs)
{
    return bs->read_only ? 0 : rbd_request(bs, RBD_OP_FLUSH, 0, 0, NULL);
}

static int rbd_node_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    int r = rbd_request(bs, RBD_OP_WRITE, offset, bytes, (void *)buf);
    return r == 0 && (flags & BDRV_REQ_FUA) ? rbd_node_flush(bs) : r;
}

static int rbd_node_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    int r = rbd_request(bs, RBD_OP_ZERO, offset, bytes, NULL);
    return r == 0 && (flags & BDRV_REQ_FUA) ? rbd_node_flush(bs) : r;
}

static int rbd_node_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    return rbd_request(bs, RBD_OP_DISCARD, offset, bytes, NULL);
}

/* ---------------------------------------------------------------- block status */

typedef struct RbdExtent {
    uint64_t start, end;
} RbdExtent;

/* One block-status request: librbd's synchronous diff runs on a thread of its own, so that the caller waits
 * no longer than any other request. Only the RBD_MAX_EXTENTS lowest extents are kept: [offset, limit) is
 * known exactly. */
typedef struct RbdDiff {
    rbd_image_t image;
    atomic_int *running;
    uint64_t offset, len, limit;
    bool whole_object;
    int n;
    RbdExtent ext[RBD_MAX_EXTENTS];
} RbdDiff;

static int extent_cmp(const void *a, const void *b)
{
    const RbdExtent *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Sorts and merges d's extents (librbd may report adjacent pieces apart, and objects out of order). */
static void diff_compact(RbdDiff *d)
{
    int m = 0;
    qsort(d->ext, (size_t)d->n, sizeof *d->ext, extent_cmp);
    for (int i = 0; i < d->n; i++) {
        if (m > 0 && d->ext[i].start <= d->ext[m - 1].end)
            d->ext[m - 1].end = MAX(d->ext[m - 1].end, d->ext[i].end);
        else
            d->ext[m++] = d->ext[i];
    }
    d->n = m;
}

/* librbd's callback: one extent that exists (from the image's creation, so exists=0 is a hole). */
static int diff_extent(uint64_t offset, size_t len, int exists, void *arg)
{
    RbdDiff *d = arg;
    uint64_t start = MAX(offset, d->offset), end = offset + MIN(len, UINT64_MAX - offset);
    end = MIN(end, d->limit);
    if (!exists || start >= end)
        return 0;
    if (d->n == RBD_MAX_EXTENTS) {
        diff_compact(d);
        if (d->n > RBD_MAX_EXTENTS / 2) { /* keep the lower half: what lies above is learnt by the next call */
            d->limit = d->ext[RBD_MAX_EXTENTS / 2].start;
            d->n = RBD_MAX_EXTENTS / 2;
            if (start >= d->limit)
                return 0;
            end = MIN(end, d->limit);
        }
    }
    d->ext[d->n++] = (RbdExtent){ start, end };
    return 0;
}

static void *diff_thread(void *arg)
{
    RbdReq *q = arg;
    RbdDiff *d = (RbdDiff *)q->buf;
    int r = lib.rbd_diff_iterate2(d->image, NULL, d->offset, d->len, 1, d->whole_object, diff_extent, d);
    atomic_fetch_sub(d->running, 1); /* the image is no longer used: the node may close */
    req_done(q, r);
    return NULL;
}

/* The extents of [offset, offset+bytes) (whole objects: those that exist) into *d, within the node's
 * deadline. */
static int diff_request(BlockNode *bs, int64_t offset, int64_t bytes, bool whole_object, RbdDiff *d)
{
    RbdState *s = bs->opaque;
    RbdReq *q = req_new((int64_t)sizeof *d);
    if (!q)
        return -ENOMEM;
    RbdDiff *qd = (RbdDiff *)q->buf;
    qd->image = s->image;
    qd->running = &s->diffs;
    qd->offset = (uint64_t)offset;
    qd->len = (uint64_t)bytes;
    qd->limit = (uint64_t)offset + (uint64_t)bytes;
    qd->whole_object = whole_object;
    qd->n = 0;
    pthread_attr_t a;
    pthread_t t;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    atomic_fetch_add(&s->diffs, 1);
    int r = pthread_create(&t, &a, diff_thread, q);
    pthread_attr_destroy(&a);
    if (r != 0) {
        atomic_fetch_sub(&s->diffs, 1);
        req_free(q);
        return -r;
    }
    return req_wait(bs, q, d, (int64_t)sizeof *d, "block status");
}

/* Where d's run at off ends (> off), and whether it is data. */
static uint64_t diff_answer(RbdDiff *d, uint64_t off, bool *data)
{
    diff_compact(d);
    *data = false;
    for (int i = 0; i < d->n; i++) {
        if (d->ext[i].start > off)
            return MIN(d->limit, d->ext[i].start);
        if (d->ext[i].end > off) {
            *data = true;
            return MIN(d->limit, d->ext[i].end);
        }
    }
    return d->limit;
}

/* What [offset, offset+bytes) is, from at most s->status_max of it: data where an extent exists, zero
 * elsewhere (an object never written, or discarded). With fast-diff the objects that exist are learnt first,
 * over a wider range, from the object map: a hole between them costs one question. */
static int rbd_node_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    RbdState *s = bs->opaque;
    RbdDiff *d = malloc(sizeof *d);
    uint64_t off = (uint64_t)offset, end = 0;
    bool data = true;
    int r = d ? 0 : -ENOMEM;
    if (r == 0 && s->fast_diff) {
        r = diff_request(bs, offset, MIN(bytes, s->status_max * RBD_FAST_STATUS_SPAN), true, d);
        if (r == 0 && (end = diff_answer(d, off, &data)) - off < (uint64_t)bytes)
            bytes = (int64_t)(end - off);
    }
    if (r == 0 && data && (r = diff_request(bs, offset, MIN(bytes, s->status_max), false, d)) == 0)
        end = diff_answer(d, off, &data);
    free(d);
    if (r < 0)
        return r;
    st->flags = (data ? BDRV_BLOCK_DATA : BDRV_BLOCK_ZERO) | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    st->bytes = (int64_t)(end - off);
    st->host_offset = offset;
    st->host_file = bs;
    return 0;
}

static int64_t rbd_getlength(BlockNode *bs)
{
    RbdState *s = bs->opaque;
    return s->size;
}

/* ---------------------------------------------------------------- open, close */

static void rbd_close_node(BlockNode *bs)
{
    RbdState *s = bs->opaque;
    while (atomic_load(&s->diffs) > 0) /* a block status given up on: librados' own timeouts end it */
        nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
    if (s->image)
        lib.rbd_close(s->image);
    s->image = NULL;
    conn_unref(s->conn);
    s->conn = NULL;
}

/* Opens image (at snap, NULL: the head) on the node's connection and learns its size. */
static int image_open(BlockNode *bs, const char *snap, Error *err)
{
    RbdState *s = bs->opaque;
    int r = bs->read_only ? lib.rbd_open_read_only(s->conn->io, s->image_name, &s->image, snap)
                          : lib.rbd_open(s->conn->io, s->image_name, &s->image, snap);
    uint64_t size = 0;
    if (r < 0) {
        s->image = NULL;
        error_set(err, -r, "image '%s%s%s': %s", s->image_name, snap ? "@" : "", snap ? snap : "", strerror(-r));
        return r;
    }
    if ((r = lib.rbd_get_size(s->image, &size)) < 0 || size > INT64_MAX) {
        error_set(err, EIO, "cannot get the image's size: %s", strerror(r < 0 ? -r : EOVERFLOW));
        return -EIO;
    }
    s->size = (int64_t)size;
    rbd_image_info_t info;
    uint64_t obj = lib.rbd_stat(s->image, &info, sizeof info) == 0 ? info.obj_size : 0;
    s->status_max = obj && obj <= (uint64_t)RBD_MAX_STATUS / RBD_STATUS_OBJECTS ? (int64_t)obj * RBD_STATUS_OBJECTS
                                                                              : RBD_MAX_STATUS;
    uint64_t features = 0, flags = 0;
    s->fast_diff = lib.rbd_get_features(s->image, &features) == 0 && (features & RBD_FEATURE_FAST_DIFF) &&
                   lib.rbd_get_flags(s->image, &flags) == 0 &&
                   !(flags & (RBD_FLAG_FAST_DIFF_INVALID | RBD_FLAG_OBJECT_MAP_INVALID));
    snprintf(s->snap, sizeof s->snap, "%s", snap ? snap : "");
    bs->max_transfer = RBD_MAX_REQUEST;
    return 0;
}

/* The node's name with the key of the name masked: "key=***". */
static int redact_node_name(BlockNode *bs)
{
    char shown[PATH_MAX];
    if (!bdrv_url_redact(bs->filename, shown, sizeof shown))
        return 0;
    char *f = strdup(shown), *n = strdup(path_base_of(shown));
    if (!f || !n) {
        free(f);
        free(n);
        return -ENOMEM;
    }
    free(bs->filename);
    free(bs->node_name);
    bs->filename = f;
    bs->node_name = n;
    return 0;
}

static int rbd_node_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    (void)opts;
    RbdState *s = bs->opaque;
    RbdSpec *sp = calloc(1, sizeof *sp);
    char *name = strdup(bs->filename);
    int r = sp && name ? redact_node_name(bs) : -ENOMEM; /* before any message names the node */
    if (r == 0)
        r = parse_name(name, sp, err);
    if (name)
        explicit_bzero(name, strlen(name));
    free(name);
    int64_t t = bdrv_opt_int(bs, "timeout", RBD_DEFAULT_TIMEOUT);
    if (r == 0 && (t < 1 || t > RBD_MAX_TIMEOUT)) {
        error_set(err, EINVAL, "rbd option 'timeout': %lld is not between 1 and %d seconds", (long long)t,
                  RBD_MAX_TIMEOUT);
        r = -EINVAL;
    }
    if (r == 0 && sp->snap[0] && !bs->read_only) {
        error_set(err, EROFS, "snapshot '%s' is read-only", sp->snap);
        r = -EROFS;
    }
    pthread_once(&lib_once, lib_load);
    if (r == 0 && lib_error[0]) {
        error_set(err, ENOTSUP, "%s", lib_error);
        r = -ENOTSUP;
    }
    s->timeout_ms = (int)t * 1000;
    if (r == 0 && !(s->conn = conn_open(bs, sp, (int)t, err)))
        r = -EIO;
    if (r == 0) {
        snprintf(s->image_name, sizeof s->image_name, "%s", sp->image);
        r = image_open(bs, sp->snap[0] ? sp->snap : NULL, err);
    }
    if (sp)
        explicit_bzero(sp->key, sizeof sp->key);
    free(sp);
    if (r < 0)
        rbd_close_node(bs); /* the core calls close only for nodes that opened */
    return r < 0 && r != -ENOMEM && r != -EINVAL && r != -EROFS && r != -ENOTSUP && r != -ENOENT ? -EIO : r;
}

/* ---------------------------------------------------------------- snapshots */

static int rbd_snapshot_list(BlockNode *bs, SnapshotInfo **list)
{
    RbdState *s = bs->opaque;
    int max = 16, n;
    rbd_snap_info_t *snaps = NULL;
    for (;;) {
        free(snaps);
        if (!(snaps = calloc((size_t)max, sizeof *snaps)))
            return -ENOMEM;
        n = lib.rbd_snap_list(s->image, snaps, &max);
        if (n != -ERANGE || max > RBD_MAX_SNAPSHOTS)
            break;
    }
    if (n < 0) {
        free(snaps);
        return n == -ERANGE ? -EFBIG : n;
    }
    SnapshotInfo *out = calloc((size_t)(n ? n : 1), sizeof *out);
    for (int i = 0; out && i < n; i++) {
        struct timespec ts = { 0 };
        snprintf(out[i].id, sizeof out[i].id, "%s", snaps[i].name);
        snprintf(out[i].name, sizeof out[i].name, "%s", snaps[i].name);
        out[i].disk_size = snaps[i].size;
        if (lib.rbd_snap_get_timestamp(s->image, snaps[i].id, &ts) == 0) {
            out[i].date_sec = (uint64_t)ts.tv_sec;
            out[i].date_nsec = (uint32_t)ts.tv_nsec;
        }
    }
    lib.rbd_snap_list_end(snaps);
    free(snaps);
    if (!out)
        return -ENOMEM;
    *list = out;
    return n;
}

/* A read-only node of the image at snapshot id, on the same connection. */
static BlockNode *rbd_snapshot_open(BlockNode *bs, const char *id, Error *err)
{
    RbdState *s = bs->opaque;
    BlockNode *v = bdrv_new_node(bs->drv, bs->filename);
    if (!v) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return NULL;
    }
    RbdState *vs = v->opaque;
    v->read_only = true;
    v->opts = bs->opts;
    vs->conn = s->conn;
    atomic_fetch_add(&vs->conn->refs, 1);
    vs->timeout_ms = s->timeout_ms;
    snprintf(vs->image_name, sizeof vs->image_name, "%s", s->image_name);
    Error e = { 0 };
    if (image_open(v, id, &e) < 0) {
        error_set(err, e.errnum, "%s: %s", bs->filename, e.msg);
        bdrv_close(v); /* rbd_close_node frees what image_open left */
        return NULL;
    }
    return v;
}

static int rbd_snapshot_create(BlockNode *bs, const char *name, Error *err)
{
    RbdState *s = bs->opaque;
    int r = lib.rbd_snap_create(s->image, name);
    if (r < 0)
        error_set(err, -r, "%s: cannot create snapshot '%s': %s", bs->filename, name, strerror(-r));
    return r;
}

static int rbd_snapshot_delete(BlockNode *bs, const char *id_or_name, Error *err)
{
    RbdState *s = bs->opaque;
    int r = lib.rbd_snap_remove(s->image, id_or_name);
    if (r < 0)
        error_set(err, -r, "%s: cannot remove snapshot '%s': %s", bs->filename, id_or_name, strerror(-r));
    return r;
}

static void rbd_get_info(BlockNode *bs, InfoList *info)
{
    RbdState *s = bs->opaque;
    info_add_int(info, "rbd_timeout", s->timeout_ms / 1000);
    if (s->snap[0])
        info_add_str(info, "rbd_snapshot", "%s", s->snap);
}

const BlockDriver bdrv_rbd = {
    .name = "rbd",
    .instance_size = sizeof(RbdState),
    .is_protocol = true,
    .options = rbd_options,
    .open = rbd_node_open,
    .close = rbd_close_node,
    .read = rbd_node_read,
    .write = rbd_node_write,
    .write_zeroes = rbd_node_write_zeroes,
    .discard = rbd_node_discard,
    .flush = rbd_node_flush,
    .block_status = rbd_node_block_status,
    .getlength = rbd_getlength,
    .snapshot_list = rbd_snapshot_list,
    .snapshot_open = rbd_snapshot_open,
    .snapshot_create = rbd_snapshot_create,
    .snapshot_delete = rbd_snapshot_delete,
    .get_info = rbd_get_info,
};
