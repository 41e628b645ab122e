/* SPDX-License-Identifier: MIT */
/*
 * layouts.h - image layouts that one format driver owns and another driver builds too: the fixed-VHD
 * footer with its CHS geometry (drivers/vpc.c), which drivers/emulate.c puts after a node's bytes for
 * --emulate. Each fact has its home in the driver of its format; this header only declares them.
 * Drivers include it; the front end knows no formats and does not.
 */
#ifndef IMGFUSE_DRIVERS_LAYOUTS_H
#define IMGFUSE_DRIVERS_LAYOUTS_H

#include <stdint.h>

#define VPC_FOOTER_SIZE 512
#define VPC_MAX_CREATE_SECTORS (2040LL << 21) /* 2040 GiB, the format's limit */

/* A sealed fixed-disk footer (VPC_FOOTER_SIZE bytes at f) for a disk of sectors 512-byte sectors: the VHD
 * specification's CHS geometry for that count, current and original size sectors x 512, creator app
 * (4 characters) and creator_version, a time stamp, a random UUID and the checksum. */
void vpc_fixed_footer(uint8_t *f, int64_t sectors, const char *creator, uint32_t creator_version);

#endif
