/* The policy: rules compiled from the configuration, and the decision over one request
 * (policy.h has the stages). Refusals first (deny, require_digest, deny_tags, then the image
 * checks), then what to serve (a pin, a soaking tag's previous digest). The texts a refused
 * client reads are written here too; the log lines in policy_text.c. */
#include "policy/policy.h"

#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/glob.h"
#include "common/sbuf.h"

#define MS_PER_DAY 86400000LL

typedef struct prule {
    const config_policy_rule_t *cfg; /* borrowed */
    char *match;                     /* owned; normalised */
    regex_t *re;                     /* owned; cfg->n_deny_tags compiled regexes */
    size_t nre;
} prule_t;

struct policy {
    const config_t *cfg;
    prule_t *rules;
    size_t n;
};

/* ---- Building -------------------------------------------------------------------------- */

/* The match a name is compared with: the upstream part spelled as the configuration names it
 * (aliases such as index.docker.io, case), and a literal one-component Docker Hub repository
 * as library/NAME, as the router normalises requests. */
static char *normalise_match(const config_t *cfg, const char *m)
{
    size_t first = strcspn(m, "/");
    const config_upstream_t *u = strcspn(m, "*?") < first ? NULL
                                                          : config_upstream_find(cfg, m, first);
    const char *rest = m[first] ? m + first + 1 : "";
    const char *host = u ? u->name : NULL;
    bool lib = u && u->dockerhub && m[first] && !strchr(rest, '/') && !strpbrk(rest, "*?");
    size_t cap = strlen(m) + 16 + (host ? strlen(host) : 0);
    char *out = malloc(cap);
    if (!out)
        return NULL;
    if (!host)
        snprintf(out, cap, "%s", m);
    else
        snprintf(out, cap, "%s%s%s%s", host, m[first] ? "/" : "", lib ? "library/" : "", rest);
    return out;
}

static int compile_rule(prule_t *r, const config_t *cfg, size_t i, char *err, size_t errlen)
{
    const char *why = NULL;
    if (!glob_valid(r->cfg->match, &why)) {
        snprintf(err, errlen, "policy[%zu].match: not a usable glob: %s", i, why);
        return WE_CONFIG;
    }
    r->match = normalise_match(cfg, r->cfg->match);
    r->re = calloc(r->cfg->n_deny_tags ? r->cfg->n_deny_tags : 1, sizeof *r->re);
    if (!r->match || !r->re)
        return -ENOMEM;
    for (size_t j = 0; j < r->cfg->n_deny_tags; j++) {
        int rc = regcomp(&r->re[j], r->cfg->deny_tags[j], REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char text[128];
            regerror(rc, &r->re[j], text, sizeof text);
            snprintf(err, errlen, "policy[%zu].deny_tags[%zu]: invalid regex: %s", i, j, text);
            return WE_CONFIG;
        }
        r->nre++;
    }
    return 0;
}

int policy_create(policy_t **out, const config_t *cfg, char *err, size_t errlen)
{
    int rc = -ENOMEM;
    policy_t *p = calloc(1, sizeof *p);
    if (!p)
        goto fail;
    p->cfg = cfg;
    if (cfg->n_policy) {
        p->rules = calloc(cfg->n_policy, sizeof *p->rules);
        if (!p->rules)
            goto fail;
    }
    for (size_t i = 0; i < cfg->n_policy; i++) {
        p->n++;
        p->rules[i].cfg = &cfg->policy[i];
        if ((rc = compile_rule(&p->rules[i], cfg, i, err, errlen)) < 0)
            goto fail;
    }
    *out = p;
    return 0;
fail:
    if (rc == -ENOMEM && err && errlen)
        snprintf(err, errlen, "policy: out of memory");
    policy_free(p);
    return rc;
}

void policy_free(policy_t *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        for (size_t j = 0; j < p->rules[i].nre; j++)
            regfree(&p->rules[i].re[j]);
        free(p->rules[i].re);
        free(p->rules[i].match);
    }
    free(p->rules);
    free(p);
}

/* ---- Lookups ---------------------------------------------------------------------------- */

int policy_match(const policy_t *p, const char *upstream, const char *repo)
{
    char name[REF_NAME_MAX * 2 + 4];
    if (!p || !upstream || !repo)
        return -1;
    int n = snprintf(name, sizeof name, "%s/%s", upstream, repo);
    if (n < 0 || (size_t)n >= sizeof name)
        return -1;
    for (size_t i = 0; i < p->n; i++)
        if (glob_match(p->rules[i].match, name))
            return (int)i;
    return -1;
}

size_t policy_rules(const policy_t *p)
{
    return p ? p->n : 0;
}

const config_policy_rule_t *policy_rule(const policy_t *p, size_t i)
{
    return i < p->n ? p->rules[i].cfg : NULL;
}

const char *policy_rule_match(const policy_t *p, size_t i)
{
    return i < p->n ? p->rules[i].match : NULL;
}

static bool has_glob(const char *s)
{
    return strpbrk(s, "*?") != NULL;
}

