/* The effective configuration as JSON (`winch check-config`): every field with the value winch
 * runs with, defaults included. Secrets never appear: an upstream's password is shown only as
 * where it comes from (password_file, password_env); file paths (htpasswd, TLS key) are not
 * secrets and are shown. */
#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config/config.h"
#include "config/internal.h"

/* jansson's setters take the reference; a NULL value (allocation failure) is ignored by them. */
static void put(json_t *o, const char *k, json_t *v)
{
    json_object_set_new(o, k, v);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *strings(char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *platforms(const platform_t *p, size_t n)
{
    json_t *a = json_array();
    char buf[128];
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(platform_format(&p[i], buf, sizeof buf)));
    return a;
}

static json_t *upstream_json(const config_upstream_t *u)
{
    json_t *o = json_object();
    put(o, "name", json_string(u->name));
    put(o, "url", json_string(u->url));
    put(o, "ca_file", str_or_null(u->ca_file));
    put(o, "insecure_skip_verify", json_boolean(u->insecure_skip_verify));
    put(o, "username", str_or_null(u->username));
    /* The password itself never: only where it is read from. */
    put(o, "password_file", str_or_null(u->password_file));
    put(o, "password_env", str_or_null(u->password_env));
    if (u->password)
        put(o, "password", json_string("(redacted)"));
    put(o, "allow_redirect_hosts", strings(u->allow_redirect_hosts, u->n_allow_redirect_hosts));
    put(o, "blob_scope",
        json_string(u->blob_scope == BLOB_SCOPE_REPOSITORY ? "repository" : "global"));
    put(o, "pass_ns", json_boolean(u->pass_ns));
    return o;
}

static json_t *rule_json(const config_policy_rule_t *r)
{
    json_t *o = json_object();
    put(o, "match", json_string(r->match));
    put(o, "allow", json_boolean(!r->deny));
    put(o, "deny_tags", strings(r->deny_tags, r->n_deny_tags));
    put(o, "require_digest", json_boolean(r->require_digest));
    json_t *pins = json_object();
    for (size_t i = 0; i < r->n_pins; i++)
        json_object_set_new(pins, r->pins[i].tag, json_string(r->pins[i].digest));
    put(o, "pins", pins);
    put(o, "soak_s", json_integer(r->soak_s));
    put(o, "freeze", json_boolean(r->freeze));
    put(o, "max_image_bytes", json_integer((json_int_t)r->max_image_bytes));
    put(o, "max_image_age_days", json_integer(r->max_image_age_days));
    put(o, "audit", json_boolean(r->audit));
    put(o, "message", str_or_null(r->message));
    return o;
}

static json_t *auth_json(const config_auth_t *a)
{
    json_t *o = json_object();
    put(o, "htpasswd", str_or_null(a->htpasswd));
    put(o, "realm", str_or_null(a->realm));
    put(o, "client_ca", str_or_null(a->client_ca));
    put(o, "require_client_cert", json_boolean(a->require_client_cert));
    put(o, "challenge", json_string(a->bearer ? "bearer" : "basic"));
    put(o, "token_ttl_s", json_integer(a->token_ttl_s));
    put(o, "token_realm", str_or_null(a->token_realm));
    put(o, "verify_cache_ttl_s", json_integer(a->verify_cache_ttl_s));
    put(o, "max_failures", json_integer(a->max_failures));
    put(o, "failure_window_s", json_integer(a->failure_window_s));
    json_t *groups = json_object();
    for (size_t i = 0; i < a->n_groups; i++)
        json_object_set_new(groups, a->groups[i].name,
                            strings(a->groups[i].members, a->groups[i].n_members));
    put(o, "groups", groups);
    json_t *rules = json_array();
    for (size_t i = 0; i < a->n_rules; i++) {
        const config_access_rule_t *r = &a->rules[i];
        json_t *ro = json_object();
        put(ro, "match", json_string(r->match));
        put(ro, "anonymous", json_boolean(r->anonymous));
        put(ro, "authenticated", json_boolean(r->authenticated));
        put(ro, "users", strings(r->users, r->n_users));
        json_t *g = json_array();
        for (size_t j = 0; j < r->n_groups; j++)
            json_array_append_new(g, json_string(a->groups[r->groups[j]].name));
        put(ro, "groups", g);
        json_array_append_new(rules, ro);
    }
    put(o, "access", rules);
    return o;
}

static json_t *platforms_json(const config_t *c)
{
    json_t *a = json_array();
    for (size_t i = 0; i < c->n_platform_rules; i++) {
        const config_platform_rule_t *r = &c->platform_rules[i];
        json_t *o = json_object();
        put(o, "match", json_string(r->match));
        put(o, "platforms", platforms(r->platforms, r->n_platforms));
        put(o, "prefetch", json_boolean(r->prefetch));
        put(o, "attestations", json_boolean(r->attestations));
        put(o, "filter", json_boolean(r->filter));
        put(o, "restrict", json_boolean(r->restrict_));
        json_array_append_new(a, o);
    }
    return a;
}

static void cidr_format(const config_cidr_t *c, char *buf, size_t cap)
{
    char a[INET6_ADDRSTRLEN];
    if (!inet_ntop(c->v6 ? AF_INET6 : AF_INET, c->addr, a, sizeof a))
        snprintf(a, sizeof a, "?");
    snprintf(buf, cap, "%s/%u", a, (unsigned)c->prefix);
}

static json_t *cidrs_json(const config_cidr_t *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        char buf[80];
        cidr_format(&v[i], buf, sizeof buf);
        json_array_append_new(a, json_string(buf));
    }
    return a;
}

