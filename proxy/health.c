/* The circuit breaker per upstream (health.h).
 *
 * CLOSED (serving) --threshold consecutive failures--> OPEN: a probe timer runs; each tick
 * sends GET <base>/v2/ unless one is in flight. Any HTTP answer to a probe (or to any other
 * request that still reaches the upstream) closes the breaker; a failed probe waits for the
 * next tick. distribution's proxy has no such thing: a hung upstream there makes every
 * cached-tag request wait minutes. */
#include "proxy/health.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "common/log.h"

struct health {
    uv_loop_t *loop;
    upstream_t *up;
    const config_t *cfg;
    uint32_t failures; /* consecutive */
    bool down;
    bool stopped;
    upreq_t *probe; /* in flight, or NULL */
    uv_timer_t *timer;
};

static void timer_closed(uv_handle_t *h)
{
    free(h);
}

int health_create(health_t **out, uv_loop_t *loop, upstream_t *up, const config_t *cfg)
{
    health_t *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->timer = malloc(sizeof *h->timer);
    if (!h->timer) {
        free(h);
        return -ENOMEM;
    }
    uv_timer_init(loop, h->timer);
    h->timer->data = h;
    h->loop = loop;
    h->up = up;
    h->cfg = cfg;
    *out = h;
    return 0;
}

static const char *name_of(const health_t *h)
{
    return upstream_config(h->up)->name;
}

static void set_up(health_t *h)
{
    if (h->down)
        LOG_WARN("upstream %s answers again: serving from it", name_of(h));
    h->down = false;
    h->failures = 0;
    uv_timer_stop(h->timer);
}

/* Any answer but a 5xx means the upstream is back (a 401 from /v2/ is a registry asking for a
 * token); a 5xx is the same failure the breaker opened for, so it stays open. */
static void probe_on_headers(upreq_t *r, void *arg, int status)
{
    (void)r;
    if (status < 500)
        set_up(arg);
}

static void probe_on_body(upreq_t *r, void *arg, const char *data, size_t len)
{
    (void)r;
    (void)arg;
    (void)data;
    (void)len;
}

static void probe_on_done(upreq_t *r, void *arg, int err)
{
    health_t *h = arg;
    (void)r;
    h->probe = NULL;
    if (err && h->down)
        LOG_DEBUG("upstream %s: probe failed (%s)", name_of(h), err_str(err));
}

static const upreq_cbs_t probe_cbs = {
    .on_headers = probe_on_headers,
    .on_body = probe_on_body,
    .on_done = probe_on_done,
};

static void on_probe_timer(uv_timer_t *t)
{
    health_t *h = t->data;
    if (h->probe || h->stopped || !h->down)
        return;
    char path[512];
    snprintf(path, sizeof path, "%s/v2/", upstream_config(h->up)->base_path);
    /* Priority lane, so a queue of blob fills cannot hold the probe back; a hung answer ends
     * at the fetch deadline like any small exchange. */
    upreq_opts_t opts = {.lane = UPREQ_PRIORITY, .deadline_ms = h->cfg->upstream_fetch_deadline_ms};
    if (upreq_start_opts(&h->probe, h->up, "GET", path, NULL, &probe_cbs, h, &opts) < 0)
        h->probe = NULL;
}

void health_report(health_t *h, int status, int err)
{
    if (h->stopped)
        return;
    /* winch's own limits (a full or slow wait queue) and refusals (a redirect to an address it
     * may not reach) say nothing about whether the upstream is up: a flood of requests must not
     * open the breaker for everyone. */
    if (err == WE_BUSY || err == WE_FORBIDDEN)
        return;
    bool failed = err != 0 || status >= 500;
    if (!failed) {
        set_up(h);
        return;
    }
    if (h->failures < UINT32_MAX)
        h->failures++;
    uint32_t threshold = h->cfg->upstream_failure_threshold;
    if (h->down || threshold == 0 || h->failures < threshold)
        return;
    h->down = true;
    LOG_WARN("upstream %s is down after %u failures in a row: serving from the cache, probing "
             "every %u ms",
             name_of(h), h->failures, h->cfg->upstream_probe_interval_ms);
    uint64_t every = h->cfg->upstream_probe_interval_ms;
    uv_timer_start(h->timer, on_probe_timer, every, every);
}

bool health_down(const health_t *h)
{
    return h->down;
}

uint32_t health_failures(const health_t *h)
{
    return h->failures;
}

uint32_t health_retry_after_s(const health_t *h)
{
    uint32_t s = (h->cfg->upstream_probe_interval_ms + 999) / 1000;
    return s ? s : 1;
}

void health_stop(health_t *h)
{
    if (!h || h->stopped)
        return;
    h->stopped = true;
    if (h->probe) {
        upreq_cancel(h->probe);
        h->probe = NULL;
    }
    uv_timer_stop(h->timer);
    uv_close((uv_handle_t *)h->timer, timer_closed);
    h->timer = NULL;
}

void health_destroy(health_t *h)
{
    if (!h)
        return;
    if (h->timer) {
        /* Never stopped (a failed start): the handle still closes on the loop. */
        health_stop(h);
    }
    free(h);
}
