/* SPDX-License-Identifier: MIT */
/*
 * snapshots.c - MNT/snapshots: a directory per internal snapshot of the top image with disk.raw (the
 * read-only view of the disk at that snapshot), info and, when the snapshot holds VM state, vmstate.
 * Snapshots whose names cannot be file names, or share a name, appear as id-ID.  On a writable mount
 * mkdir creates a snapshot and rmdir deletes one.  The tree is rebuilt from bdrv_snapshot_list after
 * each change, in time linear in the number of snapshots; removed entries are detached.  A snapshot's
 * view node is opened when its disk.raw is opened and closed at the last release, so the mount holds no
 * view it does not serve.  It knows no format.
 */
#include "fs_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef char DirName[256];

static bool name_is_usable(const char *n)
{
    return n[0] && !strchr(n, '/') && strcmp(n, ".") != 0 && strcmp(n, "..") != 0 && strlen(n) < sizeof(DirName);
}

/* ---------------------------------------------------------------- an index of names */

/* Positions of n strings, found by value in constant time: snapshot tables hold up to 65,536 entries,
 * and comparing every name with every other took minutes (issue 16, item 6). */
typedef struct NameIndex {
    uint32_t *slot;          /* position + 1, 0 = empty */
    size_t mask;
    const char *const *key;
    uint64_t seed;           /* the mount's random seed: names cannot be chosen to collide */
} NameIndex;

static size_t name_hash(const NameIndex *ix, const char *s)
{
    uint64_t h = 1469598103934665603ULL ^ ix->seed; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

static bool index_init(NameIndex *ix, const char *const *key, size_t n, uint64_t seed)
{
    ix->seed = seed;
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    ix->slot = calloc(cap, sizeof *ix->slot);
    ix->mask = cap - 1;
    ix->key = key;
    return ix->slot != NULL;
}

/* Position of the first string added equal to s, or -1. */
static long index_find(const NameIndex *ix, const char *s)
{
    for (size_t h = name_hash(ix, s) & ix->mask; ix->slot[h]; h = (h + 1) & ix->mask)
        if (strcmp(ix->key[ix->slot[h] - 1], s) == 0)
            return (long)ix->slot[h] - 1;
    return -1;
}

/* Adds position pos unless its string is there already: returns the earlier position, or -1. */
static long index_add(NameIndex *ix, size_t pos)
{
    size_t h = name_hash(ix, ix->key[pos]) & ix->mask;
    for (; ix->slot[h]; h = (h + 1) & ix->mask)
        if (strcmp(ix->key[ix->slot[h] - 1], ix->key[pos]) == 0)
            return (long)ix->slot[h] - 1;
    ix->slot[h] = (uint32_t)pos + 1;
    return -1;
}

/* ---------------------------------------------------------------- directory names */

/* The directory name of each snapshot: its name when usable, unique and not the id-ID of another
 * snapshot (snapshot 3 named "id-1" is shown as id-3 when a snapshot 1 exists), else id-ID. Names shown
 * are then distinct as long as ids are. Linear in n. */
static int assign_dir_names(const SnapshotInfo *list, int n, DirName *names, uint64_t seed)
{
    size_t m = (size_t)n;
    const char **by_name = calloc(m + 1, sizeof *by_name), **by_id = calloc(m + 1, sizeof *by_id);
    bool *shared = calloc(m + 1, sizeof *shared);
    NameIndex names_ix = { 0 }, ids_ix = { 0 };
    int r = by_name && by_id && shared && index_init(&names_ix, by_name, m, seed) &&
            index_init(&ids_ix, by_id, m, seed) ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < m; i++) {
        snprintf(names[i], sizeof names[i], "id-%s", list[i].id);
        by_name[i] = list[i].name;
        by_id[i] = list[i].id;
        long j = index_add(&names_ix, i);
        if (j >= 0)
            shared[i] = shared[j] = true;
        index_add(&ids_ix, i);
    }
    for (size_t i = 0; r == 0 && i < m; i++) {
        long j = strncmp(list[i].name, "id-", 3) == 0 ? index_find(&ids_ix, list[i].name + 3) : -1;
        if (!shared[i] && name_is_usable(list[i].name) && (j < 0 || (size_t)j == i))
            snprintf(names[i], sizeof names[i], "%s", list[i].name);
    }
    free(names_ix.slot);
    free(ids_ix.slot);
    free(shared);
    free(by_id);
    free(by_name);
    return r;
}

