/* SPDX-License-Identifier: MIT */
/*
 * overlap.c - the qcow2 write path's map of where metadata lives in the image file, and the checks built
 * on it.  At a writable open it collects every metadata structure into a sorted array of cluster runs
 * (header cluster, active L1 table, refcount table, every refcount block, the L2 tables of the active L1,
 * the snapshot table, every snapshot's L1 table and the L2 tables those name), refusing the open when two
 * structures overlap or one of them has a refcount of zero.  While mounted, the write path registers the
 * metadata it places (new L2 tables, refcount blocks and tables, a grown L1) and drops what it retires,
 * and asks before every host write whether the target overlaps metadata of another kind; an overlap
 * means the refcounts lied to the allocator, so the write is refused with EIO and the image is marked
 * corrupt.  A lookup is a binary search; the map costs 16 bytes per run of metadata clusters.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"

/* At most this many runs (16 bytes each: 128 MiB): the L1 and refcount table budgets allow 4M active L2
 * tables and 1M refcount blocks, which fit with room for L2 tables only snapshots name; an image with
 * more metadata clusters than this is refused for writing rather than mapped without bound. */
#define QCOW2_MAX_META_RUNS (1u << 23)
/* Snapshot L1 tables read at open to find the L2 tables they name, all snapshots together. */
#define QCOW2_MAX_SNAPSHOT_L1_SCAN (64ULL * 1024 * 1024)

typedef struct Qcow2MetaRun {
    uint64_t start;   /* first host cluster */
    uint32_t n;       /* clusters */
    uint16_t kind;    /* Qcow2MetaKind */
    uint16_t flags;   /* QCOW2_META_F_* */
} Qcow2MetaRun;

#define QCOW2_META_F_SNAPSHOT 1 /* an L2 table some snapshot's L1 table names */

struct Qcow2MetaMap {
    Qcow2MetaRun *runs;
    size_t n, cap;
};

const char *qcow2_meta_kind_name(Qcow2MetaKind kind)
{
    switch (kind) {
    case QCOW2_META_HEADER: return "the header";
    case QCOW2_META_L1: return "the L1 table";
    case QCOW2_META_REFTABLE: return "the refcount table";
    case QCOW2_META_REFBLOCK: return "a refcount block";
    case QCOW2_META_L2: return "an L2 table";
    case QCOW2_META_SNAPTABLE: return "the snapshot table";
    case QCOW2_META_SNAP_L1: return "a snapshot's L1 table";
    case QCOW2_META_CRYPTO: return "the LUKS header";
    case QCOW2_META_NEW: return "new metadata";
    default: return "guest data";
    }
}

/* ---------------------------------------------------------------- the sorted run array */

/* Index of the first run ending after cluster c. */
static uint64_t run_end(const void *runs, size_t i)
{
    const Qcow2MetaRun *r = &((const Qcow2MetaRun *)runs)[i];
    return r->start + r->n;
}

static size_t map_lower(const Qcow2MetaMap *m, uint64_t c)
{
    return lower_bound_by_end(m->runs, m->n, c, run_end);
}

/* The first run overlapping clusters [c, c + n), NULL if none. */
static const Qcow2MetaRun *map_find(const Qcow2MetaMap *m, uint64_t c, uint64_t n)
{
    size_t i = map_lower(m, c);
    return i < m->n && m->runs[i].start < c + n ? &m->runs[i] : NULL;
}

/* Room for one more run, within the budget. */
static int map_reserve(Qcow2MetaMap *m)
{
    if (m->n < m->cap)
        return 0;
    if (m->cap >= QCOW2_MAX_META_RUNS)
        return -EFBIG;
    size_t cap = m->cap ? MIN(m->cap * 2, (size_t)QCOW2_MAX_META_RUNS) : 64;
    Qcow2MetaRun *p = realloc(m->runs, cap * sizeof(*p));
    if (!p)
        return -ENOMEM;
    m->runs = p;
    m->cap = cap;
    return 0;
}

/* Insert a run of clusters [c, c + n). An L2 table already there is shared (a snapshot and the active
 * L1, or two snapshots, name it): it only gains flags. Any other overlap returns -EEXIST and *hit. */
static int map_insert(Qcow2MetaMap *m, uint64_t c, uint64_t n, Qcow2MetaKind kind, uint16_t flags,
                      const Qcow2MetaRun **hit)
{
    if (n == 0)
        return 0;
    if (n > UINT32_MAX || c + n < c)
        return -EFBIG;
    size_t i = map_lower(m, c);
    if (i < m->n && m->runs[i].start < c + n) {
        Qcow2MetaRun *r = &m->runs[i];
        if (kind == QCOW2_META_L2 && r->kind == QCOW2_META_L2 && r->start == c && r->n == n) {
            r->flags |= flags;
            return 0;
        }
        *hit = r;
        return -EEXIST;
    }
    int ret = map_reserve(m);
    if (ret < 0)
        return ret;
    memmove(&m->runs[i + 1], &m->runs[i], (m->n - i) * sizeof(*m->runs));
    m->runs[i] = (Qcow2MetaRun){ c, (uint32_t)n, (uint16_t)kind, flags };
    m->n++;
    return 0;
}

