/* SPDX-License-Identifier: MIT */
/*
 * main.c - the command line: dispatches the subcommands (info, map, create, convert, check, ...; a command
 * word is never taken for a file name: unknown bare words are errors) and runs the
 * main job, `imgfuse [OPTIONS] IMAGE MOUNTPOINT` (also `imgfuse mount ...`).  It parses the options (GNU
 * getopt_long with cli.c's exact spelling, options also after the positional arguments; every mount option
 * is also -o NAME[=VALUE] through the same table, for fstab), checks the mountpoint, opens the image and
 * its chain BEFORE mounting (so an open error never leaves a mount behind), builds the FUSE options,
 * detaches into the background unless --foreground, and after the session ends flushes and closes the
 * chain.  Errors are one line, "imgfuse: WHAT: reason"; exit 2 for bad usage or an image that cannot be
 * opened, 1 for runtime failures.  It knows no image format.
 */
#define FUSE_USE_VERSION 312

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <fuse_opt.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "imgfuse.h"
#include "util.h"

#define MOUNT_THREADS 16

void errmsg(const char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "imgfuse: %s: ", what);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int report_error(const Error *err, const char *fallback_what, int code)
{
    if (err->msg[0])
        fprintf(stderr, "imgfuse: %s\n", err->msg);
    else
        errmsg(fallback_what, "%s", err->errnum ? strerror(err->errnum) : "failed");
    return code;
}

static bool command_word_error(const char *word);
static bool fuse_conf_allows_other(void);

static void usage_hint(void)
{
    fprintf(stderr, "imgfuse: usage: imgfuse [OPTIONS] IMAGE MOUNTPOINT (see imgfuse --help)\n");
}

/* The driver options, from the drivers' own tables. */
static void print_driver_options(void)
{
    printf("Driver options (-o DRIVER.KEY=VALUE, repeatable, also in fstab; the long options above\n"
           "that name one are the same):\n");
    for (const BlockDriver *const *d = bdrv_driver_list(); *d; d++) {
        for (const BlockOptionSpec *sp = (*d)->options; sp && sp->name; sp++) {
            char key[96];
            snprintf(key, sizeof key, "%s.%s=%s", (*d)->name, sp->name, bdrv_opt_type_name(sp->type));
            printf("  %-26s %s\n", key, sp->help);
        }
    }
}

static void print_help(void)
{
    printf(
"Usage: imgfuse [OPTIONS] IMAGE MOUNTPOINT      mount IMAGE (read-only unless --rw)\n"
"       imgfuse info [--output=json] IMAGE      describe an image and its backing chain\n"
"       imgfuse map [--output=json] IMAGE       allocation map of the chain\n"
"       imgfuse create -f FMT [-o OPTS] [-b BACKING -F FMT] FILE [SIZE]\n"
"       imgfuse snapshot -l|-c NAME|-d NAME|-a NAME IMAGE\n"
"       imgfuse hash [--algo ALGO[,...]] [-p|-q] [--max-size SIZE|--force] [--audit-log FILE] IMAGE...\n"
"       imgfuse verify [-p|-q] IMAGE          content against the hashes an evidence container stores\n"
"       imgfuse convert [-p] [-c] [-O FMT] [-o OPTS] SOURCE... TARGET   copy into any writable format\n"
"       imgfuse resize [--shrink] IMAGE [+|-]SIZE   grow or shrink the virtual disk\n"
"       imgfuse commit [-p] [-b BASE] [-d] IMAGE   copy the image's data down into BASE\n"
"       imgfuse stream [-p] [-b BASE] IMAGE    copy the chain's data up into the image\n"
"       imgfuse rebase [-u] [-p] -b NEW [-F FMT] IMAGE   change the backing file\n"
"       imgfuse check [-r leaks|all] [--output=json] IMAGE   check (and repair) its metadata, like qemu-img\n"
"       imgfuse compare [-s] [-f FMT] [-F FMT] IMAGE1 IMAGE2   compare two images' content, like qemu-img\n"
"       imgfuse amend [-f FMT] -o OPTIONS IMAGE   change qcow2 options in place (compat, lazy_refcounts)\n"
"       imgfuse unmount [--timeout SECONDS] MOUNTPOINT\n"
"       imgfuse mount [OPTIONS] IMAGE MOUNTPOINT   the same as the first form\n"
"       imgfuse COMMAND --help                options of COMMAND, a line each, and an example\n"
"\n"
"Shows a disk image and its whole backing chain as one flat raw file: MOUNTPOINT/disk.raw (with\n"
"MOUNTPOINT/info and info.json) when MOUNTPOINT is a directory, MOUNTPOINT itself when it is a file.\n"
"\n"
"Image:\n"
"  -f, --format FMT           format of IMAGE (default: probed; -f is not --foreground)\n"
"      --offset N, --size N   show just this window of the disk (any format)\n"
"      --partition N          disk.raw is partition N of the disk (MBR, GPT; logical from 5)\n"
"      --emulate vmdk,vhd,vdi  also show disk.vmdk, disk.vhd, disk.vdi: disk.raw dressed as\n"
"                             those formats for VM software (views of the same disk)\n"
"      --backing FILE         use FILE as the backing file of IMAGE\n"
"      --backing-format FMT   format of the backing file\n"
"      --no-backing           ignore the backing file named in IMAGE\n"
"      --backing-dir DIR      look for backing files in DIR too (repeatable)\n"
"      --unsafe-backing       plain backing path resolution, no refusals\n"
"      --data-file PATH       external data file of a qcow2 image\n"
"      --l2-cache-size SIZE   metadata cache size (e.g. 4M)\n"
"      --timeout SECONDS      a request to a server (nbd://, http(s)://, s3://) fails with EIO after it (30)\n"
"      --cacert FILE          CA certificates (PEM) that verify an https:// or s3:// server\n"
"      --s3-endpoint URL      the S3-compatible server of an s3://BUCKET/KEY image (path-style)\n"
"      --key-file FILE        key of an encrypted image (LUKS): the whole of FILE\n"
"      --passphrase-fd N      key of an encrypted image: the first line read from descriptor N\n"
"      --key-slot N           only try key slot N (else every active slot; without a key: a prompt)\n"
"Writing:\n"
"      --rw                   make disk.raw writable (IMAGE is modified)\n"
"      --overlay FILE         writes go to the qcow2 overlay FILE backed by IMAGE (created if\n"
"                             missing, reused if it is an overlay of IMAGE); IMAGE is untouched\n"
"      --snapshot             the same with a temporary overlay, discarded at unmount\n"
"  -U, --force-share          do not take or check image locks\n"
"  -r, --read-only            read-only (the default; refused with --rw, --overlay, --snapshot)\n"
"Request path:\n"
"      --copy-on-read         data read from backing files is copied into the top image\n"
"      --detect-zeroes=off|on|unmap  all-zero writes become zero writes (unmap: may free space)\n"
"      --iops-limit N, --iops-limit-read N, --iops-limit-write N    operations per second\n"
"      --bps-limit N, --bps-limit-read N, --bps-limit-write N       bytes per second (e.g. 10M)\n"
"      --discard=ignore|unmap       may discards free space in the image (default ignore)\n"
"      --on-read-error=report|zero  on an unreadable range: EIO (default) or zeros\n"
"I/O:\n"
"      --cache=writeback|none       none opens the files O_DIRECT (default writeback)\n"
"      --aio=threads|native         native uses Linux AIO; needs --cache=none (default threads)\n"
"      --direct-io            reads and writes of disk.raw bypass the mount's page cache: nothing\n"
"                             cached twice, faster writes, slower re-reads and small reads, no shared\n"
"                             mmap (also -o direct_io)\n"
"FUSE and process:\n"
"      --allow-other          let other users access the mount (a user needs user_allow_other\n"
"                             in /etc/fuse.conf, else the mount is refused)\n"
"      --nonempty             mount over a directory that has files in it (they are hidden)\n"
"  -o OPTS                    mount options NAME[=VALUE], comma separated: the options above by\n"
"                             their long names, DRIVER.KEY=VALUE, FUSE options; -o ro forces\n"
"                             read-only, -o rw does not enable writes (-o writable does)\n"
"      --foreground           do not detach into the background\n"
"      --debug                log every FUSE request, statistics at unmount (implies --foreground)\n"
"      --audit-log FILE       append one JSON line per mount to FILE (times, user, image files\n"
"                             with size and mtime, mode, options, bytes read and written)\n"
"      --pid-file FILE        write the daemon's pid to FILE while it runs\n"
"      --blkdebug RULES       test only: inject faults as described in the RULES file\n"
"  -h, --help                 this help\n"
"  -V, --version              version and supported formats\n");
    print_driver_options();
    printf(
"\n"
"Every mount option is also -o NAME[=VALUE] (fstab): -o format=vpc,backing-dir=DIR,overlay=FILE;\n"
"-o writable is --rw (-o rw, the fstab default, leaves the mount read-only).\n"
"\n"
"Example:\n"
"  imgfuse --backing-dir /srv/base vm.qcow2 /mnt/vm\n"
"\n"
"Unmount with: imgfuse unmount MOUNTPOINT (returns when the daemon has exited), or fusermount3 -u\n"
"Exit status: 0 success, 1 runtime failure, 2 bad usage or an image that cannot be opened.\n"
"See imgfuse(1) for details.\n");
}

