/*
 * vmdk.c - the VMware VMDK format driver.  It owns the VMDK layout after VMware's "Virtual Disk Format
 * 1.1": the text descriptor (standalone, or embedded in a hosted sparse extent), parsed defensively into
 * an ordered list of extents; hosted sparse extents ("KDMV" header, grain directory and 512-entry grain
 * tables, zeroed-grain entries, the redundant directory, stream-optimized files with deflate-compressed
 * grains, grain markers and the footer copy of the header); flat and zero extents; and the delta-link
 * fields (CID, parentCID, parentFileNameHint), which become bs->backing_name for the core to resolve.
 * Extent file names are untrusted: each is resolved against the descriptor's directory and must stay
 * inside it (or a --backing-dir) unless --unsafe-backing is given; extents are opened read-only unless
 * the node is writable.  On writable nodes flat extents are written in place, and hosted sparse extents
 * in place or by appending a whole grain that is flushed before the primary, then the redundant, grain
 * table names it; stream-optimized and zero extents refuse --rw.  Every header field and table entry is
 * checked against the file size before it is used; a damaged grain reads as EIO, logged once per
 * extent.  Grain tables are read on demand into a small fixed cache, so memory is bounded whatever the
 * header says.  It knows nothing of FUSE or of other formats.
 */
#include "block.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* ---------------------------------------------------------------- the on-disk layout */

#define VMDK_SECTOR           512
#define VMDK_MAGIC            0x564d444bu /* "KDMV" read little-endian */
#define VMDK_COWD_MAGIC       0x44574f43u /* "COWD": the ESX sparse format, not supported */
#define VMDK_DESC_SIGNATURE   "# Disk DescriptorFile"
#define VMDK_GD_AT_END        UINT64_MAX  /* stream-optimized: the real header is the footer copy */

/* Sparse header field offsets (512 bytes, little-endian, packed). */
#define SH_MAGIC          0
#define SH_VERSION        4
#define SH_FLAGS          8
#define SH_CAPACITY       12
#define SH_GRAIN_SIZE     20
#define SH_DESC_OFFSET    28
#define SH_DESC_SIZE      36
#define SH_NUM_GTES       44
#define SH_RGD_OFFSET     48
#define SH_GD_OFFSET      56
#define SH_OVERHEAD       64
#define SH_UNCLEAN        72
#define SH_EOL_CHARS      73 /* '\n', ' ', '\r', '\n': detects a text-mode (CR/LF) transfer */
#define SH_COMPRESS_ALGO  77

#define VMDK_FLAG_NL_TEST     (1u << 0)
#define VMDK_FLAG_RGD         (1u << 1)
#define VMDK_FLAG_ZERO_GRAIN  (1u << 2)
#define VMDK_FLAG_COMPRESSED  (1u << 16)
#define VMDK_FLAG_MARKERS     (1u << 17)
#define VMDK_KNOWN_FLAGS      (VMDK_FLAG_NL_TEST | VMDK_FLAG_RGD | VMDK_FLAG_ZERO_GRAIN | VMDK_FLAG_COMPRESSED | \
                               VMDK_FLAG_MARKERS)
#define VMDK_COMPRESS_DEFLATE 1

#define VMDK_GTES_PER_GT   512
#define VMDK_GT_BYTES      (VMDK_GTES_PER_GT * 4)
#define VMDK_GTE_ZEROED    1u
#define VMDK_MARKER_HEADER 12   /* grain marker: uint64 lba, uint32 size, then the compressed bytes */

/* Bounds this driver accepts (VMware writes 128-sector grains and descriptors of a few sectors). */
#define VMDK_MAX_GRAIN_SECTORS  2048u          /* 1 MiB grains */
#define VMDK_MAX_GTS            (1u << 22)     /* a 16 MiB grain directory */
/* Grain directories of all extents together: a descriptor may name one big sparse file many times. */
#define VMDK_MAX_GD_TOTAL       (64u << 20)
#define VMDK_MAX_DESC_BYTES     (64 * 1024)    /* standalone or embedded descriptor */
#define VMDK_MAX_LINE           1024
#define VMDK_MAX_EXTENTS        4096
#define VMDK_GT_CACHE_SLOTS     512            /* 1 MiB of grain tables at most */
#define VMDK_MAX_CAPACITY       (INT64_MAX / VMDK_SECTOR)

typedef enum { EXT_FLAT, EXT_SPARSE, EXT_ZERO } ExtentType;

/* What one grain of a sparse extent is. */
typedef enum { GRAIN_ABSENT, GRAIN_ZERO, GRAIN_DATA, GRAIN_COMPRESSED, GRAIN_BAD } GrainKind;

typedef struct GtSlot {
    int64_t gt_index; /* -1: empty */
    uint32_t gte[VMDK_GTES_PER_GT];
} GtSlot;

typedef struct VmdkExtent {
    char *name;            /* as written in the descriptor (or the image name), for messages */
    ExtentType type;
    BlockNode *file;       /* the extent's protocol node; NULL for zero extents */
    bool owns_file;        /* false when it is bs->file itself */
    uint64_t start;        /* guest byte offset of its first byte */
    uint64_t bytes;        /* guest bytes it holds */
    uint64_t flat_offset;  /* flat: byte offset in the file */

    /* sparse extents */
    int64_t file_size;
    uint32_t version, flags;
    uint64_t capacity;      /* sectors */
    uint64_t grain_bytes;
    uint64_t gd_off, rgd_off, meta_end; /* bytes; meta_end: the overhead, nothing of the data lies below */
    uint64_t desc_off, desc_bytes;
    uint32_t n_gts;
    uint32_t *gd;           /* host byte order; entries change only under alloc_lock (atomic accesses) */
    uint32_t *rgd;          /* writable nodes with a redundant directory: its entries */
    int bad_logged;
} VmdkExtent;

typedef struct VmdkState {
    const char *name;
    VmdkExtent *ext;
    int n_ext;
    uint64_t size;

    char create_type[64];
    uint32_t cid, parent_cid;
    bool has_cid, has_parent_cid;
    char *parent_hint;
    bool standalone_descriptor;
    int parent_checked;

    pthread_mutex_t lock;   /* guards the grain-table cache and cache_gen */
    bool lock_ready;
    uint64_t cache_gen;     /* bumped by every grain-table write: a table read before it is not cached */
    pthread_mutex_t alloc_lock; /* writable nodes: one grain or table allocation at a time */
    int cid_changed;        /* the first write gave the disk a new CID */
    bool writable;
    GtSlot *gt_cache;       /* direct-mapped over (extent, gt index) */
    int64_t *gt_cache_ext;  /* extent index of each slot */
} VmdkState;

/* ---------------------------------------------------------------- probe */

static int vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len >= 4 && (ld_le32(buf) == VMDK_MAGIC || ld_le32(buf) == VMDK_COWD_MAGIC))
        return 100;
    if (len >= strlen(VMDK_DESC_SIGNATURE) && memcmp(buf, VMDK_DESC_SIGNATURE, strlen(VMDK_DESC_SIGNATURE)) == 0)
        return 100;
    return 0;
}

/* ---------------------------------------------------------------- the descriptor */

typedef struct DescExtent {
    char access[16];
    uint64_t sectors;
    char type[16];
    char name[VMDK_MAX_LINE];
    uint64_t offset; /* sectors, flat extents */
} DescExtent;

typedef struct Descriptor {
    DescExtent *ext;
    int n_ext;
    char create_type[64];
    char parent_hint[VMDK_MAX_LINE];
    uint32_t cid, parent_cid;
    bool has_cid, has_parent_cid, has_parent_hint;
} Descriptor;

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static bool parse_u64(const char *s, char **end, uint64_t *out)
{
    if (!isdigit((unsigned char)*s))
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, end, 10);
    if (errno)
        return false;
    *out = v;
    return true;
}

static bool parse_cid(const char *v, uint32_t *out)
{
    size_t n = strlen(v);
    if (n == 0 || n > 8)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)v[i]))
            return false;
    *out = (uint32_t)strtoul(v, NULL, 16);
    return true;
}

