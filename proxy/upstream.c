/* HTTP/1.1 client for one upstream registry.
 *
 * Objects:
 * - upstream_t: one per configured upstream. Holds its origins, the "deferred" list drained by
 *   a 0 ms timer, the token cache and the token flights, and the last rate-limit
 *   headers.
 * - origin_t: one (scheme, host, port) this upstream talks to: the resolved addresses (lazy
 *   DNS, 60 s cache), the connection pool (every live upconn; the idle ones also on a LIFO
 *   stack) and the FIFO of requests waiting for a connection. origins[0] is the configured
 *   upstream itself (the "primary" origin, never evicted); the others are created on demand
 *   for redirect targets (a blob CDN) and token realms (auth.docker.io), at most
 *   UP_MAX_ORIGINS, and the least recently used one without requests is evicted to make room.
 *   Origins are only created (and so only evicted) from next_hop and start_fetch, never while
 *   a caller's callback or complete() runs, so an origin pointer held across those stays valid.
 * - upconn_t: one TCP connection (conn_t) plus one timer, belonging to one origin. States:
 *     CONNECTING (bound to the request that asked for it; connect timeout)
 *     -> ACTIVE (bound to a request; response timeout, then idle-body timeout)
 *     -> IDLE (in the pool, still reading so a server-side close is noticed; keep-alive timer)
 *     -> ACTIVE ... and finally closed (never reused after an error, a timeout or a cancel).
 * - upreq_t: one request as the caller sees it. It may travel several hops before the caller
 *   sees any response: redirects (3xx with a Location, GET and HEAD only) and one answer to a
 *   401 (Bearer: a token from the realm; Basic: the configured credentials). Such intercepted
 *   responses never reach the caller: their bodies are read and dropped when small (so the
 *   connection is reused) or the connection is closed, then the request is rebuilt and queued
 *   on the next origin. on_headers sees the final response only.
 *
 * Auth. A 401 with a Bearer challenge makes the request join the token flight of its cache key
 * (common/flight.h: concurrent 401s for the same scope share one fetch), whose operation is an
 * internal GET to the realm (with Basic credentials when configured and the challenge came
 * from the primary origin); the flight lands with the token, or with why there is none. The
 * token is cached per (realm, service, scopes) until issued_at + expires_in; later requests to
 * the primary origin for a repository the cached token covers send it up front, so a warm
 * cache needs no 401 round trip. A second 401 reaches the caller. When no token can be had,
 * the caller gets the original 401 (headers only) replayed from the deferred list.
 * Authorization is only ever sent to the origin it was obtained for: a redirect to another
 * scheme, host or port drops it (pre-signed CDN URLs fail when a token comes along), and the
 * caller's own Authorization lines go to the primary origin only. No token, password or
 * Authorization header is ever logged; request lines are logged without their query (pre-signed
 * URLs carry signatures there).
 *
 * Callback discipline. The user's on_headers and on_body run inside llhttp_execute, which runs
 * over the conn's read buffer; so a cancel from inside them only marks the request, and the
 * teardown (which frees that buffer) waits until llhttp returns. on_message_complete pauses the
 * parser, so completion, pooling and on_done also happen outside llhttp. Failures are reported
 * through the deferred list (on the next loop iteration), which gives one rule: dispatch, start
 * and cancel never call user code, and on_done(error) never runs inside a libuv callback that
 * is still using the connection. upreq_resume is deferred the same way, so on_body never runs
 * inside upreq_resume either.
 *
 * Body flow control: when on_body calls upreq_pause, the callback returns HPE_PAUSED to
 * llhttp, which stops right after that span and records where (llhttp_get_error_pos). The
 * conn stops reading, so the rest of its read buffer stays valid; upreq_resume feeds that rest
 * to the parser first (llhttp_resume + llhttp_execute), then reads again.
 */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/flight.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "proxy/auth.h"
#include "proxy/conn.h"
#include "proxy/tls.h"
#include "proxy/url.h"

/* Read buffer per upstream connection: large enough that a fast upstream fills few reads. */
#define UP_RBUF (128 * 1024)
/* Requests that may wait for a connection slot before upreq_start refuses with -EAGAIN. */
#define UP_MAX_QUEUE 4096
/* Bound of a request head (request line, Host, User-Agent, caller's headers, Authorization).
 * Bearer tokens (AUTH_MAX_TOKEN) and pre-signed URLs (URL_MAX) are the biggest things in
 * there and fit together. */
#define UP_MAX_HEAD (16 * 1024)
#define UP_MAX_ADDRS 8
#define UP_DNS_TTL_MS 60000
/* After a failed re-resolution the previous addresses stay in use; try again this soon. */
#define UP_DNS_RETRY_MS 5000
#define UP_USER_AGENT "winch/0.1"
/* Origins per upstream: the configured one, CDNs it redirects to, token realms. */
#define UP_MAX_ORIGINS 16
/* The body of an intercepted response (redirect, 401) is read and dropped up to this size, so
 * its connection can be reused; a bigger one costs the connection instead. */
#define UP_MAX_DRAIN (64 * 1024)
/* Tokens cached per upstream, and token fetches running at once. */
#define UP_MAX_TOKENS 64
#define UP_MAX_TOKEN_FETCHES 32
/* "scheme://host:port" */
#define UP_OKEY_MAX (sizeof "https://[]:65535" + URL_MAX_HOST)
/* A request line for logs: method, origin when not the primary one, path without query. */
#define UP_LOGLINE 320
/* Docker Hub's remaining pulls below this are logged at info. */
#define UP_RATELIMIT_LOW 10

typedef struct upconn upconn_t;
typedef struct origin origin_t;
typedef struct token_op token_op_t;

enum uc_state { UC_CONNECTING, UC_ACTIVE, UC_IDLE };
enum req_where { Q_NONE, Q_WAIT, Q_DEFER, Q_TOKEN };
/* What a finished response means for its request: shown to the caller, or a hop. */
enum intercept { IC_NONE, IC_REDIRECT, IC_AUTH };

struct upconn {
    conn_t conn;
    uv_timer_t timer;
    upstream_t *u;
    origin_t *o;
    upreq_t *req; /* bound request (CONNECTING, ACTIVE), NULL when idle */
    enum uc_state state;
    int open_handles; /* after close: handles whose close callback is still due */
    bool closing;
    bool in_idle;                    /* on the idle stack */
    bool reused;                     /* served a request before: may be a stale keep-alive */
    int addr_idx;                    /* address being tried */
    upconn_t *prev, *next;           /* every live conn of the origin */
    upconn_t *idle_prev, *idle_next; /* idle stack */
};

struct upreq {
    upstream_t *u;
    origin_t *o; /* where the current hop goes; counted in o->nreqs */
    upconn_t *uc;
    const upreq_cbs_t *cbs;
    void *arg;
    char method[17];
    char *path;     /* current hop's path and query, owned */
    char *extra;    /* the caller's header lines, "Name: value\r\n" each, owned; NULL if none */
    char *auth_hdr; /* "Authorization: ..." winch adds, owned; NULL if none */
    char auth_okey[UP_OKEY_MAX]; /* the origin auth_hdr belongs to */
    uint64_t auth_gen;           /* cache generation of the Bearer token in auth_hdr, 0 if none */
    bool auth_basic;             /* auth_hdr holds the configured Basic credentials */
    char *head;                  /* request head, owned */
    size_t head_len;
    char logline[UP_LOGLINE]; /* for logs: never headers (they carry tokens), never a query */
    bool is_head, idempotent;
    bool internal;  /* a token fetch: no auth handling, callbacks are ours */
    int redirects;  /* followed so far */
    int auth_tries; /* 401s answered so far */
    enum intercept intercept;
    url_t *next_url;        /* IC_REDIRECT: where to, owned */
    auth_challenge_t *chal; /* IC_AUTH: the challenge to answer, owned */
    flight_waiter_t token_wait; /* Q_TOKEN: r waits for a token flight */
    /* Queues (wait or deferred). */
    upreq_t *prev, *next;
    enum req_where where;
    bool fresh;   /* must not take a pooled connection (retry after a stale one) */
    bool retried; /* the one stale-connection retry was used */
    bool defer_resume;
    bool defer_replay; /* show the stored 401 to the caller */
    int defer_status;
    /* Response. */
    llhttp_t parser;
    char *hdr; /* "name\0value\0"..., max_header_bytes, owned */
    size_t hlen, hcap, vstart;
    size_t hdone; /* bytes of hdr holding complete entries */
    int status;
    uint64_t clen;
    uint64_t drained; /* body bytes of an intercepted response read and dropped */
    bool headers_done, complete, keepalive, got_bytes, paused, cancelled, toobig;
    int in_parser;    /* > 0 while llhttp runs over the conn's buffer for this request */
    const char *pend; /* unparsed rest of the read buffer while paused */
    size_t pend_len;
    bool has_pend;
    uint64_t last_body; /* uv_now of the last body byte */
};

