/* SPDX-License-Identifier: MIT */
/*
 * create.c - making new VHDX images (`imgfuse create -f vhdx`, the driver's `create` slot): the creation
 * options (qemu-img's names: subformat, block_size, log_size, block_state_zero), their validation, and
 * the layout after MS-VHDX: the file identifier, two headers (CRC-32C, sequence numbers 1 and 2, new
 * FileWriteGuid and DataWriteGuid, an empty log with LogGuid zero), two region tables, then from 1 MiB
 * the log, the BAT and the metadata region (file parameters, virtual disk size, page 83 data, sector
 * sizes and, for a differencing disk, the parent locator), as qemu-img lays them out.  A fixed image's
 * payload blocks are all FULLY_PRESENT back to back after the metadata, the file extended sparse to hold
 * them (as qemu-img does: creating is quick and costs no disk space; the holes read as zeros); a dynamic
 * image's are NOT_PRESENT (ZERO with block_state_zero=on), a differencing image's NOT_PRESENT with a
 * zeroed sector bitmap per chunk, present in a hole of the file: the specification would allow
 * NOT_PRESENT bitmaps too, but libvhdi then reads the bitmap from file offset 0 and loses the parent's
 * sectors.  The parent (-b) is opened to read its DataWriteGuid, size and sector sizes; it must be a VHDX;
 * the locator names it by relative_path (".\p.vhdx") and absolute_win32_path (drive Z:, where Wine puts
 * the POSIX root).  Opening and reading images is vhdx.c's.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "vhdx.h"

#define CREATOR "imgfuse"
#define LOG_OFFSET VHDX_ALIGN
#define MD_REGION_BYTES VHDX_ALIGN
#define MD_ITEMS_OFF VHDX_MD_TABLE_BYTES
#define LOCATOR_OFF (MD_ITEMS_OFF + 64)
#define MD_WRITTEN (2 * VHDX_MD_TABLE_BYTES)  /* the table and the items (a locator of at most 64 KiB - 64) */
#define BAT_CHUNK_ENTRIES (128 * 1024) /* the BAT is written 1 MiB at a time */

const BlockOptionSpec vhdx_create_options[] = {
    { "subformat", BDRV_OPT_STRING, 0, "dynamic (the default) or fixed (every block allocated; the file is sparse)" },
    { "block_size", BDRV_OPT_SIZE, 0, "payload block size, a power of two from 1M to 256M (default by size, as qemu-img)" },
    { "log_size", BDRV_OPT_SIZE, 0, "log size, a multiple of 1M from 1M to 256M (default 1M)" },
    { "block_state_zero", BDRV_OPT_BOOL, 0, "dynamic only: blocks start in state ZERO, not NOT_PRESENT (default off)" },
    { NULL, 0, 0, NULL },
};

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ---------------------------------------------------------------- options */

typedef struct VhdxOptParse {
    VhdxCreateSpec *spec;
    const char *filename;
    Error *err;
} VhdxOptParse;

static int bad_value(VhdxOptParse *c, const char *what, const char *value)
{
    error_set(c->err, EINVAL, "%s: %s, not '%s'", c->filename, what, value);
    return -EINVAL;
}

