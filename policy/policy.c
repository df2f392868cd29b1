#include "policy/policy.h"

policy_decision_t policy_check(const config_t *cfg, const policy_request_t *req)
{
    /* No rules are configurable yet: the config has no policy section, so nothing is denied.
     * This is the hook the policy issue fills in. */
    (void)cfg;
    (void)req;
    return (policy_decision_t){.allow = true, .reason = NULL};
}
