/* SPDX-License-Identifier: MIT */
/*
 * bochs.c - the Bochs "growing" redolog format driver, read-only.  It owns the 512-byte little-endian
 * header ("Bochs Virtual HD Image", type "Redolog", subtype "Growing", version 1 or 2: catalog entries,
 * bitmap size, extent size and disk size), the catalog (one u32 per extent: the extent's index in the data
 * area, 0xffffffff for "not written"), and each stored extent's sector bitmap (bit s, LSB first, says
 * whether sector s of the extent holds data; a clear bit reads as zeros).  All fields are checked at open
 * against BOCHS_MAX_CATALOG, BOCHS_MAX_EXTENT and the file size; the catalog is held in memory.  Undoable
 * and volatile redologs (which sit on a separate base image) are refused by name.  Reads go through the
 * core's mapped read; block status gives host offsets (so reads may be spliced) and holes.  It knows
 * nothing of FUSE or of other formats.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOCHS_HEADER_SIZE  512
#define BOCHS_MAGIC        "Bochs Virtual HD Image"
#define BOCHS_TYPE         "Redolog"
#define BOCHS_SUBTYPE      "Growing"
#define BOCHS_V1           0x00010000u
#define BOCHS_V2           0x00020000u
#define BOCHS_UNALLOCATED  0xffffffffu
#define BOCHS_MAX_CATALOG  0x100000u     /* 4 MiB of catalog */
#define BOCHS_MAX_EXTENT   (8 * MiB)
#define BOCHS_MAX_BITMAP   (64 * KiB)    /* bitmap bytes of one extent */

typedef struct BochsState {
    BlockNode *file;
    uint32_t version;
    uint32_t n_catalog;
    uint32_t *catalog;       /* host order */
    uint64_t extent_size;
    uint64_t bitmap_bytes;   /* bitmap_blocks * 512: the bitmap's room before each extent's data */
    uint64_t stride;         /* bytes per stored extent: bitmap room + extent */
    uint64_t data_offset;    /* header + catalog */
    uint64_t disk_size;
} BochsState;

static bool bochs_field_is(const uint8_t *field, size_t len, const char *want)
{
    size_t n = strlen(want);
    return n < len && memcmp(field, want, n) == 0 && field[n] == 0;
}

static int bochs_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 72 || !bochs_field_is(buf, 32, BOCHS_MAGIC) || !bochs_field_is(buf + 32, 16, BOCHS_TYPE) ||
        !bochs_field_is(buf + 48, 16, BOCHS_SUBTYPE))
        return 0;
    uint32_t v = ld_le32(buf + 64);
    return v == BOCHS_V1 || v == BOCHS_V2 ? 100 : 0;
}

static void bochs_close(BlockNode *bs)
{
    BochsState *s = bs->opaque;
    free(s->catalog);
    s->catalog = NULL;
}

/* Magic, type, subtype and version: the reason this is not a growing redolog this driver reads. */
static int bochs_check_kind(const uint8_t *h, Error *err)
{
    if (!bochs_field_is(h, 32, BOCHS_MAGIC)) {
        error_set(err, EINVAL, "not a Bochs image (no \"%s\" magic)", BOCHS_MAGIC);
        return -EINVAL;
    }
    if (!bochs_field_is(h + 32, 16, BOCHS_TYPE) || !bochs_field_is(h + 48, 16, BOCHS_SUBTYPE)) {
        char type[17], sub[17];
        snprintf(type, sizeof(type), "%.16s", (const char *)h + 32);
        snprintf(sub, sizeof(sub), "%.16s", (const char *)h + 48);
        for (char *p = type; *p; p++)
            *p = (*p < 32 || *p > 126) ? '?' : *p;
        for (char *p = sub; *p; p++)
            *p = (*p < 32 || *p > 126) ? '?' : *p;
        error_set(err, ENOTSUP, "Bochs image of type '%s' subtype '%s' not supported (only growing redologs)",
                  type, sub);
        return -ENOTSUP;
    }
    uint32_t v = ld_le32(h + 64);
    if (v != BOCHS_V1 && v != BOCHS_V2) {
        error_set(err, ENOTSUP, "Bochs redolog version 0x%08" PRIx32 " not supported (only 1 and 2)", v);
        return -ENOTSUP;
    }
    return 0;
}

