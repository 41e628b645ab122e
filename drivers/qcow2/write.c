/* SPDX-License-Identifier: MIT */
/*
 * write.c - the qcow2 driver's guest-facing write path.  It owns writes (plain overwrites of clusters
 * the active L1/L2 tables own outright go straight to the host file outside the metadata lock; every
 * other write allocates under the lock: a new L2 table or a copy of a shared one, then a new data
 * cluster filled by copy-on-write from the old cluster, its decompressed contents, zeros or the backing
 * chain, per subcluster with extended L2 entries), write_zeroes (zero flags on v3), discard, truncate,
 * flush and the write-side open/close: the dirty bit with lazy refcounts, autoclear bits, the corrupt
 * bit and overlap checks before metadata or data reaches the disk.  Refcounts live in refcount.c,
 * snapshots in snapshot-write.c, the refcount rebuild in check.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"

static int qcow2_free_tail_locked(Qcow2State *s, uint64_t from);

/* ---------------------------------------------------------------- subcluster masks */

static uint32_t sc_mask(unsigned first, unsigned last)
{
    uint64_t m = ((2ULL << last) - 1) & ~((1ULL << first) - 1);
    return (uint32_t)m;
}

static uint32_t all_sc(const Qcow2State *s)
{
    return sc_mask(0, s->subclusters_per_cluster - 1);
}

/* ---------------------------------------------------------------- corruption, overlaps */

int qcow2_mark_corrupt(Qcow2State *s, const char *fmt, ...)
{
    bool was_writable = !s->read_only;
    s->read_only = true;
    va_list ap;
    va_start(ap, fmt);
    qcow2_vsignal_corruption(s, "; the image is now read-only", fmt, ap);
    va_end(ap);
    if (was_writable && s->write_ready && s->version >= 3 &&
        !(s->incompatible_features & QCOW2_INCOMPAT_CORRUPT))
        qcow2_update_incompat(s, QCOW2_INCOMPAT_CORRUPT, 0);
    return -EIO;
}

static int qcow2_check_data_target(Qcow2State *s, uint64_t host, uint64_t bytes)
{
    int ret = qcow2_meta_check_write(s, QCOW2_META_DATA, host, bytes);
    if (ret < 0)
        return ret;
    if (host + bytes > s->host_end)
        return qcow2_mark_corrupt(s, "data cluster 0x%" PRIx64 " lies past the end of the image", host);
    return 0;
}

/* Before a cached table of the given kind is written back: copy-on-write data first, then the overlap
 * check (the table must be where the metadata map has it). */
static int qcow2_table_write_check(Qcow2State *s, Qcow2MetaKind kind, uint64_t offset)
{
    if (s->corrupt)
        return -EIO;
    /* Old data copied into a new cluster must be stable before a table makes it the only copy. */
    if (__atomic_exchange_n(&s->cow_unflushed, false, __ATOMIC_ACQ_REL)) {
        int ret = bdrv_flush(s->data_file);
        if (ret < 0) {
            __atomic_store_n(&s->cow_unflushed, true, __ATOMIC_RELEASE);
            return ret;
        }
    }
    return qcow2_meta_check_write(s, kind, offset, s->cluster_size);
}

static int qcow2_l2_write_hook(void *opaque, uint64_t offset, const void *table)
{
    (void)table;
    return qcow2_table_write_check(opaque, QCOW2_META_L2, offset);
}

static int qcow2_refblock_write_hook(void *opaque, uint64_t offset, const void *table)
{
    (void)table;
    return qcow2_table_write_check(opaque, QCOW2_META_REFBLOCK, offset);
}

/* ---------------------------------------------------------------- first write */

/* Before the first change: clear the autoclear bits this driver does not maintain (stale bitmaps) and,
 * with lazy refcounts, set the dirty bit. Caller holds *s->lock. */
static int qcow2_prepare_write_locked(Qcow2State *s)
{
    if (s->first_write_done)
        return 0;
    int ret = 0;
    uint64_t drop = s->autoclear_features & ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    if (s->version >= 3 && drop) {
        uint8_t hdr[QCOW2_V3_MIN_HEADER_LEN];
        s->autoclear_features &= ~drop;
        qcow2_header_serialize(s, hdr);
        ret = qcow2_write_header_bytes(s, 88, 8, hdr);
        if (ret == 0)
            ret = bdrv_flush(s->meta_file);
    }
    if (ret == 0 && s->use_lazy_refcounts && s->version >= 3 && !s->dirty) {
        ret = qcow2_update_incompat(s, QCOW2_INCOMPAT_DIRTY, 0);
        if (ret == 0)
            s->dirty = true;
    }
    if (ret == 0)
        __atomic_store_n(&s->first_write_done, true, __ATOMIC_RELEASE);
    return ret;
}

/* Snapshot views copy their parent's state: only the node that opened the image writes. */
static bool qcow2_is_writer(const Qcow2State *s)
{
    return s->write_ready && !s->is_snapshot_view;
}

/* Corruption a read found (a lookup signals it without writing) is recorded in the header by the first
 * write that follows, as if that write had found it: the corrupt bit set, the node read-only. A read
 * before any write is common (the mount reads the partition table), so the bit must not depend on
 * which request met the bad entry first. */
static void qcow2_persist_corrupt(Qcow2State *s)
{
    pthread_mutex_lock(s->lock);
    bool was_writable = !s->read_only;
    s->read_only = true;
    if (was_writable && s->write_ready && s->version >= 3 && !(s->incompatible_features & QCOW2_INCOMPAT_CORRUPT))
        qcow2_update_incompat(s, QCOW2_INCOMPAT_CORRUPT, 0);
    pthread_mutex_unlock(s->lock);
}

