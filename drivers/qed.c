/* SPDX-License-Identifier: MIT */
/*
 * qed.c - the QED (QEMU Enhanced Disk) format driver.  It owns the QED layout: the little-endian header
 * in the first header_size clusters (magic "QED\0", cluster and table sizes, feature bits, the L1 table
 * offset, the guest size and the backing file name), validated field by field against the file size
 * before anything is trusted; the two-level tables (an L1 table held in memory for the part of the disk
 * that exists, L2 tables read through a small LRU cache of fixed-size slices, so memory stays bounded
 * whatever the table size); reads and block status with host offsets, falling through to the backing
 * file for unallocated clusters and reading zeros for zero clusters (L2 entry 1); and, on writable nodes,
 * in-place writes to allocated clusters and allocating writes that append clusters at the end of the
 * file (data, then a new L2 table, then the L1 entry, each flushed before the next names it), filling
 * the rest of a new cluster from the backing file; write-zeroes and discard as zero clusters; and `create`
 * with qemu-img's layout.  The QED_F_NEED_CHECK header bit is set before the
 * first allocation and cleared at flush; a writable open checks every table entry first and refuses an
 * inconsistent image, a read-only open of a flagged image warns once and serves it.  It knows nothing of
 * FUSE or of other formats.
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

#define QED_MAGIC 0x00444551u /* "QED\0" read little-endian */

#define QED_OFF_MAGIC          0
#define QED_OFF_CLUSTER_SIZE   4
#define QED_OFF_TABLE_SIZE     8
#define QED_OFF_HEADER_SIZE    12
#define QED_OFF_FEATURES       16
#define QED_OFF_COMPAT         24
#define QED_OFF_AUTOCLEAR      32
#define QED_OFF_L1_OFFSET      40
#define QED_OFF_IMAGE_SIZE     48
#define QED_OFF_BACKING_OFFSET 56
#define QED_OFF_BACKING_SIZE   60
#define QED_HEADER_BYTES       64

#define QED_F_BACKING_FILE            UINT64_C(0x1)
#define QED_F_NEED_CHECK              UINT64_C(0x2)
#define QED_F_BACKING_FORMAT_NO_PROBE UINT64_C(0x4)
#define QED_F_KNOWN (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE)

#define QED_MIN_CLUSTER (4 * KiB)
#define QED_MAX_CLUSTER (64 * MiB)
#define QED_MAX_TABLE   16
/* The header area (header_size clusters) is never read whole; this only keeps its size sane. */
#define QED_MAX_HEADER_BYTES (64 * MiB)
/* The part of the L1 table held in memory grows with the square root of the disk size: 1 PiB with the
 * smallest clusters needs 512 Ki entries (4 MiB). */
#define QED_MAX_IMAGE_SIZE (1ull << 50)
#define QED_MAX_BACKING_NAME 1023
/* Every allocation of a new L2 table writes a whole table; writable opens refuse larger tables. */
#define QED_MAX_WRITABLE_TABLE (64 * MiB)

#define QED_ENTRY_ZERO 1ull

/* L2 cache: slices of at most this many bytes, at most QED_CACHE_BYTES in all. */
#define QED_SLICE_MAX_BYTES (64 * KiB)
#define QED_CACHE_BYTES     (4 * MiB)
#define QED_CACHE_MAX_SLICES 256

typedef enum { QED_UNALLOCATED, QED_ZERO, QED_DATA, QED_BAD } QedKind;

typedef struct QedSlice {
    uint64_t file_offset;  /* where the slice starts in the file; valid only if entries != NULL */
    uint64_t last_use;
    uint64_t *entries;     /* host byte order */
} QedSlice;

typedef struct QedState {
    const char *name;
    BlockNode *file;
    BlockNode *bs;

    /* header */
    uint32_t cluster_size, cluster_bits, table_size, header_size;
    uint64_t features, compat_features, autoclear_features;
    uint64_t l1_offset, image_size;
    uint64_t table_bytes, table_entries;  /* one L1 or L2 table */
    uint64_t data_start;                  /* end of the header area */

    uint64_t *l1;          /* the first l1_used entries of the L1 table, host byte order */
    uint64_t l1_used;
    uint64_t host_limit;   /* no host byte at or past this offset is in the file */

    /* L2 slice cache, guarded by cache_lock */
    pthread_mutex_t cache_lock;
    QedSlice *slices;
    int n_slices;
    uint64_t slice_bytes, slice_entries, use_clock;

    int bad_entry_logged;

    /* writable nodes only */
    bool writable;
    pthread_rwlock_t io_lock;  /* shared: reads and in-place writes; exclusive: allocating writes, flush */
    uint64_t file_end;         /* next cluster to allocate, cluster aligned */
    bool need_check_set;       /* this session set QED_F_NEED_CHECK on disk */
    uint8_t *cow_buf;          /* one cluster, used under the exclusive lock */
} QedState;

/* ---------------------------------------------------------------- probe */

static int qed_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < QED_HEADER_BYTES || ld_le32(buf + QED_OFF_MAGIC) != QED_MAGIC)
        return 0;
    return 100;
}

/* ---------------------------------------------------------------- header */

static int qed_check_sizes(QedState *s, Error *err)
{
    if (!is_pow2(s->cluster_size) || s->cluster_size < QED_MIN_CLUSTER || s->cluster_size > QED_MAX_CLUSTER) {
        error_set(err, EINVAL, "cluster size %" PRIu32 " is not a power of two from 4 KiB to 64 MiB",
                  s->cluster_size);
        return -EINVAL;
    }
    s->cluster_bits = (uint32_t)__builtin_ctz(s->cluster_size);
    if (!is_pow2(s->table_size) || s->table_size > QED_MAX_TABLE) {
        error_set(err, EINVAL, "table size %" PRIu32 " is not a power of two from 1 to 16 clusters",
                  s->table_size);
        return -EINVAL;
    }
    if (s->header_size == 0 || (uint64_t)s->header_size * s->cluster_size > QED_MAX_HEADER_BYTES) {
        error_set(err, EINVAL, "header size of %" PRIu32 " clusters is out of range", s->header_size);
        return -EINVAL;
    }
    s->data_start = (uint64_t)s->header_size * s->cluster_size;
    s->table_bytes = (uint64_t)s->table_size * s->cluster_size;
    s->table_entries = s->table_bytes / 8;
    /* entries^2 * cluster_size may not fit in 64 bits: compare in steps */
    uint64_t per_l1 = s->table_entries * s->cluster_size, max_size;
    if (!mul_ok_u64(per_l1, s->table_entries, &max_size))
        max_size = UINT64_MAX;
    if (s->image_size % 512 || s->image_size > max_size || s->image_size > QED_MAX_IMAGE_SIZE) {
        error_set(err, EINVAL, "image size %" PRIu64 " is not a multiple of 512 or larger than the tables "
                  "can address (or than 1 PiB)", s->image_size);
        return -EINVAL;
    }
    s->l1_used = (s->image_size + per_l1 - 1) / per_l1;
    return 0;
}

