/* Request routing (proxy/route.c): operation, upstream choice, name normalisation and
 * validation, pagination, methods, hostile targets. The configurations are built by hand so
 * the test depends on config_upstream_find only, not on config parsing. */
#include <errno.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "proxy/route.h"
#include "testutil.h"
#include "unit/check.h"

#define UP(nm, hub)                                                                                \
    {                                                                                              \
        .name = (nm), .url = "https://" nm, .tls = true, .host = (nm), .port = 443,                \
        .base_path = "", .dockerhub = (hub)                                                        \
    }

/* Docker Hub by default, plus ghcr.io and a local registry with a port. */
static config_t hub_cfg = {
    .upstreams = {UP("docker.io", true), UP("ghcr.io", false), UP("127.0.0.1:5001", false)},
    .n_upstreams = 3,
};
/* Docker Hub only. */
static config_t hub_only_cfg = {
    .upstreams = {UP("docker.io", true)},
    .n_upstreams = 1,
};
/* A private default upstream (no library/ rewriting), Docker Hub second. */
static config_t private_cfg = {
    .upstreams = {UP("registry.example.com", false), UP("docker.io", true)},
    .n_upstreams = 2,
};

#define D64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define U64 "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
#define SHA256 "sha256:" D64
#define SHA512 "sha512:" D64 D64
#define T129                                                                                       \
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define T128                                                                                       \
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

enum { OK = 0, BAD = 1 };
#define G ROUTE_GET
#define H ROUTE_HEAD

/* One request and what route_parse must make of it. For OK rows: op, upstream name, name,
 * ref (NULL: empty), ns ("" unless ?ns= chose the upstream). For BAD rows: code, and a
 * substring of the message (NULL: not checked). */
struct rcase {
    const config_t *cfg;
    enum route_method m;
    const char *target;
    int expect;
    enum route_op op;
    const char *upstream;
    const char *name;
    const char *ref;
    const char *ns;
    enum oci_code code;
    const char *msg;
};

#define OKC(cfg, m, t, op, up, name, ref, ns)                                                      \
    {                                                                                              \
        cfg, m, t, OK, op, up, name, ref, ns, 0, NULL                                              \
    }
#define ERR(cfg, m, t, code, msg)                                                                  \
    {                                                                                              \
        cfg, m, t, BAD, 0, NULL, NULL, NULL, NULL, code, msg                                       \
    }

