/* "node_name": default, valid tokens, and every kind of bad value with the field named. */
#include "config/config.h"

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

#include <stdio.h>
#include <string.h>

static void expect_err(const char *json, size_t len, const char *want)
{
    config_t *c = (config_t *)1;
    char err[512] = "";
    int rc = config_from_json(&c, json, len, "t.json", err, sizeof err);
    if (rc != WE_CONFIG || !strstr(err, want)) {
        fprintf(stderr, "want: %s\ngot rc=%d err: %s\n", want, rc, err);
        CHECK(0);
    }
    CHECK(c == NULL);
    CHECK(strchr(err, '\n') == NULL);
}

static void expect_name(const char *json, const char *want)
{
    config_t *c = NULL;
    char err[512] = "";
    CHECK_INT(config_from_json(&c, json, strlen(json), "t.json", err, sizeof err), 0);
    CHECK_STR(c->node_name, want);
    config_free(c);
}

static void test_default_and_valid(void)
{
    expect_name("{}", "winch");
    expect_name("{\"node_name\": \"winch-2\"}", "winch-2");
    expect_name("{\"node_name\": \"a\"}", "a");
    expect_name("{\"node_name\": \"Edge.site_b:5000\"}", "Edge.site_b:5000");
    char json[128], name[64];
    memset(name, 'n', 63);
    name[63] = '\0';
    snprintf(json, sizeof json, "{\"node_name\": \"%s\"}", name);
    expect_name(json, name);
}

static void test_bad_values(void)
{
    const char *bad[] = {
        "{\"node_name\": \"\"}",           "{\"node_name\": \"1node\"}",
        "{\"node_name\": \"-x\"}",         "{\"node_name\": \"a b\"}",
        "{\"node_name\": \"a;hit\"}",      "{\"node_name\": \"a,b\"}",
        "{\"node_name\": \"a\\\"b\"}",     "{\"node_name\": \"a\\r\\nX-Evil: 1\"}",
        "{\"node_name\": \"caf\\u00e9\"}", "{\"node_name\": \"*\"}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        expect_err(bad[i], strlen(bad[i]), "node_name: ");
    expect_err("{\"node_name\": 5}", 16, "node_name: expected a string, got");
    expect_err("{\"node_name\": null}", 19, "node_name: expected a string, got");
    const char nul[] = "{\"node_name\": \"a\\u0000b\"}";
    /* The JSON parser already refuses an embedded NUL (config_node.c checks it anyway). */
    expect_err(nul, sizeof nul - 1, "is not allowed");
    char json[160], name[65];
    memset(name, 'n', 64);
    name[64] = '\0';
    snprintf(json, sizeof json, "{\"node_name\": \"%s\"}", name);
    expect_err(json, strlen(json), "node_name: ");
}

static const test_case_t cases[] = {
    TEST_CASE(test_default_and_valid),
    TEST_CASE(test_bad_values),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
