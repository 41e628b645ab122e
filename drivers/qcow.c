/* SPDX-License-Identifier: MIT */
/*
 * qcow.c - the qcow (version 1) format driver.  It owns the qcow v1 layout: the 48-byte big-endian
 * header (magic "QFI\xfb", version 1, backing file name, size, cluster_bits, l2_bits, crypt_method, L1
 * table offset), validated field by field against the file size and a memory budget before anything is
 * trusted; the L1 table (held in memory) and the L2 tables (read through a small cache of whole tables);
 * compressed clusters (bit 63 of an L2 entry: raw deflate, inflated to exactly one cluster); reads and
 * block status with host offsets through bdrv_read_mapped, unallocated clusters falling through to the
 * backing node; and, on writable nodes, in-place writes to plain clusters and allocating writes that
 * append a new cluster at the end of the file (whole cluster: the old compressed contents, the backing
 * file's bytes or zeros, with the new bytes over them), then the L2 entry (and a new L2 table and its L1
 * entry when needed) - data before the tables that name it; a writable open first checks that no table
 * or cluster lies in the header or overlaps another.  AES-encrypted images (crypt_method 1) open with the
 * key the front end gives (BlockOpenOpts.secret, or the prompt): AES-128-CBC with the passphrase's first
 * 16 bytes as key and the guest sector number as IV (plain64), the cipher and locked key memory of
 * drivers/luks/; their data runs are decoded (decrypted) and every write of theirs is an encrypting
 * write under the exclusive lock, in whole 512-byte sectors.
 * It also creates empty images (`imgfuse create -f qcow`).  It knows nothing of FUSE or of other formats.
 */
#include "block.h"
#include "util.h"
#include "luks/luks.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---------------------------------------------------------------- the on-disk layout */

#define QCOW_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW_VERSION 1
#define QCOW_HEADER_BYTES 48

#define QCOW_OFF_VERSION        4
#define QCOW_OFF_BACKING_OFFSET 8
#define QCOW_OFF_BACKING_SIZE   16
#define QCOW_OFF_MTIME          20
#define QCOW_OFF_SIZE           24
#define QCOW_OFF_CLUSTER_BITS   32
#define QCOW_OFF_L2_BITS        33
#define QCOW_OFF_CRYPT          36
#define QCOW_OFF_L1_OFFSET      40

#define QCOW_CRYPT_NONE 0
#define QCOW_CRYPT_AES  1

#define QCOW_COMPRESSED (UINT64_C(1) << 63)

#define QCOW_MIN_CLUSTER_BITS 9
#define QCOW_MAX_CLUSTER_BITS 16
#define QCOW_MIN_L2_BITS 6
#define QCOW_MAX_L2_BITS 13          /* an L2 table of 512 B to 64 KiB */
#define QCOW_MAX_BACKING_NAME 1023
/* The L1 table is held in memory: 32 MiB is 4 Mi entries, 8 TiB of disk with the smallest tables and
 * 2^61 bytes with the largest. */
#define QCOW_MAX_L1_BYTES (32 * MiB)
/* The guest size is kept below 2^62 so that every guest offset and cluster arithmetic fits an int64. */
#define QCOW_MAX_SIZE (UINT64_C(1) << 62)
/* L2 cache: whole tables (64 KiB at most), this many. */
#define QCOW_CACHE_SLOTS 16

typedef enum { QCOW_UNALLOCATED, QCOW_DATA, QCOW_COMPRESSED_DATA, QCOW_BAD } QcowKind;

typedef struct QcowL2Slot {
    uint64_t offset;    /* file offset of the table; valid only if entries != NULL */
    uint64_t last_use;
    uint64_t *entries;  /* host byte order */
} QcowL2Slot;

typedef struct QcowState {
    const char *name;
    BlockNode *file;

    /* header */
    uint64_t size, l1_offset, backing_offset;
    uint32_t backing_size, mtime, crypt_method;
    uint32_t cluster_bits, l2_bits;
    uint64_t cluster_size, l2_entries, l2_bytes;
    uint64_t l1_entries;
    uint64_t comp_mask;     /* host offset bits of a compressed entry */

    uint64_t *l1;           /* host byte order; guarded by io_lock */
    uint64_t host_limit;    /* no host byte at or past this offset is in the file */

    pthread_mutex_t cache_lock;
    QcowL2Slot slots[QCOW_CACHE_SLOTS];
    uint64_t use_clock;
    int bad_logged;

    /* writable nodes only */
    bool writable;
    pthread_rwlock_t io_lock;  /* shared: reads and in-place writes; exclusive: allocating writes */
    uint64_t file_end;         /* next allocation, cluster aligned */
    uint8_t *cow_buf;          /* one cluster, used under the exclusive lock */

    /* AES-encrypted images */
    uint8_t *key;              /* LUKS_LEGACY_KEY_PAGE bytes of locked memory, NULL: not encrypted */
    LuksCipher cipher;
} QcowState;

/* ---------------------------------------------------------------- probe */

static int qcow_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 8 || ld_be32(buf) != QCOW_MAGIC || ld_be32(buf + QCOW_OFF_VERSION) != QCOW_VERSION)
        return 0;
    return 100;
}

