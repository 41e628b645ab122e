/* SPDX-License-Identifier: MIT */
/*
 * test-block.c - unit tests of the block layer core and of the file, raw, memory and blkdebug drivers:
 * utilities, probing and forced formats, the seed's rule, open errors, read-modify-write under O_DIRECT
 * (also with libaio and with concurrent writers), zeros beyond the end, raw windows, the sector-0 probe
 * guard, block status, the memory driver, blkdebug rules and events, statistics and info.
 */
#include "block.h"
#include "scratch.h"
#include "../../lib/block_int.h" /* bdrv_pwrite_extents: only the tests use it */
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static void path_in_tmp(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", tmpdir, name);
}

/* Writes a file of size bytes filled with a position-dependent pattern; returns its content. */
static uint8_t *make_pattern_file(const char *path, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    for (size_t i = 0; i < size; i++)
        buf[i] = (uint8_t)(i * 7 + i / 4096);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (size && write(fd, buf, size) != (ssize_t)size)
        abort();
    close(fd);
    return buf;
}

static int64_t file_size_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static uint64_t test_run_end(const void *arr, size_t i)
{
    const uint64_t (*r)[2] = arr;
    return r[i][0] + r[i][1];
}

static void test_util(void)
{
    is_int(parse_size("4k"), 4096, "parse_size 4k");
    is_int(parse_size("1M"), MiB, "parse_size 1M");
    is_int(parse_size("2G"), 2 * GiB, "parse_size 2G");
    is_int(parse_size("123"), 123, "parse_size 123");
    is_int(parse_size("12x"), -1, "parse_size rejects 12x");
    is_int(parse_size(""), -1, "parse_size rejects empty");
    char b[64];
    ok(strcmp(format_size(GiB, b, sizeof(b)), "1 GiB") == 0, "format_size 1 GiB");
    ok(strcmp(format_size(64 * KiB, b, sizeof(b)), "64 KiB") == 0, "format_size 64 KiB");
    ok(strcmp(format_size(1000001, b, sizeof(b)), "1000001 bytes") == 0, "format_size odd bytes");
    uint8_t z[1000] = { 0 };
    ok(buffer_is_zero(z, sizeof(z)), "buffer_is_zero on zeros");
    z[999] = 1;
    ok(!buffer_is_zero(z, sizeof(z)), "buffer_is_zero sees the last byte");
    ok(!buffer_is_zero(z + 3, sizeof(z) - 3), "buffer_is_zero unaligned start");
    void *a = aligned_alloc_zero(8192);
    ok(a && ((uintptr_t)a % 4096) == 0 && buffer_is_zero(a, 8192), "aligned_alloc_zero");
    free(a);
    /* the shared range and path helpers (issue 17 item 5: one copy each for lib/, drivers/ and fuse/) */
    ok(ranges_overlap(0, 10, 9, 1) && ranges_overlap(9, 1, 0, 10), "ranges_overlap: last byte, both orders");
    ok(!ranges_overlap(0, 10, 10, 5) && !ranges_overlap(10, 5, 0, 10), "ranges_overlap: touching ranges do not");
    ok(ranges_overlap(UINT64_MAX - 8, 4, UINT64_MAX - 6, 4), "ranges_overlap: near the top of the range");
    ok(strcmp(path_base_of("/a/b/c.qcow2"), "c.qcow2") == 0 && strcmp(path_base_of("c.qcow2"), "c.qcow2") == 0,
       "path_base_of: last component, bare name");
    ok(strcmp(path_base_of("/a/b/"), "/a/b/") == 0 && strcmp(path_base_of(""), "") == 0,
       "path_base_of: a trailing slash or an empty name gives all of it");
    char beside[64];
    path_beside("/a/b/c.vmdk", "d-f001.vmdk", beside, sizeof(beside));
    ok(strcmp(beside, "/a/b/d-f001.vmdk") == 0, "path_beside: a relative name in the image's directory");
    path_beside("c.vmdk", "base.qcow2", beside, sizeof(beside));
    ok(strcmp(beside, "./base.qcow2") == 0, "path_beside: beside a bare image name: in .");
    path_beside("/c.qcow2", "base.qcow2", beside, sizeof(beside));
    ok(strcmp(beside, "//base.qcow2") == 0, "path_beside: beside an image in /");
    path_beside("/a/b/c.qcow2", "/x/base.qcow2", beside, sizeof(beside));
    ok(strcmp(beside, "/x/base.qcow2") == 0, "path_beside: an absolute name as it is");
    path_beside("/a/b/c.qcow2", "0123456789012345678901234567890123456789012345678901234567890123456789", beside, 16);
    ok(strcmp(beside, "/a/b/0123456789") == 0, "path_beside: truncated to the buffer, terminated");
    static const uint64_t runs[][2] = { { 0, 4 }, { 10, 2 }, { 12, 8 }, { 40, 1 } }; /* start, length */
    size_t at[] = { 0, 3, 4, 10, 11, 12, 19, 20, 40, 41, 1000 }, want[] = { 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4 };
    bool all = true;
    for (size_t i = 0; i < ARRAY_SIZE(at); i++)
        all &= lower_bound_by_end(runs, ARRAY_SIZE(runs), at[i], test_run_end) == want[i];
    ok(all, "lower_bound_by_end: the first run ending after each key, n past the last");
    ok(lower_bound_by_end(runs, 0, 5, test_run_end) == 0, "lower_bound_by_end: an empty array gives 0");
}

