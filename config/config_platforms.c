/* The "platforms" rules and "client_groups" (README, "Platforms"). Every field is validated
 * here with a message naming it (platforms[2].platforms[1], client_groups[0].cidrs[3]);
 * unknown fields, wrong types, bad platforms, duplicate platforms after normalisation
 * ("linux/arm64/v8" is "linux/arm64"), fields that could never take effect, groups that match
 * no client and overlapping group prefixes all stop winch at start. */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/glob.h"
#include "config/internal.h"

static const char rule_fields[] = "match, platforms, prefetch, attestations, filter, restrict";
static const char group_fields[] = "name, cidrs, path_prefix, listen, platforms";

/* "platforms": a non-empty array of distinct platforms, into *out (malloc'd). */
static int parse_platform_list(const diag_t *d, const char *base, const json_t *v, platform_t **out,
                               size_t *n_out)
{
    char field[160], q[80], a[PLATFORM_STR_MAX];
    snprintf(field, sizeof field, "%s.platforms", base);
    if (!json_is_array(v))
        return diag_fail(d, field,
                         "expected an array of platforms (e.g. [\"linux/amd64\"]), got %s",
                         config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n == 0)
        return diag_fail(d, field, "must list at least one platform");
    if (n > CONFIG_MAX_PLATFORMS)
        return diag_fail(d, field, "at most %d platforms", CONFIG_MAX_PLATFORMS);
    platform_t *ps = calloc(n, sizeof *ps);
    if (!ps)
        return diag_oom(d);
    *out = ps;
    for (size_t i = 0; i < n; i++) {
        const char *s = NULL, *why = NULL;
        snprintf(field, sizeof field, "%s.platforms[%zu]", base, i);
        int rc = config_want_str(d, field, json_array_get(v, i), &s);
        if (rc < 0)
            return rc;
        if (platform_parse(s, strlen(s), &ps[i], &why) != 0)
            return diag_fail(d, field, "%s is not a platform: %s",
                             diag_quote(q, sizeof q, s, strlen(s)), why);
        if (platform_in(ps, i, &ps[i]))
            return diag_fail(d, field, "%s is listed twice (as %s)",
                             diag_quote(q, sizeof q, s, strlen(s)),
                             platform_format(&ps[i], a, sizeof a));
        *n_out = i + 1;
    }
    return 0;
}

/* A name is UPSTREAM/REPOSITORY: a one-component pattern other than ** matches nothing. */
static const char *match_problem(const char *m)
{
    if (!strchr(m, '/') && strcmp(m, "**") != 0)
        return "matches no repository (names are UPSTREAM/REPOSITORY; "
               "e.g. docker.io/** for all of an upstream)";
    return NULL;
}

