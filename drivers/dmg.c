/* SPDX-License-Identifier: MIT */
/*
 * dmg.c - the Apple DMG (UDIF) format driver, read-only.  It owns the 512-byte big-endian "koly" trailer
 * at the end of the file (data fork, XML plist offset and length), the XML property list (parsed with
 * libxml2, never by hand, within DMG_MAX_XML bytes and libxml2's nesting limit), the base64 "Data" of each
 * entry of its "blkx" array (one "mish" block table per partition), and their chunks: zero fill (0),
 * raw (1), ignore (2), ADC (0x80000004), zlib (0x80000005) and bzip2 (0x80000006); comments and the
 * terminator are skipped; LZFSE, LZMA and unknown chunk types are refused by name at open.  All chunks of
 * all tables go into one sorted map checked at open (counts within DMG_MAX_CHUNKS, each compressed chunk
 * within DMG_MAX_CHUNK_BYTES both ways, inside the file, no overlaps); gaps and zero/ignore chunks read as
 * zeros and are holes for block status.  A compressed chunk must inflate to exactly its sectors, or its
 * range reads as EIO.  Decompressed chunks sit in a bounded cache (lib/chunkcache.c) that FUSE threads
 * share; misses decompress outside any lock.  It knows nothing of FUSE or of other formats.
 */
#include "block.h"
#include "util.h"

#include <bzlib.h>
#include <errno.h>
#include <inttypes.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DMG_KOLY_SIZE        512
#define DMG_MISH_HEADER      204          /* chunks start here */
#define DMG_CHUNK_SIZE       40
#define DMG_MAX_XML          (16 * MiB)
#define DMG_MAX_CHUNKS       (1u << 20)   /* all tables together: 40 MiB of map at most */
#define DMG_MAX_CHUNK_BYTES  (16 * MiB)   /* a compressed or raw chunk, stored and decompressed */
#define DMG_MAX_SIZE         (INT64_MAX / 2)
#define DMG_CACHE_BYTES      (32 * MiB)
#define DMG_DECODE_BYTES     (32 * MiB)   /* chunks being decompressed at once (source and result) */
#define DMG_CACHE_SLOTS      16

enum {
    DMG_ZERO = 0, DMG_RAW = 1, DMG_IGNORE = 2, DMG_ADC = 0x80000004u, DMG_ZLIB = 0x80000005u,
    DMG_BZIP2 = 0x80000006u, DMG_LZFSE = 0x80000007u, DMG_LZMA = 0x80000008u, DMG_COMMENT = 0x7ffffffeu,
    DMG_END = 0xffffffffu,
};

typedef struct DmgChunk {
    uint64_t start, len;      /* guest bytes */
    uint64_t host, host_len;  /* absolute file offset and stored length */
    uint32_t type;
} DmgChunk;

typedef struct DmgState {
    BlockNode *file;
    DmgChunk *chunks;
    uint32_t n_chunks, cap_chunks;
    uint32_t n_tables;
    uint64_t size;
    uint64_t data_fork;
    int64_t flen;
    ChunkCache *cache;
} DmgState;

static int dmg_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)buf;
    (void)len;
    (void)filename;
    return 0; /* the trailer is at the end: lib/probe.c's table finds it and hands the file here */
}

static void dmg_close(BlockNode *bs)
{
    DmgState *s = bs->opaque;
    free(s->chunks);
    chunk_cache_free(s->cache);
    s->chunks = NULL;
    s->cache = NULL;
}

static const char *dmg_type_name(uint32_t t)
{
    switch (t) {
    case DMG_LZFSE: return "LZFSE (0x80000007)";
    case DMG_LZMA: return "LZMA (0x80000008)";
    default: return NULL;
    }
}

/* ---------------------------------------------------------------- mish tables */

