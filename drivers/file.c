/* SPDX-License-Identifier: MIT */
/*
 * file.c - the "file" protocol driver: a host file or block device read and written with pread/pwrite
 * (short I/O and EINTR handled), or with O_DIRECT (--cache=none, alignment discovered at open) and libaio
 * (--aio=native: every extent of a request in one io_submit batch, a small pool of contexts so several
 * threads submit at once).  Allocation status from SEEK_DATA/SEEK_HOLE, discard and zeroing by
 * fallocate with capabilities downgraded once the host says EOPNOTSUPP, QEMU-compatible image locks.
 * Read-only nodes are opened O_RDONLY and nothing else, ever.  It knows nothing about image formats.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <libaio.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define AIO_CONTEXTS 4
#define AIO_DEPTH 128
/* Linux moves at most this many bytes in one read or write (the file node's max_transfer). */
#define FILE_MAX_TRANSFER 0x7ffff000

typedef struct FileAio {
    pthread_mutex_t lock;
    io_context_t ctx;
    bool ready;
} FileAio;

typedef struct FileState {
    int fd;
    bool is_blockdev;
    bool direct;
    bool unsafe;         /* CACHE_UNSAFE: flush and FUA do not sync */
    bool can_punch;      /* accessed atomically: downgraded on EOPNOTSUPP */
    bool can_zero_range; /* idem */
    FileAio *aio;        /* AIO_CONTEXTS contexts with --aio=native, else NULL */
    unsigned aio_next;
} FileState;

static bool cap_get(bool *cap) { return __atomic_load_n(cap, __ATOMIC_RELAXED); }
static void cap_drop(bool *cap) { __atomic_store_n(cap, false, __ATOMIC_RELAXED); }

/* ---------------------------------------------------------------- synchronous I/O */

static int64_t file_size(FileState *s)
{
    if (s->is_blockdev) {
        uint64_t n;
        if (ioctl(s->fd, BLKGETSIZE64, &n) < 0)
            return -errno;
        return (int64_t)n;
    }
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return -errno;
    return st.st_size;
}

/* Reads all of [offset, offset+bytes); zeros beyond the end of the file. */
static int file_sync_read(FileState *s, int64_t offset, int64_t bytes, uint8_t *buf)
{
    while (bytes > 0) {
        ssize_t r = pread(s->fd, buf, (size_t)bytes, offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EINVAL && s->direct) {
            /* An unaligned remainder after a short O_DIRECT read: only legitimate at end of file. */
            int64_t size = file_size(s);
            if (size >= 0 && offset >= size)
                r = 0;
            else
                return -EINVAL;
        } else if (r < 0) {
            return -errno;
        }
        if (r == 0) {
            memset(buf, 0, (size_t)bytes);
            return 0;
        }
        buf += r;
        offset += r;
        bytes -= r;
    }
    return 0;
}

