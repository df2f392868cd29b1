/* The application context (app.h): what a running winch owns, and the path of every request
 * from the server to a handler:
 *
 *   server (HTTP/1.1) --on_request--> app: registry headers, route, policy --> handler
 *   handler answers through reply.c / resp_* --> server --on_complete--> app: access log
 *
 * Rooms (proxy/): app.c (this), route.c (target -> operation, upstream choice), oci.c (error
 * bodies, Accept negotiation), reply.c (answers in registry terms), fetch.c (shared buffered
 * upstream fetches), manifest.c, blob.c, lists.c (the handlers), upstream*.c (the upstream
 * client), server.c and conn.c (HTTP/1.1 and sockets), tls.c, url.c, auth.c, http.c. The
 * arrows and the reasons for them: docs/architecture.md.
 */
#include "proxy/app.h"

#include "proxy/accesslog.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/flight.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/topk.h"
#include "common/util.h"
#include "policy/policy.h"
#include "proxy/access.h"
#include "proxy/blob.h"
#include "proxy/call.h"
#include "proxy/grouplisten.h"
#include "proxy/health.h"
#include "proxy/lists.h"
#include "proxy/manifest.h"
#include "proxy/metrics.h"
#include "proxy/negcache.h"
#include "proxy/oci.h"
#include "proxy/ops.h"
#include "proxy/platforms.h"
#include "proxy/prefetch.h"
#include "proxy/producer.h"
#include "proxy/reply.h"
#include "proxy/retention.h"
#include "proxy/revalidate.h"
#include "proxy/sdnotify.h"
#include "proxy/server.h"
#include "proxy/tls.h"
#include "proxy/upstream.h"

/* Upstream 404s remembered at once (negcache.h): a few thousand keys of ~100 bytes. */
#define APP_NEGCACHE_MAX 4096
/* The status page's top images by bytes: a space-saving table (common/topk.h) of this many
 * UPSTREAM/REPOSITORY keys, ~0.5 KiB each; the page shows the first ten. A count is high by at
 * most (all bytes counted) / 256, and only once the table was full and replaced an entry. */
#define APP_TOP_BYTES 256
#define APP_TOP_KEY_MAX (255 + 1 + REF_NAME_MAX)

struct app {
    uv_loop_t *loop;
    const config_t *cfg;
    cache_t *cache;
    upstream_t *upstreams[CONFIG_MAX_UPSTREAMS];
    health_t *health[CONFIG_MAX_UPSTREAMS]; /* one breaker per upstream client */
    flight_table_t *fetches;
    revalidator_t *revalidator;
    blob_producers_t *producers;
    negcache_t *neg; /* upstream 404s, remembered briefly */
    prefetcher_t *prefetch;
    policy_t *policy;
    retention_t *retention;
    access_t *access; /* client authentication; NULL when off */
    server_t *server;
    SSL_CTX *tls_ctx;       /* the TLS listener's, NULL when none */
    int admin_li;           /* the admin listener's index (req_listener), -1 when none */
    grouplisten_t *glisten; /* client groups' own listeners */
    metrics_t *metrics;
    topk_t *top_bytes; /* bytes served per UPSTREAM/REPOSITORY, heaviest kept (status page) */
    ops_env_t ops;     /* what /metrics and /readyz read */
    call_env_t env;
    bool shut;
};

/* ---- Requests -------------------------------------------------------------------------- */

static void handle_ping(call_t *c)
{
    static char body[] = "{}";
    c->cache_status = "local";
    reply_begin(c, 200);
    resp_header(c->req, "Content-Type", "application/json; charset=utf-8");
    resp_send(c->req, 2, body, 2, false);
}

/* The registry headers a handler may need, read once. */
static void read_headers(call_t *c)
{
    req_t *r = c->req;
    for (const char *v = req_header(r, "Accept"); v; v = req_header_next(r, "Accept", v))
        c->accept = oci_accept_parse(c->accept, v, strlen(v));
    const char *range = req_header(r, "Range");
    if (range)
        http_range_parse(range, &c->range);
    c->if_none_match = req_header(r, "If-None-Match");
}

