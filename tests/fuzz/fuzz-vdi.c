/* SPDX-License-Identifier: MIT */
/*
 * fuzz-vdi.c - libFuzzer target for the VDI format driver: header validation, the block map and its
 * entries (unallocated, zero, data, past the end of the file), reads, block status, info, and on a
 * writable copy in-place and allocating writes, write-zeroes and discards, through fuzz-common.h.
 * VDI blocks are 1 MiB, larger than the common write plan's ranges, so this target also unmaps whole
 * blocks (the last, partial one counts as whole) and writes into them again. It opens with --no-backing, so a
 * differencing image (its parent UUIDs, type 4) opens and reads alone; its writable open is refused.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_vdi_unmap(const FuzzConfig *cfg, const uint8_t *data, size_t size)
{
    BlockOpenOpts o;
    BlockNode *bs = fuzz_open(cfg, data, size, cfg->format, false, &o);
    if (!bs)
        return;
    int64_t len = bdrv_getlength(bs), budget = FUZZ_READ_BUDGET / 4;
    if (len > 0) {
        int64_t half = len / 2;
        bdrv_pwrite_zeroes(bs, half, len - half, BDRV_REQ_MAY_UNMAP);
        bdrv_discard(bs, 0, half);
        bdrv_pwrite(bs, len - 1, 1, "x", 0);
        bdrv_pwrite(bs, 0, MIN(len, (int64_t)sizeof(fuzz_buf)), fuzz_buf, 0);
        fuzz_read_range(bs, 0, MIN(len, (int64_t)FUZZ_CHUNK), &budget);
        fuzz_read_range(bs, len - 1, 1, &budget);
        fuzz_walk_status(bs);
    }
    bdrv_close(bs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "vdi", .writable = true, .no_backing = true };
    fuzz_run(&cfg, data, size);
    fuzz_vdi_unmap(&cfg, data, size);
    return 0;
}
