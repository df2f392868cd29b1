/* upstream: redirects, Bearer and Basic auth, token flights, rate-limit headers and the origin
 * table, against scripted fake upstreams (tests/unit/support/fake_upstream.h), started per
 * case: the registry (the configured upstream), the token server, and 22 "CDN" origins that
 * refuse any request carrying Authorization, the way pre-signed S3/R2 URLs do. Every request
 * every one of them sees is recorded. */
#include "proxy/upstream.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "fake_upstream.h"
#include "testutil.h"
#include "upclient.h"

#define NCDN 22

/* ---- The lab: the fake upstreams and their knobs. ---- */

static struct lab {
    fake_upstream_t *reg, *tok, *cdn[NCDN];
    uint16_t dead_port; /* nothing listens there */
} lab;

static atomic_int tok_gen;           /* the registry accepts "Bearer tok-<gen>" only */
static atomic_int tok_mode;          /* 0 normal, 1 expired on arrival, 2 answer 500, 3 hang */
static atomic_int tok_release;       /* ends a hang */
static atomic_int reject_all;        /* the registry refuses every token */
static atomic_int access_token_only; /* answer {"access_token": ...} */
static atomic_int realm_self;        /* the realm is the registry's own origin, not lab.tok */

static const char *const b64_user_pass = "dXNlcjpwYXNz"; /* "user:pass" */

/* The token server: /token?service=test&scope=... */
static void h_token(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    int mode = atomic_load(&tok_mode);
    if (mode == 3) {
        while (!atomic_load(&tok_release) && fu_sleep(q->server, 5))
            ;
        mode = 0;
    }
    r->status = 200;
    if (mode == 2) {
        r->status = 500;
        r->body = "broken";
        return;
    }
    if (!strstr(q->target, "service=test")) {
        r->status = 400;
        r->body = "service?";
        return;
    }
    const char *issued = mode == 1 ? ",\"issued_at\":\"2001-01-01T00:00:00Z\"" : "";
    snprintf(r->buf, sizeof r->buf, "{\"%s\":\"tok-%d\",\"expires_in\":300%s}",
             atomic_load(&access_token_only) ? "access_token" : "token", atomic_load(&tok_gen),
             issued);
    r->body = r->buf;
    r->headers = "Content-Type: application/json\r\n";
}

/* /r/...: redirects of every kind. */
static void h_redirect(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    unsigned long long n = 0;
    r->status = 302;
    r->headers = r->buf;
    if (fu_target_num(q->target, "/r/loop/", &n)) {
        snprintf(r->buf, sizeof r->buf, "Location: /r/loop/%llu\r\n", n + 1);
        r->body = "loop";
    } else if (fu_target_num(q->target, "/r/abs/", &n)) {
        r->status = 307;
        snprintf(r->buf, sizeof r->buf,
                 "Location: http://127.0.0.1:%u/cdn/%llu?X-Amz-Signature=s\r\n",
                 (unsigned)fu_port(lab.cdn[0]), n);
        r->body = "go";
    } else if (fu_target_num(q->target, "/r/origin/", &n) && n < NCDN) {
        snprintf(r->buf, sizeof r->buf, "Location: http://127.0.0.1:%u/cdn/o%llu\r\n",
                 (unsigned)fu_port(lab.cdn[n]), n);
    } else if (strcmp(q->target, "/r/https") == 0) {
        snprintf(r->buf, sizeof r->buf, "Location: https://127.0.0.1:%u/x\r\n",
                 (unsigned)fu_port(lab.cdn[0]));
    } else {
        r->status = 404;
        r->headers = NULL;
    }
}

/* /final: says whether an Authorization came along. */
static void h_final(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    char v[256];
    r->status = 200;
    r->body = "final";
    r->headers = fu_header(q, "Authorization", v, sizeof v) ? "X-Saw-Auth: yes\r\n"
                                                            : "X-Saw-Auth: no\r\n";
}

