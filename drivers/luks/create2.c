/* SPDX-License-Identifier: MIT */
/*
 * create2.c - new LUKS2 headers (`imgfuse create -f luks -o version=2`), as cryptsetup lays them out by
 * default: two 16 KiB header copies (binary header and JSON area, each with its sha256 checksum, the
 * second at 16 KiB with the reversed magic), the key slots area from 32 KiB, the payload at 16 MiB.  The
 * JSON metadata (built with jansson) names one crypt segment, key slot 0 (argon2id by default, argon2i or
 * pbkdf2; the anti-forensic splitter with 4000 stripes, as LUKS1) and the PBKDF2 digest of the master key.
 * Argon2's time cost comes from iter-time, timed on this CPU at the memory cost asked for, bounded by
 * the limits the reader accepts.  Key material is handled as in create.c: locked memory, wiped.
 */
#include "luks.h"
#include "util.h"

#include <argon2.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define L2_HDR 16384u             /* one copy: binary header and JSON area */
#define L2_BIN 4096u
#define L2_AREA (2u * L2_HDR)     /* the key slots area starts after both copies */
#define L2_PAYLOAD (16u << 20)    /* cryptsetup's default data offset */
#define L2_STRIPES 4000u
#define L2_MIN_ITER 1000u
#define L2_THREADS 4u

static void b64_encode(const uint8_t *in, size_t len, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tab[v & 63] : '=';
    }
    out[o] = '\0';
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The key slot's KDF: argon2 with its time cost timed, or PBKDF2 as LUKS1; dk (key_len bytes) derived. */
static int slot_kdf(const LuksCreateParams *p, const uint8_t *pass, size_t pass_len, LuksKdf *k, uint8_t *dk,
                    size_t key_len)
{
    int r = luks_fill_random(k->salt, 32);
    k->salt_len = 32;
    if (r < 0)
        return r;
    if (p->kdf == LUKS_KDF_PBKDF2) {
        k->type = LUKS_KDF_PBKDF2;
        snprintf(k->hash, sizeof k->hash, "%s", p->hash);
        k->iterations = luks_pbkdf2_iterations(p->hash, p->iter_time_ms, key_len);
        return OSSL(PKCS5_PBKDF2_HMAC)((const char *)pass, (int)pass_len, k->salt, 32, (int)k->iterations,
                                       luks_md(p->hash), (int)key_len, dk) ? 0 : -EIO;
    }
    k->type = (LuksKdfType)p->kdf;
    k->memory_kib = p->argon2_kib;
    k->cpus = L2_THREADS;
    argon2_type t = p->kdf == LUKS_KDF_ARGON2ID ? Argon2_id : Argon2_i;
    int64_t t0 = wall_ms();
    if (argon2_hash(1, k->memory_kib, k->cpus, pass, pass_len, k->salt, 32, dk, key_len, NULL, 0, t, ARGON2_VERSION_13)
        != ARGON2_OK)
        return -ENOMEM;
    int64_t one = MAX(wall_ms() - t0, 1);
    k->time = (uint32_t)MAX(4, MIN((int64_t)LUKS_MAX_ARGON2_TIME, p->iter_time_ms / one));
    return argon2_hash(k->time, k->memory_kib, k->cpus, pass, pass_len, k->salt, 32, dk, key_len, NULL, 0, t,
                       ARGON2_VERSION_13) == ARGON2_OK ? 0 : -ENOMEM;
}

static json_t *kdf_json(const LuksKdf *k)
{
    char salt[64];
    b64_encode(k->salt, k->salt_len, salt);
    if (k->type == LUKS_KDF_PBKDF2)
        return json_pack("{s:s, s:s, s:i, s:s}", "type", "pbkdf2", "hash", k->hash, "iterations",
                         (json_int_t)k->iterations, "salt", salt);
    return json_pack("{s:s, s:i, s:i, s:i, s:s}", "type", k->type == LUKS_KDF_ARGON2ID ? "argon2id" : "argon2i",
                     "time", (json_int_t)k->time, "memory", (json_int_t)k->memory_kib, "cpus", (json_int_t)k->cpus,
                     "salt", salt);
}