typedef struct dns_req {
    uv_getaddrinfo_t req;
    origin_t *o; /* NULL once the origin is gone */
} dns_req_t;

struct origin {
    upstream_t *u;
    bool tls;
    bool primary; /* the configured upstream's own origin */
    uint16_t port;
    char host[URL_MAX_HOST + 1];      /* no brackets for IPv6 */
    char host_hdr[URL_MAX_HOST + 10]; /* value of Host */
    char port_str[8];
    char key[UP_OKEY_MAX]; /* "http://host:port", for comparisons and logs */
    /* Addresses. */
    struct sockaddr_storage addrs[UP_MAX_ADDRS];
    int naddrs;
    uint64_t addrs_expire; /* uv_now ms; UINT64_MAX for numeric hosts */
    dns_req_t *dns;        /* resolution in flight */
    /* Pool. */
    upconn_t *conns; /* every live connection */
    upconn_t *idle;  /* most recently used first */
    uint32_t nconns; /* live: connecting + active + idle */
    upreq_t *wait_head, *wait_tail;
    size_t nwait;
    uint32_t nreqs;     /* requests whose current hop is here (waiting, bound, parked) */
    uint64_t last_used; /* upstream tick, for LRU eviction */
};

/* A token fetch: the operation of one flight in u->token_flights, keyed by the token cache key.
 * Every request that needs the same token while it runs waits on that flight. */
struct token_op {
    upstream_t *u;
    flight_t *fl;
    bool proactive; /* the challenge came from the primary origin */
    int status;
    bool too_big;
    buf_t body; /* the realm's answer, at most AUTH_MAX_BODY; freed with buf_free_secret */
};

/* What a token flight lands with: the token (borrowed for the land call) or why there is none. */
typedef struct token_result {
    const char *token; /* NULL when no token could be had */
    uint64_t gen;      /* its cache generation, 0 when not cached */
    int err;           /* the realm could not be reached (transport error), else 0 */
} token_result_t;

struct upstream {
    uv_loop_t *loop;
    const config_upstream_t *ucfg;
    const config_t *gcfg;
    origin_t *origins[UP_MAX_ORIGINS]; /* [0] is the primary origin */
    int norigins;
    uint64_t tick;
    upreq_t *defer_head, *defer_tail;
    uv_timer_t defer_timer;
    /* Auth. */
    auth_cache_t *tokens;
    flight_table_t *token_flights; /* token fetches running, at most UP_MAX_TOKEN_FETCHES */
    bool basic; /* the upstream asked for Basic: send the credentials up front from now on */
    upstream_ratelimit_t rl;
    bool destroying;
    SSL_CTX *tls_ctx; /* every https origin's client context (ca_file, insecure_skip_verify) */
};

static void dispatch(origin_t *o);
static void on_conn_read(conn_t *c, ssize_t nread, const char *data);
static int feed(upconn_t *uc, upreq_t *r, const char *data, size_t len);
static void next_hop(upreq_t *r);

/* ---- Small lists. ---- */

static void q_remove(upreq_t **head, upreq_t **tail, upreq_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        *head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        *tail = r->prev;
    r->prev = r->next = NULL;
}

static void q_push_back(upreq_t **head, upreq_t **tail, upreq_t *r)
{
    r->next = NULL;
    r->prev = *tail;
    if (*tail)
        (*tail)->next = r;
    else
        *head = r;
    *tail = r;
}

static void q_push_front(upreq_t **head, upreq_t **tail, upreq_t *r)
{
    r->prev = NULL;
    r->next = *head;
    if (*head)
        (*head)->prev = r;
    else
        *tail = r;
    *head = r;
}

static void unqueue(upreq_t *r)
{
    upstream_t *u = r->u;
    if (r->where == Q_WAIT) {
        q_remove(&r->o->wait_head, &r->o->wait_tail, r);
        r->o->nwait--;
    } else if (r->where == Q_DEFER) {
        q_remove(&u->defer_head, &u->defer_tail, r);
    } else if (r->where == Q_TOKEN) {
        /* The last waiter leaving lets the fetch finish: its token will be cached. */
        (void)flight_leave(&r->token_wait);
    }
    r->where = Q_NONE;
}

static void enqueue_wait(upreq_t *r, bool front)
{
    origin_t *o = r->o;
    if (front)
        q_push_front(&o->wait_head, &o->wait_tail, r);
    else
        q_push_back(&o->wait_head, &o->wait_tail, r);
    o->nwait++;
    r->where = Q_WAIT;
}

static void idle_remove(upconn_t *uc)
{
    origin_t *o = uc->o;
    if (!uc->in_idle)
        return;
    if (uc->idle_prev)
        uc->idle_prev->idle_next = uc->idle_next;
    else
        o->idle = uc->idle_next;
    if (uc->idle_next)
        uc->idle_next->idle_prev = uc->idle_prev;
    uc->idle_prev = uc->idle_next = NULL;
    uc->in_idle = false;
}

/* ---- Requests: free and complete. ---- */

static void set_origin(upreq_t *r, origin_t *o)
{
    if (r->o)
        r->o->nreqs--;
    r->o = o;
    o->nreqs++;
    o->last_used = ++r->u->tick;
}

static void clear_auth(upreq_t *r)
{
    if (r->auth_hdr)
        OPENSSL_cleanse(r->auth_hdr, strlen(r->auth_hdr));
    free(r->auth_hdr);
    r->auth_hdr = NULL;
    r->auth_okey[0] = '\0';
    r->auth_gen = 0;
    r->auth_basic = false;
}

static void free_req(upreq_t *r)
{
    if (r->o)
        r->o->nreqs--;
    clear_auth(r);
    if (r->head)
        OPENSSL_cleanse(r->head, r->head_len); /* it may hold a token */
    free(r->head);
    free(r->hdr);
    free(r->path);
    free(r->extra);
    free(r->next_url);
    free(r->chal);
    free(r);
}

static void on_defer(uv_timer_t *t);

static void defer(upreq_t *r)
{
    upstream_t *u = r->u;
    q_push_back(&u->defer_head, &u->defer_tail, r);
    r->where = Q_DEFER;
    uv_timer_start(&u->defer_timer, on_defer, 0, 0);
}

/* Reports status through on_done on the next loop iteration. */
static void fail_later(upreq_t *r, int status)
{
    unqueue(r);
    r->defer_resume = r->defer_replay = false;
    r->defer_status = status;
    defer(r);
}

/* Shows the caller, on the next loop iteration, the 401 that could not be answered. */
static void replay_later(upreq_t *r)
{
    unqueue(r);
    r->defer_resume = false;
    r->defer_replay = true;
    defer(r);
}

static void complete(upreq_t *r, int status)
{
    upstream_t *u = r->u;
    if (status == 0 && r->redirects > 0)
        LOG_DEBUG("upstream %s: %s -> %d (after %d redirect%s)", u->ucfg->name, r->logline,
                  r->status, r->redirects, r->redirects == 1 ? "" : "s");
    else if (status == 0)
        LOG_DEBUG("upstream %s: %s -> %d", u->ucfg->name, r->logline, r->status);
    else
        LOG_DEBUG("upstream %s: %s failed: %s", u->ucfg->name, r->logline, err_str(status));
    r->cbs->on_done(r, r->arg, status);
    free_req(r);
}

/* ---- Connections. ---- */

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

/* Closes a connection that no request uses any more (the caller detached it). After this only
 * the close callbacks touch uc, and they do not touch its origin. */
