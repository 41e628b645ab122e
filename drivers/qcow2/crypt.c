/* SPDX-License-Identifier: MIT */
/*
 * crypt.c - encrypted qcow2 images: crypt_method 2 (a LUKS1 header in the clusters the full disk
 * encryption header extension points at, data sectors encrypted with the LUKS master key, IV from the
 * HOST offset of each 512-byte sector, as QEMU writes them) and crypt_method 1 (legacy AES-128-CBC, the
 * passphrase's first 16 bytes as key, plain64 IV from the GUEST offset).  It owns the open-time checks of
 * the header pointer (inside the file, clear of the header cluster, the L1 and refcount tables), the key
 * (locked memory, wiped at close; nothing of it reaches info or logs) and the two data helpers every data
 * read and write of the driver goes through (qcow2_data_pread, qcow2_data_pwrite).  The LUKS header
 * parsing, key slots and sector cipher are drivers/luks/'s; it never writes a LUKS header.  Without a key,
 * for a caller that reads no data (`imgfuse info`), it opens locked: no key slot tried, data I/O -ENOKEY.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "../luks/luks.h"

#define QCOW2_MAX_CRYPTO_HEADER (16u << 20) /* LUKS1 with 8 slots of 4000 stripes of a 512-bit key: 2 MiB */
#define QCOW2_CRYPT_KEY_PAGE 4096           /* the master key's locked page */
#define QCOW2_CRYPT_BOUNCE (1u << 20)       /* bytes encrypted at a time for a write */

struct Qcow2Crypt {
    LuksCipher cipher;
    uint8_t *key;          /* QCOW2_CRYPT_KEY_PAGE bytes of locked memory */
    bool host_iv;          /* LUKS: IVs count host sectors; AES: guest sectors */
    char cipher_name[64];  /* for info */
    uint32_t key_bits;
    int slot;              /* LUKS: the key slot that opened it */
    bool locked;           /* opened without a key (metadata only): data reads and writes fail with -ENOKEY */
    LuksHeader *hdr;       /* LUKS: the parsed header, for info (no key material in it) */
};

static int crypt_header_range(Qcow2State *s, int64_t file_size, Error *err)
{
    uint64_t off = s->crypto_header_offset, len = s->crypto_header_length, end;
    if (!add_ok_u64(off, len, &end) || len == 0 || len > QCOW2_MAX_CRYPTO_HEADER || end > (uint64_t)file_size) {
        error_set(err, EINVAL, "LUKS header (0x%" PRIx64 " + %" PRIu64 " bytes) lies outside the file or is "
                  "too large", off, len);
        return -EINVAL;
    }
    uint64_t l1_end = s->l1_table_offset + (uint64_t)s->l1_size * 8;
    uint64_t rt_end = s->refcount_table_offset + ((uint64_t)s->refcount_table_clusters << s->cluster_bits);
    const char *hit = off & s->cluster_mask ? "is not cluster aligned"
                    : off < s->cluster_size ? "overlaps the image header"
                    : (s->l1_size && off < l1_end && s->l1_table_offset < end) ? "overlaps the L1 table"
                    : (off < rt_end && s->refcount_table_offset < end) ? "overlaps the refcount table" : NULL;
    if (hit) {
        error_set(err, EINVAL, "LUKS header (0x%" PRIx64 " + %" PRIu64 " bytes) %s", off, len, hit);
        return -EINVAL;
    }
    return 0;
}

/* The LUKS1 header the extension points at, read into a memory node (*mem) and parsed, before any key is
 * asked for. */
static int crypt_read_luks(BlockNode *bs, Qcow2State *s, LuksHeader *h, BlockNode **mem, Error *err)
{
    size_t len = (size_t)s->crypto_header_length;
    uint8_t *buf = malloc(len);
    if (!buf)
        return -ENOMEM;
    int r = bdrv_pread(bs->file, (int64_t)s->crypto_header_offset, (int64_t)len, buf);
    *mem = r < 0 ? NULL : bdrv_open_memory(buf, len, true);
    free(buf);
    if (r < 0 || !*mem) {
        error_set(err, EIO, "cannot read the LUKS header");
        return r < 0 ? r : -ENOMEM;
    }
    r = luks_header_read(*mem, len, h, err);
    if (r == 0 && (h->sector_size != 512 || h->iv_tweak)) {
        error_set(err, ENOTSUP, "LUKS header with %" PRIu32 "-byte sectors is not supported in qcow2",
                  h->sector_size);
        r = -ENOTSUP;
    }
    return r;
}

