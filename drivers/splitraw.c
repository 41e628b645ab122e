/* SPDX-License-Identifier: MIT */
/*
 * splitraw.c - the "splitraw" format driver: a raw disk cut into numbered pieces (disk.001, disk.002, ...;
 * disk.00, disk.01, ... as `split -d` names them; disk.aa, disk.ab, ... as plain `split` does), of any
 * sizes, shown as one disk.  The image named is the first piece; the next names are made by counting the
 * suffix up (same width, carrying over) until a name does not exist.  Each piece must pass the
 * backing-name policy (inside the image's directory or a --backing-dir, a regular file) and may not be a
 * piece already in the series; it is opened read-only as a protocol node of the core, and block status
 * hands out host offsets in it, so reads go through bdrv_read_mapped and may be spliced.
 * Probing: a name whose suffix is a first piece (.000, .001, .00, .01, .aa, ...) scores just above raw,
 * and only when the second piece exists beside it; content is never looked at (a split raw disk has no
 * magic).  `-f splitraw` always works.  Read-only: writes go to an --overlay.  It knows nothing of other
 * formats.
 */
#include "block.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SPLITRAW_MAX_SEGMENTS 10000   /* each piece holds a file descriptor */
#define SPLITRAW_MAX_SUFFIX 8         /* .00000001 */

typedef struct SplitRawState {
    BlockNode **segs;                 /* segs[0] = bs->file (not owned) */
    char **names;
    int64_t *end;                     /* end[i]: disk offset just past piece i */
    int n;
} SplitRawState;

/* Where the suffix of name starts (after its last '.') if it is 2 to 8 digits or 2 to 8 lower-case
 * letters; -1 if not. *digits says which. */
static ssize_t splitraw_suffix(const char *name, bool *digits)
{
    const char *dot = strrchr(name, '.'), *slash = strrchr(name, '/');
    if (!dot || (slash && slash > dot))
        return -1;
    size_t len = strlen(dot + 1);
    if (len < 2 || len > SPLITRAW_MAX_SUFFIX)
        return -1;
    bool all_digits = true, all_lower = true;
    for (const char *p = dot + 1; *p; p++) {
        all_digits &= isdigit((unsigned char)*p) != 0;
        all_lower &= *p >= 'a' && *p <= 'z';
    }
    if (!all_digits && !all_lower)
        return -1;
    *digits = all_digits;
    return dot + 1 - name;
}

/* Is the suffix the first piece of a series: all 'a', or digits worth 0 or 1? */
static bool splitraw_is_first(const char *suffix, bool digits)
{
    size_t len = strlen(suffix);
    for (size_t i = 0; i + 1 < len; i++)
        if (suffix[i] != (digits ? '0' : 'a'))
            return false;
    char last = suffix[len - 1];
    return digits ? (last == '0' || last == '1') : last == 'a';
}

/* Counts the suffix of name (from offset at) up by one, in place; false when it would overflow. */
static bool splitraw_next(char *name, size_t at, bool digits)
{
    char lo = digits ? '0' : 'a', hi = digits ? '9' : 'z';
    for (size_t i = strlen(name); i-- > at;) {
        if (name[i] != hi) {
            name[i]++;
            return true;
        }
        name[i] = lo;
    }
    return false;
}

static int splitraw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)buf;
    (void)len;
    bool digits;
    ssize_t at = filename ? splitraw_suffix(filename, &digits) : -1;
    if (at < 0 || !splitraw_is_first(filename + at, digits) || strlen(filename) >= PATH_MAX)
        return 0;
    char next[PATH_MAX];
    struct stat st;
    memcpy(next, filename, strlen(filename) + 1);
    return splitraw_next(next, (size_t)at, digits) && stat(next, &st) == 0 && S_ISREG(st.st_mode) ? 2 : 0;
}

/* Why the next piece name may not join the series (NULL: it may); ids holds the earlier pieces. */
static const char *splitraw_refusal(BlockNode *bs, const BlockOpenOpts *opts, const char *name,
                                    const struct stat *ids, int n, struct stat *st)
{
    const char *why = bdrv_named_file_refusal(bs, opts, name);
    if (why)
        return why;
    if (!S_ISREG(st->st_mode))
        return "not a regular file";
    for (int j = 0; j < n; j++)
        if (ids[j].st_dev == st->st_dev && ids[j].st_ino == st->st_ino)
            return "it is the same file as an earlier piece (the series loops)";
    return NULL;
}

/* Adds piece node (named name) to the series. */
static int splitraw_append(SplitRawState *s, BlockNode *node, const char *name, Error *err)
{
    int64_t len = bdrv_getlength(node), start = s->n ? s->end[s->n - 1] : 0, end;
    if (len < 0 || !add_ok_i64(start, len, &end)) {
        error_set(err, EFBIG, "piece '%s': %s", name, len < 0 ? strerror((int)-len) : "the disk would pass 8 EiB");
        return len < 0 ? (int)len : -EFBIG;
    }
    char *copy = strdup(name);
    if (!copy) {
        error_set(err, ENOMEM, "%s", strerror(ENOMEM));
        return -ENOMEM;
    }
    s->segs[s->n] = node;
    s->names[s->n] = copy;
    s->end[s->n] = end;
    s->n++;
    return 0;
}

static void splitraw_close(BlockNode *bs);

