/* SPDX-License-Identifier: MIT */
/*
 * raw.c - the "raw" format driver: the bytes of the file are the disk (a window of it, --offset/--size,
 * is the window filter's job, drivers/window.c, as for every format).  Sizes are exact to the byte.
 * When raw was probed rather than named and the node is writable, a write that would make the first
 * sector probe as another format, or carry any magic of lib/probe.c's table of known formats, is
 * refused (the format-probing attack); info names a format the file looks like (a fixed VHD, or any
 * file opened with -f raw).  It knows nothing about other formats beyond asking their probe functions
 * and that table.  Snapshots are its file's (an RBD image's), when the protocol driver has them.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RAW_GUARD_BYTES 512
#define RAW_PROBE_BYTES 4096

static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)buf;
    (void)len;
    (void)filename;
    return 1;
}

static int raw_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    (void)opts;
    int64_t flen = bdrv_getlength(bs->file);
    if (flen < 0) {
        error_set(err, (int)-flen, "cannot get the file size: %s", strerror((int)-flen));
        return (int)flen;
    }
    return 0;
}

static int64_t raw_getlength(BlockNode *bs)
{
    return bdrv_getlength(bs->file);
}

static int raw_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return bdrv_pread(bs->file, offset, bytes, buf);
}

/* Would the first bytes of the file, after this write, probe as a format other than raw? */
static int raw_probe_guard(BlockNode *bs, int64_t file_offset, int64_t bytes, const void *buf)
{
    uint8_t *head = malloc(RAW_PROBE_BYTES);
    if (!head)
        return -ENOMEM;
    int r = bdrv_pread(bs->file, 0, RAW_PROBE_BYTES, head);
    if (r < 0) {
        free(head);
        return r;
    }
    int64_t n = MIN(bytes, RAW_PROBE_BYTES - file_offset);
    memcpy(head + file_offset, buf, (size_t)n);
    int64_t flen = bdrv_getlength(bs->file);
    size_t len = (size_t)MIN(RAW_PROBE_BYTES, MAX(flen, file_offset + n));
    const char *known = bdrv_known_magic_at_start(head, len);
    if (known) {
        log_msg("%s: write to sector 0 refused: the image would then look like a %s", bs->filename, known);
        r = -EPERM;
    }
    for (const BlockDriver *const *d = bdrv_driver_list(); *d && r == 0; d++) {
        if (*d == bs->drv || (*d)->is_protocol || (*d)->is_filter || !(*d)->probe)
            continue;
        if ((*d)->probe(head, len, bs->filename) > 1) {
            log_msg("%s: write to sector 0 refused: the image would then probe as '%s'", bs->filename,
                    (*d)->name);
            r = -EPERM;
        }
    }
    free(head);
    return r;
}

static int raw_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    if (bs->probed && offset < RAW_GUARD_BYTES) {
        int r = raw_probe_guard(bs, offset, bytes, buf);
        if (r < 0)
            return r;
    }
    return bdrv_pwrite(bs->file, offset, bytes, buf, flags);
}

static int raw_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    return bdrv_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int raw_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    return bdrv_discard(bs->file, offset, bytes);
}

static int raw_truncate(BlockNode *bs, int64_t size)
{
    return bdrv_truncate(bs->file, size);
}

static int64_t raw_get_allocated_size(BlockNode *bs)
{
    return bdrv_get_allocated_size(bs->file);
}

static void raw_get_info(BlockNode *bs, InfoList *info)
{
    const char *driver = NULL, *what = bdrv_known_format_hint(bs->file, &driver);
    if (what && driver)
        info_add_str(info, "looks_like", "%s (read it with -f %s)", what, driver);
    else if (what)
        info_add_str(info, "looks_like", "%s (no driver for it yet)", what);
}

static bool raw_has_zero_init(BlockNode *bs)
{
    return bdrv_has_zero_init(bs->file);
}

/* Snapshots of the file below (an RBD image's): raw has none of its own, so it shows its file's, each opened
 * as a raw node over the file's snapshot node. */
static int raw_snapshot_list(BlockNode *bs, SnapshotInfo **list)
{
    return bdrv_snapshot_list(bs->file, list);
}

/* The file's snapshot slots; none (a local file): raw's own "does not support" line, as before. */
static int raw_file_snapshots(BlockNode *bs, bool has_slot, Error *err)
{
    if (has_slot)
        return 0;
    error_set(err, ENOTSUP, "%s: format 'raw' does not support internal snapshots", bs->filename);
    return -ENOTSUP;
}

static BlockNode *raw_snapshot_open(BlockNode *bs, const char *id, Error *err)
{
    if (raw_file_snapshots(bs, bs->file->drv->snapshot_open != NULL, err) < 0)
        return NULL;
    BlockNode *file = bdrv_snapshot_open(bs->file, id, err);
    return file ? bdrv_open_on_node(file, "raw", NULL, err) : NULL;
}

static int raw_snapshot_create(BlockNode *bs, const char *name, Error *err)
{
    int r = raw_file_snapshots(bs, bs->file->drv->snapshot_create != NULL, err);
    return r < 0 ? r : bdrv_snapshot_create(bs->file, name, err);
}

static int raw_snapshot_delete(BlockNode *bs, const char *id_or_name, Error *err)
{
    int r = raw_file_snapshots(bs, bs->file->drv->snapshot_delete != NULL, err);
    return r < 0 ? r : bdrv_snapshot_delete(bs->file, id_or_name, err);
}

static int raw_create(const char *filename, const CreateOpts *opts, Error *err)
{
    const BlockDriver *file = bdrv_find_driver("file");
    return file->create(filename, opts, err);
}

const BlockDriver bdrv_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .read = raw_read,
    .write = raw_write,
    .write_zeroes = raw_write_zeroes,
    .discard = raw_discard,
    .block_status = bdrv_block_status_same_offset,
    .getlength = raw_getlength,
    .get_allocated_size = raw_get_allocated_size,
    .truncate = raw_truncate,
    .get_info = raw_get_info,
    .snapshot_list = raw_snapshot_list,
    .snapshot_open = raw_snapshot_open,
    .snapshot_create = raw_snapshot_create,
    .snapshot_delete = raw_snapshot_delete,
    .has_zero_init = raw_has_zero_init,
    .create = raw_create,
    .shares_write = true,
};
