/* SPDX-License-Identifier: MIT */
/*
 * write.c - the write side of the VMDK driver: flat extents in place; hosted sparse extents in place or
 * by appending a whole grain that is flushed before the primary, then the redundant, grain table names
 * it; a new CID in the descriptor at the first write; write-zeroes and discard (zeroed-grain entries for
 * whole grains where the extent has the flag, zeros as data elsewhere); flush; and the refusal of extents
 * that cannot be written (stream-optimized, seSparse, zero).
 */
#include "vmdk.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- writing */

/* Writes one little-endian table entry (a GD or GT slot) at byte offset off of the extent file. */
static int vmdk_write_entry(VmdkExtent *e, uint64_t off, uint32_t v, const char *event)
{
    uint8_t le[4];
    st_le32(le, v);
    bdrv_debug_event(e->file, event);
    return bdrv_pwrite(e->file, (int64_t)off, 4, le, 0);
}

/* Appends len zero-or-given bytes at the end of the extent file (sector-aligned); returns the sector. */
static int vmdk_append(VmdkExtent *e, const void *buf, uint64_t len, uint32_t *sector)
{
    uint64_t off = (uint64_t)align_up(vmdk_ext_size(e), VMDK_SECTOR), end;
    if (!add_ok_u64(off, len, &end) || end / VMDK_SECTOR > UINT32_MAX)
        return -EFBIG; /* grain table entries hold 32-bit sector numbers */
    int r = bdrv_pwrite(e->file, (int64_t)off, (int64_t)len, buf, 0);
    if (r < 0)
        return r;
    __atomic_store_n(&e->file_size, (int64_t)end, __ATOMIC_RELEASE);
    *sector = (uint32_t)(off / VMDK_SECTOR);
    return 0;
}

/* Grain directory entry gt has no table: appends a zeroed one (and its redundant copy), flushes them,
 * then points the directory entries at them. Called with alloc_lock held. */
static int vmdk_alloc_gt(VmdkExtent *e, uint32_t gt)
{
    static const uint8_t zeros[VMDK_GT_BYTES];
    uint32_t sec, rsec = 0;
    int r = vmdk_append(e, zeros, VMDK_GT_BYTES, &sec);
    if (r == 0 && e->rgd)
        r = vmdk_append(e, zeros, VMDK_GT_BYTES, &rsec);
    if (r == 0)
        r = bdrv_flush(e->file);
    if (r == 0)
        r = vmdk_write_entry(e, e->gd_off + 4 * (uint64_t)gt, sec, "l1_update");
    if (r == 0 && e->rgd) {
        r = vmdk_write_entry(e, e->rgd_off + 4 * (uint64_t)gt, rsec, "l1_update");
        e->rgd[gt] = rsec;
    }
    if (r == 0)
        __atomic_store_n(&e->gd[gt], sec, __ATOMIC_RELEASE);
    return r;
}

/* Sets grain table entry g to sector in the primary table, then the redundant one; then the cache. A
 * reader that read the table from the file before the update may cache it only if cache_gen did not
 * move meanwhile; one that cached it before the update has its slot patched here. */
static int vmdk_set_gte(VmdkState *s, int ei, uint64_t g, uint32_t sector)
{
    VmdkExtent *e = &s->ext[ei];
    uint32_t gt = (uint32_t)(g / VMDK_GTES_PER_GT), idx = (uint32_t)(g % VMDK_GTES_PER_GT);
    int r = vmdk_write_entry(e, (uint64_t)e->gd[gt] * VMDK_SECTOR + 4 * idx, sector, "l2_update");
    if (r == 0 && e->rgd)
        r = vmdk_write_entry(e, (uint64_t)e->rgd[gt] * VMDK_SECTOR + 4 * idx, sector, "l2_update");
    pthread_mutex_lock(&s->lock);
    s->cache_gen++;
    size_t slot = vmdk_gt_slot(gt, ei);
    if (s->gt_cache[slot].gt_index == gt && s->gt_cache_ext[slot] == ei) {
        if (r == 0)
            s->gt_cache[slot].gte[idx] = sector;
        else
            s->gt_cache[slot].gt_index = -1; /* what the file holds now is unknown: read it again */
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* A first write into grain g (absent or zeroed): the whole grain is built (from the parent, or zeros),
 * the new bytes copied in, appended and flushed, and only then do the grain tables name it, so a crash
 * never leaves an entry pointing at unwritten data. Called with alloc_lock held. */
static int vmdk_alloc_grain(BlockNode *bs, VmdkState *s, int ei, uint64_t g, GrainKind kind, uint64_t in_grain,
                            uint64_t n, const uint8_t *buf)
{
    VmdkExtent *e = &s->ext[ei];
    uint8_t *grain = calloc(1, e->grain_bytes);
    if (!grain)
        return -ENOMEM;
    int r = 0;
    uint64_t gstart = g * e->grain_bytes, glen = vmdk_grain_len(e, g);
    if (kind == GRAIN_ABSENT && bs->backing && (in_grain > 0 || n < glen))
        r = bdrv_pread(bs->backing, (int64_t)(e->start + gstart), (int64_t)glen, grain);
    memcpy(grain + in_grain, buf, n);
    uint32_t gt = (uint32_t)(g / VMDK_GTES_PER_GT), sector = 0;
    if (r == 0 && e->gd[gt] == 0)
        r = vmdk_alloc_gt(e, gt);
    if (r == 0)
        r = vmdk_append(e, grain, e->grain_bytes, &sector);
    free(grain);
    if (r == 0)
        r = bdrv_flush(e->file);
    if (r == 0)
        r = vmdk_set_gte(s, ei, g, sector);
    return r;
}

/* Where the CID value of descriptor text starts and ends (a line "CID = 1234abcd"); false if none. */
static bool find_cid(const char *text, size_t *vstart, size_t *vend)
{
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, "CID", 3) != 0)
            continue;
        p += 3;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '=')
            continue;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        *vstart = (size_t)(p - text);
        while (isxdigit((unsigned char)*p))
            p++;
        *vend = (size_t)(p - text);
        return true;
    }
    return false;
}

