/* SPDX-License-Identifier: MIT */
/*
 * cluster.c - guest-to-host mapping and the read side of the qcow2 driver.  It owns the L1/L2 lookup
 * (standard and extended L2 entries, zero clusters with and without preallocation, unallocated
 * clusters and subclusters, compressed clusters), the classification of L2 entries and the one map
 * (qcow2_map) that block_status answers with and reads go through: bdrv_read_mapped reads host runs
 * (contiguous ones merged, outside the metadata lock), zeros and the backing node, and calls back here
 * only to decompress.  It does not allocate or modify metadata: that is the write path's job.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"

int qcow2_load_l1_part(Qcow2State *s, uint64_t offset, uint32_t entries, uint64_t first, uint64_t last,
                       uint64_t **out)
{
    uint64_t *l1 = calloc(entries ? entries : 1, sizeof(uint64_t));
    if (!l1)
        return -ENOMEM;
    if (entries && first < entries) {
        last = MIN(last, (uint64_t)entries - 1);
        int64_t n = (int64_t)(last - first + 1);
        int ret = bdrv_pread(s->meta_file, (int64_t)(offset + first * 8), n * 8, &l1[first]);
        if (ret < 0) {
            free(l1);
            return ret;
        }
        for (uint64_t i = first; i <= last; i++)
            l1[i] = ld_be64(&l1[i]);
    }
    *out = l1;
    return 0;
}

int qcow2_load_l1(Qcow2State *s, uint64_t offset, uint32_t entries, uint64_t **out)
{
    return qcow2_load_l1_part(s, offset, entries, 0, entries ? entries - 1 : 0, out);
}

Qcow2SubclusterType qcow2_subcluster_type(const Qcow2State *s, uint64_t l2_entry, uint64_t l2_bitmap,
                                          unsigned sc)
{
    if (l2_entry & QCOW2_OFLAG_COMPRESSED)
        return s->has_data_file ? QCOW2_SC_INVALID : QCOW2_SC_COMPRESSED;
    uint64_t host = l2_entry & QCOW2_L2E_OFFSET_MASK;
    if (host & s->cluster_mask)
        return QCOW2_SC_INVALID;
    /* With an external data file, host offset 0 is valid when the COPIED bit marks the entry used. */
    bool has_host = host || (s->has_data_file && (l2_entry & QCOW2_OFLAG_COPIED));
    if (s->extended_l2) {
        uint32_t alloc = (uint32_t)l2_bitmap;
        uint32_t zero = (uint32_t)(l2_bitmap >> 32);
        if (alloc & zero)
            return QCOW2_SC_INVALID;
        if (zero & (1u << sc))
            return has_host ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
        if (alloc & (1u << sc))
            return has_host ? QCOW2_SC_NORMAL : QCOW2_SC_INVALID;
        return has_host ? QCOW2_SC_UNALLOCATED_ALLOC : QCOW2_SC_UNALLOCATED_PLAIN;
    }
    if (s->version >= 3 && (l2_entry & QCOW2_OFLAG_ZERO))
        return has_host ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
    return has_host ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOCATED_PLAIN;
}

/* Extend a run of subclusters of the given type that starts in L2 entry idx at subcluster sc, as long as
 * the type stays the same (and, for NORMAL, host offsets stay contiguous) and the run is shorter than
 * max. Returns the run length in bytes counted from the start of subcluster sc. */
static uint64_t qcow2_extend_run(const Qcow2State *s, const uint8_t *table, uint32_t nentries, uint32_t idx,
                                 unsigned sc, Qcow2SubclusterType type, uint64_t max)
{
    uint64_t entry = qcow2_l2_entry(s, table, idx);
    uint64_t bitmap = qcow2_l2_bitmap(s, table, idx);
    uint64_t next_host = (entry & QCOW2_L2E_OFFSET_MASK) + (uint64_t)(sc + 1) * s->subcluster_size;
    uint64_t run = s->subcluster_size;
    unsigned cur = sc + 1;
    while (run < max) {
        if (cur == s->subclusters_per_cluster) {
            if (++idx == nentries)
                break;
            entry = qcow2_l2_entry(s, table, idx);
            bitmap = qcow2_l2_bitmap(s, table, idx);
            cur = 0;
        }
        if (qcow2_subcluster_type(s, entry, bitmap, cur) != type)
            break;
        if (type == QCOW2_SC_NORMAL) {
            uint64_t host = (entry & QCOW2_L2E_OFFSET_MASK) + (uint64_t)cur * s->subcluster_size;
            if (host != next_host)
                break;
            next_host = host + s->subcluster_size;
        }
        run += s->subcluster_size;
        cur++;
    }
    return run;
}