/* Drop the run starting exactly at cluster c, if it is of the given kind. */
static void map_remove(Qcow2MetaMap *m, uint64_t c, Qcow2MetaKind kind)
{
    size_t i = map_lower(m, c);
    if (i < m->n && m->runs[i].start == c && m->runs[i].kind == kind) {
        memmove(&m->runs[i], &m->runs[i + 1], (m->n - i - 1) * sizeof(*m->runs));
        m->n--;
    }
}

static void map_free(Qcow2MetaMap *m)
{
    if (m) {
        free(m->runs);
        free(m);
    }
}

/* ---------------------------------------------------------------- building at open */

static uint64_t clusters_of(const Qcow2State *s, uint64_t bytes)
{
    return (bytes + s->cluster_mask) >> s->cluster_bits;
}

/* Add one structure found in the image, unsorted (build_finish sorts and checks the whole set). */
static int build_add(Qcow2State *s, Qcow2MetaMap *m, uint64_t offset, uint64_t bytes, Qcow2MetaKind kind,
                     uint16_t flags, Error *err)
{
    uint64_t n = clusters_of(s, bytes + (offset & s->cluster_mask));
    int ret = n == 0 ? 0 : n > UINT32_MAX ? -EFBIG : map_reserve(m);
    if (n && ret == 0)
        m->runs[m->n++] = (Qcow2MetaRun){ offset >> s->cluster_bits, (uint32_t)n, (uint16_t)kind, flags };
    if (ret == -EFBIG)
        error_set(err, EFBIG, "more than %u runs of metadata clusters: too many to check writes against",
                  QCOW2_MAX_META_RUNS);
    else if (ret < 0)
        error_set(err, -ret, "cannot map the metadata: %s", strerror(-ret));
    return ret;
}

static int run_cmp(const void *a, const void *b)
{
    const Qcow2MetaRun *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return (int)x->kind - (int)y->kind;
}

/* Sort the runs (O(n log n) whatever order the tables name them in) and refuse overlaps; an L2 table
 * named more than once (shared with snapshots) is kept once with the flags of all. */
static int build_finish(Qcow2State *s, Qcow2MetaMap *m, Error *err)
{
    if (m->n == 0)
        return 0;
    qsort(m->runs, m->n, sizeof(*m->runs), run_cmp);
    size_t j = 0;
    for (size_t i = 1; i < m->n; i++) {
        Qcow2MetaRun *last = &m->runs[j], *cur = &m->runs[i];
        if (cur->start >= last->start + last->n) {
            m->runs[++j] = *cur;
            continue;
        }
        if (cur->kind == QCOW2_META_L2 && last->kind == QCOW2_META_L2 && cur->start == last->start &&
            cur->n == last->n) {
            last->flags |= cur->flags;
            continue;
        }
        error_set(err, EINVAL, "metadata overlap: %s at 0x%" PRIx64 " overlaps %s at 0x%" PRIx64 "; run "
                  "'qemu-img check -r all %s' before writing (read-only mounts still work)",
                  qcow2_meta_kind_name((Qcow2MetaKind)cur->kind), cur->start << s->cluster_bits,
                  qcow2_meta_kind_name((Qcow2MetaKind)last->kind), last->start << s->cluster_bits, s->node_name);
        return -EINVAL;
    }
    m->n = j + 1;
    return 0;
}

/* The L2 tables an L1 table names. Entries that are not cluster aligned or lie past the end of the
 * file are skipped: the mapping code refuses them when a write gets there. */
