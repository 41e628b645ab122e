/* SPDX-License-Identifier: MIT */
/*
 * chunkcache.c - a small, bounded cache of decompressed pieces of an image (cloop blocks, DMG chunks),
 * shared by the read-only compressed-format drivers.  It owns a fixed number of slots, each holding one
 * whole decompressed piece keyed by the driver's piece number, evicted least recently used; a lookup copies
 * the wanted bytes out under the cache's own mutex, so FUSE threads may share it while each decompresses
 * its misses outside any lock, at most `decoders` at once (so the buffers of misses stay within a budget).  It knows nothing of formats, compressors or files.
 */
#include "block.h"
#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct ChunkSlot {
    uint64_t key;
    uint8_t *data;      /* NULL: empty slot */
    size_t len;
    uint64_t used;      /* the cache's clock at the last hit */
} ChunkSlot;

struct ChunkCache {
    pthread_mutex_t lock;
    ChunkSlot *slots;
    int n_slots;
    uint64_t clock;
    uint64_t bytes;     /* held in slots now */
    pthread_cond_t decoder_free;
    int decoders_max, decoders_busy; /* misses decoding at once (each holds a piece-sized buffer) */
};

ChunkCache *chunk_cache_new(int slots, int decoders)
{
    ChunkCache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->n_slots = slots > 0 ? slots : 1;
    c->slots = calloc((size_t)c->n_slots, sizeof(ChunkSlot));
    if (!c->slots) {
        free(c);
        return NULL;
    }
    c->decoders_max = decoders > 0 ? decoders : 1;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->decoder_free, NULL);
    return c;
}

void chunk_cache_free(ChunkCache *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n_slots; i++)
        free(c->slots[i].data);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->decoder_free);
    free(c->slots);
    free(c);
}

bool chunk_cache_get(ChunkCache *c, uint64_t key, size_t offset, size_t len, void *dst)
{
    bool hit = false;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->n_slots; i++) {
        ChunkSlot *s = &c->slots[i];
        if (s->data && s->key == key && offset <= s->len && len <= s->len - offset) {
            memcpy(dst, s->data + offset, len);
            s->used = ++c->clock;
            hit = true;
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return hit;
}

void chunk_cache_put(ChunkCache *c, uint64_t key, void *data, size_t len)
{
    pthread_mutex_lock(&c->lock);
    ChunkSlot *victim = &c->slots[0];
    for (int i = 0; i < c->n_slots; i++) {
        ChunkSlot *s = &c->slots[i];
        if (s->data && s->key == key) { /* another thread decoded it first */
            pthread_mutex_unlock(&c->lock);
            free(data);
            return;
        }
        if (!s->data || (victim->data && s->used < victim->used))
            victim = s;
    }
    if (victim->data)
        c->bytes -= victim->len;
    free(victim->data);
    victim->key = key;
    victim->data = data;
    victim->len = len;
    victim->used = ++c->clock;
    c->bytes += len;
    pthread_mutex_unlock(&c->lock);
}

uint64_t chunk_cache_bytes(ChunkCache *c)
{
    pthread_mutex_lock(&c->lock);
    uint64_t b = c->bytes;
    pthread_mutex_unlock(&c->lock);
    return b;
}

void chunk_cache_decode_begin(ChunkCache *c)
{
    pthread_mutex_lock(&c->lock);
    while (c->decoders_busy >= c->decoders_max)
        pthread_cond_wait(&c->decoder_free, &c->lock);
    c->decoders_busy++;
    pthread_mutex_unlock(&c->lock);
}

void chunk_cache_decode_end(ChunkCache *c)
{
    pthread_mutex_lock(&c->lock);
    c->decoders_busy--;
    pthread_cond_signal(&c->decoder_free);
    pthread_mutex_unlock(&c->lock);
}

int chunk_cache_read(ChunkCache *c, uint64_t key, size_t offset, size_t len, void *dst, size_t piece_len,
                     int (*decode)(void *ctx, uint8_t **piece), void *ctx)
{
    if (chunk_cache_get(c, key, offset, len, dst))
        return 0;
    uint8_t *piece;
    chunk_cache_decode_begin(c);
    /* another thread may have decoded it while this one waited for a decoder */
    int r = chunk_cache_get(c, key, offset, len, dst) ? 1 : decode(ctx, &piece);
    chunk_cache_decode_end(c);
    if (r != 0)
        return r < 0 ? r : 0;
    memcpy(dst, piece + offset, len);
    chunk_cache_put(c, key, piece, piece_len);
    return 0;
}
