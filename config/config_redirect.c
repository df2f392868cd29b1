/* "upstreams[i].allow_redirect_hosts": the hosts an upstream's redirects and token realms may
 * reach even when they resolve to a loopback, private, link-local, unspecified or multicast
 * address (the upstream client refuses those otherwise, unless the upstream itself is at such
 * an address: proxy/upstream_pool.c). Each entry is a host name, "*.example.com" (any name
 * below example.com, not example.com itself), an IPv4 literal or an IPv6 literal (with or
 * without brackets). No ports, no schemes: the list names hosts. Stored lowercase, IPv6
 * without brackets, so the client compares them with the hosts it parsed from URLs as they
 * are. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "config/internal.h"

void config_allow_hosts_free(config_upstream_t *u)
{
    for (size_t i = 0; i < u->n_allow_redirect_hosts; i++)
        free(u->allow_redirect_hosts[i]);
    free(u->allow_redirect_hosts);
    u->allow_redirect_hosts = NULL;
    u->n_allow_redirect_hosts = 0;
}

/* One entry, checked; returns a static reason when it is not a host, else NULL and the
 * normalised copy in *out (owned; NULL when out of memory). */
static const char *one_host(const char *s, size_t n, char **out)
{
    *out = NULL;
    const char *h = s;
    size_t hn = n;
    bool wildcard = n > 2 && s[0] == '*' && s[1] == '.';
    if (wildcard) {
        h += 2;
        hn -= 2;
    }
    /* A bare IPv6 literal (two colons or more; one is host:port): bracket it for the grammar,
     * which wants brackets. */
    char tmp[HOST_MAX + 3];
    const char *colon = memchr(h, ':', hn);
    if (!wildcard && colon && memchr(colon + 1, ':', hn - (size_t)(colon - h) - 1) && h[0] != '[') {
        if (hn + 2 >= sizeof tmp)
            return "not a host name or IP address";
        snprintf(tmp, sizeof tmp, "[%.*s]", (int)hn, h);
        h = tmp;
        hn += 2;
    }
    hostport_t hp;
    const char *why = addr_parse_hostport(h, hn, &hp);
    if (why)
        return why;
    if (hp.has_port)
        return "a host without a port (the list names hosts)";
    if (wildcard && hp.kind != HOST_DNS)
        return "\"*.\" goes before a DNS name, not an IP address";
    size_t prefix = wildcard ? 2 : 0;
    char *copy = malloc(prefix + hp.hlen + 1);
    if (!copy)
        return NULL;
    memcpy(copy, "*.", prefix);
    for (size_t i = 0; i < hp.hlen; i++)
        copy[prefix + i] = ascii_lower(hp.host[i]);
    copy[prefix + hp.hlen] = '\0';
    *out = copy;
    return NULL;
}

int config_allow_hosts_parse(config_upstream_t *u, const diag_t *d, const char *field,
                             const struct json_t *v)
{
    char sub[160], q[80];
    if (!json_is_array(v))
        return diag_fail(d, field, "expected an array of host names");
    size_t n = json_array_size(v);
    if (n > CONFIG_MAX_ALLOW_HOSTS)
        return diag_fail(d, field, "at most %d hosts", CONFIG_MAX_ALLOW_HOSTS);
    config_allow_hosts_free(u);
    if (n == 0)
        return 0;
    u->allow_redirect_hosts = calloc(n, sizeof *u->allow_redirect_hosts);
    if (!u->allow_redirect_hosts)
        return diag_oom(d);
    for (size_t i = 0; i < n; i++) {
        snprintf(sub, sizeof sub, "%s[%zu]", field, i);
        const json_t *e = json_array_get(v, i);
        if (!json_is_string(e))
            return diag_fail(d, sub, "expected a string (a host name or IP address)");
        const char *s = json_string_value(e);
        size_t len = json_string_length(e);
        if (len == 0)
            return diag_fail(d, sub, "must not be empty");
        if (strlen(s) != len)
            return diag_fail(d, sub, "contains a NUL byte");
        char *copy;
        const char *why = one_host(s, len, &copy);
        if (why)
            return diag_fail(d, sub, "%s: %s", diag_quote(q, sizeof q, s, len), why);
        if (!copy)
            return diag_oom(d);
        u->allow_redirect_hosts[u->n_allow_redirect_hosts++] = copy;
    }
    return 0;
}