static void close_conn(upconn_t *uc)
{
    origin_t *o = uc->o;
    if (uc->closing)
        return;
    uc->closing = true;
    idle_remove(uc);
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

static upreq_t *detach(upconn_t *uc)
{
    upreq_t *r = uc->req;
    uc->req = NULL;
    if (r)
        r->uc = NULL;
    return r;
}

static void on_uc_timer(uv_timer_t *t);

static void arm(upconn_t *uc, uint64_t ms)
{
    if (ms == 0)
        uv_timer_stop(&uc->timer); /* 0 in the config means no limit */
    else
        uv_timer_start(&uc->timer, on_uc_timer, ms, 0);
}

static void arm_idle_body(upreq_t *r)
{
    r->last_body = uv_now(r->u->loop);
    if (r->uc)
        arm(r->uc, r->u->gcfg->upstream_idle_timeout_ms);
}

static void pool_put(upconn_t *uc)
{
    origin_t *o = uc->o;
    uc->state = UC_IDLE;
    uc->reused = true;
    uc->idle_prev = NULL;
    uc->idle_next = o->idle;
    if (o->idle)
        o->idle->idle_prev = uc;
    o->idle = uc;
    uc->in_idle = true;
    /* Keep reading while idle: a server-side close (or stray bytes) is noticed at once. */
    if (conn_read_start(&uc->conn, on_conn_read) < 0) {
        close_conn(uc);
        return;
    }
    arm(uc, uc->u->gcfg->upstream_keepalive_ms);
}

static bool retryable(const upconn_t *uc, const upreq_t *r)
{
    return uc->reused && !r->got_bytes && r->idempotent && !r->retried;
}

/* The request's connection is gone (already detached and closed) with err: an intercepted
 * response had told us all we needed, so go on with the next hop; otherwise report err. */
static void lost_conn(upreq_t *r, int err)
{
    if (r->intercept != IC_NONE)
        next_hop(r);
    else
        fail_later(r, err);
}

/* The connection failed under request r: retry once if it looks like a stale keep-alive,
 * else report err. The connection is closed either way. */
static void conn_failed(upconn_t *uc, int err)
{
    origin_t *o = uc->o;
    upreq_t *r = detach(uc);
    bool retry = r && retryable(uc, r);
    close_conn(uc);
    if (r) {
        if (retry) {
            LOG_DEBUG("upstream %s: %s: pooled connection failed (%s), retrying on a new one",
                      uc->u->ucfg->name, r->logline, err_str(err));
            r->retried = r->fresh = true;
            enqueue_wait(r, true);
        } else {
            lost_conn(r, err);
        }
    }
    dispatch(o);
}

/* ---- Sending a request on a connected conn. ---- */

static const llhttp_settings_t parser_settings;

static void on_req_written(conn_t *c, int status)
{
    upconn_t *uc = c->data;
    if (status < 0 && uc->req)
        conn_failed(uc, status);
}

static void send_request(upconn_t *uc)
{
    upstream_t *u = uc->u;
    upreq_t *r = uc->req;
    int rc;
    uc->state = UC_ACTIVE;
    if (!r->hdr) {
        /* Allocated only once a connection serves the request, so the wait queue stays
         * cheap. */
        r->hcap = u->gcfg->max_header_bytes;
        r->hdr = malloc(r->hcap ? r->hcap : 1);
        if (!r->hdr) {
            conn_failed(uc, -ENOMEM);
            return;
        }
    }
    r->headers_done = r->complete = r->got_bytes = r->toobig = r->has_pend = false;
    r->hlen = r->hdone = r->vstart = 0;
    r->status = 0;
    r->clen = UINT64_MAX;
    r->drained = 0;
    r->intercept = IC_NONE;
    /* A fresh parser per send: a request may be sent again after a whole response (a hop). */
    llhttp_init(&r->parser, HTTP_RESPONSE, &parser_settings);
    r->parser.data = r;
    uv_buf_t b = uv_buf_init(r->head, (unsigned)r->head_len);
    rc = conn_write(&uc->conn, &b, 1, on_req_written);
    if (rc == 0 && !r->paused)
        rc = conn_read_start(&uc->conn, on_conn_read);
    else if (rc == 0)
        conn_read_stop(&uc->conn);
    if (rc < 0) {
        conn_failed(uc, rc);
        return;
    }
    /* The response clock starts with the write, so a server that never reads is caught too. */
    arm(uc, u->gcfg->upstream_response_timeout_ms);
}

static void on_connected(conn_t *c, int status);

/* Opens connection number idx of origin o for r: the one place where connections are made.
 * Returns 0 (r is bound to the new conn) or an error. */
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
    int rc = 0;
    if (o->tls && !u->tls_ctx) {
        /* An http upstream that sends winch to an https origin (a CDN, a token realm): its
         * context is made now rather than at start, where it would cost every plain-HTTP
         * upstream the CA store's loading time. */
        char tls_err[512];
        rc = tls_client_ctx_for(u->ucfg, &u->tls_ctx, tls_err, sizeof tls_err);
        if (rc < 0)
            LOG_ERROR("upstream %s: %s", u->ucfg->name, tls_err);
    }
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
    arm(uc, u->gcfg->upstream_connect_timeout_ms);
    return 0;
}

static void on_connected(conn_t *c, int status)
{
    upconn_t *uc = c->data;
    origin_t *o = uc->o;
    if (status == 0) {
        send_request(uc);
        return;
    }
    if (conn_tls_error(c))
        LOG_WARN("upstream %s: %s: %s", o->u->ucfg->name, o->key, conn_tls_error(c));
    /* Refused or unreachable: try the next address (localhost is often ::1 then 127.0.0.1). */
    int next = uc->addr_idx + 1;
    upreq_t *r = detach(uc);
    close_conn(uc);
    if (next < o->naddrs && start_connect(o, r, next) == 0)
        return;
    fail_later(r, status);
    dispatch(o);
}

static void on_uc_timer(uv_timer_t *t)
{
    upconn_t *uc = t->data;
    upstream_t *u = uc->u;
    origin_t *o = uc->o;
    upreq_t *r = uc->req;
    if (uc->state == UC_IDLE || !r) {
        close_conn(uc);
        dispatch(o);
        return;
    }
    if (uc->state == UC_ACTIVE && r->headers_done) {
        if (r->paused)
            return; /* the idle clock does not run while the caller holds the body */
        uint64_t now = uv_now(u->loop), idle = u->gcfg->upstream_idle_timeout_ms;
        if (now - r->last_body < idle) {
            arm(uc, idle - (now - r->last_body));
            return;
        }
    }
    LOG_DEBUG("upstream %s: %s: timed out %s", u->ucfg->name, r->logline,
              uc->state == UC_CONNECTING ? "connecting"
              : r->headers_done          ? "waiting for body bytes"
                                         : "waiting for response headers");
    detach(uc);
    close_conn(uc);
    lost_conn(r, -ETIMEDOUT);
    dispatch(o);
}

/* ---- Rate limits (Docker Hub). ---- */

/* The leading number of "100;w=21600" (-1 if none), and its w= window (0 if none). */
static int64_t rl_number(const char *v, uint32_t *window)
{
    int64_t n = -1;
    const char *p = v;
    while (*p == ' ')
        p++;
    if (*p >= '0' && *p <= '9') {
        n = 0;
        for (int i = 0; *p >= '0' && *p <= '9' && i < 15; p++, i++)
            n = n * 10 + (*p - '0');
    }
    const char *w = strstr(v, "w=");
    if (w) {
        uint32_t s = 0;
        int i = 0;
        for (w += 2; *w >= '0' && *w <= '9' && i < 9; w++, i++)
            s = s * 10 + (uint32_t)(*w - '0');
        if (i > 0)
            *window = s;
    }
    return n;
}

