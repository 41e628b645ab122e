/* SPDX-License-Identifier: MIT */
/*
 * aff.c - the "aff" format driver: Advanced Forensic Format evidence, read through AFFLIB, never parsed
 * here: AFF (one .aff file), AFM (a .afm file of metadata beside split raw files BASE.000, BASE.001, ...)
 * and AFD (a .afd directory of .aff files, named by any .aff file in it, as the core opens files only).
 * AFFLIB is loaded with dlopen when an AFF image is opened, because it pulls in OpenSSL's libcrypto,
 * which every other mount must not pay for (fuse/commands.c loads libcrypto the same way for `hash`).
 * AFFLIB opens the files by name itself, O_RDONLY; before it does, every file it will open (the raw files
 * counted up by AFFLIB's own rule, every .aff of the directory) must pass the backing-name policy, be a
 * regular file and not one already listed, at most AFF_MAX_FILES of them.
 * AFFLIB handles are not thread-safe: the node keeps a few, one per concurrent reader, each behind its
 * own lock.  A page that cannot be read or inflated reads as EIO.  Read-only always (--overlay for
 * writes).  Acquisition metadata and the stored MD5/SHA1 are told in info and facts.  It knows nothing
 * of other formats or of FUSE.
 */
#include "block.h"
#include "util.h"

#include <stdint.h>
#include <stdio.h>
#include <afflib/afflib.h>
#include <afflib/afflib_i.h> /* AFFILE's error_reporter: af_set_error_reporter is not exported */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AFF_VALUE_MAX 1024          /* longest metadata value shown in info */
#define AFF_LIB "libafflib.so.0"
#define AFF_MAX_BAD_PAGES (1u << 20) /* pages remembered as unreadable (8 MiB) */
#define AFF_MAX_FILES 1000           /* files of an AFM or AFD image */

/* The AFFLIB functions the driver calls, looked up in the library when a node opens. */
typedef struct AffLib {
    void *dl;
    __typeof__(af_open) *open;
    __typeof__(af_close) *close;
    __typeof__(af_read) *read;
    __typeof__(af_seek) *seek;
    __typeof__(af_get_imagesize) *imagesize;
    __typeof__(af_get_pagesize) *pagesize;
    __typeof__(af_get_seg) *get_seg;
    int (*identify)(const char *filename, int exists); /* af_identify_file_type, in afflib_i.h */
    int (*ext_is)(const char *filename, const char *ext);
    int (*increment)(char *filename);   /* split_raw_increment_fname: AFM's next raw file name */
    __typeof__(af_open_with) *open_with;
    struct af_vnode *vnode_aff;         /* to read an AFM's own segments without its raw files */
} AffLib;

typedef struct AffState {
    AffLib lib;
    int64_t size;
    int pagesize;
    char md5[33], sha1[41];
    AFFILE *af[WORKER_POOL_MAX];    /* one AFFLIB handle per concurrent reader (each caches its own pages) */
    WorkerPool *pool;
    const char *kind;               /* "AFF", "AFM" or "AFD" */
    char *open_name;                /* what AFFLIB opens: the file, or an AFD's directory */
    char **files;                   /* every file AFFLIB reads, checked before it opens them */
    int n_files;
    struct stat *ids;
    pthread_mutex_t bad_lock;       /* pages AFFLIB could not read, sorted: never asked again */
    uint64_t *bad;
    uint32_t n_bad, cap_bad;
} AffState;

/* AFFLIB's own messages (several lines per damaged page) are not passed on: the driver logs one. */
static void aff_quiet(const char *fmt, ...)
{
    (void)fmt;
}

