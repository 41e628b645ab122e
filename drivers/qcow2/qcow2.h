/* SPDX-License-Identifier: MIT */
/*
 * qcow2.h - private state and on-disk constants of the qcow2 format driver, shared by the files of
 * drivers/qcow2/ only.  It owns the layout facts of the qcow2 specification (header fields, feature
 * bits, header extension types, L1/L2/refcount entry masks, the snapshot table), the per-node state
 * struct, the accessors of the entries of an L2 table (cluster.c, check.c, write.c), and the prototypes
 * that connect the driver's parts: header parsing and open (qcow2.c), the metadata table cache
 * (cache.c), guest-to-host mapping and the read path (cluster.c), decompression (compress.c), snapshot
 * table parsing and views (snapshot.c), and the write side (refcount.c, alloc.c/write.c, create.c,
 * snapshot-write.c, check.c, overlap.c: where metadata lives, checked before every host write).
 * Nothing outside drivers/qcow2/ includes it.
 */
#ifndef IMGFUSE_QCOW2_H
#define IMGFUSE_QCOW2_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "block.h"
#include "util.h"

/* ---------------------------------------------------------------- header layout */

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_MIN_HEADER_LEN 104
#define QCOW2_COMPRESSION_TYPE_OFFSET 104 /* one byte, present when header_length > 104 */
#define QCOW2_MAX_BACKING_NAME 1023

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MIN_EXTL2_CLUSTER_BITS 14
#define QCOW2_MAX_REFCOUNT_ORDER 6

/* Memory budgets for tables read from untrusted headers. */
#define QCOW2_MAX_L1_BYTES (32 * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES (8 * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOT_TABLE_BYTES (64 * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_VIRTUAL_SIZE (INT64_MAX / 2)

/* incompatible_features */
#define QCOW2_INCOMPAT_DIRTY        (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1fULL
/* compatible_features */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
/* autoclear_features */
#define QCOW2_AUTOCLEAR_BITMAPS       (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)
#define QCOW2_AUTOCLEAR_KNOWN         0x3ULL

/* crypt_method */
#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES  1
#define QCOW2_CRYPT_LUKS 2

/* compression_type */
#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* header extension types */
#define QCOW2_EXT_END            0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE  0x6803f857u
#define QCOW2_EXT_BITMAPS        0x23852875u
#define QCOW2_EXT_CRYPTO         0x0537be77u
#define QCOW2_EXT_DATA_FILE      0x44415441u

#define QCOW2_FEATURE_NAME_LEN 46
#define QCOW2_FEATURE_ENTRY_LEN 48
#define QCOW2_FEAT_TYPE_INCOMPAT 0
#define QCOW2_FEAT_TYPE_COMPAT   1
#define QCOW2_FEAT_TYPE_AUTOCLEAR 2

/* ---------------------------------------------------------------- table entries */

#define QCOW2_OFLAG_COPIED     (1ULL << 63) /* L1/L2: refcount is exactly one */
#define QCOW2_OFLAG_COMPRESSED (1ULL << 62) /* L2: compressed cluster */
#define QCOW2_OFLAG_ZERO       (1ULL << 0)  /* L2 standard descriptor: reads as zeros (v3, no ext L2) */
#define QCOW2_L1E_OFFSET_MASK  0x00fffffffffffe00ULL /* bits 9-55 */
#define QCOW2_L2E_OFFSET_MASK  0x00fffffffffffe00ULL /* bits 9-55 */
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ULL /* bits 9-63 */
#define QCOW2_L1E_RESERVED     0x7f000000000001ffULL
#define QCOW2_L2E_STD_RESERVED 0x3f000000000001feULL

#define QCOW2_EXTL2_SUBCLUSTERS 32
#define QCOW2_COMPRESSED_SECTOR 512

/* Type of one guest subcluster (a whole cluster without extended L2 entries). */
typedef enum Qcow2SubclusterType {
    QCOW2_SC_NORMAL,            /* data at host offset */
    QCOW2_SC_COMPRESSED,        /* compressed cluster */
    QCOW2_SC_ZERO_PLAIN,        /* reads as zeros, no host cluster */
    QCOW2_SC_ZERO_ALLOC,        /* reads as zeros, host cluster preallocated */
    QCOW2_SC_UNALLOCATED_PLAIN, /* falls through to backing, no host cluster */
    QCOW2_SC_UNALLOCATED_ALLOC, /* falls through to backing, host cluster allocated (ext L2) */
    QCOW2_SC_INVALID,           /* corrupt entry */
} Qcow2SubclusterType;