/* ---------------------------------------------------------------- header */

static int qcow_check_geometry(QcowState *s, Error *err)
{
    if (s->cluster_bits < QCOW_MIN_CLUSTER_BITS || s->cluster_bits > QCOW_MAX_CLUSTER_BITS) {
        error_set(err, EINVAL, "cluster_bits %" PRIu32 " is out of range (9 to 16)", s->cluster_bits);
        return -EINVAL;
    }
    if (s->l2_bits < QCOW_MIN_L2_BITS || s->l2_bits > QCOW_MAX_L2_BITS) {
        error_set(err, EINVAL, "l2_bits %" PRIu32 " is out of range (6 to 13)", s->l2_bits);
        return -EINVAL;
    }
    s->cluster_size = UINT64_C(1) << s->cluster_bits;
    s->l2_entries = UINT64_C(1) << s->l2_bits;
    s->l2_bytes = s->l2_entries * 8;
    s->comp_mask = (UINT64_C(1) << (63 - s->cluster_bits)) - 1;
    if (s->size > QCOW_MAX_SIZE) {
        error_set(err, EINVAL, "image size %" PRIu64 " is larger than 2^62 bytes", s->size);
        return -EINVAL;
    }
    s->size = s->size / 512 * 512;
    if (s->size == 0) {
        error_set(err, EINVAL, "image size is 0");
        return -EINVAL;
    }
    uint32_t shift = s->cluster_bits + s->l2_bits;
    s->l1_entries = (s->size + (UINT64_C(1) << shift) - 1) >> shift;
    if (s->l1_entries > QCOW_MAX_L1_BYTES / 8) {
        error_set(err, EFBIG, "L1 table is too large: %" PRIu64 " entries, more than the %lld MiB limit",
                  s->l1_entries, QCOW_MAX_L1_BYTES / MiB);
        return -EFBIG;
    }
    return 0;
}

static int qcow_check_layout(QcowState *s, Error *err)
{
    if (s->crypt_method != QCOW_CRYPT_NONE && s->crypt_method != QCOW_CRYPT_AES) {
        error_set(err, ENOTSUP, "unknown encryption method %" PRIu32, s->crypt_method);
        return -ENOTSUP;
    }
    if (s->l1_offset < QCOW_HEADER_BYTES || s->l1_offset % 8 || s->l1_offset > s->host_limit ||
        s->host_limit - s->l1_offset < s->l1_entries * 8) {
        error_set(err, EINVAL, "L1 table (offset 0x%" PRIx64 ", %" PRIu64 " entries) is unaligned, in the header or "
                  "past the end of the file", s->l1_offset, s->l1_entries);
        return -EINVAL;
    }
    return 0;
}

static int qcow_read_backing_name(QcowState *s, BlockNode *bs, Error *err)
{
    if (s->backing_offset == 0)
        return 0;
    if (s->backing_size == 0 || s->backing_size > QCOW_MAX_BACKING_NAME || s->backing_offset < QCOW_HEADER_BYTES ||
        s->backing_offset > s->host_limit || s->host_limit - s->backing_offset < s->backing_size) {
        error_set(err, EINVAL, "backing file name (offset 0x%" PRIx64 ", %" PRIu32 " bytes) lies outside the file "
                  "or is longer than %d bytes", s->backing_offset, s->backing_size, QCOW_MAX_BACKING_NAME);
        return -EINVAL;
    }
    char name[QCOW_MAX_BACKING_NAME + 1];
    int ret = bdrv_pread(s->file, (int64_t)s->backing_offset, s->backing_size, name);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the backing file name: %s", strerror(-ret));
        return ret;
    }
    name[s->backing_size] = '\0';
    if (strlen(name) != s->backing_size) {
        error_set(err, EINVAL, "backing file name contains a NUL byte");
        return -EINVAL;
    }
    bs->backing_name = strdup(name);
    if (!bs->backing_name) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static int qcow_read_header(QcowState *s, BlockNode *bs, Error *err)
{
    uint8_t h[QCOW_HEADER_BYTES];
    int ret = bdrv_read_header(s->file, s->host_limit, h, sizeof(h), "qcow", err);
    if (ret < 0)
        return ret;
    if (ld_be32(h) != QCOW_MAGIC || ld_be32(h + QCOW_OFF_VERSION) != QCOW_VERSION) {
        error_set(err, EINVAL, "not a qcow version 1 image (magic or version %" PRIu32 ")",
                  ld_be32(h + QCOW_OFF_VERSION));
        return -EINVAL;
    }
    s->backing_offset = ld_be64(h + QCOW_OFF_BACKING_OFFSET);
    s->backing_size = ld_be32(h + QCOW_OFF_BACKING_SIZE);
    s->mtime = ld_be32(h + QCOW_OFF_MTIME);
    s->size = ld_be64(h + QCOW_OFF_SIZE);
    s->cluster_bits = h[QCOW_OFF_CLUSTER_BITS];
    s->l2_bits = h[QCOW_OFF_L2_BITS];
    s->crypt_method = ld_be32(h + QCOW_OFF_CRYPT);
    s->l1_offset = ld_be64(h + QCOW_OFF_L1_OFFSET);
    ret = qcow_check_geometry(s, err);
    if (ret == 0)
        ret = qcow_check_layout(s, err);
    if (ret == 0)
        ret = qcow_read_backing_name(s, bs, err);
    return ret;
}

