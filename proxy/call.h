/** A registry call: one routed request as the handlers (manifest.c, blob.c, lists.c) see it,
 * and what the application lends every call. Internal to proxy/.
 *
 * app.c makes a call of every request the server hands it: it parses the registry headers,
 * routes the target, asks the policy, and passes the call to one handler, which answers through
 * reply.h and the server's resp_* primitives, now or later. A handler that waits for something
 * (an upstream fetch, a fill) sets `cancel` and `op`: if the client goes away first, the app
 * calls cancel(c), after which the handler must not touch the call again.
 *
 * The struct lives in the server's per-request storage (req_data): valid from the request's
 * arrival to its completion, zeroed for every request.
 */
#ifndef WINCH_PROXY_CALL_H
#define WINCH_PROXY_CALL_H

#include "cache/cache.h"
#include "common/flight.h"
#include "common/timeutil.h"
#include "config/config.h"
#include "policy/policy.h"
#include "proxy/http.h"
#include "proxy/realip.h"
#include "proxy/route.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

typedef struct blob_producers blob_producers_t; /* producer.c */
typedef struct access access_t;                 /* access.c */
typedef struct negcache negcache_t;             /* negcache.c */
typedef struct health health_t;                 /* health.c */
typedef struct revalidator revalidator_t;       /* revalidate.c */
typedef struct prefetcher prefetcher_t;         /* prefetch.c */
typedef struct metrics metrics_t;               /* metrics.c */

/** Longest user name a call carries (htpasswd users and certificate names). */
#define CALL_USER_MAX 256

/** What the application owns and every call borrows. Filled once by app.c. */
typedef struct call_env {
    uv_loop_t *loop;
    const config_t *cfg;
    cache_t *cache;
    upstream_t *const *upstreams; /* [i] serves cfg->upstreams[i] */
    flight_table_t *fetches;      /* shared buffered upstream fetches (fetch.c) */
    blob_producers_t *producers;  /* blob fills' upstream producers running (producer.c) */
    access_t *access;             /* client authentication (access.c); NULL when off */
    negcache_t *neg;              /* upstream 404s remembered for negative_ttl_s (negcache.h) */
    revalidator_t *revalidator;   /* tag checks running (revalidate.c) */
    struct retention *retention;  /* background eviction (retention.c); told of a full disk */
    const policy_t *policy;       /* the pull-time rules */
    metrics_t *metrics;           /* counters (metrics.h); updated on the loop */
    prefetcher_t *prefetch;       /* background fetches of an index's platforms (prefetch.c) */
    /* Added to the wall clock for the policy's decisions and the tag history it keeps (soak):
     * 0, except under the test clock (WINCH_TEST_CLOCK_OFFSET_S, app.c). */
    int64_t policy_clock_offset_ms;
} call_env_t;

/** The policy's clock (Unix ms): the wall clock, offset in tests. */
static inline int64_t policy_now_ms(const call_env_t *env)
{
    return time_wall_ms() + env->policy_clock_offset_ms;
}

typedef struct call call_t;
struct call {
    req_t *req;            /* the HTTP exchange, borrowed; NULL for background work */
    const call_env_t *env; /* borrowed */
    route_t route;
    upstream_t *up;   /* the client of route.upstream (for /v2/, the default upstream's) */
    health_t *health; /* route.upstream's breaker (health.c) */
    unsigned accept;  /* ACCEPT_* bits from every Accept line */
    http_range_t range;
    const char *if_none_match;    /* the header value (borrowed), NULL when absent */
    const char *cache_status;     /* static text for the access log: hit, miss, stale, ... */
    void (*cancel)(call_t *c);    /* the pending operation's cancel, NULL when none */
    void *op;                     /* the pending operation, the handler's */
    char user[CALL_USER_MAX + 1]; /* the authenticated client (access.c); "" when anonymous */
    bool joined;                  /* an upstream fetch of another request was joined (fetch.c) */
    bool fill_waiter; /* counted in the metrics' fill waiters until completion (blob.c) */
    uint8_t mroute;   /* enum metrics_route, set when routed (app.c) */
    /* The client's group (by path prefix, else source address); NULL when none. */
    const config_client_group_t *group;
    /* The client's address (realip.h): the socket's peer, or, from a trusted proxy, the address
     * its X-Forwarded-For names. Set by app.c before anything reads it ("" until then). */
    struct sockaddr_storage client;
    char client_str[REALIP_STR_MAX];
    bool forwarded; /* client came from X-Forwarded-For and is not the peer itself */
    /* Background work a client's request started (a tag revalidation): that request's id, so
     * the work's upstream debug lines name it. 0 otherwise. */
    uint64_t for_id;
};

/** The request id for logs: the client's, or for background work the id of the request that
 * started it (call_t.for_id); 0 for work no request started. */
static inline uint64_t call_id(const call_t *c)
{
    return c->req ? req_id(c->req) : c->for_id;
}

/** The client's address for logs, login throttling and client groups (see call_t.client). */
static inline const struct sockaddr_storage *call_client(const call_t *c)
{
    return c->client_str[0] ? &c->client : req_peer(c->req);
}

/** The same as text ("192.0.2.1", "2001:db8::1"). */
static inline const char *call_client_str(const call_t *c)
{
    return c->client_str[0] ? c->client_str : req_peer_str(c->req);
}

/** The index of c's upstream in the configuration (metrics labels); -1 for none. */
static inline int call_upstream_ix(const call_t *c)
{
    return c->route.upstream ? (int)(c->route.upstream - c->env->cfg->upstreams) : -1;
}

#endif
