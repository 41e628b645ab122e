/* SPDX-License-Identifier: MIT */
/*
 * check.c - whole-image refcount accounting of the qcow2 driver.  It owns the walk that counts every
 * reference to every host cluster (header, active and snapshot L1 tables, their L2 tables and data
 * clusters, compressed extents, the snapshot table and the refcount structures themselves), the
 * consistency check built on it (stored refcount versus references, COPIED flags of the active tables),
 * and the "metadata generation" commit used by the refcount rebuild after an unclean shutdown and by
 * every snapshot operation: the new active L1 table, copies of the active L2 tables whose COPIED flags
 * change, new snapshot L1 tables, the snapshot table and a complete new set of refcount blocks and
 * refcount table are written to fresh clusters past the end of the file, then one header write switches
 * to them, so a crash leaves either the old or the new state intact.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"

#define QCOW2_MAX_COUNTED_CLUSTERS (1ULL << 25)

typedef struct RefCounts {
    uint64_t *c;
    uint64_t n;      /* entries allocated */
    uint64_t limit;  /* references at or past this cluster are invalid */
} RefCounts;

static int rc_add(Qcow2State *s, RefCounts *r, uint64_t ci, const char *what)
{
    if (ci >= r->limit) {
        qcow2_signal_corruption(s, "%s at 0x%" PRIx64 " lies past the end of the image", what,
                                ci << s->cluster_bits);
        return -EIO;
    }
    if (ci >= QCOW2_MAX_COUNTED_CLUSTERS)
        return -EFBIG;
    if (ci >= r->n) {
        uint64_t n = MAX(ci + 1, r->n * 2);
        n = MIN(MAX(n, 64), QCOW2_MAX_COUNTED_CLUSTERS);
        uint64_t *c = realloc(r->c, n * sizeof(uint64_t));
        if (!c)
            return -ENOMEM;
        memset(c + r->n, 0, (n - r->n) * sizeof(uint64_t));
        r->c = c;
        r->n = n;
    }
    r->c[ci]++;
    return 0;
}

static int rc_add_range(Qcow2State *s, RefCounts *r, uint64_t offset, uint64_t bytes, const char *what)
{
    if (bytes == 0)
        return 0;
    for (uint64_t ci = offset >> s->cluster_bits; ci <= (offset + bytes - 1) >> s->cluster_bits; ci++) {
        int ret = rc_add(s, r, ci, what);
        if (ret < 0)
            return ret;
    }
    return 0;
}

static uint64_t rc_get(const RefCounts *r, uint64_t ci)
{
    return ci < r->n ? r->c[ci] : 0;
}

static void compressed_extent(const Qcow2State *s, uint64_t e, uint64_t *start, uint64_t *bytes)
{
    *start = (e & s->compressed_offset_mask) & ~(uint64_t)(QCOW2_COMPRESSED_SECTOR - 1);
    *bytes = (((e >> s->csize_shift) & s->csize_mask) + 1) * QCOW2_COMPRESSED_SECTOR;
}

static int count_l2(Qcow2State *s, RefCounts *r, uint64_t l2off)
{
    void *t;
    int ret = qcow2_cache_get(s->l2_cache, l2off, &t);
    if (ret < 0)
        return ret;
    for (uint32_t j = 0; ret == 0 && j < s->l2_size; j++) {
        uint64_t e = qcow2_l2_entry(s, t, j);
        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t start, bytes;
            compressed_extent(s, e, &start, &bytes);
            ret = rc_add_range(s, r, start, bytes, "compressed cluster");
            continue;
        }
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
        if (host & s->cluster_mask) {
            qcow2_signal_corruption(s, "L2 entry 0x%016" PRIx64 " is not cluster aligned", e);
            ret = -EIO;
        } else if (host) {
            ret = rc_add(s, r, host >> s->cluster_bits, "data cluster");
        }
    }
    qcow2_cache_put(s->l2_cache, &t);
    return ret;
}

static int count_l1(Qcow2State *s, RefCounts *r, const uint64_t *l1, uint32_t l1_size)
{
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2off)
            continue;
        if ((l2off & s->cluster_mask) || l2off < s->cluster_size) {
            qcow2_signal_corruption(s, "L2 table offset 0x%" PRIx64 " is invalid", l2off);
            return -EIO;
        }
        int ret = rc_add(s, r, l2off >> s->cluster_bits, "L2 table");
        if (ret == 0)
            ret = count_l2(s, r, l2off);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Does any entry of the L2 table at l2off carry a COPIED flag that disagrees with the counts? */