static void note_ratelimit(upreq_t *r, int status)
{
    if (status == 429) {
        /* Seconds or an HTTP date: keep any short single-line printable value. */
        const char *ra = upreq_header(r, "Retry-After");
        char *out = r->u->rl.retry_after;
        size_t k = 0;
        for (const char *s = ra; s && *s && k + 1 < sizeof r->u->rl.retry_after; s++)
            if ((unsigned char)*s >= ' ' && (unsigned char)*s < 0x7f)
                out[k++] = *s;
        out[k] = '\0';
    }
    const char *lim = upreq_header(r, "RateLimit-Limit");
    const char *rem = upreq_header(r, "RateLimit-Remaining");
    if (!lim && !rem)
        return;
    upstream_ratelimit_t *rl = &r->u->rl;
    const char *src = upreq_header(r, "Docker-RateLimit-Source");
    int64_t before = rl->known ? rl->remaining : -2;
    rl->known = true;
    rl->window_s = 0;
    rl->limit = lim ? rl_number(lim, &rl->window_s) : -1;
    rl->remaining = rem ? rl_number(rem, &rl->window_s) : -1;
    size_t k = 0;
    for (const char *s = src; s && *s && k + 1 < sizeof rl->source; s++)
        if ((unsigned char)*s > ' ' && (unsigned char)*s < 0x7f)
            rl->source[k++] = *s; /* printable only: it goes into logs and metrics */
    rl->source[k] = '\0';
    rl->updated_ms = time_wall_ms();
    /* Low values are worth an info line each time they drop, not on every response. */
    if (rl->remaining >= 0 && rl->remaining < UP_RATELIMIT_LOW && rl->remaining != before)
        LOG_INFO("upstream %s: rate limit nearly used up: %lld of %lld pulls left (window %us)",
                 r->u->ucfg->name, (long long)rl->remaining, (long long)rl->limit,
                 (unsigned)rl->window_s);
    else
        LOG_DEBUG("upstream %s: rate limit: %lld of %lld pulls left (window %us)", r->u->ucfg->name,
                  (long long)rl->remaining, (long long)rl->limit, (unsigned)rl->window_s);
}

/* ---- Deciding what a response means. ---- */

static bool is_redirect(int status)
{
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

static bool has_credentials(const upstream_t *u)
{
    return u->ucfg->username && u->ucfg->password;
}

static bool starts_http(const char *s)
{
    return strncasecmp(s, "http://", 7) == 0 || strncasecmp(s, "https://", 8) == 0;
}

/* True when the caller passed its own Authorization for this origin. */
static bool caller_auth(const upreq_t *r)
{
    if (!r->extra || !r->o->primary)
        return false;
    for (const char *l = r->extra; *l; l = strstr(l, "\r\n") + 2)
        if (strncasecmp(l, "Authorization:", 14) == 0)
            return true;
    return false;
}

static enum intercept decide_redirect(upreq_t *r, int status)
{
    upstream_t *u = r->u;
    const char *loc = upreq_header(r, "Location");
    if (!loc || !*loc)
        return IC_NONE;
    if ((uint32_t)r->redirects >= u->gcfg->upstream_max_redirects) {
        LOG_WARN("upstream %s: %s: %d redirect not followed: at most %u redirects are followed",
                 u->ucfg->name, r->logline, status, (unsigned)u->gcfg->upstream_max_redirects);
        return IC_NONE;
    }
    url_t *base = malloc(sizeof *base);
    url_t *next = malloc(sizeof *next);
    int rc = -ENOMEM;
    if (base && next) {
        base->tls = r->o->tls;
        base->port = r->o->port;
        snprintf(base->host, sizeof base->host, "%s", r->o->host);
        snprintf(base->path, sizeof base->path, "%s", r->path);
        rc = url_resolve(next, base, loc);
    }
    free(base);
    if (rc < 0) {
        /* Never log the Location: a pre-signed URL is a credential. */
        LOG_WARN("upstream %s: %s: %d redirect not followed: unusable Location (%s)", u->ucfg->name,
                 r->logline, status, err_str(rc));
        free(next);
        return IC_NONE;
    }
    free(r->next_url);
    r->next_url = next;
    return IC_REDIRECT;
}

static enum intercept decide_auth(upreq_t *r)
{
    upstream_t *u = r->u;
    if (r->internal || r->auth_tries > 0 || caller_auth(r))
        return IC_NONE;
    auth_challenge_t *c = calloc(1, sizeof *c);
    if (!c)
        return IC_NONE;
    for (const char *v = upreq_header_next(r, "WWW-Authenticate", NULL); v;
         v = upreq_header_next(r, "WWW-Authenticate", v))
        (void)auth_challenge_parse(v, c);
    bool ok = false;
    if (c->scheme == AUTH_BEARER)
        ok = starts_http(c->realm);
    else if (c->scheme == AUTH_BASIC)
        /* Credentials go to the configured upstream only, and only once. */
        ok = r->o->primary && has_credentials(u) &&
             !(r->auth_basic && strcmp(r->auth_okey, r->o->key) == 0);
    if (!ok) {
        free(c);
        return IC_NONE;
    }
    free(r->chal);
    r->chal = c;
    return IC_AUTH;
}

/* Runs when a response's headers are in (inside llhttp, so it must not call user code). */
static enum intercept decide(upreq_t *r, int status)
{
    if (is_redirect(status) && r->idempotent)
        return decide_redirect(r, status);
    if (status == 401)
        return decide_auth(r);
    return IC_NONE;
}

/* ---- Response parsing (llhttp callbacks; r is parser.data). ---- */

static int hdr_append(upreq_t *r, const char *at, size_t len)
{
    if (len > r->hcap || r->hlen + len > r->hcap) {
        r->toobig = true;
        return -1;
    }
    memcpy(r->hdr + r->hlen, at, len);
    r->hlen += len;
    return 0;
}

static int on_hdr_field(llhttp_t *p, const char *at, size_t len)
{
    upreq_t *r = p->data;
    return r->headers_done ? 0 : hdr_append(r, at, len); /* trailers are ignored */
}

static int on_hdr_field_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (r->headers_done)
        return 0;
    if (hdr_append(r, "", 1) < 0)
        return -1;
    r->vstart = r->hlen;
    return 0;
}

static int on_hdr_value(llhttp_t *p, const char *at, size_t len)
{
    upreq_t *r = p->data;
    return r->headers_done ? 0 : hdr_append(r, at, len);
}

static int on_hdr_value_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (r->headers_done)
        return 0;
    /* Trim optional whitespace on both sides (llhttp already skips most leading space). */
    char *v = r->hdr + r->vstart;
    size_t n = r->hlen - r->vstart, s = 0;
    while (s < n && (v[s] == ' ' || v[s] == '\t'))
        s++;
    while (n > s && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    memmove(v, v + s, n - s);
    r->hlen = r->vstart + (n - s);
    if (hdr_append(r, "", 1) < 0)
        return -1;
    r->hdone = r->hlen;
    return 0;
}

static int on_hdrs_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    int status = llhttp_get_status_code(p);
    if (status >= 100 && status < 200) {
        if (status == 101)
            return -1; /* no protocol switches on a registry pull */
        /* Interim response: forget its headers; llhttp parses the real one next. */
        r->hlen = r->hdone = r->vstart = 0;
        return 0;
    }
    r->headers_done = true;
    r->status = status;
    if ((p->flags & F_CONTENT_LENGTH) && !(p->flags & (F_CHUNKED | F_TRANSFER_ENCODING)))
        r->clen = p->content_length;
    else
        r->clen = UINT64_MAX;
    if (r->uc)
        arm_idle_body(r);
    if (r->o->primary && !r->internal)
        note_ratelimit(r, status);
    r->intercept = decide(r, status);
    if (r->intercept != IC_NONE) {
        if (r->is_head)
            return 1;
        if (r->clen != UINT64_MAX && r->clen > UP_MAX_DRAIN)
            return HPE_PAUSED; /* not worth reading: after_execute drops the connection */
        return 0;
    }
    r->cbs->on_headers(r, r->arg, status);
    if (r->cancelled)
        return -1;
    if (r->is_head)
        return 1; /* a HEAD response has no body whatever its headers say */
    if (r->paused)
        return HPE_PAUSED;
    return 0;
}

static int on_body_span(llhttp_t *p, const char *at, size_t len)
{
    upreq_t *r = p->data;
    if (len == 0 || !r->headers_done)
        return 0;
    r->last_body = uv_now(r->u->loop);
    if (r->intercept != IC_NONE) {
        /* An intercepted response's body is nobody's: drop it, up to a bound. */
        r->drained += len;
        return r->drained > UP_MAX_DRAIN ? HPE_PAUSED : 0;
    }
    r->cbs->on_body(r, r->arg, at, len);
    if (r->cancelled)
        return -1;
    if (r->paused)
        return HPE_PAUSED;
    return 0;
}