static void print_version(void)
{
    printf("imgfuse %s (libfuse %s)\nformats:", IMGFUSE_VERSION, fuse_pkgversion());
    for (const BlockDriver *const *d = bdrv_driver_list(); *d; d++)
        if (!(*d)->is_protocol && !(*d)->is_filter)
            printf(" %s", (*d)->name);
    printf("\n");
}

/* ---------------------------------------------------------------- option parsing */

enum {
    OPT_OFFSET = 256, OPT_SIZE, OPT_BACKING, OPT_BACKING_FORMAT, OPT_NO_BACKING, OPT_BACKING_DIR,
    OPT_UNSAFE_BACKING, OPT_DATA_FILE, OPT_L2_CACHE_SIZE, OPT_RW, OPT_FORCE_SHARE, OPT_CACHE, OPT_AIO,
    OPT_DISCARD, OPT_ON_READ_ERROR, OPT_BLKDEBUG, OPT_ALLOW_OTHER, OPT_FOREGROUND, OPT_DEBUG, OPT_AUDIT_LOG,
    OPT_OVERLAY, OPT_SNAPSHOT, OPT_COPY_ON_READ, OPT_DETECT_ZEROES, OPT_IOPS, OPT_IOPS_RD, OPT_IOPS_WR, OPT_BPS, OPT_BPS_RD, OPT_BPS_WR,
    OPT_DIRECT_IO, OPT_PID_FILE, OPT_NONEMPTY, OPT_IMAGE_OPTS, OPT_OBJECT,
    OPT_PARTITION, OPT_EMULATE,
    OPT_TIMEOUT, OPT_KEY_FILE, OPT_PASSPHRASE_FD, OPT_KEY_SLOT,
    OPT_CACERT, OPT_S3_ENDPOINT,
};