/* The master key from the parsed header and the passphrase, and the cipher over it. */
static int crypt_unlock_luks(struct Qcow2Crypt *c, BlockNode *mem, const LuksHeader *h, const uint8_t *pass,
                             size_t pass_len, Error *err)
{
    int r = luks_unlock(mem, h, pass, pass_len, -1, c->key, err);
    if (r < 0)
        return r;
    c->slot = r;
    c->host_iv = true;
    snprintf(c->cipher_name, sizeof c->cipher_name, "%s", h->cipher);
    c->key_bits = h->key_size * 8;
    return luks_cipher_init(&c->cipher, h->cipher, c->key, h->key_size, 512, err);
}

static int crypt_open_aes(struct Qcow2Crypt *c, const uint8_t *pass, size_t pass_len, Error *err)
{
    memcpy(c->key, pass, MIN(pass_len, (size_t)LUKS_LEGACY_AES_KEY));
    c->slot = -1;
    c->host_iv = false;
    snprintf(c->cipher_name, sizeof c->cipher_name, "aes-cbc-plain64");
    c->key_bits = 128;
    return luks_cipher_init(&c->cipher, "aes-cbc-plain64", c->key, LUKS_LEGACY_AES_KEY, 512, err);
}

/* No key, and the caller reads no data: nothing unlocked, the cipher's name from the header (LUKS). */
static void crypt_open_locked(struct Qcow2Crypt *c, const LuksHeader *h)
{
    c->locked = true;
    c->slot = -1;
    snprintf(c->cipher_name, sizeof c->cipher_name, "%s", h ? h->cipher : "aes-cbc-plain64");
    c->key_bits = h ? h->key_size * 8 : 128;
}

int qcow2_crypt_check_header(const Qcow2State *s, Error *err)
{
    if (s->crypt_method == QCOW2_CRYPT_LUKS && !s->has_crypto_ext) {
        error_set(err, EINVAL, "LUKS encrypted qcow2 image without its encryption header extension");
        return -EINVAL;
    }
    if (s->crypt_method == QCOW2_CRYPT_LUKS && s->crypto_header_length == 0) {
        error_set(err, EINVAL, "LUKS encrypted qcow2 image whose encryption header extension is empty");
        return -EINVAL;
    }
    if (s->has_crypto_ext && s->crypt_method != QCOW2_CRYPT_LUKS) {
        error_set(err, EINVAL, "encryption header extension in an image whose crypt_method is %" PRIu32,
                  s->crypt_method);
        return -EINVAL;
    }
    if (s->crypt_method > QCOW2_CRYPT_LUKS) {
        error_set(err, ENOTSUP, "unknown encryption method %" PRIu32, s->crypt_method);
        return -ENOTSUP;
    }
    return 0;
}

int qcow2_crypt_open(BlockNode *bs, Qcow2State *s, const BlockOpenOpts *opts, int64_t file_size, Error *err)
{
    if (s->crypt_method == QCOW2_CRYPT_NONE)
        return 0;
    int r = s->crypt_method == QCOW2_CRYPT_LUKS ? crypt_header_range(s, file_size, err) : 0;
    if (r < 0)
        return r;
    if ((r = luks_ossl_load(err)) < 0)
        return r;
    LuksHeader *h = calloc(1, sizeof *h);
    struct Qcow2Crypt *c = calloc(1, sizeof *c);
    BlockNode *mem = NULL;
    const uint8_t *pass = NULL;
    size_t pass_len = 0;
    uint8_t *asked = NULL;
    const char *what = s->crypt_method == QCOW2_CRYPT_LUKS ? "encrypted qcow2 image (LUKS)"
                                                           : "encrypted qcow2 image (AES)";
    if (!h || !c || !(c->key = luks_secure_alloc(QCOW2_CRYPT_KEY_PAGE)))
        r = -ENOMEM;
    if (r == 0 && s->crypt_method == QCOW2_CRYPT_LUKS)
        r = crypt_read_luks(bs, s, h, &mem, err);
    if (r == 0 && luks_key_skip(opts))
        crypt_open_locked(c, s->crypt_method == QCOW2_CRYPT_LUKS ? h : NULL);
    else if (r == 0)
        r = luks_key_get(bs, opts, what, &pass, &pass_len, &asked, err);
    if (r == 0 && !c->locked)
        r = s->crypt_method == QCOW2_CRYPT_LUKS ? crypt_unlock_luks(c, mem, h, pass, pass_len, err)
                                                : crypt_open_aes(c, pass, pass_len, err);
    luks_secure_free(asked, LUKS_KEY_PROMPT_MAX);
    if (mem)
        bdrv_close(mem);
    if (c && s->crypt_method == QCOW2_CRYPT_LUKS) {
        c->hdr = h; /* kept for info */
        h = NULL;
    }
    free(h);
    s->crypt = c;
    if (r < 0)
        qcow2_crypt_close(s);
    return r;
}

