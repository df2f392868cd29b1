#define _GNU_SOURCE /* accept4 */
#include "fake_upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "testutil.h"

#define FU_MAX_ROUTES 64

typedef struct route {
    char pattern[256];
    bool prefix;
    fu_handler_fn fn; /* NULL: resp */
    void *arg;
    fu_response_t resp;
} route_t;

typedef struct fu_conn {
    fake_upstream_t *f;
    int fd; /* -1 once closed (under f->mu) */
    int id;
    pthread_t thread;
} fu_conn_t;

struct fake_upstream {
    int lfd;
    uint16_t port;
    pthread_t accept_thread;
    volatile int stop; /* read under mu or as a hint */
    pthread_mutex_t mu;
    route_t *routes[FU_MAX_ROUTES];
    int nroutes;
    fu_conn_t **conns;
    int nconns, capconns;
    fu_request_t **log;
    int nlog, caplog;
    int accepts, closed, open, max_open;
    int send_failures;   /* responses cut short by the client (a send failed) */
    uint64_t body_bytes; /* body bytes written, every response */
};

unsigned char fu_pattern(uint64_t i)
{
    uint64_t x = i * 0x9E3779B97F4A7C15ull;
    return (unsigned char)(x >> 56 ^ x >> 29 ^ i);
}

static bool stopping(fake_upstream_t *f)
{
    pthread_mutex_lock(&f->mu);
    bool s = f->stop;
    pthread_mutex_unlock(&f->mu);
    return s;
}

bool fu_sleep(fake_upstream_t *f, int ms)
{
    for (int left = ms; left > 0; left -= 5) {
        if (stopping(f))
            return false;
        test_sleep_ms(left < 5 ? left : 5);
    }
    return !stopping(f);
}

/* ---- Sending. ---- */

static int write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

static int write_str(int fd, const char *s)
{
    return write_all(fd, s, strlen(s));
}

static uint64_t body_size(const fu_response_t *r)
{
    if (r->pattern_len)
        return r->pattern_len;
    if (!r->body)
        return 0;
    return r->body_len ? r->body_len : strlen(r->body);
}

static int send_head(int fd, const fu_response_t *r)
{
    char line[128];
    snprintf(line, sizeof line, "HTTP/1.1 %d X\r\n", r->status);
    if (write_str(fd, line) < 0 || (r->headers && write_str(fd, r->headers) < 0))
        return -1;
    if (r->chunked)
        snprintf(line, sizeof line, "Transfer-Encoding: chunked\r\n\r\n");
    else if (r->no_length)
        snprintf(line, sizeof line, "\r\n");
    else
        snprintf(line, sizeof line, "Content-Length: %llu\r\n\r\n",
                 (unsigned long long)body_size(r));
    return write_str(fd, line);
}

/* The size of the next piece at off. */
static size_t next_piece(const fu_response_t *r, unsigned *seed, uint64_t off, uint64_t total)
{
    size_t piece = 65536;
    if (r->piece_max) {
        *seed = *seed * 1103515245u + 12345u;
        piece = 1 + (*seed >> 8) % r->piece_max;
    }
    if (piece > total - off)
        piece = (size_t)(total - off);
    if (r->pause_ms > 0 && off < r->pause_at && off + piece > r->pause_at)
        piece = (size_t)(r->pause_at - off);
    if (r->cut && off + piece > r->cut_at)
        piece = (size_t)(r->cut_at - off);
    return piece;
}

