/* SPDX-License-Identifier: MIT */
/*
 * fs.c - the FUSE file system (libfuse3 low-level API): the operations on the mount tree (tree.c,
 * snapshots.c); mount.c makes the session that serves them.  Reads and
 * writes of a raw view become bdrv_pread/bdrv_pwrite; fsync/flush, truncate, fallocate, SEEK_DATA/
 * SEEK_HOLE and st_blocks map to the block layer's flush, truncate, write-zeroes, block status and
 * allocated size.  It serves requests on several threads (the block layer is thread-safe).  It knows no
 * image format; what the chain is comes from include/block.h only.
 */
#include "fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "imgfuse.h"
#include "util.h"

#define MAX_REQUEST (1024 * 1024) /* largest read/write the kernel will send (256 pages) */

/* Open-file handle bits for disk.raw (fi->fh). */
#define FH_WRITE 0x1
#define FH_SYNC  0x2

/* The content of a generated file for one open. The kernel may send RELEASE while a READ on the same
 * handle is still being answered, so readers hold a reference (under fs->lock). */
typedef struct GenFile {
    char *data;
    size_t len;
    int readers;
    bool released;
    /* streamed files (Entry.stream): the generator, and its output from offset base on not yet read */
    const StreamOps *ops;
    void *state;
    StrBuf pending;
    int64_t base;
    bool eof;
    pthread_mutex_t lock;    /* one read of the handle at a time moves the generator */
    struct GenFile *prev, *next; /* in Fs.open_files while open */
} GenFile;

static void genfile_link(Fs *fs, GenFile *g)
{
    pthread_mutex_lock(&fs->lock);
    g->next = fs->open_files;
    if (g->next)
        g->next->prev = g;
    fs->open_files = g;
    pthread_mutex_unlock(&fs->lock);
}

static void genfile_unlink(Fs *fs, GenFile *g)
{
    if (g->prev)
        g->prev->next = g->next;
    else
        fs->open_files = g->next;
    if (g->next)
        g->next->prev = g->prev;
}

/* Unlinks g from fs->open_files (fs->lock taken here) and frees it. */
static void genfile_free(Fs *fs, GenFile *g)
{
    pthread_mutex_lock(&fs->lock);
    genfile_unlink(fs, g);
    pthread_mutex_unlock(&fs->lock);
    if (g->ops) {
        if (g->state)
            g->ops->close(g->state);
        sb_free(&g->pending);
        pthread_mutex_destroy(&g->lock);
    }
    free(g->data);
    free(g);
}

static GenFile *genfile_get(Fs *fs, struct fuse_file_info *fi)
{
    GenFile *g = (GenFile *)(uintptr_t)fi->fh;
    pthread_mutex_lock(&fs->lock);
    g->readers++;
    pthread_mutex_unlock(&fs->lock);
    return g;
}

static void genfile_put(Fs *fs, GenFile *g, bool release)
{
    pthread_mutex_lock(&fs->lock);
    if (release)
        g->released = true;
    else
        g->readers--;
    bool last = g->released && g->readers == 0;
    pthread_mutex_unlock(&fs->lock);
    if (last)
        genfile_free(fs, g);
}

/* ---------------------------------------------------------------- streamed generated files */

#define STREAM_PIECE (64 * 1024) /* generated ahead of a read that must skip forward */

static int stream_restart(Fs *fs, Entry *e, GenFile *g)
{
    if (g->state)
        g->ops->close(g->state);
    g->state = g->ops->open(fs, e);
    g->pending.len = 0;
    g->base = 0;
    g->eof = false;
    return g->state ? 0 : -ENOMEM;
}

/* Runs the generator once more; a failure ends the file with an "error: ..." line. */
static void stream_more(GenFile *g, size_t want)
{
    int r = g->ops->next(g->state, &g->pending, want);
    if (r < 0)
        sb_printf(&g->pending, "error: %s\n", strerror(-r));
    if (r <= 0)
        g->eof = true;
}

/* Drops the pending output before off (generating it first if needed); false when the file ends first. */
static bool stream_seek(GenFile *g, int64_t off)
{
    while (g->base + (int64_t)g->pending.len < off) {
        g->base += (int64_t)g->pending.len;
        g->pending.len = 0;
        if (g->eof)
            return false;
        stream_more(g, STREAM_PIECE);
    }
    size_t drop = (size_t)(off - g->base);
    if (drop) {
        memmove(g->pending.s, g->pending.s + drop, g->pending.len - drop);
        g->pending.len -= drop;
    }
    g->base = off;
    return true;
}

