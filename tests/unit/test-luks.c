/* SPDX-License-Identifier: MIT */
/*
 * test-luks.c - unit tests of the LUKS driver on containers built byte by byte in memory: a tiny LUKS1
 * container (one stripe, 1000 PBKDF2 iterations) that opens with its key, reads its plaintext and refuses a
 * wrong key or none by their exact lines; every LUKS1 header refusal; LUKS2 headers (both copies with
 * their sha256 checksums) around hostile or unsupported JSON metadata, each refused by its exact line:
 * argon2 memory of a TiB, time and threads, pbkdf2 iterations, integrity, reencryption, requirements,
 * several segments, sector sizes, key slot areas outside the file, deep nesting, broken checksums.
 * Headers create.c makes (aes, serpent, twofish) open with their passphrase only and carry data.
 */
#include "block.h"
#include "tap.h"
#include "util.h"
#include "../../drivers/luks/luks.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAYLOAD 4096u
#define IMG_LEN (PAYLOAD + 4096u)
#define L2_HDR 16384u
#define L2_LEN (2 * L2_HDR + 8192u + 4096u)

static const uint8_t mk[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                                24, 25, 26, 27, 28, 29, 30, 31, 32 };

static void crypt_sectors(const char *spec, const uint8_t *key, size_t klen, uint8_t *buf, size_t len)
{
    LuksCipher c;
    Error err = { .errnum = 0 };
    if (luks_cipher_init(&c, spec, key, klen, 512, &err) == 0)
        luks_cipher_run(&c, 0, buf, len, true);
    luks_cipher_free(&c);
}

/* LUKS1, aes-xts-plain64 with a 256-bit key, sha256, key slot 0 with one stripe at 1024 opened by "fuzz";
 * the payload (at 4096, one 4 KiB page) reads as bytes 'P'. */
static uint8_t *make_luks1(void)
{
    uint8_t *img = calloc(1, IMG_LEN), dk[32];
    memcpy(img, "LUKS\xba\xbe", 6);
    st_be16(img + 6, 1);
    strcpy((char *)img + 8, "aes");
    strcpy((char *)img + 40, "xts-plain64");
    strcpy((char *)img + 72, "sha256");
    st_be32(img + 104, PAYLOAD / 512);
    st_be32(img + 108, 32);
    memset(img + 132, 0x33, 32);
    st_be32(img + 164, 1000);
    PKCS5_PBKDF2_HMAC((const char *)mk, 32, img + 132, 32, 1000, EVP_sha256(), 20, img + 112);
    strcpy((char *)img + 168, "12345678-aaaa-bbbb-cccc-1234567890ab");
    for (int i = 0; i < 8; i++)
        st_be32(img + 208 + 48 * i, 0xDEAD);
    uint8_t *s = img + 208;
    st_be32(s, 0x00AC71F3);
    st_be32(s + 4, 1000);
    memset(s + 8, 0x44, 32);
    st_be32(s + 40, 2);
    st_be32(s + 44, 1);
    PKCS5_PBKDF2_HMAC("fuzz", 4, s + 8, 32, 1000, EVP_sha256(), 32, dk);
    memcpy(img + 1024, mk, 32);
    crypt_sectors("aes-xts-plain64", dk, 32, img + 1024, 512);
    memset(img + PAYLOAD, 'P', 4096);
    crypt_sectors("aes-xts-plain64", mk, 32, img + PAYLOAD, 4096);
    return img;
}

static BlockNode *open_key(const uint8_t *img, size_t len, const char *key, Error *err)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    if (key) {
        o.secret = (const uint8_t *)key;
        o.secret_len = strlen(key);
    }
    memset(err, 0, sizeof *err);
    BlockNode *mem = bdrv_open_memory(img, len, true);
    return mem ? bdrv_open_on_node(mem, "luks", &o, err) : NULL;
}

