/* SPDX-License-Identifier: MIT */
/*
 * tree.c - the mount tree: the table of entries (inode number -> entry), lookups by name, the fixed part
 * of the tree (disk.raw, info, info.json, stats.json, layers/N-NAME/{disk.raw,map}) and the generated
 * files' renderers.  The snapshot part of the tree is in snapshots.c.  It knows no image format.
 */
#include "fs_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* ---------------------------------------------------------------- lookups by name */

/* Attached entries are found by (parent, name) through a hash table chained through Entry.hnext, so a
 * lookup costs the same in a directory of 65,536 snapshots as in the root (ls -l of such a directory
 * took minutes when every lookup scanned the whole table). Guarded by fs->lock. */
static size_t child_hash(const Fs *fs, fuse_ino_t parent, const char *name)
{
    uint64_t h = (1469598103934665603ULL ^ fs->hash_seed) + (uint64_t)parent; /* FNV-1a over the name */
    for (; *name; name++)
        h = (h ^ (uint8_t)*name) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

static void hash_link(Fs *fs, Entry *e)
{
    if (!fs->hash || !e->parent)
        return;
    Entry **b = &fs->hash[child_hash(fs, e->parent, e->name) & (fs->hash_cap - 1)];
    e->hnext = *b;
    *b = e;
}

static void hash_unlink(Fs *fs, Entry *e)
{
    if (!fs->hash || !e->parent)
        return;
    for (Entry **p = &fs->hash[child_hash(fs, e->parent, e->name) & (fs->hash_cap - 1)]; *p; p = &(*p)->hnext)
        if (*p == e) {
            *p = e->hnext;
            break;
        }
    e->hnext = NULL;
}

/* Keeps the buckets at least as many as the entries; without memory for more, chains grow longer. */
static void hash_grow(Fs *fs)
{
    if (fs->hash && fs->n_entries <= fs->hash_cap)
        return;
    size_t cap = fs->hash_cap ? fs->hash_cap * 2 : 64;
    while (cap < fs->n_entries)
        cap *= 2;
    Entry **t = calloc(cap, sizeof *t);
    if (!t)
        return;
    free(fs->hash);
    fs->hash = t;
    fs->hash_cap = cap;
    for (size_t i = 0; i < fs->n_entries; i++)
        hash_link(fs, fs->entries[i]);
}

void fs_set_parent(Fs *fs, Entry *e, fuse_ino_t parent)
{
    pthread_mutex_lock(&fs->lock);
    hash_unlink(fs, e);
    e->parent = parent;
    hash_link(fs, e);
    pthread_mutex_unlock(&fs->lock);
}

/* Adds an entry under parent (0: detached, to be attached once complete). Safe while serving. */
Entry *fs_add(Fs *fs, fuse_ino_t parent, const char *name, enum EntryKind kind, BlockNode *bs)
{
    Entry *e = calloc(1, sizeof *e);
    if (!e || !(e->name = strdup(name))) {
        free(e);
        return NULL;
    }
    e->parent = parent;
    e->kind = kind;
    e->bs = bs;
    e->mtime = fs->start;
    pthread_mutex_lock(&fs->lock);
    if (fs->n_entries == fs->cap_entries) {
        size_t cap = fs->cap_entries ? fs->cap_entries * 2 : 16;
        Entry **v = realloc(fs->entries, cap * sizeof *v);
        if (!v) {
            pthread_mutex_unlock(&fs->lock);
            free(e->name);
            free(e);
            return NULL;
        }
        fs->entries = v;
        fs->cap_entries = cap;
    }
    e->ino = fs->n_entries + 1;
    fs->entries[fs->n_entries++] = e;
    if (fs->hash && fs->n_entries <= fs->hash_cap)
        hash_link(fs, e);
    else
        hash_grow(fs); /* links every entry, e too */
    pthread_mutex_unlock(&fs->lock);
    return e;
}

Entry *fs_get(Fs *fs, fuse_ino_t ino)
{
    Entry *e = NULL;
    pthread_mutex_lock(&fs->lock);
    if (ino >= 1 && ino <= fs->n_entries)
        e = fs->entries[ino - 1];
    pthread_mutex_unlock(&fs->lock);
    return e;
}

/* The first entry (lowest inode number) named name under parent. */
Entry *fs_lookup_child(Fs *fs, fuse_ino_t parent, const char *name)
{
    Entry *found = NULL;
    pthread_mutex_lock(&fs->lock);
    if (fs->hash) {
        for (Entry *e = fs->hash[child_hash(fs, parent, name) & (fs->hash_cap - 1)]; e; e = e->hnext)
            if (e->parent == parent && e->ino != parent && strcmp(e->name, name) == 0 && (!found || e->ino < found->ino))
                found = e;
    } else {
        for (size_t i = 0; i < fs->n_entries && !found; i++) {
            Entry *e = fs->entries[i];
            if (e->parent == parent && e->ino != parent && strcmp(e->name, name) == 0)
                found = e;
        }
    }
    pthread_mutex_unlock(&fs->lock);
    return found;
}

/* The size of a raw view is asked of the block layer each time: truncate may change it. */
int64_t disk_size(Entry *e)
{
    int64_t s = bdrv_getlength(e->bs);
    return s > 0 ? s : 0;
}

void entry_touch(Fs *fs, Entry *e)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    pthread_mutex_lock(&fs->lock);
    e->mtime = now;
    pthread_mutex_unlock(&fs->lock);
}

