/* The HTTP/1.1 server side: listener, client connections, request heads (llhttp), and the
 * response primitives declared in server.h.
 *
 * A client connection cycles through IDLE (waiting for a request) -> HEAD (bytes of a request
 * head arrived) -> HANDLING (the handler answers; reading is stopped, which is the
 * backpressure and keeps pipelined bytes in the read buffer) -> IDLE again, or CLOSING. Request
 * bodies are never read: a pull-only registry has no use for them, so a request that announces
 * one gets its answer with "Connection: close".
 */
#include "proxy/server.h"

#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/sbuf.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "policy/policy.h"
#include "proxy/conn.h"
#include "proxy/handlers.h"
#include "proxy/tls.h"

#define CLIENT_RBUF 16384
#define URL_MAX 4096
#define VALUE_MAX 4096
#define FIELD_MAX 32
#define HEAD_MAX 2048
#define ERRBODY_MAX 1024
/* Large files go out in slices so the stall timer can be re-armed between them. */
#define FILE_SLICE ((uint64_t)16 << 20)
#define ACCEPTS_PER_WAKEUP 64

enum client_state { CS_IDLE, CS_HEAD, CS_HANDLING, CS_CLOSING };

typedef struct client {
    conn_t conn;
    server_t *srv;
    struct client *prev, *next;
    llhttp_t parser;
    uv_timer_t timer;
    int handles_open; /* conn + timer; freed when both closed */
    enum client_state state;
    bool keep_alive;
    bool has_body; /* the request announced a body: answer, then close */
    bool head_too_big;
    bool malformed; /* the head did not parse: method and target are unknown */
    uint64_t head_bytes;

    /* Request head being parsed. */
    char url[URL_MAX + 1];
    size_t url_len;
    bool url_too_long;
    char field[FIELD_MAX + 1];
    size_t field_len;
    char value[VALUE_MAX + 1];
    size_t value_len;
    bool value_too_long;

    /* Bytes after the current request in the read buffer (pipelining). */
    const char *rest;
    size_t rest_len;

    /* Response. */
    char head[HEAD_MAX];
    sbuf_t hb;
    int status;
    bool head_begun;
    uint64_t body_sent;
    char errbody[ERRBODY_MAX];
    char *body;
    bool free_body;
    int file_fd; /* taken file for resp_send_file, or -1 */
    off_t file_off;
    uint64_t file_left;
    req_io_cb io_cb;
    uv_buf_t bufs[2];
    int64_t start_ms;

    req_t req;
} client_t;

struct server {
    uv_loop_t *loop;
    const config_t *cfg;
    cache_t *cache;
    upstream_t *upstreams[CONFIG_MAX_UPSTREAMS];
    /* Listeners: [LIS_PLAIN] HTTP, [LIS_TLS] HTTPS with tls_ctx; fd -1 when not open. */
    int listen_fd[2];
    uv_poll_t listen_poll[2];
    SSL_CTX *tls_ctx;
    bool listening; /* at least one listener is open */
    bool accepting; /* polling the listeners; paused at max_connections */
    bool shutting_down;
    client_t *clients;
    uint32_t nclients;
    uint64_t next_id;
};

enum { LIS_PLAIN, LIS_TLS };

static const llhttp_settings_t *parser_settings(void);
static void client_close(client_t *c);
static void client_next(client_t *c);
static void on_client_read(conn_t *conn, ssize_t n, const char *data);
static void on_listen_ready(uv_poll_t *h, int status, int events);

/* ---- Accessors ------------------------------------------------------------------------- */

static client_t *req_client(req_t *r)
{
    return container_of(r, client_t, req);
}

upstream_t *req_upstream(req_t *r)
{
    server_t *s = r->srv;
    ptrdiff_t i = r->route.upstream - s->cfg->upstreams;
    return s->upstreams[i];
}

const config_t *req_config(req_t *r)
{
    return r->srv->cfg;
}

cache_t *req_cache(req_t *r)
{
    return r->srv->cache;
}

