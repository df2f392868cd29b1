/* upstream: the limits of issue 8 against scripted fake upstreams: the bounded wait queue and
 * its deadline, the two lanes (a bulk flood never delays a priority request beyond one
 * connection's turn), upreq_abort (an oversized or endless body is abandoned, its connection
 * closed, never drained), the whole-exchange deadline, and where redirects and token realms
 * may send winch (address classes after DNS, allow_redirect_hosts). The address classes of the
 * fake servers (all on 127.0.0.1) are set per port through the test-only classifier hook, so
 * "a public upstream that redirects to loopback" needs no real network. */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/err.h"
#include "common/util.h"
#include "fake_upstream.h"
#include "proxy/netaddr.h"
#include "testutil.h"
#include "upclient.h"

/* ---- The fake upstreams. ---- */

static fake_upstream_t *reg, *cdn, *tok;

/* /to/<port>/<host>: a redirect to http://<host>:<port>/x. */
static void h_to(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    char *end;
    unsigned long port = strtoul(q->target + 4, &end, 10);
    if (strncmp(q->target, "/to/", 4) != 0 || *end != '/' || port == 0 || port > 65535) {
        r->status = 400;
        return;
    }
    r->status = 302;
    snprintf(r->buf, sizeof r->buf, "Location: http://%s:%lu/x\r\n", end + 1, port);
    r->headers = r->buf;
}

/* /auth: a Bearer challenge naming the token server. */
static void h_auth(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)q;
    (void)arg;
    r->status = 401;
    snprintf(r->buf, sizeof r->buf,
             "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:%u/token\",service=\"t\"\r\n",
             (unsigned)fu_port(tok));
    r->headers = r->buf;
}

/* /slow/MS: "ok" after MS milliseconds. */
static void h_slow(const fu_request_t *q, fu_response_t *r, void *arg)
{
    (void)arg;
    r->delay_ms = (int)strtol(q->target + strlen("/slow/"), NULL, 10);
    r->status = 200;
    r->body = "ok";
}

static void start_servers(void)
{
    reg = fu_start();
    cdn = fu_start();
    tok = fu_start();
    fu_route(cdn, "*", &(fu_response_t){.status = 200, .body = "cdn"});
    fu_route(tok, "*", &(fu_response_t){.status = 200, .body = "{\"token\":\"t\"}"});
    fu_route_fn(reg, "/to/*", h_to, NULL);
    fu_route_fn(reg, "/auth", h_auth, NULL);
    fu_route_fn(reg, "/slow/*", h_slow, NULL);
    fu_route(reg, "/silent", &(fu_response_t){.hold = true});
    /* 50 MB announced. */
    fu_route(reg, "/huge", &(fu_response_t){.status = 200, .pattern_len = 50u << 20});
    /* Chunked without end: fast, and trickling (a 1 KiB piece per ms, so the idle timeout
     * never fires). */
    fu_route(reg, "/endless",
             &(fu_response_t){.status = 200, .chunked = true, .pattern_len = 1ull << 40});
    fu_route(reg, "/endless-slow",
             &(fu_response_t){.status = 200,
                              .chunked = true,
                              .pattern_len = 1ull << 40,
                              .piece_max = 1024,
                              .sleep_every = 1});
    up_config(fu_port(reg));
}

static void stop_servers(void)
{
    fu_stop(reg);
    fu_stop(cdn);
    fu_stop(tok);
    reg = cdn = tok = NULL;
}

/* ---- Lanes and the queue. ---- */

static int want_accepts, want_closed;

static bool accepted_enough(void *arg)
{
    return fu_accepts(arg) >= want_accepts;
}

static bool closed_enough(void *arg)
{
    return fu_closed(arg) >= want_closed;
}