/* /basic/...: behind Basic user:pass. */
static void h_basic(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    char v[256], want[64];
    snprintf(want, sizeof want, "Basic %s", b64_user_pass);
    r->status = 200;
    r->body = "basic-ok";
    if (!fu_header(q, "Authorization", v, sizeof v) || strcmp(v, want) != 0) {
        r->status = 401;
        r->headers = "WWW-Authenticate: Basic realm=\"registry\"\r\n";
        r->body = "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}";
    }
}

/* /v2/<name>/<kind>/<ref>, behind Bearer tokens: manifests answer, blobs go to the CDN. */
static void h_v2(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    char name[256], kind[32], ref[256], v[256], want[64];
    r->status = 404;
    if (sscanf(q->target, "/v2/%255[^?]", name) != 1)
        return;
    char *slash2 = strrchr(name, '/');
    if (!slash2)
        return;
    snprintf(ref, sizeof ref, "%s", slash2 + 1);
    *slash2 = '\0';
    char *slash1 = strrchr(name, '/');
    if (!slash1)
        return;
    snprintf(kind, sizeof kind, "%s", slash1 + 1);
    *slash1 = '\0';
    snprintf(want, sizeof want, "Bearer tok-%d", atomic_load(&tok_gen));
    const char *auth = fu_header(q, "Authorization", v, sizeof v);
    r->headers = r->buf;
    if (atomic_load(&reject_all) || !auth || strcmp(auth, want) != 0) {
        unsigned rp = strncmp(name, "dead/", 5) == 0 ? lab.dead_port
                      : atomic_load(&realm_self)     ? fu_port(lab.reg)
                                                     : fu_port(lab.tok);
        snprintf(r->buf, sizeof r->buf,
                 "Content-Type: application/json\r\n"
                 "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:%u/token\","
                 "service=\"test\",scope=\"repository:%s:pull\"%s\r\n",
                 rp, name, auth ? ",error=\"invalid_token\"" : "");
        r->status = 401;
        r->body = "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}";
        return;
    }
    if (strcmp(kind, "blobs") == 0) {
        snprintf(r->buf, sizeof r->buf,
                 "Location: http://127.0.0.1:%u/cdn/%s?X-Amz-Signature=s\r\n",
                 (unsigned)fu_port(lab.cdn[0]), ref);
        r->status = 307;
        return;
    }
    int k = snprintf(r->buf, sizeof r->buf,
                     "Content-Type: application/json\r\nRateLimit-Limit: 100;w=21600\r\n"
                     "RateLimit-Remaining: 42;w=21600\r\nDocker-RateLimit-Source: 192.0.2.1\r\n");
    snprintf(r->buf + k + 1, sizeof r->buf - (size_t)k - 1, "manifest:%s:%s", name, ref);
    r->body = r->buf + k + 1;
    r->status = 200;
}

/* A CDN: pre-signed URLs, so any Authorization is an error. */
static void h_cdn(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    char v[256];
    if (fu_header(q, "Authorization", v, sizeof v)) {
        r->status = 400;
        r->body = "Only one auth mechanism allowed";
        return;
    }
    snprintf(r->buf, sizeof r->buf, "cdn:%.*s", (int)strcspn(q->target, "?"), q->target);
    r->status = 200;
    r->body = r->buf;
}

