/** Policy: the one place in the request path that decides whether a pull may proceed, and how.
 * Pure decisions over the configuration and the request; policy never does I/O.
 *
 * Today the decision set is empty (every request is allowed); the pull-time rules (deny tags
 * such as latest, pins, soak, repository allow/deny) arrive with their own issue and are
 * decided here, so the proxy's request path never changes shape when they do.
 */
#ifndef WINCH_POLICY_POLICY_H
#define WINCH_POLICY_POLICY_H

#include <stdbool.h>

#include "config/config.h"

typedef struct policy_request {
    const char *upstream; /* upstream name, e.g. "docker.io" */
    const char *repo;     /* repository at the upstream */
    const char *ref;      /* tag or digest; NULL for tags/list, catalog */
    bool ref_is_digest;
} policy_request_t;

typedef struct policy_decision {
    bool allow;
    const char *reason; /* static text when denied, shown to the client in DENIED */
} policy_decision_t;

/** Decides one request. cfg borrowed. */
policy_decision_t policy_check(const config_t *cfg, const policy_request_t *req);

#endif