static void stream_read(fuse_req_t req, Fs *fs, Entry *e, GenFile *g, size_t size, off_t off)
{
    pthread_mutex_lock(&g->lock);
    int r = off < g->base || !g->state ? stream_restart(fs, e, g) : 0;
    if (r < 0) {
        pthread_mutex_unlock(&g->lock);
        fuse_reply_err(req, -r);
        return;
    }
    if (off < 0 || !stream_seek(g, off)) {
        pthread_mutex_unlock(&g->lock);
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    while (!g->eof && g->pending.len < size)
        stream_more(g, size);
    fuse_reply_buf(req, g->pending.s, MIN(size, g->pending.len));
    pthread_mutex_unlock(&g->lock);
}

/* ---------------------------------------------------------------- attributes */

static void fill_stat(Fs *fs, Entry *e, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = e->ino;
    st->st_uid = fs->uid;
    st->st_gid = fs->gid;
    st->st_blksize = 4096;
    pthread_mutex_lock(&fs->lock);
    st->st_mtim = st->st_ctim = st->st_atim = e->mtime;
    pthread_mutex_unlock(&fs->lock);
    switch (e->kind) {
    case ENTRY_DIR:
        st->st_mode = S_IFDIR | (e == fs->snapdir && fs->cfg.writable ? 0755 : 0555);
        st->st_nlink = 2;
        break;
    case ENTRY_DISK: {
        st->st_mode = S_IFREG | (e->writable ? 0644 : 0444);
        st->st_nlink = 1;
        /* a snapshot's view may not be open: its size is the snapshot's, its host bytes the image's */
        int64_t size = e->snap ? (int64_t)MIN(e->snap->disk_size, (uint64_t)INT64_MAX) : disk_size(e);
        st->st_size = size;
        int64_t alloc = bdrv_get_allocated_size(e->snap ? fs->cfg.bs : e->bs);
        st->st_blocks = alloc >= 0 ? (alloc + 511) / 512 : (size + 511) / 512;
        break;
    }
    case ENTRY_VMSTATE:
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = (off_t)e->snap->vm_state_size;
        st->st_blocks = (st->st_size + 511) / 512;
        break;
    case ENTRY_GEN: {
        size_t len = 0;
        if (!e->stream)
            free(e->gen(fs, e, &len));
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = (off_t)len;
        st->st_blocks = ((off_t)len + 511) / 512;
        break;
    }
    }
}

/* Read-only views never change: the kernel may cache their attributes and pages for long. */
static double attr_timeout(Fs *fs, Entry *e)
{
    if (e->kind == ENTRY_GEN)
        return 0.0;
    return fs->cfg.writable ? 1.0 : 3600.0;
}

static void fs_op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    if (!e) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_stat(fs, e, &st);
    fuse_reply_attr(req, &st, attr_timeout(fs, e));
}

void fs_reply_entry(fuse_req_t req, Fs *fs, Entry *e)
{
    struct fuse_entry_param ep;
    memset(&ep, 0, sizeof ep);
    ep.ino = e->ino;
    ep.generation = 1;
    fill_stat(fs, e, &ep.attr);
    ep.attr_timeout = attr_timeout(fs, e);
    ep.entry_timeout = 1.0;
    fuse_reply_entry(req, &ep);
}

static void fs_op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_lookup_child(fs, parent, name);
    if (!e)
        fuse_reply_err(req, ENOENT);
    else
        fs_reply_entry(req, fs, e);
}

/* A raw view behaves like a block device: it may grow where the format allows, but never shrinks through
 * the mount (a truncate to 0 or to a seek offset would destroy the disk). Shrinking is an offline job. */
static int disk_truncate(Fs *fs, Entry *e, int64_t size)
{
    if (!e->writable)
        return -EROFS;
    int64_t cur = bdrv_getlength(e->bs);
    if (cur < 0)
        return (int)cur;
    if (size == cur)
        return 0;
    if (size < cur) {
        log_msg("%s: cannot shrink from %" PRId64 " to %" PRId64 " bytes: disk.raw never shrinks through the "
                "mount (write with dd conv=notrunc; shrink offline with qemu-img resize --shrink)",
                e->bs->filename, cur, size);
        return -EPERM;
    }
    int r = bdrv_truncate(e->bs, size);
    if (r == -ENOTSUP || r == -EOPNOTSUPP)
        return -EINVAL;
    if (r < 0)
        return r;
    entry_touch(fs, e);
    return 0;
}

