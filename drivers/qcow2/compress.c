/* SPDX-License-Identifier: MIT */
/*
 * compress.c - compressed clusters of the qcow2 driver: locating the compressed bytes from an L2
 * descriptor, decompressing them with raw deflate (libdeflate, zlib as the fallback) or zstd into
 * exactly one cluster, and compressing one cluster for the write path.  Each thread keeps its own
 * decompressor contexts and input buffer, so decompression allocates nothing per cluster and threads
 * never wait for each other.  Output never exceeds the destination buffer; a corrupt stream is -EIO for
 * that cluster, logged once per node, never a crash.  It knows nothing of L1/L2 lookups or caching.
 */
#include <errno.h>
#include <inttypes.h>
#include <libdeflate.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "qcow2.h"
#include "util.h"

/* zstd window limit: a cluster is at most 2 MiB, so a legitimate frame never needs more. */
#define QCOW2_ZSTD_WINDOW_LOG_MAX 23
/* Raw deflate window used for compression (4 KiB, what qcow2 writers use); inflate accepts any. */
#define QCOW2_DEFLATE_WINDOW_BITS 12

/* Per-thread decompression state, created on first use and freed when the thread exits. */
typedef struct DecompressScratch {
    struct libdeflate_decompressor *deflate;
    ZSTD_DCtx *zstd;
    uint8_t *src;      /* compressed bytes of the cluster being read */
    size_t src_cap;
} DecompressScratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_free(void *p)
{
    DecompressScratch *sc = p;
    if (!sc)
        return;
    if (sc->deflate)
        libdeflate_free_decompressor(sc->deflate);
    ZSTD_freeDCtx(sc->zstd);
    free(sc->src);
    free(sc);
}

static void scratch_key_create(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

/* This thread's scratch state, or NULL when out of memory (callers then use one-shot contexts). */
static DecompressScratch *scratch_get(void)
{
    pthread_once(&scratch_once, scratch_key_create);
    if (!scratch_key_ok)
        return NULL;
    DecompressScratch *sc = pthread_getspecific(scratch_key);
    if (sc)
        return sc;
    sc = calloc(1, sizeof(*sc));
    if (sc && pthread_setspecific(scratch_key, sc) != 0) {
        free(sc);
        sc = NULL;
    }
    return sc;
}

/* A zlib stream over src into dst, before its inflateInit2/deflateInit2 (which keep these fields). */
static void zstream_over(z_stream *z, const void *src, size_t src_len, void *dst, size_t dst_len)
{
    memset(z, 0, sizeof(*z));
    z->next_in = (Bytef *)src;
    z->avail_in = (uInt)src_len;
    z->next_out = dst;
    z->avail_out = (uInt)dst_len;
}

/* zlib's streaming inflate: the reference behaviour, used when libdeflate cannot decide. */
static int qcow2_zlib_inflate(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    z_stream z;
    zstream_over(&z, src, src_len, dst, dst_len);
    if (inflateInit2(&z, -15) != Z_OK)
        return -ENOMEM;
    int zr = inflate(&z, Z_FINISH);
    /* The stream may end exactly at the cluster end (Z_STREAM_END) or be followed by padding, in
     * which case inflate stops with a full output buffer (Z_BUF_ERROR/Z_OK). */
    bool full = z.avail_out == 0;
    inflateEnd(&z);
    if ((zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK) && full)
        return 0;
    return -EIO;
}

/* Raw deflate into exactly dst_len bytes. libdeflate decodes a whole buffer about twice as fast as
 * zlib's streaming inflate; it accepts trailing bytes after the stream (the descriptor counts whole
 * sectors) and fails on a stream that ends early. A stream that would produce more than a cluster, or
 * that libdeflate rejects, goes to zlib, which decides as before (a full cluster is accepted). */
static int qcow2_inflate(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    DecompressScratch *sc = scratch_get();
    if (sc && !sc->deflate)
        sc->deflate = libdeflate_alloc_decompressor();
    if (sc && sc->deflate) {
        size_t used_in;
        enum libdeflate_result r = libdeflate_deflate_decompress_ex(sc->deflate, src, src_len, dst, dst_len,
                                                                    &used_in, NULL);
        if (r == LIBDEFLATE_SUCCESS)
            return 0;
        if (r == LIBDEFLATE_SHORT_OUTPUT)
            return -EIO;
    }
    return qcow2_zlib_inflate(src, src_len, dst, dst_len);
}

static int qcow2_zstd_decompress(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    DecompressScratch *sc = scratch_get();
    ZSTD_DCtx *dctx = sc ? sc->zstd : NULL;
    if (sc && !dctx)
        dctx = sc->zstd = ZSTD_createDCtx();
    else if (!sc)
        dctx = ZSTD_createDCtx();
    if (!dctx)
        return -ENOMEM;
    ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters);
    ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, QCOW2_ZSTD_WINDOW_LOG_MAX);
    ZSTD_inBuffer in = { src, src_len, 0 };
    ZSTD_outBuffer out = { dst, dst_len, 0 };
    int ret = -EIO;
    while (out.pos < out.size) {
        size_t before_in = in.pos, before_out = out.pos;
        size_t zr = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(zr))
            break;
        if (in.pos == before_in && out.pos == before_out)
            break; /* no progress: input exhausted before a full cluster */
    }
    if (out.pos == out.size)
        ret = 0;
    if (!sc)
        ZSTD_freeDCtx(dctx);
    return ret;
}