/* ---------------------------------------------------------------- metadata cache (cache.c) */

typedef struct Qcow2Cache Qcow2Cache;

/* Called before a dirty table is written back (e.g. overlap checks); non-zero aborts the write. */
typedef int (*Qcow2CacheWriteHook)(void *opaque, uint64_t offset, const void *table);

/* A bounded LRU cache of cluster-sized metadata tables (L2 tables, refcount blocks), kept in on-disk
 * (big-endian) byte order.  Tables are pinned between get and put and never evicted while pinned.
 * Internally locked; callers still hold the node's lock around multi-step metadata updates. */
Qcow2Cache *qcow2_cache_new(BlockNode *file, uint32_t table_size, int max_tables);
void qcow2_cache_free(Qcow2Cache *c);
/* Pin the table at host offset; read from disk on a miss. 0 or -errno. */
int qcow2_cache_get(Qcow2Cache *c, uint64_t offset, void **table);
/* Copy entries [first, first + count) of the table at offset (entry_size bytes each, on-disk order)
 * into out, for lookups that only read: a table kept run-length encoded is decoded for just those
 * entries instead of being expanded into a slot. 0 or -errno. */
int qcow2_cache_read_entries(Qcow2Cache *c, uint64_t offset, uint32_t entry_size, uint32_t first,
                             uint32_t count, void *out);
/* Pin a table for a freshly allocated cluster without reading it (contents zeroed). */
int qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset, void **table);
void qcow2_cache_put(Qcow2Cache *c, void **table);
void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table);
/* Write back every dirty table (dependencies first), then flush the file if asked. */
int qcow2_cache_write_back(Qcow2Cache *c);
int qcow2_cache_flush(Qcow2Cache *c);
/* Before writing back any table of c, write back (and flush) dep: refcount blocks before L2 tables. */
void qcow2_cache_set_dependency(Qcow2Cache *c, Qcow2Cache *dep);
void qcow2_cache_set_write_hook(Qcow2Cache *c, Qcow2CacheWriteHook hook, void *opaque);
/* Announce event (bdrv_debug_event: "l2_update", "refblock_update") just before each table write. */
void qcow2_cache_set_debug_event(Qcow2Cache *c, const char *event);
/* Drop the table at offset (its cluster was freed); dirty contents are discarded. */
void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset);
/* Drop every unpinned clean table; -EBUSY if a table is pinned or dirty. */
int qcow2_cache_empty(Qcow2Cache *c);
int qcow2_cache_max_tables(const Qcow2Cache *c);
/* Give the cache a compact tier of 'bytes' for clean tables of entry_size-byte entries (8 or 16):
 * evicted tables are kept run-length encoded and expanded on their next use. 0 disables it. */
void qcow2_cache_set_compact_budget(Qcow2Cache *c, uint64_t bytes, uint32_t entry_size);
uint64_t qcow2_cache_compact_used(Qcow2Cache *c);
/* Bytes the cache holds now: its index, the table slots in use and the compact tier. */
uint64_t qcow2_cache_memory(Qcow2Cache *c);
void qcow2_cache_stats(const Qcow2Cache *c, uint64_t *hits, uint64_t *misses);

/* ---------------------------------------------------------------- node state */

typedef struct Qcow2Feature {
    uint8_t type; /* QCOW2_FEAT_TYPE_* */
    uint8_t bit;
    char name[QCOW2_FEATURE_NAME_LEN + 1];
} Qcow2Feature;

/* A header extension this driver does not interpret, kept so a header rewrite preserves it. */
typedef struct Qcow2UnknownExt {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
} Qcow2UnknownExt;

typedef struct Qcow2Snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id_str;
    char *name;
    uint64_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;      /* virtual size at the snapshot (the image's size if not recorded) */
    bool has_disk_size;
    uint64_t icount;         /* instruction count, UINT64_MAX if absent */
    uint32_t extra_data_size;
    uint8_t *extra_data;     /* the raw extra data (known and unknown fields), for rewrites */
} Qcow2Snapshot;

