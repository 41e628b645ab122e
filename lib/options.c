/* SPDX-License-Identifier: MIT */
/*
 * options.c - driver options: the "DRIVER.KEY=VALUE" list a BlockOpenOpts carries, checked against the
 * option tables the drivers declare (BlockDriver.options), and the lookups a driver calls in its open.
 * It knows no driver and no option by name: the tables say what exists, and bdrv_open (lib/open.c)
 * decides which nodes see which option.  Values are parsed the same way here and at validation, so a
 * driver's lookup never meets a value that was not checked first.
 */
#include "block_int.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int bdrv_opts_add(BlockOpenOpts *o, const char *item)
{
    const char *dot = strchr(item, '.'), *eq = strchr(item, '=');
    if (!dot || dot == item || (eq && eq < dot))
        return -EINVAL;
    if (o->n_driver_opts >= MAX_DRIVER_OPTS)
        return -E2BIG;
    o->driver_opts[o->n_driver_opts++] = item;
    return 0;
}

/* Splits item into its driver name (copied into drv), key (copied into key) and value (NULL: none). */
static bool split_item(const char *item, char *drv, size_t drvlen, char *key, size_t keylen, const char **value)
{
    const char *dot = strchr(item, '.');
    if (!dot || dot == item || (size_t)(dot - item) >= drvlen)
        return false;
    const char *eq = strchr(dot + 1, '=');
    size_t klen = eq ? (size_t)(eq - dot - 1) : strlen(dot + 1);
    if (klen >= keylen)
        return false;
    memcpy(drv, item, (size_t)(dot - item));
    drv[dot - item] = '\0';
    memcpy(key, dot + 1, klen);
    key[klen] = '\0';
    *value = eq ? eq + 1 : NULL;
    return true;
}

static const BlockOptionSpec *find_spec(const BlockDriver *drv, const char *key)
{
    for (const BlockOptionSpec *sp = drv->options; sp && sp->name; sp++)
        if (strcmp(sp->name, key) == 0)
            return sp;
    return NULL;
}

static bool parse_int(const char *v, int64_t *out)
{
    if (!v || !*v)
        return false;
    errno = 0;
    char *end;
    long long n = strtoll(v, &end, 10);
    if (errno || *end)
        return false;
    *out = n;
    return true;
}

int bdrv_parse_bool(const char *v)
{
    static const char *const yes[] = { "on", "true", "yes", "1" }, *const no[] = { "off", "false", "no", "0" };
    if (!v)
        return 1;
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return 1;
        if (strcasecmp(v, no[i]) == 0)
            return 0;
    }
    return -1;
}

/* NULL if value suits the type, else what is wrong with it. */
static const char *value_problem(BlockOptionType type, const char *value)
{
    int64_t n;
    if (type == BDRV_OPT_BOOL)
        return bdrv_parse_bool(value) < 0 ? "not on or off" : NULL;
    if (!value)
        return "needs a value";
    switch (type) {
    case BDRV_OPT_STRING: return value[0] ? NULL : "empty value";
    case BDRV_OPT_SIZE: return parse_size(value) < 0 ? "not a size" : NULL;
    case BDRV_OPT_INT: return parse_int(value, &n) ? NULL : "not an integer";
    default: return "unknown type";
    }
}

