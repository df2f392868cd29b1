/* The upstream client's connection pool (upstream_internal.h has the map of the files).
 *
 * - origin_t: one (scheme, host, port) an upstream talks to: the resolved addresses (lazy DNS,
 *   60 s cache), the connection pool (every live upconn; the idle ones also on a LIFO stack)
 *   and the FIFO of requests waiting for a connection. origins[0] is the configured upstream
 *   itself (the "primary" origin, never evicted); the others are created on demand for
 *   redirect targets (a blob CDN) and token realms (auth.docker.io), at most UP_MAX_ORIGINS,
 *   and the least recently used one without requests is evicted to make room. Origins are only
 *   created (and so only evicted) when a request moves to its next hop (hops_next) or a token
 *   fetch starts, never while a caller's callback or req_complete runs, so an origin pointer
 *   held across those stays valid.
 * - upconn_t: one TCP connection (conn_t) plus one timer, belonging to one origin. States:
 *     CONNECTING (bound to the request that asked for it; connect timeout, here)
 *     -> ACTIVE (bound to a request; the wire's response and idle-body timeouts)
 *     -> IDLE (in the pool, still reading so a server-side close is noticed; keep-alive timer)
 *     -> ACTIVE ... and finally CLOSED (never reused after an error, a timeout or a cancel).
 *
 * The pump (pool_pump) is the one place that hands connections to waiting requests: a pooled
 * one, or a new one within upstream_max_conns (per origin: a registry and its CDN are
 * different servers). It never calls user code; a request it cannot serve fails through the
 * deferred list.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "proxy/tls.h"
#include "proxy/upstream_internal.h"

/* ---- Connections. ---- */

static void idle_remove(upconn_t *uc)
{
    origin_t *o = uc->o;
    if (uc->state != UC_IDLE)
        return;
    if (uc->idle_prev)
        uc->idle_prev->idle_next = uc->idle_next;
    else
        o->idle = uc->idle_next;
    if (uc->idle_next)
        uc->idle_next->idle_prev = uc->idle_prev;
    uc->idle_prev = uc->idle_next = NULL;
}

static void on_uc_closed_part(upconn_t *uc)
{
    if (--uc->open_handles == 0)
        free(uc);
}

static void on_uc_timer_closed(uv_handle_t *h)
{
    on_uc_closed_part(h->data);
}

static void on_uc_conn_closed(conn_t *c)
{
    on_uc_closed_part(c->data);
}

/* After this only the close callbacks touch uc, and they do not touch its origin. */
void pool_close(upconn_t *uc)
{
    origin_t *o = uc->o;
    if (uc->state == UC_CLOSED)
        return;
    idle_remove(uc);
    uc->state = UC_CLOSED;
    if (uc->prev)
        uc->prev->next = uc->next;
    else
        o->conns = uc->next;
    if (uc->next)
        uc->next->prev = uc->prev;
    o->nconns--;
    uc->open_handles = 2;
    uv_close((uv_handle_t *)&uc->timer, on_uc_timer_closed);
    conn_close(&uc->conn, on_uc_conn_closed);
}

upreq_t *pool_detach(upconn_t *uc)
{
    upreq_t *r = uc->req;
    uc->req = NULL;
    if (r)
        r->uc = NULL;
    return r;
}

void pool_arm(upconn_t *uc, uint64_t ms, uv_timer_cb cb)
{
    if (ms == 0)
        uv_timer_stop(&uc->timer); /* 0 in the config means no limit */
    else
        uv_timer_start(&uc->timer, cb, ms, 0);
}

/* An idle pooled connection read something: the server closed it, or sent bytes nobody asked
 * for. Either way it is done. */
static void on_idle_read(conn_t *c, ssize_t nread, const char *data)
{
    upconn_t *uc = c->data;
    origin_t *o = uc->o;
    (void)data;
    LOG_DEBUG("upstream %s: pooled connection to %s %s", uc->u->ucfg->name, o->key,
              nread < 0 ? "closed by the server" : "got unexpected bytes");
    pool_close(uc);
    pool_pump(o);
}

