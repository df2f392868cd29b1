/** Buffered upstream fetches shared in flight: a GET or HEAD whose whole (bounded) body the
 * caller wants at once — a manifest, a tag check, a tags list, referrers. Identical requests
 * in flight at once share one upstream request (a flight, common/flight.h) and every waiting
 * call is answered from the same response: a rollout makes dozens of nodes ask for the same
 * manifests in the same second, and on Docker Hub each manifest GET counts against the pull
 * rate limit. The flight belongs to its waiters: when the last one goes away (its client
 * died), the upstream request is cancelled. Internal to proxy/. */
#ifndef WINCH_PROXY_FETCH_H
#define WINCH_PROXY_FETCH_H

#include <stddef.h>

#include "proxy/call.h"

/** The result of a fetch. status is the HTTP status (0 when none arrived), err the transport
 * error (0, -ETIMEDOUT, WE_TOOBIG, ...). up's headers are readable during the call (up is NULL
 * when no response arrived). body is owned by the callee (free it or hand it on): the whole
 * body, NUL-terminated, when err is 0 and status is 200; else NULL. */
typedef void (*fetch_cb)(call_t *c, void *ctx, int status, int err, upreq_t *up, char *body,
                         size_t len);

/** Sends method (GET or HEAD) for path (absolute, from fetch_path) to c's upstream with the
 * given Accept (may be NULL) and collects at most max body bytes (a larger body fails with
 * WE_TOOBIG). An identical request already in flight is joined instead of sent again. Sets
 * c->cancel for the duration. cb runs exactly once, never inside this call, unless the client
 * goes away first, in which case ctx_free(ctx) runs instead (ctx_free may be NULL). Returns 0,
 * or an error and neither runs. */
int fetch_start(call_t *c, const char *method, const char *path, const char *accept, size_t max,
                fetch_cb cb, void *ctx, void (*ctx_free)(void *));

/** fetch_start in the given upstream lane (fetch_start uses UPREQ_PRIORITY, for what a client
 * waits on: manifests, tag checks, lists). A blob HEAD goes in the bulk lane, so a flood of
 * them cannot hold the connections kept for manifests. Joining a flight started in the other
 * lane is fine: the flight's request keeps its lane. */
int fetch_start_in(call_t *c, enum upreq_lane lane, const char *method, const char *path,
                   const char *accept, size_t max, fetch_cb cb, void *ctx,
                   void (*ctx_free)(void *));

/** Writes "<base path>/v2/<repo>/<kind>[/<ref>]" for c's upstream into out[len]; ref may be
 * NULL (tags/list). */
void fetch_path(const call_t *c, const char *kind, const char *ref, char *out, size_t len);

/** Maps an upstream HTTP status to a winch error: WE_NOTFOUND, WE_DENIED, WE_RATELIMIT or
 * WE_UPSTREAM. */
int fetch_status_err(int status);

#endif
