/* Retention inside the server: keeps the cache within `retention.max_size`, evicts what nobody
 * pulled for `max_unused`, and makes room when a fill hits a full disk.
 *
 * The total is an estimate kept without scanning: the last gc's scan (total_before - freed)
 * plus what the cache indexed since (cache_bytes_added). A first gc right after start (which
 * removes nothing unless the cache is already over its bound) gives the base; a gc every
 * RESYNC_MS corrects drift from tools (winch import, prune) beside the server. A tick every
 * TICK_MS compares the estimate with the bound; over it, a gc evicts least recently used
 * content down to low_watermark of the bound. The gc itself (cache_gc) scans on the
 * threadpool and removes in slices, so the loop is never held for long. */
#include "proxy/retention.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"

#define TICK_MS 1000
#define RESYNC_MS (5 * 60 * 1000)

struct retention {
    uv_loop_t *loop;
    const config_t *cfg;
    cache_t *cache;
    uv_timer_t tick;
    uint64_t max_bytes; /* 0: no size bound */
    bool known;         /* base is a scan's result */
    uint64_t base, added_at_base;
    int64_t last_gc_ms, last_unused_ms;
    bool disk_full;     /* a fill hit ENOSPC: make room at the next tick, if still needed */
    uint64_t full_need; /* the largest failed fill's size since the last tick; 0: unknown */
    bool running;       /* a gc of ours is in flight */
    bool stopping;
    uint64_t evicted_items, evicted_bytes; /* since start, for the metrics */
};

static uint64_t estimate(const retention_t *r)
{
    return r->base + (cache_bytes_added(r->cache) - r->added_at_base);
}

static void on_gc_done(void *arg, int status, const cache_gc_result_t *res)
{
    retention_t *r = arg;
    r->running = false;
    if (status < 0) {
        LOG_WARN("retention: eviction failed: %s", err_str(status));
    } else {
        r->base = res->total_before - res->freed;
        r->known = true;
        r->evicted_items += res->contents;
        r->evicted_bytes += res->freed;
        if (res->contents || res->tags)
            LOG_INFO("retention: removed %llu tag(s) and %llu item(s), %llu bytes freed "
                     "(%llu bytes before; %llu kept as used since; scan %lld ms, longest "
                     "loop slice %lld us)",
                     (unsigned long long)res->tags, (unsigned long long)res->contents,
                     (unsigned long long)res->freed, (unsigned long long)res->total_before,
                     (unsigned long long)res->skipped, (long long)res->scan_ms,
                     (long long)res->longest_slice_us);
    }
    if (r->stopping)
        uv_close((uv_handle_t *)&r->tick, NULL);
}

static void start_gc(retention_t *r, uint64_t target, bool unused)
{
    const config_t *cfg = r->cfg;
    cache_gc_opts_t o = {
        .target_bytes = target,
        .protect = (const char *const *)cfg->retention_protect,
        .nprotect = cfg->retention_nprotect,
    };
    if (unused && cfg->retention_max_unused_s)
        o.unused_before_ms = time_wall_ms() - (int64_t)cfg->retention_max_unused_s * 1000;
    /* The configuration's pins are kept like stored ones (cache_gc copies the list). */
    const char **keep;
    if (config_pin_digests(cfg, &keep, &o.nkeep) < 0) {
        LOG_WARN("retention: out of memory listing the configuration's pins; not evicting");
        return;
    }
    o.keep = keep;
    /* The estimate counts from here: content indexed while the gc runs is added to its
     * result. */
    r->added_at_base = cache_bytes_added(r->cache);
    int rc = cache_gc(r->cache, &o, on_gc_done, r);
    free(keep);
    if (rc < 0) {
        if (rc != -EBUSY)
            LOG_WARN("retention: cannot start eviction: %s", err_str(rc));
        return;
    }
    r->running = true;
    r->last_gc_ms = time_mono_ms();
    if (unused)
        r->last_unused_ms = r->last_gc_ms;
}

/* Whether a disk-full signal still calls for eviction at this tick. Not when the failed blob
 * could never fit on the filesystem (evicting would only lose content, again at each retry),
 * nor when room came back since (an operator freed space, or another fill's temp file went):
 * the signal is a second old by now. Unknown sizes (chunked bodies) count as full while less
 * than a tenth of the filesystem is free. */
static bool still_full(retention_t *r)
{
    uint64_t need = r->full_need;
    r->full_need = 0;
    struct statvfs st;
    if (statvfs(r->cfg->cache_dir, &st) < 0)
        return true;
    uint64_t total = (uint64_t)st.f_blocks * st.f_frsize;
    uint64_t avail = (uint64_t)st.f_bavail * st.f_frsize;
    if (need && need > total) {
        LOG_WARN("retention: disk full for a blob of %llu bytes, which can never fit on the "
                 "cache's filesystem (%llu bytes): nothing evicted",
                 (unsigned long long)need, (unsigned long long)total);
        return false;
    }
    if (need ? avail > need : avail >= total / 10) {
        if (need)
            LOG_INFO("retention: disk full signal dropped: %llu bytes free now, the failed fill "
                     "needed %llu",
                     (unsigned long long)avail, (unsigned long long)need);
        else
            LOG_INFO("retention: disk full signal dropped: %llu of %llu bytes free now",
                     (unsigned long long)avail, (unsigned long long)total);
        return false;
    }
    return true;
}

