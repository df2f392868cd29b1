/* The upstream client's private header: its objects and the functions its files give each
 * other. Nothing outside proxy/upstream*.c includes it.
 *
 * Files, each calling only the ones below it:
 *
 *   upstream.c        the public API (upstream.h): create and destroy, upreq_start, pause,
 *        |            resume, cancel, rate limits
 *        v
 *   upstream_wire.c   one exchange on a connection: sending the head, parsing the answer
 *        |            (llhttp), delivering the body with flow control, response and idle
 *        |            timeouts, handing the connection back for keep-alive
 *        v
 *   upstream_hops.c   what an answer means (redirect, 401, rate-limit headers) and where the
 *        |            request goes next: redirects followed, 401s handed to auth
 *        v
 *   upstream_auth.c   answering 401s: Basic credentials, Bearer tokens from the token cache or
 *        |            a token flight (common/flight.h); the credentials sent up front
 *        v
 *   upstream_pool.c   origins, their addresses (lazy DNS), connections, connect and keep-alive
 *        |            timeouts, and the queue of requests waiting for a connection
 *        v
 *   upstream_req.c    the request object: creation, state, request head, response headers,
 *                     completion and the deferred list that reports endings
 *
 * Two calls go up: when the pool has a connection for a request (a pooled one, or a new one
 * that just connected), it calls u->conn_ready, which upstream_create points at the wire's
 * wire_send; and the deadline timer that upstream_req.c arms runs u->deadline_cb
 * (upstream.c), which ends requests wherever they are. Everything else a lower file learns
 * about is in the request's state, or comes back through the public callbacks (a token fetch
 * is an upreq like any caller's).
 *
 * The request's life (enum upreq_state below; req_set_state checks every change against
 * the table in upstream_req.c):
 *
 *   NEW             -> QUEUED      its first hop
 *   QUEUED          -> SENT        a pooled connection serves it
 *                   -> CONNECTING  a new connection is opened for it
 *   CONNECTING      -> SENT        connected (-> CONNECTING again: the next address)
 *   SENT            -> BODY        the answer's head goes to the caller
 *                   -> DRAINING    the answer is a hop (redirect, 401): its body is dropped
 *                   -> QUEUED      a stale pooled connection: retried once on a new one
 *   BODY            -> PAUSED -> RESUMING -> BODY    flow control (upreq_pause, upreq_resume)
 *   BODY, DRAINING  -> COMPLETE    the whole answer is in
 *   COMPLETE        -> DONE        on_done(0), then freed
 *   DRAINING, COMPLETE (a hop)
 *                   -> QUEUED      the next hop, at the same or another origin
 *                   -> TOKEN       waiting for a token flight; -> QUEUED when it lands
 *   any of these    -> ENDING -> DONE   a failure, or a 401 that cannot be answered, reported
 *                                       (on_done(err), or the 401 replayed) from the deferred
 *                                       list
 *   any but DONE    -> CANCELLED   upreq_cancel inside a parser callback, freed when llhttp
 *                                  returns (outside one, the request is freed at once)
 */
#ifndef WINCH_PROXY_UPSTREAM_INTERNAL_H
#define WINCH_PROXY_UPSTREAM_INTERNAL_H

#include <llhttp.h>
#include <openssl/types.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "common/buf.h"
#include "common/flight.h"
#include "proxy/auth.h"
#include "proxy/conn.h"
#include "proxy/upstream.h"
#include "proxy/url.h"

/* Read buffer per upstream connection: large enough that a fast upstream fills few reads. */
#define UP_RBUF (128 * 1024)
/* The wait queue's lanes (enum upreq_lane). */
#define UP_LANES 2
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
/* Tokens cached per upstream, and token flights running at once. */
#define UP_MAX_TOKENS 64
#define UP_MAX_TOKEN_FETCHES 32
/* "scheme://host:port" */
#define UP_OKEY_MAX (sizeof "https://[]:65535" + URL_MAX_HOST)
/* A request line for logs: method, origin when not the primary one, path without query. */
#define UP_LOGLINE 340
/* Docker Hub's remaining pulls below this are logged at info. */
#define UP_RATELIMIT_LOW 10

typedef struct upconn upconn_t;
typedef struct origin origin_t;

/* Where a request is in its life. Which list holds it follows from the state: QUEUED, its
 * origin's wait queue; TOKEN, a token flight; ENDING, the deferred list. A request bound to a
 * connection (r->uc) is CONNECTING, SENT, DRAINING, BODY, PAUSED, RESUMING or COMPLETE. */
