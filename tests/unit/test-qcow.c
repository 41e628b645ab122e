/* SPDX-License-Identifier: MIT */
/*
 * test-qcow.c - unit tests of the qcow (version 1) driver on images built byte by byte in memory (no
 * qemu-img): the probe, every header refusal by its exact line, plain, compressed and unallocated
 * clusters in reads and block status, an entry past the end of the file failing its cluster only, and
 * writes (in place, a new cluster and L2 table appended, a compressed cluster rewritten plain).
 */
#include "block.h"
#include "memimg.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define CS 4096u
#define IMG_LEN (6 * CS)

/* 64 KiB disk, 4 KiB clusters, 512-entry L2: header, L1 at 4096, L2 at 8192, cluster 0 plain ('A') at
 * 12288, cluster 1 compressed ('B', raw deflate) at 16384, cluster 2 plain ('C') at 20480. */
static uint8_t *make_qcow(void)
{
    uint8_t *img = calloc(1, IMG_LEN), plain[CS];
    st_be32(img, 0x514649fb);
    st_be32(img + 4, 1);
    st_be64(img + 24, 64 * 1024);
    img[32] = 12;
    img[33] = 9;
    st_be64(img + 40, CS);
    st_be64(img + CS, 2 * CS);
    st_be64(img + 2 * CS, 3 * CS);
    st_be64(img + 2 * CS + 16, 5 * CS);
    memset(img + 3 * CS, 'A', CS);
    memset(img + 5 * CS, 'C', CS);
    memset(plain, 'B', CS);
    z_stream z;
    memset(&z, 0, sizeof(z));
    deflateInit2(&z, 9, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY);
    z.next_in = plain;
    z.avail_in = CS;
    z.next_out = img + 4 * CS;
    z.avail_out = CS;
    deflate(&z, Z_FINISH);
    uint64_t csize = z.total_out;
    deflateEnd(&z);
    st_be64(img + 2 * CS + 8, (UINT64_C(1) << 63) | (csize << (63 - 12)) | (4 * CS));
    return img;
}

static BlockNode *open_img(const uint8_t *img, bool read_only, Error *err)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = read_only;
    return open_mem(img, IMG_LEN, NULL, &o, err);
}

static void refusal(int off, int width, uint64_t v, const char *want)
{
    uint8_t *img = make_qcow();
    put_field(img + off, width, v, true);
    Error err;
    open_refused(open_img(img, true, &err), &err, want);
    free(img);
}

static void test_refusals(void)
{
    refusal(36, 4, 1, "encrypted qcow image (AES): a key is needed (--key-file FILE or --passphrase-fd N)");
    refusal(36, 4, 7, "unknown encryption method 7");
    refusal(32, 1, 8, "cluster_bits 8 is out of range (9 to 16)");
    refusal(33, 1, 14, "l2_bits 14 is out of range (6 to 13)");
    refusal(24, 8, 0, "image size is 0");
    refusal(24, 8, (UINT64_C(1) << 62) + 512, "is larger than 2^62 bytes");
    refusal(24, 8, UINT64_C(1) << 52, "L1 table is too large: 2147483648 entries, more than the 32 MiB limit");
    refusal(40, 8, 8, "L1 table (offset 0x8, 1 entries) is unaligned, in the header or past the end of the file");
    refusal(40, 8, IMG_LEN, "past the end of the file");
    refusal(8, 8, IMG_LEN - 4, "backing file name (offset 0x5ffc, 0 bytes) lies outside the file");
}

