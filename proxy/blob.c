/* Blobs: hits from disk, misses through one fill per digest.
 *
 * A miss makes the first request start the fill's producer (producer_t): an upstream GET that
 * belongs to no client and pours the upstream body into the fill, pausing the upstream read
 * while both buffers are busy, so upstream speed drives it and a vanished client never cancels
 * it. Every request for the digest, the first included, is a subscriber (sub_t): it sends its headers
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
#include "common/util.h"
#include "proxy/blob.h"
#include "proxy/blobhead.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/passthru.h"
#include "proxy/reply.h"
#include "proxy/retention.h"

/* A subscriber sends at most this much per sendfile, so it sees progress (and stalls) often. */
#define SUB_SLICE ((uint64_t)8 << 20)

/* The producer copies upstream bytes into one of two buffers while the threadpool hashes and
 * writes the other, so reading from the upstream overlaps hashing and writing (SHA-256 runs
 * at about the speed of a local upstream: done in turn, they halve the fill's speed). A write
 * starts whenever none is in flight and bytes are waiting, so a slow upstream still reaches
 * subscribers piece by piece; the upstream is paused only when both buffers are busy. */
#define PRODUCER_BUF ((size_t)1 << 20)

/* Free space a fill leaves on the cache's filesystem for the index and directories. */
#define PASS_RESERVE ((uint64_t)4 << 20)

typedef struct producer {
    blob_producers_t *owner;
    const call_env_t *env;       /* borrowed: the app's */
    health_t *health;            /* borrowed: told how the exchange ended */
    bool answered;               /* the upstream's headers arrived */
    struct retention *retention; /* told when the disk is full */
    fill_t *fill;
    upreq_t *up; /* NULL once the upstream request is over */
    struct producer *prev, *next;
    bool linked;  /* on the owner's list */
    bool writing; /* a fill_write is in flight: its callback still needs this struct */
    bool paused;  /* the upstream is paused: `in` holds bytes that did not fit yet */
    bool ended;   /* the upstream is done; end_err says how */
    int end_err;
    const char *in; /* upstream bytes not yet copied (valid while paused) */
    size_t in_len;
    int fillidx; /* the buffer being filled; the other one may be being written */
    size_t blen[2];
    char *buf[2];
    char digest[REF_DIGEST_MAX + 1];
} producer_t;

/* Every running producer, so shutdown can stop them. */
struct blob_producers {
    producer_t *head;
};

typedef struct sub {
    call_t *c;
    fill_sub_t sub;
    fill_t *fill;
    bool busy; /* a send is in flight */
    bool head_sent;
    uint64_t cur, end; /* next byte to send; one past the last byte to send */
} sub_t;

/* ---- The producer ----------------------------------------------------------------------- */

static void producer_unlink(producer_t *f)
{
    if (!f->linked)
        return;
    f->linked = false;
    if (f->prev)
        f->prev->next = f->next;
    else
        f->owner->head = f->next;
    if (f->next)
        f->next->prev = f->prev;
}

/* Ends the fetch: finish or fail the fill, free everything. Never while a write is in flight. */
static void producer_end(producer_t *f, int err)
{
    producer_unlink(f);
    if (f->up) {
        upreq_cancel(f->up);
        f->up = NULL;
    }
    if (err == 0) {
        fill_finish(f->fill);
    } else {
        LOG_WARN("fill %s failed: %s", f->digest, err_str(err));
        if (err == -ENOSPC || err == -EDQUOT)
            retention_disk_full(f->retention);
        if (fill_state(f->fill) != FILL_FAILED)
            fill_fail(f->fill, err);
    }
    fill_unref(f->fill);
    free(f->buf[0]);
    free(f->buf[1]);
    free(f);
}

/* Fails the fetch now, or as soon as the write in flight lands. */
static void producer_abort(producer_t *f, int err)
{
    if (f->up) {
        upreq_cancel(f->up);
        f->up = NULL;
    }
    if (f->writing) {
        f->ended = true;
        f->end_err = err;
        return;
    }
    producer_end(f, err);
}

static void producer_on_written(void *arg, int status);

/* Moves bytes along: input into the filling buffer, a full-enough buffer to the disk, the
 * upstream paused or resumed, and the end once everything is written. */
static void producer_pump(producer_t *f)
{
    for (;;) {
        size_t *bl = &f->blen[f->fillidx];
        size_t n = PRODUCER_BUF - *bl < f->in_len ? PRODUCER_BUF - *bl : f->in_len;
        if (n) {
            memcpy(f->buf[f->fillidx] + *bl, f->in, n);
            *bl += n;
            f->in += n;
            f->in_len -= n;
        }
        if (f->writing || *bl == 0)
            break;
        int idx = f->fillidx;
        f->fillidx ^= 1;
        f->writing = true;
        int err = fill_write(f->fill, f->buf[idx], f->blen[idx], producer_on_written, f);
        if (err < 0) {
            f->writing = false;
            producer_abort(f, err);
            return;
        }
    }
    if (f->up) {
        if (f->in_len > 0 && !f->paused) {
            upreq_pause(f->up);
            f->paused = true;
        } else if (f->in_len == 0 && f->paused) {
            f->paused = false;
            upreq_resume(f->up);
        }
    }
    if (f->ended && !f->writing && f->blen[f->fillidx] == 0)
        producer_end(f, f->end_err);
}

static void producer_on_written(void *arg, int status)
{
    producer_t *f = arg;
    f->writing = false;
    f->blen[f->fillidx ^ 1] = 0;
    if (status < 0) {
        producer_abort(f, status);
        return;
    }
    if (f->ended && f->end_err) {
        producer_end(f, f->end_err);
        return;
    }
    producer_pump(f);
}