static void test_open_raw_readonly(void)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "odd.img");
    uint8_t *data = make_pattern_file(p, 1000001);
    Error err = { 0 };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    BlockNode *bs = bdrv_open(p, &o, &err);
    ok(bs != NULL, "open odd-sized raw image: %s", err.msg);
    if (!bs)
        return;
    ok(strcmp(bs->drv->name, "raw") == 0 && bs->probed, "probed as raw");
    is_int(bdrv_getlength(bs), 1000001, "exact size, not rounded");
    uint8_t *buf = malloc(1000001 + 5000);
    ok(bdrv_pread(bs, 0, 1000001, buf) == 0 && memcmp(buf, data, 1000001) == 0, "whole image reads back");
    memset(buf, 0xAA, 5000);
    ok(bdrv_pread(bs, 1000001 - 10, 5000, buf) == 0 && memcmp(buf, data + 1000001 - 10, 10) == 0 &&
       buffer_is_zero(buf + 10, 4990), "read across the end gives zeros beyond it");
    is_int(bdrv_pwrite(bs, 0, 4, "abcd", 0), -EROFS, "write to read-only node is EROFS");
    is_int(bdrv_pwrite_zeroes(bs, 0, 4, 0), -EROFS, "write_zeroes to read-only node is EROFS");
    BlockStats st;
    bdrv_stats_snapshot(bs, &st);
    is_int(st.rd_ops, 2, "statistics count reads");
    is_int(st.rd_bytes, 1000001 + 5000, "statistics count read bytes");
    InfoList info = { 0 };
    bdrv_get_info(bs, &info);
    ok(info.n >= 5 && strcmp(info.items[0].key, "file") == 0 && strcmp(info.items[1].key, "format") == 0 &&
       strcmp(info.items[1].str, "raw") == 0 && strcmp(info.items[2].key, "virtual_size") == 0 &&
       info.items[2].num == 1000001, "info: format-neutral keys first");
    info_free(&info);
    bdrv_close(bs);
    free(buf);
    free(data);
}

static void test_open_errors(void)
{
    Error err = { 0 };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    ok(bdrv_open(tmpdir, &o, &err) == NULL && strstr(err.msg, "Is a directory") && err.errnum == EISDIR,
       "a directory is refused: %s", err.msg);
    char p[512];
    path_in_tmp(p, sizeof(p), "missing.img");
    memset(&err, 0, sizeof(err));
    ok(bdrv_open(p, &o, &err) == NULL && strstr(err.msg, "No such file") && strstr(err.msg, "missing.img"),
       "a missing file is named: %s", err.msg);
    path_in_tmp(p, sizeof(p), "small.img");
    free(make_pattern_file(p, 4096));
    memset(&err, 0, sizeof(err));
    o.format = "nosuchformat";
    ok(bdrv_open(p, &o, &err) == NULL && strstr(err.msg, "unknown format 'nosuchformat'"),
       "unknown forced format: %s", err.msg);
    memset(&err, 0, sizeof(err));
    o.format = "file";
    ok(bdrv_open(p, &o, &err) == NULL && strstr(err.msg, "not an image format"),
       "protocol as format refused: %s", err.msg);
    o.format = "raw";
    memset(&err, 0, sizeof(err));
    BlockNode *bs = bdrv_open(p, &o, &err);
    ok(bs && !bs->probed, "forced raw is not marked probed");
    bdrv_close(bs);
    if (geteuid() != 0) {
        chmod(p, 0);
        memset(&err, 0, sizeof(err));
        ok(bdrv_open(p, &o, &err) == NULL && strstr(err.msg, "Permission denied"), "unreadable: %s", err.msg);
        chmod(p, 0644);
    } else {
        ok(access(p, R_OK) == 0, "running as root: unreadable-file case not testable, file readable");
    }
}

