/* SPDX-License-Identifier: MIT */
/*
 * vmdk.h - private state and on-disk constants of the VMDK format driver, shared by the files of
 * drivers/vmdk/ only.  It owns the layout facts of VMware's "Virtual Disk Format 1.1" (sparse header
 * fields and flags, grain directory and table entries, grain markers), the limits that bound memory
 * whatever a header says, the per-node and per-extent state, the parsed descriptor, and the prototypes
 * that connect the driver's parts: the descriptor parser (descriptor.c), hosted sparse extents and the
 * grain lookup (sparse.c), seSparse extents (sesparse.c), the read side (read.c), the write side (write.c), creating images (create.c),
 * and open, delta links, info and the driver table (vmdk.c).  Nothing outside drivers/vmdk/ includes it.
 */
#ifndef IMGFUSE_VMDK_H
#define IMGFUSE_VMDK_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block.h"
#include "util.h"

/* ---------------------------------------------------------------- the on-disk layout */

#define VMDK_SECTOR           512
#define VMDK_MAGIC            0x564d444bu /* "KDMV" read little-endian */
#define VMDK_COWD_MAGIC       0x44574f43u /* "COWD": the ESX sparse format, not supported */
#define VMDK_DESC_SIGNATURE   "# Disk DescriptorFile"
#define VMDK_GD_AT_END        UINT64_MAX  /* stream-optimized: the real header is the footer copy */

/* Sparse header field offsets (512 bytes, little-endian, packed). */
#define SH_MAGIC          0
#define SH_VERSION        4
#define SH_FLAGS          8
#define SH_CAPACITY       12
#define SH_GRAIN_SIZE     20
#define SH_DESC_OFFSET    28
#define SH_DESC_SIZE      36
#define SH_NUM_GTES       44
#define SH_RGD_OFFSET     48
#define SH_GD_OFFSET      56
#define SH_OVERHEAD       64
#define SH_UNCLEAN        72
#define SH_EOL_CHARS      73 /* '\n', ' ', '\r', '\n': detects a text-mode (CR/LF) transfer */
#define SH_COMPRESS_ALGO  77

#define VMDK_FLAG_NL_TEST     (1u << 0)
#define VMDK_FLAG_RGD         (1u << 1)
#define VMDK_FLAG_ZERO_GRAIN  (1u << 2)
#define VMDK_FLAG_COMPRESSED  (1u << 16)
#define VMDK_FLAG_MARKERS     (1u << 17)
#define VMDK_KNOWN_FLAGS      (VMDK_FLAG_NL_TEST | VMDK_FLAG_RGD | VMDK_FLAG_ZERO_GRAIN | VMDK_FLAG_COMPRESSED | \
                               VMDK_FLAG_MARKERS)
#define VMDK_COMPRESS_DEFLATE 1

#define VMDK_GTES_PER_GT   512
#define VMDK_GT_BYTES      (VMDK_GTES_PER_GT * 4)
#define VMDK_GTE_ZEROED    1u
#define VMDK_MARKER_HEADER 12   /* grain marker: uint64 lba, uint32 size, then the compressed bytes */

/* Bounds this driver accepts (VMware writes 128-sector grains and descriptors of a few sectors). */
#define VMDK_MAX_GRAIN_SECTORS  2048u          /* 1 MiB grains */
#define VMDK_MAX_GTS            (1u << 22)     /* a 16 MiB grain directory */
/* Grain directories of all extents together: a descriptor may name one big sparse file many times. */
#define VMDK_MAX_GD_TOTAL       (64u << 20)
#define VMDK_MAX_DESC_BYTES     (64 * 1024)    /* standalone or embedded descriptor */
#define VMDK_MAX_LINE           1024
#define VMDK_MAX_EXTENTS        4096
#define VMDK_GT_CACHE_SLOTS     512            /* 1 MiB of grain tables at most */
#define VMDK_MAX_CAPACITY       (INT64_MAX / VMDK_SECTOR)

