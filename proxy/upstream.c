/* HTTP/1.1 client for one upstream registry.
 *
 * Objects:
 * - upstream_t: one per configured upstream. Holds the resolved addresses (lazy DNS, 60 s
 *   cache), the connection pool (every live upconn; the idle ones also on a LIFO stack), the
 *   FIFO of requests waiting for a connection, and a "deferred" list drained by a 0 ms timer.
 * - upconn_t: one TCP connection (conn_t) plus one timer. States:
 *     CONNECTING (bound to the request that asked for it; connect timeout)
 *     -> ACTIVE (bound to a request; response timeout, then idle-body timeout)
 *     -> IDLE (in the pool, still reading so a server-side close is noticed; keep-alive timer)
 *     -> ACTIVE ... and finally closed (never reused after an error, a timeout or a cancel).
 * - upreq_t: one request. Lives in the wait queue, then bound to an upconn, then done.
 *
 * Callback discipline. The user's on_headers and on_body run inside llhttp_execute, which runs
 * over the conn's read buffer; so a cancel from inside them only marks the request, and the
 * teardown (which frees that buffer) waits until llhttp returns. on_message_complete pauses the
 * parser, so completion, pooling and on_done also happen outside llhttp. Failures are reported
 * through the deferred list (on the next loop iteration), which gives one rule: dispatch, start
 * and cancel never call user code, and on_done(error) never runs inside a libuv callback that
 * is still using the connection. upreq_resume is deferred the same way, so on_body never runs
 * inside upreq_resume either.
 *
 * Body flow control: when on_body calls upreq_pause, the callback returns HPE_PAUSED to
 * llhttp, which stops right after that span and records where (llhttp_get_error_pos). The
 * conn stops reading, so the rest of its read buffer stays valid; upreq_resume feeds that rest
 * to the parser first (llhttp_resume + llhttp_execute), then reads again.
 */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/err.h"
#include "common/log.h"
#include "proxy/conn.h"

/* Read buffer per upstream connection: large enough that a fast upstream fills few reads. */
#define UP_RBUF (128 * 1024)
/* Requests that may wait for a connection slot before upreq_start refuses with -EAGAIN. */
#define UP_MAX_QUEUE 4096
/* Bound of a request head (request line, Host, User-Agent, caller's headers). Bearer tokens
 * are the biggest thing in there and stay well under it. */
#define UP_MAX_HEAD (16 * 1024)
#define UP_MAX_ADDRS 8
#define UP_DNS_TTL_MS 60000
/* After a failed re-resolution the previous addresses stay in use; try again this soon. */
#define UP_DNS_RETRY_MS 5000
#define UP_USER_AGENT "winch/0.1"

typedef struct upconn upconn_t;

enum uc_state { UC_CONNECTING, UC_ACTIVE, UC_IDLE };
enum req_where { Q_NONE, Q_WAIT, Q_DEFER };

struct upconn {
    conn_t conn;
    uv_timer_t timer;
    upstream_t *u;
    upreq_t *req; /* bound request (CONNECTING, ACTIVE), NULL when idle */
    enum uc_state state;
    int open_handles; /* after close: handles whose close callback is still due */
    bool closing;
    bool in_idle;                    /* on the idle stack */
    bool reused;                     /* served a request before: may be a stale keep-alive */
    int addr_idx;                    /* address being tried */
    upconn_t *prev, *next;           /* every live conn */
    upconn_t *idle_prev, *idle_next; /* idle stack */
};

struct upreq {
    upstream_t *u;
    upconn_t *uc;
    const upreq_cbs_t *cbs;
    void *arg;
    char *head; /* request head, owned */
    size_t head_len;
    size_t line_len; /* request line length, for logs (never headers: they carry tokens) */
    bool is_head, idempotent;
    /* Queues (wait or deferred). */
    upreq_t *prev, *next;
    enum req_where where;
    bool fresh;   /* must not take a pooled connection (retry after a stale one) */
    bool retried; /* the one stale-connection retry was used */
    bool defer_resume;
    int defer_status;
    /* Response. */
    llhttp_t parser;
    char *hdr; /* "name\0value\0"..., max_header_bytes, owned */
    size_t hlen, hcap, vstart;
    size_t hdone; /* bytes of hdr holding complete entries */
    int status;
    uint64_t clen;
    bool headers_done, complete, keepalive, got_bytes, paused, cancelled, toobig;
    int in_parser;    /* > 0 while llhttp runs over the conn's buffer for this request */
    const char *pend; /* unparsed rest of the read buffer while paused */
    size_t pend_len;
    bool has_pend;
    uint64_t last_body; /* uv_now of the last body byte */
};

