/* proxy/authn.c: Basic header parsing, bcrypt checks on the threadpool, the verification cache
 * (single flight, TTL, reload invalidation), the failure budget per address, the queue bounds,
 * cancellation, and the htpasswd reload. */
#include "proxy/authn.h"

#include <arpa/inet.h>
#include <crypt.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

/* ---- Helpers ------------------------------------------------------------------------- */

/* A bcrypt hash of pass at cost (libcrypt, as htpasswd -B makes them). */
static void make_hash(const char *pass, unsigned long cost, char out[61])
{
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    CHECK(crypt_gensalt_rn("$2b$", cost, NULL, 0, setting, sizeof setting) != NULL);
    struct crypt_data cd;
    memset(&cd, 0, sizeof cd);
    const char *h = crypt_rn(pass, setting, &cd, (int)sizeof cd);
    CHECK(h && strlen(h) == 60);
    memcpy(out, h, 61);
}

static const char *pw_file;

/* Writes the htpasswd file: "user:pass" pairs, cost 4 (fast) unless a cost is given. */
static void write_users(const char *const *pairs, size_t n, unsigned long cost)
{
    if (!pw_file) {
        static char path[512];
        snprintf(path, sizeof path, "%s/htpasswd", test_tmpdir("winch-authn"));
        pw_file = path;
    }
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", pw_file);
    FILE *f = fopen(tmp, "w");
    CHECK(f);
    for (size_t i = 0; i < n; i++) {
        char user[64], hash[61];
        const char *colon = strchr(pairs[i], ':');
        snprintf(user, sizeof user, "%.*s", (int)(colon - pairs[i]), pairs[i]);
        make_hash(colon + 1, cost, hash);
        fprintf(f, "%s:%s\n", user, hash);
    }
    CHECK_INT(fclose(f), 0);
    CHECK_INT(rename(tmp, pw_file), 0); /* a new inode: seen as a change at once */
}

