/* Who gets into proxy/server.c, driven by raw sockets from a client thread: the header timeout
 * counted from accept, the idle LRU at max_connections, the per-address limit (IPv4 and IPv6),
 * the fd budget (503 when requests in progress would need more fds than there are), and the
 * pause of the accept loop when accept(2) runs out of fds (in a forked child with its fds
 * exhausted: no busy loop, one log line, served again once fds free up); several listeners
 * sharing those limits, and their bound. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "check.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "proxy/server.h"
#include "testutil.h"

/* ---- The application: "/slow" answers after 300 ms, the rest at once; 503s as req_bad --- */

typedef struct call {
    uv_timer_t *timer;
} call_t;

static struct {
    uv_loop_t *loop;
    server_t *srv;
    atomic_int requests, completed, busy;
    int family;
    uint16_t port;
    uint16_t ports[SERVER_MAX_LISTENERS]; /* port of listener i (ports[0] == port) */
} app;

/* Listeners run_on opens besides the first (all on the same host). */
static int extra_listeners;

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
    (void)arg;
    atomic_fetch_add(&app.requests, 1);
    if (req_bad(r)) {
        if (req_bad(r) == 503)
            atomic_fetch_add(&app.busy, 1);
        static char bad[] = "bad";
        resp_begin(r, req_bad(r));
        resp_send(r, 3, bad, 3, false);
        return;
    }
    if (strcmp(req_target(r), "/li") == 0) {
        /* Which listener: the status says (200 + its index). */
        static char body[] = "hello";
        resp_begin(r, 200 + req_listener(r));
        resp_send(r, 5, body, 5, false);
        return;
    }
    if (strcmp(req_target(r), "/slow") == 0) {
        call_t *c = req_data(r);
        c->timer = malloc(sizeof *c->timer);
        uv_timer_init(app.loop, c->timer);
        c->timer->data = r;
        uv_timer_start(c->timer, on_slow_timer, 300, 0);
        return;
    }
    static char body[] = "hello";
    resp_begin(r, 200);
    resp_send(r, 5, body, 5, false);
}

static void on_complete(req_t *r, void *arg, enum req_outcome outcome)
{
    (void)arg;
    (void)outcome;
    call_t *c = req_data(r);
    if (c->timer) {
        uv_close((uv_handle_t *)c->timer, (uv_close_cb)free);
        c->timer = NULL;
    }
    atomic_fetch_add(&app.completed, 1);
}

/* ---- Client side ------------------------------------------------------------------------- */

/* A connection to the server's listener on port from source address src (NULL: any). */
static int dial_on(const char *src, uint16_t port)
{
    struct sockaddr_storage ss, to;
    memset(&ss, 0, sizeof ss);
    memset(&to, 0, sizeof to);
    socklen_t len;
    if (app.family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&to;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        a->sin6_addr = in6addr_loopback;
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&to;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *a;
    }
    int fd = socket(app.family, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    if (src) {
        struct sockaddr_in *b = (struct sockaddr_in *)&ss;
        b->sin_family = AF_INET;
        CHECK(inet_pton(AF_INET, src, &b->sin_addr) == 1);
        CHECK(bind(fd, (struct sockaddr *)b, sizeof *b) == 0);
    }
    CHECK(connect(fd, (struct sockaddr *)&to, len) == 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static int dial_from(const char *src)
{
    return dial_on(src, app.port);
}

static int dial(void)
{
    return dial_from(NULL);
}

static void send_str(int fd, const char *s)
{
    size_t n = strlen(s);
    CHECK(send(fd, s, n, MSG_NOSIGNAL) == (ssize_t)n);
}

/* Reads one response (up to its body "hello", "slow" or "bad"); returns its status line code,
 * or 0 when the connection closed first. */
static int read_response(int fd)
{
    char buf[2048];
    size_t len = 0;
    while (len < sizeof buf - 1) {
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n <= 0)
            return 0;
        len += (size_t)n;
        buf[len] = '\0';
        const char *end = strstr(buf, "\r\n\r\n");
        if (end && (strstr(end, "hello") || strstr(end, "slow") || strstr(end, "bad")))
            return (int)strtol(buf + 9, NULL, 10);
    }
    return 0;
}

static int get(int fd, const char *target)
{
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", target);
    send_str(fd, req);
    return read_response(fd);
}

/* True when the server closed fd (EOF or reset) within ms, without sending anything. */
static bool closed_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, ms) != 1)
        return false;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

