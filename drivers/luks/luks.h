/* SPDX-License-Identifier: MIT */
/*
 * luks.h - what the three files of the LUKS driver share: the parsed header of a LUKS1 or LUKS2 container
 * (header.c fills it from untrusted bytes, after bounds checks on every field), the sector cipher
 * (crypt.c, over OpenSSL's libcrypto) and locked key memory.  Nothing here is written back to the image:
 * the driver never changes a header.  It knows nothing of FUSE or of other formats.
 */
#ifndef IMGFUSE_LUKS_H
#define IMGFUSE_LUKS_H

#include "block.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ossl.c: the libcrypto functions the driver calls, loaded at the first open; OSSL(name) calls one. */
#define LUKS_OSSL_FUNCS(X) X(EVP_CIPHER_CTX_new) X(EVP_CIPHER_CTX_free) X(EVP_CIPHER_CTX_set_padding) \
    X(EVP_CipherInit_ex) X(EVP_CipherUpdate) X(EVP_EncryptInit_ex) X(EVP_EncryptUpdate) X(EVP_Digest) \
    X(EVP_DigestInit_ex) X(EVP_DigestUpdate) X(EVP_DigestFinal_ex) X(EVP_MD_CTX_new) X(EVP_MD_CTX_free) \
    X(EVP_MD_get_size) X(EVP_aes_128_cbc) X(EVP_aes_192_cbc) X(EVP_aes_256_cbc) X(EVP_aes_128_xts) \
    X(EVP_aes_256_xts) X(EVP_aes_256_ecb) X(EVP_sha1) X(EVP_sha256) X(EVP_sha512) X(PKCS5_PBKDF2_HMAC) \
    X(CRYPTO_memcmp)
#define LUKS_OSSL_DECL(name) __typeof__(name) *name;
typedef struct LuksOssl {
    bool loaded;
    LUKS_OSSL_FUNCS(LUKS_OSSL_DECL)
} LuksOssl;
extern LuksOssl luks_ossl;
#define OSSL(name) (luks_ossl.name)
/* 0 once libcrypto is loaded (the first call loads it), or -ENOTSUP with the reason in err. */
int luks_ossl_load(Error *err);

#define LUKS_MAX_SLOTS 32             /* LUKS2's limit; LUKS1 has 8 */
#define LUKS_MAX_KEY_BYTES 64         /* aes-xts with two 256-bit keys */
#define LUKS_MAX_STRIPES 4000         /* the anti-forensic splitter's stripes (both versions use 4000) */
#define LUKS_MAX_SALT 64
#define LUKS_MAX_DIGEST 64
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define LUKS_MAX_PBKDF2_ITER 20000000u /* about 10 s of sha256 on this class of machine, per slot */
#define LUKS_MAX_ARGON2_KIB (4u << 20) /* 4 GiB of argon2 memory */
#define LUKS_MAX_ARGON2_TIME 1000u
#define LUKS_MAX_ARGON2_CPUS 64u
#else                                 /* fuzz builds (Makefile): cheap key slots only */
#define LUKS_MAX_PBKDF2_ITER 2000u
#define LUKS_MAX_ARGON2_KIB (1u << 10)
#define LUKS_MAX_ARGON2_TIME 4u
#define LUKS_MAX_ARGON2_CPUS 4u
#endif
#define LUKS2_MAX_HDR_SIZE (4u << 20) /* binary header + JSON area, the largest size LUKS2 defines */

typedef enum { LUKS_KDF_PBKDF2, LUKS_KDF_ARGON2I, LUKS_KDF_ARGON2ID } LuksKdfType;

typedef struct LuksKdf {
    LuksKdfType type;
    char hash[16];          /* pbkdf2: sha1, sha256, sha512 */
    uint32_t iterations;    /* pbkdf2 */
    uint32_t time, memory_kib, cpus; /* argon2 */
    uint8_t salt[LUKS_MAX_SALT];
    size_t salt_len;
} LuksKdf;

typedef struct LuksSlot {
    bool active;
    LuksKdf kdf;
    uint64_t area_offset;   /* bytes from the start of the file */
    uint64_t area_size;
    char area_cipher[64];   /* e.g. aes-xts-plain64 */
    uint32_t area_key_size; /* bytes of the key the KDF derives */
    uint32_t stripes;
    char af_hash[16];
} LuksSlot;

