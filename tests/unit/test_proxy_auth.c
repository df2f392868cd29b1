/* auth and url: WWW-Authenticate parsing, token URLs and answers, expiry math, Basic, scopes,
 * the token cache, and the URL parser and resolver the redirect code relies on. */
#include "proxy/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/err.h"
#include "common/util.h"
#include "proxy/url.h"
#include "testutil.h"

/* ---- Challenges ---------------------------------------------------------------------------- */

static int parse1(const char *v, auth_challenge_t *c)
{
    memset(c, 0, sizeof *c);
    return auth_challenge_parse(v, c);
}

static void test_challenge_docker_hub(void)
{
    auth_challenge_t c;
    CHECK_INT(parse1("Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
                     "scope=\"repository:samalba/my-app:pull,push\"",
                     &c),
              1);
    CHECK_INT(c.scheme, AUTH_BEARER);
    CHECK_STR(c.realm, "https://auth.docker.io/token");
    CHECK_STR(c.service, "registry.docker.io");
    /* The comma inside the quoted scope is part of the value, not a separator. */
    CHECK_STR(c.scope, "repository:samalba/my-app:pull,push");
    CHECK_STR(c.error, "");
}

static void test_challenge_forms(void)
{
    auth_challenge_t c;
    /* Case-insensitive scheme and parameter names; whitespace around '=' and commas. */
    CHECK_INT(parse1("bEaReR   REALM = \"http://r/t\" ,  Service=svc ,scope=\"a b\"", &c), 1);
    CHECK_INT(c.scheme, AUTH_BEARER);
    CHECK_STR(c.realm, "http://r/t");
    CHECK_STR(c.service, "svc");
    CHECK_STR(c.scope, "a b");

    /* Escapes in quoted strings: \" and \\ and an escaped ordinary byte. */
    CHECK_INT(parse1("Bearer realm=\"http://a/t\\\"q\\\\\",service=\"s\\,x\"", &c), 1);
    CHECK_STR(c.realm, "http://a/t\"q\\");
    CHECK_STR(c.service, "s,x");

    /* error= (RFC 6750) and the first occurrence of a parameter wins. */
    CHECK_INT(parse1("Bearer realm=\"http://r\",error=\"invalid_token\",realm=\"http://evil\"", &c),
              1);
    CHECK_STR(c.realm, "http://r");
    CHECK_STR(c.error, "invalid_token");

    /* Several challenges on one line: Bearer beats Basic whatever the order. */
    CHECK_INT(parse1("Basic realm=\"b\", Bearer realm=\"http://r\",scope=\"x\"", &c), 2);
    CHECK_INT(c.scheme, AUTH_BEARER);
    CHECK_STR(c.realm, "http://r");
    CHECK_STR(c.scope, "x");
    CHECK_INT(parse1("Bearer realm=\"http://r\", Basic realm=\"b\"", &c), 2);
    CHECK_INT(c.scheme, AUTH_BEARER);

    /* Basic alone; an empty quoted value is fine. */
    CHECK_INT(parse1("Basic realm=\"\"", &c), 1);
    CHECK_INT(c.scheme, AUTH_BASIC);
    CHECK_INT(parse1("basic realm=Registry", &c), 1);
    CHECK_INT(c.scheme, AUTH_BASIC);
    CHECK_STR(c.realm, "Registry");

    /* A token68 challenge and an unknown scheme with parameters (RFC 7235's example) are
     * skipped, and what follows them still counts. */
    CHECK_INT(parse1("Negotiate abc==, Bearer realm=\"http://r\"", &c), 1);
    CHECK_INT(c.scheme, AUTH_BEARER);
    CHECK_INT(parse1("Newauth realm=\"apps\", type=1, title=\"Login to \\\"apps\\\"\", "
                     "Basic realm=\"simple\"",
                     &c),
              1);
    CHECK_INT(c.scheme, AUTH_BASIC);
    CHECK_STR(c.realm, "simple");
    CHECK_INT(parse1("Negotiate", &c), 0);
    CHECK_INT(c.scheme, AUTH_NONE);

    /* Bearer without a realm is useless. */
    CHECK_INT(parse1("Bearer service=\"x\"", &c), 0);
    CHECK_INT(c.scheme, AUTH_NONE);

    /* Stray commas are tolerated (RFC 7230 #rule). */
    CHECK_INT(parse1(", ,Bearer realm=\"http://r\",,service=\"s\",", &c), 1);
    CHECK_STR(c.service, "s");
}

