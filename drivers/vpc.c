/* SPDX-License-Identifier: MIT */
/*
 * vpc.c - the VHD format driver ("vpc", Microsoft Virtual Hard Disk 1.0): fixed disks (the data, then a
 * 512-byte footer), dynamic disks (a footer copy at offset 0, a dynamic disk header, the block allocation
 * table (BAT), blocks of a sector bitmap plus data, the footer at the end) and differencing disks (a
 * dynamic disk whose clear bitmap bits defer to the parent named by its parent locators).  It owns
 * parsing and validating the footer, the dynamic header, the BAT and the parent locators (every field is
 * untrusted: offsets are checked against the file size, the BAT is capped, blocks that point past the
 * end of the file or into metadata read as EIO), the guest-to-host mapping with its sector bitmaps,
 * block status with host offsets, writes (in place for fixed disks; for dynamic and differencing disks a
 * new block is appended, the footer moved behind it, and only then the BAT updated), write-zeroes and
 * discard (zeros in place, no block ever freed), the 511-byte footer of old Virtual PC images, `create`
 * (fixed, dynamic, and differencing over a VHD parent) and `info`.  It does not resolve the parent's
 * path when reading (lib/backing.c does) and knows nothing of FUSE.
 */
#include "block.h"
#include "layouts.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#define VPC_SECTOR 512
#define VPC_HEADER_SIZE 1024
#define VPC_TYPE_FIXED 2
#define VPC_TYPE_DYNAMIC 3
#define VPC_TYPE_DIFF 4
#define VPC_BAT_UNUSED 0xFFFFFFFFu
#define VPC_MIN_BLOCK_SIZE 512u
#define VPC_MAX_BLOCK_SIZE (256u << 20) /* its bitmap is 64 KiB */
/* 16 MiB of BAT in memory: a 2040 GiB disk (the format's limit) at 512 KiB blocks fits. */
#define VPC_MAX_BAT_ENTRIES (4u << 20)
/* Cylinders x heads x sectors of the largest CHS geometry the footer can hold. */
#define VPC_MAX_CHS_SECTORS (65535LL * 16 * 255)
#define VPC_LOCATORS 8
#define VPC_MAX_LOCATOR_BYTES 8192
#define VPC_PARENT_NAME_BYTES 512
/* Bitmap bytes one lookup looks at (16 MiB of guest data); callers loop for longer ranges. */
#define VPC_SCAN_BYTES 4096

/* Footer fields (big-endian). */
enum {
    FT_COOKIE = 0, FT_FEATURES = 8, FT_VERSION = 12, FT_DATA_OFFSET = 16, FT_TIMESTAMP = 24,
    FT_CREATOR_APP = 28, FT_CREATOR_VERSION = 32, FT_CREATOR_OS = 36, FT_ORIGINAL_SIZE = 40,
    FT_CURRENT_SIZE = 48, FT_CYLINDERS = 56, FT_HEADS = 58, FT_SECTORS = 59, FT_TYPE = 60,
    FT_CHECKSUM = 64, FT_UUID = 68, FT_SAVED_STATE = 84,
};

/* Dynamic disk header fields (big-endian). */
enum {
    DH_COOKIE = 0, DH_TABLE_OFFSET = 16, DH_VERSION = 24, DH_MAX_ENTRIES = 28, DH_BLOCK_SIZE = 32,
    DH_CHECKSUM = 36, DH_PARENT_UUID = 40, DH_PARENT_TIME = 56, DH_PARENT_NAME = 64, DH_LOCATORS = 576,
};

/* One parent locator entry inside the dynamic header. */
enum { PL_CODE = 0, PL_DATA_SPACE = 4, PL_DATA_LENGTH = 8, PL_DATA_OFFSET = 16, PL_ENTRY_SIZE = 24 };

#define PLAT_W2RU 0x57327275u /* "W2ru": relative Windows path, UTF-16LE */
#define PLAT_W2KU 0x57326B75u /* "W2ku": absolute Windows path, UTF-16LE */
#define PLAT_MACX 0x4D616358u /* "MacX": file URL, UTF-8 */

/* What one lookup found for a run of guest bytes. */
enum { VPC_ABSENT = 0, VPC_PRESENT = 1 };

typedef struct VpcState {
    pthread_mutex_t lock;  /* guards the BAT, the bitmaps on disk, next_block and the bitsets */
    bool lock_ready;
    uint8_t footer[VPC_FOOTER_SIZE]; /* the footer in use (its checksum verified) */
    uint32_t type;
    int64_t size;          /* virtual size */
    bool size_from_chs;    /* the size is cylinders x heads x sectors, not current_size */
    bool footer_from_copy; /* the footer at the end was missing or damaged: the copy at 0 is used */
    bool footer_511;       /* the footer at the end is the 511-byte one of Virtual PC before 2004 */
    int64_t data_end;      /* where the footer at the end starts (the file's end without one) */
    int64_t file_size;     /* at open */

    /* dynamic and differencing disks */
    uint8_t header[VPC_HEADER_SIZE];
    uint64_t header_offset;
    uint64_t bat_offset;
    uint32_t max_entries;  /* as the header declares */
    uint32_t entries;      /* entries that cover the virtual size (loaded) */
    uint32_t *bat;         /* sector of each block's bitmap, VPC_BAT_UNUSED when not allocated */
    uint8_t *bad;          /* bitset: the entry points past the data or into metadata */
    uint8_t *full;         /* bitset: every bitmap bit of the block is known to be set */
    uint32_t block_size;
    uint32_t bitmap_size;  /* bytes, a multiple of the sector size */
    uint64_t next_block;   /* where a new block goes; the footer follows it */
    uint32_t allocated;
    int bad_logged;
    char parent_source[BDRV_MAX_BACKING_CANDIDATES][8]; /* of each backing candidate: "W2ru", "W2ku", "MacX", "header" */
} VpcState;

/* ---------------------------------------------------------------- small helpers */

static bool bit_get(const uint8_t *set, uint32_t i)
{
    return set[i / 8] & (1u << (i % 8));
}

static void bit_set(uint8_t *set, uint32_t i)
{
    set[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* Sector bitmaps number sectors from the most significant bit of each byte. */
static bool sector_bit(const uint8_t *bitmap, uint64_t sector)
{
    return bitmap[sector / 8] & (0x80u >> (sector % 8));
}

/* The one's complement of the byte sum, the checksum field itself counted as zero. */
static uint32_t vpc_checksum(const uint8_t *buf, size_t len, size_t checksum_at)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < checksum_at || i >= checksum_at + 4)
            sum += buf[i];
    return ~sum;
}

static bool is_dynamic(const VpcState *s)
{
    return s->type == VPC_TYPE_DYNAMIC || s->type == VPC_TYPE_DIFF;
}

static const char *vpc_subformat(uint32_t type)
{
    switch (type) {
    case VPC_TYPE_FIXED: return "fixed";
    case VPC_TYPE_DYNAMIC: return "dynamic";
    case VPC_TYPE_DIFF: return "differencing";
    default: return "unknown";
    }
}

/* A four-character code as printable text ("qemu", "Wi2k"); other bytes become '.'. */
static void fourcc(const uint8_t *p, char out[5])
{
    for (int i = 0; i < 4; i++)
        out[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.';
    out[4] = '\0';
}

static void format_uuid(const uint8_t *u, char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2],
             u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

/* ---------------------------------------------------------------- probe */

/* Dynamic and differencing disks begin with a copy of the footer. A fixed disk has nothing at offset 0
 * (its footer is at the end), so, as in QEMU, it probes as raw and needs --format vpc. */
static int vpc_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && memcmp(buf, "conectix", 8) == 0 ? 100 : 0;
}

/* ---------------------------------------------------------------- footer */

static bool vpc_footer_has_cookie(const uint8_t *buf)
{
    return memcmp(buf + FT_COOKIE, "conectix", 8) == 0;
}

static bool vpc_footer_valid(const uint8_t *buf)
{
    return vpc_footer_has_cookie(buf) && vpc_checksum(buf, VPC_FOOTER_SIZE, FT_CHECKSUM) == ld_be32(buf + FT_CHECKSUM);
}

/* Virtual PC before 2004 wrote a footer of 511 bytes (the 512-byte one without its last reserved byte,
 * so its checksum is the same): the last 511 bytes of the file as a footer, the missing byte zero. */
static int vpc_read_footer_511(BlockNode *bs, VpcState *s, uint8_t *tail)
{
    memset(tail, 0, VPC_FOOTER_SIZE);
    int r = bdrv_pread(bs->file, s->file_size - (VPC_FOOTER_SIZE - 1), VPC_FOOTER_SIZE - 1, tail);
    if (r < 0 || !vpc_footer_valid(tail))
        return r < 0 ? r : 0;
    s->footer_511 = true;
    s->data_end = s->file_size - (VPC_FOOTER_SIZE - 1);
    return 1;
}

