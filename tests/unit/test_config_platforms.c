/* The "platforms" rules and "client_groups" of the configuration: the example parses as
 * written, platforms are normalised, and every bad value (types, platforms, globs, CIDRs,
 * prefixes, duplicates, dead fields, huge input) is refused with a message naming its field. */
#include "config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

#define UPS                                                                                        \
    "\"upstreams\": [{\"name\": \"docker.io\", \"url\": \"http://127.0.0.1:1\"},"                  \
    "{\"name\": \"ghcr.io\", \"url\": \"http://127.0.0.1:2\"}]"

static void expect_err_json(const char *json, const char *want)
{
    config_t *c = (config_t *)1;
    char err[512] = "";
    int rc = config_from_json(&c, json, strlen(json), "t.json", err, sizeof err);
    if (rc != WE_CONFIG || !strstr(err, want)) {
        fprintf(stderr, "json: %.300s\nwant: %s\ngot rc=%d err: %s\n", json, want, rc, err);
        CHECK(0);
    }
    CHECK(c == NULL);
    CHECK(strchr(err, '\n') == NULL);
}

static void expect_err(const char *body, const char *want)
{
    char json[8192];
    snprintf(json, sizeof json, "{" UPS ", %s}", body);
    expect_err_json(json, want);
}

static config_t *expect_ok(const char *body)
{
    char json[8192];
    snprintf(json, sizeof json, "{" UPS ", %s}", body);
    config_t *c = NULL;
    char err[512] = "";
    if (config_from_json(&c, json, strlen(json), "t.json", err, sizeof err) != 0) {
        fprintf(stderr, "json: %s\nerr: %s\n", body, err);
        CHECK(0);
    }
    return c;
}

static const char *pf(const platform_t *p)
{
    static char buf[PLATFORM_STR_MAX];
    return platform_format(p, buf, sizeof buf);
}

/* The example. */
static void test_example(void)
{
    config_t *c = expect_ok(
        "\"platforms\": ["
        "{\"match\": \"docker.io/library/*\", \"platforms\": [\"linux/amd64\", \"linux/arm64\"], "
        "\"prefetch\": true},"
        "{\"match\": \"**\", \"platforms\": [\"linux/amd64\"], \"prefetch\": true, "
        "\"attestations\": false}],"
        "\"client_groups\": ["
        "{\"name\": \"arm-pool\", \"cidrs\": [\"10.20.0.0/16\"], \"platforms\": [\"linux/arm64\"]},"
        "{\"name\": \"edge\", \"path_prefix\": \"/edge\", \"platforms\": [\"linux/arm/v7\"]}]");
    CHECK_INT(c->n_platform_rules, 2);
    const config_platform_rule_t *r = c->platform_rules;
    CHECK_STR(r[0].match, "docker.io/library/*");
    CHECK_INT(r[0].n_platforms, 2);
    CHECK_STR(pf(&r[0].platforms[1]), "linux/arm64");
    CHECK(r[0].prefetch && !r[0].attestations && !r[0].filter && !r[0].restrict_);
    CHECK_STR(r[1].match, "**");
    CHECK_INT(c->n_client_groups, 2);
    const config_client_group_t *g = c->client_groups;
    CHECK_STR(g[0].name, "arm-pool");
    CHECK_INT(g[0].n_cidrs, 1);
    CHECK(!g[0].cidrs[0].v6 && g[0].cidrs[0].prefix == 16 && g[0].cidrs[0].addr[0] == 10 &&
          g[0].cidrs[0].addr[1] == 20);
    CHECK(g[0].path_prefix == NULL);
    CHECK_STR(g[1].path_prefix, "/edge");
    CHECK_INT(g[1].n_cidrs, 0);
    CHECK_STR(pf(&g[1].platforms[0]), "linux/arm/v7");
    /* Defaults of the bounds. */
    CHECK_INT(c->prefetch_max_concurrent, 8);
    CHECK_INT(c->prefetch_max_per_upstream, 4);
    CHECK_INT(c->prefetch_max_queue, 4096);
    config_free(c);
}

