/* The policy's gate on the manifest path (manifest_gate.h). The three stages of policy.h, each
 * with the facts it needs read here:
 *
 *   begin     the stored pin of the tag (an LMDB read: a pin set by `winch pin` in another
 *             process is seen by the next request), then refusals by name and tag, and the pin;
 *   resolved  the tag's history (soak), recorded again when the upstream's digest or the digest
 *             served changes;
 *   image     the manifest about to be served, parsed for its size; for an image age rule, its
 *             config blob, from the cache or fetched into it like any blob (a fill), whose
 *             `created` is read (RFC 3339). An index is not judged itself: each platform
 *             manifest is, when a client asks for it. The same config read serves restrict
 *             (a platforms rule's) for a manifest by digest that no cached index names: the
 *             config's os/architecture/variant is its platform.
 *
 * The decision of the request is merged across the stages (the later stages only add a refusal
 * or an audit) and logged once, when the request's state goes, if it is not a plain allow. */
#include "proxy/manifest_gate.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "proxy/auth.h"
#include "proxy/platforms.h"
#include "proxy/producer.h"
#include "proxy/reply.h"

static void copy_digest(char dst[REF_DIGEST_MAX + 1], const char *src)
{
    snprintf(dst, REF_DIGEST_MAX + 1, "%s", src ? src : "");
}

static void log_decision(mgate_t *g)
{
    if (g->logged || !g->c || !policy_decision_notable(&g->d))
        return;
    g->logged = true;
    char line[POLICY_MSG_MAX + 512];
    policy_describe(&g->d, line, sizeof line);
    /* Who asked (behind a trusted proxy, the client it names): an audit says who would have
     * been refused. Background work (prefetch) has no client. */
    LOG_INFO("req=%llu client %s: %s/%s%s%s %s", (unsigned long long)call_id(g->c),
             g->c->req ? call_client_str(g->c) : "-", g->c->route.upstream->name, g->c->route.name,
             g->c->route.ref_is_digest ? "@" : ":", g->c->route.ref, line);
}

static void refuse(mgate_t *g)
{
    log_decision(g);
    reply_denied(g->c, g->d.message);
}

/* ---- Stages 1 and 2 ------------------------------------------------------------------------- */

enum mgate_result mgate_begin(mgate_t *g, call_t *c)
{
    g->c = c;
    g->q = (policy_request_t){
        .upstream = c->route.upstream->name,
        .repo = c->route.name,
        .object = POLICY_MANIFEST,
        .now_ms = policy_now_ms(c->env),
    };
    if (c->route.ref_is_digest) {
        g->q.digest = c->route.ref;
    } else {
        g->q.tag = c->route.ref;
        cache_pin_t pin;
        if (cache_pin_get(c->env->cache, g->q.upstream, g->q.repo, g->q.tag, &pin) == 0) {
            copy_digest(g->stored_pin, pin.digest);
            g->q.stored_pin = g->stored_pin;
        }
    }
    policy_decide(c->env->policy, &g->q, &g->d);
    if (g->d.verdict == POLICY_DENY) {
        refuse(g);
        return MGATE_DENIED;
    }
    if (c->route.ref_is_digest || g->d.pin != POLICY_PIN_NONE) {
        copy_digest(g->serve, g->d.serve);
        return MGATE_SERVE;
    }
    return MGATE_RESOLVE;
}

static void on_history_stored(void *arg, int status)
{
    (void)arg;
    if (status < 0)
        LOG_ERROR("policy: recording a tag's history for soak failed: %s", err_str(status));
}

/* Soak remembers the digest served for the tag, and since when the upstream's digest is the one
 * it is: written only when one of them changes. */
