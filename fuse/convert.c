/* SPDX-License-Identifier: MIT */
/*
 * convert.c - `imgfuse convert` and `imgfuse resize`, the offline operations that copy or reshape a
 * whole image through the block layer, with qemu-img's option names.  convert reads one or more sources
 * (concatenated, any readable format and chain) and writes a target of any writable format: the target
 * is created by its driver (or, with -n, an existing one is written), block status decides what is read
 * at all (ranges that read as zeros are not read; on a new image, which reads as zeros, they are not
 * written either), and data blocks that hold only zeros are left out as well (-S).  Several workers copy
 * chunks in parallel (-m), so decompression of the source and compression of the target (-c, through
 * the driver's compressed-write path) use every core.  With -B the target gets a backing file and only
 * the source's own top layer is copied, as qemu-img does.  resize grows or (with --shrink) shrinks an
 * image through the driver's truncate.  Both report one line per error and know no image format.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imgfuse.h"
#include "util.h"

#define CONVERT_CHUNK (2 * 1024 * 1024) /* bytes a worker takes at a time: a multiple of every cluster size */
#define CONVERT_MAX_WORKERS 16
#define CONVERT_MAX_SOURCES 64

typedef struct ConvertSource {
    const char *name;
    BlockNode *bs;
    int64_t start, size; /* where it lands in the target */
} ConvertSource;

typedef struct Convert {
    ConvertSource src[CONVERT_MAX_SOURCES];
    int n_src;
    const char *dst_name;
    BlockNode *dst;
    int64_t total;
    bool top_only;       /* -B: copy what the sources' top layers hold; the rest comes from the new backing */
    bool zero_init;      /* the target reads as zeros wherever nothing is written */
    bool compress;       /* -c: data written as compressed clusters */
    int64_t sparse;      /* -S: all-zero blocks of this size inside data are not written; 0 = write all */
    int64_t cluster;     /* -c: the target's cluster size (each compressed write is one cluster) */
    const uint8_t *zeros; /* CONVERT_CHUNK zero bytes, for -S 0 */

    pthread_mutex_t lock; /* guards the fields below */
    int64_t next;        /* the next target offset to hand out */
    int64_t done;        /* bytes finished, for progress */
    int err;             /* the first error (negative errno), 0 if none */
    bool err_in_dst;
    int64_t err_off;
    const char *err_src;
    Progress prog;
} Convert;

static volatile sig_atomic_t convert_stop;

static int usage_line(const char *cmd, const char *synopsis)
{
    fprintf(stderr, "imgfuse: usage: imgfuse %s %s\n", cmd, synopsis);
    return EXIT_USAGE;
}

static void convert_on_signal(int sig)
{
    convert_stop = sig;
}

static void convert_fail(Convert *c, int r, bool in_dst, const ConvertSource *s, int64_t off)
{
    pthread_mutex_lock(&c->lock);
    if (!c->err) {
        c->err = r;
        c->err_in_dst = in_dst;
        c->err_src = s ? s->name : NULL;
        c->err_off = off;
    }
    pthread_mutex_unlock(&c->lock);
}

static bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Zeros at [off, off + n) of the target: nothing to do on a target that reads as zeros, unless -S 0
 * asks for every byte to be allocated (then zero bytes are written as data). */
static int write_zeros(Convert *c, int64_t off, int64_t n)
{
    if (n <= 0 || (c->zero_init && c->sparse))
        return 0;
    if (c->sparse)
        return bdrv_pwrite_zeroes(c->dst, off, n, 0);
    for (int64_t done = 0; done < n;) {
        int64_t k = MIN(n - done, (int64_t)CONVERT_CHUNK);
        int r = bdrv_pwrite(c->dst, off + done, k, c->zeros, 0);
        if (r < 0)
            return r;
        done += k;
    }
    return 0;
}