/* The keep-alive time of an idle connection ran out, or a connect took too long. */
static void on_pool_timer(uv_timer_t *t)
{
    upconn_t *uc = t->data;
    origin_t *o = uc->o;
    upreq_t *r = pool_detach(uc);
    pool_close(uc);
    if (r) {
        LOG_DEBUG("upstream %s: %s: timed out connecting", uc->u->ucfg->name, r->logline);
        req_fail_later(r, -ETIMEDOUT);
    }
    pool_pump(o);
}

void pool_release(upconn_t *uc, bool reusable)
{
    origin_t *o = uc->o;
    upstream_t *u = uc->u;
    uv_timer_stop(&uc->timer);
    pool_detach(uc);
    if (!reusable || u->destroying || u->gcfg->upstream_keepalive_ms == 0) {
        pool_close(uc);
        return;
    }
    uc->state = UC_IDLE;
    uc->reused = true;
    uc->idle_prev = NULL;
    uc->idle_next = o->idle;
    if (o->idle)
        o->idle->idle_prev = uc;
    o->idle = uc;
    /* Keep reading while idle: a server-side close (or stray bytes) is noticed at once. */
    if (conn_read_start(&uc->conn, on_idle_read) < 0) {
        pool_close(uc);
        return;
    }
    pool_arm(uc, u->gcfg->upstream_keepalive_ms, on_pool_timer);
}

static void on_connected(conn_t *c, int status);

/* The TLS context of an https origin. An http upstream that sends winch to an https origin (a
 * CDN, a token realm) gets its context now rather than at start, where it would cost every
 * plain-HTTP upstream the CA store's loading time. */
static int tls_ctx(upstream_t *u)
{
    if (u->tls_ctx)
        return 0;
    char tls_err[512];
    int rc = tls_client_ctx_for(u->ucfg, &u->tls_ctx, tls_err, sizeof tls_err);
    if (rc < 0)
        LOG_ERROR("upstream %s: %s", u->ucfg->name, tls_err);
    return rc;
}

/* Opens connection number idx of origin o for r: the one place where connections are made.
 * Returns 0 (r is bound to the new conn, CONNECTING) or an error. */
static int start_connect(origin_t *o, upreq_t *r, int idx)
{
    upstream_t *u = o->u;
    upconn_t *uc = calloc(1, sizeof *uc);
    if (!uc)
        return -ENOMEM;
    uc->u = u;
    uc->o = o;
    uc->addr_idx = idx;
    uc->state = UC_CONNECTING;
    uv_timer_init(u->loop, &uc->timer);
    uc->timer.data = uc;
    const struct sockaddr *addr = (const struct sockaddr *)&o->addrs[idx];
    int rc = o->tls ? tls_ctx(u) : 0;
    if (rc == 0 && o->tls)
        rc = conn_connect_tls(&uc->conn, u->loop, addr, UP_RBUF, u->tls_ctx, o->host,
                              !u->ucfg->insecure_skip_verify, on_connected);
    else if (rc == 0)
        rc = conn_connect(&uc->conn, u->loop, addr, UP_RBUF, on_connected);
    if (rc < 0) {
        uc->open_handles = 1;
        uv_close((uv_handle_t *)&uc->timer, on_uc_timer_closed);
        return rc;
    }
    uc->conn.data = uc;
    uc->next = o->conns;
    if (o->conns)
        o->conns->prev = uc;
    o->conns = uc;
    o->nconns++;
    uc->req = r;
    r->uc = uc;
    req_set_state(r, UR_CONNECTING);
    pool_arm(uc, u->gcfg->upstream_connect_timeout_ms, on_pool_timer);
    return 0;
}

static void on_connected(conn_t *c, int status)
{
    upconn_t *uc = c->data;
    origin_t *o = uc->o;
    if (status == 0) {
        uc->state = UC_ACTIVE;
        o->u->conn_ready(uc->req);
        return;
    }
    if (conn_tls_error(c))
        LOG_WARN("upstream %s: %s: %s", o->u->ucfg->name, o->key, conn_tls_error(c));
    /* Refused or unreachable: try the next address (localhost is often ::1 then 127.0.0.1). */
    int next = uc->addr_idx + 1;
    upreq_t *r = pool_detach(uc);
    pool_close(uc);
    if (next < o->naddrs && start_connect(o, r, next) == 0)
        return;
    req_fail_later(r, status);
    pool_pump(o);
}