/* ---- Timers ---------------------------------------------------------------------------- */

static void on_client_timer(uv_timer_t *t)
{
    client_t *c = container_of(t, client_t, timer);
    LOG_DEBUG("req=%llu client timed out in state %d", (unsigned long long)c->req.id, c->state);
    client_close(c);
}

static void arm_timer(client_t *c, uint32_t ms)
{
    uv_timer_start(&c->timer, on_client_timer, ms, 0);
}

/* ---- Request head parsing ------------------------------------------------------------- */

static int count_head(client_t *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > c->srv->cfg->max_header_bytes) {
        c->head_too_big = true;
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    client_t *c = p->data;
    c->url_len = 0;
    c->url_too_long = false;
    c->field_len = 0;
    c->value_len = 0;
    c->value_too_long = false;
    c->head_bytes = 0;
    c->head_too_big = false;
    c->malformed = false;
    c->has_body = false;
    memset(&c->req, 0, sizeof c->req);
    c->req.srv = c->srv;
    c->req.cache_status = "-";
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    client_t *c = p->data;
    if (count_head(c, n))
        return -1;
    if (n > URL_MAX - c->url_len) {
        c->url_too_long = true;
        return 0;
    }
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    client_t *c = p->data;
    if (count_head(c, n))
        return -1;
    /* Only short names matter to us; longer ones are kept truncated and never match. */
    size_t room = FIELD_MAX - c->field_len;
    size_t k = n < room ? n : room;
    memcpy(c->field + c->field_len, at, k);
    c->field_len += k;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    client_t *c = p->data;
    if (count_head(c, n))
        return -1;
    if (n > VALUE_MAX - c->value_len) {
        c->value_too_long = true;
        return 0;
    }
    memcpy(c->value + c->value_len, at, n);
    c->value_len += n;
    return 0;
}

static bool parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;
    if (*p < '0' || *p > '9')
        return false;
    while (*p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
    }
    *s = p;
    *out = v;
    return true;
}

/* Range: bytes=first-[last] | bytes=-suffix. Only a single range is supported; anything else
 * is ignored (RFC 9110 lets a server ignore Range), which means a full 200 answer. */
static void parse_range(req_t *r, const char *v)
{
    r->range = REQ_RANGE_BAD;
    while (*v == ' ')
        v++;
    if (strncasecmp(v, "bytes=", 6) != 0)
        return;
    v += 6;
    while (*v == ' ')
        v++;
    if (*v == '-') {
        v++;
        if (!parse_u64(&v, &r->range_last) || r->range_last == 0)
            return;
        r->range_suffix = true;
    } else {
        if (!parse_u64(&v, &r->range_first) || *v != '-')
            return;
        v++;
        if (*v >= '0' && *v <= '9') {
            if (!parse_u64(&v, &r->range_last) || r->range_last < r->range_first)
                return;
        } else {
            r->range_last = UINT64_MAX;
        }
    }
    while (*v == ' ')
        v++;
    if (*v != '\0')
        return; /* a list of ranges: not supported, serve it all */
    r->range = REQ_RANGE_OK;
}