static int qed_check_layout(QedState *s, uint64_t file_size, Error *err)
{
    if (s->features & ~QED_F_KNOWN) {
        error_set(err, ENOTSUP, "unknown incompatible QED feature bits 0x%" PRIx64 " (known: backing_file, "
                  "need_check, backing_format_no_probe)", s->features & ~QED_F_KNOWN);
        return -ENOTSUP;
    }
    if (s->l1_offset % s->cluster_size || s->l1_offset < s->data_start) {
        error_set(err, EINVAL, "L1 table offset 0x%" PRIx64 " is not cluster aligned or lies in the header",
                  s->l1_offset);
        return -EINVAL;
    }
    if (s->l1_offset > file_size || file_size - s->l1_offset < s->table_bytes) {
        error_set(err, EINVAL, "L1 table extends past the end of the file");
        return -EINVAL;
    }
    return 0;
}

static int qed_read_backing_name(QedState *s, const uint8_t *h, BlockNode *bs, Error *err)
{
    if (!(s->features & QED_F_BACKING_FILE))
        return 0;
    uint32_t off = ld_le32(h + QED_OFF_BACKING_OFFSET), size = ld_le32(h + QED_OFF_BACKING_SIZE);
    if (size == 0 || size > QED_MAX_BACKING_NAME || off < QED_HEADER_BYTES ||
        (uint64_t)off + size > s->data_start) {
        error_set(err, EINVAL, "backing file name (offset %" PRIu32 ", %" PRIu32 " bytes) lies outside the "
                  "header or is longer than %d bytes", off, size, QED_MAX_BACKING_NAME);
        return -EINVAL;
    }
    char name[QED_MAX_BACKING_NAME + 1];
    int ret = bdrv_pread(s->file, off, size, name);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the backing file name: %s", strerror(-ret));
        return ret;
    }
    name[size] = '\0';
    if (strlen(name) != size) {
        error_set(err, EINVAL, "backing file name contains a NUL byte");
        return -EINVAL;
    }
    bs->backing_name = strdup(name);
    if (s->features & QED_F_BACKING_FORMAT_NO_PROBE)
        bs->backing_format_hint = strdup("raw");
    if (!bs->backing_name || ((s->features & QED_F_BACKING_FORMAT_NO_PROBE) && !bs->backing_format_hint)) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static int qed_read_header(QedState *s, BlockNode *bs, uint64_t file_size, Error *err)
{
    uint8_t h[QED_HEADER_BYTES];
    int ret = bdrv_read_header(s->file, file_size, h, sizeof(h), "QED", err);
    if (ret < 0)
        return ret;
    if (ld_le32(h + QED_OFF_MAGIC) != QED_MAGIC) {
        error_set(err, EINVAL, "not a QED image (bad magic)");
        return -EINVAL;
    }
    s->cluster_size = ld_le32(h + QED_OFF_CLUSTER_SIZE);
    s->table_size = ld_le32(h + QED_OFF_TABLE_SIZE);
    s->header_size = ld_le32(h + QED_OFF_HEADER_SIZE);
    s->features = ld_le64(h + QED_OFF_FEATURES);
    s->compat_features = ld_le64(h + QED_OFF_COMPAT);
    s->autoclear_features = ld_le64(h + QED_OFF_AUTOCLEAR);
    s->l1_offset = ld_le64(h + QED_OFF_L1_OFFSET);
    s->image_size = ld_le64(h + QED_OFF_IMAGE_SIZE);
    ret = qed_check_sizes(s, err);
    if (ret == 0)
        ret = qed_check_layout(s, file_size, err);
    if (ret == 0)
        ret = qed_read_backing_name(s, h, bs, err);
    return ret;
}

static int qed_write_features(QedState *s, uint64_t features)
{
    int ret = bdrv_pwrite_field(s->file, QED_OFF_FEATURES, BDRV_FIELD_LE64, features, "qed_header_update");
    if (ret == 0)
        s->features = features;
    return ret;
}

/* ---------------------------------------------------------------- tables */

static int qed_load_l1(QedState *s, Error *err)
{
    s->l1 = calloc(MAX(s->l1_used, (uint64_t)1), sizeof(uint64_t));
    if (!s->l1) {
        error_set(err, ENOMEM, "out of memory for an L1 table of %" PRIu64 " entries", s->l1_used);
        return -ENOMEM;
    }
    int ret = s->l1_used ? bdrv_pread(s->file, (int64_t)s->l1_offset, (int64_t)(s->l1_used * 8), s->l1) : 0;
    if (ret < 0) {
        error_set(err, -ret, "cannot read the L1 table: %s", strerror(-ret));
        return ret;
    }
    for (uint64_t i = 0; i < s->l1_used; i++)
        s->l1[i] = ld_le64(&s->l1[i]);
    return 0;
}

static int qed_init_cache(QedState *s, Error *err)
{
    s->slice_bytes = MIN(s->table_bytes, (uint64_t)QED_SLICE_MAX_BYTES);
    s->slice_entries = s->slice_bytes / 8;
    s->n_slices = (int)MIN((uint64_t)QED_CACHE_MAX_SLICES, QED_CACHE_BYTES / s->slice_bytes);
    s->slices = calloc((size_t)s->n_slices, sizeof(QedSlice));
    if (!s->slices) {
        error_set(err, ENOMEM, "out of memory for the L2 cache");
        return -ENOMEM;
    }
    return 0;
}

/* Whether [off, off + len) overlaps the L1 table. */
static bool qed_hits_l1(const QedState *s, uint64_t off, uint64_t len)
{
    return off < s->l1_offset + s->table_bytes && s->l1_offset < off + len;
}

/* A table (L2) offset is usable if aligned, past the header, clear of the L1 table and the whole table
 * lies in the file. */
static bool qed_table_offset_ok(const QedState *s, uint64_t off)
{
    return off % s->cluster_size == 0 && off >= s->data_start && off <= s->host_limit &&
           s->host_limit - off >= s->table_bytes && !qed_hits_l1(s, off, s->table_bytes);
}

/* Caller holds cache_lock. Returns the slice holding file offset slice_off, reading it on a miss. */
static int qed_get_slice(QedState *s, uint64_t slice_off, QedSlice **out)
{
    QedSlice *victim = &s->slices[0];
    for (int i = 0; i < s->n_slices; i++) {
        QedSlice *sl = &s->slices[i];
        if (sl->entries && sl->file_offset == slice_off) {
            sl->last_use = ++s->use_clock;
            *out = sl;
            return 0;
        }
        if (!sl->entries || (victim->entries && sl->last_use < victim->last_use))
            victim = sl;
    }
    if (!victim->entries) {
        victim->entries = malloc(s->slice_bytes);
        if (!victim->entries)
            return -ENOMEM;
    }
    victim->file_offset = UINT64_MAX;
    int ret = bdrv_pread(s->file, (int64_t)slice_off, (int64_t)s->slice_bytes, victim->entries);
    if (ret < 0)
        return ret;
    for (uint64_t i = 0; i < s->slice_entries; i++)
        victim->entries[i] = ld_le64(&victim->entries[i]);
    victim->file_offset = slice_off;
    victim->last_use = ++s->use_clock;
    *out = victim;
    return 0;
}

