/* SPDX-License-Identifier: MIT */
/*
 * commands.c - the subcommands besides mounting: `info` and `map` (describe a chain, via render.c),
 * `create` (bdrv_create), `snapshot` (list, create, delete, apply internal snapshots), `hash` (a
 * digest of the raw view, computed with OpenSSL's libcrypto, holes fed as zeros without reading them;
 * libcrypto is loaded only by `hash` and `verify`, see Crypto below) and `verify` (the same digests
 * compared with those an evidence container stores, from the driver's facts).
 * Each parses its own options (cli_getopt: long options spelled in full; info, map and hash share the open
 * options every error message may recommend), opens images read-only unless it must write, and reports
 * errors as one line "imgfuse: WHAT: reason" with exit 2 for bad usage or unopenable images, 1 for
 * runtime failures.  It knows no image format.
 */
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "imgfuse.h"
#include "util.h"

/* Options every read-only subcommand accepts to open its image. */
typedef struct OpenArgs {
    BlockOpenOpts opts;
    bool json;                /* info, map: --json, --output=json */
    bool backing_chain;       /* info: --backing-chain (map walks the chain anyway) */
    const char *algo;
    bool progress;            /* hash: -p */
    bool quiet;               /* hash: -q, no progress at all */
    const char *audit_log;    /* hash: --audit-log FILE */
    int64_t max_size;         /* hash: --max-size (0 with --force: no limit) */
    char data_file_opt[PATH_MAX + 32]; /* "qcow2.data-file=PATH" for --data-file, in opts */
    char key_slot_opt[48];    /* "luks.key-slot=N" for --key-slot, in opts */
    CliNetOpts net;           /* --timeout, --cacert, --s3-endpoint */
} OpenArgs;

enum { SUB_JSON = 256, SUB_ALGO, SUB_BACKING_DIR, SUB_NO_BACKING, SUB_FORCE_SHARE, SUB_MAX_SIZE, SUB_FORCE,
       SUB_AUDIT_LOG, SUB_BACKING, SUB_BACKING_FORMAT, SUB_UNSAFE_BACKING, SUB_DATA_FILE, SUB_IMAGE_OPTS,
       SUB_OBJECT, SUB_OUTPUT, SUB_BACKING_CHAIN, SUB_KEY_FILE, SUB_PASSPHRASE_FD, SUB_KEY_SLOT,
       SUB_TIMEOUT, SUB_CACERT, SUB_S3_ENDPOINT };

/* `imgfuse hash` refuses larger disks unless --max-size or --force says otherwise: no digest offered can
 * skip runs of zeros, and 16 TiB is about three hours at 1.6 GB/s. */
#define HASH_DEFAULT_MAX_SIZE (16LL << 40)

static const struct option sub_options[] = {
    { "format", required_argument, NULL, 'f' },
    { "json", no_argument, NULL, SUB_JSON },
    { "output", required_argument, NULL, SUB_OUTPUT },
    { "backing-chain", no_argument, NULL, SUB_BACKING_CHAIN },
    { "algo", required_argument, NULL, SUB_ALGO },
    { "backing-dir", required_argument, NULL, SUB_BACKING_DIR },
    { "no-backing", no_argument, NULL, SUB_NO_BACKING },
    { "backing", required_argument, NULL, SUB_BACKING },
    { "backing-format", required_argument, NULL, SUB_BACKING_FORMAT },
    { "unsafe-backing", no_argument, NULL, SUB_UNSAFE_BACKING },
    { "data-file", required_argument, NULL, SUB_DATA_FILE },
    { "image-opts", no_argument, NULL, SUB_IMAGE_OPTS },
    { "object", required_argument, NULL, SUB_OBJECT },
    { "force-share", no_argument, NULL, 'U' },
    { "key-file", required_argument, NULL, SUB_KEY_FILE },
    { "passphrase-fd", required_argument, NULL, SUB_PASSPHRASE_FD },
    { "key-slot", required_argument, NULL, SUB_KEY_SLOT },
    { "timeout", required_argument, NULL, SUB_TIMEOUT },
    { "cacert", required_argument, NULL, SUB_CACERT },
    { "s3-endpoint", required_argument, NULL, SUB_S3_ENDPOINT },
    { "progress", no_argument, NULL, 'p' },
    { "quiet", no_argument, NULL, 'q' },
    { "audit-log", required_argument, NULL, SUB_AUDIT_LOG },
    { "max-size", required_argument, NULL, SUB_MAX_SIZE },
    { "force", no_argument, NULL, SUB_FORCE },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
};

static int sub_usage(const char *cmd, const char *synopsis)
{
    fprintf(stderr, "imgfuse: usage: imgfuse %s %s\n", cmd, synopsis);
    return EXIT_USAGE;
}

/* Parses the options of info/map/hash. allowed lists the long options the command takes. Returns -1 to
 * go on (image in *image), else an exit code. */