/* Answers what the server could not parse (400 malformed, 414, 431). */
static void answer_bad(call_t *c, int status)
{
    switch (status) {
    case 414:
        reply_error(c, 414, OCI_NAME_INVALID, "request target too long", NULL);
        return;
    case 431:
        reply_error(c, 431, OCI_UNKNOWN, "request header fields too large", NULL);
        return;
    case 503:
        reply_error(c, 503, OCI_UNAVAILABLE, "server busy: too many requests in progress", NULL);
        return;
    default:
        /* Not an error of the client's HTTP: it tried TLS (counted as neither hit nor error). */
        if (req_tls_hello(c->req))
            c->cache_status = "none";
        reply_error(c, 400, OCI_UNKNOWN, "malformed HTTP request", NULL);
        return;
    }
}

/* Repository-level policy for what is not a manifest (blobs, tags/list, referrers): a denied
 * repository is denied for all of it. Manifests are decided in manifest.c, in stages. */
static bool policy_allows(app_t *a, call_t *c)
{
    enum policy_object obj;
    if (!c->route.upstream)
        return true;
    switch (c->route.op) {
    case ROUTE_BLOB:
        obj = POLICY_BLOB;
        break;
    case ROUTE_TAGS:
        obj = POLICY_TAGS;
        break;
    case ROUTE_REFERRERS:
        obj = POLICY_REFERRERS;
        break;
    default:
        return true;
    }
    policy_request_t pr = {
        .upstream = c->route.upstream->name,
        .repo = c->route.name,
        .object = obj,
        .digest = obj == POLICY_TAGS ? NULL : c->route.ref,
        .now_ms = policy_now_ms(&a->env),
    };
    policy_decision_t d;
    policy_decide(a->policy, &pr, &d);
    if (policy_decision_notable(&d)) {
        char line[POLICY_MSG_MAX + 256];
        policy_describe(&d, line, sizeof line);
        LOG_INFO("req=%llu %s", (unsigned long long)req_id(c->req), line);
    }
    if (d.verdict == POLICY_ALLOW)
        return true;
    reply_denied(c, d.message);
    return false;
}

/* A routed call the client may make (access.c admitted it, at once or after a password check):
 * the policy, then its handler. */
static void dispatch(call_t *c)
{
    app_t *a = container_of(c->env, app_t, env); /* env is the app's own */
    if (!policy_allows(a, c))
        return;
    switch (c->route.op) {
    case ROUTE_PING:
        handle_ping(c);
        return;
    case ROUTE_MANIFEST:
        manifest_handle(c);
        return;
    case ROUTE_BLOB:
        blob_handle(c);
        return;
    case ROUTE_TAGS:
        lists_tags(c);
        return;
    case ROUTE_CATALOG:
        lists_catalog(c);
        return;
    case ROUTE_REFERRERS:
        lists_referrers(c);
        return;
    }
    reply_error(c, 0, OCI_UNSUPPORTED, "unsupported operation", NULL);
}

static bool admin_request(const app_t *a, const req_t *r)
{
    return a->admin_li >= 0 && req_listener(r) == a->admin_li;
}

/* The operator's endpoints. The admin listener serves nothing else (404, 405 for methods
 * other than GET/HEAD); with one configured, the public listeners keep /metrics and the status
 * page only when public_metrics says so (health probes stay: load balancers use them). Returns
 * true when c was answered. */
static bool ops_intercept(call_t *c, const ops_env_t *e, enum ops_endpoint ep, bool get, bool admin)
{
    const config_t *cfg = c->env->cfg;
    if (!admin && ep == OPS_NONE)
        return false;
    c->mroute = METRICS_ROUTE_OPS;
    if (!admin && cfg->admin_listen_enabled && !cfg->public_metrics &&
        (ep == OPS_METRICS || ep == OPS_STATUS || ep == OPS_STATUS_JSON))
        ep = OPS_NONE;
    if (!get) {
        if (!admin)
            return false; /* the registry routes answer 405 as for any path */
        reply_error(c, 405, OCI_UNSUPPORTED, "the admin listener is read-only", NULL);
        return true;
    }
    ops_handle(c, e, ep); /* OPS_NONE: 404 */
    return true;
}