static void test_normalised(void)
{
    config_t *c = expect_ok("\"platforms\": [{\"match\": \"ghcr.io/**\", \"platforms\": "
                            "[\"linux/aarch64\", \"linux/arm\", \"x86_64\"], \"filter\": true, "
                            "\"restrict\": true, \"prefetch\": true, \"attestations\": true}],"
                            "\"client_groups\": [{\"name\": \"v6\", \"cidrs\": [\"fd00::/8\", "
                            "\"127.0.0.2\", \"::1\"], \"platforms\": [\"arm64\"]}],"
                            "\"prefetch_max_concurrent\": 2, \"prefetch_max_per_upstream\": 1");
    const config_platform_rule_t *r = c->platform_rules;
    CHECK_STR(pf(&r[0].platforms[0]), "linux/arm64");
    CHECK_STR(pf(&r[0].platforms[1]), "linux/arm/v7");
    CHECK_STR(pf(&r[0].platforms[2]), "linux/amd64");
    CHECK(r[0].filter && r[0].restrict_ && r[0].prefetch && r[0].attestations);
    const config_client_group_t *g = c->client_groups;
    CHECK_INT(g[0].n_cidrs, 3);
    CHECK(g[0].cidrs[0].v6 && g[0].cidrs[0].prefix == 8 && g[0].cidrs[0].addr[0] == 0xfd);
    CHECK(!g[0].cidrs[1].v6 && g[0].cidrs[1].prefix == 32 && g[0].cidrs[1].addr[3] == 2);
    CHECK(g[0].cidrs[2].v6 && g[0].cidrs[2].prefix == 128);
    CHECK_INT(c->prefetch_max_concurrent, 2);
    config_free(c);
    /* An empty list is fine (and replaces nothing). */
    c = expect_ok("\"platforms\": [], \"client_groups\": []");
    CHECK_INT(c->n_platform_rules, 0);
    CHECK_INT(c->n_client_groups, 0);
    config_free(c);
}

static void test_rule_errors(void)
{
#define R(body) "\"platforms\": [" body "]"
    expect_err("\"platforms\": {}", "platforms: expected an array of rules, got an object");
    expect_err(R("1"), "platforms[0]: expected an object");
    expect_err(R("{\"platforms\": [\"linux/amd64\"]}"), "platforms[0].match: missing");
    expect_err(R("{\"match\": 5, \"platforms\": [\"linux/amd64\"]}"),
               "platforms[0].match: expected a string, got an integer");
    expect_err(R("{\"match\": \"docker.io//a\", \"platforms\": [\"linux/amd64\"]}"),
               "platforms[0].match: \"docker.io//a\" is not a usable glob");
    expect_err(R("{\"match\": \"alpine\", \"platforms\": [\"linux/amd64\"]}"),
               "platforms[0].match: \"alpine\" is not a usable glob: matches no repository");
    expect_err(R("{\"match\": \"quay.io/**\", \"platforms\": [\"linux/amd64\"]}"),
               "platforms[0].match: \"quay.io\" is not a configured upstream");
    expect_err(R("{\"match\": \"**\"}"), "platforms[0].platforms: missing");
    expect_err(R("{\"match\": \"**\", \"platforms\": []}"),
               "platforms[0].platforms: must list at least one platform");
    expect_err(R("{\"match\": \"**\", \"platforms\": \"linux/amd64\"}"),
               "platforms[0].platforms: expected an array of platforms");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"linux/amd64\", 7]}"),
               "platforms[0].platforms[1]: expected a string, got an integer");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"linux/amd64\", \"linux//v7\"]}"),
               "platforms[0].platforms[1]: \"linux//v7\" is not a platform: empty component");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"a/b/c/d\"]}"),
               "platforms[0].platforms[0]: \"a/b/c/d\" is not a platform: too many components");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"linux/arm64\", \"linux/arm64/v8\"]}"),
               "platforms[0].platforms[1]: \"linux/arm64/v8\" is listed twice (as linux/arm64)");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"linux/amd64\"], \"prefetch\": \"yes\"}"),
               "platforms[0].prefetch: expected true or false, got a string");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"linux/amd64\"], \"restrict\": 1}"),
               "platforms[0].restrict: expected true or false");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"linux/amd64\"], \"filter\": null}"),
               "platforms[0].filter: expected true or false, got null");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"linux/amd64\"], \"attestations\": true}"),
               "platforms[0].attestations: has no effect");
    expect_err(R("{\"match\": \"**\", \"platforms\": [\"linux/amd64\"], \"prefetch\": true},"
                 "{\"match\": \"**\", \"platform\": [\"linux/amd64\"]}"),
               "platforms[1].platform: unknown field (a platforms rule has match, platforms");
    expect_err("\"prefetch_max_concurrent\": 0", "prefetch_max_concurrent: must be 1..1024, got 0");
    expect_err("\"prefetch_max_concurrent\": 2, \"prefetch_max_per_upstream\": 3",
               "prefetch_max_per_upstream: 3 is more than prefetch_max_concurrent (2)");
