/* SPDX-License-Identifier: MIT */
/*
 * vmdk.c - the VMware VMDK format driver.  It owns the VMDK layout after VMware's "Virtual Disk Format
 * 1.1": the text descriptor (standalone, or embedded in a hosted sparse extent), parsed defensively into
 * an ordered list of extents; hosted sparse extents ("KDMV" header, grain directory and 512-entry grain
 * tables, zeroed-grain entries, the redundant directory, stream-optimized files with deflate-compressed
 * grains, grain markers and the footer copy of the header); seSparse extents of ESXi snapshots (read
 * only, through a descriptor); flat and zero extents; and the delta-link
 * fields (CID, parentCID, parentFileNameHint), which become bs->backing_name for the core to resolve.
 * Extent file names are untrusted: each is resolved against the descriptor's directory and must stay
 * inside it (or a --backing-dir) unless --unsafe-backing is given; extents are opened read-only unless
 * the node is writable.  On writable nodes flat extents are written in place, and hosted sparse extents
 * in place or by appending a whole grain that is flushed before the primary, then the redundant, grain
 * table names it; stream-optimized and zero extents refuse --rw.  Every header field and table entry is
 * checked against the file size before it is used; a damaged grain reads as EIO, logged once per
 * extent.  Grain tables are read on demand into a small fixed cache, so memory is bounded whatever the
 * header says.  It knows nothing of FUSE or of other formats.
 * This file owns the probe, the delta links, opening the extents the descriptor names, open and close,
 * info and the driver table; the other parts are in drivers/vmdk/ (vmdk.h says which file owns what).
 */
#include "vmdk.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- probe */

static int vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len >= 4 && (ld_le32(buf) == VMDK_MAGIC || ld_le32(buf) == VMDK_COWD_MAGIC))
        return 100;
    /* a bare seSparse extent is not probed: lib/probe.c's table hands it here so that open says why */
    if (len >= strlen(VMDK_DESC_SIGNATURE) && memcmp(buf, VMDK_DESC_SIGNATURE, strlen(VMDK_DESC_SIGNATURE)) == 0)
        return 100;
    return 0;
}

/* ---------------------------------------------------------------- delta links */

/* The backing_attached slot: a parent whose CID is not the parentCID recorded here has changed since this
 * delta was made; say so once, when the chain is attached. The data is still served. */
static int vmdk_backing_attached(BlockNode *bs, Error *err)
{
    (void)err;
    const VmdkState *s = bs->opaque;
    if (!bs->backing || !s->has_parent_cid || strcmp(bs->backing->drv->name, "vmdk") != 0)
        return 0;
    const VmdkState *p = bs->backing->opaque;
    if (p->has_cid && p->cid != s->parent_cid)
        log_msg("%s: warning: parentCID %08" PRIx32 " does not match the CID %08" PRIx32 " of the parent %s; "
                "the parent may have changed since this delta was made", bs->filename, s->parent_cid, p->cid,
                bs->backing->filename);
    return 0;
}

static int vmdk_set_parent(BlockNode *bs, VmdkState *s, const Descriptor *d)
{
    s->cid = d->cid;
    s->has_cid = d->has_cid;
    s->parent_cid = d->parent_cid;
    s->has_parent_cid = d->has_parent_cid && d->parent_cid != UINT32_MAX;
    if (!s->has_parent_cid)
        return 0;
    if (!d->has_parent_hint || !d->parent_hint[0]) {
        log_msg("%s: the descriptor has a parentCID but no parentFileNameHint; opened without its parent",
                bs->filename);
        return 0;
    }
    s->parent_hint = strdup(d->parent_hint);
    bs->backing_name = strdup(d->parent_hint);
    bs->backing_format_hint = strdup("vmdk");
    return s->parent_hint && bs->backing_name && bs->backing_format_hint ? 0 : -ENOMEM;
}

/* ---------------------------------------------------------------- extents from the descriptor */