/* Who the client is (realip.h): the socket's peer, or, from a trusted proxy, the address its
 * X-Forwarded-For names. The header is not read from a head that did not parse whole (its last
 * value may be cut short, and a cut address is another address), nor kept past the request. */
static void find_client(const config_t *cfg, call_t *c, req_t *r)
{
    static const char xff[] = "X-Forwarded-For";
    const struct sockaddr_storage *peer = req_peer(r);
    enum realip_how how = REALIP_PEER;
    c->client = *peer;
    if (cfg->n_trusted_proxies && (!req_bad(r) || req_bad(r) == 503) &&
        realip_in(cfg->trusted_proxies, cfg->n_trusted_proxies, peer)) {
        /* The last REALIP_MAX_LINES lines, in order: the walk starts from the right. */
        const char *lines[REALIP_MAX_LINES];
        size_t total = 0, n = 0;
        for (const char *v = req_header_next(r, xff, NULL); v; v = req_header_next(r, xff, v))
            total++;
        size_t skip = total > REALIP_MAX_LINES ? total - REALIP_MAX_LINES : 0;
        for (const char *v = req_header_next(r, xff, NULL); v; v = req_header_next(r, xff, v))
            if (skip > 0)
                skip--;
            else
                lines[n++] = v;
        how =
            realip_client(cfg->trusted_proxies, cfg->n_trusted_proxies, peer, lines, n, &c->client);
    }
    if (how == REALIP_PEER)
        snprintf(c->client_str, sizeof c->client_str, "%s", req_peer_str(r));
    else
        realip_format(&c->client, c->client_str, sizeof c->client_str);
    /* The access line names the proxy too (via=) when the client is someone else. */
    c->forwarded = strcmp(c->client_str, req_peer_str(r)) != 0;
    if (how == REALIP_GARBAGE)
        LOG_DEBUG("req=%llu X-Forwarded-For from %s holds something that is not an address: "
                  "the client is taken to be %s",
                  (unsigned long long)req_id(r), req_peer_str(r), c->client_str);
}

/* The client's group. A group's own listener decides for every request on it; elsewhere a
 * group's mirror URL (http://winch/edge), else the source address. A group's path prefix is
 * stripped and the rest routes like any /v2/ request. On a group listener another group's
 * prefix is refused (a client configured for two groups at once is a mistake to show, not to
 * settle silently). Returns false when c was answered. */
static bool find_group(app_t *a, call_t *c, const char **target, size_t *tlen)
{
    size_t plen = 0;
    const config_client_group_t *lg = grouplisten_group(a->glisten, req_listener(c->req));
    const config_client_group_t *pg = platforms_group_by_path(a->cfg, *target, *tlen, &plen);
    if (lg && pg && pg != lg) {
        char msg[256];
        c->group = lg; /* named in the access line */
        snprintf(msg, sizeof msg,
                 "path prefix %s is client group %s's; this listener is client group %s's",
                 pg->path_prefix, pg->name, lg->name);
        reply_error(c, 404, OCI_UNSUPPORTED, msg, NULL);
        return false;
    }
    c->group = lg ? lg : pg ? pg : platforms_group_by_peer(a->cfg, call_client(c));
    if (pg) {
        *target += plen;
        *tlen -= plen;
    }
    return true;
}