static int l2_copied_mismatches(Qcow2State *s, const RefCounts *r, uint64_t l2off, uint64_t *mismatches)
{
    void *t;
    int ret = qcow2_cache_get(s->l2_cache, l2off, &t);
    if (ret < 0)
        return ret;
    *mismatches = 0;
    for (uint32_t j = 0; j < s->l2_size; j++) {
        uint64_t e = qcow2_l2_entry(s, t, j);
        uint64_t host = (e & QCOW2_OFLAG_COMPRESSED) ? 0 : e & QCOW2_L2E_OFFSET_MASK;
        bool want = host && rc_get(r, host >> s->cluster_bits) == 1;
        if (want != ((e & QCOW2_OFLAG_COPIED) != 0))
            (*mismatches)++;
    }
    qcow2_cache_put(s->l2_cache, &t);
    return 0;
}

/* ---------------------------------------------------------------- snapshot table */

static uint64_t snapshot_entry_len(const Qcow2Snapshot *sn)
{
    return (uint64_t)align_up(40 + (int64_t)sn->extra_data_size + (int64_t)strlen(sn->id_str) +
                              (int64_t)strlen(sn->name), 8);
}

static void snapshot_serialize(const Qcow2Snapshot *sn, uint8_t *p)
{
    size_t id_len = strlen(sn->id_str), name_len = strlen(sn->name);
    memset(p, 0, snapshot_entry_len(sn));
    st_be64(p, sn->l1_table_offset);
    st_be32(p + 8, sn->l1_size);
    st_be16(p + 12, (uint16_t)id_len);
    st_be16(p + 14, (uint16_t)name_len);
    st_be32(p + 16, (uint32_t)sn->date_sec);
    st_be32(p + 20, sn->date_nsec);
    st_be64(p + 24, sn->vm_clock_nsec);
    st_be32(p + 32, (uint32_t)sn->vm_state_size);
    st_be32(p + 36, sn->extra_data_size);
    memcpy(p + 40, sn->extra_data, sn->extra_data_size);
    memcpy(p + 40 + sn->extra_data_size, sn->id_str, id_len);
    memcpy(p + 40 + sn->extra_data_size + id_len, sn->name, name_len);
}

static int snapshot_dup(const Qcow2Snapshot *src, Qcow2Snapshot *dst)
{
    *dst = *src;
    dst->id_str = strdup(src->id_str);
    dst->name = strdup(src->name);
    dst->extra_data = malloc(src->extra_data_size ? src->extra_data_size : 1);
    if (!dst->id_str || !dst->name || !dst->extra_data) {
        free(dst->id_str);
        free(dst->name);
        free(dst->extra_data);
        return -ENOMEM;
    }
    memcpy(dst->extra_data, src->extra_data, src->extra_data_size);
    return 0;
}

/* ---------------------------------------------------------------- the commit */

typedef struct Generation {
    RefCounts r;
    uint64_t next;            /* next fresh cluster */
    uint64_t first_new;       /* the first of them (the end of the file) */
    uint64_t *l1;             /* new active L1, host order */
    uint32_t l1_size;
    uint64_t l1_offset;
    uint32_t *copy_index;     /* L1 indexes whose L2 table is copied */
    uint64_t *copy_src, *copy_dst;
    uint32_t nb_copies;
    uint64_t *snap_l1_offset; /* per snapshot */
    uint8_t *snap_table;
    uint64_t snap_table_bytes, snap_table_offset;
    uint64_t nb_blocks, table_clusters, blocks_first;
} Generation;

static void generation_free(Generation *g)
{
    free(g->r.c);
    free(g->l1);
    free(g->copy_index);
    free(g->copy_src);
    free(g->copy_dst);
    free(g->snap_l1_offset);
    free(g->snap_table);
}

static int place(Qcow2State *s, Generation *g, uint64_t clusters, uint64_t *offset)
{
    *offset = g->next << s->cluster_bits;
    g->r.limit = g->next + clusters;
    for (uint64_t j = 0; j < clusters; j++) {
        int ret = rc_add(s, &g->r, g->next + j, "new metadata");
        if (ret < 0)
            return ret;
    }
    g->next += clusters;
    return 0;
}

static uint64_t clusters_for(const Qcow2State *s, uint64_t bytes)
{
    return (bytes + s->cluster_size - 1) >> s->cluster_bits;
}

