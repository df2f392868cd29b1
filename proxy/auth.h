/** Upstream authentication, the parts that do no I/O: WWW-Authenticate challenges (Bearer and
 * Basic), the token endpoint's URL and JSON answer, the token cache, Basic credentials, and
 * the repository scope a request path needs. The upstream client (upstream_auth.c) drives the
 * flow (401 -> token flight -> retry) with these.
 *
 * Nothing here logs, and no error carries a token or a password.
 */
#ifndef WINCH_PROXY_AUTH_H
#define WINCH_PROXY_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_MAX_REALM 1024
#define AUTH_MAX_SERVICE 256
#define AUTH_MAX_SCOPE 1024       /* the scope parameter as sent: space-separated scopes */
#define AUTH_MAX_SCOPES 16        /* scopes in one challenge */
#define AUTH_MAX_TOKEN 8192       /* a token longer than this is refused (it goes in a header) */
#define AUTH_MAX_BODY (64 * 1024) /* token endpoint answers are read up to this */
#define AUTH_MAX_KEY (AUTH_MAX_REALM + AUTH_MAX_SERVICE + AUTH_MAX_SCOPE + 4)
/* Tokens are not used in their last seconds, so one never expires on its way upstream. */
#define AUTH_EXPIRY_MARGIN_MS 10000
/* Token lifetime when the answer has none, and the least one honoured (token.md). */
#define AUTH_MIN_EXPIRES_S 60

typedef enum auth_scheme { AUTH_NONE = 0, AUTH_BASIC = 1, AUTH_BEARER = 2 } auth_scheme_t;

/** One challenge: the scheme and the parameters winch uses. */
typedef struct auth_challenge {
    auth_scheme_t scheme;
    char realm[AUTH_MAX_REALM + 1];
    char service[AUTH_MAX_SERVICE + 1];
    char scope[AUTH_MAX_SCOPE + 1]; /* as given: scopes separated by spaces */
    char error[64];                 /* error="..." (RFC 6750), informative */
} auth_challenge_t;

/** Parses one WWW-Authenticate header value: any number of comma-separated challenges, each
 * `scheme [token68 | name=token|"quoted string", ...]`, schemes and parameter names
 * case-insensitive. Merges into *best (zero it before the first line): a Bearer challenge
 * with a realm beats a Basic one, and the first of each kind wins. Call once per header line.
 * Returns how many Bearer/Basic challenges the value held (0 is fine: another scheme), or
 * WE_INVALID when it is malformed and held none before the error. */
int auth_challenge_parse(const char *value, auth_challenge_t *best);

/** The cache key of a Bearer challenge: realm, service and the sorted, de-duplicated scopes.
 * Returns 0, WE_TOOBIG or WE_INVALID (more than AUTH_MAX_SCOPES scopes). */
int auth_token_key(const auth_challenge_t *c, char *out, size_t cap);

/** The token request URL: realm + service=..&scope=..&scope=.. (one scope parameter per scope,
 * values percent-encoded; appended with '&' when the realm has a query). Returns 0, WE_TOOBIG,
 * or WE_INVALID (realm with a fragment, or too many scopes). */
int auth_token_url(const auth_challenge_t *c, char *out, size_t cap);

/** Parses a token endpoint answer (JSON): `token`, else `access_token`; `expires_in` (default
 * and minimum 60 s); `issued_at` (RFC 3339; when absent, unparsable or in the future: now_ms).
 * On 0, *token is owned by the caller (free) and *expires_ms = issued_at + expires_in, in
 * Unix milliseconds. Returns WE_PROTO for anything else (no token, a token over AUTH_MAX_TOKEN
 * or with bytes a header cannot carry, not JSON), -ENOMEM. */
int auth_token_parse(const char *body, size_t len, int64_t now_ms, char **token,
                     int64_t *expires_ms);

/** RFC 3339 date-time ("2024-05-01T12:00:00.5Z", "...+02:00") to Unix milliseconds. Returns
 * 0 or WE_INVALID. */
int auth_rfc3339_ms(const char *s, int64_t *ms);

/** Writes the header line "Authorization: Basic base64(user:pass)" into out. Returns 0,
 * WE_TOOBIG, or WE_INVALID (a ':' in user, or control bytes). */
int auth_basic_header(const char *user, const char *pass, char *out, size_t cap);

/** The pull scope a registry request needs, "repository:<name>:pull", from its upstream path
 * ("<base_path>/v2/<name>/manifests/<ref>", blobs/<digest>, referrers/<digest>, tags/list;
 * any query ignored). Returns 0, or WE_NOTFOUND for paths without a repository (/v2/,
 * _catalog), WE_TOOBIG. */
int auth_repo_scope(const char *path, const char *base_path, char *out, size_t cap);

/** True when the scope list of a cache key (or any space-separated scope list) grants want
 * ("repository:<name>:pull"): some scope names the same resource with the action, or '*'. */
bool auth_scopes_grant(const char *scopes, const char *want);

/* ---- Token cache ------------------------------------------------------------------------- */

typedef struct auth_cache auth_cache_t;

/** A cache of at most max tokens. Returns 0 or -ENOMEM. */
int auth_cache_create(auth_cache_t **out, size_t max);
void auth_cache_free(auth_cache_t *c);

/** The token stored under key, if still usable at now_ms (more than AUTH_EXPIRY_MARGIN_MS
 * before its expiry); borrowed until the next put or drop. *gen gets its generation (never 0).
 * NULL when none. */
const char *auth_cache_get(const auth_cache_t *c, const char *key, int64_t now_ms, uint64_t *gen);

/** A usable token that was stored with `proactive` and whose scopes grant want (see
 * auth_scopes_grant): what a request sends before any challenge. NULL when none. */
const char *auth_cache_find_scope(const auth_cache_t *c, const char *want, int64_t now_ms,
                                  uint64_t *gen);

/** Stores a copy of token under key (replacing the key's previous token) until expires_ms;
 * when full, drops an expired entry or else the one expiring first. *gen gets the new
 * entry's generation. Returns 0 or -ENOMEM. */
int auth_cache_put(auth_cache_t *c, const char *key, bool proactive, const char *token,
                   int64_t expires_ms, uint64_t *gen);

/** Forgets the token of generation gen (one the upstream refused). */
void auth_cache_drop(auth_cache_t *c, uint64_t gen);

/** Entries held (for tests). */
size_t auth_cache_size(const auth_cache_t *c);

#endif
