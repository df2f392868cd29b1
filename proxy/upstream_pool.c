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
 *
 * The wait queue has two lanes (enum upreq_lane). The pump serves the priority lane first,
 * and a bulk request only while fewer than bulk_share() connections serve bulk requests, so
 * a quarter of the connections (at least one when there are two or more) is always there for
 * the manifests and tag checks a client is waiting on, however many blob fills are queued.
 * Each lane holds at most upstream_max_queue requests; one that waits longer than
 * upstream_queue_timeout_ms fails with WE_BUSY (the queue timer). Nothing heavy is attached
 * to a waiting request: its response buffer comes when a connection serves it.
 *
 * Where winch may connect. The configured upstream's own origin is trusted as configured;
 * every other origin (a redirect target, a token realm) is screened on the addresses it
 * resolves to: an address of a class that is not public (netaddr.h: loopback, private,
 * link-local, ...) is refused unless the primary origin's own addresses have that class (a
 * lab upstream on 127.0.0.1 may send winch to 127.0.0.1) or the host is in the upstream's
 * allow_redirect_hosts. The check runs after DNS and winch connects to exactly the addresses
 * it checked, so a name that resolves (or re-resolves, DNS rebinding) to 169.254.169.254 is
 * refused like the literal.
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
#include "proxy/netaddr.h"
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
    if (uc->bulk) {
        uc->o->nbulk--;
        uc->bulk = false;
    }
    if (r)
        r->uc = NULL;
    return r;
}

/* r is served by uc from now on. */
static void bind_req(upconn_t *uc, upreq_t *r)
{
    uc->req = r;
    r->uc = uc;
    if (r->bulk) {
        uc->bulk = true;
        uc->o->nbulk++;
    }
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
    bind_req(uc, r);
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

static enum netaddr_class addr_class(const upstream_t *u, const struct sockaddr *sa)
{
    int c = u->classify_hook ? u->classify_hook(sa) : -1;
    if (c >= 0 && c < NETADDR_NCLASSES)
        return (enum netaddr_class)c;
    return netaddr_classify(sa);
}

/* May origin o (not the primary) be reached at sa? Logs a refusal. */
static bool addr_allowed(const origin_t *o, const struct sockaddr *sa)
{
    const upstream_t *u = o->u;
    enum netaddr_class c = addr_class(u, sa);
    if (c == NETADDR_PUBLIC || (u->primary_classes & (1u << c)))
        return true;
    const config_upstream_t *uc = u->ucfg;
    if (netaddr_host_listed(o->host, uc->allow_redirect_hosts, uc->n_allow_redirect_hosts))
        return true;
    char a[INET6_ADDRSTRLEN + 1];
    LOG_WARN("upstream %s: refusing %s at %s: %s addresses are reached only when the upstream "
             "itself is at one, or when allow_redirect_hosts names the host",
             u->ucfg->name, o->key, netaddr_str(sa, a, sizeof a), netaddr_class_name(c));
    return false;
}

/* Takes the addresses in addrs[0..n) that o may use into o->addrs; the primary origin's set the
 * classes the others may reach. Returns how many were kept. */
static int keep_addrs(origin_t *o, const struct sockaddr_storage *addrs, int n)
{
    upstream_t *u = o->u;
    int kept = 0;
    if (o->primary)
        u->primary_classes = 0;
    for (int i = 0; i < n; i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&addrs[i];
        if (o->primary)
            u->primary_classes |= 1u << addr_class(u, sa);
        else if (!addr_allowed(o, sa))
            continue;
        if (&o->addrs[kept] != &addrs[i])
            memcpy(&o->addrs[kept], &addrs[i], sizeof addrs[i]);
        kept++;
    }
    o->naddrs = kept;
    o->refused = n > 0 && kept == 0;
    return kept;
}

static void fail_waiting(origin_t *o, int err)
{
    for (int l = 0; l < UP_LANES; l++) {
        while (o->wait_head[l]) {
            upreq_t *r = o->wait_head[l];
            req_unlist(r);
            req_fail_later(r, err);
        }
    }
}

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
    struct sockaddr_storage got[UP_MAX_ADDRS];
    int n = 0;
    for (struct addrinfo *ai = res; status == 0 && ai && n < UP_MAX_ADDRS; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof got[0])
            continue;
        memset(&got[n], 0, sizeof got[n]);
        memcpy(&got[n++], ai->ai_addr, ai->ai_addrlen);
    }
    uv_freeaddrinfo(res);
    if (status == 0 && n == 0)
        status = UV_EAI_NODATA;
    uint64_t now = uv_now(u->loop);
    if (status == 0) {
        /* A new answer replaces the old one whole: a name that now resolves somewhere it may
         * not go loses its old addresses too. */
        o->addrs_expire = now + UP_DNS_TTL_MS;
        if (keep_addrs(o, got, n) == 0) {
            fail_waiting(o, WE_FORBIDDEN);
            return;
        }
    } else if (o->naddrs > 0) {
        LOG_WARN("upstream %s: resolving %s failed (%s); keeping the previous addresses",
                 u->ucfg->name, o->host, err_str(status));
        o->addrs_expire = now + UP_DNS_RETRY_MS;
    } else {
        LOG_WARN("upstream %s: resolving %s failed: %s", u->ucfg->name, o->host, err_str(status));
        /* Nothing was ever resolved, so no connection exists: every waiting request waited
         * for this answer. */
        fail_waiting(o, status);
        return;
    }
    pool_pump(o);
}

