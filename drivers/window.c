/* SPDX-License-Identifier: MIT */
/*
 * window.c - the "window" filter driver: shows [offset, offset + size) of the node below it, a format
 * node with its whole backing chain (--offset/--size on any format, one partition of a disk).  Every
 * request is shifted by offset; reads past the window's end are zeros (the core), writes, write-zeroes and
 * discards that would pass it fail with ENOSPC and never reach the node below beyond it.  Block status is
 * the chain's below (host offsets passed through, so read-only windows keep the zero-copy read path).
 * It is stacked over a chain by bdrv_open (window.offset, window.size options) or bdrv_open_window
 * (lib/open.c) and knows no format.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

typedef struct WindowState {
    int64_t offset;  /* window start in the node below */
    int64_t size;    /* window size, -1 = to the end of the node below */
} WindowState;

static int window_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    WindowState *s = bs->opaque;
    (void)opts;
    s->offset = bdrv_opt_size(bs, "offset", 0);
    s->size = bdrv_opt_size(bs, "size", -1);
    int64_t len = bdrv_getlength(bs->file);
    if (len < 0) {
        error_set(err, (int)-len, "cannot get the disk size: %s", strerror((int)-len));
        return (int)len;
    }
    if (s->offset < 0 || s->size < -1) {
        error_set(err, EINVAL, "negative --offset or --size");
        return -EINVAL;
    }
    if (s->offset > len) {
        error_set(err, EINVAL, "--offset %" PRId64 " is beyond the end of the disk (%" PRId64 " bytes)",
                  s->offset, len);
        return -EINVAL;
    }
    int64_t end;
    if (s->size >= 0 && (!add_ok_i64(s->offset, s->size, &end) || end > len)) {
        error_set(err, EINVAL,
                  "--offset %" PRId64 " + --size %" PRId64 " is beyond the end of the disk (%" PRId64
                  " bytes)", s->offset, s->size, len);
        return -EINVAL;
    }
    return 0;
}

static int64_t window_getlength(BlockNode *bs)
{
    WindowState *s = bs->opaque;
    if (s->size >= 0)
        return s->size;
    int64_t len = bdrv_getlength(bs->file);
    if (len < 0)
        return len;
    return MAX(len - s->offset, 0);
}

/* 0 if [offset, offset + bytes) lies inside the window, else -ENOSPC (or the length's error). */
static int window_check(BlockNode *bs, int64_t offset, int64_t bytes)
{
    int64_t len = window_getlength(bs);
    if (len < 0)
        return (int)len;
    return offset > len || bytes > len - offset ? -ENOSPC : 0;
}

static int window_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    WindowState *s = bs->opaque;
    return bdrv_pread(bs->file, s->offset + offset, bytes, buf);
}

static int window_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    WindowState *s = bs->opaque;
    int r = window_check(bs, offset, bytes);
    return r < 0 ? r : bdrv_pwrite(bs->file, s->offset + offset, bytes, buf, flags);
}

static int window_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    WindowState *s = bs->opaque;
    int r = window_check(bs, offset, bytes);
    return r < 0 ? r : bdrv_pwrite_zeroes(bs->file, s->offset + offset, bytes, flags);
}

static int window_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    WindowState *s = bs->opaque;
    int r = window_check(bs, offset, bytes);
    return r < 0 ? r : bdrv_discard(bs->file, s->offset + offset, bytes);
}

/* The chain's status below, shifted; st->depth is the layer of the chain that decided. */
static int window_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    WindowState *s = bs->opaque;
    return bdrv_block_status_above(bs->file, s->offset + offset, bytes, st);
}

static int window_truncate(BlockNode *bs, int64_t size)
{
    WindowState *s = bs->opaque;
    if (s->size >= 0)
        return -ENOTSUP; /* a fixed window cannot change size */
    int64_t end;
    if (!add_ok_i64(s->offset, size, &end))
        return -EINVAL;
    return bdrv_truncate(bs->file, end);
}

static void window_get_info(BlockNode *bs, InfoList *info)
{
    WindowState *s = bs->opaque;
    info_add_int(info, "window_offset", s->offset);
    info_add_int(info, "window_size", window_getlength(bs));
}

static bool window_has_zero_init(BlockNode *bs)
{
    WindowState *s = bs->opaque;
    return s->offset == 0 && s->size < 0 && bdrv_has_zero_init(bs->file);
}

static const BlockOptionSpec window_options[] = {
    { "offset", BDRV_OPT_SIZE, BDRV_OPT_TOP_ONLY, "start of the window over the chain, bytes (--offset)" },
    { "size", BDRV_OPT_SIZE, BDRV_OPT_TOP_ONLY, "size of the window, bytes (--size; default: to the end)" },
    { NULL, 0, 0, NULL },
};

const BlockDriver bdrv_window = {
    .name = "window",
    .options = window_options,
    .instance_size = sizeof(WindowState),
    .is_filter = true,
    .over_chain = true,
    .open = window_open,
    .read = window_read,
    .write = window_write,
    .write_zeroes = window_write_zeroes,
    .discard = window_discard,
    .block_status = window_block_status,
    .getlength = window_getlength,
    .truncate = window_truncate,
    .get_info = window_get_info,
    .has_zero_init = window_has_zero_init,
};
