/* SPDX-License-Identifier: MIT */
/*
 * block.c - the block layer core: node life cycle, the I/O dispatch below the request-path features
 * (request alignment with bounce buffers and read-modify-write, tracked requests, max_transfer
 * splitting, zeros beyond a node's end, read-only enforcement, statistics), block status through the
 * chain, info, create and the snapshot wrappers.  Opening images and chains lives in lib/open.c, the
 * root node's request-path features (copy-on-read, detect-zeroes, throttling, read-error tolerance) in
 * lib/request.c.  It knows no format and no FUSE.
 */
#include "block_int.h"
#include "request.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOUNCE_CHUNK (1 * MiB)

/* ---------------------------------------------------------------- nodes */

BlockNode *bdrv_new_node(const BlockDriver *drv, const char *filename)
{
    BlockNode *bs = calloc(1, sizeof(*bs));
    if (!bs)
        return NULL;
    bs->core = calloc(1, sizeof(*bs->core));
    bs->opaque = drv->instance_size ? calloc(1, drv->instance_size) : NULL;
    bs->filename = strdup(filename ? filename : "");
    bs->node_name = strdup(path_base_of(filename ? filename : ""));
    if (!bs->core || (drv->instance_size && !bs->opaque) || !bs->filename || !bs->node_name) {
        free(bs->core);
        free(bs->opaque);
        free(bs->filename);
        free(bs->node_name);
        free(bs);
        return NULL;
    }
    bs->drv = drv;
    bs->request_alignment = 1;
    bs->core->refcnt = 1;
    pthread_mutex_init(&bs->core->req_lock, NULL);
    pthread_cond_init(&bs->core->req_cond, NULL);
    pthread_mutex_init(&bs->core->stats_lock, NULL);
    return bs;
}

/* Frees a node whose driver was never opened (or already closed). */
void bdrv_free_node(BlockNode *bs)
{
    if (!bs)
        return;
    request_state_free(bs);
    pthread_mutex_destroy(&bs->core->req_lock);
    pthread_cond_destroy(&bs->core->req_cond);
    pthread_mutex_destroy(&bs->core->stats_lock);
    free(bs->opaque);
    free(bs->filename);
    free(bs->node_name);
    free(bs->backing_name);
    free(bs->backing_format_hint);
    for (int i = 0; i < BDRV_MAX_BACKING_CANDIDATES; i++)
        free(bs->backing_candidates[i]);
    free(bs->backing_search_suffix);
    free(bs->backing_resolved);
    free(bs->backing_note);
    if (bs->core) {
        free(bs->core->owned_opts);
        free(bs->core->backing_override);
    }
    free(bs->core);
    free(bs);
}

void bdrv_ref(BlockNode *bs)
{
    if (bs)
        __atomic_add_fetch(&bs->core->refcnt, 1, __ATOMIC_SEQ_CST);
}

static bool bdrv_unref(BlockNode *bs)
{
    return __atomic_sub_fetch(&bs->core->refcnt, 1, __ATOMIC_SEQ_CST) == 0;
}

/* Closes one node and its file child; the backing chain is handled iteratively by bdrv_close. */
static void close_one(BlockNode *bs)
{
    if (!bs->read_only)
        bdrv_flush(bs);
    if (bs->drv->close)
        bs->drv->close(bs);
    BlockNode *file = bs->file;
    bs->file = NULL;
    if (file)
        bdrv_close(file);
    for (int i = 0; bs->core && i < bs->core->n_dropped; i++)
        bdrv_close(bs->core->dropped[i]);
    bdrv_free_node(bs);
}

void bdrv_close(BlockNode *bs)
{
    while (bs && bdrv_unref(bs)) {
        BlockNode *next = bs->backing;
        bs->backing = NULL;
        close_one(bs);
        bs = next;
    }
}

int bdrv_chain_length(BlockNode *bs)
{
    int n = 0;
    for (; bs; bs = bs->backing)
        n++;
    return n;
}

/* ---------------------------------------------------------------- tracked requests */

static bool tracked_conflict(BlockNode *bs, const TrackedRequest *req)
{
    for (TrackedRequest *t = bs->core->tracked; t; t = t->next)
        if (t->seq < req->seq && (t->serialising || req->serialising) &&
            ranges_overlap(t->offset, t->bytes, req->offset, req->bytes))
            return true;
    return false;
}

void tracked_begin(BlockNode *bs, TrackedRequest *req, int64_t offset, int64_t bytes, bool serialising)
{
    req->offset = offset;
    req->bytes = bytes;
    req->serialising = serialising;
    pthread_mutex_lock(&bs->core->req_lock);
    req->seq = bs->core->next_seq++;
    req->next = bs->core->tracked;
    bs->core->tracked = req;
    while (tracked_conflict(bs, req))
        pthread_cond_wait(&bs->core->req_cond, &bs->core->req_lock);
    pthread_mutex_unlock(&bs->core->req_lock);
}

void tracked_end(BlockNode *bs, TrackedRequest *req)
{
    pthread_mutex_lock(&bs->core->req_lock);
    for (TrackedRequest **p = &bs->core->tracked; *p; p = &(*p)->next) {
        if (*p == req) {
            *p = req->next;
            break;
        }
    }
    pthread_cond_broadcast(&bs->core->req_cond);
    pthread_mutex_unlock(&bs->core->req_lock);
}

/* ---------------------------------------------------------------- statistics */

static void count_op(uint64_t *ops, uint64_t *total, int64_t bytes)
{
    (*ops)++;
    *total += (uint64_t)bytes;
}

static void time_op(uint64_t *ns_total, uint64_t *ns_max, uint64_t ns)
{
    *ns_total += ns;
    *ns_max = MAX(*ns_max, ns);
}

/* Set while the calling thread reads for the core itself (the partition-table probe): not counted, and
 * not copied up by copy-on-read (lib/request.c). */
static _Thread_local bool core_io;

void core_own_io(bool on)
{
    core_io = on;
}

