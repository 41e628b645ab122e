/* SPDX-License-Identifier: MIT */
/*
 * test-request.c - unit tests of the root node's request-path features (lib/request.c): detect-zeroes
 * with and without unmap, the discard policy, throttling (lower bounds only: a token bucket can never be
 * faster than its rate), --on-read-error=zero with the error list, and the option checks at open.
 */
#include "block.h"
#include "../../lib/request.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void path_in_tmp(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", tmpdir, name);
}

static void make_data_file(const char *path, size_t size)
{
    uint8_t *buf = malloc(size);
    for (size_t i = 0; i < size; i++)
        buf[i] = (uint8_t)(i % 251 + 1);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (write(fd, buf, size) != (ssize_t)size)
        abort();
    fsync(fd);
    close(fd);
    free(buf);
}

static int64_t allocated_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_blocks * 512 : -1;
}

static BlockNode *open_rw(const char *path, BlockOpenOpts *o)
{
    Error err = { 0 };
    o->read_only = false;
    o->format = "raw";
    BlockNode *bs = bdrv_open(path, o, &err);
    if (!bs)
        printf("# open %s: %s\n", path, err.msg);
    return bs;
}

static void test_detect_zeroes(void)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "dz.img");
    make_data_file(p, 4 * MiB);
    int64_t before = allocated_of(p);
    uint8_t *zeros = calloc(1, 2 * MiB), *buf = malloc(2 * MiB);

    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.detect_zeroes = DETECT_ZEROES_UNMAP;
    o.discard = DISCARD_UNMAP;
    BlockNode *bs = open_rw(p, &o);
    ok(bs != NULL, "open with detect-zeroes=unmap, discard=unmap");
    if (!bs)
        return;
    ok(bdrv_pwrite(bs, 1 * MiB, 2 * MiB, zeros, 0) == 0, "write 2 MiB of zeros");
    BlockStats st;
    bdrv_stats_snapshot(bs, &st);
    is_int(st.detected_zero_ops, 1, "counted as a detected zero write");
    is_int(st.wr_ops, 1, "and as one write");
    is_int(st.wr_bytes, 2 * MiB, "of 2 MiB");
    ok(bdrv_pread(bs, 1 * MiB, 2 * MiB, buf) == 0 && buffer_is_zero(buf, 2 * MiB), "reads back as zeros");
    bdrv_close(bs);
    ok(allocated_of(p) <= before - 2 * MiB, "unmap freed the space (%lld -> %lld)", (long long)before,
       (long long)allocated_of(p));

    make_data_file(p, 4 * MiB);
    o.discard = DISCARD_IGNORE;
    bs = open_rw(p, &o);
    ok(bs && bdrv_pwrite(bs, 1 * MiB, 2 * MiB, zeros, 0) == 0, "detect-zeroes=unmap with discard=ignore");
    ok(bs && bdrv_pread(bs, 1 * MiB, 2 * MiB, buf) == 0 && buffer_is_zero(buf, 2 * MiB), "zeros");
    bdrv_close(bs);
    ok(allocated_of(p) >= 4 * MiB, "discard=ignore: no space freed");

    make_data_file(p, 4 * MiB);
    o.detect_zeroes = DETECT_ZEROES_OFF;
    o.discard = DISCARD_UNMAP;
    bs = open_rw(p, &o);
    ok(bs && bdrv_pwrite(bs, 1 * MiB, 2 * MiB, zeros, 0) == 0, "detect-zeroes=off");
    if (bs)
        bdrv_stats_snapshot(bs, &st);
    is_int(st.detected_zero_ops, 0, "no detected zero write counted");
    ok(bs && bdrv_discard(bs, 0, 1 * MiB) == 0, "discard with discard=unmap");
    bdrv_close(bs);
    ok(allocated_of(p) <= 3 * MiB + 64 * KiB, "discard=unmap punched the first MiB");

    make_data_file(p, 4 * MiB);
    o.discard = DISCARD_IGNORE;
    bs = open_rw(p, &o);
    ok(bs && bdrv_discard(bs, 0, 1 * MiB) == 0, "discard with discard=ignore succeeds");
    ok(bs && bdrv_pwrite_zeroes(bs, 1 * MiB, 1 * MiB, BDRV_REQ_MAY_UNMAP) == 0 &&
       bdrv_pread(bs, 0, 2 * MiB, buf) == 0 && !buffer_is_zero(buf, 1 * MiB) &&
       buffer_is_zero(buf + MiB, MiB), "... but is only a hint; zero writes still zero");
    bdrv_close(bs);
    ok(allocated_of(p) >= 4 * MiB, "discard=ignore: nothing freed");
    free(zeros);
    free(buf);
}