/* The grain-table cache of seSparse extents, made with the first one. */
static int vmdk_se_cache_init(VmdkState *s)
{
    if (s->se_cache)
        return 0;
    s->se_cache = malloc(VMDK_SE_CACHE_SLOTS * sizeof(*s->se_cache));
    if (!s->se_cache)
        return -ENOMEM;
    for (int i = 0; i < VMDK_SE_CACHE_SLOTS; i++) {
        s->se_cache[i].ext = -1;
        s->se_cache[i].gt = -1;
    }
    return 0;
}

/* Opens the file an extent line names, under the extent-path policy (the backing-name policy's). */
static int vmdk_open_extent_file(BlockNode *bs, const BlockOpenOpts *opts, VmdkExtent *e, Error *err)
{
    char path[2 * PATH_MAX];
    bool unsafe = opts && opts->unsafe_backing;
    if (e->name[0] == '/' && !unsafe) {
        error_set(err, EACCES, "extent \"%s\" refused: absolute extent paths are not followed "
                  "(use --unsafe-backing)", e->name);
        return -EACCES;
    }
    path_beside(bs->filename, e->name, path, sizeof(path));
    const char *why = bdrv_named_file_refusal(bs, opts, path);
    if (why) {
        error_set(err, EACCES, "extent \"%s\" refused: %s (use --unsafe-backing)", e->name, why);
        return -EACCES;
    }
    struct stat st;
    if (stat(path, &st) < 0) {
        int en = errno;
        error_set(err, en, "extent \"%s\": %s", e->name, strerror(en));
        return -en;
    }
    if (!S_ISREG(st.st_mode) && !unsafe) {
        error_set(err, EACCES, "extent \"%s\" is not a regular file", e->name);
        return -EACCES;
    }
    e->file = bdrv_open_file(path, opts, bs->read_only, err);
    if (!e->file)
        return -(err->errnum ? err->errnum : EIO);
    e->owns_file = true;
    return 0;
}

static int vmdk_extent_type(VmdkExtent *e, const DescExtent *d, Error *err)
{
    if (strcmp(d->access, "NOACCESS") == 0) {
        error_set(err, ENOTSUP, "extent \"%s\" (%s) is marked NOACCESS", d->name, d->type);
        return -ENOTSUP;
    }
    memcpy(e->kind, d->type, sizeof(e->kind));
    e->kind[sizeof(e->kind) - 1] = '\0';
    if (strcmp(d->type, "FLAT") == 0 || strcmp(d->type, "VMFS") == 0)
        e->type = EXT_FLAT;
    else if (strcmp(d->type, "SPARSE") == 0 || strcmp(d->type, "SESPARSE") == 0)
        e->type = EXT_SPARSE;
    else if (strcmp(d->type, "ZERO") == 0)
        e->type = EXT_ZERO;
    else {
        error_set(err, ENOTSUP, "extent type %s is not supported (only FLAT, VMFS, SPARSE, SESPARSE and ZERO)",
                  d->type);
        return -ENOTSUP;
    }
    return 0;
}

static int vmdk_check_flat(VmdkExtent *e, Error *err)
{
    int64_t fsize = bdrv_getlength(e->file);
    uint64_t end;
    if (fsize < 0) {
        error_set(err, (int)-fsize, "extent \"%s\": cannot get its size", e->name);
        return (int)fsize;
    }
    if (!add_ok_u64(e->flat_offset, e->bytes, &end) || end > (uint64_t)fsize) {
        error_set(err, EINVAL, "flat extent \"%s\" (%" PRId64 " bytes) is shorter than the %" PRIu64
                  " bytes the descriptor gives it", e->name, fsize, end);
        return -EINVAL;
    }
    return 0;
}