/* Sends the body; returns 1 when it was cut, 0 when whole, -1 on a write error. */
static int send_body(fake_upstream_t *f, int fd, const fu_response_t *r)
{
    static __thread unsigned char buf[65536];
    uint64_t total = body_size(r), off = 0;
    unsigned seed = r->seed;
    int pieces = 0;
    while (off < total) {
        if (r->cut && off >= r->cut_at)
            return 1;
        size_t piece = next_piece(r, &seed, off, total);
        for (size_t i = 0; i < piece; i++)
            buf[i] = r->pattern_len ? fu_pattern(off + i) : (unsigned char)r->body[off + i];
        char hdr[32];
        snprintf(hdr, sizeof hdr, "%zx\r\n", piece);
        if ((r->chunked && write_str(fd, hdr) < 0) || write_all(fd, buf, piece) < 0 ||
            (r->chunked && write_str(fd, "\r\n") < 0))
            return -1;
        pthread_mutex_lock(&f->mu);
        f->body_bytes += piece;
        pthread_mutex_unlock(&f->mu);
        off += piece;
        if (r->pause_ms > 0 && off == r->pause_at && !fu_sleep(f, r->pause_ms))
            return -1;
        if (r->sleep_every && ++pieces % r->sleep_every == 0)
            test_sleep_ms(1);
    }
    if (r->chunked &&
        (write_str(fd, "0\r\n") < 0 || (r->trailers && write_str(fd, r->trailers) < 0) ||
         write_str(fd, "\r\n") < 0))
        return -1;
    return 0;
}

/* Sends r for q. Returns 0 to go on with the next request, -1 to end the connection. */
static int respond(fake_upstream_t *f, int fd, const fu_request_t *q, const fu_response_t *r)
{
    if (r->delay_ms && !fu_sleep(f, r->delay_ms))
        return -1;
    if (r->raw) {
        if (write_str(fd, r->raw) < 0)
            return -1;
    } else if (r->status) {
        if (send_head(fd, r) < 0)
            return -1;
        if (strcmp(q->method, "HEAD") != 0 && send_body(f, fd, r) < 0)
            return -1;
    }
    return 0;
}

/* ---- Receiving. ---- */

/* Reads one request head into q; -1 on EOF, an error or a head over FU_MAX_HEAD, -2 when the
 * first byte cannot start a request. */
static int read_request(int fd, fu_request_t *q)
{
    size_t n = 0;
    while (n < 4 || memcmp(q->head + n - 4, "\r\n\r\n", 4) != 0) {
        if (n >= FU_MAX_HEAD)
            return -1;
        ssize_t k = recv(fd, q->head + n, 1, 0); /* byte at a time: never eat the next request */
        if (k <= 0)
            return -1;
        /* Not HTTP (a TLS ClientHello, say): hang up at once rather than wait for a CRLF. */
        if (n == 0 && !(q->head[0] >= 'A' && q->head[0] <= 'Z'))
            return -2;
        n += (size_t)k;
    }
    q->head[n] = '\0';
    const char *sp1 = strchr(q->head, ' ');
    const char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || (size_t)(sp1 - q->head) >= sizeof q->method)
        return -1;
    snprintf(q->method, sizeof q->method, "%.*s", (int)(sp1 - q->head), q->head);
    snprintf(q->target, sizeof q->target, "%.*s", (int)(sp2 - sp1 - 1), sp1 + 1);
    return 0;
}

const char *fu_header(const fu_request_t *q, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *l = strstr(q->head, "\r\n"); l && strncmp(l, "\r\n\r\n", 4) != 0;
         l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (strncasecmp(h, name, nl) != 0 || h[nl] != ':')
            continue;
        const char *v = h + nl + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t k = (size_t)(strstr(v, "\r\n") - v);
        snprintf(out, cap, "%.*s", (int)k, v);
        return out;
    }
    return NULL;
}

static bool matches(const route_t *rt, const char *target)
{
    if (rt->prefix)
        return strncmp(target, rt->pattern, strlen(rt->pattern)) == 0;
    return strcmp(target, rt->pattern) == 0;
}

static void script_for(fake_upstream_t *f, const fu_request_t *q, fu_response_t *resp)
{
    route_t *found = NULL;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < f->nroutes && !found; i++)
        if (matches(f->routes[i], q->target))
            found = f->routes[i];
    pthread_mutex_unlock(&f->mu);
    memset(resp, 0, sizeof *resp);
    if (!found) {
        resp->status = 404;
        resp->body = "no route";
    } else if (found->fn) {
        found->fn(q, resp, found->arg);
    } else {
        *resp = found->resp;
    }
}