/* Count the references of the new state and decide which active L2 tables are copied. */
static int generation_count(Qcow2State *s, Generation *g, const uint64_t *l1, const Qcow2CommitSnapshot *snaps,
                            uint32_t nb_snaps)
{
    int ret = rc_add(s, &g->r, 0, "header");
    if (ret == 0 && s->crypt_method == QCOW2_CRYPT_LUKS)
        ret = rc_add_range(s, &g->r, s->crypto_header_offset, s->crypto_header_length, "LUKS header");
    for (uint32_t k = 0; ret == 0 && k < nb_snaps; k++) {
        const Qcow2Snapshot *sn = &snaps[k].sn;
        if (snaps[k].new_l1) {
            ret = count_l1(s, &g->r, snaps[k].new_l1, sn->l1_size);
            continue;
        }
        uint64_t *sl1;
        ret = rc_add_range(s, &g->r, sn->l1_table_offset, (uint64_t)sn->l1_size * 8, "snapshot L1 table");
        if (ret == 0)
            ret = qcow2_load_l1(s, sn->l1_table_offset, sn->l1_size, &sl1);
        if (ret == 0) {
            ret = count_l1(s, &g->r, sl1, sn->l1_size);
            free(sl1);
        }
    }
    if (ret == 0)
        ret = count_l1(s, &g->r, l1, g->l1_size);
    for (uint32_t i = 0; ret == 0 && i < g->l1_size; i++) {
        uint64_t t = l1[i] & QCOW2_L1E_OFFSET_MASK, mismatches;
        g->l1[i] = 0;
        if (!t)
            continue;
        ret = l2_copied_mismatches(s, &g->r, t, &mismatches);
        if (ret == 0 && mismatches) {
            g->copy_index[g->nb_copies] = i;
            g->copy_src[g->nb_copies++] = t;
            g->r.c[t >> s->cluster_bits]--;
        } else if (ret == 0) {
            g->l1[i] = t | (rc_get(&g->r, t >> s->cluster_bits) == 1 ? QCOW2_OFLAG_COPIED : 0);
        }
    }
    return ret;
}

/* Place every new structure past the end of the file, the refcount structures last. */
static int generation_place(Qcow2State *s, Generation *g, const Qcow2CommitSnapshot *snaps, uint32_t nb_snaps)
{
    int ret = 0;
    for (uint32_t k = 0; ret == 0 && k < g->nb_copies; k++) {
        ret = place(s, g, 1, &g->copy_dst[k]);
        g->l1[g->copy_index[k]] = g->copy_dst[k] | QCOW2_OFLAG_COPIED;
    }
    if (ret == 0)
        ret = place(s, g, clusters_for(s, (uint64_t)g->l1_size * 8), &g->l1_offset);
    for (uint32_t k = 0; ret == 0 && k < nb_snaps; k++) {
        g->snap_l1_offset[k] = snaps[k].sn.l1_table_offset;
        if (snaps[k].new_l1)
            ret = place(s, g, clusters_for(s, (uint64_t)snaps[k].sn.l1_size * 8), &g->snap_l1_offset[k]);
    }
    g->snap_table_bytes = 0;
    for (uint32_t k = 0; k < nb_snaps; k++)
        g->snap_table_bytes += snapshot_entry_len(&snaps[k].sn);
    if (g->snap_table_bytes > QCOW2_MAX_SNAPSHOT_TABLE_BYTES)
        return -EFBIG;
    g->snap_table_offset = 0;
    if (ret == 0 && nb_snaps) {
        g->snap_table = calloc(1, clusters_for(s, g->snap_table_bytes) << s->cluster_bits);
        if (!g->snap_table)
            return -ENOMEM;
        ret = place(s, g, clusters_for(s, g->snap_table_bytes), &g->snap_table_offset);
        uint64_t pos = 0;
        for (uint32_t k = 0; ret == 0 && k < nb_snaps; k++) {
            Qcow2Snapshot sn = snaps[k].sn;
            sn.l1_table_offset = g->snap_l1_offset[k];
            snapshot_serialize(&sn, g->snap_table + pos);
            pos += snapshot_entry_len(&sn);
        }
    }
    if (ret < 0)
        return ret;
    uint64_t base = g->next, nb = 0, tc = 0;
    for (;;) {
        uint64_t total = base + nb + tc;
        uint64_t nb2 = (total + s->refcount_block_size - 1) >> s->refcount_block_bits;
        uint64_t tc2 = clusters_for(s, nb2 * 8);
        if (nb2 == nb && tc2 == tc)
            break;
        nb = nb2;
        tc = tc2;
    }
    if (tc * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES)
        return -EFBIG;
    g->nb_blocks = nb;
    g->table_clusters = tc;
    uint64_t off;
    ret = place(s, g, nb, &off);
    g->blocks_first = off >> s->cluster_bits;
    if (ret == 0)
        ret = place(s, g, tc, &off);
    return ret;
}

