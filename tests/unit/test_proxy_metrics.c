/* metrics: counting by route, status class, cache result and upstream, and the Prometheus text
 * exposition (names, label escaping, cumulative histogram buckets). */
#include "proxy/metrics.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "common/err.h"
#include "common/util.h"
#include "config/config.h"
#include "testutil.h"

static const metrics_upstream_view_t ups[2] = {
    {.name = "docker.io", .ratelimit_known = true, .ratelimit_remaining = 97},
    {.name = "we\"ird\\name\n", .down = true},
};

/* Renders m into a buffer kept until the next call; NULL frees it. */
static char *render(const metrics_t *m)
{
    static buf_t b;
    buf_free(&b);
    buf_init(&b, 1 << 20);
    if (!m)
        return NULL;
    metrics_view_t v = {.connections = 3, .fills = 1, .upstreams = ups, .version = "0.1.0"};
    CHECK_INT(metrics_render(m, &v, &b), 0);
    return b.p;
}

static void expect_line(const char *text, const char *line)
{
    char want[512];
    snprintf(want, sizeof want, "\n%s\n", line);
    if (!strstr(text, want)) {
        fprintf(stderr, "missing line: %s\n--- exposition ---\n%s\n", line, text);
        CHECK(0);
    }
}

static void test_results(void)
{
    CHECK_INT(metrics_result_of("hit"), METRICS_HIT);
    CHECK_INT(metrics_result_of("coalesced"), METRICS_COALESCED);
    CHECK_INT(metrics_result_of("policy"), METRICS_DENIED);
    CHECK_INT(metrics_result_of("-"), METRICS_NONE);
    CHECK_INT(metrics_result_of(NULL), METRICS_NONE);
    CHECK_INT(metrics_result_of("bogus"), METRICS_NONE);
    CHECK_STR(metrics_result_name(METRICS_REVALIDATED), "revalidated");
}

