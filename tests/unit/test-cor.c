/* SPDX-License-Identifier: MIT */
/*
 * test-cor.c - copy-on-read through the core on a qcow2 overlay made by qemu-img: a full read pass copies
 * exactly the base's data clusters (holes and zero clusters stay unallocated), the overlay alone then
 * reads the same bytes, qemu-img check is clean, and concurrent guest writes during copy-on-read passes
 * are never overwritten by a copy; detect-zeroes on qcow2 gives zero clusters, not 64 MiB of data.
 */
#include "block.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DISK (8 * MiB)

static int make_chain(void)
{
    return sh("rm -f base.qcow2 top.qcow2 && qemu-img create -q -f qcow2 base.qcow2 8M && "
              "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 3M 192k' -c 'write -z 5M 64k' "
              "base.qcow2 && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2");
}

static BlockNode *open_top(bool cor, bool no_backing)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = !cor;
    o.copy_on_read = cor;
    o.no_backing = no_backing;
    Error err = { 0 };
    BlockNode *bs = bdrv_open(tpath("top.qcow2"), &o, &err);
    if (!bs)
        printf("# %s\n", err.msg);
    return bs;
}

static void test_cor_pass(void)
{
    ok(make_chain() == 0 && sh("qemu-img convert -O raw top.qcow2 oracle.raw") == 0, "chain and oracle");
    size_t len = 0;
    uint8_t *want = slurp(tpath("oracle.raw"), &len);
    BlockNode *bs = open_top(true, false);
    ok(bs != NULL && len == DISK, "open the overlay with copy-on-read");
    if (!bs || !want)
        return;
    uint8_t *got = malloc(DISK);
    int fails = 0;
    for (int64_t off = 0; off < DISK; off += 100000)
        fails += bdrv_pread(bs, off, MIN(100000, DISK - off), got + off) < 0;
    is_int(fails, 0, "a full pass in odd-sized reads succeeds");
    ok(memcmp(got, want, DISK) == 0, "it reads the chain's content");
    BlockStats st;
    bdrv_stats_snapshot(bs, &st);
    is_int(st.cor_bytes, 1 * MiB + 192 * KiB, "exactly the base's data clusters were copied");
    bdrv_close(bs);

    bs = open_top(false, true);
    memset(got, 0xEE, DISK);
    ok(bs && bdrv_pread(bs, 0, DISK, got) == 0 && memcmp(got, want, DISK) == 0,
       "the overlay alone (--no-backing) reads the same bytes");
    BlockStatus s;
    ok(bs && bdrv_block_status(bs, 6 * MiB, MiB, &s) == 0 && !(s.flags & BDRV_BLOCK_ALLOCATED),
       "a hole in the base stays unallocated in the overlay");
    ok(bs && bdrv_block_status(bs, 5 * MiB, 64 * KiB, &s) == 0 && !(s.flags & BDRV_BLOCK_DATA),
       "a zero cluster in the base is not copied as data");
    ok(bs && bdrv_block_status(bs, 3 * MiB, 64 * KiB, &s) == 0 && (s.flags & BDRV_BLOCK_DATA) &&
       (s.flags & BDRV_BLOCK_ALLOCATED), "a data cluster of the base is data in the overlay");
    bdrv_close(bs);
    is_int(sh("qemu-img check -q top.qcow2"), 0, "qemu-img check is clean");
    free(got);
    free(want);
}

typedef struct Worker {
    BlockNode *bs;
    int id;
    int failures;
} Worker;

#define WRITERS 2
#define READERS 2
#define BLOCK 4096
/* Writer w owns the 4 KiB blocks b with b % (2 * WRITERS) == w, inside the base's data (first MiB);
 * blocks with b % (2 * WRITERS) >= WRITERS are never written and must keep the base's 0x11. */
static void *writer(void *arg)
{
    Worker *w = arg;
    uint8_t buf[BLOCK];
    for (int round = 1; round <= 4; round++) {
        memset(buf, 0x40 + w->id * 8 + round, sizeof(buf));
        for (int64_t b = w->id; b * BLOCK < MiB; b += 2 * WRITERS)
            w->failures += bdrv_pwrite(w->bs, b * BLOCK, BLOCK, buf, 0) < 0;
    }
    return NULL;
}

