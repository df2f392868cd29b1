/* Dispatch, the small routes (/v2/, tags/list, _catalog, referrers), and the pieces the
 * manifest and blob handlers share: the buffered upstream fetch and the mapping of upstream
 * failures to client answers. */
#include "proxy/handlers.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/sbuf.h"
#include "common/util.h"

#define CATALOG_DEFAULT_N 100
#define CATALOG_MAX_N 1000
#define REFERRERS_MAX_BYTES (4u << 20)

/* ---- Shared helpers --------------------------------------------------------------------- */

/* Retry-After is seconds or an HTTP date: pass on any short single-line value. */
static bool retry_after_ok(const char *v)
{
    return v && *v && strlen(v) < 64 && strpbrk(v, "\r\n") == NULL;
}

/* The upstream's latest Retry-After, for a rate limit learned without the response at hand. */
static const char *last_retry_after(req_t *r, upstream_ratelimit_t *rl)
{
    upstream_ratelimit(req_upstream(r), rl);
    return rl->retry_after[0] ? rl->retry_after : "60";
}

void upstream_path(req_t *r, const char *kind, const char *ref, char *out, size_t len)
{
    const config_upstream_t *u = r->route.upstream;
    snprintf(out, len, "%s/v2/%s/%s%s%s", u->base_path, r->route.name, kind, ref ? "/" : "",
             ref ? ref : "");
}

int upstream_status_err(int status)
{
    switch (status) {
    case 404:
        return WE_NOTFOUND;
    case 401:
    case 403:
        return WE_DENIED;
    case 429:
        return WE_RATELIMIT;
    default:
        return WE_UPSTREAM;
    }
}

/* What the client hears for each way an upstream or the store can fail. The texts name the
 * upstream as the client knows it, never its address or an errno. */
static const struct {
    int err;
    enum oci_code code;
    const char *what; /* follows "upstream <name>"; NULL: the failure is winch's own */
} failures[] = {
    {WE_DENIED, OCI_DENIED, "denied access"},
    {WE_RATELIMIT, OCI_TOOMANYREQUESTS, "rate limit reached; retry later"},
    {-ETIMEDOUT, OCI_GATEWAY_TIMEOUT, "did not answer in time"},
    {WE_DIGEST, OCI_BAD_GATEWAY, "sent content that does not match its digest"},
    {WE_TOOBIG, OCI_BAD_GATEWAY, "sent a response over winch's size limit"},
    {WE_UPSTREAM, OCI_BAD_GATEWAY, "answered with an error"},
    {WE_TLS, OCI_BAD_GATEWAY, "failed the TLS handshake or certificate check"},
    {WE_INDEX, OCI_UNKNOWN, NULL},
    {-ENOSPC, OCI_UNKNOWN, NULL},
    {-EIO, OCI_UNKNOWN, NULL},
};

void reply_err(req_t *r, int err, enum oci_code notfound)
{
    const char *name = r->route.upstream ? r->route.upstream->name : "upstream";
    if (err == WE_NOTFOUND) {
        resp_error(r, 0, notfound,
                   notfound == OCI_BLOB_UNKNOWN   ? "blob unknown to registry"
                   : notfound == OCI_NAME_UNKNOWN ? "repository name not known to registry"
                                                  : "manifest unknown",
                   NULL);
        return;
    }
    if (err == WE_RATELIMIT && !resp_begun(r)) {
        upstream_ratelimit_t rl;
        resp_begin(r, 429);
        resp_header(r, "Retry-After", "%s", last_retry_after(r, &rl));
    }
    /* Anything else is a transport failure: the upstream is unreachable. */
    enum oci_code code = OCI_BAD_GATEWAY;
    const char *what = "is unreachable";
    for (size_t i = 0; i < ARRAY_SIZE(failures); i++) {
        if (failures[i].err == err) {
            code = failures[i].code;
            what = failures[i].what;
            break;
        }
    }
    char msg[256];
    if (what)
        snprintf(msg, sizeof msg, "upstream %s %s", name, what);
    else
        snprintf(msg, sizeof msg, "cache storage failure");
    resp_error(r, 0, code, msg, NULL);
}

