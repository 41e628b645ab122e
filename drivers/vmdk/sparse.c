/* SPDX-License-Identifier: MIT */
/*
 * sparse.c - hosted sparse extents of the VMDK driver: the "KDMV" header (or its footer copy in a
 * stream-optimized file), every field checked against the file size, the grain directory read within a
 * memory budget; the grain lookup through a small fixed grain-table cache, the classification of grain
 * table entries (absent, zeroed, data, compressed, damaged: logged once per extent); and the inflating
 * of deflate-compressed grains with their markers.  It does not write.
 */
#include "vmdk.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---------------------------------------------------------------- sparse extents */

static int vmdk_bad_header(Error *err, const char *what)
{
    error_set(err, EINVAL, "invalid sparse extent header: %s", what);
    return -EINVAL;
}

static int vmdk_check_identity(const uint8_t *h, Error *err)
{
    uint32_t magic = ld_le32(h + SH_MAGIC);
    if (magic == VMDK_COWD_MAGIC) {
        error_set(err, ENOTSUP, "ESX sparse (COWD) extents are not supported");
        return -ENOTSUP;
    }
    if (magic != VMDK_MAGIC) {
        error_set(err, EINVAL, "not a VMDK sparse extent (bad magic 0x%08" PRIx32 ")", magic);
        return -EINVAL;
    }
    uint32_t version = ld_le32(h + SH_VERSION);
    if (version < 1 || version > 3) {
        error_set(err, ENOTSUP, "unsupported VMDK sparse extent version %" PRIu32 " (1 to 3 are supported)",
                  version);
        return -ENOTSUP;
    }
    return 0;
}

static int vmdk_check_flags(VmdkExtent *e, const uint8_t *h, Error *err)
{
    if (e->flags & ~VMDK_KNOWN_FLAGS) {
        error_set(err, ENOTSUP, "unknown sparse extent flags 0x%08" PRIx32, e->flags & ~VMDK_KNOWN_FLAGS);
        return -ENOTSUP;
    }
    if ((e->flags & VMDK_FLAG_NL_TEST) && memcmp(h + SH_EOL_CHARS, "\n \r\n", 4) != 0) {
        error_set(err, EINVAL, "the end-of-line check bytes are damaged (was the file copied in text mode?)");
        return -EINVAL;
    }
    if ((e->flags & VMDK_FLAG_COMPRESSED) && ld_le16(h + SH_COMPRESS_ALGO) != VMDK_COMPRESS_DEFLATE) {
        error_set(err, ENOTSUP, "unsupported grain compression algorithm %u (only deflate)",
                  ld_le16(h + SH_COMPRESS_ALGO));
        return -ENOTSUP;
    }
    if ((e->flags & VMDK_FLAG_MARKERS) && !(e->flags & VMDK_FLAG_COMPRESSED))
        return vmdk_bad_header(err, "grain markers without compressed grains");
    return 0;
}

/* Capacity, grain size and the grain directory's size. */
static int vmdk_check_geometry(VmdkExtent *e, const uint8_t *h, Error *err)
{
    uint64_t grain = ld_le64(h + SH_GRAIN_SIZE);
    e->capacity = ld_le64(h + SH_CAPACITY);
    if (!is_pow2(grain) || grain > VMDK_MAX_GRAIN_SECTORS) {
        error_set(err, EINVAL, "grain size of %" PRIu64 " sectors is not a power of two from 1 to %u",
                  grain, VMDK_MAX_GRAIN_SECTORS);
        return -EINVAL;
    }
    if (ld_le32(h + SH_NUM_GTES) != VMDK_GTES_PER_GT) {
        error_set(err, EINVAL, "%" PRIu32 " entries per grain table (only %d are valid)",
                  ld_le32(h + SH_NUM_GTES), VMDK_GTES_PER_GT);
        return -EINVAL;
    }
    if (e->capacity > VMDK_MAX_CAPACITY)
        return vmdk_bad_header(err, "capacity too large");
    e->grain_bytes = grain * VMDK_SECTOR;
    uint64_t grains = (e->capacity + grain - 1) / grain;
    uint64_t gts = (grains + VMDK_GTES_PER_GT - 1) / VMDK_GTES_PER_GT;
    if (gts > VMDK_MAX_GTS) {
        error_set(err, EINVAL, "%" PRIu64 " grain tables exceed the limit of %u (capacity %" PRIu64
                  " sectors, grain %" PRIu64 ")", gts, VMDK_MAX_GTS, e->capacity, grain);
        return -EINVAL;
    }
    e->n_gts = (uint32_t)gts;
    return 0;
}

