/* SPDX-License-Identifier: MIT */
/*
 * luks.c - the "luks" format driver: a LUKS1 or LUKS2 container over bs->file shown as its plaintext
 * payload, read and written in whole sectors (request_alignment is the sector size: 512 for LUKS1, the
 * LUKS2 segment's otherwise).  Open reads the header (header.c), takes the key the front end gave in
 * BlockOpenOpts.secret (or asks for one through opts->ask_secret), opens the key slot named by the
 * luks.key-slot option or the first that the key opens, and keeps the master key in locked memory left
 * out of core dumps, wiped at close (`imgfuse info` without a key: no key slot tried, data reads and writes
 * fail with -ENOKEY).  Nothing about the key reaches info, logs or options.  Headers and
 * key slots are never written: a writable mount changes payload sectors only.  It knows nothing of FUSE.
 */
#include "luks.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LUKS_KEY_PAGE 4096           /* the master key's locked page */
#define LUKS_PROMPT_MAX 1024         /* a passphrase typed at the prompt */
#define LUKS_BOUNCE_MAX (1 << 20)    /* bytes encrypted at a time for a write */

typedef struct BDRVLuksState {
    LuksHeader hdr;
    uint8_t *mk;                 /* master key, LUKS_KEY_PAGE bytes of locked memory */
    LuksCipher cipher;
    int64_t size;                /* payload bytes */
    int slot;                    /* the key slot that opened it, -1: none (no key, metadata only) */
} BDRVLuksState;

static const BlockOptionSpec luks_options[] = {
    { "key-slot", BDRV_OPT_INT, BDRV_OPT_TOP_ONLY, "only try key slot N (0..31; default: every active slot)" },
    { NULL, 0, 0, NULL },
};

static int luks_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 8 || memcmp(buf, "LUKS\xba\xbe", 6) != 0)
        return 0;
    return ld_be16(buf + 6) == 1 || ld_be16(buf + 6) == 2 ? 100 : 0;
}

/* The key: as given, or asked for (into locked memory *asked, freed by the caller). */
static int luks_get_secret(BlockNode *bs, const BlockOpenOpts *opts, const uint8_t **key, size_t *len,
                           uint8_t **asked, Error *err)
{
    if (opts && opts->secret) {
        *key = opts->secret;
        *len = opts->secret_len;
        return 0;
    }
    if (opts && opts->ask_secret && (*asked = luks_secure_alloc(LUKS_PROMPT_MAX))) {
        int n = opts->ask_secret(bs->filename, *asked, LUKS_PROMPT_MAX);
        if (n >= 0) {
            *key = *asked;
            *len = (size_t)n;
            return 0;
        }
    }
    error_set(err, ENOKEY, "LUKS encrypted container: a key is needed (--key-file FILE or --passphrase-fd N)");
    return -ENOKEY;
}

/* The master key (the key asked for, a key slot opened) and the sector cipher over it. */
static int luks_open_key(BlockNode *bs, BDRVLuksState *s, const BlockOpenOpts *opts, int slot, Error *err)
{
    const uint8_t *key = NULL;
    size_t key_len = 0;
    uint8_t *asked = NULL;
    int r = luks_get_secret(bs, opts, &key, &key_len, &asked, err);
    if (r < 0)
        return r;
    if (!(s->mk = luks_secure_alloc(LUKS_KEY_PAGE)))
        r = -ENOMEM;
    else
        r = luks_unlock(bs->file, &s->hdr, key, key_len, slot, s->mk, err);
    luks_secure_free(asked, LUKS_PROMPT_MAX);
    if (r < 0)
        return r;
    s->slot = r;
    return luks_cipher_init(&s->cipher, s->hdr.cipher, s->mk, s->hdr.key_size, s->hdr.sector_size, err);
}

static int luks_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    BDRVLuksState *s = bs->opaque;
    int64_t file_size;
    int r = luks_ossl_load(err);
    if (r == 0)
        r = bdrv_file_size(bs->file, &file_size, err);
    if (r < 0 || (r = luks_header_read(bs->file, (uint64_t)file_size, &s->hdr, err)) < 0)
        return r;
    int64_t slot = bdrv_opt_int(bs, "key-slot", -1);
    if (slot < -1 || slot >= LUKS_MAX_SLOTS) {
        error_set(err, EINVAL, "luks option 'key-slot': %" PRId64 " is not a key slot (0..31)", slot);
        return -EINVAL;
    }
    s->slot = -1;
    if (!luks_key_skip(opts) && (r = luks_open_key(bs, s, opts, (int)slot, err)) < 0)
        return r;
    uint64_t avail = (uint64_t)file_size - s->hdr.payload_offset;
    if (s->hdr.payload_size && s->hdr.payload_size > avail) {
        error_set(err, EINVAL, "LUKS payload (%" PRIu64 " bytes at %" PRIu64 ") passes the end of the file",
                  s->hdr.payload_size, s->hdr.payload_offset);
        return -EINVAL;
    }
    s->size = (int64_t)(s->hdr.payload_size ? s->hdr.payload_size : avail / s->hdr.sector_size * s->hdr.sector_size);
    bs->request_alignment = s->hdr.sector_size;
    return 0;
}