static int qcow_load_l1(QcowState *s, Error *err)
{
    s->l1 = calloc((size_t)MAX(s->l1_entries, 1), 8);
    if (!s->l1) {
        error_set(err, ENOMEM, "out of memory for an L1 table of %" PRIu64 " entries", s->l1_entries);
        return -ENOMEM;
    }
    int ret = bdrv_pread(s->file, (int64_t)s->l1_offset, (int64_t)(s->l1_entries * 8), s->l1);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the L1 table: %s", strerror(-ret));
        return ret;
    }
    for (uint64_t i = 0; i < s->l1_entries; i++)
        s->l1[i] = ld_be64(&s->l1[i]);
    return 0;
}

/* ---------------------------------------------------------------- tables */

static void qcow_log_bad(QcowState *s, const char *what, uint64_t c, uint64_t e)
{
    if (!__atomic_exchange_n(&s->bad_logged, 1, __ATOMIC_RELAXED))
        log_msg("%s: %s for guest cluster %" PRIu64 " (0x%" PRIx64 ") lies in the header or past the end of the file; "
                "reads of that range fail", s->name, what, c, e);
}

/* Whether [off, off + len) lies in the file, past the header and clear of the L1 table. */
static bool qcow_range_ok(const QcowState *s, uint64_t off, uint64_t len)
{
    return off >= QCOW_HEADER_BYTES && off <= s->host_limit && s->host_limit - off >= len &&
           !ranges_overlap(off, len, s->l1_offset, s->l1_entries * 8);
}

/* Caller holds cache_lock: the cached table at file offset l2, read on a miss. */
static int qcow_get_l2(QcowState *s, uint64_t l2, uint64_t **out)
{
    QcowL2Slot *victim = &s->slots[0];
    for (int i = 0; i < QCOW_CACHE_SLOTS; i++) {
        QcowL2Slot *sl = &s->slots[i];
        if (sl->entries && sl->offset == l2) {
            sl->last_use = ++s->use_clock;
            *out = sl->entries;
            return 0;
        }
        if (!sl->entries || (victim->entries && sl->last_use < victim->last_use))
            victim = sl;
    }
    if (!victim->entries && !(victim->entries = malloc(s->l2_bytes)))
        return -ENOMEM;
    victim->offset = UINT64_MAX;
    int ret = bdrv_pread(s->file, (int64_t)l2, (int64_t)s->l2_bytes, victim->entries);
    if (ret < 0)
        return ret;
    for (uint64_t i = 0; i < s->l2_entries; i++)
        victim->entries[i] = ld_be64(&victim->entries[i]);
    victim->offset = l2;
    victim->last_use = ++s->use_clock;
    *out = victim->entries;
    return 0;
}

/* Updates a cached copy of table l2 after entry i was written as e. */
static void qcow_cache_update(QcowState *s, uint64_t l2, uint64_t i, uint64_t e)
{
    pthread_mutex_lock(&s->cache_lock);
    for (int k = 0; k < QCOW_CACHE_SLOTS; k++)
        if (s->slots[k].entries && s->slots[k].offset == l2)
            s->slots[k].entries[i] = e;
    pthread_mutex_unlock(&s->cache_lock);
}

/* The raw L2 entry of guest cluster c (0: unallocated). */
static int qcow_l2_entry(QcowState *s, uint64_t c, uint64_t *entry)
{
    uint64_t l2 = s->l1[c >> s->l2_bits];
    *entry = 0;
    if (l2 == 0)
        return 0;
    if (!qcow_range_ok(s, l2, s->l2_bytes)) {
        qcow_log_bad(s, "L1 entry", c, l2);
        return -EIO;
    }
    uint64_t *t;
    pthread_mutex_lock(&s->cache_lock);
    int ret = qcow_get_l2(s, l2, &t);
    if (ret == 0)
        *entry = t[c & (s->l2_entries - 1)];
    pthread_mutex_unlock(&s->cache_lock);
    return ret;
}

/* Guest bytes of cluster c inside the disk (the last one may be partial). */
static uint64_t qcow_cluster_visible(const QcowState *s, uint64_t c)
{
    return MIN(s->cluster_size, s->size - (c << s->cluster_bits));
}

/* What guest cluster c is: *host the data's file offset, or the compressed entry itself. */
static QcowKind qcow_classify(QcowState *s, uint64_t c, uint64_t *host, int *err)
{
    uint64_t e;
    *host = 0;
    *err = qcow_l2_entry(s, c, &e);
    if (*err < 0)
        return QCOW_BAD;
    if (e == 0)
        return QCOW_UNALLOCATED;
    if (e & QCOW_COMPRESSED) {
        *host = e;
        return QCOW_COMPRESSED_DATA;
    }
    if (!qcow_range_ok(s, e, qcow_cluster_visible(s, c))) {
        qcow_log_bad(s, "L2 entry", c, e);
        *err = -EIO;
        return QCOW_BAD;
    }
    *host = e;
    return QCOW_DATA;
}

/* ---------------------------------------------------------------- read, block status */