/* One compressed cluster (or the short last one) per write: the driver compresses it. */
static int write_compressed(Convert *c, const uint8_t *buf, int64_t n, int64_t off)
{
    for (int64_t done = 0; done < n;) {
        int64_t k = MIN(n - done, c->cluster - (off + done) % c->cluster);
        int r = all_zero(buf + done, (size_t)k) ? write_zeros(c, off + done, k)
                                                : bdrv_pwrite_compressed(c->dst, off + done, k, buf + done);
        if (r < 0)
            return r;
        done += k;
    }
    return 0;
}

/* Data bytes for the target at off: blocks of c->sparse bytes (aligned to the target) that are all zeros
 * go to write_zeros, runs of the others are written together. */
static int write_data(Convert *c, const uint8_t *buf, int64_t n, int64_t off)
{
    if (c->compress)
        return write_compressed(c, buf, n, off);
    if (!c->sparse)
        return bdrv_pwrite(c->dst, off, n, buf, 0);
    int64_t pos = 0;
    while (pos < n) {
        int64_t blk = MIN(n - pos, c->sparse - (off + pos) % c->sparse);
        bool zero = all_zero(buf + pos, (size_t)blk);
        int64_t end = pos + blk;
        while (end < n) {
            int64_t k = MIN(n - end, c->sparse);
            if (all_zero(buf + end, (size_t)k) != zero)
                break;
            end += k;
        }
        int r = zero ? write_zeros(c, off + pos, end - pos) : bdrv_pwrite(c->dst, off + pos, end - pos, buf + pos, 0);
        if (r < 0)
            return r;
        pos = end;
    }
    return 0;
}

/* Copies [soff, soff + len) of source s to the target at doff, run by run of the source's block status. */
static int convert_range(Convert *c, const ConvertSource *s, uint8_t *buf, int64_t soff, int64_t len, int64_t doff)
{
    while (len > 0) {
        BlockStatus st;
        memset(&st, 0, sizeof st);
        int r = c->top_only ? bdrv_block_status(s->bs, soff, len, &st) : bdrv_block_status_above(s->bs, soff, len, &st);
        if (r < 0) {
            convert_fail(c, r, false, s, soff);
            return r;
        }
        int64_t n = st.bytes > 0 ? MIN(st.bytes, len) : len;
        if (c->top_only && !(st.flags & BDRV_BLOCK_ALLOCATED)) {
            /* the new backing file holds it */
        } else if (st.flags & BDRV_BLOCK_ZERO) {
            if ((r = write_zeros(c, doff, n)) < 0) {
                convert_fail(c, r, true, NULL, doff);
                return r;
            }
        } else {
            if ((r = bdrv_pread(s->bs, soff, n, buf)) < 0) {
                convert_fail(c, r, false, s, soff);
                return r;
            }
            if ((r = write_data(c, buf, n, doff)) < 0) {
                convert_fail(c, r, true, NULL, doff);
                return r;
            }
        }
        soff += n;
        doff += n;
        len -= n;
    }
    return 0;
}

/* Hands out the next chunk: false when there is none left (or an error or a signal stopped the copy). */
static bool next_chunk(Convert *c, const ConvertSource **s, int64_t *soff, int64_t *len, int64_t *doff)
{
    pthread_mutex_lock(&c->lock);
    bool more = !c->err && !convert_stop && c->next < c->total;
    if (more) {
        int i = 0;
        while (i + 1 < c->n_src && c->next >= c->src[i].start + c->src[i].size)
            i++;
        *s = &c->src[i];
        *doff = c->next;
        *soff = c->next - c->src[i].start;
        *len = MIN((int64_t)CONVERT_CHUNK - *doff % CONVERT_CHUNK, c->src[i].size - *soff);
        c->next += *len;
    }
    pthread_mutex_unlock(&c->lock);
    return more;
}

