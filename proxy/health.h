/** Upstream health: a circuit breaker per upstream. Every upstream exchange reports how it
 * ended; after upstream_failure_threshold consecutive failures (no answer, or a 5xx) the
 * upstream is down: requests winch can answer from its cache are answered at once (a stale
 * tag without waiting), the others fail fast with 503, and a probe (GET /v2/) every
 * upstream_probe_interval_ms tells when it is back — any HTTP answer closes the breaker.
 * Owned by the app, one per upstream; loop thread only. Internal to proxy/. */
#ifndef WINCH_PROXY_HEALTH_H
#define WINCH_PROXY_HEALTH_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "proxy/upstream.h"

typedef struct health health_t;

/** A breaker for the upstream client up (borrowed; must outlive it). cfg borrowed. *out owned
 * by the caller (health_destroy). Returns 0 or -ENOMEM. */
int health_create(health_t **out, uv_loop_t *loop, upstream_t *up, const config_t *cfg);

/** Cancels a probe in flight and stops the timer: call before the upstream client goes. The
 * timer closes asynchronously; health_destroy frees after the loop ran. Idempotent. */
void health_stop(health_t *h);
/** Frees it (after health_stop and a loop run); NULL is fine. */
void health_destroy(health_t *h);

/** True while the breaker is open (the upstream is down). */
bool health_down(const health_t *h);

/** One upstream exchange ended: status is the HTTP status (0 when none arrived), err the
 * transport error (0 when an answer arrived). A 5xx or a transport error counts as a failure,
 * anything else (404 and 429 included: the upstream answered) as a success; WE_BUSY and
 * WE_FORBIDDEN (winch's own queue limits and redirect refusals) do not count at all. */
void health_report(health_t *h, int status, int err);

/** Seconds a client should wait before trying again while the upstream is down. */
uint32_t health_retry_after_s(const health_t *h);

/** Consecutive failures so far, and whether a probe is in flight (for logs and metrics). */
uint32_t health_failures(const health_t *h);

#endif
