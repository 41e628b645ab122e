/* SPDX-License-Identifier: MIT */
/*
 * drivers.c - the driver table: the one list of every block driver, in probe-tie order.  Adding a
 * driver is one extern line and one table line here; nothing else in lib/ names a driver, except the
 * table of known format magics in lib/probe.c (a new format's magic moves there from "no driver yet").
 * The scheme table says which protocol driver opens an image named by a URL ("nbd://..."); a new
 * protocol (http, s3, rbd) adds its schemes there; rbd's is bare ("rbd:pool/image", no "//").
 */
#include "block.h"
#include "util.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

extern const BlockDriver bdrv_file;
extern const BlockDriver bdrv_memory;
extern const BlockDriver bdrv_blkdebug;
extern const BlockDriver bdrv_window;
extern const BlockDriver bdrv_raw;
extern const BlockDriver bdrv_qcow2;
extern const BlockDriver bdrv_vdi;
extern const BlockDriver bdrv_vpc;
extern const BlockDriver bdrv_vhdx;
extern const BlockDriver bdrv_vmdk;
extern const BlockDriver bdrv_qed;
extern const BlockDriver bdrv_qcow;
extern const BlockDriver bdrv_parallels;
extern const BlockDriver bdrv_ewf;
extern const BlockDriver bdrv_splitraw;
extern const BlockDriver bdrv_aff;
extern const BlockDriver bdrv_cloop;
extern const BlockDriver bdrv_bochs;
extern const BlockDriver bdrv_dmg;
extern const BlockDriver bdrv_nbd;
extern const BlockDriver bdrv_http;
extern const BlockDriver bdrv_s3;
extern const BlockDriver bdrv_luks;
extern const BlockDriver bdrv_rbd;

static const BlockDriver *const driver_table[] = {
    &bdrv_file,
    &bdrv_memory,
    &bdrv_nbd,
    &bdrv_rbd,
    &bdrv_http,
    &bdrv_s3,
    &bdrv_blkdebug,
    &bdrv_window,
    &bdrv_qcow2,
    &bdrv_vdi,
    &bdrv_vpc,
    &bdrv_vhdx,
    &bdrv_vmdk,
    &bdrv_qed,
    &bdrv_qcow,
    &bdrv_parallels,
    &bdrv_ewf,
    &bdrv_splitraw,
    &bdrv_aff,
    &bdrv_cloop,
    &bdrv_bochs,
    &bdrv_dmg,
    &bdrv_luks,
    &bdrv_raw,
    NULL
};

const BlockDriver *const *bdrv_driver_list(void)
{
    return driver_table;
}

const BlockDriver *bdrv_find_driver(const char *name)
{
    if (!name)
        return NULL;
    for (const BlockDriver *const *d = driver_table; *d; d++)
        if (strcmp((*d)->name, name) == 0)
            return *d;
    return NULL;
}

/* URL scheme -> protocol driver. A name "SCHEME://..." with a scheme listed here is opened by that driver;
 * any other name is a local file. */
static const struct {
    const char *scheme;
    const BlockDriver *drv;
} scheme_table[] = {
    { "nbd", &bdrv_nbd },
    { "nbds", &bdrv_nbd },
    { "nbd+unix", &bdrv_nbd },
    { "nbds+unix", &bdrv_nbd },
    { "nbd+vsock", &bdrv_nbd },
    { "nbds+vsock", &bdrv_nbd },
    { "http", &bdrv_http },
    { "https", &bdrv_http },
    { "s3", &bdrv_s3 },
};

/* Bare schemes, written "SCHEME:..." without "//" (qemu's "rbd:pool/image"): only that exact, lower-case
 * prefix, so "./rbd:x" or "RBD:x" stay local file names. */
static const struct {
    const char *scheme;
    const BlockDriver *drv;
} bare_scheme_table[] = {
    { "rbd", &bdrv_rbd },
};

/* The bare scheme name starts with ("rbd:"), NULL if none. */
static const BlockDriver *bare_scheme(const char *name, size_t *len)
{
    for (size_t i = 0; name && i < sizeof(bare_scheme_table) / sizeof(bare_scheme_table[0]); i++) {
        size_t n = strlen(bare_scheme_table[i].scheme);
        if (strncmp(name, bare_scheme_table[i].scheme, n) == 0 && name[n] == ':' && strncmp(name + n, "://", 3) != 0) {
            *len = n;
            return bare_scheme_table[i].drv;
        }
    }
    return NULL;
}

size_t bdrv_url_scheme_len(const char *name)
{
    size_t n = name ? strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-") : 0;
    return n && strncmp(name + n, "://", 3) == 0 ? n : 0;
}

bool bdrv_url_is_bare(const char *name)
{
    size_t n;
    return bare_scheme(name, &n) != NULL;
}

const BlockDriver *bdrv_find_protocol(const char *name)
{
    size_t n = bdrv_url_scheme_len(name);
    const BlockDriver *bare = bare_scheme(name, &n);
    if (bare)
        return bare;
    for (size_t i = 0; n && i < sizeof(scheme_table) / sizeof(scheme_table[0]); i++)
        if (strlen(scheme_table[i].scheme) == n && strncasecmp(name, scheme_table[i].scheme, n) == 0)
            return scheme_table[i].drv;
    return NULL;
}

/* A bare-scheme name's ":key=SECRET" option (rbd:pool/image:key=...) as ":key=***"; true if it had one. */
static bool redact_bare(const char *name, char *out, size_t len)
{
    size_t o = 0;
    bool found = false;
    for (const char *p = name; *p;) {
        bool key = p > name && p[-1] == ':' && (p < name + 2 || p[-2] != '\\') && strncmp(p, "key=", 4) == 0;
        if (!key) {
            if (o + 1 < len)
                out[o++] = *p;
            p++;
            continue;
        }
        found = true;
        for (const char *k = "key=***"; *k; k++)
            if (o + 1 < len)
                out[o++] = *k;
        for (p += 4; *p && *p != ':'; p++)
            if (*p == '\\' && p[1])
                p++;
    }
    if (len)
        out[MIN(o, len - 1)] = '\0';
    return found;
}

bool bdrv_url_redact(const char *name, char *out, size_t len)
{
    if (bdrv_url_is_bare(name))
        return redact_bare(name, out, len);
    size_t n = bdrv_url_scheme_len(name);
    const char *auth = n ? name + n + 3 : NULL;
    const char *end = auth ? auth + strcspn(auth, "/?#") : NULL;
    const char *at = NULL, *colon = NULL;
    for (const char *p = auth; p && p < end; p++)
        if (*p == '@')
            at = p;
    for (const char *p = auth; at && p < at && !colon; p++)
        if (*p == ':')
            colon = p;
    if (colon)
        snprintf(out, len, "%.*s***%s", (int)(colon + 1 - name), name, at);
    else
        snprintf(out, len, "%s", name);
    return colon != NULL;
}
