/* SPDX-License-Identifier: MIT */
/*
 * fuzz-vhdx.c - libFuzzer target for the VHDX driver: the input as a whole file (probing, the
 * size and header checks), and, since a VHDX keeps its log, BAT and metadata at 1 MiB and beyond (past the
 * fuzzer's input sizes), the input laid over a valid 5 MiB image: over its headers' fields, region-table
 * entries, metadata table and items, the BAT and the log, with the CRCs recomputed unless the first byte
 * says not to. Opened with --no-backing, so a differencing disk's own blocks and sector bitmaps are read.
 * A writable copy of each also gets the common writes, write-zeroes and discards (the writable open's
 * checks, a log replayed onto the memory node, the log writer, new blocks appended under the size cap).
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TPL_SIZE (5 * MiB)

static uint32_t crc32c(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

static void put_crc(uint8_t *p, size_t n)
{
    st_le32(p + 4, 0);
    st_le32(p + 4, crc32c(p, n));
}

static const uint8_t guid_bat[16] = { 0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
static const uint8_t guid_md[16] = { 0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
static const uint8_t guid_items[5][16] = {
    { 0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b },
    { 0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 },
    { 0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 },
    { 0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f },
    { 0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 },
};

/* A dynamic 3 MiB disk of 1 MiB blocks: log at 1 MiB, BAT at 2 MiB, metadata at 3 MiB, block 0 at 4 MiB. */
static void template(uint8_t *img)
{
    memcpy(img, "vhdxfile", 8);
    for (int h = 1; h <= 2; h++) {
        uint8_t *p = img + h * 64 * KiB;
        memcpy(p, "head", 4);
        st_le64(p + 8, (uint64_t)h);
        st_le32(p + 68, 1 << 20);
        st_le64(p + 72, 1 << 20);
        p[66] = 1;
    }
    for (int t = 0; t < 2; t++) {
        uint8_t *p = img + (192 + 64 * t) * KiB;
        memcpy(p, "regi", 4);
        st_le32(p + 8, 2);
        memcpy(p + 16, guid_bat, 16);
        st_le64(p + 32, 2 * MiB);
        st_le32(p + 40, 1 << 20);
        memcpy(p + 48, guid_md, 16);
        st_le64(p + 64, 3 * MiB);
        st_le32(p + 72, 1 << 20);
    }
    uint8_t *md = img + 3 * MiB;
    static const uint32_t values[5] = { 1 << 20, 3 << 20, 0x01020304, 512, 4096 };
    memcpy(md, "metadata", 8);
    md[10] = 5;
    for (int i = 0; i < 5; i++) {
        memcpy(md + 32 + 32 * i, guid_items[i], 16);
        st_le32(md + 48 + 32 * i, (uint32_t)(64 * KiB + 16 * i));
        st_le32(md + 52 + 32 * i, i == 2 ? 16 : i == 1 ? 8 : i == 0 ? 8 : 4);
        st_le32(md + 56 + 32 * i, 4);
        st_le32(md + 64 * KiB + 16 * i, values[i]);
    }
    st_le64(img + 2 * MiB, (uint64_t)(4 * MiB) | 6);
    memset(img + 4 * MiB, 0x5a, 4096);
}

/* Pieces of the input in turn over: the header fields, the region entries, the metadata table and items,
 * the BAT, the log. Byte 0: bit 0 keeps the old CRCs, bit 1 sets a LogGuid, bit 2 fixes the CRC of the
 * log entry at the log's start (its own length field, clamped). */
static void fuzz_vhdx_template(const FuzzConfig *cfg, const uint8_t *data, size_t size)
{
    static const struct { size_t off, len; } pieces[] = {
        { 64 * KiB + 8, 80 }, { 128 * KiB + 8, 80 }, { 192 * KiB + 8, 136 }, { 3 * MiB + 8, 200 },
        { 3 * MiB + 64 * KiB, 96 }, { 2 * MiB, 256 }, { 1 * MiB, 64 * KiB },
    };
    if (size < 1)
        return;
    uint8_t *img = calloc(1, TPL_SIZE);
    if (!img)
        return;
    template(img);
    uint8_t flags = data[0];
    size_t at = 1;
    for (size_t i = 0; i < ARRAY_SIZE(pieces) && at < size; i++) {
        size_t n = MIN(pieces[i].len, size - at);
        memcpy(img + pieces[i].off, data + at, n);
        at += n;
    }
    if (flags & 2)
        for (int h = 1; h <= 2; h++)
            memcpy(img + h * 64 * KiB + 48, "fuzz-log-guid-01", 16);
    if (flags & 4) /* the input reaches 64 KiB into the log: the rest of a longer entry is zeros */
        put_crc(img + MiB, MIN(MAX(ld_le32(img + MiB + 8), 4096u), (uint32_t)(64 * KiB)) / 4096 * 4096);
    if (!(flags & 1)) {
        put_crc(img + 64 * KiB, 4096);
        put_crc(img + 128 * KiB, 4096);
        put_crc(img + 192 * KiB, 64 * KiB);
        memcpy(img + 256 * KiB, img + 192 * KiB, 64 * KiB);
    }
    fuzz_run(cfg, img, TPL_SIZE);
    free(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FuzzConfig cfg = { .format = "vhdx", .no_backing = true, .writable = true };
    fuzz_run(&cfg, data, size);
    fuzz_vhdx_template(&cfg, data, size);
    return 0;
}
