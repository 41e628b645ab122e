/* SPDX-License-Identifier: MIT */
/*
 * check.c - the commands `check` (an image's metadata checked, and repaired with -r, by its driver's check
 * slot) and `compare` (the raw content of two images compared), with qemu-img's options, messages, JSON
 * keys and exit codes.  check opens the image read-only and checks it; with -r, only when that found
 * something, it opens it again writable (BlockOpenOpts.check_repair), repairs and checks again.  Image
 * locks (BlockOpenOpts.exclusive) keep it away from an image anyone else has open, a read-only mount too,
 * unless --force-share (then read-only only).  compare
 * walks both chains by block status, reading only where one side may hold data.  It knows no image format.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgfuse.h"
#include "util.h"

/* qemu-img's exit codes of check (EXIT_CHECK_FAILED also for bad usage: 2 means corruption here) and the
 * one for a format without a checker. */
enum { CHECK_CLEAN = 0, CHECK_FAILED = 1, CHECK_CORRUPT = 2, CHECK_LEAKS = 3, CHECK_UNSUPPORTED = 63 };

enum { CK_OUTPUT = 256, CK_BACKING_DIR, CK_READ_ONLY, CK_IMAGE_OPTS, CK_OBJECT, CK_KEY_FILE, CK_PASSPHRASE_FD };

static const struct option check_options[] = {
    { "format", required_argument, NULL, 'f' },
    { "repair", required_argument, NULL, 'r' },
    { "output", required_argument, NULL, CK_OUTPUT },
    { "force-share", no_argument, NULL, 'U' },
    { "read-only", no_argument, NULL, CK_READ_ONLY },
    { "quiet", no_argument, NULL, 'q' },
    { "backing-dir", required_argument, NULL, CK_BACKING_DIR },
    { "image-opts", no_argument, NULL, CK_IMAGE_OPTS },
    { "object", required_argument, NULL, CK_OBJECT },
    { "key-file", required_argument, NULL, CK_KEY_FILE },
    { "passphrase-fd", required_argument, NULL, CK_PASSPHRASE_FD },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
};

typedef struct CheckArgs {
    BlockOpenOpts opts;
    int fix;                  /* BDRV_FIX_* from -r */
    bool json, quiet, read_only;
    const char *image;
    bool repairs;             /* -r: the driver repairs (else the read-only check's result stands) */
} CheckArgs;

static int check_usage(void)
{
    fprintf(stderr, "imgfuse: usage: imgfuse check [-r leaks|all] [--output=human|json] [-f FMT] [-U] IMAGE\n");
    return CHECK_FAILED;
}

static int check_parse_opt(CheckArgs *a, int c, char **argv)
{
    switch (c) {
    case 'f': a->opts.format = optarg; return -1;
    case 'U': a->opts.force_share = true; return -1;
    case 'q': a->quiet = true; return -1;
    case CK_READ_ONLY: a->read_only = true; return -1;
    case 'r':
        if (strcmp(optarg, "leaks") == 0)
            a->fix = BDRV_FIX_LEAKS;
        else if (strcmp(optarg, "all") == 0)
            a->fix = BDRV_FIX_LEAKS | BDRV_FIX_ERRORS;
        else {
            errmsg("-r", "must be 'leaks' or 'all', not '%s'", optarg);
            return CHECK_FAILED;
        }
        return -1;
    case CK_OUTPUT:
        if (strcmp(optarg, "json") != 0 && strcmp(optarg, "human") != 0) {
            errmsg("--output", "must be 'human' or 'json', not '%s'", optarg);
            return CHECK_FAILED;
        }
        a->json = optarg[0] == 'j';
        return -1;
    case CK_BACKING_DIR:
        if (a->opts.n_backing_dirs == MAX_BACKING_DIRS) {
            errmsg("--backing-dir", "at most %d directories", MAX_BACKING_DIRS);
            return CHECK_FAILED;
        }
        a->opts.backing_dirs[a->opts.n_backing_dirs++] = optarg;
        return -1;
    case CK_IMAGE_OPTS:
        errmsg("--image-opts", "not supported: IMAGE is a file name");
        return CHECK_FAILED;
    case CK_OBJECT: /* qemu-img's --object secret,id=ID,file=FILE: the key */
        return secret_option(&a->opts, SECRET_OPT_OBJECT, optarg) != 0 ? CHECK_FAILED : -1;
    case CK_KEY_FILE: /* an encrypted image (qcow2 LUKS/AES) opens only with its key */
        return secret_from_file(&a->opts, optarg) != 0 ? CHECK_FAILED : -1;
    case CK_PASSPHRASE_FD:
        return secret_from_fd(&a->opts, optarg) != 0 ? CHECK_FAILED : -1;
    case 'h':
        return cli_print_help(argv[0]);
    default:
        cli_option_error(argv, c, argv[0], check_options);
        return CHECK_FAILED;
    }
}

