/* policy_decide as a pure function: a table of requests against one set of rules that uses every
 * field, with the precedence rules (first match decides; refusals before pins; config pins over
 * stored pins; audit reports without enforcing; digests never refused by deny_tags; an index is
 * judged per platform manifest), and the texts a refused client reads. */
#include "policy/policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

#define NOW 1800000000000LL /* 2027-01-15, the policy clock of every case */
#define DAY 86400000LL

#define DA "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define DB "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define DC "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
#define DN "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define DN2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"

static const char rules_json[] =
    "{\"upstreams\": ["
    "  {\"name\": \"docker.io\", \"url\": \"http://127.0.0.1:1\"},"
    "  {\"name\": \"ghcr.io\", \"url\": \"http://127.0.0.1:2\"},"
    "  {\"name\": \"quay.io\", \"url\": \"http://127.0.0.1:3\"}],"
    " \"policy\": ["
    /* 1 */ "  {\"match\": \"docker.io/library/busybox\", \"pin\": {\"stable\": \"" DA "\"},"
    "   \"deny_tags\": [\"^latest$\"], \"message\": \"pin a version: see wiki/images\"},"
    /* 2 */ "  {\"match\": \"docker.io/library/node\", \"soak_s\": 86400},"
    /* 3 */ "  {\"match\": \"docker.io/library/*\", \"deny_tags\": [\"^latest$\", \"-rc[0-9]*$\"]},"
    /* 4 */ "  {\"match\": \"docker.io/acme/**\", \"allow\": true},"
    /* 5 */ "  {\"match\": \"ghcr.io/**\", \"require_digest\": true},"
    /* 6 */ "  {\"match\": \"quay.io/frozen/**\", \"freeze\": true},"
    /* 7 */ "  {\"match\": \"docker.io/big/*\", \"max_image_bytes\": 1000, "
    "   \"max_image_age_days\": 365},"
    /* 8 */ "  {\"match\": \"docker.io/audit/*\", \"max_image_bytes\": 1000,"
    "   \"deny_tags\": [\"^latest$\"], \"audit\": true},"
    /* 9 */ "  {\"match\": \"quay.io/**\", \"deny\": true, \"message\": \"quay is off limits\"},"
    /* 10 */ "  {\"match\": \"**\", \"deny\": true}"
    "]}";

static config_t *cfg;
static policy_t *pol;

static void setup(const char *json)
{
    char err[512] = "";
    config_free(cfg);
    policy_free(pol);
    cfg = NULL;
    pol = NULL;
    if (config_from_json(&cfg, json, strlen(json), "t.json", err, sizeof err) != 0) {
        fprintf(stderr, "config: %s\n", err);
        CHECK(0);
    }
    if (policy_create(&pol, cfg, err, sizeof err) != 0) {
        fprintf(stderr, "policy: %s\n", err);
        CHECK(0);
    }
}

/* One case: the request, then what the decision must say. `expect` lists, separated by spaces:
 * allow|deny, rN (the deciding rule, numbered from 1; r- for none), and when they apply:
 * why=repo|bytag|tag|size|age, pin=config|stored, needs=digest+image+created, audit, freeze,
 * hold, first, done (the soak flags) and notable. Whatever is not listed must be off. */
typedef struct dcase {
    const char *what;
    policy_request_t q;
    const char *expect;
    const char *serve; /* NULL: must be NULL */
    const char *msg;   /* substring of the message, or NULL for an empty message */
} dcase_t;

#define MAN(repo_, tag_, digest_)                                                                  \
    .upstream = "docker.io", .repo = (repo_), .object = POLICY_MANIFEST, .tag = (tag_),            \
    .digest = (digest_), .now_ms = NOW
#define ON(up_, repo_, obj_, digest_)                                                              \
    .upstream = (up_), .repo = (repo_), .object = (obj_), .digest = (digest_), .now_ms = NOW

