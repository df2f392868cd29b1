/** Policy: the one place that decides whether a pull may proceed, and what it is served. Pure
 * decisions over the configuration's rules and the facts the proxy hands in; policy never does
 * I/O (the proxy reads the cache, fetches, and acts on the answer).
 *
 * The rules (config "policy", README "Policy") are ordered; the first whose match fits
 * "UPSTREAM/REPOSITORY" decides with every field it carries; no rule: allowed. A decision is
 * taken in stages, each with more facts, and the same function answers all of them:
 *
 *   1. by tag, before the tag is resolved: refusals that need only the name and the tag
 *      (deny, require_digest, deny_tags), the pin (config, else stored), and freeze;
 *   2. once the tag resolved to the digest the upstream announces (or the cache holds): soak,
 *      which needs the tag's history (the digest last served, when the new one was first seen);
 *   3. before a manifest is served: max_image_bytes and max_image_age_days, which need the
 *      image (its size, its config's created time).
 *
 * `needs` in the decision says which facts were missing for a full answer. Refusals come before
 * anything else; an audit rule's refusals are reported but not enforced (verdict stays allow).
 * A policy_t is built once from the configuration and only read afterwards (any thread). */
#ifndef WINCH_POLICY_POLICY_H
#define WINCH_POLICY_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/ref.h"
#include "config/config.h"

typedef struct policy policy_t;

/** What a request asks for. */
enum policy_object {
    POLICY_MANIFEST = 0, /* a manifest, by tag or by digest */
    POLICY_BLOB,         /* a blob (by digest) */
    POLICY_TAGS,         /* tags/list */
    POLICY_REFERRERS,    /* referrers of a digest */
};

typedef struct policy_request {
    const char *upstream; /* configured upstream name, e.g. "docker.io" */
    const char *repo;     /* repository at the upstream, normalised ("library/alpine") */
    enum policy_object object;
    /* Manifests by tag: the tag (else NULL). */
    const char *tag;
    /* By digest: the digest asked for. By tag: the digest the tag resolved to (announced by the
     * upstream, or cached), NULL before resolution. */
    const char *digest;
    /* By tag: the digest of a pin stored in the cache (winch pin) for this tag, NULL if none. */
    const char *stored_pin;
    /* By tag, soak: the digest last served for this tag (NULL if none) and when `digest` was
     * first seen for this tag (policy clock, ms; 0 or later than now_ms: now). */
    const char *prev_digest;
    int64_t first_seen_ms;
    int64_t now_ms; /* the policy clock, Unix ms */
    /* The image about to be served (stage 3): have_image once parsed; created_known when its
     * config has a parsable `created` (have_created: the config was read). */
    bool have_image;
    bool is_index;
    uint64_t image_bytes; /* config + layers (image_bytes); ignored for an index */
    bool have_created;
    bool created_known;
    int64_t created_ms;
} policy_request_t;

enum policy_verdict { POLICY_ALLOW = 0, POLICY_DENY = 1 };

/** Facts the decision could not do without (stage bits). */
enum policy_need {
    POLICY_NEED_DIGEST = 1 << 0,  /* soak: the digest the tag resolves to, and its history */
    POLICY_NEED_IMAGE = 1 << 1,   /* max_image_bytes / max_image_age_days: the manifest */
    POLICY_NEED_CREATED = 1 << 2, /* max_image_age_days: the config's created time */
};

/** Why a pull is (or, audited, would be) refused. */
enum policy_reason {
    POLICY_REASON_NONE = 0,
    POLICY_REASON_REPO,   /* deny */
    POLICY_REASON_BY_TAG, /* require_digest */
    POLICY_REASON_TAG,    /* deny_tags */
    POLICY_REASON_SIZE,   /* max_image_bytes */
    POLICY_REASON_AGE,    /* max_image_age_days */
};

enum policy_pin_source { POLICY_PIN_NONE = 0, POLICY_PIN_CONFIG, POLICY_PIN_STORED };

#define POLICY_MSG_MAX 2048