enum upreq_state {
    UR_NEW,        /* created, in no list yet */
    UR_QUEUED,     /* in its origin's wait queue for a connection */
    UR_CONNECTING, /* bound to a connection being opened (connect timeout) */
    UR_SENT,       /* head written (or being written); awaiting the response head (response
                      timeout) */
    UR_DRAINING,   /* the answer is a hop (redirect, 401): its body is read and dropped */
    UR_BODY,       /* the head went to the caller; body bytes are delivered as they come */
    UR_PAUSED,     /* the caller holds the body (upreq_pause): the connection is not read, the
                      unparsed rest of the read buffer waits in pend */
    UR_RESUMING,   /* upreq_resume ran: delivery restarts from the connection's timer (0 ms) */
    UR_COMPLETE,   /* the whole answer is in; it is finished outside the parser */
    UR_TOKEN,      /* waiting for a token flight (r->token_wait) */
    UR_ENDING,     /* in no list but the deferred one: on_done(end_status), or the 401 that
                      could not be answered replayed, on the next loop iteration */
    UR_DONE,       /* on_done is running; the request is freed when it returns */
    UR_CANCELLED,  /* upreq_cancel ran inside a parser callback: freed when llhttp returns */
};

/* A connection's state. A CONNECTING or ACTIVE one is bound to a request (uc->req). */
enum uc_state {
    UC_CONNECTING, /* connect (and TLS handshake) running; connect timeout */
    UC_ACTIVE,     /* an exchange runs; the wire's timeouts */
    UC_IDLE,       /* in the pool (on the idle stack), still reading; keep-alive timeout */
    UC_CLOSED,     /* closing: only the close callbacks touch it */
};

struct upconn {
    conn_t conn;
    uv_timer_t timer; /* whose callback depends on the state: pool's or wire's */
    upstream_t *u;
    origin_t *o;
    upreq_t *req; /* bound request (CONNECTING, ACTIVE), NULL otherwise */
    enum uc_state state;
    int open_handles;                /* after close: handles whose close callback is due */
    bool reused;                     /* served a request before: may be a stale keep-alive */
    bool bulk;                       /* bound to a bulk-lane request (counted in o->nbulk) */
    int addr_idx;                    /* address being tried */
    upconn_t *prev, *next;           /* every live conn of the origin */
    upconn_t *idle_prev, *idle_next; /* idle stack */
};

struct upreq {
    upstream_t *u;
    enum upreq_state state;
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
    uint64_t req_id;          /* upreq_opts_t.req_id: "req=N " leads logline; 0 = none */
    /* Facts that hold whatever the state. */
    bool is_head, idempotent;
    bool internal;      /* a token fetch: no auth handling, callbacks are upstream_auth.c's */
    bool fresh;         /* must not take a pooled connection (retry after a stale one) */
    bool retried;       /* the one stale-connection retry was used */
    bool hold;          /* upreq_pause came before the head: pause as soon as the caller has it */
    bool bulk;          /* waits in the bulk lane; uses no more than the bulk share of conns */
    uint64_t queued_at; /* QUEUED: uv_now when it joined its origin's queue */
    /* The whole-exchange deadline (upreq_opts_t.deadline_ms): uv_now ms, and the links of the
     * upstream's deadline list (sorted by deadline_at) while in it. */
    uint64_t deadline_at;
    bool in_dl;
    upreq_t *dl_prev, *dl_next;
    int abort_err;  /* upreq_abort inside a parser callback: the wire ends r with it */
    int redirects;  /* followed so far */
    int auth_tries; /* 401s answered so far */
    /* The hop a DRAINING or COMPLETE answer asks for: one of them, or neither. */
    url_t *next_url;        /* a redirect: where to, owned */
    auth_challenge_t *chal; /* a 401: the challenge to answer, owned */
    /* Lists: the wait queue (QUEUED) or the deferred list (ENDING); a token flight (TOKEN). */
    upreq_t *prev, *next;
    flight_waiter_t token_wait;
    int end_status;  /* ENDING: what on_done gets */
    bool end_replay; /* ENDING: show the stored 401 to the caller first */
    /* Response. */
    llhttp_t parser;
    char *hdr; /* "name\0value\0"..., max_header_bytes, owned */
    size_t hlen, hcap, vstart;
    size_t hdone; /* bytes of hdr holding complete entries */
    int status;
    uint64_t clen;
    uint64_t drained;     /* body bytes of an intercepted response read and dropped */
    bool keepalive;       /* COMPLETE: the connection may serve another request */
    bool got_bytes;       /* some of the answer arrived */
    bool toobig;          /* the head passed max_header_bytes */
    int in_parser;        /* > 0 while llhttp runs over the conn's buffer for this request */
    int splice_fd;        /* upreq_splice_body's pipe, -1 when the body goes through on_body */
    bool splicing;        /* the rest of the body moves by splice (the parser is left behind) */
    uint64_t splice_left; /* splicing: body bytes still to come */
    const char *pend;     /* PAUSED, RESUMING: unparsed rest of the read buffer, or NULL */
    size_t pend_len;
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
    /* The wait queue, one FIFO per lane (enum upreq_lane). */
    upreq_t *wait_head[UP_LANES], *wait_tail[UP_LANES];
    size_t nwait[UP_LANES];
    uint32_t nbulk; /* connections bound to bulk requests */
    /* Every address the last resolution gave was refused (redirect/realm screening): requests
     * fail with WE_FORBIDDEN until addrs_expire. */
    bool refused;
    uint32_t nreqs;     /* requests whose current hop is here (waiting, bound, parked) */
    uint64_t last_used; /* upstream tick, for LRU eviction */
};

