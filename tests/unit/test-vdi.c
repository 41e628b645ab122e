/* SPDX-License-Identifier: MIT */
/*
 * test-vdi.c - unit tests of the VDI driver on images built byte by byte in memory (no qemu-img): the
 * probe, header refusals and their wording, the kinds of block map entries (data, unallocated, zero,
 * past the end of the file) in reads and block status, allocation (whole block written, map entry and
 * header count updated), many threads writing into one new block (allocated once), and unmapping whole
 * blocks into zero entries whose host block the next allocation reuses; differencing images in a scratch
 * directory: the parent found by UUID among decoys, every refusal by its exact line, copy-up writes.
 */
#include "block.h"
#include "scratch.h"
#include "memimg.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BLK (1u << 20)
#define DATA_OFF 1024u
#define UNALLOC 0xffffffffu
#define ZERO 0xfffffffeu

/* A dynamic image of nblocks blocks (the last one 64 KiB inside the disk) with the given map entries,
 * host blocks 0..nhost-1 present, host block h filled with the byte 'A' + h; *len is its size. */
static uint8_t *make_vdi(const uint32_t *entries, uint32_t nblocks, uint32_t nhost, size_t *len)
{
    uint64_t disk = (uint64_t)(nblocks - 1) * BLK + 65536;
    *len = DATA_OFF + (size_t)nhost * BLK;
    uint8_t *img = calloc(1, *len);
    memcpy(img, "<<< Oracle VM VirtualBox Disk Image >>>\n", 40);
    st_le32(img + 0x40, 0xbeda107f);
    st_le32(img + 0x44, 0x00010001);
    st_le32(img + 0x48, 0x180);
    st_le32(img + 0x4c, 1);
    memcpy(img + 0x54, "unit\x01test", 9);
    st_le32(img + 0x154, 512);
    st_le32(img + 0x158, DATA_OFF);
    st_le32(img + 0x168, 512);
    st_le64(img + 0x170, disk);
    st_le32(img + 0x178, BLK);
    st_le32(img + 0x180, nblocks);
    uint32_t allocated = 0;
    for (uint32_t i = 0; i < nblocks; i++) {
        st_le32(img + 512 + 4 * i, entries[i]);
        allocated += entries[i] < ZERO;
    }
    st_le32(img + 0x184, allocated);
    for (uint32_t h = 0; h < nhost; h++)
        memset(img + DATA_OFF + (size_t)h * BLK, 'A' + (int)h, BLK);
    return img;
}

static BlockNode *open_vdi(const uint8_t *img, size_t len, bool read_only, Error *err)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = read_only;
    o.discard = DISCARD_UNMAP;
    return open_mem(img, len, NULL, &o, err);
}

static uint32_t map_entry(BlockNode *bs, uint32_t block)
{
    uint8_t b[4] = { 0 };
    bdrv_pread(bs->file, 512 + 4 * block, 4, b);
    return ld_le32(b);
}

static const char *info_str(BlockNode *bs, const char *key, char *out, size_t len)
{
    return info_value_or(bs, key, "(none)", out, len);
}

static void test_probe(void)
{
    const BlockDriver *vdi = bdrv_find_driver("vdi");
    ok(vdi != NULL, "the vdi driver is registered");
    if (!vdi)
        return;
    uint8_t head[512] = { 0 };
    st_le32(head + 0x40, 0xbeda107f);
    is_int(vdi->probe(head, sizeof(head), "x"), 100, "the signature at 0x40 probes as vdi");
    is_int(vdi->probe(head, 0x43, "x"), 0, "a file too short for the signature does not");
    st_le32(head + 0x40, 0xbeda107e);
    is_int(vdi->probe(head, sizeof(head), "x"), 0, "another signature does not");
}

