/* SPDX-License-Identifier: MIT */
/*
 * ewf.c - the "ewf" format driver: Expert Witness (EnCase E01, SMART S01: EWF version 1; EWF2 Ex01 and the
 * logical L01/Lx01, which hold files, are refused by name) evidence files, read through
 * libewf, never parsed here.  The image named is the first segment; the rest of the series is found with
 * libewf's glob, and each name it returns must pass the backing-name policy (inside the image's directory
 * or a --backing-dir, a regular file, never the same file twice) before it is opened, read-only, as a
 * protocol node of the core: libewf reads every segment through a libbfio handle whose callbacks call
 * bdrv_pread, so it never opens a file itself.  libewf handles are not thread-safe: the node keeps a few
 * (one per concurrent reader, opened on demand), each behind its own lock.  Whole chunks are read raw
 * (libewf_handle_read_chunk, under the handle's lock) and inflated and checked (Adler-32) by libdeflate
 * (chunk_inflate_zlib) outside it, FUSE threads in parallel; a chunk this fast path cannot decode and verify is read again
 * through libewf_handle_read_random, whose verdict stands.  A chunk whose checksum fails
 * reads as EIO (the core then lists it under --on-read-error=zero).  Read-only always: writes go to an
 * --overlay.  Acquisition metadata, the stored MD5/SHA1 and the segment files are told in info and facts.
 * It knows nothing of other formats, of FUSE or of what the hashes are used for.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <libbfio.h>
#include <libdeflate.h>
#define LIBEWF_HAVE_BFIO 1 /* declares libewf_handle_open_file_io_pool */
#include <libewf.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EWF_MAX_SEGMENTS 14971             /* .E01 ... .EZZ ... .ZZZ: the most a series can name */
#define EWF_MAX_CHUNK_SIZE (64u << 20)     /* a chunk is decompressed whole: refuse larger ones */
#define EWF_MAX_BAD_CHUNKS (1u << 20)      /* chunks remembered as failing their checksum (8 MiB) */
#define EWF_VALUE_MAX 1024                 /* longest header value shown in info */
/* libewf 20140813 leaks the buffer of some chunks it fails to read (a chunk past the end of a truncated
 * segment, for one): a chunk that failed is never asked for again, and after this many bytes of failed
 * chunks the node stops asking libewf for chunks not read before (EIO, logged once). */
#define EWF_MAX_FAILED_BYTES (64u << 20)
/* Chunks up to this size take the fast path (per FUSE thread: a raw and a decoded buffer of a chunk). */
#define EWF_FAST_MAX_CHUNK (1u << 20)

typedef struct EwfWorker {                 /* one per concurrent reader (each caches its own chunks) */
    libewf_handle_t *h;
    libbfio_pool_t *pool;
    uint32_t seen_errors;                  /* libewf's checksum error count after this worker's last read */
} EwfWorker;

typedef struct EwfState {
    BlockNode **segs;                      /* segs[0] = bs->file (not owned); the others opened here */
    char **names;                          /* their file names (facts.files) */
    int n_segs;
    uint64_t media_size;
    uint32_t chunk_size;
    uint8_t format;
    char md5[33], sha1[41];

    EwfWorker workers[WORKER_POOL_MAX];
    WorkerPool *pool;

    pthread_mutex_t bad_lock;              /* the chunks known to fail their checksum, sorted */
    uint64_t *bad;
    uint32_t n_bad, cap_bad;
    bool bad_overflow;                     /* more than EWF_MAX_BAD_CHUNKS: ask libewf every time */
    uint64_t failed_bytes;                 /* chunk bytes libewf failed to read (and leaked), bad_lock */
    bool gave_up_logged;
} EwfState;

/* The leak above, and libewf's small leak of a table section's lists when an open fails, told to
 * LeakSanitizer (sanitizer builds, fuzz targets): bounded here, not ours to report. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EWF_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(EWF_ASAN)
const char *__lsan_default_options(void);
const char *__lsan_default_options(void)
{
    return "print_suppressions=0"; /* a refusal stays one line */
}

const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    /* libewf is built without frame pointers: its allocating frame is all a report shows */
    return "leak:libewf_chunk_data_initialize\n"
           "leak:libmfdata_group_initialize\n"
           "leak:libmfdata_list_element_initialize\n"
           "leak:libmfdata_range_initialize\n";
}
#endif