static void test_throttle(void)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "thr.img");
    make_data_file(p, 4 * MiB);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.iops_rd_limit = 100;
    BlockNode *bs = open_rw(p, &o);
    ok(bs != NULL, "open with --iops-limit-read 100");
    if (!bs)
        return;
    uint8_t buf[4096];
    uint64_t t0 = now_ns();
    int fails = 0;
    for (int i = 0; i < 50; i++)
        fails += bdrv_pread(bs, i * 4096, 4096, buf) < 0;
    double secs = (double)(now_ns() - t0) / 1e9;
    is_int(fails, 0, "50 reads succeed");
    ok(secs >= 0.45, "50 reads at 100 IOPS take at least 0.45 s (took %.2f s)", secs);
    t0 = now_ns();
    for (int i = 0; i < 50; i++)
        fails += bdrv_pwrite(bs, i * 4096, 4096, buf, 0) < 0;
    ok((double)(now_ns() - t0) / 1e9 < 30, "writes are not limited by a read limit");
    bdrv_close(bs);

    block_open_opts_init(&o);
    o.bps_limit = 4 * MiB;
    bs = open_rw(p, &o);
    uint8_t *big = malloc(MiB);
    t0 = now_ns();
    for (int i = 0; i < 4 && bs; i++)
        fails += bdrv_pread(bs, i * MiB, MiB, big) < 0;
    secs = (double)(now_ns() - t0) / 1e9;
    ok(fails == 0 && secs >= 0.9, "4 MiB at --bps-limit 4M take at least 0.9 s (took %.2f s)", secs);
    free(big);
    bdrv_close(bs);
    block_open_opts_init(&o);
    o.bps_limit = -1;
    Error err = { 0 };
    o.read_only = true;
    ok(bdrv_open(p, &o, &err) == NULL && strstr(err.msg, "negative"), "negative limit refused: %s", err.msg);
}

static void test_read_errors(void)
{
    char p[512], rules[512];
    path_in_tmp(p, sizeof(p), "err.img");
    path_in_tmp(rules, sizeof(rules), "err.rules");
    make_data_file(p, 256 * KiB);
    FILE *f = fopen(rules, "w");
    fputs("event=read errno=5 offset=10000 length=100 always\n", f);
    fclose(f);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.format = "raw";
    char rules_opt[600];
    snprintf(rules_opt, sizeof rules_opt, "blkdebug.rules=%s", rules);
    bdrv_opts_add(&o, rules_opt);
    Error err = { 0 };
    BlockNode *bs = bdrv_open(p, &o, &err);
    uint8_t *buf = malloc(256 * KiB);
    ok(bs != NULL, "open with a failing range: %s", err.msg);
    is_int(bs ? bdrv_pread(bs, 0, 64 * KiB, buf) : 0, -EIO, "default: the read fails with EIO");
    ReadErrorRecord list[4];
    is_int(bs ? bdrv_read_errors_from(bs, 0, list, 4) : -1, 0, "default: no error list");
    bdrv_close(bs);

    o.on_read_error = READ_ERROR_ZERO;
    memset(&err, 0, sizeof(err));
    bs = bdrv_open(p, &o, &err);
    ok(bs != NULL, "open with --on-read-error=zero: %s", err.msg);
    if (!bs)
        return;
    is_int(bdrv_pread(bs, 0, 64 * KiB, buf), 0, "the read succeeds");
    ok(buffer_is_zero(buf + 8192, 4096) && buf[8191] == (uint8_t)(8191 % 251 + 1) && buf[12288] ==
       (uint8_t)(12288 % 251 + 1), "only the 4 KiB piece holding the bad range is zero");
    is_int(bdrv_pread(bs, 8000, 5000, buf), 0, "a second read of the range");
    int n = bdrv_read_errors_from(bs, 0, list, 4);
    is_int(n, 1, "one error recorded, not duplicated");
    if (n == 1) {
        ok(list[0].offset == 8192 && list[0].length == 4096 && list[0].layer == 0 &&
           strstr(list[0].layer_name, "err.img") && strstr(list[0].reason, "Input/output error"),
           "record: offset 8192, 4096 bytes, layer 0, reason");
    }
    is_int(bdrv_read_errors_from(bs, 8193, list, 4), 0, "no record starts after it");
    bdrv_close(bs);
    free(buf);
}

