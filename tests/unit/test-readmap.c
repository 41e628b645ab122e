/* SPDX-License-Identifier: MIT */
/*
 * test-readmap.c - bdrv_read_mapped, the core helper through which qcow2, vdi, qed, vpc and vmdk read (a
 * driver's map of runs: host bytes, zeros, the backing node, or pieces only the driver decodes), and
 * bdrv_run_kind, the one interpretation of a run that it shares with bdrv_map_extents (zero-copy
 * reads). A scripted driver over memory nodes checks every kind of run, a decoder, a missing decoder, a
 * failing map and a map that answers for nothing, batched host runs and a driver-named backing node;
 * images made by qemu-img (qcow2 over a backing file with and without subclusters, compressed qcow2, vdi,
 * qed over a backing file, dynamic vpc, sparse, stream-optimized and delta vmdk) check that bdrv_pread returns
 * qemu-img convert's bytes and that every range bdrv_map_extents hands out reads as bdrv_pread does.
 * bdrv_write_mapped_locked, the write slot of map-based drivers: in-place pieces under the shared lock,
 * allocations under the exclusive one, EROFS without a lock, the range check, errors and FUA.
 */
#include "block.h"
#include "scratch.h"
#include "memimg.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- bdrv_run_kind */

static BlockRunKind kind_of(int flags, bool host_file)
{
    BlockStatus st = { .flags = flags, .bytes = 512, .host_offset = 0 };
    st.host_file = host_file ? (BlockNode *)&st : NULL; /* only compared with NULL */
    return bdrv_run_kind(&st);
}

static void test_run_kind(void)
{
    const int A = BDRV_BLOCK_ALLOCATED, D = BDRV_BLOCK_DATA, Z = BDRV_BLOCK_ZERO, O = BDRV_BLOCK_OFFSET_VALID,
              C = BDRV_BLOCK_COMPRESSED;
    is_int(kind_of(A | D | O, true), BLOCK_RUN_HOST, "run kind: allocated data at a host offset is a host run");
    is_int(kind_of(A | Z, false), BLOCK_RUN_ZERO, "run kind: an allocated zero run reads as zeros");
    is_int(kind_of(A | Z | D | O, true), BLOCK_RUN_ZERO, "run kind: zero wins over a host offset (preallocated zeros)");
    is_int(kind_of(Z, false), BLOCK_RUN_ZERO, "run kind: zeros of the whole chain (block_status_above) are zeros");
    is_int(kind_of(0, false), BLOCK_RUN_BACKING, "run kind: an unallocated run is the backing node's");
    is_int(kind_of(D | O, true), BLOCK_RUN_BACKING, "run kind: data this layer does not allocate is the backing's");
    is_int(kind_of(A | D | C, false), BLOCK_RUN_DECODE, "run kind: compressed data is decoded by the driver");
    is_int(kind_of(A | D | O | C, true), BLOCK_RUN_DECODE, "run kind: compressed data at a host offset too");
    is_int(kind_of(A | Z | C, false), BLOCK_RUN_DECODE, "run kind: a compressed zero run is decoded");
    is_int(kind_of(A | D, false), BLOCK_RUN_DECODE, "run kind: data without a host offset is decoded");
    is_int(kind_of(A | D | O, false), BLOCK_RUN_DECODE, "run kind: a host offset without a host file is decoded");
}

/* ---------------------------------------------------------------- a scripted driver */

#define RUN 4096

typedef struct Run {
    int flags;
    int64_t host_offset; /* in the file child, when OFFSET_VALID */
} Run;

typedef struct FakeState {
    const Run *runs;     /* one per RUN bytes of the disk */
    int n;
    int map_error;       /* run index whose map fails with -EIO, -1 none */
    bool empty_answer;   /* the map answers for 0 bytes */
    bool decoder;        /* the driver decodes BLOCK_RUN_DECODE runs */
    int decoded;         /* bytes decoded */
    bool own_backing;    /* backing runs read 'backing' below instead of bs->backing */
    BlockNode *backing;
} FakeState;

static int fake_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    FakeState *s = opaque;
    int i = (int)(offset / RUN);
    if (i == s->map_error)
        return -EIO;
    st->flags = s->runs[i].flags;
    st->bytes = s->empty_answer ? 0 : MIN(bytes, (int64_t)(i + 1) * RUN - offset);
    if (st->flags & BDRV_BLOCK_OFFSET_VALID) {
        st->host_offset = s->runs[i].host_offset + offset % RUN;
        st->host_file = bs->file;
    }
    return 0;
}

