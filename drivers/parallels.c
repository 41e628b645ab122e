/* SPDX-License-Identifier: MIT */
/*
 * parallels.c - the Parallels expanding image format driver (version 2).  It owns the Parallels layout:
 * the 64-byte little-endian header (signature "WithoutFreeSpace", whose block allocation table (BAT)
 * counts sectors, or "WithouFreSpacExt", whose BAT counts clusters; cluster size in sectors, BAT length,
 * disk size, in-use marker, data offset, format-extension offset), validated field by field against the
 * file size and a memory budget; the BAT, held in memory; reads and block status with host offsets
 * through bdrv_read_mapped (BAT entry 0: the cluster reads as zeros; there is no backing file); and, on
 * writable nodes, in-place writes to allocated clusters and allocating writes that append a whole new
 * cluster at the end of the data (the data first, then its BAT entry).  The in-use marker is set while a
 * writable node is open and cleared at close.  An image marked in use (not closed cleanly) opens
 * read-only with a warning; a writable open checks every BAT entry first (inside the file, past the
 * BAT, not shared by two clusters) and refuses an image that fails, naming the first problem.  The
 * format extension (dirty bitmaps) is ignored.  It also creates empty images (`imgfuse create -f
 * parallels`).  It knows nothing of FUSE or of other formats.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- the on-disk layout */

#define PRL_MAGIC_OLD "WithoutFreeSpace"  /* BAT entries count 512-byte sectors */
#define PRL_MAGIC_EXT "WithouFreSpacExt"  /* BAT entries count clusters */
#define PRL_MAGIC_LEN 16
#define PRL_VERSION 2
#define PRL_HEADER_BYTES 64

#define PRL_OFF_VERSION    16
#define PRL_OFF_HEADS      20
#define PRL_OFF_CYLINDERS  24
#define PRL_OFF_TRACKS     28
#define PRL_OFF_BAT_COUNT  32
#define PRL_OFF_NB_SECTORS 36
#define PRL_OFF_INUSE      44
#define PRL_OFF_DATA_OFF   48
#define PRL_OFF_FLAGS      52
#define PRL_OFF_EXT_OFF    56

#define PRL_INUSE_OPEN   0x746f6e59u  /* open for writing, not closed cleanly */
#define PRL_INUSE_CLOSED 0x312e3276u

#define PRL_SECTOR 512
/* A cluster of at most 2^22 sectors (2 GiB) keeps every product below in 64 bits; QEMU's own limit is
 * INT32_MAX / 513 sectors. */
#define PRL_MAX_TRACKS (INT32_MAX / 513)
/* The BAT is held in memory: 16 Mi entries are 64 MiB, 16 TiB of disk with the default 1 MiB clusters. */
#define PRL_MAX_BAT_ENTRIES (16u << 20)
/* A new cluster is written whole from one buffer: writable opens refuse larger clusters. */
#define PRL_MAX_WRITABLE_CLUSTER (64 * MiB)
#define PRL_DEFAULT_CLUSTER (1 * MiB)

typedef enum { PRL_UNALLOCATED, PRL_DATA, PRL_BAD } PrlKind;

typedef struct PrlState {
    const char *name;
    BlockNode *file;

    /* header */
    bool ext_magic;           /* "WithouFreSpacExt": BAT entries count clusters */
    uint32_t heads, cylinders, tracks, bat_count, inuse, data_off, flags;
    uint64_t nb_sectors, ext_off;
    uint64_t size, cluster_size, unit;   /* unit: bytes per BAT entry step (a sector or a cluster) */
    uint64_t data_start;                 /* first byte a data cluster may use */

    uint32_t *bat;            /* host byte order; guarded by io_lock on writable nodes */
    uint64_t host_limit;      /* no host byte at or past this offset is in the file */
    int bad_logged;

    /* writable nodes only */
    bool writable;
    pthread_rwlock_t io_lock; /* shared: reads and in-place writes; exclusive: allocations */
    uint64_t data_end;        /* next cluster to allocate */
    uint8_t *new_buf;         /* one cluster, used under the exclusive lock */
} PrlState;

/* ---------------------------------------------------------------- probe */

