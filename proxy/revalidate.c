/* Tag checks (revalidate.h): one per (upstream, repository, tag) at a time, each with a call of
 * its own that belongs to no client (bg.req is NULL), so the check can outlive every request
 * that started or joined it.
 *
 *   HEAD tag --200 + Docker-Content-Digest, cached--> record the tag, done
 *            --200 + digest, not cached----------> GET by digest --> check, store, done
 *            --200 without a digest, or 405------> GET by tag (digest = SHA-256 of the body)
 *            --404--> done: WE_NOTFOUND;   anything else --> done: the failure
 */
#include "proxy/revalidate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/intake.h"

typedef struct check check_t;
struct check {
    revalidator_t *owner;
    check_t *prev, *next;
    flight_t *fl;
    call_t bg;                     /* the check's own call: the first request's route */
    char want[REF_DIGEST_MAX + 1]; /* the digest being fetched; "" when fetching by tag */
    char retry_after[64];
};

struct revalidator {
    flight_table_t *t;
    check_t *head;
    size_t n;
};

int revalidator_create(revalidator_t **out)
{
    revalidator_t *v = calloc(1, sizeof *v);
    if (!v)
        return -ENOMEM;
    int rc = flight_table_create(&v->t);
    if (rc < 0) {
        free(v);
        return rc;
    }
    *out = v;
    return 0;
}

size_t revalidator_count(const revalidator_t *v)
{
    return v->n;
}

void revalidator_free(revalidator_t *v)
{
    if (!v)
        return;
    flight_table_free(v->t);
    free(v);
}

/* The check ended: off the owner's list, every waiter told, freed. */
static void finish(check_t *k, const reval_result_t *res)
{
    revalidator_t *v = k->owner;
    if (k->prev)
        k->prev->next = k->next;
    else
        v->head = k->next;
    if (k->next)
        k->next->prev = k->prev;
    v->n--;
    flight_land(k->fl, (void *)res);
    free(k);
}

/* A failed check: err is the transport error, or 0 when the upstream answered status. */
static void finish_err(check_t *k, int err, int status, upreq_t *up)
{
    if (err == 0)
        err = status ? fetch_status_err(status) : WE_UPSTREAM;
    reval_result_t res = {.err = err, .status = status};
    const char *ra = up ? upreq_header(up, "Retry-After") : NULL;
    if (ra && strlen(ra) < sizeof k->retry_after) {
        memcpy(k->retry_after, ra, strlen(ra) + 1);
        res.retry_after = k->retry_after;
    }
    finish(k, &res);
}

static void on_get(call_t *bg, void *ctx, int status, int err, upreq_t *up, char *body, size_t len)
{
    check_t *k = ctx;
    (void)bg;
    if (err || status != 200) {
        free(body);
        finish_err(k, err, status, up);
        return;
    }
    intake_t in;
    int rc = intake_check(&k->bg, up, body, len, k->want, &in);
    if (rc < 0) {
        free(body);
        finish_err(k, rc, 0, NULL);
        return;
    }
    intake_store(&k->bg, &in, body, len, k->bg.route.ref);
    reval_result_t res = {.media_type = in.media_type, .body = body, .len = len};
    memcpy(res.digest, in.digest, sizeof res.digest);
    finish(k, &res);
    intake_free(&in);
    free(body);
}

static void fetch_by(check_t *k, const char *ref)
{
    char path[REF_NAME_MAX + 400];
    fetch_path(&k->bg, "manifests", ref, path, sizeof path);
    int err = fetch_start(&k->bg, "GET", path, OCI_UPSTREAM_ACCEPT,
                          k->bg.env->cfg->max_manifest_bytes, on_get, k, NULL);
    if (err < 0)
        finish_err(k, err, 0, NULL);
}

/* A digest the cache holds as a manifest: the tag now names it. */
static bool record_if_cached(check_t *k, const char *digest)
{
    cache_entry_t e;
    call_t *bg = &k->bg;
    if (cache_lookup(bg->env->cache, digest, &e) != 0 || e.kind != CACHE_MANIFEST)
        return false;
    cache_tag_set(bg->env->cache, bg->route.upstream->name, bg->route.name, bg->route.ref, digest,
                  NULL, NULL);
    reval_result_t res = {0};
    snprintf(res.digest, sizeof res.digest, "%s", digest);
    finish(k, &res);
    return true;
}