static const dcase_t cases[] = {
    /* deny_tags with the rule's message; refusals before pins; rules count from 1. */
    {"busybox:latest",
     {MAN("library/busybox", "latest", NULL)},
     "deny r1 why=tag notable",
     NULL,
     "tag latest is not allowed by policy rule 1 (docker.io/library/busybox, deny_tags ^latest$): "
     "pull a version tag or @sha256:...; pin a version: see wiki/images"},
    {"busybox:latest resolved",
     {MAN("library/busybox", "latest", DB)},
     "deny r1 why=tag notable",
     NULL,
     "tag latest"},
    {"busybox:latest stored pin",
     {MAN("library/busybox", "latest", NULL), .stored_pin = DB},
     "deny r1 why=tag notable",
     NULL,
     "tag latest"},
    /* Pins: config, stored, config over stored. */
    {"busybox:stable (config pin)",
     {MAN("library/busybox", "stable", NULL)},
     "allow r1 pin=config notable",
     DA,
     NULL},
    {"busybox:stable resolved elsewhere",
     {MAN("library/busybox", "stable", DC)},
     "allow r1 pin=config notable",
     DA,
     NULL},
    {"busybox:stable over stored pin",
     {MAN("library/busybox", "stable", NULL), .stored_pin = DB},
     "allow r1 pin=config notable",
     DA,
     NULL},
    {"busybox:1.36 stored pin",
     {MAN("library/busybox", "1.36", DC), .stored_pin = DB},
     "allow r1 pin=stored notable",
     DB,
     NULL},
    {"busybox:1.36 plain", {MAN("library/busybox", "1.36", DC)}, "allow r1", DC, NULL},
    {"busybox:1.36 unresolved", {MAN("library/busybox", "1.36", NULL)}, "allow r1", NULL, NULL},
    {"busybox by digest", {MAN("library/busybox", NULL, DC)}, "allow r1", DC, NULL},
    /* Soak. */
    {"node:20 unresolved", {MAN("library/node", "20", NULL)}, "allow r2 needs=digest", NULL, NULL},
    {"node:20 first digest", {MAN("library/node", "20", DN)}, "allow r2 first notable", DN, NULL},
    {"node:20 same digest",
     {MAN("library/node", "20", DN), .prev_digest = DN, .first_seen_ms = 1},
     "allow r2",
     DN,
     NULL},
    {"node:20 new digest, 1s old",
     {MAN("library/node", "20", DN2), .prev_digest = DN, .first_seen_ms = NOW - 1000},
     "allow r2 hold notable",
     DN,
     NULL},
    {"node:20 new digest, 23h59m old",
     {MAN("library/node", "20", DN2), .prev_digest = DN, .first_seen_ms = NOW - DAY + 60000},
     "allow r2 hold notable",
     DN,
     NULL},
    {"node:20 new digest, soaked",
     {MAN("library/node", "20", DN2), .prev_digest = DN, .first_seen_ms = NOW - DAY},
     "allow r2 done notable",
     DN2,
     NULL},
    {"node:20 first seen unknown",
     {MAN("library/node", "20", DN2), .prev_digest = DN},
     "allow r2 hold notable",
     DN,
     NULL},
    {"node:20 first seen in the future",
     {MAN("library/node", "20", DN2), .prev_digest = DN, .first_seen_ms = NOW + DAY},
     "allow r2 hold notable",
     DN,
     NULL},
    {"node:20 stored pin beats soak",
     {MAN("library/node", "20", DN2), .prev_digest = DN, .first_seen_ms = NOW, .stored_pin = DC},
     "allow r2 pin=stored notable",
     DC,
     NULL},
    /* First match decides: node's rule has no deny_tags; the library rule would refuse latest. */
    {"node:latest (first match)",
     {MAN("library/node", "latest", DN)},
     "allow r2 first notable",
     DN,
     NULL},
    {"alpine:latest",
     {MAN("library/alpine", "latest", NULL)},
     "deny r3 why=tag notable",
     NULL,
     "tag latest is not allowed by policy rule 3 (docker.io/library/*, deny_tags ^latest$)"},
    {"alpine:3.20-rc1",
     {MAN("library/alpine", "3.20-rc1", NULL)},
     "deny r3 why=tag notable",
     NULL,
     "deny_tags -rc[0-9]*$"},
    {"alpine:latest-rc not anchored",
     {MAN("library/alpine", "3-rc", NULL)},
     "deny r3 why=tag notable",
     NULL,
     "tag 3-rc"},
    {"alpine:3.20", {MAN("library/alpine", "3.20", DC)}, "allow r3", DC, NULL},
    {"alpine:mylatest (anchored)", {MAN("library/alpine", "mylatest", DC)}, "allow r3", DC, NULL},
    {"alpine by digest", {MAN("library/alpine", NULL, DC)}, "allow r3", DC, NULL},
    {"alpine blob", {ON("docker.io", "library/alpine", POLICY_BLOB, DC)}, "allow r3", DC, NULL},
    /* allow: stops the search before ** deny. */
    {"acme/app/x:latest", {MAN("acme/app/x", "latest", DC)}, "allow r4", DC, NULL},
    {"acme blob", {ON("docker.io", "acme/app", POLICY_BLOB, DC)}, "allow r4", DC, NULL},
    /* require_digest. */
    {"ghcr by tag",
     {.upstream = "ghcr.io", .repo = "x/y", .object = POLICY_MANIFEST, .tag = "1.0", .now_ms = NOW},
     "deny r5 why=bytag notable",
     NULL,
     "pulls by tag (x/y:1.0) are not allowed by policy rule 5 (ghcr.io/**): pull by digest "
     "(x/y@sha256:...)"},
    {"ghcr by digest", {ON("ghcr.io", "x/y", POLICY_MANIFEST, DC)}, "allow r5", DC, NULL},
    {"ghcr blob", {ON("ghcr.io", "x/y", POLICY_BLOB, DC)}, "allow r5", DC, NULL},
    {"ghcr tags list", {ON("ghcr.io", "x/y", POLICY_TAGS, NULL)}, "allow r5", NULL, NULL},
    /* freeze. */
    {"quay frozen by tag",
     {.upstream = "quay.io",
      .repo = "frozen/a",
      .object = POLICY_MANIFEST,
      .tag = "1",
      .now_ms = NOW},
     "allow r6 freeze notable",
     NULL,
     NULL},
    {"quay frozen by digest",
     {ON("quay.io", "frozen/a", POLICY_MANIFEST, DC)},
     "allow r6",
     DC,
     NULL},
    {"quay frozen blob", {ON("quay.io", "frozen/a", POLICY_BLOB, DC)}, "allow r6", DC, NULL},
    /* deny, on everything of the repository. */
    {"quay other by tag",
     {.upstream = "quay.io",
      .repo = "other/x",
      .object = POLICY_MANIFEST,
      .tag = "1",
      .now_ms = NOW},
     "deny r9 why=repo notable",
     NULL,
     "repository quay.io/other/x is denied by policy rule 9 (quay.io/**): use an allowed "
     "repository; quay is off limits"},
    {"quay other by digest",
     {ON("quay.io", "other/x", POLICY_MANIFEST, DC)},
     "deny r9 why=repo notable",
     NULL,
     "quay is off"},
    {"quay other blob",
     {ON("quay.io", "other/x", POLICY_BLOB, DC)},
     "deny r9 why=repo notable",
     NULL,
     "quay.io/other/x"},
    {"quay other tags",
     {ON("quay.io", "other/x", POLICY_TAGS, NULL)},
     "deny r9 why=repo notable",
     NULL,
     "quay.io/other/x"},
    {"quay other referrers",
     {ON("quay.io", "other/x", POLICY_REFERRERS, DC)},
     "deny r9 why=repo notable",
     NULL,
     "quay.io/other/x"},
    {"quay other with stored pin",
     {.upstream = "quay.io",
      .repo = "other/x",
      .object = POLICY_MANIFEST,
      .tag = "1",
      .stored_pin = DA,
      .now_ms = NOW},
     "deny r9 why=repo notable",
     NULL,
     "denied"},
    {"catch-all **",
     {MAN("other/thing", "1", DC)},
     "deny r10 why=repo notable",
     NULL,
     "policy rule 10 (**)"},
    /* Image size and age. */
    {"big:1 unresolved", {MAN("big/x", "1", NULL)}, "allow r7 needs=image+created", NULL, NULL},
    {"big:1 resolved, no image", {MAN("big/x", "1", DC)}, "allow r7 needs=image+created", DC, NULL},
    {"big:1 small, no config yet",
     {MAN("big/x", "1", DC), .have_image = true, .image_bytes = 1000},
     "allow r7 needs=created",
     DC,
     NULL},
    {"big:1 too big",
     {MAN("big/x", "1", DC), .have_image = true, .image_bytes = 1001},
     "deny r7 why=size notable",
     NULL,
     "image docker.io/big/x@" DC " is 1kB (1001 bytes), over the 1kB (1000 bytes) allowed by "
     "policy rule 7 (docker.io/big/*): use a smaller image"},
    {"big by digest too big",
     {ON("docker.io", "big/x", POLICY_MANIFEST, DC), .have_image = true, .image_bytes = 5000000000},
     "deny r7 why=size notable",
     NULL,
     "is 5GB (5000000000 bytes)"},
    {"big:1 too old",
     {MAN("big/x", "1", DC), .have_image = true, .image_bytes = 10, .have_created = true,
      .created_known = true, .created_ms = NOW - 400 * DAY},
     "deny r7 why=age notable",
     NULL,
     "was created 2025-12-11T08:00:00Z, 400 days ago, more than the 365 days allowed by policy "
     "rule 7 (docker.io/big/*): use a more recent build"},
    {"big:1 365 days exactly",
     {MAN("big/x", "1", DC), .have_image = true, .image_bytes = 10, .have_created = true,
      .created_known = true, .created_ms = NOW - 365 * DAY},
     "allow r7",
     DC,
     NULL},
    {"big:1 recent",
     {MAN("big/x", "1", DC), .have_image = true, .image_bytes = 10, .have_created = true,
      .created_known = true, .created_ms = NOW - 10 * DAY},
     "allow r7",
     DC,
     NULL},
    {"big:1 built in the future",
     {MAN("big/x", "1", DC), .have_image = true, .image_bytes = 10, .have_created = true,
      .created_known = true, .created_ms = NOW + 10 * DAY},
     "allow r7",
     DC,
     NULL},
    {"big:1 no created field",
     {MAN("big/x", "1", DC), .have_image = true, .image_bytes = 10, .have_created = true},
     "allow r7",
     DC,
     NULL},
    {"big:1 index (per platform)",
     {MAN("big/x", "1", DC), .have_image = true, .is_index = true, .image_bytes = 0},
     "allow r7",
     DC,
     NULL},
    {"big blob", {ON("docker.io", "big/x", POLICY_BLOB, DC)}, "allow r7", DC, NULL},
    /* Audit: refusals reported, never enforced; the first one is the one reported. */
    {"audit:latest",
     {MAN("audit/x", "latest", DC)},
     "allow r8 why=tag needs=image audit notable",
     DC,
     "tag latest is not allowed by policy rule 8"},
    {"audit:1 too big",
     {MAN("audit/x", "1", DC), .have_image = true, .image_bytes = 5000},
     "allow r8 why=size audit notable",
     DC,
     "over the 1kB"},
    {"audit:latest and too big",
     {MAN("audit/x", "latest", DC), .have_image = true, .image_bytes = 5000},
     "allow r8 why=tag audit notable",
     DC,
     "tag latest"},
    {"audit:1 fine",
     {MAN("audit/x", "1", DC), .have_image = true, .image_bytes = 10},
     "allow r8",
     DC,
     NULL},
};