static void *convert_worker(void *opaque)
{
    Convert *c = opaque;
    uint8_t *buf = aligned_alloc_zero(CONVERT_CHUNK);
    if (!buf) {
        convert_fail(c, -ENOMEM, false, NULL, 0);
        return NULL;
    }
    const ConvertSource *s;
    int64_t soff, len, doff;
    while (next_chunk(c, &s, &soff, &len, &doff)) {
        if (convert_range(c, s, buf, soff, len, doff) < 0)
            break;
        pthread_mutex_lock(&c->lock);
        c->done += len;
        progress_show(&c->prog, c->done);
        pthread_mutex_unlock(&c->lock);
    }
    free(buf);
    return NULL;
}

/* Runs n_workers workers over the whole target; returns the first error, or 0. */
static int convert_copy(Convert *c, int n_workers)
{
    pthread_t tid[CONVERT_MAX_WORKERS];
    int started = 0;
    for (; started < n_workers; started++)
        if (pthread_create(&tid[started], NULL, convert_worker, c) != 0)
            break;
    if (!started)
        convert_worker(c);
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    return c->err;
}

/* ---------------------------------------------------------------- convert: command line */

typedef struct ConvertArgs {
    BlockOpenOpts src_opts;
    BlockOpenOpts dst_key;   /* the target's key (--target-key-file, -o key-secret=ID, a prompt): only its secret */
    char *options;           /* -o without key-secret=ID (malloc'd) */
    const char *out_fmt;
    CreateOpts co;
    bool no_create, target_is_zero, progress, quiet, compress;
    enum CacheMode cache;    /* -t: the target's; unsafe by default, as qemu-img's */
    int workers;
    int64_t sparse;
    CliNetOpts net;          /* --timeout, --cacert, --s3-endpoint: for the (first) source's protocol driver */
} ConvertArgs;

enum { CONV_TARGET_IS_ZERO = 256, CONV_BACKING_DIR, CONV_UNSAFE_BACKING, CONV_TARGET_KEY_FILE, CONV_TIMEOUT, CONV_CACERT,
       CONV_S3_ENDPOINT };

