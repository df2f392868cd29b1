/* Manifests, by digest and by tag.
 *
 * By digest: content-addressed, so a cached copy is served forever; a miss is fetched whole
 * (bounded by max_manifest_bytes), checked (intake.c: a manifest of the type it claims, with
 * the digest asked for), stored, and served.
 *
 * By tag: a tag checked less than tag_ttl_s ago is served from the index. Otherwise the tag is
 * checked upstream (revalidate.c: HEAD, then the manifest by digest if it is new), and this
 * request waits for the check — but when the cache knows the tag, at most
 * tag_revalidate_wait_ms: then the last known digest is served stale and the check finishes
 * on its own (stale-while-revalidate). A down upstream (health.c) gets no wait at all. Only a
 * definite 404 from the upstream makes a cached tag disappear for the client.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/intake.h"
#include "proxy/manifest.h"
#include "proxy/negcache.h"
#include "proxy/reply.h"
#include "proxy/revalidate.h"

/* A request by tag waiting for its check. */
typedef struct mreq {
    reval_waiter_t rw; /* first: the check's callback gets it back */
    call_t *c;
    uv_timer_t *timer; /* the stale deadline; NULL when there is no stale answer to give */
    bool have_stale;   /* a cached digest exists for the tag */
    char stale[REF_DIGEST_MAX + 1];
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
                 (unsigned long long)call_id(c), digest, err_str(err));
        return err;
    }
    reply_begin(c, 200);
    manifest_headers(c, digest, e.media_type);
    resp_send(c->req, len, body, len, true);
    cache_note_access(c->env->cache, digest);
    return 0;
}

static void timer_closed(uv_handle_t *h)
{
    free(h);
}

static void mreq_free(mreq_t *m)
{
    if (m->timer) {
        uv_timer_stop(m->timer);
        uv_close((uv_handle_t *)m->timer, timer_closed);
    }
    free(m);
}

/* The request stops waiting: the client went away. */
static void mreq_cancel(call_t *c)
{
    mreq_t *m = c->op;
    c->op = NULL;
    revalidate_leave(&m->rw);
    mreq_free(m);
}

/* Detaches m from its call (which is answered next) and frees it. */
static call_t *mreq_end(mreq_t *m)
{
    call_t *c = m->c;
    c->cancel = NULL;
    c->op = NULL;
    revalidate_leave(&m->rw);
    mreq_free(m);
    return c;
}

/* ---- Negative caching (negcache.h) ------------------------------------------------------- */

/* The upstream said 404 for what the client asked (a tag, or a digest): remembered for
 * negative_ttl_s. */
static void remember_404(const call_t *c)
{
    negcache_put(c->env->neg, c->route.upstream->name, c->route.name, c->route.ref, time_mono_ms(),
                 c->env->cfg->negative_ttl_s * 1000);
}

/* The upstream said 404 for this reference a moment ago: so do we, without asking again.
 * Returns true when answered. */
static bool answer_negative(call_t *c)
{
    if (!negcache_hit(c->env->neg, c->route.upstream->name, c->route.name, c->route.ref,
                      time_mono_ms()))
        return false;
    c->cache_status = "negative";
    reply_failure(c, WE_NOTFOUND, OCI_MANIFEST_UNKNOWN);
    return true;
}

static bool serve_stale(call_t *c, const char *stale, const char *why)
{
    if (serve_cached(c, stale) != 0)
        return false;
    LOG_WARN("req=%llu tag %s served stale: %s", (unsigned long long)call_id(c), c->route.ref, why);
    c->cache_status = "stale";
    return true;
}

/* The stale deadline passed: answer now, and let the check finish on its own. */
static void on_stale_deadline(uv_timer_t *t)
{
    mreq_t *m = t->data;
    char stale[REF_DIGEST_MAX + 1];
    memcpy(stale, m->stale, sizeof stale);
    call_t *c = mreq_end(m);
    if (!serve_stale(c, stale, "the upstream did not answer in time; revalidating"))
        reply_failure(c, -ETIMEDOUT, OCI_MANIFEST_UNKNOWN);
}