/* ---------------------------------------------------------------- libbfio handles over core nodes */

typedef struct EwfIo {
    BlockNode *node;
    int64_t pos, size;
} EwfIo;

static int ewf_io_free(intptr_t **io, libbfio_error_t **e)
{
    (void)e;
    free(*io);
    *io = NULL;
    return 1;
}

static int ewf_io_clone(intptr_t **dst, intptr_t *src, libbfio_error_t **e)
{
    (void)e;
    EwfIo *c = malloc(sizeof *c);
    if (!c)
        return -1;
    *c = *(EwfIo *)src;
    *dst = (intptr_t *)c;
    return 1;
}

static int ewf_io_open(intptr_t *io, int flags, libbfio_error_t **e)
{
    (void)e;
    (void)io;
    return (flags & LIBBFIO_ACCESS_FLAG_WRITE) ? -1 : 1;
}

static int ewf_io_close(intptr_t *io, libbfio_error_t **e)
{
    (void)io;
    (void)e;
    return 0;
}

static ssize_t ewf_io_read(intptr_t *io, uint8_t *buf, size_t size, libbfio_error_t **e)
{
    (void)e;
    EwfIo *f = (EwfIo *)io;
    int64_t n = MIN((int64_t)MIN(size, (size_t)INT32_MAX), MAX(f->size - f->pos, 0));
    if (n > 0 && bdrv_pread(f->node, f->pos, n, buf) < 0)
        return -1;
    f->pos += n;
    return (ssize_t)n;
}

static ssize_t ewf_io_write(intptr_t *io, const uint8_t *buf, size_t size, libbfio_error_t **e)
{
    (void)io, (void)buf, (void)size, (void)e;
    return -1;
}

static off64_t ewf_io_seek(intptr_t *io, off64_t offset, int whence, libbfio_error_t **e)
{
    (void)e;
    EwfIo *f = (EwfIo *)io;
    int64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? f->pos : whence == SEEK_END ? f->size : -1;
    int64_t to;
    if (base < 0 || !add_ok_i64(base, offset, &to) || to < 0)
        return -1;
    f->pos = to;
    return to;
}

static int ewf_io_yes(intptr_t *io, libbfio_error_t **e)
{
    (void)io, (void)e;
    return 1;
}

static int ewf_io_size(intptr_t *io, size64_t *size, libbfio_error_t **e)
{
    (void)e;
    *size = (size64_t)((EwfIo *)io)->size;
    return 1;
}

/* A pool of one libbfio handle per segment, for one libewf handle. NULL when out of memory. */
static libbfio_pool_t *ewf_pool_new(EwfState *s)
{
    libbfio_pool_t *pool = NULL;
    if (libbfio_pool_initialize(&pool, 0, LIBBFIO_POOL_UNLIMITED_NUMBER_OF_OPEN_HANDLES, NULL) != 1)
        return NULL;
    for (int i = 0; i < s->n_segs; i++) {
        EwfIo *io = malloc(sizeof *io);
        libbfio_handle_t *h = NULL;
        int entry;
        if (io) {
            io->node = s->segs[i];
            io->pos = 0;
            io->size = bdrv_getlength(s->segs[i]);
        }
        if (!io || io->size < 0 ||
            libbfio_handle_initialize(&h, (intptr_t *)io, ewf_io_free, ewf_io_clone, ewf_io_open, ewf_io_close,
                                      ewf_io_read, ewf_io_write, ewf_io_seek, ewf_io_yes, ewf_io_yes, ewf_io_size,
                                      LIBBFIO_FLAG_IO_HANDLE_MANAGED | LIBBFIO_FLAG_IO_HANDLE_CLONE_BY_FUNCTION,
                                      NULL) != 1) {
            free(io);
            libbfio_pool_free(&pool, NULL);
            return NULL;
        }
        if (libbfio_pool_append_handle(pool, &entry, h, LIBBFIO_OPEN_READ, NULL) != 1) {
            libbfio_handle_free(&h, NULL);
            libbfio_pool_free(&pool, NULL);
            return NULL;
        }
    }
    return pool;
}

/* ---------------------------------------------------------------- libewf handles (workers) */

