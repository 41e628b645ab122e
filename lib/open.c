/* SPDX-License-Identifier: MIT */
/*
 * open.c - opening images: protocol node (+ the file filters the driver options name: blkdebug),
 * format probing (highest score
 * wins, raw is the fallback) or a forced format, the format node, and then the backing chain, opened
 * iteratively (never recursively: an image controls how deep a chain goes) with the seed's rule, loop
 * detection, a depth limit, read-only backing nodes, and the one place the backing-name policy lives
 * (bdrv_resolve_backing); bdrv_open_chain_filters stacks the filters over a whole chain that the driver
 * options name (window), bdrv_open_window a window given by its numbers.  Every driver option must reach a node of its driver.  A probe that finds
 * only raw asks lib/probe.c's table of known magics, so a format without a driver is refused by name.
 * A name with a URL scheme is opened by the protocol driver of lib/drivers.c's scheme table.
 * It knows no format by name except the "file" protocol and "raw" fallback.
 */
#include "block_int.h"
#include "request.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
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
}

/* ---------------------------------------------------------------- the driver's open */

/*
 * The one rule for where the file name enters an open error: the line starts with the name of the file
 * being opened (bs->filename), exactly once, and the core puts it there. Every driver writes the reason
 * only; one about another file (an extent, a rules file) names that file after the image's name. No
 * message: what and strerror.
 */
static int driver_open(BlockNode *bs, const BlockOpenOpts *opts, const char *what, Error *err)
{
    Error *local = calloc(1, sizeof(*local));
    int r = local ? bs->drv->open(bs, opts, local) : -ENOMEM;
    if (r >= 0) {
        free(local);
        return r;
    }
    if (!local || !local->msg[0])
        error_set(err, -r, "%s: %s%s", bs->filename, what, strerror(-r));
    else
        error_set(err, local->errnum ? local->errnum : -r, "%s: %s", bs->filename, local->msg);
    free(local);
    return r;
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
    int r = driver_open(bs, opts, "", err);
    if (r < 0) {
        bdrv_free_node(bs);
        return NULL;
    }
    return bs;
}

int bdrv_create_empty_file(const char *filename, BlockNode **file, Error *err)
{
    CreateOpts fopts = { .size = 0 };
    int ret = bdrv_create("file", filename, &fopts, err);
    if (ret < 0)
        return ret;
    BlockOpenOpts oo;
    block_open_opts_init(&oo);
    BlockNode *f = bdrv_open_file(filename, &oo, false, err);
    if (!f)
        return -(err->errnum ? err->errnum : EIO);
    *file = f;
    return 0;
}

int bdrv_create_image_file(const char *filename, const void *img, uint64_t len, Error *err)
{
    BlockNode *file = NULL;
    int ret = bdrv_create_empty_file(filename, &file, err);
    if (ret == 0)
        ret = bdrv_pwrite(file, 0, (int64_t)len, img, 0);
    if (ret == 0)
        ret = bdrv_flush(file);
    if (file)
        bdrv_close(file);
    return ret;
}

BlockNode *bdrv_open_file(const char *filename, const BlockOpenOpts *opts, bool read_only, Error *err)
{
    BlockOpenOpts defaults;
    if (!opts) {
        block_open_opts_init(&defaults);
        opts = &defaults; /* only used during open; the node keeps no pointer to it below */
    }
    const BlockDriver *proto = bdrv_find_protocol(filename);
    char shown[PATH_MAX];
    if (proto && !bdrv_url_is_bare(filename) && bdrv_url_redact(filename, shown, sizeof(shown))) {
        bool nbd = strcmp(proto->name, "nbd") == 0;
        error_set(err, EINVAL, "%s: a password in the URL is not supported (the %s driver takes none%s)", shown,
                  proto->name, nbd ? "; TLS keys go in a file: tls-psk-file=FILE" : "");
        return NULL;
    }
    BlockNode *bs = open_protocol(proto ? proto : bdrv_find_driver("file"), filename, opts, read_only, err);
    if (bs && opts == &defaults)
        bs->opts = NULL;
    return bs;
}