/* Decoded bytes read as 0xdd. */
static int fake_decode(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st, void *opaque)
{
    FakeState *s = opaque;
    (void)bs;
    (void)offset;
    (void)st;
    memset(buf, 0xdd, (size_t)bytes);
    s->decoded += (int)bytes;
    return 0;
}

static BlockNode *fake_backing(BlockNode *bs, void *opaque)
{
    FakeState *s = opaque;
    (void)bs;
    return s->backing;
}

static int fake_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    FakeState *s = bs->opaque;
    BlockReadMap m = { .map = fake_map, .decode = s->decoder ? fake_decode : NULL,
                       .backing = s->own_backing ? fake_backing : NULL };
    return bdrv_read_mapped(bs, offset, bytes, buf, &m, s);
}

static int64_t fake_getlength(BlockNode *bs)
{
    FakeState *s = bs->opaque;
    return (int64_t)s->n * RUN;
}

static const BlockDriver fake_driver = {
    .name = "fake-map",
    .instance_size = sizeof(FakeState),
    .read = fake_read,
    .getlength = fake_getlength,
};

/* The file child holds byte i%251 + 1 at offset i; the backing node 0xbb everywhere. */
static BlockNode *fake_node(const Run *runs, int n, bool with_backing)
{
    static uint8_t file[8 * RUN], back[8 * RUN];
    for (size_t i = 0; i < sizeof(file); i++)
        file[i] = (uint8_t)(i % 251 + 1);
    memset(back, 0xbb, sizeof(back));
    BlockNode *bs = bdrv_new_node(&fake_driver, "fake");
    FakeState *s = bs->opaque;
    *s = (FakeState){ .runs = runs, .n = n, .map_error = -1, .decoder = true };
    bs->read_only = true;
    bs->file = bdrv_open_memory(file, sizeof(file), true);
    if (with_backing)
        bs->backing = bdrv_open_memory(back, sizeof(back), true);
    return bs;
}

static bool host_bytes(const uint8_t *p, size_t n, int64_t host)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)((host + (int64_t)i) % 251 + 1))
            return false;
    return true;
}

static void test_scripted(void)
{
    const int A = BDRV_BLOCK_ALLOCATED, D = BDRV_BLOCK_DATA, Z = BDRV_BLOCK_ZERO, O = BDRV_BLOCK_OFFSET_VALID,
              C = BDRV_BLOCK_COMPRESSED;
    const Run runs[6] = { { A | D | O, 5 * RUN }, { A | Z, 0 }, { 0, 0 }, { A | D | C, 0 }, { A | D | O, RUN }, { Z, 0 } };
    BlockNode *bs = fake_node(runs, 6, true);
    FakeState *s = bs->opaque;
    static uint8_t buf[6 * RUN];
    is_int(bdrv_pread(bs, 100, 6 * RUN - 200, buf + 100), 0, "scripted: a read across every kind of run succeeds");
    ok(host_bytes(buf + 100, RUN - 100, 5 * RUN + 100), "scripted: a host run reads the file child at its host offset");
    ok(all_bytes(buf + RUN, RUN, 0), "scripted: a zero run reads as zeros");
    ok(all_bytes(buf + 2 * RUN, RUN, 0xbb), "scripted: an unallocated run reads the backing node");
    ok(all_bytes(buf + 3 * RUN, RUN, 0xdd) && s->decoded == RUN, "scripted: a compressed run goes to the decoder, once");
    ok(host_bytes(buf + 4 * RUN, RUN, RUN), "scripted: the next host run reads from its own host offset");
    ok(all_bytes(buf + 5 * RUN, RUN - 100, 0), "scripted: chain zeros (ZERO, not allocated) read as zeros");
    bdrv_close(bs);

    bs = fake_node(runs, 6, false);
    s = bs->opaque;
    memset(buf, 0x77, sizeof(buf));
    is_int(bdrv_pread(bs, 2 * RUN, RUN, buf), 0, "scripted: without a backing node an unallocated run reads");
    ok(all_bytes(buf, RUN, 0), "scripted: ... as zeros");
    s->decoder = false;
    is_int(bdrv_pread(bs, 3 * RUN, RUN, buf), -EIO, "scripted: a decode run without a decoder fails with EIO");
    s->decoder = true;
    s->map_error = 4;
    is_int(bdrv_pread(bs, 0, 6 * RUN, buf), -EIO, "scripted: the map's error fails the read");
    s->map_error = -1;
    s->empty_answer = true;
    is_int(bdrv_pread(bs, 0, RUN, buf), -EIO, "scripted: a map answering for no bytes fails, never loops");
    bdrv_close(bs);
}