/* L2 entries one lookup looks at: a run of up to 16 MiB with 64 KiB clusters. */
#define QCOW2_LOOKUP_ENTRIES 256

/* Clamp *bytes to the L2 span of offset and return that span's L1 index. */
static uint64_t qcow2_lookup_start(Qcow2State *s, uint64_t offset, uint64_t *bytes, uint64_t *host,
                                   uint64_t *l2_entry)
{
    unsigned span_bits = s->cluster_bits + s->l2_bits;
    uint64_t l1_index = offset >> span_bits;
    uint64_t span_end = (l1_index + 1) << span_bits;
    *bytes = MIN(*bytes, span_end - offset);
    *host = 0;
    *l2_entry = 0;
    return l1_index;
}

static int qcow2_map_in_l2(Qcow2State *s, uint64_t l1_entry, uint64_t offset, uint64_t *bytes, uint64_t *host,
                           uint64_t *l2_entry);

int qcow2_get_host_offset(Qcow2State *s, const uint64_t *l1, uint32_t l1_size, uint64_t offset,
                          uint64_t *bytes, uint64_t *host, uint64_t *l2_entry)
{
    uint64_t l1_index = qcow2_lookup_start(s, offset, bytes, host, l2_entry);
    return qcow2_map_in_l2(s, l1_index < l1_size ? l1[l1_index] : 0, offset, bytes, host, l2_entry);
}

/* The same through a snapshot L1 table read in slices (ref), or a view's own (ref NULL). */
static int qcow2_get_host_offset_sliced(Qcow2State *s, const Qcow2L1Ref *ref, uint64_t offset, uint64_t *bytes,
                                        uint64_t *host, uint64_t *l2_entry)
{
    uint64_t l1_index = qcow2_lookup_start(s, offset, bytes, host, l2_entry), l1e;
    int ret = ref ? qcow2_snapshot_l1_entry(s, ref->offset, ref->size, l1_index, &l1e)
                  : qcow2_view_l1_entry(s, l1_index, &l1e);
    return ret < 0 ? ret : qcow2_map_in_l2(s, l1e, offset, bytes, host, l2_entry);
}

/* Map offset through the L2 table l1_entry points at; *bytes is already clamped to its span. */
static int qcow2_map_in_l2(Qcow2State *s, uint64_t l1_entry, uint64_t offset, uint64_t *bytes, uint64_t *host,
                           uint64_t *l2_entry)
{
    uint64_t max = *bytes;
    uint64_t l2_offset = l1_entry & QCOW2_L1E_OFFSET_MASK;
    if (!l2_offset)
        return QCOW2_SC_UNALLOCATED_PLAIN;
    if (l2_offset & s->cluster_mask) {
        qcow2_signal_corruption(s, "L2 table offset 0x%" PRIx64 " is not cluster aligned", l2_offset);
        return -EIO;
    }
    /* Only the entries this run can reach are copied out of the cache (at most QCOW2_LOOKUP_ENTRIES;
     * callers loop for longer ranges), so a table that is not in a slot is not expanded into one. */
    uint32_t idx = qcow2_l2_index(s, offset);
    uint64_t in_cluster = offset & s->cluster_mask;
    uint64_t reach = (in_cluster + max + s->cluster_size - 1) >> s->cluster_bits;
    uint32_t nentries = (uint32_t)MIN(MIN(reach, (uint64_t)QCOW2_LOOKUP_ENTRIES), (uint64_t)(s->l2_size - idx));
    uint8_t table[QCOW2_LOOKUP_ENTRIES * 16];
    int ret = qcow2_cache_read_entries(s->l2_cache, l2_offset, s->l2_entry_size, idx, nentries, table);
    if (ret < 0)
        return ret;
    unsigned sc = (unsigned)(in_cluster >> s->subcluster_bits);
    uint64_t entry = qcow2_l2_entry(s, table, 0);
    Qcow2SubclusterType type = qcow2_subcluster_type(s, entry, qcow2_l2_bitmap(s, table, 0), sc);
    uint64_t skip = in_cluster & (s->subcluster_size - 1);
    uint64_t run;
    if (type == QCOW2_SC_COMPRESSED || type == QCOW2_SC_INVALID)
        run = s->cluster_size - in_cluster;
    else
        run = qcow2_extend_run(s, table, nentries, 0, sc, type, max + skip) - skip;
    *bytes = MIN(run, max);
    *l2_entry = entry;
    if (type == QCOW2_SC_NORMAL || type == QCOW2_SC_ZERO_ALLOC || type == QCOW2_SC_UNALLOCATED_ALLOC)
        *host = (entry & QCOW2_L2E_OFFSET_MASK) + in_cluster;
    return (int)type;
}

