/** The HTTP/1.1 server: listeners, client connections, request heads (llhttp), and the response
 * primitives an application composes its answers from. It knows nothing of registries: every
 * request head that arrives goes to the one on_request callback the application gave, as h2o's
 * server hands requests to handlers it never names. Internal to proxy/.
 *
 * A connection serves one request at a time (pipelined requests wait in the read buffer):
 * head arrives -> on_request -> the application answers with the resp_* primitives, at once
 * or later -> the response completes (on_complete) -> next request. While a request is being
 * answered the connection does not read, which is the backpressure. Request bodies are never
 * read: a request that announces one is answered and its connection closed.
 */
#ifndef WINCH_PROXY_SERVER_H
#define WINCH_PROXY_SERVER_H

#include <openssl/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <uv.h>

typedef struct server server_t;
typedef struct req req_t;

/** How a request ended, for on_complete. */
enum req_outcome {
    REQ_DONE,    /* the response went out whole */
    REQ_ABORTED, /* the application cut it short (req_abort): the client saw a short read */
    REQ_GONE,    /* the connection died (client gone, timeout, shutdown) before it completed */
};

/** Limits the server enforces; every size and time that a client controls is bounded here.
 *
 * Who gets in: a connection that has nothing to do (fresh, or idle between requests) sits on an
 * LRU. At max_connections, or when the fd budget is spent, the oldest idle connection is closed
 * to admit a new one; only when none is idle does accepting pause (connections wait in the
 * kernel's backlog). At max_connections_per_client, the oldest idle connection of that address
 * is closed; when it has none, the new connection is closed at once. The fd budget counts one
 * fd per connection and SERVER_FDS_PER_REQUEST (a cache file, an upstream socket) more per request
 * in progress, so idle connections cost one fd each and every request still has its fds: a
 * request that finds no room even after closing idle connections is handed over with req_bad
 * 503. When accept(2) itself runs out of fds (EMFILE, ENFILE), accepting pauses until a
 * connection closes or 250 ms pass; each of these events is logged at most once a minute. */
typedef struct server_limits {
    uint32_t header_timeout_ms; /* a request head must arrive whole within this, counted from
                                   accept for a connection's first request, else from its
                                   first byte */
    uint32_t idle_timeout_ms;   /* keep-alive idle time, and a stalled send */
    uint32_t max_connections;   /* accepted at once */
    uint32_t max_header_bytes;  /* request line + headers */
    uint32_t max_connections_per_client; /* per peer address (IPv4, or IPv6); 0: no limit */
    uint32_t reserve_fds; /* fds the rest of the process may need (cache, upstream pools,
                             libuv): the budget is RLIMIT_NOFILE minus this (at most half) */
    uint32_t max_fds;     /* the budget itself when not 0 (tests), instead of the above */
} server_limits_t;

/** Besides its socket, a request in progress may hold a cache file and an upstream socket. */
#define SERVER_FDS_PER_REQUEST 2

/** What the server made of its limits and the fd limit (see server_plan). */
typedef struct server_plan {
    uint64_t nofile;          /* the soft RLIMIT_NOFILE seen */
    uint32_t max_fds;         /* the fd budget of client connections and their requests */
    uint32_t max_connections; /* min(limits.max_connections, max_fds) */
} server_plan_t;

typedef struct server_opts {
    uv_loop_t *loop;        /* borrowed */
    server_limits_t limits; /* copied */
    /** A request head arrived (or failed to parse: req_bad says how). The application answers it
     * with the resp_* primitives, now or later. Runs on the loop thread. */
    void (*on_request)(req_t *r, void *arg);
    /** The request r ended (always called once per on_request, even when the connection died
     * first: REQ_GONE is the moment to cancel what the application still does for r). r is
     * readable during the call (req_status, req_bytes_sent, req_duration_ms, req_data) and gone
     * after. The application must not answer r from here. */
    void (*on_complete)(req_t *r, void *arg, enum req_outcome outcome);
    void *arg;        /* borrowed; passed to both callbacks */
    size_t data_size; /* bytes of per-request application storage (req_data), zeroed per request */
} server_opts_t;

/** Creates the server (no listener yet). *out owned by the caller (server_destroy). */
int server_create(server_t **out, const server_opts_t *o);

/** Replaces the limits (a reload); connections pick them up from their next timer or request. */
void server_set_limits(server_t *s, const server_limits_t *l);

/** Listeners one server may have: plain, TLS and admin, and one per client group
 * (config.h's CONFIG_MAX_CLIENT_GROUPS, 64) with a listener of its own. The arrays of the
 * server are this long whatever the configuration (about 12 KB). */
#define SERVER_MAX_LISTENERS 67

/** Listens on host:port (numeric host, or "localhost"). tls_ctx (borrowed, must outlive the
 * server) makes it an HTTPS listener; NULL for plain HTTP. Writes the bound "host:port" (the
 * real port when 0 was asked) into bound[len]. At most SERVER_MAX_LISTENERS listeners (-EMFILE
 * past them). Returns the listener's index (0, 1, 2, ... in call order: req_listener) or
 * -errno. Every listener's connections count against the same limits (server_limits_t). */
int server_listen(server_t *s, const char *host, uint16_t port, SSL_CTX *tls_ctx, char *bound,
                  size_t len);

/** Stops accepting and closes every connection (on_complete(REQ_GONE) for requests in progress).
 * The loop then drains; call server_destroy after uv_run returns. */
void server_shutdown(server_t *s);
/** Frees the server; NULL is fine. */
void server_destroy(server_t *s);

