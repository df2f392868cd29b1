/** HTTP/1.1 client for one upstream registry: a keep-alive connection pool, lazy DNS (names
 * are resolved at first use, never at start), connect / response / idle timeouts, and
 * pull-based body delivery. Redirects and upstream auth are handled inside and invisible to
 * callers: 301/302/303/307/308 answers to GET and HEAD are followed (up to the config's
 * upstream_max_redirects, to http/https only, dropping Authorization when the scheme, host or
 * port changes), and a 401 is answered once (Bearer: a token fetched from the challenge's
 * realm, cached and sent up front on later requests for the same repository; Basic: the
 * configured credentials). Callers see the final response only; when auth cannot succeed they
 * see the upstream's 401 (headers, no body).
 *
 * Lifecycle of a request: upreq_start -> on_headers once -> on_body zero or more times ->
 * on_done exactly once (0 after a complete message, else an error). upreq_cancel before on_done
 * stops everything and no callback fires after it returns. After on_done the upreq is freed by
 * the client: do not touch it again.
 *
 * Limits (issue 8). Requests that find every connection of their origin busy wait in one of
 * two lanes: priority (manifests, tag checks, lists, token fetches) is served before bulk (blob
 * fills), and a quarter of upstream_max_conns (at least one, when there are two or more) is
 * kept for priority, so a flood of blob fills never holds every connection. Each lane holds at
 * most upstream_max_queue requests per origin (more fail with WE_BUSY at once), and a request
 * that waits upstream_queue_timeout_ms fails with WE_BUSY. A request may carry a deadline for
 * its whole exchange. Redirect targets and token realms (every origin but the configured one)
 * are reached only at addresses of a class the upstream's own addresses have (public, or
 * loopback for a lab upstream on 127.0.0.1, ...) or when their host is in the upstream's
 * allow_redirect_hosts: the check runs on the resolved addresses, so a name that resolves to
 * 169.254.169.254 is refused too (WE_FORBIDDEN). The configured credentials go to the
 * upstream's own origin, and to a token realm only on https (or on the upstream's own origin).
 */
#ifndef WINCH_PROXY_UPSTREAM_H
#define WINCH_PROXY_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "config/config.h"

typedef struct upstream upstream_t;
typedef struct upreq upreq_t;

/** Creates the client for one configured upstream. ucfg and gcfg are borrowed and must outlive
 * it. No network activity happens here. */
int upstream_create(upstream_t **out, uv_loop_t *loop, const config_upstream_t *ucfg,
                    const config_t *gcfg);

/** The configured credentials (ucfg's username/password) changed (SIGHUP reload): the bearer
 * tokens the old ones earned are dropped, so the next request asks the realm again with the new
 * ones. Requests already sent keep what they carry. */
void upstream_credentials_changed(upstream_t *u);

/** Closes idle connections and frees the client. Every request must have finished or been
 * cancelled before. Handles close asynchronously: run the loop once more afterwards. */
void upstream_destroy(upstream_t *u);

/** The configured upstream this client serves (borrowed). */
const config_upstream_t *upstream_config(const upstream_t *u);

/** The last rate-limit headers the upstream sent (Docker Hub's RateLimit-Limit,
 * RateLimit-Remaining, Docker-RateLimit-Source), for logs and metrics, and the Retry-After of
 * its latest 429, for answers that learn of the limit later (a blob fill that failed). */
typedef struct upstream_ratelimit {
    bool known;           /* such headers were seen at least once */
    int64_t limit;        /* pulls per window; -1 when not sent */
    int64_t remaining;    /* pulls left; -1 when not sent */
    uint32_t window_s;    /* the w= window in seconds; 0 when not sent */
    char source[64];      /* Docker-RateLimit-Source (an IP or account id); "" when not sent */
    int64_t updated_ms;   /* wall clock (Unix ms) of the response that carried them */
    char retry_after[64]; /* of the latest 429 (seconds or an HTTP date); "" when none */
} upstream_ratelimit_t;

/** Copies the last rate-limit values into *out; returns out->known (the RateLimit headers were
 * seen; retry_after is filled independently). */
bool upstream_ratelimit(const upstream_t *u, upstream_ratelimit_t *out);

typedef struct upreq_cbs {
    /** Status line and headers arrived. Read headers with upreq_header*, length with
     * upreq_content_length. May call upreq_cancel. */
    void (*on_headers)(upreq_t *r, void *arg, int status);
    /** A piece of the body. data is valid until this returns, or, if the callback calls
     * upreq_pause, until upreq_resume. May call upreq_cancel. Never called for HEAD. */
    void (*on_body)(upreq_t *r, void *arg, const char *data, size_t len);
    /** After upreq_splice_body: n > 0 more body bytes are in the caller's pipe; n == 0: the
     * pipe is full and r is paused (upreq_resume once it has drained). May call upreq_cancel,
     * upreq_abort, upreq_pause, upreq_resume. NULL when the caller never splices. */
    void (*on_spliced)(upreq_t *r, void *arg, size_t n);
    /** The end: 0 when the whole message arrived, else -ETIMEDOUT, -ECONNREFUSED, UV_EAI_*,
     * WE_PROTO, WE_SHORT (connection closed mid-body), WE_TOOBIG (headers over the bound)... */
    void (*on_done)(upreq_t *r, void *arg, int status);
} upreq_cbs_t;