static int on_msg_done(llhttp_t *p)
{
    upreq_t *r = p->data;
    if (!r->headers_done)
        return 0; /* end of an interim (1xx) response */
    r->complete = true;
    r->keepalive = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) >= 1 &&
                   llhttp_should_keep_alive(p);
    /* Stop llhttp here: completion, pooling and on_done run outside the parser. */
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_header_field = on_hdr_field,
    .on_header_field_complete = on_hdr_field_done,
    .on_header_value = on_hdr_value,
    .on_header_value_complete = on_hdr_value_done,
    .on_headers_complete = on_hdrs_done,
    .on_body = on_body_span,
    .on_message_complete = on_msg_done,
};

/* ---- Driving the parser. ---- */

static void finish_ok(upconn_t *uc, upreq_t *r, size_t leftover)
{
    upstream_t *u = uc->u;
    origin_t *o = uc->o;
    uv_timer_stop(&uc->timer);
    detach(uc);
    /* Bytes after the message, or a request still being written, leave the connection in an
     * unknown state: only a clean one goes back to the pool. */
    if (r->keepalive && leftover == 0 && !conn_writing(&uc->conn) && !u->destroying &&
        u->gcfg->upstream_keepalive_ms > 0)
        pool_put(uc);
    else
        close_conn(uc);
    if (r->intercept != IC_NONE)
        next_hop(r);
    else
        complete(r, 0);
    dispatch(o);
}

static void cancel_now(upreq_t *r)
{
    origin_t *o = r->o;
    unqueue(r);
    upconn_t *uc = r->uc;
    if (uc) {
        detach(uc);
        close_conn(uc);
    }
    free_req(r);
    dispatch(o);
}

/* Handles what llhttp_execute returned. Returns 1 when the caller may keep feeding the
 * connection's bytes to this request, 0 when it must stop (paused, done, failed, freed). */
static int after_execute(upconn_t *uc, upreq_t *r, llhttp_errno_t e, const char *end)
{
    if (r->cancelled) {
        cancel_now(r);
        return 0;
    }
    if (e == HPE_OK)
        return 1;
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&r->parser);
        if (r->complete) {
            finish_ok(uc, r, (size_t)(end - pos));
            return 0;
        }
        if (r->intercept != IC_NONE) {
            /* An intercepted response with a body not worth reading: drop the connection. */
            origin_t *o = uc->o;
            detach(uc);
            close_conn(uc);
            next_hop(r);
            dispatch(o);
            return 0;
        }
        /* Paused by the caller: the rest of this buffer waits for upreq_resume. */
        r->pend = pos;
        r->pend_len = (size_t)(end - pos);
        r->has_pend = true;
        conn_read_stop(&uc->conn);
        return 0;
    }
    LOG_DEBUG("upstream %s: %s: bad response: %s (%s)", r->u->ucfg->name, r->logline,
              llhttp_errno_name(e), llhttp_get_error_reason(&r->parser));
    conn_failed(uc, r->toobig ? WE_TOOBIG : WE_PROTO);
    return 0;
}

static int feed(upconn_t *uc, upreq_t *r, const char *data, size_t len)
{
    r->in_parser++;
    llhttp_errno_t e = llhttp_execute(&r->parser, data, len);
    r->in_parser--;
    return after_execute(uc, r, e, data + len);
}

static void on_eof(upconn_t *uc, upreq_t *r, int err)
{
    if (err == UV_EOF && r->headers_done && llhttp_message_needs_eof(&r->parser)) {
        /* A close-delimited body ends here, legitimately. */
        r->in_parser++;
        llhttp_errno_t e = llhttp_finish(&r->parser);
        r->in_parser--;
        (void)e;
        if (r->cancelled) {
            cancel_now(r);
            return;
        }
        if (r->complete) {
            r->keepalive = false;
            finish_ok(uc, r, 0);
            return;
        }
    }
    if (err == UV_EOF)
        err = r->headers_done ? WE_SHORT : r->got_bytes ? WE_PROTO : UV_EOF;
    conn_failed(uc, err);
}

static void on_conn_read(conn_t *c, ssize_t nread, const char *data)
{
    upconn_t *uc = c->data;
    upreq_t *r = uc->req;
    if (!r) {
        /* Idle pooled connection: the server closed it, or sent bytes nobody asked for. */
        LOG_DEBUG("upstream %s: pooled connection to %s %s", uc->u->ucfg->name, uc->o->key,
                  nread < 0 ? "closed by the server" : "got unexpected bytes");
        origin_t *o = uc->o;
        close_conn(uc);
        dispatch(o);
        return;
    }
    if (nread < 0) {
        on_eof(uc, r, (int)nread);
        return;
    }
    r->got_bytes = true;
    feed(uc, r, data, (size_t)nread);
}

/* ---- Deferred work: failures, replays and resumes. ---- */

static void do_resume(upreq_t *r)
{
    upconn_t *uc = r->uc;
    if (!uc || uc->state != UC_ACTIVE || r->paused || r->cancelled)
        return;
    if (r->headers_done && !r->complete)
        arm_idle_body(r);
    if (r->has_pend) {
        /* Feed the rest of the buffer the parser stopped in, even when empty: a pause on the
         * last body span leaves on_message_complete still to run. */
        const char *p = r->pend;
        size_t n = r->pend_len;
        r->has_pend = false;
        llhttp_resume(&r->parser);
        if (!feed(uc, r, p, n))
            return;
    }
    if (conn_read_start(&uc->conn, on_conn_read) < 0)
        conn_failed(uc, -EBADF);
}

/* The 401 that winch could not answer reaches the caller as it came, without its body: its
 * headers are still in r->hdr (nothing was sent since). */
static void replay(upreq_t *r)
{
    r->intercept = IC_NONE;
    r->clen = 0;
    r->in_parser++; /* a cancel from on_headers only marks r */
    r->cbs->on_headers(r, r->arg, r->status);
    r->in_parser--;
    if (r->cancelled) {
        cancel_now(r);
        return;
    }
    complete(r, 0);
}

static void on_defer(uv_timer_t *t)
{
    upstream_t *u = t->data;
    /* Only what is queued now: callbacks may queue more, which waits for the next round. */
    size_t n = 0;
    for (upreq_t *r = u->defer_head; r; r = r->next)
        n++;
    while (n-- > 0 && u->defer_head && !u->destroying) {
        upreq_t *r = u->defer_head;
        q_remove(&u->defer_head, &u->defer_tail, r);
        r->where = Q_NONE;
        if (r->defer_resume) {
            r->defer_resume = false;
            do_resume(r);
        } else if (r->defer_replay) {
            r->defer_replay = false;
            replay(r);
        } else {
            complete(r, r->defer_status);
        }
    }
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
        while (o->wait_head)
            fail_later(o->wait_head, status);
        return;
    }
    dispatch(o);
}

/* 1: addresses usable now; 0: a resolution is running (dispatch runs again when it ends);
 * < 0: the resolution could not start. */