static void lab_start(void)
{
    atomic_store(&tok_gen, 1);
    atomic_store(&tok_mode, 0);
    atomic_store(&tok_release, 0);
    atomic_store(&reject_all, 0);
    atomic_store(&access_token_only, 0);
    atomic_store(&realm_self, 0);
    lab.reg = fu_start();
    lab.tok = fu_start();
    for (int i = 0; i < NCDN; i++) {
        lab.cdn[i] = fu_start();
        fu_route_fn(lab.cdn[i], "*", h_cdn, NULL);
    }
    lab.dead_port = fu_unused_port();
    fu_route_fn(lab.tok, "/token?*", h_token, NULL);
    fake_upstream_t *f = lab.reg;
    fu_route_fn(f, "/token?*", h_token, NULL); /* the registry as its own token server */
    fu_route(f, "/r/rel", &(fu_response_t){.status = 302, .headers = "Location: /final?x=1\r\n"});
    fu_route(f, "/r/relpath/a/b",
             &(fu_response_t){.status = 301, .headers = "Location: ../c#frag\r\n"});
    fu_route(f, "/r/relpath/c", &(fu_response_t){.status = 200, .body = "c"});
    fu_route(f, "/r/303", &(fu_response_t){.status = 303, .headers = "Location: /final\r\n"});
    fu_route(f, "/r/308", &(fu_response_t){.status = 308, .headers = "Location: /final\r\n"});
    fu_route(f, "/r/bad",
             &(fu_response_t){.status = 302, .headers = "Location: ftp://127.0.0.1/x\r\n"});
    fu_route(f, "/r/userinfo",
             &(fu_response_t){.status = 302, .headers = "Location: http://u:p@127.0.0.1/x\r\n"});
    /* A redirect with a body too big to drain: the client drops the connection. */
    fu_route(
        f, "/r/big",
        &(fu_response_t){.status = 307, .headers = "Location: /final\r\n", .pattern_len = 200000});
    /* A small chunked redirect body is drained, the connection kept. */
    fu_route(
        f, "/r/chunked",
        &(fu_response_t){
            .status = 307, .headers = "Location: /final\r\n", .chunked = true, .body = "hello"});
    fu_route_fn(f, "/r/*", h_redirect, NULL);
    fu_route_fn(f, "/final*", h_final, NULL);
    fu_route(f, "/limited",
             &(fu_response_t){.status = 429,
                              .headers = "Retry-After: 7\r\nRateLimit-Limit: 100;w=21600\r\n"
                                         "RateLimit-Remaining: 0;w=21600\r\n"
                                         "Docker-RateLimit-Source: 192.0.2.1\r\n",
                              .body = "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\"}]}"});
    fu_route_fn(f, "/basic/*", h_basic, NULL);
    fu_route_fn(f, "/v2/*", h_v2, NULL);
    up_config(fu_port(lab.reg));
}

static void lab_stop(void)
{
    atomic_store(&tok_release, 1);
    fu_stop(lab.reg);
    fu_stop(lab.tok);
    for (int i = 0; i < NCDN; i++)
        fu_stop(lab.cdn[i]);
    memset(&lab, 0, sizeof lab);
}

/* The Authorization value of the i-th request f saw whose target starts with prefix ("" when
 * it had none); fails the test when there is no such request. */
static const char *nth_auth(fake_upstream_t *f, const char *prefix, int i, fu_request_t *q)
{
    static char v[256];
    CHECK(fu_nth(f, prefix, i, q));
    return fu_header(q, "Authorization", v, sizeof v) ? v : "";
}

/* A fresh result for each request. */
static void fetch(upstream_t *u, const char *method, const char *path, const char *const *hdrs,
                  upres_t *s)
{
    memset(s, 0, sizeof *s);
    up_get(u, method, path, hdrs, s);
}

/* ---- Redirects ---------------------------------------------------------------------------- */