static int qcow2_writable(Qcow2State *s)
{
    if (!qcow2_is_writer(s))
        return -EROFS;
    if (__atomic_load_n(&s->corrupt, __ATOMIC_RELAXED)) {
        qcow2_persist_corrupt(s);
        return -EIO;
    }
    if (s->read_only)
        return -EROFS;
    if (__atomic_load_n(&s->first_write_done, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(s->lock);
    int ret = qcow2_prepare_write_locked(s);
    pthread_mutex_unlock(s->lock);
    return ret;
}

/* qcow2_writable, and [offset, offset + bytes) within the disk (-EINVAL if not). */
static int qcow2_writable_range(Qcow2State *s, int64_t offset, int64_t bytes)
{
    int ret = qcow2_writable(s);
    if (ret < 0)
        return ret;
    if (offset < 0 || bytes < 0 || (uint64_t)offset + (uint64_t)bytes > s->size)
        return -EINVAL;
    return 0;
}

/* ---------------------------------------------------------------- L2 tables */

static int qcow2_write_l1_entry(Qcow2State *s, uint64_t index, uint64_t value)
{
    uint8_t buf[8];
    st_be64(buf, value);
    int ret = qcow2_meta_check_write(s, QCOW2_META_L1, s->l1_table_offset + index * 8, 8);
    if (ret < 0)
        return ret;
    bdrv_debug_event(s->meta_file, "l1_update");
    ret = bdrv_pwrite(s->meta_file, (int64_t)(s->l1_table_offset + index * 8), 8, buf, 0);
    if (ret == 0)
        s->l1_table[index] = value;
    return ret;
}

/* Pin the L2 table for L1 index l1i so that it may be modified: allocate one, or copy a shared one.
 * The new table reaches the disk (after its refcount) before the L1 entry points at it. */
static int qcow2_l2_for_write(Qcow2State *s, uint64_t l1i, void **table)
{
    if (l1i >= s->l1_size)
        return qcow2_mark_corrupt(s, "guest offset beyond the L1 table (index %" PRIu64 ")", l1i);
    uint64_t l1e = s->l1_table[l1i];
    uint64_t old = l1e & QCOW2_L1E_OFFSET_MASK;
    if (old & s->cluster_mask)
        return qcow2_mark_corrupt(s, "L2 table offset 0x%" PRIx64 " is not cluster aligned", old);
    if (old && old < s->cluster_size)
        return qcow2_mark_corrupt(s, "L2 table offset 0x%" PRIx64 " points into the header", old);
    if (old >= s->host_end)
        return qcow2_mark_corrupt(s, "L2 table offset 0x%" PRIx64 " lies past the end of the image", old);
    if (old && (l1e & QCOW2_OFLAG_COPIED))
        return qcow2_cache_get(s->l2_cache, old, table);
    uint64_t new_off;
    int ret = qcow2_alloc_clusters(s, 1, &new_off);
    if (ret < 0)
        return ret;
    /* Refcounts that lie about metadata show up here: the new table must not land on any. */
    ret = qcow2_meta_add(s, QCOW2_META_L2, new_off, s->cluster_size);
    if (ret < 0)
        return ret;
    void *nt;
    ret = qcow2_cache_get_empty(s->l2_cache, new_off, &nt);
    if (ret < 0) {
        qcow2_meta_remove(s, QCOW2_META_L2, new_off);
        return ret;
    }
    if (old) {
        void *ot;
        ret = qcow2_cache_get(s->l2_cache, old, &ot);
        if (ret < 0) {
            qcow2_cache_put(s->l2_cache, &nt);
            return ret;
        }
        memcpy(nt, ot, s->cluster_size);
        qcow2_cache_put(s->l2_cache, &ot);
    }
    qcow2_cache_mark_dirty(s->l2_cache, nt);
    /* The new table and its refcount must be on disk before the L1 entry points at it; nothing
     * reachable points at either yet, so one flush after both writes orders them. */
    ret = qcow2_cache_write_back(s->refcount_cache);
    if (ret == 0) {
        bdrv_debug_event(s->meta_file, "l2_update");
        ret = bdrv_pwrite(s->meta_file, (int64_t)new_off, s->cluster_size, nt, 0);
    }
    if (ret == 0)
        ret = bdrv_flush(s->meta_file);
    /* On failure the new table stays allocated, mapped and dirty in the cache: a later write-back may
     * still write it, and nothing else is put there. */
    if (ret == 0)
        ret = qcow2_write_l1_entry(s, l1i, new_off | QCOW2_OFLAG_COPIED);
    if (ret == 0 && old) {
        qcow2_meta_retire_l2(s, old);
        ret = qcow2_free_deferred(s, old, s->cluster_size);
    }
    if (ret < 0) {
        qcow2_cache_put(s->l2_cache, &nt);
        return ret;
    }
    *table = nt;
    return 0;
}

/* The L2 table holding guest offset's entry, pinned for writing (qcow2_l2_for_write), and the index of
 * the entry in it. */
static int qcow2_l2_slot_for_write(Qcow2State *s, uint64_t offset, void **table, uint32_t *idx)
{
    *idx = qcow2_l2_index(s, offset);
    return qcow2_l2_for_write(s, offset >> (s->cluster_bits + s->l2_bits), table);
}

/* ---------------------------------------------------------------- fast path */

/* Under *s->lock: the length of the run from offset that can be overwritten in place (clusters owned by
 * the active tables, every touched subcluster allocated, contiguous on the host); 0 if none. */
static int qcow2_in_place_run(Qcow2State *s, uint64_t offset, uint64_t bytes, uint64_t *host, uint64_t *run)
{
    *run = 0;
    unsigned span_bits = s->cluster_bits + s->l2_bits;
    uint64_t l1i = offset >> span_bits;
    if (l1i >= s->l1_size)
        return 0;
    uint64_t l1e = s->l1_table[l1i];
    uint64_t l2off = l1e & QCOW2_L1E_OFFSET_MASK;
    if (!l2off || !(l1e & QCOW2_OFLAG_COPIED) || (l2off & s->cluster_mask) || l2off < s->cluster_size)
        return 0;
    void *t;
    int ret = qcow2_cache_get(s->l2_cache, l2off, &t);
    if (ret < 0)
        return ret;
    uint32_t idx = qcow2_l2_index(s, offset);
    uint64_t pos = offset, end = MIN(offset + bytes, (l1i + 1) << span_bits);
    while (pos < end) {
        uint64_t e = qcow2_l2_entry(s, t, idx);
        if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_COPIED))
            break;
        uint64_t h = e & QCOW2_L2E_OFFSET_MASK;
        if (!h || (h & s->cluster_mask))
            break;
        uint64_t chunk_end = MIN(end, (pos | s->cluster_mask) + 1);
        if (s->extended_l2) {
            uint64_t bm = qcow2_l2_bitmap(s, t, idx);
            uint32_t need = sc_mask((unsigned)((pos & s->cluster_mask) >> s->subcluster_bits),
                                    (unsigned)(((chunk_end - 1) & s->cluster_mask) >> s->subcluster_bits));
            if (((uint32_t)bm & need) != need || ((uint32_t)(bm >> 32) & need))
                break;
        } else if (s->version >= 3 && (e & QCOW2_OFLAG_ZERO)) {
            break;
        }
        uint64_t hpos = h + (pos & s->cluster_mask);
        if (*run == 0)
            *host = hpos;
        else if (hpos != *host + *run)
            break;
        *run += chunk_end - pos;
        pos = chunk_end;
        idx++;
    }
    qcow2_cache_put(s->l2_cache, &t);
    return 0;
}

/* ---------------------------------------------------------------- allocating path */

/* Guest clusters [start, end) got new host clusters whose data is being written outside *s->lock; their
 * L2 entries still hold the old values. Any other allocating write to them waits (alloc_done). */
typedef struct Qcow2AllocInFlight {
    uint64_t start, end;
    struct Qcow2AllocInFlight *next;
} Qcow2AllocInFlight;

/* Under *s->lock: is an allocating write in flight over guest range [start, end)? */
static bool qcow2_alloc_busy(const Qcow2State *s, uint64_t start, uint64_t end)
{
    for (const Qcow2AllocInFlight *a = s->allocs_in_flight; a; a = a->next)
        if (a->start < end && start < a->end)
            return true;
    return false;
}

static void qcow2_alloc_finish(Qcow2State *s, Qcow2AllocInFlight *me)
{
    for (Qcow2AllocInFlight **pp = &s->allocs_in_flight; *pp; pp = &(*pp)->next) {
        if (*pp == me) {
            *pp = me->next;
            break;
        }
    }
    pthread_cond_broadcast(&s->alloc_done);
}

