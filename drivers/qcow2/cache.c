/* SPDX-License-Identifier: MIT */
/*
 * cache.c - the qcow2 driver's bounded metadata table cache.  It owns a fixed maximum number of
 * cluster-sized table slots (L2 tables or refcount blocks) in on-disk byte order, evicts the least
 * recently used unpinned clean table on a miss, tracks dirty tables, writes them back in dependency
 * order (another cache first, e.g. refcount blocks before L2 tables) and runs an optional hook before
 * each write.  Slot buffers are allocated lazily, so a large limit costs memory only for tables used.
 * Behind the slots sits an optional compact tier with a byte budget: a clean table leaving the slots is
 * kept there run-length encoded (runs of equal or evenly spaced entries, which is what sequentially
 * allocated L2 tables look like), or as a plain copy when it does not compress, and is expanded back
 * into a slot on its next use instead of being read from disk again.  It knows nothing about what the
 * entries mean beyond their width.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"

typedef struct CacheSlot {
    uint64_t offset;   /* host offset of the table; 0 = slot empty */
    void *table;
    int pins;
    bool dirty;
    int hash_next;     /* next slot in the same offset bucket, -1 = end */
    int ptr_next;      /* next slot in the same table-pointer bucket, -1 = end */
    int lru_prev, lru_next; /* use order: head = most recent */
} CacheSlot;

/* One run of the compact tier: count entries, entry k = first + k * delta, second word constant. */
typedef struct CompactRun {
    uint64_t first;
    uint64_t second;   /* second 8 bytes of 16-byte entries (extended L2 bitmaps), else 0 */
    uint64_t delta;
    uint64_t count;
} CompactRun;

typedef struct CompactEntry {
    uint64_t offset;   /* 0 = free */
    void *blob;        /* CompactRun[nruns], or a plain copy of the table if nruns == 0 */
    uint32_t nruns;
    size_t bytes;      /* accounted size */
    int hash_next;
    int lru_prev, lru_next;
} CompactEntry;

typedef struct CompactTier {
    uint64_t budget;       /* bytes; 0 = tier disabled */
    uint64_t used;
    uint32_t entry_size;   /* 8 or 16 */
    CompactEntry *entries;
    int nentries, cap;
    int free_head;         /* free list through hash_next */
    int *buckets;
    uint32_t nbuckets;
    int lru_head, lru_tail;
    uint64_t hits;
} CompactTier;

struct Qcow2Cache {
    BlockNode *file;
    uint32_t table_size;
    int max_tables;
    CacheSlot *slots;
    int *offset_buckets;   /* nbuckets heads, -1 = empty */
    int *ptr_buckets;
    uint32_t nbuckets;     /* power of two */
    int lru_head, lru_tail;
    uint64_t hits, misses;
    CompactTier compact;
    Qcow2Cache *depends;
    bool unsynced;         /* tables written since the last flush of the file */
    Qcow2CacheWriteHook hook;
    void *hook_opaque;
    const char *debug_event; /* announced (bdrv_debug_event) just before each table write */
    pthread_mutex_t lock;
};

static void compact_free(CompactTier *t);

static uint32_t hash_u64(uint64_t v, uint32_t nbuckets)
{
    v ^= v >> 29;
    v *= 0xbf58476d1ce4e5b9ULL;
    v ^= v >> 32;
    return (uint32_t)v & (nbuckets - 1);
}

static uint32_t offset_bucket(const Qcow2Cache *c, uint64_t offset) { return hash_u64(offset, c->nbuckets); }
static uint32_t ptr_bucket(const Qcow2Cache *c, const void *p) { return hash_u64((uintptr_t)p, c->nbuckets); }

static void lru_unlink(Qcow2Cache *c, int i)
{
    CacheSlot *s = &c->slots[i];
    if (s->lru_prev >= 0)
        c->slots[s->lru_prev].lru_next = s->lru_next;
    else
        c->lru_head = s->lru_next;
    if (s->lru_next >= 0)
        c->slots[s->lru_next].lru_prev = s->lru_prev;
    else
        c->lru_tail = s->lru_prev;
    s->lru_prev = s->lru_next = -1;
}

static void lru_push_front(Qcow2Cache *c, int i)
{
    CacheSlot *s = &c->slots[i];
    s->lru_prev = -1;
    s->lru_next = c->lru_head;
    if (c->lru_head >= 0)
        c->slots[c->lru_head].lru_prev = i;
    c->lru_head = i;
    if (c->lru_tail < 0)
        c->lru_tail = i;
}