/* Drops cached slices overlapping [off, off + len) of the file: they are reread after an L2 update. */
static void qed_invalidate_slices(QedState *s, uint64_t off, uint64_t len)
{
    pthread_mutex_lock(&s->cache_lock);
    for (int i = 0; i < s->n_slices; i++) {
        QedSlice *sl = &s->slices[i];
        if (sl->entries && sl->file_offset < off + len && off < sl->file_offset + s->slice_bytes)
            sl->file_offset = UINT64_MAX, sl->last_use = 0;
    }
    pthread_mutex_unlock(&s->cache_lock);
}

static void qed_log_bad(QedState *s, const char *what, uint64_t cluster, uint64_t entry)
{
    if (!__atomic_exchange_n(&s->bad_entry_logged, 1, __ATOMIC_RELAXED))
        log_msg("%s: %s for guest cluster %" PRIu64 " (0x%" PRIx64 ") is unaligned, in the header or L1 table or past "
                "the end of the file; reads of that range fail", s->name, what, cluster, entry);
}

/* The raw L2 entry of guest cluster c (0 when its L2 table is unallocated). */
static int qed_l2_entry(QedState *s, uint64_t c, uint64_t *entry)
{
    uint64_t l1i = c / s->table_entries, l2i = c % s->table_entries;
    uint64_t l2 = s->l1[l1i];
    *entry = 0;
    if (l2 == 0)
        return 0;
    if (!qed_table_offset_ok(s, l2)) {
        qed_log_bad(s, "L1 entry", c, l2);
        return -EIO;
    }
    uint64_t slice_off = l2 + l2i / s->slice_entries * s->slice_bytes;
    pthread_mutex_lock(&s->cache_lock);
    QedSlice *sl;
    int ret = qed_get_slice(s, slice_off, &sl);
    if (ret == 0)
        *entry = sl->entries[l2i % s->slice_entries];
    pthread_mutex_unlock(&s->cache_lock);
    return ret;
}

/* Guest bytes of cluster c inside the disk (the last cluster may be partly outside it). */
static uint64_t qed_cluster_visible(const QedState *s, uint64_t c)
{
    return MIN((uint64_t)s->cluster_size, s->image_size - (c << s->cluster_bits));
}

static bool qed_data_offset_ok(const QedState *s, uint64_t host, uint64_t c)
{
    return host % s->cluster_size == 0 && host >= s->data_start && host <= s->host_limit &&
           s->host_limit - host >= qed_cluster_visible(s, c) && !qed_hits_l1(s, host, s->cluster_size);
}

/* What an L2 entry e of guest cluster c says; for data, *host is its file offset. */
static QedKind qed_entry_kind(QedState *s, uint64_t c, uint64_t e, uint64_t *host)
{
    *host = 0;
    if (e == 0)
        return QED_UNALLOCATED;
    if (e == QED_ENTRY_ZERO)
        return QED_ZERO;
    if (!qed_data_offset_ok(s, e, c)) {
        qed_log_bad(s, "L2 entry", c, e);
        return QED_BAD;
    }
    *host = e;
    return QED_DATA;
}

/* What guest cluster c is; for data, *host is its file offset. -errno in *err_out for failures. */
static QedKind qed_classify(QedState *s, uint64_t c, uint64_t *host, int *err_out)
{
    uint64_t e;
    *host = 0;
    *err_out = qed_l2_entry(s, c, &e);
    if (*err_out < 0)
        return QED_BAD;
    QedKind kind = qed_entry_kind(s, c, e, host);
    if (kind == QED_BAD)
        *err_out = -EIO;
    return kind;
}

/* A run being built by qed_map_run: its kind, clusters so far, and the host offset it continues at. */
typedef struct QedRun {
    QedKind kind;
    uint64_t clusters, next_host;
} QedRun;

/* Adds one cluster of kind k (host h) to the run; false if it does not continue it. */
static bool qed_run_extend(QedState *s, QedRun *r, QedKind k, uint64_t h)
{
    if (r->clusters && (k != r->kind || k == QED_BAD || (k == QED_DATA && h != r->next_host)))
        return false;
    r->kind = k;
    r->next_host = h + s->cluster_size;
    r->clusters++;
    return true;
}

/* Extends the run over the clusters from c on (at most max) that one L2 table maps. Returns the clusters
 * added; stops early when the run ends (*stop). */
static uint64_t qed_run_in_table(QedState *s, QedRun *r, uint64_t c, uint64_t max, bool *stop, int *err)
{
    uint64_t l2 = s->l1[c / s->table_entries], l2i = c % s->table_entries;
    uint64_t span = MIN(max, s->table_entries - l2i);
    if (l2 == 0) { /* a whole unallocated table: no per-cluster work */
        if (r->clusters && r->kind != QED_UNALLOCATED) {
            *stop = true;
            return 0;
        }
        r->kind = QED_UNALLOCATED;
        r->clusters += span;
        return span;
    }
    if (!qed_table_offset_ok(s, l2)) {
        qed_log_bad(s, "L1 entry", c, l2);
        *stop = true;
        if (r->clusters)
            return 0;
        *err = -EIO;
        r->kind = QED_BAD;
        r->clusters = 1;
        return 1;
    }
    uint64_t done = 0;
    pthread_mutex_lock(&s->cache_lock);
    while (done < span && !*stop) {
        QedSlice *sl;
        uint64_t idx = l2i + done, in_slice = idx % s->slice_entries;
        int ret = qed_get_slice(s, l2 + idx / s->slice_entries * s->slice_bytes, &sl);
        if (ret < 0) {
            *stop = true;
            if (!r->clusters) {
                *err = ret;
                r->kind = QED_BAD;
                r->clusters = 1;
                done++;
            }
            break;
        }
        for (uint64_t j = in_slice; j < s->slice_entries && done < span; j++) {
            uint64_t h;
            QedKind k = qed_entry_kind(s, c + done, sl->entries[j], &h);
            if (!qed_run_extend(s, r, k, h)) {
                *stop = true;
                break;
            }
            done++;
            if (k == QED_BAD) {
                *err = -EIO;
                *stop = true;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->cache_lock);
    return done;
}

/* The run from guest offset on (at most max bytes) of clusters of one kind, host-contiguous for data:
 * its length in *run and, for data, its host offset in *host. A bad entry is a run of one cluster. */
static QedKind qed_map_run(QedState *s, uint64_t offset, uint64_t max, uint64_t *run, uint64_t *host, int *err)
{
    uint64_t c0 = offset >> s->cluster_bits, in = offset & (s->cluster_size - 1);
    uint64_t want = (in + max + s->cluster_size - 1) >> s->cluster_bits, c = c0;
    QedRun r = { QED_UNALLOCATED, 0, 0 };
    bool stop = false;
    *err = 0;
    while (!stop && c < c0 + want)
        c += qed_run_in_table(s, &r, c, c0 + want - c, &stop, err);
    /* next_host is just past the run's last cluster */
    *host = r.kind == QED_DATA ? r.next_host - (r.clusters << s->cluster_bits) + in : 0;
    *run = MIN(max, (r.clusters << s->cluster_bits) - in);
    return r.kind;
}

/* ---------------------------------------------------------------- read, block status */

/* The map of [offset, offset+bytes): one run of clusters of one kind (host-contiguous for data). The
 * caller holds io_lock shared on writable nodes. */
static int qed_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    QedState *s = bs->opaque;
    (void)opaque;
    if (offset < 0 || bytes <= 0 || (uint64_t)offset >= s->image_size)
        return -EINVAL;
    uint64_t n, host, max = MIN((uint64_t)bytes, s->image_size - (uint64_t)offset);
    int ret = 0;
    QedKind kind = qed_map_run(s, (uint64_t)offset, max, &n, &host, &ret);
    st->bytes = (int64_t)n;
    switch (kind) {
    case QED_DATA:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)host;
        st->host_file = s->file;
        return 0;
    case QED_ZERO:
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        return 0;
    case QED_UNALLOCATED:
        return 0;
    default:
        return ret < 0 ? ret : -EIO;
    }
}

