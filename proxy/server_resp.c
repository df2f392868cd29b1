/* The request accessors and the response primitives of server.h, over the connection of
 * server_internal.h. A response head is built in the request's own block (c->rq), which
 * exists from hand_over to completion only. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/sbuf.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "proxy/conn.h"
#include "proxy/http.h"
#include "proxy/server.h"
#include "proxy/server_internal.h"

/* Large files go out in slices so the stall timer can be re-armed between them. */
#define FILE_SLICE ((uint64_t)16 << 20)

/* ---- The request ----------------------------------------------------------------------- */

uint64_t req_id(const req_t *r)
{
    return client_of(r)->id;
}

/* The request line parsed (a 414's or a 503's method is known; a 400's or a 431's is not). */
static bool method_known(const client_t *c)
{
    return c->bad != 400 && c->bad != 431;
}

const char *req_method(const req_t *r)
{
    const client_t *c = client_of(r);
    if (!method_known(c))
        return "-";
    return llhttp_method_name((llhttp_method_t)c->parser.method);
}

bool req_is_head(const req_t *r)
{
    const client_t *c = client_of(r);
    return method_known(c) && c->parser.method == HTTP_HEAD;
}

bool req_is_get(const req_t *r)
{
    const client_t *c = client_of(r);
    return method_known(c) && c->parser.method == HTTP_GET;
}

const char *req_target(const req_t *r)
{
    const client_t *c = client_of(r);
    return c->url.p ? c->url.p : ""; /* a 414's: the first bytes */
}

size_t req_target_len(const req_t *r)
{
    const client_t *c = client_of(r);
    return c->url.p ? c->url.len : 0;
}

int req_bad(const req_t *r)
{
    return client_of(r)->bad;
}

const char *req_header_next(const req_t *r, const char *name, const char *prev)
{
    const client_t *c = client_of(r);
    const char *p = c->hdrs.p;
    if (!p)
        return NULL;
    const char *end = p + c->hdrs.len;
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
    return &client_of(r)->peer_addr;
}

const char *req_peer_str(const req_t *r)
{
    return client_of(r)->peer_str;
}

bool req_is_tls(const req_t *r)
{
    return client_of(r)->tls;
}

int req_tls_peer_name(const req_t *r, char *buf, size_t len)
{
    const client_t *c = client_of(r);
    return c->tls ? conn_tls_peer_name(&c->conn, buf, len) : WE_NOTFOUND;
}

int req_listener(const req_t *r)
{
    return client_of(r)->listener;
}

bool req_tls_hello(const req_t *r)
{
    return client_of(r)->tls_hello;
}

void *req_data(req_t *r)
{
    return client_of(r)->rq;
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

/* The response head's memory: after the application's storage in the request's block. */
static char *head_mem(client_t *c)
{
    return (char *)c->rq + c->srv->data_size;
}

void resp_begin(req_t *r, int status)
{
    client_t *c = client_of(r);
    c->status = status;
    c->head_begun = true;
    sbuf_init(&c->hb, head_mem(c), HEAD_MAX);
    sbuf_printf(&c->hb, "HTTP/1.1 %d %s\r\n", status, http_reason(status));
}

void resp_begin_reason(req_t *r, int status, const char *reason)
{
    client_t *c = client_of(r);
    c->status = status;
    c->head_begun = true;
    sbuf_init(&c->hb, head_mem(c), HEAD_MAX);
    sbuf_printf(&c->hb, "HTTP/1.1 %d ", status);
    size_t n = 0;
    for (const char *p = reason; *p && n < RESP_REASON_MAX; p++, n++) {
        char ch = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
        sbuf_add(&c->hb, &ch, 1);
    }
    sbuf_add(&c->hb, "\r\n", 2);
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
        sbuf_init(&c->hb, head_mem(c), HEAD_MAX);
        sbuf_puts(&c->hb, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n");
    }
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

static void close_file(client_t *c)
{
    if (c->file_fd >= 0)
        close(c->file_fd);
    c->file_fd = -1;
}

void resp_release(client_t *c)
{
    release_body(c);
    close_file(c);
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
    client_arm_timer(c, c->srv->limits.idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, n, on_send_done);
    if (err < 0) {
        release_body(c);
        client_close(c);
    }
}

static void send_file_slice(client_t *c);

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
    client_arm_timer(c, c->srv->limits.idle_timeout_ms);
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
    client_arm_timer(c, c->srv->limits.idle_timeout_ms);
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
    client_arm_timer(c, c->srv->limits.idle_timeout_ms);
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
    client_arm_timer(c, c->srv->limits.idle_timeout_ms);
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
    client_arm_timer(c, c->srv->limits.idle_timeout_ms);
    int err = conn_write(&c->conn, c->bufs, 1, on_stream_io);
    if (err < 0) {
        c->io_cb = NULL;
        client_close(c);
    }
}
