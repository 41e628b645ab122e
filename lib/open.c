/*
 * open.c - opening images: protocol node (+ optional blkdebug filter), format probing (highest score
 * wins, raw is the fallback) or a forced format, the format node, and then the backing chain, opened
 * iteratively (never recursively: an image controls how deep a chain goes) with the seed's rule, loop
 * detection, a depth limit, read-only backing nodes, and the one place the backing-name policy lives
 * (bdrv_resolve_backing); bdrv_open_window stacks the "window" filter over a chain.  A probe that finds
 * only raw asks lib/probe.c's table of known magics, so a format without a driver is refused by name.
 * It knows no format by name except the "file" protocol and "raw" fallback.
 */
#include "block_int.h"
#include "request.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void block_open_opts_init(BlockOpenOpts *o)
{
    memset(o, 0, sizeof(*o));
    o->read_only = true;
    o->window_size = -1;
}

/* ---------------------------------------------------------------- protocol nodes */

static BlockNode *open_protocol(const BlockDriver *drv, const char *filename, const BlockOpenOpts *opts,
                                bool read_only, Error *err)
{
    BlockNode *bs = bdrv_new_node(drv, filename);
    if (!bs) {
        error_set(err, ENOMEM, "%s: out of memory", filename);
        return NULL;
    }
    bs->read_only = read_only;
    bs->opts = opts;
    int r = drv->open(bs, opts, err);
    if (r < 0) {
        error_set(err, -r, "%s: %s", filename, strerror(-r));
        bdrv_free_node(bs);
        return NULL;
    }
    if (drv->refresh_limits)
        drv->refresh_limits(bs);
    return bs;
}

BlockNode *bdrv_open_file(const char *filename, const BlockOpenOpts *opts, bool read_only, Error *err)
{
    BlockOpenOpts defaults;
    if (!opts) {
        block_open_opts_init(&defaults);
        opts = &defaults; /* only used during open; the node keeps no pointer to it below */
    }
    BlockNode *bs = open_protocol(bdrv_find_driver("file"), filename, opts, read_only, err);
    if (bs && opts == &defaults)
        bs->opts = NULL;
    return bs;
}

/* A filter node (blkdebug) on top of file; consumes file. */
static BlockNode *open_filter(const char *name, BlockNode *file, const BlockOpenOpts *opts, Error *err)
{
    const BlockDriver *drv = bdrv_find_driver(name);
    if (!drv) {
        error_set(err, ENOTSUP, "%s: driver '%s' is not available", file->filename, name);
        bdrv_close(file);
        return NULL;
    }
    BlockNode *bs = bdrv_new_node(drv, file->filename);
    if (!bs) {
        error_set(err, ENOMEM, "%s: out of memory", file->filename);
        bdrv_close(file);
        return NULL;
    }
    bs->file = file;
    bs->read_only = file->read_only;
    bs->opts = opts;
    bs->request_alignment = file->request_alignment;
    int r = drv->open(bs, opts, err);
    if (r < 0) {
        error_set(err, -r, "%s: %s", file->filename, strerror(-r));
        bs->file = NULL;
        bdrv_free_node(bs);
        bdrv_close(file);
        return NULL;
    }
    return bs;
}

/* ---------------------------------------------------------------- probing */

const BlockDriver *bdrv_probe(BlockNode *file)
{
    uint8_t *buf = calloc(1, PROBE_BUF_SIZE);
    const BlockDriver *best = bdrv_find_driver("raw");
    if (!buf)
        return best;
    int64_t len = bdrv_getlength(file);
    size_t n = len < 0 ? 0 : (size_t)MIN(len, PROBE_BUF_SIZE);
    if (n && bdrv_pread(file, 0, (int64_t)n, buf) < 0)
        n = 0;
    int best_score = 0;
    for (const BlockDriver *const *d = bdrv_driver_list(); *d; d++) {
        if ((*d)->is_protocol || (*d)->is_filter || !(*d)->probe)
            continue;
        int score = (*d)->probe(buf, n, file->filename);
        if (score > best_score) {
            best_score = score;
            best = *d;
        }
    }
    free(buf);
    return best;
}