/* Walks the whole list in pieces as MNT/errors does; returns the number of ranges and checks order. */
static size_t errlist_walk(ErrList *l, int64_t *bytes, bool *sorted)
{
    ErrRange r[64];
    size_t total = 0, n;
    int64_t from = 0, end = -1;
    *bytes = 0;
    *sorted = true;
    while ((n = errlist_from(l, from, r, 64)) > 0) {
        for (size_t i = 0; i < n; i++) {
            *sorted &= r[i].offset > end;
            end = r[i].offset + r[i].length;
            *bytes += r[i].length;
        }
        total += n;
        from = r[n - 1].offset + 1;
    }
    return total;
}

static void test_error_list(void)
{
    ErrList l = { 0 };
    /* every other 4 KiB piece of 2.4 GiB, recorded from the end backwards: 300000 ranges, none lost */
    const int n = 300000;
    for (int i = n - 1; i >= 0; i--)
        errlist_add(&l, (int64_t)i * 8192, 4096, 0, EIO);
    int64_t bytes;
    bool sorted;
    is_int((int)errlist_walk(&l, &bytes, &sorted), n, "300000 ranges recorded backwards: all listed");
    ok(sorted && bytes == (int64_t)n * 4096, "in disk order, 4096 bytes each");
    is_int(errlist_add(&l, 8192 * 1000, 4096, 0, EIO), 0, "a range listed already is not added again");
    is_int(errlist_add(&l, 8192 * 1000 + 4096, 4096, 0, EIO), 1, "the gap after it is");
    is_int(errlist_add(&l, 8192 * 1000 + 4096, 4096, 0, EIO), 0, "once");
    ErrRange r[2];
    ok(errlist_from(&l, 8192 * 1000, r, 2) == 2 && r[0].length == 3 * 4096 && r[1].offset == 8192 * 1002,
       "and joins both neighbours into one range");
    errlist_free(&l);

    /* adjacent pieces in a scrambled order merge into one range; another layer or errno does not */
    for (int i = 0; i < 5000; i++)
        errlist_add(&l, (int64_t)((i * 7919) % 5000) * 4096, 4096, 1, EIO);
    errlist_add(&l, 5000 * 4096, 4096, 1, EILSEQ);
    ErrRange one[4];
    size_t got = errlist_from(&l, 0, one, 4);
    ok(got == 2 && one[0].offset == 0 && one[0].length == 5000 * 4096 && one[0].layer == 1 &&
       one[1].err == EILSEQ, "5000 adjacent pieces in any order: one range, then the other errno's");
    errlist_free(&l);

    /* the budget: further ranges are counted, not kept */
    for (int64_t i = 0; i < ERRLIST_MAX_RANGES + 10; i++)
        errlist_add(&l, i * 8192, 4096, 0, EIO);
    is_int((int)errlist_walk(&l, &bytes, &sorted), ERRLIST_MAX_RANGES, "the list stops at its budget");
    ok(l.unlisted == 10 && l.unlisted_bytes == 40960, "the 10 further ranges are counted: %llu, %llu bytes",
       (unsigned long long)l.unlisted, (unsigned long long)l.unlisted_bytes);
    ok(l.cap * sizeof(ErrRange) <= 24 * MiB, "memory within 24 MiB: %zu bytes", l.cap * sizeof(ErrRange));
    errlist_free(&l);
}

static void test_cor_needs_writable(void)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "cor.img");
    make_data_file(p, 64 * KiB);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.copy_on_read = true;
    Error err = { 0 };
    ok(bdrv_open(p, &o, &err) == NULL && strstr(err.msg, "--copy-on-read needs a writable"),
       "copy-on-read on a read-only image is refused: %s", err.msg);
    o.read_only = false;
    BlockNode *bs = bdrv_open(p, &o, &err);
    uint8_t buf[4096];
    ok(bs && bdrv_pread(bs, 0, 4096, buf) == 0, "copy-on-read without a backing file reads normally");
    BlockStats st;
    if (bs)
        bdrv_stats_snapshot(bs, &st);
    is_int(bs ? st.cor_bytes : 1, 0, "nothing copied");
    bdrv_close(bs);
}

int main(void)
{
    if (!scratch_init("req"))
        return 1;
    test_detect_zeroes();
    test_throttle();
    test_read_errors();
    test_error_list();
    test_cor_needs_writable();
    scratch_cleanup();
    return done_testing();
}
