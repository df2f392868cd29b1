/* The "policy" section of the configuration: every field parsed, every bad value and dead or
 * contradictory combination refused at start with a message naming policy[i].field, and the
 * checks that need the final upstream list (after --upstream flags). */
#include "config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

#define D64 "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define UPS                                                                                        \
    "\"upstreams\": [{\"name\": \"docker.io\", \"url\": \"http://127.0.0.1:1\"},"                  \
    "{\"name\": \"ghcr.io\", \"url\": \"http://127.0.0.1:2\"}]"

static void expect_err(const char *policy, const char *want)
{
    char json[8192];
    snprintf(json, sizeof json, "{" UPS ", \"policy\": %s}", policy);
    config_t *c = (config_t *)1;
    char err[512] = "";
    int rc = config_from_json(&c, json, strlen(json), "t.json", err, sizeof err);
    if (rc != WE_CONFIG || !strstr(err, want)) {
        fprintf(stderr, "policy: %s\nwant: %s\ngot rc=%d err: %s\n", policy, want, rc, err);
        CHECK(0);
    }
    CHECK(c == NULL);
    CHECK(strchr(err, '\n') == NULL);
}

static config_t *expect_ok(const char *policy)
{
    char json[8192];
    snprintf(json, sizeof json, "{" UPS ", \"policy\": %s}", policy);
    config_t *c = NULL;
    char err[512] = "";
    if (config_from_json(&c, json, strlen(json), "t.json", err, sizeof err) != 0) {
        fprintf(stderr, "policy: %s\nerr: %s\n", policy, err);
        CHECK(0);
    }
    return c;
}

/* The example, with a real digest: every field parses as written. */
static void test_example(void)
{
    config_t *c =
        expect_ok("[{\"match\": \"docker.io/library/*\", \"deny_tags\": [\"^latest$\"], "
                  "\"message\": \"pin a version: see wiki/images\"},"
                  "{\"match\": \"docker.io/acme/**\", \"allow\": true},"
                  "{\"match\": \"ghcr.io/**\", \"require_digest\": true},"
                  "{\"match\": \"docker.io/library/busybox\", \"pin\": {\"stable\": \"" D64 "\"}},"
                  "{\"match\": \"docker.io/library/node\", \"soak_s\": 86400},"
                  "{\"match\": \"docker.io/**\", \"max_image_bytes\": 2147483648, "
                  "\"max_image_age_days\": 365, \"audit\": true},"
                  "{\"match\": \"**/frozen\", \"freeze\": true},"
                  "{\"match\": \"**\", \"deny\": true}]");
    CHECK_INT(c->n_policy, 8);
    const config_policy_rule_t *r = c->policy;
    CHECK_STR(r[0].match, "docker.io/library/*");
    CHECK_INT(r[0].n_deny_tags, 1);
    CHECK_STR(r[0].deny_tags[0], "^latest$");
    CHECK_STR(r[0].message, "pin a version: see wiki/images");
    CHECK(!r[0].allow && !r[0].deny && !r[0].audit);
    CHECK(r[1].allow && !r[1].deny);
    CHECK(r[2].require_digest);
    CHECK_INT(r[3].n_pins, 1);
    CHECK_STR(r[3].pins[0].tag, "stable");
    CHECK_STR(r[3].pins[0].digest, D64);
    CHECK_INT(r[4].soak_s, 86400);
    CHECK(r[5].max_image_bytes == 2147483648ull);
    CHECK_INT(r[5].max_image_age_days, 365);
    CHECK(r[5].audit);
    CHECK(r[6].freeze);
    CHECK(r[7].deny && !r[7].allow);
    config_free(c);
    /* allow: false is deny; deny: false is allow. */
    c = expect_ok("[{\"match\": \"docker.io/a/*\", \"allow\": false},"
                  "{\"match\": \"docker.io/b/*\", \"deny\": false}]");
    CHECK(c->policy[0].deny && !c->policy[0].allow);
    CHECK(c->policy[1].allow && !c->policy[1].deny);
    config_free(c);
    c = expect_ok("[]");
    CHECK_INT(c->n_policy, 0);
    config_free(c);
}

