/* SPDX-License-Identifier: MIT */
/*
 * test-locking.c - QEMU-compatible image locks of the file driver, checked against a real qemu-io:
 * the lock bytes we take equal the ones qemu-io takes (seen in /proc/locks), a writable open is refused
 * while QEMU writes the image and QEMU is refused while we write it, read-only and force-shared opens
 * behave as qemu-io -r and -U do.
 */
#include "block.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define QCOW2_RW_HELD (BDRV_PERM_CONSISTENT_READ | BDRV_PERM_WRITE | BDRV_PERM_RESIZE)
#define QCOW2_UNSHARED (BDRV_PERM_WRITE | BDRV_PERM_RESIZE)

static char img[300], rawimg[300];

/* Bitmask of the lock bytes 100..103 (bits 0..3) and 200..203 (bits 4..7) held on the file. */
static unsigned lock_bytes(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return ~0u;
    char needle[64];
    snprintf(needle, sizeof(needle), ":%llu ", (unsigned long long)st.st_ino);
    FILE *f = fopen("/proc/locks", "r");
    if (!f)
        return ~0u;
    char line[256];
    unsigned mask = 0;
    while (fgets(line, sizeof(line), f)) {
        char *p = strstr(line, needle);
        if (!p)
            continue;
        long long start, end;
        if (sscanf(p + strlen(needle), "%lld %lld", &start, &end) != 2)
            continue;
        for (long long b = start; b <= end && b <= 203; b++) {
            if (b >= 100 && b <= 103)
                mask |= 1u << (b - 100);
            if (b >= 200 && b <= 203)
                mask |= 1u << (b - 200 + 4);
        }
    }
    fclose(f);
    return mask;
}

