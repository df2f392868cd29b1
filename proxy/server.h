/** The HTTP/1.1 server: listener, client connections, request parsing (llhttp), and the
 * response primitives the registry handlers compose. Internal to proxy/.
 *
 * A connection serves one request at a time (pipelined requests wait in the read buffer):
 * read head -> route -> handler -> response primitives -> req_finish -> next request.
 * While a request is being answered the connection does not read, which is the backpressure.
 */
#ifndef WINCH_PROXY_SERVER_H
#define WINCH_PROXY_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "cache/cache.h"
#include "config/config.h"
#include "proxy/oci.h"
#include "proxy/route.h"
#include "proxy/upstream.h"

typedef struct server server_t;
typedef struct req req_t;

/** Creates the server. cfg and cache are borrowed and must outlive it. Creates one upstream
 * client per configured upstream (no network activity yet). */
int server_create(server_t **out, uv_loop_t *loop, const config_t *cfg, cache_t *cache);

/** Binds and listens on cfg->listen_host:listen_port. Writes the bound "host:port" (the real
 * port when 0 was asked) into bound[len]. Returns 0 or -errno. */
int server_listen(server_t *s, char *bound, size_t len);

/** Same for the TLS listener, cfg->tls_listen_host:tls_listen_port, with the certificate and
 * key of cfg->tls_cert / tls_key (loaded here). Connections accepted there speak HTTPS, and are
 * otherwise served exactly like the plain ones. On failure returns WE_TLS or -errno and writes
 * one line into err[errlen] (which file and why, or which address). */
int server_listen_tls(server_t *s, char *bound, size_t len, char *err, size_t errlen);

/** Stops accepting, closes idle connections, cuts active ones, cancels upstream work and
 * closes the upstream pools. The loop then drains; call server_destroy after uv_run returns. */
void server_shutdown(server_t *s);
void server_destroy(server_t *s);

/* ---- What handlers see ---------------------------------------------------------------- */

#define REQ_RANGE_NONE 0
#define REQ_RANGE_OK 1
#define REQ_RANGE_BAD 2 /* syntactically unusable: ignored, as RFC 9110 allows */

struct req {
    uint64_t id;
    server_t *srv;
    route_t route;
    const char *target; /* borrowed request-target, NUL-terminated, valid until req_finish */
    unsigned accept;    /* ACCEPT_* bits from every Accept line */
    int range;          /* REQ_RANGE_* */
    uint64_t range_first; /* Range: bytes=first-last; last = UINT64_MAX when open-ended */
    uint64_t range_last;
    bool range_suffix;  /* bytes=-N: range_last holds N */
    char if_none_match[REF_DIGEST_MAX + 8]; /* raw header value, "" when absent */
    const char *cache_status; /* static text for the access log: hit, miss, stale, ... */
    /* The handler's pending asynchronous operation: cancel(op_arg) runs if the connection dies
     * before the response finished. The handler clears it when the operation completes. */
    void (*cancel)(req_t *r);
    void *op;
};

/** The upstream client for r's route (borrowed). */
upstream_t *req_upstream(req_t *r);
const config_t *req_config(req_t *r);
cache_t *req_cache(req_t *r);

/** Begins the response head: status line plus the headers every response carries. */
void resp_begin(req_t *r, int status);
/** True once resp_begin ran for this response. */
bool resp_begun(req_t *r);
/** Adds one header line; the head is bounded (overflow turns the response into a 500). */
void resp_header(req_t *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Finishes the head with Content-Length: length, and sends it followed by body[0..body_len)
 * (skipped for HEAD; body_len may be shorter than length only for HEAD). body is taken when
 * free_body (freed after sending), else borrowed until the response finishes. Then the
 * request finishes. */
void resp_send(req_t *r, uint64_t length, char *body, size_t body_len, bool free_body);

/** Finishes the head with Content-Length: length and sends it, then len bytes of fd from off
 * (fd taken: closed after; skipped for HEAD). Then the request finishes. */
void resp_send_file(req_t *r, uint64_t length, int fd, off_t off, uint64_t len);

/** Answers the OCI error JSON for code (message/detail as in oci_error_json) with status, or
 * oci_status(code) when status is 0. If the handler already began the head (resp_begin plus
 * extra headers such as Retry-After), that head is kept and status is ignored. */
void resp_error(req_t *r, int status, enum oci_code code, const char *message,
                const char *detail_json);

/* Streaming primitives for bodies that grow (a fill). */
typedef void (*req_io_cb)(req_t *r, int status);
/** Finishes the head with Content-Length: length and sends it; cb when sent. */
void resp_send_head(req_t *r, uint64_t length, req_io_cb cb);
/** Sends len bytes of fd (borrowed) from off; cb when sent (status < 0: the connection is
 * gone; the handler cleans up and calls req_abort). */
void resp_send_chunk(req_t *r, int fd, off_t off, uint64_t len, req_io_cb cb);
/** The response is complete: log it, then serve the next request on the connection. */
void req_finish(req_t *r);
/** The response cannot be completed (upstream failed mid-body): cut the connection so the
 * client sees a short read, never a complete-looking short body. */
void req_abort(req_t *r);

#endif
