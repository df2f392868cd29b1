/* SIGHUP reload: what changes in place, what is swapped, what is kept (reload.h). */
#include "proxy/reload.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "policy/policy.h"

/* A superseded configuration: after the swap it holds the arrays the live config used before,
 * which calls in flight may still point into, and the policy compiled over them. */
typedef struct husk {
    config_t *cfg;
    policy_t *policy;
} husk_t;

struct reloader {
    config_t *live;
    app_t *app;
    int argc;
    char **argv;
    husk_t kept[RELOAD_MAX_KEPT];
    size_t n_kept;
};

int reloader_create(reloader_t **out, config_t *live, app_t *app, int argc, char **argv)
{
    reloader_t *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->live = live;
    r->app = app;
    r->argc = argc;
    r->argv = argv;
    *out = r;
    return 0;
}

/* The fields that need a restart: a difference is logged and the running value kept. Compared
 * by their effective JSON form (config_dump.c), so every sub-field counts. */
static const char *const fixed_fields[] = {
    "listen",
    "tls_listen",
    "tls_cert",
    "tls_key",
    "cache_dir",
    "index_map_size",
    "auth",
    "client_header_timeout_ms",
    "client_idle_timeout_ms",
    "max_connections",
    "max_connections_per_client",
    "max_header_bytes",
    "upstream_max_conns",
    "on_disk_full",
    "admin_listen",
    "public_metrics",
    "node_name",
};

static size_t report_fixed(const config_t *live, const config_t *next)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof fixed_fields / sizeof fixed_fields[0]; i++) {
        if (!config_same_field(live, next, fixed_fields[i])) {
            LOG_WARN("reload: %s changed in the file but needs a restart: the running value is "
                     "kept",
                     fixed_fields[i]);
            n++;
        }
    }
    if (live->retention_max_size != next->retention_max_size ||
        live->retention_max_size_pct != next->retention_max_size_pct) {
        LOG_WARN("reload: retention.max_size changed in the file but needs a restart: the "
                 "running value is kept");
        n++;
    }
    return n;
}

#define SWAP(a, b)                                                                                 \
    do {                                                                                           \
        __typeof__(a) t_ = (a);                                                                    \
        (a) = (b);                                                                                 \
        (b) = t_;                                                                                  \
    } while (0)

/* Scalars every reader takes from the live config when it uses them: written in place. */
static void apply_scalars(config_t *live, const config_t *n)
{
    live->upstream_connect_timeout_ms = n->upstream_connect_timeout_ms;
    live->upstream_response_timeout_ms = n->upstream_response_timeout_ms;
    live->upstream_idle_timeout_ms = n->upstream_idle_timeout_ms;
    live->upstream_keepalive_ms = n->upstream_keepalive_ms;
    live->upstream_max_redirects = n->upstream_max_redirects;
    live->upstream_max_queue = n->upstream_max_queue;
    live->upstream_queue_timeout_ms = n->upstream_queue_timeout_ms;
    live->upstream_fetch_deadline_ms = n->upstream_fetch_deadline_ms;
    live->negative_ttl_s = n->negative_ttl_s;
    live->tag_ttl_s = n->tag_ttl_s;
    live->tag_revalidate_wait_ms = n->tag_revalidate_wait_ms;
    live->upstream_failure_threshold = n->upstream_failure_threshold;
    live->upstream_probe_interval_ms = n->upstream_probe_interval_ms;
    live->range_verify_max_bytes = n->range_verify_max_bytes;
    live->max_blob_bytes = n->max_blob_bytes;
    live->fill_splice = n->fill_splice;
    live->max_manifest_bytes = n->max_manifest_bytes;
    live->max_tags_list_bytes = n->max_tags_list_bytes;
    live->prefetch_max_concurrent = n->prefetch_max_concurrent;
    live->prefetch_max_per_upstream = n->prefetch_max_per_upstream;
    live->prefetch_max_queue = n->prefetch_max_queue;
    live->retention_low_watermark_pct = n->retention_low_watermark_pct;
    live->retention_max_unused_s = n->retention_max_unused_s;
    live->log_json = n->log_json;
}

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Upstreams: fixed, except their credentials, which are swapped in (the file's password is
 * read again at every reload, so a rotated secret in the same file counts as a change) and
 * whose earned tokens are dropped. Returns the number of fields kept until restart (0 or 1). */
