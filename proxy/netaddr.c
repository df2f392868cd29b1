/* Address classes (netaddr.h). The ranges are IANA's special-purpose registries (RFC 6890 and
 * its updates) reduced to what matters for a proxy deciding where it may connect: anything a
 * remote party could use to reach inside the host or its network is not "public". */
#include "proxy/netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

/* a.b.c.d in host order. */
static enum netaddr_class class_v4(uint32_t a)
{
    unsigned b0 = a >> 24, b1 = (a >> 16) & 0xff, b2 = (a >> 8) & 0xff;
    if (b0 == 127)
        return NETADDR_LOOPBACK;
    if (b0 == 0)
        return NETADDR_UNSPECIFIED;
    if (b0 == 10 || (b0 == 172 && (b1 & 0xf0) == 16) || (b0 == 192 && b1 == 168) ||
        (b0 == 100 && (b1 & 0xc0) == 64))
        return NETADDR_PRIVATE;
    if (b0 == 169 && b1 == 254)
        return NETADDR_LINKLOCAL;
    if ((b0 & 0xf0) == 224)
        return NETADDR_MULTICAST;
    if ((b0 & 0xf0) == 240 || (b0 == 192 && b1 == 0 && (b2 == 0 || b2 == 2)) ||
        (b0 == 198 && b1 == 51 && b2 == 100) || (b0 == 203 && b1 == 0 && b2 == 113) ||
        (b0 == 198 && (b1 & 0xfe) == 18))
        return NETADDR_RESERVED;
    return NETADDR_PUBLIC;
}

static uint32_t v4_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static enum netaddr_class class_v6(const uint8_t *a)
{
    static const uint8_t nat64[12] = {0x00, 0x64, 0xff, 0x9b};
    if (all_zero(a, 16))
        return NETADDR_UNSPECIFIED;
    if (all_zero(a, 15) && a[15] == 1)
        return NETADDR_LOOPBACK;
    /* IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96 and NAT64 64:ff9b::/96 reach an IPv4
     * address: the kernel (mapped) or a translator (NAT64) delivers them there. */
    if (all_zero(a, 10) && a[10] == 0xff && a[11] == 0xff)
        return class_v4(v4_at(a + 12));
    if (all_zero(a, 12))
        return class_v4(v4_at(a + 12));
    if (memcmp(a, nat64, sizeof nat64) == 0)
        return class_v4(v4_at(a + 12));
    if ((a[0] & 0xfe) == 0xfc || (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0))
        return NETADDR_PRIVATE; /* unique local fc00::/7, deprecated site-local fec0::/10 */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
        return NETADDR_LINKLOCAL;
    if (a[0] == 0xff)
        return NETADDR_MULTICAST;
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8)
        return NETADDR_RESERVED; /* documentation 2001:db8::/32 */
    return NETADDR_PUBLIC;
}

enum netaddr_class netaddr_classify(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        return class_v4(ntohl(s4->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        return class_v6(s6->sin6_addr.s6_addr);
    }
    return NETADDR_RESERVED;
}

const char *netaddr_class_name(enum netaddr_class c)
{
    static const char *const names[NETADDR_NCLASSES] = {
        [NETADDR_PUBLIC] = "public",           [NETADDR_LOOPBACK] = "loopback",
        [NETADDR_PRIVATE] = "private",         [NETADDR_LINKLOCAL] = "link-local",
        [NETADDR_UNSPECIFIED] = "unspecified", [NETADDR_MULTICAST] = "multicast",
        [NETADDR_RESERVED] = "reserved",
    };
    return (unsigned)c < NETADDR_NCLASSES ? names[c] : "reserved";
}

const char *netaddr_str(const struct sockaddr *sa, char *out, size_t cap)
{
    const void *a = NULL;
    if (sa->sa_family == AF_INET)
        a = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    else if (sa->sa_family == AF_INET6)
        a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    if (!a || !inet_ntop(sa->sa_family, a, out, (socklen_t)cap)) {
        if (cap > 1) {
            out[0] = '?';
            out[1] = '\0';
        }
    }
    return out;
}

bool netaddr_host_listed(const char *host, char *const *list, size_t n)
{
    size_t hl = strlen(host);
    for (size_t i = 0; i < n; i++) {
        const char *e = list[i];
        if (e[0] == '*' && e[1] == '.') {
            size_t sl = strlen(e + 1); /* ".suffix" */
            if (hl > sl && strcmp(host + hl - sl, e + 1) == 0)
                return true;
        } else if (strcmp(host, e) == 0) {
            return true;
        }
    }
    return false;
}