static void test_errors(void)
{
    expect_err("{}", "policy: expected an array of rules, got an object");
    expect_err("[1]", "policy[0]: expected an object");
    expect_err("[{\"deny\": true}]", "policy[0].match: missing");
    expect_err("[{\"match\": 3, \"deny\": true}]", "policy[0].match: expected a string");
    expect_err("[{\"match\": \"docker.io//x\", \"deny\": true}]",
               "policy[0].match: \"docker.io//x\" is not a usable glob: empty path component");
    expect_err("[{\"match\": \"\", \"deny\": true}]", "policy[0].match: \"\" is not a usable glob");
    expect_err("[{\"match\": \"docker.io\", \"deny\": true}]", "matches no repository");
    expect_err("[{\"match\": \"*\", \"deny\": true}]", "matches no repository");
    expect_err("[{\"match\": \"docker.io/a b\", \"deny\": true}]", "control, space");
    expect_err("[{\"match\": \"quay.io/**\", \"deny\": true}]",
               "policy[0].match: \"quay.io\" is not a configured upstream (the first component of "
               "match names one: docker.io, ghcr.io)");
    expect_err("[{\"match\": \"docker.io/x\", \"deny\": true, \"colour\": 1}]",
               "policy[0].colour: unknown field (a policy rule has match, allow, deny");
    expect_err("[{\"match\": \"docker.io/x\", \"deny\": 1}]",
               "policy[0].deny: expected true or false, got an integer");
    expect_err("[{\"match\": \"docker.io/x\", \"deny_tags\": \"latest\"}]",
               "policy[0].deny_tags: expected an array of regexes, got a string");
    expect_err("[{\"match\": \"docker.io/x\", \"deny_tags\": []}]",
               "policy[0].deny_tags: must list at least one regex");
    expect_err("[{\"match\": \"docker.io/x\", \"deny_tags\": [3]}]",
               "policy[0].deny_tags[0]: expected a string");
    expect_err("[{\"match\": \"docker.io/x\", \"deny\": true},"
               "{\"match\": \"docker.io/y\", \"deny_tags\": [\"^ok$\", \"(unclosed\"]}]",
               "policy[1].deny_tags[1]: invalid regex \"(unclosed\": ");
    expect_err("[{\"match\": \"docker.io/x\", \"deny_tags\": [\"[z-a]\"]}]",
               "policy[0].deny_tags[0]: invalid regex");
    expect_err("[{\"match\": \"docker.io/x\", \"deny_tags\": [\"(a)\\\\1\"]}]",
               "policy[0].deny_tags[0]: back-references (\\1) are not allowed");
    expect_err("[{\"match\": \"docker.io/x\", \"deny_tags\": [\"\"]}]",
               "policy[0].deny_tags[0]: an empty regex matches every tag");
    expect_err("[{\"match\": \"docker.io/x\", \"deny_tags\": [\"a\\u0000b\"]}]",
               "\\u0000 is not allowed"); /* jansson refuses it first */
    expect_err("[{\"match\": \"docker.io/x\", \"pin\": []}]",
               "policy[0].pin: expected an object {\"TAG\": \"DIGEST\", ...}, got an array");
    expect_err("[{\"match\": \"docker.io/x\", \"pin\": {}}]", "policy[0].pin: must pin at least");
    expect_err("[{\"match\": \"docker.io/x\", \"pin\": {\".bad\": \"" D64 "\"}}]",
               "policy[0].pin..bad: \".bad\" is not a tag");
    expect_err("[{\"match\": \"docker.io/x\", \"pin\": {\"v1\": \"sha256:abc\"}}]",
               "policy[0].pin.v1: \"sha256:abc\" is not a digest");
    expect_err("[{\"match\": \"docker.io/x\", \"pin\": {\"v1\": \"md5:abcdef\"}}]",
               "policy[0].pin.v1: winch verifies only sha256 and sha512 digests");
    expect_err("[{\"match\": \"docker.io/x\", \"pin\": {\"v1\": 7}}]",
               "policy[0].pin.v1: expected a string");
    expect_err("[{\"match\": \"docker.io/x\", \"soak_s\": 0}]",
               "policy[0].soak_s: must be 1..31536000, got 0");
    expect_err("[{\"match\": \"docker.io/x\", \"soak_s\": 1.5}]",
               "policy[0].soak_s: expected an integer");
    expect_err("[{\"match\": \"docker.io/x\", \"max_image_bytes\": -1}]",
               "policy[0].max_image_bytes: must be 1..");
    expect_err("[{\"match\": \"docker.io/x\", \"max_image_age_days\": 36501}]",
               "policy[0].max_image_age_days: must be 1..36500");
    expect_err("[{\"match\": \"docker.io/x\", \"deny\": true, \"message\": \"a\\nb\"}]",
               "policy[0].message: must not contain control characters");
    expect_err("[{\"match\": \"docker.io/x\", \"deny\": true, \"message\": \"\"}]",
               "policy[0].message: must not be empty");
}