static void fs_op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                          struct fuse_file_info *fi)
{
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    if (!e) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        fuse_reply_err(req, EPERM);
        return;
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
        int r = e->kind == ENTRY_DISK ? disk_truncate(fs, e, attr->st_size) : -EACCES;
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
    }
    if ((to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) && e->kind == ENTRY_DISK && e->writable) {
        if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
            entry_touch(fs, e);
        } else {
            pthread_mutex_lock(&fs->lock);
            e->mtime = attr->st_mtim;
            pthread_mutex_unlock(&fs->lock);
        }
    }
    fs_op_getattr(req, ino, fi);
}

/* ---------------------------------------------------------------- directories */

typedef struct DirBuf {
    fuse_req_t req;
    char *buf;
    size_t size, used;
} DirBuf;

/* Adds one entry; false when the reply buffer is full. next is the offset of the following entry. */
static bool dirbuf_add(DirBuf *d, const char *name, fuse_ino_t ino, bool is_dir, off_t next)
{
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = ino;
    st.st_mode = is_dir ? S_IFDIR : S_IFREG;
    size_t n = fuse_add_direntry(d->req, d->buf + d->used, d->size - d->used, name, &st, next);
    if (n > d->size - d->used)
        return false;
    d->used += n;
    return true;
}

/* Lists ".", "..", then the children in creation order; an entry's offset is its index + 1. */
static void fs_op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)fi;
    Fs *fs = fuse_req_userdata(req);
    Entry *dir = fs_get(fs, ino);
    if (!dir || dir->kind != ENTRY_DIR) {
        fuse_reply_err(req, dir ? ENOTDIR : ENOENT);
        return;
    }
    DirBuf d = { .req = req, .buf = calloc(1, size), .size = size };
    if (!d.buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    off_t idx = 0;
    bool room = true;
    if (off <= idx)
        room = dirbuf_add(&d, ".", ino, true, idx + 1);
    idx++;
    if (room && off <= idx)
        room = dirbuf_add(&d, "..", dir->parent, true, idx + 1);
    idx++;
    pthread_mutex_lock(&fs->lock);
    for (size_t i = 0; i < fs->n_entries && room; i++) {
        Entry *e = fs->entries[i];
        if (e->parent != ino || e->ino == ino)
            continue;
        if (off <= idx)
            room = dirbuf_add(&d, e->name, e->ino, e->kind == ENTRY_DIR, idx + 1);
        idx++;
    }
    pthread_mutex_unlock(&fs->lock);
    fuse_reply_buf(req, d.buf, d.used);
    free(d.buf);
}

/* ---------------------------------------------------------------- open / release */

static void fs_op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    if (!e) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    bool wants_write = (fi->flags & O_ACCMODE) != O_RDONLY;
    if (e->kind == ENTRY_DIR) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (wants_write && !(e->kind == ENTRY_DISK && e->writable)) {
        fuse_reply_err(req, e->kind == ENTRY_DISK ? EROFS : EACCES);
        return;
    }
    if (e->kind == ENTRY_DISK || e->kind == ENTRY_VMSTATE) {
        int r = e->kind == ENTRY_DISK && e->snap ? fs_view_get(fs, e) : 0;
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        /* O_TRUNC (atomic, see fs_op_init) is ignored: dd without conv=notrunc, cp and a shell's '>' then
         * write into the disk as into a block device, size and the other bytes unchanged. */
        fi->fh = (wants_write ? FH_WRITE : 0) | ((fi->flags & (O_SYNC | O_DSYNC)) ? FH_SYNC : 0);
        fi->keep_cache = !fs->cfg.writable; /* nothing can change any view of a read-only mount */
        fi->direct_io = fs->cfg.direct_io;
        fi->noflush = !wants_write;
        pthread_mutex_lock(&fs->lock);
        e->opens++;
        pthread_mutex_unlock(&fs->lock);
        if (fuse_reply_open(req, fi) != 0) {
            pthread_mutex_lock(&fs->lock);
            e->opens--;
            pthread_mutex_unlock(&fs->lock);
            if (e->kind == ENTRY_DISK && e->snap)
                fs_view_put(fs, e);
        }
        return;
    }
    GenFile *g = calloc(1, sizeof *g);
    if (g && e->stream) {
        g->ops = e->stream;
        sb_init(&g->pending);
        pthread_mutex_init(&g->lock, NULL);
    } else if (g && !(g->data = e->gen(fs, e, &g->len))) {
        free(g);
        g = NULL;
    }
    if (!g) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    genfile_link(fs, g);
    fi->fh = (uint64_t)(uintptr_t)g;
    fi->direct_io = 1; /* content is rendered per open; its size may differ from an earlier getattr */
    fi->noflush = 1;
    if (fuse_reply_open(req, fi) != 0)
        genfile_free(fs, g);
}

