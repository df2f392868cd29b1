/** Retention inside the server (retention.c): the app's background eviction. Internal to
 * proxy/. */
#ifndef WINCH_PROXY_RETENTION_H
#define WINCH_PROXY_RETENTION_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cache/cache.h"
#include "config/config.h"

typedef struct retention retention_t;

/** Starts the retention tick on loop for cfg's retention section (cfg and cache borrowed; they
 * outlive it). Resolves a percentage max_size against the cache's filesystem now. The tick
 * never keeps the loop alive. *out owned by the caller. Returns 0 or -errno. */
int retention_create(retention_t **out, uv_loop_t *loop, const config_t *cfg, cache_t *cache);
/** A fill of need bytes (0: unknown) failed with ENOSPC: at the next tick, unless the blob can
 * never fit on the filesystem or room has come back by then, evict a tenth of the cache (or
 * down to the low watermark). NULL is fine. */
void retention_disk_full(retention_t *r, uint64_t need);
/** Stops the tick (a gc in flight finishes; the loop drains). Idempotent; NULL is fine. */
void retention_stop(retention_t *r);
/** What retention knows of the cache's size, for the metrics and the status page. */
typedef struct retention_view {
    bool known;         /* bytes comes from a scan (the first gc after start has run) */
    uint64_t bytes;     /* content bytes: the last scan plus what was indexed since */
    uint64_t max_bytes; /* the bound; 0: none */
    uint64_t evicted_items, evicted_bytes; /* removed by retention since start */
} retention_view_t;
void retention_view(const retention_t *r, retention_view_t *out);

/** Frees it after the loop has drained; NULL is fine. */
void retention_free(retention_t *r);

#endif
