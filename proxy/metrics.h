/** Counters of a running winch, and their rendering in the Prometheus text format (0.0.4) for
 * `GET /metrics`. Owned by the app (one per app: nothing process-wide) and updated on its loop
 * thread only: from on_complete (requests, cache results, bytes served), from the upstream
 * paths (fetch.c, producer.c: answers, latency, bytes fetched) and from blob.c (fill waiters);
 * what is a state rather than a count (connections, fills, cache size) is read at scrape time.
 *
 * Every label value is bounded: routes and cache results are fixed sets, upstreams are the
 * configured ones (at most CONFIG_MAX_UPSTREAMS), status classes are 1xx..5xx. No repository
 * name, tag or client address is ever a label. Internal to proxy/.
 */
#ifndef WINCH_PROXY_METRICS_H
#define WINCH_PROXY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct metrics metrics_t;

/** The route label of a request. */
enum metrics_route {
    METRICS_ROUTE_PING,
    METRICS_ROUTE_MANIFEST,
    METRICS_ROUTE_BLOB,
    METRICS_ROUTE_TAGS,
    METRICS_ROUTE_REFERRERS,
    METRICS_ROUTE_CATALOG,
    METRICS_ROUTE_OPS,   /* /metrics, /healthz, /readyz */
    METRICS_ROUTE_OTHER, /* unparsable, unknown path, refused method */
    METRICS_ROUTE_N
};

/** The cache result of a request (the access log's cache= word). */
enum metrics_result {
    METRICS_HIT,         /* served from the cache without asking the upstream */
    METRICS_MISS,        /* fetched from the upstream (and stored) for this request */
    METRICS_COALESCED,   /* joined another request's upstream fetch or blob fill */
    METRICS_STALE,       /* a stale tag served: the upstream was slow or failing */
    METRICS_REVALIDATED, /* a tag past its TTL, confirmed unchanged by the upstream */
    METRICS_DENIED,      /* refused by the policy */
    METRICS_NEGATIVE,    /* answered 404 from the remembered upstream 404 */
    METRICS_UPSTREAM,    /* passed through, nothing stored (a HEAD on a miss, a live list) */
    METRICS_LOCAL,       /* winch's own answer (/v2/, _catalog, ops endpoints) */
    METRICS_ERROR,       /* an error answer */
    METRICS_NONE,        /* nothing said ("-") */
    METRICS_RESULT_N
};

/** Where the bytes of an upstream fetch went. */
enum metrics_kind { METRICS_KIND_BLOB, METRICS_KIND_MANIFEST, METRICS_KIND_OTHER, METRICS_KIND_N };

/** Maps the access log's cache word ("hit", "miss", ...; NULL and unknown words: NONE). */
enum metrics_result metrics_result_of(const char *cache_status);
/** The label text of r ("hit", ...), static. */
const char *metrics_result_name(enum metrics_result r);

/** Counters for n_upstreams upstreams (<= CONFIG_MAX_UPSTREAMS), all zero; start_ms is the wall
 * clock of the start (winch_start_time_seconds). *out owned by the caller (metrics_free).
 * Returns 0, -EINVAL or -ENOMEM. */
int metrics_create(metrics_t **out, size_t n_upstreams, int64_t start_ms);
/** NULL is fine. */
void metrics_free(metrics_t *m);

/** One request completed: route, HTTP status sent, cache result, the upstream it was routed to
 * (-1: none) and its body bytes sent. Bytes of a hit, coalesced, stale or revalidated answer
 * count as served from the cache (the bandwidth saved), of a miss or a pass-through as served
 * from the upstream. NULL m is a no-op, as for every updater below. */
void metrics_request(metrics_t *m, enum metrics_route route, int status, enum metrics_result res,
                     int upstream, uint64_t bytes);
/** An upstream exchange got its answer (status > 0) or failed without one (status 0, err < 0)
 * after elapsed_us microseconds (to the response head). Counted by status class, 429s and
 * errors (no answer, or a 5xx) separately, latency in the histogram. */
void metrics_upstream_answer(metrics_t *m, int upstream, int status, int err, uint64_t elapsed_us);
/** n body bytes received from upstream for kind. */
void metrics_upstream_bytes(metrics_t *m, int upstream, enum metrics_kind kind, uint64_t n);
/** A client started (+1) or stopped (-1) waiting on a blob fill. */
void metrics_fill_waiters(metrics_t *m, int delta);

/** What is read at scrape time rather than counted. */
typedef struct metrics_upstream_view {
    const char *name; /* borrowed; the configured name */
    bool down;        /* the breaker is open */
    bool ratelimit_known;
    int64_t ratelimit_remaining; /* -1 when not sent */
    size_t queued;               /* requests waiting for a connection */
} metrics_upstream_view_t;

typedef struct metrics_view {
    uint32_t connections;
    size_t fills;                          /* blob fills in flight (their producers) */
    size_t fetches;                        /* buffered upstream fetches in flight */
    bool cache_known;                      /* cache_bytes is an estimate from a scan (retention) */
    uint64_t cache_bytes, cache_max_bytes; /* max 0: no bound */
    uint64_t evicted_items, evicted_bytes; /* by retention, since start */
    const metrics_upstream_view_t *upstreams; /* [n_upstreams] */
    const char *version;                      /* borrowed */
} metrics_view_t;

/** Totals for the status page and tests: bytes served from the cache and fetched upstream
 * (all upstreams), requests by result. */
typedef struct metrics_totals {
    uint64_t served_cache, served_upstream, fetched;
    uint64_t results[METRICS_RESULT_N];
    uint64_t requests;
    uint64_t fill_waiters; /* now */
    int64_t start_ms;      /* wall clock of the start */
} metrics_totals_t;
void metrics_totals(const metrics_t *m, metrics_totals_t *out);

/** One minute of the last hour (status page): bytes served from the cache and from the
 * upstream, bytes fetched from upstreams, requests answered. */
typedef struct metrics_minute {
    uint64_t served_cache, served_upstream, fetched, requests;
} metrics_minute_t;
#define METRICS_MINUTES 60
/** The last METRICS_MINUTES minutes up to now_ms (time_mono_ms), oldest first; the last one
 * is the minute in progress. Minutes without traffic are zero. */
void metrics_last_hour(const metrics_t *m, int64_t now_ms, metrics_minute_t out[METRICS_MINUTES]);

/** Appends the whole exposition to out (bounded by out's own max). Returns 0, WE_TOOBIG or
 * -ENOMEM. */
int metrics_render(const metrics_t *m, const metrics_view_t *v, buf_t *out);

/** Writes s into out[cap] as a Prometheus label value (backslash, quote and newline escaped,
 * cut to fit). */
void metrics_label_escape(char *out, size_t cap, const char *s);

#endif
