#include "proxy/route.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"

/* Longest request-target accepted. The longest legal one is far shorter (a 255-byte name, a
 * 160-byte digest and a few short query parameters); the bound only keeps the scanners below
 * from walking a huge line. */
#define ROUTE_TARGET_MAX 4096

/* Largest n accepted for tags/list and _catalog pagination. */
#define ROUTE_N_MAX 10000

static const char read_only_msg[] = "winch is a read-only pull-through cache";

static int fail(route_error_t *err, enum oci_code code, const char *message)
{
    err->code = code;
    err->message = message;
    err->status = 0;
    return WE_INVALID;
}

/* A 403 whose message names the host, formatted into err->text: the host came from the
 * request, so it is bounded (REF_NAME_MAX) and has been checked to be printable ASCII. */
static int deny_host(route_error_t *err, const char *host, size_t len)
{
    if (len > REF_NAME_MAX)
        len = REF_NAME_MAX;
    snprintf(err->text, sizeof(err->text), "upstream %.*s is not configured", (int)len, host);
    err->code = OCI_DENIED;
    err->message = err->text;
    err->status = 0;
    return WE_INVALID;
}

static bool eq(const char *s, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    return n == m && memcmp(s, lit, n) == 0;
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool ieq(const char *s, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    if (n != m)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (lower(s[i]) != lower(lit[i]))
            return false;
    }
    return true;
}

/* ---- query string ---------------------------------------------------------------------- */

/* Finds the first `key=value` pair for key in q[0..qlen) and returns its raw value. Keys are
 * compared as sent (no client percent-encodes "ns" or "n"). A pair with an empty value counts
 * as absent, so "?n=&last=" behaves like no parameters at all. */
static bool query_get(const char *q, size_t qlen, const char *key, const char **val, size_t *vlen)
{
    size_t start = 0;
    for (size_t i = 0; i <= qlen; i++) {
        if (i < qlen && q[i] != '&')
            continue;
        const char *p = q + start;
        size_t n = i - start;
        start = i + 1;
        const char *e = memchr(p, '=', n);
        size_t klen = e ? (size_t)(e - p) : n;
        if (!eq(p, klen, key))
            continue;
        if (!e || klen + 1 == n)
            return false;
        *val = e + 1;
        *vlen = n - klen - 1;
        return true;
    }
    return false;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into dst[cap] (NUL-terminated). containerd sends ns through Go's
 * url.Values, so "127.0.0.1:5001" arrives as "127.0.0.1%3A5001". '+' is kept literally
 * rather than read as a space: none of the values winch reads may contain a space, and a
 * hand-typed artifactType "application/vnd.x+json" then means what it says. Returns the
 * decoded length, or -1 when an escape is malformed, a decoded byte is not printable ASCII
 * (no value winch reads may hold one), or the result does not fit. */
static long pct_decode(char *dst, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c < 0x21 || c > 0x7e)
            return -1;
        if (o + 1 >= cap)
            return -1;
        dst[o++] = (char)c;
    }
    if (cap == 0)
        return -1;
    dst[o] = '\0';
    return (long)o;
}

/* n: a decimal count from 0 to ROUTE_N_MAX, digits only. */
static bool parse_n(const char *s, size_t n, long *out)
{
    char buf[8];
    long len = pct_decode(buf, sizeof(buf), s, n);
    if (len <= 0 || len > 5)
        return false;
    long v = 0;
    for (long i = 0; i < len; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return false;
        v = v * 10 + (buf[i] - '0');
    }
    if (v > ROUTE_N_MAX)
        return false;
    *out = v;
    return true;
}

/* ---- path ---------------------------------------------------------------------------- */

/* Rejects what no legal path contains, with a clearer message than the name grammar would
 * give: bytes outside printable ASCII, percent-encoding (nothing legal in a name, tag or
 * digest needs it, and decoding it would let "%2F" smuggle a '/'), empty segments and dot
 * segments (a path is never normalised, so "/v2/a/../b" must not quietly mean "/v2/b"). */