/* Grain directory, its redundant copy, the overhead and the embedded descriptor against the file size. */
static int vmdk_check_offsets(VmdkExtent *e, const uint8_t *h, Error *err)
{
    uint64_t gd_bytes = (uint64_t)e->n_gts * 4;
    uint64_t overhead = ld_le64(h + SH_OVERHEAD), desc_size = ld_le64(h + SH_DESC_SIZE);
    if (!vmdk_sectors_to_bytes(ld_le64(h + SH_GD_OFFSET), &e->gd_off) || !vmdk_range_in_file(e->gd_off, gd_bytes, e->file_size))
        return vmdk_bad_header(err, "the grain directory lies outside the file");
    if (e->flags & VMDK_FLAG_RGD) {
        if (!vmdk_sectors_to_bytes(ld_le64(h + SH_RGD_OFFSET), &e->rgd_off) ||
            !vmdk_range_in_file(e->rgd_off, gd_bytes, e->file_size))
            return vmdk_bad_header(err, "the redundant grain directory lies outside the file");
    }
    if (!vmdk_sectors_to_bytes(overhead, &e->meta_end) || e->meta_end > (uint64_t)e->file_size)
        return vmdk_bad_header(err, "the overhead extends past the end of the file");
    if (desc_size) {
        if (desc_size > VMDK_MAX_DESC_BYTES / VMDK_SECTOR) {
            error_set(err, EINVAL, "embedded descriptor of %" PRIu64 " sectors exceeds the limit of %d bytes",
                      desc_size, VMDK_MAX_DESC_BYTES);
            return -EINVAL;
        }
        e->desc_bytes = desc_size * VMDK_SECTOR;
        if (!vmdk_sectors_to_bytes(ld_le64(h + SH_DESC_OFFSET), &e->desc_off) ||
            !vmdk_range_in_file(e->desc_off, e->desc_bytes, e->file_size))
            return vmdk_bad_header(err, "the embedded descriptor lies outside the file");
    }
    return 0;
}

static int vmdk_read_gd(VmdkExtent *e, uint64_t *gd_budget, Error *err)
{
    size_t bytes = (size_t)e->n_gts * 4;
    if (bytes > *gd_budget) {
        error_set(err, EINVAL, "the grain directories of the image's extents exceed %u MiB together",
                  VMDK_MAX_GD_TOTAL >> 20);
        return -EINVAL;
    }
    *gd_budget -= bytes;
    uint8_t *raw = malloc(bytes ? bytes : 1);
    e->gd = malloc(bytes ? bytes : 1);
    if (!raw || !e->gd) {
        free(raw);
        error_set(err, ENOMEM, "out of memory for a grain directory of %zu bytes", bytes);
        return -ENOMEM;
    }
    int r = bytes ? bdrv_pread(e->file, (int64_t)e->gd_off, (int64_t)bytes, raw) : 0;
    if (r < 0) {
        free(raw);
        error_set(err, -r, "cannot read the grain directory: %s", strerror(-r));
        return r;
    }
    for (uint32_t i = 0; i < e->n_gts; i++)
        e->gd[i] = ld_le32(raw + 4 * (size_t)i);
    free(raw);
    return 0;
}

static int vmdk_parse_header(VmdkExtent *e, const uint8_t *h, Error *err)
{
    int r = vmdk_check_identity(h, err);
    if (r < 0)
        return r;
    e->version = ld_le32(h + SH_VERSION);
    e->flags = ld_le32(h + SH_FLAGS);
    r = vmdk_check_flags(e, h, err);
    if (r == 0)
        r = vmdk_check_geometry(e, h, err);
    if (r == 0 && ld_le64(h + SH_GD_OFFSET) == VMDK_GD_AT_END)
        return 1; /* the caller reads the footer */
    if (r == 0)
        r = vmdk_check_offsets(e, h, err);
    return r;
}

/* Stream-optimized: the header says the directory is at the end; the footer (a full header copy, in the
 * second-to-last sector, before the end-of-stream marker) gives its place. */
static int vmdk_read_footer(VmdkExtent *e, uint8_t *h, Error *err)
{
    if (e->file_size < 3 * VMDK_SECTOR)
        return vmdk_bad_header(err, "the grain directory is at the end, but there is no footer");
    int r = bdrv_pread(e->file, e->file_size - 2 * VMDK_SECTOR, VMDK_SECTOR, h);
    if (r < 0) {
        error_set(err, -r, "cannot read the footer: %s", strerror(-r));
        return r;
    }
    if (ld_le32(h + SH_MAGIC) != VMDK_MAGIC)
        return vmdk_bad_header(err, "the grain directory is at the end, but the footer is missing");
    r = vmdk_parse_header(e, h, err);
    if (r == 1)
        return vmdk_bad_header(err, "the footer does not say where the grain directory is");
    return r;
}

