/* SPDX-License-Identifier: MIT */
/*
 * nettle.c - the serpent and twofish sector ciphers of the LUKS driver, through GNU Nettle (libcrypto has
 * neither): XTS (the key's first half encrypts, its second the tweak) and CBC, with the IV crypt.c makes
 * (plain64, plain, or essiv: the IV encrypted by the same cipher under the SHA-256 of the key).  The key
 * schedules are made once at init, in locked memory left out of core dumps and wiped at free; they are
 * only read afterwards, so any number of threads encrypt at once.  It knows nothing of the LUKS header.
 */
#include "luks.h"
#include "util.h"

#include <errno.h>
#include <nettle/cbc.h>
#include <nettle/serpent.h>
#include <nettle/sha2.h>
#include <nettle/twofish.h>
#include <nettle/xts.h>
#include <string.h>

typedef union NettleCtx {
    struct serpent_ctx serpent;
    struct twofish_ctx twofish;
} NettleCtx;

typedef struct NettleKeys {
    NettleCtx data, tweak, essiv;  /* tweak: xts; essiv: essiv */
} NettleKeys;

#define NETTLE_KEYS_BYTES ((sizeof(NettleKeys) + 4095) / 4096 * 4096)

static void set_key(bool serpent, NettleCtx *ctx, size_t len, const uint8_t *key)
{
    if (serpent)
        serpent_set_key(&ctx->serpent, len, key);
    else
        twofish_set_key(&ctx->twofish, len, key);
}

int luks_nettle_init(LuksCipher *c, bool serpent, bool xts, bool essiv, Error *err)
{
    size_t half = xts ? c->key_len / 2 : c->key_len;
    if ((half != 16 && half != 24 && half != 32) || (xts && c->key_len % 2)) {
        error_set(err, ENOTSUP, "LUKS cipher %s with a %zu-bit key is not supported", serpent ? "serpent" : "twofish",
                  c->key_len * 8);
        return -ENOTSUP;
    }
    NettleKeys *k = luks_secure_alloc(NETTLE_KEYS_BYTES);
    if (!k) {
        error_set(err, ENOMEM, "out of memory for the key schedule");
        return -ENOMEM;
    }
    c->serpent = serpent;
    c->nettle = k;
    set_key(serpent, &k->data, half, c->key);
    if (xts)
        set_key(serpent, &k->tweak, half, c->key + half);
    if (essiv) {
        uint8_t h[SHA256_DIGEST_SIZE];
        struct sha256_ctx sc;
        sha256_init(&sc);
        sha256_update(&sc, c->key_len, c->key);
        sha256_digest(&sc, sizeof h, h);
        set_key(serpent, &k->essiv, sizeof h, h);
        explicit_bzero(h, sizeof h);
        explicit_bzero(&sc, sizeof sc);
    }
    return 0;
}

void luks_nettle_free(LuksCipher *c)
{
    luks_secure_free(c->nettle, NETTLE_KEYS_BYTES);
    c->nettle = NULL;
}

/* Encrypts one 16-byte block in place with the essiv key. */
void luks_nettle_essiv(const LuksCipher *c, uint8_t *iv)
{
    const NettleKeys *k = c->nettle;
    if (c->serpent)
        serpent_encrypt(&k->essiv.serpent, 16, iv, iv);
    else
        twofish_encrypt(&k->essiv.twofish, 16, iv, iv);
}

int luks_nettle_sector(const LuksCipher *c, bool xts, uint8_t *iv, uint8_t *buf, size_t len, bool enc)
{
    const NettleKeys *k = c->nettle;
    nettle_cipher_func *e = c->serpent ? (nettle_cipher_func *)serpent_encrypt : (nettle_cipher_func *)twofish_encrypt;
    nettle_cipher_func *d = c->serpent ? (nettle_cipher_func *)serpent_decrypt : (nettle_cipher_func *)twofish_decrypt;
    if (xts && enc)
        xts_encrypt_message(&k->data, &k->tweak, e, iv, len, buf, buf);
    else if (xts)
        xts_decrypt_message(&k->data, &k->tweak, d, e, iv, len, buf, buf);
    else if (enc)
        cbc_encrypt(&k->data, e, 16, iv, len, buf, buf);
    else
        cbc_decrypt(&k->data, d, 16, iv, len, buf, buf);
    return 0;
}