/* Fields that could never take effect, and contradictions. */
static void test_combinations(void)
{
    expect_err("[{\"match\": \"docker.io/x\"}]", "policy[0]: the rule does nothing");
    expect_err("[{\"match\": \"docker.io/x\", \"allow\": true, \"deny\": true}]",
               "policy[0].deny: contradicts allow");
    expect_err("[{\"match\": \"docker.io/x\", \"allow\": false, \"deny\": false}]",
               "policy[0].deny: contradicts allow");
    expect_err("[{\"match\": \"docker.io/x\", \"deny\": true, \"deny_tags\": [\"x\"]}]",
               "policy[0].deny_tags: has no effect: deny refuses every pull of the repository");
    expect_err("[{\"match\": \"docker.io/x\", \"allow\": false, \"pin\": {\"a\": \"" D64 "\"}}]",
               "policy[0].pin: has no effect: deny refuses every pull");
    expect_err("[{\"match\": \"docker.io/x\", \"deny\": true, \"max_image_bytes\": 5}]",
               "policy[0].max_image_bytes: has no effect: deny");
    expect_err("[{\"match\": \"docker.io/x\", \"require_digest\": true, \"deny_tags\": [\"x\"]}]",
               "policy[0].deny_tags: has no effect: require_digest refuses every pull by tag");
    expect_err("[{\"match\": \"docker.io/x\", \"require_digest\": true, \"pin\": {\"a\": \"" D64
               "\"}}]",
               "policy[0].pin: has no effect: require_digest");
    expect_err("[{\"match\": \"docker.io/x\", \"require_digest\": true, \"soak_s\": 5}]",
               "policy[0].soak_s: has no effect: require_digest");
    expect_err("[{\"match\": \"docker.io/x\", \"freeze\": true, \"soak_s\": 5}]",
               "policy[0].soak_s: has no effect: a frozen tag is never revalidated");
    expect_err("[{\"match\": \"docker.io/x\", \"freeze\": true, \"audit\": true}]",
               "policy[0].audit: has no effect: the rule refuses nothing");
    expect_err("[{\"match\": \"docker.io/x\", \"allow\": true, \"message\": \"m\"}]",
               "policy[0].message: has no effect: the rule refuses nothing");
    expect_err("[{\"match\": \"docker.io/x\", \"deny_tags\": [\"^latest$\"], "
               "\"pin\": {\"stable\": \"" D64 "\", \"latest\": \"" D64 "\"}}]",
               "policy[0].pin.latest: has no effect: the tag is refused by deny_tags[0]");
    /* Fine: pins beside deny_tags that spare them, audit over a refusing field, soak + pin. */
    config_free(expect_ok("[{\"match\": \"docker.io/x\", \"deny_tags\": [\"^latest$\"], "
                          "\"pin\": {\"stable\": \"" D64 "\"}, \"soak_s\": 60, \"audit\": true, "
                          "\"message\": \"see the wiki\"}]"));
}

/* Bounds: rules, regexes, pins. */
static void test_bounds(void)
{
    size_t cap = 1100 * 40 + 64;
    char *big = malloc(cap);
    CHECK(big != NULL);
    size_t n = (size_t)snprintf(big, cap, "[");
    for (int i = 0; i < CONFIG_MAX_POLICY_RULES + 1; i++)
        n += (size_t)snprintf(big + n, cap - n, "%s{\"match\":\"docker.io/x%d\",\"deny\":true}",
                              i ? "," : "", i);
    snprintf(big + n, cap - n, "]");
    char *json = malloc(cap + 256);
    CHECK(json != NULL);
    snprintf(json, cap + 256, "{\"policy\": %s}", big);
    config_t *c = NULL;
    char err[512] = "";
    CHECK_INT(config_from_json(&c, json, strlen(json), "t.json", err, sizeof err), WE_CONFIG);
    CHECK(strstr(err, "policy: at most 1024 rules"));
    free(json);
    free(big);

    char re[400] = "[{\"match\": \"docker.io/x\", \"deny_tags\": [\"";
    size_t l = strlen(re);
    memset(re + l, 'a', 257);
    snprintf(re + l + 257, sizeof re - l - 257, "\"]}]");
    expect_err(re, "policy[0].deny_tags[0]: longer than 256 bytes");
    char msg[800] = "[{\"match\": \"docker.io/x\", \"deny\": true, \"message\": \"";
    l = strlen(msg);
    memset(msg + l, 'm', 513);
    snprintf(msg + l + 513, sizeof msg - l - 513, "\"}]");
    expect_err(msg, "policy[0].message: longer than 512 bytes");
}

/* --upstream flags replace the file's upstreams: the rules are checked against the final list. */
static void test_flags_replace_upstreams(void)
{
    const char *dir = test_tmpdir("winch-cfgpol");
    char path[512];
    snprintf(path, sizeof path, "%s/c.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs("{\"policy\": [{\"match\": \"docker.io/library/*\", \"deny_tags\": [\"^latest$\"]}]}", f);
    CHECK(fclose(f) == 0);
    char *ok[] = {"--config", path, NULL};
    config_t *c = NULL;
    char err[512] = "";
    CHECK_INT(config_load(&c, 2, ok, err, sizeof err), 0);
    CHECK_INT(c->n_policy, 1);
    config_free(c);
    char *bad[] = {"--config", path, "--upstream", "ghcr.io=http://127.0.0.1:9", NULL};
    c = NULL;
    CHECK_INT(config_load(&c, 4, bad, err, sizeof err), WE_CONFIG);
    CHECK(strstr(err, "policy[0].match: \"docker.io\" is not a configured upstream"));
    CHECK(c == NULL);
}

int main(int argc, char **argv)
{
    static const test_case_t cases[] = {TEST_CASE(test_example), TEST_CASE(test_errors),
                                        TEST_CASE(test_combinations), TEST_CASE(test_bounds),
                                        TEST_CASE(test_flags_replace_upstreams)};
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