/* The footer at the end (512 bytes, or 511 in old images) is the one the format defines; the copy at
 * offset 0 that dynamic disks carry may stand in for a damaged or missing one (the specification
 * allows it). */
static int vpc_read_footer(BlockNode *bs, VpcState *s, Error *err)
{
    uint8_t tail[VPC_FOOTER_SIZE], head[VPC_FOOTER_SIZE], old[VPC_FOOTER_SIZE];
    if (s->file_size < VPC_FOOTER_SIZE) {
        error_set(err, EINVAL, "file too short for a VHD footer (%" PRId64 " bytes)", s->file_size);
        return -EINVAL;
    }
    s->data_end = s->file_size - VPC_FOOTER_SIZE;
    int r = bdrv_pread(bs->file, s->file_size - VPC_FOOTER_SIZE, VPC_FOOTER_SIZE, tail);
    if (r == 0)
        r = bdrv_pread(bs->file, 0, VPC_FOOTER_SIZE, head);
    if (r == 0 && !vpc_footer_valid(tail))
        r = vpc_read_footer_511(bs, s, old);
    if (r < 0) {
        error_set(err, -r, "cannot read the footer: %s", strerror(-r));
        return r;
    }
    if (vpc_footer_valid(tail) || r == 1) {
        memcpy(s->footer, r == 1 ? old : tail, VPC_FOOTER_SIZE);
        return 0;
    }
    if (vpc_footer_valid(head) && ld_be32(head + FT_TYPE) != VPC_TYPE_FIXED) {
        memcpy(s->footer, head, VPC_FOOTER_SIZE);
        s->footer_from_copy = true;
        s->data_end = s->file_size;
        return 0;
    }
    if (vpc_footer_has_cookie(tail))
        error_set(err, EINVAL, "footer checksum mismatch (stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 ")%s",
                  ld_be32(tail + FT_CHECKSUM), vpc_checksum(tail, VPC_FOOTER_SIZE, FT_CHECKSUM),
                  vpc_footer_has_cookie(head) ? ", and the copy at offset 0 is no better" : "");
    else if (vpc_footer_has_cookie(head))
        error_set(err, EINVAL, "no footer at the end of the file, and the copy at offset 0 is not usable "
                  "(footer checksum mismatch or a fixed disk's footer)");
    else
        error_set(err, EINVAL, "no VHD footer (cookie 'conectix') at the end of the file or at offset 0");
    return -EINVAL;
}

/*
 * The virtual size. Virtual PC (and QEMU's own images marked "qemu") size the disk by its CHS geometry,
 * and the current_size field of such images is usually larger than what the guest saw; Hyper-V ("win "),
 * Disk2vhd ("d2v "), XenServer ("tap\0"), XenConverter ("CTXS") and QEMU with force_size ("qem2") use
 * current_size. A geometry at its maximum (65535/16/255) cannot describe a larger disk, so current_size
 * wins there too. This is how QEMU reads these images, so `qemu-img convert` and the mount agree.
 */
static void vpc_set_size(VpcState *s)
{
    static const char *const by_current_size[] = { "win ", "qem2", "d2v ", "CTXS" };
    const uint8_t *app = s->footer + FT_CREATOR_APP;
    bool use_chs = memcmp(app, "tap\0", 4) != 0;
    for (size_t i = 0; i < ARRAY_SIZE(by_current_size); i++)
        if (memcmp(app, by_current_size[i], 4) == 0)
            use_chs = false;
    int64_t chs = (int64_t)ld_be16(s->footer + FT_CYLINDERS) * s->footer[FT_HEADS] * s->footer[FT_SECTORS];
    s->size_from_chs = use_chs && chs != VPC_MAX_CHS_SECTORS;
    uint64_t current = ld_be64(s->footer + FT_CURRENT_SIZE);
    if (s->size_from_chs)
        s->size = chs * VPC_SECTOR;
    else
        s->size = (int64_t)MIN(current / VPC_SECTOR, (uint64_t)INT64_MAX / VPC_SECTOR) * VPC_SECTOR;
}

