/* SPDX-License-Identifier: MIT */
/*
 * cloop.c - the cloop (compressed loopback) format driver, read-only.  It owns the V2.0 layout that
 * create_compressed_fs writes: a shell-script preamble of 128 bytes ("#!/bin/sh" and "#V2.0 Format"), a
 * big-endian block size and block count, then block count + 1 absolute big-endian 64-bit file offsets;
 * block i is the zlib stream between offsets i and i+1 and inflates to exactly one block.  Every field is
 * checked at open (block size a non-zero multiple of 512 within CLOOP_MAX_BLOCK_SIZE, the table within
 * CLOOP_MAX_TABLE_BYTES and the file, offsets non-decreasing, each stream within CLOOP_MAX_STREAM of a
 * block), so the read path trusts the table.  Other preamble versions (the V3/V4 layouts of later cloop
 * releases, with other compressors) are refused by name.  Decompressed blocks sit in a bounded cache
 * (lib/chunkcache.c); FUSE threads inflate their misses in parallel outside any lock.  A block that does
 * not inflate to exactly the block size reads as EIO.  It knows nothing of FUSE or of other formats.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLOOP_PREAMBLE_SIZE   128
#define CLOOP_HEADER_SIZE     136        /* preamble, block size, block count */
#define CLOOP_MAX_BLOCK_SIZE  (16 * MiB)
#define CLOOP_MAX_TABLE_BYTES (256 * MiB) /* offsets table: 32 Mi blocks, 2 TiB of 64 KiB blocks */
#define CLOOP_CACHE_BYTES     (32 * MiB)  /* decompressed blocks kept (at least one block) */
#define CLOOP_DECODE_BYTES    (32 * MiB)  /* blocks being inflated at once (at least one) */
#define CLOOP_CACHE_SLOTS     16

static const char cloop_shebang[] = "#!/bin/sh\n";

typedef struct CloopState {
    BlockNode *file;
    uint32_t block_size;
    uint32_t n_blocks;
    uint64_t *offsets;      /* n_blocks + 1 absolute file offsets, host order */
    uint64_t max_stream;    /* longest compressed block allowed */
    ChunkCache *cache;
} CloopState;

/* The most a zlib stream of one block may take: the block and generous deflate overhead. */
static uint64_t cloop_max_stream(uint32_t block_size)
{
    return (uint64_t)block_size + block_size / 2 + 4096;
}

/* "#V2.0" of the preamble's second line into ver (empty when absent). */
static void cloop_version(const uint8_t *buf, size_t len, char *ver, size_t verlen)
{
    size_t skip = sizeof(cloop_shebang) - 1, n = 0;
    ver[0] = 0;
    if (len < skip + 2 || memcmp(buf, cloop_shebang, skip) != 0 || buf[skip] != '#' || buf[skip + 1] != 'V')
        return;
    for (size_t i = skip + 1; i < len && n + 1 < verlen && buf[i] != ' ' && buf[i] != '\n'; i++)
        ver[n++] = (char)buf[i];
    ver[n] = 0;
}

static int cloop_probe(const uint8_t *buf, size_t len, const char *filename)
{
    char ver[16];
    (void)filename;
    cloop_version(buf, MIN(len, (size_t)CLOOP_PREAMBLE_SIZE), ver, sizeof(ver));
    return ver[0] ? 100 : 0;
}

static void cloop_close(BlockNode *bs)
{
    CloopState *s = bs->opaque;
    free(s->offsets);
    chunk_cache_free(s->cache);
    s->offsets = NULL;
    s->cache = NULL;
}

