/* The host, port and URL grammar of the configuration: registry names ("docker.io",
 * "127.0.0.1:5001", "[::1]:5001"), listener addresses and upstream URLs. Nothing here resolves
 * a name: the listener must be an IP literal, and upstream hosts are only checked for syntax
 * (the upstream client resolves them when it connects). */
#include <arpa/inet.h>
#include <string.h>

#include "config/internal.h"

/* RFC 1123 host names: labels of letters, digits and '-', 1..63 long, not starting or ending
 * with '-'. A name whose last label is all digits is only allowed as a dotted-quad IPv4
 * address, so "1.2.3" or "256.0.0.1" cannot sneak through as a "name". */
static const char *check_host(const char *h, size_t n, bool bracketed, enum host_kind *kind)
{
    if (n == 0)
        return "missing host";
    if (bracketed) {
        char tmp[64];
        unsigned char addr[16];
        if (n >= sizeof tmp)
            return "not a valid IPv6 address";
        memcpy(tmp, h, n);
        tmp[n] = '\0';
        if (inet_pton(AF_INET6, tmp, addr) != 1)
            return "not a valid IPv6 address";
        *kind = HOST_V6;
        return NULL;
    }
    if (memchr(h, ':', n))
        return "an IPv6 address must be written in brackets, e.g. [::1]";
    if (n > HOST_MAX)
        return "host name longer than 253 characters";
    size_t label = 0, last_start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || h[i] == '.') {
            if (label == 0)
                return "host has an empty label (\"..\", or a leading or trailing dot)";
            if (h[i - 1] == '-' || h[i - label] == '-')
                return "host label starts or ends with '-'";
            last_start = i - label;
            label = 0;
            continue;
        }
        if (!is_alnum(h[i]) && h[i] != '-')
            return "host may only contain letters, digits, '-' and '.'";
        if (++label > 63)
            return "host label longer than 63 characters";
    }
    bool numeric_tail = true;
    for (size_t i = last_start; i < n; i++)
        if (!is_digit(h[i]))
            numeric_tail = false;
    if (numeric_tail) {
        char tmp[32];
        unsigned char addr[4];
        if (n >= sizeof tmp)
            return "not a valid IPv4 address";
        memcpy(tmp, h, n);
        tmp[n] = '\0';
        if (inet_pton(AF_INET, tmp, addr) != 1)
            return "not a valid IPv4 address";
        *kind = HOST_V4;
        return NULL;
    }
    *kind = HOST_DNS;
    return NULL;
}

/* Port 0 parses (the listener may ask the kernel for a free port); callers that need a real
 * port reject it. */
static const char *parse_port(const char *s, size_t n, uint16_t *port)
{
    if (n == 0)
        return "empty port";
    if (n > 5)
        return "port must be a number 1..65535";
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return "port must be a number 1..65535";
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return "port must be a number 1..65535";
    *port = (uint16_t)v;
    return NULL;
}

/* Splits "host[:port]" or "[v6][:port]". */
const char *addr_parse_hostport(const char *s, size_t n, hostport_t *hp)
{
    const char *rest;
    size_t rlen;
    bool bracketed = false;
    memset(hp, 0, sizeof *hp);
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return "missing ']' after the IPv6 address";
        bracketed = true;
        hp->host = s + 1;
        hp->hlen = (size_t)(close - s) - 1;
        rest = close + 1;
        rlen = n - (size_t)(rest - s);
        if (rlen > 0 && rest[0] != ':')
            return "unexpected text after ']'";
    } else {
        /* One colon separates the port; more than one is an unbracketed IPv6 address, which
         * check_host reports as such. */
        const char *colon = memchr(s, ':', n);
        if (colon && memchr(colon + 1, ':', n - (size_t)(colon - s) - 1))
            colon = NULL;
        hp->host = s;
        hp->hlen = colon ? (size_t)(colon - s) : n;
        rest = s + hp->hlen;
        rlen = n - hp->hlen;
    }
    const char *why = check_host(hp->host, hp->hlen, bracketed, &hp->kind);
    if (why)
        return why;
    if (rlen > 0) {
        hp->has_port = true;
        why = parse_port(rest + 1, rlen - 1, &hp->port);
        if (why)
            return why;
    }
    return NULL;
}

/* RFC 3986 pchar plus '/': unreserved, sub-delims, ':', '@' and %XX escapes. */
static const char *check_path(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (is_alnum(ch) || strchr("-._~!$&'()*+,;=:@/", ch))
            continue;
        if (ch == '%' && i + 2 < n && is_hex(p[i + 1]) && is_hex(p[i + 2])) {
            i += 2;
            continue;
        }
        return "path has a character that must be percent-encoded";
    }
    return NULL;
}

