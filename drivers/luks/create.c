/* SPDX-License-Identifier: MIT */
/*
 * create.c - new LUKS1 headers: the luks driver's `create` slot, and the header that qcow2's
 * encrypt.format=luks stores in its clusters.  It owns the creation options (cipher-alg, cipher-mode,
 * ivgen-alg, ivgen-hash-alg, hash-alg, iter-time, as qemu-img names them), the PBKDF2 benchmark that turns
 * iter-time into iterations, and the layout: the 592-byte header, eight key slots of which slot 0 holds the
 * passphrase's copy of the master key (split into 4000 anti-forensic stripes, encrypted with the key
 * PBKDF2 derives), each slot's area 4096-aligned, the payload after the last.  The master key and the
 * stripes are random (getrandom), live in locked memory only and are wiped before return; the passphrase
 * is never written.  version=2 (with kdf, argon2-memory) hands the header to create2.c (LUKS2).  Reading
 * headers and unlocking are header.c's.
 */
#include "luks.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define LUKS1_HDR_BYTES 592
#define LUKS1_SLOTS 8
#define LUKS1_DIGEST_BYTES 20
#define LUKS1_STRIPES 4000
#define LUKS1_MIN_ITER 1000u
#define LUKS_ALIGN 4096
#define LUKS_BENCH_NS 50000000LL /* PBKDF2 is timed for at least 50 ms of this thread's CPU */

const BlockOptionSpec luks_create_options[] = {
    { "cipher-alg", BDRV_OPT_STRING, 0, "aes-128, aes-192, aes-256 (default), serpent-N, twofish-N (N: 128/192/256)" },
    { "cipher-mode", BDRV_OPT_STRING, 0, "xts (default) or cbc" },
    { "ivgen-alg", BDRV_OPT_STRING, 0, "plain64 (default), plain or essiv" },
    { "ivgen-hash-alg", BDRV_OPT_STRING, 0, "hash of essiv: sha256 (the default and only one)" },
    { "hash-alg", BDRV_OPT_STRING, 0, "PBKDF2 and splitter hash: sha1, sha256 (default) or sha512" },
    { "iter-time", BDRV_OPT_INT, 0, "milliseconds of PBKDF2 for the key slot (default 2000; the digest: 1/8)" },
    { "version", BDRV_OPT_INT, 0, "1 (LUKS1, the default, as QEMU makes and reads) or 2 (LUKS2, as cryptsetup's)" },
    { "kdf", BDRV_OPT_STRING, 0, "LUKS2 key slot: argon2id (default), argon2i or pbkdf2" },
    { "argon2-memory", BDRV_OPT_SIZE, 0, "LUKS2 argon2 memory cost, 32k to 4G (default 64M); time cost from iter-time" },
    { NULL, 0, 0, NULL },
};

void luks_create_defaults(LuksCreateParams *p)
{
    *p = (LuksCreateParams){ .cipher_alg = "aes", .key_bits = 256, .mode = "xts", .ivgen = "plain64",
                             .ivgen_hash = "sha256", .hash = "sha256", .iter_time_ms = 2000, .version = 1,
                             .kdf = LUKS_KDF_ARGON2ID, .argon2_kib = 64u << 10 };
}

static int bad_value(Error *err, const char *prefix, const char *key, const char *val, const char *want)
{
    error_set(err, EINVAL, "luks creation option '%s%s': '%s' is not %s", prefix, key, val, want);
    return -EINVAL;
}

static bool one_of(const char *val, const char *const *names)
{
    for (; *names; names++)
        if (strcmp(val, *names) == 0)
            return true;
    return false;
}

