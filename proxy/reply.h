/** Answers in registry terms: the headers every registry response carries, OCI error bodies,
 * and what a client hears when the upstream or the store failed. Internal to proxy/. */
#ifndef WINCH_PROXY_REPLY_H
#define WINCH_PROXY_REPLY_H

#include "proxy/call.h"
#include "proxy/oci.h"

/** resp_begin plus the headers every registry answer carries (the API version, and
 * OCI-Namespace when ?ns= chose the upstream). */
void reply_begin(call_t *c, int status);

/** Answers the OCI error JSON for code (message may be NULL: the code's default; detail_json,
 * if not NULL, is inserted verbatim and must be valid JSON) with status, or oci_status(code)
 * when status is 0. If the handler already began the head (reply_begin plus extra headers such
 * as Retry-After), that head is kept and status is ignored. */
void reply_error(call_t *c, int status, enum oci_code code, const char *message,
                 const char *detail_json);

/** Answers a policy refusal: 403 with the OCI error DENIED and message (borrowed), which the
 * status line's reason phrase carries too ("403 DENIED: <message>"), so that a client asking
 * with HEAD, which gets no body, still shows why (containerd prints the status line). */
void reply_denied(call_t *c, const char *message);

/** Answers for a winch error (WE_NOTFOUND, WE_DENIED, WE_RATELIMIT, -ETIMEDOUT, WE_DIGEST, ...
 * as fetches and fills report them); notfound is the code for WE_NOTFOUND. The text names the
 * upstream as the client knows it, never its address or an errno. */
void reply_failure(call_t *c, int err, enum oci_code notfound);

/** Answers for an upstream that failed: status is the upstream's HTTP status (0 if none), err the
 * transport error; retry_after (borrowed, may be NULL) the upstream's Retry-After for a 429. */
void reply_upstream_failure(call_t *c, int status, int err, const char *retry_after,
                            enum oci_code notfound);

#endif