static const char *path_problem(const char *p, size_t n)
{
    size_t seg = 1; /* p[0] is the leading '/' */
    for (size_t i = 1; i <= n; i++) {
        if (i < n) {
            unsigned char c = (unsigned char)p[i];
            if (c < 0x21 || c > 0x7e || c == '#')
                return "invalid character in the request path";
            if (c == '%')
                return "percent-encoding is not allowed in the request path";
            if (c != '/')
                continue;
        }
        size_t len = i - seg;
        if (len == 0 && i < n)
            return "empty segment in the request path";
        if (eq(p + seg, len, ".") || eq(p + seg, len, ".."))
            return "dot segments are not allowed in the request path";
        seg = i + 1;
    }
    return NULL;
}

static bool looks_like_host(const char *s, size_t n)
{
    if (ieq(s, n, "localhost"))
        return true;
    return memchr(s, '.', n) != NULL || memchr(s, ':', n) != NULL;
}

/* Picks the upstream for a request whose path names repository name[0..*name_len) and
 * strips a leading upstream component from it (docs/protocol.md, "Choosing the upstream").
 * On return *name / *name_len are the repository at that upstream, not yet normalised or
 * validated. */
static int choose_upstream(route_t *out, const config_t *cfg, const char **name, size_t *name_len,
                           const char *q, size_t qlen, route_error_t *err)
{
    const char *nm = *name;
    size_t nlen = *name_len;
    const char *slash = nm ? memchr(nm, '/', nlen) : NULL;
    size_t first_len = slash ? (size_t)(slash - nm) : nlen;
    const char *val;
    size_t vlen;

    /* 1. ?ns=<host> (containerd). */
    if (query_get(q, qlen, "ns", &val, &vlen)) {
        long l = pct_decode(out->ns, sizeof(out->ns), val, vlen);
        if (l < 0) {
            out->ns[0] = '\0';
            return fail(err, OCI_DENIED, "the upstream named by ns is not configured");
        }
        out->ns_given = true;
        out->upstream = config_upstream_find(cfg, out->ns, (size_t)l);
        if (!out->upstream)
            return deny_host(err, out->ns, (size_t)l);
        /* containerd with override_path on a /v2/<host> mirror URL sends both the prefix and
         * ns: drop the prefix when it names the same upstream. */
        if (slash && config_upstream_find(cfg, nm, first_len) == out->upstream) {
            *name = slash + 1;
            *name_len = nlen - first_len - 1;
        }
        return 0;
    }

    /* 2. /v2/<host>/<name>: a configured upstream as the first of several components. */
    if (slash) {
        out->upstream = config_upstream_find(cfg, nm, first_len);
        if (out->upstream) {
            *name = slash + 1;
            *name_len = nlen - first_len - 1;
            return 0;
        }
        /* A host that is not configured is refused, never proxied. */
        if (looks_like_host(nm, first_len))
            return deny_host(err, nm, first_len);
    }

    /* 3. The default upstream. */
    if (!cfg || cfg->n_upstreams == 0)
        return fail(err, OCI_UNAVAILABLE, "no upstream is configured");
    out->upstream = &cfg->upstreams[0];
    return 0;
}

/* Copies the repository name into out->name, adding Docker Hub's "library/" to one-component
 * names, and validates it. */
static int set_name(route_t *out, const char *name, size_t len, route_error_t *err)
{
    static const char lib[] = "library/";
    size_t pre = 0;

    if (len == 0)
        return fail(err, OCI_NAME_INVALID, "invalid repository name");
    if (out->upstream->dockerhub && !memchr(name, '/', len))
        pre = sizeof(lib) - 1;
    if (pre + len > REF_NAME_MAX)
        return fail(err, OCI_NAME_INVALID, "repository name is longer than 255 bytes");
    memcpy(out->name, lib, pre);
    memcpy(out->name + pre, name, len);
    out->name[pre + len] = '\0';
    if (!ref_name_valid(out->name, pre + len))
        return fail(err, OCI_NAME_INVALID, "invalid repository name");
    return 0;
}

