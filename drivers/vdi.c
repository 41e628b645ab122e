/* SPDX-License-Identifier: MIT */
/*
 * vdi.c - the VirtualBox VDI format driver.  It owns the VDI layout: the pre-header (a text line, the
 * signature 0xbeda107f and the version) and the version 1.1 header, validated field by field against the
 * file size before anything is trusted; the block map (one little-endian uint32 per guest block: a host
 * block index, 0xffffffff for "not allocated" and 0xfffffffe for "reads as zeros"), held in memory; reads
 * and block status with host offsets, so the front end can seek and splice as for qcow2; and, on writable
 * nodes, in-place writes, block allocation in the data area, write-zeroes and discard.  Dynamic (type 1),
 * fixed (type 2) and differencing (type 4) images are supported; undo images are refused.  A differencing
 * image names its parent by UUID only (uuidLinkage = the parent's uuidCreate): the driver tells the core
 * the identity and checks candidates' headers (backing_matches); the core searches the .vdi files.  Its
 * unallocated blocks read from the parent, and a write to one copies the parent's block in first.  The
 * first write of a session gives the image a new uuidModify, which children check against their
 * uuidParentModify.  The block map is the only metadata besides the header and is written through at
 * once, so the driver keeps nothing to write back at flush (the core flushes the file).  It also creates
 * dynamic, static and differencing images (`imgfuse create -f vdi`).  It knows nothing of FUSE or of
 * other formats.
 */
#include "block.h"
#include "layouts.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* ---------------------------------------------------------------- the on-disk layout */

#define VDI_SIGNATURE        0xbeda107fu
#define VDI_SIGNATURE_OFFSET 0x40
#define VDI_VERSION_OFFSET   0x44
#define VDI_HEADER_OFFSET    0x48   /* the header proper starts after the pre-header */
#define VDI_VERSION_1_1      0x00010001u
#define VDI_HEADER_MIN_SIZE  0x180  /* the v1.1 fields this driver reads (VirtualBox also writes 0x190) */
#define VDI_HEADER_READ      512    /* pre-header plus the largest header read */

/* Field offsets from the start of the file. */
#define VDI_OFF_HEADER_SIZE      0x48
#define VDI_OFF_IMAGE_TYPE       0x4c
#define VDI_OFF_IMAGE_FLAGS      0x50
#define VDI_OFF_COMMENT          0x54
#define VDI_COMMENT_LEN          256
#define VDI_OFF_BMAP             0x154
#define VDI_OFF_DATA             0x158
#define VDI_OFF_CYLINDERS        0x15c
#define VDI_OFF_HEADS            0x160
#define VDI_OFF_SECTORS          0x164
#define VDI_OFF_SECTOR_SIZE      0x168
#define VDI_OFF_DISK_SIZE        0x170
#define VDI_OFF_BLOCK_SIZE       0x178
#define VDI_OFF_BLOCK_EXTRA      0x17c
#define VDI_OFF_BLOCKS_IN_IMAGE  0x180
#define VDI_OFF_BLOCKS_ALLOCATED 0x184
#define VDI_OFF_UUID_IMAGE       0x188
#define VDI_OFF_UUID_LAST_SNAP   0x198  /* uuidModify: new on every session that writes */
#define VDI_OFF_UUID_LINK        0x1a8
#define VDI_OFF_UUID_PARENT      0x1b8  /* uuidParentModify: the parent's uuidModify when this image was made */
#define VDI_HEADER_SIZE_NEW      0x190  /* the header size of images this driver creates (VirtualBox's) */
#define VDI_BMAP_OFFSET_NEW      VDI_HEADER_BYTES
#define VDI_PREHEADER_TEXT       "<<< Oracle VM VirtualBox Disk Image >>>\n"

enum { VDI_TYPE_DYNAMIC = 1, VDI_TYPE_STATIC = 2, VDI_TYPE_UNDO = 3, VDI_TYPE_DIFF = 4 };

#define VDI_ENTRY_UNALLOCATED 0xffffffffu
#define VDI_ENTRY_ZERO        0xfffffffeu

#define VDI_SECTOR_SIZE  512
#define VDI_BLOCK_SIZE   (1u << 20)
/* The block map is held in memory (4 bytes per block, plus a bit per block on writable nodes): 2^24
 * blocks of 1 MiB are a 16 TiB disk and a 64 MiB map. */
#define VDI_MAX_BLOCKS   (1u << 24)
/* Blocks unmapped before the file is flushed and their host blocks become reusable. */
#define VDI_UNMAP_BATCH  256

/* What one guest block is. */
typedef enum { VDI_UNALLOCATED, VDI_ZERO, VDI_DATA, VDI_BAD } VdiKind;

typedef struct VdiState {
    const char *name;            /* bs->filename, for messages */
    BlockNode *file;

    /* header */
    uint32_t header_size, image_type, image_flags;
    uint32_t bmap_offset, data_offset;
    uint32_t cylinders, heads, sectors;
    uint64_t disk_size;
    uint32_t block_size, block_shift;
    uint32_t blocks_in_image, blocks_allocated_header;
    uint8_t uuid_image[16], uuid_last_snap[16], uuid_link[16], uuid_parent[16];
    char comment[VDI_COMMENT_LEN + 1]; /* printable ASCII only: the bytes are untrusted */

    /* the block map, host byte order; guarded by lock */
    pthread_mutex_t lock;
    uint32_t *bmap;
    uint32_t blocks_allocated;   /* entries holding a host block index */
    uint64_t host_limit;         /* data at or past this file offset is not in the file */
    int bad_entry_logged;

    /* writable nodes only */
    bool writable;
    BlockNode *self;             /* the node: its backing child (a differencing image's parent) is read on copy-up */
    uint8_t *cow_buf;            /* a block's bytes on copy-up (differencing images), under alloc_lock */
    int modified;                /* uuidModify already renewed in this session (under alloc_lock to set) */
    uint64_t *host_used;         /* bit per host block index: referenced by the map (or being filled) */
    uint32_t free_hint;          /* no free host index below this one */
    pthread_mutex_t alloc_lock;  /* one allocation at a time: no block is allocated twice */
    pthread_rwlock_t io_lock;    /* shared by reads and writes, exclusive while blocks are unmapped */
} VdiState;

/* ---------------------------------------------------------------- probe */

static int vdi_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < VDI_SIGNATURE_OFFSET + 4 || ld_le32(buf + VDI_SIGNATURE_OFFSET) != VDI_SIGNATURE)
        return 0;
    return 100;
}

/* ---------------------------------------------------------------- header */

static const char *vdi_type_name(uint32_t type)
{
    switch (type) {
    case VDI_TYPE_DYNAMIC: return "dynamic";
    case VDI_TYPE_STATIC: return "static";
    case VDI_TYPE_UNDO: return "undo";
    case VDI_TYPE_DIFF: return "differencing";
    default: return "unknown";
    }
}

static bool vdi_uuid_is_null(const uint8_t *uuid)
{
    for (int i = 0; i < 16; i++)
        if (uuid[i])
            return false;
    return true;
}

