/* SPDX-License-Identifier: MIT */
/*
 * key.c - the passphrase of an image encrypted inside another format (qcow2 with LUKS or AES, qcow with
 * AES), taken the way the luks driver takes it: BlockOpenOpts.secret as the front end read it, else the
 * no-echo prompt behind opts->ask_secret (into locked memory), else a one-line "a key is needed" error
 * naming what needs it (luks_key_skip: no key at all for a caller that reads no data).  It also derives
 * the legacy AES key of qcow and qcow2 (the passphrase's first 16 bytes, zero-padded) into locked memory.  It knows nothing of FUSE or of the formats that call it.
 */
#include "luks.h"
#include "util.h"

#include <errno.h>
#include <string.h>

int luks_key_get(BlockNode *bs, const BlockOpenOpts *opts, const char *what, const uint8_t **key, size_t *len,
                 uint8_t **asked, Error *err)
{
    *asked = NULL;
    if (opts && opts->secret) {
        *key = opts->secret;
        *len = opts->secret_len;
        return 0;
    }
    if (opts && opts->ask_secret && (*asked = luks_secure_alloc(LUKS_KEY_PROMPT_MAX))) {
        int n = opts->ask_secret(bs->filename, *asked, LUKS_KEY_PROMPT_MAX);
        if (n >= 0) {
            *key = *asked;
            *len = (size_t)n;
            return 0;
        }
        luks_secure_free(*asked, LUKS_KEY_PROMPT_MAX);
        *asked = NULL;
    }
    error_set(err, ENOKEY, "%s: a key is needed (--key-file FILE or --passphrase-fd N)", what);
    return -ENOKEY;
}

bool luks_key_skip(const BlockOpenOpts *opts)
{
    return opts && opts->metadata_only && !opts->secret && !opts->ask_secret;
}

uint8_t *luks_legacy_aes_key(const uint8_t *pass, size_t pass_len)
{
    uint8_t *k = luks_secure_alloc(LUKS_LEGACY_KEY_PAGE);
    if (k)
        memcpy(k, pass, MIN(pass_len, (size_t)LUKS_LEGACY_AES_KEY));
    return k;
}
