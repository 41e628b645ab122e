/* SPDX-License-Identifier: MIT */
/*
 * fuzz-common.h - the shared body of every libFuzzer target in tests/fuzz/ (one fuzz-DRIVER.c per format
 * driver includes it and names its driver).  It owns what one fuzz input goes through: the input is
 * opened as an image on an in-memory protocol node (never the file system), once with the driver forced
 * and once probed; the virtual disk is read in chunks up to a fixed byte budget, walked with
 * block_status, its snapshots listed, opened and read a little, its info and check run; for writable
 * drivers a private writable copy also gets writes, write-zeroes and discards on a few ranges, is read
 * back and flushed.  A small "fuzzcap" filter between the format driver and the memory node caps how far
 * writes may grow the image, so that the target's memory stays bounded whatever the metadata claims.
 */
#ifndef IMGFUSE_FUZZ_COMMON_H
#define IMGFUSE_FUZZ_COMMON_H

#include "block.h"
#include "util.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_READ_BUDGET (2 * MiB)     /* bytes of guest data read per opened node */
#define FUZZ_CHUNK (64 * KiB)
#define FUZZ_STATUS_STEPS 512          /* block_status calls per walk */
#define FUZZ_MAX_SNAPSHOTS 8           /* snapshot views opened per image */
#define FUZZ_WRITE_GROWTH (64 * MiB)   /* how far writes may grow the image beyond the input */

typedef struct FuzzConfig {
    const char *format;  /* the driver this target fuzzes */
    bool writable;       /* also exercise the write path */
    bool raw_window;     /* stack a window filter, its bounds from the input's first bytes */
    bool no_backing;     /* open with --no-backing: a child naming a parent still opens (memory nodes
                          * may not open files), so its own read path runs with no backing node */
    const char *secret;  /* the key encrypted images (luks) are opened with, NULL: none */
} FuzzConfig;

/* ---------------------------------------------------------------- the fuzzcap filter */

typedef struct FuzzCapState {
    int64_t max_len;
} FuzzCapState;

static int fuzzcap_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    (void)bs;
    (void)opts;
    (void)err;
    return 0;
}

static int fuzzcap_check_end(BlockNode *bs, int64_t offset, int64_t bytes)
{
    FuzzCapState *s = bs->opaque;
    int64_t end;
    if (!add_ok_i64(offset, bytes, &end) || end > s->max_len)
        return -ENOSPC;
    return 0;
}

static int fuzzcap_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return bdrv_pread(bs->file, offset, bytes, buf);
}

static int fuzzcap_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    int r = fuzzcap_check_end(bs, offset, bytes);
    return r < 0 ? r : bdrv_pwrite(bs->file, offset, bytes, buf, flags);
}

static int fuzzcap_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    int r = fuzzcap_check_end(bs, offset, bytes);
    return r < 0 ? r : bdrv_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int fuzzcap_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    return bdrv_discard(bs->file, offset, bytes);
}

static int fuzzcap_truncate(BlockNode *bs, int64_t size)
{
    int r = fuzzcap_check_end(bs, 0, size);
    return r < 0 ? r : bdrv_truncate(bs->file, size);
}

static int64_t fuzzcap_get_allocated_size(BlockNode *bs)
{
    return bdrv_getlength(bs->file);
}

static const BlockDriver fuzzcap_driver = {
    .name = "fuzzcap",
    .instance_size = sizeof(FuzzCapState),
    .is_filter = true,
    .open = fuzzcap_open,
    .read = fuzzcap_read,
    .write = fuzzcap_write,
    .write_zeroes = fuzzcap_write_zeroes,
    .discard = fuzzcap_discard,
    .truncate = fuzzcap_truncate,
    .get_allocated_size = fuzzcap_get_allocated_size,
};

/* A memory node holding a copy of data, under a fuzzcap filter. NULL on failure. */
static BlockNode *fuzz_memory_node(const uint8_t *data, size_t size, bool read_only)
{
    BlockNode *mem = bdrv_open_memory(data, size, read_only);
    if (!mem)
        return NULL;
    BlockNode *cap = bdrv_new_node(&fuzzcap_driver, "fuzz-input");
    if (!cap) {
        bdrv_close(mem);
        return NULL;
    }
    ((FuzzCapState *)cap->opaque)->max_len = (int64_t)size + FUZZ_WRITE_GROWTH;
    cap->file = mem;
    cap->read_only = read_only;
    return cap;
}

/* ---------------------------------------------------------------- exercising one node */

static uint8_t fuzz_buf[FUZZ_CHUNK];

