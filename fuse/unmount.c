/* SPDX-License-Identifier: MIT */
/*
 * unmount.c - `imgfuse unmount [--timeout SECONDS] MOUNTPOINT`: unmounts an imgfuse mount as
 * `fusermount3 -u` would (umount2 as root, fusermount3 for anyone else) and returns only when that
 * mount's daemon has exited, that is when it has flushed, closed the image and released its locks, so a
 * `qemu-img check` right after finds the image free.  The daemon is found by asking it: it answers
 * IMGFUSE_IOC_PID on the mount's root with its pid (nothing on disk can be stale), and a pidfd taken
 * before the unmount and checked by asking again is what the command waits on.  A busy mount is named
 * with the processes that hold it.  It knows nothing of images; the mount is recognised by its file
 * system type in /proc/self/mountinfo (fuse.imgfuse).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "imgfuse.h"
#include "util.h"

#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x1000U
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* Linux 5.3, the same number on every architecture */
#endif

#define MAX_USERS_NAMED 8

/* The mount at path, asking its daemon nothing: mount id (as mountinfo shows it), device, whether path
 * is a mount's root. */
typedef struct MountAt {
    uint64_t id;
    unsigned dev_major, dev_minor;
    bool root;
} MountAt;

static int mount_at(const char *path, MountAt *m)
{
    struct statx stx;
    memset(&stx, 0, sizeof stx);
    if (syscall(SYS_statx, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT,
                STATX_MNT_ID, &stx) != 0)
        return -errno;
    m->id = (stx.stx_mask & STATX_MNT_ID) ? stx.stx_mnt_id : 0;
    m->dev_major = stx.stx_dev_major;
    m->dev_minor = stx.stx_dev_minor;
    m->root = (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
    return 0;
}

typedef struct TypeOf {
    uint64_t id;
    char *type;
} TypeOf;

static bool type_of_id(const MountInfoLine *m, void *arg)
{
    TypeOf *t = arg;
    if (m->id != t->id)
        return false;
    t->type = strdup(m->fstype);
    return true;
}

/* The file system type of mount id (from /proc/self/mountinfo), malloc'd; NULL if not found. */
static char *mount_type(uint64_t id)
{
    TypeOf t = { .id = id };
    mountinfo_find(type_of_id, &t);
    return t.type;
}

/* Asks the daemon for its pid through the mount's root; -errno on failure. */
static int64_t daemon_pid(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    uint64_t pid = 0;
    int r = ioctl(fd, IMGFUSE_IOC_PID, &pid);
    int e = errno;
    close(fd);
    if (r != 0)
        return -e;
    return pid > 0 && pid <= INT32_MAX ? (int64_t)pid : -EPROTO;
}

/* Whether /proc/PID/NAME (a cwd, root or fd link) is a file on device major:minor. */
static bool on_mount(const char *proc_path, const MountAt *m)
{
    struct statx stx;
    memset(&stx, 0, sizeof stx);
    return syscall(SYS_statx, AT_FDCWD, proc_path, AT_STATX_DONT_SYNC, 0U, &stx) == 0 &&
           stx.stx_dev_major == m->dev_major && stx.stx_dev_minor == m->dev_minor;
}

static bool pid_uses(const char *pid, const MountAt *m)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "/proc/%s/cwd", pid);
    if (on_mount(path, m))
        return true;
    snprintf(path, sizeof path, "/proc/%s/root", pid);
    if (on_mount(path, m))
        return true;
    snprintf(path, sizeof path, "/proc/%s/fd", pid);
    DIR *d = opendir(path);
    if (!d)
        return false;
    bool used = false;
    struct dirent *de;
    while (!used && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%s/fd/%s", pid, de->d_name);
        used = on_mount(path, m);
    }
    closedir(d);
    return used;
}

/* "PID (comm), ..." of the processes (other than the daemon) with a file, directory or root on the
 * mount; empty if none is found (a loop device or a mount below it holds it instead). */
static void busy_users(const MountAt *m, pid_t daemon, StrBuf *sb)
{
    DIR *d = opendir("/proc");
    if (!d)
        return;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0 || pid == daemon || pid == getpid() || !pid_uses(de->d_name, m))
            continue;
        if (n++ == MAX_USERS_NAMED) {
            sb_printf(sb, ", ...");
            break;
        }
        char path[64], comm[64] = "?";
        snprintf(path, sizeof path, "/proc/%ld/comm", pid);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(comm, sizeof comm, f))
                comm[strcspn(comm, "\n")] = '\0';
            fclose(f);
        }
        sb_printf(sb, "%s%ld (%s)", n > 1 ? ", " : "", pid, comm);
    }
    closedir(d);
}

/* Unmounts path (not lazily): umount2 as root, fusermount3 -u for anyone else. 0 or -errno (-EBUSY when
 * the mount is in use). */
static int do_unmount(const char *path, const MountAt *m)
{
    if (umount2(path, UMOUNT_NOFOLLOW) == 0)
        return 0;
    if (errno != EPERM)
        return -errno;
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
        }
        execlp("fusermount3", "fusermount3", "-u", "-q", "--", path, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        return -ENOENT;
    MountAt now;
    return mount_at(path, &now) == 0 && now.root && now.id == m->id ? -EBUSY : 0;
}