static void on_head(call_t *bg, void *ctx, int status, int err, upreq_t *up, char *body, size_t len)
{
    check_t *k = ctx;
    (void)bg;
    (void)len;
    free(body);
    if (err == 0 && status == 200) {
        const char *d = upreq_header(up, "Docker-Content-Digest");
        enum ref_alg alg;
        if (d && strlen(d) <= REF_DIGEST_MAX && ref_digest_parse(d, strlen(d), &alg) == 0) {
            if (record_if_cached(k, d))
                return;
            snprintf(k->want, sizeof k->want, "%s", d);
            fetch_by(k, k->want);
            return;
        }
    }
    /* No usable digest in the HEAD answer, or a registry that refuses HEAD: GET by tag, and
     * the digest is what the body hashes to. */
    if (err == 0 && (status == 200 || status == 405)) {
        fetch_by(k, k->bg.route.ref);
        return;
    }
    finish_err(k, err, status, up);
}

static void on_land(flight_waiter_t *fw, void *result)
{
    reval_waiter_t *w = (reval_waiter_t *)fw;
    w->done(w, result);
}

/* Starts the check of a new flight: its own call, then HEAD. */
static int check_start(revalidator_t *v, flight_t *fl, const call_t *c)
{
    check_t *k = calloc(1, sizeof *k);
    if (!k)
        return -ENOMEM;
    k->owner = v;
    k->fl = fl;
    k->bg = *c;
    k->bg.for_id = call_id(c);
    k->bg.req = NULL;
    k->bg.cancel = NULL;
    k->bg.op = NULL;
    k->bg.if_none_match = NULL;
    char path[REF_NAME_MAX + 400];
    fetch_path(&k->bg, "manifests", k->bg.route.ref, path, sizeof path);
    int err = fetch_start(&k->bg, "HEAD", path, OCI_UPSTREAM_ACCEPT, 0, on_head, k, NULL);
    if (err < 0) {
        free(k);
        return err;
    }
    k->next = v->head;
    if (v->head)
        v->head->prev = k;
    v->head = k;
    v->n++;
    flight_set_op(fl, k);
    return 0;
}

int revalidate_join(call_t *c, reval_waiter_t *w)
{
    revalidator_t *v = c->env->revalidator;
    if (c->health && health_down(c->health))
        return WE_DOWN;
    char key[REF_NAME_MAX * 2 + REF_TAG_MAX + 8];
    int kl = snprintf(key, sizeof key, "%s\n%s\n%s", c->route.upstream->name, c->route.name,
                      c->route.ref);
    if (kl < 0 || (size_t)kl >= sizeof key)
        return WE_TOOBIG;
    flight_t *fl;
    bool created;
    int err = flight_join(v->t, key, &w->w, on_land, &fl, &created);
    if (err < 0)
        return err;
    if (!created) {
        LOG_DEBUG("req=%llu joins the check of tag %s in progress", (unsigned long long)call_id(c),
                  c->route.ref);
        return 0;
    }
    err = check_start(v, fl, c);
    if (err < 0) {
        flight_leave(&w->w);
        flight_drop(fl);
    }
    return err;
}

void revalidate_leave(reval_waiter_t *w)
{
    /* The check does not stop with its last waiter: what it finds is worth recording. The
     * flight stays in the table until the check lands it. */
    (void)flight_leave(&w->w);
}

void revalidator_cancel_all(revalidator_t *v)
{
    for (check_t *k = v->head, *next; k; k = next) {
        next = k->next;
        if (k->bg.cancel) {
            void (*cancel)(call_t *) = k->bg.cancel;
            k->bg.cancel = NULL;
            cancel(&k->bg);
        }
        reval_result_t res = {.err = WE_CANCELLED};
        finish(k, &res);
    }
}
