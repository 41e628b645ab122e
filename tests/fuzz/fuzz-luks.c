/* SPDX-License-Identifier: MIT */
/*
 * fuzz-luks.c - libFuzzer target for the LUKS driver: the LUKS1 header and key slots, both LUKS2 header
 * copies (checksums, sizes, which copy wins) and the JSON metadata (segments, digests, key slots, KDFs,
 * requirements), then unlocking with the key "fuzz" (KDF, key slot area, anti-forensic merge, digest),
 * reads and writes of the payload, all through fuzz-common.h (the fuzz build lowers the KDF cost limits).
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "luks", .writable = true, .secret = "fuzz" };
    return fuzz_run(&cfg, data, size);
}
