/* SPDX-License-Identifier: MIT */
/*
 * strbuf.c - a growable string used to build the text the front end shows (info, info.json, map,
 * generated files of the mount).  It knows JSON string escaping (always valid UTF-8 JSON: a byte that is
 * not UTF-8 becomes U+FFFD, and sb_json_member adds the exact bytes in hex as KEY_hex) and the escaping of
 * text output (control characters, backslash and non-UTF-8 bytes as \n, \\, \xNN: a string from an image
 * can neither forge a line nor reach the terminal as an escape), and nothing about images.
 */
#include <stdarg.h>
#include <stdbool.h>
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

/* Length of the valid UTF-8 sequence at p (1..4; 1 for ASCII), or 0 if the byte at p starts none
 * (a stray continuation byte, an overlong form, a surrogate, beyond U+10FFFF, or a truncated sequence). */
static size_t utf8_len(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    unsigned char lo = 0x80, hi = 0xbf;
    size_t n;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

bool str_is_utf8(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_len(p);
        if (!n)
            return false;
        p += n;
    }
    return true;
}

/* A C1 control character (U+0080..U+009F, bytes c2 80..c2 9f): some terminals act on it. */
static bool is_c1(const unsigned char *p, size_t n)
{
    return n == 2 && p[0] == 0xc2 && p[1] <= 0x9f;
}

void sb_json_str(StrBuf *sb, const char *s)
{
    sb_put(sb, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_len(p);
        switch (*p) {
        case '"': sb_put(sb, "\\\"", 2); break;
        case '\\': sb_put(sb, "\\\\", 2); break;
        case '\n': sb_put(sb, "\\n", 2); break;
        case '\t': sb_put(sb, "\\t", 2); break;
        case '\r': sb_put(sb, "\\r", 2); break;
        default:
            if (!n)
                sb_put(sb, "\\ufffd", 6); /* not UTF-8: sb_json_member adds the exact bytes as KEY_hex */
            else if (*p < 0x20 || *p == 0x7f)
                sb_printf(sb, "\\u%04x", *p);
            else if (is_c1(p, n))
                sb_printf(sb, "\\u%04x", p[1]);
            else
                sb_put(sb, (const char *)p, n);
        }
        p += n ? n : 1;
    }
    sb_put(sb, "\"", 1);
}

void sb_json_member(StrBuf *sb, const char *key, const char *value)
{
    sb_json_str(sb, key);
    sb_put(sb, ": ", 2);
    sb_json_str(sb, value);
    if (str_is_utf8(value))
        return;
    sb_put(sb, ", \"", 3);
    sb_text_str(sb, key); /* keys are the drivers' own ASCII names */
    sb_put(sb, "_hex\": \"", 8);
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        sb_printf(sb, "%02x", *p);
    sb_put(sb, "\"", 1);
}

void sb_text_str(StrBuf *sb, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_len(p);
        if (*p == '\\')
            sb_put(sb, "\\\\", 2);
        else if (*p == '\n')
            sb_put(sb, "\\n", 2);
        else if (*p == '\r')
            sb_put(sb, "\\r", 2);
        else if (*p == '\t')
            sb_put(sb, "\\t", 2);
        else if (!n || *p < 0x20 || *p == 0x7f)
            sb_printf(sb, "\\x%02x", *p);
        else if (is_c1(p, n))
            sb_printf(sb, "\\x%02x\\x%02x", p[0], p[1]);
        else
            sb_put(sb, (const char *)p, n);
        p += n ? n : 1;
    }
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
