/* SPDX-License-Identifier: MIT */
/*
 * crypt.c - the LUKS sector cipher over OpenSSL's libcrypto (AES-NI where the CPU has it): AES in XTS or
 * CBC mode with the plain64, plain or essiv:sha256 IV generators, as cryptsetup and QEMU make them by
 * default; serpent and twofish in the same modes through nettle (nettle.c); every other cipher, mode or IV
 * generator (cast5, lrw, benbi, ...) is refused by name (libcrypto is loaded at the first use, ossl.c).  IVs count 512-byte units from the start of the payload whatever the sector size (as dm-crypt
 * does for cryptsetup's LUKS2 containers: a 4096-byte sector advances the IV by 8).  Each call
 * builds its own EVP contexts, so any number of threads encrypt with one key at once.  It also owns the
 * locked, undumpable memory that keys live in.  It knows nothing of the LUKS header or of FUSE.
 */
#include "luks.h"
#include "util.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

enum { LUKS_MODE_XTS, LUKS_MODE_CBC };
enum { LUKS_IV_PLAIN64, LUKS_IV_PLAIN, LUKS_IV_ESSIV };

void *luks_secure_alloc(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, len, MADV_DONTDUMP);
    if (mlock(p, len) != 0)
        log_debug("luks: key memory could not be locked: %s", strerror(errno));
    return p;
}

void luks_secure_free(void *p, size_t len)
{
    if (!p)
        return;
    explicit_bzero(p, len);
    munlock(p, len);
    munmap(p, len);
}

static const EVP_CIPHER *aes_cipher(int mode, size_t key_len)
{
    if (mode == LUKS_MODE_XTS)
        return key_len == 32 ? OSSL(EVP_aes_128_xts)() : key_len == 64 ? OSSL(EVP_aes_256_xts)() : NULL;
    return key_len == 16 ? OSSL(EVP_aes_128_cbc)() : key_len == 24 ? OSSL(EVP_aes_192_cbc)()
         : key_len == 32 ? OSSL(EVP_aes_256_cbc)() : NULL;
}

int luks_cipher_init(LuksCipher *c, const char *spec, const uint8_t *key, size_t key_len, uint32_t sector_size,
                     Error *err)
{
    memset(c, 0, sizeof *c);
    int r = luks_ossl_load(err);
    if (r < 0)
        return r;
    static const struct { const char *name; int mode, ivgen; } known[] = {
        { "aes-xts-plain64", LUKS_MODE_XTS, LUKS_IV_PLAIN64 }, { "aes-xts-plain", LUKS_MODE_XTS, LUKS_IV_PLAIN },
        { "aes-cbc-plain64", LUKS_MODE_CBC, LUKS_IV_PLAIN64 }, { "aes-cbc-plain", LUKS_MODE_CBC, LUKS_IV_PLAIN },
        { "aes-cbc-essiv:sha256", LUKS_MODE_CBC, LUKS_IV_ESSIV },
    };
    /* serpent and twofish: the modes of the table, through nettle */
    bool serpent = strncmp(spec, "serpent-", 8) == 0, twofish = strncmp(spec, "twofish-", 8) == 0;
    char as_aes[64];
    snprintf(as_aes, sizeof as_aes, "aes-%s", serpent || twofish ? spec + 8 : "");
    size_t i = 0;
    while (i < ARRAY_SIZE(known) && strcmp(known[i].name, serpent || twofish ? as_aes : spec) != 0)
        i++;
    if (i == ARRAY_SIZE(known)) {
        error_set(err, ENOTSUP, "LUKS cipher '%s' is not supported (aes, serpent and twofish in xts-plain64, "
                  "cbc-essiv:sha256 and cbc-plain64 are)", spec);
        return -ENOTSUP;
    }
    c->mode = known[i].mode;
    c->ivgen = known[i].ivgen;
    c->key = key;
    c->key_len = key_len;
    c->sector_size = sector_size;
    if (serpent || twofish)
        return luks_nettle_init(c, serpent, c->mode == LUKS_MODE_XTS, c->ivgen == LUKS_IV_ESSIV, err);
    if (!(c->evp = aes_cipher(c->mode, key_len))) {
        error_set(err, ENOTSUP, "LUKS cipher '%s' with a %zu-bit key is not supported", spec, key_len * 8);
        return -ENOTSUP;
    }
    if (c->ivgen == LUKS_IV_ESSIV) {
        unsigned int n = 0;
        if (!(c->essiv_key = luks_secure_alloc(32)) ||
            !OSSL(EVP_Digest)(key, key_len, c->essiv_key, &n, OSSL(EVP_sha256)(), NULL) || n != 32) {
            luks_cipher_free(c);
            error_set(err, ENOMEM, "cannot set up the essiv key");
            return -ENOMEM;
        }
    }
    return 0;
}