/* Reads and block status hold it shared, allocations exclusive; only a writable image has one. */
static pthread_rwlock_t *qed_lock(BlockNode *bs)
{
    QedState *s = bs->opaque;
    return s->writable ? &s->io_lock : NULL;
}

static const BlockReadMap qed_read_map = { .map = qed_map, .lock = qed_lock };

/* ---------------------------------------------------------------- consistency check */

typedef struct QedCheck {
    uint64_t *used;      /* bit per file cluster: referenced already (NULL: file too large to track) */
    uint64_t n_clusters;
    int errors;
    char first[256];     /* the first problem, for the open error */
    uint64_t leaks, last_used;            /* clusters nothing references; the last one something does */
    bool used_known;                      /* leaks counted (the file was small enough to track) */
    int fix;                              /* BDRV_FIX_ERRORS: bad entries are made 0 (check -r all) */
    uint64_t fixed;                       /* entries made 0 */
    uint64_t allocated, fragmented, prev; /* qemu-img's statistics of the data clusters */
} QedCheck;

static void qed_check_problem(QedCheck *c, const char *fmt, uint64_t a, uint64_t b)
{
    if (c->errors++ == 0)
        snprintf(c->first, sizeof(c->first), fmt, a, b);
}

/* Marks [off, off + len) as referenced; a second reference is an error. */
static void qed_check_mark(QedCheck *c, uint64_t off, uint64_t len, unsigned bits, const char *what, uint64_t idx)
{
    if (!c->used)
        return;
    for (uint64_t k = off >> bits; k < (off + len + (1ull << bits) - 1) >> bits && k < c->n_clusters; k++) {
        if (c->used[k / 64] >> (k % 64) & 1) {
            qed_check_problem(c, what, idx, off);
            return;
        }
        c->used[k / 64] |= 1ull << (k % 64);
    }
}

static int qed_write_l2_entries(QedState *s, uint64_t l2, uint64_t first, uint64_t count, const uint64_t *ent);

/* What -r all makes 0, as qemu-img does: a data entry unaligned, in the header or past the end of the file.
 * One on the L1 table stays a corruption (the guest reads those bytes; nothing is lost by keeping them). */
static bool qed_check_fixable(const QedState *s, uint64_t e, uint64_t cl)
{
    return e % s->cluster_size || e < s->data_start || e > s->host_limit ||
           s->host_limit - e < qed_cluster_visible(s, cl);
}

/* -r all: a bad L2 entry made 0 (its cluster then falls to the backing file or reads as zeros). */
static int qed_check_clear_l2(QedState *s, QedCheck *c, uint64_t l2, uint64_t index)
{
    uint64_t zero = 0;
    int ret = qed_write_l2_entries(s, l2, index, 1, &zero);
    if (ret == 0)
        c->fixed++;
    return ret;
}

static int qed_check_l2(QedState *s, QedCheck *c, uint64_t l1i, uint64_t l2, uint64_t *buf)
{
    for (uint64_t done = 0; done < s->table_entries; done += s->slice_entries) {
        int ret = bdrv_pread(s->file, (int64_t)(l2 + done * 8), (int64_t)s->slice_bytes, buf);
        if (ret < 0)
            return ret;
        for (uint64_t i = 0; i < s->slice_entries; i++) {
            uint64_t e = ld_le64(&buf[i]);
            uint64_t cl = l1i * s->table_entries + done + i;
            if (e <= QED_ENTRY_ZERO)
                continue;
            bool past_disk = cl >= (s->image_size + s->cluster_size - 1) >> s->cluster_bits;
            if ((c->fix & BDRV_FIX_ERRORS) && (past_disk || qed_check_fixable(s, e, cl))) {
                ret = qed_check_clear_l2(s, c, l2, done + i);
                if (ret < 0)
                    return ret;
            } else if (past_disk)
                qed_check_problem(c, "L2 entry for cluster %" PRIu64 " (0x%" PRIx64 ") lies past the disk size", cl, e);
            else if (!qed_data_offset_ok(s, e, cl))
                qed_check_problem(c, "L2 entry for cluster %" PRIu64 " (0x%" PRIx64 ") is unaligned, in the header "
                                  "or L1 table or past the end of the file", cl, e);
            else {
                qed_check_mark(c, e, s->cluster_size, s->cluster_bits, "data cluster of guest cluster %" PRIu64
                               " (0x%" PRIx64 ") overlaps a table or another data cluster", cl);
                c->allocated++;
                c->fragmented += c->prev && e != c->prev + s->cluster_size;
                c->prev = e;
            }
        }
    }
    return 0;
}

/* Clusters of the file nothing marked (none counted when the file is too large to track). */
static void qed_check_leaks(QedCheck *c)
{
    c->used_known = c->used != NULL;
    for (uint64_t k = 0; c->used && k < c->n_clusters; k++) {
        if (c->used[k / 64] >> (k % 64) & 1)
            c->last_used = k;
        else
            c->leaks++;
    }
}

/* Checks every table entry against the file: returns the number of problems (the first in c->first) or
 * -errno. Leaked clusters are not problems: new clusters are always appended. */
static int qed_check_tables(QedState *s, QedCheck *c, int fix)
{
    memset(c, 0, sizeof(*c));
    c->fix = fix;
    c->n_clusters = (s->host_limit + s->cluster_size - 1) >> s->cluster_bits;
    if (c->n_clusters <= (1ull << 28)) /* a 32 MiB bitmap at most; larger files skip the overlap test */
        c->used = calloc((size_t)(c->n_clusters + 63) / 64 + 1, 8);
    uint64_t *buf = malloc(s->slice_bytes);
    if (!buf) {
        free(c->used);
        return -ENOMEM;
    }
    /* the first marks cannot collide (open checked that L1 lies past the header) */
    qed_check_mark(c, 0, s->data_start, s->cluster_bits, "header of %" PRIu64 " bytes at 0x%" PRIx64, s->data_start);
    qed_check_mark(c, s->l1_offset, s->table_bytes, s->cluster_bits, "L1 table of %" PRIu64 " bytes at 0x%" PRIx64
                   " overlaps the header", s->table_bytes);
    int ret = 0;
    for (uint64_t i = 0; i < s->l1_used && ret == 0; i++) {
        uint64_t l2 = s->l1[i];
        if (l2 == 0)
            continue;
        if ((fix & BDRV_FIX_ERRORS) && (l2 % s->cluster_size || l2 < s->data_start || l2 > s->host_limit ||
                                        s->host_limit - l2 < s->table_bytes)) {
            ret = bdrv_pwrite_field(s->file, (int64_t)(s->l1_offset + i * 8), BDRV_FIELD_LE64, 0, "qed_l1_update");
            if (ret == 0) {
                s->l1[i] = 0;
                c->fixed++;
            }
            continue;
        }
        if (!qed_table_offset_ok(s, l2)) {
            qed_check_problem(c, "L1 entry %" PRIu64 " (0x%" PRIx64 ") is unaligned, in the header or L1 table or "
                              "past the end of the file", i, l2);
            continue;
        }
        int before = c->errors;
        qed_check_mark(c, l2, s->table_bytes, s->cluster_bits, "L2 table of L1 entry %" PRIu64 " (0x%" PRIx64
                       ") overlaps another table or cluster", i);
        if (c->errors == before)
            ret = qed_check_l2(s, c, i, l2, buf);
    }
    free(buf);
    qed_check_leaks(c);
    free(c->used);
    c->used = NULL;
    return ret < 0 ? ret : c->errors;
}