static const struct rcase cases[] = {
    /* Ping. */
    OKC(&hub_cfg, G, "/v2/", ROUTE_PING, "docker.io", "", NULL, ""),
    OKC(&hub_cfg, G, "/v2", ROUTE_PING, "docker.io", "", NULL, ""),
    OKC(&hub_cfg, H, "/v2/", ROUTE_PING, "docker.io", "", NULL, ""),
    OKC(&hub_cfg, G, "/v2/?foo=bar", ROUTE_PING, "docker.io", "", NULL, ""),

    /* docker (registry-mirrors): already normalised library/ names, default upstream. */
    OKC(&hub_cfg, H, "/v2/library/alpine/manifests/3.20", ROUTE_MANIFEST, "docker.io",
        "library/alpine", "3.20", ""),
    OKC(&hub_cfg, G, "/v2/library/alpine/manifests/" SHA256, ROUTE_MANIFEST, "docker.io",
        "library/alpine", SHA256, ""),
    OKC(&hub_cfg, G, "/v2/library/alpine/blobs/" SHA256, ROUTE_BLOB, "docker.io", "library/alpine",
        SHA256, ""),
    /* One component on Docker Hub means library/<name>. */
    OKC(&hub_cfg, G, "/v2/alpine/manifests/latest", ROUTE_MANIFEST, "docker.io", "library/alpine",
        "latest", ""),
    OKC(&hub_cfg, G, "/v2/alpine/tags/list", ROUTE_TAGS, "docker.io", "library/alpine", NULL, ""),
    /* ...but not on a private default upstream. */
    OKC(&private_cfg, G, "/v2/alpine/manifests/latest", ROUTE_MANIFEST, "registry.example.com",
        "alpine", "latest", ""),
    OKC(&private_cfg, G, "/v2/team/app/manifests/v1", ROUTE_MANIFEST, "registry.example.com",
        "team/app", "v1", ""),
    /* Two and three components pass through. */
    OKC(&hub_cfg, G, "/v2/bitnami/redis/manifests/7", ROUTE_MANIFEST, "docker.io", "bitnami/redis",
        "7", ""),
    OKC(&hub_cfg, G, "/v2/a/b/c/manifests/v1", ROUTE_MANIFEST, "docker.io", "a/b/c", "v1", ""),
    /* Names that contain a route keyword still route from the right. */
    OKC(&hub_cfg, G, "/v2/foo/manifests/tags/list", ROUTE_TAGS, "docker.io", "foo/manifests", NULL,
        ""),
    OKC(&hub_cfg, G, "/v2/blobs/blobs/" SHA256, ROUTE_BLOB, "docker.io", "library/blobs", SHA256,
        ""),

    /* containerd: ?ns= names the upstream. */
    OKC(&hub_cfg, G, "/v2/library/alpine/manifests/3.20?ns=docker.io", ROUTE_MANIFEST, "docker.io",
        "library/alpine", "3.20", "docker.io"),
    OKC(&hub_cfg, H, "/v2/alpine/manifests/3.20?ns=docker.io", ROUTE_MANIFEST, "docker.io",
        "library/alpine", "3.20", "docker.io"),
    OKC(&hub_cfg, G, "/v2/foo/bar/manifests/v1?ns=ghcr.io", ROUTE_MANIFEST, "ghcr.io", "foo/bar",
        "v1", "ghcr.io"),
    OKC(&hub_cfg, G, "/v2/foo/blobs/" SHA256 "?ns=ghcr.io", ROUTE_BLOB, "ghcr.io", "foo", SHA256,
        "ghcr.io"),
    /* Go's url.Values escapes ':' in the port. */
    OKC(&hub_cfg, G, "/v2/foo/manifests/v1?ns=127.0.0.1%3A5001", ROUTE_MANIFEST, "127.0.0.1:5001",
        "foo", "v1", "127.0.0.1:5001"),
    OKC(&hub_cfg, G, "/v2/foo/manifests/v1?ns=127.0.0.1:5001", ROUTE_MANIFEST, "127.0.0.1:5001",
        "foo", "v1", "127.0.0.1:5001"),
    /* Docker Hub aliases and case. */
    OKC(&hub_cfg, G, "/v2/library/alpine/manifests/3.20?ns=index.docker.io", ROUTE_MANIFEST,
        "docker.io", "library/alpine", "3.20", "index.docker.io"),
    OKC(&hub_cfg, G, "/v2/foo/manifests/v1?ns=GHCR.IO", ROUTE_MANIFEST, "ghcr.io", "foo", "v1",
        "GHCR.IO"),
    /* containerd override_path on a /v2/<host> mirror: prefix and ns agree, prefix dropped. */
    OKC(&hub_cfg, G, "/v2/ghcr.io/foo/bar/manifests/v1?ns=ghcr.io", ROUTE_MANIFEST, "ghcr.io",
        "foo/bar", "v1", "ghcr.io"),
    OKC(&hub_cfg, G, "/v2/docker.io/library/alpine/manifests/3.20?ns=docker.io", ROUTE_MANIFEST,
        "docker.io", "library/alpine", "3.20", "docker.io"),
    /* ns wins over a prefix naming a different upstream (the prefix stays in the name, which
     * then fails validation because of the port's ':'). */
    ERR(&hub_cfg, G, "/v2/127.0.0.1:5001/foo/manifests/v1?ns=ghcr.io", OCI_NAME_INVALID, NULL),
    /* ns that is not configured: 403, never an open proxy. */
    ERR(&hub_only_cfg, G, "/v2/foo/bar/manifests/v1?ns=ghcr.io", OCI_DENIED,
        "upstream ghcr.io is not configured"),
    ERR(&hub_cfg, G, "/v2/foo/manifests/v1?ns=evil.example.com", OCI_DENIED,
        "upstream evil.example.com is not configured"),
    ERR(&hub_cfg, G, "/v2/foo/manifests/v1?ns=ghcr.io%zz", OCI_DENIED, NULL),
    ERR(&hub_cfg, G, "/v2/foo/manifests/v1?ns=ghcr.io%00", OCI_DENIED, NULL),
    /* An empty ns is no ns. */
    OKC(&hub_cfg, G, "/v2/alpine/manifests/v1?ns=", ROUTE_MANIFEST, "docker.io", "library/alpine",
        "v1", ""),
    /* The first ns wins, like Go's url.Values.Get. */
    OKC(&hub_cfg, G, "/v2/foo/manifests/v1?ns=ghcr.io&ns=docker.io", ROUTE_MANIFEST, "ghcr.io",
        "foo", "v1", "ghcr.io"),

    /* podman / registries.conf: /v2/<host>/<name>. */
    OKC(&hub_cfg, G, "/v2/ghcr.io/foo/bar/manifests/v1", ROUTE_MANIFEST, "ghcr.io", "foo/bar", "v1",
        ""),
    OKC(&hub_cfg, G, "/v2/127.0.0.1:5001/foo/manifests/v1", ROUTE_MANIFEST, "127.0.0.1:5001", "foo",
        "v1", ""),
    OKC(&hub_cfg, G, "/v2/127.0.0.1:5001/a/b/c/blobs/" SHA256, ROUTE_BLOB, "127.0.0.1:5001",
        "a/b/c", SHA256, ""),
    OKC(&hub_cfg, G, "/v2/docker.io/alpine/manifests/latest", ROUTE_MANIFEST, "docker.io",
        "library/alpine", "latest", ""),
    OKC(&hub_cfg, G, "/v2/index.docker.io/library/alpine/manifests/latest", ROUTE_MANIFEST,
        "docker.io", "library/alpine", "latest", ""),
    OKC(&private_cfg, G, "/v2/docker.io/nginx/manifests/1.27", ROUTE_MANIFEST, "docker.io",
        "library/nginx", "1.27", ""),
    OKC(&hub_cfg, G, "/v2/ghcr.io/foo/tags/list", ROUTE_TAGS, "ghcr.io", "foo", NULL, ""),
    /* A host prefix that is not configured: 403 naming it. */
    ERR(&hub_only_cfg, G, "/v2/ghcr.io/foo/bar/manifests/v1", OCI_DENIED,
        "upstream ghcr.io is not configured"),
    ERR(&hub_cfg, G, "/v2/127.0.0.1:5002/foo/manifests/v1", OCI_DENIED,
        "upstream 127.0.0.1:5002 is not configured"),
    ERR(&hub_cfg, G, "/v2/localhost/foo/manifests/v1", OCI_DENIED,
        "upstream localhost is not configured"),
    ERR(&hub_cfg, G, "/v2/localhost:5000/foo/blobs/" SHA256, OCI_DENIED,
        "upstream localhost:5000 is not configured"),
    /* A single component with a dot is a repository, not a host. */
    OKC(&private_cfg, G, "/v2/my.app/manifests/v1", ROUTE_MANIFEST, "registry.example.com",
        "my.app", "v1", ""),
    /* The upstream name alone is not a prefix (nothing after it). */
    OKC(&hub_cfg, G, "/v2/ghcr.io/manifests/v1", ROUTE_MANIFEST, "docker.io", "library/ghcr.io",
        "v1", ""),

    /* Names. */
    ERR(&hub_cfg, G, "/v2/Library/Alpine/manifests/latest", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/UPPER/manifests/latest", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/ghcr.io/Foo/manifests/v1", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/a..b/manifests/latest", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/a_/manifests/latest", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/-a/b/manifests/latest", OCI_NAME_INVALID, NULL),

    /* Manifest references. */
    OKC(&hub_cfg, G, "/v2/library/alpine/manifests/" SHA512, ROUTE_MANIFEST, "docker.io",
        "library/alpine", SHA512, ""),
    OKC(&hub_cfg, G, "/v2/library/alpine/manifests/" T128, ROUTE_MANIFEST, "docker.io",
        "library/alpine", T128, ""),
    OKC(&hub_cfg, G, "/v2/library/alpine/manifests/_v1.0-rc.1", ROUTE_MANIFEST, "docker.io",
        "library/alpine", "_v1.0-rc.1", ""),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/" T129, OCI_MANIFEST_UNKNOWN,
        "manifest unknown: invalid tag"),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/.hidden", OCI_MANIFEST_UNKNOWN,
        "manifest unknown: invalid tag"),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/-x", OCI_MANIFEST_UNKNOWN,
        "manifest unknown: invalid tag"),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/", OCI_MANIFEST_UNKNOWN,
        "manifest unknown: invalid tag"),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/sha256:abc", OCI_DIGEST_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/sha256:totallywrong", OCI_DIGEST_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/sha256:" U64, OCI_DIGEST_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/blake3:" D64, OCI_DIGEST_INVALID,
        "unsupported digest algorithm"),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/latest:1", OCI_DIGEST_INVALID, NULL),

    /* Blobs and referrers need digests. */
    OKC(&hub_cfg, G, "/v2/library/alpine/blobs/" SHA512, ROUTE_BLOB, "docker.io", "library/alpine",
        SHA512, ""),
    ERR(&hub_cfg, G, "/v2/library/alpine/blobs/sha256:abc", OCI_DIGEST_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/blobs/sha256:" U64, OCI_DIGEST_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/blobs/blake3:" D64, OCI_DIGEST_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/blobs/latest", OCI_DIGEST_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/blobs/uploads", OCI_DIGEST_INVALID, NULL),
    OKC(&hub_cfg, G, "/v2/library/alpine/referrers/" SHA256, ROUTE_REFERRERS, "docker.io",
        "library/alpine", SHA256, ""),
    ERR(&hub_cfg, G, "/v2/library/alpine/referrers/v1", OCI_DIGEST_INVALID, NULL),

    /* Tags list and catalog. */
    OKC(&hub_cfg, G, "/v2/library/alpine/tags/list", ROUTE_TAGS, "docker.io", "library/alpine",
        NULL, ""),
    OKC(&hub_cfg, G, "/v2/_catalog", ROUTE_CATALOG, "docker.io", "", NULL, ""),
    OKC(&hub_cfg, G, "/v2/_catalog?ns=ghcr.io", ROUTE_CATALOG, "ghcr.io", "", NULL, "ghcr.io"),
    OKC(&private_cfg, G, "/v2/_catalog?n=10", ROUTE_CATALOG, "registry.example.com", "", NULL, ""),
    ERR(&hub_only_cfg, G, "/v2/_catalog?ns=ghcr.io", OCI_DENIED, "upstream ghcr.io"),
    ERR(&hub_cfg, G, "/v2/_catalog/", OCI_UNSUPPORTED, NULL),

    /* Methods: read-only. */
    ERR(&hub_cfg, ROUTE_OTHER, "/v2/library/alpine/blobs/uploads/", OCI_UNSUPPORTED,
        "winch is a read-only pull-through cache"),
    ERR(&hub_cfg, ROUTE_OTHER, "/v2/library/alpine/manifests/latest", OCI_UNSUPPORTED, "read-only"),
    ERR(&hub_cfg, ROUTE_OTHER, "/v2/library/alpine/blobs/" SHA256, OCI_UNSUPPORTED, "read-only"),
    ERR(&hub_cfg, ROUTE_OTHER, "/v2/library/alpine/blobs/uploads/1234-5678", OCI_UNSUPPORTED,
        "read-only"),
    ERR(&hub_cfg, ROUTE_OTHER, "/v2/", OCI_UNSUPPORTED, "read-only"),
    ERR(&hub_cfg, ROUTE_OTHER, "*", OCI_UNSUPPORTED, "read-only"),

    /* Unknown paths: 404 (status override; the method is fine, the resource does not exist). */
    ERR(&hub_cfg, G, "/", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v1/", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2x", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/foo", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/foo/", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/foo/bar", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/manifests/latest", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/tags/list", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/foo/tags/list/", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/foo/tags/other", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/blobs/uploads/", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/v2/library/alpine/blobs/uploads/1234", OCI_UNSUPPORTED, NULL),
    ERR(&hub_cfg, G, "/metrics", OCI_UNSUPPORTED, NULL),

    /* Hostile targets: refused, never crash. */
    ERR(&hub_cfg, G, "http://registry-1.docker.io/v2/", OCI_NAME_INVALID, "must be a path"),
    ERR(&hub_cfg, G, "*", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/../v2/library/alpine/manifests/latest", OCI_NAME_INVALID, "dot segment"),
    ERR(&hub_cfg, G, "/v2/library/../alpine/manifests/latest", OCI_NAME_INVALID, "dot segment"),
    ERR(&hub_cfg, G, "/v2/library/./alpine/manifests/latest", OCI_NAME_INVALID, "dot segment"),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/..", OCI_NAME_INVALID, "dot segment"),
    ERR(&hub_cfg, G, "/v2//library/alpine/manifests/latest", OCI_NAME_INVALID, "empty segment"),
    ERR(&hub_cfg, G, "/v2/library//alpine/manifests/latest", OCI_NAME_INVALID, "empty segment"),
    ERR(&hub_cfg, G, "//v2/", OCI_NAME_INVALID, "empty segment"),
    ERR(&hub_cfg, G, "/v2/library%2Falpine/manifests/latest", OCI_NAME_INVALID, "percent"),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/lat%65st", OCI_NAME_INVALID, "percent"),
    ERR(&hub_cfg, G, "/v2/library/alpine/manifests/latest#frag", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alp ine/manifests/latest", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alp\x7fine/manifests/latest", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library/alp\xc3\xa9/manifests/latest", OCI_NAME_INVALID, NULL),
    ERR(&hub_cfg, G, "/v2/library\\alpine/manifests/latest", OCI_NAME_INVALID, NULL),
};

static void check_case(size_t i, const struct rcase *c)
{
    route_t r;
    route_error_t e;
    int rc = route_parse(&r, c->cfg, c->m, c->target, strlen(c->target), &e);

    if ((rc == 0) != (c->expect == OK)) {
        fprintf(stderr, "case %zu %s: rc %d (%s: %s)\n", i, c->target, rc,
                rc ? oci_code_name(e.code) : "-", rc && e.message ? e.message : "-");
    }
    if (c->expect == OK) {
        CHECK_INT(rc, 0);
        if (r.op != c->op)
            fprintf(stderr, "case %zu %s\n", i, c->target);
        CHECK_INT(r.op, c->op);
        CHECK_INT(r.head, c->m == ROUTE_HEAD);
        CHECK(r.upstream != NULL);
        CHECK_STR(r.upstream->name, c->upstream);
        CHECK_STR(r.name, c->name);
        CHECK_STR(r.ref, c->ref ? c->ref : "");
        CHECK_INT(r.ref_is_digest, c->ref && strchr(c->ref, ':') != NULL);
        CHECK_INT(r.ns_given, c->ns[0] != '\0');
        CHECK_STR(r.ns, c->ns);
        return;
    }
    CHECK_INT(rc, WE_INVALID);
    if (e.code != c->code)
        fprintf(stderr, "case %zu %s: got %s (%s)\n", i, c->target, oci_code_name(e.code),
                e.message ? e.message : "-");
    CHECK_INT(e.code, c->code);
    CHECK(e.message != NULL && e.message[0] != '\0');
    CHECK(e.status == 0 || e.status >= 400);
    if (strstr(e.message, "unknown API path"))
        CHECK_INT(e.status, 404);
    if (c->msg && !strstr(e.message, c->msg)) {
        fprintf(stderr, "case %zu %s: message \"%s\" lacks \"%s\"\n", i, c->target, e.message,
                c->msg);
        CHECK(0);
    }
}

static void test_table(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        check_case(i, &cases[i]);
    printf("test_table: %zu table cases\n", ARRAY_SIZE(cases));
}

static int parse(route_t *r, route_error_t *e, const config_t *cfg, const char *target)
{
    return route_parse(r, cfg, ROUTE_GET, target, strlen(target), e);
}

static void test_pagination(void)
{
    route_t r;
    route_error_t e;

    /* Absent. */
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list"), 0);
    CHECK_INT(r.n, -1);
    CHECK_STR(r.last, "");

    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?n=10&last=3.19"), 0);
    CHECK_INT(r.op, ROUTE_TAGS);
    CHECK_INT(r.n, 10);
    CHECK_STR(r.last, "3.19");

    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?last=v1.0-rc.1"), 0);
    CHECK_INT(r.n, -1);
    CHECK_STR(r.last, "v1.0-rc.1");

    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?n=0"), 0);
    CHECK_INT(r.n, 0);
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?n=10000"), 0);
    CHECK_INT(r.n, 10000);
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?n=007"), 0);
    CHECK_INT(r.n, 7);

    /* Empty parameters are tolerated as absent; unknown ones ignored. */
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?n=&last=&&x&y=1&=z"), 0);
    CHECK_INT(r.n, -1);
    CHECK_STR(r.last, "");
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?"), 0);
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?foo=%zz&n=5"), 0);
    CHECK_INT(r.n, 5);
    /* Keys are exact: "N" and "nn" are not n. */
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?N=x&nn=x"), 0);
    CHECK_INT(r.n, -1);

    /* Bad n. */
    static const char *const bad_n[] = {"-1",   "10001", "99999999999999999999", "1e3", "+5",
                                        "0x10", "5%20",  "%35%35%35%35%35%35",   "abc", " 5"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_n); i++) {
        char t[128];
        snprintf(t, sizeof(t), "/v2/library/alpine/tags/list?n=%s", bad_n[i]);
        int rc = parse(&r, &e, &hub_cfg, t);
        if (rc != WE_INVALID)
            fprintf(stderr, "n=%s accepted\n", bad_n[i]);
        CHECK_INT(rc, WE_INVALID);
        CHECK_INT(e.code, OCI_PAGINATION_NUMBER_INVALID);
    }
    /* Escaped digits are digits. */
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?n=%31%32"), 0);
    CHECK_INT(r.n, 12);

    /* last must be a tag for tags/list. */
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?last=a/b"), WE_INVALID);
    CHECK_INT(e.code, OCI_PAGINATION_NUMBER_INVALID);
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?last=.x"), WE_INVALID);
    CHECK_INT(e.code, OCI_PAGINATION_NUMBER_INVALID);
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/tags/list?last=" T129), WE_INVALID);
    CHECK_INT(e.code, OCI_PAGINATION_NUMBER_INVALID);

    /* Catalog: last is a repository name (escaped '/' is fine in a query). */
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/_catalog?n=100&last=library%2Falpine"), 0);
    CHECK_INT(r.op, ROUTE_CATALOG);
    CHECK_INT(r.n, 100);
    CHECK_STR(r.last, "library/alpine");
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/_catalog?last=library/alpine&ns=ghcr.io"), 0);
    CHECK_STR(r.last, "library/alpine");
    CHECK_STR(r.upstream->name, "ghcr.io");
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/_catalog?last=Library"), WE_INVALID);
    CHECK_INT(e.code, OCI_PAGINATION_NUMBER_INVALID);
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/_catalog?n=x"), WE_INVALID);
    CHECK_INT(e.code, OCI_PAGINATION_NUMBER_INVALID);

    /* n and last mean nothing to manifests: ignored, not validated. */
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/manifests/v1?n=x&last=/"), 0);
    CHECK_INT(r.n, -1);
    CHECK_STR(r.last, "");
}

static void test_referrers(void)
{
    route_t r;
    route_error_t e;

    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/referrers/" SHA256), 0);
    CHECK_STR(r.artifact_type, "");
    CHECK_INT(parse(&r, &e, &hub_cfg,
                    "/v2/library/alpine/referrers/" SHA256
                    "?artifactType=application%2Fvnd.example.sbom.v1%2Bjson"),
              0);
    CHECK_STR(r.artifact_type, "application/vnd.example.sbom.v1+json");
    CHECK_INT(parse(&r, &e, &hub_cfg,
                    "/v2/library/alpine/referrers/" SHA256
                    "?artifactType=application/vnd.example+json&ns=docker.io"),
              0);
    CHECK_STR(r.artifact_type, "application/vnd.example+json");
    CHECK(r.ns_given);
    /* A filter winch cannot hold is dropped (the client filters itself when the response
     * lacks OCI-Filters-Applied). */
    char t[512];
    snprintf(t, sizeof(t), "/v2/library/alpine/referrers/%s?artifactType=%s", SHA256, T129);
    CHECK_INT(parse(&r, &e, &hub_cfg, t), 0);
    CHECK_STR(r.artifact_type, "");
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/referrers/" SHA256 "?artifactType=a%0ab"),
              0);
    CHECK_STR(r.artifact_type, "");
    /* Characters that would mean something in the upstream query are not media types. */
    CHECK_INT(
        parse(&r, &e, &hub_cfg, "/v2/library/alpine/referrers/" SHA256 "?artifactType=a%26ns%3Dx"),
        0);
    CHECK_STR(r.artifact_type, "");
    CHECK_INT(parse(&r, &e, &hub_cfg, "/v2/library/alpine/referrers/" SHA256 "?artifactType=a%23b"),
              0);
    CHECK_STR(r.artifact_type, "");
}

