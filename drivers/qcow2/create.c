/* SPDX-License-Identifier: MIT */
/*
 * create.c - making new qcow2 images (the driver's `create` slot, reached through bdrv_create).  It owns
 * the creation options (cluster_size, compat, extended_l2, refcount_bits, compression_type,
 * lazy_refcounts), their validation, and the initial layout: header with the backing format and feature
 * name extensions and the backing file name in cluster 0, then the refcount table, the refcount blocks
 * and an empty L1 table, every used cluster counted once.  Opening and writing images is elsewhere.
 * encrypt.format=luks puts a LUKS1 header (made by drivers/luks/create.c from the passphrase in
 * CreateOpts.secret, with the encrypt.* options) in the clusters after the L1 table, named by the full
 * disk encryption header extension, crypt_method 2; encrypt.format=aes (the legacy method qemu-img still
 * creates) only sets crypt_method 1: its key is the passphrase itself, nothing of it is stored.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"
#include "../luks/luks.h"

typedef struct CreateParams {
    uint32_t cluster_bits;
    uint32_t version;
    bool extended_l2;
    uint32_t refcount_order;
    uint8_t compression_type;
    bool lazy_refcounts;
    uint32_t crypt_method;      /* QCOW2_CRYPT_NONE, _AES, _LUKS */
    LuksCreateParams luks;      /* the encrypt.* options */
    bool luks_option;           /* an encrypt.* option other than format was given */
} CreateParams;

static int log2_exact(int64_t v)
{
    if (v <= 0 || !is_pow2((uint64_t)v))
        return -1;
    int b = 0;
    while ((1LL << b) < v)
        b++;
    return b;
}

/* What parse_option takes, for `imgfuse create -f qcow2 -o help`. */
const BlockOptionSpec qcow2_create_options[] = {
    { "cluster_size", BDRV_OPT_SIZE, 0, "cluster size, a power of two from 512 to 2M (default 64k)" },
    { "compat", BDRV_OPT_STRING, 0, "0.10 (version 2) or 1.1 (version 3, the default)" },
    { "extended_l2", BDRV_OPT_BOOL, 0, "subclusters: 32 per cluster (needs compat=1.1, cluster_size >= 16k)" },
    { "lazy_refcounts", BDRV_OPT_BOOL, 0, "postpone refcount updates (needs compat=1.1)" },
    { "refcount_bits", BDRV_OPT_INT, 0, "width of a refcount entry, a power of two from 1 to 64 (default 16)" },
    { "compression_type", BDRV_OPT_STRING, 0, "zlib (the default) or zstd" },
    { "encrypt.format", BDRV_OPT_STRING, 0, "luks (a LUKS1 header in the image) or aes (legacy); the key: --key-file" },
    { "encrypt.cipher-alg", BDRV_OPT_STRING, 0, "as luks's cipher-alg (default aes-256)" },
    { "encrypt.cipher-mode", BDRV_OPT_STRING, 0, "as luks's cipher-mode (default xts)" },
    { "encrypt.ivgen-alg", BDRV_OPT_STRING, 0, "as luks's ivgen-alg (default plain64)" },
    { "encrypt.ivgen-hash-alg", BDRV_OPT_STRING, 0, "as luks's ivgen-hash-alg (sha256)" },
    { "encrypt.hash-alg", BDRV_OPT_STRING, 0, "as luks's hash-alg (default sha256)" },
    { "encrypt.iter-time", BDRV_OPT_INT, 0, "as luks's iter-time (milliseconds, default 2000)" },
    { NULL, 0, 0, NULL },
};

