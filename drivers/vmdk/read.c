/* SPDX-License-Identifier: MIT */
/*
 * read.c - the read side of the VMDK driver: the map of a guest range (a run of grains of one kind in a
 * sparse extent, a flat extent's host bytes, a zero extent), read through the core's bdrv_read_mapped
 * with a decoder for compressed (and damaged) grains, and block_status from the same map.
 */
#include "vmdk.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- reading */

int vmdk_find_extent(const VmdkState *s, uint64_t offset)
{
    int lo = 0, hi = s->n_ext - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (s->ext[mid].start <= offset)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Decodes [off, off+bytes) of sparse extent ei, a run its map could not hand out: compressed grains are
 * inflated one at a time, a damaged grain fails with EIO. */
static int vmdk_decode_sparse(VmdkState *s, int ei, uint64_t off, uint64_t bytes, uint8_t *buf)
{
    VmdkExtent *e = &s->ext[ei];
    uint8_t *grain = NULL;
    int r = 0;
    for (uint64_t done = 0, n; r == 0 && done < bytes; done += n) {
        uint64_t pos = off + done, g = pos / e->grain_bytes, in_grain = pos % e->grain_bytes, host = 0;
        GrainKind kind;
        n = MIN(bytes - done, e->grain_bytes - in_grain);
        r = vmdk_grain(s, ei, g, &kind, &host, NULL);
        if (r == 0 && kind != GRAIN_COMPRESSED)
            r = -EIO; /* a damaged grain, or the table changed under the map: never guess */
        if (r == 0 && !grain && !(grain = malloc(e->grain_bytes)))
            r = -ENOMEM;
        if (r == 0)
            r = vmdk_inflate_grain(e, g, host, grain);
        if (r == 0)
            memcpy(buf + done, grain + in_grain, n);
    }
    free(grain);
    return r;
}

/* Status of a run of grains of one kind (host-contiguous for data) from off in sparse extent ei. */
static int vmdk_status_sparse(VmdkState *s, int ei, uint64_t off, uint64_t bytes, BlockStatus *st)
{
    VmdkExtent *e = &s->ext[ei];
    uint64_t n = 0;
    GrainKind first = GRAIN_ABSENT;
    uint64_t first_host = 0;
    while (n < bytes) {
        GrainKind kind;
        bool whole_gt;
        uint64_t pos = off + n, g = pos / e->grain_bytes, host = 0;
        int r = vmdk_grain(s, ei, g, &kind, &host, &whole_gt);
        if (r < 0)
            return r;
        uint64_t span_end = whole_gt ? (g / VMDK_GTES_PER_GT + 1) * VMDK_GTES_PER_GT * e->grain_bytes
                                     : (g + 1) * e->grain_bytes;
        uint64_t take = MIN(bytes - n, span_end - pos);
        host += pos % e->grain_bytes;
        if (n == 0) {
            first = kind;
            first_host = host;
        } else if (kind != first || (kind == GRAIN_DATA && host != first_host + n) || kind == GRAIN_BAD) {
            break;
        }
        n += take;
        if (kind == GRAIN_BAD)
            break;
    }
    st->bytes = (int64_t)n;
    switch (first) {
    case GRAIN_ABSENT:
        break;
    case GRAIN_ZERO:
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        break;
    case GRAIN_DATA:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)first_host;
        st->host_file = e->file;
        break;
    case GRAIN_COMPRESSED:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_COMPRESSED;
        break;
    case GRAIN_BAD:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED; /* the read reports the error */
        break;
    }
    return 0;
}

/* The map of [offset, offset+bytes) of one extent: a run of grains of one kind, or of a flat or zero
 * extent. */
static int vmdk_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    VmdkState *s = bs->opaque;
    (void)opaque;
    int ei = vmdk_find_extent(s, (uint64_t)offset);
    VmdkExtent *e = &s->ext[ei];
    uint64_t off = (uint64_t)offset - e->start;
    uint64_t n = MIN((uint64_t)bytes, e->bytes - off);
    if (e->type == EXT_SPARSE)
        return vmdk_status_sparse(s, ei, off, n, st);
    st->bytes = (int64_t)n;
    if (e->type == EXT_ZERO) {
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        return 0;
    }
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    st->host_offset = (int64_t)(e->flat_offset + off);
    st->host_file = e->file;
    return 0;
}

/* A run vmdk_map left to the driver (compressed or damaged grains) lies in one sparse extent. */
static int vmdk_decode(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st, void *opaque)
{
    VmdkState *s = bs->opaque;
    (void)st;
    (void)opaque;
    int ei = vmdk_find_extent(s, (uint64_t)offset);
    VmdkExtent *e = &s->ext[ei];
    uint64_t off = (uint64_t)offset - e->start;
    if (e->type != EXT_SPARSE || (uint64_t)bytes > e->bytes - off)
        return -EIO;
    return vmdk_decode_sparse(s, ei, off, (uint64_t)bytes, buf);
}

static const BlockReadMap vmdk_read_map = { .map = vmdk_map, .decode = vmdk_decode };

int vmdk_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return bdrv_read_mapped(bs, offset, bytes, buf, &vmdk_read_map, NULL);
}

int vmdk_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    return bdrv_status_mapped_locked(bs, offset, bytes, st, &vmdk_read_map, NULL);
}