static void test_luks1_opens(void)
{
    uint8_t *img = make_luks1(), buf[4096];
    Error err;
    BlockNode *bs = open_key(img, IMG_LEN, "fuzz", &err);
    ok(bs != NULL, "a LUKS1 container opens with its key: %s", err.msg);
    if (bs) {
        is_int(bdrv_getlength(bs), 4096, "its payload is the file less the header");
        ok(bdrv_pread(bs, 0, 4096, buf) == 0 && buf[0] == 'P' && buf[4095] == 'P', "and reads as its plaintext");
        InfoList info = { 0 };
        bdrv_get_info(bs, &info);
        bool leak = false;
        for (int i = 0; i < info.n; i++)
            leak |= info.items[i].str && (strstr(info.items[i].str, "fuzz") || memmem(info.items[i].str,
                                           strlen(info.items[i].str), mk, 4));
        ok(info.n > 0 && !leak, "info tells neither key nor passphrase");
        info_free(&info);
        bdrv_close(bs);
    }
    bs = open_key(img, IMG_LEN, "wrong", &err);
    ok(!bs && err.errnum == EPERM && strcmp(err.msg, "<memory>: no key slot opens with the key given") == 0,
       "a wrong key: %s", err.msg);
    bs = open_key(img, IMG_LEN, NULL, &err);
    ok(!bs && err.errnum == ENOKEY && strstr(err.msg, "a key is needed"), "no key: %s", err.msg);
    free(img);
}

static void luks1_refused(const char *what, void (*patch)(uint8_t *img), const char *reason)
{
    uint8_t *img = make_luks1();
    patch(img);
    Error err;
    BlockNode *bs = open_key(img, IMG_LEN, "fuzz", &err);
    char want[256];
    snprintf(want, sizeof want, "<memory>: %s", reason);
    ok(!bs && strcmp(err.msg, want) == 0, "LUKS1 %s refused: %s", what, err.msg);
    bdrv_close(bs);
    free(img);
}

static void p_key0(uint8_t *i) { st_be32(i + 108, 0); }
static void p_key65(uint8_t *i) { st_be32(i + 108, 65); }
static void p_stripes(uint8_t *i) { st_be32(i + 208 + 44, 4001); }
static void p_area(uint8_t *i) { st_be32(i + 208 + 40, 8); }
static void p_payload0(uint8_t *i) { st_be32(i + 104, 0); }
static void p_payload_far(uint8_t *i) { st_be32(i + 104, 0xffffffffu); }
static void p_state(uint8_t *i) { st_be32(i + 208 + 48, 0x12345678); }
static void p_hash(uint8_t *i) { strcpy((char *)i + 72, "md5"); }
static void p_iter(uint8_t *i) { st_be32(i + 208 + 4, 4000000000u); }
static void p_digest_iter(uint8_t *i) { st_be32(i + 164, 30000000u); }
static void p_cipher(uint8_t *i) { strcpy((char *)i + 8, "cast5"); }
static void p_mode(uint8_t *i) { strcpy((char *)i + 40, "cbc-benbi"); }
static void p_version(uint8_t *i) { st_be16(i + 6, 3); }

static void test_luks1_refusals(void)
{
    luks1_refused("key size 0", p_key0, "LUKS1 key size 0 bytes (at most 64)");
    luks1_refused("key size 65", p_key65, "LUKS1 key size 65 bytes (at most 64)");
    luks1_refused("4001 stripes", p_stripes, "LUKS1 key slot 0: 4001 stripes (at most 4000)");
    luks1_refused("key material past the payload", p_area,
                  "LUKS1 key slot 0: key material at 4096 (512 bytes) lies outside the header area");
    luks1_refused("a detached header", p_payload0,
                  "LUKS1 payload offset 0 lies outside the file (8192 bytes): a detached header is not supported");
    luks1_refused("a payload past the end", p_payload_far,
                  "LUKS1 payload offset 2199023255040 lies outside the file (8192 bytes)");
    luks1_refused("a bad slot state", p_state, "LUKS1 key slot 1: bad state 0x12345678");
    luks1_refused("hash md5", p_hash, "LUKS header hash 'md5' is not supported (sha1, sha256 and sha512 are)");
    luks1_refused("4e9 iterations", p_iter, "key slot 0: pbkdf2 iterations 4000000000 are above the limit of 20000000");
    luks1_refused("3e7 digest iterations", p_digest_iter,
                  "digest: pbkdf2 iterations 30000000 are above the limit of 20000000");
    luks1_refused("cast5", p_cipher, "LUKS cipher 'cast5-xts-plain64' is not supported (aes, serpent and twofish "
                  "in xts-plain64, cbc-essiv:sha256 and cbc-plain64 are)");
    luks1_refused("benbi", p_mode, "LUKS cipher 'aes-cbc-benbi' is not supported (aes, serpent and twofish in "
                  "xts-plain64, cbc-essiv:sha256 and cbc-plain64 are)");
    luks1_refused("version 3", p_version, "LUKS version 3 is not supported");
}

/* ---------------------------------------------------------------- LUKS2 */

