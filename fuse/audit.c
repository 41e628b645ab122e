/* SPDX-License-Identifier: MIT */
/*
 * audit.c - the audit log of a mount (--audit-log FILE): one JSON line appended per mount, written at
 * unmount, with the mount and unmount times, the user, every image file of the chain with its size and
 * mtime at mount time (and whether both were unchanged at unmount), the mode, the options, and the bytes
 * read and written through the mount.  The file is opened before mounting so that a bad path fails early.
 * It knows nothing about FUSE or image formats.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "imgfuse.h"

int audit_open(Audit *a, const char *file)
{
    memset(a, 0, sizeof *a);
    a->fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (a->fd < 0) {
        errmsg(file, "cannot open audit log: %s", strerror(errno));
        return EXIT_USAGE;
    }
    return 0;
}

static char *absolute(const char *path)
{
    char buf[PATH_MAX];
    return strdup(realpath(path, buf) ? buf : path);
}

void audit_begin(Audit *a, BlockNode *bs, const char *mountpoint)
{
    if (a->fd <= 0)
        return;
    clock_gettime(CLOCK_REALTIME, &a->start);
    a->mountpoint = absolute(mountpoint);
    a->n = bdrv_chain_length(bs);
    a->images = calloc((size_t)a->n, sizeof *a->images);
    int i = 0;
    for (BlockNode *n = bs; n && a->images && i < a->n; n = n->backing, i++) {
        AuditImage *im = &a->images[i];
        im->path = absolute(n->filename);
        struct stat st;
        if (stat(im->path, &st) == 0) {
            im->size = st.st_size;
            im->mtime = st.st_mtim;
        } else {
            im->size = -1;
        }
    }
}

static void put_time(StrBuf *sb, const char *key, const struct timespec *ts)
{
    struct tm tm;
    char buf[64] = "";
    time_t t = ts->tv_sec;
    if (gmtime_r(&t, &tm))
        strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    sb_printf(sb, "\"%s\": \"%s.%09ldZ\"", key, buf, (long)ts->tv_nsec);
}

int audit_finish(Audit *a, bool read_only, const char *options, const FsCounters *c, int rc)
{
    if (a->fd <= 0)
        return 0;
    struct timespec end;
    clock_gettime(CLOCK_REALTIME, &end);
    StrBuf sb;
    sb_init(&sb);
    sb_put(&sb, "{", 1);
    put_time(&sb, "mount_time", &a->start);
    sb_put(&sb, ", ", 2);
    put_time(&sb, "unmount_time", &end);
    uid_t uid = getuid();
    struct passwd pw, *pwp = NULL;
    char pwbuf[4096];
    getpwuid_r(uid, &pw, pwbuf, sizeof pwbuf, &pwp);
    sb_put(&sb, ", \"user\": ", 10);
    sb_json_str(&sb, pwp ? pwp->pw_name : "");
    sb_printf(&sb, ", \"uid\": %u, \"pid\": %d, \"mode\": \"%s\", \"mountpoint\": ", (unsigned)uid, (int)getpid(),
              read_only ? "read-only" : "read-write");
    sb_json_str(&sb, a->mountpoint ? a->mountpoint : "");
    sb_put(&sb, ", \"options\": ", 13);
    sb_json_str(&sb, options ? options : "");
    sb_put(&sb, ", \"images\": [", 13);
    for (int i = 0; a->images && i < a->n; i++) {
        AuditImage *im = &a->images[i];
        struct stat st;
        bool same = stat(im->path, &st) == 0 && st.st_size == im->size && st.st_mtim.tv_sec == im->mtime.tv_sec &&
                    st.st_mtim.tv_nsec == im->mtime.tv_nsec;
        sb_printf(&sb, "%s{\"file\": ", i ? ", " : "");
        sb_json_str(&sb, im->path);
        sb_printf(&sb, ", \"size\": %" PRId64 ", ", im->size);
        put_time(&sb, "mtime", &im->mtime);
        sb_printf(&sb, ", \"unchanged\": %s}", same ? "true" : "false");
    }
    sb_printf(&sb, "], \"bytes_read\": %" PRIu64 ", \"bytes_written\": %" PRIu64 ", \"exit_status\": %d}\n",
              c ? (uint64_t)c->bytes_read : 0, c ? (uint64_t)c->bytes_written : 0, rc);
    int r = 0;
    errno = 0;
    if (write(a->fd, sb.s, sb.len) != (ssize_t)sb.len || fsync(a->fd) != 0)
        r = errno ? -errno : -EIO;
    sb_free(&sb);
    close(a->fd);
    a->fd = -1;
    for (int i = 0; a->images && i < a->n; i++)
        free(a->images[i].path);
    free(a->images);
    free(a->mountpoint);
    return r;
}
