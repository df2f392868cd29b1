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
 *
 * The policy (manifest_gate.c) is asked at each stage: before anything (refusals by name and
 * tag; a pin, which is then served by digest whatever the upstream's tag says; freeze, which
 * serves a cached tag without revalidation), once the tag resolved (soak may keep serving the
 * previous digest), and before a manifest is served (image size and age). What is served is
 * m->target, and Docker-Content-Digest is always its digest. Only the upstream's own answer is
 * recorded as the tag's digest (by the check): never a pin or a soaking tag's previous digest.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/glob.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/intake.h"
#include "proxy/manifest.h"
#include "proxy/manifest_gate.h"
#include "proxy/negcache.h"
#include "proxy/oci.h"
#include "proxy/pfilter.h"
#include "proxy/platforms.h"
#include "proxy/prefetch.h"
#include "proxy/reply.h"
#include "proxy/revalidate.h"

/* One manifest request, from its arrival to its answer. */
typedef struct mreq {
    reval_waiter_t rw; /* first: the check's callback gets it back */
    call_t *c;
    uv_timer_t *timer; /* the stale deadline; NULL when there is no stale answer to give */
    bool waiting;      /* joined a tag check (rw) */
    bool have_stale;   /* a cached digest exists for the tag */
    char stale[REF_DIGEST_MAX + 1];
    mgate_t gate;                    /* the policy's view of this request */
    char target[REF_DIGEST_MAX + 1]; /* the digest to serve, once known */
    /* A manifest in memory, kept while the policy checks the image (mgate_image). */
    char *body;
    size_t len;
    char mt[128];
    bool filtered; /* the filter (a platforms rule's) had its look at what is served */
} mreq_t;

/* Writes the header set every manifest answer carries. */
static void manifest_headers(call_t *c, const char *digest, const char *media_type)
{
    resp_header(c->req, "Content-Type", "%s", media_type);
    resp_header(c->req, "Docker-Content-Digest", "%s", digest);
    resp_header(c->req, "ETag", "\"%s\"", digest);
}

/* An index goes out to a client: the content of its client's platforms is prefetched. */
static void maybe_prefetch(call_t *c, const char *body, size_t len, const char *media_type)
{
    if (c->env->cfg->n_platform_rules == 0 || !image_type_is_index(media_type))
        return;
    image_t *img;
    char err[160];
    if (image_parse(body, len, media_type, &img, err, sizeof err) != 0)
        return;
    prefetch_note_index(c->env->prefetch, img);
    prefetch_index(c, img);
    image_free(img);
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
    maybe_prefetch(c, body, len, media_type);
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
        if (c->env->cfg->n_platform_rules && image_type_is_index(e.media_type)) {
            char *b;
            size_t n;
            if (cache_read_manifest(c->env->cache, digest, c->env->cfg->max_manifest_bytes, &b,
                                    &n) == 0) {
                maybe_prefetch(c, b, n, e.media_type);
                free(b);
            }
        }
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
    maybe_prefetch(c, body, len, e.media_type);
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
    if (m->waiting)
        revalidate_leave(&m->rw);
    if (m->timer) {
        uv_timer_stop(m->timer);
        uv_close((uv_handle_t *)m->timer, timer_closed);
    }
    mgate_clear(&m->gate);
    free(m->body);
    free(m);
}

static void mreq_free_cb(void *arg)
{
    mreq_free(arg);
}

static void copy_digest(char dst[REF_DIGEST_MAX + 1], const char *src)
{
    snprintf(dst, REF_DIGEST_MAX + 1, "%s", src);
}

/* ---- Negative caching (negcache.h) ------------------------------------------------------- */

/* The upstream said 404 for what the client asked (a tag, or a digest): remembered for
 * negative_ttl_s. */
static void remember_404(const call_t *c, const char *ref)
{
    negcache_put(c->env->neg, c->route.upstream->name, c->route.name, ref, time_mono_ms(),
                 c->env->cfg->negative_ttl_s * 1000);
}

/* The upstream said 404 for this reference a moment ago: so do we, without asking again.
 * Returns true when answered. */
