/* SPDX-License-Identifier: MIT */
/*
 * ossl.c - OpenSSL's libcrypto for the LUKS driver, loaded (dlopen) the first time a LUKS container is
 * opened, as `imgfuse hash` loads it (fuse/commands.c): linked in, it would cost every process its
 * relocation at start-up and about 1.4 MiB of resident memory, measured, for a format most mounts never
 * see.  It owns the table of the functions crypt.c and header.c call (OSSL(name) in luks.h) and nothing
 * else.
 */
#include "luks.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

LuksOssl luks_ossl;

static pthread_once_t ossl_once = PTHREAD_ONCE_INIT;
static char ossl_error[256];

static void ossl_load(void)
{
    void *lib = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(ossl_error, sizeof ossl_error, "%s", dlerror());
        return;
    }
#define LUKS_OSSL_SYM(name)                                                                        \
    if (!ossl_error[0] && !(*(void **)&luks_ossl.name = dlsym(lib, #name)))                      \
        snprintf(ossl_error, sizeof ossl_error, "no symbol %s", #name);
    LUKS_OSSL_FUNCS(LUKS_OSSL_SYM)
#undef LUKS_OSSL_SYM
    if (!ossl_error[0])
        luks_ossl.loaded = true;
}

int luks_ossl_load(Error *err)
{
    pthread_once(&ossl_once, ossl_load);
    if (luks_ossl.loaded)
        return 0;
    error_set(err, ENOTSUP, "cannot load OpenSSL's libcrypto.so.3 (Debian package libssl3): %s", ossl_error);
    return -ENOTSUP;
}