static void fs_op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    if (e && e->kind == ENTRY_GEN && fi->fh) {
        genfile_put(fs, (GenFile *)(uintptr_t)fi->fh, true);
    } else if (e && (e->kind == ENTRY_DISK || e->kind == ENTRY_VMSTATE)) {
        pthread_mutex_lock(&fs->lock);
        e->opens--;
        pthread_mutex_unlock(&fs->lock);
        if (e->kind == ENTRY_DISK && e->snap)
            fs_view_put(fs, e); /* the last release closes the snapshot's view */
    }
    fuse_reply_err(req, 0);
}

/* ---------------------------------------------------------------- read / write */

/* Request buffers are shared by all worker threads through a last-in first-out pool: as many exist
 * as requests were ever in flight at once (a few), not one per thread, and the one handed out next is
 * the one used last, whose pages are resident. So the daemon's resident size follows the concurrency of
 * the I/O, not the number of worker threads. */
static void *buf_get(Fs *fs)
{
    void *p = NULL;
    pthread_mutex_lock(&fs->buf_lock);
    if (fs->n_free_bufs)
        p = fs->free_bufs[--fs->n_free_bufs];
    pthread_mutex_unlock(&fs->buf_lock);
    if (!p && posix_memalign(&p, 4096, MAX_REQUEST) != 0)
        p = NULL;
    return p;
}