static void record(fake_upstream_t *f, const fu_request_t *q)
{
    fu_request_t *copy = malloc(sizeof *copy);
    CHECK(copy != NULL);
    *copy = *q;
    pthread_mutex_lock(&f->mu);
    if (f->nlog == f->caplog) {
        f->caplog = f->caplog ? 2 * f->caplog : 64;
        f->log = realloc(f->log, (size_t)f->caplog * sizeof(fu_request_t *));
        CHECK(f->log != NULL);
    }
    f->log[f->nlog++] = copy;
    pthread_mutex_unlock(&f->mu);
}

static void count_closed(fake_upstream_t *f)
{
    pthread_mutex_lock(&f->mu);
    f->closed++;
    pthread_mutex_unlock(&f->mu);
}

/* After the response: reads until the client closes the connection. */
static void hold(fake_upstream_t *f, int fd)
{
    char c[256];
    while (recv(fd, c, sizeof c, 0) > 0)
        ;
    if (!stopping(f))
        count_closed(f);
}

/* Serves the requests of one connection; returns when it is to be closed. */
static void serve(fu_conn_t *c)
{
    fake_upstream_t *f = c->f;
    fu_request_t *q = malloc(sizeof *q);
    fu_response_t *r = malloc(sizeof *r);
    CHECK(q && r);
    for (int nth = 1;; nth++) {
        memset(q, 0, sizeof *q);
        q->server = f;
        q->conn = c->id;
        q->nth = nth;
        int rc = read_request(c->fd, q);
        if (rc < 0) {
            if (rc == -1 && !stopping(f))
                count_closed(f);
            break;
        }
        record(f, q);
        script_for(f, q, r);
        int sent = respond(f, c->fd, q, r);
        if (sent < 0) {
            if (!stopping(f)) {
                pthread_mutex_lock(&f->mu);
                f->send_failures++;
                pthread_mutex_unlock(&f->mu);
            }
            break;
        }
        if (r->hold) {
            hold(f, c->fd);
            break;
        }
        if (r->close || (!r->raw && !r->status) || r->cut || r->no_length) {
            if (r->close_delay_ms)
                fu_sleep(f, r->close_delay_ms);
            break;
        }
    }
    free(q);
    free(r);
}

static void *conn_main(void *arg)
{
    fu_conn_t *c = arg;
    fake_upstream_t *f = c->f;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    serve(c);
    pthread_mutex_lock(&f->mu);
    close(c->fd);
    c->fd = -1;
    f->open--;
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static void *accept_main(void *arg)
{
    fake_upstream_t *f = arg;
    struct pollfd pf = {.fd = f->lfd, .events = POLLIN};
    while (!stopping(f)) {
        if (poll(&pf, 1, 20) <= 0)
            continue;
        int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        fu_conn_t *c = calloc(1, sizeof *c);
        CHECK(c != NULL);
        c->f = f;
        c->fd = fd;
        pthread_mutex_lock(&f->mu);
        if (f->nconns == f->capconns) {
            f->capconns = f->capconns ? 2 * f->capconns : 16;
            f->conns = realloc(f->conns, (size_t)f->capconns * sizeof(fu_conn_t *));
            CHECK(f->conns != NULL);
        }
        f->conns[f->nconns++] = c;
        c->id = ++f->accepts;
        if (++f->open > f->max_open)
            f->max_open = f->open;
        pthread_mutex_unlock(&f->mu);
        CHECK_INT(pthread_create(&c->thread, NULL, conn_main, c), 0);
    }
    return NULL;
}

/* ---- Setting up. ---- */

fake_upstream_t *fu_start(void)
{
    fake_upstream_t *f = calloc(1, sizeof *f);
    CHECK(f != NULL);
    pthread_mutex_init(&f->mu, NULL);
    f->lfd = test_listen_any(NULL, &f->port);
    CHECK_INT(pthread_create(&f->accept_thread, NULL, accept_main, f), 0);
    return f;
}

void fu_stop(fake_upstream_t *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_mutex_unlock(&f->mu);
    shutdown(f->lfd, SHUT_RDWR); /* wakes the accept thread's poll */
    pthread_join(f->accept_thread, NULL);
    close(f->lfd);
    /* Wake every connection thread: blocked reads and writes fail, sleeps end early. */
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < f->nconns; i++)
        if (f->conns[i]->fd >= 0)
            shutdown(f->conns[i]->fd, SHUT_RDWR);
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < f->nconns; i++) {
        pthread_join(f->conns[i]->thread, NULL);
        free(f->conns[i]);
    }
    free(f->conns);
    for (int i = 0; i < f->nlog; i++)
        free(f->log[i]);
    free(f->log);
    for (int i = 0; i < f->nroutes; i++)
        free(f->routes[i]);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