/* ---------------------------------------------------------------- image locks */

/* The protocol node under file (through filters). */
static BlockNode *protocol_of(BlockNode *file)
{
    for (int guard = 0; file && guard < 8; guard++, file = file->file)
        if (file->drv->is_protocol)
            return file;
    return NULL;
}

/*
 * QEMU-compatible locks on the image file, taken before the format driver reads or writes anything.
 * Held: consistent read, plus write (and resize for formats with metadata) when writable. Not shared:
 * write and resize for formats with metadata (their caches need a stable file; same as qemu-io -r for
 * read-only nodes), nothing for raw. Read-only with --force-share: no lock taken, none checked.
 * A writable node ignores --force-share.
 */
static int lock_image(BlockNode *file, const BlockDriver *fmt, const BlockOpenOpts *opts, Error *err)
{
    BlockNode *proto = protocol_of(file);
    if (!proto || !proto->drv->set_perm)
        return 0;
    bool ro = file->read_only;
    if (ro && opts && opts->force_share)
        return 0;
    unsigned held = BDRV_PERM_CONSISTENT_READ, unshared = 0;
    if (!ro)
        held |= BDRV_PERM_WRITE | (fmt->shares_write ? 0 : BDRV_PERM_RESIZE);
    if (!fmt->shares_write && !(opts && opts->force_share))
        unshared = BDRV_PERM_WRITE | BDRV_PERM_RESIZE;
    return proto->drv->set_perm(proto, held, unshared, err);
}

/* ---------------------------------------------------------------- format nodes */

/* Opens drv (or the probed format) on file; consumes file. */
static BlockNode *open_format(BlockNode *file, const char *format, const BlockOpenOpts *opts, Error *err)
{
    const BlockDriver *drv;
    bool probed = false;
    if (format) {
        drv = bdrv_find_driver(format);
        if (!drv) {
            error_set(err, EINVAL, "%s: unknown format '%s'", file->filename, format);
            bdrv_close(file);
            return NULL;
        }
        if (drv->is_protocol || drv->is_filter) {
            error_set(err, EINVAL, "%s: '%s' is not an image format", file->filename, format);
            bdrv_close(file);
            return NULL;
        }
    } else {
        drv = bdrv_probe(file);
        probed = true;
        if (drv == bdrv_find_driver("raw") && bdrv_probe_known(file, &drv, err) < 0) {
            bdrv_close(file);
            return NULL;
        }
    }
    int lr = lock_image(file, drv, opts, err);
    if (lr < 0) {
        bdrv_close(file);
        return NULL;
    }
    BlockNode *bs = bdrv_new_node(drv, file->filename);
    if (!bs) {
        error_set(err, ENOMEM, "%s: out of memory", file->filename);
        bdrv_close(file);
        return NULL;
    }
    bs->file = file;
    bs->read_only = file->read_only;
    bs->opts = opts;
    bs->probed = probed;
    int r = drv->open(bs, opts, err);
    if (r < 0) {
        error_set(err, -r, "%s: cannot open as %s: %s", file->filename, drv->name, strerror(-r));
        bs->file = NULL;
        bdrv_free_node(bs);
        bdrv_close(file);
        return NULL;
    }
    if (drv->refresh_limits)
        drv->refresh_limits(bs);
    return bs;
}

/* True if the bytes of bs come from memory (through filters), not from a file. */
static bool node_is_memory(BlockNode *bs)
{
    for (int guard = 0; bs && guard < 8; guard++, bs = bs->file)
        if (bs->drv->is_protocol)
            return strcmp(bs->drv->name, "memory") == 0;
    return false;
}

/* ---------------------------------------------------------------- backing chain */

typedef struct FileId {
    dev_t dev;
    ino_t ino;
} FileId;

typedef struct ChainWalk {
    FileId seen[MAX_CHAIN_DEPTH + 2];
    int n_seen;
} ChainWalk;

static bool chain_seen(ChainWalk *w, const struct stat *st)
{
    for (int i = 0; i < w->n_seen; i++)
        if (w->seen[i].dev == st->st_dev && w->seen[i].ino == st->st_ino)
            return true;
    return false;
}

