/* SPDX-License-Identifier: MIT */
/*
 * test-map.c - bdrv_map_extents, the core hook behind the front end's zero-copy (splice) reads. As one
 * extent (map_contiguous below): on images made by qemu-img, a mapped range's host bytes equal what
 * bdrv_pread returns (raw, allocated qcow2 clusters, a backing layer); compressed, zero, unallocated,
 * layer-straddling and host-scattered ranges are refused, as are writable chains and request-path
 * features; bdrv_account_extents counts the read where bdrv_pread would. As several extents, it hands
 * out a scattered range as host extents of several layers and zero pieces whose bytes, in order, equal
 * bdrv_pread's; it refuses compressed pieces and ranges needing more extents than allowed;
 * bdrv_account_extents counts the top once and each layer per extent.
 */
#include "block.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* 1 when [off, off+len) maps to one host extent (what a single splice can answer), else 0 or -errno. */
static int map_contiguous(BlockNode *bs, int64_t off, int64_t len, BlockMapExtent *m)
{
    int r = bdrv_map_extents(bs, off, len, m, 1);
    return r == 1 && m->fd >= 0 ? 1 : (r < 0 ? r : 0);
}

/* True when [off, off+len) maps and the host bytes there equal bdrv_pread's. */
static bool maps_to_same_bytes(BlockNode *bs, int64_t off, int64_t len, BlockMapExtent *m)
{
    if (map_contiguous(bs, off, len, m) != 1)
        return false;
    uint8_t *want = malloc((size_t)len), *got = malloc((size_t)len);
    bool same = want && got && bdrv_pread(bs, off, len, want) == 0 &&
                pread(m->fd, got, (size_t)len, m->host_offset) == (ssize_t)len && memcmp(want, got, (size_t)len) == 0;
    free(want);
    free(got);
    return same;
}

static void test_raw(void)
{
    ok(sh("qemu-img create -q -f raw r.raw 4M && qemu-io -f raw -c 'write -P 0x5a 0 3M' r.raw") == 0, "made a raw image");
    BlockNode *bs = scratch_open("r.raw", true);
    BlockMapExtent m;
    ok(bs && maps_to_same_bytes(bs, 4096, 1048576, &m) && m.host_offset == 4096 && m.depth == 0,
       "raw: a data range maps to the same offset of the file");
    is_int(map_contiguous(bs, 3 * 1048576, 65536, &m), 0, "raw: a hole of the file is not mapped");
    bdrv_close(bs);
    bs = scratch_open("r.raw", false);
    is_int(map_contiguous(bs, 0, 65536, &m), 0, "raw: a writable chain is never mapped");
    bdrv_close(bs);
}

