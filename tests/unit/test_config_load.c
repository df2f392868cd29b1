/* config_load / config_from_json: defaults, file + flags, every error kind with the field it
 * must name, aliases in config_upstream_find, IPv6 listeners and upstreams. */
#include "config/config.h"

#include "common/err.h"

#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *tmpdir; /* test_tmpdir: removed with its files at exit */
static int nfiles;
static char files[48][256];

/* Writes text into a fresh file under tmpdir; returns its path (static storage). */
static const char *write_file(const char *name, const char *text)
{
    CHECK(nfiles < 48);
    char *path = files[nfiles++];
    snprintf(path, 256, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    CHECK(fwrite(text, 1, strlen(text), f) == strlen(text));
    CHECK(fclose(f) == 0);
    return path;
}

static int load(config_t **c, char *err, size_t errlen, int argc, const char *const *argv)
{
    char *args[32];
    CHECK(argc < 32);
    for (int i = 0; i < argc; i++)
        args[i] = (char *)argv[i];
    args[argc] = NULL;
    return config_load(c, argc, args, err, errlen);
}

/* The message must contain `want`; the config must not come back. */
static void expect_json_err(const char *json, const char *want)
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

static void expect_url_err(const char *url, const char *want)
{
    char json[512];
    snprintf(json, sizeof json, "{\"upstreams\": [{\"name\": \"x.io\", \"url\": \"%s\"}]}", url);
    expect_json_err(json, want);
}

static void expect_flag_err(int argc, const char *const *argv, const char *want)
{
    config_t *c = (config_t *)1;
    char err[512] = "";
    int rc = load(&c, err, sizeof err, argc, argv);
    if (rc != WE_CONFIG || !strstr(err, want)) {
        fprintf(stderr, "want: %s\ngot rc=%d err: %s\n", want, rc, err);
        CHECK(0);
    }
    CHECK(c == NULL);
}

static config_t *json_ok(const char *json)
{
    config_t *c = NULL;
    char err[512] = "";
    int rc = config_from_json(&c, json, strlen(json), "t.json", err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "json: %s\nunexpected error: %s\n", json, err);
        CHECK(0);
    }
    CHECK(c != NULL);
    return c;
}

static void test_defaults(void)
{
    config_t *c = NULL;
    char err[256] = "";
    CHECK_INT(load(&c, err, sizeof err, 0, NULL), 0);
    CHECK_STR(c->listen_host, "0.0.0.0");
    CHECK_INT(c->listen_port, 5000);
    CHECK_STR(c->cache_dir, "./winch-cache");
    CHECK_STR(c->log_level, "info");
    CHECK_INT(c->n_upstreams, 1);
    const config_upstream_t *u = &c->upstreams[0];
    CHECK_STR(u->name, "docker.io");
    CHECK_STR(u->url, "https://registry-1.docker.io");
    CHECK(u->tls);
    CHECK_STR(u->host, "registry-1.docker.io");
    CHECK_INT(u->port, 443);
    CHECK_STR(u->base_path, "");
    CHECK(u->dockerhub);
    CHECK_INT(c->upstream_connect_timeout_ms, 5000);
    CHECK_INT(c->upstream_response_timeout_ms, 15000);
    CHECK_INT(c->upstream_idle_timeout_ms, 30000);
    CHECK_INT(c->upstream_keepalive_ms, 30000);
    CHECK_INT(c->upstream_max_conns, 32);
    CHECK_INT(c->client_header_timeout_ms, 10000);
    CHECK_INT(c->client_idle_timeout_ms, 120000);
    CHECK_INT(c->max_connections, 4096);
    CHECK_INT(c->max_connections_per_client, 256);
    CHECK_INT(c->max_header_bytes, 32768);
    CHECK_INT(c->tag_ttl_s, 300);
    CHECK_INT(c->max_manifest_bytes, 4 * 1024 * 1024);
    CHECK_INT(c->max_tags_list_bytes, 8 * 1024 * 1024);
    CHECK(c->index_map_size == 4ull * 1024 * 1024 * 1024);
    config_free(c);

    /* An empty object is the same as no file. */
    c = json_ok("{}");
    CHECK_INT(c->n_upstreams, 1);
    CHECK_STR(c->upstreams[0].name, "docker.io");
    config_free(c);
    config_free(NULL);
}

static const char *full_json =
    "{\n"
    "  \"listen\": \"127.0.0.1:6000\",\n"
    "  \"cache_dir\": \"/var/cache/winch\",\n"
    "  \"log_level\": \"debug\",\n"
    "  \"upstreams\": [\n"
    "    {\"name\": \"GHCR.io\", \"url\": \"https://ghcr.io\"},\n"
    "    {\"name\": \"127.0.0.1:5001\", \"url\": \"http://127.0.0.1:5001/mirror/sub/\"},\n"
    "    {\"url\": \"HTTPS://Registry-1.Docker.IO:8443/\", \"name\": \"index.docker.io\"}\n"
    "  ],\n"
    "  \"upstream_connect_timeout_ms\": 1,\n"
    "  \"upstream_response_timeout_ms\": 3600000,\n"
    "  \"upstream_idle_timeout_ms\": 1000,\n"
    "  \"upstream_keepalive_ms\": 2000,\n"
    "  \"upstream_max_conns\": 1024,\n"
    "  \"client_header_timeout_ms\": 3000,\n"
    "  \"client_idle_timeout_ms\": 4000,\n"
    "  \"max_connections\": 1000000,\n"
    "  \"max_connections_per_client\": 0,\n"
    "  \"max_header_bytes\": 1024,\n"
    "  \"tag_ttl_s\": 0,\n"
    "  \"max_manifest_bytes\": 67108864,\n"
    "  \"max_tags_list_bytes\": 2048,\n"
    "  \"index_map_size\": 8589934592\n"
    "}\n";

