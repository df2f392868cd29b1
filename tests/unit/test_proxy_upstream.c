/* upstream: the HTTP/1.1 client (pool, parsing, flow control, timeouts, cancel), against the
 * scripted fake upstream (tests/unit/support/fake_upstream.h), one per case. */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "fake_upstream.h"
#include "proxy/upstream_internal.h" /* UP_RBUF */
#include "testutil.h"
#include "upclient.h"

/* ---- The fake upstream's script. ---- */

/* /cl/N, /chunked/N, /trickle/N: N pattern bytes, with a length, chunked in pieces of up to
 * 4 KiB, or chunked in tiny pieces (up to 512 bytes) with a pause every few writes. */
static void h_pattern(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    unsigned long long n = 0;
    r->status = 200;
    r->piece_max = 4096;
    r->sleep_every = 64;
    if (fu_target_num(q->target, "/cl/", &n)) {
        r->seed = 1;
    } else if (fu_target_num(q->target, "/chunked/", &n)) {
        r->seed = 2;
        r->chunked = true;
        r->trailers = "X-Trailer: t\r\n";
    } else if (fu_target_num(q->target, "/trickle/", &n)) {
        r->seed = 3;
        r->chunked = true;
        r->piece_max = 512;
        r->sleep_every = 4;
    }
    r->pattern_len = n;
}

/* /slow/MS: "ok" after MS milliseconds. */
static void h_slow(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    unsigned long long ms = 0;
    fu_target_num(q->target, "/slow/", &ms);
    r->delay_ms = (int)ms;
    r->status = 200;
    r->body = "ok";
}

/* /stale: answers the first request of a connection; on the second it hangs up without a
 * word, like a server whose keep-alive timer fired as the request arrived. */
static void h_stale(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    if (q->nth > 1)
        return; /* status 0: close */
    r->status = 200;
    r->body = "stale";
}

/* /echo: the request head comes back as the body, so the test sees what was sent. */
static void h_echo(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    r->status = 200;
    r->body = q->head;
}

static char huge_hdr[4200];

static fake_upstream_t *server(void)
{
    fake_upstream_t *f = fu_start();
    fu_route_fn(f, "/cl/*", h_pattern, NULL);
    fu_route_fn(f, "/chunked/*", h_pattern, NULL);
    fu_route_fn(f, "/trickle/*", h_pattern, NULL);
    fu_route_fn(f, "/slow/*", h_slow, NULL);
    fu_route_fn(f, "/stale", h_stale, NULL);
    fu_route_fn(f, "/echo*", h_echo, NULL);
    /* HEAD: the length of the body a GET would get, and no body. */
    fu_route(f, "/head",
             &(fu_response_t){.status = 200,
                              .pattern_len = 12345,
                              .headers = "Docker-Content-Digest: sha256:abc\r\n"});
    fu_route(f, "/multi",
             &(fu_response_t){.status = 401,
                              .headers = "WWW-Authenticate: Bearer realm=\"a\"\r\n"
                                         "X-Pad:   padded value \t \r\n"
                                         "Www-Authenticate: Basic realm=\"b\"\r\n"
                                         "X-Empty:\r\n"
                                         "www-authenticate:  third\r\n"});
    /* Never answer; wait for the client to give up. */
    fu_route(f, "/silent", &(fu_response_t){.hold = true});
    /* Ten bytes of a hundred, then nothing (stall) or a close (short). */
    static const char hundred[] = "0123456789012345678901234567890123456789012345678901234567890"
                                  "123456789012345678901234567890123456789";
    fu_route(
        f, "/stall",
        &(fu_response_t){.status = 200, .body = hundred, .cut = true, .cut_at = 10, .hold = true});
    fu_route(f, "/short",
             &(fu_response_t){.status = 200, .body = hundred, .cut = true, .cut_at = 10});
    /* Half the body, a pause longer than the idle timeout, then the rest. */
    fu_route(f, "/pausestall",
             &(fu_response_t){
                 .status = 200, .body = "0123456789abcdefghij", .pause_at = 10, .pause_ms = 700});
    memset(huge_hdr, 'a', sizeof huge_hdr - 1);
    memcpy(huge_hdr, "X-Big: ", 7);
    memcpy(huge_hdr + sizeof huge_hdr - 3, "\r\n", 3);
    fu_route(f, "/hugehdr", &(fu_response_t){.status = 200, .headers = huge_hdr});
    /* Keep-alive by the headers, then the server closes the idle connection. */
    fu_route(f, "/drop",
             &(fu_response_t){.status = 200, .body = "drop", .close = true, .close_delay_ms = 20});
    fu_route(f, "/close",
             &(fu_response_t){
                 .status = 200, .body = "ok", .close = true, .headers = "Connection: close\r\n"});
    /* No length: the body ends when the connection closes. */
    fu_route(f, "/eofbody",
             &(fu_response_t){.status = 200, .body = "until-eof", .no_length = true});
    /* An interim response first; the client must skip it. */
    fu_route(f, "/continue",
             &(fu_response_t){.raw = "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
                                     "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"
                                     "\r\nreal"});
    fu_route(f, "/garbage", &(fu_response_t){.raw = "HTTP/1.1 2x0 Nope\r\n\r\n", .close = true});
    up_config(fu_port(f));
    return f;
}