static void l2_copy(uint8_t *img, uint64_t off, const char *magic, const char *json)
{
    uint8_t *h = img + off;
    memcpy(h, magic, 6);
    st_be16(h + 6, 2);
    st_be64(h + 8, L2_HDR);
    st_be64(h + 16, 1);
    strcpy((char *)h + 72, "sha256");
    st_be64(h + 256, off);
    memcpy(h + 4096, json, strlen(json));
    unsigned int n;
    EVP_Digest(h, L2_HDR, h + 448, &n, EVP_sha256(), NULL);
}

/* A LUKS2 container around json (both copies); the key slots area from 32768, payload at 40960. */
static uint8_t *make_luks2(const char *json)
{
    uint8_t *img = calloc(1, L2_LEN);
    if (strlen(json) < L2_HDR - 4096) {
        l2_copy(img, 0, "LUKS\xba\xbe", json);
        l2_copy(img, L2_HDR, "SKUL\xba\xbe", json);
    }
    return img;
}

#define SLOT(kdf) "{\"type\":\"luks2\",\"key_size\":32,\"af\":{\"type\":\"luks1\",\"stripes\":1,\"hash\":\"sha256\"}," \
    "\"area\":{\"type\":\"raw\",\"offset\":\"32768\",\"size\":\"4096\",\"encryption\":\"aes-xts-plain64\"," \
    "\"key_size\":32},\"kdf\":" kdf "}"
#define PBKDF2 "{\"type\":\"pbkdf2\",\"hash\":\"sha256\",\"iterations\":1000,\"salt\":\"AAAA\"}"
#define SEG(extra) "{\"type\":\"crypt\",\"offset\":\"40960\",\"size\":\"dynamic\",\"iv_tweak\":\"0\"," \
    "\"encryption\":\"aes-xts-plain64\",\"sector_size\":512" extra "}"
#define DIGEST "{\"type\":\"pbkdf2\",\"keyslots\":[\"0\"],\"segments\":[\"0\"],\"hash\":\"sha256\"," \
    "\"iterations\":1000,\"salt\":\"AAAA\",\"digest\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"}"
#define META(slots, segs, config) "{\"keyslots\":{" slots "},\"tokens\":{},\"segments\":{" segs "}," \
    "\"digests\":{\"0\":" DIGEST "},\"config\":{\"json_size\":\"12288\",\"keyslots_size\":\"8192\"" config "}}"

static void luks2_refused(const char *what, const char *json, int errnum, const char *reason)
{
    uint8_t *img = make_luks2(json);
    Error err;
    BlockNode *bs = open_key(img, L2_LEN, "fuzz", &err);
    char want[320];
    snprintf(want, sizeof want, "<memory>: %s", reason);
    ok(!bs && err.errnum == errnum && strcmp(err.msg, want) == 0, "LUKS2 %s refused: %s", what, err.msg);
    bdrv_close(bs);
    free(img);
}

