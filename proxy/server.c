/* The HTTP/1.1 server side: listeners, client connections and request heads (llhttp). Who is
 * let in is server_admit.c; the request accessors and the response primitives are
 * server_resp.c (server_internal.h has the map).
 *
 * A client connection cycles through IDLE (waiting for a request) -> HEAD (bytes of a request
 * head arrived) -> HANDLING (the application answers; reading is stopped, which is the
 * backpressure and keeps pipelined bytes in the read buffer) -> IDLE again, or CLOSING. The
 * struct of a connection doubles as its current request (req_t is embedded in it): a request is
 * valid from on_request to on_complete.
 *
 * Timers: a connection's first request head must be whole within header_timeout_ms of accept
 * (a connection that sends nothing is closed then, so idle sockets cannot hold the slots);
 * later heads within header_timeout_ms of their first byte; between requests a connection may
 * idle for idle_timeout_ms; a send that stalls that long closes it too.
 *
 * CONNECT and Upgrade: llhttp parses them as requests after which the bytes are another
 * protocol. winch never switches protocols: the request is answered like any other (405 for
 * CONNECT, the normal answer for a GET that asks to upgrade) with Connection: close, and
 * nothing after it is parsed.
 */
#include "proxy/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "proxy/conn.h"
#include "proxy/server_internal.h"

static const llhttp_settings_t *parser_settings(void);
static void client_next(client_t *c);
static void on_client_read(conn_t *conn, ssize_t n, const char *data);

/* ---- Timers ---------------------------------------------------------------------------- */

static void on_client_timer(uv_timer_t *t)
{
    client_t *c = container_of(t, client_t, timer);
    LOG_DEBUG("req=%llu client %s timed out in state %d", (unsigned long long)c->id, c->peer_str,
              c->state);
    client_close(c);
}

void client_arm_timer(client_t *c, uint32_t ms)
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
    buf_clear(&c->url);
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
    if (c->url_too_long)
        return 0;
    int rc = buf_append(&c->url, at, n);
    if (rc == WE_TOOBIG)
        c->url_too_long = true; /* answered 414 once the head is whole */
    else if (rc < 0)
        return -1;
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
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
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
    c->keep_alive = c->keep_alive && llhttp_should_keep_alive(p) && !p->upgrade;
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
    c->served = true;
    uv_timer_stop(&c->timer);
    c->start_ms = time_mono_ms();
    c->id = ++s->next_id;
    c->head_begun = false;
    c->body_sent = 0;
    c->status = 0;
    if (c->url_too_long && !c->bad)
        c->bad = 414;
    if (!c->bad && !admit_request(c))
        c->bad = 503;
    if (c->bad)
        c->keep_alive = false;
    c->rq = calloc(1, s->data_size + HEAD_MAX);
    if (!c->rq) {
        admit_request_done(c);
        client_close(c);
        return;
    }
    c->handed = true;
    s->on_request(&c->req, s->arg);
}

/* The request ended: tell the application once, then drop what only the request needed. */
static void complete(client_t *c, enum req_outcome outcome)
{
    if (!c->handed)
        return;
    c->handed = false;
    c->srv->on_complete(&c->req, c->srv->arg, outcome);
    admit_request_done(c);
    free(c->rq);
    c->rq = NULL;
    c->hb = (sbuf_t){0};
}

/* Parses from data; hands a complete request over (or a malformed one, to be answered). */
static void parse_input(client_t *c, const char *data, size_t n)
{
    if (c->state == CS_IDLE) {
        admit_idle_remove(c);
        c->state = CS_HEAD;
        /* A connection's first head keeps the timer armed at accept. */
        if (c->served)
            client_arm_timer(c, c->srv->limits.header_timeout_ms);
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, data, n);
    if (e == HPE_OK)
        return; /* need more bytes */
    if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        c->rest = pos;
        c->rest_len = (size_t)(data + n - pos);
        if (c->parser.upgrade) {
            /* What follows CONNECT or an upgrade is another protocol: never parsed. */
            c->keep_alive = false;
            c->rest_len = 0;
        }
        conn_read_stop(&c->conn);
        hand_over(c);
        return;
    }
    /* Malformed request (or a TLS hello on the plain port): answered once, then closed. The
     * method and target are unknown, so the head parsed so far is dropped. */
    conn_read_stop(&c->conn);
    if (!c->bad)
        c->bad = 400;
    /* A TLS record of type handshake (0x16) as a connection's first byte: a client trying TLS
     * (skopeo and podman probe https first). */
    c->tls_hello = !c->tls && !c->served && n > 0 && (unsigned char)data[0] == 0x16;
    c->keep_alive = false;
    c->rest_len = 0;
    buf_clear(&c->url);
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
    /* Nothing buffered: between requests a connection holds only its socket and this struct. */
    buf_free(&c->url);
    buf_free(&c->hdrs);
    conn_release_buffers(&c->conn);
    client_arm_timer(c, c->srv->limits.idle_timeout_ms);
    admit_idle_add(c);
    conn_read_start(&c->conn, on_client_read);
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