void qcow2_crypt_close(Qcow2State *s)
{
    struct Qcow2Crypt *c = s->crypt;
    s->crypt = NULL;
    if (!c)
        return;
    luks_cipher_free(&c->cipher);
    luks_secure_free(c->key, QCOW2_CRYPT_KEY_PAGE);
    free(c->hdr);
    free(c);
}

static int crypt_run(const Qcow2State *s, uint64_t host, uint64_t guest, uint8_t *buf, uint64_t bytes, bool enc)
{
    const struct Qcow2Crypt *c = s->crypt;
    if (c->locked)
        return -ENOKEY;
    if ((host | guest | bytes) & 511)
        return -EIO;
    return luks_cipher_run(&c->cipher, (c->host_iv ? host : guest) / 512, buf, (size_t)bytes, enc);
}

/* A read that does not cover whole sectors (a vmstate read, say): the sectors around it through a bounce
 * buffer. Host and guest offsets share their place in the cluster, so the widened range stays in the
 * same (sub)clusters. */
static int crypt_pread_partial(Qcow2State *s, uint64_t host, uint64_t guest, uint64_t bytes, void *buf)
{
    uint64_t head = guest & 511, len = (head + bytes + 511) & ~(uint64_t)511;
    if ((host & 511) != head || host < head)
        return -EIO;
    uint8_t *bounce = malloc(len);
    if (!bounce)
        return -ENOMEM;
    int r = qcow2_data_pread(s, host - head, guest - head, len, bounce);
    if (r == 0)
        memcpy(buf, bounce + head, bytes);
    explicit_bzero(bounce, len);
    free(bounce);
    return r;
}

int qcow2_data_pread(Qcow2State *s, uint64_t host, uint64_t guest, uint64_t bytes, void *buf)
{
    if (s->crypt && s->crypt->locked)
        return -ENOKEY;
    if (s->crypt && ((guest | bytes) & 511))
        return crypt_pread_partial(s, host, guest, bytes, buf);
    int r = bdrv_pread(s->data_file, (int64_t)host, (int64_t)bytes, buf);
    if (r < 0 || !s->crypt)
        return r;
    return crypt_run(s, host, guest, buf, bytes, false);
}

int qcow2_data_pwrite(Qcow2State *s, uint64_t host, uint64_t guest, uint64_t bytes, const void *buf)
{
    if (!s->crypt)
        return buf ? bdrv_pwrite(s->data_file, (int64_t)host, (int64_t)bytes, buf, 0)
                   : bdrv_pwrite_zeroes(s->data_file, (int64_t)host, (int64_t)bytes, 0);
    size_t chunk = (size_t)MIN(bytes, (uint64_t)QCOW2_CRYPT_BOUNCE);
    uint8_t *bounce = malloc(chunk ? chunk : 1);
    if (!bounce)
        return -ENOMEM;
    int r = 0;
    for (uint64_t done = 0; r == 0 && done < bytes; done += chunk) {
        size_t n = (size_t)MIN((uint64_t)chunk, bytes - done);
        if (buf)
            memcpy(bounce, (const uint8_t *)buf + done, n);
        else
            memset(bounce, 0, n);
        r = crypt_run(s, host + done, guest + done, bounce, n, true);
        if (r == 0)
            r = bdrv_pwrite(s->data_file, (int64_t)(host + done), (int64_t)n, bounce, 0);
    }
    explicit_bzero(bounce, chunk);
    free(bounce);
    return r;
}

void qcow2_crypt_info(const Qcow2State *s, InfoList *info)
{
    const struct Qcow2Crypt *c = s->crypt;
    info_add_str(info, "encryption", "%s", s->crypt_method == QCOW2_CRYPT_LUKS ? "luks"
                                         : s->crypt_method == QCOW2_CRYPT_AES ? "aes" : "none");
    if (!c)
        return;
    info_add_str(info, "encryption_cipher", "%s", c->cipher_name);
    info_add_int(info, "encryption_key_bits", c->key_bits);
    if (c->locked)
        info_add_str(info, "encrypted", "yes (no key given; data not readable)");
    else if (c->slot >= 0)
        info_add_int(info, "opened_key_slot", c->slot);
}

void qcow2_crypt_format_specific(const Qcow2State *s, InfoList *data)
{
    const struct Qcow2Crypt *c = s->crypt;
    if (s->crypt_method == QCOW2_CRYPT_AES)
        info_add_str(data, "encrypt.format", "aes");
    if (s->crypt_method != QCOW2_CRYPT_LUKS || !c || !c->hdr)
        return;
    info_add_str(data, "encrypt.format", "luks");
    luks_info_qemu(c->hdr, "encrypt.", data);
}