static int vhdx_create_option(const char *key, const char *value, void *opaque)
{
    VhdxOptParse *c = opaque;
    VhdxCreateSpec *sp = c->spec;
    int64_t v = value ? parse_size(value) : -1;
    if (!value) {
        error_set(c->err, EINVAL, "%s: creation option '%s' needs a value (key=value)", c->filename, key);
        return -EINVAL;
    }
    if (!strcmp(key, "subformat")) {
        if (strcmp(value, "dynamic") && strcmp(value, "fixed"))
            return bad_value(c, "subformat must be dynamic or fixed", value);
        sp->fixed = value[0] == 'f';
    } else if (!strcmp(key, "block_size")) {
        if (v != 0 && (v < VHDX_MIN_BLOCK || v > VHDX_MAX_BLOCK || !is_pow2((uint64_t)v)))
            return bad_value(c, "block_size must be a power of two from 1M to 256M", value);
        sp->block_size = (uint32_t)v;
    } else if (!strcmp(key, "log_size")) {
        if (v < VHDX_ALIGN || v > VHDX_MAX_LOG_BYTES || v % VHDX_ALIGN)
            return bad_value(c, "log_size must be a multiple of 1M from 1M to 256M", value);
        sp->log_size = (uint32_t)v;
    } else if (!strcmp(key, "block_state_zero")) {
        int bv = bdrv_parse_bool(value);
        if (bv < 0)
            return bad_value(c, "block_state_zero must be on or off", value);
        sp->block_state_zero = bv == 1;
    } else {
        error_set(c->err, EINVAL, "%s: unknown vhdx creation option '%s'", c->filename, key);
        return -EINVAL;
    }
    return 0;
}

/* The block size qemu-img picks when none is given: larger blocks for larger disks. */
static uint32_t default_block_size(uint64_t size)
{
    if (size > 32 * TiB)
        return 64 * MiB;
    if (size > 100 * GiB)
        return 32 * MiB;
    if (size > 1 * GiB)
        return 16 * MiB;
    return 8 * MiB;
}

/* ---------------------------------------------------------------- layout */

static uint64_t chunk_ratio(const VhdxCreateSpec *sp)
{
    return ((uint64_t)1 << 23) * sp->logical_sector / sp->block_size;
}

static uint64_t data_blocks(const VhdxCreateSpec *sp)
{
    return (sp->size + sp->block_size - 1) / sp->block_size;
}

/* BAT entries: payload entries with a sector-bitmap entry after every chunk_ratio of them; a differencing
 * disk's BAT ends with a whole chunk, the others' with the last payload entry. */
static uint64_t bat_entries(const VhdxCreateSpec *sp)
{
    uint64_t n = data_blocks(sp), cr = chunk_ratio(sp);
    if (sp->parent_linkage)
        return (n + cr - 1) / cr * (cr + 1);
    return n ? n + (n - 1) / cr : 0;
}

static int new_guid(uint8_t g[16])
{
    size_t got = 0;
    while (got < 16) {
        ssize_t r = getrandom(g + got, 16 - got, 0);
        if (r < 0 && errno != EINTR)
            return -errno;
        got += r > 0 ? (size_t)r : 0;
    }
    g[7] = (uint8_t)((g[7] & 0x0F) | 0x40); /* version 4 (random), in the third field stored little-endian */
    g[8] = (uint8_t)((g[8] & 0x3F) | 0x80); /* the RFC 4122 variant */
    return 0;
}

/* UTF-8 s as UTF-16LE (no terminator) at out (room for cap bytes): the bytes written, or -1 if s is not
 * valid UTF-8 or does not fit. */
static long utf8_to_utf16le(const char *s, uint8_t *out, size_t cap)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = 0;
    while (*p) {
        uint32_t c = *p, len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len)
            return -1;
        c = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
        for (uint32_t k = 1; k < len; k++) {
            if ((p[k] & 0xC0) != 0x80)
                return -1;
            c = c << 6 | (p[k] & 0x3F);
        }
        static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (c < min[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return -1;
        p += len;
        uint16_t u[2] = { (uint16_t)c, 0 };
        size_t units = 1;
        if (c >= 0x10000) {
            u[0] = (uint16_t)(0xD800 + ((c - 0x10000) >> 10));
            u[1] = (uint16_t)(0xDC00 + ((c - 0x10000) & 0x3FF));
            units = 2;
        }
        if (n + units * 2 > cap)
            return -1;
        for (size_t k = 0; k < units; k++, n += 2)
            put_le16(out + n, u[k]);
    }
    return (long)n;
}

/* The parent locator item (VHDX locator type, UTF-16LE keys and values) into out; its length, or -1 if a
 * path is not valid UTF-8 or the item would not fit in cap bytes. */
