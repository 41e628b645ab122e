/* SPDX-License-Identifier: MIT */
/*
 * request.h - private to lib/: the root node's request-path features (lib/request.c), called by the
 * bdrv_* entry points of lib/block.c when the root has a RequestState.
 */
#ifndef IMGFUSE_REQUEST_H
#define IMGFUSE_REQUEST_H

#include "block_int.h"

/* Sets up bs->core->req if opts ask for any request-path feature; 0 or -errno with err set. */
int request_state_init(BlockNode *bs, const BlockOpenOpts *opts, Error *err);
void request_state_free(BlockNode *bs);

void request_throttle(BlockNode *bs, bool write, int64_t bytes);
int request_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf);
int request_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags);
int request_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags);

/* The list of ranges read as zeros under --on-read-error=zero (request.c; exposed for unit tests). */
#define ERRLIST_MAX_RANGES (512 * 1024)
typedef struct ErrRange {
    int64_t offset, length;
    int32_t layer, err;       /* chain depth; positive errno */
} ErrRange;
typedef struct ErrList {
    ErrRange *r;              /* n_sorted sorted, disjoint ranges, then n_tail new ones in any order */
    size_t n_sorted, n_tail, cap;
    uint64_t unlisted, unlisted_bytes; /* ranges not kept because the list was full */
} ErrList;
/* Adds a range: 1 listed (or merged), 0 already listed, -ENOSPC counted as unlisted. */
int errlist_add(ErrList *l, int64_t offset, int64_t length, int layer, int err);
void errlist_compact(ErrList *l);
/* Copies up to max ranges starting at or after offset, in disk order; returns how many. */
size_t errlist_from(ErrList *l, int64_t offset, ErrRange *out, size_t max);
void errlist_free(ErrList *l);

#endif