/* seSparse extents (ESXi snapshots; all header fields u64, little-endian). */
#define VMDK_SESPARSE_MAGIC          UINT64_C(0xcafebabe)
#define VMDK_SESPARSE_VERSION        UINT64_C(0x200000001)
#define VMDK_SESPARSE_VOLATILE_MAGIC UINT64_C(0xcafecafe)
#define VMDK_SESPARSE_GRAIN_SECTORS  8u             /* 4 KiB grains */
#define VMDK_SESPARSE_GT_SECTORS     64u            /* grain tables of 4096 u64 entries */
#define VMDK_SESPARSE_GTES           4096
#define VMDK_SESPARSE_GT_BYTES       (VMDK_SESPARSE_GTES * 8)
#define VMDK_SESPARSE_GDE_TYPE       UINT64_C(0x10000000) /* top half of an allocated directory entry */
#define VMDK_SESPARSE_MAX_SECTORS    ((UINT64_C(1) << 37) - 1) /* just under 64 TiB */
#define VMDK_SE_CACHE_SLOTS          16             /* 512 KiB of seSparse grain tables at most */

typedef enum { EXT_FLAT, EXT_SPARSE, EXT_ZERO } ExtentType;

typedef struct SeGtSlot {
    int ext;    /* -1: empty */
    int64_t gt;
    uint64_t gte[VMDK_SESPARSE_GTES];
} SeGtSlot;

/* What one grain of a sparse extent is. */
typedef enum { GRAIN_ABSENT, GRAIN_ZERO, GRAIN_DATA, GRAIN_COMPRESSED, GRAIN_BAD } GrainKind;

typedef struct GtSlot {
    int64_t gt_index; /* -1: empty */
    uint32_t gte[VMDK_GTES_PER_GT];
} GtSlot;

typedef struct VmdkExtent {
    char *name;            /* as written in the descriptor (or the image name), for messages */
    ExtentType type;
    char kind[16];         /* the descriptor's type word (FLAT, VMFS, SPARSE, ZERO); "" for a hosted sparse file */
    BlockNode *file;       /* the extent's protocol node; NULL for zero extents */
    bool owns_file;        /* false when it is bs->file itself */
    uint64_t start;        /* guest byte offset of its first byte */
    uint64_t bytes;        /* guest bytes it holds */
    uint64_t flat_offset;  /* flat: byte offset in the file */

    /* sparse extents */
    int64_t file_size;
    uint32_t version, flags;
    uint64_t capacity;      /* sectors */
    uint64_t grain_bytes;
    uint64_t gd_off, rgd_off, meta_end; /* bytes; meta_end: the overhead, nothing of the data lies below */
    uint64_t desc_off, desc_bytes;
    uint32_t n_gts;
    uint32_t *gd;           /* host byte order; entries change only under alloc_lock (atomic accesses) */
    uint32_t *rgd;          /* writable nodes with a redundant directory: its entries */
    int bad_logged;

    /* seSparse extents (EXT_SPARSE with sesparse set; capacity, grain_bytes, n_gts and file_size as above) */
    bool sesparse;
    uint64_t *se_gd;        /* n_gts directory entries */
    uint64_t se_gts_off, se_gts_bytes, se_grains_off; /* bytes */
} VmdkExtent;

typedef struct VmdkState {
    const char *name;
    VmdkExtent *ext;
    int n_ext;
    uint64_t size;

    char create_type[64];
    uint32_t cid, parent_cid;
    bool has_cid, has_parent_cid;
    char *parent_hint;
    bool standalone_descriptor;

    pthread_mutex_t lock;   /* guards the grain-table cache and cache_gen */
    bool lock_ready;
    uint64_t cache_gen;     /* bumped by every grain-table write: a table read before it is not cached */
    pthread_mutex_t alloc_lock; /* writable nodes: one grain or table allocation at a time */
    int cid_changed;        /* the first write gave the disk a new CID */
    bool writable;
    GtSlot *gt_cache;       /* direct-mapped over (extent, gt index) */
    SeGtSlot *se_cache;     /* the same for seSparse extents, allocated when there is one */
    int64_t *gt_cache_ext;  /* extent index of each slot */
} VmdkState;