/* VirtualBox stores UUIDs with the first three fields little-endian (the GUID layout). */
static void vdi_format_uuid(const uint8_t *u, char *out, size_t len)
{
    snprintf(out, len, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[3], u[2], u[1],
             u[0], u[5], u[4], u[7], u[6], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

static void vdi_copy_comment(VdiState *s, const uint8_t *p)
{
    size_t n = strnlen((const char *)p, VDI_COMMENT_LEN);
    for (size_t i = 0; i < n; i++)
        s->comment[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    s->comment[n] = '\0';
}

static void vdi_parse_fields(VdiState *s, const uint8_t *h)
{
    s->header_size = ld_le32(h + VDI_OFF_HEADER_SIZE);
    s->image_type = ld_le32(h + VDI_OFF_IMAGE_TYPE);
    s->image_flags = ld_le32(h + VDI_OFF_IMAGE_FLAGS);
    vdi_copy_comment(s, h + VDI_OFF_COMMENT);
    s->bmap_offset = ld_le32(h + VDI_OFF_BMAP);
    s->data_offset = ld_le32(h + VDI_OFF_DATA);
    s->cylinders = ld_le32(h + VDI_OFF_CYLINDERS);
    s->heads = ld_le32(h + VDI_OFF_HEADS);
    s->sectors = ld_le32(h + VDI_OFF_SECTORS);
    s->disk_size = ld_le64(h + VDI_OFF_DISK_SIZE);
    s->block_size = ld_le32(h + VDI_OFF_BLOCK_SIZE);
    s->blocks_in_image = ld_le32(h + VDI_OFF_BLOCKS_IN_IMAGE);
    s->blocks_allocated_header = ld_le32(h + VDI_OFF_BLOCKS_ALLOCATED);
    memcpy(s->uuid_image, h + VDI_OFF_UUID_IMAGE, 16);
    memcpy(s->uuid_last_snap, h + VDI_OFF_UUID_LAST_SNAP, 16);
    memcpy(s->uuid_link, h + VDI_OFF_UUID_LINK, 16);
    memcpy(s->uuid_parent, h + VDI_OFF_UUID_PARENT, 16);
}

/* Signature, version, header size, image type: what kind of file this is. */
static int vdi_check_identity(VdiState *s, const uint8_t *h, int64_t file_size, Error *err)
{
    if (file_size < VDI_HEADER_OFFSET + VDI_HEADER_MIN_SIZE) {
        error_set(err, EINVAL, "file too short for a VDI header (%" PRId64 " bytes)", file_size);
        return -EINVAL;
    }
    if (ld_le32(h + VDI_SIGNATURE_OFFSET) != VDI_SIGNATURE) {
        error_set(err, EINVAL, "not a VDI image (bad signature 0x%08" PRIx32 ")",
                  ld_le32(h + VDI_SIGNATURE_OFFSET));
        return -EINVAL;
    }
    uint32_t version = ld_le32(h + VDI_VERSION_OFFSET);
    if (version != VDI_VERSION_1_1) {
        error_set(err, ENOTSUP, "unsupported VDI version %" PRIu32 ".%" PRIu32 " (only 1.1 is supported)",
                  version >> 16, version & 0xffff);
        return -ENOTSUP;
    }
    if (s->header_size < VDI_HEADER_MIN_SIZE) {
        error_set(err, EINVAL, "VDI header size %" PRIu32 " is smaller than the %d bytes of version 1.1",
                  s->header_size, VDI_HEADER_MIN_SIZE);
        return -EINVAL;
    }
    /* Undo images keep the old contents of the blocks a session changed: a different journal, refused. */
    if (s->image_type != VDI_TYPE_DYNAMIC && s->image_type != VDI_TYPE_STATIC && s->image_type != VDI_TYPE_DIFF) {
        error_set(err, ENOTSUP, "unsupported VDI image type %" PRIu32 " (%s); only dynamic, static and "
                  "differencing images are supported", s->image_type, vdi_type_name(s->image_type));
        return -ENOTSUP;
    }
    if (s->image_type == VDI_TYPE_DIFF && vdi_uuid_is_null(s->uuid_link)) {
        error_set(err, EINVAL, "differencing VDI image with a null parent UUID (uuidLinkage): no parent to find");
        return -EINVAL;
    }
    if (s->image_type == VDI_TYPE_DIFF && memcmp(s->uuid_link, s->uuid_image, 16) == 0) {
        error_set(err, EINVAL, "differencing VDI image names itself as its parent (uuidLinkage = uuidCreate)");
        return -EINVAL;
    }
    if (s->image_type != VDI_TYPE_DIFF && (!vdi_uuid_is_null(s->uuid_link) || !vdi_uuid_is_null(s->uuid_parent))) {
        error_set(err, ENOTSUP, "the %s VDI image names a parent image (link or parent UUID set); only "
                  "differencing images have one", vdi_type_name(s->image_type));
        return -ENOTSUP;
    }
    return 0;
}

/* Sector, block and disk sizes: the geometry of the block map. */
static int vdi_check_geometry(VdiState *s, const uint8_t *h, Error *err)
{
    uint32_t sector_size = ld_le32(h + VDI_OFF_SECTOR_SIZE);
    uint32_t block_extra = ld_le32(h + VDI_OFF_BLOCK_EXTRA);
    if (sector_size != VDI_SECTOR_SIZE) {
        error_set(err, ENOTSUP, "unsupported VDI sector size %" PRIu32 " (only 512)", sector_size);
        return -ENOTSUP;
    }
    if (s->block_size != VDI_BLOCK_SIZE) {
        error_set(err, ENOTSUP, "unsupported VDI block size %" PRIu32 " (only 1 MiB, the size VirtualBox uses)",
                  s->block_size);
        return -ENOTSUP;
    }
    s->block_shift = 20;
    if (block_extra != 0) {
        error_set(err, ENOTSUP, "VDI blocks with %" PRIu32 " bytes of extra data are not supported",
                  block_extra);
        return -ENOTSUP;
    }
    if (s->blocks_in_image > VDI_MAX_BLOCKS) {
        error_set(err, EFBIG, "block map of %" PRIu32 " entries is larger than the limit of %u (16 TiB)",
                  s->blocks_in_image, VDI_MAX_BLOCKS);
        return -EFBIG;
    }
    uint64_t needed = (s->disk_size >> s->block_shift) + ((s->disk_size & (s->block_size - 1)) != 0);
    if (s->disk_size > (uint64_t)VDI_MAX_BLOCKS * s->block_size || needed != s->blocks_in_image) {
        error_set(err, EINVAL, "blocks_in_image %" PRIu32 " does not match the disk size %" PRIu64
                  " (which needs %" PRIu64 " blocks of 1 MiB)", s->blocks_in_image, s->disk_size, needed);
        return -EINVAL;
    }
    if (s->blocks_allocated_header > s->blocks_in_image) {
        error_set(err, EINVAL, "blocks_allocated %" PRIu32 " exceeds blocks_in_image %" PRIu32,
                  s->blocks_allocated_header, s->blocks_in_image);
        return -EINVAL;
    }
    return 0;
}

/* Header, block map and data area follow each other in the file, sector aligned. */
static int vdi_check_layout(VdiState *s, int64_t file_size, Error *err)
{
    uint64_t header_end = (uint64_t)VDI_HEADER_OFFSET + s->header_size;
    uint64_t bmap_end = (uint64_t)s->bmap_offset + (uint64_t)s->blocks_in_image * 4;
    if (s->bmap_offset % VDI_SECTOR_SIZE) {
        error_set(err, EINVAL, "block map offset 0x%" PRIx32 " is not sector aligned", s->bmap_offset);
        return -EINVAL;
    }
    if (s->data_offset % VDI_SECTOR_SIZE) {
        error_set(err, EINVAL, "data offset 0x%" PRIx32 " is not sector aligned", s->data_offset);
        return -EINVAL;
    }
    if (s->bmap_offset < header_end) {
        error_set(err, EINVAL, "block map offset 0x%" PRIx32 " overlaps the header (%" PRIu64 " bytes)",
                  s->bmap_offset, header_end);
        return -EINVAL;
    }
    if (bmap_end > (uint64_t)file_size) {
        error_set(err, EINVAL, "block map extends past the end of the file");
        return -EINVAL;
    }
    if (s->data_offset < bmap_end) {
        error_set(err, EINVAL, "data offset 0x%" PRIx32 " overlaps the block map (which ends at 0x%" PRIx64 ")",
                  s->data_offset, bmap_end);
        return -EINVAL;
    }
    if (s->data_offset > (uint64_t)file_size) {
        error_set(err, EINVAL, "data offset 0x%" PRIx32 " is past the end of the file", s->data_offset);
        return -EINVAL;
    }
    return 0;
}

static int vdi_read_header(VdiState *s, int64_t file_size, Error *err)
{
    uint8_t h[VDI_HEADER_READ];
    memset(h, 0, sizeof(h));
    int ret = bdrv_pread(s->file, 0, MIN((int64_t)sizeof(h), file_size), h);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the VDI header: %s", strerror(-ret));
        return ret;
    }
    vdi_parse_fields(s, h);
    ret = vdi_check_identity(s, h, file_size, err);
    if (ret == 0)
        ret = vdi_check_geometry(s, h, err);
    if (ret == 0)
        ret = vdi_check_layout(s, file_size, err);
    return ret;
}

/* ---------------------------------------------------------------- the block map */

static uint64_t vdi_host_offset(const VdiState *s, uint32_t index)
{
    return s->data_offset + ((uint64_t)index << s->block_shift);
}

/* Guest bytes of block b that lie inside the disk (the last block may be partly outside it). */
static uint64_t vdi_block_visible(const VdiState *s, uint64_t b)
{
    return MIN((uint64_t)s->block_size, s->disk_size - (b << s->block_shift));
}

/* Caller holds s->lock. */
static VdiKind vdi_classify(const VdiState *s, uint64_t b, uint64_t *host)
{
    uint32_t e = s->bmap[b];
    *host = 0;
    if (e == VDI_ENTRY_UNALLOCATED)
        return VDI_UNALLOCATED;
    if (e == VDI_ENTRY_ZERO)
        return VDI_ZERO;
    *host = vdi_host_offset(s, e);
    return *host + vdi_block_visible(s, b) <= s->host_limit ? VDI_DATA : VDI_BAD;
}

static int vdi_bad_entry(VdiState *s, uint64_t b)
{
    if (!__atomic_exchange_n(&s->bad_entry_logged, 1, __ATOMIC_RELAXED))
        log_msg("%s: block map entry %" PRIu64 " (0x%08" PRIx32 ") points past the end of the file; reads of "
                "that block fail", s->name, b, s->bmap[b]);
    return -EIO;
}

/* The run of blocks from guest offset on (at most max bytes) that are all of one kind, with contiguous
 * host blocks for data. Sets *run and, for data, *host. */
static VdiKind vdi_map_run(VdiState *s, uint64_t offset, uint64_t max, uint64_t *run, uint64_t *host)
{
    uint64_t b = offset >> s->block_shift, in = offset & (s->block_size - 1);
    pthread_mutex_lock(&s->lock);
    uint64_t h;
    VdiKind kind = vdi_classify(s, b, &h);
    uint64_t n = MIN(max, (uint64_t)s->block_size - in);
    uint64_t next_host = h + s->block_size;
    *host = h + in;
    while (n < max && kind != VDI_BAD) {
        uint64_t nh;
        if (vdi_classify(s, ++b, &nh) != kind || (kind == VDI_DATA && nh != next_host))
            break;
        n += MIN(max - n, (uint64_t)s->block_size);
        next_host = nh + s->block_size;
    }
    if (kind == VDI_BAD)
        vdi_bad_entry(s, b);
    pthread_mutex_unlock(&s->lock);
    *run = n;
    return kind;
}

static int vdi_load_bmap(VdiState *s, int64_t file_size, Error *err)
{
    size_t n = s->blocks_in_image;
    s->bmap = malloc(MAX(n, (size_t)1) * sizeof(uint32_t));
    if (!s->bmap) {
        error_set(err, ENOMEM, "out of memory for a block map of %zu entries", n);
        return -ENOMEM;
    }
    int ret = n ? bdrv_pread(s->file, s->bmap_offset, (int64_t)(n * 4), s->bmap) : 0;
    if (ret < 0) {
        error_set(err, -ret, "cannot read the block map: %s", strerror(-ret));
        return ret;
    }
    s->blocks_allocated = 0;
    for (size_t i = 0; i < n; i++) {
        s->bmap[i] = ld_le32(&s->bmap[i]);
        if (s->bmap[i] < VDI_ENTRY_ZERO)
            s->blocks_allocated++;
    }
    s->host_limit = (uint64_t)file_size;
    return 0;
}

/* ---------------------------------------------------------------- writable open */

static bool vdi_used_test(const VdiState *s, uint32_t i) { return s->host_used[i / 64] >> (i % 64) & 1; }
static void vdi_used_set(VdiState *s, uint32_t i) { s->host_used[i / 64] |= 1ULL << (i % 64); }
static void vdi_used_clear(VdiState *s, uint32_t i)
{
    s->host_used[i / 64] &= ~(1ULL << (i % 64));
    s->free_hint = MIN(s->free_hint, i);
}

/* A writable image must map every allocated block to its own host block inside the file: writes to a
 * block shared with another would change both, and one past the end of the file would grow it blindly. */
static int vdi_build_host_used(VdiState *s, Error *err)
{
    size_t words = ((size_t)s->blocks_in_image + 63) / 64;
    s->host_used = calloc(MAX(words, (size_t)1), sizeof(uint64_t));
    if (!s->host_used) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    for (uint32_t b = 0; b < s->blocks_in_image; b++) {
        uint32_t e = s->bmap[b];
        uint64_t host;
        if (e >= VDI_ENTRY_ZERO)
            continue;
        const char *why = NULL;
        if (e >= s->blocks_in_image)
            why = "a host block index beyond blocks_in_image";
        else if (vdi_classify(s, b, &host) == VDI_BAD)
            why = "a host block past the end of the file";
        else if (vdi_used_test(s, e))
            why = "a host block another block also uses";
        if (why) {
            error_set(err, EINVAL, "block map entry %" PRIu32 " (0x%08" PRIx32 ") names %s; the image can only "
                      "be opened read-only", b, e, why);
            return -EINVAL;
        }
        vdi_used_set(s, e);
    }
    s->free_hint = 0;
    return 0;
}

static int vdi_write_header_count(VdiState *s)
{
    return bdrv_pwrite_field(s->file, VDI_OFF_BLOCKS_ALLOCATED, BDRV_FIELD_LE32, s->blocks_allocated,
                             "vdi_header_update");
}

static int vdi_open_writable(VdiState *s, Error *err)
{
    int ret = vdi_build_host_used(s, err);
    if (ret < 0)
        return ret;
    if (s->blocks_allocated != s->blocks_allocated_header) {
        /* e.g. left by a crash between a map update and the header update */
        log_msg("%s: header says %" PRIu32 " blocks allocated, the block map %" PRIu32 "; header corrected",
                s->name, s->blocks_allocated_header, s->blocks_allocated);
        ret = vdi_write_header_count(s);
        if (ret < 0) {
            error_set(err, -ret, "cannot update the header: %s", strerror(-ret));
            return ret;
        }
        s->blocks_allocated_header = s->blocks_allocated;
    }
    if (s->image_type == VDI_TYPE_DIFF && !(s->cow_buf = malloc(s->block_size))) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&s->alloc_lock, NULL);
    pthread_rwlock_init(&s->io_lock, NULL);
    s->writable = true;
    return 0;
}

/* ---------------------------------------------------------------- open, close */

static void vdi_close(BlockNode *bs)
{
    VdiState *s = bs->opaque;
    if (!s->name)
        return; /* never opened */
    if (s->writable) {
        pthread_mutex_destroy(&s->alloc_lock);
        pthread_rwlock_destroy(&s->io_lock);
        s->writable = false;
    }
    pthread_mutex_destroy(&s->lock);
    free(s->bmap);
    free(s->host_used);
    free(s->cow_buf);
    s->bmap = NULL;
    s->host_used = NULL;
    s->cow_buf = NULL;
    s->name = NULL;
}

/* A differencing image: the core searches its parent among the .vdi files by the identity backing_matches
 * checks; backing_name is that identity as users read it. Only such an image takes --backing. */
static int vdi_set_parent_search(BlockNode *bs, VdiState *s, const BlockOpenOpts *opts, Error *err)
{
    if (s->image_type != VDI_TYPE_DIFF) {
        if (opts && opts->backing) {
            error_set(err, EINVAL, "a %s VDI image has no parent: --backing applies to differencing images only",
                      vdi_type_name(s->image_type));
            return -EINVAL;
        }
        return 0;
    }
    char uuid[40], name[48];
    vdi_format_uuid(s->uuid_link, uuid, sizeof(uuid));
    snprintf(name, sizeof(name), "{%s}", uuid);
    if (!(bs->backing_name = strdup(name)) || !(bs->backing_search_suffix = strdup(".vdi"))) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static int vdi_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    VdiState *s = bs->opaque;
    s->name = bs->filename ? bs->filename : "vdi";
    s->file = bs->file;
    s->self = bs;
    pthread_mutex_init(&s->lock, NULL);
    int64_t file_size;
    int ret = bdrv_file_size(bs->file, &file_size, err);
    if (ret == 0)
        ret = vdi_read_header(s, file_size, err);
    if (ret == 0)
        ret = vdi_set_parent_search(bs, s, opts, err);
    if (ret == 0)
        ret = vdi_load_bmap(s, file_size, err);
    if (ret == 0 && !bs->read_only)
        ret = vdi_open_writable(s, err);
    if (ret < 0) {
        vdi_close(bs);
        return ret;
    }
    bs->request_alignment = 1;
    return 0;
}

/* A candidate parent: a VDI 1.1 header whose uuidCreate is this image's uuidLinkage (the full checks come
 * when the core opens it). */
static bool vdi_backing_matches(BlockNode *bs, const uint8_t *head, size_t len)
{
    const VdiState *s = bs->opaque;
    return len >= VDI_OFF_UUID_IMAGE + 16 && ld_le32(head + VDI_SIGNATURE_OFFSET) == VDI_SIGNATURE &&
           ld_le32(head + VDI_VERSION_OFFSET) == VDI_VERSION_1_1 &&
           memcmp(head + VDI_OFF_UUID_IMAGE, s->uuid_link, 16) == 0;
}

/* The parent attached (found by UUID, or named with --backing): a VDI parent must carry the UUID this image
 * links to (else the open fails); one modified since this image was made (its uuidModify is not this
 * image's uuidParentModify) is read with a warning. A parent of another format cannot be checked. */
static int vdi_backing_attached(BlockNode *bs, Error *err)
{
    VdiState *s = bs->opaque;
    BlockNode *p = bs->backing;
    char want[40], got[40];
    if (s->image_type != VDI_TYPE_DIFF)
        return 0;
    if (!p) {
        if (!s->writable)
            return 0;
        error_set(err, EINVAL, "%s: a differencing VDI image is writable only with its parent (not with "
                  "--no-backing): new blocks start as the parent's", bs->filename);
        return -EINVAL;
    }
    if (p->drv != bs->drv) {
        log_msg("%s: warning: parent %s is a %s image: its UUID cannot be checked", bs->filename, p->filename,
                p->drv->name);
        return 0;
    }
    const VdiState *ps = p->opaque;
    vdi_format_uuid(s->uuid_link, want, sizeof(want));
    if (memcmp(ps->uuid_image, s->uuid_link, 16) != 0) {
        vdi_format_uuid(ps->uuid_image, got, sizeof(got));
        error_set(err, EINVAL, "%s: parent %s has UUID {%s}, but this differencing image was made from {%s}",
                  bs->filename, p->filename, got, want);
        return -EINVAL;
    }
    if (!vdi_uuid_is_null(s->uuid_parent) && memcmp(ps->uuid_last_snap, s->uuid_parent, 16) != 0) {
        vdi_format_uuid(ps->uuid_last_snap, got, sizeof(got));
        vdi_format_uuid(s->uuid_parent, want, sizeof(want));
        log_msg("%s: warning: parent %s was modified after this differencing image was made (its uuidModify is "
                "{%s}, this image expects {%s}); reading it as it is now", bs->filename, p->filename, got, want);
    }
    return 0;
}

static int64_t vdi_getlength(BlockNode *bs)
{
    VdiState *s = bs->opaque;
    return (int64_t)s->disk_size;
}

/* ---------------------------------------------------------------- read, block status */

/* The map of [offset, offset+bytes): one run of blocks of one kind (host-contiguous for data). */
static int vdi_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    VdiState *s = bs->opaque;
    (void)opaque;
    if (offset < 0 || bytes <= 0 || (uint64_t)offset >= s->disk_size)
        return -EINVAL;
    uint64_t n, host, max = MIN((uint64_t)bytes, s->disk_size - (uint64_t)offset);
    VdiKind kind = vdi_map_run(s, (uint64_t)offset, max, &n, &host);
    st->bytes = (int64_t)n;
    switch (kind) {
    case VDI_DATA:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)host;
        st->host_file = s->file;
        return 0;
    case VDI_ZERO:
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        return 0;
    case VDI_UNALLOCATED:
        return 0; /* no backing node: zeros */
    default:
        return -EIO;
    }
}