static int take_cipher_alg(LuksCreateParams *p, const char *val, Error *err, const char *prefix)
{
    static const char *const algs[] = { "aes", "serpent", "twofish", NULL };
    char name[16];
    const char *dash = strrchr(val, '-');
    size_t n = dash ? (size_t)(dash - val) : 0;
    char *end;
    unsigned long bits = dash ? strtoul(dash + 1, &end, 10) : 0;
    if (!dash || n >= sizeof name || *end || (bits != 128 && bits != 192 && bits != 256))
        return bad_value(err, prefix, "cipher-alg", val, "a cipher (aes-256, serpent-256, twofish-256, ...)");
    memcpy(name, val, n);
    name[n] = '\0';
    if (!one_of(name, algs)) {
        error_set(err, ENOTSUP, "luks creation option '%scipher-alg': cipher '%s' is not supported (aes, serpent "
                  "and twofish are)", prefix, val);
        return -ENOTSUP;
    }
    memcpy(p->cipher_alg, name, n + 1);
    p->key_bits = (uint32_t)bits;
    return 0;
}

/* version, kdf, argon2-memory: -f luks only (qcow2 holds LUKS1 headers, as QEMU reads them). */
static int take_luks2_option(LuksCreateParams *p, const char *key, const char *val, Error *err)
{
    if (strcmp(key, "version") == 0) {
        if (strcmp(val, "1") != 0 && strcmp(val, "2") != 0)
            return bad_value(err, "", key, val, "1 or 2");
        p->version = val[0] - '0';
        return 0;
    }
    p->luks2_option = true;
    if (strcmp(key, "kdf") == 0) {
        if (strcmp(val, "argon2id") != 0 && strcmp(val, "argon2i") != 0 && strcmp(val, "pbkdf2") != 0)
            return bad_value(err, "", key, val, "argon2id, argon2i or pbkdf2");
        p->kdf = val[0] == 'p' ? LUKS_KDF_PBKDF2 : strcmp(val, "argon2id") == 0 ? LUKS_KDF_ARGON2ID : LUKS_KDF_ARGON2I;
    } else {
        int64_t v = parse_size(val);
        if (v < 32 * 1024 || v > (int64_t)LUKS_MAX_ARGON2_KIB * 1024)
            return bad_value(err, "", key, val, "a size from 32k to 4G");
        p->argon2_kib = (uint32_t)(v / 1024);
    }
    return 0;
}

int luks_create_option(LuksCreateParams *p, const char *prefix, const char *key, const char *val, Error *err)
{
    static const char *const modes[] = { "xts", "cbc", NULL }, *const ivgens[] = { "plain64", "plain", "essiv", NULL };
    static const char *const hashes[] = { "sha1", "sha256", "sha512", NULL }, *const essiv[] = { "sha256", NULL };
    if (strcmp(key, "cipher-alg") == 0)
        return take_cipher_alg(p, val, err, prefix);
    if (!*prefix && (strcmp(key, "version") == 0 || strcmp(key, "kdf") == 0 || strcmp(key, "argon2-memory") == 0))
        return take_luks2_option(p, key, val, err);
    if (strcmp(key, "cipher-mode") == 0 && one_of(val, modes))
        snprintf(p->mode, sizeof p->mode, "%s", val);
    else if (strcmp(key, "ivgen-alg") == 0 && one_of(val, ivgens))
        snprintf(p->ivgen, sizeof p->ivgen, "%s", val);
    else if (strcmp(key, "ivgen-hash-alg") == 0 && one_of(val, essiv))
        snprintf(p->ivgen_hash, sizeof p->ivgen_hash, "%s", val);
    else if (strcmp(key, "hash-alg") == 0 && one_of(val, hashes))
        snprintf(p->hash, sizeof p->hash, "%s", val);
    else if (strcmp(key, "iter-time") == 0) {
        char *end;
        unsigned long ms = strtoul(val, &end, 10);
        if (!*val || *end || val[0] == '-' || ms < 1 || ms > 60000)
            return bad_value(err, prefix, key, val, "a time from 1 to 60000 ms");
        p->iter_time_ms = (uint32_t)ms;
    } else if (strcmp(key, "cipher-mode") == 0 || strcmp(key, "ivgen-alg") == 0 ||
               strcmp(key, "ivgen-hash-alg") == 0 || strcmp(key, "hash-alg") == 0) {
        error_set(err, ENOTSUP, "luks creation option '%s%s': '%s' is not supported (%s)", prefix, key, val,
                  key[0] == 'c' ? "xts and cbc are" : key[0] == 'h' ? "sha1, sha256 and sha512 are"
                  : key[5] == 'h' ? "sha256 is" : "plain64, plain and essiv are");
        return -ENOTSUP;
    } else {
        error_set(err, EINVAL, "unknown luks creation option '%s%s'", prefix, key);
        return -EINVAL;
    }
    return 0;
}

