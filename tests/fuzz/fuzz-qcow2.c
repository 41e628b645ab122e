/* SPDX-License-Identifier: MIT */
/*
 * fuzz-qcow2.c - libFuzzer target for the qcow2 format driver: header and extension parsing, L1/L2
 * mapping, compressed clusters, snapshot table and views, and (when the driver has a write path)
 * cluster allocation, zero/discard and snapshot creation, all through fuzz-common.h. Encrypted images
 * (LUKS header pointer and header, AES) open with the key "fuzz", so their decrypting reads and
 * encrypting writes are fuzzed too.
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "qcow2", .writable = true, .secret = "fuzz" };
    return fuzz_run(&cfg, data, size);
}