static int ensure_addrs(origin_t *o)
{
    upstream_t *u = o->u;
    uint64_t now = uv_now(u->loop);
    if (o->naddrs > 0 && now < o->addrs_expire)
        return 1;
    if (o->naddrs == 0) {
        /* Literal addresses never go through the resolver. */
        struct sockaddr_in *s4 = (struct sockaddr_in *)&o->addrs[0];
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&o->addrs[0];
        memset(&o->addrs[0], 0, sizeof o->addrs[0]);
        if (inet_pton(AF_INET, o->host, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            s4->sin_port = htons(o->port);
        } else if (inet_pton(AF_INET6, o->host, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons(o->port);
        }
        if (o->addrs[0].ss_family != 0) {
            o->naddrs = 1;
            o->addrs_expire = UINT64_MAX;
            return 1;
        }
    }
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

/* ---- Dispatch: give waiting requests a connection. Never calls user callbacks. ---- */

static void dispatch(origin_t *o)
{
    upstream_t *u = o->u;
    /* The connection bound applies per origin: the registry and its CDN are different
     * servers. */
    uint32_t max = u->gcfg->upstream_max_conns ? u->gcfg->upstream_max_conns : 1;
    while (o->wait_head && !u->destroying) {
        upreq_t *r = o->wait_head;
        if (!r->fresh && o->idle) {
            upconn_t *uc = o->idle;
            idle_remove(uc);
            unqueue(r);
            uc->req = r;
            r->uc = uc;
            uv_timer_stop(&uc->timer);
            send_request(uc);
            continue;
        }
        if (o->nconns >= max) {
            if (r->fresh && o->idle) {
                close_conn(o->idle); /* make room for the fresh connection */
                continue;
            }
            break;
        }
        int rc = ensure_addrs(o);
        if (rc == 0)
            break;
        unqueue(r);
        if (rc > 0)
            rc = start_connect(o, r, 0);
        if (rc < 0)
            fail_later(r, rc);
    }
}

/* ---- Origins. ---- */

static int origin_init(origin_t *o, upstream_t *u, bool tls, const char *host, uint16_t port)
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

/* Frees an origin nobody uses: its idle connections close, a resolution in flight is
 * orphaned. */
static void origin_free(origin_t *o)
{
    while (o->conns) {
        upconn_t *uc = o->conns;
        detach(uc);
        close_conn(uc);
    }
    if (o->dns) {
        o->dns->o = NULL;
        (void)uv_cancel((uv_req_t *)&o->dns->req);
        o->dns = NULL;
    }
    free(o);
}

/* The origin for (tls, host, port), created when new. Returns 0, -EAGAIN when the table is
 * full of origins in use, WE_INVALID, -ENOMEM. */
static int origin_get(upstream_t *u, bool tls, const char *host, uint16_t port, origin_t **out)
{
    for (int i = 0; i < u->norigins; i++) {
        origin_t *o = u->origins[i];
        if (o->tls == tls && o->port == port && strcmp(o->host, host) == 0) {
            *out = o;
            return 0;
        }
    }
    if (u->norigins == UP_MAX_ORIGINS) {
        /* Evict the least recently used origin that no request needs; its idle connections
         * go with it. A request bound to, waiting on or parked at an origin counts in
         * nreqs, and every connection that is not idle has a request. */
        int victim = -1;
        for (int i = 1; i < u->norigins; i++) {
            origin_t *o = u->origins[i];
            if (o->nreqs == 0 && (victim < 0 || o->last_used < u->origins[victim]->last_used))
                victim = i;
        }
        if (victim < 0)
            return -EAGAIN;
        LOG_DEBUG("upstream %s: forgetting origin %s", u->ucfg->name, u->origins[victim]->key);
        origin_free(u->origins[victim]);
        u->origins[victim] = u->origins[--u->norigins];
    }
    origin_t *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    int rc = origin_init(o, u, tls, host, port);
    if (rc < 0) {
        free(o);
        return rc;
    }
    u->origins[u->norigins++] = o;
    *out = o;
    return 0;
}

/* ---- Request heads. ---- */

static bool line_is_auth(const char *l)
{
    return strncasecmp(l, "Authorization:", 14) == 0;
}

/* (Re)builds r's request head for its current origin and path. Authorization goes only where
 * it belongs: winch's own to the origin it was obtained for, the caller's to the primary. */
static int build_head(upreq_t *r)
{
    static const char ua[] = "User-Agent: " UP_USER_AGENT "\r\n";
    static const char keep[] = "Connection: keep-alive\r\n";
    origin_t *o = r->o;
    bool own_auth = r->auth_hdr && strcmp(r->auth_okey, o->key) == 0;
    size_t need = strlen(r->method) + 1 + strlen(r->path) + sizeof " HTTP/1.1\r\n" - 1;
    need += sizeof "Host: \r\n" - 1 + strlen(o->host_hdr) + sizeof ua - 1 + sizeof keep - 1 + 2;
    if (r->extra)
        need += strlen(r->extra);
    if (own_auth)
        need += strlen(r->auth_hdr) + 2;
    if (need > UP_MAX_HEAD)
        return WE_TOOBIG;
    char *h = malloc(need + 1);
    if (!h)
        return -ENOMEM;
    int n = snprintf(h, need + 1, "%s %s HTTP/1.1\r\nHost: %s\r\n%s%s", r->method, r->path,
                     o->host_hdr, ua, keep);
    size_t len = (size_t)n;
    for (const char *l = r->extra; l && *l;) {
        const char *e = strstr(l, "\r\n") + 2;
        if (o->primary || !line_is_auth(l)) {
            memcpy(h + len, l, (size_t)(e - l));
            len += (size_t)(e - l);
        }
        l = e;
    }
    if (own_auth) {
        size_t k = strlen(r->auth_hdr);
        memcpy(h + len, r->auth_hdr, k);
        memcpy(h + len + k, "\r\n", 2);
        len += k + 2;
    }
    memcpy(h + len, "\r\n", 2);
    len += 2;
    h[len] = '\0';
    if (r->head)
        OPENSSL_cleanse(r->head, r->head_len);
    free(r->head);
    r->head = h;
    r->head_len = len;
    snprintf(r->logline, sizeof r->logline, "%s %s%.*s", r->method, o->primary ? "" : o->key,
             (int)strcspn(r->path, "?"), r->path);
    return 0;
}

/* Queues r (rebuilt) on origin o: the next hop of a request, or its first. */
static int send_to(upreq_t *r, origin_t *o)
{
    set_origin(r, o);
    int rc = build_head(r);
    if (rc < 0)
        return rc;
    r->fresh = r->retried = false;
    enqueue_wait(r, false);
    dispatch(o);
    return 0;
}

static int set_bearer(upreq_t *r, const origin_t *o, const char *token, uint64_t gen)
{
    static const char prefix[] = "Authorization: Bearer ";
    size_t n = sizeof prefix + strlen(token);
    char *h = malloc(n);
    if (!h)
        return -ENOMEM;
    snprintf(h, n, "%s%s", prefix, token);
    clear_auth(r);
    r->auth_hdr = h;
    snprintf(r->auth_okey, sizeof r->auth_okey, "%s", o->key);
    r->auth_gen = gen;
    return 0;
}

static int set_basic(upreq_t *r, const origin_t *o)
{
    const config_upstream_t *c = r->u->ucfg;
    char buf[1500];
    int rc = auth_basic_header(c->username, c->password, buf, sizeof buf);
    if (rc == 0) {
        char *h = strdup(buf);
        if (!h) {
            rc = -ENOMEM;
        } else {
            clear_auth(r);
            r->auth_hdr = h;
            snprintf(r->auth_okey, sizeof r->auth_okey, "%s", o->key);
            r->auth_basic = true;
        }
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return rc;
}

/* Before the first hop: credentials the upstream is known to want, so a warm cache needs no
 * 401 round trip. */
static void attach_known_auth(upreq_t *r)
{
    upstream_t *u = r->u;
    origin_t *o = u->origins[0];
    if (caller_auth(r))
        return;
    if (u->basic && has_credentials(u)) {
        (void)set_basic(r, o);
        return;
    }
    char scope[600];
    if (auth_repo_scope(r->path, u->ucfg->base_path, scope, sizeof scope) < 0)
        return;
    uint64_t gen;
    const char *tok = auth_cache_find_scope(u->tokens, scope, time_wall_ms(), &gen);
    if (tok)
        (void)set_bearer(r, o, tok, gen);
}

/* ---- Hops: redirects and auth. ---- */

static int follow_redirect(upreq_t *r)
{
    upstream_t *u = r->u;
    url_t *nu = r->next_url;
    r->next_url = NULL;
    origin_t *o;
    int rc = origin_get(u, nu->tls, nu->host, nu->port, &o);
    if (rc < 0) {
        LOG_WARN("upstream %s: %s: cannot follow a redirect to %s://%s:%u: %s", u->ucfg->name,
                 r->logline, nu->tls ? "https" : "http", nu->host, (unsigned)nu->port, err_str(rc));
        goto out;
    }
    char *p = strdup(nu->path);
    if (!p) {
        rc = -ENOMEM;
        goto out;
    }
    free(r->path);
    r->path = p;
    if (r->status == 303 && !r->is_head)
        snprintf(r->method, sizeof r->method, "GET");
    r->redirects++;
    LOG_DEBUG("upstream %s: %s -> %d, redirect %d to %s%.*s", u->ucfg->name, r->logline, r->status,
              r->redirects, o->key, (int)strcspn(r->path, "?"), r->path);
    rc = send_to(r, o);
out:
    free(nu);
    return rc;
}

/* ---- Token flights: one token fetch per cache key, however many requests need it. ---- */

static void token_op_free(token_op_t *op)
{
    buf_free_secret(&op->body);
    free(op);
}

static void tf_on_headers(upreq_t *t, void *arg, int status)
{
    token_op_t *op = arg;
    op->status = status;
    uint64_t cl = upreq_content_length(t);
    if (status == 200 && cl != UINT64_MAX && cl > AUTH_MAX_BODY)
        op->too_big = true;
}

static void tf_on_body(upreq_t *t, void *arg, const char *data, size_t len)
{
    token_op_t *op = arg;
    (void)t;
    if (op->status != 200 || op->too_big)
        return;
    if (buf_append(&op->body, data, len) < 0)
        op->too_big = true; /* over AUTH_MAX_BODY (or out of memory): no token from this */
}

/* The token fetch ended: the flight lands, and every waiting request goes on with the token,
 * or fails. */
static void tf_on_done(upreq_t *t, void *arg, int err)
{
    token_op_t *op = arg;
    upstream_t *u = op->u;
    (void)t;
    char *token = NULL;
    int64_t expires = 0;
    uint64_t gen = 0;
    int perr = 0;
    if (err == 0 && op->status == 200 && !op->too_big) {
        int64_t now = time_wall_ms();
        perr = auth_token_parse(op->body.p ? op->body.p : "", op->body.len, now, &token, &expires);
        if (perr == 0) {
            if (auth_cache_put(u->tokens, flight_key(op->fl), op->proactive, token, expires, &gen) <
                0)
                gen = 0;
            LOG_DEBUG("upstream %s: got a token, valid for %llds", u->ucfg->name,
                      (long long)((expires - now) / 1000));
        }
    }
    if (!token) {
        if (err)
            LOG_WARN("upstream %s: token request failed: %s", u->ucfg->name, err_str(err));
        else if (op->status != 200)
            LOG_WARN("upstream %s: token request answered %d", u->ucfg->name, op->status);
        else
            LOG_WARN("upstream %s: token request gave no usable token (%s)", u->ucfg->name,
                     err_str(op->too_big ? WE_TOOBIG : perr));
    }
    token_result_t res = {.token = token, .gen = gen, .err = token ? 0 : err};
    flight_land(op->fl, &res);
    if (token) {
        OPENSSL_cleanse(token, strlen(token));
        free(token);
    }
    token_op_free(op);
}

static const upreq_cbs_t token_op_cbs = {
    .on_headers = tf_on_headers,
    .on_body = tf_on_body,
    .on_done = tf_on_done,
};

/* A request's token flight landed: it goes on with the token, or fails. */
static void on_token_landed(flight_waiter_t *w, void *result)
{
    upreq_t *r = container_of(w, upreq_t, token_wait);
    const token_result_t *res = result;
    r->where = Q_NONE;
    if (r->u->destroying) {
        LOG_WARN("upstream %s: destroyed with a request waiting for a token", r->u->ucfg->name);
        free_req(r);
        return;
    }
    int rc = 0;
    if (res->token) {
        rc = set_bearer(r, r->o, res->token, res->gen);
        if (rc == 0)
            rc = send_to(r, r->o);
        if (rc < 0)
            fail_later(r, rc);
    } else if (res->err) {
        fail_later(r, res->err); /* the realm is unreachable: say so, like the upstream itself */
    } else {
        replay_later(r);
    }
}

static int req_create(upreq_t **out, upstream_t *u, const char *method, const char *path,
                      const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg);

/* Starts the fetch of flight f, which answers challenge c. */
static int start_fetch(upstream_t *u, flight_t *f, const auth_challenge_t *c, bool from_primary)
{
    int rc;
    token_op_t *op = NULL;
    upreq_t *t = NULL;
    char *turl = malloc(URL_MAX + 1);
    url_t *tu = malloc(sizeof *tu);
    op = calloc(1, sizeof *op);
    if (!turl || !tu || !op) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = auth_token_url(c, turl, URL_MAX + 1);
    if (rc == 0)
        rc = url_parse(tu, turl);
    if (rc < 0)
        goto fail;
    origin_t *o;
    rc = origin_get(u, tu->tls, tu->host, tu->port, &o);
    if (rc < 0)
        goto fail;
    op->u = u;
    op->fl = f;
    op->proactive = from_primary;
    buf_init(&op->body, AUTH_MAX_BODY);
    static const char *const hdrs[] = {"Accept: application/json", NULL};
    rc = req_create(&t, u, "GET", tu->path, hdrs, &token_op_cbs, op);
    if (rc < 0)
        goto fail;
    t->internal = true;
    /* The configured credentials go to the realm the configured upstream named, never to one
     * a redirect target named. */
    if (from_primary && has_credentials(u)) {
        rc = set_basic(t, o);
        if (rc < 0)
            goto fail;
    }
    rc = send_to(t, o);
    if (rc < 0)
        goto fail;
    flight_set_op(f, op);
    LOG_DEBUG("upstream %s: fetching a token from %s%.*s (%s)", u->ucfg->name, o->key,
              (int)strcspn(tu->path, "?"), tu->path, c->scope[0] ? c->scope : "no scope");
    free(turl);
    free(tu);
    return 0;
fail:
    if (t)
        free_req(t);
    free(op);
    free(turl);
    free(tu);
    return rc;
}

/* r waits for the token of challenge c (cache key key): it joins the flight for that key, or
 * starts one. Returns 0 (r is waiting) or an error (r is not). */
static int wait_token(upreq_t *r, const auth_challenge_t *c, const char *key)
{
    upstream_t *u = r->u;
    flight_t *f;
    bool created;
    int rc = flight_join(u->token_flights, key, &r->token_wait, on_token_landed, &f, &created);
    if (rc < 0)
        return rc;
    if (created) {
        if (flight_table_count(u->token_flights) > UP_MAX_TOKEN_FETCHES)
            rc = -EAGAIN;
        else
            rc = start_fetch(u, f, c, r->o->primary);
        if (rc < 0) {
            flight_drop(flight_leave(&r->token_wait));
            return rc;
        }
    }
    r->where = Q_TOKEN;
    return 0;
}

/* Answers the 401 r got. Returns 0 when r is on its way (sent again, waiting for a token, or
 * replaying the 401 to its caller), else an error to report. */
static int start_auth(upreq_t *r)
{
    upstream_t *u = r->u;
    auth_challenge_t *c = r->chal;
    r->chal = NULL;
    r->auth_tries++;
    int rc;
    if (c->scheme == AUTH_BASIC) {
        rc = set_basic(r, r->o);
        if (rc == 0) {
            if (!u->basic)
                LOG_INFO("upstream %s: asks for Basic auth; sending the configured credentials",
                         u->ucfg->name);
            u->basic = true;
            rc = send_to(r, r->o);
        } else {
            LOG_WARN("upstream %s: cannot use the configured credentials: %s", u->ucfg->name,
                     err_str(rc));
            replay_later(r);
            rc = 0;
        }
        goto out;
    }
    LOG_DEBUG("upstream %s: %s -> 401, answering its Bearer challenge (%s)", u->ucfg->name,
              r->logline, c->error[0] ? c->error : "no error given");
    char key[AUTH_MAX_KEY];
    rc = auth_token_key(c, key, sizeof key);
    if (rc < 0) {
        LOG_WARN("upstream %s: %s: unusable Bearer challenge (%s)", u->ucfg->name, r->logline,
                 err_str(rc));
        replay_later(r);
        rc = 0;
        goto out;
    }
    uint64_t gen = 0;
    const char *tok = auth_cache_get(u->tokens, key, time_wall_ms(), &gen);
    if (tok && gen != r->auth_gen) {
        /* Someone else already has a fresh token for this challenge. */
        rc = set_bearer(r, r->o, tok, gen);
        if (rc == 0)
            rc = send_to(r, r->o);
        goto out;
    }
    if (tok)
        auth_cache_drop(u->tokens, gen); /* the token r carried was refused: forget it */
    unqueue(r);
    rc = wait_token(r, c, key);
    if (rc < 0) {
        LOG_WARN("upstream %s: %s: cannot fetch a token: %s", u->ucfg->name, r->logline,
                 err_str(rc));
        replay_later(r);
        rc = 0;
    }
out:
    free(c);
    return rc;
}

/* The response r got was intercepted and has been read (or its connection dropped): go on. */
static void next_hop(upreq_t *r)
{
    enum intercept ic = r->intercept;
    r->intercept = IC_NONE;
    int rc = ic == IC_REDIRECT ? follow_redirect(r) : start_auth(r);
    if (rc < 0)
        fail_later(r, rc);
}

/* ---- Public API. ---- */

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
    origin_t *o = calloc(1, sizeof *o);
    if (!o) {
        rc = -ENOMEM;
        goto fail;
    }
    u->origins[0] = o;
    u->norigins = 1;
    rc = origin_init(o, u, ucfg->tls, ucfg->host, ucfg->port);
    if (rc < 0)
        goto fail;
    o->primary = true;
    rc = auth_cache_create(&u->tokens, UP_MAX_TOKENS);
    if (rc == 0)
        rc = flight_table_create(&u->token_flights);
    if (rc < 0)
        goto fail;
    /* An https upstream's context is made (and its CA file checked) at start; an http
     * upstream gets one only if it ever redirects to an https origin (start_connect). */
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
    free(h->data);
}

/* Frees a request left over at destroy time, without callbacks. A token fetch's own request
 * takes its flight down with it: the requests waiting for that token are freed as it lands. */
static void abandon(upreq_t *r, const char *what)
{
    if (r->internal) {
        token_op_t *op = r->arg;
        token_result_t res = {.err = WE_CANCELLED};
        flight_land(op->fl, &res);
        token_op_free(op);
    } else if (what) {
        LOG_WARN("upstream %s: destroyed with a request %s", r->u->ucfg->name, what);
    }
    free_req(r);
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
        while (o->wait_head) {
            upreq_t *r = o->wait_head;
            unqueue(r);
            abandon(r, "still waiting");
        }
    }
    while (u->defer_head) {
        upreq_t *r = u->defer_head;
        unqueue(r);
        abandon(r, NULL);
    }
    for (int i = 0; i < u->norigins; i++) {
        origin_t *o = u->origins[i];
        while (o->conns) {
            upconn_t *uc = o->conns;
            upreq_t *r = detach(uc);
            if (r)
                abandon(r, "in flight");
            close_conn(uc);
        }
    }
    for (int i = 0; i < u->norigins; i++)
        origin_free(u->origins[i]);
    u->norigins = 0;
    flight_table_free(u->token_flights);
    u->token_flights = NULL;
    auth_cache_free(u->tokens);
    u->tokens = NULL;
    tls_ctx_free(u->tls_ctx); /* live SSL objects hold their own reference */
    u->tls_ctx = NULL;
    uv_close((uv_handle_t *)&u->defer_timer, on_upstream_closed);
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

static bool valid_token(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || s[i] == '-'))
            return false;
    return true;
}

/* No control characters and no spaces: nothing that could split the request line. */
static bool valid_path(const char *s)
{
    if (s[0] != '/')
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f)
            return false;
    return true;
}