int policy_shadowed_by(const policy_t *p, size_t i)
{
    if (!p || i >= p->n)
        return -1;
    const char *m = p->rules[i].match;
    for (size_t k = 0; k < i; k++) {
        const char *e = p->rules[k].match;
        size_t el = strlen(e);
        if (strcmp(e, "**") == 0 || strcmp(e, m) == 0)
            return (int)k;
        if (!has_glob(m) && glob_match(e, m))
            return (int)k;
        /* PREFIX/ ** covers every pattern that starts with the literal PREFIX/. */
        if (el > 3 && strcmp(e + el - 3, "/**") == 0) {
            size_t pl = el - 2; /* "PREFIX/" */
            if (strncmp(e, m, pl) == 0 && !memchr(e, '*', pl) && !memchr(e, '?', pl))
                return (int)k;
        }
    }
    return -1;
}

void policy_pins_each(const policy_t *p,
                      int (*fn)(void *arg, size_t rule, const char *match, const char *tag,
                                const char *digest),
                      void *arg)
{
    for (size_t i = 0; p && i < p->n; i++) {
        const config_policy_rule_t *r = p->rules[i].cfg;
        for (size_t j = 0; j < r->n_pins; j++)
            if (fn(arg, i, p->rules[i].match, r->pins[j].tag, r->pins[j].digest))
                return;
    }
}

/* ---- The refusal texts ------------------------------------------------------------------- */

/* Bytes as a person reads them: decimal units, three significant digits ("2.15GB"). */
static void human_size(uint64_t bytes, char *out, size_t len)
{
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1000.0 && u + 1 < sizeof units / sizeof units[0]) {
        v /= 1000.0;
        u++;
    }
    snprintf(out, len, "%.3g%s", v, units[u]);
}

static void utc_date(int64_t ms, char *out, size_t len)
{
    time_t t = (time_t)(ms / 1000 - (ms % 1000 < 0));
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "(unrepresentable date)");
}

/* Writes the client's text for the refusal d->reason of rule c: what is refused, by which rule
 * (numbered from 1, as people count), and how to comply; then the rule's own message. */
static void refusal_text(policy_decision_t *d, const config_policy_rule_t *c,
                         const policy_request_t *q, size_t re)
{
    sbuf_t b;
    char x[32], y[32], when[40];
    const char *digest = d->serve ? d->serve : q->digest ? q->digest : "";
    sbuf_init(&b, d->message, sizeof d->message);
    switch (d->reason) {
    case POLICY_REASON_REPO:
        sbuf_printf(&b,
                    "repository %s/%s is denied by policy rule %d (%s): use an allowed "
                    "repository",
                    q->upstream, q->repo, d->rule + 1, d->match);
        break;
    case POLICY_REASON_BY_TAG:
        sbuf_printf(&b,
                    "pulls by tag (%s:%s) are not allowed by policy rule %d (%s): pull by "
                    "digest (%s@sha256:...)",
                    q->repo, q->tag, d->rule + 1, d->match, q->repo);
        break;
    case POLICY_REASON_TAG:
        sbuf_printf(&b,
                    "tag %s is not allowed by policy rule %d (%s, deny_tags %s): pull a "
                    "version tag or @sha256:...",
                    q->tag, d->rule + 1, d->match, c->deny_tags[re]);
        break;
    case POLICY_REASON_SIZE:
        human_size(q->image_bytes, x, sizeof x);
        human_size(c->max_image_bytes, y, sizeof y);
        sbuf_printf(&b,
                    "image %s/%s@%s is %s (%llu bytes), over the %s (%llu bytes) allowed by "
                    "policy rule %d (%s): use a smaller image",
                    q->upstream, q->repo, digest, x, (unsigned long long)q->image_bytes, y,
                    (unsigned long long)c->max_image_bytes, d->rule + 1, d->match);
        break;
    case POLICY_REASON_AGE:
        utc_date(q->created_ms, when, sizeof when);
        sbuf_printf(&b,
                    "image %s/%s@%s was created %s, %lld days ago, more than the %u days "
                    "allowed by policy rule %d (%s): use a more recent build",
                    q->upstream, q->repo, digest, when,
                    (long long)((q->now_ms - q->created_ms) / MS_PER_DAY),
                    (unsigned)c->max_image_age_days, d->rule + 1, d->match);
        break;
    case POLICY_REASON_NONE:
        break;
    }
    if (c->message)
        sbuf_printf(&b, "; %s", c->message);
}

/* ---- Deciding --------------------------------------------------------------------------- */

static const char *config_pin(const config_policy_rule_t *r, const char *tag)
{
    for (size_t j = 0; j < r->n_pins; j++)
        if (strcmp(r->pins[j].tag, tag) == 0)
            return r->pins[j].digest;
    return NULL;
}

/* The refusals that need only the name and the tag. Returns the reason and, for deny_tags,
 * the regex's index in *re. */
