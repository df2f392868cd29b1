/* The "policy" section: pull-time rules (README, "Policy"). Each rule is an object whose fields
 * are validated here, one message per problem naming policy[i].field, so that a rule a
 * reviewer reads is a rule winch can apply: unknown fields, wrong types, values out of range,
 * invalid globs, regexes and digests, and combinations where a field could never take effect
 * (deny with deny_tags, require_digest with pin, freeze with soak_s, audit or message on a
 * rule that refuses nothing) all stop winch at start.
 *
 * Regexes are compiled here only to validate them (policy_create compiles them again and keeps
 * them): every tool that loads the configuration then reports a bad regex the same way. */
#include <errno.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/glob.h"
#include "common/ref.h"
#include "config/internal.h"

#define SOAK_MAX_S 31536000u         /* a year */
#define AGE_MAX_DAYS 36500u          /* a century */
#define IMAGE_BYTES_MAX (1ull << 50) /* 1 PiB */

static const char known_fields[] =
    "match, allow, deny, deny_tags, require_digest, pin, soak_s, freeze, max_image_bytes, "
    "max_image_age_days, audit, message";

/* What one rule object said, before it is checked as a whole. Tri-state booleans: -1 absent. */
typedef struct raw_rule {
    const char *match;
    int allow, deny, require_digest, freeze, audit;
    const json_t *deny_tags, *pin;
    json_int_t soak_s, max_bytes, max_age; /* -1 absent */
    const char *message;
} raw_rule_t;

/* The readers return WE_CONFIG themselves (not diag_fail's value) so that every path that
 * returns 0 is one that set *out, plainly. */
static int want_bool(const diag_t *d, const char *field, const json_t *v, int *out)
{
    if (!json_is_boolean(v)) {
        diag_fail(d, field, "expected true or false, got %s", config_json_type_name(v));
        return WE_CONFIG;
    }
    *out = json_is_true(v);
    return 0;
}

static int want_int(const diag_t *d, const char *field, const json_t *v, uint64_t min, uint64_t max,
                    json_int_t *out)
{
    if (!json_is_integer(v)) {
        diag_fail(d, field, "expected an integer, got %s", config_json_type_name(v));
        return WE_CONFIG;
    }
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x < min || (uint64_t)x > max) {
        diag_fail(d, field, "must be %llu..%llu, got %lld", (unsigned long long)min,
                  (unsigned long long)max, (long long)x);
        return WE_CONFIG;
    }
    *out = x;
    return 0;
}

/* Reads one field of a rule object into r. */
static int read_field(const diag_t *d, const char *field, const char *key, const json_t *v,
                      raw_rule_t *r)
{
    if (strcmp(key, "match") == 0)
        return config_want_str(d, field, v, &r->match);
    if (strcmp(key, "allow") == 0)
        return want_bool(d, field, v, &r->allow);
    if (strcmp(key, "deny") == 0)
        return want_bool(d, field, v, &r->deny);
    if (strcmp(key, "require_digest") == 0)
        return want_bool(d, field, v, &r->require_digest);
    if (strcmp(key, "freeze") == 0)
        return want_bool(d, field, v, &r->freeze);
    if (strcmp(key, "audit") == 0)
        return want_bool(d, field, v, &r->audit);
    if (strcmp(key, "message") == 0)
        return config_want_str(d, field, v, &r->message);
    if (strcmp(key, "soak_s") == 0)
        return want_int(d, field, v, 1, SOAK_MAX_S, &r->soak_s);
    if (strcmp(key, "max_image_bytes") == 0)
        return want_int(d, field, v, 1, IMAGE_BYTES_MAX, &r->max_bytes);
    if (strcmp(key, "max_image_age_days") == 0)
        return want_int(d, field, v, 1, AGE_MAX_DAYS, &r->max_age);
    if (strcmp(key, "deny_tags") == 0) {
        if (!json_is_array(v))
            return diag_fail(d, field, "expected an array of regexes, got %s",
                             config_json_type_name(v));
        r->deny_tags = v;
        return 0;
    }
    if (strcmp(key, "pin") == 0) {
        if (!json_is_object(v))
            return diag_fail(d, field, "expected an object {\"TAG\": \"DIGEST\", ...}, got %s",
                             config_json_type_name(v));
        r->pin = v;
        return 0;
    }
    return diag_fail(d, field, "unknown field (a policy rule has %s)", known_fields);
}

/* A POSIX extended regex winch accepts: bounded, no back-references (which make matching
 * exponential and are not ERE anyway), and one regcomp accepts. */
