/* The status page (status.h). Built whole into one bounded buffer per request: a few KiB, read
 * by an operator now and then. The top tags come from one read transaction over the tag index,
 * bounded by STATUS_TAGS_SCANNED records so a huge cache cannot make the page a loop stall. */
#include "proxy/status.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/flight.h"
#include "common/timeutil.h"
#include "proxy/cli_commands.h"
#include "proxy/health.h"
#include "proxy/producer.h"
#include "proxy/reply.h"
#include "proxy/retention.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

#define STATUS_MAX ((size_t)1 << 20)
#define STATUS_TOP 10
#define STATUS_FILLS 50 /* fills listed; the count says how many more */
#define STATUS_TAGS_SCANNED 100000
#define STATUS_NAME_MAX 512

int status_html_escape(buf_t *out, const char *s, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '&':
            rc = buf_append(out, "&amp;", 5);
            break;
        case '<':
            rc = buf_append(out, "&lt;", 4);
            break;
        case '>':
            rc = buf_append(out, "&gt;", 4);
            break;
        case '"':
            rc = buf_append(out, "&quot;", 6);
            break;
        case '\'':
            rc = buf_append(out, "&#39;", 5);
            break;
        default:
            rc = buf_append(out, ch < 0x20 || ch == 0x7f ? "?" : (const char *)&s[i], 1);
        }
    }
    return rc;
}

/* Formatted text (never data from outside: that goes through esc). The first error sticks. */
typedef struct page {
    buf_t b;
    int rc;
} page_t;

static void put(page_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(page_t *p, const char *fmt, ...)
{
    if (p->rc)
        return;
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        p->rc = WE_TOOBIG;
    else
        p->rc = buf_append(&p->b, tmp, (size_t)n);
}

static void esc(page_t *p, const char *s)
{
    if (!p->rc)
        p->rc = status_html_escape(&p->b, s, strnlen(s, STATUS_NAME_MAX));
}

/* 1.5 GB style, for people; the exact byte count is in a title attribute beside it. */
static const char *human(char *out, size_t cap, uint64_t n)
{
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1000 && u + 1 < sizeof units / sizeof *units) {
        v /= 1000;
        u++;
    }
    snprintf(out, cap, u ? "%.1f %s" : "%.0f %s", v, units[u]);
    return out;
}

/* A horizontal bar: filled fraction of width 300, with its label. */
static void bar(page_t *p, const char *label, double frac)
{
    if (frac < 0)
        frac = 0;
    if (frac > 1)
        frac = 1;
    put(p,
        "<svg width=\"320\" height=\"22\" role=\"img\" aria-label=\"%s %.1f%%\">"
        "<rect x=\"0\" y=\"2\" width=\"300\" height=\"18\" fill=\"#ddd\"/>"
        "<rect x=\"0\" y=\"2\" width=\"%.1f\" height=\"18\" fill=\"#2a7\"/>"
        "<text x=\"6\" y=\"16\" font-size=\"12\">%.1f%%</text></svg>",
        label, frac * 100, frac * 300, frac * 100);
}

static void summary(page_t *p, const metrics_totals_t *t)
{
    uint64_t from_cache = t->results[METRICS_HIT] + t->results[METRICS_COALESCED] +
                          t->results[METRICS_STALE] + t->results[METRICS_REVALIDATED];
    uint64_t cacheable = from_cache + t->results[METRICS_MISS];
    char h1[32], h2[32], h3[32];
    put(p, "<h2>Since start</h2><table>");
    put(p, "<tr><th>requests</th><td id=\"requests\">%" PRIu64 "</td></tr>", t->requests);
    put(p, "<tr><th>hit ratio</th><td id=\"hit-ratio\">%" PRIu64 " / %" PRIu64 " ", from_cache,
        cacheable);
    bar(p, "hit ratio", cacheable ? (double)from_cache / (double)cacheable : 0);
    put(p, "</td></tr>");
    put(p,
        "<tr><th>bytes saved (served from the cache)</th><td id=\"bytes-saved\" "
        "data-bytes=\"%" PRIu64 "\">%s</td></tr>",
        t->served_cache, human(h1, sizeof h1, t->served_cache));
    put(p,
        "<tr><th>served from upstream</th><td id=\"bytes-upstream\" data-bytes=\"%" PRIu64
        "\">%s</td></tr>",
        t->served_upstream, human(h2, sizeof h2, t->served_upstream));
    put(p,
        "<tr><th>fetched from upstream</th><td id=\"bytes-fetched\" data-bytes=\"%" PRIu64
        "\">%s</td></tr></table>",
        t->fetched, human(h3, sizeof h3, t->fetched));
    put(p, "<h2>Requests by cache result</h2><table>");
    for (int i = 0; i < METRICS_RESULT_N; i++)
        if (t->results[i])
            put(p, "<tr><th>%s</th><td id=\"result-%s\">%" PRIu64 "</td></tr>",
                metrics_result_name((enum metrics_result)i),
                metrics_result_name((enum metrics_result)i), t->results[i]);
    put(p, "</table>");
}