static const struct option convert_options[] = {
    { "format", required_argument, NULL, 'f' },
    { "output-format", required_argument, NULL, 'O' },
    { "options", required_argument, NULL, 'o' },
    { "backing", required_argument, NULL, 'B' },
    { "backing-format", required_argument, NULL, 'F' },
    { "no-create", no_argument, NULL, 'n' },
    { "target-is-zero", no_argument, NULL, CONV_TARGET_IS_ZERO },
    { "compress", no_argument, NULL, 'c' },
    { "sparse-size", required_argument, NULL, 'S' },
    { "parallel", required_argument, NULL, 'm' },
    { "cache", required_argument, NULL, 't' },
    { "backing-dir", required_argument, NULL, CONV_BACKING_DIR },
    { "unsafe-backing", no_argument, NULL, CONV_UNSAFE_BACKING },
    { "timeout", required_argument, NULL, CONV_TIMEOUT },
    { "cacert", required_argument, NULL, CONV_CACERT },
    { "s3-endpoint", required_argument, NULL, CONV_S3_ENDPOINT },
    { "force-share", no_argument, NULL, 'U' },
    SECRET_LONG_OPTIONS,
    { "target-key-file", required_argument, NULL, CONV_TARGET_KEY_FILE },
    { "progress", no_argument, NULL, 'p' },
    { "quiet", no_argument, NULL, 'q' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
};

static const char convert_synopsis[] = "[-p|-q] [-c] [-f FMT] [-O FMT] [-o OPTS] [-B BACKING -F FMT] [-n] [-m N] "
                                       "[-S SIZE] [-t CACHE] SOURCE... TARGET";

/* The keys once the options are read: -o key-secret=ID names the target's --object secret (the others are
 * the sources' key), and a new encrypted target has a key before anything is created (on a terminal: asked
 * twice). -1 to go on, else an exit code. */
static int convert_keys(ConvertArgs *a, const char *target)
{
    if (secret_take_key_secret(&a->dst_key, a->co.options, &a->options) != 0 ||
        secret_options_done(&a->src_opts) != 0)
        return EXIT_USAGE;
    a->co.options = a->options;
    if (!a->no_create && !a->dst_key.secret && create_wants_key(a->out_fmt, a->co.options)) {
        if (!isatty(STDIN_FILENO)) {
            errmsg(target, "an encrypted target needs a key: --target-key-file FILE, or --object "
                   "secret,id=ID,file=FILE with -o key-secret=ID");
            return EXIT_USAGE;
        }
        if (secret_prompt_new(&a->dst_key, target) != 0)
            return EXIT_USAGE;
    }
    a->co.secret = a->dst_key.secret;
    a->co.secret_len = a->dst_key.secret_len;
    return -1;
}

/* Returns -1 to go on, else an exit code. */
static int convert_parse(int argc, char **argv, ConvertArgs *a)
{
    memset(a, 0, sizeof *a);
    block_open_opts_init(&a->src_opts);
    block_open_opts_init(&a->dst_key);
    a->src_opts.read_only = true;
    a->out_fmt = "raw";
    a->co.size = -1;
    a->workers = 8;
    a->sparse = 4096;
    a->cache = CACHE_UNSAFE;
    opterr = 0;
    optind = 1;
    int c, r;
    while ((c = cli_getopt(argc, argv, ":f:O:o:B:F:ncS:m:t:Upqh", convert_options, NULL)) != -1) {
        if ((r = secret_option(&a->src_opts, c, optarg)) >= 0) { /* the key of encrypted sources */
            if (r != 0)
                return r;
            continue;
        }
        switch (c) {
        case 'f': a->src_opts.format = optarg; break;
        case 'O': a->out_fmt = optarg; break;
        case 'o': a->co.options = optarg; break;
        case 'B': a->co.backing = optarg; break;
        case 'F': a->co.backing_format = optarg; break;
        case 'n': a->no_create = true; break;
        case CONV_TARGET_IS_ZERO: a->target_is_zero = true; break;
        case 'c': a->compress = true; break;
        case 'S':
            a->sparse = parse_size(optarg);
            if (a->sparse < 0 || a->sparse % 512 || a->sparse > (int64_t)CONVERT_CHUNK) {
                errmsg("-S", "'%s' is not a sparse size: a multiple of 512 up to 2M (0: write every byte)", optarg);
                return EXIT_USAGE;
            }
            break;
        case 'm': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > CONVERT_MAX_WORKERS) {
                errmsg("-m", "'%s' is not a number of parallel requests from 1 to %d", optarg, CONVERT_MAX_WORKERS);
                return EXIT_USAGE;
            }
            a->workers = (int)v;
            break;
        }
        case 't':
            if (strcmp(optarg, "unsafe") == 0)
                a->cache = CACHE_UNSAFE;
            else if (strcmp(optarg, "writeback") == 0)
                a->cache = CACHE_WRITEBACK;
            else if (strcmp(optarg, "none") == 0)
                a->cache = CACHE_NONE;
            else {
                errmsg("-t", "'%s' is not a cache mode: unsafe (default), writeback or none", optarg);
                return EXIT_USAGE;
            }
            break;
        case CONV_BACKING_DIR:
            if (a->src_opts.n_backing_dirs == MAX_BACKING_DIRS) {
                errmsg("--backing-dir", "more than %d directories", MAX_BACKING_DIRS);
                return EXIT_USAGE;
            }
            a->src_opts.backing_dirs[a->src_opts.n_backing_dirs++] = optarg;
            break;
        case CONV_UNSAFE_BACKING: a->src_opts.unsafe_backing = true; break;
        case CONV_TARGET_KEY_FILE: /* the key of an encrypted target */
            if (secret_from_file(&a->dst_key, optarg) != 0)
                return EXIT_USAGE;
            break;
        case CONV_TIMEOUT: a->net.timeout = optarg; break;
        case CONV_CACERT: a->net.cacert = optarg; break;
        case CONV_S3_ENDPOINT: a->net.s3_endpoint = optarg; break;
        case 'U': a->src_opts.force_share = true; break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case 'h': return cli_print_help("convert");
        default: return cli_option_error(argv, c, "convert", convert_options);
        }
    }
    if (argc - optind < 2)
        return usage_line("convert", convert_synopsis);
    if (argc - optind - 1 > CONVERT_MAX_SOURCES) {
        errmsg("convert", "more than %d sources", CONVERT_MAX_SOURCES);
        return EXIT_USAGE;
    }
    if (a->co.backing_format && !a->co.backing) {
        errmsg("-F", "needs -B BACKING");
        return EXIT_USAGE;
    }
    if (a->co.backing && !a->co.backing_format) {
        errmsg(argv[argc - 1], "backing file specified without backing format; add -F FMT");
        return EXIT_USAGE;
    }
    if (a->target_is_zero && !a->no_create) {
        errmsg("--target-is-zero", "needs -n (a new target reads as zeros anyway)");
        return EXIT_USAGE;
    }
    if (a->no_create && (a->co.options || a->co.backing)) {
        errmsg("-n", "the target exists: -o and -B are for a new one");
        return EXIT_USAGE;
    }
    if ((c = cli_net_apply(&a->net, &a->src_opts, argv[optind])) >= 0)
        return c;
    return convert_keys(a, argv[argc - 1]);
}

