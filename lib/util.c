/* SPDX-License-Identifier: MIT */
/*
 * util.c - the small helpers of util.h that are not inline: aligned zeroed buffers, the fast all-zero
 * test, size parsing and formatting, the directory part of a path (and a name
 * beside it), and the monotonic clock.  Nothing
 * here knows about images or nodes.
 */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void *aligned_alloc_zero(size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, size ? size : 1) != 0)
        return NULL;
    memset(p, 0, size ? size : 1);
    return p;
}

bool buffer_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len && ((uintptr_t)p & (sizeof(uint64_t) - 1))) {
        if (*p)
            return false;
        p++;
        len--;
    }
    const uint64_t *w = (const uint64_t *)(const void *)p;
    while (len >= 4 * sizeof(uint64_t)) {
        if (w[0] | w[1] | w[2] | w[3])
            return false;
        w += 4;
        len -= 4 * sizeof(uint64_t);
    }
    p = (const uint8_t *)w;
    while (len--)
        if (*p++)
            return false;
    return true;
}

int64_t parse_size(const char *s)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    uint64_t mult = 1;
    switch (*end) {
    case '\0': break;
    case 'b': case 'B': mult = 1; end++; break;
    case 'k': case 'K': mult = KiB; end++; break;
    case 'm': case 'M': mult = MiB; end++; break;
    case 'g': case 'G': mult = GiB; end++; break;
    case 't': case 'T': mult = TiB; end++; break;
    default: return -1;
    }
    if (mult != 1 && (*end == 'i' || *end == 'I') && (end[1] == 'B' || end[1] == 'b'))
        end += 2;
    else if (mult != 1 && (*end == 'B' || *end == 'b'))
        end++;
    if (*end)
        return -1;
    uint64_t r;
    if (!mul_ok_u64(v, mult, &r) || r > (uint64_t)INT64_MAX)
        return -1;
    return (int64_t)r;
}

const char *format_size(uint64_t v, char *buf, size_t len)
{
    static const char *const units[] = { "TiB", "GiB", "MiB", "KiB" };
    static const uint64_t scale[] = { TiB, GiB, MiB, KiB };
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (v && v % scale[i] == 0) {
            snprintf(buf, len, "%" PRIu64 " %s", v / scale[i], units[i]);
            return buf;
        }
    }
    snprintf(buf, len, "%" PRIu64 " bytes", v);
    return buf;
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t now_ms(void)
{
    return (int64_t)(now_ns() / 1000000);
}

void path_dir_of(const char *path, char *out, size_t len)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, len, ".");
    else if (slash == path)
        snprintf(out, len, "/");
    else
        snprintf(out, len, "%.*s", (int)(slash - path), path);
}

void path_beside(const char *image_path, const char *name, char *out, size_t len)
{
    char dir[PATH_MAX];
    path_dir_of(image_path, dir, sizeof(dir));
    if (name[0] == '/')
        snprintf(out, len, "%s", name);
    else
        snprintf(out, len, "%s/%s", dir, name);
}

const char *path_base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

static uint32_t ld_16(const uint8_t *p, bool big_endian)
{
    return big_endian ? ld_be16(p) : ld_le16(p);
}

/* One code point as UTF-8 into enc; its length. */
static size_t utf8_encode(uint32_t c, uint8_t enc[4])
{
    size_t len = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    if (len == 1) {
        enc[0] = (uint8_t)c;
        return 1;
    }
    for (size_t k = len - 1; k > 0; k--, c >>= 6)
        enc[k] = (uint8_t)(0x80 | (c & 0x3F));
    enc[0] = (uint8_t)((0xF00u >> len) | c);
    return len;
}

bool utf16_to_utf8(const uint8_t *in, size_t nbytes, bool big_endian, bool windows_path, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i + 1 < nbytes; i += 2) {
        uint32_t c = ld_16(in + i, big_endian);
        if (c == 0)
            break;
        uint32_t lo = c >= 0xD800 && c <= 0xDBFF && i + 3 < nbytes ? ld_16(in + i + 2, big_endian) : 0;
        if (lo >= 0xDC00 && lo <= 0xDFFF) {
            c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
            i += 2;
        } else if (c >= 0xD800 && c <= 0xDFFF) {
            c = '?';
        }
        if (c < 0x20 || c == 0x7f)
            c = '?';
        if (windows_path && c == '\\')
            c = '/';
        uint8_t enc[4];
        size_t len = utf8_encode(c, enc);
        if (o + len >= outlen)
            break;
        memcpy(out + o, enc, len);
        o += len;
    }
    out[o] = '\0';
    return o > 0;
}

size_t lower_bound_by_end(const void *arr, size_t n, uint64_t key, uint64_t (*end_of)(const void *arr, size_t i))
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (end_of(arr, mid) <= key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}
