/* config/config_auth.c: the "auth" section — defaults, the full form, and every error with the
 * field it must name. */
#include "config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

static char pw_path[512], ca_path[512], cert_path[512];

static void setup(void)
{
    if (pw_path[0])
        return;
    const char *dir = test_tmpdir("winch-config-auth");
    snprintf(pw_path, sizeof pw_path, "%s/htpasswd", dir);
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", dir);
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", dir);
    const char *paths[] = {pw_path, ca_path, cert_path};
    for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
        FILE *f = fopen(paths[i], "w");
        CHECK(f);
        fputs("x\n", f);
        CHECK_INT(fclose(f), 0);
    }
}

/* "%PW%" and "%CA%" in json become the paths of the files made by setup(). */
static char *expand(const char *json)
{
    setup();
    size_t cap = strlen(json) + 4096;
    char *out = malloc(cap);
    CHECK(out);
    size_t o = 0;
    for (const char *p = json; *p;) {
        if (strncmp(p, "%PW%", 4) == 0 || strncmp(p, "%CA%", 4) == 0 ||
            strncmp(p, "%CERT%", 6) == 0) {
            const char *v = p[1] == 'P'                  ? pw_path
                            : p[1] == 'C' && p[2] == 'A' ? ca_path
                                                         : cert_path;
            o += (size_t)snprintf(out + o, cap - o, "%s", v);
            p += p[1] == 'C' && p[2] == 'E' ? 6 : 4;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    return out;
}

static config_t *ok(const char *json)
{
    char *j = expand(json);
    config_t *c = NULL;
    char err[512] = "";
    if (config_from_json(&c, j, strlen(j), "t.json", err, sizeof err) != 0) {
        fprintf(stderr, "json: %s\nunexpected error: %s\n", j, err);
        CHECK(0);
    }
    free(j);
    return c;
}

static void bad(const char *json, const char *want)
{
    char *j = expand(json);
    config_t *c = (config_t *)1;
    char err[512] = "";
    int rc = config_from_json(&c, j, strlen(j), "t.json", err, sizeof err);
    if (rc != WE_CONFIG || !strstr(err, want)) {
        fprintf(stderr, "json: %s\nwant: %s\ngot rc=%d err: %s\n", j, want, rc, err);
        CHECK(0);
    }
    CHECK(c == NULL);
    CHECK(strchr(err, '\n') == NULL);
    free(j);
}

static void test_defaults(void)
{
    config_t *c = ok("{}");
    CHECK(c->auth == NULL);
    config_free(c);

    c = ok("{\"auth\": {\"htpasswd\": \"%PW%\"}}");
    const config_auth_t *a = c->auth;
    CHECK(a);
    CHECK_STR(a->htpasswd, pw_path);
    CHECK_STR(a->realm, "winch");
    CHECK(a->client_ca == NULL);
    CHECK(!a->require_client_cert);
    CHECK_INT(a->n_groups, 0);
    /* Without "access", every authenticated user reads everything. */
    CHECK_INT(a->n_rules, 1);
    CHECK_STR(a->rules[0].match, "**");
    CHECK(a->rules[0].authenticated);
    CHECK(!a->rules[0].anonymous);
    CHECK_INT(a->verify_cache_ttl_s, 300);
    CHECK_INT(a->max_failures, 10);
    CHECK_INT(a->failure_window_s, 60);
    CHECK(!a->bearer);
    CHECK_INT(a->token_ttl_s, 300);
    CHECK(a->token_realm == NULL);
    config_free(c);

    c = ok("{\"auth\": {\"htpasswd\": \"%PW%\", \"challenge\": \"bearer\", \"token_ttl_s\": 60,"
           " \"token_realm\": \"https://mirror.example:5443/v2/_token\"}}");
    CHECK(c->auth->bearer);
    CHECK_INT(c->auth->token_ttl_s, 60);
    CHECK_STR(c->auth->token_realm, "https://mirror.example:5443/v2/_token");
    config_free(c);
    c = ok("{\"auth\": {\"htpasswd\": \"%PW%\", \"challenge\": \"basic\"}}");
    CHECK(!c->auth->bearer);
    config_free(c);

    /* An empty access list is allowed: nobody reads anything. */
    c = ok("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": []}}");
    CHECK_INT(c->auth->n_rules, 0);
    config_free(c);
}

static void test_full(void)
{
    /* Groups after access (JSON objects have no order to rely on). */
    config_t *c =
        ok("{\"upstreams\": [{\"name\": \"docker.io\", \"url\": \"http://127.0.0.1:1\"},"
           "  {\"name\": \"ghcr.io\", \"url\": \"http://127.0.0.1:2\"},"
           "  {\"name\": \"127.0.0.1:5001\", \"url\": \"http://127.0.0.1:5001\"}],"
           " \"tls_listen\": \"127.0.0.1:5443\", \"tls_cert\": \"%CERT%\","
           " \"tls_key\": \"%CERT%\","
           " \"auth\": {\"htpasswd\": \"%PW%\", \"realm\": \"my mirror\","
           "  \"access\": ["
           "   {\"match\": \"docker.io/library/**\", \"anonymous\": true},"
           "   {\"match\": \"ghcr.io/acme/**\", \"users\": [\"alice\"],"
           "    \"groups\": [\"ci\", \"ops\"]},"
           "   {\"match\": \"127.0.0.1:5001/**\", \"authenticated\": true},"
           "   {\"match\": \"*/secret/**\"},"
           "   {\"match\": \"**\", \"users\": [\"admin\", \"CN With Spaces\"]}],"
           "  \"groups\": {\"ci\": [\"runner1\", \"runner2\"], \"ops\": []},"
           "  \"client_ca\": \"%CA%\", \"require_client_cert\": true,"
           "  \"verify_cache_ttl_s\": 0, \"max_failures\": 3, \"failure_window_s\": 30}}");
    const config_auth_t *a = c->auth;
    CHECK_STR(a->realm, "my mirror");
    CHECK_STR(a->client_ca, ca_path);
    CHECK(a->require_client_cert);
    CHECK_INT(a->verify_cache_ttl_s, 0);
    CHECK_INT(a->max_failures, 3);
    CHECK_INT(a->failure_window_s, 30);
    CHECK_INT(a->n_groups, 2);
    CHECK_STR(a->groups[0].name, "ci");
    CHECK_INT(a->groups[0].n_members, 2);
    CHECK_STR(a->groups[0].members[1], "runner2");
    CHECK_INT(a->groups[1].n_members, 0);
    CHECK_INT(a->n_rules, 5);
    CHECK(a->rules[0].anonymous && !a->rules[0].authenticated && a->rules[0].n_users == 0);
    CHECK_STR(a->rules[1].match, "ghcr.io/acme/**");
    CHECK_INT(a->rules[1].n_users, 1);
    CHECK_STR(a->rules[1].users[0], "alice");
    CHECK_INT(a->rules[1].n_groups, 2);
    CHECK_INT(a->rules[1].groups[0], 0);
    CHECK_INT(a->rules[1].groups[1], 1);
    CHECK(a->rules[2].authenticated);
    CHECK(!a->rules[3].anonymous && !a->rules[3].authenticated && a->rules[3].n_users == 0 &&
          a->rules[3].n_groups == 0);
    CHECK_STR(a->rules[4].users[1], "CN With Spaces");
    config_free(c);

    /* Client certificates alone (no passwords). */
    c = ok("{\"tls_listen\": \"127.0.0.1:5443\", \"tls_cert\": \"%CERT%\", \"tls_key\": "
           "\"%CERT%\", \"auth\": {\"client_ca\": \"%CA%\"}}");
    CHECK(c->auth->htpasswd == NULL);
    config_free(c);
}

static void test_errors(void)
{
    bad("{\"auth\": []}", "t.json: auth: expected an object");
    bad("{\"auth\": {}}", "t.json: auth: give htpasswd (passwords), client_ca");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"htpassword\": 1}}",
        "t.json: auth.htpassword: unknown field");
    bad("{\"auth\": {\"htpasswd\": 5}}", "auth.htpasswd: expected a string (a path)");
    bad("{\"auth\": {\"htpasswd\": \"/nonexistent/htpasswd\"}}",
        "auth.htpasswd: cannot open /nonexistent/htpasswd: No such file");
    bad("{\"auth\": {\"htpasswd\": \"/tmp\"}}", "auth.htpasswd: /tmp is not a regular file");
    bad("{\"auth\": {\"htpasswd\": \"\"}}", "auth.htpasswd: must not be empty");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"password\": \"x\"}}", "auth.password: unknown");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"realm\": \"a\\\"b\"}}",
        "auth.realm: printable ASCII only");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"realm\": \"\"}}", "auth.realm: must be 1..128");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"realm\": \"a\\u0001\"}}", "auth.realm: printable");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"realm\": 1}}", "auth.realm: expected a string");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"require_client_cert\": true}}",
        "auth.require_client_cert: true needs client_ca");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"require_client_cert\": 1}}",
        "auth.require_client_cert: expected true or false");
    bad("{\"auth\": {\"client_ca\": \"%CA%\"}}",
        "auth.client_ca: client certificates need the TLS listener (tls_listen)");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"verify_cache_ttl_s\": 86401}}",
        "auth.verify_cache_ttl_s: must be 0..86400, got 86401");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"max_failures\": 0}}",
        "auth.max_failures: must be 1..1000000, got 0");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"failure_window_s\": -1}}",
        "auth.failure_window_s: must be 1..86400");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"failure_window_s\": 1.5}}",
        "auth.failure_window_s: expected an integer");

    /* The bearer challenge. */
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"challenge\": \"digest\"}}",
        "auth.challenge: expected \"basic\" or \"bearer\", got \"digest\"");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"challenge\": true}}",
        "auth.challenge: expected \"basic\" or \"bearer\", got a boolean");
    bad("{\"tls_listen\": \"127.0.0.1:5443\", \"tls_cert\": \"%CERT%\", \"tls_key\": \"%CERT%\","
        " \"auth\": {\"client_ca\": \"%CA%\", \"challenge\": \"bearer\"}}",
        "auth.challenge: \"bearer\" needs htpasswd");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"challenge\": \"bearer\", \"token_ttl_s\": 59}}",
        "auth.token_ttl_s: must be 60..86400, got 59");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"token_realm\": \"https://x/t\"}}",
        "auth.token_realm: only with \"challenge\": \"bearer\"");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"challenge\": \"bearer\", \"token_realm\": "
        "\"ftp://x/t\"}}",
        "auth.token_realm: not a usable URL");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"challenge\": \"bearer\", \"token_realm\": "
        "\"https://x/a\\\"b\"}}",
        "auth.token_realm: not a usable URL");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"challenge\": \"bearer\", \"token_realm\": 5}}",
        "auth.token_realm: expected a string (a URL)");

    /* Groups. */
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"groups\": []}}", "auth.groups: expected an object");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"groups\": {\"c i\": []}}}",
        "auth.groups.c i: \"c i\" is not a group name");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"groups\": {\"ci\": \"alice\"}}}",
        "auth.groups.ci: expected an array of user names");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"groups\": {\"ci\": [\"a\", \"b:c\"]}}}",
        "auth.groups.ci[1]: \"b:c\" must not contain ':'");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"groups\": {\"ci\": [\"\"]}}}",
        "auth.groups.ci[0]: must not be empty");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"groups\": {\"ci\": [\"a\\u0007\"]}}}",
        "auth.groups.ci[0]: must not contain control characters");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"groups\": {\"ci\": [7]}}}",
        "auth.groups.ci[0]: expected a string");

    /* Rules. */
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": {}}}",
        "auth.access: expected an array of rules");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [\"**\"]}}",
        "auth.access[0]: expected an object");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"anonymous\": true}]}}",
        "auth.access[0].match: missing");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"**\"}, {\"match\": "
        "\"docker.io//x\"}]}}",
        "auth.access[1].match: not a usable pattern: empty path component");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"a b\"}]}}",
        "auth.access[0].match: not a usable pattern");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"**\", \"user\": []}]}}",
        "auth.access[0].user: unknown field");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"**\", \"anonymous\": "
        "\"yes\"}]}}",
        "auth.access[0].anonymous: expected true or false");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"**\", \"users\": "
        "\"alice\"}]}}",
        "auth.access[0].users: expected an array of user names");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"**\", \"groups\": "
        "[\"cj\"]}], \"groups\": {\"ci\": []}}}",
        "auth.access[0].groups[0]: no group \"cj\" in auth.groups");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"**\", \"groups\": [1]}]}}",
        "auth.access[0].groups[0]: expected a string");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"**\", \"groups\": {}}]}}",
        "auth.access[0].groups: expected an array of group names");
    /* The upstream a pattern names must exist (else a later, wider rule would decide). */
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"ghrc.io/acme/**\"}]}}",
        "auth.access[0].match: \"ghrc.io\" is not a configured upstream");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"Docker.io/**\"}]}}",
        "auth.access[0].match: \"Docker.io\": upstream names are lowercase");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"index.docker.io/**\"}]}}",
        "auth.access[0].match: \"index.docker.io\": Docker Hub is named docker.io");
    bad("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"library/**\"}]}}",
        "\"library\" is not a configured upstream");
    /* The check runs after every field: flags and a later "upstreams" count. */
    config_t *c = ok("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": "
                     "\"ghcr.io/**\"}]}, \"upstreams\": [{\"name\": \"ghcr.io\", \"url\": "
                     "\"https://ghcr.io\"}]}");
    config_free(c);
    /* Wildcards in the upstream part are not checked. */
    c = ok("{\"auth\": {\"htpasswd\": \"%PW%\", \"access\": [{\"match\": \"*/x\"}, {\"match\": "
           "\"doc?er.io/**\"}]}}");
    config_free(c);
}

static void test_bounds(void)
{
    /* 1025 rules. */
    size_t cap = 1100 * 24 + 256;
    char *j = malloc(cap);
    size_t o = (size_t)snprintf(j, cap, "{\"auth\": {\"htpasswd\": \"%%PW%%\", \"access\": [");
    for (int i = 0; i < 1025; i++)
        o += (size_t)snprintf(j + o, cap - o, "%s{\"match\": \"**\"}", i ? "," : "");
    snprintf(j + o, cap - o, "]}}");
    bad(j, "auth.access: at most 1024 rules");
    free(j);
    /* A long user name. */
    char name[300];
    memset(name, 'u', 257);
    name[257] = '\0';
    char json[600];
    snprintf(json, sizeof json,
             "{\"auth\": {\"htpasswd\": \"%%PW%%\", \"groups\": {\"g\": [\"%s\"]}}}", name);
    bad(json, "auth.groups.g[0]: longer than 256 bytes");
}

static const test_case_t cases[] = {TEST_CASE(test_defaults), TEST_CASE(test_full),
                                    TEST_CASE(test_errors), TEST_CASE(test_bounds)};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