/* -r leaks: leaked clusters at the end of the file are cut off (those between used clusters stay: QED
 * has no free-space map); corruptions are not repaired. Exclusive lock held. */
static int qed_check_trim(QedState *s, const QedCheck *c, BlockCheckResult *res)
{
    uint64_t end = (c->last_used + 1) << s->cluster_bits;
    if (!c->used_known || end >= s->host_limit)
        return 0;
    int ret = bdrv_truncate(s->file, (int64_t)end);
    if (ret < 0)
        return ret;
    uint64_t cut = (s->host_limit - end + s->cluster_size - 1) >> s->cluster_bits;
    s->host_limit = end;
    s->file_end = end;
    res->leaks -= (int64_t)cut;
    res->leaks_fixed += (int64_t)cut;
    return 0;
}

/* qemu-img's terms: every bad or doubly used entry is a corruption, every cluster of the file nothing
 * references a leak. The needs-check flag is cleared by a writable open that finds no problem. */
static int qed_check_run(BlockNode *bs, BlockCheckResult *res, int fix)
{
    QedState *s = bs->opaque;
    QedCheck c;
    int ret = qed_check_tables(s, &c, fix);
    if (ret < 0)
        return ret;
    res->corruptions_fixed = (int64_t)c.fixed;
    for (int k = 0; k < ret; k++)
        bdrv_check_corruption(res, "%s", c.first);
    if (c.leaks)
        bdrv_check_leak(res, "%" PRIu64 " clusters of the file are referenced by no table", c.leaks);
    res->leaks = (int64_t)c.leaks;
    res->total_clusters = (int64_t)((s->image_size + s->cluster_size - 1) >> s->cluster_bits);
    res->allocated_clusters = (int64_t)c.allocated;
    res->fragmented_clusters = (int64_t)c.fragmented;
    if ((fix & BDRV_FIX_LEAKS) && c.leaks)
        ret = qed_check_trim(s, &c, res);
    if (ret >= 0 && fix && !res->corruptions && (s->features & QED_F_NEED_CHECK)) {
        ret = qed_write_features(s, s->features & ~QED_F_NEED_CHECK); /* what a clean writable open does */
        if (ret == 0)
            ret = bdrv_flush(s->file);
    }
    return ret < 0 ? ret : 0;
}

static int qed_check(BlockNode *bs, BlockCheckResult *res, int fix)
{
    if (fix == BDRV_FIX_QUERY)
        return 0;
    return bdrv_check_mapped(bs, res, fix, qed_check_run);
}

/* ---------------------------------------------------------------- writable open */

/* A writable image is checked whole first: an entry pointing into the header, into a table or at a
 * cluster another entry uses would make an in-place write damage other data. */
static int qed_open_writable(QedState *s, bool repair, Error *err)
{
    if (s->table_bytes > QED_MAX_WRITABLE_TABLE) {
        error_set(err, ENOTSUP, "tables of %" PRIu64 " MiB are larger than the %lld MiB this driver writes; "
                  "the image can only be opened read-only", s->table_bytes >> 20,
                  QED_MAX_WRITABLE_TABLE >> 20);
        return -ENOTSUP;
    }
    QedCheck c;
    int ret = qed_check_tables(s, &c, 0);
    if (ret < 0) {
        error_set(err, -ret, "consistency check failed: %s", strerror(-ret));
        return ret;
    }
    if (ret > 0 && !repair) {
        error_set(err, EINVAL, "%s (%d problem%s); the image can only be opened read-only", c.first,
                  ret, ret == 1 ? "" : "s");
        return -EINVAL;
    }
    s->cow_buf = malloc(s->cluster_size);
    if (!s->cow_buf) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    if ((s->features & QED_F_NEED_CHECK) && ret == 0) {
        ret = qed_write_features(s, s->features & ~QED_F_NEED_CHECK);
        if (ret == 0)
            ret = bdrv_flush(s->file);
        if (ret < 0) {
            error_set(err, -ret, "cannot clear the needs-check flag: %s", strerror(-ret));
            return ret;
        }
        log_msg("%s: the image was marked as needing a consistency check; it passed and the mark is cleared", s->name);
    }
    s->file_end = (uint64_t)align_up((int64_t)s->host_limit, s->cluster_size);
    pthread_rwlock_init(&s->io_lock, NULL);
    s->writable = true;
    return 0;
}

/* ---------------------------------------------------------------- open, close */

static void qed_close(BlockNode *bs)
{
    QedState *s = bs->opaque;
    if (!s->name)
        return;
    if (s->writable)
        pthread_rwlock_destroy(&s->io_lock);
    s->writable = false;
    pthread_mutex_destroy(&s->cache_lock);
    for (int i = 0; s->slices && i < s->n_slices; i++)
        free(s->slices[i].entries);
    free(s->slices);
    free(s->l1);
    free(s->cow_buf);
    s->slices = NULL;
    s->l1 = NULL;
    s->cow_buf = NULL;
    s->name = NULL;
}

static int qed_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    (void)opts;
    QedState *s = bs->opaque;
    s->name = bs->filename ? bs->filename : "qed";
    s->file = bs->file;
    s->bs = bs;
    pthread_mutex_init(&s->cache_lock, NULL);
    int64_t file_size;
    int ret = bdrv_file_size(bs->file, &file_size, err);
    if (ret == 0) {
        s->host_limit = (uint64_t)file_size;
        ret = qed_read_header(s, bs, (uint64_t)file_size, err);
    }
    if (ret == 0)
        ret = qed_load_l1(s, err);
    if (ret == 0)
        ret = qed_init_cache(s, err);
    if (ret == 0 && !bs->read_only)
        ret = qed_open_writable(s, opts && opts->check_repair, err);
    else if (ret == 0 && (s->features & QED_F_NEED_CHECK))
        log_msg("%s: the image is marked as needing a consistency check (it was not closed cleanly); served "
                "read-only as it is", s->name);
    if (ret < 0) {
        qed_close(bs);
        return ret;
    }
    bs->request_alignment = 1;
    return 0;
}

static int64_t qed_getlength(BlockNode *bs)
{
    QedState *s = bs->opaque;
    return (int64_t)s->image_size;
}

/* ---------------------------------------------------------------- allocating writes */