static int check_regex(const diag_t *d, const char *field, const char *re)
{
    size_t n = strlen(re);
    if (n == 0)
        return diag_fail(d, field, "an empty regex matches every tag; use require_digest or deny");
    if (n > CONFIG_MAX_REGEX_LEN)
        return diag_fail(d, field, "longer than %d bytes", CONFIG_MAX_REGEX_LEN);
    for (size_t i = 0; i + 1 < n; i++) {
        if (re[i] == '\\' && re[i + 1] >= '1' && re[i + 1] <= '9')
            return diag_fail(d, field, "back-references (\\%c) are not allowed", re[i + 1]);
        if (re[i] == '\\')
            i++;
    }
    regex_t rx;
    int rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char why[128], q[80];
        regerror(rc, &rx, why, sizeof why);
        return diag_fail(d, field, "invalid regex %s: %s", diag_quote(q, sizeof q, re, n), why);
    }
    regfree(&rx);
    return 0;
}

static int parse_deny_tags(config_policy_rule_t *out, const diag_t *d, const char *rule,
                           const json_t *arr)
{
    char field[96];
    size_t n = json_array_size(arr);
    snprintf(field, sizeof field, "%s.deny_tags", rule);
    if (n == 0)
        return diag_fail(d, field, "must list at least one regex");
    if (n > CONFIG_MAX_DENY_TAGS)
        return diag_fail(d, field, "at most %d regexes", CONFIG_MAX_DENY_TAGS);
    out->deny_tags = calloc(n, sizeof *out->deny_tags);
    if (!out->deny_tags)
        return diag_oom(d);
    for (size_t j = 0; j < n; j++) {
        const char *re = NULL;
        snprintf(field, sizeof field, "%s.deny_tags[%zu]", rule, j);
        int rc = config_want_str(d, field, json_array_get(arr, j), &re);
        if (rc == 0)
            rc = check_regex(d, field, re);
        if (rc < 0)
            return rc;
        out->deny_tags[j] = strdup(re);
        if (!out->deny_tags[j])
            return diag_oom(d);
        out->n_deny_tags++;
    }
    return 0;
}

static int parse_pins(config_policy_rule_t *out, const diag_t *d, const char *rule,
                      const json_t *obj)
{
    char field[256], base[48], q[80];
    size_t n = json_object_size(obj);
    snprintf(base, sizeof base, "%s.pin", rule);
    snprintf(field, sizeof field, "%s", base);
    if (n == 0)
        return diag_fail(d, field, "must pin at least one tag");
    if (n > CONFIG_MAX_PINS)
        return diag_fail(d, field, "at most %d pins per rule", CONFIG_MAX_PINS);
    out->pins = calloc(n, sizeof *out->pins);
    if (!out->pins)
        return diag_oom(d);
    const char *tag;
    const json_t *v;
    json_object_foreach((json_t *)obj, tag, v)
    {
        const char *digest = NULL;
        config_field_path(field, sizeof field, base, tag);
        if (!ref_tag_valid(tag, strlen(tag)))
            return diag_fail(d, field, "%s is not a tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127})",
                             diag_quote(q, sizeof q, tag, strlen(tag)));
        int rc = config_want_str(d, field, v, &digest);
        if (rc < 0)
            return rc;
        rc = ref_digest_parse(digest, strlen(digest), NULL);
        if (rc == -ENOTSUP)
            return diag_fail(d, field, "winch verifies only sha256 and sha512 digests");
        if (rc < 0)
            return diag_fail(d, field, "%s is not a digest (sha256:<64 hex>)",
                             diag_quote(q, sizeof q, digest, strlen(digest)));
        config_pin_t *p = &out->pins[out->n_pins];
        p->tag = strdup(tag);
        p->digest = strdup(digest);
        out->n_pins++;
        if (!p->tag || !p->digest)
            return diag_oom(d);
    }
    return 0;
}

/* Fails when field `name` is set on a rule where `why` keeps it from ever taking effect. */
static int dead_if(const diag_t *d, const char *rule, bool set, const char *name, const char *why)
{
    char field[96];
    if (!set)
        return 0;
    snprintf(field, sizeof field, "%s.%s", rule, name);
    return diag_fail(d, field, "has no effect: %s", why);
}