/* libewf's innermost message (the most specific), then the error freed. */
static void ewf_error_text(libewf_error_t **e, char *out, size_t len)
{
    snprintf(out, len, "libewf gave no reason");
    if (!e || !*e)
        return;
    char buf[2048];
    if (libewf_error_sprint(*e, buf, sizeof buf) > 0) {
        buf[MIN(strcspn(buf, "\n"), len - 1)] = '\0';
        memcpy(out, buf, strlen(buf) + 1);
    }
    libewf_error_free(e);
}

static int ewf_worker_open(EwfState *s, EwfWorker *w, char *why, size_t whylen)
{
    libewf_error_t *e = NULL;
    w->pool = ewf_pool_new(s);
    if (!w->pool) {
        snprintf(why, whylen, "%s", strerror(ENOMEM));
        return -ENOMEM;
    }
    if (libewf_handle_initialize(&w->h, &e) != 1 ||
        libewf_handle_open_file_io_pool(w->h, w->pool, LIBEWF_OPEN_READ, &e) != 1) {
        ewf_error_text(&e, why, whylen);
        if (w->h) {
            libewf_handle_close(w->h, NULL);
            libewf_handle_free(&w->h, NULL);
        }
        libbfio_pool_free(&w->pool, NULL);
        return -EINVAL;
    }
    w->seen_errors = 0;
    return 0;
}

static void ewf_worker_close(EwfWorker *w)
{
    if (w->h) {
        libewf_handle_close(w->h, NULL);
        libewf_handle_free(&w->h, NULL);
    }
    if (w->pool)
        libbfio_pool_free(&w->pool, NULL);
}

/* The worker pool's open callback: worker i of the node (its reason is not needed after open). */
static int ewf_worker_open_at(void *ctx, int i)
{
    EwfState *s = ctx;
    char why[256];
    return ewf_worker_open(s, &s->workers[i], why, sizeof why);
}

/* ---------------------------------------------------------------- chunks failing their checksum */

/* Index of the first entry >= chunk in the sorted list (bad_lock held). */
static uint32_t ewf_bad_find(const EwfState *s, uint64_t chunk)
{
    uint32_t lo = 0, hi = s->n_bad;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->bad[mid] < chunk)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool ewf_bad_has(EwfState *s, uint64_t chunk)
{
    pthread_mutex_lock(&s->bad_lock);
    uint32_t i = ewf_bad_find(s, chunk);
    bool has = i < s->n_bad && s->bad[i] == chunk;
    pthread_mutex_unlock(&s->bad_lock);
    return has;
}

/* May libewf have merged chunk into a range it already lists (a neighbour known bad, or the list full)? */
static bool ewf_bad_near(EwfState *s, uint64_t chunk)
{
    pthread_mutex_lock(&s->bad_lock);
    uint32_t i = ewf_bad_find(s, chunk ? chunk - 1 : 0);
    bool near = s->bad_overflow || (i < s->n_bad && s->bad[i] <= chunk + 1);
    pthread_mutex_unlock(&s->bad_lock);
    return near;
}

static void ewf_bad_add(BlockNode *bs, EwfState *s, uint64_t chunk, const char *what)
{
    pthread_mutex_lock(&s->bad_lock);
    uint32_t i = ewf_bad_find(s, chunk);
    if (i < s->n_bad && s->bad[i] == chunk) {
        pthread_mutex_unlock(&s->bad_lock);
        return;
    }
    if (s->n_bad == s->cap_bad && s->cap_bad < EWF_MAX_BAD_CHUNKS) {
        uint32_t cap = s->cap_bad ? MIN(s->cap_bad * 2, EWF_MAX_BAD_CHUNKS) : 64;
        uint64_t *nb = realloc(s->bad, cap * sizeof *nb);
        if (nb) {
            s->bad = nb;
            s->cap_bad = cap;
        }
    }
    s->failed_bytes += s->chunk_size;
    if (s->n_bad < s->cap_bad) {
        memmove(s->bad + i + 1, s->bad + i, (s->n_bad - i) * sizeof *s->bad);
        s->bad[i] = chunk;
        s->n_bad++;
    } else {
        s->bad_overflow = true;
    }
    pthread_mutex_unlock(&s->bad_lock);
    uint64_t off = chunk * s->chunk_size;
    log_msg("%s: chunk %" PRIu64 " (bytes %" PRIu64 "-%" PRIu64 ") %s: read as EIO", bs->node_name, chunk, off,
            MIN(off + s->chunk_size, s->media_size) - 1, what);
}