/* Reads hold it shared: an unmap (exclusive) cannot free a host block a read is about to read. Only a
 * writable image has one. */
static pthread_rwlock_t *vdi_lock(BlockNode *bs)
{
    VdiState *s = bs->opaque;
    return s->writable ? &s->io_lock : NULL;
}

static const BlockReadMap vdi_read_map = { .map = vdi_map, .lock = vdi_lock };

static int vdi_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    return bdrv_status_mapped_locked(bs, offset, bytes, st, &vdi_read_map, NULL);
}

/* ---------------------------------------------------------------- allocation */

/* The lowest host block index no map entry uses; caller holds s->lock. */
static int vdi_find_free_host(VdiState *s, uint32_t *index)
{
    for (uint32_t i = s->free_hint; i < s->blocks_in_image; i++) {
        if (s->host_used[i / 64] == UINT64_MAX) {
            i |= 63;
            continue;
        }
        if (!vdi_used_test(s, i)) {
            *index = i;
            s->free_hint = i + 1;
            return 0;
        }
    }
    s->free_hint = s->blocks_in_image;
    return -ENOSPC; /* cannot happen while an unallocated block exists: one index per guest block */
}

static int vdi_write_bmap_entries(VdiState *s, uint32_t first, uint32_t count)
{
    uint8_t buf[VDI_UNMAP_BATCH * 4];
    for (uint32_t i = 0; i < count; i++)
        st_le32(buf + 4 * i, s->bmap[first + i]);
    bdrv_debug_event(s->file, "vdi_bmap_update");
    return bdrv_pwrite(s->file, s->bmap_offset + (int64_t)first * 4, (int64_t)count * 4, buf, 0);
}