/* True (error printed) if target names the same file as one of the sources. */
static bool target_is_source(const char *target, char **sources, int n)
{
    struct stat t, s;
    if (stat(target, &t) != 0)
        return false;
    for (int i = 0; i < n; i++)
        if (stat(sources[i], &s) == 0 && s.st_dev == t.st_dev && s.st_ino == t.st_ino) {
            errmsg(target, "the target is also a source (%s): refusing to overwrite it", sources[i]);
            return true;
        }
    return false;
}

static int convert_open_sources(Convert *c, const ConvertArgs *a, char **names, int n)
{
    for (int i = 0; i < n; i++) {
        int rc;
        Error err;
        memset(&err, 0, sizeof err);
        ConvertSource *s = &c->src[c->n_src];
        s->name = names[i];
        s->bs = bdrv_open(names[i], &a->src_opts, &err);
        if (!s->bs) {
            rc = report_error(&err, names[i], EXIT_USAGE);
            return rc;
        }
        c->n_src++;
        s->size = bdrv_getlength(s->bs);
        if (s->size < 0) {
            errmsg(names[i], "cannot read its size: %s", strerror((int)-s->size));
            return EXIT_RUNTIME;
        }
        s->start = c->total;
        if (!add_ok_i64(c->total, s->size, &c->total)) {
            errmsg(names[i], "the sources together are larger than 8 EiB");
            return EXIT_USAGE;
        }
    }
    return -1;
}