static enum policy_reason name_refusal(const prule_t *r, const policy_request_t *q, size_t *re)
{
    bool by_tag = q->object == POLICY_MANIFEST && q->tag;
    if (r->cfg->deny)
        return POLICY_REASON_REPO;
    if (by_tag && r->cfg->require_digest)
        return POLICY_REASON_BY_TAG;
    for (size_t j = 0; by_tag && j < r->nre; j++) {
        if (regexec(&r->re[j], q->tag, 0, NULL, 0) == 0) {
            *re = j;
            return POLICY_REASON_TAG;
        }
    }
    return POLICY_REASON_NONE;
}

/* By tag: what to serve. A pin (the config's over a stored one) whatever the upstream says;
 * else, under soak, the previous digest until the new one has been seen for soak_s. */
static void choose_serve(const prule_t *r, const policy_request_t *q, policy_decision_t *d)
{
    const char *cfgpin = r ? config_pin(r->cfg, q->tag) : NULL;
    d->serve = q->digest;
    if (cfgpin) {
        d->serve = cfgpin;
        d->pin = POLICY_PIN_CONFIG;
        d->pin_overrides_stored = q->stored_pin && strcmp(q->stored_pin, cfgpin) != 0;
        return;
    }
    if (q->stored_pin) {
        d->serve = q->stored_pin;
        d->pin = POLICY_PIN_STORED;
        return;
    }
    if (!r)
        return;
    d->freeze = r->cfg->freeze;
    if (!r->cfg->soak_s)
        return;
    d->soak = true;
    if (!q->digest) {
        d->needs |= POLICY_NEED_DIGEST;
        return;
    }
    if (!q->prev_digest) {
        d->soak_first = true;
        return;
    }
    if (strcmp(q->prev_digest, q->digest) == 0)
        return;
    int64_t first = q->first_seen_ms;
    if (first <= 0 || first > q->now_ms)
        first = q->now_ms;
    int64_t soak_ms = (int64_t)r->cfg->soak_s * 1000;
    int64_t seen_for = q->now_ms - first;
    if (seen_for < soak_ms) {
        d->serve = q->prev_digest;
        d->soak_hold = true;
        d->soak_left_ms = soak_ms - seen_for;
    } else {
        d->soak_done = true;
    }
}

/* max_image_bytes and max_image_age_days over the manifest about to be served (an index is
 * judged per platform manifest: each is checked when it is served). */
static enum policy_reason image_refusal(const prule_t *r, const policy_request_t *q,
                                        const char *serve, policy_decision_t *d)
{
    const config_policy_rule_t *c = r->cfg;
    if (!c->max_image_bytes && !c->max_image_age_days)
        return POLICY_REASON_NONE;
    unsigned want = POLICY_NEED_IMAGE | (c->max_image_age_days ? POLICY_NEED_CREATED : 0);
    if (!serve || !q->have_image) {
        d->needs |= want;
        return POLICY_REASON_NONE;
    }
    if (q->is_index)
        return POLICY_REASON_NONE;
    if (c->max_image_bytes && q->image_bytes > c->max_image_bytes)
        return POLICY_REASON_SIZE;
    if (!c->max_image_age_days)
        return POLICY_REASON_NONE;
    if (!q->have_created) {
        d->needs |= POLICY_NEED_CREATED;
        return POLICY_REASON_NONE;
    }
    if (q->created_known && q->now_ms - q->created_ms > (int64_t)c->max_image_age_days * MS_PER_DAY)
        return POLICY_REASON_AGE;
    return POLICY_REASON_NONE;
}

void policy_decide(const policy_t *p, const policy_request_t *q, policy_decision_t *d)
{
    memset(d, 0, sizeof *d);
    d->rule = -1;
    d->seen = q->digest;
    bool by_tag = q->object == POLICY_MANIFEST && q->tag;
    int i = policy_match(p, q->upstream, q->repo);
    const prule_t *r = i >= 0 ? &p->rules[i] : NULL;
    if (r) {
        d->rule = i;
        d->match = r->cfg->match;
    }
    size_t re = 0;
    enum policy_reason why = r ? name_refusal(r, q, &re) : POLICY_REASON_NONE;
    if (why == POLICY_REASON_NONE || r->cfg->audit) {
        if (by_tag)
            choose_serve(r, q, d);
        else
            d->serve = q->digest;
        if (r && q->object == POLICY_MANIFEST) {
            enum policy_reason img = image_refusal(r, q, d->serve, d);
            if (why == POLICY_REASON_NONE)
                why = img;
        }
    }
    if (why == POLICY_REASON_NONE)
        return;
    d->reason = why;
    refusal_text(d, r->cfg, q, re);
    if (r->cfg->audit) {
        d->audited = true;
        return;
    }
    d->verdict = POLICY_DENY;
    d->serve = NULL;
    d->needs = 0;
    d->pin = POLICY_PIN_NONE;
    d->freeze = d->soak = d->soak_hold = d->soak_first = d->soak_done = false;
}

bool policy_decision_notable(const policy_decision_t *d)
{
    return d->verdict == POLICY_DENY || d->audited || d->pin != POLICY_PIN_NONE || d->freeze ||
           d->soak_hold || d->soak_first || d->soak_done;
}