static int prl_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < PRL_HEADER_BYTES || ld_le32(buf + PRL_OFF_VERSION) != PRL_VERSION)
        return 0;
    if (memcmp(buf, PRL_MAGIC_OLD, PRL_MAGIC_LEN) && memcmp(buf, PRL_MAGIC_EXT, PRL_MAGIC_LEN))
        return 0;
    return 100;
}

/* ---------------------------------------------------------------- header */

static void prl_parse(PrlState *s, const uint8_t *h)
{
    s->ext_magic = memcmp(h, PRL_MAGIC_EXT, PRL_MAGIC_LEN) == 0;
    s->heads = ld_le32(h + PRL_OFF_HEADS);
    s->cylinders = ld_le32(h + PRL_OFF_CYLINDERS);
    s->tracks = ld_le32(h + PRL_OFF_TRACKS);
    s->bat_count = ld_le32(h + PRL_OFF_BAT_COUNT);
    s->nb_sectors = ld_le64(h + PRL_OFF_NB_SECTORS);
    if (!s->ext_magic)
        s->nb_sectors &= UINT32_MAX; /* old images: only the low 32 bits count */
    s->inuse = ld_le32(h + PRL_OFF_INUSE);
    s->data_off = ld_le32(h + PRL_OFF_DATA_OFF);
    s->flags = ld_le32(h + PRL_OFF_FLAGS);
    s->ext_off = ld_le64(h + PRL_OFF_EXT_OFF);
}

static int prl_check_header(PrlState *s, Error *err)
{
    if (s->tracks == 0 || s->tracks > PRL_MAX_TRACKS) {
        error_set(err, EINVAL, "cluster size of %" PRIu32 " sectors is out of range (1 to %d)", s->tracks,
                  PRL_MAX_TRACKS);
        return -EINVAL;
    }
    s->cluster_size = (uint64_t)s->tracks * PRL_SECTOR;
    s->unit = s->ext_magic ? s->cluster_size : PRL_SECTOR;
    if (s->bat_count > PRL_MAX_BAT_ENTRIES) {
        error_set(err, EFBIG, "BAT of %" PRIu32 " entries is larger than the %u entries (%u MiB) limit", s->bat_count,
                  PRL_MAX_BAT_ENTRIES, PRL_MAX_BAT_ENTRIES * 4 >> 20);
        return -EFBIG;
    }
    uint64_t bat_end = PRL_HEADER_BYTES + (uint64_t)s->bat_count * 4;
    if (bat_end > s->host_limit) {
        error_set(err, EINVAL, "BAT of %" PRIu32 " entries extends past the end of the file", s->bat_count);
        return -EINVAL;
    }
    s->data_start = s->data_off ? (uint64_t)s->data_off * PRL_SECTOR : (uint64_t)align_up((int64_t)bat_end, PRL_SECTOR);
    if (s->data_start < bat_end) {
        error_set(err, EINVAL, "data offset of %" PRIu32 " sectors lies inside the BAT", s->data_off);
        return -EINVAL;
    }
    if (s->nb_sectors > (UINT64_MAX >> 10)) {
        error_set(err, EINVAL, "disk size of %" PRIu64 " sectors is out of range", s->nb_sectors);
        return -EINVAL;
    }
    s->size = s->nb_sectors * PRL_SECTOR;
    return 0;
}

static int prl_read_header(PrlState *s, Error *err)
{
    uint8_t h[PRL_HEADER_BYTES];
    int ret = bdrv_read_header(s->file, s->host_limit, h, sizeof(h), "Parallels", err);
    if (ret < 0)
        return ret;
    if (memcmp(h, PRL_MAGIC_OLD, PRL_MAGIC_LEN) && memcmp(h, PRL_MAGIC_EXT, PRL_MAGIC_LEN)) {
        error_set(err, EINVAL, "not a Parallels image (bad signature)");
        return -EINVAL;
    }
    if (ld_le32(h + PRL_OFF_VERSION) != PRL_VERSION) {
        error_set(err, ENOTSUP, "unsupported Parallels version %" PRIu32 " (only 2)", ld_le32(h + PRL_OFF_VERSION));
        return -ENOTSUP;
    }
    prl_parse(s, h);
    return prl_check_header(s, err);
}