static void buf_put(Fs *fs, void *p)
{
    pthread_mutex_lock(&fs->buf_lock);
    if (fs->n_free_bufs < sizeof(fs->free_bufs) / sizeof(fs->free_bufs[0])) {
        fs->free_bufs[fs->n_free_bufs++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&fs->buf_lock);
    free(p);
}

/* At teardown: generated files whose release never arrived (the session ended first). */
void fs_free_open_files(Fs *fs)
{
    while (fs->open_files)
        genfile_free(fs, fs->open_files);
}

void fs_free_buffers(Fs *fs)
{
    while (fs->n_free_bufs)
        free(fs->free_bufs[--fs->n_free_bufs]);
    pthread_mutex_destroy(&fs->buf_lock);
}

/* Read-only mounts reply by splice, through a pipe that must hold the whole reply plus a few pages:
 * without CAP_SYS_RESOURCE pipes grow to /proc/sys/fs/pipe-max-size only, 1 MiB by default, so their
 * requests are kept to 512 KiB (measured: less daemon CPU per GiB than 1 MiB requests copied). */
#define MAX_READ_SPLICED (512 * 1024)

unsigned fs_max_read(bool writable)
{
    return writable ? MAX_REQUEST : MAX_READ_SPLICED;
}

/* Smaller replies go through libfuse's memory path anyway (it splices nothing under two pages). */
#define SPLICE_MIN (2 * 4096)

/* Pieces of one spliced reply: a 512 KiB read of an overlay whose layers alternate every 64 KiB cluster
 * needs 8; more than this many falls back to a read into a buffer. */
#define SPLICE_MAX_EXTENTS 64

/* What zero extents are written into the pipe from: never written, so it stays on the kernel's shared
 * zero page and costs no memory. */
static char splice_zeros[MAX_REQUEST];

/* Pipe slots (pages) a reply of these extents takes: a spliced page-cache page per page the host range
 * touches, written zeros a page each plus one partly filled, and a page for the reply's header. libfuse
 * falls back to a slower copy when its pipe overflows, so such replies are read into a buffer instead. */
static size_t pipe_pages_needed(const BlockMapExtent *x, int n)
{
    const int64_t page = 4096;
    size_t pages = 1;
    for (int i = 0; i < n; i++) {
        int64_t first = x[i].fd >= 0 ? x[i].host_offset % page : 0;
        pages += (size_t)((first + x[i].bytes + page - 1) / page) + (x[i].fd < 0);
    }
    return pages;
}

/* Replies with the host files' bytes moved by the kernel (splice through a pipe, no copy into our
 * buffer) when the range maps to a few host extents and zeros that cannot change under the reply. False
 * when the caller must read it itself. */
static bool reply_spliced(Fs *fs, fuse_req_t req, Entry *e, off_t off, size_t len)
{
    if (!fs->splice_reads || len < SPLICE_MIN || len > fs->splice_max)
        return false;
    uint64_t t0 = now_ns();
    BlockMapExtent x[SPLICE_MAX_EXTENTS];
    int n = bdrv_map_extents(e->bs, off, (int64_t)len, x, SPLICE_MAX_EXTENTS);
    if (n <= 0 || pipe_pages_needed(x, n) > fs->splice_pipe_pages)
        return false;
    /* Counted before the reply, like bdrv_pread's reads: a reader that got its data sees it counted. */
    bdrv_account_extents(e->bs, x, n, now_ns() - t0);
    if (fs->cfg.counters)
        fs->cfg.counters->bytes_read += len;
    if (n == 1 && x[0].fd < 0) { /* all zeros: one copy from the zero page, not two through the pipe */
        fuse_reply_buf(req, splice_zeros, len);
        return true;
    }
    union {
        struct fuse_bufvec bv;
        char space[sizeof(struct fuse_bufvec) + (SPLICE_MAX_EXTENTS - 1) * sizeof(struct fuse_buf)];
    } u;
    memset(&u.bv, 0, sizeof u.bv);
    u.bv.count = (size_t)n;
    for (int i = 0; i < n; i++) {
        struct fuse_buf *b = &u.bv.buf[i];
        memset(b, 0, sizeof *b);
        b->size = (size_t)x[i].bytes;
        if (x[i].fd >= 0) {
            b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
            b->fd = x[i].fd;
            b->pos = x[i].host_offset;
        } else {
            b->mem = splice_zeros;
        }
    }
    fuse_reply_data(req, &u.bv, FUSE_BUF_SPLICE_MOVE);
    return true;
}

static void fs_op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    if (!e || e->kind == ENTRY_DIR) {
        fuse_reply_err(req, e ? EISDIR : ENOENT);
        return;
    }
    if (e->kind == ENTRY_GEN) {
        GenFile *g = genfile_get(fs, fi);
        if (g->ops)
            stream_read(req, fs, e, g, size, off);
        else if (off < 0 || (size_t)off >= g->len)
            fuse_reply_buf(req, NULL, 0);
        else
            fuse_reply_buf(req, g->data + off, MIN(size, g->len - (size_t)off));
        genfile_put(fs, g, false);
        return;
    }
    int64_t disk = e->kind == ENTRY_VMSTATE ? (int64_t)e->snap->vm_state_size : disk_size(e);
    if (off >= disk) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    size_t len = (size_t)MIN((int64_t)size, disk - off);
    if (e->kind == ENTRY_DISK && reply_spliced(fs, req, e, off, len))
        return;
    void *buf = len <= MAX_REQUEST ? buf_get(fs) : NULL;
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int r = e->kind == ENTRY_VMSTATE ? vmstate_read(e, off, len, buf) : bdrv_pread(e->bs, off, (int64_t)len, buf);
    if (r < 0) {
        fuse_reply_err(req, -r);
    } else {
        if (fs->cfg.counters)
            fs->cfg.counters->bytes_read += len;
        fuse_reply_buf(req, buf, len);
    }
    buf_put(fs, buf);
}

static void fs_op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                        struct fuse_file_info *fi)
{
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    if (!e || e->kind != ENTRY_DISK) {
        fuse_reply_err(req, e ? EBADF : ENOENT);
        return;
    }
    if (!e->writable) {
        fuse_reply_err(req, EROFS);
        return;
    }
    int64_t disk = disk_size(e);
    if (size == 0) {
        fuse_reply_write(req, 0);
        return;
    }
    if (off >= disk) {
        fuse_reply_err(req, ENOSPC);
        return;
    }
    size_t len = (size_t)MIN((int64_t)size, disk - off);
    int flags = (fi->fh & FH_SYNC) ? BDRV_REQ_FUA : 0;
    int r = bdrv_pwrite(e->bs, off, (int64_t)len, buf, flags);
    if (r < 0) {
        fuse_reply_err(req, -r);
        return;
    }
    entry_touch(fs, e);
    if (fs->cfg.counters)
        fs->cfg.counters->bytes_written += len;
    fuse_reply_write(req, len);
}

