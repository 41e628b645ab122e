/* SPDX-License-Identifier: MIT */
/*
 * secret.c - the key of an encrypted image as the user gives it: --key-file FILE (its whole content, as
 * cryptsetup's --key-file reads it), --passphrase-fd N (the first line read from descriptor N, newline
 * excluded) or a no-echo prompt on the terminal (asked twice for a new image's, `imgfuse create`).  The
 * bytes live in one locked page range left out of core dumps (MADV_DONTDUMP) and wiped at exit; they go
 * into BlockOpenOpts.secret (CreateOpts.secret), never into the driver options, the mount summary or any
 * log.  It knows no image format.
 */
#include "imgfuse.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

#define SECRET_FILE_MAX (8 << 20)   /* cryptsetup's default key file limit */
#define SECRET_LINE_MAX (64 << 10)

static uint8_t *secret_buf;
static size_t secret_cap;

static void secret_wipe(void)
{
    if (!secret_buf)
        return;
    explicit_bzero(secret_buf, secret_cap);
    munlock(secret_buf, secret_cap);
    munmap(secret_buf, secret_cap);
    secret_buf = NULL;
}

/* A locked, undumpable buffer of cap bytes (one per process; a second key replaces the first). */
static uint8_t *secret_alloc(size_t cap)
{
    secret_wipe();
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, cap, MADV_DONTDUMP);
    (void)mlock(p, cap);
    static bool registered;
    if (!registered)
        registered = atexit(secret_wipe) == 0;
    secret_buf = p;
    secret_cap = cap;
    return p;
}

/* Reads fd into the secret buffer: until EOF (whole) or the first newline (line); 0 or an exit code. */
static int secret_read(BlockOpenOpts *o, int fd, const char *what, bool line, size_t max)
{
    uint8_t *buf = secret_alloc(max + 1);
    if (!buf) {
        errmsg(what, "out of memory for the key");
        return EXIT_USAGE;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, line ? 1 : max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            errmsg(what, "cannot read the key: %s", strerror(errno));
            return EXIT_USAGE;
        }
        if (r == 0 || (line && buf[n] == '\n'))
            break;
        n += (size_t)r;
        if (n > max) {
            errmsg(what, "the key is longer than %zu bytes", max);
            return EXIT_USAGE;
        }
    }
    o->secret = buf;
    o->secret_len = n;
    return 0;
}

int secret_from_file(BlockOpenOpts *o, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        errmsg(path, "cannot open the key file: %s", strerror(errno));
        return EXIT_USAGE;
    }
    int r = secret_read(o, fd, path, false, SECRET_FILE_MAX);
    close(fd);
    return r;
}

int secret_from_fd(BlockOpenOpts *o, const char *arg)
{
    char *end;
    long fd = strtol(arg, &end, 10);
    if (!*arg || *end || fd < 0 || fd > 1 << 20 || fcntl((int)fd, F_GETFD) < 0) {
        errmsg("--passphrase-fd", "'%s' is not an open file descriptor", arg);
        return EXIT_USAGE;
    }
    return secret_read(o, (int)fd, "--passphrase-fd", true, SECRET_LINE_MAX);
}

int secret_ask_tty(const char *filename, uint8_t *buf, size_t size)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    struct termios old, quiet;
    bool echo_off = tcgetattr(fd, &old) == 0;
    if (echo_off) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        quiet.c_lflag |= ICANON;
        echo_off = tcsetattr(fd, TCSAFLUSH, &quiet) == 0;
    }
    dprintf(fd, "Passphrase for %s: ", filename);
    size_t n = 0;
    int r = 0;
    char c;
    while ((r = (int)read(fd, &c, 1)) == 1 && c != '\n' && n < size)
        buf[n++] = (uint8_t)c;
    dprintf(fd, "\n");
    if (echo_off)
        tcsetattr(fd, TCSAFLUSH, &old);
    close(fd);
    return r < 0 ? -EIO : (int)n;
}

static bool secret_kept_one;

int secret_ask_and_keep(const char *filename, uint8_t *buf, size_t size)
{
    int n = secret_ask_tty(filename, buf, size);
    if (n < 0)
        return n;
    uint8_t *kept = secret_alloc((size_t)n + 1);
    if (!kept)
        return -ENOMEM;
    memcpy(kept, buf, (size_t)n);
    secret_cap = (size_t)n + 1;
    secret_kept_one = true;
    kept[n] = 0;
    return n;
}

bool secret_use_kept(BlockOpenOpts *o)
{
    if (!secret_kept_one)
        return false;
    o->secret = secret_buf;
    o->secret_len = secret_cap - 1;
    return true;
}

int secret_prompt_new(BlockOpenOpts *o, const char *filename)
{
    uint8_t *first = secret_alloc(SECRET_LINE_MAX + 1), *again = NULL;
    int n = first ? secret_ask_tty(filename, first, SECRET_LINE_MAX) : -ENOMEM, m = -1;
    if (n >= 0 && (again = mmap(NULL, SECRET_LINE_MAX, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                                0)) != MAP_FAILED) {
        (void)madvise(again, SECRET_LINE_MAX, MADV_DONTDUMP);
        (void)mlock(again, SECRET_LINE_MAX);
        char again_name[PATH_MAX + 16];
        snprintf(again_name, sizeof again_name, "%s (again)", filename);
        m = secret_ask_tty(again_name, again, SECRET_LINE_MAX);
        bool same = m == n && memcmp(first, again, (size_t)n) == 0;
        explicit_bzero(again, SECRET_LINE_MAX);
        munmap(again, SECRET_LINE_MAX);
        if (!same) {
            errmsg(filename, "the passphrases do not match");
            return EXIT_USAGE;
        }
    }
    if (n < 0 || m < 0) {
        errmsg(filename, "cannot read a passphrase from the terminal");
        return EXIT_USAGE;
    }
    o->secret = first;
    o->secret_len = (size_t)n;
    return 0;
}
