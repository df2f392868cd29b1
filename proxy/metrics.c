/* Counters and the Prometheus text exposition (metrics.h). Plain integers, one writer (the
 * loop thread): nothing here locks or allocates after metrics_create, except the rendering's
 * own buffer. */
#include "proxy/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "config/config.h"

/* Upstream latency buckets (seconds, as microseconds): from a loopback mirror's millisecond
 * answers to a distant registry's slow token dance. */
static const uint64_t bucket_us[] = {5000,   10000,   25000,   50000,   100000,   250000,
                                     500000, 1000000, 2500000, 5000000, 10000000, 30000000};
#define NBUCKETS ARRAY_SIZE(bucket_us)

/* Status classes 1xx..5xx and "error" (no answer). */
#define NCLASS 6

typedef struct up_counters {
    uint64_t served_cache, served_upstream;
    uint64_t fetched[METRICS_KIND_N];
    uint64_t answers[NCLASS];
    uint64_t ratelimited, errors;
    uint64_t buckets[NBUCKETS]; /* non-cumulative; summed when rendered */
    uint64_t count, sum_us;
} up_counters_t;

struct metrics {
    size_t n_up;
    int64_t start_ms;
    uint64_t requests[METRICS_ROUTE_N][NCLASS];
    uint64_t results[METRICS_ROUTE_N][METRICS_RESULT_N];
    uint64_t fill_waiters;
    up_counters_t up[CONFIG_MAX_UPSTREAMS];
    /* The last hour, a slot per minute (minute number % 60), each stamped with its minute so
     * a slot left from an hour ago reads as empty: no timer needed. */
    metrics_minute_t minute[METRICS_MINUTES];
    int64_t minute_of[METRICS_MINUTES];
};

/* The slot of the minute now, emptied first when it last held an older minute. */
static metrics_minute_t *this_minute(metrics_t *m)
{
    int64_t now = (int64_t)(time_mono_ms() / 60000);
    size_t i = (size_t)(now % METRICS_MINUTES);
    if (m->minute_of[i] != now) {
        memset(&m->minute[i], 0, sizeof m->minute[i]);
        m->minute_of[i] = now;
    }
    return &m->minute[i];
}

void metrics_last_hour(const metrics_t *m, int64_t now_ms, metrics_minute_t out[METRICS_MINUTES])
{
    int64_t now = now_ms / 60000;
    for (int k = 0; k < METRICS_MINUTES; k++) {
        int64_t want = now - (METRICS_MINUTES - 1) + k;
        size_t i = (size_t)(((want % METRICS_MINUTES) + METRICS_MINUTES) % METRICS_MINUTES);
        if (m && want >= 0 && m->minute_of[i] == want)
            out[k] = m->minute[i];
        else
            memset(&out[k], 0, sizeof out[k]);
    }
}

static const char *const route_names[METRICS_ROUTE_N] = {
    "ping", "manifest", "blob", "tags", "referrers", "catalog", "ops", "other",
};

static const char *const result_names[METRICS_RESULT_N] = {
    "hit",      "miss",     "coalesced", "stale", "revalidated", "denied",
    "negative", "upstream", "local",     "error", "none",
};

static const char *const kind_names[METRICS_KIND_N] = {"blob", "manifest", "other"};

static const char *const class_names[NCLASS] = {"1xx", "2xx", "3xx", "4xx", "5xx", "error"};

enum metrics_result metrics_result_of(const char *s)
{
    if (!s)
        return METRICS_NONE;
    /* "policy" is the access log's word for a refusal. */
    if (strcmp(s, "policy") == 0)
        return METRICS_DENIED;
    for (int i = 0; i < METRICS_RESULT_N; i++)
        if (strcmp(s, result_names[i]) == 0)
            return (enum metrics_result)i;
    return METRICS_NONE;
}

const char *metrics_result_name(enum metrics_result r)
{
    return (unsigned)r < METRICS_RESULT_N ? result_names[r] : "none";
}

int metrics_create(metrics_t **out, size_t n_upstreams, int64_t start_ms)
{
    *out = NULL;
    if (n_upstreams > CONFIG_MAX_UPSTREAMS)
        return -EINVAL;
    metrics_t *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->n_up = n_upstreams;
    m->start_ms = start_ms;
    *out = m;
    return 0;
}

