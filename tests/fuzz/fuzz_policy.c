/* The policy: a configuration (the input up to its first blank line) and references (one per
 * line after it), through config_from_json, policy_create, policy_ref_parse and policy_decide.
 * Properties: a configuration config_from_json accepts compiles (every regex and glob was
 * checked at load); a parsed reference is a valid name with exactly one of a valid tag and a
 * valid digest; a decision's rule is one of the rules, a refusal carries its text naming the
 * rule and serves nothing, a plain allow carries no text, and an audit never refuses. */
#include <string.h>

#include "common/ref.h"
#include "config/config.h"
#include "fuzz.h"
#include "policy/policy.h"

#define D "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void check_decision(const policy_t *p, const policy_request_t *q)
{
    policy_decision_t d;
    policy_decide(p, q, &d);
    FUZZ_CHECK(d.rule >= -1 && d.rule < (int)policy_rules(p));
    FUZZ_CHECK((d.rule >= 0) == (d.match != NULL));
    FUZZ_CHECK(strlen(d.message) < sizeof d.message);
    if (d.verdict == POLICY_DENY) {
        FUZZ_CHECK(d.rule >= 0 && d.reason != POLICY_REASON_NONE);
        FUZZ_CHECK(strstr(d.message, "policy rule") != NULL);
        FUZZ_CHECK(d.serve == NULL && !d.audited && policy_decision_notable(&d));
    } else if (d.audited) {
        FUZZ_CHECK(d.reason != POLICY_REASON_NONE && d.message[0] != '\0');
    } else {
        FUZZ_CHECK(d.reason == POLICY_REASON_NONE && d.message[0] == '\0');
    }
    if (d.pin != POLICY_PIN_NONE)
        FUZZ_CHECK(d.serve != NULL && q->tag != NULL);
    char line[POLICY_MSG_MAX + 512];
    policy_describe(&d, line, sizeof line);
    FUZZ_CHECK(strlen(line) < sizeof line);
}

static void check_ref(const config_t *cfg, const policy_t *p, const char *text)
{
    policy_ref_t r;
    char err[256];
    if (policy_ref_parse(cfg, text, &r, err, sizeof err) != 0) {
        FUZZ_CHECK(err[0] != '\0');
        return;
    }
    FUZZ_CHECK(r.upstream != NULL && ref_name_valid(r.repo, strlen(r.repo)));
    FUZZ_CHECK(!r.tag[0] != !r.digest[0]);
    FUZZ_CHECK(!r.tag[0] || ref_tag_valid(r.tag, strlen(r.tag)));
    FUZZ_CHECK(!r.digest[0] || ref_digest_parse(r.digest, strlen(r.digest), NULL) == 0);
    policy_request_t q = {.upstream = r.upstream->name,
                          .repo = r.repo,
                          .object = POLICY_MANIFEST,
                          .tag = r.tag[0] ? r.tag : NULL,
                          .digest = r.digest[0] ? r.digest : NULL,
                          .now_ms = 1800000000000LL};
    check_decision(p, &q);
    /* Later stages: resolved with a previous digest, then with the image's facts. */
    q.digest = D;
    q.prev_digest = r.digest[0] ? r.digest : NULL;
    q.first_seen_ms = 1700000000000LL;
    check_decision(p, &q);
    q.have_image = q.have_created = q.created_known = true;
    q.image_bytes = (uint64_t)strlen(text) << 20;
    q.created_ms = 1000LL * (int64_t)strlen(text) * 86400;
    check_decision(p, &q);
    q.stored_pin = D;
    check_decision(p, &q);
    policy_request_t b = {.upstream = r.upstream->name,
                          .repo = r.repo,
                          .object = POLICY_BLOB,
                          .digest = D,
                          .now_ms = 1800000000000LL};
    check_decision(p, &b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    char *refs = strstr(s, "\n\n");
    size_t cfg_len = refs ? (size_t)(refs - s) : size;
    config_t *cfg = NULL;
    policy_t *p = NULL;
    char err[512];
    if (config_from_json(&cfg, s, cfg_len, "fuzz", err, sizeof err) != 0)
        goto out;
    FUZZ_CHECK(policy_create(&p, cfg, err, sizeof err) == 0);
    for (size_t i = 0; i < policy_rules(p); i++) {
        int k = policy_shadowed_by(p, i);
        FUZZ_CHECK(k >= -1 && k < (int)i);
    }
    for (char *line = refs ? refs + 2 : NULL; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        check_ref(cfg, p, line);
        line = nl ? nl + 1 : NULL;
    }
out:
    policy_free(p);
    config_free(cfg);
    free(s);
    return 0;
}
