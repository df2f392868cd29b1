/* proxy/server.c, the generic HTTP/1.1 server, driven by a raw-socket client thread: requests
 * reach on_request with their headers, every request ends in exactly one on_complete,
 * pipelining, malformed heads, limits, and a client that goes away mid-answer. Also the pure
 * HTTP grammar of proxy/http.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include "check.h"
#include "common/util.h"
#include "proxy/http.h"
#include "proxy/server.h"
#include "testutil.h"

/* ---- The application under the server: answers by target ------------------------------- */

typedef struct call {
    uv_timer_t *timer; /* /slow: the answer waits for it */
    int seen;
} call_t;

typedef struct app {
    uv_loop_t *loop;
    server_t *srv;
    atomic_int requests, done, aborted, gone, bad;
    char last_accept[256];
    int accept_lines;
    uint16_t port;
} app_t;

static app_t app;

static void on_slow_timer(uv_timer_t *t)
{
    req_t *r = t->data;
    call_t *c = req_data(r);
    c->timer = NULL;
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    static char body[] = "slow";
    resp_begin(r, 200);
    resp_send(r, 4, body, 4, false);
}

static void on_request(req_t *r, void *arg)
{
    app_t *a = arg;
    call_t *c = req_data(r);
    CHECK_INT(c->seen, 0); /* zeroed for every request */
    c->seen = 1;
    atomic_fetch_add(&a->requests, 1);
    if (req_bad(r)) {
        atomic_fetch_add(&a->bad, 1);
        char *body = strdup("bad");
        resp_begin(r, req_bad(r));
        resp_send(r, 3, body, 3, true);
        return;
    }
    const char *t = req_target(r);
    if (strcmp(t, "/slow") == 0) {
        c->timer = malloc(sizeof *c->timer);
        uv_timer_init(a->loop, c->timer);
        c->timer->data = r;
        uv_timer_start(c->timer, on_slow_timer, 300, 0);
        return;
    }
    if (strcmp(t, "/accept") == 0) {
        a->accept_lines = 0;
        a->last_accept[0] = '\0';
        for (const char *v = req_header(r, "accept"); v; v = req_header_next(r, "ACCEPT", v)) {
            a->accept_lines++;
            snprintf(a->last_accept, sizeof a->last_accept, "%s", v);
        }
    }
    static char body[] = "hello";
    resp_begin(r, 200);
    resp_header(r, "X-Target", "%s", t);
    resp_send(r, 5, body, 5, false);
}

static void on_complete(req_t *r, void *arg, enum req_outcome outcome)
{
    app_t *a = arg;
    call_t *c = req_data(r);
    if (outcome == REQ_DONE)
        atomic_fetch_add(&a->done, 1);
    else if (outcome == REQ_ABORTED)
        atomic_fetch_add(&a->aborted, 1);
    else
        atomic_fetch_add(&a->gone, 1);
    if (c->timer) { /* the client went away before /slow answered */
        CHECK_INT(outcome, REQ_GONE);
        uv_timer_stop(c->timer);
        uv_close((uv_handle_t *)c->timer, (uv_close_cb)free);
        c->timer = NULL;
    }
}

