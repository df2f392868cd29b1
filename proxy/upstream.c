/* HTTP/1.1 client for one upstream registry: the public API (upstream.h). The client lives in
 * six files behind proxy/upstream_internal.h, which maps them and the request's states.
 *
 * Objects:
 * - upstream_t: one per configured upstream. Holds its origins (upstream_pool.c), the deferred
 *   list drained by a 0 ms timer (upstream_req.c), the token cache and the token flights
 *   (upstream_auth.c), and the last rate-limit headers (upstream_hops.c).
 * - upreq_t: one request as the caller sees it: upreq_start -> on_headers once -> on_body zero
 *   or more times -> on_done exactly once. It may travel several hops before the caller sees
 *   any answer (redirects, one answer to a 401: upstream_hops.c, upstream_auth.c).
 *
 * Calls from the caller never call back: upreq_start queues, upreq_cancel frees at once (or,
 * from inside a callback, once the parser returns), upreq_resume restarts delivery on a later
 * loop iteration.
 */
#include "proxy/upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "proxy/tls.h"
#include "proxy/upstream_internal.h"

static void on_deadline(uv_timer_t *t);

int upstream_create(upstream_t **out, uv_loop_t *loop, const config_upstream_t *ucfg,
                    const config_t *gcfg)
{
    int rc;
    upstream_t *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->loop = loop;
    u->ucfg = ucfg;
    u->gcfg = gcfg;
    u->rl.limit = u->rl.remaining = -1;
    u->conn_ready = wire_send;
    u->deadline_cb = on_deadline;
    origin_t *o = calloc(1, sizeof *o);
    if (!o) {
        rc = -ENOMEM;
        goto fail;
    }
    u->origins[0] = o;
    u->norigins = 1;
    rc = pool_origin_init(o, u, ucfg->tls, ucfg->host, ucfg->port);
    if (rc < 0)
        goto fail;
    o->primary = true;
    rc = auth_cache_create(&u->tokens, UP_MAX_TOKENS);
    if (rc == 0)
        rc = flight_table_create(&u->token_flights);
    if (rc < 0)
        goto fail;
    /* An https upstream's context is made (and its CA file checked) at start; an http
     * upstream gets one only if it ever redirects to an https origin (upstream_pool.c). */
    if (ucfg->tls) {
        char tls_err[512];
        rc = tls_client_ctx_for(ucfg, &u->tls_ctx, tls_err, sizeof tls_err);
        if (rc < 0) {
            LOG_ERROR("upstream %s: %s", ucfg->name, tls_err);
            goto fail;
        }
    }
    uv_timer_init(loop, &u->defer_timer);
    u->defer_timer.data = u;
    uv_timer_init(loop, &u->queue_timer);
    u->queue_timer.data = u;
    uv_timer_init(loop, &u->dl_timer);
    u->dl_timer.data = u;
    *out = u;
    return 0;
fail:
    flight_table_free(u->token_flights);
    auth_cache_free(u->tokens);
    free(u->origins[0]);
    free(u);
    return rc;
}

static void on_upstream_closed(uv_handle_t *h)
{
    upstream_t *u = h->data;
    if (--u->open_handles == 0)
        free(u);
}

/* Frees a request left over at destroy time, without callbacks. A token fetch's own request
 * takes its flight down with it: the requests waiting for that token are freed as it lands. */
static void abandon(upreq_t *r, const char *what)
{
    if (r->internal)
        upauth_abandon_fetch(r);
    else if (what)
        LOG_WARN("upstream %s: destroyed with a request %s", r->u->ucfg->name, what);
    req_free(r);
}

void upstream_credentials_changed(upstream_t *u)
{
    auth_cache_t *fresh = NULL;
    if (auth_cache_create(&fresh, UP_MAX_TOKENS) < 0) {
        LOG_WARN("upstream %s: out of memory; tokens of the old credentials kept until they "
                 "expire or are refused",
                 u->ucfg->name);
        return;
    }
    auth_cache_free(u->tokens);
    u->tokens = fresh;
}

