/* SPDX-License-Identifier: MIT */
/*
 * test-vmdk.c - unit tests of the VMDK driver on images built here as byte arrays and opened on memory
 * nodes (no files, no QEMU): a hosted sparse extent with 4 KiB grains (data, unallocated and zeroed
 * grains, the embedded descriptor's CID and delta-link fields), block status runs, a grain table entry
 * past the end of the file read as EIO for that grain only, standalone descriptors of ZERO extents,
 * extent files refused on memory nodes, and the refusals of damaged headers and descriptors with their
 * messages.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "memimg.h"
#include "tap.h"
#include "util.h"

#define SECTOR 512
#define GRAIN_SECTORS 8
#define GRAIN (GRAIN_SECTORS * SECTOR)
#define CAPACITY 256 /* sectors: 32 grains, one grain table */
#define DISK (CAPACITY * SECTOR)
#define DESC_SEC 1
#define RGD_SEC 3
#define RGT_SEC 4
#define GD_SEC 8
#define GT_SEC 9
#define DATA_SEC 16
#define IMG_SIZE (DATA_SEC * SECTOR + 2 * GRAIN)

static uint8_t img[IMG_SIZE];

static void set_gte(int grain, uint32_t v)
{
    st_le32(img + GT_SEC * SECTOR + 4 * grain, v);
    st_le32(img + RGT_SEC * SECTOR + 4 * grain, v);
}

/* Grain 0 holds 0x11, grain 3 holds 0x33, grain 5 is a zeroed grain; every other one is unallocated. */
static void make_sparse(const char *desc)
{
    memset(img, 0, sizeof(img));
    uint8_t *h = img;
    memcpy(h, "KDMV", 4);
    st_le32(h + 4, 1);
    st_le32(h + 8, 0x3 | 0x4); /* newline test, redundant GD, zeroed grains */
    st_le64(h + 12, CAPACITY);
    st_le64(h + 20, GRAIN_SECTORS);
    st_le64(h + 28, DESC_SEC);
    st_le64(h + 36, 2);
    st_le32(h + 44, 512);
    st_le64(h + 48, RGD_SEC);
    st_le64(h + 56, GD_SEC);
    st_le64(h + 64, DATA_SEC);
    memcpy(h + 73, "\n \r\n", 4);
    memcpy(img + DESC_SEC * SECTOR, desc, strlen(desc));
    st_le32(img + GD_SEC * SECTOR, GT_SEC);
    st_le32(img + RGD_SEC * SECTOR, RGT_SEC);
    set_gte(0, DATA_SEC);
    set_gte(3, DATA_SEC + GRAIN_SECTORS);
    set_gte(5, 1);
    memset(img + DATA_SEC * SECTOR, 0x11, GRAIN);
    memset(img + DATA_SEC * SECTOR + GRAIN, 0x33, GRAIN);
}

static const char *DESC = "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\n"
                          "createType=\"monolithicSparse\"\nRW 256 SPARSE \"t.vmdk\"\nddb.adapterType = \"ide\"\n";

static BlockNode *open_buf(const void *buf, size_t len, Error *err)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.no_backing = true;
    BlockNode *m = bdrv_open_memory(buf, len, true);
    return m ? bdrv_open_on_node(m, NULL, &o, err) : NULL;
}