static void check_full(const config_t *c)
{
    CHECK_INT(c->n_upstreams, 3);
    CHECK_STR(c->upstreams[0].name, "ghcr.io");
    CHECK(!c->upstreams[0].dockerhub);
    CHECK_STR(c->upstreams[1].name, "127.0.0.1:5001");
    CHECK(!c->upstreams[1].tls);
    CHECK_STR(c->upstreams[1].host, "127.0.0.1");
    CHECK_INT(c->upstreams[1].port, 5001);
    CHECK_STR(c->upstreams[1].base_path, "/mirror/sub");
    CHECK_STR(c->upstreams[2].name, "docker.io");
    CHECK(c->upstreams[2].dockerhub);
    CHECK(c->upstreams[2].tls);
    CHECK_STR(c->upstreams[2].url, "HTTPS://Registry-1.Docker.IO:8443/");
    CHECK_STR(c->upstreams[2].host, "registry-1.docker.io");
    CHECK_INT(c->upstreams[2].port, 8443);
    CHECK_STR(c->upstreams[2].base_path, "");
    CHECK_INT(c->upstream_connect_timeout_ms, 1);
    CHECK_INT(c->upstream_response_timeout_ms, 3600000);
    CHECK_INT(c->upstream_idle_timeout_ms, 1000);
    CHECK_INT(c->upstream_keepalive_ms, 2000);
    CHECK_INT(c->upstream_max_conns, 1024);
    CHECK_INT(c->client_header_timeout_ms, 3000);
    CHECK_INT(c->client_idle_timeout_ms, 4000);
    CHECK_INT(c->max_connections, 1000000);
    CHECK_INT(c->max_connections_per_client, 0);
    CHECK_INT(c->max_header_bytes, 1024);
    CHECK_INT(c->tag_ttl_s, 0);
    CHECK_INT(c->max_manifest_bytes, 64 * 1024 * 1024);
    CHECK_INT(c->max_tags_list_bytes, 2048);
    CHECK(c->index_map_size == 8589934592ull);
}

static void test_file_and_flags(void)
{
    const char *path = write_file("full.json", full_json);
    config_t *c = NULL;
    char err[512] = "";

    /* File alone. */
    const char *a1[] = {"--config", path};
    CHECK_INT(load(&c, err, sizeof err, 2, a1), 0);
    CHECK_STR(c->listen_host, "127.0.0.1");
    CHECK_INT(c->listen_port, 6000);
    CHECK_STR(c->cache_dir, "/var/cache/winch");
    CHECK_STR(c->log_level, "debug");
    check_full(c);
    config_free(c);

    /* Flags override, in both spellings, and --config may come last. Without --upstream the
     * file's list stays. */
    const char *a2[] = {"--listen=[::1]:7000", "--cache-dir", "/tmp/cc", "--log-level=warn",
                        "--config=" /* placeholder, replaced below */};
    char cfgflag[300];
    snprintf(cfgflag, sizeof cfgflag, "--config=%s", path);
    a2[4] = cfgflag;
    CHECK_INT(load(&c, err, sizeof err, 5, a2), 0);
    CHECK_STR(c->listen_host, "::1");
    CHECK_INT(c->listen_port, 7000);
    CHECK_STR(c->cache_dir, "/tmp/cc");
    CHECK_STR(c->log_level, "warn");
    check_full(c);
    config_free(c);

    /* --upstream replaces the file's list; the first flag is the default; later ones append. */
    const char *a3[] = {"--upstream", "quay.io=https://quay.io/", "--config", path,
                        "--upstream=registry-1.docker.io=http://127.0.0.1:5002/v2x"};
    CHECK_INT(load(&c, err, sizeof err, 5, a3), 0);
    CHECK_INT(c->n_upstreams, 2);
    CHECK_STR(c->upstreams[0].name, "quay.io");
    CHECK_STR(c->upstreams[0].host, "quay.io");
    CHECK_STR(c->upstreams[0].base_path, "");
    CHECK_INT(c->upstreams[0].port, 443);
    CHECK_STR(c->upstreams[1].name, "docker.io");
    CHECK(c->upstreams[1].dockerhub);
    CHECK(!c->upstreams[1].tls);
    CHECK_INT(c->upstreams[1].port, 5002);
    CHECK_STR(c->upstreams[1].base_path, "/v2x");
    CHECK_STR(c->listen_host, "127.0.0.1"); /* from the file */
    CHECK_INT(c->upstream_max_conns, 1024);
    config_free(c);

    /* Flags alone, no file: --upstream replaces the default Docker Hub. */
    const char *a4[] = {"--upstream", "127.0.0.1:5001=http://127.0.0.1:5001"};
    CHECK_INT(load(&c, err, sizeof err, 2, a4), 0);
    CHECK_INT(c->n_upstreams, 1);
    CHECK_STR(c->upstreams[0].name, "127.0.0.1:5001");
    CHECK(!c->upstreams[0].dockerhub);
    CHECK_INT(c->upstreams[0].port, 5001);
    CHECK(c->upstreams[0].tls == false);
    config_free(c);
}

static void test_syntax_errors(void)
{
    /* Line 3, column 3: jansson points at the bad token; the prefix is FILE:LINE:COLUMN. */
    config_t *c = (config_t *)1;
    char err[512] = "";
    const char *bad = "{\n  \"listen\": \"0.0.0.0:5000\",\n  oops\n}\n";
    CHECK_INT(config_from_json(&c, bad, strlen(bad), "t.json", err, sizeof err), WE_CONFIG);
    CHECK(c == NULL);
    CHECK(strncmp(err, "t.json:3:", 9) == 0);
    CHECK(strstr(err, "string or '}' expected") != NULL);

    expect_json_err("{\"listen\": \"0.0.0.0:5000\",}", "t.json:1:");
    expect_json_err("", "t.json:");
    expect_json_err("[1, 2]", "t.json: expected a JSON object at the top level, got an array");
    /* Duplicate keys are rejected, not silently last-wins. */
    expect_json_err("{\"tag_ttl_s\": 1,\n \"tag_ttl_s\": 2}", "t.json:2:");
    expect_json_err("{\"tag_ttl_s\": 1,\n \"tag_ttl_s\": 2}", "duplicate object key");
    /* Too big for jansson's integer is a syntax-level error, still with a position. */
    expect_json_err("{\"index_map_size\": 99999999999999999999999}", "t.json:1:");

    /* Through a file: the file name leads the message. */
    const char *path = write_file("bad.json", "{\n\n   \"listen\" \"x\"\n}\n");
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s:3:", path);
    const char *a[] = {"--config", path};
    expect_flag_err(2, a, prefix);

    const char *missing[] = {"--config", "/nonexistent/winch.json"};
    expect_flag_err(2, missing, "/nonexistent/winch.json: cannot open: No such file");
}

