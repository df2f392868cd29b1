/** The status line and headers of a blob response (blobhead.c): shared by blob.c (hits and
 * fills) and passthru.c (blobs streamed from the upstream without caching). Internal to
 * proxy/. */
#ifndef WINCH_PROXY_BLOBHEAD_H
#define WINCH_PROXY_BLOBHEAD_H

#include <stdbool.h>
#include <stdint.h>

#include "proxy/call.h"

/** The headers of a blob response for digest (borrowed). verified: the bytes sent will have
 * been checked against the digest (a hit, or a response that reaches the blob's end, whose last
 * byte waits for the verdict); anything else is marked Cache-Control: no-store, since no cache
 * in between may keep it. */
void blob_headers(call_t *c, const char *digest, bool verified);

/** Begins the head of a blob response for a blob of size, as c->range asks: the status line
 * and headers (Cache-Control no-store unless verified or the span reaches the blob's end, whose
 * last byte is held until the digest checks). Returns the status (200, 206, or 416 with nothing
 * begun: answer with blob_reply_416), and the span: *first, *count bytes. For hits, fills and passthru.c. */
int blob_begin_head(call_t *c, const char *digest, uint64_t size, bool verified, uint64_t *first,
                    uint64_t *count);
/** Answers 416 for a blob of size. */
void blob_reply_416(call_t *c, uint64_t size);

#endif