static const struct option mount_options[] = {
    { "format", required_argument, NULL, 'f' },
    { "offset", required_argument, NULL, OPT_OFFSET },
    { "size", required_argument, NULL, OPT_SIZE },
    { "partition", required_argument, NULL, OPT_PARTITION },
    { "emulate", required_argument, NULL, OPT_EMULATE },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { "cacert", required_argument, NULL, OPT_CACERT },
    { "s3-endpoint", required_argument, NULL, OPT_S3_ENDPOINT },
    { "backing", required_argument, NULL, OPT_BACKING },
    { "backing-format", required_argument, NULL, OPT_BACKING_FORMAT },
    { "no-backing", no_argument, NULL, OPT_NO_BACKING },
    { "backing-dir", required_argument, NULL, OPT_BACKING_DIR },
    { "unsafe-backing", no_argument, NULL, OPT_UNSAFE_BACKING },
    { "data-file", required_argument, NULL, OPT_DATA_FILE },
    { "l2-cache-size", required_argument, NULL, OPT_L2_CACHE_SIZE },
    { "key-file", required_argument, NULL, OPT_KEY_FILE },
    { "passphrase-fd", required_argument, NULL, OPT_PASSPHRASE_FD },
    { "key-slot", required_argument, NULL, OPT_KEY_SLOT },
    { "rw", no_argument, NULL, OPT_RW },
    { "cache", required_argument, NULL, OPT_CACHE },
    { "aio", required_argument, NULL, OPT_AIO },
    { "direct-io", no_argument, NULL, OPT_DIRECT_IO },
    { "discard", required_argument, NULL, OPT_DISCARD },
    { "on-read-error", required_argument, NULL, OPT_ON_READ_ERROR },
    { "blkdebug", required_argument, NULL, OPT_BLKDEBUG },
    { "allow-other", no_argument, NULL, OPT_ALLOW_OTHER },
    { "foreground", no_argument, NULL, OPT_FOREGROUND },
    { "debug", no_argument, NULL, OPT_DEBUG },
    { "audit-log", required_argument, NULL, OPT_AUDIT_LOG },
    { "pid-file", required_argument, NULL, OPT_PID_FILE },
    { "overlay", required_argument, NULL, OPT_OVERLAY },
    { "snapshot", no_argument, NULL, OPT_SNAPSHOT },
    { "copy-on-read", no_argument, NULL, OPT_COPY_ON_READ },
    { "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
    { "iops-limit", required_argument, NULL, OPT_IOPS },
    { "iops-limit-read", required_argument, NULL, OPT_IOPS_RD },
    { "iops-limit-write", required_argument, NULL, OPT_IOPS_WR },
    { "bps-limit", required_argument, NULL, OPT_BPS },
    { "bps-limit-read", required_argument, NULL, OPT_BPS_RD },
    { "bps-limit-write", required_argument, NULL, OPT_BPS_WR },
    { "read-only", no_argument, NULL, 'r' },
    { "force-share", no_argument, NULL, 'U' },
    { "nonempty", no_argument, NULL, OPT_NONEMPTY },
    { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
    { "object", required_argument, NULL, OPT_OBJECT },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
};

typedef struct MountArgs {
    BlockOpenOpts open;
    bool rw, forced_ro, allow_other, foreground, debug, snapshot, direct_io;
    bool read_only_opt, nonempty;
    int partition;      /* --partition N: disk.raw is partition N (0: the whole disk) */
    bool emulate[3];    /* --emulate: vmdk, vhd, vdi views of disk.raw (emulate_kinds) */
    const char *image, *mountpoint, *audit_log, *overlay, *pid_file;
    char **o_items;     /* the copies of -o arguments, which option values point into */
    size_t n_o_items;
    char *driver_items[MAX_DRIVER_OPTS]; /* the "DRIVER.KEY=VALUE" strings of open.driver_opts we made */
    int n_driver_items;
    StrBuf fuse_opts;   /* -o options passed through to libfuse */
    StrBuf summary;     /* the image/request options as given, for MNT/info */
    CliNetOpts net;     /* --timeout, --cacert, --s3-endpoint: for the image's protocol driver */
} MountArgs;

static const char *const emulate_kinds[3] = { "vmdk", "vhd", "vdi" };

/* --emulate vmdk,vhd,vdi (any of them, comma separated; -o emulate= takes one, as -o splits at commas). */
static bool parse_emulate(MountArgs *a, const char *arg)
{
    char *copy = strdup(arg), *save = NULL;
    if (!copy)
        abort();
    bool ok = *arg != '\0';
    for (char *w = strtok_r(copy, ",", &save); ok && w; w = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < 3 && strcmp(w, emulate_kinds[i]) != 0)
            i++;
        if (i == 3)
            ok = false;
        else
            a->emulate[i] = true;
    }
    if (!ok)
        errmsg("--emulate", "invalid value '%s' (expected vmdk, vhd, vdi or a comma-separated list of them)", arg);
    free(copy);
    return ok;
}

/* Maps VALUE to the index of the matching name, or prints the error and returns -1. */
static int parse_choice(const char *opt, const char *value, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(value, names[i]) == 0)
            return i;
    StrBuf sb;
    sb_init(&sb);
    for (int i = 0; i < n; i++)
        sb_printf(&sb, "%s%s", i ? (i == n - 1 ? " or " : ", ") : "", names[i]);
    errmsg(opt, "invalid value '%s' (expected %s)", value, sb.s);
    sb_free(&sb);
    return -1;
}

static bool parse_size_opt(const char *opt, const char *value, int64_t *out)
{
    int64_t v = parse_size(value);
    if (v < 0) {
        errmsg(opt, "invalid size '%s'", value);
        return false;
    }
    *out = v;
    return true;
}

/* Adds the driver option "KEY=VALUE" (KEY is DRIVER.NAME; value NULL: item is whole) to the open options;
 * what is wrong with it is said at open, naming the image. False with the error printed when full. */
static bool add_driver_opt(MountArgs *a, const char *key, const char *value)
{
    char *item = NULL;
    if (value ? asprintf(&item, "%s=%s", key, value) < 0 : !(item = strdup(key)))
        abort();
    if (bdrv_opts_add(&a->open, item) < 0) {
        errmsg(item, "at most %d driver options", MAX_DRIVER_OPTS);
        free(item);
        return false;
    }
    a->driver_items[a->n_driver_items++] = item;
    return true;
}

/* A long option that stands for a driver option: a size is checked here, where the option is named. */
static bool map_long_opt(MountArgs *a, const char *opt, const char *key, bool is_size, const char *value)
{
    int64_t v;
    char name[64];
    snprintf(name, sizeof name, "--%s", opt);
    return (!is_size || parse_size_opt(name, value, &v)) && add_driver_opt(a, key, value);
}

/* True if "KEY[=VALUE]" is a driver option (KEY has a dot), not a FUSE one; x-* words (x-systemd.automount)
 * are other programs' fstab words. */
static bool is_driver_opt(const char *o)
{
    const char *dot = strchr(o, '.'), *eq = strchr(o, '=');
    return dot && dot != o && (!eq || dot < eq) && strncmp(o, "x-", 2) != 0;
}

/* fstab-only words that mount(8) may hand over and libfuse does not know; also the x-* and
 * comment= words of other programs (x-systemd.automount), which mount(8) keeps from its helpers but a
 * helper run by hand or by another tool may pass on. */
static bool is_fstab_only(const char *o)
{
    static const char *const words[] = { "defaults", "auto", "noauto", "user", "users", "nouser",
                                         "nofail", "_netdev", "owner", "group" };
    if (strncmp(o, "x-", 2) == 0 || strncmp(o, "comment=", 8) == 0)
        return true;
    for (size_t i = 0; i < ARRAY_SIZE(words); i++)
        if (strcmp(o, words[i]) == 0)
            return true;
    return false;
}

static void note_option(MountArgs *a, const char *name, const char *value)
{
    if (value)
        sb_printf(&a->summary, "%s--%s=%s", a->summary.len ? " " : "", name, value);
    else
        sb_printf(&a->summary, "%s--%s", a->summary.len ? " " : "", name);
}

/* Applies one mount option, given as --NAME[=ARG] (or its short form) or as -o NAME[=ARG]: c is its
 * getopt code, name its long name. Returns -1 to go on, else the exit code (help/version: 0, errors: 2). */