/* Recently decompressed clusters (dcache.c). */
typedef struct Qcow2DcacheSlot {
    uint64_t key;                  /* raw L2 entry of the compressed cluster */
    uint8_t *buf;                  /* cluster_size bytes; NULL = slot empty */
    uint64_t last_use;
} Qcow2DcacheSlot;

typedef struct Qcow2Dcache {
    pthread_mutex_t lock;
    Qcow2DcacheSlot *slots;        /* allocated on first use */
    unsigned nslots;
    uint64_t tick;                 /* use counter for least-recently-used eviction */
    uint64_t gen;                  /* bumped by qcow2_dcache_invalidate */
} Qcow2Dcache;

typedef struct Qcow2State {
    /* --- header fields, as read (host byte order) --- */
    uint32_t version;
    uint32_t header_length;        /* 72 for v2 */
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;                 /* virtual disk size */
    uint32_t crypt_method;
    uint32_t l1_size;              /* entries in the active L1 table */
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint8_t compression_type;      /* QCOW2_COMPRESSION_* */

    /* --- derived geometry --- */
    uint32_t cluster_size;
    uint64_t cluster_mask;         /* cluster_size - 1 */
    bool extended_l2;
    uint32_t l2_entry_size;        /* 8, or 16 with extended L2 entries */
    uint32_t l2_bits;              /* log2 of entries per L2 table */
    uint32_t l2_size;              /* entries per L2 table */
    uint32_t subclusters_per_cluster; /* 1, or 32 with extended L2 entries */
    uint32_t subcluster_bits;
    uint32_t subcluster_size;
    uint32_t l1_vm_state_index;    /* first L1 index past the virtual disk */
    uint32_t csize_shift;          /* compressed descriptor: sector count field position */
    uint64_t csize_mask;
    uint64_t compressed_offset_mask;
    uint32_t refcount_bits;
    uint64_t refcount_max;
    uint32_t refcount_block_bits;  /* log2 of entries per refcount block */
    uint32_t refcount_block_size;  /* entries per refcount block */

    /* --- active L1 table (host byte order) --- */
    uint64_t *l1_table;
    uint32_t l1_alloc_entries;     /* allocated length of l1_table (>= l1_size) */

    /* --- refcounts (write path) --- */
    uint64_t *refcount_table;      /* host byte order */
    uint64_t refcount_table_size;  /* entries */
    uint64_t free_cluster_index;   /* allocation hint: first host cluster that may be free */
    uint64_t free_byte_offset;     /* compressed-write packing hint */

    /* --- snapshots --- */
    Qcow2Snapshot *snapshots;      /* nb_snapshots entries */
    uint64_t snapshots_size;       /* bytes of the on-disk table */

    /* --- header extensions --- */
    char *backing_file;            /* as written in the header, NULL if none */
    char *backing_format;          /* backing_fmt extension, NULL if absent */
    Qcow2Feature *features;        /* feature name table */
    int nb_features;
    Qcow2UnknownExt *unknown_exts;
    int nb_unknown_exts;
    bool has_bitmaps_ext;
    uint32_t nb_bitmaps;
    uint64_t bitmap_directory_size;
    uint64_t bitmap_directory_offset;
    bool has_crypto_ext;
    uint64_t crypto_header_offset;
    uint64_t crypto_header_length;
    struct Qcow2Crypt *crypt;      /* crypt.c: key and cipher of an encrypted image (views borrow it), or NULL */
    char *data_file_name;          /* external data file extension, NULL if absent */

    /* --- external data file --- */
    BlockNode *data_file;          /* node holding guest data: bs->file, or the external data file */
    bool has_data_file;            /* QCOW2_INCOMPAT_DATA_FILE */
    bool data_file_raw;            /* QCOW2_AUTOCLEAR_DATA_FILE_RAW */
    bool owns_data_file;           /* close data_file at close (not when it is bs->file or shared) */
    char *data_file_path;          /* the path actually opened */

    /* --- metadata caches --- */
    Qcow2Cache *l2_cache;
    Qcow2Cache *refcount_cache;    /* created by the write path */
    uint64_t l2_cache_bytes;       /* configured size */
    bool owns_caches;              /* false for snapshot views sharing the parent's caches */

    /* --- state flags --- */
    bool read_only;
    bool corrupt;                  /* corrupt bit set (on disk or found while running) */
    bool dirty;                    /* dirty bit set on disk */
    bool use_lazy_refcounts;
    bool header_dirty;             /* in-memory header differs from disk (write path) */

    /* --- locking: one mutex per node guards all metadata above. A snapshot view points lock at its
     * parent's mutex so metadata changes and lookups stay serialised across views. --- */
    pthread_mutex_t own_lock;
    pthread_mutex_t *lock;

    /* --- snapshot views --- */
    bool is_snapshot_view;
    struct Qcow2State *parent;     /* the state this view was opened from */
    BlockNode *meta_file;          /* node holding metadata: bs->file, or the parent's file */
    BlockNode *backing_node;       /* views: where unallocated ranges are read from (NULL: zeros) */
    char *view_snapshot_name;      /* views: the snapshot shown */
    BlockNode *parent_node;        /* views: the node opened from (referenced while the view lives) */
    /* --- snapshot L1 tables are never loaded whole for a view: their entries are read in slices
     * through the image's slice cache (snapshot.c), whose size is fixed whatever the tables' sizes. --- */
    uint64_t view_l1_offset;       /* views: where the snapshot's L1 table is */
    char *view_snapshot_id;        /* views: the snapshot's id, to find its table again after a commit */
    uint64_t view_generation;      /* views: the parent's snapshot_generation view_l1_offset belongs to */
    uint64_t snapshot_generation;  /* image: bumped whenever the snapshot table is rewritten */
    struct Qcow2L1Slices *l1_slices; /* image: slices of snapshot L1 tables (views, vmstate), or NULL */

    /* --- decompression: recently decompressed clusters, and one-time error logging --- */
    Qcow2Dcache dcache;
    int corruption_logged;         /* set once a corrupt structure was reported (atomic) */
    int decompress_logged;

    char *node_name;               /* for messages: the image's file name */

    /* --- write path (refcount.c, write.c, check.c, snapshot-write.c) --- */
    bool write_ready;              /* qcow2_write_open succeeded: the fields below are live */
    pthread_rwlock_t io_lock;      /* shared by writes; exclusive for discard, zeroing, truncate, snapshots */
    struct Qcow2FreeRange *pending_frees; /* decrements held back until the L2/L1 updates are on disk */
    size_t nb_pending_frees, cap_pending_frees;
    bool first_write_done;         /* autoclear bits cleared and (lazy refcounts) dirty bit set */
    bool discard_unmap;            /* --discard=unmap: punch holes for freed clusters */
    uint64_t host_end;             /* end of the image file as far as metadata may point (grows) */
    uint64_t refcount_table_used;  /* entries up to the last non-zero one (overlap checks stop there) */
    bool cow_unflushed;            /* copy-on-write data not yet flushed: flush before tables are written */
    struct Qcow2AllocInFlight *allocs_in_flight; /* guest clusters whose new data is being written unlocked */
    pthread_cond_t alloc_done;     /* broadcast (with *lock) when an entry leaves allocs_in_flight */
    struct Qcow2MetaMap *meta;     /* where metadata lives in the file (overlap.c); writer only */
    uint64_t compressed_next;      /* host offset where the next compressed cluster may go inside the host
                                    * cluster the last one used (0: start a new host cluster) */
} Qcow2State;

