/* Blobs passed through from the upstream without caching (passthru.h).
 *
 * When the cache's disk cannot hold a blob (a fill failed with ENOSPC or EDQUOT, or the free
 * space was already smaller than the blob when the upstream announced its size) and the
 * configuration says on_disk_full "pass_through", each client of that blob gets a stream of
 * its own: one upstream GET per client, its body sent on as it arrives, with the upstream read
 * paused while a send is in flight (so one read buffer is all the memory it holds), and nothing
 * written to disk. There is no single flight here: the mirror is degraded, not down.
 *
 * The bytes cannot be checked before the end, so the rule of fills applies: the blob is hashed
 * whole and its last byte is sent only once the digest matches; a mismatch, a cut or a short
 * body cuts the client's connection instead. A client that had already received part of the
 * failed fill continues from where it was; its earlier bytes came from the first download, so
 * they are compared with the same bytes of the new one (read back from the failed fill's file,
 * which stays readable while referenced). */
#include "proxy/passthru.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "proxy/blobhead.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/reply.h"

typedef struct passthru {
    call_t *c;
    upreq_t *up;
    fill_t *fill;   /* the failed fill, until the new download has passed prefix_end */
    digester_t *dg; /* NULL when the span cannot be verified */
    bool head_sent;
    bool ranged; /* the upstream GET asked for [cur, end) only */
    bool answered;
    bool busy; /* a send in flight (the upstream is paused meanwhile) */
    bool up_done;
    int up_err;
    uint64_t size;       /* the blob's; UINT64_MAX until known */
    uint64_t pos;        /* blob offset of the next upstream byte */
    uint64_t cur, end;   /* the client's next byte; one past its last */
    uint64_t prefix_end; /* bytes below this came from the failed fill */
    char last;           /* the blob's last byte, held until the digest checks */
    char digest[REF_DIGEST_MAX + 1];
} passthru_t;

static void pt_free(passthru_t *p)
{
    call_t *c = p->c;
    c->cancel = NULL;
    c->op = NULL;
    if (p->up)
        upreq_cancel(p->up);
    digester_free(p->dg);
    fill_unref(p->fill);
    free(p);
}

static void pt_cancel(call_t *c)
{
    pt_free(c->op);
}

/* The end, one way or the other. */
static void pt_fail(passthru_t *p, int err)
{
    call_t *c = p->c;
    bool head = p->head_sent;
    LOG_WARN("req=%llu blob %s passed through: %s", (unsigned long long)call_id(c), p->digest,
             err_str(err));
    pt_free(p);
    if (head)
        req_abort(c->req);
    else
        reply_failure(c, err, OCI_BLOB_UNKNOWN);
}

static void pt_finish(passthru_t *p)
{
    call_t *c = p->c;
    pt_free(p);
    req_finish(c->req);
}

static void on_io(req_t *r, int status);

/* Everything arrived and went out but the held byte: check, then send it. */
static void pt_complete(passthru_t *p)
{
    char got[REF_DIGEST_MAX + 1];
    if (p->up_err) {
        pt_fail(p, p->up_err);
        return;
    }
    if (p->pos != (p->ranged ? p->end : p->size)) {
        pt_fail(p, WE_SHORT);
        return;
    }
    if (p->dg) {
        if (digester_final(p->dg, got) != 0 || strcmp(got, p->digest) != 0) {
            pt_fail(p, WE_DIGEST);
            return;
        }
        digester_free(p->dg);
        p->dg = NULL;
        if (p->end == p->size && p->cur < p->end) {
            p->cur = p->end;
            p->busy = true;
            resp_send_data(p->c->req, &p->last, 1, on_io);
            return;
        }
    }
    if (p->cur < p->end) {
        pt_fail(p, WE_SHORT);
        return;
    }
    pt_finish(p);
}

static void on_io(req_t *r, int status)
{
    call_t *c = req_data(r);
    passthru_t *p = c->op;
    p->busy = false;
    if (status < 0) {
        pt_free(p);
        req_abort(c->req);
        return;
    }
    if (p->up_done) {
        pt_complete(p);
    } else if (p->cur >= p->end && p->end < p->size) {
        /* A span that ends before the blob does has gone out whole and nobody can verify it:
         * the rest of the download would only keep the client waiting. */
        pt_finish(p);
    } else if (p->up) {
        upreq_resume(p->up);
    }
}

static void on_headers(upreq_t *up, void *arg, int status)
{
    passthru_t *p = arg;
    call_t *c = p->c;
    p->answered = true;
    if (c->health)
        health_report(c->health, status, 0);
    uint64_t len = upreq_content_length(up);
    if (len != UINT64_MAX && len > c->env->cfg->max_blob_bytes && status == 200) {
        pt_fail(p, WE_TOOBIG);
        return;
    }
    if (p->ranged && status == 206 && len == p->end - p->cur) {
        p->pos = p->cur;
    } else if (status == 200 && len != UINT64_MAX && (!p->head_sent || len == p->size)) {
        p->size = len;
        p->ranged = false; /* a 200 to a Range request: skip to cur (not verified: no dg) */
    } else {
        pt_fail(p, status == 200 || status == 206 ? WE_PROTO : fetch_status_err(status));
        return;
    }
    if (p->head_sent)
        return;
    uint64_t first, count;
    if (blob_begin_head(c, p->digest, p->size, false, &first, &count) == 416) {
        uint64_t size = p->size;
        pt_free(p);
        blob_reply_416(c, size);
        return;
    }
    p->cur = first;
    p->end = first + count;
    p->head_sent = true;
    p->busy = true;
    upreq_pause(up);
    resp_send_head(c->req, count, on_io);
}