static void lru_push_back(Qcow2Cache *c, int i)
{
    CacheSlot *s = &c->slots[i];
    s->lru_next = -1;
    s->lru_prev = c->lru_tail;
    if (c->lru_tail >= 0)
        c->slots[c->lru_tail].lru_next = i;
    c->lru_tail = i;
    if (c->lru_head < 0)
        c->lru_head = i;
}

static void lru_touch(Qcow2Cache *c, int i)
{
    if (c->lru_head == i)
        return;
    lru_unlink(c, i);
    lru_push_front(c, i);
}

Qcow2Cache *qcow2_cache_new(BlockNode *file, uint32_t table_size, int max_tables)
{
    if (max_tables < 1 || table_size == 0)
        return NULL;
    Qcow2Cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->nbuckets = 1;
    while (c->nbuckets < (uint32_t)max_tables)
        c->nbuckets <<= 1;
    c->slots = calloc((size_t)max_tables, sizeof(*c->slots));
    c->offset_buckets = malloc(sizeof(int) * c->nbuckets);
    c->ptr_buckets = malloc(sizeof(int) * c->nbuckets);
    if (!c->slots || !c->offset_buckets || !c->ptr_buckets) {
        free(c->slots);
        free(c->offset_buckets);
        free(c->ptr_buckets);
        free(c);
        return NULL;
    }
    for (uint32_t b = 0; b < c->nbuckets; b++)
        c->offset_buckets[b] = c->ptr_buckets[b] = -1;
    c->lru_head = c->lru_tail = -1;
    for (int i = 0; i < max_tables; i++) {
        c->slots[i].hash_next = c->slots[i].ptr_next = -1;
        c->slots[i].lru_prev = c->slots[i].lru_next = -1;
        lru_push_front(c, i);
    }
    c->file = file;
    c->table_size = table_size;
    c->max_tables = max_tables;
    c->compact.free_head = -1;
    c->compact.lru_head = c->compact.lru_tail = -1;
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void qcow2_cache_free(Qcow2Cache *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->max_tables; i++)
        free(c->slots[i].table);
    free(c->slots);
    free(c->offset_buckets);
    free(c->ptr_buckets);
    compact_free(&c->compact);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static int cache_find(Qcow2Cache *c, uint64_t offset)
{
    for (int i = c->offset_buckets[offset_bucket(c, offset)]; i >= 0; i = c->slots[i].hash_next)
        if (c->slots[i].offset == offset)
            return i;
    return -1;
}

static CacheSlot *cache_slot_of_table(Qcow2Cache *c, const void *table)
{
    for (int i = c->ptr_buckets[ptr_bucket(c, table)]; i >= 0; i = c->slots[i].ptr_next)
        if (c->slots[i].table == table)
            return c->slots[i].offset ? &c->slots[i] : NULL;
    return NULL;
}

static void hash_insert(Qcow2Cache *c, int i)
{
    uint32_t b = offset_bucket(c, c->slots[i].offset);
    c->slots[i].hash_next = c->offset_buckets[b];
    c->offset_buckets[b] = i;
}

static void hash_remove(Qcow2Cache *c, int i)
{
    int *link = &c->offset_buckets[offset_bucket(c, c->slots[i].offset)];
    while (*link >= 0 && *link != i)
        link = &c->slots[*link].hash_next;
    if (*link == i)
        *link = c->slots[i].hash_next;
    c->slots[i].hash_next = -1;
    c->slots[i].offset = 0;
    c->slots[i].dirty = false;
}

/* ---------------------------------------------------------------- compact tier */

#define COMPACT_ENTRY_OVERHEAD ((size_t)sizeof(CompactEntry) + sizeof(int))

static uint32_t compact_bucket(const CompactTier *t, uint64_t offset) { return hash_u64(offset, t->nbuckets); }

static int compact_find(const CompactTier *t, uint64_t offset)
{
    if (!t->nbuckets)
        return -1;
    for (int i = t->buckets[compact_bucket(t, offset)]; i >= 0; i = t->entries[i].hash_next)
        if (t->entries[i].offset == offset)
            return i;
    return -1;
}

static void compact_lru_unlink(CompactTier *t, int i)
{
    CompactEntry *e = &t->entries[i];
    if (e->lru_prev >= 0)
        t->entries[e->lru_prev].lru_next = e->lru_next;
    else
        t->lru_head = e->lru_next;
    if (e->lru_next >= 0)
        t->entries[e->lru_next].lru_prev = e->lru_prev;
    else
        t->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = -1;
}

/* Put compact entry i (unlinked) at the head of the use order. */
static void compact_lru_push_front(CompactTier *t, int i)
{
    CompactEntry *e = &t->entries[i];
    e->lru_prev = -1;
    e->lru_next = t->lru_head;
    if (t->lru_head >= 0)
        t->entries[t->lru_head].lru_prev = i;
    t->lru_head = i;
    if (t->lru_tail < 0)
        t->lru_tail = i;
}

static void compact_remove(CompactTier *t, int i)
{
    CompactEntry *e = &t->entries[i];
    int *link = &t->buckets[compact_bucket(t, e->offset)];
    while (*link >= 0 && *link != i)
        link = &t->entries[*link].hash_next;
    if (*link == i)
        *link = e->hash_next;
    compact_lru_unlink(t, i);
    free(e->blob);
    t->used -= e->bytes;
    *e = (CompactEntry){ .offset = 0, .hash_next = t->free_head, .lru_prev = -1, .lru_next = -1 };
    t->free_head = i;
    t->nentries--;
}

static void compact_drop(CompactTier *t, uint64_t offset)
{
    int i = compact_find(t, offset);
    if (i >= 0)
        compact_remove(t, i);
}

static void compact_clear(CompactTier *t)
{
    while (t->lru_tail >= 0)
        compact_remove(t, t->lru_tail);
}

static void compact_free(CompactTier *t)
{
    compact_clear(t);
    free(t->entries);
    free(t->buckets);
}

/* Rehash into twice as many buckets once entries outnumber them. */
static int compact_grow_buckets(CompactTier *t)
{
    uint32_t nb = t->nbuckets ? t->nbuckets * 2 : 64;
    int *b = malloc(sizeof(int) * nb);
    if (!b)
        return -ENOMEM;
    for (uint32_t k = 0; k < nb; k++)
        b[k] = -1;
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
    for (int i = 0; i < t->cap; i++) {
        if (!t->entries[i].offset)
            continue;
        uint32_t k = compact_bucket(t, t->entries[i].offset);
        t->entries[i].hash_next = b[k];
        b[k] = i;
    }
    return 0;
}

static int compact_new_entry(CompactTier *t)
{
    if (t->free_head < 0) {
        int ncap = t->cap ? t->cap * 2 : 64;
        CompactEntry *e = realloc(t->entries, sizeof(*e) * (size_t)ncap);
        if (!e)
            return -ENOMEM;
        t->entries = e;
        for (int i = ncap - 1; i >= t->cap; i--) {
            e[i] = (CompactEntry){ .offset = 0, .hash_next = t->free_head, .lru_prev = -1, .lru_next = -1 };
            t->free_head = i;
        }
        t->cap = ncap;
    }
    if ((uint32_t)t->nentries + 1 > t->nbuckets && compact_grow_buckets(t) < 0)
        return -ENOMEM;
    int i = t->free_head;
    t->free_head = t->entries[i].hash_next;
    t->nentries++;
    return i;
}

/* Run-length encode a table; returns the number of runs, or 0 if it needs more than max_runs. */
static uint32_t compact_encode(const uint8_t *table, uint32_t table_size, uint32_t entry_size,
                               CompactRun *runs, uint32_t max_runs)
{
    uint32_t n = table_size / entry_size, nruns = 0;
    CompactRun *r = NULL;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t v = ld_be64(table + (size_t)i * entry_size);
        uint64_t w = entry_size == 16 ? ld_be64(table + (size_t)i * entry_size + 8) : 0;
        if (r && w == r->second) {
            if (r->count == 1) {
                r->delta = v - r->first;
                r->count = 2;
                continue;
            }
            if (v == r->first + r->count * r->delta) {
                r->count++;
                continue;
            }
        }
        if (nruns == max_runs)
            return 0;
        r = &runs[nruns++];
        *r = (CompactRun){ .first = v, .second = w, .delta = 0, .count = 1 };
    }
    return nruns;
}