static void test_luks2_refusals(void)
{
    /* the well-formed one gets as far as the key: the digest (all zeros) does not match */
    luks2_refused("with a digest no key matches", META("\"0\":" SLOT(PBKDF2), "\"0\":" SEG(""), ""), EPERM,
                  "no key slot opens with the key given");
    luks2_refused("argon2id memory of 1 TiB",
                  META("\"0\":" SLOT("{\"type\":\"argon2id\",\"time\":4,\"memory\":1073741824,\"cpus\":1,\"salt\":\"AAAA\"}"),
                       "\"0\":" SEG(""), ""), E2BIG, "key slot 0: argon2id memory cost 1 TiB is above the limit of 4 GiB");
    luks2_refused("argon2i time 100000",
                  META("\"0\":" SLOT("{\"type\":\"argon2i\",\"time\":100000,\"memory\":1024,\"cpus\":1,\"salt\":\"AAAA\"}"),
                       "\"0\":" SEG(""), ""), E2BIG,
                  "key slot 0: argon2i time cost 100000 or threads 1 above the limits (1000, 64)");
    luks2_refused("pbkdf2 iterations of 4e9",
                  META("\"0\":" SLOT("{\"type\":\"pbkdf2\",\"hash\":\"sha1\",\"iterations\":4000000000,\"salt\":\"AAAA\"}"),
                       "\"0\":" SEG(""), ""), E2BIG, "key slot 0: pbkdf2 iterations 4000000000 are above the limit of 20000000");
    luks2_refused("scrypt", META("\"0\":" SLOT("{\"type\":\"scrypt\",\"salt\":\"AAAA\"}"), "\"0\":" SEG(""), ""),
                  ENOTSUP, "key slot 0: key derivation 'scrypt' is not supported (pbkdf2, argon2i and argon2id are)");
    luks2_refused("integrity", META("\"0\":" SLOT(PBKDF2), "\"0\":" SEG(",\"integrity\":{\"type\":\"hmac(sha256)\"}"), ""),
                  ENOTSUP, "LUKS2 integrity protection (dm-integrity) is not supported");
    luks2_refused("a reencrypt key slot", META("\"0\":" SLOT(PBKDF2) ",\"1\":{\"type\":\"reencrypt\"}", "\"0\":" SEG(""), ""),
                  ENOTSUP, "LUKS2 key slot 1 of type 'reencrypt' is not supported (reencryption in progress)");
    luks2_refused("a mandatory requirement",
                  META("\"0\":" SLOT(PBKDF2), "\"0\":" SEG(""), ",\"requirements\":{\"mandatory\":[\"online-reencrypt-v2\"]}"),
                  ENOTSUP, "LUKS2 requirement 'online-reencrypt-v2' is not supported (reencryption in progress)");
    luks2_refused("two segments", META("\"0\":" SLOT(PBKDF2), "\"0\":" SEG("") ",\"1\":" SEG(""), ""), ENOTSUP,
                  "LUKS2 container with 2 segments is not supported (reencryption in progress?)");
    luks2_refused("sector size 8192",
                  META("\"0\":" SLOT(PBKDF2), "\"0\":{\"type\":\"crypt\",\"offset\":\"40960\",\"size\":\"dynamic\","
                       "\"iv_tweak\":\"0\",\"encryption\":\"aes-xts-plain64\",\"sector_size\":8192}", ""),
                  EINVAL, "LUKS2 metadata: segment sector size not 512, 1024, 2048 or 4096");
    luks2_refused("a key slot area in the header",
                  META("\"0\":{\"type\":\"luks2\",\"key_size\":32,\"af\":{\"type\":\"luks1\",\"stripes\":1,\"hash\":\"sha256\"},"
                       "\"area\":{\"type\":\"raw\",\"offset\":\"4096\",\"size\":\"4096\",\"encryption\":\"aes-xts-plain64\","
                       "\"key_size\":32},\"kdf\":" PBKDF2 "}", "\"0\":" SEG(""), ""),
                  EINVAL, "LUKS2 metadata: key slot 0: area at 4096 (4096 bytes) lies outside the key slots area or "
                  "cannot hold its key");
    luks2_refused("an area of 2^64 - 1 bytes",
                  META("\"0\":{\"type\":\"luks2\",\"key_size\":32,\"af\":{\"type\":\"luks1\",\"stripes\":4000,\"hash\":\"sha256\"},"
                       "\"area\":{\"type\":\"raw\",\"offset\":\"32768\",\"size\":\"18446744073709551615\",\"encryption\":"
                       "\"aes-xts-plain64\",\"key_size\":32},\"kdf\":" PBKDF2 "}", "\"0\":" SEG(""), ""),
                  EINVAL, "LUKS2 metadata: key slot 0: area at 32768 (18446744073709551615 bytes) lies outside the key "
                  "slots area or cannot hold its key");
    luks2_refused("an offset of 2^64", META("\"0\":" SLOT(PBKDF2), "\"0\":{\"type\":\"crypt\",\"offset\":\"18446744073709551616\","
                  "\"size\":\"dynamic\",\"iv_tweak\":\"0\",\"encryption\":\"aes-xts-plain64\",\"sector_size\":512}", ""),
                  EINVAL, "LUKS2 metadata: segment 0 lacks a field (offset, iv_tweak, encryption, sector_size, size)");
    char *deep = malloc(12001);
    memset(deep, '[', 6000);
    memset(deep + 6000, ']', 6000);
    deep[12000] = '\0';
    luks2_refused("JSON nested 6000 deep", deep, EINVAL,
                  "LUKS2 metadata: bad JSON at line 1: maximum parsing depth reached near '['");
    free(deep);
    /* checksums: the primary broken, the secondary is used; both broken: refused */
    uint8_t *img = make_luks2(META("\"0\":" SLOT(PBKDF2), "\"0\":" SEG(""), ""));
    img[448] ^= 1;
    Error err;
    BlockNode *bs = open_key(img, L2_LEN, "fuzz", &err);
    ok(!bs && strcmp(err.msg, "<memory>: no key slot opens with the key given") == 0,
       "a broken primary checksum: the secondary copy is read: %s", err.msg);
    img[L2_HDR + 448] ^= 1;
    bs = open_key(img, L2_LEN, "fuzz", &err);
    ok(!bs && strcmp(err.msg, "<memory>: LUKS2 header: no valid copy (primary: bad checksum, secondary: bad checksum)")
       == 0, "both checksums broken: %s", err.msg);
    st_be64(img + 8, 8u << 20);
    bs = open_key(img, L2_LEN, "fuzz", &err);
    ok(!bs && strcmp(err.msg, "<memory>: LUKS2 header: no valid copy (primary: bad header size, secondary: bad checksum)")
       == 0, "a header size of 8 MiB: %s", err.msg);
    free(img);
}