/* ---- Tests. ---- */

static void test_content_length_and_keepalive(void)
{
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t s1 = {0}, s2 = {0};
    up_get(u, "GET", "/cl/100000", NULL, &s1);
    CHECK_INT(s1.done_status, 0);
    CHECK_INT(s1.status, 200);
    CHECK_INT(s1.clen, 100000);
    CHECK_INT(s1.body_len, 100000);
    CHECK_INT(s1.mismatches, 0);
    up_get(u, "GET", "/cl/7", NULL, &s2);
    CHECK_INT(s2.done_status, 0);
    CHECK_INT(s2.body_len, 7);
    /* Two sequential requests, one connection. */
    CHECK_INT(fu_accepts(f), 1);
    up_destroy(u);
    fu_stop(f);
}

static void no_trailer(upreq_t *r, upres_t *s)
{
    (void)s;
    /* Headers stay readable during on_done; trailers never join them. */
    CHECK(upreq_header(r, "Transfer-Encoding") != NULL);
    CHECK(upreq_header(r, "X-Trailer") == NULL);
}

static void test_chunked(void)
{
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t s = {.check_done = no_trailer};
    up_get(u, "GET", "/chunked/300000", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK(s.clen == UINT64_MAX);
    CHECK_INT(s.body_len, 300000);
    CHECK_INT(s.mismatches, 0);
    up_destroy(u);
    fu_stop(f);
}

static void test_head(void)
{
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t s = {0}, s2 = {0};
    up_get(u, "HEAD", "/head", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.clen, 12345);
    CHECK_INT(s.body_calls, 0);
    /* HEAD via /cl: the server sends no body; the client must not wait for one. */
    up_get(u, "HEAD", "/cl/5000", NULL, &s2);
    CHECK_INT(s2.done_status, 0);
    CHECK_INT(s2.clen, 5000);
    CHECK_INT(s2.body_calls, 0);
    CHECK_INT(fu_accepts(f), 1);
    up_destroy(u);
    fu_stop(f);
}

static void check_multi(upreq_t *r, upres_t *s)
{
    (void)s;
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

static void test_multi_headers_and_request_head(void)
{
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t s = {.check_headers = check_multi};
    up_get(u, "GET", "/multi", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 401);

    upres_t e = {0};
    const char *hdrs[] = {"Authorization: Bearer secret", "Accept: a/b", NULL};
    up_get(u, "GET", "/echo?x=1", hdrs, &e);
    CHECK_INT(e.done_status, 0);
    char expect[256];
    snprintf(expect, sizeof expect,
             "GET /echo?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nUser-Agent: winch/0.1\r\n"
             "Connection: keep-alive\r\nAuthorization: Bearer secret\r\nAccept: a/b\r\n\r\n",
             (unsigned)fu_port(f));
    CHECK_STR(e.body, expect);
    /* The fake upstream saw the same. */
    fu_request_t q;
    char v[64];
    CHECK(fu_nth(f, "/echo", 0, &q));
    CHECK_STR(q.method, "GET");
    CHECK_STR(q.target, "/echo?x=1");
    CHECK_STR(fu_header(&q, "accept", v, sizeof v), "a/b");

    /* Header injection and oversized request heads are refused before anything is sent. */
    upreq_t *r;
    const char *bad[] = {"X: a\r\nY: b", NULL};
    CHECK_INT(upreq_start(&r, u, "GET", "/x", bad, &up_cbs, &e), WE_INVALID);
    CHECK_INT(upreq_start(&r, u, "GET", "/x y", NULL, &up_cbs, &e), WE_INVALID);
    static char huge[20000];
    memset(huge, 'h', sizeof huge - 1);
    memcpy(huge, "X-H: ", 5);
    const char *big[] = {huge, NULL};
    CHECK_INT(upreq_start(&r, u, "GET", "/x", big, &up_cbs, &e), WE_TOOBIG);
    CHECK_INT(fu_count(f, "/x"), 0);
    up_destroy(u);
    fu_stop(f);
}

/* "pass_ns": every request names the upstream's registry with ?ns= (percent-encoded as Go
 * encodes it), after any query it has; a query that names ns already is left alone. */
static void test_pass_ns(void)
{
    fake_upstream_t *f = server();
    up_ucfg.pass_ns = true;
    upstream_t *u = up_make();
    static const char *const paths[] = {
        "/echo/a",          "/echo/b?x=1",          "/echo/c?",
        "/echo/d?ns=other", "/echo/e?x=1&ns=other", "/echo/f?dns=1"};
    for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
        upres_t s = {0};
        up_get(u, "GET", paths[i], NULL, &s);
        CHECK_INT(s.done_status, 0);
        CHECK_INT(s.status, 200);
    }
    char want[6][128];
    unsigned port = fu_port(f);
    snprintf(want[0], sizeof want[0], "/echo/a?ns=127.0.0.1%%3A%u", port);
    snprintf(want[1], sizeof want[1], "/echo/b?x=1&ns=127.0.0.1%%3A%u", port);
    snprintf(want[2], sizeof want[2], "/echo/c?ns=127.0.0.1%%3A%u", port);
    snprintf(want[3], sizeof want[3], "/echo/d?ns=other");
    snprintf(want[4], sizeof want[4], "/echo/e?x=1&ns=other");
    snprintf(want[5], sizeof want[5], "/echo/f?dns=1&ns=127.0.0.1%%3A%u", port);
    for (int i = 0; i < 6; i++) {
        fu_request_t q;
        CHECK(fu_nth(f, "/echo/", i, &q));
        CHECK_STR(q.target, want[i]);
    }
    up_destroy(u);
    up_ucfg.pass_ns = false;
    fu_stop(f);
    /* Names with brackets (IPv6) and Docker Hub's. */
    char *p = upstream_ns_path("/v2/library/alpine/manifests/3", "docker.io");
    CHECK_STR(p, "/v2/library/alpine/manifests/3?ns=docker.io");
    free(p);
    p = upstream_ns_path("/base/v2/x/blobs/sha256:ab?artifactType=a%2Bb", "[fd00::1]:5000");
    CHECK_STR(p, "/base/v2/x/blobs/sha256:ab?artifactType=a%2Bb&ns=%5Bfd00%3A%3A1%5D%3A5000");
    free(p);
}

static void test_pool_limit(void)
{
    fake_upstream_t *f = server();
    up_gcfg.upstream_max_conns = 2;
    upstream_t *u = up_make();
    upres_t s[6];
    memset(s, 0, sizeof s);
    /* Priority requests may use every connection (bulk ones leave a share for priority:
     * test_proxy_upstream_limits). */
    for (int i = 0; i < 6; i++) {
        s[i].priority = true;
        up_start(u, "GET", "/slow/50", NULL, &s[i]);
    }
    double t0 = up_mono_ms();
    up_wait(s, 6);
    double dt = up_mono_ms() - t0;
    for (int i = 0; i < 6; i++) {
        CHECK_INT(s[i].done_status, 0);
        CHECK_STR(s[i].body, "ok");
    }
    /* Six 50 ms requests through two connections: three rounds. */
    CHECK_INT(fu_accepts(f), 2);
    CHECK(fu_max_open(f) <= 2);
    CHECK(dt >= 140);
    printf("pool: 6 requests over 2 connections in %.0f ms\n", dt);
    up_destroy(u);
    fu_stop(f);
}

static void test_queue_bound(void)
{
    fake_upstream_t *f = server();
    up_gcfg.upstream_max_conns = 1;
    up_gcfg.upstream_response_timeout_ms = 100000;
    up_gcfg.upstream_max_queue = 4096;
    upstream_t *u = up_make();
    enum { N = 4097 };
    static upres_t s[N];
    memset(s, 0, sizeof s);
    /* The first one takes the only connection; 4096 wait; the next is refused. */
    for (int i = 0; i < N; i++)
        up_start(u, "GET", "/silent", NULL, &s[i]);
    CHECK_INT(upstream_waiting(u, UPREQ_BULK), N - 1);
    upreq_t *r;
    CHECK_INT(upreq_start(&r, u, "GET", "/silent", NULL, &up_cbs, &s[0]), WE_BUSY);
    /* Cancelling frees them without callbacks, and makes room again. */
    for (int i = N - 1; i >= 0; i--)
        upreq_cancel(s[i].req);
    for (int i = 0; i < 5; i++)
        uv_run(uv_default_loop(), UV_RUN_NOWAIT);
    for (int i = 0; i < N; i++)
        CHECK(!s[i].done && s[i].headers_calls == 0);
    upres_t again = {0};
    up_start(u, "GET", "/slow/0", NULL, &again);
    up_wait(&again, 1);
    CHECK_INT(again.done_status, 0);
    up_destroy(u);
    fu_stop(f);
}

static void test_connect_refused(void)
{
    up_config(fu_unused_port());
    upstream_t *u = up_make();
    upres_t s = {0};
    up_get(u, "GET", "/cl/1", NULL, &s);
    CHECK_INT(s.done_status, -ECONNREFUSED);
    CHECK_INT(s.headers_calls, 0);
    up_destroy(u);
}

static void test_connect_timeout(void)
{
    /* A listener whose accept queue is full drops new SYNs: the connect hangs. */
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_INT(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_INT(listen(lfd, 0), 0);
    socklen_t sl = sizeof a;
    CHECK_INT(getsockname(lfd, (struct sockaddr *)&a, &sl), 0);
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int rc = connect(fill[i], (struct sockaddr *)&a, sizeof a);
        CHECK(rc == 0 || errno == EINPROGRESS);
    }
    test_sleep_ms(50);
    up_config(ntohs(a.sin_port));
    up_gcfg.upstream_connect_timeout_ms = 300;
    upstream_t *u = up_make();
    upres_t s = {0};
    double t0 = up_mono_ms();
    up_get(u, "GET", "/cl/1", NULL, &s);
    double dt = up_mono_ms() - t0;
    printf("connect timeout: configured 300 ms, got %s after %.0f ms\n", err_str(s.done_status),
           dt);
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK(dt >= 290 && dt < 1000);
    up_destroy(u);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
}

static void test_interim_response(void)
{
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t s = {0};
    up_get(u, "GET", "/continue", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.headers_calls, 1);
    CHECK_STR(s.body, "real");
    up_destroy(u);
    fu_stop(f);
}

static void test_localhost_resolves(void)
{
    /* "localhost" goes through getaddrinfo (/etc/hosts); if it yields ::1 first, the client
     * must fall through to 127.0.0.1, where the server listens. */
    fake_upstream_t *f = server();
    up_config_host("localhost");
    upstream_t *u = up_make();
    upres_t s = {0};
    up_get(u, "GET", "/cl/10", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.body_len, 10);
    up_destroy(u);
    fu_stop(f);
}

static void test_response_timeout(void)
{
    fake_upstream_t *f = server();
    up_gcfg.upstream_response_timeout_ms = 300;
    upstream_t *u = up_make();
    upres_t s = {0};
    double t0 = up_mono_ms();
    up_get(u, "GET", "/silent", NULL, &s);
    double dt = up_mono_ms() - t0;
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK_INT(s.headers_calls, 0);
    printf("response timeout: configured 300 ms, fired after %.0f ms\n", dt);
    CHECK(dt >= 290 && dt < 1000);
    up_destroy(u);
    fu_stop(f);
}

static void test_idle_timeout(void)
{
    fake_upstream_t *f = server();
    up_gcfg.upstream_idle_timeout_ms = 300;
    upstream_t *u = up_make();
    upres_t s = {0};
    double t0 = up_mono_ms();
    up_get(u, "GET", "/stall", NULL, &s);
    double dt = up_mono_ms() - t0;
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.body_len, 10);
    CHECK(dt >= 290 && dt < 1000);

    /* The idle clock stops while the caller holds the body: a 700 ms server pause hidden
     * behind a 1000 ms caller pause does not trip a 300 ms idle timeout... */
    upres_t p = {0};
    uint64_t sent0 = fu_body_bytes(f);
    up_start(u, "GET", "/pausestall", NULL, &p);
    while (p.body_calls == 0)
        uv_run(uv_default_loop(), UV_RUN_ONCE);
    /* on_body ran without pausing; pause now, from outside any callback. */
    upreq_pause(p.req);
    up_run_for(1000);
    /* The server's pause lies inside the caller's: the rest has been sent before the resume
     * (waited for, not assumed from 700 < 1000, so a server thread the machine's load held
     * back cannot make the resumed request wait for it and time out). */
    while (fu_body_bytes(f) < sent0 + 20)
        up_run_for(10);
    CHECK(!p.done);
    upreq_resume(p.req);
    up_wait(&p, 1);
    CHECK_INT(p.done_status, 0);
    CHECK_INT(p.body_len, 20);
    up_destroy(u);
    fu_stop(f);
}

