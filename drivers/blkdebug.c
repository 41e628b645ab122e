/* SPDX-License-Identifier: MIT */
/*
 * blkdebug.c - the "blkdebug" filter driver, for tests only: it passes every request through to its file
 * child and injects failures and delays by rules read from a file (option rules, --blkdebug; a rule a line):
 *     event=read errno=5 nth=3        fail the 3rd read
 *     event=l2_update errno=28 once   fail the first I/O after a driver announced "l2_update"
 *     event=any errno=5 always        fail everything
 *     event=write delay_ms=50 always  slow every write down
 *     event=read errno=5 offset=8192 length=4096 always   fail reads touching that range
 * Events are the I/O kinds (read, write, write_zeroes, discard, flush, any) and the metadata kinds format
 * drivers announce with bdrv_debug_event() (the debug_event slot) just before the I/O (an announcement applies to the next I/O
 * of the same thread).  It knows no format.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_RULES 64
#define MAX_PENDING 32

typedef struct DebugRule {
    char event[64];
    int errnum;     /* 0 = no failure (delay only) */
    int nth;        /* 0 = from the first match */
    bool always;
    int delay_ms;
    int64_t offset, length; /* length 0 = any range */
    int hits;
    bool spent;
} DebugRule;

typedef struct BlkdebugState {
    pthread_mutex_t lock;
    DebugRule rules[MAX_RULES];
    int n_rules;
    /* Metadata events announced for the next I/O of the announcing thread (another thread's I/O in
     * between must not take it). */
    struct {
        pthread_t thread;
        bool used;
        char event[64];
    } pending[MAX_PENDING];
} BlkdebugState;

static int parse_int(const char *v, int *out)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || n < 0 || n > 1000000)
        return -1;
    *out = (int)n;
    return 0;
}

/* One "key=value key=value flag" line into rule; 0, or -1 with why set. */
static int parse_rule(char *line, DebugRule *rule, const char **why)
{
    memset(rule, 0, sizeof(*rule));
    snprintf(rule->event, sizeof(rule->event), "any");
    for (char *save = NULL, *tok = strtok_r(line, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            if (strcmp(tok, "once") == 0)
                rule->always = false;
            else if (strcmp(tok, "always") == 0)
                rule->always = true;
            else
                return *why = "unknown flag (once, always)", -1;
            continue;
        }
        *eq = '\0';
        const char *v = eq + 1;
        int bad = 0;
        if (strcmp(tok, "event") == 0) {
            if (!*v || strlen(v) >= sizeof(rule->event))
                return *why = "bad event name", -1;
            snprintf(rule->event, sizeof(rule->event), "%s", v);
        } else if (strcmp(tok, "errno") == 0) {
            bad = parse_int(v, &rule->errnum);
        } else if (strcmp(tok, "nth") == 0) {
            bad = parse_int(v, &rule->nth);
        } else if (strcmp(tok, "delay_ms") == 0) {
            bad = parse_int(v, &rule->delay_ms);
        } else if (strcmp(tok, "offset") == 0 || strcmp(tok, "length") == 0) {
            int64_t n = parse_size(v);
            bad = n < 0;
            *(strcmp(tok, "offset") == 0 ? &rule->offset : &rule->length) = n;
        } else {
            return *why = "unknown key (event, errno, nth, delay_ms, offset, length)", -1;
        }
        if (bad)
            return *why = "bad number", -1;
    }
    if (!rule->errnum && !rule->delay_ms)
        return *why = "a rule needs errno= or delay_ms=", -1;
    return 0;
}

static int blkdebug_load(BlkdebugState *s, const char *path, Error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        error_set(err, errno, "%s: %s", path, strerror(errno));
        return -errno;
    }
    char line[512];
    int lineno = 0, r = 0;
    while (r == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        line[strcspn(line, "\r\n#")] = '\0';
        if (strspn(line, " \t") == strlen(line))
            continue;
        const char *why = NULL;
        if (s->n_rules == MAX_RULES) {
            error_set(err, EINVAL, "%s: line %d: more than %d rules", path, lineno, MAX_RULES);
            r = -EINVAL;
        } else if (parse_rule(line, &s->rules[s->n_rules], &why) < 0) {
            error_set(err, EINVAL, "%s: line %d: %s", path, lineno, why);
            r = -EINVAL;
        } else {
            s->n_rules++;
        }
    }
    fclose(f);
    return r;
}

static int blkdebug_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    BlkdebugState *s = bs->opaque;
    pthread_mutex_init(&s->lock, NULL);
    (void)opts;
    const char *rules = bdrv_opt_str(bs, "rules");
    int r = rules ? blkdebug_load(s, rules, err) : 0;
    if (r < 0)
        pthread_mutex_destroy(&s->lock);
    return r;
}