#undef R
}

static void test_group_errors(void)
{
#define G(body) "\"client_groups\": [" body "]"
#define P "\"platforms\": [\"linux/arm64\"]"
    expect_err("\"client_groups\": 3", "client_groups: expected an array of groups");
    expect_err(G("[]"), "client_groups[0]: expected an object");
    expect_err(G("{\"cidrs\": [\"10.0.0.0/8\"], " P "}"), "client_groups[0].name: missing");
    expect_err(G("{\"name\": \"Arm Pool\", \"cidrs\": [\"10.0.0.0/8\"], " P "}"),
               "client_groups[0].name: \"Arm Pool\": expected 1..64 of [a-z0-9._-]");
    expect_err(G("{\"name\": \"\", \"cidrs\": [\"10.0.0.0/8\"], " P "}"),
               "client_groups[0].name: \"\": expected");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"10.0.0.0/8\"], " P "},"
                 "{\"name\": \"a\", \"cidrs\": [\"10.1.0.0/16\"], " P "}"),
               "client_groups[1].name: \"a\" is also client_groups[0].name");
    expect_err(G("{\"name\": \"a\", " P "}"),
               "client_groups[0]: matches no client: give cidrs, path_prefix, listen or several");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"10.0.0.0/8\"]}"),
               "client_groups[0].platforms: missing");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [], " P "}"),
               "client_groups[0].cidrs: must list at least one CIDR");
    expect_err(G("{\"name\": \"a\", \"cidrs\": \"10.0.0.0/8\", " P "}"),
               "client_groups[0].cidrs: expected an array of CIDRs, got a string");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"10.0.0.0/8\", \"10.20.0.0/33\"], " P "}"),
               "client_groups[0].cidrs[1]: \"10.20.0.0/33\": the prefix length is over 32");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"10.20.0.1/16\"], " P "}"),
               "client_groups[0].cidrs[0]: \"10.20.0.1/16\" has host bits set");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"10.20.0.0/\"], " P "}"),
               "client_groups[0].cidrs[0]: \"10.20.0.0/\": the prefix length is not a number");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"10.20.0.0/016\"], " P "}"),
               "the prefix length is not a number");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"host.example/8\"], " P "}"),
               "client_groups[0].cidrs[0]: \"host.example\" is not an IPv4 or IPv6 address");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"fd00::1/8\"], " P "}"), "has host bits set");
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"::/129\"], " P "}"),
               "the prefix length is over 128");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"edge\", " P "}"),
               "client_groups[0].path_prefix: \"edge\": expected a path like \"/edge\"");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"/edge/\", " P "}"),
               "client_groups[0].path_prefix: \"/edge/\": expected a path");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"/v2\", " P "}"),
               "client_groups[0].path_prefix: must not be /v2");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"/a//b\", " P "}"),
               "segments are made of [a-z0-9._-]");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"/a/../b\", " P "}"),
               "no \".\" or \"..\" segments");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"/Edge\", " P "}"),
               "segments are made of [a-z0-9._-]");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"/edge\", " P "},"
                 "{\"name\": \"b\", \"path_prefix\": \"/edge/x\", " P "}"),
               "client_groups[1].path_prefix: \"/edge/x\" overlaps client_groups[0].path_prefix");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"/edge\", \"platforms\": [\"linux/\"]}"),
               "client_groups[0].platforms[0]: \"linux/\" is not a platform");
    expect_err(G("{\"name\": \"a\", \"path_prefix\": \"/edge\", " P ", \"listn\": 1}"),
               "client_groups[0].listn: unknown field (a client group has name, cidrs, "
               "path_prefix, listen, platforms)");
#undef G
#undef P
}

