/* Configuration parsing (config/config.h): config_from_json over arbitrary bytes. An accepted
 * configuration must satisfy what config.h promises the rest of winch (at least one listener,
 * 1..32 upstreams with unique lowercase names that config_upstream_find finds, ports and
 * bounds in range); a refused one must come with a one-line message naming the origin.
 *
 * Paths in the input are real paths: the parser checks that files exist, so inputs may name
 * files on this machine (it only opens them read-only and non-blocking). */
#include <errno.h>

#include "common/err.h"
#include "config/config.h"
#include "fuzz.h"

static void check_upstream(const config_t *c, size_t i)
{
    const config_upstream_t *u = &c->upstreams[i];
    FUZZ_CHECK(u->name && u->name[0] && u->url && u->host && u->host[0] && u->base_path);
    for (const char *p = u->name; *p; p++)
        FUZZ_CHECK(!(*p >= 'A' && *p <= 'Z'));
    FUZZ_CHECK(config_upstream_find(c, u->name, strlen(u->name)) == u);
    FUZZ_CHECK(u->port != 0);
    FUZZ_CHECK(u->dockerhub == (strcmp(u->name, "docker.io") == 0));
    FUZZ_CHECK(!(u->insecure_skip_verify && u->ca_file));
    FUZZ_CHECK(!u->username == !u->password); /* credentials come in pairs */
    if (u->password)
        FUZZ_CHECK(!u->password_file != !u->password_env);
    size_t bl = strlen(u->base_path);
    FUZZ_CHECK(bl == 0 || u->base_path[bl - 1] != '/');
    for (size_t j = 0; j < i; j++)
        FUZZ_CHECK(strcmp(c->upstreams[j].name, u->name) != 0);
}

/* The "auth" section: what proxy/access.c relies on. */
static void check_auth(const config_t *c)
{
    const config_auth_t *a = c->auth;
    if (!a)
        return;
    FUZZ_CHECK(a->realm && a->realm[0] && !strpbrk(a->realm, "\"\\"));
    FUZZ_CHECK(a->htpasswd || a->client_ca);
    FUZZ_CHECK(!a->require_client_cert || a->client_ca);
    FUZZ_CHECK(!a->client_ca || c->tls_listen_enabled);
    FUZZ_CHECK(a->max_failures >= 1 && a->failure_window_s >= 1);
    for (size_t i = 0; i < a->n_rules; i++) {
        FUZZ_CHECK(a->rules[i].match && a->rules[i].match[0]);
        for (size_t k = 0; k < a->rules[i].n_groups; k++)
            FUZZ_CHECK(a->rules[i].groups[k] < a->n_groups);
        for (size_t k = 0; k < a->rules[i].n_users; k++)
            FUZZ_CHECK(a->rules[i].users[k][0] && !strchr(a->rules[i].users[k], ':'));
    }
}

static void check_ok(const config_t *c)
{
    FUZZ_CHECK(c->listen_enabled || c->tls_listen_enabled);
    FUZZ_CHECK(!c->listen_enabled || c->listen_host);
    if (c->tls_listen_enabled)
        FUZZ_CHECK(c->tls_listen_host && c->tls_cert && c->tls_key);
    FUZZ_CHECK(c->cache_dir && c->cache_dir[0] && c->log_level);
    FUZZ_CHECK(c->n_upstreams >= 1 && c->n_upstreams <= CONFIG_MAX_UPSTREAMS);
    for (size_t i = 0; i < c->n_upstreams; i++)
        check_upstream(c, i);
    FUZZ_CHECK(c->upstream_connect_timeout_ms >= 1 && c->upstream_max_conns >= 1);
    FUZZ_CHECK(c->max_header_bytes >= 1024 && c->max_header_bytes <= 1024 * 1024);
    FUZZ_CHECK(c->max_manifest_bytes >= 1024 && c->index_map_size >= 1024 * 1024);
    check_auth(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *json = malloc(size ? size : 1);
    FUZZ_CHECK(json != NULL);
    memcpy(json, data, size);
    config_t *c = NULL;
    char err[512];
    err[0] = '\0';
    int rc = config_from_json(&c, json, size, "fuzz.json", err, sizeof err);
    if (rc == 0) {
        FUZZ_CHECK(c != NULL);
        check_ok(c);
        config_free(c);
    } else {
        FUZZ_CHECK(rc == WE_CONFIG || rc == -ENOMEM);
        FUZZ_CHECK(c == NULL);
        FUZZ_CHECK(strncmp(err, "fuzz.json", 9) == 0);
        /* Messages are one line: nothing from the input may break it. */
        if (!fuzz_printable_line(err))
            fprintf(stderr, "message: %s\n", err);
        FUZZ_CHECK(fuzz_printable_line(err));
    }
    free(json);
    return 0;
}
