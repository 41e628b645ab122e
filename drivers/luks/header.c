/* SPDX-License-Identifier: MIT */
/*
 * header.c - the LUKS1 and LUKS2 headers and key slots.  LUKS1: the 592-byte big-endian header with its
 * eight key slots.  LUKS2: both binary header copies (at 0 and at the first copy's size), each with its
 * checksum over the header and its JSON area, the newer valid copy winning; the JSON metadata (parsed
 * with jansson) for the one crypt segment, the digest bound to it and the key slots it names.  Every field
 * is bounded before use (JSON area at most 4 MiB, PBKDF2 iterations, argon2 memory, time and threads, key
 * sizes, stripes, areas inside the file and before the payload); features this driver does not implement
 * (integrity, reencryption in progress, mandatory requirements, other KDFs, hashes and ciphers) are
 * refused by name.  Unlocking: the key slot's KDF (PBKDF2 through libcrypto, argon2i/argon2id through
 * libargon2), its area decrypted, the anti-forensic stripes merged, the result checked against the
 * digest.  Key material lives in locked memory only and is wiped after use.  It knows nothing of FUSE.
 */
#include "luks.h"
#include "util.h"

#include <argon2.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LUKS1_HDR_BYTES 592
#define LUKS1_SLOTS 8
#define LUKS1_SLOT_ACTIVE 0x00AC71F3u
#define LUKS1_SLOT_INACTIVE 0x0000DEADu
#define LUKS1_DIGEST_BYTES 20
#define LUKS2_BIN_BYTES 4096
#define LUKS2_CSUM_OFF 448
#define LUKS_SECTOR 512

/* ---------------------------------------------------------------- small helpers */

const EVP_MD *luks_md(const char *name)
{
    if (strcmp(name, "sha1") == 0)
        return OSSL(EVP_sha1)();
    if (strcmp(name, "sha256") == 0)
        return OSSL(EVP_sha256)();
    if (strcmp(name, "sha512") == 0)
        return OSSL(EVP_sha512)();
    return NULL;
}

/* A hash name from the header (NUL-padded, untrusted) into out; -ENOTSUP naming it unless sha1/256/512. */
static int take_hash(const char *what, const char *src, size_t srclen, char *out, size_t outlen, Error *err)
{
    char name[64];
    size_t n = strnlen(src, MIN(srclen, sizeof name - 1));
    memcpy(name, src, n);
    name[n] = '\0';
    if (!luks_md(name) || n >= outlen) {
        error_set(err, ENOTSUP, "LUKS %s hash '%s' is not supported (sha1, sha256 and sha512 are)", what, name);
        return -ENOTSUP;
    }
    memcpy(out, name, n + 1);
    return 0;
}

static int b64_value(int ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    return ch == '+' ? 62 : ch == '/' ? 63 : -1;
}

/* Standard base64 (padding optional) into out: its length, or -1 if invalid or longer than max. */
static long b64_decode(const char *s, uint8_t *out, size_t max)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *s && *s != '='; s++) {
        int v = b64_value((unsigned char)*s);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == max)
                return -1;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return (long)n;
}

/* ---------------------------------------------------------------- LUKS1 */

static int luks1_slot(LuksHeader *h, const uint8_t *p, int i, uint64_t file_size, Error *err)
{
    LuksSlot *s = &h->slots[i];
    uint32_t active = ld_be32(p);
    s->area_offset = (uint64_t)ld_be32(p + 40) * LUKS_SECTOR; /* an inactive slot's too, for info */
    if (active == LUKS1_SLOT_INACTIVE)
        return 0;
    if (active != LUKS1_SLOT_ACTIVE) {
        error_set(err, EINVAL, "LUKS1 key slot %d: bad state 0x%08" PRIx32, i, active);
        return -EINVAL;
    }
    s->active = true;
    s->kdf.type = LUKS_KDF_PBKDF2;
    memcpy(s->kdf.hash, h->digest_kdf.hash, sizeof s->kdf.hash);
    s->kdf.iterations = ld_be32(p + 4);
    memcpy(s->kdf.salt, p + 8, 32);
    s->kdf.salt_len = 32;
    s->stripes = ld_be32(p + 44);
    s->area_key_size = h->key_size;
    memcpy(s->area_cipher, h->cipher, sizeof s->area_cipher);
    memcpy(s->af_hash, h->digest_kdf.hash, sizeof s->af_hash);
    if (s->stripes == 0 || s->stripes > LUKS_MAX_STRIPES) {
        error_set(err, EINVAL, "LUKS1 key slot %d: %" PRIu32 " stripes (at most %d)", i, s->stripes, LUKS_MAX_STRIPES);
        return -EINVAL;
    }
    s->area_size = align_up((int64_t)s->stripes * h->key_size, LUKS_SECTOR);
    if (s->area_offset < LUKS1_HDR_BYTES || s->area_offset + s->area_size > h->payload_offset ||
        s->area_offset + s->area_size > file_size) {
        error_set(err, EINVAL, "LUKS1 key slot %d: key material at %" PRIu64 " (%" PRIu64 " bytes) lies outside "
                  "the header area", i, s->area_offset, s->area_size);
        return -EINVAL;
    }
    return 0;
}

