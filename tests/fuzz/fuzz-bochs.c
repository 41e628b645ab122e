/* SPDX-License-Identifier: MIT */
/*
 * fuzz-bochs.c - libFuzzer target for the read-only Bochs driver: the redolog header (magic, type,
 * subtype, version, sizes), the catalog and its bounds, sector bitmaps, reads, block status and info,
 * through fuzz-common.h.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "bochs" };
    return fuzz_run(&cfg, data, size);
}