static int vmdk_open_one_extent(BlockNode *bs, const BlockOpenOpts *opts, VmdkExtent *e, const DescExtent *d,
                                uint64_t *gd_budget, Error *err)
{
    int r = vmdk_extent_type(e, d, err);
    if (r < 0 || e->type == EXT_ZERO)
        return r;
    if (!vmdk_sectors_to_bytes(d->offset, &e->flat_offset)) {
        error_set(err, EINVAL, "extent \"%s\": offset too large", d->name);
        return -EINVAL;
    }
    r = vmdk_open_extent_file(bs, opts, e, err);
    if (r < 0)
        return r;
    if (e->type == EXT_FLAT)
        return vmdk_check_flat(e, err);
    Error local = { .msg = "", .errnum = 0 };
    bool se = strcmp(d->type, "SESPARSE") == 0;
    r = se ? vmdk_se_cache_init(bs->opaque) : 0;
    if (r == 0)
        r = se ? vmdk_open_sesparse(e, gd_budget, &local) : vmdk_open_sparse(e, gd_budget, &local);
    if (r < 0) /* the reason is about the extent file: name it after the image's name */
        error_set(err, local.errnum ? local.errnum : -r, "extent %s: %s", e->name,
                  local.msg[0] ? local.msg : strerror(-r));
    if (r == 0 && e->capacity * VMDK_SECTOR < e->bytes) {
        error_set(err, EINVAL, "sparse extent \"%s\" holds %" PRIu64 " sectors, fewer than the descriptor's %"
                  PRIu64, e->name, e->capacity, e->bytes / VMDK_SECTOR);
        r = -EINVAL;
    }
    return r;
}

static int vmdk_open_extents(BlockNode *bs, VmdkState *s, const BlockOpenOpts *opts, const Descriptor *d,
                             Error *err)
{
    s->ext = calloc((size_t)d->n_ext, sizeof(*s->ext));
    if (!s->ext) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    uint64_t start = 0, gd_budget = VMDK_MAX_GD_TOTAL;
    for (int i = 0; i < d->n_ext; i++) {
        VmdkExtent *e = &s->ext[i];
        s->n_ext = i + 1;
        e->name = strdup(d->ext[i].name[0] ? d->ext[i].name : "(zero)");
        if (!e->name) {
            error_set(err, ENOMEM, "out of memory");
            return -ENOMEM;
        }
        uint64_t end;
        if (d->ext[i].sectors == 0 || d->ext[i].sectors > VMDK_MAX_CAPACITY ||
            !add_ok_u64(start, d->ext[i].sectors * VMDK_SECTOR, &end) || end > INT64_MAX) {
            error_set(err, EINVAL, "extent %d has a size of %" PRIu64 " sectors, or the sum is too large",
                      i + 1, d->ext[i].sectors);
            return -EINVAL;
        }
        e->start = start;
        e->bytes = d->ext[i].sectors * VMDK_SECTOR;
        start += e->bytes;
        int r = vmdk_open_one_extent(bs, opts, e, &d->ext[i], &gd_budget, err);
        if (r < 0)
            return r;
    }
    s->size = start;
    return 0;
}

/* ---------------------------------------------------------------- open, close */

static void vmdk_close(BlockNode *bs)
{
    VmdkState *s = bs->opaque;
    if (!s)
        return;
    for (int i = 0; i < s->n_ext; i++) {
        if (s->ext[i].owns_file && s->ext[i].file)
            bdrv_close(s->ext[i].file);
        free(s->ext[i].gd);
        free(s->ext[i].rgd);
        free(s->ext[i].se_gd);
        free(s->ext[i].name);
    }
    free(s->ext);
    s->ext = NULL;
    s->n_ext = 0;
    free(s->gt_cache);
    free(s->gt_cache_ext);
    free(s->se_cache);
    s->se_cache = NULL;
    s->gt_cache = NULL;
    s->gt_cache_ext = NULL;
    free(s->parent_hint);
    s->parent_hint = NULL;
    if (s->lock_ready) {
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->alloc_lock);
    }
    s->lock_ready = false;
}

static int vmdk_read_text(BlockNode *file, int64_t off, int64_t len, char **out, Error *err)
{
    *out = calloc(1, (size_t)len + 1);
    if (!*out) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    int r = bdrv_pread(file, off, len, *out);
    if (r < 0)
        error_set(err, -r, "cannot read the descriptor: %s", strerror(-r));
    return r;
}

