/* SPDX-License-Identifier: MIT */
/*
 * fuzz-raw.c - libFuzzer target for the raw format driver: the input is the disk, its first bytes also
 * choose a --offset/--size window; read, block status, probing and writes through fuzz-common.h.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "raw", .writable = true, .raw_window = true };
    return fuzz_run(&cfg, data, size);
}