static void on_request(req_t *r, void *arg)
{
    app_t *a = arg;
    call_t *c = req_data(r);
    c->req = r;
    c->env = &a->env;
    c->cache_status = "-";
    c->mroute = METRICS_ROUTE_OTHER;
    find_client(a->cfg, c, r);
    if (req_bad(r)) {
        answer_bad(c, req_bad(r));
        return;
    }
    read_headers(c);
    enum route_method m = req_is_get(r) ? ROUTE_GET : req_is_head(r) ? ROUTE_HEAD : ROUTE_OTHER;
    enum ops_endpoint ep = ops_route(req_target(r), req_target_len(r));
    /* The admin listener answers everything itself (client authentication is the registry's). */
    bool admin = admin_request(a, r);
    if (admin && ops_intercept(c, &a->ops, ep, m != ROUTE_OTHER, true))
        return;
    if (access_intercept(a->access, c))
        return;
    if (ops_intercept(c, &a->ops, ep, m != ROUTE_OTHER, false))
        return;
    route_error_t rerr;
    const char *target = req_target(r);
    size_t tlen = req_target_len(r);
    if (!find_group(a, c, &target, &tlen))
        return;
    if (route_parse(&c->route, a->cfg, m, target, tlen, &rerr) != 0) {
        reply_error(c, rerr.status, rerr.code, rerr.message, NULL);
        return;
    }
    if (c->route.upstream) {
        ptrdiff_t i = c->route.upstream - a->cfg->upstreams;
        c->up = a->upstreams[i];
        c->health = a->health[i];
    }
    static const uint8_t mroutes[] = {
        [ROUTE_PING] = METRICS_ROUTE_PING,           [ROUTE_MANIFEST] = METRICS_ROUTE_MANIFEST,
        [ROUTE_BLOB] = METRICS_ROUTE_BLOB,           [ROUTE_TAGS] = METRICS_ROUTE_TAGS,
        [ROUTE_REFERRERS] = METRICS_ROUTE_REFERRERS, [ROUTE_CATALOG] = METRICS_ROUTE_CATALOG,
    };
    c->mroute = mroutes[c->route.op];
    /* Who the client is and whether it may read this repository, before the policy (dispatch)
     * or any cache or upstream look: an answer never tells a stranger what exists. */
    if (access_admit(a->access, c, dispatch))
        dispatch(c);
}

/* The request's counters: route, status, cache result, bytes by source. A miss that joined
 * another request's upstream fetch is counted as coalesced. */
static void count_request(app_t *a, call_t *c, req_t *r)
{
    if (c->fill_waiter)
        metrics_fill_waiters(a->metrics, -1);
    enum metrics_result res = metrics_result_of(c->cache_status);
    if (res == METRICS_MISS && c->joined)
        res = METRICS_COALESCED;
    metrics_request(a->metrics, (enum metrics_route)c->mroute, req_status(r), res,
                    c->env && c->route.upstream ? call_upstream_ix(c) : -1, req_bytes_sent(r));
    /* Bytes per repository, for the status page's top images: every answer routed to one
     * (errors too: a refusal's body counts for the name asked; mroute names a repository route
     * only once route_parse accepted the target). The table is bounded, so a flood of names
     * costs nothing but accuracy at the bottom of it. */
    enum metrics_route mr = (enum metrics_route)c->mroute;
    if (c->env && c->route.upstream && c->route.name[0] && req_bytes_sent(r) > 0 &&
        (mr == METRICS_ROUTE_MANIFEST || mr == METRICS_ROUTE_BLOB || mr == METRICS_ROUTE_TAGS ||
         mr == METRICS_ROUTE_REFERRERS)) {
        char key[APP_TOP_KEY_MAX + 1];
        int n = snprintf(key, sizeof key, "%s/%s", c->route.upstream->name, c->route.name);
        if (n > 0)
            topk_add(a->top_bytes, key, strnlen(key, sizeof key), req_bytes_sent(r));
    }
}

static void on_complete(req_t *r, void *arg, enum req_outcome outcome)
{
    app_t *a = arg;
    call_t *c = req_data(r);
    if (outcome == REQ_GONE && c->cancel) {
        void (*cancel)(call_t *) = c->cancel;
        c->cancel = NULL;
        cancel(c);
    }
    count_request(a, c, r);
    if (log_threshold < WLOG_WARN || (outcome != REQ_ABORTED && log_threshold < WLOG_INFO))
        return;
    /* Everything the client sent is escaped: a log line never carries its control bytes. */
    char target[1024], ua[256];
    log_escape(target, sizeof target, req_target(r), req_target_len(r));
    const char *agent = req_header(r, "User-Agent");
    log_escape(ua, sizeof ua, agent ? agent : "", agent ? strlen(agent) : 0);
    if (outcome == REQ_ABORTED)
        LOG_WARN("req=%llu %s: response cut short after %llu body bytes",
                 (unsigned long long)req_id(r), target, (unsigned long long)req_bytes_sent(r));
    bool hello = req_bad(r) && req_tls_hello(r);
    char user[CALL_USER_MAX * 4 + 1];
    accesslog_entry_t e = {
        .id = req_id(r),
        .peer = call_client_str(c),
        .via = c->forwarded ? req_peer_str(r) : NULL,
        .node = a->cfg->node_name_set ? a->cfg->node_name : NULL,
        .group = c->group ? c->group->name : NULL,
        .method = req_method(r),
        .target = target[0] ? target : "-",
        .ua = ua,
        .user = access_log_user(c, user, sizeof user),
        .upstream = c->route.upstream ? c->route.upstream->name : "-",
        .cache = hello             ? "-"
                 : c->cache_status ? c->cache_status
                                   : "-",
        .status = req_status(r),
        .bytes = req_bytes_sent(r),
        .ms = req_duration_ms(r),
        .note = hello                 ? "TLS handshake on the plain listener: use http:// here"
                : outcome == REQ_GONE ? "client gone"
                                      : NULL,
    };
    accesslog_write(&e, a->cfg->log_json);
}