static void test_challenge_across_lines(void)
{
    auth_challenge_t c;
    memset(&c, 0, sizeof c);
    CHECK_INT(auth_challenge_parse("Basic realm=\"b\"", &c), 1);
    CHECK_INT(c.scheme, AUTH_BASIC);
    CHECK_INT(auth_challenge_parse("Bearer realm=\"http://r1\"", &c), 1);
    CHECK_INT(c.scheme, AUTH_BEARER);
    CHECK_STR(c.realm, "http://r1");
    /* The first Bearer stays; a later Basic does not replace it. */
    CHECK_INT(auth_challenge_parse("Bearer realm=\"http://r2\"", &c), 1);
    CHECK_INT(auth_challenge_parse("Basic realm=\"b\"", &c), 1);
    CHECK_STR(c.realm, "http://r1");
}

static void test_challenge_malformed(void)
{
    auth_challenge_t c;
    CHECK_INT(parse1("Bearer realm=\"unterminated", &c), WE_INVALID);
    CHECK_INT(c.scheme, AUTH_NONE);
    CHECK_INT(parse1("=foo", &c), WE_INVALID);
    /* "Bearer realm" is a (useless) token68 challenge, not an error. */
    CHECK_INT(parse1("Bearer realm", &c), 0);
    CHECK_INT(c.scheme, AUTH_NONE);
    CHECK_INT(parse1("Bearer realm \"x\"", &c), WE_INVALID);
    CHECK_INT(parse1("Bearer realm=\"a\" junk", &c), WE_INVALID);
    /* An unquoted URL is not a token (':' and '/' are not tchars). */
    CHECK_INT(parse1("Bearer realm=http://x/y", &c), WE_INVALID);
    /* Control bytes inside quotes. */
    CHECK_INT(parse1("Bearer realm=\"a\x01\"", &c), WE_INVALID);
    /* A valid challenge before the error still counts. */
    CHECK_INT(parse1("Basic realm=\"b\", Bearer realm=\"x", &c), 1);
    CHECK_INT(c.scheme, AUTH_BASIC);
    /* A realm over the bound makes the challenge unusable rather than truncated. */
    char big[AUTH_MAX_REALM + 64];
    snprintf(big, sizeof big, "Bearer realm=\"http://");
    size_t n = strlen(big);
    memset(big + n, 'a', AUTH_MAX_REALM);
    snprintf(big + n + AUTH_MAX_REALM, sizeof big - n - AUTH_MAX_REALM, "\"");
    CHECK_INT(parse1(big, &c), 0);
    CHECK_INT(c.scheme, AUTH_NONE);
    CHECK_INT(parse1("", &c), 0);
}

/* ---- Token keys, URLs and answers ---------------------------------------------------------- */

