#include "proxy/reply.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/metrics.h"

#define ERRBODY_MAX 8192 /* policy refusals carry a rule's own message */
/* Retry-After of a 503 for a full or slow upstream queue: long enough for the queue to move,
 * short enough that a client that backs off is not idle for long. */
#define BUSY_RETRY_AFTER_S 5

/* The headers every registry answer carries. */
static void registry_headers(call_t *c)
{
    resp_header(c->req, "Docker-Distribution-API-Version", "registry/2.0");
    if (c->route.ns_given)
        resp_header(c->req, "OCI-Namespace", "%s", c->route.ns);
}

/* RFC 9211 Cache-Status for a manifest or blob answer: what the cache did for this request. */
static void cache_status_header(call_t *c)
{
    if (c->route.op != ROUTE_MANIFEST && c->route.op != ROUTE_BLOB)
        return;
    enum metrics_result r = metrics_result_of(c->cache_status);
    if (r == METRICS_MISS && c->joined)
        r = METRICS_COALESCED;
    const char *v;
    switch (r) {
    case METRICS_HIT:
        v = "hit";
        break;
    case METRICS_MISS:
        v = "fwd=miss; stored";
        break;
    case METRICS_COALESCED:
        v = "fwd=miss; collapsed";
        break;
    case METRICS_STALE:
        v = "fwd=stale; detail=served-stale";
        break;
    case METRICS_REVALIDATED:
        v = "fwd=stale; fwd-status=200; detail=revalidated";
        break;
    case METRICS_NEGATIVE:
        v = "hit; detail=negative";
        break;
    case METRICS_UPSTREAM:
        v = "fwd=miss";
        break;
    default:
        return;
    }
    /* The cache identifier is the node name, so a client behind a load balancer sees which
     * node answered (config node_name, a token: no quoting needed). */
    resp_header(c->req, "Cache-Status", "%s; %s", c->env->cfg->node_name, v);
}

void reply_begin(call_t *c, int status)
{
    resp_begin(c->req, status);
    registry_headers(c);
    cache_status_header(c);
}

void reply_error(call_t *c, int status, enum oci_code code, const char *message,
                 const char *detail_json)
{
    if (!resp_begun(c->req))
        reply_begin(c, status ? status : oci_status(code));
    resp_header(c->req, "Content-Type", "application/json; charset=utf-8");
    char *body = malloc(ERRBODY_MAX);
    size_t n = 0;
    if (body) {
        n = oci_error_json(body, ERRBODY_MAX, code, message, detail_json);
        if (n == 0)
            n = oci_error_json(body, ERRBODY_MAX, code, NULL, NULL);
    }
    if (c->cache_status == NULL || strcmp(c->cache_status, "-") == 0)
        c->cache_status = "error";
    resp_send(c->req, n, body, n, true);
}

void reply_denied(call_t *c, const char *message)
{
    char reason[RESP_REASON_MAX + 1];
    snprintf(reason, sizeof reason, "DENIED: %s", message);
    resp_begin_reason(c->req, 403, reason);
    registry_headers(c);
    c->cache_status = "policy";
    reply_error(c, 0, OCI_DENIED, message, NULL);
}

/* Retry-After is seconds or an HTTP date: pass on any short single-line value. */
static bool retry_after_ok(const char *v)
{
    return v && *v && strlen(v) < 64 && strpbrk(v, "\r\n") == NULL;
}

/* What the client hears for each way an upstream or the store can fail. */
static const struct {
    int err;
    enum oci_code code;
    const char *what; /* follows "upstream <name>"; NULL: the failure is winch's own */
} failures[] = {
    {WE_DENIED, OCI_DENIED, "denied access"},
    {WE_RATELIMIT, OCI_TOOMANYREQUESTS, "rate limit reached; retry later"},
    {WE_DOWN, OCI_UNAVAILABLE, "is down; retry later"},
    {-ETIMEDOUT, OCI_GATEWAY_TIMEOUT, "did not answer in time"},
    {WE_DIGEST, OCI_BAD_GATEWAY, "sent content that does not match its digest"},
    {WE_TOOBIG, OCI_BAD_GATEWAY, "sent a response over winch's size limit"},
    {WE_UPSTREAM, OCI_BAD_GATEWAY, "answered with an error"},
    {WE_TLS, OCI_BAD_GATEWAY, "failed the TLS handshake or certificate check"},
    {WE_BUSY, OCI_UNAVAILABLE, "is busy: too many requests are waiting for it; retry later"},
    {WE_FORBIDDEN, OCI_BAD_GATEWAY, "sent winch to an address it may not reach"},
    {WE_INDEX, OCI_UNKNOWN, NULL},
    {-ENOSPC, OCI_UNKNOWN, NULL},
    {-EIO, OCI_UNKNOWN, NULL},
};

void reply_failure(call_t *c, int err, enum oci_code notfound)
{
    const char *name = c->route.upstream ? c->route.upstream->name : "upstream";
    if (err == WE_NOTFOUND) {
        /* The upstream was asked and has no such thing: a miss, not an error of winch's. */
        if (c->cache_status == NULL || strcmp(c->cache_status, "-") == 0)
            c->cache_status = "miss";
        reply_error(c, 0, notfound,
                    notfound == OCI_BLOB_UNKNOWN   ? "blob unknown to registry"
                    : notfound == OCI_NAME_UNKNOWN ? "repository name not known to registry"
                                                   : "manifest unknown",
                    NULL);
        return;
    }
    if (err == WE_BUSY && !resp_begun(c->req)) {
        reply_begin(c, 503);
        resp_header(c->req, "Retry-After", "%d", BUSY_RETRY_AFTER_S);
    }
    if (err == WE_DOWN && !resp_begun(c->req)) {
        reply_begin(c, 503);
        resp_header(c->req, "Retry-After", "%u", health_retry_after_s(c->health));
    }
    if (err == WE_RATELIMIT && !resp_begun(c->req)) {
        /* A rate limit learned without the response at hand (a blob fill that failed): the
         * upstream's latest Retry-After. */
        upstream_ratelimit_t rl;
        upstream_ratelimit(c->up, &rl);
        reply_begin(c, 429);
        resp_header(c->req, "Retry-After", "%s", rl.retry_after[0] ? rl.retry_after : "60");
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
    reply_error(c, 0, code, msg, NULL);
}

void reply_upstream_failure(call_t *c, int status, int err, const char *retry_after,
                            enum oci_code notfound)
{
    if (status == 429) {
        reply_begin(c, 429);
        resp_header(c->req, "Retry-After", "%s", retry_after_ok(retry_after) ? retry_after : "60");
    }
    if (err == 0 && status != 0 && status != 200)
        err = fetch_status_err(status);
    if (err == 0)
        err = WE_UPSTREAM;
    reply_failure(c, err, notfound);
}