static void test_queue_bound_per_lane(void)
{
    start_servers();
    up_gcfg.upstream_max_conns = 1;
    up_gcfg.upstream_max_queue = 3;
    upstream_t *u = up_make();
    upres_t s[7];
    memset(s, 0, sizeof s);
    up_start(u, "GET", "/silent", NULL, &s[0]); /* takes the only connection */
    up_run_for(50);
    for (int i = 1; i <= 3; i++)
        up_start(u, "GET", "/slow/0", NULL, &s[i]);
    CHECK_INT(upstream_waiting(u, UPREQ_BULK), 3);
    /* The bulk lane is full: refused at once, nothing allocated, nothing fires. */
    upreq_t *r;
    upres_t extra = {0};
    CHECK_INT(upreq_start(&r, u, "GET", "/slow/0", NULL, &up_cbs, &extra), WE_BUSY);
    /* The priority lane has its own room. */
    for (int i = 4; i <= 6; i++) {
        s[i].priority = true;
        up_start(u, "GET", "/slow/0", NULL, &s[i]);
    }
    upreq_opts_t prio = {.lane = UPREQ_PRIORITY};
    CHECK_INT(upreq_start_opts(&r, u, "GET", "/slow/0", NULL, &up_cbs, &extra, &prio), WE_BUSY);
    CHECK_INT(upstream_waiting(u, UPREQ_PRIORITY), 3);
    up_run_for(20);
    CHECK(!extra.done && extra.headers_calls == 0);
    for (int i = 0; i < 7; i++)
        upreq_cancel(s[i].req);
    CHECK_INT(upstream_waiting(u, UPREQ_BULK) + upstream_waiting(u, UPREQ_PRIORITY), 0);
    up_destroy(u);
    stop_servers();
}

static void test_queue_deadline(void)
{
    start_servers();
    up_gcfg.upstream_max_conns = 1;
    up_gcfg.upstream_queue_timeout_ms = 200;
    upstream_t *u = up_make();
    upres_t hold = {0}, s[3];
    memset(s, 0, sizeof s);
    up_start(u, "GET", "/silent", NULL, &hold);
    up_run_for(30);
    double t0 = up_mono_ms();
    s[2].priority = true;
    for (int i = 0; i < 3; i++)
        up_start(u, "GET", "/slow/0", NULL, &s[i]);
    up_wait(s, 3);
    double dt = up_mono_ms() - t0;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(s[i].done_status, WE_BUSY);
        CHECK_INT(s[i].headers_calls, 0);
    }
    printf("queue deadline: configured 200 ms, waiting requests failed after %.0f ms\n", dt);
    CHECK(dt >= 190 && dt < 2000);
    /* The one on the connection is not a waiting one: it goes on. */
    CHECK(!hold.done);
    CHECK_INT(fu_count(reg, "/slow/"), 0);
    upreq_cancel(hold.req);
    up_destroy(u);
    stop_servers();
}

static void test_priority_first(void)
{
    /* One connection, no share to keep: a priority request that arrives after two bulk ones
     * is served first, as soon as the connection is free. */
    start_servers();
    up_gcfg.upstream_max_conns = 1;
    upstream_t *u = up_make();
    upres_t a = {0}, b = {0}, c = {0}, p = {.priority = true};
    up_start(u, "GET", "/slow/150", NULL, &a);
    up_start(u, "GET", "/slow/0", NULL, &b);
    up_start(u, "GET", "/slow/0", NULL, &c);
    up_start(u, "GET", "/slow/0", NULL, &p);
    up_wait(&a, 1);
    up_wait(&b, 1);
    up_wait(&c, 1);
    up_wait(&p, 1);
    CHECK_INT(a.done_status + b.done_status + c.done_status + p.done_status, 0);
    CHECK(p.done_seq == a.done_seq + 1);
    CHECK(p.done_seq < b.done_seq && p.done_seq < c.done_seq);
    up_destroy(u);
    stop_servers();
}

