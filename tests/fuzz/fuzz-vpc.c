/* SPDX-License-Identifier: MIT */
/*
 * fuzz-vpc.c - libFuzzer target for the VHD (vpc) format driver: footer and footer-copy selection,
 * checksums, the dynamic header, BAT loading and validation, parent locators (opened with --no-backing,
 * so a differencing disk's own sectors and bitmaps are read), sector-bitmap lookups, block status, and
 * block allocation and bitmap updates on the write path, all through fuzz-common.h.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "vpc", .writable = true, .no_backing = true };
    return fuzz_run(&cfg, data, size);
}