static int generation_check_overflow(Qcow2State *s, const Generation *g, Error *err)
{
    for (uint64_t ci = 0; ci < g->r.n; ci++) {
        if (g->r.c[ci] > s->refcount_max) {
            error_set(err, ERANGE, "%s: cluster 0x%" PRIx64 " would need a refcount of %" PRIu64
                      ", more than refcount_bits=%u allows", s->node_name, ci << s->cluster_bits,
                      g->r.c[ci], s->refcount_bits);
            return -ERANGE;
        }
    }
    return 0;
}

static int write_l1(Qcow2State *s, uint64_t offset, const uint64_t *l1, uint32_t n, bool clear_copied)
{
    uint64_t bytes = clusters_for(s, (uint64_t)n * 8) << s->cluster_bits;
    if (bytes == 0)
        return 0;
    uint8_t *buf = calloc(1, bytes);
    if (!buf)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        st_be64(buf + (size_t)i * 8, clear_copied ? l1[i] & ~QCOW2_OFLAG_COPIED : l1[i]);
    bdrv_debug_event(s->meta_file, "l1_update");
    int ret = bdrv_pwrite(s->meta_file, (int64_t)offset, (int64_t)bytes, buf, 0);
    free(buf);
    return ret;
}

static int write_l2_copy(Qcow2State *s, const Generation *g, uint64_t src, uint64_t dst)
{
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf)
        return -ENOMEM;
    void *t;
    int ret = qcow2_cache_get(s->l2_cache, src, &t);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    memcpy(buf, t, s->cluster_size);
    qcow2_cache_put(s->l2_cache, &t);
    for (uint32_t j = 0; j < s->l2_size; j++) {
        uint8_t *p = buf + (size_t)j * s->l2_entry_size;
        uint64_t e = ld_be64(p);
        uint64_t host = (e & QCOW2_OFLAG_COMPRESSED) ? 0 : e & QCOW2_L2E_OFFSET_MASK;
        bool copied = host && rc_get(&g->r, host >> s->cluster_bits) == 1;
        st_be64(p, copied ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED);
    }
    bdrv_debug_event(s->meta_file, "l2_update");
    ret = bdrv_pwrite(s->meta_file, (int64_t)dst, s->cluster_size, buf, 0);
    free(buf);
    return ret;
}

static int write_refcounts(Qcow2State *s, const Generation *g, uint64_t **table_out)
{
    uint64_t entries = g->table_clusters * s->cluster_size / 8;
    uint64_t *table = calloc(entries, sizeof(uint64_t));
    uint8_t *blk = aligned_alloc_zero(s->cluster_size);
    uint8_t *tbuf = calloc(1, g->table_clusters * s->cluster_size);
    int ret = (table && blk && tbuf) ? 0 : -ENOMEM;
    for (uint64_t b = 0; ret == 0 && b < g->nb_blocks; b++) {
        memset(blk, 0, s->cluster_size);
        for (uint64_t i = 0; i < s->refcount_block_size; i++)
            qcow2_refblock_set(s, blk, i, rc_get(&g->r, (b << s->refcount_block_bits) + i));
        table[b] = (g->blocks_first + b) << s->cluster_bits;
        bdrv_debug_event(s->meta_file, "refblock_update");
        ret = bdrv_pwrite(s->meta_file, (int64_t)table[b], s->cluster_size, blk, 0);
    }
    if (ret == 0) {
        for (uint64_t i = 0; i < entries; i++)
            st_be64(tbuf + i * 8, table[i]);
        bdrv_debug_event(s->meta_file, "reftable_update");
        ret = bdrv_pwrite(s->meta_file, (int64_t)((g->blocks_first + g->nb_blocks) << s->cluster_bits),
                          (int64_t)(g->table_clusters * s->cluster_size), tbuf, 0);
    }
    free(blk);
    free(tbuf);
    if (ret < 0)
        free(table);
    else
        *table_out = table;
    return ret;
}