static int dmg_add_chunk(DmgState *s, const DmgChunk *c, Error *err)
{
    if (s->n_chunks >= DMG_MAX_CHUNKS) {
        error_set(err, EFBIG, "DMG has more than %u chunks", DMG_MAX_CHUNKS);
        return -EFBIG;
    }
    if (s->n_chunks == s->cap_chunks) {
        uint32_t cap = s->cap_chunks ? s->cap_chunks * 2 : 64;
        DmgChunk *n = realloc(s->chunks, (size_t)cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        s->chunks = n;
        s->cap_chunks = cap;
    }
    s->chunks[s->n_chunks++] = *c;
    return 0;
}

/* One chunk entry of table t at p, its table starting at first_sector with data at data_off. */
static int dmg_parse_chunk(DmgState *s, const uint8_t *p, uint64_t first_sector, uint64_t data_off, uint32_t t,
                           Error *err)
{
    DmgChunk c;
    uint64_t sector = ld_be64(p + 8), count = ld_be64(p + 16), off = ld_be64(p + 24);
    c.type = ld_be32(p);
    c.host_len = ld_be64(p + 32);
    if (c.type == DMG_COMMENT || c.type == DMG_END || count == 0)
        return 0;
    if (dmg_type_name(c.type)) {
        error_set(err, ENOTSUP, "DMG chunk type %s not supported (no library for it)", dmg_type_name(c.type));
        return -ENOTSUP;
    }
    if (c.type != DMG_ZERO && c.type != DMG_RAW && c.type != DMG_IGNORE && c.type != DMG_ADC &&
        c.type != DMG_ZLIB && c.type != DMG_BZIP2) {
        error_set(err, ENOTSUP, "DMG chunk type 0x%08" PRIx32 " unknown", c.type);
        return -ENOTSUP;
    }
    if (!add_ok_u64(first_sector, sector, &sector) || count > DMG_MAX_SIZE / 512 ||
        sector > DMG_MAX_SIZE / 512 - count) {
        error_set(err, EINVAL, "DMG table %" PRIu32 " has a chunk beyond the largest disk", t);
        return -EINVAL;
    }
    c.start = sector * 512;
    c.len = count * 512;
    if (c.type == DMG_ZERO || c.type == DMG_IGNORE) {
        c.host = c.host_len = 0;
        return dmg_add_chunk(s, &c, err);
    }
    if (c.len > DMG_MAX_CHUNK_BYTES || c.host_len > DMG_MAX_CHUNK_BYTES ||
        (c.type == DMG_RAW && c.host_len < c.len)) {
        error_set(err, EINVAL, "DMG table %" PRIu32 " has a chunk of %" PRIu64 " sectors stored in %" PRIu64
                  " bytes (at most %lld MiB each)", t, count, c.host_len, DMG_MAX_CHUNK_BYTES / MiB);
        return -EINVAL;
    }
    if (!add_ok_u64(data_off, off, &c.host) || c.host > (uint64_t)s->flen ||
        c.host_len > (uint64_t)s->flen - c.host) {
        error_set(err, EINVAL, "DMG table %" PRIu32 " has a chunk stored past the end of the file", t);
        return -EINVAL;
    }
    return dmg_add_chunk(s, &c, err);
}

/* One decoded mish block. */
static int dmg_parse_mish(DmgState *s, const uint8_t *m, size_t len, Error *err)
{
    uint32_t t = s->n_tables++;
    if (len < DMG_MISH_HEADER || memcmp(m, "mish", 4) != 0) {
        error_set(err, EINVAL, "DMG blkx entry %" PRIu32 " is not a mish block table", t);
        return -EINVAL;
    }
    uint64_t first = ld_be64(m + 8), data_off = ld_be64(m + 0x18);
    uint32_t n = ld_be32(m + 0xC8);
    if (n > (len - DMG_MISH_HEADER) / DMG_CHUNK_SIZE) {
        error_set(err, EINVAL, "DMG table %" PRIu32 " claims %" PRIu32 " chunks in %zu bytes", t, n, len);
        return -EINVAL;
    }
    if (!add_ok_u64(data_off, s->data_fork, &data_off)) {
        error_set(err, EINVAL, "DMG table %" PRIu32 " data offset overflows", t);
        return -EINVAL;
    }
    for (uint32_t i = 0; i < n; i++) {
        int r = dmg_parse_chunk(s, m + DMG_MISH_HEADER + (size_t)i * DMG_CHUNK_SIZE, first, data_off, t, err);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---------------------------------------------------------------- the XML plist */

static int b64_value(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Base64 text (whitespace allowed, '=' ends it) into a new buffer; -EINVAL on another character. */
static int b64_decode(const char *text, uint8_t **out, size_t *outlen)
{
    size_t n = strlen(text), o = 0;
    uint8_t *buf = malloc(n / 4 * 3 + 3);
    uint32_t acc = 0;
    int bits = 0;
    if (!buf)
        return -ENOMEM;
    for (const char *p = text; *p && *p != '='; p++) {
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            continue;
        int v = b64_value((unsigned char)*p);
        if (v < 0) {
            free(buf);
            return -EINVAL;
        }
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (uint8_t)(acc >> bits);
        }
    }
    *out = buf;
    *outlen = o;
    return 0;
}

static xmlNode *next_element(xmlNode *n)
{
    for (n = n ? n->next : NULL; n && n->type != XML_ELEMENT_NODE; n = n->next)
        ;
    return n;
}

static bool is_key(const xmlNode *n, const char *name)
{
    if (!n || n->type != XML_ELEMENT_NODE || strcmp((const char *)n->name, "key") != 0)
        return false;
    xmlChar *t = xmlNodeGetContent(n);
    bool eq = t && strcmp((const char *)t, name) == 0;
    xmlFree(t);
    return eq;
}

/* The value element after <key>name</key> among dict's children, NULL when none. */
static xmlNode *dict_get(xmlNode *dict, const char *name)
{
    if (!dict)
        return NULL;
    for (xmlNode *n = dict->children; n; n = n->next)
        if (is_key(n, name))
            return next_element(n);
    return NULL;
}

static xmlNode *first_element(xmlNode *parent, const char *name)
{
    for (xmlNode *n = parent ? parent->children : NULL; n; n = n->next)
        if (n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0)
            return n;
    return NULL;
}

/* Every <dict> of resource-fork/blkx: its <data> decoded and parsed as a mish table. */
static int dmg_parse_blkx(DmgState *s, xmlNode *array, Error *err)
{
    for (xmlNode *d = array->children; d; d = d->next) {
        if (d->type != XML_ELEMENT_NODE || strcmp((const char *)d->name, "dict") != 0)
            continue;
        xmlNode *data = dict_get(d, "Data");
        if (!data || strcmp((const char *)data->name, "data") != 0) {
            error_set(err, EINVAL, "DMG blkx entry %" PRIu32 " has no Data", s->n_tables);
            return -EINVAL;
        }
        xmlChar *text = xmlNodeGetContent(data);
        uint8_t *mish = NULL;
        size_t len = 0;
        int r = text ? b64_decode((const char *)text, &mish, &len) : -ENOMEM;
        xmlFree(text);
        if (r == -EINVAL)
            error_set(err, EINVAL, "DMG blkx entry %" PRIu32 " is not base64", s->n_tables);
        if (r == 0)
            r = dmg_parse_mish(s, mish, len, err);
        free(mish);
        if (r < 0)
            return r;
    }
    return 0;
}

static int dmg_parse_plist(DmgState *s, const char *xml, size_t len, Error *err)
{
    xmlDoc *doc = xmlReadMemory(xml, (int)len, "plist.xml", NULL, XML_PARSE_NONET | XML_PARSE_NOERROR |
                                XML_PARSE_NOWARNING);
    if (!doc) {
        const xmlError *e = xmlGetLastError();
        const char *m = e && e->message ? e->message : "unknown error";
        error_set(err, EINVAL, "DMG XML plist does not parse: %.*s", (int)MIN(strcspn(m, "\n"), 200), m);
        return -EINVAL;
    }
    xmlNode *root = xmlDocGetRootElement(doc);
    xmlNode *blkx = dict_get(dict_get(first_element(root, "dict"), "resource-fork"), "blkx");
    int r;
    if (!blkx || strcmp((const char *)blkx->name, "array") != 0) {
        error_set(err, EINVAL, "DMG XML plist has no resource-fork/blkx array");
        r = -EINVAL;
    } else {
        r = dmg_parse_blkx(s, blkx, err);
    }
    xmlFreeDoc(doc);
    return r;
}

/* ---------------------------------------------------------------- open */

static int chunk_cmp(const void *a, const void *b)
{
    const DmgChunk *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Sorts the map, refuses overlaps, sets the size and sizes the cache by the largest decoded chunk. */
static int dmg_finish_map(DmgState *s, Error *err)
{
    uint64_t largest = 512;
    if (s->n_chunks) /* no table at all: chunks is NULL, which qsort may not be given */
        qsort(s->chunks, s->n_chunks, sizeof(DmgChunk), chunk_cmp);
    for (uint32_t i = 0; i < s->n_chunks; i++) {
        const DmgChunk *c = &s->chunks[i];
        if (i && c->start < s->chunks[i - 1].start + s->chunks[i - 1].len) {
            error_set(err, EINVAL, "DMG chunks overlap at sector %" PRIu64, c->start / 512);
            return -EINVAL;
        }
        s->size = MAX(s->size, c->start + c->len);
        if (c->type != DMG_ZERO && c->type != DMG_IGNORE && c->type != DMG_RAW)
            largest = MAX(largest, c->len);
    }
    int slots = (int)MAX(1, MIN(DMG_CACHE_SLOTS, DMG_CACHE_BYTES / (int64_t)largest));
    int decoders = (int)MAX(1, MIN(DMG_CACHE_SLOTS, DMG_DECODE_BYTES / (2 * (int64_t)largest)));
    s->cache = chunk_cache_new(slots, decoders);
    return s->cache ? 0 : -ENOMEM;
}

static int dmg_read_koly(DmgState *s, uint64_t *xml_off, uint64_t *xml_len, Error *err)
{
    uint8_t k[DMG_KOLY_SIZE];
    if (s->flen < DMG_KOLY_SIZE) {
        error_set(err, EINVAL, "file too short for a DMG trailer");
        return -EINVAL;
    }
    uint64_t koly = (uint64_t)s->flen - DMG_KOLY_SIZE;
    int r = bdrv_pread(s->file, (int64_t)koly, DMG_KOLY_SIZE, k);
    if (r < 0)
        return r;
    if (memcmp(k, "koly", 4) != 0) {
        error_set(err, EINVAL, "not a DMG image (no koly trailer in the last 512 bytes)");
        return -EINVAL;
    }
    uint64_t df_off = ld_be64(k + 0x18), df_len = ld_be64(k + 0x20);
    *xml_off = ld_be64(k + 0xD8);
    *xml_len = ld_be64(k + 0xE0);
    if (df_off > koly || df_len > koly - df_off) {
        error_set(err, EINVAL, "DMG data fork passes the trailer");
        return -EINVAL;
    }
    s->data_fork = df_off;
    if (*xml_len == 0) {
        error_set(err, ENOTSUP, "DMG without an XML plist (binary resource fork only) not supported");
        return -ENOTSUP;
    }
    if (*xml_len > DMG_MAX_XML || *xml_off > koly || *xml_len > koly - *xml_off) {
        error_set(err, EINVAL, "DMG XML plist of %" PRIu64 " bytes at %" PRIu64 " invalid (at most %lld MiB, "
                  "before the trailer)", *xml_len, *xml_off, DMG_MAX_XML / MiB);
        return -EINVAL;
    }
    return 0;
}

static int dmg_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    DmgState *s = bs->opaque;
    uint64_t xml_off, xml_len;
    char *xml = NULL;
    (void)opts;
    s->file = bs->file;
    s->flen = bdrv_getlength(bs->file);
    if (s->flen < 0)
        return (int)s->flen;
    int r = dmg_read_koly(s, &xml_off, &xml_len, err);
    if (r == 0 && !bs->read_only) {
        error_set(err, EROFS, "DMG images are read-only (mount without --rw, or use --overlay)");
        r = -EROFS;
    }
    if (r == 0 && !(xml = malloc(xml_len + 1)))
        r = -ENOMEM;
    if (r == 0)
        r = bdrv_pread(s->file, (int64_t)xml_off, (int64_t)xml_len, xml);
    if (r == 0)
        r = dmg_parse_plist(s, xml, xml_len, err);
    free(xml);
    if (r == 0)
        r = dmg_finish_map(s, err);
    if (r < 0) {
        dmg_close(bs);
        return r;
    }
    bs->request_alignment = 1;
    return 0;
}

/* ---------------------------------------------------------------- decompression */

/* ADC: a byte with bit 7 set starts a literal run of (b & 0x7f) + 1 bytes; else bit 6 set is a 3-byte copy
 * of (b & 0x3f) + 4 bytes from distance (16-bit BE) + 1; else a 2-byte copy of ((b >> 2) & 0xf) + 3 bytes
 * from distance ((b & 3) << 8 | next) + 1.  Output must fill dst exactly. */
static int adc_decode(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
    size_t i = 0, o = 0;
    while (i < slen && o < dlen) {
        uint8_t b = src[i++];
        size_t n, dist;
        if (b & 0x80) {
            n = (size_t)(b & 0x7f) + 1;
            if (n > slen - i || n > dlen - o)
                return -EIO;
            memcpy(dst + o, src + i, n);
            i += n;
            o += n;
            continue;
        }
        if (b & 0x40) {
            if (slen - i < 2)
                return -EIO;
            n = (size_t)(b & 0x3f) + 4;
            dist = ((size_t)src[i] << 8 | src[i + 1]) + 1;
            i += 2;
        } else {
            if (slen - i < 1)
                return -EIO;
            n = (size_t)((b >> 2) & 0xf) + 3;
            dist = ((size_t)(b & 3) << 8 | src[i]) + 1;
            i += 1;
        }
        if (dist > o || n > dlen - o)
            return -EIO;
        for (size_t k = 0; k < n; k++, o++)
            dst[o] = dst[o - dist];
    }
    return o == dlen ? 0 : -EIO;
}

static int bzip2_decode(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
    unsigned int out = (unsigned int)dlen;
    int r = BZ2_bzBuffToBuffDecompress((char *)dst, &out, (char *)src, (unsigned int)slen, 0, 0);
    return r == BZ_OK && out == dlen ? 0 : -EIO;
}

typedef struct DmgPiece {
    DmgState *s;
    const DmgChunk *c;
} DmgPiece;

/* Decodes chunk c into a new buffer of exactly c->len bytes. */
static int dmg_decode_chunk(DmgState *s, const DmgChunk *c, uint8_t **out)
{
    uint8_t *src = malloc(c->host_len ? c->host_len : 1), *dst = malloc(c->len);
    int r = src && dst ? bdrv_pread(s->file, (int64_t)c->host, (int64_t)c->host_len, src) : -ENOMEM;
    if (r == 0) {
        if (c->type == DMG_ZLIB)
            r = chunk_inflate_zlib(src, c->host_len, dst, c->len);
        else if (c->type == DMG_BZIP2)
            r = bzip2_decode(src, c->host_len, dst, c->len);
        else
            r = adc_decode(src, c->host_len, dst, c->len);
    }
    free(src);
    if (r < 0) {
        free(dst);
        return r;
    }
    *out = dst;
    return 0;
}

static int dmg_decode_piece(void *ctx, uint8_t **out)
{
    DmgPiece *p = ctx;
    return dmg_decode_chunk(p->s, p->c, out);
}

/* ---------------------------------------------------------------- map, read */

/* Index of the first chunk ending after off (n_chunks if none). */
static uint64_t chunk_end(const void *chunks, size_t i)
{
    const DmgChunk *c = &((const DmgChunk *)chunks)[i];
    return c->start + c->len;
}

static uint32_t dmg_find(const DmgState *s, uint64_t off)
{
    return (uint32_t)lower_bound_by_end(s->chunks, s->n_chunks, off, chunk_end);
}

static int dmg_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    DmgState *s = bs->opaque;
    (void)opaque;
    if (offset < 0 || bytes <= 0 || (uint64_t)offset >= s->size)
        return -EINVAL;
    uint64_t off = (uint64_t)offset, max = MIN((uint64_t)bytes, s->size - off);
    uint32_t i = dmg_find(s, off);
    if (i == s->n_chunks || s->chunks[i].start > off) { /* a gap: zeros */
        uint64_t end = i == s->n_chunks ? s->size : s->chunks[i].start;
        st->bytes = (int64_t)MIN(max, end - off);
        return 0;
    }
    const DmgChunk *c = &s->chunks[i];
    st->bytes = (int64_t)MIN(max, c->start + c->len - off);
    switch (c->type) {
    case DMG_ZERO:
    case DMG_IGNORE:
        return 0;
    case DMG_RAW:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)(c->host + (off - c->start));
        st->host_file = s->file;
        return 0;
    default:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_COMPRESSED;
        return 0;
    }
}

static int dmg_decode(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st,
                      void *opaque)
{
    DmgState *s = bs->opaque;
    (void)st;
    (void)opaque;
    uint32_t i = dmg_find(s, (uint64_t)offset);
    DmgPiece p = { s, &s->chunks[i] };
    return chunk_cache_read(s->cache, i, (size_t)((uint64_t)offset - p.c->start), (size_t)bytes, buf, p.c->len,
                            dmg_decode_piece, &p);
}

static const BlockReadMap dmg_read_map = { .map = dmg_map, .decode = dmg_decode };

static int dmg_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return bdrv_read_mapped(bs, offset, bytes, buf, &dmg_read_map, NULL);
}

