/* Manifests, by digest and by tag.
 *
 * By digest: content-addressed, so a cached copy is served forever; a miss is fetched whole
 * (bounded by max_manifest_bytes), verified against the digest, stored, and served.
 *
 * By tag: a tag checked less than tag_ttl_s ago is served from the index. Otherwise the
 * upstream is asked with HEAD (free under Docker Hub's rate limit), which names the digest;
 * a cached digest is served at once, an unknown one is fetched by digest. If the upstream is
 * down, slow or erroring, the last known digest is served stale; only a definite 404 from the
 * upstream makes a cached tag disappear for the client.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proxy/handlers.h"

typedef struct mfetch {
    req_t *r;
    bool have_stale;             /* a cached digest exists for the tag */
    char stale[REF_DIGEST_MAX + 1];
    char digest[REF_DIGEST_MAX + 1]; /* the digest being fetched; "" when fetching by tag */
} mfetch_t;

/* Writes the header set every manifest answer carries. */
static void manifest_headers(req_t *r, const char *digest, const char *media_type)
{
    resp_header(r, "Content-Type", "%s", media_type);
    resp_header(r, "Docker-Content-Digest", "%s", digest);
    resp_header(r, "ETag", "\"%s\"", digest);
}

/* Answers with a manifest held in memory (body taken). */
static void serve_bytes(req_t *r, const char *digest, const char *media_type, char *body,
                        size_t len)
{
    const char *refusal = oci_accept_refusal(r->accept, media_type);
    if (refusal) {
        free(body);
        resp_error(r, 0, OCI_MANIFEST_UNKNOWN, refusal, NULL);
        return;
    }
    if (etag_matches(r->if_none_match, digest)) {
        free(body);
        resp_begin(r, 304);
        manifest_headers(r, digest, media_type);
        resp_send(r, 0, NULL, 0, false);
        return;
    }
    resp_begin(r, 200);
    manifest_headers(r, digest, media_type);
    resp_send(r, len, body, len, true);
}

/* Serves digest from the cache. Returns 0 when answered, or an error when the cache does not
 * hold it as a manifest (the caller fetches it). */
static int serve_cached(req_t *r, const char *digest)
{
    cache_entry_t e;
    int err = cache_lookup(req_cache(r), digest, &e);
    if (err < 0)
        return err;
    if (e.kind != CACHE_MANIFEST || !e.media_type[0])
        return WE_NOTFOUND;
    const char *refusal = oci_accept_refusal(r->accept, e.media_type);
    if (refusal) {
        resp_error(r, 0, OCI_MANIFEST_UNKNOWN, refusal, NULL);
        return 0;
    }
    if (etag_matches(r->if_none_match, digest)) {
        resp_begin(r, 304);
        manifest_headers(r, digest, e.media_type);
        resp_send(r, 0, NULL, 0, false);
        return 0;
    }
    if (r->route.head) {
        resp_begin(r, 200);
        manifest_headers(r, digest, e.media_type);
        resp_send(r, e.size, NULL, 0, false);
        cache_note_access(req_cache(r), digest);
        return 0;
    }
    char *body;
    size_t len;
    err = cache_read_manifest(req_cache(r), digest, req_config(r)->max_manifest_bytes, &body, &len);
    if (err < 0) {
        LOG_WARN("req=%llu %s indexed but unreadable (%s); refetching",
                 (unsigned long long)r->id, digest, err_str(err));
        return err;
    }
    resp_begin(r, 200);
    manifest_headers(r, digest, e.media_type);
    resp_send(r, len, body, len, true);
    cache_note_access(req_cache(r), digest);
    return 0;
}

static void on_manifest_stored(void *arg, int status)
{
    char *digest = arg;
    if (status < 0)
        LOG_ERROR("storing manifest %s failed: %s", digest, err_str(status));
    free(digest);
}

/* Media type of a fetched manifest: the upstream's Content-Type when it names a manifest type,
 * else what the JSON says it is. */