static void test_token_key_and_url(void)
{
    auth_challenge_t c;
    memset(&c, 0, sizeof c);
    snprintf(c.realm, sizeof c.realm, "https://auth.docker.io/token");
    snprintf(c.service, sizeof c.service, "registry.docker.io");
    snprintf(c.scope, sizeof c.scope,
             "repository:lib/y:pull  repository:lib/x:pull repository:lib/y:pull");
    char key[AUTH_MAX_KEY], url[URL_MAX + 1];
    CHECK_INT(auth_token_key(&c, key, sizeof key), 0);
    CHECK_STR(key, "https://auth.docker.io/token\nregistry.docker.io\n"
                   "repository:lib/x:pull repository:lib/y:pull");
    /* The same scopes in another order give the same key. */
    auth_challenge_t d = c;
    snprintf(d.scope, sizeof d.scope, "repository:lib/x:pull repository:lib/y:pull");
    char key2[AUTH_MAX_KEY];
    CHECK_INT(auth_token_key(&d, key2, sizeof key2), 0);
    CHECK_STR(key, key2);

    CHECK_INT(auth_token_url(&d, url, sizeof url), 0);
    CHECK_STR(url, "https://auth.docker.io/token?service=registry.docker.io"
                   "&scope=repository%3Alib%2Fx%3Apull&scope=repository%3Alib%2Fy%3Apull");
    /* A realm with a query gets '&'; values are percent-encoded (space, '+', '&'). */
    snprintf(d.realm, sizeof d.realm, "http://127.0.0.1:81/t?a=1");
    snprintf(d.service, sizeof d.service, "my svc+&");
    snprintf(d.scope, sizeof d.scope, "repository:a:pull,push");
    CHECK_INT(auth_token_url(&d, url, sizeof url), 0);
    CHECK_STR(url, "http://127.0.0.1:81/t?a=1&service=my%20svc%2B%26"
                   "&scope=repository%3Aa%3Apull%2Cpush");
    /* No service, no scope. */
    d.service[0] = d.scope[0] = '\0';
    snprintf(d.realm, sizeof d.realm, "http://r/t");
    CHECK_INT(auth_token_url(&d, url, sizeof url), 0);
    CHECK_STR(url, "http://r/t");
    snprintf(d.realm, sizeof d.realm, "http://r/t#frag");
    CHECK_INT(auth_token_url(&d, url, sizeof url), WE_INVALID);
    snprintf(d.realm, sizeof d.realm, "http://r/t");
    snprintf(d.scope, sizeof d.scope, "repository:a:pull");
    CHECK_INT(auth_token_url(&d, url, 20), WE_TOOBIG);
    /* Too many scopes. */
    d.scope[0] = '\0';
    for (int i = 0; i < AUTH_MAX_SCOPES + 1; i++)
        snprintf(d.scope + strlen(d.scope), sizeof d.scope - strlen(d.scope), "s%d ", i);
    CHECK_INT(auth_token_key(&d, key, sizeof key), WE_INVALID);
    CHECK_INT(auth_token_url(&d, url, sizeof url), WE_INVALID);
}

static void test_rfc3339(void)
{
    int64_t ms;
    CHECK_INT(auth_rfc3339_ms("1970-01-01T00:00:00Z", &ms), 0);
    CHECK_INT(ms, 0);
    CHECK_INT(auth_rfc3339_ms("2024-01-01T00:00:00Z", &ms), 0);
    CHECK_INT(ms, 1704067200000LL);
    CHECK_INT(auth_rfc3339_ms("2024-02-29T12:34:56.789+02:00", &ms), 0);
    CHECK_INT(ms, 1709202896789LL);
    CHECK_INT(auth_rfc3339_ms("2024-02-29t12:34:56.789123456+02:00", &ms), 0);
    CHECK_INT(ms, 1709202896789LL);
    CHECK_INT(auth_rfc3339_ms("2000-03-01T01:02:03-05:30", &ms), 0);
    CHECK_INT(ms, 951892323000LL);
    CHECK_INT(auth_rfc3339_ms("1969-12-31T23:59:59z", &ms), 0);
    CHECK_INT(ms, -1000);
    CHECK_INT(auth_rfc3339_ms("2023-02-29T00:00:00Z", &ms), WE_INVALID);
    CHECK_INT(auth_rfc3339_ms("2024-13-01T00:00:00Z", &ms), WE_INVALID);
    CHECK_INT(auth_rfc3339_ms("2024-01-01T24:00:00Z", &ms), WE_INVALID);
    CHECK_INT(auth_rfc3339_ms("2024-01-01T00:00:00", &ms), WE_INVALID);
    CHECK_INT(auth_rfc3339_ms("2024-01-01T00:00:00.Z", &ms), WE_INVALID);
    CHECK_INT(auth_rfc3339_ms("2024-01-01T00:00:00Zjunk", &ms), WE_INVALID);
    CHECK_INT(auth_rfc3339_ms("2024-01-01", &ms), WE_INVALID);
    CHECK_INT(auth_rfc3339_ms("", &ms), WE_INVALID);
}

static int tparse(const char *json, int64_t now, char **tok, int64_t *exp)
{
    *tok = NULL;
    return auth_token_parse(json, strlen(json), now, tok, exp);
}