static struct sockaddr_storage addr4(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    CHECK_INT(inet_pton(AF_INET, ip, &s->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage addr6(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
    s->sin6_family = AF_INET6;
    CHECK_INT(inet_pton(AF_INET6, ip, &s->sin6_addr), 1);
    return ss;
}

typedef struct waiter {
    authn_wait_t w; /* first: the callback gets it back */
    int done;
    enum authn_result r;
} waiter_t;

static void on_result(authn_wait_t *w, enum authn_result r, uint32_t retry_after_s)
{
    (void)retry_after_s;
    waiter_t *x = (waiter_t *)w;
    x->done++;
    x->r = r;
}

/* A check, run to its end: the immediate result or the callback's. */
static enum authn_result check_now(authn_t *a, uv_loop_t *loop, const char *user, const char *pass,
                                   const struct sockaddr_storage *peer, uint32_t *retry)
{
    waiter_t x = {0};
    uint32_t ra = 0;
    enum authn_result r =
        authn_check(a, user, strlen(user), pass, strlen(pass), peer, &x.w, on_result, &ra);
    if (retry)
        *retry = ra;
    if (r != AUTHN_PENDING)
        return r;
    CHECK_INT(x.done, 0); /* never inside the call */
    while (!x.done)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT(x.done, 1);
    return x.r;
}

static authn_t *make(uv_loop_t *loop, authn_opts_t o)
{
    o.loop = loop;
    o.htpasswd_path = pw_file;
    if (!o.max_failures)
        o.max_failures = 10;
    if (!o.failure_window_ms)
        o.failure_window_ms = 60000;
    authn_t *a = NULL;
    char err[512] = "";
    if (authn_create(&a, &o, err, sizeof err) != 0) {
        fprintf(stderr, "authn_create: %s\n", err);
        CHECK(0);
    }
    return a;
}

static void finish(authn_t *a, uv_loop_t *loop)
{
    authn_shutdown(a);
    uv_run(loop, UV_RUN_DEFAULT);
    authn_free(a);
    CHECK_INT(uv_loop_close(loop), 0);
}

static authn_stats_t stats(const authn_t *a)
{
    authn_stats_t s;
    authn_get_stats(a, &s);
    return s;
}

/* ---- Basic ----------------------------------------------------------------------------- */

static int parse(const char *v, char *user, char *pass)
{
    size_t ul = 99, pl = 99;
    char u[AUTHN_USER_MAX + 1], p[AUTHN_PASS_MAX + 1];
    int rc = authn_basic_parse(v, u, sizeof u, &ul, p, sizeof p, &pl);
    if (rc == 0) {
        CHECK_INT(strlen(u), ul);
        CHECK_INT(strlen(p), pl);
        strcpy(user, u);
        strcpy(pass, p);
    }
    return rc;
}

static void test_basic_parse(void)
{
    char u[AUTHN_USER_MAX + 1], p[AUTHN_PASS_MAX + 1];
    CHECK_INT(parse("Basic YWxpY2U6c2VjcmV0", u, p), 0); /* alice:secret */
    CHECK_STR(u, "alice");
    CHECK_STR(p, "secret");
    CHECK_INT(parse("  bAsIc \t YWxpY2U6c2VjcmV0  ", u, p), 0);
    CHECK_STR(u, "alice");
    /* Without padding, and a password holding colons. */
    CHECK_INT(parse("Basic YTpiOmM", u, p), 0); /* a:b:c */
    CHECK_STR(u, "a");
    CHECK_STR(p, "b:c");
    /* containers/image's "no credentials": both empty. */
    CHECK_INT(parse("Basic Og==", u, p), 0);
    CHECK_STR(u, "");
    CHECK_STR(p, "");
    /* UTF-8 user names pass as bytes. */
    CHECK_INT(parse("Basic ZMOpOng=", u, p), 0); /* "dé:x" */
    CHECK_STR(u, "d\xc3\xa9");
    /* Other schemes are not Basic. */
    CHECK_INT(parse("Bearer abc", u, p), 1);
    CHECK_INT(parse("Basicabc", u, p), 1);
    CHECK_INT(parse("Digest username=x", u, p), 1);
    CHECK_INT(parse("", u, p), 1);
    /* Malformed. */
    CHECK_INT(parse("Basic", u, p), WE_INVALID);
    CHECK_INT(parse("Basic   ", u, p), WE_INVALID);
    CHECK_INT(parse("Basic YWxpY2U", u, p), WE_INVALID);      /* "alice": no colon */
    CHECK_INT(parse("Basic Y", u, p), WE_INVALID);            /* 6 bits */
    CHECK_INT(parse("Basic YW*pY2U6eA==", u, p), WE_INVALID); /* not base64 */
    CHECK_INT(parse("Basic YW=pY2U6eA==", u, p), WE_INVALID); /* padding inside */
    CHECK_INT(parse("Basic YWxp Y2U6eA==", u, p), WE_INVALID);
    CHECK_INT(parse("Basic YQFiOng=", u, p), WE_INVALID); /* "a\x01b:x": control in user */
    CHECK_INT(parse("Basic YTp4AHk=", u, p), WE_INVALID); /* "a:x\0y": NUL in password */
    /* Sizes: a 256-byte user and a 511-byte password are the limits. */
    char raw[1200], b64[1700], hdr[1800];
    for (int round = 0; round < 4; round++) {
        size_t ul = round == 1 ? 257 : 256, pl = round == 2 ? 512 : 511;
        if (round == 3)
            ul = 0, pl = 0;
        memset(raw, 'u', ul);
        raw[ul] = ':';
        memset(raw + ul + 1, 'p', pl);
        EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)raw, (int)(ul + 1 + pl));
        snprintf(hdr, sizeof hdr, "Basic %s", b64);
        CHECK_INT(parse(hdr, u, p), round == 1 || round == 2 ? WE_INVALID : 0);
    }
    /* A huge value is refused without decoding it all. */
    char *huge = malloc(20000);
    memcpy(huge, "Basic ", 6);
    memset(huge + 6, 'A', 19990);
    huge[19996] = '\0';
    CHECK_INT(parse(huge, u, p), WE_INVALID);
    free(huge);
}

/* ---- Checks ---------------------------------------------------------------------------- */

static void test_verify(void)
{
    static const char *const users[] = {"alice:secret", "bob:hunter2", "dé:x"};
    write_users(users, 3, 4);
    uv_loop_t loop;
    uv_loop_init(&loop);
    authn_t *a = make(&loop, (authn_opts_t){.cache_ttl_ms = 60000});
    struct sockaddr_storage peer = addr4("192.0.2.1");
    CHECK_INT(authn_user_count(a), 3);
    CHECK(authn_has_user(a, "alice") && authn_has_user(a, "d\xc3\xa9"));
    CHECK(!authn_has_user(a, "carol"));

    CHECK_INT(check_now(a, &loop, "alice", "secret", &peer, NULL), AUTHN_OK);
    CHECK_INT(stats(a).bcrypt_runs, 1);
    /* Cached: answered at once, no bcrypt. */
    waiter_t x = {0};
    uint32_t ra;
    CHECK_INT(authn_check(a, "alice", 5, "secret", 6, &peer, &x.w, on_result, &ra), AUTHN_OK);
    CHECK_INT(stats(a).bcrypt_runs, 1);
    CHECK_INT(stats(a).cache_hits, 1);
    /* Wrong password, wrong case, a prefix, unknown user: all BAD, all cost a bcrypt. */
    CHECK_INT(check_now(a, &loop, "alice", "Secret", &peer, NULL), AUTHN_BAD);
    CHECK_INT(check_now(a, &loop, "alice", "secre", &peer, NULL), AUTHN_BAD);
    CHECK_INT(check_now(a, &loop, "alice", "", &peer, NULL), AUTHN_BAD);
    CHECK_INT(check_now(a, &loop, "Alice", "secret", &peer, NULL), AUTHN_BAD);
    CHECK_INT(check_now(a, &loop, "carol", "secret", &peer, NULL), AUTHN_BAD);
    /* Another user's password is not this user's. */
    CHECK_INT(check_now(a, &loop, "bob", "secret", &peer, NULL), AUTHN_BAD);
    CHECK_INT(stats(a).bcrypt_runs, 7);
    CHECK_INT(stats(a).failures, 6);
    /* A failure is remembered as a failure. */
    CHECK_INT(check_now(a, &loop, "alice", "Secret", &peer, NULL), AUTHN_BAD);
    CHECK_INT(stats(a).bcrypt_runs, 7);
    CHECK_INT(stats(a).repeats, 1);
    CHECK_INT(check_now(a, &loop, "bob", "hunter2", &peer, NULL), AUTHN_OK);
    CHECK_INT(check_now(a, &loop, "d\xc3\xa9", "x", &peer, NULL), AUTHN_OK);
    /* Failures are never cached as successes: the right password still checks. */
    CHECK_INT(check_now(a, &loop, "alice", "secret", &peer, NULL), AUTHN_OK);
    /* Refused before any bcrypt: empty user, a NUL in the password. */
    uint64_t runs = stats(a).bcrypt_runs;
    CHECK_INT(authn_check(a, "", 0, "x", 1, &peer, &x.w, on_result, &ra), AUTHN_BAD);
    CHECK_INT(authn_check(a, "alice", 5, "sec\0ret", 7, &peer, &x.w, on_result, &ra), AUTHN_BAD);
    CHECK_INT(stats(a).bcrypt_runs, runs);
    finish(a, &loop);
}

/* 100 requests with the same credentials at once cost one bcrypt; the next 100 none. */
static void test_single_flight(void)
{
    static const char *const users[] = {"ci:token-123"};
    write_users(users, 1, 8);
    uv_loop_t loop;
    uv_loop_init(&loop);
    authn_t *a = make(&loop, (authn_opts_t){.cache_ttl_ms = 60000});
    struct sockaddr_storage peer = addr4("192.0.2.2");
    static waiter_t xs[100];
    memset(xs, 0, sizeof xs);
    uint32_t ra;
    for (int i = 0; i < 100; i++)
        CHECK_INT(authn_check(a, "ci", 2, "token-123", 9, &peer, &xs[i].w, on_result, &ra),
                  AUTHN_PENDING);
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 100; i++) {
        CHECK_INT(xs[i].done, 1);
        CHECK_INT(xs[i].r, AUTHN_OK);
    }
    CHECK_INT(stats(a).bcrypt_runs, 1);
    CHECK_INT(stats(a).joined, 99);
    for (int i = 0; i < 100; i++)
        CHECK_INT(authn_check(a, "ci", 2, "token-123", 9, &peer, &xs[i].w, on_result, &ra),
                  AUTHN_OK);
    CHECK_INT(stats(a).bcrypt_runs, 1);
    CHECK_INT(stats(a).cache_hits, 100);

    /* The same burst with a wrong password: one bcrypt, one failure charged, all BAD. */
    memset(xs, 0, sizeof xs);
    for (int i = 0; i < 100; i++)
        CHECK_INT(authn_check(a, "ci", 2, "token-124", 9, &peer, &xs[i].w, on_result, &ra),
                  AUTHN_PENDING);
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 100; i++)
        CHECK_INT(xs[i].r, AUTHN_BAD);
    CHECK_INT(stats(a).bcrypt_runs, 2);
    CHECK_INT(stats(a).failures, 1);
    finish(a, &loop);
}

