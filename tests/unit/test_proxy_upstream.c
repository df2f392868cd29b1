/* upstream: the HTTP/1.1 client, against a scripted server on 127.0.0.1 (threads and blocking
 * sockets, so the server never depends on the loop under test). The request path tells the
 * server what to do. */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "unit/check.h"

static uv_loop_t *loop;

/* ---- Body pattern: byte i of every test body. ---- */

static unsigned char pat(uint64_t i)
{
    uint64_t x = i * 0x9E3779B97F4A7C15ull;
    return (unsigned char)(x >> 56 ^ x >> 29 ^ i);
}

/* ---- The scripted server. ---- */

static int srv_fd;
static uint16_t srv_port;
static atomic_int srv_accepts;
static atomic_int srv_active, srv_max_active;
static atomic_int srv_closed; /* connections the server saw closed by the client */
static atomic_int srv_stop;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

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

/* Reads one request head; returns 0 and fills method/path, or -1 on EOF. */
static int read_request(int fd, char *method, char *path, char *head, size_t cap)
{
    size_t n = 0;
    while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
        if (n + 1 >= cap)
            return -1;
        ssize_t k = recv(fd, head + n, 1, 0); /* byte at a time: never eat the next request */
        if (k <= 0)
            return -1;
        n += (size_t)k;
    }
    head[n] = '\0';
    if (sscanf(head, "%15s %255s", method, path) != 2)
        return -1;
    return 0;
}

/* Sends len bytes of the pattern (from offset 0) in pieces of 1..maxpiece bytes, chunked or
 * not, pausing now and then so the client sees many small reads. */
static int send_pattern(int fd, uint64_t len, bool chunked, size_t maxpiece, unsigned seed,
                        int sleep_every)
{
    static __thread unsigned char buf[65536];
    uint64_t off = 0;
    unsigned s = seed;
    int writes = 0;
    while (off < len) {
        s = s * 1103515245u + 12345u;
        size_t piece = 1 + (s >> 8) % maxpiece;
        if (piece > len - off)
            piece = (size_t)(len - off);
        for (size_t i = 0; i < piece; i++)
            buf[i] = pat(off + i);
        if (chunked) {
            char hdr[32];
            snprintf(hdr, sizeof hdr, "%zx\r\n", piece);
            if (write_str(fd, hdr) < 0)
                return -1;
        }
        if (write_all(fd, buf, piece) < 0)
            return -1;
        if (chunked && write_str(fd, "\r\n") < 0)
            return -1;
        off += piece;
        if (++writes % sleep_every == 0)
            sleep_ms(1);
    }
    if (chunked && write_str(fd, "0\r\nX-Trailer: t\r\n\r\n") < 0)
        return -1;
    return 0;
}

