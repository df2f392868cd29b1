/* The "retention" section and "on_disk_full": how big the cache may grow, what it evicts and
 * what it never evicts.
 *
 *   "retention": {"max_size": "50GiB" | 53687091200 | "80%", "low_watermark": "90%",
 *                 "max_unused": "30d", "protect": ["docker.io/acme/..."]}
 *   "on_disk_full": "fail" | "pass_through"
 *
 * A percentage max_size is a share of the cache's filesystem, resolved at start (statvfs) by
 * the retention timer; everything else is final here. Sizes and durations are also what the
 * CLI reads (--unused-for), hence config_parse_size/duration in config.h. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/glob.h"
#include "config/internal.h"

#define PROTECT_MAX 1024

/* Digits into *v; NULL when fine. Stops at the first non-digit (*end). */
static const char *digits(const char *s, uint64_t *v, const char **end)
{
    uint64_t x = 0;
    const char *p = s;
    if (!is_digit(*p))
        return "must start with a number";
    for (; is_digit(*p); p++) {
        if (x > (UINT64_MAX - 9) / 10)
            return "number too large";
        x = x * 10 + (uint64_t)(*p - '0');
    }
    *v = x;
    *end = p;
    return NULL;
}

const char *config_parse_size(const char *s, uint64_t *bytes, uint32_t *pct)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {{"", 1},
                 {"B", 1},
                 {"KB", 1000ULL},
                 {"MB", 1000000ULL},
                 {"GB", 1000000000ULL},
                 {"TB", 1000000000000ULL},
                 {"KiB", 1ULL << 10},
                 {"MiB", 1ULL << 20},
                 {"GiB", 1ULL << 30},
                 {"TiB", 1ULL << 40}};
    uint64_t v;
    const char *end;
    if (!bytes)
        return "no place for the result";
    const char *why = digits(s, &v, &end);
    if (why)
        return why;
    if (pct)
        *pct = 0;
    if (strcmp(end, "%") == 0) {
        if (!pct)
            return "a percentage is not allowed here";
        if (v < 1 || v > 100)
            return "a percentage must be 1..100";
        *pct = (uint32_t)v;
        *bytes = 0;
        return NULL;
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].unit) != 0)
            continue;
        if (v > UINT64_MAX / units[i].mult)
            return "too large";
        *bytes = v * units[i].mult;
        return NULL;
    }
    return "unknown unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, or %)";
}

const char *config_parse_duration(const char *s, uint64_t *seconds)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {{"", 1}, {"s", 1}, {"m", 60}, {"h", 3600}, {"d", 86400}, {"w", 604800}};
    uint64_t v;
    const char *end;
    const char *why = digits(s, &v, &end);
    if (why)
        return why;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].unit) != 0)
            continue;
        /* A hundred years is plenty; beyond it milliseconds would overflow somewhere. */
        if (v > 3153600000ULL / units[i].mult)
            return "too long (at most 100 years)";
        *seconds = v * units[i].mult;
        return NULL;
    }
    return "unknown unit (s, m, h, d, w)";
}

static int size_field(const diag_t *d, const char *field, const json_t *v, uint64_t *bytes,
                      uint32_t *pct)
{
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 1)
            return diag_fail(d, field, "must be at least 1 byte");
        *bytes = (uint64_t)json_integer_value(v);
        if (pct)
            *pct = 0;
        return 0;
    }
    if (!json_is_string(v))
        return diag_fail(d, field, "expected a size (\"50GiB\", \"80%%\" or bytes)");
    char q[80];
    const char *s = json_string_value(v);
    const char *why = config_parse_size(s, bytes, pct);
    if (why)
        return diag_fail(d, field, "%s: %s", diag_quote(q, sizeof q, s, strlen(s)), why);
    if (*bytes == 0 && (!pct || *pct == 0))
        return diag_fail(d, field, "must be at least 1 byte");
    return 0;
}