/* Creates the target (unless -n) and opens it writable, without its backing file (never read). */
static int convert_open_target(Convert *c, ConvertArgs *a)
{
    const BlockDriver *drv = bdrv_find_driver(a->out_fmt);
    if (!drv || drv->is_protocol || drv->is_filter) {
        errmsg(a->out_fmt, "unknown image format");
        return EXIT_USAGE;
    }
    Error err;
    memset(&err, 0, sizeof err);
    if (!a->no_create) {
        if (!drv->create) {
            errmsg(a->out_fmt, "imgfuse cannot create images of this format");
            return EXIT_USAGE;
        }
        if (a->co.backing && !drv->supports_backing) {
            errmsg(c->dst_name, "format '%s' does not support backing files", drv->name);
            return EXIT_USAGE;
        }
        a->co.size = c->total;
        int r = bdrv_create(a->out_fmt, c->dst_name, &a->co, &err);
        if (r < 0) {
            if (!err.errnum)
                err.errnum = -r;
            bool usage = err.errnum == EINVAL || err.errnum == ENOTSUP || err.errnum == EOPNOTSUPP;
            return report_error(&err, c->dst_name, usage ? EXIT_USAGE : EXIT_RUNTIME);
        }
    }
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.format = a->out_fmt;
    o.read_only = false;
    o.no_backing = true;
    o.cache = a->cache;
    o.secret = a->dst_key.secret;
    o.secret_len = a->dst_key.secret_len;
    c->dst = bdrv_open(c->dst_name, &o, &err);
    if (!c->dst)
        return report_error(&err, c->dst_name, EXIT_USAGE);
    int64_t size = bdrv_getlength(c->dst);
    if (size < c->total) {
        errmsg(c->dst_name, "the target is %" PRId64 " bytes, smaller than the %" PRId64 " bytes to copy", size,
               c->total);
        return EXIT_USAGE;
    }
    /* a new encrypted container's payload decrypts to noise, not zeros (luks): its driver says so */
    c->zero_init = a->no_create ? a->target_is_zero : !a->co.backing && (!a->co.secret || bdrv_has_zero_init(c->dst));
    c->top_only = a->co.backing != NULL;
    return -1;
}

/* -c: the target must write compressed clusters; each write is then one cluster. */
static int convert_setup_compress(Convert *c, const ConvertArgs *a)
{
    if (!a->compress)
        return -1;
    BlockDriverFacts f;
    memset(&f, 0, sizeof f);
    bdrv_get_facts(c->dst, &f);
    if (!c->dst->drv->write_compressed || f.cluster_size <= 0 || f.cluster_size > CONVERT_CHUNK) {
        errmsg(c->dst_name, "format '%s' cannot be written compressed (-c): qcow2 can", c->dst->drv->name);
        return EXIT_USAGE;
    }
    c->compress = true;
    c->cluster = f.cluster_size;
    return -1;
}

static int convert_report(Convert *c, int r)
{
    char a[32], b[32];
    if (convert_stop) {
        errmsg(c->dst_name, "convert stopped by %s after %s of %s: the target is incomplete",
               convert_stop == SIGINT ? "SIGINT" : "SIGTERM", approx_size((uint64_t)c->done, a, sizeof a),
               approx_size((uint64_t)c->total, b, sizeof b));
        return EXIT_RUNTIME;
    }
    if (r < 0) {
        if (c->err_in_dst)
            errmsg(c->dst_name, "write error at offset %" PRId64 ": %s", c->err_off, strerror(-r));
        else
            errmsg(c->err_src ? c->err_src : "convert", "read error at offset %" PRId64 ": %s", c->err_off,
                   strerror(-r));
        return EXIT_RUNTIME;
    }
    return EXIT_OK;
}