/* The decision as an expectation string (see dcase_t). */
static void spec_of(const policy_decision_t *d, char *out, size_t len)
{
    static const char *const why[] = {"", "repo", "bytag", "tag", "size", "age"};
    static const char *const pin[] = {"", "config", "stored"};
    int n = snprintf(out, len, "%s r", d->verdict == POLICY_DENY ? "deny" : "allow");
    n += d->rule >= 0 ? snprintf(out + n, len - (size_t)n, "%d", d->rule + 1)
                      : snprintf(out + n, len - (size_t)n, "-");
    if (d->reason)
        n += snprintf(out + n, len - (size_t)n, " why=%s", why[d->reason]);
    if (d->pin)
        n += snprintf(out + n, len - (size_t)n, " pin=%s", pin[d->pin]);
    if (d->needs)
        n += snprintf(out + n, len - (size_t)n, " needs=%s%s%s%s%s",
                      d->needs & POLICY_NEED_DIGEST ? "digest" : "",
                      (d->needs & POLICY_NEED_DIGEST) && (d->needs & ~1u) ? "+" : "",
                      d->needs & POLICY_NEED_IMAGE ? "image" : "",
                      (d->needs & POLICY_NEED_IMAGE) && (d->needs & POLICY_NEED_CREATED) ? "+" : "",
                      d->needs & POLICY_NEED_CREATED ? "created" : "");
    const struct {
        bool on;
        const char *name;
    } flags[] = {{d->audited, "audit"},  {d->freeze, "freeze"},
                 {d->soak_hold, "hold"}, {d->soak_first, "first"},
                 {d->soak_done, "done"}, {policy_decision_notable(d), "notable"}};
    for (size_t i = 0; i < ARRAY_SIZE(flags); i++)
        if (flags[i].on)
            n += snprintf(out + n, len - (size_t)n, " %s", flags[i].name);
}