static int protect_field(config_t *c, const diag_t *d, const json_t *v)
{
    char field[64], q[80];
    if (!json_is_array(v))
        return diag_fail(d, "retention.protect", "expected an array of patterns");
    size_t n = json_array_size(v);
    if (n > PROTECT_MAX)
        return diag_fail(d, "retention.protect", "at most %d patterns", PROTECT_MAX);
    config_retention_free(c);
    c->retention_protect = calloc(n ? n : 1, sizeof *c->retention_protect);
    if (!c->retention_protect)
        return diag_oom(d);
    for (size_t i = 0; i < n; i++) {
        const json_t *p = json_array_get(v, i);
        const char *why = NULL;
        snprintf(field, sizeof field, "retention.protect[%zu]", i);
        if (!json_is_string(p))
            return diag_fail(d, field, "expected a string (\"UPSTREAM/REPOSITORY\" pattern)");
        const char *s = json_string_value(p);
        if (!glob_valid(s, &why))
            return diag_fail(d, field, "%s: %s", diag_quote(q, sizeof q, s, strlen(s)), why);
        if (!strchr(s, '/'))
            return diag_fail(d, field, "%s: expected UPSTREAM/REPOSITORY (e.g. docker.io/acme/**)",
                             diag_quote(q, sizeof q, s, strlen(s)));
        c->retention_protect[i] = strdup(s);
        if (!c->retention_protect[i])
            return diag_oom(d);
        c->retention_nprotect++;
    }
    return 0;
}

int config_retention_json(config_t *c, const diag_t *d, const json_t *v)
{
    char field[128], q[80];
    if (!json_is_object(v))
        return diag_fail(d, "retention", "expected an object");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val)
    {
        int rc;
        diag_quote(q, sizeof q, key, strlen(key));
        q[strlen(q) - 1] = '\0'; /* the path reads better without the quotes */
        snprintf(field, sizeof field, "retention.%s", q + 1);
        if (strcmp(key, "max_size") == 0) {
            rc = size_field(d, "retention.max_size", val, &c->retention_max_size,
                            &c->retention_max_size_pct);
        } else if (strcmp(key, "low_watermark") == 0) {
            uint64_t b = 0;
            uint32_t pct = 0;
            rc = json_is_string(val) ? size_field(d, "retention.low_watermark", val, &b, &pct)
                                     : diag_fail(d, "retention.low_watermark",
                                                 "expected a percentage of max_size (\"90%%\")");
            if (rc == 0 && pct == 0)
                rc = diag_fail(d, "retention.low_watermark",
                               "expected a percentage of max_size (\"90%%\")");
            c->retention_low_watermark_pct = pct;
        } else if (strcmp(key, "max_unused") == 0) {
            const char *why = "expected a duration (\"30d\", \"12h\") or seconds";
            if (json_is_integer(val) && json_integer_value(val) > 0 &&
                json_integer_value(val) <= 3153600000LL) {
                c->retention_max_unused_s = (uint64_t)json_integer_value(val);
                why = NULL;
            } else if (json_is_string(val)) {
                why = config_parse_duration(json_string_value(val), &c->retention_max_unused_s);
                if (!why && c->retention_max_unused_s == 0)
                    why = "must be longer than 0";
            }
            rc = why ? diag_fail(d, "retention.max_unused", "%s", why) : 0;
        } else if (strcmp(key, "protect") == 0) {
            rc = protect_field(c, d, val);
        } else {
            rc = diag_fail(d, field,
                           "unknown field (retention has \"max_size\", \"low_watermark\", "
                           "\"max_unused\", \"protect\")");
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

int config_disk_full_json(config_t *c, const diag_t *d, const json_t *v)
{
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (s && strcmp(s, "fail") == 0)
        c->disk_full_pass_through = false;
    else if (s && strcmp(s, "pass_through") == 0)
        c->disk_full_pass_through = true;
    else
        return diag_fail(d, "on_disk_full", "expected \"fail\" or \"pass_through\"");
    return 0;
}

void config_retention_free(config_t *c)
{
    for (size_t i = 0; i < c->retention_nprotect; i++)
        free(c->retention_protect[i]);
    free(c->retention_protect);
    c->retention_protect = NULL;
    c->retention_nprotect = 0;
}