static int generation_write(Qcow2State *s, Generation *g, const Qcow2CommitSnapshot *snaps, uint32_t nb_snaps,
                            uint64_t **reftable)
{
    /* Everything new goes past the end of the file, where no mapped metadata may be. */
    uint64_t first = g->first_new << s->cluster_bits;
    int ret = qcow2_meta_check_write(s, QCOW2_META_NEW, first, (g->next << s->cluster_bits) - first);
    for (uint32_t k = 0; ret == 0 && k < g->nb_copies; k++)
        ret = write_l2_copy(s, g, g->copy_src[k], g->copy_dst[k]);
    if (ret == 0)
        ret = write_l1(s, g->l1_offset, g->l1, g->l1_size, false);
    for (uint32_t k = 0; ret == 0 && k < nb_snaps; k++)
        if (snaps[k].new_l1)
            ret = write_l1(s, g->snap_l1_offset[k], snaps[k].new_l1, snaps[k].sn.l1_size, true);
    if (ret == 0 && nb_snaps) {
        bdrv_debug_event(s->meta_file, "snapshot_table");
        ret = bdrv_pwrite(s->meta_file, (int64_t)g->snap_table_offset,
                          (int64_t)(clusters_for(s, g->snap_table_bytes) << s->cluster_bits), g->snap_table, 0);
    }
    if (ret == 0)
        ret = write_refcounts(s, g, reftable);
    if (ret == 0)
        ret = bdrv_flush(s->meta_file);
    return ret;
}

/* Install the committed generation in memory. */
static int generation_install(Qcow2State *s, Generation *g, uint64_t size, const Qcow2CommitSnapshot *snaps,
                              uint32_t nb_snaps, uint64_t *reftable)
{
    Qcow2Snapshot *list = calloc(nb_snaps ? nb_snaps : 1, sizeof(*list));
    int ret = list ? 0 : -ENOMEM;
    uint32_t done = 0;
    for (; ret == 0 && done < nb_snaps; done++) {
        ret = snapshot_dup(&snaps[done].sn, &list[done]);
        list[done].l1_table_offset = g->snap_l1_offset[done];
    }
    if (ret < 0) {
        /* The disk is committed; keep the old list in memory rather than a partial one. */
        for (uint32_t k = 0; k + 1 < done; k++) {
            free(list[k].id_str);
            free(list[k].name);
            free(list[k].extra_data);
        }
        free(list);
        list = NULL;
    }
    free(s->l1_table);
    s->l1_table = g->l1;
    g->l1 = NULL;
    s->l1_size = g->l1_size;
    s->l1_alloc_entries = g->l1_size;
    s->l1_table_offset = g->l1_offset;
    s->size = size;
    s->l1_vm_state_index = (uint32_t)qcow2_size_to_l1(s, size);
    free(s->refcount_table);
    s->refcount_table = reftable;
    s->refcount_table_size = g->table_clusters * s->cluster_size / 8;
    s->refcount_table_offset = (g->blocks_first + g->nb_blocks) << s->cluster_bits;
    s->refcount_table_clusters = (uint32_t)g->table_clusters;
    qcow2_note_reftable_used(s);
    if (list) {
        qcow2_free_snapshots(s);
        s->snapshots = list;
        s->nb_snapshots = nb_snaps;
    }
    s->snapshots_offset = g->snap_table_offset;
    s->snapshots_size = g->snap_table_bytes;
    qcow2_l1_slices_invalidate(s); /* every snapshot L1 table was rewritten elsewhere */
    s->free_cluster_index = 0;
    s->host_end = MAX(s->host_end, g->next << s->cluster_bits);
    qcow2_cache_empty(s->refcount_cache);
    qcow2_cache_empty(s->l2_cache);
    return ret;
}