static json_t *listen_json(bool on, const char *host, uint16_t port)
{
    if (!on)
        return json_null();
    char buf[320];
    snprintf(buf, sizeof buf, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, (unsigned)port);
    return json_string(buf);
}

static json_t *groups_json(const config_t *c)
{
    json_t *a = json_array();
    for (size_t i = 0; i < c->n_client_groups; i++) {
        const config_client_group_t *g = &c->client_groups[i];
        json_t *o = json_object();
        put(o, "name", json_string(g->name));
        put(o, "cidrs", cidrs_json(g->cidrs, g->n_cidrs));
        put(o, "path_prefix", str_or_null(g->path_prefix));
        put(o, "listen", listen_json(g->listen_host != NULL, g->listen_host, g->listen_port));
        put(o, "platforms", platforms(g->platforms, g->n_platforms));
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *retention_json(const config_t *c)
{
    json_t *o = json_object();
    char buf[32];
    if (c->retention_max_size_pct) {
        snprintf(buf, sizeof buf, "%u%%", c->retention_max_size_pct);
        put(o, "max_size", json_string(buf));
    } else {
        put(o, "max_size", json_integer((json_int_t)c->retention_max_size));
    }
    snprintf(buf, sizeof buf, "%u%%", c->retention_low_watermark_pct);
    put(o, "low_watermark", json_string(buf));
    put(o, "max_unused", json_integer((json_int_t)c->retention_max_unused_s)); /* seconds */
    put(o, "protect", strings(c->retention_protect, c->retention_nprotect));
    return o;
}

static json_t *config_json(const config_t *c)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    put(o, "listen", listen_json(c->listen_enabled, c->listen_host, c->listen_port));
    put(o, "tls_listen",
        listen_json(c->tls_listen_enabled, c->tls_listen_host, c->tls_listen_port));
    put(o, "tls_cert", str_or_null(c->tls_cert));
    put(o, "tls_key", str_or_null(c->tls_key));
    put(o, "cache_dir", json_string(c->cache_dir));
    put(o, "log_level", json_string(c->log_level));
    put(o, "log_format", json_string(c->log_json ? "json" : "text"));
    json_t *ups = json_array();
    for (size_t i = 0; i < c->n_upstreams; i++)
        json_array_append_new(ups, upstream_json(&c->upstreams[i]));
    put(o, "upstreams", ups);
    for (size_t i = 0;; i++) {
        const int_field_t *f = config_int_field_at(i);
        if (!f)
            break;
        const char *base = (const char *)c + f->off;
        uint64_t v = f->wide ? *(const uint64_t *)(const void *)base
                             : *(const uint32_t *)(const void *)base;
        put(o, f->name, json_integer((json_int_t)v));
    }
    put(o, "fill_splice", json_boolean(c->fill_splice));
    put(o, "retention", retention_json(c));
    put(o, "on_disk_full", json_string(c->disk_full_pass_through ? "pass_through" : "fail"));
    json_t *pol = json_array();
    for (size_t i = 0; i < c->n_policy; i++)
        json_array_append_new(pol, rule_json(&c->policy[i]));
    put(o, "policy", pol);
    put(o, "auth", c->auth ? auth_json(c->auth) : json_null());
    if (c->admin_listen_enabled && c->admin_listen_host) {
        char a[300];
        snprintf(a, sizeof a, strchr(c->admin_listen_host, ':') ? "[%s]:%u" : "%s:%u",
                 c->admin_listen_host, (unsigned)c->admin_listen_port);
        put(o, "admin_listen", json_string(a));
    } else {
        put(o, "admin_listen", json_null());
    }
    put(o, "public_metrics", json_boolean(c->public_metrics));
    put(o, "node_name", json_string(c->node_name));
    put(o, "trusted_proxies", cidrs_json(c->trusted_proxies, c->n_trusted_proxies));
    put(o, "platforms", platforms_json(c));
    put(o, "client_groups", groups_json(c));
    return o;
}

char *config_dump_json(const config_t *c)
{
    json_t *o = config_json(c);
    if (!o)
        return NULL;
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

bool config_same_upstreams_but_credentials(const config_t *a, const config_t *b)
{
    static const char *const creds[] = {"username", "password", "password_file", "password_env"};
    json_t *x = config_json(a), *y = config_json(b);
    json_t *ux = x ? json_object_get(x, "upstreams") : NULL;
    json_t *uy = y ? json_object_get(y, "upstreams") : NULL;
    bool same = false;
    if (ux && uy && json_array_size(ux) == json_array_size(uy)) {
        for (size_t i = 0; i < json_array_size(ux); i++) {
            for (size_t k = 0; k < sizeof creds / sizeof creds[0]; k++) {
                json_object_del(json_array_get(ux, i), creds[k]);
                json_object_del(json_array_get(uy, i), creds[k]);
            }
        }
        same = json_equal(ux, uy);
    }
    json_decref(x);
    json_decref(y);
    return same;
}

bool config_same_field(const config_t *a, const config_t *b, const char *field)
{
    json_t *x = config_json(a), *y = config_json(b);
    bool same = x && y && json_equal(json_object_get(x, field), json_object_get(y, field));
    json_decref(x);
    json_decref(y);
    return same;
}