/* ---- The harness ------------------------------------------------------------------------- */

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

static server_limits_t limits(void)
{
    return (server_limits_t){.header_timeout_ms = 2000,
                             .idle_timeout_ms = 5000,
                             .max_connections = 64,
                             .max_header_bytes = 8192};
}

static void run_on(const char *host, scenario_fn fn, const server_limits_t *l)
{
    memset(&app, 0, sizeof app);
    uv_loop_t loop;
    uv_loop_init(&loop);
    app.loop = &loop;
    app.family = strchr(host, ':') ? AF_INET6 : AF_INET;
    server_opts_t o = {.loop = &loop,
                       .limits = *l,
                       .on_request = on_request,
                       .on_complete = on_complete,
                       .data_size = sizeof(call_t)};
    CHECK_INT(server_create(&app.srv, &o), 0);
    char bound[64];
    CHECK_INT(server_listen(app.srv, host, 0, NULL, bound, sizeof bound), 0);
    app.port = app.ports[0] = (uint16_t)strtol(strrchr(bound, ':') + 1, NULL, 10);
    for (int i = 1; i <= extra_listeners; i++) {
        CHECK_INT(server_listen(app.srv, host, 0, NULL, bound, sizeof bound), i);
        app.ports[i] = (uint16_t)strtol(strrchr(bound, ':') + 1, NULL, 10);
    }
    scenario = fn;
    atomic_store(&client_done, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, client_thread, NULL) == 0);
    uv_timer_t poll_timer;
    uv_timer_init(&loop, &poll_timer);
    uv_timer_start(&poll_timer, on_poll, 10, 10);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK_INT(server_connections(app.srv), 0);
    server_destroy(app.srv);
    CHECK_INT(uv_loop_close(&loop), 0);
    CHECK_INT(atomic_load(&app.requests), atomic_load(&app.completed));
}

static void run(scenario_fn fn, const server_limits_t *l)
{
    run_on("127.0.0.1", fn, l);
}

/* ---- Header timeout ------------------------------------------------------------------------ */

static void sc_header_timeout(void)
{
    /* A connection that sends nothing is closed at the header timeout (300 ms), not at the
     * idle timeout (5 s). */
    int64_t t0 = time_mono_ms();
    int silent = dial();
    CHECK(closed_within(silent, 3000));
    int64_t waited = time_mono_ms() - t0;
    fprintf(stderr, "silent connection closed after %lld ms\n", (long long)waited);
    CHECK(waited >= 250);
    close(silent);

    /* Slowloris: a byte every 100 ms never extends the head's time. */
    t0 = time_mono_ms();
    int slow = dial();
    const char *head = "GET /never-complete HTTP/1.1\r\nHost: x\r\n";
    bool closed = false;
    for (const char *p = head; *p && !closed; p++) {
        char ch[2] = {*p, 0};
        if (send(slow, ch, 1, MSG_NOSIGNAL) != 1)
            break;
        closed = closed_within(slow, 100);
    }
    CHECK(closed || closed_within(slow, 3000));
    fprintf(stderr, "slowloris closed after %lld ms\n", (long long)(time_mono_ms() - t0));
    CHECK(time_mono_ms() - t0 < 3000);
    close(slow);

    /* Between requests a keep-alive connection waits the idle timeout, not the header one. */
    int ka = dial();
    CHECK_INT(get(ka, "/a"), 200);
    test_sleep_ms(700);
    CHECK_INT(get(ka, "/b"), 200);
    close(ka);
}

static void test_header_timeout_from_accept(void)
{
    server_limits_t l = limits();
    l.header_timeout_ms = 300;
    run(sc_header_timeout, &l);
    CHECK_INT(app.completed, 2);
}