static void test_token_parse(void)
{
    const int64_t t0 = 1704067200000LL; /* 2024-01-01T00:00:00Z */
    char *tok;
    int64_t exp;
    CHECK_INT(tparse("{\"token\":\"abc.def\",\"expires_in\":300,\"issued_at\":"
                     "\"2024-01-01T00:00:00Z\"}",
                     t0 + 10000, &tok, &exp),
              0);
    CHECK_STR(tok, "abc.def");
    CHECK_INT(exp, t0 + 300000); /* from issued_at, not from now */
    free(tok);
    /* access_token when token is absent; token wins when both are there. */
    CHECK_INT(tparse("{\"access_token\":\"oauth\",\"expires_in\":120}", t0, &tok, &exp), 0);
    CHECK_STR(tok, "oauth");
    CHECK_INT(exp, t0 + 120000); /* no issued_at: counts from now */
    free(tok);
    CHECK_INT(tparse("{\"token\":\"t\",\"access_token\":\"a\"}", t0, &tok, &exp), 0);
    CHECK_STR(tok, "t");
    CHECK_INT(exp, t0 + 60000); /* no expires_in: 60 s */
    free(tok);
    CHECK_INT(tparse("{\"token\":\"\",\"access_token\":\"a\"}", t0, &tok, &exp), 0);
    CHECK_STR(tok, "a");
    free(tok);
    /* Under 60 s counts as 60 s; a real number is truncated. */
    CHECK_INT(tparse("{\"token\":\"t\",\"expires_in\":5}", t0, &tok, &exp), 0);
    CHECK_INT(exp, t0 + 60000);
    free(tok);
    CHECK_INT(tparse("{\"token\":\"t\",\"expires_in\":90.7}", t0, &tok, &exp), 0);
    CHECK_INT(exp, t0 + 90000);
    free(tok);
    /* issued_at in the past: the token may be expired on arrival (the test hook of the
     * integration test); in the future (clock skew): counts from now; unparsable: now. */
    CHECK_INT(tparse("{\"token\":\"t\",\"expires_in\":60,\"issued_at\":\"2023-12-31T23:00:00Z\"}",
                     t0, &tok, &exp),
              0);
    CHECK_INT(exp, t0 - 3600000 + 60000);
    CHECK(exp < t0);
    free(tok);
    CHECK_INT(tparse("{\"token\":\"t\",\"expires_in\":60,\"issued_at\":\"2030-01-01T00:00:00Z\"}",
                     t0, &tok, &exp),
              0);
    CHECK_INT(exp, t0 + 60000);
    free(tok);
    CHECK_INT(tparse("{\"token\":\"t\",\"issued_at\":\"yesterday\"}", t0, &tok, &exp), 0);
    CHECK_INT(exp, t0 + 60000);
    free(tok);
    /* Refused: no token, not JSON, not an object, bytes a header cannot carry, too long. */
    CHECK_INT(tparse("{\"expires_in\":60}", t0, &tok, &exp), WE_PROTO);
    CHECK_INT(tparse("{\"token\":42}", t0, &tok, &exp), WE_PROTO);
    CHECK_INT(tparse("not json", t0, &tok, &exp), WE_PROTO);
    CHECK_INT(tparse("[\"token\"]", t0, &tok, &exp), WE_PROTO);
    CHECK_INT(tparse("{\"token\":\"a b\"}", t0, &tok, &exp), WE_PROTO);
    CHECK_INT(tparse("{\"token\":\"a\\r\\nX-Evil: 1\"}", t0, &tok, &exp), WE_PROTO);
    CHECK(tok == NULL);
    size_t n = AUTH_MAX_TOKEN + 40;
    char *big = malloc(n);
    CHECK(big != NULL);
    snprintf(big, n, "{\"token\":\"");
    size_t k = strlen(big);
    memset(big + k, 'x', AUTH_MAX_TOKEN + 1);
    snprintf(big + k + AUTH_MAX_TOKEN + 1, n - k - AUTH_MAX_TOKEN - 1, "\"}");
    CHECK_INT(tparse(big, t0, &tok, &exp), WE_PROTO);
    big[k + AUTH_MAX_TOKEN] = '"';
    big[k + AUTH_MAX_TOKEN + 1] = '}';
    big[k + AUTH_MAX_TOKEN + 2] = '\0';
    CHECK_INT(tparse(big, t0, &tok, &exp), 0);
    CHECK_INT(strlen(tok), AUTH_MAX_TOKEN);
    free(tok);
    free(big);
}