static int file_sync_write(FileState *s, int64_t offset, int64_t bytes, const uint8_t *buf)
{
    while (bytes > 0) {
        ssize_t r = pwrite(s->fd, buf, (size_t)bytes, offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -EIO;
        buf += r;
        offset += r;
        bytes -= r;
    }
    return 0;
}

/* ---------------------------------------------------------------- libaio */

static int aio_pool_init(FileState *s, const char *filename)
{
    s->aio = calloc(AIO_CONTEXTS, sizeof(*s->aio));
    if (!s->aio)
        return -ENOMEM;
    for (int i = 0; i < AIO_CONTEXTS; i++) {
        pthread_mutex_init(&s->aio[i].lock, NULL);
        int r = io_setup(AIO_DEPTH, &s->aio[i].ctx);
        if (r < 0) {
            if (i == 0) {
                log_msg("%s: io_setup failed (%s); using synchronous I/O", filename, strerror(-r));
                pthread_mutex_destroy(&s->aio[i].lock);
                free(s->aio);
                s->aio = NULL;
                return 0;
            }
            break;
        }
        s->aio[i].ready = true;
    }
    return 0;
}

static void aio_pool_free(FileState *s)
{
    if (!s->aio)
        return;
    for (int i = 0; i < AIO_CONTEXTS; i++) {
        if (s->aio[i].ready)
            io_destroy(s->aio[i].ctx);
        pthread_mutex_destroy(&s->aio[i].lock);
    }
    free(s->aio);
    s->aio = NULL;
}

/* A free context if one is idle, else wait for one (round robin). Returned locked. */
static FileAio *aio_acquire(FileState *s)
{
    for (int i = 0; i < AIO_CONTEXTS; i++)
        if (s->aio[i].ready && pthread_mutex_trylock(&s->aio[i].lock) == 0)
            return &s->aio[i];
    unsigned start = __atomic_fetch_add(&s->aio_next, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < AIO_CONTEXTS; i++) {
        FileAio *a = &s->aio[(start + (unsigned)i) % AIO_CONTEXTS];
        if (a->ready) {
            pthread_mutex_lock(&a->lock);
            return a;
        }
    }
    return NULL;
}

/* Submits up to AIO_DEPTH extents in one io_submit and reaps them all; short transfers are finished
 * synchronously (a short read at the end of the file fills zeros). */
static int aio_batch(FileState *s, FileAio *a, bool write, const BlockExtent *ext, int n)
{
    struct iocb cbs[AIO_DEPTH], *ptrs[AIO_DEPTH];
    struct io_event events[AIO_DEPTH];
    for (int i = 0; i < n; i++) {
        if (write)
            io_prep_pwrite(&cbs[i], s->fd, ext[i].buf, (size_t)ext[i].bytes, ext[i].offset);
        else
            io_prep_pread(&cbs[i], s->fd, ext[i].buf, (size_t)ext[i].bytes, ext[i].offset);
        cbs[i].data = (void *)&ext[i];
        ptrs[i] = &cbs[i];
    }
    int submitted = 0;
    while (submitted < n) {
        int r = io_submit(a->ctx, n - submitted, ptrs + submitted);
        if (r == -EINTR || r == -EAGAIN)
            continue;
        if (r < 0) {
            if (submitted == 0)
                return r;
            break; /* reap what is in flight, then fail */
        }
        submitted += r;
    }
    int done = 0, ret = submitted < n ? -EIO : 0;
    while (done < submitted) {
        int r = io_getevents(a->ctx, 1, submitted - done, events, NULL);
        if (r == -EINTR)
            continue;
        if (r < 0)
            return r;
        for (int i = 0; i < r; i++) {
            const BlockExtent *e = events[i].data;
            long res = (long)events[i].res;
            if (res < 0) {
                if (ret == 0)
                    ret = (int)res;
            } else if (res < e->bytes && ret == 0) {
                uint8_t *p = (uint8_t *)e->buf + res;
                ret = write ? file_sync_write(s, e->offset + res, e->bytes - res, p)
                            : file_sync_read(s, e->offset + res, e->bytes - res, p);
            }
        }
        done += r;
    }
    return ret;
}

static int file_aio(FileState *s, bool write, const BlockExtent *ext, int n)
{
    FileAio *a = aio_acquire(s);
    if (!a)
        return -EIO;
    int r = 0;
    for (int i = 0; i < n && r == 0; i += AIO_DEPTH)
        r = aio_batch(s, a, write, ext + i, MIN(n - i, AIO_DEPTH));
    pthread_mutex_unlock(&a->lock);
    return r;
}

/* ---------------------------------------------------------------- driver: I/O */

static int file_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    FileState *s = bs->opaque;
    if (s->aio) {
        BlockExtent e = { offset, bytes, buf };
        return file_aio(s, false, &e, 1);
    }
    return file_sync_read(s, offset, bytes, buf);
}

static int file_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    FileState *s = bs->opaque;
    int r;
    if (s->aio) {
        BlockExtent e = { offset, bytes, (void *)buf };
        r = file_aio(s, true, &e, 1);
    } else {
        r = file_sync_write(s, offset, bytes, buf);
    }
    if (r == 0 && (flags & BDRV_REQ_FUA) && !s->unsafe && fdatasync(s->fd) < 0)
        r = -errno;
    return r;
}

