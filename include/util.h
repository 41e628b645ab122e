/* SPDX-License-Identifier: MIT */
/*
 * util.h - small helpers shared by every layer: big/little-endian loads and stores, alignment
 * arithmetic, overflow-checked additions and multiplications for sizes computed from untrusted header
 * fields, aligned buffer allocation and a fast all-zero test.  Nothing here knows about images.
 */
#ifndef IMGFUSE_UTIL_H
#define IMGFUSE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define KiB (1024LL)
#define MiB (1024LL * 1024)
#define GiB (1024LL * 1024 * 1024)
#define TiB (1024LL * 1024 * 1024 * 1024)

static inline int64_t align_down(int64_t v, int64_t a) { return v / a * a; }
static inline int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }
static inline bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

static inline uint16_t ld_be16(const void *p) { const uint8_t *b = p; return (uint16_t)(b[0] << 8 | b[1]); }
static inline uint32_t ld_be32(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}
static inline uint64_t ld_be64(const void *p) { const uint8_t *b = p; return (uint64_t)ld_be32(b) << 32 | ld_be32(b + 4); }
static inline void st_be16(void *p, uint16_t v) { uint8_t *b = p; b[0] = v >> 8; b[1] = (uint8_t)v; }
static inline void st_be32(void *p, uint32_t v)
{
    uint8_t *b = p;
    b[0] = v >> 24; b[1] = (uint8_t)(v >> 16); b[2] = (uint8_t)(v >> 8); b[3] = (uint8_t)v;
}
static inline void st_be64(void *p, uint64_t v) { uint8_t *b = p; st_be32(b, v >> 32); st_be32(b + 4, (uint32_t)v); }
static inline uint16_t ld_le16(const void *p) { const uint8_t *b = p; return (uint16_t)(b[1] << 8 | b[0]); }
static inline uint32_t ld_le32(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)b[3] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[1] << 8 | b[0];
}
static inline uint64_t ld_le64(const void *p) { const uint8_t *b = p; return (uint64_t)ld_le32(b + 4) << 32 | ld_le32(b); }
static inline void st_le32(void *p, uint32_t v)
{
    uint8_t *b = p;
    b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); b[2] = (uint8_t)(v >> 16); b[3] = v >> 24;
}
static inline void st_le64(void *p, uint64_t v) { uint8_t *b = p; st_le32(b, (uint32_t)v); st_le32(b + 4, v >> 32); }

/* Overflow-checked arithmetic: return false (and leave *r unspecified) on overflow. */
static inline bool add_ok_u64(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_add_overflow(a, b, r); }
static inline bool mul_ok_u64(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_mul_overflow(a, b, r); }
static inline bool add_ok_i64(int64_t a, int64_t b, int64_t *r) { return !__builtin_add_overflow(a, b, r); }
/* Whether the byte ranges [a, a + alen) and [b, b + blen) overlap (callers keep the ends in range). */
static inline bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* Buffer aligned to 4096 bytes (enough for O_DIRECT on every device we meet). NULL on failure. */
void *aligned_alloc_zero(size_t size);

/* In an array of n runs sorted by start and not overlapping, the index of the first run that ends after
 * key (end_of(arr, i): where run i ends), n if none: a binary search. */
size_t lower_bound_by_end(const void *arr, size_t n, uint64_t key, uint64_t (*end_of)(const void *arr, size_t i));
/* True if the whole buffer is zero; word-wise with early exit. */
bool buffer_is_zero(const void *buf, size_t len);

/* Parse "123", "4k", "1M", "2G", "1T" (binary units). Returns -1 on a bad string. */
int64_t parse_size(const char *s);
/* Format a byte count as "1 GiB" / "64 KiB" / "1000001 bytes" into buf. */
const char *format_size(uint64_t v, char *buf, size_t len);

/* The directory part of path, as given: "." for a bare name, "/" for a name in the root. */
void path_dir_of(const char *path, char *out, size_t len);
/* The last component of path, for names and messages: what follows the last '/', or all of path when
 * nothing does (no slash, or a trailing one). */
const char *path_base_of(const char *path);
/* A file name as an image names it (a backing file, an extent): an absolute name as it is, a relative one in
 * the directory of image_path (path_dir_of). Truncated to len like snprintf. */
void path_beside(const char *image_path, const char *name, char *out, size_t len);

/* Monotonic clock in nanoseconds. */
uint64_t now_ns(void);
/* Milliseconds of the monotonic clock (deadlines of network requests). */
int64_t now_ms(void);

/* UTF-16 (big- or little-endian) to UTF-8, up to a NUL or nbytes, into out (outlen bytes, always
 * terminated; a character that does not fit ends it). Unpaired surrogates and control characters become
 * '?'; with windows_path, '\' becomes '/'. False if nothing fits. */
bool utf16_to_utf8(const uint8_t *in, size_t nbytes, bool big_endian, bool windows_path, char *out, size_t outlen);

#endif