/* A standalone descriptor file: bs->file is the text, every extent is another file. */
static int vmdk_open_descriptor(BlockNode *bs, VmdkState *s, const BlockOpenOpts *opts, Error *err)
{
    int64_t size = bdrv_getlength(bs->file);
    if (size < 0) {
        error_set(err, (int)-size, "cannot get the file size");
        return (int)size;
    }
    if (size > VMDK_MAX_DESC_BYTES) {
        error_set(err, EINVAL, "a descriptor file of %" PRId64 " bytes exceeds the limit of %d bytes",
                  size, VMDK_MAX_DESC_BYTES);
        return -EINVAL;
    }
    char *text;
    Descriptor d;
    memset(&d, 0, sizeof(d));
    int r = vmdk_read_text(bs->file, 0, size, &text, err);
    if (r == 0)
        r = vmdk_desc_parse(&d, text, (size_t)size, err);
    free(text);
    s->standalone_descriptor = true;
    if (r == 0 && d.n_ext == 0) {
        error_set(err, EINVAL, "the descriptor names no extent");
        r = -EINVAL;
    }
    if (r == 0) {
        snprintf(s->create_type, sizeof(s->create_type), "%s", d.create_type);
        r = vmdk_open_extents(bs, s, opts, &d, err);
    }
    if (r == 0)
        r = vmdk_set_parent(bs, s, &d);
    free(d.ext);
    return r;
}

/* The embedded descriptor of a monolithic sparse file must name this one sparse extent. */
static int vmdk_use_embedded(BlockNode *bs, VmdkState *s, VmdkExtent *e, Error *err)
{
    char *text;
    Descriptor d;
    memset(&d, 0, sizeof(d));
    int r = vmdk_read_text(bs->file, (int64_t)e->desc_off, (int64_t)e->desc_bytes, &text, err);
    if (r == 0)
        r = vmdk_desc_parse(&d, text, (size_t)e->desc_bytes, err);
    free(text);
    /* QEMU writes an extent-less descriptor into each extent file of a twoGbMaxExtentSparse disk */
    if (r == 0 && d.n_ext > 1) {
        error_set(err, ENOTSUP, "the embedded descriptor names %d extents (only one, this file, is possible)",
                  d.n_ext);
        r = -ENOTSUP;
    }
    if (r == 0 && d.n_ext == 1 && strcmp(d.ext[0].type, "SPARSE") != 0) {
        error_set(err, ENOTSUP, "the embedded descriptor names a %s extent (only SPARSE, this file, is possible)",
                  d.ext[0].type);
        r = -ENOTSUP;
    }
    if (r == 0 && d.n_ext == 1 && d.ext[0].sectors > e->capacity) {
        error_set(err, EINVAL, "the descriptor's extent of %" PRIu64 " sectors exceeds the capacity of %"
                  PRIu64, d.ext[0].sectors, e->capacity);
        r = -EINVAL;
    }
    if (r == 0) {
        snprintf(s->create_type, sizeof(s->create_type), "%s", d.create_type);
        if (d.n_ext == 1)
            e->bytes = d.ext[0].sectors * VMDK_SECTOR;
        r = vmdk_set_parent(bs, s, &d);
    }
    free(d.ext);
    return r;
}

/* The one extent of a sparse file opened directly: bs->file, named as the image; NULL (err set): no memory. */
static VmdkExtent *vmdk_open_as_extent(BlockNode *bs, VmdkState *s, Error *err)
{
    s->ext = calloc(1, sizeof(*s->ext));
    VmdkExtent *e = s->ext;
    if (e && (e->name = strdup(bs->filename))) {
        s->n_ext = 1;
        e->type = EXT_SPARSE;
        e->file = bs->file;
        return e;
    }
    error_set(err, ENOMEM, "out of memory");
    return NULL;
}