static int dmg_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    memset(st, 0, sizeof(*st));
    return dmg_map(bs, offset, bytes, st, NULL);
}

static int64_t dmg_getlength(BlockNode *bs)
{
    DmgState *s = bs->opaque;
    return (int64_t)s->size;
}

static void dmg_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    (void)bs;
    facts->unallocated_is_zero = true;
    facts->no_qemu_info = true; /* qemu-img prints neither cluster-size nor dirty-flag for dmg */
}

static void dmg_get_info(BlockNode *bs, InfoList *info)
{
    DmgState *s = bs->opaque;
    uint32_t counts[4] = { 0 };
    for (uint32_t i = 0; i < s->n_chunks; i++) {
        uint32_t t = s->chunks[i].type;
        counts[t == DMG_RAW ? 1 : (t == DMG_ZERO || t == DMG_IGNORE) ? 0 : t == DMG_ZLIB ? 2 : 3]++;
    }
    info_add_int(info, "dmg_tables", s->n_tables);
    info_add_int(info, "dmg_chunks", s->n_chunks);
    info_add_int(info, "dmg_chunks_zero", counts[0]);
    info_add_int(info, "dmg_chunks_raw", counts[1]);
    info_add_int(info, "dmg_chunks_zlib", counts[2]);
    info_add_int(info, "dmg_chunks_bzip2_adc", counts[3]);
}

static int64_t dmg_memory_used(BlockNode *bs)
{
    DmgState *s = bs->opaque;
    return (int64_t)sizeof(*s) + (int64_t)s->cap_chunks * (int64_t)sizeof(DmgChunk) +
           (int64_t)chunk_cache_bytes(s->cache);
}

const BlockDriver bdrv_dmg = {
    .name = "dmg",
    .instance_size = sizeof(DmgState),
    .probe = dmg_probe,
    .open = dmg_open,
    .close = dmg_close,
    .read = dmg_read,
    .block_status = dmg_block_status,
    .getlength = dmg_getlength,
    .memory_used = dmg_memory_used,
    .get_info = dmg_get_info,
    .get_facts = dmg_get_facts,
};