int cmd_convert(int argc, char **argv)
{
    ConvertArgs a;
    int rc = convert_parse(argc, argv, &a);
    if (rc >= 0) {
        free(a.options);
        return rc;
    }
    int n_src = argc - optind - 1;
    char **names = argv + optind;
    Convert *c = calloc(1, sizeof *c);
    if (!c) {
        free(a.options);
        errmsg("convert", "out of memory");
        return EXIT_RUNTIME;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->dst_name = argv[argc - 1];
    c->sparse = a.sparse;
    static const uint8_t zeros[CONVERT_CHUNK];
    c->zeros = zeros;
    /* the verdict is one line: a driver's own lines about damage it meets are not repeated */
    log_quiet_enabled = 1;
    if (target_is_source(c->dst_name, names, n_src))
        rc = EXIT_USAGE;
    if (rc < 0)
        rc = convert_open_sources(c, &a, names, n_src);
    if (rc < 0)
        rc = convert_open_target(c, &a);
    if (rc < 0)
        rc = convert_setup_compress(c, &a);
    if (rc < 0) {
        c->prog = (Progress){ .tty = isatty(STDERR_FILENO), .cmd = "convert", .total = c->total };
        c->prog.on = !a.quiet && (a.progress || c->prog.tty); /* a bar on a terminal, lines with -p */
        struct sigaction sa = { .sa_handler = convert_on_signal };
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        int r = convert_copy(c, a.workers);
        if (r == 0 && !convert_stop && (r = bdrv_flush(c->dst)) < 0)
            convert_fail(c, r, true, NULL, 0);
        if (c->prog.on && c->prog.tty)
            fprintf(stderr, "\r\033[K");
        rc = convert_report(c, r);
    }
    if (c->dst)
        bdrv_close(c->dst);
    for (int i = 0; i < c->n_src; i++)
        bdrv_close(c->src[i].bs);
    pthread_mutex_destroy(&c->lock);
    free(c);
    free(a.options);
    return rc;
}

/* ---------------------------------------------------------------- resize */

/* "+1G" / "-512M" relative to the current size, or an absolute size. Returns the new size, -1 if bad. */
static int64_t resize_target(const char *arg, int64_t cur)
{
    int sign = arg[0] == '+' ? 1 : arg[0] == '-' ? -1 : 0;
    int64_t v = parse_size(sign ? arg + 1 : arg);
    if (v < 0)
        return -1;
    if (!sign)
        return v;
    int64_t out;
    if (sign > 0 ? !add_ok_i64(cur, v, &out) : v > cur)
        return -1;
    return sign > 0 ? out : cur - v;
}

int cmd_resize(int argc, char **argv)
{
    enum { RESIZE_SHRINK = 256 };
    static const struct option resize_options[] = {
        { "format", required_argument, NULL, 'f' }, { "shrink", no_argument, NULL, RESIZE_SHRINK },
        { "quiet", no_argument, NULL, 'q' },         { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    bool shrink = false, quiet = false;
    opterr = 0;
    optind = 1;
    int c;
    /* "-1G" is a size, not an option: stop at the first non-option (the image) */
    while ((c = cli_getopt(argc, argv, "+:f:qh", resize_options, NULL)) != -1) {
        switch (c) {
        case 'f': o.format = optarg; break;
        case RESIZE_SHRINK: shrink = true; break;
        case 'q': quiet = true; break;
        case 'h': return cli_print_help("resize");
        default: return cli_option_error(argv, c, "resize", resize_options);
        }
    }
    if (argc - optind != 2)
        return usage_line("resize", "[--shrink] [-f FMT] [-q] IMAGE [+|-]SIZE");
    const char *image = argv[optind], *arg = argv[optind + 1];
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *bs = bdrv_open(image, &o, &err);
    if (!bs)
        return report_error(&err, image, EXIT_USAGE);
    int rc = EXIT_OK;
    int64_t cur = bdrv_getlength(bs), want = resize_target(arg, cur);
    if (want < 0) {
        errmsg(arg, "invalid size (a size, +SIZE or -SIZE not below zero)");
        rc = EXIT_USAGE;
    } else if (want < cur && !shrink) {
        errmsg(image, "shrinking from %" PRId64 " to %" PRId64 " bytes drops data past the new end: give --shrink "
               "to do it", cur, want);
        rc = EXIT_USAGE;
    } else if (want != cur) {
        int r = bdrv_truncate(bs, want);
        if (r == -ENOTSUP || r == -EOPNOTSUPP) {
            errmsg(image, "format '%s' cannot be %s by imgfuse", bs->drv->name, want < cur ? "shrunk" : "grown");
            rc = EXIT_USAGE;
        } else if (r < 0 || (r = bdrv_flush(bs)) < 0) {
            errmsg(image, "cannot resize to %" PRId64 " bytes: %s", want, strerror(-r));
            rc = EXIT_RUNTIME;
        }
    }
    bdrv_close(bs);
    if (rc == EXIT_OK && !quiet)
        printf("Image resized.\n");
    return rc;
}
