/* One exchange on an upstream connection (upstream_internal.h has the map of the files):
 * the request head goes out, the answer is parsed with llhttp, its head is shown to the caller
 * (or, when it is a hop, kept for upstream_hops.c) and its body delivered with flow control;
 * response and idle-body timeouts; the connection goes back to the pool when the answer is
 * whole and the connection clean.
 *
 * Callback discipline. The user's on_headers and on_body run inside llhttp_execute, which runs
 * over the conn's read buffer; so a cancel from inside them only marks the request
 * (UR_CANCELLED), and the teardown (which frees that buffer) waits until llhttp returns.
 * on_message_complete pauses the parser, so completion, pooling and on_done also happen outside
 * llhttp. upreq_resume never calls back from inside itself: it moves the request to RESUMING
 * and the connection's timer (0 ms) restarts delivery on the next loop iteration.
 *
 * Body flow control: when on_body calls upreq_pause, the callback returns HPE_PAUSED to
 * llhttp, which stops right after that span and records where (llhttp_get_error_pos). The
 * conn stops reading, so the rest of its read buffer stays valid; resuming feeds that rest to
 * the parser first (llhttp_resume + llhttp_execute), then reads again. The idle-body timeout
 * does not run while the caller holds the body.
 *
 * Splicing (upreq_splice_body): once every byte read so far has been through the parser, the
 * rest of a Content-Length body moves from the socket into the caller's pipe and never meets
 * the parser, which stays mid-body; the wire counts the bytes down itself and completes the
 * answer at zero (the next send starts a fresh parser). A full pipe pauses the request as
 * upreq_pause would; upreq_resume splices on.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "proxy/upstream_internal.h"

static void on_conn_read(conn_t *c, ssize_t nread, const char *data);
static void on_conn_splice(conn_t *c, ssize_t n);
static void on_wire_timer(uv_timer_t *t);

static bool head_in(const upreq_t *r)
{
    return r->state == UR_DRAINING || r->state == UR_BODY || r->state == UR_PAUSED ||
           r->state == UR_RESUMING || r->state == UR_COMPLETE;
}

static void arm_idle_body(upreq_t *r)
{
    r->last_body = uv_now(r->u->loop);
    if (r->uc)
        pool_arm(r->uc, r->u->gcfg->upstream_idle_timeout_ms, on_wire_timer);
}

void wire_drop(upreq_t *r)
{
    origin_t *o = r->o;
    upconn_t *uc = r->uc;
    if (uc) {
        pool_detach(uc);
        pool_close(uc);
    }
    req_free(r);
    pool_pump(o);
}

void wire_abort(upreq_t *r, int err)
{
    origin_t *o = r->o;
    upconn_t *uc = r->uc;
    if (uc) {
        pool_detach(uc);
        pool_close(uc); /* whatever is still on the wire is never read */
    }
    req_fail_later(r, err);
    pool_pump(o);
}

/* r's connection is gone (already detached and closed) with err: an answer that is a hop had
 * told us all we needed, so go on with the next hop; otherwise report err. */
static void lost_conn(upreq_t *r, int err)
{
    if (r->next_url || r->chal)
        hops_next(r);
    else
        req_fail_later(r, err);
}

static bool retryable(const upconn_t *uc, const upreq_t *r)
{
    return uc->reused && !r->got_bytes && r->idempotent && !r->retried;
}

/* The connection failed under request r: retry once if it looks like a stale keep-alive,
 * else report err. The connection is closed either way. */
static void conn_failed(upconn_t *uc, int err)
{
    origin_t *o = uc->o;
    upreq_t *r = pool_detach(uc);
    bool retry = r && retryable(uc, r);
    pool_close(uc);
    if (r) {
        if (retry) {
            LOG_DEBUG("upstream %s: %s: pooled connection failed (%s), retrying on a new one",
                      uc->u->ucfg->name, r->logline, err_str(err));
            pool_requeue_fresh(r);
        } else {
            lost_conn(r, err);
        }
    }
    pool_pump(o);
}

/* The response and idle-body timeouts of an ACTIVE connection. */
static void on_wire_timer(uv_timer_t *t)
{
    upconn_t *uc = t->data;
    upstream_t *u = uc->u;
    origin_t *o = uc->o;
    upreq_t *r = uc->req;
    if (r->state == UR_PAUSED)
        return; /* the idle clock does not run while the caller holds the body */
    if (head_in(r)) {
        uint64_t now = uv_now(u->loop), idle = u->gcfg->upstream_idle_timeout_ms;
        if (now - r->last_body < idle) {
            pool_arm(uc, idle - (now - r->last_body), on_wire_timer);
            return;
        }
    }
    LOG_DEBUG("upstream %s: %s: timed out %s", u->ucfg->name, r->logline,
              head_in(r) ? "waiting for body bytes" : "waiting for response headers");
    pool_detach(uc);
    pool_close(uc);
    lost_conn(r, -ETIMEDOUT);
    pool_pump(o);
}