static int qcow2_read_backing(BlockNode *bs, uint64_t offset, uint64_t bytes, uint8_t *buf)
{
    BlockNode *backing = bs->backing;
    memset(buf, 0, bytes);
    if (!backing)
        return 0;
    int64_t len = bdrv_getlength(backing);
    if (len < 0)
        return (int)len;
    if ((int64_t)offset >= len)
        return 0;
    uint64_t n = MIN(bytes, (uint64_t)len - offset);
    return bdrv_pread(backing, (int64_t)offset, (int64_t)n, buf);
}

/* Old guest contents of subcluster sc of the cluster at guest offset gstart into buf (cluster sized). */
static int qcow2_old_subcluster(BlockNode *bs, Qcow2State *s, uint64_t entry, uint64_t bitmap, unsigned sc,
                                uint64_t gstart, uint8_t *buf, uint8_t **dc)
{
    uint64_t off = (uint64_t)sc << s->subcluster_bits;
    switch (qcow2_subcluster_type(s, entry, bitmap, sc)) {
    case QCOW2_SC_NORMAL:
        return qcow2_data_pread(s, (entry & QCOW2_L2E_OFFSET_MASK) + off, gstart + off, s->subcluster_size,
                                buf + off);
    case QCOW2_SC_COMPRESSED:
        if (!*dc) {
            *dc = malloc(s->cluster_size);
            if (!*dc)
                return -ENOMEM;
            int ret = qcow2_read_compressed_cluster(s, entry, *dc);
            if (ret < 0)
                return ret;
        }
        memcpy(buf + off, *dc + off, s->subcluster_size);
        return 0;
    case QCOW2_SC_ZERO_PLAIN:
    case QCOW2_SC_ZERO_ALLOC:
        memset(buf + off, 0, s->subcluster_size);
        return 0;
    case QCOW2_SC_UNALLOCATED_PLAIN:
    case QCOW2_SC_UNALLOCATED_ALLOC:
        return qcow2_read_backing(bs, gstart + off, s->subcluster_size, buf + off);
    default:
        return qcow2_mark_corrupt(s, "invalid L2 entry 0x%016" PRIx64 " for guest offset 0x%" PRIx64, entry, gstart);
    }
}

/* Write the subclusters of mask from buf to the host cluster at host, one request per contiguous run. */
static int qcow2_write_subclusters(Qcow2State *s, uint64_t host, uint64_t gstart, uint32_t mask, const uint8_t *buf,
                                   bool cow)
{
    unsigned n = s->subclusters_per_cluster;
    for (unsigned sc = 0; sc < n;) {
        if (!(mask & (1u << sc))) {
            sc++;
            continue;
        }
        unsigned end = sc;
        while (end < n && (mask & (1u << end)))
            end++;
        uint64_t off = (uint64_t)sc << s->subcluster_bits, len = (uint64_t)(end - sc) << s->subcluster_bits;
        if (cow)
            bdrv_debug_event(s->data_file, "cow_write");
        int ret = qcow2_data_pwrite(s, host + off, gstart + off, len, buf + off);
        if (ret < 0)
            return ret;
        sc = end;
    }
    return 0;
}

/* Rewrite guest bytes [in_off, in_off + n) of the cluster described by L2 entry idx of table t (data ==
 * NULL: zeros), moving the cluster to a new host cluster unless the active tables own it outright.
 * Caller holds *s->lock and has made t writable. */
static int qcow2_rewrite_cluster(BlockNode *bs, Qcow2State *s, void *t, uint32_t idx, uint64_t gstart,
                                 uint64_t in_off, uint64_t n, const uint8_t *data)
{
    uint64_t e = qcow2_l2_entry(s, t, idx), bm = qcow2_l2_bitmap(s, t, idx);
    bool compressed = (e & QCOW2_OFLAG_COMPRESSED) != 0;
    uint64_t old_host = compressed ? 0 : e & QCOW2_L2E_OFFSET_MASK;
    if (old_host & s->cluster_mask)
        return qcow2_mark_corrupt(s, "L2 entry 0x%016" PRIx64 " is not cluster aligned", e);
    bool reuse = old_host && (e & QCOW2_OFLAG_COPIED);
    uint32_t touched = sc_mask((unsigned)(in_off >> s->subcluster_bits), (unsigned)((in_off + n - 1) >> s->subcluster_bits));
    uint32_t write_mask = touched;
    /* Allocated subclusters of a cluster kept in place may see concurrent in-place writes: only the new
     * bytes go there, never a read-modify-write of the whole subcluster. */
    uint32_t direct = reuse && s->extended_l2 ? touched & (uint32_t)bm & ~(uint32_t)(bm >> 32) : 0;
    write_mask &= ~direct;
    if (!reuse && (compressed || old_host))
        write_mask |= (compressed || !s->extended_l2) ? all_sc(s) : ((uint32_t)bm & all_sc(s));
    uint8_t *buf = malloc(s->cluster_size), *dc = NULL;
    if (!buf)
        return -ENOMEM;
    int ret = 0;
    bool cow = false;
    for (unsigned sc = 0; ret == 0 && sc < s->subclusters_per_cluster; sc++) {
        uint64_t sc_start = (uint64_t)sc << s->subcluster_bits, sc_end = sc_start + s->subcluster_size;
        if (!(write_mask & (1u << sc)) || (in_off <= sc_start && in_off + n >= sc_end))
            continue;
        cow = true;
        ret = qcow2_old_subcluster(bs, s, e, bm, sc, gstart, buf, &dc);
    }
    free(dc);
    if (ret == 0) {
        if (data)
            memcpy(buf + in_off, data, n);
        else
            memset(buf + in_off, 0, n);
    }
    uint64_t new_host = old_host;
    if (ret == 0 && !reuse)
        ret = qcow2_alloc_clusters(s, 1, &new_host);
    if (ret == 0) /* fresh clusters too: refcounts may claim metadata clusters are free */
        ret = qcow2_check_data_target(s, new_host, s->cluster_size);
    if (ret == 0)
        ret = qcow2_write_subclusters(s, new_host, gstart, write_mask, buf, cow);
    if (ret == 0 && cow)
        __atomic_store_n(&s->cow_unflushed, true, __ATOMIC_RELEASE);
    for (unsigned sc = 0; ret == 0 && direct && sc < s->subclusters_per_cluster; sc++) {
        uint64_t sc_start = (uint64_t)sc << s->subcluster_bits;
        uint64_t from = MAX(sc_start, in_off), to = MIN(sc_start + s->subcluster_size, in_off + n);
        if (direct & (1u << sc))
            ret = qcow2_data_pwrite(s, new_host + from, gstart + from, to - from, buf + from);
    }
    free(buf);
    if (ret < 0)
        return ret;
    uint64_t new_bm = 0;
    if (s->extended_l2) {
        uint32_t alloc = compressed ? all_sc(s) : ((uint32_t)bm | write_mask);
        uint32_t zero = compressed ? 0 : ((uint32_t)(bm >> 32) & ~write_mask);
        new_bm = (uint64_t)alloc | (uint64_t)zero << 32;
    }
    qcow2_l2_set(s, t, idx, new_host | QCOW2_OFLAG_COPIED, new_bm);
    qcow2_cache_mark_dirty(s->l2_cache, t);
    if (reuse)
        return 0;
    if (compressed)
        return qcow2_free_compressed_deferred(s, e);
    return old_host ? qcow2_free_deferred(s, old_host, s->cluster_size) : 0;
}

