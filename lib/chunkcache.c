/* SPDX-License-Identifier: MIT */
/*
 * chunkcache.c - a small, bounded cache of decompressed pieces of an image (cloop blocks, DMG chunks),
 * shared by the read-only compressed-format drivers.  It owns a fixed number of slots, each holding one
 * whole decompressed piece keyed by the driver's piece number, evicted least recently used; a lookup copies
 * the wanted bytes out under the cache's own mutex, so FUSE threads may share it while each decompresses
 * its misses outside any lock, at most `decoders` at once (so the buffers of misses stay within a budget).
 * A piece is decoded once at a time: a thread that misses a piece another thread is decoding waits for
 * it (the kernel's readahead sends several requests within one DMG chunk at once; each used to inflate
 * the whole chunk again).  chunk_inflate_zlib decodes a zlib stream of a known size for these drivers
 * with libdeflate (a decompressor per thread; about twice zlib's speed).  It knows nothing of formats or
 * files.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <libdeflate.h>
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
    pthread_cond_t decoder_free;     /* a decoder finished (broadcast: waiters for a piece retry) */
    int decoders_max, decoders_busy; /* misses decoding at once (each holds a piece-sized buffer) */
    uint64_t *decoding;              /* keys being decoded by chunk_cache_read, decoders_max entries */
    bool *decoding_live;
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
    c->decoding = calloc((size_t)c->decoders_max, sizeof(*c->decoding));
    c->decoding_live = calloc((size_t)c->decoders_max, sizeof(*c->decoding_live));
    if (!c->decoding || !c->decoding_live) {
        free(c->decoding);
        free(c->decoding_live);
        free(c->slots);
        free(c);
        return NULL;
    }
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
    free(c->decoding);
    free(c->decoding_live);
    free(c->slots);
    free(c);
}

/* A hit copies the range out (lock held). */
static bool cache_copy_locked(ChunkCache *c, uint64_t key, size_t offset, size_t len, void *dst)
{
    for (int i = 0; i < c->n_slots; i++) {
        ChunkSlot *s = &c->slots[i];
        if (s->data && s->key == key && offset <= s->len && len <= s->len - offset) {
            memcpy(dst, s->data + offset, len);
            s->used = ++c->clock;
            return true;
        }
    }
    return false;
}

bool chunk_cache_get(ChunkCache *c, uint64_t key, size_t offset, size_t len, void *dst)
{
    pthread_mutex_lock(&c->lock);
    bool hit = cache_copy_locked(c, key, offset, len, dst);
    pthread_mutex_unlock(&c->lock);
    return hit;
}

/* Hands data over to a slot, the least recently used one (lock held). */
static void cache_put_locked(ChunkCache *c, uint64_t key, void *data, size_t len)
{
    ChunkSlot *victim = &c->slots[0];
    for (int i = 0; i < c->n_slots; i++) {
        ChunkSlot *s = &c->slots[i];
        if (s->data && s->key == key) { /* another thread decoded it first */
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
}

void chunk_cache_put(ChunkCache *c, uint64_t key, void *data, size_t len)
{
    pthread_mutex_lock(&c->lock);
    cache_put_locked(c, key, data, len);
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
    pthread_cond_broadcast(&c->decoder_free);
    pthread_mutex_unlock(&c->lock);
}

/* Is piece key being decoded by another thread now? (lock held) */
static bool cache_decoding_locked(const ChunkCache *c, uint64_t key)
{
    for (int i = 0; i < c->decoders_max; i++)
        if (c->decoding_live[i] && c->decoding[i] == key)
            return true;
    return false;
}

/* Marks key as being decoded; a free entry exists while decoders_busy < decoders_max (lock held). */
static int cache_decoding_add_locked(ChunkCache *c, uint64_t key)
{
    int i = 0;
    while (c->decoding_live[i])
        i++;
    c->decoding[i] = key;
    c->decoding_live[i] = true;
    c->decoders_busy++;
    return i;
}

int chunk_cache_read(ChunkCache *c, uint64_t key, size_t offset, size_t len, void *dst, size_t piece_len,
                     int (*decode)(void *ctx, uint8_t **piece), void *ctx)
{
    pthread_mutex_lock(&c->lock);
    /* a hit; else wait while another thread decodes this piece or every decoder is busy */
    while (!cache_copy_locked(c, key, offset, len, dst)) {
        if (!cache_decoding_locked(c, key) && c->decoders_busy < c->decoders_max) {
            int slot = cache_decoding_add_locked(c, key);
            pthread_mutex_unlock(&c->lock);
            uint8_t *piece = NULL;
            int r = decode(ctx, &piece);
            if (r == 0)
                memcpy(dst, piece + offset, len);
            pthread_mutex_lock(&c->lock);
            c->decoding_live[slot] = false;
            c->decoders_busy--;
            if (r == 0)
                cache_put_locked(c, key, piece, piece_len);
            pthread_cond_broadcast(&c->decoder_free);
            pthread_mutex_unlock(&c->lock);
            return r < 0 ? r : 0;
        }
        pthread_cond_wait(&c->decoder_free, &c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return 0;
}

/* ---------------------------------------------------------------- zlib pieces (libdeflate) */

static pthread_key_t inflate_key;
static pthread_once_t inflate_once = PTHREAD_ONCE_INIT;
static bool inflate_key_ok;

static void inflate_free(void *d)
{
    libdeflate_free_decompressor(d);
}

static void inflate_key_create(void)
{
    inflate_key_ok = pthread_key_create(&inflate_key, inflate_free) == 0;
}

int chunk_inflate_zlib(const void *src, size_t slen, void *dst, size_t dlen)
{
    pthread_once(&inflate_once, inflate_key_create);
    struct libdeflate_decompressor *d = inflate_key_ok ? pthread_getspecific(inflate_key) : NULL;
    if (!d && inflate_key_ok && (d = libdeflate_alloc_decompressor()) && pthread_setspecific(inflate_key, d) != 0) {
        libdeflate_free_decompressor(d);
        d = NULL;
    }
    if (!d)
        return -ENOMEM;
    /* no actual-size pointer: anything but exactly dlen bytes (short, long, corrupt) fails */
    return libdeflate_zlib_decompress(d, src, slen, dst, dlen, NULL) == LIBDEFLATE_SUCCESS ? 0 : -EIO;
}