/* ---------------------------------------------------------------- L2 entries in a table */

/* The index of guest offset's entry in its L2 table. */
static inline uint32_t qcow2_l2_index(const Qcow2State *s, uint64_t offset)
{
    return (uint32_t)((offset >> s->cluster_bits) & (s->l2_size - 1));
}

/* Entry i of an L2 table (its first 8 bytes with extended L2 entries). */
static inline uint64_t qcow2_l2_entry(const Qcow2State *s, const void *table, uint32_t i)
{
    return ld_be64((const uint8_t *)table + (size_t)i * s->l2_entry_size);
}

/* The subcluster bitmap of entry i (extended L2 entries only, else 0). */
static inline uint64_t qcow2_l2_bitmap(const Qcow2State *s, const void *table, uint32_t i)
{
    return s->extended_l2 ? ld_be64((const uint8_t *)table + (size_t)i * s->l2_entry_size + 8) : 0;
}

/* Stores entry i (and its bitmap, with extended L2 entries). */
static inline void qcow2_l2_set(const Qcow2State *s, void *table, uint32_t i, uint64_t entry, uint64_t bitmap)
{
    st_be64((uint8_t *)table + (size_t)i * s->l2_entry_size, entry);
    if (s->extended_l2)
        st_be64((uint8_t *)table + (size_t)i * s->l2_entry_size + 8, bitmap);
}

