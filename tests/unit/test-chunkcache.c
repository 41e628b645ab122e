/* SPDX-License-Identifier: MIT */
/*
 * test-chunkcache.c - unit tests of lib/chunkcache.c, the bounded cache of decompressed pieces the cloop
 * and dmg drivers share: hits copy the asked range, the least recently used slot is evicted, a piece put
 * twice is kept once, the bytes held are counted, and decode_begin lets no more than the allowed number
 * of threads decode at once; threads that miss the same piece at once decode it once.
 */
#include "block.h"
#include "tap.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *piece(uint8_t fill, size_t len)
{
    uint8_t *p = malloc(len);
    memset(p, fill, len);
    return p;
}

static void test_lru(void)
{
    ChunkCache *c = chunk_cache_new(2, 1);
    uint8_t out[8] = { 0 };
    chunk_cache_put(c, 1, piece(0x11, 64), 64);
    chunk_cache_put(c, 2, piece(0x22, 64), 64);
    ok(chunk_cache_get(c, 1, 60, 4, out) && out[0] == 0x11 && out[3] == 0x11, "a hit copies the asked range");
    ok(!chunk_cache_get(c, 1, 60, 8, out), "a range past the piece's end is a miss, not an overread");
    chunk_cache_put(c, 3, piece(0x33, 64), 64);
    ok(!chunk_cache_get(c, 2, 0, 1, out), "the least recently used piece was evicted");
    ok(chunk_cache_get(c, 1, 0, 1, out) && chunk_cache_get(c, 3, 0, 1, out), "the others stay");
    chunk_cache_put(c, 3, piece(0x44, 64), 64);
    ok(chunk_cache_get(c, 3, 0, 1, out) && out[0] == 0x33, "a piece put twice keeps the first copy");
    ok(chunk_cache_bytes(c) == 128, "two pieces of 64 bytes held: %llu", (unsigned long long)chunk_cache_bytes(c));
    chunk_cache_free(c);
}

static ChunkCache *shared;
static int busy, peak;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static void *decoder(void *arg)
{
    (void)arg;
    chunk_cache_decode_begin(shared);
    pthread_mutex_lock(&count_lock);
    busy++;
    peak = MAX(peak, busy);
    pthread_mutex_unlock(&count_lock);
    usleep(20000);
    pthread_mutex_lock(&count_lock);
    busy--;
    pthread_mutex_unlock(&count_lock);
    chunk_cache_decode_end(shared);
    return NULL;
}

static void test_decoders(void)
{
    pthread_t t[8];
    shared = chunk_cache_new(1, 2);
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, decoder, NULL);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    ok(peak == 2, "8 threads, 2 decoders allowed: at most %d decoded at once", peak);
    chunk_cache_free(shared);
}

static _Atomic int decodes;

static int slow_decode(void *ctx, uint8_t **out)
{
    (void)ctx;
    decodes++;
    usleep(50000);
    *out = piece(0x5a, 4096);
    return 0;
}

static int same_ok;

static void *same_reader(void *arg)
{
    uint8_t out[512];
    int r = chunk_cache_read(shared, 7, (size_t)(intptr_t)arg * 512, sizeof out, out, 4096, slow_decode, NULL);
    pthread_mutex_lock(&count_lock);
    same_ok += r == 0 && out[0] == 0x5a && out[511] == 0x5a;
    pthread_mutex_unlock(&count_lock);
    return NULL;
}

/* The kernel's readahead asks for several ranges of one DMG chunk at once: one inflate, not one each. */
static void test_same_piece(void)
{
    pthread_t t[4];
    shared = chunk_cache_new(4, 4);
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, same_reader, (void *)(intptr_t)i);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    ok(same_ok == 4, "4 threads reading one piece at once all got its bytes (%d)", same_ok);
    ok(decodes == 1, "4 threads missing one piece at once, 4 decoders allowed: decoded %d time(s)", (int)decodes);
    chunk_cache_free(shared);
}

int main(void)
{
    test_lru();
    test_decoders();
    test_same_piece();
    return done_testing();
}