static bool answer_negative(call_t *c, const char *ref)
{
    if (!negcache_hit(c->env->neg, c->route.upstream->name, c->route.name, ref, time_mono_ms()))
        return false;
    c->cache_status = "negative";
    reply_failure(c, WE_NOTFOUND, OCI_MANIFEST_UNKNOWN);
    return true;
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

/* Stores a filtered index (not tagged: the tag keeps the upstream's digest) under c's
 * repository, so that requests by its digest find it. */
static void store_filtered(call_t *c, const char *digest, const char *mt, const char *b, size_t n)
{
    cache_entry_t have;
    if (cache_lookup(c->env->cache, digest, &have) == 0 && have.kind == CACHE_MANIFEST)
        return;
    image_t *img = NULL;
    char err[160];
    if (image_parse(b, n, mt, &img, err, sizeof err) != 0) {
        LOG_ERROR("req=%llu filtered index %s does not parse: %s", (unsigned long long)call_id(c),
                  digest, err);
        return;
    }
    cache_manifest_put_t put = {.digest = digest,
                                .media_type = mt,
                                .bytes = b,
                                .len = n,
                                .upstream = c->route.upstream->name,
                                .repo = c->route.name,
                                .image = img};
    int rc = cache_put_manifest(c->env->cache, &put, NULL, NULL);
    if (rc < 0)
        LOG_ERROR("req=%llu caching filtered index %s failed: %s", (unsigned long long)call_id(c),
                  digest, err_str(rc));
    image_free(img);
}

/* The rule with filter that applies to c (a request by tag), or NULL. */
static const config_platform_rule_t *filter_rule(const call_t *c)
{
    const config_t *cfg = c->env->cfg;
    if (c->route.ref_is_digest || cfg->n_platform_rules == 0)
        return NULL;
    const config_platform_rule_t *r = platforms_rule(cfg, c->route.upstream->name, c->route.name);
    return r && r->filter ? r : NULL;
}

static void deliver(mreq_t *m, char *body, size_t len, const char *mt);

/* A request by tag under a rule with filter: an index is answered with its copy listing only
 * the rule's platforms (pfilter.c), stored and served under its own digest; the original stays
 * served by its digest. body (borrowed) is m->target's. True when the request was answered (or
 * is being, through deliver with the filtered bytes). */
static bool filter_index(mreq_t *m, const char *body, size_t len, const char *mt)
{
    call_t *c = m->c;
    const config_t *cfg = c->env->cfg;
    const config_platform_rule_t *r = filter_rule(c);
    if (!r || !image_type_is_index(mt))
        return false;
    char *out = NULL, digest[REF_DIGEST_MAX + 1];
    size_t n = 0;
    int rc = pfilter_index(body, len, r->platforms, r->n_platforms, &out, &n, digest);
    char mtype[128];
    snprintf(mtype, sizeof mtype, "%s", mt);
    if (rc == WE_NOTFOUND) {
        char msg[GLOB_MAX + 96];
        snprintf(msg, sizeof msg, "no platform of this index is allowed by platforms[%zu] (%s)",
                 (size_t)(r - cfg->platform_rules), r->match);
        mreq_free(m);
        reply_denied(c, msg);
        return true;
    }
    if (rc < 0) {
        mreq_free(m);
        reply_failure(c, rc, OCI_MANIFEST_UNKNOWN);
        return true;
    }
    if (!out)
        return false; /* not an index, or every platform allowed: the original as it is */
    LOG_INFO("req=%llu filtered index %s of %s (platforms[%zu])", (unsigned long long)call_id(c),
             digest, m->target, (size_t)(r - cfg->platform_rules));
    store_filtered(c, digest, mtype, out, n);
    copy_digest(m->target, digest);
    deliver(m, out, n, mtype);
    return true;
}

/* Serves m->target from body (taken), once the policy's image check allows it. */
static void deliver(mreq_t *m, char *body, size_t len, const char *mt)
{
    if (!m->filtered) {
        m->filtered = true;
        if (filter_index(m, body, len, mt)) {
            free(body);
            return;
        }
    }
    m->body = body;
    m->len = len;
    snprintf(m->mt, sizeof m->mt, "%s", mt);
    enum mgate_result r = mgate_image(&m->gate, body, len, m->mt, on_gate_done, m, mreq_free_cb);
    if (r == MGATE_WAIT)
        return;
    on_gate_done(m->c, m, r == MGATE_SERVE);
}

static void on_target_fetched(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                              size_t len)
{
    mreq_t *m = ctx;
    if (err || status != 200) {
        free(body);
        if (err == 0 && status == 404)
            remember_404(c, m->target);
        mreq_free(m);
        reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                               OCI_MANIFEST_UNKNOWN);
        return;
    }
    intake_t in;
    int rc = intake_check(c, up, body, len, m->target, &in);
    if (rc < 0) {
        free(body);
        mreq_free(m);
        reply_failure(c, rc, OCI_MANIFEST_UNKNOWN);
        return;
    }
    /* By digest: no tag is recorded (a pin or a soak chose this digest, not the upstream). */
    intake_store(c, &in, body, len, NULL);
    c->cache_status = "miss";
    deliver(m, body, len, in.media_type);
    intake_free(&in);
}