void reply_upstream_failure(req_t *r, int status, int err, const char *retry_after,
                            enum oci_code notfound)
{
    if (status == 429) {
        resp_begin(r, 429);
        resp_header(r, "Retry-After", "%s", retry_after_ok(retry_after) ? retry_after : "60");
    }
    if (err == 0 && status != 0 && status != 200)
        err = upstream_status_err(status);
    if (err == 0)
        err = WE_UPSTREAM;
    reply_err(r, err, notfound);
}

bool etag_matches(const char *inm, const char *digest)
{
    if (!inm || !*inm)
        return false;
    if (strcmp(inm, "*") == 0)
        return true;
    size_t dl = strlen(digest);
    const char *p = inm;
    while ((p = strstr(p, digest)) != NULL) {
        /* Accept "digest", W/"digest" and a bare digest, delimited by quotes, commas or ends. */
        char before = p == inm ? ',' : p[-1];
        char after = p[dl];
        if ((before == '"' || before == ',' || before == ' ') &&
            (after == '"' || after == ',' || after == ' ' || after == '\0'))
            return true;
        p += dl;
    }
    return false;
}

/* ---- Shared buffered upstream fetches ------------------------------------------------------
 * Identical GETs and HEADs in flight at once share one upstream request (a flight); every
 * request waiting for it is answered from the same response. A rollout makes dozens of nodes
 * ask for the same manifests in the same second, and on Docker Hub each manifest GET counts
 * against the pull rate limit. The flight belongs to its waiters: when the last one goes away
 * (its client died), the upstream request is cancelled. */

typedef struct flight flight_t;

typedef struct waiter {
    req_t *r;
    flight_t *fl;
    ufetch_cb cb;
    void *ctx;
    void (*ctx_free)(void *);
    struct waiter *next;
} waiter_t;

struct flight {
    flight_t *next; /* in `flights` while in flight */
    upstream_t *u;
    upreq_t *up;
    waiter_t *waiters;
    char *buf;
    size_t len, cap, max;
    int status;
    bool head; /* HEAD: Content-Length describes what a GET would send, not a body */
    bool too_big;
    char key[]; /* "METHOD path\nAccept" */
};

static flight_t *flights;

static void flight_unlink(flight_t *fl)
{
    for (flight_t **p = &flights; *p; p = &(*p)->next) {
        if (*p == fl) {
            *p = fl->next;
            return;
        }
    }
}

static void flight_free(flight_t *fl)
{
    free(fl->buf);
    free(fl);
}

