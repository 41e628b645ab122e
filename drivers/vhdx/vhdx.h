/* SPDX-License-Identifier: MIT */
/*
 * vhdx.h - the VHDX on-disk layout shared by the files of the VHDX driver (the reader in vhdx.c, the
 * writer in write.c, the image creator): fixed offsets and sizes of the format, the driver's memory and work
 * budgets, field offsets of headers and log entries, BAT entry states, the well-known GUIDs of regions
 * and metadata items, and the CRC-32C and GUID helpers every structure needs.
 */
#ifndef IMGFUSE_VHDX_H
#define IMGFUSE_VHDX_H

#include "block.h"
#include "util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VHDX_HEADER1_OFF (64 * KiB)
#define VHDX_HEADER2_OFF (128 * KiB)
#define VHDX_RT1_OFF (192 * KiB)
#define VHDX_RT2_OFF (256 * KiB)
#define VHDX_HEADER_BYTES 4096
#define VHDX_RT_BYTES (64 * KiB)
#define VHDX_RT_MAX_ENTRIES 2047
#define VHDX_MD_TABLE_BYTES (64 * KiB)
#define VHDX_MD_MAX_ENTRIES 2047
#define VHDX_MD_MAX_ITEM (1 * MiB)
#define VHDX_MIN_BLOCK (1 * MiB)
#define VHDX_MAX_BLOCK (256 * MiB)
#define VHDX_MAX_SIZE (64 * TiB)
#define VHDX_ALIGN (1 * MiB)          /* regions, the log and blocks sit on 1 MiB boundaries */
#define VHDX_SECTOR_BITMAP_BYTES (1 * MiB)
/* 32 MiB of BAT in memory: a 64 TiB disk with 16 MiB blocks, or 4 TiB with 1 MiB blocks. */
#define VHDX_MAX_BAT_ENTRIES (4u << 20)
/* A log longer than this is not scanned (a clean image's log is never read at all). */
#define VHDX_MAX_LOG_BYTES (256 * MiB)
/* The longest log entry read (an entry is read whole to check its CRC); longer ones are not valid here. */
#define VHDX_MAX_LOG_ENTRY_BYTES (16 * MiB)
/* Bytes of log entries checksummed while looking for the active sequence: overlapping entries cost more. */
#define VHDX_LOG_SCAN_FACTOR 4
/* Data sectors and zero ranges the replay overlay may hold. */
#define VHDX_MAX_OVERLAY_BYTES (64 * MiB)
#define VHDX_MAX_OVERLAY_RECORDS 65536
#define VHDX_LOG_SECTOR 4096
/* Sector-bitmap bytes one lookup looks at; callers loop for longer ranges. */
#define VHDX_SCAN_BYTES 4096
#define VHDX_MAX_LOCATOR_KEYS 256
#define VHDX_GUID_STR 39 /* "{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}" and a NUL */

/* Header fields. */
enum { HD_SIG = 0, HD_CRC = 4, HD_SEQ = 8, HD_FILE_WRITE = 16, HD_DATA_WRITE = 32, HD_LOG_GUID = 48,
       HD_LOG_VERSION = 64, HD_VERSION = 66, HD_LOG_LENGTH = 68, HD_LOG_OFFSET = 72 };
/* Log entry header and descriptor fields. */
enum { LE_SIG = 0, LE_CRC = 4, LE_LENGTH = 8, LE_TAIL = 12, LE_SEQ = 16, LE_DESC_COUNT = 24, LE_LOG_GUID = 32,
       LE_FLUSHED = 48, LE_LAST = 56, LE_HEADER_BYTES = 64 };
enum { LD_SIG = 0, LD_TRAILING = 4, LD_LEADING = 8, LD_ZERO_LENGTH = 8, LD_FILE_OFF = 16, LD_SEQ = 24,
       LD_BYTES = 32 };

/* BAT entry states. */
enum { PAYLOAD_NOT_PRESENT = 0, PAYLOAD_UNDEFINED = 1, PAYLOAD_ZERO = 2, PAYLOAD_UNMAPPED = 3,
       PAYLOAD_BAD = 4, /* reserved by the format: this driver marks entries it cannot use with it */
       PAYLOAD_UNMAPPED_V095 = 5, PAYLOAD_FULLY_PRESENT = 6, PAYLOAD_PARTIALLY_PRESENT = 7 };
#define SB_PRESENT 6
#define BAT_STATE(e) ((unsigned)((e) & 7))
#define BAT_OFFSET(e) ((e) >> 20 << 20)

/* GUIDs as stored (the first three fields little-endian). */
typedef struct { uint8_t b[16]; } Guid;
#define G(a, b, c, d0, d1, d2, d3, d4, d5, d6, d7) {{ (a) & 0xff, ((a) >> 8) & 0xff, ((a) >> 16) & 0xff, \
    ((unsigned)(a) >> 24) & 0xff, (b) & 0xff, (b) >> 8, (c) & 0xff, (c) >> 8, d0, d1, d2, d3, d4, d5, d6, d7 }}
extern const Guid GUID_BAT;
extern const Guid GUID_METADATA;
extern const Guid GUID_FILE_PARAMS;
extern const Guid GUID_DISK_SIZE;
extern const Guid GUID_PAGE83;
extern const Guid GUID_LOGICAL_SECTOR;
extern const Guid GUID_PHYSICAL_SECTOR;
extern const Guid GUID_PARENT_LOCATOR;
extern const Guid GUID_LOCATOR_VHDX;

