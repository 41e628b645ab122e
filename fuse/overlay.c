/* SPDX-License-Identifier: MIT */
/*
 * overlay.c - --overlay FILE and --snapshot: writes go to a qcow2 overlay whose backing file is IMAGE, so
 * IMAGE is never written.  The overlay is created with bdrv_create (backing = IMAGE's absolute path or URL,
 * backing format = IMAGE's probed or given format, size = IMAGE's virtual size), or reused when it already
 * is an overlay of IMAGE; --snapshot uses a temporary one in $TMPDIR, unlinked (with its directory) as
 * soon as the chain has it open, so that not even a kill -9 leaves the examiner's writes behind.  The top of the
 * chain is then opened read-write with IMAGE named explicitly as its backing file (so the backing-name
 * safety rules need no exception for the temporary directory); the chain below stays read-only.
 * It knows no format besides asking the block layer for "qcow2".
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imgfuse.h"

#define OVERLAY_FORMAT "qcow2"

/* Format and virtual size of IMAGE, opened read-only with the user's image options. */
static int probe_image(const char *image, const BlockOpenOpts *user, char **fmt, int64_t *size)
{
    BlockOpenOpts o = *user;
    o.read_only = true;
    o.copy_on_read = false;
    o.detect_zeroes = DETECT_ZEROES_OFF;
    o.driver_opts_partial = true; /* the overlay is in the chain the options are for, not here */
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *bs = bdrv_open(image, &o, &err);
    if (!bs)
        return report_error(&err, image, EXIT_USAGE);
    *fmt = strdup(bs->drv->name);
    *size = bdrv_getlength(bs);
    bdrv_close(bs);
    if (!*fmt || *size < 0) {
        errmsg(image, "cannot read its size");
        return EXIT_RUNTIME;
    }
    return 0;
}

/* The overlay names IMAGE if its recorded backing file, taken relative to the overlay's directory,
 * is the same file as IMAGE. */
static int check_reuse(const char *overlay, const char *image_abs)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.no_backing = true;
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *bs = bdrv_open(overlay, &o, &err);
    if (!bs)
        return report_error(&err, overlay, EXIT_USAGE);
    int rc = 0;
    if (!bs->backing_name) {
        errmsg(overlay, "exists and is not an overlay (it has no backing file); refusing to use it");
        rc = EXIT_USAGE;
    } else if (bdrv_find_protocol(image_abs)) {
        if (strcmp(bs->backing_name, image_abs) != 0) {
            errmsg(overlay, "exists and is an overlay of '%s', not of %s; refusing to use it", bs->backing_name,
                   image_abs);
            rc = EXIT_USAGE;
        }
    } else {
        char path[PATH_MAX * 2], real[PATH_MAX];
        if (bs->backing_name[0] == '/') {
            snprintf(path, sizeof path, "%s", bs->backing_name);
        } else {
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%s", overlay);
            char *slash = strrchr(dir, '/');
            snprintf(path, sizeof path, "%s/%s", slash ? (*slash = '\0', dir[0] ? dir : "/") : ".", bs->backing_name);
        }
        if (!realpath(path, real) || strcmp(real, image_abs) != 0) {
            errmsg(overlay, "exists and is an overlay of '%s', not of %s; refusing to use it", bs->backing_name,
                   image_abs);
            rc = EXIT_USAGE;
        }
    }
    bdrv_close(bs);
    return rc;
}

static int create_overlay(const char *path, const char *image_abs, const char *fmt, int64_t size)
{
    CreateOpts co = { .size = size, .backing = image_abs, .backing_format = fmt };
    Error err;
    memset(&err, 0, sizeof err);
    int r = bdrv_create(OVERLAY_FORMAT, path, &co, &err);
    if (r < 0)
        return report_error(&err, path, EXIT_RUNTIME);
    return 0;
}

static int make_temp_overlay(Overlay *ov)
{
    const char *tmp = getenv("TMPDIR");
    char templ[PATH_MAX];
    snprintf(templ, sizeof templ, "%s/imgfuse-snapshot-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(templ)) {
        errmsg(templ, "cannot create a temporary directory: %s", strerror(errno));
        return EXIT_RUNTIME;
    }
    ov->temp_dir = strdup(templ);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/overlay.qcow2", templ);
    ov->path = strdup(path);
    return ov->temp_dir && ov->path ? 0 : EXIT_RUNTIME;
}

int overlay_prepare(Overlay *ov, const char *image, const char *overlay, BlockOpenOpts *opts)
{
    char real[PATH_MAX];
    if (bdrv_find_protocol(image)) { /* a URL (nbd://...): recorded as given */
        snprintf(real, sizeof real, "%s", image);
    } else if (!realpath(image, real)) {
        errmsg(image, "%s", strerror(errno));
        return EXIT_USAGE;
    }
    if (!(ov->image_abs = strdup(real)))
        return EXIT_RUNTIME;
    int64_t size = 0;
    int rc = probe_image(image, opts, &ov->image_format, &size);
    if (rc)
        return rc;
    ov->image_size = size;
    struct stat st;
    if (overlay && stat(overlay, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            errmsg(overlay, "not a regular file");
            return EXIT_USAGE;
        }
        if ((rc = check_reuse(overlay, ov->image_abs)) != 0)
            return rc;
        ov->path = strdup(overlay);
    } else {
        if (overlay)
            ov->path = strdup(overlay);
        else if ((rc = make_temp_overlay(ov)) != 0)
            return rc;
        if (!ov->path)
            return EXIT_RUNTIME;
        if ((rc = create_overlay(ov->path, ov->image_abs, ov->image_format, size)) != 0)
            return rc;
    }
    if (!ov->path)
        return EXIT_RUNTIME;
    opts->format = OVERLAY_FORMAT;
    opts->backing = ov->image_abs;
    opts->backing_format = ov->image_format;
    opts->no_backing = false;
    opts->read_only = false;
    return 0;
}

void overlay_unlink_temp(Overlay *ov)
{
    if (!ov->temp_dir)
        return;
    if (ov->path && unlink(ov->path) != 0)
        log_msg("%s: cannot remove the temporary overlay: %s", ov->path, strerror(errno));
    if (rmdir(ov->temp_dir) != 0)
        log_msg("%s: cannot remove: %s", ov->temp_dir, strerror(errno));
    free(ov->temp_dir);
    ov->temp_dir = NULL;
}

void overlay_cleanup(Overlay *ov)
{
    if (ov->temp_dir) {
        if (ov->path)
            unlink(ov->path);
        rmdir(ov->temp_dir);
    }
    free(ov->temp_dir);
    free(ov->path);
    free(ov->image_abs);
    free(ov->image_format);
    memset(ov, 0, sizeof *ov);
}
