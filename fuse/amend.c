/* SPDX-License-Identifier: MIT */
/*
 * amend.c - `imgfuse amend [-f FMT] -o OPTIONS IMAGE`: the image opened writable, alone (its locks taken)
 * and without its backing chain, and the options handed to its driver's amend slot (qcow2: compat,
 * lazy_refcounts), which refuses what it cannot change by name. It knows no image format.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgfuse.h"
#include "util.h"

/* The -o values joined by commas into *opts (malloc'd); -1 on no memory. */
static int amend_add_opts(char **opts, const char *more)
{
    size_t old = *opts ? strlen(*opts) : 0, add = strlen(more);
    char *n = realloc(*opts, old + add + 2);
    if (!n)
        return -1;
    if (old)
        n[old++] = ',';
    memcpy(n + old, more, add + 1);
    *opts = n;
    return 0;
}

int cmd_amend(int argc, char **argv)
{
    static const char synopsis[] = "[-f FMT] [-q] -o OPTIONS IMAGE";
    static const struct option longopts[] = {
        { "format", required_argument, NULL, 'f' }, { "options", required_argument, NULL, 'o' },
        { "quiet", no_argument, NULL, 'q' },         { "help", no_argument, NULL, 'h' },
        SECRET_LONG_OPTIONS,                         { NULL, 0, NULL, 0 },
    };
    const char *format = NULL;
    char *opts = NULL;
    BlockOpenOpts o;
    block_open_opts_init(&o);
    opterr = 0;
    optind = 1;
    int c, r;
    while ((c = cli_getopt(argc, argv, ":f:o:qh", longopts, NULL)) != -1) {
        if ((r = secret_option(&o, c, optarg)) >= 0) { /* the key of an encrypted image */
            if (r != 0) {
                free(opts);
                return r;
            }
            continue;
        }
        switch (c) {
        case 'f': format = optarg; break;
        case 'o':
            if (amend_add_opts(&opts, optarg) < 0) {
                free(opts);
                errmsg("amend", "out of memory");
                return EXIT_RUNTIME;
            }
            break;
        case 'q': break;
        case 'h': free(opts); return cli_print_help("amend");
        default: free(opts); return cli_option_error(argv, c, "amend", longopts);
        }
    }
    if (argc - optind != 1 || !opts || !opts[0]) {
        free(opts);
        fprintf(stderr, "imgfuse: usage: imgfuse amend %s\n", synopsis);
        return EXIT_USAGE;
    }
    if (secret_options_done(&o) != 0) {
        free(opts);
        return EXIT_USAGE;
    }
    const char *image = argv[optind];
    o.format = format;
    o.read_only = false;
    o.no_backing = true;
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *bs = bdrv_open(image, &o, &err);
    if (!bs) {
        free(opts);
        return report_error(&err, image, EXIT_USAGE);
    }
    memset(&err, 0, sizeof err);
    r = bdrv_amend(bs, opts, &err);
    int rc = r < 0 ? report_error(&err, image, EXIT_RUNTIME) : EXIT_OK;
    bdrv_close(bs);
    free(opts);
    return rc;
}