/* Serves m->target: from the cache, or fetched by digest. */
static void obtain(mreq_t *m)
{
    call_t *c = m->c;
    cache_t *cache = c->env->cache;
    cache_entry_t e;
    if (cache_lookup(cache, m->target, &e) == 0 && e.kind == CACHE_MANIFEST && e.media_type[0]) {
        /* Served straight from the cache unless the policy or a filter reads the bytes. */
        if (!(m->gate.d.needs & POLICY_NEED_IMAGE) && !m->gate.restrict_rule && !filter_rule(c)) {
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
                deliver(m, body, len, e.media_type);
                return;
            }
            LOG_WARN("req=%llu %s indexed but unreadable (%s); refetching",
                     (unsigned long long)call_id(c), m->target, err_str(err));
        }
    }
    if (answer_negative(c, m->target)) {
        mreq_free(m);
        return;
    }
    if (c->health && health_down(c->health)) {
        mreq_free(m);
        reply_failure(c, WE_DOWN, OCI_MANIFEST_UNKNOWN);
        return;
    }
    char path[REF_NAME_MAX + 400];
    fetch_path(c, "manifests", m->target, path, sizeof path);
    int err = fetch_start(c, "GET", path, OCI_UPSTREAM_ACCEPT, c->env->cfg->max_manifest_bytes,
                          on_target_fetched, m, mreq_free_cb);
    if (err < 0) {
        mreq_free(m);
        reply_failure(c, err, OCI_MANIFEST_UNKNOWN);
    }
}

/* A request by tag from a client that reads no index (no index or list type, no wildcard in
 * Accept) resolved to an index: the target becomes the index's manifest for the client's
 * platform (its group's, its User-Agent's, the rule's first, else linux/amd64), as registries
 * have always done for old clients; that platform's content is prefetched as for an index.
 * body (borrowed, may be NULL: read from the cache) is m->target's. True when retargeted. */
static bool retarget_for_platform(mreq_t *m, const char *body, size_t len, const char *mt)
{
    call_t *c = m->c;
    if (c->route.ref_is_digest ||
        (c->accept & (ACCEPT_DOCKER_LIST | ACCEPT_OCI_INDEX | ACCEPT_ANY)))
        return false;
    char *owned = NULL, err[160];
    cache_entry_t e;
    if (!body) {
        if (cache_lookup(c->env->cache, m->target, &e) != 0 || e.kind != CACHE_MANIFEST ||
            !image_type_is_index(e.media_type) ||
            cache_read_manifest(c->env->cache, m->target, c->env->cfg->max_manifest_bytes, &owned,
                                &len) != 0)
            return false;
        body = owned;
        mt = e.media_type;
    }
    image_t *img = NULL;
    int idx = -1;
    if (image_type_is_index(mt) && image_parse(body, len, mt, &img, err, sizeof err) == 0) {
        platsel_t sel;
        platforms_select(c, &sel);
        idx = platforms_pick(img, &sel.set[0]);
        char p[PLATFORM_STR_MAX];
        platform_format(&sel.set[0], p, sizeof p);
        if (idx >= 0) {
            LOG_INFO("req=%llu the client reads no index: serving %s's manifest %s (%s)",
                     (unsigned long long)call_id(c), p, img->refs[idx].digest, sel.source);
            prefetch_note_index(c->env->prefetch, img);
            prefetch_index(c, img);
            copy_digest(m->target, img->refs[idx].digest);
        } else {
            LOG_INFO("req=%llu the client reads no index and the index has no %s manifest",
                     (unsigned long long)call_id(c), p);
        }
    }
    image_free(img);
    free(owned);
    return idx >= 0;
}