static int qcow2_write_allocating(BlockNode *bs, Qcow2State *s, uint64_t offset, uint64_t n, const uint8_t *data)
{
    void *t;
    uint32_t idx;
    int ret = qcow2_l2_slot_for_write(s, offset, &t, &idx);
    if (ret < 0)
        return ret;
    ret = qcow2_rewrite_cluster(bs, s, t, idx, offset & ~s->cluster_mask, offset & s->cluster_mask, n, data);
    qcow2_cache_put(s->l2_cache, &t);
    return ret;
}

/* Under *s->lock: how many clusters from the cluster-aligned guest offset (at most max, all in one L2
 * table t at index idx) can simply get new host clusters: not owned in place by the active tables (those
 * are overwritten where they are) and not part of another allocating write in flight. */
static uint64_t qcow2_replaceable_run(const Qcow2State *s, const void *t, uint32_t idx, uint64_t offset,
                                      uint64_t max)
{
    uint64_t k = 0;
    for (; k < max; k++) {
        uint64_t e = qcow2_l2_entry(s, t, idx + (uint32_t)k);
        uint64_t host = (e & QCOW2_OFLAG_COMPRESSED) ? 0 : e & QCOW2_L2E_OFFSET_MASK;
        if ((host && (e & QCOW2_OFLAG_COPIED)) || (host & s->cluster_mask))
            break;
        uint64_t g = offset + (k << s->cluster_bits);
        if (k && qcow2_alloc_busy(s, g, g + s->cluster_size))
            break;
    }
    return k;
}

/* Point the L2 entries of the run at the new host clusters (written already), freeing the old ones. */
static int qcow2_link_new_clusters(Qcow2State *s, uint64_t offset, uint64_t k, uint64_t new_host)
{
    void *t;
    uint32_t idx;
    int ret = qcow2_l2_slot_for_write(s, offset, &t, &idx);
    if (ret < 0)
        return ret;
    for (uint64_t j = 0; ret == 0 && j < k; j++) {
        uint64_t e = qcow2_l2_entry(s, t, idx + (uint32_t)j);
        qcow2_l2_set(s, t, idx + (uint32_t)j, (new_host + (j << s->cluster_bits)) | QCOW2_OFLAG_COPIED,
                s->extended_l2 ? all_sc(s) : 0);
        if (e & QCOW2_OFLAG_COMPRESSED)
            ret = qcow2_free_compressed_deferred(s, e);
        else if (e & QCOW2_L2E_OFFSET_MASK)
            ret = qcow2_free_deferred(s, e & QCOW2_L2E_OFFSET_MASK, s->cluster_size);
    }
    qcow2_cache_mark_dirty(s->l2_cache, t);
    qcow2_cache_put(s->l2_cache, &t);
    return ret;
}

/* Whole clusters from the cluster-aligned guest offset (bytes >= one cluster): allocate the run of new
 * host clusters at once, write the guest data there in one request outside *s->lock, then fill in the
 * L2 entries (data before refcounts before L2 reach the disk; a crash in between only leaks clusters).
 * Called and returns with *s->lock held; *done: guest bytes written (0: use the cluster-by-cluster path). */
static int qcow2_write_new_clusters(Qcow2State *s, uint64_t offset, uint64_t bytes, const uint8_t *p,
                                    uint64_t *done)
{
    *done = 0;
    uint32_t idx = qcow2_l2_index(s, offset);
    /* A new refcount block goes into the first cluster it describes: a run of at most half a block's
     * clusters always fits after it, so the allocator's search converges. */
    uint64_t max = MIN(bytes >> s->cluster_bits, (uint64_t)(s->l2_size - idx));
    max = MIN(max, MAX((uint64_t)s->refcount_block_size / 2, 1));
    void *t;
    int ret = qcow2_l2_for_write(s, offset >> (s->cluster_bits + s->l2_bits), &t);
    if (ret < 0)
        return ret;
    uint64_t k = qcow2_replaceable_run(s, t, idx, offset, max);
    qcow2_cache_put(s->l2_cache, &t);
    if (k == 0)
        return 0;
    uint64_t new_host, len = k << s->cluster_bits;
    ret = qcow2_alloc_clusters(s, k, &new_host);
    if (ret == 0) /* fresh clusters are free only as far as the refcounts tell the truth */
        ret = qcow2_check_data_target(s, new_host, len);
    if (ret < 0)
        return ret;
    Qcow2AllocInFlight me = { offset, offset + len, s->allocs_in_flight };
    s->allocs_in_flight = &me;
    pthread_mutex_unlock(s->lock);
    ret = qcow2_data_pwrite(s, new_host, offset, len, p);
    pthread_mutex_lock(s->lock);
    if (ret == 0)
        ret = qcow2_link_new_clusters(s, offset, k, new_host);
    else if (!s->corrupt)
        qcow2_update_refcount(s, new_host, len, -1); /* nothing points at them: give them back */
    qcow2_alloc_finish(s, &me);
    if (ret == 0)
        *done = len;
    return ret;
}

/* Write with io_lock held (shared or exclusive). */
static int qcow2_write_held(BlockNode *bs, Qcow2State *s, uint64_t offset, uint64_t bytes, const uint8_t *p)
{
    while (bytes > 0) {
        uint64_t host = 0, run = 0;
        pthread_mutex_lock(s->lock);
        int ret = qcow2_in_place_run(s, offset, bytes, &host, &run);
        if (ret == 0 && run)
            ret = qcow2_check_data_target(s, host, run);
        if (ret == 0 && run == 0) {
            uint64_t cstart = offset & ~s->cluster_mask;
            if (qcow2_alloc_busy(s, cstart, cstart + s->cluster_size)) {
                pthread_cond_wait(&s->alloc_done, s->lock); /* then look at the cluster again */
                pthread_mutex_unlock(s->lock);
                continue;
            }
            if (p && offset == cstart && bytes >= s->cluster_size)
                ret = qcow2_write_new_clusters(s, offset, bytes, p, &run);
            if (ret == 0 && run == 0) {
                run = MIN(bytes, s->cluster_size - (offset & s->cluster_mask));
                ret = qcow2_write_allocating(bs, s, offset, run, p);
            }
            host = 0;
        }
        pthread_mutex_unlock(s->lock);
        if (ret == 0 && host)
            ret = qcow2_data_pwrite(s, host, offset, run, p); /* p NULL: zeros */
        if (ret < 0)
            return ret;
        offset += run;
        bytes -= run;
        if (p)
            p += run;
    }
    return 0;
}

int qcow2_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_writable_range(s, offset, bytes);
    if (ret < 0)
        return ret;
    pthread_rwlock_rdlock(&s->io_lock);
    ret = qcow2_write_held(bs, s, (uint64_t)offset, (uint64_t)bytes, buf);
    pthread_rwlock_unlock(&s->io_lock);
    if (ret == 0 && (flags & BDRV_REQ_FUA))
        ret = qcow2_flush(bs);
    return ret;
}