static void upstreams(page_t *p, const call_t *c, const ops_env_t *e)
{
    const config_t *cfg = c->env->cfg;
    put(p, "<h2>Upstreams</h2><table><tr><th>upstream</th><th>state</th>"
           "<th>consecutive failures</th><th>rate-limit remaining</th><th>waiting</th></tr>");
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        upstream_ratelimit_t rl;
        bool known = upstream_ratelimit(e->upstreams[i], &rl);
        bool down = health_down(e->health[i]);
        put(p, "<tr><td>");
        esc(p, cfg->upstreams[i].name);
        put(p, "</td><td class=\"%s\">%s</td><td>%u</td>", down ? "down" : "up",
            down ? "down (breaker open)" : "up", health_failures(e->health[i]));
        if (known)
            put(p, "<td>%lld</td>", (long long)rl.remaining);
        else
            put(p, "<td>-</td>");
        put(p, "<td>%zu</td></tr>",
            upstream_waiting(e->upstreams[i], UPREQ_BULK) +
                upstream_waiting(e->upstreams[i], UPREQ_PRIORITY));
    }
    put(p, "</table>");
}

static void cache_size(page_t *p, const call_t *c, const ops_env_t *e, const metrics_totals_t *t)
{
    retention_view_t rv;
    retention_view(e->retention, &rv);
    char h1[32], h2[32], h3[32];
    put(p, "<h2>Cache</h2><table>");
    if (!rv.known)
        put(p, "<tr><th>size</th><td id=\"cache-size\">not scanned yet</td></tr>");
    else
        put(p, "<tr><th>size</th><td id=\"cache-size\" data-bytes=\"%" PRIu64 "\">%s", rv.bytes,
            human(h1, sizeof h1, rv.bytes));
    if (rv.known && rv.max_bytes) {
        put(p, " of %s ", human(h2, sizeof h2, rv.max_bytes));
        bar(p, "cache use", (double)rv.bytes / (double)rv.max_bytes);
    } else if (rv.known) {
        put(p, " (no max_size)");
    }
    if (rv.known)
        put(p, "</td></tr>");
    put(p,
        "<tr><th>evicted since start</th><td>%" PRIu64 " items, %s</td></tr>"
        "<tr><th>fills in progress</th><td id=\"fills\">%zu (%" PRIu64 " clients waiting)</td></tr>"
        "<tr><th>buffered fetches in flight</th><td id=\"fetches\">%zu</td></tr>"
        "<tr><th>connections open</th><td>%u</td></tr></table>",
        rv.evicted_items, human(h3, sizeof h3, rv.evicted_bytes),
        blob_producers_count(c->env->producers), t->fill_waiters,
        flight_table_count(c->env->fetches), server_connections(e->server));
}

/* ---- The last hour, a bar a minute ---------------------------------------------------------- */

