/* SPDX-License-Identifier: MIT */
/*
 * test-vpc.c - unit tests of the VHD (vpc) driver on images built here as byte arrays and opened on
 * memory nodes (no files, no QEMU): checksums, the footer copy standing in for a damaged footer, the
 * virtual size by creator application and geometry, sector bitmaps read most significant bit first,
 * block status runs, parent locator names (UTF-16LE Windows paths, MacX file URLs, the UTF-16BE header
 * name) as backing names, and the refusals of damaged headers with their messages.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "memimg.h"
#include "tap.h"
#include "util.h"

#define SECTOR 512
#define BLOCK 4096
#define DISK (16 * BLOCK)
#define HDR 512
#define BAT 1536
#define LOC 2048
#define DATA 4096
#define BITMAP 512
#define IMG_SIZE (DATA + 2 * (BITMAP + BLOCK) + SECTOR)

static uint8_t img[IMG_SIZE];

static uint32_t checksum(const uint8_t *p, size_t len, size_t at)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < at || i >= at + 4)
            sum += p[i];
    return ~sum;
}

static void fix_checksums(void)
{
    uint8_t *f = img + IMG_SIZE - SECTOR;
    st_be32(f + 64, checksum(f, SECTOR, 64));
    memcpy(img, f, SECTOR);
    st_be32(img + HDR + 36, checksum(img + HDR, 1024, 36));
}

/* A dynamic disk of 64 KiB in 4 KiB blocks: block 1 holds sectors 0 and 3 (bitmap 0x90) of 0x11,
 * block 3 every sector of 0x33; every other block is unallocated. */
static void make_dynamic(const char *creator, int type)
{
    memset(img, 0, sizeof(img));
    uint8_t *f = img + IMG_SIZE - SECTOR;
    memcpy(f, "conectix", 8);
    st_be32(f + 8, 2);
    st_be32(f + 12, 0x00010000);
    st_be64(f + 16, HDR);
    memcpy(f + 28, creator, 4);
    st_be64(f + 40, DISK);
    st_be64(f + 48, DISK);
    st_be16(f + 56, DISK / SECTOR / 2); /* CHS: half the current size */
    f[58] = 1;
    f[59] = 1;
    st_be32(f + 60, (uint32_t)type);
    memcpy(img + HDR, "cxsparse", 8);
    memset(img + HDR + 8, 0xff, 8);
    st_be64(img + HDR + 16, BAT);
    st_be32(img + HDR + 24, 0x00010000);
    st_be32(img + HDR + 28, DISK / BLOCK);
    st_be32(img + HDR + 32, BLOCK);
    memset(img + BAT, 0xff, DISK / BLOCK * 4);
    st_be32(img + BAT + 4, DATA / SECTOR);
    st_be32(img + BAT + 12, (DATA + BITMAP + BLOCK) / SECTOR);
    img[DATA] = 0x90;
    memset(img + DATA + BITMAP, 0x11, BLOCK);
    memset(img + DATA + BITMAP + BLOCK, 0xff, BITMAP);
    memset(img + DATA + 2 * BITMAP + BLOCK, 0x33, BLOCK);
    fix_checksums();
}

static BlockNode *open_img(const char *format, bool no_backing, Error *err)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.no_backing = no_backing;
    BlockNode *m = bdrv_open_memory(img, sizeof(img), true);
    return m ? bdrv_open_on_node(m, format, &o, err) : NULL;
}