static void check_case(const dcase_t *k)
{
    policy_decision_t d;
    char got[256];
    policy_decide(pol, &k->q, &d);
    spec_of(&d, got, sizeof got);
    bool ok = strcmp(got, k->expect) == 0 &&
              (k->serve ? d.serve && strcmp(d.serve, k->serve) == 0 : d.serve == NULL) &&
              (k->msg ? strstr(d.message, k->msg) != NULL : d.message[0] == '\0');
    if (!ok) {
        fprintf(stderr, "case %s:\n  want %s serve %s\n  got  %s serve %s\n  message: %s\n",
                k->what, k->expect, k->serve ? k->serve : "(null)", got,
                d.serve ? d.serve : "(null)", d.message);
        CHECK(0);
    }
}

static void test_table(void)
{
    setup(rules_json);
    CHECK_INT(policy_rules(pol), 10);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        check_case(&cases[i]);
    /* The table covers the precedence rules with several dozen cases. */
    CHECK(ARRAY_SIZE(cases) >= 50);
}

static void test_soak_left(void)
{
    setup(rules_json);
    policy_request_t q = {MAN("library/node", "20", DN2), .prev_digest = DN,
                          .first_seen_ms = NOW - 1000};
    policy_decision_t d;
    policy_decide(pol, &q, &d);
    CHECK(d.soak_hold && d.soak);
    CHECK_INT(d.soak_left_ms, DAY - 1000);
    CHECK_STR(d.seen, DN2);
    char line[POLICY_MSG_MAX + 256];
    policy_describe(&d, line, sizeof line);
    CHECK(strstr(line, "policy rule 2 (docker.io/library/node): soak: " DN2
                       " is new for this tag, served in 86399s; serving the previous " DN));
}