/* Does w's libewf handle list [first, first+count) sectors among its checksum errors? */
static bool ewf_listed(EwfWorker *w, uint64_t first, uint64_t count, uint32_t n_errors)
{
    for (uint32_t i = 0; i < n_errors; i++) {
        uint64_t start = 0, n = 0;
        if (libewf_handle_get_checksum_error(w->h, i, &start, &n, NULL) == 1 && ranges_overlap(start, n, first, count))
            return true;
    }
    return false;
}

/* ---------------------------------------------------------------- the driver */

static int ewf_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    static const uint8_t evf[8] = { 'E', 'V', 'F', 0x09, 0x0d, 0x0a, 0xff, 0x00 };
    return len >= sizeof evf && memcmp(buf, evf, sizeof evf) == 0 ? 100 : 0;
}

/* Reads one piece within chunk through w: 0, or -EIO when libewf fails or the chunk fails its checksum. */
static int ewf_read_in_chunk(BlockNode *bs, EwfState *s, EwfWorker *w, uint64_t chunk, int64_t offset,
                             int64_t bytes, void *buf)
{
    libewf_error_t *e = NULL;
    ssize_t got = libewf_handle_read_random(w->h, buf, (size_t)bytes, offset, &e);
    if (got != (ssize_t)bytes) {
        char why[256];
        ewf_error_text(&e, why, sizeof why);
        log_msg("%s: cannot read bytes %" PRId64 "-%" PRId64 ": %s", bs->node_name, offset, offset + bytes - 1, why);
        ewf_bad_add(bs, s, chunk, "cannot be read");
        return -EIO;
    }
    uint32_t n_errors = 0;
    if (libewf_handle_get_number_of_checksum_errors(w->h, &n_errors, NULL) != 1)
        return -EIO;
    bool bad = n_errors != w->seen_errors; /* libewf listed (or merged in) a new failing chunk */
    w->seen_errors = n_errors;
    if (!bad && n_errors && ewf_bad_near(s, chunk)) {
        uint64_t spc = s->chunk_size / 512 ? s->chunk_size / 512 : 1;
        bad = ewf_listed(w, chunk * spc, spc, n_errors);
    }
    if (bad) {
        ewf_bad_add(bs, s, chunk, "fails its checksum");
        return -EIO;
    }
    return 0;
}

/* Past EWF_MAX_FAILED_BYTES of chunks libewf could not read, libewf is asked for nothing more. */
static bool ewf_gave_up(BlockNode *bs, EwfState *s)
{
    pthread_mutex_lock(&s->bad_lock);
    bool gave_up = s->failed_bytes >= EWF_MAX_FAILED_BYTES;
    bool first = gave_up && !s->gave_up_logged;
    s->gave_up_logged |= gave_up;
    pthread_mutex_unlock(&s->bad_lock);
    if (first)
        log_msg("%s: libewf failed to read %u MiB of chunks: chunks not read yet now read as EIO", bs->node_name,
                EWF_MAX_FAILED_BYTES >> 20);
    return gave_up;
}

/* ---------------------------------------------------------------- the fast path: raw chunks, libdeflate */

/* Per-thread buffers of the fast path, freed when the thread exits. */
typedef struct EwfScratch {
    uint8_t *raw, *chunk;   /* a stored chunk (2 chunk sizes + 64) and a decoded one (a chunk size) */
    size_t raw_cap, chunk_cap;
} EwfScratch;

static pthread_key_t ewf_scratch_key;
static pthread_once_t ewf_scratch_once = PTHREAD_ONCE_INIT;
static bool ewf_scratch_key_ok;

static void ewf_scratch_free(void *p)
{
    EwfScratch *sc = p;
    if (sc) {
        free(sc->raw);
        free(sc->chunk);
    }
    free(sc);
}

static void ewf_scratch_key_create(void)
{
    ewf_scratch_key_ok = pthread_key_create(&ewf_scratch_key, ewf_scratch_free) == 0;
}