/* Reads and checks the offsets table: inside the file, non-decreasing, every stream bounded. */
static int cloop_read_table(CloopState *s, int64_t flen, Error *err)
{
    uint64_t entries = (uint64_t)s->n_blocks + 1, bytes = entries * 8;
    if (bytes > CLOOP_MAX_TABLE_BYTES) {
        error_set(err, EFBIG, "cloop block count %" PRIu32 " too large (offsets table over %lld MiB)",
                  s->n_blocks, CLOOP_MAX_TABLE_BYTES / MiB);
        return -EFBIG;
    }
    if (CLOOP_HEADER_SIZE + bytes > (uint64_t)flen) {
        error_set(err, EINVAL, "cloop offsets table of %" PRIu32 " blocks passes the end of the file",
                  s->n_blocks);
        return -EINVAL;
    }
    s->offsets = malloc(bytes);
    if (!s->offsets)
        return -ENOMEM;
    int r = bdrv_pread(s->file, CLOOP_HEADER_SIZE, (int64_t)bytes, s->offsets);
    if (r < 0) {
        error_set(err, -r, "cannot read the cloop offsets table: %s", strerror(-r));
        return r;
    }
    for (uint64_t i = 0; i < entries; i++) {
        s->offsets[i] = ld_be64(&s->offsets[i]);
        if (s->offsets[i] > (uint64_t)flen || (i == 0 && s->offsets[0] < CLOOP_HEADER_SIZE + bytes)) {
            error_set(err, EINVAL, "cloop block %" PRIu64 " offset %" PRIu64 " outside the data area", i,
                      s->offsets[i]);
            return -EINVAL;
        }
        if (i && (s->offsets[i] < s->offsets[i - 1] || s->offsets[i] - s->offsets[i - 1] > s->max_stream)) {
            error_set(err, EINVAL, "cloop block %" PRIu64 " has a bad compressed length", i - 1);
            return -EINVAL;
        }
    }
    return 0;
}

static int cloop_check_header(BlockNode *bs, const uint8_t *hdr, CloopState *s, Error *err)
{
    char ver[16];
    cloop_version(hdr, CLOOP_PREAMBLE_SIZE, ver, sizeof(ver));
    if (!ver[0]) {
        error_set(err, EINVAL, "not a cloop image (no \"#!/bin/sh\" / \"#V2.0 Format\" preamble)");
        return -EINVAL;
    }
    if (strcmp(ver, "V2.0") != 0) {
        error_set(err, ENOTSUP, "cloop %s format not supported (only V2.0, zlib blocks)", ver);
        return -ENOTSUP;
    }
    if (!bs->read_only) {
        error_set(err, EROFS, "cloop images are read-only (mount without --rw, or use --overlay)");
        return -EROFS;
    }
    s->block_size = ld_be32(hdr + CLOOP_PREAMBLE_SIZE);
    s->n_blocks = ld_be32(hdr + CLOOP_PREAMBLE_SIZE + 4);
    if (s->block_size == 0 || s->block_size % 512 || s->block_size > CLOOP_MAX_BLOCK_SIZE) {
        error_set(err, EINVAL, "cloop block size %" PRIu32 " invalid (a multiple of 512 up to %lld MiB)",
                  s->block_size, CLOOP_MAX_BLOCK_SIZE / MiB);
        return -EINVAL;
    }
    s->max_stream = cloop_max_stream(s->block_size);
    return 0;
}

static int cloop_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    CloopState *s = bs->opaque;
    uint8_t hdr[CLOOP_HEADER_SIZE];
    (void)opts;
    s->file = bs->file;
    int64_t flen = bdrv_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    if (flen < CLOOP_HEADER_SIZE) {
        error_set(err, EINVAL, "file too short for a cloop header (%" PRId64 " bytes)", flen);
        return -EINVAL;
    }
    int r = bdrv_pread(bs->file, 0, CLOOP_HEADER_SIZE, hdr);
    if (r == 0)
        r = cloop_check_header(bs, hdr, s, err);
    if (r == 0)
        r = cloop_read_table(s, flen, err);
    if (r == 0) { /* block_size is checked: non-zero */
        int slots = (int)MAX(1, MIN(CLOOP_CACHE_SLOTS, CLOOP_CACHE_BYTES / s->block_size));
        int decoders = (int)MAX(1, MIN(CLOOP_CACHE_SLOTS, CLOOP_DECODE_BYTES / s->block_size));
        if (!(s->cache = chunk_cache_new(slots, decoders)))
            r = -ENOMEM;
    }
    if (r < 0) {
        cloop_close(bs);
        return r;
    }
    bs->request_alignment = 1;
    return 0;
}