/* The guest offset where unallocated cluster c's run surely ends: the end of its L2 table's span when the
 * L1 entry is empty (no per-cluster work), else the end of c. */
static uint64_t qcow_unallocated_end(const QcowState *s, uint64_t c)
{
    uint64_t i = c >> s->l2_bits;
    if (s->l1[i] == 0)
        return (i + 1) << (s->cluster_bits + s->l2_bits);
    return (c + 1) << s->cluster_bits;
}

/* One run from offset: clusters of one kind (host-contiguous for data; one cluster if compressed). */
static int qcow_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    QcowState *s = bs->opaque;
    (void)opaque;
    if (offset < 0 || bytes <= 0 || (uint64_t)offset >= s->size)
        return -EINVAL;
    uint64_t off = (uint64_t)offset, end = MIN(s->size, off + (uint64_t)bytes);
    uint64_t c = off >> s->cluster_bits, host;
    int err;
    QcowKind kind = qcow_classify(s, c, &host, &err);
    if (kind == QCOW_BAD)
        return err < 0 ? err : -EIO;
    uint64_t in = off & (s->cluster_size - 1), run_end = MIN(end, (c + 1) << s->cluster_bits);
    uint64_t next_host = host + s->cluster_size;
    if (kind == QCOW_UNALLOCATED)
        run_end = MIN(end, qcow_unallocated_end(s, c));
    while (kind != QCOW_COMPRESSED_DATA && run_end < end) {
        uint64_t h, rc = run_end >> s->cluster_bits;
        QcowKind k = qcow_classify(s, rc, &h, &err);
        if (k != kind || (k == QCOW_DATA && h != next_host))
            break;
        next_host = h + s->cluster_size;
        run_end = MIN(end, k == QCOW_UNALLOCATED ? qcow_unallocated_end(s, rc) : run_end + s->cluster_size);
    }
    st->bytes = (int64_t)(run_end - off);
    /* ciphertext (with or without the key): decoded, and no host offset told (as qemu-img map) */
    if (kind == QCOW_DATA && s->crypt_method == QCOW_CRYPT_AES) {
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
        st->host_offset = (int64_t)(host + in);
    } else if (kind == QCOW_DATA) {
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)(host + in);
        st->host_file = s->file;
    } else if (kind == QCOW_COMPRESSED_DATA) {
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_COMPRESSED;
        st->host_offset = (int64_t)(host & s->comp_mask);
    }
    return 0;
}

/* Inflates compressed entry e (of guest cluster c) into out, one whole cluster; -EIO unless the stream
 * yields exactly one cluster. */
static int qcow_inflate(QcowState *s, uint64_t c, uint64_t e, uint8_t *out)
{
    uint64_t coff = e & s->comp_mask, csize = (e >> (63 - s->cluster_bits)) & (s->cluster_size - 1);
    if (csize == 0 || !qcow_range_ok(s, coff, csize)) {
        qcow_log_bad(s, "compressed L2 entry", c, e);
        return -EIO;
    }
    uint8_t *in = malloc(csize);
    if (!in)
        return -ENOMEM;
    int ret = bdrv_pread(s->file, (int64_t)coff, (int64_t)csize, in);
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (ret == 0 && inflateInit2(&z, -15) != Z_OK)
        ret = -ENOMEM;
    else if (ret == 0) {
        z.next_in = in;
        z.avail_in = (uInt)csize;
        z.next_out = out;
        z.avail_out = (uInt)s->cluster_size;
        int zr = inflate(&z, Z_FINISH);
        /* exactly one cluster: a stream that ends early fails; one that would go on is cut there, as qemu does */
        if ((zr != Z_STREAM_END && zr != Z_BUF_ERROR) || z.total_out != s->cluster_size)
            ret = -EIO;
        inflateEnd(&z);
    }
    free(in);
    return ret;
}

/* Encrypts (enc) or decrypts n bytes of guest data at guest offset off in place: whole sectors only. */
static int qcow_crypt(QcowState *s, uint64_t off, uint8_t *buf, uint64_t n, bool enc)
{
    if ((off | n) & 511)
        return -EIO;
    return luks_cipher_run(&s->cipher, off / 512, buf, (size_t)n, enc);
}

static int qcow_decode(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st, void *opaque)
{
    QcowState *s = bs->opaque;
    (void)opaque;
    if (s->crypt_method == QCOW_CRYPT_AES && !s->key)
        return -ENOKEY;
    if (s->key && !(st->flags & BDRV_BLOCK_COMPRESSED)) { /* an encrypted data run, from its start */
        int r = bdrv_pread(s->file, st->host_offset, bytes, buf);
        return r < 0 ? r : qcow_crypt(s, (uint64_t)offset, buf, (uint64_t)bytes, false);
    }
    uint64_t c = (uint64_t)offset >> s->cluster_bits, e, in = (uint64_t)offset & (s->cluster_size - 1);
    int err;
    if (qcow_classify(s, c, &e, &err) != QCOW_COMPRESSED_DATA || in + (uint64_t)bytes > s->cluster_size)
        return err < 0 ? err : -EIO;
    uint8_t *tmp = malloc(s->cluster_size);
    if (!tmp)
        return -ENOMEM;
    int ret = qcow_inflate(s, c, e, tmp);
    if (ret == 0)
        memcpy(buf, tmp + in, (size_t)bytes);
    free(tmp);
    return ret;
}