static void test_reads_and_status(void)
{
    const uint32_t map[4] = { 1, UNALLOC, ZERO, 0 };
    size_t len;
    uint8_t *img = make_vdi(map, 4, 2, &len);
    Error err;
    BlockNode *bs = open_vdi(img, len, true, &err);
    ok(bs && strcmp(bs->drv->name, "vdi") == 0, "a dynamic image opens and probes as vdi: %s", err.msg);
    if (!bs) {
        free(img);
        return;
    }
    is_int(bdrv_getlength(bs), 3 * BLK + 65536, "virtual size from the header, exact");
    uint8_t *buf = malloc(2 * BLK);
    ok(bdrv_pread(bs, BLK - 100, 200, buf) == 0 && all_bytes(buf, 100, 'B') && all_bytes(buf + 100, 100, 0),
       "a read across a data block (host block 1) and an unallocated block");
    ok(bdrv_pread(bs, 2 * BLK, BLK + 65536, buf) == 0 && all_bytes(buf, BLK, 0) && all_bytes(buf + BLK, 65536, 'A'),
       "a zero entry reads zeros, the last partial block its host block 0");
    BlockStatus st;
    ok(bdrv_block_status(bs, 10, 3 * BLK, &st) == 0 && st.bytes == BLK - 10 &&
       st.flags == (BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID) &&
       st.host_offset == DATA_OFF + BLK + 10 && st.host_file == bs->file,
       "block status of data: host offset in host block 1");
    ok(bdrv_block_status(bs, BLK, 3 * BLK, &st) == 0 && st.bytes == BLK && st.flags == 0,
       "block status of an unallocated block: nothing, one block long");
    ok(bdrv_block_status(bs, 2 * BLK, BLK + 65536, &st) == 0 && st.bytes == BLK &&
       st.flags == (BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED), "block status of a zero entry");
    ok(bdrv_block_status(bs, 3 * BLK, 65536, &st) == 0 && st.bytes == 65536 && st.host_offset == DATA_OFF,
       "block status of the last partial block stops at the disk end");
    char v[128];
    ok(strcmp(info_str(bs, "comment", v, sizeof(v)), "unit?test") == 0, "the comment's control byte shows as ?");
    ok(strcmp(info_str(bs, "blocks_allocated", v, sizeof(v)), "2") == 0, "info counts 2 allocated blocks");
    ok(strcmp(info_str(bs, "image_type", v, sizeof(v)), "dynamic") == 0, "info names the image type");
    free(buf);
    bdrv_close(bs);
    free(img);
}

static void test_entry_past_eof(void)
{
    const uint32_t map[2] = { 0, 7 };
    size_t len;
    uint8_t *img = make_vdi(map, 2, 1, &len);
    Error err;
    BlockNode *bs = open_vdi(img, len, true, &err);
    ok(bs != NULL, "an image with an entry past the end of the file opens read-only: %s", err.msg);
    if (bs) {
        uint8_t buf[4096];
        is_int(bdrv_pread(bs, BLK, sizeof(buf), buf), -EIO, "reading that block fails with EIO");
        ok(bdrv_pread(bs, 0, sizeof(buf), buf) == 0 && all_bytes(buf, sizeof(buf), 'A'), "the other block reads");
        BlockStatus st;
        is_int(bdrv_block_status(bs, BLK, 4096, &st), -EIO, "its block status fails with EIO");
        bdrv_close(bs);
    }
    bs = open_vdi(img, len, false, &err);
    ok(!bs && strstr(err.msg, "block map entry 1 (0x00000007) names a host block index beyond blocks_in_image"),
       "a writable open is refused: %s", err.msg);
    free(img);
}

/* Patch one header field of a valid image, open it, expect a refusal mentioning want. */
static void refusal(unsigned off, int width, uint64_t value, const char *want)
{
    const uint32_t map[2] = { 0, UNALLOC };
    size_t len;
    uint8_t *img = make_vdi(map, 2, 1, &len);
    put_field(img + off, width, value, false);
    Error err;
    BlockOpenOpts o;
    block_open_opts_init(&o);
    open_refused(open_mem(img, len, "vdi", &o, &err), &err, want);
    free(img);
}

