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

#endif
