/* SPDX-License-Identifier: MIT */
/*
 * qcow2.c - the qcow2 format driver's front: probing, header and header-extension parsing with
 * validation of every field (the header is untrusted input: all arithmetic is overflow-checked and
 * table sizes are capped against a memory budget and the file size), open and close, the external data
 * file, `info` output, and the driver vtable at the bottom.  Mapping and reads live in cluster.c, the
 * table cache in cache.c, decompression in compress.c, snapshots in snapshot.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qcow2.h"
#include "util.h"

#define QCOW2_DEFAULT_L2_CACHE (4 * 1024 * 1024)
#define QCOW2_MIN_L2_CACHE_TABLES 4
#define QCOW2_MAX_L2_CACHE_TABLES (1 << 22)

/* ---------------------------------------------------------------- probe */

static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 8 || ld_be32(buf) != QCOW2_MAGIC)
        return 0;
    uint32_t version = ld_be32(buf + 4);
    return (version == 2 || version == 3) ? 100 : 0;
}

/* ---------------------------------------------------------------- feature names */

static const char *qcow2_default_feature_name(int type, unsigned bit)
{
    static const char *const incompat[] = { "dirty bit", "corrupt bit", "external data file",
                                            "compression type", "extended L2 entries" };
    static const char *const compat[] = { "lazy refcounts" };
    static const char *const autoclear[] = { "bitmaps", "raw external data" };
    if (type == QCOW2_FEAT_TYPE_INCOMPAT && bit < ARRAY_SIZE(incompat))
        return incompat[bit];
    if (type == QCOW2_FEAT_TYPE_COMPAT && bit < ARRAY_SIZE(compat))
        return compat[bit];
    if (type == QCOW2_FEAT_TYPE_AUTOCLEAR && bit < ARRAY_SIZE(autoclear))
        return autoclear[bit];
    return NULL;
}

static const char *qcow2_table_feature_name(const Qcow2State *s, int type, unsigned bit)
{
    for (int i = 0; i < s->nb_features; i++)
        if (s->features[i].type == type && s->features[i].bit == bit && s->features[i].name[0])
            return s->features[i].name;
    return NULL;
}

void qcow2_feature_names(const Qcow2State *s, int type, uint64_t bits, char *out, size_t outlen)
{
    static const char *const type_names[] = { "incompatible", "compatible", "autoclear" };
    size_t used = 0;
    out[0] = '\0';
    for (unsigned bit = 0; bit < 64; bit++) {
        if (!(bits & (1ULL << bit)))
            continue;
        const char *name = qcow2_table_feature_name(s, type, bit);
        if (!name)
            name = qcow2_default_feature_name(type, bit);
        int n;
        if (name)
            n = snprintf(out + used, outlen - used, "%s%s", used ? ", " : "", name);
        else
            n = snprintf(out + used, outlen - used, "%sunknown %s feature bit %u", used ? ", " : "",
                         type_names[type], bit);
        if (n < 0 || (size_t)n >= outlen - used)
            break;
        used += (size_t)n;
    }
}

/* ---------------------------------------------------------------- geometry */

uint64_t qcow2_size_to_l1(const Qcow2State *s, uint64_t size)
{
    unsigned shift = s->cluster_bits + s->l2_bits;
    return (size >> shift) + ((size & ((1ULL << shift) - 1)) ? 1 : 0);
}

