/* SPDX-License-Identifier: MIT */
/*
 * unwatch.c - the unmount watcher: a small process that removes the daemon's mount if the daemon dies
 * without unmounting (kill -9, a crash), so no dead (ENOTCONN) mount is ever left behind.  It is used for
 * every mount, by root and by anyone else: libfuse's auto_unmount helper (a root fusermount3) cannot do
 * this job for a user's mount without allow_other, because the kernel refuses root's own look at such a
 * mount with EACCES before it could see the dead connection, and the helper then leaves it alone.
 *
 * The watcher is forked before the mount is made, named (comm and command line "imgf-unmount", which
 * `pkill imgfuse` does not match) by the daemon around the fork, so it is never for a moment called
 * imgfuse, and the daemon moves it into a process group of its own at once; it ignores every signal but
 * SIGKILL.  Right after mounting, the daemon sends it the mount's identity: statx's STATX_MNT_ID_UNIQUE
 * of the mount point (never reused while the system runs; kernels before 6.8 give the older, reusable
 * STATX_MNT_ID instead).  The watcher then blocks on the pipe whose other end only the daemon holds.
 * When the daemon is gone it detaches the mount only if the topmost mount at the mount point still has
 * that identity and (where listmount(2) exists) nothing is mounted below it, through
 * /proc/self/fd of a descriptor it checked, so a new mount made at the same path is never touched.  Should
 * the daemon die between mount(2) and that message, the watcher detaches a mount on top of what was at
 * the path before if its connection is dead (ENOTCONN).
 * Holding the mount open meanwhile is not an option: `fusermount3 -u` would fail with EBUSY.
 * Without the right to umount2 (a user's mount) it runs `fusermount3 -u -z`.  The child runs only
 * async-signal-safe calls (the daemon may have threads when it forks).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs_int.h"
#include "util.h"

#define WATCHER_NAME "imgf-unmount"

#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x1000U
#endif
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x4000U /* Linux 6.8 */
#endif
#ifndef SYS_listmount
#if defined(__x86_64__) || defined(__aarch64__) || defined(__i386__) || defined(__riscv) || defined(__arm__)
#define SYS_listmount 458 /* Linux 6.8; the same number on these architectures */
#endif
#endif

/* The first, fixed-size version of listmount's request. */
struct watch_mnt_id_req {
    uint32_t size, spare;
    uint64_t mnt_id, param;
};

/* statx of path without asking the FUSE daemon anything (a mask of mount ids only, don't-sync). */
static int statx_nosync(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx)
{
    return (int)syscall(SYS_statx, dirfd, path, flags | AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT, mask, stx);
}

bool fs_mount_identity(const char *path, MountIdent *id, char *devno, size_t len)
{
    struct statx stx;
    memset(&stx, 0, sizeof stx);
    if (statx_nosync(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_MNT_ID_UNIQUE, &stx) != 0)
        return false;
    id->unique = (stx.stx_mask & STATX_MNT_ID_UNIQUE) != 0;
    if (!id->unique && (statx_nosync(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_MNT_ID, &stx) != 0 ||
                        !(stx.stx_mask & STATX_MNT_ID)))
        return false;
    id->id = stx.stx_mnt_id;
    snprintf(devno, len, "%u:%u", stx.stx_dev_major, stx.stx_dev_minor);
    return true;
}

/* Whether something is mounted below mount id (a unique id); false where listmount(2) is missing. */
static bool has_submounts(uint64_t id)
{
#ifdef SYS_listmount
    struct watch_mnt_id_req req = { .size = sizeof req, .mnt_id = id };
    uint64_t child;
    return syscall(SYS_listmount, &req, &child, 1UL, 0U) > 0;
#else
    (void)id;
    return false;
#endif
}

