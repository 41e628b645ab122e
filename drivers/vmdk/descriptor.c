/* SPDX-License-Identifier: MIT */
/*
 * descriptor.c - the VMDK text descriptor (standalone, or embedded in a hosted sparse extent), parsed
 * defensively: bounded lines, known keys (CID, parentCID, parentFileNameHint, createType), extent lines
 * ("RW 2048 SPARSE \"name.vmdk\" 0") into an ordered list.  It knows nothing of extent files, nodes or
 * the binary layout.
 */
#include "vmdk.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- the descriptor */

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static bool parse_u64(const char *s, char **end, uint64_t *out)
{
    if (!isdigit((unsigned char)*s))
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, end, 10);
    if (errno)
        return false;
    *out = v;
    return true;
}

static bool parse_cid(const char *v, uint32_t *out)
{
    size_t n = strlen(v);
    if (n == 0 || n > 8)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)v[i]))
            return false;
    *out = (uint32_t)strtoul(v, NULL, 16);
    return true;
}

/* Copies a value, without surrounding double quotes, into out; false if it does not fit or is unterminated. */
static bool unquote(const char *v, char *out, size_t outlen)
{
    size_t n = strlen(v);
    if (n && v[0] == '"') {
        if (n < 2 || v[n - 1] != '"')
            return false;
        v++;
        n -= 2;
    }
    if (n >= outlen)
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

/* RW 4192256 SPARSE "disk-s001.vmdk"    or    RW 2048 FLAT "disk-flat.vmdk" 0 */
static bool parse_extent_line(char *line, DescExtent *e)
{
    char *p = line, *end;
    size_t n = strcspn(p, " \t");
    if (n == 0 || n >= sizeof(e->access))
        return false;
    memcpy(e->access, p, n);
    e->access[n] = '\0';
    p = trim(p + n);
    if (!parse_u64(p, &end, &e->sectors))
        return false;
    p = trim(end);
    n = strcspn(p, " \t");
    if (n == 0 || n >= sizeof(e->type))
        return false;
    memcpy(e->type, p, n);
    e->type[n] = '\0';
    p = trim(p + n);
    e->offset = 0;
    e->name[0] = '\0';
    if (strcmp(e->type, "ZERO") == 0 && *p == '\0')
        return true;
    if (*p != '"')
        return false;
    char *close = strchr(p + 1, '"');
    if (!close || close == p + 1 || (size_t)(close - p - 1) >= sizeof(e->name))
        return false;
    memcpy(e->name, p + 1, (size_t)(close - p - 1));
    e->name[close - p - 1] = '\0';
    p = trim(close + 1);
    if (*p == '\0')
        return true;
    return parse_u64(p, &end, &e->offset) && *trim(end) == '\0';
}

static bool is_extent_line(const char *line)
{
    return strncmp(line, "RW ", 3) == 0 || strncmp(line, "RDONLY ", 7) == 0 || strncmp(line, "NOACCESS ", 9) == 0;
}

static int desc_key_value(Descriptor *d, char *line, int lineno, Error *err)
{
    char *eq = strchr(line, '=');
    char *key = line;
    size_t klen = (size_t)(eq - line);
    while (klen && (key[klen - 1] == ' ' || key[klen - 1] == '\t'))
        klen--;
    for (size_t i = 0; i < klen; i++)
        if (!isalnum((unsigned char)key[i]) && key[i] != '.' && key[i] != '_' && key[i] != '-')
            klen = 0;
    if (klen == 0) {
        error_set(err, EINVAL, "descriptor line %d is neither a comment, a key = value pair nor an extent",
                  lineno);
        return -EINVAL;
    }
    key[klen] = '\0';
    char *val = trim(eq + 1);
    bool ok = true;
    if (strcmp(key, "CID") == 0)
        ok = d->has_cid = parse_cid(val, &d->cid);
    else if (strcmp(key, "parentCID") == 0)
        ok = d->has_parent_cid = parse_cid(val, &d->parent_cid);
    else if (strcmp(key, "createType") == 0)
        ok = unquote(val, d->create_type, sizeof(d->create_type));
    else if (strcmp(key, "parentFileNameHint") == 0)
        ok = d->has_parent_hint = unquote(val, d->parent_hint, sizeof(d->parent_hint));
    else if (strcmp(key, "version") == 0)
        ok = strcmp(val, "1") == 0 || strcmp(val, "2") == 0 || strcmp(val, "3") == 0;
    if (!ok) {
        error_set(err, EINVAL, "descriptor line %d: bad value for %s", lineno, key);
        return -EINVAL;
    }
    return 0;
}

static int desc_add_extent(Descriptor *d, char *line, int lineno, Error *err)
{
    if (d->n_ext >= VMDK_MAX_EXTENTS) {
        error_set(err, EINVAL, "the descriptor names more than %d extents", VMDK_MAX_EXTENTS);
        return -EINVAL;
    }
    if (d->n_ext % 16 == 0) {
        DescExtent *n = realloc(d->ext, sizeof(*n) * (size_t)(d->n_ext + 16));
        if (!n) {
            error_set(err, ENOMEM, "out of memory");
            return -ENOMEM;
        }
        d->ext = n;
    }
    if (!parse_extent_line(line, &d->ext[d->n_ext])) {
        error_set(err, EINVAL, "descriptor line %d is not a valid extent line", lineno);
        return -EINVAL;
    }
    d->n_ext++;
    return 0;
}

/* Parses len bytes of descriptor text (it ends at the first NUL: embedded descriptors are padded). */
int vmdk_desc_parse(Descriptor *d, const char *text, size_t len, Error *err)
{
    memset(d, 0, sizeof(*d));
    len = strnlen(text, len);
    char line[VMDK_MAX_LINE + 1];
    int lineno = 0;
    for (size_t pos = 0; pos < len;) {
        size_t n = 0;
        while (pos + n < len && text[pos + n] != '\n')
            n++;
        lineno++;
        if (n > VMDK_MAX_LINE) {
            error_set(err, EINVAL, "descriptor line %d is longer than %d bytes", lineno, VMDK_MAX_LINE);
            return -EINVAL;
        }
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos += n + 1;
        char *l = trim(line);
        int r = 0;
        if (*l == '\0' || *l == '#')
            continue;
        if (is_extent_line(l))
            r = desc_add_extent(d, l, lineno, err);
        else if (strchr(l, '='))
            r = desc_key_value(d, l, lineno, err);
        else {
            error_set(err, EINVAL, "descriptor line %d is neither a comment, a key = value pair nor an extent",
                      lineno);
            r = -EINVAL;
        }
        if (r < 0)
            return r;
    }
    return 0;
}
