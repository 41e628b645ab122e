/* SPDX-License-Identifier: MIT */
/*
 * refcount.c - host cluster accounting of the qcow2 write path.  It owns the in-memory refcount table,
 * reading and writing refcount entries of every width (refcount_order 0..6: 1 to 64 bits, sub-byte
 * entries packed from the least significant bit of each byte), cluster allocation, growing the refcount
 * structures as the file grows (a new refcount block describes itself; a new refcount table is written
 * beside new blocks that describe it and committed with one header write), decrements held back until
 * the metadata that stopped pointing at a cluster is on disk, the metadata write-back order (refcount
 * blocks, then L2 tables, then queued frees) and small in-place header updates.  It does not know how
 * guest data is mapped: that is write.c's job.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"

#define QCOW2_REFCOUNT_CACHE_TABLES 32
#define QCOW2_MAX_PENDING_FREES 4096
#define QCOW2_MAX_HOST_CLUSTER_BITS 56 /* L2 entries hold host offsets in bits 9-55 */
/* Clusters past the end of the image that refcounts may claim before allocation calls it corruption: a
 * crash leaks a few there; a hostile refcount table of 1M entries all naming one full refcount block
 * would otherwise make every allocation scan billions of refcounts. */
#define QCOW2_MAX_USED_PAST_END (1ULL << 22)

/* ---------------------------------------------------------------- entries */

