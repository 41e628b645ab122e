/* SPDX-License-Identifier: MIT */
/*
 * error.c - the Error type (one human-readable line plus an errno), daemon diagnostics (log_msg) and the
 * InfoList key/value list that drivers fill for `info`.  It owns wording helpers only; it knows nothing
 * about nodes, drivers or FUSE.
 */
#include "block.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int log_debug_enabled;
int log_quiet_enabled;

/* Error messages quote names taken from images (backing files, snapshots): a control character there
 * must not break the one-line rule of a refusal, so each becomes '?'. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

void error_setv(Error *err, int errnum, const char *fmt, va_list ap)
{
    if (!err || err->msg[0])
        return;
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    one_line(err->msg);
    err->errnum = errnum;
}

void error_set(Error *err, int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(err, errnum, fmt, ap);
    va_end(ap);
}

void log_msg(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (!log_quiet_enabled)
        fprintf(stderr, "imgfuse: %s\n", line);
}

static InfoItem *info_new_item(InfoList *l, const char *key)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 16;
        InfoItem *items = realloc(l->items, (size_t)cap * sizeof(*items));
        if (!items)
            return NULL;
        l->items = items;
        l->cap = cap;
    }
    InfoItem *it = &l->items[l->n++];
    memset(it, 0, sizeof(*it));
    snprintf(it->key, sizeof(it->key), "%s", key);
    return it;
}

void info_add_str(InfoList *l, const char *key, const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    int r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0)
        return;
    InfoItem *it = info_new_item(l, key);
    if (!it) {
        free(s);
        return;
    }
    it->str = s;
}

void info_add_int(InfoList *l, const char *key, int64_t v)
{
    InfoItem *it = info_new_item(l, key);
    if (it)
        it->num = v;
}

void info_add_bool(InfoList *l, const char *key, bool v)
{
    InfoItem *it = info_new_item(l, key);
    if (it) {
        it->num = v;
        it->is_bool = true;
    }
}

void info_free(InfoList *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->items[i].str);
    free(l->items);
    l->items = NULL;
    l->n = l->cap = 0;
}