static int on_header_value_complete(llhttp_t *p)
{
    client_t *c = p->data;
    c->field[c->field_len] = '\0';
    c->value[c->value_len] = '\0';
    req_t *r = &c->req;
    if (!c->value_too_long) {
        if (strcasecmp(c->field, "accept") == 0)
            r->accept = oci_accept_parse(r->accept, c->value, c->value_len);
        else if (strcasecmp(c->field, "range") == 0)
            parse_range(r, c->value);
        else if (strcasecmp(c->field, "if-none-match") == 0 &&
                 c->value_len < sizeof r->if_none_match)
            memcpy(r->if_none_match, c->value, c->value_len + 1);
    }
    c->field_len = 0;
    c->value_len = 0;
    c->value_too_long = false;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    client_t *c = p->data;
    c->keep_alive = llhttp_should_keep_alive(p);
    if ((p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0)) {
        /* Answer now and close afterwards: the body is never read. */
        c->has_body = true;
        c->keep_alive = false;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    client_t *c = p->data;
    c->keep_alive = c->keep_alive && llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

static const llhttp_settings_t *parser_settings(void)
{
    static llhttp_settings_t s;
    static bool ready;
    if (!ready) {
        llhttp_settings_init(&s);
        s.on_message_begin = on_message_begin;
        s.on_url = on_url;
        s.on_header_field = on_header_field;
        s.on_header_value = on_header_value;
        s.on_header_value_complete = on_header_value_complete;
        s.on_headers_complete = on_headers_complete;
        s.on_message_complete = on_message_complete;
        ready = true;
    }
    return &s;
}

/* ---- Dispatch -------------------------------------------------------------------------- */

static void dispatch(client_t *c)
{
    req_t *r = &c->req;
    server_t *s = c->srv;
    c->state = CS_HANDLING;
    uv_timer_stop(&c->timer);
    c->start_ms = time_mono_ms();
    r->id = ++s->next_id;
    c->url[c->url_len] = '\0';
    r->target = c->url;
    c->head_begun = false;
    c->body_sent = 0;
    c->status = 0;

    if (c->url_too_long) {
        resp_error(r, 414, OCI_NAME_INVALID, "request target too long", NULL);
        return;
    }
    enum route_method m = c->parser.method == HTTP_GET    ? ROUTE_GET
                          : c->parser.method == HTTP_HEAD ? ROUTE_HEAD
                                                          : ROUTE_OTHER;
    route_error_t rerr;
    if (route_parse(&r->route, s->cfg, m, c->url, c->url_len, &rerr) != 0) {
        resp_error(r, rerr.status, rerr.code, rerr.message, NULL);
        return;
    }
    if (r->route.op != ROUTE_PING && r->route.op != ROUTE_CATALOG) {
        policy_request_t pr = {
            .upstream = r->route.upstream->name,
            .repo = r->route.name,
            .ref = r->route.op == ROUTE_TAGS ? NULL : r->route.ref,
            .ref_is_digest = r->route.ref_is_digest,
        };
        policy_decision_t d = policy_check(s->cfg, &pr);
        if (!d.allow) {
            resp_error(r, 0, OCI_DENIED, d.reason ? d.reason : "denied by policy", NULL);
            return;
        }
    }
    handlers_dispatch(r);
}

/* Parses from data; dispatches a complete request (or answers a malformed one). */
static void parse_input(client_t *c, const char *data, size_t n)
{
    if (c->state == CS_IDLE) {
        c->state = CS_HEAD;
        arm_timer(c, c->srv->cfg->client_header_timeout_ms);
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, data, n);
    if (e == HPE_OK)
        return; /* need more bytes */
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        c->rest = pos;
        c->rest_len = (size_t)(data + n - pos);
        conn_read_stop(&c->conn);
        dispatch(c);
        return;
    }
    /* Malformed request (or a TLS hello on the plain port): answer once, then close. */
    conn_read_stop(&c->conn);
    c->malformed = true;
    c->keep_alive = false;
    c->rest_len = 0;
    c->state = CS_HANDLING;
    uv_timer_stop(&c->timer);
    c->req.id = ++c->srv->next_id;
    c->url[c->url_len] = '\0';
    c->req.target = c->url;
    c->start_ms = time_mono_ms();
    if (c->head_too_big)
        resp_error(&c->req, 431, OCI_UNKNOWN, "request header fields too large", NULL);
    else
        resp_error(&c->req, 400, OCI_UNKNOWN, "malformed HTTP request", NULL);
}

static void on_client_read(conn_t *conn, ssize_t n, const char *data)
{
    client_t *c = container_of(conn, client_t, conn);
    if (n < 0) {
        client_close(c);
        return;
    }
    parse_input(c, data, (size_t)n);
}

/* The response finished: serve the next pipelined request or wait for one. */
static void client_next(client_t *c)
{
    if (!c->keep_alive || c->has_body || c->srv->shutting_down) {
        client_close(c);
        return;
    }
    c->state = CS_IDLE;
    llhttp_resume(&c->parser);
    if (c->rest_len > 0) {
        const char *rest = c->rest;
        size_t len = c->rest_len;
        c->rest_len = 0;
        parse_input(c, rest, len);
        if (c->state != CS_HANDLING && c->state != CS_CLOSING)
            conn_read_start(&c->conn, on_client_read);
        return;
    }
    arm_timer(c, c->srv->cfg->client_idle_timeout_ms);
    conn_read_start(&c->conn, on_client_read);
}

/* ---- Responses ------------------------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

void resp_begin(req_t *r, int status)
{
    client_t *c = req_client(r);
    c->status = status;
    c->head_begun = true;
    sbuf_init(&c->hb, c->head, sizeof c->head);
    sbuf_printf(&c->hb, "HTTP/1.1 %d %s\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
                status, reason_phrase(status));
    if (r->route.ns_given)
        sbuf_printf(&c->hb, "OCI-Namespace: %s\r\n", r->route.ns);
}

bool resp_begun(req_t *r)
{
    return req_client(r)->head_begun;
}

void resp_header(req_t *r, const char *name, const char *fmt, ...)
{
    client_t *c = req_client(r);
    sbuf_puts(&c->hb, name);
    sbuf_add(&c->hb, ": ", 2);
    if (!c->hb.overflow) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(c->hb.p + c->hb.len, c->hb.cap - c->hb.len, fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t)n >= c->hb.cap - c->hb.len)
            c->hb.overflow = true;
        else
            c->hb.len += (size_t)n;
    }
    sbuf_add(&c->hb, "\r\n", 2);
}

/* Completes the head. An overflowing head (a bug: every header we send is bounded) becomes a
 * bare 500 rather than a truncated response. */
static void finish_head(client_t *c, uint64_t length)
{
    sbuf_printf(&c->hb, "Content-Length: %llu\r\n", (unsigned long long)length);
    if (!c->keep_alive || c->has_body)
        sbuf_puts(&c->hb, "Connection: close\r\n");
    sbuf_add(&c->hb, "\r\n", 2);
    if (c->hb.overflow) {
        LOG_ERROR("req=%llu response head overflow", (unsigned long long)c->req.id);
        c->status = 500;
        c->keep_alive = false;
        sbuf_init(&c->hb, c->head, sizeof c->head);
        sbuf_puts(&c->hb, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n");
    }
}

static void log_access(client_t *c)
{
    req_t *r = &c->req;
    const char *m = c->malformed ? "-" : llhttp_method_name((llhttp_method_t)c->parser.method);
    LOG_INFO("req=%llu %s %s %d bytes=%llu cache=%s ms=%lld", (unsigned long long)r->id, m,
             r->target ? r->target : "-", c->status, (unsigned long long)c->body_sent,
             r->cache_status, (long long)(time_mono_ms() - c->start_ms));
}

void req_finish(req_t *r)
{
    client_t *c = req_client(r);
    log_access(c);
    r->cancel = NULL;
    r->op = NULL;
    uv_timer_stop(&c->timer);
    client_next(c);
}

void req_abort(req_t *r)
{
    client_t *c = req_client(r);
    LOG_WARN("req=%llu %s: response cut short after %llu body bytes", (unsigned long long)r->id,
             r->target ? r->target : "-", (unsigned long long)c->body_sent);
    client_close(c);
}

static bool is_head(client_t *c)
{
    return c->parser.method == HTTP_HEAD;
}

static void release_body(client_t *c)
{
    if (c->free_body)
        free(c->body);
    c->body = NULL;
    c->free_body = false;
}

static void on_send_done(conn_t *conn, int status)
{
    client_t *c = container_of(conn, client_t, conn);
    release_body(c);
    if (status < 0) {
        client_close(c);
        return;
    }
    req_finish(&c->req);
}

void resp_send(req_t *r, uint64_t length, char *body, size_t body_len, bool free_body)
{
    client_t *c = req_client(r);
    finish_head(c, length);
    c->body = body;
    c->free_body = free_body;
    int n = 0;
    c->bufs[n++] = uv_buf_init(c->hb.p, (unsigned)c->hb.len);
    if (body_len > 0 && !is_head(c) && c->status != 500) {
        c->bufs[n++] = uv_buf_init(body, (unsigned)body_len);
        c->body_sent = body_len;
    }
    arm_timer(c, c->srv->cfg->client_idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, n, on_send_done);
    if (err < 0) {
        release_body(c);
        client_close(c);
    }
}

void resp_error(req_t *r, int status, enum oci_code code, const char *message,
                const char *detail_json)
{
    client_t *c = req_client(r);
    if (!c->head_begun)
        resp_begin(r, status ? status : oci_status(code));
    resp_header(r, "Content-Type", "application/json; charset=utf-8");
    size_t n = oci_error_json(c->errbody, sizeof c->errbody, code, message, detail_json);
    if (n == 0)
        n = oci_error_json(c->errbody, sizeof c->errbody, code, NULL, NULL);
    if (r->cache_status == NULL || strcmp(r->cache_status, "-") == 0)
        r->cache_status = "error";
    resp_send(r, n, c->errbody, n, false);
}

static void send_file_slice(client_t *c);

static void on_file_slice(conn_t *conn, int status)
{
    client_t *c = container_of(conn, client_t, conn);
    if (status < 0) {
        close(c->file_fd);
        c->file_fd = -1;
        client_close(c);
        return;
    }
    if (c->file_left == 0) {
        close(c->file_fd);
        c->file_fd = -1;
        req_finish(&c->req);
        return;
    }
    send_file_slice(c);
}

static void send_file_slice(client_t *c)
{
    uint64_t n = c->file_left < FILE_SLICE ? c->file_left : FILE_SLICE;
    off_t off = c->file_off;
    c->file_off += (off_t)n;
    c->file_left -= n;
    c->body_sent += n;
    arm_timer(c, c->srv->cfg->client_idle_timeout_ms);
    int err = conn_sendfile(&c->conn, c->file_fd, off, n, on_file_slice);
    if (err < 0) {
        close(c->file_fd);
        c->file_fd = -1;
        client_close(c);
    }
}

static void on_file_head(conn_t *conn, int status)
{
    on_file_slice(conn, status);
}

void resp_send_file(req_t *r, uint64_t length, int fd, off_t off, uint64_t len)
{
    client_t *c = req_client(r);
    finish_head(c, length);
    c->file_fd = fd;
    c->file_off = off;
    c->file_left = (is_head(c) || c->status == 500) ? 0 : len;
    c->bufs[0] = uv_buf_init(c->hb.p, (unsigned)c->hb.len);
    arm_timer(c, c->srv->cfg->client_idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, 1, on_file_head);
    if (err < 0) {
        close(c->file_fd);
        c->file_fd = -1;
        client_close(c);
    }
}

static void on_stream_io(conn_t *conn, int status)
{
    client_t *c = container_of(conn, client_t, conn);
    uv_timer_stop(&c->timer);
    req_io_cb cb = c->io_cb;
    c->io_cb = NULL;
    cb(&c->req, status);
}

void resp_send_head(req_t *r, uint64_t length, req_io_cb cb)
{
    client_t *c = req_client(r);
    finish_head(c, length);
    c->io_cb = cb;
    c->bufs[0] = uv_buf_init(c->hb.p, (unsigned)c->hb.len);
    arm_timer(c, c->srv->cfg->client_idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, 1, on_stream_io);
    if (err < 0) {
        c->io_cb = NULL;
        client_close(c);
    }
}

void resp_send_chunk(req_t *r, int fd, off_t off, uint64_t len, req_io_cb cb)
{
    client_t *c = req_client(r);
    c->io_cb = cb;
    c->body_sent += len;
    arm_timer(c, c->srv->cfg->client_idle_timeout_ms);
    int err = conn_sendfile(&c->conn, fd, off, len, on_stream_io);
    if (err < 0) {
        c->io_cb = NULL;
        client_close(c);
    }
}

/* ---- Connection lifecycle -------------------------------------------------------------- */

static void client_free_if_closed(client_t *c)
{
    if (--c->handles_open > 0)
        return;
    server_t *s = c->srv;
    free(c);
    /* A slot is free again: resume accepting if the limit had paused it. */
    if (s->listening && !s->accepting && !s->shutting_down &&
        s->nclients < s->cfg->max_connections) {
        for (int i = 0; i < 2; i++)
            if (s->listen_fd[i] >= 0)
                uv_poll_start(&s->listen_poll[i], UV_READABLE, on_listen_ready);
        s->accepting = true;
    }
}

static void on_conn_closed(conn_t *conn)
{
    client_free_if_closed(container_of(conn, client_t, conn));
}

static void on_timer_closed(uv_handle_t *h)
{
    client_free_if_closed(container_of((uv_timer_t *)h, client_t, timer));
}

static void client_close(client_t *c)
{
    if (c->state == CS_CLOSING)
        return;
    if (c->state == CS_HANDLING && c->req.cancel) {
        void (*cancel)(req_t *) = c->req.cancel;
        c->req.cancel = NULL;
        cancel(&c->req);
    }
    c->state = CS_CLOSING;
    release_body(c);
    if (c->file_fd >= 0) {
        close(c->file_fd);
        c->file_fd = -1;
    }
    server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nclients--;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    conn_close(&c->conn, on_conn_closed);
}

/* tls: the TLS listener's context, NULL for plain HTTP. */
static void accept_one(server_t *s, int fd, SSL_CTX *tls)
{
    client_t *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->srv = s;
    c->file_fd = -1;
    c->state = CS_IDLE;
    int rc = tls ? conn_init_tls_server(&c->conn, s->loop, fd, CLIENT_RBUF, tls)
                 : conn_init(&c->conn, s->loop, fd, CLIENT_RBUF);
    if (rc < 0) {
        close(fd);
        free(c);
        return;
    }
    uv_timer_init(s->loop, &c->timer);
    c->handles_open = 2;
    llhttp_init(&c->parser, HTTP_REQUEST, parser_settings());
    c->parser.data = c;
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    s->nclients++;
    arm_timer(c, s->cfg->client_idle_timeout_ms);
    conn_read_start(&c->conn, on_client_read);
}

static void on_listen_ready(uv_poll_t *h, int status, int events)
{
    server_t *s = h->data;
    int li = h == &s->listen_poll[LIS_TLS] ? LIS_TLS : LIS_PLAIN;
    (void)events;
    if (status < 0)
        return;
    for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
        if (s->nclients >= s->cfg->max_connections) {
            /* Leave further connections in the kernel's backlog until a slot frees up. */
            for (int k = 0; k < 2; k++)
                if (s->listen_fd[k] >= 0)
                    uv_poll_stop(&s->listen_poll[k]);
            s->accepting = false;
            LOG_WARN("max_connections (%u) reached; pausing accept", s->cfg->max_connections);
            return;
        }
        /* accept4 is a GNU extension; two fcntl calls per connection cost nothing here. */
        int fd = accept(s->listen_fd[li], NULL, NULL);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                LOG_WARN("accept: %s", strerror(errno));
            return;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        accept_one(s, fd, li == LIS_TLS ? s->tls_ctx : NULL);
    }
}

/* ---- Server ---------------------------------------------------------------------------- */

int server_create(server_t **out, uv_loop_t *loop, const config_t *cfg, cache_t *cache)
{
    int err = -ENOMEM;
    server_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->cfg = cfg;
    s->cache = cache;
    s->listen_fd[LIS_PLAIN] = s->listen_fd[LIS_TLS] = -1;
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        err = upstream_create(&s->upstreams[i], loop, &cfg->upstreams[i], cfg);
        if (err < 0)
            goto fail;
    }
    *out = s;
    return 0;
fail:
    for (size_t i = 0; i < cfg->n_upstreams; i++)
        if (s->upstreams[i])
            upstream_destroy(s->upstreams[i]);
    free(s);
    return err;
}