static void fs_op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    int r = 0;
    if (e && e->kind == ENTRY_DISK && e->writable && (fi->fh & FH_WRITE))
        r = bdrv_flush(e->bs);
    fuse_reply_err(req, r < 0 ? -r : 0);
}

static void fs_op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)datasync;
    (void)fi;
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    int r = 0;
    if (e && e->kind == ENTRY_DISK && e->writable)
        r = bdrv_flush(e->bs);
    fuse_reply_err(req, r < 0 ? -r : 0);
}

/* PUNCH_HOLE must read back as zeros whatever the discard policy, so both modes write zeroes; a punch
 * may deallocate (the block layer does so when --discard=unmap). Plain allocation cannot be promised. */
static void fs_op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t length,
                            struct fuse_file_info *fi)
{
    (void)fi;
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    if (!e || e->kind != ENTRY_DISK) {
        fuse_reply_err(req, e ? EOPNOTSUPP : ENOENT);
        return;
    }
    if (!e->writable) {
        fuse_reply_err(req, EROFS);
        return;
    }
    int flags;
    if (mode & FALLOC_FL_PUNCH_HOLE)
        flags = BDRV_REQ_MAY_UNMAP;
    else if (mode & FALLOC_FL_ZERO_RANGE)
        flags = 0;
    else {
        fuse_reply_err(req, EOPNOTSUPP);
        return;
    }
    int64_t disk = disk_size(e);
    if (off < 0 || length <= 0) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    int64_t end = MIN(disk, off + (int64_t)length);
    int r = 0;
    if (off < end)
        r = bdrv_pwrite_zeroes(e->bs, off, end - off, flags);
    if (r >= 0)
        entry_touch(fs, e);
    fuse_reply_err(req, r < 0 ? -r : 0);
}

/* A range is a hole for SEEK_HOLE when the chain says it reads as zeros or holds no data. */
static bool status_is_hole(int flags)
{
    return (flags & BDRV_BLOCK_ZERO) || !(flags & BDRV_BLOCK_DATA);
}

static off_t seek_data_hole(Entry *e, int64_t disk, off_t off, int whence)
{
    if (off < 0)
        return -EINVAL;
    if (off >= disk)
        return -ENXIO;
    for (int64_t pos = off; pos < disk;) {
        BlockStatus st;
        memset(&st, 0, sizeof st);
        int r = bdrv_block_status_as_read(e->bs, pos, disk - pos, &st);
        if (r < 0)
            return r;
        if (st.bytes <= 0)
            return -EIO;
        bool hole = status_is_hole(st.flags);
        if ((whence == SEEK_DATA && !hole) || (whence == SEEK_HOLE && hole))
            return pos;
        pos += st.bytes;
    }
    return whence == SEEK_DATA ? -ENXIO : disk;
}

static void fs_op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
    (void)fi;
    Fs *fs = fuse_req_userdata(req);
    Entry *e = fs_get(fs, ino);
    if (!e || e->kind == ENTRY_DIR) {
        fuse_reply_err(req, e ? EISDIR : ENOENT);
        return;
    }
    if (whence != SEEK_DATA && whence != SEEK_HOLE) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if (e->kind == ENTRY_GEN) {
        GenFile *g = genfile_get(fs, fi);
        if (g->ops && off >= 0) /* a stream's end is not known before it is generated */
            fuse_reply_lseek(req, whence == SEEK_DATA ? off : (off_t)INT64_MAX);
        else if (off < 0 || (size_t)off >= g->len)
            fuse_reply_err(req, ENXIO);
        else
            fuse_reply_lseek(req, whence == SEEK_DATA ? off : (off_t)g->len);
        genfile_put(fs, g, false);
        return;
    }
    if (e->kind == ENTRY_VMSTATE) {
        off_t end = (off_t)e->snap->vm_state_size;
        if (off < 0 || off >= end)
            fuse_reply_err(req, ENXIO);
        else
            fuse_reply_lseek(req, whence == SEEK_DATA ? off : end);
        return;
    }
    off_t r = seek_data_hole(e, disk_size(e), off, whence);
    if (r < 0)
        fuse_reply_err(req, (int)-r);
    else
        fuse_reply_lseek(req, r);
}