static int file_read_extents(BlockNode *bs, const BlockExtent *ext, int n)
{
    FileState *s = bs->opaque;
    if (s->aio)
        return file_aio(s, false, ext, n);
    for (int i = 0; i < n; i++) {
        int r = file_sync_read(s, ext[i].offset, ext[i].bytes, ext[i].buf);
        if (r < 0)
            return r;
    }
    return 0;
}

static int file_write_extents(BlockNode *bs, const BlockExtent *ext, int n, int flags)
{
    FileState *s = bs->opaque;
    int r = 0;
    if (s->aio) {
        r = file_aio(s, true, ext, n);
    } else {
        for (int i = 0; i < n && r == 0; i++)
            r = file_sync_write(s, ext[i].offset, ext[i].bytes, ext[i].buf);
    }
    if (r == 0 && (flags & BDRV_REQ_FUA) && !s->unsafe && fdatasync(s->fd) < 0)
        r = -errno;
    return r;
}

static int file_punch(FileState *s, int64_t offset, int64_t bytes)
{
    if (!cap_get(&s->can_punch))
        return -ENOTSUP;
    if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes) == 0)
        return 0;
    if (errno == EOPNOTSUPP || errno == ENOSYS) {
        cap_drop(&s->can_punch);
        return -ENOTSUP;
    }
    return -errno;
}

static int file_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    return file_punch(bs->opaque, offset, bytes);
}

static int file_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    FileState *s = bs->opaque;
    int64_t size = file_size(s);
    bool inside = size >= 0 && offset + bytes <= size;
    int r = -ENOTSUP;
    if ((flags & BDRV_REQ_MAY_UNMAP) && inside) {
        r = file_punch(s, offset, bytes);
        if (r != -ENOTSUP)
            return r;
    }
    if (cap_get(&s->can_zero_range)) {
        if (fallocate(s->fd, FALLOC_FL_ZERO_RANGE, offset, bytes) == 0)
            return 0;
        if (errno != EOPNOTSUPP && errno != ENOSYS)
            return -errno;
        cap_drop(&s->can_zero_range);
    }
    if ((flags & BDRV_REQ_MAY_UNMAP) && !inside && size >= 0 && offset >= size && !s->is_blockdev) {
        /* Entirely beyond the end: growing the file leaves a hole that reads as zeros. */
        if (ftruncate(s->fd, offset + bytes) == 0)
            return 0;
    }
    return -ENOTSUP; /* the core writes zero buffers unless NO_FALLBACK */
}

static int file_flush(BlockNode *bs)
{
    FileState *s = bs->opaque;
    if (s->unsafe)
        return 0;
    if (fdatasync(s->fd) < 0)
        return -errno;
    return 0;
}

static int file_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    FileState *s = bs->opaque;
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    st->bytes = bytes;
    st->host_offset = offset;
    st->host_file = bs;
    if (s->is_blockdev)
        return 0;
    off_t data = lseek(s->fd, offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) { /* only a hole up to the end */
            st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
            return 0;
        }
        return 0; /* SEEK_DATA unsupported: all data */
    }
    if (data > offset) {
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->bytes = MIN(bytes, data - offset);
        return 0;
    }
    off_t hole = lseek(s->fd, offset, SEEK_HOLE);
    if (hole > offset)
        st->bytes = MIN(bytes, hole - offset);
    return 0;
}

static int file_get_fd(BlockNode *bs)
{
    FileState *s = bs->opaque;
    return s->direct ? -ENOTSUP : s->fd;
}

static int64_t file_getlength(BlockNode *bs)
{
    return file_size(bs->opaque);
}

static int64_t file_get_allocated_size(BlockNode *bs)
{
    FileState *s = bs->opaque;
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return -errno;
    if (s->is_blockdev)
        return file_size(s);
    return (int64_t)st.st_blocks * 512;
}

static int file_truncate(BlockNode *bs, int64_t size)
{
    FileState *s = bs->opaque;
    if (s->is_blockdev)
        return file_size(s) == size ? 0 : -ENOTSUP;
    if (ftruncate(s->fd, size) < 0)
        return -errno;
    return 0;
}

static bool file_has_zero_init(BlockNode *bs)
{
    FileState *s = bs->opaque;
    return !s->is_blockdev;
}