static void test_premature_eof(void)
{
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t s = {0};
    up_get(u, "GET", "/short", NULL, &s);
    CHECK_INT(s.done_status, WE_SHORT);
    CHECK_INT(s.body_len, 10);

    /* A close-delimited body is complete at EOF. */
    upres_t e = {0};
    up_get(u, "GET", "/eofbody", NULL, &e);
    CHECK_INT(e.done_status, 0);
    CHECK_STR(e.body, "until-eof");

    /* Connection: close is honoured (the next request opens a new connection). */
    int a0 = fu_accepts(f);
    upres_t c1 = {0}, c2 = {0};
    up_get(u, "GET", "/close", NULL, &c1);
    up_get(u, "GET", "/close", NULL, &c2);
    CHECK_INT(c1.done_status, 0);
    CHECK_INT(c2.done_status, 0);
    CHECK_INT(fu_accepts(f) - a0, 2);

    upres_t g = {0};
    up_get(u, "GET", "/garbage", NULL, &g);
    CHECK_INT(g.done_status, WE_PROTO);
    up_destroy(u);
    fu_stop(f);
}

static void test_oversize_headers(void)
{
    fake_upstream_t *f = server();
    up_gcfg.max_header_bytes = 1024;
    upstream_t *u = up_make();
    upres_t s = {0};
    up_get(u, "GET", "/hugehdr", NULL, &s);
    CHECK_INT(s.done_status, WE_TOOBIG);
    CHECK_INT(s.headers_calls, 0);
    up_destroy(u);
    fu_stop(f);
}

