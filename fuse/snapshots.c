/*
 * snapshots.c - MNT/snapshots: a directory per internal snapshot of the top image with disk.raw (the
 * read-only view of the disk at that snapshot), info and, when the snapshot holds VM state, vmstate.
 * Snapshots whose names cannot be file names, or share a name, appear as id-ID.  On a writable mount
 * mkdir creates a snapshot and rmdir deletes one.  The tree is rebuilt from bdrv_snapshot_list after
 * each change; removed entries are detached, and views stay open until unmount.  It knows no format.
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

/* The directory name of each snapshot: its name when usable and unique, else id-ID. */
static void assign_dir_names(const SnapshotInfo *list, int n, DirName *names)
{
    for (int i = 0; i < n; i++) {
        bool unique = true;
        for (int j = 0; j < n && unique; j++)
            unique = j == i || strcmp(list[i].name, list[j].name) != 0;
        if (unique && name_is_usable(list[i].name))
            snprintf(names[i], sizeof names[i], "%s", list[i].name);
        else
            snprintf(names[i], sizeof names[i], "id-%s", list[i].id);
    }
    /* A real name may look like another snapshot's id-ID: then both are shown by id (ids are unique). */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            if (i != j && strcmp(names[i], names[j]) == 0)
                snprintf(names[i], sizeof names[i], "id-%s", list[i].id);
}

static char *gen_snapshot_info(Fs *fs, Entry *e, size_t *len)
{
    (void)fs;
    const SnapshotInfo *sn = e->snap;
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

static SnapshotInfo *copy_info(const SnapshotInfo *sn)
{
    SnapshotInfo *c = malloc(sizeof *c);
    if (c)
        *c = *sn;
    return c;
}

static bool remember_view(Fs *fs, BlockNode *view)
{
    BlockNode **v = realloc(fs->views, (fs->n_views + 1) * sizeof *v);
    if (!v)
        return false;
    fs->views = v;
    fs->views[fs->n_views++] = view;
    return true;
}

/* Builds snapshots/DIRNAME detached, fills it, then attaches it: lookups never see it half made. */
static int add_snapshot_dir(Fs *fs, const SnapshotInfo *sn, const char *dirname)
{
    BlockNode *top = fs->cfg.bs;
    Entry *d = fs_add(fs, 0, dirname, ENTRY_DIR, NULL);
    if (!d || !(d->snap = copy_info(sn)))
        return -ENOMEM;
    Error err;
    memset(&err, 0, sizeof err);
    BlockNode *view = bdrv_snapshot_open(top, sn->id, &err);
    if (view && !remember_view(fs, view)) {
        bdrv_close(view);
        return -ENOMEM;
    }
    if (!view)
        log_msg("%s", err.msg[0] ? err.msg : "cannot open a snapshot view");
    Entry *disk = view ? fs_add_disk(fs, d->ino, "disk.raw", view, false) : NULL;
    Entry *info = fs_add_gen(fs, d->ino, "info", top, gen_snapshot_info);
    if ((view && !disk) || !info || !(info->snap = copy_info(sn)) || (disk && !(disk->snap = copy_info(sn))))
        return -ENOMEM;
    if (sn->vm_state_size > 0) {
        Entry *vm = fs_add(fs, d->ino, "vmstate", ENTRY_VMSTATE, top);
        if (!vm || !(vm->snap = copy_info(sn)))
            return -ENOMEM;
    }
    pthread_mutex_lock(&fs->lock);
    d->parent = fs->snapdir->ino;
    pthread_mutex_unlock(&fs->lock);
    return 0;
}

/* Makes snapshots/ match the image's snapshot table. Called with fs->snap_lock held (or before serving). */
static int refresh_snapshots(Fs *fs)
{
    SnapshotInfo *list = NULL;
    int n = bdrv_snapshot_list(fs->cfg.bs, &list);
    if (n < 0)
        return n;
    DirName *names = calloc((size_t)n + 1, sizeof *names);
    if (!names) {
        free(list);
        return -ENOMEM;
    }
    assign_dir_names(list, n, names);
    bool *present = calloc((size_t)n + 1, sizeof *present);
    int r = present ? 0 : -ENOMEM;
    pthread_mutex_lock(&fs->lock);
    for (size_t i = 0; r == 0 && i < fs->n_entries; i++) {
        Entry *e = fs->entries[i];
        if (e->parent != fs->snapdir->ino || !e->snap)
            continue;
        int k = 0;
        while (k < n && !(strcmp(list[k].id, e->snap->id) == 0 && strcmp(names[k], e->name) == 0))
            k++;
        if (k < n)
            present[k] = true;
        else
            e->parent = 0; /* deleted (or renamed): detached */
    }
    pthread_mutex_unlock(&fs->lock);
    for (int k = 0; r == 0 && k < n; k++)
        if (!present[k])
            r = add_snapshot_dir(fs, &list[k], names[k]);
    free(present);
    free(names);
    free(list);
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

void fs_op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    (void)mode;
    Fs *fs = fuse_req_userdata(req);
    int r = check_snapshot_change(fs, parent);
    if (r < 0) {
        fuse_reply_err(req, -r);
        return;
    }
    pthread_mutex_lock(&fs->snap_lock);
    Error err;
    memset(&err, 0, sizeof err);
    if (fs_lookup_child(fs, parent, name)) {
        r = -EEXIST;
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
    int r = check_snapshot_change(fs, parent);
    if (r < 0) {
        fuse_reply_err(req, -r);
        return;
    }
    pthread_mutex_lock(&fs->snap_lock);
    Error err;
    memset(&err, 0, sizeof err);
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
