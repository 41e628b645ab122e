/* SPDX-License-Identifier: MIT */
/*
 * sesparse.c - seSparse extents of the VMDK driver (VMware's space-efficient sparse format, written by
 * ESXi for snapshots and named by a descriptor's SESPARSE extent line), read only.  It owns the const
 * header (every field checked: magic, version, 4 KiB grains, 4096-entry grain tables, no flags, zero
 * reserved fields and padding, each region inside the file), the volatile header (a journal waiting to
 * be replayed is refused), the grain directory read within the image's directory budget, and the lookup
 * of one grain through 64-bit directory and table entries and a small cache of grain tables.  Entries it
 * cannot trust read as EIO for their grains, logged once per extent.  It does not write.
 */
#include "vmdk.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Const header fields (u64 each), byte offsets. */
#define SE_VERSION      8
#define SE_CAPACITY     16
#define SE_GRAIN        24
#define SE_GT_SIZE      32
#define SE_FLAGS        40
#define SE_RESERVED     48   /* four */
#define SE_REGIONS      80   /* eight (offset, size) pairs in sectors */
#define SE_PAD          208  /* 304 bytes, zero */
#define SE_N_REGIONS    8

enum { R_VOLATILE, R_JOURNAL_HEADER, R_JOURNAL, R_GD, R_GTS, R_FREE_BITMAP, R_BACKMAP, R_GRAINS };

static const char *const region_names[SE_N_REGIONS] = {
    "volatile header", "journal header", "journal", "grain directory", "grain tables", "free bitmap",
    "backmap", "grains",
};

/* Volatile header fields. */
#define SE_VOL_REPLAY   24
#define SE_VOL_PAD      32