/* "Name: value" with no CR or LF (which would inject headers). */
static bool valid_header_line(const char *s)
{
    const char *colon = strchr(s, ':');
    if (!colon || colon == s)
        return false;
    return strpbrk(s, "\r\n") == NULL;
}

/* A request, not yet queued anywhere (send_to does that). */
static int req_create(upreq_t **out, upstream_t *u, const char *method, const char *path,
                      const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg)
{
    int rc;
    size_t xlen = 0;
    if (!valid_token(method, 16) || !valid_path(path))
        return WE_INVALID;
    for (const char *const *h = extra_headers; h && *h; h++) {
        if (!valid_header_line(*h))
            return WE_INVALID;
        xlen += strlen(*h) + 2;
        if (xlen > UP_MAX_HEAD)
            return WE_TOOBIG;
    }
    upreq_t *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->path = strdup(path);
    if (!r->path) {
        rc = -ENOMEM;
        goto fail;
    }
    if (xlen > 0) {
        r->extra = malloc(xlen + 1);
        if (!r->extra) {
            rc = -ENOMEM;
            goto fail;
        }
        size_t len = 0;
        for (const char *const *h = extra_headers; *h; h++) {
            size_t k = strlen(*h);
            memcpy(r->extra + len, *h, k);
            memcpy(r->extra + len + k, "\r\n", 2);
            len += k + 2;
        }
        r->extra[len] = '\0';
    }
    snprintf(r->method, sizeof r->method, "%s", method);
    r->u = u;
    r->cbs = cbs;
    r->arg = arg;
    r->is_head = strcmp(method, "HEAD") == 0;
    r->idempotent = r->is_head || strcmp(method, "GET") == 0;
    r->clen = UINT64_MAX;
    llhttp_init(&r->parser, HTTP_RESPONSE, &parser_settings);
    r->parser.data = r;
    *out = r;
    return 0;
fail:
    free_req(r);
    return rc;
}