/* ---- The client side: a thread with blocking sockets ------------------------------------ */

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons(app.port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_all(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(fd, s, n);
        CHECK(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Reads until the peer closes or want bytes of responses arrived (want 0: until close). */
static size_t read_some(int fd, char *buf, size_t cap, const char *until)
{
    size_t len = 0;
    while (len < cap - 1) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        if (until && strstr(buf, until))
            break;
    }
    buf[len] = '\0';
    return len;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

typedef void (*scenario_fn)(void);
static scenario_fn scenario;
static atomic_int client_done;

static void *client_thread(void *arg)
{
    (void)arg;
    scenario();
    atomic_store(&client_done, 1);
    return NULL;
}

static void on_poll(uv_timer_t *t)
{
    if (atomic_load(&client_done)) {
        uv_timer_stop(t);
        server_shutdown(app.srv);
        uv_close((uv_handle_t *)t, NULL);
    }
}

/* Starts a server on a fresh loop, runs fn on a client thread, drains, and checks that every
 * request handed to the application completed exactly once. */
static void run(scenario_fn fn, uint32_t max_header_bytes)
{
    memset(&app, 0, sizeof app);
    uv_loop_t loop;
    uv_loop_init(&loop);
    app.loop = &loop;
    server_opts_t o = {.loop = &loop,
                       .limits = {.header_timeout_ms = 2000,
                                  .idle_timeout_ms = 5000,
                                  .max_connections = 64,
                                  .max_header_bytes = max_header_bytes},
                       .on_request = on_request,
                       .on_complete = on_complete,
                       .arg = &app,
                       .data_size = sizeof(call_t)};
    CHECK_INT(server_create(&app.srv, &o), 0);
    char bound[64];
    CHECK_INT(server_listen(app.srv, "127.0.0.1", 0, NULL, bound, sizeof bound), 0);
    app.port = (uint16_t)strtol(strrchr(bound, ':') + 1, NULL, 10);
    scenario = fn;
    atomic_store(&client_done, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, client_thread, NULL) == 0);
    uv_timer_t poll;
    uv_timer_init(&loop, &poll);
    uv_timer_start(&poll, on_poll, 10, 10);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK_INT(server_connections(app.srv), 0);
    server_destroy(app.srv);
    CHECK_INT(uv_loop_close(&loop), 0);
    CHECK_INT(atomic_load(&app.requests),
              atomic_load(&app.done) + atomic_load(&app.aborted) + atomic_load(&app.gone));
}

/* ---- Scenarios ---------------------------------------------------------------------------- */

static void sc_keepalive_and_headers(void)
{
    int fd = dial();
    char buf[4096];
    send_all(fd, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    read_some(fd, buf, sizeof buf, "hello");
    CHECK(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0);
    CHECK(strstr(buf, "X-Target: /a\r\n") != NULL);
    CHECK(strstr(buf, "Content-Length: 5\r\n") != NULL);
    /* Repeated Accept lines, case-insensitive names, one split across writes. */
    send_all(fd, "GET /accept HTTP/1.1\r\nHost: x\r\naccept: a/b\r\nACCEPT: c/d, e/f\r\nAcc");
    test_sleep_ms(50);
    send_all(fd, "ept: g/h\r\n\r\n");
    read_some(fd, buf, sizeof buf, "hello");
    CHECK(strstr(buf, "200 OK") != NULL);
    CHECK_INT(app.accept_lines, 3);
    CHECK_STR(app.last_accept, "g/h");
    close(fd);
}

static void test_keepalive_and_headers(void)
{
    run(sc_keepalive_and_headers, 8192);
    CHECK_INT(app.done, 2);
}

static void sc_pipelined(void)
{
    int fd = dial();
    char buf[8192];
    send_all(fd, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                 "HEAD /3 HTTP/1.1\r\nHost: x\r\n\r\n");
    read_some(fd, buf, sizeof buf, "X-Target: /3\r\n");
    /* In order, and the slow one did not let the third overtake it. */
    const char *a = strstr(buf, "X-Target: /1"), *b = strstr(buf, "slow"),
               *c = strstr(buf, "X-Target: /3");
    CHECK(a && b && c && a < b && b < c);
    close(fd);
}

static void test_pipelined(void)
{
    run(sc_pipelined, 8192);
    CHECK_INT(app.done, 3);
}

/* A malformed request after a good one on a keep-alive connection: the error answer is a head
 * of its own, never the previous response's headers with a new status. */
static void sc_malformed_after_good(void)
{
    int fd = dial();
    char buf[4096];
    send_all(fd, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nBAD\r\n\r\n");
    read_some(fd, buf, sizeof buf, NULL); /* the server closes after the 400 */
    CHECK_INT(count(buf, "HTTP/1.1 "), 2);
    const char *second = strstr(buf + 1, "HTTP/1.1 400 Bad Request\r\n");
    CHECK(second != NULL);
    CHECK(strstr(second, "X-Target") == NULL);
    CHECK(strstr(second, "Content-Length: 3\r\n") != NULL);
    CHECK(strstr(second, "Connection: close\r\n") != NULL);
    close(fd);
}

static void test_malformed_after_good(void)
{
    run(sc_malformed_after_good, 8192);
    CHECK_INT(app.bad, 1);
    CHECK_INT(app.done, 2);
}

/* CONNECT and Upgrade: answered like any request, with Connection: close, and nothing after
 * them is parsed (never a tunnel, never a second head on the same connection). */
static void sc_connect_and_upgrade(void)
{
    static const char *const variants[] = {
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        "GET /after HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        "GET /after HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        "BAD\r\n\r\n",
    };
    static const int responses[] = {1, 1, 2};
    for (size_t i = 0; i < ARRAY_SIZE(variants); i++) {
        int fd = dial();
        char buf[4096];
        send_all(fd, variants[i]);
        read_some(fd, buf, sizeof buf, NULL); /* the server closes after the upgrade's answer */
        CHECK_INT(count(buf, "HTTP/1.1 "), responses[i]);
        CHECK_INT(count(buf, "Content-Length: "), responses[i]);
        CHECK(strstr(buf, "/after") == NULL);
        const char *last = buf;
        for (const char *p = buf; (p = strstr(p, "HTTP/1.1 ")); p++)
            last = p;
        CHECK(strncmp(last, "HTTP/1.1 200 OK\r\n", 17) == 0);
        CHECK(strstr(last, "Connection: close\r\n") != NULL);
        close(fd);
    }
}

static void test_connect_and_upgrade(void)
{
    run(sc_connect_and_upgrade, 8192);
    CHECK_INT(app.done, 4);
    CHECK_INT(app.bad, 0);
}

static void sc_head_too_big(void)
{
    int fd = dial();
    char buf[4096];
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    send_all(fd, "GET /x HTTP/1.1\r\nHost: x\r\nX-Big: ");
    send_all(fd, big);
    send_all(fd, "\r\n\r\n");
    read_some(fd, buf, sizeof buf, NULL);
    CHECK(strncmp(buf, "HTTP/1.1 431 ", 13) == 0);
    close(fd);
}

/* A target over 4096 bytes is 414 when the head is within its bound. */
static void sc_target_too_long(void)
{
    char buf[4096];
    int fd = dial();
    char target[5000] = "GET /";
    memset(target + 5, 'b', 4500);
    strcpy(target + 4505, " HTTP/1.1\r\nHost: x\r\n\r\n");
    send_all(fd, target);
    read_some(fd, buf, sizeof buf, NULL);
    CHECK(strncmp(buf, "HTTP/1.1 414 ", 13) == 0);
    close(fd);
}

static void test_head_too_big(void)
{
    run(sc_head_too_big, 2048);
    CHECK_INT(app.bad, 1);
    run(sc_target_too_long, 16384);
    CHECK_INT(app.bad, 1);
}

/* A client that goes away while its answer is pending: on_complete(REQ_GONE), once. */
static void sc_client_gone(void)
{
    int fd = dial();
    send_all(fd, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    test_sleep_ms(50);
    close(fd);
    test_sleep_ms(100);
}

static void test_client_gone(void)
{
    run(sc_client_gone, 8192);
    CHECK_INT(app.gone, 1);
    CHECK_INT(app.done, 0);
}

/* A request with a body is answered, then its connection closed (bodies are never read). */
static void sc_body_closes(void)
{
    int fd = dial();
    char buf[4096];
    send_all(fd,
             "GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcdeGET /c HTTP/1.1\r\n\r\n");
    read_some(fd, buf, sizeof buf, NULL);
    CHECK_INT(count(buf, "HTTP/1.1 "), 1);
    CHECK(strstr(buf, "Connection: close\r\n") != NULL);
    close(fd);
}

static void test_body_closes(void)
{
    run(sc_body_closes, 8192);
    CHECK_INT(app.done, 1);
}

/* ---- http.c ---------------------------------------------------------------------------------- */

static void test_range_grammar(void)
{
    static const struct {
        const char *v;
        enum http_range_kind kind;
        bool suffix;
        uint64_t first, last;
    } cases[] = {
        {"bytes=0-9", HTTP_RANGE_OK, false, 0, 9},
        {"bytes=5-", HTTP_RANGE_OK, false, 5, UINT64_MAX},
        {"bytes=-20", HTTP_RANGE_OK, true, 0, 20},
        {" BYTES= 1-2 ", HTTP_RANGE_OK, false, 1, 2},
        {"bytes=0-1,3-4", HTTP_RANGE_BAD, false, 0, 0},
        {"bytes=9-1", HTTP_RANGE_BAD, false, 0, 0},
        {"bytes=-0", HTTP_RANGE_BAD, false, 0, 0},
        {"items=0-1", HTTP_RANGE_BAD, false, 0, 0},
        {"bytes=99999999999999999999-", HTTP_RANGE_BAD, false, 0, 0},
        {"bytes=", HTTP_RANGE_BAD, false, 0, 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        http_range_t r;
        http_range_parse(cases[i].v, &r);
        CHECK_INT(r.kind, cases[i].kind);
        if (r.kind == HTTP_RANGE_OK) {
            CHECK_INT(r.suffix, cases[i].suffix);
            CHECK(r.first == cases[i].first);
            CHECK(r.last == cases[i].last);
        }
    }
    http_range_t r;
    uint64_t f, l;
    http_range_parse("bytes=100-", &r);
    CHECK_INT(http_range_resolve(&r, 100, &f, &l), 416);
    CHECK_INT(http_range_resolve(&r, 150, &f, &l), 206);
    CHECK(f == 100 && l == 149);
    http_range_parse("bytes=-500", &r);
    CHECK_INT(http_range_resolve(&r, 150, &f, &l), 206);
    CHECK(f == 0 && l == 149);
    CHECK_INT(http_range_resolve(&r, 0, &f, &l), 416);
    r.kind = HTTP_RANGE_BAD;
    CHECK_INT(http_range_resolve(&r, 10, &f, &l), 200);
    CHECK(f == 0 && l == 9);
}

static void test_etag(void)
{
    const char *d = "sha256:abc";
    CHECK(http_etag_matches("\"sha256:abc\"", d));
    CHECK(http_etag_matches("W/\"sha256:abc\"", d));
    CHECK(http_etag_matches("\"x\", \"sha256:abc\"", d));
    CHECK(http_etag_matches("sha256:abc", d));
    CHECK(http_etag_matches("*", d));
    CHECK(!http_etag_matches("\"sha256:abcd\"", d));
    CHECK(!http_etag_matches("", d));
    CHECK(!http_etag_matches(NULL, d));
    CHECK_STR(http_reason(416), "Range Not Satisfiable");
    CHECK_STR(http_reason(299), "Unknown");
}

static const test_case_t cases[] = {
    TEST_CASE(test_keepalive_and_headers),
    TEST_CASE(test_pipelined),
    TEST_CASE(test_malformed_after_good),
    TEST_CASE(test_connect_and_upgrade),
    TEST_CASE(test_head_too_big),
    TEST_CASE(test_client_gone),
    TEST_CASE(test_body_closes),
    TEST_CASE(test_range_grammar),
    TEST_CASE(test_etag),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
