/* SPDX-License-Identifier: MIT */
/*
 * test-vpcqed-create.c - unit tests of `create` for the vpc and qed drivers through bdrv_create, in a
 * scratch directory: every bad creation option, size and parent is refused with its one-line message and
 * leaves no file behind; the VHD sizes follow the CHS rounding (and force_size does not round); discard on
 * a QED with a backing file turns whole clusters into zero clusters and leaves pieces of clusters alone.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

/* bdrv_create(fmt, NAME in the scratch dir, size, options, backing) fails, err.msg holds want, no file. */
static void refused(const char *fmt, int64_t size, const char *options, const char *backing, const char *bfmt,
                    const char *want)
{
    CreateOpts co = { .size = size, .options = options, .backing = backing, .backing_format = bfmt };
    Error err;
    memset(&err, 0, sizeof(err));
    char *path = tpath("x.img");
    int r = bdrv_create(fmt, path, &co, &err);
    ok(r < 0 && strstr(err.msg, want) && access(path, F_OK) != 0, "%s -o %s: %s", fmt, options ? options : "",
       want);
    if (!strstr(err.msg, want))
        printf("#   got: %s\n", err.msg);
    unlink(path);
}

static int64_t created_size(const char *fmt, int64_t size, const char *options)
{
    CreateOpts co = { .size = size, .options = options };
    Error err;
    memset(&err, 0, sizeof(err));
    unlink(tpath("s.img"));
    if (bdrv_create(fmt, tpath("s.img"), &co, &err) < 0) {
        printf("# %s\n", err.msg);
        return -1;
    }
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.format = fmt;
    BlockNode *bs = bdrv_open(tpath("s.img"), &o, &err);
    int64_t len = bs ? bdrv_getlength(bs) : -1;
    if (bs)
        bdrv_close(bs);
    return len;
}

static void test_refusals(void)
{
    refused("qed", 1 << 20, "cluster_size=1k", NULL, NULL,
            "qed creation option 'cluster_size' must be a power of two from 4K to 64M, not '1k'");
    refused("qed", 1 << 20, "cluster_size=128M", NULL, NULL, "must be a power of two from 4K to 64M, not '128M'");
    refused("qed", 1 << 20, "cluster_size=abc", NULL, NULL, "not 'abc'");
    refused("qed", 1 << 20, "table_size=0", NULL, NULL, "'table_size' must be a power of two from 1 to 16, not '0'");
    refused("qed", 1 << 20, "table_size=4x", NULL, NULL, "not '4x'");
    refused("qed", 1 << 20, "table_size=-4", NULL, NULL, "not '-4'");
    refused("qed", 1 << 20, "table_size", NULL, NULL, "no value for the qed creation option 'table_size'");
    refused("qed", 1 << 20, "force_size=on", NULL, NULL, "unknown qed creation option 'force_size'");
    refused("qed", (int64_t)1 << 41, "cluster_size=4k,table_size=1", NULL, NULL,
            "invalid virtual size for qed with these tables (0 to 1073741824 bytes)");
    refused("qed", 1 << 20, "backing_file=b.raw,backing_fmt=nosuch", NULL, NULL, "unknown backing format 'nosuch'");
    char longname[1100];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    refused("qed", 1 << 20, NULL, longname, "raw", "backing file name longer than 1023 bytes");

    refused("vpc", 1 << 20, "subformat=sparse", NULL, NULL,
            "vpc creation option 'subformat' must be dynamic or fixed, not 'sparse'");
    refused("vpc", 1 << 20, "force_size=1", NULL, NULL, "'force_size' must be on or off, not '1'");
    refused("vpc", 1 << 20, "force_size", NULL, NULL, "no value for the vpc creation option 'force_size'");
    refused("vpc", 1 << 20, "cluster_size=64k", NULL, NULL, "unknown vpc creation option 'cluster_size'");
    refused("vpc", (int64_t)2041 << 30, NULL, NULL, NULL, "invalid virtual size for vpc (at most 2040 GiB)");
    refused("vpc", (int64_t)2041 << 30, "force_size=on", NULL, NULL, "invalid virtual size for vpc");
    refused("vpc", 1 << 20, "subformat=fixed", "p.vhd", "vpc", "a fixed VHD has no parent");
    refused("vpc", 1 << 20, NULL, "p.vhd", "qcow2", "a differencing VHD's parent is a VHD (-F vpc)");
    refused("vpc", 1 << 20, NULL, "missing.vhd", "vpc", "cannot find the parent missing.vhd");
}

