/* SPDX-License-Identifier: MIT */
/*
 * fuzz-ewf.c - libFuzzer target for the EWF driver: the input is a single-segment E01 that libewf reads
 * through the driver's libbfio handles over an in-memory node (its file header, header, volume, table,
 * hash and done sections, compressed and stored chunks), then reads, block status and info through
 * fuzz-common.h. Read-only: the driver refuses writable opens.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "ewf" };
    return fuzz_run(&cfg, data, size);
}
