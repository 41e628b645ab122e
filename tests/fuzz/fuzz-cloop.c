/* SPDX-License-Identifier: MIT */
/*
 * fuzz-cloop.c - libFuzzer target for the read-only cloop driver: the V2.0 and V4.0 headers (first or
 * last) and the V3 footer, the offsets table (counts, bounds, order, compressor tags and flags), zlib, xz,
 * lz4, lzo and stored blocks that decode short, long or not at all, the decompressed-block cache, reads, block
 * status and info, through fuzz-common.h.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "cloop" };
    return fuzz_run(&cfg, data, size);
}
