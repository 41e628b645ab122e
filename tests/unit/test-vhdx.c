/* SPDX-License-Identifier: MIT */
/*
 * test-vhdx.c - unit tests of the VHDX driver on an image built here as a byte array (after MS-VHDX) and
 * opened on memory nodes (no files, no QEMU): the current header chosen by sequence number, block states
 * and block status with host offsets, a log entry replayed in memory (the file node keeps its bytes), bad
 * BAT entries failing with EIO for their block only (a partially present block outside a differencing
 * disk among them), writes (a new block appended and named by the BAT through the log, a present block
 * written in place, the header's GUIDs renewed, write-zeroes), a writable open replaying the log onto the
 * file, and the refusals with their messages: both headers damaged, a block over the metadata or two
 * blocks overlapping (for writing), a block size out of range, a BAT over the memory budget.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "memimg.h"
#include "tap.h"
#include "util.h"

#define IMG_SIZE (5 * MiB)
#define LOG (1 * MiB)
#define BAT (2 * MiB)
#define MD (3 * MiB)
#define DATA (4 * MiB)

static uint8_t *img;

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

/* The structure at p (n bytes, at most 8 KiB) starts with magic and its CRC-32C (at +4) matches. */
static bool crc_ok(const uint8_t *p, size_t n, const char *magic)
{
    uint8_t c[8192];
    memcpy(c, p, n);
    st_le32(c + 4, 0);
    return memcmp(p, magic, 4) == 0 && crc32c(c, n) == ld_le32(p + 4);
}

static void put_crc(uint8_t *p, size_t n)
{
    st_le32(p + 4, 0);
    st_le32(p + 4, crc32c(p, n));
}