/* Read ops of bs's file child while reading [offset, offset+bytes) of bs into buf (-1: the read failed). */
static int file_reads(BlockNode *bs, int64_t offset, int64_t bytes, uint8_t *buf)
{
    BlockStats a, b;
    bdrv_stats_snapshot(bs->file, &a);
    int r = bdrv_pread(bs, offset, bytes, buf);
    bdrv_stats_snapshot(bs->file, &b);
    return r < 0 ? -1 : (int)(b.rd_ops - a.rd_ops);
}

/* Host runs are batched: runs that follow each other in the file and in the buffer are one read. */
static void test_batched(void)
{
    const int H = BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID, Z = BDRV_BLOCK_ZERO;
    const Run runs[6] = { { H, RUN }, { H, 2 * RUN }, { H, 3 * RUN }, { H, 4 * RUN }, { H, 0 }, { Z, 0 } };
    BlockNode *bs = fake_node(runs, 6, false);
    static uint8_t buf[40 * RUN];
    is_int(file_reads(bs, 10, 4 * RUN - 20, buf), 1, "batched: four host-contiguous runs are one read of the file");
    ok(host_bytes(buf, 4 * RUN - 20, RUN + 10), "batched: ... of the right bytes");
    is_int(file_reads(bs, 0, 6 * RUN, buf), 2, "batched: a run elsewhere in the file is a second extent");
    ok(host_bytes(buf, 4 * RUN, RUN) && host_bytes(buf + 4 * RUN, RUN, 0) && all_bytes(buf + 5 * RUN, RUN, 0),
       "batched: ... and every run reads its own bytes");
    bdrv_close(bs);

    /* 40 runs alternating between two places in the file: more extents than one batch holds */
    static Run many[40];
    for (int i = 0; i < 40; i++)
        many[i] = (Run){ H, (i % 2) * 4 * RUN };
    bs = fake_node(many, 40, false);
    memset(buf, 0, sizeof(buf));
    is_int(file_reads(bs, 0, 40 * RUN, buf), 40, "batched: 40 scattered runs are 40 extents, over two batches");
    bool same = true;
    for (int i = 0; i < 40; i++)
        same = same && host_bytes(buf + i * RUN, RUN, (i % 2) * 4 * RUN);
    ok(same, "batched: ... each read from its own host offset");
    bdrv_close(bs);
}

/* The driver names the node backing runs read from (a snapshot view's parent, none for a vm state). */
static void test_backing_override(void)
{
    const Run runs[2] = { { 0, 0 }, { BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID, 0 } };
    BlockNode *bs = fake_node(runs, 2, true);
    FakeState *s = bs->opaque;
    static uint8_t other[2 * RUN], buf[2 * RUN];
    memset(other, 0xcc, sizeof(other));
    s->own_backing = true;
    s->backing = NULL;
    memset(buf, 0x77, sizeof(buf));
    is_int(bdrv_pread(bs, 0, 2 * RUN, buf), 0, "backing slot: a read with no backing node named succeeds");
    ok(all_bytes(buf, RUN, 0) && host_bytes(buf + RUN, RUN, 0),
       "backing slot: ... its unallocated run reads as zeros, not as bs->backing");
    s->backing = bdrv_open_memory(other, sizeof(other), true);
    is_int(bdrv_pread(bs, 0, RUN, buf), 0, "backing slot: a read through the named node succeeds");
    ok(all_bytes(buf, RUN, 0xcc), "backing slot: ... and reads that node's bytes");
    bdrv_close(s->backing);
    bdrv_close(bs);
}

/* ---------------------------------------------------------------- real images */

/* bdrv_pread of the whole image equals want.raw (qemu-img convert's), and every 64 KiB piece that
 * bdrv_map_extents hands out reads, extent by extent, as bdrv_pread's bytes. *mapped counts them. */
