/* winch warm's engine (warm.h): one REF after the other, each as a client pulls it through the
 * mirror:
 *
 *   manifest    GET <prefix>/manifests/<tag|digest> with every manifest type accepted; the
 *               body (at most max_manifest_bytes) must hash to the digest asked for, or is
 *               hashed for a tag, and parse (image_parse, with its Content-Type).
 *   platforms   for an index, the manifest of each wanted platform (exact variant first, then
 *               any variant of the os/architecture), the same way.
 *   blobs       every config and layer of those images, each once, `parallel` at a time; a
 *               blob that fails is retried twice, a second apart.
 *
 * <prefix> is /v2/<repository> for the default upstream and /v2/<upstream>/<repository> for
 * the others: the path prefix winch routes by. The HTTP client is the upstream client
 * (upstream.c) pointed at the listener. Everything runs on the caller's loop: with an
 * in-process server on the same loop (cli_warm.c) nothing blocks either side. */
#include "proxy/warm.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/mediatype.h"
#include "common/util.h"
#include "proxy/fetch.h"
#include "proxy/platforms.h"
#include "proxy/upstream.h"

#define RETRIES 2
#define RETRY_MS 1000

enum bstate { B_PENDING, B_FLIGHT, B_WAIT, B_DONE };

typedef struct wblob {
    char digest[REF_DIGEST_MAX + 1];
    uint64_t size;
    uint64_t reported; /* body bytes told to ev.bytes (across attempts, never more than size) */
    enum bstate state;
    int attempts;
    int err;
} wblob_t;

typedef struct child {
    char digest[REF_DIGEST_MAX + 1];
    char media_type[128];
    uint64_t size;
} child_t;

/* One GET in flight (a manifest or a blob). */
typedef struct get {
    warm_t *w;
    upreq_t *up;
    struct get *next;
    long blob; /* index into w->blobs, or -1 for a manifest */
    int status;
    uint64_t got;
    char *body; /* manifests only */
    char media_type[128];
} get_t;

struct warm {
    warm_opts_t o;
    config_t *ccfg; /* the client's configuration: one "upstream", the listener */
    upstream_t *client;
    void (*done)(void *arg, unsigned failed);
    void *done_arg;
    uv_timer_t step, retry; /* the next REF; blobs waiting to be retried */
    int timers;             /* initialised, to close */
    bool top;               /* the manifest in flight is the REF's own (else a platform's) */
    get_t *gets;            /* in flight */

    size_t ri; /* the REF being pulled */
    cli_ref_t ref;
    char prefix[800];
    char digest[REF_DIGEST_MAX + 1]; /* its manifest's */
    char platforms[512];
    child_t *children;
    size_t nchildren, ci;
    wblob_t *blobs;
    size_t nblobs, ndone, inflight;
    unsigned failed;
    bool finished;

    char **fetched;
    size_t nfetched, capfetched;
};

static void next_ref(warm_t *w);
static void pump(warm_t *w);

static void step_cb(uv_timer_t *t)
{
    next_ref(container_of(t, warm_t, step));
}

/* ---- Bookkeeping ------------------------------------------------------------------------ */

static void note_fetched(warm_t *w, const char *digest)
{
    if (w->nfetched == w->capfetched) {
        size_t cap = w->capfetched ? w->capfetched * 2 : 64;
        char **p = realloc(w->fetched, cap * sizeof *p);
        if (!p)
            return;
        w->fetched = p;
        w->capfetched = cap;
    }
    char *d = strdup(digest);
    if (d)
        w->fetched[w->nfetched++] = d;
}

static void get_unlink(warm_t *w, get_t *g)
{
    for (get_t **p = &w->gets; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            return;
        }
}

static void reset_ref(warm_t *w)
{
    free(w->children);
    free(w->blobs);
    w->children = NULL;
    w->blobs = NULL;
    w->nchildren = w->ci = w->nblobs = w->ndone = w->inflight = 0;
    w->platforms[0] = w->digest[0] = '\0';
}