static size_t reload_upstreams(reloader_t *r, config_t *n)
{
    config_t *live = r->live;
    if (!config_same_upstreams_but_credentials(live, n)) {
        LOG_WARN("reload: upstreams changed in the file but needs a restart: the running value "
                 "is kept (only credentials change in place)");
        return 1;
    }
    for (size_t i = 0; i < live->n_upstreams; i++) {
        config_upstream_t *a = &live->upstreams[i], *b = &n->upstreams[i];
        if (same_str(a->username, b->username) && same_str(a->password, b->password) &&
            same_str(a->password_file, b->password_file) &&
            same_str(a->password_env, b->password_env))
            continue;
        SWAP(a->username, b->username);
        SWAP(a->password, b->password);
        SWAP(a->password_file, b->password_file);
        SWAP(a->password_env, b->password_env);
        app_credentials_changed(r->app, i);
        LOG_INFO("reload: upstream %s: new credentials%s; its cached tokens are dropped", a->name,
                 a->username ? "" : " (none: anonymous from now on)");
    }
    return 0;
}

/* Arrays and strings: swapped, so the live config points at the new ones and the husk keeps
 * the old ones alive for whoever still borrows them. */
static void swap_arrays(config_t *live, config_t *n)
{
    SWAP(live->log_level, n->log_level);
    SWAP(live->policy, n->policy);
    SWAP(live->n_policy, n->n_policy);
    SWAP(live->platform_rules, n->platform_rules);
    SWAP(live->n_platform_rules, n->n_platform_rules);
    SWAP(live->client_groups, n->client_groups);
    SWAP(live->n_client_groups, n->n_client_groups);
    SWAP(live->retention_protect, n->retention_protect);
    SWAP(live->retention_nprotect, n->retention_nprotect);
    SWAP(live->trusted_proxies, n->trusted_proxies);
    SWAP(live->n_trusted_proxies, n->n_trusted_proxies);
}

void reloader_run(reloader_t *r)
{
    char err[512];
    config_t *next = NULL;
    policy_t *pol = NULL;
    if (r->n_kept >= RELOAD_MAX_KEPT) {
        LOG_ERROR("reload refused: %d reloads already applied in this process (each keeps the "
                  "configuration it replaced until exit); restart winch to apply more",
                  RELOAD_MAX_KEPT);
        return;
    }
    LOG_INFO("SIGHUP: reloading the configuration");
    if (config_load(&next, r->argc, r->argv, err, sizeof err) < 0 ||
        policy_create(&pol, next, err, sizeof err) < 0) {
        LOG_ERROR("reload refused: %s; the running configuration stays", err);
        config_free(next);
        return;
    }
    size_t kept = report_fixed(r->live, next) + reload_upstreams(r, next);
    apply_scalars(r->live, next);
    /* pol's rules point into next->policy's array, which the swap hands to the live config. */
    swap_arrays(r->live, next);
    kept += app_groups_reloaded(r->app);
    log_set_level(log_level_parse(r->live->log_level));
    policy_t *old = app_set_policy(r->app, pol);
    r->kept[r->n_kept++] = (husk_t){.cfg = next, .policy = old};
    LOG_INFO("reload: configuration applied (log level %s, tag_ttl_s %u, %zu policy rules, %zu "
             "platform rules, %zu client groups, %zu trusted proxies; %zu field%s kept until "
             "restart)",
             r->live->log_level, r->live->tag_ttl_s, r->live->n_policy, r->live->n_platform_rules,
             r->live->n_client_groups, r->live->n_trusted_proxies, kept, kept == 1 ? "" : "s");
}

void reloader_free(reloader_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_kept; i++) {
        policy_free(r->kept[i].policy);
        config_free(r->kept[i].cfg);
    }
    free(r);
}