/* ---------------------------------------------------------------- qcow2.c */

extern const BlockDriver bdrv_qcow2;

/* Parse and validate a header from the first bytes of an image (len bytes, normally one cluster or
 * more). Fills the header fields, geometry and header extensions of s; no I/O. file_size bounds table
 * offsets (-1 = unknown). On failure fills err ("reason" only, the caller adds the file name). */
int qcow2_parse_header(Qcow2State *s, const uint8_t *buf, size_t len, int64_t file_size, Error *err);
/* Free what qcow2_parse_header allocated. */
void qcow2_free_header(Qcow2State *s);
/* Comma-separated names of the given feature bits of a type ("dirty, corrupt, bit 9"). */
void qcow2_feature_names(const Qcow2State *s, int type, uint64_t bits, char *out, size_t outlen);
/* Entries needed in an L1 table for a virtual size. */
uint64_t qcow2_size_to_l1(const Qcow2State *s, uint64_t size);
/* Log a corruption (once per node) and mark the in-memory state corrupt. */
void qcow2_signal_corruption(Qcow2State *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same from a va_list, with tail appended to the logged line. */
void qcow2_vsignal_corruption(Qcow2State *s, const char *tail, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* ---------------------------------------------------------------- cluster.c */

/* Classify an L2 entry (and its bitmap with extended L2) for subcluster sc. */
Qcow2SubclusterType qcow2_subcluster_type(const Qcow2State *s, uint64_t l2_entry, uint64_t l2_bitmap,
                                          unsigned sc);
/* Map [offset, offset + *bytes) of the guest disk through the L1 table l1 (l1_size entries): returns
 * the type of the first subcluster, shortens *bytes to the run of the same type (and, for NORMAL, of
 * contiguous host offsets), and sets *host (NORMAL/ZERO_ALLOC: host offset of 'offset') and *l2_entry
 * (the raw entry, for compressed clusters). Caller holds *s->lock. Negative errno on I/O error. */
int qcow2_get_host_offset(Qcow2State *s, const uint64_t *l1, uint32_t l1_size, uint64_t offset,
                          uint64_t *bytes, uint64_t *host, uint64_t *l2_entry);
/* Where lookups find L1 entries: a table in memory, or (table NULL) a snapshot's table in the image file
 * at offset, read in slices through the image's slice cache. */
typedef struct Qcow2L1Ref {
    const uint64_t *table;
    uint64_t offset;
    uint32_t size;
} Qcow2L1Ref;
/* Read guest data of bs through the L1 table l1 (NULL: the node's own, a view's read in slices) with
 * bdrv_read_mapped; unallocated ranges come from backing (zeros if NULL). */
int qcow2_read_l1(BlockNode *bs, BlockNode *backing, const Qcow2L1Ref *l1, int64_t offset, int64_t bytes, void *buf);
int qcow2_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf);
int qcow2_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);
/* Read one L1 table from the image into host byte order (allocates *out). */
int qcow2_load_l1(Qcow2State *s, uint64_t offset, uint32_t entries, uint64_t **out);
/* Same, but only entries [first, last] are read; the rest of the table is zero. */
int qcow2_load_l1_part(Qcow2State *s, uint64_t offset, uint32_t entries, uint64_t first, uint64_t last,
                       uint64_t **out);

/* ---------------------------------------------------------------- compress.c */

/* Decompress src (compressed descriptor bytes) into exactly dst_len bytes. -EIO on a corrupt stream. */
int qcow2_decompress(uint8_t compression_type, const void *src, size_t src_len, void *dst, size_t dst_len);
/* Compress one cluster; returns the compressed length, -ENOSPC if it would not be smaller than
 * dst_len, -EIO on failure. */
