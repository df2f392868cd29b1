/** Blobs passed through from the upstream without caching: on_disk_full "pass_through"
 * (passthru.c). Internal to proxy/; blob.c hands a call over when its fill could not be written
 * for lack of space. */
#ifndef WINCH_PROXY_PASSTHRU_H
#define WINCH_PROXY_PASSTHRU_H

#include "proxy/call.h"

/** Where the client is when its fill failed. */
typedef struct passthru_from {
    bool head_sent;          /* the client already has the head, and bytes up to cur */
    uint64_t size, cur, end; /* the blob's size; next byte for the client; one past its last */
    fill_t *fill; /* taken reference on the failed fill (its fd holds what the client got), or
                   * NULL */
} passthru_from_t;

/** Answers the blob GET c from a new upstream GET, writing nothing to disk. The whole blob is
 * fetched and hashed, and its last byte held back until the digest checks, whenever the
 * client's span reaches the blob's end (a client that already got bytes of the failed fill has
 * them compared with the new download too); a span that ends earlier is fetched with Range and
 * cannot be verified (it is marked no-store, as for a fill). from is NULL for a request that
 * has sent nothing yet. Every upstream response must carry Content-Length. Takes over c: sets
 * c->op and c->cancel; answers (or cuts) c in every case. */
void passthru_start(call_t *c, const passthru_from_t *from);

#endif