static int vpc_check_footer(VpcState *s, Error *err)
{
    s->type = ld_be32(s->footer + FT_TYPE);
    if (s->type != VPC_TYPE_FIXED && s->type != VPC_TYPE_DYNAMIC && s->type != VPC_TYPE_DIFF) {
        error_set(err, ENOTSUP, "unsupported disk type %" PRIu32 " (fixed 2, dynamic 3 and differencing 4 "
                  "are known)", s->type);
        return -ENOTSUP;
    }
    vpc_set_size(s);
    if (s->type == VPC_TYPE_FIXED && s->size > s->data_end) {
        error_set(err, EINVAL, "fixed disk of %" PRId64 " bytes does not fit in the file (%" PRId64 " bytes with "
                  "the footer): the file is truncated", s->size, s->file_size);
        return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- dynamic disk header and BAT */

static int vpc_read_header(BlockNode *bs, VpcState *s, Error *err)
{
    uint64_t off = ld_be64(s->footer + FT_DATA_OFFSET);
    if (off < VPC_FOOTER_SIZE || off > (uint64_t)s->file_size || s->file_size - (int64_t)off < VPC_HEADER_SIZE) {
        error_set(err, EINVAL, "dynamic disk header offset %" PRIu64 " is outside the file (%" PRId64 " bytes)", off,
                  s->file_size);
        return -EINVAL;
    }
    s->header_offset = off;
    int r = bdrv_pread(bs->file, (int64_t)off, VPC_HEADER_SIZE, s->header);
    if (r < 0) {
        error_set(err, -r, "cannot read the dynamic disk header: %s", strerror(-r));
        return r;
    }
    if (memcmp(s->header + DH_COOKIE, "cxsparse", 8) != 0) {
        error_set(err, EINVAL, "no dynamic disk header (cookie 'cxsparse') at offset %" PRIu64, off);
        return -EINVAL;
    }
    uint32_t stored = ld_be32(s->header + DH_CHECKSUM);
    uint32_t computed = vpc_checksum(s->header, VPC_HEADER_SIZE, DH_CHECKSUM);
    if (stored != computed) {
        error_set(err, EINVAL, "dynamic disk header checksum mismatch (stored 0x%08" PRIx32 ", computed 0x%08" PRIx32
                  ")", stored, computed);
        return -EINVAL;
    }
    return 0;
}

static int vpc_check_header(VpcState *s, Error *err)
{
    s->block_size = ld_be32(s->header + DH_BLOCK_SIZE);
    if (!is_pow2(s->block_size) || s->block_size < VPC_MIN_BLOCK_SIZE || s->block_size > VPC_MAX_BLOCK_SIZE) {
        error_set(err, EINVAL, "invalid block size %" PRIu32 " (a power of two from 512 bytes to 256 MiB)",
                  s->block_size);
        return -EINVAL;
    }
    /* one bit per sector, padded to whole sectors (never zero: a 512-byte block still has one) */
    s->bitmap_size = (uint32_t)align_up(align_up(s->block_size / VPC_SECTOR, 8) / 8, VPC_SECTOR);
    s->max_entries = ld_be32(s->header + DH_MAX_ENTRIES);
    uint64_t needed = ((uint64_t)s->size + s->block_size - 1) / s->block_size;
    if (needed > VPC_MAX_BAT_ENTRIES) {
        error_set(err, EFBIG, "the BAT would need %" PRIu64 " entries, more than the %u this driver holds in memory",
                  needed, VPC_MAX_BAT_ENTRIES);
        return -EFBIG;
    }
    if (needed > s->max_entries) {
        error_set(err, EINVAL, "the BAT has %" PRIu32 " entries, but a disk of %" PRId64 " bytes needs %" PRIu64,
                  s->max_entries, s->size, needed);
        return -EINVAL;
    }
    s->entries = (uint32_t)needed;
    s->bat_offset = ld_be64(s->header + DH_TABLE_OFFSET);
    uint64_t bat_bytes = (uint64_t)s->entries * 4, bat_end;
    if (!add_ok_u64(s->bat_offset, bat_bytes, &bat_end) || bat_end > (uint64_t)s->file_size) {
        error_set(err, EINVAL, "BAT (offset %" PRIu64 ", %" PRIu64 " bytes) lies past the end of the file (%" PRId64
                  " bytes)", s->bat_offset, bat_bytes, s->file_size);
        return -EINVAL;
    }
    if (bat_bytes && (s->bat_offset < VPC_FOOTER_SIZE ||
                      (s->bat_offset < s->header_offset + VPC_HEADER_SIZE && s->header_offset < bat_end))) {
        error_set(err, EINVAL, "BAT (offset %" PRIu64 ") overlaps the footer copy or the dynamic disk header",
                  s->bat_offset);
        return -EINVAL;
    }
    return 0;
}

/* Does [off, end) of the file overlap the footer copy, the dynamic header or the BAT? */
static bool vpc_overlaps_metadata(const VpcState *s, uint64_t off, uint64_t end)
{
    uint64_t bat_end = s->bat_offset + (uint64_t)s->entries * 4;
    return off < VPC_FOOTER_SIZE || (off < s->header_offset + VPC_HEADER_SIZE && s->header_offset < end) ||
           (s->entries && off < bat_end && s->bat_offset < end);
}

/* Loads the BAT and sorts its entries: allocated, unallocated, or bad (past the data, into metadata).
 * Without the footer at the end the file may have been cut short: a block past its end refuses the
 * image then, where with an intact footer it is one bad entry among good ones. */
static int vpc_load_bat(BlockNode *bs, VpcState *s, Error *err)
{
    size_t n = s->entries ? s->entries : 1;
    s->bat = malloc(n * sizeof(uint32_t));
    s->bad = calloc((n + 7) / 8, 1);
    s->full = calloc((n + 7) / 8, 1);
    if (!s->bat || !s->bad || !s->full) {
        error_set(err, ENOMEM, "out of memory for the BAT (%" PRIu32 " entries)", s->entries);
        return -ENOMEM;
    }
    int r = s->entries ? bdrv_pread(bs->file, (int64_t)s->bat_offset, (int64_t)s->entries * 4, s->bat) : 0;
    if (r < 0) {
        error_set(err, -r, "cannot read the BAT: %s", strerror(-r));
        return r;
    }
    uint64_t data_limit = (uint64_t)s->data_end;
    uint64_t top = MAX(s->header_offset + VPC_HEADER_SIZE, s->bat_offset + (uint64_t)s->entries * 4);
    top = MAX(top, data_limit);
    uint64_t block_bytes = (uint64_t)s->bitmap_size + s->block_size;
    for (uint32_t i = 0; i < s->entries; i++) {
        s->bat[i] = ld_be32(&s->bat[i]);
        if (s->bat[i] == VPC_BAT_UNUSED)
            continue;
        uint64_t off = (uint64_t)s->bat[i] * VPC_SECTOR, end = off + block_bytes;
        if (end > data_limit && s->footer_from_copy) {
            error_set(err, EINVAL, "block %" PRIu32 " ends at %" PRIu64 ", past the end of the file (%" PRId64
                      " bytes), and the footer at the end is missing: the file is truncated", i, end, s->file_size);
            return -EINVAL;
        }
        if (end > data_limit || vpc_overlaps_metadata(s, off, end)) {
            bit_set(s->bad, i);
            continue;
        }
        s->allocated++;
        top = MAX(top, end);
    }
    s->next_block = (uint64_t)align_up((int64_t)top, VPC_SECTOR);
    return 0;
}

/* ---------------------------------------------------------------- parent locators */

/* A Windows path as a POSIX name: "C:/dir/p.vhd" -> "/dir/p.vhd" (then found by base name next to the
 * image if it is not there), "//?/C:/x" -> "/x"; relative names stay relative. In place. */
static void windows_to_posix(char *path)
{
    if (strncmp(path, "//?/", 4) == 0 || strncmp(path, "//./", 4) == 0)
        memmove(path, path + 4, strlen(path + 4) + 1);
    if (((path[0] >= 'A' && path[0] <= 'Z') || (path[0] >= 'a' && path[0] <= 'z')) && path[1] == ':')
        memmove(path, path + 2, strlen(path + 2) + 1);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A MacX locator: a UTF-8 file URL ("file://localhost/Users/x/p.vhd", "file:///x/p.vhd") as a path. */
static bool file_url_to_path(const uint8_t *in, size_t n, char *out, size_t outlen)
{
    char url[VPC_MAX_LOCATOR_BYTES + 1];
    n = MIN(n, sizeof(url) - 1);
    memcpy(url, in, n);
    url[n] = '\0';
    const char *p = url;
    if (strncmp(p, "file://", 7) == 0) {
        p += 7;
        if (strncmp(p, "localhost/", 10) == 0)
            p += 9;
    }
    size_t o = 0;
    for (; *p && o + 1 < outlen; p++) {
        int hi, lo;
        char c = *p;
        if (c == '%' && (hi = hex_value(p[1])) >= 0 && (lo = hex_value(p[2])) >= 0) {
            c = (char)(hi * 16 + lo);
            p += 2;
        }
        if (c == '\0')
            break;
        out[o++] = (unsigned char)c < 0x20 || c == 0x7f ? '?' : c;
    }
    out[o] = '\0';
    return o > 0;
}

/* The name one locator entry holds, or false if the entry is empty, unknown, or out of bounds. */
static bool vpc_locator_name(BlockNode *bs, VpcState *s, const uint8_t *e, char *out, size_t outlen)
{
    uint32_t code = ld_be32(e + PL_CODE), len = ld_be32(e + PL_DATA_LENGTH);
    uint64_t off = ld_be64(e + PL_DATA_OFFSET);
    if ((code != PLAT_W2RU && code != PLAT_W2KU && code != PLAT_MACX) || len == 0 ||
        len > VPC_MAX_LOCATOR_BYTES || off > (uint64_t)s->file_size || len > (uint64_t)s->file_size - off)
        return false;
    uint8_t data[VPC_MAX_LOCATOR_BYTES];
    if (bdrv_pread(bs->file, (int64_t)off, len, data) < 0)
        return false;
    if (code == PLAT_MACX)
        return file_url_to_path(data, len, out, outlen);
    if (!utf16_to_utf8(data, len, false, true, out, outlen))
        return false;
    windows_to_posix(out);
    return out[0] != '\0';
}

/*
 * The parent of a differencing disk: the locators in the order relative (W2ru), absolute (W2ku), MacX,
 * then the parent's name in the header, as backing candidates: the core takes the first of them that the
 * backing-name policy resolves (lib/open.c), and info tells which locator that was.
 */
static int vpc_find_parent(BlockNode *bs, VpcState *s, Error *err)
{
    static const uint32_t order[] = { PLAT_W2RU, PLAT_W2KU, PLAT_MACX };
    static const char *const order_names[] = { "W2ru", "W2ku", "MacX" };
    char cand[4][PATH_MAX];
    int n = 0;
    for (size_t k = 0; k < ARRAY_SIZE(order); k++) {
        for (int i = 0; i < VPC_LOCATORS; i++) {
            const uint8_t *e = s->header + DH_LOCATORS + i * PL_ENTRY_SIZE;
            if (ld_be32(e + PL_CODE) == order[k] && vpc_locator_name(bs, s, e, cand[n], PATH_MAX)) {
                snprintf(s->parent_source[n++], sizeof(s->parent_source[0]), "%s", order_names[k]);
                break;
            }
        }
    }
    if (utf16_to_utf8(s->header + DH_PARENT_NAME, VPC_PARENT_NAME_BYTES, true, true, cand[n], PATH_MAX)) {
        windows_to_posix(cand[n]);
        if (cand[n][0])
            snprintf(s->parent_source[n++], sizeof(s->parent_source[0]), "header");
    }
    if (n == 0) {
        error_set(err, EINVAL, "differencing disk names no parent (no usable parent locator or parent name)");
        return -EINVAL;
    }
    for (int i = 0; i < n; i++)
        if (!(bs->backing_candidates[i] = strdup(cand[i]))) {
            error_set(err, ENOMEM, "out of memory");
            return -ENOMEM;
        }
    bs->backing_name = strdup(cand[0]);
    bs->backing_format_hint = strdup("vpc");
    if (!bs->backing_name || !bs->backing_format_hint) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

/* Where the parent name followed came from: the locator of the candidate the core chose. */
static const char *vpc_parent_source(BlockNode *bs, const VpcState *s)
{
    for (int i = 0; i < BDRV_MAX_BACKING_CANDIDATES && bs->backing_candidates[i]; i++)
        if (bs->backing_name && strcmp(bs->backing_name, bs->backing_candidates[i]) == 0)
            return s->parent_source[i];
    return s->parent_source[0];
}

/* The parent a differencing disk opened with (bs->backing, once the core has attached it), if it is a
 * VHD too: its UUID can be compared with the one recorded in the child's header. NULL otherwise. */
extern const BlockDriver bdrv_vpc;
static const VpcState *vpc_parent_state(BlockNode *bs)
{
    return bs->backing && bs->backing->drv == &bdrv_vpc ? bs->backing->opaque : NULL;
}

/* Whether the parent opened is the disk this one was made from: 1 yes, 0 no, -1 cannot tell. */
static int vpc_parent_matches(BlockNode *bs, const VpcState *s)
{
    const VpcState *p = vpc_parent_state(bs);
    if (s->type != VPC_TYPE_DIFF || !p)
        return -1;
    return memcmp(p->footer + FT_UUID, s->header + DH_PARENT_UUID, 16) == 0;
}

/* A parent found by name alone (a base-name lookup, a copied file) may not be the right one: say so
 * once the chain is attached (the backing_attached slot). The data is still served: the user may have
 * named the parent on purpose with --backing. */
static int vpc_backing_attached(BlockNode *bs, Error *err)
{
    (void)err;
    const VpcState *s = bs->opaque;
    if (vpc_parent_matches(bs, s) == 0) {
        char want[37], got[37];
        format_uuid(s->header + DH_PARENT_UUID, want);
        format_uuid(vpc_parent_state(bs)->footer + FT_UUID, got);
        log_msg("%s: warning: parent %s has UUID %s, but this differencing disk was made from %s", bs->filename,
                bs->backing->filename, got, want);
    }
    return 0;
}

/* ---------------------------------------------------------------- open, close */

static void vpc_close(BlockNode *bs)
{
    VpcState *s = bs->opaque;
    if (!s)
        return;
    free(s->bat);
    free(s->bad);
    free(s->full);
    s->bat = NULL;
    s->bad = s->full = NULL;
    if (s->lock_ready)
        pthread_mutex_destroy(&s->lock);
    s->lock_ready = false;
}

static int vpc_open_dynamic(BlockNode *bs, VpcState *s, Error *err)
{
    int r = vpc_read_header(bs, s, err);
    if (r == 0)
        r = vpc_check_header(s, err);
    if (r == 0)
        r = vpc_load_bat(bs, s, err);
    if (r == 0 && s->type == VPC_TYPE_DIFF)
        r = vpc_find_parent(bs, s, err);
    return r;
}

static int vpc_do_open(BlockNode *bs, VpcState *s, const BlockOpenOpts *opts, Error *err)
{
    s->file_size = bdrv_getlength(bs->file);
    if (s->file_size < 0) {
        error_set(err, (int)-s->file_size, "cannot get the file size: %s", strerror((int)-s->file_size));
        return (int)s->file_size;
    }
    int r = vpc_read_footer(bs, s, err);
    if (r == 0)
        r = vpc_check_footer(s, err);
    if (r == 0 && is_dynamic(s))
        r = vpc_open_dynamic(bs, s, err);
    if (r == 0 && s->type != VPC_TYPE_DIFF && opts && opts->backing && bs->depth == 0) {
        error_set(err, EINVAL, "a %s VHD does not support backing files (only differencing disks have a parent)",
                  vpc_subformat(s->type));
        r = -EINVAL;
    }
    return r;
}

static int vpc_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    VpcState *s = bs->opaque;
    pthread_mutex_init(&s->lock, NULL);
    s->lock_ready = true;
    Error local = { .msg = "", .errnum = 0 };
    int r = vpc_do_open(bs, s, opts, &local);
    if (r < 0) {
        error_set(err, local.errnum ? local.errnum : -r, "%s", local.msg[0] ? local.msg : strerror(-r));
        vpc_close(bs);
        return r;
    }
    if (s->footer_from_copy)
        log_debug("%s: the footer at the end is missing or damaged; using the copy at offset 0", bs->filename);
    bs->request_alignment = VPC_SECTOR;
    return 0;
}

/* ---------------------------------------------------------------- mapping */

static int vpc_bad_block(BlockNode *bs, VpcState *s, uint32_t idx)
{
    if (!__atomic_exchange_n(&s->bad_logged, 1, __ATOMIC_RELAXED))
        log_msg("%s: BAT entry %" PRIu32 " (sector %" PRIu32 ") points past the end of the data or into metadata; "
                "reading that block fails with EIO", bs->filename, idx, s->bat[idx]);
    return -EIO;
}

/* True if the first nbits bits of a sector bitmap are all set. */
static bool bitmap_all_set(const uint8_t *bitmap, uint64_t nbits)
{
    for (uint64_t i = 0; i < nbits / 8; i++)
        if (bitmap[i] != 0xFF)
            return false;
    for (uint64_t sec = nbits / 8 * 8; sec < nbits; sec++)
        if (!sector_bit(bitmap, sec))
            return false;
    return true;
}

/* Under s->lock: how the run of guest bytes from offset (at most bytes, within one block for allocated
 * blocks) is stored. *n gets the run length, *host the file offset of a present run. A block's bitmap
 * is read whole when it is small (up to 16 MiB blocks), and a block found with every bit set is
 * remembered as full: its bitmap is not read again (every block QEMU writes is such a block). */
static int vpc_lookup(BlockNode *bs, VpcState *s, uint64_t offset, uint64_t bytes, uint64_t *n, uint64_t *host)
{
    uint32_t idx = (uint32_t)(offset / s->block_size);
    uint64_t in_block = offset % s->block_size;
    uint64_t max = MIN(bytes, s->block_size - in_block);
    *host = 0;
    *n = max;
    if (idx >= s->entries)
        return VPC_ABSENT;
    if (bit_get(s->bad, idx))
        return vpc_bad_block(bs, s, idx);
    if (s->bat[idx] == VPC_BAT_UNUSED) {
        uint64_t run = max; /* unallocated blocks in a row make one run (a bad entry is not unallocated) */
        for (uint32_t i = idx + 1; run < bytes && i < s->entries && s->bat[i] == VPC_BAT_UNUSED; i++)
            run += s->block_size;
        *n = MIN(run, bytes);
        return VPC_ABSENT;
    }
    uint64_t block = (uint64_t)s->bat[idx] * VPC_SECTOR;
    *host = block + s->bitmap_size + in_block;
    if (bit_get(s->full, idx))
        return VPC_PRESENT;
    uint64_t sectors = s->block_size / VPC_SECTOR, map_bytes = (sectors + 7) / 8;
    uint64_t first = in_block / VPC_SECTOR, last = (in_block + max - 1) / VPC_SECTOR;
    uint64_t from = map_bytes <= VPC_SCAN_BYTES ? 0 : first / 8;
    last = MIN(last, (from + VPC_SCAN_BYTES) * 8 - 1);
    uint64_t nbytes = from == 0 ? MIN(map_bytes, (uint64_t)VPC_SCAN_BYTES) : last / 8 - from + 1;
    uint8_t bitmap[VPC_SCAN_BYTES];
    int r = bdrv_pread(bs->file, (int64_t)(block + from), (int64_t)nbytes, bitmap);
    if (r < 0)
        return r;
    if (from == 0 && nbytes == map_bytes && bitmap_all_set(bitmap, sectors)) {
        bit_set(s->full, idx);
        return VPC_PRESENT;
    }
    /* bitmap[0] is byte 'from' of the block's bitmap: sector sec is bit sec - from * 8 of the buffer */
    bool present = sector_bit(bitmap, first - from * 8);
    uint64_t sec = first + 1;
    while (sec <= last && sector_bit(bitmap, sec - from * 8) == present)
        sec++;
    *n = MIN(sec * VPC_SECTOR - in_block, max);
    return present ? VPC_PRESENT : VPC_ABSENT;
}

static int vpc_lookup_locked(BlockNode *bs, VpcState *s, uint64_t offset, uint64_t bytes, uint64_t *n,
                             uint64_t *host)
{
    pthread_mutex_lock(&s->lock);
    int r = vpc_lookup(bs, s, offset, bytes, n, host);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---------------------------------------------------------------- read, block status */

/* The map of [offset, offset+bytes) of a dynamic or differencing disk: a run present in the image, or
 * absent (the parent's bytes, zeros without one). */
static int vpc_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    VpcState *s = bs->opaque;
    uint64_t n, host;
    (void)opaque;
    int r = vpc_lookup_locked(bs, s, (uint64_t)offset, (uint64_t)bytes, &n, &host);
    if (r < 0)
        return r;
    st->bytes = (int64_t)n;
    if (r == VPC_PRESENT) {
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)host;
        st->host_file = bs->file;
    }
    return 0;
}

static const BlockReadMap vpc_read_map = { .map = vpc_map };

static int vpc_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    VpcState *s = bs->opaque;
    if (s->type == VPC_TYPE_FIXED)
        return bdrv_pread(bs->file, offset, bytes, buf);
    return bdrv_read_mapped(bs, offset, bytes, buf, &vpc_read_map, NULL);
}

static int vpc_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    VpcState *s = bs->opaque;
    memset(st, 0, sizeof(*st));
    if (s->type == VPC_TYPE_FIXED)
        return bdrv_block_status_same_offset(bs, offset, bytes, st);
    return bdrv_status_mapped_locked(bs, offset, bytes, st, &vpc_read_map, NULL);
}

