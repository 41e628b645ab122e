/* SPDX-License-Identifier: MIT */
/*
 * cli.c - the spelling rules every command of the command line shares: a long option counts only when
 * spelled out in full (getopt_long alone takes any unambiguous prefix, and `--r` would be `--rw`), an
 * unknown or misspelt option gets a "did you mean" hint, an image named by a URL no protocol driver serves
 * is refused by name, and
 * the --help text of each subcommand.  Parsing the options themselves stays with each command (main.c,
 * commands.c, unmount.c).  It knows no image format.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "imgfuse.h"
#include "util.h"

/* The argv element that holds the option getopt_long just returned (its argument may follow it). */
static int option_element(char **argv)
{
    return optarg && optind >= 2 && optarg == argv[optind - 1] ? optind - 2 : optind - 1;
}

int cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts, int *longidx)
{
    int idx = -1;
    int c = getopt_long(argc, argv, shortopts, longopts, &idx);
    if (longidx)
        *longidx = idx;
    if (c == -1 || idx < 0)
        return c;
    int el = option_element(argv);
    const char *text = argv[el];
    size_t n = strcspn(text + 2, "=");
    if (strncmp(text, "--", 2) == 0 && n == strlen(longopts[idx].name) &&
        strncmp(text + 2, longopts[idx].name, n) == 0)
        return c;
    optind = el + 1; /* an abbreviation: refused, and argv[optind - 1] names it */
    optopt = 0;
    if (longidx)
        *longidx = -1;
    return '?';
}