static int apply_mount_opt(MountArgs *a, int c, const char *name, const char *arg)
{
    static const char *const cache_names[] = { "writeback", "none" };
    static const char *const aio_names[] = { "threads", "native" };
    static const char *const discard_names[] = { "ignore", "unmap" };
    static const char *const rerr_names[] = { "report", "zero" };
    static const char *const dz_names[] = { "off", "on", "unmap" };
    static const enum DetectZeroes dz_values[] = { DETECT_ZEROES_OFF, DETECT_ZEROES_ON, DETECT_ZEROES_UNMAP };
    int v;
    switch (c) {
    case 'f': a->open.format = arg; note_option(a, "format", arg); break;
    case OPT_OFFSET:
        if (!map_long_opt(a, name, "window.offset", true, arg))
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_SIZE:
        if (!map_long_opt(a, name, "window.size", true, arg))
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_PARTITION: {
        char *end;
        long n = strtol(arg, &end, 10);
        if (*arg < '1' || *arg > '9' || *end || n < 1 || n > BDRV_MAX_PARTITIONS * 2) {
            errmsg("--partition", "invalid partition number '%s' (1, 2, ... as Linux numbers them)", arg);
            return EXIT_USAGE;
        }
        a->partition = (int)n;
        note_option(a, name, arg);
        break;
    }
    case OPT_EMULATE:
        if (!parse_emulate(a, arg))
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_BACKING: a->open.backing = arg; note_option(a, name, arg); break;
    case OPT_BACKING_FORMAT: a->open.backing_format = arg; note_option(a, name, arg); break;
    case OPT_NO_BACKING: a->open.no_backing = true; note_option(a, name, NULL); break;
    case OPT_BACKING_DIR:
        if (a->open.n_backing_dirs == MAX_BACKING_DIRS) {
            errmsg("--backing-dir", "at most %d directories", MAX_BACKING_DIRS);
            return EXIT_USAGE;
        }
        a->open.backing_dirs[a->open.n_backing_dirs++] = arg;
        note_option(a, name, arg);
        break;
    case OPT_UNSAFE_BACKING: a->open.unsafe_backing = true; note_option(a, name, NULL); break;
    case OPT_DATA_FILE:
        if (!map_long_opt(a, name, "qcow2.data-file", false, arg))
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_L2_CACHE_SIZE:
        if (!map_long_opt(a, name, "qcow2.l2-cache-size", true, arg))
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_TIMEOUT: a->net.timeout = arg; note_option(a, name, arg); break;
    case OPT_CACERT: a->net.cacert = arg; note_option(a, name, arg); break;
    case OPT_S3_ENDPOINT: a->net.s3_endpoint = arg; note_option(a, name, arg); break;
    case OPT_KEY_FILE:
        if (secret_from_file(&a->open, arg) != 0)
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_PASSPHRASE_FD:
        if (secret_from_fd(&a->open, arg) != 0)
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_KEY_SLOT:
        if (!map_long_opt(a, name, "luks.key-slot", false, arg))
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_RW: a->rw = true; note_option(a, "rw", NULL); break;
    case 'r': a->read_only_opt = true; break;
    case 'U': a->open.force_share = true; note_option(a, "force-share", NULL); break;
    case OPT_CACHE:
        if ((v = parse_choice("--cache", arg, cache_names, 2)) < 0)
            return EXIT_USAGE;
        a->open.cache = v ? CACHE_NONE : CACHE_WRITEBACK;
        note_option(a, name, arg);
        break;
    case OPT_DIRECT_IO: a->direct_io = true; break;
    case OPT_AIO:
        if ((v = parse_choice("--aio", arg, aio_names, 2)) < 0)
            return EXIT_USAGE;
        a->open.aio = v ? AIO_NATIVE : AIO_THREADS;
        note_option(a, name, arg);
        break;
    case OPT_DISCARD:
        if ((v = parse_choice("--discard", arg, discard_names, 2)) < 0)
            return EXIT_USAGE;
        a->open.discard = v ? DISCARD_UNMAP : DISCARD_IGNORE;
        note_option(a, name, arg);
        break;
    case OPT_ON_READ_ERROR:
        if ((v = parse_choice("--on-read-error", arg, rerr_names, 2)) < 0)
            return EXIT_USAGE;
        a->open.on_read_error = v ? READ_ERROR_ZERO : READ_ERROR_REPORT;
        note_option(a, name, arg);
        break;
    case OPT_BLKDEBUG:
        if (!map_long_opt(a, name, "blkdebug.rules", false, arg))
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    case OPT_OVERLAY: a->overlay = arg; note_option(a, name, arg); break;
    case OPT_SNAPSHOT: a->snapshot = true; note_option(a, name, NULL); break;
    case OPT_COPY_ON_READ: a->open.copy_on_read = true; note_option(a, name, NULL); break;
    case OPT_DETECT_ZEROES:
        if ((v = parse_choice("--detect-zeroes", arg, dz_names, 3)) < 0)
            return EXIT_USAGE;
        a->open.detect_zeroes = dz_values[v];
        note_option(a, name, arg);
        break;
    case OPT_IOPS: case OPT_IOPS_RD: case OPT_IOPS_WR: case OPT_BPS: case OPT_BPS_RD: case OPT_BPS_WR: {
        int64_t *limits[] = { &a->open.iops_limit, &a->open.iops_rd_limit, &a->open.iops_wr_limit,
                              &a->open.bps_limit, &a->open.bps_rd_limit, &a->open.bps_wr_limit };
        char opt[64];
        snprintf(opt, sizeof opt, "--%s", name);
        if (!parse_size_opt(opt, arg, limits[c - OPT_IOPS]))
            return EXIT_USAGE;
        note_option(a, name, arg);
        break;
    }
    case OPT_ALLOW_OTHER: a->allow_other = true; break;
    case OPT_FOREGROUND: a->foreground = true; break;
    case OPT_DEBUG: a->debug = true; break;
    case OPT_AUDIT_LOG: a->audit_log = arg; break;
    case OPT_PID_FILE: a->pid_file = arg; break;
    case OPT_NONEMPTY: a->nonempty = true; break;
    case OPT_IMAGE_OPTS:
        errmsg("--image-opts", "not supported: IMAGE is a file name; driver options go in -o DRIVER.KEY=VALUE");
        return EXIT_USAGE;
    case OPT_OBJECT: /* qemu-img's --object secret,id=ID,file=FILE: the key (never in the mount summary) */
        if (secret_option(&a->open, SECRET_OPT_OBJECT, arg) != 0)
            return EXIT_USAGE;
        break;
    case 'h': print_help(); return EXIT_OK;
    case 'V': print_version(); return EXIT_OK;
    default: abort();
    }
    return -1;
}

/* The long option NAME (n bytes, spelled in full) among the mount options that -o also takes; NULL if
 * none. -o help and -o version are not options of a mount. */
static const struct option *find_mount_opt(const char *name, size_t n)
{
    for (const struct option *o = mount_options; o->name; o++)
        if (strlen(o->name) == n && strncmp(o->name, name, n) == 0 && o->val != 'h' && o->val != 'V')
            return o;
    return NULL;
}

/* One item of -o that names a mount option (NAME or NAME=VALUE, the long option's name; "writable" is
 * --rw, whose name is the fstab word for the default): 1 if it is not one, else what apply_mount_opt
 * returns. The value points into the item, which lives as long as a. */
