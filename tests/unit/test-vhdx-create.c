/* SPDX-License-Identifier: MIT */
/*
 * test-vhdx-create.c - unit tests of the VHDX image creator (drivers/vhdx/create.c) on memory nodes:
 * dynamic, fixed, block_state_zero and differencing images are created into an empty node and opened
 * again by the VHDX reader, which must find the sizes, sectors, log and BAT the spec asked for (block
 * states and host offsets, sector bitmaps of a differencing image, its parent locator's keys); the
 * default block size follows qemu-img's steps; the limits are refused with their one-line messages.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "memimg.h"
#include "tap.h"
#include "util.h"
#include "../../drivers/vhdx/vhdx.h"

static uint8_t *image;
static size_t image_len;

/* Creates spec into a memory node; image/image_len hold the bytes made. 0 or -errno. */
static int create(VhdxCreateSpec *sp, Error *err)
{
    memset(err, 0, sizeof(*err));
    free(image);
    image = NULL;
    int r = vhdx_create_check(sp, "t.vhdx", err);
    if (r < 0)
        return r;
    BlockNode *m = bdrv_open_memory(NULL, 0, false);
    r = m ? vhdx_create_on(m, sp, err) : -ENOMEM;
    int64_t len = m && r == 0 ? bdrv_getlength(m) : -1;
    if (len > 0 && (image = malloc((size_t)len)) && bdrv_pread(m, 0, len, image) == 0)
        image_len = (size_t)len;
    else if (r == 0)
        r = -EIO;
    if (m)
        bdrv_close(m);
    return r;
}

static BlockNode *reopen(Error *err)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.no_backing = true;
    memset(err, 0, sizeof(*err));
    return bdrv_open_on_node(bdrv_open_memory(image, image_len, true), "vhdx", &o, err);
}

#define INFO_IS(bs, key, want) do { char b_[128]; info_value(bs, key, b_, sizeof(b_)); \
    ok(strcmp(b_, want) == 0, "%s: %s (want %s)", key, b_, want); } while (0)

/* The BAT entry at index i of the image made (the BAT region starts after the log). */
static uint64_t bat(uint32_t log_size, uint64_t i)
{
    return ld_le64(image + VHDX_ALIGN + log_size + i * 8);
}

static void test_dynamic(void)
{
    Error err;
    VhdxCreateSpec sp = { .size = 20 * MiB };
    is_int(create(&sp, &err), 0, "dynamic 20 MiB created: %s", err.msg);
    is_int(image_len, 4 * MiB, "ends after the log, the BAT and the metadata (4 MiB)");
    ok(memcmp(image, "vhdxfile", 8) == 0 && memcmp(image + 8, "i\0m\0g\0f\0u\0s\0e\0\0", 16) == 0,
       "file identifier names imgfuse as the creator");
    BlockNode *bs = reopen(&err);
    ok(bs != NULL, "the reader opens it: %s", err.msg);
    if (!bs)
        return;
    is_int(bdrv_getlength(bs), 20 * MiB, "virtual size");
    INFO_IS(bs, "subformat", "dynamic");
    INFO_IS(bs, "block_size", "8388608");
    INFO_IS(bs, "logical_sector_size", "512");
    INFO_IS(bs, "physical_sector_size", "512");
    INFO_IS(bs, "log_offset", "1048576");
    INFO_IS(bs, "log_length", "1048576");
    INFO_IS(bs, "log", "clean");
    INFO_IS(bs, "header", "2");
    INFO_IS(bs, "header_sequence", "2");
    INFO_IS(bs, "bat_entries", "3");
    INFO_IS(bs, "allocated_blocks", "0");
    ok(bat(MiB, 0) == PAYLOAD_NOT_PRESENT && bat(MiB, 2) == PAYLOAD_NOT_PRESENT, "blocks NOT_PRESENT");
    BlockStatus st = { 0 };
    ok(bdrv_block_status(bs, 0, 20 * MiB, &st) == 0 && (st.flags & BDRV_BLOCK_ZERO) && st.bytes == 20 * MiB,
       "the whole disk reads as zeros (flags %d, %lld bytes)", st.flags, (long long)st.bytes);
    bdrv_close(bs);
    /* two images never share their GUIDs */
    uint8_t guids[48];
    memcpy(guids, image + VHDX_HEADER2_OFF + HD_FILE_WRITE, 32);
    memcpy(guids + 32, image + VHDX_ALIGN + MiB + MiB + 64 * KiB + 16, 16); /* page 83 */
    create(&sp, &err);
    ok(memcmp(guids, image + VHDX_HEADER2_OFF + HD_FILE_WRITE, 32) != 0 &&
       memcmp(guids + 32, image + 3 * MiB + 64 * KiB + 16, 16) != 0, "a second image has new GUIDs");
}

