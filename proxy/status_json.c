/* The status page as JSON, `GET /_winch/status.json` (status.h): what `winch status` prints.
 * The same numbers as the HTML page, every list bounded (fills STATUS_JSON_FILLS, top images
 * STATUS_JSON_TOP), built with jansson into one body. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/flight.h"
#include "common/timeutil.h"
#include "common/topk.h"
#include "proxy/cli_commands.h"
#include "proxy/health.h"
#include "proxy/producer.h"
#include "proxy/reply.h"
#include "proxy/retention.h"
#include "proxy/server.h"
#include "proxy/status.h"
#include "proxy/upstream.h"

#define STATUS_JSON_FILLS 50
#define STATUS_JSON_TOP 10

/* Sets key to v. A value that could not be made (NULL: out of memory) is left out, as
 * json_object_set_new refuses it: the document stays valid JSON. */
static void set(json_t *o, const char *key, json_t *v)
{
    json_object_set_new(o, key, v);
}

static json_t *u64(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static json_t *requests(const metrics_totals_t *t)
{
    json_t *o = json_object();
    uint64_t from_cache = t->results[METRICS_HIT] + t->results[METRICS_COALESCED] +
                          t->results[METRICS_STALE] + t->results[METRICS_REVALIDATED];
    uint64_t cacheable = from_cache + t->results[METRICS_MISS];
    set(o, "total", u64(t->requests));
    set(o, "from_cache", u64(from_cache));
    set(o, "cacheable", u64(cacheable));
    set(o, "hit_ratio",
        cacheable ? json_real((double)from_cache / (double)cacheable) : json_null());
    json_t *by = json_object();
    for (int i = 0; i < METRICS_RESULT_N; i++)
        set(by, metrics_result_name((enum metrics_result)i), u64(t->results[i]));
    set(o, "by_result", by);
    return o;
}

static json_t *last_hour(const metrics_t *m)
{
    metrics_minute_t mn[METRICS_MINUTES];
    metrics_last_hour(m, time_mono_ms(), mn);
    metrics_minute_t sum = {0};
    for (int i = 0; i < METRICS_MINUTES; i++) {
        sum.served_cache += mn[i].served_cache;
        sum.served_upstream += mn[i].served_upstream;
        sum.fetched += mn[i].fetched;
        sum.requests += mn[i].requests;
    }
    json_t *o = json_object();
    set(o, "requests", u64(sum.requests));
    set(o, "served_from_cache", u64(sum.served_cache));
    set(o, "served_from_upstream", u64(sum.served_upstream));
    set(o, "fetched_from_upstream", u64(sum.fetched));
    return o;
}

static json_t *upstreams(const call_t *c, const ops_env_t *e)
{
    const config_t *cfg = c->env->cfg;
    json_t *a = json_array();
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        upstream_ratelimit_t rl;
        bool known = upstream_ratelimit(e->upstreams[i], &rl);
        json_t *u = json_object();
        set(u, "name", json_string(cfg->upstreams[i].name));
        set(u, "state", json_string(health_down(e->health[i]) ? "down" : "up"));
        set(u, "consecutive_failures", json_integer(health_failures(e->health[i])));
        set(u, "ratelimit_remaining", known ? json_integer(rl.remaining) : json_null());
        set(u, "queued",
            u64(upstream_waiting(e->upstreams[i], UPREQ_BULK) +
                upstream_waiting(e->upstreams[i], UPREQ_PRIORITY)));
        json_array_append_new(a, u);
    }
    return a;
}

static void fill_item(void *arg, const producer_view_t *v)
{
    json_t *f = json_object();
    set(f, "upstream", json_string(v->upstream));
    set(f, "repository", json_string(v->repo));
    set(f, "digest", json_string(v->digest));
    set(f, "received", u64(v->received));
    set(f, "size", v->size == UINT64_MAX ? json_null() : u64(v->size));
    set(f, "waiters", u64(v->waiters));
    json_array_append_new(arg, f);
}

static json_t *fills(const call_t *c, const metrics_totals_t *t)
{
    json_t *o = json_object();
    json_t *items = json_array();
    set(o, "count", u64(blob_producers_count(c->env->producers)));
    set(o, "waiters", u64(t->fill_waiters));
    blob_producers_each(c->env->producers, STATUS_JSON_FILLS, fill_item, items);
    set(o, "items", items);
    return o;
}

static json_t *cache(const ops_env_t *e)
{
    retention_view_t rv;
    retention_view(e->retention, &rv);
    json_t *o = json_object();
    set(o, "size_bytes", rv.known ? u64(rv.bytes) : json_null());
    set(o, "max_bytes", rv.max_bytes ? u64(rv.max_bytes) : json_null());
    set(o, "evicted_items", u64(rv.evicted_items));
    set(o, "evicted_bytes", u64(rv.evicted_bytes));
    return o;
}

static json_t *top_images(const topk_t *top)
{
    topk_entry_t t[STATUS_JSON_TOP];
    size_t n = topk_top(top, t, STATUS_JSON_TOP);
    json_t *o = json_object();
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_object();
        set(x, "image", json_string(t[i].key));
        set(x, "bytes", u64(t[i].count));
        set(x, "overcount_max", u64(t[i].error));
        json_array_append_new(a, x);
    }
    set(o, "images", a);
    set(o, "tracked", u64(topk_size(top)));
    set(o, "replaced", u64(topk_replaced(top)));
    set(o, "approximate", json_boolean(topk_replaced(top) > 0));
    return o;
}

void status_json_answer(call_t *c, const ops_env_t *e)
{
    metrics_totals_t t;
    metrics_totals(e->metrics, &t);
    json_t *o = json_object();
    if (!o) {
        reply_failure(c, -ENOMEM, OCI_UNKNOWN);
        return;
    }
    set(o, "version", json_string(cli_version));
    set(o, "commit", json_string(cli_commit));
    set(o, "start_time_ms", json_integer(t.start_ms));
    set(o, "uptime_s", json_integer((time_wall_ms() - t.start_ms) / 1000));
    set(o, "requests", requests(&t));
    json_t *b = json_object();
    set(b, "served_from_cache", u64(t.served_cache));
    set(b, "served_from_upstream", u64(t.served_upstream));
    set(b, "fetched_from_upstream", u64(t.fetched));
    set(o, "bytes", b);
    set(o, "last_hour", last_hour(e->metrics));
    set(o, "connections", json_integer(server_connections(e->server)));
    set(o, "fetches_in_flight", u64(flight_table_count(c->env->fetches)));
    set(o, "fills", fills(c, &t));
    set(o, "upstreams", upstreams(c, e));
    set(o, "cache", cache(e));
    set(o, "top_images", top_images(e->top_bytes));
    /* Strings from clients and upstreams are escaped by the encoder (JSON_ENSURE_ASCII). */
    char *body = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    if (!body) {
        reply_failure(c, -ENOMEM, OCI_UNKNOWN);
        return;
    }
    size_t len = strlen(body);
    c->cache_status = "local";
    resp_begin(c->req, 200);
    resp_header(c->req, "Content-Type", "application/json");
    resp_header(c->req, "Cache-Control", "no-store");
    resp_header(c->req, "X-Content-Type-Options", "nosniff");
    resp_send(c->req, len, body, len, true);
}
