/* SPDX-License-Identifier: MIT */
/*
 * fuzz-dmg.c - libFuzzer target for the read-only DMG (UDIF) driver: the koly trailer, the XML plist
 * through libxml2, base64 mish tables, chunk entries of every type (bounds, overlaps, counts), ADC, zlib
 * and bzip2 chunks of the wrong size, the chunk cache, reads, block status and info, through
 * fuzz-common.h.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "dmg" };
    return fuzz_run(&cfg, data, size);
}