/* create.c: a header luks_create_header made, with a 4 KiB payload after it, opens with its passphrase
 * only, in each cipher family, and carries data written through it. */
static void created_opens(const char *opts)
{
    LuksCreateParams p;
    luks_create_defaults(&p);
    p.iter_time_ms = 1;
    Error err = { .errnum = 0 };
    char buf[64];
    snprintf(buf, sizeof buf, "%s", opts);
    for (char *kv = strtok(buf, ","); kv; kv = strtok(NULL, ",")) {
        char *eq = strchr(kv, '=');
        *eq = '\0';
        luks_create_option(&p, "", kv, eq + 1, &err);
    }
    uint8_t *hdr = NULL, data[4096], back[4096];
    uint64_t len = 0;
    int r = luks_create_header(&p, (const uint8_t *)"new pass", 8, &hdr, &len, &err);
    ok(r == 0 && len % 4096 == 0, "%s: header of %llu bytes made: %s", opts, (unsigned long long)len, err.msg);
    if (r < 0)
        return;
    uint8_t *img = calloc(1, len + 4096);
    memcpy(img, hdr, len);
    ok(memmem(img, len, "new pass", 8) == NULL, "%s: the passphrase is not in the header", opts);
    BlockNode *bs = open_key(img, len + 4096, "wrong", &err);
    ok(!bs && err.errnum == EPERM, "%s: a wrong key is refused: %s", opts, err.msg);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.secret = (const uint8_t *)"new pass";
    o.secret_len = 8;
    o.read_only = false;
    memset(&err, 0, sizeof err);
    BlockNode *mem = bdrv_open_memory(img, len + 4096, false);
    bs = mem ? bdrv_open_on_node(mem, "luks", &o, &err) : NULL;
    ok(bs != NULL, "%s: opens with its passphrase: %s", opts, err.msg);
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    ok(bs && bdrv_pwrite(bs, 0, 4096, data, 0) == 0 && bdrv_pread(bs, 0, 4096, back) == 0 &&
       memcmp(data, back, sizeof data) == 0, "%s: reads back what it wrote", opts);
    bdrv_close(bs);
    free(img);
    free(hdr);
}

/* nettle.c: the key sizes serpent and twofish take, by name. */
static void test_nettle_key_sizes(void)
{
    static const uint8_t key[64];
    static const struct { const char *spec; size_t len; int want; } t[] = {
        { "serpent-xts-plain64", 64, 0 }, { "serpent-xts-plain64", 48, 0 }, { "twofish-cbc-plain64", 16, 0 },
        { "serpent-xts-plain64", 33, -ENOTSUP }, { "twofish-xts-plain64", 40, -ENOTSUP },
        { "twofish-cbc-essiv:sha256", 20, -ENOTSUP }, { "serpent-ecb", 32, -ENOTSUP },
    };
    for (size_t i = 0; i < ARRAY_SIZE(t); i++) {
        LuksCipher c;
        Error err = { .errnum = 0 };
        int r = luks_cipher_init(&c, t[i].spec, key, t[i].len, 512, &err);
        luks_cipher_free(&c);
        ok(r == t[i].want, "%s with %zu key bytes: %d (%s)", t[i].spec, t[i].len, r, err.msg);
    }
}

int main(void)
{
    test_nettle_key_sizes();
    test_luks1_opens();
    test_luks1_refusals();
    test_luks2_refusals();
    created_opens("cipher-alg=aes-256");
    created_opens("cipher-alg=serpent-256");
    created_opens("cipher-alg=twofish-128,cipher-mode=cbc,ivgen-alg=essiv");
    created_opens("cipher-alg=serpent-192,cipher-mode=cbc,hash-alg=sha1");
    return done_testing();
}
