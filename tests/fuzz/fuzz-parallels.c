/* SPDX-License-Identifier: MIT */
/*
 * fuzz-parallels.c - libFuzzer target for the Parallels format driver: header validation (signature,
 * version, cluster size, BAT length and data offset, in-use flag), BAT entries in sectors or clusters
 * (zero, data, into the header or BAT, past the end of the file, shared), reads, block status, info, and
 * on a writable copy the BAT check, in-place and allocating writes and the in-use flag, all through
 * fuzz-common.h.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "parallels", .writable = true };
    return fuzz_run(&cfg, data, size);
}