/* Copies a value, without surrounding double quotes, into out; false if it does not fit or is unterminated. */
static bool unquote(const char *v, char *out, size_t outlen)
{
    size_t n = strlen(v);
    if (n && v[0] == '"') {
        if (n < 2 || v[n - 1] != '"')
            return false;
        v++;
        n -= 2;
    }
    if (n >= outlen)
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

/* RW 4192256 SPARSE "disk-s001.vmdk"    or    RW 2048 FLAT "disk-flat.vmdk" 0 */
static bool parse_extent_line(char *line, DescExtent *e)
{
    char *p = line, *end;
    size_t n = strcspn(p, " \t");
    if (n == 0 || n >= sizeof(e->access))
        return false;
    memcpy(e->access, p, n);
    e->access[n] = '\0';
    p = trim(p + n);
    if (!parse_u64(p, &end, &e->sectors))
        return false;
    p = trim(end);
    n = strcspn(p, " \t");
    if (n == 0 || n >= sizeof(e->type))
        return false;
    memcpy(e->type, p, n);
    e->type[n] = '\0';
    p = trim(p + n);
    e->offset = 0;
    e->name[0] = '\0';
    if (strcmp(e->type, "ZERO") == 0 && *p == '\0')
        return true;
    if (*p != '"')
        return false;
    char *close = strchr(p + 1, '"');
    if (!close || close == p + 1 || (size_t)(close - p - 1) >= sizeof(e->name))
        return false;
    memcpy(e->name, p + 1, (size_t)(close - p - 1));
    e->name[close - p - 1] = '\0';
    p = trim(close + 1);
    if (*p == '\0')
        return true;
    return parse_u64(p, &end, &e->offset) && *trim(end) == '\0';
}

static bool is_extent_line(const char *line)
{
    return strncmp(line, "RW ", 3) == 0 || strncmp(line, "RDONLY ", 7) == 0 || strncmp(line, "NOACCESS ", 9) == 0;
}

static int desc_key_value(Descriptor *d, char *line, int lineno, const char *file, Error *err)
{
    char *eq = strchr(line, '=');
    char *key = line;
    size_t klen = (size_t)(eq - line);
    while (klen && (key[klen - 1] == ' ' || key[klen - 1] == '\t'))
        klen--;
    for (size_t i = 0; i < klen; i++)
        if (!isalnum((unsigned char)key[i]) && key[i] != '.' && key[i] != '_' && key[i] != '-')
            klen = 0;
    if (klen == 0) {
        error_set(err, EINVAL, "%s: descriptor line %d is neither a comment, a key = value pair nor an extent",
                  file, lineno);
        return -EINVAL;
    }
    key[klen] = '\0';
    char *val = trim(eq + 1);
    bool ok = true;
    if (strcmp(key, "CID") == 0)
        ok = d->has_cid = parse_cid(val, &d->cid);
    else if (strcmp(key, "parentCID") == 0)
        ok = d->has_parent_cid = parse_cid(val, &d->parent_cid);
    else if (strcmp(key, "createType") == 0)
        ok = unquote(val, d->create_type, sizeof(d->create_type));
    else if (strcmp(key, "parentFileNameHint") == 0)
        ok = d->has_parent_hint = unquote(val, d->parent_hint, sizeof(d->parent_hint));
    else if (strcmp(key, "version") == 0)
        ok = strcmp(val, "1") == 0 || strcmp(val, "2") == 0 || strcmp(val, "3") == 0;
    if (!ok) {
        error_set(err, EINVAL, "%s: descriptor line %d: bad value for %s", file, lineno, key);
        return -EINVAL;
    }
    return 0;
}

static int desc_add_extent(Descriptor *d, char *line, int lineno, const char *file, Error *err)
{
    if (d->n_ext >= VMDK_MAX_EXTENTS) {
        error_set(err, EINVAL, "%s: the descriptor names more than %d extents", file, VMDK_MAX_EXTENTS);
        return -EINVAL;
    }
    if (d->n_ext % 16 == 0) {
        DescExtent *n = realloc(d->ext, sizeof(*n) * (size_t)(d->n_ext + 16));
        if (!n) {
            error_set(err, ENOMEM, "%s: out of memory", file);
            return -ENOMEM;
        }
        d->ext = n;
    }
    if (!parse_extent_line(line, &d->ext[d->n_ext])) {
        error_set(err, EINVAL, "%s: descriptor line %d is not a valid extent line", file, lineno);
        return -EINVAL;
    }
    d->n_ext++;
    return 0;
}

/* Parses len bytes of descriptor text (it ends at the first NUL: embedded descriptors are padded). */
static int desc_parse(Descriptor *d, const char *text, size_t len, const char *file, Error *err)
{
    memset(d, 0, sizeof(*d));
    len = strnlen(text, len);
    char line[VMDK_MAX_LINE + 1];
    int lineno = 0;
    for (size_t pos = 0; pos < len;) {
        size_t n = 0;
        while (pos + n < len && text[pos + n] != '\n')
            n++;
        lineno++;
        if (n > VMDK_MAX_LINE) {
            error_set(err, EINVAL, "%s: descriptor line %d is longer than %d bytes", file, lineno, VMDK_MAX_LINE);
            return -EINVAL;
        }
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos += n + 1;
        char *l = trim(line);
        int r = 0;
        if (*l == '\0' || *l == '#')
            continue;
        if (is_extent_line(l))
            r = desc_add_extent(d, l, lineno, file, err);
        else if (strchr(l, '='))
            r = desc_key_value(d, l, lineno, file, err);
        else {
            error_set(err, EINVAL, "%s: descriptor line %d is neither a comment, a key = value pair nor an extent",
                      file, lineno);
            r = -EINVAL;
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---------------------------------------------------------------- sparse extents */

static int vmdk_bad_header(Error *err, const char *name, const char *what)
{
    error_set(err, EINVAL, "%s: invalid sparse extent header: %s", name, what);
    return -EINVAL;
}

/* A table of bytes at off must lie inside the file, past the header sector. */
static bool range_in_file(uint64_t off, uint64_t bytes, int64_t file_size)
{
    uint64_t end;
    return off >= VMDK_SECTOR && add_ok_u64(off, bytes, &end) && end <= (uint64_t)file_size;
}

static bool sectors_to_bytes(uint64_t sectors, uint64_t *out)
{
    return mul_ok_u64(sectors, VMDK_SECTOR, out) && *out <= INT64_MAX;
}

static int vmdk_check_identity(const uint8_t *h, const char *name, Error *err)
{
    uint32_t magic = ld_le32(h + SH_MAGIC);
    if (magic == VMDK_COWD_MAGIC) {
        error_set(err, ENOTSUP, "%s: ESX sparse (COWD) extents are not supported", name);
        return -ENOTSUP;
    }
    if (magic != VMDK_MAGIC) {
        error_set(err, EINVAL, "%s: not a VMDK sparse extent (bad magic 0x%08" PRIx32 ")", name, magic);
        return -EINVAL;
    }
    uint32_t version = ld_le32(h + SH_VERSION);
    if (version < 1 || version > 3) {
        error_set(err, ENOTSUP, "%s: unsupported VMDK sparse extent version %" PRIu32 " (1 to 3 are supported)",
                  name, version);
        return -ENOTSUP;
    }
    return 0;
}

static int vmdk_check_flags(VmdkExtent *e, const uint8_t *h, Error *err)
{
    if (e->flags & ~VMDK_KNOWN_FLAGS) {
        error_set(err, ENOTSUP, "%s: unknown sparse extent flags 0x%08" PRIx32, e->name, e->flags & ~VMDK_KNOWN_FLAGS);
        return -ENOTSUP;
    }
    if ((e->flags & VMDK_FLAG_NL_TEST) && memcmp(h + SH_EOL_CHARS, "\n \r\n", 4) != 0) {
        error_set(err, EINVAL, "%s: the end-of-line check bytes are damaged (was the file copied in text mode?)",
                  e->name);
        return -EINVAL;
    }
    if ((e->flags & VMDK_FLAG_COMPRESSED) && ld_le16(h + SH_COMPRESS_ALGO) != VMDK_COMPRESS_DEFLATE) {
        error_set(err, ENOTSUP, "%s: unsupported grain compression algorithm %u (only deflate)", e->name,
                  ld_le16(h + SH_COMPRESS_ALGO));
        return -ENOTSUP;
    }
    if ((e->flags & VMDK_FLAG_MARKERS) && !(e->flags & VMDK_FLAG_COMPRESSED))
        return vmdk_bad_header(err, e->name, "grain markers without compressed grains");
    return 0;
}

/* Capacity, grain size and the grain directory's size. */
static int vmdk_check_geometry(VmdkExtent *e, const uint8_t *h, Error *err)
{
    uint64_t grain = ld_le64(h + SH_GRAIN_SIZE);
    e->capacity = ld_le64(h + SH_CAPACITY);
    if (!is_pow2(grain) || grain > VMDK_MAX_GRAIN_SECTORS) {
        error_set(err, EINVAL, "%s: grain size of %" PRIu64 " sectors is not a power of two from 1 to %u", e->name,
                  grain, VMDK_MAX_GRAIN_SECTORS);
        return -EINVAL;
    }
    if (ld_le32(h + SH_NUM_GTES) != VMDK_GTES_PER_GT) {
        error_set(err, EINVAL, "%s: %" PRIu32 " entries per grain table (only %d are valid)", e->name,
                  ld_le32(h + SH_NUM_GTES), VMDK_GTES_PER_GT);
        return -EINVAL;
    }
    if (e->capacity > VMDK_MAX_CAPACITY)
        return vmdk_bad_header(err, e->name, "capacity too large");
    e->grain_bytes = grain * VMDK_SECTOR;
    uint64_t grains = (e->capacity + grain - 1) / grain;
    uint64_t gts = (grains + VMDK_GTES_PER_GT - 1) / VMDK_GTES_PER_GT;
    if (gts > VMDK_MAX_GTS) {
        error_set(err, EINVAL, "%s: %" PRIu64 " grain tables exceed the limit of %u (capacity %" PRIu64
                  " sectors, grain %" PRIu64 ")", e->name, gts, VMDK_MAX_GTS, e->capacity, grain);
        return -EINVAL;
    }
    e->n_gts = (uint32_t)gts;
    return 0;
}

/* Grain directory, its redundant copy, the overhead and the embedded descriptor against the file size. */
static int vmdk_check_offsets(VmdkExtent *e, const uint8_t *h, Error *err)
{
    uint64_t gd_bytes = (uint64_t)e->n_gts * 4;
    uint64_t overhead = ld_le64(h + SH_OVERHEAD), desc_size = ld_le64(h + SH_DESC_SIZE);
    if (!sectors_to_bytes(ld_le64(h + SH_GD_OFFSET), &e->gd_off) || !range_in_file(e->gd_off, gd_bytes, e->file_size))
        return vmdk_bad_header(err, e->name, "the grain directory lies outside the file");
    if (e->flags & VMDK_FLAG_RGD) {
        if (!sectors_to_bytes(ld_le64(h + SH_RGD_OFFSET), &e->rgd_off) ||
            !range_in_file(e->rgd_off, gd_bytes, e->file_size))
            return vmdk_bad_header(err, e->name, "the redundant grain directory lies outside the file");
    }
    if (!sectors_to_bytes(overhead, &e->meta_end) || e->meta_end > (uint64_t)e->file_size)
        return vmdk_bad_header(err, e->name, "the overhead extends past the end of the file");
    if (desc_size) {
        if (desc_size > VMDK_MAX_DESC_BYTES / VMDK_SECTOR) {
            error_set(err, EINVAL, "%s: embedded descriptor of %" PRIu64 " sectors exceeds the limit of %d bytes",
                      e->name, desc_size, VMDK_MAX_DESC_BYTES);
            return -EINVAL;
        }
        e->desc_bytes = desc_size * VMDK_SECTOR;
        if (!sectors_to_bytes(ld_le64(h + SH_DESC_OFFSET), &e->desc_off) ||
            !range_in_file(e->desc_off, e->desc_bytes, e->file_size))
            return vmdk_bad_header(err, e->name, "the embedded descriptor lies outside the file");
    }
    return 0;
}

static int vmdk_read_gd(VmdkExtent *e, uint64_t *gd_budget, Error *err)
{
    size_t bytes = (size_t)e->n_gts * 4;
    if (bytes > *gd_budget) {
        error_set(err, EINVAL, "%s: the grain directories of the image's extents exceed %u MiB together",
                  e->name, VMDK_MAX_GD_TOTAL >> 20);
        return -EINVAL;
    }
    *gd_budget -= bytes;
    uint8_t *raw = malloc(bytes ? bytes : 1);
    e->gd = malloc(bytes ? bytes : 1);
    if (!raw || !e->gd) {
        free(raw);
        error_set(err, ENOMEM, "%s: out of memory for a grain directory of %zu bytes", e->name, bytes);
        return -ENOMEM;
    }
    int r = bytes ? bdrv_pread(e->file, (int64_t)e->gd_off, (int64_t)bytes, raw) : 0;
    if (r < 0) {
        free(raw);
        error_set(err, -r, "%s: cannot read the grain directory: %s", e->name, strerror(-r));
        return r;
    }
    for (uint32_t i = 0; i < e->n_gts; i++)
        e->gd[i] = ld_le32(raw + 4 * (size_t)i);
    free(raw);
    return 0;
}

static int vmdk_parse_header(VmdkExtent *e, const uint8_t *h, Error *err)
{
    int r = vmdk_check_identity(h, e->name, err);
    if (r < 0)
        return r;
    e->version = ld_le32(h + SH_VERSION);
    e->flags = ld_le32(h + SH_FLAGS);
    r = vmdk_check_flags(e, h, err);
    if (r == 0)
        r = vmdk_check_geometry(e, h, err);
    if (r == 0 && ld_le64(h + SH_GD_OFFSET) == VMDK_GD_AT_END)
        return 1; /* the caller reads the footer */
    if (r == 0)
        r = vmdk_check_offsets(e, h, err);
    return r;
}

/* Stream-optimized: the header says the directory is at the end; the footer (a full header copy, in the
 * second-to-last sector, before the end-of-stream marker) gives its place. */
static int vmdk_read_footer(VmdkExtent *e, uint8_t *h, Error *err)
{
    if (e->file_size < 3 * VMDK_SECTOR)
        return vmdk_bad_header(err, e->name, "the grain directory is at the end, but there is no footer");
    int r = bdrv_pread(e->file, e->file_size - 2 * VMDK_SECTOR, VMDK_SECTOR, h);
    if (r < 0) {
        error_set(err, -r, "%s: cannot read the footer: %s", e->name, strerror(-r));
        return r;
    }
    if (ld_le32(h + SH_MAGIC) != VMDK_MAGIC)
        return vmdk_bad_header(err, e->name, "the grain directory is at the end, but the footer is missing");
    r = vmdk_parse_header(e, h, err);
    if (r == 1)
        return vmdk_bad_header(err, e->name, "the footer does not say where the grain directory is");
    return r;
}

/* Reads and validates the sparse header of e->file; loads the grain directory within *gd_budget bytes. */
static int vmdk_open_sparse(VmdkExtent *e, uint64_t *gd_budget, Error *err)
{
    uint8_t h[VMDK_SECTOR];
    e->file_size = bdrv_getlength(e->file);
    if (e->file_size < 0) {
        error_set(err, (int)-e->file_size, "%s: cannot get the file size: %s", e->name,
                  strerror((int)-e->file_size));
        return (int)e->file_size;
    }
    if (e->file_size < VMDK_SECTOR) {
        error_set(err, EINVAL, "%s: file too short for a VMDK sparse header (%" PRId64 " bytes)", e->name,
                  e->file_size);
        return -EINVAL;
    }
    int r = bdrv_pread(e->file, 0, VMDK_SECTOR, h);
    if (r < 0) {
        error_set(err, -r, "%s: cannot read the header: %s", e->name, strerror(-r));
        return r;
    }
    r = vmdk_parse_header(e, h, err);
    if (r == 1) {
        /* the footer's descriptor fields are the header's: keep what the header said */
        uint64_t desc_off = ld_le64(h + SH_DESC_OFFSET), desc_size = ld_le64(h + SH_DESC_SIZE);
        r = vmdk_read_footer(e, h, err);
        if (r == 0 && (desc_off != ld_le64(h + SH_DESC_OFFSET) || desc_size != ld_le64(h + SH_DESC_SIZE)))
            r = vmdk_bad_header(err, e->name, "the footer and the header place the descriptor differently");
    }
    if (r == 0)
        r = vmdk_read_gd(e, gd_budget, err);
    return r;
}

/* ---------------------------------------------------------------- grain lookup */

static void vmdk_log_bad(VmdkExtent *e, uint64_t grain, const char *why)
{
    if (__atomic_exchange_n(&e->bad_logged, 1, __ATOMIC_RELAXED) == 0)
        log_msg("%s: grain %" PRIu64 " %s; it reads as an I/O error (logged once per extent)", e->name, grain, why);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

static size_t gt_slot(uint32_t gt, int ei)
{
    return ((size_t)gt * 31 + (size_t)ei) % VMDK_GT_CACHE_SLOTS;
}

/* Copies grain table gt (at gt_sector) of extent ei into gte (through the cache). */
static int vmdk_load_gt(VmdkState *s, int ei, uint32_t gt, uint32_t gt_sector, uint32_t gte[VMDK_GTES_PER_GT])
{
    VmdkExtent *e = &s->ext[ei];
    size_t slot = gt_slot(gt, ei);
    pthread_mutex_lock(&s->lock);
    GtSlot *c = &s->gt_cache[slot];
    if (c->gt_index == gt && s->gt_cache_ext[slot] == ei) {
        memcpy(gte, c->gte, sizeof(c->gte));
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    uint64_t gen = s->cache_gen;
    pthread_mutex_unlock(&s->lock);
    uint8_t raw[VMDK_GT_BYTES];
    int r = bdrv_pread(e->file, (int64_t)gt_sector * VMDK_SECTOR, VMDK_GT_BYTES, raw);
    if (r < 0)
        return r;
    for (int i = 0; i < VMDK_GTES_PER_GT; i++)
        gte[i] = ld_le32(raw + 4 * i);
    pthread_mutex_lock(&s->lock);
    if (gen == s->cache_gen) { /* no table was written meanwhile: what was read is current */
        memcpy(c->gte, gte, sizeof(c->gte));
        c->gt_index = gt;
        s->gt_cache_ext[slot] = ei;
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* The extent file's size: it grows under alloc_lock while reads look at it. */
static int64_t ext_size(const VmdkExtent *e)
{
    return __atomic_load_n(&e->file_size, __ATOMIC_ACQUIRE);
}

/* Bytes of grain g that lie inside the extent's capacity. */
static uint64_t grain_len(const VmdkExtent *e, uint64_t g)
{
    uint64_t cap = e->capacity * VMDK_SECTOR, start = g * e->grain_bytes;
    return MIN(e->grain_bytes, cap - start);
}

static GrainKind vmdk_classify(VmdkExtent *e, uint64_t g, uint32_t entry, uint64_t *host)
{
    if (entry == 0)
        return GRAIN_ABSENT;
    if (entry == VMDK_GTE_ZEROED && (e->flags & VMDK_FLAG_ZERO_GRAIN))
        return GRAIN_ZERO;
    uint64_t off = (uint64_t)entry * VMDK_SECTOR;
    uint64_t len = (e->flags & VMDK_FLAG_COMPRESSED) ? VMDK_MARKER_HEADER : grain_len(e, g);
    uint64_t gd_bytes = (uint64_t)e->n_gts * 4;
    if (!range_in_file(off, len, ext_size(e))) {
        vmdk_log_bad(e, g, "points past the end of the file");
        return GRAIN_BAD;
    }
    if (off < e->meta_end || overlaps(off, len, e->gd_off, gd_bytes) ||
        ((e->flags & VMDK_FLAG_RGD) && overlaps(off, len, e->rgd_off, gd_bytes)) ||
        (e->desc_bytes && overlaps(off, len, e->desc_off, e->desc_bytes))) {
        vmdk_log_bad(e, g, "points into the image's metadata");
        return GRAIN_BAD;
    }
    *host = off;
    return (e->flags & VMDK_FLAG_COMPRESSED) ? GRAIN_COMPRESSED : GRAIN_DATA;
}

static bool gt_is_empty(const uint32_t gte[VMDK_GTES_PER_GT])
{
    for (int i = 0; i < VMDK_GTES_PER_GT; i++)
        if (gte[i])
            return false;
    return true;
}

/* What grain g of extent ei is; *host for data and compressed grains. If whole_gt is given, it is set when
 * the answer (absent) holds for the rest of g's grain table, so a map of a huge empty disk takes one step
 * per table, not per grain. */
static int vmdk_grain(VmdkState *s, int ei, uint64_t g, GrainKind *kind, uint64_t *host, bool *whole_gt)
{
    VmdkExtent *e = &s->ext[ei];
    uint32_t gt = (uint32_t)(g / VMDK_GTES_PER_GT);
    uint32_t gt_sector = __atomic_load_n(&e->gd[gt], __ATOMIC_ACQUIRE);
    if (whole_gt)
        *whole_gt = false;
    if (gt_sector == 0) {
        *kind = GRAIN_ABSENT;
        if (whole_gt)
            *whole_gt = true;
        return 0;
    }
    if (!range_in_file((uint64_t)gt_sector * VMDK_SECTOR, VMDK_GT_BYTES, ext_size(e))) {
        vmdk_log_bad(e, g, "has its grain table outside the file");
        *kind = GRAIN_BAD;
        return 0;
    }
    uint32_t gte[VMDK_GTES_PER_GT];
    int r = vmdk_load_gt(s, ei, gt, gt_sector, gte);
    if (r < 0)
        return r;
    *kind = vmdk_classify(e, g, gte[g % VMDK_GTES_PER_GT], host);
    if (whole_gt && *kind == GRAIN_ABSENT)
        *whole_gt = gt_is_empty(gte);
    return 0;
}

/* Decompresses grain g stored at host into out (grain_bytes long). */
static int vmdk_inflate_grain(VmdkExtent *e, uint64_t g, uint64_t host, uint8_t *out)
{
    uint64_t max_in = e->grain_bytes + e->grain_bytes / 8 + 1024; /* deflate's worst case, with margin */
    uint64_t data = host, in_len;
    if (e->flags & VMDK_FLAG_MARKERS) {
        uint8_t m[VMDK_MARKER_HEADER];
        int r = bdrv_pread(e->file, (int64_t)host, VMDK_MARKER_HEADER, m);
        if (r < 0)
            return r;
        in_len = ld_le32(m + 8);
        data = host + VMDK_MARKER_HEADER;
        if (ld_le64(m) != g * (e->grain_bytes / VMDK_SECTOR) || in_len == 0 || in_len > max_in ||
            !range_in_file(data, in_len, ext_size(e))) {
            vmdk_log_bad(e, g, "has a damaged grain marker");
            return -EIO;
        }
    } else {
        in_len = MIN(max_in, (uint64_t)ext_size(e) - host);
    }
    uint8_t *in = malloc(in_len);
    if (!in)
        return -ENOMEM;
    int r = bdrv_pread(e->file, (int64_t)data, (int64_t)in_len, in);
    if (r < 0) {
        free(in);
        return r;
    }
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit(&z) != Z_OK) {
        free(in);
        return -ENOMEM;
    }
    z.next_in = in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)e->grain_bytes;
    int zr = inflate(&z, Z_FINISH);
    uint64_t got = z.total_out;
    inflateEnd(&z);
    free(in);
    /* a whole grain, or at the end of the extent at least what the capacity still holds */
    if (zr != Z_STREAM_END || (got != e->grain_bytes && got < grain_len(e, g))) {
        vmdk_log_bad(e, g, "does not inflate to one grain");
        return -EIO;
    }
    if (got < e->grain_bytes)
        memset(out + got, 0, e->grain_bytes - got);
    return 0;
}

/* ---------------------------------------------------------------- reading */

static int vmdk_find_extent(const VmdkState *s, uint64_t offset)
{
    int lo = 0, hi = s->n_ext - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (s->ext[mid].start <= offset)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

static void vmdk_check_parent_once(BlockNode *bs, VmdkState *s);

/* Decodes [off, off+bytes) of sparse extent ei, a run its map could not hand out: compressed grains are
 * inflated one at a time, a damaged grain fails with EIO. */
static int vmdk_decode_sparse(VmdkState *s, int ei, uint64_t off, uint64_t bytes, uint8_t *buf)
{
    VmdkExtent *e = &s->ext[ei];
    uint8_t *grain = NULL;
    int r = 0;
    for (uint64_t done = 0, n; r == 0 && done < bytes; done += n) {
        uint64_t pos = off + done, g = pos / e->grain_bytes, in_grain = pos % e->grain_bytes, host = 0;
        GrainKind kind;
        n = MIN(bytes - done, e->grain_bytes - in_grain);
        r = vmdk_grain(s, ei, g, &kind, &host, NULL);
        if (r == 0 && kind != GRAIN_COMPRESSED)
            r = -EIO; /* a damaged grain, or the table changed under the map: never guess */
        if (r == 0 && !grain && !(grain = malloc(e->grain_bytes)))
            r = -ENOMEM;
        if (r == 0)
            r = vmdk_inflate_grain(e, g, host, grain);
        if (r == 0)
            memcpy(buf + done, grain + in_grain, n);
    }
    free(grain);
    return r;
}

/* Status of a run of grains of one kind (host-contiguous for data) from off in sparse extent ei. */
static int vmdk_status_sparse(VmdkState *s, int ei, uint64_t off, uint64_t bytes, BlockStatus *st)
{
    VmdkExtent *e = &s->ext[ei];
    uint64_t n = 0;
    GrainKind first = GRAIN_ABSENT;
    uint64_t first_host = 0;
    while (n < bytes) {
        GrainKind kind;
        bool whole_gt;
        uint64_t pos = off + n, g = pos / e->grain_bytes, host = 0;
        int r = vmdk_grain(s, ei, g, &kind, &host, &whole_gt);
        if (r < 0)
            return r;
        uint64_t span_end = whole_gt ? (g / VMDK_GTES_PER_GT + 1) * VMDK_GTES_PER_GT * e->grain_bytes
                                     : (g + 1) * e->grain_bytes;
        uint64_t take = MIN(bytes - n, span_end - pos);
        host += pos % e->grain_bytes;
        if (n == 0) {
            first = kind;
            first_host = host;
        } else if (kind != first || (kind == GRAIN_DATA && host != first_host + n) || kind == GRAIN_BAD) {
            break;
        }
        n += take;
        if (kind == GRAIN_BAD)
            break;
    }
    st->bytes = (int64_t)n;
    switch (first) {
    case GRAIN_ABSENT:
        break;
    case GRAIN_ZERO:
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        break;
    case GRAIN_DATA:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        st->host_offset = (int64_t)first_host;
        st->host_file = e->file;
        break;
    case GRAIN_COMPRESSED:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_COMPRESSED;
        break;
    case GRAIN_BAD:
        st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED; /* the read reports the error */
        break;
    }
    return 0;
}

/* The map of [offset, offset+bytes) of one extent: a run of grains of one kind, or of a flat or zero
 * extent. */
static int vmdk_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    VmdkState *s = bs->opaque;
    (void)opaque;
    int ei = vmdk_find_extent(s, (uint64_t)offset);
    VmdkExtent *e = &s->ext[ei];
    uint64_t off = (uint64_t)offset - e->start;
    uint64_t n = MIN((uint64_t)bytes, e->bytes - off);
    if (e->type == EXT_SPARSE)
        return vmdk_status_sparse(s, ei, off, n, st);
    st->bytes = (int64_t)n;
    if (e->type == EXT_ZERO) {
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        return 0;
    }
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    st->host_offset = (int64_t)(e->flat_offset + off);
    st->host_file = e->file;
    return 0;
}

/* A run vmdk_map left to the driver (compressed or damaged grains) lies in one sparse extent. */
static int vmdk_decode(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st, void *opaque)
{
    VmdkState *s = bs->opaque;
    (void)st;
    (void)opaque;
    int ei = vmdk_find_extent(s, (uint64_t)offset);
    VmdkExtent *e = &s->ext[ei];
    uint64_t off = (uint64_t)offset - e->start;
    if (e->type != EXT_SPARSE || (uint64_t)bytes > e->bytes - off)
        return -EIO;
    return vmdk_decode_sparse(s, ei, off, (uint64_t)bytes, buf);
}

static const BlockReadMap vmdk_read_map = { .map = vmdk_map, .decode = vmdk_decode };

static int vmdk_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    vmdk_check_parent_once(bs, bs->opaque);
    return bdrv_read_mapped(bs, offset, bytes, buf, &vmdk_read_map, NULL);
}

static int vmdk_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    memset(st, 0, sizeof(*st));
    vmdk_check_parent_once(bs, bs->opaque); /* zero-copy reads ask block status and never come to vmdk_read */
    return vmdk_map(bs, offset, bytes, st, NULL);
}

/* ---------------------------------------------------------------- writing */

/* Writes one little-endian table entry (a GD or GT slot) at byte offset off of the extent file. */
static int vmdk_write_entry(VmdkExtent *e, uint64_t off, uint32_t v, const char *event)
{
    uint8_t le[4];
    st_le32(le, v);
    bdrv_debug_event(e->file, event);
    return bdrv_pwrite(e->file, (int64_t)off, 4, le, 0);
}

/* Appends len zero-or-given bytes at the end of the extent file (sector-aligned); returns the sector. */
static int vmdk_append(VmdkExtent *e, const void *buf, uint64_t len, uint32_t *sector)
{
    uint64_t off = (uint64_t)align_up(ext_size(e), VMDK_SECTOR), end;
    if (!add_ok_u64(off, len, &end) || end / VMDK_SECTOR > UINT32_MAX)
        return -EFBIG; /* grain table entries hold 32-bit sector numbers */
    int r = bdrv_pwrite(e->file, (int64_t)off, (int64_t)len, buf, 0);
    if (r < 0)
        return r;
    __atomic_store_n(&e->file_size, (int64_t)end, __ATOMIC_RELEASE);
    *sector = (uint32_t)(off / VMDK_SECTOR);
    return 0;
}

/* Grain directory entry gt has no table: appends a zeroed one (and its redundant copy), flushes them,
 * then points the directory entries at them. Called with alloc_lock held. */
static int vmdk_alloc_gt(VmdkExtent *e, uint32_t gt)
{
    static const uint8_t zeros[VMDK_GT_BYTES];
    uint32_t sec, rsec = 0;
    int r = vmdk_append(e, zeros, VMDK_GT_BYTES, &sec);
    if (r == 0 && e->rgd)
        r = vmdk_append(e, zeros, VMDK_GT_BYTES, &rsec);
    if (r == 0)
        r = bdrv_flush(e->file);
    if (r == 0)
        r = vmdk_write_entry(e, e->gd_off + 4 * (uint64_t)gt, sec, "l1_update");
    if (r == 0 && e->rgd) {
        r = vmdk_write_entry(e, e->rgd_off + 4 * (uint64_t)gt, rsec, "l1_update");
        e->rgd[gt] = rsec;
    }
    if (r == 0)
        __atomic_store_n(&e->gd[gt], sec, __ATOMIC_RELEASE);
    return r;
}

/* Sets grain table entry g to sector in the primary table, then the redundant one; then the cache. A
 * reader that read the table from the file before the update may cache it only if cache_gen did not
 * move meanwhile; one that cached it before the update has its slot patched here. */
static int vmdk_set_gte(VmdkState *s, int ei, uint64_t g, uint32_t sector)
{
    VmdkExtent *e = &s->ext[ei];
    uint32_t gt = (uint32_t)(g / VMDK_GTES_PER_GT), idx = (uint32_t)(g % VMDK_GTES_PER_GT);
    int r = vmdk_write_entry(e, (uint64_t)e->gd[gt] * VMDK_SECTOR + 4 * idx, sector, "l2_update");
    if (r == 0 && e->rgd)
        r = vmdk_write_entry(e, (uint64_t)e->rgd[gt] * VMDK_SECTOR + 4 * idx, sector, "l2_update");
    pthread_mutex_lock(&s->lock);
    s->cache_gen++;
    size_t slot = gt_slot(gt, ei);
    if (s->gt_cache[slot].gt_index == gt && s->gt_cache_ext[slot] == ei) {
        if (r == 0)
            s->gt_cache[slot].gte[idx] = sector;
        else
            s->gt_cache[slot].gt_index = -1; /* what the file holds now is unknown: read it again */
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* A first write into grain g (absent or zeroed): the whole grain is built (from the parent, or zeros),
 * the new bytes copied in, appended and flushed, and only then do the grain tables name it, so a crash
 * never leaves an entry pointing at unwritten data. Called with alloc_lock held. */
static int vmdk_alloc_grain(BlockNode *bs, VmdkState *s, int ei, uint64_t g, GrainKind kind, uint64_t in_grain,
                            uint64_t n, const uint8_t *buf)
{
    VmdkExtent *e = &s->ext[ei];
    uint8_t *grain = calloc(1, e->grain_bytes);
    if (!grain)
        return -ENOMEM;
    int r = 0;
    uint64_t gstart = g * e->grain_bytes, glen = grain_len(e, g);
    if (kind == GRAIN_ABSENT && bs->backing && (in_grain > 0 || n < glen))
        r = bdrv_pread(bs->backing, (int64_t)(e->start + gstart), (int64_t)glen, grain);
    memcpy(grain + in_grain, buf, n);
    uint32_t gt = (uint32_t)(g / VMDK_GTES_PER_GT), sector = 0;
    if (r == 0 && e->gd[gt] == 0)
        r = vmdk_alloc_gt(e, gt);
    if (r == 0)
        r = vmdk_append(e, grain, e->grain_bytes, &sector);
    free(grain);
    if (r == 0)
        r = bdrv_flush(e->file);
    if (r == 0)
        r = vmdk_set_gte(s, ei, g, sector);
    return r;
}

/* Where the CID value of descriptor text starts and ends (a line "CID = 1234abcd"); false if none. */
static bool find_cid(const char *text, size_t *vstart, size_t *vend)
{
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, "CID", 3) != 0)
            continue;
        p += 3;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '=')
            continue;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        *vstart = (size_t)(p - text);
        while (isxdigit((unsigned char)*p))
            p++;
        *vend = (size_t)(p - text);
        return true;
    }
    return false;
}

/* The CID changes the first time the disk is written after it is opened (the specification's rule), so
 * a delta link made on the old content notices that its parent changed. The descriptor is rewritten in
 * place: a standalone file whole, an embedded one within its sectors. Called with alloc_lock held. */
static int vmdk_new_cid(BlockNode *bs, VmdkState *s)
{
    uint64_t off = 0, len;
    if (s->standalone_descriptor) {
        int64_t n = bdrv_getlength(bs->file);
        if (n < 0)
            return (int)n;
        len = (uint64_t)MIN(n, VMDK_MAX_DESC_BYTES);
    } else {
        off = s->ext[0].desc_off;
        len = s->ext[0].desc_bytes;
    }
    char *text = calloc(1, len + 16), *out = calloc(1, len + 16);
    int r = text && out ? bdrv_pread(bs->file, (int64_t)off, (int64_t)len, text) : -ENOMEM;
    size_t vs, ve;
    if (r == 0 && find_cid(text, &vs, &ve)) {
        uint32_t cid;
        do {
            cid = (uint32_t)random() ^ (uint32_t)now_ns();
        } while (cid == s->cid || cid == UINT32_MAX);
        int n = snprintf(out, len + 16, "%.*s%08" PRIx32 "%s", (int)vs, text, cid, text + ve);
        size_t used = s->standalone_descriptor ? (size_t)n : strnlen(text, len) - (ve - vs) + 8;
        if ((uint64_t)n <= len + 8 && (s->standalone_descriptor || used <= len)) {
            bdrv_debug_event(bs->file, "descriptor_update");
            r = bdrv_pwrite(bs->file, (int64_t)off, s->standalone_descriptor ? n : (int64_t)MIN((uint64_t)n, len),
                            out, 0);
            if (r == 0)
                s->cid = cid;
        }
    }
    free(text);
    free(out);
    return r;
}

/* Writes up to the end of one grain of sparse extent ei; returns the bytes done or -errno. */
static int64_t vmdk_write_sparse(BlockNode *bs, VmdkState *s, int ei, uint64_t off, uint64_t bytes,
                                 const uint8_t *buf, int flags)
{
    VmdkExtent *e = &s->ext[ei];
    uint64_t g = off / e->grain_bytes, in_grain = off % e->grain_bytes;
    uint64_t n = MIN(bytes, e->grain_bytes - in_grain), host = 0;
    GrainKind kind;
    int r = vmdk_grain(s, ei, g, &kind, &host, NULL);
    if (r == 0 && kind != GRAIN_DATA && kind != GRAIN_BAD) {
        pthread_mutex_lock(&s->alloc_lock);
        r = vmdk_grain(s, ei, g, &kind, &host, NULL); /* another writer may have allocated it meanwhile */
        if (r == 0 && (kind == GRAIN_ABSENT || kind == GRAIN_ZERO))
            r = vmdk_alloc_grain(bs, s, ei, g, kind, in_grain, n, buf);
        pthread_mutex_unlock(&s->alloc_lock);
        if (r < 0 || kind == GRAIN_ABSENT || kind == GRAIN_ZERO)
            return r < 0 ? r : (int64_t)n;
    }
    if (r == 0 && kind == GRAIN_DATA)
        r = bdrv_pwrite(e->file, (int64_t)(host + in_grain), (int64_t)n, buf, flags);
    else if (r == 0)
        r = -EIO; /* a damaged entry: writing through it could overwrite metadata */
    return r < 0 ? r : (int64_t)n;
}

static int vmdk_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    VmdkState *s = bs->opaque;
    const uint8_t *p = buf;
    if (s->has_cid && !__atomic_load_n(&s->cid_changed, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&s->alloc_lock);
        int r = s->cid_changed ? 0 : vmdk_new_cid(bs, s);
        if (r == 0)
            __atomic_store_n(&s->cid_changed, 1, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&s->alloc_lock);
        if (r < 0)
            return r;
    }
    while (bytes > 0) {
        int ei = vmdk_find_extent(s, (uint64_t)offset);
        VmdkExtent *e = &s->ext[ei];
        uint64_t off = (uint64_t)offset - e->start;
        uint64_t n = MIN((uint64_t)bytes, e->bytes - off);
        int64_t done;
        if (e->type == EXT_FLAT) {
            int r = bdrv_pwrite(e->file, (int64_t)(e->flat_offset + off), (int64_t)n, p, flags);
            done = r < 0 ? r : (int64_t)n;
        } else {
            done = vmdk_write_sparse(bs, s, ei, off, n, p, flags);
        }
        if (done < 0)
            return (int)done;
        offset += done;
        bytes -= done;
        p += done;
    }
    return 0;
}

static int vmdk_flush(BlockNode *bs)
{
    VmdkState *s = bs->opaque;
    for (int i = 0; i < s->n_ext; i++)
        if (s->ext[i].owns_file) {
            int r = bdrv_flush(s->ext[i].file);
            if (r < 0)
                return r;
        }
    return 0; /* the core flushes bs->file */
}

/* --rw: every extent must be one this driver can write, and a redundant directory must mirror the
 * primary one (each table present in both), so that every grain table update has both places. */
static int vmdk_check_writable(BlockNode *bs, VmdkExtent *e, Error *err)
{
    if (e->type == EXT_ZERO || (e->type == EXT_SPARSE && (e->flags & VMDK_FLAG_COMPRESSED))) {
        error_set(err, EROFS, "%s: writing %s extents is not supported%s%s%s; mount read-only or use --overlay FILE",
                  bs->filename, e->type == EXT_ZERO ? "ZERO" : "stream-optimized (compressed)",
                  e->owns_file ? " (extent \"" : "", e->owns_file ? e->name : "", e->owns_file ? "\")" : "");
        return -EROFS;
    }
    if (e->type != EXT_SPARSE || !(e->flags & VMDK_FLAG_RGD))
        return 0;
    size_t bytes = (size_t)e->n_gts * 4;
    uint8_t *raw = malloc(bytes ? bytes : 1);
    e->rgd = malloc(bytes ? bytes : 1);
    if (!raw || !e->rgd) {
        free(raw);
        error_set(err, ENOMEM, "%s: out of memory", e->name);
        return -ENOMEM;
    }
    int r = bytes ? bdrv_pread(e->file, (int64_t)e->rgd_off, (int64_t)bytes, raw) : 0;
    for (uint32_t i = 0; r == 0 && i < e->n_gts; i++) {
        e->rgd[i] = ld_le32(raw + 4 * (size_t)i);
        bool rgt_ok = range_in_file((uint64_t)e->rgd[i] * VMDK_SECTOR, VMDK_GT_BYTES, e->file_size);
        if ((e->gd[i] != 0) != (e->rgd[i] != 0) || (e->rgd[i] && !rgt_ok) || (e->rgd[i] && e->rgd[i] == e->gd[i])) {
            error_set(err, EINVAL, "%s: the redundant grain directory of \"%s\" does not mirror the primary one "
                      "(entry %" PRIu32 "); refusing to write", bs->filename, e->name, i);
            r = -EINVAL;
        }
    }
    free(raw);
    return r;
}

/* ---------------------------------------------------------------- delta links */

static void vmdk_check_parent_once(BlockNode *bs, VmdkState *s)
{
    if (!bs->backing || !s->has_parent_cid || __atomic_exchange_n(&s->parent_checked, 1, __ATOMIC_RELAXED))
        return;
    if (strcmp(bs->backing->drv->name, "vmdk") != 0)
        return;
    const VmdkState *p = bs->backing->opaque;
    if (p->has_cid && p->cid != s->parent_cid)
        log_msg("%s: warning: parentCID %08" PRIx32 " does not match the CID %08" PRIx32 " of the parent %s; "
                "the parent may have changed since this delta was made", bs->filename, s->parent_cid, p->cid,
                bs->backing->filename);
}

static int vmdk_set_parent(BlockNode *bs, VmdkState *s, const Descriptor *d)
{
    s->cid = d->cid;
    s->has_cid = d->has_cid;
    s->parent_cid = d->parent_cid;
    s->has_parent_cid = d->has_parent_cid && d->parent_cid != UINT32_MAX;
    if (!s->has_parent_cid)
        return 0;
    if (!d->has_parent_hint || !d->parent_hint[0]) {
        log_msg("%s: the descriptor has a parentCID but no parentFileNameHint; opened without its parent",
                bs->filename);
        return 0;
    }
    s->parent_hint = strdup(d->parent_hint);
    bs->backing_name = strdup(d->parent_hint);
    bs->backing_format_hint = strdup("vmdk");
    return s->parent_hint && bs->backing_name && bs->backing_format_hint ? 0 : -ENOMEM;
}

/* ---------------------------------------------------------------- extents from the descriptor */

/* Opens the file an extent line names, under the extent-path policy (the backing-name policy's). */
static int vmdk_open_extent_file(BlockNode *bs, const BlockOpenOpts *opts, VmdkExtent *e, Error *err)
{
    char dir[PATH_MAX], path[2 * PATH_MAX];
    bool unsafe = opts && opts->unsafe_backing;
    if (e->name[0] == '/' && !unsafe) {
        error_set(err, EACCES, "%s: extent \"%s\" refused: absolute extent paths are not followed "
                  "(use --unsafe-backing)", bs->filename, e->name);
        return -EACCES;
    }
    path_dir_of(bs->filename, dir, sizeof(dir));
    if (e->name[0] == '/')
        snprintf(path, sizeof(path), "%s", e->name);
    else
        snprintf(path, sizeof(path), "%s/%s", dir, e->name);
    const char *why = bdrv_named_file_refusal(bs, opts, path);
    if (why) {
        error_set(err, EACCES, "%s: extent \"%s\" refused: %s (use --unsafe-backing)", bs->filename, e->name, why);
        return -EACCES;
    }
    struct stat st;
    if (stat(path, &st) < 0) {
        int en = errno;
        error_set(err, en, "%s: extent \"%s\": %s", bs->filename, e->name, strerror(en));
        return -en;
    }
    if (!S_ISREG(st.st_mode) && !unsafe) {
        error_set(err, EACCES, "%s: extent \"%s\" is not a regular file", bs->filename, e->name);
        return -EACCES;
    }
    e->file = bdrv_open_file(path, opts, bs->read_only, err);
    if (!e->file)
        return -(err->errnum ? err->errnum : EIO);
    e->owns_file = true;
    return 0;
}

static int vmdk_extent_type(VmdkExtent *e, const DescExtent *d, const char *file, Error *err)
{
    if (strcmp(d->access, "NOACCESS") == 0) {
        error_set(err, ENOTSUP, "%s: extent \"%s\" (%s) is marked NOACCESS", file, d->name, d->type);
        return -ENOTSUP;
    }
    if (strcmp(d->type, "FLAT") == 0 || strcmp(d->type, "VMFS") == 0)
        e->type = EXT_FLAT;
    else if (strcmp(d->type, "SPARSE") == 0)
        e->type = EXT_SPARSE;
    else if (strcmp(d->type, "ZERO") == 0)
        e->type = EXT_ZERO;
    else {
        error_set(err, ENOTSUP, "%s: extent type %s is not supported (only FLAT, VMFS, SPARSE and ZERO)", file,
                  d->type);
        return -ENOTSUP;
    }
    return 0;
}

static int vmdk_check_flat(VmdkExtent *e, const char *file, Error *err)
{
    int64_t fsize = bdrv_getlength(e->file);
    uint64_t end;
    if (fsize < 0) {
        error_set(err, (int)-fsize, "%s: extent \"%s\": cannot get its size", file, e->name);
        return (int)fsize;
    }
    if (!add_ok_u64(e->flat_offset, e->bytes, &end) || end > (uint64_t)fsize) {
        error_set(err, EINVAL, "%s: flat extent \"%s\" (%" PRId64 " bytes) is shorter than the %" PRIu64
                  " bytes the descriptor gives it", file, e->name, fsize, end);
        return -EINVAL;
    }
    return 0;
}

static int vmdk_open_one_extent(BlockNode *bs, const BlockOpenOpts *opts, VmdkExtent *e, const DescExtent *d,
                                uint64_t *gd_budget, Error *err)
{
    int r = vmdk_extent_type(e, d, bs->filename, err);
    if (r < 0 || e->type == EXT_ZERO)
        return r;
    if (!sectors_to_bytes(d->offset, &e->flat_offset)) {
        error_set(err, EINVAL, "%s: extent \"%s\": offset too large", bs->filename, d->name);
        return -EINVAL;
    }
    r = vmdk_open_extent_file(bs, opts, e, err);
    if (r < 0)
        return r;
    if (e->type == EXT_FLAT)
        return vmdk_check_flat(e, bs->filename, err);
    Error local = { .msg = "", .errnum = 0 };
    r = vmdk_open_sparse(e, gd_budget, &local);
    if (r < 0) /* local names the extent file; say which image's descriptor named it */
        error_set(err, local.errnum ? local.errnum : -r, "%s: extent %s", bs->filename,
                  local.msg[0] ? local.msg : strerror(-r));
    if (r == 0 && e->capacity * VMDK_SECTOR < e->bytes) {
        error_set(err, EINVAL, "%s: sparse extent \"%s\" holds %" PRIu64 " sectors, fewer than the descriptor's %"
                  PRIu64, bs->filename, e->name, e->capacity, e->bytes / VMDK_SECTOR);
        r = -EINVAL;
    }
    return r;
}

static int vmdk_open_extents(BlockNode *bs, VmdkState *s, const BlockOpenOpts *opts, const Descriptor *d,
                             Error *err)
{
    s->ext = calloc((size_t)d->n_ext, sizeof(*s->ext));
    if (!s->ext) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return -ENOMEM;
    }
    uint64_t start = 0, gd_budget = VMDK_MAX_GD_TOTAL;
    for (int i = 0; i < d->n_ext; i++) {
        VmdkExtent *e = &s->ext[i];
        s->n_ext = i + 1;
        e->name = strdup(d->ext[i].name[0] ? d->ext[i].name : "(zero)");
        if (!e->name) {
            error_set(err, ENOMEM, "%s: out of memory", bs->filename);
            return -ENOMEM;
        }
        uint64_t end;
        if (d->ext[i].sectors == 0 || d->ext[i].sectors > VMDK_MAX_CAPACITY ||
            !add_ok_u64(start, d->ext[i].sectors * VMDK_SECTOR, &end) || end > INT64_MAX) {
            error_set(err, EINVAL, "%s: extent %d has a size of %" PRIu64 " sectors, or the sum is too large",
                      bs->filename, i + 1, d->ext[i].sectors);
            return -EINVAL;
        }
        e->start = start;
        e->bytes = d->ext[i].sectors * VMDK_SECTOR;
        start += e->bytes;
        int r = vmdk_open_one_extent(bs, opts, e, &d->ext[i], &gd_budget, err);
        if (r < 0)
            return r;
    }
    s->size = start;
    return 0;
}