static void qcow2_set_geometry(Qcow2State *s)
{
    s->cluster_size = 1u << s->cluster_bits;
    s->cluster_mask = s->cluster_size - 1;
    s->extended_l2 = (s->incompatible_features & QCOW2_INCOMPAT_EXTL2) != 0;
    s->l2_entry_size = s->extended_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extended_l2 ? 4 : 3);
    s->l2_size = 1u << s->l2_bits;
    s->subclusters_per_cluster = s->extended_l2 ? QCOW2_EXTL2_SUBCLUSTERS : 1;
    s->subcluster_bits = s->cluster_bits - (s->extended_l2 ? 5 : 0);
    s->subcluster_size = 1u << s->subcluster_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ULL << (s->cluster_bits - 8)) - 1;
    s->compressed_offset_mask = (1ULL << s->csize_shift) - 1;
    s->refcount_bits = 1u << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX : (1ULL << s->refcount_bits) - 1;
    s->refcount_block_bits = s->cluster_bits + 3 - s->refcount_order;
    s->refcount_block_size = 1u << s->refcount_block_bits;
    s->refcount_table_size = (uint64_t)s->refcount_table_clusters << (s->cluster_bits - 3);
    s->has_data_file = (s->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) != 0;
    s->data_file_raw = (s->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) != 0;
    s->use_lazy_refcounts = (s->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    s->corrupt = (s->incompatible_features & QCOW2_INCOMPAT_CORRUPT) != 0;
    s->dirty = (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
}

/* ---------------------------------------------------------------- header extensions */

static char *qcow2_strndup_ext(const uint8_t *p, uint32_t len)
{
    size_t n = strnlen((const char *)p, len);
    char *str = malloc(n + 1);
    if (str) {
        memcpy(str, p, n);
        str[n] = '\0';
    }
    return str;
}

/* Grow *arr (elem bytes each, used in use) to hold add more. Capacity is kept at the power of two at or
 * above the count, so a header cluster packed with tiny extensions costs linear, not quadratic, time. */
static int qcow2_reserve(void **arr, size_t elem, size_t used, size_t add)
{
    size_t cap = 0, need = used + add;
    while (cap < used)
        cap = cap ? cap * 2 : 1;
    if (need <= cap)
        return 0;
    while (cap < need)
        cap = cap ? cap * 2 : 1;
    void *grown = realloc(*arr, elem * cap);
    if (!grown)
        return -ENOMEM;
    *arr = grown;
    return 0;
}

static int qcow2_parse_feature_table(Qcow2State *s, const uint8_t *p, uint32_t len, Error *err)
{
    if (len % QCOW2_FEATURE_ENTRY_LEN) {
        error_set(err, EINVAL, "feature name table length %" PRIu32 " is not a multiple of %d", len,
                  QCOW2_FEATURE_ENTRY_LEN);
        return -EINVAL;
    }
    int n = (int)(len / QCOW2_FEATURE_ENTRY_LEN);
    if (qcow2_reserve((void **)&s->features, sizeof(*s->features), (size_t)s->nb_features, (size_t)n) < 0)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        const uint8_t *e = p + (size_t)i * QCOW2_FEATURE_ENTRY_LEN;
        Qcow2Feature *dst = &s->features[s->nb_features++];
        dst->type = e[0];
        dst->bit = e[1];
        size_t nl = strnlen((const char *)e + 2, QCOW2_FEATURE_NAME_LEN);
        memcpy(dst->name, e + 2, nl);
        dst->name[nl] = '\0';
    }
    return 0;
}

static int qcow2_keep_unknown_ext(Qcow2State *s, uint32_t type, const uint8_t *p, uint32_t len)
{
    if (qcow2_reserve((void **)&s->unknown_exts, sizeof(*s->unknown_exts), (size_t)s->nb_unknown_exts, 1) < 0)
        return -ENOMEM;
    Qcow2UnknownExt *u = s->unknown_exts;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, p, len);
    u[s->nb_unknown_exts++] = (Qcow2UnknownExt){ .type = type, .len = len, .data = copy };
    return 0;
}

static int qcow2_parse_one_ext(Qcow2State *s, uint32_t type, const uint8_t *p, uint32_t len, Error *err)
{
    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT:
        if (len > QCOW2_MAX_BACKING_NAME) {
            error_set(err, EINVAL, "backing format name too long (%" PRIu32 " bytes)", len);
            return -EINVAL;
        }
        free(s->backing_format);
        s->backing_format = qcow2_strndup_ext(p, len);
        return s->backing_format ? 0 : -ENOMEM;
    case QCOW2_EXT_FEATURE_TABLE:
        return qcow2_parse_feature_table(s, p, len, err);
    case QCOW2_EXT_BITMAPS:
        if (len < 24) {
            error_set(err, EINVAL, "bitmaps header extension too short (%" PRIu32 " bytes)", len);
            return -EINVAL;
        }
        s->has_bitmaps_ext = true;
        s->nb_bitmaps = ld_be32(p);
        s->bitmap_directory_size = ld_be64(p + 8);
        s->bitmap_directory_offset = ld_be64(p + 16);
        return 0;
    case QCOW2_EXT_CRYPTO:
        s->has_crypto_ext = true;
        if (len >= 16) {
            s->crypto_header_offset = ld_be64(p);
            s->crypto_header_length = ld_be64(p + 8);
        }
        return 0;
    case QCOW2_EXT_DATA_FILE:
        if (len == 0 || len > PATH_MAX) {
            error_set(err, EINVAL, "external data file name has a bad length (%" PRIu32 ")", len);
            return -EINVAL;
        }
        free(s->data_file_name);
        s->data_file_name = qcow2_strndup_ext(p, len);
        return s->data_file_name ? 0 : -ENOMEM;
    default:
        return qcow2_keep_unknown_ext(s, type, p, len);
    }
}

/* Header extensions run from the end of the header to 'end' (the end of the first cluster, or the
 * backing file name if that comes first). */