static int64_t qcow2_deflate(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    z_stream z;
    zstream_over(&z, src, src_len, dst, dst_len);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -QCOW2_DEFLATE_WINDOW_BITS, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return -ENOMEM;
    int zr = deflate(&z, Z_FINISH);
    int64_t out = (int64_t)(dst_len - z.avail_out);
    deflateEnd(&z);
    if (zr == Z_STREAM_END)
        return out;
    return zr == Z_OK || zr == Z_BUF_ERROR ? -ENOSPC : -EIO;
}

static int64_t qcow2_zstd_compress(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    size_t zr = ZSTD_compress(dst, dst_len, src, src_len, ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(zr))
        return ZSTD_getErrorCode(zr) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
    return (int64_t)zr;
}

/* The two compression types the header may name, by their header value. */
typedef struct Qcow2Codec {
    int (*decompress)(const void *src, size_t src_len, void *dst, size_t dst_len);
    int64_t (*compress)(const void *src, size_t src_len, void *dst, size_t dst_len);
} Qcow2Codec;

static const Qcow2Codec *qcow2_codec(uint8_t compression_type)
{
    static const Qcow2Codec zlib = { qcow2_inflate, qcow2_deflate };
    static const Qcow2Codec zstd = { qcow2_zstd_decompress, qcow2_zstd_compress };
    return compression_type == QCOW2_COMPRESSION_ZLIB ? &zlib :
           compression_type == QCOW2_COMPRESSION_ZSTD ? &zstd : NULL;
}

int qcow2_decompress(uint8_t compression_type, const void *src, size_t src_len, void *dst, size_t dst_len)
{
    const Qcow2Codec *c = qcow2_codec(compression_type);
    return c ? c->decompress(src, src_len, dst, dst_len) : -ENOTSUP;
}

int64_t qcow2_compress(uint8_t compression_type, const void *src, size_t src_len, void *dst, size_t dst_len)
{
    const Qcow2Codec *c = qcow2_codec(compression_type);
    return c ? c->compress(src, src_len, dst, dst_len) : -ENOTSUP;
}

/* Host range of a compressed cluster: it starts at the descriptor's offset and runs to the end of the
 * last 512-byte sector the descriptor counts. */
static void qcow2_compressed_range(const Qcow2State *s, uint64_t l2_entry, uint64_t *offset, uint64_t *len)
{
    uint64_t coffset = l2_entry & s->compressed_offset_mask;
    uint64_t nb_sectors = ((l2_entry >> s->csize_shift) & s->csize_mask) + 1;
    *offset = coffset;
    *len = nb_sectors * QCOW2_COMPRESSED_SECTOR - (coffset & (QCOW2_COMPRESSED_SECTOR - 1));
}

static void qcow2_log_decompress_error(Qcow2State *s, uint64_t coffset, int ret)
{
    if (!__atomic_exchange_n(&s->decompress_logged, 1, __ATOMIC_RELAXED))
        log_msg("%s: cannot decompress the cluster at host offset 0x%" PRIx64 " (%s); reads of it fail with EIO",
                s->node_name ? s->node_name : "qcow2", coffset, ret == -EIO ? "corrupt data" : strerror(-ret));
}

int qcow2_read_compressed_cluster(Qcow2State *s, uint64_t l2_entry, uint8_t *out)
{
    uint64_t coffset, clen;
    qcow2_compressed_range(s, l2_entry, &coffset, &clen);
    int64_t file_len = bdrv_getlength(s->meta_file);
    if (file_len < 0)
        return (int)file_len;
    if (coffset >= (uint64_t)file_len) {
        qcow2_log_decompress_error(s, coffset, -EIO);
        return -EIO;
    }
    /* The last compressed cluster of a file may end before the sector its descriptor counts. */
    clen = MIN(clen, (uint64_t)file_len - coffset);
    /* The input goes to this thread's buffer (grown to at most two clusters, the longest range a
     * descriptor can count); without one, a buffer of its own. */
    DecompressScratch *sc = scratch_get();
    uint8_t *src = NULL;
    if (sc && sc->src_cap < clen) {
        uint8_t *grown = realloc(sc->src, clen);
        if (grown) {
            sc->src = grown;
            sc->src_cap = clen;
        }
    }
    bool own = !sc || sc->src_cap < clen;
    src = own ? malloc(clen) : sc->src;
    if (!src)
        return -ENOMEM;
    int ret = bdrv_pread(s->meta_file, (int64_t)coffset, (int64_t)clen, src);
    if (ret >= 0)
        ret = qcow2_decompress(s->compression_type, src, clen, out, s->cluster_size);
    if (own)
        free(src);
    if (ret < 0) {
        if (ret == -EIO || ret == -ENOTSUP)
            ret = -EIO;
        qcow2_log_decompress_error(s, coffset, ret);
    }
    return ret < 0 ? ret : 0;
}