static int splitraw_open_node(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    SplitRawState *s = bs->opaque;
    bool digits;
    ssize_t at = splitraw_suffix(bs->filename, &digits);
    if (!bs->read_only) {
        error_set(err, EROFS, "split raw images are read-only: mount without --rw (--overlay FILE gives a "
                  "writable view)");
        return -EROFS;
    }
    bool memory = strcmp(bs->file->drv->name, "memory") == 0;
    if (!memory && (at < 0 || strlen(bs->filename) >= PATH_MAX)) {
        error_set(err, EINVAL, "not a piece of a split raw image: the name must end in a piece number such as "
                  ".001, .00 or .aa");
        return -EINVAL;
    }
    s->segs = calloc(SPLITRAW_MAX_SEGMENTS, sizeof *s->segs);
    s->names = calloc(SPLITRAW_MAX_SEGMENTS, sizeof *s->names);
    s->end = calloc(SPLITRAW_MAX_SEGMENTS, sizeof *s->end);
    struct stat *ids = calloc(SPLITRAW_MAX_SEGMENTS, sizeof *ids);
    int r = s->segs && s->names && s->end && ids ? splitraw_append(s, bs->file, bs->filename, err) : -ENOMEM;
    if (r == -ENOMEM && !err->msg[0])
        error_set(err, ENOMEM, "%s", strerror(ENOMEM));
    if (r == 0 && !memory && stat(bs->filename, &ids[0]) < 0)
        memset(&ids[0], 0, sizeof ids[0]);
    char name[PATH_MAX];
    if (!memory)
        memcpy(name, bs->filename, strlen(bs->filename) + 1);
    struct stat st;
    while (r == 0 && !memory && splitraw_next(name, (size_t)at, digits) && stat(name, &st) == 0) {
        const char *why = splitraw_refusal(bs, opts, name, ids, s->n, &st);
        if (!why && s->n == SPLITRAW_MAX_SEGMENTS)
            why = "more than 10000 pieces";
        if (why) {
            error_set(err, EPERM, "piece '%s' refused: %s", name, why);
            r = -EPERM;
            break;
        }
        ids[s->n] = st;
        BlockNode *node = bdrv_open_file(name, opts, true, err);
        r = node ? splitraw_append(s, node, name, err) : -(err->errnum ? err->errnum : EIO);
        if (r < 0 && node)
            bdrv_close(node);
    }
    free(ids);
    return r;
}

/* The core does not call close after a failed open: undo what was done. */
static int splitraw_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    int r = splitraw_open_node(bs, opts, err);
    if (r < 0)
        splitraw_close(bs);
    return r;
}

static void splitraw_close(BlockNode *bs)
{
    SplitRawState *s = bs->opaque;
    for (int i = 0; i < s->n; i++) {
        if (i > 0)
            bdrv_close(s->segs[i]);
        free(s->names[i]);
    }
    free(s->segs);
    free(s->names);
    free(s->end);
    memset(s, 0, sizeof *s);
}

static int64_t splitraw_getlength(BlockNode *bs)
{
    SplitRawState *s = bs->opaque;
    return s->end[s->n - 1];
}

/* The piece holding disk offset off (< the disk's length): the first whose end lies past it. */
static int splitraw_find(const SplitRawState *s, int64_t off)
{
    int lo = 0, hi = s->n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (s->end[mid] > off)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static int splitraw_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    SplitRawState *s = bs->opaque;
    int i = splitraw_find(s, offset);
    int64_t start = i ? s->end[i - 1] : 0, n = MIN(bytes, s->end[i] - offset);
    int r = bdrv_block_status(s->segs[i], offset - start, n, st);
    if (r < 0)
        return r;
    st->flags |= BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    st->host_offset = offset - start;
    st->host_file = s->segs[i];
    st->bytes = MIN(st->bytes > 0 ? st->bytes : n, n);
    return 0;
}

static int splitraw_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    (void)opaque;
    return splitraw_block_status(bs, offset, bytes, st);
}

static const BlockReadMap splitraw_read_map = { .map = splitraw_map };

static int splitraw_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    return bdrv_read_mapped(bs, offset, bytes, buf, &splitraw_read_map, NULL);
}

static int64_t splitraw_get_allocated_size(BlockNode *bs)
{
    SplitRawState *s = bs->opaque;
    int64_t total = 0;
    for (int i = 0; i < s->n; i++) {
        int64_t n = bdrv_get_allocated_size(s->segs[i]);
        if (n < 0)
            return n;
        total += n;
    }
    return total;
}

static void splitraw_get_info(BlockNode *bs, InfoList *info)
{
    SplitRawState *s = bs->opaque;
    info_add_int(info, "segment_files", s->n);
    for (int i = 0; i < s->n; i++) {
        char key[32];
        snprintf(key, sizeof key, "segment_%d", i + 1);
        info_add_str(info, key, "%s (%" PRId64 " bytes)", s->names[i], s->end[i] - (i ? s->end[i - 1] : 0));
    }
}

static void splitraw_get_facts(BlockNode *bs, BlockDriverFacts *f)
{
    SplitRawState *s = bs->opaque;
    f->files = (const char *const *)s->names;
    f->n_files = s->n;
}

const BlockDriver bdrv_splitraw = {
    .name = "splitraw",
    .instance_size = sizeof(SplitRawState),
    .probe = splitraw_probe,
    .open = splitraw_open,
    .close = splitraw_close,
    .read = splitraw_read,
    .block_status = splitraw_block_status,
    .getlength = splitraw_getlength,
    .get_allocated_size = splitraw_get_allocated_size,
    .get_info = splitraw_get_info,
    .get_facts = splitraw_get_facts,
};