static void chain_remember(ChainWalk *w, const char *path)
{
    struct stat st;
    if (w->n_seen < (int)ARRAY_SIZE(w->seen) && stat(path, &st) == 0)
        w->seen[w->n_seen++] = (FileId){ st.st_dev, st.st_ino };
}

/* The options a backing node is opened with: the caller's, read-only, without top-only settings. */
static BlockOpenOpts *backing_opts(const BlockOpenOpts *top)
{
    BlockOpenOpts *o = malloc(sizeof(*o));
    if (!o)
        return NULL;
    *o = *top;
    o->format = NULL;
    o->read_only = true;
    o->window_offset = 0;
    o->window_size = -1;
    o->backing = NULL;
    o->backing_format = NULL;
    o->no_backing = false;
    o->data_file = NULL;
    o->blkdebug_rules = NULL;
    o->copy_on_read = false;
    o->detect_zeroes = DETECT_ZEROES_OFF;
    o->iops_limit = o->iops_rd_limit = o->iops_wr_limit = 0;
    o->bps_limit = o->bps_rd_limit = o->bps_wr_limit = 0;
    return o;
}

/* Opens the backing node of cur from path, format fmt (NULL = probe); always read-only. */
static int attach_backing(BlockNode *cur, const char *path, const char *note, const char *fmt,
                          const BlockOpenOpts *opts, Error *err)
{
    BlockOpenOpts *bo = backing_opts(opts);
    if (!bo) {
        error_set(err, ENOMEM, "%s: out of memory", path);
        return -ENOMEM;
    }
    BlockNode *file = bdrv_open_file(path, bo, true, err);
    BlockNode *node = file ? open_format(file, fmt, bo, err) : NULL;
    if (!node) {
        free(bo);
        return -(err && err->errnum ? err->errnum : EIO);
    }
    node->core->owned_opts = bo;
    node->depth = cur->depth + 1;
    cur->backing = node;
    free(cur->backing_resolved);
    free(cur->backing_note);
    cur->backing_resolved = strdup(path);
    cur->backing_note = strdup(note);
    return 0;
}

static int open_backing_chain(BlockNode *top, const BlockOpenOpts *opts, Error *err)
{
    ChainWalk *walk = calloc(1, sizeof(*walk));
    if (!walk)
        return -ENOMEM;
    chain_remember(walk, top->filename);

    const char *name = top->backing_name, *fmt = top->backing_format_hint;
    bool given = false;
    if (opts->no_backing) {
        name = NULL;
        if (top->backing_name) {
            free(top->backing_note);
            top->backing_note = strdup("not opened (--no-backing)");
        }
    } else if (opts->backing) {
        name = opts->backing;
        given = true;
    }
    if (!opts->no_backing && opts->backing_format)
        fmt = opts->backing_format;

    int r = 0;
    char *path = malloc(PATH_MAX), *note = malloc(1024);
    for (BlockNode *cur = top; r == 0 && name && name[0]; cur = cur->backing) {
        if (!path || !note) {
            r = -ENOMEM;
            break;
        }
        if (!cur->drv->supports_backing) {
            error_set(err, EINVAL, "%s: format '%s' does not support backing files", cur->filename,
                      cur->drv->name);
            r = -EINVAL;
            break;
        }
        if (node_is_memory(cur)) {
            error_set(err, EACCES, "%s: backing file '%s' refused: an in-memory image may not open files",
                      cur->filename, name);
            r = -EACCES;
            break;
        }
        if (cur->depth + 1 >= MAX_CHAIN_DEPTH) {
            error_set(err, ELOOP, "%s: backing chain is longer than %d layers", top->filename,
                      MAX_CHAIN_DEPTH);
            r = -ELOOP;
            break;
        }
        if (given) {
            snprintf(path, PATH_MAX, "%s", name);
            snprintf(note, 1024, "given with --backing");
        } else {
            r = bdrv_resolve_backing(cur->filename, name, opts, path, PATH_MAX, note, 1024, err);
            if (r < 0)
                break;
        }
        struct stat st;
        if (stat(path, &st) == 0 && chain_seen(walk, &st)) {
            error_set(err, ELOOP, "%s: backing file '%s' (%s) is already in the chain: loop", cur->filename,
                      name, path);
            r = -ELOOP;
            break;
        }
        chain_remember(walk, path);
        r = attach_backing(cur, path, note, fmt, opts, err);
        if (r < 0)
            break;
        given = false;
        name = cur->backing->backing_name;
        fmt = cur->backing->backing_format_hint;
    }
    free(path);
    free(note);
    free(walk);
    return r;
}