static void compact_decode(const CompactRun *runs, uint32_t nruns, uint32_t entry_size, uint8_t *table)
{
    uint8_t *p = table;
    for (uint32_t r = 0; r < nruns; r++) {
        for (uint64_t k = 0; k < runs[r].count; k++) {
            st_be64(p, runs[r].first + k * runs[r].delta);
            if (entry_size == 16)
                st_be64(p + 8, runs[r].second);
            p += entry_size;
        }
    }
}

/* Keep a copy of a clean table leaving the slots; the oldest entries make room. Failure to keep it
 * only costs a later disk read. */
static void compact_insert(Qcow2Cache *c, uint64_t offset, const void *table)
{
    CompactTier *t = &c->compact;
    if (!t->budget)
        return;
    compact_drop(t, offset);
    uint32_t max_runs = c->table_size / (uint32_t)sizeof(CompactRun) / 2;
    CompactRun *runs = max_runs ? malloc(sizeof(CompactRun) * max_runs) : NULL;
    uint32_t nruns = runs ? compact_encode(table, c->table_size, t->entry_size, runs, max_runs) : 0;
    size_t blob_len = nruns ? sizeof(CompactRun) * nruns : c->table_size;
    size_t bytes = blob_len + COMPACT_ENTRY_OVERHEAD;
    if (bytes > t->budget) {
        free(runs);
        return;
    }
    while (t->used + bytes > t->budget && t->lru_tail >= 0)
        compact_remove(t, t->lru_tail);
    void *blob = malloc(blob_len);
    int i = blob ? compact_new_entry(t) : -ENOMEM;
    if (i < 0) {
        free(blob);
        free(runs);
        return;
    }
    memcpy(blob, nruns ? (const void *)runs : table, blob_len);
    free(runs);
    CompactEntry *e = &t->entries[i];
    *e = (CompactEntry){ .offset = offset, .blob = blob, .nruns = nruns, .bytes = bytes, .lru_prev = -1 };
    uint32_t k = compact_bucket(t, offset);
    e->hash_next = t->buckets[k];
    t->buckets[k] = i;
    compact_lru_push_front(t, i);
    t->used += bytes;
}