static int luks1_parse(const uint8_t *b, uint64_t file_size, LuksHeader *h, Error *err)
{
    char name[33], mode[33];
    memcpy(name, b + 8, 32);
    name[32] = '\0';
    memcpy(mode, b + 40, 32);
    mode[32] = '\0';
    h->version = 1;
    if (snprintf(h->cipher, sizeof h->cipher, "%s-%s", name, mode) >= (int)sizeof h->cipher) {
        error_set(err, ENOTSUP, "LUKS1 cipher name too long");
        return -ENOTSUP;
    }
    int r = take_hash("header", (const char *)b + 72, 32, h->digest_kdf.hash, sizeof h->digest_kdf.hash, err);
    if (r < 0)
        return r;
    h->payload_offset = (uint64_t)ld_be32(b + 104) * LUKS_SECTOR;
    h->key_size = ld_be32(b + 108);
    h->sector_size = LUKS_SECTOR;
    if (h->key_size == 0 || h->key_size > LUKS_MAX_KEY_BYTES) {
        error_set(err, EINVAL, "LUKS1 key size %" PRIu32 " bytes (at most %d)", h->key_size, LUKS_MAX_KEY_BYTES);
        return -EINVAL;
    }
    if (h->payload_offset == 0 || h->payload_offset > file_size) {
        error_set(err, EINVAL, "LUKS1 payload offset %" PRIu64 " lies outside the file (%" PRIu64 " bytes)%s",
                  h->payload_offset, file_size, h->payload_offset ? "" : ": a detached header is not supported");
        return -EINVAL;
    }
    memcpy(h->digest, b + 112, LUKS1_DIGEST_BYTES);
    h->digest_len = LUKS1_DIGEST_BYTES;
    memcpy(h->digest_kdf.salt, b + 132, 32);
    h->digest_kdf.salt_len = 32;
    h->digest_kdf.type = LUKS_KDF_PBKDF2;
    h->digest_kdf.iterations = ld_be32(b + 164);
    memcpy(h->uuid, b + 168, 39);
    h->uuid[39] = '\0';
    h->n_slots = LUKS1_SLOTS;
    for (int i = 0; i < LUKS1_SLOTS; i++)
        if ((r = luks1_slot(h, b + 208 + 48 * i, i, file_size, err)) < 0)
            return r;
    return 0;
}

/* ---------------------------------------------------------------- LUKS2: binary headers */

static bool luks2_size_ok(uint64_t size)
{
    return size >= 16384 && size <= LUKS2_MAX_HDR_SIZE && is_pow2(size);
}

/* Reads and checks one binary header + JSON copy at off: the buffer (hdr_size bytes, malloc'd) or NULL
 * with why (a short reason) set. */