static void record_history(mgate_t *g, const cache_tag_history_t *was)
{
    cache_tag_history_t h = {0};
    if (was)
        h = *was;
    bool changed = false;
    if (strcmp(h.seen, g->resolved) != 0) {
        copy_digest(h.seen, g->resolved);
        h.seen_first_ms = g->q.now_ms;
        changed = true;
    }
    if (strcmp(h.served, g->serve) != 0) {
        copy_digest(h.served, g->serve);
        changed = true;
    }
    if (!changed)
        return;
    int rc = cache_tag_history_set(g->c->env->cache, g->q.upstream, g->q.repo, g->q.tag, &h,
                                   on_history_stored, NULL);
    if (rc < 0)
        on_history_stored(NULL, rc);
}

const char *mgate_resolved(mgate_t *g, const char *digest)
{
    cache_tag_history_t h;
    bool have = false;
    copy_digest(g->resolved, digest);
    g->q.digest = g->resolved;
    g->q.now_ms = policy_now_ms(g->c->env);
    if (g->d.soak) {
        have = cache_tag_history_get(g->c->env->cache, g->q.upstream, g->q.repo, g->q.tag, &h) == 0;
        if (have && h.served[0]) {
            copy_digest(g->prev, h.served);
            g->q.prev_digest = g->prev;
        }
        g->q.first_seen_ms = have && strcmp(h.seen, digest) == 0 ? h.seen_first_ms : 0;
    }
    policy_decide(g->c->env->policy, &g->q, &g->d);
    copy_digest(g->serve, g->d.serve ? g->d.serve : digest);
    if (g->d.soak)
        record_history(g, have ? &h : NULL);
    return g->serve;
}

/* ---- Stage 3: the image --------------------------------------------------------------------- */

/* A later stage's decision joins the request's: a refusal replaces it, an audit is added. */
static void merge(mgate_t *g, const policy_decision_t *d3)
{
    g->d.needs = d3->needs;
    if (d3->verdict == POLICY_DENY || (d3->audited && !g->d.audited)) {
        g->d.verdict = d3->verdict;
        g->d.audited = d3->audited;
        g->d.reason = d3->reason;
        memcpy(g->d.message, d3->message, sizeof g->d.message);
    }
}

/* Decides stage 3 with what g->q3 holds; answers a refusal. */
static enum mgate_result decide_image(mgate_t *g)
{
    policy_decision_t d3;
    g->q3.now_ms = policy_now_ms(g->c->env);
    policy_decide(g->c->env->policy, &g->q3, &d3);
    merge(g, &d3);
    if (g->d.verdict == POLICY_DENY) {
        refuse(g);
        return MGATE_DENIED;
    }
    return MGATE_SERVE;
}

/* The config's `created`, when it has one winch can read; and its platform, for restrict. */
static void read_config(mgate_t *g, const char *buf, size_t len)
{
    json_t *root = json_loadb(buf, len, 0, NULL);
    if (g->restrict_rule) {
        const char *os = json_string_value(json_object_get(root, "os"));
        const char *arch = json_string_value(json_object_get(root, "architecture"));
        const char *variant = json_string_value(json_object_get(root, "variant"));
        /* An attestation manifest's config says unknown/unknown: no platform, as in an index. */
        g->have_platform = os && arch &&
                           !(strcmp(os, "unknown") == 0 && strcmp(arch, "unknown") == 0) &&
                           platform_from_parts(os, arch, variant, &g->platform) == 0;
    }
    if (!g->need_created) {
        json_decref(root);
        return;
    }
    g->q3.have_created = true;
    const char *s = json_string_value(json_object_get(root, "created"));
    int64_t ms;
    if (s && auth_rfc3339_ms(s, &ms) == 0) {
        g->q3.created_known = true;
        g->q3.created_ms = ms;
    } else {
        LOG_WARN("req=%llu image config %s has no created time winch can read: "
                 "max_image_age_days does not apply to it",
                 (unsigned long long)call_id(g->c), g->config_digest);
    }
    json_decref(root);
}

