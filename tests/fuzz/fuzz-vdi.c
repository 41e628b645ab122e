/*
 * fuzz-vdi.c - libFuzzer target for the VDI format driver: header validation, the block map and its
 * entries (unallocated, zero, data, past the end of the file), reads, block status, info, and on a
 * writable copy in-place and allocating writes, write-zeroes with unmap and discards, through
 * fuzz-common.h.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "vdi", .writable = true };
    return fuzz_run(&cfg, data, size);
}
