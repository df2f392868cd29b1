/* The client's address behind trusted proxies (realip.h). */
#include "proxy/realip.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* The address of ss as 4 or 16 bytes; an IPv4 client on a dual-stack socket arrives as
 * ::ffff:a.b.c.d and is compared as the IPv4 address it is. False for other families. */
static bool addr_bytes(const struct sockaddr_storage *ss, uint8_t addr[16], bool *v6)
{
    if (ss->ss_family == AF_INET) {
        memcpy(addr, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        *v6 = false;
        return true;
    }
    if (ss->ss_family != AF_INET6)
        return false;
    const uint8_t *a6 = ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
    if (memcmp(a6, v4_mapped, sizeof v4_mapped) == 0) {
        memcpy(addr, a6 + 12, 4);
        *v6 = false;
    } else {
        memcpy(addr, a6, 16);
        *v6 = true;
    }
    return true;
}

static bool cidr_holds(const config_cidr_t *c, const uint8_t *addr, bool v6)
{
    if (c->v6 != v6)
        return false;
    unsigned full = c->prefix / 8, rest = c->prefix % 8;
    if (memcmp(c->addr, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (c->addr[full] & mask) == (addr[full] & mask);
}

bool realip_in(const config_cidr_t *cidrs, size_t n, const struct sockaddr_storage *ss)
{
    uint8_t addr[16];
    bool v6;
    if (!ss || !addr_bytes(ss, addr, &v6))
        return false;
    for (size_t i = 0; i < n; i++)
        if (cidr_holds(&cidrs[i], addr, v6))
            return true;
    return false;
}

static void set_v4(struct sockaddr_storage *out, const uint8_t *a4)
{
    memset(out, 0, sizeof *out);
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    sin->sin_family = AF_INET;
    memcpy(&sin->sin_addr, a4, 4);
}

/* A port after an address: 1..5 digits, at most 65535 (the value is not kept). */
static bool port_ok(const char *s, size_t n)
{
    if (n == 0 || n > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    return v <= 65535;
}

/* s[0..n) as an address of family af into out (inet_pton wants a NUL-terminated copy). */
static bool pton(int af, const char *s, size_t n, struct sockaddr_storage *out)
{
    char tmp[REALIP_ELEM_MAX];
    uint8_t a[16];
    if (n == 0 || n >= sizeof tmp)
        return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (inet_pton(af, tmp, a) != 1)
        return false;
    if (af == AF_INET || memcmp(a, v4_mapped, sizeof v4_mapped) == 0) {
        set_v4(out, af == AF_INET ? a : a + 12);
        return true;
    }
    memset(out, 0, sizeof *out);
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    sin6->sin6_family = AF_INET6;
    memcpy(&sin6->sin6_addr, a, 16);
    return true;
}

bool realip_parse(const char *s, size_t len, struct sockaddr_storage *out)
{
    if (len == 0 || len >= REALIP_ELEM_MAX || memchr(s, '\0', len))
        return false;
    if (s[0] == '[') {
        /* [v6] or [v6]:port */
        const char *rb = memchr(s, ']', len);
        if (!rb)
            return false;
        size_t after = len - (size_t)(rb + 1 - s);
        if (after > 0 && (rb[1] != ':' || !port_ok(rb + 2, after - 1)))
            return false;
        return pton(AF_INET6, s + 1, (size_t)(rb - s - 1), out);
    }
    const char *colon = memchr(s, ':', len);
    if (!colon)
        return pton(AF_INET, s, len, out);
    if (!memchr(colon + 1, ':', len - (size_t)(colon + 1 - s))) {
        /* One colon: a.b.c.d:port (an IPv6 address has at least two). */
        size_t alen = (size_t)(colon - s);
        return port_ok(colon + 1, len - alen - 1) && pton(AF_INET, s, alen, out);
    }
    return pton(AF_INET6, s, len, out);
}

static bool ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

enum realip_how realip_client(const config_cidr_t *trusted, size_t ntrusted,
                              const struct sockaddr_storage *peer, const char *const *lines,
                              size_t nlines, struct sockaddr_storage *out)
{
    *out = *peer;
    if (ntrusted == 0 || !realip_in(trusted, ntrusted, peer))
        return REALIP_PEER;
    /* cur: the last address the walk vouches for, starting with the trusted peer. */
    struct sockaddr_storage cur = *peer;
    bool moved = false;
    for (size_t li = nlines; li-- > 0;) {
        const char *line = lines[li];
        size_t end = strlen(line);
        for (;;) {
            size_t start = end;
            while (start > 0 && line[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && ows(line[a]))
                a++;
            while (b > a && ows(line[b - 1]))
                b--;
            if (b > a) {
                struct sockaddr_storage ip;
                if (!realip_parse(line + a, b - a, &ip)) {
                    *out = cur;
                    return REALIP_GARBAGE;
                }
                cur = ip;
                moved = true;
                if (!realip_in(trusted, ntrusted, &ip)) {
                    *out = ip;
                    return REALIP_FORWARDED;
                }
            }
            if (start == 0)
                break;
            end = start - 1; /* before the comma */
        }
    }
    /* Every address was a trusted proxy: the left-most is the closest to the client. */
    *out = cur;
    return moved ? REALIP_FORWARDED : REALIP_PEER;
}

const char *realip_format(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    uint8_t addr[16];
    bool v6;
    if (cap == 0)
        return buf;
    if (!ss || !addr_bytes(ss, addr, &v6) ||
        !inet_ntop(v6 ? AF_INET6 : AF_INET, addr, buf, (socklen_t)cap))
        snprintf(buf, cap, "-");
    return buf;
}