typedef struct dns_req {
    uv_getaddrinfo_t req;
    upstream_t *u; /* NULL once the upstream is destroyed */
} dns_req_t;

struct upstream {
    uv_loop_t *loop;
    const config_upstream_t *ucfg;
    const config_t *gcfg;
    char host_hdr[300]; /* value of Host */
    char port_str[8];
    /* Addresses. */
    struct sockaddr_storage addrs[UP_MAX_ADDRS];
    int naddrs;
    uint64_t addrs_expire; /* uv_now ms; UINT64_MAX for numeric hosts */
    dns_req_t *dns;        /* resolution in flight */
    /* Pool. */
    upconn_t *conns; /* every live connection */
    upconn_t *idle;  /* most recently used first */
    uint32_t nconns; /* live: connecting + active + idle */
    upreq_t *wait_head, *wait_tail;
    size_t nwait;
    upreq_t *defer_head, *defer_tail;
    uv_timer_t defer_timer;
    bool destroying;
};

static void dispatch(upstream_t *u);
static void on_conn_read(conn_t *c, ssize_t nread, const char *data);
static int feed(upconn_t *uc, upreq_t *r, const char *data, size_t len);

/* ---- Small lists. ---- */

static void q_remove(upreq_t **head, upreq_t **tail, upreq_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        *head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        *tail = r->prev;
    r->prev = r->next = NULL;
}

static void q_push_back(upreq_t **head, upreq_t **tail, upreq_t *r)
{
    r->next = NULL;
    r->prev = *tail;
    if (*tail)
        (*tail)->next = r;
    else
        *head = r;
    *tail = r;
}

static void q_push_front(upreq_t **head, upreq_t **tail, upreq_t *r)
{
    r->prev = NULL;
    r->next = *head;
    if (*head)
        (*head)->prev = r;
    else
        *tail = r;
    *head = r;
}

static void unqueue(upreq_t *r)
{
    upstream_t *u = r->u;
    if (r->where == Q_WAIT) {
        q_remove(&u->wait_head, &u->wait_tail, r);
        u->nwait--;
    } else if (r->where == Q_DEFER) {
        q_remove(&u->defer_head, &u->defer_tail, r);
    }
    r->where = Q_NONE;
}

static void enqueue_wait(upreq_t *r, bool front)
{
    upstream_t *u = r->u;
    if (front)
        q_push_front(&u->wait_head, &u->wait_tail, r);
    else
        q_push_back(&u->wait_head, &u->wait_tail, r);
    u->nwait++;
    r->where = Q_WAIT;
}

static void idle_remove(upconn_t *uc)
{
    upstream_t *u = uc->u;
    if (!uc->in_idle)
        return;
    if (uc->idle_prev)
        uc->idle_prev->idle_next = uc->idle_next;
    else
        u->idle = uc->idle_next;
    if (uc->idle_next)
        uc->idle_next->idle_prev = uc->idle_prev;
    uc->idle_prev = uc->idle_next = NULL;
    uc->in_idle = false;
}

/* ---- Requests: free and complete. ---- */

static void free_req(upreq_t *r)
{
    free(r->head);
    free(r->hdr);
    free(r);
}

static void on_defer(uv_timer_t *t);

/* Reports status through on_done on the next loop iteration. */
static void fail_later(upreq_t *r, int status)
{
    upstream_t *u = r->u;
    unqueue(r);
    r->defer_resume = false;
    r->defer_status = status;
    q_push_back(&u->defer_head, &u->defer_tail, r);
    r->where = Q_DEFER;
    uv_timer_start(&u->defer_timer, on_defer, 0, 0);
}

static void complete(upreq_t *r, int status)
{
    upstream_t *u = r->u;
    if (status == 0)
        LOG_DEBUG("upstream %s: %.*s -> %d", u->ucfg->name, (int)r->line_len, r->head, r->status);
    else
        LOG_DEBUG("upstream %s: %.*s failed: %s", u->ucfg->name, (int)r->line_len, r->head,
                  err_str(status));
    r->cbs->on_done(r, r->arg, status);
    free_req(r);
}