/* ---------------------------------------------------------------- compressed clusters */

/* Under *s->lock: host bytes for a compressed cluster of len bytes (< one cluster), on a 512-byte
 * boundary. Several share one host cluster: each use adds one to its refcount (the first use is the
 * allocation itself), so freeing any of them (qcow2_free_compressed_deferred) takes back exactly one. */
static int qcow2_alloc_compressed(Qcow2State *s, uint64_t len, uint64_t *host)
{
    uint64_t next = s->compressed_next;
    uint64_t room = next ? s->cluster_size - (next & s->cluster_mask) : 0;
    int ret;
    if (next && room >= len) {
        ret = qcow2_update_refcount(s, next & ~s->cluster_mask, s->cluster_size, 1);
    } else {
        ret = qcow2_alloc_clusters(s, 1, &next);
    }
    if (ret < 0)
        return ret;
    *host = next;
    uint64_t end = next + ((len + QCOW2_COMPRESSED_SECTOR - 1) & ~(uint64_t)(QCOW2_COMPRESSED_SECTOR - 1));
    s->compressed_next = (end & s->cluster_mask) ? end : 0;
    return 0;
}

/* Under *s->lock: the compressed bytes (len) written at a new host place and the guest cluster at offset
 * pointed at them, its old contents freed. */
static int qcow2_store_compressed(Qcow2State *s, uint64_t offset, const uint8_t *data, uint64_t len)
{
    uint64_t host;
    int ret = qcow2_alloc_compressed(s, len, &host);
    if (ret == 0)
        ret = qcow2_check_data_target(s, host, len);
    if (ret == 0)
        ret = bdrv_pwrite(s->data_file, (int64_t)host, (int64_t)len, data, 0);
    if (ret < 0) {
        s->compressed_next = 0;
        return ret;
    }
    void *t;
    uint32_t idx;
    if ((ret = qcow2_l2_slot_for_write(s, offset, &t, &idx)) < 0)
        return ret;
    uint64_t old = qcow2_l2_entry(s, t, idx);
    uint64_t sectors = (len + (host & (QCOW2_COMPRESSED_SECTOR - 1)) + QCOW2_COMPRESSED_SECTOR - 1) /
                       QCOW2_COMPRESSED_SECTOR;
    qcow2_l2_set(s, t, idx, host | QCOW2_OFLAG_COMPRESSED | ((sectors - 1) << s->csize_shift), 0);
    qcow2_cache_mark_dirty(s->l2_cache, t);
    qcow2_cache_put(s->l2_cache, &t);
    if (old & QCOW2_OFLAG_COMPRESSED)
        return qcow2_free_compressed_deferred(s, old);
    if (old & QCOW2_L2E_OFFSET_MASK)
        return qcow2_free_deferred(s, old & QCOW2_L2E_OFFSET_MASK, s->cluster_size);
    return 0;
}

int qcow2_write_compressed(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_writable_range(s, offset, bytes);
    if (ret < 0)
        return ret;
    if (s->crypt) /* an encrypted image holds no compressed clusters (qemu refuses them too) */
        return -ENOTSUP;
    /* a whole cluster, or the last one of the disk (its rest then reads as zeros) */
    if (((uint64_t)offset & s->cluster_mask) || bytes <= 0 || (uint64_t)bytes > s->cluster_size ||
        ((uint64_t)bytes < s->cluster_size && (uint64_t)offset + s->cluster_size < s->size))
        return -EINVAL;
    /* a short last cluster is compressed as a whole one ending in zeros */
    uint8_t *in = malloc(s->cluster_size), *out = malloc(s->cluster_size);
    int64_t clen = -ENOMEM;
    if (in && out) {
        memcpy(in, buf, (size_t)bytes);
        memset(in + bytes, 0, s->cluster_size - (uint64_t)bytes);
        clen = qcow2_compress(s->compression_type, in, s->cluster_size, out, s->cluster_size - 1);
    }
    if (clen == -ENOSPC) { /* it does not get smaller: stored as it is */
        free(in);
        free(out);
        return qcow2_write(bs, offset, bytes, buf, 0);
    }
    if (clen >= 0) {
        pthread_rwlock_rdlock(&s->io_lock);
        pthread_mutex_lock(s->lock);
        while (qcow2_alloc_busy(s, (uint64_t)offset, (uint64_t)offset + s->cluster_size))
            pthread_cond_wait(&s->alloc_done, s->lock);
        ret = qcow2_store_compressed(s, (uint64_t)offset, out, (uint64_t)clen);
        pthread_mutex_unlock(s->lock);
        pthread_rwlock_unlock(&s->io_lock);
    } else {
        ret = (int)clen;
    }
    free(in);
    free(out);
    return ret;
}

/* ---------------------------------------------------------------- backing file name, emptying */

/* The header extensions of the header cluster hdr (len bytes, extensions from offset from on) other than
 * the backing format, copied to out; returns the bytes copied, or -EINVAL if they are malformed. */
static int64_t qcow2_kept_extensions(const Qcow2State *s, const uint8_t *hdr, uint64_t len, uint64_t from,
                                     uint8_t *out)
{
    uint64_t pos = from, end = len, n = 0;
    if (s->backing_file_offset > from && s->backing_file_offset < end)
        end = s->backing_file_offset;
    while (pos + 8 <= end) {
        uint32_t type = ld_be32(hdr + pos), elen = ld_be32(hdr + pos + 4);
        if (type == QCOW2_EXT_END)
            return (int64_t)n;
        uint64_t whole = 8 + (uint64_t)align_up(elen, 8);
        if (whole > end - pos)
            return -EINVAL;
        if (type != QCOW2_EXT_BACKING_FORMAT) {
            memcpy(out + n, hdr + pos, whole);
            n += whole;
        }
        pos += whole;
    }
    return (int64_t)n;
}

/* Rewrites the header cluster: the fixed header (s->header_length bytes from s), the other extensions as
 * they were (found after old_header_length bytes on disk), a backing-format extension for format, the end
 * marker and name (none when name is NULL). */
