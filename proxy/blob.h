/** Blobs: the handler of /v2/<name>/blobs/<digest>, and the producers that pour upstream bodies
 * into fills. Internal to proxy/. */
#ifndef WINCH_PROXY_BLOB_H
#define WINCH_PROXY_BLOB_H

#include "proxy/call.h"

/** Answers c: a hit from disk, or a subscription to the digest's fill (started if none runs). */
void blob_handle(call_t *c);

/** The producers running, owned by the application (one list per app, no process-wide state).
 * *out owned by the caller (blob_producers_free, once empty). Returns 0 or -ENOMEM. */
int blob_producers_create(blob_producers_t **out);
/** Fails every running producer's fill with WE_CANCELLED (shutdown). A producer whose write is
 * in flight ends when that write lands: run the loop afterwards. */
void blob_producers_cancel_all(blob_producers_t *p);
/** Frees the list; NULL is fine. */
void blob_producers_free(blob_producers_t *p);

/** Starts (or joins) the fill of blob digest of c's repository from c's upstream, as a miss
 * would, without answering c: for a blob winch must read itself (an image config the policy
 * judges). *out holds a reference (fill_unref). The caller checks cache_lookup first. Returns 0
 * or an error (nothing to unref). */
int blob_fill_start(call_t *c, const char *digest, fill_t **out);

#endif
