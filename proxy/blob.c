/* Blobs: hits from disk, misses through one fill per digest.
 *
 * A miss makes the first request start the fill's producer (producer.c): an upstream GET that
 * belongs to no client, so upstream speed drives it and a vanished client never cancels it.
 * Every request for the digest, the first included, is a subscriber (sub_t): it sends its headers
 * once the size is known and then sends the file from its own offset up to what has been
 * written, waking at each fill notification. A subscriber never holds more than its socket's
 * worth of data: the bytes go from the page cache to the socket with sendfile.
 *
 * If the fill fails before a subscriber sent its headers, the subscriber answers with an
 * error; after, it cuts the connection, so the client sees a short read and retries.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "proxy/blob.h"
#include "proxy/blobhead.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/metrics.h"
#include "proxy/negcache.h"
#include "proxy/passthru.h"
#include "proxy/producer.h"
#include "proxy/reply.h"

/* A subscriber sends at most this much per sendfile, so it sees progress (and stalls) often. */
#define SUB_SLICE ((uint64_t)8 << 20)

typedef struct sub {
    call_t *c;
    fill_sub_t sub;
    fill_t *fill;
    bool busy; /* a send is in flight */
    bool head_sent;
    uint64_t cur, end; /* next byte to send; one past the last byte to send */
} sub_t;

/* ---- Hits -------------------------------------------------------------------------------- */

static int serve_hit(call_t *c, const cache_entry_t *e)
{
    const char *digest = c->route.ref;
    if (http_etag_matches(c->if_none_match, digest)) {
        reply_begin(c, 304);
        blob_headers(c, digest, true);
        resp_send(c->req, 0, NULL, 0, false);
        return 0;
    }
    uint64_t first, count;
    if (req_is_head(c->req)) {
        reply_begin(c, 200);
        blob_headers(c, digest, true);
        resp_send(c->req, e->size, NULL, 0, false);
        return 0;
    }
    int fd;
    int err = cache_open_content(c->env->cache, digest, &fd);
    if (err < 0) {
        LOG_WARN("req=%llu %s indexed but unreadable (%s); refetching",
                 (unsigned long long)req_id(c->req), digest, err_str(err));
        return err;
    }
    if (blob_begin_head(c, digest, e->size, true, &first, &count) == 416) {
        close(fd);
        blob_reply_416(c, e->size);
        return 0;
    }
    resp_send_file(c->req, count, fd, (off_t)first, count);
    cache_note_access(c->env->cache, digest);
    return 0;
}

/* ---- Subscribers -------------------------------------------------------------------------- */

static void sub_pump(sub_t *s);

static void sub_free(sub_t *s)
{
    if (s->sub.fill)
        fill_unsubscribe(&s->sub);
    fill_unref(s->fill);
    free(s);
}

/* The client connection died while the subscriber waited. */
static void sub_cancel(call_t *c)
{
    sub_t *s = c->op;
    c->op = NULL;
    sub_free(s);
}

static void sub_done(sub_t *s)
{
    call_t *c = s->c;
    c->cancel = NULL;
    c->op = NULL;
    sub_free(s);
    req_finish(c->req);
}

static void sub_abort(sub_t *s)
{
    call_t *c = s->c;
    c->cancel = NULL;
    c->op = NULL;
    sub_free(s);
    req_abort(c->req);
}

static void sub_on_io(req_t *r, int status)
{
    call_t *c = req_data(r);
    sub_t *s = c->op;
    s->busy = false;
    if (status < 0) {
        sub_abort(s);
        return;
    }
    sub_pump(s);
}

static void sub_notify(fill_sub_t *fs)
{
    sub_t *s = container_of(fs, sub_t, sub);
    sub_pump(s);
}

/* A range that ends before the blob does cannot be checked against the digest until the whole
 * blob is in: unlike a response that reaches the end, it has no last byte to hold back. Such a
 * range on a blob of at most range_verify_max_bytes waits for the verdict, so what it gets is
 * verified; on a bigger one (waiting would stall lazy-pulling snapshotters for the whole
 * download) it streams as the bytes land, marked Cache-Control: no-store. */
static bool range_waits_for_verdict(const call_t *c, uint64_t size)
{
    uint64_t first, last;
    if (http_range_resolve(&c->range, size, &first, &last) != 206 || last + 1 == size)
        return false;
    return size <= c->env->cfg->range_verify_max_bytes;
}

/* on_disk_full "pass_through": a fill that failed for lack of space does not fail its
 * clients. */