int qcow2_rewrite_header(Qcow2State *s, uint32_t old_header_length, const char *name, const char *format)
{
    size_t name_len = name ? strlen(name) : 0, fmt_len = name && format ? strlen(format) : 0;
    if (name_len > QCOW2_MAX_BACKING_NAME)
        return -ENAMETOOLONG;
    uint8_t *hdr = malloc(s->cluster_size), *out = calloc(1, s->cluster_size);
    int ret = hdr && out ? 0 : -ENOMEM;
    if (ret == 0)
        ret = bdrv_pread(s->meta_file, 0, (int64_t)s->cluster_size, hdr);
    int64_t kept = ret < 0 ? ret
                           : qcow2_kept_extensions(s, hdr, s->cluster_size, old_header_length, out + s->header_length);
    uint64_t pos = kept < 0 ? 0 : s->header_length + (uint64_t)kept;
    if (kept < 0)
        ret = (int)kept;
    else if (pos + 8 + align_up((int64_t)fmt_len, 8) + 8 + name_len > s->cluster_size)
        ret = -ENOSPC; /* the name does not fit in the header cluster */
    if (ret == 0) {
        memcpy(out, hdr, s->header_length);
        if (fmt_len) {
            st_be32(out + pos, QCOW2_EXT_BACKING_FORMAT);
            st_be32(out + pos + 4, (uint32_t)fmt_len);
            memcpy(out + pos + 8, format, fmt_len);
            pos += 8 + (uint64_t)align_up((int64_t)fmt_len, 8);
        }
        pos += 8; /* QCOW2_EXT_END: zeros */
        char *new_name = name ? strdup(name) : NULL, *new_fmt = fmt_len ? strdup(format) : NULL;
        if ((name && !new_name) || (fmt_len && !new_fmt)) {
            free(new_name);
            free(new_fmt);
            ret = -ENOMEM;
        } else {
            if (name_len)
                memcpy(out + pos, name, name_len);
            s->backing_file_offset = name ? pos : 0;
            s->backing_file_size = (uint32_t)name_len;
            free(s->backing_file);
            free(s->backing_format);
            s->backing_file = new_name;
            s->backing_format = new_fmt;
            uint8_t fixed[QCOW2_V3_MIN_HEADER_LEN];
            qcow2_header_serialize(s, fixed);
            memcpy(out, fixed, MIN(sizeof fixed, (size_t)s->header_length));
            ret = bdrv_flush(s->meta_file);
            if (ret == 0)
                ret = qcow2_write_header_bytes(s, 0, (uint32_t)(pos + name_len), out);
            if (ret == 0)
                ret = bdrv_flush(s->meta_file);
        }
    }
    free(hdr);
    free(out);
    return ret;
}

int qcow2_change_backing_file(BlockNode *bs, const char *name, const char *format)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_exclusive_begin(s);
    if (ret < 0)
        return ret;
    ret = qcow2_flush_metadata_locked(s);
    if (ret == 0)
        ret = qcow2_rewrite_header(s, s->header_length, name, format);
    qcow2_exclusive_end(s);
    return ret;
}

int qcow2_make_empty(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_exclusive_begin(s);
    if (ret < 0)
        return ret;
    ret = qcow2_free_tail_locked(s, 0);
    if (ret == 0)
        ret = qcow2_flush_metadata_locked(s);
    qcow2_exclusive_end(s);
    return ret;
}

/* ---------------------------------------------------------------- zeroes and discard */

/* Turn the subclusters of mask of one cluster into zeros (zero_flag) or deallocate them (to backing),
 * freeing the host cluster when nothing of it is used any more or (unmap) when allowed. */
static int qcow2_zero_cluster(Qcow2State *s, uint64_t offset, uint32_t mask, bool unmap, bool to_zero)
{
    void *t;
    uint32_t idx;
    int ret = qcow2_l2_slot_for_write(s, offset, &t, &idx);
    if (ret < 0)
        return ret;
    uint64_t e = qcow2_l2_entry(s, t, idx), bm = qcow2_l2_bitmap(s, t, idx);
    bool compressed = (e & QCOW2_OFLAG_COMPRESSED) != 0;
    uint64_t host = compressed ? 0 : e & QCOW2_L2E_OFFSET_MASK;
    uint64_t new_e, new_bm = 0;
    bool free_host = false;
    if (s->extended_l2) {
        uint32_t alloc = (uint32_t)bm & ~mask;
        uint32_t zero = to_zero ? ((uint32_t)(bm >> 32) | mask) : ((uint32_t)(bm >> 32) & ~mask);
        if (compressed) { /* callers pass whole clusters for compressed entries */
            alloc = 0;
            zero = to_zero ? all_sc(s) : 0;
        }
        free_host = host && alloc == 0 && (unmap || !(e & QCOW2_OFLAG_COPIED));
        new_e = (host && !free_host) ? (e & (QCOW2_L2E_OFFSET_MASK | QCOW2_OFLAG_COPIED)) : 0;
        new_bm = (uint64_t)alloc | (uint64_t)zero << 32;
    } else {
        free_host = host && (unmap || !to_zero || !(e & QCOW2_OFLAG_COPIED));
        new_e = to_zero ? QCOW2_OFLAG_ZERO : 0;
        if (host && !free_host)
            new_e |= host | QCOW2_OFLAG_COPIED;
    }
    qcow2_l2_set(s, t, idx, new_e, new_bm);
    qcow2_cache_mark_dirty(s->l2_cache, t);
    qcow2_cache_put(s->l2_cache, &t);
    if (compressed)
        return qcow2_free_compressed_deferred(s, e);
    return free_host ? qcow2_free_deferred(s, host, s->cluster_size) : 0;
}

/* Whether the cluster at offset is plain unallocated (no L2 table or an empty entry). */
static int qcow2_cluster_is_empty(Qcow2State *s, uint64_t offset, bool *empty)
{
    unsigned span_bits = s->cluster_bits + s->l2_bits;
    uint64_t l1i = offset >> span_bits;
    *empty = true;
    if (l1i >= s->l1_size || !(s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK))
        return 0;
    void *t;
    int ret = qcow2_cache_get(s->l2_cache, s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK, &t);
    if (ret < 0)
        return ret;
    uint32_t idx = qcow2_l2_index(s, offset);
    *empty = qcow2_l2_entry(s, t, idx) == 0 && qcow2_l2_bitmap(s, t, idx) == 0;
    qcow2_cache_put(s->l2_cache, &t);
    return 0;
}

/* Does [offset, offset + bytes) already read as zeros without holding host clusters? */
static bool qcow2_reads_as_zero(BlockNode *bs, Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    bool zero = true;
    pthread_mutex_lock(s->lock);
    while (zero && bytes > 0) {
        uint64_t n = bytes, host, entry;
        int type = qcow2_get_host_offset(s, s->l1_table, s->l1_size, offset, &n, &host, &entry);
        zero = type == QCOW2_SC_ZERO_PLAIN || (type == QCOW2_SC_UNALLOCATED_PLAIN && !bs->backing);
        offset += n;
        bytes -= n;
    }
    pthread_mutex_unlock(s->lock);
    return zero;
}

/* Zero a piece smaller than a subcluster by writing zeros, unless it reads as zeros already. */
static int qcow2_zero_partial(BlockNode *bs, Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    if (qcow2_reads_as_zero(bs, s, offset, bytes))
        return 0;
    return qcow2_write_held(bs, s, offset, bytes, NULL);
}