/* The check ended while this request still waited. */
static void on_checked(reval_waiter_t *w, const reval_result_t *res)
{
    mreq_t *m = (mreq_t *)w;
    bool have_stale = m->have_stale;
    char stale[REF_DIGEST_MAX + 1];
    memcpy(stale, m->stale, sizeof stale);
    call_t *c = mreq_end(m);
    if (res->err == 0) {
        c->cache_status =
            !res->body ? (have_stale && strcmp(stale, res->digest) == 0 ? "revalidated" : "hit")
                       : "miss";
        if (serve_cached(c, res->digest) == 0)
            return;
        if (res->body) {
            char *copy = malloc(res->len + 1);
            if (copy) {
                memcpy(copy, res->body, res->len);
                serve_bytes(c, res->digest, res->media_type, copy, res->len);
                return;
            }
        }
        reply_failure(c, res->body ? -ENOMEM : WE_INDEX, OCI_MANIFEST_UNKNOWN);
        return;
    }
    if (res->err == WE_NOTFOUND)
        remember_404(c);
    if (res->err != WE_NOTFOUND && have_stale && serve_stale(c, stale, err_str(res->err)))
        return;
    reply_upstream_failure(c, res->status, res->err, res->retry_after, OCI_MANIFEST_UNKNOWN);
}

static void fail_or_stale(call_t *c, const mreq_t *m, int err)
{
    if (m && m->have_stale && serve_stale(c, m->stale, err_str(err)))
        return;
    reply_failure(c, err, OCI_MANIFEST_UNKNOWN);
}

static void handle_tag(call_t *c)
{
    mreq_t *m = calloc(1, sizeof *m);
    if (!m) {
        reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    m->c = c;
    m->rw.done = on_checked;
    int64_t checked = 0;
    const config_t *cfg = c->env->cfg;
    cache_note_tag_pull(c->env->cache, c->route.upstream->name, c->route.name, c->route.ref);
    if (cache_tag_get(c->env->cache, c->route.upstream->name, c->route.name, c->route.ref, m->stale,
                      &checked) == 0) {
        m->have_stale = true;
        int64_t age = time_wall_ms() - checked;
        if (age >= 0 && age < (int64_t)cfg->tag_ttl_s * 1000) {
            c->cache_status = "hit";
            if (serve_cached(c, m->stale) == 0) {
                free(m);
                return;
            }
        }
    }
    if (answer_negative(c)) {
        free(m);
        return;
    }
    int err = revalidate_join(c, &m->rw);
    if (err < 0) {
        fail_or_stale(c, m, err);
        free(m);
        return;
    }
    c->op = m;
    c->cancel = mreq_cancel;
    if (m->have_stale) {
        m->timer = malloc(sizeof *m->timer);
        if (!m->timer) {
            call_t *cc = mreq_end(m);
            fail_or_stale(cc, NULL, -ENOMEM);
            return;
        }
        uv_timer_init(c->env->loop, m->timer);
        m->timer->data = m;
        uv_timer_start(m->timer, on_stale_deadline, cfg->tag_revalidate_wait_ms, 0);
    }
}

/* ---- By digest --------------------------------------------------------------------------- */

static void on_digest_fetched(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                              size_t len)
{
    (void)ctx;
    if (err || status != 200) {
        free(body);
        if (err == 0 && status == 404)
            remember_404(c);
        reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                               OCI_MANIFEST_UNKNOWN);
        return;
    }
    intake_t in;
    int rc = intake_check(c, up, body, len, c->route.ref, &in);
    if (rc < 0) {
        free(body);
        reply_failure(c, rc, OCI_MANIFEST_UNKNOWN);
        return;
    }
    intake_store(c, &in, body, len, NULL);
    c->cache_status = "miss";
    serve_bytes(c, in.digest, in.media_type, body, len);
    intake_free(&in);
}

static void handle_digest(call_t *c)
{
    c->cache_status = "hit";
    if (serve_cached(c, c->route.ref) == 0)
        return;
    if (answer_negative(c))
        return;
    if (c->health && health_down(c->health)) {
        fail_or_stale(c, NULL, WE_DOWN);
        return;
    }
    char path[REF_NAME_MAX + 400];
    fetch_path(c, "manifests", c->route.ref, path, sizeof path);
    int err = fetch_start(c, "GET", path, OCI_UPSTREAM_ACCEPT, c->env->cfg->max_manifest_bytes,
                          on_digest_fetched, NULL, NULL);
    if (err < 0)
        fail_or_stale(c, NULL, err);
}

void manifest_handle(call_t *c)
{
    if (c->route.ref_is_digest)
        handle_digest(c);
    else
        handle_tag(c);
}