/* Sets QED_F_NEED_CHECK on disk before the first allocation since the last flush. Exclusive lock held. */
static int qed_mark_dirty(QedState *s)
{
    if (s->need_check_set)
        return 0;
    int ret = qed_write_features(s, s->features | QED_F_NEED_CHECK);
    if (ret == 0)
        ret = bdrv_flush(s->file);
    if (ret == 0)
        s->need_check_set = true;
    return ret;
}

/* The bytes a new cluster c starts from: the backing file's for an unallocated cluster, else zeros. */
static int qed_cow_fill(BlockNode *bs, QedState *s, uint64_t c, QedKind kind)
{
    uint64_t visible = qed_cluster_visible(s, c);
    memset(s->cow_buf, 0, s->cluster_size);
    if (kind != QED_UNALLOCATED || !bs->backing)
        return 0;
    return bdrv_pread(bs->backing, (int64_t)(c << s->cluster_bits), (int64_t)visible, s->cow_buf);
}

/* Writes [in, in + n) of guest cluster c (zeros when p is NULL) into a new cluster at the end of the
 * file, returned in *host. */
static int qed_write_new_cluster(BlockNode *bs, QedState *s, uint64_t c, QedKind kind, uint64_t in, uint64_t n,
                                 const uint8_t *p, uint64_t *host)
{
    const uint8_t *src = p;
    if (!p || in != 0 || n != s->cluster_size) {
        int ret = qed_cow_fill(bs, s, c, kind);
        if (ret < 0)
            return ret;
        if (p)
            memcpy(s->cow_buf + in, p, n);
        else
            memset(s->cow_buf + in, 0, n);
        src = s->cow_buf;
    }
    *host = s->file_end;
    s->file_end += s->cluster_size;
    int ret = bdrv_pwrite(s->file, (int64_t)*host, s->cluster_size, src, 0);
    if (ret == 0)
        s->host_limit = MAX(s->host_limit, *host + s->cluster_size);
    return ret;
}

static int qed_write_l2_entries(QedState *s, uint64_t l2, uint64_t first, uint64_t count, const uint64_t *ent)
{
    uint8_t *buf = malloc(count * 8);
    if (!buf)
        return -ENOMEM;
    for (uint64_t i = 0; i < count; i++)
        st_le64(buf + 8 * i, ent[i]);
    bdrv_debug_event(s->file, "qed_l2_update");
    int ret = bdrv_pwrite(s->file, (int64_t)(l2 + first * 8), (int64_t)(count * 8), buf, 0);
    free(buf);
    qed_invalidate_slices(s, l2 + first * 8, count * 8);
    return ret;
}

/* A new L2 table at the end of the file holding ent at [first, first + count), then the L1 entry. */
static int qed_new_l2_table(QedState *s, uint64_t l1i, uint64_t first, uint64_t count, const uint64_t *ent)
{
    uint64_t l2 = s->file_end;
    s->file_end += s->table_bytes;
    int ret = bdrv_pwrite_zeroes(s->file, (int64_t)l2, (int64_t)s->table_bytes, 0);
    if (ret == 0) {
        s->host_limit = MAX(s->host_limit, l2 + s->table_bytes);
        ret = qed_write_l2_entries(s, l2, first, count, ent);
    }
    if (ret == 0)
        ret = bdrv_flush(s->file); /* the table is on disk before L1 names it */
    if (ret < 0)
        return ret;
    ret = bdrv_pwrite_field(s->file, (int64_t)(s->l1_offset + l1i * 8), BDRV_FIELD_LE64, l2, "qed_l1_update");
    if (ret == 0)
        s->l1[l1i] = l2;
    return ret;
}

/* The count L2 entries ent of table l1i from cluster c0 written (a new table when there is none), after a
 * flush of the data they name when new_data. */
static int qed_link_entries(QedState *s, uint64_t l1i, uint64_t c0, uint64_t count, const uint64_t *ent, bool new_data)
{
    int ret = new_data ? bdrv_flush(s->file) : 0; /* data before L2 */
    uint64_t l2 = s->l1[l1i], first = c0 % s->table_entries;
    if (ret == 0)
        ret = l2 ? qed_write_l2_entries(s, l2, first, count, ent) : qed_new_l2_table(s, l1i, first, count, ent);
    return ret;
}

/* Writes the part of [offset, offset + bytes) inside one L2 table's span; *done is how much. Allocates
 * clusters for unallocated and zero ones; the data is flushed before the tables name it. Caller holds the
 * exclusive lock. */
static int qed_allocating_write(BlockNode *bs, QedState *s, uint64_t offset, uint64_t bytes, const uint8_t *p,
                                uint64_t *done)
{
    uint64_t c0 = offset >> s->cluster_bits, l1i = c0 / s->table_entries;
    uint64_t span_end = MIN((l1i + 1) * s->table_entries << s->cluster_bits, offset + bytes);
    uint64_t last = (span_end - 1) >> s->cluster_bits, count = last - c0 + 1;
    uint64_t *ent = malloc(count * 8);
    if (!ent)
        return -ENOMEM;
    int ret = qed_mark_dirty(s);
    bool changed = false;
    for (uint64_t c = c0, pos = offset; ret == 0 && c <= last; c++) {
        uint64_t in = pos & (s->cluster_size - 1), n = MIN(span_end - pos, (uint64_t)s->cluster_size - in), host;
        QedKind kind = qed_classify(s, c, &host, &ret);
        if (kind == QED_BAD)
            ret = ret < 0 ? ret : -EIO;
        else if (kind == QED_DATA)
            ret = bdrv_pwrite(s->file, (int64_t)(host + in), (int64_t)n, p + (pos - offset), 0);
        else {
            ret = qed_write_new_cluster(bs, s, c, kind, in, n, p + (pos - offset), &host);
            changed = true;
        }
        ent[c - c0] = host;
        pos += n;
    }
    if (ret == 0 && changed)
        ret = qed_link_entries(s, l1i, c0, count, ent, true);
    free(ent);
    *done = span_end - offset;
    return ret;
}

/* ---------------------------------------------------------------- write-zeroes, discard
 *
 * A cluster that holds no data becomes a zero cluster (L2 entry 1) when the backing file would show
 * through it, and is left alone when it reads as zeros already (a zero cluster, or no backing file).
 * A data cluster keeps its host cluster and gets zeros written in place (a hole punched in the file when
 * unmapping is allowed): QED keeps no free-cluster accounting, so a host cluster no entry names is lost
 * for good and `qemu-img check` reports it as a leak. A piece of a cluster with no data over a backing
 * file is allocated as for a write of zeros. Discard does the same for whole clusters and leaves pieces.
 */

/* Clusters one step of write-zeroes looks at: its entries array is at most 512 KiB, however large the
 * request and the tables (a writable image's tables hold up to 8 Mi entries). */
#define QED_ZERO_BATCH (64 * 1024)

/* Zeroes the part of [offset, offset + bytes) inside one L2 table's span (at most QED_ZERO_BATCH
 * clusters); *done is how much. Pieces of clusters are skipped unless partial. Caller holds the
 * exclusive lock. */
