/* SPDX-License-Identifier: MIT */
/*
 * live.c - live `commit` and `stream` on an image mounted --rw.  The daemon listens on a per-image control
 * socket (abstract unix socket "imgfuse-live/UID/DEV:INO" of the image file; only a peer of the same uid is
 * served, and the command only talks to a listener of its own uid: SO_PEERCRED both ways).  The command
 * sends one request line ("stream 0 BASE", "commit KEEP BASE"; BASE, the rest of the line, a real path or
 * "-"), then reads "progress DONE TOTAL" lines and one final line ("ok", "cancelled", "error MESSAGE"); it
 * sends "cancel" on SIGINT/SIGTERM, and a vanished command cancels the job too.  The daemon runs the job on its open chain
 * chunk by chunk with lib/job.c (each chunk serialised against guest writes), one job at a time, and shows
 * it in stats.json.  Stream: chunks copied up, the new backing file recorded, the chain re-linked.  Commit:
 * a second, writable node of the base file; the upper layers' data copied into it while every guest write
 * that lands where the copy has passed is mirrored into it; at the end (unless kept) the chain is re-linked
 * to that node and the image emptied.  Knows no image format.
 */
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "imgfuse.h"
#include "util.h"

#define LIVE_CHUNK (1024 * 1024)
#define LIVE_LINE 4096

/* The daemon's one live-job service (a daemon serves one image). */
static struct {
    BlockNode *bs;
    int lfd;
    pthread_t thread;
    bool started;
    volatile int stop;        /* unmount: the running job is cancelled, no new one starts */
    pthread_mutex_t lock;     /* guards the fields below, for stats.json */
    char type[8];             /* "" when no job has run */
    int64_t offset, total;
    const char *state;        /* "running", "completed", "cancelled", "failed" */
} live = { .lfd = -1, .lock = PTHREAD_MUTEX_INITIALIZER };

/* The socket address of image (its st_dev:st_ino, for uid); false if image cannot be stat'ed. */
static bool live_addr(const char *image, struct sockaddr_un *sa, socklen_t *len)
{
    struct stat st;
    if (stat(image, &st) != 0)
        return false;
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    int n = snprintf(sa->sun_path + 1, sizeof sa->sun_path - 1, "imgfuse-live/%u/%lx:%lx", (unsigned)getuid(),
                     (unsigned long)st.st_dev, (unsigned long)st.st_ino);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    return true;
}

static bool peer_is_me(int fd)
{
    struct ucred cr;
    socklen_t l = sizeof cr;
    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) == 0 && cr.uid == getuid();
}

