/* "admin_listen" and "public_metrics": the operator's listener. A plain HTTP listener that serves
 * only /metrics, /healthz, /readyz and the status page /_winch/, meant for a loopback or
 * management address; the public listeners then keep /metrics and /_winch/ only when
 * public_metrics says so, since both tell a stranger what the site pulls and how much. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "config/internal.h"

/* HOST:PORT with an IP literal (names are not resolved at start); "" or null: off. */
static int set_admin_listen(config_t *c, const diag_t *d, const char *field, const json_t *v)
{
    if (!json_is_null(v) && !json_is_string(v))
        return diag_fail(d, field,
                         "expected a string \"HOST:PORT\" (e.g. \"127.0.0.1:5001\"), got %s",
                         config_json_type_name(v));
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    size_t n = json_is_string(v) ? json_string_length(v) : 0;
    free(c->admin_listen_host);
    c->admin_listen_host = NULL;
    c->admin_listen_port = 0;
    c->admin_listen_enabled = false;
    if (n == 0)
        return 0;
    if (strlen(s) != n)
        return diag_fail(d, field, "contains a NUL byte");
    hostport_t hp;
    const char *why = addr_parse_hostport(s, n, &hp);
    if (!why && !hp.has_port)
        why = "expected HOST:PORT, e.g. 127.0.0.1:5001 or [::1]:5001";
    if (!why && hp.kind == HOST_DNS)
        why = "host must be an IP address (IPv4, or IPv6 in brackets); names are not resolved";
    if (why) {
        char q[80];
        return diag_fail(d, field, "%s: %s", diag_quote(q, sizeof q, s, n), why);
    }
    char *h = dup_n(hp.host, hp.hlen);
    if (!h)
        return diag_oom(d);
    c->admin_listen_host = h;
    c->admin_listen_port = hp.port;
    c->admin_listen_enabled = true;
    return 0;
}

int config_admin_json(config_t *c, const diag_t *d, const char *key, const json_t *v)
{
    if (strcmp(key, "admin_listen") == 0)
        return set_admin_listen(c, d, key, v);
    if (strcmp(key, "public_metrics") == 0) {
        if (!json_is_boolean(v))
            return diag_fail(d, key, "expected true or false, got %s", config_json_type_name(v));
        c->public_metrics = json_is_true(v);
        return 0;
    }
    return diag_fail(d, key, "unknown field");
}

/* Two listeners on one address would fail at bind with a less helpful message; port 0 (the
 * kernel picks) never collides. */
static bool same_addr(const char *h1, uint16_t p1, const char *h2, uint16_t p2)
{
    return p1 != 0 && p1 == p2 && h1 && h2 && strcmp(h1, h2) == 0;
}

int config_admin_check(const config_t *c, const diag_t *d)
{
    if (!c->admin_listen_enabled)
        return 0;
    if (c->listen_enabled &&
        same_addr(c->admin_listen_host, c->admin_listen_port, c->listen_host, c->listen_port))
        return diag_fail(d, "admin_listen", "same address as listen");
    if (c->tls_listen_enabled && same_addr(c->admin_listen_host, c->admin_listen_port,
                                           c->tls_listen_host, c->tls_listen_port))
        return diag_fail(d, "admin_listen", "same address as tls_listen");
    return 0;
}