/** Connections open now. */
uint32_t server_connections(const server_t *s);

/** The effective limits (for the start-up log line). */
void server_plan(const server_t *s, server_plan_t *out);

/** Raises the process's soft RLIMIT_NOFILE to its hard limit (once, at start, before
 * server_create). *was and *now (may be NULL) get the soft limit before and after. Returns 0
 * or -errno (the limit is then unchanged). */
int server_raise_nofile(uint64_t *was, uint64_t *now);

/* ---- The request --------------------------------------------------------------------------
 * Every string returned is borrowed and valid until the request completes. */

/** Unique (per process) request id, for logs. */
uint64_t req_id(const req_t *r);
/** "GET", "HEAD", ...; "-" when the head did not parse. */
const char *req_method(const req_t *r);
bool req_is_head(const req_t *r);
bool req_is_get(const req_t *r);
/** The request-target as sent (path and query), NUL-terminated; "" when it did not parse. */
const char *req_target(const req_t *r);
size_t req_target_len(const req_t *r);
/** 0 for a request the application should route; otherwise the status the server found:
 * 400 (malformed), 414 (target over 4096 bytes), 431 (head over max_header_bytes), 503 (no fds
 * left for another request; method and target are known). The application answers those too
 * (with its own error body, nothing that needs a file or an upstream); the connection closes
 * after. CONNECT and Upgrade requests are routed like any other, answered, and their
 * connection closed: nothing after them is read, nothing is ever tunnelled. */
int req_bad(const req_t *r);
/** The first header named name (case-insensitive), NUL-terminated; NULL if absent. A value over
 * 4096 bytes is kept whole only if the head stays within max_header_bytes. */
const char *req_header(const req_t *r, const char *name);
/** Every header named name in order: pass NULL first, then the previous result. */
const char *req_header_next(const req_t *r, const char *name, const char *prev);
/** The client's address (the socket's peer). */
const struct sockaddr_storage *req_peer(const req_t *r);
/** The peer as text ("127.0.0.1", "::1"), for logs. */
const char *req_peer_str(const req_t *r);
/** True when the request came over the TLS listener. */
bool req_is_tls(const req_t *r);
/** The name in the client's verified TLS certificate into buf[len] (conn_tls_peer_name):
 * 0, WE_NOTFOUND (no certificate, or not TLS) or WE_TLS (unusable). */
int req_tls_peer_name(const req_t *r, char *buf, size_t len);
/** The index server_listen returned for the listener the request came in on. */
int req_listener(const req_t *r);
/** True when req_bad's 400 was a TLS handshake arriving on the plain listener. */
bool req_tls_hello(const req_t *r);
/** The application's per-request storage (opts.data_size bytes, zeroed for each request). */
void *req_data(req_t *r);

/** What went out (for on_complete): the status of the response, body bytes sent, and the
 * milliseconds since the head arrived. */
int req_status(const req_t *r);
uint64_t req_bytes_sent(const req_t *r);
int64_t req_duration_ms(const req_t *r);

/* ---- Responses --------------------------------------------------------------------------- */

/** Begins the response head: the status line. Calling it again starts the head over. */
void resp_begin(req_t *r, int status);
/** Longest reason phrase resp_begin_reason sends. */
#define RESP_REASON_MAX 512
/** resp_begin with reason as the status line's reason phrase instead of the standard one: for
 * an answer whose explanation a client must see even without a body (HEAD), since clients
 * print the status line (containerd: "403 DENIED: ..."). Bytes other than printable ASCII
 * become '?', and the phrase is cut at RESP_REASON_MAX bytes. */
void resp_begin_reason(req_t *r, int status, const char *reason);
/** True once resp_begin ran for this response. */
bool resp_begun(const req_t *r);
/** Adds one header line; the head is bounded (overflow turns the response into a bare 500). */
void resp_header(req_t *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Finishes the head with Content-Length: length, and sends it followed by body[0..body_len)
 * (skipped for HEAD; body_len may be shorter than length only for HEAD). body is taken when
 * free_body (freed after sending), else borrowed until the response completes. Then the
 * request completes. */
void resp_send(req_t *r, uint64_t length, char *body, size_t body_len, bool free_body);

/** Finishes the head with Content-Length: length and sends it, then len bytes of fd from off
 * (fd taken: closed after; skipped for HEAD). Then the request completes. */
void resp_send_file(req_t *r, uint64_t length, int fd, off_t off, uint64_t len);

/* Streaming primitives for bodies that grow (a fill). */
typedef void (*req_io_cb)(req_t *r, int status);
/** Finishes the head with Content-Length: length and sends it; cb when sent (never inside this
 * call). status < 0: the connection is gone; the application cleans up and calls req_abort. */
void resp_send_head(req_t *r, uint64_t length, req_io_cb cb);
/** Sends len bytes of fd (borrowed) from off; cb when sent, as for resp_send_head. */
void resp_send_chunk(req_t *r, int fd, off_t off, uint64_t len, req_io_cb cb);
/** Sends data[0..len) (borrowed until cb; len fits in 32 bits) from memory: a body streamed
 * from somewhere else than a file (a blob passed through from the upstream). cb as above. */
void resp_send_data(req_t *r, const char *data, size_t len, req_io_cb cb);
/** A streamed response is complete: on_complete(REQ_DONE), then the next request. */
void req_finish(req_t *r);
/** The response cannot be completed (upstream failed mid-body): cut the connection so the
 * client sees a short read, never a complete-looking short body. on_complete(REQ_ABORTED). */
void req_abort(req_t *r);

#endif