static void test_bulk_flood_leaves_priority_share(void)
{
    /* Eight connections: bulk may hold six; 40 slow blob fills cannot delay a manifest. */
    start_servers();
    up_gcfg.upstream_max_conns = 8;
    upstream_t *u = up_make();
    enum { N = 40 };
    static upres_t s[N];
    memset(s, 0, sizeof s);
    for (int i = 0; i < N; i++)
        up_start(u, "GET", "/slow/400", NULL, &s[i]);
    want_accepts = 6;
    up_run_until(accepted_enough, reg);
    up_run_for(50);
    CHECK_INT(fu_max_open(reg), 6);
    CHECK_INT(upstream_waiting(u, UPREQ_BULK), N - 6);
    double t0 = up_mono_ms();
    upres_t p = {.priority = true};
    up_get(u, "GET", "/slow/0", NULL, &p);
    double dt = up_mono_ms() - t0;
    CHECK_INT(p.done_status, 0);
    CHECK_STR(p.body, "ok");
    printf("lanes: a priority request behind %d queued bulk ones answered in %.1f ms\n", N - 6, dt);
    CHECK(dt < 300); /* one bulk turn is 400 ms: the priority request took none */
    CHECK(fu_max_open(reg) <= 8);
    for (int i = 0; i < N; i++)
        upreq_cancel(s[i].req);
    up_destroy(u);
    stop_servers();
}

/* ---- Abort and deadlines. ---- */

/* Runs the loop until the fake server has seen n cut-short responses (at most 20 s). */
static bool cut_seen(void *arg)
{
    return fu_send_failures(reg) >= *(int *)arg;
}

static void test_abort_oversize(void)
{
    start_servers();
    upstream_t *u = up_make();
    /* Content-Length over the caller's bound: abort in on_headers, nothing of 50 MB read. */
    upres_t s = {.abort_in_headers = true, .abort_err = WE_TOOBIG};
    double t0 = up_mono_ms();
    up_get(u, "GET", "/huge", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.done_status, WE_TOOBIG);
    CHECK_INT(s.body_calls, 0);
    int one = 1;
    up_run_until(cut_seen, &one);
    double dt = up_mono_ms() - t0;
    uint64_t sent = fu_body_bytes(reg);
    printf("abort: 50 MB announced, the server sent %llu bytes before it saw the close (%.0f "
           "ms)\n",
           (unsigned long long)sent, dt);
    CHECK(sent < (50u << 20));
    /* Endless chunked: abort in on_body past 1 MiB. */
    upres_t e = {.abort_after = 1u << 20, .abort_err = WE_TOOBIG};
    up_get(u, "GET", "/endless", NULL, &e);
    CHECK_INT(e.done_status, WE_TOOBIG);
    CHECK(e.body_len > (1u << 20) && e.body_len < (4u << 20));
    int two = 2;
    up_run_until(cut_seen, &two);
    /* Neither connection went back to the pool: the next request opens a third. */
    upres_t n = {0};
    up_get(u, "GET", "/slow/0", NULL, &n);
    CHECK_INT(n.done_status, 0);
    CHECK_INT(fu_accepts(reg), 3);
    up_destroy(u);
    stop_servers();
}

static void test_abort_outside_callbacks(void)
{
    start_servers();
    up_gcfg.upstream_max_conns = 1;
    upstream_t *u = up_make();
    upres_t a = {0}, b = {0};
    up_start(u, "GET", "/silent", NULL, &a); /* on the connection */
    up_start(u, "GET", "/slow/0", NULL, &b); /* waiting */
    up_run_for(30);
    upreq_abort(b.req, WE_CANCELLED);
    upreq_abort(a.req, -ECONNABORTED);
    CHECK(!a.done && !b.done); /* never from inside the call */
    up_wait(&a, 1);
    up_wait(&b, 1);
    CHECK_INT(a.done_status, -ECONNABORTED);
    CHECK_INT(b.done_status, WE_CANCELLED);
    CHECK_INT(a.headers_calls + b.headers_calls, 0);
    want_closed = 1;
    up_run_until(closed_enough, reg); /* the server saw the close */
    CHECK_INT(fu_closed(reg), 1);
    up_destroy(u);
    stop_servers();
}