void upstream_destroy(upstream_t *u)
{
    if (!u)
        return;
    u->destroying = true;
    /* Requests should all be finished; any left over are dropped without callbacks. Every
     * token flight has its fetch's request in one of these places. */
    for (int i = 0; i < u->norigins; i++) {
        origin_t *o = u->origins[i];
        for (int l = 0; l < UP_LANES; l++) {
            while (o->wait_head[l]) {
                upreq_t *r = o->wait_head[l];
                req_unlist(r);
                abandon(r, "still waiting");
            }
        }
    }
    while (u->defer_head) {
        upreq_t *r = u->defer_head;
        req_unlist(r);
        abandon(r, NULL);
    }
    for (int i = 0; i < u->norigins; i++) {
        origin_t *o = u->origins[i];
        while (o->conns) {
            upconn_t *uc = o->conns;
            upreq_t *r = pool_detach(uc);
            if (r)
                abandon(r, "in flight");
            pool_close(uc);
        }
    }
    for (int i = 0; i < u->norigins; i++)
        pool_origin_free(u->origins[i]);
    u->norigins = 0;
    flight_table_free(u->token_flights);
    u->token_flights = NULL;
    auth_cache_free(u->tokens);
    u->tokens = NULL;
    tls_ctx_free(u->tls_ctx); /* live SSL objects hold their own reference */
    u->tls_ctx = NULL;
    u->open_handles = 3;
    uv_close((uv_handle_t *)&u->defer_timer, on_upstream_closed);
    uv_close((uv_handle_t *)&u->queue_timer, on_upstream_closed);
    uv_close((uv_handle_t *)&u->dl_timer, on_upstream_closed);
}

const config_upstream_t *upstream_config(const upstream_t *u)
{
    return u->ucfg;
}

bool upstream_ratelimit(const upstream_t *u, upstream_ratelimit_t *out)
{
    *out = u->rl;
    return u->rl.known;
}

size_t upstream_waiting(const upstream_t *u, enum upreq_lane lane)
{
    return u->origins[0]->nwait[lane == UPREQ_BULK ? UPREQ_BULK : UPREQ_PRIORITY];
}

void upstream_test_set_addr_classifier(upstream_t *u, upstream_addr_class_fn fn)
{
    u->classify_hook = fn;
}

int upreq_start(upreq_t **out, upstream_t *u, const char *method, const char *path,
                const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg)
{
    return upreq_start_opts(out, u, method, path, extra_headers, cbs, arg, NULL);
}

/* True when the query q[0..n) has a parameter named ns. */
static bool has_ns(const char *q, size_t n)
{
    for (size_t i = 0; i + 3 <= n; i++)
        if ((i == 0 || q[i - 1] == '&') && memcmp(q + i, "ns=", 3) == 0)
            return true;
    return false;
}

/* "pass_ns": path with ns=<the upstream's name> added to its query, percent-encoded as Go's
 * url.Values encodes it (containerd's spelling: "127.0.0.1%3A5001"), so that an upstream that
 * serves several registries (a winch tier above) answers for the one this upstream stands for.
 * A path that names ns already is left alone. Returns a malloc'd string, or NULL (no memory). */
char *upstream_ns_path(const char *path, const char *name)
{
    static const char hex[] = "0123456789ABCDEF";
    const char *q = strchr(path, '?');
    size_t plen = strlen(path), nlen = strlen(name);
    char *out = malloc(plen + 4 + 3 * nlen + 1);
    if (!out)
        return NULL;
    memcpy(out, path, plen + 1);
    if (q && has_ns(q + 1, plen - (size_t)(q + 1 - path)))
        return out;
    char *p = out + plen;
    if (!q)
        *p++ = '?';
    else if (q[1])
        *p++ = '&';
    memcpy(p, "ns=", 3);
    p += 3;
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)name[i];
        bool plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                     (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == '~';
        if (plain) {
            *p++ = (char)ch;
        } else {
            *p++ = '%';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        }
    }
    *p = '\0';
    return out;
}