static void test_refusals(void)
{
    refusal(0x40, 4, 0, "not a VDI image (bad signature 0x00000000)");
    refusal(0x44, 4, 0x00010000, "unsupported VDI version 1.0");
    refusal(0x48, 4, 0x17f, "VDI header size 383 is smaller");
    refusal(0x4c, 4, 3, "unsupported VDI image type 3 (undo); only dynamic, static and differencing images");
    refusal(0x4c, 4, 4, "differencing VDI image with a null parent UUID (uuidLinkage): no parent to find");
    refusal(0x168, 4, 4096, "unsupported VDI sector size 4096");
    refusal(0x178, 4, 2 * BLK, "unsupported VDI block size 2097152");
    refusal(0x17c, 4, 512, "512 bytes of extra data are not supported");
    refusal(0x180, 4, 3, "blocks_in_image 3 does not match the disk size");
    refusal(0x180, 4, 0xffffffffu, "larger than the limit");
    refusal(0x184, 4, 3, "blocks_allocated 3 exceeds blocks_in_image 2");
    refusal(0x154, 4, 0x1000000, "block map extends past the end of the file");
    refusal(0x154, 4, 0, "overlaps the header");
    refusal(0x154, 4, 0x100, "block map offset 0x100 is not sector aligned");
    refusal(0x158, 4, 0x200, "overlaps the block map");
    refusal(0x158, 4, 0x7ffffe00, "past the end of the file");
    refusal(0x1b8, 4, 1, "the dynamic VDI image names a parent image (link or parent UUID set); only differencing");
}

static void test_allocation(void)
{
    const uint32_t map[3] = { UNALLOC, 0, UNALLOC };
    size_t len;
    uint8_t *img = make_vdi(map, 3, 1, &len);
    Error err;
    BlockNode *bs = open_vdi(img, len, false, &err);
    ok(bs != NULL, "a dynamic image opens writable: %s", err.msg);
    if (!bs) {
        free(img);
        return;
    }
    uint8_t buf[300];
    memset(buf, 0x5c, sizeof(buf));
    ok(bdrv_pwrite(bs, BLK - 100, sizeof(buf), buf, 0) == 0, "a write across a new block and an allocated one");
    is_int(map_entry(bs, 0), 1, "the new block took host block 1");
    is_int(bdrv_getlength(bs->file), DATA_OFF + 2 * BLK, "the whole new block was written");
    uint8_t *back = malloc(2 * BLK);
    ok(bdrv_pread(bs, 0, 2 * BLK, back) == 0 && all_bytes(back, BLK - 100, 0) &&
       all_bytes(back + BLK - 100, 300, 0x5c) && all_bytes(back + BLK + 200, BLK - 200, 'A'),
       "zeros around the new data, the old block kept the rest");
    uint8_t hdr[4];
    bdrv_pread(bs->file, 0x184, 4, hdr);
    is_int(ld_le32(hdr), 2, "the header counts 2 allocated blocks");
    free(back);
    bdrv_close(bs);
    free(img);
}

typedef struct Writer {
    BlockNode *bs;
    int index;
} Writer;

static void *write_piece(void *opaque)
{
    Writer *w = opaque;
    uint8_t buf[4096];
    memset(buf, 0x10 + w->index, sizeof(buf));
    for (int round = 0; round < 4; round++)
        if (bdrv_pwrite(w->bs, (int64_t)round * BLK + w->index * 8192, sizeof(buf), buf, 0) < 0)
            return (void *)1;
    return NULL;
}

static void test_concurrent_allocation(void)
{
    const uint32_t map[5] = { UNALLOC, UNALLOC, UNALLOC, UNALLOC, UNALLOC };
    size_t len;
    uint8_t *img = make_vdi(map, 5, 0, &len);
    Error err;
    BlockNode *bs = open_vdi(img, len, false, &err);
    ok(bs != NULL, "an empty image opens writable: %s", err.msg);
    if (!bs) {
        free(img);
        return;
    }
    enum { N = 8 };
    pthread_t t[N];
    Writer w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (Writer){ bs, i };
        pthread_create(&t[i], NULL, write_piece, &w[i]);
    }
    bool failed = false;
    for (int i = 0; i < N; i++) {
        void *r;
        pthread_join(t[i], &r);
        failed |= r != NULL;
    }
    ok(!failed, "eight threads wrote into the same four new blocks");
    is_int(bdrv_getlength(bs->file), DATA_OFF + 4 * BLK, "four host blocks, not more");
    uint32_t seen = 0;
    for (uint32_t b = 0; b < 4; b++)
        seen |= map_entry(bs, b) < 4 ? 1u << map_entry(bs, b) : 0x100;
    is_int(seen, 0xf, "each block has its own host block");
    uint8_t buf[4096];
    bool all = true;
    for (int round = 0; round < 4; round++)
        for (int i = 0; i < N; i++)
            all &= bdrv_pread(bs, (int64_t)round * BLK + i * 8192, sizeof(buf), buf) == 0 &&
                   all_bytes(buf, sizeof(buf), (uint8_t)(0x10 + i));
    ok(all, "every thread's data is there");
    bdrv_close(bs);
    free(img);
}