static uint8_t *luks2_copy(BlockNode *file, uint64_t file_size, uint64_t off, const char *magic,
                           const char **why)
{
    uint8_t bin[LUKS2_BIN_BYTES];
    *why = "unreadable";
    if (off + LUKS2_BIN_BYTES > file_size || bdrv_pread(file, (int64_t)off, LUKS2_BIN_BYTES, bin) < 0)
        return NULL;
    *why = "bad magic";
    if (memcmp(bin, magic, 6) != 0 || ld_be16(bin + 6) != 2)
        return NULL;
    uint64_t size = ld_be64(bin + 8);
    *why = "bad header size";
    if (!luks2_size_ok(size) || ld_be64(bin + 256) != off || off + size > file_size)
        return NULL;
    char alg[33];
    memcpy(alg, bin + 72, 32);
    alg[32] = '\0';
    const EVP_MD *md = luks_md(alg);
    *why = "unsupported checksum algorithm";
    if (!md)
        return NULL;
    uint8_t *buf = malloc(size);
    *why = "out of memory";
    if (!buf)
        return NULL;
    *why = "unreadable";
    if (bdrv_pread(file, (int64_t)off, (int64_t)size, buf) < 0) {
        free(buf);
        return NULL;
    }
    uint8_t want[64], got[EVP_MAX_MD_SIZE];
    memcpy(want, buf + LUKS2_CSUM_OFF, 64);
    memset(buf + LUKS2_CSUM_OFF, 0, 64);
    unsigned int n = 0;
    *why = "bad checksum";
    if (!OSSL(EVP_Digest)(buf, size, got, &n, md, NULL) || memcmp(got, want, n) != 0) {
        free(buf);
        return NULL;
    }
    memcpy(buf + LUKS2_CSUM_OFF, want, 64);
    return buf;
}

/* The newer of the two valid copies (malloc'd, hdr_size bytes in *size). */
static uint8_t *luks2_pick(BlockNode *file, uint64_t file_size, const uint8_t *first, LuksHeader *h, Error *err)
{
    const char *why1, *why2 = "not found", *why;
    uint8_t *a = luks2_copy(file, file_size, 0, "LUKS\xba\xbe", &why1), *b = NULL;
    uint64_t second = ld_be64(first + 8);
    if (luks2_size_ok(second))
        b = luks2_copy(file, file_size, second, "SKUL\xba\xbe", &why2);
    /* the primary is unusable: the secondary may sit at any of the sizes LUKS2 defines */
    for (uint64_t off = 16384; !a && !b && off <= LUKS2_MAX_HDR_SIZE; off *= 2) {
        if (off != second && !(b = luks2_copy(file, file_size, off, "SKUL\xba\xbe", &why)) &&
            strcmp(why, "bad magic") != 0 && strcmp(why, "unreadable") != 0)
            why2 = why;
    }
    if (!a && !b) {
        error_set(err, EINVAL, "LUKS2 header: no valid copy (primary: %s, secondary: %s)", why1, why2);
        return NULL;
    }
    snprintf(h->note, sizeof h->note, "primary %s, secondary %s", a ? "valid" : why1, b ? "valid" : why2);
    if (a && b && ld_be64(b + 16) > ld_be64(a + 16)) {
        free(a);
        return b;
    }
    if (a) {
        free(b);
        return a;
    }
    return b;
}

/* ---------------------------------------------------------------- LUKS2: JSON */

/* A decimal uint64 given as a JSON string (LUKS2 writes offsets and sizes so). */
static bool json_u64(json_t *o, const char *key, uint64_t *out)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s || !*s || strlen(s) > 20)
        return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || !mul_ok_u64(v, 10, &v) || !add_ok_u64(v, (uint64_t)(*s - '0'), &v))
            return false;
    }
    *out = v;
    return true;
}

static bool json_u32(json_t *o, const char *key, uint32_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX)
        return false;
    *out = (uint32_t)json_integer_value(v);
    return true;
}

static bool json_str(json_t *o, const char *key, char *out, size_t len)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s || strlen(s) >= len)
        return false;
    strcpy(out, s);
    return true;
}

static int bad(Error *err, const char *what)
{
    error_set(err, EINVAL, "LUKS2 metadata: %s", what);
    return -EINVAL;
}