bool core_own_io_active(void)
{
    return core_io;
}

void stats_account(BlockNode *bs, int kind, int64_t bytes, uint64_t ns, int ret)
{
    if (core_io)
        return;
    BlockStats *s = &bs->core->stats;
    pthread_mutex_lock(&bs->core->stats_lock);
    if (ret < 0) {
        s->errors++;
    } else {
        switch (kind) {
        case STAT_READ:
            count_op(&s->rd_ops, &s->rd_bytes, bytes);
            time_op(&s->rd_ns_total, &s->rd_ns_max, ns);
            break;
        case STAT_WRITE:
            count_op(&s->wr_ops, &s->wr_bytes, bytes);
            time_op(&s->wr_ns_total, &s->wr_ns_max, ns);
            break;
        case STAT_FLUSH: s->flush_ops++; break;
        case STAT_DISCARD: count_op(&s->discard_ops, &s->discard_bytes, bytes); break;
        case STAT_ZERO: count_op(&s->zero_ops, &s->zero_bytes, bytes); break;
        }
    }
    pthread_mutex_unlock(&bs->core->stats_lock);
}

void bdrv_stats_snapshot(BlockNode *bs, BlockStats *out)
{
    pthread_mutex_lock(&bs->core->stats_lock);
    *out = bs->core->stats;
    pthread_mutex_unlock(&bs->core->stats_lock);
}

/* ---------------------------------------------------------------- driver calls, split at max_transfer */

static int64_t transfer_limit(BlockNode *bs)
{
    int64_t align = bs->request_alignment > 1 ? bs->request_alignment : 1;
    int64_t max = bs->max_transfer > 0 ? align_down(bs->max_transfer, align) : 0;
    if (max <= 0)
        max = bs->max_transfer > 0 ? align : INT64_MAX;
    return max;
}

/* A read or write in pieces of at most the node's transfer limit (p is only read from when writing). */
static int drv_rw(BlockNode *bs, bool write, int64_t offset, int64_t bytes, uint8_t *p, int flags)
{
    int64_t max = transfer_limit(bs);
    while (bytes > 0) {
        int64_t n = MIN(bytes, max);
        int r = write ? bs->drv->write(bs, offset, n, p, flags) : bs->drv->read(bs, offset, n, p);
        if (r < 0)
            return r;
        offset += n;
        p += n;
        bytes -= n;
    }
    return 0;
}

static int drv_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return drv_rw(bs, false, offset, bytes, buf, 0);
}

static int drv_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    return drv_rw(bs, true, offset, bytes, (uint8_t *)buf, flags);
}

static bool is_aligned(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf)
{
    uint32_t a = bs->request_alignment;
    return a <= 1 || (offset % a == 0 && bytes % a == 0 && (uintptr_t)buf % a == 0);
}

static void *bounce_alloc(BlockNode *bs, int64_t size)
{
    size_t a = MAX(bs->request_alignment, 4096u);
    void *p = NULL;
    if (posix_memalign(&p, a, (size_t)size) != 0)
        return NULL;
    return p;
}

static int64_t bounce_chunk(BlockNode *bs)
{
    return MAX(align_down(BOUNCE_CHUNK, bs->request_alignment), (int64_t)bs->request_alignment);
}

static int check_request(BlockNode *bs, int64_t offset, int64_t bytes)
{
    int64_t end;
    if (!bs || !bs->drv || offset < 0 || bytes < 0 || !add_ok_i64(offset, bytes, &end))
        return -EINVAL;
    return 0;
}

/* ---------------------------------------------------------------- read */

static int aligned_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    if (is_aligned(bs, offset, bytes, buf))
        return drv_read(bs, offset, bytes, buf);
    int64_t a = bs->request_alignment;
    int64_t chunk = MIN(bounce_chunk(bs), align_up(offset + bytes, a) - align_down(offset, a));
    uint8_t *bounce = bounce_alloc(bs, chunk);
    if (!bounce)
        return -ENOMEM;
    uint8_t *p = buf;
    int r = 0;
    while (bytes > 0) {
        int64_t start = align_down(offset, a);
        int64_t end = MIN(align_up(offset + bytes, a), start + chunk);
        r = drv_read(bs, start, end - start, bounce);
        if (r < 0)
            break;
        int64_t n = MIN(end - offset, bytes);
        memcpy(p, bounce + (offset - start), (size_t)n);
        offset += n;
        p += n;
        bytes -= n;
    }
    free(bounce);
    return r;
}

/* Reads below the request-path features: zeros beyond the end of format and filter nodes (protocol
 * drivers return zeros beyond their end themselves), alignment, splitting. */
int bdrv_co_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    int r = check_request(bs, offset, bytes);
    if (r < 0 || bytes == 0)
        return r;
    if (!bs->drv->read)
        return -ENOTSUP;
    if (!bs->drv->is_protocol) {
        int64_t len = bdrv_getlength(bs);
        if (len < 0)
            return (int)len;
        if (offset >= len) {
            memset(buf, 0, (size_t)bytes);
            return 0;
        }
        if (offset + bytes > len) {
            memset((uint8_t *)buf + (len - offset), 0, (size_t)(offset + bytes - len));
            bytes = len - offset;
        }
    }
    return aligned_read(bs, offset, bytes, buf);
}

int bdrv_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    if (check_request(bs, offset, bytes) < 0)
        return -EINVAL;
    uint64_t t0 = now_ns();
    int r = bs->core->req ? request_read(bs, offset, bytes, buf) : bdrv_co_read(bs, offset, bytes, buf);
    stats_account(bs, STAT_READ, bytes, now_ns() - t0, r);
    return r < 0 ? r : 0;
}

int bdrv_file_size(BlockNode *file, int64_t *size, Error *err)
{
    int64_t len = bdrv_getlength(file);
    *size = len < 0 ? 0 : len;
    if (len < 0)
        error_set(err, (int)-len, "cannot get the file size: %s", strerror((int)-len));
    return len < 0 ? (int)len : 0;
}