/* Is page in the list; with add, put it there (when there is room). */
static bool aff_bad(AffState *s, uint64_t page, bool add)
{
    pthread_mutex_lock(&s->bad_lock);
    uint32_t lo = 0, hi = s->n_bad;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->bad[mid] < page)
            lo = mid + 1;
        else
            hi = mid;
    }
    bool has = lo < s->n_bad && s->bad[lo] == page;
    if (add && !has && s->n_bad == s->cap_bad && s->cap_bad < AFF_MAX_BAD_PAGES) {
        uint32_t cap = s->cap_bad ? MIN(2 * s->cap_bad, AFF_MAX_BAD_PAGES) : 64;
        uint64_t *nb = realloc(s->bad, cap * sizeof *nb);
        if (nb) {
            s->bad = nb;
            s->cap_bad = cap;
        }
    }
    if (add && !has && s->n_bad < s->cap_bad) {
        memmove(s->bad + lo + 1, s->bad + lo, (s->n_bad - lo) * sizeof *s->bad);
        s->bad[lo] = page;
        s->n_bad++;
    }
    pthread_mutex_unlock(&s->bad_lock);
    return has;
}

static int aff_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 7 && memcmp(buf, "AFF10\r\n", 7) == 0 ? 100 : 0;
}

static int aff_lib_load(AffLib *l, Error *err)
{
    l->dl = dlopen(AFF_LIB, RTLD_NOW | RTLD_LOCAL);
    if (!l->dl) {
        error_set(err, ENOTSUP, "cannot load %s (Debian package libafflib0v5): %s", AFF_LIB, dlerror());
        return -ENOTSUP;
    }
    struct { const char *name; void **slot; } syms[] = {
        { "af_open", (void **)&l->open }, { "af_close", (void **)&l->close }, { "af_read", (void **)&l->read },
        { "af_seek", (void **)&l->seek }, { "af_get_imagesize", (void **)&l->imagesize },
        { "af_get_pagesize", (void **)&l->pagesize }, { "af_get_seg", (void **)&l->get_seg },
        { "af_identify_file_type", (void **)&l->identify }, { "af_ext_is", (void **)&l->ext_is },
        { "split_raw_increment_fname", (void **)&l->increment }, { "af_open_with", (void **)&l->open_with },
        { "vnode_aff", (void **)&l->vnode_aff },
    };
    for (size_t i = 0; i < ARRAY_SIZE(syms); i++) {
        if (!(*syms[i].slot = dlsym(l->dl, syms[i].name))) {
            error_set(err, ENOTSUP, "%s has no %s", AFF_LIB, syms[i].name);
            return -ENOTSUP;
        }
    }
    return 0;
}

/* Opens AFFLIB handle i of the node (the worker pool's open callback). */
static int aff_worker_open(void *ctx, int i)
{
    BlockNode *bs = ctx;
    AffState *s = bs->opaque;
    if (!(s->af[i] = s->lib.open(s->open_name, O_RDONLY, 0)))
        return -(errno ? errno : EINVAL);
    s->af[i]->error_reporter = aff_quiet;
    return 0;
}

static int aff_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    AffState *s = bs->opaque;
    int wi = worker_pool_get(s->pool);
    AFFILE *af = s->af[wi];
    int r = 0;
    uint8_t *p = buf;
    while (r == 0 && bytes > 0) {
        uint64_t page = (uint64_t)offset / (uint64_t)s->pagesize;
        ssize_t want = (ssize_t)MIN(bytes, (int64_t)((page + 1) * (uint64_t)s->pagesize) - offset);
        if (aff_bad(s, page, false)) {
            r = -EIO;
        } else if ((int64_t)s->lib.seek(af, offset, SEEK_SET) != offset || s->lib.read(af, p, want) != want) {
            aff_bad(s, page, true);
            log_msg("%s: page %" PRIu64 " cannot be read or inflated: read as EIO", bs->node_name, page);
            r = -EIO;
        }
        offset += want;
        bytes -= want;
        p += want;
    }
    worker_pool_put(s->pool, wi);
    return r;
}

static int64_t aff_getlength(BlockNode *bs)
{
    return ((AffState *)bs->opaque)->size;
}