static void test_pause_resume(void)
{
    /* Three 10 MiB bodies (two chunked) and one trickled in tiny chunks, at once on four
     * connections, every on_body paused and resumed later from a timer. */
    static const char *const paths[4] = {"/cl/10485760", "/chunked/10485760", "/chunked/10485761",
                                         "/trickle/300000"};
    static const uint64_t lens[4] = {10485760, 10485760, 10485761, 300000};
    /* How many on_body calls each body takes at least, however fast either side runs: one
     * read (UP_RBUF bytes at most) is one call for a body with a length, and no call spans
     * two chunks, of up to 4096 (/chunked) or 512 (/trickle) bytes. So the pause and resume
     * path runs that many times on each connection, under any load or sanitizer. */
    static const uint64_t max_per_call[4] = {UP_RBUF, 4096, 4096, 512};
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    static upres_t s[4];
    memset(s, 0, sizeof s);
    double t0 = up_mono_ms();
    for (int i = 0; i < 4; i++) {
        s[i].pause_each = true;
        up_start(u, "GET", paths[i], NULL, &s[i]);
    }
    up_wait(s, 4);
    double dt = up_mono_ms() - t0;
    for (int i = 0; i < 4; i++) {
        CHECK_INT(s[i].done_status, 0);
        CHECK_INT(s[i].body_len, lens[i]);
        CHECK_INT(s[i].mismatches, 0);
        CHECK_INT(s[i].resumes, s[i].body_calls);
        printf("pause/resume %s: %d body calls, each paused and resumed from a timer\n", paths[i],
               s[i].body_calls);
        CHECK((uint64_t)s[i].body_calls >= (lens[i] + max_per_call[i] - 1) / max_per_call[i]);
        up_res_close(&s[i]);
    }
    printf("pause/resume: 4 bodies in %.0f ms\n", dt);
    up_destroy(u);

    /* Pause and resume inside the same on_body: the parser simply goes on. */
    u = up_make();
    upres_t in = {.pause_resume_inline = true};
    up_get(u, "GET", "/chunked/1000000", NULL, &in);
    CHECK_INT(in.done_status, 0);
    CHECK_INT(in.body_len, 1000000);
    CHECK_INT(in.mismatches, 0);
    up_destroy(u);
    fu_stop(f);
}

