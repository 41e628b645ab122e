/* SPDX-License-Identifier: MIT */
/*
 * mount.c - making and ending a mount, apart from what the mount serves (fs.c): the FUSE session's
 * set-up (libfuse's own chatter caught into one-line errors, the unmount watcher started before the
 * mount and armed right after, the readahead window raised, the request loop (loop.c), the unmount and
 * teardown), and the one reader of /proc/self/mountinfo that the command line (is MOUNTPOINT busy?) and
 * `imgfuse unmount` (is this an imgfuse mount?) share.  It knows no image format.
 */
#include "fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imgfuse.h"
#include "util.h"

/* ---------------------------------------------------------------- /proc/self/mountinfo */

/* Undoes the octal escapes of mountinfo (\040 for space etc.) in place. */
static void unescape_mountinfo(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 3;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
}

/* Splits one line "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER" in place;
 * false if it does not have that shape. */
static bool mountinfo_parse(char *line, MountInfoLine *m)
{
    char *end;
    m->id = strtoull(line, &end, 10);
    char *sep = strstr(line, " - ");
    if (end == line || !sep)
        return false;
    sep += 3;
    sep[strcspn(sep, " \n")] = '\0';
    m->fstype = sep;
    char *save = NULL, *field = strtok_r(line, " ", &save);
    for (int i = 1; field && i < 5; i++)
        field = strtok_r(NULL, " ", &save);
    if (!field)
        return false;
    unescape_mountinfo(field);
    m->mount_point = field;
    return true;
}

bool mountinfo_find(bool (*match)(const MountInfoLine *m, void *arg), void *arg)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return false;
    char *line = NULL;
    size_t cap = 0;
    bool found = false;
    MountInfoLine m;
    while (!found && getline(&line, &cap, f) > 0)
        found = mountinfo_parse(line, &m) && match(&m, arg);
    free(line);
    fclose(f);
    return found;
}

/* ---------------------------------------------------------------- session */

/* Runs fn with stdout on /dev/null and (unless debugging) stderr in a temporary file, whose text is
 * returned as one line in out. Helpers fn starts (fusermount3, which stays to auto-unmount) must not keep
 * the caller's stdout or stderr open, or `$(imgfuse ...)` would never see end-of-file. */
static int run_quietly(int (*fn)(void *), void *arg, bool keep_stderr, char *out, size_t outlen)
{
    out[0] = '\0';
    fflush(stdout);
    fflush(stderr);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    int saved_out = null >= 0 ? fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3) : -1;
    if (saved_out >= 0)
        dup2(null, STDOUT_FILENO);
    FILE *tmp = keep_stderr ? NULL : tmpfile();
    if (tmp)
        fcntl(fileno(tmp), F_SETFD, FD_CLOEXEC);
    int saved_err = tmp ? fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3) : -1;
    if (saved_err >= 0)
        dup2(fileno(tmp), STDERR_FILENO);
    int r = fn(arg);
    fflush(stdout);
    fflush(stderr);
    if (saved_out >= 0) {
        dup2(saved_out, STDOUT_FILENO);
        close(saved_out);
    }
    if (null >= 0)
        close(null);
    if (saved_err >= 0) {
        dup2(saved_err, STDERR_FILENO);
        close(saved_err);
        rewind(tmp);
        size_t n = fread(out, 1, outlen - 1, tmp);
        out[n] = '\0';
        for (char *p = out; *p; p++)
            if (*p == '\n')
                *p = (p[1] ? ' ' : '\0');
    }
    if (tmp)
        fclose(tmp);
    return r;
}

/* The kernel's readahead window of the mount (its bdi). The default 128 KiB makes sequential reads
 * arrive as 128 KiB requests; 1 MiB lets them arrive as requests of fs_max_read bytes. */
#define READ_AHEAD_KB 1024

/* Best effort: only root may write the window; anyone else keeps the kernel's default. */
static void raise_readahead(const char *abs_mountpoint, const char *devno)
{
    char path[128];
    snprintf(path, sizeof path, "/sys/class/bdi/%s/read_ahead_kb", devno);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char val[32];
    int n = snprintf(val, sizeof val, "%d\n", READ_AHEAD_KB);
    if (write(fd, val, (size_t)n) != n)
        log_debug("%s: cannot set read_ahead_kb", abs_mountpoint);
    close(fd);
}

