#include "policy/policy.h"

#include <errno.h>
#include <stdlib.h>

struct policy {
    const config_t *cfg;
};

int policy_create(policy_t **out, const config_t *cfg, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    policy_t *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->cfg = cfg;
    *out = p;
    return 0;
}

void policy_free(policy_t *p)
{
    free(p);
}

policy_decision_t policy_decide(const policy_t *p, const policy_request_t *req)
{
    /* The config has no policy section yet, so nothing is denied. */
    (void)p;
    (void)req;
    return (policy_decision_t){.allow = true, .reason = NULL};
}
