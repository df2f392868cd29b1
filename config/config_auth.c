/* The "auth" section: client authentication for winch itself (README "Client
 * authentication"). Parsed into a config_auth_t; every field is validated here with a message
 * naming it ("auth.access[2].groups[0]: no group \"cj\" in auth.groups"), unknown fields are
 * errors, and checks that need the rest of the configuration (the upstream names a rule's
 * pattern starts with, the TLS listener client_ca needs) run in config_auth_check_whole.
 *
 * The htpasswd file is only checked for readability here: its entries are parsed (and every
 * bad line named by file and line, never by its hash) when the application starts, by
 * proxy/htpasswd.c, which also re-reads it while winch runs. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/glob.h"
#include "config/internal.h"

/* Bounds, far above any real configuration, so a hostile file cannot make start-up slow. */
#define AUTH_MAX_RULES 1024
#define AUTH_MAX_GROUPS 1024
#define AUTH_MAX_NAMES 10000 /* users or groups in one list */
#define AUTH_GROUP_NAME_MAX 64
#define AUTH_REALM_MAX 128

/* "prefix.key" with the key made printable (keys come from the file). */
static void sub_field(char *buf, size_t cap, const char *prefix, const char *key)
{
    char q[80];
    diag_quote(q, sizeof q, key, strlen(key));
    size_t ql = strlen(q);
    q[ql - 1] = '\0'; /* paths read better without diag_quote's quotes */
    snprintf(buf, cap, "%s.%s", prefix, q + 1);
}

static int want_uint(const diag_t *d, const char *field, const json_t *v, uint32_t min,
                     uint32_t max, uint32_t *out)
{
    if (!json_is_integer(v))
        return diag_fail(d, field, "expected an integer, got %s", config_json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < (json_int_t)min || x > (json_int_t)max)
        return diag_fail(d, field, "must be %u..%u, got %lld", (unsigned)min, (unsigned)max,
                         (long long)x);
    *out = (uint32_t)x;
    return 0;
}

/* A user name as access rules and groups write it: what HTTP Basic can carry (no ':', no
 * control bytes), and what a certificate name can be. */
static int check_user(const diag_t *d, const char *field, const char *s)
{
    char q[80];
    size_t n = strlen(s);
    if (n == 0)
        return diag_fail(d, field, "must not be empty");
    if (n > USERNAME_MAX)
        return diag_fail(d, field, "longer than %d bytes", USERNAME_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            return diag_fail(d, field, "must not contain control characters");
        if (ch == ':')
            return diag_fail(d, field, "%s must not contain ':' (HTTP Basic auth, RFC 7617)",
                             diag_quote(q, sizeof q, s, n));
    }
    return 0;
}

static bool group_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > AUTH_GROUP_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return false;
    return true;
}

static void free_names(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* An array of user names into *out (owned). */
static int parse_users(const diag_t *d, const char *field, const json_t *v, char ***out,
                       size_t *n_out)
{
    char sub[160];
    if (!json_is_array(v))
        return diag_fail(d, field, "expected an array of user names, got %s",
                         config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n > AUTH_MAX_NAMES)
        return diag_fail(d, field, "at most %d names", AUTH_MAX_NAMES);
    char **names = calloc(n ? n : 1, sizeof *names);
    if (!names)
        return diag_oom(d);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *e = json_array_get(v, i);
        snprintf(sub, sizeof sub, "%s[%zu]", field, i);
        if (!json_is_string(e))
            rc = diag_fail(d, sub, "expected a string, got %s", config_json_type_name(e));
        else if ((rc = check_user(d, sub, json_string_value(e))) == 0 &&
                 !(names[i] = strdup(json_string_value(e))))
            rc = diag_oom(d);
    }
    if (rc < 0) {
        free_names(names, n);
        return rc;
    }
    *out = names;
    *n_out = n;
    return 0;
}