static void test_field_errors(void)
{
    /* Unknown fields, at the top and inside an upstream. */
    expect_json_err("{\"listen\": \"0.0.0.0:1\", \"bogus\": 1}", "t.json: bogus: unknown field");
    expect_json_err("{\"upstreams\": [{\"name\": \"a.io\", \"url\": \"https://a.io\"},"
                    " {\"name\": \"b.io\", \"url\": \"https://b.io\", \"token\": \"x\"}]}",
                    "t.json: upstreams[1].token: unknown field");
    /* Odd bytes in a key are made printable, never echoed raw. */
    expect_json_err("{\"a\\nb\": 1}", "t.json: a?b: unknown field");

    /* Wrong types name the field and the expected type. */
    expect_json_err("{\"tag_ttl_s\": \"300\"}",
                    "t.json: tag_ttl_s: expected an integer, got a string");
    expect_json_err("{\"tag_ttl_s\": 1.5}", "t.json: tag_ttl_s: expected an integer");
    expect_json_err("{\"max_connections\": true}",
                    "t.json: max_connections: expected an integer, got a boolean");
    expect_json_err("{\"listen\": 5000}", "t.json: listen: expected a string, got an integer");
    expect_json_err("{\"fill_splice\": \"yes\"}",
                    "t.json: fill_splice: expected true or false, got a string");
    expect_json_err("{\"fill_splice\": 1}",
                    "t.json: fill_splice: expected true or false, got an integer");
    expect_json_err("{\"cache_dir\": null}", "t.json: cache_dir: expected a string, got null");
    expect_json_err("{\"upstreams\": {}}", "t.json: upstreams: expected an array, got an object");
    expect_json_err("{\"upstreams\": [\"https://a.io\"]}",
                    "t.json: upstreams[0]: expected an object");
    expect_json_err("{\"upstreams\": [{\"name\": 1, \"url\": \"https://a.io\"}]}",
                    "t.json: upstreams[0].name: expected a string, got an integer");
    expect_json_err("{\"upstreams\": [{\"name\": \"a.io\"}]}", "t.json: upstreams[0].url: missing");
    expect_json_err("{\"upstreams\": [{\"url\": \"https://a.io\"}]}",
                    "t.json: upstreams[0].name: missing");
    expect_json_err("{\"upstreams\": []}", "t.json: upstreams: must list at least one upstream");

    /* Ranges. */
    expect_json_err("{\"tag_ttl_s\": -1}", "t.json: tag_ttl_s: must be 0..31536000, got -1");
    expect_json_err("{\"tag_ttl_s\": 31536001}", "tag_ttl_s: must be 0..31536000");
    expect_json_err("{\"upstream_connect_timeout_ms\": 0}",
                    "upstream_connect_timeout_ms: must be 1..3600000, got 0");
    expect_json_err("{\"client_idle_timeout_ms\": 3600001}", "client_idle_timeout_ms: must be");
    expect_json_err("{\"max_header_bytes\": 1023}", "max_header_bytes: must be 1024..1048576");
    expect_json_err("{\"max_header_bytes\": 1048577}", "max_header_bytes: must be");
    expect_json_err("{\"max_manifest_bytes\": 67108865}", "max_manifest_bytes: must be");
    expect_json_err("{\"max_connections\": 0}", "max_connections: must be 1..1000000");
    expect_json_err("{\"max_connections_per_client\": -1}",
                    "t.json: max_connections_per_client: must be 0..1000000, got -1");
    expect_json_err("{\"max_connections_per_client\": 1000001}",
                    "max_connections_per_client: must be 0..1000000");
    expect_json_err("{\"max_connections_per_client\": \"256\"}",
                    "max_connections_per_client: expected an integer, got a string");
    expect_json_err("{\"upstream_max_conns\": 1025}", "upstream_max_conns: must be 1..1024");
    expect_json_err("{\"index_map_size\": 1048575}", "index_map_size: must be 1048576..");
    expect_json_err("{\"log_level\": \"verbose\"}",
                    "t.json: log_level: \"verbose\" is not a log level");
    expect_json_err("{\"cache_dir\": \"\"}", "t.json: cache_dir: must not be empty");

    /* Bad listen addresses. */
    expect_json_err("{\"listen\": \"localhost:5000\"}", "t.json: listen: host must be an IP");
    expect_json_err("{\"listen\": \"0.0.0.0\"}", "t.json: listen: expected HOST:PORT");
    expect_json_err("{\"listen\": \"0.0.0.0:\"}", "t.json: listen: empty port");
    expect_json_err("{\"listen\": \"0.0.0.0:65536\"}", "listen: port must be a number 1..65535");
    expect_json_err("{\"listen\": \"::1:5000\"}", "listen: an IPv6 address must be written in");
    expect_json_err("{\"listen\": \"[::1\"}", "listen: missing ']'");
    expect_json_err("{\"listen\": \"[::1]5000\"}", "listen: unexpected text after ']'");
    expect_json_err("{\"listen\": \"300.0.0.1:5000\"}", "listen: not a valid IPv4 address");
}