typedef struct LuksHeader {
    int version;                  /* 1 or 2 */
    char cipher[64];              /* "aes-xts-plain64" (LUKS1: cipher_name-cipher_mode) */
    uint32_t key_size;            /* bytes of the master key */
    uint64_t payload_offset;      /* bytes */
    uint64_t payload_size;        /* bytes, 0: to the end of the file */
    uint32_t sector_size;         /* 512 (LUKS1) or the LUKS2 segment's */
    uint64_t iv_tweak;            /* added to the sector number (LUKS2) */
    LuksSlot slots[LUKS_MAX_SLOTS];
    int n_slots;
    LuksKdf digest_kdf;           /* the master key's digest: pbkdf2 over the key */
    uint8_t digest[LUKS_MAX_DIGEST];
    size_t digest_len;
    char uuid[40];
    char note[128];               /* LUKS2: which header copies were good, for info */
} LuksHeader;

/* The sector cipher: one key, many threads; each call builds its own libcrypto contexts. */
typedef struct LuksCipher {
    int mode;                     /* LUKS_MODE_* (crypt.c) */
    int ivgen;                    /* LUKS_IV_* (crypt.c) */
    const void *evp;              /* const EVP_CIPHER * for the sector cipher */
    const uint8_t *key;           /* borrowed, key_len bytes (locked memory) */
    size_t key_len;
    uint8_t *essiv_key;           /* essiv: the hash of the key (locked memory), NULL otherwise */
    uint32_t sector_size;
    void *nettle;                 /* serpent, twofish: nettle's key schedules (locked memory), NULL for aes */
    bool serpent;                 /* with nettle: serpent, else twofish */
} LuksCipher;

/* crypt.c */
/* Accepts "aes-xts-plain64", "aes-cbc-essiv:sha256", "aes-cbc-plain64", "aes-cbc-plain", "aes-xts-plain" for
 * key_len bytes, and the same with serpent or twofish for aes; 0, or -ENOTSUP with the reason naming the
 * cipher in err. c->key is set, not copied. */
int luks_cipher_init(LuksCipher *c, const char *spec, const uint8_t *key, size_t key_len, uint32_t sector_size,
                     Error *err);
void luks_cipher_free(LuksCipher *c);
/* Decrypts (enc false) or encrypts len bytes (whole sectors) in place; the first sector's IV number is
 * sector (in 512-byte units; each sector advances it by sector_size / 512). 0 or -EIO. */
int luks_cipher_run(const LuksCipher *c, uint64_t sector, uint8_t *buf, size_t len, bool enc);
/* Memory for keys: locked (mlock), left out of core dumps (MADV_DONTDUMP), wiped when freed. */
void *luks_secure_alloc(size_t len);
void luks_secure_free(void *p, size_t len);

/* nettle.c: serpent and twofish for crypt.c (c->key, key_len set): key schedules, the essiv IV, one sector
 * encrypted or decrypted in place (iv: 16 bytes, changed). */
int luks_nettle_init(LuksCipher *c, bool serpent, bool xts, bool essiv, Error *err);
void luks_nettle_free(LuksCipher *c);
void luks_nettle_essiv(const LuksCipher *c, uint8_t *iv);
int luks_nettle_sector(const LuksCipher *c, bool xts, uint8_t *iv, uint8_t *buf, size_t len, bool enc);

/* header.c */
/* The header of a LUKS1 or LUKS2 container in file (file_size bytes): 0, or a negative errno with the
 * reason in err (an unsupported feature or cipher refused by name). */
int luks_header_read(BlockNode *file, uint64_t file_size, LuksHeader *h, Error *err);
/* The same from a buffer (unit tests and the fuzz target go through a memory node instead). */
/* Unlocks the master key with the passphrase into mk (h->key_size bytes): the slot it opened, or -EPERM
 * ("no key slot opens with the key given"), -ENOENT (slot not active), -E2BIG (a cost above the limits),
 * with err set. slot -1: every active slot in turn. */
int luks_unlock(BlockNode *file, const LuksHeader *h, const uint8_t *pass, size_t pass_len, int slot,
                uint8_t *mk, Error *err);