static int luks2_kdf(json_t *k, LuksKdf *kdf, const char *who, Error *err)
{
    char type[16], salt[128];
    if (!json_str(k, "type", type, sizeof type) || !json_str(k, "salt", salt, sizeof salt))
        return bad(err, "a kdf without type or salt");
    long n = b64_decode(salt, kdf->salt, sizeof kdf->salt);
    if (n <= 0)
        return bad(err, "a kdf salt that is not base64 of at most 64 bytes");
    kdf->salt_len = (size_t)n;
    if (strcmp(type, "pbkdf2") == 0) {
        kdf->type = LUKS_KDF_PBKDF2;
        char hash[64] = "";
        json_str(k, "hash", hash, sizeof hash);
        int r = take_hash("pbkdf2", hash, sizeof hash, kdf->hash, sizeof kdf->hash, err);
        if (r < 0)
            return r;
        if (!json_u32(k, "iterations", &kdf->iterations) || kdf->iterations == 0)
            return bad(err, "a pbkdf2 kdf without iterations");
        if (kdf->iterations > LUKS_MAX_PBKDF2_ITER) {
            error_set(err, E2BIG, "%s: pbkdf2 iterations %" PRIu32 " are above the limit of %u", who,
                      kdf->iterations, LUKS_MAX_PBKDF2_ITER);
            return -E2BIG;
        }
        return 0;
    }
    if (strcmp(type, "argon2i") != 0 && strcmp(type, "argon2id") != 0) {
        error_set(err, ENOTSUP, "%s: key derivation '%s' is not supported (pbkdf2, argon2i and argon2id are)",
                  who, type);
        return -ENOTSUP;
    }
    kdf->type = strcmp(type, "argon2id") == 0 ? LUKS_KDF_ARGON2ID : LUKS_KDF_ARGON2I;
    if (!json_u32(k, "time", &kdf->time) || !json_u32(k, "memory", &kdf->memory_kib) ||
        !json_u32(k, "cpus", &kdf->cpus) || !kdf->time || !kdf->memory_kib || !kdf->cpus)
        return bad(err, "an argon2 kdf without time, memory or cpus");
    if (kdf->memory_kib > LUKS_MAX_ARGON2_KIB) {
        char sz[32];
        error_set(err, E2BIG, "%s: %s memory cost %s is above the limit of 4 GiB", who, type,
                  format_size((uint64_t)kdf->memory_kib * 1024, sz, sizeof sz));
        return -E2BIG;
    }
    if (kdf->time > LUKS_MAX_ARGON2_TIME || kdf->cpus > LUKS_MAX_ARGON2_CPUS) {
        error_set(err, E2BIG, "%s: %s time cost %" PRIu32 " or threads %" PRIu32 " above the limits (%u, %u)", who,
                  type, kdf->time, kdf->cpus, LUKS_MAX_ARGON2_TIME, LUKS_MAX_ARGON2_CPUS);
        return -E2BIG;
    }
    return 0;
}

static int luks2_slot(json_t *js, int idx, LuksHeader *h, uint64_t hdr_end, uint64_t file_size, Error *err)
{
    LuksSlot *s = &h->slots[idx];
    char type[32], who[32], why[160];
    snprintf(who, sizeof who, "key slot %d", idx);
    if (!json_str(js, "type", type, sizeof type))
        return bad(err, "a key slot without type");
    if (strcmp(type, "luks2") != 0) {
        error_set(err, ENOTSUP, "LUKS2 %s of type '%s' is not supported%s", who, type,
                  strcmp(type, "reencrypt") == 0 ? " (reencryption in progress)" : "");
        return -ENOTSUP;
    }
    json_t *area = json_object_get(js, "area"), *af = json_object_get(js, "af");
    char atype[16], aftype[16], afhash[64] = "";
    uint32_t key_size;
    if (!json_u32(js, "key_size", &key_size) || !json_is_object(area) || !json_is_object(af) ||
        !json_str(area, "type", atype, sizeof atype) || !json_u64(area, "offset", &s->area_offset) ||
        !json_u64(area, "size", &s->area_size) || !json_str(area, "encryption", s->area_cipher, sizeof s->area_cipher) ||
        !json_u32(area, "key_size", &s->area_key_size) || !json_str(af, "type", aftype, sizeof aftype) ||
        !json_u32(af, "stripes", &s->stripes) || !json_str(af, "hash", afhash, sizeof afhash)) {
        snprintf(why, sizeof why, "%s lacks a field (key_size, area, af)", who);
        return bad(err, why);
    }
    if (strcmp(atype, "raw") != 0 || strcmp(aftype, "luks1") != 0) {
        error_set(err, ENOTSUP, "LUKS2 %s: area '%s' with splitter '%s' is not supported", who, atype, aftype);
        return -ENOTSUP;
    }
    int r = take_hash("anti-forensic", afhash, sizeof afhash, s->af_hash, sizeof s->af_hash, err);
    if (r < 0)
        return r;
    if (!key_size || key_size > LUKS_MAX_KEY_BYTES || !s->area_key_size || s->area_key_size > LUKS_MAX_KEY_BYTES ||
        !s->stripes || s->stripes > LUKS_MAX_STRIPES) {
        snprintf(why, sizeof why, "%s: key size %" PRIu32 ", area key size %" PRIu32 " or %" PRIu32 " stripes out of "
                 "range", who, key_size, s->area_key_size, s->stripes);
        return bad(err, why);
    }
    if ((uint64_t)key_size * s->stripes > s->area_size || s->area_size % LUKS_SECTOR || s->area_offset < hdr_end ||
        s->area_offset > file_size || s->area_size > file_size - s->area_offset) {
        snprintf(why, sizeof why, "%s: area at %" PRIu64 " (%" PRIu64 " bytes) lies outside the key slots area or "
                 "cannot hold its key", who, s->area_offset, s->area_size);
        return bad(err, why);
    }
    if (h->key_size && h->key_size != key_size)
        return bad(err, "key slots of different key sizes");
    h->key_size = key_size;
    json_t *kdf = json_object_get(js, "kdf");
    if (!json_is_object(kdf))
        return bad(err, "a key slot without kdf");
    if ((r = luks2_kdf(kdf, &s->kdf, who, err)) < 0)
        return r;
    s->active = true;
    return 0;
}