static long build_locator(const VhdxCreateSpec *sp, uint8_t *out, size_t cap)
{
    const char *kv[3][2] = { { "parent_linkage", sp->parent_linkage },
                             { "relative_path", sp->relative_path },
                             { "absolute_win32_path", sp->absolute_win32_path } };
    uint16_t count = 0;
    for (int i = 0; i < 3; i++)
        count += kv[i][1] && kv[i][1][0];
    size_t pos = 20 + (size_t)count * 12;
    if (pos > cap)
        return -1;
    memcpy(out, GUID_LOCATOR_VHDX.b, 16);
    put_le16(out + 16, 0);
    put_le16(out + 18, count);
    uint8_t *e = out + 20;
    for (int i = 0; i < 3; i++) {
        if (!kv[i][1] || !kv[i][1][0])
            continue;
        long kl = utf8_to_utf16le(kv[i][0], out + pos, cap - pos);
        long vl = kl < 0 ? -1 : utf8_to_utf16le(kv[i][1], out + pos + (size_t)kl, cap - pos - (size_t)kl);
        if (vl <= 0 || kl > UINT16_MAX || vl > UINT16_MAX)
            return -1;
        st_le32(e, (uint32_t)pos);
        st_le32(e + 4, (uint32_t)(pos + (size_t)kl));
        put_le16(e + 8, (uint16_t)kl);
        put_le16(e + 10, (uint16_t)vl);
        pos += (size_t)(kl + vl);
        e += 12;
    }
    return (long)pos;
}

/* Defaults (qemu-img's) and limits, before anything is written. */
int vhdx_create_check(VhdxCreateSpec *sp, const char *filename, Error *err)
{
    if (!sp->logical_sector)
        sp->logical_sector = 512;
    if (!sp->physical_sector)
        sp->physical_sector = 512;
    if (!sp->log_size)
        sp->log_size = VHDX_ALIGN;
    if (!sp->block_size)
        sp->block_size = default_block_size(sp->size);
    const char *bad = NULL;
    if (sp->parent_linkage && sp->fixed)
        bad = "a differencing image (-b) cannot be subformat=fixed";
    else if (sp->block_state_zero && (sp->fixed || sp->parent_linkage))
        bad = "block_state_zero=on is for dynamic images only (a fixed image's blocks are present, a differencing "
              "image's are its parent's)";
    if (bad) {
        error_set(err, EINVAL, "%s: %s", filename, bad);
        return -EINVAL;
    }
    if (!sp->size || sp->size > (uint64_t)VHDX_MAX_SIZE || sp->size % sp->logical_sector) {
        error_set(err, EINVAL, "%s: the size must be a multiple of %" PRIu32 " bytes from %" PRIu32 " bytes to 64 TiB, "
                  "not %" PRIu64, filename, sp->logical_sector, sp->logical_sector, sp->size);
        return -EINVAL;
    }
    uint8_t *loc = sp->parent_linkage ? malloc(MD_WRITTEN - LOCATOR_OFF) : NULL;
    if (sp->parent_linkage && !loc)
        return -ENOMEM;
    long loc_len = loc ? build_locator(sp, loc, MD_WRITTEN - LOCATOR_OFF) : 0;
    free(loc);
    if (loc_len < 0) { /* before the file is made */
        error_set(err, EINVAL, "%s: the parent's name is not valid UTF-8 or too long for the parent locator",
                  filename);
        return -EINVAL;
    }
    uint64_t n = bat_entries(sp);
    if (n > VHDX_MAX_BAT_ENTRIES) {
        error_set(err, EINVAL, "%s: %" PRIu64 " blocks of %" PRIu32 " bytes need %" PRIu64 " BAT entries, more than the "
                  "%u imgfuse reads; use a larger block_size", filename, data_blocks(sp), sp->block_size, n,
                  VHDX_MAX_BAT_ENTRIES);
        return -EINVAL;
    }
    return 0;
}

/* The metadata region's first bytes (table and items) into md (MD_WRITTEN bytes, zeroed); -EINVAL when
 * the parent locator cannot be encoded. */