/* What the rest of the process may hold open besides client connections and their requests:
 * per upstream, its registry and one redirect origin (a blob CDN) with upstream_max_conns
 * sockets each, and as many fills (a temp file each) that may outlive their clients; and the
 * index, the listeners, libuv's own descriptors and stdio. */
static uint32_t reserve_fds(const config_t *cfg)
{
    uint32_t group_listeners = 0;
    for (size_t i = 0; i < cfg->n_client_groups; i++)
        group_listeners += cfg->client_groups[i].listen_host != NULL;
    return 64 + group_listeners + 4 * (uint32_t)cfg->n_upstreams * cfg->upstream_max_conns;
}

/* ---- Lifecycle ---------------------------------------------------------------------------- */

int64_t app_test_clock_offset_ms(void)
{
    const char *v = getenv("WINCH_TEST_CLOCK_OFFSET_S");
    if (!v || !*v)
        return 0;
    char *end;
    errno = 0;
    long long s = strtoll(v, &end, 10);
    if (errno || *end || s < -3153600000LL || s > 3153600000LL) {
        LOG_ERROR("WINCH_TEST_CLOCK_OFFSET_S=%s is not a number of seconds (|N| <= 100 years); "
                  "ignored",
                  v);
        return 0;
    }
    LOG_WARN("TEST CLOCK: the policy sees the time %+llds from now (WINCH_TEST_CLOCK_OFFSET_S); "
             "never set it in production",
             s);
    return s * 1000;
}

/* Says at start what the policy holds, and which rules can never decide anything. */
static void log_policy(const policy_t *p)
{
    size_t n = policy_rules(p);
    if (n)
        LOG_INFO("policy: %zu rule%s", n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++) {
        int k = policy_shadowed_by(p, i);
        if (k >= 0)
            LOG_WARN("policy rule %zu (%s) is never used: rule %d (%s) comes first and matches "
                     "everything it matches",
                     i + 1, policy_rule(p, i)->match, k + 1, policy_rule(p, (size_t)k)->match);
    }
}