BlockNode *bdrv_open_on_node(BlockNode *file, const char *format, const BlockOpenOpts *opts, Error *err)
{
    BlockOpenOpts defaults;
    if (!opts) {
        block_open_opts_init(&defaults);
        defaults.read_only = file->read_only;
        opts = &defaults;
    }
    if (opts->backing && opts->no_backing) {
        error_set(err, EINVAL, "%s: --backing and --no-backing exclude each other", file->filename);
        bdrv_close(file);
        return NULL;
    }
    BlockNode *top = open_format(file, format, opts, err);
    if (!top)
        return NULL;
    if (opts->backing && !top->drv->supports_backing) {
        error_set(err, EINVAL, "%s: format '%s' does not support backing files", top->filename,
                  top->drv->name);
        bdrv_close(top);
        return NULL;
    }
    top->core->is_root = true;
    top->core->discard_unmap = opts->discard == DISCARD_UNMAP;
    if (opts->backing && !(top->core->backing_override = strdup(opts->backing))) {
        error_set(err, ENOMEM, "%s: out of memory", top->filename);
        bdrv_close(top);
        return NULL;
    }
    if (open_backing_chain(top, opts, err) < 0) {
        if (err && !err->msg[0])
            error_set(err, EIO, "%s: cannot open the backing chain", top->filename);
        bdrv_close(top);
        return NULL;
    }
    if (request_state_init(top, opts, err) < 0) {
        bdrv_close(top);
        return NULL;
    }
    if (opts == &defaults) {
        /* Nothing may keep pointing at the stack copy. */
        for (BlockNode *n = top; n; n = n->file)
            if (n->opts == &defaults)
                n->opts = NULL;
    }
    return top;
}

BlockNode *bdrv_open_window(BlockNode *bs, int64_t offset, int64_t size, Error *err)
{
    const BlockDriver *drv = bdrv_find_driver("window");
    BlockOpenOpts o;
    if (bs->opts)
        o = *bs->opts;
    else
        block_open_opts_init(&o);
    o.window_offset = offset;
    o.window_size = size;
    BlockNode *w = drv ? bdrv_new_node(drv, bs->filename) : NULL;
    if (!w) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return NULL;
    }
    bdrv_ref(bs);
    w->file = bs;
    w->read_only = bs->read_only;
    w->opts = &o;
    int r = drv->open(w, &o, err);
    w->opts = bs->opts; /* o lives on this stack: the window keeps its values in its own state */
    if (r < 0) {
        error_set(err, -r, "%s: %s", bs->filename, strerror(-r));
        bdrv_close(w);
        return NULL;
    }
    return w;
}

BlockNode *bdrv_open(const char *filename, const BlockOpenOpts *opts, Error *err)
{
    BlockOpenOpts defaults;
    if (!opts) {
        block_open_opts_init(&defaults);
        opts = &defaults;
    }
    if (!filename || !filename[0]) {
        error_set(err, EINVAL, "(empty name): no image file given");
        return NULL;
    }
    BlockNode *file = bdrv_open_file(filename, opts, opts->read_only, err);
    if (!file)
        return NULL;
    if (opts->blkdebug_rules) {
        file = open_filter("blkdebug", file, opts, err);
        if (!file)
            return NULL;
    }
    BlockNode *top = bdrv_open_on_node(file, opts->format, opts, err);
    if (top && opts == &defaults) {
        for (BlockNode *n = top; n; n = n->file)
            if (n->opts == &defaults)
                n->opts = NULL;
    }
    return top;
}
