/* SPDX-License-Identifier: MIT */
/*
 * block_int.h - private to lib/: the core's per-node state (tracked requests, owned options, root-node
 * request-path state) and the helpers shared between lib/block.c and lib/request.c.  Drivers and the
 * front end never include this file.
 */
#ifndef IMGFUSE_BLOCK_INT_H
#define IMGFUSE_BLOCK_INT_H

#include "block.h"

typedef struct TrackedRequest TrackedRequest;

/* A write (or read-modify-write, or copy-on-read) in flight on a node. Serialising requests exclude
 * every overlapping tracked request; plain ones exclude only serialising ones. A request waits only for
 * older conflicting ones (seq), so overlapping requests run in arrival order and none starves. */
struct TrackedRequest {
    int64_t offset, bytes;
    bool serialising;
    uint64_t seq;
    TrackedRequest *next;
};

#define PROBE_BUF_SIZE 4096
#define BDRV_MAX_DROPPED 16 /* backing chains live jobs may unlink from one node */

/* Internal request flag (never passed to drivers): the caller already holds a serialising tracked
 * request over the range (copy-on-read writing into the top). */
#define BDRV_REQ_NO_SERIALISE 0x1000
#define BDRV_REQ_DRIVER_MASK (BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA | BDRV_REQ_NO_FALLBACK)

typedef struct BlockNodeCore {
    pthread_mutex_t req_lock;  /* guards the tracked request list */
    pthread_cond_t req_cond;
    TrackedRequest *tracked;
    pthread_mutex_t stats_lock;
    BlockStats stats;
    int refcnt;                /* bdrv_ref/bdrv_close; a node is freed when the last user closes it */
    BlockOpenOpts *owned_opts; /* options of a backing node (read-only copy of the caller's), freed with it */
    bool is_root;              /* the node bdrv_open returned: request-path features apply */
    bool discard_unmap;        /* root: opts->discard == DISCARD_UNMAP (kept: the caller's opts may go) */
    char *backing_override;    /* root: the --backing name, for info */
    bool track_writes;         /* track every write (copy-on-read needs it) */
    uint64_t next_seq;         /* tracked request arrival counter, under req_lock */
    struct RequestState *req;  /* lib/request.c state of the root node, NULL elsewhere */
    /* lib/job.c, live jobs on a root node: while mirror_target is set, every write, write-zeroes and
     * discard is serialised and, below mirror_cursor, its result copied into mirror_target (live commit).
     * dropped: backing chains a job unlinked, closed with the node (readers may still be in them). */
    BlockNode *mirror_target;
    int64_t mirror_cursor;
    BlockNode *dropped[BDRV_MAX_DROPPED];
    int n_dropped;
} BlockNodeCore;

/* lib/job.c: a write (STAT_WRITE, buf), write-zeroes (STAT_ZERO) or discard (STAT_DISCARD) of the root bs
 * while a live commit mirrors it (bs->core->mirror_target was set); 0 or -errno. */
int job_mirrored_op(BlockNode *bs, int kind, int64_t offset, int64_t bytes, const void *buf, int flags);

/* lib/options.c: keeps only the driver options a backing layer receives (drops BDRV_OPT_TOP_ONLY ones). */
void bdrv_opts_drop_top_only(BlockOpenOpts *o);

/* lib/backing.c: the files a parent searched by identity may be (BlockNode.backing_search_suffix): the names
 * ending in suffix (any case) in the directory of image_path, then in each --backing-dir (each directory once,
 * its names sorted), at most BDRV_MAX_IDENTITY_CANDIDATES paths "DIR/NAME" in all (*more set when there were
 * more). *list and its strings are malloc'd (bdrv_backing_search_free). 0 or -ENOMEM. */
int bdrv_backing_search_list(const char *image_path, const char *suffix, const BlockOpenOpts *opts, char ***list,
                             int *n, bool *more);
void bdrv_backing_search_free(char **list, int n);

/* Frees a node whose driver is not open (open failed, or close already ran). */
void bdrv_free_node(BlockNode *bs);

void tracked_begin(BlockNode *bs, TrackedRequest *req, int64_t offset, int64_t bytes, bool serialising);
void tracked_end(BlockNode *bs, TrackedRequest *req);

/* The I/O paths below the request-path features (alignment, EOF, splitting; no statistics). */
int bdrv_co_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf);
int bdrv_co_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags);
int bdrv_co_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags);

/* Several extents written in one request (the file driver's batch); 0 or -errno. Only the unit tests use
 * it today, so it stays out of block.h. */
int bdrv_pwrite_extents(BlockNode *bs, const BlockExtent *ext, int n, int flags);

void stats_account(BlockNode *bs, int kind, int64_t bytes, uint64_t ns, int ret);
/* While on, the calling thread's I/O is the core's own (lib/partitions.c's probe of the partition table),
 * not the user's: it is not counted in the statistics and copy-on-read does not copy what it reads. */
void core_own_io(bool on);
bool core_own_io_active(void);
enum { STAT_READ, STAT_WRITE, STAT_FLUSH, STAT_DISCARD, STAT_ZERO };

#endif