/* ---------------------------------------------------------------- open, close */

static void vmdk_close(BlockNode *bs)
{
    VmdkState *s = bs->opaque;
    if (!s)
        return;
    for (int i = 0; i < s->n_ext; i++) {
        if (s->ext[i].owns_file && s->ext[i].file)
            bdrv_close(s->ext[i].file);
        free(s->ext[i].gd);
        free(s->ext[i].rgd);
        free(s->ext[i].name);
    }
    free(s->ext);
    s->ext = NULL;
    s->n_ext = 0;
    free(s->gt_cache);
    free(s->gt_cache_ext);
    s->gt_cache = NULL;
    s->gt_cache_ext = NULL;
    free(s->parent_hint);
    s->parent_hint = NULL;
    if (s->lock_ready) {
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->alloc_lock);
    }
    s->lock_ready = false;
}

static int vmdk_read_text(BlockNode *file, int64_t off, int64_t len, char **out, const char *name, Error *err)
{
    *out = calloc(1, (size_t)len + 1);
    if (!*out) {
        error_set(err, ENOMEM, "%s: out of memory", name);
        return -ENOMEM;
    }
    int r = bdrv_pread(file, off, len, *out);
    if (r < 0)
        error_set(err, -r, "%s: cannot read the descriptor: %s", name, strerror(-r));
    return r;
}

