/* The HTTP/1.1 server side: listeners, client connections, request heads (llhttp), and the
 * response primitives declared in server.h.
 *
 * A client connection cycles through IDLE (waiting for a request) -> HEAD (bytes of a request
 * head arrived) -> HANDLING (the application answers; reading is stopped, which is the
 * backpressure and keeps pipelined bytes in the read buffer) -> IDLE again, or CLOSING. The
 * struct of a connection doubles as its current request (req_t is embedded in it): a request is
 * valid from on_request to on_complete.
 */
#include "proxy/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/sbuf.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "proxy/conn.h"
#include "proxy/http.h"

#define CLIENT_RBUF 16384
#define URL_MAX 4096
#define HEAD_MAX 2048
/* Large files go out in slices so the stall timer can be re-armed between them. */
#define FILE_SLICE ((uint64_t)16 << 20)
#define ACCEPTS_PER_WAKEUP 64
#define MAX_LISTENERS 2

enum client_state { CS_IDLE, CS_HEAD, CS_HANDLING, CS_CLOSING };

struct req {
    char unused; /* the request is its connection: see client_t */
};

typedef struct client {
    conn_t conn;
    server_t *srv;
    struct client *prev, *next;
    llhttp_t parser;
    uv_timer_t timer;
    int handles_open; /* conn + timer; freed when both closed */
    enum client_state state;
    bool tls;
    bool keep_alive;
    bool has_body; /* the request announced a body: answer, then close */
    bool handed;   /* on_request ran and on_complete is still due */
    int bad;       /* req_bad: 0, 400, 414 or 431 */
    uint64_t head_bytes;
    uint64_t id;
    struct sockaddr_storage peer;
    char peer_str[64];

    /* Request head being parsed. */
    char url[URL_MAX + 1];
    size_t url_len;
    bool url_too_long;
    buf_t hdrs; /* "name\0value\0" pairs, bounded by the head limit */

    /* Bytes after the current request in the read buffer (pipelining). */
    const char *rest;
    size_t rest_len;

    /* Response. */
    char head[HEAD_MAX];
    sbuf_t hb;
    int status;
    bool head_begun;
    uint64_t body_sent;
    char *body;
    bool free_body;
    int file_fd; /* taken file for resp_send_file, or -1 */
    off_t file_off;
    uint64_t file_left;
    req_io_cb io_cb;
    uv_buf_t bufs[2];
    int64_t start_ms;

    req_t req;
    max_align_t data[]; /* the application's per-request storage */
} client_t;

struct server {
    uv_loop_t *loop;
    server_limits_t limits;
    void (*on_request)(req_t *r, void *arg);
    void (*on_complete)(req_t *r, void *arg, enum req_outcome outcome);
    void *arg;
    size_t data_size;
    int listen_fd[MAX_LISTENERS]; /* -1 when not open */
    uv_poll_t listen_poll[MAX_LISTENERS];
    SSL_CTX *listen_tls[MAX_LISTENERS];
    int nlisteners;
    bool accepting; /* polling the listeners; paused at max_connections */
    bool shutting_down;
    client_t *clients;
    uint32_t nclients;
    uint64_t next_id;
};

static const llhttp_settings_t *parser_settings(void);
static void client_close(client_t *c);
static void client_next(client_t *c);
static void on_client_read(conn_t *conn, ssize_t n, const char *data);
static void on_listen_ready(uv_poll_t *h, int status, int events);

static client_t *client_of(const req_t *r)
{
    return container_of(r, client_t, req);
}

/* ---- Timers ---------------------------------------------------------------------------- */

