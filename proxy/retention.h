/** Retention inside the server (retention.c): the app's background eviction. Internal to
 * proxy/. */
#ifndef WINCH_PROXY_RETENTION_H
#define WINCH_PROXY_RETENTION_H

#include <uv.h>

#include "cache/cache.h"
#include "config/config.h"

typedef struct retention retention_t;

/** Starts the retention tick on loop for cfg's retention section (cfg and cache borrowed; they
 * outlive it). Resolves a percentage max_size against the cache's filesystem now. The tick
 * never keeps the loop alive. *out owned by the caller. Returns 0 or -errno. */
int retention_create(retention_t **out, uv_loop_t *loop, const config_t *cfg, cache_t *cache);
/** A fill failed with ENOSPC: evict at the next tick (a tenth of the cache, or down to the low
 * watermark). NULL is fine. */
void retention_disk_full(retention_t *r);
/** Stops the tick (a gc in flight finishes; the loop drains). Idempotent; NULL is fine. */
void retention_stop(retention_t *r);
/** Frees it after the loop has drained; NULL is fine. */
void retention_free(retention_t *r);

#endif
