/* The listings: tags/list (from the upstream, sorted and paginated here, or from the tags winch
 * has seen when the upstream cannot answer), _catalog (the repositories winch has cached) and
 * referrers (passed through from the upstream). */
#include "proxy/lists.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/sbuf.h"
#include "policy/policy.h"
#include "proxy/access.h"
#include "proxy/fetch.h"
#include "proxy/reply.h"

#define CATALOG_DEFAULT_N 100
#define CATALOG_MAX_N 1000
#define REFERRERS_MAX_BYTES (4u << 20)

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

static int add_stored_pin(void *arg, const char *upstream, const char *repo, const char *tag,
                          const cache_pin_t *pin)
{
    (void)upstream;
    (void)repo;
    (void)pin;
    return json_array_append_new(arg, json_string(tag)) < 0;
}

/* Pinned tags are tags of the repository for every client, including aliases the upstream does
 * not have (winch pin acme/app:production sha256:...). */
static void add_pinned_tags(call_t *c, json_t *tags)
{
    const policy_t *p = c->env->policy;
    int rule = policy_match(p, c->route.upstream->name, c->route.name);
    if (rule >= 0) {
        const config_policy_rule_t *r = policy_rule(p, (size_t)rule);
        for (size_t i = 0; i < r->n_pins; i++)
            json_array_append_new(tags, json_string(r->pins[i].tag));
    }
    if (cache_pins_list(c->env->cache, c->route.upstream->name, c->route.name, add_stored_pin,
                        tags) < 0)
        LOG_WARN("req=%llu listing the stored pins of %s failed",
                 (unsigned long long)req_id(c->req), c->route.name);
}

static void tags_reply(call_t *c, json_t *root)
{
    json_t *tags = json_object_get(root, "tags");
    if (!json_is_array(tags)) {
        /* distribution says "tags": null for a repository without tags. */
        tags = json_array();
        if (!tags || json_object_set_new(root, "tags", tags) < 0) {
            reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
            return;
        }
    }
    add_pinned_tags(c, tags);
    size_t n = json_array_size(tags);
    const char **list = calloc(n ? n : 1, sizeof *list);
    if (!list) {
        reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *t = json_string_value(json_array_get(tags, i));
        if (t && ref_tag_valid(t, strlen(t)))
            list[k++] = t;
    }
    qsort(list, k, sizeof *list, cmp_str);
    /* A pinned tag the upstream has too is listed once. */
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || strcmp(list[u - 1], list[i]) != 0)
            list[u++] = list[i];
    k = u;
    /* Apply last (exclusive) and n. */
    size_t start = 0;
    if (c->route.last[0]) {
        while (start < k && strcmp(list[start], c->route.last) <= 0)
            start++;
    }
    size_t count = k - start;
    bool more = false;
    if (c->route.n >= 0 && (size_t)c->route.n < count) {
        count = (size_t)c->route.n;
        more = count > 0;
    }
    size_t cap = 64 + strlen(c->route.name) * 2;
    for (size_t i = start; i < start + count; i++)
        cap += strlen(list[i]) + 4;
    char *body = malloc(cap);
    if (!body) {
        free(list);
        reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    sbuf_t b;
    sbuf_init(&b, body, cap);
    sbuf_puts(&b, "{\"name\":\"");
    sbuf_json_escape(&b, c->route.name, strlen(c->route.name));
    sbuf_puts(&b, "\",\"tags\":[");
    for (size_t i = start; i < start + count; i++) {
        if (i > start)
            sbuf_add(&b, ",", 1);
        sbuf_add(&b, "\"", 1);
        sbuf_puts(&b, list[i]);
        sbuf_add(&b, "\"", 1);
    }
    sbuf_puts(&b, "]}");
    reply_begin(c, 200);
    resp_header(c->req, "Content-Type", "application/json; charset=utf-8");
    if (more)
        resp_header(c->req, "Link", "<%.*s?n=%ld&last=%s>; rel=\"next\"",
                    (int)tags_path_len(req_target(c->req)), req_target(c->req), c->route.n,
                    list[start + count - 1]);
    free(list);
    resp_send(c->req, b.len, body, b.len, true);
}

static int collect_tag(void *arg, const char *tag, const char *digest)
{
    (void)digest;
    return json_array_append_new(arg, json_string(tag)) < 0;
}

/* The upstream cannot list tags (down, failing, rate-limited): list the ones winch has seen,
 * as distribution allows a mirror to do. Returns false when there are none to show. */
static bool tags_from_cache(call_t *c)
{
    json_t *root = json_object();
    json_t *tags = json_array();
    if (!root || !tags || json_object_set_new(root, "tags", tags) < 0) {
        json_decref(root);
        return false;
    }
    if (cache_tags_each(c->env->cache, c->route.upstream->name, c->route.name, collect_tag, tags) <
            0 ||
        json_array_size(tags) == 0) {
        json_decref(root);
        return false;
    }
    c->cache_status = "stale";
    tags_reply(c, root);
    json_decref(root);
    return true;
}

static void on_tags_fetched(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                            size_t len)
{
    (void)ctx;
    if (err || status != 200) {
        free(body);
        if (status != 404 && tags_from_cache(c)) {
            LOG_WARN("req=%llu upstream %s failed (status %d, %s); listing cached tags",
                     (unsigned long long)req_id(c->req), c->route.upstream->name, status,
                     err_str(err));
            return;
        }
        reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                               OCI_NAME_UNKNOWN);
        return;
    }
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    free(body);
    if (!json_is_object(root)) {
        json_decref(root);
        reply_failure(c, WE_UPSTREAM, OCI_NAME_UNKNOWN);
        return;
    }
    c->cache_status = "upstream";
    tags_reply(c, root);
    json_decref(root);
}