static void *reader(void *arg)
{
    Worker *w = arg;
    uint8_t *buf = malloc(96 * KiB);
    for (int pass = 0; pass < 3; pass++)
        for (int64_t off = w->id * 5000; off < 2 * MiB; off += 96 * KiB)
            w->failures += bdrv_pread(w->bs, off, MIN(96 * KiB, 2 * MiB - off), buf) < 0;
    free(buf);
    return NULL;
}

static void test_cor_concurrent(void)
{
    ok(make_chain() == 0, "fresh chain");
    BlockNode *bs = open_top(true, false);
    if (!bs)
        return;
    pthread_t th[WRITERS + READERS];
    Worker w[WRITERS + READERS];
    for (int i = 0; i < WRITERS + READERS; i++) {
        w[i] = (Worker){ bs, i < WRITERS ? i : i - WRITERS, 0 };
        pthread_create(&th[i], NULL, i < WRITERS ? writer : reader, &w[i]);
    }
    int failures = 0;
    for (int i = 0; i < WRITERS + READERS; i++) {
        pthread_join(th[i], NULL);
        failures += w[i].failures;
    }
    is_int(failures, 0, "concurrent copy-on-read passes and guest writes succeed");
    bdrv_close(bs);
    bs = open_top(false, false);
    uint8_t *buf = malloc(MiB);
    int lost = 0, wrong = 0;
    if (bs && bdrv_pread(bs, 0, MiB, buf) == 0) {
        for (int64_t b = 0; b * BLOCK < MiB; b++) {
            int slot = (int)(b % (2 * WRITERS));
            uint8_t want = slot < WRITERS ? (uint8_t)(0x40 + slot * 8 + 4) : 0x11;
            for (int k = 0; k < BLOCK; k++) {
                if (buf[b * BLOCK + k] != want) {
                    if (slot < WRITERS)
                        lost++;
                    else
                        wrong++;
                    break;
                }
            }
        }
    } else {
        lost = -1;
    }
    is_int(lost, 0, "no guest write was overwritten by a copy");
    is_int(wrong, 0, "untouched blocks keep the base's data");
    bdrv_close(bs);
    free(buf);
    is_int(sh("qemu-img check -q top.qcow2"), 0, "qemu-img check is clean");
}

static void test_detect_zeroes_qcow2(void)
{
    ok(sh("rm -f z.qcow2 && qemu-img create -q -f qcow2 z.qcow2 64M") == 0, "empty 64M qcow2");
    struct stat before, after;
    stat(tpath("z.qcow2"), &before);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    o.detect_zeroes = DETECT_ZEROES_UNMAP;
    o.discard = DISCARD_UNMAP;
    Error err = { 0 };
    BlockNode *bs = bdrv_open(tpath("z.qcow2"), &o, &err);
    ok(bs != NULL, "open with detect-zeroes=unmap: %s", err.msg);
    if (!bs)
        return;
    uint8_t *zeros = calloc(1, MiB);
    int fails = 0;
    for (int64_t off = 0; off < 64 * MiB; off += MiB)
        fails += bdrv_pwrite(bs, off, MiB, zeros, 0) < 0;
    is_int(fails, 0, "64 MiB of zeros written");
    BlockStats st;
    bdrv_stats_snapshot(bs, &st);
    is_int(st.detected_zero_ops, 64, "each detected");
    BlockStatus bst;
    ok(bdrv_block_status(bs, 0, 64 * MiB, &bst) == 0 && (bst.flags & BDRV_BLOCK_ZERO) &&
       !(bst.flags & BDRV_BLOCK_DATA), "the range reads as zero clusters, not data");
    bdrv_close(bs);
    stat(tpath("z.qcow2"), &after);
    ok(after.st_size <= before.st_size + 512 * KiB, "the host file grew by metadata only (%lld -> %lld)",
       (long long)before.st_size, (long long)after.st_size);
    is_int(sh("qemu-img check -q z.qcow2"), 0, "qemu-img check is clean");
    free(zeros);
}

int main(void)
{
    if (!scratch_init("cor"))
        return 1;
    test_cor_pass();
    test_cor_concurrent();
    test_detect_zeroes_qcow2();
    scratch_cleanup();
    return done_testing();
}