static void test_edges(void)
{
    route_t r;
    route_error_t e;
    static char big[8192];

    /* Too long: refused before any scanning. */
    memset(big, 'a', sizeof(big));
    memcpy(big, "/v2/", 4);
    CHECK_INT(route_parse(&r, &hub_cfg, ROUTE_GET, big, 4097, &e), WE_INVALID);
    CHECK_INT(e.code, OCI_NAME_INVALID);
    CHECK_INT(route_parse(&r, &hub_cfg, ROUTE_GET, big, sizeof(big), &e), WE_INVALID);
    CHECK_INT(e.code, OCI_NAME_INVALID);

    /* A name of exactly 255 bytes is fine; 256 is not. On Docker Hub the library/ prefix
     * counts. */
    char name[300], target[400];
    memset(name, 'a', sizeof(name));
    name[100] = '/';
    snprintf(target, sizeof(target), "/v2/%.255s/manifests/v1", name);
    CHECK_INT(parse(&r, &e, &hub_cfg, target), 0);
    CHECK_INT(strlen(r.name), 255);
    snprintf(target, sizeof(target), "/v2/%.256s/manifests/v1", name);
    CHECK_INT(parse(&r, &e, &hub_cfg, target), WE_INVALID);
    CHECK_INT(e.code, OCI_NAME_INVALID);
    snprintf(target, sizeof(target), "/v2/%.99s/manifests/v1", name);
    CHECK_INT(parse(&r, &e, &hub_cfg, target), 0);
    CHECK(strncmp(r.name, "library/aaa", 11) == 0);
    CHECK_INT(strlen(r.name), 8 + 99);
    char one[300];
    memset(one, 'b', sizeof(one));
    snprintf(target, sizeof(target), "/v2/%.247s/manifests/v1", one);
    CHECK_INT(parse(&r, &e, &hub_cfg, target), 0);
    CHECK_INT(strlen(r.name), 255);
    snprintf(target, sizeof(target), "/v2/%.248s/manifests/v1", one);
    CHECK_INT(parse(&r, &e, &hub_cfg, target), WE_INVALID);
    CHECK_INT(e.code, OCI_NAME_INVALID);

    /* A long unconfigured host is named, truncated, without overflowing the message. */
    char host[1200];
    memset(host, 'h', sizeof(host));
    memcpy(host + 600, ".io", 3);
    snprintf(target, sizeof(target), "/v2/%.300s/x/manifests/v1", host);
    CHECK_INT(parse(&r, &e, &hub_cfg, target), WE_INVALID);
    CHECK_INT(e.code, OCI_NAME_INVALID); /* 300 h's have no dot: a long name, not a host */
    char t2[1400];
    snprintf(t2, sizeof(t2), "/v2/%.700s/x/manifests/v1", host);
    CHECK_INT(parse(&r, &e, &hub_cfg, t2), WE_INVALID);
    CHECK_INT(e.code, OCI_DENIED);
    CHECK(strlen(e.message) < sizeof(e.text));
    CHECK(strncmp(e.message, "upstream hhhh", 13) == 0);

    /* An ns too long to hold is refused, not truncated into another host. */
    char t3[1400];
    snprintf(t3, sizeof(t3), "/v2/foo/manifests/v1?ns=%.300s", host);
    CHECK_INT(parse(&r, &e, &hub_cfg, t3), WE_INVALID);
    CHECK_INT(e.code, OCI_DENIED);

    /* Only len bytes are read: the query after len is not seen. */
    const char *t4 = "/v2/alpine/manifests/v1?ns=ghcr.io";
    CHECK_INT(route_parse(&r, &hub_cfg, ROUTE_GET, t4, strlen("/v2/alpine/manifests/v1"), &e), 0);
    CHECK_STR(r.upstream->name, "docker.io");
    CHECK(!r.ns_given);
    /* Embedded NUL inside len is refused. */
    CHECK_INT(route_parse(&r, &hub_cfg, ROUTE_GET, "/v2/a\0b/manifests/v1", 20, &e), WE_INVALID);
    CHECK_INT(e.code, OCI_NAME_INVALID);
    CHECK_INT(route_parse(&r, &hub_cfg, ROUTE_GET, NULL, 0, &e), WE_INVALID);

    /* Every prefix of a valid target parses or is refused cleanly (a cheap fuzz). */
    const char *full = "/v2/127.0.0.1:5001/foo/bar/referrers/" SHA256 "?ns=127.0.0.1%3A5001&n=1";
    size_t flen = strlen(full);
    for (size_t i = 0; i <= flen; i++) {
        int rc = route_parse(&r, &hub_cfg, ROUTE_GET, full, i, &e);
        CHECK(rc == 0 || rc == WE_INVALID);
        if (rc != 0)
            CHECK(e.message != NULL);
    }
    /* Every single-byte mutation too. */
    char mut[256];
    for (size_t i = 0; i < flen; i++) {
        for (int c = 0; c < 256; c += 7) {
            memcpy(mut, full, flen);
            mut[i] = (char)c;
            int rc = route_parse(&r, &hub_cfg, ROUTE_HEAD, mut, flen, &e);
            CHECK(rc == 0 || rc == WE_INVALID);
            if (rc == 0) {
                CHECK(r.head);
                if (r.op != ROUTE_PING && r.op != ROUTE_CATALOG)
                    CHECK(ref_name_valid(r.name, strlen(r.name)));
            }
        }
    }
}

static const test_case_t test_cases[] = {
    TEST_CASE(test_table),
    TEST_CASE(test_pagination),
    TEST_CASE(test_referrers),
    TEST_CASE(test_edges),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, test_cases, ARRAY_SIZE(test_cases));
}