static void test_ttl(void)
{
    static const char *const users[] = {"alice:secret"};
    write_users(users, 1, 4);
    uv_loop_t loop;
    uv_loop_init(&loop);
    authn_t *a = make(&loop, (authn_opts_t){.cache_ttl_ms = 300});
    struct sockaddr_storage peer = addr4("192.0.2.3");
    CHECK_INT(check_now(a, &loop, "alice", "secret", &peer, NULL), AUTHN_OK);
    CHECK_INT(check_now(a, &loop, "alice", "secret", &peer, NULL), AUTHN_OK);
    CHECK_INT(stats(a).bcrypt_runs, 1);
    test_sleep_ms(400);
    CHECK_INT(check_now(a, &loop, "alice", "secret", &peer, NULL), AUTHN_OK);
    CHECK_INT(stats(a).bcrypt_runs, 2);
    finish(a, &loop);

    /* TTL 0: every check runs bcrypt. */
    uv_loop_init(&loop);
    a = make(&loop, (authn_opts_t){.cache_ttl_ms = 0});
    for (int i = 0; i < 3; i++)
        CHECK_INT(check_now(a, &loop, "alice", "secret", &peer, NULL), AUTHN_OK);
    CHECK_INT(stats(a).bcrypt_runs, 3);
    CHECK_INT(stats(a).cache_hits, 0);
    finish(a, &loop);
}