static void luks_close(BlockNode *bs)
{
    BDRVLuksState *s = bs->opaque;
    luks_cipher_free(&s->cipher);
    luks_secure_free(s->mk, LUKS_KEY_PAGE);
    s->mk = NULL;
}

static int64_t luks_getlength(BlockNode *bs)
{
    return ((BDRVLuksState *)bs->opaque)->size;
}

static uint64_t luks_sector(const BDRVLuksState *s, int64_t offset)
{
    return s->hdr.iv_tweak + (uint64_t)offset / 512;
}

static int luks_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    BDRVLuksState *s = bs->opaque;
    if (!s->mk)
        return -ENOKEY;
    int r = bdrv_pread(bs->file, (int64_t)s->hdr.payload_offset + offset, bytes, buf);
    if (r < 0)
        return r;
    return luks_cipher_run(&s->cipher, luks_sector(s, offset), buf, (size_t)bytes, false);
}

static int luks_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    BDRVLuksState *s = bs->opaque;
    if (!s->mk)
        return -ENOKEY;
    size_t chunk = (size_t)MIN(bytes, LUKS_BOUNCE_MAX);
    uint8_t *bounce = malloc(chunk);
    if (!bounce)
        return -ENOMEM;
    int r = 0;
    for (int64_t done = 0; r == 0 && done < bytes; done += (int64_t)chunk) {
        size_t n = (size_t)MIN((int64_t)chunk, bytes - done);
        memcpy(bounce, (const uint8_t *)buf + done, n);
        r = luks_cipher_run(&s->cipher, luks_sector(s, offset + done), bounce, n, true);
        if (r == 0)
            r = bdrv_pwrite(bs->file, (int64_t)s->hdr.payload_offset + offset + done, (int64_t)n, bounce, flags);
    }
    explicit_bzero(bounce, chunk);
    free(bounce);
    return r;
}

static const char *kdf_name(LuksKdfType t)
{
    return t == LUKS_KDF_PBKDF2 ? "pbkdf2" : t == LUKS_KDF_ARGON2I ? "argon2i" : "argon2id";
}

static void luks_get_info(BlockNode *bs, InfoList *info)
{
    BDRVLuksState *s = bs->opaque;
    const LuksHeader *h = &s->hdr;
    info_add_int(info, "luks_version", h->version);
    info_add_str(info, "cipher", "%s", h->cipher);
    info_add_int(info, "key_bits", (int64_t)h->key_size * 8);
    info_add_int(info, "payload_offset", (int64_t)h->payload_offset);
    info_add_int(info, "sector_size", h->sector_size);
    info_add_str(info, "uuid", "%s", h->uuid);
    if (h->note[0])
        info_add_str(info, "header_copies", "%s", h->note);
    if (s->mk)
        info_add_int(info, "opened_key_slot", s->slot);
    else
        info_add_str(info, "encrypted", "yes (no key given; data not readable)");
    for (int i = 0; i < h->n_slots; i++) {
        const LuksKdf *k = &h->slots[i].kdf;
        char key[32];
        if (!h->slots[i].active)
            continue;
        snprintf(key, sizeof key, "key_slot_%d", i);
        if (k->type == LUKS_KDF_PBKDF2)
            info_add_str(info, key, "pbkdf2-%s, %" PRIu32 " iterations", k->hash, k->iterations);
        else
            info_add_str(info, key, "%s, time %" PRIu32 ", memory %" PRIu32 " KiB, %" PRIu32 " threads",
                         kdf_name(k->type), k->time, k->memory_kib, k->cpus);
    }
}

static void luks_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    (void)bs;
    facts->encrypted = true;
}

/* qemu-img's "luks" format-specific data (LUKS2, which qemu 7.2 cannot open, in the same shape). */
static const char *luks_get_format_specific(BlockNode *bs, InfoList *data)
{
    luks_info_qemu(&((BDRVLuksState *)bs->opaque)->hdr, "", data);
    return "luks";
}

static bool luks_has_zero_init(BlockNode *bs)
{
    (void)bs;
    return false;
}

const BlockDriver bdrv_luks = {
    .name = "luks",
    .instance_size = sizeof(BDRVLuksState),
    .options = luks_options,
    .create = luks_create,
    .create_options = luks_create_options,
    .probe = luks_probe,
    .open = luks_open,
    .close = luks_close,
    .read = luks_read,
    .write = luks_write,
    .block_status = bdrv_block_status_all_data,
    .getlength = luks_getlength,
    .get_info = luks_get_info,
    .get_facts = luks_get_facts,
    .get_format_specific = luks_get_format_specific,
    .has_zero_init = luks_has_zero_init,
};