/* "aes-xts-plain64" or "aes-cbc-essiv:sha256" into spec; the master key's bytes. */
uint32_t luks_cipher_spec(const LuksCreateParams *p, char *spec, size_t len)
{
    if (strcmp(p->ivgen, "essiv") == 0)
        snprintf(spec, len, "%s-%s-essiv:%s", p->cipher_alg, p->mode, p->ivgen_hash);
    else
        snprintf(spec, len, "%s-%s-%s", p->cipher_alg, p->mode, p->ivgen);
    return p->key_bits / 8 * (strcmp(p->mode, "xts") == 0 ? 2 : 1);
}

int luks_fill_random(uint8_t *buf, size_t len)
{
    for (size_t got = 0; got < len;) {
        ssize_t r = getrandom(buf + got, len - got, 0);
        if (r < 0 && errno != EINTR)
            return -errno;
        got += r > 0 ? (size_t)r : 0;
    }
    return 0;
}

static int64_t thread_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* PBKDF2 iterations of hash that take ms milliseconds on this CPU (at least 1000, at most the reader's limit). */
uint32_t luks_pbkdf2_iterations(const char *hash, uint32_t ms, size_t out_len)
{
    static const uint8_t salt[32];
    uint8_t out[LUKS_MAX_KEY_BYTES];
    uint64_t iters = 1024;
    int64_t spent = 0;
    for (; iters < LUKS_MAX_PBKDF2_ITER; iters *= 2) {
        int64_t t0 = thread_ns();
        if (!OSSL(PKCS5_PBKDF2_HMAC)("benchmark", 9, salt, sizeof salt, (int)iters, luks_md(hash), (int)out_len, out))
            return LUKS1_MIN_ITER;
        if ((spent = thread_ns() - t0) >= LUKS_BENCH_NS)
            break;
    }
    uint64_t want = spent > 0 ? iters * ms * 1000000ULL / (uint64_t)spent : LUKS_MAX_PBKDF2_ITER;
    return (uint32_t)MAX(LUKS1_MIN_ITER, MIN(want, LUKS_MAX_PBKDF2_ITER));
}

void luks_random_uuid(char *out)
{
    uint8_t u[16] = { 0 };
    if (luks_fill_random(u, sizeof u) < 0)
        memset(u, 0x5a, sizeof u);
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    snprintf(out, 40, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3],
             u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

/* The stripes of mk (key_len bytes) into mat: random but the last, which makes the merge give mk. */
int luks_af_split(const uint8_t *mk, size_t key_len, const char *hash, uint8_t *mat)
{
    uint8_t *d = mat + (size_t)(LUKS1_STRIPES - 1) * key_len;
    int r = luks_fill_random(mat, (size_t)(LUKS1_STRIPES - 1) * key_len);
    memset(d, 0, key_len);
    for (uint32_t i = 0; r == 0 && i + 1 < LUKS1_STRIPES; i++) {
        for (size_t j = 0; j < key_len; j++)
            d[j] ^= mat[(size_t)i * key_len + j];
        r = luks_af_diffuse(d, key_len, luks_md(hash));
    }
    for (size_t j = 0; j < key_len; j++)
        d[j] ^= mk[j];
    return r;
}

/* Key slot 0: the passphrase's key encrypts the stripes of mk at area (area_len bytes of hdr). */
static int write_slot(const LuksCreateParams *p, const char *spec, const uint8_t *mk, uint32_t key_len,
                      const uint8_t *pass, size_t pass_len, uint8_t *slot, uint8_t *area, size_t area_len, Error *err)
{
    uint8_t *dk = luks_secure_alloc(LUKS_MAX_KEY_BYTES), *mat = luks_secure_alloc(area_len);
    uint32_t iters = luks_pbkdf2_iterations(p->hash, p->iter_time_ms, key_len);
    LuksCipher c = { 0 };
    int r = dk && mat ? luks_fill_random(slot + 8, 32) : -ENOMEM;
    if (r == 0 && !OSSL(PKCS5_PBKDF2_HMAC)((const char *)pass, (int)pass_len, slot + 8, 32, (int)iters,
                                           luks_md(p->hash), (int)key_len, dk))
        r = -EIO;
    if (r == 0 && (r = luks_af_split(mk, key_len, p->hash, mat)) == 0 &&
        (r = luks_cipher_init(&c, spec, dk, key_len, 512, err)) == 0 &&
        (r = luks_cipher_run(&c, 0, mat, area_len, true)) == 0)
        memcpy(area, mat, area_len);
    st_be32(slot, 0x00AC71F3u);
    st_be32(slot + 4, iters);
    luks_cipher_free(&c);
    luks_secure_free(dk, LUKS_MAX_KEY_BYTES);
    luks_secure_free(mat, area_len);
    return r;
}

/* The fixed header fields and the master key's digest. */
static int write_fields(const LuksCreateParams *p, const char *spec, const uint8_t *mk, uint32_t key_len,
                        uint64_t payload, uint8_t *hdr)
{
    const char *mode = spec + strlen(p->cipher_alg) + 1;
    memcpy(hdr, "LUKS\xba\xbe", 6);
    st_be16(hdr + 6, 1);
    memcpy(hdr + 8, p->cipher_alg, strlen(p->cipher_alg));
    memcpy(hdr + 40, mode, strlen(mode));
    memcpy(hdr + 72, p->hash, strlen(p->hash));
    st_be32(hdr + 104, (uint32_t)(payload / 512));
    st_be32(hdr + 108, key_len);
    uint32_t iters = MAX(LUKS1_MIN_ITER, luks_pbkdf2_iterations(p->hash, p->iter_time_ms, LUKS1_DIGEST_BYTES) / 8);
    st_be32(hdr + 164, iters);
    luks_random_uuid((char *)hdr + 168);
    if (luks_fill_random(hdr + 132, 32) < 0)
        return -EIO;
    return OSSL(PKCS5_PBKDF2_HMAC)((const char *)mk, (int)key_len, hdr + 132, 32, (int)iters, luks_md(p->hash),
                                   LUKS1_DIGEST_BYTES, hdr + 112) ? 0 : -EIO;
}

/* The cipher is one the sector cipher knows (else refused by name) and there is a passphrase. */
static int luks_create_check(const LuksCreateParams *p, const uint8_t *pass, Error *err)
{
    static const uint8_t zero_key[LUKS_MAX_KEY_BYTES];
    char spec[64];
    uint32_t key_len = luks_cipher_spec(p, spec, sizeof spec);
    LuksCipher probe;
    int r = luks_ossl_load(err);
    if (r < 0 || (r = luks_cipher_init(&probe, spec, zero_key, key_len, 512, err)) < 0)
        return r;
    luks_cipher_free(&probe);
    if (!pass) {
        error_set(err, ENOKEY, "a new LUKS container needs a passphrase (--key-file FILE or --passphrase-fd N)");
        return -ENOKEY;
    }
    return 0;
}

int luks_create_header(const LuksCreateParams *p, const uint8_t *pass, size_t pass_len, uint8_t **out,
                       uint64_t *out_len, Error *err)
{
    char spec[64];
    uint32_t key_len = luks_cipher_spec(p, spec, sizeof spec);
    int r = luks_create_check(p, pass, err);
    if (r < 0)
        return r;
    size_t area = (size_t)align_up((int64_t)key_len * LUKS1_STRIPES, 512);
    size_t area_step = (size_t)align_up((int64_t)area, LUKS_ALIGN);
    uint64_t payload = LUKS_ALIGN + (uint64_t)LUKS1_SLOTS * area_step;
    uint8_t *hdr = calloc(1, payload), *mk = luks_secure_alloc(LUKS_MAX_KEY_BYTES);
    r = hdr && mk ? luks_fill_random(mk, key_len) : -ENOMEM;
    if (r == 0)
        r = write_fields(p, spec, mk, key_len, payload, hdr);
    for (int i = 0; r == 0 && i < LUKS1_SLOTS; i++) {
        uint8_t *slot = hdr + 208 + 48 * i;
        st_be32(slot, 0x0000DEADu);
        st_be32(slot + 40, (uint32_t)((LUKS_ALIGN + (uint64_t)i * area_step) / 512));
        st_be32(slot + 44, LUKS1_STRIPES);
    }
    if (r == 0)
        r = write_slot(p, spec, mk, key_len, pass, pass_len, hdr + 208, hdr + LUKS_ALIGN, area, err);
    luks_secure_free(mk, LUKS_MAX_KEY_BYTES);
    if (r < 0) {
        free(hdr);
        if (!err->msg[0])
            error_set(err, -r, "cannot make the LUKS header: %s", strerror(-r));
        return r;
    }
    *out = hdr;
    *out_len = payload;
    return 0;
}

typedef struct LuksOptParse {
    LuksCreateParams *p;
    Error *err;
} LuksOptParse;

static int parse_item(const char *key, const char *value, void *opaque)
{
    LuksOptParse *c = opaque;
    if (!value) {
        error_set(c->err, EINVAL, "creation option '%s' needs a value (key=value)", key);
        return -EINVAL;
    }
    return luks_create_option(c->p, "", key, value, c->err);
}

int luks_create(const char *filename, const CreateOpts *opts, Error *err)
{
    LuksCreateParams p;
    luks_create_defaults(&p);
    Error why = { 0 };
    LuksOptParse c = { .p = &p, .err = &why };
    uint8_t *hdr = NULL;
    uint64_t len = 0;
    int r = bdrv_create_opts_each(opts->options, parse_item, &c);
    if (r == 0 && (opts->size < 0 || (uint64_t)opts->size > (UINT64_C(1) << 60))) {
        error_set(&why, EINVAL, "invalid virtual size");
        r = -EINVAL;
    }
    if (r == 0 && p.luks2_option && p.version != 2) {
        error_set(&why, EINVAL, "luks creation options kdf and argon2-memory need version=2");
        r = -EINVAL;
    }
    uint64_t payload = 0;
    if (r == 0 && p.version == 2) {
        r = luks_create_check(&p, opts->secret, &why);
        if (r == 0)
            r = luks2_create_header(&p, opts->secret, opts->secret_len, &hdr, &len, &payload, &why);
    } else if (r == 0) {
        r = luks_create_header(&p, opts->secret, opts->secret_len, &hdr, &len, &why);
        payload = len;
    }
    if (r < 0) {
        error_set(err, -r, "%s: %s", filename, why.msg[0] ? why.msg : strerror(-r));
        return r;
    }
    BlockNode *file = NULL;
    r = bdrv_create_empty_file(filename, &file, err);
    if (r == 0 && (r = bdrv_pwrite(file, 0, (int64_t)len, hdr, 0)) == 0 &&
        (r = bdrv_truncate(file, (int64_t)payload + align_up(opts->size, 512))) == 0)
        r = bdrv_flush(file);
    if (file)
        bdrv_close(file);
    free(hdr);
    if (r < 0 && !err->msg[0])
        error_set(err, -r, "%s: cannot write the image: %s", filename, strerror(-r));
    return r;
}