/* ---- Connections. ---- */

static void on_uc_closed_part(upconn_t *uc)
{
    if (--uc->open_handles == 0)
        free(uc);
}

static void on_uc_timer_closed(uv_handle_t *h)
{
    on_uc_closed_part(h->data);
}

static void on_uc_conn_closed(conn_t *c)
{
    on_uc_closed_part(c->data);
}

/* Closes a connection that no request uses any more (the caller detached it). */
static void close_conn(upconn_t *uc)
{
    upstream_t *u = uc->u;
    if (uc->closing)
        return;
    uc->closing = true;
    idle_remove(uc);
    if (uc->prev)
        uc->prev->next = uc->next;
    else
        u->conns = uc->next;
    if (uc->next)
        uc->next->prev = uc->prev;
    u->nconns--;
    uc->open_handles = 2;
    uv_close((uv_handle_t *)&uc->timer, on_uc_timer_closed);
    conn_close(&uc->conn, on_uc_conn_closed);
}

static upreq_t *detach(upconn_t *uc)
{
    upreq_t *r = uc->req;
    uc->req = NULL;
    if (r)
        r->uc = NULL;
    return r;
}

static void on_uc_timer(uv_timer_t *t);

static void arm(upconn_t *uc, uint64_t ms)
{
    if (ms == 0)
        uv_timer_stop(&uc->timer); /* 0 in the config means no limit */
    else
        uv_timer_start(&uc->timer, on_uc_timer, ms, 0);
}

static void arm_idle_body(upreq_t *r)
{
    r->last_body = uv_now(r->u->loop);
    if (r->uc)
        arm(r->uc, r->u->gcfg->upstream_idle_timeout_ms);
}

static void pool_put(upconn_t *uc)
{
    upstream_t *u = uc->u;
    uc->state = UC_IDLE;
    uc->reused = true;
    uc->idle_prev = NULL;
    uc->idle_next = u->idle;
    if (u->idle)
        u->idle->idle_prev = uc;
    u->idle = uc;
    uc->in_idle = true;
    /* Keep reading while idle: a server-side close (or stray bytes) is noticed at once. */
    if (conn_read_start(&uc->conn, on_conn_read) < 0) {
        close_conn(uc);
        return;
    }
    arm(uc, u->gcfg->upstream_keepalive_ms);
}

static bool retryable(const upconn_t *uc, const upreq_t *r)
{
    return uc->reused && !r->got_bytes && r->idempotent && !r->retried;
}

/* The connection failed under request r: retry once if it looks like a stale keep-alive,
 * else report err. The connection is closed either way. */
static void conn_failed(upconn_t *uc, int err)
{
    upstream_t *u = uc->u;
    upreq_t *r = detach(uc);
    bool retry = r && retryable(uc, r);
    close_conn(uc);
    if (r) {
        if (retry) {
            LOG_DEBUG("upstream %s: %.*s: pooled connection failed (%s), retrying on a new one",
                      u->ucfg->name, (int)r->line_len, r->head, err_str(err));
            r->retried = r->fresh = true;
            enqueue_wait(r, true);
        } else {
            fail_later(r, err);
        }
    }
    dispatch(u);
}

/* ---- Sending a request on a connected conn. ---- */

static void on_req_written(conn_t *c, int status)
{
    upconn_t *uc = c->data;
    if (status < 0 && uc->req)
        conn_failed(uc, status);
}

static void send_request(upconn_t *uc)
{
    upstream_t *u = uc->u;
    upreq_t *r = uc->req;
    int rc;
    uc->state = UC_ACTIVE;
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
    r->headers_done = r->complete = r->got_bytes = r->toobig = r->has_pend = false;
    r->hlen = r->hdone = r->vstart = 0;
    r->status = 0;
    r->clen = UINT64_MAX;
    uv_buf_t b = uv_buf_init(r->head, (unsigned)r->head_len);
    rc = conn_write(&uc->conn, &b, 1, on_req_written);
    if (rc == 0 && !r->paused)
        rc = conn_read_start(&uc->conn, on_conn_read);
    else if (rc == 0)
        conn_read_stop(&uc->conn);
    if (rc < 0) {
        conn_failed(uc, rc);
        return;
    }
    /* The response clock starts with the write, so a server that never reads is caught too. */
    arm(uc, u->gcfg->upstream_response_timeout_ms);
}