static int prl_load_bat(PrlState *s, Error *err)
{
    s->bat = calloc(MAX(s->bat_count, 1u), 4);
    if (!s->bat) {
        error_set(err, ENOMEM, "out of memory for a BAT of %" PRIu32 " entries", s->bat_count);
        return -ENOMEM;
    }
    int ret = bdrv_pread(s->file, PRL_HEADER_BYTES, (int64_t)s->bat_count * 4, s->bat);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the BAT: %s", strerror(-ret));
        return ret;
    }
    for (uint32_t i = 0; i < s->bat_count; i++)
        s->bat[i] = ld_le32(&s->bat[i]);
    return 0;
}

/* ---------------------------------------------------------------- the map */

/* Guest bytes of cluster c inside the disk (the last one may be partial). */
static uint64_t prl_cluster_visible(const PrlState *s, uint64_t c)
{
    return MIN(s->cluster_size, s->size - c * s->cluster_size);
}

/* Whether BAT entry e of cluster c names bytes inside the file, past the BAT. */
static bool prl_entry_ok(const PrlState *s, uint64_t c, uint32_t e, uint64_t *host)
{
    *host = (uint64_t)e * s->unit;
    return *host >= s->data_start && *host <= s->host_limit && s->host_limit - *host >= prl_cluster_visible(s, c);
}

static PrlKind prl_classify(PrlState *s, uint64_t c, uint64_t *host)
{
    *host = 0;
    if (c >= s->bat_count || s->bat[c] == 0)
        return PRL_UNALLOCATED;
    if (!prl_entry_ok(s, c, s->bat[c], host)) {
        if (!__atomic_exchange_n(&s->bad_logged, 1, __ATOMIC_RELAXED))
            log_msg("%s: BAT entry %" PRIu64 " (0x%" PRIx32 ") points into the header or BAT or past the end of the "
                    "file; reads of that cluster fail", s->name, c, s->bat[c]);
        return PRL_BAD;
    }
    return PRL_DATA;
}

/* One run from offset: clusters of one kind, host-contiguous for data. */
static int prl_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    PrlState *s = bs->opaque;
    (void)opaque;
    if (offset < 0 || bytes <= 0 || (uint64_t)offset >= s->size)
        return -EINVAL;
    uint64_t off = (uint64_t)offset, end = MIN(s->size, off + (uint64_t)bytes);
    uint64_t c = off / s->cluster_size, host;
    PrlKind kind = prl_classify(s, c, &host);
    if (kind == PRL_BAD)
        return -EIO;
    uint64_t run_end = MIN(end, (c + 1) * s->cluster_size), next = host + s->cluster_size;
    if (c >= s->bat_count) /* past the BAT: nothing is allocated up to the end */
        run_end = end;
    while (run_end < end) {
        uint64_t h;
        uint64_t rc = run_end / s->cluster_size;
        PrlKind k = prl_classify(s, rc, &h);
        if (k != kind || (k == PRL_DATA && h != next))
            break;
        if (rc >= s->bat_count) {
            run_end = end;
            break;
        }
        next = h + s->cluster_size;
        run_end = MIN(end, run_end + s->cluster_size);
    }
    st->bytes = (int64_t)(run_end - off);
    if (kind == PRL_DATA) {
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)(host + off % s->cluster_size);
        st->host_file = s->file;
    }
    return 0; /* unallocated: no backing node, zeros */
}

/* Reads and block status hold it shared, allocations exclusive; only a writable image has one. */
static pthread_rwlock_t *prl_lock(BlockNode *bs)
{
    PrlState *s = bs->opaque;
    return s->writable ? &s->io_lock : NULL;
}

static const BlockReadMap prl_read_map = { .map = prl_map, .lock = prl_lock };

static int64_t prl_getlength(BlockNode *bs)
{
    return (int64_t)((PrlState *)bs->opaque)->size;
}

/* ---------------------------------------------------------------- check */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Every BAT entry inside the file past the BAT, and no two naming overlapping bytes: 0, or the number of
 * problems with the first one in first; -errno. *end: the end of the last cluster in use. Entries are
 * sorted in a copy (4 bytes each, as the BAT itself): host offsets grow with the entries. */