static uint64_t refblock_get(const Qcow2State *s, const uint8_t *blk, uint64_t i)
{
    switch (s->refcount_order) {
    case 0: case 1: case 2: {
        unsigned bits = s->refcount_bits;
        uint64_t bit = i * bits;
        return (blk[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    case 3: return blk[i];
    case 4: return ld_be16(blk + 2 * i);
    case 5: return ld_be32(blk + 4 * i);
    default: return ld_be64(blk + 8 * i);
    }
}

static void refblock_set(const Qcow2State *s, uint8_t *blk, uint64_t i, uint64_t v)
{
    switch (s->refcount_order) {
    case 0: case 1: case 2: {
        unsigned bits = s->refcount_bits;
        uint64_t bit = i * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bit % 8));
        blk[bit / 8] = (uint8_t)((blk[bit / 8] & ~mask) | ((v << (bit % 8)) & mask));
        break;
    }
    case 3: blk[i] = (uint8_t)v; break;
    case 4: st_be16(blk + 2 * i, (uint16_t)v); break;
    case 5: st_be32(blk + 4 * i, (uint32_t)v); break;
    default: st_be64(blk + 8 * i, v); break;
    }
}

void qcow2_refblock_set(const Qcow2State *s, uint8_t *blk, uint64_t i, uint64_t v)
{
    refblock_set(s, blk, i, v);
}

uint64_t qcow2_refblock_get(const Qcow2State *s, const uint8_t *blk, uint64_t i)
{
    return refblock_get(s, blk, i);
}

/* ---------------------------------------------------------------- header */

void qcow2_header_serialize(const Qcow2State *s, uint8_t *buf)
{
    memset(buf, 0, QCOW2_V3_MIN_HEADER_LEN);
    st_be32(buf, QCOW2_MAGIC);
    st_be32(buf + 4, s->version);
    st_be64(buf + 8, s->backing_file_offset);
    st_be32(buf + 16, s->backing_file_size);
    st_be32(buf + 20, s->cluster_bits);
    st_be64(buf + 24, s->size);
    st_be32(buf + 32, s->crypt_method);
    st_be32(buf + 36, s->l1_size);
    st_be64(buf + 40, s->l1_table_offset);
    st_be64(buf + 48, s->refcount_table_offset);
    st_be32(buf + 56, s->refcount_table_clusters);
    st_be32(buf + 60, s->nb_snapshots);
    st_be64(buf + 64, s->snapshots_offset);
    st_be64(buf + 72, s->incompatible_features);
    st_be64(buf + 80, s->compatible_features);
    st_be64(buf + 88, s->autoclear_features);
    st_be32(buf + 96, s->refcount_order);
    st_be32(buf + 100, s->header_length);
}

int qcow2_write_header_bytes(Qcow2State *s, uint32_t offset, uint32_t len, const uint8_t *buf)
{
    int ret = qcow2_meta_check_write(s, QCOW2_META_HEADER, offset, len);
    if (ret < 0)
        return ret;
    bdrv_debug_event(s->meta_file, "header_update");
    return bdrv_pwrite(s->meta_file, offset, len, buf + offset, 0);
}

int qcow2_update_incompat(Qcow2State *s, uint64_t set, uint64_t clear)
{
    if (s->version < 3)
        return 0;
    int ret = bdrv_flush(s->meta_file);
    if (ret < 0)
        return ret;
    s->incompatible_features = (s->incompatible_features | set) & ~clear;
    uint8_t hdr[QCOW2_V3_MIN_HEADER_LEN];
    qcow2_header_serialize(s, hdr);
    ret = qcow2_write_header_bytes(s, 72, 8, hdr);
    if (ret == 0)
        ret = bdrv_flush(s->meta_file);
    return ret;
}

/* ---------------------------------------------------------------- table */

void qcow2_note_reftable_used(Qcow2State *s)
{
    uint64_t n = s->refcount_table_size;
    while (n > 0 && s->refcount_table[n - 1] == 0)
        n--;
    s->refcount_table_used = n;
}

int qcow2_refcount_init(Qcow2State *s)
{
    uint64_t n = s->refcount_table_size;
    s->refcount_table = calloc(n ? n : 1, sizeof(uint64_t));
    if (!s->refcount_table)
        return -ENOMEM;
    if (n) {
        int ret = bdrv_pread(s->meta_file, (int64_t)s->refcount_table_offset, (int64_t)(n * 8), s->refcount_table);
        if (ret < 0)
            return ret;
        for (uint64_t i = 0; i < n; i++)
            s->refcount_table[i] = ld_be64(&s->refcount_table[i]);
    }
    qcow2_note_reftable_used(s);
    int64_t len = bdrv_getlength(s->meta_file);
    if (len < 0)
        return (int)len;
    s->host_end = (uint64_t)align_up(len, s->cluster_size);
    s->refcount_cache = qcow2_cache_new(s->meta_file, s->cluster_size, QCOW2_REFCOUNT_CACHE_TABLES);
    if (!s->refcount_cache)
        return -ENOMEM;
    if (!s->use_lazy_refcounts)
        qcow2_cache_set_dependency(s->l2_cache, s->refcount_cache);
    s->free_cluster_index = 0;
    return 0;
}

void qcow2_refcount_close(Qcow2State *s)
{
    free(s->pending_frees);
    s->pending_frees = NULL;
    s->nb_pending_frees = s->cap_pending_frees = 0;
}

static int qcow2_refblock_offset(Qcow2State *s, uint64_t rt_index, uint64_t *offset)
{
    *offset = 0;
    if (rt_index >= s->refcount_table_size)
        return 0;
    uint64_t off = s->refcount_table[rt_index] & QCOW2_REFT_OFFSET_MASK;
    if (off & s->cluster_mask)
        return qcow2_mark_corrupt(s, "refcount block offset 0x%" PRIx64 " is not cluster aligned", off);
    if (off == 0 && s->refcount_table[rt_index])
        return qcow2_mark_corrupt(s, "refcount table entry %" PRIu64 " is invalid", rt_index);
    *offset = off;
    return 0;
}

int qcow2_get_refcount(Qcow2State *s, uint64_t cluster_index, uint64_t *refcount)
{
    uint64_t off;
    *refcount = 0;
    int ret = qcow2_refblock_offset(s, cluster_index >> s->refcount_block_bits, &off);
    if (ret < 0 || off == 0)
        return ret;
    void *blk;
    ret = qcow2_cache_get(s->refcount_cache, off, &blk);
    if (ret < 0)
        return ret;
    *refcount = refblock_get(s, blk, cluster_index & (s->refcount_block_size - 1));
    qcow2_cache_put(s->refcount_cache, &blk);
    return 0;
}

static int qcow2_write_reftable_entry(Qcow2State *s, uint64_t rt_index)
{
    uint8_t buf[8];
    st_be64(buf, s->refcount_table[rt_index]);
    int ret = qcow2_meta_check_write(s, QCOW2_META_REFTABLE, s->refcount_table_offset + rt_index * 8, 8);
    if (ret < 0)
        return ret;
    bdrv_debug_event(s->meta_file, "reftable_update");
    return bdrv_pwrite(s->meta_file, (int64_t)(s->refcount_table_offset + rt_index * 8), 8, buf, 0);
}

/* A missing refcount block for table slot rt_index: every cluster it would describe is free, so the
 * block goes into the first of them and counts itself. On disk before the table points at it. */
static int qcow2_create_refblock(Qcow2State *s, uint64_t rt_index)
{
    uint64_t offset = (rt_index << s->refcount_block_bits) << s->cluster_bits;
    s->host_end = MAX(s->host_end, offset + s->cluster_size);
    /* "Every cluster it would describe is free" holds only if no metadata lives there. */
    int ret = qcow2_meta_add(s, QCOW2_META_REFBLOCK, offset, s->cluster_size);
    if (ret < 0)
        return ret;
    void *blk;
    ret = qcow2_cache_get_empty(s->refcount_cache, offset, &blk);
    if (ret < 0) {
        qcow2_meta_remove(s, QCOW2_META_REFBLOCK, offset);
        return ret;
    }
    refblock_set(s, blk, 0, 1);
    qcow2_cache_mark_dirty(s->refcount_cache, blk);
    qcow2_cache_put(s->refcount_cache, &blk);
    ret = qcow2_cache_flush(s->refcount_cache);
    if (ret < 0) {
        qcow2_cache_discard(s->refcount_cache, offset);
        qcow2_meta_remove(s, QCOW2_META_REFBLOCK, offset);
        return ret;
    }
    s->refcount_table[rt_index] = offset;
    ret = qcow2_write_reftable_entry(s, rt_index);
    if (ret < 0) {
        s->refcount_table[rt_index] = 0;
        return ret;
    }
    s->refcount_table_used = MAX(s->refcount_table_used, rt_index + 1);
    return bdrv_flush(s->meta_file);
}

/* Blocks (k) and table clusters (tc) that a grown refcount table needs when placed at the first cluster
 * the current table cannot describe, so that the new blocks describe themselves and the table. */
static void qcow2_reftable_growth(const Qcow2State *s, uint64_t need_index, uint64_t *entries, uint64_t *k,
                                  uint64_t *tc)
{
    uint64_t per_cluster = s->cluster_size / 8;
    uint64_t n = MAX(need_index + 1, s->refcount_table_size * 2);
    *k = 1;
    for (;;) {
        *tc = (n + per_cluster - 1) / per_cluster;
        while (*k * s->refcount_block_size < *k + *tc)
            (*k)++;
        if (n >= s->refcount_table_size + *k)
            break;
        n = s->refcount_table_size + *k;
    }
    *entries = *tc * per_cluster;
}

static int qcow2_grow_reftable(Qcow2State *s, uint64_t need_index)
{
    uint64_t entries, k, tc;
    qcow2_reftable_growth(s, need_index, &entries, &k, &tc);
    if (entries * 8 > QCOW2_MAX_REFTABLE_BYTES)
        return -EFBIG;
    uint64_t first = s->refcount_table_size << s->refcount_block_bits; /* first undescribed cluster */
    s->host_end = MAX(s->host_end, (first + k + tc) << s->cluster_bits);
    uint64_t *table = calloc(entries, sizeof(uint64_t));
    uint8_t *buf = calloc(1, (size_t)(tc * s->cluster_size));
    uint8_t *blk = aligned_alloc_zero(s->cluster_size);
    int ret = (table && buf && blk) ? 0 : -ENOMEM;
    uint64_t mapped = 0; /* new blocks, then the new table, registered in the metadata map */
    for (uint64_t j = 0; ret == 0 && j < k; j++) {
        ret = qcow2_meta_add(s, QCOW2_META_REFBLOCK, (first + j) << s->cluster_bits, s->cluster_size);
        mapped += ret == 0;
    }
    if (ret == 0) {
        ret = qcow2_meta_add(s, QCOW2_META_REFTABLE, (first + k) << s->cluster_bits, tc << s->cluster_bits);
        mapped += ret == 0;
    }
    for (uint64_t j = 0; ret == 0 && j < k; j++) {
        memset(blk, 0, s->cluster_size);
        for (uint64_t c = first; c < first + k + tc; c++)
            if ((c - first) / s->refcount_block_size == j)
                refblock_set(s, blk, (c - first) % s->refcount_block_size, 1);
        bdrv_debug_event(s->meta_file, "refblock_update");
        ret = bdrv_pwrite(s->meta_file, (int64_t)((first + j) << s->cluster_bits), s->cluster_size, blk, 0);
    }
    if (ret == 0) {
        memcpy(table, s->refcount_table, s->refcount_table_size * 8);
        for (uint64_t j = 0; j < k; j++)
            table[s->refcount_table_size + j] = (first + j) << s->cluster_bits;
        for (uint64_t i = 0; i < entries; i++)
            st_be64(buf + i * 8, table[i]);
        bdrv_debug_event(s->meta_file, "reftable_update");
        ret = bdrv_pwrite(s->meta_file, (int64_t)((first + k) << s->cluster_bits), (int64_t)(tc * s->cluster_size),
                          buf, 0);
    }
    if (ret == 0)
        ret = bdrv_flush(s->meta_file);
    uint64_t old_offset = s->refcount_table_offset, old_clusters = s->refcount_table_clusters;
    if (ret == 0) {
        uint8_t hdr[QCOW2_V3_MIN_HEADER_LEN];
        s->refcount_table_offset = (first + k) << s->cluster_bits;
        s->refcount_table_clusters = (uint32_t)tc;
        qcow2_header_serialize(s, hdr);
        ret = qcow2_write_header_bytes(s, 48, 12, hdr);
        if (ret == 0)
            ret = bdrv_flush(s->meta_file);
        if (ret < 0) {
            s->refcount_table_offset = old_offset;
            s->refcount_table_clusters = (uint32_t)old_clusters;
        }
    }
    free(buf);
    free(blk);
    if (ret < 0) {
        if (mapped > k)
            qcow2_meta_remove(s, QCOW2_META_REFTABLE, (first + k) << s->cluster_bits);
        for (uint64_t j = 0; j < MIN(mapped, k); j++)
            qcow2_meta_remove(s, QCOW2_META_REFBLOCK, (first + j) << s->cluster_bits);
        free(table);
        return ret;
    }
    qcow2_meta_remove(s, QCOW2_META_REFTABLE, old_offset);
    free(s->refcount_table);
    s->refcount_table = table;
    s->refcount_table_size = entries;
    qcow2_note_reftable_used(s);
    /* The old table is no longer referenced by the header that is now on disk. */
    return qcow2_update_refcount(s, old_offset, old_clusters << s->cluster_bits, -1);
}

/* Make sure refcount blocks exist for clusters [first, first + n). Sets *changed when structures were
 * added (they may occupy clusters of that range). */
static int qcow2_ensure_refblocks(Qcow2State *s, uint64_t first, uint64_t n, bool *changed)
{
    *changed = false;
    for (uint64_t rt = first >> s->refcount_block_bits; rt <= (first + n - 1) >> s->refcount_block_bits; rt++) {
        int ret = 0;
        if (rt >= s->refcount_table_size) {
            ret = qcow2_grow_reftable(s, rt);
            *changed = true;
        } else if (s->refcount_table[rt] == 0) {
            ret = qcow2_create_refblock(s, rt);
            *changed = true;
        }
        if (ret < 0 || *changed)
            return ret;
    }
    return 0;
}

int qcow2_update_refcount(Qcow2State *s, uint64_t offset, uint64_t bytes, int addend)
{
    if (bytes == 0)
        return 0;
    if (addend < 0) /* the host cluster compressed writes were filling may be this one, free from now */
        s->compressed_next = 0;
    uint64_t first = offset >> s->cluster_bits, last = (offset + bytes - 1) >> s->cluster_bits;
    for (uint64_t ci = first; ci <= last; ci++) {
        uint64_t rt = ci >> s->refcount_block_bits, boff;
        int ret = qcow2_refblock_offset(s, rt, &boff);
        if (ret < 0)
            return ret;
        if (boff == 0) {
            if (addend < 0)
                return qcow2_mark_corrupt(s, "freeing cluster 0x%" PRIx64 " that has no refcount block",
                                          ci << s->cluster_bits);
            bool changed;
            ret = qcow2_ensure_refblocks(s, ci, 1, &changed);
            if (ret == 0)
                ret = qcow2_refblock_offset(s, rt, &boff);
            if (ret < 0)
                return ret;
        }
        void *blk;
        ret = qcow2_cache_get(s->refcount_cache, boff, &blk);
        if (ret < 0)
            return ret;
        uint64_t i = ci & (s->refcount_block_size - 1);
        uint64_t v = refblock_get(s, blk, i);
        if (addend < 0 && v == 0) {
            qcow2_cache_put(s->refcount_cache, &blk);
            return qcow2_mark_corrupt(s, "refcount of cluster 0x%" PRIx64 " would drop below zero",
                                      ci << s->cluster_bits);
        }
        if (addend > 0 && v == s->refcount_max) {
            qcow2_cache_put(s->refcount_cache, &blk);
            log_msg("%s: refcount of cluster 0x%" PRIx64 " would exceed %" PRIu64 " (refcount_bits=%u)",
                    s->node_name, ci << s->cluster_bits, s->refcount_max, s->refcount_bits);
            return -ERANGE;
        }
        v = addend > 0 ? v + 1 : v - 1;
        refblock_set(s, blk, i, v);
        qcow2_cache_mark_dirty(s->refcount_cache, blk);
        qcow2_cache_put(s->refcount_cache, &blk);
        if (v == 0) {
            if (ci < s->free_cluster_index)
                s->free_cluster_index = ci;
            if (s->discard_unmap)
                bdrv_discard(s->meta_file, (int64_t)(ci << s->cluster_bits), s->cluster_size);
        }
    }
    return 0;
}

int qcow2_alloc_clusters(Qcow2State *s, uint64_t n, uint64_t *offset)
{
    uint64_t ci = s->free_cluster_index;
    uint64_t first_free = UINT64_MAX; /* first free cluster passed over (a gap shorter than n) */
    for (;;) {
        uint64_t len = 0, limit = (s->host_end >> s->cluster_bits) + QCOW2_MAX_USED_PAST_END;
        while (len < n) {
            if (ci > limit)
                return qcow2_mark_corrupt(s, "refcounts claim more than %llu clusters past the end of the "
                                          "image", (unsigned long long)QCOW2_MAX_USED_PAST_END);
            uint64_t rc;
            int ret = qcow2_get_refcount(s, ci + len, &rc);
            if (ret < 0)
                return ret;
            if (rc) {
                if (len && first_free == UINT64_MAX)
                    first_free = ci;
                ci += len + 1;
                len = 0;
            } else {
                len++;
            }
        }
        if (ci + n > (1ULL << (QCOW2_MAX_HOST_CLUSTER_BITS - s->cluster_bits)))
            return -EFBIG;
        bool changed;
        int ret = qcow2_ensure_refblocks(s, ci, n, &changed);
        if (ret < 0)
            return ret;
        if (!changed)
            break;
    }
    for (uint64_t j = 0; j < n; j++) {
        int ret = qcow2_update_refcount(s, (ci + j) << s->cluster_bits, 1, 1);
        if (ret < 0)
            return ret;
    }
    s->free_cluster_index = MIN(first_free, ci + n);
    s->host_end = MAX(s->host_end, (ci + n) << s->cluster_bits);
    *offset = ci << s->cluster_bits;
    return 0;
}

/* ---------------------------------------------------------------- deferred frees */

int qcow2_free_deferred(Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    if (bytes == 0)
        return 0;
    if (s->nb_pending_frees == s->cap_pending_frees) {
        size_t cap = s->cap_pending_frees ? s->cap_pending_frees * 2 : 64;
        Qcow2FreeRange *p = realloc(s->pending_frees, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        s->pending_frees = p;
        s->cap_pending_frees = cap;
    }
    s->pending_frees[s->nb_pending_frees++] = (Qcow2FreeRange){ offset, bytes };
    if (s->nb_pending_frees >= QCOW2_MAX_PENDING_FREES)
        return qcow2_flush_metadata_locked(s);
    return 0;
}

int qcow2_free_compressed_deferred(Qcow2State *s, uint64_t l2_entry)
{
    uint64_t start = (l2_entry & s->compressed_offset_mask) & ~(uint64_t)(QCOW2_COMPRESSED_SECTOR - 1);
    uint64_t sectors = ((l2_entry >> s->csize_shift) & s->csize_mask) + 1;
    qcow2_invalidate_decompressed(s);
    return qcow2_free_deferred(s, start, sectors * QCOW2_COMPRESSED_SECTOR);
}

int qcow2_flush_metadata_locked(Qcow2State *s)
{
    if (!s->write_ready || s->is_snapshot_view)
        return 0;
    int ret = qcow2_cache_flush(s->refcount_cache);
    if (ret < 0)
        return ret;
    ret = qcow2_cache_write_back(s->l2_cache);
    if (ret < 0 || s->nb_pending_frees == 0)
        return ret;
    ret = bdrv_flush(s->meta_file); /* the tables that stopped pointing at them come first */
    if (ret < 0)
        return ret;
    size_t n = s->nb_pending_frees;
    s->nb_pending_frees = 0;
    for (size_t i = 0; i < n; i++) {
        ret = qcow2_update_refcount(s, s->pending_frees[i].offset, s->pending_frees[i].bytes, -1);
        if (ret < 0)
            return ret;
    }
    return qcow2_cache_flush(s->refcount_cache);
}