/* Reads [offset, offset + bytes) in chunks; stops at the first error (an error is a fine answer). */
static void fuzz_read_range(BlockNode *bs, int64_t offset, int64_t bytes, int64_t *budget)
{
    while (bytes > 0 && *budget > 0) {
        int64_t n = MIN(MIN(bytes, (int64_t)FUZZ_CHUNK), *budget);
        if (bdrv_pread(bs, offset, n, fuzz_buf) < 0)
            return;
        offset += n;
        bytes -= n;
        *budget -= n;
    }
}

/* The whole disk up to the budget: the start, then a few chunks spread over the rest, odd offsets too. */
static void fuzz_read_disk(BlockNode *bs)
{
    int64_t len = bdrv_getlength(bs), budget = FUZZ_READ_BUDGET;
    if (len <= 0)
        return;
    fuzz_read_range(bs, 0, MIN(len, FUZZ_READ_BUDGET / 2), &budget);
    for (int i = 1; i <= 8 && budget > 0; i++) {
        int64_t at = len / 8 * i - FUZZ_CHUNK / 2 + 1;
        fuzz_read_range(bs, MAX(at, 0), FUZZ_CHUNK, &budget);
    }
    int64_t tail = 1000;
    if (len > tail)
        fuzz_read_range(bs, len - tail, tail + 10, &budget);
}

static void fuzz_walk_status(BlockNode *bs)
{
    int64_t len = bdrv_getlength(bs), offset = 0, budget = FUZZ_READ_BUDGET / 4;
    BlockStatus st;
    for (int i = 0; i < FUZZ_STATUS_STEPS && offset < len; i++) {
        if (bdrv_block_status_above(bs, offset, len - offset, &st) < 0 || st.bytes <= 0)
            return;
        if ((st.flags & BDRV_BLOCK_DATA) && budget > 0)
            fuzz_read_range(bs, offset, MIN(st.bytes, (int64_t)4096), &budget);
        if (bdrv_block_status(bs, offset, MIN(len - offset, (int64_t)FUZZ_CHUNK), &st) < 0)
            return;
        offset += MAX(st.bytes, (int64_t)1);
        BlockStatus above;
        if (bdrv_block_status_above(bs, offset < len ? offset : 0, 1, &above) < 0)
            return;
    }
}

static void fuzz_info(BlockNode *bs)
{
    InfoList info = { 0 };
    bdrv_get_info(bs, &info);
    info_free(&info);
}

static void fuzz_snapshots(BlockNode *bs)
{
    SnapshotInfo *list = NULL;
    int n = bdrv_snapshot_list(bs, &list);
    for (int i = 0; i < n && i < FUZZ_MAX_SNAPSHOTS; i++) {
        Error err = { .msg = "", .errnum = 0 };
        BlockNode *view = bdrv_snapshot_open(bs, list[i].id, &err);
        if (view) {
            int64_t budget = 4 * FUZZ_CHUNK, len = bdrv_getlength(view);
            fuzz_read_range(view, 0, FUZZ_CHUNK, &budget);
            if (len > FUZZ_CHUNK)
                fuzz_read_range(view, len / 2 + 3, FUZZ_CHUNK, &budget);
            BlockStatus st;
            if (len > 0)
                bdrv_block_status(view, 0, len, &st);
            fuzz_info(view);
            bdrv_close(view);
        }
        bdrv_vmstate_read(bs, list[i].id, 0, 4096, fuzz_buf);
        bdrv_vmstate_read(bs, list[i].name, (int64_t)(list[i].vm_state_size / 2), 1000, fuzz_buf);
    }
    free(list);
}

static void fuzz_check(BlockNode *bs)
{
    InfoList report = { 0 };
    bdrv_check(bs, &report);
    info_free(&report);
}

static void fuzz_exercise(BlockNode *bs)
{
    fuzz_info(bs);
    fuzz_read_disk(bs);
    fuzz_walk_status(bs);
    fuzz_snapshots(bs);
    fuzz_check(bs);
}