int bdrv_read_header(BlockNode *file, uint64_t file_size, void *buf, size_t len, const char *name, Error *err)
{
    if (file_size < len) {
        error_set(err, EINVAL, "file too short for a %s header (%" PRIu64 " bytes)", name, file_size);
        return -EINVAL;
    }
    int ret = bdrv_pread(file, 0, (int64_t)len, buf);
    if (ret < 0)
        error_set(err, -ret, "cannot read the %s header: %s", name, strerror(-ret));
    return ret;
}

/* ---------------------------------------------------------------- write */

int bdrv_pwrite_field(BlockNode *file, int64_t offset, BlockFieldType type, uint64_t value, const char *event)
{
    uint8_t buf[8];
    int len = type == BDRV_FIELD_LE32 || type == BDRV_FIELD_BE32 ? 4 : 8;
    switch (type) {
    case BDRV_FIELD_LE32:
        st_le32(buf, (uint32_t)value);
        break;
    case BDRV_FIELD_LE64:
        st_le64(buf, value);
        break;
    case BDRV_FIELD_BE32:
        st_be32(buf, (uint32_t)value);
        break;
    case BDRV_FIELD_BE64:
        st_be64(buf, value);
        break;
    }
    if (event)
        bdrv_debug_event(file, event);
    return bdrv_pwrite(file, offset, len, buf, 0);
}

/* One bounce chunk of an unaligned write: read the partial head/tail blocks, merge, write. The caller
 * holds a serialising tracked request over [start, end). */
static int rmw_chunk(BlockNode *bs, int64_t start, int64_t end, int64_t offset, int64_t n,
                     const uint8_t *src, uint8_t *bounce, int flags)
{
    int64_t a = bs->request_alignment;
    int r;
    if (offset > start) {
        r = drv_read(bs, start, a, bounce);
        if (r < 0)
            return r;
    }
    if (offset + n < end && (end - a > start || offset == start)) {
        r = drv_read(bs, end - a, a, bounce + (end - a - start));
        if (r < 0)
            return r;
    }
    memcpy(bounce + (offset - start), src, (size_t)n);
    return drv_write(bs, start, end - start, bounce, flags);
}

static int aligned_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    TrackedRequest req;
    bool serialised = flags & BDRV_REQ_NO_SERIALISE;
    flags &= BDRV_REQ_DRIVER_MASK;
    if (is_aligned(bs, offset, bytes, buf)) {
        if ((bs->request_alignment <= 1 && !bs->core->track_writes) || serialised)
            return drv_write(bs, offset, bytes, buf, flags);
        tracked_begin(bs, &req, offset, bytes, false);
        int r = drv_write(bs, offset, bytes, buf, flags);
        tracked_end(bs, &req);
        return r;
    }
    int64_t a = bs->request_alignment;
    int64_t chunk = MIN(bounce_chunk(bs), align_up(offset + bytes, a) - align_down(offset, a));
    uint8_t *bounce = bounce_alloc(bs, chunk);
    if (!bounce)
        return -ENOMEM;
    const uint8_t *p = buf;
    int r = 0;
    while (bytes > 0 && r == 0) {
        int64_t start = align_down(offset, a);
        int64_t end = MIN(align_up(offset + bytes, a), start + chunk);
        int64_t n = MIN(end - offset, bytes);
        if (!serialised) /* else the caller's serialising request covers it (copy-on-read) */
            tracked_begin(bs, &req, start, end - start, true);
        int64_t len_before = bs->drv->is_protocol ? bdrv_getlength(bs) : -1;
        r = rmw_chunk(bs, start, end, offset, n, p, bounce, flags);
        if (r == 0 && len_before >= 0 && end > MAX(len_before, offset + n) && bs->drv->truncate) {
            /* Whole blocks were written past the end of an odd-sized file: keep its exact size. */
            r = bs->drv->truncate(bs, MAX(len_before, offset + n));
        }
        if (!serialised)
            tracked_end(bs, &req);
        offset += n;
        p += n;
        bytes -= n;
    }
    free(bounce);
    return r;
}

static int check_write(BlockNode *bs, int64_t offset, int64_t bytes)
{
    int r = check_request(bs, offset, bytes);
    if (r < 0)
        return r;
    if (bs->read_only)
        return -EROFS;
    /* Format nodes have a fixed end; protocol nodes grow, and so do filters over them (blkdebug). */
    if (!bs->drv->is_protocol && !bs->drv->is_filter && bytes > 0) {
        int64_t len = bdrv_getlength(bs);
        if (len < 0)
            return (int)len;
        if (offset + bytes > len)
            return -ENOSPC;
    }
    return 0;
}

int bdrv_co_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    int r = check_write(bs, offset, bytes);
    if (r < 0 || bytes == 0)
        return r;
    if (!bs->drv->write)
        return -ENOTSUP;
    return aligned_write(bs, offset, bytes, buf, flags);
}

int bdrv_pwrite(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    if (check_request(bs, offset, bytes) < 0)
        return -EINVAL;
    uint64_t t0 = now_ns();
    int r = __atomic_load_n(&bs->core->mirror_target, __ATOMIC_ACQUIRE)
                ? job_mirrored_op(bs, STAT_WRITE, offset, bytes, buf, flags & BDRV_REQ_DRIVER_MASK)
            : bs->core->req ? request_write(bs, offset, bytes, buf, flags & BDRV_REQ_DRIVER_MASK)
                            : bdrv_co_write(bs, offset, bytes, buf, flags & BDRV_REQ_DRIVER_MASK);
    stats_account(bs, STAT_WRITE, bytes, now_ns() - t0, r);
    return r < 0 ? r : 0;
}

int bdrv_change_backing_file(BlockNode *bs, const char *name, const char *format)
{
    if (!bs->drv->change_backing_file)
        return -ENOTSUP;
    if (bs->read_only)
        return -EROFS;
    return bs->drv->change_backing_file(bs, name, format);
}