static int take_named_opt(MountArgs *a, char *item)
{
    size_t n = strcspn(item, "=");
    char *value = item[n] ? item + n + 1 : NULL;
    const struct option *o = n == 8 && strncmp(item, "writable", 8) == 0 ? find_mount_opt("rw", 2)
                             : n == 2 && strncmp(item, "rw", 2) == 0 ? NULL : find_mount_opt(item, n);
    if (!o)
        return 1;
    char what[80];
    snprintf(what, sizeof what, "-o %.*s", (int)MIN(n, 64), item);
    if (o->has_arg == required_argument && !value) {
        errmsg(what, "needs a value (%s=VALUE)", what);
        return EXIT_USAGE;
    }
    if (o->has_arg == no_argument && value) {
        errmsg(what, "takes no value");
        return EXIT_USAGE;
    }
    return apply_mount_opt(a, o->val, o->name, value);
}

/* Splits a -o argument: DRIVER.KEY=VALUE, the mount options by their long names (format=vpc,
 * backing-dir=DIR, ...), ro and the legacy allow_other/debug/direct_io are ours; rw is the fstab default
 * and only noticed; the rest is passed to libfuse unchanged. Returns -1 to go on, else the exit code. */
static int take_fuse_opts(MountArgs *a, const char *arg)
{
    char *copy = strdup(arg);
    char **items = realloc(a->o_items, (a->n_o_items + 1) * sizeof *items);
    if (!copy || !items)
        abort();
    a->o_items = items;
    a->o_items[a->n_o_items++] = copy;
    char *save = NULL;
    int rc = -1;
    for (char *o = strtok_r(copy, ",", &save); rc < 0 && o; o = strtok_r(NULL, ",", &save)) {
        if (is_driver_opt(o)) {
            if (!add_driver_opt(a, o, NULL))
                rc = EXIT_USAGE;
            else
                sb_printf(&a->summary, "%s-o %s", a->summary.len ? " " : "", o);
        } else if (strcmp(o, "ro") == 0)
            a->forced_ro = true;
        else if (strcmp(o, "rw") == 0)
            fprintf(stderr, "imgfuse: -o rw: notice: the mount stays read-only; --rw or -o writable makes it "
                    "writable\n");
        else if (is_fstab_only(o))
            continue;
        else if (strcmp(o, "allow_other") == 0)
            a->allow_other = true;
        else if (strcmp(o, "debug") == 0)
            a->debug = true;
        else if (strcmp(o, "direct_io") == 0)
            a->direct_io = true;
        else if ((rc = take_named_opt(a, o)) == 1) {
            rc = -1;
            sb_printf(&a->fuse_opts, "%s%s", a->fuse_opts.len ? "," : "", o);
        }
    }
    return rc;
}

/* -f given a file instead of a format (the user meant --foreground): true with the hint printed. */
static bool format_is_a_file(const char *format)
{
    struct stat st;
    if (bdrv_find_driver(format) || (!strchr(format, '/') && !strchr(format, '.') && stat(format, &st) != 0))
        return false;
    errmsg("-f", "'%s' is not a format name; did you mean --foreground? (-f names a format)", format);
    return true;
}

/* The positional arguments: IMAGE first. A directory as IMAGE with a regular file as MOUNTPOINT is the
 * pair swapped. True with the error printed. */
static bool positional_error(const char *image, const char *mountpoint)
{
    struct stat si, sm;
    if (cli_url_error(image) || command_word_error(image))
        return true;
    if (stat(image, &si) == 0 && S_ISDIR(si.st_mode) && stat(mountpoint, &sm) == 0 && S_ISREG(sm.st_mode)) {
        errmsg(image, "is a directory; IMAGE comes first: imgfuse IMAGE MOUNTPOINT");
        return true;
    }
    return false;
}

/* Combinations of options that contradict each other. Prints the error and returns EXIT_USAGE, or 0. */
static int check_combinations(const MountArgs *a)
{
    if (a->open.aio == AIO_NATIVE && a->open.cache != CACHE_NONE) {
        errmsg("--aio=native", "requires --cache=none");
        return EXIT_USAGE;
    }
    if (a->open.no_backing && a->open.backing) {
        errmsg("--no-backing", "cannot be combined with --backing");
        return EXIT_USAGE;
    }
    if (backing_is_a_dir(a->open.backing))
        return EXIT_USAGE;
    if (a->read_only_opt && (a->rw || a->overlay || a->snapshot)) {
        errmsg("--read-only", "cannot be combined with %s", a->rw ? "--rw" : a->overlay ? "--overlay" : "--snapshot");
        return EXIT_USAGE;
    }
    if (a->partition && bdrv_opts_name_driver(&a->open, bdrv_find_driver("window"))) {
        errmsg("--partition", "cannot be combined with --offset/--size");
        return EXIT_USAGE;
    }
    if (a->overlay || a->snapshot) {
        const BlockDriver *window = bdrv_find_driver("window");
        const char *opt = a->overlay ? "--overlay" : "--snapshot";
        const char *clash = a->overlay && a->snapshot ? "--snapshot" : a->open.backing ? "--backing" :
                            a->open.no_backing ? "--no-backing" : bdrv_opts_name_driver(&a->open, window) ?
                            "--offset/--size" : bdrv_opts_find(&a->open, "qcow2", "data-file") ? "--data-file" :
                            a->forced_ro ? "-o ro" : NULL;
        if (clash) {
            errmsg(opt, "cannot be combined with %s", clash);
            return EXIT_USAGE;
        }
    }
    if (a->allow_other && getuid() != 0 && !fuse_conf_allows_other()) {
        errmsg("--allow-other", "not permitted for this user: add the line 'user_allow_other' to /etc/fuse.conf "
               "(or mount as root)");
        return EXIT_USAGE;
    }
    return 0;
}

/* Returns -1 to go on mounting, else the exit code (help/version: 0, errors: 2). */
static int parse_mount_args(MountArgs *a, int argc, char **argv)
{
    opterr = 0;
    optind = 1;
    int c, longidx = -1, rc;
    while ((c = cli_getopt(argc, argv, ":f:o:hVrU", mount_options, &longidx)) != -1) {
        if (c == '?' || c == ':')
            return cli_option_error(argv, c, NULL, mount_options);
        rc = c == 'o' ? take_fuse_opts(a, optarg)
                      : apply_mount_opt(a, c, longidx >= 0 ? mount_options[longidx].name : NULL, optarg);
        if (rc >= 0)
            return rc;
        longidx = -1;
    }
    if ((a->open.format && format_is_a_file(a->open.format)) || secret_objects_done(&a->open) != 0)
        return EXIT_USAGE;
    if (argc - optind > 2) {
        errmsg(argv[optind + 2], "unexpected argument (usage: imgfuse [OPTIONS] IMAGE MOUNTPOINT)");
        return EXIT_USAGE;
    }
    if (argc - optind < 2) {
        usage_hint();
        return EXIT_USAGE;
    }
    a->image = argv[optind];
    a->mountpoint = argv[optind + 1];
    if (positional_error(a->image, a->mountpoint))
        return EXIT_USAGE;
    if ((rc = check_combinations(a)) != 0)
        return rc;
    if ((rc = cli_net_apply(&a->net, &a->open, a->image)) >= 0)
        return rc;
    if (a->debug)
        a->foreground = true;
    return -1;
}
/* ---------------------------------------------------------------- mountpoint checks */

