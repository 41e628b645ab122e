/* SPDX-License-Identifier: MIT */
/*
 * jobs.c - the offline chain operations, with qemu-img's option names: `commit` (the data of an image
 * and the layers above BASE copied down into BASE, the image then emptied), `stream` (what the layers
 * below hold above BASE copied up into the image, which then names BASE, or nothing, as its backing
 * file) and `rebase` (a new backing file; the safe mode first copies into the image every range where
 * the old and the new backing files differ, so the guest sees the same disk; -u only rewrites the
 * name).  Each walks the chain's block status, so only the ranges that matter are read, and writes
 * through the block layer; the image's format needs the change_backing_file / make_empty slots (qcow2).
 * It knows no image format.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imgfuse.h"
#include "util.h"

#define JOB_CHUNK (2 * 1024 * 1024)

static volatile sig_atomic_t job_stop;
static BlockOpenOpts job_key; /* the key of encrypted images in the chain (secret, prompt): every open's */

static void job_on_signal(int sig)
{
    job_stop = sig;
}

typedef struct JobArgs {
    const char *cmd;
    const char *format;      /* -f: the image's format */
    const char *base;        /* -b */
    const char *base_format; /* -F (rebase) */
    bool unsafe;             /* rebase -u */
    bool keep;               /* commit -d */
    bool progress, quiet;
    const char *image;
} JobArgs;

static int job_usage(const char *cmd, const char *synopsis)
{
    fprintf(stderr, "imgfuse: usage: imgfuse %s %s\n", cmd, synopsis);
    return EXIT_USAGE;
}

/* Parses the options of commit, stream and rebase (which take the same letters); -1 to go on. */
static int job_parse(int argc, char **argv, JobArgs *a, const char *shortopts, const char *synopsis)
{
    static const struct option longopts[] = {
        { "format", required_argument, NULL, 'f' },      { "base", required_argument, NULL, 'b' },
        { "backing", required_argument, NULL, 'b' },     { "backing-format", required_argument, NULL, 'F' },
        { "unsafe", no_argument, NULL, 'u' },            { "drop", no_argument, NULL, 'd' },
        { "progress", no_argument, NULL, 'p' },          { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },              SECRET_LONG_OPTIONS,
        { NULL, 0, NULL, 0 },
    };
    block_open_opts_init(&job_key);
    opterr = 0;
    optind = 1;
    int c, r;
    while ((c = cli_getopt(argc, argv, shortopts, longopts, NULL)) != -1) {
        if ((r = secret_option(&job_key, c, optarg)) >= 0) {
            if (r != 0)
                return r;
            continue;
        }
        switch (c) {
        case 'f': a->format = optarg; break;
        case 'b': a->base = optarg; break;
        case 'F': a->base_format = optarg; break;
        case 'u': a->unsafe = true; break;
        case 'd': a->keep = true; break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case 'h': return cli_print_help(a->cmd);
        default: return cli_option_error(argv, c, a->cmd, longopts);
        }
    }
    if (argc - optind != 1)
        return job_usage(a->cmd, synopsis);
    a->image = argv[optind];
    return secret_options_done(&job_key) != 0 ? EXIT_USAGE : -1;
}

static BlockNode *job_open(const char *name, const char *format, bool writable, bool no_backing, bool share,
                           int *rc)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.secret = job_key.secret;
    o.secret_len = job_key.secret_len;
    o.ask_secret = job_key.ask_secret;
    o.format = format;
    o.read_only = !writable;
    o.no_backing = no_backing;
    o.force_share = share;
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *bs = bdrv_open(name, &o, &err);
    if (!bs)
        *rc = report_error(&err, name, EXIT_USAGE);
    return bs;
}

/* The depth of the layer of top's chain that is the file base names (as given, or relative to the top
 * image's directory), or -1. */
static int chain_depth_of(BlockNode *top, const char *base)
{
    char want[PATH_MAX], alt[PATH_MAX], dir[PATH_MAX], have[PATH_MAX];
    bool has_want = realpath(base, want) != NULL, has_alt = false;
    if (base[0] != '/') {
        snprintf(dir, sizeof dir, "%s", top->filename);
        char joined[PATH_MAX];
        if (snprintf(joined, sizeof joined, "%s/%s", dirname(dir), base) < (int)sizeof joined)
            has_alt = realpath(joined, alt) != NULL;
    }
    int d = 0;
    for (BlockNode *n = top; n; n = n->backing, d++)
        if (realpath(n->filename, have) &&
            ((has_want && strcmp(have, want) == 0) || (has_alt && strcmp(have, alt) == 0)))
            return d;
    return -1;
}

