/* SPDX-License-Identifier: MIT */
/*
 * test-open-errors.c - the one rule for where the file name enters an open error (HACKING.md, "Errors"):
 * a format driver's open slot writes the reason only, and the core (driver_open in lib/open.c) puts
 * "FILE: " in front of it, once.  Damaged vdi, qed and vmdk images in memory are opened twice: through
 * the driver's open slot directly (the message names no file) and through bdrv_open_on_node (the
 * message is "FILE: reason", the name exactly once).
 */
#include "block.h"
#include "tap.h"
#include "../../lib/block_int.h" /* bdrv_free_node: a node whose open failed */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The open slot of driver fmt on a node over img: the Error it leaves (empty when it succeeds). */
static void slot_error(const char *fmt, const void *img, size_t len, Error *err)
{
    const BlockDriver *drv = bdrv_find_driver(fmt);
    BlockNode *file = bdrv_open_memory(img, len, true);
    BlockNode *bs = bdrv_new_node(drv, "evidence.img");
    memset(err, 0, sizeof(*err));
    bs->file = file;
    bs->read_only = true;
    if (drv->open(bs, NULL, err) == 0 && drv->close)
        drv->close(bs);
    bs->file = NULL;
    bdrv_free_node(bs);
    bdrv_close(file);
}

static void is_msg(const char *got, const char *want, const char *what)
{
    ok(strcmp(got, want) == 0, "%s", what);
    if (strcmp(got, want) != 0)
        printf("#   got  '%s'\n#   want '%s'\n", got, want);
}

static void check(const char *fmt, const void *img, size_t len, const char *reason, const char *what)
{
    Error err;
    slot_error(fmt, img, len, &err);
    char name[256];
    snprintf(name, sizeof(name), "%s: %s: the open slot writes the reason only", fmt, what);
    is_msg(err.msg, reason, name);
    BlockNode *file = bdrv_open_memory(img, len, true);
    char want[1200];
    snprintf(want, sizeof(want), "%s: %s", file->filename, reason);
    memset(&err, 0, sizeof(err));
    BlockNode *bs = bdrv_open_on_node(file, fmt, NULL, &err);
    ok(!bs, "%s: %s: the image is refused", fmt, what);
    snprintf(name, sizeof(name), "%s: %s: the core names the file once", fmt, what);
    is_msg(err.msg, want, name);
    bdrv_close(bs);
}

int main(void)
{
    static uint8_t img[4096];
    check("vdi", img, 100, "file too short for a VDI header (100 bytes)", "short file");
    check("qed", img, 40, "file too short for a QED header (40 bytes)", "short file");

    memcpy(img, "KDMV", 4); /* a sparse extent header of version 9 */
    img[4] = 9;
    check("vmdk", img, sizeof(img), "unsupported VMDK sparse extent version 9 (1 to 3 are supported)",
          "monolithic sparse");

    const char *desc = "# Disk DescriptorFile\nversion=1\nthis is no line\n";
    check("vmdk", desc, strlen(desc), "descriptor line 3 is neither a comment, a key = value pair nor an extent",
          "descriptor");
    const char *noaccess = "# Disk DescriptorFile\nversion=1\nNOACCESS 2048 SPARSE \"x-s001.vmdk\"\n";
    check("vmdk", noaccess, strlen(noaccess), "extent \"x-s001.vmdk\" (SPARSE) is marked NOACCESS", "extent");

    memset(img, 0, sizeof(img));
    Error err;
    slot_error("vhdx", img, sizeof(img), &err);
    ok(strncmp(err.msg, "file too short for a VHDX image", 31) == 0, "vhdx: the open slot writes the reason only");

    memset(&err, 0, sizeof(err));
    ok(!bdrv_open_file("/nonexistent-dir/x.img", NULL, true, &err), "file: a missing file is refused");
    is_msg(err.msg, "/nonexistent-dir/x.img: No such file or directory", "file: the core names the file once");

    BlockNode *disk = bdrv_open_memory(img, sizeof(img), true);
    char want[512];
    snprintf(want, sizeof(want), "%s: --offset 8192 is beyond the end of the disk (4096 bytes)", disk->filename);
    memset(&err, 0, sizeof(err));
    BlockNode *w = bdrv_open_window(disk, 8192, -1, &err);
    ok(!w, "window: an offset past the end is refused");
    is_msg(err.msg, want, "window: the core names the file once");
    bdrv_close(w);
    bdrv_close(disk);
    return done_testing();
}