/* "listen": a group's own listener, with the grammar of the top-level "listen". */
static void test_group_listen(void)
{
    config_t *c = expect_ok(
        "\"listen\": \"127.0.0.1:5000\", \"client_groups\": ["
        "{\"name\": \"arm\", \"listen\": \"127.0.0.1:5001\", \"platforms\": [\"arm64\"]},"
        "{\"name\": \"v6\", \"listen\": \"[::1]:5002\", \"cidrs\": [\"10.0.0.0/8\"], "
        "\"path_prefix\": \"/v6\", \"platforms\": [\"s390x\"]},"
        "{\"name\": \"any\", \"listen\": \"127.0.0.1:0\", \"platforms\": [\"ppc64le\"]},"
        "{\"name\": \"any2\", \"listen\": \"127.0.0.2:0\", \"platforms\": [\"ppc64le\"]},"
        "{\"name\": \"none\", \"cidrs\": [\"10.1.0.0/16\"], \"platforms\": [\"arm64\"]}]");
    const config_client_group_t *g = c->client_groups;
    CHECK_STR(g[0].listen_host, "127.0.0.1");
    CHECK_INT(g[0].listen_port, 5001);
    CHECK_INT(g[0].n_cidrs, 0);
    CHECK(g[0].path_prefix == NULL);
    CHECK_STR(g[1].listen_host, "::1");
    CHECK_INT(g[1].listen_port, 5002);
    CHECK_STR(g[1].path_prefix, "/v6");
    CHECK_INT(g[2].listen_port, 0);
    CHECK(g[4].listen_host == NULL);
    /* The dump names it as written (check-config --json), null when none. */
    char *dump = config_dump_json(c);
    CHECK(dump != NULL);
    CHECK(strstr(dump, "\"listen\": \"[::1]:5002\"") != NULL);
    CHECK(strstr(dump, "\"listen\": \"127.0.0.1:5001\"") != NULL);
    CHECK(strstr(dump, "\"listen\": null") != NULL);
    free(dump);
    config_free(c);

    /* Address identity, as a reload matches listeners: by value, port 0 included. */
    CHECK(config_listen_same("::1", 5000, "0:0:0:0:0:0:0:1", 5000));
    CHECK(config_listen_same("127.0.0.1", 0, "127.0.0.1", 0));
    CHECK(!config_listen_same("127.0.0.1", 5000, "127.0.0.2", 5000));
    CHECK(!config_listen_same("127.0.0.1", 5000, "127.0.0.1", 5001));
    CHECK(!config_listen_same("127.0.0.1", 5000, "::ffff:127.0.0.1", 5000));
    CHECK(!config_listen_same(NULL, 5000, "127.0.0.1", 5000));

#define G(body) "\"listen\": \"127.0.0.1:5000\", \"client_groups\": [" body "]"
#define P "\"platforms\": [\"linux/arm64\"]"
    /* The grammar of listen. */
    expect_err(G("{\"name\": \"a\", \"listen\": 5001, " P "}"),
               "client_groups[0].listen: expected a string, got an integer");
    expect_err(G("{\"name\": \"a\", \"listen\": null, " P "}"),
               "client_groups[0].listen: expected a string, got null");
    expect_err(G("{\"name\": \"a\", \"listen\": \"\", " P "}"),
               "client_groups[0].listen: empty: expected \"HOST:PORT\"");
    expect_err(G("{\"name\": \"a\", \"listen\": \"127.0.0.1\", " P "}"),
               "client_groups[0].listen: expected HOST:PORT");
    expect_err(G("{\"name\": \"a\", \"listen\": \"winch.example:5001\", " P "}"),
               "client_groups[0].listen: host must be an IP address");
    expect_err(G("{\"name\": \"a\", \"listen\": \"localhost:5001\", " P "}"),
               "client_groups[0].listen: host must be an IP address");
    expect_err(G("{\"name\": \"a\", \"listen\": \"127.0.0.1:65536\", " P "}"),
               "client_groups[0].listen: port must be a number 1..65535");
    expect_err(G("{\"name\": \"a\", \"listen\": \"127.0.0.1:-1\", " P "}"),
               "client_groups[0].listen: port must be a number");
    expect_err(G("{\"name\": \"a\", \"listen\": \"::1:5001\", " P "}"),
               "client_groups[0].listen: an IPv6 address must be written in brackets");
    expect_err(G("{\"name\": \"a\", \"listen\": \"[::1:5001\", " P "}"),
               "client_groups[0].listen: missing ']'");
    expect_err(G("{\"name\": \"a\", \"listen\": \"256.1.1.1:5001\", " P "}"),
               "client_groups[0].listen: not a valid IPv4 address");
    expect_err(G("{\"name\": \"a\", \"listen\": \"http://127.0.0.1:5001\", " P "}"),
               "client_groups[0].listen: ");
    /* Still a group that matches nothing without one of the three. */
    expect_err(G("{\"name\": \"a\", " P "}"), "client_groups[0]: matches no client");
    /* The other listeners' addresses. */
    expect_err(G("{\"name\": \"a\", \"cidrs\": [\"10.0.0.0/8\"], " P "},"
                 "{\"name\": \"b\", \"listen\": \"127.0.0.1:5000\", " P "}"),
               "client_groups[1].listen: 127.0.0.1:5000 is taken by listen (127.0.0.1:5000)");
    expect_err(G("{\"name\": \"b\", \"listen\": \"0.0.0.0:5000\", " P "}"),
               "client_groups[0].listen: 0.0.0.0:5000 is taken by listen (127.0.0.1:5000)");
    expect_err(G("{\"name\": \"b\", \"listen\": \"[::]:5000\", " P "}"),
               "client_groups[0].listen: [::]:5000 is taken by listen (127.0.0.1:5000)");
    expect_err("\"listen\": \"127.0.0.1:5000\", \"admin_listen\": \"127.0.0.1:5009\", "
               "\"client_groups\": [{\"name\": \"b\", \"listen\": \"127.0.0.1:5009\", " P "}]",
               "client_groups[0].listen: 127.0.0.1:5009 is taken by admin_listen (127.0.0.1:5009)");
    {
        char pem[256], body[1600];
        snprintf(pem, sizeof pem, "%s/x.pem", test_tmpdir("winch-cfg-gl-"));
        FILE *f = fopen(pem, "w");
        CHECK(f != NULL);
        fclose(f);
        snprintf(body, sizeof body,
                 "\"listen\": \"127.0.0.1:5000\", \"tls_listen\": \"[::1]:5443\", "
                 "\"tls_cert\": \"%s\", \"tls_key\": \"%s\", \"client_groups\": [{\"name\": "
                 "\"b\", \"listen\": \"[0:0::1]:5443\", " P "}]",
                 pem, pem);
        expect_err(body,
                   "client_groups[0].listen: [0:0::1]:5443 is taken by tls_listen ([::1]:5443)");
    }
    /* Another group's: the same address (port 0 too: a reload knows a listener by it), or one
     * a wildcard takes. */
    expect_err(G("{\"name\": \"a\", \"listen\": \"127.0.0.1:5001\", " P "},"
                 "{\"name\": \"b\", \"listen\": \"127.0.0.1:5001\", " P "}"),
               "client_groups[1].listen: 127.0.0.1:5001 is also client_groups[0].listen (a)");
    expect_err(G("{\"name\": \"a\", \"listen\": \"127.0.0.1:0\", " P "},"
                 "{\"name\": \"b\", \"listen\": \"127.0.0.1:0\", " P "}"),
               "client_groups[1].listen: 127.0.0.1:0 is also client_groups[0].listen (a)");
    expect_err(G("{\"name\": \"a\", \"listen\": \"127.0.0.1:5001\", " P "},"
                 "{\"name\": \"b\", \"cidrs\": [\"10.0.0.0/8\"], " P "},"
                 "{\"name\": \"c\", \"listen\": \"0.0.0.0:5001\", " P "}"),
               "client_groups[2].listen: 0.0.0.0:5001 overlaps client_groups[0].listen "
               "(127.0.0.1:5001)");
    /* Not a clash: other ports, another family's specific address, port 0 beside listen. */
    c = expect_ok(G("{\"name\": \"a\", \"listen\": \"[::1]:5000\", " P "},"
                    "{\"name\": \"b\", \"listen\": \"127.0.0.2:5000\", " P "},"
                    "{\"name\": \"c\", \"listen\": \"127.0.0.1:0\", " P "}"));
    config_free(c);
    /* The flags count: --listen given on the command line is checked too. */
    {
        static const char json[] = "{" UPS ", \"client_groups\": [{\"name\": \"a\", "
                                   "\"listen\": \"127.0.0.1:6000\", " P "}]}";
        char path[512], err[512] = "";
        snprintf(path, sizeof path, "%s/c.json", test_tmpdir("winch-cfg-gl-"));
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        fputs(json, f);
        fclose(f);
        char *argv[] = {"--config", path, "--listen", "127.0.0.1:6000", NULL};
        config_t *fc = NULL;
        CHECK_INT(config_load(&fc, 4, argv, err, sizeof err), WE_CONFIG);
        CHECK(strstr(err, "client_groups[0].listen: 127.0.0.1:6000 is taken by listen") != NULL);
    }
#undef G
#undef P
}