static void job_progress(Progress *p, int64_t done)
{
    progress_show(p, done);
}

static int job_report(const char *image, const char *what, int r, int64_t off)
{
    if (job_stop) {
        errmsg(image, "%s stopped by %s: the chain is as it was except for data already copied, which reads the "
               "same", what, job_stop == SIGINT ? "SIGINT" : "SIGTERM");
        return EXIT_RUNTIME;
    }
    errmsg(image, "%s failed at offset %" PRId64 ": %s", what, off, strerror(-r));
    return EXIT_RUNTIME;
}

static void job_signals(void)
{
    struct sigaction sa = { .sa_handler = job_on_signal };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Copies [off, off + n) of the chain at from into to: zeros as zeros, data read in chunks. */
static int copy_range(BlockNode *from, BlockNode *to, int64_t off, int64_t n, bool zero, uint8_t *buf,
                      int64_t *fail)
{
    if (zero) {
        int r = bdrv_pwrite_zeroes(to, off, n, 0);
        if (r < 0)
            *fail = off;
        return r;
    }
    for (int64_t done = 0; done < n && !job_stop;) {
        int64_t k = MIN(n - done, (int64_t)JOB_CHUNK);
        int r = bdrv_pread(from, off + done, k, buf);
        if (r == 0)
            r = bdrv_pwrite(to, off + done, k, buf, 0);
        if (r < 0) {
            *fail = off + done;
            return r;
        }
        done += k;
    }
    return 0;
}

/* Walks the chain of top: every range decided by a layer of depth in [lo, hi) (an allocated range, or
 * zeros a layer there sets) is copied from top's view into to. */
static int copy_layers(BlockNode *top, BlockNode *to, int lo, int hi, Progress *prog, int64_t *fail)
{
    int64_t size = bdrv_getlength(top);
    uint8_t *buf = aligned_alloc_zero(JOB_CHUNK);
    if (!buf)
        return -ENOMEM;
    int r = 0;
    for (int64_t pos = 0; r == 0 && pos < size && !job_stop;) {
        BlockStatus st;
        memset(&st, 0, sizeof st);
        r = bdrv_block_status_above(top, pos, MIN(size - pos, (int64_t)1 << 30), &st);
        if (r == 0 && st.bytes <= 0)
            r = -EIO; /* a driver answering for no bytes would make the walk spin */
        if (r < 0) {
            *fail = pos;
            break;
        }
        int64_t n = MIN(st.bytes, size - pos);
        bool decided = (st.flags & (BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_DATA)) || !(st.flags & BDRV_BLOCK_ZERO);
        if (decided && st.depth >= lo && st.depth < hi)
            r = copy_range(top, to, pos, n, (st.flags & BDRV_BLOCK_ZERO) != 0, buf, fail);
        pos += n;
        job_progress(prog, pos);
    }
    free(buf);
    return r;
}

static Progress job_progress_init(const JobArgs *a, BlockNode *bs)
{
    Progress p = { .tty = isatty(STDERR_FILENO), .cmd = a->cmd, .total = bdrv_getlength(bs) };
    p.on = !a->quiet && (a->progress || p.tty); /* a bar on a terminal, lines with -p */
    return p;
}

static void job_progress_end(Progress *p)
{
    if (p->on && p->tty)
        fprintf(stderr, "\r\033[K");
}

/* ---------------------------------------------------------------- commit */

int cmd_commit(int argc, char **argv)
{
    static const char synopsis[] = "[-p|-q] [-f FMT] [-b BASE] [-d] IMAGE";
    JobArgs a = { .cmd = "commit" };
    int rc = job_parse(argc, argv, &a, ":f:b:dpqh", synopsis);
    if (rc >= 0)
        return rc;
    if ((rc = live_client("commit", a.image, a.base, a.keep, a.progress, a.quiet)) >= 0)
        return rc; /* IMAGE is mounted --rw: its daemon ran the job */
    /* the chain is read without locks; the image and BASE are then opened with theirs, the image
     * writable unless it stays as it is (-d; -b implies it, as in qemu-img: the layers between are
     * left behind) */
    bool keep = a.keep || a.base;
    BlockNode *chain = job_open(a.image, a.format, false, false, true, &rc), *top = NULL, *base = NULL;
    if (!chain)
        return rc;
    int depth = 1;
    if (!chain->backing) {
        errmsg(a.image, "has no backing file to commit into");
        rc = EXIT_USAGE;
    } else if (a.base && (depth = chain_depth_of(chain, a.base)) < 1) {
        errmsg(a.base, "is not a backing file of %s", a.image);
        rc = EXIT_USAGE;
    }
    BlockNode *base_in_chain = chain;
    for (int d = 0; rc < 0 && d < depth; d++)
        base_in_chain = base_in_chain->backing;
    if (rc < 0 && !base_in_chain->drv->is_protocol && !base_in_chain->drv->write) {
        errmsg(base_in_chain->filename, "format '%s' cannot be written", base_in_chain->drv->name);
        rc = EXIT_USAGE;
    }
    if (rc < 0)
        top = job_open(a.image, a.format, !keep, true, false, &rc);
    if (rc < 0 && !keep && !top->drv->make_empty) {
        errmsg(a.image, "format '%s' cannot be emptied after the commit: give -d to leave it as it is",
               top->drv->name);
        rc = EXIT_USAGE;
    }
    if (rc < 0)
        base = job_open(base_in_chain->filename, base_in_chain->drv->name, true, true, false, &rc);
    if (rc < 0) {
        job_signals();
        Progress prog = job_progress_init(&a, chain);
        int64_t fail = 0, top_len = bdrv_getlength(chain);
        int r = 0;
        if (bdrv_getlength(base) < top_len) /* the base grows to the image's size, as in qemu-img */
            r = bdrv_truncate(base, top_len);
        if (r == 0)
            r = copy_layers(chain, base, 0, depth, &prog, &fail);
        if (r == 0 && !job_stop)
            r = bdrv_flush(base);
        if (r == 0 && !job_stop && !keep)
            r = bdrv_make_empty(top);
        job_progress_end(&prog);
        if (r < 0 || job_stop)
            rc = job_report(a.image, "commit", r, fail);
        else {
            rc = EXIT_OK;
            if (!a.quiet)
                printf("Image committed.\n");
        }
    }
    if (base)
        bdrv_close(base);
    if (top)
        bdrv_close(top);
    bdrv_close(chain);
    return rc;
}

/* ---------------------------------------------------------------- stream */

int cmd_stream(int argc, char **argv)
{
    static const char synopsis[] = "[-p|-q] [-f FMT] [-b BASE] IMAGE";
    JobArgs a = { .cmd = "stream" };
    int rc = job_parse(argc, argv, &a, ":f:b:pqh", synopsis);
    if (rc >= 0)
        return rc;
    if ((rc = live_client("stream", a.image, a.base, false, a.progress, a.quiet)) >= 0)
        return rc; /* IMAGE is mounted --rw: its daemon ran the job */
    BlockNode *top = job_open(a.image, a.format, true, false, false, &rc);
    if (!top)
        return rc;
    int depth = bdrv_chain_length(top);
    BlockNode *base_node = NULL;
    if (!top->drv->change_backing_file) {
        errmsg(a.image, "format '%s' cannot record a new backing file", top->drv->name);
        rc = EXIT_USAGE;
    } else if (a.base && (depth = chain_depth_of(top, a.base)) < 1) {
        errmsg(a.base, "is not a backing file of %s", a.image);
        rc = EXIT_USAGE;
    }
    if (rc < 0 && a.base) {
        base_node = top;
        for (int d = 0; d < depth; d++)
            base_node = base_node->backing;
    }
    if (rc < 0) {
        job_signals();
        Progress prog = job_progress_init(&a, top);
        int64_t fail = 0;
        int r = copy_layers(top, top, 1, depth, &prog, &fail);
        if (r == 0 && !job_stop)
            r = bdrv_flush(top);
        if (r == 0 && !job_stop) {
            /* the name the layer above BASE records for it, so that it resolves as before */
            BlockNode *above = top;
            while (base_node && above->backing != base_node)
                above = above->backing;
            r = bdrv_change_backing_file(top, base_node ? above->backing_name : NULL,
                                         base_node ? base_node->drv->name : NULL);
        }
        job_progress_end(&prog);
        rc = r < 0 || job_stop ? job_report(a.image, "stream", r, fail) : EXIT_OK;
    }
    bdrv_close(top);
    return rc;
}

/* ---------------------------------------------------------------- rebase */

/* NEW as the image names it, opened relative to the image's directory (as qemu-img does). */
static BlockNode *rebase_open_new(const char *image, const char *name, const char *fmt, int *rc)
{
    char dir[PATH_MAX], path[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", image);
    if (name[0] == '/' || snprintf(path, sizeof path, "%s/%s", dirname(dir), name) >= (int)sizeof path)
        snprintf(path, sizeof path, "%s", name);
    return job_open(path, fmt, false, false, false, rc);
}

/* Where the image holds nothing of its own and the old and new backing views differ, the old view's
 * bytes are written into the image, a chunk at a time. */
static int rebase_copy(BlockNode *top, BlockNode *new_base, Progress *prog, int64_t *fail)
{
    int64_t size = bdrv_getlength(top), new_size = new_base ? bdrv_getlength(new_base) : 0;
    uint8_t *old_buf = aligned_alloc_zero(JOB_CHUNK), *new_buf = aligned_alloc_zero(JOB_CHUNK);
    int r = old_buf && new_buf ? 0 : -ENOMEM;
    for (int64_t pos = 0; r == 0 && pos < size && !job_stop;) {
        BlockStatus st;
        memset(&st, 0, sizeof st);
        r = bdrv_block_status(top, pos, MIN(size - pos, (int64_t)JOB_CHUNK), &st);
        if (r == 0 && st.bytes <= 0)
            r = -EIO; /* a driver answering for no bytes would make the walk spin */
        if (r < 0) {
            *fail = pos;
            break;
        }
        int64_t n = MIN(st.bytes, size - pos);
        if (!(st.flags & BDRV_BLOCK_ALLOCATED)) {
            r = bdrv_pread(top, pos, n, old_buf);
            memset(new_buf, 0, (size_t)n);
            if (r == 0 && new_base && pos < new_size)
                r = bdrv_pread(new_base, pos, MIN(n, new_size - pos), new_buf);
            if (r == 0 && memcmp(old_buf, new_buf, (size_t)n) != 0)
                r = bdrv_pwrite(top, pos, n, old_buf, 0);
            if (r < 0)
                *fail = pos;
        }
        pos += n;
        progress_show(prog, pos);
    }
    free(old_buf);
    free(new_buf);
    return r;
}

int cmd_rebase(int argc, char **argv)
{
    static const char synopsis[] = "[-u] [-p|-q] [-f FMT] -b NEW [-F FMT] IMAGE";
    JobArgs a = { .cmd = "rebase" };
    int rc = job_parse(argc, argv, &a, ":f:b:F:upqh", synopsis);
    if (rc >= 0)
        return rc;
    if (!a.base)
        return job_usage("rebase", synopsis);
    const char *new_name = a.base[0] ? a.base : NULL;
    if (new_name && !a.base_format) {
        errmsg(a.image, "backing file specified without backing format; add -F FMT");
        return EXIT_USAGE;
    }
    /* -u: the old backing file is not needed, and may be gone */
    BlockNode *top = job_open(a.image, a.format, true, a.unsafe, false, &rc), *new_base = NULL;
    if (!top)
        return rc;
    if (!top->drv->change_backing_file) {
        errmsg(a.image, "format '%s' cannot record a new backing file", top->drv->name);
        rc = EXIT_USAGE;
    }
    if (rc < 0 && !a.unsafe && new_name)
        new_base = rebase_open_new(a.image, new_name, a.base_format, &rc);
    if (rc < 0) {
        job_signals();
        Progress prog = job_progress_init(&a, top);
        int64_t fail = 0;
        int r = a.unsafe ? 0 : rebase_copy(top, new_base, &prog, &fail);
        if (r == 0 && !job_stop)
            r = bdrv_flush(top);
        if (r == 0 && !job_stop)
            r = bdrv_change_backing_file(top, new_name, new_name ? a.base_format : NULL);
        job_progress_end(&prog);
        rc = r < 0 || job_stop ? job_report(a.image, "rebase", r, fail) : EXIT_OK;
    }
    if (new_base)
        bdrv_close(new_base);
    bdrv_close(top);
    return rc;
}