static void test_qcow2(void)
{
    ok(sh("qemu-img create -q -f qcow2 -o cluster_size=65536 b.qcow2 4M && "
          "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' b.qcow2 && "
          "qemu-img create -q -f qcow2 -o cluster_size=65536 -b b.qcow2 -F qcow2 t.qcow2 && "
          "qemu-io -f qcow2 -c 'write -P 0x22 1M 1M' -c 'write -z 2M 64k' -c 'write -P 0x33 512k 64k' t.qcow2 && "
          "qemu-io -f qcow2 -c 'write -P 0x45 3136k 64k' -c 'write -P 0x44 3M 64k' t.qcow2 && "
          "qemu-img create -q -f raw src.raw 1M && qemu-io -f raw -c 'write -P 0x66 0 1M' src.raw && "
          "qemu-img convert -c -O qcow2 src.raw c.qcow2") == 0, "made a qcow2 chain and a compressed qcow2");
    BlockNode *bs = scratch_open("t.qcow2", true);
    BlockMapExtent m;
    ok(bs && maps_to_same_bytes(bs, 1048576 + 4096, 128 * 1024, &m) && m.depth == 0 && m.host_file == bs->file,
       "qcow2: allocated clusters of the top map into its file");
    ok(bs && maps_to_same_bytes(bs, 0, 256 * 1024, &m) && m.depth == 1 && m.host_file == bs->backing->file,
       "qcow2: clusters of the backing layer map into the backing file");
    is_int(map_contiguous(bs, 512 * 1024 - 4096, 8192, &m), 0, "a range straddling two layers is not mapped");
    is_int(map_contiguous(bs, 2 * 1048576, 4096, &m), 0, "a zero cluster is not mapped");
    is_int(map_contiguous(bs, 3 * 1048576 - 65536, 4096, &m), 0, "an unallocated range is not mapped");
    is_int(map_contiguous(bs, 3 * 1048576 + 60 * 1024, 8192, &m), 0,
           "clusters not adjacent on the host are not mapped as one");

    BlockStats top0, file0, base0, top1, file1, base1;
    bdrv_stats_snapshot(bs, &top0);
    bdrv_stats_snapshot(bs->file, &file0);
    bdrv_stats_snapshot(bs->backing, &base0);
    ok(map_contiguous(bs, 0, 65536, &m) == 1, "mapped a backing cluster");
    bdrv_account_extents(bs, &m, 1, 1000);
    bdrv_stats_snapshot(bs, &top1);
    bdrv_stats_snapshot(bs->file, &file1);
    bdrv_stats_snapshot(bs->backing, &base1);
    ok(top1.rd_ops == top0.rd_ops + 1 && top1.rd_bytes == top0.rd_bytes + 65536 &&
       base1.rd_ops == base0.rd_ops + 1 && base1.rd_bytes == base0.rd_bytes + 65536 &&
       file1.rd_bytes == file0.rd_bytes, "a mapped read is counted in the top and the layer that held it");
    BlockStats bf0, bf1;
    bdrv_stats_snapshot(bs->backing->file, &bf0);
    bdrv_account_extents(bs, &m, 1, 1000);
    bdrv_stats_snapshot(bs->backing->file, &bf1);
    ok(bf1.rd_ops == bf0.rd_ops + 1 && bf1.rd_bytes == bf0.rd_bytes + 65536, "... and in that layer's host file");
    bdrv_close(bs);

    bs = scratch_open("c.qcow2", true);
    is_int(bs ? map_contiguous(bs, 0, 65536, &m) : -1, 0, "compressed clusters are not mapped");
    if (bs)
        bdrv_close(bs);
}

/* True when the extents of [off, off+len) put together (host bytes, zeros) equal bdrv_pread's bytes. */
static bool extents_read_same(BlockNode *bs, int64_t off, int64_t len, const BlockMapExtent *x, int n)
{
    uint8_t *want = malloc((size_t)len), *got = calloc(1, (size_t)len);
    bool same = want && got && bdrv_pread(bs, off, len, want) == 0;
    int64_t at = 0;
    for (int i = 0; same && i < n; i++) {
        if (x[i].fd >= 0)
            same = pread(x[i].fd, got + at, (size_t)x[i].bytes, x[i].host_offset) == (ssize_t)x[i].bytes;
        at += x[i].bytes;
    }
    same = same && at == len && memcmp(want, got, (size_t)len) == 0;
    free(want);
    free(got);
    return same;
}

