/** Manifests, by tag and by digest: the handler of /v2/<name>/manifests/<ref>. Internal to
 * proxy/. */
#ifndef WINCH_PROXY_MANIFEST_H
#define WINCH_PROXY_MANIFEST_H

#include "proxy/call.h"

/** Answers c (asynchronously when it needs the upstream). */
void manifest_handle(call_t *c);

#endif
