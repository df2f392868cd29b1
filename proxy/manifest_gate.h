/** The policy's gate on the manifest path (manifest.c asks it at each stage of policy.h): it
 * gathers what each stage needs from the cache (the stored pin, the tag's history, the image's
 * size, its config's created time, fetching the config blob when it is not cached), asks
 * policy_decide, answers refused clients (403 DENIED with the rule's text), keeps the tag history
 * that soak needs, and logs the request's decision once when it is not a plain allow. Internal to
 * proxy/.
 *
 * A gate lives inside the caller's per-request state and is cleared (mgate_clear) when that
 * state is freed, on every path. */
#ifndef WINCH_PROXY_MANIFEST_GATE_H
#define WINCH_PROXY_MANIFEST_GATE_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/call.h"

typedef struct mgate {
    call_t *c;
    policy_request_t q;  /* stages 1 and 2 */
    policy_request_t q3; /* stage 3: the manifest served, judged by its digest */
    policy_decision_t d; /* the request's decision, merged across the stages */
    bool logged;
    char stored_pin[REF_DIGEST_MAX + 1];
    char prev[REF_DIGEST_MAX + 1];
    char resolved[REF_DIGEST_MAX + 1];
    char serve[REF_DIGEST_MAX + 1]; /* the digest to serve, once known */
    /* Set by the caller before stage 3: a restrict rule, for a manifest requested by digest
     * whose platform no cached index names. An image manifest's config blob then says its
     * platform, and one outside the rule's set is refused (platforms_refusal). Borrowed. */
    const config_platform_rule_t *restrict_rule;
    bool need_created;  /* stage 3: the policy reads the config's created time */
    bool have_platform; /* the config named a platform: platform */
    platform_t platform;
    /* Waiting for an image config blob (stage 3). */
    fill_t *fill;
    fill_sub_t sub;
    char config_digest[REF_DIGEST_MAX + 1];
    void (*done)(call_t *c, void *arg, bool serve);
    void *arg;
    void (*arg_free)(void *arg);
} mgate_t;

/** What a stage says. */
enum mgate_result {
    MGATE_DENIED,  /* refused: the client has its answer */
    MGATE_RESOLVE, /* by tag: resolve the tag (mgate_resolved next); g->d.freeze: from cache */
    MGATE_SERVE,   /* serve g->serve (a pin; or by digest, the digest) */
    MGATE_WAIT,    /* stage 3 continues asynchronously: done(c, arg, serve) will run */
};

/** Stage 1 of a manifest request (by tag or by digest): the refusals the name and tag decide, the
 * pin (the config's, else the stored one read from the cache). Returns MGATE_DENIED,
 * MGATE_RESOLVE (by tag, not pinned) or MGATE_SERVE. */
enum mgate_result mgate_begin(mgate_t *g, call_t *c);

/** Stage 2, by tag: the tag resolved to digest (the upstream's, or the cached one). Applies soak
 * with the tag's history (and records it) and returns the digest to serve (g->serve). */
const char *mgate_resolved(mgate_t *g, const char *digest);

/** Stage 3: before the manifest g->serve (body[0..len) of media type mt, borrowed until this
 * returns) is served: the image size and age checks when a rule has them, and the platform
 * check of g->restrict_rule (a config whose os/architecture winch cannot read, or that is over
 * max_manifest_bytes, passes). Returns MGATE_SERVE,
 * MGATE_DENIED (answered), or MGATE_WAIT (the config blob is being fetched: c->cancel is set;
 * done(c, arg, serve) runs later, unless the client goes away, in which case arg_free(arg) runs
 * instead and must free the state holding g). */
enum mgate_result mgate_image(mgate_t *g, const char *body, size_t len, const char *mt,
                              void (*done)(call_t *c, void *arg, bool serve), void *arg,
                              void (*arg_free)(void *arg));

/** Logs the decision (once, when notable) and drops what the gate holds. */
void mgate_clear(mgate_t *g);

#endif