/* A hosted sparse file opened directly: bs->file is the one extent. */
static int vmdk_open_monolithic(BlockNode *bs, VmdkState *s, Error *err)
{
    VmdkExtent *e = vmdk_open_as_extent(bs, s, err);
    if (!e)
        return -ENOMEM;
    uint64_t gd_budget = VMDK_MAX_GD_TOTAL;
    int r = vmdk_open_sparse(e, &gd_budget, err);
    if (r < 0)
        return r;
    e->bytes = e->capacity * VMDK_SECTOR;
    if (e->desc_bytes)
        r = vmdk_use_embedded(bs, s, e, err);
    else
        snprintf(s->create_type, sizeof(s->create_type), "sparse extent");
    s->size = e->bytes;
    return r;
}

/* A bare seSparse extent holds a snapshot's changes only; its parent is named by the descriptor. With
 * --no-backing (this layer alone, asked for) it is read as one extent; otherwise refused, saying why. */
static int vmdk_open_bare_sesparse(BlockNode *bs, VmdkState *s, const BlockOpenOpts *opts, Error *err)
{
    if (!opts || !opts->no_backing) {
        error_set(err, ENOTSUP, "a seSparse extent holds only the changes of an ESXi snapshot; open the "
                  "descriptor (.vmdk) that names it, so that its parent is read too (--no-backing reads "
                  "this layer alone)");
        return -ENOTSUP;
    }
    VmdkExtent *e = vmdk_open_as_extent(bs, s, err);
    if (!e)
        return -ENOMEM;
    if (vmdk_se_cache_init(s) < 0) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    snprintf(e->kind, sizeof(e->kind), "SESPARSE");
    uint64_t gd_budget = VMDK_MAX_GD_TOTAL;
    int r = vmdk_open_sesparse(e, &gd_budget, err);
    e->bytes = e->capacity * VMDK_SECTOR;
    s->size = e->bytes;
    snprintf(s->create_type, sizeof(s->create_type), "seSparse extent");
    return r;
}

static int vmdk_do_open(BlockNode *bs, VmdkState *s, const BlockOpenOpts *opts, Error *err)
{
    uint8_t head[32] = { 0 };
    int64_t fsize = bdrv_getlength(bs->file);
    int r = fsize < 0 ? (int)fsize : bdrv_pread(bs->file, 0, MIN(fsize, (int64_t)sizeof(head)), head);
    if (r < 0) {
        error_set(err, -r, "cannot read the image: %s", strerror(-r));
        return r;
    }
    s->gt_cache = calloc(VMDK_GT_CACHE_SLOTS, sizeof(*s->gt_cache));
    s->gt_cache_ext = calloc(VMDK_GT_CACHE_SLOTS, sizeof(*s->gt_cache_ext));
    if (!s->gt_cache || !s->gt_cache_ext) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    for (int i = 0; i < VMDK_GT_CACHE_SLOTS; i++)
        s->gt_cache[i].gt_index = -1;
    if (ld_le32(head) == VMDK_SESPARSE_MAGIC)
        r = vmdk_open_bare_sesparse(bs, s, opts, err);
    else if (ld_le32(head) == VMDK_MAGIC || ld_le32(head) == VMDK_COWD_MAGIC)
        r = vmdk_open_monolithic(bs, s, err);
    else if (memcmp(head, VMDK_DESC_SIGNATURE, strlen(VMDK_DESC_SIGNATURE)) == 0)
        r = vmdk_open_descriptor(bs, s, opts, err);
    else {
        error_set(err, EINVAL, "not a VMDK image (neither a sparse extent nor a descriptor file)");
        r = -EINVAL;
    }
    s->writable = !bs->read_only;
    for (int i = 0; r == 0 && s->writable && i < s->n_ext; i++)
        r = vmdk_check_writable(&s->ext[i], err);
    return r;
}

static int vmdk_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    VmdkState *s = bs->opaque;
    s->name = bs->filename;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->alloc_lock, NULL);
    s->lock_ready = true;
    Error local = { .msg = "", .errnum = 0 };
    int r = vmdk_do_open(bs, s, opts, &local);
    if (r < 0) {
        error_set(err, local.errnum ? local.errnum : -r, "%s", local.msg[0] ? local.msg : strerror(-r));
        vmdk_close(bs);
        return r;
    }
    bs->request_alignment = VMDK_SECTOR;
    return 0;
}