static void test_deadline(void)
{
    start_servers();
    up_gcfg.upstream_max_conns = 1;
    upstream_t *u = up_make();
    /* No answer at all: the deadline (200 ms) comes long before the response timeout (5 s). */
    upres_t s = {.deadline_ms = 200, .priority = true};
    double t0 = up_mono_ms();
    up_get(u, "GET", "/silent", NULL, &s);
    double dt = up_mono_ms() - t0;
    CHECK_INT(s.done_status, -ETIMEDOUT);
    CHECK(dt >= 190 && dt < 2000);
    /* A body that never ends, trickling faster than the idle timeout. */
    upres_t e = {.deadline_ms = 300, .priority = true};
    t0 = up_mono_ms();
    up_get(u, "GET", "/endless-slow", NULL, &e);
    dt = up_mono_ms() - t0;
    CHECK_INT(e.status, 200);
    CHECK_INT(e.done_status, -ETIMEDOUT);
    CHECK(e.body_len > 0);
    CHECK_INT(e.mismatches, 0);
    printf("deadline: endless chunked body cut at 300 ms after %.0f ms, %llu bytes\n", dt,
           (unsigned long long)e.body_len);
    CHECK(dt >= 290 && dt < 2000);
    int one = 1;
    up_run_until(cut_seen, &one);
    /* Waiting for a connection counts too. */
    upres_t hold = {0}, q = {.deadline_ms = 100};
    up_start(u, "GET", "/silent", NULL, &hold);
    up_get(u, "GET", "/slow/0", NULL, &q);
    CHECK_INT(q.done_status, -ETIMEDOUT);
    CHECK(!hold.done);
    upreq_cancel(hold.req);
    /* A request that ends in time is not called again when its deadline passes. (The deadline
     * leaves room for a new connection on a slow machine: 100 ms did not, under TSan.) */
    upres_t ok = {.deadline_ms = 1000};
    up_get(u, "GET", "/slow/0", NULL, &ok);
    CHECK_INT(ok.done_status, 0);
    up_run_for(1100);
    up_destroy(u);
    stop_servers();
}

/* ---- Where redirects and realms may go. ---- */

/* The fake servers are all on 127.0.0.1: their ports say what they stand for. */
static struct {
    uint16_t port;
    enum netaddr_class cls;
} port_class[4];

static void set_class(int i, uint16_t port, enum netaddr_class cls)
{
    port_class[i].port = port;
    port_class[i].cls = cls;
}

static int classify_by_port(const struct sockaddr *sa)
{
    uint16_t port = sa->sa_family == AF_INET
                        ? ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port)
                        : ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
    for (size_t i = 0; i < ARRAY_SIZE(port_class); i++)
        if (port_class[i].port && port_class[i].port == port)
            return (int)port_class[i].cls;
    return -1;
}

static void get_to(upstream_t *u, const char *host, uint16_t port, upres_t *s)
{
    char path[128];
    snprintf(path, sizeof path, "/to/%u/%s", (unsigned)port, host);
    memset(s, 0, sizeof *s);
    up_get(u, "GET", path, NULL, s);
}

static upstream_t *classified_upstream(void)
{
    upstream_t *u = up_make();
    upstream_test_set_addr_classifier(u, classify_by_port);
    return u;
}