/* The combinations where a field could never take effect, or two fields contradict. */
static int check_combination(const diag_t *d, const char *rule, const raw_rule_t *r)
{
    char field[96];
    int rc;
    if (r->allow >= 0 && r->deny >= 0 && r->allow == r->deny) {
        snprintf(field, sizeof field, "%s.deny", rule);
        return diag_fail(d, field, "contradicts allow");
    }
    bool deny = r->deny == 1 || r->allow == 0;
    bool tags = r->deny_tags != NULL, pins = r->pin != NULL, soak = r->soak_s >= 0;
    bool image = r->max_bytes >= 0 || r->max_age >= 0;
    static const char deny_why[] = "deny refuses every pull of the repository";
    static const char digest_why[] = "require_digest refuses every pull by tag";
    if ((rc = dead_if(d, rule, deny && tags, "deny_tags", deny_why)) ||
        (rc = dead_if(d, rule, deny && r->require_digest == 1, "require_digest", deny_why)) ||
        (rc = dead_if(d, rule, deny && pins, "pin", deny_why)) ||
        (rc = dead_if(d, rule, deny && soak, "soak_s", deny_why)) ||
        (rc = dead_if(d, rule, deny && r->freeze == 1, "freeze", deny_why)) ||
        (rc = dead_if(d, rule, deny && r->max_bytes >= 0, "max_image_bytes", deny_why)) ||
        (rc = dead_if(d, rule, deny && r->max_age >= 0, "max_image_age_days", deny_why)) ||
        (rc = dead_if(d, rule, r->require_digest == 1 && tags, "deny_tags", digest_why)) ||
        (rc = dead_if(d, rule, r->require_digest == 1 && pins, "pin", digest_why)) ||
        (rc = dead_if(d, rule, r->require_digest == 1 && soak, "soak_s", digest_why)) ||
        (rc = dead_if(d, rule, r->require_digest == 1 && r->freeze == 1, "freeze", digest_why)) ||
        (rc = dead_if(d, rule, r->freeze == 1 && soak, "soak_s",
                      "a frozen tag is never revalidated, so it never sees a new digest")))
        return rc;
    bool refuses = deny || tags || r->require_digest == 1 || image;
    static const char nothing[] = "the rule refuses nothing";
    if ((rc = dead_if(d, rule, r->audit == 1 && !refuses, "audit", nothing)) ||
        (rc = dead_if(d, rule, r->message && !refuses, "message", nothing)))
        return rc;
    if (!refuses && r->allow != 1 && r->deny != 0 && !pins && !soak && r->freeze != 1)
        return diag_fail(d, rule,
                         "the rule does nothing: give allow, deny, deny_tags, require_digest, "
                         "pin, soak_s, freeze, max_image_bytes or max_image_age_days");
    return 0;
}

static int check_message(const diag_t *d, const char *rule, const char *m)
{
    char field[96];
    snprintf(field, sizeof field, "%s.message", rule);
    size_t n = strlen(m);
    if (n == 0)
        return diag_fail(d, field, "must not be empty");
    if (n > CONFIG_MAX_MESSAGE_LEN)
        return diag_fail(d, field, "longer than %d bytes", CONFIG_MAX_MESSAGE_LEN);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)m[i];
        if (ch < 0x20 || ch == 0x7f)
            return diag_fail(d, field, "must not contain control characters (one line)");
    }
    return 0;
}