static void on_connected(conn_t *c, int status);

/* Opens connection number idx for r. Returns 0 (r is bound to the new conn) or an error. */
static int start_connect(upstream_t *u, upreq_t *r, int idx)
{
    upconn_t *uc = calloc(1, sizeof *uc);
    if (!uc)
        return -ENOMEM;
    uc->u = u;
    uc->addr_idx = idx;
    uc->state = UC_CONNECTING;
    uv_timer_init(u->loop, &uc->timer);
    uc->timer.data = uc;
    int rc = conn_connect(&uc->conn, u->loop, (const struct sockaddr *)&u->addrs[idx], UP_RBUF,
                          on_connected);
    if (rc < 0) {
        uc->open_handles = 1;
        uv_close((uv_handle_t *)&uc->timer, on_uc_timer_closed);
        return rc;
    }
    uc->conn.data = uc;
    uc->next = u->conns;
    if (u->conns)
        u->conns->prev = uc;
    u->conns = uc;
    u->nconns++;
    uc->req = r;
    r->uc = uc;
    arm(uc, u->gcfg->upstream_connect_timeout_ms);
    return 0;
}

static void on_connected(conn_t *c, int status)
{
    upconn_t *uc = c->data;
    upstream_t *u = uc->u;
    if (status == 0) {
        send_request(uc);
        return;
    }
    /* Refused or unreachable: try the next address (localhost is often ::1 then 127.0.0.1). */
    int next = uc->addr_idx + 1;
    upreq_t *r = detach(uc);
    close_conn(uc);
    if (next < u->naddrs && start_connect(u, r, next) == 0)
        return;
    fail_later(r, status);
    dispatch(u);
}

static void on_uc_timer(uv_timer_t *t)
{
    upconn_t *uc = t->data;
    upstream_t *u = uc->u;
    upreq_t *r = uc->req;
    if (uc->state == UC_IDLE || !r) {
        close_conn(uc);
        dispatch(u);
        return;
    }
    if (uc->state == UC_ACTIVE && r->headers_done) {
        if (r->paused)
            return; /* the idle clock does not run while the caller holds the body */
        uint64_t now = uv_now(u->loop), idle = u->gcfg->upstream_idle_timeout_ms;
        if (now - r->last_body < idle) {
            arm(uc, idle - (now - r->last_body));
            return;
        }
    }
    LOG_DEBUG("upstream %s: %.*s: timed out %s", u->ucfg->name, (int)r->line_len, r->head,
              uc->state == UC_CONNECTING ? "connecting"
              : r->headers_done          ? "waiting for body bytes"
                                         : "waiting for response headers");
    detach(uc);
    close_conn(uc);
    fail_later(r, -ETIMEDOUT);
    dispatch(u);
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
    return r->headers_done ? 0 : hdr_append(r, at, len); /* trailers are ignored */
}

static int on_hdr_field_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (r->headers_done)
        return 0;
    if (hdr_append(r, "", 1) < 0)
        return -1;
    r->vstart = r->hlen;
    return 0;
}

static int on_hdr_value(llhttp_t *p, const char *at, size_t len)
{
    upreq_t *r = p->data;
    return r->headers_done ? 0 : hdr_append(r, at, len);
}

static int on_hdr_value_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (r->headers_done)
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
    r->headers_done = true;
    r->status = status;
    if ((p->flags & F_CONTENT_LENGTH) && !(p->flags & (F_CHUNKED | F_TRANSFER_ENCODING)))
        r->clen = p->content_length;
    else
        r->clen = UINT64_MAX;
    if (r->uc)
        arm_idle_body(r);
    r->cbs->on_headers(r, r->arg, status);
    if (r->cancelled)
        return -1;
    if (r->is_head)
        return 1; /* a HEAD response has no body whatever its headers say */
    if (r->paused)
        return HPE_PAUSED;
    return 0;
}