/* ---- Sending. ---- */

static const llhttp_settings_t parser_settings;

static void on_req_written(conn_t *c, int status)
{
    upconn_t *uc = c->data;
    if (status < 0 && uc->req)
        conn_failed(uc, status);
}

void wire_send(upreq_t *r)
{
    upconn_t *uc = r->uc;
    upstream_t *u = r->u;
    req_set_state(r, UR_SENT);
    if (!r->hdr) {
        /* Allocated only once a connection serves the request, so the wait queue stays
         * cheap. */
        r->hcap = u->gcfg->max_header_bytes;
        r->hdr = malloc(r->hcap ? r->hcap : 1);
        if (!r->hdr) {
            conn_failed(uc, -ENOMEM);
            return;
        }
    }
    r->got_bytes = r->toobig = r->keepalive = false;
    r->pend = NULL;
    r->hlen = r->hdone = r->vstart = 0;
    r->status = 0;
    r->clen = UINT64_MAX;
    r->drained = 0;
    r->splice_fd = -1;
    r->splicing = false;
    /* A fresh parser per send: a request may be sent again after a whole answer (a hop). */
    llhttp_init(&r->parser, HTTP_RESPONSE, &parser_settings);
    r->parser.data = r;
    uv_buf_t b = uv_buf_init(r->head, (unsigned)r->head_len);
    int rc = conn_write(&uc->conn, &b, 1, on_req_written);
    if (rc == 0)
        rc = conn_read_start(&uc->conn, on_conn_read);
    if (rc < 0) {
        conn_failed(uc, rc);
        return;
    }
    /* The response clock starts with the write, so a server that never reads is caught too. */
    pool_arm(uc, u->gcfg->upstream_response_timeout_ms, on_wire_timer);
}

/* ---- Response parsing (llhttp callbacks; r is parser.data). ---- */

static int hdr_append(upreq_t *r, const char *at, size_t len)
{
    if (len > r->hcap || r->hlen + len > r->hcap) {
        r->toobig = true;
        return -1;
    }
    memcpy(r->hdr + r->hlen, at, len);
    r->hlen += len;
    return 0;
}

static int on_hdr_field(llhttp_t *p, const char *at, size_t len)
{
    upreq_t *r = p->data;
    return head_in(r) ? 0 : hdr_append(r, at, len); /* trailers are ignored */
}

static int on_hdr_field_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (head_in(r))
        return 0;
    if (hdr_append(r, "", 1) < 0)
        return -1;
    r->vstart = r->hlen;
    return 0;
}

static int on_hdr_value(llhttp_t *p, const char *at, size_t len)
{
    upreq_t *r = p->data;
    return head_in(r) ? 0 : hdr_append(r, at, len);
}

static int on_hdr_value_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (head_in(r))
        return 0;
    /* Trim optional whitespace on both sides (llhttp already skips most leading space). */
    char *v = r->hdr + r->vstart;
    size_t n = r->hlen - r->vstart, s = 0;
    while (s < n && (v[s] == ' ' || v[s] == '\t'))
        s++;
    while (n > s && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    memmove(v, v + s, n - s);
    r->hlen = r->vstart + (n - s);
    if (hdr_append(r, "", 1) < 0)
        return -1;
    r->hdone = r->hlen;
    return 0;
}

/* The head of an answer that is a hop: its body is dropped, up to a bound. */
static int drain_head(upreq_t *r)
{
    req_set_state(r, UR_DRAINING);
    if (r->is_head)
        return 1;
    if (r->clen != UINT64_MAX && r->clen > UP_MAX_DRAIN)
        return HPE_PAUSED; /* not worth reading: after_execute drops the connection */
    return 0;
}

/* The head of r's answer goes to the caller. */
static int deliver_head(upreq_t *r, int status)
{
    req_set_state(r, UR_BODY);
    r->cbs->on_headers(r, r->arg, status);
    if (r->state == UR_CANCELLED || r->abort_err)
        return -1;
    bool hold = r->hold;
    r->hold = false;
    if (hold && r->state == UR_BODY) {
        /* upreq_pause came before the head: it takes effect now. */
        req_set_state(r, UR_PAUSED);
        wire_pause(r);
    }
    if (r->is_head)
        return 1; /* a HEAD response has no body whatever its headers say */
    return r->state == UR_PAUSED ? HPE_PAUSED : 0;
}