int qcow2_commit_generation(Qcow2State *s, const uint64_t *l1, uint32_t l1_size, uint64_t size,
                            const Qcow2CommitSnapshot *snaps, uint32_t nb_snaps, Error *err)
{
    int ret = qcow2_flush_metadata_locked(s);
    if (ret == 0)
        ret = bdrv_flush(s->meta_file);
    int64_t file_size = ret == 0 ? bdrv_getlength(s->meta_file) : ret;
    if (file_size < 0) {
        error_set(err, (int)-file_size, "%s: cannot write back metadata: %s", s->node_name, strerror((int)-file_size));
        return (int)file_size;
    }
    Generation g = { 0 };
    g.next = (uint64_t)align_up(file_size, s->cluster_size) >> s->cluster_bits;
    g.r.limit = g.next;
    g.first_new = g.next;
    g.l1_size = l1_size;
    g.l1 = calloc(l1_size ? l1_size : 1, sizeof(uint64_t));
    g.copy_index = calloc(l1_size ? l1_size : 1, sizeof(uint32_t));
    g.copy_src = calloc(l1_size ? l1_size : 1, sizeof(uint64_t));
    g.copy_dst = calloc(l1_size ? l1_size : 1, sizeof(uint64_t));
    g.snap_l1_offset = calloc(nb_snaps ? nb_snaps : 1, sizeof(uint64_t));
    if (!g.l1 || !g.copy_index || !g.copy_src || !g.copy_dst || !g.snap_l1_offset)
        ret = -ENOMEM;
    if (ret == 0)
        ret = generation_count(s, &g, l1, snaps, nb_snaps);
    if (ret == 0)
        ret = generation_place(s, &g, snaps, nb_snaps);
    if (ret == 0)
        ret = generation_check_overflow(s, &g, err);
    uint64_t *reftable = NULL;
    if (ret == 0)
        ret = generation_write(s, &g, snaps, nb_snaps, &reftable);
    if (ret == 0) {
        Qcow2State next = *s;
        uint8_t hdr[QCOW2_V3_MIN_HEADER_LEN];
        next.size = size;
        next.l1_size = g.l1_size;
        next.l1_table_offset = g.l1_offset;
        next.refcount_table_offset = (g.blocks_first + g.nb_blocks) << s->cluster_bits;
        next.refcount_table_clusters = (uint32_t)g.table_clusters;
        next.nb_snapshots = nb_snaps;
        next.snapshots_offset = g.snap_table_offset;
        qcow2_header_serialize(&next, hdr);
        ret = qcow2_write_header_bytes(s, 24, 48, hdr); /* the commit: one write inside the first sector */
        if (ret == 0)
            ret = bdrv_flush(s->meta_file);
        if (ret == 0) {
            ret = generation_install(s, &g, size, snaps, nb_snaps, reftable);
            int mret = qcow2_meta_rebuild(s); /* the metadata map follows the committed generation */
            ret = ret < 0 ? ret : mret;
        } else {
            free(reftable);
        }
    }
    generation_free(&g);
    if (ret < 0)
        error_set(err, -ret, "%s: cannot commit new metadata: %s", s->node_name, strerror(-ret));
    return ret;
}

int qcow2_rebuild_refcounts(Qcow2State *s, Error *err)
{
    Qcow2CommitSnapshot *snaps = calloc(s->nb_snapshots ? s->nb_snapshots : 1, sizeof(*snaps));
    if (!snaps)
        return -ENOMEM;
    for (uint32_t k = 0; k < s->nb_snapshots; k++)
        snaps[k].sn = s->snapshots[k];
    int ret = qcow2_commit_generation(s, s->l1_table, s->l1_size, s->size, snaps, s->nb_snapshots, err);
    free(snaps);
    return ret;
}

/* ---------------------------------------------------------------- check */

typedef struct StoredRefcounts {
    Qcow2State *s;
    uint64_t *table;
    uint64_t entries;
    uint8_t *blk;
    uint64_t blk_offset;
} StoredRefcounts;

static int stored_get(StoredRefcounts *st, uint64_t ci, uint64_t *rc)
{
    Qcow2State *s = st->s;
    uint64_t rt = ci >> s->refcount_block_bits;
    *rc = 0;
    if (rt >= st->entries)
        return 0;
    uint64_t off = st->table[rt] & QCOW2_REFT_OFFSET_MASK;
    if (!off)
        return 0;
    if (off != st->blk_offset) {
        int ret = bdrv_pread(s->meta_file, (int64_t)off, s->cluster_size, st->blk);
        if (ret < 0)
            return ret;
        st->blk_offset = off;
    }
    *rc = qcow2_refblock_get(s, st->blk, ci & (s->refcount_block_size - 1));
    return 0;
}

static int check_count_all(Qcow2State *s, RefCounts *r, StoredRefcounts *st)
{
    int ret = rc_add(s, r, 0, "header");
    if (ret == 0 && s->crypt_method == QCOW2_CRYPT_LUKS)
        ret = rc_add_range(s, r, s->crypto_header_offset, s->crypto_header_length, "LUKS header");
    if (ret == 0)
        ret = rc_add_range(s, r, s->l1_table_offset, (uint64_t)s->l1_size * 8, "L1 table");
    if (ret == 0)
        ret = count_l1(s, r, s->l1_table, s->l1_size);
    for (uint32_t k = 0; ret == 0 && k < s->nb_snapshots; k++) {
        const Qcow2Snapshot *sn = &s->snapshots[k];
        uint64_t *sl1;
        ret = rc_add_range(s, r, sn->l1_table_offset, (uint64_t)sn->l1_size * 8, "snapshot L1 table");
        if (ret == 0)
            ret = qcow2_load_l1(s, sn->l1_table_offset, sn->l1_size, &sl1);
        if (ret == 0) {
            ret = count_l1(s, r, sl1, sn->l1_size);
            free(sl1);
        }
    }
    if (ret == 0 && s->nb_snapshots)
        ret = rc_add_range(s, r, s->snapshots_offset, s->snapshots_size, "snapshot table");
    if (ret == 0)
        ret = rc_add_range(s, r, s->refcount_table_offset,
                           (uint64_t)s->refcount_table_clusters << s->cluster_bits, "refcount table");
    for (uint64_t i = 0; ret == 0 && i < st->entries; i++) {
        uint64_t off = st->table[i] & QCOW2_REFT_OFFSET_MASK;
        if (off)
            ret = rc_add(s, r, off >> s->cluster_bits, "refcount block");
    }
    return ret;
}