static int on_body_span(llhttp_t *p, const char *at, size_t len)
{
    upreq_t *r = p->data;
    if (len == 0 || !r->headers_done)
        return 0;
    r->last_body = uv_now(r->u->loop);
    r->cbs->on_body(r, r->arg, at, len);
    if (r->cancelled)
        return -1;
    if (r->paused)
        return HPE_PAUSED;
    return 0;
}

static int on_msg_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (!r->headers_done)
        return 0; /* end of an interim (1xx) response */
    r->complete = true;
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

static void finish_ok(upconn_t *uc, upreq_t *r, size_t leftover)
{
    upstream_t *u = uc->u;
    uv_timer_stop(&uc->timer);
    detach(uc);
    /* Bytes after the message, or a request still being written, leave the connection in an
     * unknown state: only a clean one goes back to the pool. */
    if (r->keepalive && leftover == 0 && !conn_writing(&uc->conn) && !u->destroying &&
        u->gcfg->upstream_keepalive_ms > 0)
        pool_put(uc);
    else
        close_conn(uc);
    complete(r, 0);
    dispatch(u);
}

static void cancel_now(upreq_t *r)
{
    upstream_t *u = r->u;
    unqueue(r);
    upconn_t *uc = r->uc;
    if (uc) {
        detach(uc);
        close_conn(uc);
    }
    free_req(r);
    dispatch(u);
}

/* Handles what llhttp_execute returned. Returns 1 when the caller may keep feeding the
 * connection's bytes to this request, 0 when it must stop (paused, done, failed, freed). */
static int after_execute(upconn_t *uc, upreq_t *r, llhttp_errno_t e, const char *end)
{
    if (r->cancelled) {
        cancel_now(r);
        return 0;
    }
    if (e == HPE_OK)
        return 1;
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&r->parser);
        if (r->complete) {
            finish_ok(uc, r, (size_t)(end - pos));
            return 0;
        }
        /* Paused by the caller: the rest of this buffer waits for upreq_resume. */
        r->pend = pos;
        r->pend_len = (size_t)(end - pos);
        r->has_pend = true;
        conn_read_stop(&uc->conn);
        return 0;
    }
    LOG_DEBUG("upstream %s: %.*s: bad response: %s (%s)", r->u->ucfg->name, (int)r->line_len,
              r->head, llhttp_errno_name(e), llhttp_get_error_reason(&r->parser));
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
    if (err == UV_EOF && r->headers_done && llhttp_message_needs_eof(&r->parser)) {
        /* A close-delimited body ends here, legitimately. */
        r->in_parser++;
        llhttp_errno_t e = llhttp_finish(&r->parser);
        r->in_parser--;
        (void)e;
        if (r->cancelled) {
            cancel_now(r);
            return;
        }
        if (r->complete) {
            r->keepalive = false;
            finish_ok(uc, r, 0);
            return;
        }
    }
    if (err == UV_EOF)
        err = r->headers_done ? WE_SHORT : r->got_bytes ? WE_PROTO : UV_EOF;
    conn_failed(uc, err);
}

static void on_conn_read(conn_t *c, ssize_t nread, const char *data)
{
    upconn_t *uc = c->data;
    upreq_t *r = uc->req;
    if (!r) {
        /* Idle pooled connection: the server closed it, or sent bytes nobody asked for. */
        LOG_DEBUG("upstream %s: pooled connection %s", uc->u->ucfg->name,
                  nread < 0 ? "closed by the server" : "got unexpected bytes");
        upstream_t *u = uc->u;
        close_conn(uc);
        dispatch(u);
        return;
    }
    if (nread < 0) {
        on_eof(uc, r, (int)nread);
        return;
    }
    r->got_bytes = true;
    feed(uc, r, data, (size_t)nread);
}

/* ---- Deferred work: failures and resumes. ---- */

static void do_resume(upreq_t *r)
{
    upconn_t *uc = r->uc;
    if (!uc || uc->state != UC_ACTIVE || r->paused || r->cancelled)
        return;
    if (r->headers_done && !r->complete)
        arm_idle_body(r);
    if (r->has_pend) {
        /* Feed the rest of the buffer the parser stopped in, even when empty: a pause on the
         * last body span leaves on_message_complete still to run. */
        const char *p = r->pend;
        size_t n = r->pend_len;
        r->has_pend = false;
        llhttp_resume(&r->parser);
        if (!feed(uc, r, p, n))
            return;
    }
    if (conn_read_start(&uc->conn, on_conn_read) < 0)
        conn_failed(uc, -EBADF);
}