static void test_seed_rule(void)
{
    char p[512], b[512];
    path_in_tmp(p, sizeof(p), "disk.raw");
    path_in_tmp(b, sizeof(b), "base.raw");
    free(make_pattern_file(p, 65536));
    free(make_pattern_file(b, 65536));
    Error err = { 0 };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.backing = b;
    ok(bdrv_open(p, &o, &err) == NULL, "raw with --backing fails");
    ok(strstr(err.msg, "disk.raw: format 'raw' does not support backing files") != NULL, "message: %s",
       err.msg);
    is_int(err.errnum, EINVAL, "errnum EINVAL");
    o.format = "raw";
    memset(&err, 0, sizeof(err));
    ok(bdrv_open(p, &o, &err) == NULL && strstr(err.msg, "format 'raw' does not support backing files"),
       "also with a forced raw format");
    CreateOpts c = { .size = 4096, .backing = b };
    char n[512];
    path_in_tmp(n, sizeof(n), "new.raw");
    memset(&err, 0, sizeof(err));
    ok(bdrv_create("raw", n, &c, &err) < 0 && strstr(err.msg, "format 'raw' does not support backing files") &&
       access(n, F_OK) != 0, "create raw with a backing file fails, nothing created");
    c.backing = NULL;
    memset(&err, 0, sizeof(err));
    ok(bdrv_create("raw", n, &c, &err) == 0 && file_size_of(n) == 4096, "create raw 4096 bytes");
    o.backing = NULL;
    o.no_backing = true;
    memset(&err, 0, sizeof(err));
    BlockNode *bs = bdrv_open(p, &o, &err);
    ok(bs != NULL, "--no-backing on raw is harmless");
    bdrv_close(bs);
}

static void test_probe(void)
{
    /* Whatever drivers are in the table: the probed driver is one with the highest score, raw if none. */
    static const uint8_t samples[][8] = { { 0 }, { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 3 }, { 'x', 'y' } };
    for (size_t i = 0; i < ARRAY_SIZE(samples); i++) {
        BlockNode *m = bdrv_open_memory(samples[i], sizeof(samples[i]), true);
        const BlockDriver *got = bdrv_probe(m);
        int best = 0;
        for (const BlockDriver *const *d = bdrv_driver_list(); *d; d++)
            if (!(*d)->is_protocol && !(*d)->is_filter && (*d)->probe)
                best = MAX(best, (*d)->probe(samples[i], sizeof(samples[i]), "<memory>"));
        ok(got && got->probe && got->probe(samples[i], sizeof(samples[i]), "<memory>") == best,
           "probe %zu picks a highest-scoring driver (%s)", i, got ? got->name : "none");
        bdrv_close(m);
    }
    BlockNode *m = bdrv_open_memory("", 0, true);
    const BlockDriver *d = bdrv_probe(m);
    ok(d && strcmp(d->name, "raw") == 0, "an empty image probes as raw");
    bdrv_close(m);
}

