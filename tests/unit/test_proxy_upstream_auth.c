/* upstream: redirects, Bearer and Basic auth, rate-limit headers and the origin table, against
 * scripted servers on 127.0.0.1 (threads and blocking sockets, independent of the loop under
 * test). Listener 0 is the registry (the configured upstream), listener 1 the token server,
 * listeners 2.. are "CDN" origins that refuse any request carrying Authorization, the way
 * pre-signed S3/R2 URLs do. Every request every listener sees is recorded. */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "unit/check.h"

#define NLISTEN 24
#define L_REG 0
#define L_TOK 1
#define L_CDN 2 /* first CDN listener */

static uv_loop_t *loop;

/* ---- Scripted servers ------------------------------------------------------------------- */

typedef struct seen {
    int sid;
    char method[8];
    char target[600];
    char auth[200]; /* the Authorization value, "" when absent */
} seen_t;

static int lfd[NLISTEN];
static uint16_t lport[NLISTEN];
static uint16_t dead_port; /* nothing listens there */
static pthread_t accept_thread;
static atomic_int stop_flag;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static seen_t *seen_log;
static int nseen;
#define MAX_SEEN 8192
static int closed_by_client[NLISTEN]; /* connections the client closed, per listener */

/* Knobs, set by the tests. */
static atomic_int tok_gen = 1;       /* the registry accepts "Bearer tok-<gen>" only */
static atomic_int tok_mode;          /* 0 normal, 1 expired on arrival, 2 answer 500, 3 hang */
static atomic_int tok_release;       /* ends a hang */
static atomic_int reject_all;        /* the registry refuses every token */
static atomic_int access_token_only; /* answer {"access_token": ...} */

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

/* Reads a request head; fills method, target and the Authorization value. -1 on EOF. */
static int read_head(int fd, char *method, char *target, size_t tcap, char *auth, size_t acap)
{
    char head[16384];
    size_t n = 0;
    while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
        if (n + 1 >= sizeof head)
            return -1;
        ssize_t k = recv(fd, head + n, 1, 0); /* a byte at a time: keep-alive stays exact */
        if (k <= 0)
            return -1;
        n += (size_t)k;
    }
    head[n] = '\0';
    char *sp1 = strchr(head, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || (size_t)(sp1 - head) >= 8 || (size_t)(sp2 - sp1 - 1) >= tcap)
        return -1;
    memcpy(method, head, (size_t)(sp1 - head));
    method[sp1 - head] = '\0';
    memcpy(target, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    target[sp2 - sp1 - 1] = '\0';
    auth[0] = '\0';
    for (char *l = strstr(head, "\r\n") + 2; *l && strncmp(l, "\r\n", 2) != 0;
         l = strstr(l, "\r\n") + 2) {
        if (strncasecmp(l, "Authorization:", 14) == 0) {
            const char *v = l + 14;
            while (*v == ' ')
                v++;
            size_t k = (size_t)(strstr(v, "\r\n") - v);
            if (k >= acap)
                k = acap - 1;
            memcpy(auth, v, k);
            auth[k] = '\0';
        }
    }
    return 0;
}

static int respond(int fd, bool head_only, int status, const char *headers, const char *body)
{
    char h[4096];
    size_t bl = body ? strlen(body) : 0;
    snprintf(h, sizeof h, "HTTP/1.1 %d X\r\n%sContent-Length: %zu\r\n\r\n", status,
             headers ? headers : "", bl);
    if (write_all(fd, h, strlen(h)) < 0)
        return -1;
    if (!head_only && bl && write_all(fd, body, bl) < 0)
        return -1;
    return 0;
}

static int count_seen(int sid, const char *prefix)
{
    pthread_mutex_lock(&mu);
    int c = 0;
    for (int i = 0; i < nseen; i++)
        if ((sid < 0 || seen_log[i].sid == sid) &&
            (!prefix || strncmp(seen_log[i].target, prefix, strlen(prefix)) == 0))
            c++;
    pthread_mutex_unlock(&mu);
    return c;
}