static int se_bad(Error *err, const char *what)
{
    error_set(err, EINVAL, "invalid seSparse header: %s", what);
    return -EINVAL;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static int se_check_const(VmdkExtent *e, const uint8_t *h, Error *err)
{
    if (ld_le64(h) != VMDK_SESPARSE_MAGIC)
        return se_bad(err, "bad magic");
    if (ld_le64(h + SE_VERSION) != VMDK_SESPARSE_VERSION) {
        error_set(err, ENOTSUP, "unsupported seSparse version 0x%016" PRIx64, ld_le64(h + SE_VERSION));
        return -ENOTSUP;
    }
    if (ld_le64(h + SE_GRAIN) != VMDK_SESPARSE_GRAIN_SECTORS) {
        error_set(err, EINVAL, "invalid seSparse header: a grain size of %" PRIu64 " sectors (only 8)",
                  ld_le64(h + SE_GRAIN));
        return -EINVAL;
    }
    if (ld_le64(h + SE_GT_SIZE) != VMDK_SESPARSE_GT_SECTORS) {
        error_set(err, EINVAL, "invalid seSparse header: grain tables of %" PRIu64 " sectors (only 64)",
                  ld_le64(h + SE_GT_SIZE));
        return -EINVAL;
    }
    if (ld_le64(h + SE_FLAGS)) {
        error_set(err, ENOTSUP, "unsupported seSparse flags 0x%016" PRIx64, ld_le64(h + SE_FLAGS));
        return -ENOTSUP;
    }
    if (!all_zero(h + SE_RESERVED, 32) || !all_zero(h + SE_PAD, VMDK_SECTOR - SE_PAD))
        return se_bad(err, "reserved fields or padding are not zero");
    e->capacity = ld_le64(h + SE_CAPACITY);
    if (e->capacity == 0 || e->capacity > VMDK_SESPARSE_MAX_SECTORS) {
        error_set(err, EINVAL, "invalid seSparse header: a capacity of %" PRIu64 " sectors (1 to just under "
                  "64 TiB)", e->capacity);
        return -EINVAL;
    }
    e->grain_bytes = VMDK_SESPARSE_GRAIN_SECTORS * VMDK_SECTOR;
    return 0;
}

/* Every region named by the header is a byte range that does not overflow; the two read at open (the
 * volatile header and the grain directory) lie inside the file, past the const header. Grain tables and
 * grains are checked against the file where they are used. */
static int se_check_regions(VmdkExtent *e, const uint8_t *h, uint64_t *off, uint64_t *len, Error *err)
{
    for (int i = 0; i < SE_N_REGIONS; i++) {
        uint64_t o = ld_le64(h + SE_REGIONS + 16 * i), n = ld_le64(h + SE_REGIONS + 16 * i + 8), end;
        bool read_now = i == R_VOLATILE || i == R_GD;
        if (!vmdk_sectors_to_bytes(o, &off[i]) || !vmdk_sectors_to_bytes(n, &len[i]) ||
            !add_ok_u64(off[i], len[i], &end) || end > INT64_MAX ||
            (read_now && !vmdk_range_in_file(off[i], len[i], e->file_size))) {
            error_set(err, EINVAL, "invalid seSparse header: the %s lies outside the file", region_names[i]);
            return -EINVAL;
        }
    }
    if (len[R_VOLATILE] < VMDK_SECTOR)
        return se_bad(err, "no room for the volatile header");
    if (off[R_GTS] < VMDK_SECTOR || off[R_GRAINS] < VMDK_SECTOR)
        return se_bad(err, "grain tables or grains at the const header");
    return 0;
}

static int se_check_volatile(VmdkExtent *e, uint64_t off, Error *err)
{
    uint8_t v[VMDK_SECTOR];
    int r = bdrv_pread(e->file, (int64_t)off, VMDK_SECTOR, v);
    if (r < 0) {
        error_set(err, -r, "cannot read the seSparse volatile header: %s", strerror(-r));
        return r;
    }
    if (ld_le64(v) != VMDK_SESPARSE_VOLATILE_MAGIC)
        return se_bad(err, "bad volatile header magic");
    if (ld_le64(v + SE_VOL_REPLAY)) {
        error_set(err, ENOTSUP, "the seSparse journal must be replayed first (the snapshot was not closed "
                  "cleanly); replaying it is not supported");
        return -ENOTSUP;
    }
    if (!all_zero(v + SE_VOL_PAD, VMDK_SECTOR - SE_VOL_PAD))
        return se_bad(err, "volatile header padding is not zero");
    return 0;
}

/* The directory entries that cover the capacity, within the image's budget. */
static int se_read_gd(VmdkExtent *e, uint64_t gd_off, uint64_t gd_len, uint64_t *gd_budget, Error *err)
{
    uint64_t span = (uint64_t)VMDK_SESPARSE_GTES * VMDK_SESPARSE_GRAIN_SECTORS;
    uint64_t need = (e->capacity + span - 1) / span, bytes = need * 8;
    if (gd_len / 8 < need) {
        error_set(err, EINVAL, "invalid seSparse header: a grain directory of %" PRIu64 " entries does not "
                  "cover the capacity (%" PRIu64 " needed)", gd_len / 8, need);
        return -EINVAL;
    }
    if (bytes > *gd_budget) {
        error_set(err, EINVAL, "the grain directories of the image's extents exceed %u MiB together",
                  VMDK_MAX_GD_TOTAL >> 20);
        return -EINVAL;
    }
    *gd_budget -= bytes;
    e->se_gd = malloc(bytes); /* read in place, then put in host byte order: one copy in memory */
    int r = e->se_gd ? bdrv_pread(e->file, (int64_t)gd_off, (int64_t)bytes, e->se_gd) : -ENOMEM;
    if (r < 0)
        error_set(err, -r, "cannot read the seSparse grain directory: %s", strerror(-r));
    for (uint64_t i = 0; r == 0 && i < need; i++)
        e->se_gd[i] = ld_le64((const uint8_t *)&e->se_gd[i]);
    e->n_gts = (uint32_t)need;
    return r;
}

/* Reads and checks the headers of seSparse extent e->file; loads its grain directory within *gd_budget. */
int vmdk_open_sesparse(VmdkExtent *e, uint64_t *gd_budget, Error *err)
{
    uint8_t h[VMDK_SECTOR];
    uint64_t off[SE_N_REGIONS] = { 0 }, len[SE_N_REGIONS] = { 0 };
    e->sesparse = true;
    e->file_size = bdrv_getlength(e->file);
    if (e->file_size < VMDK_SECTOR) {
        error_set(err, EINVAL, "file too short for a seSparse header (%" PRId64 " bytes)", e->file_size);
        return -EINVAL;
    }
    int r = bdrv_pread(e->file, 0, VMDK_SECTOR, h);
    if (r < 0) {
        error_set(err, -r, "cannot read the seSparse header: %s", strerror(-r));
        return r;
    }
    r = se_check_const(e, h, err);
    if (r == 0)
        r = se_check_regions(e, h, off, len, err);
    if (r == 0)
        r = se_check_volatile(e, off[R_VOLATILE], err);
    if (r == 0)
        r = se_read_gd(e, off[R_GD], len[R_GD], gd_budget, err);
    e->se_gts_off = off[R_GTS];
    e->se_gts_bytes = len[R_GTS];
    e->se_grains_off = off[R_GRAINS];
    return r;
}

/* ---------------------------------------------------------------- grain lookup */

static void se_log_bad(VmdkExtent *e, uint64_t grain, const char *why)
{
    if (__atomic_exchange_n(&e->bad_logged, 1, __ATOMIC_RELAXED) == 0)
        log_msg("%s: grain %" PRIu64 " %s; it reads as an I/O error (logged once per extent)", e->name, grain, why);
}

/* Entry idx of grain table gt of extent ei (at host byte offset at), through the cache. */
static int se_load_gte(VmdkState *s, int ei, uint64_t gt, uint64_t at, uint32_t idx, uint64_t *gte)
{
    VmdkExtent *e = &s->ext[ei];
    size_t slot = (size_t)((gt * 31 + (uint64_t)ei) % VMDK_SE_CACHE_SLOTS);
    pthread_mutex_lock(&s->lock);
    SeGtSlot *c = s->se_cache ? &s->se_cache[slot] : NULL;
    if (c && c->ext == ei && c->gt == (int64_t)gt) {
        *gte = c->gte[idx];
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    pthread_mutex_unlock(&s->lock);
    uint8_t *raw = malloc(VMDK_SESPARSE_GT_BYTES);
    int r = raw ? bdrv_pread(e->file, (int64_t)at, VMDK_SESPARSE_GT_BYTES, raw) : -ENOMEM;
    if (r == 0) {
        *gte = ld_le64(raw + 8 * (size_t)idx);
        pthread_mutex_lock(&s->lock);
        if (c) {
            for (int i = 0; i < VMDK_SESPARSE_GTES; i++)
                c->gte[i] = ld_le64(raw + 8 * i);
            c->ext = ei;
            c->gt = (int64_t)gt;
        }
        pthread_mutex_unlock(&s->lock);
    }
    free(raw);
    return r;
}

/* Where grain table gt of e lies (host bytes), or false with the grain logged as damaged. */
static bool se_gt_place(VmdkExtent *e, uint64_t g, uint64_t gde, uint64_t *at)
{
    uint64_t idx = gde & 0xffffffffu, rel;
    if ((gde >> 32) != VMDK_SESPARSE_GDE_TYPE) {
        se_log_bad(e, g, "has a grain directory entry of an unknown type");
        return false;
    }
    rel = idx * VMDK_SESPARSE_GT_BYTES; /* idx < 2^32: no overflow */
    if ((e->se_gts_bytes && rel + VMDK_SESPARSE_GT_BYTES > e->se_gts_bytes) ||
        !add_ok_u64(e->se_gts_off, rel, at) || !vmdk_range_in_file(*at, VMDK_SESPARSE_GT_BYTES, vmdk_ext_size(e))) {
        se_log_bad(e, g, "has its grain table outside the grain tables or the file");
        return false;
    }
    return true;
}

static GrainKind se_classify(VmdkExtent *e, uint64_t g, uint64_t gte, uint64_t *host)
{
    uint64_t index, rel, off;
    switch (gte >> 60) {
    case 0:
        if (gte == 0)
            return GRAIN_ABSENT;
        se_log_bad(e, g, "has an unallocated entry with bits set");
        return GRAIN_BAD;
    case 1: /* unmapped by the guest */
    case 2: /* zeroed */
        return GRAIN_ZERO;
    case 3:
        index = ((gte & UINT64_C(0x0fff000000000000)) >> 48) | ((gte & UINT64_C(0x0000ffffffffffff)) << 12);
        if (!mul_ok_u64(index, e->grain_bytes, &rel) || !add_ok_u64(e->se_grains_off, rel, &off) ||
            !vmdk_range_in_file(off, vmdk_grain_len(e, g), vmdk_ext_size(e))) {
            se_log_bad(e, g, "points past the end of the file");
            return GRAIN_BAD;
        }
        *host = off;
        return GRAIN_DATA;
    default:
        se_log_bad(e, g, "has an entry of an unknown type");
        return GRAIN_BAD;
    }
}

/* What grain g of seSparse extent ei is (vmdk_grain's contract). */
int vmdk_se_grain(VmdkState *s, int ei, uint64_t g, GrainKind *kind, uint64_t *host, bool *whole_gt)
{
    VmdkExtent *e = &s->ext[ei];
    uint64_t gt = g / VMDK_SESPARSE_GTES, at = 0, gte = 0;
    if (whole_gt)
        *whole_gt = false;
    if (gt >= e->n_gts) {
        se_log_bad(e, g, "lies past the grain directory");
        *kind = GRAIN_BAD;
        return 0;
    }
    uint64_t gde = e->se_gd[gt];
    if (gde == 0) {
        *kind = GRAIN_ABSENT;
        if (whole_gt)
            *whole_gt = true;
        return 0;
    }
    if (!se_gt_place(e, g, gde, &at)) {
        *kind = GRAIN_BAD;
        return 0;
    }
    int r = se_load_gte(s, ei, gt, at, (uint32_t)(g % VMDK_SESPARSE_GTES), &gte);
    if (r == 0)
        *kind = se_classify(e, g, gte, host);
    return r;
}