/* Opens listener li on host:port (numeric). */
static int open_listener(server_t *s, int li, const char *host, uint16_t lport, char *bound,
                         size_t len)
{
    const char *shown = host;
    /* The listen address is numeric (or "localhost"): no name lookup at start. */
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", lport);
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        LOG_ERROR("listen address %s: %s", shown, gai_strerror(rc));
        return -EINVAL;
    }
    int err;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = -errno;
        goto fail;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        err = -errno;
        goto fail;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    char hbuf[64], sbuf_[16];
    getnameinfo((struct sockaddr *)&ss, sl, hbuf, sizeof hbuf, sbuf_, sizeof sbuf_,
                NI_NUMERICHOST | NI_NUMERICSERV);
    if (ss.ss_family == AF_INET6)
        snprintf(bound, len, "[%s]:%s", hbuf, sbuf_);
    else
        snprintf(bound, len, "%s:%s", hbuf, sbuf_);
    freeaddrinfo(ai);
    ai = NULL;
    err = uv_poll_init(s->loop, &s->listen_poll[li], fd);
    if (err < 0)
        goto fail;
    s->listen_fd[li] = fd;
    s->listen_poll[li].data = s;
    s->listening = true;
    s->accepting = true;
    uv_poll_start(&s->listen_poll[li], UV_READABLE, on_listen_ready);
    return 0;