static void test_pause_before_head(void)
{
    /* A pause made before on_headers takes effect once on_headers has returned: the head is
     * delivered, no body until the resume, and the response timeout does not fire meanwhile. */
    fake_upstream_t *f = server();
    up_gcfg.upstream_response_timeout_ms = 300;
    upstream_t *u = up_make();
    upres_t s = {0};
    up_start(u, "GET", "/cl/100000", NULL, &s);
    upreq_pause(s.req);
    up_run_for(500);
    CHECK_INT(s.headers_calls, 1);
    CHECK_INT(s.body_calls, 0);
    CHECK(!s.done);
    upreq_resume(s.req);
    up_wait(&s, 1);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.body_len, 100000);
    CHECK_INT(s.mismatches, 0);

    /* Paused and resumed before the head: nothing is held. */
    upres_t t = {0};
    up_start(u, "GET", "/cl/1000", NULL, &t);
    upreq_pause(t.req);
    upreq_resume(t.req);
    up_wait(&t, 1);
    CHECK_INT(t.done_status, 0);
    CHECK_INT(t.body_len, 1000);
    up_destroy(u);
    fu_stop(f);
}

static void test_cancel(void)
{
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t h = {.cancel_in_headers = true};
    up_start(u, "GET", "/cl/100000", NULL, &h);
    while (h.headers_calls == 0)
        uv_run(uv_default_loop(), UV_RUN_ONCE);
    upres_t b = {.cancel_in_body = true};
    up_start(u, "GET", "/chunked/100000", NULL, &b);
    while (b.body_calls == 0)
        uv_run(uv_default_loop(), UV_RUN_ONCE);
    /* Cancel from outside a callback, mid-wait. */
    upres_t w = {0};
    up_start(u, "GET", "/silent", NULL, &w);
    for (int i = 0; i < 20; i++)
        uv_run(uv_default_loop(), UV_RUN_NOWAIT);
    upreq_cancel(w.req);
    up_run_for(200);
    CHECK(!h.done && !b.done && !w.done);
    CHECK_INT(h.body_calls, 0);
    CHECK_INT(b.body_calls, 1);
    /* The cancelled requests' connections were closed, not pooled: the silent server saw it. */
    CHECK(fu_closed(f) >= 1);
    up_destroy(u);
    fu_stop(f);
}