static void on_tick(uv_timer_t *t)
{
    retention_t *r = t->data;
    /* Pull counts reach the index within a tick even when nobody pulls after them. */
    cache_stats_flush(r->cache);
    if (r->running || r->stopping || cache_gc_running(r->cache))
        return;
    int64_t now = time_mono_ms();
    uint64_t low = r->max_bytes / 100 * r->cfg->retention_low_watermark_pct;
    bool unused_due = r->cfg->retention_max_unused_s &&
                      now - r->last_unused_ms >=
                          (int64_t)(r->cfg->retention_max_unused_s * 1000 < 60000
                                        ? r->cfg->retention_max_unused_s * 1000
                                        : 60000);
    if (r->disk_full) {
        r->disk_full = false;
        if (!still_full(r))
            return;
        /* The disk filled before the bound did (or there is none): free a tenth. */
        uint64_t est = r->known ? estimate(r) : 0;
        uint64_t target = est / 10 * 9;
        if (r->max_bytes && low < target)
            target = low;
        LOG_WARN("retention: disk full: evicting down to %llu bytes", (unsigned long long)target);
        start_gc(r, target, true);
        return;
    }
    if (!r->known || now - r->last_gc_ms >= RESYNC_MS || unused_due) {
        start_gc(r, r->max_bytes ? low : UINT64_MAX, true);
        return;
    }
    if (r->max_bytes && estimate(r) > r->max_bytes)
        start_gc(r, low, true);
}

static void on_checked(void *arg, int status, const cache_verify_result_t *res)
{
    (void)arg;
    if (status < 0)
        LOG_WARN("cache check after start failed: %s", err_str(status));
    else if (res->problems)
        LOG_WARN("cache check after start: %llu of %llu entries disagreed with the store and "
                 "were fixed (run winch verify to rehash everything)",
                 (unsigned long long)res->problems, (unsigned long long)res->checked);
    else
        LOG_INFO("cache check after start: %llu entries, all present (%lld ms)",
                 (unsigned long long)res->checked, (long long)res->scan_ms);
}

static void on_check_problem(void *arg, const cache_verify_problem_t *p)
{
    (void)arg;
    LOG_WARN("cache check: %s %s%s",
             p->what == CACHE_VERIFY_MISSING  ? "index entry without its file"
             : p->what == CACHE_VERIFY_ORPHAN ? "file without an index entry"
                                              : "wrong size",
             p->digest, p->fixed ? " (fixed)" : "");
}

int retention_create(retention_t **out, uv_loop_t *loop, const config_t *cfg, cache_t *cache)
{
    retention_t *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->loop = loop;
    r->cfg = cfg;
    r->cache = cache;
    r->max_bytes = cfg->retention_max_size;
    if (cfg->retention_max_size_pct) {
        struct statvfs st;
        if (statvfs(cfg->cache_dir, &st) < 0) {
            int rc = -errno;
            LOG_ERROR("retention: cannot size the filesystem of %s: %s", cfg->cache_dir,
                      err_str(rc));
            free(r);
            return rc;
        }
        uint64_t fs = (uint64_t)st.f_blocks * st.f_frsize;
        r->max_bytes = fs / 100 * cfg->retention_max_size_pct;
    }
    uv_timer_init(loop, &r->tick);
    r->tick.data = r;
    /* The tick must not keep a stopping loop alive on its own. */
    uv_timer_start(&r->tick, on_tick, 50, TICK_MS);
    uv_unref((uv_handle_t *)&r->tick);
    /* Start-up never scans blobs/ (cache_open stays cheap); this check runs beside serving:
     * no index entry without its file, no file without its entry. */
    cache_verify_opts_t vo = {.orphans = true, .fix = true, .on_problem = on_check_problem};
    cache_verify(cache, &vo, on_checked, NULL);
    if (r->max_bytes)
        LOG_INFO("retention: max_size %llu bytes, evicting down to %u%% of it",
                 (unsigned long long)r->max_bytes, cfg->retention_low_watermark_pct);
    *out = r;
    return 0;
}

void retention_disk_full(retention_t *r, uint64_t need)
{
    if (!r || r->stopping)
        return;
    r->disk_full = true;
    if (need > r->full_need)
        r->full_need = need;
}

void retention_stop(retention_t *r)
{
    if (!r || r->stopping)
        return;
    r->stopping = true;
    uv_timer_stop(&r->tick);
    if (!r->running)
        uv_close((uv_handle_t *)&r->tick, NULL);
}

void retention_free(retention_t *r)
{
    /* After the loop drained: a gc in flight kept it running until its callback closed the
     * timer, so nothing refers to r any more. */
    free(r);
}

void retention_view(const retention_t *r, retention_view_t *out)
{
    *out = (retention_view_t){
        .known = r->known,
        .bytes = r->known ? estimate(r) : 0,
        .max_bytes = r->max_bytes,
        .evicted_items = r->evicted_items,
        .evicted_bytes = r->evicted_bytes,
    };
}