/** The lane a request waits in for a connection. */
enum upreq_lane {
    UPREQ_BULK = 0, /* blob fills: never more than upstream_max_conns minus the priority share */
    UPREQ_PRIORITY = 1, /* small answers a client waits for: served first, may use every conn */
};

/** How a request is treated; zero-initialised means bulk lane, no deadline. */
typedef struct upreq_opts {
    enum upreq_lane lane;
    /* The whole exchange (waiting, connecting, redirects, auth, headers and body) must end
     * within this many ms, else on_done(-ETIMEDOUT) and the connection is closed; 0: none. */
    uint32_t deadline_ms;
    /* The client request this work is for (server.h req_id), shown as "req=N" on the request's
     * debug lines (and on those of a token fetch it starts); 0: background work, no id. */
    uint64_t req_id;
} upreq_opts_t;

/** Sends `method path` (path is absolute and already includes the upstream's base path and
 * query; for an upstream with "pass_ns", ns= is added: upstream_ns_path). extra_headers is a NULL-terminated array of "Name: value" lines (borrowed, copied
 * before return; an Authorization line among them goes to this upstream's own origin only);
 * Host, User-Agent, Connection and any Authorization winch obtained are added by the client
 * (a caller's own Authorization turns winch's auth handling off for the request). cbs and arg are
 * borrowed until on_done. opts (borrowed, copied; NULL: the defaults above) picks the lane and
 * the deadline. *out is valid until on_done or upreq_cancel. No callback fires before this
 * returns. Returns 0, WE_BUSY (the lane's wait queue is full), WE_INVALID, WE_TOOBIG,
 * -EINVAL, -ENOMEM. */
int upreq_start_opts(upreq_t **out, upstream_t *u, const char *method, const char *path,
                     const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg,
                     const upreq_opts_t *opts);

/** The path an upstream with "pass_ns" is sent: path with "ns=<name>" added to its query
 * (percent-encoded; unchanged when the query names ns already). upreq_start does it for such
 * an upstream. Returns a malloc'd string (free it) or NULL when out of memory. */
char *upstream_ns_path(const char *path, const char *name);

/** upreq_start_opts with the defaults: bulk lane, no deadline. */
int upreq_start(upreq_t **out, upstream_t *u, const char *method, const char *path,
                const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg);

/** Flow control for the body: from within on_headers or on_body (or later), stop delivering
 * until resume. Called before on_headers, the pause takes effect once on_headers has returned.
 * The response idle timeout does not run while paused (the caller is the slow side).
 * upreq_resume never calls back from inside itself: delivery (on_body, and possibly on_done)
 * restarts on a later loop iteration, first with the rest of the paused read buffer. */
void upreq_pause(upreq_t *r);
void upreq_resume(upreq_t *r);

/** From on_headers: the rest of the body is to go into pipe_fd (a pipe's non-blocking write
 * end, borrowed until on_done) by splice(2) rather than through on_body; on_spliced reports
 * what arrives. Bytes already read still come through on_body first. Returns 0, or -ENOTSUP
 * when it cannot be (a TLS connection, a body without Content-Length, no on_spliced, a HEAD),
 * and the body comes through on_body as usual. */
int upreq_splice_body(upreq_t *r, int pipe_fd);

/** Abandons the request; its connection is closed, not pooled. No callback after return. */
void upreq_cancel(upreq_t *r);

/** Ends the request now with err (< 0): its connection is closed at once (nothing more is read:
 * an oversized or endless body is never drained), and on_done(err) follows on a later loop
 * iteration, never from inside this call; no other callback fires after it returns. Callable
 * from on_headers and on_body (then the headers stay readable until on_done) or from outside
 * any callback. No effect once on_done has run or the request was cancelled. */
void upreq_abort(upreq_t *r, int err);

/** First response header named name (case-insensitive), NUL-terminated, borrowed until on_done;
 * NULL if absent. Valid from on_headers on. */
const char *upreq_header(const upreq_t *r, const char *name);
/** Iterates every header named name: pass NULL first, then the previous result. */
const char *upreq_header_next(const upreq_t *r, const char *name, const char *prev);
/** Content-Length of the response, or UINT64_MAX when absent (chunked or close-delimited). */
uint64_t upreq_content_length(const upreq_t *r);
/** Redirects followed to reach the response on_headers saw (for logs and tests). */
int upreq_redirects(const upreq_t *r);

/** Requests waiting for a connection at u's own origin, in lane (for tests and metrics). */
size_t upstream_waiting(const upstream_t *u, enum upreq_lane lane);

/** FOR TESTS ONLY: classify addresses with fn instead of netaddr_classify (proxy/netaddr.h),
 * e.g. to make a fake upstream on 127.0.0.1 count as public so that a redirect to loopback is
 * refused without real DNS. fn returns an enum netaddr_class, or -1 for the normal answer.
 * NULL restores the default. Never called by winch itself. */
typedef int (*upstream_addr_class_fn)(const struct sockaddr *sa);
void upstream_test_set_addr_classifier(upstream_t *u, upstream_addr_class_fn fn);

#endif