int bdrv_make_empty(BlockNode *bs)
{
    if (!bs->drv->make_empty)
        return -ENOTSUP;
    if (bs->read_only)
        return -EROFS;
    return bs->drv->make_empty(bs);
}

int bdrv_amend(BlockNode *bs, const char *options, Error *err)
{
    if (!bs->drv->amend) {
        error_set(err, ENOTSUP, "%s: format '%s' has no options to amend", bs->filename, bs->drv->name);
        return -ENOTSUP;
    }
    if (bs->read_only) {
        error_set(err, EROFS, "%s: opened read-only", bs->filename);
        return -EROFS;
    }
    Error e;
    memset(&e, 0, sizeof e);
    int r = bs->drv->amend(bs, options, &e);
    if (r < 0)
        error_set(err, -r, "%s: %s", bs->filename, e.msg[0] ? e.msg : strerror(-r));
    return r;
}

int bdrv_pwrite_compressed(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf)
{
    if (check_request(bs, offset, bytes) < 0)
        return -EINVAL;
    if (!bs->drv->write_compressed)
        return -ENOTSUP;
    uint64_t t0 = now_ns();
    int r = bs->drv->write_compressed(bs, offset, bytes, buf);
    stats_account(bs, STAT_WRITE, bytes, now_ns() - t0, r);
    return r < 0 ? r : 0;
}

/* ---------------------------------------------------------------- write zeroes, discard */

static int write_zero_buffers(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    int64_t chunk = MIN(bytes, bounce_chunk(bs));
    void *zeros = bounce_alloc(bs, chunk);
    if (!zeros)
        return -ENOMEM;
    memset(zeros, 0, (size_t)chunk);
    int r = 0;
    while (bytes > 0 && r == 0) {
        int64_t n = MIN(bytes, chunk);
        r = aligned_write(bs, offset, n, zeros, flags & (BDRV_REQ_FUA | BDRV_REQ_NO_SERIALISE));
        offset += n;
        bytes -= n;
    }
    free(zeros);
    return r;
}

static int drv_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    int r = -ENOTSUP;
    if (bs->drv->write_zeroes) {
        TrackedRequest req;
        bool track = (bs->request_alignment > 1 || bs->core->track_writes) && !(flags & BDRV_REQ_NO_SERIALISE);
        if (track)
            tracked_begin(bs, &req, offset, bytes, false);
        r = bs->drv->write_zeroes(bs, offset, bytes, flags & BDRV_REQ_DRIVER_MASK);
        if (track)
            tracked_end(bs, &req);
    }
    if (r == -ENOTSUP && !(flags & BDRV_REQ_NO_FALLBACK))
        r = write_zero_buffers(bs, offset, bytes, flags);
    return r;
}

int bdrv_co_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    int r = check_write(bs, offset, bytes);
    if (r < 0 || bytes == 0)
        return r;
    if (!bs->drv->write_zeroes && !bs->drv->write)
        return -ENOTSUP;
    int64_t a = bs->request_alignment;
    if (a > 1) {
        int64_t head_end = MIN(align_up(offset, a), offset + bytes);
        if (head_end > offset) {
            if (flags & BDRV_REQ_NO_FALLBACK)
                return -ENOTSUP;
            r = write_zero_buffers(bs, offset, head_end - offset, flags);
            if (r < 0)
                return r;
            bytes -= head_end - offset;
            offset = head_end;
        }
        int64_t tail = bytes % a;
        if (tail) {
            if (flags & BDRV_REQ_NO_FALLBACK)
                return -ENOTSUP;
            r = write_zero_buffers(bs, offset + bytes - tail, tail, flags);
            if (r < 0)
                return r;
            bytes -= tail;
        }
        if (bytes == 0)
            return 0;
    }
    return drv_write_zeroes(bs, offset, bytes, flags);
}

int bdrv_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    if (check_request(bs, offset, bytes) < 0)
        return -EINVAL;
    if (bs->core->is_root && !bs->core->discard_unmap)
        flags &= ~BDRV_REQ_MAY_UNMAP;
    uint64_t t0 = now_ns();
    flags &= BDRV_REQ_DRIVER_MASK;
    int r = __atomic_load_n(&bs->core->mirror_target, __ATOMIC_ACQUIRE)
                ? job_mirrored_op(bs, STAT_ZERO, offset, bytes, NULL, flags)
            : bs->core->req ? request_write_zeroes(bs, offset, bytes, flags)
                            : bdrv_co_write_zeroes(bs, offset, bytes, flags);
    stats_account(bs, STAT_ZERO, bytes, now_ns() - t0, r);
    return r < 0 ? r : 0;
}

int bdrv_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    int r = check_write(bs, offset, bytes);
    if (r < 0 || bytes == 0)
        return r;
    if (bs->core->is_root && !bs->core->discard_unmap)
        return 0; /* --discard=ignore: a discard is only a hint */
    if (!bs->drv->discard)
        return -ENOTSUP;
    if (__atomic_load_n(&bs->core->mirror_target, __ATOMIC_ACQUIRE)) {
        r = job_mirrored_op(bs, STAT_DISCARD, offset, bytes, NULL, 0);
        stats_account(bs, STAT_DISCARD, bytes, 0, r);
        return r;
    }
    request_throttle(bs, true, 0);
    TrackedRequest req;
    bool track = bs->request_alignment > 1 || bs->core->track_writes;
    if (track)
        tracked_begin(bs, &req, offset, bytes, false);
    r = bs->drv->discard(bs, offset, bytes);
    if (track)
        tracked_end(bs, &req);
    stats_account(bs, STAT_DISCARD, bytes, 0, r);
    return r;
}

/* ---------------------------------------------------------------- extents */

/* Whether every extent may go to the driver's batch call as it is: within the node, not empty, within
 * max_transfer and, when aligned is asked, aligned to the node's request alignment. */