/* ---------------------------------------------------------------- generated files */

static char *gen_info_text(Fs *fs, Entry *e, size_t *len)
{
    StrBuf sb;
    sb_init(&sb);
    render_info_text(&sb, e->bs, &fs->cfg.facts);
    return sb_steal(&sb, len);
}

static char *gen_info_json(Fs *fs, Entry *e, size_t *len)
{
    StrBuf sb;
    sb_init(&sb);
    render_info_json(&sb, e->bs, &fs->cfg.facts);
    return sb_steal(&sb, len);
}

/* MNT/layers/N-NAME/map, streamed (render.c's MapStream). */
static void *layer_map_open(Fs *fs, Entry *e)
{
    (void)fs;
    MapStream *m = malloc(sizeof *m);
    if (m)
        map_stream_init(m, e->bs, MAP_LAYER);
    return m;
}

static int layer_map_next(void *state, StrBuf *sb, size_t want)
{
    return map_stream_next(state, sb, want);
}

static const StreamOps layer_map_ops = { layer_map_open, layer_map_next, free };

/* Ranges read as zeros under --on-read-error=zero: "offset length depth file: reason" a line, in disk
 * order, streamed from the block layer's list; if the list was full, a last line says how much is not
 * listed. */
typedef struct ErrorsStream {
    BlockNode *bs;
    int64_t next;             /* guest offset the next record starts at or after */
    bool done;
} ErrorsStream;

static void *errors_open(Fs *fs, Entry *e)
{
    (void)fs;
    ErrorsStream *es = calloc(1, sizeof *es);
    if (es)
        es->bs = e->bs;
    return es;
}

static int errors_next(void *state, StrBuf *sb, size_t want)
{
    ErrorsStream *es = state;
    ReadErrorRecord rec[16];
    while (!es->done && sb->len < want) {
        int n = bdrv_read_errors_from(es->bs, es->next, rec, (int)ARRAY_SIZE(rec));
        for (int i = 0; i < n; i++)
            sb_printf(sb, "%" PRId64 " %" PRId64 " %d %s: %s\n", rec[i].offset, rec[i].length, rec[i].layer,
                      rec[i].layer_name, rec[i].reason);
        if (n > 0) {
            es->next = rec[n - 1].offset + 1;
            continue;
        }
        ReadErrorSummary sum;
        bdrv_read_errors_summary(es->bs, &sum);
        if (sum.unlisted)
            sb_printf(sb, "not listed: %" PRIu64 " more ranges, %" PRIu64 " bytes, read as zeros (the list is full)\n",
                      sum.unlisted, sum.unlisted_bytes);
        es->done = true;
    }
    return es->done ? 0 : 1;
}

static const StreamOps errors_ops = { errors_open, errors_next, free };

static char *gen_stats_json(Fs *fs, Entry *e, size_t *len)
{
    StrBuf sb;
    sb_init(&sb);
    BlockNode **views = NULL;
    const char **names = NULL;
    size_t n = fs_open_views(fs, &views, &names);
    render_stats_json_views(&sb, e->bs, views, names, n);
    for (size_t i = 0; i < n; i++)
        bdrv_close(views[i]);
    free(views);
    free(names);
    return sb_steal(&sb, len);
}

Entry *fs_add_stream(Fs *fs, fuse_ino_t parent, const char *name, BlockNode *bs, const StreamOps *ops)
{
    Entry *e = fs_add(fs, parent, name, ENTRY_GEN, bs);
    if (e)
        e->stream = ops;
    return e;
}

Entry *fs_add_disk(Fs *fs, fuse_ino_t parent, const char *name, BlockNode *bs, bool writable)
{
    Entry *e = fs_add(fs, parent, name, ENTRY_DISK, bs);
    if (!e)
        return NULL;
    e->writable = writable;
    struct stat st;
    if (bs->filename && stat(bs->filename, &st) == 0)
        e->mtime = st.st_mtim;
    return e;
}

Entry *fs_add_gen(Fs *fs, fuse_ino_t parent, const char *name, BlockNode *bs, GenFn gen)
{
    Entry *e = fs_add(fs, parent, name, ENTRY_GEN, bs);
    if (e)
        e->gen = gen;
    return e;
}