static bool passes_through(const call_t *c, int err)
{
    return c->env->cfg->disk_full_pass_through &&
           (err == -ENOSPC || err == -EDQUOT || err == -EFBIG);
}

/* Hands the client over to a stream of its own from the upstream (passthru.c). */
static void pass_through(sub_t *s)
{
    call_t *c = s->c;
    passthru_from_t from = {.head_sent = s->head_sent,
                            .size = fill_size(s->fill),
                            .cur = s->cur,
                            .end = s->end,
                            .fill = s->head_sent ? s->fill : NULL};
    if (from.fill)
        fill_ref(from.fill);
    c->cancel = NULL;
    c->op = NULL;
    sub_free(s);
    passthru_start(c, &from);
}

/* Moves the subscriber as far as the fill allows; called at every notification and after every
 * send completes. Level-triggered: it reads the fill's state each time. */
static void sub_pump(sub_t *s)
{
    if (s->busy)
        return;
    call_t *c = s->c;
    fill_t *f = s->fill;
    enum fill_state st = fill_state(f);
    /* Verified bytes are final: a publish that fails afterwards (disk full at fsync) loses the
     * cache entry, not the response. */
    bool verified = fill_verified(f);
    if (st == FILL_FAILED && !verified) {
        int err = fill_error(f);
        if (passes_through(c, err)) {
            pass_through(s);
            return;
        }
        if (s->head_sent) {
            sub_abort(s);
            return;
        }
        c->cancel = NULL;
        c->op = NULL;
        sub_free(s);
        reply_failure(c, err, OCI_BLOB_UNKNOWN);
        return;
    }
    uint64_t size = fill_size(f);
    if (size == FILL_SIZE_UNKNOWN && verified)
        size = fill_written(f);
    if (!s->head_sent) {
        if (size == FILL_SIZE_UNKNOWN)
            return; /* a chunked upstream: the size is known only at the end */
        if (size == 0 && !verified)
            return; /* nothing to hold back: wait for the verdict before answering */
        if (!verified && range_waits_for_verdict(c, size))
            return;
        uint64_t first, count;
        if (blob_begin_head(c, c->route.ref, size, verified, &first, &count) == 416) {
            c->cancel = NULL;
            c->op = NULL;
            sub_free(s);
            blob_reply_416(c, size);
            return;
        }
        s->cur = first;
        s->end = first + count;
        s->head_sent = true;
        s->busy = true;
        resp_send_head(c->req, count, sub_on_io);
        return;
    }
    if (s->cur >= s->end) {
        sub_done(s);
        return;
    }
    uint64_t avail = fill_written(f);
    if (avail > s->end)
        avail = s->end;
    /* The blob's last byte waits for the digest check: a client must never receive a complete
     * blob that turns out to be wrong; until then the response stays one byte short. A range
     * that ends earlier cannot be verified by anyone before the whole blob is in, so it is
     * not held back (lazy-pulling snapshotters read small ranges and check them themselves). */
    if (!verified && avail == s->end && s->end == size)
        avail--;
    if (s->cur < avail) {
        uint64_t n = avail - s->cur;
        if (n > SUB_SLICE)
            n = SUB_SLICE;
        off_t off = (off_t)s->cur;
        s->cur += n;
        s->busy = true;
        resp_send_chunk(c->req, fill_fd(f), off, n, sub_on_io);
        return;
    }
    if (verified) {
        /* Complete, yet short of what the head promised: never present that as complete. */
        sub_abort(s);
    }
    /* Otherwise wait for the next notification. */
}