int qcow2_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_writable_range(s, offset, bytes);
    if (ret < 0)
        return ret;
    if (s->version < 3) /* no zero flag: the core writes zero buffers where zeros are not there yet */
        return qcow2_reads_as_zero(bs, s, (uint64_t)offset, (uint64_t)bytes) ? 0 : -ENOTSUP;
    bool unmap = (flags & BDRV_REQ_MAY_UNMAP) != 0;
    uint64_t g = s->subcluster_size;
    uint64_t start = (uint64_t)offset, end = start + (uint64_t)bytes;
    uint64_t a = MIN((uint64_t)align_up((int64_t)start, (int64_t)g), end);
    uint64_t b = MAX((uint64_t)align_down((int64_t)end, (int64_t)g), a);
    /* A partial subcluster at the end of the disk counts as whole. */
    if (end == s->size && b < end && (end & (g - 1)))
        b = end;
    pthread_rwlock_wrlock(&s->io_lock);
    if (a > start)
        ret = qcow2_zero_partial(bs, s, start, a - start);
    for (uint64_t pos = a; ret == 0 && pos < b;) {
        uint64_t cend = MIN(b, (pos | s->cluster_mask) + 1);
        unsigned first = (unsigned)((pos & s->cluster_mask) >> s->subcluster_bits);
        unsigned last = (unsigned)(((cend - 1) & s->cluster_mask) >> s->subcluster_bits);
        pthread_mutex_lock(s->lock);
        uint64_t probe_bytes = cend - pos, host, entry;
        int type = qcow2_get_host_offset(s, s->l1_table, s->l1_size, pos, &probe_bytes, &host, &entry);
        if (type == QCOW2_SC_ZERO_PLAIN && probe_bytes >= cend - pos) {
            pthread_mutex_unlock(s->lock); /* already a zero cluster */
        } else if (type == QCOW2_SC_COMPRESSED && (first != 0 || cend - pos < MIN(s->cluster_size, s->size - (pos & ~s->cluster_mask)))) {
            pthread_mutex_unlock(s->lock);
            ret = qcow2_write_held(bs, s, pos, cend - pos, NULL);
        } else {
            ret = type < 0 ? type : qcow2_zero_cluster(s, pos, sc_mask(first, last), unmap, true);
            pthread_mutex_unlock(s->lock);
        }
        pos = cend;
    }
    if (ret == 0 && b < end)
        ret = qcow2_zero_partial(bs, s, b, end - b);
    pthread_rwlock_unlock(&s->io_lock);
    if (ret == 0 && (flags & BDRV_REQ_FUA))
        ret = qcow2_flush(bs);
    return ret;
}

int qcow2_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_writable_range(s, offset, bytes);
    if (ret < 0)
        return ret;
    /* Only whole clusters are discarded (a partial cluster at the end of the disk counts as whole). */
    uint64_t start = (uint64_t)align_up(offset, s->cluster_size);
    uint64_t end = (uint64_t)offset + (uint64_t)bytes;
    end = end == s->size ? end : (uint64_t)align_down((int64_t)end, s->cluster_size);
    bool to_zero = s->version >= 3 && bs->backing; /* v3 with a backing file: read zeros afterwards */
    pthread_rwlock_wrlock(&s->io_lock);
    pthread_mutex_lock(s->lock);
    for (uint64_t pos = start; ret == 0 && pos < end; pos = (pos | s->cluster_mask) + 1) {
        bool empty;
        ret = qcow2_cluster_is_empty(s, pos, &empty);
        if (ret == 0 && !(empty && !to_zero))
            ret = qcow2_zero_cluster(s, pos, all_sc(s), true, to_zero);
    }
    if (ret == 0 && s->nb_pending_frees)
        ret = qcow2_flush_metadata_locked(s);
    pthread_mutex_unlock(s->lock);
    pthread_rwlock_unlock(&s->io_lock);
    return ret;
}

/* ---------------------------------------------------------------- truncate */

/* Under *s->lock: every cluster from the cluster-aligned guest offset from to the end of the disk
 * deallocated (shrinking: they are about to fall off the end). */
static int qcow2_free_tail_locked(Qcow2State *s, uint64_t from)
{
    int ret = 0;
    for (uint64_t pos = from; ret == 0 && pos < s->size; pos += s->cluster_size) {
        bool empty;
        ret = qcow2_cluster_is_empty(s, pos, &empty);
        if (ret == 0 && !empty)
            ret = qcow2_zero_cluster(s, pos, all_sc(s), true, false);
    }
    return ret;
}

static int qcow2_tail_is_unallocated(Qcow2State *s, uint64_t from, uint64_t to, bool *unallocated)
{
    *unallocated = true;
    while (from < to) {
        uint64_t n = to - from, host, entry;
        int type = qcow2_get_host_offset(s, s->l1_table, s->l1_size, from, &n, &host, &entry);
        if (type < 0)
            return type;
        if (type != QCOW2_SC_UNALLOCATED_PLAIN) {
            *unallocated = false;
            return 0;
        }
        from += n;
    }
    return 0;
}

/* Grow the L1 table to entries: a copy in new clusters, then one header write switching to it. */
static int qcow2_grow_l1(Qcow2State *s, uint64_t size, uint32_t entries)
{
    uint64_t bytes = (uint64_t)align_up((int64_t)entries * 8, s->cluster_size);
    uint64_t *l1 = calloc(entries, sizeof(uint64_t));
    uint8_t *buf = calloc(1, bytes);
    uint64_t new_off = 0;
    int ret = (l1 && buf) ? 0 : -ENOMEM;
    if (ret == 0)
        ret = qcow2_alloc_clusters(s, bytes >> s->cluster_bits, &new_off);
    bool mapped = false;
    if (ret == 0)
        ret = qcow2_meta_add(s, QCOW2_META_L1, new_off, bytes);
    if (ret == 0) {
        mapped = true;
        memcpy(l1, s->l1_table, (size_t)s->l1_size * 8);
        for (uint32_t i = 0; i < entries; i++)
            st_be64(buf + (size_t)i * 8, l1[i]);
        ret = qcow2_flush_metadata_locked(s);
    }
    if (ret == 0) {
        bdrv_debug_event(s->meta_file, "l1_update");
        ret = bdrv_pwrite(s->meta_file, (int64_t)new_off, (int64_t)bytes, buf, 0);
    }
    if (ret == 0)
        ret = bdrv_flush(s->meta_file);
    uint64_t old_off = s->l1_table_offset, old_bytes = (uint64_t)align_up((int64_t)s->l1_size * 8, s->cluster_size);
    uint32_t old_size = s->l1_size;
    uint64_t old_vsize = s->size;
    if (ret == 0) {
        uint8_t hdr[QCOW2_V3_MIN_HEADER_LEN];
        s->l1_table_offset = new_off;
        s->l1_size = entries;
        s->size = size;
        qcow2_header_serialize(s, hdr);
        ret = qcow2_write_header_bytes(s, 24, 24, hdr); /* size, crypt_method, l1_size, l1_table_offset */
        if (ret == 0)
            ret = bdrv_flush(s->meta_file);
        if (ret < 0) {
            s->l1_table_offset = old_off;
            s->l1_size = old_size;
            s->size = old_vsize;
        }
    }
    free(buf);
    if (ret < 0) {
        if (mapped)
            qcow2_meta_remove(s, QCOW2_META_L1, new_off);
        free(l1);
        return ret;
    }
    qcow2_meta_remove(s, QCOW2_META_L1, old_off);
    free(s->l1_table);
    s->l1_table = l1;
    s->l1_alloc_entries = entries;
    if (old_bytes)
        ret = qcow2_update_refcount(s, old_off, old_bytes, -1);
    return ret;
}