/* Validates a digest reference and copies it into out->ref. */
static int set_digest(route_t *out, const char *ref, size_t len, route_error_t *err)
{
    int rc = ref_digest_parse(ref, len, NULL);
    if (rc == -ENOTSUP)
        return fail(err, OCI_DIGEST_INVALID, "unsupported digest algorithm");
    if (rc != 0)
        return fail(err, OCI_DIGEST_INVALID, "invalid digest");
    /* ref_digest_parse bounds len by REF_DIGEST_MAX. */
    memcpy(out->ref, ref, len);
    out->ref[len] = '\0';
    out->ref_is_digest = true;
    return 0;
}

static int set_pagination(route_t *out, const char *q, size_t qlen, route_error_t *err)
{
    const char *val;
    size_t vlen;

    if (query_get(q, qlen, "n", &val, &vlen) && !parse_n(val, vlen, &out->n))
        return fail(err, OCI_PAGINATION_NUMBER_INVALID, "n must be a number from 0 to 10000");
    if (query_get(q, qlen, "last", &val, &vlen)) {
        long l = pct_decode(out->last, sizeof(out->last), val, vlen);
        bool ok = l > 0 && (out->op == ROUTE_TAGS ? ref_tag_valid(out->last, (size_t)l)
                                                  : ref_name_valid(out->last, (size_t)l));
        if (!ok) {
            out->last[0] = '\0';
            return fail(err, OCI_PAGINATION_NUMBER_INVALID,
                        out->op == ROUTE_TAGS ? "last must be a valid tag"
                                              : "last must be a valid repository name");
        }
    }
    return 0;
}

/* Media-type characters (RFC 6838 restricted-name, minus '#' and '&', which no registered
 * type uses and which would mean something else in the upstream query winch builds). */
static bool media_type_chars(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '!' || c == '$' || c == '^' || c == '_' || c == '.' || c == '+' ||
                  c == '-' || c == '/';
        if (!ok)
            return false;
    }
    return true;
}

/* artifactType is only a filter: the response says whether it was applied
 * (OCI-Filters-Applied) and clients filter themselves otherwise, so a value winch cannot hold
 * (too long, malformed escapes, not media-type characters) is ignored rather than refused. */
static void set_artifact_type(route_t *out, const char *q, size_t qlen)
{
    const char *val;
    size_t vlen;

    if (!query_get(q, qlen, "artifactType", &val, &vlen))
        return;
    long l = pct_decode(out->artifact_type, sizeof(out->artifact_type), val, vlen);
    if (l < 0 || !media_type_chars(out->artifact_type, (size_t)l))
        out->artifact_type[0] = '\0';
}

/* Splits rest (the path after "/v2/") from the right, since the name itself contains '/':
 * ".../tags/list", or ".../<kind>/<ref>" for manifests, blobs and referrers. Sets out->op. */
static int split_operation(route_t *out, const char *rest, size_t rlen, const char **name,
                           size_t *name_len, const char **ref, size_t *ref_len, route_error_t *err)
{
    static const char tags_suffix[] = "/tags/list";
    size_t tsl = sizeof(tags_suffix) - 1;
    if (rlen > tsl && memcmp(rest + rlen - tsl, tags_suffix, tsl) == 0) {
        out->op = ROUTE_TAGS;
        *name = rest;
        *name_len = rlen - tsl;
        return 0;
    }
    const char *ls = NULL, *ps = NULL; /* the last and the penultimate '/' */
    for (size_t i = rlen; i > 0; i--) {
        if (rest[i - 1] != '/')
            continue;
        if (!ls) {
            ls = rest + i - 1;
        } else {
            ps = rest + i - 1;
            break;
        }
    }
    if (!ps || ps == rest)
        return fail(err, OCI_UNSUPPORTED, "unknown API path");
    const char *kind = ps + 1;
    size_t kind_len = (size_t)(ls - kind);
    if (eq(kind, kind_len, "manifests"))
        out->op = ROUTE_MANIFEST;
    else if (eq(kind, kind_len, "blobs"))
        out->op = ROUTE_BLOB;
    else if (eq(kind, kind_len, "referrers"))
        out->op = ROUTE_REFERRERS;
    else
        return fail(err, OCI_UNSUPPORTED, "unknown API path");
    *name = rest;
    *name_len = (size_t)(ps - rest);
    *ref = ls + 1;
    *ref_len = (size_t)(rest + rlen - *ref);
    return 0;
}