/* A standalone descriptor file: bs->file is the text, every extent is another file. */
static int vmdk_open_descriptor(BlockNode *bs, VmdkState *s, const BlockOpenOpts *opts, Error *err)
{
    int64_t size = bdrv_getlength(bs->file);
    if (size < 0) {
        error_set(err, (int)-size, "%s: cannot get the file size", bs->filename);
        return (int)size;
    }
    if (size > VMDK_MAX_DESC_BYTES) {
        error_set(err, EINVAL, "%s: a descriptor file of %" PRId64 " bytes exceeds the limit of %d bytes",
                  bs->filename, size, VMDK_MAX_DESC_BYTES);
        return -EINVAL;
    }
    char *text;
    Descriptor d;
    memset(&d, 0, sizeof(d));
    int r = vmdk_read_text(bs->file, 0, size, &text, bs->filename, err);
    if (r == 0)
        r = desc_parse(&d, text, (size_t)size, bs->filename, err);
    free(text);
    s->standalone_descriptor = true;
    if (r == 0 && d.n_ext == 0) {
        error_set(err, EINVAL, "%s: the descriptor names no extent", bs->filename);
        r = -EINVAL;
    }
    if (r == 0) {
        snprintf(s->create_type, sizeof(s->create_type), "%s", d.create_type);
        r = vmdk_open_extents(bs, s, opts, &d, err);
    }
    if (r == 0)
        r = vmdk_set_parent(bs, s, &d);
    free(d.ext);
    return r;
}