static int qcow2_set_size(Qcow2State *s, uint64_t size)
{
    uint8_t hdr[QCOW2_V3_MIN_HEADER_LEN];
    uint64_t old = s->size;
    s->size = size;
    qcow2_header_serialize(s, hdr);
    int ret = qcow2_write_header_bytes(s, 24, 8, hdr);
    if (ret == 0)
        ret = bdrv_flush(s->meta_file);
    if (ret < 0)
        s->size = old;
    return ret;
}

int qcow2_truncate(BlockNode *bs, int64_t size)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_writable(s);
    if (ret < 0)
        return ret;
    if (size < 0 || (uint64_t)size > QCOW2_MAX_VIRTUAL_SIZE)
        return -EINVAL;
    pthread_rwlock_wrlock(&s->io_lock);
    uint64_t cut = (uint64_t)align_up(size, s->cluster_size); /* first whole cluster past the new end */
    if ((uint64_t)size < s->size && cut != (uint64_t)size) /* the kept cluster's tail reads as zeros if regrown */
        ret = qcow2_write_held(bs, s, (uint64_t)size, MIN(cut, s->size) - (uint64_t)size, NULL);
    pthread_mutex_lock(s->lock);
    uint64_t old_size = s->size;
    uint64_t need = qcow2_size_to_l1(s, (uint64_t)size);
    if (ret < 0) {
        /* nothing changed */
    } else if ((uint64_t)size < s->size) {
        bool unallocated;
        ret = qcow2_free_tail_locked(s, cut);
        if (ret == 0)
            ret = qcow2_tail_is_unallocated(s, cut, s->size, &unallocated);
        if (ret == 0 && !unallocated) {
            log_msg("%s: cannot shrink to %" PRId64 " bytes: data is allocated beyond that size", s->node_name, size);
            ret = -ENOTSUP;
        }
        if (ret == 0)
            ret = qcow2_flush_metadata_locked(s);
        if (ret == 0)
            ret = qcow2_set_size(s, (uint64_t)size);
    } else if (need > s->l1_size) {
        if (need * 8 > QCOW2_MAX_L1_BYTES)
            ret = -EFBIG;
        else
            ret = qcow2_grow_l1(s, (uint64_t)size, (uint32_t)need);
    } else if ((uint64_t)size > s->size) {
        ret = qcow2_set_size(s, (uint64_t)size);
    }
    if (ret == 0)
        s->l1_vm_state_index = (uint32_t)qcow2_size_to_l1(s, s->size);
    pthread_mutex_unlock(s->lock);
    pthread_rwlock_unlock(&s->io_lock);
    /* Space added over a longer backing file must read as zeros, not as the backing file's data. */
    int64_t backing_len = ret == 0 && bs->backing ? bdrv_getlength(bs->backing) : 0;
    if (backing_len > (int64_t)old_size && size > (int64_t)old_size)
        ret = bdrv_pwrite_zeroes(bs, (int64_t)old_size, MIN(size, backing_len) - (int64_t)old_size, 0);
    return ret;
}

/* ---------------------------------------------------------------- flush, open, close */

int qcow2_flush(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    if (!qcow2_is_writer(s))
        return 0;
    if (__atomic_load_n(&s->corrupt, __ATOMIC_RELAXED))
        return -EIO;
    pthread_mutex_lock(s->lock);
    int ret = qcow2_flush_metadata_locked(s);
    pthread_mutex_unlock(s->lock);
    return ret;
}

bool qcow2_has_zero_init(BlockNode *bs)
{
    return bs->backing == NULL;
}

int qcow2_write_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    Qcow2State *s = bs->opaque;
    if (bs->read_only || s->is_snapshot_view)
        return 0;
    if (s->has_data_file) {
        error_set(err, ENOTSUP, "writing to images with an external data file is not supported");
        return -ENOTSUP;
    }
    if (pthread_rwlock_init(&s->io_lock, NULL) != 0) {
        error_set(err, ENOMEM, "cannot create the I/O lock");
        return -ENOMEM;
    }
    if (pthread_cond_init(&s->alloc_done, NULL) != 0) {
        pthread_rwlock_destroy(&s->io_lock);
        error_set(err, ENOMEM, "cannot create the allocation condition variable");
        return -ENOMEM;
    }
    s->allocs_in_flight = NULL;
    s->discard_unmap = opts && opts->discard == DISCARD_UNMAP;
    int ret = qcow2_refcount_init(s);
    if (ret < 0) {
        pthread_rwlock_destroy(&s->io_lock);
        pthread_cond_destroy(&s->alloc_done);
        qcow2_refcount_close(s);
        error_set(err, -ret, "cannot read the refcount table: %s", strerror(-ret));
        return ret;
    }
    ret = qcow2_meta_build(s, err);
    if (ret < 0) {
        pthread_rwlock_destroy(&s->io_lock);
        pthread_cond_destroy(&s->alloc_done);
        qcow2_refcount_close(s);
        return ret;
    }
    s->write_ready = true;
    qcow2_cache_set_write_hook(s->l2_cache, qcow2_l2_write_hook, s);
    qcow2_cache_set_write_hook(s->refcount_cache, qcow2_refblock_write_hook, s);
    qcow2_cache_set_debug_event(s->l2_cache, "l2_update");
    qcow2_cache_set_debug_event(s->refcount_cache, "refblock_update");
    if (opts && opts->check_repair)
        return 0; /* `check -r`: the check counts what the rebuild and the refusal below would hide */
    if (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        log_msg("%s: image was not closed cleanly (dirty bit); rebuilding refcounts", s->node_name);
        pthread_mutex_lock(s->lock);
        ret = qcow2_rebuild_refcounts(s, err);
        if (ret == 0)
            ret = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY);
        if (ret == 0)
            s->dirty = false;
        pthread_mutex_unlock(s->lock);
        if (ret < 0) {
            error_set(err, -ret, "cannot rebuild the refcounts: %s", strerror(-ret));
            return ret;
        }
    }
    /* Refcounts of zero on metadata would hand it out as free space: refuse rather than write. */
    pthread_mutex_lock(s->lock);
    ret = qcow2_meta_check_refcounts(s, err);
    pthread_mutex_unlock(s->lock);
    return ret;
}

void qcow2_write_close(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    if (!s || !qcow2_is_writer(s))
        return;
    pthread_mutex_lock(s->lock);
    if (!s->corrupt) {
        int ret = qcow2_flush_metadata_locked(s);
        if (ret == 0 && s->dirty && (s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
            ret = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY);
            if (ret == 0)
                s->dirty = false;
        }
        if (ret < 0)
            log_msg("%s: writing back metadata at close failed: %s", s->node_name, strerror(-ret));
    }
    pthread_mutex_unlock(s->lock);
    qcow2_refcount_close(s);
    qcow2_meta_free(s);
    pthread_rwlock_destroy(&s->io_lock);
    pthread_cond_destroy(&s->alloc_done);
    s->write_ready = false;
}

int qcow2_exclusive_begin(Qcow2State *s)
{
    int ret = qcow2_writable(s);
    if (ret < 0)
        return ret;
    pthread_rwlock_wrlock(&s->io_lock);
    pthread_mutex_lock(s->lock);
    return 0;
}

void qcow2_exclusive_end(Qcow2State *s)
{
    pthread_mutex_unlock(s->lock);
    pthread_rwlock_unlock(&s->io_lock);
}