static void test_memory(void)
{
    uint8_t img[8192];
    for (size_t i = 0; i < sizeof(img); i++)
        img[i] = (uint8_t)i;
    BlockNode *m = bdrv_open_memory(img, sizeof(img), false);
    Error err = { 0 };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    o.format = "raw";
    BlockNode *bs = bdrv_open_on_node(m, "raw", &o, &err);
    ok(bs != NULL, "raw on a memory node: %s", err.msg);
    if (!bs)
        return;
    uint8_t buf[100];
    ok(bdrv_pread(bs, 100, 100, buf) == 0 && memcmp(buf, img + 100, 100) == 0, "memory read");
    ok(bdrv_pwrite(bs, 8000, 100, img, 0) == 0 && bdrv_pread(bs, 8000, 100, buf) == 0 &&
       memcmp(buf, img, 100) == 0, "memory write");
    is_int(bdrv_pwrite(bs, 8150, 100, img, 0), -ENOSPC, "write beyond a format node's end is ENOSPC");
    ok(bdrv_pread(bs, 8190, 100, buf) == 0 && buf[0] == img[8190] && buffer_is_zero(buf + 2, 98),
       "memory read beyond the end gives zeros");
    BlockNode *m2 = bdrv_open_memory(img, sizeof(img), true);
    o.read_only = true;
    o.backing = "/etc/hostname";
    memset(&err, 0, sizeof(err));
    ok(bdrv_open_on_node(m2, "raw", &o, &err) == NULL && strstr(err.msg, "does not support backing"),
       "seed's rule on a memory node too");
    bdrv_close(bs);
}

/* A raw image opened whole, then the window filter over it. */
static BlockNode *open_window(const char *p, BlockOpenOpts *o, int64_t offset, int64_t size, Error *err)
{
    BlockNode *bs = bdrv_open(p, o, err);
    if (!bs)
        return NULL;
    BlockNode *w = bdrv_open_window(bs, offset, size, err);
    bdrv_close(bs); /* the window holds its own reference */
    return w;
}

static void test_raw_window(void)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "window.img");
    uint8_t *data = make_pattern_file(p, 65536);
    Error err = { 0 };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    BlockNode *bs = open_window(p, &o, 4096, 8192, &err);
    ok(bs != NULL, "open a raw window: %s", err.msg);
    if (!bs)
        return;
    is_int(bdrv_getlength(bs), 8192, "window length");
    uint8_t buf[10000];
    ok(bdrv_pread(bs, 0, 8192, buf) == 0 && memcmp(buf, data + 4096, 8192) == 0, "window reads its bytes");
    ok(bdrv_pread(bs, 8000, 1000, buf) == 0 && memcmp(buf, data + 4096 + 8000, 192) == 0 &&
       buffer_is_zero(buf + 192, 808), "reads past the window end are zeros");
    is_int(bdrv_pwrite(bs, 8100, 100, buf, 0), -ENOSPC, "writes may not leave the window");
    is_int(bdrv_pwrite_zeroes(bs, 8100, 100, 0), -ENOSPC, "nor may write-zeroes");
    is_int(bdrv_discard(bs, 8190, 4096), -ENOSPC, "nor discards");
    memset(buf, 0x55, 100);
    ok(bdrv_pwrite(bs, 8092, 100, buf, 0) == 0, "write at the window end");
    BlockStatus st;
    ok(bdrv_block_status_above(bs, 100, 8000, &st) == 0 && (st.flags & BDRV_BLOCK_OFFSET_VALID) &&
       st.host_offset == 4096 + 100, "block status passes the host offset through (%" PRId64 ")", st.host_offset);
    bdrv_close(bs);
    uint8_t *after = malloc(65536);
    int fd = open(p, O_RDONLY);
    ok(read(fd, after, 65536) == 65536, "read file back");
    close(fd);
    ok(memcmp(after, data, 4096 + 8092) == 0 && memcmp(after + 4096 + 8192, data + 4096 + 8192,
       65536 - 4096 - 8192) == 0 && after[4096 + 8092] == 0x55 && after[4096 + 8191] == 0x55,
       "the file changed only inside the window");
    is_int(file_size_of(p), 65536, "file size unchanged");
    bs = open_window(p, &o, 4096, 8192, &err);
    is_int(bs ? bdrv_truncate(bs, 4096) : 0, -ENOTSUP, "a fixed window cannot be resized");
    bdrv_close(bs);
    bs = bdrv_open(p, &o, &err);
    ok(bs && bdrv_truncate(bs, 100000) == 0 && bdrv_getlength(bs) == 100000 && file_size_of(p) == 100000,
       "raw truncate grows the file to the exact size");
    ok(bs && bdrv_truncate(bs, 65536) == 0 && file_size_of(p) == 65536, "and shrinks it");
    bdrv_close(bs);
    o.read_only = true;
    bs = bdrv_open(p, &o, &err);
    is_int(bs ? bdrv_truncate(bs, 4096) : 0, -EROFS, "truncate of a read-only image is EROFS");
    bdrv_close(bs);
    memset(&err, 0, sizeof(err));
    ok(open_window(p, &o, 60000, 10000, &err) == NULL && strstr(err.msg, "beyond the end"),
       "window beyond the end: %s", err.msg);
    free(after);
    free(data);
}

