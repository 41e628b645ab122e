/* SPDX-License-Identifier: MIT */
/*
 * readmap.c - reading a node through its driver's map (bdrv_read_mapped) and the one interpretation of
 * a map's run (bdrv_run_kind) that this buffered read and the zero-copy mapping of lib/block.c
 * (bdrv_map_extents) share.  A format driver whose read is "map a run, then read host bytes, zeros or the
 * backing node" hands its map (and, for compressed or encrypted pieces, its decoder) to bdrv_read_mapped
 * from its read slot, inside its own locks.  Host runs are batched: neighbours in the host file and in
 * the buffer become one extent, and a batch goes to its file in one bdrv_pread_extents call (one
 * submission with --aio=native).  The bdrv_mapped_* slots (and the *_locked calls under them) serve a
 * driver that declares read_map/write_map whole: reads and block status under its map's lock held shared,
 * writes in place under it shared and allocations under it exclusive, its check under it exclusive.
 * Nothing here knows a format or the front end; the lock is whatever the map's lock slot names.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <string.h>

BlockRunKind bdrv_run_kind(const BlockStatus *st)
{
    const int host = BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    if ((st->flags & BDRV_BLOCK_ZERO) && !(st->flags & BDRV_BLOCK_COMPRESSED))
        return BLOCK_RUN_ZERO;
    if (!(st->flags & BDRV_BLOCK_ALLOCATED))
        return BLOCK_RUN_BACKING;
    if ((st->flags & host) == host && !(st->flags & BDRV_BLOCK_COMPRESSED) && st->host_file)
        return BLOCK_RUN_HOST;
    return BLOCK_RUN_DECODE;
}

/* Host runs not read yet: extents of one host file, at most READMAP_BATCH. */
#define READMAP_BATCH 32

typedef struct HostBatch {
    BlockNode *file;
    BlockExtent ext[READMAP_BATCH];
    int n;
} HostBatch;

static int batch_flush(HostBatch *b)
{
    int r = b->n ? bdrv_pread_extents(b->file, b->ext, b->n) : 0;
    b->n = 0;
    return r;
}

/* n bytes of the host run st into p: merged into the last extent when they follow it both in the file and
 * in the buffer; the batch is read first when it is full or holds another file's extents. */
static int batch_add(HostBatch *b, const BlockStatus *st, int64_t n, uint8_t *p)
{
    BlockExtent *last = b->n ? &b->ext[b->n - 1] : NULL;
    if (last && b->file == st->host_file && st->host_offset >= last->bytes &&
        st->host_offset - last->bytes == last->offset && (uint8_t *)last->buf + last->bytes == p) {
        last->bytes += n;
        return 0;
    }
    if (b->n == READMAP_BATCH || (b->n && b->file != st->host_file)) {
        int r = batch_flush(b);
        if (r < 0)
            return r;
    }
    b->file = st->host_file;
    b->ext[b->n++] = (BlockExtent){ .offset = st->host_offset, .bytes = n, .buf = p };
    return 0;
}

/* n bytes of one run at guest offset into p (host runs join the batch). */
static int read_run(BlockNode *bs, int64_t offset, int64_t n, uint8_t *p, const BlockStatus *st,
                    const BlockReadMap *m, void *opaque, HostBatch *b)
{
    BlockNode *backing;
    switch (bdrv_run_kind(st)) {
    case BLOCK_RUN_HOST:
        return batch_add(b, st, n, p);
    case BLOCK_RUN_BACKING:
        backing = m->backing ? m->backing(bs, opaque) : bs->backing;
        if (backing)
            return bdrv_pread(backing, offset, n, p);
        break; /* no backing node: zeros */
    case BLOCK_RUN_ZERO:
        break;
    case BLOCK_RUN_DECODE:
        return m->decode ? m->decode(bs, offset, n, p, st, opaque) : -EIO;
    }
    memset(p, 0, (size_t)n);
    return 0;
}