static void test_read(void)
{
    uint8_t *img = make_qcow(), buf[3 * CS + 100];
    Error err;
    BlockNode *bs = open_img(img, true, &err);
    ok(bs != NULL && strcmp(bs->drv->name, "qcow") == 0, "a qcow image probes as qcow: %s", err.msg);
    if (!bs)
        return;
    is_int(bdrv_getlength(bs), 65536, "virtual size");
    ok(bdrv_pread(bs, 0, sizeof buf, buf) == 0 && all_bytes(buf, CS, 'A') && all_bytes(buf + CS, CS, 'B') &&
       all_bytes(buf + 2 * CS, CS, 'C') && all_bytes(buf + 3 * CS, 100, 0), "plain, compressed, plain, unallocated");
    BlockStatus st;
    ok(bdrv_block_status(bs, 0, 65536, &st) == 0 && st.bytes == CS && st.host_offset == 3 * CS &&
       (st.flags & BDRV_BLOCK_OFFSET_VALID), "cluster 0: data at its host offset");
    ok(bdrv_block_status(bs, CS, 65536 - CS, &st) == 0 && st.bytes == CS && (st.flags & BDRV_BLOCK_COMPRESSED) &&
       !(st.flags & BDRV_BLOCK_OFFSET_VALID), "cluster 1: compressed, no host offset");
    ok(bdrv_block_status(bs, 3 * CS, 65536 - 3 * CS, &st) == 0 && st.bytes == 65536 - 3 * CS &&
       !(st.flags & BDRV_BLOCK_ALLOCATED), "clusters 3 to 15: one unallocated run");
    bdrv_close(bs);
    /* an L2 entry past the end of the file fails its cluster only */
    st_be64(img + 2 * CS + 16, 1 << 30);
    bs = open_img(img, true, &err);
    ok(bs && bdrv_pread(bs, 2 * CS, CS, buf) == -EIO && bdrv_pread(bs, 0, 2 * CS, buf) == 0, "bad entry: EIO there");
    if (bs)
        bdrv_close(bs);
    free(img);
}

static void test_write(void)
{
    uint8_t *img = make_qcow(), buf[CS], w[100];
    Error err;
    BlockNode *bs = open_img(img, false, &err);
    ok(bs != NULL, "writable open: %s", err.msg);
    if (!bs)
        return;
    memset(w, 'x', sizeof w);
    int64_t before = bdrv_getlength(bs->file);
    ok(bdrv_pwrite(bs, 10, 100, w, 0) == 0 && bdrv_getlength(bs->file) == before, "in place: the file does not grow");
    ok(bdrv_pwrite(bs, CS + 10, 100, w, 0) == 0 && bdrv_getlength(bs->file) == before + CS,
       "into the compressed cluster: one new cluster");
    ok(bdrv_pread(bs, CS, CS, buf) == 0 && all_bytes(buf, 10, 'B') && all_bytes(buf + 10, 100, 'x') &&
       all_bytes(buf + 110, CS - 110, 'B'), "the compressed cluster's bytes around the write");
    uint8_t e[8];
    bdrv_pread(bs->file, 2 * CS + 8, 8, e);
    ok(ld_be64(e) == (uint64_t)before, "its L2 entry names the new plain cluster");
    /* an unallocated cluster under the existing L2 table */
    ok(bdrv_pwrite(bs, 10 * CS, 100, w, 0) == 0 && bdrv_pread(bs, 10 * CS, CS, buf) == 0 &&
       all_bytes(buf, 100, 'x') && all_bytes(buf + 100, CS - 100, 0), "an unallocated cluster: zeros around the data");
    bdrv_close(bs);
    free(img);
}

/* A writable open refuses tables and clusters an in-place write could damage; read-only opens serve them. */
static void test_writable_check(void)
{
    static const struct {
        int entry;
        uint64_t value;
        const char *want;
    } cases[] = {
        { 2, 2 * CS, "L2 entry of guest cluster 2 (0x2000) points into the header, a table or another cluster, or past "
                     "the end of the file (1 problem); the image can only be opened read-only" },
        { 2, 3 * CS, "L2 entry of guest cluster 2 (0x3000) points into" },
        /* a plain cluster over the compressed bytes of cluster 1: found on the compressed entry */
        { 3, 4 * CS, "compressed L2 entry of guest cluster 1 (0x80b0000000004000) points into" },
        /* the L1 entry names cluster 2's data as an L2 table: its bytes are not entries */
        { -1, 0, "L2 entry of guest cluster 0 (0x4343434343434343) points into" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        uint8_t *img = make_qcow();
        Error err;
        if (cases[i].entry >= 0)
            st_be64(img + 2 * CS + 8 * cases[i].entry, cases[i].value);
        else
            st_be64(img + CS, 5 * CS); /* the L2 table over the data of cluster 2 */
        BlockNode *bs = open_img(img, false, &err);
        ok(!bs && strstr(err.msg, cases[i].want), "writable open refused: %s", err.msg);
        if (bs)
            bdrv_close(bs);
        bs = open_img(img, true, &err);
        ok(bs != NULL, "read-only open serves it");
        if (bs)
            bdrv_close(bs);
        free(img);
    }
}

int main(void)
{
    test_refusals();
    test_read();
    test_write();
    test_writable_check();
    return done_testing();
}