/* The tag resolved to digest (the upstream's, or the cache's): the policy picks what to serve.
 * body (taken, may be NULL) holds digest's manifest when the check just fetched it. */
static void resolved(mreq_t *m, const char *digest, char *body, size_t len, const char *mt)
{
    copy_digest(m->target, mgate_resolved(&m->gate, digest));
    bool mine = body && strcmp(m->target, digest) == 0;
    if (retarget_for_platform(m, mine ? body : NULL, len, mine ? mt : NULL)) {
        free(body);
        obtain(m);
        return;
    }
    if (mine) {
        deliver(m, body, len, mt);
        return;
    }
    free(body);
    obtain(m);
}

/* ---- By tag: the check ------------------------------------------------------------------- */

/* The request stops waiting: the client went away. */
static void mreq_cancel(call_t *c)
{
    mreq_t *m = c->op;
    c->op = NULL;
    mreq_free(m);
}

/* The request stops waiting for the check (which goes on); it is answered next. */
static void detach(mreq_t *m)
{
    call_t *c = m->c;
    c->cancel = NULL;
    c->op = NULL;
    if (m->waiting)
        revalidate_leave(&m->rw);
    m->waiting = false;
    if (m->timer) {
        uv_timer_stop(m->timer);
        uv_close((uv_handle_t *)m->timer, timer_closed);
        m->timer = NULL;
    }
}

static void serve_stale(mreq_t *m, const char *why)
{
    LOG_WARN("req=%llu tag %s served stale: %s", (unsigned long long)call_id(m->c), m->c->route.ref,
             why);
    m->c->cache_status = "stale";
    resolved(m, m->stale, NULL, 0, NULL);
}

/* The stale deadline passed: answer now, and let the check finish on its own. */
static void on_stale_deadline(uv_timer_t *t)
{
    mreq_t *m = t->data;
    detach(m);
    serve_stale(m, "the upstream did not answer in time; revalidating");
}

/* The check ended while this request still waited. */
static void on_checked(reval_waiter_t *w, const reval_result_t *res)
{
    mreq_t *m = (mreq_t *)w;
    call_t *c = m->c;
    m->waiting = false; /* the check let go of every waiter */
    detach(m);
    if (res->err == 0) {
        c->cache_status =
            !res->body
                ? (m->have_stale && strcmp(m->stale, res->digest) == 0 ? "revalidated" : "hit")
                : "miss";
        char *copy = NULL;
        if (res->body && (copy = malloc(res->len + 1)) != NULL)
            memcpy(copy, res->body, res->len);
        resolved(m, res->digest, copy, res->len, res->media_type);
        return;
    }
    if (res->err == WE_NOTFOUND)
        remember_404(c, c->route.ref);
    if (res->err != WE_NOTFOUND && m->have_stale) {
        serve_stale(m, err_str(res->err));
        return;
    }
    mreq_free(m);
    reply_upstream_failure(c, res->status, res->err, res->retry_after, OCI_MANIFEST_UNKNOWN);
}

static void fail_or_stale(mreq_t *m, int err)
{
    if (m->have_stale) {
        serve_stale(m, err_str(err));
        return;
    }
    call_t *c = m->c;
    mreq_free(m);
    reply_failure(c, err, OCI_MANIFEST_UNKNOWN);
}