/* Fill a whole host block: zeros, the data at 'in', zeros up to the block end. */
static int vdi_fill_new_block(VdiState *s, uint64_t host, uint64_t in, uint64_t n, const uint8_t *data)
{
    int ret = in ? bdrv_pwrite_zeroes(s->file, (int64_t)host, (int64_t)in, 0) : 0;
    if (ret == 0)
        ret = bdrv_pwrite(s->file, (int64_t)(host + in), (int64_t)n, data, 0);
    uint64_t tail = s->block_size - in - n;
    if (ret == 0 && tail)
        ret = bdrv_pwrite_zeroes(s->file, (int64_t)(host + in + n), (int64_t)tail, 0);
    return ret;
}

/* Copy-up: guest block b's bytes in the parent (zeros past the parent's end), with [in, in + n) replaced by
 * data, written whole to the new host block. Caller holds alloc_lock (cow_buf is the block's buffer). */
static int vdi_fill_copy_up(VdiState *s, uint64_t b, uint64_t host, uint64_t in, uint64_t n, const uint8_t *data)
{
    BlockNode *parent = s->self->backing;
    uint64_t start = b << s->block_shift, visible = vdi_block_visible(s, b);
    int64_t plen = bdrv_getlength(parent);
    if (plen < 0)
        return (int)plen;
    memset(s->cow_buf, 0, s->block_size);
    uint64_t avail = (uint64_t)plen > start ? MIN(visible, (uint64_t)plen - start) : 0;
    int ret = avail ? bdrv_pread(parent, (int64_t)start, (int64_t)avail, s->cow_buf) : 0;
    if (ret < 0)
        return ret;
    memcpy(s->cow_buf + in, data, n);
    return bdrv_pwrite(s->file, (int64_t)host, s->block_size, s->cow_buf, 0);
}