void lists_tags(call_t *c)
{
    char path[REF_NAME_MAX + 300];
    fetch_path(c, "tags/list", NULL, path, sizeof path);
    int err = fetch_start(c, "GET", path, "application/json", c->env->cfg->max_tags_list_bytes,
                          on_tags_fetched, NULL, NULL);
    if (err < 0 && !tags_from_cache(c))
        reply_failure(c, err, OCI_NAME_UNKNOWN);
}

/* ---- _catalog -------------------------------------------------------------------------- */

typedef struct catalog_walk {
    const call_t *c;
    sbuf_t *b;
    long want;
    long got;
    bool more;
    char last[REF_NAME_MAX + 1];
} catalog_walk_t;

/* A repository the policy denies (enforced, not audited) is not listed: its name is as much
 * its content as its tags are. */
static bool catalog_denied(const call_t *c, const char *repo)
{
    policy_request_t pr = {
        .upstream = c->route.upstream->name,
        .repo = repo,
        .object = POLICY_TAGS,
        .now_ms = policy_now_ms(c->env),
    };
    policy_decision_t d;
    policy_decide(c->env->policy, &pr, &d);
    return d.verdict == POLICY_DENY;
}

static int catalog_visit(void *arg, const char *repo)
{
    catalog_walk_t *w = arg;
    /* Only what the client may read (client authentication) and the policy does not deny;
     * the rest is not there. */
    if (!access_may_read(w->c->env->access, w->c, w->c->route.upstream->name, repo) ||
        catalog_denied(w->c, repo))
        return 0;
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

void lists_catalog(call_t *c)
{
    long want = c->route.n < 0 ? CATALOG_DEFAULT_N : c->route.n;
    if (want > CATALOG_MAX_N)
        want = CATALOG_MAX_N;
    size_t cap = 64 + (size_t)want * (REF_NAME_MAX * 2 + 4);
    char *body = malloc(cap);
    if (!body) {
        reply_error(c, 0, OCI_UNKNOWN, "out of memory", NULL);
        return;
    }
    sbuf_t b;
    sbuf_init(&b, body, cap);
    sbuf_puts(&b, "{\"repositories\":[");
    catalog_walk_t w = {.c = c, .b = &b, .want = want};
    int err =
        cache_repos_each(c->env->cache, c->route.upstream->name, c->route.last, catalog_visit, &w);
    if (err < 0) {
        free(body);
        reply_failure(c, err, OCI_NAME_UNKNOWN);
        return;
    }
    sbuf_puts(&b, "]}");
    c->cache_status = "local";
    reply_begin(c, 200);
    resp_header(c->req, "Content-Type", "application/json; charset=utf-8");
    if (w.more) {
        if (c->route.ns_given)
            resp_header(c->req, "Link", "</v2/_catalog?ns=%s&n=%ld&last=%s>; rel=\"next\"",
                        c->route.ns, want, w.last);
        else
            resp_header(c->req, "Link", "</v2/_catalog?n=%ld&last=%s>; rel=\"next\"", want, w.last);
    }
    resp_send(c->req, b.len, body, b.len, true);
}

/* ---- referrers ------------------------------------------------------------------------- */

static void on_referrers_fetched(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                                 size_t len)
{
    (void)ctx;
    if (err || status != 200) {
        free(body);
        reply_upstream_failure(c, status, err, up ? upreq_header(up, "Retry-After") : NULL,
                               OCI_MANIFEST_UNKNOWN);
        return;
    }
    /* Only an index is relayed: whatever else the upstream (or a redirect) produced is not. */
    image_t *img = NULL;
    char why[160];
    if (image_parse(body, len, MT_OCI_INDEX, &img, why, sizeof why) != 0) {
        LOG_WARN("req=%llu upstream sent an invalid referrers index: %s",
                 (unsigned long long)req_id(c->req), why);
        free(body);
        reply_failure(c, WE_UPSTREAM, OCI_MANIFEST_UNKNOWN);
        return;
    }
    image_free(img);
    c->cache_status = "upstream";
    reply_begin(c, 200);
    resp_header(c->req, "Content-Type", "%s", MT_OCI_INDEX);
    const char *filt = upreq_header(up, "OCI-Filters-Applied");
    if (filt && strlen(filt) < 128 && !strpbrk(filt, "\r\n"))
        resp_header(c->req, "OCI-Filters-Applied", "%s", filt);
    resp_send(c->req, len, body, len, true);
}

void lists_referrers(call_t *c)
{
    char path[REF_NAME_MAX + 600];
    fetch_path(c, "referrers", c->route.ref, path, sizeof path);
    if (c->route.artifact_type[0]) {
        /* route.c allows only media-type characters; of those, '+' must be escaped in a
         * query or a Go registry reads it as a space. */
        sbuf_t b;
        sbuf_init(&b, path + strlen(path), sizeof path - strlen(path));
        sbuf_puts(&b, "?artifactType=");
        for (const char *p = c->route.artifact_type; *p; p++) {
            if (*p == '+')
                sbuf_puts(&b, "%2B");
            else
                sbuf_add(&b, p, 1);
        }
        if (b.overflow) {
            reply_error(c, 0, OCI_UNSUPPORTED, "artifactType too long", NULL);
            return;
        }
    }
    int err = fetch_start(c, "GET", path, MT_OCI_INDEX, REFERRERS_MAX_BYTES, on_referrers_fetched,
                          NULL, NULL);
    if (err < 0)
        reply_failure(c, err, OCI_MANIFEST_UNKNOWN);
}
