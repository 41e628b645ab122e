/* SPDX-License-Identifier: MIT */
/*
 * test-chain.c - backing chains opened by the core, on images made by qemu-img: relative names resolved
 * against the naming image's directory, content equal to qemu-img convert, block status depth, a shorter
 * backing file reading as zeros, --backing / --backing-format / --no-backing, missing backing files,
 * loops, the depth limit, hostile backing names, memory nodes refusing backing files, probing and forced
 * formats.
 */
#include "block.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


/* True if reading all of bs equals qemu-img's raw conversion of image. */
static bool same_as_qemu(BlockNode *bs, const char *image, const char *oracle)
{
    if (sh("qemu-img convert -U -O raw '%s' '%s'", image, oracle) != 0)
        return false;
    size_t len;
    uint8_t *want = slurp(tpath(oracle), &len);
    if (!want || (int64_t)len != bdrv_getlength(bs))
        return free(want), false;
    uint8_t *got = malloc(len + 1);
    bool same = bdrv_pread(bs, 0, (int64_t)len, got) == 0 && memcmp(got, want, len) == 0;
    free(got);
    free(want);
    return same;
}

static BlockNode *open_ro(const char *path, BlockOpenOpts *o, Error *err)
{
    memset(err, 0, sizeof(*err));
    return bdrv_open(path, o, err);
}

static void test_three_layers(void)
{
    ok(sh("mkdir -p c && cd c && qemu-img create -q -f raw base.raw 4M && "
          "qemu-io -f raw -c 'write -P 0x11 0 4M' base.raw && "
          "qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 && "
          "qemu-io -f qcow2 -c 'write -P 0x22 1M 1M' mid.qcow2 && "
          "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 && "
          "qemu-io -f qcow2 -c 'write -P 0x33 2M 64k' top.qcow2") == 0, "made a 3-layer chain");
    BlockOpenOpts o;
    block_open_opts_init(&o);
    Error err;
    BlockNode *bs = open_ro(tpath("c/top.qcow2"), &o, &err);
    ok(bs != NULL, "open the chain: %s", err.msg);
    if (!bs)
        return;
    is_int(bdrv_chain_length(bs), 3, "three layers");
    ok(strcmp(bs->drv->name, "qcow2") == 0 && strcmp(bs->backing->drv->name, "qcow2") == 0 &&
       strcmp(bs->backing->backing->drv->name, "raw") == 0, "formats qcow2, qcow2, raw");
    ok(bs->backing->read_only && bs->backing->backing->read_only, "backing nodes are read-only");
    ok(bs->backing_resolved && strstr(bs->backing_resolved, "/c/mid.qcow2"), "resolved next to the image");
    is_int(bs->backing->depth, 1, "depth 1");
    ok(same_as_qemu(bs, "c/top.qcow2", "c.oracle"), "content equals qemu-img convert");
    BlockStatus st;
    ok(bdrv_block_status_above(bs, 2 * MiB, 64 * KiB, &st) == 0 && st.depth == 0, "top range: depth 0");
    ok(bdrv_block_status_above(bs, 1 * MiB, 64 * KiB, &st) == 0 && st.depth == 1, "mid range: depth 1");
    ok(bdrv_block_status_above(bs, 0, 64 * KiB, &st) == 0 && st.depth == 2 && (st.flags & BDRV_BLOCK_DATA),
       "base range: depth 2, data");
    InfoList info = { 0 };
    bdrv_get_info(bs, &info);
    bool has_backing = false;
    for (int i = 0; i < info.n; i++)
        if (strcmp(info.items[i].key, "backing_file") == 0 && strcmp(info.items[i].str, "mid.qcow2") == 0)
            has_backing = true;
    ok(has_backing, "info: backing_file as written in the header");
    info_free(&info);
    bdrv_close(bs);

    o.no_backing = true;
    bs = open_ro(tpath("c/top.qcow2"), &o, &err);
    uint8_t buf[4096];
    ok(bs && bdrv_chain_length(bs) == 1 && bdrv_pread(bs, 0, 4096, buf) == 0 && buffer_is_zero(buf, 4096),
       "--no-backing: one layer, unallocated reads as zeros");
    bdrv_close(bs);

    o.no_backing = false;
    o.backing = tpath("c/base.raw");
    o.backing_format = "raw";
    bs = open_ro(tpath("c/top.qcow2"), &o, &err);
    ok(bs && bdrv_chain_length(bs) == 2 && bdrv_pread(bs, 1 * MiB, 4096, buf) == 0 && buf[0] == 0x11,
       "--backing replaces the top's backing file: %s", err.msg);
    ok(bs && bs->backing_note && strstr(bs->backing_note, "--backing"), "and info says so");
    bdrv_close(bs);

    o.backing = NULL;
    o.backing_format = "qcow2";
    bs = open_ro(tpath("c/mid.qcow2"), &o, &err);
    ok(bs == NULL && strstr(err.msg, "base.raw"), "--backing-format qcow2 on a raw base fails clearly: %s",
       err.msg);
    bdrv_close(bs);
}