static void test_describe(void)
{
    setup(rules_json);
    char line[POLICY_MSG_MAX + 256];
    policy_decision_t d;
    policy_request_t deny = {MAN("library/alpine", "latest", NULL)};
    policy_decide(pol, &deny, &d);
    policy_describe(&d, line, sizeof line);
    CHECK(strncmp(line, "policy rule 3 (docker.io/library/*) refuses: tag latest", 55) == 0);
    policy_request_t audit = {MAN("audit/x", "latest", DC)};
    policy_decide(pol, &audit, &d);
    policy_describe(&d, line, sizeof line);
    CHECK(strstr(line, "policy rule 8 (docker.io/audit/*): audit: would refuse: tag latest"));
    policy_request_t pin = {MAN("library/busybox", "stable", NULL), .stored_pin = DB};
    policy_decide(pol, &pin, &d);
    policy_describe(&d, line, sizeof line);
    CHECK(strstr(line, "tag pinned to " DA " by the configuration (over a different stored pin)"));
    policy_request_t frz = {.upstream = "quay.io",
                            .repo = "frozen/a",
                            .object = POLICY_MANIFEST,
                            .tag = "1",
                            .now_ms = NOW};
    policy_decide(pol, &frz, &d);
    policy_describe(&d, line, sizeof line);
    CHECK(strstr(line, "policy rule 6 (quay.io/frozen/**): freeze"));
}