uint16_t fu_port(const fake_upstream_t *f)
{
    return f->port;
}

static void add_route(fake_upstream_t *f, const char *pattern, fu_handler_fn fn, void *arg,
                      const fu_response_t *resp)
{
    route_t *rt = calloc(1, sizeof *rt);
    CHECK(rt != NULL);
    size_t n = strlen(pattern);
    CHECK(n < sizeof rt->pattern);
    rt->prefix = n > 0 && pattern[n - 1] == '*';
    snprintf(rt->pattern, sizeof rt->pattern, "%.*s", (int)(rt->prefix ? n - 1 : n), pattern);
    rt->fn = fn;
    rt->arg = arg;
    if (resp)
        rt->resp = *resp;
    pthread_mutex_lock(&f->mu);
    CHECK(f->nroutes < FU_MAX_ROUTES);
    f->routes[f->nroutes++] = rt;
    pthread_mutex_unlock(&f->mu);
}

void fu_route(fake_upstream_t *f, const char *pattern, const fu_response_t *resp)
{
    add_route(f, pattern, NULL, NULL, resp);
}

void fu_route_fn(fake_upstream_t *f, const char *pattern, fu_handler_fn fn, void *arg)
{
    add_route(f, pattern, fn, arg, NULL);
}

/* ---- Looking back. ---- */

static bool has_prefix(const fu_request_t *q, const char *prefix)
{
    return !prefix || strncmp(q->target, prefix, strlen(prefix)) == 0;
}

bool fu_target_num(const char *target, const char *prefix, unsigned long long *out)
{
    size_t n = strlen(prefix);
    if (strncmp(target, prefix, n) != 0 || target[n] < '0' || target[n] > '9')
        return false;
    errno = 0;
    *out = strtoull(target + n, NULL, 10);
    return errno == 0;
}

int fu_count(fake_upstream_t *f, const char *prefix)
{
    int n = 0;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < f->nlog; i++)
        n += has_prefix(f->log[i], prefix);
    pthread_mutex_unlock(&f->mu);
    return n;
}

bool fu_nth(fake_upstream_t *f, const char *prefix, int i, fu_request_t *out)
{
    bool ok = false;
    pthread_mutex_lock(&f->mu);
    for (int k = 0; k < f->nlog && !ok; k++) {
        if (has_prefix(f->log[k], prefix) && i-- == 0) {
            *out = *f->log[k];
            ok = true;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return ok;
}

static int read_counter(fake_upstream_t *f, const int *p)
{
    pthread_mutex_lock(&f->mu);
    int v = *p;
    pthread_mutex_unlock(&f->mu);
    return v;
}

int fu_accepts(fake_upstream_t *f)
{
    return read_counter(f, &f->accepts);
}

int fu_closed(fake_upstream_t *f)
{
    return read_counter(f, &f->closed);
}

int fu_max_open(fake_upstream_t *f)
{
    return read_counter(f, &f->max_open);
}

int fu_send_failures(fake_upstream_t *f)
{
    return read_counter(f, &f->send_failures);
}

uint64_t fu_body_bytes(fake_upstream_t *f)
{
    pthread_mutex_lock(&f->mu);
    uint64_t v = f->body_bytes;
    pthread_mutex_unlock(&f->mu);
    return v;
}

uint16_t fu_unused_port(void)
{
    uint16_t port;
    int fd = test_listen_any(NULL, &port);
    close(fd);
    return port;
}