static void test_sparse_read(void)
{
    Error err = { .msg = "" };
    make_sparse(DESC);
    BlockNode *bs = open_buf(img, sizeof(img), &err);
    ok(bs && strcmp(bs->drv->name, "vmdk") == 0, "a hosted sparse extent probes as vmdk (%s)", err.msg);
    if (!bs)
        return;
    is_int(bdrv_getlength(bs), DISK, "the size is the capacity");
    uint8_t *buf = malloc(DISK);
    ok(bdrv_pread(bs, 0, DISK, buf) == 0, "the whole disk reads");
    ok(all_bytes(buf, GRAIN, 0x11), "grain 0 reads its data");
    ok(all_bytes(buf + GRAIN, 2 * GRAIN, 0), "unallocated grains 1-2 read as zeros");
    ok(all_bytes(buf + 3 * GRAIN, GRAIN, 0x33), "grain 3 reads its data");
    ok(all_bytes(buf + 4 * GRAIN, DISK - 4 * GRAIN, 0), "the zeroed grain and the rest read as zeros");
    BlockStatus st;
    ok(bdrv_block_status(bs, 100, DISK, &st) == 0 && (st.flags & BDRV_BLOCK_OFFSET_VALID) &&
       st.host_offset == DATA_SEC * SECTOR + 100 && st.bytes == GRAIN - 100, "grain 0: data at its host offset");
    ok(bdrv_block_status(bs, GRAIN, DISK - GRAIN, &st) == 0 && !(st.flags & BDRV_BLOCK_ALLOCATED) &&
       st.bytes == 2 * GRAIN, "grains 1-2: one unallocated run");
    ok(bdrv_block_status(bs, 5 * GRAIN, GRAIN, &st) == 0 && (st.flags & BDRV_BLOCK_ZERO) &&
       (st.flags & BDRV_BLOCK_ALLOCATED), "grain 5: zeroed, allocated");
    ok(bdrv_block_status(bs, 6 * GRAIN, DISK - 6 * GRAIN, &st) == 0 && st.bytes == DISK - 6 * GRAIN,
       "the unallocated rest of the table is one run");
    InfoList info = { 0 };
    bdrv_get_info(bs, &info);
    bool cid = false;
    for (int i = 0; i < info.n; i++)
        if (strcmp(info.items[i].key, "cid") == 0 && info.items[i].str && strcmp(info.items[i].str, "0000abcd") == 0)
            cid = true;
    ok(cid, "info shows the descriptor's CID");
    info_free(&info);
    free(buf);
    bdrv_close(bs);
}

static void test_bad_entry(void)
{
    Error err = { .msg = "" };
    make_sparse(DESC);
    set_gte(1, 0x100000); /* far past the end of the file */
    set_gte(2, GD_SEC);   /* into the grain directory */
    BlockNode *bs = open_buf(img, sizeof(img), &err);
    ok(bs != NULL, "bad grain table entries do not refuse the image (%s)", err.msg);
    if (!bs)
        return;
    uint8_t buf[GRAIN];
    is_int(bdrv_pread(bs, GRAIN, GRAIN, buf), -EIO, "a grain past the end of the file reads EIO");
    is_int(bdrv_pread(bs, 2 * GRAIN, GRAIN, buf), -EIO, "a grain in the metadata reads EIO");
    ok(bdrv_pread(bs, 3 * GRAIN, GRAIN, buf) == 0 && all_bytes(buf, GRAIN, 0x33), "the next grain reads");
    bdrv_close(bs);
}

static void test_delta_link(void)
{
    Error err = { .msg = "" };
    make_sparse("# Disk DescriptorFile\nCID=1\nparentCID=2\nparentFileNameHint=\"base.vmdk\"\n"
                "RW 256 SPARSE \"c.vmdk\"\n");
    BlockNode *bs = open_buf(img, sizeof(img), &err);
    ok(bs && bs->backing_name && strcmp(bs->backing_name, "base.vmdk") == 0 &&
       bs->backing_format_hint && strcmp(bs->backing_format_hint, "vmdk") == 0,
       "parentFileNameHint becomes the backing name, format vmdk (%s)", err.msg);
    if (bs)
        bdrv_close(bs);
    make_sparse("# Disk DescriptorFile\nCID=1\nparentCID=ffffffff\nparentFileNameHint=\"base.vmdk\"\n");
    bs = open_buf(img, sizeof(img), &err);
    ok(bs && !bs->backing_name, "parentCID ffffffff: no parent, whatever the hint says");
    if (bs)
        bdrv_close(bs);
}

static void expect_refusal(const char *what, const char *want)
{
    Error err = { .msg = "" };
    BlockNode *bs = open_buf(img, sizeof(img), &err);
    ok(!bs && strstr(err.msg, want), "%s is refused: '%s'", what, err.msg);
    if (bs)
        bdrv_close(bs);
}