static int parse_option(CreateParams *p, const char *key, const char *val, Error *err, const char *filename)
{
    bool b;
    if (!strcmp(key, "cluster_size")) {
        int bits = log2_exact(parse_size(val));
        if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS) {
            error_set(err, EINVAL, "%s: cluster_size must be a power of two between 512 and 2M, not '%s'",
                      filename, val);
            return -EINVAL;
        }
        p->cluster_bits = (uint32_t)bits;
    } else if (!strcmp(key, "compat")) {
        if (!strcmp(val, "0.10") || !strcmp(val, "v2"))
            p->version = 2;
        else if (!strcmp(val, "1.1") || !strcmp(val, "v3"))
            p->version = 3;
        else {
            error_set(err, EINVAL, "%s: compat must be 0.10 or 1.1, not '%s'", filename, val);
            return -EINVAL;
        }
    } else if (!strcmp(key, "extended_l2") || !strcmp(key, "lazy_refcounts")) {
        int bv = bdrv_parse_bool(val);
        if (bv < 0) {
            error_set(err, EINVAL, "%s: %s must be on or off, not '%s'", filename, key, val);
            return -EINVAL;
        }
        b = bv == 1;
        if (key[0] == 'e')
            p->extended_l2 = b;
        else
            p->lazy_refcounts = b;
    } else if (!strcmp(key, "refcount_bits")) {
        int order = log2_exact(strtoll(val, NULL, 10));
        if (order < 0 || order > QCOW2_MAX_REFCOUNT_ORDER || strspn(val, "0123456789") != strlen(val)) {
            error_set(err, EINVAL, "%s: refcount_bits must be a power of two from 1 to 64, not '%s'", filename, val);
            return -EINVAL;
        }
        p->refcount_order = (uint32_t)order;
    } else if (!strcmp(key, "encrypt.format")) {
        if (!strcmp(val, "luks") || !strcmp(val, "aes"))
            p->crypt_method = val[0] == 'l' ? QCOW2_CRYPT_LUKS : QCOW2_CRYPT_AES;
        else {
            error_set(err, EINVAL, "%s: encrypt.format must be luks or aes, not '%s'", filename, val);
            return -EINVAL;
        }
    } else if (!strncmp(key, "encrypt.", 8)) {
        Error why = { 0 };
        int r = luks_create_option(&p->luks, "encrypt.", key + 8, val, &why);
        if (r < 0) {
            error_set(err, why.errnum, "%s: %s", filename, why.msg);
            return r;
        }
        p->luks_option = true;
    } else if (!strcmp(key, "compression_type")) {
        if (!strcmp(val, "zlib"))
            p->compression_type = QCOW2_COMPRESSION_ZLIB;
        else if (!strcmp(val, "zstd"))
            p->compression_type = QCOW2_COMPRESSION_ZSTD;
        else {
            error_set(err, EINVAL, "%s: compression_type must be zlib or zstd, not '%s'", filename, val);
            return -EINVAL;
        }
    } else {
        error_set(err, EINVAL, "%s: unknown qcow2 creation option '%s'", filename, key);
        return -EINVAL;
    }
    return 0;
}

typedef struct OptionParse {
    CreateParams *p;
    Error *err;
    const char *filename;
} OptionParse;

static int parse_item(const char *key, const char *value, void *opaque)
{
    OptionParse *c = opaque;
    if (!value) {
        error_set(c->err, EINVAL, "%s: creation option '%s' needs a value (key=value)", c->filename, key);
        return -EINVAL;
    }
    return parse_option(c->p, key, value, c->err, c->filename);
}

static int parse_options(CreateParams *p, const char *options, Error *err, const char *filename)
{
    *p = (CreateParams){ .cluster_bits = 16, .version = 3, .refcount_order = 4 };
    luks_create_defaults(&p->luks);
    OptionParse c = { .p = p, .err = err, .filename = filename };
    return bdrv_create_opts_each(options, parse_item, &c);
}

static int check_params(const CreateParams *p, const CreateOpts *opts, Error *err, const char *filename)
{
    const char *bad = NULL;
    if (p->version == 2 && p->extended_l2)
        bad = "extended_l2 needs compat=1.1";
    else if (p->version == 2 && p->lazy_refcounts)
        bad = "lazy_refcounts needs compat=1.1";
    else if (p->version == 2 && p->refcount_order != 4)
        bad = "refcount_bits other than 16 need compat=1.1";
    else if (p->version == 2 && p->compression_type != QCOW2_COMPRESSION_ZLIB)
        bad = "compression_type=zstd needs compat=1.1";
    else if (p->extended_l2 && p->cluster_bits < QCOW2_MIN_EXTL2_CLUSTER_BITS)
        bad = "extended_l2 needs a cluster_size of at least 16k";
    else if (p->luks_option && p->crypt_method != QCOW2_CRYPT_LUKS)
        bad = "encrypt.* options need encrypt.format=luks";
    else if (p->crypt_method != QCOW2_CRYPT_NONE && !opts->secret)
        bad = "an encrypted image needs a passphrase (--key-file FILE or --passphrase-fd N)";
    if (bad) {
        error_set(err, EINVAL, "%s: %s", filename, bad);
        return -EINVAL;
    }
    return 0;
}

static size_t put_ext(uint8_t *buf, size_t pos, uint32_t type, const void *data, uint32_t len)
{
    st_be32(buf + pos, type);
    st_be32(buf + pos + 4, len);
    memcpy(buf + pos + 8, data, len);
    return pos + 8 + (size_t)align_up(len, 8);
}