struct upstream {
    uv_loop_t *loop;
    const config_upstream_t *ucfg;
    const config_t *gcfg;
    origin_t *origins[UP_MAX_ORIGINS]; /* [0] is the primary origin */
    int norigins;
    uint64_t tick;
    /* The upward calls: the pool gives r (bound to r->uc, connected) to the wire; the deadline
     * timer ends requests (upstream.c). */
    void (*conn_ready)(upreq_t *r);
    uv_timer_cb deadline_cb;
    upreq_t *defer_head, *defer_tail; /* ENDING requests */
    uv_timer_t defer_timer;
    uv_timer_t queue_timer; /* the oldest waiting request's queue deadline (upstream_pool.c) */
    uv_timer_t dl_timer;    /* the earliest whole-exchange deadline (dl_head) */
    upreq_t *dl_head, *dl_tail;
    int open_handles; /* after destroy: timers whose close callback is due */
    /* Where redirects and realms may go: the classes (bits of enum netaddr_class) of the
     * primary origin's addresses, from its latest resolution. */
    unsigned primary_classes;
    upstream_addr_class_fn classify_hook; /* tests only; NULL in winch */
    bool warned_realm_creds; /* said once that credentials were kept from a plain-http realm */
    /* Auth. */
    auth_cache_t *tokens;
    flight_table_t *token_flights; /* token fetches running, at most UP_MAX_TOKEN_FETCHES */
    bool basic; /* the upstream asked for Basic: send the credentials up front from now on */
    upstream_ratelimit_t rl;
    bool destroying;
    SSL_CTX *tls_ctx; /* every https origin's client context (ca_file, insecure_skip_verify) */
};

/* ---- upstream_wire.c ---- */

/* The pool's conn_ready: r is bound to a connected r->uc; sends r's head and reads the answer. */
void wire_send(upreq_t *r);
/* upreq_pause and upreq_resume on a request bound to a connection (BODY, PAUSED). */
void wire_pause(upreq_t *r);
void wire_resume(upreq_t *r);
/* Tears down r (not in any list): its connection, if any, is closed; r is freed. */
void wire_drop(upreq_t *r);
/* Ends r (bound to a connection, outside the parser) with err: the connection is closed and
 * on_done(err) follows from the deferred list. */
void wire_abort(upreq_t *r, int err);

/* ---- upstream_hops.c ---- */

/* Runs when an answer's head is in (inside llhttp: no user code): notes rate-limit headers and
 * returns true when the answer is a hop (r->next_url or r->chal set) rather than r's answer. */
bool hops_intercept(upreq_t *r, int status);
/* The hop answer r got has been read (or its connection dropped): go on with the next hop. */
void hops_next(upreq_t *r);

/* ---- upstream_auth.c ---- */

/* A 401 r got: returns a challenge winch can answer (owned by the caller), or NULL. */
auth_challenge_t *upauth_challenge(upreq_t *r);
/* Answers r's 401 (r->chal). Returns 0 when r is on its way (queued again, waiting for a
 * token, or replaying the 401 to its caller), else an error to report. */