/* Move the table at offset from the compact tier into table; false if it is not there. */
static bool compact_take(Qcow2Cache *c, uint64_t offset, void *table)
{
    CompactTier *t = &c->compact;
    int i = compact_find(t, offset);
    if (i < 0)
        return false;
    CompactEntry *e = &t->entries[i];
    if (e->nruns)
        compact_decode(e->blob, e->nruns, t->entry_size, table);
    else
        memcpy(table, e->blob, c->table_size);
    compact_remove(t, i);
    t->hits++;
    return true;
}

/* Make compact entry i the most recently used. */
static void compact_touch(CompactTier *t, int i)
{
    if (t->lru_head == i)
        return;
    compact_lru_unlink(t, i);
    compact_lru_push_front(t, i);
}

/* Decode entries [first, first + count) of a compact entry into out. */
static void compact_decode_range(const CompactTier *t, const CompactEntry *e, uint32_t first, uint32_t count,
                                 uint8_t *out)
{
    uint32_t es = t->entry_size;
    if (!e->nruns) {
        memcpy(out, (const uint8_t *)e->blob + (size_t)first * es, (size_t)count * es);
        return;
    }
    const CompactRun *runs = e->blob;
    uint64_t run_start = 0;
    for (uint32_t r = 0; r < e->nruns && count > 0; r++) {
        uint64_t run_end = run_start + runs[r].count;
        for (uint64_t k = MAX(first, run_start); k < run_end && count > 0; k++, first++, count--) {
            st_be64(out, runs[r].first + (k - run_start) * runs[r].delta);
            if (es == 16)
                st_be64(out + 8, runs[r].second);
            out += es;
        }
        run_start = run_end;
    }
}