static const struct { uint8_t type, bit; const char *name; } qcow2_feature_table[] = {
    { QCOW2_FEAT_TYPE_INCOMPAT, 0, "dirty bit" },
    { QCOW2_FEAT_TYPE_INCOMPAT, 1, "corrupt bit" },
    { QCOW2_FEAT_TYPE_INCOMPAT, 2, "external data file" },
    { QCOW2_FEAT_TYPE_INCOMPAT, 3, "compression type" },
    { QCOW2_FEAT_TYPE_INCOMPAT, 4, "extended L2 entries" },
    { QCOW2_FEAT_TYPE_COMPAT, 0, "lazy refcounts" },
    { QCOW2_FEAT_TYPE_AUTOCLEAR, 0, "bitmaps" },
    { QCOW2_FEAT_TYPE_AUTOCLEAR, 1, "raw external data" },
};

/* Header extensions and backing name after the fixed header; returns the bytes used, or 0 if they do
 * not fit in the first cluster. */
static size_t build_header_tail(uint8_t *buf, size_t hdr_len, size_t cluster_size, const CreateOpts *opts,
                                bool feature_table, const uint64_t crypt_ext[2], uint64_t *backing_offset)
{
    size_t pos = hdr_len;
    size_t fmt_len = opts->backing_format ? strlen(opts->backing_format) : 0;
    size_t name_len = opts->backing ? strlen(opts->backing) : 0;
    size_t need = pos + (fmt_len ? 8 + (size_t)align_up((int64_t)fmt_len, 8) : 0) +
                  (feature_table ? 8 + sizeof(qcow2_feature_table) / sizeof(qcow2_feature_table[0]) * QCOW2_FEATURE_ENTRY_LEN : 0) +
                  (crypt_ext ? 8 + 16 : 0) + 8 + name_len;
    if (need > cluster_size)
        return 0;
    if (crypt_ext) {
        uint8_t e[16];
        st_be64(e, crypt_ext[0]);
        st_be64(e + 8, crypt_ext[1]);
        pos = put_ext(buf, pos, QCOW2_EXT_CRYPTO, e, sizeof e);
    }
    if (fmt_len)
        pos = put_ext(buf, pos, QCOW2_EXT_BACKING_FORMAT, opts->backing_format, (uint32_t)fmt_len);
    if (feature_table) {
        uint8_t table[ARRAY_SIZE(qcow2_feature_table) * QCOW2_FEATURE_ENTRY_LEN];
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < ARRAY_SIZE(qcow2_feature_table); i++) {
            uint8_t *e = table + i * QCOW2_FEATURE_ENTRY_LEN;
            e[0] = qcow2_feature_table[i].type;
            e[1] = qcow2_feature_table[i].bit;
            memcpy(e + 2, qcow2_feature_table[i].name, strlen(qcow2_feature_table[i].name));
        }
        pos = put_ext(buf, pos, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
    }
    pos += 8; /* end of extensions: type 0, length 0 */
    *backing_offset = name_len ? pos : 0;
    memcpy(buf + pos, opts->backing ? opts->backing : "", name_len);
    return pos + name_len;
}

/* Layout: header, refcount table, refcount blocks, L1 table, each starting a cluster. */
static void plan_layout(const CreateParams *p, uint64_t l1_clusters, uint64_t *rt_clusters, uint64_t *blocks)
{
    uint64_t cs = 1ULL << p->cluster_bits;
    uint64_t per_block = (cs * 8) >> p->refcount_order;
    *rt_clusters = 1;
    *blocks = 1;
    for (;;) {
        uint64_t total = 1 + *rt_clusters + *blocks + l1_clusters;
        uint64_t b = (total + per_block - 1) / per_block;
        uint64_t r = (b * 8 + cs - 1) / cs;
        if (b == *blocks && r == *rt_clusters)
            break;
        *blocks = b;
        *rt_clusters = r;
    }
}