static int prl_check_bat(PrlState *s, char *first, size_t len, uint64_t *end)
{
    uint32_t *used = malloc((size_t)MAX(s->bat_count, 1u) * 4), n = 0;
    uint64_t host;
    if (!used)
        return -ENOMEM;
    int problems = 0;
    *end = s->data_start;
    for (uint32_t i = 0; i < s->bat_count; i++) {
        if (s->bat[i] == 0)
            continue;
        if (!prl_entry_ok(s, i, s->bat[i], &host)) {
            if (!problems++)
                snprintf(first, len, "BAT entry %" PRIu32 " (0x%" PRIx32 ") points into the header or BAT or past "
                         "the end of the file", i, s->bat[i]);
            continue;
        }
        used[n++] = s->bat[i];
        *end = MAX(*end, host + s->cluster_size);
    }
    qsort(used, n, 4, cmp_u32);
    for (uint32_t i = 1; i < n; i++)
        if ((uint64_t)(used[i] - used[i - 1]) * s->unit < s->cluster_size && !problems++)
            snprintf(first, len, "two BAT entries share the cluster at 0x%" PRIx64, (uint64_t)used[i] * s->unit);
    free(used);
    return problems;
}

/* A bad BAT entry made 0 on disk and in memory (its cluster then reads as zeros): -r all. */
static int prl_check_clear_entry(PrlState *s, uint32_t i)
{
    int ret = bdrv_pwrite_field(s->file, (int64_t)(PRL_HEADER_BYTES + (uint64_t)i * 4), BDRV_FIELD_LE32, 0,
                                "parallels_bat_update");
    if (ret == 0)
        s->bat[i] = 0;
    return ret;
}

/* Bad entries (into the header or BAT, past the end of the file) are corruptions, repaired by -r all;
 * clusters two entries share too, not repaired. Fills the cluster statistics; *bad: bad entries left. */
static int prl_check_entries(PrlState *s, BlockCheckResult *res, int fix, int *bad)
{
    uint64_t host, prev = 0;
    *bad = 0;
    for (uint32_t i = 0; i < s->bat_count; i++) {
        if (s->bat[i] == 0)
            continue;
        if (prl_entry_ok(s, i, s->bat[i], &host)) {
            res->allocated_clusters++;
            res->fragmented_clusters += prev && host != prev + s->cluster_size;
            prev = host;
            continue;
        }
        if (!(fix & BDRV_FIX_ERRORS)) {
            bdrv_check_corruption(res, "BAT entry %" PRIu32 " (0x%" PRIx32 ") points into the header or BAT or past "
                                  "the end of the file", i, s->bat[i]);
            (*bad)++;
            continue;
        }
        int ret = prl_check_clear_entry(s, i);
        if (ret < 0)
            return ret;
        res->corruptions_fixed++;
    }
    return 0;
}

/* qemu-img's terms: an in-use flag left set (not closed cleanly) and bad or shared BAT entries are
 * corruptions, the bytes past the last cluster in use leaks (whole clusters). -r all clears bad entries
 * (the in-use flag is cleared by the writable node's close), -r leaks cuts the file after the last
 * cluster. */
static int prl_check_run(BlockNode *bs, BlockCheckResult *res, int fix)
{
    PrlState *s = bs->opaque;
    char first[256] = "";
    uint64_t end;
    if (s->inuse == PRL_INUSE_OPEN) {
        if (fix & BDRV_FIX_ERRORS)
            res->corruptions_fixed++;
        else
            bdrv_check_corruption(res, "the image was not closed cleanly (in-use flag set)");
    }
    int bad;
    int ret = prl_check_entries(s, res, fix, &bad);
    int problems = ret < 0 ? ret : prl_check_bat(s, first, sizeof(first), &end);
    if (problems < 0)
        return problems;
    for (int k = bad; k < problems; k++) /* the shared clusters: the bad entries are counted already */
        bdrv_check_corruption(res, "%s", first);
    if (s->ext_off) /* the format extension cluster (sectors) is in use too */
        end = MAX(end, MIN(s->ext_off * PRL_SECTOR + s->cluster_size, s->host_limit));
    res->total_clusters = s->bat_count;
    res->image_end_offset = (int64_t)end;
    if (s->host_limit > end) {
        uint64_t count = (s->host_limit - end + s->cluster_size - 1) / s->cluster_size;
        if (fix & BDRV_FIX_LEAKS) {
            ret = bdrv_truncate(s->file, (int64_t)end);
            if (ret < 0)
                return ret;
            s->host_limit = end;
            s->data_end = (uint64_t)align_up((int64_t)end, (int64_t)(s->ext_magic ? s->cluster_size : PRL_SECTOR));
            res->leaks_fixed += (int64_t)count;
        } else {
            bdrv_check_leak(res, "%" PRIu64 " bytes past the last cluster in use", s->host_limit - end);
            res->leaks += (int64_t)count - 1;
        }
    }
    return 0;
}