static bool reads_agree(const char *name, const char *want_raw, int *mapped)
{
    BlockNode *bs = scratch_open(name, true);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, want_raw);
    int fd = open(path, O_RDONLY);
    int64_t len = bs ? bdrv_getlength(bs) : -1;
    bool same = bs && fd >= 0 && len > 0;
    uint8_t *got = malloc(65536), *want = malloc(65536), *spliced = malloc(65536);
    *mapped = 0;
    for (int64_t off = 0; same && off < len; off += 65536) {
        int64_t n = MIN(65536, len - off);
        same = bdrv_pread(bs, off, n, got) == 0 && pread(fd, want, (size_t)n, off) == n && !memcmp(got, want, (size_t)n);
        BlockMapExtent x[64];
        int k = same ? bdrv_map_extents(bs, off, n, x, 64) : 0;
        int64_t at = 0;
        for (int i = 0; i < k && same; at += x[i].bytes, i++)
            same = x[i].fd < 0 ? all_bytes(got + at, (size_t)x[i].bytes, 0)
                               : pread(x[i].fd, spliced, (size_t)x[i].bytes, x[i].host_offset) == x[i].bytes &&
                                     !memcmp(spliced, got + at, (size_t)x[i].bytes);
        if (k > 0) {
            same = same && at == n;
            (*mapped)++;
        }
    }
    free(got);
    free(want);
    free(spliced);
    if (fd >= 0)
        close(fd);
    bdrv_close(bs);
    return same;
}

#define PATTERN "-c 'write -P 0x5a 0 1M' -c 'write -z 1M 64k' -c 'write -P 0x6b 1536k 100k' -c 'write -P 0x7c 3M 1M'"

static void check_image(const char *name, const char *fmt)
{
    int mapped = 0;
    ok(sh("qemu-img convert -f %s -O raw %s %s.want", fmt, name, name) == 0, "%s: qemu-img converts it", name);
    char want[256];
    snprintf(want, sizeof(want), "%s.want", name);
    ok(reads_agree(name, want, &mapped), "%s: buffered reads equal qemu-img's, spliced pieces equal buffered", name);
    ok(mapped > 0, "%s: %d pieces were handed out for splicing", name, mapped);
}

static void test_images(void)
{
    ok(sh("qemu-img create -q -f vdi v.vdi 5M && qemu-io -f vdi " PATTERN " v.vdi") == 0, "made a vdi image");
    check_image("v.vdi", "vdi");
    ok(sh("qemu-img create -q -f qed qb.qed 5M && qemu-io -f qed -c 'write -P 0x11 0 5M' qb.qed && "
          "qemu-img create -q -f qed -b qb.qed -F qed q.qed && qemu-io -f qed " PATTERN " q.qed") == 0,
       "made a qed image over a backing file");
    check_image("q.qed", "qed");
    ok(sh("qemu-img create -q -f vpc p.vhd 5M && qemu-io -f vpc " PATTERN " p.vhd") == 0, "made a dynamic vpc");
    check_image("p.vhd", "vpc");
    ok(sh("qemu-img create -q -f vmdk m.vmdk 5M && qemu-io -f vmdk " PATTERN " m.vmdk && "
          "qemu-img create -q -f vmdk -b m.vmdk -F vmdk md.vmdk && qemu-io -f vmdk -c 'write -P 0x22 2M 64k' md.vmdk") == 0,
       "made a sparse vmdk and a delta over it");
    check_image("m.vmdk", "vmdk");
    check_image("md.vmdk", "vmdk");
    ok(sh("qemu-img create -q -f qcow2 -b qb.qed -F qed c.qcow2 5M && qemu-io -f qcow2 " PATTERN " c.qcow2 && "
          "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k -b qb.qed -F qed x.qcow2 5M && "
          "qemu-io -f qcow2 " PATTERN " -c 'write -P 0x3d 2052k 4k' x.qcow2") == 0,
       "made qcow2 images over a backing file, one with subclusters");
    check_image("c.qcow2", "qcow2");
    check_image("x.qcow2", "qcow2");
    int mapped;
    ok(sh("qemu-img convert -c -f qcow2 -O qcow2 -o cluster_size=64k c.qcow2 z.qcow2 && "
          "qemu-img convert -f qcow2 -O raw z.qcow2 z.qcow2.want") == 0, "made a compressed qcow2");
    ok(reads_agree("z.qcow2", "z.qcow2.want", &mapped), "z.qcow2: compressed clusters decode to qemu-img's bytes");
    ok(mapped > 0, "z.qcow2: pieces without a compressed cluster are handed out for splicing (%d)", mapped);
    ok(sh("qemu-img convert -f vmdk -O vmdk -o subformat=streamOptimized m.vmdk s.vmdk && "
          "qemu-img convert -f vmdk -O raw s.vmdk s.vmdk.want") == 0, "made a stream-optimized vmdk");
    ok(reads_agree("s.vmdk", "s.vmdk.want", &mapped), "s.vmdk: compressed grains decode to qemu-img's bytes");
    /* 80 pieces of 64 KiB, 34 of them hold written (compressed) grains */
    is_int(mapped, 46, "s.vmdk: only the pieces without a compressed grain are handed out for splicing");
}