/* Huge input: too many rules, platforms, groups, CIDRs; a huge platform string. */
static void test_bounds(void)
{
    size_t cap = 1 << 20;
    char *json = malloc(cap);
    CHECK(json != NULL);
    size_t n = (size_t)snprintf(json, cap, "{\"platforms\": [");
    for (int i = 0; i <= CONFIG_MAX_PLATFORM_RULES; i++)
        n += (size_t)snprintf(json + n, cap - n,
                              "%s{\"match\": \"**\", \"platforms\": [\"linux/amd64\"]}",
                              i ? "," : "");
    snprintf(json + n, cap - n, "]}");
    expect_err_json(json, "platforms: at most 256 rules");

    n = (size_t)snprintf(json, cap, "{\"platforms\": [{\"match\": \"**\", \"platforms\": [");
    for (int i = 0; i <= CONFIG_MAX_PLATFORMS; i++)
        n += (size_t)snprintf(json + n, cap - n, "%s\"linux/arch%d\"", i ? "," : "", i);
    snprintf(json + n, cap - n, "]}]}");
    expect_err_json(json, "platforms[0].platforms: at most 32 platforms");

    n = (size_t)snprintf(json, cap, "{\"client_groups\": [");
    for (int i = 0; i <= CONFIG_MAX_CLIENT_GROUPS; i++)
        n += (size_t)snprintf(json + n, cap - n,
                              "%s{\"name\": \"g%d\", \"path_prefix\": \"/g%d\", \"platforms\": "
                              "[\"arm64\"]}",
                              i ? "," : "", i, i);
    snprintf(json + n, cap - n, "]}");
    expect_err_json(json, "client_groups: at most 64 groups");

    /* Every group may have a listener of its own (the server takes 3 + 64). */
    n = (size_t)snprintf(json, cap, "{\"client_groups\": [");
    for (int i = 0; i < CONFIG_MAX_CLIENT_GROUPS; i++)
        n += (size_t)snprintf(json + n, cap - n,
                              "%s{\"name\": \"g%d\", \"listen\": \"127.0.0.1:%d\", "
                              "\"platforms\": [\"arm64\"]}",
                              i ? "," : "", i, 20000 + i);
    snprintf(json + n, cap - n, "]}");
    config_t *c = NULL;
    char err[512] = "";
    CHECK_INT(config_from_json(&c, json, strlen(json), "t.json", err, sizeof err), 0);
    CHECK_INT(c->client_groups[63].listen_port, 20063);
    config_free(c);

    n = (size_t)snprintf(json, cap, "{\"client_groups\": [{\"name\": \"a\", \"listen\": \"");
    memset(json + n, '1', 100000);
    n += 100000;
    snprintf(json + n, cap - n, "\", \"platforms\": [\"arm64\"]}]}");
    expect_err_json(json, "client_groups[0].listen: ");

    n = (size_t)snprintf(json, cap, "{\"client_groups\": [{\"name\": \"a\", \"cidrs\": [");
    for (int i = 0; i <= CONFIG_MAX_GROUP_CIDRS; i++)
        n += (size_t)snprintf(json + n, cap - n, "%s\"10.%d.0.0/16\"", i ? "," : "", i);
    snprintf(json + n, cap - n, "], \"platforms\": [\"arm64\"]}]}");
    expect_err_json(json, "client_groups[0].cidrs: at most 64 CIDRs");

    n = (size_t)snprintf(json, cap,
                         "{\"platforms\": [{\"match\": \"**\", \"platforms\": [\"linux/");
    memset(json + n, 'x', 100000);
    n += 100000;
    snprintf(json + n, cap - n, "\"]}]}");
    expect_err_json(json, "platforms[0].platforms[0]: \"linux/xxx");

    n = (size_t)snprintf(json, cap, "{\"client_groups\": [{\"name\": \"");
    memset(json + n, 'a', 100000);
    n += 100000;
    snprintf(json + n, cap - n, "\", \"path_prefix\": \"/a\", \"platforms\": [\"arm64\"]}]}");
    expect_err_json(json, "client_groups[0].name: \"aaa");
    free(json);
}

int main(int argc, char **argv)
{
    static const test_case_t cases[] = {TEST_CASE(test_example),      TEST_CASE(test_normalised),
                                        TEST_CASE(test_rule_errors),  TEST_CASE(test_group_errors),
                                        TEST_CASE(test_group_listen), TEST_CASE(test_bounds)};
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