int upreq_start_opts(upreq_t **out, upstream_t *u, const char *method, const char *path,
                     const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg,
                     const upreq_opts_t *opts)
{
    upreq_t *r = NULL;
    if (u->destroying || !cbs || !cbs->on_headers || !cbs->on_body || !cbs->on_done)
        return -EINVAL;
    origin_t *o = u->origins[0];
    bool bulk = !opts || opts->lane != UPREQ_PRIORITY;
    /* Refused before anything is allocated: a full queue must stay cheap to say no to. */
    if (o->nwait[bulk ? UPREQ_BULK : UPREQ_PRIORITY] >= u->gcfg->upstream_max_queue)
        return WE_BUSY;
    char *nspath = NULL;
    if (u->ucfg->pass_ns) {
        if (!(nspath = upstream_ns_path(path, u->ucfg->name)))
            return -ENOMEM;
        path = nspath;
    }
    int rc = req_create(&r, u, method, path, extra_headers, cbs, arg);
    free(nspath);
    if (rc < 0)
        return rc;
    r->bulk = bulk;
    if (opts && opts->req_id) {
        r->req_id = opts->req_id;
        req_logline(r, "");
    }
    req_set_origin(r, o);
    upauth_attach_known(r);
    /* The loop's clock is stale when the caller spent time since the last poll; timeouts
     * armed now should count from now. */
    uv_update_time(u->loop);
    rc = pool_queue(r, o);
    if (rc < 0) {
        req_free(r);
        return rc;
    }
    if (opts)
        req_set_deadline(r, opts->deadline_ms);
    *out = r;
    return 0;
}

void upreq_pause(upreq_t *r)
{
    switch (r->state) {
    case UR_BODY:
    case UR_RESUMING: /* for RESUMING: the resume that was due is off again */
        req_set_state(r, UR_PAUSED);
        wire_pause(r);
        return;
    case UR_PAUSED:
    case UR_COMPLETE:
    case UR_DONE:
    case UR_CANCELLED:
        return;
    default:
        /* Before the head reached the caller: the pause takes effect when it has. */
        r->hold = true;
        return;
    }
}

int upreq_splice_body(upreq_t *r, int pipe_fd)
{
    if (r->state != UR_BODY || !r->uc || r->is_head || !r->cbs->on_spliced || pipe_fd < 0 ||
        r->clen == UINT64_MAX || conn_is_tls(&r->uc->conn))
        return -ENOTSUP;
    r->splice_fd = pipe_fd;
    return 0;
}

void upreq_resume(upreq_t *r)
{
    if (r->state == UR_PAUSED)
        wire_resume(r);
    else
        r->hold = false;
}

/* Ends r with err wherever it is, outside any parser callback of its own. */
static void end_now(upreq_t *r, int err)
{
    switch (r->state) {
    case UR_QUEUED:
    case UR_TOKEN:
        req_unlist(r);
        req_fail_later(r, err);
        return;
    case UR_CONNECTING:
    case UR_SENT:
    case UR_DRAINING:
    case UR_BODY:
    case UR_PAUSED:
    case UR_RESUMING:
        wire_abort(r, err);
        return;
    default:
        /* NEW and COMPLETE never last past the call that set them; ENDING, DONE and
         * CANCELLED are ending already. */
        return;
    }
}

void upreq_abort(upreq_t *r, int err)
{
    if (r->state == UR_DONE || r->state == UR_CANCELLED)
        return;
    if (err >= 0)
        err = WE_CANCELLED;
    if (r->in_parser) {
        /* Inside on_headers or on_body: the wire (or the replay of a 401) ends r with it once
         * the callback has returned. */
        if (!r->abort_err)
            r->abort_err = err;
        return;
    }
    end_now(r, err);
}

/* The earliest deadlines have passed: those requests end with -ETIMEDOUT. */
static void on_deadline(uv_timer_t *t)
{
    upstream_t *u = t->data;
    uint64_t now = uv_now(u->loop);
    while (u->dl_head && u->dl_head->deadline_at <= now) {
        upreq_t *r = u->dl_head;
        req_clear_deadline(r);
        LOG_DEBUG("upstream %s: %s: deadline passed (%s)", u->ucfg->name, r->logline,
                  r->state == UR_QUEUED ? "still waiting for a connection" : "still running");
        end_now(r, -ETIMEDOUT);
    }
    if (u->dl_head)
        uv_timer_start(&u->dl_timer, on_deadline, u->dl_head->deadline_at - now, 0);
}

void upreq_cancel(upreq_t *r)
{
    if (r->state == UR_DONE || r->state == UR_CANCELLED)
        return;
    if (r->in_parser) {
        req_set_state(r, UR_CANCELLED); /* torn down when llhttp returns (upstream_wire.c) */
        return;
    }
    req_unlist(r);
    req_set_state(r, UR_CANCELLED);
    wire_drop(r);
}