static int parse_groups(config_auth_t *a, const diag_t *d, const json_t *v)
{
    char sub[160], q[80];
    if (!json_is_object(v))
        return diag_fail(d, "auth.groups",
                         "expected an object {\"GROUP\": [\"USER\", ...]}, got %s",
                         config_json_type_name(v));
    size_t n = json_object_size(v);
    if (n > AUTH_MAX_GROUPS)
        return diag_fail(d, "auth.groups", "at most %d groups", AUTH_MAX_GROUPS);
    a->groups = calloc(n ? n : 1, sizeof *a->groups);
    if (!a->groups)
        return diag_oom(d);
    const char *key;
    json_t *members;
    json_object_foreach((json_t *)v, key, members)
    {
        sub_field(sub, sizeof sub, "auth.groups", key);
        if (!group_name_ok(key))
            return diag_fail(d, sub, "%s is not a group name ([A-Za-z0-9._-], 1..%d characters)",
                             diag_quote(q, sizeof q, key, strlen(key)), AUTH_GROUP_NAME_MAX);
        config_auth_group_t *g = &a->groups[a->n_groups];
        if (!(g->name = strdup(key)))
            return diag_oom(d);
        a->n_groups++;
        int rc = parse_users(d, sub, members, &g->members, &g->n_members);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* A rule's group names, kept as written until every group is known (JSON objects have no
 * order to rely on), then resolved by resolve_groups. */
typedef struct rule_groups {
    const json_t *list; /* borrowed from the document; NULL when absent */
} rule_groups_t;

static int parse_rule(config_access_rule_t *r, rule_groups_t *rg, const diag_t *d, size_t idx,
                      const json_t *v)
{
    char field[48], sub[160];
    snprintf(field, sizeof field, "auth.access[%zu]", idx);
    if (!json_is_object(v))
        return diag_fail(d, field, "expected an object {\"match\": GLOB, ...}, got %s",
                         config_json_type_name(v));
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val)
    {
        int rc = 0;
        sub_field(sub, sizeof sub, field, key);
        if (strcmp(key, "match") == 0) {
            const char *why = NULL;
            if (!json_is_string(val))
                rc = diag_fail(d, sub, "expected a string, got %s", config_json_type_name(val));
            else if (!glob_valid(json_string_value(val), &why))
                rc = diag_fail(d, sub, "not a usable pattern: %s", why);
            else if (!(r->match = strdup(json_string_value(val))))
                rc = diag_oom(d);
        } else if (strcmp(key, "anonymous") == 0) {
            rc = config_want_bool(d, sub, val, &r->anonymous);
        } else if (strcmp(key, "authenticated") == 0) {
            rc = config_want_bool(d, sub, val, &r->authenticated);
        } else if (strcmp(key, "users") == 0) {
            rc = parse_users(d, sub, val, &r->users, &r->n_users);
        } else if (strcmp(key, "groups") == 0) {
            if (!json_is_array(val))
                rc = diag_fail(d, sub, "expected an array of group names, got %s",
                               config_json_type_name(val));
            else if (json_array_size(val) > AUTH_MAX_NAMES)
                rc = diag_fail(d, sub, "at most %d names", AUTH_MAX_NAMES);
            rg->list = val;
        } else {
            rc = diag_fail(d, sub,
                           "unknown field (a rule has \"match\", \"anonymous\", "
                           "\"authenticated\", \"users\", \"groups\")");
        }
        if (rc < 0)
            return rc;
    }
    if (!r->match) {
        snprintf(sub, sizeof sub, "%s.match", field);
        return diag_fail(d, sub,
                         "missing (a glob over UPSTREAM/REPOSITORY, e.g. "
                         "\"docker.io/library/*\")");
    }
    return 0;
}

static int resolve_groups(config_auth_t *a, config_access_rule_t *r, const rule_groups_t *rg,
                          const diag_t *d, size_t idx)
{
    char sub[160], q[80];
    if (!rg->list)
        return 0;
    size_t n = json_array_size(rg->list);
    r->groups = calloc(n ? n : 1, sizeof *r->groups);
    if (!r->groups)
        return diag_oom(d);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(rg->list, i);
        snprintf(sub, sizeof sub, "auth.access[%zu].groups[%zu]", idx, i);
        if (!json_is_string(e))
            return diag_fail(d, sub, "expected a string, got %s", config_json_type_name(e));
        const char *name = json_string_value(e);
        size_t g = 0;
        while (g < a->n_groups && strcmp(a->groups[g].name, name) != 0)
            g++;
        if (g == a->n_groups)
            return diag_fail(d, sub, "no group %s in auth.groups",
                             diag_quote(q, sizeof q, name, strlen(name)));
        r->groups[r->n_groups++] = g;
    }
    return 0;
}