/* ---- Addresses. ---- */

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    dns_req_t *d = (dns_req_t *)req;
    origin_t *o = d->o;
    free(d);
    if (!o) {
        uv_freeaddrinfo(res);
        return;
    }
    upstream_t *u = o->u;
    o->dns = NULL;
    int n = 0;
    for (struct addrinfo *ai = res; status == 0 && ai && n < UP_MAX_ADDRS; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof o->addrs[0])
            continue;
        memcpy(&o->addrs[n++], ai->ai_addr, ai->ai_addrlen);
    }
    uv_freeaddrinfo(res);
    if (status == 0 && n == 0)
        status = UV_EAI_NODATA;
    uint64_t now = uv_now(u->loop);
    if (status == 0) {
        o->naddrs = n;
        o->addrs_expire = now + UP_DNS_TTL_MS;
    } else if (o->naddrs > 0) {
        LOG_WARN("upstream %s: resolving %s failed (%s); keeping the previous addresses",
                 u->ucfg->name, o->host, err_str(status));
        o->addrs_expire = now + UP_DNS_RETRY_MS;
    } else {
        LOG_WARN("upstream %s: resolving %s failed: %s", u->ucfg->name, o->host, err_str(status));
        /* Nothing was ever resolved, so no connection exists: every waiting request waited
         * for this answer. */
        while (o->wait_head) {
            upreq_t *r = o->wait_head;
            req_unlist(r);
            req_fail_later(r, status);
        }
        return;
    }
    pool_pump(o);
}