static int parse_sub_args(int argc, char **argv, const char *synopsis, bool allow_json, bool allow_algo,
                          OpenArgs *a, const char **image)
{
    block_open_opts_init(&a->opts);
    a->opts.read_only = true;
    a->json = a->backing_chain = false;
    a->algo = "sha256";
    a->progress = false;
    a->quiet = false;
    a->audit_log = NULL;
    a->max_size = HASH_DEFAULT_MAX_SIZE;
    a->data_file_opt[0] = '\0';
    a->net.timeout = a->net.cacert = a->net.s3_endpoint = NULL;
    if (isatty(STDIN_FILENO))
        a->opts.ask_secret = secret_ask_tty;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = cli_getopt(argc, argv, ":f:hpqU", sub_options, NULL)) != -1) {
        switch (c) {
        case 'f': a->opts.format = optarg; break;
        case SUB_BACKING: a->opts.backing = optarg; break;
        case SUB_BACKING_FORMAT: a->opts.backing_format = optarg; break;
        case SUB_UNSAFE_BACKING: a->opts.unsafe_backing = true; break;
        case SUB_DATA_FILE:
            if (a->data_file_opt[0] || snprintf(a->data_file_opt, sizeof a->data_file_opt, "qcow2.data-file=%s",
                                                optarg) >= (int)sizeof a->data_file_opt) {
                errmsg("--data-file", a->data_file_opt[0] ? "given twice" : "path too long");
                return EXIT_USAGE;
            }
            if (bdrv_opts_add(&a->opts, a->data_file_opt) < 0) {
                errmsg("--data-file", "too many driver options");
                return EXIT_USAGE;
            }
            break;
        case SUB_KEY_FILE:
            if (secret_from_file(&a->opts, optarg) != 0)
                return EXIT_USAGE;
            break;
        case SUB_PASSPHRASE_FD:
            if (secret_from_fd(&a->opts, optarg) != 0)
                return EXIT_USAGE;
            break;
        case SUB_KEY_SLOT:
            if (snprintf(a->key_slot_opt, sizeof a->key_slot_opt, "luks.key-slot=%s", optarg) >=
                    (int)sizeof a->key_slot_opt || bdrv_opts_add(&a->opts, a->key_slot_opt) < 0) {
                errmsg("--key-slot", "invalid key slot '%s'", optarg);
                return EXIT_USAGE;
            }
            break;
        case SUB_TIMEOUT: a->net.timeout = optarg; break;
        case SUB_CACERT: a->net.cacert = optarg; break;
        case SUB_S3_ENDPOINT: a->net.s3_endpoint = optarg; break;
        case SUB_IMAGE_OPTS:
            errmsg("--image-opts", "not supported: IMAGE is a file name");
            return EXIT_USAGE;
        case SUB_OBJECT: /* qemu-img's --object secret,id=ID,file=FILE: the key */
            if (secret_option(&a->opts, SECRET_OPT_OBJECT, optarg) != 0)
                return EXIT_USAGE;
            break;
        case SUB_JSON:
            if (!allow_json)
                goto unknown;
            a->json = true;
            break;
        case SUB_OUTPUT:
        case SUB_BACKING_CHAIN:
            if (!allow_json)
                goto unknown;
            if (c == SUB_BACKING_CHAIN)
                a->backing_chain = true;
            else if (strcmp(optarg, "json") == 0 || strcmp(optarg, "human") == 0)
                a->json = optarg[0] == 'j';
            else {
                errmsg("--output", "must be 'human' or 'json', not '%s'", optarg);
                return EXIT_USAGE;
            }
            break;
        case SUB_ALGO:
            if (!allow_algo)
                goto unknown;
            a->algo = optarg;
            break;
        case SUB_BACKING_DIR:
            if (a->opts.n_backing_dirs == MAX_BACKING_DIRS) {
                errmsg("--backing-dir", "at most %d directories", MAX_BACKING_DIRS);
                return EXIT_USAGE;
            }
            a->opts.backing_dirs[a->opts.n_backing_dirs++] = optarg;
            break;
        case SUB_NO_BACKING: a->opts.no_backing = true; break;
        case 'U': a->opts.force_share = true; break;
        case 'p':
            if (!allow_algo)
                goto unknown;
            a->progress = true;
            break;
        case 'q':
            if (!allow_algo)
                goto unknown;
            a->quiet = true;
            break;
        case SUB_AUDIT_LOG:
            if (!allow_algo)
                goto unknown;
            a->audit_log = optarg;
            break;
        case SUB_MAX_SIZE:
            if (!allow_algo)
                goto unknown;
            if ((a->max_size = parse_size(optarg)) <= 0) {
                errmsg("--max-size", "invalid size '%s'", optarg);
                return EXIT_USAGE;
            }
            break;
        case SUB_FORCE:
            if (!allow_algo)
                goto unknown;
            a->max_size = 0;
            break;
        case 'h':
            return cli_print_help(argv[0]);
        default:
        unknown:
            return cli_option_error(argv, c, argv[0], sub_options);
        }
    }
    if (a->opts.no_backing && a->opts.backing) {
        errmsg("--no-backing", "cannot be combined with --backing");
        return EXIT_USAGE;
    }
    if (backing_is_a_dir(a->opts.backing) || secret_objects_done(&a->opts) != 0)
        return EXIT_USAGE;
    if (argc - optind < 1 || (argc - optind > 1 && !allow_algo)) /* hash takes several images */
        return sub_usage(argv[0], synopsis);
    for (int i = optind; i < argc; i++)
        if (cli_url_error(argv[i]))
            return EXIT_USAGE;
    *image = argv[optind];
    return cli_net_apply(&a->net, &a->opts, *image);
}

static BlockNode *open_or_report(const char *image, const BlockOpenOpts *opts, int *rc)
{
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *bs = bdrv_open(image, opts, &err);
    if (!bs)
        *rc = report_error(&err, image, EXIT_USAGE);
    return bs;
}

