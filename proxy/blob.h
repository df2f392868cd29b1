/** Blobs: the handler of /v2/<name>/blobs/<digest>. Internal to proxy/. */
#ifndef WINCH_PROXY_BLOB_H
#define WINCH_PROXY_BLOB_H

#include "proxy/call.h"

/** Answers c: a hit from disk, or a subscription to the digest's fill (started if none runs),
 * once the upstream is known to hold the blob under c's repository (blob scoping). */
void blob_handle(call_t *c);

#endif
