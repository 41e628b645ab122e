/* SPDX-License-Identifier: MIT */
/*
 * test-layouts.c - unit tests of the layouts one driver builds for another (drivers/layouts.h): the fixed-VHD
 * footer of vpc.c (its CHS geometry for disks from one sector to 2040 GiB, sizes, creator, checksum, a
 * version 4 UUID) and the static VDI header of vdi.c, as emulate.c puts them around disk.raw.  The
 * geometries are those emulate.c computed with its own copy before it used vpc.c's; the VDI header is
 * the one `imgfuse create -f vdi` writes (header size 0x190), with the caller's text and offsets.
 */
#include <stdlib.h>
#include <string.h>

#include "../../drivers/layouts.h"
#include "tap.h"
#include "util.h"

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p + 4) << 32 | le32(p); }

/* The footer of a fixed disk of sectors sectors has geometry cyl/heads/spt and is otherwise whole. */
static void footer_case(int64_t sectors, unsigned cyl, unsigned heads, unsigned spt)
{
    uint8_t f[VPC_FOOTER_SIZE];
    memset(f, 0xAA, sizeof f);
    vpc_fixed_footer(f, sectors, "win ", 0x000a0000);
    unsigned got_cyl = (unsigned)f[56] << 8 | f[57];
    ok(got_cyl == cyl && f[58] == heads && f[59] == spt, "%lld sectors: geometry %u/%u/%u (got %u/%u/%u)",
       (long long)sectors, cyl, heads, spt, got_cyl, f[58], f[59]);
    ok(be64(f + 40) == (uint64_t)sectors * 512 && be64(f + 48) == (uint64_t)sectors * 512,
       "%lld sectors: original and current size", (long long)sectors);
    uint32_t sum = 0;
    for (int i = 0; i < VPC_FOOTER_SIZE; i++)
        sum += i >= 64 && i < 68 ? 0 : f[i];
    ok(be32(f + 64) == ~sum, "%lld sectors: checksum", (long long)sectors);
}

static void test_vhd_footer(void)
{
    footer_case(1, 0, 4, 17);
    footer_case(1954, 28, 4, 17);            /* 1000000 bytes padded to 1000448 */
    footer_case(131040, 963, 8, 17);
    footer_case(4194304, 4161, 16, 63);      /* 2 GiB */
    footer_case(16777216, 16644, 16, 63);    /* 8 GiB */
    footer_case(267382800, 65535, 16, 255);  /* the largest geometry */
    footer_case(419430400, 65535, 16, 255);  /* 200 GiB: past it */
    footer_case(VPC_MAX_CREATE_SECTORS, 65535, 16, 255);
    uint8_t f[VPC_FOOTER_SIZE];
    vpc_fixed_footer(f, 2048, "win ", 0x000a0000);
    ok(memcmp(f, "conectix", 8) == 0 && be32(f + 8) == 2 && be32(f + 12) == 0x00010000, "cookie, features, version");
    ok(be64(f + 16) == UINT64_MAX && be32(f + 60) == 2, "fixed disk: no data offset, type 2");
    ok(memcmp(f + 28, "win ", 4) == 0 && be32(f + 32) == 0x000a0000 && memcmp(f + 36, "Wi2k", 4) == 0,
       "creator win 10.0 on Wi2k");
    ok(be32(f + 24) > 0 && (f[68 + 6] >> 4) == 4 && (f[68 + 8] >> 6) == 2, "time stamp and a version 4 UUID");
    ok(f[84] == 0 && memcmp(f + 84, f + 85, VPC_FOOTER_SIZE - 85) == 0, "saved state and reserved bytes zero");
}

static void test_vdi_header(void)
{
    uint8_t *h = calloc(1, VDI_HEADER_BYTES);
    const char *text = "<<< imgfuse emulated VirtualBox Disk Image >>>\n";
    uint64_t size = 1000448;
    vdi_static_header(h, text, size, 1 << 20);
    ok(memcmp(h, text, strlen(text)) == 0 && h[strlen(text)] == 0, "pre-header text");
    ok(le32(h + 0x40) == 0xbeda107f && le32(h + 0x44) == 0x00010001, "signature, version 1.1");
    ok(le32(h + 0x48) == 0x190 && le32(h + 0x4c) == 2, "header size 0x190, type static");
    ok(le32(h + 0x154) == VDI_HEADER_BYTES && le32(h + 0x158) == 1 << 20, "block map at 0x200, data at 1 MiB");
    ok(le32(h + 0x168) == 512 && le64(h + 0x170) == size && le32(h + 0x178) == 1 << 20,
       "sector size, disk size, block size");
    ok(le32(h + 0x180) == 1 && le32(h + 0x184) == 1, "one block, allocated");
    static const uint8_t zero[32];
    ok(memcmp(h + 0x1a8, zero, 32) == 0 && memcmp(h + 0x188, zero, 16) != 0 && memcmp(h + 0x198, h + 0x188, 16) != 0,
       "uuidCreate and uuidModify new, link and parent null");
    vdi_static_header(h, text, (uint64_t)5 << 20 | 512, 1 << 20);
    ok(le32(h + 0x180) == 6 && le32(h + 0x184) == 6, "a part block counts as a block");
    free(h);
}

int main(void)
{
    test_vhd_footer();
    test_vdi_header();
    return done_testing();
}