static int parse_access(config_auth_t *a, const diag_t *d, const json_t *v, rule_groups_t **rgs)
{
    if (!json_is_array(v))
        return diag_fail(d, "auth.access", "expected an array of rules, got %s",
                         config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n > AUTH_MAX_RULES)
        return diag_fail(d, "auth.access", "at most %d rules", AUTH_MAX_RULES);
    a->rules = calloc(n ? n : 1, sizeof *a->rules);
    *rgs = calloc(n ? n : 1, sizeof **rgs);
    if (!a->rules || !*rgs)
        return diag_oom(d);
    for (size_t i = 0; i < n; i++) {
        a->n_rules++; /* counted first: a half-parsed rule is freed with the rest */
        int rc = parse_rule(&a->rules[i], &(*rgs)[i], d, i, json_array_get(v, i));
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int parse_realm(config_auth_t *a, const diag_t *d, const json_t *v)
{
    if (!json_is_string(v))
        return diag_fail(d, "auth.realm", "expected a string, got %s", config_json_type_name(v));
    const char *s = json_string_value(v);
    size_t n = strlen(s);
    if (n == 0 || n > AUTH_REALM_MAX)
        return diag_fail(d, "auth.realm", "must be 1..%d characters", AUTH_REALM_MAX);
    /* It goes into a quoted-string of WWW-Authenticate: no quotes, backslashes or controls. */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
            return diag_fail(d, "auth.realm",
                             "printable ASCII only, without '\"' or '\\' (it is sent in the "
                             "WWW-Authenticate header)");
    }
    char *p = strdup(s);
    if (!p)
        return diag_oom(d);
    free(a->realm);
    a->realm = p;
    return 0;
}

static int parse_challenge(config_auth_t *a, const diag_t *d, const json_t *v)
{
    char q[80];
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (s && strcmp(s, "basic") == 0)
        a->bearer = false;
    else if (s && strcmp(s, "bearer") == 0)
        a->bearer = true;
    else
        return diag_fail(d, "auth.challenge", "expected \"basic\" or \"bearer\", got %s",
                         s ? diag_quote(q, sizeof q, s, strlen(s)) : config_json_type_name(v));
    return 0;
}

/* An absolute http(s) URL for the token realm (behind a reverse proxy, the address clients
 * use); it goes into a quoted-string, so no quotes, backslashes, spaces or controls. */
static int parse_token_realm(config_auth_t *a, const diag_t *d, const json_t *v)
{
    if (!json_is_string(v))
        return diag_fail(d, "auth.token_realm", "expected a string (a URL), got %s",
                         config_json_type_name(v));
    const char *s = json_string_value(v);
    size_t n = strlen(s);
    url_parts_t u;
    const char *why = n > URL_MAX ? "too long" : addr_parse_url(s, &u);
    for (size_t i = 0; !why && i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f || s[i] == '"' ||
            s[i] == '\\')
            why = "spaces, quotes, backslashes and non-ASCII characters are not allowed";
    if (why)
        return diag_fail(d, "auth.token_realm", "not a usable URL: %s", why);
    char *p = strdup(s);
    if (!p)
        return diag_oom(d);
    free(a->token_realm);
    a->token_realm = p;
    return 0;
}

/* The default when "access" is absent: every authenticated user reads everything. */
static int default_rules(config_auth_t *a, const diag_t *d)
{
    a->rules = calloc(1, sizeof *a->rules);
    if (!a->rules || !(a->rules[0].match = strdup("**")))
        return diag_oom(d);
    a->rules[0].authenticated = true;
    a->n_rules = 1;
    return 0;
}

static int parse_field(config_auth_t *a, const diag_t *d, const char *key, const json_t *v,
                       rule_groups_t **rgs, bool *have_access)
{
    char sub[160];
    sub_field(sub, sizeof sub, "auth", key);
    if (strcmp(key, "htpasswd") == 0 || strcmp(key, "client_ca") == 0) {
        if (!json_is_string(v))
            return diag_fail(d, sub, "expected a string (a path), got %s",
                             config_json_type_name(v));
        return config_set_file(d, sub, json_string_value(v),
                               key[0] == 'h' ? &a->htpasswd : &a->client_ca);
    }
    if (strcmp(key, "realm") == 0)
        return parse_realm(a, d, v);
    if (strcmp(key, "require_client_cert") == 0)
        return config_want_bool(d, sub, v, &a->require_client_cert);
    if (strcmp(key, "groups") == 0)
        return parse_groups(a, d, v);
    if (strcmp(key, "access") == 0) {
        *have_access = true;
        return parse_access(a, d, v, rgs);
    }
    if (strcmp(key, "challenge") == 0)
        return parse_challenge(a, d, v);
    if (strcmp(key, "token_ttl_s") == 0)
        return want_uint(d, sub, v, 60, 86400, &a->token_ttl_s);
    if (strcmp(key, "token_realm") == 0)
        return parse_token_realm(a, d, v);
    if (strcmp(key, "verify_cache_ttl_s") == 0)
        return want_uint(d, sub, v, 0, 86400, &a->verify_cache_ttl_s);
    if (strcmp(key, "max_failures") == 0)
        return want_uint(d, sub, v, 1, 1000000, &a->max_failures);
    if (strcmp(key, "failure_window_s") == 0)
        return want_uint(d, sub, v, 1, 86400, &a->failure_window_s);
    return diag_fail(d, sub,
                     "unknown field (auth has \"htpasswd\", \"realm\", \"groups\", \"access\", "
                     "\"client_ca\", \"require_client_cert\", \"challenge\", \"token_ttl_s\", "
                     "\"token_realm\", \"verify_cache_ttl_s\", \"max_failures\", "
                     "\"failure_window_s\")");
}

static int parse_auth(config_auth_t *a, const diag_t *d, const json_t *v)
{
    rule_groups_t *rgs = NULL;
    bool have_access = false;
    int rc = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val)
    {
        if ((rc = parse_field(a, d, key, val, &rgs, &have_access)) < 0)
            goto out;
    }
    for (size_t i = 0; have_access && i < a->n_rules; i++)
        if ((rc = resolve_groups(a, &a->rules[i], &rgs[i], d, i)) < 0)
            goto out;
    if (!have_access && (rc = default_rules(a, d)) < 0)
        goto out;
    if (!a->htpasswd && !a->client_ca)
        rc = diag_fail(d, "auth",
                       "give htpasswd (passwords), client_ca (client certificates) or both");
    else if (a->require_client_cert && !a->client_ca)
        rc = diag_fail(d, "auth.require_client_cert", "true needs client_ca");
    else if (a->bearer && !a->htpasswd)
        rc = diag_fail(d, "auth.challenge", "\"bearer\" needs htpasswd");
    else if (a->token_realm && !a->bearer)
        rc = diag_fail(d, "auth.token_realm", "only with \"challenge\": \"bearer\"");
out:
    free(rgs);
    return rc;
}