/* Write [in, in + n) of guest block b, which holds no data yet, into a new host block. The block's data
 * reaches the disk (flush) before the map entry names it, so a crash leaves either the old entry or one
 * pointing at complete data; then the header's count follows. Allocations are serialised by alloc_lock,
 * and the entry is looked at again under it: a concurrent writer of the same block that got here first
 * has allocated it, and this write then goes in place. Caller holds io_lock shared. */
static int vdi_allocate_write(VdiState *s, uint64_t b, uint64_t in, uint64_t n, const uint8_t *data)
{
    pthread_mutex_lock(&s->alloc_lock);
    pthread_mutex_lock(&s->lock);
    uint64_t host;
    VdiKind kind = vdi_classify(s, b, &host);
    uint32_t index = 0;
    int ret = kind == VDI_BAD ? vdi_bad_entry(s, b) : 0;
    if (kind == VDI_UNALLOCATED || kind == VDI_ZERO) {
        ret = vdi_find_free_host(s, &index);
        if (ret == 0)
            vdi_used_set(s, index);
    }
    pthread_mutex_unlock(&s->lock);
    if (ret < 0 || kind == VDI_DATA) {
        pthread_mutex_unlock(&s->alloc_lock);
        return ret < 0 ? ret : bdrv_pwrite(s->file, (int64_t)(host + in), (int64_t)n, data, 0);
    }
    host = vdi_host_offset(s, index);
    if (kind == VDI_UNALLOCATED && s->self->backing)
        ret = vdi_fill_copy_up(s, b, host, in, n, data);
    else
        ret = vdi_fill_new_block(s, host, in, n, data);
    if (ret == 0)
        ret = bdrv_flush(s->file);
    uint32_t old = s->bmap[b];
    if (ret == 0) {
        pthread_mutex_lock(&s->lock);
        s->bmap[b] = index;
        s->blocks_allocated++;
        s->host_limit = MAX(s->host_limit, host + s->block_size);
        pthread_mutex_unlock(&s->lock);
        ret = vdi_write_bmap_entries(s, (uint32_t)b, 1);
        if (ret < 0) { /* the entry on disk is unknown: keep the block reserved, forget the mapping */
            pthread_mutex_lock(&s->lock);
            s->bmap[b] = old;
            s->blocks_allocated--;
            pthread_mutex_unlock(&s->lock);
            pthread_mutex_unlock(&s->alloc_lock);
            return ret;
        }
        ret = vdi_write_header_count(s);
    } else {
        pthread_mutex_lock(&s->lock);
        vdi_used_clear(s, index);
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&s->alloc_lock);
    return ret;
}

/* ---------------------------------------------------------------- write */

