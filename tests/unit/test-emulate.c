/* SPDX-License-Identifier: MIT */
/*
 * test-emulate.c - output emulation (drivers/emulate.c) on memory nodes: the bytes of an emulated VHD and
 * VDI, copied out, open with imgfuse's own vpc and vdi drivers and read back as the disk (an odd size
 * included, padded with zeros); the VHD footer checksum and creator; the VMDK descriptor's extent line;
 * writes reach the node through the data area and are refused on headers (EPERM); an unknown kind is
 * refused with one line.
 */
#include "block.h"
#include "tap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DISK (3 * 1048576 + 1000)   /* no multiple of 512: the views pad it */

static uint8_t *pattern(size_t n)
{
    uint8_t *p = malloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 7 + i / 4096);
    return p;
}

/* The whole content of node bs, malloc'd; *len its length. */
static uint8_t *read_all(BlockNode *bs, int64_t *len)
{
    *len = bdrv_getlength(bs);
    uint8_t *buf = malloc((size_t)*len);
    if (bdrv_pread(bs, 0, *len, buf) < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* Opens the bytes of the emulated view as fmt with imgfuse's own driver and compares with disk. */
static void round_trip(BlockNode *disk_node, const uint8_t *disk, const char *kind, const char *fmt)
{
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *v = bdrv_open_emulated(disk_node, kind, "disk.raw", &err);
    ok(v != NULL, "%s view opens (%s)", kind, err.msg);
    if (!v)
        return;
    int64_t len;
    uint8_t *bytes = read_all(v, &len);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    memset(&err, 0, sizeof err);
    BlockNode *img = bytes ? bdrv_open_on_node(bdrv_open_memory(bytes, (size_t)len, true), fmt, &o, &err) : NULL;
    ok(img != NULL, "%s bytes open as %s (%s)", kind, fmt, err.msg);
    if (img) {
        int64_t size = bdrv_getlength(img);
        is_int(size, (DISK + 511) / 512 * 512, "%s: virtual size is the disk's, padded to 512", kind);
        uint8_t *got = malloc((size_t)size);
        ok(bdrv_pread(img, 0, size, got) == 0 && memcmp(got, disk, DISK) == 0, "%s: reads back the disk", kind);
        bool zero = true;
        for (int64_t i = DISK; i < size; i++)
            zero &= got[i] == 0;
        ok(zero, "%s: the padding reads as zeros", kind);
        free(got);
        bdrv_close(img);
    }
    if (strcmp(kind, "vhd") == 0 && bytes) {
        const uint8_t *f = bytes + len - 512;
        uint32_t sum = 0, stored = (uint32_t)f[64] << 24 | f[65] << 16 | f[66] << 8 | f[67];
        for (int i = 0; i < 512; i++)
            sum += i >= 64 && i < 68 ? 0 : f[i];
        ok(memcmp(f, "conectix", 8) == 0 && memcmp(f + 28, "win ", 4) == 0 && stored == ~sum,
           "vhd: footer cookie, creator 'win ' and checksum");
        uint8_t zero[512] = { 0 };
        is_int(bdrv_pwrite(v, len - 512, 512, zero, 0), -EPERM, "vhd: the footer refuses writes");
    }
    free(bytes);
    bdrv_close(v);
}

static void test_vmdk_and_writes(BlockNode *node)
{
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *v = bdrv_open_emulated(node, "vmdk", "disk.raw", &err);
    int64_t len;
    char *d = v ? (char *)read_all(v, &len) : NULL;
    if (d)
        d[len - 1] = '\0';
    ok(d && strstr(d, "\nRW 6146 FLAT \"disk.raw\" 0\n") && strstr(d, "createType=\"monolithicFlat\""),
       "vmdk: a monolithicFlat descriptor naming disk.raw, 6146 sectors");
    free(d);
    bdrv_close(v);
    memset(&err, 0, sizeof err);
    v = bdrv_open_emulated(node, "vdi", "disk.raw", &err);
    uint8_t buf[4096], back[4096];
    memset(buf, 0xa5, sizeof buf);
    int64_t head = v ? bdrv_getlength(v) - 4 * 1048576 : 0; /* 4 blocks of 1 MiB after the header */
    ok(v && bdrv_pwrite(v, head + 8192, sizeof buf, buf, 0) == 0 && bdrv_pread(node, 8192, sizeof back, back) == 0 &&
       memcmp(buf, back, sizeof buf) == 0, "vdi: a write in the data area lands in the node");
    is_int(v ? bdrv_pwrite(v, 0, 512, buf, 0) : 0, -EPERM, "vdi: the header refuses writes");
    is_int(v ? bdrv_pwrite(v, head + DISK, 512, buf, 0) : 0, -EPERM, "vdi: the padding past the disk refuses writes");
    bdrv_close(v);
}

static void test_unknown_kind(void)
{
    static uint8_t one[512];
    BlockNode *mem = bdrv_open_memory(one, sizeof one, true);
    Error err;
    memset(&err, 0, sizeof err);
    ok(bdrv_open_emulated(mem, "qcow2", "disk.raw", &err) == NULL && strstr(err.msg, "unknown format 'qcow2'"),
       "an unknown kind is refused: %s", err.msg);
    bdrv_close(mem);
}

int main(void)
{
    uint8_t *disk = pattern(DISK);
    BlockNode *node = bdrv_open_memory(disk, DISK, false);
    round_trip(node, disk, "vhd", "vpc");
    round_trip(node, disk, "vdi", "vdi");
    test_vmdk_and_writes(node);
    test_unknown_kind();
    bdrv_close(node);
    free(disk);
    return done_testing();
}
