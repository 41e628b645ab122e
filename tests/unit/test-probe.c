/* SPDX-License-Identifier: MIT */
/*
 * test-probe.c - unit tests of lib/probe.c, the table of known format magics, on in-memory images: each
 * format without a driver is refused by name on a probe (head magics, and DMG's trailer before the end),
 * a known magic whose driver declined goes to that driver (EWF2 and logical EWF to ewf, which refuses them
 * by name; cloop V3 and footer-V4.0 from the tail), plain disks (MBR, GPT, ISO9660) and a fixed VHD stay
 * raw, -f raw opens them all, and the raw sector-0 guard's magic check.
 */
#include "block.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <string.h>

#define IMG_SIZE 65536

static uint8_t img[IMG_SIZE];

/* img filled with 0x5a, magic (len bytes) at off from the start, or off bytes before the end. */
static void put_magic(const char *magic, size_t len, size_t off, bool from_end)
{
    memset(img, 0x5a, sizeof img);
    memcpy(img + (from_end ? IMG_SIZE - off : off), magic, len);
}

/* Opens img probed; returns the driver name ("" on failure) and leaves the message in err. */
static const char *probe_open(Error *err, const char *format)
{
    static char name[32];
    memset(err, 0, sizeof *err);
    BlockNode *bs = bdrv_open_on_node(bdrv_open_memory(img, sizeof img, true), format, NULL, err);
    snprintf(name, sizeof name, "%s", bs ? bs->drv->name : "");
    if (bs)
        bdrv_close(bs);
    return name;
}

/* Formats whose refusal a driver replaced: the magic goes to that driver, which says why it declines. */
static void test_driver_now(void)
{
    static const struct {
        const char *magic;
        size_t len;
        const char *reason;
    } cases[] = {
        { "QFI\xfb\0\0\0\x01", 8, "cluster_bits 90 is out of range (9 to 16)" },
        { "WithoutFreeSpace", 16, "unsupported Parallels version 1515870810 (only 2)" },
        { "WithouFreSpacExt", 16, "unsupported Parallels version 1515870810 (only 2)" },
        { "\xbe\xba\xfe\xca", 4, "a seSparse extent holds only the changes of an ESXi snapshot" },
        { "LUKS\xba\xbe\0\x01", 8, "LUKS1 cipher name too long" },
        { "LUKS\xba\xbe\0\x02", 8, "LUKS2 header: no valid copy" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        Error err;
        put_magic(cases[i].magic, cases[i].len, 0, false);
        const char *drv = probe_open(&err, NULL);
        ok(!drv[0] && strstr(err.msg, cases[i].reason) && !strstr(err.msg, "no driver"), "%s goes to its driver: %s",
           cases[i].reason, err.msg);
    }
}

/* E01 and AFF have drivers now (drivers/ewf.c, aff.c): a bare magic goes to them, and they say why. */
static void test_ewf_magic(void)
{
    Error err;
    put_magic("EVF\x09\x0d\x0a\xff\x00", 8, 0, false);
    const char *drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "<memory>: cannot open as EWF: "), "an E01 magic goes to the ewf driver: %s",
       err.msg);
    ok(bdrv_known_magic_at_start(img, sizeof img) != NULL, "EWF (E01): the sector-0 guard knows its magic");
    put_magic("AFF10\r\n", 7, 0, false);
    drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "<memory>: AFF images are read by AFFLIB from a file name"),
       "an AFF magic goes to the aff driver: %s", err.msg);
    ok(bdrv_known_magic_at_start(img, sizeof img) != NULL, "AFF: the sector-0 guard knows its magic");
    static const char *const ewf_variants[][2] = {
        { "EVF2\x0d\x0a\x81\x00", "<memory>: EWF2 (Ex01) evidence file: not readable (libewf 20140813 reads EWF "
          "version 1 only: E01, S01)" },
        { "LVF\x09\x0d\x0a\xff\x00", "<memory>: logical evidence file (L01): holds files, not a disk image" },
        { "LEF2\x0d\x0a\x81\x00", "<memory>: logical evidence file (Lx01): holds files, not a disk image" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(ewf_variants); i++) {
        put_magic(ewf_variants[i][0], 8, 0, false);
        drv = probe_open(&err, NULL);
        ok(!drv[0] && err.errnum == ENOTSUP && strcmp(err.msg, ewf_variants[i][1]) == 0,
           "an EWF2 or logical EWF magic goes to the ewf driver, which refuses it by name: %s", err.msg);
        ok(strcmp(probe_open(&err, "raw"), "raw") == 0, "... and it opens with -f raw");
        ok(bdrv_known_magic_at_start(img, sizeof img) != NULL, "... and the sector-0 guard knows its magic");
    }
}

