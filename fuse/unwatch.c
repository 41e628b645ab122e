/*
 * unwatch.c - the unmount watcher of mounts made directly by root.  libfuse's auto_unmount option works
 * by mounting through the fusermount3 helper, which stays behind to remove the mount if the daemon
 * dies; starting that helper cost about a millisecond of every mount's time to first byte.  As root,
 * imgfuse mounts with mount(2) and forks this small watcher instead: it blocks on a pipe whose other end
 * only the daemon holds, and when the daemon is gone (exited or killed) it detaches the mount, but only
 * if the topmost mount at the mount point is still the daemon's (same mount ID and device number) with
 * nothing mounted on it.  Both numbers are reused by the kernel once a mount is gone, so a new mount
 * made at the same path in the moment between the daemon's death and the watcher's look could be
 * mistaken for it; the watcher looks at once and exits (tests wait for it, tests/helpers.bash).  It
 * cannot hold the mount open to pin its ID: that would make `fusermount3 -u` fail with EBUSY.  The child runs only async-signal-safe calls (the daemon may have
 * threads when it forks) and parses /proc/self/mountinfo by hand.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs_int.h"
#include "util.h"

/* Compare a mountinfo mount point field (octal escapes for space, tab, newline, backslash) with path. */
static bool field_is_path(const char *f, const char *end, const char *path)
{
    while (f < end) {
        char c = *f;
        if (c == '\\' && end - f >= 4 && f[1] >= '0' && f[1] <= '3') {
            c = (char)((f[1] - '0') * 64 + (f[2] - '0') * 8 + (f[3] - '0'));
            f += 4;
        } else {
            f++;
        }
        if (*path++ != c)
            return false;
    }
    return *path == '\0';
}

/* Parse a decimal number at p. */
static long num_at(const char *p, const char *end)
{
    long v = 0;
    while (p < end && *p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    return v;
}

/* Whether the daemon's mount (mount ID id, device devno) is still the topmost mount at path, with
 * nothing mounted on it: /proc/self/mountinfo read with plain system calls into a fixed buffer (longer
 * lines skipped). */
static bool still_ours(const char *path, long id, const char *devno)
{
    static char buf[16384];
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    long top = -1;
    bool covered = false;
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof(buf) - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        char *line = buf, *nl;
        while ((nl = memchr(line, '\n', have - (size_t)(line - buf))) != NULL) {
            /* fields: mount-id parent-id MAJ:MIN root mount-point ... */
            char *fld[5], *p = line;
            int k = 0;
            while (k < 5 && p < nl) {
                fld[k++] = p;
                while (p < nl && *p != ' ')
                    p++;
                p++;
            }
            if (k == 5) {
                char *mp_end = memchr(fld[4], ' ', (size_t)(nl - fld[4]));
                if (field_is_path(fld[4], mp_end ? mp_end : nl, path)) {
                    size_t dl = strlen(devno);
                    bool same_dev = (size_t)(fld[3] - fld[2] - 1) == dl && memcmp(fld[2], devno, dl) == 0;
                    top = same_dev ? num_at(fld[0], nl) : -1;
                }
                if (num_at(fld[1], nl) == id)
                    covered = true;
            }
            line = nl + 1;
        }
        have -= (size_t)(line - buf);
        memmove(buf, line, have);
        if (have == sizeof(buf))
            have = 0; /* an overlong line: drop it */
    }
    close(fd);
    return top == id && !covered;
}

static void watcher_main(int fd, const char *path, long id, const char *devno)
{
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ign, NULL);
    sigaction(SIGTERM, &ign, NULL);
    sigaction(SIGHUP, &ign, NULL);
    sigaction(SIGPIPE, &ign, NULL);
    setsid();
    if (chdir("/") != 0) {
        /* keep going: the working directory only matters for unmounting what it is on */
    }
    /* The raw system call, not prctl(): AddressSanitizer's prctl wrapper takes a lock of its thread
     * registry, which another thread of the daemon may have held at fork, and the child then hangs. */
    syscall(SYS_prctl, PR_SET_NAME, "imgfuse-unmount", 0L, 0L, 0L);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
    }
    char c;
    while (read(fd, &c, 1) < 0 && errno == EINTR)
        ;
    /* The daemon is gone. A mount it left behind answers nothing but errors: detach it. */
    if (still_ours(path, id, devno) && umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) != 0 && errno == EPERM) {
        static char *const env[] = { NULL };
        execle("/usr/bin/fusermount3", "fusermount3", "-u", "-z", "--", path, (char *)NULL, env);
        execle("/bin/fusermount3", "fusermount3", "-u", "-z", "--", path, (char *)NULL, env);
    }
    _exit(0);
}

void fs_start_unmount_watcher(Fs *fs, const char *abs_mountpoint, long mount_id, const char *devno)
{
    int p[2];
    fs->watcher_pid = -1;
    fs->watcher_fd = -1;
    if (!abs_mountpoint || mount_id < 0 || pipe2(p, O_CLOEXEC) != 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[1]);
        /* keep only the pipe's read end: no image or /dev/fuse descriptor may outlive the daemon here */
        int fd = p[0];
        if (fd != 3 && dup2(fd, 3) == 3)
            fd = 3;
        close_range((unsigned)fd + 1, ~0U, 0);
        watcher_main(fd, abs_mountpoint, mount_id, devno);
    }
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