/* The embedded descriptor of a monolithic sparse file must name this one sparse extent. */
static int vmdk_use_embedded(BlockNode *bs, VmdkState *s, VmdkExtent *e, Error *err)
{
    char *text;
    Descriptor d;
    memset(&d, 0, sizeof(d));
    int r = vmdk_read_text(bs->file, (int64_t)e->desc_off, (int64_t)e->desc_bytes, &text, bs->filename, err);
    if (r == 0)
        r = desc_parse(&d, text, (size_t)e->desc_bytes, bs->filename, err);
    free(text);
    /* QEMU writes an extent-less descriptor into each extent file of a twoGbMaxExtentSparse disk */
    if (r == 0 && d.n_ext > 1) {
        error_set(err, ENOTSUP, "%s: the embedded descriptor names %d extents (only one, this file, is possible)",
                  bs->filename, d.n_ext);
        r = -ENOTSUP;
    }
    if (r == 0 && d.n_ext == 1 && strcmp(d.ext[0].type, "SPARSE") != 0) {
        error_set(err, ENOTSUP, "%s: the embedded descriptor names a %s extent (only SPARSE, this file, is possible)",
                  bs->filename, d.ext[0].type);
        r = -ENOTSUP;
    }
    if (r == 0 && d.n_ext == 1 && d.ext[0].sectors > e->capacity) {
        error_set(err, EINVAL, "%s: the descriptor's extent of %" PRIu64 " sectors exceeds the capacity of %"
                  PRIu64, bs->filename, d.ext[0].sectors, e->capacity);
        r = -EINVAL;
    }
    if (r == 0) {
        snprintf(s->create_type, sizeof(s->create_type), "%s", d.create_type);
        if (d.n_ext == 1)
            e->bytes = d.ext[0].sectors * VMDK_SECTOR;
        r = vmdk_set_parent(bs, s, &d);
    }
    free(d.ext);
    return r;
}