void metrics_free(metrics_t *m)
{
    free(m);
}

static int status_class(int status)
{
    if (status >= 100 && status <= 599)
        return status / 100 - 1;
    return NCLASS - 1;
}

static up_counters_t *up_of(metrics_t *m, int upstream)
{
    if (!m || upstream < 0 || (size_t)upstream >= m->n_up)
        return NULL;
    return &m->up[upstream];
}

void metrics_request(metrics_t *m, enum metrics_route route, int status, enum metrics_result res,
                     int upstream, uint64_t bytes)
{
    if (!m)
        return;
    if ((unsigned)route >= METRICS_ROUTE_N)
        route = METRICS_ROUTE_OTHER;
    if ((unsigned)res >= METRICS_RESULT_N)
        res = METRICS_NONE;
    m->requests[route][status_class(status)]++;
    m->results[route][res]++;
    metrics_minute_t *mn = this_minute(m);
    mn->requests++;
    up_counters_t *u = up_of(m, upstream);
    if (!u)
        return;
    switch (res) {
    case METRICS_HIT:
    case METRICS_COALESCED:
    case METRICS_STALE:
    case METRICS_REVALIDATED:
        u->served_cache += bytes;
        mn->served_cache += bytes;
        break;
    case METRICS_MISS:
    case METRICS_UPSTREAM:
        u->served_upstream += bytes;
        mn->served_upstream += bytes;
        break;
    default:
        break;
    }
}

void metrics_upstream_answer(metrics_t *m, int upstream, int status, int err, uint64_t elapsed_us)
{
    up_counters_t *u = up_of(m, upstream);
    if (!u)
        return;
    u->answers[status > 0 ? status_class(status) : NCLASS - 1]++;
    if (status == 429)
        u->ratelimited++;
    if (status >= 500 || (status <= 0 && err < 0))
        u->errors++;
    if (status <= 0)
        return; /* no answer: no latency to speak of */
    size_t i = 0;
    while (i < NBUCKETS && elapsed_us > bucket_us[i])
        i++;
    if (i < NBUCKETS)
        u->buckets[i]++;
    u->count++;
    u->sum_us += elapsed_us;
}

void metrics_upstream_bytes(metrics_t *m, int upstream, enum metrics_kind kind, uint64_t n)
{
    up_counters_t *u = up_of(m, upstream);
    if (u && (unsigned)kind < METRICS_KIND_N) {
        u->fetched[kind] += n;
        this_minute(m)->fetched += n;
    }
}

void metrics_fill_waiters(metrics_t *m, int delta)
{
    if (!m)
        return;
    if (delta < 0 && m->fill_waiters < (uint64_t)-delta)
        m->fill_waiters = 0;
    else
        m->fill_waiters += (uint64_t)(int64_t)delta;
}

void metrics_totals(const metrics_t *m, metrics_totals_t *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < m->n_up; i++) {
        out->served_cache += m->up[i].served_cache;
        out->served_upstream += m->up[i].served_upstream;
        for (int k = 0; k < METRICS_KIND_N; k++)
            out->fetched += m->up[i].fetched[k];
    }
    for (int r = 0; r < METRICS_ROUTE_N; r++)
        for (int i = 0; i < METRICS_RESULT_N; i++) {
            out->results[i] += m->results[r][i];
            out->requests += m->results[r][i];
        }
    out->fill_waiters = m->fill_waiters;
    out->start_ms = m->start_ms;
}

void metrics_label_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    if (cap == 0)
        return;
    for (; s && *s; s++) {
        const char *rep = NULL;
        char one[2] = {*s, '\0'};
        if (*s == '\\')
            rep = "\\\\";
        else if (*s == '"')
            rep = "\\\"";
        else if (*s == '\n')
            rep = "\\n";
        else
            rep = one;
        size_t n = strlen(rep);
        if (o + n >= cap)
            break;
        memcpy(out + o, rep, n);
        o += n;
    }
    out[o] = '\0';
}

/* ---- Rendering ------------------------------------------------------------------------------ */