static bool mount_point_is(const MountInfoLine *m, void *real)
{
    return strcmp(m->mount_point, real) == 0;
}

static bool is_mount_point(const char *real)
{
    return mountinfo_find(mount_point_is, (void *)real);
}

/* True if the directory dir has entries besides . and .. (a mount would hide them). */
static bool dir_has_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return false;
    struct dirent *e;
    bool any = false;
    while (!any && (e = readdir(d)))
        any = strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return any;
}

/* Returns 0 and sets *file_mode, or prints the error and returns EXIT_USAGE. A directory with files in it
 * is refused unless nonempty: the mount would hide them, and the user may have meant another one. */
static int check_mountpoint(const char *mp, bool nonempty, bool *file_mode)
{
    struct stat st;
    if (stat(mp, &st) != 0) {
        if (errno == ENOENT)
            errmsg(mp, "the mountpoint does not exist (create the directory first)");
        else
            errmsg(mp, "cannot use as the mountpoint: %s", strerror(errno));
        return EXIT_USAGE;
    }
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
        errmsg(mp, "mountpoint must be a directory or a regular file");
        return EXIT_USAGE;
    }
    char real[PATH_MAX];
    if (!realpath(mp, real)) {
        errmsg(mp, "%s", strerror(errno));
        return EXIT_USAGE;
    }
    if (is_mount_point(real)) {
        errmsg(mp, "already a mount point (busy)");
        return EXIT_USAGE;
    }
    if (S_ISDIR(st.st_mode) && !nonempty && dir_has_entries(mp)) {
        errmsg(mp, "the mountpoint is not empty (the mount would hide its files); give --nonempty to mount over them");
        return EXIT_USAGE;
    }
    *file_mode = S_ISREG(st.st_mode);
    return 0;
}

static bool fuse_conf_allows_other(void)
{
    FILE *f = fopen("/etc/fuse.conf", "r");
    if (!f)
        return false;
    char line[256];
    bool ok = false;
    while (!ok && fgets(line, sizeof line, f)) {
        char *p = line + strspn(line, " \t");
        ok = strncmp(p, "user_allow_other", 16) == 0 && (p[16] == '\n' || p[16] == '\0' || p[16] == ' ');
    }
    fclose(f);
    return ok;
}

/* ---------------------------------------------------------------- detaching */

/* The process forks before opening anything, so that image locks, threads and file descriptors all live
 * in the daemon. The parent waits until the child reports a mount (exit 0) or exits with its status. */
typedef struct Detach {
    int fd; /* write end of the pipe to the waiting parent, -1 in the foreground */
} Detach;

static int detach_start(Detach *d)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        errmsg("pipe", "%s", strerror(errno));
        return EXIT_RUNTIME;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        errmsg("fork", "%s", strerror(errno));
        return EXIT_RUNTIME;
    }
    if (pid > 0) {
        close(p[1]);
        char b;
        ssize_t n;
        do
            n = read(p[0], &b, 1);
        while (n < 0 && errno == EINTR);
        if (n == 1)
            _exit(EXIT_OK);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        _exit(WIFEXITED(status) ? WEXITSTATUS(status) : EXIT_RUNTIME);
    }
    close(p[0]);
    setsid();
    d->fd = p[1];
    return 0;
}

static void detach_ready(void *arg)
{
    Detach *d = arg;
    if (d->fd < 0)
        return;
    if (chdir("/") != 0) {
        /* harmless: the daemon keeps its working directory */
    }
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        if (null > STDERR_FILENO)
            close(null);
    }
    char ok = 0;
    if (write(d->fd, &ok, 1) != 1) {
        /* the parent is gone; nothing to tell */
    }
    close(d->fd);
    d->fd = -1;
}

/* ---------------------------------------------------------------- the pid file */

/* FILE made absolute (the daemon changes to / when it detaches); malloc'd, NULL on failure. */
static char *absolute_path(const char *file)
{
    if (file[0] == '/')
        return strdup(file);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return NULL;
    StrBuf sb;
    sb_init(&sb);
    sb_printf(&sb, "%s/%s", cwd, file);
    return sb_steal(&sb, NULL);
}

/* Writes this process's pid to path (replacing the file). Prints the error and returns EXIT_RUNTIME. */
static int pid_file_write(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (fd < 0 || write(fd, buf, (size_t)n) != n || close(fd) != 0) {
        errmsg(path, "cannot write the pid file: %s", strerror(errno));
        if (fd >= 0)
            unlink(path);
        return EXIT_RUNTIME;
    }
    return 0;
}

/* Removes the pid file if it still names this process. */
static void pid_file_remove(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (!f)
        return;
    bool ours = fscanf(f, "%ld", &pid) == 1 && pid == (long)getpid();
    fclose(f);
    if (ours)
        unlink(path);
}

/* ---------------------------------------------------------------- the main job */

static char **build_fuse_argv(MountArgs *a, const char *image_abs, bool read_only, int *argc_out)
{
    StrBuf o;
    sb_init(&o);
    StrBuf fs;
    sb_init(&fs);
    sb_printf(&fs, "fsname=%s", image_abs);
    char *escaped = NULL;
    if (fuse_opt_add_opt_escaped(&escaped, fs.s) != 0)
        abort();
    sb_free(&fs);
    /* If the daemon dies, its mount must go too, never left behind dead: imgfuse's own watcher
     * (fuse/unwatch.c) does that for every user, so libfuse's auto_unmount is not asked for (its helper
     * cannot see a user's mount without allow_other die, see there). */
    sb_printf(&o, "%s,subtype=imgfuse,default_permissions,max_read=%u", escaped, fs_max_read(!read_only));
    free(escaped);
    if (read_only)
        sb_printf(&o, ",ro");
    if (a->allow_other)
        sb_printf(&o, ",allow_other"); /* permitted: checked with the other options */
    if (a->fuse_opts.len)
        sb_printf(&o, ",%s", a->fuse_opts.s);
    char **argv = calloc(5, sizeof *argv);
    if (!argv)
        abort();
    int n = 0;
    argv[n++] = strdup("imgfuse");
    argv[n++] = strdup("-o");
    argv[n++] = sb_steal(&o, NULL);
    if (a->debug)
        argv[n++] = strdup("-d");
    *argc_out = n;
    return argv;
}

static void free_argv(char **argv, int argc)
{
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    free(argv);
}