/* No rules: everything allowed, and a stored pin still counts. */
static void test_no_rules(void)
{
    setup("{}");
    CHECK_INT(policy_rules(pol), 0);
    policy_decision_t d;
    policy_request_t q = {MAN("library/busybox", "latest", DC)};
    policy_decide(pol, &q, &d);
    CHECK(d.verdict == POLICY_ALLOW && d.rule == -1 && !policy_decision_notable(&d));
    CHECK_STR(d.serve, DC);
    q.stored_pin = DA;
    policy_decide(pol, &q, &d);
    CHECK(d.pin == POLICY_PIN_STORED && d.rule == -1 && policy_decision_notable(&d));
    CHECK_STR(d.serve, DA);
    char line[512];
    policy_describe(&d, line, sizeof line);
    CHECK(strstr(line, "policy (no rule matches): tag pinned to " DA " by winch pin"));
    /* A NULL policy decides like an empty one. */
    policy_decide(NULL, &q, &d);
    CHECK(d.pin == POLICY_PIN_STORED);
}

/* Matches are normalised as the router normalises names: Docker Hub one-component names are
 * library/NAME, the upstream part is the configured name whatever alias or case. */
static void test_normalised_match(void)
{
    setup("{\"policy\": ["
          "{\"match\": \"docker.io/alpine\", \"deny_tags\": [\"^edge$\"]},"
          "{\"match\": \"Index.Docker.IO/acme/*\", \"deny\": true},"
          "{\"match\": \"docker.io/library/alp*\", \"deny_tags\": [\"^x$\"]}]}");
    CHECK_STR(policy_rule_match(pol, 0), "docker.io/library/alpine");
    CHECK_STR(policy_rule_match(pol, 1), "docker.io/acme/*");
    CHECK_STR(policy_rule_match(pol, 2), "docker.io/library/alp*");
    CHECK_INT(policy_match(pol, "docker.io", "library/alpine"), 0);
    CHECK_INT(policy_match(pol, "docker.io", "acme/app"), 1);
    CHECK_INT(policy_match(pol, "docker.io", "library/alpine2"), 2);
    CHECK_INT(policy_match(pol, "docker.io", "library/busybox"), -1);
    CHECK_INT(policy_match(pol, "ghcr.io", "library/alpine"), -1);
    policy_decision_t d;
    policy_request_t q = {MAN("library/alpine", "edge", NULL)};
    policy_decide(pol, &q, &d);
    CHECK(d.verdict == POLICY_DENY);
    /* The message shows the match as written. */
    CHECK(strstr(d.message, "policy rule 1 (docker.io/alpine"));
}

