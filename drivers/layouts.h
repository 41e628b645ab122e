/* SPDX-License-Identifier: MIT */
/*
 * layouts.h - image layouts that one format driver owns and another driver builds too: the fixed-VHD
 * footer with its CHS geometry (drivers/vpc.c) and the VDI pre-header and header (drivers/vdi.c), which
 * drivers/emulate.c puts around a node's bytes for --emulate. Each fact has its home in the driver of its
 * format; this header only declares them. Drivers include it; the front end knows no formats and does not.
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

#define VDI_HEADER_BYTES 0x200 /* pre-header and header; the block map of a new image starts here */

/* The pre-header (text, then the signature and version 1.1) and header of a new static VDI image at h
 * (VDI_HEADER_BYTES bytes, zeroed by the caller): disk_size bytes in 1 MiB blocks, all of them allocated,
 * the block map at VDI_HEADER_BYTES, the data at data_offset, new random UUIDs. */
void vdi_static_header(uint8_t *h, const char *text, uint64_t disk_size, uint32_t data_offset);

#endif