static bool extents_batchable(BlockNode *bs, const BlockExtent *ext, int n, bool aligned)
{
    for (int i = 0; i < n; i++)
        if (check_request(bs, ext[i].offset, ext[i].bytes) < 0 || ext[i].bytes == 0 ||
            (aligned && !is_aligned(bs, ext[i].offset, ext[i].bytes, ext[i].buf)) ||
            (bs->max_transfer > 0 && ext[i].bytes > bs->max_transfer))
            return false;
    return true;
}

int bdrv_pread_extents(BlockNode *bs, const BlockExtent *ext, int n)
{
    if (n <= 0)
        return n < 0 ? -EINVAL : 0;
    bool direct = bs->drv->read_extents != NULL && bs->drv->is_protocol &&
                  extents_batchable(bs, ext, n, true);
    if (direct) {
        uint64_t t0 = now_ns();
        int64_t total = 0;
        for (int i = 0; i < n; i++)
            total += ext[i].bytes;
        int r = bs->drv->read_extents(bs, ext, n);
        stats_account(bs, STAT_READ, total, now_ns() - t0, r);
        return r < 0 ? r : 0;
    }
    for (int i = 0; i < n; i++) {
        int r = bdrv_pread(bs, ext[i].offset, ext[i].bytes, ext[i].buf);
        if (r < 0)
            return r;
    }
    return 0;
}