static void on_defer(uv_timer_t *t)
{
    upstream_t *u = t->data;
    /* Only what is queued now: callbacks may queue more, which waits for the next round. */
    size_t n = 0;
    for (upreq_t *r = u->defer_head; r; r = r->next)
        n++;
    while (n-- > 0 && u->defer_head && !u->destroying) {
        upreq_t *r = u->defer_head;
        q_remove(&u->defer_head, &u->defer_tail, r);
        r->where = Q_NONE;
        if (r->defer_resume) {
            r->defer_resume = false;
            do_resume(r);
        } else {
            complete(r, r->defer_status);
        }
    }
}

/* ---- Addresses. ---- */

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    dns_req_t *d = (dns_req_t *)req;
    upstream_t *u = d->u;
    free(d);
    if (!u) {
        uv_freeaddrinfo(res);
        return;
    }
    u->dns = NULL;
    int n = 0;
    for (struct addrinfo *ai = res; status == 0 && ai && n < UP_MAX_ADDRS; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof u->addrs[0])
            continue;
        memcpy(&u->addrs[n++], ai->ai_addr, ai->ai_addrlen);
    }
    uv_freeaddrinfo(res);
    if (status == 0 && n == 0)
        status = UV_EAI_NODATA;
    uint64_t now = uv_now(u->loop);
    if (status == 0) {
        u->naddrs = n;
        u->addrs_expire = now + UP_DNS_TTL_MS;
    } else if (u->naddrs > 0) {
        LOG_WARN("upstream %s: resolving %s failed (%s); keeping the previous addresses",
                 u->ucfg->name, u->ucfg->host, err_str(status));
        u->addrs_expire = now + UP_DNS_RETRY_MS;
    } else {
        LOG_WARN("upstream %s: resolving %s failed: %s", u->ucfg->name, u->ucfg->host,
                 err_str(status));
        /* Nothing was ever resolved, so no connection exists: every waiting request waited
         * for this answer. */
        while (u->wait_head)
            fail_later(u->wait_head, status);
        return;
    }
    dispatch(u);
}

/* 1: addresses usable now; 0: a resolution is running (dispatch runs again when it ends);
 * < 0: the resolution could not start. */