/* cloop V3 ("\nCLOOP3\n" at the end) and V4.0 with its header at the end are found from the tail. */
static void test_cloop_tail(void)
{
    Error err;
    put_magic("\nCLOOP3\n", 8, 8, true);
    const char *drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "cloop V3 footer version 1515870810 not supported"),
       "a V3 cloop footer goes to the cloop driver: %s", err.msg);
    put_magic("#!/bin/sh\n#V4.0 Format\n", 23, 136, true);
    drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "cloop block size 1515870810 invalid"),
       "a V4.0 cloop header at the end goes to the cloop driver: %s", err.msg);
}

static void test_not_refused(void)
{
    Error err;
    put_magic("\x55\xaa", 2, 510, false);
    ok(strcmp(probe_open(&err, NULL), "raw") == 0, "an MBR disk is raw");
    put_magic("EFI PART", 8, 512, false);
    ok(strcmp(probe_open(&err, NULL), "raw") == 0, "a GPT disk is raw");
    put_magic("CD001", 5, 32769, false);
    ok(strcmp(probe_open(&err, NULL), "raw") == 0, "an ISO9660 image is raw");
    put_magic("conectix", 8, 512, true);
    ok(strcmp(probe_open(&err, NULL), "raw") == 0, "a fixed VHD (footer at the end) probes as raw, as in QEMU");
    ok(bdrv_known_magic_at_start(img, sizeof img) == NULL, "no start magic in a fixed VHD");
    memset(img, 0, sizeof img);
    ok(strcmp(probe_open(&err, NULL), "raw") == 0, "zeros are raw");
    ok(bdrv_known_magic_at_start(img, 3) == NULL, "three bytes match nothing");
}

static void test_declined(void)
{
    Error err;
    put_magic("QFI\xfb\0\0\0\x04", 8, 0, false);
    const char *drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "version 4"), "a qcow2 magic of version 4 goes to the qcow2 driver: %s", err.msg);
    /* VHDX has a driver now: the magic goes to it, which says why it refuses a 64 KiB file */
    put_magic("vhdxfile", 8, 0, false);
    drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "file too short for a VHDX image (65536 bytes, headers and region tables need "
                                  "327680)"), "a VHDX magic goes to the vhdx driver: %s", err.msg);
    ok(bdrv_known_magic_at_start(img, sizeof img) != NULL, "VHDX: the sector-0 guard knows its magic");
    put_magic("#!/bin/sh\n#V2.0 Format\n", 23, 0, false);
    drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "cloop block size"), "a cloop magic goes to the cloop driver: %s", err.msg);
    ok(bdrv_known_magic_at_start(img, sizeof img) != NULL, "cloop: the sector-0 guard knows its magic");
    put_magic("Bochs Virtual HD Image", 23, 0, false);
    drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "only growing redologs"), "a Bochs magic goes to the bochs driver: %s", err.msg);
    ok(bdrv_known_magic_at_start(img, sizeof img) != NULL, "Bochs: the sector-0 guard knows its magic");
    put_magic("koly", 4, 512, true);
    drv = probe_open(&err, NULL);
    ok(!drv[0] && strstr(err.msg, "DMG data fork passes the trailer"), "a DMG trailer goes to the dmg driver: %s",
       err.msg);
}

int main(void)
{
    test_driver_now();
    test_ewf_magic();
    test_cloop_tail();
    test_not_refused();
    test_declined();
    return done_testing();
}