static int on_hdrs_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    int status = llhttp_get_status_code(p);
    if (status >= 100 && status < 200) {
        if (status == 101)
            return -1; /* no protocol switches on a registry pull */
        /* Interim response: forget its headers; llhttp parses the real one next. */
        r->hlen = r->hdone = r->vstart = 0;
        return 0;
    }
    r->status = status;
    if ((p->flags & F_CONTENT_LENGTH) && !(p->flags & (F_CHUNKED | F_TRANSFER_ENCODING)))
        r->clen = p->content_length;
    else
        r->clen = UINT64_MAX;
    arm_idle_body(r);
    if (hops_intercept(r, status))
        return drain_head(r);
    return deliver_head(r, status);
}

static int on_body_span(llhttp_t *p, const char *at, size_t len)
{
    upreq_t *r = p->data;
    if (len == 0 || !head_in(r))
        return 0;
    r->last_body = uv_now(r->u->loop);
    if (r->state == UR_DRAINING) {
        /* An intercepted response's body is nobody's: drop it, up to a bound. */
        r->drained += len;
        return r->drained > UP_MAX_DRAIN ? HPE_PAUSED : 0;
    }
    r->cbs->on_body(r, r->arg, at, len);
    if (r->state == UR_CANCELLED || r->abort_err)
        return -1;
    return r->state == UR_PAUSED ? HPE_PAUSED : 0;
}

static int on_msg_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (!head_in(r))
        return 0; /* end of an interim (1xx) response */
    req_set_state(r, UR_COMPLETE);
    r->keepalive = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) >= 1 &&
                   llhttp_should_keep_alive(p);
    /* Stop llhttp here: completion, pooling and on_done run outside the parser. */
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_header_field = on_hdr_field,
    .on_header_field_complete = on_hdr_field_done,
    .on_header_value = on_hdr_value,
    .on_header_value_complete = on_hdr_value_done,
    .on_headers_complete = on_hdrs_done,
    .on_body = on_body_span,
    .on_message_complete = on_msg_done,
};

/* ---- Driving the parser. ---- */

/* The whole answer is in: the connection goes back to the pool if it is clean, and r ends or
 * goes on with its next hop. */
static void finish(upconn_t *uc, upreq_t *r, size_t leftover)
{
    origin_t *o = uc->o;
    /* Bytes after the message (in the buffer, or already in the socket: no request asked for
     * them, and they would answer the next one sent here), or a request still being written,
     * leave the connection in an unknown state: only a clean one goes back to the pool. */
    pool_release(uc, r->keepalive && leftover == 0 && !conn_writing(&uc->conn) &&
                         !conn_input_pending(&uc->conn));
    if (r->next_url || r->chal)
        hops_next(r);
    else
        req_complete(r, 0);
    pool_pump(o);
}

/* Handles what llhttp_execute returned. Returns 1 when the caller may keep feeding the
 * connection's bytes to this request, 0 when it must stop (paused, done, failed, freed). */
static int after_execute(upconn_t *uc, upreq_t *r, llhttp_errno_t e, const char *end)
{
    if (r->state == UR_CANCELLED) {
        wire_drop(r);
        return 0;
    }
    if (r->abort_err) {
        /* upreq_abort from on_headers or on_body: nothing more is read. */
        wire_abort(r, r->abort_err);
        return 0;
    }
    if (e == HPE_OK)
        return 1;
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&r->parser);
        if (r->state == UR_COMPLETE) {
            finish(uc, r, (size_t)(end - pos));
        } else if (r->state == UR_DRAINING) {
            /* An intercepted response with a body not worth reading: drop the connection. */
            origin_t *o = uc->o;
            pool_detach(uc);
            pool_close(uc);
            hops_next(r);
            pool_pump(o);
        } else {
            /* Paused by the caller: the rest of this buffer waits for upreq_resume. */
            r->pend = pos;
            r->pend_len = (size_t)(end - pos);
            conn_read_stop(&uc->conn);
        }
        return 0;
    }
    LOG_DEBUG("upstream %s: %s: bad response: %s (%s)", r->u->ucfg->name, r->logline,
              llhttp_errno_name(e), llhttp_get_error_reason(&r->parser));
    conn_failed(uc, r->toobig ? WE_TOOBIG : WE_PROTO);
    return 0;
}

static int feed(upconn_t *uc, upreq_t *r, const char *data, size_t len)
{
    r->in_parser++;
    llhttp_errno_t e = llhttp_execute(&r->parser, data, len);
    r->in_parser--;
    return after_execute(uc, r, e, data + len);
}

static void on_eof(upconn_t *uc, upreq_t *r, int err)
{
    if (err == UV_EOF && head_in(r) && llhttp_message_needs_eof(&r->parser)) {
        /* A close-delimited body ends here, legitimately. */
        r->in_parser++;
        (void)llhttp_finish(&r->parser);
        r->in_parser--;
        if (r->state == UR_CANCELLED) {
            wire_drop(r);
            return;
        }
        if (r->abort_err) {
            wire_abort(r, r->abort_err);
            return;
        }
        if (r->state == UR_COMPLETE) {
            r->keepalive = false;
            finish(uc, r, 0);
            return;
        }
    }
    if (err == UV_EOF)
        err = head_in(r) ? WE_SHORT : r->got_bytes ? WE_PROTO : UV_EOF;
    conn_failed(uc, err);
}