/* "data-file, l2-cache-size" for the message on an unknown key. */
static void list_keys(const BlockDriver *drv, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (const BlockOptionSpec *sp = drv->options; sp && sp->name && used < len; sp++) {
        int n = snprintf(out + used, len - used, "%s%s", used ? ", " : "", sp->name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static int validate_item(const char *item, const char *filename, Error *err)
{
    char dname[64], key[64], keys[512];
    const char *value;
    if (!split_item(item, dname, sizeof dname, key, sizeof key, &value)) {
        error_set(err, EINVAL, "%s: driver option '%s': not DRIVER.KEY=VALUE", filename, item);
        return -EINVAL;
    }
    const BlockDriver *drv = bdrv_find_driver(dname);
    if (!drv) {
        error_set(err, EINVAL, "%s: driver option '%s': no driver '%s'", filename, item, dname);
        return -EINVAL;
    }
    const BlockOptionSpec *sp = find_spec(drv, key);
    if (!sp) {
        list_keys(drv, keys, sizeof keys);
        error_set(err, EINVAL, "%s: %s option '%s': unknown option (%s%s)", filename, dname, key,
                  keys[0] ? "it has: " : "it has none", keys);
        return -EINVAL;
    }
    const char *why = value_problem(sp->type, value);
    if (why) {
        if (value)
            error_set(err, EINVAL, "%s: %s option '%s': %s: '%s'", filename, dname, key, why, value);
        else
            error_set(err, EINVAL, "%s: %s option '%s': %s", filename, dname, key, why);
        return -EINVAL;
    }
    return 0;
}

int bdrv_opts_validate(const BlockOpenOpts *o, const char *filename, Error *err)
{
    for (int i = 0; o && i < o->n_driver_opts; i++) {
        int r = validate_item(o->driver_opts[i], filename, err);
        if (r < 0)
            return r;
    }
    return 0;
}

bool bdrv_opts_name_driver(const BlockOpenOpts *o, const BlockDriver *drv)
{
    size_t n = strlen(drv->name);
    for (int i = 0; o && i < o->n_driver_opts; i++)
        if (strncmp(o->driver_opts[i], drv->name, n) == 0 && o->driver_opts[i][n] == '.')
            return true;
    return false;
}

/* The item of o that sets KEY of driver drvname last; *value its value (NULL: bare KEY). */
static const char *find_item(const BlockOpenOpts *o, const char *drvname, const char *key, const char **value)
{
    size_t dn = strlen(drvname), kn = strlen(key);
    for (int i = o ? o->n_driver_opts - 1 : -1; i >= 0; i--) {
        const char *it = o->driver_opts[i];
        if (strncmp(it, drvname, dn) != 0 || it[dn] != '.' || strncmp(it + dn + 1, key, kn) != 0)
            continue;
        const char *end = it + dn + 1 + kn;
        if (*end == '=' || *end == '\0') {
            *value = *end == '=' ? end + 1 : NULL;
            return it;
        }
    }
    return NULL;
}

const char *bdrv_opts_find(const BlockOpenOpts *o, const char *drvname, const char *key)
{
    const char *value = NULL;
    return find_item(o, drvname, key, &value) ? (value ? value : "on") : NULL;
}

const char *bdrv_opt_type_name(BlockOptionType type)
{
    switch (type) {
    case BDRV_OPT_SIZE: return "SIZE";
    case BDRV_OPT_INT: return "INT";
    case BDRV_OPT_BOOL: return "on|off";
    default: return "STRING";
    }
}

/* The checked value of KEY for bs, or NULL (not given, not declared, or not valid). */
static const char *node_value(const BlockNode *bs, const char *key, BlockOptionType type, bool *bare)
{
    const BlockOptionSpec *sp = bs && bs->drv ? find_spec(bs->drv, key) : NULL;
    const char *value = NULL;
    *bare = false;
    if (!sp || sp->type != type || !find_item(bs->opts, bs->drv->name, key, &value))
        return NULL;
    if (value_problem(type, value))
        return NULL;
    *bare = !value;
    return value;
}

const char *bdrv_opt_str(const BlockNode *bs, const char *key)
{
    bool bare;
    return node_value(bs, key, BDRV_OPT_STRING, &bare);
}

int64_t bdrv_opt_size(const BlockNode *bs, const char *key, int64_t dflt)
{
    bool bare;
    const char *v = node_value(bs, key, BDRV_OPT_SIZE, &bare);
    return v ? parse_size(v) : dflt;
}

int64_t bdrv_opt_int(const BlockNode *bs, const char *key, int64_t dflt)
{
    bool bare;
    int64_t n;
    const char *v = node_value(bs, key, BDRV_OPT_INT, &bare);
    return v && parse_int(v, &n) ? n : dflt;
}

bool bdrv_opt_bool(const BlockNode *bs, const char *key, bool dflt)
{
    bool bare;
    const char *v = node_value(bs, key, BDRV_OPT_BOOL, &bare);
    return v || bare ? bdrv_parse_bool(v) == 1 : dflt;
}

void bdrv_opts_drop_top_only(BlockOpenOpts *o)
{
    int kept = 0;
    for (int i = 0; i < o->n_driver_opts; i++) {
        char dname[64], key[64];
        const char *value;
        const BlockDriver *drv = NULL;
        const BlockOptionSpec *sp = NULL;
        if (split_item(o->driver_opts[i], dname, sizeof dname, key, sizeof key, &value) &&
            (drv = bdrv_find_driver(dname)))
            sp = find_spec(drv, key);
        if (sp && !(sp->flags & BDRV_OPT_TOP_ONLY))
            o->driver_opts[kept++] = o->driver_opts[i];
    }
    for (int i = kept; i < o->n_driver_opts; i++)
        o->driver_opts[i] = NULL;
    o->n_driver_opts = kept;
}

int bdrv_create_opts_each(const char *options, int (*fn)(const char *key, const char *value, void *opaque),
                          void *opaque)
{
    if (!options || !options[0])
        return 0;
    char *copy = strdup(options);
    if (!copy)
        return -ENOMEM;
    int ret = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); ret == 0 && tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (eq)
            *eq = '\0';
        ret = fn(tok, eq ? eq + 1 : NULL, opaque);
    }
    free(copy);
    return ret;
}
