/* config: the fields of issue 8's upstream hardening: the wait queue (upstream_max_queue,
 * upstream_queue_timeout_ms), the buffered fetch deadline, negative caching, and each
 * upstream's allow_redirect_hosts: defaults, bounds, and every bad value named by its field. */
#include "config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/err.h"
#include "common/util.h"
#include "testutil.h"

static config_t *json_ok(const char *json)
{
    config_t *c = NULL;
    char err[512] = "";
    int rc = config_from_json(&c, json, strlen(json), "t.json", err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "json: %s\nerr: %s\n", json, err);
    CHECK_INT(rc, 0);
    return c;
}

static void expect_err(const char *json, const char *want)
{
    config_t *c = (config_t *)1;
    char err[512] = "";
    int rc = config_from_json(&c, json, strlen(json), "t.json", err, sizeof err);
    if (rc != WE_CONFIG || !strstr(err, want)) {
        fprintf(stderr, "json: %s\nwant: %s\ngot rc=%d err: %s\n", json, want, rc, err);
        CHECK(0);
    }
    CHECK(c == NULL);
    CHECK(strchr(err, '\n') == NULL);
}

static void test_defaults_and_bounds(void)
{
    config_t *c = json_ok("{}");
    CHECK_INT(c->upstream_max_queue, 256);
    CHECK_INT(c->upstream_queue_timeout_ms, 10000);
    CHECK_INT(c->upstream_fetch_deadline_ms, 60000);
    CHECK_INT(c->negative_ttl_s, 10);
    CHECK_INT(c->upstreams[0].n_allow_redirect_hosts, 0);
    CHECK(c->upstreams[0].allow_redirect_hosts == NULL);
    config_free(c);
    c = json_ok("{\"upstream_max_queue\": 1, \"upstream_queue_timeout_ms\": 1,"
                " \"upstream_fetch_deadline_ms\": 3600000, \"negative_ttl_s\": 0}");
    CHECK_INT(c->upstream_max_queue, 1);
    CHECK_INT(c->upstream_queue_timeout_ms, 1);
    CHECK_INT(c->upstream_fetch_deadline_ms, 3600000);
    CHECK_INT(c->negative_ttl_s, 0);
    config_free(c);
    expect_err("{\"upstream_max_queue\": 0}", "upstream_max_queue: must be 1..100000, got 0");
    expect_err("{\"upstream_max_queue\": 100001}", "upstream_max_queue: must be 1..100000");
    expect_err("{\"upstream_queue_timeout_ms\": 0}", "upstream_queue_timeout_ms: must be 1..");
    expect_err("{\"upstream_fetch_deadline_ms\": -5}", "upstream_fetch_deadline_ms: must be 1..");
    expect_err("{\"negative_ttl_s\": 3601}", "negative_ttl_s: must be 0..3600, got 3601");
    expect_err("{\"negative_ttl_s\": \"10\"}", "negative_ttl_s: expected an integer, got a string");
    expect_err("{\"negative_ttl_s\": 1.5}", "negative_ttl_s: expected an integer");
}

#define UP(extra)                                                                                  \
    "{\"upstreams\": [{\"name\": \"r.example\", \"url\": \"https://r.example\"" extra "}]}"

static void test_allow_redirect_hosts(void)
{
    config_t *c = json_ok(UP(", \"allow_redirect_hosts\": [\"MinIO.internal\", \"*.CDN.internal\","
                             " \"10.0.0.5\", \"::1\", \"[fd00::7]\"]"));
    const config_upstream_t *u = &c->upstreams[0];
    CHECK_INT(u->n_allow_redirect_hosts, 5);
    CHECK_STR(u->allow_redirect_hosts[0], "minio.internal");
    CHECK_STR(u->allow_redirect_hosts[1], "*.cdn.internal");
    CHECK_STR(u->allow_redirect_hosts[2], "10.0.0.5");
    CHECK_STR(u->allow_redirect_hosts[3], "::1");
    CHECK_STR(u->allow_redirect_hosts[4], "fd00::7");
    config_free(c);
    c = json_ok(UP(", \"allow_redirect_hosts\": []"));
    CHECK_INT(c->upstreams[0].n_allow_redirect_hosts, 0);
    config_free(c);

    expect_err(UP(", \"allow_redirect_hosts\": \"minio\""),
               "upstreams[0].allow_redirect_hosts: expected an array of host names");
    expect_err(UP(", \"allow_redirect_hosts\": [5]"),
               "upstreams[0].allow_redirect_hosts[0]: expected a string");
    expect_err(UP(", \"allow_redirect_hosts\": [\"ok.example\", \"\"]"),
               "upstreams[0].allow_redirect_hosts[1]: must not be empty");
    expect_err(UP(", \"allow_redirect_hosts\": [\"minio:9000\"]"),
               "allow_redirect_hosts[0]: \"minio:9000\": a host without a port");
    expect_err(UP(", \"allow_redirect_hosts\": [\"http://minio\"]"),
               "allow_redirect_hosts[0]: \"http://minio\":");
    expect_err(UP(", \"allow_redirect_hosts\": [\"*.10.0.0.1\"]"), "\"*.\" goes before a DNS name");
    expect_err(UP(", \"allow_redirect_hosts\": [\"*\"]"), "allow_redirect_hosts[0]: \"*\":");
    expect_err(UP(", \"allow_redirect_hosts\": [\"a..b\"]"), "empty label");
    expect_err(UP(", \"allow_redirect_hosts\": [\"bad\\u0001host\"]"),
               "allow_redirect_hosts[0]: \"bad?host\":");
    expect_err(UP(", \"allow_redirect_hosts\": [\"nul\\u0000x\"]"),
               "is not allowed"); /* jansson refuses it */
    expect_err(UP(", \"allow_redirect_hosts\": [\"1.2.3\"]"), "not a valid IPv4 address");
    /* Bounded: 64 hosts at most. */
    char big[8192];
    size_t n = (size_t)snprintf(big, sizeof big, "%s",
                                "{\"upstreams\": [{\"name\": \"r.example\", \"url\": "
                                "\"https://r.example\", \"allow_redirect_hosts\": [");
    for (int i = 0; i < 65; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "%s\"h%d.example\"", i ? "," : "", i);
    snprintf(big + n, sizeof big - n, "]}]}");
    expect_err(big, "upstreams[0].allow_redirect_hosts: at most 64 hosts");
    /* The unknown-field message lists the new field. */
    expect_err(UP(", \"allow_redirect\": []"), "\"allow_redirect_hosts\"");
}

static const test_case_t cases[] = {
    TEST_CASE(test_defaults_and_bounds),
    TEST_CASE(test_allow_redirect_hosts),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