int64_t qcow2_compress(uint8_t compression_type, const void *src, size_t src_len, void *dst, size_t dst_len);
/* Forget the cached decompressed clusters (call when a compressed cluster is freed or rewritten). */
void qcow2_invalidate_decompressed(Qcow2State *s);
void qcow2_dcache_init(Qcow2Dcache *c);
void qcow2_dcache_destroy(Qcow2Dcache *c);
/* Copy bytes at offset of the cluster keyed key into dst if it is cached; *gen receives the cache's
 * generation, to be passed to qcow2_dcache_keep after a miss. */
bool qcow2_dcache_read(Qcow2Dcache *c, uint64_t key, uint64_t offset, uint64_t bytes, void *dst, uint64_t *gen);
/* Offer the decompressed cluster *buf (malloc'd, cluster_size bytes). The cache may take it; *buf is
 * then replaced by the buffer to free instead (an evicted one, or NULL). */
void qcow2_dcache_keep(Qcow2Dcache *c, uint64_t key, uint32_t cluster_size, uint8_t **buf, uint64_t gen);
void qcow2_dcache_invalidate(Qcow2Dcache *c);
/* Bytes of decompressed clusters held (each cluster_size bytes). */
uint64_t qcow2_dcache_memory(Qcow2Dcache *c, uint32_t cluster_size);
/* Read and decompress the compressed cluster described by l2_entry into out (cluster_size bytes). */
int qcow2_read_compressed_cluster(Qcow2State *s, uint64_t l2_entry, uint8_t *out);

/* ---------------------------------------------------------------- snapshot.c */

/* Parse the snapshot table of s from the image (fills s->snapshots). */
int qcow2_read_snapshots(Qcow2State *s, Error *err);
void qcow2_free_snapshots(Qcow2State *s);
/* Index of the snapshot whose id or name matches, -1 if none (id first, then name). */
int qcow2_find_snapshot(const Qcow2State *s, const char *id_or_name);
int qcow2_snapshot_list(BlockNode *bs, SnapshotInfo **list);
BlockNode *qcow2_snapshot_open(BlockNode *bs, const char *id, Error *err);
int qcow2_vmstate_read(BlockNode *bs, const char *id, int64_t offset, int64_t bytes, void *buf);
/* Guest offset at which the vmstate of a disk of the given size starts. */
uint64_t qcow2_vm_state_offset(const Qcow2State *s, uint64_t disk_size);
/* Snapshot L1 slice cache, a fixed QCOW2_L1_SLICE_SLOTS slices of QCOW2_L1_SLICE_ENTRIES entries per image
 * (256 KiB), shared by all its views and vmstate reads. Entry index of the L1 table of l1_size entries at
 * l1_offset of image img (0 past the table), or -errno; caller holds *img->lock. */
#define QCOW2_L1_SLICE_ENTRIES 512
#define QCOW2_L1_SLICE_SLOTS 64
int qcow2_snapshot_l1_entry(Qcow2State *img, uint64_t l1_offset, uint32_t l1_size, uint64_t index,
                            uint64_t *entry);
/* The same for a view's own snapshot table (found again by id after the table moved). */
int qcow2_view_l1_entry(Qcow2State *v, uint64_t index, uint64_t *entry);
/* The snapshot table was rewritten (L1 tables moved): drop every slice. Caller holds *s->lock. */
void qcow2_l1_slices_invalidate(Qcow2State *s);
void qcow2_l1_slices_free(Qcow2State *s);
uint64_t qcow2_l1_slices_memory(const Qcow2State *s);
/* Bytes the parsed snapshot table holds (entries, names, extra data). Caller holds *s->lock. */
uint64_t qcow2_snapshots_memory(const Qcow2State *s);

/* ---------------------------------------------------------------- write side (other files) */

/* A run of host clusters whose refcounts drop by one once the metadata no longer pointing at them is
 * on disk (refcount.c). */
typedef struct Qcow2FreeRange {
    uint64_t offset;
    uint64_t bytes;
} Qcow2FreeRange;