/* ---------------------------------------------------------------- write */

/*
 * Under s->lock: a new block for BAT entry idx at the end of the data. The order keeps the file valid
 * at every step: the footer is first written behind the new block (the old footer is then no longer the
 * last sector and becomes part of the block), the block's bitmap is written, and only after a flush
 * does the BAT entry point at the block. A crash before that leaves an unused tail, never a BAT entry
 * pointing at garbage. The data area is zero (a hole where it lies past the old end of the file).
 * A differencing disk's bitmap starts clear: no sector present, all read from the parent. A dynamic
 * disk's has every bit set, as QEMU writes it: its sectors read as zeros either way, and a full block
 * needs no bitmap read, update and flush on each later write.
 */
static int vpc_alloc_block(BlockNode *bs, VpcState *s, uint32_t idx)
{
    uint64_t block = s->next_block, end = block + s->bitmap_size + s->block_size;
    if (block / VPC_SECTOR >= VPC_BAT_UNUSED || end > (uint64_t)INT64_MAX - VPC_FOOTER_SIZE) {
        log_msg("%s: no room for block %" PRIu32 ": a VHD's blocks must start below 2 TiB in the file", bs->filename,
                idx);
        return -ENOSPC;
    }
    int64_t old_len = bdrv_getlength(bs->file);
    if (old_len < 0)
        return (int)old_len;
    int r = bdrv_pwrite(bs->file, (int64_t)end, VPC_FOOTER_SIZE, s->footer, 0);
    uint64_t data = block + s->bitmap_size;
    if (r == 0 && (uint64_t)old_len > data) /* stale bytes (a trailing footer, junk) inside the new block */
        r = bdrv_pwrite_zeroes(bs->file, (int64_t)data, (int64_t)(MIN((uint64_t)old_len, end) - data), 0);
    bool all_present = s->type == VPC_TYPE_DYNAMIC;
    uint8_t *bitmap = r == 0 ? malloc(s->bitmap_size) : NULL;
    if (r == 0 && !bitmap)
        r = -ENOMEM;
    if (bitmap)
        memset(bitmap, all_present ? 0xFF : 0, s->bitmap_size);
    if (r == 0)
        r = bdrv_pwrite(bs->file, (int64_t)block, s->bitmap_size, bitmap, 0);
    free(bitmap);
    if (r == 0)
        r = bdrv_flush(bs->file);
    if (r < 0)
        return r;
    r = bdrv_pwrite_field(bs->file, (int64_t)(s->bat_offset + (uint64_t)idx * 4), BDRV_FIELD_BE32,
                          (uint32_t)(block / VPC_SECTOR), "bat_update");
    if (r < 0)
        return r;
    s->bat[idx] = (uint32_t)(block / VPC_SECTOR);
    s->next_block = end;
    s->allocated++;
    if (all_present)
        bit_set(s->full, idx);
    return 0;
}