/* An O_PATH descriptor of the topmost mount at path if that is still the daemon's mount, else -1. */
static int open_if_ours(const char *path, const MountIdent *id)
{
    int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    unsigned mask = id->unique ? STATX_MNT_ID_UNIQUE : STATX_MNT_ID;
    struct statx stx;
    memset(&stx, 0, sizeof stx);
    if (statx_nosync(fd, "", AT_EMPTY_PATH, mask, &stx) != 0 || !(stx.stx_mask & mask) ||
        stx.stx_mnt_id != id->id || (id->unique && has_submounts(id->id)) ||
        !(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT & stx.stx_attributes)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads exactly len bytes; false at end-of-file or an error first. */
static bool read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

/* Detaches the mount whose root fd is (an O_PATH descriptor, closed here); without the right to, runs
 * fusermount3 -u -z on path. */
static void detach_fd(int fd, const char *path)
{
    /* the magic link names exactly the mount checked, whatever has happened at path since (built by
     * hand: snprintf is not async-signal-safe) */
    char self[32] = "/proc/self/fd/", digits[12];
    int nd = 0;
    for (unsigned v = (unsigned)fd; nd == 0 || v; v /= 10)
        digits[nd++] = (char)('0' + v % 10);
    size_t at = strlen(self);
    while (nd)
        self[at++] = digits[--nd];
    self[at] = '\0';
    int r = umount2(self, MNT_DETACH);
    if (r != 0 && errno == ENOENT) /* no /proc */
        r = umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW);
    int e = errno;
    close(fd);
    if (r == 0 || e != EPERM)
        return;
    static char *const env[] = { NULL };
    execle("/usr/bin/fusermount3", "fusermount3", "-u", "-z", "--", path, (char *)NULL, env);
    execle("/bin/fusermount3", "fusermount3", "-u", "-z", "--", path, (char *)NULL, env);
}

static void detach(const char *path, const MountIdent *id)
{
    int fd = open_if_ours(path, id);
    if (fd >= 0)
        detach_fd(fd, path);
}

/* Detaches the topmost mount at path if it is not the one that was there before the daemon mounted
 * (below) and its FUSE connection is gone (a forced getattr fails with ENOTCONN at once). */
static void detach_dead(const char *path, const MountIdent *below)
{
    int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    unsigned mask = below->unique ? STATX_MNT_ID_UNIQUE : STATX_MNT_ID;
    struct statx stx;
    memset(&stx, 0, sizeof stx);
    if (statx_nosync(fd, "", AT_EMPTY_PATH, mask, &stx) == 0 && (stx.stx_mask & mask) && stx.stx_mnt_id != below->id &&
        syscall(SYS_statx, fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &stx) != 0 &&
        errno == ENOTCONN) {
        detach_fd(fd, path);
        return;
    }
    close(fd);
}

static void watcher_main(int fd, const char *path, const MountIdent *below, char *title, size_t title_len)
{
    setpgid(0, 0); /* the parent does the same at once: whoever runs first */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP && s != SIGCHLD)
            sigaction(s, &ign, NULL);
    if (title && title_len > sizeof WATCHER_NAME) {
        memset(title, 0, title_len);
        memcpy(title, WATCHER_NAME, sizeof WATCHER_NAME);
    }
    if (chdir("/") != 0) {
        /* keep going: the working directory only matters for unmounting what it is on */
    }
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
    }
    MountIdent id;
    if (!read_full(fd, &id, sizeof id)) {
        /* The daemon died before it could say which mount is its own, perhaps between mount(2) and
         * that message: a mount it made is on top of what was there before, and dead. */
        if (below->id)
            detach_dead(path, below);
        _exit(0);
    }
    char c;
    while (read(fd, &c, 1) < 0 && errno == EINTR)
        ;
    /* The daemon is gone. A mount it left behind answers nothing but errors: detach it. */
    detach(path, &id);
    _exit(0);
}

/* The calling thread's name, set with the raw system call: AddressSanitizer's prctl wrapper takes a lock
 * of its thread registry, which another thread of the daemon may hold at fork (the child then hung). */
static void set_name(const char *name)
{
    syscall(SYS_prctl, PR_SET_NAME, name, 0L, 0L, 0L);
}

void fs_start_unmount_watcher(Fs *fs, const char *abs_mountpoint)
{
    int p[2];
    fs->watcher_pid = -1;
    fs->watcher_fd = -1;
    if (!abs_mountpoint || pipe2(p, O_CLOEXEC) != 0)
        return;
    MountIdent below = { 0 };
    char devno[64];
    if (!fs_mount_identity(abs_mountpoint, &below, devno, sizeof devno))
        below.id = 0;
    char name[16] = "";
    syscall(SYS_prctl, PR_GET_NAME, name, 0L, 0L, 0L);
    set_name(WATCHER_NAME); /* the child is born with its own name */
    pid_t pid = fork();
    if (pid == 0) {
        close(p[1]);
        /* keep only the pipe's read end: no image or /dev/fuse descriptor may outlive the daemon here */
        int fd = p[0];
        if (fd != 3 && dup2(fd, 3) == 3)
            fd = 3;
        close_range((unsigned)fd + 1, ~0U, 0);
        watcher_main(fd, abs_mountpoint, &below, fs->cfg.proc_title, fs->cfg.proc_title_len);
    }
    set_name(name);
    if (pid > 0)
        setpgid(pid, pid); /* out of the daemon's process group before anything is mounted */
    close(p[0]);
    if (pid < 0) {
        close(p[1]);
        log_msg("%s: cannot start the unmount watcher: %s", abs_mountpoint, strerror(errno));
        return;
    }
    /* p[1] stays open (close-on-exec) for the daemon's lifetime: its closing is the watcher's signal */
    fs->watcher_pid = pid;
    fs->watcher_fd = p[1];
}

void fs_arm_unmount_watcher(Fs *fs, const MountIdent *id)
{
    if (fs->watcher_fd < 0)
        return;
    if (write(fs->watcher_fd, id, sizeof *id) != (ssize_t)sizeof *id)
        log_msg("unmount watcher: cannot tell it the mount: %s", strerror(errno));
}

void fs_stop_unmount_watcher(Fs *fs)
{
    if (fs->watcher_pid <= 0)
        return;
    close(fs->watcher_fd); /* unmounted already: the watcher finds the mount gone and exits */
    while (waitpid(fs->watcher_pid, NULL, 0) < 0 && errno == EINTR)
        ;
    fs->watcher_pid = -1;
    fs->watcher_fd = -1;
}