static int luks2_segment(json_t *root, LuksHeader *h, uint64_t file_size, Error *err)
{
    json_t *segs = json_object_get(root, "segments");
    if (!json_is_object(segs) || json_object_size(segs) != 1) {
        error_set(err, ENOTSUP, "LUKS2 container with %zu segments is not supported (reencryption in progress?)",
                  json_is_object(segs) ? json_object_size(segs) : 0);
        return -ENOTSUP;
    }
    json_t *seg = json_object_get(segs, "0");
    char type[32], size[24];
    if (!json_is_object(seg) || !json_str(seg, "type", type, sizeof type))
        return bad(err, "segment 0 missing");
    if (strcmp(type, "crypt") != 0) {
        error_set(err, ENOTSUP, "LUKS2 segment of type '%s' is not supported", type);
        return -ENOTSUP;
    }
    if (json_object_get(seg, "integrity")) {
        error_set(err, ENOTSUP, "LUKS2 integrity protection (dm-integrity) is not supported");
        return -ENOTSUP;
    }
    if (!json_u64(seg, "offset", &h->payload_offset) || !json_u64(seg, "iv_tweak", &h->iv_tweak) ||
        !json_str(seg, "encryption", h->cipher, sizeof h->cipher) || !json_u32(seg, "sector_size", &h->sector_size) ||
        !json_str(seg, "size", size, sizeof size))
        return bad(err, "segment 0 lacks a field (offset, iv_tweak, encryption, sector_size, size)");
    if (h->sector_size < 512 || h->sector_size > 4096 || !is_pow2(h->sector_size))
        return bad(err, "segment sector size not 512, 1024, 2048 or 4096");
    if (strcmp(size, "dynamic") != 0 && (!json_u64(seg, "size", &h->payload_size) || !h->payload_size ||
                                         h->payload_size % h->sector_size))
        return bad(err, "segment size neither 'dynamic' nor a whole number of sectors");
    if (h->payload_offset % LUKS_SECTOR || h->payload_offset > file_size)
        return bad(err, "segment offset outside the file");
    if (h->payload_offset == 0) {
        error_set(err, ENOTSUP, "LUKS2 container with a detached header is not supported");
        return -ENOTSUP;
    }
    return 0;
}

/* The pbkdf2 digest bound to segment 0; the slots it names are the ones that may open it. */
static int luks2_digest(json_t *root, LuksHeader *h, bool *bound, Error *err)
{
    json_t *digests = json_object_get(root, "digests"), *d;
    const char *name;
    json_object_foreach(digests, name, d) {
        json_t *segs = json_object_get(d, "segments"), *v;
        size_t i;
        bool for_zero = false;
        json_array_foreach(segs, i, v)
            for_zero |= json_is_string(v) && strcmp(json_string_value(v), "0") == 0;
        if (!for_zero)
            continue;
        char type[16], dig[160];
        if (!json_str(d, "type", type, sizeof type) || strcmp(type, "pbkdf2") != 0) {
            error_set(err, ENOTSUP, "LUKS2 digest of type '%s' is not supported", json_is_object(d) ? type : "?");
            return -ENOTSUP;
        }
        int r = luks2_kdf(d, &h->digest_kdf, "digest", err);
        if (r < 0)
            return r;
        long n = json_str(d, "digest", dig, sizeof dig) ? b64_decode(dig, h->digest, sizeof h->digest) : -1;
        if (n < 16)
            return bad(err, "a digest that is not base64 of 16 to 64 bytes");
        h->digest_len = (size_t)n;
        json_array_foreach(json_object_get(d, "keyslots"), i, v) {
            const char *s = json_string_value(v);
            char *end;
            long k = s ? strtol(s, &end, 10) : -1;
            if (s && *s && !*end && k >= 0 && k < LUKS_MAX_SLOTS)
                bound[k] = true;
        }
        return 0;
    }
    return bad(err, "no digest for segment 0");
}