/* MNT/layers/N-BASENAME/{disk.raw,map} for every layer of the chain, 0 = top. */
static int fs_build_layers(Fs *fs, fuse_ino_t root)
{
    Entry *dir = fs_add(fs, root, "layers", ENTRY_DIR, NULL);
    if (!dir)
        return -ENOMEM;
    for (BlockNode *n = fs->cfg.bs; n; n = n->backing) {
        const char *base = path_base_of(n->filename);
        char name[256];
        snprintf(name, sizeof name, "%d-%s", n->depth, base);
        Entry *ld = fs_add(fs, dir->ino, name, ENTRY_DIR, NULL);
        if (!ld || !fs_add_disk(fs, ld->ino, "disk.raw", n, false) || !fs_add_stream(fs, ld->ino, "map", n, &layer_map_ops))
            return -ENOMEM;
    }
    return 0;
}

/* MNT/partitions/pN.raw: a window over the disk for each partition of its MBR or GPT (the part of it
 * inside the disk), writable as disk.raw is. No table, no directory. */
static int fs_build_partitions(Fs *fs, fuse_ino_t root)
{
    BlockPartitionTable *t = malloc(sizeof *t);
    if (!t)
        return -ENOMEM;
    int r = bdrv_read_partitions(fs->cfg.bs, t);
    if (r < 0) { /* e.g. a table the probe could not read within its budget: logged, no files */
        log_msg("%s: partition table not read: %s", fs->cfg.bs->filename, strerror(-r));
        free(t);
        return 0;
    }
    Entry *dir = NULL;
    if (r == 0 && t->label[0] && !(dir = fs_add(fs, root, "partitions", ENTRY_DIR, NULL)))
        r = -ENOMEM;
    if (dir && !(fs->part_views = calloc((size_t)t->n + 1, sizeof *fs->part_views)))
        r = -ENOMEM;
    for (int i = 0; dir && r == 0 && i < t->n; i++) {
        const BlockPartition *p = &t->part[i];
        char name[32];
        snprintf(name, sizeof name, "p%d.raw", p->number);
        if (p->avail <= 0 || fs_lookup_child(fs, dir->ino, name)) /* past the end, or a number seen before */
            continue;
        Error err;
        memset(&err, 0, sizeof err);
        BlockNode *w = bdrv_open_window(fs->cfg.bs, p->start, p->avail, &err);
        if (!w) {
            log_msg("%s", err.msg);
            continue;
        }
        fs->part_views[fs->n_part_views++] = w;
        if (!fs_add_disk(fs, dir->ino, name, w, fs->cfg.writable))
            r = -ENOMEM;
    }
    free(t);
    return r;
}

int fs_build_tree(Fs *fs)
{
    const FsConfig *c = &fs->cfg;
    if (getrandom(&fs->hash_seed, sizeof fs->hash_seed, GRND_NONBLOCK) != (ssize_t)sizeof fs->hash_seed)
        fs->hash_seed = (uint64_t)fs->start.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
    BlockNode *view = c->view ? c->view : c->bs;
    if (c->file_mode) {
        fs->disk = fs_add_disk(fs, 1, "/", view, c->writable);
        return fs->disk ? 0 : -ENOMEM;
    }
    if (!fs_add(fs, 1, "/", ENTRY_DIR, NULL) || !(fs->disk = fs_add_disk(fs, 1, "disk.raw", view, c->writable)) ||
        !fs_add_gen(fs, 1, "info", c->bs, gen_info_text) || !fs_add_gen(fs, 1, "info.json", c->bs, gen_info_json) ||
        !fs_add_gen(fs, 1, "stats.json", c->bs, gen_stats_json) || !fs_add_stream(fs, 1, "errors", c->bs, &errors_ops))
        return -ENOMEM;
    for (int i = 0; i < 3; i++) /* --emulate: disk.vmdk (a descriptor, never written), disk.vhd, disk.vdi */
        if (c->emulated[i] && !fs_add_disk(fs, 1, c->emulated_names[i], c->emulated[i],
                                           c->writable && strcmp(c->emulated_names[i], "disk.vmdk") != 0))
            return -ENOMEM;
    int r = fs_build_layers(fs, 1);
    if (r == 0)
        r = fs_build_partitions(fs, 1);
    return r < 0 ? r : fs_build_snapshots(fs, 1);
}

void fs_free(Fs *fs)
{
    fs_free_snapshots(fs);
    for (int i = 0; i < fs->n_part_views; i++)
        bdrv_close(fs->part_views[i]);
    free(fs->part_views);
    for (size_t i = 0; i < fs->n_entries; i++) {
        free(fs->entries[i]->name);
        free(fs->entries[i]);
    }
    free(fs->entries);
    free(fs->hash);
    pthread_mutex_destroy(&fs->snap_lock);
    fs_free_open_files(fs);
    fs_free_buffers(fs);
    pthread_mutex_destroy(&fs->lock);
}