/* The bytes of segment name, hex into out (2 * n + 1 bytes) when it holds exactly n bytes. */
static void aff_hash_seg(AffState *s, AFFILE *af, const char *name, size_t n, char *out)
{
    unsigned char d[32];
    size_t len = sizeof(d);
    uint32_t arg = 0;
    if (s->lib.get_seg(af, name, &arg, d, &len) != 0 || len != n)
        return;
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void aff_close(BlockNode *bs)
{
    AffState *s = bs->opaque;
    for (int i = 0; i < worker_pool_count(s->pool); i++)
        s->lib.close(s->af[i]);
    worker_pool_free(s->pool);
    pthread_mutex_destroy(&s->bad_lock);
    free(s->bad);
    for (int i = 0; i < s->n_files; i++)
        free(s->files[i]);
    free(s->files);
    free(s->ids);
    free(s->open_name);
    if (s->lib.dl)
        dlclose(s->lib.dl);
    memset(s, 0, sizeof *s);
}

/* Adds path to the files AFFLIB will open, after the backing-name policy, a regular file, not twice. */
static int aff_add_file(BlockNode *bs, const BlockOpenOpts *opts, const char *path, Error *err)
{
    AffState *s = bs->opaque;
    struct stat st;
    const char *why = s->n_files ? bdrv_named_file_refusal(bs, opts, path) : NULL;
    if (!why && stat(path, &st) < 0)
        why = strerror(errno);
    else if (!why && !S_ISREG(st.st_mode))
        why = "not a regular file";
    for (int j = 0; !why && j < s->n_files; j++)
        if (s->ids[j].st_dev == st.st_dev && s->ids[j].st_ino == st.st_ino)
            why = "it is the same file as an earlier one";
    if (!why && s->n_files == AFF_MAX_FILES)
        why = "more files than the limit (1000)";
    if (why) {
        error_set(err, EPERM, "%s file '%s' refused: %s", s->kind, path, why);
        return -EPERM;
    }
    if (!s->files && (!(s->files = calloc(AFF_MAX_FILES, sizeof *s->files)) ||
                      !(s->ids = calloc(AFF_MAX_FILES, sizeof *s->ids))))
        return -ENOMEM;
    if (!(s->files[s->n_files] = strdup(path)))
        return -ENOMEM;
    s->ids[s->n_files++] = st;
    return 0;
}

/* The extension an AFM records for its first raw file, read with AFFLIB's plain-AFF reader. */
static int aff_afm_extension(AffState *s, const char *afm, char ext[4], Error *err)
{
    AFFILE *af = s->lib.open_with(afm, O_RDONLY, 0, s->lib.vnode_aff);
    uint32_t arg = 0;
    size_t len = 3;
    int ok = af && s->lib.get_seg(af, "raw_image_file_extension", &arg, (unsigned char *)ext, &len) == 0 &&
             len == 3;
    if (af) {
        af->error_reporter = aff_quiet;
        s->lib.close(af);
    }
    for (int i = 0; ok && i < 3; i++)
        ok = (ext[i] >= '0' && ext[i] <= '9') || (ext[i] >= 'A' && ext[i] <= 'Z') || (ext[i] >= 'a' && ext[i] <= 'z');
    if (!ok) {
        error_set(err, EINVAL, "AFM file names no raw file extension (segment raw_image_file_extension)");
        return -EINVAL;
    }
    ext[3] = '\0';
    return 0;
}

/* AFM: the .afm file, then BASE.EXT and the names after it by AFFLIB's count, while they exist. */
static int aff_list_afm(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    AffState *s = bs->opaque;
    char ext[4], name[PATH_MAX];
    size_t len = strlen(bs->filename);
    int r = aff_afm_extension(s, bs->filename, ext, err);
    if (r == 0 && len >= sizeof name) /* the name ends ".afm": BASE.EXT is as long */
        r = -ENAMETOOLONG;
    if (r < 0)
        return r;
    memcpy(name, bs->filename, len - 3);
    memcpy(name + len - 3, ext, 4);
    struct stat st;
    for (int n = 0; r == 0 && stat(name, &st) == 0; n++) {
        r = aff_add_file(bs, opts, name, err);
        if (r == 0 && s->lib.increment(name) != 0)
            break;
    }
    if (r == 0 && s->n_files == 1) {
        error_set(err, ENOENT, "AFM raw file '%s' missing", name);
        return -ENOENT;
    }
    return r;
}

static int aff_cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* AFD: every .aff file of the directory, which AFFLIB opens (in directory order; listed sorted). */
static int aff_list_afd(BlockNode *bs, const BlockOpenOpts *opts, const char *dir, Error *err)
{
    AffState *s = bs->opaque;
    DIR *d = opendir(dir);
    if (!d) {
        error_set(err, errno, "cannot read AFD directory '%s': %s", dir, strerror(errno));
        return -errno;
    }
    int r = 0;
    char path[PATH_MAX];
    struct dirent *e;
    while (r == 0 && (e = readdir(d))) {
        if (!s->lib.ext_is(e->d_name, "aff"))
            continue;
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            r = -ENAMETOOLONG;
        else if (stat(path, &st) < 0 || st.st_dev != s->ids[0].st_dev || st.st_ino != s->ids[0].st_ino)
            r = aff_add_file(bs, opts, path, err); /* the named file is already first */
    }
    closedir(d);
    if (r == 0 && s->n_files > 1)
        qsort(s->files + 1, (size_t)s->n_files - 1, sizeof *s->files, aff_cmp_names);
    return r;
}

/*
 * Which AFF layout the named file is, and every file AFFLIB will open for it (the named file first):
 * an .aff file inside a directory whose name ends ".afd" stands for the whole directory.
 */
static int aff_list_files(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    AffState *s = bs->opaque;
    int type = s->lib.identify(bs->filename, 1);
    char *slash = strrchr(bs->filename, '/');
    char *dir = slash ? strndup(bs->filename, (size_t)(slash - bs->filename)) : NULL;
    int r;
    if (slash && !dir)
        return -ENOMEM;
    s->kind = type == AF_IDENTIFY_AFM ? "AFM" : dir && s->lib.ext_is(dir, "afd") ? "AFD" : "AFF";
    if (type != AF_IDENTIFY_AFF && type != AF_IDENTIFY_AFM) {
        error_set(err, ENOTSUP, "AFFLIB does not identify the file as AFF, AFM or an AFD's .aff (type %d)", type);
        r = -ENOTSUP;
    } else {
        r = aff_add_file(bs, opts, bs->filename, err);
    }
    if (r == 0 && strcmp(s->kind, "AFM") == 0)
        r = aff_list_afm(bs, opts, err);
    else if (r == 0 && strcmp(s->kind, "AFD") == 0)
        r = aff_list_afd(bs, opts, dir, err);
    if (r == 0 && !(s->open_name = strdup(strcmp(s->kind, "AFD") == 0 ? dir : bs->filename)))
        r = -ENOMEM;
    free(dir);
    return r;
}

static int aff_open_node(BlockNode *bs, AffState *s, const BlockOpenOpts *opts, Error *err)
{
    if (!bs->read_only) {
        error_set(err, EROFS, "AFF evidence files are read-only: mount without --rw (--overlay FILE gives a "
                  "writable view)");
        return -EROFS;
    }
    if (strcmp(bs->file->drv->name, "file") != 0) {
        error_set(err, ENOTSUP, "AFF images are read by AFFLIB from a file name: not from this node");
        return -ENOTSUP;
    }
    int r = aff_lib_load(&s->lib, err);
    if (r < 0)
        return r;
    if ((r = aff_list_files(bs, opts, err)) < 0)
        return r;
    if ((r = aff_worker_open(bs, 0)) < 0) {
        error_set(err, -r, "cannot open as %s: %s", s->kind, strerror(-r));
        return -EINVAL;
    }
    worker_pool_started(s->pool);
    AFFILE *af = s->af[0];
    s->size = s->lib.imagesize(af);
    s->pagesize = s->lib.pagesize(af);
    if (s->size < 0 || s->pagesize <= 0) {
        error_set(err, EINVAL, "AFF image size %" PRId64 " or page size %d unreadable", s->size, s->pagesize);
        return -EINVAL;
    }
    aff_hash_seg(s, af, "md5", 16, s->md5);
    aff_hash_seg(s, af, "sha1", 20, s->sha1);
    return 0;
}

/* The core does not call close after a failed open: undo what was done. */
static int aff_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    AffState *s = bs->opaque;
    pthread_mutex_init(&s->bad_lock, NULL);
    s->pool = worker_pool_new(aff_worker_open, bs);
    int r = s->pool ? aff_open_node(bs, s, opts, err) : -ENOMEM;
    if (r < 0)
        aff_close(bs);
    return r;
}