static char *gen_snapshot_info(Fs *fs, Entry *e, size_t *len)
{
    (void)fs;
    const SnapDir *sn = e->snap;
    StrBuf sb;
    sb_init(&sb);
    char date[64] = "";
    struct tm tm;
    time_t t = (time_t)sn->date_sec;
    if (gmtime_r(&t, &tm))
        strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
    uint64_t ms = sn->vm_clock_nsec / 1000000;
    sb_put(&sb, "id: ", 4);
    sb_text_str(&sb, sn->id);
    sb_put(&sb, "\nname: ", 7);
    sb_text_str(&sb, sn->name);
    sb_printf(&sb, "\ndate: %s\nvm_clock: %02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64
              "\nvm_state_size: %" PRIu64 "\ndisk_size: %" PRIu64 "\n",
              date, ms / 3600000, ms / 60000 % 60, ms / 1000 % 60, ms % 1000, sn->vm_state_size,
              sn->disk_size);
    /* all-ones means the VM ran without instruction counting (QEMU prints nothing then) */
    if (sn->icount == UINT64_MAX)
        sb_printf(&sb, "icount: none\n");
    else
        sb_printf(&sb, "icount: %" PRIu64 "\n", sn->icount);
    return sb_steal(&sb, len);
}

int vmstate_read(Entry *e, int64_t off, size_t len, void *buf)
{
    int r = bdrv_vmstate_read(e->bs, e->snap->id, off, (int64_t)len, buf);
    if (r < 0)
        return r;
    if ((size_t)r < len)
        memset((char *)buf + r, 0, len - (size_t)r);
    return 0;
}

static SnapDir *snapdir_new(const SnapshotInfo *sn)
{
    SnapDir *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->id = strdup(sn->id);
    d->name = strdup(sn->name);
    if (!d->id || !d->name) {
        free(d->id);
        free(d->name);
        free(d);
        return NULL;
    }
    d->date_sec = sn->date_sec;
    d->date_nsec = sn->date_nsec;
    d->vm_clock_nsec = sn->vm_clock_nsec;
    d->vm_state_size = sn->vm_state_size;
    d->disk_size = sn->disk_size;
    d->icount = sn->icount;
    return d;
}

static void snapdir_free(SnapDir *sd)
{
    if (sd) {
        free(sd->id);
        free(sd->name);
    }
    free(sd);
}

/* Builds snapshots/DIRNAME detached, fills it, then attaches it: lookups never see it half made. No view
 * is opened here: disk.raw opens its view on first open (fs_view_get), so a mount costs the same whatever
 * the snapshots' L1 tables are, and a few hundred bytes per snapshot. Takes sd over. */
static int add_snapshot_dir(Fs *fs, SnapDir *sd, const char *dirname, struct timespec mtime)
{
    BlockNode *top = fs->cfg.bs;
    Entry *d = fs_add(fs, 0, dirname, ENTRY_DIR, NULL);
    if (!d) {
        snapdir_free(sd);
        return -ENOMEM;
    }
    d->snap = sd; /* the directory owns it; its files share it */
    Entry *disk = fs_add(fs, d->ino, "disk.raw", ENTRY_DISK, NULL);
    Entry *info = fs_add_gen(fs, d->ino, "info", top, gen_snapshot_info);
    if (!disk || !info)
        return -ENOMEM;
    disk->snap = info->snap = sd;
    disk->mtime = mtime;
    if (sd->vm_state_size > 0) {
        Entry *vm = fs_add(fs, d->ino, "vmstate", ENTRY_VMSTATE, top);
        if (!vm)
            return -ENOMEM;
        vm->snap = sd;
    }
    fs_set_parent(fs, d, fs->snapdir->ino);
    return 0;
}

/* Detaches the snapshot directories that no longer match the list (deleted, or shown under another name
 * now); marks in present the ones that still do. */
static int detach_gone(Fs *fs, const SnapshotInfo *list, int n, DirName *names, bool *present)
{
    const char **keys = calloc((size_t)n + 1, sizeof *keys);
    NameIndex ix = { 0 };
    if (!keys || !index_init(&ix, keys, (size_t)n, fs->hash_seed)) {
        free(keys);
        return -ENOMEM;
    }
    for (int k = 0; k < n; k++) {
        keys[k] = names[k];
        index_add(&ix, (size_t)k);
    }
    pthread_mutex_lock(&fs->lock);
    size_t n_entries = fs->n_entries; /* parents change only under fs->snap_lock, which the caller holds */
    pthread_mutex_unlock(&fs->lock);
    for (fuse_ino_t ino = 1; ino <= n_entries; ino++) {
        Entry *e = fs_get(fs, ino);
        if (e->parent != fs->snapdir->ino || !e->snap)
            continue;
        long k = index_find(&ix, e->name);
        if (k >= 0 && strcmp(list[k].id, e->snap->id) == 0)
            present[k] = true;
        else
            fs_set_parent(fs, e, 0); /* deleted (or renamed): detached */
    }
    free(ix.slot);
    free(keys);
    return 0;
}