int upreq_start(upreq_t **out, upstream_t *u, const char *method, const char *path,
                const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg)
{
    int rc;
    upreq_t *r = NULL;
    if (u->destroying || !cbs || !cbs->on_headers || !cbs->on_body || !cbs->on_done)
        return -EINVAL;
    origin_t *o = u->origins[0];
    if (o->nwait >= UP_MAX_QUEUE)
        return -EAGAIN;
    rc = req_create(&r, u, method, path, extra_headers, cbs, arg);
    if (rc < 0)
        return rc;
    set_origin(r, o);
    attach_known_auth(r);
    rc = build_head(r);
    if (rc < 0)
        goto fail;
    enqueue_wait(r, false);
    *out = r;
    /* The loop's clock is stale when the caller spent time since the last poll; timeouts
     * armed now should count from now. */
    uv_update_time(u->loop);
    dispatch(o);
    return 0;
fail:
    if (r)
        free_req(r);
    return rc;
}

void upreq_pause(upreq_t *r)
{
    if (r->paused || r->cancelled)
        return;
    r->paused = true;
    if (r->where == Q_DEFER && r->defer_resume) {
        unqueue(r);
        r->defer_resume = false;
    }
    upconn_t *uc = r->uc;
    if (!uc || uc->state != UC_ACTIVE)
        return;
    if (r->headers_done)
        uv_timer_stop(&uc->timer);
    /* Inside a callback the parser stops on HPE_PAUSED and reading stops after it returns. */
    if (!r->in_parser)
        conn_read_stop(&uc->conn);
}

void upreq_resume(upreq_t *r)
{
    if (!r->paused || r->cancelled)
        return;
    r->paused = false;
    upconn_t *uc = r->uc;
    if (!uc || uc->state != UC_ACTIVE)
        return; /* not sent yet: send_request starts reading */
    if (r->in_parser) {
        /* Resumed in the same callback that paused: the parser simply goes on. */
        if (r->headers_done && !r->complete)
            arm_idle_body(r);
        return;
    }
    if (r->where == Q_DEFER)
        return;
    r->defer_resume = true;
    defer(r);
}

void upreq_cancel(upreq_t *r)
{
    if (r->cancelled)
        return;
    r->cancelled = true;
    if (r->in_parser)
        return; /* torn down when llhttp returns (after_execute) */
    cancel_now(r);
}

const char *upreq_header_next(const upreq_t *r, const char *name, const char *prev)
{
    if (!r->hdr)
        return NULL;
    const char *p = prev ? prev + strlen(prev) + 1 : r->hdr;
    const char *end = r->hdr + r->hdone;
    if (p < r->hdr || p > end)
        return NULL;
    while (p < end) {
        const char *n = p;
        const char *v = n + strlen(n) + 1;
        if (v >= end)
            break;
        if (strcasecmp(n, name) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

const char *upreq_header(const upreq_t *r, const char *name)
{
    return upreq_header_next(r, name, NULL);
}

uint64_t upreq_content_length(const upreq_t *r)
{
    return r->clen;
}

int upreq_redirects(const upreq_t *r)
{
    return r->redirects;
}