static void test_stale_retry(void)
{
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t s1 = {0}, s2 = {0};
    up_get(u, "GET", "/stale", NULL, &s1);
    CHECK_INT(s1.done_status, 0);
    /* The pooled connection is reused; the server hangs up on the request; the client retries
     * once on a fresh connection, invisibly. */
    up_get(u, "GET", "/stale", NULL, &s2);
    CHECK_INT(s2.done_status, 0);
    CHECK_STR(s2.body, "stale");
    CHECK_INT(fu_accepts(f), 2);
    CHECK_INT(fu_count(f, "/stale"), 3);
    /* POST is not retried. */
    upres_t s3 = {0};
    up_get(u, "POST", "/stale", NULL, &s3);
    CHECK_INT(s3.done_status, UV_EOF);
    CHECK_INT(fu_accepts(f), 2);
    up_destroy(u);
    fu_stop(f);
}

static void test_idle_close_by_server(void)
{
    /* A pooled connection the server closes while idle leaves the pool at once, and the next
     * request opens a new one without any error. */
    fake_upstream_t *f = server();
    upstream_t *u = up_make();
    upres_t d1 = {0}, d2 = {0};
    up_get(u, "GET", "/drop", NULL, &d1);
    up_run_for(100);
    up_get(u, "GET", "/drop", NULL, &d2);
    CHECK_INT(d1.done_status, 0);
    CHECK_INT(d2.done_status, 0);
    CHECK_STR(d2.body, "drop");
    CHECK_INT(fu_accepts(f), 2);
    up_destroy(u);
    fu_stop(f);
}

