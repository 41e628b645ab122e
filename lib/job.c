/* SPDX-License-Identifier: MIT */
/*
 * job.c - the core's part of live chain jobs on a mounted chain (the front end's fuse/live.c drives them):
 * stream copies a chunk of what lower layers decide up into the root, and live commit copies a chunk of
 * what the upper layers decide down into a target node (a writable node of the base file), each under a
 * serialising tracked request over the chunk, so a guest write to the same range runs wholly before or
 * wholly after it.  While a commit runs, every guest write, write-zeroes and discard of the root is
 * serialised too and, where the job has passed already, its result copied into the target as well, so the
 * target never falls behind what the guest sees.  The chain is re-linked (bdrv_relink_backing) with one
 * pointer store; unlinked layers stay open until the root closes, as readers may still be in them.
 * Format-neutral: block status, reads and writes only.
 */
#include "block_int.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define JOB_MIRROR_CHUNK (1024 * 1024)

void bdrv_track_writes(BlockNode *bs)
{
    bs->core->track_writes = true;
}

/* A range of bs's chain decided by a layer (an allocated range, or zeros a layer sets). */
static bool decided(const BlockStatus *st)
{
    return (st->flags & (BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_DATA)) || !(st->flags & BDRV_BLOCK_ZERO);
}

/* The block status through bs's chain of [pos, end) into st; one that answers for no bytes is EIO, so
 * that a walk by st.bytes always moves on. */
static int chunk_status(BlockNode *bs, int64_t pos, int64_t end, BlockStatus *st)
{
    memset(st, 0, sizeof *st);
    int r = bdrv_block_status_above(bs, pos, end - pos, st);
    return r == 0 && st->bytes <= 0 ? -EIO : r;
}

/* Writes n zero bytes at pos of bs without taking a tracked request (the caller holds one). */
static int stream_zeroes(BlockNode *bs, int64_t pos, int64_t n, uint8_t *buf, int64_t buf_len)
{
    memset(buf, 0, (size_t)MIN(n, buf_len));
    int r = 0;
    for (int64_t done = 0; r == 0 && done < n; done += MIN(n - done, buf_len))
        r = bdrv_co_write(bs, pos + done, MIN(n - done, buf_len), buf, BDRV_REQ_NO_SERIALISE);
    return r;
}

int bdrv_job_stream_chunk(BlockNode *bs, int64_t offset, int64_t bytes, int base_depth, void *buf)
{
    TrackedRequest req;
    tracked_begin(bs, &req, offset, bytes, true);
    int r = 0;
    BlockStatus st;
    for (int64_t pos = offset; r == 0 && pos < offset + bytes; pos += st.bytes) {
        r = chunk_status(bs, pos, offset + bytes, &st);
        if (r < 0 || !decided(&st) || st.depth < 1 || st.depth >= base_depth)
            continue; /* the top holds it already (a guest write came first), or BASE does */
        int64_t n = MIN(st.bytes, offset + bytes - pos);
        if (st.flags & BDRV_BLOCK_ZERO)
            r = stream_zeroes(bs, pos, n, buf, bytes);
        else if ((r = bdrv_co_read(bs, pos, n, buf)) == 0)
            r = bdrv_co_write(bs, pos, n, buf, BDRV_REQ_NO_SERIALISE);
    }
    tracked_end(bs, &req);
    return r;
}

