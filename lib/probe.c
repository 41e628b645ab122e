/* SPDX-License-Identifier: MIT */
/*
 * probe.c - the one table of every format magic the project knows: for each format its description,
 * where its magic lives (from the start of the file, or before its end like a DMG trailer or a fixed
 * VHD footer), the bytes, and the driver that reads it (NULL: none yet).  Probing consults it after the
 * drivers' own probe functions found nothing: a known format without a driver is refused by name
 * instead of being served as raw, a known magic whose driver declined is handed to that driver so it
 * says why.  The raw driver's sector-0 write guard asks the same table.  Plain disks (MBR, GPT, ISO9660,
 * file systems) have no entry: they are raw disks and must never be refused.  It knows no FUSE.
 */
#include "block_int.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAIL_BYTES 512

typedef enum { AT_START, BEFORE_END } MagicWhere;

typedef struct KnownFormat {
    const char *what;       /* named in messages: "VHDX image" */
    const char *driver;     /* the driver that reads it, NULL = none yet */
    MagicWhere where;
    size_t offset;          /* AT_START: bytes from the start; BEFORE_END: bytes before the end */
    const char *magic;
    size_t magic_len;
    int version;            /* >= 0: BE u32 right after a 4-byte magic must equal it (qcow family) */
    bool hint_only;         /* never picked by probing, only named in info (fixed VHD: raw, as in QEMU) */
} KnownFormat;

#define M(s) s, sizeof(s) - 1

/* First match wins; entries with a version check come before the same magic without one. */
static const KnownFormat known_formats[] = {
    { "qcow2 image", "qcow2", AT_START, 0, M("QFI\xfb"), 2, false },
    { "qcow2 image", "qcow2", AT_START, 0, M("QFI\xfb"), 3, false },
    { "qcow (version 1) image", "qcow", AT_START, 0, M("QFI\xfb"), 1, false },
    { "qcow image of an unknown version", "qcow2", AT_START, 0, M("QFI\xfb"), -1, false },
    { "QED image", "qed", AT_START, 0, M("QED\0"), -1, false },
    { "VMDK sparse image", "vmdk", AT_START, 0, M("KDMV"), -1, false },
    { "VMDK COWD image", "vmdk", AT_START, 0, M("COWD"), -1, false },
    { "VMDK descriptor", "vmdk", AT_START, 0, M("# Disk DescriptorFile"), -1, false },
    { "VMDK seSparse extent", "vmdk", AT_START, 0, M("\xbe\xba\xfe\xca"), -1, false },
    { "dynamic VHD image", "vpc", AT_START, 0, M("conectix"), -1, false },
    { "VDI image", "vdi", AT_START, 0x40, M("\x7f\x10\xda\xbe"), -1, false },
    { "VHDX image", "vhdx", AT_START, 0, M("vhdxfile"), -1, false },
    { "Parallels image", "parallels", AT_START, 0, M("WithoutFreeSpace"), -1, false },
    { "Parallels image", "parallels", AT_START, 0, M("WithouFreSpacExt"), -1, false },
    { "Bochs image", "bochs", AT_START, 0, M("Bochs Virtual HD Image"), -1, false },
    { "cloop compressed image", "cloop", AT_START, 0, M("#!/bin/sh\n#V2.0 Format\n"), -1, false },
    { "EWF (E01) evidence file", "ewf", AT_START, 0, M("EVF\x09\x0d\x0a\xff\x00"), -1, false },
    { "EWF2 (Ex01) evidence file", "ewf", AT_START, 0, M("EVF2\x0d\x0a\x81\x00"), -1, false },
    { "EWF logical evidence (L01) file", "ewf", AT_START, 0, M("LVF\x09\x0d\x0a\xff\x00"), -1, false },
    { "EWF2 logical evidence (Lx01) file", "ewf", AT_START, 0, M("LEF2\x0d\x0a\x81\x00"), -1, false },
    { "AFF evidence file", "aff", AT_START, 0, M("AFF10\r\n"), -1, false },
    { "LUKS encrypted container", "luks", AT_START, 0, M("LUKS\xba\xbe"), -1, false },
    { "DMG (UDIF) image", "dmg", BEFORE_END, TAIL_BYTES, M("koly"), -1, false },
    { "cloop V3 compressed image", "cloop", BEFORE_END, 8, M("\nCLOOP3\n"), -1, false },
    { "cloop V4.0 compressed image (header at the end)", "cloop", BEFORE_END, 136, M("#!/bin/sh\n#V4.0"), -1,
      false },
    { "fixed VHD image", "vpc", BEFORE_END, TAIL_BYTES, M("conectix"), -1, true },
};