static void test_fixed_and_zero(void)
{
    Error err;
    VhdxCreateSpec sp = { .size = 3 * MiB - 512, .block_size = MiB, .log_size = 2 * MiB, .fixed = true };
    is_int(create(&sp, &err), 0, "fixed, 1 MiB blocks, 2 MiB log: %s", err.msg);
    /* log at 1 MiB (2 MiB), BAT at 3 MiB, metadata at 4 MiB, blocks from 5 MiB */
    is_int(image_len, 8 * MiB, "the file holds every block");
    ok(bat(2 * MiB, 0) == (5 * MiB | PAYLOAD_FULLY_PRESENT) && bat(2 * MiB, 2) == (7 * MiB | PAYLOAD_FULLY_PRESENT),
       "blocks FULLY_PRESENT back to back after the metadata");
    BlockNode *bs = reopen(&err);
    ok(bs != NULL, "the reader opens it: %s", err.msg);
    if (!bs)
        return;
    INFO_IS(bs, "subformat", "fixed");
    INFO_IS(bs, "log_length", "2097152");
    INFO_IS(bs, "allocated_blocks", "3");
    BlockStatus st = { 0 };
    ok(bdrv_block_status(bs, MiB + 4096, MiB, &st) == 0 && (st.flags & BDRV_BLOCK_DATA) &&
       st.host_offset == 6 * MiB + 4096, "block 1 is data at 6 MiB in the file (host %lld)", (long long)st.host_offset);
    bdrv_close(bs);

    sp = (VhdxCreateSpec){ .size = 5 * MiB, .block_size = MiB, .block_state_zero = true };
    is_int(create(&sp, &err), 0, "dynamic with block_state_zero=on: %s", err.msg);
    ok(bat(MiB, 0) == PAYLOAD_ZERO && bat(MiB, 4) == PAYLOAD_ZERO, "blocks in state ZERO");
    bs = reopen(&err);
    ok(bs != NULL, "the reader opens it: %s", err.msg);
    if (bs) {
        ok(bdrv_block_status(bs, 0, 5 * MiB, &st) == 0 && (st.flags & BDRV_BLOCK_ZERO) && st.bytes == 5 * MiB,
           "reads as zeros");
        bdrv_close(bs);
    }
}

static void test_differencing(void)
{
    Error err;
    /* 4096-byte logical sectors and 256 MiB blocks: a chunk is 128 blocks; 130 blocks make two chunks */
    VhdxCreateSpec sp = { .size = 130 * 256 * MiB, .block_size = 256 * MiB, .logical_sector = 4096,
                          .physical_sector = 4096, .parent_linkage = "{01234567-89ab-cdef-0123-456789abcdef}",
                          .relative_path = ".\\p\xc3\xa9re.vhdx", .absolute_win32_path = "\\\\?\\Z:\\srv\\p\xc3\xa9re.vhdx" };
    is_int(create(&sp, &err), 0, "differencing, two chunks: %s", err.msg);
    /* BAT: 2 x (128 + 1) entries; bitmaps at 4 MiB and 5 MiB (after the metadata at 3 MiB) */
    ok(bat(MiB, 128) == (4 * MiB | SB_PRESENT) && bat(MiB, 257) == (5 * MiB | SB_PRESENT),
       "a sector bitmap per chunk, present");
    ok(bat(MiB, 0) == PAYLOAD_NOT_PRESENT && bat(MiB, 130) == PAYLOAD_NOT_PRESENT && bat(MiB, 256) == 0,
       "payload blocks NOT_PRESENT");
    is_int(image_len, 6 * MiB, "the bitmaps are in the file (zeros)");
    BlockNode *bs = reopen(&err);
    ok(bs != NULL, "the reader opens it without its parent: %s", err.msg);
    if (!bs)
        return;
    INFO_IS(bs, "subformat", "differencing");
    INFO_IS(bs, "logical_sector_size", "4096");
    INFO_IS(bs, "bat_entries", "258");
    INFO_IS(bs, "parent_linkage", "{01234567-89ab-cdef-0123-456789abcdef}");
    ok(bs->backing_candidates[0] && strcmp(bs->backing_candidates[0], "./p\xc3\xa9re.vhdx") == 0,
       "relative_path, UTF-16 and back: %s", bs->backing_candidates[0]);
    ok(bs->backing_candidates[1] && strcmp(bs->backing_candidates[1], "/srv/p\xc3\xa9re.vhdx") == 0,
       "absolute_win32_path: %s", bs->backing_candidates[1]);
    bdrv_close(bs);

    sp.relative_path = "bad\xff";
    ok(create(&sp, &err) == -EINVAL && strcmp(err.msg, "t.vhdx: the parent's name is not valid UTF-8 or too long "
                                                 "for the parent locator") == 0, "a name not in UTF-8: %s", err.msg);
}