static void test_basic(void)
{
    char out[256];
    CHECK_INT(auth_basic_header("aladdin", "opensesame", out, sizeof out), 0);
    CHECK_STR(out, "Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l");
    CHECK_INT(auth_basic_header("a:b", "c", out, sizeof out), WE_INVALID);
    CHECK_INT(auth_basic_header("a", "c\nd", out, sizeof out), WE_INVALID);
    CHECK_INT(auth_basic_header("aladdin", "opensesame", out, 30), WE_TOOBIG);
    CHECK_INT(auth_basic_header("u", "", out, sizeof out), 0);
    CHECK_STR(out, "Authorization: Basic dTo=");
}

static void test_repo_scope(void)
{
    char s[256];
    CHECK_INT(auth_repo_scope("/v2/library/busybox/manifests/1.36", "", s, sizeof s), 0);
    CHECK_STR(s, "repository:library/busybox:pull");
    CHECK_INT(
        auth_repo_scope("/mirror/v2/lab/tools/busybox/blobs/sha256:ab", "/mirror", s, sizeof s), 0);
    CHECK_STR(s, "repository:lab/tools/busybox:pull");
    CHECK_INT(auth_repo_scope("/v2/a/tags/list?n=10&last=x", NULL, s, sizeof s), 0);
    CHECK_STR(s, "repository:a:pull");
    CHECK_INT(auth_repo_scope("/v2/a/b/referrers/sha256:ff?artifactType=x", "", s, sizeof s), 0);
    CHECK_STR(s, "repository:a/b:pull");
    /* A repository may have a component named like a kind: the kind is the one before the
     * last component. */
    CHECK_INT(auth_repo_scope("/v2/x/blobs/manifests/latest", "", s, sizeof s), 0);
    CHECK_STR(s, "repository:x/blobs:pull");
    CHECK_INT(auth_repo_scope("/v2/", "", s, sizeof s), WE_NOTFOUND);
    CHECK_INT(auth_repo_scope("/v2/_catalog", "", s, sizeof s), WE_NOTFOUND);
    CHECK_INT(auth_repo_scope("/v2/a/uploads/x", "", s, sizeof s), WE_NOTFOUND);
    CHECK_INT(auth_repo_scope("/other/v2/a/manifests/x", "/mirror", s, sizeof s), WE_NOTFOUND);
    CHECK_INT(auth_repo_scope("/v2/manifests/x", "", s, sizeof s), WE_NOTFOUND);
    CHECK_INT(auth_repo_scope("/v2/a/manifests/x", "", s, 10), WE_TOOBIG);

    CHECK(auth_scopes_grant("repository:a:pull", "repository:a:pull"));
    CHECK(auth_scopes_grant("repository:b:pull repository:a:push,pull", "repository:a:pull"));
    CHECK(auth_scopes_grant("repository:a:*", "repository:a:pull"));
    CHECK(!auth_scopes_grant("repository:a:push", "repository:a:pull"));
    CHECK(!auth_scopes_grant("repository:ab:pull", "repository:a:pull"));
    CHECK(!auth_scopes_grant("repository:a/b:pull", "repository:a:pull"));
    CHECK(!auth_scopes_grant("", "repository:a:pull"));
    CHECK(!auth_scopes_grant("registry:catalog:*", "repository:a:pull"));
}