/* This thread's buffers for chunks of chunk_size, or NULL (then the slow path is used). */
static EwfScratch *ewf_scratch(uint32_t chunk_size)
{
    pthread_once(&ewf_scratch_once, ewf_scratch_key_create);
    if (!ewf_scratch_key_ok)
        return NULL;
    EwfScratch *sc = pthread_getspecific(ewf_scratch_key);
    if (!sc && (sc = calloc(1, sizeof(*sc))) && pthread_setspecific(ewf_scratch_key, sc) != 0) {
        free(sc);
        return NULL;
    }
    if (!sc)
        return NULL;
    size_t raw = 2 * (size_t)chunk_size + 64;
    if (sc->raw_cap < raw || sc->chunk_cap < chunk_size) {
        free(sc->raw);
        free(sc->chunk);
        sc->raw = malloc(raw);
        sc->chunk = malloc(chunk_size);
        sc->raw_cap = sc->raw && sc->chunk ? raw : 0;
        sc->chunk_cap = sc->raw && sc->chunk ? chunk_size : 0;
        if (!sc->raw_cap)
            return NULL;
    }
    return sc;
}

/* Checks and decodes a stored chunk into dst (want bytes): true only when it inflates to exactly want
 * bytes with a matching Adler-32, or is stored whole with a matching Adler-32 checksum. */
static bool ewf_decode_stored(EwfScratch *sc, ssize_t got, int8_t compressed, int8_t has_checksum,
                              uint32_t checksum, uint8_t *dst, size_t want)
{
    if (compressed)
        return chunk_inflate_zlib(sc->raw, (size_t)got, dst, want) == 0;
    if (!has_checksum) {   /* the checksum follows the data, little-endian */
        if ((size_t)got < want + 4)
            return false;
        const uint8_t *c = sc->raw + want;
        checksum = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 | (uint32_t)c[3] << 24;
    }
    if ((size_t)got < want || libdeflate_adler32(1, sc->raw, want) != checksum)
        return false;
    memcpy(dst, sc->raw, want);
    return true;
}

/* Reads [offset, offset+n) of chunk by the fast path: 0, or 1 when it cannot (the caller reads it
 * through libewf_handle_read_random). Only the raw read holds a worker; the decoding runs unlocked. */
static int ewf_read_fast(EwfState *s, uint64_t chunk, int64_t offset, int64_t n, uint8_t *p)
{
    EwfScratch *sc = s->chunk_size <= EWF_FAST_MAX_CHUNK ? ewf_scratch(s->chunk_size) : NULL;
    if (!sc)
        return 1;
    uint64_t start = chunk * s->chunk_size;
    size_t want = (size_t)MIN((uint64_t)s->chunk_size, s->media_size - start);
    int8_t compressed = 0, has_checksum = 0;
    uint32_t checksum = 0;
    uint8_t checksum_buf[4];
    int wi = worker_pool_get(s->pool);
    libewf_handle_t *h = s->workers[wi].h;
    ssize_t got = -1;
    if (libewf_handle_seek_offset(h, (off64_t)start, SEEK_SET, NULL) == (off64_t)start)
        got = libewf_handle_read_chunk(h, sc->raw, sc->raw_cap, &compressed, checksum_buf, &checksum, &has_checksum,
                                       NULL);
    worker_pool_put(s->pool, wi);
    if (got <= 0 || (size_t)got >= sc->raw_cap)
        return 1;
    bool whole = (size_t)n == want;
    uint8_t *dst = whole ? p : sc->chunk;
    if (!ewf_decode_stored(sc, got, compressed, has_checksum, checksum, dst, want))
        return 1;
    if (!whole)
        memcpy(p, sc->chunk + (offset - (int64_t)start), (size_t)n);
    return 0;
}

/* The slow path: the piece through libewf_handle_read_random, which decides on a bad chunk. */
static int ewf_read_slow(BlockNode *bs, EwfState *s, uint64_t chunk, int64_t offset, int64_t n, uint8_t *p)
{
    int wi = worker_pool_get(s->pool);
    int r = ewf_read_in_chunk(bs, s, &s->workers[wi], chunk, offset, n, p);
    worker_pool_put(s->pool, wi);
    return r;
}