/* Reads and block status hold it shared, allocations exclusive; only a writable image has one. */
static pthread_rwlock_t *qcow_lock(BlockNode *bs)
{
    QcowState *s = bs->opaque;
    return s->writable ? &s->io_lock : NULL;
}

static const BlockReadMap qcow_read_map = { .map = qcow_map, .decode = qcow_decode, .lock = qcow_lock };

static int64_t qcow_getlength(BlockNode *bs)
{
    return (int64_t)((QcowState *)bs->opaque)->size;
}

/* ---------------------------------------------------------------- allocating writes */

/* The current contents of guest cluster c (kind k, entry e) into cow_buf, as a new cluster starts. */
static int qcow_cow_fill(BlockNode *bs, QcowState *s, uint64_t c, QcowKind k, uint64_t e)
{
    memset(s->cow_buf, 0, s->cluster_size);
    if (k == QCOW_COMPRESSED_DATA)
        return qcow_inflate(s, c, e, s->cow_buf);
    if (!bs->backing)
        return 0;
    return bdrv_pread(bs->backing, (int64_t)(c << s->cluster_bits), (int64_t)qcow_cluster_visible(s, c), s->cow_buf);
}

/* A new, zeroed L2 table at the end of the file for L1 index i, then its L1 entry. */
static int qcow_new_l2(QcowState *s, uint64_t i, uint64_t *l2)
{
    *l2 = s->file_end;
    int ret = bdrv_pwrite_zeroes(s->file, (int64_t)*l2, (int64_t)s->l2_bytes, 0);
    if (ret < 0)
        return ret;
    s->file_end += (uint64_t)align_up((int64_t)s->l2_bytes, (int64_t)s->cluster_size);
    s->host_limit = MAX(s->host_limit, *l2 + s->l2_bytes);
    ret = bdrv_pwrite_field(s->file, (int64_t)(s->l1_offset + i * 8), BDRV_FIELD_BE64, *l2, "qcow_l1_update");
    if (ret == 0)
        s->l1[i] = *l2;
    return ret;
}

/* Writes [in, in + n) of guest cluster c, which holds no plain cluster, into a new cluster at the end
 * of the file, then names it in its L2 table. Caller holds the exclusive lock. */
static int qcow_allocate_write(BlockNode *bs, QcowState *s, uint64_t c, uint64_t in, uint64_t n, const uint8_t *p)
{
    uint64_t e;
    int err;
    QcowKind k = qcow_classify(s, c, &e, &err);
    if (k == QCOW_BAD)
        return err < 0 ? err : -EIO;
    if (k == QCOW_DATA && s->key) { /* encrypted: every write comes here */
        memcpy(s->cow_buf, p, n);
        int ret = qcow_crypt(s, (c << s->cluster_bits) + in, s->cow_buf, n, true);
        return ret < 0 ? ret : bdrv_pwrite(s->file, (int64_t)(e + in), (int64_t)n, s->cow_buf, 0);
    }
    if (k == QCOW_DATA) /* another writer allocated it meanwhile */
        return bdrv_pwrite(s->file, (int64_t)(e + in), (int64_t)n, p, 0);
    const uint8_t *src = p;
    if (s->key && in == 0 && n == s->cluster_size)
        memcpy(s->cow_buf, p, n);
    if (in != 0 || n != s->cluster_size) {
        int ret = qcow_cow_fill(bs, s, c, k, e);
        if (ret < 0)
            return ret;
        memcpy(s->cow_buf + in, p, n);
        src = s->cow_buf;
    }
    if (s->key) {
        int ret = qcow_crypt(s, c << s->cluster_bits, s->cow_buf, s->cluster_size, true);
        if (ret < 0)
            return ret;
        src = s->cow_buf;
    }
    uint64_t host = s->file_end;
    int ret = bdrv_pwrite(s->file, (int64_t)host, (int64_t)s->cluster_size, src, 0);
    if (ret < 0)
        return ret;
    s->file_end += s->cluster_size;
    s->host_limit = MAX(s->host_limit, host + s->cluster_size);
    uint64_t i = c >> s->l2_bits, l2 = s->l1[i];
    if (l2 == 0 && (ret = qcow_new_l2(s, i, &l2)) < 0)
        return ret;
    uint64_t idx = c & (s->l2_entries - 1);
    ret = bdrv_pwrite_field(s->file, (int64_t)(l2 + idx * 8), BDRV_FIELD_BE64, host, "qcow_l2_update");
    if (ret == 0)
        qcow_cache_update(s, l2, idx, host);
    return ret;
}

static int qcow_write_place(BlockNode *bs, uint64_t off, uint64_t left, uint64_t *n, uint64_t *host)
{
    QcowState *s = bs->opaque;
    uint64_t in = off & (s->cluster_size - 1);
    int err;
    if (s->crypt_method == QCOW_CRYPT_AES && !s->key)
        return -ENOKEY;
    *n = MIN(left, s->cluster_size - in);
    QcowKind k = qcow_classify(s, off >> s->cluster_bits, host, &err);
    if (k == QCOW_BAD)
        return err < 0 ? err : -EIO;
    *host += in;
    return k == QCOW_DATA && !s->key; /* an encrypted write always goes through allocate, which encrypts */
}