int bdrv_job_commit_chunk(BlockNode *bs, BlockNode *target, int64_t offset, int64_t bytes, int base_depth, void *buf)
{
    TrackedRequest req;
    tracked_begin(bs, &req, offset, bytes, true);
    int r = 0;
    BlockStatus st;
    for (int64_t pos = offset; r == 0 && pos < offset + bytes; pos += st.bytes) {
        r = chunk_status(bs, pos, offset + bytes, &st);
        if (r < 0 || !decided(&st) || st.depth >= base_depth)
            continue;
        int64_t n = MIN(st.bytes, offset + bytes - pos);
        if (st.flags & BDRV_BLOCK_ZERO)
            r = bdrv_pwrite_zeroes(target, pos, n, 0);
        else if ((r = bdrv_co_read(bs, pos, n, buf)) == 0)
            r = bdrv_pwrite(target, pos, n, buf, 0);
    }
    if (r == 0)
        __atomic_store_n(&bs->core->mirror_cursor, offset + bytes, __ATOMIC_RELEASE);
    tracked_end(bs, &req);
    return r;
}

void bdrv_job_mirror_start(BlockNode *bs, BlockNode *target)
{
    __atomic_store_n(&bs->core->mirror_cursor, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&bs->core->mirror_target, target, __ATOMIC_RELEASE);
}

void bdrv_job_mirror_all(BlockNode *bs)
{
    __atomic_store_n(&bs->core->mirror_cursor, INT64_MAX, __ATOMIC_RELEASE);
}

void bdrv_job_mirror_stop(BlockNode *bs)
{
    __atomic_store_n(&bs->core->mirror_target, NULL, __ATOMIC_RELEASE);
    /* every write that may still see the target is older than this request, which waits for them */
    TrackedRequest req;
    tracked_begin(bs, &req, 0, INT64_MAX / 2, true);
    tracked_end(bs, &req);
}

/* [offset, offset+bytes) of bs as the guest now reads it, into target (buf: those bytes, or NULL). */
static int mirror_copy(BlockNode *bs, BlockNode *target, int64_t offset, int64_t bytes, const void *buf)
{
    if (buf)
        return bdrv_pwrite(target, offset, bytes, buf, 0);
    int64_t chunk = MIN(bytes, (int64_t)JOB_MIRROR_CHUNK);
    uint8_t *tmp = malloc((size_t)MAX(chunk, 1));
    if (!tmp)
        return -ENOMEM;
    int r = 0;
    for (int64_t done = 0; r == 0 && done < bytes; done += chunk) {
        int64_t n = MIN(chunk, bytes - done);
        r = bdrv_co_read(bs, offset + done, n, tmp);
        if (r == 0)
            r = bdrv_pwrite(target, offset + done, n, tmp, 0);
    }
    free(tmp);
    return r;
}

int job_mirrored_op(BlockNode *bs, int kind, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    TrackedRequest req;
    tracked_begin(bs, &req, offset, bytes, true);
    int r;
    if (kind == STAT_WRITE)
        r = bdrv_co_write(bs, offset, bytes, buf, flags | BDRV_REQ_NO_SERIALISE);
    else if (kind == STAT_ZERO)
        r = bdrv_co_write_zeroes(bs, offset, bytes, flags | BDRV_REQ_NO_SERIALISE);
    else
        r = bs->drv->discard(bs, offset, bytes);
    BlockNode *target = __atomic_load_n(&bs->core->mirror_target, __ATOMIC_ACQUIRE);
    int64_t cursor = __atomic_load_n(&bs->core->mirror_cursor, __ATOMIC_ACQUIRE);
    if (r == 0 && target && offset < cursor)
        r = mirror_copy(bs, target, offset, MIN(bytes, cursor - offset), kind == STAT_WRITE ? buf : NULL);
    tracked_end(bs, &req);
    return r;
}

int bdrv_relink_backing(BlockNode *bs, BlockNode *new_backing)
{
    if (bs->core->n_dropped >= BDRV_MAX_DROPPED)
        return -EBUSY;
    bdrv_ref(new_backing);
    BlockNode *old = bs->backing;
    __atomic_store_n(&bs->backing, new_backing, __ATOMIC_RELEASE);
    if (old)
        bs->core->dropped[bs->core->n_dropped++] = old;
    int d = bs->depth + 1;
    for (BlockNode *n = new_backing; n; n = n->backing)
        n->depth = d++;
    return 0;
}