fail:
    if (ai)
        freeaddrinfo(ai);
    if (fd >= 0)
        close(fd);
    return err;
}

int server_listen(server_t *s, char *bound, size_t len)
{
    return open_listener(s, LIS_PLAIN, s->cfg->listen_host, s->cfg->listen_port, bound, len);
}

int server_listen_tls(server_t *s, char *bound, size_t len, char *err, size_t errlen)
{
    const config_t *cfg = s->cfg;
    if (err && errlen)
        err[0] = '\0';
    if (!s->tls_ctx) {
        int rc = tls_server_ctx_new(cfg->tls_cert, cfg->tls_key, &s->tls_ctx, err, errlen);
        if (rc < 0)
            return rc;
    }
    int rc = open_listener(s, LIS_TLS, cfg->tls_listen_host, cfg->tls_listen_port, bound, len);
    if (rc < 0 && err && errlen)
        snprintf(err, errlen, "cannot listen on %s:%u: %s", cfg->tls_listen_host,
                 (unsigned)cfg->tls_listen_port, err_str(rc));
    return rc;
}

void server_shutdown(server_t *s)
{
    s->shutting_down = true;
    if (s->listening) {
        for (int i = 0; i < 2; i++) {
            if (s->listen_fd[i] < 0)
                continue;
            uv_poll_stop(&s->listen_poll[i]);
            uv_close((uv_handle_t *)&s->listen_poll[i], NULL);
            close(s->listen_fd[i]);
            s->listen_fd[i] = -1;
        }
        s->listening = false;
    }
    while (s->clients)
        client_close(s->clients);
    handlers_shutdown();
    /* Every request is finished or cancelled now, so the pools can go; their handles close
     * while the loop drains. */
    for (size_t i = 0; i < s->cfg->n_upstreams; i++) {
        if (s->upstreams[i])
            upstream_destroy(s->upstreams[i]);
        s->upstreams[i] = NULL;
    }
}

void server_destroy(server_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->cfg->n_upstreams; i++)
        if (s->upstreams[i])
            upstream_destroy(s->upstreams[i]);
    tls_ctx_free(s->tls_ctx); /* every TLS conn is closed by now */
    free(s);
}