/* A few writes, zeroes and discards over the disk, read back; errors are fine answers. */
static void fuzz_write_ranges(BlockNode *bs, const uint8_t *data, size_t size)
{
    static uint8_t pattern[3 * FUZZ_CHUNK / 2];
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = (uint8_t)(i * 7 + 1 + (size ? data[i % size] : 0));
    int64_t len = bdrv_getlength(bs);
    if (len <= 0)
        return;
    const struct { int64_t at; int64_t bytes; int op; } plan[] = {
        { 0, 4096, 0 },
        { len / 2 + 17, FUZZ_CHUNK + 1000, 0 },
        { len / 4, 2 * FUZZ_CHUNK, 1 },
        { len / 3 + 512, FUZZ_CHUNK, 2 },
        { len - 700, 1400, 0 },
        { len / 5, 3 * FUZZ_CHUNK / 2, 0 },
        { len / 5 + 4096, 8192, 3 },
        { len / 5 + 100, 300, 0 },
    };
    for (size_t i = 0; i < ARRAY_SIZE(plan); i++) {
        int64_t at = MAX(plan[i].at, 0), bytes = MIN(plan[i].bytes, len - at);
        if (bytes <= 0)
            continue;
        switch (plan[i].op) {
        case 0:
            bdrv_pwrite(bs, at, MIN(bytes, (int64_t)sizeof(pattern)), pattern, 0);
            break;
        case 1:
            bdrv_pwrite_zeroes(bs, at, bytes, BDRV_REQ_MAY_UNMAP);
            break;
        case 2:
            bdrv_discard(bs, at, bytes);
            break;
        case 3:
            bdrv_pwrite_zeroes(bs, at, bytes, 0);
            break;
        }
        int64_t budget = FUZZ_CHUNK;
        fuzz_read_range(bs, at, MIN(bytes, (int64_t)FUZZ_CHUNK), &budget);
    }
    bdrv_flush(bs);
    Error err = { .msg = "", .errnum = 0 };
    if (bdrv_snapshot_create(bs, "fuzz", &err) == 0) {
        bdrv_pwrite(bs, 0, 4096, pattern, 0);
        Error e2 = { .msg = "", .errnum = 0 };
        bdrv_snapshot_delete(bs, "fuzz", &e2);
    }
    fuzz_walk_status(bs);
    fuzz_check(bs);
}

/* ---------------------------------------------------------------- one input */

static void fuzz_options(const FuzzConfig *cfg, const uint8_t *data, size_t size, BlockOpenOpts *o,
                         bool read_only)
{
    block_open_opts_init(o);
    o->read_only = read_only;
    o->discard = DISCARD_UNMAP;
    if (cfg->format && strcmp(cfg->format, "qcow2") == 0) {
        bdrv_opts_add(o, "qcow2.l2-cache-size=64K"); /* small: eviction paths get exercised */
        o->driver_opts_partial = true; /* a probe that finds another format is not refused for it */
    }
    o->no_backing = cfg->no_backing;
    if (cfg->secret) {
        o->secret = (const uint8_t *)cfg->secret;
        o->secret_len = strlen(cfg->secret);
    }
    (void)data;
    (void)size;
}

/* cfg->raw_window: a window filter over bs, its bounds taken from the first bytes of the input. */
static BlockNode *fuzz_window(const FuzzConfig *cfg, const uint8_t *data, size_t size, BlockNode *bs)
{
    if (!bs || !cfg->raw_window || size < 4)
        return bs;
    int64_t offset = data[0] & 0x3f ? (int64_t)(data[1] % 64) * 8 : 0;
    int64_t wsize = data[2] & 0x3 ? -1 : (int64_t)data[3] * 16;
    if (!offset && wsize < 0)
        return bs;
    Error err = { .msg = "", .errnum = 0 };
    BlockNode *w = bdrv_open_window(bs, offset, wsize, &err);
    if (!w && !err.msg[0])
        abort(); /* every refusal must say why */
    bdrv_close(bs);
    return w;
}

static BlockNode *fuzz_open(const FuzzConfig *cfg, const uint8_t *data, size_t size, const char *format,
                            bool read_only, BlockOpenOpts *o)
{
    fuzz_options(cfg, data, size, o, read_only);
    BlockNode *file = fuzz_memory_node(data, size, read_only);
    if (!file)
        return NULL;
    Error err = { .msg = "", .errnum = 0 };
    BlockNode *bs = bdrv_open_on_node(file, format, o, &err);
    if (!bs && !err.msg[0])
        abort(); /* every refusal must say why */
    return fuzz_window(cfg, data, size, bs);
}

static int fuzz_run(const FuzzConfig *cfg, const uint8_t *data, size_t size)
{
    BlockOpenOpts o;
    BlockNode *bs = fuzz_open(cfg, data, size, cfg->format, true, &o);
    if (bs) {
        fuzz_exercise(bs);
        bdrv_close(bs);
    }
    bs = fuzz_open(cfg, data, size, NULL, true, &o);
    if (bs) {
        if (strcmp(bs->drv->name, cfg->format) != 0 && strcmp(bs->drv->name, "raw") != 0)
            fuzz_exercise(bs); /* probed as another format: still a parser of this input */
        else
            fuzz_read_disk(bs);
        bdrv_close(bs);
    }
    if (cfg->writable) {
        bs = fuzz_open(cfg, data, size, cfg->format, false, &o);
        if (bs) {
            fuzz_write_ranges(bs, data, size);
            bdrv_close(bs);
        }
    }
    return 0;
}

#endif