/* The CID changes the first time the disk is written after it is opened (the specification's rule), so
 * a delta link made on the old content notices that its parent changed. The descriptor is rewritten in
 * place: a standalone file whole, an embedded one within its sectors. Called with alloc_lock held. */
static int vmdk_new_cid(BlockNode *bs, VmdkState *s)
{
    uint64_t off = 0, len;
    if (s->standalone_descriptor) {
        int64_t n = bdrv_getlength(bs->file);
        if (n < 0)
            return (int)n;
        len = (uint64_t)MIN(n, VMDK_MAX_DESC_BYTES);
    } else {
        off = s->ext[0].desc_off;
        len = s->ext[0].desc_bytes;
    }
    char *text = calloc(1, len + 16), *out = calloc(1, len + 16);
    int r = text && out ? bdrv_pread(bs->file, (int64_t)off, (int64_t)len, text) : -ENOMEM;
    size_t vs, ve;
    if (r == 0 && find_cid(text, &vs, &ve)) {
        uint32_t cid;
        do {
            cid = (uint32_t)random() ^ (uint32_t)now_ns();
        } while (cid == s->cid || cid == UINT32_MAX);
        int n = snprintf(out, len + 16, "%.*s%08" PRIx32 "%s", (int)vs, text, cid, text + ve);
        size_t used = s->standalone_descriptor ? (size_t)n : strnlen(text, len) - (ve - vs) + 8;
        if ((uint64_t)n <= len + 8 && (s->standalone_descriptor || used <= len)) {
            bdrv_debug_event(bs->file, "descriptor_update");
            r = bdrv_pwrite(bs->file, (int64_t)off, s->standalone_descriptor ? n : (int64_t)MIN((uint64_t)n, len),
                            out, 0);
            if (r == 0)
                s->cid = cid;
        }
    }
    free(text);
    free(out);
    return r;
}

/* Writes up to the end of one grain of sparse extent ei; returns the bytes done or -errno. */
static int64_t vmdk_write_sparse(BlockNode *bs, VmdkState *s, int ei, uint64_t off, uint64_t bytes,
                                 const uint8_t *buf, int flags)
{
    VmdkExtent *e = &s->ext[ei];
    uint64_t g = off / e->grain_bytes, in_grain = off % e->grain_bytes;
    uint64_t n = MIN(bytes, e->grain_bytes - in_grain), host = 0;
    GrainKind kind;
    int r = vmdk_grain(s, ei, g, &kind, &host, NULL);
    if (r == 0 && kind != GRAIN_DATA && kind != GRAIN_BAD) {
        pthread_mutex_lock(&s->alloc_lock);
        r = vmdk_grain(s, ei, g, &kind, &host, NULL); /* another writer may have allocated it meanwhile */
        if (r == 0 && (kind == GRAIN_ABSENT || kind == GRAIN_ZERO))
            r = vmdk_alloc_grain(bs, s, ei, g, kind, in_grain, n, buf);
        pthread_mutex_unlock(&s->alloc_lock);
        if (r < 0 || kind == GRAIN_ABSENT || kind == GRAIN_ZERO)
            return r < 0 ? r : (int64_t)n;
    }
    if (r == 0 && kind == GRAIN_DATA)
        r = bdrv_pwrite(e->file, (int64_t)(host + in_grain), (int64_t)n, buf, flags);
    else if (r == 0)
        r = -EIO; /* a damaged entry: writing through it could overwrite metadata */
    return r < 0 ? r : (int64_t)n;
}