static void test_shadowed(void)
{
    setup("{\"upstreams\": [{\"name\": \"docker.io\", \"url\": \"http://127.0.0.1:1\"},"
          "{\"name\": \"ghcr.io\", \"url\": \"http://127.0.0.1:2\"}], \"policy\": ["
          "{\"match\": \"docker.io/library/*\", \"deny_tags\": [\"^latest$\"]},"
          "{\"match\": \"docker.io/library/busybox\", \"pin\": {\"s\": \"" DA "\"}},"
          "{\"match\": \"docker.io/acme/**\", \"allow\": true},"
          "{\"match\": \"docker.io/acme/app/*\", \"freeze\": true},"
          "{\"match\": \"docker.io/**\", \"max_image_bytes\": 10},"
          "{\"match\": \"docker.io/lab/*\", \"freeze\": true},"
          "{\"match\": \"docker.io/library/*\", \"freeze\": true},"
          "{\"match\": \"**\", \"deny\": true},"
          "{\"match\": \"ghcr.io/x\", \"deny\": true}]}");
    CHECK_INT(policy_shadowed_by(pol, 0), -1);
    CHECK_INT(policy_shadowed_by(pol, 1), 0); /* literal under an earlier glob */
    CHECK_INT(policy_shadowed_by(pol, 2), -1);
    CHECK_INT(policy_shadowed_by(pol, 3), 2); /* PREFIX/ ** over PREFIX/... */
    CHECK_INT(policy_shadowed_by(pol, 4), -1);
    CHECK_INT(policy_shadowed_by(pol, 5), 4);
    CHECK_INT(policy_shadowed_by(pol, 6), 0); /* identical */
    CHECK_INT(policy_shadowed_by(pol, 7), -1);
    CHECK_INT(policy_shadowed_by(pol, 8), 7); /* after ** */
    CHECK_INT(policy_shadowed_by(pol, 99), -1);
}

static int count_pin(void *arg, size_t rule, const char *match, const char *tag, const char *digest)
{
    int *n = arg;
    CHECK_INT(rule, 0);
    CHECK_STR(match, "docker.io/library/busybox");
    CHECK(strcmp(tag, "stable") == 0 || strcmp(tag, "old") == 0);
    CHECK(strcmp(digest, DA) == 0 || strcmp(digest, DB) == 0);
    (*n)++;
    return 0;
}

static void test_pins_each(void)
{
    setup("{\"policy\": [{\"match\": \"docker.io/busybox\", \"pin\": {\"stable\": \"" DA
          "\", \"old\": \"" DB "\"}}]}");
    int n = 0;
    policy_pins_each(pol, count_pin, &n);
    CHECK_INT(n, 2);
}

/* Huge and hostile inputs: names longer than any match buffer, tags with regex metacharacters. */
static void test_hostile(void)
{
    setup(rules_json);
    char repo[600];
    memset(repo, 'a', sizeof repo - 1);
    repo[sizeof repo - 1] = '\0';
    policy_decision_t d;
    policy_request_t q = {MAN(repo, "latest", NULL)};
    policy_decide(pol, &q, &d);
    /* Too long to be a name: no rule can match it (the router refuses it long before). */
    CHECK_INT(d.rule, -1);
    policy_request_t q2 = {MAN("library/alpine", "a.b*c?latest", NULL)};
    policy_decide(pol, &q2, &d);
    CHECK(d.verdict == POLICY_ALLOW);
    policy_request_t q3 = {MAN("library/alpine", NULL, NULL)};
    policy_decide(pol, &q3, &d);
    CHECK(d.verdict == POLICY_ALLOW && d.serve == NULL);
}

int main(int argc, char **argv)
{
    static const test_case_t tests[] = {
        TEST_CASE(test_table),     TEST_CASE(test_soak_left),        TEST_CASE(test_describe),
        TEST_CASE(test_no_rules),  TEST_CASE(test_normalised_match), TEST_CASE(test_shadowed),
        TEST_CASE(test_pins_each), TEST_CASE(test_hostile),
    };
    int rc = test_main(argc, argv, tests, ARRAY_SIZE(tests));
    policy_free(pol);
    config_free(cfg);
    return rc;
}