/* ---------------------------------------------------------------- QEMU-compatible image locks */

/*
 * QEMU (checked with qemu-io 7.2 and /proc/locks) takes shared OFD locks on single bytes of the image
 * file: 100+N for each permission N it holds, 200+N for each permission it does not share (N: 0
 * consistent read, 1 write, 2 write unchanged, 3 resize). qcow2 read-write holds 100, 101, 103 and
 * unshares 201, 203; qcow2 read-only holds 100 and unshares 201, 203; raw holds 100 (+101 read-write)
 * and shares everything. A conflict is a lock byte held by another open file description: one of our
 * held permissions at 200+N, or one of our unshared permissions at 100+N. The core chooses the sets
 * (lib/open.c); this driver only takes and checks them.
 */
#define LOCK_PERM_BASE 100
#define LOCK_UNSHARED_BASE 200
#define LOCK_NPERMS 4

static int ofd_rdlock(int fd, int64_t byte)
{
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

static void ofd_unlock(int fd, int64_t byte)
{
    struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    fcntl(fd, F_OFD_SETLK, &fl);
}

/* True if another open file description holds a lock on byte. */
static bool ofd_held_by_other(int fd, int64_t byte)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return false;
    return fl.l_type != F_UNLCK;
}

static int lock_conflict(Error *err, const char *name, const char *why)
{
    error_set(err, EBUSY, "%s: image is in use by another process %s (QEMU lock); use --force-share to open it "
              "read-only", name, why);
    return -EBUSY;
}

static void file_unlock_all(FileState *s)
{
    for (int n = 0; n < LOCK_NPERMS; n++) {
        ofd_unlock(s->fd, LOCK_PERM_BASE + n);
        ofd_unlock(s->fd, LOCK_UNSHARED_BASE + n);
    }
}

static int file_set_perm(BlockNode *bs, unsigned held, unsigned unshared, Error *err)
{
    FileState *s = bs->opaque;
    if (s->is_blockdev)
        return 0;
    file_unlock_all(s);
    for (int n = 0; n < LOCK_NPERMS; n++) {
        int r = 0;
        if (held & (1u << n))
            r = ofd_rdlock(s->fd, LOCK_PERM_BASE + n);
        if (r == 0 && (unshared & (1u << n)))
            r = ofd_rdlock(s->fd, LOCK_UNSHARED_BASE + n);
        if (r == -EAGAIN || r == -EACCES) {
            file_unlock_all(s);
            return lock_conflict(err, bs->filename, "that excludes others");
        }
        if (r < 0) {
            log_debug("%s: no image locking on this file system (%s)", bs->filename, strerror(-r));
            file_unlock_all(s);
            return 0;
        }
    }
    const char *why = NULL;
    if ((unshared & BDRV_PERM_CONSISTENT_READ) && ofd_held_by_other(s->fd, LOCK_PERM_BASE))
        why = "(it is mounted, or open in QEMU)";
    else if ((unshared & BDRV_PERM_WRITE) && ofd_held_by_other(s->fd, LOCK_PERM_BASE + 1))
        why = "for writing";
    else if ((unshared & BDRV_PERM_RESIZE) && ofd_held_by_other(s->fd, LOCK_PERM_BASE + 3))
        why = "that may resize it";
    else if ((held & BDRV_PERM_WRITE) && ofd_held_by_other(s->fd, LOCK_UNSHARED_BASE + 1))
        why = "that does not allow writers";
    for (int n = 0; n < LOCK_NPERMS && !why; n++)
        if ((held & (1u << n)) && ofd_held_by_other(s->fd, LOCK_UNSHARED_BASE + n))
            why = "that does not share the image";
    if (why) {
        file_unlock_all(s);
        return lock_conflict(err, bs->filename, why);
    }
    return 0;
}

/* ---------------------------------------------------------------- open, close, create */

/* The O_DIRECT alignment of the open file: the device's logical block size, statx's DIO alignment, or
 * a probing read (512 first, then 4096). */