int bdrv_read_mapped(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockReadMap *m, void *opaque)
{
    uint8_t *p = buf;
    HostBatch batch;
    batch.n = 0;
    if (offset < 0 || bytes < 0 || offset > INT64_MAX - bytes)
        return -EINVAL;
    while (bytes > 0) {
        BlockStatus st;
        memset(&st, 0, sizeof(st));
        int r = m->map(bs, offset, bytes, &st, opaque);
        if (r < 0)
            return r;
        if (st.bytes <= 0)
            return -EIO; /* a map that answers for nothing would never end */
        int64_t n = MIN(st.bytes, bytes);
        r = read_run(bs, offset, n, p, &st, m, opaque, &batch);
        if (r < 0)
            return r;
        offset += n;
        bytes -= n;
        p += n;
    }
    return batch_flush(&batch);
}

int bdrv_read_mapped_locked(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockReadMap *m,
                            pthread_rwlock_t *lock, uint64_t size)
{
    if (offset < 0 || bytes < 0 || (uint64_t)offset + (uint64_t)bytes > size)
        return -EINVAL;
    if (lock)
        pthread_rwlock_rdlock(lock);
    int ret = bdrv_read_mapped(bs, offset, bytes, buf, m, NULL);
    if (lock)
        pthread_rwlock_unlock(lock);
    return ret;
}

int bdrv_status_mapped_locked(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, const BlockReadMap *m,
                              pthread_rwlock_t *lock)
{
    memset(st, 0, sizeof(*st));
    if (lock)
        pthread_rwlock_rdlock(lock);
    int ret = m->map(bs, offset, bytes, st, NULL);
    if (lock)
        pthread_rwlock_unlock(lock);
    return ret;
}

int bdrv_write_mapped_locked(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags,
                             const BlockWriteMap *m, pthread_rwlock_t *lock, uint64_t size)
{
    if (!lock)
        return -EROFS;
    if (offset < 0 || bytes < 0 || (uint64_t)offset + (uint64_t)bytes > size)
        return -EINVAL;
    const uint8_t *p = buf;
    uint64_t off = (uint64_t)offset, left = (uint64_t)bytes;
    int ret = 0;
    while (ret == 0 && left > 0) {
        uint64_t n = 0, host = 0;
        pthread_rwlock_rdlock(lock);
        int where = m->place(bs, off, left, &n, &host);
        if (where > 0 && n > 0 && n <= left)
            ret = bdrv_pwrite(bs->file, (int64_t)host, (int64_t)n, p, 0);
        pthread_rwlock_unlock(lock);
        if (where < 0)
            return where;
        if (n == 0 || n > left)
            return -EIO; /* a map that answers for nothing would never end */
        if (where == 0) {
            pthread_rwlock_wrlock(lock);
            ret = m->allocate(bs, off, left, p, &n);
            pthread_rwlock_unlock(lock);
        }
        off += n;
        left -= n;
        p += n;
    }
    if (ret == 0 && (flags & BDRV_REQ_FUA))
        ret = m->flush ? m->flush(bs) : bdrv_flush(bs->file);
    return ret;
}

static pthread_rwlock_t *map_lock(BlockNode *bs)
{
    const BlockReadMap *m = bs->drv->read_map;
    return m->lock ? m->lock(bs) : NULL;
}

int bdrv_mapped_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return bdrv_read_mapped_locked(bs, offset, bytes, buf, bs->drv->read_map, map_lock(bs),
                                   (uint64_t)bs->drv->getlength(bs));
}

int bdrv_mapped_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    return bdrv_status_mapped_locked(bs, offset, bytes, st, bs->drv->read_map, map_lock(bs));
}

int bdrv_mapped_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    return bdrv_write_mapped_locked(bs, offset, bytes, buf, flags, bs->drv->write_map, map_lock(bs),
                                    (uint64_t)bs->drv->getlength(bs));
}

int bdrv_check_mapped(BlockNode *bs, BlockCheckResult *res, int fix,
                      int (*check)(BlockNode *bs, BlockCheckResult *res, int fix))
{
    pthread_rwlock_t *lock = map_lock(bs);
    if (lock)
        pthread_rwlock_wrlock(lock);
    int ret = check(bs, res, fix);
    if (lock)
        pthread_rwlock_unlock(lock);
    return ret;
}