static int ewf_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    EwfState *s = bs->opaque;
    int r = 0;
    uint8_t *p = buf;
    while (r == 0 && bytes > 0) {
        uint64_t chunk = (uint64_t)offset / s->chunk_size;
        int64_t n = MIN(bytes, (int64_t)((chunk + 1) * s->chunk_size) - offset);
        if (ewf_bad_has(s, chunk) || ewf_gave_up(bs, s))
            r = -EIO;
        else if (ewf_read_fast(s, chunk, offset, n, p) != 0)
            r = ewf_read_slow(bs, s, chunk, offset, n, p);
        offset += n;
        bytes -= n;
        p += n;
    }
    return r;
}

static int64_t ewf_getlength(BlockNode *bs)
{
    return (int64_t)((EwfState *)bs->opaque)->media_size;
}

/* The series' other segment files, by libewf's glob, each checked and opened read-only. */
static int ewf_open_segments(BlockNode *bs, EwfState *s, const BlockOpenOpts *opts, Error *err)
{
    char **names = NULL;
    int n = 0;
    libewf_error_t *e = NULL;
    bool memory = strcmp(bs->file->drv->name, "memory") == 0;
    if (memory || libewf_glob(bs->filename, strlen(bs->filename), LIBEWF_FORMAT_UNKNOWN, &names, &n, &e) != 1) {
        libewf_error_free(&e);
        n = 0; /* no series name (.E01): the file alone */
    }
    if (n > EWF_MAX_SEGMENTS) {
        error_set(err, EINVAL, "%d segment files: more than an EWF series can name (%d)", n, EWF_MAX_SEGMENTS);
        libewf_glob_free(names, n, NULL);
        return -EINVAL;
    }
    int total = MAX(n, 1);
    s->segs = calloc((size_t)total, sizeof *s->segs);
    s->names = calloc((size_t)total, sizeof *s->names);
    struct stat *ids = calloc((size_t)total, sizeof *ids);
    int r = 0;
    if (!s->segs || !s->names || !ids || !(s->names[0] = strdup(bs->filename))) {
        error_set(err, ENOMEM, "%s", strerror(ENOMEM));
        r = -ENOMEM;
    } else {
        s->segs[0] = bs->file;
        s->n_segs = 1;
    }
    if (r == 0 && n > 0) {
        struct stat st;
        if (stat(bs->filename, &ids[0]) < 0 || stat(names[0], &st) < 0 || st.st_dev != ids[0].st_dev ||
            st.st_ino != ids[0].st_ino) {
            error_set(err, EINVAL, "not the first segment of its series: open '%s'", names[0]);
            r = -EINVAL;
        }
    }
    for (int i = 1; r == 0 && i < n; i++) {
        const char *name = names[i], *why = bdrv_named_file_refusal(bs, opts, name);
        struct stat st;
        if (!why && stat(name, &st) < 0)
            why = strerror(errno);
        else if (!why && !S_ISREG(st.st_mode))
            why = "not a regular file";
        for (int j = 0; !why && j < i; j++)
            if (ids[j].st_dev == st.st_dev && ids[j].st_ino == st.st_ino)
                why = "it is the same file as an earlier segment (the series loops)";
        if (why) {
            error_set(err, EPERM, "segment file '%s' refused: %s", name, why);
            r = -EPERM;
            break;
        }
        ids[i] = st;
        s->segs[i] = bdrv_open_file(name, opts, true, err);
        s->names[i] = strdup(name);
        if (!s->segs[i] || !s->names[i]) {
            r = s->segs[i] ? -ENOMEM : -(err->errnum ? err->errnum : EIO);
            s->n_segs = i + 1;
            break;
        }
        s->n_segs = i + 1;
    }
    free(ids);
    if (names)
        libewf_glob_free(names, n, NULL);
    return r;
}

static void ewf_close(BlockNode *bs)
{
    EwfState *s = bs->opaque;
    for (int i = 0; i < worker_pool_count(s->pool); i++)
        ewf_worker_close(&s->workers[i]);
    worker_pool_free(s->pool);
    for (int i = 1; s->segs && i < s->n_segs; i++)
        if (s->segs[i])
            bdrv_close(s->segs[i]);
    for (int i = 0; s->names && i < s->n_segs; i++)
        free(s->names[i]);
    free(s->segs);
    free(s->names);
    free(s->bad);
    pthread_mutex_destroy(&s->bad_lock);
    memset(s, 0, sizeof *s);
}