static int qcow_write_allocate(BlockNode *bs, uint64_t off, uint64_t left, const void *buf, uint64_t *n)
{
    QcowState *s = bs->opaque;
    (void)left;
    return qcow_allocate_write(bs, s, off >> s->cluster_bits, off & (s->cluster_size - 1), *n, buf);
}

static const BlockWriteMap qcow_write_map = { .place = qcow_write_place, .allocate = qcow_write_allocate };

/* ---------------------------------------------------------------- open, close */

static void qcow_close(BlockNode *bs)
{
    QcowState *s = bs->opaque;
    if (!s->name)
        return;
    if (s->writable)
        pthread_rwlock_destroy(&s->io_lock);
    pthread_mutex_destroy(&s->cache_lock);
    for (int i = 0; i < QCOW_CACHE_SLOTS; i++)
        free(s->slots[i].entries);
    free(s->l1);
    free(s->cow_buf);
    luks_cipher_free(&s->cipher);
    luks_secure_free(s->key, LUKS_LEGACY_KEY_PAGE);
    memset(s, 0, sizeof(*s));
}

/* ---------------------------------------------------------------- the writable-open check */

/* Host bytes used by the header, L1 and L2 tables and plain clusters, a bit per 512-byte sector (files
 * over 128 GiB skip the overlap test, their entries are still bounds-checked). */
#define QCOW_CHECK_MAX_SECTORS (UINT64_C(1) << 28)

typedef struct QcowCheck {
    uint64_t *used;
    int problems;
    char first[256];
} QcowCheck;

static void qcow_problem(QcowCheck *k, const char *what, uint64_t index, uint64_t e)
{
    if (!k->problems++)
        snprintf(k->first, sizeof(k->first), "%s %" PRIu64 " (0x%" PRIx64 ") points into the header, a table or "
                 "another cluster, or past the end of the file", what, index, e);
}

/* Marks [off, off + len) used (mark) or only tests it; true if no sector of it was marked before. */
static bool qcow_sectors_free(QcowCheck *k, uint64_t off, uint64_t len, bool mark)
{
    bool free_ = true;
    for (uint64_t i = off / 512; k->used && len && i <= (off + len - 1) / 512; i++) {
        free_ = free_ && !(k->used[i / 64] >> (i % 64) & 1);
        if (mark)
            k->used[i / 64] |= UINT64_C(1) << (i % 64);
    }
    return free_;
}

/* One L2 table: plain clusters marked (pass 0), compressed extents tested against them (pass 1). */
static void qcow_check_l2(QcowState *s, QcowCheck *k, uint64_t l1i, const uint64_t *t, int pass)
{
    for (uint64_t j = 0; j < s->l2_entries; j++) {
        uint64_t e = ld_be64(&t[j]), c = (l1i << s->l2_bits) | j;
        if (e == 0 || (c << s->cluster_bits) >= s->size || (pass == 0) == ((e & QCOW_COMPRESSED) != 0))
            continue;
        uint64_t off = e & s->comp_mask, len = (e >> (63 - s->cluster_bits)) & (s->cluster_size - 1);
        if (pass == 0) {
            off = e;
            len = qcow_cluster_visible(s, c);
        }
        if (!qcow_range_ok(s, off, len) || !qcow_sectors_free(k, off, len, pass == 0))
            qcow_problem(k, pass ? "compressed L2 entry of guest cluster" : "L2 entry of guest cluster", c, e);
    }
}

/* Every table and cluster an in-place write could reach lies inside the file and apart from the others:
 * the number of problems (the first in k->first), or -errno. */
static int qcow_check_tables(QcowState *s, QcowCheck *k)
{
    uint64_t sectors = (s->host_limit + 511) / 512, *t = malloc(s->l2_bytes);
    memset(k, 0, sizeof(*k));
    if (sectors <= QCOW_CHECK_MAX_SECTORS)
        k->used = calloc((size_t)(sectors / 64 + 1), 8);
    if (!t || (sectors <= QCOW_CHECK_MAX_SECTORS && !k->used)) {
        free(t);
        free(k->used);
        return -ENOMEM;
    }
    /* the backing name's range was checked at open when there is one */
    qcow_sectors_free(k, 0, QCOW_HEADER_BYTES, true);
    if (s->backing_offset)
        qcow_sectors_free(k, s->backing_offset, s->backing_size, true);
    qcow_sectors_free(k, s->l1_offset, s->l1_entries * 8, true);
    for (uint64_t i = 0; i < s->l1_entries; i++)
        if (s->l1[i] && (!qcow_range_ok(s, s->l1[i], s->l2_bytes) || !qcow_sectors_free(k, s->l1[i], s->l2_bytes, true)))
            qcow_problem(k, "L1 entry", i, s->l1[i]);
    int ret = 0;
    for (int pass = 0; pass < 2 && ret == 0 && !k->problems; pass++)
        for (uint64_t i = 0; i < s->l1_entries && ret == 0; i++)
            if (s->l1[i] && (ret = bdrv_pread(s->file, (int64_t)s->l1[i], (int64_t)s->l2_bytes, t)) == 0)
                qcow_check_l2(s, k, i, t, pass);
    free(t);
    free(k->used);
    return ret < 0 ? ret : k->problems;
}