static void test_header_refusals(void)
{
    make_sparse(DESC);
    st_le32(img + 4, 4);
    expect_refusal("version 4", "unsupported VMDK sparse extent version 4");
    make_sparse(DESC);
    st_le64(img + 20, 3);
    expect_refusal("a grain of 3 sectors", "grain size of 3 sectors is not a power of two");
    make_sparse(DESC);
    st_le32(img + 44, 511);
    expect_refusal("511 entries per table", "511 entries per grain table");
    make_sparse(DESC);
    st_le64(img + 56, IMG_SIZE / SECTOR);
    expect_refusal("a GD at the end of the file", "grain directory lies outside the file");
    make_sparse(DESC);
    st_le32(img + 8, 0x3 | (1u << 20));
    expect_refusal("an unknown flag", "unknown sparse extent flags 0x00100000");
    make_sparse(DESC);
    img[75] = '\n';
    expect_refusal("damaged end-of-line bytes", "text mode");
    make_sparse("# Disk DescriptorFile\nRW 512 SPARSE \"t.vmdk\"\n");
    expect_refusal("an embedded extent larger than the capacity", "exceeds the capacity of 256");
    make_sparse("# Disk DescriptorFile\nwhat is this\n");
    expect_refusal("a garbage descriptor line", "descriptor line 2 is neither a comment");
    make_sparse(DESC);
    memcpy(img, "COWD", 4);
    expect_refusal("an ESX sparse extent", "COWD");
}

static void expect_desc(const char *text, const char *what, const char *want, int64_t size)
{
    Error err = { .msg = "" };
    BlockNode *bs = open_buf(text, strlen(text), &err);
    if (want)
        ok(!bs && strstr(err.msg, want), "%s is refused: '%s'", what, err.msg);
    else
        ok(bs && bdrv_getlength(bs) == size, "%s opens, %lld bytes (%s)", what, (long long)size, err.msg);
    if (bs)
        bdrv_close(bs);
}

static void test_descriptors(void)
{
    expect_desc("# Disk DescriptorFile\nRW 8 ZERO\n  RDONLY 16 ZERO  \n# comment\n\nkey.x = \"y\"\n",
                "two ZERO extents", NULL, 24 * SECTOR);
    expect_desc("# Disk DescriptorFile\r\nRW 8 ZERO\r\n", "CR/LF line ends", NULL, 8 * SECTOR);
    expect_desc("# Disk DescriptorFile\nRW 8 FLAT \"x.bin\" 0\n", "a flat extent on a memory node",
                "an in-memory image may not open files", 0);
    expect_desc("# Disk DescriptorFile\nRW 8 FLAT \"/etc/passwd\" 0\n", "an absolute extent path",
                "absolute extent paths are not followed", 0);
    expect_desc("# Disk DescriptorFile\nRW 0 ZERO\n", "an empty extent", "has a size of 0 sectors", 0);
    expect_desc("# Disk DescriptorFile\nRW 18014398509481983 ZERO\nRW 18014398509481983 ZERO\n",
                "extent sizes that overflow", "or the sum is too large", 0);
    expect_desc("# Disk DescriptorFile\nRW 8 SESPARSE \"x\"\n", "an SESPARSE extent is read, from its file",
                "an in-memory image may not open files", 0);
    expect_desc("# Disk DescriptorFile\nRW 8 VMFSSPARSE \"x\"\n", "a VMFSSPARSE extent", "VMFSSPARSE is not supported", 0);
    expect_desc("# Disk DescriptorFile\nRW 8 FLAT \"x\n", "an unterminated name", "is not a valid extent line", 0);
    expect_desc("# Disk DescriptorFile\nCID=xyz\nRW 8 ZERO\n", "a CID that is not hex", "bad value for CID", 0);
    expect_desc("# Disk DescriptorFile\nversion=1\n", "no extent", "names no extent", 0);
}

int main(void)
{
    test_sparse_read();
    test_bad_entry();
    test_delta_link();
    test_header_refusals();
    test_descriptors();
    return done_testing();
}
