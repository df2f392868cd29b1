/* "trusted_proxies": the load balancers (HAProxy, nginx, ...) whose X-Forwarded-For header
 * winch believes, for the client address it logs, throttles failed logins by and matches
 * client groups against (proxy/realip.c walks the header).
 *
 *   "trusted_proxies": ["127.0.0.1", "10.0.0.0/8", "fd00:1::/64"]
 *
 * IPv4 and IPv6 addresses or networks; none by default, and then X-Forwarded-For is ignored.
 * A network of every address (/0) is refused: it would let any client choose the address winch
 * logs and throttles, which is what the list is there to prevent. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/internal.h"

int config_trusted_json(config_t *c, const diag_t *d, const struct json_t *v)
{
    static const char field[] = "trusted_proxies";
    if (!json_is_array(v))
        return diag_fail(d, field, "expected an array of addresses or CIDRs, got %s",
                         config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n > CONFIG_MAX_TRUSTED_PROXIES)
        return diag_fail(d, field, "at most %d addresses or CIDRs", CONFIG_MAX_TRUSTED_PROXIES);
    config_cidr_t *list = n ? calloc(n, sizeof *list) : NULL;
    if (n && !list)
        return diag_oom(d);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char sub[48];
        const char *s = NULL;
        snprintf(sub, sizeof sub, "%s[%zu]", field, i);
        rc = config_want_str(d, sub, json_array_get(v, i), &s);
        if (rc == 0)
            rc = config_cidr_parse(d, sub, s, &list[i]);
        if (rc == 0 && list[i].prefix == 0) {
            char q[80];
            rc = diag_fail(d, sub,
                           "%s trusts every address: any client could then choose the address "
                           "winch logs; name the proxies' addresses or networks",
                           diag_quote(q, sizeof q, s, strlen(s)));
        }
        if (rc < 0)
            break;
    }
    if (rc < 0) {
        free(list);
        return rc;
    }
    free(c->trusted_proxies);
    c->trusted_proxies = list;
    c->n_trusted_proxies = n;
    return 0;
}