/* Reads and validates the sparse header of e->file; loads the grain directory within *gd_budget bytes. */
int vmdk_open_sparse(VmdkExtent *e, uint64_t *gd_budget, Error *err)
{
    uint8_t h[VMDK_SECTOR];
    e->file_size = bdrv_getlength(e->file);
    if (e->file_size < 0) {
        error_set(err, (int)-e->file_size, "cannot get the file size: %s",
                  strerror((int)-e->file_size));
        return (int)e->file_size;
    }
    if (e->file_size < VMDK_SECTOR) {
        error_set(err, EINVAL, "file too short for a VMDK sparse header (%" PRId64 " bytes)",
                  e->file_size);
        return -EINVAL;
    }
    int r = bdrv_pread(e->file, 0, VMDK_SECTOR, h);
    if (r < 0) {
        error_set(err, -r, "cannot read the header: %s", strerror(-r));
        return r;
    }
    r = vmdk_parse_header(e, h, err);
    if (r == 1) {
        /* the footer's descriptor fields are the header's: keep what the header said */
        uint64_t desc_off = ld_le64(h + SH_DESC_OFFSET), desc_size = ld_le64(h + SH_DESC_SIZE);
        r = vmdk_read_footer(e, h, err);
        if (r == 0 && (desc_off != ld_le64(h + SH_DESC_OFFSET) || desc_size != ld_le64(h + SH_DESC_SIZE)))
            r = vmdk_bad_header(err, "the footer and the header place the descriptor differently");
    }
    if (r == 0)
        r = vmdk_read_gd(e, gd_budget, err);
    return r;
}

/* ---------------------------------------------------------------- grain lookup */

