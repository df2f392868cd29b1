/** The listing handlers: /v2/<name>/tags/list, /v2/_catalog, /v2/<name>/referrers/<digest>.
 * Internal to proxy/. */
#ifndef WINCH_PROXY_LISTS_H
#define WINCH_PROXY_LISTS_H

#include "proxy/call.h"

/** Tags of c's repository: the upstream's list, sorted, with n/last pagination and a Link;
 * the tags winch has seen when the upstream cannot answer. */
void lists_tags(call_t *c);
/** The repositories winch has cached for c's upstream, paginated. */
void lists_catalog(call_t *c);
/** The upstream's referrers index for c's digest, passed through. */
void lists_referrers(call_t *c);

#endif