/* Does e's magic (and version) sit in buf, which holds len bytes of its region (head or tail)? */
static bool entry_matches(const KnownFormat *e, const uint8_t *buf, size_t len, bool magic_only)
{
    size_t off = e->where == AT_START ? e->offset : TAIL_BYTES - e->offset; /* the tail: TAIL_BYTES long */
    if (len < off || len - off < e->magic_len || memcmp(buf + off, e->magic, e->magic_len) != 0)
        return false;
    if (magic_only || e->version < 0)
        return true;
    return len - off >= e->magic_len + 4 && ld_be32(buf + off + e->magic_len) == (uint32_t)e->version;
}

const char *bdrv_known_magic_at_start(const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < ARRAY_SIZE(known_formats); i++)
        if (known_formats[i].where == AT_START && entry_matches(&known_formats[i], buf, len, true))
            return known_formats[i].what;
    return NULL;
}

/* The first bytes (up to PROBE_BUF_SIZE) and the last TAIL_BYTES of file; lengths 0 when unreadable. */
static int read_ends(BlockNode *file, uint8_t *head, size_t *hlen, uint8_t *tail, size_t *tlen)
{
    int64_t len = bdrv_getlength(file);
    *hlen = *tlen = 0;
    if (len < 0)
        return (int)len;
    size_t n = (size_t)MIN(len, PROBE_BUF_SIZE);
    if (n && bdrv_pread(file, 0, (int64_t)n, head) < 0)
        return -EIO;
    *hlen = n;
    size_t t = (size_t)MIN(len, TAIL_BYTES); /* a shorter file ends the tail, zeros before it */
    memset(tail, 0, TAIL_BYTES - t);
    if (t && bdrv_pread(file, len - (int64_t)t, (int64_t)t, tail + TAIL_BYTES - t) == 0)
        *tlen = TAIL_BYTES;
    return 0;
}

/* The table entry file looks like, hint-only entries included; NULL when none. */
static const KnownFormat *known_format_of(BlockNode *file)
{
    uint8_t *head = malloc(PROBE_BUF_SIZE), *tail = malloc(TAIL_BYTES);
    const KnownFormat *found = NULL;
    size_t hlen, tlen;
    if (head && tail && read_ends(file, head, &hlen, tail, &tlen) == 0) {
        for (size_t i = 0; i < ARRAY_SIZE(known_formats) && !found; i++) {
            const KnownFormat *e = &known_formats[i];
            if (e->where == AT_START ? entry_matches(e, head, hlen, false) : entry_matches(e, tail, tlen, false))
                found = e;
        }
    }
    free(head);
    free(tail);
    return found;
}

int bdrv_probe_known(BlockNode *file, const BlockDriver **drv, Error *err)
{
    const KnownFormat *e = known_format_of(file);
    if (!e || e->hint_only)
        return 0;
    const BlockDriver *d = e->driver ? bdrv_find_driver(e->driver) : NULL;
    if (d) {
        *drv = d;
        return 0;
    }
    error_set(err, ENOTSUP, "%s: %s: no driver for this format yet (use -f raw to see the file's bytes)",
              file->filename, e->what);
    return -ENOTSUP;
}

const char *bdrv_known_format_hint(BlockNode *file, const char **driver)
{
    const KnownFormat *e = known_format_of(file);
    if (!e)
        return NULL;
    *driver = e->driver;
    return e->what;
}