/* A write map over RUN-byte runs: even runs are in place at the same offset of the file, odd ones
 * are allocated (recorded, not written). Each step records whether the lock was held as it must be. */
typedef struct WriteFake {
    pthread_rwlock_t lock;
    int placed, allocated, flushed, wrong_lock, place_error;
    bool empty_answer;
} WriteFake;

static WriteFake wfake;

static int wfake_place(BlockNode *bs, uint64_t offset, uint64_t bytes, uint64_t *n, uint64_t *host)
{
    (void)bs;
    if (pthread_rwlock_trywrlock(&wfake.lock) == 0) { /* must be held shared */
        pthread_rwlock_unlock(&wfake.lock);
        wfake.wrong_lock++;
    }
    wfake.placed++;
    if (wfake.place_error)
        return wfake.place_error;
    *n = wfake.empty_answer ? 0 : MIN(bytes, RUN - offset % RUN);
    *host = offset;
    return (offset / RUN) % 2 == 0;
}

static int wfake_allocate(BlockNode *bs, uint64_t offset, uint64_t bytes, const void *buf, uint64_t *n)
{
    (void)bs;
    (void)offset;
    (void)bytes;
    (void)buf;
    if (pthread_rwlock_tryrdlock(&wfake.lock) == 0) { /* must be held exclusive */
        pthread_rwlock_unlock(&wfake.lock);
        wfake.wrong_lock++;
    }
    wfake.allocated += (int)*n;
    return 0;
}

static int wfake_flush(BlockNode *bs)
{
    (void)bs;
    wfake.flushed++;
    return 0;
}

static void test_write_mapped(void)
{
    static uint8_t file[4 * RUN], data[4 * RUN];
    memset(data, 0x5a, sizeof(data));
    const BlockWriteMap m = { .place = wfake_place, .allocate = wfake_allocate, .flush = wfake_flush };
    BlockNode *bs = bdrv_new_node(&fake_driver, "wfake");
    bs->file = bdrv_open_memory(file, sizeof(file), false);
    pthread_rwlock_init(&wfake.lock, NULL);
    is_int(bdrv_write_mapped_locked(bs, 0, RUN, data, 0, &m, NULL, sizeof(file)), -EROFS,
           "write map: no lock (read-only) is EROFS");
    is_int(bdrv_write_mapped_locked(bs, RUN, 3 * RUN + 1, data, 0, &m, &wfake.lock, sizeof(file)), -EINVAL,
           "write map: a range past the size is EINVAL");
    is_int(wfake.placed, 0, "write map: ... before the map is asked");
    is_int(bdrv_write_mapped_locked(bs, 100, 4 * RUN - 200, data, BDRV_REQ_FUA, &m, &wfake.lock, sizeof(file)), 0,
           "write map: a write across in-place and unallocated runs succeeds");
    uint8_t got[4 * RUN];
    ok(bdrv_pread(bs->file, 0, sizeof(got), got) == 0 && all_bytes(got + 100, RUN - 100, 0x5a) &&
           all_bytes(got + RUN, RUN, 0) && all_bytes(got + 2 * RUN, RUN, 0x5a) && all_bytes(got, 100, 0),
       "write map: in-place pieces land at their host offset, allocated ones are left to allocate");
    is_int(wfake.allocated, 2 * RUN - 100, "write map: allocate gets the unallocated runs' bytes");
    is_int(wfake.placed, 4, "write map: the map is asked once a run");
    is_int(wfake.wrong_lock, 0, "write map: place runs under the shared lock, allocate under the exclusive one");
    is_int(wfake.flushed, 1, "write map: FUA calls the map's flush once");
    wfake.place_error = -ENOSPC;
    is_int(bdrv_write_mapped_locked(bs, 0, RUN, data, 0, &m, &wfake.lock, sizeof(file)), -ENOSPC,
           "write map: the map's error fails the write");
    wfake.place_error = 0;
    wfake.empty_answer = true;
    is_int(bdrv_write_mapped_locked(bs, 0, RUN, data, 0, &m, &wfake.lock, sizeof(file)), -EIO,
           "write map: a map answering for no bytes fails, never loops");
    pthread_rwlock_destroy(&wfake.lock);
    bdrv_close(bs);
}

int main(void)
{
    if (!scratch_init("readmap"))
        return 1;
    test_run_kind();
    test_scripted();
    test_batched();
    test_backing_override();
    test_write_mapped();
    test_images();
    scratch_cleanup();
    return done_testing();
}
