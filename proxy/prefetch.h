/** Prefetch: when a client's manifest request resolves to an index, the platform manifests of
 * the client's platform set, then their configs and layers, are fetched in the background, so
 * the client's next requests find them cached or in flight. Blobs go through the same fills as
 * client requests (fill_get + producer_start): a client asking for a blob being prefetched
 * subscribes to that fill, one upstream GET. Content already cached costs nothing upstream.
 * Bounded: prefetch_max_concurrent jobs at once, prefetch_max_per_upstream of them to one
 * upstream, prefetch_max_queue waiting (more are dropped and logged). The client never waits.
 * Owned by the app; loop thread only. Internal to proxy/. */
#ifndef WINCH_PROXY_PREFETCH_H
#define WINCH_PROXY_PREFETCH_H

#include <stddef.h>

#include "proxy/call.h"

/** c's request resolved to the index img (borrowed; read during the call): queues the
 * platform manifests of c's client's platform set (platforms_select) when the rule for c's
 * repository has prefetch, attestation manifests too with attestations. No effect without
 * such a rule. */
void prefetch_index(call_t *c, const image_t *img);

/** Remembers the platform of each platform manifest of the index img (for restrict: a request
 * by digest names no platform). A bounded, direct-mapped memory: an entry may be overwritten
 * by another digest, and nothing survives a restart. The cache's records of stored indexes
 * (cache_child_platforms) are what restrict relies on; this covers the indexes a cache made
 * by an older winch holds without records, once served. */
void prefetch_note_index(prefetcher_t *p, const image_t *img);
/** The platform the last index seen gave digest. Returns 0 with *out set, or -1 if unknown. */
int prefetch_platform_of(const prefetcher_t *p, const char *digest, platform_t *out);

/** Creates the prefetcher. *out owned by the caller (prefetcher_free). */
int prefetcher_create(prefetcher_t **out, const config_t *cfg);
/** Drops the queue and stops every running job (shutdown). Run before the producers are
 * cancelled. */
void prefetcher_cancel_all(prefetcher_t *p);
/** Counters for tests and logs. */
size_t prefetcher_running(const prefetcher_t *p);
size_t prefetcher_queued(const prefetcher_t *p);
/** Frees the prefetcher; NULL is fine. Cancel first. */
void prefetcher_free(prefetcher_t *p);

#endif