/* --partition N: a window over partition N of the disk (the part of it inside the disk); NULL with err
 * set when the disk has no partition N. */
static BlockNode *open_partition(BlockNode *bs, int number, Error *err)
{
    BlockPartitionTable *t = malloc(sizeof *t);
    if (!t) {
        error_set(err, ENOMEM, "%s: %s", bs->filename, strerror(ENOMEM));
        return NULL;
    }
    int r = bdrv_read_partitions(bs, t);
    BlockNode *w = NULL;
    const BlockPartition *p = NULL;
    for (int i = 0; r == 0 && i < t->n && !p; i++)
        if (t->part[i].number == number && t->part[i].avail > 0)
            p = &t->part[i];
    if (r < 0)
        error_set(err, -r, "%s: cannot read the partition table: %s", bs->filename, strerror(-r));
    else if (!p) {
        StrBuf sb;
        sb_init(&sb);
        for (int i = 0; i < t->n; i++)
            if (t->part[i].avail > 0)
                sb_printf(&sb, "%s%d", sb.len ? ", " : "", t->part[i].number);
        error_set(err, ENOENT, "%s: no partition %d (%s%s)", bs->filename, number,
                  t->label[0] ? "partitions: " : "the disk has no partition table", sb.len ? sb.s : "");
        sb_free(&sb);
    } else
        w = bdrv_open_window(bs, p->start, p->avail, err);
    free(t);
    return w;
}

/* What disk.raw shows: the chain itself, or a window filter over it for --offset/--size, and over an
 * overlay of an image whose size is not a multiple of 512 (the overlay's own size is rounded up, as
 * QEMU's is), so that the view keeps the image's exact size. NULL with err set when the window does not
 * fit the disk. */
static BlockNode *open_view(const MountArgs *a, const Overlay *ov, BlockNode *bs, Error *err)
{
    if (a->partition)
        return open_partition(bs, a->partition, err);
    if (bdrv_opts_name_driver(&a->open, bdrv_find_driver("window")))
        return bdrv_open_chain_filters(bs, &a->open, err);
    if (ov->path && ov->image_size >= 0 && bdrv_getlength(bs) == align_up(ov->image_size, 512) &&
        ov->image_size % 512)
        return bdrv_open_window(bs, 0, ov->image_size, err);
    return bs;
}

/* The key of an encrypted image, asked for on the terminal before the daemon leaves it: when no key was
 * given and stdin is a terminal, one open of IMAGE (read-only) with a no-echo prompt in place of the missing
 * key; what was typed is kept for the daemon's open. 0, or the exit code with the error printed. */
static int ask_key_before_detach(MountArgs *a)
{
    if (a->open.secret || !isatty(STDIN_FILENO))
        return 0;
    BlockOpenOpts o = a->open;
    o.ask_secret = secret_ask_and_keep;
    o.read_only = true;
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *bs = bdrv_open(a->image, &o, &err);
    if (!bs)
        return report_error(&err, a->image, EXIT_USAGE);
    bdrv_close(bs);
    secret_use_kept(&a->open);
    return 0;
}

/* The memory of the command line (the argument strings, one after the other), before getopt reorders
 * the pointers; len 0 if the strings are not contiguous. */
static char *command_line_area(int argc, char **argv, size_t *len)
{
    char *lo = argv[0], *hi = argv[0];
    size_t total = 0;
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]) + 1;
        total += n;
        lo = argv[i] < lo ? argv[i] : lo;
        hi = argv[i] + n > hi ? argv[i] + n : hi;
    }
    *len = (size_t)(hi - lo) == total ? total : 0;
    return lo;
}

/* The secret of an rbd: name (":key=SECRET") masked in the process's command line, which ps shows; *image
 * then points to a copy (returned, for the caller to free) that the open uses. NULL when there is none. */
static char *hide_name_secret(const char **image)
{
    char shown[PATH_MAX];
    if (!bdrv_url_is_bare(*image) || !bdrv_url_redact(*image, shown, sizeof shown))
        return NULL;
    char *copy = strdup(*image), *arg = (char *)*image;
    if (!copy)
        abort();
    for (char *k = strstr(arg, ":key="); k; k = strstr(k + 5, ":key="))
        for (char *p = k + 5; *p && *p != ':'; p++)
            *p = '*';
    *image = copy;
    return copy;
}

