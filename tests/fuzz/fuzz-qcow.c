/* SPDX-License-Identifier: MIT */
/*
 * fuzz-qcow.c - libFuzzer target for the qcow (version 1) format driver: header validation (cluster and
 * L2 bits, size, encryption method, the L1 table and backing name bounds), L1 and L2 entries (unallocated,
 * data, compressed, past the end of the file or into the L1 table), inflating compressed clusters, the L2
 * cache, reads, block status, info, and on a writable copy in-place and allocating writes (new L2 tables,
 * rewritten compressed clusters), all through fuzz-common.h. Backing names are parsed but not opened.
 * AES-encrypted images open with the key "fuzz" (decrypting reads, encrypting writes).
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "qcow", .writable = true, .no_backing = true, .secret = "fuzz" };
    return fuzz_run(&cfg, data, size);
}
