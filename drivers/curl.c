/* SPDX-License-Identifier: MIT */
/*
 * curl.c - the "http" and "s3" protocol drivers: a read-only image on a web server (http://, https://) or in an S3
 * bucket (s3://BUCKET/KEY, signed with AWS SigV4), through libcurl.  Open is one request, a ranged GET of the
 * first chunk: its Content-Range gives the size, its bytes fill the cache.  Every read is a ranged GET of whole
 * chunks into a bounded cache (HTTP_SLOTS chunks of HTTP_CHUNK bytes: its memory budget), the missing chunks of
 * one read asked together, several GETs in flight at once over a pool of connections; a sequential reader gets a
 * readahead window that doubles up to HTTP_READAHEAD_MAX chunks, fetched ahead of it by readahead threads in GETs
 * of up to HTTP_RUN_MAX chunks, each chunk served as soon as its GET lands.  Only an answer that is a 206 whose
 * Content-Range is exactly the range asked, whose body is exactly that long, and whose ETag and Last-Modified are
 * those seen at open fills a chunk: a 200 (a server that ignores Range), a short body, or a file changed on the
 * server (If-Match answered 412, or another validator) is EIO, never wrong bytes.  Transport failures and 5xx answers are retried with a doubling
 * pause until the request's deadline (http.timeout, --timeout, default 30 s), then EIO; the next read connects
 * again.  TLS is verified (http.cacert, --cacert adds a CA file); redirects are followed at open (at most
 * HTTP_MAX_REDIRS, never from https to http).  s3 takes its credentials from
 * AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or the credentials file (AWS_SHARED_CREDENTIALS_FILE,
 * ~/.aws/credentials; profile AWS_PROFILE or "default"), its region from s3.region, AWS_REGION or
 * AWS_DEFAULT_REGION (us-east-1), and its server from s3.endpoint (--s3-endpoint, path-style addressing) or AWS's
 * virtual-hosted name; the credentials appear in no message and no info.
 */
#include "block.h"
#include "util.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define HTTP_CHUNK (256 * KiB)          /* the unit of a GET and of the cache */
#define HTTP_SLOTS 128                  /* cached chunks per node: 32 MiB */
#define HTTP_READAHEAD_MAX 64           /* chunks fetched ahead of a sequential reader (16 MiB) */
#define HTTP_CONNECTIONS 8              /* transfers in flight per batch of a reader's miss */
#define HTTP_RA_THREADS 16              /* readahead GETs in flight: each thread asks one run, then the next */
#define HTTP_POOL (HTTP_CONNECTIONS + HTTP_RA_THREADS) /* idle connections kept */
#define HTTP_RUN_MAX 4                  /* consecutive chunks one readahead GET may ask (1 MiB) */
#define HTTP_DEFAULT_TIMEOUT 30         /* seconds */
#define HTTP_MAX_TIMEOUT 3600
#define HTTP_MAX_REDIRS 5
#define HTTP_FIRST_PAUSE_MS 100         /* the first retry's pause; doubles, at most HTTP_MAX_PAUSE_MS */
#define HTTP_MAX_PAUSE_MS 2000
#define HTTP_HDR_MAX 256                /* the longest ETag / Last-Modified kept */
#define HTTP_CRED_MAX 512
#define HTTP_URL_MAX 4096

enum { SLOT_EMPTY, SLOT_LOADING, SLOT_READY };

typedef struct HttpSlot {
    int64_t idx;                        /* chunk number (offset / HTTP_CHUNK) */
    uint8_t *data;                      /* HTTP_CHUNK bytes, allocated at first use */
    int state;
    uint64_t used;                      /* the cache's clock at the last hit */
} HttpSlot;

typedef struct HttpState {
    bool s3;
    char url[HTTP_URL_MAX];             /* what the GETs ask (after redirects; s3: the endpoint's URL) */
    char cacert[HTTP_URL_MAX];          /* "" = the system's CAs */
    char key_id[HTTP_CRED_MAX], secret[HTTP_CRED_MAX], token_hdr[HTTP_CRED_MAX + 32], sigv4[128];
    char etag[HTTP_HDR_MAX], lastmod[HTTP_HDR_MAX];
    int64_t size;
    int timeout_ms;
    pthread_mutex_t lock;               /* slots, clock, readahead, pool */
    pthread_cond_t cond;                /* a chunk finished loading (or failed) */
    HttpSlot slots[HTTP_SLOTS];
    uint64_t clock;
    int64_t seq_next;                   /* the chunk a sequential reader asks next */
    int readahead;                      /* chunks fetched ahead now */
    pthread_t ra_thread[HTTP_RA_THREADS]; /* fetch a sequential reader's window ahead of it */
    pthread_cond_t ra_cond;             /* a window was posted (or ra_stop) */
    int ra_running;                     /* readahead threads started */
    _Atomic bool ra_stop;               /* closing: readahead batches stop where they are */
    int64_t ra_from, ra_to;             /* the window posted (ra_to < ra_from: none) */
    CURL *idle[HTTP_POOL];              /* easy handles, kept between batches */
    int n_idle;
    CURLM *idle_multi[HTTP_POOL];       /* multi handles with their connection caches (kept alive) */
    int n_idle_multi;
    _Atomic uint64_t gets, retries, changed;
} HttpState;

static const BlockOptionSpec http_options[] = {
    { "timeout", BDRV_OPT_INT, 0, "seconds a read may take, retries included, before it fails with EIO (30)" },
    { "cacert", BDRV_OPT_STRING, 0, "a PEM file of CA certificates that verify the server (https)" },
    { NULL, 0, 0, NULL }
};

