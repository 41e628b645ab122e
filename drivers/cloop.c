/* SPDX-License-Identifier: MIT */
/*
 * cloop.c - the cloop (compressed loopback) format driver, read-only.  It owns three layouts.  V2.0 (what
 * create_compressed_fs of cloop-utils 3.x writes): a shell-script preamble of 128 bytes ("#!/bin/sh" and
 * "#V2.0 Format"), a big-endian block size and block count, then block count + 1 absolute big-endian
 * 64-bit offsets; block i is the zlib stream between offsets i and i+1 and inflates to one block.  V4.0
 * (cloop 4.x): the same header and index, either at the start of the file or as a footer (index, then the
 * 136-byte header, at the end), each offset's top 4 bits the block's compressor (0 zlib, 1 stored, 2 xz,
 * 3 lz4 raw block, 4 lzo1x).  V3 (cloop 3.x): everything in a footer ending "\nCLOOP3\n": block count,
 * block size, original size, n + 1 offsets, then one 32-bit flags word per block (bit 1 zlib, 2 lzo, 3 xz,
 * 4 lz4, none set: stored); the last block holds what is left of the original size.  Every field is
 * checked at open (block size a non-zero multiple of 512 within CLOOP_MAX_BLOCK_SIZE, the index within
 * CLOOP_MAX_TABLE_BYTES and the file, offsets non-decreasing inside the data area, each stream within
 * CLOOP_MAX_STREAM of a block, every compressor known), so the read path trusts the index.  Decompressed blocks sit in a bounded cache (lib/chunkcache.c); FUSE threads
 * decode their misses in parallel outside any lock, each decoder bounded by the block size (and xz by
 * CLOOP_XZ_MEMLIMIT).  A block that does not decode to exactly its length reads as EIO.  It knows nothing
 * of FUSE or of other formats.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <lz4.h>
#include <lzma.h>
#include <lzo1x.h>
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
#define CLOOP_XZ_MEMLIMIT     (80 * MiB)  /* one xz decoder: a 64 MiB dictionary (xz -9) and its state */
#define CLOOP_V3_TAIL         20          /* footer offset, version, "\nCLOOP3\n" */
#define CLOOP_V3_HEAD         16          /* block count, block size, original size */
#define CLOOP4_OFFSET_MASK    0x0fffffffffffffffULL

static const char cloop_shebang[] = "#!/bin/sh\n";
static const char cloop3_signature[] = "\nCLOOP3\n";

/* A block's compressor: the V4 tag values; V3 flag bits are mapped onto them. */
enum { CLOOP_ZLIB, CLOOP_STORED, CLOOP_XZ, CLOOP_LZ4, CLOOP_LZO, CLOOP_N_CODECS };
static const char *const cloop_codec_names[CLOOP_N_CODECS] = { "zlib", "none", "xz", "lz4", "lzo" };

typedef struct CloopState {
    BlockNode *file;
    uint32_t block_size;
    uint32_t n_blocks;
    int version;            /* 2, 3 or 4 */
    bool footer;            /* V4: header and index at the end of the file */
    int64_t length;         /* bytes of the image (V3: the original size) */
    uint64_t *offsets;      /* n_blocks + 1 absolute file offsets, host order, tags removed */
    uint8_t *codecs;        /* V3, V4: one CLOOP_* per block (NULL: all zlib) */
    unsigned codecs_used;   /* bit per CLOOP_* seen */
    uint64_t max_stream;    /* longest compressed block allowed */
    ChunkCache *cache;
} CloopState;

/* The most a compressed block may take: the block and generous deflate/xz/lz4 overhead. */
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
    free(s->codecs);
    chunk_cache_free(s->cache);
    s->offsets = NULL;
    s->codecs = NULL;
    s->cache = NULL;
}

/* Bytes of block i once decompressed: a whole block, but the last V3 block holds what is left. */
static uint32_t cloop_block_len(const CloopState *s, uint32_t i)
{
    return (uint32_t)MIN((int64_t)s->block_size, s->length - (int64_t)i * s->block_size);
}