static int luks2_requirements(json_t *root, Error *err)
{
    json_t *req = json_object_get(json_object_get(json_object_get(root, "config"), "requirements"), "mandatory"), *v;
    size_t i;
    json_array_foreach(req, i, v) {
        const char *s = json_string_value(v);
        error_set(err, ENOTSUP, "LUKS2 requirement '%s' is not supported%s", s ? s : "?",
                  s && strstr(s, "reencrypt") ? " (reencryption in progress)" : "");
        return -ENOTSUP;
    }
    return 0;
}

static int luks2_json(const uint8_t *buf, uint64_t hdr_size, uint64_t file_size, LuksHeader *h, Error *err)
{
    const char *js = (const char *)buf + LUKS2_BIN_BYTES;
    size_t len = strnlen(js, hdr_size - LUKS2_BIN_BYTES);
    json_error_t jerr;
    json_t *root = json_loadb(js, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        error_set(err, EINVAL, "LUKS2 metadata: bad JSON at line %d: %.100s", jerr.line, jerr.text);
        return -EINVAL;
    }
    bool bound[LUKS_MAX_SLOTS] = { false };
    int r = luks2_requirements(root, err);
    if (r == 0)
        r = luks2_segment(root, h, file_size, err);
    if (r == 0)
        r = luks2_digest(root, h, bound, err);
    json_t *slots = json_object_get(root, "keyslots"), *s;
    const char *name;
    json_object_foreach(slots, name, s) {
        char *end;
        long k = strtol(name, &end, 10);
        if (r < 0)
            break;
        if (!*name || *end || k < 0 || k >= LUKS_MAX_SLOTS || !json_is_object(s))
            r = bad(err, "a key slot name outside 0..31");
        else if (bound[k] || !json_is_string(json_object_get(s, "type")) ||
                 strcmp(json_string_value(json_object_get(s, "type")), "luks2") != 0) /* reencrypt slots too */
            r = luks2_slot(s, (int)k, h, 2 * hdr_size, h->payload_offset, err);
    }
    for (int i = 0; r == 0 && i < LUKS_MAX_SLOTS; i++)
        if (h->slots[i].active)
            h->n_slots = i + 1;
    if (r == 0 && !h->key_size)
        r = bad(err, "no key slot opens segment 0");
    json_decref(root);
    return r;
}

static int luks2_parse(BlockNode *file, uint64_t file_size, const uint8_t *first, LuksHeader *h, Error *err)
{
    h->version = 2;
    uint8_t *buf = luks2_pick(file, file_size, first, h, err);
    if (!buf)
        return -EINVAL;
    memcpy(h->uuid, buf + 168, 39);
    h->uuid[39] = '\0';
    int r = luks2_json(buf, ld_be64(buf + 8), file_size, h, err);
    free(buf);
    return r;
}

int luks_header_read(BlockNode *file, uint64_t file_size, LuksHeader *h, Error *err)
{
    uint8_t b[LUKS1_HDR_BYTES];
    memset(h, 0, sizeof *h);
    int r = bdrv_read_header(file, file_size, b, sizeof b, "LUKS", err);
    if (r < 0)
        return r;
    if (memcmp(b, "LUKS\xba\xbe", 6) != 0) {
        error_set(err, EINVAL, "not a LUKS container (no LUKS magic)");
        return -EINVAL;
    }
    uint16_t version = ld_be16(b + 6);
    if (version == 1)
        r = luks1_parse(b, file_size, h, err);
    else if (version == 2)
        r = luks2_parse(file, file_size, b, h, err);
    else {
        error_set(err, ENOTSUP, "LUKS version %u is not supported", version);
        return -ENOTSUP;
    }
    if (r == 0 && h->digest_kdf.iterations > LUKS_MAX_PBKDF2_ITER) {
        error_set(err, E2BIG, "digest: pbkdf2 iterations %" PRIu32 " are above the limit of %u",
                  h->digest_kdf.iterations, LUKS_MAX_PBKDF2_ITER);
        return -E2BIG;
    }
    for (int i = 0; r == 0 && i < h->n_slots; i++) {
        const LuksSlot *s = &h->slots[i];
        if (s->active && s->kdf.iterations > LUKS_MAX_PBKDF2_ITER) {
            error_set(err, E2BIG, "key slot %d: pbkdf2 iterations %" PRIu32 " are above the limit of %u", i,
                      s->kdf.iterations, LUKS_MAX_PBKDF2_ITER);
            return -E2BIG;
        }
    }
    return r;
}