static void test_sizes(void)
{
    /* CHS rounding: 10 MiB is 302/4/17 (10514432 bytes), 1000 bytes 4 sectors at 17 per track ... */
    is_int(created_size("vpc", 10 << 20, NULL), 10514432, "vpc 10M rounds up to 302/4/17");
    is_int(created_size("vpc", 1000, NULL), 34816, "vpc 1000 bytes rounds up to 1/4/17");
    is_int(created_size("vpc", 10 << 20, "force_size=on"), 10 << 20, "vpc force_size=on keeps 10M");
    is_int(created_size("vpc", 1000, "force_size=on,subformat=fixed"), 1024, "fixed, force_size: 1000 -> 1024");
    is_int(created_size("vpc", (int64_t)200 << 30, NULL), (int64_t)200 << 30, "past the CHS range: the size as asked");
    is_int(created_size("vpc", 0, NULL), 0, "an empty VHD");
    is_int(created_size("qed", 5000000, NULL), 5000192, "qed rounds up to 512 bytes");
    is_int(created_size("qed", 0, "cluster_size=4k,table_size=16"), 0, "an empty QED");
}

/* Discard on a QED over a raw backing file (opened with discard=unmap): whole clusters become zero
 * clusters and read as zeros, a piece of a cluster is left to the backing file. */
static void test_qed_discard(void)
{
    ok(sh("head -c 262144 /dev/zero | tr '\\0' 'A' > b.raw") == 0, "backing file of 'A'");
    CreateOpts co = { .size = 262144, .backing = "b.raw", .backing_format = "raw", .options = "cluster_size=64k" };
    Error err;
    memset(&err, 0, sizeof(err));
    ok(bdrv_create("qed", tpath("d.qed"), &co, &err) == 0, "create qed over b.raw: %s", err.msg);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    o.discard = DISCARD_UNMAP;
    BlockNode *bs = bdrv_open(tpath("d.qed"), &o, &err);
    ok(bs != NULL, "open read-write: %s", err.msg);
    if (!bs)
        return;
    uint8_t buf[262144];
    ok(bdrv_discard(bs, 65536 + 100, 65536 * 2) == 0, "discard from cluster 1 (a piece) over cluster 2 (whole)");
    ok(bdrv_pread(bs, 0, sizeof(buf), buf) == 0, "read back");
    bool piece_kept = buf[65536 + 100] == 'A' && buf[2 * 65536 - 1] == 'A';
    bool whole_zero = buffer_is_zero(buf + 2 * 65536, 65536), rest = buf[3 * 65536 + 100] == 'A';
    ok(piece_kept && whole_zero && rest, "cluster 1 from the backing file, cluster 2 zeros, cluster 3 backing");
    BlockStatus st;
    ok(bdrv_block_status(bs, 2 * 65536, 65536, &st) == 0 && (st.flags & BDRV_BLOCK_ZERO) &&
       !(st.flags & BDRV_BLOCK_DATA), "cluster 2 is a zero cluster");
    bdrv_close(bs);
    size_t len;
    uint8_t *img = slurp(tpath("d.qed"), &len);
    ok(img && len == 9 * 65536, "no data cluster allocated (header, L1, L2: %zu bytes)", len);
    free(img);
}

int main(void)
{
    if (!scratch_init("vpcqed")) {
        printf("not ok 1 - scratch directory\n1..1\n");
        return 1;
    }
    test_refusals();
    test_sizes();
    test_qed_discard();
    scratch_cleanup();
    return done_testing();
}