static void last_hour(page_t *p, const metrics_t *m)
{
    metrics_minute_t mn[METRICS_MINUTES];
    metrics_last_hour(m, time_mono_ms(), mn);
    metrics_minute_t sum = {0};
    uint64_t peak = 1;
    for (int i = 0; i < METRICS_MINUTES; i++) {
        sum.served_cache += mn[i].served_cache;
        sum.served_upstream += mn[i].served_upstream;
        sum.fetched += mn[i].fetched;
        sum.requests += mn[i].requests;
        uint64_t b = mn[i].served_cache + mn[i].served_upstream;
        if (b > peak)
            peak = b;
    }
    char h1[32], h2[32], h3[32];
    put(p, "<h2>Last hour</h2><table>");
    put(p, "<tr><th>requests</th><td id=\"hour-requests\">%" PRIu64 "</td></tr>", sum.requests);
    put(p,
        "<tr><th>bytes saved</th><td id=\"hour-bytes-saved\" data-bytes=\"%" PRIu64
        "\">%s</td></tr><tr><th>served from upstream</th><td id=\"hour-bytes-upstream\" "
        "data-bytes=\"%" PRIu64 "\">%s</td></tr><tr><th>fetched from upstream</th>"
        "<td id=\"hour-bytes-fetched\" data-bytes=\"%" PRIu64 "\">%s</td></tr></table>",
        sum.served_cache, human(h1, sizeof h1, sum.served_cache), sum.served_upstream,
        human(h2, sizeof h2, sum.served_upstream), sum.fetched, human(h3, sizeof h3, sum.fetched));
    /* Bytes served per minute, oldest left: from the cache (green) on top of from the
     * upstream (grey), scaled to the busiest minute. */
    put(p, "<svg id=\"hour-chart\" width=\"610\" height=\"110\" role=\"img\" aria-label=\"bytes "
           "served per minute, last hour (green: from the cache, grey: from the upstream)\">"
           "<rect x=\"0\" y=\"0\" width=\"610\" height=\"100\" fill=\"#f4f4f4\"/>");
    for (int i = 0; i < METRICS_MINUTES; i++) {
        double hu = 100.0 * (double)mn[i].served_upstream / (double)peak;
        double hc = 100.0 * (double)mn[i].served_cache / (double)peak;
        put(p,
            "<rect class=\"up\" x=\"%d\" y=\"%.1f\" width=\"9\" height=\"%.1f\" fill=\"#999\"/>"
            "<rect class=\"hit\" x=\"%d\" y=\"%.1f\" width=\"9\" height=\"%.1f\" fill=\"#2a7\" "
            "data-bytes=\"%" PRIu64 "\"/>",
            5 + i * 10, 100 - hu, hu, 5 + i * 10, 100 - hu - hc, hc, mn[i].served_cache);
    }
    put(p, "<text x=\"5\" y=\"110\" font-size=\"10\">-60 min</text><text x=\"570\" y=\"110\" "
           "font-size=\"10\">now</text></svg>");
}

/* ---- Fills in progress ------------------------------------------------------------------- */

static void fill_row(void *arg, const producer_view_t *v)
{
    page_t *p = arg;
    char h1[32], h2[32];
    put(p, "<tr><td>");
    esc(p, v->upstream);
    put(p, "/");
    esc(p, v->repo);
    put(p, "@");
    esc(p, v->digest);
    put(p, "</td><td data-bytes=\"%" PRIu64 "\">%s", v->received,
        human(h1, sizeof h1, v->received));
    if (v->size != UINT64_MAX) {
        put(p, " of %s ", human(h2, sizeof h2, v->size));
        bar(p, "received", v->size ? (double)v->received / (double)v->size : 1);
    }
    put(p, "</td><td class=\"waiters\">%zu</td></tr>", v->waiters);
}

static void fills(page_t *p, const blob_producers_t *prod)
{
    size_t n = blob_producers_count(prod);
    put(p, "<h2>Fills in progress</h2>");
    if (n == 0) {
        put(p, "<p id=\"fills-none\">none</p>");
        return;
    }
    put(p, "<table id=\"fills-table\"><tr><th>blob</th><th>received</th><th>clients</th></tr>");
    blob_producers_each(prod, STATUS_FILLS, fill_row, p);
    put(p, "</table>");
    if (n > STATUS_FILLS)
        put(p, "<p>(and %zu more)</p>", n - STATUS_FILLS);
}

/* ---- The most pulled tags --------------------------------------------------------------- */

typedef struct top_tag {
    uint32_t pulls;
    char name[STATUS_NAME_MAX];
} top_tag_t;

typedef struct top {
    top_tag_t t[STATUS_TOP];
    size_t n;
    size_t scanned;
} top_t;

static int top_visit(void *arg, const cache_tag_info_t *ti)
{
    top_t *top = arg;
    if (++top->scanned > STATUS_TAGS_SCANNED)
        return 1;
    if (ti->pulls == 0)
        return 0;
    size_t at = top->n;
    while (at > 0 && top->t[at - 1].pulls < ti->pulls)
        at--;
    if (at >= STATUS_TOP)
        return 0;
    size_t keep = top->n < STATUS_TOP ? top->n : STATUS_TOP - 1;
    memmove(&top->t[at + 1], &top->t[at], (keep - at) * sizeof top->t[0]);
    top->t[at].pulls = ti->pulls;
    snprintf(top->t[at].name, sizeof top->t[at].name, "%s/%s:%s", ti->upstream, ti->repo, ti->tag);
    if (top->n < STATUS_TOP)
        top->n++;
    return 0;
}