/* The JSON metadata into the JSON area of both copies (text, NUL-padded): 0 or -E2BIG/-ENOMEM. */
static int put_json(const LuksCreateParams *p, const char *spec, uint32_t key_len, const LuksKdf *k, uint64_t area,
                    const uint8_t *dsalt, uint32_t diters, const uint8_t *digest, size_t dlen, uint8_t *hdr)
{
    char ds[64], dg[128], off[24], sz[24], pay[24], ks[24];
    b64_encode(dsalt, 32, ds);
    b64_encode(digest, dlen, dg);
    snprintf(off, sizeof off, "%u", L2_AREA);
    snprintf(sz, sizeof sz, "%" PRIu64, area);
    snprintf(pay, sizeof pay, "%u", L2_PAYLOAD);
    snprintf(ks, sizeof ks, "%u", L2_PAYLOAD - L2_AREA);
    json_t *root = json_pack(
        "{s:{s:{s:s, s:i, s:{s:s, s:i, s:s}, s:{s:s, s:s, s:s, s:s, s:i}, s:o}}, s:{},"
        " s:{s:{s:s, s:s, s:s, s:s, s:s, s:i}},"
        " s:{s:{s:s, s:[s], s:[s], s:s, s:i, s:s, s:s}}, s:{s:s, s:s}}",
        "keyslots", "0", "type", "luks2", "key_size", (json_int_t)key_len,
        "af", "type", "luks1", "stripes", (json_int_t)L2_STRIPES, "hash", p->hash,
        "area", "type", "raw", "offset", off, "size", sz, "encryption", spec, "key_size", (json_int_t)key_len,
        "kdf", kdf_json(k), "tokens",
        "segments", "0", "type", "crypt", "offset", pay, "size", "dynamic", "iv_tweak", "0", "encryption", spec,
        "sector_size", (json_int_t)512,
        "digests", "0", "type", "pbkdf2", "keyslots", "0", "segments", "0", "hash", p->hash,
        "iterations", (json_int_t)diters, "salt", ds, "digest", dg,
        "config", "json_size", "12288", "keyslots_size", ks);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text)
        return -ENOMEM;
    size_t n = strlen(text);
    int r = n < L2_HDR - L2_BIN ? 0 : -E2BIG;
    if (r == 0) {
        memcpy(hdr + L2_BIN, text, n);
        memcpy(hdr + L2_HDR + L2_BIN, text, n);
    }
    free(text);
    return r;
}

/* The binary header of the copy at off and its checksum over the copy. */
static int put_binary(uint8_t *hdr, uint32_t off, const char *uuid)
{
    uint8_t *b = hdr + off;
    memcpy(b, off ? "SKUL\xba\xbe" : "LUKS\xba\xbe", 6);
    st_be16(b + 6, 2);
    st_be64(b + 8, L2_HDR);
    st_be64(b + 16, 1);
    memcpy(b + 72, "sha256", 6);
    memcpy(b + 168, uuid, strlen(uuid));
    st_be64(b + 256, off);
    unsigned int n = 0;
    if (luks_fill_random(b + 104, 64) < 0 || !OSSL(EVP_Digest)(b, L2_HDR, b + 448, &n, OSSL(EVP_sha256)(), NULL))
        return -EIO;
    return 0;
}

int luks2_create_header(const LuksCreateParams *p, const uint8_t *pass, size_t pass_len, uint8_t **out,
                        uint64_t *out_len, uint64_t *payload, Error *err)
{
    char spec[64], uuid[40];
    uint32_t key_len = luks_cipher_spec(p, spec, sizeof spec);
    uint64_t area = (uint64_t)align_up((int64_t)key_len * L2_STRIPES, 4096);
    size_t dlen = (size_t)OSSL(EVP_MD_get_size)(luks_md(p->hash));
    uint8_t *hdr = calloc(1, L2_AREA + area), *mk = luks_secure_alloc(LUKS_MAX_KEY_BYTES);
    uint8_t *dk = luks_secure_alloc(LUKS_MAX_KEY_BYTES), *mat = luks_secure_alloc(area), dsalt[32], digest[64];
    LuksKdf k = { 0 };
    LuksCipher c = { 0 };
    uint32_t diters = MAX(L2_MIN_ITER, luks_pbkdf2_iterations(p->hash, p->iter_time_ms, dlen) / 8);
    int r = hdr && mk && dk && mat ? luks_fill_random(mk, key_len) : -ENOMEM;
    if (r == 0 && (r = luks_fill_random(dsalt, sizeof dsalt)) == 0 &&
        !OSSL(PKCS5_PBKDF2_HMAC)((const char *)mk, (int)key_len, dsalt, 32, (int)diters, luks_md(p->hash), (int)dlen,
                                 digest))
        r = -EIO;
    if (r == 0 && (r = slot_kdf(p, pass, pass_len, &k, dk, key_len)) < 0)
        error_set(err, -r, "key slot: key derivation failed%s", r == -ENOMEM ? ": out of memory" : "");
    if (r == 0 && (r = luks_af_split(mk, key_len, p->hash, mat)) == 0 &&
        (r = luks_cipher_init(&c, spec, dk, key_len, 512, err)) == 0 &&
        (r = luks_cipher_run(&c, 0, mat, area, true)) == 0)
        memcpy(hdr + L2_AREA, mat, area);
    luks_random_uuid(uuid);
    if (r == 0)
        r = put_json(p, spec, key_len, &k, area, dsalt, diters, digest, dlen, hdr);
    if (r == 0 && (r = put_binary(hdr, 0, uuid)) == 0)
        r = put_binary(hdr, L2_HDR, uuid);
    luks_cipher_free(&c);
    luks_secure_free(mk, LUKS_MAX_KEY_BYTES);
    luks_secure_free(dk, LUKS_MAX_KEY_BYTES);
    luks_secure_free(mat, area);
    if (r < 0) {
        free(hdr);
        error_set(err, -r, "cannot make the LUKS2 header: %s", strerror(-r));
        return r;
    }
    *out = hdr;
    *out_len = L2_AREA + area;
    *payload = L2_PAYLOAD;
    return 0;
}