static void test_unmap_and_reuse(void)
{
    const uint32_t map[3] = { 0, 1, UNALLOC };
    size_t len;
    uint8_t *img = make_vdi(map, 3, 2, &len);
    Error err;
    BlockNode *bs = open_vdi(img, len, false, &err);
    if (!bs) {
        ok(0, "open: %s", err.msg);
        free(img);
        return;
    }
    ok(bdrv_pwrite_zeroes(bs, 10, 2 * BLK - 10, BDRV_REQ_MAY_UNMAP) == 0, "write zeroes with unmap over blocks 0-1");
    is_int(map_entry(bs, 0), 0, "block 0, not whole in the range, kept its host block");
    is_int(map_entry(bs, 1), ZERO, "block 1, whole in the range, became a zero entry");
    uint8_t buf[32];
    ok(bdrv_pread(bs, BLK - 16, 32, buf) == 0 && all_bytes(buf, 16, 0) && all_bytes(buf + 16, 16, 0),
       "the zeroed range reads zeros");
    ok(bdrv_pread(bs, 0, 10, buf) == 0 && all_bytes(buf, 10, 'A'), "the bytes before it are kept");
    ok(bdrv_pwrite(bs, 2 * BLK + 5, 3, "new", 0) == 0, "a write into the unallocated last block");
    is_int(map_entry(bs, 2), 1, "it reused host block 1");
    is_int(bdrv_getlength(bs->file), DATA_OFF + 2 * BLK, "the file did not grow");
    ok(bdrv_pread(bs, 2 * BLK, 10, buf) == 0 && memcmp(buf, "\0\0\0\0\0new\0\0", 10) == 0,
       "the reused block holds zeros and the new bytes, nothing of its old data");
    bdrv_close(bs);
    free(img);
}

/* ---------------------------------------------------------------- differencing images */