static int parse_rule(config_platform_rule_t *out, const diag_t *d, size_t idx, const json_t *v)
{
    char rule[40], field[160], q[80];
    snprintf(rule, sizeof rule, "platforms[%zu]", idx);
    if (!json_is_object(v))
        return diag_fail(d, rule,
                         "expected an object {\"match\": ..., \"platforms\": [...]}, got %s",
                         config_json_type_name(v));
    const char *key, *match = NULL;
    const json_t *val, *plist = NULL;
    int rc = 0;
    json_object_foreach((json_t *)v, key, val)
    {
        config_field_path(field, sizeof field, rule, key);
        if (strcmp(key, "match") == 0)
            rc = config_want_str(d, field, val, &match);
        else if (strcmp(key, "platforms") == 0)
            plist = val;
        else if (strcmp(key, "prefetch") == 0)
            rc = config_want_bool(d, field, val, &out->prefetch);
        else if (strcmp(key, "attestations") == 0)
            rc = config_want_bool(d, field, val, &out->attestations);
        else if (strcmp(key, "filter") == 0)
            rc = config_want_bool(d, field, val, &out->filter);
        else if (strcmp(key, "restrict") == 0)
            rc = config_want_bool(d, field, val, &out->restrict_);
        else
            rc = diag_fail(d, field, "unknown field (a platforms rule has %s)", rule_fields);
        if (rc < 0)
            return rc;
    }
    snprintf(field, sizeof field, "%s.match", rule);
    if (!match)
        return diag_fail(d, field, "missing (a glob over UPSTREAM/REPOSITORY, e.g. docker.io/**)");
    const char *why;
    if (!glob_valid(match, &why) || (why = match_problem(match)) != NULL)
        return diag_fail(d, field, "%s is not a usable glob: %s",
                         diag_quote(q, sizeof q, match, strlen(match)), why);
    if (!plist) {
        snprintf(field, sizeof field, "%s.platforms", rule);
        return diag_fail(d, field, "missing (e.g. [\"linux/amd64\", \"linux/arm64\"])");
    }
    if ((rc = parse_platform_list(d, rule, plist, &out->platforms, &out->n_platforms)) < 0)
        return rc;
    if (out->attestations && !out->prefetch) {
        snprintf(field, sizeof field, "%s.attestations", rule);
        return diag_fail(d, field,
                         "has no effect: attestations are only prefetched with "
                         "\"prefetch\": true");
    }
    out->match = strdup(match);
    return out->match ? 0 : diag_oom(d);
}

static void free_rules(config_t *c)
{
    for (size_t i = 0; i < c->n_platform_rules; i++) {
        free(c->platform_rules[i].match);
        free(c->platform_rules[i].platforms);
    }
    free(c->platform_rules);
    c->platform_rules = NULL;
    c->n_platform_rules = 0;
}