/* Three failures in a burst, then one a second; per address (IPv6 by /64), and a cached
 * success still passes while the address is refused. */
static void test_throttle(void)
{
    static const char *const users[] = {"alice:secret"};
    write_users(users, 1, 4);
    uv_loop_t loop;
    uv_loop_init(&loop);
    authn_t *a = make(
        &loop, (authn_opts_t){.cache_ttl_ms = 60000, .max_failures = 3, .failure_window_ms = 3000});
    struct sockaddr_storage bad = addr4("198.51.100.7"), other = addr4("198.51.100.8");
    CHECK_INT(check_now(a, &loop, "alice", "secret", &bad, NULL), AUTHN_OK); /* cached */
    /* The same wrong pair again is no new guess: answered from the cache, not charged. */
    for (int i = 0; i < 5; i++)
        CHECK_INT(check_now(a, &loop, "alice", "guess", &bad, NULL), AUTHN_BAD);
    CHECK_INT(stats(a).repeats, 4);
    CHECK_INT(stats(a).failures, 1);
    CHECK_INT(check_now(a, &loop, "alice", "guess-b", &bad, NULL), AUTHN_BAD);
    CHECK_INT(check_now(a, &loop, "alice", "guess-c", &bad, NULL), AUTHN_BAD);
    uint32_t retry = 0;
    uint64_t runs = stats(a).bcrypt_runs;
    CHECK_INT(check_now(a, &loop, "alice", "guess2", &bad, &retry), AUTHN_THROTTLED);
    CHECK_INT(retry, 1);
    CHECK_INT(check_now(a, &loop, "nobody", "x", &bad, &retry), AUTHN_THROTTLED);
    CHECK_INT(stats(a).bcrypt_runs, runs); /* refused without a bcrypt */
    CHECK_INT(stats(a).throttled, 2);
    /* The right password, cached, still passes; uncached it would have to wait. */
    CHECK_INT(check_now(a, &loop, "alice", "secret", &bad, NULL), AUTHN_OK);
    /* Another address is not affected. */
    CHECK_INT(check_now(a, &loop, "alice", "guess", &other, NULL), AUTHN_BAD);
    /* A second later one more attempt is allowed, and spends the budget again. */
    test_sleep_ms(1100);
    CHECK_INT(check_now(a, &loop, "alice", "guess3", &bad, NULL), AUTHN_BAD);
    CHECK_INT(check_now(a, &loop, "alice", "guess4", &bad, &retry), AUTHN_THROTTLED);

    /* IPv6: one /64 is one client; IPv4-mapped addresses are their IPv4 address. */
    struct sockaddr_storage v6a = addr6("2001:db8:1:2::1"), v6b = addr6("2001:db8:1:2:ffff::9"),
                            v6c = addr6("2001:db8:1:3::1"), mapped = addr6("::ffff:198.51.100.7");
    for (int i = 0; i < 3; i++) {
        char g[8];
        snprintf(g, sizeof g, "g%d", i);
        CHECK_INT(check_now(a, &loop, "alice", g, &v6a, NULL), AUTHN_BAD);
    }
    CHECK_INT(check_now(a, &loop, "alice", "g3", &v6b, NULL), AUTHN_THROTTLED);
    CHECK_INT(check_now(a, &loop, "alice", "g3", &v6c, NULL), AUTHN_BAD);
    CHECK_INT(check_now(a, &loop, "alice", "g5", &mapped, NULL), AUTHN_THROTTLED);
    finish(a, &loop);
}

