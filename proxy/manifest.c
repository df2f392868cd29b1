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
 *
 * The policy (manifest_gate.c) is asked at each stage: before anything (refusals by name and
 * tag; a pin, which is then served by digest whatever the upstream's tag says; freeze, which
 * serves a cached tag without revalidation), once the tag resolved (soak may keep serving the
 * previous digest), and before a manifest is served (image size and age). What is served is
 * m->target, and Docker-Content-Digest is always its digest. Only the upstream's own answer is
 * recorded as the tag's digest: never a pin, a soaking tag's previous digest or a fallback.
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
#include "proxy/manifest_gate.h"
#include "proxy/reply.h"

typedef struct mreq {
    mgate_t gate;    /* the policy's view of this request */
    bool have_stale; /* a cached digest exists for the tag */
    bool resolved;   /* the tag resolved (or a pin or a digest decided): m->target is set */
    bool announced;  /* the upstream just named the tag's digest (a HEAD that answered) */
    bool record_tag; /* storing m->target records the tag -> it (the upstream said so) */
    bool fell_back;  /* serving the cached digest: the upstream's could not be fetched */
    char stale[REF_DIGEST_MAX + 1];
    char upstream_digest[REF_DIGEST_MAX + 1]; /* by tag: what the tag resolved to */
    char digest[REF_DIGEST_MAX + 1]; /* the digest being fetched; "" when fetching by tag */
    char target[REF_DIGEST_MAX + 1]; /* the digest to serve */
    /* A manifest in memory, kept while the policy checks the image (mgate_image). */
    char *body;
    size_t len;
    char mt[128];
} mreq_t;

static void mreq_free(void *p)
{
    mreq_t *m = p;
    mgate_clear(&m->gate);
    free(m->body);
    free(m);
}

static void copy_digest(char dst[REF_DIGEST_MAX + 1], const char *src)
{
    snprintf(dst, REF_DIGEST_MAX + 1, "%s", src);
}

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

/* Stores a checked manifest (unless a request sharing this fetch stored it already); tag (may be
 * NULL) is recorded as pointing at it. */
static void store_fetched(call_t *c, const char *digest, const char *mt, const char *body,
                          size_t len, const image_t *img, const char *tag)
{
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

/* ---- Serving m->target, after the policy's image check -------------------------------------- */

static void on_gate_done(call_t *c, void *arg, bool serve)
{
    mreq_t *m = arg;
    if (serve) {
        char *body = m->body;
        m->body = NULL;
        serve_bytes(c, m->target, m->mt, body, m->len);
    }
    mreq_free(m);
}

/* Serves m->target from body (taken), once the policy's image check allows it. */
static void deliver(call_t *c, mreq_t *m, char *body, size_t len, const char *mt)
{
    m->body = body;
    m->len = len;
    snprintf(m->mt, sizeof m->mt, "%s", mt);
    enum mgate_result r = mgate_image(&m->gate, body, len, m->mt, on_gate_done, m, mreq_free);
    if (r == MGATE_WAIT)
        return;
    on_gate_done(c, m, r == MGATE_SERVE);
}

static void fetch_manifest(call_t *c, mreq_t *m, const char *ref);

/* Serves m->target: from the cache, or fetched by digest. */
static void obtain(call_t *c, mreq_t *m)
{
    cache_t *cache = c->env->cache;
    cache_entry_t e;
    if (cache_lookup(cache, m->target, &e) == 0 && e.kind == CACHE_MANIFEST && e.media_type[0]) {
        if (!(m->gate.d.needs & POLICY_NEED_IMAGE)) {
            if (serve_cached(c, m->target) == 0) {
                mreq_free(m);
                return;
            }
        } else {
            char *body;
            size_t len;
            int err =
                cache_read_manifest(cache, m->target, c->env->cfg->max_manifest_bytes, &body, &len);
            if (err == 0) {
                cache_note_access(cache, m->target);
                deliver(c, m, body, len, e.media_type);
                return;
            }
            LOG_WARN("req=%llu %s indexed but unreadable (%s); refetching",
                     (unsigned long long)req_id(c->req), m->target, err_str(err));
        }
    }
    copy_digest(m->digest, m->target);
    fetch_manifest(c, m, m->target);
}

/* The tag resolved to digest (the upstream's, or the cache's): the policy picks what to serve.
 * body (taken, may be NULL) holds digest's manifest when it was just fetched by tag. */
static void resolved_with(call_t *c, mreq_t *m, const char *digest, char *body, size_t len,
                          const char *mt)
{
    m->resolved = true;
    copy_digest(m->upstream_digest, digest);
    copy_digest(m->target, mgate_resolved(&m->gate, digest));
    bool as_announced = strcmp(m->target, digest) == 0;
    if (m->announced && as_announced) {
        m->record_tag = true;
    } else if (m->announced) {
        /* Serving another digest (soak): the tag's record still says what the upstream said,
         * so the next request within the TTL does not ask again. */
        cache_tag_set(c->env->cache, c->route.upstream->name, c->route.name, c->route.ref, digest,
                      NULL, NULL);
    }
    if (body && as_announced) {
        deliver(c, m, body, len, mt);
        return;
    }
    free(body);
    obtain(c, m);
}

/* The upstream failed while the tag was being resolved: the cached digest, if any, is served. */
static void serve_stale_or_fail(call_t *c, mreq_t *m, int status, int err, upreq_t *up)
{
    if (m->have_stale && !m->resolved) {
        LOG_WARN("req=%llu upstream %s failed (status %d, %s); serving tag %s stale",
                 (unsigned long long)req_id(c->req), c->route.upstream->name, status, err_str(err),
                 c->route.ref);
        c->cache_status = "stale";
        resolved_with(c, m, m->stale, NULL, 0, NULL);
        return;
    }
    mreq_free(m);
    reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                           OCI_MANIFEST_UNKNOWN);
}