static void test_probe_guard(void)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "guard.img");
    free(make_pattern_file(p, 65536));
    Error err = { 0 };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    BlockNode *bs = bdrv_open(p, &o, &err);
    ok(bs && bs->probed, "probed raw, writable");
    if (!bs)
        return;
    char plain[512] = "plain data, nothing to probe";
    ok(bdrv_pwrite(bs, 0, sizeof(plain), plain, 0) == 0, "a harmless sector 0 write passes");
    /* A qcow2 header: refused if a qcow2 driver would claim it, else harmless. */
    uint8_t hdr[512] = { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 3 };
    st_be64(hdr + 24, 1 << 20);
    st_be32(hdr + 20, 16);
    int others = 0;
    for (const BlockDriver *const *d = bdrv_driver_list(); *d; d++)
        if (!(*d)->is_protocol && !(*d)->is_filter && (*d)->probe && strcmp((*d)->name, "raw") &&
            (*d)->probe(hdr, sizeof(hdr), p) > 1)
            others++;
    int r = bdrv_pwrite(bs, 0, sizeof(hdr), hdr, 0);
    is_int(r, others ? -EPERM : 0, "sector 0 write that would probe as another format (%d claim it)", others);
    bdrv_close(bs);
    o.format = "raw";
    bs = bdrv_open(p, &o, &err);
    ok(bs && bdrv_pwrite(bs, 0, sizeof(hdr), hdr, 0) == 0, "with a named raw format the same write passes");
    bdrv_close(bs);
}

/* ---------------------------------------------------------------- alignment */

typedef struct Writer {
    BlockNode *bs;
    int id, nthreads;
    int64_t size;
} Writer;

/* Each thread owns the bytes i with i % nthreads == id (in 3-byte runs), so every write is unaligned and
 * shares blocks with the others: a lost update shows if read-modify-write cycles interleave. */
static void *writer_thread(void *arg)
{
    Writer *w = arg;
    uint8_t v[3];
    for (int round = 1; round <= 3; round++) {
        memset(v, (uint8_t)(w->id * 16 + round), sizeof(v));
        for (int64_t off = (int64_t)w->id * 3; off + 3 <= w->size; off += 3 * w->nthreads)
            if (bdrv_pwrite(w->bs, off, 3, v, 0) < 0)
                return (void *)1;
    }
    return NULL;
}