static int check_copied(Qcow2State *s, const RefCounts *r, BlockCheckResult *res)
{
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t t = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK, mismatches;
        if (!t)
            continue;
        if ((rc_get(r, t >> s->cluster_bits) == 1) != ((s->l1_table[i] & QCOW2_OFLAG_COPIED) != 0))
            bdrv_check_corruption(res, "L1 entry %" PRIu32 ": the COPIED flag of the L2 table at 0x%" PRIx64
                                  " disagrees with its refcount", i, t);
        int ret = l2_copied_mismatches(s, r, t, &mismatches);
        if (ret < 0)
            return ret;
        if (mismatches)
            bdrv_check_corruption(res, "the L2 table at 0x%" PRIx64 " has %" PRIu64 " entries whose COPIED flag "
                                  "disagrees with the refcount", t, mismatches);
        res->corruptions += mismatches ? (int64_t)mismatches - 1 : 0;
    }
    return 0;
}

/* qemu-img's cluster statistics of the active tables: allocated, compressed, and fragmented (a cluster
 * not right after the one before it in the same L2 table; every compressed cluster). */
static int check_frag_info(Qcow2State *s, BlockCheckResult *res)
{
    res->total_clusters = (int64_t)((s->size + s->cluster_size - 1) >> s->cluster_bits);
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t t = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK, next = 0;
        void *tab;
        if (!t)
            continue;
        int ret = qcow2_cache_get(s->l2_cache, t, &tab);
        if (ret < 0)
            return ret;
        for (uint32_t j = 0; j < s->l2_size; j++) {
            uint64_t e = qcow2_l2_entry(s, tab, j), host = e & QCOW2_L2E_OFFSET_MASK;
            if (e & QCOW2_OFLAG_COMPRESSED) {
                res->allocated_clusters++;
                res->compressed_clusters++;
                res->fragmented_clusters++;
            } else if (host) {
                res->allocated_clusters++;
                res->fragmented_clusters += next && host != next;
                next = host + s->cluster_size;
            }
        }
        qcow2_cache_put(s->l2_cache, &tab);
    }
    return 0;
}

/* Stored refcounts against the references counted from the tables: a refcount below the references is a
 * corruption (the allocator may hand the cluster out again), one above them a leak. */
static int check_compare(Qcow2State *s, const RefCounts *r, StoredRefcounts *st, BlockCheckResult *res)
{
    uint64_t highest = 0;
    bool any = false;
    for (uint64_t ci = 0; ci < r->limit; ci++) {
        uint64_t rt = ci >> s->refcount_block_bits;
        if (ci >= r->n && (rt >= st->entries || !(st->table[rt] & QCOW2_REFT_OFFSET_MASK))) {
            if (rt >= st->entries)
                break; /* no references and no refcount blocks from here on */
            ci = ((rt + 1) << s->refcount_block_bits) - 1; /* a sparse file: skip what no block covers */
            continue;
        }
        uint64_t stored, refs = rc_get(r, ci);
        int ret = stored_get(st, ci, &stored);
        if (ret < 0)
            return ret;
        if (stored < refs)
            bdrv_check_corruption(res, "cluster 0x%" PRIx64 " has refcount %" PRIu64 " but %" PRIu64
                                  " references", ci << s->cluster_bits, stored, refs);
        else if (stored > refs)
            bdrv_check_leak(res, "cluster 0x%" PRIx64 " is leaked (refcount %" PRIu64 ", %" PRIu64 " references)",
                            ci << s->cluster_bits, stored, refs);
        if (stored || refs) {
            highest = ci;
            any = true;
        }
    }
    res->image_end_offset = any ? (int64_t)((highest + 1) << s->cluster_bits) : 0;
    return 0;
}

/* The check reads every snapshot's L1 table whole, one at a time: at most this many bytes of them in all
 * (1000 snapshots of 32 MiB tables would be 32 GiB to read and walk). */
#define QCOW2_CHECK_MAX_SNAPSHOT_L1_BYTES (1ULL << 30)