static int prl_check(BlockNode *bs, BlockCheckResult *res, int fix)
{
    if (fix == BDRV_FIX_QUERY)
        return 0;
    return bdrv_check_mapped(bs, res, fix, prl_check_run);
}

/* ---------------------------------------------------------------- writable open, close */

static int prl_write_inuse(PrlState *s, uint32_t v)
{
    int ret = bdrv_pwrite_field(s->file, PRL_OFF_INUSE, BDRV_FIELD_LE32, v, "parallels_header_update");
    if (ret == 0)
        ret = bdrv_flush(s->file);
    return ret;
}

static int prl_open_writable(PrlState *s, bool repair, Error *err)
{
    if (s->cluster_size > PRL_MAX_WRITABLE_CLUSTER || (s->ext_magic && s->data_start % s->cluster_size)) {
        error_set(err, ENOTSUP, "clusters of %" PRIu64 " bytes larger than %lld MiB, or a data offset that is not "
                  "cluster aligned, cannot be written; open the image read-only", s->cluster_size,
                  PRL_MAX_WRITABLE_CLUSTER / MiB);
        return -ENOTSUP;
    }
    char first[256] = "";
    int ret = prl_check_bat(s, first, sizeof(first), &s->data_end);
    if (ret < 0) {
        error_set(err, -ret, "BAT check failed: %s", strerror(-ret));
        return ret;
    }
    if (ret > 0 && !repair) {
        error_set(err, EINVAL, "%s (%d problem%s); the image can only be opened read-only", first, ret,
                  ret == 1 ? "" : "s");
        return -EINVAL;
    }
    /* new clusters go past everything in the file (the extension cluster, leaked clusters included) */
    uint64_t align = s->ext_magic ? s->cluster_size : PRL_SECTOR;
    s->data_end = MAX(s->data_end, (uint64_t)align_up((int64_t)s->host_limit, (int64_t)align));
    if (s->inuse == PRL_INUSE_OPEN)
        log_msg("%s: the image was not closed cleanly (in-use flag set); its BAT checks out, opened read-write", s->name);
    if (s->ext_off)
        log_msg("%s: the format extension (dirty bitmaps) is ignored and not updated by writes", s->name);
    if (!(s->new_buf = malloc(s->cluster_size))) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    ret = prl_write_inuse(s, PRL_INUSE_OPEN);
    if (ret < 0) {
        error_set(err, -ret, "cannot set the in-use flag: %s", strerror(-ret));
        return ret;
    }
    pthread_rwlock_init(&s->io_lock, NULL);
    s->writable = true;
    return 0;
}

static void prl_close(BlockNode *bs)
{
    PrlState *s = bs->opaque;
    if (!s->name)
        return;
    if (s->writable) {
        if (bdrv_flush(s->file) == 0 && prl_write_inuse(s, PRL_INUSE_CLOSED) < 0)
            log_msg("%s: cannot clear the in-use flag", s->name);
        pthread_rwlock_destroy(&s->io_lock);
    }
    free(s->bat);
    free(s->new_buf);
    memset(s, 0, sizeof(*s));
}

static int prl_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    PrlState *s = bs->opaque;
    s->name = bs->filename ? bs->filename : "parallels";
    s->file = bs->file;
    int64_t file_size;
    int ret = bdrv_file_size(bs->file, &file_size, err);
    if (ret == 0) {
        s->host_limit = (uint64_t)file_size;
        ret = prl_read_header(s, err);
    }
    if (ret == 0)
        ret = prl_load_bat(s, err);
    if (ret == 0 && !bs->read_only)
        ret = prl_open_writable(s, opts && opts->check_repair, err);
    else if (ret == 0 && s->inuse == PRL_INUSE_OPEN)
        log_msg("%s: the image was not closed cleanly (in-use flag set); served read-only as it is", s->name);
    if (ret < 0) {
        free(s->bat);
        free(s->new_buf);
        memset(s, 0, sizeof(*s));
        return ret;
    }
    bs->request_alignment = 1;
    return 0;
}