/* ---- Connection lifecycle -------------------------------------------------------------- */

static void client_free_if_closed(client_t *c)
{
    if (--c->handles_open > 0)
        return;
    buf_free(&c->url);
    buf_free(&c->hdrs);
    free(c);
}

static void on_conn_closed(conn_t *conn)
{
    client_free_if_closed(container_of(conn, client_t, conn));
}

static void on_timer_closed(uv_handle_t *h)
{
    client_free_if_closed(container_of((uv_timer_t *)h, client_t, timer));
}

void client_close(client_t *c)
{
    if (c->state == CS_CLOSING)
        return;
    c->state = CS_CLOSING;
    /* The application cancels what it still does for the request before anything is freed. */
    complete(c, REQ_GONE);
    resp_release(c);
    server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nclients--;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    conn_close(&c->conn, on_conn_closed); /* the fd is closed now */
    admit_release(c);
}

static void peer_to_str(const struct sockaddr_storage *ss, char *out, size_t len)
{
    const void *a = ss->ss_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
    if (!inet_ntop(ss->ss_family, a, out, (socklen_t)len))
        snprintf(out, len, "-");
}

client_t *client_accept(server_t *s, int fd, const struct sockaddr_storage *addr, peer_t *peer,
                        SSL_CTX *tls)
{
    client_t *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->srv = s;
    c->file_fd = -1;
    c->state = CS_IDLE;
    c->tls = tls != NULL;
    c->peer_addr = *addr;
    peer_to_str(addr, c->peer_str, sizeof c->peer_str);
    buf_init(&c->url, URL_MAX);
    /* Twice the head bound: the separators between names and values are not counted. */
    buf_init(&c->hdrs, 2 * (size_t)s->limits.max_header_bytes + 64);
    int rc = tls ? conn_init_tls_server(&c->conn, s->loop, fd, CLIENT_RBUF, tls)
                 : conn_init(&c->conn, s->loop, fd, CLIENT_RBUF);
    if (rc < 0) {
        close(fd);
        free(c);
        return NULL;
    }
    uv_timer_init(s->loop, &c->timer);
    c->handles_open = 2;
    llhttp_init(&c->parser, HTTP_REQUEST, parser_settings());
    c->parser.data = c;
    c->peer = peer;
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    s->nclients++;
    client_arm_timer(c, s->limits.header_timeout_ms);
    admit_idle_add(c);
    conn_read_start(&c->conn, on_client_read);
    return c;
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
    /* The response head follows the application's storage in one block: keep it aligned. */
    s->data_size = (o->data_size + sizeof(max_align_t) - 1) / sizeof(max_align_t) *
                   sizeof(max_align_t);
    for (int i = 0; i < MAX_LISTENERS; i++)
        s->listen_fd[i] = -1;
    admit_init(s);
    *out = s;
    return 0;
}

void server_set_limits(server_t *s, const server_limits_t *l)
{
    s->limits = *l;
    admit_plan(s);
}

uint32_t server_connections(const server_t *s)
{
    return s->nclients;
}

void server_plan(const server_t *s, server_plan_t *out)
{
    *out = s->plan;
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
    if (s->paused == PAUSE_NONE)
        admit_poll_listeners(s, true);
    return li;
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
    admit_poll_listeners(s, false);
    for (int i = 0; i < s->nlisteners; i++) {
        if (s->listen_fd[i] < 0)
            continue;
        uv_close((uv_handle_t *)&s->listen_poll[i], NULL);
        close(s->listen_fd[i]);
        s->listen_fd[i] = -1;
    }
    admit_shutdown(s);
    while (s->clients)
        client_close(s->clients);
}

void server_destroy(server_t *s)
{
    if (!s)
        return;
    admit_free(s);
    free(s);
}