/* A random (version 4) UUID in VirtualBox's byte order (the first three fields little-endian). */
static void vdi_new_uuid(uint8_t *u)
{
    if (getrandom(u, 16, 0) != 16)
        for (int i = 0; i < 16; i++)
            u[i] = (uint8_t)(rand() >> 7);
    u[7] = (uint8_t)((u[7] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
}

/* The first change of a session gives the image a new uuidModify, as VirtualBox does, so that a child made
 * before it can tell its parent changed; it reaches the disk before the change does. */
static int vdi_renew_modify(VdiState *s)
{
    if (__atomic_load_n(&s->modified, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&s->alloc_lock);
    int ret = 0;
    if (!s->modified) {
        uint8_t uuid[16];
        vdi_new_uuid(uuid);
        bdrv_debug_event(s->file, "vdi_header_update");
        ret = bdrv_pwrite(s->file, VDI_OFF_UUID_LAST_SNAP, 16, uuid, 0);
        if (ret == 0)
            ret = bdrv_flush(s->file);
        if (ret == 0) {
            pthread_mutex_lock(&s->lock);
            memcpy(s->uuid_last_snap, uuid, 16);
            pthread_mutex_unlock(&s->lock);
            __atomic_store_n(&s->modified, 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&s->alloc_lock);
    return ret;
}

static int vdi_write_locked(VdiState *s, uint64_t offset, uint64_t bytes, const uint8_t *p)
{
    while (bytes > 0) {
        uint64_t n, host;
        VdiKind kind = vdi_map_run(s, offset, bytes, &n, &host);
        int ret;
        if (kind == VDI_BAD)
            return -EIO;
        if (kind == VDI_DATA) {
            ret = bdrv_pwrite(s->file, (int64_t)host, (int64_t)n, p, 0);
        } else {
            uint64_t in = offset & (s->block_size - 1);
            n = MIN(bytes, (uint64_t)s->block_size - in);
            ret = vdi_allocate_write(s, offset >> s->block_shift, in, n, p);
        }
        if (ret < 0)
            return ret;
        offset += n;
        bytes -= n;
        p += n;
    }
    return 0;
}

static int vdi_check_write(VdiState *s, int64_t offset, int64_t bytes)
{
    if (!s->writable)
        return -EROFS;
    if (offset < 0 || bytes < 0 || (uint64_t)offset + (uint64_t)bytes > s->disk_size)
        return -EINVAL;
    return 0;
}

static int vdi_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    VdiState *s = bs->opaque;
    int ret = vdi_check_write(s, offset, bytes);
    if (ret == 0 && bytes > 0)
        ret = vdi_renew_modify(s);
    if (ret < 0)
        return ret;
    pthread_rwlock_rdlock(&s->io_lock);
    ret = vdi_write_locked(s, (uint64_t)offset, (uint64_t)bytes, buf);
    pthread_rwlock_unlock(&s->io_lock);
    if (ret == 0 && (flags & BDRV_REQ_FUA))
        ret = bdrv_flush(s->file);
    return ret;
}

/* ---------------------------------------------------------------- zeroes, discard */

/* Guest block b, unallocated in a differencing image, made a zero entry (if still unallocated). */
static int vdi_zero_entry(VdiState *s, uint64_t b)
{
    pthread_mutex_lock(&s->alloc_lock);
    pthread_mutex_lock(&s->lock);
    bool still = s->bmap[b] == VDI_ENTRY_UNALLOCATED;
    if (still)
        s->bmap[b] = VDI_ENTRY_ZERO;
    pthread_mutex_unlock(&s->lock);
    int ret = still ? vdi_write_bmap_entries(s, (uint32_t)b, 1) : 0;
    pthread_mutex_unlock(&s->alloc_lock);
    return ret;
}

/* Zero [offset, offset + n) of a differencing image where it is unallocated (it reads from the parent): a
 * whole block becomes a zero entry, part of one a new block copied up from the parent with zeros written. */
static int vdi_zero_unallocated(VdiState *s, uint64_t offset, uint64_t n)
{
    while (n > 0) {
        uint64_t b = offset >> s->block_shift, in = offset & (s->block_size - 1);
        uint64_t len = MIN(n, vdi_block_visible(s, b) - in);
        int ret;
        if (in == 0 && len == vdi_block_visible(s, b)) {
            ret = vdi_zero_entry(s, b);
        } else {
            uint8_t *zeros = calloc(1, len);
            ret = zeros ? vdi_allocate_write(s, b, in, len, zeros) : -ENOMEM;
            free(zeros);
        }
        if (ret < 0)
            return ret;
        offset += len;
        n -= len;
    }
    return 0;
}

/* Zero [offset, offset + bytes) where blocks hold data (and, in a differencing image, where they read from
 * the parent); other blocks read as zeros already. */
static int vdi_zero_in_place(VdiState *s, uint64_t offset, uint64_t bytes)
{
    while (bytes > 0) {
        uint64_t n, host;
        VdiKind kind = vdi_map_run(s, offset, bytes, &n, &host);
        int ret = 0;
        if (kind == VDI_BAD)
            return -EIO;
        if (kind == VDI_DATA)
            ret = bdrv_pwrite_zeroes(s->file, (int64_t)host, (int64_t)n, 0);
        else if (kind == VDI_UNALLOCATED && s->image_type == VDI_TYPE_DIFF)
            ret = vdi_zero_unallocated(s, offset, n);
        if (ret < 0)
            return ret;
        offset += n;
        bytes -= n;
    }
    return 0;
}

/* Hand host blocks back for reuse once no entry on disk names them: the map and header changes are
 * flushed first, so a crash can never leave an old entry pointing at a reused block. The host range is
 * punched where the file system can (best effort: a reused block is zero-filled anyway). */
static int vdi_release_hosts(VdiState *s, const uint32_t *hosts, int n)
{
    int ret = n ? vdi_write_header_count(s) : 0;
    if (ret == 0 && n)
        ret = bdrv_flush(s->file);
    if (ret < 0)
        return ret; /* the blocks stay reserved: leaked until the next writable open, never reused early */
    for (int i = 0; i < n; i++) {
        bdrv_discard(s->file, (int64_t)vdi_host_offset(s, hosts[i]), s->block_size);
        pthread_mutex_lock(&s->lock);
        vdi_used_clear(s, hosts[i]);
        pthread_mutex_unlock(&s->lock);
    }
    return 0;
}

/* Turn whole guest blocks [first, first + count) that hold data into zero entries. Caller holds io_lock
 * exclusively, so no read or write is using their host blocks. */
static int vdi_unmap_blocks(VdiState *s, uint64_t first, uint64_t count)
{
    uint32_t hosts[VDI_UNMAP_BATCH];
    int ret = 0;
    while (ret == 0 && count > 0) {
        uint32_t chunk = (uint32_t)MIN(count, (uint64_t)VDI_UNMAP_BATCH);
        int n = 0;
        bool changed = false;
        pthread_mutex_lock(&s->lock);
        for (uint32_t i = 0; i < chunk; i++) {
            uint64_t host;
            VdiKind kind = vdi_classify(s, first + i, &host);
            if (kind == VDI_BAD)
                ret = vdi_bad_entry(s, first + i);
            if (kind == VDI_UNALLOCATED && s->image_type == VDI_TYPE_DIFF && ret == 0) {
                s->bmap[first + i] = VDI_ENTRY_ZERO; /* it read from the parent: now zeros */
                changed = true;
            }
            if (kind != VDI_DATA || ret < 0)
                continue;
            hosts[n++] = s->bmap[first + i];
            s->bmap[first + i] = VDI_ENTRY_ZERO;
            s->blocks_allocated--;
        }
        pthread_mutex_unlock(&s->lock);
        /* the map slice is written even after an error: entries changed in memory must reach the disk */
        int wret = n || changed ? vdi_write_bmap_entries(s, (uint32_t)first, chunk) : 0;
        if (wret == 0)
            wret = vdi_release_hosts(s, hosts, n);
        ret = ret < 0 ? ret : wret;
        first += chunk;
        count -= chunk;
    }
    return ret;
}

/* Whole blocks inside [offset, offset + bytes): *first and *count (a partial block at the end of the disk
 * counts as whole). */
static void vdi_whole_blocks(const VdiState *s, uint64_t offset, uint64_t bytes, uint64_t *first, uint64_t *count)
{
    uint64_t end = offset + bytes;
    uint64_t start = (offset + s->block_size - 1) >> s->block_shift;
    uint64_t stop = end == s->disk_size ? (end + s->block_size - 1) >> s->block_shift : end >> s->block_shift;
    *first = start;
    *count = stop > start ? stop - start : 0;
}

static int vdi_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    VdiState *s = bs->opaque;
    int ret = vdi_check_write(s, offset, bytes);
    if (ret < 0)
        return ret;
    uint64_t first = 0, count = 0;
    if (ret == 0 && bytes > 0)
        ret = vdi_renew_modify(s);
    if (ret < 0)
        return ret;
    /* static images keep every block in place; dynamic and differencing ones may drop whole blocks */
    if ((flags & BDRV_REQ_MAY_UNMAP) && s->image_type != VDI_TYPE_STATIC)
        vdi_whole_blocks(s, (uint64_t)offset, (uint64_t)bytes, &first, &count);
    if (count == 0) {
        pthread_rwlock_rdlock(&s->io_lock);
        ret = vdi_zero_in_place(s, (uint64_t)offset, (uint64_t)bytes);
    } else {
        uint64_t a = first << s->block_shift, b = MIN((first + count) << s->block_shift, s->disk_size);
        uint64_t end = (uint64_t)offset + (uint64_t)bytes;
        pthread_rwlock_wrlock(&s->io_lock);
        ret = vdi_zero_in_place(s, (uint64_t)offset, a - (uint64_t)offset);
        if (ret == 0)
            ret = vdi_unmap_blocks(s, first, count);
        if (ret == 0)
            ret = vdi_zero_in_place(s, b, end - b);
    }
    pthread_rwlock_unlock(&s->io_lock);
    if (ret == 0 && (flags & BDRV_REQ_FUA))
        ret = bdrv_flush(s->file);
    return ret;
}

/* A discard is a hint: whole blocks of a dynamic or differencing image become zero entries, the rest is
 * left alone. */
static int vdi_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    VdiState *s = bs->opaque;
    int ret = vdi_check_write(s, offset, bytes);
    if (ret < 0 || s->image_type == VDI_TYPE_STATIC)
        return ret;
    uint64_t first, count;
    vdi_whole_blocks(s, (uint64_t)offset, (uint64_t)bytes, &first, &count);
    if (count == 0)
        return 0;
    if ((ret = vdi_renew_modify(s)) < 0)
        return ret;
    pthread_rwlock_wrlock(&s->io_lock);
    ret = vdi_unmap_blocks(s, first, count);
    pthread_rwlock_unlock(&s->io_lock);
    return ret;
}

/* ---------------------------------------------------------------- create */

static const BlockOptionSpec vdi_create_options[] = {
    { "static", BDRV_OPT_BOOL, 0, "on: a fixed image, every block preallocated; off (default): dynamic" },
    { NULL, 0, 0, NULL },
};

typedef struct VdiCreateParse {
    bool *is_static;
    const char *filename;
    Error *err;
} VdiCreateParse;

static int vdi_create_option(const char *key, const char *value, void *opaque)
{
    VdiCreateParse *c = opaque;
    if (strcmp(key, "static") != 0) {
        error_set(c->err, EINVAL, "%s: unknown vdi creation option '%s'", c->filename, key);
        return -EINVAL;
    }
    int bv = bdrv_parse_bool(value);
    if (bv >= 0)
        *c->is_static = bv == 1;
    else {
        error_set(c->err, EINVAL, "%s: vdi option 'static' must be on or off, not '%s'", c->filename, value);
        return -EINVAL;
    }
    return 0;
}

/* What a differencing image records of its parent. */
typedef struct VdiParentIds {
    uint8_t create[16], modify[16];
    uint64_t disk_size;
} VdiParentIds;

/* The parent named with -b (relative to the new image's directory), opened read-only without its own
 * parent: a VDI image whose uuidCreate and uuidModify the child records. */
static int vdi_create_parent(const char *filename, const CreateOpts *opts, VdiParentIds *ids, Error *err)
{
    char path[4096];
    const char *slash = strrchr(filename, '/');
    if (opts->backing[0] == '/' || !slash)
        snprintf(path, sizeof(path), "%s", opts->backing);
    else
        snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - filename), filename, opts->backing);
    if (opts->backing_format && strcmp(opts->backing_format, "vdi") != 0) {
        error_set(err, EINVAL, "%s: the parent of a differencing VDI image is a VDI image (-F vdi), not %s",
                  filename, opts->backing_format);
        return -EINVAL;
    }
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.format = "vdi";
    o.no_backing = true;
    BlockNode *p = bdrv_open(path, &o, err);
    if (!p)
        return -(err->errnum ? err->errnum : EIO);
    const VdiState *ps = p->opaque;
    memcpy(ids->create, ps->uuid_image, 16);
    memcpy(ids->modify, ps->uuid_last_snap, 16);
    ids->disk_size = ps->disk_size;
    bdrv_close(p);
    return 0;
}