static const uint8_t PARENT_UUID[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
static const uint8_t CHILD_UUID[16] = { 0xc1, 0xc2, 0xc3, 0xc4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };

/* make_vdi's image as type, with uuidCreate own and uuidLinkage link (NULL: null), written to the scratch
 * file name. */
static void write_vdi(const char *name, uint32_t type, const uint32_t *entries, uint32_t nhost, const uint8_t *own,
                      const uint8_t *link)
{
    size_t len;
    uint8_t *img = make_vdi(entries, 3, nhost, &len);
    st_le32(img + 0x4c, type);
    memcpy(img + 0x188, own, 16);
    if (link)
        memcpy(img + 0x1a8, link, 16);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ok(f && fwrite(img, 1, len, f) == len && fclose(f) == 0, "wrote %s", name);
    free(img);
}

static BlockNode *open_path(const char *name, bool read_only, const char *backing, bool no_backing, Error *err)
{
    char path[512], bpath[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = read_only;
    o.no_backing = no_backing;
    if (backing) {
        snprintf(bpath, sizeof(bpath), "%s/%s", tmpdir, backing);
        o.backing = bpath;
    }
    memset(err, 0, sizeof(*err));
    return bdrv_open(path, &o, err);
}

/* The open of name fails with exactly "DIR/name: " + want. */
static void diff_refusal(const char *name, bool read_only, const char *backing, bool no_backing, const char *want)
{
    Error err;
    char full[1024];
    snprintf(full, sizeof(full), "%s/%s: %s", tmpdir, name, want);
    BlockNode *bs = open_path(name, read_only, backing, no_backing, &err);
    ok(!bs && strcmp(err.msg, full) == 0, "%s refused: %s", name, err.msg);
    if (bs)
        bdrv_close(bs);
}

static void test_differencing(void)
{
    if (!scratch_init("vdi-diff")) {
        ok(0, "scratch directory");
        return;
    }
    const uint32_t pmap[3] = { 0, 1, 2 }, cmap[3] = { UNALLOC, 0, ZERO };
    static const uint8_t other[16] = { 9, 9, 9 };
    write_vdi("parent.vdi", 1, pmap, 3, PARENT_UUID, NULL);   /* blocks 'A', 'B', 'C' */
    write_vdi("decoy.vdi", 1, pmap, 3, other, NULL);
    write_vdi("child.vdi", 4, cmap, 1, CHILD_UUID, PARENT_UUID); /* block 1 'A', block 2 zero */
    sh("printf 'not an image' > junk.vdi");

    Error err;
    BlockNode *bs = open_path("child.vdi", true, NULL, false, &err);
    ok(bs != NULL, "a differencing image opens with the parent found by UUID: %s", err.msg);
    if (bs) {
        uint8_t buf[3] = { 0 };
        ok(bs->backing && strstr(bs->backing->filename, "/parent.vdi"), "the parent is parent.vdi, not the decoy");
        ok(bdrv_pread(bs, 0, 1, buf) == 0 && bdrv_pread(bs, BLK, 1, buf + 1) == 0 && bdrv_pread(bs, 2 * BLK, 1, buf + 2) == 0 &&
           memcmp(buf, "AA\0", 3) == 0, "block 0 from the parent, block 1 its own, block 2 zeros");
        bdrv_close(bs);
    }

    /* copy-up: a write into block 0 brings the parent's block along */
    bs = open_path("child.vdi", false, NULL, false, &err);
    ok(bs != NULL, "writable open: %s", err.msg);
    if (bs) {
        uint8_t b[8] = { 0 };
        ok(bdrv_pwrite(bs, 100, 3, "new", 0) == 0, "a write into the unallocated block 0");
        is_int(map_entry(bs, 0), 1, "block 0 got host block 1");
        ok(bdrv_pread(bs->file, DATA_OFF + BLK + 98, 7, b) == 0 && memcmp(b, "AAnewAA", 7) == 0,
           "the new host block holds the parent's bytes around the write");
        ok(bdrv_pread(bs->file, DATA_OFF + 2 * BLK - 1, 1, b) == 0 && b[0] == 'A', "to the block's end");
        bdrv_close(bs);
    }

    static const uint8_t nobody[16] = { 7, 7, 7 };
    write_vdi("lonely.vdi", 4, cmap, 1, CHILD_UUID, nobody);
    diff_refusal("lonely.vdi", true, NULL, false, "parent {00070707-0000-0000-0000-000000000000} not found: no .vdi file "
                 "in the image's directory or a --backing-dir has it (4 looked at); use --backing-dir DIR or --backing FILE");
    char want[1024];
    snprintf(want, sizeof(want), "parent %s/decoy.vdi has UUID {00090909-0000-0000-0000-000000000000}, but this "
             "differencing image was made from {04030201-0605-0807-090a-0b0c0d0e0f10}", tmpdir);
    diff_refusal("child.vdi", true, "decoy.vdi", false, want);
    diff_refusal("child.vdi", false, NULL, true, "a differencing VDI image is writable only with its parent (not with "
                 "--no-backing): new blocks start as the parent's");
    diff_refusal("parent.vdi", true, "decoy.vdi", false, "a dynamic VDI image has no parent: --backing applies to "
                 "differencing images only");
    write_vdi("self.vdi", 4, cmap, 1, CHILD_UUID, CHILD_UUID);
    diff_refusal("self.vdi", true, NULL, false, "differencing VDI image names itself as its parent (uuidLinkage = uuidCreate)");
    bs = open_path("child.vdi", true, NULL, true, &err);
    ok(bs && !bs->backing, "read-only with --no-backing: the top alone");
    if (bs)
        bdrv_close(bs);

    /* an in-memory differencing image never searches for files */
    size_t len;
    uint8_t *img = make_vdi(cmap, 3, 1, &len);
    st_le32(img + 0x4c, 4);
    memcpy(img + 0x188, CHILD_UUID, 16);
    memcpy(img + 0x1a8, PARENT_UUID, 16);
    bs = open_vdi(img, len, true, &err);
    ok(!bs && strstr(err.msg, "refused: an in-memory image may not open files"), "memory node: %s", err.msg);
    if (bs)
        bdrv_close(bs);
    free(img);
    scratch_cleanup();
}

int main(void)
{
    test_probe();
    test_reads_and_status();
    test_entry_past_eof();
    test_refusals();
    test_allocation();
    test_concurrent_allocation();
    test_unmap_and_reuse();
    test_differencing();
    return done_testing();
}