int upauth_answer(upreq_t *r);
/* Before r's first hop: credentials the upstream is known to want (Basic, a cached token). */
void upauth_attach_known(upreq_t *r);
/* True when the caller passed its own Authorization for r's origin. */
bool upauth_caller_has(const upreq_t *r);
/* At destroy time, r is a token fetch: its flight lands with WE_CANCELLED (the requests waiting
 * for it are freed) and its operation is freed. */
void upauth_abandon_fetch(upreq_t *r);

/* ---- upstream_pool.c ---- */

int pool_origin_init(origin_t *o, upstream_t *u, bool tls, const char *host, uint16_t port);
/* The origin for (tls, host, port), created when new. Returns 0, -EAGAIN when the table is
 * full of origins in use, WE_INVALID, -ENOMEM. */
int pool_origin_get(upstream_t *u, bool tls, const char *host, uint16_t port, origin_t **out);
/* Frees an origin nobody uses: its connections close, a resolution in flight is orphaned. */
void pool_origin_free(origin_t *o);
/* Gives the requests waiting at o a connection each, as far as the bound allows. Never calls
 * user callbacks (failures go through the deferred list). */
void pool_pump(origin_t *o);
/* Queues r (NEW, or between hops) at origin o with its head rebuilt for o, and pumps o. Returns
 * 0, WE_BUSY (r's lane at o is full) or the head's error (r untouched but for its origin). */
int pool_queue(upreq_t *r, origin_t *o);
/* r (SENT) goes back to the front of its origin's queue for a new connection. */
void pool_requeue_fresh(upreq_t *r);
/* Unbinds uc's request (returned, may be NULL). */
upreq_t *pool_detach(upconn_t *uc);
/* Closes a connection whose request was detached. Idempotent. */
void pool_close(upconn_t *uc);
/* uc's exchange ended cleanly: keep it for another request, or close it. */
void pool_release(upconn_t *uc, bool reusable);
/* Starts uc's timer with cb (0 ms in the config means no limit: the timer stops). */
void pool_arm(upconn_t *uc, uint64_t ms, uv_timer_cb cb);

/* ---- upstream_req.c ---- */

/* (Re)writes r->logline: "req=N " when r serves a client request, the method, origin (the
 * configured upstream's own: "") and the path without its query. */
void req_logline(upreq_t *r, const char *origin);
/* A request, NEW and in no list (pool_queue puts it on one). Validates method, path, headers.
 * Returns 0, WE_INVALID, WE_TOOBIG, -ENOMEM. */
int req_create(upreq_t **out, upstream_t *u, const char *method, const char *path,
               const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg);
/* Frees r (in no list, bound to no connection). */
void req_free(upreq_t *r);
/* Moves r to state s; an illegal change is a bug: logged, then abort(). */
void req_set_state(upreq_t *r, enum upreq_state s);
/* Takes r out of the list its state says it is in (wait queue, token flight, deferred list). */
void req_unlist(upreq_t *r);
/* The current hop goes to o (counted in o->nreqs). */
void req_set_origin(upreq_t *r, origin_t *o);
/* (Re)builds r's head for r->o. Returns 0, WE_TOOBIG, -ENOMEM. */
int req_build_head(upreq_t *r);
void req_clear_auth(upreq_t *r);
/* Queues the wait-queue links: used by the pool for the origin's queue. */
void req_push(upreq_t **head, upreq_t **tail, upreq_t *r, bool front);
void req_pull(upreq_t **head, upreq_t **tail, upreq_t *r);
/* r's lane, as an index of the origin's wait queues. */
int req_lane(const upreq_t *r);
/* r must end within ms from now (0: no deadline): it joins the upstream's deadline list, whose
 * timer runs u->deadline_cb. req_free takes it out. */
void req_set_deadline(upreq_t *r, uint32_t ms);
/* Takes r out of the deadline list (no-op when not in it). */
void req_clear_deadline(upreq_t *r);
/* r (COMPLETE or ENDING) ends: on_done(status), then r is freed. */
void req_complete(upreq_t *r, int status);
/* r (in no list, unbound) reports status through on_done on the next loop iteration. */
void req_fail_later(upreq_t *r, int status);
/* r (in no list, unbound) shows its caller the 401 that could not be answered, next
 * iteration. */
void req_replay_later(upreq_t *r);

#endif