/* ---------------------------------------------------------------- write */

/* Writes [in, in + n) of unallocated cluster c into a new cluster at the end of the data, then its BAT
 * entry. Caller holds the exclusive lock. */
static int prl_allocate_write(PrlState *s, uint64_t c, uint64_t in, uint64_t n, const uint8_t *p)
{
    uint64_t host;
    PrlKind k = prl_classify(s, c, &host);
    if (k == PRL_BAD)
        return -EIO;
    if (k == PRL_DATA) /* another writer allocated it meanwhile */
        return bdrv_pwrite(s->file, (int64_t)(host + in), (int64_t)n, p, 0);
    if (c >= s->bat_count || s->data_end / s->unit > UINT32_MAX)
        return -ENOSPC;
    host = s->data_end;
    const uint8_t *src = p;
    if (in != 0 || n != s->cluster_size) {
        memset(s->new_buf, 0, s->cluster_size);
        memcpy(s->new_buf + in, p, n);
        src = s->new_buf;
    }
    int ret = bdrv_pwrite(s->file, (int64_t)host, (int64_t)s->cluster_size, src, 0);
    if (ret < 0)
        return ret;
    s->data_end += s->cluster_size;
    s->host_limit = MAX(s->host_limit, s->data_end);
    uint32_t e = (uint32_t)(host / s->unit);
    ret = bdrv_pwrite_field(s->file, (int64_t)(PRL_HEADER_BYTES + c * 4), BDRV_FIELD_LE32, e, "parallels_bat_update");
    if (ret == 0)
        s->bat[c] = e;
    return ret;
}

static int prl_write_place(BlockNode *bs, uint64_t off, uint64_t left, uint64_t *n, uint64_t *host)
{
    PrlState *s = bs->opaque;
    uint64_t in = off % s->cluster_size;
    *n = MIN(left, s->cluster_size - in);
    PrlKind k = prl_classify(s, off / s->cluster_size, host);
    if (k == PRL_BAD)
        return -EIO;
    *host += in;
    return k == PRL_DATA;
}

static int prl_write_allocate(BlockNode *bs, uint64_t off, uint64_t left, const void *buf, uint64_t *n)
{
    PrlState *s = bs->opaque;
    (void)left;
    return prl_allocate_write(s, off / s->cluster_size, off % s->cluster_size, *n, buf);
}

static const BlockWriteMap prl_write_map = { .place = prl_write_place, .allocate = prl_write_allocate };

/* ---------------------------------------------------------------- create */

static const BlockOptionSpec prl_create_options[] = {
    { "cluster_size", BDRV_OPT_SIZE, 0, "cluster size, a multiple of 512 up to 64M (default 1M)" },
    { NULL, 0, 0, NULL },
};

typedef struct PrlCreateParse {
    uint64_t *cluster;
    const char *filename;
    Error *err;
} PrlCreateParse;

static int prl_create_option(const char *key, const char *value, void *opaque)
{
    PrlCreateParse *c = opaque;
    int64_t v = value ? parse_size(value) : -1;
    if (!value || strcmp(key, "cluster_size")) {
        error_set(c->err, EINVAL, "%s: unknown parallels creation option '%s'", c->filename, key);
        return -EINVAL;
    }
    if (v < PRL_SECTOR || v % PRL_SECTOR || v > PRL_MAX_WRITABLE_CLUSTER) {
        error_set(c->err, EINVAL, "%s: cluster_size must be a multiple of 512 up to 64M, not '%s'", c->filename, value);
        return -EINVAL;
    }
    *c->cluster = (uint64_t)v;
    return 0;
}

static int prl_create_parse(const char *options, uint64_t *cluster, const char *filename, Error *err)
{
    *cluster = PRL_DEFAULT_CLUSTER;
    PrlCreateParse c = { .cluster = cluster, .filename = filename, .err = err };
    return bdrv_create_opts_each(options, prl_create_option, &c);
}

/* Header and a zeroed BAT, the data starting at the next cluster (qemu-img's layout), *len bytes; NULL: no
 * memory. */
