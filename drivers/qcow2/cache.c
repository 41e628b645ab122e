/*
 * cache.c - the qcow2 driver's bounded metadata table cache.  It owns a fixed maximum number of
 * cluster-sized table slots (L2 tables or refcount blocks) in on-disk byte order, evicts the least
 * recently used unpinned clean table on a miss, tracks dirty tables, writes them back in dependency
 * order (another cache first, e.g. refcount blocks before L2 tables) and runs an optional hook before
 * each write.  Slot buffers are allocated lazily, so a large limit costs memory only for tables used.
 * It knows nothing about what the tables mean.
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
    Qcow2Cache *depends;
    Qcow2CacheWriteHook hook;
    void *hook_opaque;
    pthread_mutex_t lock;
};

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

/* Write one dirty slot back to disk. Caller holds c->lock. */
static int cache_write_slot(Qcow2Cache *c, CacheSlot *slot)
{
    if (!slot->dirty)
        return 0;
    if (c->depends) {
        int ret = qcow2_cache_flush(c->depends);
        if (ret < 0)
            return ret;
    }
    if (c->hook) {
        int ret = c->hook(c->hook_opaque, slot->offset, slot->table);
        if (ret < 0)
            return ret;
    }
    int ret = bdrv_pwrite(c->file, (int64_t)slot->offset, c->table_size, slot->table, 0);
    if (ret < 0)
        return ret;
    slot->dirty = false;
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
        if (read_from_disk) {
            int ret = bdrv_pread(c->file, (int64_t)offset, c->table_size, slot->table);
            if (ret < 0) {
                pthread_mutex_unlock(&c->lock);
                return ret;
            }
        } else {
            memset(slot->table, 0, c->table_size);
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
    return ret < 0 ? ret : fret;
}

void qcow2_cache_set_dependency(Qcow2Cache *c, Qcow2Cache *dep)
{
    pthread_mutex_lock(&c->lock);
    c->depends = dep;
    pthread_mutex_unlock(&c->lock);
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