/* CRC-32C (Castagnoli) of buf with the 4 bytes at crc_at counted as zero (crc_at >= len: none). */
uint32_t vhdx_crc(const uint8_t *buf, size_t len, size_t crc_at);
bool vhdx_guid_eq(const uint8_t *a, const Guid *b);
bool vhdx_guid_is_zero(const uint8_t *g);
/* "{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}", lower case, the first three fields little-endian. */
void vhdx_format_guid(const uint8_t *g, char out[VHDX_GUID_STR]);


/* ---------------------------------------------------------------- create.c: new images */

/* What a new image is: validated and defaulted by vhdx_create_check (0: qemu-img's default). */
typedef struct VhdxCreateSpec {
    uint64_t size;
    uint32_t block_size, log_size;
    uint32_t logical_sector, physical_sector;
    bool fixed, block_state_zero;
    /* a differencing image: its parent's DataWriteGuid ("{...}") and locator paths (Win32 form); NULL: none */
    const char *parent_linkage, *relative_path, *absolute_win32_path;
} VhdxCreateSpec;

extern const BlockOptionSpec vhdx_create_options[];
int vhdx_create(const char *filename, const CreateOpts *opts, Error *err);
/* Defaults and limits; a one-line reason naming filename in err. */
int vhdx_create_check(VhdxCreateSpec *spec, const char *filename, Error *err);
/* Writes the image spec (checked) onto file, an empty writable node (a file or a memory node). */
int vhdx_create_on(BlockNode *file, const VhdxCreateSpec *spec, Error *err);

/* ---------------------------------------------------------------- the writer (write.c) */

#include <pthread.h>

/* One piece of the replayed log: bytes of the file at off replaced by data (NULL: zeros). */
typedef struct OverlayRec {
    uint64_t off, len;
    uint8_t *data;
} OverlayRec;

/* Names in the parent locator, in the order they are tried. */
enum { LOC_RELATIVE, LOC_VOLUME, LOC_ABSOLUTE, LOC_PATHS };
static const char *const loc_keys[LOC_PATHS] = { "relative_path", "volume_path", "absolute_win32_path" };

typedef struct VhdxState {
    int64_t file_size;        /* of the file at open */
    int64_t eff_size;         /* the file as the replayed log leaves it (never smaller than file_size) */
    char creator[256];
    uint8_t header[VHDX_HEADER_BYTES]; /* the current header */
    int header_index;         /* 1 or 2 */
    int region_table_index;   /* 1 or 2 */
    uint64_t log_offset;
    uint32_t log_length;
    uint64_t bat_offset, bat_length, md_offset, md_length;

    /* metadata */
    uint32_t block_size;
    bool leave_allocated, has_parent;
    uint64_t size;
    uint32_t logical_sector, physical_sector;
    Guid page83;
    uint64_t chunk_ratio;     /* payload blocks per sector-bitmap block */

    uint64_t data_blocks;
    uint64_t bat_entries;
    uint64_t *bat;            /* BAT_STATE PAYLOAD_BAD marks entries this driver refuses to follow */
    uint64_t allocated_blocks, bad_entries;
    int bad_logged;

    /* the replayed log (read-only overlay; empty when the log was clean) */
    OverlayRec *overlay;
    size_t n_overlay;
    uint64_t overlay_lo, overlay_hi; /* the file range the pieces lie in: reads outside it skip the list */
    uint64_t overlay_bytes;
    uint64_t log_entries, log_seq_first, log_seq_last;

    /* differencing disks */
    char parent_linkage[VHDX_GUID_STR], parent_linkage2[VHDX_GUID_STR];
    char parent_source[BDRV_MAX_BACKING_CANDIDATES][24];

    /* a writable open (write.c); all of it but the flags guarded by lock */
    bool writable;
    pthread_rwlock_t lock;    /* shared: reads and in-place writes; exclusive: allocations, metadata */
    bool guids_done;          /* FileWriteGuid and DataWriteGuid renewed (on the first write) */
    bool broken;              /* a metadata write failed: further metadata updates fail with EIO */
    bool log_active;          /* the header names the log the writer is appending to */
    Guid log_guid;
    uint32_t log_head;        /* where the next entry goes inside the log */
    uint64_t log_seq;         /* of the last entry written */
    uint64_t file_len;        /* the file's length as the writer made it */
    uint64_t data_end;        /* where the next block goes (1 MiB aligned, past everything in the file) */
    uint64_t log_replayed;    /* entries of a dirty log written onto the file at open */
    uint64_t entries_written, blocks_allocated;
} VhdxState;

/* The writer's slots and steps (write.c). vhdx_open_writable runs after a read-only style open (the log
 * replayed into the overlay, everything validated through it): it refuses damaged images, writes the
 * replayed log onto the file and prepares the lock; 0 or a negative errno with err set. */
int vhdx_open_writable(BlockNode *bs, VhdxState *s, Error *err);
void vhdx_close_writable(BlockNode *bs, VhdxState *s);
int vhdx_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags);
int vhdx_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags);
int vhdx_discard(BlockNode *bs, int64_t offset, int64_t bytes);
int vhdx_flush(BlockNode *bs);


#endif
