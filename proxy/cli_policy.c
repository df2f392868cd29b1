/* `winch policy explain [--config FILE] [--cache-dir DIR] [--json] REF...`: which rule decides
 * for each reference and why, with the very text a refused client gets, without starting a
 * server: the tool a reviewer runs on a policy change. It reads the configuration (the same
 * checks as winch serve: a bad rule is the same error) and, when the cache exists, the stored
 * pins and each tag's last known digest and soak history, read beside a running winch.
 *
 * Exit status: 0 when every reference is allowed (audited refusals included), 1 when one is
 * refused, 2 for a usage or configuration error. */
#include "proxy/cli_policy.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"
#include "common/glob.h"
#include "common/timeutil.h"
#include "proxy/app.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"

/* ---- The shared context ------------------------------------------------------------------ */

int cli_pctx_open(cli_pctx_t *x, const cli_common_t *o, bool need_cache)
{
    char err[512];
    memset(x, 0, sizeof *x);
    int rc = cli_load_config(o, &x->cfg);
    if (rc)
        return rc;
    if (policy_create(&x->policy, x->cfg, err, sizeof err) < 0) {
        fprintf(stderr, "winch: %s\n", err);
        return 2;
    }
    if (uv_loop_init(&x->loop) < 0) {
        fprintf(stderr, "winch: cannot start an event loop\n");
        return 1;
    }
    x->loop_ready = true;
    if (need_cache)
        return cli_open_cache(&x->loop, x->cfg, &x->cache);
    struct stat st;
    if (stat(x->cfg->cache_dir, &st) != 0 && errno == ENOENT)
        return 0; /* no cache yet: the configuration alone decides */
    cache_opts_t co = {.loop = &x->loop,
                       .dir = x->cfg->cache_dir,
                       .map_size = x->cfg->index_map_size,
                       .shared = true};
    rc = cache_open(&x->cache, &co);
    if (rc == -ENOENT) {
        x->cache = NULL; /* no cache yet: the configuration alone decides */
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "winch: cache %s: %s\n", x->cfg->cache_dir, err_str(rc));
        x->cache = NULL;
        return 1;
    }
    return 0;
}

void cli_pctx_wait(cli_pctx_t *x, const bool *flag)
{
    while (!*flag)
        uv_run(&x->loop, UV_RUN_ONCE);
}

void cli_pctx_close(cli_pctx_t *x)
{
    if (x->cache) {
        cache_close(x->cache);
        x->cache = NULL;
    }
    if (x->loop_ready) {
        uv_run(&x->loop, UV_RUN_DEFAULT);
        uv_loop_close(&x->loop);
        x->loop_ready = false;
    }
    policy_free(x->policy);
    config_free(x->cfg);
    x->policy = NULL;
    x->cfg = NULL;
}

int64_t cli_policy_now_ms(void)
{
    return time_wall_ms() + app_test_clock_offset_ms();
}

/* ---- explain ----------------------------------------------------------------------------- */

/* Everything explain knows about one reference. */
typedef struct explained {
    policy_ref_t ref;
    char name[REF_NAME_MAX * 2 + REF_DIGEST_MAX + 8]; /* as printed */
    policy_request_t q;
    policy_decision_t d;
    bool have_pin;
    cache_pin_t pin;
    bool have_known; /* the cache knows the tag's last upstream digest */
    char known[REF_DIGEST_MAX + 1];
    bool have_hist;
    cache_tag_history_t hist;
} explained_t;

static void decide(cli_pctx_t *x, explained_t *e)
{
    policy_ref_t *r = &e->ref;
    e->q = (policy_request_t){.upstream = r->upstream->name,
                              .repo = r->repo,
                              .object = POLICY_MANIFEST,
                              .now_ms = cli_policy_now_ms()};
    snprintf(e->name, sizeof e->name, "%s/%s%s%s", r->upstream->name, r->repo,
             r->tag[0] ? ":" : "@", r->tag[0] ? r->tag : r->digest);
    if (!r->tag[0]) {
        e->q.digest = r->digest;
        policy_decide(x->policy, &e->q, &e->d);
        return;
    }
    e->q.tag = r->tag;
    if (x->cache && cache_pin_get(x->cache, r->upstream->name, r->repo, r->tag, &e->pin) == 0) {
        e->have_pin = true;
        e->q.stored_pin = e->pin.digest;
    }
    policy_decide(x->policy, &e->q, &e->d);
    int64_t checked;
    if (e->d.verdict != POLICY_ALLOW || e->d.pin != POLICY_PIN_NONE || !x->cache ||
        cache_tag_get(x->cache, r->upstream->name, r->repo, r->tag, e->known, &checked) != 0)
        return;
    /* The tag as winch last saw it: what a pull now would be served (soak included). */
    e->have_known = true;
    e->q.digest = e->known;
    if (e->d.soak &&
        cache_tag_history_get(x->cache, r->upstream->name, r->repo, r->tag, &e->hist) == 0) {
        e->have_hist = true;
        if (e->hist.served[0])
            e->q.prev_digest = e->hist.served;
        e->q.first_seen_ms = strcmp(e->hist.seen, e->known) == 0 ? e->hist.seen_first_ms : 0;
    }
    policy_decide(x->policy, &e->q, &e->d);
}