static const BlockOptionSpec s3_options[] = {
    { "timeout", BDRV_OPT_INT, 0, "seconds a read may take, retries included, before it fails with EIO (30)" },
    { "cacert", BDRV_OPT_STRING, 0, "a PEM file of CA certificates that verify the endpoint (https)" },
    { "endpoint", BDRV_OPT_STRING, 0, "URL of an S3-compatible server (path-style: URL/BUCKET/KEY)" },
    { "region", BDRV_OPT_STRING, 0, "the region SigV4 signs for (AWS_REGION, AWS_DEFAULT_REGION, us-east-1)" },
    { NULL, 0, 0, NULL }
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---------------------------------------------------------------- one transfer */

/* What one GET or HEAD brought: the body into buf (cap bytes at most), the headers that matter. */
typedef struct Xfer {
    CURL *h;
    struct curl_slist *hdrs;
    char errbuf[CURL_ERROR_SIZE];
    uint8_t *buf;                       /* where the body goes (NULL: not kept) */
    uint8_t *const *parts;              /* or: HTTP_CHUNK-sized buffers, one per chunk of the range */
    int64_t cap, got;
    int64_t start, len;                 /* the range asked (len 0: HEAD or no range) */
    bool overflow;
    bool have_range;
    int64_t r_first, r_last, r_total;   /* Content-Range of the last response */
    char etag[HTTP_HDR_MAX], lastmod[HTTP_HDR_MAX];
    bool accept_ranges;
    int idx, n;                         /* the batch's chunks it fills: idx..idx+n-1 */
    int tries;
    int64_t retry_at;                   /* ms: started again then */
} Xfer;

static size_t on_body(char *p, size_t size, size_t n, void *opaque)
{
    Xfer *x = opaque;
    size_t bytes = size * n;
    long code = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 300 && code < 400)
        return bytes; /* a redirect's body */
    if (!x->buf && !x->parts) /* a probe or an error page: counted, not kept */
        return x->got += (int64_t)bytes, bytes;
    if (code != 206 || (int64_t)bytes > x->cap - x->got) {
        x->overflow = true;
        return 0; /* not the range asked: abort, never keep the bytes */
    }
    if (x->buf) {
        memcpy(x->buf + x->got, p, bytes);
        x->got += (int64_t)bytes;
        return bytes;
    }
    for (size_t done = 0; done < bytes;) { /* a run of chunks: each part takes its HTTP_CHUNK bytes */
        int64_t off = x->got % HTTP_CHUNK;
        size_t k = MIN(bytes - done, (size_t)(HTTP_CHUNK - off));
        memcpy(x->parts[x->got / HTTP_CHUNK] + off, p + done, k);
        done += k;
        x->got += (int64_t)k;
    }
    return bytes;
}

/* value of "Name: value\r\n" into out, trimmed; true if line is that header. */
static bool header_value(const char *line, size_t n, const char *name, char *out, size_t outlen)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':')
        return false;
    const char *v = line + k + 1, *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && isspace((unsigned char)end[-1]))
        end--;
    size_t len = MIN((size_t)(end - v), outlen - 1);
    memcpy(out, v, len);
    out[len] = '\0';
    return true;
}

static size_t on_header(char *p, size_t size, size_t n, void *opaque)
{
    Xfer *x = opaque;
    size_t bytes = size * n;
    char v[HTTP_HDR_MAX];
    if (bytes >= 5 && strncmp(p, "HTTP/", 5) == 0) { /* a new response (after a redirect): forget the last */
        x->have_range = x->accept_ranges = false;
        x->etag[0] = x->lastmod[0] = '\0';
    } else if (header_value(p, bytes, "ETag", x->etag, sizeof x->etag) ||
               header_value(p, bytes, "Last-Modified", x->lastmod, sizeof x->lastmod)) {
    } else if (header_value(p, bytes, "Accept-Ranges", v, sizeof v)) {
        x->accept_ranges = strcasecmp(v, "bytes") == 0;
    } else if (header_value(p, bytes, "Content-Range", v, sizeof v)) {
        long long a, b, t;
        char tail;
        x->have_range = sscanf(v, "bytes %lld-%lld/%lld%c", &a, &b, &t, &tail) == 3 && a >= 0 && b >= a &&
                        t > b;
        if (x->have_range) {
            x->r_first = a;
            x->r_last = b;
            x->r_total = t;
        } else if (sscanf(v, "bytes */%lld%c", &t, &tail) == 1 && t >= 0) {
            x->r_total = t; /* a 416's answer: the size */
            x->r_first = x->r_last = -1;
        }
    }
    return bytes;
}

/* Sets up x->h for one request of s: GET of [start, start+len) into buf (len 0: the whole), or HEAD. */
static int xfer_setup(HttpState *s, Xfer *x, const char *url, bool head, int64_t start, int64_t len, void *buf,
                      int64_t deadline, bool follow)
{
    CURL *h = x->h;
    x->hdrs = NULL;
    x->buf = buf;
    x->parts = NULL;
    x->cap = len;
    x->got = 0;
    x->start = start;
    x->len = len;
    x->overflow = x->have_range = x->accept_ranges = false;
    x->r_first = x->r_last = x->r_total = -1;
    x->etag[0] = x->lastmod[0] = x->errbuf[0] = '\0';
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, strncasecmp(url, "https:", 6) == 0 ? "https" : "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, (long)HTTP_MAX_REDIRS);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "imgfuse");
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 256L * 1024); /* fewer, larger body callbacks */
    if (s->cacert[0])
        curl_easy_setopt(h, CURLOPT_CAINFO, s->cacert);
    int64_t left = MAX(deadline - now_ms(), 1);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)left);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)left);
    curl_easy_setopt(h, CURLOPT_NOBODY, head ? 1L : 0L);
    char range[64];
    if (!head && len > 0) {
        snprintf(range, sizeof range, "%lld-%lld", (long long)start, (long long)(start + len - 1));
        curl_easy_setopt(h, CURLOPT_RANGE, range);
    }
    char im[HTTP_HDR_MAX + 16];
    if (!head && s->etag[0] && len > 0) {
        snprintf(im, sizeof im, "If-Match: %s", s->etag);
        x->hdrs = curl_slist_append(x->hdrs, im);
    }
    if (s->s3) {
        /* the hash of an empty payload: SigV4 for S3 wants it sent and signed */
        x->hdrs = curl_slist_append(x->hdrs, "x-amz-content-sha256: "
                                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        if (s->token_hdr[0])
            x->hdrs = curl_slist_append(x->hdrs, s->token_hdr);
        curl_easy_setopt(h, CURLOPT_AWS_SIGV4, s->sigv4);
        curl_easy_setopt(h, CURLOPT_USERNAME, s->key_id);
        curl_easy_setopt(h, CURLOPT_PASSWORD, s->secret);
    }
    if (x->hdrs)
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->hdrs);
    return 0;
}

