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
