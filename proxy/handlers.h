/** The registry handlers: what each route does with the cache and the upstream. Internal to
 * proxy/. server.c calls handlers_dispatch for every routed request; the handlers answer with
 * the response primitives of server.h.
 *
 * Files: handlers.c (dispatch, /v2/, tags/list, _catalog, referrers, and the buffered upstream
 * fetch the others share), manifest.c (manifests by tag and digest), blob.c (blobs: hits,
 * fills, subscribers).
 */
#ifndef WINCH_PROXY_HANDLERS_H
#define WINCH_PROXY_HANDLERS_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/server.h"

/** Answers r (asynchronously when it needs the upstream). */
void handlers_dispatch(req_t *r);

/** Cancels background work that outlives clients (blob fills): called at shutdown. */
void handlers_shutdown(void);

void handle_manifest(req_t *r);
void handle_blob(req_t *r);
void blob_shutdown(void);

/* ---- Shared by the handlers ------------------------------------------------------------- */

/** The result of a buffered upstream request. status is the HTTP status (0 when none arrived),
 * err the transport error (0, -ETIMEDOUT, ...). up's headers are readable during the call.
 * body (owned by the callee: free it or hand it on) holds the whole body, NUL-terminated. */
typedef void (*ufetch_cb)(req_t *r, void *ctx, int status, int err, upreq_t *up, char *body,
                          size_t len);

/** Sends method (GET or HEAD) for path (absolute, from upstream_path) to r's upstream with the
 * given Accept (may be NULL) and collects at most max body bytes (a larger body fails with
 * WE_TOOBIG). An identical request already in flight is joined instead of sent again. Sets r->cancel for the duration. cb runs exactly once unless the client
 * connection dies first, in which case ctx_free(ctx) runs instead (ctx_free may be NULL).
 * Returns 0, or an error and neither runs. */
int ufetch_start(req_t *r, const char *method, const char *path, const char *accept, size_t max,
                 ufetch_cb cb, void *ctx, void (*ctx_free)(void *));

/** Writes "<base path>/v2/<repo>/<kind>/<ref>" for r's upstream into out[len]. */
void upstream_path(req_t *r, const char *kind, const char *ref, char *out, size_t len);

/** Answers the client for an upstream that failed: status is the upstream's HTTP status (0 if
 * none), err the transport error; notfound is the code for a 404. Never reveals internals. */
void reply_upstream_failure(req_t *r, int status, int err, const char *retry_after,
                            enum oci_code notfound);

/** Maps an upstream HTTP status to a winch error (WE_NOTFOUND, WE_DENIED, WE_RATELIMIT,
 * WE_UPSTREAM) and back to the client answer. */
int upstream_status_err(int status);
void reply_err(req_t *r, int err, enum oci_code notfound);

/** True if the If-None-Match value names digest ("\"sha256:..\"", a list, or *). */
bool etag_matches(const char *if_none_match, const char *digest);

#endif