/* A writable image is checked whole first: an entry pointing into the header, a table or a cluster another
 * entry uses would make an in-place write damage other data. */
static int qcow_open_writable(QcowState *s, Error *err)
{
    QcowCheck k;
    int ret = qcow_check_tables(s, &k);
    if (ret < 0) {
        error_set(err, -ret, "consistency check failed: %s", strerror(-ret));
        return ret;
    }
    if (ret > 0) {
        error_set(err, EINVAL, "%s (%d problem%s); the image can only be opened read-only", k.first, ret,
                  ret == 1 ? "" : "s");
        return -EINVAL;
    }
    s->cow_buf = malloc(s->cluster_size);
    if (!s->cow_buf) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    s->file_end = (uint64_t)align_up((int64_t)s->host_limit, (int64_t)s->cluster_size);
    pthread_rwlock_init(&s->io_lock, NULL);
    s->writable = true;
    return 0;
}

/* The AES key of an encrypted image (there is nothing to check it against: a wrong key reads garbage). */
static int qcow_open_key(BlockNode *bs, QcowState *s, const BlockOpenOpts *opts, Error *err)
{
    const uint8_t *pass = NULL;
    size_t len = 0;
    uint8_t *asked = NULL;
    if (luks_key_skip(opts))
        return 0; /* metadata only: s->key stays NULL, data reads fail with -ENOKEY */
    int r = luks_ossl_load(err);
    if (r == 0)
        r = luks_key_get(bs, opts, "encrypted qcow image (AES)", &pass, &len, &asked, err);
    if (r < 0)
        return r;
    s->key = luks_legacy_aes_key(pass, len);
    luks_secure_free(asked, LUKS_KEY_PROMPT_MAX);
    if (!s->key) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    return luks_cipher_init(&s->cipher, "aes-cbc-plain64", s->key, LUKS_LEGACY_AES_KEY, 512, err);
}

static int qcow_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    QcowState *s = bs->opaque;
    s->name = bs->filename ? bs->filename : "qcow";
    s->file = bs->file;
    pthread_mutex_init(&s->cache_lock, NULL);
    int64_t file_size;
    int ret = bdrv_file_size(bs->file, &file_size, err);
    if (ret == 0) {
        s->host_limit = (uint64_t)file_size;
        ret = qcow_read_header(s, bs, err);
    }
    if (ret == 0)
        ret = qcow_load_l1(s, err);
    if (ret == 0 && s->crypt_method == QCOW_CRYPT_AES)
        ret = qcow_open_key(bs, s, opts, err);
    if (ret == 0 && !bs->read_only)
        ret = qcow_open_writable(s, err);
    if (ret < 0) {
        qcow_close(bs);
        return ret;
    }
    bs->request_alignment = s->key ? 512 : 1; /* encrypted: whole sectors */
    return 0;
}

/* ---------------------------------------------------------------- create */

static const BlockOptionSpec qcow_create_options[] = {
    { "backing_file", BDRV_OPT_STRING, 0, "name of the backing file (= -b)" },
    { "backing_fmt", BDRV_OPT_STRING, 0, "its format (= -F); qcow stores no format, the parent is probed" },
    { NULL, 0, 0, NULL },
};

typedef struct QcowCreateParse {
    char **backing, **fmt;
    const char *filename;
    Error *err;
} QcowCreateParse;

static int qcow_create_option(const char *key, const char *value, void *opaque)
{
    QcowCreateParse *c = opaque;
    char **dst = !value                         ? NULL
                 : !strcmp(key, "backing_file") ? c->backing
                 : !strcmp(key, "backing_fmt")  ? c->fmt
                                                : NULL;
    if (!dst) {
        error_set(c->err, EINVAL, "%s: unknown qcow creation option '%s'", c->filename, key);
        return -EINVAL;
    }
    free(*dst);
    return (*dst = strdup(value)) ? 0 : -ENOMEM;
}

/* The backing file and format given as -o backing_file=,backing_fmt= (the -b/-F values win). */
static int qcow_create_parse(const char *options, char **backing, char **fmt, const char *filename, Error *err)
{
    QcowCreateParse c = { .backing = backing, .fmt = fmt, .filename = filename, .err = err };
    return bdrv_create_opts_each(options, qcow_create_option, &c);
}

/* Header, backing name, then a zeroed L1 table: 512-byte clusters and 4096-entry L2 tables with a
 * backing file, 4 KiB and 512 entries without (qemu-img's choices); *len bytes; NULL: no memory. */