static void test_cache(void)
{
    auth_cache_t *c;
    const int64_t t0 = 1704067200000LL;
    CHECK_INT(auth_cache_create(&c, 3), 0);
    uint64_t g1, g2, g, gx;
    CHECK(auth_cache_get(c, "k1", t0, &g) == NULL);
    CHECK_INT(auth_cache_put(c, "r\ns\nrepository:a:pull", true, "tokA", t0 + 60000, &g1), 0);
    CHECK(g1 != 0);
    CHECK_STR(auth_cache_get(c, "r\ns\nrepository:a:pull", t0, &g), "tokA");
    CHECK_INT(g, g1);
    /* Usable until AUTH_EXPIRY_MARGIN_MS before the expiry. */
    CHECK(auth_cache_get(c, "r\ns\nrepository:a:pull", t0 + 60000 - AUTH_EXPIRY_MARGIN_MS - 1,
                         &g) != NULL);
    CHECK(auth_cache_get(c, "r\ns\nrepository:a:pull", t0 + 60000 - AUTH_EXPIRY_MARGIN_MS, &g) ==
          NULL);
    /* Proactive lookups by scope, only for entries stored as proactive. */
    CHECK_STR(auth_cache_find_scope(c, "repository:a:pull", t0, &g), "tokA");
    CHECK(auth_cache_find_scope(c, "repository:b:pull", t0, &g) == NULL);
    CHECK_INT(auth_cache_put(c, "r2\ns\nrepository:b:pull", false, "tokB", t0 + 600000, &g2), 0);
    CHECK(auth_cache_find_scope(c, "repository:b:pull", t0, &g) == NULL);
    CHECK_STR(auth_cache_get(c, "r2\ns\nrepository:b:pull", t0, &g), "tokB");
    /* Replacing a key gives a new generation; dropping by generation forgets it. */
    CHECK_INT(auth_cache_put(c, "r\ns\nrepository:a:pull", true, "tokA2", t0 + 120000, &g), 0);
    CHECK(g != g1);
    CHECK_INT(auth_cache_size(c), 2);
    CHECK_STR(auth_cache_get(c, "r\ns\nrepository:a:pull", t0, &gx), "tokA2");
    auth_cache_drop(c, g1); /* stale generation: nothing happens */
    CHECK_INT(auth_cache_size(c), 2);
    auth_cache_drop(c, g);
    CHECK(auth_cache_get(c, "r\ns\nrepository:a:pull", t0, &gx) == NULL);
    CHECK_INT(auth_cache_size(c), 1);
    /* Full: the entry expiring first goes. */
    CHECK_INT(auth_cache_put(c, "k3", true, "t3", t0 + 5000, &g), 0);
    CHECK_INT(auth_cache_put(c, "k4", true, "t4", t0 + 900000, &g), 0);
    CHECK_INT(auth_cache_size(c), 3);
    CHECK_INT(auth_cache_put(c, "k5", true, "t5", t0 + 800000, &g), 0);
    CHECK_INT(auth_cache_size(c), 3);
    CHECK(auth_cache_get(c, "k3", t0 - 60000, &g) == NULL);
    CHECK(auth_cache_get(c, "k4", t0, &g) != NULL);
    CHECK(auth_cache_get(c, "k5", t0, &g) != NULL);
    CHECK(auth_cache_get(c, "r2\ns\nrepository:b:pull", t0, &g) != NULL);
    auth_cache_free(c);
}

/* ---- URLs ---------------------------------------------------------------------------------- */