/* A hosted sparse file opened directly: bs->file is the one extent. */
static int vmdk_open_monolithic(BlockNode *bs, VmdkState *s, Error *err)
{
    s->ext = calloc(1, sizeof(*s->ext));
    if (!s->ext) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return -ENOMEM;
    }
    s->n_ext = 1;
    VmdkExtent *e = &s->ext[0];
    e->name = strdup(bs->filename);
    if (!e->name)
        return -ENOMEM;
    e->type = EXT_SPARSE;
    e->file = bs->file;
    uint64_t gd_budget = VMDK_MAX_GD_TOTAL;
    int r = vmdk_open_sparse(e, &gd_budget, err);
    if (r < 0)
        return r;
    e->bytes = e->capacity * VMDK_SECTOR;
    if (e->desc_bytes)
        r = vmdk_use_embedded(bs, s, e, err);
    else
        snprintf(s->create_type, sizeof(s->create_type), "sparse extent");
    s->size = e->bytes;
    return r;
}

static int vmdk_do_open(BlockNode *bs, VmdkState *s, const BlockOpenOpts *opts, Error *err)
{
    uint8_t head[32] = { 0 };
    int64_t fsize = bdrv_getlength(bs->file);
    int r = fsize < 0 ? (int)fsize : bdrv_pread(bs->file, 0, MIN(fsize, (int64_t)sizeof(head)), head);
    if (r < 0) {
        error_set(err, -r, "%s: cannot read the image: %s", bs->filename, strerror(-r));
        return r;
    }
    s->gt_cache = calloc(VMDK_GT_CACHE_SLOTS, sizeof(*s->gt_cache));
    s->gt_cache_ext = calloc(VMDK_GT_CACHE_SLOTS, sizeof(*s->gt_cache_ext));
    if (!s->gt_cache || !s->gt_cache_ext) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return -ENOMEM;
    }
    for (int i = 0; i < VMDK_GT_CACHE_SLOTS; i++)
        s->gt_cache[i].gt_index = -1;
    if (ld_le32(head) == VMDK_MAGIC || ld_le32(head) == VMDK_COWD_MAGIC)
        r = vmdk_open_monolithic(bs, s, err);
    else if (memcmp(head, VMDK_DESC_SIGNATURE, strlen(VMDK_DESC_SIGNATURE)) == 0)
        r = vmdk_open_descriptor(bs, s, opts, err);
    else {
        error_set(err, EINVAL, "%s: not a VMDK image (neither a sparse extent nor a descriptor file)", bs->filename);
        r = -EINVAL;
    }
    s->writable = !bs->read_only;
    for (int i = 0; r == 0 && s->writable && i < s->n_ext; i++)
        r = vmdk_check_writable(bs, &s->ext[i], err);
    return r;
}