/* Edit distance of a and b (b at most 63 characters; longer: a large number). */
static size_t edit_distance(const char *a, size_t la, const char *b)
{
    size_t lb = strlen(b), row[64];
    if (lb >= ARRAY_SIZE(row) || la >= 64)
        return 64;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            best = MIN(best, up + 1);
            best = MIN(best, row[j - 1] + 1);
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Appends " (did you mean --X?)" or " (did you mean --X or --Y?)" for the typed name (n bytes): the long
 * options it abbreviates, else the nearest ones within a small edit distance. Nothing if none is near. */
static void suggest(StrBuf *sb, const char *name, size_t n, const struct option *longopts)
{
    const struct option *hits[3];
    size_t nhits = 0, best = n < 4 ? 1 : 2;
    for (const struct option *o = longopts; o->name && nhits < ARRAY_SIZE(hits); o++)
        if (n && strncmp(o->name, name, n) == 0)
            hits[nhits++] = o;
    if (!nhits) {
        for (const struct option *o = longopts; o->name; o++) {
            size_t d = edit_distance(name, n, o->name);
            if (d < best) {
                best = d;
                nhits = 0;
            }
            if (d == best && nhits < ARRAY_SIZE(hits))
                hits[nhits++] = o;
        }
    }
    for (size_t i = 0; i < nhits; i++)
        sb_printf(sb, "%s--%s%s", i == 0 ? " (did you mean " : i + 1 == nhits ? " or " : ", ", hits[i]->name,
                  i + 1 == nhits ? "?)" : "");
}

int cli_option_error(char **argv, int c, const char *cmd, const struct option *longopts)
{
    const char *text = argv[optind - 1];
    /* an abbreviation without its argument (`--over` last) is an unknown option, not a missing argument */
    bool exact_long = false;
    for (const struct option *o = longopts; o && o->name && strncmp(text, "--", 2) == 0; o++)
        exact_long |= strcmp(o->name, text + 2) == 0;
    if (c == ':' && (exact_long || strncmp(text, "--", 2) != 0)) {
        errmsg(text, "option requires an argument");
        return EXIT_USAGE;
    }
    StrBuf sb;
    sb_init(&sb);
    char shortopt[3] = { '-', (char)optopt, '\0' };
    if (optopt && strncmp(text, "--", 2) != 0) {
        text = shortopt;
        sb_printf(&sb, "unknown option");
    } else {
        size_t n = strcspn(text + 2, "=");
        const struct option *exact = NULL;
        for (const struct option *o = longopts; o && o->name; o++)
            if (strlen(o->name) == n && strncmp(o->name, text + 2, n) == 0)
                exact = o;
        if (exact && exact->has_arg == no_argument && text[2 + n] == '=') {
            errmsg(text, "option takes no value");
            sb_free(&sb);
            return EXIT_USAGE;
        }
        sb_printf(&sb, "unknown option");
        if (cmd)
            sb_printf(&sb, " for '%s'", cmd);
        if (longopts && strncmp(text, "--", 2) == 0)
            suggest(&sb, text + 2, n, longopts);
        char *name = strndup(text, n + 2);
        if (!name)
            abort();
        errmsg(name, "%s", sb.s);
        free(name);
        sb_free(&sb);
        return EXIT_USAGE;
    }
    if (cmd)
        sb_printf(&sb, " for '%s'", cmd);
    errmsg(text, "%s", sb.s);
    sb_free(&sb);
    return EXIT_USAGE;
}

bool cli_url_error(const char *image)
{
    static const char *const schemes[] = { "nbd", "nbds", "nbd+unix", "nbd+tcp", "http", "https", "ftp", "ftps",
                                           "s3", "rbd", "iscsi", "ssh", "sftp", "gluster", "nfs", "file" };
    size_t n = strspn(image, "abcdefghijklmnopqrstuvwxyz0123456789+.-");
    if (n == 0 || image[n] != ':')
        return false;
    struct stat st;
    if (lstat(image, &st) == 0 || bdrv_find_protocol(image))
        return false; /* a local file of that name, or a URL a protocol driver opens */
    bool known = strncmp(image + n, "://", 3) == 0;
    for (size_t i = 0; !known && i < ARRAY_SIZE(schemes); i++)
        known = strlen(schemes[i]) == n && strncmp(image, schemes[i], n) == 0;
    if (!known)
        return false;
    errmsg(image, "network protocols are not supported yet (%.*s); give the path of a local image file", (int)n,
           image);
    return true;
}

bool backing_is_a_dir(const char *backing)
{
    struct stat st;
    if (!backing || stat(backing, &st) != 0 || !S_ISDIR(st.st_mode))
        return false;
    errmsg("--backing", "'%s' is a directory; did you mean --backing-dir %s? (--backing names a file)", backing,
           backing);
    return true;
}

/* ---------------------------------------------------------------- options of the protocol drivers */

int cli_net_apply(CliNetOpts *n, BlockOpenOpts *o, const char *image)
{
    const BlockDriver *d = bdrv_find_protocol(image);
    if (!d && o->backing)
        d = bdrv_find_protocol(o->backing);
    const char *drv = d ? d->name : "nbd";
    bool web = strcmp(drv, "http") == 0 || strcmp(drv, "s3") == 0;
    const struct {
        const char *opt, *value, *key, *only;
    } want[3] = {
        { "--timeout", n->timeout, "timeout", NULL },
        { "--cacert", n->cacert, "cacert", web ? NULL : "https:// and s3:// images" },
        { "--s3-endpoint", n->s3_endpoint, "endpoint", strcmp(drv, "s3") == 0 ? NULL : "s3:// images" },
    };
    for (int i = 0; i < 3; i++) {
        if (!want[i].value)
            continue;
        if (want[i].only) {
            errmsg(want[i].opt, "only for %s (not %s)", want[i].only, image);
            return EXIT_USAGE;
        }
        int len = snprintf(n->items[i], sizeof n->items[i], "%s.%s=%s", drv, want[i].key, want[i].value);
        if (len < 0 || (size_t)len >= sizeof n->items[i] || bdrv_opts_add(o, n->items[i]) < 0) {
            errmsg(want[i].opt, len >= 0 && (size_t)len < sizeof n->items[i] ? "too many driver options"
                                                                               : "value too long");
            return EXIT_USAGE;
        }
    }
    return -1;
}

/* ---------------------------------------------------------------- --help of the subcommands */

typedef struct CommandHelp {
    const char *name, *synopsis, *summary, *options, *example;
} CommandHelp;

#define OPEN_OPTIONS \
    "  -f, --format FMT         format of IMAGE (default: probed)\n" \
    "      --backing FILE       use FILE as the backing file of IMAGE\n" \
    "      --backing-format FMT format of that backing file\n" \
    "      --no-backing         ignore the backing file named in IMAGE\n" \
    "      --backing-dir DIR    look for backing files in DIR too (repeatable)\n" \
    "      --unsafe-backing     plain backing path resolution, no refusals\n" \
    "      --data-file PATH     external data file of a qcow2 image\n" \
    "  -U, --force-share        do not take or check image locks (the image may be in use)\n" \
    "      --key-file FILE      key of an encrypted image (LUKS): the whole of FILE\n" \
    "      --passphrase-fd N    key of an encrypted image: the first line read from descriptor N\n" \
    "      --key-slot N         only try key slot N of an encrypted image\n" \
    "      --timeout SECONDS    a request to a server (nbd, http, s3) fails after it (30)\n" \
    "      --cacert FILE        CA certificates that verify an https:// or s3:// server\n" \
    "      --s3-endpoint URL    the S3-compatible server of an s3:// image\n" \
    "  -h, --help               this help\n"

static const CommandHelp command_help[] = {
    { "mount", "[OPTIONS] IMAGE MOUNTPOINT",
      "The same as `imgfuse [OPTIONS] IMAGE MOUNTPOINT`: mounts IMAGE, read-only unless --rw.",
      "  (all the options of `imgfuse --help`)\n",
      "imgfuse mount -f qcow2 disk.qcow2 /mnt/disk" },
    { "info", "[OPTIONS] IMAGE", "Describes an image and its backing chain.",
      "      --output=human|json  text (default) or qemu-img's JSON schema\n"
      "      --json               the same as --output=json\n"
      "      --backing-chain      JSON: one object per layer, top first, as qemu-img prints\n" OPEN_OPTIONS,
      "imgfuse info --output=json --backing-dir ../base vms/top.qcow2" },
    { "map", "[OPTIONS] IMAGE", "Prints the allocation map of the chain, as qemu-img map does.",
      "      --output=human|json  text (default) or qemu-img map's JSON, extent by extent\n"
      "      --json               the same as --output=json\n"
      "      --backing-chain      accepted (the map always walks the whole chain)\n" OPEN_OPTIONS,
      "imgfuse map --output=json disk.qcow2" },
    { "hash", "[OPTIONS] IMAGE...", "Prints the digests of the raw view of each IMAGE, like sha256sum.",
      "      --algo sha256|sha1|md5[,...]  one or more digests, one pass (default sha256)\n"
      "  -p, --progress           progress on standard error (also when it is not a terminal)\n"
      "  -q, --quiet              no progress, errors only\n"
      "      --audit-log FILE     append one JSON line per image (version, user, files, digests)\n"
      "      --max-size SIZE      refuse disks larger than SIZE (default 16T)\n"
      "      --force              no size limit\n" OPEN_OPTIONS,
      "imgfuse hash --algo md5,sha1,sha256 evidence.vmdk" },
    { "verify", "[OPTIONS] IMAGE",
      "Hashes the raw view of IMAGE and compares it with the MD5/SHA1 the container stores (EWF, AFF).",
      "  -p, --progress           progress on standard error (also when it is not a terminal)\n"
      "  -q, --quiet              no progress, errors only\n"
      "      --max-size SIZE      refuse disks larger than SIZE (default 16T)\n"
      "      --force              no size limit\n" OPEN_OPTIONS,
      "imgfuse verify evidence.E01" },
    { "create", "-f FMT [-o OPTS] [-b BACKING -F FMT] FILE [SIZE]",
      "Creates a new image FILE of SIZE bytes (K, M, G, T suffixes), or as large as BACKING.",
      "  -f, --format FMT         format of the new image\n"
      "  -o, --options OPTS       creation options KEY=VALUE,... (-o help lists those of FMT)\n"
      "  -b, --backing BACKING    backing file recorded in the image\n"
      "  -F, --backing-format FMT format of BACKING (required with -b; vhdx: always vhdx)\n"
      "      --key-file FILE      passphrase of an encrypted image (luks, qcow2 encrypt.format=luks): all of FILE\n"
      "      --passphrase-fd N    the same: the first line read from descriptor N (else asked on the terminal)\n"
      "      --object secret,id=ID,file=FILE  the same in qemu-img's spelling, with -o key-secret=ID\n"
      "  -h, --help               this help\n",
      "imgfuse create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2" },
    { "convert", "[OPTIONS] SOURCE... TARGET",
      "Copies SOURCE (several: one after the other) into a new image TARGET of any writable format.",
      "  -f, --format FMT         format of the sources (default: probed)\n"
      "  -O, --output-format FMT  format of TARGET (default raw)\n"
      "  -o, --options OPTS       creation options of TARGET (-o help with `imgfuse create -f FMT`)\n"
      "  -B, --backing BACKING    TARGET gets this backing file; only the sources' top layers are copied\n"
      "  -F, --backing-format FMT format of BACKING (required with -B)\n"
      "  -c, --compress           write compressed clusters (qcow2), compressed by -m workers in parallel\n"
      "  -n, --no-create          TARGET exists: write into it (as large as the sources at least)\n"
      "      --target-is-zero     with -n: TARGET reads as zeros, zeros need not be written\n"
      "  -S, --sparse-size SIZE   zero blocks of SIZE in the data are left unwritten (default 4k; 0: write all)\n"
      "  -m, --parallel N         requests in flight, 1 to 16 (default 8)\n"
      "  -t, --cache MODE         unsafe (default, as qemu-img: no sync at the end), writeback (synced), none\n"
      "  -p, --progress           progress on standard error (also when it is not a terminal)\n"
      "  -q, --quiet              errors only\n"
      "  -U, --force-share        read sources that another process holds open for writing\n"
      "      --backing-dir DIR    look for the sources' backing files in DIR too\n"
      "      --unsafe-backing     follow the sources' backing names without the safety policy\n"
      "      --key-file FILE      key of encrypted sources (LUKS, qcow2/qcow encryption): the whole of FILE\n"
      "      --passphrase-fd N    key of encrypted sources: the first line read from descriptor N\n"
      "      --timeout SECONDS    a request to a source's server (nbd, http, s3) fails after it (30)\n"
      "      --cacert FILE        CA certificates that verify an https:// or s3:// source's server\n"
      "      --s3-endpoint URL    the S3-compatible server of an s3:// source\n"
      "      --object secret,id=ID,file=FILE  a key in qemu-img's spelling: the sources', or the target's when\n"
      "                           -o key-secret=ID (luks) / encrypt.key-secret=ID (qcow2) names it\n"
      "      --target-key-file FILE  key of an encrypted target (-O luks, -o encrypt.format=luks): all of FILE\n"
      "  -h, --help               this help\n",
      "imgfuse convert -p -O qcow2 -c disk.vmdk disk.qcow2" },
    { "resize", "[--shrink] [-f FMT] [-q] IMAGE [+|-]SIZE",
      "Grows (or with --shrink shrinks) the virtual disk of IMAGE to SIZE, or by +SIZE / -SIZE.",
      "  -f, --format FMT         format of IMAGE (default: probed)\n"
      "      --shrink             allow a smaller size (the data past the new end is lost)\n"
      "  -q, --quiet              no \"Image resized.\" line\n"
      "  -h, --help               this help\n",
      "imgfuse resize disk.qcow2 +10G" },
    { "commit", "[-p|-q] [-f FMT] [-b BASE] [-d] IMAGE",
      "Copies what IMAGE (and the layers above BASE) hold into BASE, then empties IMAGE (as qemu-img commit).",
      "  -f, --format FMT         format of IMAGE (default: probed)\n"
      "  -b, --base BASE          the backing file to commit into (default: IMAGE's own); implies -d\n"
      "  -d, --drop               leave IMAGE as it is (not emptied)\n"
      "  -p, --progress           progress on standard error (also when it is not a terminal)\n"
      "  -q, --quiet              no \"Image committed.\" line\n"
      "      --key-file FILE      key of encrypted images in the chain; --passphrase-fd N: first line of fd N\n"
      "      --object secret,id=ID,file=FILE  the same, in qemu-img's spelling (data=STRING: shows in ps)\n"
      "  -h, --help               this help\n",
      "imgfuse commit -p top.qcow2" },
    { "stream", "[-p|-q] [-f FMT] [-b BASE] IMAGE",
      "Copies what the backing chain holds above BASE into IMAGE, which then names BASE (or nothing).",
      "  -f, --format FMT         format of IMAGE (default: probed)\n"
      "  -b, --base BASE          keep BASE (and below) as the backing file (default: flatten)\n"
      "  -p, --progress           progress on standard error (also when it is not a terminal)\n"
      "  -q, --quiet              errors only\n"
      "      --key-file FILE      key of encrypted images in the chain; --passphrase-fd N: first line of fd N\n"
      "      --object secret,id=ID,file=FILE  the same, in qemu-img's spelling (data=STRING: shows in ps)\n"
      "  -h, --help               this help\n",
      "imgfuse stream -b base.qcow2 top.qcow2" },
    { "rebase", "[-u] [-p|-q] [-f FMT] -b NEW [-F FMT] IMAGE",
      "Makes NEW the backing file of IMAGE, copying in first what differs so the disk reads the same.",
      "  -f, --format FMT         format of IMAGE (default: probed)\n"
      "  -b, --backing NEW        the new backing file, relative to IMAGE's directory (\"\": none)\n"
      "  -F, --backing-format FMT format of NEW (required with a NEW)\n"
      "  -u, --unsafe             only rewrite the name (the old backing file is not read)\n"
      "  -p, --progress           progress on standard error (also when it is not a terminal)\n"
      "  -q, --quiet              errors only\n"
      "      --key-file FILE      key of encrypted images in the chain; --passphrase-fd N: first line of fd N\n"
      "      --object secret,id=ID,file=FILE  the same, in qemu-img's spelling (data=STRING: shows in ps)\n"
      "  -h, --help               this help\n",
      "imgfuse rebase -b new-base.qcow2 -F qcow2 top.qcow2" },
    { "amend", "[-f FMT] [-q] -o OPTIONS IMAGE",
      "Changes options of IMAGE in place (qcow2: compat=0.10|1.1, lazy_refcounts=on|off), as qemu-img amend.",
      "  -f, --format FMT         format of IMAGE (default: probed)\n"
      "  -o, --options OPTIONS    key=value[,key=value] (repeatable)\n"
      "  -q, --quiet              errors only\n"
      "      --key-file FILE      key of encrypted images in the chain; --passphrase-fd N: first line of fd N\n"
      "      --object secret,id=ID,file=FILE  the same, in qemu-img's spelling (data=STRING: shows in ps)\n"
      "  -h, --help               this help\n",
      "imgfuse amend -o compat=0.10 disk.qcow2" },
    { "snapshot", "-l|-c NAME|-d NAME|-a NAME IMAGE", "Lists, creates, deletes or applies internal snapshots.",
      "  -l                       list the snapshots\n"
      "  -c NAME                  create snapshot NAME\n"
      "  -d NAME                  delete snapshot NAME (name or id)\n"
      "  -a NAME                  apply snapshot NAME: the disk returns to it\n"
      "  -h, --help               this help\n",
      "imgfuse snapshot -c before-upgrade vm.qcow2" },
    { "unmount", "[--timeout SECONDS] MOUNTPOINT",
      "Unmounts MOUNTPOINT and returns when its daemon has flushed, released its locks and exited.",
      "      --timeout SECONDS    give up after SECONDS (1 to 86400; default: wait)\n"
      "  -h, --help               this help\n",
      "imgfuse unmount /mnt/disk" },
    { "check", "[-r leaks|all] [--output=human|json] [-f FMT] [-U] IMAGE",
      "Checks the metadata of IMAGE and, with -r, repairs it (exit 0 clean, 1 failed, 2 corrupt, 3 leaks).",
      "  -r, --repair leaks|all   repair leaked clusters, or everything the format can repair\n"
      "      --output=human|json  text (default) or qemu-img check's JSON\n"
      "  -f, --format FMT         format of IMAGE (default: probed)\n"
      "  -U, --force-share        check an image in use (read-only; not with -r)\n"
      "      --read-only          refuse -r: nothing may be written (forensic use)\n"
      "      --backing-dir DIR    accepted (the backing file is not opened)\n"
      "      --key-file FILE      key of an encrypted image; --passphrase-fd N: its first line from descriptor N\n"
      "  -q, --quiet              no report, the exit code only\n"
      "  -h, --help               this help\n",
      "imgfuse check -r all vm.qcow2" },
    { "compare", "[-s] [-q] [-f FMT] [-F FMT] [-U] IMAGE1 IMAGE2",
      "Compares the raw content of two images (exit 0 identical, 1 different, 2 error).",
      "  -f FMT                   format of IMAGE1 (default: probed)\n"
      "  -F FMT                   format of IMAGE2 (default: probed)\n"
      "  -s, --strict             images of different sizes differ (else the longer part must be zeros)\n"
      "  -U, --force-share        do not take or check image locks\n"
      "  -q, --quiet              no message, the exit code only\n"
      "      --key-file FILE      key of encrypted images in the chain; --passphrase-fd N: first line of fd N\n"
      "      --object secret,id=ID,file=FILE  the same, in qemu-img's spelling (data=STRING: shows in ps)\n"
      "  -h, --help               this help\n",
      "imgfuse compare disk.qcow2 disk.raw" },
};

int cli_print_help(const char *cmd)
{
    for (size_t i = 0; i < ARRAY_SIZE(command_help); i++) {
        const CommandHelp *h = &command_help[i];
        if (strcmp(cmd, h->name) != 0)
            continue;
        printf("Usage: imgfuse %s %s\n%s\n\nOptions:\n%s\nExample:\n  %s\n", h->name, h->synopsis, h->summary,
               h->options, h->example);
        return fflush(stdout) == 0 ? EXIT_OK : EXIT_RUNTIME;
    }
    return EXIT_RUNTIME;
}