int app_create(app_t **out, uv_loop_t *loop, const config_t *cfg, cache_t *cache, char *err,
               size_t errlen)
{
    int rc = -ENOMEM;
    app_t *a = calloc(1, sizeof *a);
    if (!a)
        goto fail;
    a->loop = loop;
    a->cfg = cfg;
    a->cache = cache;
    a->admin_li = -1;
    if ((rc = flight_table_create(&a->fetches)) < 0 ||
        (rc = blob_producers_create(&a->producers)) < 0 ||
        (rc = revalidator_create(&a->revalidator)) < 0 ||
        (rc = negcache_create(&a->neg, APP_NEGCACHE_MAX)) < 0 ||
        (rc = grouplisten_create(&a->glisten)) < 0 ||
        (rc = prefetcher_create(&a->prefetch, cfg)) < 0)
        goto fail;
    if ((rc = metrics_create(&a->metrics, cfg->n_upstreams, time_wall_ms())) < 0 ||
        (rc = topk_create(&a->top_bytes, APP_TOP_BYTES, APP_TOP_KEY_MAX)) < 0)
        goto fail;
    if ((rc = policy_create(&a->policy, cfg, err, errlen)) < 0)
        goto fail_said;
    if ((rc = access_create(&a->access, loop, cfg, err, errlen)) < 0)
        goto fail_said;
    if ((rc = retention_create(&a->retention, loop, cfg, cache)) < 0)
        goto fail;
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        rc = upstream_create(&a->upstreams[i], loop, &cfg->upstreams[i], cfg);
        if (rc < 0)
            goto fail;
        if ((rc = health_create(&a->health[i], loop, a->upstreams[i], cfg)) < 0)
            goto fail;
    }
    server_opts_t so = {
        .loop = loop,
        .limits = {.header_timeout_ms = cfg->client_header_timeout_ms,
                   .idle_timeout_ms = cfg->client_idle_timeout_ms,
                   .max_connections = cfg->max_connections,
                   .max_header_bytes = cfg->max_header_bytes,
                   .max_connections_per_client = cfg->max_connections_per_client,
                   .reserve_fds = reserve_fds(cfg)},
        .on_request = on_request,
        .on_complete = on_complete,
        .arg = a,
        .data_size = sizeof(call_t),
    };
    if ((rc = server_create(&a->server, &so)) < 0)
        goto fail;
    server_plan_t plan;
    server_plan(a->server, &plan);
    char per[48] = "no limit per client address";
    if (cfg->max_connections_per_client)
        snprintf(per, sizeof per, "%u per client address", cfg->max_connections_per_client);
    LOG_INFO("fd limit %llu: max_connections %u%s, %s; fd budget %u (one per connection, %d more "
             "per request in progress), %llu kept for the cache and upstreams",
             (unsigned long long)plan.nofile, plan.max_connections,
             plan.max_connections < cfg->max_connections ? " (lowered to fit the fd limit)" : "",
             per, plan.max_fds, SERVER_FDS_PER_REQUEST,
             (unsigned long long)(plan.nofile > plan.max_fds ? plan.nofile - plan.max_fds : 0));
    a->env = (call_env_t){
        .loop = loop,
        .cfg = cfg,
        .cache = cache,
        .upstreams = a->upstreams,
        .fetches = a->fetches,
        .producers = a->producers,
        .access = a->access,
        .neg = a->neg,
        .revalidator = a->revalidator,
        .retention = a->retention,
        .policy = a->policy,
        .prefetch = a->prefetch,
        .policy_clock_offset_ms = app_test_clock_offset_ms(),
        .metrics = a->metrics,
    };
    a->ops = (ops_env_t){
        .metrics = a->metrics,
        .top_bytes = a->top_bytes,
        .server = a->server,
        .retention = a->retention,
        .health = a->health,
        .upstreams = a->upstreams,
    };
    log_policy(a->policy);
    *out = a;
    return 0;
fail:
    snprintf(err, errlen, "%s", err_str(rc));
fail_said:
    app_destroy(a);
    return rc;
}

/* The admin listener, last: its bound address is logged here (always, whatever the level,
 * like the main listeners' line: scripts read ports from it). */
static int listen_admin(app_t *a, char *err, size_t errlen)
{
    const config_t *cfg = a->cfg;
    if (!cfg->admin_listen_enabled)
        return 0;
    char bound[96];
    int rc = server_listen(a->server, cfg->admin_listen_host, cfg->admin_listen_port, NULL, bound,
                           sizeof bound);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s:%u (admin_listen): %s", cfg->admin_listen_host,
                 (unsigned)cfg->admin_listen_port, err_str(rc));
        return rc;
    }
    a->admin_li = rc;
    log_write(WLOG_INFO, "admin listener on %s (/metrics, /healthz, /readyz, /_winch/)%s", bound,
              cfg->public_metrics ? "; public_metrics: /metrics and /_winch/ on the public "
                                    "listeners too"
                                  : "");
    return 0;
}