/* Rules after the deciding one that match the name too: never consulted for it. */
static void later_matches(const cli_pctx_t *x, const explained_t *e, char *out, size_t len)
{
    char name[REF_NAME_MAX * 2 + 4];
    size_t n = 0;
    out[0] = '\0';
    snprintf(name, sizeof name, "%s/%s", e->ref.upstream->name, e->ref.repo);
    for (size_t i = (size_t)e->d.rule + 1; i < policy_rules(x->policy) && n + 1 < len; i++) {
        const char *m = policy_rule_match(x->policy, i);
        if (!glob_match(m, name))
            continue;
        int w = snprintf(out + n, len - n, "%s%zu (%s)", n ? ", " : "", i + 1,
                         policy_rule(x->policy, i)->match);
        n += w > 0 ? (size_t)w : 0;
    }
}

static void image_checks(const config_policy_rule_t *r, char *out, size_t len)
{
    char sz[32];
    cli_size(r->max_image_bytes, sz, sizeof sz);
    if (r->max_image_bytes && r->max_image_age_days)
        snprintf(out, len, "at most %s (%llu bytes), built in the last %u days", sz,
                 (unsigned long long)r->max_image_bytes, (unsigned)r->max_image_age_days);
    else if (r->max_image_bytes)
        snprintf(out, len, "at most %s (%llu bytes)", sz, (unsigned long long)r->max_image_bytes);
    else
        snprintf(out, len, "built in the last %u days", (unsigned)r->max_image_age_days);
}

static void print_serving(const explained_t *e, const config_policy_rule_t *r, int64_t now)
{
    const policy_decision_t *d = &e->d;
    char ago[64];
    if (d->pin == POLICY_PIN_CONFIG) {
        printf("  serves     %s: pinned by the configuration (rule %d), whatever the "
               "upstream's tag says\n",
               d->serve, d->rule + 1);
        if (d->pin_overrides_stored)
            printf("  note       a stored pin (%s) is overridden by the configuration\n",
                   e->pin.digest);
    } else if (d->pin == POLICY_PIN_STORED) {
        cli_ago(e->pin.set_ms, now, ago, sizeof ago);
        printf("  serves     %s: stored pin, set %s with winch pin, whatever the upstream's tag "
               "says\n",
               d->serve, ago);
    }
    if (r && r->freeze && d->pin == POLICY_PIN_NONE)
        printf("  freeze     a cached tag is never revalidated\n");
    if (r && r->soak_s && d->pin == POLICY_PIN_NONE) {
        printf("  soak       a new upstream digest for the tag is served once winch has seen it "
               "for %us; until then the one served before\n",
               (unsigned)r->soak_s);
        if (d->soak_hold)
            printf("  now        serving %s; the upstream's %s is served in %llds\n", d->serve,
                   d->seen, (long long)((d->soak_left_ms + 999) / 1000));
        else if (e->have_known)
            printf("  now        serving %s\n", d->serve);
    } else if (e->have_known && d->pin == POLICY_PIN_NONE) {
        printf("  cached     %s (the tag's digest when winch last asked the upstream)\n", e->known);
    }
    if (r && (r->max_image_bytes || r->max_image_age_days)) {
        char checks[160];
        image_checks(r, checks, sizeof checks);
        printf("  image      checked when pulled: %s (an index: each platform manifest)%s\n",
               checks, r->audit ? "; audit: refusals are logged, not enforced" : "");
    }
}

static void print_text(const cli_pctx_t *x, const explained_t *e)
{
    const policy_decision_t *d = &e->d;
    const config_policy_rule_t *r = d->rule >= 0 ? policy_rule(x->policy, (size_t)d->rule) : NULL;
    char later[1024];
    printf("%s\n", e->name);
    if (!r) {
        printf("  rule       none matches\n");
    } else {
        later_matches(x, e, later, sizeof later);
        printf("  rule       %d (%s) decides, with every field it carries\n", d->rule + 1,
               r->match);
        if (later[0])
            printf("  not used   later rules that match too: %s\n", later);
    }
    if (d->verdict == POLICY_DENY)
        printf("  decision   refused: 403 DENIED\n  message    %s\n", d->message);
    else if (d->audited)
        printf("  decision   allowed (audit: the refusal is logged, not enforced)\n"
               "  would say  %s\n",
               d->message);
    else
        printf("  decision   allowed%s\n", r && r->allow ? " (allow: true)" : "");
    if (d->verdict == POLICY_ALLOW)
        print_serving(e, r, cli_policy_now_ms());
}