/* Under s->lock: marks sectors [first, first + count) of the block at file offset block present. The
 * data is flushed first, so a bit never claims a sector whose data did not reach the disk. */
static int vpc_set_bits(BlockNode *bs, VpcState *s, uint32_t idx, uint64_t block, uint64_t first, uint64_t count)
{
    uint64_t from = first / 8, nbytes = (first + count - 1) / 8 - from + 1;
    uint8_t *bitmap = malloc(nbytes);
    if (!bitmap)
        return -ENOMEM;
    int r = bdrv_pread(bs->file, (int64_t)(block + from), (int64_t)nbytes, bitmap);
    bool changed = false;
    for (uint64_t sec = first; r == 0 && sec < first + count; sec++) {
        uint8_t *b = &bitmap[sec / 8 - from], m = (uint8_t)(0x80u >> (sec % 8));
        changed |= !(*b & m);
        *b |= m;
    }
    if (r == 0 && changed)
        r = bdrv_flush(bs->file);
    if (r == 0 && changed) {
        bdrv_debug_event(bs->file, "bitmap_update");
        r = bdrv_pwrite(bs->file, (int64_t)(block + from), (int64_t)nbytes, bitmap, 0);
    }
    free(bitmap);
    if (r == 0 && first == 0 && count == s->block_size / VPC_SECTOR)
        bit_set(s->full, idx);
    return r;
}

/* A write within one block. Once a block is allocated and every sector in it is present, writes go
 * to the file outside the lock (blocks never move); else the lock is held until the bitmap says so. */
static int vpc_write_in_block(BlockNode *bs, VpcState *s, uint64_t offset, uint64_t bytes, const uint8_t *buf)
{
    uint32_t idx = (uint32_t)(offset / s->block_size);
    uint64_t in_block = offset % s->block_size;
    if (idx >= s->entries)
        return -EIO; /* cannot happen: the core refuses writes past the virtual size */
    pthread_mutex_lock(&s->lock);
    int r = 0;
    if (bit_get(s->bad, idx))
        r = vpc_bad_block(bs, s, idx);
    else if (s->bat[idx] == VPC_BAT_UNUSED && s->type == VPC_TYPE_DYNAMIC && buffer_is_zero(buf, bytes)) {
        pthread_mutex_unlock(&s->lock); /* zeros into a dynamic disk's empty block: it reads so already */
        return 0;
    } else if (s->bat[idx] == VPC_BAT_UNUSED)
        r = vpc_alloc_block(bs, s, idx);
    if (r < 0) {
        pthread_mutex_unlock(&s->lock);
        return r;
    }
    uint64_t block = (uint64_t)s->bat[idx] * VPC_SECTOR;
    int64_t host = (int64_t)(block + s->bitmap_size + in_block);
    if (bit_get(s->full, idx)) {
        pthread_mutex_unlock(&s->lock);
        return bdrv_pwrite(bs->file, host, (int64_t)bytes, buf, 0);
    }
    r = bdrv_pwrite(bs->file, host, (int64_t)bytes, buf, 0);
    if (r == 0)
        r = vpc_set_bits(bs, s, idx, block, in_block / VPC_SECTOR, bytes / VPC_SECTOR);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Requests are sector-aligned (request_alignment) and inside the virtual size (the core refuses
 * writes past it with ENOSPC). */
static int vpc_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    VpcState *s = bs->opaque;
    if (s->type == VPC_TYPE_FIXED)
        return bdrv_pwrite(bs->file, offset, bytes, buf, flags & BDRV_REQ_FUA);
    if (offset % VPC_SECTOR || bytes % VPC_SECTOR)
        return -EINVAL;
    const uint8_t *p = buf;
    while (bytes > 0) {
        uint64_t n = MIN((uint64_t)bytes, s->block_size - (uint64_t)offset % s->block_size);
        int r = vpc_write_in_block(bs, s, (uint64_t)offset, n, p);
        if (r < 0)
            return r;
        offset += (int64_t)n;
        bytes -= (int64_t)n;
        p += n;
    }
    return flags & BDRV_REQ_FUA ? bdrv_flush(bs->file) : 0;
}

/* ---------------------------------------------------------------- write-zeroes, discard
 *
 * A VHD has no zero-block state: a BAT entry either names a block or says "not allocated", which reads
 * as zeros in a dynamic disk and as the parent in a differencing one, and freeing a block in the middle
 * of the file would leave a hole no BAT entry names. So nothing is freed: sectors the image holds get
 * zeros written in place (a hole punched in the file when unmapping is allowed), sectors a dynamic disk
 * does not hold are left (they read as zeros), and sectors a differencing disk does not hold are written
 * as zeros like any write (the parent must not show through). Discard zeroes what the image holds and
 * leaves the rest, the parent's sectors included: it is a hint.
 */

#define VPC_ZERO_CHUNK (1u << 20)

/* Zeros written at guest [offset, offset + bytes) of a differencing disk, allocating as writes do. */
static int vpc_write_zero_run(BlockNode *bs, uint64_t offset, uint64_t bytes)
{
    uint8_t *zeros = calloc(1, MIN(bytes, (uint64_t)VPC_ZERO_CHUNK));
    int r = zeros ? 0 : -ENOMEM;
    while (r == 0 && bytes > 0) {
        uint64_t n = MIN(bytes, (uint64_t)VPC_ZERO_CHUNK);
        r = vpc_write(bs, (int64_t)offset, (int64_t)n, zeros, 0);
        offset += n;
        bytes -= n;
    }
    free(zeros);
    return r;
}

static int vpc_zero_range(BlockNode *bs, int64_t offset, int64_t bytes, int flags, bool fill_absent)
{
    VpcState *s = bs->opaque;
    if (s->type == VPC_TYPE_FIXED)
        return bdrv_pwrite_zeroes(bs->file, offset, bytes, flags & BDRV_REQ_MAY_UNMAP);
    if (offset % VPC_SECTOR || bytes % VPC_SECTOR)
        return -EINVAL;
    int r = 0;
    while (r == 0 && bytes > 0) {
        uint64_t n, host;
        r = vpc_lookup_locked(bs, s, (uint64_t)offset, (uint64_t)bytes, &n, &host);
        if (r == VPC_PRESENT) /* blocks never move and bits are never cleared: host stays this run's */
            r = bdrv_pwrite_zeroes(bs->file, (int64_t)host, (int64_t)n, flags & BDRV_REQ_MAY_UNMAP);
        else if (r == VPC_ABSENT && s->type == VPC_TYPE_DIFF && fill_absent)
            r = vpc_write_zero_run(bs, (uint64_t)offset, n);
        offset += (int64_t)n;
        bytes -= (int64_t)n;
    }
    return r;
}