/* A node of drv on top of file, opened by its driver (what: as driver_open's); consumes file. */
static BlockNode *open_on(const BlockDriver *drv, BlockNode *file, const BlockOpenOpts *opts, bool probed,
                          const char *what, Error *err)
{
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
    if (drv->is_filter) /* a filter passes requests on as they come */
        bs->request_alignment = file->request_alignment;
    if (driver_open(bs, opts, what, err) < 0) {
        bs->file = NULL;
        bdrv_free_node(bs);
        bdrv_close(file);
        return NULL;
    }
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
    return open_on(drv, file, opts, false, "", err);
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
 * A writable node ignores --force-share. With locks_held (a live job's second node): none at all.
 */
static int lock_image(BlockNode *file, const BlockDriver *fmt, const BlockOpenOpts *opts, Error *err)
{
    BlockNode *proto = protocol_of(file);
    if (!proto || !proto->drv->set_perm)
        return 0;
    bool ro = file->read_only;
    if ((ro && opts && opts->force_share) || (opts && opts->locks_held))
        return 0;
    unsigned held = BDRV_PERM_CONSISTENT_READ, unshared = 0;
    if (!ro)
        held |= BDRV_PERM_WRITE | (fmt->shares_write ? 0 : BDRV_PERM_RESIZE);
    if (!fmt->shares_write && !(opts && opts->force_share))
        unshared = BDRV_PERM_WRITE | BDRV_PERM_RESIZE;
    if (opts && opts->exclusive && !opts->force_share)
        unshared |= BDRV_PERM_CONSISTENT_READ | BDRV_PERM_WRITE | BDRV_PERM_RESIZE;
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
    char what[64];
    snprintf(what, sizeof(what), "cannot open as %s: ", drv->name);
    return open_on(drv, file, opts, probed, what, err);
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
    o->backing = NULL;
    o->backing_format = NULL;
    o->no_backing = false;
    bdrv_opts_drop_top_only(o);
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

/* Resolves cur's backing name through the policy: name itself, or when the driver listed candidates (name
 * is the first), the first of them that resolves, which becomes cur->backing_name; if none does, the first
 * one's refusal. path: PATH_MAX bytes, note: 1024. */
static int resolve_candidates(BlockNode *cur, const char *name, const BlockOpenOpts *opts, char *path, char *note,
                              Error *err)
{
    char *const *cand = cur->backing_candidates;
    if (!cand[0] || strcmp(name, cand[0]) != 0)
        return bdrv_resolve_backing(cur->filename, name, opts, path, PATH_MAX, note, 1024, err);
    Error *e = calloc(2, sizeof(*e)); /* e[0]: the first candidate's refusal */
    if (!e)
        return -ENOMEM;
    int r = -ENOENT;
    for (int i = 0; i < BDRV_MAX_BACKING_CANDIDATES && cand[i]; i++) {
        e[1].msg[0] = '\0';
        int ri = bdrv_resolve_backing(cur->filename, cand[i], opts, path, PATH_MAX, note, 1024, &e[i ? 1 : 0]);
        if (ri == 0) {
            char *chosen = i ? strdup(cand[i]) : NULL;
            r = i && !chosen ? -ENOMEM : 0;
            if (chosen) {
                free(cur->backing_name);
                cur->backing_name = chosen;
            }
            break;
        }
        if (i == 0)
            r = ri;
    }
    if (r == -ENOMEM)
        error_set(err, ENOMEM, "%s: out of memory", cur->filename);
    else if (r < 0)
        error_set(err, e[0].errnum, "%s", e[0].msg);
    free(e);
    return r;
}

/* The first len bytes of path (zeros past its end) into head, the file opened O_RDONLY with bo. */
static int read_candidate_head(const char *path, const BlockOpenOpts *bo, uint8_t *head, size_t len)
{
    Error *e = calloc(1, sizeof(*e));
    BlockNode *f = e ? bdrv_open_file(path, bo, true, e) : NULL;
    free(e);
    if (!f)
        return -EIO;
    memset(head, 0, len);
    int64_t size = bdrv_getlength(f);
    int r = size < 0 ? (int)size : bdrv_pread(f, 0, MIN((int64_t)len, size), head);
    bdrv_close(f);
    return r;
}

/* cur names its parent by identity (cur->backing_search_suffix): the first candidate file the backing-name
 * policy allows, not already in the chain, whose head cur's driver accepts; cur->backing_name becomes its
 * path. path: PATH_MAX bytes, note: 1024. */
static int search_by_identity(BlockNode *cur, ChainWalk *walk, const BlockOpenOpts *opts, char *path, char *note,
                              Error *err)
{
    char **list = NULL;
    int n = 0, looked = 0, found = -1;
    bool more = false;
    BlockOpenOpts *bo = backing_opts(opts);
    uint8_t *head = malloc(BDRV_IDENTITY_HEAD);
    Error *e = calloc(1, sizeof(*e));
    int r = bo && head && e ? bdrv_backing_search_list(cur->filename, cur->backing_search_suffix, opts, &list, &n,
                                                       &more) : -ENOMEM;
    for (int i = 0; r == 0 && i < n && found < 0; i++) {
        struct stat st;
        if (bdrv_resolve_backing(cur->filename, list[i], opts, path, PATH_MAX, note, 1024, e) < 0 ||
            stat(path, &st) != 0 || chain_seen(walk, &st))
            continue; /* refused by the policy, gone, or this image or a layer above it */
        looked++;
        if (read_candidate_head(path, bo, head, BDRV_IDENTITY_HEAD) == 0 &&
            cur->drv->backing_matches(cur, head, BDRV_IDENTITY_HEAD))
            found = i;
    }
    if (found >= 0) {
        char *chosen = strdup(list[found]);
        r = chosen ? 0 : -ENOMEM;
        if (chosen) {
            snprintf(note, 1024, "found by its identity %s among the %s files (%d looked at)", cur->backing_name,
                     cur->backing_search_suffix, looked);
            free(cur->backing_name);
            cur->backing_name = chosen;
        }
    } else if (r == 0) {
        char limit[64] = "";
        if (more)
            snprintf(limit, sizeof(limit), ", of the first %d names", BDRV_MAX_IDENTITY_CANDIDATES);
        r = -ENOENT;
        error_set(err, ENOENT, "%s: parent %s not found: no %s file in the image's directory or a --backing-dir "
                  "has it (%d looked at%s); use --backing-dir DIR or --backing FILE", cur->filename,
                  cur->backing_name, cur->backing_search_suffix, looked, limit);
    }
    if (r == -ENOMEM)
        error_set(err, ENOMEM, "%s: out of memory", cur->filename);
    bdrv_backing_search_free(list, n);
    free(bo);
    free(head);
    free(e);
    return r;
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
            if (cur->backing_search_suffix && cur->drv->backing_matches)
                r = search_by_identity(cur, walk, opts, path, note, err);
            else
                r = resolve_candidates(cur, name, opts, path, note, err);
            if (r < 0)
                break;
            name = cur->backing_name;
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

/* Tells every node of the chain from top down that its backing chain is complete (backing_attached). */
static int backing_attached(BlockNode *top, Error *err)
{
    for (BlockNode *n = top; n; n = n->backing) {
        if (!n->drv->backing_attached)
            continue;
        int r = n->drv->backing_attached(n, err);
        if (r < 0) {
            error_set(err, -r, "%s: %s", n->filename, strerror(-r));
            return r;
        }
    }
    return 0;
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
    if (bdrv_opts_validate(opts, file->filename, err) < 0) {
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
    if (backing_attached(top, err) < 0) {
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

BlockNode *bdrv_new_node_over(const BlockDriver *drv, BlockNode *bs, Error *err)
{
    BlockNode *w = drv ? bdrv_new_node(drv, bs->filename) : NULL;
    if (!w) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return NULL;
    }
    bdrv_ref(bs);
    w->file = bs;
    w->read_only = bs->read_only;
    return w;
}

/* Stacks drv, a filter over a whole chain, on bs with the options o (which may live on the caller's stack:
 * the filter keeps its values in its own state); takes its own reference on bs. */
static BlockNode *open_over_chain(const BlockDriver *drv, BlockNode *bs, const BlockOpenOpts *o, Error *err)
{
    BlockNode *w = bdrv_new_node_over(drv, bs, err);
    if (!w)
        return NULL;
    w->opts = o;
    int r = driver_open(w, o, "", err);
    w->opts = bs->opts;
    if (r < 0) {
        bdrv_close(w);
        return NULL;
    }
    return w;
}

BlockNode *bdrv_open_window(BlockNode *bs, int64_t offset, int64_t size, Error *err)
{
    BlockOpenOpts o;
    if (bs->opts)
        o = *bs->opts;
    else
        block_open_opts_init(&o);
    char off_item[64], size_item[64];
    snprintf(off_item, sizeof off_item, "window.offset=%" PRId64, offset);
    snprintf(size_item, sizeof size_item, "window.size=%" PRId64, size);
    o.n_driver_opts = 0;
    if (offset < 0 || size < -1) {
        error_set(err, EINVAL, "%s: negative --offset or --size", bs->filename);
        return NULL;
    }
    bdrv_opts_add(&o, off_item);
    if (size >= 0)
        bdrv_opts_add(&o, size_item);
    return open_over_chain(bdrv_find_driver("window"), bs, &o, err);
}

/* True if a node of drv is in the chain from top (file children and backing layers). */
static bool chain_has_driver(BlockNode *top, const BlockDriver *drv)
{
    for (BlockNode *layer = top; layer;) {
        BlockNode *next = NULL;
        for (int guard = 0; layer && guard < 8; guard++, layer = layer->file) {
            if (layer->drv == drv)
                return true;
            if (!next)
                next = layer->backing;
        }
        layer = next;
    }
    return false;
}

/* Every driver option of opts must reach a node: refuses one whose driver the chain does not have
 * (filters over a whole chain are not in it yet: bdrv_open_chain_filters stacks them). */
static int check_options_used(BlockNode *top, const BlockOpenOpts *opts, const char *filename, Error *err)
{
    for (const BlockDriver *const *d = bdrv_driver_list(); *d; d++) {
        if ((*d)->over_chain || !bdrv_opts_name_driver(opts, *d) || chain_has_driver(top, *d))
            continue;
        for (int i = 0; i < opts->n_driver_opts; i++) {
            const char *it = opts->driver_opts[i];
            size_t n = strlen((*d)->name);
            if (strncmp(it, (*d)->name, n) == 0 && it[n] == '.') {
                error_set(err, EINVAL, "%s: %s option '%.*s': the chain has no %s layer", filename,
                          (*d)->name, (int)strcspn(it + n + 1, "="), it + n + 1, (*d)->name);
                break;
            }
        }
        return -EINVAL;
    }
    return 0;
}

/* Filters named in the driver options: those over a file go under the format (file is consumed). */
static BlockNode *stack_file_filters(BlockNode *file, const BlockOpenOpts *opts, Error *err)
{
    for (const BlockDriver *const *d = bdrv_driver_list(); file && *d; d++)
        if ((*d)->is_filter && !(*d)->over_chain && bdrv_opts_name_driver(opts, *d))
            file = open_filter((*d)->name, file, opts, err);
    return file;
}

BlockNode *bdrv_open_chain_filters(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    BlockNode *top = bs;
    for (const BlockDriver *const *d = bdrv_driver_list(); top && *d; d++) {
        if (!(*d)->over_chain || !bdrv_opts_name_driver(opts, *d))
            continue;
        BlockNode *w = open_over_chain(*d, top, opts, err);
        if (top != bs)
            bdrv_close(top);
        top = w;
    }
    return top;
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
    if (bdrv_opts_validate(opts, filename, err) < 0)
        return NULL;
    BlockNode *file = bdrv_open_file(filename, opts, opts->read_only, err);
    file = file ? stack_file_filters(file, opts, err) : NULL;
    if (!file)
        return NULL;
    BlockNode *top = bdrv_open_on_node(file, opts->format, opts, err);
    if (top && !opts->driver_opts_partial && check_options_used(top, opts, filename, err) < 0) {
        bdrv_close(top);
        top = NULL;
    }
    if (top && opts == &defaults) {
        for (BlockNode *n = top; n; n = n->file)
            if (n->opts == &defaults)
                n->opts = NULL;
    }
    return top;
}