static int build_metadata(const VhdxCreateSpec *sp, uint8_t *md, const uint8_t page83[16])
{
    long loc_len = 0;
    if (sp->parent_linkage && (loc_len = build_locator(sp, md + LOCATOR_OFF, MD_WRITTEN - LOCATOR_OFF)) < 0)
        return -EINVAL;
    struct { const Guid *id; uint32_t off, len, flags; } items[] = {
        { &GUID_FILE_PARAMS, MD_ITEMS_OFF, 8, 4 },          /* IsRequired */
        { &GUID_DISK_SIZE, MD_ITEMS_OFF + 8, 8, 6 },        /* IsVirtualDisk, IsRequired */
        { &GUID_PAGE83, MD_ITEMS_OFF + 16, 16, 6 },
        { &GUID_LOGICAL_SECTOR, MD_ITEMS_OFF + 32, 4, 6 },
        { &GUID_PHYSICAL_SECTOR, MD_ITEMS_OFF + 36, 4, 6 },
        { &GUID_PARENT_LOCATOR, LOCATOR_OFF, (uint32_t)loc_len, 4 },
    };
    uint16_t count = sp->parent_linkage ? 6 : 5;
    memcpy(md, "metadata", 8);
    put_le16(md + 10, count);
    for (uint16_t i = 0; i < count; i++) {
        uint8_t *e = md + 32 + (size_t)i * 32;
        memcpy(e, items[i].id->b, 16);
        st_le32(e + 16, items[i].off);
        st_le32(e + 20, items[i].len);
        st_le32(e + 24, items[i].flags);
    }
    st_le32(md + MD_ITEMS_OFF, sp->block_size);
    st_le32(md + MD_ITEMS_OFF + 4, (sp->fixed ? 1u : 0u) | (sp->parent_linkage ? 2u : 0u));
    st_le64(md + MD_ITEMS_OFF + 8, sp->size);
    memcpy(md + MD_ITEMS_OFF + 16, page83, 16);
    st_le32(md + MD_ITEMS_OFF + 32, sp->logical_sector);
    st_le32(md + MD_ITEMS_OFF + 36, sp->physical_sector);
    return 0;
}

/* The BAT entry at index i: payload blocks in the state the subformat gives, laid out from data_off (a
 * fixed image's blocks, a differencing image's sector bitmaps); sector bitmaps of other images not present. */
static uint64_t bat_entry(const VhdxCreateSpec *sp, uint64_t i, uint64_t data_off)
{
    uint64_t cr = chunk_ratio(sp);
    if (i % (cr + 1) == cr)
        return sp->parent_linkage ? (data_off + i / (cr + 1) * VHDX_SECTOR_BITMAP_BYTES) | SB_PRESENT : 0;
    uint64_t b = i - i / (cr + 1);
    if (b >= data_blocks(sp))
        return PAYLOAD_NOT_PRESENT;
    if (sp->fixed)
        return (data_off + b * sp->block_size) | PAYLOAD_FULLY_PRESENT;
    return sp->block_state_zero ? PAYLOAD_ZERO : PAYLOAD_NOT_PRESENT;
}

/* The bytes laid out after the metadata region: a fixed image's payload blocks, a differencing image's
 * sector bitmaps (one per chunk, all zero: every sector is the parent's). */
static uint64_t data_bytes(const VhdxCreateSpec *sp)
{
    if (sp->fixed)
        return data_blocks(sp) * sp->block_size;
    return sp->parent_linkage ? bat_entries(sp) / (chunk_ratio(sp) + 1) * VHDX_SECTOR_BITMAP_BYTES : 0;
}