static uint8_t *qcow_new_image(uint64_t size, const char *backing, uint64_t *len)
{
    size_t name_len = backing ? strlen(backing) : 0;
    uint32_t cluster_bits = name_len ? 9 : 12, l2_bits = name_len ? 12 : 9;
    uint64_t l1_off = (uint64_t)align_up((int64_t)(QCOW_HEADER_BYTES + name_len), 8);
    uint64_t l1_entries = (size + (UINT64_C(1) << (cluster_bits + l2_bits)) - 1) >> (cluster_bits + l2_bits);
    uint64_t total = (uint64_t)align_up((int64_t)(l1_off + l1_entries * 8), 512);
    uint8_t *img = calloc(1, total);
    if (!img)
        return NULL;
    st_be32(img, QCOW_MAGIC);
    st_be32(img + QCOW_OFF_VERSION, QCOW_VERSION);
    st_be64(img + QCOW_OFF_BACKING_OFFSET, name_len ? QCOW_HEADER_BYTES : 0);
    st_be32(img + QCOW_OFF_BACKING_SIZE, (uint32_t)name_len);
    st_be64(img + QCOW_OFF_SIZE, size);
    img[QCOW_OFF_CLUSTER_BITS] = (uint8_t)cluster_bits;
    img[QCOW_OFF_L2_BITS] = (uint8_t)l2_bits;
    st_be64(img + QCOW_OFF_L1_OFFSET, l1_off);
    memcpy(img + QCOW_HEADER_BYTES, backing ? backing : "", name_len);
    *len = total;
    return img;
}

static int qcow_create(const char *filename, const CreateOpts *opts, Error *err)
{
    char *backing = NULL, *fmt = NULL;
    int ret = qcow_create_parse(opts->options, &backing, &fmt, filename, err);
    const char *name = opts->backing && opts->backing[0] ? opts->backing : backing;
    const char *bfmt = opts->backing_format ? opts->backing_format : fmt;
    uint64_t size = (uint64_t)align_up(MAX(opts->size, 0), 512);
    if (ret == 0 && (opts->size <= 0 || size > QCOW_MAX_SIZE || ((size - 1) >> 21) >= QCOW_MAX_L1_BYTES / 8)) {
        error_set(err, EINVAL, "%s: invalid virtual size for qcow (1 byte to 8 TiB)", filename);
        ret = -EINVAL;
    } else if (ret == 0 && name && strlen(name) > QCOW_MAX_BACKING_NAME) {
        error_set(err, ENAMETOOLONG, "%s: backing file name longer than %d bytes", filename, QCOW_MAX_BACKING_NAME);
        ret = -ENAMETOOLONG;
    } else if (ret == 0 && bfmt && !bdrv_find_driver(bfmt)) {
        error_set(err, EINVAL, "%s: unknown backing format '%s'", filename, bfmt);
        ret = -EINVAL;
    }
    uint64_t len = 0;
    uint8_t *img = ret == 0 ? qcow_new_image(size, name && name[0] ? name : NULL, &len) : NULL;
    if (ret == 0)
        ret = img ? bdrv_create_image_file(filename, img, len, err) : -ENOMEM;
    free(img);
    free(backing);
    free(fmt);
    return ret;
}

/* ---------------------------------------------------------------- info */

static bool qcow_has_zero_init(BlockNode *bs)
{
    return bs->backing == NULL;
}

static void qcow_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    facts->cluster_size = (int64_t)((QcowState *)bs->opaque)->cluster_size;
    facts->encrypted = ((QcowState *)bs->opaque)->crypt_method == QCOW_CRYPT_AES;
}

static void qcow_get_info(BlockNode *bs, InfoList *info)
{
    QcowState *s = bs->opaque;
    info_add_int(info, "cluster_size", (int64_t)s->cluster_size);
    info_add_int(info, "l2_entries", (int64_t)s->l2_entries);
    info_add_int(info, "l1_table_offset", (int64_t)s->l1_offset);
    info_add_int(info, "l1_entries", (int64_t)s->l1_entries);
    info_add_str(info, "encryption", "%s", s->crypt_method == QCOW_CRYPT_AES ? "aes" : "none");
    if (s->crypt_method == QCOW_CRYPT_AES && !s->key)
        info_add_str(info, "encrypted", "yes (no key given; data not readable)");
    info_add_int(info, "backing_mtime", s->mtime);
}

static int64_t qcow_memory_used(BlockNode *bs)
{
    QcowState *s = bs->opaque;
    int64_t bytes = (int64_t)sizeof(*s) + (int64_t)(s->l1_entries * 8);
    pthread_mutex_lock(&s->cache_lock);
    for (int i = 0; i < QCOW_CACHE_SLOTS; i++)
        if (s->slots[i].entries)
            bytes += (int64_t)s->l2_bytes;
    pthread_mutex_unlock(&s->cache_lock);
    if (s->cow_buf)
        bytes += (int64_t)s->cluster_size;
    return bytes;
}

const BlockDriver bdrv_qcow = {
    .name = "qcow",
    .instance_size = sizeof(QcowState),
    .supports_backing = true,
    .probe = qcow_probe,
    .open = qcow_open,
    .close = qcow_close,
    .read = bdrv_mapped_read,
    .write = bdrv_mapped_write,
    .block_status = bdrv_mapped_block_status,
    .getlength = qcow_getlength,
    .memory_used = qcow_memory_used,
    .get_info = qcow_get_info,
    .get_facts = qcow_get_facts,
    .create = qcow_create,
    .create_options = qcow_create_options,
    .read_map = &qcow_read_map,
    .write_map = &qcow_write_map,
    .has_zero_init = qcow_has_zero_init,
};