static int write_all_stdout(const char *s, size_t len)
{
    if (fwrite(s, 1, len, stdout) != len || fflush(stdout) != 0) {
        errmsg("stdout", "%s", strerror(errno));
        return EXIT_RUNTIME;
    }
    return EXIT_OK;
}

/* ---------------------------------------------------------------- info, map */

static int info_out(BlockNode *bs, const OpenArgs *a, const char *image, StrBuf *sb);

/* info and map: their options, the image opened, out() writing through sb, the image closed. */
static int run_info_map(int argc, char **argv, int (*out)(BlockNode *, const OpenArgs *, const char *, StrBuf *))
{
    OpenArgs a;
    const char *image;
    int rc = parse_sub_args(argc, argv, "[--output=human|json] [--backing-chain] [-f FMT] IMAGE", true, false, &a,
                            &image);
    if (rc >= 0)
        return rc;
    a.opts.metadata_only = out == info_out; /* info reads no data: an encrypted image opens without its key */
    BlockNode *bs = open_or_report(image, &a.opts, &rc);
    if (!bs)
        return rc;
    StrBuf sb;
    sb_init(&sb);
    rc = out(bs, &a, image, &sb);
    sb_free(&sb);
    bdrv_close(bs);
    return rc;
}

static int info_out(BlockNode *bs, const OpenArgs *a, const char *image, StrBuf *sb)
{
    (void)image;
    if (a->json && a->backing_chain)
        render_info_json_chain(sb, bs, NULL);
    else if (a->json)
        render_info_json(sb, bs, NULL);
    else
        render_info_text(sb, bs, NULL);
    return write_all_stdout(sb->s, sb->len);
}

/* Streamed: runs are written as the walk closes them, in pieces of about MAP_PIECE bytes. */
static int map_out(BlockNode *bs, const OpenArgs *a, const char *image, StrBuf *sb)
{
    enum { MAP_PIECE = 64 * 1024 };
    MapStream m;
    map_stream_init(&m, bs, a->json ? MAP_JSON : MAP_TEXT);
    int r, rc = EXIT_OK;
    do {
        sb->len = 0;
        r = map_stream_next(&m, sb, MAP_PIECE);
        if (sb->len && (rc = write_all_stdout(sb->s, sb->len)) != EXIT_OK)
            break;
    } while (r > 0);
    if (r < 0 && rc == EXIT_OK) {
        errmsg(image, "block status failed: %s", strerror(-r));
        rc = EXIT_RUNTIME;
    }
    return rc;
}

int cmd_info(int argc, char **argv)
{
    return run_info_map(argc, argv, info_out);
}

int cmd_map(int argc, char **argv)
{
    return run_info_map(argc, argv, map_out);
}

/* ---------------------------------------------------------------- create */

/* `create [-f FMT] -o help`: the creation options of FMT (all formats that create images without -f),
 * one line each, from the drivers' own tables. */
static int create_options_help(const char *fmt)
{
    const BlockDriver *one = fmt ? bdrv_find_driver(fmt) : NULL;
    if (fmt && (!one || one->is_protocol || one->is_filter || !one->create)) {
        errmsg(fmt, one && !one->create ? "imgfuse cannot create images of this format" : "unknown image format");
        return EXIT_USAGE;
    }
    for (const BlockDriver *const *d = bdrv_driver_list(); *d; d++) {
        if ((*d)->is_protocol || (*d)->is_filter || !(*d)->create || (one && *d != one))
            continue;
        if (!(*d)->create_options || !(*d)->create_options->name) {
            printf("%s: no creation options\n", (*d)->name);
            continue;
        }
        printf("%s: creation options (-o KEY=VALUE,...):\n", (*d)->name);
        for (const BlockOptionSpec *sp = (*d)->create_options; sp->name; sp++) {
            char key[64];
            snprintf(key, sizeof key, "%s=%s", sp->name, bdrv_opt_type_name(sp->type));
            printf("  %-24s %s\n", key, sp->help);
        }
    }
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_RUNTIME;
}

/* Whether a new image of fmt with these options is encrypted (so the prompt asks for its passphrase). */
bool create_wants_key(const char *fmt, const char *options)
{
    return strcmp(fmt, "luks") == 0 || (options && strstr(options, "encrypt.format=") != NULL);
}