static void on_client_timer(uv_timer_t *t)
{
    client_t *c = container_of(t, client_t, timer);
    LOG_DEBUG("req=%llu client timed out in state %d", (unsigned long long)c->id, c->state);
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
    if (c->head_bytes > c->srv->limits.max_header_bytes) {
        c->bad = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    client_t *c = p->data;
    c->url_len = 0;
    c->url_too_long = false;
    c->head_bytes = 0;
    c->bad = 0;
    c->has_body = false;
    buf_clear(&c->hdrs);
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

/* Header names and values go into one buffer as "name\0value\0"; count_head bounds the bytes
 * that arrive and the buffer's own bound (twice that, for the separators) is never reached. */
static int on_header_bytes(llhttp_t *p, const char *at, size_t n)
{
    client_t *c = p->data;
    if (count_head(c, n) || buf_append(&c->hdrs, at, n) < 0)
        return -1;
    return 0;
}

static int on_header_part_complete(llhttp_t *p)
{
    client_t *c = p->data;
    return buf_append(&c->hdrs, "", 1) < 0 ? -1 : 0;
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
        s.on_header_field = on_header_bytes;
        s.on_header_field_complete = on_header_part_complete;
        s.on_header_value = on_header_bytes;
        s.on_header_value_complete = on_header_part_complete;
        s.on_headers_complete = on_headers_complete;
        s.on_message_complete = on_message_complete;
        ready = true;
    }
    return &s;
}

/* ---- Handing requests to the application ----------------------------------------------- */

/* A request head is complete (or broken): the application takes it from here. */
static void hand_over(client_t *c)
{
    server_t *s = c->srv;
    c->state = CS_HANDLING;
    uv_timer_stop(&c->timer);
    c->start_ms = time_mono_ms();
    c->id = ++s->next_id;
    c->url[c->url_len] = '\0';
    c->head_begun = false;
    c->body_sent = 0;
    c->status = 0;
    if (c->url_too_long && !c->bad)
        c->bad = 414;
    if (s->data_size)
        memset(c->data, 0, s->data_size);
    c->handed = true;
    s->on_request(&c->req, s->arg);
}

/* The request ended: tell the application once. */
static void complete(client_t *c, enum req_outcome outcome)
{
    if (!c->handed)
        return;
    c->handed = false;
    c->srv->on_complete(&c->req, c->srv->arg, outcome);
}

/* Parses from data; hands a complete request over (or a malformed one, to be answered). */
static void parse_input(client_t *c, const char *data, size_t n)
{
    if (c->state == CS_IDLE) {
        c->state = CS_HEAD;
        arm_timer(c, c->srv->limits.header_timeout_ms);
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, data, n);
    if (e == HPE_OK)
        return; /* need more bytes */
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        c->rest = pos;
        c->rest_len = (size_t)(data + n - pos);
        conn_read_stop(&c->conn);
        hand_over(c);
        return;
    }
    /* Malformed request (or a TLS hello on the plain port): answered once, then closed. The
     * method and target are unknown, so the head parsed so far is dropped. */
    conn_read_stop(&c->conn);
    if (!c->bad)
        c->bad = 400;
    c->keep_alive = false;
    c->rest_len = 0;
    c->url_len = 0;
    buf_clear(&c->hdrs);
    hand_over(c);
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
    if (!c->keep_alive || c->has_body || c->bad || c->srv->shutting_down) {
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
    arm_timer(c, c->srv->limits.idle_timeout_ms);
    conn_read_start(&c->conn, on_client_read);
}

/* ---- The request ----------------------------------------------------------------------- */

uint64_t req_id(const req_t *r)
{
    return client_of(r)->id;
}

const char *req_method(const req_t *r)
{
    const client_t *c = client_of(r);
    if (c->bad == 400 || c->bad == 431)
        return "-";
    return llhttp_method_name((llhttp_method_t)c->parser.method);
}

bool req_is_head(const req_t *r)
{
    const client_t *c = client_of(r);
    return c->bad == 0 && c->parser.method == HTTP_HEAD;
}

bool req_is_get(const req_t *r)
{
    const client_t *c = client_of(r);
    return c->bad == 0 && c->parser.method == HTTP_GET;
}

const char *req_target(const req_t *r)
{
    return client_of(r)->url;
}

size_t req_target_len(const req_t *r)
{
    return client_of(r)->url_len;
}

int req_bad(const req_t *r)
{
    return client_of(r)->bad;
}

const char *req_header_next(const req_t *r, const char *name, const char *prev)
{
    const client_t *c = client_of(r);
    const char *p = c->hdrs.p, *end = c->hdrs.p + c->hdrs.len;
    if (!p)
        return NULL;
    if (prev)
        p = prev + strlen(prev) + 1; /* past the previous value: at the next name */
    while (p < end) {
        const char *value = p + strlen(p) + 1;
        if (value >= end)
            return NULL; /* a name without its value: the head was cut */
        if (strcasecmp(p, name) == 0)
            return value;
        p = value + strlen(value) + 1;
    }
    return NULL;
}

const char *req_header(const req_t *r, const char *name)
{
    return req_header_next(r, name, NULL);
}

const struct sockaddr_storage *req_peer(const req_t *r)
{
    return &client_of(r)->peer;
}

const char *req_peer_str(const req_t *r)
{
    return client_of(r)->peer_str;
}

bool req_is_tls(const req_t *r)
{
    return client_of(r)->tls;
}

void *req_data(req_t *r)
{
    return client_of(r)->data;
}

int req_status(const req_t *r)
{
    return client_of(r)->status;
}

uint64_t req_bytes_sent(const req_t *r)
{
    return client_of(r)->body_sent;
}

int64_t req_duration_ms(const req_t *r)
{
    return time_mono_ms() - client_of(r)->start_ms;
}

/* ---- Responses ------------------------------------------------------------------------- */

void resp_begin(req_t *r, int status)
{
    client_t *c = client_of(r);
    c->status = status;
    c->head_begun = true;
    sbuf_init(&c->hb, c->head, sizeof c->head);
    sbuf_printf(&c->hb, "HTTP/1.1 %d %s\r\n", status, http_reason(status));
}

bool resp_begun(const req_t *r)
{
    return client_of(r)->head_begun;
}

void resp_header(req_t *r, const char *name, const char *fmt, ...)
{
    client_t *c = client_of(r);
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
    if (!c->keep_alive || c->has_body || c->bad)
        sbuf_puts(&c->hb, "Connection: close\r\n");
    sbuf_add(&c->hb, "\r\n", 2);
    if (c->hb.overflow) {
        LOG_ERROR("req=%llu response head overflow", (unsigned long long)c->id);
        c->status = 500;
        c->keep_alive = false;
        sbuf_init(&c->hb, c->head, sizeof c->head);
        sbuf_puts(&c->hb, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n");
    }
}

void req_finish(req_t *r)
{
    client_t *c = client_of(r);
    uv_timer_stop(&c->timer);
    complete(c, REQ_DONE);
    client_next(c);
}

void req_abort(req_t *r)
{
    client_t *c = client_of(r);
    complete(c, REQ_ABORTED);
    client_close(c);
}

static bool sends_no_body(client_t *c)
{
    return req_is_head(&c->req) || c->status == 500;
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
    client_t *c = client_of(r);
    finish_head(c, length);
    c->body = body;
    c->free_body = free_body;
    int n = 0;
    c->bufs[n++] = uv_buf_init(c->hb.p, (unsigned)c->hb.len);
    if (body_len > 0 && !sends_no_body(c)) {
        c->bufs[n++] = uv_buf_init(body, (unsigned)body_len);
        c->body_sent = body_len;
    }
    arm_timer(c, c->srv->limits.idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, n, on_send_done);
    if (err < 0) {
        release_body(c);
        client_close(c);
    }
}

static void send_file_slice(client_t *c);

static void close_file(client_t *c)
{
    if (c->file_fd >= 0)
        close(c->file_fd);
    c->file_fd = -1;
}

static void on_file_slice(conn_t *conn, int status)
{
    client_t *c = container_of(conn, client_t, conn);
    if (status < 0) {
        close_file(c);
        client_close(c);
        return;
    }
    if (c->file_left == 0) {
        close_file(c);
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
    arm_timer(c, c->srv->limits.idle_timeout_ms);
    int err = conn_sendfile(&c->conn, c->file_fd, off, n, on_file_slice);
    if (err < 0) {
        close_file(c);
        client_close(c);
    }
}

void resp_send_file(req_t *r, uint64_t length, int fd, off_t off, uint64_t len)
{
    client_t *c = client_of(r);
    finish_head(c, length);
    c->file_fd = fd;
    c->file_off = off;
    c->file_left = sends_no_body(c) ? 0 : len;
    c->bufs[0] = uv_buf_init(c->hb.p, (unsigned)c->hb.len);
    arm_timer(c, c->srv->limits.idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, 1, on_file_slice);
    if (err < 0) {
        close_file(c);
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
    client_t *c = client_of(r);
    finish_head(c, length);
    c->io_cb = cb;
    c->bufs[0] = uv_buf_init(c->hb.p, (unsigned)c->hb.len);
    arm_timer(c, c->srv->limits.idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, 1, on_stream_io);
    if (err < 0) {
        c->io_cb = NULL;
        client_close(c);
    }
}

void resp_send_chunk(req_t *r, int fd, off_t off, uint64_t len, req_io_cb cb)
{
    client_t *c = client_of(r);
    c->io_cb = cb;
    c->body_sent += len;
    arm_timer(c, c->srv->limits.idle_timeout_ms);
    int err = conn_sendfile(&c->conn, fd, off, len, on_stream_io);
    if (err < 0) {
        c->io_cb = NULL;
        client_close(c);
    }
}

void resp_send_data(req_t *r, const char *data, size_t len, req_io_cb cb)
{
    client_t *c = client_of(r);
    c->io_cb = cb;
    c->body_sent += len;
    c->bufs[0] = uv_buf_init((char *)data, (unsigned)len);
    arm_timer(c, c->srv->limits.idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, 1, on_stream_io);
    if (err < 0) {
        c->io_cb = NULL;
        client_close(c);
    }
}

/* ---- Connection lifecycle -------------------------------------------------------------- */

static void poll_listeners(server_t *s, bool on)
{
    for (int i = 0; i < s->nlisteners; i++) {
        if (s->listen_fd[i] < 0)
            continue;
        if (on)
            uv_poll_start(&s->listen_poll[i], UV_READABLE, on_listen_ready);
        else
            uv_poll_stop(&s->listen_poll[i]);
    }
    s->accepting = on;
}

static void client_free_if_closed(client_t *c)
{
    if (--c->handles_open > 0)
        return;
    server_t *s = c->srv;
    buf_free(&c->hdrs);
    free(c);
    /* A slot is free again: resume accepting if the limit had paused it. */
    if (s->nlisteners && !s->accepting && !s->shutting_down &&
        s->nclients < s->limits.max_connections)
        poll_listeners(s, true);
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
    c->state = CS_CLOSING;
    /* The application cancels what it still does for the request before anything is freed. */
    complete(c, REQ_GONE);
    release_body(c);
    close_file(c);
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

static void peer_to_str(const struct sockaddr_storage *ss, char *out, size_t len)
{
    const void *a = ss->ss_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
    if (!inet_ntop(ss->ss_family, a, out, (socklen_t)len))
        snprintf(out, len, "-");
}

/* tls: the listener's context, NULL for plain HTTP. */
static void accept_one(server_t *s, int fd, const struct sockaddr_storage *peer, SSL_CTX *tls)
{
    client_t *c = calloc(1, sizeof *c + s->data_size);
    if (!c) {
        close(fd);
        return;
    }
    c->srv = s;
    c->file_fd = -1;
    c->state = CS_IDLE;
    c->tls = tls != NULL;
    c->peer = *peer;
    peer_to_str(peer, c->peer_str, sizeof c->peer_str);
    /* Twice the head bound: the separators between names and values are not counted. */
    buf_init(&c->hdrs, 2 * (size_t)s->limits.max_header_bytes + 64);
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
    arm_timer(c, s->limits.idle_timeout_ms);
    conn_read_start(&c->conn, on_client_read);
}

static void on_listen_ready(uv_poll_t *h, int status, int events)
{
    server_t *s = h->data;
    int li = (int)(h - s->listen_poll);
    (void)events;
    if (status < 0)
        return;
    for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
        if (s->nclients >= s->limits.max_connections) {
            /* Leave further connections in the kernel's backlog until a slot frees up. */
            poll_listeners(s, false);
            LOG_WARN("max_connections (%u) reached; pausing accept", s->limits.max_connections);
            return;
        }
        struct sockaddr_storage peer;
        socklen_t pl = sizeof peer;
        /* accept4 is a GNU extension; two fcntl calls per connection cost nothing here. */
        int fd = accept(s->listen_fd[li], (struct sockaddr *)&peer, &pl);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                LOG_WARN("accept: %s", strerror(errno));
            return;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        accept_one(s, fd, &peer, s->listen_tls[li]);
    }
}

/* ---- Server ---------------------------------------------------------------------------- */

int server_create(server_t **out, const server_opts_t *o)
{
    server_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = o->loop;
    s->limits = o->limits;
    s->on_request = o->on_request;
    s->on_complete = o->on_complete;
    s->arg = o->arg;
    s->data_size = o->data_size;
    for (int i = 0; i < MAX_LISTENERS; i++)
        s->listen_fd[i] = -1;
    *out = s;
    return 0;
}

void server_set_limits(server_t *s, const server_limits_t *l)
{
    s->limits = *l;
}

uint32_t server_connections(const server_t *s)
{
    return s->nclients;
}

int server_listen(server_t *s, const char *host, uint16_t lport, SSL_CTX *tls_ctx, char *bound,
                  size_t len)
{
    if (s->nlisteners == MAX_LISTENERS)
        return -EMFILE;
    int li = s->nlisteners;
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
    s->listen_tls[li] = tls_ctx;
    s->listen_poll[li].data = s;
    s->nlisteners++;
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

void server_shutdown(server_t *s)
{
    s->shutting_down = true;
    for (int i = 0; i < s->nlisteners; i++) {
        if (s->listen_fd[i] < 0)
            continue;
        uv_poll_stop(&s->listen_poll[i]);
        uv_close((uv_handle_t *)&s->listen_poll[i], NULL);
        close(s->listen_fd[i]);
        s->listen_fd[i] = -1;
    }
    s->accepting = false;
    while (s->clients)
        client_close(s->clients);
}

void server_destroy(server_t *s)
{
    free(s);
}