static void producer_on_headers(upreq_t *up, void *arg, int status)
{
    producer_t *f = arg;
    f->answered = true;
    if (f->health)
        health_report(f->health, status, 0);
    if (status != 200) {
        LOG_WARN("upstream answered %d for blob %s", status, f->digest);
        producer_abort(f, fetch_status_err(status));
        return;
    }
    uint64_t len = upreq_content_length(up);
    uint64_t room;
    /* Passing through: a blob that cannot fit is not even started (each client then streams
     * it from the upstream), rather than written until the disk is full. Not an eviction
     * trigger: a blob bigger than the space there is would otherwise empty the cache. */
    if (f->env->cfg->disk_full_pass_through && len != UINT64_MAX &&
        cache_space_free(f->env->cache, &room) == 0 &&
        (room < PASS_RESERVE || len > room - PASS_RESERVE)) {
        LOG_WARN("blob %s: %llu bytes, %llu free on the cache's filesystem: passed through",
                 f->digest, (unsigned long long)len, (unsigned long long)room);
        producer_abort(f, -EFBIG);
        return;
    }
    const char *ct = upreq_header(up, "Content-Type");
    int err = fill_set_size(f->fill, len, ct);
    if (err < 0)
        producer_abort(f, err);
}

static void producer_on_body(upreq_t *up, void *arg, const char *data, size_t len)
{
    producer_t *f = arg;
    (void)up;
    f->in = data;
    f->in_len = len;
    producer_pump(f);
}

static void producer_on_done(upreq_t *up, void *arg, int err)
{
    producer_t *f = arg;
    (void)up;
    f->up = NULL; /* freed by the client after this returns */
    f->ended = true;
    f->end_err = err;
    /* No answer at all counts against the upstream's health; a cut after the headers is the
     * fill's business (the client retries). */
    if (err && !f->answered && f->health)
        health_report(f->health, 0, err);
    if (err && f->writing)
        return; /* producer_on_written ends it */
    if (err) {
        producer_end(f, err);
        return;
    }
    producer_pump(f);
}

static const upreq_cbs_t producer_cbs = {
    .on_headers = producer_on_headers,
    .on_body = producer_on_body,
    .on_done = producer_on_done,
};

/* Starts the producer for a fill this request created. On failure the fill is failed. */
static void producer_start(call_t *c, fill_t *fill)
{
    producer_t *f = calloc(1, sizeof *f);
    char *b0 = malloc(PRODUCER_BUF), *b1 = malloc(PRODUCER_BUF);
    if (!f || !b0 || !b1) {
        free(f);
        free(b0);
        free(b1);
        fill_fail(fill, -ENOMEM);
        return;
    }
    f->buf[0] = b0;
    f->buf[1] = b1;
    fill_ref(fill);
    f->fill = fill;
    snprintf(f->digest, sizeof f->digest, "%s", c->route.ref);
    char path[REF_NAME_MAX + 400];
    fetch_path(c, "blobs", c->route.ref, path, sizeof path);
    f->owner = c->env->producers;
    f->env = c->env;
    f->health = c->health;
    f->retention = c->env->retention;
    f->next = f->owner->head;
    if (f->next)
        f->next->prev = f;
    f->owner->head = f;
    f->linked = true;
    int err = upreq_start(&f->up, c->up, "GET", path, NULL, &producer_cbs, f);
    if (err < 0) {
        f->up = NULL;
        producer_end(f, err);
    }
}

int blob_producers_create(blob_producers_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : -ENOMEM;
}

void blob_producers_free(blob_producers_t *p)
{
    free(p);
}

void blob_producers_cancel_all(blob_producers_t *p)
{
    /* The whole list is taken first: a producer with a write in flight ends later, in its write
     * callback, and must not be found on the list then. */
    producer_t *list = p->head;
    p->head = NULL;
    while (list) {
        producer_t *f = list;
        list = f->next;
        f->linked = false;
        f->prev = f->next = NULL;
        producer_abort(f, WE_CANCELLED);
    }
}

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

/* ---- HEAD on a miss ------------------------------------------------------------------------ */

static void on_blob_head(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                         size_t len)
{
    (void)ctx;
    (void)len;
    free(body);
    if (err || status != 200) {
        reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                               OCI_BLOB_UNKNOWN);
        return;
    }
    uint64_t size = upreq_content_length(up);
    if (size == UINT64_MAX) {
        reply_failure(c, WE_UPSTREAM, OCI_BLOB_UNKNOWN);
        return;
    }
    c->cache_status = "upstream";
    reply_begin(c, 200);
    blob_headers(c, c->route.ref, true);
    resp_send(c->req, size, NULL, 0, false);
}

/* ---- Entry ---------------------------------------------------------------------------------- */

void blob_handle(call_t *c)
{
    cache_entry_t e;
    if (cache_lookup(c->env->cache, c->route.ref, &e) == 0) {
        c->cache_status = "hit";
        if (serve_hit(c, &e) == 0)
            return;
    }
    if (req_is_head(c->req)) {
        char path[REF_NAME_MAX + 400];
        fetch_path(c, "blobs", c->route.ref, path, sizeof path);
        int err = fetch_start(c, "HEAD", path, NULL, 0, on_blob_head, NULL, NULL);
        if (err < 0)
            reply_failure(c, err, OCI_BLOB_UNKNOWN);
        return;
    }
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
    if (created)
        producer_start(c, fill);
    serve_fill(c, fill);
}