const char *addr_parse_url(const char *url, url_parts_t *u)
{
    size_t n = strlen(url);
    memset(u, 0, sizeof *u);
    if (n > URL_MAX)
        return "longer than 2048 characters";
    const char *sep = strstr(url, "://");
    if (!sep)
        return "must start with http:// or https://";
    size_t slen = (size_t)(sep - url);
    if (ascii_eq_nocase(url, slen, "https"))
        u->tls = true;
    else if (!ascii_eq_nocase(url, slen, "http"))
        return "scheme must be http or https";
    if (strpbrk(url, "?#"))
        return "query and fragment are not allowed";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
            return "spaces, control and non-ASCII characters are not allowed";
    const char *auth = sep + 3;
    const char *slash = strchr(auth, '/');
    size_t alen = slash ? (size_t)(slash - auth) : strlen(auth);
    if (memchr(auth, '@', alen))
        return "userinfo (user:password@) is not allowed; credentials do not belong in the URL";
    if (alen == 0)
        return "missing host";
    hostport_t hp;
    const char *why = addr_parse_hostport(auth, alen, &hp);
    if (why)
        return why;
    if (hp.has_port && hp.port == 0)
        return "port must be a number 1..65535";
    u->host = hp.host;
    u->hlen = hp.hlen;
    u->port = hp.has_port ? hp.port : (u->tls ? 443 : 80);
    if (slash) {
        size_t plen = strlen(slash);
        why = check_path(slash, plen);
        if (why)
            return why;
        while (plen > 0 && slash[plen - 1] == '/')
            plen--;
        u->path = slash;
        u->plen = plen;
    } else {
        u->path = "";
        u->plen = 0;
    }
    return NULL;
}

bool addr_is_dockerhub_alias(const char *name, size_t len)
{
    return ascii_eq_nocase(name, len, "index.docker.io") ||
           ascii_eq_nocase(name, len, "registry-1.docker.io") ||
           ascii_eq_nocase(name, len, "docker.io");
}

/* ---- Networks (client_groups[].cidrs, trusted_proxies) ------------------------------------ */

/* "A.B.C.D/N" or "V6/N" (a bare address is a /32 or /128). Host bits must be zero: a typo in
 * the prefix length should not silently widen or narrow the network. */
int config_cidr_parse(const diag_t *d, const char *field, const char *s, config_cidr_t *out)
{
    char q[80], addr[64];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= sizeof addr)
        return diag_fail(d, field, "%s is not a CIDR (e.g. 10.20.0.0/16 or fd00::/8)",
                         diag_quote(q, sizeof q, s, strlen(s)));
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, addr, out->addr) == 1) {
        out->v6 = false;
    } else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
        out->v6 = true;
    } else {
        return diag_fail(d, field, "%s is not an IPv4 or IPv6 address",
                         diag_quote(q, sizeof q, addr, alen));
    }
    unsigned max = out->v6 ? 128 : 32, prefix = max;
    if (slash) {
        const char *p = slash + 1;
        size_t pl = strlen(p);
        if (pl == 0 || pl > 3 || strspn(p, "0123456789") != pl || (pl > 1 && p[0] == '0'))
            return diag_fail(d, field, "%s: the prefix length is not a number",
                             diag_quote(q, sizeof q, s, strlen(s)));
        prefix = 0;
        for (size_t i = 0; i < pl; i++)
            prefix = prefix * 10 + (unsigned)(p[i] - '0');
        if (prefix > max)
            return diag_fail(d, field, "%s: the prefix length is over %u",
                             diag_quote(q, sizeof q, s, strlen(s)), max);
    }
    out->prefix = (uint8_t)prefix;
    for (unsigned bit = prefix; bit < max; bit++)
        if (out->addr[bit / 8] & (0x80u >> (bit % 8)))
            return diag_fail(d, field,
                             "%s has host bits set (did you mean a shorter address or a "
                             "longer prefix?)",
                             diag_quote(q, sizeof q, s, strlen(s)));
    /* ::ffff:a.b.c.d/N (N >= 96) is an IPv4 network: winch compares an IPv4 client that
     * arrives on a dual-stack socket as IPv4, so the network must be one too to match it. */
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (out->v6 && prefix >= 96 && memcmp(out->addr, mapped, sizeof mapped) == 0) {
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
        out->v6 = false;
        out->prefix = (uint8_t)(prefix - 96);
    }
    return 0;
}