static void ewf_hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
    out[2 * n] = '\0';
}

/* Media size, chunk size, format and stored hashes from worker 0's handle. */
static int ewf_read_media(EwfState *s, Error *err)
{
    libewf_handle_t *h = s->workers[0].h;
    size64_t media = 0;
    uint32_t chunk = 0;
    uint8_t md5[16], sha1[20];
    if (libewf_handle_get_media_size(h, &media, NULL) != 1 || libewf_handle_get_chunk_size(h, &chunk, NULL) != 1) {
        error_set(err, EINVAL, "EWF media size or chunk size unreadable");
        return -EINVAL;
    }
    if (chunk == 0 || chunk > EWF_MAX_CHUNK_SIZE || media > (uint64_t)INT64_MAX - EWF_MAX_CHUNK_SIZE) {
        error_set(err, EINVAL, "EWF chunk size %" PRIu32 " or media size %" PRIu64 " out of range (chunks of 1 byte "
                  "to %u MiB)", chunk, (uint64_t)media, EWF_MAX_CHUNK_SIZE >> 20);
        return -EINVAL;
    }
    s->media_size = media;
    s->chunk_size = chunk;
    libewf_handle_get_format(h, &s->format, NULL);
    if (libewf_handle_get_md5_hash(h, md5, sizeof md5, NULL) == 1)
        ewf_hex(md5, sizeof md5, s->md5);
    if (libewf_handle_get_sha1_hash(h, sha1, sizeof sha1, NULL) == 1)
        ewf_hex(sha1, sizeof sha1, s->sha1);
    return 0;
}

/*
 * The EWF variants libewf 20140813 does not read as a disk, refused by name from their signature: EWF2
 * (Ex01, Lx01: the library knows no EWF2 format, its glob no .Ex01 name) and logical evidence (L01: files
 * with their names and metadata, not a disk image; no Debian tool writes one).
 */
static int ewf_refuse_variant(BlockNode *bs, Error *err)
{
    static const struct { const char *magic, *why; } variants[] = {
        { "EVF2\x0d\x0a\x81\x00", "EWF2 (Ex01) evidence file: not readable (libewf 20140813 reads EWF version 1 "
          "only: E01, S01)" },
        { "LVF\x09\x0d\x0a\xff\x00", "logical evidence file (L01): holds files, not a disk image" },
        { "LEF2\x0d\x0a\x81\x00", "logical evidence file (Lx01): holds files, not a disk image" },
    };
    uint8_t magic[8];
    if (bdrv_getlength(bs->file) < (int64_t)sizeof magic || bdrv_pread(bs->file, 0, sizeof magic, magic) < 0)
        return 0; /* too short for any: libewf says why */
    for (size_t i = 0; i < ARRAY_SIZE(variants); i++) {
        if (memcmp(magic, variants[i].magic, sizeof magic) == 0) {
            error_set(err, ENOTSUP, "%s", variants[i].why);
            return -ENOTSUP;
        }
    }
    return 0;
}

static int ewf_open_node(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    EwfState *s = bs->opaque;
    pthread_mutex_init(&s->bad_lock, NULL);
    if (!(s->pool = worker_pool_new(ewf_worker_open_at, s))) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    int r = ewf_refuse_variant(bs, err);
    if (r < 0)
        return r;
    if (!bs->read_only) {
        error_set(err, EROFS, "EWF evidence files are read-only: mount without --rw (--overlay FILE gives a "
                  "writable view)");
        return -EROFS;
    }
    r = ewf_open_segments(bs, s, opts, err);
    if (r < 0)
        return r;
    char why[256];
    if ((r = ewf_worker_open(s, &s->workers[0], why, sizeof why)) < 0) {
        error_set(err, -r, "cannot open as EWF: %s", why);
        return r;
    }
    worker_pool_started(s->pool);
    return ewf_read_media(s, err);
}

/* The core does not call close after a failed open: undo what was done. */
static int ewf_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    int r = ewf_open_node(bs, opts, err);
    if (r < 0)
        ewf_close(bs);
    return r;
}

