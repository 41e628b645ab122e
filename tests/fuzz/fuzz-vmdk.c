/* SPDX-License-Identifier: MIT */
/*
 * fuzz-vmdk.c - libFuzzer target for the VMDK format driver: the sparse extent header and its footer copy
 * (stream-optimized), the grain directory and grain tables, zeroed-grain entries, grain markers and the
 * inflation of compressed grains, block status, grain and table allocation on the write path, and the
 * descriptor parser (embedded in a sparse extent, or a standalone descriptor, whose extent files an
 * in-memory image may never open), a bare seSparse extent (its headers, 64-bit directory and table
 * entries), all through fuzz-common.h.  --no-backing lets a delta link's own grains be read, and a bare
 * seSparse extent be opened at all.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "vmdk", .writable = true, .no_backing = true };
    return fuzz_run(&cfg, data, size);
}
