/* SPDX-License-Identifier: MIT */
/*
 * memory.c - the "memory" protocol driver: a node over a private, growable byte buffer, for unit tests
 * and fuzz targets (bdrv_open_memory).  Reads beyond the end give zeros.  It never touches the file
 * system, and the core refuses every backing name found in an image on such a node.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MEMORY_MAX_SIZE (1 * GiB)

typedef struct MemoryState {
    pthread_rwlock_t lock;
    uint8_t *buf;
    int64_t len;
    int64_t cap;    /* allocated bytes of buf (>= len): grows geometrically, as files grow by clusters */
} MemoryState;

/* Memory nodes are made by bdrv_open_memory, never opened by a name. */
static int memory_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    (void)bs;
    (void)opts;
    error_set(err, ENOTSUP, "memory nodes cannot be opened by name");
    return -ENOTSUP;
}

static void memory_close(BlockNode *bs)
{
    MemoryState *s = bs->opaque;
    free(s->buf);
    pthread_rwlock_destroy(&s->lock);
}

static int memory_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    MemoryState *s = bs->opaque;
    pthread_rwlock_rdlock(&s->lock);
    int64_t n = offset < s->len ? MIN(bytes, s->len - offset) : 0;
    if (n > 0)
        memcpy(buf, s->buf + offset, (size_t)n);
    memset((uint8_t *)buf + n, 0, (size_t)(bytes - n));
    pthread_rwlock_unlock(&s->lock);
    return 0;
}

/* With the write lock held: make the buffer at least len bytes (new bytes zero). */
static int memory_grow(MemoryState *s, int64_t len)
{
    if (len <= s->len)
        return 0;
    if (len > MEMORY_MAX_SIZE)
        return -ENOSPC;
    if (len > s->cap) {
        int64_t cap = MIN(MAX(len, s->cap * 2), MEMORY_MAX_SIZE);
        uint8_t *nb = realloc(s->buf, (size_t)cap);
        if (!nb)
            return -ENOMEM;
        s->buf = nb;
        s->cap = cap;
    }
    memset(s->buf + s->len, 0, (size_t)(len - s->len));
    s->len = len;
    return 0;
}

static int memory_fill(BlockNode *bs, int64_t offset, int64_t bytes, const void *src)
{
    MemoryState *s = bs->opaque;
    pthread_rwlock_wrlock(&s->lock);
    int r = memory_grow(s, offset + bytes);
    if (r == 0) {
        if (src)
            memcpy(s->buf + offset, src, (size_t)bytes);
        else
            memset(s->buf + offset, 0, (size_t)bytes);
    }
    pthread_rwlock_unlock(&s->lock);
    return r;
}

static int memory_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    (void)flags;
    return memory_fill(bs, offset, bytes, buf);
}

static int memory_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    (void)flags;
    return memory_fill(bs, offset, bytes, NULL);
}

static int memory_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    MemoryState *s = bs->opaque;
    pthread_rwlock_wrlock(&s->lock);
    if (offset < s->len)
        memset(s->buf + offset, 0, (size_t)MIN(bytes, s->len - offset));
    pthread_rwlock_unlock(&s->lock);
    return 0;
}

static int64_t memory_getlength(BlockNode *bs)
{
    MemoryState *s = bs->opaque;
    pthread_rwlock_rdlock(&s->lock);
    int64_t len = s->len;
    pthread_rwlock_unlock(&s->lock);
    return len;
}

static int64_t memory_get_allocated_size(BlockNode *bs)
{
    return memory_getlength(bs);
}

static int memory_truncate(BlockNode *bs, int64_t size)
{
    MemoryState *s = bs->opaque;
    pthread_rwlock_wrlock(&s->lock);
    int r = memory_grow(s, size);
    if (r == 0 && size < s->len)
        s->len = size;
    pthread_rwlock_unlock(&s->lock);
    return r;
}

static bool memory_has_zero_init(BlockNode *bs)
{
    (void)bs;
    return true;
}

const BlockDriver bdrv_memory = {
    .name = "memory",
    .instance_size = sizeof(MemoryState),
    .is_protocol = true,
    .open = memory_open,
    .close = memory_close,
    .read = memory_read,
    .write = memory_write,
    .write_zeroes = memory_write_zeroes,
    .discard = memory_discard,
    .getlength = memory_getlength,
    .get_allocated_size = memory_get_allocated_size,
    .truncate = memory_truncate,
    .has_zero_init = memory_has_zero_init,
};

BlockNode *bdrv_open_memory(const void *buf, size_t len, bool read_only)
{
    if (len > (size_t)MEMORY_MAX_SIZE)
        return NULL;
    BlockNode *bs = bdrv_new_node(&bdrv_memory, "<memory>");
    if (!bs)
        return NULL;
    MemoryState *s = bs->opaque;
    pthread_rwlock_init(&s->lock, NULL);
    bs->read_only = read_only;
    s->buf = malloc(len ? len : 1);
    if (!s->buf) {
        bdrv_close(bs);
        return NULL;
    }
    if (len)
        memcpy(s->buf, buf, len);
    s->len = (int64_t)len;
    s->cap = (int64_t)(len ? len : 1);
    return bs;
}