static int build_add_l2s(Qcow2State *s, Qcow2MetaMap *m, const uint64_t *l1, uint32_t l1_size, uint16_t flags,
                         Error *err)
{
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2 || (l2 & s->cluster_mask) || l2 >= s->host_end)
            continue;
        int ret = build_add(s, m, l2, s->cluster_size, QCOW2_META_L2, flags, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

static int build_add_snapshots(Qcow2State *s, Qcow2MetaMap *m, Error *err)
{
    int ret = 0;
    uint64_t scanned = 0;
    if (s->nb_snapshots)
        ret = build_add(s, m, s->snapshots_offset, s->snapshots_size, QCOW2_META_SNAPTABLE, 0, err);
    for (uint32_t k = 0; ret == 0 && k < s->nb_snapshots; k++) {
        const Qcow2Snapshot *sn = &s->snapshots[k];
        if (sn->l1_size == 0)
            continue;
        scanned += (uint64_t)sn->l1_size * 8;
        if (scanned > QCOW2_MAX_SNAPSHOT_L1_SCAN) {
            error_set(err, EFBIG, "the snapshots' L1 tables total more than %llu MiB: too many to check "
                      "writes against", QCOW2_MAX_SNAPSHOT_L1_SCAN >> 20);
            return -EFBIG;
        }
        ret = build_add(s, m, sn->l1_table_offset, (uint64_t)sn->l1_size * 8, QCOW2_META_SNAP_L1, 0, err);
        uint64_t *l1 = NULL;
        if (ret == 0) {
            ret = qcow2_load_l1(s, sn->l1_table_offset, sn->l1_size, &l1);
            if (ret < 0)
                error_set(err, -ret, "cannot read the L1 table of snapshot '%s': %s", sn->name, strerror(-ret));
        }
        if (ret == 0)
            ret = build_add_l2s(s, m, l1, sn->l1_size, QCOW2_META_F_SNAPSHOT, err);
        free(l1);
    }
    return ret;
}

static int build_map(Qcow2State *s, Qcow2MetaMap **out, Error *err)
{
    Qcow2MetaMap *m = calloc(1, sizeof(*m));
    if (!m) {
        error_set(err, ENOMEM, "cannot map the metadata: %s", strerror(ENOMEM));
        return -ENOMEM;
    }
    int ret = build_add(s, m, 0, s->cluster_size, QCOW2_META_HEADER, 0, err);
    if (ret == 0 && s->crypt_method == QCOW2_CRYPT_LUKS)
        ret = build_add(s, m, s->crypto_header_offset, s->crypto_header_length, QCOW2_META_CRYPTO, 0, err);
    if (ret == 0 && s->l1_size)
        ret = build_add(s, m, s->l1_table_offset, (uint64_t)s->l1_size * 8, QCOW2_META_L1, 0, err);
    if (ret == 0)
        ret = build_add(s, m, s->refcount_table_offset, (uint64_t)s->refcount_table_clusters << s->cluster_bits,
                        QCOW2_META_REFTABLE, 0, err);
    for (uint64_t i = 0; ret == 0 && i < s->refcount_table_used; i++) {
        uint64_t rb = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (rb && !(rb & s->cluster_mask))
            ret = build_add(s, m, rb, s->cluster_size, QCOW2_META_REFBLOCK, 0, err);
    }
    if (ret == 0)
        ret = build_add_l2s(s, m, s->l1_table, s->l1_size, 0, err);
    if (ret == 0)
        ret = build_add_snapshots(s, m, err);
    if (ret == 0)
        ret = build_finish(s, m, err);
    if (ret < 0) {
        map_free(m);
        return ret;
    }
    *out = m;
    return 0;
}

int qcow2_meta_build(Qcow2State *s, Error *err)
{
    Qcow2MetaMap *m;
    int ret = build_map(s, &m, err);
    if (ret < 0)
        return ret;
    map_free(s->meta);
    s->meta = m;
    return 0;
}

int qcow2_meta_rebuild(Qcow2State *s)
{
    if (!s->meta)
        return 0;
    Error err = { 0 };
    Qcow2MetaMap *m;
    int ret = build_map(s, &m, &err);
    if (ret < 0)
        return qcow2_mark_corrupt(s, "cannot map the new metadata: %s", err.msg);
    map_free(s->meta);
    s->meta = m;
    return 0;
}

void qcow2_meta_free(Qcow2State *s)
{
    map_free(s->meta);
    s->meta = NULL;
}

uint64_t qcow2_meta_memory(const Qcow2State *s)
{
    return s->meta ? sizeof(*s->meta) + s->meta->cap * sizeof(Qcow2MetaRun) : 0;
}

/* The refcount table entry describing cluster c names a usable block (or none): checked here so that the
 * lookup below reports through err instead of marking the image corrupt while it is being opened. */
static bool refblock_entry_valid(const Qcow2State *s, uint64_t c)
{
    uint64_t rt = c >> s->refcount_block_bits;
    if (rt >= s->refcount_table_size)
        return true;
    uint64_t off = s->refcount_table[rt] & QCOW2_REFT_OFFSET_MASK;
    return !(off & s->cluster_mask) && (off || !s->refcount_table[rt]);
}

int qcow2_meta_check_refcounts(Qcow2State *s, Error *err)
{
    const Qcow2MetaMap *m = s->meta;
    for (size_t i = 0; m && i < m->n; i++) {
        const Qcow2MetaRun *r = &m->runs[i];
        for (uint64_t c = r->start; c < r->start + r->n; c++) {
            if (!refblock_entry_valid(s, c)) {
                error_set(err, EINVAL, "refcount table entry %" PRIu64 " (for %s at 0x%" PRIx64 ") is invalid; "
                          "run 'qemu-img check -r all %s' before writing (read-only mounts still work)",
                          c >> s->refcount_block_bits, qcow2_meta_kind_name((Qcow2MetaKind)r->kind),
                          c << s->cluster_bits, s->node_name);
                return -EINVAL;
            }
            uint64_t rc;
            int ret = qcow2_get_refcount(s, c, &rc);
            if (ret < 0) {
                error_set(err, -ret, "cannot read the refcount of %s at 0x%" PRIx64 ": %s",
                          qcow2_meta_kind_name((Qcow2MetaKind)r->kind), c << s->cluster_bits, strerror(-ret));
                return ret;
            }
            if (rc == 0) {
                error_set(err, EINVAL, "refcounts inconsistent with the tables: %s at 0x%" PRIx64 " has "
                          "refcount 0 and would be overwritten by new data; run 'qemu-img check -r all %s' "
                          "before writing (read-only mounts still work)",
                          qcow2_meta_kind_name((Qcow2MetaKind)r->kind), c << s->cluster_bits, s->node_name);
                return -EINVAL;
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- while writing (caller holds *s->lock) */

/* Refuse a host write over metadata: one line, the corrupt bit, the node read-only. */
static int refuse(Qcow2State *s, Qcow2MetaKind what, const Qcow2MetaRun *hit, uint64_t offset)
{
    uint64_t at = MAX(hit->start << s->cluster_bits, offset & ~s->cluster_mask);
    bool was_writable = !s->read_only;
    s->read_only = true;
    __atomic_store_n(&s->corrupt, true, __ATOMIC_RELAXED);
    if (!__atomic_exchange_n(&s->corruption_logged, 1, __ATOMIC_RELAXED))
        log_msg("%s: metadata overlap: refusing to write %s over %s at 0x%" PRIx64 "; image marked corrupt",
                s->node_name, qcow2_meta_kind_name(what), qcow2_meta_kind_name((Qcow2MetaKind)hit->kind), at);
    if (was_writable && s->write_ready && s->version >= 3 && !(s->incompatible_features & QCOW2_INCOMPAT_CORRUPT))
        qcow2_update_incompat(s, QCOW2_INCOMPAT_CORRUPT, 0);
    return -EIO;
}

int qcow2_meta_check_write(Qcow2State *s, Qcow2MetaKind what, uint64_t offset, uint64_t bytes)
{
    const Qcow2MetaMap *m = s->meta;
    if (!m || bytes == 0)
        return 0;
    uint64_t c = offset >> s->cluster_bits, n = clusters_of(s, bytes + (offset & s->cluster_mask));
    for (size_t i = map_lower(m, c); i < m->n && m->runs[i].start < c + n; i++) {
        const Qcow2MetaRun *r = &m->runs[i];
        /* A structure rewriting itself stays inside its own run. */
        if (what != r->kind || c < r->start || c + n > r->start + r->n)
            return refuse(s, what, r, offset);
    }
    return 0;
}

int qcow2_meta_add(Qcow2State *s, Qcow2MetaKind kind, uint64_t offset, uint64_t bytes)
{
    if (!s->meta)
        return 0;
    const Qcow2MetaRun *hit = NULL;
    int ret = map_insert(s->meta, offset >> s->cluster_bits, clusters_of(s, bytes + (offset & s->cluster_mask)), kind,
                         0, &hit);
    if (ret == -EEXIST)
        return refuse(s, kind, hit, offset);
    if (ret == -EFBIG)
        return qcow2_mark_corrupt(s, "more than %u runs of metadata clusters", QCOW2_MAX_META_RUNS);
    return ret;
}

void qcow2_meta_remove(Qcow2State *s, Qcow2MetaKind kind, uint64_t offset)
{
    if (s->meta)
        map_remove(s->meta, offset >> s->cluster_bits, kind);
}

void qcow2_meta_retire_l2(Qcow2State *s, uint64_t offset)
{
    if (!s->meta)
        return;
    const Qcow2MetaRun *r = map_find(s->meta, offset >> s->cluster_bits, 1);
    /* A table a snapshot names is still metadata once the active L1 stops pointing at it. */
    if (r && r->kind == QCOW2_META_L2 && !(r->flags & QCOW2_META_F_SNAPSHOT))
        map_remove(s->meta, offset >> s->cluster_bits, QCOW2_META_L2);
}