static const uint8_t guid_bat[16] = { 0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
static const uint8_t guid_md[16] = { 0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
static const uint8_t guid_items[5][16] = { /* file parameters, disk size, page 83, logical, physical sector */
    { 0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b },
    { 0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 },
    { 0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 },
    { 0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f },
    { 0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 },
};

static void fix_crcs(void)
{
    put_crc(img + 64 * KiB, 4096);
    put_crc(img + 128 * KiB, 4096);
    put_crc(img + 192 * KiB, 64 * KiB);
    memcpy(img + 256 * KiB, img + 192 * KiB, 64 * KiB);
}

/* item i of the metadata: its value (a u32 or u64 at 64 KiB + 16 i into the region) */
static uint8_t *item(int i)
{
    return img + MD + 64 * KiB + 16 * i;
}

/* A dynamic 3 MiB disk of 1 MiB blocks: block 0 present at 4 MiB (0x5a), block 1 not present, block 2
 * ZERO. Header 1 has sequence number 5 and names LogGuid log_guid when set; header 2 has 2. */
static void make_image(bool with_log)
{
    memset(img, 0, IMG_SIZE);
    memcpy(img, "vhdxfile", 8);
    for (int h = 1; h <= 2; h++) {
        uint8_t *p = img + h * 64 * KiB;
        memcpy(p, "head", 4);
        st_le64(p + 8, h == 1 ? 5 : 2);
        if (with_log)
            memcpy(p + 48, "test-log-guid-01", 16);
        p[66] = 1;
        st_le32(p + 68, 1 << 20);
        st_le64(p + 72, LOG);
    }
    uint8_t *rt = img + 192 * KiB;
    memcpy(rt, "regi", 4);
    st_le32(rt + 8, 2);
    memcpy(rt + 16, guid_bat, 16);
    st_le64(rt + 32, BAT);
    st_le32(rt + 40, 1 << 20);
    memcpy(rt + 48, guid_md, 16);
    st_le64(rt + 64, MD);
    st_le32(rt + 72, 1 << 20);
    uint8_t *md = img + MD;
    memcpy(md, "metadata", 8);
    md[10] = 5;
    static const uint32_t lens[5] = { 8, 8, 16, 4, 4 };
    for (int i = 0; i < 5; i++) {
        memcpy(md + 32 + 32 * i, guid_items[i], 16);
        st_le32(md + 48 + 32 * i, (uint32_t)(64 * KiB + 16 * i));
        st_le32(md + 52 + 32 * i, lens[i]);
        st_le32(md + 56 + 32 * i, 4);
    }
    st_le32(item(0), 1 << 20);
    st_le64(item(1), 3 * MiB);
    st_le32(item(3), 512);
    st_le32(item(4), 4096);
    st_le64(img + BAT, (uint64_t)DATA | 6);
    st_le64(img + BAT + 16, 2);
    memset(img + DATA, 0x5a, 1 << 20);
    fix_crcs();
}

static BlockNode *open_img(bool read_only, Error *err)
{
    memset(err, 0, sizeof(*err));
    return bdrv_open_on_node(bdrv_open_memory(img, IMG_SIZE, read_only), "vhdx", NULL, err);
}

static void refused(const char *want, const char *what)
{
    Error err;
    BlockNode *bs = open_img(true, &err);
    ok(!bs && strcmp(err.msg, want) == 0, "%s: %s", what, err.msg);
    if (bs)
        bdrv_close(bs);
}

static void test_read_and_status(void)
{
    Error err;
    char v[128];
    make_image(false);
    BlockNode *bs = open_img(true, &err);
    ok(bs != NULL, "a valid dynamic image opens: %s", err.msg);
    if (!bs)
        return;
    is_int(bdrv_getlength(bs), 3 * MiB, "virtual size from the metadata");
    ok(strcmp(info_value(bs, "header", v, sizeof v), "1") == 0, "header 1 (sequence 5) is current, not 2");
    uint8_t *buf = malloc(3 * MiB);
    ok(buf && bdrv_pread(bs, 0, 3 * MiB, buf) == 0, "the whole disk reads");
    ok(buf && buf[0] == 0x5a && buf[MiB - 1] == 0x5a && buffer_is_zero(buf + MiB, 2 * MiB),
       "block 0 present, blocks 1 (not present) and 2 (ZERO) zeros");
    free(buf);
    BlockStatus st;
    ok(bdrv_block_status(bs, 4096, 3 * MiB - 4096, &st) == 0 && st.bytes == MiB - 4096 &&
       (st.flags & BDRV_BLOCK_OFFSET_VALID) && st.host_offset == DATA + 4096, "block 0 maps to 4 MiB in the file");
    ok(bdrv_block_status(bs, MiB, 2 * MiB, &st) == 0 && st.bytes == 2 * MiB && (st.flags & BDRV_BLOCK_ZERO) &&
       !(st.flags & BDRV_BLOCK_DATA), "blocks 1 and 2 are one zero run");
    bdrv_close(bs);

    /* header 1 damaged: header 2 */
    img[64 * KiB + 200] ^= 1;
    bs = open_img(true, &err);
    ok(bs && strcmp(info_value(bs, "header", v, sizeof v), "2") == 0, "a damaged header 1 leaves header 2");
    if (bs)
        bdrv_close(bs);
}

static void test_bad_entries(void)
{
    Error err;
    uint8_t b[512];
    /* block 1 partially present, in a disk that is not differencing (its BAT has no bitmap entry for it) */
    for (unsigned state = 4; state <= 7; state += 3) {
        make_image(false);
        st_le64(img + BAT + 8, (uint64_t)DATA | state);
        BlockNode *bs = open_img(true, &err);
        ok(bs != NULL, "state %u in block 1 opens", state);
        if (!bs)
            continue;
        is_int(bdrv_pread(bs, MiB + 512, 512, b), -EIO, "state %u: block 1 reads as EIO", state);
        ok(bdrv_pread(bs, 0, 512, b) == 0 && b[0] == 0x5a, "state %u: block 0 still reads", state);
        bdrv_close(bs);
    }
    make_image(false);
    st_le64(img + BAT, (uint64_t)(64 * MiB) | 6); /* past the end of the file */
    BlockNode *bs = open_img(true, &err);
    ok(bs && bdrv_pread(bs, 0, 512, b) == -EIO, "a present block past the end of the file reads as EIO");
    if (bs)
        bdrv_close(bs);
}

/* One log entry with one data descriptor replacing the first 4 KiB of block 0 (at 4 MiB). */
/* make_image with a one-entry log replacing the first sector of block 0: "LEADING!", 0x77..., "TAIL". */
static void make_log_image(void)
{
    make_image(true);
    uint8_t *e = img + LOG;
    memcpy(e, "loge", 4);
    st_le32(e + 8, 8192);
    st_le64(e + 16, 77);
    st_le32(e + 24, 1);
    memcpy(e + 32, "test-log-guid-01", 16);
    st_le64(e + 48, IMG_SIZE);
    st_le64(e + 56, IMG_SIZE);
    uint8_t *d = e + 64;
    memcpy(d, "desc", 4);
    memcpy(d + 4, "TAIL", 4);      /* the sector's last 4 bytes */
    memcpy(d + 8, "LEADING!", 8);  /* its first 8 */
    st_le64(d + 16, DATA);
    st_le64(d + 24, 77);
    uint8_t *s = e + 4096;
    memcpy(s, "data", 4);
    st_le32(s + 4, 0);
    memset(s + 8, 0x77, 4084);
    st_le32(s + 4092, 77);
    put_crc(e, 8192);
    fix_crcs();
}

static bool replayed_sector(const uint8_t *b)
{
    return memcmp(b, "LEADING!", 8) == 0 && b[8] == 0x77 && b[4091] == 0x77 && memcmp(b + 4092, "TAIL", 4) == 0;
}

static void test_log(void)
{
    Error err;
    make_log_image();
    BlockNode *bs = open_img(true, &err);
    ok(bs != NULL, "an image with a one-entry log opens: %s", err.msg);
    if (!bs)
        return;
    uint8_t b[4096], f[8];
    ok(bdrv_pread(bs, 0, 4096, b) == 0 && replayed_sector(b), "the guest sees the replayed sector");
    ok(bdrv_pread(bs, 4096, 8, f) == 0 && f[0] == 0x5a, "the next sector is the file's");
    ok(bdrv_pread(bs->file, DATA, 8, f) == 0 && f[0] == 0x5a, "the file itself is unchanged");
    BlockStatus st;
    ok(bdrv_block_status(bs, 0, MiB, &st) == 0 && (st.flags & BDRV_BLOCK_DATA) &&
       !(st.flags & BDRV_BLOCK_OFFSET_VALID), "a block the log wrote has no host offset");
    bdrv_close(bs);
    img[LOG + 4096 + 100] ^= 1; /* the entry's CRC no longer matches */
    refused("<memory>: the header names a log (LogGuid set) but the log holds no valid sequence of entries",
            "a log whose only entry is damaged");
}

/* The current header of the file under bs (the valid one with the higher sequence number). */
static void current_header(BlockNode *bs, uint8_t h[4096])
{
    uint8_t h2[4096];
    bdrv_pread(bs->file, 64 * KiB, 4096, h);
    bdrv_pread(bs->file, 128 * KiB, 4096, h2);
    if (crc_ok(h2, 4096, "head") && (!crc_ok(h, 4096, "head") || ld_le64(h2 + 8) > ld_le64(h + 8)))
        memcpy(h, h2, 4096);
}

static void test_writes(void)
{
    Error err;
    make_image(false);
    BlockNode *bs = open_img(false, &err);
    ok(bs != NULL, "a writable open: %s", err.msg);
    if (!bs)
        return;
    uint8_t before[4096], h[4096], b[4096], w[4096];
    current_header(bs, before);
    memset(w, 0xc3, sizeof(w));
    ok(bdrv_pwrite(bs, MiB + 512, 4096, w, 0) == 0, "a write into a block not present");
    ok(bdrv_pwrite(bs, 100, 5, "hello", 0) == 0, "a write into a present block");
    ok(bdrv_pread(bs, MiB, 4096, b) == 0 && b[511] == 0 && b[512] == 0xc3 && b[4095] == 0xc3, "both read back");
    BlockStatus st;
    ok(bdrv_block_status(bs, MiB, MiB, &st) == 0 && (st.flags & BDRV_BLOCK_OFFSET_VALID) && st.host_offset == 5 * MiB,
       "the new block is appended at 5 MiB (1 MiB aligned, past the file's end)");
    ok(bdrv_getlength(bs->file) == 6 * MiB, "the file holds the new block whole");
    uint8_t e[8];
    ok(bdrv_pread(bs->file, BAT + 8, 8, e) == 0 && ld_le64(e) == (5 * MiB | 6), "the BAT names it, fully present");
    ok(bdrv_pread(bs->file, DATA + 100, 5, b) == 0 && memcmp(b, "hello", 5) == 0, "the present block written in place");
    ok(bdrv_flush(bs) == 0, "flush");
    current_header(bs, h);
    ok(memcmp(h + 16, before + 16, 16) != 0 && memcmp(h + 32, before + 32, 16) != 0,
       "FileWriteGuid and DataWriteGuid renewed");
    static const uint8_t zero[16];
    ok(memcmp(h + 48, zero, 16) == 0 && ld_le64(h + 8) > ld_le64(before + 8), "after the flush no log is named");
    uint8_t *le = malloc(8192);
    ok(le && bdrv_pread(bs->file, LOG, 8192, le) == 0 && ld_le32(le + 8) == 8192 && crc_ok(le, 8192, "loge") &&
       memcmp(le + 64, "desc", 4) == 0 && ld_le64(le + 64 + 16) == BAT &&
       memcmp(le + 4096, "data", 4) == 0, "the log holds the entry for the BAT sector");
    free(le);
    ok(bdrv_pwrite_zeroes(bs, 0, MiB, 0) == 0 && bdrv_pread(bs->file, BAT, 8, e) == 0 && ld_le64(e) == 2,
       "write-zeroes of a whole block: state ZERO");
    bdrv_close(bs);
}

static void test_writable_refusals(void)
{
    Error err;
    make_log_image();
    BlockNode *bs = open_img(false, &err);
    uint8_t b[4096], h[4096];
    ok(bs != NULL, "a writable open of an image with a log: %s", err.msg);
    if (bs) {
        current_header(bs, h);
        ok(bdrv_pread(bs->file, DATA, 4096, b) == 0 && replayed_sector(b), "the log replayed onto the file");
        static const uint8_t zero[16];
        ok(memcmp(h + 48, zero, 16) == 0, "the header names no log any more");
        bdrv_close(bs);
    }
    make_image(false);
    st_le64(img + BAT + 8, (uint64_t)MD | 6);
    bs = open_img(false, &err);
    ok(!bs && strcmp(err.msg, "<memory>: 1 BAT entries are invalid (a reserved state, a block outside the file or "
                     "over metadata, a sector bitmap where none belongs); refusing to write (a read-only mount "
                     "reads the rest)") == 0, "a block over the metadata is refused for writing: %s", err.msg);
    make_image(false);
    st_le64(img + BAT + 8, (uint64_t)DATA | 6);
    bs = open_img(false, &err);
    ok(!bs && strcmp(err.msg, "<memory>: a payload block at file offset 4194304 overlaps a payload block before it; "
                     "refusing to write (a read-only mount reads it)") == 0, "overlapping blocks are refused: %s",
       err.msg);
}

static void test_refusals(void)
{
    make_image(false);
    img[64 * KiB + 300] ^= 1;
    img[128 * KiB + 300] ^= 1;
    refused("<memory>: neither header is valid (signature 'head' and CRC-32C at 64 KiB and 128 KiB)",
            "both headers damaged");
    make_image(false);
    st_le32(item(0), 3 << 20);
    refused("<memory>: invalid block size 3145728 (a power of two from 1 MiB to 256 MiB)", "a 3 MiB block size");
    make_image(false);
    st_le64(item(1), 64 * TiB);
    refused("<memory>: the BAT would need 67125247 entries, more than the 4194304 this driver holds in memory",
            "a 64 TiB disk of 1 MiB blocks");
}

int main(void)
{
    img = malloc(IMG_SIZE);
    if (!img)
        return 1;
    test_read_and_status();
    test_bad_entries();
    test_log();
    test_writes();
    test_writable_refusals();
    test_refusals();
    free(img);
    return done_testing();
}