static int cloop_set_block_size(CloopState *s, uint32_t block_size, Error *err)
{
    if (block_size == 0 || block_size % 512 || block_size > CLOOP_MAX_BLOCK_SIZE) {
        error_set(err, EINVAL, "cloop block size %" PRIu32 " invalid (a multiple of 512 up to %lld MiB)",
                  block_size, CLOOP_MAX_BLOCK_SIZE / MiB);
        return -EINVAL;
    }
    s->block_size = block_size;
    s->max_stream = cloop_max_stream(block_size);
    return 0;
}

/* Is the index of n_blocks + 1 entries within the table budget? */
static int cloop_check_count(const CloopState *s, Error *err)
{
    if (((uint64_t)s->n_blocks + 1) * 8 > CLOOP_MAX_TABLE_BYTES) {
        error_set(err, EFBIG, "cloop block count %" PRIu32 " too large (offsets table over %lld MiB)",
                  s->n_blocks, CLOOP_MAX_TABLE_BYTES / MiB);
        return -EFBIG;
    }
    return 0;
}

/* The compressor of V4 entry i (its tag), checked: known and built in. */
static int cloop_codec_v4(CloopState *s, uint32_t i, uint64_t raw, Error *err)
{
    unsigned tag = (unsigned)(raw >> 60);
    if (tag >= CLOOP_N_CODECS) {
        error_set(err, EINVAL, "cloop block %" PRIu32 " has an unknown compressor tag %u", i, tag);
        return -EINVAL;
    }
    s->codecs[i] = (uint8_t)tag;
    return 0;
}

/* The compressor of V3 block i from its flags word: one compressor bit, or none (stored). */
static int cloop_codec_v3(CloopState *s, uint32_t i, uint32_t flags, Error *err)
{
    static const struct { uint32_t bit; uint8_t codec; } bits[] = {
        { 0, CLOOP_STORED }, { 1u << 1, CLOOP_ZLIB }, { 1u << 2, CLOOP_LZO }, { 1u << 3, CLOOP_XZ },
        { 1u << 4, CLOOP_LZ4 },
    };
    for (size_t k = 0; k < ARRAY_SIZE(bits); k++) {
        if (flags == bits[k].bit) {
            s->codecs[i] = bits[k].codec;
            return 0;
        }
    }
    error_set(err, EINVAL, "cloop block %" PRIu32 " has unknown compression flags 0x%" PRIx32, i, flags);
    return -EINVAL;
}

/* The compressors the blocks use (for info); liblzo2 wants its one-time self-check before lzo blocks. */
static int cloop_check_codecs(CloopState *s, Error *err)
{
    s->codecs_used = s->codecs ? 0 : 1u << CLOOP_ZLIB;
    for (uint32_t i = 0; s->codecs && i < s->n_blocks; i++)
        s->codecs_used |= 1u << s->codecs[i];
    if ((s->codecs_used & (1u << CLOOP_LZO)) && lzo_init() != LZO_E_OK) {
        error_set(err, EIO, "liblzo2 failed its self-check: lzo blocks cannot be read");
        return -EIO;
    }
    return 0;
}

/*
 * Reads the n_blocks + 1 offsets at index_at and checks them: inside [lo, hi], non-decreasing, every
 * stream bounded.  V4 offsets lose their compressor tag to codecs[] on the way.
 */