int qcow2_cache_read_entries(Qcow2Cache *c, uint64_t offset, uint32_t entry_size, uint32_t first,
                             uint32_t count, void *out)
{
    if ((uint64_t)first + count > c->table_size / entry_size)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    int i = offset ? cache_find(c, offset) : -1;
    if (i >= 0) {
        c->hits++;
        lru_touch(c, i);
        memcpy(out, (const uint8_t *)c->slots[i].table + (size_t)first * entry_size, (size_t)count * entry_size);
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    int k = entry_size == c->compact.entry_size ? compact_find(&c->compact, offset) : -1;
    if (k >= 0) {
        c->compact.hits++;
        compact_touch(&c->compact, k);
        compact_decode_range(&c->compact, &c->compact.entries[k], first, count, out);
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    pthread_mutex_unlock(&c->lock);
    void *table;
    int ret = qcow2_cache_get(c, offset, &table);
    if (ret < 0)
        return ret;
    memcpy(out, (const uint8_t *)table + (size_t)first * entry_size, (size_t)count * entry_size);
    qcow2_cache_put(c, &table);
    return 0;
}

void qcow2_cache_set_compact_budget(Qcow2Cache *c, uint64_t bytes, uint32_t entry_size)
{
    pthread_mutex_lock(&c->lock);
    compact_clear(&c->compact);
    c->compact.budget = (entry_size == 8 || entry_size == 16) ? bytes : 0;
    c->compact.entry_size = entry_size;
    pthread_mutex_unlock(&c->lock);
}

uint64_t qcow2_cache_compact_used(Qcow2Cache *c)
{
    pthread_mutex_lock(&c->lock);
    uint64_t used = c->compact.used;
    pthread_mutex_unlock(&c->lock);
    return used;
}

uint64_t qcow2_cache_memory(Qcow2Cache *c)
{
    uint64_t bytes = sizeof(*c) + (uint64_t)c->max_tables * sizeof(*c->slots) + 2ull * c->nbuckets * sizeof(int);
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->max_tables; i++)
        if (c->slots[i].table)
            bytes += c->table_size;
    bytes += c->compact.used + (uint64_t)c->compact.cap * sizeof(*c->compact.entries) +
             (uint64_t)c->compact.nbuckets * sizeof(int);
    pthread_mutex_unlock(&c->lock);
    return bytes;
}

/* ---------------------------------------------------------------- slots */

/* Whether c holds dirty tables or wrote tables that have not been flushed to the disk yet. */
static bool cache_needs_flush(Qcow2Cache *c)
{
    pthread_mutex_lock(&c->lock);
    bool needed = c->unsynced;
    for (int i = 0; !needed && i < c->max_tables; i++)
        needed = c->slots[i].offset && c->slots[i].dirty;
    pthread_mutex_unlock(&c->lock);
    return needed;
}

/* Write one dirty slot back to disk. Caller holds c->lock. */
static int cache_write_slot(Qcow2Cache *c, CacheSlot *slot)
{
    if (!slot->dirty)
        return 0;
    if (c->depends && cache_needs_flush(c->depends)) {
        int ret = qcow2_cache_flush(c->depends);
        if (ret < 0)
            return ret;
    }
    if (c->hook) {
        int ret = c->hook(c->hook_opaque, slot->offset, slot->table);
        if (ret < 0)
            return ret;
    }
    if (c->debug_event)
        bdrv_debug_event(c->file, c->debug_event);
    int ret = bdrv_pwrite(c->file, (int64_t)slot->offset, c->table_size, slot->table, 0);
    if (ret < 0)
        return ret;
    slot->dirty = false;
    c->unsynced = true;
    return 0;
}

/* Pick a slot for a new table: the least recently used unpinned one (empty slots sit at the tail),
 * written back first if dirty. Caller holds c->lock. Returns the slot index or -errno. */
static int cache_victim(Qcow2Cache *c)
{
    int i = c->lru_tail;
    while (i >= 0 && c->slots[i].pins > 0)
        i = c->slots[i].lru_prev;
    if (i < 0)
        return -ENOMEM; /* every slot pinned: the caller holds more tables than the cache has */
    CacheSlot *s = &c->slots[i];
    if (s->offset) {
        int ret = cache_write_slot(c, s);
        if (ret < 0)
            return ret;
        compact_insert(c, s->offset, s->table);
        hash_remove(c, i);
    }
    if (!s->table) {
        s->table = aligned_alloc_zero(c->table_size);
        if (!s->table)
            return -ENOMEM;
        uint32_t b = ptr_bucket(c, s->table);
        s->ptr_next = c->ptr_buckets[b];
        c->ptr_buckets[b] = i;
    }
    return i;
}

static int cache_get(Qcow2Cache *c, uint64_t offset, void **table, bool read_from_disk)
{
    if (offset == 0)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    int i = cache_find(c, offset);
    if (i >= 0) {
        c->hits++;
        if (!read_from_disk)
            memset(c->slots[i].table, 0, c->table_size);
    } else {
        c->misses++;
        i = cache_victim(c);
        if (i < 0) {
            pthread_mutex_unlock(&c->lock);
            return i;
        }
        CacheSlot *slot = &c->slots[i];
        if (!read_from_disk) {
            compact_drop(&c->compact, offset);
            memset(slot->table, 0, c->table_size);
        } else if (!compact_take(c, offset, slot->table)) {
            int ret = bdrv_pread(c->file, (int64_t)offset, c->table_size, slot->table);
            if (ret < 0) {
                pthread_mutex_unlock(&c->lock);
                return ret;
            }
        }
        slot->offset = offset;
        slot->dirty = false;
        hash_insert(c, i);
    }
    c->slots[i].pins++;
    lru_touch(c, i);
    *table = c->slots[i].table;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

int qcow2_cache_get(Qcow2Cache *c, uint64_t offset, void **table)
{
    return cache_get(c, offset, table, true);
}

int qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset, void **table)
{
    return cache_get(c, offset, table, false);
}

void qcow2_cache_put(Qcow2Cache *c, void **table)
{
    if (!*table)
        return;
    pthread_mutex_lock(&c->lock);
    CacheSlot *slot = cache_slot_of_table(c, *table);
    if (slot && slot->pins > 0)
        slot->pins--;
    pthread_mutex_unlock(&c->lock);
    *table = NULL;
}

void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table)
{
    pthread_mutex_lock(&c->lock);
    CacheSlot *slot = cache_slot_of_table(c, table);
    if (slot)
        slot->dirty = true;
    pthread_mutex_unlock(&c->lock);
}