/* refcount.c -- callers hold *s->lock. */
uint64_t qcow2_refblock_get(const Qcow2State *s, const uint8_t *blk, uint64_t i);
void qcow2_refblock_set(const Qcow2State *s, uint8_t *blk, uint64_t i, uint64_t v);
/* The fixed header fields of s, in on-disk order, into buf (QCOW2_V3_MIN_HEADER_LEN bytes). */
void qcow2_header_serialize(const Qcow2State *s, uint8_t *buf);
int qcow2_refcount_init(Qcow2State *s);
/* Recompute refcount_table_used after the in-memory refcount table changed wholesale. */
void qcow2_note_reftable_used(Qcow2State *s);
void qcow2_refcount_close(Qcow2State *s);
int qcow2_get_refcount(Qcow2State *s, uint64_t cluster_index, uint64_t *refcount);
/* Add addend (+1/-1) to the refcount of every cluster touching [offset, offset + bytes). */
int qcow2_update_refcount(Qcow2State *s, uint64_t offset, uint64_t bytes, int addend);
/* Allocate n contiguous free clusters (refcount set to 1); host offset in *offset. */
int qcow2_alloc_clusters(Qcow2State *s, uint64_t n, uint64_t *offset);
/* Queue a decrement for after the next metadata write-back. */
int qcow2_free_deferred(Qcow2State *s, uint64_t offset, uint64_t bytes);
/* Queue the decrement of the host clusters a compressed L2 entry occupies. */
int qcow2_free_compressed_deferred(Qcow2State *s, uint64_t l2_entry);
/* Write back refcount blocks and L2 tables in a safe order, flush, then apply queued decrements. */
int qcow2_flush_metadata_locked(Qcow2State *s);
/* Rewrite bytes [offset, offset + len) of the header from buf (which holds the header from byte 0). */
int qcow2_write_header_bytes(Qcow2State *s, uint32_t offset, uint32_t len, const uint8_t *buf);
/* Set or clear incompatible feature bits on disk (v3), flushing around the update. */
int qcow2_update_incompat(Qcow2State *s, uint64_t set, uint64_t clear);

/* write.c */
int qcow2_write_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err);
void qcow2_write_close(BlockNode *bs);
int qcow2_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags);
int qcow2_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags);
int qcow2_write_compressed(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf);
int qcow2_change_backing_file(BlockNode *bs, const char *name, const char *format);
int qcow2_make_empty(BlockNode *bs);
int qcow2_discard(BlockNode *bs, int64_t offset, int64_t bytes);
int qcow2_truncate(BlockNode *bs, int64_t size);
int qcow2_flush(BlockNode *bs);
bool qcow2_has_zero_init(BlockNode *bs);
/* Stop all writes (io_lock exclusive) and take *s->lock, after the first-write preparations; for
 * operations that rewrite metadata wholesale (snapshots). 0 or -errno (nothing held on error). */