/* The pre-header (text) and header of a new image of type at h (zeroed by the caller): size bytes in
 * 1 MiB blocks (all allocated if static), the block map at VDI_BMAP_OFFSET_NEW, the data at data. */
static void vdi_new_header(uint8_t *h, const char *text, uint32_t type, uint64_t size, uint32_t data)
{
    uint32_t blocks = (uint32_t)((size + VDI_BLOCK_SIZE - 1) / VDI_BLOCK_SIZE);
    memcpy(h, text, strlen(text));
    st_le32(h + VDI_SIGNATURE_OFFSET, VDI_SIGNATURE);
    st_le32(h + VDI_VERSION_OFFSET, VDI_VERSION_1_1);
    st_le32(h + VDI_OFF_HEADER_SIZE, VDI_HEADER_SIZE_NEW);
    st_le32(h + VDI_OFF_IMAGE_TYPE, type);
    st_le32(h + VDI_OFF_BMAP, VDI_BMAP_OFFSET_NEW);
    st_le32(h + VDI_OFF_DATA, data);
    st_le32(h + VDI_OFF_SECTOR_SIZE, VDI_SECTOR_SIZE);
    st_le64(h + VDI_OFF_DISK_SIZE, size);
    st_le32(h + VDI_OFF_BLOCK_SIZE, VDI_BLOCK_SIZE);
    st_le32(h + VDI_OFF_BLOCKS_IN_IMAGE, blocks);
    st_le32(h + VDI_OFF_BLOCKS_ALLOCATED, type == VDI_TYPE_STATIC ? blocks : 0);
    vdi_new_uuid(h + VDI_OFF_UUID_IMAGE);
    vdi_new_uuid(h + VDI_OFF_UUID_LAST_SNAP);
}

/* layouts.h: the header of a static image that is not created here (emulate.c's disk.vdi). */
void vdi_static_header(uint8_t *h, const char *text, uint64_t disk_size, uint32_t data_offset)
{
    vdi_new_header(h, text, VDI_TYPE_STATIC, disk_size, data_offset);
}

/* Pre-header, header and block map of a new image (every entry free, or block i at host block i for a
 * static one); *len bytes, data at the next sector; NULL: no memory. */
static uint8_t *vdi_new_image(uint32_t type, uint64_t size, const VdiParentIds *parent, uint64_t *len)
{
    uint32_t blocks = (uint32_t)((size + VDI_BLOCK_SIZE - 1) / VDI_BLOCK_SIZE);
    uint64_t data = (uint64_t)align_up((int64_t)(VDI_BMAP_OFFSET_NEW + (uint64_t)blocks * 4), VDI_SECTOR_SIZE);
    uint8_t *img = calloc(1, data);
    if (!img)
        return NULL;
    vdi_new_header(img, VDI_PREHEADER_TEXT, type, size, (uint32_t)data);
    if (parent) {
        memcpy(img + VDI_OFF_UUID_LINK, parent->create, 16);
        memcpy(img + VDI_OFF_UUID_PARENT, parent->modify, 16);
    }
    for (uint32_t i = 0; i < blocks; i++)
        st_le32(img + VDI_BMAP_OFFSET_NEW + 4 * (uint64_t)i, type == VDI_TYPE_STATIC ? i : VDI_ENTRY_UNALLOCATED);
    *len = data;
    return img;
}

/* The image file: header and map, then for a static image the data area (a sparse file of zeros). */
static int vdi_write_new(const char *filename, const uint8_t *img, uint64_t len, uint64_t total, Error *err)
{
    BlockNode *file = NULL;
    int ret = bdrv_create_empty_file(filename, &file, err);
    if (ret == 0)
        ret = bdrv_pwrite(file, 0, (int64_t)len, img, 0);
    if (ret == 0 && total > len)
        ret = bdrv_truncate(file, (int64_t)total);
    if (ret == 0)
        ret = bdrv_flush(file);
    if (file)
        bdrv_close(file);
    return ret;
}