/* ---- Per-address limit ------------------------------------------------------------------------ */

static void sc_per_address(void)
{
    /* Two idle connections from 127.0.0.1 (a1 the older): a third closes a1. */
    int a1 = dial_from("127.0.0.1");
    CHECK_INT(get(a1, "/1"), 200);
    int a2 = dial_from("127.0.0.1");
    CHECK_INT(get(a2, "/2"), 200);
    int a3 = dial_from("127.0.0.1");
    CHECK(closed_within(a1, 3000));
    CHECK_INT(get(a3, "/3"), 200);
    CHECK_INT(get(a2, "/2"), 200);

    /* Both busy (a head on its way): a fourth from that address is refused at once, while
     * another address is not affected. */
    send_str(a2, "GET /pending HTTP/1.1\r\n");
    send_str(a3, "GET /pending HTTP/1.1\r\n");
    test_sleep_ms(100);
    int a4 = dial_from("127.0.0.1");
    CHECK(closed_within(a4, 3000));
    close(a4);
    int b1 = dial_from("127.0.0.2");
    CHECK_INT(get(b1, "/b"), 200);

    /* a2 answered goes idle again: the next one from 127.0.0.1 takes its place. */
    send_str(a2, "Host: x\r\n\r\n");
    CHECK_INT(read_response(a2), 200);
    int a5 = dial_from("127.0.0.1");
    CHECK(closed_within(a2, 3000));
    CHECK_INT(get(a5, "/5"), 200);
    CHECK(!closed_within(a3, 50));
    close(a1);
    close(a2);
    close(a3);
    close(a5);
    close(b1);

    /* Every count was given back: two fresh connections from 127.0.0.1 are both served. */
    test_sleep_ms(100);
    int c1 = dial_from("127.0.0.1"), c2 = dial_from("127.0.0.1");
    CHECK_INT(get(c1, "/c1"), 200);
    CHECK_INT(get(c2, "/c2"), 200);
    close(c1);
    close(c2);
}

static void test_per_address_limit(void)
{
    server_limits_t l = limits();
    l.max_connections_per_client = 2;
    run(sc_per_address, &l);
}

static void sc_per_address_v6(void)
{
    int v1 = dial();
    CHECK_INT(get(v1, "/v1"), 200);
    int v2 = dial();
    CHECK(closed_within(v1, 3000));
    CHECK_INT(get(v2, "/v2"), 200);
    close(v1);
    close(v2);
}

static void test_per_address_limit_v6(void)
{
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&a, sizeof a) == 0;
    if (probe >= 0)
        close(probe);
    CHECK(have_v6); /* the test machines have ::1; say so loudly if one does not */
    server_limits_t l = limits();
    l.max_connections_per_client = 1;
    run_on("::1", sc_per_address_v6, &l);
}

/* ---- Global limit: the oldest idle connection goes ------------------------------------------ */

static void sc_global_lru(void)
{
    int c1 = dial();
    CHECK_INT(get(c1, "/1"), 200);
    int c2 = dial();
    CHECK_INT(get(c2, "/2"), 200);
    int c3 = dial();
    CHECK_INT(get(c3, "/3"), 200);
    /* At max_connections (3): c1 is the oldest idle. */
    int c4 = dial();
    CHECK(closed_within(c1, 3000));
    CHECK_INT(get(c4, "/4"), 200);
    /* c2 served again is newer than c3 and c4 now: c3 goes next. */
    CHECK_INT(get(c2, "/2"), 200);
    int c5 = dial();
    CHECK(closed_within(c3, 3000));
    CHECK(!closed_within(c2, 50));
    CHECK(!closed_within(c4, 50));

    /* Nothing idle: a new connection waits in the backlog... */
    send_str(c2, "GET /x HTTP/1.1\r\n");
    send_str(c4, "GET /x HTTP/1.1\r\n");
    send_str(c5, "GET /x HTTP/1.1\r\n");
    test_sleep_ms(100);
    int c6 = dial();
    send_str(c6, "GET /6 HTTP/1.1\r\nHost: x\r\n\r\n");
    struct pollfd p = {.fd = c6, .events = POLLIN};
    CHECK_INT(poll(&p, 1, 400), 0);
    /* ...until a connection goes idle: then that one is closed and c6 is served. */
    send_str(c2, "Host: x\r\n\r\n");
    CHECK_INT(read_response(c2), 200);
    CHECK_INT(read_response(c6), 200);
    CHECK(closed_within(c2, 3000));
    close(c1);
    close(c2);
    close(c3);
    close(c4);
    close(c5);
    close(c6);
}