static void test_short_backing(void)
{
    ok(sh("qemu-img create -q -f raw short.raw 1M && qemu-io -f raw -c 'write -P 0x44 0 1M' short.raw && "
          "qemu-img create -q -f qcow2 -b short.raw -F raw long.qcow2 2M") == 0, "top longer than its base");
    BlockOpenOpts o;
    block_open_opts_init(&o);
    Error err;
    BlockNode *bs = open_ro(tpath("long.qcow2"), &o, &err);
    uint8_t *buf = malloc(2 * MiB);
    ok(bs && bdrv_pread(bs, 0, 2 * MiB, buf) == 0 && buf[MiB - 1] == 0x44 && buffer_is_zero(buf + MiB, MiB),
       "beyond the base's end reads zeros: %s", err.msg);
    ok(bs && same_as_qemu(bs, "long.qcow2", "long.oracle"), "equals qemu-img convert");
    free(buf);
    bdrv_close(bs);
}

static void test_missing_and_loops(void)
{
    ok(sh("qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 orphan.qcow2 1M") == 0, "image naming a missing file");
    BlockOpenOpts o;
    block_open_opts_init(&o);
    Error err;
    ok(open_ro(tpath("orphan.qcow2"), &o, &err) == NULL && err.errnum == ENOENT &&
       strstr(err.msg, "backing file 'gone.qcow2' not found") && strstr(err.msg, "/gone.qcow2") &&
       strstr(err.msg, "--backing"), "missing backing: one line: %s", err.msg);

    ok(sh("qemu-img create -q -f qcow2 a.qcow2 1M && qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 && "
          "qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2") == 0, "a -> b -> a");
    ok(open_ro(tpath("b.qcow2"), &o, &err) == NULL && err.errnum == ELOOP && strstr(err.msg, "loop"),
       "loop detected: %s", err.msg);
    ok(sh("qemu-img create -q -f qcow2 self.qcow2 1M && qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2") == 0,
       "an image backed by itself");
    ok(open_ro(tpath("self.qcow2"), &o, &err) == NULL && err.errnum == ELOOP, "self loop: %s", err.msg);

    ok(sh("mkdir d && cd d && qemu-img create -q -f qcow2 l0.qcow2 64k && "
          "for i in $(seq 1 %d); do qemu-img create -q -f qcow2 -u -b l$((i-1)).qcow2 -F qcow2 l$i.qcow2 64k || exit 1; done",
          MAX_CHAIN_DEPTH) == 0, "a chain of %d layers", MAX_CHAIN_DEPTH + 1);
    char name[64];
    snprintf(name, sizeof(name), "d/l%d.qcow2", MAX_CHAIN_DEPTH);
    ok(open_ro(tpath(name), &o, &err) == NULL && err.errnum == ELOOP && strstr(err.msg, "longer than"),
       "depth limit: %s", err.msg);
    snprintf(name, sizeof(name), "d/l%d.qcow2", MAX_CHAIN_DEPTH - 1);
    BlockNode *bs = open_ro(tpath(name), &o, &err);
    ok(bs && bdrv_chain_length(bs) == MAX_CHAIN_DEPTH, "%d layers open: %s", MAX_CHAIN_DEPTH, err.msg);
    bdrv_close(bs);
}