int qcow2_exclusive_begin(Qcow2State *s);
void qcow2_exclusive_end(Qcow2State *s);
/* write.c: the header cluster rewritten from s (see there); caller holds the node exclusively. */
int qcow2_rewrite_header(Qcow2State *s, uint32_t old_header_length, const char *name, const char *format);
/* amend.c: the amend slot (compat, lazy_refcounts). */
int qcow2_amend(BlockNode *bs, const char *options, Error *err);
/* Mark the image corrupt on disk, switch the node to read-only and log one line; returns -EIO. */
int qcow2_mark_corrupt(Qcow2State *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* crypt.c: encrypted images (crypt_method 1 AES, 2 LUKS). qcow2_crypt_open checks the header pointer and
 * unlocks the key (0 with s->crypt NULL for a plain image); qcow2_data_pread/pwrite move guest data
 * between a buffer and the data file at host, decrypting/encrypting it when the image is encrypted (whole
 * 512-byte sectors then; guest is the guest offset of host); pwrite's buf NULL writes zeros. */
int qcow2_crypt_check_header(const Qcow2State *s, Error *err); /* header fields only (parse time) */
int qcow2_crypt_open(BlockNode *bs, Qcow2State *s, const BlockOpenOpts *opts, int64_t file_size, Error *err);
void qcow2_crypt_close(Qcow2State *s);
int qcow2_data_pread(Qcow2State *s, uint64_t host, uint64_t guest, uint64_t bytes, void *buf);
int qcow2_data_pwrite(Qcow2State *s, uint64_t host, uint64_t guest, uint64_t bytes, const void *buf);
void qcow2_crypt_info(const Qcow2State *s, InfoList *info);
/* qemu-img's "encrypt" object of the format-specific data ("encrypt.*" items); nothing when not encrypted. */
void qcow2_crypt_format_specific(const Qcow2State *s, InfoList *data);

/* create.c */
int qcow2_create(const char *filename, const CreateOpts *opts, Error *err);
extern const BlockOptionSpec qcow2_create_options[];

/* check.c: rebuild every refcount from the L1/L2 tables of the active state and all snapshots and commit
 * a new metadata generation (fresh clusters, then one header write). The new active L1 (l1, l1_size
 * entries, virtual size) and snapshot list replace the current ones; a snapshot with new_l1 != NULL gets
 * that L1 content written to fresh clusters. Caller holds io_lock exclusively and *s->lock. */
typedef struct Qcow2CommitSnapshot {
    Qcow2Snapshot sn;              /* the entry as it will be written (l1_table_offset set on commit) */
    const uint64_t *new_l1;        /* host byte order, sn.l1_size entries; NULL = keep sn.l1_table_offset */
} Qcow2CommitSnapshot;
int qcow2_commit_generation(Qcow2State *s, const uint64_t *l1, uint32_t l1_size, uint64_t size,
                            const Qcow2CommitSnapshot *snaps, uint32_t nb_snaps, Error *err);
/* Recompute every refcount of the current state (dirty bit, lazy refcounts) and commit it. */
int qcow2_rebuild_refcounts(Qcow2State *s, Error *err);
/* The check slot: refcounts against the tables; fix rebuilds them all (qcow2_rebuild_refcounts). */
int qcow2_check(BlockNode *bs, BlockCheckResult *res, int fix);

/* overlap.c -- the metadata map of a writable node and the overlap checks on it (callers hold *s->lock
 * once the node is live). Kinds name what a host write carries and what it would hit. */
typedef struct Qcow2MetaMap Qcow2MetaMap;
typedef enum Qcow2MetaKind {
    QCOW2_META_DATA,      /* guest data: may overlap no metadata */
    QCOW2_META_HEADER,
    QCOW2_META_L1,
    QCOW2_META_REFTABLE,
    QCOW2_META_REFBLOCK,
    QCOW2_META_L2,
    QCOW2_META_SNAPTABLE,
    QCOW2_META_SNAP_L1,
    QCOW2_META_CRYPTO,    /* the LUKS header of an encrypted image (crypt.c) */
    QCOW2_META_NEW,       /* a new metadata generation (check.c): may overlap nothing */
} Qcow2MetaKind;
const char *qcow2_meta_kind_name(Qcow2MetaKind kind);
/* Map every metadata structure of s (header, L1, refcount table and blocks, active L2 tables, snapshot
 * table, snapshot L1 tables and their L2 tables) into s->meta; two structures overlapping, or too many
 * to map, fail with a one-line reason in err. */
int qcow2_meta_build(Qcow2State *s, Error *err);
/* Same, after metadata was replaced wholesale; a failure marks the image corrupt (-EIO). */
int qcow2_meta_rebuild(Qcow2State *s);
void qcow2_meta_free(Qcow2State *s);
uint64_t qcow2_meta_memory(const Qcow2State *s);
/* Every mapped metadata cluster has a non-zero refcount; else a one-line reason in err. */
int qcow2_meta_check_refcounts(Qcow2State *s, Error *err);
/* Before a host write of [offset, offset + bytes) carrying 'what': 0, or -EIO after refusing it (one
 * line, corrupt bit, node read-only) when it touches metadata other than the structure itself. */
int qcow2_meta_check_write(Qcow2State *s, Qcow2MetaKind what, uint64_t offset, uint64_t bytes);
/* Register newly placed metadata; overlapping what is mapped refuses like qcow2_meta_check_write. */
int qcow2_meta_add(Qcow2State *s, Qcow2MetaKind kind, uint64_t offset, uint64_t bytes);
/* Forget the structure of that kind starting at offset (it was retired). */
void qcow2_meta_remove(Qcow2State *s, Qcow2MetaKind kind, uint64_t offset);
/* The active L1 stopped naming the L2 table at offset: forget it unless a snapshot names it. */
void qcow2_meta_retire_l2(Qcow2State *s, uint64_t offset);

/* snapshot-write.c */
int qcow2_snapshot_create(BlockNode *bs, const char *name, Error *err);
int qcow2_snapshot_delete(BlockNode *bs, const char *id_or_name, Error *err);
int qcow2_snapshot_goto(BlockNode *bs, const char *id_or_name, Error *err);

#endif