static void test_counts(void)
{
    metrics_t *m;
    CHECK_INT(metrics_create(&m, CONFIG_MAX_UPSTREAMS + 1, 0), -EINVAL);
    CHECK_INT(metrics_create(&m, 2, 1700000000000), 0);
    metrics_request(m, METRICS_ROUTE_BLOB, 200, METRICS_HIT, 0, 1000);
    metrics_request(m, METRICS_ROUTE_BLOB, 200, METRICS_COALESCED, 0, 500);
    metrics_request(m, METRICS_ROUTE_BLOB, 200, METRICS_MISS, 0, 70);
    metrics_request(m, METRICS_ROUTE_MANIFEST, 404, METRICS_NEGATIVE, 0, 150);
    metrics_request(m, METRICS_ROUTE_MANIFEST, 403, METRICS_DENIED, 1, 10);
    metrics_request(m, METRICS_ROUTE_OTHER, 999, METRICS_ERROR, -1, 10);
    metrics_request(m, (enum metrics_route)77, 200, (enum metrics_result)99, 9, 10);
    metrics_upstream_answer(m, 0, 200, 0, 3000);     /* <= 5 ms */
    metrics_upstream_answer(m, 0, 429, 0, 700000);   /* <= 1 s */
    metrics_upstream_answer(m, 0, 503, 0, 60000000); /* over every bucket */
    metrics_upstream_answer(m, 0, 0, -ECONNREFUSED, 0);
    metrics_upstream_answer(m, 5, 200, 0, 1); /* no such upstream: ignored */
    metrics_upstream_bytes(m, 0, METRICS_KIND_BLOB, 70);
    metrics_upstream_bytes(m, 1, METRICS_KIND_MANIFEST, 9);
    metrics_fill_waiters(m, 2);
    metrics_fill_waiters(m, -1);
    metrics_request(NULL, METRICS_ROUTE_BLOB, 200, METRICS_HIT, 0, 1); /* no-op */

    metrics_totals_t t;
    metrics_totals(m, &t);
    CHECK_INT(t.served_cache, 1500);
    CHECK_INT(t.served_upstream, 70);
    CHECK_INT(t.fetched, 79);
    CHECK_INT(t.requests, 7);

    char *text = render(m);
    expect_line(text, "winch_requests_total{route=\"blob\",code=\"2xx\"} 3");
    expect_line(text, "winch_requests_total{route=\"manifest\",code=\"4xx\"} 2");
    expect_line(text, "winch_requests_total{route=\"other\",code=\"2xx\"} 1");
    expect_line(text, "winch_cache_results_total{route=\"blob\",result=\"hit\"} 1");
    expect_line(text, "winch_cache_results_total{route=\"blob\",result=\"coalesced\"} 1");
    expect_line(text, "winch_cache_results_total{route=\"blob\",result=\"stale\"} 0");
    expect_line(text, "winch_cache_results_total{route=\"manifest\",result=\"denied\"} 1");
    expect_line(text, "winch_cache_results_total{route=\"manifest\",result=\"negative\"} 1");
    expect_line(text, "winch_served_bytes_total{upstream=\"docker.io\",source=\"cache\"} 1500");
    expect_line(text, "winch_served_bytes_total{upstream=\"docker.io\",source=\"upstream\"} 70");
    expect_line(text,
                "winch_upstream_fetched_bytes_total{upstream=\"docker.io\",kind=\"blob\"} 70");
    /* The label value is escaped: a name can never break the line. */
    expect_line(text, "winch_upstream_fetched_bytes_total{upstream=\"we\\\"ird\\\\name\\n\","
                      "kind=\"manifest\"} 9");
    expect_line(text, "winch_upstream_responses_total{upstream=\"docker.io\",code=\"error\"} 1");
    expect_line(text, "winch_upstream_errors_total{upstream=\"docker.io\"} 2");
    expect_line(text, "winch_upstream_ratelimited_total{upstream=\"docker.io\"} 1");
    /* Cumulative buckets; the 60 s answer only in +Inf. */
    expect_line(
        text,
        "winch_upstream_request_duration_seconds_bucket{upstream=\"docker.io\",le=\"0.005\"} 1");
    expect_line(
        text, "winch_upstream_request_duration_seconds_bucket{upstream=\"docker.io\",le=\"1\"} 2");
    expect_line(
        text, "winch_upstream_request_duration_seconds_bucket{upstream=\"docker.io\",le=\"30\"} 2");
    expect_line(
        text,
        "winch_upstream_request_duration_seconds_bucket{upstream=\"docker.io\",le=\"+Inf\"} 3");
    expect_line(text, "winch_upstream_request_duration_seconds_count{upstream=\"docker.io\"} 3");
    expect_line(text, "winch_upstream_ratelimit_remaining{upstream=\"docker.io\"} 97");
    CHECK(strstr(text, "winch_upstream_ratelimit_remaining{upstream=\"we") == NULL);
    expect_line(text, "winch_upstream_up{upstream=\"docker.io\"} 1");
    expect_line(text, "winch_fill_waiters 1");
    expect_line(text, "winch_fills_in_flight 1");
    expect_line(text, "winch_connections_open 3");
    expect_line(text, "# TYPE winch_upstream_request_duration_seconds histogram");
    /* Waiters never go below zero. */
    metrics_fill_waiters(m, -5);
    expect_line(render(m), "winch_fill_waiters 0");
    metrics_free(m);
    metrics_free(NULL);
    render(NULL);
}

static void test_bound(void)
{
    metrics_t *m;
    CHECK_INT(metrics_create(&m, 2, 0), 0);
    buf_t b;
    buf_init(&b, 100);
    metrics_view_t v = {.upstreams = ups};
    CHECK_INT(metrics_render(m, &v, &b), WE_TOOBIG);
    buf_free(&b);
    char esc[8];
    metrics_label_escape(esc, sizeof esc, "\"\"\"\"\"");
    CHECK_STR(esc, "\\\"\\\"\\\"");
    metrics_free(m);
}

static const test_case_t cases[] = {TEST_CASE(test_results), TEST_CASE(test_counts),
                                    TEST_CASE(test_bound)};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