/* What follows the mount, off the path to the first reply: the mount's readahead window (writing it
 * took about 0.1 ms). The session loop answers INIT meanwhile; the kernel caps the window only when INIT
 * is answered, at the 1 MiB fs_op_init allows, so raising it before or after makes no difference. */
typedef struct PostMount {
    const char *abs_mountpoint;
    char devno[64];
} PostMount;

static void *post_mount(void *arg)
{
    PostMount *pm = arg;
    raise_readahead(pm->abs_mountpoint, pm->devno);
    return NULL;
}

typedef struct NewSession {
    struct fuse_args *args;
    Fs *fs;
    struct fuse_session *se;
    const char *mountpoint;
} NewSession;

static int do_session_new(void *arg)
{
    NewSession *ns = arg;
    ns->se = fuse_session_new(ns->args, &fs_ops, sizeof fs_ops, ns->fs);
    return ns->se ? 0 : -1;
}

static int do_session_mount(void *arg)
{
    NewSession *ns = arg;
    return fuse_session_mount(ns->se, ns->mountpoint);
}

int fs_run(const FsConfig *cfg, int fuse_argc, char **fuse_argv, const char *mountpoint, int max_threads,
           void (*ready)(void *), void *ready_arg)
{
    Fs fs;
    memset(&fs, 0, sizeof fs);
    fs.cfg = *cfg;
    fs.uid = getuid();
    fs.gid = getgid();
    clock_gettime(CLOCK_REALTIME, &fs.start);
    pthread_mutex_init(&fs.lock, NULL);
    pthread_mutex_init(&fs.snap_lock, NULL);
    pthread_mutex_init(&fs.buf_lock, NULL);
    if (fs_build_tree(&fs) < 0) {
        errmsg(mountpoint, "out of memory");
        fs_free(&fs);
        return EXIT_RUNTIME;
    }

    struct fuse_args args = FUSE_ARGS_INIT(fuse_argc, fuse_argv);
    NewSession ns = { .args = &args, .fs = &fs, .mountpoint = mountpoint };
    char why[512];
    int rc = EXIT_RUNTIME;
    int r = run_quietly(do_session_new, &ns, cfg->debug, why, sizeof why);
    if (r < 0) {
        errmsg(mountpoint, "bad FUSE options: %s", cfg->debug ? "see above" : (*why ? why : "rejected by libfuse"));
        rc = EXIT_USAGE;
        goto out_args;
    }
    if (fuse_set_signal_handlers(ns.se) != 0) {
        errmsg(mountpoint, "cannot install signal handlers");
        goto out_session;
    }
    char *abs_mountpoint = realpath(mountpoint, NULL);
    fs.watcher_pid = -1;
    fs.watcher_fd = -1;
    if (cfg->watch_unmount)
        fs_start_unmount_watcher(&fs, abs_mountpoint);
    r = run_quietly(do_session_mount, &ns, cfg->debug, why, sizeof why);
    if (r != 0) {
        errmsg(mountpoint, "cannot mount: %s", cfg->debug ? "see above" : (*why ? why : "fuse_session_mount failed"));
        fs_stop_unmount_watcher(&fs);
        free(abs_mountpoint);
        goto out_signals;
    }
    /* at once, in this thread: a kill -9 from now on must find the watcher told which mount is ours */
    PostMount pm = { .abs_mountpoint = abs_mountpoint };
    MountIdent ident;
    bool known = abs_mountpoint && fs_mount_identity(abs_mountpoint, &ident, pm.devno, sizeof pm.devno);
    if (known)
        fs_arm_unmount_watcher(&fs, &ident);
    pthread_t pm_thread;
    bool pm_threaded = known && pthread_create(&pm_thread, NULL, post_mount, &pm) == 0;
    if (known && !pm_threaded)
        post_mount(&pm);
    if (ready)
        ready(ready_arg);

    r = fs_loop(ns.se, (unsigned)max_threads);
    rc = r < 0 ? EXIT_RUNTIME : EXIT_OK;
    if (r < 0)
        log_msg("%s: session loop failed: %s", mountpoint, strerror(-r));
    if (pm_threaded)
        pthread_join(pm_thread, NULL);
    free(abs_mountpoint);
    fuse_session_unmount(ns.se);
    fs_stop_unmount_watcher(&fs);
out_signals:
    fuse_remove_signal_handlers(ns.se);
out_session:
    fuse_session_destroy(ns.se);
out_args:
    fuse_opt_free_args(&args);
    fs_free(&fs);
    return rc;
}