/* Returns -1 to go on, else the exit code. */
static int check_parse(int argc, char **argv, CheckArgs *a)
{
    memset(a, 0, sizeof(*a));
    block_open_opts_init(&a->opts);
    a->opts.read_only = true;
    a->opts.no_backing = true; /* a check is of this one file; its backing file need not be there */
    a->opts.exclusive = true;  /* refused while mounted or open elsewhere, unless --force-share */
    opterr = 0;
    optind = 1;
    int c, rc;
    while ((c = cli_getopt(argc, argv, ":f:r:hqU", check_options, NULL)) != -1)
        if ((rc = check_parse_opt(a, c, argv)) >= 0)
            return rc;
    if (argc - optind != 1)
        return check_usage();
    a->image = argv[optind];
    if (cli_url_error(a->image) || secret_options_done(&a->opts) != 0)
        return CHECK_FAILED;
    if (a->fix && a->opts.force_share) {
        errmsg("-r", "cannot be combined with --force-share: a repair needs the image to itself");
        return CHECK_FAILED;
    }
    if (a->fix && a->read_only) {
        errmsg("-r", "refused: --read-only asks that nothing be written to the image");
        return CHECK_FAILED;
    }
    return -1;
}

/* ---------------------------------------------------------------- output (qemu-img's wording) */