/* The size fields: extent a power of two in [512, BOCHS_MAX_EXTENT], bitmap enough for its sectors,
 * catalog within BOCHS_MAX_CATALOG and large enough for the disk. */
static int bochs_check_sizes(BochsState *s, const uint8_t *h, Error *err)
{
    uint32_t hsize = ld_le32(h + 68), bitmap = ld_le32(h + 76);
    s->version = ld_le32(h + 64);
    s->n_catalog = ld_le32(h + 72);
    s->extent_size = ld_le32(h + 80);
    s->disk_size = ld_le64(h + (s->version == BOCHS_V1 ? 84 : 88));
    if (hsize < BOCHS_HEADER_SIZE || hsize > 64 * KiB) {
        error_set(err, EINVAL, "Bochs header size %" PRIu32 " invalid", hsize);
        return -EINVAL;
    }
    if (s->extent_size < 512 || s->extent_size > BOCHS_MAX_EXTENT || !is_pow2(s->extent_size)) {
        error_set(err, EINVAL, "Bochs extent size %" PRIu64 " invalid (a power of two from 512 to 8 MiB)",
                  s->extent_size);
        return -EINVAL;
    }
    if ((uint64_t)bitmap * 8 < s->extent_size / 512 || bitmap > BOCHS_MAX_BITMAP) {
        error_set(err, EINVAL, "Bochs bitmap size %" PRIu32 " does not fit extent size %" PRIu64, bitmap,
                  s->extent_size);
        return -EINVAL;
    }
    if (s->n_catalog > BOCHS_MAX_CATALOG) {
        error_set(err, EFBIG, "Bochs catalog of %" PRIu32 " entries too large (at most %u)", s->n_catalog,
                  BOCHS_MAX_CATALOG);
        return -EFBIG;
    }
    if (s->disk_size > (uint64_t)s->n_catalog * s->extent_size || s->disk_size > INT64_MAX) {
        error_set(err, EINVAL, "Bochs disk size %" PRIu64 " larger than its %" PRIu32 " extents", s->disk_size,
                  s->n_catalog);
        return -EINVAL;
    }
    s->bitmap_bytes = align_up(bitmap, 512);
    s->stride = s->bitmap_bytes + align_up((int64_t)s->extent_size, 512);
    s->data_offset = hsize + (uint64_t)s->n_catalog * 4;
    return 0;
}

static int bochs_read_catalog(BochsState *s, int64_t flen, Error *err)
{
    uint64_t bytes = (uint64_t)s->n_catalog * 4;
    if (s->data_offset > (uint64_t)flen) {
        error_set(err, EINVAL, "Bochs catalog of %" PRIu32 " entries passes the end of the file", s->n_catalog);
        return -EINVAL;
    }
    s->catalog = malloc(bytes ? bytes : 1);
    if (!s->catalog)
        return -ENOMEM;
    int r = bdrv_pread(s->file, (int64_t)(s->data_offset - bytes), (int64_t)bytes, s->catalog);
    if (r < 0) {
        error_set(err, -r, "cannot read the Bochs catalog: %s", strerror(-r));
        return r;
    }
    for (uint32_t i = 0; i < s->n_catalog; i++) {
        s->catalog[i] = ld_le32(&s->catalog[i]);
        uint64_t end = s->data_offset + ((uint64_t)s->catalog[i] + 1) * s->stride;
        if (s->catalog[i] != BOCHS_UNALLOCATED && end - s->stride + s->bitmap_bytes > (uint64_t)flen) {
            error_set(err, EINVAL, "Bochs catalog entry %" PRIu32 " (%" PRIu32 ") points past the end of the file",
                      i, s->catalog[i]);
            return -EINVAL;
        }
    }
    return 0;
}