/* A literal address never goes through the resolver: 1 when host is one. */
static int literal_addr(origin_t *o)
{
    struct sockaddr_storage a;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&a;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a;
    memset(&a, 0, sizeof a);
    if (inet_pton(AF_INET, o->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(o->port);
    } else if (inet_pton(AF_INET6, o->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(o->port);
    } else {
        return 0;
    }
    o->addrs_expire = UINT64_MAX;
    (void)keep_addrs(o, &a, 1);
    return 1;
}

/* 1: addresses usable now; 0: a resolution is running (the pump runs again when it ends);
 * < 0: the resolution could not start, or every address was refused (WE_FORBIDDEN). */
static int ensure_addrs(origin_t *o)
{
    upstream_t *u = o->u;
    uint64_t now = uv_now(u->loop);
    if (o->naddrs > 0 && now < o->addrs_expire)
        return 1;
    if (o->refused && now < o->addrs_expire)
        return WE_FORBIDDEN;
    if (o->naddrs == 0 && !o->refused && literal_addr(o))
        return o->naddrs > 0 ? 1 : WE_FORBIDDEN;
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

/* Fails the requests that waited too long for a connection, and re-arms for the next one. */
static void on_queue_timer(uv_timer_t *t)
{
    upstream_t *u = t->data;
    uint64_t now = uv_now(u->loop), wait = u->gcfg->upstream_queue_timeout_ms;
    uint64_t next = UINT64_MAX;
    if (wait == 0)
        return;
    for (int i = 0; i < u->norigins; i++) {
        origin_t *o = u->origins[i];
        for (int l = 0; l < UP_LANES; l++) {
            for (upreq_t *r = o->wait_head[l], *nx; r; r = nx) {
                nx = r->next;
                if (now - r->queued_at >= wait) {
                    LOG_DEBUG("upstream %s: %s: waited %llu ms for a connection; giving up",
                              u->ucfg->name, r->logline, (unsigned long long)(now - r->queued_at));
                    req_unlist(r);
                    req_fail_later(r, WE_BUSY);
                } else if (r->queued_at + wait < next) {
                    next = r->queued_at + wait;
                }
            }
        }
    }
    if (next != UINT64_MAX)
        uv_timer_start(&u->queue_timer, on_queue_timer, next - now, 0);
}

static void enqueue(upreq_t *r, bool front)
{
    origin_t *o = r->o;
    upstream_t *u = o->u;
    int l = req_lane(r);
    req_set_state(r, UR_QUEUED);
    req_push(&o->wait_head[l], &o->wait_tail[l], r, front);
    o->nwait[l]++;
    r->queued_at = uv_now(u->loop);
    /* Every later request waits until later, so a running timer is early enough. */
    uint64_t wait = u->gcfg->upstream_queue_timeout_ms;
    if (wait && !uv_is_active((uv_handle_t *)&u->queue_timer))
        uv_timer_start(&u->queue_timer, on_queue_timer, wait, 0);
}

int pool_queue(upreq_t *r, origin_t *o)
{
    req_set_origin(r, o);
    if (o->nwait[req_lane(r)] >= o->u->gcfg->upstream_max_queue) {
        LOG_DEBUG("upstream %s: %s: %s queue of %s is full", o->u->ucfg->name, r->logline,
                  r->bulk ? "bulk" : "priority", o->key);
        return WE_BUSY;
    }
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
    bind_req(uc, r);
    uv_timer_stop(&uc->timer);
    o->u->conn_ready(r);
}

/* Connections bulk requests may hold at once: all but the priority share (a quarter, at least
 * one) when there are two or more. */
static uint32_t bulk_share(uint32_t max)
{
    if (max < 2)
        return max;
    uint32_t reserve = max / 4 ? max / 4 : 1;
    return max - reserve;
}

/* The request the pump serves next: priority first; bulk within its share. */
static upreq_t *next_waiting(const origin_t *o, uint32_t max)
{
    if (o->wait_head[UPREQ_PRIORITY])
        return o->wait_head[UPREQ_PRIORITY];
    if (o->wait_head[UPREQ_BULK] && o->nbulk < bulk_share(max))
        return o->wait_head[UPREQ_BULK];
    return NULL;
}

void pool_pump(origin_t *o)
{
    upstream_t *u = o->u;
    uint32_t max = u->gcfg->upstream_max_conns ? u->gcfg->upstream_max_conns : 1;
    upreq_t *r;
    while (!u->destroying && (r = next_waiting(o, max)) != NULL) {
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