/* Look up one run under the metadata lock; l1 == NULL means the node's own L1 table (a view's is read in
 * slices). */
static int qcow2_lookup(Qcow2State *s, const Qcow2L1Ref *l1, uint64_t offset, uint64_t *bytes, uint64_t *host,
                        uint64_t *l2_entry)
{
    pthread_mutex_lock(s->lock);
    int type;
    if (l1 && l1->table)
        type = qcow2_get_host_offset(s, l1->table, l1->size, offset, bytes, host, l2_entry);
    else if (l1 || s->is_snapshot_view)
        type = qcow2_get_host_offset_sliced(s, l1, offset, bytes, host, l2_entry);
    else
        type = qcow2_get_host_offset(s, s->l1_table, s->l1_size, offset, bytes, host, l2_entry);
    /* The file driver reads zeros past its end, so a data cluster there would read as silent zeros. */
    bool past_end = type == QCOW2_SC_NORMAL && !s->has_data_file && *host + *bytes > s->host_end;
    /* the first cluster of the run that reaches past the end, not the run's first one */
    uint64_t bad = MAX(*host, s->host_end) & ~s->cluster_mask;
    pthread_mutex_unlock(s->lock);
    if (past_end) {
        uint64_t guest = (offset + (MAX(bad, *host) - *host)) & ~s->cluster_mask;
        qcow2_signal_corruption(s, "data cluster 0x%" PRIx64 " for guest offset 0x%" PRIx64
                                " lies past the end of the image", bad, guest);
        return -EIO;
    }
    if (type == QCOW2_SC_INVALID) {
        qcow2_signal_corruption(s, "invalid L2 entry 0x%016" PRIx64 " for guest offset 0x%" PRIx64,
                                *l2_entry, offset);
        return -EIO;
    }
    return type;
}

void qcow2_invalidate_decompressed(Qcow2State *s)
{
    qcow2_dcache_invalidate(&s->dcache);
}

/* A whole cluster is decompressed straight into the caller's buffer; parts of one come from the cache
 * of recently decompressed clusters, or are decompressed into a buffer the cache may keep. Threads
 * decompress different clusters at the same time (nothing is locked while decompressing). */
static int qcow2_read_compressed(Qcow2State *s, uint64_t l2_entry, uint64_t offset, uint64_t bytes, uint8_t *buf)
{
    uint64_t in_cluster = offset & s->cluster_mask;
    if (in_cluster == 0 && bytes == s->cluster_size)
        return qcow2_read_compressed_cluster(s, l2_entry, buf);
    uint64_t gen;
    if (qcow2_dcache_read(&s->dcache, l2_entry, in_cluster, bytes, buf, &gen))
        return 0;
    uint8_t *cluster = malloc(s->cluster_size);
    if (!cluster)
        return -ENOMEM;
    int ret = qcow2_read_compressed_cluster(s, l2_entry, cluster);
    if (ret == 0) {
        memcpy(buf, cluster + in_cluster, bytes);
        qcow2_dcache_keep(&s->dcache, l2_entry, s->cluster_size, &cluster, gen);
    }
    free(cluster);
    return ret;
}

/* One read through an L1 table: which table (NULL: the node's own), where unallocated ranges read from,
 * and the L2 entry of the run mapped last, which decode needs for a compressed cluster. */
