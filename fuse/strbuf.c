/*
 * strbuf.c - a growable string used to build the text the front end shows (info, info.json, map,
 * generated files of the mount).  It knows JSON string escaping and nothing about images.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgfuse.h"

void sb_init(StrBuf *sb)
{
    sb->s = NULL;
    sb->len = sb->cap = 0;
}

void sb_free(StrBuf *sb)
{
    free(sb->s);
    sb_init(sb);
}

static void sb_reserve(StrBuf *sb, size_t extra)
{
    if (sb->len + extra + 1 <= sb->cap)
        return;
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < sb->len + extra + 1)
        cap *= 2;
    char *s = realloc(sb->s, cap);
    if (!s) {
        fputs("imgfuse: out of memory\n", stderr);
        abort();
    }
    sb->s = s;
    sb->cap = cap;
}

void sb_put(StrBuf *sb, const char *s, size_t n)
{
    sb_reserve(sb, n);
    memcpy(sb->s + sb->len, s, n);
    sb->len += n;
    sb->s[sb->len] = '\0';
}

void sb_printf(StrBuf *sb, const char *fmt, ...)
{
    sb_reserve(sb, 128);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(sb->s + sb->len, sb->cap - sb->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        sb->s[sb->len] = '\0';
        return;
    }
    if ((size_t)n >= sb->cap - sb->len) {
        sb_reserve(sb, (size_t)n);
        va_start(ap, fmt);
        vsnprintf(sb->s + sb->len, sb->cap - sb->len, fmt, ap);
        va_end(ap);
    }
    sb->len += (size_t)n;
}

void sb_json_str(StrBuf *sb, const char *s)
{
    sb_put(sb, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': sb_put(sb, "\\\"", 2); break;
        case '\\': sb_put(sb, "\\\\", 2); break;
        case '\n': sb_put(sb, "\\n", 2); break;
        case '\t': sb_put(sb, "\\t", 2); break;
        case '\r': sb_put(sb, "\\r", 2); break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                sb_printf(sb, "\\u%04x", *p);
            else
                sb_put(sb, (const char *)p, 1);
        }
    }
    sb_put(sb, "\"", 1);
}

char *sb_steal(StrBuf *sb, size_t *len)
{
    if (!sb->s)
        sb_put(sb, "", 0);
    char *s = sb->s;
    if (len)
        *len = sb->len;
    sb_init(sb);
    return s;
}
