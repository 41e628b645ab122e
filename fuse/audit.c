/* SPDX-License-Identifier: MIT */
/*
 * audit.c - the audit log of a mount (--audit-log FILE): one JSON line appended per mount, written at
 * unmount, with imgfuse's version, the mount and unmount times, the user, every image file of the chain
 * (every segment file of an evidence series, as its driver lists them) with its size and mtime at mount
 * time (and whether both were unchanged at unmount), the mode, the options, and the bytes read and
 * written through the mount.  `imgfuse hash --audit-log FILE` appends one line per image hashed, with the
 * same version, user and files, and the digests.  The file is opened before mounting or hashing so that
 * a bad path fails early.
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

/* The files of node n: its driver's list (the segments of an evidence series), else its own file. */
static int node_files(BlockNode *n, const char *const **files)
{
    BlockDriverFacts f;
    bdrv_get_facts(n, &f);
    *files = f.n_files > 0 ? f.files : NULL;
    return f.n_files > 0 ? f.n_files : 1;
}

void audit_begin(Audit *a, BlockNode *bs, const char *mountpoint)
{
    if (a->fd <= 0)
        return;
    clock_gettime(CLOCK_REALTIME, &a->start);
    a->mountpoint = mountpoint ? absolute(mountpoint) : NULL;
    const char *const *files;
    a->n = 0;
    for (BlockNode *n = bs; n; n = n->backing)
        a->n += node_files(n, &files);
    a->images = a->n ? calloc((size_t)a->n, sizeof *a->images) : NULL;
    int i = 0;
    for (BlockNode *n = bs; n && a->images; n = n->backing) {
        int k = node_files(n, &files);
        for (int j = 0; j < k && i < a->n; j++, i++) {
            AuditImage *im = &a->images[i];
            im->path = absolute(files ? files[j] : n->filename);
            struct stat st;
            if (stat(im->path, &st) == 0) {
                im->size = st.st_size;
                im->mtime = st.st_mtim;
            } else {
                im->size = -1;
            }
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

/* "user", "uid" and "pid" of the process writing the line. */
static void put_user(StrBuf *sb)
{
    uid_t uid = getuid();
    struct passwd pw, *pwp = NULL;
    char pwbuf[4096];
    getpwuid_r(uid, &pw, pwbuf, sizeof pwbuf, &pwp);
    sb_put(sb, "\"user\": ", 8);
    sb_json_str(sb, pwp ? pwp->pw_name : "");
    sb_printf(sb, ", \"uid\": %u, \"pid\": %d", (unsigned)uid, (int)getpid());
}

/* Starts a line in sb: the version, "command" (unless NULL), the start time and now under their keys, the
 * user. */
static void put_head(StrBuf *sb, const Audit *a, const char *command, const char *start_key, const char *end_key)
{
    struct timespec end;
    clock_gettime(CLOCK_REALTIME, &end);
    sb_init(sb);
    sb_printf(sb, "{\"imgfuse_version\": \"%s\", ", IMGFUSE_VERSION);
    if (command)
        sb_printf(sb, "\"command\": \"%s\", ", command);
    put_time(sb, start_key, &a->start);
    sb_put(sb, ", ", 2);
    put_time(sb, end_key, &end);
    sb_put(sb, ", ", 2);
    put_user(sb);
}

/* "images": the chain's files as audit_begin saw them, each with whether it is unchanged now. */
static void put_images(StrBuf *sb, const Audit *a)
{
    sb_put(sb, "\"images\": [", 11);
    for (int i = 0; a->images && i < a->n; i++) {
        AuditImage *im = &a->images[i];
        struct stat st;
        bool same = stat(im->path, &st) == 0 && st.st_size == im->size && st.st_mtim.tv_sec == im->mtime.tv_sec &&
                    st.st_mtim.tv_nsec == im->mtime.tv_nsec;
        sb_printf(sb, "%s{\"file\": ", i ? ", " : "");
        sb_json_str(sb, im->path);
        sb_printf(sb, ", \"size\": %" PRId64 ", ", im->size);
        put_time(sb, "mtime", &im->mtime);
        sb_printf(sb, ", \"unchanged\": %s}", same ? "true" : "false");
    }
    sb_put(sb, "]", 1);
}

/* Appends the line in sb (whole, then fsync) and frees what audit_begin recorded. Returns 0 or -errno. */
static int audit_write(Audit *a, StrBuf *sb)
{
    int r = 0;
    errno = 0;
    if (write(a->fd, sb->s, sb->len) != (ssize_t)sb->len || fsync(a->fd) != 0)
        r = errno ? -errno : -EIO;
    sb_free(sb);
    for (int i = 0; a->images && i < a->n; i++)
        free(a->images[i].path);
    free(a->images);
    free(a->mountpoint);
    a->images = NULL;
    a->mountpoint = NULL;
    a->n = 0;
    return r;
}

int audit_finish(Audit *a, bool read_only, const char *options, const FsCounters *c, int rc)
{
    if (a->fd <= 0)
        return 0;
    StrBuf sb;
    put_head(&sb, a, NULL, "mount_time", "unmount_time");
    sb_printf(&sb, ", \"mode\": \"%s\", \"mountpoint\": ", read_only ? "read-only" : "read-write");
    sb_json_str(&sb, a->mountpoint ? a->mountpoint : "");
    sb_put(&sb, ", \"options\": ", 13);
    sb_json_str(&sb, options ? options : "");
    sb_put(&sb, ", ", 2);
    put_images(&sb, a);
    sb_printf(&sb, ", \"bytes_read\": %" PRIu64 ", \"bytes_written\": %" PRIu64 ", \"exit_status\": %d}\n",
              c ? (uint64_t)c->bytes_read : 0, c ? (uint64_t)c->bytes_written : 0, rc);
    int r = audit_write(a, &sb);
    close(a->fd);
    a->fd = -1;
    return r;
}

int audit_hash(Audit *a, const char *image, int64_t size, int n, const char *const *algo, const char *const *hex,
               int rc)
{
    if (a->fd <= 0)
        return 0;
    StrBuf sb;
    put_head(&sb, a, "hash", "start_time", "end_time");
    sb_put(&sb, ", \"image\": ", 11);
    sb_json_str(&sb, image);
    sb_printf(&sb, ", \"virtual_size\": %" PRId64 ", ", size);
    put_images(&sb, a);
    sb_put(&sb, ", \"digests\": {", 14);
    for (int i = 0; i < n; i++)
        sb_printf(&sb, "%s\"%s\": \"%s\"", i ? ", " : "", algo[i], hex[i]);
    sb_printf(&sb, "}, \"exit_status\": %d}\n", rc);
    return audit_write(a, &sb);
}

void audit_close(Audit *a)
{
    if (a->fd > 0)
        close(a->fd);
    a->fd = -1;
}