static int vpc_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    int r = vpc_zero_range(bs, offset, bytes, flags, true);
    return r == 0 && (flags & BDRV_REQ_FUA) ? bdrv_flush(bs->file) : r;
}

static int vpc_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    return vpc_zero_range(bs, offset, bytes, BDRV_REQ_MAY_UNMAP, false);
}

/* Nothing is cached here: the core flushes the file below. */
static int vpc_flush(BlockNode *bs)
{
    (void)bs;
    return 0;
}

/* ---------------------------------------------------------------- create
 *
 * What `imgfuse create -f vpc` writes, laid out as qemu-img lays out its VHDs: a fixed disk is the data
 * then the footer; a dynamic disk is a footer copy, the dynamic header at 512, the BAT at 1536 (all
 * unused, padded to a sector), then the footer; a differencing disk (-b PARENT -F vpc) adds the parent's
 * UUID, time stamp and name to the header and its locators (W2ru relative, W2ku absolute, UTF-16LE)
 * between the BAT and the footer. Sizes follow the footer's CHS geometry as Virtual PC and qemu-img
 * do: the size asked for is rounded up to the first geometry that holds it (creator "qemu"), unless
 * force_size=on (creator "qem2", the size as asked, geometry 65535/16/255); disks past the largest
 * geometry (about 127 GiB) keep their exact size either way, up to the format's 2040 GiB.
 */

#define VPC_DEFAULT_BLOCK (2u << 20)
#define VPC_TIME_BASE 946684800 /* 2000-01-01 00:00:00 UTC, in Unix time: the footer's epoch */
#define VPC_HEADER_AT VPC_FOOTER_SIZE
#define VPC_BAT_AT (VPC_FOOTER_SIZE + VPC_HEADER_SIZE)

static const BlockOptionSpec vpc_create_options[] = {
    { "subformat", BDRV_OPT_STRING, 0, "dynamic (default) or fixed" },
    { "force_size", BDRV_OPT_BOOL, 0, "on: the size as given, not rounded up to a CHS geometry (default off)" },
    { NULL, 0, 0, NULL },
};

typedef struct VpcCreate {
    bool fixed, force_size;
    const char *filename;
    Error *err;
} VpcCreate;

static int vpc_create_option(const char *key, const char *value, void *opaque)
{
    VpcCreate *c = opaque;
    bool sub = !strcmp(key, "subformat"), force = !strcmp(key, "force_size");
    if ((!sub && !force) || !value) {
        error_set(c->err, EINVAL, "%s: %s vpc creation option '%s'", c->filename, sub || force ? "no value for the" :
                  "unknown", key);
        return -EINVAL;
    }
    if (sub && (strcmp(value, "dynamic") == 0 || strcmp(value, "fixed") == 0)) {
        c->fixed = value[0] == 'f';
        return 0;
    }
    if (force && (strcmp(value, "on") == 0 || strcmp(value, "off") == 0)) {
        c->force_size = value[1] == 'n';
        return 0;
    }
    error_set(c->err, EINVAL, "%s: vpc creation option '%s' must be %s, not '%s'", c->filename, key,
              sub ? "dynamic or fixed" : "on or off", value);
    return -EINVAL;
}

/* The VHD specification's CHS geometry for a disk of sectors sectors (at most 65535/16/255). */
static void vpc_geometry(int64_t sectors, uint32_t *cyl, uint32_t *heads, uint32_t *spt)
{
    int64_t total = MIN(sectors, VPC_MAX_CHS_SECTORS), per_track_groups;
    *spt = 255;
    *heads = 16;
    if (total < 65535LL * 16 * 63) {
        *spt = 17;
        per_track_groups = total / 17;
        *heads = (uint32_t)MAX(4, (per_track_groups + 1023) / 1024);
        if (per_track_groups >= (int64_t)*heads * 1024 || *heads > 16)
            *spt = 31, *heads = 16;
        if (total / *spt >= (int64_t)*heads * 1024)
            *spt = 63, *heads = 16;
    }
    *cyl = (uint32_t)(total / *spt / *heads);
}

/* The disk's sectors and the footer's geometry for a request of bytes (a multiple of 512): the first
 * geometry that holds it, or the largest one and the size as asked when force_size is on or no
 * geometry does. -EFBIG past 2040 GiB. */
static int vpc_create_geometry(bool force, uint64_t bytes, int64_t *sectors, uint32_t chs[3])
{
    int64_t want = (int64_t)MIN(bytes / VPC_SECTOR, (uint64_t)VPC_MAX_CHS_SECTORS);
    chs[0] = 65535, chs[1] = 16, chs[2] = 255;
    if (!force) {
        chs[0] = chs[1] = chs[2] = 0;
        for (int64_t i = 0; want > (int64_t)chs[0] * chs[1] * chs[2]; i++)
            vpc_geometry(want + i, &chs[0], &chs[1], &chs[2]);
    }
    *sectors = (int64_t)chs[0] * chs[1] * chs[2];
    if (*sectors == VPC_MAX_CHS_SECTORS)
        *sectors = (int64_t)(bytes / VPC_SECTOR);
    return *sectors > VPC_MAX_CREATE_SECTORS ? -EFBIG : 0;
}

static void vpc_random_uuid(uint8_t *u)
{
    if (getrandom(u, 16, GRND_NONBLOCK) != 16)
        for (int i = 0; i < 16; i++)
            u[i] = (uint8_t)(rand() >> 7);
    u[6] = (uint8_t)((u[6] & 0x0F) | 0x40); /* version 4, variant 1 */
    u[8] = (uint8_t)((u[8] & 0x3F) | 0x80);
}

static uint32_t vpc_timestamp(time_t t)
{
    return t > VPC_TIME_BASE ? (uint32_t)(t - VPC_TIME_BASE) : 0;
}

/* A new footer of type for a disk of sectors sectors with geometry chs, made by creator (4 characters). */
static void vpc_new_footer(uint8_t *f, uint32_t type, int64_t sectors, const uint32_t chs[3], const char *creator,
                           uint32_t creator_version)
{
    memset(f, 0, VPC_FOOTER_SIZE);
    memcpy(f + FT_COOKIE, "conectix", 8);
    st_be32(f + FT_FEATURES, 2);
    st_be32(f + FT_VERSION, 0x00010000);
    st_be64(f + FT_DATA_OFFSET, type == VPC_TYPE_FIXED ? UINT64_MAX : VPC_HEADER_AT);
    memcpy(f + FT_CREATOR_APP, creator, 4);
    st_be32(f + FT_CREATOR_VERSION, creator_version);
    memcpy(f + FT_CREATOR_OS, "Wi2k", 4);
    st_be64(f + FT_ORIGINAL_SIZE, (uint64_t)sectors * VPC_SECTOR);
    st_be64(f + FT_CURRENT_SIZE, (uint64_t)sectors * VPC_SECTOR);
    st_be16(f + FT_CYLINDERS, (uint16_t)chs[0]);
    f[FT_HEADS] = (uint8_t)chs[1];
    f[FT_SECTORS] = (uint8_t)chs[2];
    st_be32(f + FT_TYPE, type);
}

/* A footer's time stamp, UUID and checksum, the last fields written. */
static void vpc_seal_footer(uint8_t *f)
{
    st_be32(f + FT_TIMESTAMP, vpc_timestamp(time(NULL)));
    vpc_random_uuid(f + FT_UUID);
    st_be32(f + FT_CHECKSUM, 0);
    st_be32(f + FT_CHECKSUM, vpc_checksum(f, VPC_FOOTER_SIZE, FT_CHECKSUM));
}

/* layouts.h: the footer of a fixed disk that is not created here (emulate.c's disk.vhd). */
void vpc_fixed_footer(uint8_t *f, int64_t sectors, const char *creator, uint32_t creator_version)
{
    uint32_t chs[3];
    vpc_geometry(sectors, &chs[0], &chs[1], &chs[2]);
    vpc_new_footer(f, VPC_TYPE_FIXED, sectors, chs, creator, creator_version);
    vpc_seal_footer(f);
}

/* UTF-8 text as UTF-16 (big- or little-endian), '/' as '\\' when windows_path; the bytes written, or -1
 * if it is not valid UTF-8 or does not fit in outlen bytes. */