static uint8_t *prl_new_image(uint64_t size, uint64_t cluster, uint64_t *len)
{
    uint64_t tracks = cluster / PRL_SECTOR, nb = size / PRL_SECTOR, bat = (nb + tracks - 1) / tracks;
    uint64_t data = (uint64_t)align_up((int64_t)(PRL_HEADER_BYTES + bat * 4), (int64_t)cluster);
    uint8_t *img = calloc(1, data);
    if (!img)
        return NULL;
    memcpy(img, PRL_MAGIC_EXT, PRL_MAGIC_LEN);
    st_le32(img + PRL_OFF_VERSION, PRL_VERSION);
    st_le32(img + PRL_OFF_HEADS, 16);
    st_le32(img + PRL_OFF_CYLINDERS, (uint32_t)MIN(nb / (16 * 32), UINT32_MAX));
    st_le32(img + PRL_OFF_TRACKS, (uint32_t)tracks);
    st_le32(img + PRL_OFF_BAT_COUNT, (uint32_t)bat);
    st_le64(img + PRL_OFF_NB_SECTORS, nb);
    st_le32(img + PRL_OFF_DATA_OFF, (uint32_t)(data / PRL_SECTOR));
    *len = data;
    return img;
}

static int prl_create(const char *filename, const CreateOpts *opts, Error *err)
{
    uint64_t cluster;
    int ret = prl_create_parse(opts->options, &cluster, filename, err);
    uint64_t size = (uint64_t)align_up(MAX(opts->size, 0), PRL_SECTOR);
    if (ret == 0 && (opts->size <= 0 || (size / cluster + 1) > PRL_MAX_BAT_ENTRIES ||
                     (size + cluster) / PRL_SECTOR > UINT32_MAX * (cluster / PRL_SECTOR))) {
        error_set(err, EINVAL, "%s: invalid virtual size for parallels (1 byte to %u clusters)", filename,
                  PRL_MAX_BAT_ENTRIES);
        ret = -EINVAL;
    }
    uint64_t len = 0;
    uint8_t *img = ret == 0 ? prl_new_image(size, cluster, &len) : NULL;
    if (ret == 0)
        ret = img ? bdrv_create_image_file(filename, img, len, err) : -ENOMEM;
    free(img);
    return ret;
}

/* ---------------------------------------------------------------- info */

static bool prl_has_zero_init(BlockNode *bs)
{
    (void)bs;
    return true;
}

static void prl_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    PrlState *s = bs->opaque;
    facts->cluster_size = (int64_t)s->cluster_size;
    facts->dirty = s->inuse == PRL_INUSE_OPEN;
    facts->no_qemu_info = true;
}

static void prl_get_info(BlockNode *bs, InfoList *info)
{
    PrlState *s = bs->opaque;
    info_add_str(info, "signature", "%s", s->ext_magic ? PRL_MAGIC_EXT : PRL_MAGIC_OLD);
    info_add_int(info, "cluster_size", (int64_t)s->cluster_size);
    info_add_str(info, "bat_unit", "%s", s->ext_magic ? "cluster" : "sector");
    info_add_int(info, "bat_entries", s->bat_count);
    info_add_int(info, "data_offset", (int64_t)s->data_start);
    info_add_int(info, "heads", s->heads);
    info_add_int(info, "cylinders", s->cylinders);
    info_add_bool(info, "in_use", s->inuse == PRL_INUSE_OPEN);
    info_add_bool(info, "format_extension", s->ext_off != 0);
}

static int64_t prl_memory_used(BlockNode *bs)
{
    PrlState *s = bs->opaque;
    return (int64_t)sizeof(*s) + (int64_t)s->bat_count * 4 + (s->new_buf ? (int64_t)s->cluster_size : 0);
}

const BlockDriver bdrv_parallels = {
    .name = "parallels",
    .instance_size = sizeof(PrlState),
    .probe = prl_probe,
    .open = prl_open,
    .close = prl_close,
    .read = bdrv_mapped_read,
    .write = bdrv_mapped_write,
    .block_status = bdrv_mapped_block_status,
    .getlength = prl_getlength,
    .memory_used = prl_memory_used,
    .get_info = prl_get_info,
    .get_facts = prl_get_facts,
    .check = prl_check,
    .create = prl_create,
    .create_options = prl_create_options,
    .read_map = &prl_read_map,
    .write_map = &prl_write_map,
    .has_zero_init = prl_has_zero_init,
};
