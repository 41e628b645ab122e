/* SPDX-License-Identifier: MIT */
/*
 * scratch.h - a private scratch directory for the C unit tests that build images with qemu-img: make
 * it (under $TMPDIR or a base the test picks), run shell commands inside it, name files in it, read a
 * file whole, remove it.  Test-only; one directory per test program, and every unit test that needs
 * one uses this.
 */
#ifndef IMGFUSE_SCRATCH_H
#define IMGFUSE_SCRATCH_H
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "block.h"

static char tmpdir[256];

/* Makes BASE/imgfuse-NAME.XXXXXX (mkdtemp template); false (and tmpdir empty) on failure. */
static inline bool scratch_init_at(const char *base, const char *name)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/imgfuse-%s.XXXXXX", base, name);
    if (mkdtemp(tmpdir))
        return true;
    tmpdir[0] = '\0';
    return false;
}

/* Makes $TMPDIR/imgfuse-NAME.XXXXXX (/tmp without TMPDIR); false on failure. */
static inline bool scratch_init(const char *name)
{
    return scratch_init_at(getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", name);
}

static inline void scratch_cleanup(void)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", tmpdir);
}

/* Runs a shell command in the scratch directory, output discarded; returns system()'s status. The
 * command may end in a here-document (the group closes on a line of its own). */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char full[4096 + 512];
    snprintf(full, sizeof(full), "cd '%s' && { %s\n} >/dev/null 2>&1", tmpdir, cmd);
    return system(full);
}

/* Path of NAME in the scratch directory (one of 8 rotating buffers). */
static __attribute__((unused)) char *tpath(const char *name)
{
    static char bufs[8][512];
    static int i;
    char *p = bufs[i++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

/* The whole file, malloc'd, or NULL; *len its size. */
static __attribute__((unused)) uint8_t *slurp(const char *path, size_t *len)
{
    *len = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    struct stat st;
    uint8_t *buf = fstat(fd, &st) == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    ssize_t n = buf ? read(fd, buf, (size_t)st.st_size) : -1;
    close(fd);
    *len = n < 0 ? 0 : (size_t)n;
    return buf;
}

/* Opens tmpdir/NAME with its whole chain and default options, read-only or not; NULL after printing the
 * reason as a TAP comment. A node keeps a pointer to its options, so they live in a small ring. */
static __attribute__((unused)) BlockNode *scratch_open(const char *name, bool read_only)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    static BlockOpenOpts opts[16];
    static int n_opts;
    BlockOpenOpts *o = &opts[n_opts++ % 16];
    block_open_opts_init(o);
    o->read_only = read_only;
    Error err;
    memset(&err, 0, sizeof(err));
    BlockNode *bs = bdrv_open(path, o, &err);
    if (!bs)
        printf("# %s\n", err.msg);
    return bs;
}

#endif