/* At most max_running checks at once, max_queued behind them, max_per_peer per address. */
static void test_bounds(void)
{
    static const char *const users[] = {"alice:secret"};
    write_users(users, 1, 6);
    uv_loop_t loop;
    uv_loop_init(&loop);
    authn_t *a = make(&loop, (authn_opts_t){.cache_ttl_ms = 60000,
                                            .max_failures = 1000,
                                            .max_running = 1,
                                            .max_queued = 2,
                                            .max_per_peer = 64});
    static waiter_t xs[5];
    memset(xs, 0, sizeof xs);
    char pass[5][16];
    uint32_t ra = 0;
    for (int i = 0; i < 5; i++) {
        char ip[32];
        snprintf(ip, sizeof ip, "203.0.113.%d", i + 1);
        struct sockaddr_storage p = addr4(ip);
        snprintf(pass[i], sizeof pass[i], "guess%d", i);
        enum authn_result r =
            authn_check(a, "alice", 5, pass[i], strlen(pass[i]), &p, &xs[i].w, on_result, &ra);
        CHECK_INT(r, i < 3 ? AUTHN_PENDING : AUTHN_BUSY);
        if (i >= 3)
            CHECK_INT(ra, 1);
    }
    CHECK_INT(stats(a).busy, 2);
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 3; i++)
        CHECK_INT(xs[i].r, AUTHN_BAD);
    CHECK_INT(stats(a).bcrypt_runs, 3);
    finish(a, &loop);

    /* Per address. */
    uv_loop_init(&loop);
    a = make(&loop, (authn_opts_t){.cache_ttl_ms = 60000, .max_failures = 1000, .max_per_peer = 2});
    struct sockaddr_storage p = addr4("203.0.113.50"), q = addr4("203.0.113.51");
    memset(xs, 0, sizeof xs);
    for (int i = 0; i < 3; i++)
        CHECK_INT(
            authn_check(a, "alice", 5, pass[i], strlen(pass[i]), &p, &xs[i].w, on_result, &ra),
            i < 2 ? AUTHN_PENDING : AUTHN_THROTTLED);
    /* Joining a check already running is free. */
    CHECK_INT(authn_check(a, "alice", 5, pass[0], strlen(pass[0]), &p, &xs[3].w, on_result, &ra),
              AUTHN_PENDING);
    CHECK_INT(authn_check(a, "alice", 5, pass[2], strlen(pass[2]), &q, &xs[4].w, on_result, &ra),
              AUTHN_PENDING);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(xs[0].done + xs[1].done + xs[2].done + xs[3].done + xs[4].done, 4);
    finish(a, &loop);
}