/* crypt: the LUKS header (crypt_len bytes) placed in whole clusters after the L1 table, or NULL. */
static int write_image(BlockNode *file, const CreateParams *p, const CreateOpts *opts, uint64_t size,
                       const uint8_t *crypt, uint64_t crypt_len, Error *err, const char *filename)
{
    Qcow2State s = { 0 };
    s.cluster_bits = p->cluster_bits;
    s.refcount_order = p->refcount_order;
    s.refcount_bits = 1u << p->refcount_order;
    s.l2_bits = p->cluster_bits - (p->extended_l2 ? 4 : 3);
    uint64_t cs = 1ULL << p->cluster_bits;
    uint64_t l1_size = qcow2_size_to_l1(&s, size);
    if (l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        error_set(err, EFBIG, "%s: virtual size too large for cluster_size %" PRIu64, filename, cs);
        return -EFBIG;
    }
    uint64_t l1_clusters = (l1_size * 8 + cs - 1) / cs, rt_clusters, blocks;
    uint64_t crypt_clusters = (crypt_len + cs - 1) / cs;
    plan_layout(p, l1_clusters + crypt_clusters, &rt_clusters, &blocks);
    uint64_t total = 1 + rt_clusters + blocks + l1_clusters + crypt_clusters;
    uint8_t *img = calloc(total, cs);
    if (!img)
        return -ENOMEM;
    s.version = p->version;
    s.size = size;
    s.l1_size = (uint32_t)l1_size;
    s.refcount_table_offset = cs;
    s.refcount_table_clusters = (uint32_t)rt_clusters;
    s.l1_table_offset = l1_clusters ? (1 + rt_clusters + blocks) * cs : 0;
    s.header_length = p->version >= 3 ? 112 : QCOW2_V2_HEADER_LEN;
    s.incompatible_features = (p->extended_l2 ? QCOW2_INCOMPAT_EXTL2 : 0) |
                              (p->compression_type != QCOW2_COMPRESSION_ZLIB ? QCOW2_INCOMPAT_COMPRESSION : 0);
    s.compatible_features = p->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0;
    s.crypt_method = p->crypt_method;
    uint64_t crypt_ext[2] = { (1 + rt_clusters + blocks + l1_clusters) * cs, crypt_len };
    const uint64_t *ext = crypt ? crypt_ext : NULL;
    if (crypt)
        memcpy(img + crypt_ext[0], crypt, crypt_len);
    uint64_t backing_offset = 0;
    size_t used = build_header_tail(img, s.header_length, cs, opts, p->version >= 3, ext, &backing_offset);
    if (!used)
        used = build_header_tail(img, s.header_length, cs, opts, false, ext, &backing_offset);
    if (!used) {
        free(img);
        error_set(err, ENAMETOOLONG, "%s: the backing file name does not fit in a %" PRIu64 "-byte cluster",
                  filename, cs);
        return -ENAMETOOLONG;
    }
    s.backing_file_offset = backing_offset;
    s.backing_file_size = opts->backing ? (uint32_t)strlen(opts->backing) : 0;
    uint8_t hdr[QCOW2_V3_MIN_HEADER_LEN];
    qcow2_header_serialize(&s, hdr);
    memcpy(img, hdr, s.version >= 3 ? QCOW2_V3_MIN_HEADER_LEN : QCOW2_V2_HEADER_LEN);
    if (s.version >= 3)
        img[QCOW2_COMPRESSION_TYPE_OFFSET] = p->compression_type;
    for (uint64_t b = 0; b < blocks; b++)
        st_be64(img + cs + b * 8, (1 + rt_clusters + b) * cs);
    uint64_t per_block = (cs * 8) >> p->refcount_order;
    for (uint64_t c = 0; c < total; c++)
        qcow2_refblock_set(&s, img + (1 + rt_clusters + c / per_block) * cs, c % per_block, 1);
    int ret = bdrv_pwrite(file, 0, (int64_t)(total * cs), img, 0);
    if (ret == 0)
        ret = bdrv_flush(file);
    free(img);
    return ret;
}

int qcow2_create(const char *filename, const CreateOpts *opts, Error *err)
{
    CreateParams p;
    int ret = parse_options(&p, opts->options, err, filename);
    if (ret == 0)
        ret = check_params(&p, opts, err, filename);
    if (ret < 0)
        return ret;
    if (opts->size < 0 || (uint64_t)opts->size > QCOW2_MAX_VIRTUAL_SIZE) {
        error_set(err, EINVAL, "%s: invalid virtual size", filename);
        return -EINVAL;
    }
    if (opts->backing && strlen(opts->backing) > QCOW2_MAX_BACKING_NAME) {
        error_set(err, ENAMETOOLONG, "%s: backing file name too long", filename);
        return -ENAMETOOLONG;
    }
    uint8_t *crypt = NULL;
    uint64_t crypt_len = 0;
    if (p.crypt_method == QCOW2_CRYPT_LUKS) {
        Error why = { 0 };
        ret = luks_create_header(&p.luks, opts->secret, opts->secret_len, &crypt, &crypt_len, &why);
        if (ret < 0) {
            error_set(err, why.errnum, "%s: %s", filename, why.msg);
            return ret;
        }
    }
    BlockNode *file = NULL;
    ret = bdrv_create_empty_file(filename, &file, err);
    if (ret < 0) {
        free(crypt);
        return ret;
    }
    uint64_t size = (uint64_t)align_up(opts->size, 512);
    ret = write_image(file, &p, opts, size, crypt, crypt_len, err, filename);
    bdrv_close(file);
    free(crypt);
    if (ret < 0 && !err->msg[0])
        error_set(err, -ret, "%s: cannot write the image: %s", filename, strerror(-ret));
    return ret;
}