static void test_global_limit_evicts_oldest_idle(void)
{
    server_limits_t l = limits();
    l.max_connections = 3;
    run(sc_global_lru, &l);
}

/* ---- Several listeners, one set of limits ------------------------------------------------- */

static void sc_listeners_share_limits(void)
{
    /* Per address (2): one idle connection of 127.0.0.1 on listener 1, one on listener 2; a
     * third on listener 0 closes the older. Each request knows its listener. */
    int a1 = dial_on("127.0.0.1", app.ports[1]);
    CHECK_INT(get(a1, "/li"), 201);
    int a2 = dial_on("127.0.0.1", app.ports[2]);
    CHECK_INT(get(a2, "/li"), 202);
    int a3 = dial_on("127.0.0.1", app.ports[0]);
    CHECK(closed_within(a1, 3000));
    CHECK_INT(get(a3, "/li"), 200);
    /* Both busy: a third from that address on any listener is refused at once. */
    send_str(a2, "GET /pending HTTP/1.1\r\n");
    send_str(a3, "GET /pending HTTP/1.1\r\n");
    test_sleep_ms(100);
    for (int li = 0; li < 3; li++) {
        int a4 = dial_on("127.0.0.1", app.ports[li]);
        CHECK(closed_within(a4, 3000));
        close(a4);
    }
    /* Globally (4): two more clients on listeners 1 and 2 fill it; a fifth on listener 0
     * closes the oldest idle one (b1), whatever listener it came in on. */
    int b1 = dial_on("127.0.0.2", app.ports[2]);
    CHECK_INT(get(b1, "/li"), 202);
    int b2 = dial_on("127.0.0.3", app.ports[1]);
    CHECK_INT(get(b2, "/li"), 201);
    int b3 = dial_on("127.0.0.4", app.ports[0]);
    CHECK(closed_within(b1, 3000));
    CHECK_INT(get(b3, "/li"), 200);
    send_str(a2, "Host: x\r\n\r\n");
    send_str(a3, "Host: x\r\n\r\n");
    CHECK_INT(read_response(a2), 200);
    CHECK_INT(read_response(a3), 200);
    close(a1);
    close(a2);
    close(a3);
    close(b1);
    close(b2);
    close(b3);
}

static void test_listeners_share_limits(void)
{
    server_limits_t l = limits();
    l.max_connections_per_client = 2;
    l.max_connections = 4;
    extra_listeners = 2;
    run(sc_listeners_share_limits, &l);
    extra_listeners = 0;
}

/* At max_connections, the oldest idle connection closed to admit a newcomer may be the
 * newcomer's own address's last one: its entry in the per-address table goes with it, and the
 * newcomer must be counted in a fresh one (it was counted in the freed entry). */
static void sc_evicts_own_last(void)
{
    int x1 = dial_on("127.0.0.1", app.ports[1]);
    CHECK_INT(get(x1, "/li"), 201);
    int y1 = dial_from("127.0.0.2");
    CHECK_INT(get(y1, "/y"), 200);
    int x2 = dial_from("127.0.0.1");
    CHECK(closed_within(x1, 3000));
    CHECK_INT(get(x2, "/x2"), 200);
    /* The counts add up: 127.0.0.1 has one connection (x2), so three more fit its limit of 4
     * once y1 is gone (max_connections 2 closes idle ones as they come). */
    close(y1);
    test_sleep_ms(100);
    int x3 = dial_from("127.0.0.1");
    CHECK_INT(get(x3, "/x3"), 200);
    CHECK_INT(get(x2, "/x2"), 200);
    close(x1);
    close(x2);
    close(x3);
}