int config_parse_platforms(config_t *c, const diag_t *d, const json_t *v)
{
    if (!json_is_array(v))
        return diag_fail(d, "platforms", "expected an array of rules, got %s",
                         config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n > CONFIG_MAX_PLATFORM_RULES)
        return diag_fail(d, "platforms", "at most %d rules", CONFIG_MAX_PLATFORM_RULES);
    free_rules(c);
    if (n == 0)
        return 0;
    c->platform_rules = calloc(n, sizeof *c->platform_rules);
    if (!c->platform_rules)
        return diag_oom(d);
    for (size_t i = 0; i < n; i++) {
        c->n_platform_rules++; /* counted first: a failing rule is freed with the others */
        int rc = parse_rule(&c->platform_rules[i], d, i, json_array_get(v, i));
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- Client groups ------------------------------------------------------------------------ */

static int parse_cidrs(config_client_group_t *g, const diag_t *d, const char *base, const json_t *v)
{
    char field[160];
    snprintf(field, sizeof field, "%s.cidrs", base);
    if (!json_is_array(v))
        return diag_fail(d, field, "expected an array of CIDRs, got %s", config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n == 0)
        return diag_fail(d, field, "must list at least one CIDR (or leave the field out)");
    if (n > CONFIG_MAX_GROUP_CIDRS)
        return diag_fail(d, field, "at most %d CIDRs", CONFIG_MAX_GROUP_CIDRS);
    g->cidrs = calloc(n, sizeof *g->cidrs);
    if (!g->cidrs)
        return diag_oom(d);
    for (size_t i = 0; i < n; i++) {
        const char *s = NULL;
        snprintf(field, sizeof field, "%s.cidrs[%zu]", base, i);
        int rc = config_want_str(d, field, json_array_get(v, i), &s);
        if (rc == 0)
            rc = config_cidr_parse(d, field, s, &g->cidrs[i]);
        if (rc < 0)
            return rc;
        g->n_cidrs = i + 1;
    }
    return 0;
}

/* "/edge", "/site/a": path segments of [a-z0-9._-], never the registry's own /v2. */
static int check_prefix(const diag_t *d, const char *field, const char *p)
{
    char q[80];
    size_t n = strlen(p);
    if (n < 2 || p[0] != '/' || p[n - 1] == '/')
        return diag_fail(d, field,
                         "%s: expected a path like \"/edge\" (a leading '/', no "
                         "trailing '/')",
                         diag_quote(q, sizeof q, p, n));
    if (n > CONFIG_PATH_PREFIX_MAX)
        return diag_fail(d, field, "longer than %d bytes", CONFIG_PATH_PREFIX_MAX);
    for (size_t i = 1; i < n; i++) {
        char ch = p[i];
        bool ok = (ch >= 'a' && ch <= 'z') || is_digit(ch) || ch == '.' || ch == '_' || ch == '-' ||
                  (ch == '/' && p[i - 1] != '/');
        if (!ok)
            return diag_fail(d, field, "%s: segments are made of [a-z0-9._-]",
                             diag_quote(q, sizeof q, p, n));
        if (ch == '.' && p[i - 1] == '/' && (i + 1 == n || p[i + 1] == '/' || p[i + 1] == '.'))
            return diag_fail(d, field, "%s: no \".\" or \"..\" segments",
                             diag_quote(q, sizeof q, p, n));
    }
    if (strcmp(p, "/v2") == 0 || strncmp(p, "/v2/", 4) == 0)
        return diag_fail(d, field, "must not be /v2 or under it (the registry API lives there)");
    return 0;
}

static int parse_group(config_t *c, const diag_t *d, size_t idx, const json_t *v)
{
    config_client_group_t *g = &c->client_groups[idx];
    char base[40], field[160], q[80];
    snprintf(base, sizeof base, "client_groups[%zu]", idx);
    if (!json_is_object(v))
        return diag_fail(d, base,
                         "expected an object {\"name\": ..., \"platforms\": [...]}, got %s",
                         config_json_type_name(v));
    const char *key, *name = NULL, *prefix = NULL, *listen = NULL;
    const json_t *val, *plist = NULL, *cidrs = NULL;
    int rc = 0;
    json_object_foreach((json_t *)v, key, val)
    {
        config_field_path(field, sizeof field, base, key);
        if (strcmp(key, "name") == 0)
            rc = config_want_str(d, field, val, &name);
        else if (strcmp(key, "path_prefix") == 0)
            rc = config_want_str(d, field, val, &prefix);
        else if (strcmp(key, "listen") == 0)
            rc = config_want_str(d, field, val, &listen);
        else if (strcmp(key, "cidrs") == 0)
            cidrs = val;
        else if (strcmp(key, "platforms") == 0)
            plist = val;
        else
            rc = diag_fail(d, field, "unknown field (a client group has %s)", group_fields);
        if (rc < 0)
            return rc;
    }
    snprintf(field, sizeof field, "%s.name", base);
    if (!name)
        return diag_fail(d, field, "missing (names the group in logs)");
    size_t nl = strlen(name);
    bool ok = nl >= 1 && nl <= CONFIG_GROUP_NAME_MAX;
    for (size_t i = 0; ok && i < nl; i++)
        ok = (name[i] >= 'a' && name[i] <= 'z') || is_digit(name[i]) || name[i] == '.' ||
             name[i] == '_' || name[i] == '-';
    if (!ok)
        return diag_fail(d, field, "%s: expected 1..%d of [a-z0-9._-]",
                         diag_quote(q, sizeof q, name, nl), CONFIG_GROUP_NAME_MAX);
    for (size_t i = 0; i < idx; i++)
        if (c->client_groups[i].name && strcmp(c->client_groups[i].name, name) == 0)
            return diag_fail(d, field, "%s is also client_groups[%zu].name",
                             diag_quote(q, sizeof q, name, nl), i);
    if (!(g->name = strdup(name)))
        return diag_oom(d);
    if (!cidrs && !prefix && !listen)
        return diag_fail(d, base, "matches no client: give cidrs, path_prefix, listen or several");
    if (cidrs && (rc = parse_cidrs(g, d, base, cidrs)) < 0)
        return rc;
    if (listen) {
        snprintf(field, sizeof field, "%s.listen", base);
        if (listen[0] == '\0')
            return diag_fail(d, field,
                             "empty: expected \"HOST:PORT\" (leave the field out when the "
                             "group has no listener of its own)");
        if ((rc = config_parse_listen(d, field, listen, &g->listen_host, &g->listen_port)) < 0)
            return rc;
    }
    if (prefix) {
        snprintf(field, sizeof field, "%s.path_prefix", base);
        if ((rc = check_prefix(d, field, prefix)) < 0)
            return rc;
        /* One prefix inside another would make the routing depend on the order. */
        for (size_t i = 0; i < idx; i++) {
            const char *o = c->client_groups[i].path_prefix;
            size_t ol = o ? strlen(o) : 0, pl = strlen(prefix);
            size_t m = ol < pl ? ol : pl;
            if (o && strncmp(o, prefix, m) == 0 && (ol == pl || (ol < pl ? prefix : o)[m] == '/'))
                return diag_fail(d, field, "%s overlaps client_groups[%zu].path_prefix",
                                 diag_quote(q, sizeof q, prefix, pl), i);
        }
        if (!(g->path_prefix = strdup(prefix)))
            return diag_oom(d);
    }
    if (!plist) {
        snprintf(field, sizeof field, "%s.platforms", base);
        return diag_fail(d, field, "missing (the platforms this group's clients run)");
    }
    return parse_platform_list(d, base, plist, &g->platforms, &g->n_platforms);
}

static void free_groups(config_t *c)
{
    for (size_t i = 0; i < c->n_client_groups; i++) {
        config_client_group_t *g = &c->client_groups[i];
        free(g->name);
        free(g->cidrs);
        free(g->path_prefix);
        free(g->listen_host);
        free(g->platforms);
    }
    free(c->client_groups);
    c->client_groups = NULL;
    c->n_client_groups = 0;
}

int config_parse_client_groups(config_t *c, const diag_t *d, const json_t *v)
{
    if (!json_is_array(v))
        return diag_fail(d, "client_groups", "expected an array of groups, got %s",
                         config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n > CONFIG_MAX_CLIENT_GROUPS)
        return diag_fail(d, "client_groups", "at most %d groups", CONFIG_MAX_CLIENT_GROUPS);
    free_groups(c);
    if (n == 0)
        return 0;
    c->client_groups = calloc(n, sizeof *c->client_groups);
    if (!c->client_groups)
        return diag_oom(d);
    for (size_t i = 0; i < n; i++) {
        c->n_client_groups++;
        int rc = parse_group(c, d, i, json_array_get(v, i));
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- Group listeners ---------------------------------------------------------------------- */

/* An IP literal as config_t holds it (no brackets): family and bytes; false for anything else. */
static bool addr_bytes(const char *h, int *family, unsigned char out[16])
{
    memset(out, 0, 16);
    if (inet_pton(AF_INET, h, out) == 1)
        *family = AF_INET;
    else if (inet_pton(AF_INET6, h, out) == 1)
        *family = AF_INET6;
    else
        return false;
    return true;
}

bool config_listen_same(const char *h1, uint16_t p1, const char *h2, uint16_t p2)
{
    unsigned char a[16], b[16];
    int fa, fb;
    if (p1 != p2 || !h1 || !h2)
        return false;
    if (!addr_bytes(h1, &fa, a) || !addr_bytes(h2, &fb, b))
        return strcmp(h1, h2) == 0;
    return fa == fb && memcmp(a, b, 16) == 0;
}

/* Two listeners that could not both bind: the same real port on the same address, or on a
 * wildcard that takes it ("0.0.0.0" every IPv4 address; "::" every address, the listener
 * being dual-stack). Port 0 never collides: the kernel picks. */
static bool listen_overlap(const char *h1, uint16_t p1, const char *h2, uint16_t p2)
{
    static const unsigned char any[16] = {0};
    unsigned char a[16], b[16];
    int fa, fb;
    if (p1 == 0 || p1 != p2 || !h1 || !h2)
        return false;
    if (!addr_bytes(h1, &fa, a) || !addr_bytes(h2, &fb, b))
        return strcmp(h1, h2) == 0;
    if (fa == fb && memcmp(a, b, 16) == 0)
        return true;
    bool a_any = memcmp(a, any, 16) == 0, b_any = memcmp(b, any, 16) == 0;
    return (fa == AF_INET6 && a_any) || (fb == AF_INET6 && b_any) || (fa == fb && (a_any || b_any));
}

static const char *addr_text(char *out, size_t cap, const char *h, uint16_t port)
{
    snprintf(out, cap, strchr(h, ':') ? "[%s]:%u" : "%s:%u", h, (unsigned)port);
    return out;
}

/* A group's listener: never the address of another listener, and no two groups on one address
 * (port 0 included: the address is what a reload matches an open listener's group by). */
static int check_group_listen(const config_t *c, const diag_t *d, size_t i)
{
    const config_client_group_t *g = &c->client_groups[i];
    char field[48], me[80], other[80];
    const struct {
        const char *name;
        bool on;
        const char *host;
        uint16_t port;
    } fixed[] = {
        {"listen", c->listen_enabled, c->listen_host, c->listen_port},
        {"tls_listen", c->tls_listen_enabled, c->tls_listen_host, c->tls_listen_port},
        {"admin_listen", c->admin_listen_enabled, c->admin_listen_host, c->admin_listen_port},
    };
    snprintf(field, sizeof field, "client_groups[%zu].listen", i);
    addr_text(me, sizeof me, g->listen_host, g->listen_port);
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++) {
        if (!fixed[k].on ||
            !listen_overlap(g->listen_host, g->listen_port, fixed[k].host, fixed[k].port))
            continue;
        return diag_fail(d, field, "%s is taken by %s (%s)", me, fixed[k].name,
                         addr_text(other, sizeof other, fixed[k].host, fixed[k].port));
    }
    for (size_t j = 0; j < i; j++) {
        const config_client_group_t *o = &c->client_groups[j];
        if (!o->listen_host)
            continue;
        if (config_listen_same(g->listen_host, g->listen_port, o->listen_host, o->listen_port))
            return diag_fail(d, field, "%s is also client_groups[%zu].listen (%s)", me, j, o->name);
        if (listen_overlap(g->listen_host, g->listen_port, o->listen_host, o->listen_port))
            return diag_fail(d, field, "%s overlaps client_groups[%zu].listen (%s)", me, j,
                             addr_text(other, sizeof other, o->listen_host, o->listen_port));
    }
    return 0;
}

int config_platforms_check(const config_t *c, const diag_t *d)
{
    char field[48], q[80];
    for (size_t i = 0; i < c->n_client_groups; i++) {
        int rc = c->client_groups[i].listen_host ? check_group_listen(c, d, i) : 0;
        if (rc < 0)
            return rc;
    }
    if (c->prefetch_max_per_upstream > c->prefetch_max_concurrent)
        return diag_fail(d, "prefetch_max_per_upstream",
                         "%u is more than prefetch_max_concurrent (%u)",
                         c->prefetch_max_per_upstream, c->prefetch_max_concurrent);
    for (size_t i = 0; i < c->n_platform_rules; i++) {
        const char *m = c->platform_rules[i].match;
        size_t first = strcspn(m, "/");
        if (strcspn(m, "*?") < first || config_upstream_find(c, m, first))
            continue;
        snprintf(field, sizeof field, "platforms[%zu].match", i);
        return diag_fail(d, field,
                         "%s is not a configured upstream (the first component of match names "
                         "one, e.g. %s)",
                         diag_quote(q, sizeof q, m, first), c->upstreams[0].name);
    }
    return 0;
}

void config_platforms_free(config_t *c)
{
    free_rules(c);
    free_groups(c);
}