int qcow2_cache_write_back(Qcow2Cache *c)
{
    int result = 0;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->max_tables; i++) {
        CacheSlot *s = &c->slots[i];
        if (s->offset && s->dirty) {
            int ret = cache_write_slot(c, s);
            if (ret < 0 && result == 0)
                result = ret;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return result;
}

int qcow2_cache_flush(Qcow2Cache *c)
{
    int ret = qcow2_cache_write_back(c);
    int fret = bdrv_flush(c->file);
    if (ret == 0 && fret == 0) {
        pthread_mutex_lock(&c->lock);
        c->unsynced = false;
        pthread_mutex_unlock(&c->lock);
    }
    return ret < 0 ? ret : fret;
}

void qcow2_cache_set_dependency(Qcow2Cache *c, Qcow2Cache *dep)
{
    pthread_mutex_lock(&c->lock);
    c->depends = dep;
    pthread_mutex_unlock(&c->lock);
}

void qcow2_cache_set_debug_event(Qcow2Cache *c, const char *event)
{
    c->debug_event = event;
}

void qcow2_cache_set_write_hook(Qcow2Cache *c, Qcow2CacheWriteHook hook, void *opaque)
{
    pthread_mutex_lock(&c->lock);
    c->hook = hook;
    c->hook_opaque = opaque;
    pthread_mutex_unlock(&c->lock);
}

void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset)
{
    pthread_mutex_lock(&c->lock);
    int i = cache_find(c, offset);
    if (i >= 0 && c->slots[i].pins == 0) {
        hash_remove(c, i);
        lru_unlink(c, i);
        lru_push_back(c, i);
    }
    compact_drop(&c->compact, offset);
    pthread_mutex_unlock(&c->lock);
}

int qcow2_cache_empty(Qcow2Cache *c)
{
    int ret = 0;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->max_tables; i++) {
        CacheSlot *s = &c->slots[i];
        if (!s->offset)
            continue;
        if (s->pins || s->dirty) {
            ret = -EBUSY;
            continue;
        }
        hash_remove(c, i);
        lru_unlink(c, i);
        lru_push_back(c, i);
    }
    compact_clear(&c->compact);
    pthread_mutex_unlock(&c->lock);
    return ret;
}

int qcow2_cache_max_tables(const Qcow2Cache *c)
{
    return c->max_tables;
}

void qcow2_cache_stats(const Qcow2Cache *c, uint64_t *hits, uint64_t *misses)
{
    Qcow2Cache *m = (Qcow2Cache *)c;
    pthread_mutex_lock(&m->lock);
    *hits = c->hits;
    *misses = c->misses;
    pthread_mutex_unlock(&m->lock);
}