typedef struct out {
    buf_t *b;
    int rc;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...)
{
    if (o->rc < 0)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line) {
        o->rc = WE_TOOBIG;
        return;
    }
    o->rc = buf_append(o->b, line, (size_t)n);
}

static void head(out_t *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_requests(out_t *o, const metrics_t *m)
{
    head(o, "winch_requests_total", "counter",
         "Requests answered, by route and status class (1xx..5xx).");
    for (int r = 0; r < METRICS_ROUTE_N; r++)
        for (int c = 0; c < NCLASS - 1; c++)
            if (m->requests[r][c])
                put(o, "winch_requests_total{route=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                    route_names[r], class_names[c], m->requests[r][c]);
    head(o, "winch_cache_results_total", "counter",
         "Requests by route and cache result (hit, miss, coalesced, stale, revalidated, denied, "
         "negative, upstream, local, error, none).");
    for (int r = 0; r < METRICS_ROUTE_N; r++)
        for (int i = 0; i < METRICS_RESULT_N; i++)
            if (m->results[r][i] || r == METRICS_ROUTE_MANIFEST || r == METRICS_ROUTE_BLOB)
                put(o, "winch_cache_results_total{route=\"%s\",result=\"%s\"} %" PRIu64 "\n",
                    route_names[r], result_names[i], m->results[r][i]);
}

static void render_bytes(out_t *o, const metrics_t *m, const metrics_view_t *v)
{
    char name[256];
    head(o, "winch_served_bytes_total", "counter",
         "Body bytes sent to clients, by upstream and source: cache (hit, coalesced, stale, "
         "revalidated: the bandwidth saved) or upstream (miss, pass-through).");
    for (size_t i = 0; i < m->n_up; i++) {
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        put(o, "winch_served_bytes_total{upstream=\"%s\",source=\"cache\"} %" PRIu64 "\n", name,
            m->up[i].served_cache);
        put(o, "winch_served_bytes_total{upstream=\"%s\",source=\"upstream\"} %" PRIu64 "\n", name,
            m->up[i].served_upstream);
    }
    head(o, "winch_upstream_fetched_bytes_total", "counter",
         "Body bytes received from each upstream, by kind (blob fills, manifests, other).");
    for (size_t i = 0; i < m->n_up; i++) {
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        for (int k = 0; k < METRICS_KIND_N; k++)
            put(o, "winch_upstream_fetched_bytes_total{upstream=\"%s\",kind=\"%s\"} %" PRIu64 "\n",
                name, kind_names[k], m->up[i].fetched[k]);
    }
}

static void render_histogram(out_t *o, const up_counters_t *u, const char *name)
{
    uint64_t cum = 0;
    for (size_t b = 0; b < NBUCKETS; b++) {
        cum += u->buckets[b];
        put(o,
            "winch_upstream_request_duration_seconds_bucket{upstream=\"%s\",le=\"%g\"} %" PRIu64
            "\n",
            name, (double)bucket_us[b] / 1e6, cum);
    }
    put(o,
        "winch_upstream_request_duration_seconds_bucket{upstream=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
        name, u->count);
    put(o, "winch_upstream_request_duration_seconds_sum{upstream=\"%s\"} %.6f\n", name,
        (double)u->sum_us / 1e6);
    put(o, "winch_upstream_request_duration_seconds_count{upstream=\"%s\"} %" PRIu64 "\n", name,
        u->count);
}

static void render_upstreams(out_t *o, const metrics_t *m, const metrics_view_t *v)
{
    char name[256];
    head(o, "winch_upstream_responses_total", "counter",
         "Upstream exchanges by status class; \"error\": no answer (timeout, refused, reset).");
    for (size_t i = 0; i < m->n_up; i++) {
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        for (int c = 0; c < NCLASS; c++)
            put(o, "winch_upstream_responses_total{upstream=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                name, class_names[c], m->up[i].answers[c]);
    }
    head(o, "winch_upstream_errors_total", "counter",
         "Upstream exchanges that failed: no answer, or a 5xx.");
    for (size_t i = 0; i < m->n_up; i++) {
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        put(o, "winch_upstream_errors_total{upstream=\"%s\"} %" PRIu64 "\n", name, m->up[i].errors);
    }
    head(o, "winch_upstream_ratelimited_total", "counter", "Upstream answers 429.");
    for (size_t i = 0; i < m->n_up; i++) {
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        put(o, "winch_upstream_ratelimited_total{upstream=\"%s\"} %" PRIu64 "\n", name,
            m->up[i].ratelimited);
    }
    head(o, "winch_upstream_request_duration_seconds", "histogram",
         "Time from sending an upstream request to its response head.");
    for (size_t i = 0; i < m->n_up; i++) {
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        render_histogram(o, &m->up[i], name);
    }
    head(o, "winch_upstream_up", "gauge", "1 unless the upstream's circuit breaker is open.");
    for (size_t i = 0; i < m->n_up; i++) {
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        put(o, "winch_upstream_up{upstream=\"%s\"} %d\n", name, v->upstreams[i].down ? 0 : 1);
    }
    head(o, "winch_upstream_queued_requests", "gauge",
         "Upstream requests waiting for a connection.");
    for (size_t i = 0; i < m->n_up; i++) {
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        put(o, "winch_upstream_queued_requests{upstream=\"%s\"} %zu\n", name,
            v->upstreams[i].queued);
    }
    head(o, "winch_upstream_ratelimit_remaining", "gauge",
         "The upstream's last RateLimit-Remaining (Docker Hub); absent until one is seen.");
    for (size_t i = 0; i < m->n_up; i++) {
        if (!v->upstreams[i].ratelimit_known || v->upstreams[i].ratelimit_remaining < 0)
            continue;
        metrics_label_escape(name, sizeof name, v->upstreams[i].name);
        put(o, "winch_upstream_ratelimit_remaining{upstream=\"%s\"} %" PRId64 "\n", name,
            v->upstreams[i].ratelimit_remaining);
    }
}

static void render_gauges(out_t *o, const metrics_t *m, const metrics_view_t *v)
{
    head(o, "winch_connections_open", "gauge", "Client connections open.");
    put(o, "winch_connections_open %u\n", v->connections);
    head(o, "winch_fills_in_flight", "gauge", "Blob fills running (one upstream GET each).");
    put(o, "winch_fills_in_flight %zu\n", v->fills);
    head(o, "winch_fill_waiters", "gauge", "Client requests being served from a running fill.");
    put(o, "winch_fill_waiters %" PRIu64 "\n", m->fill_waiters);
    head(o, "winch_upstream_fetches_in_flight", "gauge",
         "Buffered upstream fetches (manifests, tag checks, lists) in flight.");
    put(o, "winch_upstream_fetches_in_flight %zu\n", v->fetches);
    if (v->cache_known) {
        head(o, "winch_cache_size_bytes", "gauge",
             "Content bytes in the cache (retention's estimate: last scan plus what was added).");
        put(o, "winch_cache_size_bytes %" PRIu64 "\n", v->cache_bytes);
    }
    head(o, "winch_cache_max_size_bytes", "gauge", "retention.max_size in bytes; 0: no bound.");
    put(o, "winch_cache_max_size_bytes %" PRIu64 "\n", v->cache_max_bytes);
    head(o, "winch_cache_evictions_total", "counter", "Items removed by retention.");
    put(o, "winch_cache_evictions_total %" PRIu64 "\n", v->evicted_items);
    head(o, "winch_cache_evicted_bytes_total", "counter", "Bytes removed by retention.");
    put(o, "winch_cache_evicted_bytes_total %" PRIu64 "\n", v->evicted_bytes);
    head(o, "winch_start_time_seconds", "gauge", "When this winch started (Unix time).");
    put(o, "winch_start_time_seconds %.3f\n", (double)m->start_ms / 1000.0);
    char ver[128];
    metrics_label_escape(ver, sizeof ver, v->version ? v->version : "");
    head(o, "winch_build_info", "gauge", "Always 1; the version as a label.");
    put(o, "winch_build_info{version=\"%s\"} 1\n", ver);
}

int metrics_render(const metrics_t *m, const metrics_view_t *v, buf_t *b)
{
    out_t o = {.b = b, .rc = 0};
    render_requests(&o, m);
    render_bytes(&o, m, v);
    render_upstreams(&o, m, v);
    render_gauges(&o, m, v);
    return o.rc;
}