/* The first change of the disk after open gives it a new CID (once). */
static int vmdk_touch_cid(BlockNode *bs, VmdkState *s)
{
    if (!s->has_cid || __atomic_load_n(&s->cid_changed, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&s->alloc_lock);
    int r = s->cid_changed ? 0 : vmdk_new_cid(bs, s);
    if (r == 0)
        __atomic_store_n(&s->cid_changed, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->alloc_lock);
    return r;
}

int vmdk_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    VmdkState *s = bs->opaque;
    const uint8_t *p = buf;
    int rc = vmdk_touch_cid(bs, s);
    if (rc < 0)
        return rc;
    while (bytes > 0) {
        int ei = vmdk_find_extent(s, (uint64_t)offset);
        VmdkExtent *e = &s->ext[ei];
        uint64_t off = (uint64_t)offset - e->start;
        uint64_t n = MIN((uint64_t)bytes, e->bytes - off);
        int64_t done;
        if (e->type == EXT_FLAT) {
            int r = bdrv_pwrite(e->file, (int64_t)(e->flat_offset + off), (int64_t)n, p, flags);
            done = r < 0 ? r : (int64_t)n;
        } else {
            done = vmdk_write_sparse(bs, s, ei, off, n, p, flags);
        }
        if (done < 0)
            return (int)done;
        offset += done;
        bytes -= done;
        p += done;
    }
    return 0;
}

/* ---------------------------------------------------------------- zeroes, discard */

/* Grain g of sparse extent ei becomes a zeroed-grain entry (the extent has the zeroed-grain flag): its
 * table is appended first if the directory has none. The grain's old bytes stay where they are, never
 * reused (a reader that mapped them before still reads valid data). Nothing changes for a grain that
 * reads as zeros already without a parent under it. */
static int vmdk_zero_grain_entry(BlockNode *bs, VmdkState *s, int ei, uint64_t g)
{
    VmdkExtent *e = &s->ext[ei];
    uint32_t gt = (uint32_t)(g / VMDK_GTES_PER_GT);
    GrainKind kind;
    uint64_t host;
    pthread_mutex_lock(&s->alloc_lock);
    int r = vmdk_grain(s, ei, g, &kind, &host, NULL);
    if (r == 0 && kind == GRAIN_BAD)
        r = -EIO; /* a damaged entry is left for a repair to see */
    bool needed = r == 0 && kind != GRAIN_ZERO && !(kind == GRAIN_ABSENT && !bs->backing);
    if (needed && e->gd[gt] == 0)
        r = vmdk_alloc_gt(e, gt);
    if (needed && r == 0)
        r = vmdk_set_gte(s, ei, g, VMDK_GTE_ZEROED);
    pthread_mutex_unlock(&s->alloc_lock);
    return r;
}

/* [off, off+n) inside one grain of sparse extent ei reads as zeros afterwards: data grains are zeroed in
 * place, a grain that reads the parent gets zero bytes written (a new grain, the rest copied from the
 * parent); absent grains with no parent and zeroed grains are zeros already. */
static int vmdk_zero_bytes(BlockNode *bs, VmdkState *s, int ei, uint64_t off, uint64_t n, int flags)
{
    VmdkExtent *e = &s->ext[ei];
    GrainKind kind;
    uint64_t host = 0;
    int r = vmdk_grain(s, ei, off / e->grain_bytes, &kind, &host, NULL);
    if (r < 0 || kind == GRAIN_ZERO || (kind == GRAIN_ABSENT && !bs->backing))
        return r;
    if (kind == GRAIN_DATA)
        return bdrv_pwrite_zeroes(e->file, (int64_t)(host + off % e->grain_bytes), (int64_t)n, 0);
    if (kind != GRAIN_ABSENT)
        return -EIO;
    if (flags & BDRV_REQ_NO_FALLBACK)
        return -ENOTSUP;
    uint8_t *zeros = calloc(1, n);
    int64_t done = zeros ? vmdk_write_sparse(bs, s, ei, off, n, zeros, 0) : -ENOMEM;
    free(zeros);
    return done < 0 ? (int)done : 0;
}

/* Zeroes (zero_bytes: write-zeroes) or discards (a hint: only whole grains of extents with zeroed grains)
 * [off, off+bytes) of sparse extent ei. */