/* The reference part of a routed request, validated for its operation. */
static int set_reference(route_t *out, const char *ref, size_t ref_len, const char *q, size_t qlen,
                         route_error_t *err)
{
    int rc;
    switch (out->op) {
    case ROUTE_MANIFEST:
        if (memchr(ref, ':', ref_len))
            return set_digest(out, ref, ref_len, err);
        /* A tag the grammar rejects can name no manifest: 404 MANIFEST_UNKNOWN, as distribution
         * answers and clients expect (400 would read as a broken request). */
        if (!ref_tag_valid(ref, ref_len))
            return fail(err, OCI_MANIFEST_UNKNOWN, "manifest unknown: invalid tag");
        memcpy(out->ref, ref, ref_len);
        out->ref[ref_len] = '\0';
        return 0;
    case ROUTE_BLOB:
        return set_digest(out, ref, ref_len, err);
    case ROUTE_REFERRERS:
        rc = set_digest(out, ref, ref_len, err);
        if (rc < 0)
            return rc;
        set_artifact_type(out, q, qlen);
        return 0;
    case ROUTE_TAGS:
        return set_pagination(out, q, qlen, err);
    case ROUTE_PING:
    case ROUTE_CATALOG:
        break;
    }
    return 0;
}

int route_parse(route_t *out, const config_t *cfg, enum route_method method, const char *target,
                size_t len, route_error_t *err)
{
    const char *msg;
    int rc;

    memset(out, 0, sizeof(*out));
    out->n = -1;
    err->code = OCI_UNKNOWN;
    err->message = NULL;
    err->status = 0;
    err->text[0] = '\0';

    /* Writes are refused whatever the path: upload and delete paths are real API paths, and
     * 405 UNSUPPORTED is what a read-only registry answers (docs/protocol.md). */
    if (method != ROUTE_GET && method != ROUTE_HEAD)
        return fail(err, OCI_UNSUPPORTED, read_only_msg);
    out->head = method == ROUTE_HEAD;

    if (!target || len == 0)
        return fail(err, OCI_NAME_INVALID, "empty request target");
    if (len > ROUTE_TARGET_MAX)
        return fail(err, OCI_NAME_INVALID, "request target is too long");
    /* Absolute-form ("http://host/v2/...") is what a client sends to a forward proxy; winch
     * is a registry, and must not look like an open proxy. */
    if (target[0] != '/')
        return fail(err, OCI_NAME_INVALID, "request target must be a path");

    const char *qm = memchr(target, '?', len);
    size_t plen = qm ? (size_t)(qm - target) : len;
    const char *q = qm ? qm + 1 : target + len;
    size_t qlen = qm ? len - plen - 1 : 0;
    const char *path = target;

    msg = path_problem(path, plen);
    if (msg)
        return fail(err, OCI_NAME_INVALID, msg);

    if (eq(path, plen, "/v2") || eq(path, plen, "/v2/")) {
        out->op = ROUTE_PING;
        if (cfg && cfg->n_upstreams > 0)
            out->upstream = &cfg->upstreams[0];
        return 0;
    }
    if (plen < 4 || memcmp(path, "/v2/", 4) != 0)
        return fail(err, OCI_UNSUPPORTED, "unknown API path");
    const char *rest = path + 4;
    size_t rlen = plen - 4;

    if (eq(rest, rlen, "_catalog")) {
        out->op = ROUTE_CATALOG;
        const char *none = NULL;
        size_t none_len = 0;
        rc = choose_upstream(out, cfg, &none, &none_len, q, qlen, err);
        if (rc < 0)
            return rc;
        return set_pagination(out, q, qlen, err);
    }

    const char *name, *ref = NULL;
    size_t name_len, ref_len = 0;
    if ((rc = split_operation(out, rest, rlen, &name, &name_len, &ref, &ref_len, err)) < 0 ||
        (rc = choose_upstream(out, cfg, &name, &name_len, q, qlen, err)) < 0 ||
        (rc = set_name(out, name, name_len, err)) < 0)
        return rc;
    return set_reference(out, ref, ref_len, q, qlen, err);
}