/* The REF is over: tell, then go on with the next on a later loop iteration. */
static void ref_done(warm_t *w, int status, const char *why)
{
    if (status)
        w->failed++;
    if (w->o.ev.done)
        w->o.ev.done(w->o.ev.arg, w->o.refs[w->ri], w->digest, status, why ? why : "");
    reset_ref(w);
    w->ri++;
    uv_timer_start(&w->step, step_cb, 0, 0);
}

static void ref_fail(warm_t *w, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ref_fail(warm_t *w, int status, const char *fmt, ...)
{
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    ref_done(w, status ? status : WE_INVALID, why);
}

/* ---- GETs ---------------------------------------------------------------------------------- */

static void on_headers(upreq_t *up, void *arg, int status)
{
    get_t *g = arg;
    g->status = status;
    if (status != 200)
        return;
    uint64_t len = upreq_content_length(up);
    if (g->blob < 0) {
        const char *ct = upreq_header(up, "Content-Type");
        size_t n = ct ? strcspn(ct, "; ") : 0;
        snprintf(g->media_type, sizeof g->media_type, "%.*s", (int)n, ct ? ct : "");
        if (len != UINT64_MAX && len > g->w->o.cfg->max_manifest_bytes)
            g->status = WE_TOOBIG;
    } else if (len != UINT64_MAX && len != g->w->blobs[g->blob].size) {
        g->status = WE_PROTO;
    }
}

static void on_body(upreq_t *up, void *arg, const char *data, size_t len)
{
    get_t *g = arg;
    (void)up;
    if (g->status != 200)
        return;
    if (g->blob >= 0) {
        wblob_t *b = &g->w->blobs[g->blob];
        g->got += len;
        uint64_t upto = g->got < b->size ? g->got : b->size;
        if (upto > b->reported && g->w->o.ev.bytes)
            g->w->o.ev.bytes(g->w->o.ev.arg, upto - b->reported);
        if (upto > b->reported)
            b->reported = upto;
        return;
    }
    uint64_t max = g->w->o.cfg->max_manifest_bytes;
    if (g->got + len > max) {
        g->status = WE_TOOBIG;
        return;
    }
    char *p = realloc(g->body, (size_t)(g->got + len) + 1);
    if (!p) {
        g->status = -ENOMEM;
        return;
    }
    memcpy(p + g->got, data, len);
    g->body = p;
    g->got += len;
    p[g->got] = '\0';
}

static void manifest_done(warm_t *w, get_t *g, int err);
static void blob_done(warm_t *w, get_t *g, int err);

static void on_done(upreq_t *up, void *arg, int err)
{
    get_t *g = arg;
    warm_t *w = g->w;
    (void)up;
    g->up = NULL;
    get_unlink(w, g);
    if (!err && g->status != 200)
        err = g->status < 0 ? g->status : fetch_status_err(g->status);
    if (g->blob >= 0)
        blob_done(w, g, err);
    else
        manifest_done(w, g, err);
    free(g->body);
    free(g);
}

static const upreq_cbs_t cbs = {.on_headers = on_headers, .on_body = on_body, .on_done = on_done};

static int get_start(warm_t *w, const char *kind, const char *ref, long blob)
{
    static const char *const accept[] = {"Accept: " MT_OCI_MANIFEST, "Accept: " MT_OCI_INDEX,
                                         "Accept: " MT_DOCKER_V2, "Accept: " MT_DOCKER_LIST, NULL};
    char path[1200];
    get_t *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->w = w;
    g->blob = blob;
    snprintf(path, sizeof path, "%s/%s/%s", w->prefix, kind, ref);
    int rc = upreq_start(&g->up, w->client, "GET", path, blob < 0 ? accept : NULL, &cbs, g);
    if (rc) {
        free(g);
        return rc;
    }
    g->next = w->gets;
    w->gets = g;
    return 0;
}

/* ---- Manifests ------------------------------------------------------------------------------ */

/* The digest of a manifest body: the one asked for, checked, or sha256 of the bytes. */
static int body_digest(const get_t *g, const char *want, char out[REF_DIGEST_MAX + 1])
{
    if (want) {
        snprintf(out, REF_DIGEST_MAX + 1, "%s", want);
        return digest_verify(want, g->body ? g->body : "", (size_t)g->got);
    }
    digester_t *d;
    int rc = digester_new(&d, REF_ALG_SHA256);
    if (rc)
        return rc;
    digester_update(d, g->body ? g->body : "", (size_t)g->got);
    rc = digester_final(d, out);
    digester_free(d);
    return rc;
}

static void add_blobs(warm_t *w, const image_t *img)
{
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        bool seen = false;
        if (r->role != IMAGE_CONFIG && r->role != IMAGE_LAYER)
            continue;
        for (size_t k = 0; k < w->nblobs && !seen; k++)
            seen = strcmp(w->blobs[k].digest, r->digest) == 0;
        if (seen)
            continue;
        wblob_t *nb = realloc(w->blobs, (w->nblobs + 1) * sizeof *nb);
        if (!nb)
            continue; /* reported as missing from the cache at the end */
        w->blobs = nb;
        memset(&nb[w->nblobs], 0, sizeof *nb);
        snprintf(nb[w->nblobs].digest, sizeof nb->digest, "%s", r->digest);
        nb[w->nblobs++].size = r->size;
    }
}