int cmd_create(int argc, char **argv)
{
    static const char synopsis[] = "-f FMT [-o OPTS] [-b BACKING -F FMT] FILE [SIZE]";
    static const struct option create_options[] = {
        { "format", required_argument, NULL, 'f' },
        { "options", required_argument, NULL, 'o' },
        { "backing", required_argument, NULL, 'b' },
        { "backing-format", required_argument, NULL, 'F' },
        { "key-file", required_argument, NULL, SUB_KEY_FILE },
        { "passphrase-fd", required_argument, NULL, SUB_PASSPHRASE_FD },
        { "object", required_argument, NULL, SUB_OBJECT },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL;
    CreateOpts co = { .size = -1 };
    BlockOpenOpts key;
    block_open_opts_init(&key);
    opterr = 0;
    optind = 1;
    int c;
    while ((c = cli_getopt(argc, argv, ":f:o:b:F:h", create_options, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'o': co.options = optarg; break;
        case 'b': co.backing = optarg; break;
        case 'F': co.backing_format = optarg; break;
        case SUB_KEY_FILE:
        case SUB_PASSPHRASE_FD:
            if ((c == SUB_KEY_FILE ? secret_from_file(&key, optarg) : secret_from_fd(&key, optarg)) != 0)
                return EXIT_USAGE;
            break;
        case SUB_OBJECT: /* qemu-img's --object secret,id=ID,file=FILE, named by -o key-secret=ID */
            if (secret_option(&key, SECRET_OPT_OBJECT, optarg) != 0)
                return EXIT_USAGE;
            break;
        case 'h': return cli_print_help("create");
        default: return cli_option_error(argv, c, "create", create_options);
        }
    }
    if (co.options && strcmp(co.options, "help") == 0)
        return create_options_help(fmt);
    int npos = argc - optind;
    if (!fmt || npos < 1 || npos > 2)
        return sub_usage("create", synopsis);
    const char *file = argv[optind];
    if (npos == 2) {
        co.size = parse_size(argv[optind + 1]);
        if (co.size < 0) {
            errmsg(argv[optind + 1], "invalid size");
            return EXIT_USAGE;
        }
    } else if (!co.backing) {
        errmsg(file, "a SIZE is needed when there is no backing file");
        return EXIT_USAGE;
    }
    if (co.backing_format && !co.backing) {
        errmsg("-F", "needs -b BACKING");
        return EXIT_USAGE;
    }
    if (co.backing && !co.backing_format && strcmp(fmt, "vhdx") != 0) {
        /* as qemu-img since 6.1: a probed backing format is how raw data gets read as an image (a VHDX's
         * parent is a VHDX by definition: its create opens nothing else) */
        errmsg(file, "backing file specified without backing format; add -F FMT");
        return EXIT_USAGE;
    }
    const BlockDriver *drv = bdrv_find_driver(fmt);
    if (!drv || drv->is_protocol || drv->is_filter) {
        errmsg(fmt, "unknown image format");
        return EXIT_USAGE;
    }
    if (co.backing && !drv->supports_backing) {
        errmsg(file, "format '%s' does not support backing files", drv->name);
        return EXIT_USAGE;
    }
    char *rest = NULL; /* -o without key-secret=ID */
    if (secret_take_key_secret(&key, co.options, &rest) != 0 || secret_objects_done(&key) != 0 ||
        (!key.secret && create_wants_key(fmt, rest) && isatty(STDIN_FILENO) && secret_prompt_new(&key, file) != 0)) {
        free(rest);
        return EXIT_USAGE;
    }
    co.options = rest;
    co.secret = key.secret;
    co.secret_len = key.secret_len;
    Error err;
    memset(&err, 0, sizeof err);
    int r = bdrv_create(fmt, file, &co, &err);
    free(rest);
    if (r < 0) {
        if (!err.errnum)
            err.errnum = -r;
        bool usage = err.errnum == EINVAL || err.errnum == ENOTSUP || err.errnum == EOPNOTSUPP ||
                     err.errnum == ENOKEY;
        return report_error(&err, file, usage ? EXIT_USAGE : EXIT_RUNTIME);
    }
    return EXIT_OK;
}

/* ---------------------------------------------------------------- snapshot */

static void format_vm_clock(uint64_t ns, char *buf, size_t len)
{
    uint64_t ms = ns / 1000000;
    snprintf(buf, len, "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64, ms / 3600000,
             ms / 60000 % 60, ms / 1000 % 60, ms % 1000);
}

static int snapshot_list(BlockNode *bs, const char *image)
{
    SnapshotInfo *list = NULL;
    int n = bdrv_snapshot_list(bs, &list);
    if (n < 0) {
        errmsg(image, "cannot list snapshots: %s", strerror(-n));
        return EXIT_RUNTIME;
    }
    StrBuf sb;
    sb_init(&sb);
    if (n > 0)
        sb_printf(&sb, "%-8s %-24s %12s %19s %15s %10s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for (int i = 0; i < n; i++) {
        char vmsize[32], date[32] = "-", clock[32];
        time_t t = (time_t)list[i].date_sec;
        struct tm tm;
        if (localtime_r(&t, &tm))
            strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
        format_size(list[i].vm_state_size, vmsize, sizeof vmsize);
        format_vm_clock(list[i].vm_clock_nsec, clock, sizeof clock);
        char icount[24] = ""; /* empty when the VM ran without instruction counting, as qemu-img shows it */
        if (list[i].icount != UINT64_MAX)
            snprintf(icount, sizeof icount, "%" PRIu64, list[i].icount);
        StrBuf id, name; /* escaped: a name from the image must not forge a line */
        sb_init(&id);
        sb_init(&name);
        sb_text_str(&id, list[i].id);
        sb_text_str(&name, list[i].name);
        sb_printf(&sb, "%-8s %-24s %12s %19s %15s %10s\n", id.s ? id.s : "", name.s ? name.s : "", vmsize, date,
                  clock, icount);
        sb_free(&id);
        sb_free(&name);
    }
    int rc = write_all_stdout(sb.s ? sb.s : "", sb.len);
    sb_free(&sb);
    free(list);
    return rc;
}

int cmd_snapshot(int argc, char **argv)
{
    static const char synopsis[] = "-l|-c NAME|-d NAME|-a NAME IMAGE";
    char action = 0;
    const char *name = NULL;
    opterr = 0;
    optind = 1;
    int c;
    static const struct option snap_options[] = { { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
    while ((c = cli_getopt(argc, argv, ":lc:d:a:h", snap_options, NULL)) != -1) {
        switch (c) {
        case 'l': case 'c': case 'd': case 'a':
            if (action) {
                errmsg(argv[optind - 1], "only one of -l, -c, -d, -a");
                return EXIT_USAGE;
            }
            action = (char)c;
            name = optarg;
            break;
        case 'h': return cli_print_help("snapshot");
        default: return cli_option_error(argv, c, "snapshot", snap_options);
        }
    }
    if (!action || argc - optind != 1)
        return sub_usage("snapshot", synopsis);
    const char *image = argv[optind];
    BlockOpenOpts opts;
    block_open_opts_init(&opts);
    opts.read_only = action == 'l';
    int rc = EXIT_OK;
    BlockNode *bs = open_or_report(image, &opts, &rc);
    if (!bs)
        return rc;
    Error err;
    memset(&err, 0, sizeof err);
    int r = 0;
    switch (action) {
    case 'l': rc = snapshot_list(bs, image); break;
    case 'c': r = bdrv_snapshot_create(bs, name, &err); break;
    case 'd': r = bdrv_snapshot_delete(bs, name, &err); break;
    case 'a': r = bdrv_snapshot_goto(bs, name, &err); break;
    }
    if (r < 0) {
        if (!err.errnum)
            err.errnum = -r;
        rc = report_error(&err, image, EXIT_RUNTIME);
    }
    r = bdrv_flush(bs);
    if (r < 0 && rc == EXIT_OK) {
        errmsg(image, "flush failed: %s", strerror(-r));
        rc = EXIT_RUNTIME;
    }
    bdrv_close(bs);
    return rc;
}

/* ---------------------------------------------------------------- hash */

#define HASH_CHUNK (4 * 1024 * 1024)

/* Zeros for the digest of holes: never written, so its pages stay the kernel's shared zero page. */
static uint8_t hash_zeros[1024 * 1024];

/* SIGINT/SIGTERM during `imgfuse hash`: the loop stops at the next chunk. */
static volatile sig_atomic_t hash_stop;

static void hash_on_signal(int sig)
{
    hash_stop = sig;
}

/* OpenSSL's digest functions, loaded when `imgfuse hash` runs. Linking libcrypto into the binary cost
 * every mount its relocation at start-up (about a millisecond before the first byte) and 1.3 MiB of
 * resident memory, for a command mounts never use. */
typedef struct Crypto {
    void *lib;
    __typeof__(EVP_sha256) *sha256;
    __typeof__(EVP_sha1) *sha1;
    __typeof__(EVP_md5) *md5;
    __typeof__(EVP_MD_CTX_new) *ctx_new;
    __typeof__(EVP_MD_CTX_free) *ctx_free;
    __typeof__(EVP_DigestInit_ex) *init;
    __typeof__(EVP_DigestUpdate) *update;
    __typeof__(EVP_DigestFinal_ex) *final;
} Crypto;

static Crypto crypto;

static int crypto_load(void)
{
    crypto.lib = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!crypto.lib) {
        errmsg("hash", "cannot load OpenSSL's libcrypto.so.3 (Debian package libssl3): %s", dlerror());
        return -1;
    }
    struct { const char *name; void **slot; } syms[] = {
        { "EVP_sha256", (void **)&crypto.sha256 }, { "EVP_sha1", (void **)&crypto.sha1 },
        { "EVP_md5", (void **)&crypto.md5 }, { "EVP_MD_CTX_new", (void **)&crypto.ctx_new },
        { "EVP_MD_CTX_free", (void **)&crypto.ctx_free }, { "EVP_DigestInit_ex", (void **)&crypto.init },
        { "EVP_DigestUpdate", (void **)&crypto.update }, { "EVP_DigestFinal_ex", (void **)&crypto.final },
    };
    for (size_t i = 0; i < ARRAY_SIZE(syms); i++) {
        *syms[i].slot = dlsym(crypto.lib, syms[i].name);
        if (!*syms[i].slot) {
            errmsg("hash", "libcrypto.so.3 has no %s", syms[i].name);
            dlclose(crypto.lib);
            crypto.lib = NULL;
            return -1;
        }
    }
    return 0;
}

/* The digests of one `imgfuse hash` run: the algorithms --algo lists, in its order, each with its
 * context. Every byte of the raw view is read once and fed to each of them. */
#define HASH_MAX_ALGOS 3

/* Digests are fed in slices of this size, so that a chunk read once stays in the CPU cache while each
 * digest goes over it. */
#define HASH_SLICE (128 * 1024)

typedef struct HashSet {
    int n;
    const char *name[HASH_MAX_ALGOS];
    const EVP_MD *md[HASH_MAX_ALGOS];
    EVP_MD_CTX *ctx[HASH_MAX_ALGOS];
} HashSet;

/* Parses --algo's comma-separated list ("sha256", "md5,sha1,sha256") into hs->name; -1 with one line
 * when an item is not one of the three or comes twice. */
static int hash_parse_algos(const char *list, HashSet *hs)
{
    static const char *const known[] = { "sha256", "sha1", "md5" };
    memset(hs, 0, sizeof *hs);
    for (const char *p = list;; p++) {
        size_t len = strcspn(p, ",");
        int k = -1;
        for (int i = 0; i < (int)ARRAY_SIZE(known); i++)
            if (strlen(known[i]) == len && strncmp(p, known[i], len) == 0)
                k = i;
        if (k < 0) {
            errmsg("--algo", "invalid value '%s' (expected sha256, sha1 or md5, or a list such as md5,sha1,sha256)",
                   list);
            return -1;
        }
        for (int i = 0; i < hs->n; i++) {
            if (hs->name[i] == known[k]) {
                errmsg("--algo", "invalid value '%s' (%s named twice)", list, known[k]);
                return -1;
            }
        }
        hs->name[hs->n++] = known[k];
        p += len;
        if (!*p)
            return 0;
    }
}

/* Makes a context for each algorithm of hs (after crypto_load). Returns 0 or -ENOMEM. */
static int hash_set_open(HashSet *hs)
{
    for (int i = 0; i < hs->n; i++) {
        hs->md[i] = strcmp(hs->name[i], "sha256") == 0 ? crypto.sha256()
                    : strcmp(hs->name[i], "sha1") == 0 ? crypto.sha1() : crypto.md5();
        if (!hs->md[i] || !(hs->ctx[i] = crypto.ctx_new()))
            return -ENOMEM;
    }
    return 0;
}

static void hash_set_close(HashSet *hs)
{
    for (int i = 0; i < hs->n; i++)
        crypto.ctx_free(hs->ctx[i]);
}

/* Feeds len bytes at p into every digest of hs, slice by slice. */
static int hash_update(HashSet *hs, const uint8_t *p, size_t len)
{
    for (size_t off = 0; off < len; off += HASH_SLICE) {
        size_t k = MIN(len - off, (size_t)HASH_SLICE);
        for (int i = 0; i < hs->n; i++)
            if (crypto.update(hs->ctx[i], p + off, k) != 1)
                return -EIO;
    }
    return 0;
}

/* Feeds n zero bytes into every digest from hash_zeros (nothing read, nothing allocated). */
static int hash_zero_run(HashSet *hs, int64_t n)
{
    while (n > 0 && !hash_stop) {
        size_t k = (size_t)MIN(n, (int64_t)sizeof(hash_zeros));
        if (hash_update(hs, hash_zeros, k) < 0)
            return -EIO;
        n -= (int64_t)k;
    }
    return 0;
}

/* Feeds the raw view into every digest of hs: ranges the chain reports as zeros are fed from hash_zeros
 * unread, one block-status call per run. Stops early (*done < size) when hash_stop is set. */
static int hash_image(BlockNode *bs, HashSet *hs, Progress *prog, int64_t *done)
{
    int64_t size = bdrv_getlength(bs);
    if (size < 0)
        return (int)size;
    prog->total = size;
    uint8_t *buf = aligned_alloc_zero(HASH_CHUNK);
    int r = buf ? 0 : -ENOMEM;
    int64_t pos = 0;
    while (r == 0 && pos < size && !hash_stop) {
        BlockStatus st;
        memset(&st, 0, sizeof st);
        r = bdrv_block_status_above(bs, pos, size - pos, &st);
        if (r < 0)
            break;
        int64_t n = st.bytes > 0 ? MIN(st.bytes, size - pos) : MIN((int64_t)HASH_CHUNK, size - pos);
        if ((st.flags & BDRV_BLOCK_ZERO) && st.bytes > 0) {
            /* a zero run, in steps so that progress and signals are seen */
            for (int64_t end = pos + n; r == 0 && pos < end && !hash_stop; progress_show(prog, pos)) {
                int64_t k = MIN(end - pos, (int64_t)256 << 20);
                r = hash_zero_run(hs, k);
                pos += k;
            }
            continue;
        }
        n = MIN(n, (int64_t)HASH_CHUNK);
        if ((r = bdrv_pread(bs, pos, n, buf)) < 0)
            break;
        r = hash_update(hs, buf, (size_t)n);
        pos += n;
        progress_show(prog, pos);
    }
    *done = pos;
    free(buf);
    return r < 0 ? r : 0;
}

/* With --audit-log: appends the line of one image (n digests in hex, rc) and returns rc, or 1 with one
 * line if the log cannot be written. */
static int hash_audit(Audit *audit, const OpenArgs *a, const char *image, int64_t size, int n, const HashSet *hs,
                      const char *const *hex, int rc)
{
    int r = audit_hash(audit, image, size, n, hs->name, hex, rc);
    if (r < 0) {
        errmsg(a->audit_log, "cannot write the audit log: %s", strerror(-r));
        return MAX(rc, EXIT_RUNTIME);
    }
    return rc;
}

/* Hashes one image with every digest of hs and prints a sha256sum-style line per digest. Returns its
 * exit status: 2 if it cannot be opened or is over --max-size, 1 if reading or hashing failed or a
 * signal stopped it (hash_stop), else 0. several: progress lines name the image. */
static int hash_one(const char *image, const OpenArgs *a, HashSet *hs, bool several, Audit *audit)
{
    int rc;
    char hex[HASH_MAX_ALGOS][2 * EVP_MAX_MD_SIZE + 1];
    const char *hexp[HASH_MAX_ALGOS];
    BlockNode *bs = open_or_report(image, &a->opts, &rc);
    audit_begin(audit, bs, NULL);
    if (!bs)
        return hash_audit(audit, a, image, -1, 0, hs, hexp, rc);
    int64_t size = bdrv_getlength(bs);
    if (a->max_size && size > a->max_size) {
        char h[32], lim[32];
        errmsg(image, "virtual size %" PRId64 " bytes (%s) is above the limit of %s for hash: give --max-size SIZE "
               "or --force", size, approx_size((uint64_t)size, h, sizeof h),
               approx_size((uint64_t)a->max_size, lim, sizeof lim));
        bdrv_close(bs);
        return hash_audit(audit, a, image, size, 0, hs, hexp, EXIT_USAGE);
    }
    Progress prog = { .tty = isatty(STDERR_FILENO), .name = several ? image : NULL };
    prog.on = !a->quiet && (a->progress || prog.tty);
    int64_t done = 0;
    int r = 0;
    for (int i = 0; r == 0 && i < hs->n; i++)
        r = crypto.init(hs->ctx[i], hs->md[i], NULL) == 1 ? 0 : -EIO;
    if (r == 0)
        r = hash_image(bs, hs, &prog, &done);
    if (prog.on && prog.tty)
        fprintf(stderr, "\r\033[K");
    unsigned char digest[HASH_MAX_ALGOS][EVP_MAX_MD_SIZE];
    unsigned int dlen[HASH_MAX_ALGOS] = { 0 };
    for (int i = 0; r == 0 && !hash_stop && i < hs->n; i++)
        r = crypto.final(hs->ctx[i], digest[i], &dlen[i]) == 1 ? 0 : -EIO;
    if (r == 0 && hash_stop) {
        char h[32], t[32];
        errmsg(image, "hash stopped by %s after %s of %s: no digest", hash_stop == SIGINT ? "SIGINT" : "SIGTERM",
               approx_size((uint64_t)done, h, sizeof h), approx_size((uint64_t)size, t, sizeof t));
        rc = EXIT_RUNTIME;
    } else if (r < 0) {
        errmsg(image, "cannot hash: %s", strerror(-r));
        rc = EXIT_RUNTIME;
    } else {
        for (int i = 0; i < hs->n; i++) {
            for (unsigned j = 0; j < dlen[i]; j++)
                sprintf(hex[i] + 2 * j, "%02x", digest[i][j]);
            hex[i][2 * dlen[i]] = '\0';
            hexp[i] = hex[i];
            printf("%s  %s\n", hex[i], image);
        }
        rc = fflush(stdout) == 0 ? EXIT_OK : EXIT_RUNTIME;
    }
    bdrv_close(bs);
    return hash_audit(audit, a, image, size, rc == EXIT_OK ? hs->n : 0, hs, hexp, rc);
}

/* imgfuse hash [OPTIONS] IMAGE...: each image in turn, all digests in one pass. The exit status is the
 * highest of the images' (0 only if every digest was printed); a signal stops the whole run. */
int cmd_hash(int argc, char **argv)
{
    OpenArgs a;
    const char *image;
    int rc = parse_sub_args(argc, argv,
                            "[--algo sha256|sha1|md5[,...]] [-p|-q] [--max-size SIZE|--force] [--audit-log FILE] [-f FMT] IMAGE...",
                            false, true, &a, &image);
    if (rc >= 0)
        return rc;
    int first = optind;
    HashSet hs;
    if (hash_parse_algos(a.algo, &hs) < 0)
        return EXIT_USAGE;
    Audit audit = { .fd = 0 };
    if (a.audit_log && (rc = audit_open(&audit, a.audit_log)) != 0)
        return rc;
    if (crypto_load() < 0) {
        audit_close(&audit);
        return EXIT_RUNTIME;
    }
    struct sigaction sa = { .sa_handler = hash_on_signal }, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    hash_stop = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    if (hash_set_open(&hs) < 0) {
        errmsg("hash", "%s", strerror(ENOMEM));
        rc = EXIT_RUNTIME;
    } else {
        rc = EXIT_OK;
        for (int i = first; i < argc && !hash_stop; i++) {
            int r = hash_one(argv[i], &a, &hs, argc - first > 1, &audit);
            rc = MAX(rc, r);
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    hash_set_close(&hs);
    audit_close(&audit);
    dlclose(crypto.lib);
    crypto.lib = NULL;
    return rc;
}

/* ---------------------------------------------------------------- verify */

/* One digest verify computes: its name, the hex the container stores, and what the content gave. */
typedef struct VerifyDigest {
    const char *name;
    const char *stored;
    char computed[2 * EVP_MAX_MD_SIZE + 1];
} VerifyDigest;

/* The digests of hs (after hash_image) as hex into v. 0 or -EIO. */
static int verify_finish(HashSet *hs, VerifyDigest *v)
{
    for (int i = 0; i < hs->n; i++) {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        if (crypto.final(hs->ctx[i], d, &len) != 1)
            return -EIO;
        for (unsigned j = 0; j < len; j++)
            sprintf(v[i].computed + 2 * j, "%02x", d[j]);
        v[i].computed[2 * len] = '\0';
    }
    return 0;
}

/* Prints the verdict on the n digests of v: one line on stdout when all match (EXIT_OK), else one line
 * on stderr naming each digest that differs and the unreadable ranges (EXIT_RUNTIME). */
static int verify_report(const char *image, BlockNode *bs, const VerifyDigest *v, int n)
{
    StrBuf sb = {0};
    bool match = true;
    for (int i = 0; i < n; i++)
        match &= strcmp(v[i].computed, v[i].stored) == 0;
    for (int i = 0; i < n; i++) {
        if (match)
            sb_printf(&sb, "%s%s %s", i ? ", " : "", v[i].name, v[i].computed);
        else if (strcmp(v[i].computed, v[i].stored) != 0)
            sb_printf(&sb, "%s%s %s (stored %s)", sb.len ? ", " : "", v[i].name, v[i].computed, v[i].stored);
    }
    ReadErrorSummary sum;
    ReadErrorRecord first;
    bdrv_read_errors_summary(bs, &sum);
    uint64_t bad = sum.ranges + sum.unlisted;
    if (bad && bdrv_read_errors_from(bs, 0, &first, 1) == 1)
        sb_printf(&sb, "; %" PRIu64 " unreadable range%s hashed as zeros, the first %" PRId64 " bytes at offset %" PRId64
                  " (%s)", bad, bad == 1 ? "" : "s", first.length, first.offset, first.reason);
    if (match)
        printf("%s: verified: %s match%s the stored hash%s\n", image, sb.s ? sb.s : "", n == 1 ? "es" : "",
               n == 1 ? "" : "es");
    else
        errmsg(image, "verification failed: the content does not match the stored hash: %s", sb.s ? sb.s : "");
    sb_free(&sb);
    return match ? (fflush(stdout) == 0 ? EXIT_OK : EXIT_RUNTIME) : EXIT_RUNTIME;
}

/* Hashes the raw view of bs with the digests the container stores (facts) and compares. */
static int verify_image(const char *image, const OpenArgs *a, BlockNode *bs, const BlockDriverFacts *f)
{
    VerifyDigest v[2];
    HashSet hs;
    memset(&hs, 0, sizeof hs);
    if (f->stored_md5[0])
        v[hs.n] = (VerifyDigest){ .name = "md5", .stored = f->stored_md5 }, hs.name[hs.n++] = "md5";
    if (f->stored_sha1[0])
        v[hs.n] = (VerifyDigest){ .name = "sha1", .stored = f->stored_sha1 }, hs.name[hs.n++] = "sha1";
    if (crypto_load() < 0)
        return EXIT_RUNTIME;
    int r = hash_set_open(&hs);
    for (int i = 0; r == 0 && i < hs.n; i++)
        r = crypto.init(hs.ctx[i], hs.md[i], NULL) == 1 ? 0 : -EIO;
    Progress prog = { .tty = isatty(STDERR_FILENO), .cmd = "verify" };
    prog.on = !a->quiet && (a->progress || prog.tty);
    int64_t done = 0;
    log_quiet_enabled = 1; /* the verdict is one line: no line per damaged chunk */
    if (r == 0)
        r = hash_image(bs, &hs, &prog, &done);
    log_quiet_enabled = 0;
    if (prog.on && prog.tty)
        fprintf(stderr, "\r\033[K");
    if (r == 0 && !hash_stop)
        r = verify_finish(&hs, v);
    int rc;
    if (r == 0 && hash_stop) {
        errmsg(image, "verify stopped by %s: no verdict", hash_stop == SIGINT ? "SIGINT" : "SIGTERM");
        rc = EXIT_RUNTIME;
    } else if (r < 0) {
        errmsg(image, "cannot verify: %s", strerror(-r));
        rc = EXIT_RUNTIME;
    } else {
        rc = verify_report(image, bs, v, hs.n);
    }
    hash_set_close(&hs);
    dlclose(crypto.lib);
    crypto.lib = NULL;
    return rc;
}

/* imgfuse verify [OPTIONS] IMAGE: the content against the hashes the container stores (EWF's MD5 and
 * SHA1). Exit 0 when every stored hash matches, 1 when one does not (one line) or reading failed, 2 when
 * IMAGE cannot be opened or stores no hash. Unreadable ranges are hashed as zeros and counted. */
int cmd_verify(int argc, char **argv)
{
    OpenArgs a;
    const char *image;
    int rc = parse_sub_args(argc, argv, "[-p|-q] [--max-size SIZE|--force] [-f FMT] IMAGE", false, true, &a, &image);
    if (rc >= 0)
        return rc;
    bool algo = false;
    for (int i = 1; i < optind; i++)
        algo |= strncmp(argv[i], "--algo", 6) == 0;
    if (a.audit_log || algo) {
        errmsg(a.audit_log ? "--audit-log" : "--algo", "not taken by verify (the container's stored hashes decide)");
        return EXIT_USAGE;
    }
    if (argc - optind != 1)
        return sub_usage(argv[0], "[-p|-q] [--max-size SIZE|--force] [-f FMT] IMAGE");
    a.opts.on_read_error = READ_ERROR_ZERO;
    BlockNode *bs = open_or_report(image, &a.opts, &rc);
    if (!bs)
        return rc;
    BlockDriverFacts f;
    bdrv_get_facts(bs, &f);
    int64_t size = bdrv_getlength(bs);
    char h[32], lim[32];
    if (!f.stored_md5[0] && !f.stored_sha1[0]) {
        errmsg(image, "nothing to verify: the image (format '%s') stores no content hash", bs->drv->name);
        rc = EXIT_USAGE;
    } else if (a.max_size && size > a.max_size) {
        errmsg(image, "virtual size %" PRId64 " bytes (%s) is above the limit of %s for verify: give --max-size "
               "SIZE or --force", size, approx_size((uint64_t)size, h, sizeof h),
               approx_size((uint64_t)a.max_size, lim, sizeof lim));
        rc = EXIT_USAGE;
    } else {
        struct sigaction sa = { .sa_handler = hash_on_signal }, old_int, old_term;
        sigemptyset(&sa.sa_mask);
        hash_stop = 0;
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        rc = verify_image(image, &a, bs, &f);
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    bdrv_close(bs);
    return rc;
}