static int vmdk_zero_sparse(BlockNode *bs, VmdkState *s, int ei, uint64_t off, uint64_t bytes, bool zero_bytes,
                            int flags)
{
    VmdkExtent *e = &s->ext[ei];
    bool entries = (e->flags & VMDK_FLAG_ZERO_GRAIN) != 0;
    int r = 0;
    for (uint64_t done = 0, n; r == 0 && done < bytes; done += n) {
        uint64_t pos = off + done, g = pos / e->grain_bytes, in_grain = pos % e->grain_bytes;
        n = MIN(bytes - done, e->grain_bytes - in_grain);
        bool whole = in_grain == 0 && n >= vmdk_grain_len(e, g);
        if (entries && whole)
            r = vmdk_zero_grain_entry(bs, s, ei, g);
        else if (zero_bytes)
            r = vmdk_zero_bytes(bs, s, ei, pos, n, flags);
    }
    return r;
}

static int vmdk_zero_or_discard(BlockNode *bs, int64_t offset, int64_t bytes, bool zero_bytes, int flags)
{
    VmdkState *s = bs->opaque;
    int r = vmdk_touch_cid(bs, s);
    while (r == 0 && bytes > 0) {
        int ei = vmdk_find_extent(s, (uint64_t)offset);
        VmdkExtent *e = &s->ext[ei];
        uint64_t off = (uint64_t)offset - e->start;
        uint64_t n = MIN((uint64_t)bytes, e->bytes - off);
        if (e->type == EXT_FLAT && zero_bytes)
            r = bdrv_pwrite_zeroes(e->file, (int64_t)(e->flat_offset + off), (int64_t)n, flags & BDRV_REQ_MAY_UNMAP);
        else if (e->type == EXT_SPARSE)
            r = vmdk_zero_sparse(bs, s, ei, off, n, zero_bytes, flags);
        offset += (int64_t)n;
        bytes -= (int64_t)n;
    }
    if (r == 0 && (flags & BDRV_REQ_FUA))
        r = vmdk_flush(bs);
    return r;
}

/* Write-zeroes: whole grains of an extent with the zeroed-grain flag become zeroed-grain entries (as
 * qemu's driver does), everything else is zeroed as data; a parent's data is never dropped. */
int vmdk_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    return vmdk_zero_or_discard(bs, offset, bytes, true, flags);
}

/* Discard, a hint: whole grains of extents with the zeroed-grain flag become zeroed grains; the rest of
 * the disk is left as it is (an entry of 0 would show the parent, or a flag-less extent's old bytes). */
int vmdk_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    return vmdk_zero_or_discard(bs, offset, bytes, false, 0);
}

int vmdk_flush(BlockNode *bs)
{
    VmdkState *s = bs->opaque;
    for (int i = 0; i < s->n_ext; i++)
        if (s->ext[i].owns_file) {
            int r = bdrv_flush(s->ext[i].file);
            if (r < 0)
                return r;
        }
    return 0; /* the core flushes bs->file */
}

/* --rw: every extent must be one this driver can write, and a redundant directory must mirror the
 * primary one (each table present in both), so that every grain table update has both places. */
int vmdk_check_writable(VmdkExtent *e, Error *err)
{
    if (e->type == EXT_ZERO || (e->type == EXT_SPARSE && ((e->flags & VMDK_FLAG_COMPRESSED) || e->sesparse))) {
        error_set(err, EROFS, "writing %s extents is not supported%s%s%s; mount read-only or use --overlay FILE",
                  e->type == EXT_ZERO ? "ZERO" : e->sesparse ? "seSparse" : "stream-optimized (compressed)",
                  e->owns_file ? " (extent \"" : "", e->owns_file ? e->name : "", e->owns_file ? "\")" : "");
        return -EROFS;
    }
    if (e->type != EXT_SPARSE || !(e->flags & VMDK_FLAG_RGD))
        return 0;
    size_t bytes = (size_t)e->n_gts * 4;
    uint8_t *raw = malloc(bytes ? bytes : 1);
    e->rgd = malloc(bytes ? bytes : 1);
    if (!raw || !e->rgd) {
        free(raw);
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    int r = bytes ? bdrv_pread(e->file, (int64_t)e->rgd_off, (int64_t)bytes, raw) : 0;
    for (uint32_t i = 0; r == 0 && i < e->n_gts; i++) {
        e->rgd[i] = ld_le32(raw + 4 * (size_t)i);
        bool rgt_ok = vmdk_range_in_file((uint64_t)e->rgd[i] * VMDK_SECTOR, VMDK_GT_BYTES, e->file_size);
        if ((e->gd[i] != 0) != (e->rgd[i] != 0) || (e->rgd[i] && !rgt_ok) || (e->rgd[i] && e->rgd[i] == e->gd[i])) {
            error_set(err, EINVAL, "the redundant grain directory of \"%s\" does not mirror the primary one "
                      "(entry %" PRIu32 "); refusing to write", e->name, i);
            r = -EINVAL;
        }
    }
    free(raw);
    return r;
}
