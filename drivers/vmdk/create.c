/* SPDX-License-Identifier: MIT */
/*
 * create.c - making new VMDK images (the driver's `create` slot, reached through bdrv_create): the
 * subformats monolithicSparse (one hosted sparse file, the descriptor embedded), monolithicFlat and
 * twoGbMaxExtentFlat (a descriptor file and flat extent files, sparse on the host), and
 * twoGbMaxExtentSparse (a descriptor file and hosted sparse extent files of at most 2 GiB each); qemu-img's
 * option names (subformat, adapter_type, hwversion, compat6, toolsversion, zeroed_grain, backing_file,
 * backing_fmt); a delta link to a VMDK parent (parentFileNameHint as given, parentCID = the parent's CID).
 * Sparse extents get the layout the specification describes: header, embedded descriptor, redundant grain
 * directory and its tables, grain directory and its tables, every table present and zeroed, the data from
 * the next grain boundary on.  Extent files are written first, the descriptor last; a file that would
 * overwrite the parent is refused.  It owns no open node.
 */
#include "vmdk.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define VMDK_CREATE_GRAIN      128u                  /* sectors: 64 KiB grains, as VMware and qemu write */
#define VMDK_CREATE_DESC_SECS  20u                   /* the embedded descriptor's room */
#define VMDK_SPLIT_SECTORS     (UINT64_C(1) << 22)   /* 2 GiB extents of the twoGbMaxExtent subformats */
#define VMDK_MAX_HINT          900                   /* a parentFileNameHint line stays under VMDK_MAX_LINE */

typedef enum { SUB_MONO_SPARSE, SUB_MONO_FLAT, SUB_2GB_SPARSE, SUB_2GB_FLAT } Subformat;