static void vmdk_log_bad(VmdkExtent *e, uint64_t grain, const char *why)
{
    if (__atomic_exchange_n(&e->bad_logged, 1, __ATOMIC_RELAXED) == 0)
        log_msg("%s: grain %" PRIu64 " %s; it reads as an I/O error (logged once per extent)", e->name, grain, why);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* Copies grain table gt (at gt_sector) of extent ei into gte (through the cache). */
static int vmdk_load_gt(VmdkState *s, int ei, uint32_t gt, uint32_t gt_sector, uint32_t gte[VMDK_GTES_PER_GT])
{
    VmdkExtent *e = &s->ext[ei];
    size_t slot = vmdk_gt_slot(gt, ei);
    pthread_mutex_lock(&s->lock);
    GtSlot *c = &s->gt_cache[slot];
    if (c->gt_index == gt && s->gt_cache_ext[slot] == ei) {
        memcpy(gte, c->gte, sizeof(c->gte));
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    uint64_t gen = s->cache_gen;
    pthread_mutex_unlock(&s->lock);
    uint8_t raw[VMDK_GT_BYTES];
    int r = bdrv_pread(e->file, (int64_t)gt_sector * VMDK_SECTOR, VMDK_GT_BYTES, raw);
    if (r < 0)
        return r;
    for (int i = 0; i < VMDK_GTES_PER_GT; i++)
        gte[i] = ld_le32(raw + 4 * i);
    pthread_mutex_lock(&s->lock);
    if (gen == s->cache_gen) { /* no table was written meanwhile: what was read is current */
        memcpy(c->gte, gte, sizeof(c->gte));
        c->gt_index = gt;
        s->gt_cache_ext[slot] = ei;
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static GrainKind vmdk_classify(VmdkExtent *e, uint64_t g, uint32_t entry, uint64_t *host)
{
    if (entry == 0)
        return GRAIN_ABSENT;
    if (entry == VMDK_GTE_ZEROED && (e->flags & VMDK_FLAG_ZERO_GRAIN))
        return GRAIN_ZERO;
    uint64_t off = (uint64_t)entry * VMDK_SECTOR;
    uint64_t len = (e->flags & VMDK_FLAG_COMPRESSED) ? VMDK_MARKER_HEADER : vmdk_grain_len(e, g);
    uint64_t gd_bytes = (uint64_t)e->n_gts * 4;
    if (!vmdk_range_in_file(off, len, vmdk_ext_size(e))) {
        vmdk_log_bad(e, g, "points past the end of the file");
        return GRAIN_BAD;
    }
    if (off < e->meta_end || overlaps(off, len, e->gd_off, gd_bytes) ||
        ((e->flags & VMDK_FLAG_RGD) && overlaps(off, len, e->rgd_off, gd_bytes)) ||
        (e->desc_bytes && overlaps(off, len, e->desc_off, e->desc_bytes))) {
        vmdk_log_bad(e, g, "points into the image's metadata");
        return GRAIN_BAD;
    }
    *host = off;
    return (e->flags & VMDK_FLAG_COMPRESSED) ? GRAIN_COMPRESSED : GRAIN_DATA;
}

static bool gt_is_empty(const uint32_t gte[VMDK_GTES_PER_GT])
{
    for (int i = 0; i < VMDK_GTES_PER_GT; i++)
        if (gte[i])
            return false;
    return true;
}

/* What grain g of extent ei is; *host for data and compressed grains. If whole_gt is given, it is set when
 * the answer (absent) holds for the rest of g's grain table, so a map of a huge empty disk takes one step
 * per table, not per grain. */
int vmdk_grain(VmdkState *s, int ei, uint64_t g, GrainKind *kind, uint64_t *host, bool *whole_gt)
{
    VmdkExtent *e = &s->ext[ei];
    if (e->sesparse)
        return vmdk_se_grain(s, ei, g, kind, host, whole_gt);
    uint32_t gt = (uint32_t)(g / VMDK_GTES_PER_GT);
    uint32_t gt_sector = __atomic_load_n(&e->gd[gt], __ATOMIC_ACQUIRE);
    if (whole_gt)
        *whole_gt = false;
    if (gt_sector == 0) {
        *kind = GRAIN_ABSENT;
        if (whole_gt)
            *whole_gt = true;
        return 0;
    }
    if (!vmdk_range_in_file((uint64_t)gt_sector * VMDK_SECTOR, VMDK_GT_BYTES, vmdk_ext_size(e))) {
        vmdk_log_bad(e, g, "has its grain table outside the file");
        *kind = GRAIN_BAD;
        return 0;
    }
    uint32_t gte[VMDK_GTES_PER_GT];
    int r = vmdk_load_gt(s, ei, gt, gt_sector, gte);
    if (r < 0)
        return r;
    *kind = vmdk_classify(e, g, gte[g % VMDK_GTES_PER_GT], host);
    if (whole_gt && *kind == GRAIN_ABSENT)
        *whole_gt = gt_is_empty(gte);
    return 0;
}

/* Decompresses grain g stored at host into out (grain_bytes long). */
int vmdk_inflate_grain(VmdkExtent *e, uint64_t g, uint64_t host, uint8_t *out)
{
    uint64_t max_in = e->grain_bytes + e->grain_bytes / 8 + 1024; /* deflate's worst case, with margin */
    uint64_t data = host, in_len;
    if (e->flags & VMDK_FLAG_MARKERS) {
        uint8_t m[VMDK_MARKER_HEADER];
        int r = bdrv_pread(e->file, (int64_t)host, VMDK_MARKER_HEADER, m);
        if (r < 0)
            return r;
        in_len = ld_le32(m + 8);
        data = host + VMDK_MARKER_HEADER;
        if (ld_le64(m) != g * (e->grain_bytes / VMDK_SECTOR) || in_len == 0 || in_len > max_in ||
            !vmdk_range_in_file(data, in_len, vmdk_ext_size(e))) {
            vmdk_log_bad(e, g, "has a damaged grain marker");
            return -EIO;
        }
    } else {
        in_len = MIN(max_in, (uint64_t)vmdk_ext_size(e) - host);
    }
    uint8_t *in = malloc(in_len);
    if (!in)
        return -ENOMEM;
    int r = bdrv_pread(e->file, (int64_t)data, (int64_t)in_len, in);
    if (r < 0) {
        free(in);
        return r;
    }
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit(&z) != Z_OK) {
        free(in);
        return -ENOMEM;
    }
    z.next_in = in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)e->grain_bytes;
    int zr = inflate(&z, Z_FINISH);
    uint64_t got = z.total_out;
    inflateEnd(&z);
    free(in);
    /* a whole grain, or at the end of the extent at least what the capacity still holds */
    if (zr != Z_STREAM_END || (got != e->grain_bytes && got < vmdk_grain_len(e, g))) {
        vmdk_log_bad(e, g, "does not inflate to one grain");
        return -EIO;
    }
    if (got < e->grain_bytes)
        memset(out + got, 0, e->grain_bytes - got);
    return 0;
}