static void send_line(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_line(int fd, const char *fmt, ...)
{
    char buf[LIVE_LINE];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    n = MIN(n, (int)sizeof buf - 2);
    buf[n++] = '\n';
    (void)!send(fd, buf, (size_t)n, MSG_NOSIGNAL);
}

/* Reads one line (without '\n') into buf within timeout_ms: 1 a line, 0 none yet, -1 EOF or error. */
static int recv_line(int fd, char *buf, size_t len, int timeout_ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    size_t n = 0;
    while (n + 1 < len) {
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        if (r <= 0)
            return -1;
        if (c == '\n')
            break;
        buf[n++] = c;
    }
    buf[n] = '\0';
    return 1;
}

static void job_set(const char *type, int64_t offset, int64_t total, const char *state)
{
    pthread_mutex_lock(&live.lock);
    if (type)
        snprintf(live.type, sizeof live.type, "%s", type);
    live.offset = offset;
    live.total = total;
    live.state = state;
    pthread_mutex_unlock(&live.lock);
}

void live_render_job(StrBuf *sb)
{
    pthread_mutex_lock(&live.lock);
    if (live.type[0])
        sb_printf(sb, ",\n  \"job\": {\"type\": \"%s\", \"offset\": %" PRId64 ", \"total\": %" PRId64
                  ", \"state\": \"%s\"}", live.type, live.offset, live.total, live.state);
    pthread_mutex_unlock(&live.lock);
}

/* ---------------------------------------------------------------- the daemon's side */

/* The depth of the layer whose file is the real path base ("-": below the chain), or -1. */
static int live_depth_of(const char *base)
{
    int d = 0;
    char have[PATH_MAX];
    for (BlockNode *n = live.bs; n; n = n->backing, d++)
        if (strcmp(base, "-") != 0 && realpath(n->filename, have) && strcmp(have, base) == 0)
            return d;
    return strcmp(base, "-") == 0 ? d : -1;
}

static BlockNode *layer_at(int depth)
{
    BlockNode *n = live.bs;
    for (int d = 0; n && d < depth; d++)
        n = n->backing;
    return n;
}

/* Has the client asked to cancel (or gone away)? */
static bool cancelled(int fd)
{
    char line[64];
    int r = recv_line(fd, line, sizeof line, 0);
    return live.stop || r < 0 || (r > 0 && strcmp(line, "cancel") == 0);
}

typedef int (*ChunkFn)(int64_t pos, int64_t n, int depth, BlockNode *target, void *buf);

static int stream_one(int64_t pos, int64_t n, int depth, BlockNode *target, void *buf)
{
    (void)target;
    return bdrv_job_stream_chunk(live.bs, pos, n, depth, buf);
}

static int commit_one(int64_t pos, int64_t n, int depth, BlockNode *target, void *buf)
{
    return bdrv_job_commit_chunk(live.bs, target, pos, n, depth, buf);
}

/* Runs fn over the disk chunk by chunk, reporting progress; 0, -ECANCELED or -errno (*fail: where). */
static int live_copy(int fd, const char *type, ChunkFn fn, int depth, BlockNode *target, int64_t *fail)
{
    int64_t total = bdrv_getlength(live.bs);
    void *buf = aligned_alloc_zero(LIVE_CHUNK);
    if (!buf)
        return -ENOMEM;
    int r = 0;
    uint64_t last = 0;
    for (int64_t pos = 0; r == 0 && pos < total; pos += LIVE_CHUNK) {
        if (cancelled(fd)) {
            r = -ECANCELED;
            break;
        }
        r = fn(pos, MIN((int64_t)LIVE_CHUNK, total - pos), depth, target, buf);
        *fail = pos;
        job_set(type, MIN(pos + LIVE_CHUNK, total), total, "running");
        uint64_t now = now_ns();
        if (now - last > 100000000ull || pos + LIVE_CHUNK >= total) {
            send_line(fd, "progress %" PRId64 " %" PRId64, MIN(pos + LIVE_CHUNK, total), total);
            last = now;
        }
    }
    free(buf);
    return r;
}

static int live_stream(int fd, int depth, int64_t *fail, char *msg, size_t len)
{
    BlockNode *bs = live.bs, *base = layer_at(depth);
    if (!bs->drv->change_backing_file) {
        snprintf(msg, len, "format '%s' cannot record a new backing file", bs->drv->name);
        return -ENOTSUP;
    }
    int r = live_copy(fd, "stream", stream_one, depth, NULL, fail);
    if (r == 0)
        r = bdrv_flush(bs);
    if (r == 0) {
        /* the name the layer above BASE records for it, so that it resolves as before */
        BlockNode *above = layer_at(depth - 1);
        r = bdrv_change_backing_file(bs, base ? above->backing_name : NULL, base ? base->drv->name : NULL);
    }
    if (r == 0)
        r = bdrv_relink_backing(bs, base);
    return r;
}

/* A second node of the base file, writable (the chain's own is read-only), with the chain's options. */
static BlockNode *open_target(BlockNode *base, char *msg, size_t len)
{
    BlockOpenOpts o = *live.bs->opts;
    o.format = base->drv->name;
    o.read_only = false;
    o.locks_held = true; /* this process's chain holds the file's locks */
    o.backing = o.backing_format = NULL;
    o.no_backing = false;
    o.copy_on_read = false;
    o.detect_zeroes = DETECT_ZEROES_OFF;
    o.iops_limit = o.iops_rd_limit = o.iops_wr_limit = o.bps_limit = o.bps_rd_limit = o.bps_wr_limit = 0;
    o.on_read_error = READ_ERROR_REPORT;
    o.n_driver_opts = 0;
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *t = bdrv_open(base->filename, &o, &err);
    if (!t)
        snprintf(msg, len, "%s", err.msg[0] ? err.msg : "cannot open the base writable");
    return t;
}

static int live_commit(int fd, int depth, bool keep, int64_t *fail, char *msg, size_t len)
{
    BlockNode *bs = live.bs, *base = layer_at(depth);
    if (!keep && !bs->drv->make_empty) {
        snprintf(msg, len, "format '%s' cannot be emptied after the commit: give -d to leave it as it is",
                 bs->drv->name);
        return -ENOTSUP;
    }
    BlockNode *target = open_target(base, msg, len);
    if (!target)
        return -EIO;
    if (bdrv_getlength(target) < bdrv_getlength(bs)) {
        snprintf(msg, len, "%s is smaller than the image: commit it unmounted (the base grows then)", base->filename);
        bdrv_close(target);
        return -ENOSPC;
    }
    bdrv_job_mirror_start(bs, target);
    int r = live_copy(fd, "commit", commit_one, depth, target, fail);
    if (r == 0) {
        bdrv_job_mirror_all(bs);
        r = bdrv_flush(target);
    }
    if (r == 0 && !keep) {
        /* the base holds everything the guest sees: the image reads through to it once emptied */
        r = bdrv_relink_backing(bs, target);
        if (r == 0)
            r = bdrv_make_empty(bs);
    }
    bdrv_job_mirror_stop(bs);
    int f = bdrv_flush(target);
    bdrv_close(target);
    return r < 0 ? r : f;
}

/* One client: its request line, the job, the final line. */
static void live_serve(int fd)
{
    char line[LIVE_LINE], type[16] = "";
    int keep = 0, at = 0;
    if (recv_line(fd, line, sizeof line, 5000) <= 0 || sscanf(line, "%15s %d %n", type, &keep, &at) < 2 || !at ||
        (strcmp(type, "stream") != 0 && strcmp(type, "commit") != 0)) {
        send_line(fd, "error bad request");
        return;
    }
    const char *base = line + at;
    bool stream = type[0] == 's';
    int chain = bdrv_chain_length(live.bs);
    /* no -b: stream flattens the whole chain, commit goes into the image's own backing file */
    int depth = !stream && strcmp(base, "-") == 0 ? MIN(1, chain - 1) : live_depth_of(base);
    char msg[LIVE_LINE] = "";
    if (depth < 1 || (!stream && depth >= chain)) {
        send_line(fd, "error %s", chain < 2 ? "has no backing file to commit into"
                                            : "BASE is not a backing file of the image");
        return;
    }
    if (!stream && depth > 1)
        keep = 1; /* -b: the layers between are left behind, as offline */
    log_msg("%s: live %s started", live.bs->filename, type);
    job_set(type, 0, bdrv_getlength(live.bs), "running");
    int64_t fail = 0;
    int r = stream ? live_stream(fd, depth, &fail, msg, sizeof msg) : live_commit(fd, depth, keep, &fail, msg, sizeof msg);
    pthread_mutex_lock(&live.lock);
    live.state = r == 0 ? "completed" : r == -ECANCELED ? "cancelled" : "failed";
    pthread_mutex_unlock(&live.lock);
    log_msg("%s: live %s %s", live.bs->filename, type, live.state);
    if (r == 0)
        send_line(fd, "ok");
    else if (r == -ECANCELED)
        send_line(fd, "cancelled");
    else if (msg[0])
        send_line(fd, "error %s", msg);
    else
        send_line(fd, "error %s failed at offset %" PRId64 ": %s", type, fail, strerror(-r));
}

static void *live_thread(void *arg)
{
    (void)arg;
    while (!live.stop) {
        int fd = accept4(live.lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            break;
        }
        if (peer_is_me(fd))
            live_serve(fd);
        close(fd);
    }
    return NULL;
}

int live_start(BlockNode *bs, const char *image)
{
    struct sockaddr_un sa;
    socklen_t len;
    if (!live_addr(image, &sa, &len))
        return -errno;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sa, len) != 0 || listen(fd, 4) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    live.bs = bs;
    live.lfd = fd;
    bdrv_track_writes(bs);
    if (pthread_create(&live.thread, NULL, live_thread, NULL) != 0) {
        close(fd);
        live.lfd = -1;
        return -EAGAIN;
    }
    live.started = true;
    return 0;
}

