/* "node_name": the name a node of a cluster gives itself in Cache-Status (RFC 9211's cache
 * identifier), so that a client or an operator behind HAProxy sees which node answered.
 *
 *   "node_name": "winch-2"
 *
 * An RFC 8941 token, so the header stays one well-formed list member: a letter first, then
 * letters, digits and . _ - : (a conservative subset of tchar), at most 63 bytes. */
#include <jansson.h>
#include <string.h>

#include "config/internal.h"

static bool token_ok(const char *s, size_t n)
{
    if (n == 0 || n >= CONFIG_NODE_NAME_MAX)
        return false;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
        return false;
    for (size_t i = 1; i < n; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-' || ch == ':';
        if (!ok)
            return false;
    }
    return true;
}

int config_node_json(config_t *c, const diag_t *d, const struct json_t *v)
{
    if (!json_is_string(v))
        return diag_fail(d, "node_name", "expected a string, got %s", config_json_type_name(v));
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (strlen(s) != n || !token_ok(s, n)) {
        char q[96];
        return diag_fail(d, "node_name",
                         "%s: expected 1..%d characters, a letter then letters, digits, "
                         "'.', '_', '-' or ':'",
                         diag_quote(q, sizeof q, s, n), CONFIG_NODE_NAME_MAX - 1);
    }
    memcpy(c->node_name, s, n + 1);
    c->node_name_set = true;
    return 0;
}