static void test_tls_handshake_timeout(void)
{
    /* An https upstream whose server accepts (the kernel does) but never answers the
     * ClientHello: the connect timeout covers the handshake. (TLS itself is tested in
     * test_proxy_tls.) */
    uint16_t port;
    int fd = test_listen_any(NULL, &port);
    up_config(port);
    up_gcfg.upstream_connect_timeout_ms = 300;
    up_ucfg.tls = true;
    upstream_t *u = up_make();
    upres_t s = {0};
    up_get(u, "GET", "/x", NULL, &s);
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK_INT(s.headers_calls, 0);
    up_destroy(u);
    close(fd);
}

static const test_case_t cases[] = {
    TEST_CASE(test_content_length_and_keepalive),
    TEST_CASE(test_chunked),
    TEST_CASE(test_head),
    TEST_CASE(test_multi_headers_and_request_head),
    TEST_CASE(test_pass_ns),
    TEST_CASE(test_pool_limit),
    TEST_CASE(test_queue_bound),
    TEST_CASE(test_connect_refused),
    TEST_CASE(test_connect_timeout),
    TEST_CASE(test_interim_response),
    TEST_CASE(test_localhost_resolves),
    TEST_CASE(test_response_timeout),
    TEST_CASE(test_idle_timeout),
    TEST_CASE(test_premature_eof),
    TEST_CASE(test_oversize_headers),
    TEST_CASE(test_pause_resume),
    TEST_CASE(test_pause_before_head),
    TEST_CASE(test_cancel),
    TEST_CASE(test_stale_retry),
    TEST_CASE(test_idle_close_by_server),
    TEST_CASE(test_tls_handshake_timeout),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getenv("WINCH_TEST_DEBUG"))
        log_set_level(WLOG_DEBUG);
    int rc = test_main(argc, argv, cases, ARRAY_SIZE(cases));
    CHECK_INT(uv_loop_close(uv_default_loop()), 0);
    return rc;
}