static int cloop_read_table(CloopState *s, int64_t index_at, uint64_t lo, uint64_t hi, Error *err)
{
    uint64_t entries = (uint64_t)s->n_blocks + 1, bytes = entries * 8;
    s->offsets = malloc(bytes);
    if (!s->offsets || (s->version != 2 && !(s->codecs = malloc(s->n_blocks ? s->n_blocks : 1))))
        return -ENOMEM;
    int r = bdrv_pread(s->file, index_at, (int64_t)bytes, s->offsets);
    if (r < 0) {
        error_set(err, -r, "cannot read the cloop offsets table: %s", strerror(-r));
        return r;
    }
    for (uint64_t i = 0; i < entries; i++) {
        uint64_t raw = ld_be64(&s->offsets[i]);
        s->offsets[i] = s->version == 4 ? raw & CLOOP4_OFFSET_MASK : raw;
        if (s->version == 4 && i < s->n_blocks && (r = cloop_codec_v4(s, (uint32_t)i, raw, err)) < 0)
            return r;
        if (s->offsets[i] > hi || (i == 0 && s->offsets[0] < lo)) {
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

/* A V2.0 or V4.0 header (at the start, or V4's footer): version, block size and count, then the index. */
static int cloop_open_v2v4(BlockNode *bs, CloopState *s, const uint8_t *hdr, int64_t hdr_at, int64_t flen,
                           Error *err)
{
    char ver[16];
    cloop_version(hdr, CLOOP_PREAMBLE_SIZE, ver, sizeof(ver));
    if (strcmp(ver, "V2.0") != 0 && strcmp(ver, "V4.0") != 0) {
        error_set(err, ENOTSUP, "cloop %s format not supported (V2.0, V3 and V4.0 are)", ver);
        return -ENOTSUP;
    }
    if (!bs->read_only) {
        error_set(err, EROFS, "cloop images are read-only (mount without --rw, or use --overlay)");
        return -EROFS;
    }
    s->version = ver[1] - '0';
    s->footer = hdr_at > 0;
    s->n_blocks = ld_be32(hdr + CLOOP_PREAMBLE_SIZE + 4);
    int r = cloop_set_block_size(s, ld_be32(hdr + CLOOP_PREAMBLE_SIZE), err);
    if (r == 0)
        r = cloop_check_count(s, err);
    if (r < 0)
        return r;
    uint64_t bytes = ((uint64_t)s->n_blocks + 1) * 8;
    s->length = (int64_t)s->n_blocks * s->block_size;
    if (bytes > (uint64_t)flen - CLOOP_HEADER_SIZE) {
        error_set(err, EINVAL, "cloop offsets table of %" PRIu32 " blocks passes the end of the file",
                  s->n_blocks);
        return -EINVAL;
    }
    if (s->footer) /* blocks, index, header */
        return cloop_read_table(s, hdr_at - (int64_t)bytes, 0, (uint64_t)hdr_at - bytes, err);
    return cloop_read_table(s, CLOOP_HEADER_SIZE, CLOOP_HEADER_SIZE + bytes, (uint64_t)flen, err);
}

/* The V3 footer: tail (offset of the footer, version 3, signature), then its head, offsets and flags. */
static int cloop_open_v3(BlockNode *bs, CloopState *s, const uint8_t *tail, int64_t flen, Error *err)
{
    uint8_t head[CLOOP_V3_HEAD];
    uint64_t at = ld_be64(tail);
    uint32_t version = ld_be32(tail + 8);
    if (version != 3) {
        error_set(err, ENOTSUP, "cloop V3 footer version %" PRIu32 " not supported (only 3)", version);
        return -ENOTSUP;
    }
    if (!bs->read_only) {
        error_set(err, EROFS, "cloop images are read-only (mount without --rw, or use --overlay)");
        return -EROFS;
    }
    s->version = 3;
    if (at > (uint64_t)flen - CLOOP_V3_TAIL - CLOOP_V3_HEAD) {
        error_set(err, EINVAL, "cloop V3 footer offset %" PRIu64 " outside the file", at);
        return -EINVAL;
    }
    int r = bdrv_pread(s->file, (int64_t)at, CLOOP_V3_HEAD, head);
    if (r < 0)
        return r;
    s->n_blocks = ld_be32(head);
    uint64_t orig = ld_be64(head + 8);
    if ((r = cloop_set_block_size(s, ld_be32(head + 4), err)) < 0 || (r = cloop_check_count(s, err)) < 0)
        return r;
    uint64_t index = ((uint64_t)s->n_blocks + 1) * 8, flags = (uint64_t)s->n_blocks * 4;
    if (at + CLOOP_V3_HEAD + index + flags + CLOOP_V3_TAIL != (uint64_t)flen) {
        error_set(err, EINVAL, "cloop V3 footer of %" PRIu32 " blocks does not end the file", s->n_blocks);
        return -EINVAL;
    }
    uint64_t full = (uint64_t)s->n_blocks * s->block_size;
    if (s->n_blocks ? orig > full || orig <= full - s->block_size : orig != 0) {
        error_set(err, EINVAL, "cloop V3 original size %" PRIu64 " does not fit %" PRIu32 " blocks of %" PRIu32
                  " bytes", orig, s->n_blocks, s->block_size);
        return -EINVAL;
    }
    s->length = (int64_t)orig;
    if ((r = cloop_read_table(s, (int64_t)(at + CLOOP_V3_HEAD), 0, at, err)) < 0)
        return r;
    uint32_t *fl = malloc(flags ? flags : 1);
    r = fl ? bdrv_pread(s->file, (int64_t)(at + CLOOP_V3_HEAD + index), (int64_t)flags, fl) : -ENOMEM;
    for (uint32_t i = 0; r == 0 && i < s->n_blocks; i++)
        r = cloop_codec_v3(s, i, ld_be32(&fl[i]), err);
    free(fl);
    return r;
}

/*
 * Which layout: a preamble at the start (V2.0, V4.0), else "\nCLOOP3\n" at the end (V3), else a V4.0
 * preamble in the last 136 bytes (V4 footer).
 */
static int cloop_open_layout(BlockNode *bs, CloopState *s, int64_t flen, Error *err)
{
    uint8_t hdr[CLOOP_HEADER_SIZE], tail[CLOOP_V3_TAIL];
    char ver[16];
    int r = bdrv_pread(bs->file, 0, CLOOP_HEADER_SIZE, hdr);
    if (r < 0)
        return r;
    cloop_version(hdr, CLOOP_PREAMBLE_SIZE, ver, sizeof(ver));
    if (ver[0])
        return cloop_open_v2v4(bs, s, hdr, 0, flen, err);
    if (flen >= CLOOP_V3_TAIL + CLOOP_V3_HEAD + 8 &&
        (r = bdrv_pread(bs->file, flen - CLOOP_V3_TAIL, CLOOP_V3_TAIL, tail)) == 0 &&
        memcmp(tail + 12, cloop3_signature, 8) == 0)
        return cloop_open_v3(bs, s, tail, flen, err);
    if (r < 0 || (r = bdrv_pread(bs->file, flen - CLOOP_HEADER_SIZE, CLOOP_HEADER_SIZE, hdr)) < 0)
        return r;
    cloop_version(hdr, CLOOP_PREAMBLE_SIZE, ver, sizeof(ver));
    if (strcmp(ver, "V4.0") == 0)
        return cloop_open_v2v4(bs, s, hdr, flen - CLOOP_HEADER_SIZE, flen, err);
    error_set(err, EINVAL, "not a cloop image (no \"#!/bin/sh\" / \"#V2.0 Format\" preamble, no V3 or V4 "
              "footer)");
    return -EINVAL;
}

static int cloop_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    CloopState *s = bs->opaque;
    (void)opts;
    s->file = bs->file;
    int64_t flen = bdrv_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    if (flen < CLOOP_HEADER_SIZE) {
        error_set(err, EINVAL, "file too short for a cloop header (%" PRId64 " bytes)", flen);
        return -EINVAL;
    }
    int r = cloop_open_layout(bs, s, flen, err);
    if (r == 0)
        r = cloop_check_codecs(s, err);
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
    return s->length;
}

typedef struct CloopPiece {
    CloopState *s;
    uint32_t i;
} CloopPiece;

/* xz: one .xz stream, all of the input, exactly want bytes out, the decoder's memory bounded. */
static int cloop_unxz(const uint8_t *src, uint64_t clen, uint8_t *dst, uint32_t cap, uint32_t want)
{
    uint64_t memlimit = CLOOP_XZ_MEMLIMIT;
    size_t in_pos = 0, out_pos = 0;
    lzma_ret lr = lzma_stream_buffer_decode(&memlimit, 0, NULL, src, &in_pos, (size_t)clen, dst, &out_pos, cap);
    if (lr == LZMA_MEM_ERROR)
        return -ENOMEM;
    return lr == LZMA_OK && in_pos == clen && out_pos == want ? 0 : -EIO;
}

/* lz4: one raw lz4 block (no frame), exactly want bytes out. */
static int cloop_unlz4(const uint8_t *src, uint64_t clen, uint8_t *dst, uint32_t cap, uint32_t want)
{
    int n = LZ4_decompress_safe((const char *)src, (char *)dst, (int)clen, (int)cap);
    return n >= 0 && (uint32_t)n == want ? 0 : -EIO;
}

/* lzo: one LZO1X stream (what the kernel's lzo1x_decompress_safe reads), all of it, exactly want out. */
static int cloop_unlzo(const uint8_t *src, uint64_t clen, uint8_t *dst, uint32_t cap, uint32_t want)
{
    lzo_uint out_len = cap;
    int lr = lzo1x_decompress_safe(src, (lzo_uint)clen, dst, &out_len, NULL);
    return lr == LZO_E_OK && out_len == want ? 0 : -EIO;
}

static int cloop_decode_codec(int codec, const uint8_t *src, uint64_t clen, uint8_t *dst, uint32_t cap,
                              uint32_t want)
{
    switch (codec) {
    case CLOOP_ZLIB: /* libdeflate, a decompressor per thread: exactly want bytes or EIO */
        return chunk_inflate_zlib(src, clen, dst, want);
    case CLOOP_XZ:
        return cloop_unxz(src, clen, dst, cap, want);
    case CLOOP_LZ4:
        return cloop_unlz4(src, clen, dst, cap, want);
    case CLOOP_LZO:
        return cloop_unlzo(src, clen, dst, cap, want);
    case CLOOP_STORED:
        if (clen != want)
            return -EIO;
        memcpy(dst, src, want);
        return 0;
    default: /* unknown tags are refused at open */
        return -EIO;
    }
}

/* Decodes block i into a new buffer of one block (zeros past its length); -EIO when it does not fit. */
static int cloop_decode_block(CloopState *s, uint32_t i, uint8_t **out)
{
    uint64_t clen = s->offsets[i + 1] - s->offsets[i];
    uint32_t want = cloop_block_len(s, i);
    uint8_t *src = malloc(clen ? clen : 1), *dst = calloc(1, s->block_size);
    int r = src && dst ? bdrv_pread(s->file, (int64_t)s->offsets[i], (int64_t)clen, src) : -ENOMEM;
    if (r == 0)
        r = cloop_decode_codec(s->codecs ? s->codecs[i] : CLOOP_ZLIB, src, clen, dst, s->block_size, want);
    free(src);
    if (r < 0) {
        free(dst);
        return r;
    }
    if (want < s->block_size)
        memset(dst + want, 0, s->block_size - want);
    *out = dst;
    return 0;
}

static int cloop_decode_piece(void *ctx, uint8_t **out)
{
    CloopPiece *p = ctx;
    return cloop_decode_block(p->s, p->i, out);
}

/* The map: every block is compressed data of this layer; a run never crosses a block. */
static int cloop_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    CloopState *s = bs->opaque;
    (void)opaque;
    int64_t end = MIN((offset / s->block_size + 1) * (int64_t)s->block_size, s->length);
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
                            cloop_decode_piece, &p);
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
    char codecs[64] = "";
    for (int c = 0; c < CLOOP_N_CODECS; c++)
        if (s->codecs_used & (1u << c))
            snprintf(codecs + strlen(codecs), sizeof(codecs) - strlen(codecs), "%s%s", codecs[0] ? "," : "",
                     cloop_codec_names[c]);
    info_add_str(info, "cloop_version", s->version == 3 ? "V3" : s->version == 4 ? "V4.0" : "V2.0");
    if (s->version == 4)
        info_add_str(info, "cloop_index", s->footer ? "footer" : "header");
    info_add_str(info, "compression", "%s", codecs);
    info_add_int(info, "block_size", s->block_size);
    info_add_int(info, "blocks", s->n_blocks);
    info_add_int(info, "compressed_bytes", (int64_t)(s->offsets[s->n_blocks] - s->offsets[0]));
}

static int64_t cloop_memory_used(BlockNode *bs)
{
    CloopState *s = bs->opaque;
    return (int64_t)sizeof(*s) + ((int64_t)s->n_blocks + 1) * 9 + (int64_t)chunk_cache_bytes(s->cache);
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