static void serve_fill(call_t *c, fill_t *fill)
{
    sub_t *s = calloc(1, sizeof *s);
    if (!s) {
        fill_unref(fill);
        reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    s->c = c;
    s->fill = fill; /* takes the caller's reference */
    c->op = s;
    c->cancel = sub_cancel;
    fill_subscribe(fill, &s->sub, sub_notify);
}

/* ---- Negative caching (negcache.h) ------------------------------------------------------- */

/* The upstream said 404 for this blob in this repository: remembered for negative_ttl_s. */
static void remember_404(const call_t *c)
{
    negcache_put(c->env->neg, c->route.upstream->name, c->route.name, c->route.ref, time_mono_ms(),
                 c->env->cfg->negative_ttl_s * 1000);
}

/* The upstream said 404 a moment ago: so do we, without asking again. True when answered. */
static bool answer_negative(call_t *c)
{
    if (!negcache_hit(c->env->neg, c->route.upstream->name, c->route.name, c->route.ref,
                      time_mono_ms()))
        return false;
    c->cache_status = "negative";
    reply_failure(c, WE_NOTFOUND, OCI_BLOB_UNKNOWN);
    return true;
}

/* ---- Entry ---------------------------------------------------------------------------------- */

/* A GET on a miss: subscribe to the digest's fill, starting it if none runs. */
static void blob_fill(call_t *c)
{
    if (answer_negative(c))
        return;
    if (c->health && health_down(c->health)) {
        reply_failure(c, WE_DOWN, OCI_BLOB_UNKNOWN);
        return;
    }
    fill_t *fill;
    bool created;
    int err = fill_get(c->env->cache, c->route.ref, &fill, &created);
    if (err < 0) {
        LOG_ERROR("req=%llu cannot start a fill for %s: %s", (unsigned long long)req_id(c->req),
                  c->route.ref, err_str(err));
        reply_failure(c, err, OCI_BLOB_UNKNOWN);
        return;
    }
    c->cache_status = created ? "miss" : "coalesced";
    c->fill_waiter = true;
    metrics_fill_waiters(c->env->metrics, 1);
    if (created)
        producer_start(c, fill);
    serve_fill(c, fill);
}

/* The upstream answered a HEAD through c's repository: its word that the repository holds the
 * blob (remembered: blob scoping), then the answer — a hit, the HEAD's own answer for a HEAD on
 * a miss, or a fill. */
static void on_upstream_head(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                             size_t len)
{
    (void)ctx;
    (void)len;
    free(body);
    if (err || status != 200) {
        if (err == 0 && status == 404)
            remember_404(c);
        reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                               OCI_BLOB_UNKNOWN);
        return;
    }
    uint64_t size = upreq_content_length(up);
    cache_owner_set(c->env->cache, c->route.upstream->name, c->route.name, c->route.ref,
                    size == UINT64_MAX ? 0 : size, NULL, NULL);
    cache_entry_t e;
    if (cache_lookup(c->env->cache, c->route.ref, &e) == 0) {
        c->cache_status = "hit";
        if (serve_hit(c, &e) == 0)
            return;
    }
    if (!req_is_head(c->req)) {
        blob_fill(c);
        return;
    }
    if (size == UINT64_MAX) {
        reply_failure(c, WE_UPSTREAM, OCI_BLOB_UNKNOWN);
        return;
    }
    c->cache_status = "upstream";
    reply_begin(c, 200);
    blob_headers(c, c->route.ref, true);
    resp_send(c->req, size, NULL, 0, false);
}

/* Bulk lane, like the fill it may lead to: a flood of requests for unknown digests must not
 * take the connections kept for manifests. */
static void ask_upstream(call_t *c)
{
    if (answer_negative(c))
        return;
    char path[REF_NAME_MAX + 400];
    fetch_path(c, "blobs", c->route.ref, path, sizeof path);
    int err = fetch_start_in(c, UPREQ_BULK, "HEAD", path, NULL, 0, on_upstream_head, NULL, NULL);
    if (err < 0)
        reply_failure(c, err, OCI_BLOB_UNKNOWN);
}

/* ---- Blob scoping -----------------------------------------------------------------------------
 * A blob is served under upstream/repository only when the upstream is known to hold it there:
 * with blob_scope "repository", that repository (one of its stored manifests references the
 * blob, or the upstream served it there); with "global", some repository of the upstream.
 * Otherwise the upstream is asked first (HEAD through this repository) before anything is
 * served or a fill joined: a digest alone never opens another repository's, or another
 * upstream's, content. */

static bool known_holder(const call_t *c)
{
    const char *up = c->route.upstream->name;
    const char *repo = c->route.upstream->blob_scope == BLOB_SCOPE_REPOSITORY ? c->route.name
                                                                              : NULL;
    return cache_owner_get(c->env->cache, up, repo, c->route.ref, NULL) == 0 ||
           producer_runs_for(c->env->producers, c->route.ref, up, repo);
}

void blob_handle(call_t *c)
{
    cache_entry_t e;
    bool cached = cache_lookup(c->env->cache, c->route.ref, &e) == 0;
    /* Nothing to give away yet (not cached, no fill to join): the upstream request this miss
     * makes through the repository is the question itself. */
    if (!cached && !fill_running(c->env->cache, c->route.ref)) {
        if (req_is_head(c->req))
            ask_upstream(c);
        else
            blob_fill(c);
        return;
    }
    if (!known_holder(c)) {
        ask_upstream(c);
        return;
    }
    if (cached) {
        c->cache_status = "hit";
        if (serve_hit(c, &e) == 0)
            return;
    }
    if (req_is_head(c->req))
        ask_upstream(c);
    else
        blob_fill(c);
}
