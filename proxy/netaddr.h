/** What kind of network an IP address belongs to, for the upstream client's rule that a
 * redirect or a token realm never sends winch to an internal address (loopback, private,
 * link-local: a cloud metadata service at 169.254.169.254, an admin port on 127.0.0.1) unless
 * the upstream itself lives on such an address. Pure functions; no I/O, no DNS. */
#ifndef WINCH_PROXY_NETADDR_H
#define WINCH_PROXY_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/** Address classes. IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and NAT64
 * (64:ff9b::a.b.c.d) IPv6 addresses are classified by the IPv4 address they carry. */
enum netaddr_class {
    NETADDR_PUBLIC,      /* everything not below */
    NETADDR_LOOPBACK,    /* 127.0.0.0/8, ::1 */
    NETADDR_PRIVATE,     /* 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT), fc00::/7, fec0::/10 */
    NETADDR_LINKLOCAL,   /* 169.254/16, fe80::/10 */
    NETADDR_UNSPECIFIED, /* 0.0.0.0/8, :: */
    NETADDR_MULTICAST,   /* 224/4, ff00::/8 */
    NETADDR_RESERVED,    /* 240/4 and 255.255.255.255, 192.0.0/24, documentation and benchmark
                            ranges (192.0.2/24, 198.51.100/24, 203.0.113/24, 198.18/15,
                            2001:db8::/32), and anything that is not IPv4 or IPv6 */
    NETADDR_NCLASSES
};

/** The class of sa (AF_INET or AF_INET6; anything else is NETADDR_RESERVED). */
enum netaddr_class netaddr_classify(const struct sockaddr *sa);

/** "public", "loopback", "private", "link-local", "unspecified", "multicast", "reserved". */
const char *netaddr_class_name(enum netaddr_class c);

/** Writes sa's address (no port) as text into out[cap] ("?" when it cannot). Returns out. */
const char *netaddr_str(const struct sockaddr *sa, char *out, size_t cap);

/** True when host (lowercase, IPv6 without brackets) is in list: an exact entry, or an entry
 * "*.suffix" with host ending in ".suffix" (not suffix itself). list as in
 * config_upstream_t.allow_redirect_hosts (borrowed). */
bool netaddr_host_listed(const char *host, char *const *list, size_t n);

#endif