/* Makes snapshots/ match the image's snapshot table, in time linear in the number of snapshots. Called
 * with fs->snap_lock held (or before serving). */
static int refresh_snapshots(Fs *fs)
{
    SnapshotInfo *list = NULL;
    int n = bdrv_snapshot_list(fs->cfg.bs, &list);
    if (n < 0)
        return n;
    DirName *names = calloc((size_t)n + 1, sizeof *names);
    bool *present = calloc((size_t)n + 1, sizeof *present);
    SnapDir **todo = calloc((size_t)n + 1, sizeof *todo);
    char **todo_names = calloc((size_t)n + 1, sizeof *todo_names);
    int r = names && present && todo && todo_names ? assign_dir_names(list, n, names, fs->hash_seed) : -ENOMEM;
    if (r == 0)
        r = detach_gone(fs, list, n, names, present);
    /* The new snapshots in their compact form, so that the list (1.2 KB a snapshot) is freed before the
     * tree grows: 65,536 snapshots peak at 118 MiB instead of 146. */
    int m = 0;
    for (int k = 0; r == 0 && k < n; k++) {
        if (present[k])
            continue;
        todo[m] = snapdir_new(&list[k]);
        todo_names[m] = strdup(names[k]);
        r = todo[m] && todo_names[m] ? 0 : -ENOMEM;
        m++;
    }
    free(list);
    free(names);
    free(present);
    pthread_mutex_lock(&fs->lock);
    struct timespec mtime = fs->disk ? fs->disk->mtime : fs->start;
    pthread_mutex_unlock(&fs->lock);
    for (int k = 0; k < m; k++) {
        if (r == 0)
            r = add_snapshot_dir(fs, todo[k], todo_names[k], mtime);
        else
            snapdir_free(todo[k]);
        free(todo_names[k]);
    }
    free(todo_names);
    free(todo);
    return r;
}

int fs_build_snapshots(Fs *fs, fuse_ino_t root)
{
    SnapshotInfo *list = NULL;
    int n = bdrv_snapshot_list(fs->cfg.bs, &list);
    free(list);
    if (n < 0)
        return 0; /* the format has no internal snapshots: no snapshots/ directory */
    fs->snapdir = fs_add(fs, root, "snapshots", ENTRY_DIR, NULL);
    if (!fs->snapdir)
        return -ENOMEM;
    return refresh_snapshots(fs);
}

/* ---------------------------------------------------------------- views */

int fs_view_get(Fs *fs, Entry *e)
{
    int r = 0;
    pthread_mutex_lock(&fs->snap_lock);
    SnapDir *sd = e->snap;
    if (!sd->view) {
        Error err;
        memset(&err, 0, sizeof err);
        BlockNode *view = bdrv_snapshot_open(fs->cfg.bs, sd->id, &err);
        if (view) {
            pthread_mutex_lock(&fs->lock);
            sd->view = e->bs = view;
            pthread_mutex_unlock(&fs->lock);
        } else {
            log_msg("%s", err.msg[0] ? err.msg : "cannot open a snapshot view");
            r = err.errnum == ENOMEM ? -ENOMEM : -EIO;
        }
    }
    if (r == 0)
        sd->view_users++;
    pthread_mutex_unlock(&fs->snap_lock);
    return r;
}

void fs_view_put(Fs *fs, Entry *e)
{
    BlockNode *closing = NULL;
    pthread_mutex_lock(&fs->snap_lock);
    SnapDir *sd = e->snap;
    if (sd->view_users > 0 && --sd->view_users == 0) {
        pthread_mutex_lock(&fs->lock);
        closing = sd->view;
        sd->view = e->bs = NULL;
        pthread_mutex_unlock(&fs->lock);
    }
    pthread_mutex_unlock(&fs->snap_lock);
    if (closing)
        bdrv_close(closing);
}

size_t fs_open_views(Fs *fs, BlockNode ***views, const char ***names)
{
    size_t n = 0, cap = 0;
    *views = NULL;
    *names = NULL;
    pthread_mutex_lock(&fs->lock);
    for (size_t i = 0; i < fs->n_entries; i++) {
        Entry *e = fs->entries[i];
        if (e->kind != ENTRY_DIR || !e->snap || !e->snap->view)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            BlockNode **v = realloc(*views, cap * sizeof *v);
            const char **nm = v ? realloc(*names, cap * sizeof *nm) : NULL;
            if (v)
                *views = v;
            if (!nm)
                break; /* out of memory: the views listed so far */
            *names = nm;
        }
        bdrv_ref(e->snap->view);
        (*views)[n] = e->snap->view;
        (*names)[n++] = e->snap->name;
    }
    pthread_mutex_unlock(&fs->lock);
    return n;
}