/* Reads size bytes of fd from offset 0 (a config blob: size is bounded by the caller). */
static int read_fd(int fd, uint64_t size, char **out)
{
    char *buf = malloc(size + 1);
    if (!buf)
        return -ENOMEM;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            free(buf);
            return n < 0 ? -errno : -EIO;
        }
        got += (size_t)n;
    }
    buf[size] = '\0';
    *out = buf;
    return 0;
}

/* The config is cached: read it now (small, from the page cache, like a cached manifest). */
static int created_from_cache(mgate_t *g, uint64_t size)
{
    int fd = -1;
    char *buf = NULL;
    int rc = cache_open_content(g->c->env->cache, g->config_digest, &fd);
    if (rc < 0)
        return rc;
    rc = read_fd(fd, size, &buf);
    close(fd);
    if (rc < 0)
        return rc;
    read_config(g, buf, size);
    free(buf);
    return 0;
}

/* The config was read, or could not be: restrict's platform check, then the policy's age. */
static enum mgate_result config_read(mgate_t *g)
{
    const config_platform_rule_t *r = g->restrict_rule;
    if (r && g->have_platform && !platform_in(r->platforms, r->n_platforms, &g->platform)) {
        char msg[PLATFORMS_REFUSAL_MAX];
        platforms_refusal(g->c->env->cfg, r, &g->platform, msg, sizeof msg);
        LOG_INFO("req=%llu %s refused: %s (its config's platform)",
                 (unsigned long long)call_id(g->c), g->serve, msg);
        reply_denied(g->c, msg);
        return MGATE_DENIED;
    }
    return g->need_created ? decide_image(g) : MGATE_SERVE;
}

static void stop_waiting(mgate_t *g)
{
    if (g->c->op == g) {
        g->c->cancel = NULL;
        g->c->op = NULL;
    }
    if (g->fill) {
        fill_unsubscribe(&g->sub);
        fill_unref(g->fill);
        g->fill = NULL;
    }
}

/* The client went away while the config blob was being fetched (the fill goes on). */
static void wait_cancel(call_t *c)
{
    mgate_t *g = c->op;
    c->op = NULL;
    c->cancel = NULL;
    stop_waiting(g);
    g->arg_free(g->arg);
}

static void wait_notify(fill_sub_t *s)
{
    mgate_t *g = container_of(s, mgate_t, sub);
    fill_t *f = g->fill;
    call_t *c = g->c;
    uint64_t size = fill_size(f);
    uint64_t max = c->env->cfg->max_manifest_bytes;
    bool verified = fill_verified(f);
    if (fill_state(f) == FILL_FAILED && !verified) {
        int err = fill_error(f);
        stop_waiting(g);
        reply_failure(c, err, OCI_MANIFEST_UNKNOWN);
        g->done(c, g->arg, false);
        return;
    }
    bool too_big = size != FILL_SIZE_UNKNOWN && size > max;
    if (!verified && !too_big)
        return; /* look again at the next notification */
    char *buf = NULL;
    int rc = too_big ? 0 : read_fd(fill_fd(f), fill_written(f), &buf);
    size_t len = too_big ? 0 : (size_t)fill_written(f);
    stop_waiting(g);
    if (rc < 0) {
        reply_failure(c, rc, OCI_MANIFEST_UNKNOWN);
        g->done(c, g->arg, false);
        return;
    }
    if (too_big)
        g->q3.have_created = true; /* too big to read: its age is unknown */
    else
        read_config(g, buf, len);
    free(buf);
    g->done(c, g->arg, config_read(g) == MGATE_SERVE);
}

/* Starts (or joins) the fill of the config blob digest, from c's upstream and repository, as a
 * blob miss would; *out holds a reference. */
static int config_fill_start(call_t *c, const char *digest, fill_t **out)
{
    bool created;
    int err = fill_get(c->env->cache, digest, out, &created);
    if (err < 0)
        return err;
    if (created) {
        /* The producer copies what it needs of the call (upstream, repository, digest). */
        call_t bg = *c;
        snprintf(bg.route.ref, sizeof bg.route.ref, "%s", digest);
        bg.route.ref_is_digest = true;
        producer_start(&bg, *out);
    }
    return 0;
}