static void test_upstream_errors(void)
{
    /* The message from the issue, word for word. */
    expect_json_err("{\"upstreams\": [{\"name\": \"a.io\", \"url\": \"https://a.io\"},"
                    " {\"name\": \"b.io\", \"url\": \"ftp://b.io\"}]}",
                    "t.json: upstreams[1].url: scheme must be http or https");
    expect_url_err("registry-1.docker.io", "upstreams[0].url: must start with http:// or https://");
    expect_url_err("https://", "upstreams[0].url: missing host");
    expect_url_err("https:///v2", "upstreams[0].url: missing host");
    expect_url_err("https://a.io:0", "upstreams[0].url: port must be a number 1..65535");
    expect_url_err("https://a.io:65536", "port must be a number 1..65535");
    expect_url_err("https://a.io:https", "port must be a number 1..65535");
    expect_url_err("https://a.io:/", "upstreams[0].url: empty port");
    expect_url_err("https://exa_mple.com", "host may only contain letters, digits");
    expect_url_err("https://-a.com", "starts or ends with '-'");
    expect_url_err("https://a..com", "empty label");
    expect_url_err("https://a.com.", "empty label");
    expect_url_err("https://1.2.3", "not a valid IPv4 address");
    expect_url_err("https://::1/", "must be written in brackets");
    expect_url_err("https://[::g]/", "not a valid IPv6 address");
    expect_url_err("https://[fe80::1%25eth0]/", "not a valid IPv6 address");
    expect_url_err("https://a.io?x=1", "query and fragment are not allowed");
    expect_url_err("https://a.io/v2#frag", "query and fragment are not allowed");
    expect_url_err("https://a.io/a b", "spaces, control and non-ASCII");
    expect_url_err("https://a.io/a%zz", "must be percent-encoded");
    /* Userinfo is refused, and the password never reaches the message. */
    {
        config_t *c = (config_t *)1;
        char err[512] = "";
        const char *j =
            "{\"upstreams\": [{\"name\": \"a.io\", \"url\": \"https://u:s3cret@a.io\"}]}";
        CHECK_INT(config_from_json(&c, j, strlen(j), "t.json", err, sizeof err), WE_CONFIG);
        CHECK(strstr(err, "upstreams[0].url: userinfo") != NULL);
        CHECK(strstr(err, "s3cret") == NULL);
    }

    /* Names. */
    expect_json_err("{\"upstreams\": [{\"name\": \"\", \"url\": \"https://a.io\"}]}",
                    "upstreams[0].name: \"\" is not a registry host[:port]: must not be empty");
    expect_json_err("{\"upstreams\": [{\"name\": \"https://a.io\", \"url\": \"https://a.io\"}]}",
                    "upstreams[0].name: \"https://a.io\" is not a registry host[:port]");
    expect_json_err("{\"upstreams\": [{\"name\": \"a.io/x\", \"url\": \"https://a.io\"}]}",
                    "upstreams[0].name:");

    /* Duplicates, including through Docker Hub's aliases and case. */
    expect_json_err("{\"upstreams\": [{\"name\": \"docker.io\", \"url\": \"https://a.io\"},"
                    " {\"name\": \"Index.Docker.IO\", \"url\": \"https://b.io\"}]}",
                    "t.json: upstreams[1].name: duplicate upstream \"docker.io\"");
    expect_json_err("{\"upstreams\": [{\"name\": \"ghcr.io\", \"url\": \"https://a.io\"},"
                    " {\"name\": \"GHCR.IO\", \"url\": \"https://b.io\"}]}",
                    "upstreams[1].name: duplicate upstream \"ghcr.io\"");

    /* Too many. */
    char big[8192];
    size_t o = (size_t)snprintf(big, sizeof big, "{\"upstreams\": [");
    for (int i = 0; i < CONFIG_MAX_UPSTREAMS + 1; i++)
        o += (size_t)snprintf(big + o, sizeof big - o,
                              "%s{\"name\": \"r%d.io\", \"url\": \"https://r%d.io\"}", i ? "," : "",
                              i, i);
    snprintf(big + o, sizeof big - o, "]}");
    expect_json_err(big, "t.json: upstreams: at most 32 upstreams");
}

static void test_flag_errors(void)
{
    const char *a1[] = {"--bogus"};
    expect_flag_err(1, a1, "unknown flag \"--bogus\"");
    const char *a2[] = {"--listen=127.0.0.1:1", "--bogus=1"};
    expect_flag_err(2, a2, "unknown flag \"--bogus\"");
    const char *a3[] = {"serve"};
    expect_flag_err(1, a3, "unexpected argument \"serve\"");
    const char *a4[] = {"--listen"};
    expect_flag_err(1, a4, "--listen: missing value");
    const char *a5[] = {"--cache-dir", "--listen", "0.0.0.0:1"};
    expect_flag_err(3, a5, "--cache-dir: missing value");
    const char *a6[] = {"--listen", "localhost:80"};
    expect_flag_err(2, a6, "--listen: host must be an IP");
    const char *a7[] = {"--upstream", "https://a.io"};
    expect_flag_err(2, a7, "--upstream: expected NAME=URL");
    const char *a8[] = {"--upstream", "a.io=ftp://a.io"};
    expect_flag_err(2, a8, "--upstream: url: scheme must be http or https");
    const char *a9[] = {"--upstream", "a.io=https://a.io", "--upstream=A.IO=https://b.io"};
    expect_flag_err(3, a9, "--upstream: name: duplicate upstream \"a.io\"");
    const char *a10[] = {"--log-level", "loud"};
    expect_flag_err(2, a10, "--log-level: \"loud\" is not a log level");
    const char *a11[] = {"--config", "/a.json", "--config", "/b.json"};
    expect_flag_err(4, a11, "--config: given more than once");
    const char *a12[] = {"--config="};
    expect_flag_err(1, a12, "--config: missing value");
    const char *a13[] = {"--"};
    expect_flag_err(1, a13, "unexpected argument \"--\"");
    /* Flag syntax is checked before the file is read: the unknown flag wins. */
    const char *a14[] = {"--config", "/nonexistent.json", "--nope"};
    expect_flag_err(3, a14, "unknown flag \"--nope\"");
    /* A bad value from a flag still fails after a good file. */
    const char *path = write_file("ok.json", "{\"listen\": \"127.0.0.1:5000\"}");
    const char *a15[] = {"--config", path, "--listen", "127.0.0.1:99999"};
    expect_flag_err(4, a15, "--listen: port must be a number 1..65535");
}

