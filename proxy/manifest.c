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
#include "proxy/fetch.h"
#include "proxy/manifest.h"
#include "proxy/negcache.h"
#include "proxy/reply.h"

typedef struct mreq {
    bool have_stale; /* a cached digest exists for the tag */
    char stale[REF_DIGEST_MAX + 1];
    char digest[REF_DIGEST_MAX + 1]; /* the digest being fetched; "" when fetching by tag */
} mreq_t;

/* Writes the header set every manifest answer carries. */
static void manifest_headers(call_t *c, const char *digest, const char *media_type)
{
    resp_header(c->req, "Content-Type", "%s", media_type);
    resp_header(c->req, "Docker-Content-Digest", "%s", digest);
    resp_header(c->req, "ETag", "\"%s\"", digest);
}

/* Answers with a manifest held in memory (body taken). */
static void serve_bytes(call_t *c, const char *digest, const char *media_type, char *body,
                        size_t len)
{
    const char *refusal = oci_accept_refusal(c->accept, media_type);
    if (refusal) {
        free(body);
        reply_error(c, 0, OCI_MANIFEST_UNKNOWN, refusal, NULL);
        return;
    }
    if (http_etag_matches(c->if_none_match, digest)) {
        free(body);
        reply_begin(c, 304);
        manifest_headers(c, digest, media_type);
        resp_send(c->req, 0, NULL, 0, false);
        return;
    }
    reply_begin(c, 200);
    manifest_headers(c, digest, media_type);
    resp_send(c->req, len, body, len, true);
}

/* Serves digest from the cache. Returns 0 when answered, or an error when the cache does not
 * hold it as a manifest (the caller fetches it). */
static int serve_cached(call_t *c, const char *digest)
{
    cache_entry_t e;
    int err = cache_lookup(c->env->cache, digest, &e);
    if (err < 0)
        return err;
    if (e.kind != CACHE_MANIFEST || !e.media_type[0])
        return WE_NOTFOUND;
    const char *refusal = oci_accept_refusal(c->accept, e.media_type);
    if (refusal) {
        reply_error(c, 0, OCI_MANIFEST_UNKNOWN, refusal, NULL);
        return 0;
    }
    if (http_etag_matches(c->if_none_match, digest)) {
        reply_begin(c, 304);
        manifest_headers(c, digest, e.media_type);
        resp_send(c->req, 0, NULL, 0, false);
        return 0;
    }
    if (req_is_head(c->req)) {
        reply_begin(c, 200);
        manifest_headers(c, digest, e.media_type);
        resp_send(c->req, e.size, NULL, 0, false);
        cache_note_access(c->env->cache, digest);
        return 0;
    }
    char *body;
    size_t len;
    err = cache_read_manifest(c->env->cache, digest, c->env->cfg->max_manifest_bytes, &body, &len);
    if (err < 0) {
        LOG_WARN("req=%llu %s indexed but unreadable (%s); refetching",
                 (unsigned long long)req_id(c->req), digest, err_str(err));
        return err;
    }
    reply_begin(c, 200);
    manifest_headers(c, digest, e.media_type);
    resp_send(c->req, len, body, len, true);
    cache_note_access(c->env->cache, digest);
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

static void serve_stale_or_fail(call_t *c, mreq_t *m, int status, int err, upreq_t *up)
{
    if (m->have_stale && serve_cached(c, m->stale) == 0) {
        LOG_WARN("req=%llu upstream %s failed (status %d, %s); serving tag %s stale",
                 (unsigned long long)req_id(c->req), c->route.upstream->name, status, err_str(err),
                 c->route.ref);
        c->cache_status = "stale";
        free(m);
        return;
    }
    free(m);
    reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                           OCI_MANIFEST_UNKNOWN);
}

/* Checks what the upstream sent before anything of it is kept or served: its type, that it is
 * a well-formed manifest of that type (image_parse: an error page or a document from wherever
 * a redirect led is not), and its digest — the one asked for, or, fetched by tag, the SHA-256
 * of exactly these bytes. Returns 0 with *mt (static or in mtbuf), digest and *img (owned by
 * the caller), or the error to answer with. */
