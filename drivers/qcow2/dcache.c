/* SPDX-License-Identifier: MIT */
/*
 * dcache.c - the qcow2 driver's cache of decompressed clusters.  A compressed cluster has to be
 * decompressed whole even when a request wants 4 KiB of it, so the last few decompressed clusters are
 * kept (a small least-recently-used set, a couple of MiB at most) for the reads of their other parts.
 * Entries are keyed by the raw L2 entry (host offset and length of the compressed bytes); a generation
 * counter lets a reader that decompressed while the image changed drop its result instead of caching
 * stale bytes.  It knows nothing of how clusters are found or decompressed.
 */
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"

/* Memory for decompressed clusters per node, and the number of slots it allows. */
#define DCACHE_BYTES (1u << 20)
#define DCACHE_MIN_SLOTS 2u
#define DCACHE_MAX_SLOTS 64u

void qcow2_dcache_init(Qcow2Dcache *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
}

void qcow2_dcache_destroy(Qcow2Dcache *c)
{
    for (unsigned i = 0; i < c->nslots; i++)
        free(c->slots[i].buf);
    free(c->slots);
    c->slots = NULL;
    c->nslots = 0;
    pthread_mutex_destroy(&c->lock);
}

bool qcow2_dcache_read(Qcow2Dcache *c, uint64_t key, uint64_t offset, uint64_t bytes, void *dst, uint64_t *gen)
{
    bool hit = false;
    pthread_mutex_lock(&c->lock);
    for (unsigned i = 0; i < c->nslots; i++) {
        Qcow2DcacheSlot *slot = &c->slots[i];
        if (slot->buf && slot->key == key) {
            memcpy(dst, slot->buf + offset, bytes);
            slot->last_use = ++c->tick;
            hit = true;
            break;
        }
    }
    *gen = c->gen;
    pthread_mutex_unlock(&c->lock);
    return hit;
}

/* The slot to fill: an empty one, else the least recently used. */
static Qcow2DcacheSlot *dcache_victim(Qcow2Dcache *c)
{
    Qcow2DcacheSlot *victim = &c->slots[0];
    for (unsigned i = 0; i < c->nslots; i++) {
        if (!c->slots[i].buf)
            return &c->slots[i];
        if (c->slots[i].last_use < victim->last_use)
            victim = &c->slots[i];
    }
    return victim;
}

void qcow2_dcache_keep(Qcow2Dcache *c, uint64_t key, uint32_t cluster_size, uint8_t **buf, uint64_t gen)
{
    pthread_mutex_lock(&c->lock);
    if (!c->slots) {
        unsigned n = MAX(DCACHE_MIN_SLOTS, MIN(DCACHE_MAX_SLOTS, DCACHE_BYTES / cluster_size));
        c->slots = calloc(n, sizeof(*c->slots));
        c->nslots = c->slots ? n : 0;
    }
    bool present = false;
    for (unsigned i = 0; i < c->nslots && !present; i++)
        present = c->slots[i].buf && c->slots[i].key == key;
    /* Stale (the image changed while it was decompressed) or already kept by another reader: the
     * caller frees its buffer. */
    if (c->nslots && gen == c->gen && !present) {
        Qcow2DcacheSlot *slot = dcache_victim(c);
        uint8_t *evicted = slot->buf;
        slot->buf = *buf;
        slot->key = key;
        slot->last_use = ++c->tick;
        *buf = evicted;
    }
    pthread_mutex_unlock(&c->lock);
}

void qcow2_dcache_invalidate(Qcow2Dcache *c)
{
    pthread_mutex_lock(&c->lock);
    for (unsigned i = 0; i < c->nslots; i++) {
        free(c->slots[i].buf);
        c->slots[i].buf = NULL;
    }
    c->gen++;
    pthread_mutex_unlock(&c->lock);
}

uint64_t qcow2_dcache_memory(Qcow2Dcache *c, uint32_t cluster_size)
{
    pthread_mutex_lock(&c->lock);
    uint64_t bytes = (uint64_t)c->nslots * sizeof(*c->slots);
    for (unsigned i = 0; i < c->nslots; i++)
        if (c->slots[i].buf)
            bytes += cluster_size;
    pthread_mutex_unlock(&c->lock);
    return bytes;
}