typedef struct policy_decision {
    enum policy_verdict verdict;
    int rule;          /* index of the deciding rule in the config, -1 when none matched */
    const char *match; /* that rule's match as written (borrowed from the config), or NULL */
    enum policy_reason reason; /* the (first) refusal, enforced or audited */
    bool audited;              /* a refusal of an audit rule: logged, not enforced */
    unsigned needs;            /* enum policy_need bits */
    /* By tag: the digest to serve (borrowed from the request or the config): a pin, the
     * previous digest while a soak holds, else the resolved digest. NULL when not known yet. */
    const char *serve;
    const char *seen; /* the request's digest (what the tag resolved to), borrowed */
    enum policy_pin_source pin;
    bool pin_overrides_stored; /* a config pin beat a different stored pin */
    bool freeze;               /* do not revalidate a cached tag */
    bool soak;                 /* the rule soaks: record the tag's history */
    bool soak_hold;            /* serving the previous digest: the new one is still soaking */
    bool soak_first;           /* no previous digest: the new one is served at once */
    bool soak_done;            /* the new digest has soaked: served instead of the previous */
    int64_t soak_left_ms;      /* with soak_hold: until the new digest may be served */
    /* Deny or audited: the client's text (403 DENIED), naming the rule, the reason and how to
     * comply. Otherwise "" */
    char message[POLICY_MSG_MAX];
} policy_decision_t;

/** Builds the policy of cfg (borrowed; must outlive the policy): globs normalised (Docker Hub
 * one-component names are library/NAME), regexes compiled. On success *out is owned by the
 * caller (policy_free). On failure returns WE_CONFIG and writes one line naming the rule and
 * field ("policy[3].deny_tags[0]: invalid regex ...") into err[errlen], or -ENOMEM. */
int policy_create(policy_t **out, const config_t *cfg, char *err, size_t errlen);

/** Frees the policy; NULL is fine. */
void policy_free(policy_t *p);

/** Decides one request (every stage: see the top of this file). Pure; *out is fully written. */
void policy_decide(const policy_t *p, const policy_request_t *req, policy_decision_t *out);

/** True when the decision is worth a log line: anything but a plain allow (a refusal, an audit,
 * a pin, a soak at work, freeze). */
bool policy_decision_notable(const policy_decision_t *d);

/** One line for the log about a notable decision, e.g. "policy rule 5 (docker.io/library/node):
 * soak: sha256:... first seen 120s ago (< 86400s); serving the previous sha256:...". Writes at
 * most len bytes (NUL-terminated). */
void policy_describe(const policy_decision_t *d, char *out, size_t len);

/** The index of the first rule matching upstream/repo, or -1. */
int policy_match(const policy_t *p, const char *upstream, const char *repo);

/** How many rules the policy has. */
size_t policy_rules(const policy_t *p);

/** The rule at index i, as written (borrowed from the config). */
const config_policy_rule_t *policy_rule(const policy_t *p, size_t i);

/** The normalised match of rule i (what names are matched against; borrowed). */
const char *policy_rule_match(const policy_t *p, size_t i);

/** When an earlier rule matches every name rule i matches (so rule i never decides anything):
 * that rule's index; else -1. Finds the evident cases only: an earlier "**", an identical
 * pattern, a literal name an earlier glob matches, and an earlier PREFIX/ ** over a literal
 * PREFIX. */
int policy_shadowed_by(const policy_t *p, size_t i);

/** Visits every config pin: for each rule and pin, fn(arg, rule index, rule match (normalised),
 * tag, digest); fn returns nonzero to stop. What retention must keep, besides stored pins. */
void policy_pins_each(const policy_t *p,
                      int (*fn)(void *arg, size_t rule, const char *match, const char *tag,
                                const char *digest),
                      void *arg);

/** A reference as a user writes it ("busybox", "busybox:1.36", "ghcr.io/acme/app@sha256:...",
 * "docker.io/library/busybox:latest"), parsed with winch's routing rules: a first component
 * that is a configured upstream name picks it (one that looks like a host but is not configured
 * is an error), else the default upstream; Docker Hub one-component names are library/NAME; no
 * tag and no digest means "latest". */
typedef struct policy_ref {
    const config_upstream_t *upstream; /* borrowed from the config */
    char repo[REF_NAME_MAX + 1];
    char tag[REF_TAG_MAX + 1];       /* "" when by digest */
    char digest[REF_DIGEST_MAX + 1]; /* "" when by tag */
} policy_ref_t;

/** Parses ref. Returns 0, or WE_INVALID with one line saying why in err[errlen]. */
int policy_ref_parse(const config_t *cfg, const char *ref, policy_ref_t *out, char *err,
                     size_t errlen);

#endif
