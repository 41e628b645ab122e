/* SPDX-License-Identifier: MIT */
/*
 * test-parallels.c - unit tests of the Parallels driver on images built byte by byte in memory (no
 * qemu-img): the probe of both signatures, every header refusal by its exact line, BAT entries in
 * sectors and in clusters in reads and block status, an entry past the end of the file failing its
 * cluster only, the in-use flag (read-only opens serve it; writable opens check the BAT, refuse a shared
 * cluster, set the flag while open and clear it at close) and allocating writes (data, then the entry).
 */
#include "block.h"
#include "memimg.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CS 4096u
#define IMG_LEN (4 * CS)
#define INUSE_OPEN 0x746f6e59u
#define INUSE_CLOSED 0x312e3276u

/* 64 KiB disk of 4 KiB clusters (16 BAT entries), data from 4096: cluster 0 ('A') at host cluster 1,
 * cluster 2 ('B') at 2, cluster 15 ('C') at 3. old: signature WithoutFreeSpace, BAT in sectors. */
static uint8_t *make_prl(bool old)
{
    uint8_t *img = calloc(1, IMG_LEN);
    memcpy(img, old ? "WithoutFreeSpace" : "WithouFreSpacExt", 16);
    uint32_t unit = old ? 8 : 1;
    st_le32(img + 16, 2);
    st_le32(img + 28, 8);
    st_le32(img + 32, 16);
    st_le64(img + 36, 128);
    st_le32(img + 48, 8);
    st_le32(img + 64, 1 * unit);
    st_le32(img + 64 + 8, 2 * unit);
    st_le32(img + 64 + 60, 3 * unit);
    memset(img + CS, 'A', CS);
    memset(img + 2 * CS, 'B', CS);
    memset(img + 3 * CS, 'C', CS);
    return img;
}

static BlockNode *open_fmt(const uint8_t *img, bool read_only, const char *fmt, Error *err)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = read_only;
    memset(err, 0, sizeof(*err));
    BlockNode *mem = bdrv_open_memory(img, IMG_LEN, read_only);
    return mem ? bdrv_open_on_node(mem, fmt, &o, err) : NULL;
}

static BlockNode *open_img(const uint8_t *img, bool read_only, Error *err)
{
    return open_fmt(img, read_only, NULL, err);
}

/* The image with the u32 at off set to v (and at off2 to v2 when off2 > 0) is refused with want. */
static void refusal2(int off, uint32_t v, int off2, uint32_t v2, const char *want)
{
    uint8_t *img = make_prl(false);
    st_le32(img + off, v);
    if (off2 > 0)
        st_le32(img + off2, v2);
    Error err;
    BlockNode *bs = open_fmt(img, true, "parallels", &err);
    ok(!bs && strstr(err.msg, want) && !strchr(err.msg, '\n'), "refused: %s", err.msg);
    if (bs)
        bdrv_close(bs);
    free(img);
}

static void refusal(int off, uint32_t v, const char *want)
{
    refusal2(off, v, 0, 0, want);
}

static void test_refusals(void)
{
    refusal(0, 0x12345678, "not a Parallels image (bad signature)");
    refusal(16, 1, "unsupported Parallels version 1 (only 2)");
    refusal(28, 0, "cluster size of 0 sectors is out of range (1 to 4186127)");
    refusal(28, 4186128, "cluster size of 4186128 sectors is out of range");
    refusal(32, (1u << 24) + 1, "BAT of 16777217 entries is larger than the 16777216 entries (64 MiB) limit");
    refusal(32, 5000, "BAT of 5000 entries extends past the end of the file");
    refusal2(32, 200, 48, 1, "data offset of 1 sectors lies inside the BAT");
}

