/* "trusted_proxies" (config_trusted.c), an upstream's "pass_ns" and node_name_set: defaults,
 * valid values as check-config shows them, every kind of bad value with the field named, and
 * what a reload compares. */
#include "config/config.h"

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static config_t *load(const char *json)
{
    config_t *c = NULL;
    char err[512] = "";
    int rc = config_from_json(&c, json, strlen(json), "t.json", err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", json, err);
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

/* The dump's "trusted_proxies" as compact JSON text, e.g. ["127.0.0.1/32"]. */
static void expect_dump(const config_t *c, const char *field_text)
{
    char *s = config_dump_json(c);
    CHECK(s != NULL);
    if (!strstr(s, field_text)) {
        fprintf(stderr, "want %s in:\n%s\n", field_text, s);
        CHECK(0);
    }
    free(s);
}

static void test_defaults(void)
{
    config_t *c = load("{}");
    CHECK_INT(c->n_trusted_proxies, 0);
    CHECK(c->trusted_proxies == NULL);
    CHECK(!c->node_name_set);
    CHECK(!c->upstreams[0].pass_ns);
    expect_dump(c, "\"trusted_proxies\": []");
    expect_dump(c, "\"pass_ns\": false");
    config_free(c);
    c = load("{\"trusted_proxies\": []}");
    CHECK_INT(c->n_trusted_proxies, 0);
    config_free(c);
}

static void test_valid(void)
{
    config_t *c = load("{\"trusted_proxies\": [\"127.0.0.1\", \"10.0.0.0/8\", \"fd00::/8\", "
                       "\"::1\", \"::ffff:192.168.0.0/112\", \"192.0.2.7/32\"], "
                       "\"node_name\": \"edge-1\"}");
    CHECK_INT(c->n_trusted_proxies, 6);
    CHECK(!c->trusted_proxies[0].v6);
    CHECK_INT(c->trusted_proxies[0].prefix, 32);
    CHECK(c->trusted_proxies[2].v6);
    CHECK_INT(c->trusted_proxies[3].prefix, 128);
    /* An IPv4-mapped network is the IPv4 network it stands for. */
    CHECK(!c->trusted_proxies[4].v6);
    CHECK_INT(c->trusted_proxies[4].prefix, 16);
    CHECK(c->node_name_set);
    char *s = config_dump_json(c);
    CHECK(strstr(s, "\"trusted_proxies\": [\n    \"127.0.0.1/32\",\n    \"10.0.0.0/8\",\n    "
                    "\"fd00::/8\",\n    \"::1/128\",\n    \"192.168.0.0/16\",\n    "
                    "\"192.0.2.7/32\"\n  ]") != NULL);
    free(s);
    /* A reload compares the field (it is applied, not kept: reload.c swaps it). */
    config_t *d = load("{\"trusted_proxies\": [\"127.0.0.1\"]}");
    CHECK(!config_same_field(c, d, "trusted_proxies"));
    config_t *e = load("{\"trusted_proxies\": [\"127.0.0.1/32\"]}");
    CHECK(config_same_field(d, e, "trusted_proxies"));
    config_free(e);
    config_free(d);
    config_free(c);
    /* The most entries allowed. */
    char json[8192];
    size_t n = (size_t)snprintf(json, sizeof json, "{\"trusted_proxies\": [");
    for (int i = 0; i < CONFIG_MAX_TRUSTED_PROXIES; i++)
        n += (size_t)snprintf(json + n, sizeof json - n, "%s\"10.0.%d.0/24\"", i ? "," : "", i);
    snprintf(json + n, sizeof json - n, "]}");
    c = load(json);
    CHECK_INT(c->n_trusted_proxies, CONFIG_MAX_TRUSTED_PROXIES);
    config_free(c);
}

static void test_bad(void)
{
    expect_err("{\"trusted_proxies\": \"127.0.0.1\"}",
               "t.json: trusted_proxies: expected an array of addresses or CIDRs, got a string");
    expect_err("{\"trusted_proxies\": null}", "trusted_proxies: expected an array");
    expect_err("{\"trusted_proxies\": {\"a\": 1}}", "trusted_proxies: expected an array");
    expect_err("{\"trusted_proxies\": [\"127.0.0.1\", 5]}",
               "trusted_proxies[1]: expected a string, got an integer");
    expect_err("{\"trusted_proxies\": [[\"127.0.0.1\"]]}",
               "trusted_proxies[0]: expected a string, got an array");
    expect_err("{\"trusted_proxies\": [\"haproxy.local\"]}",
               "trusted_proxies[0]: \"haproxy.local\" is not an IPv4 or IPv6 address");
    expect_err("{\"trusted_proxies\": [\"\"]}", "trusted_proxies[0]: \"\" is not a CIDR");
    expect_err("{\"trusted_proxies\": [\"10.0.0.1/8\"]}", "trusted_proxies[0]: \"10.0.0.1/8\" "
                                                          "has host bits set");
    expect_err("{\"trusted_proxies\": [\"10.0.0.0/33\"]}", "the prefix length is over 32");
    expect_err("{\"trusted_proxies\": [\"fd00::/129\"]}", "the prefix length is over 128");
    expect_err("{\"trusted_proxies\": [\"10.0.0.0/\"]}", "the prefix length is not a number");
    expect_err("{\"trusted_proxies\": [\"10.0.0.0/08\"]}", "the prefix length is not a number");
    expect_err("{\"trusted_proxies\": [\"10.0.0.0/-8\"]}", "the prefix length is not a number");
    expect_err("{\"trusted_proxies\": [\"127.0.0.1:8080\"]}", "is not an IPv4 or IPv6 address");
    expect_err("{\"trusted_proxies\": [\"[::1]\"]}", "is not an IPv4 or IPv6 address");
    expect_err("{\"trusted_proxies\": [\" 127.0.0.1\"]}", "is not an IPv4 or IPv6 address");
    expect_err("{\"trusted_proxies\": [\"fe80::1%eth0\"]}", "is not an IPv4 or IPv6 address");
    /* Every address: refused, whatever the spelling. */
    expect_err("{\"trusted_proxies\": [\"0.0.0.0/0\"]}",
               "trusted_proxies[0]: \"0.0.0.0/0\" trusts every address");
    expect_err("{\"trusted_proxies\": [\"127.0.0.1\", \"::/0\"]}",
               "trusted_proxies[1]: \"::/0\" trusts every address");
    expect_err("{\"trusted_proxies\": [\"::ffff:0.0.0.0/96\"]}", "trusts every address");
    expect_err("{\"trusted_proxies\": [\"a\\u0000b\"]}", "t.json");
    expect_err("{\"trusted_proxies\": [\"1\"], \"trusted_proxies\": [\"2\"]}", "duplicate");
    char json[8192];
    size_t n = (size_t)snprintf(json, sizeof json, "{\"trusted_proxies\": [");
    for (int i = 0; i <= CONFIG_MAX_TRUSTED_PROXIES; i++)
        n += (size_t)snprintf(json + n, sizeof json - n, "%s\"10.0.%d.0/24\"", i ? "," : "", i);
    snprintf(json + n, sizeof json - n, "]}");
    expect_err(json, "trusted_proxies: at most 64 addresses or CIDRs");
}

static void test_pass_ns(void)
{
    config_t *c = load("{\"upstreams\": [{\"name\": \"docker.io\", \"url\": "
                       "\"http://127.0.0.1:5001\", \"pass_ns\": true}, {\"name\": \"ghcr.io\", "
                       "\"url\": \"http://127.0.0.1:5001\"}]}");
    CHECK(c->upstreams[0].pass_ns);
    CHECK(!c->upstreams[1].pass_ns);
    expect_dump(c, "\"pass_ns\": true");
    config_t *d = load("{\"upstreams\": [{\"name\": \"docker.io\", \"url\": "
                       "\"http://127.0.0.1:5001\"}, {\"name\": \"ghcr.io\", "
                       "\"url\": \"http://127.0.0.1:5001\"}]}");
    /* Part of the upstream list: a reload keeps the running value and says so. */
    CHECK(!config_same_field(c, d, "upstreams"));
    config_free(d);
    config_free(c);
    expect_err("{\"upstreams\": [{\"name\": \"a.io\", \"url\": \"http://127.0.0.1:1\", "
               "\"pass_ns\": \"yes\"}]}",
               "upstreams[0].pass_ns: expected true or false, got a string");
    expect_err("{\"upstreams\": [{\"name\": \"a.io\", \"url\": \"http://127.0.0.1:1\", "
               "\"pass_ns\": 1}]}",
               "upstreams[0].pass_ns: expected true or false, got an integer");
    expect_err("{\"upstreams\": [{\"name\": \"a.io\", \"url\": \"http://127.0.0.1:1\", "
               "\"passns\": true}]}",
               "upstreams[0].passns: unknown field");
}

static const test_case_t cases[] = {
    TEST_CASE(test_defaults),
    TEST_CASE(test_valid),
    TEST_CASE(test_bad),
    TEST_CASE(test_pass_ns),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