static void fs_op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    Fs *fs = fuse_req_userdata(req);
    struct statvfs sv;
    memset(&sv, 0, sizeof sv);
    sv.f_bsize = sv.f_frsize = 4096;
    sv.f_blocks = (fsblkcnt_t)((disk_size(fs->disk) + 4095) / 4096);
    pthread_mutex_lock(&fs->lock);
    sv.f_files = fs->n_entries;
    pthread_mutex_unlock(&fs->lock);
    sv.f_namemax = 255;
    fuse_reply_statfs(req, &sv);
}

/* `imgfuse unmount` asks the daemon behind a mount point for its pid (IMGFUSE_IOC_PID on the root,
 * opened), so it can wait for that process to exit; any other ioctl is not supported. */
static void fs_op_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
                        unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
    (void)arg, (void)fi, (void)flags, (void)in_buf, (void)in_bufsz;
    if (cmd != IMGFUSE_IOC_PID || ino != FUSE_ROOT_ID || out_bufsz < sizeof(uint64_t)) {
        fuse_reply_err(req, ENOTTY);
        return;
    }
    uint64_t pid = (uint64_t)getpid();
    fuse_reply_ioctl(req, 0, &pid, sizeof pid);
}

/* ---------------------------------------------------------------- the connection (INIT) and the operations */

#define SPLICE_PIPE_SLACK (4 * 4096)

/* libfuse splices a reply only if its per-thread pipe holds all of it (data, header and a few pages of
 * slack); it grows the pipe up to /proc/sys/fs/pipe-max-size, or beyond with CAP_SYS_RESOURCE. Above
 * that it would copy through a fresh malloc'd buffer, which costs more than our own read. */
static size_t splice_limit(void)
{
    const size_t slack = SPLICE_PIPE_SLACK;
    int p[2];
    if (pipe(p) != 0)
        return 0;
    size_t limit = 0;
    if (fcntl(p[0], F_SETPIPE_SZ, (int)(MAX_REQUEST + slack)) >= 0) {
        limit = MAX_REQUEST;
    } else {
        FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");
        unsigned long max = 0;
        if (f && fscanf(f, "%lu", &max) == 1 && max > slack)
            limit = MIN((size_t)max - slack, (size_t)MAX_REQUEST);
        if (f)
            fclose(f);
    }
    close(p[0]);
    close(p[1]);
    return limit;
}

static void fs_op_init(void *userdata, struct fuse_conn_info *conn)
{
    Fs *fs = userdata;
    conn->max_write = MAX_REQUEST;
    conn->max_read = fs_max_read(fs->cfg.writable);
    /* When INIT is answered the kernel caps the mount's readahead window at this; post_mount raises the
     * window to it, before or after. */
    conn->max_readahead = MAX_REQUEST;
    conn->max_background = 64;
    conn->congestion_threshold = 48;
    /* O_TRUNC then comes as an open flag (which fs_op_open ignores, as a block device does) instead of a
     * size-0 SETATTR that could not be told from a real truncate. */
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
        conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    if (conn->capable & FUSE_CAP_ASYNC_READ)
        conn->want |= FUSE_CAP_ASYNC_READ;
    if (conn->capable & FUSE_CAP_ASYNC_DIO)
        conn->want |= FUSE_CAP_ASYNC_DIO;
    if (!fs->cfg.writable && (conn->capable & FUSE_CAP_SPLICE_WRITE)) {
        fs->splice_max = splice_limit();
        fs->splice_pipe_pages = (fs->splice_max + SPLICE_PIPE_SLACK) / 4096;
        if (fs->splice_max >= SPLICE_MIN) {
            conn->want |= FUSE_CAP_SPLICE_WRITE;
            fs->splice_reads = true;
        }
    }
}

const struct fuse_lowlevel_ops fs_ops = {
    .init = fs_op_init,
    .lookup = fs_op_lookup,
    .getattr = fs_op_getattr,
    .setattr = fs_op_setattr,
    .readdir = fs_op_readdir,
    .open = fs_op_open,
    .release = fs_op_release,
    .read = fs_op_read,
    .write = fs_op_write,
    .flush = fs_op_flush,
    .fsync = fs_op_fsync,
    .fallocate = fs_op_fallocate,
    .lseek = fs_op_lseek,
    .statfs = fs_op_statfs,
    .ioctl = fs_op_ioctl,
    .mkdir = fs_op_mkdir,
    .rmdir = fs_op_rmdir,
};