static const char *fetched_media_type(upreq_t *up, const char *body, size_t len, char *buf,
                                      size_t cap)
{
    const char *ct = upreq_header(up, "Content-Type");
    if (ct) {
        size_t n = strcspn(ct, "; \t");
        if (n < cap) {
            memcpy(buf, ct, n);
            buf[n] = '\0';
            if (oci_is_manifest_type(buf))
                return buf;
        }
    }
    return oci_detect_media_type(body, len);
}

static void serve_stale_or_fail(req_t *r, mfetch_t *m, int status, int err, upreq_t *up)
{
    if (m->have_stale && serve_cached(r, m->stale) == 0) {
        LOG_WARN("req=%llu upstream %s failed (status %d, %s); serving tag %s stale",
                 (unsigned long long)r->id, r->route.upstream->name, status, err_str(err),
                 r->route.ref);
        r->cache_status = "stale";
        free(m);
        return;
    }
    free(m);
    reply_upstream_failure(r, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                           OCI_MANIFEST_UNKNOWN);
}

static void on_manifest_fetched(req_t *r, void *ctx, int status, int err, upreq_t *up,
                                char *body, size_t len)
{
    mfetch_t *m = ctx;
    if (err || status != 200) {
        free(body);
        if (status == 404) {
            free(m);
            reply_upstream_failure(r, status, 0, NULL, OCI_MANIFEST_UNKNOWN);
            return;
        }
        serve_stale_or_fail(r, m, status, err, up);
        return;
    }
    char mtbuf[128];
    const char *mt = fetched_media_type(up, body, len, mtbuf, sizeof mtbuf);
    if (!mt) {
        free(body);
        LOG_WARN("req=%llu upstream sent something that is not a manifest", (unsigned long long)r->id);
        serve_stale_or_fail(r, m, 0, WE_UPSTREAM, NULL);
        return;
    }
    bool schema1 = strcmp(mt, MT_DOCKER_V1) == 0 || strcmp(mt, MT_DOCKER_V1_SIGNED) == 0;
    if (schema1) {
        /* Schema 1 digests are not the hash of the bytes (the JWS signature is excluded), so
         * they cannot be verified or stored content-addressed. winch never asks for them. */
        free(body);
        LOG_WARN("req=%llu upstream answered with a schema1 manifest; refusing", (unsigned long long)r->id);
        serve_stale_or_fail(r, m, 0, WE_UPSTREAM, NULL);
        return;
    }
    char digest[REF_DIGEST_MAX + 1];
    if (m->digest[0]) {
        int v = digest_verify(m->digest, body, len);
        if (v < 0) {
            free(body);
            LOG_WARN("req=%llu manifest from upstream does not match %s", (unsigned long long)r->id,
                     m->digest);
            serve_stale_or_fail(r, m, 0, WE_DIGEST, NULL);
            return;
        }
        snprintf(digest, sizeof digest, "%s", m->digest);
    } else {
        /* Fetched by tag: the digest is the SHA-256 of exactly these bytes. */
        digester_t *d;
        if (digester_new(&d, REF_ALG_SHA256) < 0) {
            free(body);
            free(m);
            resp_error(r, 0, OCI_UNKNOWN, "out of memory", NULL);
            return;
        }
        digester_update(d, body, len);
        digester_final(d, digest);
        digester_free(d);
    }
    const char *tag = r->route.ref_is_digest ? NULL : r->route.ref;
    cache_entry_t have;
    if (cache_lookup(req_cache(r), digest, &have) == 0 && have.kind == CACHE_MANIFEST) {
        /* Another request sharing this upstream fetch stored it already. */
        if (tag)
            cache_tag_set(req_cache(r), r->route.upstream->name, r->route.name, tag, digest,
                          NULL, NULL);
        r->cache_status = "miss";
        free(m);
        serve_bytes(r, digest, mt, body, len);
        return;
    }
    cache_manifest_put_t put = {
        .digest = digest,
        .media_type = mt,
        .bytes = body,
        .len = len,
        .upstream = r->route.upstream->name,
        .repo = r->route.name,
        .tag = tag,
    };
    char *arg = strdup(digest);
    int perr = arg ? cache_put_manifest(req_cache(r), &put, on_manifest_stored, arg) : -ENOMEM;
    if (perr < 0) {
        free(arg);
        LOG_ERROR("req=%llu caching manifest %s failed: %s", (unsigned long long)r->id, digest,
                  err_str(perr));
    }
    r->cache_status = "miss";
    free(m);
    serve_bytes(r, digest, mt, body, len);
}