static void test_default_block_size(void)
{
    static const struct { uint64_t size; uint32_t want; } cases[] = {
        { GiB, 8 * MiB }, { GiB + 512, 16 * MiB }, { 100 * GiB, 16 * MiB }, { 100 * GiB + 512, 32 * MiB },
        { 32 * TiB, 32 * MiB }, { 32 * TiB + 512, 64 * MiB }, { 64 * TiB, 64 * MiB },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        Error err = { .msg = "" };
        VhdxCreateSpec sp = { .size = cases[i].size };
        ok(vhdx_create_check(&sp, "t.vhdx", &err) == 0 && sp.block_size == cases[i].want,
           "%llu bytes: block size %u (as qemu-img)", (unsigned long long)cases[i].size, sp.block_size);
    }
}

static void refused(VhdxCreateSpec sp, const char *want)
{
    Error err = { .msg = "" };
    ok(vhdx_create_check(&sp, "t.vhdx", &err) == -EINVAL && strcmp(err.msg, want) == 0, "refused: %s", err.msg);
}

static void test_limits(void)
{
    refused((VhdxCreateSpec){ .size = 0 }, "t.vhdx: the size must be a multiple of 512 bytes from 512 bytes to "
                                           "64 TiB, not 0");
    refused((VhdxCreateSpec){ .size = 1000 }, "t.vhdx: the size must be a multiple of 512 bytes from 512 bytes to "
                                              "64 TiB, not 1000");
    refused((VhdxCreateSpec){ .size = 64 * TiB + 512 }, "t.vhdx: the size must be a multiple of 512 bytes from 512 "
                                                        "bytes to 64 TiB, not 70368744178176");
    refused((VhdxCreateSpec){ .size = 8 * MiB + 512, .logical_sector = 4096 },
            "t.vhdx: the size must be a multiple of 4096 bytes from 4096 bytes to 64 TiB, not 8389120");
    refused((VhdxCreateSpec){ .size = 8 * TiB, .block_size = MiB },
            "t.vhdx: 8388608 blocks of 1048576 bytes need 8390655 BAT entries, more than the 4194304 imgfuse "
            "reads; use a larger block_size");
    refused((VhdxCreateSpec){ .size = MiB, .fixed = true, .parent_linkage = "{x}" },
            "t.vhdx: a differencing image (-b) cannot be subformat=fixed");
    refused((VhdxCreateSpec){ .size = MiB, .fixed = true, .block_state_zero = true },
            "t.vhdx: block_state_zero=on is for dynamic images only (a fixed image's blocks are present, a "
            "differencing image's are its parent's)");
    Error err = { .msg = "" };
    VhdxCreateSpec sp = { .size = 4095 * GiB, .block_size = MiB }; /* 4 Mi - 1 entries with the bitmaps' */
    ok(vhdx_create_check(&sp, "t.vhdx", &err) == 0, "4095 GiB of 1 MiB blocks fits the reader's BAT budget: %s",
       err.msg);
    refused((VhdxCreateSpec){ .size = 4 * TiB, .block_size = MiB },
            "t.vhdx: 4194304 blocks of 1048576 bytes need 4195327 BAT entries, more than the 4194304 imgfuse "
            "reads; use a larger block_size");
}

int main(void)
{
    test_dynamic();
    test_fixed_and_zero();
    test_differencing();
    test_default_block_size();
    test_limits();
    free(image);
    return done_testing();
}