static int vmdk_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    VmdkState *s = bs->opaque;
    s->name = bs->filename;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->alloc_lock, NULL);
    s->lock_ready = true;
    Error local = { .msg = "", .errnum = 0 };
    int r = vmdk_do_open(bs, s, opts, &local);
    if (r < 0) {
        error_set(err, local.errnum ? local.errnum : -r, "%s", local.msg[0] ? local.msg : strerror(-r));
        vmdk_close(bs);
        return r;
    }
    bs->request_alignment = VMDK_SECTOR;
    return 0;
}

/* ---------------------------------------------------------------- info */

static int64_t vmdk_getlength(BlockNode *bs)
{
    VmdkState *s = bs->opaque;
    return (int64_t)s->size;
}

static int64_t vmdk_memory_used(BlockNode *bs)
{
    VmdkState *s = bs->opaque;
    int64_t n = (int64_t)(sizeof(GtSlot) + sizeof(int64_t)) * VMDK_GT_CACHE_SLOTS;
    for (int i = 0; i < s->n_ext; i++)
        n += (int64_t)sizeof(VmdkExtent) + (int64_t)s->ext[i].n_gts * 4;
    return n;
}

static const char *vmdk_extent_type_name(ExtentType t)
{
    return t == EXT_FLAT ? "flat" : t == EXT_SPARSE ? "sparse" : "zero";
}