static void aff_info_seg(AffState *s, AFFILE *af, InfoList *info, const char *key, const char *seg)
{
    unsigned char *v = malloc(AFF_VALUE_MAX + 1);
    size_t len = AFF_VALUE_MAX;
    uint32_t arg = 0;
    if (v && s->lib.get_seg(af, seg, &arg, v, &len) == 0 && len > 0 && len <= AFF_VALUE_MAX) {
        v[len] = '\0';
        v[strcspn((char *)v, "\n")] = '\0';
        if (v[0])
            info_add_str(info, key, "%s", (char *)v);
    }
    free(v);
}

static void aff_get_info(BlockNode *bs, InfoList *info)
{
    AffState *s = bs->opaque;
    info_add_str(info, "aff_layout", "%s", s->kind);
    info_add_int(info, "files", s->n_files);
    for (int i = 0; i < s->n_files && strcmp(s->kind, "AFF") != 0; i++) {
        char key[32];
        snprintf(key, sizeof key, "file_%d", i + 1);
        info_add_str(info, key, "%s", s->files[i]);
    }
    info_add_int(info, "image_size", s->size);
    info_add_int(info, "page_size", s->pagesize);
    int wi = worker_pool_get(s->pool);
    static const char *const segs[][2] = {
        { "case_number", "case_num" }, { "acquiry_date", "acquisition_date" },
        { "acquisition_device", "acquisition_device" }, { "examiner", "acquisition_tecnician" },
        { "notes", "acquisition_notes" }, { "acquisition_commandline", "acquisition_commandline" },
        { "afflib_version", "afflib_version" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(segs); i++)
        aff_info_seg(s, s->af[wi], info, segs[i][0], segs[i][1]);
    worker_pool_put(s->pool, wi);
    info_add_str(info, "stored_md5", "%s", s->md5[0] ? s->md5 : "none");
    info_add_str(info, "stored_sha1", "%s", s->sha1[0] ? s->sha1 : "none");
}

static void aff_get_facts(BlockNode *bs, BlockDriverFacts *f)
{
    AffState *s = bs->opaque;
    f->files = (const char *const *)s->files;
    f->n_files = s->n_files;
    memcpy(f->stored_md5, s->md5, sizeof s->md5);
    memcpy(f->stored_sha1, s->sha1, sizeof s->sha1);
}

/* What the files AFFLIB reads take on disk (as they were at open). */
static int64_t aff_get_allocated_size(BlockNode *bs)
{
    AffState *s = bs->opaque;
    int64_t sum = 0;
    for (int i = 0; i < s->n_files; i++)
        sum += (int64_t)s->ids[i].st_blocks * 512;
    return sum;
}

const BlockDriver bdrv_aff = {
    .name = "aff",
    .instance_size = sizeof(AffState),
    .probe = aff_probe,
    .open = aff_open,
    .close = aff_close,
    .read = aff_read,
    .block_status = bdrv_block_status_all_data,
    .getlength = aff_getlength,
    .get_allocated_size = aff_get_allocated_size,
    .get_info = aff_get_info,
    .get_facts = aff_get_facts,
};