/* A literal address never goes through the resolver: 1 when host is one. */
static int literal_addr(origin_t *o)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)&o->addrs[0];
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&o->addrs[0];
    memset(&o->addrs[0], 0, sizeof o->addrs[0]);
    if (inet_pton(AF_INET, o->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(o->port);
    } else if (inet_pton(AF_INET6, o->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(o->port);
    } else {
        return 0;
    }
    o->naddrs = 1;
    o->addrs_expire = UINT64_MAX;
    return 1;
}

/* 1: addresses usable now; 0: a resolution is running (the pump runs again when it ends);
 * < 0: the resolution could not start. */
static int ensure_addrs(origin_t *o)
{
    upstream_t *u = o->u;
    uint64_t now = uv_now(u->loop);
    if (o->naddrs > 0 && now < o->addrs_expire)
        return 1;
    if (o->naddrs == 0 && literal_addr(o))
        return 1;
    if (!o->dns) {
        dns_req_t *d = calloc(1, sizeof *d);
        if (!d)
            return o->naddrs > 0 ? 1 : -ENOMEM;
        d->o = o;
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        int rc = uv_getaddrinfo(u->loop, &d->req, on_resolved, o->host, o->port_str, &hints);
        if (rc < 0) {
            free(d);
            return o->naddrs > 0 ? 1 : rc;
        }
        o->dns = d;
    }
    /* While a refresh runs, the expired addresses keep serving. */
    return o->naddrs > 0 ? 1 : 0;
}

/* ---- The wait queue and the pump. ---- */

static void enqueue(upreq_t *r, bool front)
{
    origin_t *o = r->o;
    req_set_state(r, UR_QUEUED);
    req_push(&o->wait_head, &o->wait_tail, r, front);
    o->nwait++;
}

int pool_queue(upreq_t *r, origin_t *o)
{
    req_set_origin(r, o);
    int rc = req_build_head(r);
    if (rc < 0)
        return rc;
    r->fresh = r->retried = false;
    enqueue(r, false);
    pool_pump(o);
    return 0;
}

void pool_requeue_fresh(upreq_t *r)
{
    r->retried = r->fresh = true;
    enqueue(r, true);
}

/* The idle connection on top of o's stack serves r. */
static void take_idle(origin_t *o, upreq_t *r)
{
    upconn_t *uc = o->idle;
    idle_remove(uc);
    req_unlist(r);
    uc->state = UC_ACTIVE;
    uc->req = r;
    r->uc = uc;
    uv_timer_stop(&uc->timer);
    o->u->conn_ready(r);
}

void pool_pump(origin_t *o)
{
    upstream_t *u = o->u;
    uint32_t max = u->gcfg->upstream_max_conns ? u->gcfg->upstream_max_conns : 1;
    while (o->wait_head && !u->destroying) {
        upreq_t *r = o->wait_head;
        if (!r->fresh && o->idle) {
            take_idle(o, r);
            continue;
        }
        if (o->nconns >= max) {
            if (r->fresh && o->idle) {
                pool_close(o->idle); /* make room for the fresh connection */
                continue;
            }
            break;
        }
        int rc = ensure_addrs(o);
        if (rc == 0)
            break;
        req_unlist(r);
        if (rc > 0)
            rc = start_connect(o, r, 0);
        if (rc < 0)
            req_fail_later(r, rc);
    }
}

/* ---- Origins. ---- */

int pool_origin_init(origin_t *o, upstream_t *u, bool tls, const char *host, uint16_t port)
{
    if (strlen(host) > URL_MAX_HOST || !*host)
        return WE_INVALID;
    o->u = u;
    o->tls = tls;
    o->port = port;
    snprintf(o->host, sizeof o->host, "%s", host);
    bool v6 = strchr(host, ':') != NULL;
    bool dflt = port == (tls ? 443 : 80);
    if (dflt)
        snprintf(o->host_hdr, sizeof o->host_hdr, v6 ? "[%s]" : "%s", host);
    else
        snprintf(o->host_hdr, sizeof o->host_hdr, v6 ? "[%s]:%u" : "%s:%u", host, (unsigned)port);
    snprintf(o->port_str, sizeof o->port_str, "%u", (unsigned)port);
    snprintf(o->key, sizeof o->key, v6 ? "%s://[%s]:%u" : "%s://%s:%u", tls ? "https" : "http",
             host, (unsigned)port);
    return 0;
}

void pool_origin_free(origin_t *o)
{
    while (o->conns) {
        upconn_t *uc = o->conns;
        pool_detach(uc);
        pool_close(uc);
    }
    if (o->dns) {
        o->dns->o = NULL;
        (void)uv_cancel((uv_req_t *)&o->dns->req);
        o->dns = NULL;
    }
    free(o);
}

/* Makes room in a full origin table: forgets the least recently used origin that no request
 * needs; its idle connections go with it. A request bound to, waiting on or parked at an
 * origin counts in nreqs, and every connection that is not idle has a request. */
static int evict_origin(upstream_t *u)
{
    int victim = -1;
    for (int i = 1; i < u->norigins; i++) {
        origin_t *o = u->origins[i];
        if (o->nreqs == 0 && (victim < 0 || o->last_used < u->origins[victim]->last_used))
            victim = i;
    }
    if (victim < 0)
        return -EAGAIN;
    LOG_DEBUG("upstream %s: forgetting origin %s", u->ucfg->name, u->origins[victim]->key);
    pool_origin_free(u->origins[victim]);
    u->origins[victim] = u->origins[--u->norigins];
    return 0;
}

int pool_origin_get(upstream_t *u, bool tls, const char *host, uint16_t port, origin_t **out)
{
    for (int i = 0; i < u->norigins; i++) {
        origin_t *o = u->origins[i];
        if (o->tls == tls && o->port == port && strcmp(o->host, host) == 0) {
            *out = o;
            return 0;
        }
    }
    if (u->norigins == UP_MAX_ORIGINS) {
        int rc = evict_origin(u);
        if (rc < 0)
            return rc;
    }
    origin_t *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    int rc = pool_origin_init(o, u, tls, host, port);
    if (rc < 0) {
        free(o);
        return rc;
    }
    u->origins[u->norigins++] = o;
    *out = o;
    return 0;
}