typedef struct Qcow2ReadCtx {
    const Qcow2L1Ref *l1;
    BlockNode *backing;
    uint64_t l2_entry;
    uint64_t host;                 /* encrypted images: the host offset of the run mapped last */
} Qcow2ReadCtx;

/* The map of this node (ctx NULL: its own L1 table), as block_status and bdrv_read_mapped see it. */
static int qcow2_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    Qcow2State *s = bs->opaque;
    Qcow2ReadCtx *c = opaque;
    uint64_t n = (uint64_t)bytes, host, l2_entry;
    int type = qcow2_lookup(s, c ? c->l1 : NULL, (uint64_t)offset, &n, &host, &l2_entry);
    if (type < 0)
        return type;
    if (c)
        c->l2_entry = l2_entry;
    st->bytes = (int64_t)n;
    switch (type) {
    case QCOW2_SC_NORMAL:
        if (s->crypt) { /* ciphertext: decode decrypts it; no host offset is told (as qemu-img map) */
            st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
            if (c)
                c->host = host;
            break;
        }
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)host;
        st->host_file = s->data_file;
        break;
    case QCOW2_SC_COMPRESSED:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_COMPRESSED;
        break;
    case QCOW2_SC_ZERO_PLAIN:
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        break;
    case QCOW2_SC_ZERO_ALLOC: /* reads as zeros (ZERO wins in bdrv_run_kind); where its cluster lies is
                               * told, as qemu-img map does */
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)host;
        st->host_file = s->data_file;
        break;
    case QCOW2_SC_UNALLOCATED_PLAIN:
    case QCOW2_SC_UNALLOCATED_ALLOC:
        st->flags = 0;
        break;
    default:
        return -EIO;
    }
    return 0;
}

/* A compressed run lies within one cluster: the one whose entry the map just left in the context. An
 * encrypted data run starts at the host offset the map left there (offset is the run's start). */
static int qcow2_decode(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st,
                        void *opaque)
{
    Qcow2ReadCtx *c = opaque;
    Qcow2State *s = bs->opaque;
    if (s->crypt && !(st->flags & BDRV_BLOCK_COMPRESSED))
        return qcow2_data_pread(s, c->host, (uint64_t)offset, (uint64_t)bytes, buf);
    if (!(st->flags & BDRV_BLOCK_COMPRESSED))
        return -EIO;
    return qcow2_read_compressed(bs->opaque, c->l2_entry, (uint64_t)offset, (uint64_t)bytes, buf);
}

static BlockNode *qcow2_read_backing(BlockNode *bs, void *opaque)
{
    (void)bs;
    return ((Qcow2ReadCtx *)opaque)->backing;
}

static const BlockReadMap qcow2_read_map = { .map = qcow2_map, .decode = qcow2_decode, .backing = qcow2_read_backing };

int qcow2_read_l1(BlockNode *bs, BlockNode *backing, const Qcow2L1Ref *l1, int64_t offset, int64_t bytes, void *buf)
{
    Qcow2ReadCtx ctx = { .l1 = l1, .backing = backing };
    return bdrv_read_mapped(bs, offset, bytes, buf, &qcow2_read_map, &ctx);
}

static BlockNode *qcow2_backing_of(BlockNode *bs, Qcow2State *s)
{
    return s->is_snapshot_view ? s->backing_node : bs->backing;
}

int qcow2_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    Qcow2State *s = bs->opaque;
    /* On a writable node, discard, zeroing, truncate and snapshot switches hold io_lock exclusively
     * while they free clusters: a read holds it shared, so the clusters it found stay its own until
     * their data is read. Reads and writes still run in parallel. */
    bool shared = s->write_ready && !s->is_snapshot_view;
    if (shared)
        pthread_rwlock_rdlock(&s->io_lock);
    int ret = qcow2_read_l1(bs, qcow2_backing_of(bs, s), NULL, offset, bytes, buf);
    if (shared)
        pthread_rwlock_unlock(&s->io_lock);
    return ret;
}

int qcow2_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    memset(st, 0, sizeof(*st));
    if (offset < 0 || bytes <= 0)
        return -EINVAL;
    return qcow2_map(bs, offset, bytes, st, NULL);
}
