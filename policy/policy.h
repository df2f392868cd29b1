/** Policy: the one place in the request path that decides whether a pull may proceed, and how.
 * Pure decisions over the configuration and the request; policy never does I/O.
 *
 * Today the decision set is empty (every request is allowed); the pull-time rules (deny tags
 * such as latest, pins, soak, repository allow/deny) are decided here, so the proxy's request
 * path never changes shape when they arrive. A policy_t is built once from the configuration
 * (rules compiled, errors named by rule and field) and only read afterwards.
 */
#ifndef WINCH_POLICY_POLICY_H
#define WINCH_POLICY_POLICY_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

typedef struct policy policy_t;

typedef struct policy_request {
    const char *upstream; /* upstream name, e.g. "docker.io" */
    const char *repo;     /* repository at the upstream */
    const char *ref;      /* tag or digest; NULL for tags/list */
    bool ref_is_digest;
} policy_request_t;

typedef struct policy_decision {
    bool allow;
    const char *reason; /* text when denied (borrowed from the policy), shown in DENIED */
} policy_decision_t;

/** Builds the policy of cfg (borrowed; must outlive the policy). On success *out is owned by
 * the caller (policy_free). On failure returns WE_CONFIG and writes one line naming the rule
 * and field into err[errlen]. */
int policy_create(policy_t **out, const config_t *cfg, char *err, size_t errlen);

/** Frees the policy; NULL is fine. */
void policy_free(policy_t *p);

/** Decides one request. */
policy_decision_t policy_decide(const policy_t *p, const policy_request_t *req);

#endif
