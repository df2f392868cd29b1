/** Absolute http(s) URLs as the upstream client meets them: redirect targets (Location) and
 * token realms. Deliberately narrow: only http and https, no userinfo, no fragments kept,
 * printable ASCII only, every part bounded. Anything else is refused rather than guessed at,
 * because these strings come from the network and decide where winch connects next.
 */
#ifndef WINCH_PROXY_URL_H
#define WINCH_PROXY_URL_H

#include <stdbool.h>
#include <stdint.h>

/** Longest URL accepted (pre-signed CDN URLs run to a few KiB). */
#define URL_MAX 4096
/** Longest host name (DNS limit). */
#define URL_MAX_HOST 253

typedef struct url {
    bool tls;                    /* https */
    uint16_t port;               /* explicit, or 80/443 */
    char host[URL_MAX_HOST + 1]; /* lowercase; IPv6 literals without brackets */
    char path[URL_MAX + 1];      /* path and query, always starting with '/'; no fragment */
} url_t;

/** Parses an absolute http:// or https:// URL (scheme case-insensitive) into *out. Returns 0,
 * WE_TOOBIG (over URL_MAX or URL_MAX_HOST) or WE_INVALID (another scheme, userinfo, a bad
 * host or port, spaces or control or non-ASCII bytes). */
int url_parse(url_t *out, const char *s);

/** Resolves ref (a Location value: absolute, network-path "//host/..", absolute-path,
 * query-only or relative-path reference, RFC 3986 section 5) against base into *out, removing
 * dot segments. out must not be base. Same errors as url_parse. */
int url_resolve(url_t *out, const url_t *base, const char *ref);

#endif