void luks_cipher_free(LuksCipher *c)
{
    luks_nettle_free(c);
    luks_secure_free(c->essiv_key, 32);
    c->essiv_key = NULL;
}

/* The IV of one sector into iv (16 bytes). */
static int sector_iv(const LuksCipher *c, EVP_CIPHER_CTX *essiv, uint64_t sector, uint8_t *iv)
{
    memset(iv, 0, 16);
    if (c->ivgen == LUKS_IV_PLAIN)
        st_le32(iv, (uint32_t)sector);
    else
        st_le64(iv, sector);
    if (c->ivgen != LUKS_IV_ESSIV)
        return 0;
    if (c->nettle) {
        luks_nettle_essiv(c, iv);
        return 0;
    }
    int n = 0;
    return OSSL(EVP_EncryptUpdate)(essiv, iv, &n, iv, 16) && n == 16 ? 0 : -EIO;
}

/* serpent, twofish: nettle, sector by sector. */
static int nettle_run(const LuksCipher *c, uint64_t sector, uint8_t *buf, size_t len, bool enc)
{
    for (size_t done = 0; done + c->sector_size <= len; done += c->sector_size, sector += c->sector_size / 512) {
        uint8_t iv[16];
        if (sector_iv(c, NULL, sector, iv) < 0 ||
            luks_nettle_sector(c, c->mode == LUKS_MODE_XTS, iv, buf + done, c->sector_size, enc) < 0)
            return -EIO;
    }
    return 0;
}

int luks_cipher_run(const LuksCipher *c, uint64_t sector, uint8_t *buf, size_t len, bool enc)
{
    if (c->nettle)
        return nettle_run(c, sector, buf, len, enc);
    EVP_CIPHER_CTX *ctx = OSSL(EVP_CIPHER_CTX_new)(), *essiv = NULL;
    int r = -EIO;
    if (!ctx || !OSSL(EVP_CipherInit_ex)(ctx, c->evp, NULL, c->key, NULL, enc ? 1 : 0))
        goto out;
    OSSL(EVP_CIPHER_CTX_set_padding)(ctx, 0);
    if (c->essiv_key) {
        if (!(essiv = OSSL(EVP_CIPHER_CTX_new)()) || !OSSL(EVP_EncryptInit_ex)(essiv, OSSL(EVP_aes_256_ecb)(), NULL, c->essiv_key, NULL))
            goto out;
        OSSL(EVP_CIPHER_CTX_set_padding)(essiv, 0);
    }
    for (size_t done = 0; done + c->sector_size <= len; done += c->sector_size, sector += c->sector_size / 512) {
        uint8_t iv[16];
        int n = 0;
        if (sector_iv(c, essiv, sector, iv) < 0 || !OSSL(EVP_CipherInit_ex)(ctx, NULL, NULL, NULL, iv, enc ? 1 : 0) ||
            !OSSL(EVP_CipherUpdate)(ctx, buf + done, &n, buf + done, (int)c->sector_size) || n != (int)c->sector_size)
            goto out;
    }
    r = 0;
out:
    OSSL(EVP_CIPHER_CTX_free)(essiv);
    OSSL(EVP_CIPHER_CTX_free)(ctx);
    return r;
}