static ssize_t vpc_utf16(const char *in, bool big_endian, bool windows_path, uint8_t *out, size_t outlen)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p;) {
        uint32_t c = *p++;
        int more = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
        if (more < 0)
            return -1;
        c &= more ? 0x3Fu >> more : 0x7Fu;
        for (int k = 0; k < more; k++, p++) {
            if ((*p & 0xC0) != 0x80)
                return -1;
            c = c << 6 | (*p & 0x3Fu);
        }
        if (windows_path && c == '/')
            c = '\\';
        uint16_t units[2] = { (uint16_t)c, 0 };
        int n = 1;
        if (c >= 0x10000)
            units[0] = (uint16_t)(0xD800 + ((c - 0x10000) >> 10)), units[1] = (uint16_t)(0xDC00 + (c & 0x3FF)), n = 2;
        for (int k = 0; k < n; k++, o += 2) {
            if (o + 2 > outlen)
                return -1;
            out[o + (big_endian ? 0 : 1)] = (uint8_t)(units[k] >> 8);
            out[o + (big_endian ? 1 : 0)] = (uint8_t)units[k];
        }
    }
    return (ssize_t)o;
}

/* What a differencing disk records of its parent, read from the parent opened as a VHD. */
typedef struct VpcParent {
    uint8_t footer[VPC_FOOTER_SIZE];
    uint32_t block_size;
    int64_t size;
    uint32_t mtime;
    char path[PATH_MAX];     /* as opened: relative to the child's directory unless absolute */
    char abs[PATH_MAX];      /* its absolute path, for the W2ku locator */
} VpcParent;

static int vpc_open_parent(const char *filename, const CreateOpts *opts, VpcParent *p, Error *err)
{
    const char *slash = strrchr(filename, '/');
    int n = opts->backing[0] == '/' ? snprintf(p->path, sizeof(p->path), "%s", opts->backing)
            : snprintf(p->path, sizeof(p->path), "%.*s/%s", slash ? (int)(slash - filename) : 1,
                       slash ? filename : ".", opts->backing);
    struct stat st;
    if (n < 0 || (size_t)n >= sizeof(p->path) || !realpath(p->path, p->abs) || stat(p->abs, &st) < 0) {
        error_set(err, ENOENT, "%s: cannot find the parent %s: %s", filename, opts->backing, strerror(errno));
        return -ENOENT;
    }
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.format = "vpc";
    o.no_backing = true;
    BlockNode *b = bdrv_open(p->abs, &o, err);
    if (!b)
        return -(err->errnum ? err->errnum : EIO);
    int r = 0;
    const VpcState *ps = b->drv == &bdrv_vpc ? b->opaque : NULL;
    if (!ps) {
        error_set(err, EINVAL, "%s: the parent %s did not open as a VHD", filename, opts->backing);
        r = -EINVAL;
    } else {
        memcpy(p->footer, ps->footer, VPC_FOOTER_SIZE);
        p->block_size = is_dynamic(ps) ? ps->block_size : VPC_DEFAULT_BLOCK;
        p->size = ps->size;
        p->mtime = vpc_timestamp(st.st_mtime);
    }
    bdrv_close(b);
    return r;
}

/* The parent locator entry slot of the header: platform code, data in [off, off + len) of the file. */
static void vpc_put_locator(uint8_t *hdr, int slot, uint32_t code, uint64_t off, uint32_t len)
{
    uint8_t *e = hdr + DH_LOCATORS + slot * PL_ENTRY_SIZE;
    st_be32(e + PL_CODE, code);
    st_be32(e + PL_DATA_SPACE, (uint32_t)align_up(len, VPC_SECTOR) / VPC_SECTOR);
    st_be32(e + PL_DATA_LENGTH, len);
    st_be64(e + PL_DATA_OFFSET, off);
}

typedef struct VpcLayout {
    uint8_t *img;
    uint64_t len, bat_bytes, loc_at;
} VpcLayout;

/* A dynamic disk of entries blocks (NULL parent) or a differencing disk over parent: the whole file
 * but the locators' data, footer in place (sealed by the caller). */
static int vpc_dynamic_layout(VpcLayout *l, const uint8_t *footer, uint32_t block_size, uint64_t entries,
                              uint64_t loc_bytes)
{
    l->bat_bytes = (uint64_t)align_up((int64_t)entries * 4, VPC_SECTOR);
    l->loc_at = VPC_BAT_AT + l->bat_bytes;
    l->len = l->loc_at + loc_bytes + VPC_FOOTER_SIZE;
    l->img = calloc(1, l->len);
    if (!l->img)
        return -ENOMEM;
    memset(l->img + VPC_BAT_AT, 0xFF, l->bat_bytes);
    uint8_t *h = l->img + VPC_HEADER_AT;
    memcpy(h + DH_COOKIE, "cxsparse", 8);
    memset(h + 8, 0xFF, 8); /* data offset: unused */
    st_be64(h + DH_TABLE_OFFSET, VPC_BAT_AT);
    st_be32(h + DH_VERSION, 0x00010000);
    st_be32(h + DH_MAX_ENTRIES, (uint32_t)entries);
    st_be32(h + DH_BLOCK_SIZE, block_size);
    memcpy(l->img + l->len - VPC_FOOTER_SIZE, footer, VPC_FOOTER_SIZE);
    return 0;
}

/* Fills the parent fields of the header at h and the locators' data at l->loc_at. */
static int vpc_fill_parent(VpcLayout *l, const VpcParent *p, const char *backing, const char *filename,
                           Error *err)
{
    uint8_t *h = l->img + VPC_HEADER_AT;
    memcpy(h + DH_PARENT_UUID, p->footer + FT_UUID, 16);
    st_be32(h + DH_PARENT_TIME, p->mtime);
    const char *base = strrchr(p->abs, '/') ? strrchr(p->abs, '/') + 1 : p->abs;
    uint64_t at = l->loc_at;
    int slot = 0;
    ssize_t n = vpc_utf16(base, true, false, h + DH_PARENT_NAME, VPC_PARENT_NAME_BYTES);
    for (int k = 0; n >= 0 && k < 2; k++) {
        if (k == 0 && backing[0] == '/')
            continue; /* an absolute name has no relative locator */
        char name[PATH_MAX + 2];
        snprintf(name, sizeof(name), "%s%s", k == 1 || backing[0] == '.' ? "" : "./", k == 0 ? backing : p->abs);
        n = vpc_utf16(name, false, true, l->img + at, VPC_MAX_LOCATOR_BYTES);
        if (n > 0) {
            vpc_put_locator(h, slot++, k == 0 ? PLAT_W2RU : PLAT_W2KU, at, (uint32_t)n);
            at += (uint64_t)align_up(n, VPC_SECTOR);
        }
    }
    if (n < 0) {
        error_set(err, EINVAL, "%s: the parent's name is not UTF-8 or longer than a VHD holds", filename);
        return -EINVAL;
    }
    memmove(l->img + at, l->img + l->len - VPC_FOOTER_SIZE, VPC_FOOTER_SIZE);
    l->len = at + VPC_FOOTER_SIZE;
    return 0;
}

static int vpc_create_fixed(const char *filename, const uint8_t *footer, int64_t sectors, Error *err)
{
    BlockNode *file = NULL;
    int r = bdrv_create_empty_file(filename, &file, err);
    int64_t data = sectors * VPC_SECTOR;
    if (r == 0)
        r = bdrv_truncate(file, data); /* the data: a hole of zeros */
    if (r == 0)
        r = bdrv_pwrite(file, data, VPC_FOOTER_SIZE, footer, 0);
    if (r == 0)
        r = bdrv_flush(file);
    if (file)
        bdrv_close(file);
    return r;
}

static int vpc_create_check(const VpcCreate *c, const CreateOpts *opts)
{
    const char *why = NULL;
    if (opts->backing_format && strcmp(opts->backing_format, "vpc") != 0)
        why = "a differencing VHD's parent is a VHD (-F vpc)";
    else if (c->fixed)
        why = "a fixed VHD has no parent (-b needs subformat=dynamic)";
    else if (c->force_size)
        why = "a differencing VHD takes its size fields from its parent (no force_size with -b)";
    if (why)
        error_set(c->err, EINVAL, "%s: %s", c->filename, why);
    return why ? -EINVAL : 0;
}

