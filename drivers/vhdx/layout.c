/* SPDX-License-Identifier: MIT */
/*
 * layout.c - the pieces of the VHDX layout every file of the driver shares: the well-known GUIDs of
 * regions and metadata items, CRC-32C (the checksum of headers, region tables, metadata tables and log
 * entries) and GUID comparison and formatting.
 */
#include "vhdx.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

const Guid GUID_BAT = G(0x2DC27766, 0xF623, 0x4200, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08);
const Guid GUID_METADATA = G(0x8B7CA206, 0x4790, 0x4B9A, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E);
const Guid GUID_FILE_PARAMS = G(0xCAA16737, 0xFA36, 0x4D43, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B);
const Guid GUID_DISK_SIZE = G(0x2FA54224, 0xCD1B, 0x4876, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8);
const Guid GUID_PAGE83 = G(0xBECA12AB, 0xB2E6, 0x4523, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46);
const Guid GUID_LOGICAL_SECTOR = G(0x8141BF1D, 0xA96F, 0x4709, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F);
const Guid GUID_PHYSICAL_SECTOR = G(0xCDA348C7, 0x445D, 0x4471, 0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56);
const Guid GUID_PARENT_LOCATOR = G(0xA8D35F2D, 0xB30B, 0x454D, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C);
const Guid GUID_LOCATOR_VHDX = G(0xB04AEFB7, 0xD19E, 0x4A81, 0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13);

static uint32_t crc32c_table[256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
}

/* CRC-32C (Castagnoli) of buf with the 4 bytes at crc_at counted as zero. */
uint32_t vhdx_crc(const uint8_t *buf, size_t len, size_t crc_at)
{
    pthread_once(&crc32c_once, crc32c_init);
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = i >= crc_at && i < crc_at + 4 ? 0 : buf[i];
        c = crc32c_table[(c ^ b) & 0xFF] ^ (c >> 8);
    }
    return ~c;
}

bool vhdx_guid_eq(const uint8_t *a, const Guid *b)
{
    return memcmp(a, b->b, 16) == 0;
}

bool vhdx_guid_is_zero(const uint8_t *g)
{
    static const uint8_t zero[16];
    return memcmp(g, zero, 16) == 0;
}

/* "{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}", lower case, the first three fields little-endian. */
void vhdx_format_guid(const uint8_t *g, char out[VHDX_GUID_STR])
{
    snprintf(out, VHDX_GUID_STR, "{%08" PRIx32 "-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x}", ld_le32(g),
             ld_le16(g + 4), ld_le16(g + 6), g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
}