static void test_alignment(enum AioMode aio)
{
    const char *mode = aio == AIO_NATIVE ? "native aio" : "threads";
    char p[512];
    path_in_tmp(p, sizeof(p), "direct.img");
    const size_t size = 1000001;
    uint8_t *shadow = make_pattern_file(p, size);
    Error err = { 0 };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    o.cache = CACHE_NONE;
    o.aio = aio;
    BlockNode *bs = bdrv_open(p, &o, &err);
    if (!bs && err.errnum == EINVAL) {
        ok(strstr(err.msg, "O_DIRECT") != NULL, "%s: O_DIRECT unsupported here, clear message: %s", mode,
           err.msg);
        free(shadow);
        return;
    }
    ok(bs != NULL, "%s: open with O_DIRECT: %s", mode, err.msg);
    if (!bs)
        return;
    ok(bs->file->request_alignment >= 512 && is_pow2(bs->file->request_alignment),
       "%s: alignment discovered (%u)", mode, bs->file->request_alignment);
    uint8_t *buf = malloc(size + 10000);
    static const int64_t offs[] = { 1, 511, 4095, 65537, 999000, 999990 };
    static const int64_t lens[] = { 1, 2, 513, 8191, 1000, 11 };
    int bad = 0;
    for (size_t i = 0; i < ARRAY_SIZE(offs); i++) {
        for (int64_t k = 0; k < lens[i]; k++)
            buf[k] = (uint8_t)(0xC0 + i + k);
        if (bdrv_pwrite(bs, offs[i], lens[i], buf + 0, 0) < 0)
            bad++;
        memcpy(shadow + offs[i], buf, (size_t)lens[i]);
    }
    is_int(bad, 0, "%s: unaligned writes succeed", mode);
    ok(bdrv_pread(bs, 0, (int64_t)size, buf + 1) == 0 && memcmp(buf + 1, shadow, size) == 0,
       "%s: unaligned buffer read returns what was written", mode);
    is_int(file_size_of(p), (int64_t)size, "%s: odd file size preserved by the tail read-modify-write", mode);
    ok(bdrv_pwrite_zeroes(bs, 100, 10000, 0) == 0 && bdrv_pread(bs, 90, 10020, buf) == 0 &&
       memcmp(buf, shadow + 90, 10) == 0 && buffer_is_zero(buf + 10, 10000) &&
       memcmp(buf + 10010, shadow + 10100, 10) == 0, "%s: unaligned write_zeroes", mode);
    memset(shadow + 100, 0, 10000);

    enum { NT = 4 };
    pthread_t th[NT];
    Writer w[NT];
    const int64_t region = 64 * 1024;
    for (int i = 0; i < NT; i++) {
        w[i] = (Writer){ bs, i, NT, region };
        pthread_create(&th[i], NULL, writer_thread, &w[i]);
    }
    int failed = 0;
    for (int i = 0; i < NT; i++) {
        void *rv;
        pthread_join(th[i], &rv);
        failed += rv != NULL;
    }
    is_int(failed, 0, "%s: concurrent unaligned writers succeed", mode);
    ok(bdrv_pread(bs, 0, region, buf) == 0, "%s: read the contended region", mode);
    int lost = 0;
    for (int64_t off = 0; off + 3 <= region; off += 3) {
        int id = (int)((off / 3) % NT);
        for (int k = 0; k < 3; k++)
            lost += buf[off + k] != (uint8_t)(id * 16 + 3);
    }
    is_int(lost, 0, "%s: no update lost by overlapping read-modify-write cycles", mode);
    bdrv_close(bs);
    free(buf);
    free(shadow);
}

static void test_extents(void)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "ext.img");
    uint8_t *data = make_pattern_file(p, 1 << 20);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    o.cache = CACHE_NONE;
    o.aio = AIO_NATIVE;
    Error err = { 0 };
    BlockNode *f = bdrv_open_file(p, &o, false, &err);
    if (!f) {
        ok(strstr(err.msg, "O_DIRECT") != NULL, "extents: O_DIRECT unsupported here: %s", err.msg);
        free(data);
        return;
    }
    uint8_t *a = aligned_alloc_zero(3 * 65536);
    BlockExtent ext[3] = { { 0, 65536, a }, { 512 * 1024, 65536, a + 65536 }, { 65536 * 3, 65536, a + 131072 } };
    ok(bdrv_pread_extents(f, ext, 3) == 0 && memcmp(a, data, 65536) == 0 &&
       memcmp(a + 65536, data + 512 * 1024, 65536) == 0 && memcmp(a + 131072, data + 65536 * 3, 65536) == 0,
       "three extents read in one batch");
    memset(a, 0x11, 3 * 65536);
    ok(bdrv_pwrite_extents(f, ext, 3, 0) == 0, "three extents written in one batch");
    memset(a, 0, 3 * 65536);
    ok(bdrv_pread(f, 512 * 1024, 65536, a) == 0 && a[0] == 0x11 && a[65535] == 0x11, "batched write landed");
    bdrv_close(f);
    free(a);
    free(data);
}