/* Finds the config blob: the age or the platform (restrict) needs it. Returns MGATE_SERVE/DENIED
 * or MGATE_WAIT. */
static enum mgate_result need_config(mgate_t *g, uint64_t cfg_size)
{
    call_t *c = g->c;
    cache_entry_t e;
    if (cfg_size > c->env->cfg->max_manifest_bytes) {
        LOG_WARN("req=%llu image config %s is %llu bytes, over max_manifest_bytes: "
                 "max_image_age_days and restrict do not apply to it",
                 (unsigned long long)call_id(c), g->config_digest, (unsigned long long)cfg_size);
        g->q3.have_created = true;
        return config_read(g);
    }
    if (cache_lookup(c->env->cache, g->config_digest, &e) == 0 &&
        e.size <= c->env->cfg->max_manifest_bytes && created_from_cache(g, e.size) == 0)
        return config_read(g);
    int rc = config_fill_start(c, g->config_digest, &g->fill);
    if (rc < 0) {
        reply_failure(c, rc, OCI_MANIFEST_UNKNOWN);
        return MGATE_DENIED;
    }
    c->op = g;
    c->cancel = wait_cancel;
    fill_subscribe(g->fill, &g->sub, wait_notify);
    return MGATE_WAIT;
}

enum mgate_result mgate_image(mgate_t *g, const char *body, size_t len, const char *mt,
                              void (*done)(call_t *c, void *arg, bool serve), void *arg,
                              void (*arg_free)(void *arg))
{
    bool policy = (g->d.needs & POLICY_NEED_IMAGE) != 0;
    if (!policy && !g->restrict_rule)
        return MGATE_SERVE;
    call_t *c = g->c;
    image_t *img = NULL;
    char why[160];
    if (image_parse(body, len, mt, &img, why, sizeof why) != 0) {
        LOG_ERROR("req=%llu manifest %s cannot be judged by the policy: %s",
                  (unsigned long long)call_id(c), g->serve, why);
        reply_failure(c, WE_UPSTREAM, OCI_MANIFEST_UNKNOWN);
        return MGATE_DENIED;
    }
    if (policy) {
        /* Judged as the digest it is: the pin, soak or tag that chose it were decided already. */
        g->q3 = (policy_request_t){
            .upstream = g->q.upstream,
            .repo = g->q.repo,
            .object = POLICY_MANIFEST,
            .digest = g->serve,
            .have_image = true,
            .is_index = img->kind == IMAGE_INDEX,
            .image_bytes = image_bytes(img),
        };
    }
    uint64_t cfg_size = 0;
    if (img->kind == IMAGE_MANIFEST && img->nrefs && img->refs[0].role == IMAGE_CONFIG) {
        copy_digest(g->config_digest, img->refs[0].digest);
        cfg_size = img->refs[0].size;
    }
    image_free(img);
    g->done = done;
    g->arg = arg;
    g->arg_free = arg_free;
    if (policy) {
        enum mgate_result r = decide_image(g);
        if (r != MGATE_SERVE)
            return r;
        g->need_created = (g->d.needs & POLICY_NEED_CREATED) != 0;
    }
    /* restrict reads the config of an image manifest only; an index names no one platform. */
    if (!g->need_created && !(g->restrict_rule && g->config_digest[0]))
        return MGATE_SERVE;
    if (!g->config_digest[0]) {
        g->q3.have_created = true; /* no config: no age */
        return decide_image(g);
    }
    return need_config(g, cfg_size);
}

void mgate_clear(mgate_t *g)
{
    if (g->fill) {
        fill_unsubscribe(&g->sub);
        fill_unref(g->fill);
        g->fill = NULL;
    }
    log_decision(g);
}