static void test_redirect_screening(void)
{
    start_servers();
    upres_t s;
    /* A lab upstream on loopback may send winch to loopback, by address or by name. */
    upstream_t *u = up_make();
    get_to(u, "127.0.0.1", fu_port(cdn), &s);
    CHECK_INT(s.done_status, 0);
    CHECK_STR(s.body, "cdn");
    get_to(u, "localhost", fu_port(cdn), &s);
    CHECK_INT(s.done_status, 0);
    up_destroy(u);
    CHECK_INT(fu_count(cdn, NULL), 2);

    /* A public upstream may not: loopback by address, by a name that resolves there (what
     * DNS rebinding does), a "metadata service" (link-local) and a private address. */
    memset(port_class, 0, sizeof port_class);
    set_class(0, fu_port(reg), NETADDR_PUBLIC);
    u = classified_upstream();
    get_to(u, "127.0.0.1", fu_port(cdn), &s);
    CHECK_INT(s.done_status, WE_FORBIDDEN);
    CHECK_INT(s.headers_calls, 0);
    get_to(u, "localhost", fu_port(cdn), &s);
    CHECK_INT(s.done_status, WE_FORBIDDEN);
    up_destroy(u);
    set_class(1, fu_port(cdn), NETADDR_LINKLOCAL);
    set_class(2, fu_port(tok), NETADDR_PRIVATE);
    u = classified_upstream();
    get_to(u, "127.0.0.1", fu_port(cdn), &s);
    CHECK_INT(s.done_status, WE_FORBIDDEN);
    get_to(u, "127.0.0.1", fu_port(tok), &s);
    CHECK_INT(s.done_status, WE_FORBIDDEN);
    /* The token realm (lab "private") is screened the same way. */
    memset(&s, 0, sizeof s);
    up_get(u, "GET", "/auth", NULL, &s);
    CHECK_INT(s.done_status, WE_FORBIDDEN);
    up_destroy(u);
    CHECK_INT(fu_count(cdn, NULL), 2); /* nothing more reached them */
    CHECK_INT(fu_count(tok, NULL), 0);

    /* A private upstream (a 10.x registry) may send winch to private addresses, not to
     * link-local ones. */
    set_class(0, fu_port(reg), NETADDR_PRIVATE);
    u = classified_upstream();
    get_to(u, "127.0.0.1", fu_port(tok), &s);
    CHECK_INT(s.done_status, 0);
    get_to(u, "127.0.0.1", fu_port(cdn), &s);
    CHECK_INT(s.done_status, WE_FORBIDDEN);
    up_destroy(u);
    CHECK_INT(fu_count(tok, NULL), 1);

    /* allow_redirect_hosts lets listed hosts through, exactly or by "*." suffix. */
    set_class(0, fu_port(reg), NETADDR_PUBLIC);
    static char h1[] = "127.0.0.1", h2[] = "*.localhost";
    char *allow[] = {h1, h2};
    up_ucfg.allow_redirect_hosts = allow;
    up_ucfg.n_allow_redirect_hosts = 2;
    u = classified_upstream();
    get_to(u, "127.0.0.1", fu_port(cdn), &s);
    CHECK_INT(s.done_status, 0);
    get_to(u, "localhost", fu_port(cdn), &s); /* "localhost" itself is not listed */
    CHECK_INT(s.done_status, WE_FORBIDDEN);
    up_destroy(u);
    up_ucfg.n_allow_redirect_hosts = 0;
    up_ucfg.allow_redirect_hosts = NULL;
    memset(port_class, 0, sizeof port_class);
    stop_servers();
}

static void test_host_lists(void)
{
    static char a[] = "registry.internal", b[] = "*.cdn.example", c[] = "10.0.0.5", d[] = "::1";
    char *list[] = {a, b, c, d};
    CHECK(netaddr_host_listed("registry.internal", list, 4));
    CHECK(!netaddr_host_listed("x.registry.internal", list, 4));
    CHECK(netaddr_host_listed("a.cdn.example", list, 4));
    CHECK(netaddr_host_listed("a.b.cdn.example", list, 4));
    CHECK(!netaddr_host_listed("cdn.example", list, 4));
    CHECK(!netaddr_host_listed("evilcdn.example", list, 4));
    CHECK(netaddr_host_listed("10.0.0.5", list, 4));
    CHECK(!netaddr_host_listed("10.0.0.50", list, 4));
    CHECK(netaddr_host_listed("::1", list, 4));
    CHECK(!netaddr_host_listed("anything", NULL, 0));
}