/* ---------------------------------------------------------------- unlocking */

static int kdf_run(const LuksKdf *k, const uint8_t *pass, size_t pass_len, uint8_t *out, size_t out_len)
{
    if (k->type == LUKS_KDF_PBKDF2)
        return OSSL(PKCS5_PBKDF2_HMAC)((const char *)pass, (int)pass_len, k->salt, (int)k->salt_len, (int)k->iterations,
                                 luks_md(k->hash), (int)out_len, out) ? 0 : -EIO;
    int r = argon2_hash(k->time, k->memory_kib, k->cpus, pass, pass_len, k->salt, k->salt_len, out, out_len, NULL, 0,
                        k->type == LUKS_KDF_ARGON2ID ? Argon2_id : Argon2_i, ARGON2_VERSION_13);
    return r == ARGON2_OK ? 0 : r == ARGON2_MEMORY_ALLOCATION_ERROR ? -ENOMEM : -EIO;
}

/* The anti-forensic diffusion: each digest-sized block of buf replaced by H(be32(index) || block). */
int luks_af_diffuse(uint8_t *buf, size_t len, const EVP_MD *md)
{
    size_t ds = (size_t)OSSL(EVP_MD_get_size)(md);
    EVP_MD_CTX *ctx = OSSL(EVP_MD_CTX_new)();
    uint8_t out[EVP_MAX_MD_SIZE], idx[4];
    int r = ctx ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i * ds < len; i++) {
        size_t n = MIN(ds, len - i * ds);
        st_be32(idx, (uint32_t)i);
        if (!OSSL(EVP_DigestInit_ex)(ctx, md, NULL) || !OSSL(EVP_DigestUpdate)(ctx, idx, 4) ||
            !OSSL(EVP_DigestUpdate)(ctx, buf + i * ds, n) || !OSSL(EVP_DigestFinal_ex)(ctx, out, NULL))
            r = -EIO;
        else
            memcpy(buf + i * ds, out, n);
    }
    explicit_bzero(out, sizeof out);
    OSSL(EVP_MD_CTX_free)(ctx);
    return r;
}

static int af_merge(const uint8_t *src, size_t key_len, uint32_t stripes, const char *hash, uint8_t *dst)
{
    const EVP_MD *md = luks_md(hash);
    memset(dst, 0, key_len);
    for (uint32_t i = 0; i < stripes; i++) {
        for (size_t j = 0; j < key_len; j++)
            dst[j] ^= src[(size_t)i * key_len + j];
        if (i + 1 < stripes && luks_af_diffuse(dst, key_len, md) < 0)
            return -EIO;
    }
    return 0;
}

static bool digest_matches(const LuksHeader *h, const uint8_t *mk)
{
    uint8_t d[LUKS_MAX_DIGEST];
    bool ok = kdf_run(&h->digest_kdf, mk, h->key_size, d, h->digest_len) == 0 &&
              OSSL(CRYPTO_memcmp)(d, h->digest, h->digest_len) == 0;
    explicit_bzero(d, sizeof d);
    return ok;
}

/* One slot: 1 if the passphrase opens it (mk filled), 0 if not, or a negative errno. */
static int try_slot(BlockNode *file, const LuksHeader *h, const LuksSlot *s, const uint8_t *pass, size_t pass_len,
                    uint8_t *mk, Error *err)
{
    size_t mat_len = (size_t)align_up((int64_t)h->key_size * s->stripes, LUKS_SECTOR);
    uint8_t *dk = luks_secure_alloc(LUKS_MAX_KEY_BYTES), *mat = luks_secure_alloc(mat_len);
    LuksCipher c = { 0 };
    int r = dk && mat ? 0 : -ENOMEM;
    if (r == 0 && (r = kdf_run(&s->kdf, pass, pass_len, dk, s->area_key_size)) < 0)
        error_set(err, -r, "key slot: key derivation failed%s", r == -ENOMEM ? ": out of memory" : "");
    if (r == 0 && (r = bdrv_pread(file, (int64_t)s->area_offset, (int64_t)mat_len, mat)) < 0)
        error_set(err, -r, "cannot read a key slot's area: %s", strerror(-r));
    if (r == 0 && (r = luks_cipher_init(&c, s->area_cipher, dk, s->area_key_size, LUKS_SECTOR, err)) == 0 &&
        (r = luks_cipher_run(&c, 0, mat, mat_len, false)) == 0 &&
        (r = af_merge(mat, h->key_size, s->stripes, s->af_hash, mk)) == 0)
        r = digest_matches(h, mk) ? 1 : 0;
    luks_cipher_free(&c);
    luks_secure_free(dk, LUKS_MAX_KEY_BYTES);
    luks_secure_free(mat, mat_len);
    return r;
}