static void test_cancel(void)
{
    static const char *const users[] = {"alice:secret", "bob:pw"};
    write_users(users, 2, 6);
    uv_loop_t loop;
    uv_loop_init(&loop);
    authn_t *a = make(&loop, (authn_opts_t){.cache_ttl_ms = 60000, .max_running = 1});
    struct sockaddr_storage p = addr4("192.0.2.9");
    waiter_t run = {0}, queued = {0};
    uint32_t ra;
    CHECK_INT(authn_check(a, "alice", 5, "secret", 6, &p, &run.w, on_result, &ra), AUTHN_PENDING);
    CHECK_INT(authn_check(a, "bob", 3, "pw", 2, &p, &queued.w, on_result, &ra), AUTHN_PENDING);
    /* Both clients go away: the queued check is dropped, the running one finishes. */
    authn_cancel(&queued.w);
    authn_cancel(&run.w);
    authn_cancel(&run.w); /* idempotent */
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(run.done + queued.done, 0);
    CHECK_INT(stats(a).bcrypt_runs, 1);
    /* The finished success was cached for the next request. */
    CHECK_INT(check_now(a, &loop, "alice", "secret", &p, NULL), AUTHN_OK);
    CHECK_INT(stats(a).bcrypt_runs, 1);
    CHECK_INT(check_now(a, &loop, "bob", "pw", &p, NULL), AUTHN_OK);
    CHECK_INT(stats(a).bcrypt_runs, 2);
    finish(a, &loop);
}

static void stop_loop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Runs the loop for ms milliseconds. */
static void run_for(uv_loop_t *loop, long ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, stop_loop, (uint64_t)ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void test_reload(void)
{
    static const char *const v1[] = {"alice:secret"};
    static const char *const v2[] = {"alice:changed", "carol:new"};
    write_users(v1, 1, 4);
    uv_loop_t loop;
    uv_loop_init(&loop);
    authn_t *a = make(&loop, (authn_opts_t){.cache_ttl_ms = 60000, .reload_check_ms = 50});
    struct sockaddr_storage p = addr4("192.0.2.10");
    CHECK_INT(check_now(a, &loop, "alice", "secret", &p, NULL), AUTHN_OK);
    CHECK_INT(check_now(a, &loop, "carol", "new", &p, NULL), AUTHN_BAD);
    run_for(&loop, 200);
    CHECK_INT(stats(a).reloads, 0); /* nothing changed */

    write_users(v2, 2, 4);
    int64_t t0 = time_mono_ms();
    while (stats(a).reloads == 0 && time_mono_ms() - t0 < 5000)
        run_for(&loop, 20);
    CHECK_INT(stats(a).reloads, 1);
    CHECK_INT(authn_user_count(a), 2);
    /* The cached success of the old password is gone with the old file. */
    CHECK_INT(check_now(a, &loop, "alice", "secret", &p, NULL), AUTHN_BAD);
    CHECK_INT(check_now(a, &loop, "alice", "changed", &p, NULL), AUTHN_OK);
    CHECK_INT(check_now(a, &loop, "carol", "new", &p, NULL), AUTHN_OK);

    /* A file that no longer parses: logged, and the users stay. */
    FILE *f = fopen(pw_file, "a");
    CHECK(f);
    fputs("mallory:$apr1$xyz$abc\n", f);
    CHECK_INT(fclose(f), 0);
    run_for(&loop, 300);
    CHECK_INT(stats(a).reloads, 1);
    CHECK_INT(check_now(a, &loop, "carol", "new", &p, NULL), AUTHN_OK);
    /* Removed: the same. */
    CHECK_INT(unlink(pw_file), 0);
    run_for(&loop, 300);
    CHECK_INT(authn_user_count(a), 2);
    /* Back, and an explicit reload (SIGHUP) reads it. */
    write_users(v1, 1, 4);
    authn_reload(a);
    t0 = time_mono_ms();
    while (stats(a).reloads < 2 && time_mono_ms() - t0 < 5000)
        run_for(&loop, 20);
    CHECK_INT(authn_user_count(a), 1);
    CHECK_INT(check_now(a, &loop, "alice", "secret", &p, NULL), AUTHN_OK);
    finish(a, &loop);
}

static void test_create_errors(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    authn_t *a = NULL;
    char err[512];
    authn_opts_t o = {.loop = &loop, .htpasswd_path = "/nonexistent/htpasswd", .max_failures = 1};
    CHECK(authn_create(&a, &o, err, sizeof err) < 0);
    CHECK(strstr(err, "/nonexistent/htpasswd: cannot open"));
    CHECK(a == NULL);
    CHECK_INT(uv_loop_close(&loop), 0);
}

static const test_case_t cases[] = {
    TEST_CASE(test_basic_parse), TEST_CASE(test_verify),   TEST_CASE(test_single_flight),
    TEST_CASE(test_ttl),         TEST_CASE(test_throttle), TEST_CASE(test_bounds),
    TEST_CASE(test_cancel),      TEST_CASE(test_reload),   TEST_CASE(test_create_errors)};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