static int64_t cloop_getlength(BlockNode *bs)
{
    CloopState *s = bs->opaque;
    return (int64_t)s->n_blocks * s->block_size;
}

typedef struct CloopPiece {
    CloopState *s;
    uint32_t i;
} CloopPiece;

/* Inflates block i (a zlib stream) into a new buffer of exactly one block; -EIO when it does not fit. */
static int cloop_inflate_block(CloopState *s, uint32_t i, uint8_t **out)
{
    uint64_t clen = s->offsets[i + 1] - s->offsets[i];
    uint8_t *src = malloc(clen ? clen : 1), *dst = malloc(s->block_size);
    int r = src && dst ? bdrv_pread(s->file, (int64_t)s->offsets[i], (int64_t)clen, src) : -ENOMEM;
    if (r == 0)
        r = chunk_inflate_zlib(src, clen, dst, s->block_size); /* -EIO: short, long, truncated or corrupt */
    free(src);
    if (r < 0) {
        free(dst);
        return r;
    }
    *out = dst;
    return 0;
}

static int cloop_inflate_piece(void *ctx, uint8_t **out)
{
    CloopPiece *p = ctx;
    return cloop_inflate_block(p->s, p->i, out);
}

/* The map: every block is compressed data of this layer; a run never crosses a block. */
static int cloop_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    CloopState *s = bs->opaque;
    (void)opaque;
    int64_t end = (offset / s->block_size + 1) * (int64_t)s->block_size;
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_COMPRESSED;
    st->bytes = MIN(bytes, end - offset);
    return 0;
}

static int cloop_decode(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st,
                        void *opaque)
{
    CloopState *s = bs->opaque;
    CloopPiece p = { s, (uint32_t)(offset / s->block_size) };
    (void)st;
    (void)opaque;
    return chunk_cache_read(s->cache, p.i, (size_t)(offset % s->block_size), (size_t)bytes, buf, s->block_size,
                            cloop_inflate_piece, &p);
}

static const BlockReadMap cloop_read_map = { .map = cloop_map, .decode = cloop_decode };

static int cloop_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    if (offset < 0 || bytes < 0 || offset > cloop_getlength(bs) - bytes)
        return -EINVAL;
    return bdrv_read_mapped(bs, offset, bytes, buf, &cloop_read_map, NULL);
}

static int cloop_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    memset(st, 0, sizeof(*st));
    if (offset < 0 || bytes <= 0 || offset >= cloop_getlength(bs))
        return -EINVAL;
    return cloop_map(bs, offset, bytes, st, NULL);
}


static void cloop_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    (void)bs;
    facts->no_qemu_info = true; /* qemu-img prints neither cluster-size nor dirty-flag for cloop */
}

static void cloop_get_info(BlockNode *bs, InfoList *info)
{
    CloopState *s = bs->opaque;
    info_add_str(info, "cloop_version", "V2.0");
    info_add_str(info, "compression", "zlib");
    info_add_int(info, "block_size", s->block_size);
    info_add_int(info, "blocks", s->n_blocks);
    info_add_int(info, "compressed_bytes", (int64_t)(s->offsets[s->n_blocks] - s->offsets[0]));
}

static int64_t cloop_memory_used(BlockNode *bs)
{
    CloopState *s = bs->opaque;
    return (int64_t)sizeof(*s) + ((int64_t)s->n_blocks + 1) * 8 + (int64_t)chunk_cache_bytes(s->cache);
}

const BlockDriver bdrv_cloop = {
    .name = "cloop",
    .instance_size = sizeof(CloopState),
    .probe = cloop_probe,
    .open = cloop_open,
    .close = cloop_close,
    .read = cloop_read,
    .block_status = cloop_block_status,
    .getlength = cloop_getlength,
    .memory_used = cloop_memory_used,
    .get_info = cloop_get_info,
    .get_facts = cloop_get_facts,
};