static void test_redirects(void)
{
    lab_start();
    fake_upstream_t *reg = lab.reg, *cdn = lab.cdn[0];
    upstream_t *u = up_make();
    upres_t s;
    fu_request_t q;

    /* Relative, same origin: the caller sees only the final 200. */
    fetch(u, "GET", "/r/rel", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.headers_calls, 1);
    CHECK_INT(s.redirects, 1);
    CHECK_STR(s.body, "final");
    CHECK(fu_nth(reg, "/final", 0, &q));
    CHECK_STR(q.target, "/final?x=1");
    CHECK_STR(q.method, "GET");

    /* Relative path with dot segments and a fragment. */
    fetch(u, "GET", "/r/relpath/a/b", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "c");

    /* 303 and 308 on GET; HEAD stays HEAD through a 303. */
    fetch(u, "GET", "/r/303", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "final");
    fetch(u, "GET", "/r/308", NULL, &s);
    CHECK_INT(s.status, 200);
    int heads = 0;
    for (int i = 0; fu_nth(reg, "/final", i, &q); i++)
        heads += strcmp(q.method, "HEAD") == 0;
    CHECK_INT(heads, 0);
    fetch(u, "HEAD", "/r/303", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.body_len, 0);
    heads = 0;
    for (int i = 0; fu_nth(reg, "/final", i, &q); i++)
        heads += strcmp(q.method, "HEAD") == 0;
    CHECK_INT(heads, 1);

    /* Absolute, cross-origin: the caller's Authorization stays behind (the CDN answers 400
     * to any). */
    const char *hdrs[] = {"Authorization: Bearer caller-secret", "Accept: x/y", NULL};
    fetch(u, "GET", "/r/abs/1", hdrs, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "cdn:/cdn/1");
    CHECK_INT(fu_count(cdn, "/cdn/1"), 1);
    CHECK_STR(nth_auth(reg, "/r/abs/1", 0, &q),
              "Bearer caller-secret"); /* it reached the registry */
    CHECK_STR(nth_auth(cdn, "/cdn/1", 0, &q), "");
    CHECK_STR(q.target, "/cdn/1?X-Amz-Signature=s");

    /* Redirect bodies: a small chunked one is drained, a big one costs the connection. */
    int a0 = fu_accepts(reg);
    fetch(u, "GET", "/r/chunked", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "final");
    CHECK_INT(fu_accepts(reg), a0);
    fetch(u, "GET", "/r/big", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "final");
    CHECK_INT(fu_accepts(reg), a0 + 1);

    /* Too many: after max redirects the caller sees the redirect itself. */
    fetch(u, "GET", "/r/loop/0", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 302);
    CHECK_INT(s.redirects, 5);
    CHECK_INT(fu_count(reg, "/r/loop/"), 6);
    CHECK_STR(s.body, "loop");

    /* Unusable targets are not followed. */
    fetch(u, "GET", "/r/bad", NULL, &s);
    CHECK_INT(s.status, 302);
    CHECK_INT(s.redirects, 0);
    fetch(u, "GET", "/r/userinfo", NULL, &s);
    CHECK_INT(s.status, 302);

    /* Only GET and HEAD follow. */
    fetch(u, "POST", "/r/rel", NULL, &s);
    CHECK_INT(s.status, 302);

    /* https targets need the TLS transport; without a TLS server there they fail. */
    fetch(u, "GET", "/r/https", NULL, &s);
    CHECK(s.done_status < 0);
    CHECK_INT(s.headers_calls, 0);
    up_destroy(u);

    /* upstream_max_redirects 0: nothing is followed. */
    up_gcfg.upstream_max_redirects = 0;
    u = up_make();
    fetch(u, "GET", "/r/rel", NULL, &s);
    CHECK_INT(s.status, 302);
    up_destroy(u);
    lab_stop();
}

static int cdn_closed(void)
{
    int n = 0;
    for (int i = 0; i < NCDN; i++)
        n += fu_closed(lab.cdn[i]);
    return n;
}

static bool evicted_enough(void *arg)
{
    (void)arg;
    /* 23 requests over 22 CDN origins: at least 23 - 15 of their connections are dropped. */
    return cdn_closed() >= NCDN + 1 - 15;
}

