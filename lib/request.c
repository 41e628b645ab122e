/* SPDX-License-Identifier: MIT */
/*
 * request.c - the request-path features of the root node (the node bdrv_open returns): throttling
 * (token buckets for iops and bytes/s, total/read/write), detect-zeroes (an all-zero write becomes
 * write_zeroes), copy-on-read (data found in the backing chain is written into the top node, cluster by
 * cluster, serialised against guest writes by tracked requests) and --on-read-error=zero (unreadable
 * ranges read as zeros and are recorded per chain).  Format-neutral: it only uses block status, reads,
 * writes and the tracked-request machinery of lib/block.c.
 */
#include "request.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COR_DEFAULT_GRANULARITY (64 * KiB)
#define READ_ERROR_PIECE (4 * KiB)
#define READ_ERRORS_LOGGED 16  /* the daemon logs this many ranges; MNT/errors lists them all */

typedef struct Bucket {
    int64_t rate;   /* units per second, 0 = unlimited */
    double level;   /* available units; negative = debt being paid off by waiting */
    uint64_t last;  /* ns of the last refill */
} Bucket;

enum { B_IOPS, B_IOPS_RD, B_IOPS_WR, B_BPS, B_BPS_RD, B_BPS_WR, N_BUCKETS };

struct RequestState {
    pthread_mutex_t lock;           /* buckets and the error list */
    Bucket buckets[N_BUCKETS];
    bool throttled;
    bool copy_on_read;
    int64_t cor_granularity;
    enum DetectZeroes detect_zeroes;
    bool zero_on_error;
    ErrList errors;
    uint64_t errors_logged;
};

/* ---------------------------------------------------------------- set up */

/* Copy-on-read copies whole allocation units of the top's format (its cluster_size fact). */
static int64_t cor_granularity_of(BlockNode *bs)
{
    BlockDriverFacts f;
    bdrv_get_facts(bs, &f);
    int64_t g = f.cluster_size;
    return g > 0 && is_pow2((uint64_t)g) && g <= 2 * MiB ? g : COR_DEFAULT_GRANULARITY;
}

int request_state_init(BlockNode *bs, const BlockOpenOpts *o, Error *err)
{
    bool throttled = o->iops_limit || o->iops_rd_limit || o->iops_wr_limit || o->bps_limit ||
                     o->bps_rd_limit || o->bps_wr_limit;
    if (!throttled && !o->copy_on_read && o->detect_zeroes == DETECT_ZEROES_OFF &&
        o->on_read_error != READ_ERROR_ZERO)
        return 0;
    if (o->iops_limit < 0 || o->iops_rd_limit < 0 || o->iops_wr_limit < 0 || o->bps_limit < 0 ||
        o->bps_rd_limit < 0 || o->bps_wr_limit < 0) {
        error_set(err, EINVAL, "%s: negative I/O limit", bs->filename);
        return -EINVAL;
    }
    if (o->copy_on_read && bs->read_only) {
        error_set(err, EROFS, "%s: --copy-on-read needs a writable top image (--rw or --overlay)", bs->filename);
        return -EROFS;
    }
    if (o->detect_zeroes != DETECT_ZEROES_OFF && bs->read_only)
        log_debug("%s: --detect-zeroes has no effect on a read-only image", bs->filename);
    struct RequestState *s = calloc(1, sizeof(*s));
    if (!s) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return -ENOMEM;
    }
    pthread_mutex_init(&s->lock, NULL);
    const int64_t rates[N_BUCKETS] = { o->iops_limit, o->iops_rd_limit, o->iops_wr_limit,
                                       o->bps_limit, o->bps_rd_limit, o->bps_wr_limit };
    uint64_t now = now_ns();
    for (int i = 0; i < N_BUCKETS; i++)
        s->buckets[i] = (Bucket){ rates[i], 0, now };
    s->throttled = throttled;
    s->copy_on_read = o->copy_on_read && bs->backing;
    s->cor_granularity = cor_granularity_of(bs);
    s->detect_zeroes = o->detect_zeroes;
    s->zero_on_error = o->on_read_error == READ_ERROR_ZERO;
    bs->core->req = s;
    if (s->copy_on_read)
        bs->core->track_writes = true;
    return 0;
}

