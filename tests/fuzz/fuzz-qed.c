/* SPDX-License-Identifier: MIT */
/*
 * fuzz-qed.c - libFuzzer target for the QED format driver: header validation (sizes, feature bits, the
 * L1 table and backing name bounds), L1 and L2 entries (unallocated, zero, data, unaligned, past the end
 * of the file or into the L1 table), the L2 slice cache, reads, block status, info, and on a writable
 * copy the table check, allocating and in-place writes, new L2 tables and the needs-check flag, all
 * through fuzz-common.h. Backing names are parsed but not opened (--no-backing).
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "qed", .writable = true, .no_backing = true };
    return fuzz_run(&cfg, data, size);
}