/* The upstream named a new digest for the tag but failed to send it: the cached one is served
 * instead (or, under soak, the one served before). Returns false when there is nothing to fall
 * back to (a pin, a digest request, a soak already serving the previous digest). */
static bool fall_back(call_t *c, mreq_t *m, int status, int err)
{
    if (!m->have_stale || m->fell_back || c->route.ref_is_digest ||
        m->gate.d.pin != POLICY_PIN_NONE || strcmp(m->target, m->upstream_digest) != 0)
        return false;
    const char *t = mgate_fallback(&m->gate, m->stale);
    if (strcmp(t, m->target) == 0)
        return false;
    LOG_WARN("req=%llu upstream %s failed (status %d, %s) sending %s; serving tag %s as %s",
             (unsigned long long)req_id(c->req), c->route.upstream->name, status, err_str(err),
             m->target, c->route.ref, t);
    m->fell_back = true;
    m->record_tag = false;
    copy_digest(m->target, t);
    c->cache_status = "stale";
    obtain(c, m);
    return true;
}

static void fetch_failed(call_t *c, mreq_t *m, int status, int err, upreq_t *up)
{
    if (!m->resolved) {
        serve_stale_or_fail(c, m, status, err, up);
        return;
    }
    if (status != 404 && fall_back(c, m, status, err))
        return;
    mreq_free(m);
    reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                           OCI_MANIFEST_UNKNOWN);
}

static void on_manifest_fetched(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                                size_t len)
{
    mreq_t *m = ctx;
    if (err || status != 200) {
        free(body);
        if (status == 404) {
            mreq_free(m);
            reply_upstream_failure(c, status, 0, NULL, OCI_MANIFEST_UNKNOWN);
            return;
        }
        fetch_failed(c, m, status, err, up);
        return;
    }
    char mtbuf[128];
    const char *mt;
    char digest[REF_DIGEST_MAX + 1];
    image_t *img = NULL;
    int rc = check_fetched(c, m, up, body, len, mtbuf, sizeof mtbuf, &mt, digest, &img);
    if (rc < 0) {
        free(body);
        fetch_failed(c, m, 0, rc, NULL);
        return;
    }
    c->cache_status = "miss";
    if (!m->resolved) {
        /* Fetched by tag (the upstream named no digest): these bytes are what the tag is. */
        store_fetched(c, digest, mt, body, len, img, c->route.ref);
        image_free(img);
        resolved_with(c, m, digest, body, len, mt);
        return;
    }
    store_fetched(c, digest, mt, body, len, img, m->record_tag ? c->route.ref : NULL);
    image_free(img);
    deliver(c, m, body, len, mt);
}

static void fetch_manifest(call_t *c, mreq_t *m, const char *ref)
{
    char path[REF_NAME_MAX + 400];
    fetch_path(c, "manifests", ref, path, sizeof path);
    int err = fetch_start(c, "GET", path, OCI_UPSTREAM_ACCEPT, c->env->cfg->max_manifest_bytes,
                          on_manifest_fetched, m, mreq_free);
    if (err < 0)
        fetch_failed(c, m, 0, err, NULL);
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
            char digest[REF_DIGEST_MAX + 1];
            copy_digest(digest, d);
            cache_entry_t e;
            if (cache_lookup(c->env->cache, digest, &e) == 0 && e.kind == CACHE_MANIFEST) {
                /* The tag points at a manifest we hold: record the check. */
                cache_tag_set(c->env->cache, c->route.upstream->name, c->route.name, c->route.ref,
                              digest, NULL, NULL);
                c->cache_status = m->have_stale && strcmp(m->stale, digest) == 0 ? "revalidated"
                                                                                 : "hit";
            } else {
                m->announced = true;
            }
            resolved_with(c, m, digest, NULL, 0, NULL);
            return;
        }
        /* No usable digest in the HEAD answer: fetch by tag and hash what arrives. */
        m->digest[0] = '\0';
        fetch_manifest(c, m, c->route.ref);
        return;
    }
    if (err == 0 && status == 404) {
        mreq_free(m);
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

void manifest_handle(call_t *c)
{
    cache_t *cache = c->env->cache;
    mreq_t *m = calloc(1, sizeof *m);
    if (!m) {
        reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    switch (mgate_begin(&m->gate, c)) {
    case MGATE_DENIED:
        mreq_free(m);
        return;
    case MGATE_SERVE:
        /* By digest, or a pinned tag: served by digest whatever the upstream's tag says. */
        m->resolved = true;
        copy_digest(m->target, m->gate.serve);
        c->cache_status = "hit";
        obtain(c, m);
        return;
    default:
        break;
    }
    int64_t checked = 0;
    if (cache_tag_get(cache, c->route.upstream->name, c->route.name, c->route.ref, m->stale,
                      &checked) == 0) {
        m->have_stale = true;
        int64_t age = time_wall_ms() - checked;
        /* A frozen tag is never revalidated once cached. */
        if (m->gate.d.freeze || (age >= 0 && age < (int64_t)c->env->cfg->tag_ttl_s * 1000)) {
            c->cache_status = "hit";
            resolved_with(c, m, m->stale, NULL, 0, NULL);
            return;
        }
    }
    char path[REF_NAME_MAX + 400];
    fetch_path(c, "manifests", c->route.ref, path, sizeof path);
    int err = fetch_start(c, "HEAD", path, OCI_UPSTREAM_ACCEPT, 0, on_tag_checked, m, mreq_free);
    if (err < 0)
        serve_stale_or_fail(c, m, 0, err, NULL);
}