static void vmdk_get_info(BlockNode *bs, InfoList *info)
{
    VmdkState *s = bs->opaque;
    info_add_str(info, "subformat", "%s", s->create_type[0] ? s->create_type : "unknown");
    info_add_int(info, "extents", s->n_ext);
    if (s->has_cid)
        info_add_str(info, "cid", "%08" PRIx32, s->cid);
    if (s->has_parent_cid) {
        info_add_str(info, "parent_cid", "%08" PRIx32, s->parent_cid);
        if (s->parent_hint)
            info_add_str(info, "parent_file_name_hint", "%s", s->parent_hint);
        if (bs->backing && strcmp(bs->backing->drv->name, "vmdk") == 0) {
            const VmdkState *p = bs->backing->opaque;
            if (p->has_cid)
                info_add_bool(info, "parent_cid_matches", p->cid == s->parent_cid);
        }
    }
    for (int i = 0; i < s->n_ext && i < 8; i++) {
        const VmdkExtent *e = &s->ext[i];
        char key[64];
        snprintf(key, sizeof(key), "extent%d", i);
        if (e->type == EXT_SPARSE)
            info_add_str(info, key, "%s sparse v%" PRIu32 " %" PRIu64 " bytes, grain %" PRIu64 "%s%s%s", e->name,
                         e->version, e->bytes, e->grain_bytes, (e->flags & VMDK_FLAG_COMPRESSED) ? ", compressed" : "",
                         (e->flags & VMDK_FLAG_RGD) ? ", redundant GD" : "",
                         (e->flags & VMDK_FLAG_ZERO_GRAIN) ? ", zeroed grains" : "");
        else
            info_add_str(info, key, "%s %s %" PRIu64 " bytes", e->name, vmdk_extent_type_name(e->type), e->bytes);
    }
}

static bool vmdk_has_zero_init(BlockNode *bs)
{
    (void)bs;
    return false;
}

const BlockDriver bdrv_vmdk = {
    .name = "vmdk",
    .instance_size = sizeof(VmdkState),
    .supports_backing = true,
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .read = vmdk_read,
    .write = vmdk_write,
    .flush = vmdk_flush,
    .block_status = vmdk_block_status,
    .getlength = vmdk_getlength,
    .get_info = vmdk_get_info,
    .memory_used = vmdk_memory_used,
    .has_zero_init = vmdk_has_zero_init,
};