static bool add_child(warm_t *w, const image_ref_t *r)
{
    for (size_t k = 0; k < w->nchildren; k++)
        if (strcmp(w->children[k].digest, r->digest) == 0)
            return true;
    child_t *nc = realloc(w->children, (w->nchildren + 1) * sizeof *nc);
    if (!nc)
        return false;
    w->children = nc;
    child_t *c = &nc[w->nchildren++];
    snprintf(c->digest, sizeof c->digest, "%s", r->digest);
    snprintf(c->media_type, sizeof c->media_type, "%s", r->media_type);
    c->size = r->size;
    size_t pl = strlen(w->platforms);
    char p[128];
    platforms_entry_format(&r->platform, p, sizeof p);
    snprintf(w->platforms + pl, sizeof w->platforms - pl, "%s%s", pl ? "," : "", p);
    return true;
}

/* True when index entry r is a platform image of want's OS and architecture, any variant. */
static bool same_os_arch(const platform_t *want, const image_ref_t *r)
{
    platform_t q;
    return r->role == IMAGE_CHILD && r->has_platform && !platforms_is_attestation(r) &&
           !image_type_is_index(r->media_type) &&
           platform_from_parts(r->platform.os, r->platform.arch, r->platform.variant, &q) == 0 &&
           strcmp(q.os, want->os) == 0 && strcmp(q.arch, want->arch) == 0;
}

/* The entries of the index to pull: every platform, or the best match of each one asked for
 * (the same platform, normalised as containerd does; else, when none was named, any variant
 * of the OS and architecture). */
static int pick_children(warm_t *w, const image_t *img, char *why, size_t len)
{
    static const platform_t amd64 = {.os = "linux", .arch = "amd64"};
    const platform_t *specs = w->o.nplatforms ? w->o.platforms : &amd64;
    size_t nspecs = w->o.nplatforms ? w->o.nplatforms : 1;
    for (size_t i = 0; w->o.all_platforms && i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        if (r->role == IMAGE_CHILD && r->has_platform && !r->attestation && !add_child(w, r))
            return -ENOMEM;
    }
    for (size_t s = 0; !w->o.all_platforms && s < nspecs; s++) {
        int at = platforms_pick(img, &specs[s]);
        for (size_t i = 0; at < 0 && !specs[s].variant[0] && i < img->nrefs; i++)
            if (same_os_arch(&specs[s], &img->refs[i]))
                at = (int)i;
        if (at < 0) {
            char ps[PLATFORM_STR_MAX];
            snprintf(why, len, "no %s in the index", platform_format(&specs[s], ps, sizeof ps));
            return WE_NOTFOUND;
        }
        if (!add_child(w, &img->refs[at]))
            return -ENOMEM;
    }
    if (w->nchildren == 0) {
        snprintf(why, len, "the index names no platform image");
        return WE_NOTFOUND;
    }
    return 0;
}