static int qed_zero_span(BlockNode *bs, QedState *s, uint64_t offset, uint64_t bytes, int flags, bool partial,
                         uint64_t *done)
{
    uint64_t c0 = offset >> s->cluster_bits, l1i = c0 / s->table_entries;
    uint64_t span_end = MIN((l1i + 1) * s->table_entries << s->cluster_bits, offset + bytes);
    span_end = MIN(span_end, (c0 + QED_ZERO_BATCH) << s->cluster_bits);
    uint64_t last = (span_end - 1) >> s->cluster_bits, count = last - c0 + 1;
    uint64_t *ent = malloc(count * 8);
    *done = span_end - offset;
    if (!ent)
        return -ENOMEM;
    int ret = bs->backing ? qed_mark_dirty(s) : 0;
    bool changed = false, new_data = false;
    for (uint64_t c = c0, pos = offset; ret == 0 && c <= last; c++) {
        uint64_t in = pos & (s->cluster_size - 1), n = MIN(span_end - pos, (uint64_t)s->cluster_size - in), host;
        bool whole = in == 0 && n == qed_cluster_visible(s, c);
        QedKind kind = qed_classify(s, c, &host, &ret);
        ent[c - c0] = kind == QED_ZERO ? QED_ENTRY_ZERO : host;
        if (kind == QED_BAD)
            ret = ret < 0 ? ret : -EIO;
        else if (kind == QED_DATA && (whole || partial))
            ret = bdrv_pwrite_zeroes(s->file, (int64_t)(host + in), (int64_t)n, flags & BDRV_REQ_MAY_UNMAP);
        else if (kind == QED_UNALLOCATED && bs->backing && whole)
            ent[c - c0] = QED_ENTRY_ZERO, changed = true;
        else if (kind == QED_UNALLOCATED && bs->backing && partial) {
            ret = qed_write_new_cluster(bs, s, c, kind, in, n, NULL, &ent[c - c0]);
            changed = new_data = true;
        }
        pos += n;
    }
    if (ret == 0 && changed)
        ret = qed_link_entries(s, l1i, c0, count, ent, new_data);
    free(ent);
    return ret;
}

static int qed_zero_range(BlockNode *bs, uint64_t offset, uint64_t bytes, int flags, bool partial)
{
    QedState *s = bs->opaque;
    if (!s->writable)
        return -EROFS;
    if (offset > s->image_size || bytes > s->image_size - offset)
        return -EINVAL;
    pthread_rwlock_wrlock(&s->io_lock);
    int ret = 0;
    while (ret == 0 && bytes > 0) {
        uint64_t done;
        ret = qed_zero_span(bs, s, offset, bytes, flags, partial, &done);
        offset += done;
        bytes -= done;
    }
    pthread_rwlock_unlock(&s->io_lock);
    return ret;
}

static int qed_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    if (offset < 0 || bytes < 0)
        return -EINVAL;
    int ret = qed_zero_range(bs, (uint64_t)offset, (uint64_t)bytes, flags, true);
    return ret == 0 && (flags & BDRV_REQ_FUA) ? bdrv_flush(bs) : ret;
}

static int qed_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    if (offset < 0 || bytes < 0)
        return -EINVAL;
    return qed_zero_range(bs, (uint64_t)offset, (uint64_t)bytes, BDRV_REQ_MAY_UNMAP, false);
}

/* ---------------------------------------------------------------- write, flush */

static int qed_write_place(BlockNode *bs, uint64_t off, uint64_t left, uint64_t *n, uint64_t *host)
{
    int err;
    QedKind kind = qed_map_run(bs->opaque, off, left, n, host, &err);
    if (kind == QED_BAD)
        return err < 0 ? err : -EIO;
    return kind == QED_DATA;
}

static int qed_write_allocate(BlockNode *bs, uint64_t off, uint64_t left, const void *buf, uint64_t *n)
{
    return qed_allocating_write(bs, bs->opaque, off, left, buf, n);
}

static const BlockWriteMap qed_write_map = {
    .place = qed_write_place,
    .allocate = qed_write_allocate,
    .flush = bdrv_flush, /* FUA: this node's own flush, which also clears the needs-check mark */
};

/* Everything written so far reaches the disk, then the needs-check mark is cleared (the core flushes the
 * file once more after this). */
static int qed_flush(BlockNode *bs)
{
    QedState *s = bs->opaque;
    if (!s->writable)
        return 0;
    pthread_rwlock_wrlock(&s->io_lock);
    int ret = 0;
    if (s->need_check_set) {
        ret = bdrv_flush(s->file);
        if (ret == 0)
            ret = qed_write_features(s, s->features & ~QED_F_NEED_CHECK);
        if (ret == 0)
            s->need_check_set = false;
    }
    pthread_rwlock_unlock(&s->io_lock);
    return ret;
}

/* ---------------------------------------------------------------- create */

#define QED_DEFAULT_CLUSTER (64 * KiB)
#define QED_DEFAULT_TABLE   4

static const BlockOptionSpec qed_create_options[] = {
    { "cluster_size", BDRV_OPT_SIZE, 0, "cluster size, a power of two from 4K to 64M (default 64K)" },
    { "table_size", BDRV_OPT_INT, 0, "L1 and L2 table size in clusters, a power of two from 1 to 16 (default 4)" },
    { "backing_file", BDRV_OPT_STRING, 0, "name of the backing file (= -b)" },
    { "backing_fmt", BDRV_OPT_STRING, 0, "its format (= -F); raw is recorded as not to be probed" },
    { NULL, 0, 0, NULL },
};

typedef struct QedCreate {
    uint64_t cluster_size, table_size;
    char *backing, *fmt;
    const char *filename;
    Error *err;
} QedCreate;

static int qed_create_bad(QedCreate *c, const char *key, const char *value, const char *want)
{
    error_set(c->err, EINVAL, "%s: qed creation option '%s' must be %s, not '%s'", c->filename, key, want, value);
    return -EINVAL;
}

static int qed_create_option(const char *key, const char *value, void *opaque)
{
    QedCreate *c = opaque;
    bool known = !strcmp(key, "cluster_size") || !strcmp(key, "table_size") || !strcmp(key, "backing_file") ||
                 !strcmp(key, "backing_fmt");
    if (!known || !value) {
        error_set(c->err, EINVAL, "%s: %s qed creation option '%s'", c->filename, known ? "no value for the" : "unknown",
                  key);
        return -EINVAL;
    }
    if (!strcmp(key, "cluster_size")) {
        int64_t v = parse_size(value);
        if (v < QED_MIN_CLUSTER || v > QED_MAX_CLUSTER || !is_pow2((uint64_t)v))
            return qed_create_bad(c, key, value, "a power of two from 4K to 64M");
        c->cluster_size = (uint64_t)v;
        return 0;
    }
    if (!strcmp(key, "table_size")) {
        char *end;
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end || v < 1 || v > QED_MAX_TABLE || !is_pow2((uint64_t)v))
            return qed_create_bad(c, key, value, "a power of two from 1 to 16");
        c->table_size = (uint64_t)v;
        return 0;
    }
    char **dst = !strcmp(key, "backing_file") ? &c->backing : &c->fmt;
    free(*dst);
    return (*dst = strdup(value)) ? 0 : -ENOMEM;
}

/* The header cluster (header, then the backing file name at byte 64), *len bytes; the L1 table follows
 * it, all zeros. NULL: no memory. */