static json_t *to_json(const cli_pctx_t *x, const explained_t *e)
{
    const policy_decision_t *d = &e->d;
    static const char *const reasons[] = {
        NULL, "deny", "require_digest", "deny_tags", "max_image_bytes", "max_image_age_days"};
    static const char *const pins[] = {NULL, "config", "stored"};
    json_t *o = json_object();
    json_t *needs = json_array();
    if (d->needs & POLICY_NEED_IMAGE)
        json_array_append_new(needs, json_string("image"));
    if (d->needs & POLICY_NEED_CREATED)
        json_array_append_new(needs, json_string("created"));
    json_object_set_new(o, "reference", json_string(e->name));
    json_object_set_new(o, "upstream", json_string(e->ref.upstream->name));
    json_object_set_new(o, "repository", json_string(e->ref.repo));
    json_object_set_new(o, "tag", e->ref.tag[0] ? json_string(e->ref.tag) : json_null());
    json_object_set_new(o, "digest", e->ref.digest[0] ? json_string(e->ref.digest) : json_null());
    json_object_set_new(o, "rule", d->rule >= 0 ? json_integer(d->rule + 1) : json_null());
    json_object_set_new(o, "match", d->match ? json_string(d->match) : json_null());
    json_object_set_new(o, "decision",
                        json_string(d->verdict == POLICY_DENY ? "refused" : "allowed"));
    json_object_set_new(o, "audited", json_boolean(d->audited));
    json_object_set_new(o, "reason",
                        reasons[d->reason] ? json_string(reasons[d->reason]) : json_null());
    json_object_set_new(o, "message", d->message[0] ? json_string(d->message) : json_null());
    json_object_set_new(o, "serves", d->serve ? json_string(d->serve) : json_null());
    json_object_set_new(o, "pin", pins[d->pin] ? json_string(pins[d->pin]) : json_null());
    json_object_set_new(o, "soak_holds", json_boolean(d->soak_hold));
    json_object_set_new(o, "freeze", json_boolean(d->freeze));
    json_object_set_new(o, "checked_when_pulled", needs);
    (void)x;
    return o;
}

static int explain(int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    cli_common_t o;
    cli_pctx_t x = {0};
    int status = 2;
    explained_t *e = calloc(1, sizeof *e);
    json_t *all = json_array();
    if (!rest || !e || !all) {
        fprintf(stderr, "winch: out of memory\n");
        goto out;
    }
    if (cli_common_parse(argc, argv, rest, &o) != 0)
        goto out;
    for (int i = 1; i < o.argc; i++) {
        if (o.argv[i][0] == '-') {
            fprintf(stderr, "winch policy explain: unknown option %s\n", o.argv[i]);
            usage_error("policy");
            goto out;
        }
    }
    if (o.argc < 2) {
        usage_error("policy");
        goto out;
    }
    if ((status = cli_pctx_open(&x, &o, false)) != 0)
        goto out;
    for (size_t i = 0; i < policy_rules(x.policy) && !o.json; i++) {
        int k = policy_shadowed_by(x.policy, i);
        if (k >= 0)
            printf("warning: rule %zu (%s) is never used: rule %d (%s) comes first and matches "
                   "everything it matches\n",
                   i + 1, policy_rule(x.policy, i)->match, k + 1,
                   policy_rule(x.policy, (size_t)k)->match);
    }
    for (int i = 1; i < o.argc; i++) {
        char err[256];
        memset(e, 0, sizeof *e);
        if (policy_ref_parse(x.cfg, o.argv[i], &e->ref, err, sizeof err) != 0) {
            fprintf(stderr, "winch policy explain: %s\n", err);
            status = 2;
            goto out;
        }
        decide(&x, e);
        if (e->d.verdict == POLICY_DENY)
            status = 1;
        if (o.json)
            json_array_append_new(all, to_json(&x, e));
        else
            print_text(&x, e);
    }
    if (o.json) {
        char *text = json_dumps(all, JSON_INDENT(2));
        if (text)
            printf("%s\n", text);
        free(text);
    }
out:
    cli_pctx_close(&x);
    json_decref(all);
    free(e);
    free(rest);
    return status;
}

int cli_policy(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "explain") == 0)
        return explain(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage_print_cmd(stdout, "policy");
            return 0;
        }
    }
    usage_error("policy");
    return 2;
}