int luks_unlock(BlockNode *file, const LuksHeader *h, const uint8_t *pass, size_t pass_len, int slot,
                uint8_t *mk, Error *err)
{
    if (slot >= 0 && (slot >= LUKS_MAX_SLOTS || !h->slots[slot].active)) {
        error_set(err, ENOENT, "key slot %d is not active", slot);
        return -ENOENT;
    }
    for (int i = slot >= 0 ? slot : 0; i < (slot >= 0 ? slot + 1 : h->n_slots); i++) {
        if (!h->slots[i].active)
            continue;
        int r = try_slot(file, h, &h->slots[i], pass, pass_len, mk, err);
        if (r != 0)
            return r > 0 ? i : r;
    }
    explicit_bzero(mk, h->key_size);
    if (slot >= 0)
        error_set(err, EPERM, "key slot %d does not open with the key given", slot);
    else
        error_set(err, EPERM, "no key slot opens with the key given");
    return -EPERM;
}

/* key "PREFIX/NAME" of info item (prefix "encrypt." gives "encrypt.NAME") */
static const char *qemu_key(char *buf, size_t len, const char *prefix, const char *name)
{
    snprintf(buf, len, "%s%s", prefix, name);
    return buf;
}

void luks_info_qemu(const LuksHeader *h, const char *prefix, InfoList *data)
{
    char alg[16] = "", mode[16] = "", ivgen[16] = "", ivhash[16] = "", k[64];
    sscanf(h->cipher, "%15[^-]-%15[^-]-%15[^:]:%15s", alg, mode, ivgen, ivhash);
    uint32_t bits = h->key_size * 8 / (strcmp(mode, "xts") == 0 ? 2 : 1);
    info_add_str(data, qemu_key(k, sizeof k, prefix, "cipher-alg"), "%s-%" PRIu32, alg, bits);
    info_add_str(data, qemu_key(k, sizeof k, prefix, "cipher-mode"), "%s", mode);
    info_add_str(data, qemu_key(k, sizeof k, prefix, "ivgen-alg"), "%s", ivgen);
    if (ivhash[0])
        info_add_str(data, qemu_key(k, sizeof k, prefix, "ivgen-hash-alg"), "%s", ivhash);
    info_add_str(data, qemu_key(k, sizeof k, prefix, "hash-alg"), "%s", h->digest_kdf.hash);
    info_add_str(data, qemu_key(k, sizeof k, prefix, "uuid"), "%s", h->uuid);
    for (int i = 0; i < h->n_slots; i++) {
        const LuksSlot *s = &h->slots[i];
        char name[32];
        snprintf(name, sizeof name, "slots/%d/active", i);
        info_add_bool(data, qemu_key(k, sizeof k, prefix, name), s->active);
        if (s->active && s->kdf.type == LUKS_KDF_PBKDF2) {
            snprintf(name, sizeof name, "slots/%d/iters", i);
            info_add_int(data, qemu_key(k, sizeof k, prefix, name), s->kdf.iterations);
        }
        snprintf(name, sizeof name, "slots/%d/key-offset", i);
        info_add_int(data, qemu_key(k, sizeof k, prefix, name), (int64_t)s->area_offset);
        if (s->active) {
            snprintf(name, sizeof name, "slots/%d/stripes", i);
            info_add_int(data, qemu_key(k, sizeof k, prefix, name), s->stripes);
        }
    }
    info_add_int(data, qemu_key(k, sizeof k, prefix, "payload-offset"), (int64_t)h->payload_offset);
    info_add_int(data, qemu_key(k, sizeof k, prefix, "master-key-iters"), h->digest_kdf.iterations);
}