/* key.c: the key of an image encrypted inside another format (qcow2, qcow). */
#define LUKS_KEY_PROMPT_MAX 1024      /* a passphrase typed at the prompt */
#define LUKS_LEGACY_AES_KEY 16        /* qcow/qcow2 AES: the passphrase's first 16 bytes, zero-padded */
#define LUKS_LEGACY_KEY_PAGE 4096     /* the locked page that key lives in */
/* The passphrase: opts->secret, else asked through opts->ask_secret into locked memory (*asked,
 * LUKS_KEY_PROMPT_MAX bytes, luks_secure_free it), else -ENOKEY with "WHAT: a key is needed ..." in err. */
int luks_key_get(BlockNode *bs, const BlockOpenOpts *opts, const char *what, const uint8_t **key, size_t *len,
                 uint8_t **asked, Error *err);
/* Whether to open without a key: the caller reads no data (opts->metadata_only), gave no secret and has no
 * prompt (a terminal still asks). The node then shows its metadata; its data I/O fails with -ENOKEY. */
bool luks_key_skip(const BlockOpenOpts *opts);
/* The legacy AES-128 key of a passphrase in a locked page (LUKS_LEGACY_KEY_PAGE bytes), or NULL. */
uint8_t *luks_legacy_aes_key(const uint8_t *pass, size_t pass_len);

/* qemu-img info's QCryptoBlockInfoLUKS members of header h into data, each key prefixed with prefix ("" for
 * a luks node's format-specific data, "encrypt." inside qcow2's): cipher-alg, cipher-mode, ivgen-alg,
 * ivgen-hash-alg (essiv), hash-alg, uuid, slots/I/..., payload-offset, master-key-iters. */
void luks_info_qemu(const LuksHeader *h, const char *prefix, InfoList *data);

/* The af_diffuse and hash lookup of header.c, shared with create.c. */
int luks_af_diffuse(uint8_t *buf, size_t len, const EVP_MD *md);
const EVP_MD *luks_md(const char *name);

/* create.c: new LUKS1 headers (the luks driver's create, qcow2's encrypt.format=luks). */
typedef struct LuksCreateParams {
    char cipher_alg[16];          /* aes, serpent, twofish */
    uint32_t key_bits;            /* 128, 192, 256 (xts doubles the key) */
    char mode[8];                 /* xts, cbc */
    char ivgen[8];                /* plain64, plain, essiv */
    char ivgen_hash[8];           /* essiv's: sha256 */
    char hash[8];                 /* PBKDF2 and splitter: sha1, sha256, sha512 */
    uint32_t iter_time_ms;
    int version;                  /* 1 or 2 (-f luks only) */
    int kdf;                      /* LUKS2's key slot: LuksKdfType (default argon2id) */
    uint32_t argon2_kib;          /* its memory cost */
    bool luks2_option;            /* kdf or argon2-memory given (they need version 2) */
} LuksCreateParams;
extern const BlockOptionSpec luks_create_options[];
void luks_create_defaults(LuksCreateParams *p);
/* One creation option (key without prefix; prefix, "" or "encrypt.", only names it in errors): 0, or
 * -EINVAL/-ENOTSUP with the reason in err. */
int luks_create_option(LuksCreateParams *p, const char *prefix, const char *key, const char *val, Error *err);
/* A LUKS1 header with key slot 0 opened by pass: *out (malloc'd, *out_len bytes, the payload offset), or a
 * negative errno with the reason in err (-ENOKEY: no passphrase). */
int luks_create_header(const LuksCreateParams *p, const uint8_t *pass, size_t pass_len, uint8_t **out,
                       uint64_t *out_len, Error *err);
int luks_create(const char *filename, const CreateOpts *opts, Error *err);
/* create.c's helpers for create2.c */
uint32_t luks_cipher_spec(const LuksCreateParams *p, char *spec, size_t len);
int luks_fill_random(uint8_t *buf, size_t len);
uint32_t luks_pbkdf2_iterations(const char *hash, uint32_t ms, size_t out_len);
void luks_random_uuid(char *out);
int luks_af_split(const uint8_t *mk, size_t key_len, const char *hash, uint8_t *mat);
/* create2.c: a LUKS2 header (both copies, key slot 0's area): *out (malloc'd, *out_len bytes), the payload
 * offset in *payload; or a negative errno with the reason in err. */
int luks2_create_header(const LuksCreateParams *p, const uint8_t *pass, size_t pass_len, uint8_t **out,
                        uint64_t *out_len, uint64_t *payload, Error *err);

#endif