static void test_read(bool old)
{
    uint8_t *img = make_prl(old), buf[3 * CS];
    Error err;
    BlockNode *bs = open_img(img, true, &err);
    ok(bs != NULL && strcmp(bs->drv->name, "parallels") == 0, "%s signature probes as parallels: %s",
       old ? "old" : "ext", err.msg);
    if (!bs)
        return;
    is_int(bdrv_getlength(bs), 65536, "virtual size");
    ok(bdrv_pread(bs, 0, sizeof buf, buf) == 0 && all_bytes(buf, CS, 'A') && all_bytes(buf + CS, CS, 0) &&
       all_bytes(buf + 2 * CS, CS, 'B'), "data, zeros, data");
    ok(bdrv_pread(bs, 15 * CS, CS, buf) == 0 && all_bytes(buf, CS, 'C'), "the last cluster");
    BlockStatus st;
    ok(bdrv_block_status(bs, 0, 65536, &st) == 0 && st.bytes == CS && st.host_offset == CS, "cluster 0 at 4096");
    ok(bdrv_block_status(bs, 3 * CS, 12 * CS, &st) == 0 && st.bytes == 12 * CS && !(st.flags & BDRV_BLOCK_ALLOCATED),
       "clusters 3 to 14: one unallocated run");
    bdrv_close(bs);
    free(img);
}

static void test_bad_entry_and_inuse(void)
{
    uint8_t *img = make_prl(false), buf[CS];
    st_le32(img + 64 + 8, 100);
    Error err;
    BlockNode *bs = open_img(img, true, &err);
    ok(bs && bdrv_pread(bs, 2 * CS, CS, buf) == -EIO && bdrv_pread(bs, 0, CS, buf) == 0, "entry past EOF: EIO there");
    if (bs)
        bdrv_close(bs);
    bs = open_img(img, false, &err);
    ok(!bs && strstr(err.msg, "BAT entry 2 (0x64) points into the header or BAT or past the end of the file (1 problem); "
                     "the image can only be opened read-only"), "writable open refused: %s", err.msg);
    free(img);
    img = make_prl(false);
    st_le32(img + 64 + 4, 2); /* cluster 1 shares host cluster 2 with cluster 2 */
    st_le32(img + 44, INUSE_OPEN);
    bs = open_img(img, true, &err);
    ok(bs != NULL, "a dirty image opens read-only");
    if (bs)
        bdrv_close(bs);
    bs = open_img(img, false, &err);
    ok(!bs && strstr(err.msg, "two BAT entries share the cluster at 0x2000"), "shared cluster refused: %s", err.msg);
    free(img);
}

static void test_write(void)
{
    uint8_t *img = make_prl(true), buf[CS], w[100], b[4];
    Error err;
    st_le32(img + 44, INUSE_OPEN);
    BlockNode *bs = open_img(img, false, &err);
    ok(bs != NULL, "a dirty image whose BAT checks out opens writable: %s", err.msg);
    if (!bs)
        return;
    bdrv_pread(bs->file, 44, 4, b);
    ok(ld_le32(b) == INUSE_OPEN, "the in-use flag is set while open");
    memset(w, 'x', sizeof w);
    ok(bdrv_pwrite(bs, CS + 10, 100, w, 0) == 0 && bdrv_getlength(bs->file) == IMG_LEN + CS, "a new cluster appended");
    bdrv_pread(bs->file, 64 + 4, 4, b);
    ok(ld_le32(b) == IMG_LEN / 512, "its BAT entry counts sectors (old signature)");
    ok(bdrv_pread(bs, CS, CS, buf) == 0 && all_bytes(buf, 10, 0) && all_bytes(buf + 10, 100, 'x') &&
       all_bytes(buf + 110, CS - 110, 0), "zeros around the data");
    BlockNode *file = bs->file;
    bdrv_ref(file);
    bdrv_close(bs);
    bdrv_pread(file, 44, 4, b);
    ok(ld_le32(b) == INUSE_CLOSED, "the in-use flag is cleared at close");
    bdrv_close(file);
    free(img);
}

int main(void)
{
    test_refusals();
    test_read(false);
    test_read(true);
    test_bad_entry_and_inuse();
    test_write();
    return done_testing();
}