static void test_evicts_own_last(void)
{
    server_limits_t l = limits();
    l.max_connections_per_client = 4;
    l.max_connections = 2;
    extra_listeners = 1;
    run(sc_evicts_own_last, &l);
    extra_listeners = 0;
}

/* The bound on listeners: SERVER_MAX_LISTENERS, then -EMFILE. */
static void test_listener_bound(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_opts_t o = {.loop = &loop,
                       .limits = limits(),
                       .on_request = on_request,
                       .on_complete = on_complete,
                       .data_size = sizeof(call_t)};
    server_t *srv = NULL;
    CHECK_INT(server_create(&srv, &o), 0);
    char bound[64];
    for (int i = 0; i < SERVER_MAX_LISTENERS; i++)
        CHECK_INT(server_listen(srv, "127.0.0.1", 0, NULL, bound, sizeof bound), i);
    CHECK_INT(server_listen(srv, "127.0.0.1", 0, NULL, bound, sizeof bound), -EMFILE);
    server_shutdown(srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    server_destroy(srv);
    CHECK_INT(uv_loop_close(&loop), 0);
}

/* ---- The fd budget ---------------------------------------------------------------------------- */

static void sc_fd_budget(void)
{
    /* Budget 4: c1's request in progress holds 3 (its socket, 2 for the request), c2's socket
     * the fourth; c2's request finds no room (nothing idle to close) and is answered 503. */
    int c1 = dial();
    send_str(c1, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    test_sleep_ms(50);
    int c2 = dial();
    CHECK_INT(get(c2, "/a"), 503);
    CHECK(closed_within(c2, 3000));
    CHECK_INT(read_response(c1), 200);
    /* c1 idle again: a new request fits (2 sockets + 2). */
    int c3 = dial();
    CHECK_INT(get(c3, "/b"), 200);
    /* c4 and c3's next request in progress need the room of the idle c1: it is closed. */
    int c4 = dial();
    send_str(c3, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    test_sleep_ms(50);
    CHECK(closed_within(c1, 3000));
    CHECK_INT(read_response(c3), 200);
    close(c1);
    close(c2);
    close(c3);
    close(c4);
}

static void test_fd_budget(void)
{
    server_limits_t l = limits();
    l.max_fds = 4;
    run(sc_fd_budget, &l);
    CHECK_INT(app.busy, 1);
}

/* ---- accept(2) out of fds ---------------------------------------------------------------------- */

enum { EXHAUST_MS = 1000, EMFILE_CLIENTS = 5 };

typedef struct child {
    uv_loop_t loop;
    server_t *srv;
    uv_timer_t release;
    uv_poll_t ctl;
    int spare[512];
    int nspare;
    double cpu_ms; /* spent while the fds were exhausted */
    struct rusage ru0;
} child_t;

static double cpu_ms_since(const struct rusage *a)
{
    struct rusage b;
    getrusage(RUSAGE_SELF, &b);
    return (double)(b.ru_utime.tv_sec - a->ru_utime.tv_sec) * 1e3 +
           (double)(b.ru_utime.tv_usec - a->ru_utime.tv_usec) / 1e3 +
           (double)(b.ru_stime.tv_sec - a->ru_stime.tv_sec) * 1e3 +
           (double)(b.ru_stime.tv_usec - a->ru_stime.tv_usec) / 1e3;
}

static void on_release(uv_timer_t *t)
{
    child_t *ch = t->data;
    ch->cpu_ms = cpu_ms_since(&ch->ru0);
    for (int i = 0; i < ch->nspare; i++)
        close(ch->spare[i]);
    ch->nspare = 0;
    uv_close((uv_handle_t *)t, NULL);
}

static void on_ctl(uv_poll_t *h, int status, int events)
{
    child_t *ch = h->data;
    (void)status;
    (void)events;
    server_shutdown(ch->srv);
    uv_close((uv_handle_t *)h, NULL);
}

/* The child: a server whose process has no fd left for EXHAUST_MS. Exit status 0, or 3 when
 * the accept loop burnt CPU while it waited. */
static void child_main(int port_w, int ctl_r)
{
    static child_t ch;
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    rl.rlim_cur = 256;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    uv_loop_init(&ch.loop);
    server_limits_t l = limits();
    l.max_fds = 1000; /* the budget would stop accepting before the fds run out */
    server_opts_t o = {.loop = &ch.loop,
                       .limits = l,
                       .on_request = on_request,
                       .on_complete = on_complete,
                       .data_size = sizeof(call_t)};
    app.loop = &ch.loop;
    CHECK_INT(server_create(&ch.srv, &o), 0);
    char bound[64];
    CHECK_INT(server_listen(ch.srv, "127.0.0.1", 0, NULL, bound, sizeof bound), 0);
    uv_timer_init(&ch.loop, &ch.release);
    ch.release.data = &ch;
    uv_poll_init(&ch.loop, &ch.ctl, ctl_r);
    ch.ctl.data = &ch;
    uv_poll_start(&ch.ctl, UV_READABLE, on_ctl);
    while (ch.nspare < (int)ARRAY_SIZE(ch.spare)) {
        int fd = dup(port_w);
        if (fd < 0)
            break;
        ch.spare[ch.nspare++] = fd;
    }
    CHECK_INT(errno, EMFILE);
    uint16_t port = (uint16_t)strtol(strrchr(bound, ':') + 1, NULL, 10);
    getrusage(RUSAGE_SELF, &ch.ru0);
    CHECK(write(port_w, &port, sizeof port) == sizeof port);
    uv_timer_start(&ch.release, on_release, EXHAUST_MS, 0);
    uv_run(&ch.loop, UV_RUN_DEFAULT);
    server_destroy(ch.srv);
    fprintf(stderr, "child: %.1f ms of CPU in %d ms without fds\n", ch.cpu_ms, EXHAUST_MS);
    /* A spinning accept loop burns the whole window; a paused one, a few wakeups. */
    _exit(ch.cpu_ms < EXHAUST_MS / 4.0 ? 0 : 3);
}

static int count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

static void test_emfile_pauses_accept(void)
{
    char logpath[256];
    snprintf(logpath, sizeof logpath, "%s/child.log", test_tmpdir("winch-emfile"));
    int portp[2], ctl[2];
    CHECK(pipe(portp) == 0 && pipe(ctl) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(portp[0]);
        close(ctl[1]);
        int lf = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(lf, STDERR_FILENO);
        close(lf);
        child_main(portp[1], ctl[0]);
    }
    close(portp[1]);
    close(ctl[0]);
    uint16_t port = 0;
    CHECK(read(portp[0], &port, sizeof port) == sizeof port);
    close(portp[0]);
    app.family = AF_INET;
    app.port = port;
    /* The kernel completes these handshakes; the child cannot accept them yet. */
    int fds[EMFILE_CLIENTS];
    for (int i = 0; i < EMFILE_CLIENTS; i++) {
        fds[i] = dial();
        send_str(fds[i], "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    for (int i = 0; i < EMFILE_CLIENTS; i++) {
        CHECK_INT(read_response(fds[i]), 200);
        close(fds[i]);
    }
    close(ctl[1]);
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    int lines = count_lines(logpath, "accept: ");
    fprintf(stderr, "child exit %d, %d accept lines in its log\n",
            WIFEXITED(st) ? WEXITSTATUS(st) : -1, lines);
    CHECK(WIFEXITED(st));
    CHECK_INT(WEXITSTATUS(st), 0);
    CHECK_INT(lines, 1);
    CHECK_INT(count_lines(logpath, "Too many open files"), 1);
}

static const test_case_t cases[] = {
    TEST_CASE(test_header_timeout_from_accept),
    TEST_CASE(test_per_address_limit),
    TEST_CASE(test_per_address_limit_v6),
    TEST_CASE(test_global_limit_evicts_oldest_idle),
    TEST_CASE(test_fd_budget),
    TEST_CASE(test_emfile_pauses_accept),
    TEST_CASE(test_listeners_share_limits),
    TEST_CASE(test_evicts_own_last),
    TEST_CASE(test_listener_bound),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
