/* SPDX-License-Identifier: MIT */
/*
 * bench-firstbyte.c - scripts/bench's mount-latency probe (not part of imgfuse).  Waits until FILE,
 * under the FUSE mount MNT, returns its first 4 KiB, polling every 200 microseconds, and exits 0; exits
 * 1 if one of the given daemon PIDs dies first or after TIMEOUT_MS.  A shell loop that starts dd for
 * every try polls every 5-10 ms, which was coarser than the differences it had to measure.
 * usage: firstbyte FILE MNT TIMEOUT_MS [PID...]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define FUSE_SUPER_MAGIC 0x65735546

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* MNT is a FUSE mount (a directory mount, or a file exported as a mount point) */
static int is_fuse(const char *path)
{
    struct statfs sf;
    return statfs(path, &sf) == 0 && (unsigned long)sf.f_type == FUSE_SUPER_MAGIC;
}

static int first_block(const char *file)
{
    static char buf[4096];
    int fd = open(file, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = pread(fd, buf, sizeof(buf), 0);
    close(fd);
    return n == (ssize_t)sizeof(buf);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: firstbyte FILE MNT TIMEOUT_MS [PID...]\n");
        return 2;
    }
    double deadline = now_ms() + atof(argv[3]);
    while (now_ms() < deadline) {
        if (is_fuse(argv[2]) && first_block(argv[1]))
            return 0;
        for (int i = 4; i < argc; i++)
            if (kill(atoi(argv[i]), 0) != 0)
                return 1;
        usleep(200);
    }
    return 1;
}