/* Reads on: through the parser, or, when the caller asked for the body in its pipe and every
 * byte read so far has been parsed, by splice for the rest of the body. */
static int read_on(upconn_t *uc, upreq_t *r)
{
    if (r->splice_fd >= 0 && r->state == UR_BODY) {
        if (!r->splicing && r->parser.content_length == 0)
            return conn_read_start(&uc->conn, on_conn_read); /* the parser completes it */
        if (!r->splicing) {
            r->splice_left = r->parser.content_length;
            LOG_DEBUG("upstream %s: %s: the last %llu body bytes by splice", r->u->ucfg->name,
                      r->logline, (unsigned long long)r->splice_left);
        }
        r->splicing = true;
        return conn_splice_start(&uc->conn, r->splice_fd, r->splice_left, on_conn_splice);
    }
    return conn_read_start(&uc->conn, on_conn_read);
}

/* The reader of a bound connection (an idle one has the pool's). */
static void on_conn_read(conn_t *c, ssize_t nread, const char *data)
{
    upconn_t *uc = c->data;
    upreq_t *r = uc->req;
    if (nread < 0) {
        on_eof(uc, r, (int)nread);
        return;
    }
    r->got_bytes = true;
    if (feed(uc, r, data, (size_t)nread) && r->splice_fd >= 0 && r->state == UR_BODY &&
        read_on(uc, r) < 0)
        conn_failed(uc, -EBADF);
}

/* The body's bytes moved into the caller's pipe (n > 0), the pipe is full (-ENOBUFS), or
 * splicing failed (other n < 0). */
static void on_conn_splice(conn_t *c, ssize_t n)
{
    upconn_t *uc = c->data;
    upreq_t *r = uc->req;
    if (n < 0 && n != -ENOBUFS) {
        on_eof(uc, r, (int)n);
        return;
    }
    if (n == -ENOBUFS) {
        req_set_state(r, UR_PAUSED); /* until the caller has drained the pipe and resumes */
    } else {
        r->last_body = uv_now(r->u->loop);
        r->splice_left -= (uint64_t)n;
    }
    r->in_parser++; /* a cancel from the callback waits for this function, as in the parser */
    r->cbs->on_spliced(r, r->arg, n > 0 ? (size_t)n : 0);
    r->in_parser--;
    if (r->state == UR_CANCELLED) {
        wire_drop(r);
        return;
    }
    if (r->abort_err) {
        wire_abort(r, r->abort_err);
        return;
    }
    if (r->splice_left == 0) {
        req_set_state(r, UR_COMPLETE);
        r->keepalive = llhttp_get_http_major(&r->parser) == 1 &&
                       llhttp_get_http_minor(&r->parser) >= 1 &&
                       llhttp_should_keep_alive(&r->parser);
        finish(uc, r, 0);
    } else if (r->state == UR_PAUSED) {
        wire_pause(r); /* the pipe is full, or the caller paused */
    } else if (n == -ENOBUFS && read_on(uc, r) < 0) {
        conn_failed(uc, -EBADF); /* resumed inside the callback: splicing had stopped */
    }
}

/* ---- Flow control. ---- */

void wire_pause(upreq_t *r)
{
    upconn_t *uc = r->uc;
    uv_timer_stop(&uc->timer); /* the idle clock, or a resume that was due */
    /* Inside a callback the parser stops on HPE_PAUSED and reading stops after it returns. */
    if (!r->in_parser)
        conn_read_stop(&uc->conn);
}

/* A resume is due (RESUMING): feed the rest of the paused buffer, then read again. */
static void on_resume_due(uv_timer_t *t)
{
    upconn_t *uc = t->data;
    upreq_t *r = uc->req;
    req_set_state(r, UR_BODY);
    arm_idle_body(r);
    if (r->pend) {
        /* Feed the rest of the buffer the parser stopped in, even when empty: a pause on the
         * last body span leaves on_message_complete still to run. */
        const char *p = r->pend;
        size_t n = r->pend_len;
        r->pend = NULL;
        llhttp_resume(&r->parser);
        if (!feed(uc, r, p, n))
            return;
    }
    if (read_on(uc, r) < 0)
        conn_failed(uc, -EBADF);
}

void wire_resume(upreq_t *r)
{
    if (r->in_parser) {
        /* Resumed in the same callback that paused: the parser simply goes on. */
        req_set_state(r, UR_BODY);
        arm_idle_body(r);
        return;
    }
    req_set_state(r, UR_RESUMING);
    uv_timer_start(&r->uc->timer, on_resume_due, 0, 0);
}
