/** Negative caching of upstream 404s (issue 8): a manifest reference or a blob digest the
 * upstream just said it does not have is answered 404 for a short TTL without asking again, so
 * a client (or an attacker) repeating requests for missing content costs the upstream nothing
 * and never waits on it. Keyed by (upstream, repository, reference); bounded by a count, the
 * least recently used entry goes first. Owned by the application (app.c), lent to calls
 * through call_env_t. Loop thread only. Internal to proxy/. */
#ifndef WINCH_PROXY_NEGCACHE_H
#define WINCH_PROXY_NEGCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct negcache negcache_t;

/** An empty cache holding at most max_entries (>= 1). *out owned by the caller. */
int negcache_create(negcache_t **out, size_t max_entries);
/** NULL is fine. */
void negcache_free(negcache_t *n);

/** Remembers a 404 for (upstream, repo, ref) (borrowed strings, copied) until now_ms + ttl_ms;
 * a repeated put renews it. ttl_ms 0 or n NULL: nothing is kept. Evicts the least recently used
 * entry when full. Out of memory: nothing is kept (the cache is an optimisation). */
void negcache_put(negcache_t *n, const char *upstream, const char *repo, const char *ref,
                  int64_t now_ms, uint32_t ttl_ms);

/** True when a 404 for (upstream, repo, ref) was remembered and has not expired at now_ms. An
 * expired entry found is dropped. n NULL: false. */
bool negcache_hit(negcache_t *n, const char *upstream, const char *repo, const char *ref,
                  int64_t now_ms);

/** Forgets (upstream, repo, ref), e.g. once the content was found after all. */
void negcache_forget(negcache_t *n, const char *upstream, const char *repo, const char *ref);

/** Entries held (expired ones included until found or evicted). */
size_t negcache_count(const negcache_t *n);

#endif