static int ensure_addrs(upstream_t *u)
{
    uint64_t now = uv_now(u->loop);
    if (u->naddrs > 0 && now < u->addrs_expire)
        return 1;
    if (u->naddrs == 0) {
        /* Literal addresses never go through the resolver. */
        struct sockaddr_in *s4 = (struct sockaddr_in *)&u->addrs[0];
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&u->addrs[0];
        memset(&u->addrs[0], 0, sizeof u->addrs[0]);
        if (inet_pton(AF_INET, u->ucfg->host, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            s4->sin_port = htons(u->ucfg->port);
        } else if (inet_pton(AF_INET6, u->ucfg->host, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons(u->ucfg->port);
        }
        if (u->addrs[0].ss_family != 0) {
            u->naddrs = 1;
            u->addrs_expire = UINT64_MAX;
            return 1;
        }
    }
    if (!u->dns) {
        dns_req_t *d = calloc(1, sizeof *d);
        if (!d)
            return u->naddrs > 0 ? 1 : -ENOMEM;
        d->u = u;
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        int rc = uv_getaddrinfo(u->loop, &d->req, on_resolved, u->ucfg->host, u->port_str, &hints);
        if (rc < 0) {
            free(d);
            return u->naddrs > 0 ? 1 : rc;
        }
        u->dns = d;
    }
    /* While a refresh runs, the expired addresses keep serving. */
    return u->naddrs > 0 ? 1 : 0;
}

/* ---- Dispatch: give waiting requests a connection. Never calls user callbacks. ---- */

static void dispatch(upstream_t *u)
{
    uint32_t max = u->gcfg->upstream_max_conns ? u->gcfg->upstream_max_conns : 1;
    while (u->wait_head && !u->destroying) {
        upreq_t *r = u->wait_head;
        if (!r->fresh && u->idle) {
            upconn_t *uc = u->idle;
            idle_remove(uc);
            unqueue(r);
            uc->req = r;
            r->uc = uc;
            uv_timer_stop(&uc->timer);
            send_request(uc);
            continue;
        }
        if (u->nconns >= max) {
            if (r->fresh && u->idle) {
                close_conn(u->idle); /* make room for the fresh connection */
                continue;
            }
            break;
        }
        int rc = ensure_addrs(u);
        if (rc == 0)
            break;
        unqueue(r);
        if (rc > 0)
            rc = start_connect(u, r, 0);
        if (rc < 0)
            fail_later(r, rc);
    }
}

/* ---- Public API. ---- */

int upstream_create(upstream_t **out, uv_loop_t *loop, const config_upstream_t *ucfg,
                    const config_t *gcfg)
{
    upstream_t *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->loop = loop;
    u->ucfg = ucfg;
    u->gcfg = gcfg;
    bool v6 = strchr(ucfg->host, ':') != NULL;
    bool dflt = ucfg->port == (ucfg->tls ? 443 : 80);
    int n;
    if (dflt)
        n = snprintf(u->host_hdr, sizeof u->host_hdr, v6 ? "[%s]" : "%s", ucfg->host);
    else
        n = snprintf(u->host_hdr, sizeof u->host_hdr, v6 ? "[%s]:%u" : "%s:%u", ucfg->host,
                     (unsigned)ucfg->port);
    if (n < 0 || (size_t)n >= sizeof u->host_hdr) {
        free(u);
        return WE_INVALID;
    }
    snprintf(u->port_str, sizeof u->port_str, "%u", (unsigned)ucfg->port);
    uv_timer_init(loop, &u->defer_timer);
    u->defer_timer.data = u;
    *out = u;
    return 0;
}

static void on_upstream_closed(uv_handle_t *h)
{
    free(h->data);
}

void upstream_destroy(upstream_t *u)
{
    if (!u)
        return;
    u->destroying = true;
    /* Requests should all be finished; any left over are dropped without callbacks. */
    while (u->wait_head) {
        upreq_t *r = u->wait_head;
        LOG_WARN("upstream %s: destroyed with a request still waiting", u->ucfg->name);
        unqueue(r);
        free_req(r);
    }
    while (u->defer_head) {
        upreq_t *r = u->defer_head;
        unqueue(r);
        free_req(r);
    }
    while (u->conns) {
        upconn_t *uc = u->conns;
        upreq_t *r = detach(uc);
        if (r) {
            LOG_WARN("upstream %s: destroyed with a request in flight", u->ucfg->name);
            free_req(r);
        }
        close_conn(uc);
    }
    if (u->dns) {
        u->dns->u = NULL;
        (void)uv_cancel((uv_req_t *)&u->dns->req);
        u->dns = NULL;
    }
    uv_close((uv_handle_t *)&u->defer_timer, on_upstream_closed);
}

const config_upstream_t *upstream_config(const upstream_t *u)
{
    return u->ucfg;
}

static bool valid_token(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || s[i] == '-'))
            return false;
    return true;
}

/* No control characters and no spaces: nothing that could split the request line. */
static bool valid_path(const char *s)
{
    if (s[0] != '/')
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f)
            return false;
    return true;
}

/* "Name: value" with no CR or LF (which would inject headers). */
static bool valid_header_line(const char *s)
{
    const char *colon = strchr(s, ':');
    if (!colon || colon == s)
        return false;
    return strpbrk(s, "\r\n") == NULL;
}