static void test_read_and_bitmap(void)
{
    make_dynamic("qem2", 3);
    Error err = { .msg = "" };
    BlockNode *bs = open_img(NULL, false, &err);
    ok(bs && strcmp(bs->drv->name, "vpc") == 0, "a dynamic disk probes as vpc (%s)", err.msg);
    if (!bs)
        return;
    is_int(bdrv_getlength(bs), DISK, "creator 'qem2': the size is current_size");
    static uint8_t buf[DISK];
    ok(bdrv_pread(bs, 0, DISK, buf) == 0, "the whole disk reads");
    ok(all_bytes(buf, BLOCK, 0), "an unallocated block reads as zeros");
    ok(all_bytes(buf + BLOCK, SECTOR, 0x11), "sector 0 of block 1 (bit 0x80) is present");
    ok(all_bytes(buf + BLOCK + SECTOR, 2 * SECTOR, 0), "sectors 1 and 2 (bits clear) read as zeros");
    ok(all_bytes(buf + BLOCK + 3 * SECTOR, SECTOR, 0x11), "sector 3 (bit 0x10) is present");
    ok(all_bytes(buf + BLOCK + 4 * SECTOR, 4 * SECTOR, 0), "sectors 4-7 read as zeros");
    ok(all_bytes(buf + 3 * BLOCK, BLOCK, 0x33), "a block with every bit set reads its data");
    BlockStatus st;
    ok(bdrv_block_status(bs, BLOCK + 3 * SECTOR, DISK - BLOCK - 3 * SECTOR, &st) == 0 &&
       (st.flags & BDRV_BLOCK_OFFSET_VALID) && st.bytes == SECTOR && st.host_offset == DATA + BITMAP + 3 * SECTOR,
       "block status: one present sector with its host offset");
    ok(bdrv_block_status(bs, 4 * BLOCK, DISK - 4 * BLOCK, &st) == 0 && !(st.flags & BDRV_BLOCK_ALLOCATED) &&
       st.bytes == DISK - 4 * BLOCK, "block status: unallocated blocks in a row are one run");
    ok(bdrv_block_status(bs, BLOCK + 100, 300, &st) == 0 && (st.flags & BDRV_BLOCK_DATA) && st.bytes == 300,
       "block status inside a present sector at an unaligned offset");
    bdrv_close(bs);
}

static void test_size_rules(void)
{
    static const struct { const char *creator; int64_t size; } cases[] = {
        { "qemu", DISK / 2 }, { "vpc ", DISK / 2 }, { "win ", DISK }, { "d2v ", DISK },
        { "tap\0", DISK }, { "CTXS", DISK }, { "qem2", DISK }, { "abcd", DISK / 2 },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        make_dynamic(cases[i].creator, 3);
        Error err = { .msg = "" };
        BlockNode *bs = open_img(NULL, false, &err);
        is_int(bs ? bdrv_getlength(bs) : -1, cases[i].size, "creator '%.4s': size from %s", cases[i].creator,
               cases[i].size == DISK ? "current_size" : "the geometry");
        bdrv_close(bs);
    }
    make_dynamic("qemu", 3);
    uint8_t *f = img + IMG_SIZE - SECTOR;
    st_be16(f + 56, 65535);
    f[58] = 16;
    f[59] = 255;
    fix_checksums();
    Error err = { .msg = "" };
    BlockNode *bs = open_img(NULL, false, &err);
    is_int(bs ? bdrv_getlength(bs) : -1, DISK, "the largest geometry means current_size, whatever the creator");
    bdrv_close(bs);
}

static void expect_refusal(const char *format, const char *want, const char *what)
{
    Error err = { .msg = "" };
    BlockNode *bs = open_img(format, false, &err);
    ok(!bs && strstr(err.msg, want), "%s is refused: '%s'", what, err.msg);
    bdrv_close(bs);
}