static void start_blobs(warm_t *w)
{
    uint64_t bytes = 0;
    for (size_t i = 0; i < w->nblobs; i++)
        bytes += w->blobs[i].size;
    if (w->o.ev.start)
        w->o.ev.start(w->o.ev.arg, w->o.refs[w->ri], w->platforms, w->nblobs, bytes);
    if (w->nblobs == 0) {
        ref_done(w, 0, NULL);
        return;
    }
    pump(w);
}

static void fetch_child(warm_t *w)
{
    w->top = false;
    int rc = get_start(w, "manifests", w->children[w->ci].digest, -1);
    if (rc)
        ref_fail(w, rc, "manifest %s: %s", w->children[w->ci].digest, err_str(rc));
}

static void manifest_done(warm_t *w, get_t *g, int err)
{
    char digest[REF_DIGEST_MAX + 1], why[300];
    image_t *img = NULL;
    const child_t *ch = w->top ? NULL : &w->children[w->ci];
    const char *want = ch ? ch->digest : w->ref.digest[0] ? w->ref.digest : NULL;
    const char *what = ch ? ch->digest : "manifest";
    if (err) {
        ref_fail(w, err, "%s: %s", what, err_str(err));
        return;
    }
    if ((err = body_digest(g, want, digest))) {
        ref_fail(w, err, "%s: the body does not match its digest", what);
        return;
    }
    const char *mt = image_type_known(g->media_type) ? g->media_type : ch ? ch->media_type : "";
    if ((err = image_parse(g->body ? g->body : "", (size_t)g->got, mt, &img, why, sizeof why))) {
        ref_fail(w, err, "%s: %s", what, why);
        return;
    }
    note_fetched(w, digest);
    if (!ch)
        snprintf(w->digest, sizeof w->digest, "%s", digest);
    if (img->kind == IMAGE_INDEX && ch) {
        image_free(img);
        ref_fail(w, WE_INVALID, "%s: an index inside an index is not supported", what);
        return;
    }
    if (img->kind == IMAGE_INDEX) {
        err = pick_children(w, img, why, sizeof why);
        image_free(img);
        if (err) {
            ref_fail(w, err, "%s", err == -ENOMEM ? "out of memory" : why);
            return;
        }
        w->ci = 0;
        fetch_child(w);
        return;
    }
    add_blobs(w, img);
    image_free(img);
    if (ch && ++w->ci < w->nchildren) {
        fetch_child(w);
        return;
    }
    start_blobs(w);
}

/* ---- Blobs ---------------------------------------------------------------------------------- */

static void retry_cb(uv_timer_t *t)
{
    warm_t *w = container_of(t, warm_t, retry);
    for (size_t i = 0; i < w->nblobs; i++)
        if (w->blobs[i].state == B_WAIT)
            w->blobs[i].state = B_PENDING;
    pump(w);
}

static void blob_finish(warm_t *w, wblob_t *b, int err)
{
    b->state = B_DONE;
    b->err = err;
    w->ndone++;
    if (w->o.ev.blob)
        w->o.ev.blob(w->o.ev.arg, b->digest, b->size, err);
    if (!err)
        note_fetched(w, b->digest);
    if (w->ndone < w->nblobs) {
        pump(w);
        return;
    }
    size_t nfail = 0;
    const wblob_t *first = NULL;
    for (size_t i = 0; i < w->nblobs; i++)
        if (w->blobs[i].err && nfail++ == 0)
            first = &w->blobs[i];
    if (first)
        ref_fail(w, first->err, "%zu of %zu blobs failed; %s: %s", nfail, w->nblobs, first->digest,
                 err_str(first->err));
    else
        ref_done(w, 0, NULL);
}

static void blob_done(warm_t *w, get_t *g, int err)
{
    wblob_t *b = &w->blobs[g->blob];
    w->inflight--;
    if (!err && g->got != b->size)
        err = WE_SHORT;
    if (err && b->attempts < RETRIES) {
        b->attempts++;
        b->state = B_WAIT;
        if (!uv_is_active((uv_handle_t *)&w->retry))
            uv_timer_start(&w->retry, retry_cb, RETRY_MS, 0);
        pump(w);
        return;
    }
    blob_finish(w, b, err);
}