static int write_bat(BlockNode *file, const VhdxCreateSpec *sp, uint64_t bat_off, uint64_t data_off)
{
    uint64_t n = bat_entries(sp);
    if (!sp->fixed && !sp->block_state_zero && !sp->parent_linkage)
        return 0; /* all zero: the new file's hole */
    uint8_t *buf = malloc(BAT_CHUNK_ENTRIES * 8);
    if (!buf)
        return -ENOMEM;
    int r = 0;
    for (uint64_t i = 0; r == 0 && i < n; i += BAT_CHUNK_ENTRIES) {
        uint64_t k = MIN(n - i, (uint64_t)BAT_CHUNK_ENTRIES);
        for (uint64_t j = 0; j < k; j++)
            st_le64(buf + j * 8, bat_entry(sp, i + j, data_off));
        r = bdrv_pwrite(file, (int64_t)(bat_off + i * 8), (int64_t)(k * 8), buf, 0);
    }
    free(buf);
    return r;
}

static void build_region_table(uint8_t *rt, uint64_t bat_off, uint32_t bat_len, uint64_t md_off)
{
    memcpy(rt, "regi", 4);
    st_le32(rt + 8, 2);
    uint8_t *e = rt + 16;
    memcpy(e, GUID_BAT.b, 16);
    st_le64(e + 16, bat_off);
    st_le32(e + 24, bat_len);
    st_le32(e + 28, 1); /* Required */
    e += 32;
    memcpy(e, GUID_METADATA.b, 16);
    st_le64(e + 16, md_off);
    st_le32(e + 24, MD_REGION_BYTES);
    st_le32(e + 28, 1);
    st_le32(rt + 4, vhdx_crc(rt, VHDX_RT_BYTES, 4));
}

static void build_header(uint8_t *h, uint64_t seq, const uint8_t file_write[16], const uint8_t data_write[16],
                         uint32_t log_size)
{
    memset(h, 0, VHDX_HEADER_BYTES);
    memcpy(h + HD_SIG, "head", 4);
    st_le64(h + HD_SEQ, seq);
    memcpy(h + HD_FILE_WRITE, file_write, 16);
    memcpy(h + HD_DATA_WRITE, data_write, 16);
    put_le16(h + HD_LOG_VERSION, 0);
    put_le16(h + HD_VERSION, 1);
    st_le32(h + HD_LOG_LENGTH, log_size);
    st_le64(h + HD_LOG_OFFSET, LOG_OFFSET);
    st_le32(h + HD_CRC, vhdx_crc(h, VHDX_HEADER_BYTES, HD_CRC));
}

/* The file identifier, headers and region tables (the log stays a hole), and the metadata region's table
 * and items (the BAT is write_bat's). */
static int write_layout(BlockNode *file, const VhdxCreateSpec *sp, uint64_t bat_off, uint32_t bat_len,
                        uint64_t md_off)
{
    uint8_t guids[3][16];
    int r = 0;
    for (int i = 0; r == 0 && i < 3; i++)
        r = new_guid(guids[i]);
    if (r < 0)
        return r;
    uint8_t *md = calloc(1, MD_WRITTEN), *head = calloc(1, VHDX_ALIGN);
    if (!md || !head) {
        free(md);
        free(head);
        return -ENOMEM;
    }
    if (build_metadata(sp, md, guids[2]) < 0) {
        free(md);
        free(head);
        return -EINVAL;
    }
    memcpy(head, "vhdxfile", 8);
    utf8_to_utf16le(CREATOR, head + 8, 512);
    build_header(head + VHDX_HEADER1_OFF, 1, guids[0], guids[1], sp->log_size);
    build_header(head + VHDX_HEADER2_OFF, 2, guids[0], guids[1], sp->log_size);
    build_region_table(head + VHDX_RT1_OFF, bat_off, bat_len, md_off);
    memcpy(head + VHDX_RT2_OFF, head + VHDX_RT1_OFF, VHDX_RT_BYTES);
    r = bdrv_pwrite(file, (int64_t)md_off, MD_WRITTEN, md, 0);
    if (r == 0)
        r = bdrv_pwrite(file, 0, VHDX_RT2_OFF + VHDX_RT_BYTES, head, 0);
    free(md);
    free(head);
    return r;
}