int bdrv_pwrite_extents(BlockNode *bs, const BlockExtent *ext, int n, int flags)
{
    if (n <= 0)
        return n < 0 ? -EINVAL : 0;
    bool direct = bs->drv->write_extents != NULL && bs->drv->is_protocol && !bs->read_only &&
                  !bs->core->track_writes && bs->request_alignment <= 1 &&
                  extents_batchable(bs, ext, n, false);
    /* Aligned O_DIRECT nodes: still one batch when every extent is aligned; serialised against RMW. */
    if (!direct && bs->drv->write_extents && bs->drv->is_protocol && !bs->read_only &&
        bs->request_alignment > 1) {
        direct = extents_batchable(bs, ext, n, true);
        if (direct) {
            TrackedRequest *reqs = calloc((size_t)n, sizeof(*reqs));
            if (!reqs)
                return -ENOMEM;
            uint64_t t0 = now_ns();
            int64_t total = 0;
            for (int i = 0; i < n; i++) {
                tracked_begin(bs, &reqs[i], ext[i].offset, ext[i].bytes, false);
                total += ext[i].bytes;
            }
            int r = bs->drv->write_extents(bs, ext, n, flags);
            for (int i = 0; i < n; i++)
                tracked_end(bs, &reqs[i]);
            free(reqs);
            stats_account(bs, STAT_WRITE, total, now_ns() - t0, r);
            return r < 0 ? r : 0;
        }
    }
    if (direct) {
        uint64_t t0 = now_ns();
        int64_t total = 0;
        for (int i = 0; i < n; i++)
            total += ext[i].bytes;
        int r = bs->drv->write_extents(bs, ext, n, flags);
        stats_account(bs, STAT_WRITE, total, now_ns() - t0, r);
        return r < 0 ? r : 0;
    }
    for (int i = 0; i < n; i++) {
        int r = bdrv_pwrite(bs, ext[i].offset, ext[i].bytes, ext[i].buf, flags);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---------------------------------------------------------------- flush, length, truncate */

int bdrv_flush(BlockNode *bs)
{
    if (!bs || bs->read_only)
        return 0;
    uint64_t t0 = now_ns();
    int r = bs->drv->flush ? bs->drv->flush(bs) : 0;
    if (r >= 0 && bs->file)
        r = bdrv_flush(bs->file);
    stats_account(bs, STAT_FLUSH, 0, now_ns() - t0, r);
    return r < 0 ? r : 0;
}

int64_t bdrv_getlength(BlockNode *bs)
{
    if (!bs || !bs->drv)
        return -EINVAL;
    if (bs->drv->getlength)
        return bs->drv->getlength(bs);
    if (bs->drv->is_filter && bs->file)
        return bdrv_getlength(bs->file);
    return -ENOTSUP;
}

int bdrv_truncate(BlockNode *bs, int64_t size)
{
    if (!bs || !bs->drv || size < 0)
        return -EINVAL;
    if (bs->read_only)
        return -EROFS;
    if (!bs->drv->truncate)
        return -ENOTSUP;
    return bs->drv->truncate(bs, size);
}

int64_t bdrv_memory_used(BlockNode *bs)
{
    return bs->drv && bs->drv->memory_used ? bs->drv->memory_used(bs) : -ENOTSUP;
}

/* Host bytes of one node: its driver's answer, else its file child's. */
static int64_t node_allocated_size(BlockNode *bs)
{
    for (int guard = 0; bs && guard < 8; guard++, bs = bs->file)
        if (bs->drv->get_allocated_size)
            return bs->drv->get_allocated_size(bs);
    return -ENOTSUP;
}

int64_t bdrv_get_allocated_size(BlockNode *bs)
{
    int64_t total = 0;
    bool any = false;
    for (; bs; bs = bs->backing) {
        int64_t n = node_allocated_size(bs);
        if (n >= 0) {
            total += n;
            any = true;
        }
    }
    return any ? total : -ENOTSUP;
}

/* ---------------------------------------------------------------- block status */

int bdrv_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    memset(st, 0, sizeof(*st));
    int r = check_request(bs, offset, bytes);
    if (r < 0)
        return r;
    if (bytes == 0)
        return -EINVAL;
    int64_t len = bdrv_getlength(bs);
    if (len < 0)
        return (int)len;
    if (offset >= len) {
        st->flags = BDRV_BLOCK_ZERO;
        st->bytes = bytes;
        return 0;
    }
    bytes = MIN(bytes, len - offset);
    if (bs->drv->block_status) {
        r = bs->drv->block_status(bs, offset, bytes, st);
        if (r < 0)
            return r;
        if (st->bytes <= 0)
            return -EIO;
        st->bytes = MIN(st->bytes, bytes);
        return 0;
    }
    if (bs->drv->is_filter && bs->file)
        return bdrv_block_status(bs->file, offset, bytes, st);
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
    st->bytes = bytes;
    return 0;
}

int bdrv_block_status_same_offset(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    int r = bdrv_block_status(bs->file, offset, bytes, st);
    if (r < 0)
        return r;
    st->flags |= BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    st->host_offset = offset;
    st->host_file = bs->file;
    return 0;
}

int bdrv_block_status_all_data(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    (void)bs;
    (void)offset;
    memset(st, 0, sizeof(*st));
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
    st->bytes = bytes;
    return 0;
}

int bdrv_block_status_above(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    int depth = 0;
    for (BlockNode *n = bs; n; n = n->backing, depth++) {
        int64_t len = bdrv_getlength(n);
        if (len < 0)
            return (int)len;
        if (offset >= len) { /* beyond this layer's end: zeros, whatever lies below */
            memset(st, 0, sizeof(*st));
            st->flags = BDRV_BLOCK_ZERO;
            st->bytes = bytes;
            st->depth = depth;
            return 0;
        }
        int r = bdrv_block_status(n, offset, bytes, st);
        if (r < 0)
            return r;
        if (n->drv->over_chain)
            return 0; /* a window answered for the whole chain below it, st->depth its layer there */
        st->depth = depth;
        if (st->flags & BDRV_BLOCK_ALLOCATED)
            return 0;
        bytes = st->bytes;
    }
    memset(st, 0, sizeof(*st));
    st->flags = BDRV_BLOCK_ZERO;
    st->bytes = bytes;
    st->depth = depth;
    return 0;
}

/* ---------------------------------------------------------------- zero-copy mapping */

/* True if o stacks a filter under the format (blkdebug): its reads may not be what the file holds. */
static bool opts_name_file_filter(const BlockOpenOpts *o)
{
    for (const BlockDriver *const *d = bdrv_driver_list(); *d; d++)
        if ((*d)->is_filter && !(*d)->over_chain && bdrv_opts_name_driver(o, *d))
            return true;
    return false;
}

/* Nothing can change what bs reads as, and reads go straight to the drivers: see bdrv_map_extents. */
static bool node_mapping_allowed(BlockNode *bs)
{
    const BlockOpenOpts *o = bs->opts;
    return bs->read_only && o && o->read_only && o->cache != CACHE_NONE && !opts_name_file_filter(o) &&
           !o->copy_on_read && o->on_read_error != READ_ERROR_ZERO && !bs->core->req && !bs->core->track_writes;
}

/* bs and, through window filters (whose block status passes host offsets through), the chain's top. */
static bool mapping_allowed(BlockNode *bs)
{
    for (int guard = 0; bs && guard < 8; guard++, bs = bs->file) {
        if (!node_mapping_allowed(bs))
            return false;
        if (!bs->drv->over_chain)
            return true;
    }
    return false;
}

/* One piece of the range: a host run (as bdrv_read_mapped reads it too, bdrv_run_kind) of a read-only
 * protocol node that can hand out its descriptor. */
static bool mappable_piece(const BlockStatus *st)
{
    BlockNode *h = st->host_file;
    return bdrv_run_kind(st) == BLOCK_RUN_HOST && h->drv->is_protocol && !h->drv->is_filter && h->drv->get_fd &&
           h->read_only && st->bytes > 0;
}

/* The extent one block-status answer of the chain stands for, or false when the piece cannot be handed out
 * (compressed, behind a filter, partly beyond its host file's end: bdrv_pread pads with zeros there, a
 * splice would not). */
static bool piece_extent(const BlockStatus *st, BlockMapExtent *x)
{
    *x = (BlockMapExtent){ .bytes = st->bytes, .fd = -1, .host_offset = -1, .depth = st->depth };
    if (bdrv_run_kind(st) == BLOCK_RUN_ZERO)
        return true;
    if (!mappable_piece(st))
        return false;
    int64_t host_len = bdrv_getlength(st->host_file);
    if (host_len < 0 || st->host_offset < 0 || st->host_offset > host_len - st->bytes)
        return false;
    x->fd = st->host_file->drv->get_fd(st->host_file);
    x->host_offset = st->host_offset;
    x->host_file = st->host_file;
    return x->fd >= 0;
}

/* b continues a in the same layer: the same zeros, or the next bytes of the same host file. */
static bool extends(const BlockMapExtent *a, const BlockMapExtent *b)
{
    if (a->depth != b->depth || a->fd != b->fd)
        return false;
    return a->fd < 0 || (a->host_file == b->host_file && b->host_offset == a->host_offset + a->bytes);
}

int bdrv_map_extents(BlockNode *bs, int64_t offset, int64_t bytes, BlockMapExtent *ext, int max_ext)
{
    if (offset < 0 || bytes <= 0 || max_ext <= 0 || !mapping_allowed(bs))
        return 0;
    int n = 0;
    for (int64_t pos = offset; pos < offset + bytes;) {
        BlockStatus st;
        memset(&st, 0, sizeof(st));
        int r = bdrv_block_status_above(bs, pos, offset + bytes - pos, &st);
        if (r < 0)
            return r;
        st.bytes = MIN(st.bytes, offset + bytes - pos);
        BlockMapExtent x;
        if (st.bytes <= 0 || !piece_extent(&st, &x))
            return 0;
        if (n > 0 && extends(&ext[n - 1], &x))
            ext[n - 1].bytes += x.bytes;
        else if (n < max_ext)
            ext[n++] = x;
        else
            return 0;
        pos += st.bytes;
    }
    return n;
}

void bdrv_account_extents(BlockNode *bs, const BlockMapExtent *ext, int n, uint64_t ns)
{
    int64_t total = 0;
    for (int guard = 0; bs->drv->over_chain && bs->file && guard < 8; guard++, bs = bs->file) {
        int64_t sum = 0; /* a window counts the range once, as its bdrv_pread would, then the chain below */
        for (int i = 0; i < n; i++)
            sum += ext[i].bytes;
        stats_account(bs, STAT_READ, sum, ns, 0);
    }
    for (int i = 0; i < n; i++) {
        total += ext[i].bytes;
        BlockNode *layer = bs->backing; /* bs itself is counted once below, as one bdrv_pread would */
        for (int d = 1; layer && d <= ext[i].depth; d++, layer = layer->backing)
            stats_account(layer, STAT_READ, ext[i].bytes, ns, 0);
        if (ext[i].host_file)
            stats_account(ext[i].host_file, STAT_READ, ext[i].bytes, ns, 0);
    }
    stats_account(bs, STAT_READ, total, ns, 0);
}

/* ---------------------------------------------------------------- info */

void bdrv_get_info(BlockNode *bs, InfoList *info)
{
    info_add_str(info, "file", "%s", bs->filename);
    info_add_str(info, "format", "%s", bs->drv->name);
    info_add_int(info, "virtual_size", bdrv_getlength(bs));
    int64_t alloc = node_allocated_size(bs);
    if (alloc >= 0)
        info_add_int(info, "allocated_size", alloc);
    info_add_bool(info, "read_only", bs->read_only);
    if (bs->backing_name || bs->backing) {
        const char *name = bs->backing_name;
        if (bs->core->backing_override)
            name = bs->core->backing_override;
        info_add_str(info, "backing_file", "%s", name ? name : bs->backing->filename);
    }
    if (bs->backing)
        info_add_str(info, "backing_format", "%s", bs->backing->drv->name);
    else if (bs->backing_format_hint)
        info_add_str(info, "backing_format", "%s", bs->backing_format_hint);
    if (bs->backing_resolved)
        info_add_str(info, "backing_resolved", "%s", bs->backing_resolved);
    if (bs->backing_note && bs->backing_note[0])
        info_add_str(info, "backing_note", "%s", bs->backing_note);
    if (bs->drv->get_info)
        bs->drv->get_info(bs, info);
}

/* ---------------------------------------------------------------- create */

/* The size of the backing file a new image names, for CreateOpts.size == -1. */
static int64_t backing_size_for_create(const char *filename, const CreateOpts *opts, Error *err)
{
    char path[4096];
    if (opts->backing[0] == '/' || bdrv_find_protocol(opts->backing)) { /* absolute, or a URL (nbd://...) */
        snprintf(path, sizeof(path), "%s", opts->backing);
    } else {
        const char *slash = strrchr(filename, '/');
        int dirlen = slash ? (int)(slash - filename) : 1;
        snprintf(path, sizeof(path), "%.*s/%s", dirlen, slash ? filename : ".", opts->backing);
    }
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.format = opts->backing_format;
    o.no_backing = true;
    BlockNode *b = bdrv_open(path, &o, err);
    if (!b)
        return -(err && err->errnum ? err->errnum : EIO);
    int64_t len = bdrv_getlength(b);
    bdrv_close(b);
    return len;
}

int bdrv_create(const char *format, const char *filename, const CreateOpts *opts, Error *err)
{
    const BlockDriver *drv = bdrv_find_driver(format);
    if (!drv) {
        error_set(err, EINVAL, "%s: unknown format '%s'", filename, format ? format : "(none)");
        return -EINVAL;
    }
    if (opts->backing && opts->backing[0] && !drv->supports_backing) {
        error_set(err, EINVAL, "%s: format '%s' does not support backing files", filename, drv->name);
        return -EINVAL;
    }
    if (!drv->create) {
        error_set(err, ENOTSUP, "%s: format '%s' cannot create images", filename, drv->name);
        return -ENOTSUP;
    }
    CreateOpts o = *opts;
    if (o.size < 0) {
        if (!o.backing || !o.backing[0]) {
            error_set(err, EINVAL, "%s: an image size is needed (no backing file to take it from)", filename);
            return -EINVAL;
        }
        o.size = backing_size_for_create(filename, opts, err);
        if (o.size < 0)
            return (int)o.size;
    }
    int r = drv->create(filename, &o, err);
    if (r < 0)
        error_set(err, -r, "%s: cannot create: %s", filename, strerror(-r));
    return r < 0 ? r : 0;
}

/* ---------------------------------------------------------------- snapshots and other wrappers */

static int not_supported(BlockNode *bs, Error *err, const char *what)
{
    error_set(err, ENOTSUP, "%s: format '%s' does not support %s", bs->filename, bs->drv->name, what);
    return -ENOTSUP;
}

int bdrv_snapshot_list(BlockNode *bs, SnapshotInfo **list)
{
    *list = NULL;
    if (!bs->drv->snapshot_list)
        return -ENOTSUP;
    return bs->drv->snapshot_list(bs, list);
}

/* Snapshot create/delete/goto change the image: the driver must have the slot, the node be writable. */
static int snapshot_change_allowed(BlockNode *bs, bool has_slot, Error *err)
{
    if (!has_slot)
        return not_supported(bs, err, "internal snapshots");
    if (bs->read_only) {
        error_set(err, EROFS, "%s: image is read-only", bs->filename);
        return -EROFS;
    }
    return 0;
}

int bdrv_snapshot_create(BlockNode *bs, const char *name, Error *err)
{
    int ret = snapshot_change_allowed(bs, bs->drv->snapshot_create != NULL, err);
    return ret < 0 ? ret : bs->drv->snapshot_create(bs, name, err);
}

int bdrv_snapshot_delete(BlockNode *bs, const char *id_or_name, Error *err)
{
    int ret = snapshot_change_allowed(bs, bs->drv->snapshot_delete != NULL, err);
    return ret < 0 ? ret : bs->drv->snapshot_delete(bs, id_or_name, err);
}

int bdrv_snapshot_goto(BlockNode *bs, const char *id_or_name, Error *err)
{
    int ret = snapshot_change_allowed(bs, bs->drv->snapshot_goto != NULL, err);
    return ret < 0 ? ret : bs->drv->snapshot_goto(bs, id_or_name, err);
}

BlockNode *bdrv_snapshot_open(BlockNode *bs, const char *id, Error *err)
{
    if (!bs->drv->snapshot_open) {
        not_supported(bs, err, "internal snapshots");
        return NULL;
    }
    return bs->drv->snapshot_open(bs, id, err);
}

int bdrv_vmstate_read(BlockNode *bs, const char *id, int64_t offset, int64_t bytes, void *buf)
{
    if (check_request(bs, offset, bytes) < 0)
        return -EINVAL;
    if (!bs->drv->vmstate_read)
        return -ENOTSUP;
    return bs->drv->vmstate_read(bs, id, offset, bytes, buf);
}

int bdrv_check_image(BlockNode *bs, BlockCheckResult *res, int fix)
{
    memset(res, 0, sizeof(*res));
    if (!bs->drv->check)
        return -ENOTSUP;
    if ((fix & ~BDRV_FIX_QUERY) && bs->read_only)
        return -EROFS;
    return bs->drv->check(bs, res, fix);
}

int bdrv_check(BlockNode *bs, InfoList *report)
{
    BlockCheckResult res;
    int ret = bdrv_check_image(bs, &res, 0);
    if (ret < 0)
        return ret;
    info_add_int(report, "corruptions", res.corruptions);
    info_add_int(report, "leaked_clusters", res.leaks);
    if (res.first_error[0])
        info_add_str(report, "first_error", "%s", res.first_error);
    return (int)MIN(res.corruptions, (int64_t)INT32_MAX);
}

static void check_note(BlockCheckResult *res, int64_t *count, const char *fmt, va_list ap)
{
    if (!res->first_error[0])
        vsnprintf(res->first_error, sizeof(res->first_error), fmt, ap);
    (*count)++;
}

void bdrv_check_corruption(BlockCheckResult *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    check_note(res, &res->corruptions, fmt, ap);
    va_end(ap);
}

/* The walk stops (a check error) after this many ranges it could not map. */
#define BDRV_CHECK_MAX_DAMAGED 65536

int bdrv_check_host_runs(BlockNode *bs, BlockCheckResult *res, int64_t step, bool past_end_stops)
{
    int64_t size = bdrv_getlength(bs), pos = 0;
    if (size < 0)
        return (int)size;
    if (step <= 0) {
        BlockDriverFacts f;
        bdrv_get_facts(bs, &f);
        step = f.cluster_size > 0 ? f.cluster_size : 65536;
    }
    while (pos < size) {
        BlockStatus st;
        memset(&st, 0, sizeof(st));
        int ret = bdrv_block_status(bs, pos, size - pos, &st);
        if (ret < 0 || st.bytes <= 0) {
            if (res->corruptions >= BDRV_CHECK_MAX_DAMAGED) {
                res->check_errors++; /* a hostile map: stop rather than walk a huge disk step by step */
                snprintf(res->first_error, sizeof(res->first_error), "more than %d damaged ranges; the check "
                         "stopped at guest offset %" PRId64, BDRV_CHECK_MAX_DAMAGED, pos);
                return 0;
            }
            bdrv_check_corruption(res, "guest offset %" PRId64 " cannot be mapped: %s", pos,
                                  strerror(ret < 0 ? -ret : EIO));
            pos += step - pos % step;
            continue;
        }
        int64_t n = MIN(st.bytes, size - pos);
        if (bdrv_run_kind(&st) == BLOCK_RUN_DECODE && !(st.flags & BDRV_BLOCK_COMPRESSED) && past_end_stops) {
            res->check_errors++;
            snprintf(res->first_error, sizeof(res->first_error), "guest offset %" PRId64 " is mapped by a damaged "
                     "entry (into metadata or past the end of the file): the check stopped", pos);
            return 0;
        } else if (bdrv_run_kind(&st) == BLOCK_RUN_DECODE && !(st.flags & BDRV_BLOCK_COMPRESSED))
            bdrv_check_corruption(res, "guest offset %" PRId64 " is mapped by a damaged entry (into metadata or past "
                                  "the end of the file)", pos);
        else if ((st.flags & BDRV_BLOCK_OFFSET_VALID) && st.host_file) {
            int64_t host_len = bdrv_getlength(st.host_file);
            int64_t need = (st.flags & BDRV_BLOCK_COMPRESSED) ? 1 : n;
            bool past = host_len >= 0 &&
                        (st.host_offset < 0 || st.host_offset > host_len || host_len - st.host_offset < need);
            if (past && past_end_stops) {
                res->check_errors++;
                snprintf(res->first_error, sizeof(res->first_error), "guest offset %" PRId64 " is stored at %"
                         PRId64 " of %s, past its end (%" PRId64 " bytes): the check stopped", pos, st.host_offset,
                         st.host_file->filename, host_len);
                return 0;
            }
            if (past)
                bdrv_check_corruption(res, "guest offset %" PRId64 " is stored at %" PRId64 " of %s, past its end (%"
                                      PRId64 " bytes)", pos, st.host_offset, st.host_file->filename, host_len);
        }
        pos += n;
    }
    return 0;
}

void bdrv_check_leak(BlockCheckResult *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    check_note(res, &res->leaks, fmt, ap);
    va_end(ap);
}

bool bdrv_has_zero_init(BlockNode *bs)
{
    if (bs->drv->has_zero_init)
        return bs->drv->has_zero_init(bs);
    return false;
}

void bdrv_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    memset(facts, 0, sizeof(*facts));
    if (bs->drv->get_facts)
        bs->drv->get_facts(bs, facts);
}

const char *bdrv_get_format_specific(BlockNode *bs, InfoList *data)
{
    return bs->drv->get_format_specific ? bs->drv->get_format_specific(bs, data) : NULL;
}

void bdrv_debug_event(BlockNode *file, const char *event)
{
    if (file && event && file->drv->debug_event)
        file->drv->debug_event(file, event);
}