static void test_origin_table(void)
{
    /* Twenty-two CDN origins, one after the other: the table holds 16 (the registry's
     * included), so idle connections of the least recently used ones are closed to make room,
     * and a forgotten origin comes back on demand. */
    lab_start();
    upstream_t *u = up_make();
    upres_t s;
    char path[64], want[64];
    for (int i = 0; i < NCDN; i++) {
        snprintf(path, sizeof path, "/r/origin/%d", i);
        fetch(u, "GET", path, NULL, &s);
        CHECK_INT(s.status, 200);
        snprintf(want, sizeof want, "cdn:/cdn/o%d", i);
        CHECK_STR(s.body, want);
    }
    fetch(u, "GET", "/r/origin/0", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "cdn:/cdn/o0");
    CHECK_INT(fu_accepts(lab.cdn[0]), 2); /* forgotten, then back */
    /* Give the servers a moment to see the closes. */
    up_run_until(evicted_enough, NULL);
    printf("origin table: %d CDN origins used, %d idle connections closed by eviction\n", NCDN,
           cdn_closed());
    up_destroy(u);
    lab_stop();
}

/* ---- Bearer ------------------------------------------------------------------------------ */

static void test_bearer(void)
{
    lab_start();
    fake_upstream_t *reg = lab.reg, *tok = lab.tok, *cdn = lab.cdn[0];
    upstream_t *u = up_make();
    upres_t s;
    fu_request_t q;

    /* Cold: 401, one token fetch, the retry with the token. */
    fetch(u, "GET", "/v2/lab/a/manifests/1", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.headers_calls, 1);
    CHECK_STR(s.body, "manifest:lab/a:1");
    CHECK_INT(fu_count(tok, "/token"), 1);
    CHECK_INT(fu_count(reg, "/v2/lab/a/"), 2);
    CHECK_STR(nth_auth(tok, "/token", 0, &q), ""); /* anonymous: no credentials configured */
    CHECK_STR(q.target, "/token?service=test&scope=repository%3Alab%2Fa%3Apull");
    CHECK_STR(nth_auth(reg, "/v2/lab/a/", 1, &q), "Bearer tok-1");

    /* Warm: the cached token goes up front, no 401, no token request. */
    fetch(u, "HEAD", "/v2/lab/a/manifests/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(tok, "/token"), 1);
    CHECK_INT(fu_count(reg, "/v2/lab/a/"), 3);

    /* A blob: the registry redirects to the CDN, which must not get the token. */
    fetch(u, "GET", "/v2/lab/a/blobs/sha256:b1", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.redirects, 1);
    CHECK_STR(s.body, "cdn:/cdn/sha256:b1");
    CHECK_INT(fu_count(cdn, "/cdn/"), 1);
    CHECK_STR(nth_auth(cdn, "/cdn/", 0, &q), "");
    CHECK_INT(fu_count(tok, "/token"), 1);

    /* Rate-limit headers of the registry's answers are kept. */
    upstream_ratelimit_t rl;
    CHECK(upstream_ratelimit(u, &rl));
    CHECK_INT(rl.limit, 100);
    CHECK_INT(rl.remaining, 42);
    CHECK_INT(rl.window_s, 21600);
    CHECK_STR(rl.source, "192.0.2.1");

    /* Another repository needs its own token. */
    fetch(u, "GET", "/v2/lab/other/manifests/1", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(tok, "/token"), 2);

    /* The registry stops accepting the token (rotated): the proactive token gets a 401, the
     * cached one is dropped, a new one is fetched once, the retry succeeds. */
    atomic_store(&tok_gen, 2);
    int r0 = fu_count(reg, "/v2/lab/a/");
    fetch(u, "GET", "/v2/lab/a/manifests/3", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(tok, "/token"), 3);
    CHECK_INT(fu_count(reg, "/v2/lab/a/") - r0, 2);
    CHECK_STR(nth_auth(reg, "/v2/lab/a/", fu_count(reg, "/v2/lab/a/") - 1, &q), "Bearer tok-2");

    /* A second 401 after a fresh token reaches the caller; no third attempt. */
    atomic_store(&reject_all, 1);
    r0 = fu_count(reg, "/v2/lab/a/");
    fetch(u, "GET", "/v2/lab/a/manifests/4", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 401);
    CHECK(strstr(s.www_auth, "Bearer realm=") != NULL);
    CHECK_INT(fu_count(reg, "/v2/lab/a/") - r0, 2);
    CHECK_INT(fu_count(tok, "/token"), 4);
    up_destroy(u);
    lab_stop();
}

static void test_bearer_single_flight(void)
{
    lab_start();
    atomic_store(&access_token_only, 1); /* the OAuth2 spelling works too */
    upstream_t *u = up_make();
    upres_t s[5];
    memset(s, 0, sizeof s);
    for (int i = 0; i < 5; i++) {
        char path[64];
        snprintf(path, sizeof path, "/v2/lab/sf/manifests/%d", i);
        up_start(u, "GET", path, NULL, &s[i]);
    }
    up_wait(s, 5);
    for (int i = 0; i < 5; i++) {
        CHECK_INT(s[i].done_status, 0);
        CHECK_INT(s[i].status, 200);
    }
    printf("single flight: 5 concurrent 401s, %d token request(s)\n", fu_count(lab.tok, "/token"));
    CHECK_INT(fu_count(lab.tok, "/token"), 1);
    up_destroy(u);
    lab_stop();
}

static void test_bearer_expiry(void)
{
    /* Tokens that arrive already expired (issued_at long ago) serve the request they were
     * fetched for, but are never reused: each request fetches again. */
    lab_start();
    atomic_store(&tok_mode, 1);
    upstream_t *u = up_make();
    upres_t s;
    fetch(u, "GET", "/v2/lab/exp/manifests/1", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(lab.tok, "/token"), 1);
    fetch(u, "GET", "/v2/lab/exp/manifests/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(lab.tok, "/token"), 2);
    CHECK_INT(fu_count(lab.reg, "/v2/lab/exp/"), 4); /* each: 401 + retry */
    /* Fresh tokens again: one more fetch, then reuse. */
    atomic_store(&tok_mode, 0);
    fetch(u, "GET", "/v2/lab/exp/manifests/3", NULL, &s);
    fetch(u, "GET", "/v2/lab/exp/manifests/4", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(lab.tok, "/token"), 3);
    up_destroy(u);
    lab_stop();
}

static bool token_asked(void *arg)
{
    return fu_count(lab.tok, "/token") >= *(int *)arg;
}

/* Runs the loop until the token server has seen n requests in all. */
static void wait_token_requests(int n)
{
    up_run_until(token_asked, &n);
}

static void test_bearer_failures(void)
{
    lab_start();
    upstream_t *u = up_make();
    upres_t s;

    /* The token endpoint answers 500: the caller sees the registry's 401 (headers only). */
    atomic_store(&tok_mode, 2);
    fetch(u, "GET", "/v2/lab/f/manifests/1", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 401);
    CHECK_INT(s.body_len, 0);
    CHECK(strstr(s.www_auth, "service=\"test\"") != NULL);
    atomic_store(&tok_mode, 0);

    /* The realm is unreachable: the caller gets the transport error. */
    fetch(u, "GET", "/v2/dead/x/manifests/1", NULL, &s);
    CHECK_INT(s.done_status, -ECONNREFUSED);
    CHECK_INT(s.headers_calls, 0);

    /* Cancelled while waiting for a token: no callback, and the fetch still fills the
     * cache for the next request. */
    atomic_store(&tok_mode, 3);
    atomic_store(&tok_release, 0);
    int t0 = fu_count(lab.tok, "/token");
    memset(&s, 0, sizeof s);
    up_start(u, "GET", "/v2/lab/c/manifests/1", NULL, &s);
    wait_token_requests(t0 + 1);
    upreq_cancel(s.req);
    atomic_store(&tok_release, 1);
    up_run_for(200);
    CHECK(!s.done);
    CHECK_INT(s.headers_calls, 0);
    atomic_store(&tok_mode, 0);
    int r0 = fu_count(lab.reg, "/v2/lab/c/");
    fetch(u, "GET", "/v2/lab/c/manifests/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(lab.reg, "/v2/lab/c/") - r0, 1);
    CHECK_INT(fu_count(lab.tok, "/token") - t0, 1);

    /* Cancel from on_headers of a replayed 401. */
    atomic_store(&tok_mode, 2);
    memset(&s, 0, sizeof s);
    s.cancel_in_headers = true;
    up_get(u, "GET", "/v2/lab/g/manifests/1", NULL, &s);
    CHECK_INT(s.status, 401);
    up_run_for(20);
    CHECK(!s.done);
    atomic_store(&tok_mode, 0);

    /* Destroyed while a token fetch is in flight (its waiter cancelled first). */
    atomic_store(&tok_mode, 3);
    atomic_store(&tok_release, 0);
    t0 = fu_count(lab.tok, "/token");
    memset(&s, 0, sizeof s);
    up_start(u, "GET", "/v2/lab/h/manifests/1", NULL, &s);
    wait_token_requests(t0 + 1);
    upreq_cancel(s.req);
    up_destroy(u);
    CHECK(!s.done);

    /* Destroyed while requests wait for a token: they are dropped without callbacks. */
    atomic_store(&tok_release, 0);
    t0 = fu_count(lab.tok, "/token");
    u = up_make();
    upres_t w[3];
    memset(w, 0, sizeof w);
    for (int i = 0; i < 3; i++)
        up_start(u, "GET", "/v2/lab/i/manifests/1", NULL, &w[i]);
    wait_token_requests(t0 + 1);
    up_run_for(50);
    up_destroy(u);
    for (int i = 0; i < 3; i++)
        CHECK(!w[i].done && w[i].headers_calls == 0);
    lab_stop();
}

static void test_token_flight_bound(void)
{
    /* Token fetches running at once are bounded (32): with the token server hanging, a 33rd
     * repository's request gets its 401 at once instead of a 33rd fetch. */
    lab_start();
    atomic_store(&tok_mode, 3);
    up_gcfg.upstream_max_conns = 64; /* room for every fetch at once */
    upstream_t *u = up_make();
    enum { N = 33 };
    static upres_t s[N];
    memset(s, 0, sizeof s);
    char path[64];
    for (int i = 0; i < N - 1; i++) {
        snprintf(path, sizeof path, "/v2/lab/b%d/manifests/1", i);
        up_start(u, "GET", path, NULL, &s[i]);
    }
    wait_token_requests(N - 1); /* every flight's fetch is running */
    snprintf(path, sizeof path, "/v2/lab/b%d/manifests/1", N - 1);
    up_start(u, "GET", path, NULL, &s[N - 1]);
    up_wait(&s[N - 1], 1);
    CHECK_INT(s[N - 1].done_status, 0);
    CHECK_INT(s[N - 1].status, 401);
    for (int i = 0; i < N - 1; i++)
        CHECK(!s[i].done);
    atomic_store(&tok_release, 1);
    up_wait(s, N - 1);
    for (int i = 0; i < N - 1; i++)
        CHECK_INT(s[i].status, 200);
    CHECK_INT(fu_count(lab.tok, "/token"), N - 1);
    up_destroy(u);
    lab_stop();
}

static void test_token_with_credentials(void)
{
    /* With credentials configured, a token realm on the registry's own (plain http) origin gets
     * them as Basic (a lab registry that is its own token server). */
    lab_start();
    up_credentials("user", "pass");
    atomic_store(&realm_self, 1);
    upstream_t *u = up_make();
    upres_t s;
    fu_request_t q;
    fetch(u, "GET", "/v2/lab/cred/manifests/1", NULL, &s);
    CHECK_INT(s.status, 200);
    char want[64];
    snprintf(want, sizeof want, "Basic %s", b64_user_pass);
    CHECK_STR(nth_auth(lab.reg, "/token", 0, &q), want);
    CHECK_INT(fu_count(lab.tok, NULL), 0);
    up_destroy(u);

    /* A plain-http realm anywhere else never gets them (anyone on the path would read them):
     * the token is fetched anonymously. The https realm that does get them is covered by
     * tests/integration/test_auth_redirect.py (TLS token server). */
    atomic_store(&realm_self, 0);
    u = up_make();
    fetch(u, "GET", "/v2/lab/cred/manifests/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(lab.tok, "/token"), 1);
    CHECK_STR(nth_auth(lab.tok, "/token", 0, &q), "");
    /* Nor does a realm named by a redirect target, nor the redirect target itself. */
    fetch(u, "GET", "/r/abs/3", NULL, &s);
    CHECK_STR(nth_auth(lab.cdn[0], "/cdn/", 0, &q), "");
    up_destroy(u);
    lab_stop();
}

/* ---- Basic ------------------------------------------------------------------------------- */

static void test_basic(void)
{
    lab_start();
    upres_t s;
    fu_request_t q;
    /* No credentials: the 401 reaches the caller after one request. */
    upstream_t *u = up_make();
    fetch(u, "GET", "/basic/1", NULL, &s);
    CHECK_INT(s.status, 401);
    CHECK_INT(fu_count(lab.reg, "/basic/"), 1);
    up_destroy(u);

    /* Credentials: 401, then the retry with Basic; afterwards Basic goes up front. */
    up_credentials("user", "pass");
    u = up_make();
    int r0 = fu_count(lab.reg, "/basic/");
    fetch(u, "GET", "/basic/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "basic-ok");
    CHECK_INT(fu_count(lab.reg, "/basic/") - r0, 2);
    fetch(u, "GET", "/basic/3", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(fu_count(lab.reg, "/basic/") - r0, 3);
    /* Basic is the registry's: a redirect to another origin leaves it behind. */
    fetch(u, "GET", "/r/abs/9", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(nth_auth(lab.cdn[0], "/cdn/", 0, &q), "");
    up_destroy(u);

    /* Wrong credentials: one retry, then the 401. */
    up_credentials("user", "wrong");
    u = up_make();
    r0 = fu_count(lab.reg, "/basic/");
    fetch(u, "GET", "/basic/4", NULL, &s);
    CHECK_INT(s.status, 401);
    CHECK_INT(fu_count(lab.reg, "/basic/") - r0, 2);
    up_destroy(u);
    lab_stop();
}

/* ---- 429 ----------------------------------------------------------------------------------- */

static void test_429(void)
{
    lab_start();
    upstream_t *u = up_make();
    upstream_ratelimit_t rl;
    CHECK(!upstream_ratelimit(u, &rl));
    upres_t s;
    fetch(u, "GET", "/limited", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 429);
    CHECK_STR(s.retry_after, "7");
    CHECK(upstream_ratelimit(u, &rl));
    CHECK_INT(rl.limit, 100);
    CHECK_INT(rl.remaining, 0);
    CHECK_INT(rl.window_s, 21600);
    CHECK_STR(rl.source, "192.0.2.1");
    CHECK(rl.updated_ms > 0);
    CHECK_STR(rl.retry_after, "7");
    up_destroy(u);
    lab_stop();
}

static const test_case_t cases[] = {
    TEST_CASE(test_redirects),
    TEST_CASE(test_origin_table),
    TEST_CASE(test_bearer),
    TEST_CASE(test_bearer_single_flight),
    TEST_CASE(test_bearer_expiry),
    TEST_CASE(test_bearer_failures),
    TEST_CASE(test_token_flight_bound),
    TEST_CASE(test_token_with_credentials),
    TEST_CASE(test_basic),
    TEST_CASE(test_429),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    log_set_level(getenv("WINCH_TEST_DEBUG") ? WLOG_DEBUG : WLOG_ERROR);
    int rc = test_main(argc, argv, cases, ARRAY_SIZE(cases));
    for (int i = 0; i < 20; i++)
        uv_run(uv_default_loop(), UV_RUN_NOWAIT);
    CHECK_INT(uv_loop_close(uv_default_loop()), 0);
    return rc;
}