/* A waiting client went away. */
static void waiter_cancel(req_t *r)
{
    waiter_t *w = r->op;
    flight_t *fl = w->fl;
    r->op = NULL;
    for (waiter_t **p = &fl->waiters; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    if (w->ctx_free)
        w->ctx_free(w->ctx);
    free(w);
    if (!fl->waiters) {
        flight_unlink(fl);
        upreq_cancel(fl->up);
        flight_free(fl);
    }
}

static void fl_on_headers(upreq_t *up, void *arg, int status)
{
    flight_t *fl = arg;
    fl->status = status;
    uint64_t cl = upreq_content_length(up);
    if (!fl->head && status == 200 && cl != UINT64_MAX && cl > fl->max)
        fl->too_big = true;
}

static void fl_on_body(upreq_t *up, void *arg, const char *data, size_t len)
{
    flight_t *fl = arg;
    (void)up;
    if (fl->too_big)
        return;
    /* Error bodies are read but not kept beyond a small bound: they are never relayed. */
    size_t max = fl->status == 200 ? fl->max : 4096;
    if (len > max - fl->len) {
        if (fl->status == 200)
            fl->too_big = true;
        return;
    }
    if (fl->len + len + 1 > fl->cap) {
        size_t cap = fl->cap ? fl->cap : 4096;
        while (cap < fl->len + len + 1)
            cap *= 2;
        char *nb = realloc(fl->buf, cap);
        if (!nb) {
            fl->too_big = true;
            return;
        }
        fl->buf = nb;
        fl->cap = cap;
    }
    memcpy(fl->buf + fl->len, data, len);
    fl->len += len;
}

static void fl_on_done(upreq_t *up, void *arg, int err)
{
    flight_t *fl = arg;
    /* Out of the list first: a waiter's callback that asks again starts a new flight. */
    flight_unlink(fl);
    waiter_t *ws = fl->waiters;
    fl->waiters = NULL;
    for (waiter_t *w = ws; w; w = w->next) {
        w->r->cancel = NULL;
        w->r->op = NULL;
    }
    if (err == 0 && fl->too_big)
        err = WE_TOOBIG;
    bool ok = err == 0 && fl->status == 200;
    while (ws) {
        waiter_t *w = ws;
        ws = w->next;
        char *body = NULL;
        size_t len = 0;
        if (ok) {
            /* The last waiter takes the buffer; the others get copies. */
            if (!ws && fl->buf) {
                body = fl->buf;
                fl->buf = NULL;
            } else {
                body = malloc(fl->len + 1);
                if (body && fl->len)
                    memcpy(body, fl->buf, fl->len);
            }
            if (!body) {
                err = -ENOMEM;
                ok = false;
            } else {
                body[fl->len] = '\0';
                len = fl->len;
            }
        }
        w->cb(w->r, w->ctx, fl->status, ok ? 0 : err, up, body, len);
        free(w);
    }
    flight_free(fl);
}

static const upreq_cbs_t flight_cbs = {
    .on_headers = fl_on_headers,
    .on_body = fl_on_body,
    .on_done = fl_on_done,
};

int ufetch_start(req_t *r, const char *method, const char *path, const char *accept, size_t max,
                 ufetch_cb cb, void *ctx, void (*ctx_free)(void *))
{
    upstream_t *u = req_upstream(r);
    char key[REF_NAME_MAX + 1024];
    int kl = snprintf(key, sizeof key, "%s %s\n%s", method, path, accept ? accept : "");
    if (kl < 0 || (size_t)kl >= sizeof key)
        return WE_TOOBIG;
    waiter_t *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->r = r;
    w->cb = cb;
    w->ctx = ctx;
    w->ctx_free = ctx_free;
    flight_t *fl = flights;
    while (fl && !(fl->u == u && fl->max == max && strcmp(fl->key, key) == 0))
        fl = fl->next;
    if (!fl) {
        fl = calloc(1, sizeof *fl + (size_t)kl + 1);
        if (!fl) {
            free(w);
            return -ENOMEM;
        }
        memcpy(fl->key, key, (size_t)kl + 1);
        fl->u = u;
        fl->max = max;
        fl->head = strcmp(method, "HEAD") == 0;
        char acc[512];
        const char *hdrs[2] = {NULL, NULL};
        if (accept) {
            snprintf(acc, sizeof acc, "Accept: %s", accept);
            hdrs[0] = acc;
        }
        int err = upreq_start(&fl->up, u, method, path, hdrs, &flight_cbs, fl);
        if (err < 0) {
            free(fl);
            free(w);
            return err;
        }
        fl->next = flights;
        flights = fl;
    } else {
        LOG_DEBUG("req=%llu joins the upstream %s in flight", (unsigned long long)r->id, method);
    }
    w->fl = fl;
    w->next = fl->waiters;
    fl->waiters = w;
    r->op = w;
    r->cancel = waiter_cancel;
    return 0;
}

/* ---- /v2/ ------------------------------------------------------------------------------ */

static void handle_ping(req_t *r)
{
    static char body[] = "{}";
    r->cache_status = "local";
    resp_begin(r, 200);
    resp_header(r, "Content-Type", "application/json; charset=utf-8");
    resp_send(r, 2, body, 2, false);
}

/* ---- tags/list ------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The client-visible path of this repository's tags list, for the Link header: the target up
 * to and including "/tags/list". */
static size_t tags_path_len(const char *target)
{
    const char *q = strchr(target, '?');
    return q ? (size_t)(q - target) : strlen(target);
}

static void tags_reply(req_t *r, json_t *root)
{
    json_t *tags = json_object_get(root, "tags");
    size_t n = json_is_array(tags) ? json_array_size(tags) : 0;
    const char **list = calloc(n ? n : 1, sizeof *list);
    if (!list) {
        resp_error(r, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *t = json_string_value(json_array_get(tags, i));
        if (t && ref_tag_valid(t, strlen(t)))
            list[k++] = t;
    }
    qsort(list, k, sizeof *list, cmp_str);
    /* Apply last (exclusive) and n. */
    size_t start = 0;
    if (r->route.last[0]) {
        while (start < k && strcmp(list[start], r->route.last) <= 0)
            start++;
    }
    size_t count = k - start;
    bool more = false;
    if (r->route.n >= 0 && (size_t)r->route.n < count) {
        count = (size_t)r->route.n;
        more = count > 0;
    }
    size_t cap = 64 + strlen(r->route.name) * 2;
    for (size_t i = start; i < start + count; i++)
        cap += strlen(list[i]) + 4;
    char *body = malloc(cap);
    if (!body) {
        free(list);
        resp_error(r, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    sbuf_t b;
    sbuf_init(&b, body, cap);
    sbuf_puts(&b, "{\"name\":\"");
    sbuf_json_escape(&b, r->route.name, strlen(r->route.name));
    sbuf_puts(&b, "\",\"tags\":[");
    for (size_t i = start; i < start + count; i++) {
        if (i > start)
            sbuf_add(&b, ",", 1);
        sbuf_add(&b, "\"", 1);
        sbuf_puts(&b, list[i]);
        sbuf_add(&b, "\"", 1);
    }
    sbuf_puts(&b, "]}");
    resp_begin(r, 200);
    resp_header(r, "Content-Type", "application/json; charset=utf-8");
    if (more)
        resp_header(r, "Link", "<%.*s?n=%ld&last=%s>; rel=\"next\"",
                    (int)tags_path_len(r->target), r->target, r->route.n,
                    list[start + count - 1]);
    free(list);
    resp_send(r, b.len, body, b.len, true);
}

static int collect_tag(void *arg, const char *tag, const char *digest)
{
    (void)digest;
    return json_array_append_new(arg, json_string(tag)) < 0;
}

/* The upstream cannot list tags (down, failing, rate-limited): list the ones winch has seen,
 * as distribution allows a mirror to do. Returns false when there are none to show. */
static bool tags_from_cache(req_t *r)
{
    json_t *root = json_object();
    json_t *tags = json_array();
    if (!root || !tags || json_object_set_new(root, "tags", tags) < 0) {
        json_decref(root);
        return false;
    }
    if (cache_tags_each(req_cache(r), r->route.upstream->name, r->route.name, collect_tag,
                        tags) < 0 ||
        json_array_size(tags) == 0) {
        json_decref(root);
        return false;
    }
    r->cache_status = "stale";
    tags_reply(r, root);
    json_decref(root);
    return true;
}

static void on_tags_fetched(req_t *r, void *ctx, int status, int err, upreq_t *up, char *body,
                            size_t len)
{
    (void)ctx;
    if (err || status != 200) {
        free(body);
        if (status != 404 && tags_from_cache(r)) {
            LOG_WARN("req=%llu upstream %s failed (status %d, %s); listing cached tags",
                     (unsigned long long)r->id, r->route.upstream->name, status, err_str(err));
            return;
        }
        reply_upstream_failure(r, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                               OCI_NAME_UNKNOWN);
        return;
    }
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    free(body);
    if (!json_is_object(root)) {
        json_decref(root);
        reply_err(r, WE_UPSTREAM, OCI_NAME_UNKNOWN);
        return;
    }
    r->cache_status = "upstream";
    tags_reply(r, root);
    json_decref(root);
}

static void handle_tags(req_t *r)
{
    char path[REF_NAME_MAX + 300];
    upstream_path(r, "tags/list", NULL, path, sizeof path);
    int err = ufetch_start(r, "GET", path, "application/json", req_config(r)->max_tags_list_bytes,
                           on_tags_fetched, NULL, NULL);
    if (err < 0)
        reply_err(r, err, OCI_NAME_UNKNOWN);
}

/* ---- _catalog -------------------------------------------------------------------------- */

typedef struct catalog_walk {
    sbuf_t *b;
    long want;
    long got;
    bool more;
    char last[REF_NAME_MAX + 1];
} catalog_walk_t;

static int catalog_visit(void *arg, const char *repo)
{
    catalog_walk_t *w = arg;
    if (w->got == w->want) {
        w->more = true;
        return 1;
    }
    if (w->got > 0)
        sbuf_add(w->b, ",", 1);
    sbuf_add(w->b, "\"", 1);
    sbuf_json_escape(w->b, repo, strlen(repo));
    sbuf_add(w->b, "\"", 1);
    snprintf(w->last, sizeof w->last, "%s", repo);
    w->got++;
    return 0;
}

static void handle_catalog(req_t *r)
{
    long want = r->route.n < 0 ? CATALOG_DEFAULT_N : r->route.n;
    if (want > CATALOG_MAX_N)
        want = CATALOG_MAX_N;
    size_t cap = 64 + (size_t)want * (REF_NAME_MAX * 2 + 4);
    char *body = malloc(cap);
    if (!body) {
        resp_error(r, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    sbuf_t b;
    sbuf_init(&b, body, cap);
    sbuf_puts(&b, "{\"repositories\":[");
    catalog_walk_t w = {.b = &b, .want = want};
    int err = cache_repos_each(req_cache(r), r->route.upstream->name, r->route.last, catalog_visit,
                               &w);
    if (err < 0) {
        free(body);
        reply_err(r, err, OCI_NAME_UNKNOWN);
        return;
    }
    sbuf_puts(&b, "]}");
    r->cache_status = "local";
    resp_begin(r, 200);
    resp_header(r, "Content-Type", "application/json; charset=utf-8");
    if (w.more) {
        if (r->route.ns_given)
            resp_header(r, "Link", "</v2/_catalog?ns=%s&n=%ld&last=%s>; rel=\"next\"",
                        r->route.ns, want, w.last);
        else
            resp_header(r, "Link", "</v2/_catalog?n=%ld&last=%s>; rel=\"next\"", want, w.last);
    }
    resp_send(r, b.len, body, b.len, true);
}

/* ---- referrers ------------------------------------------------------------------------- */

static void on_referrers_fetched(req_t *r, void *ctx, int status, int err, upreq_t *up,
                                 char *body, size_t len)
{
    (void)ctx;
    if (err || status != 200) {
        free(body);
        reply_upstream_failure(r, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                               OCI_MANIFEST_UNKNOWN);
        return;
    }
    r->cache_status = "upstream";
    resp_begin(r, 200);
    resp_header(r, "Content-Type", "%s", MT_OCI_INDEX);
    const char *filt = upreq_header(up, "OCI-Filters-Applied");
    if (filt && strlen(filt) < 128 && !strpbrk(filt, "\r\n"))
        resp_header(r, "OCI-Filters-Applied", "%s", filt);
    resp_send(r, len, body, len, true);
}

static void handle_referrers(req_t *r)
{
    char path[REF_NAME_MAX + 600];
    upstream_path(r, "referrers", r->route.ref, path, sizeof path);
    if (r->route.artifact_type[0]) {
        /* route.c allows only media-type characters; of those, '+' must be escaped in a
         * query or a Go registry reads it as a space. */
        sbuf_t b;
        sbuf_init(&b, path + strlen(path), sizeof path - strlen(path));
        sbuf_puts(&b, "?artifactType=");
        for (const char *p = r->route.artifact_type; *p; p++) {
            if (*p == '+')
                sbuf_puts(&b, "%2B");
            else
                sbuf_add(&b, p, 1);
        }
        if (b.overflow) {
            resp_error(r, 0, OCI_UNSUPPORTED, "artifactType too long", NULL);
            return;
        }
    }
    int err = ufetch_start(r, "GET", path, MT_OCI_INDEX, REFERRERS_MAX_BYTES, on_referrers_fetched,
                           NULL, NULL);
    if (err < 0)
        reply_err(r, err, OCI_MANIFEST_UNKNOWN);
}

/* ---- Dispatch -------------------------------------------------------------------------- */

void handlers_dispatch(req_t *r)
{
    switch (r->route.op) {
    case ROUTE_PING:
        handle_ping(r);
        return;
    case ROUTE_MANIFEST:
        handle_manifest(r);
        return;
    case ROUTE_BLOB:
        handle_blob(r);
        return;
    case ROUTE_TAGS:
        handle_tags(r);
        return;
    case ROUTE_CATALOG:
        handle_catalog(r);
        return;
    case ROUTE_REFERRERS:
        handle_referrers(r);
        return;
    }
    resp_error(r, 0, OCI_UNSUPPORTED, "unsupported operation", NULL);
}

void handlers_shutdown(void)
{
    blob_shutdown();
}