static int vdi_create(const char *filename, const CreateOpts *opts, Error *err)
{
    bool is_static = false;
    VdiCreateParse c = { .is_static = &is_static, .filename = filename, .err = err };
    int ret = bdrv_create_opts_each(opts->options, vdi_create_option, &c);
    bool diff = opts->backing && opts->backing[0];
    uint64_t size = (uint64_t)align_up(MAX(opts->size, 0), VDI_SECTOR_SIZE);
    VdiParentIds parent;
    if (ret == 0 && (opts->size < 0 || size > (uint64_t)VDI_MAX_BLOCKS * VDI_BLOCK_SIZE)) {
        error_set(err, EINVAL, "%s: invalid virtual size for vdi (0 to 16 TiB)", filename);
        ret = -EINVAL;
    } else if (ret == 0 && diff && is_static) {
        error_set(err, EINVAL, "%s: a differencing VDI image cannot be static (static=on with -b)", filename);
        ret = -EINVAL;
    }
    if (ret == 0 && diff)
        ret = vdi_create_parent(filename, opts, &parent, err);
    if (ret == 0 && diff && parent.disk_size != size) {
        error_set(err, EINVAL, "%s: a differencing VDI image has its parent's size (%" PRIu64 " bytes), not %" PRIu64,
                  filename, parent.disk_size, size);
        ret = -EINVAL;
    }
    uint32_t type = diff ? VDI_TYPE_DIFF : is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC;
    uint64_t len = 0;
    uint8_t *img = ret == 0 ? vdi_new_image(type, size, diff ? &parent : NULL, &len) : NULL;
    uint64_t blocks = (size + VDI_BLOCK_SIZE - 1) / VDI_BLOCK_SIZE;
    if (ret == 0)
        ret = img ? vdi_write_new(filename, img, len, is_static ? len + blocks * VDI_BLOCK_SIZE : len, err) : -ENOMEM;
    free(img);
    return ret;
}

/* ---------------------------------------------------------------- info */

static bool vdi_has_zero_init(BlockNode *bs)
{
    VdiState *s = bs->opaque;
    /* a new dynamic image maps no block; a static one is as zeroed as its file */
    if (s->image_type == VDI_TYPE_DIFF)
        return bs->backing == NULL; /* its unallocated blocks read from the parent */
    return s->image_type == VDI_TYPE_DYNAMIC || bdrv_has_zero_init(bs->file);
}

static void vdi_info_uuid(InfoList *info, const char *key, const uint8_t *uuid)
{
    char text[40];
    vdi_format_uuid(uuid, text, sizeof(text));
    info_add_str(info, key, "%s", text);
}

static void vdi_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    facts->cluster_size = ((VdiState *)bs->opaque)->block_size;
    facts->unallocated_is_zero = true;
    facts->data_over_host_zero = ((VdiState *)bs->opaque)->image_type == VDI_TYPE_STATIC;
}

static void vdi_get_info(BlockNode *bs, InfoList *info)
{
    VdiState *s = bs->opaque;
    info_add_str(info, "vdi_version", "1.1");
    info_add_str(info, "image_type", "%s", vdi_type_name(s->image_type));
    info_add_str(info, "image_flags", "0x%08" PRIx32, s->image_flags);
    info_add_int(info, "header_size", s->header_size);
    info_add_int(info, "block_size", s->block_size);
    pthread_mutex_lock(&s->lock);
    uint32_t allocated = s->blocks_allocated;
    pthread_mutex_unlock(&s->lock);
    info_add_int(info, "blocks_total", s->blocks_in_image);
    info_add_int(info, "blocks_allocated", allocated);
    if (s->blocks_allocated_header != allocated && !s->writable)
        info_add_int(info, "blocks_allocated_in_header", s->blocks_allocated_header);
    info_add_int(info, "block_map_offset", s->bmap_offset);
    info_add_int(info, "data_offset", s->data_offset);
    info_add_str(info, "geometry", "%" PRIu32 "/%" PRIu32 "/%" PRIu32, s->cylinders, s->heads, s->sectors);
    uint8_t modify[16];
    pthread_mutex_lock(&s->lock);
    memcpy(modify, s->uuid_last_snap, 16);
    pthread_mutex_unlock(&s->lock);
    vdi_info_uuid(info, "uuid", s->uuid_image);
    vdi_info_uuid(info, "uuid_last_snapshot", modify);
    vdi_info_uuid(info, "uuid_link", s->uuid_link);
    vdi_info_uuid(info, "uuid_parent", s->uuid_parent);
    info_add_str(info, "comment", "%s", s->comment);
}

static int64_t vdi_memory_used(BlockNode *bs)
{
    VdiState *s = bs->opaque;
    int64_t bytes = (int64_t)sizeof(*s) + (int64_t)s->blocks_in_image * 4;
    if (s->host_used)
        bytes += ((int64_t)s->blocks_in_image + 63) / 64 * 8;
    if (s->cow_buf)
        bytes += s->block_size;
    return bytes;
}

/* ---------------------------------------------------------------- check */

/* qemu-img's checks of a VDI: an entry naming a host block at or past the header's count of allocated
 * blocks, or past the end of the file, or one another entry names too, and a count that disagrees with the
 * map are corruptions. Nothing is repaired (-r: -ENOTSUP). */
static int vdi_check_map(VdiState *s, BlockCheckResult *res)
{
    uint64_t *seen = calloc(((size_t)s->blocks_in_image + 63) / 64 + 1, 8);
    if (!seen)
        return -ENOMEM;
    uint32_t allocated = 0;
    for (uint32_t b = 0; b < s->blocks_in_image; b++) {
        uint32_t e = s->bmap[b];
        uint64_t host;
        if (e >= VDI_ENTRY_ZERO)
            continue;
        if (e >= s->blocks_allocated_header || e >= s->blocks_in_image) {
            bdrv_check_corruption(res, "block map entry %" PRIu32 " (0x%08" PRIx32 ") is beyond the %" PRIu32
                                  " allocated blocks", b, e, s->blocks_allocated_header);
            continue;
        }
        allocated++;
        if (seen[e / 64] >> (e % 64) & 1)
            bdrv_check_corruption(res, "block map entry %" PRIu32 " names host block %" PRIu32 ", which another "
                                  "entry names too", b, e);
        else if (vdi_classify(s, b, &host) == VDI_BAD)
            bdrv_check_corruption(res, "block map entry %" PRIu32 " (0x%08" PRIx32 ") points past the end of the "
                                  "file", b, e);
        seen[e / 64] |= 1ull << (e % 64);
    }
    if (allocated != s->blocks_allocated_header)
        bdrv_check_corruption(res, "the header counts %" PRIu32 " allocated blocks, the block map %" PRIu32,
                              s->blocks_allocated_header, allocated);
    free(seen);
    return 0;
}

static int vdi_check(BlockNode *bs, BlockCheckResult *res, int fix)
{
    if (fix)
        return -ENOTSUP;
    VdiState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = vdi_check_map(s, res);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

const BlockDriver bdrv_vdi = {
    .name = "vdi",
    .instance_size = sizeof(VdiState),
    .supports_backing = true,
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .backing_matches = vdi_backing_matches,
    .backing_attached = vdi_backing_attached,
    .read = bdrv_mapped_read,
    .write = vdi_write,
    .write_zeroes = vdi_write_zeroes,
    .discard = vdi_discard,
    .block_status = vdi_block_status,
    .getlength = vdi_getlength,
    .memory_used = vdi_memory_used,
    .get_info = vdi_get_info,
    .check = vdi_check,
    .get_facts = vdi_get_facts,
    .has_zero_init = vdi_has_zero_init,
    .create = vdi_create,
    .create_options = vdi_create_options,
    .read_map = &vdi_read_map,
};