static void xfer_done(Xfer *x)
{
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
}

typedef enum { XV_OK, XV_RETRY, XV_FAIL, XV_CHANGED } XferVerdict;

/* What a finished GET of a chunk means: the bytes are good only if the answer is exactly the range asked
 * of the file seen at open. */
static XferVerdict chunk_verdict(HttpState *s, Xfer *x, CURLcode rc, char *why, size_t whylen)
{
    long code = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    if (code == 412 || (code == 206 && ((s->etag[0] && x->etag[0] && strcmp(s->etag, x->etag) != 0) ||
                                        (s->lastmod[0] && x->lastmod[0] && strcmp(s->lastmod, x->lastmod) != 0) ||
                                        (x->have_range && x->r_total != s->size)))) {
        snprintf(why, whylen, "the file changed on the server since it was opened");
        return XV_CHANGED;
    }
    if (code == 200 || (code == 206 && rc == CURLE_WRITE_ERROR && x->overflow)) {
        snprintf(why, whylen, "the server answered %ld without the range asked", code);
        return XV_FAIL;
    }
    if (rc != CURLE_OK) {
        snprintf(why, whylen, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
        return XV_RETRY;
    }
    if (code >= 500 || code == 429 || code == 408) {
        snprintf(why, whylen, "HTTP %ld from the server", code);
        return XV_RETRY;
    }
    if (code != 206) {
        snprintf(why, whylen, "HTTP %ld from the server", code);
        return XV_FAIL;
    }
    if (!x->have_range || x->r_first != x->start || x->r_last != x->start + x->len - 1 || x->got != x->len) {
        snprintf(why, whylen, "a short or misplaced answer (%lld of %lld bytes at %lld)", (long long)x->got,
                 (long long)x->len, (long long)x->start);
        return XV_RETRY;
    }
    return XV_OK;
}

/* ---------------------------------------------------------------- the connection pool */

static CURL *pool_get(HttpState *s)
{
    pthread_mutex_lock(&s->lock);
    CURL *h = s->n_idle ? s->idle[--s->n_idle] : NULL;
    pthread_mutex_unlock(&s->lock);
    return h ? h : curl_easy_init();
}

/* A handle back to the pool (its connection kept for the next batch); a failed one is dropped. */
static void pool_put(HttpState *s, CURL *h, bool failed)
{
    if (!h)
        return;
    pthread_mutex_lock(&s->lock);
    if (!failed && s->n_idle < HTTP_POOL) {
        s->idle[s->n_idle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    if (h)
        curl_easy_cleanup(h);
}

/* A multi handle for one batch: one whose cache holds live connections when there is one idle. */
static CURLM *multi_get(HttpState *s)
{
    pthread_mutex_lock(&s->lock);
    CURLM *m = s->n_idle_multi ? s->idle_multi[--s->n_idle_multi] : NULL;
    pthread_mutex_unlock(&s->lock);
    return m ? m : curl_multi_init();
}

static void multi_put(HttpState *s, CURLM *m)
{
    pthread_mutex_lock(&s->lock);
    if (s->n_idle_multi < HTTP_POOL) {
        s->idle_multi[s->n_idle_multi++] = m;
        m = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    if (m)
        curl_multi_cleanup(m);
}

/* ---------------------------------------------------------------- a batch of chunk GETs */

/* Called (outside s->lock) as soon as chunks first..first+n-1 of a batch have arrived, before the batch ends. */
typedef void (*ChunksArrived)(BlockNode *bs, void *ctx, int first, int n);

/* Splits chunks idx[0..n) into runs of consecutive chunks, one GET each. A reader's miss (first_alone): the
 * chunk it waits for alone, the rest in about HTTP_RUN_MAX GETs of up to HTTP_RUN_MAX chunks; readahead: runs as
 * long as HTTP_RUN_MAX (fewer requests, which object stores bill; the first bytes of a run wait for its whole
 * answer). Fills x[k].idx/.n; returns the number of runs. */
static int split_runs(const int64_t *idx, int n, bool first_alone, Xfer *x)
{
    int len = first_alone ? MIN(MAX((n + HTTP_RUN_MAX - 1) / HTTP_RUN_MAX, 1), HTTP_RUN_MAX) : HTTP_RUN_MAX;
    int runs = 0;
    for (int i = 0; i < n;) {
        int k = 1;
        while (i + k < n && k < len && idx[i + k] == idx[i] + k && !(first_alone && i == 0))
            k++;
        x[runs].idx = i;
        x[runs++].n = k;
        i += k;
    }
    return runs;
}

/* Fetches chunks idx[0..n) into bufs[0..n), several GETs at once, each retried until the deadline; ok[i] says
 * which arrived, and arrived() is told of each run as it lands. readahead: nobody waits for these chunks, so
 * the batch stops when the node closes (-ECANCELED). Returns 0, or -EIO when any failed (the reason logged). */
static int fetch_chunks(BlockNode *bs, const int64_t *idx, uint8_t *const *bufs, bool *ok, int n, bool readahead,
                        ChunksArrived arrived, void *ctx)
{
    HttpState *s = bs->opaque;
    int64_t deadline = now_ms() + s->timeout_ms;
    CURLM *m = multi_get(s);
    Xfer *x = calloc((size_t)n, sizeof(*x));
    int *queue = calloc((size_t)n, sizeof(int));
    if (!m || !x || !queue) {
        if (m)
            multi_put(s, m);
        free(x);
        free(queue);
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++)
        ok[i] = false;
    int runs = split_runs(idx, n, !readahead, x);
    int queued = runs, running = 0, failed = 0, changed = 0;
    for (int i = 0; i < runs; i++)
        queue[i] = runs - 1 - i; /* popped from the end: chunk order */
    char why[CURL_ERROR_SIZE + 64] = "";
    bool stopped = false;
    while ((queued || running) && !changed && !(stopped = readahead && s->ra_stop)) {
        int64_t now = now_ms();
        for (int q = queued - 1; q >= 0 && running < HTTP_CONNECTIONS; q--) {
            Xfer *t = &x[queue[q]];
            if (t->retry_at > now)
                continue;
            memmove(queue + q, queue + q + 1, (size_t)(queued - q - 1) * sizeof(int));
            queued--;
            if (!t->h && !(t->h = pool_get(s))) {
                failed++;
                continue;
            }
            int64_t start = idx[t->idx] * HTTP_CHUNK;
            xfer_setup(s, t, s->url, false, start, MIN(t->n * HTTP_CHUNK, s->size - start), NULL, deadline, false);
            t->parts = &bufs[t->idx];
            curl_easy_setopt(t->h, CURLOPT_PRIVATE, t);
            curl_multi_add_handle(m, t->h);
            running++;
            s->gets++;
        }
        int still = 0, msgs;
        curl_multi_perform(m, &still);
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(m, &msgs))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            Xfer *t = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
            CURLcode rc = msg->data.result;
            curl_multi_remove_handle(m, t->h);
            running--;
            XferVerdict v = chunk_verdict(s, t, rc, why, sizeof why);
            xfer_done(t);
            if (v == XV_OK) {
                for (int j = 0; j < t->n; j++)
                    ok[t->idx + j] = true;
                pool_put(s, t->h, false);
                t->h = NULL;
                if (arrived)
                    arrived(bs, ctx, t->idx, t->n);
                continue;
            }
            log_debug("%s: chunks %lld-%lld: %s", bs->node_name, (long long)idx[t->idx],
                      (long long)idx[t->idx] + t->n - 1, why);
            pool_put(s, t->h, true); /* a failed transfer's connection is not trusted again */
            t->h = NULL;
            int pause = MIN(HTTP_FIRST_PAUSE_MS << MIN(t->tries, 8), HTTP_MAX_PAUSE_MS);
            if (v == XV_RETRY && now_ms() + pause < deadline) {
                t->tries++;
                t->retry_at = now_ms() + pause;
                queue[queued++] = (int)(t - x);
                s->retries++;
            } else if (v == XV_CHANGED) {
                changed++;
            } else {
                failed++;
            }
        }
        if (now_ms() >= deadline && (queued || running)) {
            snprintf(why, sizeof why, "no answer within the timeout (%d s)", s->timeout_ms / 1000);
            break;
        }
        int64_t next = INT64_MAX; /* when the first queued transfer may start (a retry waits its pause) */
        for (int q = 0; q < queued; q++)
            next = MIN(next, x[queue[q]].retry_at);
        if (running)
            curl_multi_poll(m, NULL, 0, 50, NULL);
        else if (queued && next > now_ms())
            usleep((useconds_t)MIN(next - now_ms(), 10) * 1000);
    }
    for (int i = 0; i < runs; i++) {
        if (x[i].h) {
            curl_multi_remove_handle(m, x[i].h);
            xfer_done(&x[i]);
            pool_put(s, x[i].h, true);
        }
    }
    for (int i = 0; i < n; i++)
        failed += !ok[i] && !changed;
    multi_put(s, m);
    free(x);
    free(queue);
    if (stopped)
        return -ECANCELED;
    if (changed) {
        s->changed++;
        log_msg("%s: %s: reads fail with EIO", bs->node_name, why);
        return -EIO;
    }
    if (failed) {
        log_msg("%s: a read failed: %s", bs->node_name, why);
        return -EIO;
    }
    return 0;
}

/* ---------------------------------------------------------------- the cache */

static HttpSlot *slot_find(HttpState *s, int64_t idx)
{
    for (int i = 0; i < HTTP_SLOTS; i++)
        if (s->slots[i].state != SLOT_EMPTY && s->slots[i].idx == idx)
            return &s->slots[i];
    return NULL;
}

/* An empty slot, or the least recently used ready one (emptied); NULL when all are loading. */
static HttpSlot *slot_claim(HttpState *s, int64_t idx)
{
    HttpSlot *best = NULL;
    for (int i = 0; i < HTTP_SLOTS; i++) {
        HttpSlot *c = &s->slots[i];
        if (c->state == SLOT_EMPTY) {
            best = c;
            break;
        }
        if (c->state == SLOT_READY && (!best || c->used < best->used))
            best = c;
    }
    if (!best)
        return NULL;
    if (!best->data && !(best->data = malloc(HTTP_CHUNK)))
        return NULL;
    best->idx = idx;
    best->state = SLOT_LOADING;
    return best;
}

/* A run of a batch landed: its slots are ready for readers now, not when the whole batch has. */
static void slots_arrived(BlockNode *bs, void *ctx, int first, int n)
{
    HttpState *s = bs->opaque;
    HttpSlot **sl = ctx;
    pthread_mutex_lock(&s->lock);
    for (int i = first; i < first + n; i++) {
        sl[i]->state = SLOT_READY;
        sl[i]->used = ++s->clock;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void post_readahead(HttpState *s, int64_t idx, int64_t last);

/* Chunks claimed (their slots LOADING, ours) for one fetch. */
typedef struct Claim {
    int n;
    HttpSlot *sl[1 + HTTP_READAHEAD_MAX];
    int64_t want[1 + HTTP_READAHEAD_MAX];
    uint8_t *bufs[1 + HTTP_READAHEAD_MAX];
    bool ok[1 + HTTP_READAHEAD_MAX];
} Claim;

/* Under s->lock: claims chunk i into cl; false when no slot can be had (every one is loading). */
static bool claim_chunk(HttpState *s, Claim *cl, int64_t i)
{
    HttpSlot *c = slot_claim(s, i);
    if (!c)
        return false;
    cl->sl[cl->n] = c;
    cl->want[cl->n] = i;
    cl->bufs[cl->n++] = c->data;
    return true;
}

/* Under s->lock: fetches cl's chunks outside the lock, each marked ready as it lands; the ones that failed are
 * emptied again (a ready slot may be another chunk's by now: only the failed are still ours). */
static int fetch_claimed(BlockNode *bs, Claim *cl, bool readahead)
{
    HttpState *s = bs->opaque;
    pthread_mutex_unlock(&s->lock);
    int r = fetch_chunks(bs, cl->want, cl->bufs, cl->ok, cl->n, readahead, slots_arrived, cl->sl);
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < cl->n; i++)
        if (!cl->ok[i])
            cl->sl[i]->state = SLOT_EMPTY;
    pthread_cond_broadcast(&s->cond);
    return r;
}

/* Under s->lock, for a reader that waits for chunk from: claims the missing chunks of its read [from, to] (at
 * most 1 + HTTP_READAHEAD_MAX), posts the readahead window beyond them, and fetches them. 0 when chunk from
 * arrived, else -EIO; -EAGAIN when it could not be claimed (every slot is loading). */
static int fetch_range(BlockNode *bs, int64_t from, int64_t to)
{
    HttpState *s = bs->opaque;
    Claim cl = { .n = 0 };
    to = MIN(to, (s->size - 1) / HTTP_CHUNK);
    for (int64_t i = from; i <= to && cl.n < 1 + HTTP_READAHEAD_MAX; i++)
        if (!slot_find(s, i) && !claim_chunk(s, &cl, i))
            break;
    if (cl.n == 0 || cl.want[0] != from) {
        for (int i = 0; i < cl.n; i++)
            cl.sl[i]->state = SLOT_EMPTY;
        return -EAGAIN;
    }
    post_readahead(s, from, to);
    int r = fetch_claimed(bs, &cl, false);
    return cl.ok[0] ? 0 : r < 0 ? r : -EIO;
}

/* Under s->lock: claims the first run of missing chunks (up to HTTP_RUN_MAX consecutive ones) of the window a
 * sequential reader posted (ra_from..ra_to); false when none is missing. */
static bool claim_window_run(HttpState *s, Claim *cl)
{
    cl->n = 0;
    for (int64_t i = s->ra_from; i <= s->ra_to && cl->n < HTTP_RUN_MAX; i++) {
        if (slot_find(s, i)) {
            if (cl->n)
                break; /* a run is consecutive */
            s->ra_from = i + 1;
        } else if (!claim_chunk(s, cl, i)) {
            break;
        }
    }
    return cl->n > 0;
}

/* A readahead thread: asks the next run of the posted window, one GET, and when it has landed the next, so
 * that HTTP_RA_THREADS GETs stay in flight ahead of a sequential reader (a new one starts as each lands, not
 * when a whole batch has). */
static void *readahead_thread(void *opaque)
{
    BlockNode *bs = opaque;
    HttpState *s = bs->opaque;
    Claim *cl = malloc(sizeof *cl);
    pthread_mutex_lock(&s->lock);
    while (cl && !s->ra_stop) {
        if (!claim_window_run(s, cl)) {
            pthread_cond_wait(&s->ra_cond, &s->lock);
            continue;
        }
        if (fetch_claimed(bs, cl, true) < 0)
            s->ra_to = s->ra_from - 1; /* a failed server: the window is dropped, the reader's own read retries */
    }
    pthread_mutex_unlock(&s->lock);
    free(cl);
    return NULL;
}

/* Under s->lock, after a read of chunk idx: a sequential reader's window behind it is handed to the
 * readahead thread when a chunk of it is missing. */
static void post_readahead(HttpState *s, int64_t idx, int64_t last)
{
    if (!s->ra_running || s->readahead == 0)
        return;
    /* the window covers the rest of the caller's request too, so that it arrives in one round */
    int64_t to = MIN(MAX(idx + s->readahead, last), (s->size - 1) / HTTP_CHUNK);
    for (int64_t i = idx + 1; i <= to; i++)
        if (!slot_find(s, i)) {
            s->ra_from = i;
            s->ra_to = to;
            pthread_cond_broadcast(&s->ra_cond);
            return;
        }
}

/* Copies [offset, offset+bytes) of chunk idx into buf, loading it first when needed: a miss fetches, in one
 * batch, the rest of the caller's request (up to chunk last), and hands the readahead window to the threads. */
static int read_in_chunk(BlockNode *bs, int64_t idx, int64_t offset, int64_t bytes, uint8_t *buf, int64_t last)
{
    HttpState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int r = 0;
    for (;;) {
        HttpSlot *c = slot_find(s, idx);
        if (c && c->state == SLOT_READY) {
            memcpy(buf, c->data + (offset - idx * HTTP_CHUNK), (size_t)bytes);
            c->used = ++s->clock;
            post_readahead(s, idx, last);
            break;
        }
        if (c || (r = fetch_range(bs, idx, last)) == -EAGAIN) {
            pthread_cond_wait(&s->cond, &s->lock);
            r = 0;
            continue;
        }
        if (r < 0)
            break;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* A read near where the last ones ended (the kernel and the format driver send a sequential stream's pieces
 * a little out of order, from several threads) that reaches a new chunk grows the readahead window; a near one
 * within chunks already read (a format driver's metadata reads in one chunk) leaves it; any other read shrinks
 * it to a quarter. */
static void note_access(HttpState *s, int64_t first, int64_t last)
{
    pthread_mutex_lock(&s->lock);
    bool near = first >= s->seq_next - 2 && first <= s->seq_next + 1;
    if (near && last >= s->seq_next)
        s->readahead = s->readahead ? MIN(s->readahead * 2, HTTP_READAHEAD_MAX) : 1;
    else if (!near)
        s->readahead /= 4;
    s->seq_next = near ? MAX(s->seq_next, last + 1) : last + 1;
    pthread_mutex_unlock(&s->lock);
}

static int http_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    HttpState *s = bs->opaque;
    if (offset < 0 || bytes < 0 || offset > s->size || bytes > s->size - offset)
        return -EIO;
    if (bytes == 0)
        return 0;
    note_access(s, offset / HTTP_CHUNK, (offset + bytes - 1) / HTTP_CHUNK);
    uint8_t *p = buf;
    while (bytes > 0) {
        int64_t idx = offset / HTTP_CHUNK;
        int64_t n = MIN(bytes, (idx + 1) * HTTP_CHUNK - offset);
        int r = read_in_chunk(bs, idx, offset, n, p, (offset + bytes - 1) / HTTP_CHUNK);
        if (r < 0)
            return r;
        offset += n;
        bytes -= n;
        p += n;
    }
    return 0;
}

/* ---------------------------------------------------------------- open */

/* The one request at open: a ranged GET of the first chunk into buf, not retried; *code the HTTP status. A body
 * that is not the range asked is not kept (x->overflow): the caller judges the status. */
static int open_request(HttpState *s, Xfer *x, uint8_t *buf, bool follow, long *code, char *why, size_t whylen)
{
    if (!(x->h = curl_easy_init())) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    xfer_setup(s, x, s->url, false, 0, HTTP_CHUNK, buf, now_ms() + s->timeout_ms, follow);
    CURLcode rc = curl_easy_perform(x->h);
    xfer_done(x);
    *code = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, code);
    int r = 0;
    if (rc != CURLE_OK && !(x->overflow && *code != 206)) {
        snprintf(why, whylen, "cannot reach the server: %s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
        r = -EIO;
    } else if (*code == 401 || *code == 403) {
        snprintf(why, whylen, "access denied (HTTP %ld)%s", *code,
                 s->s3 ? ": wrong credentials, or no right to read the object" : "");
        r = -EACCES;
    } else if (*code == 404) {
        snprintf(why, whylen, "not found on the server (HTTP 404)");
        r = -ENOENT;
    }
    if (r == 0 && follow) { /* later GETs go where the redirects led */
        char *eff = NULL;
        if (curl_easy_getinfo(x->h, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff && strlen(eff) < sizeof s->url)
            snprintf(s->url, sizeof s->url, "%s", eff);
    }
    curl_easy_cleanup(x->h);
    x->h = NULL;
    return r;
}

/* Judges the answer to the first chunk's GET: exactly the range asked of a non-empty file, or an error. */
static int first_chunk_verdict(const Xfer *g, long code, Error *err)
{
    if (code == 416 && g->r_total == 0) {
        error_set(err, EINVAL, "the file on the server is empty");
        return -EINVAL;
    }
    if (code == 200) {
        error_set(err, ENOTSUP, "the server does not serve byte ranges (it answers Range with the whole file)");
        return -ENOTSUP;
    }
    if (code != 206 || !g->have_range || g->r_first != 0) {
        error_set(err, EIO, "HTTP %ld from the server%s", code, code == 206 ? " without a Content-Range" : "");
        return -EIO;
    }
    int64_t want = MIN((int64_t)HTTP_CHUNK, g->r_total);
    if (g->r_last != want - 1 || g->got != want) {
        error_set(err, EIO, "HTTP 206 from the server for another range than the one asked");
        return -EIO;
    }
    return 0;
}

/* The size, validators and range support from one ranged GET of the first chunk (no HEAD): its Content-Range
 * gives the size, and its bytes fill the cache's first slot, so the format probe and the header reads of most
 * images cost no further round trip. */
static int http_learn(BlockNode *bs, Error *err)
{
    HttpState *s = bs->opaque;
    uint8_t *buf = malloc(HTTP_CHUNK);
    if (!buf) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    Xfer g;
    memset(&g, 0, sizeof g);
    long code;
    char why[CURL_ERROR_SIZE + 128];
    int r = open_request(s, &g, buf, !s->s3, &code, why, sizeof why);
    if (r < 0)
        error_set(err, -r, "%s", why);
    else
        r = first_chunk_verdict(&g, code, err);
    if (r < 0) {
        free(buf);
        return r;
    }
    snprintf(s->etag, sizeof s->etag, "%s", g.etag);
    snprintf(s->lastmod, sizeof s->lastmod, "%s", g.lastmod);
    if (s->etag[0] && (s->etag[0] == 'W' || s->etag[0] != '"'))
        s->etag[0] = '\0'; /* a weak ETag cannot be matched with If-Match: Last-Modified is checked alone */
    s->size = g.r_total;
    HttpSlot *c = &s->slots[0];
    c->data = buf;
    c->idx = 0;
    c->state = SLOT_READY;
    c->used = ++s->clock;
    s->gets++;
    return 0;
}

/* ---------------------------------------------------------------- s3 names and credentials */

static const char *env_first(const char *a, const char *b)
{
    const char *v = getenv(a);
    if ((!v || !*v) && b)
        v = getenv(b);
    return v && *v ? v : NULL;
}

/* KEY of the credentials file's [profile] section into out ("" if absent). */
static void cred_file_value(FILE *f, const char *profile, const char *key, char *out, size_t outlen)
{
    char line[1024];
    bool in = false;
    out[0] = '\0';
    rewind(f);
    while (fgets(line, sizeof line, f)) {
        char *p = line + strspn(line, " \t");
        p[strcspn(p, "\r\n")] = '\0';
        if (*p == '[') {
            char *end = strchr(p, ']');
            in = end && (size_t)(end - p - 1) == strlen(profile) && strncmp(p + 1, profile, strlen(profile)) == 0;
            continue;
        }
        size_t k = strlen(key);
        if (!in || strncmp(p, key, k) != 0)
            continue;
        char *v = p + k + strspn(p + k, " \t");
        if (*v != '=')
            continue;
        v += 1 + strspn(v + 1, " \t");
        size_t n = strlen(v);
        while (n && isspace((unsigned char)v[n - 1]))
            n--;
        if (n < outlen) {
            memcpy(out, v, n);
            out[n] = '\0';
        }
    }
}

static int s3_credentials(HttpState *s, Error *err)
{
    const char *id = getenv("AWS_ACCESS_KEY_ID"), *sec = getenv("AWS_SECRET_ACCESS_KEY");
    char tok[HTTP_CRED_MAX] = "";
    if (id && *id && sec && *sec) {
        snprintf(s->key_id, sizeof s->key_id, "%s", id);
        snprintf(s->secret, sizeof s->secret, "%s", sec);
        snprintf(tok, sizeof tok, "%s", getenv("AWS_SESSION_TOKEN") ? getenv("AWS_SESSION_TOKEN") : "");
    } else {
        char path[HTTP_URL_MAX];
        const char *file = getenv("AWS_SHARED_CREDENTIALS_FILE"), *home = getenv("HOME");
        if (file && *file)
            snprintf(path, sizeof path, "%s", file);
        else
            snprintf(path, sizeof path, "%s/.aws/credentials", home ? home : "");
        const char *profile = env_first("AWS_PROFILE", NULL);
        FILE *f = fopen(path, "r");
        if (f) {
            cred_file_value(f, profile ? profile : "default", "aws_access_key_id", s->key_id, sizeof s->key_id);
            cred_file_value(f, profile ? profile : "default", "aws_secret_access_key", s->secret,
                            sizeof s->secret);
            cred_file_value(f, profile ? profile : "default", "aws_session_token", tok, sizeof tok);
            fclose(f);
        }
    }
    if (!s->key_id[0] || !s->secret[0]) {
        error_set(err, EACCES, "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write "
                  "them in ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE)");
        return -EACCES;
    }
    if (tok[0])
        snprintf(s->token_hdr, sizeof s->token_hdr, "x-amz-security-token: %s", tok);
    return 0;
}

/* The key, percent-encoded once (unreserved characters and '/' kept), as SigV4's canonical URI wants. */
static bool encode_key(const char *key, char *out, size_t outlen)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        if (o + 4 >= outlen)
            return false;
        if (isalnum(*p) || strchr("-._~/", *p))
            out[o++] = (char)*p;
        else
            o += (size_t)snprintf(out + o, outlen - o, "%%%02X", *p);
    }
    out[o] = '\0';
    return true;
}

/* s3://BUCKET/KEY into the URL the requests ask. */
static int s3_url(BlockNode *bs, HttpState *s, Error *err)
{
    const char *b = bs->filename + 5, *slash = strchr(b, '/');
    size_t blen = slash ? (size_t)(slash - b) : 0;
    char key[HTTP_URL_MAX];
    bool bucket_ok = blen >= 1 && blen <= 63;
    for (size_t i = 0; bucket_ok && i < blen; i++)
        bucket_ok = islower((unsigned char)b[i]) || isdigit((unsigned char)b[i]) || b[i] == '-' || b[i] == '.' ||
                    b[i] == '_';
    if (!bucket_ok || !slash[1] || strpbrk(slash, "?#")) {
        error_set(err, EINVAL, "not an S3 object name: s3://BUCKET/KEY");
        return -EINVAL;
    }
    if (!encode_key(slash + 1, key, sizeof key)) {
        error_set(err, EINVAL, "the key is too long");
        return -EINVAL;
    }
    const char *region = bdrv_opt_str(bs, "region");
    if (!region)
        region = env_first("AWS_REGION", "AWS_DEFAULT_REGION");
    if (!region)
        region = "us-east-1";
    for (const char *p = region; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-') {
            error_set(err, EINVAL, "s3 region '%s': not a region name", region);
            return -EINVAL;
        }
    snprintf(s->sigv4, sizeof s->sigv4, "aws:amz:%.60s:s3", region);
    const char *ep = bdrv_opt_str(bs, "endpoint");
    int n;
    if (ep) {
        size_t el = strlen(ep);
        while (el && ep[el - 1] == '/')
            el--;
        if (strncasecmp(ep, "http://", 7) != 0 && strncasecmp(ep, "https://", 8) != 0) {
            error_set(err, EINVAL, "--s3-endpoint '%s': not an http:// or https:// URL", ep);
            return -EINVAL;
        }
        n = snprintf(s->url, sizeof s->url, "%.*s/%.*s/%s", (int)el, ep, (int)blen, b, key);
    } else {
        n = snprintf(s->url, sizeof s->url, "https://%.*s.s3.%s.amazonaws.com/%s", (int)blen, b, region, key);
    }
    if (n < 0 || (size_t)n >= sizeof s->url) {
        error_set(err, EINVAL, "the URL is too long");
        return -EINVAL;
    }
    return s3_credentials(s, err);
}

/* ---------------------------------------------------------------- the driver slots */

static void http_close(BlockNode *bs)
{
    HttpState *s = bs->opaque;
    if (s->ra_running) {
        pthread_mutex_lock(&s->lock);
        s->ra_stop = true;
        pthread_cond_broadcast(&s->ra_cond);
        pthread_mutex_unlock(&s->lock);
        for (int i = 0; i < s->ra_running; i++)
            pthread_join(s->ra_thread[i], NULL);
        s->ra_running = 0;
    }
    for (int i = 0; i < s->n_idle_multi; i++)
        curl_multi_cleanup(s->idle_multi[i]);
    s->n_idle_multi = 0;
    for (int i = 0; i < s->n_idle; i++)
        curl_easy_cleanup(s->idle[i]);
    s->n_idle = 0;
    for (int i = 0; i < HTTP_SLOTS; i++)
        free(s->slots[i].data);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    pthread_cond_destroy(&s->ra_cond);
    explicit_bzero(s->key_id, sizeof s->key_id);
    explicit_bzero(s->secret, sizeof s->secret);
    explicit_bzero(s->token_hdr, sizeof s->token_hdr);
}

static int open_common(BlockNode *bs, bool s3, Error *err)
{
    HttpState *s = bs->opaque;
    pthread_once(&curl_once, curl_init_once);
    s->s3 = s3;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_cond_init(&s->ra_cond, NULL);
    s->seq_next = -2;
    s->ra_to = -1;
    int64_t t = bdrv_opt_int(bs, "timeout", HTTP_DEFAULT_TIMEOUT);
    const char *ca = bdrv_opt_str(bs, "cacert");
    int r = 0;
    if (t < 1 || t > HTTP_MAX_TIMEOUT) {
        error_set(err, EINVAL, "%s option 'timeout': %lld is not between 1 and %d seconds", bs->drv->name,
                  (long long)t, HTTP_MAX_TIMEOUT);
        r = -EINVAL;
    } else if (ca && (strlen(ca) >= sizeof s->cacert || access(ca, R_OK) != 0)) {
        int e = strlen(ca) >= sizeof s->cacert ? ENAMETOOLONG : errno;
        error_set(err, e, "--cacert %s: %s", ca, strerror(e));
        r = -e;
    } else if (!bs->read_only) {
        error_set(err, EROFS, "the %s driver is read-only (--overlay FILE or --snapshot keep writes locally)",
                  bs->drv->name);
        r = -EROFS;
    }
    s->timeout_ms = (int)t * 1000;
    if (r == 0 && ca)
        snprintf(s->cacert, sizeof s->cacert, "%s", ca);
    if (r == 0 && s3)
        r = s3_url(bs, s, err);
    else if (r == 0)
        snprintf(s->url, sizeof s->url, "%s", bs->filename);
    if (r == 0)
        r = http_learn(bs, err);
    while (r == 0 && s->ra_running < HTTP_RA_THREADS && /* without them, readahead happens only on misses */
           pthread_create(&s->ra_thread[s->ra_running], NULL, readahead_thread, bs) == 0)
        s->ra_running++;
    if (r < 0)
        http_close(bs); /* the core calls close only for nodes that opened */
    return r;
}

static int http_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    (void)opts;
    if (strlen(bs->filename) >= HTTP_URL_MAX) {
        error_set(err, EINVAL, "the URL is too long");
        return -EINVAL;
    }
    return open_common(bs, false, err);
}

static int s3_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    (void)opts;
    return open_common(bs, true, err);
}

static int64_t http_getlength(BlockNode *bs)
{
    HttpState *s = bs->opaque;
    return s->size;
}

static int64_t http_memory_used(BlockNode *bs)
{
    HttpState *s = bs->opaque;
    int64_t n = 0;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < HTTP_SLOTS; i++)
        n += s->slots[i].data ? HTTP_CHUNK : 0;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static void http_get_info(BlockNode *bs, InfoList *info)
{
    HttpState *s = bs->opaque;
    if (s->s3)
        info_add_str(info, "s3_request_url", "%s", s->url);
    else if (strcmp(s->url, bs->filename) != 0)
        info_add_str(info, "http_redirected_to", "%s", s->url);
    info_add_int(info, "http_timeout", s->timeout_ms / 1000);
    info_add_int(info, "http_miss_gets_in_flight", HTTP_CONNECTIONS);
    info_add_int(info, "http_readahead_gets_in_flight", s->ra_running);
    info_add_int(info, "http_cache_bytes", (int64_t)HTTP_SLOTS * HTTP_CHUNK);
    info_add_str(info, "http_validator", "%s",
                 s->etag[0] ? "ETag (If-Match)" : s->lastmod[0] ? "Last-Modified" : "none");
    info_add_int(info, "http_gets", (int64_t)s->gets);
    info_add_int(info, "http_retries", (int64_t)s->retries);
}

const BlockDriver bdrv_http = {
    .name = "http",
    .instance_size = sizeof(HttpState),
    .is_protocol = true,
    .options = http_options,
    .open = http_open,
    .close = http_close,
    .read = http_read,
    .getlength = http_getlength,
    .memory_used = http_memory_used,
    .get_info = http_get_info,
};

const BlockDriver bdrv_s3 = {
    .name = "s3",
    .instance_size = sizeof(HttpState),
    .is_protocol = true,
    .options = s3_options,
    .open = s3_open,
    .close = http_close,
    .read = http_read,
    .getlength = http_getlength,
    .memory_used = http_memory_used,
    .get_info = http_get_info,
};