static void *serve_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char method[16], path[256], head[8192];
    int nreq = 0;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int act = atomic_fetch_add(&srv_active, 1) + 1;
    int prev = atomic_load(&srv_max_active);
    while (act > prev && !atomic_compare_exchange_weak(&srv_max_active, &prev, act))
        ;
    for (;;) {
        if (read_request(fd, method, path, head, sizeof head) < 0) {
            atomic_fetch_add(&srv_closed, 1);
            break;
        }
        nreq++;
        unsigned long n = 0;
        bool head_req = strcmp(method, "HEAD") == 0;
        char resp[512];
        if (sscanf(path, "/cl/%lu", &n) == 1) {
            snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Length: %lu\r\n\r\n", n);
            if (write_str(fd, resp) < 0 || (!head_req && send_pattern(fd, n, false, 4096, 1, 64)))
                break;
        } else if (sscanf(path, "/chunked/%lu", &n) == 1) {
            if (write_str(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") < 0 ||
                send_pattern(fd, n, true, 4096, 2, 64) < 0)
                break;
        } else if (sscanf(path, "/trickle/%lu", &n) == 1) {
            /* Tiny writes with pauses: the client sees many small reads. */
            snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Length: %lu\r\n\r\n", n);
            if (write_str(fd, resp) < 0 || send_pattern(fd, n, false, 512, 3, 4) < 0)
                break;
        } else if (sscanf(path, "/slow/%lu", &n) == 1) {
            sleep_ms((int)n);
            if (write_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") < 0)
                break;
        } else if (strcmp(path, "/head") == 0) {
            /* HEAD: the length of the body a GET would get, and no body. */
            if (write_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n"
                              "Docker-Content-Digest: sha256:abc\r\n\r\n") < 0)
                break;
        } else if (strcmp(path, "/multi") == 0) {
            if (write_str(fd, "HTTP/1.1 401 Unauthorized\r\n"
                              "WWW-Authenticate: Bearer realm=\"a\"\r\n"
                              "X-Pad:   padded value \t \r\n"
                              "Www-Authenticate: Basic realm=\"b\"\r\n"
                              "X-Empty:\r\n"
                              "www-authenticate:  third\r\n"
                              "Content-Length: 0\r\n\r\n") < 0)
                break;
        } else if (strcmp(path, "/silent") == 0) {
            /* Never answer; wait for the client to give up. */
            char c;
            while (recv(fd, &c, 1, 0) > 0)
                ;
            atomic_fetch_add(&srv_closed, 1);
            break;
        } else if (strcmp(path, "/stall") == 0 || strcmp(path, "/short") == 0) {
            if (write_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789") < 0)
                break;
            if (strcmp(path, "/short") == 0)
                break; /* close mid-body */
            char c;
            while (recv(fd, &c, 1, 0) > 0)
                ;
            atomic_fetch_add(&srv_closed, 1);
            break;
        } else if (strcmp(path, "/pausestall") == 0) {
            /* Half the body, a pause longer than the idle timeout, then the rest. */
            if (write_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789") < 0)
                break;
            sleep_ms(700);
            if (write_str(fd, "abcdefghij") < 0)
                break;
        } else if (strcmp(path, "/hugehdr") == 0) {
            char big[4096];
            memset(big, 'a', sizeof big - 1);
            big[sizeof big - 1] = '\0';
            if (write_str(fd, "HTTP/1.1 200 OK\r\nX-Big: ") < 0 || write_str(fd, big) < 0 ||
                write_str(fd, "\r\nContent-Length: 0\r\n\r\n") < 0)
                break;
        } else if (strcmp(path, "/stale") == 0) {
            /* Answer the first request of a connection; on the second, hang up without a
             * word, like a server whose keep-alive timer fired as the request arrived. */
            if (nreq > 1)
                break;
            if (write_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale") < 0)
                break;
        } else if (strcmp(path, "/drop") == 0) {
            /* Keep-alive by the headers, then the server closes the idle connection. */
            if (write_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndrop") < 0)
                break;
            sleep_ms(20);
            break;
        } else if (strcmp(path, "/close") == 0) {
            write_str(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
            break;
        } else if (strcmp(path, "/eofbody") == 0) {
            /* No length: the body ends when the connection closes. */
            write_str(fd, "HTTP/1.1 200 OK\r\n\r\nuntil-eof");
            break;
        } else if (strcmp(path, "/continue") == 0) {
            /* An interim response first; the client must skip it. */
            if (write_str(fd, "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
                              "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal") < 0)
                break;
        } else if (strcmp(path, "/garbage") == 0) {
            write_str(fd, "HTTP/1.1 2x0 Nope\r\n\r\n");
            break;
        } else if (strncmp(path, "/echo", 5) == 0) {
            /* The request head comes back as the body: lets the test see what was sent. */
            snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n",
                     strlen(head));
            if (write_str(fd, resp) < 0 || write_str(fd, head) < 0)
                break;
        } else {
            write_str(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    }
    atomic_fetch_sub(&srv_active, 1);
    close(fd);
    return NULL;
}

static void *serve(void *arg)
{
    (void)arg;
    while (!atomic_load(&srv_stop)) {
        int fd = accept(srv_fd, NULL, NULL);
        if (fd < 0)
            continue;
        if (atomic_load(&srv_stop)) {
            close(fd);
            break;
        }
        atomic_fetch_add(&srv_accepts, 1);
        pthread_t t;
        CHECK_INT(pthread_create(&t, NULL, serve_conn, (void *)(intptr_t)fd), 0);
        pthread_detach(t);
    }
    return NULL;
}

static pthread_t srv_thread;

static void server_start(void)
{
    struct sockaddr_in a;
    srv_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(srv_fd >= 0);
    int one = 1;
    setsockopt(srv_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_INT(bind(srv_fd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_INT(listen(srv_fd, 64), 0);
    socklen_t sl = sizeof a;
    CHECK_INT(getsockname(srv_fd, (struct sockaddr *)&a, &sl), 0);
    srv_port = ntohs(a.sin_port);
    CHECK_INT(pthread_create(&srv_thread, NULL, serve, NULL), 0);
}

static void server_stop(void)
{
    atomic_store(&srv_stop, 1);
    /* Wake the accept. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(srv_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(fd, (struct sockaddr *)&a, sizeof a);
    pthread_join(srv_thread, NULL);
    close(fd);
    close(srv_fd);
}

/* ---- Client side. ---- */

static config_t gcfg;
static config_upstream_t ucfg;
static char host_buf[64], name_buf[64];

static void config_defaults(void)
{
    memset(&gcfg, 0, sizeof gcfg);
    gcfg.upstream_connect_timeout_ms = 2000;
    gcfg.upstream_response_timeout_ms = 5000;
    gcfg.upstream_idle_timeout_ms = 5000;
    gcfg.upstream_keepalive_ms = 30000;
    gcfg.upstream_max_conns = 8;
    gcfg.max_header_bytes = 32768;
    memset(&ucfg, 0, sizeof ucfg);
    snprintf(host_buf, sizeof host_buf, "127.0.0.1");
    snprintf(name_buf, sizeof name_buf, "127.0.0.1:%u", (unsigned)srv_port);
    ucfg.name = name_buf;
    ucfg.host = host_buf;
    ucfg.port = srv_port;
    ucfg.base_path = (char *)"";
}

typedef struct res {
    int status;
    int headers_calls;
    bool done;
    int done_status;
    uint64_t clen;
    uint64_t body_len;
    uint64_t mismatches; /* body bytes that differ from the pattern */
    int body_calls;
    char text[256]; /* first bytes of the body, NUL-terminated */
    /* Flow control tests. */
    bool pause_each;
    bool pause_resume_inline;
    const char *held;
    size_t held_len;
    uv_timer_t rt; /* resumes a paused request */
    bool rt_init;
    int resumes;
    upreq_t *req;
    bool cancel_in_headers;
    bool cancel_in_body;
    bool check_multi;
    bool check_no_trailer;
} res_t;

static void check_body(res_t *s, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] != pat(s->body_len + i))
            s->mismatches++;
    for (size_t i = 0; i < len && s->body_len + i < sizeof s->text - 1; i++)
        s->text[s->body_len + i] = data[i];
    s->body_len += len;
}

static void on_resume_timer(uv_timer_t *t)
{
    res_t *s = t->data;
    /* The held pointer must still hold exactly what on_body was given, however long ago. */
    check_body(s, s->held, s->held_len);
    s->held = NULL;
    s->resumes++;
    upreq_resume(s->req);
}

static void cb_headers(upreq_t *r, void *arg, int status)
{
    res_t *s = arg;
    s->status = status;
    s->headers_calls++;
    s->clen = upreq_content_length(r);
    if (s->check_multi) {
        const char *v = upreq_header(r, "www-authenticate");
        CHECK_STR(v, "Bearer realm=\"a\"");
        v = upreq_header_next(r, "WWW-AUTHENTICATE", v);
        CHECK_STR(v, "Basic realm=\"b\"");
        v = upreq_header_next(r, "WWW-Authenticate", v);
        CHECK_STR(v, "third");
        CHECK(upreq_header_next(r, "WWW-Authenticate", v) == NULL);
        CHECK_STR(upreq_header(r, "x-pad"), "padded value");
        CHECK_STR(upreq_header(r, "X-Empty"), "");
        CHECK_STR(upreq_header(r, "content-length"), "0");
        CHECK(upreq_header(r, "X-Absent") == NULL);
    }
    if (s->cancel_in_headers)
        upreq_cancel(r);
}

static void cb_body(upreq_t *r, void *arg, const char *data, size_t len)
{
    res_t *s = arg;
    s->body_calls++;
    CHECK(!s->done);
    CHECK(s->held == NULL); /* never a body call while paused */
    if (s->cancel_in_body) {
        check_body(s, data, len);
        upreq_cancel(r);
        return;
    }
    if (s->pause_each) {
        upreq_pause(r);
        s->held = data;
        s->held_len = len;
        if (!s->rt_init) {
            uv_timer_init(loop, &s->rt);
            s->rt.data = s;
            s->rt_init = true;
        }
        /* Mostly the next iteration; now and then 2 ms, so the server fills the socket and a
         * conn that kept reading would overwrite the held bytes. */
        uv_timer_start(&s->rt, on_resume_timer, s->body_calls % 97 == 0 ? 2 : 0, 0);
        return;
    }
    if (s->pause_resume_inline) {
        upreq_pause(r);
        upreq_resume(r);
    }
    check_body(s, data, len);
}

static void cb_done(upreq_t *r, void *arg, int status)
{
    res_t *s = arg;
    CHECK(!s->done);
    if (s->check_no_trailer) {
        /* Headers stay readable during on_done; trailers never join them. */
        CHECK(upreq_header(r, "Transfer-Encoding") != NULL);
        CHECK(upreq_header(r, "X-Trailer") == NULL);
    }
    s->done = true;
    s->done_status = status;
}

static const upreq_cbs_t cbs = {cb_headers, cb_body, cb_done};

static void run_until_done(res_t *s, int n)
{
    for (;;) {
        int k = 0;
        for (int i = 0; i < n; i++)
            k += s[i].done;
        if (k == n)
            break;
        uv_run(loop, UV_RUN_ONCE);
    }
}

static upstream_t *make_upstream(void)
{
    upstream_t *u;
    CHECK_INT(upstream_create(&u, loop, &ucfg, &gcfg), 0);
    CHECK(upstream_config(u) == &ucfg);
    return u;
}

static void destroy_upstream(upstream_t *u)
{
    upstream_destroy(u);
    for (int i = 0; i < 5; i++)
        uv_run(loop, UV_RUN_NOWAIT);
}

static void get(upstream_t *u, const char *method, const char *path, res_t *s)
{
    CHECK_INT(upreq_start(&s->req, u, method, path, NULL, &cbs, s), 0);
    CHECK(!s->done && s->headers_calls == 0); /* nothing fires inside upreq_start */
    run_until_done(s, 1);
}

static double mono_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}

/* ---- Tests. ---- */

static void test_content_length_and_keepalive(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    int a0 = atomic_load(&srv_accepts);
    res_t s1 = {0}, s2 = {0};
    get(u, "GET", "/cl/100000", &s1);
    CHECK_INT(s1.done_status, 0);
    CHECK_INT(s1.status, 200);
    CHECK_INT(s1.clen, 100000);
    CHECK_INT(s1.body_len, 100000);
    CHECK_INT(s1.mismatches, 0);
    get(u, "GET", "/cl/7", &s2);
    CHECK_INT(s2.done_status, 0);
    CHECK_INT(s2.body_len, 7);
    /* Two sequential requests, one connection. */
    CHECK_INT(atomic_load(&srv_accepts) - a0, 1);
    destroy_upstream(u);
}

static void test_chunked(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    res_t s = {.check_no_trailer = true};
    get(u, "GET", "/chunked/300000", &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK(s.clen == UINT64_MAX);
    CHECK_INT(s.body_len, 300000);
    CHECK_INT(s.mismatches, 0);
    destroy_upstream(u);
}

static void test_head(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    int a0 = atomic_load(&srv_accepts);
    res_t s = {0}, s2 = {0};
    get(u, "HEAD", "/head", &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.clen, 12345);
    CHECK_INT(s.body_calls, 0);
    /* HEAD via /cl: the server sends no body; the client must not wait for one. */
    get(u, "HEAD", "/cl/5000", &s2);
    CHECK_INT(s2.done_status, 0);
    CHECK_INT(s2.clen, 5000);
    CHECK_INT(s2.body_calls, 0);
    CHECK_INT(atomic_load(&srv_accepts) - a0, 1);
    destroy_upstream(u);
}

static void test_multi_headers_and_request_head(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    res_t s = {.check_multi = true};
    get(u, "GET", "/multi", &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 401);

    res_t e = {0};
    const char *hdrs[] = {"Authorization: Bearer secret", "Accept: a/b", NULL};
    CHECK_INT(upreq_start(&e.req, u, "GET", "/echo?x=1", hdrs, &cbs, &e), 0);
    run_until_done(&e, 1);
    CHECK_INT(e.done_status, 0);
    char expect[256];
    snprintf(expect, sizeof expect,
             "GET /echo?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nUser-Agent: winch/0.1\r\n"
             "Connection: keep-alive\r\nAuthorization: Bearer secret\r\nAccept: a/b\r\n\r\n",
             (unsigned)srv_port);
    CHECK_STR(e.text, expect);

    /* Header injection and oversized request heads are refused before anything is sent. */
    upreq_t *r;
    const char *bad[] = {"X: a\r\nY: b", NULL};
    CHECK_INT(upreq_start(&r, u, "GET", "/x", bad, &cbs, &e), WE_INVALID);
    CHECK_INT(upreq_start(&r, u, "GET", "/x y", NULL, &cbs, &e), WE_INVALID);
    static char huge[20000];
    memset(huge, 'h', sizeof huge - 1);
    memcpy(huge, "X-H: ", 5);
    const char *big[] = {huge, NULL};
    CHECK_INT(upreq_start(&r, u, "GET", "/x", big, &cbs, &e), WE_TOOBIG);
    destroy_upstream(u);
}

static void test_pool_limit(void)
{
    config_defaults();
    gcfg.upstream_max_conns = 2;
    upstream_t *u = make_upstream();
    int a0 = atomic_load(&srv_accepts);
    atomic_store(&srv_max_active, 0);
    res_t s[6];
    memset(s, 0, sizeof s);
    for (int i = 0; i < 6; i++)
        CHECK_INT(upreq_start(&s[i].req, u, "GET", "/slow/50", NULL, &cbs, &s[i]), 0);
    double t0 = mono_ms();
    run_until_done(s, 6);
    double dt = mono_ms() - t0;
    for (int i = 0; i < 6; i++) {
        CHECK_INT(s[i].done_status, 0);
        CHECK_STR(s[i].text, "ok");
    }
    /* Six 50 ms requests through two connections: three rounds. */
    CHECK_INT(atomic_load(&srv_accepts) - a0, 2);
    CHECK(atomic_load(&srv_max_active) <= 2);
    CHECK(dt >= 140);
    printf("pool: 6 requests over 2 connections in %.0f ms\n", dt);
    destroy_upstream(u);
}

static void test_queue_bound(void)
{
    config_defaults();
    gcfg.upstream_max_conns = 1;
    gcfg.upstream_response_timeout_ms = 100000;
    upstream_t *u = make_upstream();
    enum { N = 4097 };
    static res_t s[N];
    memset(s, 0, sizeof s);
    /* The first one takes the only connection; 4096 wait; the next is refused. */
    for (int i = 0; i < N; i++)
        CHECK_INT(upreq_start(&s[i].req, u, "GET", "/silent", NULL, &cbs, &s[i]), 0);
    upreq_t *r;
    CHECK_INT(upreq_start(&r, u, "GET", "/silent", NULL, &cbs, &s[0]), -EAGAIN);
    /* Cancelling frees them without callbacks, and makes room again. */
    for (int i = N - 1; i >= 0; i--)
        upreq_cancel(s[i].req);
    for (int i = 0; i < 5; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    for (int i = 0; i < N; i++)
        CHECK(!s[i].done && s[i].headers_calls == 0);
    destroy_upstream(u);
}

static void test_connect_refused(void)
{
    config_defaults();
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_INT(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t sl = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &sl);
    close(fd); /* a port nobody listens on */
    ucfg.port = ntohs(a.sin_port);
    upstream_t *u = make_upstream();
    res_t s = {0};
    get(u, "GET", "/cl/1", &s);
    CHECK_INT(s.done_status, -ECONNREFUSED);
    CHECK_INT(s.headers_calls, 0);
    destroy_upstream(u);
}

static void test_connect_timeout(void)
{
    /* A listener whose accept queue is full drops new SYNs: the connect hangs. */
    config_defaults();
    gcfg.upstream_connect_timeout_ms = 300;
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_INT(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_INT(listen(lfd, 0), 0);
    socklen_t sl = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &sl);
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    sleep_ms(50);
    ucfg.port = ntohs(a.sin_port);
    upstream_t *u = make_upstream();
    res_t s = {0};
    double t0 = mono_ms();
    get(u, "GET", "/cl/1", &s);
    double dt = mono_ms() - t0;
    printf("connect timeout: configured 300 ms, got %s after %.0f ms\n", err_str(s.done_status),
           dt);
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK(dt >= 290 && dt < 1000);
    destroy_upstream(u);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
}

static void test_interim_response(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    res_t s = {0};
    get(u, "GET", "/continue", &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.headers_calls, 1);
    CHECK_STR(s.text, "real");
    destroy_upstream(u);
}

static void test_localhost_resolves(void)
{
    /* "localhost" goes through getaddrinfo (/etc/hosts); if it yields ::1 first, the client
     * must fall through to 127.0.0.1, where the server listens. */
    config_defaults();
    snprintf(host_buf, sizeof host_buf, "localhost");
    upstream_t *u = make_upstream();
    res_t s = {0};
    get(u, "GET", "/cl/10", &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.body_len, 10);
    destroy_upstream(u);
}

static void test_response_timeout(void)
{
    config_defaults();
    gcfg.upstream_response_timeout_ms = 300;
    upstream_t *u = make_upstream();
    res_t s = {0};
    double t0 = mono_ms();
    get(u, "GET", "/silent", &s);
    double dt = mono_ms() - t0;
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK_INT(s.headers_calls, 0);
    printf("response timeout: configured 300 ms, fired after %.0f ms\n", dt);
    CHECK(dt >= 290 && dt < 1000);
    destroy_upstream(u);
}

static void test_idle_timeout(void)
{
    config_defaults();
    gcfg.upstream_idle_timeout_ms = 300;
    upstream_t *u = make_upstream();
    res_t s = {0};
    double t0 = mono_ms();
    get(u, "GET", "/stall", &s);
    double dt = mono_ms() - t0;
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.body_len, 10);
    CHECK(dt >= 290 && dt < 1000);

    /* The idle clock stops while the caller holds the body: a 700 ms server pause hidden
     * behind a 1000 ms caller pause does not trip a 300 ms idle timeout... */
    res_t p = {0};
    CHECK_INT(upreq_start(&p.req, u, "GET", "/pausestall", NULL, &cbs, &p), 0);
    while (p.body_calls == 0)
        uv_run(loop, UV_RUN_ONCE);
    /* cb_body ran without pausing; pause now, from outside any callback. */
    upreq_pause(p.req);
    double t1 = mono_ms();
    while (mono_ms() - t1 < 1000)
        uv_run(loop, UV_RUN_NOWAIT);
    CHECK(!p.done);
    upreq_resume(p.req);
    run_until_done(&p, 1);
    CHECK_INT(p.done_status, 0);
    CHECK_INT(p.body_len, 20);
    destroy_upstream(u);
}

static void test_premature_eof(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    res_t s = {0};
    get(u, "GET", "/short", &s);
    CHECK_INT(s.done_status, WE_SHORT);
    CHECK_INT(s.body_len, 10);

    /* A close-delimited body is complete at EOF. */
    res_t e = {0};
    get(u, "GET", "/eofbody", &e);
    CHECK_INT(e.done_status, 0);
    CHECK_STR(e.text, "until-eof");

    /* Connection: close is honoured (the next request opens a new connection). */
    int a0 = atomic_load(&srv_accepts);
    res_t c1 = {0}, c2 = {0};
    get(u, "GET", "/close", &c1);
    get(u, "GET", "/close", &c2);
    CHECK_INT(c1.done_status, 0);
    CHECK_INT(c2.done_status, 0);
    CHECK_INT(atomic_load(&srv_accepts) - a0, 2);

    res_t g = {0};
    get(u, "GET", "/garbage", &g);
    CHECK_INT(g.done_status, WE_PROTO);
    destroy_upstream(u);
}

static void test_oversize_headers(void)
{
    config_defaults();
    gcfg.max_header_bytes = 1024;
    upstream_t *u = make_upstream();
    res_t s = {0};
    get(u, "GET", "/hugehdr", &s);
    CHECK_INT(s.done_status, WE_TOOBIG);
    CHECK_INT(s.headers_calls, 0);
    destroy_upstream(u);
}

static void test_pause_resume(void)
{
    /* Three 10 MiB bodies (two chunked) and one trickled in tiny writes, at once on four
     * connections, every on_body paused and resumed later from a timer. */
    static const char *const paths[4] = {"/cl/10485760", "/chunked/10485760", "/chunked/10485761",
                                         "/trickle/300000"};
    static const uint64_t lens[4] = {10485760, 10485760, 10485761, 300000};
    static const int min_calls[4] = {80, 2000, 2000, 40};
    config_defaults();
    upstream_t *u = make_upstream();
    res_t s[4];
    memset(s, 0, sizeof s);
    double t0 = mono_ms();
    for (int i = 0; i < 4; i++) {
        s[i].pause_each = true;
        CHECK_INT(upreq_start(&s[i].req, u, "GET", paths[i], NULL, &cbs, &s[i]), 0);
    }
    run_until_done(s, 4);
    double dt = mono_ms() - t0;
    for (int i = 0; i < 4; i++) {
        CHECK_INT(s[i].done_status, 0);
        CHECK_INT(s[i].body_len, lens[i]);
        CHECK_INT(s[i].mismatches, 0);
        CHECK_INT(s[i].resumes, s[i].body_calls);
        printf("pause/resume %s: %d body calls, each paused and resumed from a timer\n", paths[i],
               s[i].body_calls);
        CHECK(s[i].body_calls >= min_calls[i]);
        uv_close((uv_handle_t *)&s[i].rt, NULL);
    }
    printf("pause/resume: 4 bodies in %.0f ms\n", dt);
    destroy_upstream(u);

    /* Pause and resume inside the same on_body: the parser simply goes on. */
    u = make_upstream();
    res_t in = {.pause_resume_inline = true};
    get(u, "GET", "/chunked/1000000", &in);
    CHECK_INT(in.done_status, 0);
    CHECK_INT(in.body_len, 1000000);
    CHECK_INT(in.mismatches, 0);
    destroy_upstream(u);
}

static void test_cancel(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    int closed0 = atomic_load(&srv_closed);
    res_t h = {.cancel_in_headers = true};
    CHECK_INT(upreq_start(&h.req, u, "GET", "/cl/100000", NULL, &cbs, &h), 0);
    while (h.headers_calls == 0)
        uv_run(loop, UV_RUN_ONCE);
    res_t b = {.cancel_in_body = true};
    CHECK_INT(upreq_start(&b.req, u, "GET", "/chunked/100000", NULL, &cbs, &b), 0);
    while (b.body_calls == 0)
        uv_run(loop, UV_RUN_ONCE);
    /* Cancel from outside a callback, mid-wait. */
    res_t w = {0};
    CHECK_INT(upreq_start(&w.req, u, "GET", "/silent", NULL, &cbs, &w), 0);
    for (int i = 0; i < 20; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    upreq_cancel(w.req);
    double t0 = mono_ms();
    while (mono_ms() - t0 < 200)
        uv_run(loop, UV_RUN_NOWAIT);
    CHECK(!h.done && !b.done && !w.done);
    CHECK_INT(h.body_calls, 0);
    CHECK_INT(b.body_calls, 1);
    /* The cancelled requests' connections were closed, not pooled: the silent server saw it. */
    CHECK(atomic_load(&srv_closed) - closed0 >= 1);
    destroy_upstream(u);
}

static void test_stale_retry(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    int a0 = atomic_load(&srv_accepts);
    res_t s1 = {0}, s2 = {0};
    get(u, "GET", "/stale", &s1);
    CHECK_INT(s1.done_status, 0);
    /* The pooled connection is reused; the server hangs up on the request; the client retries
     * once on a fresh connection, invisibly. */
    get(u, "GET", "/stale", &s2);
    CHECK_INT(s2.done_status, 0);
    CHECK_STR(s2.text, "stale");
    CHECK_INT(atomic_load(&srv_accepts) - a0, 2);
    /* POST is not retried. */
    res_t s3 = {0};
    get(u, "POST", "/stale", &s3);
    CHECK_INT(s3.done_status, UV_EOF);
    destroy_upstream(u);
}

static void test_idle_close_by_server(void)
{
    /* A pooled connection the server closes while idle leaves the pool at once, and the next
     * request opens a new one without any error. */
    config_defaults();
    upstream_t *u = make_upstream();
    int a0 = atomic_load(&srv_accepts);
    res_t d1 = {0}, d2 = {0};
    get(u, "GET", "/drop", &d1);
    double t0 = mono_ms();
    while (mono_ms() - t0 < 100)
        uv_run(loop, UV_RUN_NOWAIT);
    get(u, "GET", "/drop", &d2);
    CHECK_INT(d1.done_status, 0);
    CHECK_INT(d2.done_status, 0);
    CHECK_STR(d2.text, "drop");
    CHECK_INT(atomic_load(&srv_accepts) - a0, 2);
    destroy_upstream(u);
}

static void test_tls_handshake_timeout(void)
{
    /* An https upstream whose server accepts (the kernel does) but never answers the
     * ClientHello: the connect timeout covers the handshake. (TLS upstreams proper are tested
     * in test_proxy_tls.) */
    config_defaults();
    gcfg.upstream_connect_timeout_ms = 300;
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_INT(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_INT(listen(fd, 8), 0);
    socklen_t sl = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &sl);
    ucfg.port = ntohs(a.sin_port);
    ucfg.tls = true;
    upstream_t *u = make_upstream();
    res_t s = {0};
    get(u, "GET", "/x", &s);
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK_INT(s.headers_calls, 0);
    destroy_upstream(u);
    close(fd);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getenv("WINCH_TEST_DEBUG"))
        log_set_level(WLOG_DEBUG);
    loop = uv_default_loop();
    server_start();
    test_content_length_and_keepalive();
    test_chunked();
    test_head();
    test_multi_headers_and_request_head();
    test_pool_limit();
    test_queue_bound();
    test_connect_refused();
    test_connect_timeout();
    test_interim_response();
    test_localhost_resolves();
    test_response_timeout();
    test_idle_timeout();
    test_premature_eof();
    test_oversize_headers();
    test_pause_resume();
    test_cancel();
    test_stale_retry();
    test_idle_close_by_server();
    test_tls_handshake_timeout();
    server_stop();
    CHECK_INT(uv_loop_close(loop), 0);
    printf("test_proxy_upstream: ok\n");
    return 0;
}