static void test_url_parse(void)
{
    url_t u;
    CHECK_INT(url_parse(&u, "http://Example.COM:8080/a/b?c=d#frag"), 0);
    CHECK(!u.tls);
    CHECK_STR(u.host, "example.com");
    CHECK_INT(u.port, 8080);
    CHECK_STR(u.path, "/a/b?c=d");
    CHECK_INT(url_parse(&u, "HTTPS://h"), 0);
    CHECK(u.tls);
    CHECK_INT(u.port, 443);
    CHECK_STR(u.path, "/");
    CHECK_INT(url_parse(&u, "https://h?x=1"), 0);
    CHECK_STR(u.path, "/?x=1");
    CHECK_INT(url_parse(&u, "http://h:/p"), 0);
    CHECK_INT(u.port, 80);
    CHECK_INT(url_parse(&u, "http://[::1]:5000/v2/"), 0);
    CHECK_STR(u.host, "::1");
    CHECK_INT(u.port, 5000);
    CHECK_INT(url_parse(&u, "http://127.0.0.1/"), 0);
    CHECK_STR(u.host, "127.0.0.1");

    CHECK_INT(url_parse(&u, "ftp://h/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "file:///etc/passwd"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http:/h/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://u:p@h/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://h@evil/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http:///p"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://h:0/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://h:65536/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://h:80a/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://h/a b"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://h/a\r\nX: y"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://h/\xc3\xa9"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://h%41/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://[::1/"), WE_INVALID);
    CHECK_INT(url_parse(&u, "http://[::1]x/"), WE_INVALID);
    char *big = malloc(URL_MAX + 100);
    CHECK(big != NULL);
    snprintf(big, URL_MAX + 100, "http://h/");
    memset(big + 9, 'a', URL_MAX);
    big[9 + URL_MAX] = '\0';
    CHECK_INT(url_parse(&u, big), WE_TOOBIG);
    snprintf(big, URL_MAX + 100, "http://");
    memset(big + 7, 'a', URL_MAX_HOST + 1);
    snprintf(big + 7 + URL_MAX_HOST + 1, 10, "/");
    CHECK_INT(url_parse(&u, big), WE_TOOBIG);
    free(big);
}

static void resolve_ok(const char *ref, bool tls, const char *host, unsigned port, const char *path)
{
    url_t base, out;
    CHECK_INT(url_parse(&base, "http://reg:5000/v2/x/blobs/sha256:1?a=b"), 0);
    int rc = url_resolve(&out, &base, ref);
    if (rc != 0)
        fprintf(stderr, "resolving %s\n", ref);
    CHECK_INT(rc, 0);
    CHECK_INT(out.tls, tls);
    CHECK_STR(out.host, host);
    CHECK_INT(out.port, port);
    CHECK_STR(out.path, path);
}

static void test_url_resolve(void)
{
    resolve_ok("/cdn/blob?sig=1", false, "reg", 5000, "/cdn/blob?sig=1");
    resolve_ok("https://CDN.example/p?X-Amz-Signature=1#f", true, "cdn.example", 443,
               "/p?X-Amz-Signature=1");
    resolve_ok("//other:81/z", false, "other", 81, "/z");
    resolve_ok("z", false, "reg", 5000, "/v2/x/blobs/z");
    resolve_ok("../y/z", false, "reg", 5000, "/v2/x/y/z");
    resolve_ok("./a/./b/../c?q", false, "reg", 5000, "/v2/x/blobs/a/c?q");
    resolve_ok("/../../a", false, "reg", 5000, "/a");
    resolve_ok("../../../../..", false, "reg", 5000, "/");
    resolve_ok("?q=2", false, "reg", 5000, "/v2/x/blobs/sha256:1?q=2");
    resolve_ok("", false, "reg", 5000, "/v2/x/blobs/sha256:1?a=b");
    resolve_ok("#frag", false, "reg", 5000, "/v2/x/blobs/sha256:1?a=b");
    resolve_ok("/a/b/..", false, "reg", 5000, "/a/");
    resolve_ok("/a/./b/.", false, "reg", 5000, "/a/b/");
    resolve_ok("/a/%2e%2e/b", false, "reg", 5000, "/a/%2e%2e/b"); /* escapes stay escaped */
    url_t base, out;
    CHECK_INT(url_parse(&base, "https://reg/v2/"), 0);
    CHECK_INT(url_resolve(&out, &base, "javascript:alert(1)"), WE_INVALID);
    CHECK_INT(url_resolve(&out, &base, "ftp://x/"), WE_INVALID);
    CHECK_INT(url_resolve(&out, &base, "//u@evil/"), WE_INVALID);
    CHECK_INT(url_resolve(&out, &base, "/a b"), WE_INVALID);
    CHECK_INT(url_resolve(&out, &base, "//cdn/x"), 0);
    CHECK(out.tls); /* a network-path reference keeps the base's scheme */
    CHECK_INT(out.port, 443);
}

static const test_case_t cases[] = {
    TEST_CASE(test_challenge_docker_hub),
    TEST_CASE(test_challenge_forms),
    TEST_CASE(test_challenge_across_lines),
    TEST_CASE(test_challenge_malformed),
    TEST_CASE(test_token_key_and_url),
    TEST_CASE(test_rfc3339),
    TEST_CASE(test_token_parse),
    TEST_CASE(test_basic),
    TEST_CASE(test_repo_scope),
    TEST_CASE(test_cache),
    TEST_CASE(test_url_parse),
    TEST_CASE(test_url_resolve),
};

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