void request_state_free(BlockNode *bs)
{
    struct RequestState *s = bs->core ? bs->core->req : NULL;
    if (!s)
        return;
    pthread_mutex_destroy(&s->lock);
    errlist_free(&s->errors);
    free(s);
    bs->core->req = NULL;
}

/* ---------------------------------------------------------------- throttling */

/* Takes cost from the bucket (refilled at its rate, holding at most one second's worth); returns how
 * long the caller must wait for its share. Called with s->lock held. */
static uint64_t bucket_take(Bucket *b, double cost, uint64_t now)
{
    if (!b->rate)
        return 0;
    double elapsed = (double)(now - b->last) / 1e9;
    b->last = now;
    b->level = MIN(b->level + elapsed * (double)b->rate, (double)b->rate);
    b->level -= cost;
    return b->level >= 0 ? 0 : (uint64_t)(-b->level / (double)b->rate * 1e9);
}

void request_throttle(BlockNode *bs, bool write, int64_t bytes)
{
    struct RequestState *s = bs->core->req;
    if (!s || !s->throttled)
        return;
    pthread_mutex_lock(&s->lock);
    uint64_t now = now_ns(), wait = 0;
    /* each bucket is charged exactly once: no bucket_take() inside MAX(), which evaluates twice */
    uint64_t waits[4] = {
        bucket_take(&s->buckets[B_IOPS], 1, now),
        bucket_take(&s->buckets[write ? B_IOPS_WR : B_IOPS_RD], 1, now),
        bucket_take(&s->buckets[B_BPS], (double)bytes, now),
        bucket_take(&s->buckets[write ? B_BPS_WR : B_BPS_RD], (double)bytes, now),
    };
    for (size_t i = 0; i < ARRAY_SIZE(waits); i++)
        wait = MAX(wait, waits[i]);
    pthread_mutex_unlock(&s->lock);
    struct timespec ts = { (time_t)(wait / 1000000000u), (long)(wait % 1000000000u) };
    while (wait && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---------------------------------------------------------------- copy-on-read */

/* Copies [offset, offset+bytes) (unallocated in the top) from the chain into the top if it holds data
 * below; the caller holds a serialising tracked request over it. Fills buf with the content. */
static int cor_copy(BlockNode *bs, int64_t offset, int64_t bytes, uint8_t *buf)
{
    int r = bdrv_co_read(bs, offset, bytes, buf);
    if (r < 0)
        return r;
    BlockStatus st;
    for (int64_t pos = offset; pos < offset + bytes; pos += st.bytes) {
        r = bdrv_block_status_above(bs->backing, pos, offset + bytes - pos, &st);
        if (r < 0)
            return r;
        if (!(st.flags & BDRV_BLOCK_DATA) || !(st.flags & BDRV_BLOCK_ALLOCATED))
            continue; /* holes stay holes */
        r = bdrv_co_write(bs, pos, st.bytes, buf + (pos - offset), BDRV_REQ_NO_SERIALISE);
        if (r < 0)
            return r;
        pthread_mutex_lock(&bs->core->stats_lock);
        bs->core->stats.cor_bytes += (uint64_t)st.bytes;
        pthread_mutex_unlock(&bs->core->stats_lock);
    }
    return 0;
}

static int cor_read(BlockNode *bs, int64_t offset, int64_t bytes, uint8_t *buf)
{
    struct RequestState *s = bs->core->req;
    int64_t len = bdrv_getlength(bs);
    if (len < 0)
        return (int)len;
    if (offset >= len)
        return bdrv_co_read(bs, offset, bytes, buf);
    int64_t g = s->cor_granularity;
    int64_t start = align_down(offset, g), end = MIN(align_up(offset + bytes, g), len);
    TrackedRequest req;
    tracked_begin(bs, &req, start, end - start, true);
    uint8_t *bounce = NULL;
    int r = 0;
    BlockStatus st;
    for (int64_t pos = start; pos < end && r == 0; pos += st.bytes) {
        r = bdrv_block_status(bs, pos, end - pos, &st);
        if (r < 0)
            break;
        int64_t lo = MAX(pos, offset), hi = MIN(pos + st.bytes, offset + bytes);
        if (st.flags & BDRV_BLOCK_ALLOCATED) {
            if (hi > lo)
                r = bdrv_co_read(bs, lo, hi - lo, buf + (lo - offset));
            continue;
        }
        if (!bounce && !(bounce = malloc((size_t)(end - start)))) {
            r = -ENOMEM;
            break;
        }
        r = cor_copy(bs, pos, st.bytes, bounce);
        if (r == 0 && hi > lo)
            memcpy(buf + (lo - offset), bounce + (lo - pos), (size_t)(hi - lo));
    }
    tracked_end(bs, &req);
    free(bounce);
    if (r == 0 && offset + bytes > end)
        memset(buf + (end - offset), 0, (size_t)(offset + bytes - end));
    return r;
}

/* ---------------------------------------------------------------- the list of ranges read as zeros */

/* The list is a sorted array of disjoint ranges (neighbours of the same layer and errno merged) and an
 * unsorted tail of new ranges. A range extending the last one found is merged at once (sequential
 * readers); a range already listed is found by binary search; others go to the tail, which is sorted and
 * merged into the array once it is as long as the array: O(log n) per range amortised, whatever order
 * parallel readers record in. At most ERRLIST_MAX_RANGES are kept, array and tail together (24 bytes
 * each: ERRLIST_BUDGET bytes); further ranges are only counted. */

static bool errrange_joins(const ErrRange *a, const ErrRange *b)
{
    return a->offset + a->length == b->offset && a->layer == b->layer && a->err == b->err;
}

/* Index of the last sorted range starting at or before offset, -1 if none. */
static int64_t errlist_find(const ErrList *l, int64_t offset)
{
    int64_t lo = 0, hi = (int64_t)l->n_sorted; /* answer in [lo - 1, hi - 1] */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (l->r[mid].offset <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo - 1;
}

static int cmp_errrange(const void *a, const void *b)
{
    const ErrRange *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

/* Sorts the tail and merges it into the sorted ranges (in place, from the back), then joins neighbours. */
void errlist_compact(ErrList *l)
{
    if (!l->n_tail)
        return;
    ErrRange *tail = l->r + l->n_sorted;
    qsort(tail, l->n_tail, sizeof(*tail), cmp_errrange);
    /* merge two sorted runs that are already adjacent in r: rotate through the spare room after them */
    size_t a = l->n_sorted, b = l->n_tail, n = a + b;
    if (a && b && l->r[a - 1].offset > tail[0].offset) {
        /* l->cap >= 2 * n is kept by errlist_add, so r + n can hold a copy of the tail */
        memcpy(l->r + n, tail, b * sizeof(*tail));
        ErrRange *t = l->r + n;
        size_t i = a, j = b, k = n;
        while (j > 0) {
            if (i > 0 && l->r[i - 1].offset > t[j - 1].offset)
                l->r[--k] = l->r[--i];
            else
                l->r[--k] = t[--j];
        }
    }
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        ErrRange *last = out ? &l->r[out - 1] : NULL;
        if (last && last->offset + last->length >= l->r[i].offset &&
            (last->offset + last->length > l->r[i].offset || errrange_joins(last, &l->r[i]))) {
            int64_t end = MAX(last->offset + last->length, l->r[i].offset + l->r[i].length);
            last->length = end - last->offset; /* overlapping: the same bytes, listed once */
        } else {
            l->r[out++] = l->r[i];
        }
    }
    l->n_sorted = out;
    l->n_tail = 0;
}

/* Grows the array so that the sorted ranges, the tail and a merge copy of the tail fit. */
static bool errlist_reserve(ErrList *l, size_t n)
{
    size_t want = 2 * n;
    if (want <= l->cap)
        return true;
    size_t cap = l->cap ? l->cap : 1024;
    while (cap < want)
        cap *= 2;
    if (cap > 2 * ERRLIST_MAX_RANGES)
        cap = 2 * ERRLIST_MAX_RANGES;
    if (cap < want)
        return false;
    ErrRange *r = realloc(l->r, cap * sizeof(*r));
    if (!r)
        return false;
    l->r = r;
    l->cap = cap;
    return true;
}

int errlist_add(ErrList *l, int64_t offset, int64_t length, int layer, int err)
{
    ErrRange nr = { offset, length, layer, err };
    ErrRange *last = l->n_tail ? &l->r[l->n_sorted + l->n_tail - 1] : l->n_sorted ? &l->r[l->n_sorted - 1] : NULL;
    if (last && errrange_joins(last, &nr)) {
        last->length += length;
        return 1;
    }
    int64_t i = errlist_find(l, offset);
    if (i >= 0 && l->r[i].offset + l->r[i].length >= offset + length)
        return 0; /* already listed */
    for (size_t k = l->n_sorted + l->n_tail; k > l->n_sorted && k + 8 > l->n_sorted + l->n_tail; k--)
        if (l->r[k - 1].offset <= offset && l->r[k - 1].offset + l->r[k - 1].length >= offset + length)
            return 0; /* among the last ranges added */
    if (l->n_sorted + l->n_tail >= ERRLIST_MAX_RANGES)
        errlist_compact(l);
    if (l->n_sorted + l->n_tail >= ERRLIST_MAX_RANGES || !errlist_reserve(l, l->n_sorted + l->n_tail + 1)) {
        l->unlisted++;
        l->unlisted_bytes += (uint64_t)length;
        return -ENOSPC;
    }
    l->r[l->n_sorted + l->n_tail++] = nr;
    if (l->n_tail >= MAX(l->n_sorted, (size_t)1024))
        errlist_compact(l);
    return 1;
}

size_t errlist_from(ErrList *l, int64_t offset, ErrRange *out, size_t max)
{
    errlist_compact(l);
    int64_t i = errlist_find(l, offset);
    if (i < 0 || l->r[i].offset < offset)
        i++;
    size_t n = 0;
    while (n < max && (size_t)i < l->n_sorted)
        out[n++] = l->r[i++];
    return n;
}

void errlist_free(ErrList *l)
{
    free(l->r);
    memset(l, 0, sizeof(*l));
}

/* ---------------------------------------------------------------- read errors as zeros */

static BlockNode *chain_layer(BlockNode *bs, int layer)
{
    BlockNode *n = bs;
    for (int i = 0; i < layer && n->backing; i++)
        n = n->backing;
    return n;
}

static void record_read_error(BlockNode *bs, int64_t offset, int64_t length, int err)
{
    struct RequestState *s = bs->core->req;
    BlockStatus st;
    int layer = 0;
    if (bdrv_block_status_above(bs, offset, length, &st) == 0)
        layer = st.depth;
    pthread_mutex_lock(&s->lock);
    int r = errlist_add(&s->errors, offset, length, layer, -err);
    bool log = r > 0 && s->errors_logged < READ_ERRORS_LOGGED;
    bool last = log && ++s->errors_logged == READ_ERRORS_LOGGED;
    bool full = r == -ENOSPC && s->errors.unlisted == 1;
    pthread_mutex_unlock(&s->lock);
    const char *name = chain_layer(bs, layer)->filename;
    if (log)
        log_msg("%s: read error at offset %lld, %lld bytes (%s): returning zeros%s", name, (long long)offset,
                (long long)length, strerror(-err), last ? " (further ones are listed in MOUNTPOINT/errors only)" : "");
    if (full)
        log_msg("%s: more than %d ranges read as zeros: further ones are counted, not listed", name,
                ERRLIST_MAX_RANGES);
}

static int read_once(BlockNode *bs, int64_t offset, int64_t bytes, uint8_t *buf)
{
    struct RequestState *s = bs->core->req;
    if (s->copy_on_read && !bs->read_only && !core_own_io_active())
        return cor_read(bs, offset, bytes, buf);
    return bdrv_co_read(bs, offset, bytes, buf);
}

/* Retries a failed read piece by piece on a 4 KiB grid; unreadable pieces become zeros. */
static int read_zero_on_error(BlockNode *bs, int64_t offset, int64_t bytes, uint8_t *buf)
{
    int64_t end = offset + bytes;
    for (int64_t pos = offset; pos < end;) {
        int64_t next = MIN(align_down(pos, READ_ERROR_PIECE) + READ_ERROR_PIECE, end);
        int r = read_once(bs, pos, next - pos, buf + (pos - offset));
        if (r == -ENOMEM)
            return r;
        if (r < 0) {
            memset(buf + (pos - offset), 0, (size_t)(next - pos));
            record_read_error(bs, pos, next - pos, r);
        }
        pos = next;
    }
    return 0;
}

int bdrv_read_errors_from(BlockNode *bs, int64_t offset, ReadErrorRecord *out, int max)
{
    struct RequestState *s = bs && bs->core ? bs->core->req : NULL;
    if (!s || max <= 0)
        return 0;
    ErrRange r[64];
    pthread_mutex_lock(&s->lock);
    size_t n = errlist_from(&s->errors, offset, r, MIN((size_t)max, ARRAY_SIZE(r)));
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof(out[i]));
        out[i].offset = r[i].offset;
        out[i].length = r[i].length;
        out[i].layer = r[i].layer;
        snprintf(out[i].layer_name, sizeof(out[i].layer_name), "%s", chain_layer(bs, r[i].layer)->filename);
        snprintf(out[i].reason, sizeof(out[i].reason), "%s", strerror(r[i].err));
    }
    return (int)n;
}

void bdrv_read_errors_summary(BlockNode *bs, ReadErrorSummary *sum)
{
    struct RequestState *s = bs && bs->core ? bs->core->req : NULL;
    memset(sum, 0, sizeof(*sum));
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    errlist_compact(&s->errors);
    sum->ranges = s->errors.n_sorted;
    sum->mem_bytes = s->errors.cap * sizeof(ErrRange);
    sum->unlisted = s->errors.unlisted;
    sum->unlisted_bytes = s->errors.unlisted_bytes;
    pthread_mutex_unlock(&s->lock);
}

/* A range whose status cannot be read reads as zeros (or as what can be read of it) under
 * --on-read-error=zero, so it is data: READ_ERROR_PIECE bytes, doubled while the status at the end still
 * fails, so that a damaged table over terabytes costs a few dozen look-ups, not one per piece. */
int bdrv_block_status_as_read(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    struct RequestState *s = bs && bs->core ? bs->core->req : NULL;
    int r = bdrv_block_status_above(bs, offset, bytes, st);
    if (r >= 0 || r == -ENOMEM || r == -EINVAL || !s || !s->zero_on_error || bytes <= 0)
        return r;
    int64_t len = MIN(READ_ERROR_PIECE - offset % READ_ERROR_PIECE, bytes);
    BlockStatus probe;
    while (len < bytes && bdrv_block_status_above(bs, offset + len, bytes - len, &probe) < 0)
        len = MIN(len * 2, bytes);
    memset(st, 0, sizeof(*st));
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
    st->bytes = len;
    return 0;
}

/* ---------------------------------------------------------------- the root's request paths */

int request_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    struct RequestState *s = bs->core->req;
    request_throttle(bs, false, bytes);
    int r = read_once(bs, offset, bytes, buf);
    if (r < 0 && r != -ENOMEM && r != -EINVAL && s->zero_on_error)
        r = read_zero_on_error(bs, offset, bytes, buf);
    return r;
}

int request_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    struct RequestState *s = bs->core->req;
    request_throttle(bs, true, bytes);
    if (s->detect_zeroes != DETECT_ZEROES_OFF && bytes > 0 && buffer_is_zero(buf, (size_t)bytes)) {
        int zflags = flags & BDRV_REQ_FUA;
        if (s->detect_zeroes == DETECT_ZEROES_UNMAP && bs->core->discard_unmap)
            zflags |= BDRV_REQ_MAY_UNMAP;
        pthread_mutex_lock(&bs->core->stats_lock);
        bs->core->stats.detected_zero_ops++;
        pthread_mutex_unlock(&bs->core->stats_lock);
        return bdrv_co_write_zeroes(bs, offset, bytes, zflags);
    }
    return bdrv_co_write(bs, offset, bytes, buf, flags);
}

int request_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    request_throttle(bs, true, bytes);
    return bdrv_co_write_zeroes(bs, offset, bytes, flags);
}