int vhdx_create_on(BlockNode *file, const VhdxCreateSpec *sp, Error *err)
{
    uint64_t bat_off = LOG_OFFSET + sp->log_size;
    uint64_t bat_len = (uint64_t)align_up((int64_t)(MAX(bat_entries(sp), 1) * 8), VHDX_ALIGN);
    uint64_t md_off = bat_off + bat_len, data_off = md_off + MD_REGION_BYTES;
    uint64_t end = data_off + data_bytes(sp);
    int r = write_bat(file, sp, bat_off, data_off);
    if (r == 0)
        r = write_layout(file, sp, bat_off, (uint32_t)bat_len, md_off);
    if (r == -EINVAL) {
        error_set(err, EINVAL, "the parent's name is not valid UTF-8 or too long for the parent locator");
        return r;
    }
    if (r == 0)
        r = bdrv_truncate(file, (int64_t)end); /* payload blocks and sector bitmaps: a hole, read as zeros */
    if (r == 0)
        r = bdrv_flush(file);
    if (r < 0)
        error_set(err, -r, "cannot write the image: %s", strerror(-r));
    return r;
}

/* ---------------------------------------------------------------- the parent of a differencing image */

typedef struct ParentFacts {
    char linkage[VHDX_GUID_STR];
    char relative[PATH_MAX], absolute[PATH_MAX + 8];
    uint64_t size;
    uint32_t logical, physical;
} ParentFacts;

static const InfoItem *info_find(const InfoList *l, const char *key)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->items[i].key, key))
            return &l->items[i];
    return NULL;
}

/* name with '/' as '\'; -1 if it does not fit. */
static int win32_path(char *out, size_t cap, const char *prefix, const char *name)
{
    int n = snprintf(out, cap, "%s%s", prefix, name);
    if (n < 0 || (size_t)n >= cap)
        return -1;
    for (char *p = out; *p; p++)
        if (*p == '/')
            *p = '\\';
    return 0;
}

/* The parent's path from the child's directory, both real paths: "p.vhdx", "sub/p.vhdx", "../x/p.vhdx". */
static int relative_from(const char *dir, const char *target, char *out, size_t cap)
{
    size_t common = 0, i = 0; /* dir[0, common) is a whole-directory prefix of target */
    bool root = !strcmp(dir, "/");
    if (!root) {
        while (dir[i] && dir[i] == target[i])
            if (dir[++i] == '/' && target[i] == '/')
                common = i;
        if (!dir[i] && target[i] == '/')
            common = i;
    }
    size_t len = 0;
    out[0] = '\0';
    for (const char *p = dir + common; !root && *p; p++)
        if (*p == '/') {
            if ((len += 3) >= cap)
                return -1;
            strcat(out, "../");
        }
    const char *rest = target + common + 1;
    if (len + strlen(rest) + 1 > cap)
        return -1;
    strcat(out, rest);
    return 0;
}

/* The locator's paths: relative_path from the child's directory (".\p.vhdx" beside it), and
 * absolute_win32_path on drive Z: (where Wine puts the POSIX root). */