static enum netaddr_class class_of(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
    } else {
        CHECK_INT(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
        s6->sin6_family = AF_INET6;
    }
    return netaddr_classify((struct sockaddr *)&ss);
}

static void test_address_classes(void)
{
    static const struct {
        const char *addr;
        enum netaddr_class want;
    } cases[] = {
        {"8.8.8.8", NETADDR_PUBLIC},
        {"1.1.1.1", NETADDR_PUBLIC},
        {"127.0.0.1", NETADDR_LOOPBACK},
        {"127.255.255.254", NETADDR_LOOPBACK},
        {"10.0.0.1", NETADDR_PRIVATE},
        {"172.16.0.1", NETADDR_PRIVATE},
        {"172.31.255.255", NETADDR_PRIVATE},
        {"172.32.0.1", NETADDR_PUBLIC},
        {"172.15.255.255", NETADDR_PUBLIC},
        {"192.168.1.1", NETADDR_PRIVATE},
        {"100.64.0.1", NETADDR_PRIVATE},
        {"100.128.0.1", NETADDR_PUBLIC},
        {"169.254.169.254", NETADDR_LINKLOCAL},
        {"169.253.0.1", NETADDR_PUBLIC},
        {"0.0.0.0", NETADDR_UNSPECIFIED},
        {"0.1.2.3", NETADDR_UNSPECIFIED},
        {"224.0.0.1", NETADDR_MULTICAST},
        {"239.255.255.250", NETADDR_MULTICAST},
        {"240.0.0.1", NETADDR_RESERVED},
        {"255.255.255.255", NETADDR_RESERVED},
        {"192.0.2.1", NETADDR_RESERVED},
        {"198.18.0.1", NETADDR_RESERVED},
        {"::1", NETADDR_LOOPBACK},
        {"::", NETADDR_UNSPECIFIED},
        {"fe80::1", NETADDR_LINKLOCAL},
        {"febf::1", NETADDR_LINKLOCAL},
        {"fc00::1", NETADDR_PRIVATE},
        {"fd12:3456::1", NETADDR_PRIVATE},
        {"fec0::1", NETADDR_PRIVATE},
        {"ff02::1", NETADDR_MULTICAST},
        {"2001:db8::1", NETADDR_RESERVED},
        {"2606:4700::1111", NETADDR_PUBLIC},
        /* IPv6 spellings of IPv4 addresses are what they carry. */
        {"::ffff:127.0.0.1", NETADDR_LOOPBACK},
        {"::ffff:169.254.169.254", NETADDR_LINKLOCAL},
        {"::ffff:8.8.8.8", NETADDR_PUBLIC},
        {"::127.0.0.1", NETADDR_LOOPBACK},
        {"64:ff9b::a9fe:a9fe", NETADDR_LINKLOCAL},
        {"64:ff9b::808:808", NETADDR_PUBLIC},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        enum netaddr_class got = class_of(cases[i].addr);
        if (got != cases[i].want)
            fprintf(stderr, "%s: %s, want %s\n", cases[i].addr, netaddr_class_name(got),
                    netaddr_class_name(cases[i].want));
        CHECK_INT(got, cases[i].want);
    }
    struct sockaddr unix_sa = {.sa_family = AF_UNIX};
    CHECK_INT(netaddr_classify(&unix_sa), NETADDR_RESERVED);
}

static const test_case_t cases[] = {
    TEST_CASE(test_queue_bound_per_lane),
    TEST_CASE(test_queue_deadline),
    TEST_CASE(test_priority_first),
    TEST_CASE(test_bulk_flood_leaves_priority_share),
    TEST_CASE(test_abort_oversize),
    TEST_CASE(test_abort_outside_callbacks),
    TEST_CASE(test_deadline),
    TEST_CASE(test_redirect_screening),
    TEST_CASE(test_host_lists),
    TEST_CASE(test_address_classes),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
