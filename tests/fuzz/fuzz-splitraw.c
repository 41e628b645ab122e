/* SPDX-License-Identifier: MIT */
/*
 * fuzz-splitraw.c - libFuzzer target for the split raw driver over one in-memory piece (a memory node
 * opens no other files): open, reads, block status through each piece and info, through fuzz-common.h.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "splitraw" };
    return fuzz_run(&cfg, data, size);
}