static pid_t spawn_qemu_io(const char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 1);
        dup2(fd, 2);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static int run_qemu_io(const char *const argv[])
{
    pid_t pid = spawn_qemu_io(argv);
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Waits (up to 60 s) until the file's lock bytes equal want. */
static bool wait_locks(const char *path, unsigned want)
{
    for (int i = 0; i < 1200; i++) {
        if (lock_bytes(path) == want)
            return true;
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
    }
    return false;
}

static BlockNode *open_file_node(const char *path, bool read_only)
{
    Error err = { 0 };
    BlockNode *f = bdrv_open_file(path, NULL, read_only, &err);
    if (!f)
        printf("# %s\n", err.msg);
    return f;
}

static void test_our_lock_bytes(void)
{
    BlockNode *f = open_file_node(img, false);
    Error err = { 0 };
    ok(f && f->drv->set_perm(f, QCOW2_RW_HELD, QCOW2_UNSHARED, &err) == 0, "take the qcow2 read-write locks");
    is_int(lock_bytes(img), 0x1 | 0x2 | 0x8 | 0x20 | 0x80, "same bytes as qemu-io rw on qcow2: 100 101 103 201 203");
    bdrv_close(f);
    is_int(lock_bytes(img), 0, "closing drops them");
    f = open_file_node(img, true);
    ok(f && f->drv->set_perm(f, BDRV_PERM_CONSISTENT_READ, QCOW2_UNSHARED, &err) == 0, "read-only locks");
    is_int(lock_bytes(img), 0x1 | 0x20 | 0x80, "same bytes as qemu-io -r on qcow2: 100 201 203");
    bdrv_close(f);

    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = false;
    BlockNode *bs = bdrv_open(rawimg, &o, &err);
    ok(bs != NULL, "open raw read-write: %s", err.msg);
    is_int(lock_bytes(rawimg), 0x1 | 0x2, "raw read-write: 100 101, shares everything (as qemu-io -f raw)");
    bdrv_close(bs);
    o.read_only = true;
    bs = bdrv_open(rawimg, &o, &err);
    is_int(lock_bytes(rawimg), 0x1, "raw read-only: 100");
    bdrv_close(bs);
    o.force_share = true;
    bs = bdrv_open(rawimg, &o, &err);
    ok(bs != NULL, "read-only --force-share opens");
    is_int(lock_bytes(rawimg), 0, "read-only --force-share takes no lock");
    bdrv_close(bs);
}

static void test_qemu_writer(void)
{
    const char *argv[] = { "qemu-io", "-f", "qcow2", "-c", "sleep 600000", img, NULL };
    pid_t q = spawn_qemu_io(argv);
    ok(q > 0 && wait_locks(img, 0x1 | 0x2 | 0x8 | 0x20 | 0x80), "qemu-io holds the image read-write");
    Error err = { 0 };
    BlockNode *f = open_file_node(img, false);
    int r = f ? f->drv->set_perm(f, QCOW2_RW_HELD, QCOW2_UNSHARED, &err) : -1;
    is_int(r, -EBUSY, "our read-write open is refused");
    ok(strstr(err.msg, "image is in use by another process for writing (QEMU lock)") &&
       strstr(err.msg, "--force-share"), "with a clear line: %s", err.msg);
    bdrv_close(f);
    memset(&err, 0, sizeof(err));
    f = open_file_node(img, true);
    r = f ? f->drv->set_perm(f, BDRV_PERM_CONSISTENT_READ, QCOW2_UNSHARED, &err) : -1;
    is_int(r, -EBUSY, "a read-only open that needs a stable image is refused too (as qemu-io -r)");
    r = f ? f->drv->set_perm(f, BDRV_PERM_CONSISTENT_READ, 0, &err) : -1;
    is_int(r, 0, "a force-shared read-only open works (as qemu-io -r -U)");
    bdrv_close(f);
    if (q > 0) {
        kill(q, SIGKILL);
        waitpid(q, NULL, 0);
    }
    ok(wait_locks(img, 0), "qemu-io gone, no locks left");
}

static void test_qemu_refused(void)
{
    Error err = { 0 };
    BlockNode *f = open_file_node(img, false);
    ok(f && f->drv->set_perm(f, QCOW2_RW_HELD, QCOW2_UNSHARED, &err) == 0, "we hold the image read-write");
    const char *rd[] = { "qemu-io", "-f", "qcow2", "-c", "read 0 512", img, NULL };
    ok(run_qemu_io(rd) != 0, "qemu-io read-write is refused while we write");
    const char *ro[] = { "qemu-io", "-f", "qcow2", "-r", "-c", "read 0 512", img, NULL };
    ok(run_qemu_io(ro) != 0, "qemu-io -r is refused while we write");
    const char *ru[] = { "qemu-io", "-f", "qcow2", "-r", "-U", "-c", "read 0 512", img, NULL };
    is_int(run_qemu_io(ru), 0, "qemu-io -r -U still reads");
    bdrv_close(f);

    f = open_file_node(img, true);
    ok(f && f->drv->set_perm(f, BDRV_PERM_CONSISTENT_READ, QCOW2_UNSHARED, &err) == 0, "we hold it read-only");
    const char *wr[] = { "qemu-io", "-f", "qcow2", "-c", "write 0 512", img, NULL };
    ok(run_qemu_io(wr) != 0, "qemu-io cannot write while we read");
    is_int(run_qemu_io(ro), 0, "qemu-io -r reads alongside us");
    bdrv_close(f);
    is_int(run_qemu_io(wr), 0, "qemu-io writes once we are gone");
}

int main(void)
{
    if (!scratch_init("lock"))
        return 1;
    snprintf(img, sizeof(img), "%s/img.qcow2", tmpdir);
    snprintf(rawimg, sizeof(rawimg), "%s/img.raw", tmpdir);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qcow2 '%s' 1M && qemu-img create -q -f raw '%s' 1M", img,
             rawimg);
    ok(system(cmd) == 0, "made test images with qemu-img");
    test_our_lock_bytes();
    test_qemu_writer();
    test_qemu_refused();
    scratch_cleanup();
    return done_testing();
}