static void blkdebug_close(BlockNode *bs)
{
    BlkdebugState *s = bs->opaque;
    pthread_mutex_destroy(&s->lock);
}

/* The debug_event slot: remembers event for this thread's next I/O on bs. */
static void blkdebug_debug_event(BlockNode *bs, const char *event)
{
    BlkdebugState *s = bs->opaque;
    pthread_t self = pthread_self();
    pthread_mutex_lock(&s->lock);
    int slot = -1;
    for (int i = 0; i < MAX_PENDING; i++) {
        if (s->pending[i].used && pthread_equal(s->pending[i].thread, self)) {
            slot = i;
            break;
        }
        if (!s->pending[i].used && slot < 0)
            slot = i;
    }
    if (slot >= 0) {
        s->pending[slot].used = true;
        s->pending[slot].thread = self;
        snprintf(s->pending[slot].event, sizeof(s->pending[slot].event), "%s", event);
    }
    pthread_mutex_unlock(&s->lock);
}

/* The event this thread announced for its next I/O ("" if none), consumed. With s->lock held. */
static void take_pending(BlkdebugState *s, char *out, size_t len)
{
    out[0] = '\0';
    pthread_t self = pthread_self();
    for (int i = 0; i < MAX_PENDING; i++) {
        if (s->pending[i].used && pthread_equal(s->pending[i].thread, self)) {
            snprintf(out, len, "%s", s->pending[i].event);
            s->pending[i].used = false;
            return;
        }
    }
}

/* Called before each I/O of kind: consumes the pending event, applies matching rules. */
static int blkdebug_check(BlockNode *bs, const char *kind, int64_t offset, int64_t bytes)
{
    BlkdebugState *s = bs->opaque;
    int delay = 0, errnum = 0;
    pthread_mutex_lock(&s->lock);
    char pending[64];
    take_pending(s, pending, sizeof(pending));
    for (int i = 0; i < s->n_rules; i++) {
        DebugRule *r = &s->rules[i];
        if (r->spent)
            continue;
        if (strcmp(r->event, "any") != 0 && strcmp(r->event, kind) != 0 &&
            !(pending[0] && strcmp(r->event, pending) == 0))
            continue;
        if (r->length && !ranges_overlap(offset, bytes, r->offset, r->length))
            continue;
        r->hits++;
        if (r->nth && r->hits < r->nth)
            continue;
        if (!r->always)
            r->spent = true;
        delay = MAX(delay, r->delay_ms);
        if (r->errnum && !errnum)
            errnum = r->errnum;
    }
    pthread_mutex_unlock(&s->lock);
    if (delay) {
        struct timespec ts = { delay / 1000, (long)(delay % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    if (errnum)
        log_debug("%s: blkdebug: failing %s%s%s with errno %d", bs->filename, kind, pending[0] ? " / " : "",
                  pending, errnum);
    return -errnum;
}

static int blkdebug_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    int r = blkdebug_check(bs, "read", offset, bytes);
    return r < 0 ? r : bdrv_pread(bs->file, offset, bytes, buf);
}

static int blkdebug_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    int r = blkdebug_check(bs, "write", offset, bytes);
    return r < 0 ? r : bdrv_pwrite(bs->file, offset, bytes, buf, flags);
}

static int blkdebug_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    int r = blkdebug_check(bs, "write_zeroes", offset, bytes);
    return r < 0 ? r : bdrv_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int blkdebug_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    int r = blkdebug_check(bs, "discard", offset, bytes);
    return r < 0 ? r : bdrv_discard(bs->file, offset, bytes);
}

static int blkdebug_flush(BlockNode *bs)
{
    return blkdebug_check(bs, "flush", 0, 0); /* the core flushes the file child afterwards */
}

static int blkdebug_truncate(BlockNode *bs, int64_t size)
{
    return bdrv_truncate(bs->file, size);
}

static void blkdebug_get_info(BlockNode *bs, InfoList *info)
{
    BlkdebugState *s = bs->opaque;
    info_add_int(info, "blkdebug_rules", s->n_rules);
}

static const BlockOptionSpec blkdebug_options[] = {
    { "rules", BDRV_OPT_STRING, BDRV_OPT_TOP_ONLY, "test only: file of fault injection rules (--blkdebug)" },
    { NULL, 0, 0, NULL },
};

const BlockDriver bdrv_blkdebug = {
    .options = blkdebug_options,
    .name = "blkdebug",
    .instance_size = sizeof(BlkdebugState),
    .is_filter = true,
    .open = blkdebug_open,
    .close = blkdebug_close,
    .read = blkdebug_read,
    .write = blkdebug_write,
    .write_zeroes = blkdebug_write_zeroes,
    .discard = blkdebug_discard,
    .flush = blkdebug_flush,
    .truncate = blkdebug_truncate,
    .get_info = blkdebug_get_info,
    .debug_event = blkdebug_debug_event,
};