static bool check_over_budget(Qcow2State *s, BlockCheckResult *res)
{
    uint64_t total = 0;
    for (uint32_t k = 0; k < s->nb_snapshots; k++)
        total += (uint64_t)s->snapshots[k].l1_size * 8;
    if (total <= QCOW2_CHECK_MAX_SNAPSHOT_L1_BYTES)
        return false;
    res->check_errors++;
    snprintf(res->first_error, sizeof(res->first_error), "the %" PRIu32 " snapshots' L1 tables hold %" PRIu64
             " MiB, more than the check reads (%llu MiB): not checked", s->nb_snapshots, total >> 20,
             QCOW2_CHECK_MAX_SNAPSHOT_L1_BYTES >> 20);
    return true;
}

/* One whole check under the node's lock. A reference the walk cannot count (past the end of the file,
 * unaligned) is a corruption no refcount rebuild can repair: *unrepairable is set. */
static int check_locked(Qcow2State *s, BlockCheckResult *res, bool *unrepairable)
{
    if (check_over_budget(s, res))
        return 0;
    int64_t file_size = bdrv_getlength(s->meta_file);
    if (file_size < 0)
        return (int)file_size;
    int ret = s->write_ready && !s->is_snapshot_view ? qcow2_flush_metadata_locked(s) : 0;
    StoredRefcounts st = { .s = s, .entries = s->refcount_table_size, .blk_offset = 0 };
    st.table = calloc(st.entries ? st.entries : 1, sizeof(uint64_t));
    st.blk = malloc(s->cluster_size);
    if (ret == 0 && (!st.table || !st.blk))
        ret = -ENOMEM;
    if (ret == 0 && st.entries)
        ret = bdrv_pread(s->meta_file, (int64_t)s->refcount_table_offset, (int64_t)(st.entries * 8), st.table);
    for (uint64_t i = 0; ret == 0 && i < st.entries; i++)
        st.table[i] = ld_be64(&st.table[i]);
    RefCounts r = { .limit = (uint64_t)align_up(file_size, s->cluster_size) >> s->cluster_bits };
    if (ret == 0)
        ret = check_count_all(s, &r, &st);
    if (ret == -EIO) {
        *unrepairable = true;
        bdrv_check_corruption(res, "a table entry points past the end of the file or is not cluster aligned");
        ret = 0;
    } else {
        if (ret == 0)
            ret = check_compare(s, &r, &st, res);
        if (ret == 0)
            ret = check_copied(s, &r, res);
    }
    if (ret == 0)
        ret = check_frag_info(s, res);
    free(st.table);
    free(st.blk);
    free(r.c);
    return ret;
}

static int check_run(Qcow2State *s, BlockCheckResult *res, bool *unrepairable)
{
    memset(res, 0, sizeof(*res));
    pthread_mutex_lock(s->lock);
    int ret = check_locked(s, res, unrepairable);
    pthread_mutex_unlock(s->lock);
    return ret;
}

/* Every refcount rewritten from the tables (the rebuild an unclean shutdown gets), then the dirty and
 * corrupt bits cleared: repairs leaks, refcounts too low and COPIED flags at once. */
static int check_repair(Qcow2State *s, BlockCheckResult *res)
{
    Error err = { .msg = "" };
    pthread_mutex_lock(s->lock);
    int ret = qcow2_rebuild_refcounts(s, &err);
    if (ret == 0)
        ret = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT);
    if (ret == 0) {
        s->dirty = false;
        __atomic_store_n(&s->corrupt, false, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(s->lock);
    if (ret < 0)
        snprintf(res->first_error, sizeof(res->first_error), "cannot repair: %.200s",
                 err.msg[0] ? err.msg : strerror(-ret));
    return ret;
}

int qcow2_check(BlockNode *bs, BlockCheckResult *res, int fix)
{
    if (fix == BDRV_FIX_QUERY)
        return 0;
    Qcow2State *s = bs->opaque;
    bool unrepairable = false;
    int ret = check_run(s, res, &unrepairable);
    if (ret < 0 || !fix || unrepairable || (!res->corruptions && !res->leaks && !s->corrupt && !s->dirty))
        return ret;
    if (res->corruptions && !(fix & BDRV_FIX_ERRORS))
        return 0; /* -r leaks: a rebuild would repair the corruptions too; leave both to -r all */
    BlockCheckResult before = *res;
    ret = check_repair(s, res);
    if (ret < 0)
        return ret;
    ret = check_run(s, res, &unrepairable);
    res->leaks_fixed = MAX(before.leaks - res->leaks, 0);
    res->corruptions_fixed = MAX(before.corruptions - res->corruptions, 0);
    return ret;
}