static void test_extents(void)
{
    /* t.qcow2 from test_qcow2: backing data 0..1M (top 512k..576k), top data 1M..2M, a zero cluster at
     * 2M, holes above, top clusters at 3M and 3136k not adjacent on the host. */
    BlockNode *bs = scratch_open("t.qcow2", true);
    BlockMapExtent x[16];
    int n = bs ? bdrv_map_extents(bs, 512 * 1024 - 4096, 8192, x, 8) : -1;
    ok(n == 2 && x[0].bytes == 4096 && x[0].depth == 1 && x[0].host_file == bs->backing->file &&
       x[1].bytes == 4096 && x[1].depth == 0 && x[1].host_file == bs->file && extents_read_same(bs, 512 * 1024 - 4096, 8192, x, n),
       "a range straddling two layers is two extents, one in each layer's file");
    n = bs ? bdrv_map_extents(bs, 2 * 1048576 - 4096, 69632, x, 8) : -1;
    ok(n == 2 && x[0].fd >= 0 && x[1].fd < 0 && x[1].host_file == NULL && x[1].bytes == 65536 && x[1].depth == 0 &&
       extents_read_same(bs, 2 * 1048576 - 4096, 69632, x, n), "a zero cluster is a zero extent of the top");
    n = bs ? bdrv_map_extents(bs, 2 * 1048576 + 65536, 131072, x, 8) : -1;
    ok(n == 1 && x[0].fd < 0 && x[0].bytes == 131072 && x[0].depth == 2,
       "a range unallocated in every layer is one zero extent, found below the bottom layer");
    n = bs ? bdrv_map_extents(bs, 0, 4 * 1048576, x, 16) : -1;
    ok(n > 2 && extents_read_same(bs, 0, 4 * 1048576, x, n), "the whole chain maps into %d extents with qemu-img's bytes", n);
    is_int(bs ? bdrv_map_extents(bs, 0, 4 * 1048576, x, 2) : -1, 0, "a range needing more extents than allowed is refused");
    n = bs ? bdrv_map_extents(bs, 3 * 1048576 + 60 * 1024, 8192, x, 8) : -1;
    ok(n == 2 && x[0].host_offset + 4096 != x[1].host_offset && extents_read_same(bs, 3 * 1048576 + 60 * 1024, 8192, x, n),
       "clusters not adjacent on the host are separate extents");

    BlockStats top0, base0, bfile0, file0, top1, base1, bfile1, file1;
    n = bs ? bdrv_map_extents(bs, 512 * 1024 - 4096, 8192, x, 8) : 0;
    bdrv_stats_snapshot(bs, &top0);
    bdrv_stats_snapshot(bs->file, &file0);
    bdrv_stats_snapshot(bs->backing, &base0);
    bdrv_stats_snapshot(bs->backing->file, &bfile0);
    bdrv_account_extents(bs, x, n, 1000);
    bdrv_stats_snapshot(bs, &top1);
    bdrv_stats_snapshot(bs->file, &file1);
    bdrv_stats_snapshot(bs->backing, &base1);
    bdrv_stats_snapshot(bs->backing->file, &bfile1);
    ok(top1.rd_ops == top0.rd_ops + 1 && top1.rd_bytes == top0.rd_bytes + 8192 && base1.rd_bytes == base0.rd_bytes + 4096 &&
       file1.rd_bytes == file0.rd_bytes + 4096 && bfile1.rd_bytes == bfile0.rd_bytes + 4096,
       "extents are counted once in the top and per extent in the layer and host file that held them");
    if (bs)
        bdrv_close(bs);

    bs = scratch_open("c.qcow2", true);
    is_int(bs ? bdrv_map_extents(bs, 0, 65536, x, 8) : -1, 0, "compressed clusters are not mapped as extents");
    if (bs)
        bdrv_close(bs);
    bs = scratch_open("t.qcow2", false);
    is_int(bs ? bdrv_map_extents(bs, 0, 65536, x, 8) : -1, 0, "a writable chain is never mapped as extents");
    if (bs)
        bdrv_close(bs);
}

static void test_request_path_features(void)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/r.raw", tmpdir);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.bps_limit = 1 << 30;
    Error err;
    memset(&err, 0, sizeof(err));
    BlockNode *bs = bdrv_open(path, &o, &err);
    BlockMapExtent m;
    is_int(bs ? map_contiguous(bs, 0, 65536, &m) : -1, 0, "a throttled chain is not mapped");
    bdrv_close(bs);
    block_open_opts_init(&o);
    o.read_only = true;
    o.on_read_error = READ_ERROR_ZERO;
    bs = bdrv_open(path, &o, &err);
    is_int(bs ? map_contiguous(bs, 0, 65536, &m) : -1, 0, "--on-read-error=zero is not mapped");
    bdrv_close(bs);
}

int main(void)
{
    if (!scratch_init("map"))
        return 1;
    test_raw();
    test_qcow2();
    test_extents();
    test_request_path_features();
    scratch_cleanup();
    return done_testing();
}