static void test_hostile_names(void)
{
    static const char *const names[] = { "/etc/passwd", "../../../../../../etc/passwd", "/dev/zero",
                                         "json:{\"file.filename\":\"/etc/passwd\"}", "nbd://127.0.0.1/x" };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    Error err;
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        sh("rm -f h.qcow2 && qemu-img create -q -f qcow2 -u -b '%s' -F raw h.qcow2 1M", names[i]);
        ok(open_ro(tpath("h.qcow2"), &o, &err) == NULL && err.errnum == EACCES && strstr(err.msg, "refused") &&
           strstr(err.msg, names[i]), "hostile '%s' refused: %s", names[i], err.msg);
    }
    sh("rm -f h.qcow2 && qemu-img create -q -f qcow2 -u -b /etc/passwd -F raw h.qcow2 1M");
    o.unsafe_backing = true;
    BlockNode *bs = open_ro(tpath("h.qcow2"), &o, &err);
    ok(bs && bs->backing && strcmp(bs->backing->filename, "/etc/passwd") == 0,
       "--unsafe-backing follows it: %s", err.msg);
    bdrv_close(bs);
}

static void test_memory_refuses_backing(void)
{
    ok(sh("qemu-img create -q -f qcow2 mb.raw 1M && qemu-img create -q -f qcow2 -b mb.raw -F qcow2 m.qcow2") == 0,
       "an overlay image");
    size_t len;
    uint8_t *img = slurp(tpath("m.qcow2"), &len);
    BlockNode *m = bdrv_open_memory(img, len, true);
    free(img);
    Error err = { 0 };
    ok(bdrv_open_on_node(m, NULL, NULL, &err) == NULL && err.errnum == EACCES && strstr(err.msg, "in-memory"),
       "a memory image may not open its backing file: %s", err.msg);
    img = slurp(tpath("mb.raw"), &len);
    m = bdrv_open_memory(img, len, true);
    free(img);
    memset(&err, 0, sizeof(err));
    BlockNode *bs = bdrv_open_on_node(m, NULL, NULL, &err);
    ok(bs && strcmp(bs->drv->name, "qcow2") == 0 && bdrv_getlength(bs) == MiB, "a qcow2 in memory, probed");
    bdrv_close(bs);
}

static void test_forced_formats(void)
{
    ok(sh("qemu-img create -q -f raw plain.raw 1M && qemu-img create -q -f qcow2 q.qcow2 1M") == 0, "images");
    BlockOpenOpts o;
    block_open_opts_init(&o);
    Error err;
    BlockNode *bs = open_ro(tpath("q.qcow2"), &o, &err);
    ok(bs && strcmp(bs->drv->name, "qcow2") == 0 && bs->probed, "qcow2 probed");
    bdrv_close(bs);
    o.format = "qcow2";
    ok(open_ro(tpath("plain.raw"), &o, &err) == NULL && strstr(err.msg, "plain.raw"),
       "--format qcow2 on a raw file fails with a clear line: %s", err.msg);
    o.format = "raw";
    bs = open_ro(tpath("q.qcow2"), &o, &err);
    ok(bs && strcmp(bs->drv->name, "raw") == 0 && bdrv_getlength(bs) > 0, "--format raw on a qcow2 shows its bytes");
    bdrv_close(bs);
}

int main(void)
{
    if (!scratch_init("chain"))
        return 1;
    test_three_layers();
    test_short_backing();
    test_missing_and_loops();
    test_hostile_names();
    test_memory_refuses_backing();
    test_forced_formats();
    scratch_cleanup();
    return done_testing();
}