static void test_find(void)
{
    config_t *c =
        json_ok("{\"upstreams\": ["
                "{\"name\": \"registry-1.docker.io\", \"url\": \"https://registry-1.docker.io\"},"
                "{\"name\": \"ghcr.io\", \"url\": \"https://ghcr.io\"},"
                "{\"name\": \"127.0.0.1:5001\", \"url\": \"http://127.0.0.1:5001\"}]}");
    CHECK_STR(c->upstreams[0].name, "docker.io");
    CHECK(c->upstreams[0].dockerhub);
    const char *names[] = {"docker.io",
                           "DOCKER.IO",
                           "index.docker.io",
                           "Index.Docker.Io",
                           "registry-1.docker.io",
                           "REGISTRY-1.DOCKER.IO"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        CHECK(config_upstream_find(c, names[i], strlen(names[i])) == &c->upstreams[0]);
    CHECK(config_upstream_find(c, "GhCr.Io", 7) == &c->upstreams[1]);
    /* Not NUL-terminated: only len bytes count. */
    CHECK(config_upstream_find(c, "ghcr.io/owner/repo", 7) == &c->upstreams[1]);
    CHECK(config_upstream_find(c, "docker.io/library", 9) == &c->upstreams[0]);
    CHECK(config_upstream_find(c, "127.0.0.1:5001", 14) == &c->upstreams[2]);
    CHECK(config_upstream_find(c, "127.0.0.1:5002", 14) == NULL);
    CHECK(config_upstream_find(c, "ghcr.i", 6) == NULL);
    CHECK(config_upstream_find(c, "quay.io", 7) == NULL);
    CHECK(config_upstream_find(c, "", 0) == NULL);
    config_free(c);

    /* Without Docker Hub configured, its aliases find nothing. */
    c = json_ok("{\"upstreams\": [{\"name\": \"ghcr.io\", \"url\": \"https://ghcr.io\"}]}");
    CHECK(config_upstream_find(c, "index.docker.io", 15) == NULL);
    CHECK(config_upstream_find(c, "docker.io", 9) == NULL);
    config_free(c);
}

/* Port 0 asks the kernel for a free port (tests and the bench read the real one from the log);
 * an upstream never has port 0. */
static void test_listen_port_zero(void)
{
    char err[256];
    config_t *c = NULL;
    const char *a[] = {"--listen", "127.0.0.1:0"};
    CHECK_INT(config_load(&c, 2, (char **)a, err, sizeof err), 0);
    CHECK_INT(c->listen_port, 0);
    config_free(c);
    expect_url_err("http://127.0.0.1:0", "port must be a number 1..65535");
}

static void test_ipv6(void)
{
    config_t *c = json_ok("{\"listen\": \"[::1]:5000\", \"upstreams\": ["
                          "{\"name\": \"[::1]:5001\", \"url\": \"http://[::1]:5001/base/\"},"
                          "{\"name\": \"[2001:DB8::1]\", \"url\": \"https://[2001:db8::1]\"}]}");
    CHECK_STR(c->listen_host, "::1");
    CHECK_INT(c->listen_port, 5000);
    CHECK_STR(c->upstreams[0].name, "[::1]:5001");
    CHECK_STR(c->upstreams[0].host, "::1");
    CHECK_INT(c->upstreams[0].port, 5001);
    CHECK(!c->upstreams[0].tls);
    CHECK_STR(c->upstreams[0].base_path, "/base");
    CHECK_STR(c->upstreams[1].name, "[2001:db8::1]");
    CHECK_STR(c->upstreams[1].host, "2001:db8::1");
    CHECK_INT(c->upstreams[1].port, 443);
    CHECK(config_upstream_find(c, "[::1]:5001", 10) == &c->upstreams[0]);
    config_free(c);

    c = json_ok("{\"listen\": \"[::]:8080\"}");
    CHECK_STR(c->listen_host, "::");
    CHECK_INT(c->listen_port, 8080);
    config_free(c);
}

/* ---- TLS listener, upstream TLS and credentials (issue 3). ---- */

/* Like expect_json_err, and the message must not contain `secret`. */
static void expect_json_err_secret(const char *json, const char *want, const char *secret)
{
    config_t *c = (config_t *)1;
    char err[512] = "";
    int rc = config_from_json(&c, json, strlen(json), "t.json", err, sizeof err);
    if (rc != WE_CONFIG || !strstr(err, want) || strstr(err, secret)) {
        fprintf(stderr, "json: %s\nwant: %s\ngot rc=%d err: %s\n", json, want, rc, err);
        CHECK(0);
    }
    CHECK(c == NULL);
}

static void test_listeners(void)
{
    const char *cert = write_file("cert.pem", "-----BEGIN CERTIFICATE-----\n");
    const char *key = write_file("key.pem", "-----BEGIN PRIVATE KEY-----\n");
    char json[1024];
    config_t *c;

    c = json_ok("{}");
    CHECK(c->listen_enabled);
    CHECK(!c->tls_listen_enabled);
    CHECK(c->tls_listen_host == NULL && c->tls_cert == NULL && c->tls_key == NULL);
    CHECK_INT(c->upstream_max_redirects, 5);
    config_free(c);

    snprintf(json, sizeof json,
             "{\"tls_listen\": \"127.0.0.1:0\", \"tls_cert\": \"%s\", \"tls_key\": \"%s\"}", cert,
             key);
    c = json_ok(json);
    CHECK(c->listen_enabled);
    CHECK(c->tls_listen_enabled);
    CHECK_STR(c->tls_listen_host, "127.0.0.1");
    CHECK_INT(c->tls_listen_port, 0);
    CHECK_STR(c->tls_cert, cert);
    CHECK_STR(c->tls_key, key);
    config_free(c);

    /* TLS only: "listen" "" or null. */
    for (int i = 0; i < 2; i++) {
        snprintf(json, sizeof json,
                 "{\"listen\": %s, \"tls_listen\": \"[::1]:5443\", \"tls_cert\": \"%s\", "
                 "\"tls_key\": \"%s\"}",
                 i ? "null" : "\"\"", cert, key);
        c = json_ok(json);
        CHECK(!c->listen_enabled);
        CHECK(c->tls_listen_enabled);
        CHECK_STR(c->tls_listen_host, "::1");
        CHECK_INT(c->tls_listen_port, 5443);
        config_free(c);
    }
    /* A certificate without tls_listen is fine (the listener is just off). */
    snprintf(json, sizeof json, "{\"tls_listen\": \"\", \"tls_cert\": \"%s\"}", cert);
    c = json_ok(json);
    CHECK(!c->tls_listen_enabled);
    config_free(c);

    expect_json_err("{\"listen\": \"\"}", "t.json: listen: no listener");
    expect_json_err("{\"listen\": null, \"tls_listen\": null}", "listen: no listener");
    expect_json_err("{\"tls_listen\": \"127.0.0.1:5443\"}",
                    "t.json: tls_cert: missing: tls_listen needs tls_cert and tls_key");
    snprintf(json, sizeof json, "{\"tls_listen\": \"127.0.0.1:5443\", \"tls_cert\": \"%s\"}", cert);
    expect_json_err(json, "t.json: tls_key: missing");
    expect_json_err("{\"tls_listen\": \"localhost:5443\"}", "tls_listen: host must be an IP");
    expect_json_err("{\"tls_listen\": \"127.0.0.1\"}", "tls_listen: expected HOST:PORT");
    expect_json_err("{\"tls_listen\": 5443}", "tls_listen: expected a string");
    expect_json_err("{\"tls_cert\": \"/nonexistent/cert.pem\"}",
                    "tls_cert: cannot open /nonexistent/cert.pem: No such file or directory");
    expect_json_err("{\"tls_key\": \"/tmp\"}", "tls_key: /tmp is not a regular file");
    expect_json_err("{\"tls_key\": \"\"}", "tls_key: must not be empty");
    snprintf(json, sizeof json,
             "{\"listen\": \"127.0.0.1:5000\", \"tls_listen\": \"127.0.0.1:5000\", "
             "\"tls_cert\": \"%s\", \"tls_key\": \"%s\"}",
             cert, key);
    expect_json_err(json, "tls_listen: same address as listen");

    /* Flags; the whole-config checks run after them. */
    const char *a1[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key=", key};
    char keyflag[300];
    snprintf(keyflag, sizeof keyflag, "--tls-key=%s", key);
    a1[4] = keyflag;
    c = NULL;
    char err[512] = "";
    CHECK_INT(load(&c, err, sizeof err, 5, a1), 0);
    CHECK(c->tls_listen_enabled && c->listen_enabled);
    CHECK_STR(c->tls_key, key);
    config_free(c);
    const char *a2[] = {"--listen",  "", "--tls-listen=127.0.0.1:8443", "--tls-cert", cert,
                        "--tls-key", key};
    CHECK_INT(load(&c, err, sizeof err, 7, a2), 0);
    CHECK(!c->listen_enabled);
    CHECK_INT(c->tls_listen_port, 8443);
    config_free(c);
    const char *a3[] = {"--listen="};
    expect_flag_err(1, a3, "winch serve: listen: no listener");
    const char *a4[] = {"--tls-listen", "127.0.0.1:8443"};
    expect_flag_err(2, a4, "winch serve: tls_cert: missing");
    const char *a5[] = {"--tls-cert", "/nonexistent.pem"};
    expect_flag_err(2, a5, "--tls-cert: cannot open /nonexistent.pem");
    /* The file says tls_listen, a flag gives the missing key: fine. */
    snprintf(json, sizeof json, "{\"tls_listen\": \"127.0.0.1:0\", \"tls_cert\": \"%s\"}", cert);
    const char *path = write_file("tls.json", json);
    const char *a6[] = {"--config", path, "--tls-key", key};
    CHECK_INT(load(&c, err, sizeof err, 4, a6), 0);
    CHECK(c->tls_listen_enabled);
    config_free(c);
    const char *a7[] = {"--config", path};
    expect_flag_err(2, a7, "tls.json: tls_key: missing");

    /* upstream_max_redirects. */
    c = json_ok("{\"upstream_max_redirects\": 0}");
    CHECK_INT(c->upstream_max_redirects, 0);
    config_free(c);
    c = json_ok("{\"upstream_max_redirects\": 20}");
    CHECK_INT(c->upstream_max_redirects, 20);
    config_free(c);
    expect_json_err("{\"upstream_max_redirects\": 21}", "upstream_max_redirects: must be 0..20");
}

#define SECRET "TOPSECRET-7f3a"

static void test_upstream_tls_and_credentials(void)
{
    const char *ca = write_file("ca.pem", "-----BEGIN CERTIFICATE-----\n");
    const char *pw = write_file("pw", SECRET "\n");
    const char *pw_crlf = write_file("pw-crlf", SECRET "\r\n\n");
    const char *pw_plain = write_file("pw-plain", SECRET);
    const char *pw_empty = write_file("pw-empty", "");
    const char *pw_nl = write_file("pw-nl", "\n\r\n");
    const char *pw_nul = write_file("pw-nul", "ab");
    /* Make pw_nul really hold a NUL: "a\0b". */
    FILE *f = fopen(pw_nul, "w");
    CHECK(f != NULL);
    CHECK_INT(fwrite("a\0b\n", 1, 4, f), 4);
    fclose(f);
    static char big[4098];
    memset(big, 'x', 4096);
    big[4096] = '\0';
    const char *pw_max = write_file("pw-max", big);
    big[4096] = '\n'; /* 4096 bytes + newline: still fine, the newline is stripped... */
    big[4097] = '\0';
    const char *pw_max_nl = write_file("pw-max-nl", big);
    big[4096] = 'x'; /* ...but 4097 real bytes are too many. */
    const char *pw_big = write_file("pw-big", big);
    char json[2048];
    config_t *c;
#define UP(extra) "{\"upstreams\": [{\"name\": \"r.io\", \"url\": \"https://r.io\", " extra "}]}"

    snprintf(json, sizeof json,
             UP("\"ca_file\": \"%s\", \"username\": \"bob\", \"password_file\": \"%s\""), ca, pw);
    c = json_ok(json);
    const config_upstream_t *u = &c->upstreams[0];
    CHECK_STR(u->ca_file, ca);
    CHECK(!u->insecure_skip_verify);
    CHECK_STR(u->username, "bob");
    CHECK_STR(u->password, SECRET);
    CHECK_STR(u->password_file, pw);
    CHECK(u->password_env == NULL);
    config_free(c);

    const char *files_ok[] = {pw_crlf, pw_plain};
    for (int i = 0; i < 2; i++) {
        snprintf(json, sizeof json, UP("\"username\": \"bob\", \"password_file\": \"%s\""),
                 files_ok[i]);
        c = json_ok(json);
        CHECK_STR(c->upstreams[0].password, SECRET);
        config_free(c);
    }
    snprintf(json, sizeof json, UP("\"username\": \"bob\", \"password_file\": \"%s\""), pw_max);
    c = json_ok(json);
    CHECK_INT(strlen(c->upstreams[0].password), 4096);
    config_free(c);
    snprintf(json, sizeof json, UP("\"username\": \"bob\", \"password_file\": \"%s\""), pw_max_nl);
    expect_json_err(json, "is larger than 4096 bytes"); /* the bound counts the raw file */
    snprintf(json, sizeof json, UP("\"username\": \"bob\", \"password_file\": \"%s\""), pw_big);
    expect_json_err(json, "upstreams[0].password_file: ");
    snprintf(json, sizeof json, UP("\"username\": \"bob\", \"password_file\": \"%s\""), pw_empty);
    expect_json_err(json, "upstreams[0].password_file: ");
    expect_json_err(json, "is empty");
    snprintf(json, sizeof json, UP("\"username\": \"bob\", \"password_file\": \"%s\""), pw_nl);
    expect_json_err(json, "is empty");
    snprintf(json, sizeof json, UP("\"username\": \"bob\", \"password_file\": \"%s\""), pw_nul);
    expect_json_err(json, "contains a NUL byte");
    expect_json_err(UP("\"username\": \"bob\", \"password_file\": \"/nonexistent/pw\""),
                    "upstreams[0].password_file: cannot open /nonexistent/pw: No such file");
    expect_json_err(UP("\"username\": \"bob\", \"password_file\": \"\""),
                    "password_file: must not be empty");

    /* From the environment. */
    setenv("WINCH_TEST_PW", SECRET, 1);
    setenv("WINCH_TEST_EMPTY", "", 1);
    unsetenv("WINCH_TEST_UNSET");
    c = json_ok(UP("\"username\": \"bob\", \"password_env\": \"WINCH_TEST_PW\""));
    CHECK_STR(c->upstreams[0].password, SECRET);
    CHECK_STR(c->upstreams[0].password_env, "WINCH_TEST_PW");
    CHECK(c->upstreams[0].password_file == NULL);
    config_free(c);
    expect_json_err(UP("\"username\": \"bob\", \"password_env\": \"WINCH_TEST_UNSET\""),
                    "upstreams[0].password_env: environment variable WINCH_TEST_UNSET is not set");
    expect_json_err(UP("\"username\": \"bob\", \"password_env\": \"WINCH_TEST_EMPTY\""),
                    "environment variable WINCH_TEST_EMPTY is empty");
    expect_json_err(UP("\"username\": \"bob\", \"password_env\": \"1BAD\""),
                    "password_env: \"1BAD\" is not an environment variable name");
    expect_json_err(UP("\"username\": \"bob\", \"password_env\": \"\""),
                    "password_env: must not be empty");

    /* Combinations; the password never shows up in a message. */
    snprintf(json, sizeof json,
             UP("\"username\": \"bob\", \"password_file\": \"%s\", \"password_env\": "
                "\"WINCH_TEST_PW\""),
             pw);
    expect_json_err_secret(json,
                           "upstreams[0].password_env: give either password_file or "
                           "password_env, not both",
                           SECRET);
    expect_json_err_secret(UP("\"username\": \"bob\""),
                           "upstreams[0].username: is set but there is no password", SECRET);
    snprintf(json, sizeof json, UP("\"password_file\": \"%s\""), pw);
    expect_json_err_secret(json, "upstreams[0].password_file: is set but username is not", SECRET);
    expect_json_err_secret(UP("\"password_env\": \"WINCH_TEST_PW\""),
                           "upstreams[0].password_env: is set but username is not", SECRET);
    snprintf(json, sizeof json, UP("\"username\": \"bo:b\", \"password_file\": \"%s\""), pw);
    expect_json_err_secret(json, "username: \"bo:b\" must not contain ':'", SECRET);
    expect_json_err_secret(UP("\"username\": \"\", \"password_env\": \"WINCH_TEST_PW\""),
                           "username: must not be empty", SECRET);
    expect_json_err_secret(UP("\"username\": \"b\\nob\", \"password_env\": \"WINCH_TEST_PW\""),
                           "username: must not contain control characters", SECRET);
    expect_json_err_secret(UP("\"username\": \"bob\", \"password\": \"" SECRET "\""),
                           "upstreams[0].password: not supported", SECRET);
    /* A later field fails after the password was read: still not echoed. */
    expect_json_err_secret(UP("\"username\": \"bob\", \"password_env\": \"WINCH_TEST_PW\"}, "
                              "{\"name\": \"r.io\", \"url\": \"https://r.io\""),
                           "duplicate upstream", SECRET);

    /* TLS fields. */
    c = json_ok(UP("\"insecure_skip_verify\": true"));
    CHECK(c->upstreams[0].insecure_skip_verify);
    CHECK(c->upstreams[0].ca_file == NULL);
    config_free(c);
    c = json_ok(UP("\"insecure_skip_verify\": false"));
    CHECK(!c->upstreams[0].insecure_skip_verify);
    config_free(c);
    expect_json_err(UP("\"insecure_skip_verify\": \"yes\""),
                    "upstreams[0].insecure_skip_verify: expected true or false, got a string");
    snprintf(json, sizeof json, UP("\"insecure_skip_verify\": true, \"ca_file\": \"%s\""), ca);
    expect_json_err(json, "upstreams[0].insecure_skip_verify: true contradicts ca_file");
    expect_json_err(UP("\"ca_file\": \"/nonexistent/ca.pem\""),
                    "upstreams[0].ca_file: cannot open /nonexistent/ca.pem");
    expect_json_err(UP("\"ca_file\": 1"), "upstreams[0].ca_file: expected a string");
    expect_json_err(UP("\"bogus\": 1"), "upstreams[0].bogus: unknown field");

    /* Replacing the list with --upstream frees (and wipes) what the file had. */
    snprintf(json, sizeof json,
             UP("\"ca_file\": \"%s\", \"username\": \"bob\", \"password_file\": \"%s\""), ca, pw);
    const char *path = write_file("creds.json", json);
    const char *a1[] = {"--config", path, "--upstream", "x.io=https://x.io"};
    char err[512];
    CHECK_INT(load(&c, err, sizeof err, 4, a1), 0);
    CHECK_INT(c->n_upstreams, 1);
    CHECK(c->upstreams[0].username == NULL && c->upstreams[0].password == NULL);
    config_free(c);
#undef UP
}

static void test_small_err_buffer(void)
{
    /* A short buffer truncates, never overflows; NULL is allowed. */
    config_t *c = (config_t *)1;
    char err[8];
    memset(err, 'x', sizeof err);
    CHECK_INT(config_from_json(&c, "{\"bogus\": 1}", 12, "t.json", err, sizeof err), WE_CONFIG);
    CHECK(memchr(err, '\0', sizeof err) != NULL);
    CHECK_INT(config_from_json(&c, "{\"bogus\": 1}", 12, "t.json", NULL, 0), WE_CONFIG);
    CHECK_INT(config_from_json(&c, "{", 1, "t.json", NULL, 0), WE_CONFIG);
}

/* Paths are echoed in messages (which file could not be opened), and a path from the file may
 * hold any byte: the message stays one printable line, with '?' for the odd bytes. */
static void expect_printable_err(const char *json, const char *want)
{
    config_t *c = (config_t *)1;
    char err[512] = "";
    CHECK_INT(config_from_json(&c, json, strlen(json), "t.json", err, sizeof err), WE_CONFIG);
    CHECK(c == NULL);
    if (!strstr(err, want)) {
        fprintf(stderr, "want: %s\ngot: %s\n", want, err);
        CHECK(0);
    }
    for (const char *p = err; *p; p++)
        CHECK((unsigned char)*p >= 0x20 && (unsigned char)*p != 0x7f);
}

static void test_paths_in_messages(void)
{
    char json[1024], want[512], dir[300];
    expect_printable_err("{\"tls_cert\": \"/nonexistent/a\\nb\\u007f\"}",
                         "t.json: tls_cert: cannot open /nonexistent/a?b?: No such file");

    snprintf(dir, sizeof dir, "%s/d\x01ir", tmpdir);
    CHECK_INT(mkdir(dir, 0700), 0);
    snprintf(json, sizeof json, "{\"tls_key\": \"%s/d\\u0001ir\"}", tmpdir);
    snprintf(want, sizeof want, "tls_key: %s/d?ir is not a regular file", tmpdir);
    expect_printable_err(json, want);

    const char *pw = write_file("pw\x1b", "\n");
    snprintf(json, sizeof json,
             "{\"upstreams\": [{\"name\": \"r.io\", \"url\": \"https://r.io\", "
             "\"username\": \"u\", \"password_file\": \"%s/pw\\u001b\"}]}",
             tmpdir);
    snprintf(want, sizeof want, "upstreams[0].password_file: %s/pw? is empty", tmpdir);
    expect_printable_err(json, want);
    (void)pw;

    snprintf(json, sizeof json,
             "{\"upstreams\": [{\"name\": \"r.io\", \"url\": \"https://r.io\", "
             "\"ca_file\": \"/nonexistent/\\tca\"}]}");
    expect_printable_err(json, "upstreams[0].ca_file: cannot open /nonexistent/?ca: No such");
}

static const test_case_t cases[] = {
    TEST_CASE(test_defaults),
    TEST_CASE(test_file_and_flags),
    TEST_CASE(test_syntax_errors),
    TEST_CASE(test_field_errors),
    TEST_CASE(test_upstream_errors),
    TEST_CASE(test_flag_errors),
    TEST_CASE(test_find),
    TEST_CASE(test_listen_port_zero),
    TEST_CASE(test_ipv6),
    TEST_CASE(test_listeners),
    TEST_CASE(test_upstream_tls_and_credentials),
    TEST_CASE(test_small_err_buffer),
    TEST_CASE(test_paths_in_messages),
};

int main(int argc, char **argv)
{
    tmpdir = test_tmpdir("winch-test-config");
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