static void test_block_status(void)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "sparse.img");
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    uint8_t blk[65536];
    memset(blk, 0x77, sizeof(blk));
    ok(pwrite(fd, blk, sizeof(blk), 1 << 20) == (ssize_t)sizeof(blk) && ftruncate(fd, 4 << 20) == 0,
       "made a sparse file");
    close(fd);
    Error err = { 0 };
    BlockNode *bs = bdrv_open(p, NULL, &err);
    ok(bs != NULL, "open sparse image: %s", err.msg);
    if (!bs)
        return;
    BlockStatus st;
    ok(bdrv_block_status_above(bs, 0, 4 << 20, &st) == 0 && (st.flags & BDRV_BLOCK_ZERO) &&
       !(st.flags & BDRV_BLOCK_DATA) && st.bytes == (1 << 20), "hole at 0 up to the data");
    ok(bdrv_block_status_above(bs, 1 << 20, 3 << 20, &st) == 0 && (st.flags & BDRV_BLOCK_DATA) &&
       st.bytes >= 65536 && st.bytes < (3 << 20) && st.depth == 0, "data at 1 MiB");
    ok(bdrv_block_status(bs, (1 << 20) + 100, 10, &st) == 0 && (st.flags & BDRV_BLOCK_OFFSET_VALID) &&
       st.host_offset == (1 << 20) + 100, "raw reports the host offset");
    ok(bdrv_block_status_above(bs, 8 << 20, 4096, &st) == 0 && (st.flags & BDRV_BLOCK_ZERO),
       "beyond the end reads as zero");
    ok(bdrv_get_allocated_size(bs) >= 65536 && bdrv_get_allocated_size(bs) < (4 << 20),
       "allocated size counts host blocks");
    is_int(bdrv_chain_length(bs), 1, "chain length 1");
    bdrv_close(bs);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void *other_thread_io(void *arg)
{
    uint8_t b[512];
    return bdrv_pwrite(arg, 8192, sizeof(b), memset(b, 1, sizeof(b)), 0) == 0 ? NULL : (void *)1;
}

static void test_blkdebug(void)
{
    char p[512], rules[512];
    path_in_tmp(p, sizeof(p), "dbg.img");
    path_in_tmp(rules, sizeof(rules), "rules");
    free(make_pattern_file(p, 65536));
    write_file(rules, "# test rules\nevent=read errno=5 nth=2\nevent=l2_update errno=28 once\n");
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    char rules_opt[600];
    snprintf(rules_opt, sizeof rules_opt, "blkdebug.rules=%s", rules);
    bdrv_opts_add(&o, rules_opt);
    o.format = "raw"; /* no probe read through the filter */
    Error err = { 0 };
    BlockNode *bs = bdrv_open(p, &o, &err);
    ok(bs && strcmp(bs->file->drv->name, "blkdebug") == 0, "blkdebug filter under raw: %s", err.msg);
    if (!bs)
        return;
    uint8_t buf[512];
    is_int(bdrv_pread(bs, 0, 512, buf), 0, "first read passes");
    is_int(bdrv_pread(bs, 0, 512, buf), -EIO, "second read fails with errno 5");
    is_int(bdrv_pread(bs, 0, 512, buf), 0, "third read passes (nth fires once)");
    is_int(bdrv_pwrite(bs, 4096, 512, buf, 0), 0, "write without an event passes");
    bdrv_debug_event(bs->file, "l2_update");
    is_int(bdrv_pwrite(bs, 4096, 512, buf, 0), -ENOSPC, "write after announced l2_update fails");
    bdrv_debug_event(bs->file, "l2_update");
    is_int(bdrv_pwrite(bs, 4096, 512, buf, 0), 0, "once: the next one passes");
    bdrv_close(bs);
    write_file(rules, "event=l2_update errno=28 always\n");
    bs = bdrv_open(p, &o, &err);
    bdrv_debug_event(bs->file, "l2_update");
    pthread_t th;
    void *rv = NULL;
    pthread_create(&th, NULL, other_thread_io, bs);
    pthread_join(th, &rv);
    ok(rv == NULL, "another thread's I/O does not take the announced event");
    is_int(bdrv_pwrite(bs, 4096, 512, buf, 0), -ENOSPC, "the announcing thread's next I/O fails");
    is_int(bdrv_getlength(bs), 65536, "length through the filter");
    bdrv_close(bs);
    write_file(rules, "event=read errno=5 bogus\n");
    memset(&err, 0, sizeof(err));
    ok(bdrv_open(p, &o, &err) == NULL && strstr(err.msg, "line 1"), "bad rules named: %s", err.msg);
}