static int qcow2_parse_extensions(Qcow2State *s, const uint8_t *buf, uint64_t start, uint64_t end, Error *err)
{
    uint64_t pos = start;
    while (pos + 8 <= end) {
        uint32_t type = ld_be32(buf + pos);
        uint32_t len = ld_be32(buf + pos + 4);
        if (type == QCOW2_EXT_END)
            return 0;
        pos += 8;
        if (len > end - pos) {
            error_set(err, EINVAL, "header extension 0x%08" PRIx32 " (%" PRIu32 " bytes) overruns the header",
                      type, len);
            return -EINVAL;
        }
        int ret = qcow2_parse_one_ext(s, type, buf + pos, len, err);
        if (ret < 0) {
            if (ret == -ENOMEM)
                error_set(err, ENOMEM, "out of memory reading header extensions");
            return ret;
        }
        pos += align_up(len, 8);
    }
    return 0;
}

/* ---------------------------------------------------------------- header */

/* Sets err as error_set does and returns -errnum: the refusal of one header check. */
static int header_error(Error *err, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int header_error(Error *err, int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(err, errnum, fmt, ap);
    va_end(ap);
    return -errnum;
}

static int qcow2_read_fixed_header(Qcow2State *s, const uint8_t *buf, size_t len, Error *err)
{
    if (len < QCOW2_V2_HEADER_LEN)
        return header_error(err, EINVAL, "file too short for a qcow2 header");
    if (ld_be32(buf) != QCOW2_MAGIC)
        return header_error(err, EINVAL, "not a qcow2 image (bad magic)");
    s->version = ld_be32(buf + 4);
    if (s->version != 2 && s->version != 3)
        return header_error(err, ENOTSUP, "unsupported qcow2 version %" PRIu32 " (only 2 and 3 are known)",
                            s->version);
    s->backing_file_offset = ld_be64(buf + 8);
    s->backing_file_size = ld_be32(buf + 16);
    s->cluster_bits = ld_be32(buf + 20);
    s->size = ld_be64(buf + 24);
    s->crypt_method = ld_be32(buf + 32);
    s->l1_size = ld_be32(buf + 36);
    s->l1_table_offset = ld_be64(buf + 40);
    s->refcount_table_offset = ld_be64(buf + 48);
    s->refcount_table_clusters = ld_be32(buf + 56);
    s->nb_snapshots = ld_be32(buf + 60);
    s->snapshots_offset = ld_be64(buf + 64);
    if (s->version == 2) {
        s->header_length = QCOW2_V2_HEADER_LEN;
        s->refcount_order = 4;
        return 0;
    }
    if (len < QCOW2_V3_MIN_HEADER_LEN)
        return header_error(err, EINVAL, "file too short for a qcow2 version 3 header");
    s->incompatible_features = ld_be64(buf + 72);
    s->compatible_features = ld_be64(buf + 80);
    s->autoclear_features = ld_be64(buf + 88);
    s->refcount_order = ld_be32(buf + 96);
    s->header_length = ld_be32(buf + 100);
    return 0;
}

static int qcow2_check_cluster_bits(Qcow2State *s, Error *err)
{
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return header_error(err, EINVAL, "invalid cluster size: cluster_bits %" PRIu32 " is outside %d..%d "
                            "(512 bytes to 2 MiB)", s->cluster_bits, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    return 0;
}

static int qcow2_check_header_length(Qcow2State *s, size_t len, Error *err)
{
    if (s->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
        return header_error(err, EINVAL, "refcount_order %" PRIu32 " is out of range (0..6)",
                            s->refcount_order);
    if (s->version == 2)
        return 0;
    if (s->header_length < QCOW2_V3_MIN_HEADER_LEN || s->header_length % 8 ||
        s->header_length > (1u << s->cluster_bits))
        return header_error(err, EINVAL, "invalid header_length %" PRIu32, s->header_length);
    if (s->header_length > len)
        return header_error(err, EINVAL, "header truncated (header_length %" PRIu32 ")", s->header_length);
    return 0;
}

static int qcow2_check_features(Qcow2State *s, Error *err)
{
    char names[512];
    int ret = qcow2_crypt_check_header(s, err);
    if (ret < 0)
        return ret;
    uint64_t unknown = s->incompatible_features & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown) {
        qcow2_feature_names(s, QCOW2_FEAT_TYPE_INCOMPAT, unknown, names, sizeof(names));
        error_set(err, ENOTSUP, "unsupported qcow2 incompatible feature(s): %s", names);
        return -ENOTSUP;
    }
    if (s->extended_l2 && s->cluster_bits < QCOW2_MIN_EXTL2_CLUSTER_BITS)
        return header_error(err, EINVAL, "extended L2 entries need clusters of at least 16 KiB (cluster_bits %"
                            PRIu32 ")", s->cluster_bits);
    bool has_type_bit = (s->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) != 0;
    if (has_type_bit != (s->compression_type != QCOW2_COMPRESSION_ZLIB))
        return header_error(err, EINVAL, "compression type bit and compression_type field (%u) disagree",
                            s->compression_type);
    if (s->compression_type > QCOW2_COMPRESSION_ZSTD)
        return header_error(err, ENOTSUP, "unsupported compression type %u", s->compression_type);
    if (s->data_file_raw && !s->has_data_file)
        return header_error(err, EINVAL, "raw external data bit set without an external data file");
    return 0;
}

/* A table of 'bytes' at 'offset' must be cluster aligned and lie inside the file. */
static int qcow2_check_table(const Qcow2State *s, const char *what, uint64_t offset, uint64_t bytes,
                             int64_t file_size, Error *err)
{
    uint64_t end;
    if (offset & s->cluster_mask)
        return header_error(err, EINVAL, "%s offset 0x%" PRIx64 " is not cluster aligned", what, offset);
    if (bytes && offset == 0)
        return header_error(err, EINVAL, "%s at offset 0 overlaps the header", what);
    if (!add_ok_u64(offset, bytes, &end) || end > (uint64_t)INT64_MAX ||
        (file_size >= 0 && end > (uint64_t)file_size))
        return header_error(err, EINVAL, "%s (0x%" PRIx64 " + %" PRIu64 " bytes) lies beyond the end of the file",
                            what, offset, bytes);
    return 0;
}

static int qcow2_check_tables(Qcow2State *s, int64_t file_size, Error *err)
{
    if (s->size > QCOW2_MAX_VIRTUAL_SIZE)
        return header_error(err, EINVAL, "virtual size %" PRIu64 " is too large", s->size);
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES)
        return header_error(err, EFBIG, "L1 table is too large (%" PRIu32 " entries, limit %d)", s->l1_size,
                            QCOW2_MAX_L1_BYTES / 8);
    uint64_t need = qcow2_size_to_l1(s, s->size);
    if (need > s->l1_size)
        return header_error(err, EINVAL, "L1 table too small for the virtual size (%" PRIu32 " entries, need %"
                            PRIu64 ")", s->l1_size, need);
    int ret = qcow2_check_table(s, "L1 table", s->l1_table_offset, (uint64_t)s->l1_size * 8, file_size, err);
    if (ret < 0)
        return ret;
    uint64_t rt_bytes = (uint64_t)s->refcount_table_clusters << s->cluster_bits;
    if (rt_bytes > QCOW2_MAX_REFTABLE_BYTES)
        return header_error(err, EFBIG, "refcount table is too large (%" PRIu32 " clusters)",
                            s->refcount_table_clusters);
    ret = qcow2_check_table(s, "refcount table", s->refcount_table_offset, rt_bytes, file_size, err);
    if (ret < 0)
        return ret;
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
        return header_error(err, EFBIG, "too many snapshots (%" PRIu32 ")", s->nb_snapshots);
    if (s->nb_snapshots) {
        ret = qcow2_check_table(s, "snapshot table", s->snapshots_offset, 40, file_size, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

static int qcow2_read_backing_name(Qcow2State *s, const uint8_t *buf, size_t len, Error *err)
{
    if (s->backing_file_offset == 0)
        return 0;
    if (s->backing_file_size > QCOW2_MAX_BACKING_NAME) {
        error_set(err, EINVAL, "backing file name too long (%" PRIu32 " bytes)", s->backing_file_size);
        return -EINVAL;
    }
    uint64_t end;
    if (!add_ok_u64(s->backing_file_offset, s->backing_file_size, &end) || end > len ||
        s->backing_file_offset < s->header_length) {
        error_set(err, EINVAL, "backing file name lies outside the header cluster");
        return -EINVAL;
    }
    if (s->backing_file_size == 0)
        return 0;
    s->backing_file = qcow2_strndup_ext(buf + s->backing_file_offset, s->backing_file_size);
    if (!s->backing_file)
        return -ENOMEM;
    return 0;
}

int qcow2_parse_header(Qcow2State *s, const uint8_t *buf, size_t len, int64_t file_size, Error *err)
{
    int ret = qcow2_read_fixed_header(s, buf, len, err);
    if (ret == 0)
        ret = qcow2_check_cluster_bits(s, err);
    if (ret == 0)
        ret = qcow2_check_header_length(s, len, err);
    if (ret < 0)
        return ret;
    if (s->version == 3 && s->header_length > QCOW2_COMPRESSION_TYPE_OFFSET)
        s->compression_type = buf[QCOW2_COMPRESSION_TYPE_OFFSET];
    uint64_t ext_end = MIN((uint64_t)len, 1ULL << s->cluster_bits);
    if (s->backing_file_offset > s->header_length && s->backing_file_offset < ext_end)
        ext_end = s->backing_file_offset;
    ret = qcow2_parse_extensions(s, buf, s->header_length, ext_end, err);
    if (ret < 0)
        return ret;
    qcow2_set_geometry(s);
    ret = qcow2_check_features(s, err);
    if (ret == 0)
        ret = qcow2_check_tables(s, file_size, err);
    if (ret == 0)
        ret = qcow2_read_backing_name(s, buf, MIN((uint64_t)len, s->cluster_size), err);
    if (ret == -ENOMEM)
        error_set(err, ENOMEM, "out of memory parsing the header");
    if (ret == 0)
        s->l1_vm_state_index = (uint32_t)qcow2_size_to_l1(s, s->size);
    return ret;
}

void qcow2_free_header(Qcow2State *s)
{
    free(s->backing_file);
    free(s->backing_format);
    free(s->features);
    for (int i = 0; i < s->nb_unknown_exts; i++)
        free(s->unknown_exts[i].data);
    free(s->unknown_exts);
    free(s->data_file_name);
    s->backing_file = s->backing_format = s->data_file_name = NULL;
    s->features = NULL;
    s->unknown_exts = NULL;
    s->nb_features = s->nb_unknown_exts = 0;
}

/* ---------------------------------------------------------------- corruption */

void qcow2_vsignal_corruption(Qcow2State *s, const char *tail, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (!__atomic_exchange_n(&s->corruption_logged, 1, __ATOMIC_RELAXED))
        log_msg("%s: corrupt qcow2 metadata: %s%s", s->node_name ? s->node_name : "qcow2", msg, tail);
    __atomic_store_n(&s->corrupt, true, __ATOMIC_RELAXED);
}

void qcow2_signal_corruption(Qcow2State *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qcow2_vsignal_corruption(s, "", fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- open */

static int qcow2_read_first_cluster(BlockNode *bs, Qcow2State *s, uint8_t **out, size_t *out_len,
                                    int64_t file_size, Error *err)
{
    uint8_t head[QCOW2_V3_MIN_HEADER_LEN];
    size_t head_len = (size_t)MIN((int64_t)sizeof(head), file_size);
    memset(head, 0, sizeof(head));
    int ret = bdrv_pread(bs->file, 0, (int64_t)head_len, head);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the qcow2 header: %s", strerror(-ret));
        return ret;
    }
    ret = qcow2_read_fixed_header(s, head, head_len, err);
    if (ret == 0)
        ret = qcow2_check_cluster_bits(s, err);
    if (ret < 0)
        return ret;
    size_t len = (size_t)MIN((int64_t)1 << s->cluster_bits, file_size);
    uint8_t *buf = calloc(1, len);
    if (!buf) {
        error_set(err, ENOMEM, "out of memory reading the header");
        return -ENOMEM;
    }
    ret = bdrv_pread(bs->file, 0, (int64_t)len, buf);
    if (ret < 0) {
        free(buf);
        error_set(err, -ret, "cannot read the qcow2 header: %s", strerror(-ret));
        return ret;
    }
    *out = buf;
    *out_len = len;
    return 0;
}

static int qcow2_check_open_mode(BlockNode *bs, Qcow2State *s, const BlockOpenOpts *opts, Error *err)
{
    if (s->corrupt) {
        if (!bs->read_only && !(opts && opts->check_repair)) {
            error_set(err, EROFS, "image is marked corrupt; it can only be opened read-only");
            return -EROFS;
        }
        log_msg("%s: warning: image is marked corrupt; opened read-only", bs->filename);
    }
    return 0;
}

/* The L2 cache: plain table slots for the working set, plus a compact tier holding evicted clean
 * tables run-length encoded. Sequentially allocated L2 tables shrink to a few dozen bytes there, so the
 * default few MiB map a whole 1 TiB image with 64 KiB clusters (128 MiB of plain L2 tables); tables
 * that do not compress are kept as plain copies within the same budget. */
static int qcow2_init_l2_cache(BlockNode *bs, Qcow2State *s, Error *err)
{
    int64_t given = bdrv_opt_size(bs, "l2-cache-size", 0);
    uint64_t budget = given > 0 ? (uint64_t)given : QCOW2_DEFAULT_L2_CACHE;
    uint64_t whole_tables = MAX(qcow2_size_to_l1(s, s->size), 1);
    uint64_t tables = budget / 4 / s->cluster_size;
    if (whole_tables * s->cluster_size <= budget)
        tables = whole_tables; /* everything fits as plain tables: no compact tier needed */
    tables = MAX(tables, (uint64_t)QCOW2_MIN_L2_CACHE_TABLES);
    tables = MIN(tables, (uint64_t)QCOW2_MAX_L2_CACHE_TABLES);
    uint64_t plain = tables * s->cluster_size;
    s->l2_cache_bytes = MAX(budget, plain);
    s->l2_cache = qcow2_cache_new(s->meta_file, s->cluster_size, (int)tables);
    if (!s->l2_cache) {
        error_set(err, ENOMEM, "out of memory creating the L2 table cache");
        return -ENOMEM;
    }
    if (tables < whole_tables && budget > plain)
        qcow2_cache_set_compact_budget(s->l2_cache, budget - plain, s->l2_entry_size);
    s->owns_caches = true;
    return 0;
}

/* Directory part of path (for resolving names relative to the image). */
static void qcow2_dirname(const char *path, char *out, size_t outlen)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    snprintf(out, outlen, "%s", dirname(tmp));
}

static int qcow2_open_data_file(BlockNode *bs, Qcow2State *s, const BlockOpenOpts *opts, Error *err)
{
    if (!s->has_data_file) {
        s->data_file = bs->file;
        return 0;
    }
    char path[PATH_MAX];
    const char *given = bs->depth == 0 ? bdrv_opt_str(bs, "data-file") : NULL;
    if (given) {
        snprintf(path, sizeof(path), "%s", given);
    } else if (s->data_file_name) {
        if (s->data_file_name[0] == '/') {
            snprintf(path, sizeof(path), "%s", s->data_file_name);
        } else {
            char dir[PATH_MAX];
            qcow2_dirname(bs->filename, dir, sizeof(dir));
            if (snprintf(path, sizeof(path), "%s/%s", dir, s->data_file_name) >= (int)sizeof(path)) {
                error_set(err, ENAMETOOLONG, "external data file path too long");
                return -ENAMETOOLONG;
            }
        }
    } else {
        error_set(err, EINVAL, "image needs an external data file but names none; use --data-file");
        return -EINVAL;
    }
    const char *why = given ? NULL : bdrv_named_file_refusal(bs, opts, path);
    if (why) {
        error_set(err, EACCES, "external data file '%s' refused: %s; use --data-file FILE or --backing-dir DIR "
                  "(or --unsafe-backing)", s->data_file_name, why);
        return -EACCES;
    }
    struct stat st;
    if (stat(path, &st) < 0) {
        int e = errno;
        error_set(err, e, "external data file '%s': %s", path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        error_set(err, EINVAL, "external data file '%s' is not a regular file", path);
        return -EINVAL;
    }
    s->data_file = bdrv_open_file(path, opts, bs->read_only, err);
    if (!s->data_file)
        return -(err->errnum ? err->errnum : EIO);
    s->owns_data_file = true;
    s->data_file_path = strdup(path);
    return 0;
}

static int qcow2_set_backing(BlockNode *bs, Qcow2State *s)
{
    if (!s->backing_file)
        return 0;
    bs->backing_name = strdup(s->backing_file);
    if (!bs->backing_name)
        return -ENOMEM;
    if (s->backing_format) {
        bs->backing_format_hint = strdup(s->backing_format);
        if (!bs->backing_format_hint)
            return -ENOMEM;
    }
    return 0;
}

/* free(p), and p no longer points at freed memory (a second close finds NULLs). */
#define FREE_CLEAR(p) do { free(p); (p) = NULL; } while (0)

static void qcow2_close(BlockNode *bs);

static int qcow2_do_open(BlockNode *bs, Qcow2State *s, const BlockOpenOpts *opts, Error *err)
{
    int64_t file_size = bdrv_getlength(bs->file);
    if (file_size < 0) {
        error_set(err, (int)-file_size, "cannot get the file size: %s", strerror((int)-file_size));
        return (int)file_size;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    int ret = qcow2_read_first_cluster(bs, s, &buf, &len, file_size, err);
    if (ret < 0)
        return ret;
    ret = qcow2_parse_header(s, buf, len, file_size, err);
    free(buf);
    if (ret == 0)
        ret = qcow2_check_open_mode(bs, s, opts, err);
    if (ret < 0)
        return ret;
    /* where metadata may point; the write path moves it as the file grows */
    s->host_end = (uint64_t)align_up(file_size, (int64_t)1 << s->cluster_bits);
    ret = qcow2_load_l1(s, s->l1_table_offset, s->l1_size, &s->l1_table);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the L1 table: %s", strerror(-ret));
        return ret;
    }
    s->l1_alloc_entries = s->l1_size;
    ret = qcow2_init_l2_cache(bs, s, err);
    if (ret == 0)
        ret = qcow2_read_snapshots(s, err);
    if (ret == 0)
        ret = qcow2_open_data_file(bs, s, opts, err);
    if (ret == 0)
        ret = qcow2_crypt_open(bs, s, opts, file_size, err);
    if (ret == 0 && qcow2_set_backing(bs, s) < 0) {
        error_set(err, ENOMEM, "out of memory");
        ret = -ENOMEM;
    }
    return ret;
}

static int qcow2_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    Qcow2State *s = bs->opaque;
    pthread_mutex_init(&s->own_lock, NULL);
    qcow2_dcache_init(&s->dcache);
    s->lock = &s->own_lock;
    s->meta_file = bs->file;
    s->read_only = bs->read_only;
    s->node_name = strdup(bs->filename ? bs->filename : "qcow2");
    Error local = { .msg = "", .errnum = 0 };
    int ret = s->node_name ? qcow2_do_open(bs, s, opts, &local) : -ENOMEM;
    if (ret < 0) {
        error_set(err, local.errnum ? local.errnum : -ret, "%s", local.msg[0] ? local.msg : strerror(-ret));
        qcow2_close(bs);
        return ret;
    }
    bs->request_alignment = s->crypt ? 512 : 1; /* encrypted: whole sectors */
    ret = qcow2_write_open(bs, opts, &local);
    if (ret < 0) {
        error_set(err, local.errnum ? local.errnum : -ret, "%s", local.msg[0] ? local.msg : strerror(-ret));
        qcow2_close(bs);
        return ret;
    }
    return 0;
}

static void qcow2_close(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    if (!s || !s->lock)
        return; /* never opened, or already closed after a failed open */
    qcow2_write_close(bs);
    if (s->is_snapshot_view)
        s->crypt = NULL; /* the parent's */
    qcow2_crypt_close(s);
    if (s->owns_caches) {
        qcow2_cache_free(s->l2_cache);
        qcow2_cache_free(s->refcount_cache);
    }
    s->l2_cache = s->refcount_cache = NULL;
    if (s->owns_data_file && s->data_file)
        bdrv_close(s->data_file);
    s->data_file = NULL;
    FREE_CLEAR(s->data_file_path);
    FREE_CLEAR(s->l1_table);
    FREE_CLEAR(s->refcount_table);
    FREE_CLEAR(s->view_snapshot_name);
    FREE_CLEAR(s->view_snapshot_id);
    qcow2_l1_slices_free(s);
    qcow2_free_snapshots(s);
    qcow2_free_header(s);
    FREE_CLEAR(s->node_name);
    if (s->lock == &s->own_lock)
        pthread_mutex_destroy(&s->own_lock);
    qcow2_dcache_destroy(&s->dcache);
    s->lock = NULL;
    if (s->parent_node)
        bdrv_close(s->parent_node);
    s->parent_node = NULL;
}

/* ---------------------------------------------------------------- info */

static int64_t qcow2_getlength(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    return (int64_t)s->size;
}

static void qcow2_info_features(Qcow2State *s, InfoList *info)
{
    char inc[512], comp[512], ac[512], all[1600];
    qcow2_feature_names(s, QCOW2_FEAT_TYPE_INCOMPAT, s->incompatible_features, inc, sizeof(inc));
    qcow2_feature_names(s, QCOW2_FEAT_TYPE_COMPAT, s->compatible_features, comp, sizeof(comp));
    qcow2_feature_names(s, QCOW2_FEAT_TYPE_AUTOCLEAR, s->autoclear_features, ac, sizeof(ac));
    snprintf(all, sizeof(all), "%s%s%s%s%s", inc, inc[0] && (comp[0] || ac[0]) ? ", " : "", comp,
             comp[0] && ac[0] ? ", " : "", ac);
    info_add_str(info, "features", "%s", all[0] ? all : "none");
}

static void qcow2_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    facts->cluster_size = ((Qcow2State *)bs->opaque)->cluster_size;
    facts->dirty = ((Qcow2State *)bs->opaque)->dirty;
    facts->encrypted = ((Qcow2State *)bs->opaque)->crypt_method != QCOW2_CRYPT_NONE;
}

/* What qemu-img shows of the header: version 2 images have neither the feature bits nor extended L2. */
static const char *qcow2_get_format_specific(BlockNode *bs, InfoList *data)
{
    Qcow2State *s = bs->opaque;
    info_add_str(data, "compat", "%s", s->version == 2 ? "0.10" : "1.1");
    info_add_str(data, "compression-type", "%s", s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    info_add_int(data, "refcount-bits", s->refcount_bits);
    qcow2_crypt_format_specific(s, data);
    if (s->version == 2)
        return "qcow2";
    info_add_bool(data, "lazy-refcounts", s->use_lazy_refcounts);
    info_add_bool(data, "corrupt", s->corrupt);
    info_add_bool(data, "extended-l2", s->extended_l2);
    if (s->has_data_file) {
        if (s->data_file_name)
            info_add_str(data, "data-file", "%s", s->data_file_name);
        info_add_bool(data, "data-file-raw", s->data_file_raw);
    }
    return "qcow2";
}

static void qcow2_get_info(BlockNode *bs, InfoList *info)
{
    Qcow2State *s = bs->opaque;
    info_add_int(info, "cluster_size", s->cluster_size);
    info_add_str(info, "compat", "%s", s->version == 2 ? "0.10" : "1.1");
    qcow2_info_features(s, info);
    info_add_str(info, "compression_type", "%s",
                 s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    info_add_int(info, "refcount_bits", s->refcount_bits);
    info_add_bool(info, "extended_l2", s->extended_l2);
    info_add_bool(info, "lazy_refcounts", s->use_lazy_refcounts);
    info_add_int(info, "snapshots", s->nb_snapshots);
    qcow2_crypt_info(s, info);
    info_add_bool(info, "dirty", s->dirty);
    info_add_bool(info, "corrupt", s->corrupt);
    if (s->has_data_file) {
        info_add_str(info, "data_file", "%s",
                     s->data_file_path ? s->data_file_path : s->data_file_name ? s->data_file_name : "");
        info_add_bool(info, "data_file_raw", s->data_file_raw);
    }
    info_add_bool(info, "bitmaps_extension", s->has_bitmaps_ext);
    if (s->has_bitmaps_ext)
        info_add_int(info, "bitmaps", s->nb_bitmaps);
    info_add_int(info, "l2_cache_size", (int64_t)s->l2_cache_bytes);
    if (s->is_snapshot_view && s->view_snapshot_name)
        info_add_str(info, "snapshot", "%s", s->view_snapshot_name);
}

/* ---------------------------------------------------------------- the driver */

/* What this node keeps in memory: the active L1 and refcount tables, the snapshot table (entries, names,
 * extra data) and the slices of snapshot L1 tables read for views, the metadata map (writable nodes),
 * the metadata caches (a snapshot view shares its parent's and counts none) and the decompressed
 * clusters. */
static int64_t qcow2_memory_used(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    pthread_mutex_lock(s->lock);
    uint64_t bytes = sizeof(*s) + (uint64_t)s->l1_alloc_entries * sizeof(uint64_t) +
                     s->refcount_table_size * sizeof(uint64_t) + qcow2_snapshots_memory(s) +
                     qcow2_l1_slices_memory(s);
    bytes += qcow2_meta_memory(s); /* the metadata map of a writable node */
    pthread_mutex_unlock(s->lock);
    if (s->owns_caches) {
        if (s->l2_cache)
            bytes += qcow2_cache_memory(s->l2_cache);
        if (s->refcount_cache)
            bytes += qcow2_cache_memory(s->refcount_cache);
    }
    bytes += qcow2_dcache_memory(&s->dcache, s->cluster_size);
    return (int64_t)MIN(bytes, (uint64_t)INT64_MAX);
}

static const BlockOptionSpec qcow2_options[] = {
    { "data-file", BDRV_OPT_STRING, BDRV_OPT_TOP_ONLY,
      "external data file of the top image (--data-file)" },
    { "l2-cache-size", BDRV_OPT_SIZE, 0, "L2 table cache of each qcow2 layer, bytes (--l2-cache-size)" },
    { NULL, 0, 0, NULL },
};

const BlockDriver bdrv_qcow2 = {
    .name = "qcow2",
    .options = qcow2_options,
    .instance_size = sizeof(Qcow2State),
    .supports_backing = true,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .read = qcow2_read,
    .block_status = qcow2_block_status,
    .getlength = qcow2_getlength,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_open = qcow2_snapshot_open,
    .vmstate_read = qcow2_vmstate_read,
    .get_info = qcow2_get_info,
    .get_facts = qcow2_get_facts,
    .get_format_specific = qcow2_get_format_specific,
    .memory_used = qcow2_memory_used,
    .write = qcow2_write,
    .write_zeroes = qcow2_write_zeroes,
    .write_compressed = qcow2_write_compressed,
    .change_backing_file = qcow2_change_backing_file,
    .make_empty = qcow2_make_empty,
    .amend = qcow2_amend,
    .discard = qcow2_discard,
    .flush = qcow2_flush,
    .truncate = qcow2_truncate,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_goto = qcow2_snapshot_goto,
    .check = qcow2_check,
    .create = qcow2_create,
    .create_options = qcow2_create_options,
    .has_zero_init = qcow2_has_zero_init,
};