static int mount_main(int argc, char **argv)
{
    size_t title_len;
    char *title = command_line_area(argc, argv, &title_len);
    char *pid_file = NULL;
    MountArgs a;
    memset(&a, 0, sizeof a);
    block_open_opts_init(&a.open);
    sb_init(&a.fuse_opts);
    sb_init(&a.summary);
    int rc = parse_mount_args(&a, argc, argv);
    char *image_copy = NULL;
    if (rc >= 0)
        goto out;
    image_copy = hide_name_secret(&a.image);

    bool file_mode = false;
    if ((rc = check_mountpoint(a.mountpoint, a.nonempty, &file_mode)) != 0)
        goto out;
    if (file_mode && (a.emulate[0] || a.emulate[1] || a.emulate[2])) {
        errmsg(a.mountpoint, "--emulate needs a directory as mount point (a file mount point shows disk.raw alone)");
        rc = EXIT_USAGE;
        goto out;
    }
    bool use_overlay = a.overlay || a.snapshot;
    bool read_only = !use_overlay && (!a.rw || a.forced_ro);
    a.open.read_only = read_only;
    log_debug_enabled = a.debug;

    Audit audit = { .fd = 0 };
    if (a.audit_log && (rc = audit_open(&audit, a.audit_log)) != 0)
        goto out;
    if (a.pid_file && !(pid_file = absolute_path(a.pid_file))) {
        errmsg(a.pid_file, "%s", strerror(errno));
        rc = EXIT_USAGE;
        goto out;
    }
    if ((rc = ask_key_before_detach(&a)) != 0)
        goto out;
    Detach d = { .fd = -1 };
    if (!a.foreground && (rc = detach_start(&d)) != 0)
        goto out;
    /* from here on this is the daemon: its pid goes to the pid file before anything is served */
    if (pid_file && (rc = pid_file_write(pid_file)) != 0)
        goto out;

    Overlay ov;
    memset(&ov, 0, sizeof ov);
    char note[PATH_MAX + 128] = "";
    if (use_overlay) {
        if ((rc = overlay_prepare(&ov, a.image, a.overlay, &a.open)) != 0) {
            overlay_cleanup(&ov);
            goto out;
        }
        snprintf(note, sizeof note, a.snapshot ? "writes go to the temporary overlay %s (deleted), discarded at unmount"
                                               : "writes go to the overlay %s; the image is not modified", ov.path);
    }
    const char *top = use_overlay ? ov.path : a.image;
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *bs = bdrv_open(top, &a.open, &err);
    BlockNode *view = bs ? open_view(&a, &ov, bs, &err) : NULL;
    if (!view) {
        rc = report_error(&err, top, EXIT_USAGE);
        bdrv_close(bs);
        overlay_cleanup(&ov);
        goto out;
    }
    overlay_unlink_temp(&ov);
    BlockNode *emulated[3] = { NULL, NULL, NULL };
    const char *emulated_names[3] = { NULL, NULL, NULL };
    for (int i = 0; i < 3; i++) {
        static const char *const names[3] = { "disk.vmdk", "disk.vhd", "disk.vdi" };
        if (!a.emulate[i])
            continue;
        emulated_names[i] = names[i];
        if (!(emulated[i] = bdrv_open_emulated(view, emulate_kinds[i], "disk.raw", &err))) {
            rc = report_error(&err, top, EXIT_USAGE);
            for (int j = 0; j < i; j++)
                bdrv_close(emulated[j]);
            if (view != bs)
                bdrv_close(view);
            bdrv_close(bs);
            overlay_cleanup(&ov);
            goto out;
        }
    }

    if (a.direct_io)
        note_option(&a, "direct-io", NULL); /* once, whether given as --direct-io or -o direct_io */
    FsCounters counters = { 0 };
    FsConfig cfg = {
        .bs = bs, .view = view, .writable = !read_only, .file_mode = file_mode, .debug = a.debug,
        .facts = { .read_only = read_only, .options = a.summary.s, .mode_note = note[0] ? note : NULL,
                   .window = view != bs ? view : NULL },
        .counters = &counters, .watch_unmount = true, .direct_io = a.direct_io,
        .proc_title = title, .proc_title_len = title_len,
        .emulated = { emulated[0], emulated[1], emulated[2] },
        .emulated_names = { emulated_names[0], emulated_names[1], emulated_names[2] },
    };
    int fargc;
    char *image_abs = realpath(a.image, NULL);
    char shown[PATH_MAX]; /* the image's name with a URL's secret masked (rbd:...:key=***), for messages */
    bdrv_url_redact(a.image, shown, sizeof shown);
    char **fargv = build_fuse_argv(&a, image_abs ? image_abs : shown, read_only, &fargc);
    free(image_abs);
    audit_begin(&audit, bs, a.mountpoint);
    int live_r = read_only || use_overlay || bdrv_find_protocol(a.image) ? 0 : live_start(bs, a.image);
    if (live_r < 0)
        log_msg("%s: no live commit/stream for this mount: control socket: %s", shown, strerror(-live_r));
    rc = fs_run(&cfg, fargc, fargv, a.mountpoint, MOUNT_THREADS, detach_ready, &d);
    free_argv(fargv, fargc);
    live_stop();

    int r = bdrv_flush(view);
    if (r < 0) {
        log_msg("%s: flush at unmount failed: %s", shown, strerror(-r));
        if (rc == EXIT_OK)
            rc = EXIT_RUNTIME;
    }
    if (a.debug) {
        StrBuf sb;
        sb_init(&sb);
        render_stats_json(&sb, bs);
        log_msg("statistics at unmount:\n%s", sb.s);
        sb_free(&sb);
    }
    for (int i = 0; i < 3; i++)
        bdrv_close(emulated[i]);
    if (view != bs)
        bdrv_close(view);
    bdrv_close(bs);
    overlay_cleanup(&ov);
    if ((r = audit_finish(&audit, read_only, a.summary.s, &counters, rc)) < 0) {
        log_msg("%s: cannot write the audit log: %s", a.audit_log, strerror(-r));
        if (rc == EXIT_OK)
            rc = EXIT_RUNTIME;
    }
out:
    if (pid_file) {
        pid_file_remove(pid_file); /* last: the image is closed and its locks are released */
        free(pid_file);
    }
    free(image_copy);
    sb_free(&a.fuse_opts);
    sb_free(&a.summary);
    for (int i = 0; i < a.n_driver_items; i++)
        free(a.driver_items[i]);
    for (size_t i = 0; i < a.n_o_items; i++)
        free(a.o_items[i]);
    free(a.o_items);
    return rc;
}

static const struct {
    const char *name;
    int (*fn)(int, char **);
} commands[] = {
    { "info", cmd_info }, { "map", cmd_map }, { "create", cmd_create },
    { "snapshot", cmd_snapshot }, { "hash", cmd_hash }, { "verify", cmd_verify }, { "unmount", cmd_unmount },
    { "convert", cmd_convert }, { "resize", cmd_resize }, { "commit", cmd_commit }, { "stream", cmd_stream },
    { "rebase", cmd_rebase }, { "amend", cmd_amend },
    { "mount", mount_main }, /* `imgfuse mount IMAGE MOUNTPOINT`: the main job by name */
    { "check", cmd_check }, { "compare", cmd_compare },
};

/* A bare word (a letter, then letters, digits, '-' or '_'; no '/' or '.') that names no file: the user
 * meant a command, and a mistyped one must not fall through to "cannot open IMAGE". */
static bool looks_like_command(const char *word)
{
    if (!((word[0] >= 'a' && word[0] <= 'z') || (word[0] >= 'A' && word[0] <= 'Z')))
        return false;
    for (const char *p = word; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_'))
            return false;
    struct stat st;
    return lstat(word, &st) != 0;
}

/* A command word where an image was expected (first argument, or IMAGE after options): prints why and
 * returns true. A file of that name is always reachable as ./WORD. */
static bool command_word_error(const char *word)
{
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        if (strcmp(word, commands[i].name) == 0) {
            errmsg(word, "a command comes before any option (a file of that name is mounted as ./%s)", word);
            return true;
        }
    if (!looks_like_command(word))
        return false;
    StrBuf sb;
    sb_init(&sb);
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        sb_printf(&sb, "%s%s", i ? ", " : "", commands[i].name);
    errmsg(word, "unknown command (commands: %s; an image is named by its path, e.g. ./%s)", sb.s, word);
    sb_free(&sb);
    return true;
}

int main(int argc, char **argv)
{
    /* glibc gives each thread that allocates its own arena; with 16 worker threads each keeping its
     * freed chunks (decompression buffers, bounce buffers), the daemon's resident size followed the
     * thread count (measured: 14.5 MiB vs 10.5 MiB with one arena on compressed random reads). The
     * hot paths allocate little, so one arena costs no measurable speed. */
#ifdef M_ARENA_MAX
    mallopt(M_ARENA_MAX, 1);
#endif
    if (argc >= 2)
        for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
            if (strcmp(argv[1], commands[i].name) == 0)
                return commands[i].fn(argc - 1, argv + 1);
    if (argc >= 2 && command_word_error(argv[1]))
        return EXIT_USAGE;
    return mount_main(argc, argv);
}