/* Bytes [off, off + n) of the new download against the failed fill's. */
static bool same_as_fill(passthru_t *p, uint64_t off, const char *data, size_t n)
{
    char buf[16384];
    int fd = fill_fd(p->fill);
    while (n > 0) {
        size_t k = n < sizeof buf ? n : sizeof buf;
        ssize_t got = pread(fd, buf, k, (off_t)off);
        if (got <= 0 || memcmp(buf, data, (size_t)got) != 0)
            return false;
        off += (uint64_t)got;
        data += got;
        n -= (size_t)got;
    }
    return true;
}

static void on_body(upreq_t *up, void *arg, const char *data, size_t len)
{
    passthru_t *p = arg;
    uint64_t off = p->pos;
    p->pos += len;
    if (p->pos > (p->ranged ? p->end : p->size)) {
        pt_fail(p, WE_TOOBIG);
        return;
    }
    if (p->dg)
        digester_update(p->dg, data, len);
    if (p->fill && off < p->prefix_end) {
        size_t n = (size_t)(p->prefix_end - off < len ? p->prefix_end - off : len);
        if (!same_as_fill(p, off, data, n)) {
            pt_fail(p, WE_DIGEST);
            return;
        }
        if (p->pos >= p->prefix_end) {
            fill_unref(p->fill);
            p->fill = NULL;
        }
    }
    /* A verified span holds back the blob's last byte. */
    uint64_t lim = p->end;
    if (p->dg && p->end == p->size && p->size > 0) {
        lim = p->size - 1;
        if (p->pos == p->size)
            p->last = data[len - 1];
    }
    uint64_t from = off > p->cur ? off : p->cur;
    uint64_t to = p->pos < lim ? p->pos : lim;
    if (from >= to)
        return;
    p->cur = to;
    p->busy = true;
    upreq_pause(up);
    resp_send_data(p->c->req, data + (from - off), (size_t)(to - from), on_io);
}

static void on_done(upreq_t *up, void *arg, int err)
{
    passthru_t *p = arg;
    (void)up;
    p->up = NULL;
    p->up_done = true;
    p->up_err = err;
    if (err && !p->answered && p->c->health)
        health_report(p->c->health, 0, err);
    if (!p->busy)
        pt_complete(p);
}

static const upreq_cbs_t cbs = {.on_headers = on_headers, .on_body = on_body, .on_done = on_done};

void passthru_start(call_t *c, const passthru_from_t *from)
{
    char path[REF_NAME_MAX + 400], range[96];
    const char *hdrs[2] = {NULL, NULL};
    passthru_t *p = calloc(1, sizeof *p);
    if (!p) {
        if (from)
            fill_unref(from->fill);
        if (from && from->head_sent)
            req_abort(c->req);
        else
            reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    p->c = c;
    p->size = UINT64_MAX;
    snprintf(p->digest, sizeof p->digest, "%s", c->route.ref);
    c->op = p;
    c->cancel = pt_cancel;
    c->cache_status = "pass-through";
    if (from && from->head_sent) {
        p->head_sent = true;
        p->size = from->size;
        p->cur = from->cur;
        p->end = from->end;
        /* A span that ends before the blob does cannot be verified anyway: fetch just it. */
        p->ranged = from->end < from->size;
        if (p->ranged) {
            snprintf(range, sizeof range, "Range: bytes=%llu-%llu", (unsigned long long)p->cur,
                     (unsigned long long)(p->end - 1));
            hdrs[0] = range;
        } else {
            p->fill = from->fill;
            p->prefix_end = from->cur;
        }
    }
    if (p->fill == NULL && from)
        fill_unref(from->fill);
    enum ref_alg alg;
    int err = p->ranged ? 0 : ref_digest_parse(p->digest, strlen(p->digest), &alg);
    if (err == 0 && !p->ranged)
        err = digester_new(&p->dg, alg);
    fetch_path(c, "blobs", p->digest, path, sizeof path);
    upreq_opts_t opts = {.lane = UPREQ_BULK, .req_id = call_id(c)};
    if (err == 0)
        err = upreq_start_opts(&p->up, c->up, "GET", path, hdrs, &cbs, p, &opts);
    if (err) {
        p->up = NULL;
        pt_fail(p, err);
        return;
    }
    LOG_INFO("req=%llu blob %s: the disk is full, passing it through from the upstream "
             "(not cached)",
             (unsigned long long)call_id(c), p->digest);
}