static void pump(warm_t *w)
{
    unsigned par = w->o.parallel ? w->o.parallel : 4;
    for (size_t i = 0; i < w->nblobs && w->inflight < par; i++) {
        wblob_t *b = &w->blobs[i];
        if (b->state != B_PENDING)
            continue;
        int rc = get_start(w, "blobs", b->digest, (long)i);
        if (rc) {
            blob_finish(w, b, rc);
            return; /* blob_finish pumped, or ended the REF */
        }
        b->state = B_FLIGHT;
        w->inflight++;
    }
}

/* ---- The REFs ------------------------------------------------------------------------------ */

static void next_ref(warm_t *w)
{
    if (w->ri >= w->o.nrefs) {
        if (!w->finished) {
            w->finished = true;
            w->done(w->done_arg, w->failed);
        }
        return;
    }
    if (cli_ref_parse(w->o.cfg, w->o.refs[w->ri], &w->ref)) {
        ref_fail(w, WE_INVALID, "invalid reference");
        return;
    }
    if (strcmp(w->ref.upstream, w->o.cfg->upstreams[0].name) == 0)
        snprintf(w->prefix, sizeof w->prefix, "/v2/%s", w->ref.repo);
    else
        snprintf(w->prefix, sizeof w->prefix, "/v2/%s/%s", w->ref.upstream, w->ref.repo);
    w->top = true;
    int rc = get_start(w, "manifests", w->ref.digest[0] ? w->ref.digest : w->ref.tag, -1);
    if (rc)
        ref_fail(w, rc, "%s", err_str(rc));
}

int warm_start(warm_t **out, const warm_opts_t *o, void (*done)(void *arg, unsigned failed),
               void *arg, char *err, size_t errlen)
{
    char json[1400];
    warm_t *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    w->o = *o;
    w->done = done;
    w->done_arg = arg;
    /* The client's timeouts are a client's: a cold blob's first byte waits for the upstream
     * behind the mirror, and a slow upstream may pause a fill for a while. */
    snprintf(json, sizeof json,
             "{\"upstreams\": [{\"name\": \"winch-warm\", \"url\": \"%s\"}],"
             " \"upstream_connect_timeout_ms\": 10000, \"upstream_response_timeout_ms\": 300000,"
             " \"upstream_idle_timeout_ms\": 300000, \"upstream_max_conns\": 16}",
             o->server);
    int rc = config_from_json(&w->ccfg, json, strlen(json), "--server", err, errlen);
    if (rc == 0 && (rc = upstream_create(&w->client, o->loop, &w->ccfg->upstreams[0], w->ccfg)))
        snprintf(err, errlen, "%s", err_str(rc));
    if (rc) {
        config_free(w->ccfg);
        free(w);
        return rc;
    }
    uv_timer_init(o->loop, &w->step);
    uv_timer_init(o->loop, &w->retry);
    w->timers = 2;
    uv_timer_start(&w->step, step_cb, 0, 0);
    *out = w;
    return 0;
}

size_t warm_fetched(const warm_t *w, const char *const **digests)
{
    *digests = (const char *const *)w->fetched;
    return w->nfetched;
}

static void timer_closed(uv_handle_t *h)
{
    warm_t *w = h->data;
    if (--w->timers > 0)
        return;
    config_free(w->ccfg);
    free(w);
}

void warm_free(warm_t *w)
{
    if (!w)
        return;
    while (w->gets) {
        get_t *g = w->gets;
        w->gets = g->next;
        upreq_cancel(g->up);
        free(g->body);
        free(g);
    }
    upstream_destroy(w->client);
    reset_ref(w);
    for (size_t i = 0; i < w->nfetched; i++)
        free(w->fetched[i]);
    free(w->fetched);
    w->step.data = w->retry.data = w;
    uv_close((uv_handle_t *)&w->step, timer_closed);
    uv_close((uv_handle_t *)&w->retry, timer_closed);
}