/* A pinned tag that the rule's own deny_tags refuse would never be served: refusals come first. */
static int check_pins_allowed(const config_policy_rule_t *r, const diag_t *d, const char *rule)
{
    char field[256], base[48];
    snprintf(base, sizeof base, "%s.pin", rule);
    for (size_t j = 0; j < r->n_deny_tags; j++) {
        regex_t rx;
        if (regcomp(&rx, r->deny_tags[j], REG_EXTENDED | REG_NOSUB) != 0)
            continue; /* checked when parsed */
        for (size_t k = 0; k < r->n_pins; k++) {
            if (regexec(&rx, r->pins[k].tag, 0, NULL, 0) == 0) {
                regfree(&rx);
                config_field_path(field, sizeof field, base, r->pins[k].tag);
                return diag_fail(d, field,
                                 "has no effect: the tag is refused by deny_tags[%zu] of the "
                                 "same rule, and refusals come first",
                                 j);
            }
        }
        regfree(&rx);
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

static int parse_rule(config_policy_rule_t *out, const diag_t *d, size_t idx, const json_t *v)
{
    char rule[32], field[160], q[80];
    snprintf(rule, sizeof rule, "policy[%zu]", idx);
    if (!json_is_object(v))
        return diag_fail(d, rule, "expected an object {\"match\": ..., ...}, got %s",
                         config_json_type_name(v));
    raw_rule_t r = {.allow = -1,
                    .deny = -1,
                    .require_digest = -1,
                    .freeze = -1,
                    .audit = -1,
                    .soak_s = -1,
                    .max_bytes = -1,
                    .max_age = -1};
    const char *key;
    const json_t *val;
    int rc;
    json_object_foreach((json_t *)v, key, val)
    {
        config_field_path(field, sizeof field, rule, key);
        if ((rc = read_field(d, field, key, val, &r)) < 0)
            return rc;
    }
    snprintf(field, sizeof field, "%s.match", rule);
    if (!r.match)
        return diag_fail(d, field,
                         "missing (a glob over UPSTREAM/REPOSITORY, e.g. "
                         "docker.io/library/*)");
    const char *why;
    if (!glob_valid(r.match, &why) || (why = match_problem(r.match)) != NULL)
        return diag_fail(d, field, "%s is not a usable glob: %s",
                         diag_quote(q, sizeof q, r.match, strlen(r.match)), why);
    if ((rc = check_combination(d, rule, &r)) < 0)
        return rc;
    if (r.message && (rc = check_message(d, rule, r.message)) < 0)
        return rc;
    out->match = strdup(r.match);
    if (!out->match)
        return diag_oom(d);
    out->deny = r.deny == 1 || r.allow == 0;
    out->allow = !out->deny && (r.allow == 1 || r.deny == 0);
    out->require_digest = r.require_digest == 1;
    out->freeze = r.freeze == 1;
    out->audit = r.audit == 1;
    out->soak_s = r.soak_s > 0 ? (uint32_t)r.soak_s : 0;
    out->max_image_bytes = r.max_bytes > 0 ? (uint64_t)r.max_bytes : 0;
    out->max_image_age_days = r.max_age > 0 ? (uint32_t)r.max_age : 0;
    if (r.message && !(out->message = strdup(r.message)))
        return diag_oom(d);
    if (r.deny_tags && (rc = parse_deny_tags(out, d, rule, r.deny_tags)) < 0)
        return rc;
    if (r.pin && (rc = parse_pins(out, d, rule, r.pin)) < 0)
        return rc;
    return check_pins_allowed(out, d, rule);
}

int config_parse_policy(config_t *c, const diag_t *d, const json_t *v)
{
    if (!json_is_array(v))
        return diag_fail(d, "policy", "expected an array of rules, got %s",
                         config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n > CONFIG_MAX_POLICY_RULES)
        return diag_fail(d, "policy", "at most %d rules", CONFIG_MAX_POLICY_RULES);
    config_policy_free(c);
    if (n == 0)
        return 0;
    c->policy = calloc(n, sizeof *c->policy);
    if (!c->policy)
        return diag_oom(d);
    for (size_t i = 0; i < n; i++) {
        /* Counted first: a failing rule is freed with the others (config_free). */
        c->n_policy++;
        int rc = parse_rule(&c->policy[i], d, i, json_array_get(v, i));
        if (rc < 0)
            return rc;
    }
    return 0;
}

int config_policy_check(const config_t *c, const diag_t *d)
{
    char field[48], q[80];
    for (size_t i = 0; i < c->n_policy; i++) {
        const char *m = c->policy[i].match;
        size_t first = strcspn(m, "/");
        /* A glob in the upstream part spans upstreams by design. */
        if (strcspn(m, "*?") < first)
            continue;
        if (config_upstream_find(c, m, first))
            continue;
        char names[256] = "";
        size_t used = 0;
        for (size_t u = 0; u < c->n_upstreams && used < sizeof names; u++) {
            int w = snprintf(names + used, sizeof names - used, "%s%s", u ? ", " : "",
                             c->upstreams[u].name);
            used += w > 0 ? (size_t)w : 0;
        }
        snprintf(field, sizeof field, "policy[%zu].match", i);
        return diag_fail(d, field,
                         "%s is not a configured upstream (the first component of match names "
                         "one: %s)",
                         diag_quote(q, sizeof q, m, first), names);
    }
    return 0;
}

void config_policy_free(config_t *c)
{
    for (size_t i = 0; i < c->n_policy; i++) {
        config_policy_rule_t *r = &c->policy[i];
        free(r->match);
        for (size_t j = 0; j < r->n_deny_tags; j++)
            free(r->deny_tags[j]);
        free(r->deny_tags);
        for (size_t j = 0; j < r->n_pins; j++) {
            free(r->pins[j].tag);
            free(r->pins[j].digest);
        }
        free(r->pins);
        free(r->message);
    }
    free(c->policy);
    c->policy = NULL;
    c->n_policy = 0;
}

int config_pin_digests(const config_t *c, const char ***out, size_t *n)
{
    size_t total = 0, k = 0;
    *out = NULL;
    *n = 0;
    for (size_t i = 0; i < c->n_policy; i++)
        total += c->policy[i].n_pins;
    if (total == 0)
        return 0;
    const char **d = calloc(total, sizeof *d);
    if (!d)
        return -ENOMEM;
    for (size_t i = 0; i < c->n_policy; i++)
        for (size_t j = 0; j < c->policy[i].n_pins; j++)
            d[k++] = c->policy[i].pins[j].digest;
    *out = d;
    *n = k;
    return 0;
}
