/** The client's address behind trusted proxies ("trusted_proxies", config_trusted.c): when the
 * socket's peer is a trusted proxy, the client is the right-most address of X-Forwarded-For
 * that is not itself trusted (each proxy appends the address it saw, so everything right of
 * that address was written by proxies winch trusts, and everything left of it by the client,
 * who may write anything). From any other peer the header is ignored. Pure: no I/O, no
 * allocation. Internal to proxy/.
 *
 * The header's grammar is read leniently, as proxies write it: comma-separated elements, with
 * spaces or tabs around them, in one or several header lines (HAProxy adds a line, nginx
 * appends to the last one); empty elements are skipped. An element is an IPv4 address, an IPv6
 * address, either with a port ("192.0.2.1:5000", "[2001:db8::1]:5000"), or an IPv6 address in
 * brackets. IPv4-mapped IPv6 addresses count as IPv4. Anything else ("unknown", a host name, a
 * zone index, an element over REALIP_ELEM_MAX bytes) stops the walk: the client is then the
 * last address the walk could vouch for (the trusted proxy left of which the garbage was), as
 * nginx's realip module does. */
#ifndef WINCH_PROXY_REALIP_H
#define WINCH_PROXY_REALIP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config/config.h"

/** Room for an address as text, NUL included (INET6_ADDRSTRLEN). */
#define REALIP_STR_MAX 46
/** Longest X-Forwarded-For element read (an IPv6 address in brackets with a port is 54). */
#define REALIP_ELEM_MAX 64
/** X-Forwarded-For lines read at most, the last ones (app.c keeps that many). */
#define REALIP_MAX_LINES 32

/** How the client address was found. */
enum realip_how {
    REALIP_PEER,      /* the socket's peer: not trusted, or trusted with no X-Forwarded-For */
    REALIP_FORWARDED, /* the right-most untrusted address (or the left-most, all trusted) */
    REALIP_GARBAGE,   /* the walk stopped at an element that is not an address: the last
                         trusted hop (the peer when the right-most element is garbage) */
};

/** True when ss (IPv4, IPv6, or IPv4-mapped IPv6) lies in one of cidrs[0..n). */
bool realip_in(const config_cidr_t *cidrs, size_t n, const struct sockaddr_storage *ss);

/** Parses one X-Forwarded-For element s[0..len) (no surrounding spaces) into *out (AF_INET,
 * or AF_INET6; a mapped address becomes AF_INET; port 0). Returns true when it is an address. */
bool realip_parse(const char *s, size_t len, struct sockaddr_storage *out);

/** The client of a request from peer whose X-Forwarded-For lines are lines[0..nlines) (in the
 * order received; borrowed, NUL-terminated). trusted[0..ntrusted) are the trusted proxies.
 * Writes the client into *out (the peer when REALIP_PEER) and says how it was found. */
enum realip_how realip_client(const config_cidr_t *trusted, size_t ntrusted,
                              const struct sockaddr_storage *peer, const char *const *lines,
                              size_t nlines, struct sockaddr_storage *out);

/** ss as text ("192.0.2.1", "2001:db8::1"; a mapped address as IPv4) into buf[cap]; "-" when
 * it is neither. Returns buf. */
const char *realip_format(const struct sockaddr_storage *ss, char *buf, size_t cap);

#endif