static void test_footer_copy_and_refusals(void)
{
    make_dynamic("qem2", 3);
    img[IMG_SIZE - SECTOR + 100] ^= 1;
    Error err = { .msg = "" };
    BlockNode *bs = open_img(NULL, false, &err);
    ok(bs != NULL, "a damaged footer at the end: the copy at offset 0 is used (%s)", err.msg);
    if (bs) {
        InfoList info = { 0 };
        bdrv_get_info(bs, &info);
        bool said = false;
        for (int i = 0; i < info.n; i++)
            said |= strcmp(info.items[i].key, "footer") == 0 && info.items[i].str &&
                    strstr(info.items[i].str, "copy at offset 0");
        ok(said, "info says the copy is in use");
        info_free(&info);
    }
    bdrv_close(bs);
    img[100] ^= 1;
    expect_refusal(NULL, "footer checksum mismatch", "both footers damaged");

    make_dynamic("qem2", 3);
    img[HDR + 600] ^= 1;
    expect_refusal(NULL, "dynamic disk header checksum mismatch", "a damaged dynamic header");

    make_dynamic("qem2", 3);
    st_be32(img + HDR + 32, 3 * 4096);
    fix_checksums();
    expect_refusal(NULL, "invalid block size 12288", "a block size that is not a power of two");

    make_dynamic("qem2", 3);
    st_be64(img + HDR + 16, IMG_SIZE - 8);
    fix_checksums();
    expect_refusal(NULL, "lies past the end of the file", "a BAT past the end");

    make_dynamic("qem2", 3);
    st_be32(img + HDR + 28, 15);
    fix_checksums();
    expect_refusal(NULL, "the BAT has 15 entries, but a disk of 65536 bytes needs 16", "a BAT too short");

    make_dynamic("qem2", 7);
    expect_refusal(NULL, "unsupported disk type 7", "an unknown disk type");

    make_dynamic("qem2", 4);
    expect_refusal(NULL, "names no parent", "a differencing disk without a parent");

    make_dynamic("qem2", 3);
    st_be32(img + BAT + 8, (IMG_SIZE - SECTOR) / SECTOR); /* block 2 would overlap the footer at the end */
    st_be32(img + BAT + 20, 1);                           /* block 5 inside the footer copy and header */
    fix_checksums();
    bs = open_img(NULL, false, &err);
    uint8_t buf[BLOCK];
    ok(bs && bdrv_pread(bs, 2 * BLOCK, BLOCK, buf) == -EIO && bdrv_pread(bs, 5 * BLOCK, BLOCK, buf) == -EIO &&
       bdrv_pread(bs, 3 * BLOCK, BLOCK, buf) == 0, "blocks past the data or into metadata read as EIO, others read");
    bdrv_close(bs);
}

/* The parent name a differencing disk yields, given one locator (or none) and a header name. */
static char *parent_of(const char *code, const uint8_t *data, size_t len, const char *header_name)
{
    make_dynamic("qem2", 4);
    if (code) {
        memcpy(img + HDR + 576, code, 4);
        st_be32(img + HDR + 576 + 4, 1);
        st_be32(img + HDR + 576 + 8, (uint32_t)len);
        st_be64(img + HDR + 576 + 16, LOC);
        memcpy(img + LOC, data, len);
    }
    for (size_t i = 0; header_name && header_name[i]; i++)
        st_be16(img + HDR + 64 + 2 * i, (uint8_t)header_name[i]);
    fix_checksums();
    Error err = { .msg = "" };
    BlockNode *bs = open_img(NULL, true, &err);
    char *name = bs && bs->backing_name ? strdup(bs->backing_name) : NULL;
    bdrv_close(bs);
    return name;
}

static size_t utf16le(const char *s, uint8_t *out)
{
    size_t n = 0;
    for (; *s; s++) {
        out[n++] = (uint8_t)*s;
        out[n++] = 0;
    }
    return n;
}

static void test_parent_names(void)
{
    uint8_t d[256];
    size_t n = utf16le(".\\dir\\parent.vhd", d);
    char *name = parent_of("W2ru", d, n, "fallback.vhd");
    ok(name && strcmp(name, "./dir/parent.vhd") == 0, "W2ru: backslashes become slashes (%s)", name);
    free(name);
    n = utf16le("C:\\images\\parent.vhd", d);
    name = parent_of("W2ku", d, n, NULL);
    ok(name && strcmp(name, "/images/parent.vhd") == 0, "W2ku: the drive letter is dropped (%s)", name);
    free(name);
    name = parent_of("MacX", (const uint8_t *)"file://localhost/Users/a%20b/p.vhd", 34, NULL);
    ok(name && strcmp(name, "/Users/a b/p.vhd") == 0, "MacX: a file URL, percent-decoded (%s)", name);
    free(name);
    name = parent_of(NULL, NULL, 0, "p\xe9.vhd");
    ok(name && strcmp(name, "p\xc3\xa9.vhd") == 0, "no locator: the header's UTF-16BE name as UTF-8 (%s)", name);
    free(name);
    n = utf16le("a\nb", d);
    name = parent_of("W2ru", d, n, NULL);
    ok(name && strcmp(name, "a?b") == 0, "a control character in a name becomes '?' (%s)", name);
    free(name);
    name = parent_of("W2ru", d, 0, "x.vhd");
    ok(name && strcmp(name, "x.vhd") == 0, "an empty locator is skipped for the header name (%s)", name);
    free(name);
}

int main(void)
{
    test_read_and_bitmap();
    test_size_rules();
    test_footer_copy_and_refusals();
    test_parent_names();
    return done_testing();
}