/* Detaches a mount whose daemon is gone (lazily: it answers nothing but ENOTCONN). */
static int detach_dead(const char *path)
{
    if (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0)
        return 0;
    if (errno != EPERM)
        return -errno;
    pid_t pid = fork();
    if (pid == 0) {
        execlp("fusermount3", "fusermount3", "-u", "-z", "-q", "--", path, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EPERM;
}

/* Waits up to *left_ms (< 0: forever) for fd to become readable; counts the time spent off *left_ms.
 * false on timeout. */
static bool wait_readable(int fd, int *left_ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r;
    while ((r = poll(&p, 1, *left_ms)) < 0 && errno == EINTR)
        ;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (*left_ms >= 0) {
        long spent = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        *left_ms = spent >= *left_ms ? 0 : *left_ms - (int)spent;
    }
    return r > 0;
}

/* daemon_pid within *left_ms: a daemon that never answers leaves its caller in a FUSE request only
 * SIGKILL ends (even a pending SIGTERM waits behind a caught signal there), so a child asks and is
 * killed on timeout. -ETIMEDOUT then. */
static int64_t daemon_pid_within(const char *path, int *left_ms)
{
    if (*left_ms < 0)
        return daemon_pid(path);
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -errno;
    pid_t child = fork();
    if (child < 0) {
        close(p[0]);
        close(p[1]);
        return -errno;
    }
    if (child == 0) {
        int64_t v = daemon_pid(path);
        _exit(write(p[1], &v, sizeof v) == (ssize_t)sizeof v ? 0 : 1);
    }
    close(p[1]);
    int64_t v = -ETIMEDOUT;
    if (!wait_readable(p[0], left_ms) || read(p[0], &v, sizeof v) != (ssize_t)sizeof v)
        v = -ETIMEDOUT;
    close(p[0]);
    kill(child, SIGKILL);
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
        ;
    return v;
}

static int unmount_one(const char *given, int timeout_s)
{
    char *path = realpath(given, NULL);
    if (!path && errno == ENOTCONN && given[0] == '/')
        path = strdup(given); /* a dead mount: its root cannot be looked at */
    if (!path) {
        errmsg(given, "%s", strerror(errno));
        return EXIT_USAGE;
    }
    int rc = EXIT_RUNTIME;
    MountAt m;
    int r = mount_at(path, &m);
    char *type = NULL;
    if (r < 0) {
        errmsg(given, "%s", strerror(-r));
        rc = EXIT_USAGE;
        goto out;
    }
    if (!m.root) {
        errmsg(given, "not mounted");
        rc = EXIT_USAGE;
        goto out;
    }
    type = mount_type(m.id);
    if (!type || strcmp(type, "fuse.imgfuse") != 0) {
        errmsg(given, "not an imgfuse mount (%s)", type ? type : "unknown type");
        rc = EXIT_USAGE;
        goto out;
    }
    int left_ms = timeout_s > 0 ? timeout_s * 1000 : -1;
    int64_t pid = daemon_pid_within(path, &left_ms);
    if (pid == -ENOTCONN || pid == -ECONNABORTED) {
        if ((r = detach_dead(path)) < 0)
            errmsg(given, "its daemon is gone and the mount cannot be removed: %s", strerror(-r));
        else
            rc = EXIT_OK;
        goto out;
    }
    if (pid == -ETIMEDOUT) {
        errmsg(given, "timeout: its daemon has not answered after %d s", timeout_s);
        goto out;
    }
    if (pid < 0) {
        errmsg(given, "cannot ask its daemon for its pid: %s", pid == -ENOTTY ? "not supported (an older imgfuse?)"
                                                                              : strerror((int)-pid));
        goto out;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0U);
    if (pidfd < 0 || daemon_pid_within(path, &left_ms) != pid) {
        errmsg(given, "cannot hold on to its daemon (pid %lld): %s", (long long)pid,
               pidfd < 0 ? strerror(errno) : "it changed");
        if (pidfd >= 0)
            close(pidfd);
        goto out;
    }
    fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    r = do_unmount(path, &m);
    if (r == -EBUSY) {
        StrBuf who;
        sb_init(&who);
        busy_users(&m, (pid_t)pid, &who);
        errmsg(given, "busy: %s%s", who.len ? "in use by " : "in use (no process holds it open: a loop device "
               "or a mount inside it?)", who.len ? who.s : "");
        sb_free(&who);
    } else if (r < 0) {
        errmsg(given, "cannot unmount: %s", strerror(-r));
    } else if (!wait_readable(pidfd, &left_ms)) {
        errmsg(given, "unmounted, but its daemon (pid %lld) has not exited after %d s", (long long)pid, timeout_s);
    } else {
        rc = EXIT_OK;
    }
    close(pidfd);
out:
    free(type);
    free(path);
    return rc;
}

int cmd_unmount(int argc, char **argv)
{
    static const struct option opts[] = {
        { "timeout", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int timeout_s = 0, c;
    opterr = 0;
    optind = 1;
    while ((c = cli_getopt(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 86400) {
                errmsg("--timeout", "invalid value '%s' (expected 1 to 86400 seconds)", optarg);
                return EXIT_USAGE;
            }
            timeout_s = (int)v;
            break;
        }
        case 'h':
            return cli_print_help("unmount");
        default:
            return cli_option_error(argv, c, "unmount", opts);
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "imgfuse: usage: imgfuse unmount [--timeout SECONDS] MOUNTPOINT\n");
        return EXIT_USAGE;
    }
    return unmount_one(argv[optind], timeout_s);
}