static const char *const subformat_names[] = { "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                                               "twoGbMaxExtentFlat" };

typedef struct VmdkCreate {
    const char *filename;
    Error *err;
    Subformat sub;
    char adapter[16];
    char hwversion[16];
    char toolsversion[16];
    bool compat6, zeroed_grain;
    char *backing, *backing_fmt;
} VmdkCreate;

const BlockOptionSpec vmdk_create_options[] = {
    { "subformat", BDRV_OPT_STRING, 0,
      "monolithicSparse (default), monolithicFlat, twoGbMaxExtentSparse or twoGbMaxExtentFlat" },
    { "adapter_type", BDRV_OPT_STRING, 0, "ide (default), lsilogic, buslogic or legacyESX" },
    { "hwversion", BDRV_OPT_STRING, 0, "virtual hardware version written in the descriptor (default 4)" },
    { "compat6", BDRV_OPT_BOOL, 0, "hardware version 6 (not with hwversion)" },
    { "toolsversion", BDRV_OPT_STRING, 0, "VMware tools version written in the descriptor" },
    { "zeroed_grain", BDRV_OPT_BOOL, 0, "zeroed-grain entries (version 2 sparse extents): cheap write-zeroes" },
    { "backing_file", BDRV_OPT_STRING, 0, "the parent image (a VMDK), as -b" },
    { "backing_fmt", BDRV_OPT_STRING, 0, "the parent's format, vmdk if given, as -F" },
    { NULL, 0, 0, NULL },
};

/* ---------------------------------------------------------------- options */

static int bad_option(VmdkCreate *c, const char *key, const char *value, const char *why)
{
    error_set(c->err, EINVAL, "%s: vmdk creation option '%s': %s%s%s%s", c->filename, key, why,
              value ? " ('" : "", value ? value : "", value ? "')" : "");
    return -EINVAL;
}

static int copy_word(VmdkCreate *c, const char *key, const char *value, char *out, size_t len)
{
    size_t n = strlen(value);
    if (n == 0 || n >= len)
        return bad_option(c, key, value, "empty or too long");
    for (size_t i = 0; i < n; i++)
        if (!(value[i] >= '0' && value[i] <= '9'))
            return bad_option(c, key, value, "not a number");
    memcpy(out, value, n + 1);
    return 0;
}

static int parse_subformat(VmdkCreate *c, const char *value)
{
    for (size_t i = 0; i < sizeof(subformat_names) / sizeof(subformat_names[0]); i++)
        if (!strcmp(value, subformat_names[i])) {
            c->sub = (Subformat)i;
            return 0;
        }
    return bad_option(c, "subformat", value, "imgfuse creates monolithicSparse, monolithicFlat, "
                      "twoGbMaxExtentSparse or twoGbMaxExtentFlat");
}

static int parse_item(const char *key, const char *value, void *opaque)
{
    VmdkCreate *c = opaque;
    if (!value)
        return bad_option(c, key, NULL, "needs a value");
    if (!strcmp(key, "subformat"))
        return parse_subformat(c, value);
    if (!strcmp(key, "adapter_type")) {
        if (strcmp(value, "ide") && strcmp(value, "lsilogic") && strcmp(value, "buslogic") &&
            strcmp(value, "legacyESX"))
            return bad_option(c, key, value, "not ide, lsilogic, buslogic or legacyESX");
        snprintf(c->adapter, sizeof(c->adapter), "%s", value);
        return 0;
    }
    if (!strcmp(key, "hwversion"))
        return copy_word(c, key, value, c->hwversion, sizeof(c->hwversion));
    if (!strcmp(key, "toolsversion"))
        return copy_word(c, key, value, c->toolsversion, sizeof(c->toolsversion));
    if (!strcmp(key, "compat6") || !strcmp(key, "zeroed_grain")) {
        int bv = bdrv_parse_bool(value);
        if (bv < 0)
            return bad_option(c, key, value, "not on or off");
        *(!strcmp(key, "compat6") ? &c->compat6 : &c->zeroed_grain) = bv == 1;
        return 0;
    }
    if (!strcmp(key, "backing_file") || !strcmp(key, "backing_fmt")) {
        char **dst = !strcmp(key, "backing_file") ? &c->backing : &c->backing_fmt;
        free(*dst);
        return (*dst = strdup(value)) ? 0 : -ENOMEM;
    }
    error_set(c->err, EINVAL, "%s: unknown vmdk creation option '%s'", c->filename, key);
    return -EINVAL;
}

/* The options, then -b/-F over backing_file/backing_fmt, and the checks between them. */
static int parse_options(VmdkCreate *c, const CreateOpts *opts)
{
    snprintf(c->adapter, sizeof(c->adapter), "ide");
    snprintf(c->toolsversion, sizeof(c->toolsversion), "2147483647");
    int r = bdrv_create_opts_each(opts->options, parse_item, c);
    if (r < 0)
        return r;
    if (c->compat6 && c->hwversion[0])
        return bad_option(c, "compat6", NULL, "cannot be on with hwversion set");
    if (!c->hwversion[0])
        snprintf(c->hwversion, sizeof(c->hwversion), "%s", c->compat6 ? "6" : "4");
    if (opts->backing && opts->backing[0]) {
        free(c->backing);
        c->backing = strdup(opts->backing);
    }
    if (opts->backing_format) {
        free(c->backing_fmt);
        c->backing_fmt = strdup(opts->backing_format);
    }
    if ((opts->backing && !c->backing) || (opts->backing_format && !c->backing_fmt))
        return -ENOMEM;
    if (c->backing && !c->backing[0]) {
        free(c->backing);
        c->backing = NULL;
    }
    if (c->backing_fmt && strcmp(c->backing_fmt, "vmdk")) {
        error_set(c->err, EINVAL, "%s: a VMDK delta link needs a vmdk parent, not '%s'", c->filename, c->backing_fmt);
        return -EINVAL;
    }
    if (c->backing && (c->sub == SUB_MONO_FLAT || c->sub == SUB_2GB_FLAT)) {
        error_set(c->err, EINVAL, "%s: a flat image cannot have a backing file", c->filename);
        return -EINVAL;
    }
    if (c->backing && (strlen(c->backing) > VMDK_MAX_HINT || strpbrk(c->backing, "\"\n\r"))) {
        error_set(c->err, EINVAL, "%s: the backing file name is longer than %d bytes or holds a quote or a "
                  "line break", c->filename, VMDK_MAX_HINT);
        return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- the parent */

/* The parent's CID (0 if it has none) and its file's identity, for the overwrite check. */
static int parent_cid(VmdkCreate *c, uint32_t *cid, struct stat *st)
{
    char path[2 * PATH_MAX];
    path_beside(c->filename, c->backing, path, sizeof(path));
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = true;
    o.format = "vmdk";
    o.no_backing = true;
    Error local = { .msg = "", .errnum = 0 };
    BlockNode *b = bdrv_open(path, &o, &local);
    if (!b) {
        error_set(c->err, local.errnum ? local.errnum : EINVAL, "%s: cannot open the backing file: %s",
                  c->filename, local.msg);
        return -(local.errnum ? local.errnum : EINVAL);
    }
    const VmdkState *p = b->opaque;
    *cid = p->has_cid ? p->cid : 0;
    bdrv_close(b);
    return stat(path, st) == 0 ? 0 : -errno;
}

/* ---------------------------------------------------------------- files */

/* path must not name the parent's file: creating it would truncate the parent. */
static int not_the_parent(VmdkCreate *c, const char *path, const struct stat *parent)
{
    struct stat st;
    if (!parent || stat(path, &st) < 0 || st.st_dev != parent->st_dev || st.st_ino != parent->st_ino)
        return 0;
    error_set(c->err, EINVAL, "%s: creating %s would overwrite the backing file", c->filename, path);
    return -EINVAL;
}

/* The name of extent i (from 1) of a split or flat image: "NAME-s001.vmdk", "NAME-flat.vmdk". */
static void extent_name(const VmdkCreate *c, int i, char *out, size_t len)
{
    const char *base = path_base_of(c->filename);
    size_t n = strlen(base);
    if (n > 5 && !strcmp(base + n - 5, ".vmdk"))
        n -= 5;
    if (c->sub == SUB_MONO_FLAT)
        snprintf(out, len, "%.*s-flat.vmdk", (int)n, base);
    else
        snprintf(out, len, "%.*s-%c%03d.vmdk", (int)n, base, c->sub == SUB_2GB_SPARSE ? 's' : 'f', i);
}

static void extent_path(const VmdkCreate *c, const char *name, char *out, size_t len)
{
    char dir[PATH_MAX];
    path_dir_of(c->filename, dir, sizeof(dir));
    snprintf(out, len, "%s/%s", dir, name);
}

/* ---------------------------------------------------------------- the descriptor */

typedef struct DescText {
    char *buf;
    size_t len, cap;
} DescText;

static void desc_add(DescText *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void desc_add(DescText *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(d->buf + d->len, d->len < d->cap ? d->cap - d->len : 0, fmt, ap);
    va_end(ap);
    d->len += n > 0 ? (size_t)n : 0;
}

/* The descriptor text of the new disk into d (d->len > d->cap: it did not fit). */
static void vmdk_desc_text(const VmdkCreate *c, DescText *d, uint64_t sectors, uint32_t cid, uint32_t pcid)
{
    static const char *const kind[] = { "SPARSE", "FLAT", "SPARSE", "FLAT" };
    desc_add(d, "# Disk DescriptorFile\nversion=1\nCID=%08" PRIx32 "\nparentCID=%08" PRIx32 "\ncreateType=\"%s\"\n",
             cid, c->backing ? pcid : UINT32_MAX, subformat_names[c->sub]);
    if (c->backing)
        desc_add(d, "parentFileNameHint=\"%s\"\n", c->backing);
    desc_add(d, "\n# Extent description\n");
    int n = c->sub == SUB_2GB_SPARSE || c->sub == SUB_2GB_FLAT ? (int)((sectors + VMDK_SPLIT_SECTORS - 1) / VMDK_SPLIT_SECTORS) : 1;
    for (int i = 1; i <= n; i++) {
        uint64_t len = n == 1 ? sectors : MIN(VMDK_SPLIT_SECTORS, sectors - (uint64_t)(i - 1) * VMDK_SPLIT_SECTORS);
        char name[PATH_MAX];
        if (c->sub == SUB_MONO_SPARSE)
            snprintf(name, sizeof(name), "%s", path_base_of(c->filename));
        else
            extent_name(c, i, name, sizeof(name));
        desc_add(d, "RW %" PRIu64 " %s \"%s\"%s\n", len, kind[c->sub], name,
                 c->sub == SUB_MONO_FLAT || c->sub == SUB_2GB_FLAT ? " 0" : "");
    }
    bool ide = !strcmp(c->adapter, "ide");
    uint64_t heads = ide ? 16 : 255, cyl = MIN(sectors / (heads * 63), ide ? 16383u : 65535u);
    desc_add(d, "\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"%s\"\nddb.geometry.cylinders = \"%" PRIu64
             "\"\nddb.geometry.heads = \"%" PRIu64 "\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"%s\"\n"
             "ddb.toolsVersion = \"%s\"\n", c->hwversion, cyl, heads, c->adapter, c->toolsversion);
}

/* ---------------------------------------------------------------- sparse extents */

/* Where the parts of a new hosted sparse extent of cap sectors lie (sectors). */
typedef struct SparseLayout {
    uint64_t n_gts, gd_secs, rgd, rgt, gd, gt, overhead;
} SparseLayout;

static void sparse_layout(uint64_t cap, bool embedded, SparseLayout *l)
{
    uint64_t grains = (cap + VMDK_CREATE_GRAIN - 1) / VMDK_CREATE_GRAIN;
    l->n_gts = (grains + VMDK_GTES_PER_GT - 1) / VMDK_GTES_PER_GT;
    l->gd_secs = (l->n_gts * 4 + VMDK_SECTOR - 1) / VMDK_SECTOR;
    l->rgd = 1 + (embedded ? VMDK_CREATE_DESC_SECS : 0);
    l->rgt = l->rgd + l->gd_secs;
    l->gd = l->rgt + l->n_gts * (VMDK_GT_BYTES / VMDK_SECTOR);
    l->gt = l->gd + l->gd_secs;
    uint64_t end = l->gt + l->n_gts * (VMDK_GT_BYTES / VMDK_SECTOR);
    l->overhead = (end + VMDK_CREATE_GRAIN - 1) / VMDK_CREATE_GRAIN * VMDK_CREATE_GRAIN;
}

static void sparse_header(uint8_t *h, const VmdkCreate *c, uint64_t cap, const SparseLayout *l, bool embedded)
{
    memset(h, 0, VMDK_SECTOR);
    st_le32(h + SH_MAGIC, VMDK_MAGIC);
    st_le32(h + SH_VERSION, c->zeroed_grain ? 2 : 1);
    st_le32(h + SH_FLAGS, VMDK_FLAG_NL_TEST | VMDK_FLAG_RGD | (c->zeroed_grain ? VMDK_FLAG_ZERO_GRAIN : 0));
    st_le64(h + SH_CAPACITY, cap);
    st_le64(h + SH_GRAIN_SIZE, VMDK_CREATE_GRAIN);
    st_le64(h + SH_DESC_OFFSET, embedded ? 1 : 0);
    st_le64(h + SH_DESC_SIZE, embedded ? VMDK_CREATE_DESC_SECS : 0);
    st_le32(h + SH_NUM_GTES, VMDK_GTES_PER_GT);
    st_le64(h + SH_RGD_OFFSET, l->rgd);
    st_le64(h + SH_GD_OFFSET, l->gd);
    st_le64(h + SH_OVERHEAD, l->overhead);
    memcpy(h + SH_EOL_CHARS, "\n \r\n", 4);
}

/* One directory (first table at sector first) written at sector at. */
static int write_directory(BlockNode *f, uint64_t at, uint64_t first, const SparseLayout *l)
{
    uint8_t *gd = calloc(l->gd_secs, VMDK_SECTOR);
    if (!gd)
        return -ENOMEM;
    for (uint64_t i = 0; i < l->n_gts; i++)
        st_le32(gd + 4 * i, (uint32_t)(first + i * (VMDK_GT_BYTES / VMDK_SECTOR)));
    int r = bdrv_pwrite(f, (int64_t)(at * VMDK_SECTOR), (int64_t)(l->gd_secs * VMDK_SECTOR), gd, 0);
    free(gd);
    return r;
}

/* A hosted sparse extent of cap sectors at path, with the descriptor desc embedded if given. The tables
 * are holes of the file (zeros), the file as long as the overhead. */
static int write_sparse_extent(VmdkCreate *c, const char *path, uint64_t cap, const DescText *desc)
{
    SparseLayout l;
    sparse_layout(cap, desc != NULL, &l);
    if (l.n_gts > VMDK_MAX_GTS) {
        error_set(c->err, EFBIG, "%s: %" PRIu64 " sectors are too many for one sparse extent", c->filename, cap);
        return -EFBIG;
    }
    CreateOpts fo = { .size = (int64_t)(l.overhead * VMDK_SECTOR) };
    int r = bdrv_create("file", path, &fo, c->err);
    BlockOpenOpts oo;
    block_open_opts_init(&oo);
    BlockNode *f = r == 0 ? bdrv_open_file(path, &oo, false, c->err) : NULL;
    if (!f)
        return r < 0 ? r : -(c->err->errnum ? c->err->errnum : EIO);
    uint8_t *head = calloc(1 + VMDK_CREATE_DESC_SECS, VMDK_SECTOR);
    r = head ? 0 : -ENOMEM;
    if (r == 0) {
        sparse_header(head, c, cap, &l, desc != NULL);
        if (desc)
            memcpy(head + VMDK_SECTOR, desc->buf, desc->len);
        r = bdrv_pwrite(f, 0, (int64_t)((desc ? 1 + VMDK_CREATE_DESC_SECS : 1) * VMDK_SECTOR), head, 0);
    }
    if (r == 0)
        r = write_directory(f, l.rgd, l.rgt, &l);
    if (r == 0)
        r = write_directory(f, l.gd, l.gt, &l);
    if (r == 0)
        r = bdrv_flush(f);
    free(head);
    bdrv_close(f);
    return r;
}

/* ---------------------------------------------------------------- create */

static int write_extents(VmdkCreate *c, uint64_t sectors, const struct stat *parent)
{
    int n = (int)((sectors + VMDK_SPLIT_SECTORS - 1) / VMDK_SPLIT_SECTORS);
    if (c->sub == SUB_MONO_FLAT)
        n = 1;
    int r = 0;
    for (int i = 1; r == 0 && i <= n; i++) {
        uint64_t len = n == 1 ? sectors : MIN(VMDK_SPLIT_SECTORS, sectors - (uint64_t)(i - 1) * VMDK_SPLIT_SECTORS);
        char name[PATH_MAX], path[2 * PATH_MAX];
        extent_name(c, i, name, sizeof(name));
        extent_path(c, name, path, sizeof(path));
        r = not_the_parent(c, path, parent);
        if (r == 0 && c->sub == SUB_2GB_SPARSE)
            r = write_sparse_extent(c, path, len, NULL);
        else if (r == 0) {
            CreateOpts fo = { .size = (int64_t)(len * VMDK_SECTOR) };
            r = bdrv_create("file", path, &fo, c->err);
        }
    }
    return r;
}

static int vmdk_do_create(VmdkCreate *c, const CreateOpts *opts)
{
    uint64_t sectors = (uint64_t)(opts->size + VMDK_SECTOR - 1) / VMDK_SECTOR;
    uint64_t max = c->sub == SUB_2GB_SPARSE || c->sub == SUB_2GB_FLAT ? VMDK_SPLIT_SECTORS * VMDK_MAX_EXTENTS
                                                                      : (uint64_t)VMDK_MAX_GTS * VMDK_GTES_PER_GT * VMDK_CREATE_GRAIN;
    if (opts->size <= 0 || sectors > max) {
        error_set(c->err, EINVAL, "%s: invalid virtual size for vmdk %s (1 byte to %" PRIu64 " GiB)", c->filename,
                  subformat_names[c->sub], max >> 21);
        return -EINVAL;
    }
    uint32_t pcid = 0, cid;
    struct stat pst;
    int r = c->backing ? parent_cid(c, &pcid, &pst) : 0;
    if (r == 0)
        r = not_the_parent(c, c->filename, c->backing ? &pst : NULL);
    if (r < 0)
        return r;
    do {
        cid = (uint32_t)random() ^ (uint32_t)now_ns() ^ ((uint32_t)getpid() << 16);
    } while (cid == UINT32_MAX || cid == pcid);
    char text[VMDK_MAX_DESC_BYTES];
    DescText d = { .buf = text, .len = 0, .cap = sizeof(text) };
    vmdk_desc_text(c, &d, sectors, cid, pcid);
    bool embedded = c->sub == SUB_MONO_SPARSE;
    if (d.len >= (embedded ? VMDK_CREATE_DESC_SECS * VMDK_SECTOR : sizeof(text))) {
        error_set(c->err, EINVAL, "%s: the descriptor does not fit in its %u bytes", c->filename,
                  embedded ? VMDK_CREATE_DESC_SECS * VMDK_SECTOR : (unsigned)sizeof(text));
        return -EINVAL;
    }
    if (embedded)
        return write_sparse_extent(c, c->filename, sectors, &d);
    r = write_extents(c, sectors, c->backing ? &pst : NULL);
    return r < 0 ? r : bdrv_create_image_file(c->filename, text, d.len, c->err);
}

int vmdk_create(const char *filename, const CreateOpts *opts, Error *err)
{
    VmdkCreate c;
    memset(&c, 0, sizeof(c));
    c.filename = filename;
    c.err = err;
    int r = parse_options(&c, opts);
    if (r == 0)
        r = vmdk_do_create(&c, opts);
    free(c.backing);
    free(c.backing_fmt);
    return r;
}