void live_stop(void)
{
    if (!live.started)
        return;
    live.stop = 1;
    shutdown(live.lfd, SHUT_RDWR);
    pthread_join(live.thread, NULL);
    close(live.lfd);
    live.started = false;
}

/* ---------------------------------------------------------------- the command's side */

static volatile sig_atomic_t live_signal;

static void live_on_signal(int sig)
{
    live_signal = sig;
}

/* BASE as a real path (as given, or relative to the image's directory), "-" for none; false if not found. */
static bool base_path(const char *image, const char *base, char *out)
{
    if (!base) {
        strcpy(out, "-");
        return true;
    }
    if (realpath(base, out))
        return true;
    char dir[PATH_MAX], joined[PATH_MAX * 2];
    snprintf(dir, sizeof dir, "%s", image);
    snprintf(joined, sizeof joined, "%s/%s", dirname(dir), base);
    return base[0] != '/' && realpath(joined, out);
}

int live_client(const char *cmd, const char *image, const char *base, bool keep, bool progress, bool quiet)
{
    struct sockaddr_un sa;
    socklen_t len;
    if (!live_addr(image, &sa, &len))
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, len) != 0 || !peer_is_me(fd)) {
        close(fd);
        return -1; /* not mounted --rw by this user: the offline command runs (and the locks decide) */
    }
    char bp[PATH_MAX];
    if (!base_path(image, base, bp)) {
        close(fd);
        errmsg(base, "is not a backing file of %s", image);
        return EXIT_USAGE;
    }
    struct sigaction sa_sig = { .sa_handler = live_on_signal }, old_int, old_term;
    sigaction(SIGINT, &sa_sig, &old_int);
    sigaction(SIGTERM, &sa_sig, &old_term);
    send_line(fd, "%s %d %s", cmd, keep ? 1 : 0, bp);
    Progress p = { .tty = isatty(STDERR_FILENO), .cmd = cmd };
    p.on = !quiet && (progress || p.tty); /* a bar on a terminal, lines with -p */
    char line[LIVE_LINE];
    int rc = EXIT_RUNTIME;
    bool asked = false;
    for (;;) {
        if (live_signal && !asked) {
            send_line(fd, "cancel");
            asked = true;
        }
        int r = recv_line(fd, line, sizeof line, 200);
        if (r < 0) {
            errmsg(image, "live %s: the mount's daemon went away", cmd);
            break;
        }
        if (r == 0)
            continue;
        int64_t done, total;
        if (sscanf(line, "progress %" SCNd64 " %" SCNd64, &done, &total) == 2) {
            p.total = total;
            progress_show(&p, done);
            continue;
        }
        if (p.on && p.tty)
            fprintf(stderr, "\r\033[K");
        if (strcmp(line, "ok") == 0) {
            rc = EXIT_OK;
            if (!quiet && strcmp(cmd, "commit") == 0)
                printf("Image committed.\n");
        } else if (strcmp(line, "cancelled") == 0) {
            errmsg(image, "live %s cancelled: the chain is as it was except for data already copied, which reads "
                   "the same", cmd);
        } else {
            errmsg(image, "live %s: %s", cmd, strncmp(line, "error ", 6) == 0 ? line + 6 : line);
        }
        break;
    }
    close(fd);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}