static int bochs_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    BochsState *s = bs->opaque;
    uint8_t h[BOCHS_HEADER_SIZE];
    (void)opts;
    s->file = bs->file;
    int64_t flen = bdrv_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    if (flen < BOCHS_HEADER_SIZE) {
        error_set(err, EINVAL, "file too short for a Bochs header (%" PRId64 " bytes)", flen);
        return -EINVAL;
    }
    int r = bdrv_pread(bs->file, 0, BOCHS_HEADER_SIZE, h);
    if (r == 0)
        r = bochs_check_kind(h, err);
    if (r == 0 && !bs->read_only) {
        error_set(err, EROFS, "Bochs images are read-only (mount without --rw, or use --overlay)");
        r = -EROFS;
    }
    if (r == 0)
        r = bochs_check_sizes(s, h, err);
    if (r == 0)
        r = bochs_read_catalog(s, flen, err);
    if (r < 0) {
        bochs_close(bs);
        return r;
    }
    bs->request_alignment = 1;
    return 0;
}

static int64_t bochs_getlength(BlockNode *bs)
{
    BochsState *s = bs->opaque;
    return (int64_t)s->disk_size;
}

/* One run inside one extent: sectors whose bitmap bits agree (data at a host offset, or a hole). */
static int bochs_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    BochsState *s = bs->opaque;
    (void)opaque;
    if (offset < 0 || bytes <= 0 || (uint64_t)offset >= s->disk_size)
        return -EINVAL;
    uint64_t idx = (uint64_t)offset / s->extent_size, in = (uint64_t)offset % s->extent_size;
    uint64_t max = MIN((uint64_t)bytes, MIN(s->extent_size - in, s->disk_size - (uint64_t)offset));
    if (idx >= s->n_catalog || s->catalog[idx] == BOCHS_UNALLOCATED) {
        st->bytes = (int64_t)max;
        return 0; /* not written: zeros (no backing file) */
    }
    uint64_t base = s->data_offset + (uint64_t)s->catalog[idx] * s->stride;
    uint64_t first = in / 512, last = (in + max - 1) / 512;
    uint8_t bits[512];
    uint64_t nbytes = MIN(sizeof(bits), last / 8 - first / 8 + 1);
    int r = bdrv_pread(s->file, (int64_t)(base + first / 8), (int64_t)nbytes, bits);
    if (r < 0)
        return r;
    bool set = bits[0] >> (first % 8) & 1;
    uint64_t sec = first + 1;
    for (; sec <= last && (sec / 8 - first / 8) < nbytes; sec++)
        if ((bool)(bits[sec / 8 - first / 8] >> (sec % 8) & 1) != set)
            break;
    st->bytes = (int64_t)MIN(max, sec * 512 - in);
    if (set) {
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)(base + s->bitmap_bytes + in);
        st->host_file = s->file;
    }
    return 0;
}

static const BlockReadMap bochs_read_map = { .map = bochs_map };

static int bochs_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return bdrv_read_mapped(bs, offset, bytes, buf, &bochs_read_map, NULL);
}

static int bochs_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    memset(st, 0, sizeof(*st));
    return bochs_map(bs, offset, bytes, st, NULL);
}

static void bochs_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    (void)bs;
    facts->unallocated_is_zero = true;
    facts->no_qemu_info = true; /* qemu-img prints neither cluster-size nor dirty-flag for bochs */
}

static void bochs_get_info(BlockNode *bs, InfoList *info)
{
    BochsState *s = bs->opaque;
    uint32_t used = 0;
    for (uint32_t i = 0; i < s->n_catalog; i++)
        used += s->catalog[i] != BOCHS_UNALLOCATED;
    info_add_int(info, "bochs_version", s->version >> 16);
    info_add_str(info, "bochs_type", "growing redolog");
    info_add_int(info, "extent_size", (int64_t)s->extent_size);
    info_add_int(info, "extents_total", s->n_catalog);
    info_add_int(info, "extents_allocated", used);
}

static int64_t bochs_memory_used(BlockNode *bs)
{
    BochsState *s = bs->opaque;
    return (int64_t)sizeof(*s) + (int64_t)s->n_catalog * 4;
}

const BlockDriver bdrv_bochs = {
    .name = "bochs",
    .instance_size = sizeof(BochsState),
    .probe = bochs_probe,
    .open = bochs_open,
    .close = bochs_close,
    .read = bochs_read,
    .block_status = bochs_block_status,
    .getlength = bochs_getlength,
    .memory_used = bochs_memory_used,
    .get_info = bochs_get_info,
    .get_facts = bochs_get_facts,
};