static void fetch_manifest(req_t *r, mfetch_t *m, const char *ref)
{
    char path[REF_NAME_MAX + 400];
    upstream_path(r, "manifests", ref, path, sizeof path);
    int err = ufetch_start(r, "GET", path, OCI_UPSTREAM_ACCEPT, req_config(r)->max_manifest_bytes,
                           on_manifest_fetched, m, free);
    if (err < 0)
        serve_stale_or_fail(r, m, 0, err, NULL);
}

static void on_tag_checked(req_t *r, void *ctx, int status, int err, upreq_t *up, char *body,
                           size_t len)
{
    mfetch_t *m = ctx;
    (void)len;
    free(body);
    if (err == 0 && status == 200) {
        const char *d = upreq_header(up, "Docker-Content-Digest");
        enum ref_alg alg;
        if (d && strlen(d) <= REF_DIGEST_MAX && ref_digest_parse(d, strlen(d), &alg) == 0) {
            snprintf(m->digest, sizeof m->digest, "%s", d);
            cache_entry_t e;
            if (cache_lookup(req_cache(r), m->digest, &e) == 0 && e.kind == CACHE_MANIFEST) {
                /* The tag points at a manifest we hold: record the check and serve it. */
                cache_tag_set(req_cache(r), r->route.upstream->name, r->route.name, r->route.ref,
                              m->digest, NULL, NULL);
                r->cache_status = m->have_stale && strcmp(m->stale, m->digest) == 0
                                      ? "revalidated"
                                      : "hit";
                if (serve_cached(r, m->digest) == 0) {
                    free(m);
                    return;
                }
            }
            fetch_manifest(r, m, m->digest);
            return;
        }
        /* No usable digest in the HEAD answer: fetch by tag and hash what arrives. */
        m->digest[0] = '\0';
        fetch_manifest(r, m, r->route.ref);
        return;
    }
    if (err == 0 && status == 404) {
        free(m);
        reply_upstream_failure(r, 404, 0, NULL, OCI_MANIFEST_UNKNOWN);
        return;
    }
    if (err == 0 && status == 405) {
        /* A registry that refuses HEAD: ask with GET instead. */
        m->digest[0] = '\0';
        fetch_manifest(r, m, r->route.ref);
        return;
    }
    serve_stale_or_fail(r, m, status, err, up);
}

void handle_manifest(req_t *r)
{
    cache_t *c = req_cache(r);
    mfetch_t *m = calloc(1, sizeof *m);
    if (!m) {
        resp_error(r, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    m->r = r;
    if (r->route.ref_is_digest) {
        r->cache_status = "hit";
        if (serve_cached(r, r->route.ref) == 0) {
            free(m);
            return;
        }
        snprintf(m->digest, sizeof m->digest, "%s", r->route.ref);
        fetch_manifest(r, m, r->route.ref);
        return;
    }
    int64_t checked = 0;
    if (cache_tag_get(c, r->route.upstream->name, r->route.name, r->route.ref, m->stale,
                      &checked) == 0) {
        m->have_stale = true;
        int64_t age = time_wall_ms() - checked;
        if (age >= 0 && age < (int64_t)req_config(r)->tag_ttl_s * 1000) {
            r->cache_status = "hit";
            if (serve_cached(r, m->stale) == 0) {
                free(m);
                return;
            }
        }
    }
    char path[REF_NAME_MAX + 400];
    upstream_path(r, "manifests", r->route.ref, path, sizeof path);
    int err = ufetch_start(r, "HEAD", path, OCI_UPSTREAM_ACCEPT, 0, on_tag_checked, m, free);
    if (err < 0)
        serve_stale_or_fail(r, m, 0, err, NULL);
}