static int vpc_create(const char *filename, const CreateOpts *opts, Error *err)
{
    VpcCreate c = { .filename = filename, .err = err };
    int r = bdrv_create_opts_each(opts->options, vpc_create_option, &c);
    bool diff = opts->backing && opts->backing[0];
    if (r < 0)
        return r;
    if (diff && (r = vpc_create_check(&c, opts)) < 0)
        return r;
    uint8_t footer[VPC_FOOTER_SIZE];
    int64_t sectors;
    uint32_t block_size = VPC_DEFAULT_BLOCK, chs[3];
    VpcParent *p = diff ? calloc(1, sizeof(*p)) : NULL;
    if (diff && !p)
        return -ENOMEM;
    if (diff && (r = vpc_open_parent(filename, opts, p, err)) == 0) {
        if (opts->size != p->size) {
            error_set(err, EINVAL, "%s: a differencing VHD has its parent's size (%" PRId64 " bytes, not %" PRId64 ")",
                      filename, p->size, opts->size);
            r = -EINVAL;
        }
        memcpy(footer, p->footer, VPC_FOOTER_SIZE); /* creator, geometry and sizes: the same virtual size */
        st_be32(footer + FT_TYPE, VPC_TYPE_DIFF);
        st_be64(footer + FT_DATA_OFFSET, VPC_HEADER_AT);
        footer[FT_SAVED_STATE] = 0;
        sectors = (p->size + VPC_SECTOR - 1) / VPC_SECTOR;
        block_size = p->block_size;
    } else if (!diff && vpc_create_geometry(c.force_size, (uint64_t)align_up(opts->size, VPC_SECTOR), &sectors,
                                            chs) < 0) {
        error_set(err, EINVAL, "%s: invalid virtual size for vpc (at most 2040 GiB)", filename);
        r = -EINVAL;
    } else if (!diff) {
        vpc_new_footer(footer, c.fixed ? VPC_TYPE_FIXED : VPC_TYPE_DYNAMIC, sectors, chs,
                       c.force_size ? "qem2" : "qemu", 0x00050003);
    }
    if (r == 0)
        vpc_seal_footer(footer);
    VpcLayout l = { 0 };
    uint64_t entries = r == 0 ? ((uint64_t)sectors * VPC_SECTOR + block_size - 1) / block_size : 0;
    if (r == 0 && c.fixed)
        r = vpc_create_fixed(filename, footer, sectors, err);
    else if (r == 0)
        r = vpc_dynamic_layout(&l, footer, block_size, entries, diff ? 2 * (uint64_t)VPC_MAX_LOCATOR_BYTES : 0);
    if (r == 0 && diff)
        r = vpc_fill_parent(&l, p, opts->backing, filename, err);
    if (r == 0 && !c.fixed) {
        uint8_t *h = l.img + VPC_HEADER_AT;
        st_be32(h + DH_CHECKSUM, vpc_checksum(h, VPC_HEADER_SIZE, DH_CHECKSUM));
        memcpy(l.img, footer, VPC_FOOTER_SIZE);
        r = bdrv_create_image_file(filename, l.img, l.len, err);
    }
    free(l.img);
    free(p);
    return r;
}

/* ---------------------------------------------------------------- info */

static int64_t vpc_getlength(BlockNode *bs)
{
    VpcState *s = bs->opaque;
    return s->size;
}

static bool vpc_has_zero_init(BlockNode *bs)
{
    VpcState *s = bs->opaque;
    return s->type == VPC_TYPE_DYNAMIC;
}

static int64_t vpc_memory_used(BlockNode *bs)
{
    VpcState *s = bs->opaque;
    return (int64_t)(sizeof(*s) + (uint64_t)s->entries * 4 + 2 * (((uint64_t)s->entries + 7) / 8));
}

/* A fixed disk has no blocks: no allocation unit to tell. */
static void vpc_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    const VpcState *s = bs->opaque;
    facts->cluster_size = s->type == VPC_TYPE_FIXED ? 0 : s->block_size;
    facts->unallocated_is_zero = true;
    facts->data_over_host_zero = s->type == VPC_TYPE_FIXED;
}

static void vpc_get_info(BlockNode *bs, InfoList *info)
{
    VpcState *s = bs->opaque;
    const uint8_t *f = s->footer;
    char app[5], os[5], uuid[37];
    fourcc(f + FT_CREATOR_APP, app);
    fourcc(f + FT_CREATOR_OS, os);
    format_uuid(f + FT_UUID, uuid);
    info_add_str(info, "subformat", "%s", vpc_subformat(s->type));
    info_add_str(info, "creator_app", "%s", app);
    uint32_t ver = ld_be32(f + FT_CREATOR_VERSION);
    info_add_str(info, "creator_version", "%" PRIu32 ".%" PRIu32, ver >> 16, ver & 0xFFFF);
    info_add_str(info, "creator_host_os", "%s", os);
    info_add_str(info, "geometry", "%u/%u/%u", ld_be16(f + FT_CYLINDERS), f[FT_HEADS], f[FT_SECTORS]);
    info_add_int(info, "current_size", (int64_t)MIN(ld_be64(f + FT_CURRENT_SIZE), (uint64_t)INT64_MAX));
    info_add_str(info, "size_from", "%s", s->size_from_chs ? "geometry" : "current_size");
    info_add_str(info, "uuid", "%s", uuid);
    info_add_bool(info, "saved_state", f[FT_SAVED_STATE] != 0);
    info_add_str(info, "footer", "%s", s->footer_from_copy ? "copy at offset 0 (the footer at the end is "
                 "missing or damaged)" : s->footer_511 ? "at the end (511 bytes, Virtual PC before 2004)" : "at the end");
    if (!is_dynamic(s))
        return;
    pthread_mutex_lock(&s->lock);
    uint32_t allocated = s->allocated;
    pthread_mutex_unlock(&s->lock);
    info_add_int(info, "block_size", s->block_size);
    info_add_int(info, "bat_entries", s->entries);
    info_add_int(info, "allocated_blocks", allocated);
    if (s->type == VPC_TYPE_DIFF) {
        char pname[PATH_MAX];
        format_uuid(s->header + DH_PARENT_UUID, uuid);
        info_add_str(info, "parent_uuid", "%s", uuid);
        int match = vpc_parent_matches(bs, s);
        if (match >= 0)
            info_add_bool(info, "parent_uuid_matches", match == 1);
        if (utf16_to_utf8(s->header + DH_PARENT_NAME, VPC_PARENT_NAME_BYTES, true, false, pname, sizeof(pname)))
            info_add_str(info, "parent_name", "%s", pname);
        info_add_str(info, "parent_locator", "%s", vpc_parent_source(bs, s));
    }
}

/* ---------------------------------------------------------------- check (qemu-img has none for VHD) */

static int vpc_check_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Corruptions: a damaged footer at the end (the copy at 0 in use), BAT entries into the metadata or past
 * the data, and blocks (bitmap and data) that overlap. Nothing is repaired (-r: -ENOTSUP). */
static int vpc_check_bat(VpcState *s, BlockCheckResult *res)
{
    if (s->footer_from_copy)
        bdrv_check_corruption(res, "the footer at the end of the file is missing or damaged (the copy at offset 0 "
                              "is used)");
    if (s->type == VPC_TYPE_FIXED)
        return 0;
    uint32_t *used = malloc((size_t)MAX(s->entries, 1u) * 4), n = 0;
    if (!used)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->entries; i++) {
        if (s->bat[i] == VPC_BAT_UNUSED)
            continue;
        if (bit_get(s->bad, i))
            bdrv_check_corruption(res, "BAT entry %" PRIu32 " (sector 0x%" PRIx32 ") points into the metadata or "
                                  "past the data", i, s->bat[i]);
        else
            used[n++] = s->bat[i];
    }
    qsort(used, n, 4, vpc_check_cmp);
    uint64_t block_bytes = (uint64_t)s->bitmap_size + s->block_size;
    for (uint32_t i = 1; i < n; i++)
        if ((uint64_t)(used[i] - used[i - 1]) * VPC_SECTOR < block_bytes)
            bdrv_check_corruption(res, "the blocks at sectors 0x%" PRIx32 " and 0x%" PRIx32 " overlap", used[i - 1],
                                  used[i]);
    res->total_clusters = s->entries;
    res->allocated_clusters = n;
    free(used);
    return 0;
}

static int vpc_check(BlockNode *bs, BlockCheckResult *res, int fix)
{
    if (fix)
        return -ENOTSUP;
    VpcState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = vpc_check_bat(s, res);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

const BlockDriver bdrv_vpc = {
    .name = "vpc",
    .instance_size = sizeof(VpcState),
    .supports_backing = true,
    .probe = vpc_probe,
    .open = vpc_open,
    .close = vpc_close,
    .read = vpc_read,
    .write = vpc_write,
    .write_zeroes = vpc_write_zeroes,
    .discard = vpc_discard,
    .flush = vpc_flush,
    .block_status = vpc_block_status,
    .getlength = vpc_getlength,
    .get_info = vpc_get_info,
    .check = vpc_check,
    .backing_attached = vpc_backing_attached,
    .get_facts = vpc_get_facts,
    .memory_used = vpc_memory_used,
    .has_zero_init = vpc_has_zero_init,
    .create = vpc_create,
    .create_options = vpc_create_options,
};