static void handle_tag(mreq_t *m)
{
    call_t *c = m->c;
    int64_t checked = 0;
    const config_t *cfg = c->env->cfg;
    if (cache_tag_get(c->env->cache, c->route.upstream->name, c->route.name, c->route.ref, m->stale,
                      &checked) == 0) {
        m->have_stale = true;
        int64_t age = time_wall_ms() - checked;
        /* A frozen tag is never revalidated once cached. */
        if (m->gate.d.freeze || (age >= 0 && age < (int64_t)cfg->tag_ttl_s * 1000)) {
            c->cache_status = "hit";
            resolved(m, m->stale, NULL, 0, NULL);
            return;
        }
    }
    if (answer_negative(c, c->route.ref)) {
        mreq_free(m);
        return;
    }
    int err = revalidate_join(c, &m->rw);
    if (err < 0) {
        fail_or_stale(m, err);
        return;
    }
    m->waiting = true;
    c->op = m;
    c->cancel = mreq_cancel;
    if (m->have_stale) {
        m->timer = malloc(sizeof *m->timer);
        if (!m->timer) {
            detach(m);
            fail_or_stale(m, -ENOMEM);
            return;
        }
        uv_timer_init(c->env->loop, m->timer);
        m->timer->data = m;
        uv_timer_start(m->timer, on_stale_deadline, cfg->tag_revalidate_wait_ms, 0);
    }
}

/* A rule with restrict refuses the platform manifests outside its set. A request by digest names
 * no platform: the cache's records of the indexes stored from this upstream say what each child
 * is (across restarts; cache_child_platforms), and the memory of indexes served since start
 * covers indexes cached by a winch that kept no records. A digest that every known claim puts
 * outside the set is refused here, before anything is fetched; one that any claim allows
 * passes. True when refused. *unknown gets the rule when no index names the digest: the
 * manifest's own config decides then (mgate_image: restrict_rule). */
static bool restricted(call_t *c, const config_platform_rule_t **unknown)
{
    const config_t *cfg = c->env->cfg;
    *unknown = NULL;
    if (!c->route.ref_is_digest || cfg->n_platform_rules == 0)
        return false;
    const config_platform_rule_t *r = platforms_rule(cfg, c->route.upstream->name, c->route.name);
    if (!r || !r->restrict_)
        return false;
    platform_t ps[CACHE_CHILD_PLATFORMS_MAX + 1];
    size_t n = 0;
    int err = cache_child_platforms(c->env->cache, c->route.upstream->name, c->route.ref, ps, &n);
    if (err < 0 && err != WE_NOTFOUND)
        LOG_WARN("req=%llu platform records of %s unreadable (%s)", (unsigned long long)call_id(c),
                 c->route.ref, err_str(err));
    if (prefetch_platform_of(c->env->prefetch, c->route.ref, &ps[n]) == 0)
        n++;
    if (n == 0) {
        *unknown = r;
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (platform_in(r->platforms, r->n_platforms, &ps[i]))
            return false;
    char msg[PLATFORMS_REFUSAL_MAX];
    platforms_refusal(cfg, r, &ps[0], msg, sizeof msg);
    LOG_INFO("req=%llu %s refused: %s", (unsigned long long)call_id(c), c->route.ref, msg);
    reply_denied(c, msg);
    return true;
}

void manifest_handle(call_t *c)
{
    const config_platform_rule_t *unknown;
    if (restricted(c, &unknown))
        return;
    mreq_t *m = calloc(1, sizeof *m);
    if (!m) {
        reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    m->c = c;
    m->rw.done = on_checked;
    m->gate.restrict_rule = unknown;
    if (!c->route.ref_is_digest)
        cache_note_tag_pull(c->env->cache, c->route.upstream->name, c->route.name, c->route.ref);
    switch (mgate_begin(&m->gate, c)) {
    case MGATE_DENIED:
        mreq_free(m);
        return;
    case MGATE_SERVE:
        /* By digest, or a pinned tag: served by digest whatever the upstream's tag says. */
        copy_digest(m->target, m->gate.serve);
        c->cache_status = "hit";
        obtain(m);
        return;
    default:
        handle_tag(m);
        return;
    }
}