int config_auth_parse(config_t *c, const diag_t *d, struct json_t *v)
{
    if (!json_is_object(v))
        return diag_fail(d, "auth", "expected an object {\"htpasswd\": FILE, ...}, got %s",
                         config_json_type_name(v));
    config_auth_t *a = calloc(1, sizeof *a);
    if (!a || !(a->realm = strdup("winch"))) {
        free(a);
        return diag_oom(d);
    }
    a->verify_cache_ttl_s = 300;
    a->token_ttl_s = 300;
    a->max_failures = 10;
    a->failure_window_s = 60;
    config_auth_free(c->auth);
    c->auth = a; /* freed with the config, also when parsing fails below */
    return parse_auth(a, d, v);
}

/* The first component of a pattern, when it is written out (no wildcard): it must name a
 * configured upstream, or the rule could never match and a later, wider rule would decide
 * for those repositories instead. */
static int check_rule_upstream(const config_t *c, const diag_t *d, size_t idx, const char *match)
{
    char sub[48], q[80];
    snprintf(sub, sizeof sub, "auth.access[%zu].match", idx);
    size_t n = strcspn(match, "/");
    if (memchr(match, '*', n) || memchr(match, '?', n))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (match[i] >= 'A' && match[i] <= 'Z')
            return diag_fail(d, sub, "%s: upstream names are lowercase",
                             diag_quote(q, sizeof q, match, n));
    for (size_t i = 0; i < c->n_upstreams; i++)
        if (strlen(c->upstreams[i].name) == n && memcmp(c->upstreams[i].name, match, n) == 0)
            return 0;
    if (addr_is_dockerhub_alias(match, n))
        return diag_fail(d, sub, "%s: Docker Hub is named docker.io in access rules",
                         diag_quote(q, sizeof q, match, n));
    return diag_fail(d, sub,
                     "%s is not a configured upstream (a pattern starts with the upstream's "
                     "name, e.g. \"%s/...\")",
                     diag_quote(q, sizeof q, match, n), c->upstreams[0].name);
}

int config_auth_check_whole(const config_t *c, const diag_t *d)
{
    const config_auth_t *a = c->auth;
    if (!a)
        return 0;
    if (a->client_ca && !c->tls_listen_enabled)
        return diag_fail(d, "auth.client_ca",
                         "client certificates need the TLS listener (tls_listen)");
    for (size_t i = 0; i < a->n_rules; i++) {
        int rc = check_rule_upstream(c, d, i, a->rules[i].match);
        if (rc < 0)
            return rc;
    }
    return 0;
}

void config_auth_free(config_auth_t *a)
{
    if (!a)
        return;
    free(a->htpasswd);
    free(a->realm);
    free(a->client_ca);
    free(a->token_realm);
    for (size_t i = 0; i < a->n_groups; i++) {
        free(a->groups[i].name);
        free_names(a->groups[i].members, a->groups[i].n_members);
    }
    free(a->groups);
    for (size_t i = 0; i < a->n_rules; i++) {
        free(a->rules[i].match);
        free_names(a->rules[i].users, a->rules[i].n_users);
        free(a->rules[i].groups);
    }
    free(a->rules);
    free(a);
}