int upreq_start(upreq_t **out, upstream_t *u, const char *method, const char *path,
                const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg)
{
    int rc;
    upreq_t *r = NULL;
    if (u->ucfg->tls)
        return WE_TLS; /* TLS upstreams arrive with issue 3 */
    if (u->destroying || !cbs || !cbs->on_headers || !cbs->on_body || !cbs->on_done)
        return -EINVAL;
    if (!valid_token(method, 16) || !valid_path(path))
        return WE_INVALID;
    if (u->nwait >= UP_MAX_QUEUE)
        return -EAGAIN;

    static const char ua[] = "User-Agent: " UP_USER_AGENT "\r\n";
    static const char keep[] = "Connection: keep-alive\r\n";
    size_t need = strlen(method) + 1 + strlen(path) + sizeof " HTTP/1.1\r\n" - 1;
    size_t line = need - 2;
    need += sizeof "Host: \r\n" - 1 + strlen(u->host_hdr) + sizeof ua - 1 + sizeof keep - 1 + 2;
    for (const char *const *h = extra_headers; h && *h; h++) {
        if (!valid_header_line(*h))
            return WE_INVALID;
        need += strlen(*h) + 2;
        if (need > UP_MAX_HEAD)
            return WE_TOOBIG;
    }
    if (need > UP_MAX_HEAD)
        return WE_TOOBIG;

    r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->head = malloc(need + 1);
    if (!r->head) {
        rc = -ENOMEM;
        goto fail;
    }
    int n = snprintf(r->head, need + 1, "%s %s HTTP/1.1\r\nHost: %s\r\n%s%s", method, path,
                     u->host_hdr, ua, keep);
    size_t len = (size_t)n;
    for (const char *const *h = extra_headers; h && *h; h++) {
        size_t k = strlen(*h);
        memcpy(r->head + len, *h, k);
        memcpy(r->head + len + k, "\r\n", 2);
        len += k + 2;
    }
    memcpy(r->head + len, "\r\n", 2);
    len += 2;
    r->head[len] = '\0';
    r->head_len = len;
    r->line_len = line;
    r->u = u;
    r->cbs = cbs;
    r->arg = arg;
    r->is_head = strcmp(method, "HEAD") == 0;
    r->idempotent = r->is_head || strcmp(method, "GET") == 0;
    r->clen = UINT64_MAX;
    llhttp_init(&r->parser, HTTP_RESPONSE, &parser_settings);
    r->parser.data = r;
    enqueue_wait(r, false);
    *out = r;
    /* The loop's clock is stale when the caller spent time since the last poll; timeouts
     * armed now should count from now. */
    uv_update_time(u->loop);
    dispatch(u);
    return 0;
fail:
    if (r)
        free_req(r);
    return rc;
}

void upreq_pause(upreq_t *r)
{
    if (r->paused || r->cancelled)
        return;
    r->paused = true;
    if (r->where == Q_DEFER && r->defer_resume) {
        unqueue(r);
        r->defer_resume = false;
    }
    upconn_t *uc = r->uc;
    if (!uc || uc->state != UC_ACTIVE)
        return;
    if (r->headers_done)
        uv_timer_stop(&uc->timer);
    /* Inside a callback the parser stops on HPE_PAUSED and reading stops after it returns. */
    if (!r->in_parser)
        conn_read_stop(&uc->conn);
}

void upreq_resume(upreq_t *r)
{
    if (!r->paused || r->cancelled)
        return;
    r->paused = false;
    upconn_t *uc = r->uc;
    if (!uc || uc->state != UC_ACTIVE)
        return; /* not sent yet: send_request starts reading */
    if (r->in_parser) {
        /* Resumed in the same callback that paused: the parser simply goes on. */
        if (r->headers_done && !r->complete)
            arm_idle_body(r);
        return;
    }
    if (r->where == Q_DEFER)
        return;
    r->defer_resume = true;
    q_push_back(&r->u->defer_head, &r->u->defer_tail, r);
    r->where = Q_DEFER;
    uv_timer_start(&r->u->defer_timer, on_defer, 0, 0);
}

void upreq_cancel(upreq_t *r)
{
    if (r->cancelled)
        return;
    r->cancelled = true;
    if (r->in_parser)
        return; /* torn down when llhttp returns (after_execute) */
    cancel_now(r);
}

const char *upreq_header_next(const upreq_t *r, const char *name, const char *prev)
{
    if (!r->hdr)
        return NULL;
    const char *p = prev ? prev + strlen(prev) + 1 : r->hdr;
    const char *end = r->hdr + r->hdone;
    if (p < r->hdr || p > end)
        return NULL;
    while (p < end) {
        const char *n = p;
        const char *v = n + strlen(n) + 1;
        if (v >= end)
            break;
        if (strcasecmp(n, name) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

const char *upreq_header(const upreq_t *r, const char *name)
{
    return upreq_header_next(r, name, NULL);
}

uint64_t upreq_content_length(const upreq_t *r)
{
    return r->clen;
}