static uint8_t *qed_new_header(const QedCreate *c, uint64_t size, const char *backing, const char *fmt)
{
    uint8_t *h = calloc(1, QED_HEADER_BYTES + QED_MAX_BACKING_NAME);
    if (!h)
        return NULL;
    size_t name_len = backing ? strlen(backing) : 0;
    uint64_t features = name_len ? QED_F_BACKING_FILE : 0;
    if (name_len && fmt && !strcmp(fmt, "raw"))
        features |= QED_F_BACKING_FORMAT_NO_PROBE;
    st_le32(h + QED_OFF_MAGIC, QED_MAGIC);
    st_le32(h + QED_OFF_CLUSTER_SIZE, (uint32_t)c->cluster_size);
    st_le32(h + QED_OFF_TABLE_SIZE, (uint32_t)c->table_size);
    st_le32(h + QED_OFF_HEADER_SIZE, 1);
    st_le64(h + QED_OFF_FEATURES, features);
    st_le64(h + QED_OFF_L1_OFFSET, c->cluster_size);
    st_le64(h + QED_OFF_IMAGE_SIZE, size);
    st_le32(h + QED_OFF_BACKING_OFFSET, name_len ? QED_HEADER_BYTES : 0);
    st_le32(h + QED_OFF_BACKING_SIZE, (uint32_t)name_len);
    memcpy(h + QED_HEADER_BYTES, backing ? backing : "", name_len);
    return h;
}

/* The largest disk the tables address (capped as open caps it). */
static uint64_t qed_create_max_size(const QedCreate *c)
{
    uint64_t entries = c->table_size * c->cluster_size / 8, max;
    if (!mul_ok_u64(entries * c->cluster_size, entries, &max))
        max = UINT64_MAX;
    return MIN(max, (uint64_t)QED_MAX_IMAGE_SIZE);
}

static int qed_create_check(QedCreate *c, int64_t req, const char *name, const char *fmt)
{
    uint64_t max = qed_create_max_size(c);
    if (req < 0 || (uint64_t)align_up(req, 512) > max) {
        error_set(c->err, EINVAL, "%s: invalid virtual size for qed with these tables (0 to %" PRIu64 " bytes)",
                  c->filename, max);
        return -EINVAL;
    }
    if (name && strlen(name) > QED_MAX_BACKING_NAME) {
        error_set(c->err, ENAMETOOLONG, "%s: backing file name longer than %d bytes", c->filename,
                  QED_MAX_BACKING_NAME);
        return -ENAMETOOLONG;
    }
    if (fmt && !bdrv_find_driver(fmt)) {
        error_set(c->err, EINVAL, "%s: unknown backing format '%s'", c->filename, fmt);
        return -EINVAL;
    }
    return 0;
}

/* As qemu-img lays it out: one header cluster, the L1 table in the next table_size clusters. The new
 * file is grown over the table (a hole, all zeros), never held in memory or written whole: 16 tables of
 * 64 MiB clusters would be 1 GiB. */
static int qed_create(const char *filename, const CreateOpts *opts, Error *err)
{
    QedCreate c = { .cluster_size = QED_DEFAULT_CLUSTER, .table_size = QED_DEFAULT_TABLE, .filename = filename,
                    .err = err };
    int ret = bdrv_create_opts_each(opts->options, qed_create_option, &c);
    const char *name = opts->backing && opts->backing[0] ? opts->backing : c.backing;
    const char *fmt = opts->backing_format ? opts->backing_format : c.fmt;
    if (name && !name[0])
        name = NULL;
    if (ret == 0)
        ret = qed_create_check(&c, opts->size, name, fmt);
    uint8_t *h = ret == 0 ? qed_new_header(&c, (uint64_t)align_up(opts->size, 512), name, fmt) : NULL;
    if (ret == 0 && !h)
        ret = -ENOMEM;
    BlockNode *file = NULL;
    if (ret == 0)
        ret = bdrv_create_empty_file(filename, &file, err);
    if (ret == 0)
        ret = bdrv_pwrite(file, 0, QED_HEADER_BYTES + (int64_t)(name ? strlen(name) : 0), h, 0);
    if (ret == 0)
        ret = bdrv_truncate(file, (int64_t)((c.table_size + 1) * c.cluster_size));
    if (ret == 0)
        ret = bdrv_flush(file);
    if (file)
        bdrv_close(file);
    free(h);
    free(c.backing);
    free(c.fmt);
    return ret;
}

/* ---------------------------------------------------------------- info */

static bool qed_has_zero_init(BlockNode *bs)
{
    return bs->backing == NULL;
}

static void qed_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    facts->cluster_size = ((QedState *)bs->opaque)->cluster_size;
    facts->dirty = (((QedState *)bs->opaque)->features & QED_F_NEED_CHECK) != 0;
}

static void qed_get_info(BlockNode *bs, InfoList *info)
{
    QedState *s = bs->opaque;
    info_add_int(info, "cluster_size", s->cluster_size);
    info_add_int(info, "table_size", s->table_size);
    info_add_int(info, "header_size", s->header_size);
    info_add_str(info, "features", "0x%" PRIx64, s->features);
    info_add_str(info, "compat_features", "0x%" PRIx64, s->compat_features);
    info_add_str(info, "autoclear_features", "0x%" PRIx64, s->autoclear_features);
    info_add_bool(info, "need_check", (s->features & QED_F_NEED_CHECK) != 0);
    info_add_bool(info, "backing_format_no_probe", (s->features & QED_F_BACKING_FORMAT_NO_PROBE) != 0);
    info_add_int(info, "l1_table_offset", (int64_t)s->l1_offset);
    info_add_int(info, "l1_entries_used", (int64_t)s->l1_used);
    info_add_int(info, "l2_cache_slices", s->n_slices);
    info_add_int(info, "l2_cache_slice_bytes", (int64_t)s->slice_bytes);
}

static int64_t qed_memory_used(BlockNode *bs)
{
    QedState *s = bs->opaque;
    int64_t bytes = (int64_t)sizeof(*s) + (int64_t)(s->l1_used * 8) + (int64_t)s->n_slices * (int64_t)sizeof(QedSlice);
    pthread_mutex_lock(&s->cache_lock);
    for (int i = 0; i < s->n_slices; i++)
        if (s->slices[i].entries)
            bytes += (int64_t)s->slice_bytes;
    pthread_mutex_unlock(&s->cache_lock);
    if (s->cow_buf)
        bytes += s->cluster_size;
    return bytes;
}

const BlockDriver bdrv_qed = {
    .name = "qed",
    .instance_size = sizeof(QedState),
    .supports_backing = true,
    .probe = qed_probe,
    .open = qed_open,
    .close = qed_close,
    .read = bdrv_mapped_read,
    .write = bdrv_mapped_write,
    .write_zeroes = qed_write_zeroes,
    .discard = qed_discard,
    .flush = qed_flush,
    .block_status = bdrv_mapped_block_status,
    .getlength = qed_getlength,
    .memory_used = qed_memory_used,
    .get_info = qed_get_info,
    .get_facts = qed_get_facts,
    .check = qed_check,
    .create = qed_create,
    .create_options = qed_create_options,
    .has_zero_init = qed_has_zero_init,
    .read_map = &qed_read_map,
    .write_map = &qed_write_map,
};
