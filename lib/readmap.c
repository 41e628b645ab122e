/* SPDX-License-Identifier: MIT */
/*
 * readmap.c - reading a node through its driver's map (bdrv_read_mapped) and the one interpretation of
 * a map's run (bdrv_run_kind) that this buffered read and the zero-copy mapping of lib/block.c
 * (bdrv_map_extents) share.  A format driver whose read is "map a run, then read host bytes, zeros or the
 * backing node" hands its map (and, for compressed or encrypted pieces, its decoder) to bdrv_read_mapped
 * from its read slot, inside its own locks.  Nothing here knows a format, a lock or the front end.
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

/* n bytes of one run at guest offset into p. */
static int read_run(BlockNode *bs, int64_t offset, int64_t n, uint8_t *p, const BlockStatus *st,
                    const BlockReadMap *m, void *opaque)
{
    switch (bdrv_run_kind(st)) {
    case BLOCK_RUN_HOST:
        return bdrv_pread(st->host_file, st->host_offset, n, p);
    case BLOCK_RUN_BACKING:
        if (bs->backing)
            return bdrv_pread(bs->backing, offset, n, p);
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
        r = read_run(bs, offset, n, p, &st, m, opaque);
        if (r < 0)
            return r;
        offset += n;
        bytes -= n;
        p += n;
    }
    return 0;
}