/* ---------------------------------------------------------------- info */

static int64_t vmdk_getlength(BlockNode *bs)
{
    VmdkState *s = bs->opaque;
    return (int64_t)s->size;
}

static int64_t vmdk_memory_used(BlockNode *bs)
{
    VmdkState *s = bs->opaque;
    int64_t n = (int64_t)(sizeof(GtSlot) + sizeof(int64_t)) * VMDK_GT_CACHE_SLOTS;
    if (s->se_cache)
        n += (int64_t)sizeof(SeGtSlot) * VMDK_SE_CACHE_SLOTS;
    for (int i = 0; i < s->n_ext; i++)
        n += (int64_t)sizeof(VmdkExtent) + (int64_t)s->ext[i].n_gts * (s->ext[i].sesparse ? 8 : 4);
    return n;
}

static const char *vmdk_extent_type_name(ExtentType t)
{
    return t == EXT_FLAT ? "flat" : t == EXT_SPARSE ? "sparse" : "zero";
}

/* The largest grain of the sparse extents (flat extents have no allocation unit). qemu-img looks through
 * flat extents to the holes of their files: a disk of flat extents only says so. */
static void vmdk_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    const VmdkState *s = bs->opaque;
    bool all_flat = true;
    for (int i = 0; i < s->n_ext; i++) {
        if (s->ext[i].type == EXT_SPARSE && (int64_t)s->ext[i].grain_bytes > facts->cluster_size)
            facts->cluster_size = (int64_t)s->ext[i].grain_bytes;
        all_flat = all_flat && s->ext[i].type != EXT_SPARSE;
    }
    facts->data_over_host_zero = all_flat;
}

static void vmdk_get_info(BlockNode *bs, InfoList *info)
{
    VmdkState *s = bs->opaque;
    info_add_str(info, "subformat", "%s", s->create_type[0] ? s->create_type : "unknown");
    info_add_int(info, "extents", s->n_ext);
    if (s->has_cid)
        info_add_str(info, "cid", "%08" PRIx32, s->cid);
    if (s->has_parent_cid) {
        info_add_str(info, "parent_cid", "%08" PRIx32, s->parent_cid);
        if (s->parent_hint)
            info_add_str(info, "parent_file_name_hint", "%s", s->parent_hint);
        if (bs->backing && strcmp(bs->backing->drv->name, "vmdk") == 0) {
            const VmdkState *p = bs->backing->opaque;
            if (p->has_cid)
                info_add_bool(info, "parent_cid_matches", p->cid == s->parent_cid);
        }
    }
    for (int i = 0; i < s->n_ext && i < 8; i++) {
        const VmdkExtent *e = &s->ext[i];
        char key[64];
        snprintf(key, sizeof(key), "extent%d", i);
        if (e->sesparse)
            info_add_str(info, key, "%s seSparse %" PRIu64 " bytes, grain %" PRIu64, e->name, e->bytes, e->grain_bytes);
        else if (e->type == EXT_SPARSE)
            info_add_str(info, key, "%s sparse v%" PRIu32 " %" PRIu64 " bytes, grain %" PRIu64 "%s%s%s", e->name,
                         e->version, e->bytes, e->grain_bytes, (e->flags & VMDK_FLAG_COMPRESSED) ? ", compressed" : "",
                         (e->flags & VMDK_FLAG_RGD) ? ", redundant GD" : "",
                         (e->flags & VMDK_FLAG_ZERO_GRAIN) ? ", zeroed grains" : "");
        else
            info_add_str(info, key, "%s %s %" PRIu64 " bytes", e->name, vmdk_extent_type_name(e->type), e->bytes);
    }
}

