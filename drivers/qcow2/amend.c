/* SPDX-License-Identifier: MIT */
/*
 * amend.c - `imgfuse amend` for qcow2: the options of an existing image that can change in place,
 * compat (0.10 = version 2, 1.1 = version 3) and lazy_refcounts (on|off).  An upgrade rewrites the header
 * cluster with the version 3 header; a downgrade is refused, naming the feature, while the image uses
 * anything version 2 cannot express (refcount widths other than 16 bits, an external data file, extended
 * L2 entries, zstd compression, persistent bitmaps, zero clusters).  Metadata is written back before the
 * header changes, so the dirty bit can be dropped with lazy refcounts.  Other keys are refused by name.
 * It does not know the command line.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

typedef struct AmendReq {
    uint32_t version; /* 0: unchanged */
    int lazy;         /* -1: unchanged, else 0/1 */
    Error *err;
} AmendReq;

static int amend_parse_one(const char *key, const char *val, void *opaque)
{
    AmendReq *r = opaque;
    if (!strcmp(key, "compat")) {
        if (val && (!strcmp(val, "0.10") || !strcmp(val, "v2")))
            r->version = 2;
        else if (val && (!strcmp(val, "1.1") || !strcmp(val, "v3")))
            r->version = 3;
        else {
            error_set(r->err, EINVAL, "compat must be 0.10 or 1.1, not '%s'", val ? val : "");
            return -EINVAL;
        }
    } else if (!strcmp(key, "lazy_refcounts")) {
        if ((r->lazy = bdrv_parse_bool(val)) < 0) {
            error_set(r->err, EINVAL, "lazy_refcounts must be on or off, not '%s'", val ? val : "");
            return -EINVAL;
        }
    } else {
        error_set(r->err, ENOTSUP, "qcow2 option '%s' cannot be amended (only compat and lazy_refcounts)", key);
        return -ENOTSUP;
    }
    return 0;
}

/* Does the L2 table at l2off hold a zero cluster? */
static int amend_l2_has_zero(Qcow2State *s, uint64_t l2off, bool *found)
{
    void *t;
    int ret = qcow2_cache_get(s->l2_cache, l2off, &t);
    if (ret < 0)
        return ret;
    for (uint32_t j = 0; j < s->l2_size && !*found; j++) {
        uint64_t e = qcow2_l2_entry(s, t, j);
        *found = !(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_OFLAG_ZERO);
    }
    qcow2_cache_put(s->l2_cache, &t);
    return 0;
}

static int amend_l1_has_zero(Qcow2State *s, const uint64_t *l1, uint32_t n, bool *found)
{
    for (uint32_t i = 0; i < n && !*found; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2off)
            continue;
        if ((l2off & s->cluster_mask) || l2off < s->cluster_size)
            return -EIO;
        int ret = amend_l2_has_zero(s, l2off, found);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Zero clusters in the active L1 table or in a snapshot's (version 2 has none). */
static int amend_has_zero_clusters(Qcow2State *s, bool *found)
{
    *found = false;
    int ret = amend_l1_has_zero(s, s->l1_table, s->l1_size, found);
    for (uint32_t i = 0; ret == 0 && !*found && i < s->nb_snapshots; i++) {
        uint64_t *l1;
        ret = qcow2_load_l1(s, s->snapshots[i].l1_table_offset, s->snapshots[i].l1_size, &l1);
        if (ret == 0) {
            ret = amend_l1_has_zero(s, l1, s->snapshots[i].l1_size, found);
            free(l1);
        }
    }
    return ret;
}

/* The version 3 feature that keeps the image from version 2, NULL if none (or -errno in *ret). */
static const char *amend_v3_feature(Qcow2State *s, int *ret)
{
    *ret = 0;
    if (s->refcount_order != 4)
        return "refcount_bits other than 16";
    if (s->has_data_file)
        return "an external data file";
    if (s->extended_l2)
        return "extended L2 entries (extended_l2)";
    if (s->compression_type != QCOW2_COMPRESSION_ZLIB)
        return "compression_type=zstd";
    if (s->has_bitmaps_ext && (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
        return "persistent bitmaps";
    bool zero;
    *ret = amend_has_zero_clusters(s, &zero);
    return *ret == 0 && zero ? "zero clusters" : NULL;
}

/* With the node held exclusively: checks, metadata written back, then the header rewritten. */
static int amend_locked(Qcow2State *s, const AmendReq *r, Error *err)
{
    uint32_t version = r->version ? r->version : s->version;
    bool lazy = r->lazy >= 0 ? r->lazy == 1 : (version >= 3 && s->use_lazy_refcounts);
    if (version < 3 && r->lazy == 1) {
        error_set(err, EINVAL, "lazy_refcounts=on needs compat=1.1");
        return -EINVAL;
    }
    int ret = 0;
    if (version < s->version) {
        const char *why = amend_v3_feature(s, &ret);
        if (ret < 0) {
            error_set(err, -ret, "cannot read the L2 tables: %s", strerror(-ret));
            return ret;
        }
        if (why) {
            error_set(err, ENOTSUP, "cannot downgrade to compat=0.10: the image uses %s (a compat=1.1 feature)", why);
            return -ENOTSUP;
        }
    }
    ret = qcow2_flush_metadata_locked(s);
    if (ret < 0) {
        error_set(err, -ret, "cannot write back metadata: %s", strerror(-ret));
        return ret;
    }
    uint32_t old_len = s->header_length, old_version = s->version;
    uint64_t old_compat = s->compatible_features, old_incompat = s->incompatible_features;
    s->version = version;
    if (version != old_version)
        s->header_length = version >= 3 ? QCOW2_V3_MIN_HEADER_LEN : QCOW2_V2_HEADER_LEN;
    s->compatible_features = lazy ? s->compatible_features | QCOW2_COMPAT_LAZY_REFCOUNTS
                                  : s->compatible_features & ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    s->incompatible_features &= ~QCOW2_INCOMPAT_DIRTY; /* refcounts were just written back */
    if (version < 3) {
        s->compatible_features = 0;
        s->incompatible_features = 0;
        s->autoclear_features = 0;
    }
    ret = qcow2_rewrite_header(s, old_len, s->backing_file, s->backing_format);
    if (ret < 0) {
        s->version = old_version;
        s->header_length = old_len;
        s->compatible_features = old_compat;
        s->incompatible_features = old_incompat;
        error_set(err, -ret, "cannot rewrite the header: %s", strerror(-ret));
        return ret;
    }
    s->dirty = false;
    s->use_lazy_refcounts = lazy;
    if (!lazy)
        qcow2_cache_set_dependency(s->l2_cache, s->refcount_cache);
    return 0;
}

int qcow2_amend(BlockNode *bs, const char *options, Error *err)
{
    Qcow2State *s = bs->opaque;
    AmendReq r = { .version = 0, .lazy = -1, .err = err };
    int ret = bdrv_create_opts_each(options, amend_parse_one, &r);
    if (ret < 0) {
        error_set(err, -ret, "cannot parse the options: %s", strerror(-ret));
        return ret;
    }
    if (s->is_snapshot_view || s->crypt_method != QCOW2_CRYPT_NONE) {
        error_set(err, ENOTSUP, "cannot amend an encrypted image");
        return -ENOTSUP;
    }
    ret = qcow2_exclusive_begin(s);
    if (ret < 0) {
        error_set(err, -ret, "cannot write the image: %s", strerror(-ret));
        return ret;
    }
    ret = amend_locked(s, &r, err);
    qcow2_exclusive_end(s);
    return ret;
}
