/* SPDX-License-Identifier: MIT */
/*
 * fs_int.h - private to the FUSE file system (fs.c, tree.c, snapshots.c): the mount tree's entries and
 * the state of a mount.  An entry is a directory, a raw view (disk), a generated text file or a snapshot's
 * VM state; entries live in a table indexed by inode number and are never freed before unmount (a
 * removed entry is detached from its parent), so an inode number always names the same thing.
 */
#ifndef IMGFUSE_FS_INT_H
#define IMGFUSE_FS_INT_H

#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <time.h>

#include "imgfuse.h"

typedef struct Fs Fs;
typedef struct Entry Entry;

/* One internal snapshot as the tree shows it, shared by its directory (which owns it) and files. Its
 * view node is opened on the first open of its disk.raw and closed at the last release (snapshots.c). */
typedef struct SnapDir {
    char *id, *name;
    uint64_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec, vm_state_size, disk_size, icount;
    BlockNode *view;         /* NULL while disk.raw is not open (guarded by fs->snap_lock) */
    int view_users;
} SnapDir;

/* Renders the content of a generated (text) file at open time. */
typedef char *(*GenFn)(Fs *fs, Entry *e, size_t *len);

/* A generated file that grows with the image (a layer's map, the errors list) is streamed instead: it
 * shows size 0 (as /proc files do) and is served direct_io from a generator that resumes where the
 * previous read of the handle stopped; a read at an earlier offset starts it again. */
typedef struct StreamOps {
    void *(*open)(Fs *fs, Entry *e);                   /* NULL: out of memory */
    int (*next)(void *state, StrBuf *sb, size_t want); /* appends until sb->len >= want: 1 more, 0 end, -errno */
    void (*close)(void *state);
} StreamOps;

enum EntryKind { ENTRY_DIR, ENTRY_DISK, ENTRY_GEN, ENTRY_VMSTATE };

struct Entry {
    fuse_ino_t ino, parent;  /* parent 0: detached (removed) */
    char *name;
    enum EntryKind kind;
    BlockNode *bs;           /* disk: the node read; generated: the node described; vmstate: the image */
    GenFn gen;
    const StreamOps *stream; /* generated: streamed instead of gen (see StreamOps) */
    bool writable;           /* disk only */
    struct timespec mtime;   /* guarded by fs->lock */
    SnapDir *snap;           /* snapshot directories and their files (the directory owns it), else NULL */
    int opens;               /* open handles (guarded by fs->lock) */
    Entry *hnext;            /* next in its bucket of fs->hash (attached entries only) */
};

struct Fs {
    FsConfig cfg;
    pthread_mutex_t lock;    /* guards the entry table, parents, times and open counts */
    Entry **entries;         /* entries[ino - 1] */
    size_t n_entries, cap_entries;
    Entry **hash;            /* attached entries by (parent, name), chained through hnext; NULL: none */
    size_t hash_cap;         /* buckets, a power of two */
    uint64_t hash_seed;      /* random, for every hash of names taken from images */
    uid_t uid;
    gid_t gid;
    struct timespec start;
    struct GenFile *open_files; /* generated files opened and not yet released (under lock): the kernel may
                              * tear the session down before it sends their release, so fs_free frees them */
    pthread_mutex_t buf_lock; /* guards the pool of request buffers */
    void *free_bufs[64];     /* request buffers not in use (MAX_REQUEST bytes), most recently used last */
    size_t n_free_bufs;
    pid_t watcher_pid;       /* fuse/unwatch.c's watcher, -1 = none */
    int watcher_fd;          /* the daemon's end of the watcher's pipe */
    bool splice_reads;       /* read-only mount and FUSE_CAP_SPLICE_WRITE granted: reply mapped reads by splice */
    size_t splice_max;       /* largest read libfuse can splice (its pipe must hold the whole reply) */
    size_t splice_pipe_pages; /* pages its pipe holds, for replies of several extents */
    Entry *disk;             /* the main raw view */
    Entry *snapdir;          /* MNT/snapshots, NULL when the image has no snapshot support */
    BlockNode **part_views;  /* the window nodes MNT/partitions/pN.raw show (closed by fs_free) */
    int n_part_views;
    pthread_mutex_t snap_lock; /* serialises snapshot create/delete, the refresh of the tree, view open/close */
};

/* tree.c */
Entry *fs_add(Fs *fs, fuse_ino_t parent, const char *name, enum EntryKind kind, BlockNode *bs);
Entry *fs_add_disk(Fs *fs, fuse_ino_t parent, const char *name, BlockNode *bs, bool writable);
Entry *fs_add_gen(Fs *fs, fuse_ino_t parent, const char *name, BlockNode *bs, GenFn gen);
Entry *fs_add_stream(Fs *fs, fuse_ino_t parent, const char *name, BlockNode *bs, const StreamOps *ops);
Entry *fs_get(Fs *fs, fuse_ino_t ino);
Entry *fs_lookup_child(Fs *fs, fuse_ino_t parent, const char *name);
/* Attach e under parent, or detach it (parent 0); keeps lookups by name right. */
void fs_set_parent(Fs *fs, Entry *e, fuse_ino_t parent);
int64_t disk_size(Entry *e);
void entry_touch(Fs *fs, Entry *e);
int fs_build_tree(Fs *fs);
void fs_free(Fs *fs);
/* unwatch.c: the unmount watcher, which detaches the daemon's mount if the daemon dies without
 * unmounting. Start it before mounting, arm it with the mount's identity right after, stop (and reap)
 * it after the session has unmounted. fs_mount_identity: the topmost mount at path, asking the daemon
 * nothing, and its device number "MAJ:MIN". */
typedef struct MountIdent {
    uint64_t id;             /* statx's stx_mnt_id */
    bool unique;             /* STATX_MNT_ID_UNIQUE (never reused), else the reusable STATX_MNT_ID */
} MountIdent;
bool fs_mount_identity(const char *path, MountIdent *id, char *devno, size_t len);
void fs_start_unmount_watcher(Fs *fs, const char *abs_mountpoint);
void fs_arm_unmount_watcher(Fs *fs, const MountIdent *id);
void fs_stop_unmount_watcher(Fs *fs);
/* Free the pooled request buffers (at teardown, when no request is running). */
void fs_free_buffers(Fs *fs);
void fs_free_open_files(Fs *fs);

/* snapshots.c */
int fs_build_snapshots(Fs *fs, fuse_ino_t root);
void fs_op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void fs_op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
int vmstate_read(Entry *e, int64_t off, size_t len, void *buf);
/* A snapshot's disk.raw (e->snap set): open its view on first use (e->bs), close it at the last release. */
int fs_view_get(Fs *fs, Entry *e);
void fs_view_put(Fs *fs, Entry *e);
/* The snapshot views open now, each referenced (bdrv_ref) for the caller, who closes them, and the
 * names of their snapshots (valid until unmount). */
size_t fs_open_views(Fs *fs, BlockNode ***views, const char ***names);
void fs_free_snapshots(Fs *fs);

/* fs.c */
void fs_reply_entry(fuse_req_t req, Fs *fs, Entry *e);
extern const struct fuse_lowlevel_ops fs_ops; /* what mount.c's session serves */

/* loop.c: serves se's requests with up to max_threads threads until the session ends (unmounted, a
 * signal); 0, or the negative errno of a failed read from the kernel. */
int fs_loop(struct fuse_session *se, unsigned max_threads);

#endif