/* The i-th (0-based) request seen by sid whose target starts with prefix, copied. */
static bool nth_seen(int sid, const char *prefix, int i, seen_t *out)
{
    pthread_mutex_lock(&mu);
    bool ok = false;
    for (int k = 0; k < nseen; k++) {
        if (seen_log[k].sid == sid && strncmp(seen_log[k].target, prefix, strlen(prefix)) == 0 &&
            i-- == 0) {
            *out = seen_log[k];
            ok = true;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
    return ok;
}

static const char *const b64_user_pass = "dXNlcjpwYXNz"; /* "user:pass" */

/* The token server. */
static int serve_token(int fd, const char *target, const char *auth)
{
    (void)auth;
    if (strncmp(target, "/token?", 7) != 0)
        return respond(fd, false, 404, NULL, "no");
    int mode = atomic_load(&tok_mode);
    if (mode == 3) {
        while (!atomic_load(&tok_release) && !atomic_load(&stop_flag))
            sleep_ms(5);
        mode = 0;
    }
    if (mode == 2)
        return respond(fd, false, 500, NULL, "broken");
    if (!strstr(target, "service=test"))
        return respond(fd, false, 400, NULL, "service?");
    char body[512];
    int gen = atomic_load(&tok_gen);
    const char *issued = mode == 1 ? ",\"issued_at\":\"2001-01-01T00:00:00Z\"" : "";
    if (atomic_load(&access_token_only))
        snprintf(body, sizeof body, "{\"access_token\":\"tok-%d\",\"expires_in\":300%s}", gen,
                 issued);
    else
        snprintf(body, sizeof body, "{\"token\":\"tok-%d\",\"expires_in\":300%s}", gen, issued);
    return respond(fd, false, 200, "Content-Type: application/json\r\n", body);
}

/* The registry. */
static int serve_registry(int fd, const char *method, const char *target, const char *auth)
{
    bool head = strcmp(method, "HEAD") == 0;
    char hdrs[2048];
    int n = 0;
    char name[256];
    if (sscanf(target, "/r/loop/%d", &n) == 1) {
        snprintf(hdrs, sizeof hdrs, "Location: /r/loop/%d\r\n", n + 1);
        return respond(fd, head, 302, hdrs, "loop");
    }
    if (sscanf(target, "/r/abs/%d", &n) == 1) {
        snprintf(hdrs, sizeof hdrs, "Location: http://127.0.0.1:%u/cdn/%d?X-Amz-Signature=s\r\n",
                 (unsigned)lport[L_CDN], n);
        return respond(fd, head, 307, hdrs, "go");
    }
    if (sscanf(target, "/r/origin/%d", &n) == 1) {
        snprintf(hdrs, sizeof hdrs, "Location: http://127.0.0.1:%u/cdn/o%d\r\n",
                 (unsigned)lport[L_CDN + n], n);
        return respond(fd, head, 302, hdrs, NULL);
    }
    if (strcmp(target, "/r/rel") == 0)
        return respond(fd, head, 302, "Location: /final?x=1\r\n", NULL);
    if (strcmp(target, "/r/relpath/a/b") == 0)
        return respond(fd, head, 301, "Location: ../c#frag\r\n", NULL);
    if (strcmp(target, "/r/303") == 0)
        return respond(fd, head, 303, "Location: /final\r\n", NULL);
    if (strcmp(target, "/r/308") == 0)
        return respond(fd, head, 308, "Location: /final\r\n", NULL);
    if (strcmp(target, "/r/bad") == 0)
        return respond(fd, head, 302, "Location: ftp://127.0.0.1/x\r\n", NULL);
    if (strcmp(target, "/r/userinfo") == 0)
        return respond(fd, head, 302, "Location: http://u:p@127.0.0.1/x\r\n", NULL);
    if (strcmp(target, "/r/https") == 0) {
        snprintf(hdrs, sizeof hdrs, "Location: https://127.0.0.1:%u/x\r\n", (unsigned)lport[L_CDN]);
        return respond(fd, head, 302, hdrs, NULL);
    }
    if (strcmp(target, "/r/big") == 0) {
        /* A redirect with a body too big to drain: the client drops the connection. */
        char *big = malloc(200001);
        memset(big, 'b', 200000);
        big[200000] = '\0';
        int rc = respond(fd, head, 307, "Location: /final\r\n", big);
        free(big);
        return rc;
    }
    if (strcmp(target, "/r/chunked") == 0) {
        const char *r = "HTTP/1.1 307 X\r\nLocation: /final\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "5\r\nhello\r\n0\r\n\r\n";
        return write_all(fd, r, strlen(r));
    }
    if (strncmp(target, "/final", 6) == 0) {
        snprintf(hdrs, sizeof hdrs, "X-Saw-Auth: %s\r\n", auth[0] ? "yes" : "no");
        return respond(fd, head, 200, hdrs, "final");
    }
    if (strcmp(target, "/r/relpath/c") == 0)
        return respond(fd, head, 200, NULL, "c");
    if (strcmp(target, "/limited") == 0)
        return respond(fd, head, 429,
                       "Retry-After: 7\r\nRateLimit-Limit: 100;w=21600\r\n"
                       "RateLimit-Remaining: 0;w=21600\r\nDocker-RateLimit-Source: 192.0.2.1\r\n",
                       "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\"}]}");
    if (strncmp(target, "/basic/", 7) == 0) {
        char want[64];
        snprintf(want, sizeof want, "Basic %s", b64_user_pass);
        if (strcmp(auth, want) != 0)
            return respond(fd, head, 401, "WWW-Authenticate: Basic realm=\"registry\"\r\n",
                           "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}");
        return respond(fd, head, 200, NULL, "basic-ok");
    }
    /* /v2/<name>/<kind>/<ref>, behind Bearer tokens. */
    char kind[32], ref[256];
    if (sscanf(target, "/v2/%255[^?]", name) == 1) {
        char *slash2 = strrchr(name, '/');
        if (!slash2)
            return respond(fd, head, 404, NULL, "?");
        snprintf(ref, sizeof ref, "%s", slash2 + 1);
        *slash2 = '\0';
        char *slash1 = strrchr(name, '/');
        if (!slash1)
            return respond(fd, head, 404, NULL, "?");
        snprintf(kind, sizeof kind, "%s", slash1 + 1);
        *slash1 = '\0';
        char want[64];
        snprintf(want, sizeof want, "Bearer tok-%d", atomic_load(&tok_gen));
        if (atomic_load(&reject_all) || strcmp(auth, want) != 0) {
            unsigned rp = strncmp(name, "dead/", 5) == 0 ? dead_port : lport[L_TOK];
            snprintf(hdrs, sizeof hdrs,
                     "Content-Type: application/json\r\n"
                     "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:%u/token\","
                     "service=\"test\",scope=\"repository:%s:pull\"%s\r\n",
                     rp, name, auth[0] ? ",error=\"invalid_token\"" : "");
            return respond(fd, head, 401, hdrs, "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}");
        }
        if (strcmp(kind, "blobs") == 0) {
            snprintf(hdrs, sizeof hdrs,
                     "Location: http://127.0.0.1:%u/cdn/%s?X-Amz-Signature=s\r\n",
                     (unsigned)lport[L_CDN], ref);
            return respond(fd, head, 307, hdrs, NULL);
        }
        snprintf(hdrs, sizeof hdrs,
                 "Content-Type: application/json\r\nRateLimit-Limit: 100;w=21600\r\n"
                 "RateLimit-Remaining: 42;w=21600\r\nDocker-RateLimit-Source: 192.0.2.1\r\n");
        char body[600];
        snprintf(body, sizeof body, "manifest:%s:%s", name, ref);
        return respond(fd, head, 200, hdrs, body);
    }
    return respond(fd, head, 404, NULL, "not found");
}

/* A CDN: pre-signed URLs, so any Authorization is an error. */
static int serve_cdn(int fd, const char *method, const char *target, const char *auth)
{
    bool head = strcmp(method, "HEAD") == 0;
    if (auth[0])
        return respond(fd, head, 400, NULL, "Only one auth mechanism allowed");
    char body[700];
    snprintf(body, sizeof body, "cdn:%.*s", (int)strcspn(target, "?"), target);
    return respond(fd, head, 200, NULL, body);
}

typedef struct conn_arg {
    int fd;
    int sid;
} conn_arg_t;

static void *serve_conn(void *p)
{
    conn_arg_t a = *(conn_arg_t *)p;
    free(p);
    int one = 1;
    setsockopt(a.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (;;) {
        seen_t s;
        memset(&s, 0, sizeof s);
        s.sid = a.sid;
        if (read_head(a.fd, s.method, s.target, sizeof s.target, s.auth, sizeof s.auth) < 0) {
            pthread_mutex_lock(&mu);
            closed_by_client[a.sid]++;
            pthread_mutex_unlock(&mu);
            break;
        }
        pthread_mutex_lock(&mu);
        if (nseen < MAX_SEEN)
            seen_log[nseen++] = s;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        int rc;
        if (a.sid == L_REG)
            rc = serve_registry(a.fd, s.method, s.target, s.auth);
        else if (a.sid == L_TOK)
            rc = serve_token(a.fd, s.target, s.auth);
        else
            rc = serve_cdn(a.fd, s.method, s.target, s.auth);
        if (rc < 0)
            break;
    }
    close(a.fd);
    return NULL;
}

static void *accept_loop(void *unused)
{
    (void)unused;
    struct pollfd pf[NLISTEN];
    for (int i = 0; i < NLISTEN; i++) {
        pf[i].fd = lfd[i];
        pf[i].events = POLLIN;
    }
    while (!atomic_load(&stop_flag)) {
        if (poll(pf, NLISTEN, 50) <= 0)
            continue;
        for (int i = 0; i < NLISTEN; i++) {
            if (!(pf[i].revents & POLLIN))
                continue;
            int fd = accept(lfd[i], NULL, NULL);
            if (fd < 0)
                continue;
            conn_arg_t *a = malloc(sizeof *a);
            a->fd = fd;
            a->sid = i;
            pthread_t t;
            pthread_create(&t, NULL, serve_conn, a);
            pthread_detach(t);
        }
    }
    return NULL;
}

static int listen_any(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_INT(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    CHECK_INT(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

static void servers_start(void)
{
    seen_log = calloc(MAX_SEEN, sizeof *seen_log);
    CHECK(seen_log != NULL);
    for (int i = 0; i < NLISTEN; i++) {
        lfd[i] = listen_any(&lport[i]);
        CHECK_INT(listen(lfd[i], 64), 0);
    }
    /* A port that was free a moment ago and is not listened on. */
    int d = listen_any(&dead_port);
    close(d);
    CHECK_INT(pthread_create(&accept_thread, NULL, accept_loop, NULL), 0);
}

static void servers_stop(void)
{
    atomic_store(&stop_flag, 1);
    pthread_join(accept_thread, NULL);
    for (int i = 0; i < NLISTEN; i++)
        close(lfd[i]);
}

/* ---- The client side -------------------------------------------------------------------- */

static config_t gcfg;
static config_upstream_t ucfg;
static char name_buf[64], host_buf[64];
static char user_buf[16], pass_buf[16];

static void config_defaults(void)
{
    memset(&gcfg, 0, sizeof gcfg);
    gcfg.upstream_connect_timeout_ms = 2000;
    gcfg.upstream_response_timeout_ms = 5000;
    gcfg.upstream_idle_timeout_ms = 5000;
    gcfg.upstream_keepalive_ms = 30000;
    gcfg.upstream_max_conns = 8;
    gcfg.upstream_max_redirects = 5;
    gcfg.max_header_bytes = 32768;
    memset(&ucfg, 0, sizeof ucfg);
    snprintf(host_buf, sizeof host_buf, "127.0.0.1");
    snprintf(name_buf, sizeof name_buf, "127.0.0.1:%u", (unsigned)lport[L_REG]);
    ucfg.name = name_buf;
    ucfg.host = host_buf;
    ucfg.port = lport[L_REG];
    ucfg.base_path = (char *)"";
}

static void with_credentials(void)
{
    snprintf(user_buf, sizeof user_buf, "user");
    snprintf(pass_buf, sizeof pass_buf, "pass");
    ucfg.username = user_buf;
    ucfg.password = pass_buf;
}

typedef struct res {
    upreq_t *req;
    int status;
    int headers_calls;
    int redirects;
    bool done;
    int done_status;
    char body[4096];
    size_t body_len;
    char retry_after[32];
    char www_auth[512];
    char saw_auth[8];
    bool cancel_in_headers;
} res_t;

static void on_headers(upreq_t *r, void *arg, int status)
{
    res_t *s = arg;
    s->status = status;
    s->headers_calls++;
    s->redirects = upreq_redirects(r);
    const char *v = upreq_header(r, "Retry-After");
    snprintf(s->retry_after, sizeof s->retry_after, "%s", v ? v : "");
    v = upreq_header(r, "WWW-Authenticate");
    snprintf(s->www_auth, sizeof s->www_auth, "%s", v ? v : "");
    v = upreq_header(r, "X-Saw-Auth");
    snprintf(s->saw_auth, sizeof s->saw_auth, "%s", v ? v : "");
    if (s->cancel_in_headers) {
        upreq_cancel(r);
        s->done = true;
    }
}

static void on_body(upreq_t *r, void *arg, const char *data, size_t len)
{
    res_t *s = arg;
    (void)r;
    if (len > sizeof s->body - 1 - s->body_len)
        len = sizeof s->body - 1 - s->body_len;
    memcpy(s->body + s->body_len, data, len);
    s->body_len += len;
    s->body[s->body_len] = '\0';
}

static void on_done(upreq_t *r, void *arg, int status)
{
    res_t *s = arg;
    (void)r;
    CHECK(!s->done);
    s->done = true;
    s->done_status = status;
}

static const upreq_cbs_t cbs = {.on_headers = on_headers, .on_body = on_body, .on_done = on_done};

static void run_until(bool (*pred)(void *), void *arg)
{
    uint64_t t0 = uv_hrtime();
    while (!pred(arg)) {
        uv_run(loop, UV_RUN_NOWAIT);
        sleep_ms(1);
        CHECK(uv_hrtime() - t0 < 20ull * 1000000000ull);
    }
}

static bool all_done(void *arg)
{
    res_t **v = arg;
    for (; *v; v++)
        if (!(*v)->done)
            return false;
    return true;
}

static void wait_done(res_t *s)
{
    res_t *v[2] = {s, NULL};
    run_until(all_done, v);
}

static upstream_t *make_upstream(void)
{
    upstream_t *u;
    CHECK_INT(upstream_create(&u, loop, &ucfg, &gcfg), 0);
    return u;
}

static void destroy_upstream(upstream_t *u)
{
    upstream_destroy(u);
    for (int i = 0; i < 10; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        sleep_ms(1);
    }
}

static void get(upstream_t *u, const char *method, const char *path, const char *const *hdrs,
                res_t *s)
{
    memset(s, 0, sizeof *s);
    CHECK_INT(upreq_start(&s->req, u, method, path, hdrs, &cbs, s), 0);
    CHECK(!s->done && s->headers_calls == 0);
    wait_done(s);
}

/* ---- Redirects --------------------------------------------------------------------------- */

static void test_redirects(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    res_t s;

    /* Relative, same origin: the caller sees only the final 200. */
    get(u, "GET", "/r/rel", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.headers_calls, 1);
    CHECK_INT(s.redirects, 1);
    CHECK_STR(s.body, "final");
    seen_t q;
    CHECK(nth_seen(L_REG, "/final", 0, &q));
    CHECK_STR(q.target, "/final?x=1");
    CHECK_STR(q.method, "GET");

    /* Relative path with dot segments and a fragment. */
    get(u, "GET", "/r/relpath/a/b", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "c");

    /* 303 and 308 on GET; HEAD stays HEAD through a 303. */
    get(u, "GET", "/r/303", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "final");
    get(u, "GET", "/r/308", NULL, &s);
    CHECK_INT(s.status, 200);
    int heads = 0;
    for (int i = 0; nth_seen(L_REG, "/final", i, &q); i++)
        heads += strcmp(q.method, "HEAD") == 0;
    CHECK_INT(heads, 0);
    get(u, "HEAD", "/r/303", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.body_len, 0);
    heads = 0;
    for (int i = 0; nth_seen(L_REG, "/final", i, &q); i++)
        heads += strcmp(q.method, "HEAD") == 0;
    CHECK_INT(heads, 1);

    /* Absolute, cross-origin: the caller's Authorization stays behind (the CDN answers 400
     * to any). */
    const char *hdrs[] = {"Authorization: Bearer caller-secret", "Accept: x/y", NULL};
    int cdn0 = count_seen(L_CDN, "/cdn/1");
    get(u, "GET", "/r/abs/1", hdrs, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "cdn:/cdn/1");
    CHECK_INT(count_seen(L_CDN, "/cdn/1") - cdn0, 1);
    CHECK(nth_seen(L_REG, "/r/abs/1", 0, &q));
    CHECK_STR(q.auth, "Bearer caller-secret"); /* it did reach the registry */
    CHECK(nth_seen(L_CDN, "/cdn/1", cdn0, &q));
    CHECK_STR(q.auth, "");
    CHECK_STR(q.target, "/cdn/1?X-Amz-Signature=s");

    /* Redirect bodies: a small chunked one is drained, a big one costs the connection. */
    get(u, "GET", "/r/chunked", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "final");
    get(u, "GET", "/r/big", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "final");

    /* Too many: after max redirects the caller sees the redirect itself. */
    int l0 = count_seen(L_REG, "/r/loop/");
    get(u, "GET", "/r/loop/0", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 302);
    CHECK_INT(s.redirects, 5);
    CHECK_INT(count_seen(L_REG, "/r/loop/") - l0, 6);
    CHECK_STR(s.body, "loop");

    /* Unusable targets are not followed. */
    get(u, "GET", "/r/bad", NULL, &s);
    CHECK_INT(s.status, 302);
    CHECK_INT(s.redirects, 0);
    get(u, "GET", "/r/userinfo", NULL, &s);
    CHECK_INT(s.status, 302);

    /* Only GET and HEAD follow. */
    get(u, "POST", "/r/rel", NULL, &s);
    CHECK_INT(s.status, 302);

    /* https targets need the TLS transport; without a TLS server there they fail. */
    get(u, "GET", "/r/https", NULL, &s);
    CHECK(s.done_status < 0);
    CHECK_INT(s.headers_calls, 0);
    destroy_upstream(u);

    /* upstream_max_redirects 0: nothing is followed. */
    config_defaults();
    gcfg.upstream_max_redirects = 0;
    u = make_upstream();
    get(u, "GET", "/r/rel", NULL, &s);
    CHECK_INT(s.status, 302);
    destroy_upstream(u);
}

static void test_origin_table(void)
{
    /* Twenty CDN origins, one after the other: the table holds 16 (the registry's included),
     * so idle connections of the least recently used ones are closed to make room, and a
     * forgotten origin comes back on demand. */
    config_defaults();
    upstream_t *u = make_upstream();
    int closed0 = 0;
    pthread_mutex_lock(&mu);
    for (int i = L_CDN; i < NLISTEN; i++)
        closed0 += closed_by_client[i];
    pthread_mutex_unlock(&mu);
    res_t s;
    char path[64], want[64];
    int n = NLISTEN - L_CDN;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "/r/origin/%d", i);
        get(u, "GET", path, NULL, &s);
        CHECK_INT(s.status, 200);
        snprintf(want, sizeof want, "cdn:/cdn/o%d", i);
        CHECK_STR(s.body, want);
    }
    get(u, "GET", "/r/origin/0", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "cdn:/cdn/o0");
    /* Give the servers a moment to see the closes. */
    int closed = 0;
    for (int t = 0; t < 200; t++) {
        uv_run(loop, UV_RUN_NOWAIT);
        closed = 0;
        pthread_mutex_lock(&mu);
        for (int i = L_CDN; i < NLISTEN; i++)
            closed += closed_by_client[i];
        pthread_mutex_unlock(&mu);
        if (closed - closed0 >= n + 1 - 15)
            break;
        sleep_ms(5);
    }
    printf("origin table: %d CDN origins used, %d idle connections closed by eviction\n", n,
           closed - closed0);
    CHECK(closed - closed0 >= n + 1 - 15);
    destroy_upstream(u);
}

/* ---- Bearer ------------------------------------------------------------------------------ */

static void test_bearer(void)
{
    config_defaults();
    atomic_store(&tok_mode, 0);
    upstream_t *u = make_upstream();
    res_t s;
    int t0 = count_seen(L_TOK, "/token");
    int r0 = count_seen(L_REG, "/v2/lab/a/");

    /* Cold: 401, one token fetch, the retry with the token. */
    get(u, "GET", "/v2/lab/a/manifests/1", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.headers_calls, 1);
    CHECK_STR(s.body, "manifest:lab/a:1");
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 1);
    CHECK_INT(count_seen(L_REG, "/v2/lab/a/") - r0, 2);
    seen_t q;
    CHECK(nth_seen(L_TOK, "/token", t0, &q));
    CHECK_STR(q.target, "/token?service=test&scope=repository%3Alab%2Fa%3Apull");
    CHECK_STR(q.auth, ""); /* anonymous: no credentials configured */
    CHECK(nth_seen(L_REG, "/v2/lab/a/", r0 + 1, &q));
    CHECK_STR(q.auth, "Bearer tok-1");

    /* Warm: the cached token goes up front, no 401, no token request. */
    get(u, "HEAD", "/v2/lab/a/manifests/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 1);
    CHECK_INT(count_seen(L_REG, "/v2/lab/a/") - r0, 3);

    /* A blob: the registry redirects to the CDN, which must not get the token. */
    int c0 = count_seen(L_CDN, "/cdn/");
    get(u, "GET", "/v2/lab/a/blobs/sha256:b1", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 200);
    CHECK_INT(s.redirects, 1);
    CHECK_STR(s.body, "cdn:/cdn/sha256:b1");
    CHECK_INT(count_seen(L_CDN, "/cdn/") - c0, 1);
    CHECK(nth_seen(L_CDN, "/cdn/", c0, &q));
    CHECK_STR(q.auth, "");
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 1);

    /* Rate-limit headers of the registry's answers are kept. */
    upstream_ratelimit_t rl;
    CHECK(upstream_ratelimit(u, &rl));
    CHECK_INT(rl.limit, 100);
    CHECK_INT(rl.remaining, 42);
    CHECK_INT(rl.window_s, 21600);
    CHECK_STR(rl.source, "192.0.2.1");

    /* Another repository needs its own token. */
    get(u, "GET", "/v2/lab/other/manifests/1", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 2);

    /* The registry stops accepting the token (rotated): the proactive token gets a 401, the
     * cached one is dropped, a new one is fetched once, the retry succeeds. */
    atomic_store(&tok_gen, 2);
    r0 = count_seen(L_REG, "/v2/lab/a/");
    get(u, "GET", "/v2/lab/a/manifests/3", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 3);
    CHECK_INT(count_seen(L_REG, "/v2/lab/a/") - r0, 2);
    CHECK(nth_seen(L_REG, "/v2/lab/a/", count_seen(L_REG, "/v2/lab/a/") - 1, &q));
    CHECK_STR(q.auth, "Bearer tok-2");

    /* A second 401 after a fresh token reaches the caller; no third attempt. */
    atomic_store(&reject_all, 1);
    r0 = count_seen(L_REG, "/v2/lab/a/");
    get(u, "GET", "/v2/lab/a/manifests/4", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 401);
    CHECK(strstr(s.www_auth, "Bearer realm=") != NULL);
    CHECK_INT(count_seen(L_REG, "/v2/lab/a/") - r0, 2);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 4);
    atomic_store(&reject_all, 0);
    destroy_upstream(u);
}

static bool five_done(void *arg)
{
    return all_done(arg);
}

static void test_bearer_single_flight(void)
{
    config_defaults();
    atomic_store(&access_token_only, 1); /* the OAuth2 spelling works too */
    upstream_t *u = make_upstream();
    int t0 = count_seen(L_TOK, "/token");
    res_t s[5];
    res_t *v[6];
    for (int i = 0; i < 5; i++) {
        memset(&s[i], 0, sizeof s[i]);
        char path[64];
        snprintf(path, sizeof path, "/v2/lab/sf/manifests/%d", i);
        CHECK_INT(upreq_start(&s[i].req, u, "GET", path, NULL, &cbs, &s[i]), 0);
        v[i] = &s[i];
    }
    v[5] = NULL;
    run_until(five_done, v);
    for (int i = 0; i < 5; i++) {
        CHECK_INT(s[i].done_status, 0);
        CHECK_INT(s[i].status, 200);
    }
    printf("single flight: 5 concurrent 401s, %d token request(s)\n",
           count_seen(L_TOK, "/token") - t0);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 1);
    atomic_store(&access_token_only, 0);
    destroy_upstream(u);
}

static void test_bearer_expiry(void)
{
    /* Tokens that arrive already expired (issued_at long ago) serve the request they were
     * fetched for, but are never reused: each request fetches again. */
    config_defaults();
    atomic_store(&tok_mode, 1);
    upstream_t *u = make_upstream();
    int t0 = count_seen(L_TOK, "/token");
    int r0 = count_seen(L_REG, "/v2/lab/exp/");
    res_t s;
    get(u, "GET", "/v2/lab/exp/manifests/1", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 1);
    get(u, "GET", "/v2/lab/exp/manifests/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 2);
    CHECK_INT(count_seen(L_REG, "/v2/lab/exp/") - r0, 4); /* each: 401 + retry */
    /* Fresh tokens again: one more fetch, then reuse. */
    atomic_store(&tok_mode, 0);
    get(u, "GET", "/v2/lab/exp/manifests/3", NULL, &s);
    get(u, "GET", "/v2/lab/exp/manifests/4", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 3);
    destroy_upstream(u);
}

static void test_bearer_failures(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    res_t s;

    /* The token endpoint answers 500: the caller sees the registry's 401 (headers only). */
    atomic_store(&tok_mode, 2);
    get(u, "GET", "/v2/lab/f/manifests/1", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 401);
    CHECK_INT(s.body_len, 0);
    CHECK(strstr(s.www_auth, "service=\"test\"") != NULL);
    atomic_store(&tok_mode, 0);

    /* The realm is unreachable: the caller gets the transport error. */
    get(u, "GET", "/v2/dead/x/manifests/1", NULL, &s);
    CHECK_INT(s.done_status, -ECONNREFUSED);
    CHECK_INT(s.headers_calls, 0);

    /* Cancelled while waiting for a token: no callback, and the fetch still fills the
     * cache for the next request. */
    atomic_store(&tok_mode, 3);
    atomic_store(&tok_release, 0);
    int t0 = count_seen(L_TOK, "/token");
    memset(&s, 0, sizeof s);
    CHECK_INT(upreq_start(&s.req, u, "GET", "/v2/lab/c/manifests/1", NULL, &cbs, &s), 0);
    for (int i = 0; i < 4000 && count_seen(L_TOK, "/token") == t0; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        sleep_ms(1);
    }
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 1);
    upreq_cancel(s.req);
    atomic_store(&tok_release, 1);
    for (int i = 0; i < 100; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        sleep_ms(2);
    }
    CHECK(!s.done);
    CHECK_INT(s.headers_calls, 0);
    atomic_store(&tok_mode, 0);
    int r0 = count_seen(L_REG, "/v2/lab/c/");
    get(u, "GET", "/v2/lab/c/manifests/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(count_seen(L_REG, "/v2/lab/c/") - r0, 1);
    CHECK_INT(count_seen(L_TOK, "/token") - t0, 1);

    /* Cancel from on_headers of a replayed 401. */
    atomic_store(&tok_mode, 2);
    memset(&s, 0, sizeof s);
    s.cancel_in_headers = true;
    CHECK_INT(upreq_start(&s.req, u, "GET", "/v2/lab/g/manifests/1", NULL, &cbs, &s), 0);
    wait_done(&s);
    CHECK_INT(s.status, 401);
    atomic_store(&tok_mode, 0);

    /* Destroyed while a token fetch is in flight (its waiter cancelled first). */
    atomic_store(&tok_mode, 3);
    atomic_store(&tok_release, 0);
    t0 = count_seen(L_TOK, "/token");
    memset(&s, 0, sizeof s);
    CHECK_INT(upreq_start(&s.req, u, "GET", "/v2/lab/h/manifests/1", NULL, &cbs, &s), 0);
    for (int i = 0; i < 4000 && count_seen(L_TOK, "/token") == t0; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        sleep_ms(1);
    }
    upreq_cancel(s.req);
    destroy_upstream(u);
    atomic_store(&tok_release, 1);
    atomic_store(&tok_mode, 0);
    CHECK(!s.done);
}

static void test_token_with_credentials(void)
{
    /* With credentials configured, the token request carries them as Basic. */
    config_defaults();
    with_credentials();
    upstream_t *u = make_upstream();
    int t0 = count_seen(L_TOK, "/token");
    res_t s;
    get(u, "GET", "/v2/lab/cred/manifests/1", NULL, &s);
    CHECK_INT(s.status, 200);
    seen_t q;
    CHECK(nth_seen(L_TOK, "/token", t0, &q));
    char want[64];
    snprintf(want, sizeof want, "Basic %s", b64_user_pass);
    CHECK_STR(q.auth, want);
    destroy_upstream(u);
}

/* ---- Basic ------------------------------------------------------------------------------- */

static void test_basic(void)
{
    res_t s;
    /* No credentials: the 401 reaches the caller after one request. */
    config_defaults();
    upstream_t *u = make_upstream();
    int r0 = count_seen(L_REG, "/basic/");
    get(u, "GET", "/basic/1", NULL, &s);
    CHECK_INT(s.status, 401);
    CHECK_INT(count_seen(L_REG, "/basic/") - r0, 1);
    destroy_upstream(u);

    /* Credentials: 401, then the retry with Basic; afterwards Basic goes up front. */
    config_defaults();
    with_credentials();
    u = make_upstream();
    r0 = count_seen(L_REG, "/basic/");
    get(u, "GET", "/basic/2", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_STR(s.body, "basic-ok");
    CHECK_INT(count_seen(L_REG, "/basic/") - r0, 2);
    get(u, "GET", "/basic/3", NULL, &s);
    CHECK_INT(s.status, 200);
    CHECK_INT(count_seen(L_REG, "/basic/") - r0, 3);
    /* Basic is the registry's: a redirect to another origin leaves it behind. */
    int c0 = count_seen(L_CDN, "/cdn/");
    get(u, "GET", "/r/abs/9", NULL, &s);
    CHECK_INT(s.status, 200);
    seen_t q;
    CHECK(nth_seen(L_CDN, "/cdn/", c0, &q));
    CHECK_STR(q.auth, "");
    destroy_upstream(u);

    /* Wrong credentials: one retry, then the 401. */
    config_defaults();
    with_credentials();
    snprintf(pass_buf, sizeof pass_buf, "wrong");
    u = make_upstream();
    r0 = count_seen(L_REG, "/basic/");
    get(u, "GET", "/basic/4", NULL, &s);
    CHECK_INT(s.status, 401);
    CHECK_INT(count_seen(L_REG, "/basic/") - r0, 2);
    destroy_upstream(u);
}

/* ---- 429 ----------------------------------------------------------------------------------- */

static void test_429(void)
{
    config_defaults();
    upstream_t *u = make_upstream();
    upstream_ratelimit_t rl;
    CHECK(!upstream_ratelimit(u, &rl));
    res_t s;
    get(u, "GET", "/limited", NULL, &s);
    CHECK_INT(s.done_status, 0);
    CHECK_INT(s.status, 429);
    CHECK_STR(s.retry_after, "7");
    CHECK(upstream_ratelimit(u, &rl));
    CHECK_INT(rl.limit, 100);
    CHECK_INT(rl.remaining, 0);
    CHECK_INT(rl.window_s, 21600);
    CHECK_STR(rl.source, "192.0.2.1");
    CHECK(rl.updated_ms > 0);
    destroy_upstream(u);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getenv("WINCH_TEST_DEBUG"))
        log_set_level(WLOG_DEBUG);
    else
        log_set_level(WLOG_ERROR);
    loop = uv_default_loop();
    servers_start();
    test_redirects();
    test_origin_table();
    test_bearer();
    test_bearer_single_flight();
    test_bearer_expiry();
    test_bearer_failures();
    test_token_with_credentials();
    test_basic();
    test_429();
    servers_stop();
    for (int i = 0; i < 20; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    CHECK_INT(uv_loop_close(loop), 0);
    free(seen_log);
    printf("test_proxy_upstream_auth: ok\n");
    return 0;
}