static void top_tags(page_t *p, cache_t *cache)
{
    top_t *top = calloc(1, sizeof *top);
    if (!top) {
        p->rc = -ENOMEM;
        return;
    }
    int rc = cache_tags_all_each(cache, top_visit, top);
    put(p, "<h2>Most pulled tags</h2>");
    if (rc < 0)
        put(p, "<p>index unreadable: %s</p>", err_str(rc));
    else if (top->n == 0)
        put(p, "<p>no pulls recorded yet (counts reach the index with retention's next "
               "flush)</p>");
    else
        put(p, "<table id=\"top-tags\"><tr><th>image</th><th>pulls</th></tr>");
    for (size_t i = 0; i < top->n; i++) {
        put(p, "<tr><td>");
        esc(p, top->t[i].name);
        put(p, "</td><td>%u</td></tr>", top->t[i].pulls);
    }
    if (top->n)
        put(p, "</table>");
    if (top->scanned > STATUS_TAGS_SCANNED)
        put(p, "<p>(the first %d tags of the index only)</p>", STATUS_TAGS_SCANNED);
    free(top);
}

/* ---- The images served the most bytes (app.c counts them in a bounded table) ------------ */

static void top_images(page_t *p, const topk_t *top)
{
    topk_entry_t t[STATUS_TOP];
    size_t n = topk_top(top, t, STATUS_TOP);
    char h[32];
    put(p, "<h2>Top images by bytes served</h2>");
    if (n == 0) {
        put(p, "<p id=\"top-images-none\">nothing served yet</p>");
        return;
    }
    put(p, "<table id=\"top-images\"><tr><th>image</th><th>bytes served</th></tr>");
    for (size_t i = 0; i < n; i++) {
        put(p, "<tr><td>");
        esc(p, t[i].key);
        put(p, "</td><td data-bytes=\"%" PRIu64 "\">%s", t[i].count,
            human(h, sizeof h, t[i].count));
        if (t[i].error)
            put(p, " (at most %s high)", human(h, sizeof h, t[i].error));
        put(p, "</td></tr>");
    }
    put(p, "</table>");
    uint64_t replaced = topk_replaced(top);
    if (replaced)
        put(p,
            "<p id=\"top-images-approx\">Approximate: the table keeps %zu repositories and "
            "replaced one %" PRIu64 " times; a repository that entered by replacing another "
            "starts from that one's count, so its count may be high by the amount shown.</p>",
            topk_size(top), replaced);
}

void status_answer(call_t *c, const ops_env_t *e)
{
    page_t p = {.rc = 0};
    buf_init(&p.b, STATUS_MAX);
    metrics_totals_t t;
    metrics_totals(e->metrics, &t);
    int64_t up_s = (time_wall_ms() - t.start_ms) / 1000;
    put(&p, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>winch status</title><style>"
            "body{font-family:sans-serif;margin:2em;color:#222}"
            "table{border-collapse:collapse;margin-bottom:1em}"
            "th,td{text-align:left;padding:3px 12px;border-bottom:1px solid #ddd}"
            ".down{color:#b00;font-weight:bold}.up{color:#070}"
            "</style></head><body>");
    put(&p, "<h1>winch %s</h1><p>up %lldd %02lld:%02lld:%02lld</p>", cli_version,
        (long long)(up_s / 86400), (long long)(up_s / 3600 % 24), (long long)(up_s / 60 % 60),
        (long long)(up_s % 60));
    summary(&p, &t);
    last_hour(&p, e->metrics);
    upstreams(&p, c, e);
    cache_size(&p, c, e, &t);
    fills(&p, c->env->producers);
    top_tags(&p, c->env->cache);
    top_images(&p, e->top_bytes);
    put(&p, "</body></html>\n");
    size_t len = 0;
    char *body = p.rc == 0 ? buf_take(&p.b, &len) : NULL;
    buf_free(&p.b);
    if (!body) {
        reply_failure(c, p.rc < 0 ? p.rc : -ENOMEM, OCI_UNKNOWN);
        return;
    }
    c->cache_status = "local";
    resp_begin(c->req, 200);
    resp_header(c->req, "Content-Type", "text/html; charset=utf-8");
    resp_header(c->req, "Cache-Control", "no-store");
    /* Nothing to load from anywhere: a page that cannot run script or fetch cannot be turned
     * against its reader even if an escape were missed. */
    resp_header(c->req, "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:");
    resp_header(c->req, "X-Content-Type-Options", "nosniff");
    resp_send(c->req, len, body, len, true);
}