static int check_fetched(call_t *c, const mreq_t *m, upreq_t *up, const char *body, size_t len,
                         char *mtbuf, size_t mtcap, const char **mt,
                         char digest[REF_DIGEST_MAX + 1], image_t **img)
{
    unsigned long long id = (unsigned long long)req_id(c->req);
    *mt = fetched_media_type(up, body, len, mtbuf, mtcap);
    if (!*mt) {
        LOG_WARN("req=%llu upstream sent something that is not a manifest", id);
        return WE_UPSTREAM;
    }
    /* Schema 1 digests are not the hash of the bytes (the JWS signature is excluded), so they
     * cannot be verified or stored content-addressed. winch never asks for them. */
    if (strcmp(*mt, MT_DOCKER_V1) == 0 || strcmp(*mt, MT_DOCKER_V1_SIGNED) == 0) {
        LOG_WARN("req=%llu upstream answered with a schema1 manifest; refusing", id);
        return WE_UPSTREAM;
    }
    char why[160];
    if (image_parse(body, len, *mt, img, why, sizeof why) != 0) {
        LOG_WARN("req=%llu upstream sent an invalid %s: %s", id, *mt, why);
        return WE_UPSTREAM;
    }
    if (m->digest[0]) {
        if (digest_verify(m->digest, body, len) < 0) {
            LOG_WARN("req=%llu manifest from upstream does not match %s", id, m->digest);
            image_free(*img);
            *img = NULL;
            return WE_DIGEST;
        }
        snprintf(digest, REF_DIGEST_MAX + 1, "%s", m->digest);
        return 0;
    }
    digester_t *d;
    if (digester_new(&d, REF_ALG_SHA256) < 0) {
        image_free(*img);
        *img = NULL;
        return -ENOMEM;
    }
    digester_update(d, body, len);
    digester_final(d, digest);
    digester_free(d);
    return 0;
}

/* Stores a checked manifest (unless a request sharing this fetch stored it already). */
static void store_fetched(call_t *c, const char *digest, const char *mt, const char *body,
                          size_t len, const image_t *img)
{
    const char *tag = c->route.ref_is_digest ? NULL : c->route.ref;
    cache_entry_t have;
    if (cache_lookup(c->env->cache, digest, &have) == 0 && have.kind == CACHE_MANIFEST) {
        if (tag)
            cache_tag_set(c->env->cache, c->route.upstream->name, c->route.name, tag, digest, NULL,
                          NULL);
        return;
    }
    cache_manifest_put_t put = {
        .digest = digest,
        .media_type = mt,
        .bytes = body,
        .len = len,
        .upstream = c->route.upstream->name,
        .repo = c->route.name,
        .tag = tag,
        .image = img,
    };
    char *arg = strdup(digest);
    int perr = arg ? cache_put_manifest(c->env->cache, &put, on_manifest_stored, arg) : -ENOMEM;
    if (perr < 0) {
        free(arg);
        LOG_ERROR("req=%llu caching manifest %s failed: %s", (unsigned long long)req_id(c->req),
                  digest, err_str(perr));
    }
}

/* The upstream said 404 for what the client asked (a tag, or a digest): remembered for
 * negative_ttl_s (negcache.h). */
static void remember_404(call_t *c)
{
    negcache_put(c->env->neg, c->route.upstream->name, c->route.name, c->route.ref, time_mono_ms(),
                 c->env->cfg->negative_ttl_s * 1000);
}

static void on_manifest_fetched(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                                size_t len)
{
    mreq_t *m = ctx;
    if (err || status != 200) {
        free(body);
        if (status == 404) {
            /* Fetched by the client's own reference (not by a digest a tag check named). */
            if (!m->digest[0] || strcmp(m->digest, c->route.ref) == 0)
                remember_404(c);
            free(m);
            reply_upstream_failure(c, status, 0, NULL, OCI_MANIFEST_UNKNOWN);
            return;
        }
        serve_stale_or_fail(c, m, status, err, up);
        return;
    }
    char mtbuf[128];
    const char *mt;
    char digest[REF_DIGEST_MAX + 1];
    image_t *img = NULL;
    int rc = check_fetched(c, m, up, body, len, mtbuf, sizeof mtbuf, &mt, digest, &img);
    if (rc < 0) {
        free(body);
        serve_stale_or_fail(c, m, 0, rc, NULL);
        return;
    }
    store_fetched(c, digest, mt, body, len, img);
    image_free(img);
    c->cache_status = "miss";
    free(m);
    serve_bytes(c, digest, mt, body, len);
}