static const char *ewf_format_name(uint8_t f)
{
    switch (f) {
    case LIBEWF_FORMAT_ENCASE1: return "encase1";
    case LIBEWF_FORMAT_ENCASE2: return "encase2";
    case LIBEWF_FORMAT_ENCASE3: return "encase3";
    case LIBEWF_FORMAT_ENCASE4: return "encase4";
    case LIBEWF_FORMAT_ENCASE5: return "encase5";
    case LIBEWF_FORMAT_ENCASE6: return "encase6";
    case LIBEWF_FORMAT_ENCASE7: return "encase7";
    case LIBEWF_FORMAT_SMART: return "smart";
    case LIBEWF_FORMAT_FTK_IMAGER: return "ftk";
    case LIBEWF_FORMAT_LINEN5: return "linen5";
    case LIBEWF_FORMAT_LINEN6: return "linen6";
    case LIBEWF_FORMAT_LINEN7: return "linen7";
    case LIBEWF_FORMAT_EWF: return "ewf";
    case LIBEWF_FORMAT_EWFX: return "ewfx";
    default: return "unknown";
    }
}

static void ewf_info_header(libewf_handle_t *h, InfoList *info, const char *key, const char *id)
{
    uint8_t *v = malloc(EWF_VALUE_MAX);
    if (v && libewf_handle_get_utf8_header_value(h, (const uint8_t *)id, strlen(id), v, EWF_VALUE_MAX, NULL) == 1 &&
        v[0])
        info_add_str(info, key, "%s", (char *)v);
    free(v);
}

static void ewf_get_info(BlockNode *bs, InfoList *info)
{
    EwfState *s = bs->opaque;
    int wi = worker_pool_get(s->pool);
    EwfWorker *w = &s->workers[wi];
    info_add_str(info, "ewf_format", "%s", ewf_format_name(s->format));
    info_add_int(info, "media_size", (int64_t)s->media_size);
    info_add_int(info, "chunk_size", s->chunk_size);
    static const char *const hdr[][2] = {
        { "case_number", "case_number" }, { "evidence_number", "evidence_number" },
        { "examiner", "examiner_name" }, { "description", "description" }, { "notes", "notes" },
        { "acquiry_date", "acquiry_date" }, { "system_date", "system_date" },
        { "acquiry_software", "acquiry_software" }, { "acquiry_software_version", "acquiry_software_version" },
        { "acquiry_operating_system", "acquiry_operating_system" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(hdr); i++)
        ewf_info_header(w->h, info, hdr[i][0], hdr[i][1]);
    worker_pool_put(s->pool, wi);
    info_add_str(info, "stored_md5", "%s", s->md5[0] ? s->md5 : "none");
    info_add_str(info, "stored_sha1", "%s", s->sha1[0] ? s->sha1 : "none");
    info_add_int(info, "segment_files", s->n_segs);
    for (int i = 0; i < s->n_segs; i++) {
        char key[32];
        snprintf(key, sizeof key, "segment_%d", i + 1);
        info_add_str(info, key, "%s", s->names[i]);
    }
    pthread_mutex_lock(&s->bad_lock);
    if (s->n_bad)
        info_add_int(info, "chunks_failing_checksum", s->n_bad);
    pthread_mutex_unlock(&s->bad_lock);
}

static void ewf_get_facts(BlockNode *bs, BlockDriverFacts *f)
{
    EwfState *s = bs->opaque;
    f->cluster_size = s->chunk_size;
    f->files = (const char *const *)s->names;
    f->n_files = s->n_segs;
    memcpy(f->stored_md5, s->md5, sizeof s->md5);
    memcpy(f->stored_sha1, s->sha1, sizeof s->sha1);
}

static int64_t ewf_get_allocated_size(BlockNode *bs)
{
    EwfState *s = bs->opaque;
    int64_t total = 0;
    for (int i = 0; i < s->n_segs; i++) {
        int64_t n = bdrv_get_allocated_size(s->segs[i]);
        if (n < 0)
            return n;
        total += n;
    }
    return total;
}

const BlockDriver bdrv_ewf = {
    .name = "ewf",
    .instance_size = sizeof(EwfState),
    .probe = ewf_probe,
    .open = ewf_open,
    .close = ewf_close,
    .read = ewf_read,
    .block_status = bdrv_block_status_all_data,
    .getlength = ewf_getlength,
    .get_allocated_size = ewf_get_allocated_size,
    .get_info = ewf_get_info,
    .get_facts = ewf_get_facts,
};