int app_listen(app_t *a, char *bound, char *tls_bound, size_t len, char *err, size_t errlen)
{
    const config_t *cfg = a->cfg;
    bound[0] = tls_bound[0] = '\0';
    int rc;
    if (cfg->listen_enabled) {
        rc = server_listen(a->server, cfg->listen_host, cfg->listen_port, NULL, bound, len);
        if (rc < 0) {
            snprintf(err, errlen, "cannot listen on %s:%u: %s", cfg->listen_host,
                     (unsigned)cfg->listen_port, err_str(rc));
            return rc;
        }
    }
    if (cfg->tls_listen_enabled) {
        rc = tls_server_ctx_new(cfg->tls_cert, cfg->tls_key, &a->tls_ctx, err, errlen);
        if (rc == 0 && cfg->auth && cfg->auth->client_ca)
            rc = tls_server_ctx_client_ca(a->tls_ctx, cfg->auth->client_ca,
                                          cfg->auth->require_client_cert, err, errlen);
        if (rc < 0)
            return rc;
        rc = server_listen(a->server, cfg->tls_listen_host, cfg->tls_listen_port, a->tls_ctx,
                           tls_bound, len);
        if (rc < 0) {
            snprintf(err, errlen, "cannot listen on %s:%u: %s", cfg->tls_listen_host,
                     (unsigned)cfg->tls_listen_port, err_str(rc));
            return rc;
        }
    }
    rc = listen_admin(a, err, errlen);
    if (rc < 0)
        return rc;
    rc = grouplisten_open(a->glisten, a->server, cfg, err, errlen);
    if (rc < 0)
        return rc;
    /* Listening: a systemd unit of Type=notify may start what depends on winch now. */
    int nrc = sdnotify_send("READY=1\nSTATUS=serving");
    if (nrc < 0)
        LOG_WARN("NOTIFY_SOCKET: cannot tell systemd winch is ready: %s", err_str(nrc));
    return 0;
}

static void close_upstreams(app_t *a)
{
    for (size_t i = 0; i < a->cfg->n_upstreams; i++) {
        health_stop(a->health[i]); /* its probe is a request of the client closed below */
        if (a->upstreams[i])
            upstream_destroy(a->upstreams[i]);
        a->upstreams[i] = NULL;
    }
}

void app_shutdown(app_t *a)
{
    if (a->shut)
        return;
    a->shut = true;
    sdnotify_send("STOPPING=1");
    server_shutdown(a->server);
    access_shutdown(a->access);
    prefetcher_cancel_all(a->prefetch);
    blob_producers_cancel_all(a->producers);
    revalidator_cancel_all(a->revalidator);
    retention_stop(a->retention);
    /* The last pulls counted reach the index while the loop drains. */
    cache_stats_flush(a->env.cache);
    /* Every request is finished or cancelled now, so the pools can go; their handles close
     * while the loop drains. */
    close_upstreams(a);
}

policy_t *app_set_policy(app_t *a, policy_t *p)
{
    policy_t *old = a->policy;
    a->policy = p;
    a->env.policy = p;
    log_policy(p);
    return old;
}

size_t app_groups_reloaded(app_t *a)
{
    return grouplisten_reload(a->glisten, a->cfg);
}

void app_credentials_changed(app_t *a, size_t i)
{
    if (i < CONFIG_MAX_UPSTREAMS && a->upstreams[i])
        upstream_credentials_changed(a->upstreams[i]);
}

void app_destroy(app_t *a)
{
    if (!a)
        return;
    prefetcher_cancel_all(a->prefetch); /* its fetches are requests of the clients closed next */
    close_upstreams(a);
    server_destroy(a->server);
    grouplisten_free(a->glisten);
    tls_ctx_free(a->tls_ctx); /* every TLS conn is closed by now */
    policy_free(a->policy);
    access_free(a->access);
    for (size_t i = 0; i < CONFIG_MAX_UPSTREAMS; i++)
        health_destroy(a->health[i]);
    revalidator_free(a->revalidator);
    retention_free(a->retention);
    prefetcher_free(a->prefetch);
    blob_producers_free(a->producers);
    negcache_free(a->neg);
    if (a->fetches && flight_table_count(a->fetches))
        LOG_ERROR("%zu upstream fetches still in flight at exit", flight_table_count(a->fetches));
    flight_table_free(a->fetches);
    metrics_free(a->metrics);
    topk_free(a->top_bytes);
    free(a);
}