static void check_human(StrBuf *sb, const BlockCheckResult *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        sb_printf(sb, "No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            sb_printf(sb, "\n%" PRId64 " errors were found on the image.\nData may be corrupted, or further writes "
                      "to the image may corrupt it.\n", r->corruptions);
        if (r->leaks)
            sb_printf(sb, "\n%" PRId64 " leaked clusters were found on the image.\nThis means waste of disk space, "
                      "but no harm to data.\n", r->leaks);
        if (r->check_errors)
            sb_printf(sb, "\n%" PRId64 " internal errors have occurred during the check.\n", r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        sb_printf(sb, "%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                  r->allocated_clusters, r->total_clusters, r->allocated_clusters * 100.0 / r->total_clusters,
                  r->fragmented_clusters * 100.0 / r->allocated_clusters,
                  r->compressed_clusters * 100.0 / r->allocated_clusters);
    if (r->image_end_offset)
        sb_printf(sb, "Image end offset: %" PRId64 "\n", r->image_end_offset);
}

static void json_int(StrBuf *sb, const char *key, int64_t v, bool always)
{
    if (v || always)
        sb_printf(sb, "    \"%s\": %" PRId64 ",\n", key, v);
}

/* qemu-img's ImageCheck object: a member with value 0 is left out, check-errors never. */
static void check_json(StrBuf *sb, const BlockCheckResult *r, const char *image, const char *format)
{
    sb_printf(sb, "{\n");
    json_int(sb, "image-end-offset", r->image_end_offset, false);
    json_int(sb, "total-clusters", r->total_clusters, false);
    json_int(sb, "check-errors", r->check_errors, true);
    json_int(sb, "leaks", r->leaks, false);
    json_int(sb, "leaks-fixed", r->leaks_fixed, false);
    json_int(sb, "corruptions", r->corruptions, false);
    json_int(sb, "corruptions-fixed", r->corruptions_fixed, false);
    json_int(sb, "allocated-clusters", r->allocated_clusters, false);
    json_int(sb, "fragmented-clusters", r->fragmented_clusters, false);
    json_int(sb, "compressed-clusters", r->compressed_clusters, false);
    sb_printf(sb, "    \"filename\": ");
    sb_json_str(sb, image);
    sb_printf(sb, ",\n    \"format\": ");
    sb_json_str(sb, format);
    sb_printf(sb, "\n}\n");
}

static int check_exit_code(const BlockCheckResult *r)
{
    if (r->check_errors)
        return CHECK_FAILED;
    return r->corruptions ? CHECK_CORRUPT : r->leaks ? CHECK_LEAKS : CHECK_CLEAN;
}

static int check_print(const CheckArgs *a, const BlockCheckResult *r, const char *format)
{
    if (r->first_error[0] && (r->corruptions || r->leaks || r->check_errors))
        errmsg(a->image, "%s", r->first_error);
    StrBuf sb;
    sb_init(&sb);
    if (a->json)
        check_json(&sb, r, a->image, format);
    else if (r->corruptions_fixed || r->leaks_fixed)
        sb_printf(&sb, "The following inconsistencies were found and repaired:\n\n    %" PRId64 " leaked clusters\n"
                  "    %" PRId64 " corruptions\n\nDouble checking the fixed image now...\n", r->leaks_fixed,
                  r->corruptions_fixed);
    if (!a->json)
        check_human(&sb, r);
    int rc = check_exit_code(r);
    if (!a->quiet || a->json)
        fputs(sb.s, stdout);
    sb_free(&sb);
    if (r->check_errors)
        errmsg(a->image, "Check failed");
    return fflush(stdout) == 0 ? rc : CHECK_FAILED;
}

/* ---------------------------------------------------------------- check */

/* The one line of an open that failed; returns CHECK_FAILED. */
static int check_open_error(const char *image, const Error *err, bool rw)
{
    size_t n = strlen(image);
    const char *why = strncmp(err->msg, image, n) == 0 && strncmp(err->msg + n, ": ", 2) == 0 ? err->msg + n + 2
                                                                                             : err->msg;
    if (err->errnum == EBUSY)
        errmsg(image, "image is in use by another process (QEMU lock): a mounted or running image is checked only "
               "with --force-share, read-only, without -r");
    else if (rw && err->msg[0])
        errmsg(image, "cannot be opened for repair: %s", why);
    else
        report_error(err, image, CHECK_FAILED);
    return CHECK_FAILED;
}

/* Opens IMAGE (writable for a repair: rw) and runs the check slot; the read-only pass of -r also asks the
 * driver whether it repairs (a->repairs). *format gets the driver's name. Returns 0, or the exit code of a
 * failure (message printed). */
static int check_run(CheckArgs *a, bool rw, int fix, BlockCheckResult *res, char *format, size_t len)
{
    Error err;
    memset(&err, 0, sizeof err);
    a->opts.read_only = !rw;
    a->opts.check_repair = rw;
    BlockNode *bs = bdrv_open(a->image, &a->opts, &err);
    if (!bs)
        return check_open_error(a->image, &err, rw);
    snprintf(format, len, "%s", bs->drv->name);
    int ret = bdrv_check_image(bs, res, fix);
    if (ret == 0 && !fix && a->fix) {
        /* a repair is wanted: ask before opening the image writable (which a driver may take to mend) */
        BlockCheckResult probe;
        int q = bdrv_check_image(bs, &probe, BDRV_FIX_QUERY);
        a->repairs = q == 0;
        if (q == -ENOTSUP) {
            fix = a->fix;
            ret = -ENOTSUP;
        }
    }
    bdrv_close(bs);
    if (ret == -ENOTSUP && fix) {
        errmsg(a->image, "format '%s' cannot repair images (check it without -r)", format);
        return CHECK_UNSUPPORTED;
    }
    if (ret == -ENOTSUP) {
        errmsg(a->image, "format '%s' does not support checks", format);
        return CHECK_UNSUPPORTED;
    }
    if (ret < 0) {
        errmsg(a->image, "Check failed: %s%s%s", strerror(-ret), res->first_error[0] ? ": " : "", res->first_error);
        return CHECK_FAILED;
    }
    return 0;
}

int cmd_check(int argc, char **argv)
{
    CheckArgs a;
    int rc = check_parse(argc, argv, &a);
    if (rc >= 0)
        return rc;
    BlockCheckResult res;
    char format[64];
    if ((rc = check_run(&a, false, 0, &res, format, sizeof format)) != 0)
        return rc;
    if (a.fix && a.repairs) {
        /* a clean image too: the repair may clear flags (qcow2's dirty and corrupt bits) */
        BlockCheckResult fixed;
        rc = check_run(&a, true, a.fix, &fixed, format, sizeof format);
        if (rc == CHECK_UNSUPPORTED || (rc != 0 && !res.corruptions && !res.leaks))
            return rc;
        if (rc == 0)
            res = fixed;
    }
    return check_print(&a, &res, format);
}

/* ---------------------------------------------------------------- compare */

enum { CMP_SAME = 0, CMP_DIFFERENT = 1, CMP_ERROR = 2 };
#define CMP_CHUNK (1 << 20)
#define CMP_SECTOR 512

static const struct option compare_options[] = {
    { "strict", no_argument, NULL, 's' },
    { "force-share", no_argument, NULL, 'U' },
    { "quiet", no_argument, NULL, 'q' },
    { "help", no_argument, NULL, 'h' },
    SECRET_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
};

typedef struct CmpSide {
    BlockOpenOpts opts;       /* must outlive the node */
    BlockNode *bs;
    int64_t size;
    uint8_t *buf;
} CmpSide;

/* The offset qemu-img names: the start of the first 512-byte piece of the run at base that differs. */
static int64_t cmp_report_offset(int64_t base, int64_t at)
{
    return base + (at - base) / CMP_SECTOR * CMP_SECTOR;
}

/* Whether [pos, pos + n) of side reads as zeros for sure, from its block status; *run: how far that holds. */
static int cmp_status(CmpSide *s, int64_t pos, int64_t n, bool *zero, int64_t *run)
{
    BlockStatus st;
    memset(&st, 0, sizeof st);
    int ret = bdrv_block_status_above(s->bs, pos, n, &st);
    if (ret < 0)
        return ret;
    *zero = (st.flags & BDRV_BLOCK_ZERO) || !(st.flags & BDRV_BLOCK_ALLOCATED);
    *run = st.bytes > 0 ? MIN(st.bytes, n) : n;
    return 0;
}

static int64_t first_nonzero(const uint8_t *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (p[i])
            return i;
    return -1;
}

/* Compares [pos, end) where both sides exist (b NULL: a alone must read as zeros). Returns 0 same, 1 with
 * *at set at the first difference, or -errno. */
static int cmp_range(CmpSide *a, CmpSide *b, int64_t pos, int64_t end, int64_t *at)
{
    while (pos < end) {
        int64_t n = MIN(end - pos, (int64_t)CMP_CHUNK), ra, rb = n;
        bool za, zb = true;
        int ret = cmp_status(a, pos, n, &za, &ra);
        if (ret == 0 && b)
            ret = cmp_status(b, pos, n, &zb, &rb);
        if (ret < 0)
            return ret;
        n = MIN(ra, rb);
        if (!(za && zb)) {
            if (!za && (ret = bdrv_pread(a->bs, pos, n, a->buf)) < 0)
                return ret;
            if (!zb && (ret = bdrv_pread(b->bs, pos, n, b->buf)) < 0)
                return ret;
            int64_t d = -1;
            if (za || zb)
                d = first_nonzero(za ? b->buf : a->buf, n);
            else if (memcmp(a->buf, b->buf, (size_t)n) != 0)
                for (d = 0; a->buf[d] == b->buf[d]; d++)
                    ;
            if (d >= 0) {
                *at = cmp_report_offset(pos, pos + d);
                return 1;
            }
        }
        pos += n;
    }
    return 0;
}

static int cmp_open(CmpSide *s, const char *image, const char *format, bool force_share, const BlockOpenOpts *key)
{
    block_open_opts_init(&s->opts);
    s->opts.secret = key->secret; /* one key for both images and their chains */
    s->opts.secret_len = key->secret_len;
    s->opts.ask_secret = key->ask_secret;
    s->opts.read_only = true;
    s->opts.format = format;
    s->opts.force_share = force_share;
    Error err;
    memset(&err, 0, sizeof err);
    s->bs = bdrv_open(image, &s->opts, &err);
    if (!s->bs) {
        report_error(&err, image, CMP_ERROR);
        return -1;
    }
    s->size = bdrv_getlength(s->bs);
    s->buf = malloc(CMP_CHUNK);
    if (s->size < 0 || !s->buf) {
        errmsg(image, "cannot get the size or a buffer: %s", strerror(s->size < 0 ? (int)-s->size : ENOMEM));
        return -1;
    }
    return 0;
}

static int compare_images(CmpSide *a, CmpSide *b, bool strict, bool quiet)
{
    if (a->size != b->size) {
        if (strict) {
            if (!quiet)
                printf("Strict mode: Image size mismatch!\n");
            return CMP_DIFFERENT;
        }
        if (!quiet)
            printf("Warning: Image size mismatch!\n");
    }
    int64_t common = MIN(a->size, b->size), at = 0;
    int ret = cmp_range(a, b, 0, common, &at);
    if (ret == 0)
        ret = a->size > common ? cmp_range(a, NULL, common, a->size, &at) : cmp_range(b, NULL, common, b->size, &at);
    if (ret < 0) {
        errmsg(a->bs->filename, "cannot compare with %s: %s", b->bs->filename, strerror(-ret));
        return CMP_ERROR;
    }
    if (!quiet && ret)
        printf("Content mismatch at offset %" PRId64 "!\n", at);
    else if (!quiet)
        printf("Images are identical.\n");
    return ret ? CMP_DIFFERENT : CMP_SAME;
}

int cmd_compare(int argc, char **argv)
{
    const char *fmt_a = NULL, *fmt_b = NULL;
    bool strict = false, quiet = false, force_share = false;
    BlockOpenOpts key;
    block_open_opts_init(&key);
    opterr = 0;
    optind = 1;
    int c, r;
    while ((c = cli_getopt(argc, argv, ":f:F:hqsU", compare_options, NULL)) != -1) {
        if ((r = secret_option(&key, c, optarg)) >= 0) {
            if (r != 0)
                return CMP_ERROR;
            continue;
        }
        switch (c) {
        case 'f': fmt_a = optarg; break;
        case 'F': fmt_b = optarg; break;
        case 's': strict = true; break;
        case 'q': quiet = true; break;
        case 'U': force_share = true; break;
        case 'h': return cli_print_help(argv[0]);
        default: return cli_option_error(argv, c, argv[0], compare_options);
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "imgfuse: usage: imgfuse compare [-s] [-q] [-f FMT] [-F FMT] [-U] IMAGE1 IMAGE2\n");
        return CMP_ERROR;
    }
    if (cli_url_error(argv[optind]) || cli_url_error(argv[optind + 1]) || secret_options_done(&key) != 0)
        return CMP_ERROR;
    CmpSide a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int rc = CMP_ERROR;
    if (cmp_open(&a, argv[optind], fmt_a, force_share, &key) == 0 &&
        cmp_open(&b, argv[optind + 1], fmt_b, force_share, &key) == 0)
        rc = compare_images(&a, &b, strict, quiet);
    if (fflush(stdout) != 0)
        rc = CMP_ERROR;
    for (CmpSide *s = &a; s; s = s == &a ? &b : NULL) {
        if (s->bs)
            bdrv_close(s->bs);
        free(s->buf);
    }
    return rc;
}