static void test_resolve_backing(void)
{
    char img[512], sub[512], other[512], out[4096], note[512], path[600];
    path_in_tmp(img, sizeof(img), "chain/top.img");
    path_in_tmp(sub, sizeof(sub), "chain");
    path_in_tmp(other, sizeof(other), "elsewhere");
    mkdir(sub, 0755);
    mkdir(other, 0755);
    snprintf(path, sizeof(path), "%s/base.img", sub);
    write_file(path, "base");
    snprintf(path, sizeof(path), "%s/far.img", other);
    write_file(path, "far");
    snprintf(path, sizeof(path), "%s/escape", sub);
    unlink(path);
    ok(symlink("/etc/passwd", path) == 0, "made an escaping symlink");
    BlockOpenOpts o;
    block_open_opts_init(&o);
    Error err = { 0 };
#define RESOLVE(name) (memset(&err, 0, sizeof(err)), \
                       bdrv_resolve_backing(img, name, &o, out, sizeof(out), note, sizeof(note), &err))
    ok(RESOLVE("base.img") == 0 && strstr(out, "/chain/base.img"), "relative name in the image dir");
    is_int(RESOLVE("/etc/passwd"), -EACCES, "absolute name outside refused: %s", err.msg);
    ok(strstr(err.msg, "'/etc/passwd'") && strstr(err.msg, "--backing-dir"), "refusal names name and hint");
    is_int(RESOLVE("../../../../../../etc/passwd"), -EACCES, "relative escape refused");
    is_int(RESOLVE("escape"), -EACCES, "escaping symlink refused");
    is_int(RESOLVE("/dev/zero"), -EACCES, "device refused");
    is_int(RESOLVE("json:{\"file\":\"x\"}"), -EACCES, "json: refused");
    is_int(RESOLVE("nbd://127.0.0.1/x"), -EACCES, "nbd:// refused");
    is_int(RESOLVE("nbd:127.0.0.1:10809"), -EACCES, "nbd: refused");
    is_int(RESOLVE("nope.img"), -ENOENT, "missing backing file");
    ok(strstr(err.msg, "'nope.img'") && strstr(err.msg, "chain/nope.img") && strstr(err.msg, "--backing"),
       "missing: name, where looked, hint: %s", err.msg);
    ok(RESOLVE("/some/old/machine/base.img") == 0 && strstr(out, "/chain/base.img") && strstr(note, "base name"),
       "absolute name found by base name in the image dir: %s", note);
    is_int(RESOLVE("../elsewhere/far.img"), -EACCES, "sibling dir refused without --backing-dir");
    o.backing_dirs[0] = other;
    o.n_backing_dirs = 1;
    ok(RESOLVE("../elsewhere/far.img") == 0 && strstr(out, "/elsewhere/far.img"), "allowed by --backing-dir");
    ok(RESOLVE("/x/y/far.img") == 0 && strstr(out, "/elsewhere/far.img") && strstr(note, "elsewhere"),
       "absolute name found in --backing-dir: %s", note);
    o.unsafe_backing = true;
    ok(RESOLVE("/etc/passwd") == 0 && strcmp(out, "/etc/passwd") == 0, "--unsafe-backing: plain resolution");
#undef RESOLVE
}

static bool tmp_supports_direct(const char *dir)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/.directprobe", dir);
    int fd = open(p, O_RDWR | O_CREAT | O_DIRECT, 0644);
    if (fd >= 0)
        close(fd);
    unlink(p);
    return fd >= 0;
}

int main(void)
{
    const char *bases[] = { getenv("TMPDIR"), "/var/tmp", "/tmp", "." };
    bool made = false;
    for (size_t i = 0; i < ARRAY_SIZE(bases) && !made; i++) {
        if (bases[i] && scratch_init_at(bases[i], "unit") && !(made = tmp_supports_direct(tmpdir)))
            rmdir(tmpdir);
    }
    if (!made && !scratch_init_at("/tmp", "unit"))
        return 1;
    test_util();
    test_open_raw_readonly();
    test_open_errors();
    test_seed_rule();
    test_probe();
    test_memory();
    test_raw_window();
    test_probe_guard();
    test_alignment(AIO_THREADS);
    test_alignment(AIO_NATIVE);
    test_extents();
    test_block_status();
    test_blkdebug();
    test_resolve_backing();
    scratch_cleanup();
    return done_testing();
}
