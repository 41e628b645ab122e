/* SPDX-License-Identifier: MIT */
/*
 * memimg.h - what the driver unit tests that build images byte by byte in memory share: a header field
 * patched in place, the image opened on a memory node (probed, or as the format named), an open that must
 * be refused with one line, a buffer that must hold one byte value, a value of the node's info.
 * Test-only; each test keeps its own image builders and its own assertions.
 */
#ifndef IMGFUSE_MEMIMG_H
#define IMGFUSE_MEMIMG_H
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "block.h"
#include "tap.h"
#include "util.h"

static inline bool all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return false;
    return true;
}

/* A field of width bytes (1, 4 or 8) at p set to v, big- or little-endian. */
static inline void put_field(uint8_t *p, int width, uint64_t v, bool big_endian)
{
    if (width == 1)
        *p = (uint8_t)v;
    else if (width == 4 && big_endian)
        st_be32(p, (uint32_t)v);
    else if (width == 4)
        st_le32(p, (uint32_t)v);
    else if (big_endian)
        st_be64(p, v);
    else
        st_le64(p, v);
}

/* img (len bytes) opened with o on a memory node that is read-only when o is, as fmt (NULL: probed). */
static inline BlockNode *open_mem(const uint8_t *img, size_t len, const char *fmt, const BlockOpenOpts *o,
                                  Error *err)
{
    memset(err, 0, sizeof(*err));
    BlockNode *mem = bdrv_open_memory(img, len, o->read_only);
    return mem ? bdrv_open_on_node(mem, fmt, o, err) : NULL;
}

/* The value of key in the node's info, as text (the last of that key; none when there is none). */
static inline const char *info_value_or(BlockNode *bs, const char *key, const char *none, char *buf, size_t len)
{
    InfoList l = { 0 };
    bdrv_get_info(bs, &l);
    snprintf(buf, len, "%s", none);
    for (int i = 0; i < l.n; i++)
        if (strcmp(l.items[i].key, key) == 0) {
            if (l.items[i].str)
                snprintf(buf, len, "%s", l.items[i].str);
            else
                snprintf(buf, len, "%lld", (long long)l.items[i].num);
        }
    info_free(&l);
    return buf;
}

static inline const char *info_value(BlockNode *bs, const char *key, char *buf, size_t len)
{
    return info_value_or(bs, key, "", buf, len);
}

/* One assertion: the open that gave bs and err was refused with one line containing want. */
static inline void open_refused(BlockNode *bs, const Error *err, const char *want)
{
    ok(!bs && strstr(err->msg, want) && !strchr(err->msg, '\n'), "refused: %s", err->msg);
    if (bs)
        bdrv_close(bs);
}
#endif