/* At unmount: views still open (files not released) are closed, the snapshots freed. */
void fs_free_snapshots(Fs *fs)
{
    for (size_t i = 0; i < fs->n_entries; i++) {
        Entry *e = fs->entries[i];
        if (e->kind != ENTRY_DIR || !e->snap)
            continue;
        if (e->snap->view)
            bdrv_close(e->snap->view);
        free(e->snap->id);
        free(e->snap->name);
        free(e->snap);
    }
}

/* A snapshot directory may go only when none of its files is open. */
static bool snapshot_dir_busy(Fs *fs, Entry *d)
{
    bool busy = false;
    pthread_mutex_lock(&fs->lock);
    for (size_t i = 0; i < fs->n_entries && !busy; i++)
        busy = fs->entries[i]->parent == d->ino && fs->entries[i]->opens > 0;
    pthread_mutex_unlock(&fs->lock);
    return busy;
}

static int check_snapshot_change(Fs *fs, fuse_ino_t parent)
{
    if (!fs->snapdir || parent != fs->snapdir->ino)
        return -EPERM;
    if (!fs->cfg.writable)
        return -EROFS;
    return 0;
}

/* A new snapshot must appear under the name given: refuse names the tree would show otherwise (too long,
 * or the id-ID of an existing snapshot); names already taken the driver refuses. */
static int check_new_name(Fs *fs, const char *name)
{
    if (strlen(name) >= sizeof(DirName))
        return -ENAMETOOLONG;
    if (!name_is_usable(name))
        return -EINVAL;
    if (strncmp(name, "id-", 3) != 0)
        return 0;
    SnapshotInfo *list = NULL;
    int n = bdrv_snapshot_list(fs->cfg.bs, &list);
    int r = n < 0 ? n : 0;
    for (int k = 0; k < n && r == 0; k++)
        if (strcmp(list[k].id, name + 3) == 0)
            r = -EINVAL;
    free(list);
    return r;
}

/* The start of mkdir or rmdir under parent: false once the refusal is answered, else true with
 * fs->snap_lock held and err cleared. */
static bool snapshot_change_begin(fuse_req_t req, Fs *fs, fuse_ino_t parent, Error *err)
{
    int r = check_snapshot_change(fs, parent);
    if (r < 0) {
        fuse_reply_err(req, -r);
        return false;
    }
    pthread_mutex_lock(&fs->snap_lock);
    memset(err, 0, sizeof *err);
    return true;
}

void fs_op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    (void)mode;
    Fs *fs = fuse_req_userdata(req);
    Error err;
    if (!snapshot_change_begin(req, fs, parent, &err))
        return;
    int r;
    if (fs_lookup_child(fs, parent, name)) {
        r = -EEXIST;
    } else if ((r = check_new_name(fs, name)) < 0) {
        /* refused before anything is written */
    } else if ((r = bdrv_flush(fs->cfg.bs)) == 0 && (r = bdrv_snapshot_create(fs->cfg.bs, name, &err)) < 0) {
        log_msg("%s", err.msg[0] ? err.msg : strerror(-r));
    }
    if (r == 0)
        r = refresh_snapshots(fs);
    Entry *e = r == 0 ? fs_lookup_child(fs, parent, name) : NULL;
    pthread_mutex_unlock(&fs->snap_lock);
    if (e)
        fs_reply_entry(req, fs, e);
    else
        fuse_reply_err(req, r < 0 ? -r : ENOENT);
}

void fs_op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    Fs *fs = fuse_req_userdata(req);
    Error err;
    if (!snapshot_change_begin(req, fs, parent, &err))
        return;
    int r;
    Entry *d = fs_lookup_child(fs, parent, name);
    if (!d || !d->snap) {
        r = -ENOENT;
    } else if (snapshot_dir_busy(fs, d)) {
        r = -EBUSY;
    } else if ((r = bdrv_snapshot_delete(fs->cfg.bs, d->snap->id, &err)) < 0) {
        log_msg("%s", err.msg[0] ? err.msg : strerror(-r));
    } else {
        r = refresh_snapshots(fs);
    }
    pthread_mutex_unlock(&fs->snap_lock);
    fuse_reply_err(req, r < 0 ? -r : 0);
}