static uint32_t discover_alignment(FileState *s)
{
    if (s->is_blockdev) {
        int ssz = 0;
        if (ioctl(s->fd, BLKSSZGET, &ssz) == 0 && ssz > 0 && is_pow2((uint64_t)ssz))
            return (uint32_t)ssz;
        return 4096;
    }
    struct statx stx;
    if (statx(s->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) &&
        stx.stx_dio_offset_align > 0) {
        uint32_t a = MAX(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
        if (is_pow2(a))
            return a;
    }
    void *buf = aligned_alloc_zero(4096);
    uint32_t align = 4096;
    if (buf) {
        ssize_t r = pread(s->fd, buf, 512, 0);
        if (r > 0)
            align = 512;
        free(buf);
    }
    return align;
}

static int file_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    FileState *s = bs->opaque;
    const char *name = bs->filename;
    struct stat st;
    if (stat(name, &st) < 0) {
        error_set(err, errno, "%s", strerror(errno));
        return -errno;
    }
    if (S_ISDIR(st.st_mode)) {
        error_set(err, EISDIR, "%s", strerror(EISDIR));
        return -EISDIR;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        error_set(err, EINVAL, "not a regular file or block device");
        return -EINVAL;
    }
    bool want_direct = opts && (opts->cache == CACHE_NONE || opts->aio == AIO_NATIVE);
    int flags = (bs->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY | (want_direct ? O_DIRECT : 0);
    s->fd = open(name, flags);
    if (s->fd < 0) {
        int e = errno;
        if (e == EINVAL && want_direct)
            error_set(err, e, "the file system does not support O_DIRECT (--cache=none)");
        else
            error_set(err, e, "%s", strerror(e));
        return -e;
    }
    if (fstat(s->fd, &st) < 0 || (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))) {
        error_set(err, EINVAL, "not a regular file or block device");
        close(s->fd);
        return -EINVAL;
    }
    s->is_blockdev = S_ISBLK(st.st_mode);
    s->direct = want_direct;
    s->unsafe = opts && opts->cache == CACHE_UNSAFE;
    s->can_punch = s->can_zero_range = !bs->read_only;
    if (s->direct)
        bs->request_alignment = discover_alignment(s);
    bs->max_transfer = FILE_MAX_TRANSFER;
    if (opts && opts->aio == AIO_NATIVE) {
        int r = aio_pool_init(s, name);
        if (r < 0) {
            error_set(err, -r, "%s", strerror(-r));
            close(s->fd);
            return r;
        }
    }
    return 0;
}

static void file_close(BlockNode *bs)
{
    FileState *s = bs->opaque;
    aio_pool_free(s);
    close(s->fd);
}

static int file_create(const char *filename, const CreateOpts *opts, Error *err)
{
    int fd = open(filename, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        error_set(err, errno, "%s: %s", filename, strerror(errno));
        return -errno;
    }
    int r = 0;
    if (opts->size > 0 && ftruncate(fd, opts->size) < 0) {
        r = -errno;
        error_set(err, errno, "%s: %s", filename, strerror(errno));
    }
    close(fd);
    return r;
}

static void file_get_info(BlockNode *bs, InfoList *info)
{
    FileState *s = bs->opaque;
    info_add_str(info, "host_type", "%s", s->is_blockdev ? "block device" : "regular file");
    if (s->direct)
        info_add_int(info, "direct_io_alignment", bs->request_alignment);
    info_add_str(info, "aio", "%s", s->aio ? "native" : "threads");
}

const BlockDriver bdrv_file = {
    .name = "file",
    .instance_size = sizeof(FileState),
    .is_protocol = true,
    .open = file_open,
    .close = file_close,
    .read = file_read,
    .write = file_write,
    .read_extents = file_read_extents,
    .write_extents = file_write_extents,
    .get_fd = file_get_fd,
    .write_zeroes = file_write_zeroes,
    .discard = file_discard,
    .flush = file_flush,
    .block_status = file_block_status,
    .getlength = file_getlength,
    .get_allocated_size = file_get_allocated_size,
    .truncate = file_truncate,
    .get_info = file_get_info,
    .create = file_create,
    .has_zero_init = file_has_zero_init,
    .set_perm = file_set_perm,
};
