/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-snapshot.c - the qcow2 driver's snapshot read side against QEMU: images with internal
 * snapshots are made by qemu-img/qemu-io in a private temp dir; snapshot_list must match the table,
 * each snapshot view (bdrv_snapshot_open) must read byte for byte like `qemu-img convert -l` over the
 * snapshot's own virtual size, and vmstate_read must return the VM state stored after the snapshot's
 * disk (placed there with qemu-io and declared in the snapshot table, as QEMU's savevm lays it out).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block.h"
#include "scratch.h"
#include "tap.h"

/* The view of snapshot id must equal qemu-img's conversion of it, cut to the snapshot's size. */
static void check_view(BlockNode *bs, const char *id, int64_t want_size)
{
    Error err = { .msg = "" };
    BlockNode *view = bdrv_snapshot_open(bs, id, &err);
    ok(view != NULL, "snapshot '%s' opens as a view (%s)", id, err.msg);
    if (!view)
        return;
    is_int(bdrv_getlength(view), want_size, "view '%s' has the snapshot's own virtual size", id);
    sh("qemu-img convert -l snapshot.name=%s -O raw img.qcow2 snap.raw", id);
    size_t len = 0;
    uint8_t *ref = slurp(tpath("snap.raw"), &len);
    uint8_t *got = malloc((size_t)want_size);
    ok(ref && got && len >= (size_t)want_size, "qemu-img converted snapshot '%s'", id);
    if (ref && got && len >= (size_t)want_size) {
        is_int(bdrv_pread(view, 0, want_size, got), 0, "view '%s' reads", id);
        ok(memcmp(got, ref, (size_t)want_size) == 0, "view '%s' equals qemu-img convert -l", id);
    }
    free(ref);
    free(got);
    bdrv_close(view);
}

static void patch_vmstate(uint64_t vm_size, uint64_t disk_size)
{
    /* Declare a VM state in snapshot 3's table entry: extra data bytes 0-7 (VM state size) and 8-15
     * (virtual disk size). */
    sh("python3 - img.qcow2 %llu %llu <<'EOF'\n"
       "import struct, sys\n"
       "p, vm, ds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
       "f = open(p, 'r+b'); h = f.read(72)\n"
       "n = struct.unpack('>I', h[60:64])[0]; pos = struct.unpack('>Q', h[64:72])[0]\n"
       "for i in range(n):\n"
       "    f.seek(pos); e = f.read(40)\n"
       "    idl, nl = struct.unpack('>HH', e[12:16]); ex = struct.unpack('>I', e[36:40])[0]\n"
       "    f.seek(pos + 40 + ex); sid = f.read(idl)\n"
       "    if sid == b'3':\n"
       "        f.seek(pos + 32); f.write(struct.pack('>I', 0))\n"
       "        f.seek(pos + 40); f.write(struct.pack('>QQ', vm, ds))\n"
       "    pos += (40 + ex + idl + nl + 7) // 8 * 8\n"
       "EOF",
       (unsigned long long)vm_size, (unsigned long long)disk_size);
}

/* A view reads its snapshot's L1 table in slices, from where the table is: it must follow the table when
 * a snapshot create or delete rewrites every snapshot's table elsewhere, and fail (EIO) once its own
 * snapshot is gone. It holds a few hundred bytes, not its table. */
static void test_view_across_commits(const char *path)
{
    int r = sh("rm -f img.qcow2 && qemu-img create -q -f qcow2 img.qcow2 4M && "
               "qemu-io -f qcow2 -c 'write -P 0x51 0 4M' img.qcow2 >/dev/null && qemu-img snapshot -c keep img.qcow2 && "
               "qemu-io -f qcow2 -c 'write -P 0x52 1M 2M' img.qcow2 >/dev/null");
    is_int(r, 0, "image with snapshot 'keep' overwritten after it");
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    Error err = { .msg = "" };
    BlockNode *bs = bdrv_open(path, &o, &err);
    BlockNode *view = bs ? bdrv_snapshot_open(bs, "keep", &err) : NULL;
    ok(view != NULL, "writable image and its view open (%s)", err.msg);
    if (!view) {
        bdrv_close(bs);
        return;
    }
    ok(bdrv_memory_used(view) > 0 && bdrv_memory_used(view) < 16384, "a view holds %" PRId64 " bytes",
       bdrv_memory_used(view));
    uint8_t *buf = malloc(4 << 20);
    int good = bdrv_pread(view, 0, 4 << 20, buf) == 0;
    for (size_t i = 0; good && i < (4 << 20); i++)
        good = buf[i] == 0x51;
    ok(good, "the view reads the snapshot");
    is_int(bdrv_snapshot_create(bs, "later", &err), 0, "another snapshot created (every L1 table moves)");
    memset(buf, 0, 4 << 20);
    good = bdrv_pread(view, 0, 4 << 20, buf) == 0;
    for (size_t i = 0; good && i < (4 << 20); i++)
        good = buf[i] == 0x51;
    ok(good, "the view still reads the snapshot after the table moved");
    is_int(bdrv_snapshot_delete(bs, "keep", &err), 0, "the view's snapshot deleted");
    is_int(bdrv_pread(view, 0, 4096, buf), -EIO, "the view of a deleted snapshot reads EIO");
    free(buf);
    bdrv_close(view);
    bdrv_close(bs);
}

int main(void)
{
    if (!scratch_init("unit-snap")) {
        ok(0, "temp dir");
        return done_testing();
    }
    int r = sh("qemu-img create -q -f qcow2 img.qcow2 2M && "
               "qemu-io -f qcow2 -c 'write -P 1 0 1M' img.qcow2 >/dev/null && "
               "qemu-img snapshot -c first img.qcow2 && "
               "qemu-io -f qcow2 -c 'write -P 2 512k 1M' -c 'write -z 0 64k' img.qcow2 >/dev/null && "
               "qemu-img resize -q img.qcow2 5M && "
               "qemu-io -f qcow2 -c 'write -P 3 4M 1M' img.qcow2 >/dev/null && "
               "qemu-img snapshot -c second img.qcow2 && "
               "qemu-img resize -q img.qcow2 1G && "
               "qemu-io -f qcow2 -c 'write -P 0x7e 512M 100k' -c 'write -P 0x3c 640M 4k' img.qcow2 >/dev/null && "
               "qemu-img snapshot -c withvm img.qcow2 && "
               "qemu-io -f qcow2 -c 'write -z 0 5M' img.qcow2 >/dev/null");
    is_int(r, 0, "test image with three snapshots made by qemu-img");
    patch_vmstate(128 * 1024 + 4099, 1 << 20);

    BlockOpenOpts o;
    block_open_opts_init(&o);
    Error err = { .msg = "" };
    char path[128];
    snprintf(path, sizeof(path), "%s/img.qcow2", tmpdir);
    BlockNode *bs = bdrv_open(path, &o, &err);
    ok(bs != NULL, "image opens (%s)", err.msg);
    if (!bs)
        return done_testing();

    SnapshotInfo *list = NULL;
    int n = bdrv_snapshot_list(bs, &list);
    is_int(n, 3, "three snapshots listed");
    if (n == 3) {
        ok(strcmp(list[0].name, "first") == 0 && strcmp(list[0].id, "1") == 0, "first: id 1");
        is_int(list[0].disk_size, 2 << 20, "first: disk size 2 MiB");
        is_int(list[1].disk_size, 5 << 20, "second: disk size 5 MiB");
        is_int(list[2].vm_state_size, 128 * 1024 + 4099, "withvm: VM state size from the extra data");
    }
    free(list);

    check_view(bs, "first", 2 << 20);
    check_view(bs, "second", 5 << 20);
    Error e2 = { .msg = "" };
    ok(bdrv_snapshot_open(bs, "nope", &e2) == NULL && strstr(e2.msg, "no snapshot 'nope'"),
       "an unknown snapshot is refused (%s)", e2.msg);

    /* The VM state of a 1 MiB disk with 64 KiB clusters starts at the first L1 entry after it: 512 MiB. */
    size_t vm_len = 128 * 1024 + 4099;
    uint8_t *vm = malloc(vm_len + 100);
    int got = bdrv_vmstate_read(bs, "withvm", 0, (int64_t)vm_len + 100, vm);
    is_int(got, (int64_t)vm_len, "vmstate read stops at the VM state size");
    int good = got == (int)vm_len;
    for (size_t i = 0; good && i < vm_len; i++)
        good = vm[i] == (i < 100 * 1024 ? 0x7e : 0);
    ok(good, "vmstate holds what was written at 512 MiB, zeros after");
    is_int(bdrv_vmstate_read(bs, "withvm", 100 * 1024 - 1, 2, vm), 2, "vmstate read at an offset");
    ok(vm[0] == 0x7e && vm[1] == 0, "vmstate bytes at the offset");
    is_int(bdrv_vmstate_read(bs, "withvm", (int64_t)vm_len, 10, vm), 0, "vmstate read at its end is empty");
    is_int(bdrv_vmstate_read(bs, "nope", 0, 10, vm), -ENOENT, "vmstate of an unknown snapshot: ENOENT");
    free(vm);
    bdrv_close(bs);

    /* Over a backing file: unallocated clusters of the snapshot come from the backing file, and the
     * view outlives the node it was opened from. */
    r = sh("qemu-img create -q -f raw base.raw 2M && qemu-io -f raw -c 'write -P 0x42 0 2M' base.raw >/dev/null && "
           "qemu-img create -q -f qcow2 -b base.raw -F raw img.qcow2 && "
           "qemu-io -f qcow2 -c 'write -P 0x43 64k 64k' img.qcow2 >/dev/null && "
           "qemu-img snapshot -c onbacking img.qcow2 && "
           "qemu-io -f qcow2 -c 'write -P 0x44 0 2M' img.qcow2 >/dev/null");
    is_int(r, 0, "overlay with a snapshot made by qemu-img");
    memset(&err, 0, sizeof(err));
    bs = bdrv_open(path, &o, &err);
    ok(bs != NULL, "overlay opens (%s)", err.msg);
    if (bs) {
        check_view(bs, "onbacking", 2 << 20);
        BlockNode *view = bdrv_snapshot_open(bs, "onbacking", &err);
        bdrv_close(bs);
        uint8_t buf[3];
        ok(view && bdrv_pread(view, 65535, 3, buf) == 0 && buf[0] == 0x42 && buf[1] == 0x43 && buf[2] == 0x43,
           "a view still reads after its parent node was closed");
        bdrv_close(view);
    }
    test_view_across_commits(path);
    scratch_cleanup();
    return done_testing();
}