static int parent_paths(const char *filename, const char *parent_path, ParentFacts *pf, Error *err)
{
    char dir[PATH_MAX], real_parent[PATH_MAX], real_dir[PATH_MAX], rel[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", filename);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    else
        strcpy(dir, ".");
    if (!realpath(parent_path, real_parent) || !realpath(dir, real_dir)) {
        error_set(err, errno, "%s: cannot resolve the parent's path %s: %s", filename, parent_path, strerror(errno));
        return -errno;
    }
    char real_child[PATH_MAX];
    if (realpath(filename, real_child) && strcmp(real_child, real_parent) == 0) {
        error_set(err, EINVAL, "%s: the parent (-b) is the image itself", filename);
        return -EINVAL;
    }
    int bad = relative_from(real_dir, real_parent, rel, sizeof(rel));
    if (!bad)
        bad = win32_path(pf->relative, sizeof(pf->relative), strncmp(rel, "../", 3) ? ".\\" : "", rel);
    if (!bad)
        bad = win32_path(pf->absolute, sizeof(pf->absolute), "\\\\?\\Z:", real_parent);
    if (bad) {
        error_set(err, ENAMETOOLONG, "%s: the parent's path is too long: %s", filename, real_parent);
        return -ENAMETOOLONG;
    }
    return 0;
}

/* Opens the parent (-b, relative to the new image's directory), which must be a VHDX, for its facts. */
static int read_parent(const char *filename, const CreateOpts *opts, ParentFacts *pf, Error *err)
{
    char path[PATH_MAX];
    const char *slash = strrchr(filename, '/');
    if (opts->backing[0] == '/' || !slash)
        snprintf(path, sizeof(path), "%s", opts->backing);
    else
        snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - filename), filename, opts->backing);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.no_backing = true;
    BlockNode *bs = bdrv_open(path, &o, err);
    if (!bs)
        return -(err->errnum ? err->errnum : EIO);
    InfoList info = { 0 };
    int r = 0;
    if (strcmp(bs->drv->name, "vhdx") != 0) {
        error_set(err, EINVAL, "%s: the parent of a differencing VHDX must be a VHDX; %s is %s", filename, path,
                  bs->drv->name);
        r = -EINVAL;
    } else {
        bdrv_get_info(bs, &info);
        const InfoItem *g = info_find(&info, "data_write_guid"), *ls = info_find(&info, "logical_sector_size");
        const InfoItem *ps = info_find(&info, "physical_sector_size");
        snprintf(pf->linkage, sizeof(pf->linkage), "%s", g && g->str ? g->str : "");
        pf->logical = ls ? (uint32_t)ls->num : 0;
        pf->physical = ps ? (uint32_t)ps->num : 0;
        pf->size = (uint64_t)bdrv_getlength(bs);
        if (!pf->linkage[0] || !pf->logical || !pf->physical) {
            error_set(err, EINVAL, "%s: cannot read the parent's DataWriteGuid and sector sizes", filename);
            r = -EINVAL;
        }
        info_free(&info);
    }
    bdrv_close(bs);
    return r < 0 ? r : parent_paths(filename, path, pf, err);
}

/* ---------------------------------------------------------------- create */

int vhdx_create(const char *filename, const CreateOpts *opts, Error *err)
{
    VhdxCreateSpec sp = { .size = (uint64_t)MAX(opts->size, 0) };
    VhdxOptParse c = { .spec = &sp, .filename = filename, .err = err };
    int r = bdrv_create_opts_each(opts->options, vhdx_create_option, &c);
    if (r < 0)
        return r;
    ParentFacts *pf = NULL;
    if (opts->backing && opts->backing[0]) {
        if (opts->backing_format && strcmp(opts->backing_format, "vhdx") != 0) {
            error_set(err, EINVAL, "%s: the parent of a differencing VHDX must be a VHDX, not -F %s", filename,
                      opts->backing_format);
            return -EINVAL;
        }
        if (!(pf = calloc(1, sizeof(*pf))))
            return -ENOMEM;
        r = read_parent(filename, opts, pf, err);
        if (r == 0 && pf->size != sp.size) {
            error_set(err, EINVAL, "%s: a differencing VHDX has its parent's size (%" PRIu64 " bytes), not %" PRIu64,
                      filename, pf->size, sp.size);
            r = -EINVAL;
        }
        sp.parent_linkage = pf->linkage;
        sp.relative_path = pf->relative;
        sp.absolute_win32_path = pf->absolute;
        sp.logical_sector = pf->logical;
        sp.physical_sector = pf->physical;
    }
    if (r == 0)
        r = vhdx_create_check(&sp, filename, err);
    BlockNode *file = NULL;
    if (r == 0)
        r = bdrv_create_empty_file(filename, &file, err);
    if (r == 0) {
        Error inner = { .msg = "" };
        r = vhdx_create_on(file, &sp, &inner);
        bdrv_close(file);
        if (r < 0)
            error_set(err, inner.errnum, "%s: %s", filename, inner.msg);
    }
    free(pf);
    return r;
}