/* ---------------------------------------------------------------- the descriptor, parsed */

typedef struct DescExtent {
    char access[16];
    uint64_t sectors;
    char type[16];
    char name[VMDK_MAX_LINE];
    uint64_t offset; /* sectors, flat extents */
} DescExtent;

typedef struct Descriptor {
    DescExtent *ext;
    int n_ext;
    char create_type[64];
    char parent_hint[VMDK_MAX_LINE];
    uint32_t cid, parent_cid;
    bool has_cid, has_parent_cid, has_parent_hint;
} Descriptor;

/* ---------------------------------------------------------------- small helpers */

/* A table of bytes at off must lie inside the file, past the header sector. */
static inline bool vmdk_range_in_file(uint64_t off, uint64_t bytes, int64_t file_size)
{
    uint64_t end;
    return off >= VMDK_SECTOR && add_ok_u64(off, bytes, &end) && end <= (uint64_t)file_size;
}

static inline bool vmdk_sectors_to_bytes(uint64_t sectors, uint64_t *out)
{
    return mul_ok_u64(sectors, VMDK_SECTOR, out) && *out <= INT64_MAX;
}

/* The grain-table cache slot of table gt of extent ei. */
static inline size_t vmdk_gt_slot(uint32_t gt, int ei)
{
    return ((size_t)gt * 31 + (size_t)ei) % VMDK_GT_CACHE_SLOTS;
}

/* The extent file's size: it grows under alloc_lock while reads look at it. */
static inline int64_t vmdk_ext_size(const VmdkExtent *e)
{
    return __atomic_load_n(&e->file_size, __ATOMIC_ACQUIRE);
}

/* Bytes of grain g that lie inside the extent's capacity. */
static inline uint64_t vmdk_grain_len(const VmdkExtent *e, uint64_t g)
{
    uint64_t cap = e->capacity * VMDK_SECTOR, start = g * e->grain_bytes;
    return MIN(e->grain_bytes, cap - start);
}

/* ---------------------------------------------------------------- the parts */

/* descriptor.c: parses the text descriptor into d (d->ext malloc'd); the reason (no file name) on failure. */
int vmdk_desc_parse(Descriptor *d, const char *text, size_t len, Error *err);

/* sparse.c: a hosted sparse extent's header, footer and grain directory; what one grain is (through the
 * grain-table cache); inflating a compressed grain. */
int vmdk_grain(VmdkState *s, int ei, uint64_t g, GrainKind *kind, uint64_t *host, bool *whole_gt);
int vmdk_inflate_grain(VmdkExtent *e, uint64_t g, uint64_t host, uint8_t *out);
int vmdk_open_sparse(VmdkExtent *e, uint64_t *gd_budget, Error *err);

/* sesparse.c: a seSparse extent's headers and grain directory; what one of its grains is. */
int vmdk_open_sesparse(VmdkExtent *e, uint64_t *gd_budget, Error *err);
int vmdk_se_grain(VmdkState *s, int ei, uint64_t g, GrainKind *kind, uint64_t *host, bool *whole_gt);

/* read.c: the extent holding a guest offset; the read and block_status slots. */
int vmdk_find_extent(const VmdkState *s, uint64_t offset);
int vmdk_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf);
int vmdk_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);

/* write.c: whether an extent can be written; the write, write_zeroes, discard and flush slots. */
int vmdk_check_writable(VmdkExtent *e, Error *err);
int vmdk_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags);
int vmdk_flush(BlockNode *bs);
int vmdk_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags);
int vmdk_discard(BlockNode *bs, int64_t offset, int64_t bytes);

/* create.c: the create slot and the creation options it takes. */
int vmdk_create(const char *filename, const CreateOpts *opts, Error *err);
extern const BlockOptionSpec vmdk_create_options[];

#endif