static void fetch_manifest(call_t *c, mreq_t *m, const char *ref)
{
    char path[REF_NAME_MAX + 400];
    fetch_path(c, "manifests", ref, path, sizeof path);
    int err = fetch_start(c, "GET", path, OCI_UPSTREAM_ACCEPT, c->env->cfg->max_manifest_bytes,
                          on_manifest_fetched, m, free);
    if (err < 0)
        serve_stale_or_fail(c, m, 0, err, NULL);
}

static void on_tag_checked(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                           size_t len)
{
    mreq_t *m = ctx;
    (void)len;
    free(body);
    if (err == 0 && status == 200) {
        const char *d = upreq_header(up, "Docker-Content-Digest");
        enum ref_alg alg;
        if (d && strlen(d) <= REF_DIGEST_MAX && ref_digest_parse(d, strlen(d), &alg) == 0) {
            snprintf(m->digest, sizeof m->digest, "%s", d);
            cache_entry_t e;
            if (cache_lookup(c->env->cache, m->digest, &e) == 0 && e.kind == CACHE_MANIFEST) {
                /* The tag points at a manifest we hold: record the check and serve it. */
                cache_tag_set(c->env->cache, c->route.upstream->name, c->route.name, c->route.ref,
                              m->digest, NULL, NULL);
                c->cache_status = m->have_stale && strcmp(m->stale, m->digest) == 0 ? "revalidated"
                                                                                    : "hit";
                if (serve_cached(c, m->digest) == 0) {
                    free(m);
                    return;
                }
            }
            fetch_manifest(c, m, m->digest);
            return;
        }
        /* No usable digest in the HEAD answer: fetch by tag and hash what arrives. */
        m->digest[0] = '\0';
        fetch_manifest(c, m, c->route.ref);
        return;
    }
    if (err == 0 && status == 404) {
        remember_404(c);
        free(m);
        reply_upstream_failure(c, 404, 0, NULL, OCI_MANIFEST_UNKNOWN);
        return;
    }
    if (err == 0 && status == 405) {
        /* A registry that refuses HEAD: ask with GET instead. */
        m->digest[0] = '\0';
        fetch_manifest(c, m, c->route.ref);
        return;
    }
    serve_stale_or_fail(c, m, status, err, up);
}

/* The upstream said 404 for this reference a moment ago: so do we, without asking again.
 * Returns true when answered (m freed). */
static bool answer_negative(call_t *c, mreq_t *m)
{
    if (!negcache_hit(c->env->neg, c->route.upstream->name, c->route.name, c->route.ref,
                      time_mono_ms()))
        return false;
    free(m);
    c->cache_status = "negative";
    reply_failure(c, WE_NOTFOUND, OCI_MANIFEST_UNKNOWN);
    return true;
}

void manifest_handle(call_t *c)
{
    cache_t *cache = c->env->cache;
    mreq_t *m = calloc(1, sizeof *m);
    if (!m) {
        reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    if (c->route.ref_is_digest) {
        c->cache_status = "hit";
        if (serve_cached(c, c->route.ref) == 0) {
            free(m);
            return;
        }
        if (answer_negative(c, m))
            return;
        snprintf(m->digest, sizeof m->digest, "%s", c->route.ref);
        fetch_manifest(c, m, c->route.ref);
        return;
    }
    int64_t checked = 0;
    if (cache_tag_get(cache, c->route.upstream->name, c->route.name, c->route.ref, m->stale,
                      &checked) == 0) {
        m->have_stale = true;
        int64_t age = time_wall_ms() - checked;
        if (age >= 0 && age < (int64_t)c->env->cfg->tag_ttl_s * 1000) {
            c->cache_status = "hit";
            if (serve_cached(c, m->stale) == 0) {
                free(m);
                return;
            }
        }
    }
    if (answer_negative(c, m))
        return;
    char path[REF_NAME_MAX + 400];
    fetch_path(c, "manifests", c->route.ref, path, sizeof path);
    int err = fetch_start(c, "HEAD", path, OCI_UPSTREAM_ACCEPT, 0, on_tag_checked, m, free);
    if (err < 0)
        serve_stale_or_fail(c, m, 0, err, NULL);
}