/* Host bytes of the image: the descriptor (or hosted sparse file) and every extent file it opened. */
static int64_t vmdk_get_allocated_size(BlockNode *bs)
{
    const VmdkState *s = bs->opaque;
    int64_t total = bdrv_get_allocated_size(bs->file);
    for (int i = 0; i < s->n_ext && total >= 0; i++) {
        if (!s->ext[i].owns_file)
            continue;
        int64_t n = bdrv_get_allocated_size(s->ext[i].file);
        total = n < 0 ? n : total + n;
    }
    return total;
}

/* An extent's file as qemu-img names it: the descriptor's name joined to the directory part of the image name
 * (nothing for a name without one), the image name itself for a hosted sparse file. */
static void vmdk_extent_path(const BlockNode *bs, const VmdkExtent *e, char *out, size_t len)
{
    const char *slash = strrchr(bs->filename, '/');
    if (!e->kind[0] || e->name[0] == '/' || !slash)
        snprintf(out, len, "%s", e->kind[0] ? e->name : bs->filename);
    else
        snprintf(out, len, "%.*s/%s", (int)(slash - bs->filename), bs->filename, e->name);
}

/* What qemu-img shows of the descriptor and of each extent ("extents/I/KEY" items, see block.h). */
static const char *vmdk_get_format_specific(BlockNode *bs, InfoList *data)
{
    const VmdkState *s = bs->opaque;
    info_add_int(data, "cid", s->has_cid ? s->cid : UINT32_MAX); /* qemu's value for "none" */
    info_add_int(data, "parent-cid", s->has_parent_cid ? s->parent_cid : UINT32_MAX);
    info_add_str(data, "create-type", "%s", s->create_type);
    for (int i = 0; i < s->n_ext; i++) {
        const VmdkExtent *e = &s->ext[i];
        char key[64], path[4096];
        vmdk_extent_path(bs, e, path, sizeof(path));
        snprintf(key, sizeof(key), "extents/%d/filename", i);
        info_add_str(data, key, "%s", path);
        snprintf(key, sizeof(key), "extents/%d/format", i);
        info_add_str(data, key, "%s", e->kind);
        snprintf(key, sizeof(key), "extents/%d/virtual-size", i);
        info_add_int(data, key, (int64_t)e->bytes);
        if (e->type == EXT_SPARSE) {
            snprintf(key, sizeof(key), "extents/%d/cluster-size", i);
            info_add_int(data, key, (int64_t)e->grain_bytes);
        }
        if (e->type == EXT_SPARSE && (e->flags & VMDK_FLAG_COMPRESSED)) {
            snprintf(key, sizeof(key), "extents/%d/compressed", i);
            info_add_bool(data, key, true);
        }
    }
    return "vmdk";
}

static bool vmdk_has_zero_init(BlockNode *bs)
{
    (void)bs;
    return false;
}

/* ---------------------------------------------------------------- check */

/* As qemu-img checks a VMDK: every grain the map names must lie inside its file. Nothing is repaired. */
static int vmdk_check(BlockNode *bs, BlockCheckResult *res, int fix)
{
    /* -r: 63; a grain past the end of its file stops the check (exit 1), as in qemu-img */
    return fix ? -ENOTSUP : bdrv_check_host_runs(bs, res, 0, true);
}

const BlockDriver bdrv_vmdk = {
    .name = "vmdk",
    .instance_size = sizeof(VmdkState),
    .supports_backing = true,
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .read = vmdk_read,
    .write = vmdk_write,
    .flush = vmdk_flush,
    .write_zeroes = vmdk_write_zeroes,
    .discard = vmdk_discard,
    .block_status = vmdk_block_status,
    .getlength = vmdk_getlength,
    .get_info = vmdk_get_info,
    .check = vmdk_check,
    .backing_attached = vmdk_backing_attached,
    .get_facts = vmdk_get_facts,
    .get_allocated_size = vmdk_get_allocated_size,
    .get_format_specific = vmdk_get_format_specific,
    .memory_used = vmdk_memory_used,
    .has_zero_init = vmdk_has_zero_init,
    .create = vmdk_create,
    .create_options = vmdk_create_options,
};
