/* Prefetch (prefetch.h).
 *
 *   index served --> queue: platform manifests of the client's set (attestations on request)
 *   manifest job: cached? read it : GET by digest, check, store --> queue its config, layers
 *   blob job:     cached or filling? done : fill_get + producer_start, wait for the fill's end
 *
 * Jobs wait in one FIFO; pump() starts the first ones whose upstream has room, up to the
 * bounds. A job that ends at once (cached content) frees its slot inside pump, which goes on
 * from its loop rather than recursing. */
#include "proxy/prefetch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/intake.h"
#include "proxy/negcache.h"
#include "proxy/platforms.h"
#include "proxy/producer.h"

enum job_kind { JOB_MANIFEST, JOB_BLOB };

typedef struct job job_t;
struct job {
    job_t *prev, *next; /* the queue, or the running list */
    prefetcher_t *pf;
    enum job_kind kind;
    size_t up;     /* index of the upstream */
    call_t bg;     /* the job's own call (no client); route.ref is the digest */
    uint64_t size; /* from the descriptor; 0 when unknown */
    fill_t *fill;  /* a blob job's fill while it runs */
    fill_sub_t sub;
};

typedef struct job_list {
    job_t *head, *tail;
    size_t n;
} job_list_t;

/* The platform memory: PLATMEMO_SLOTS entries, ~170 bytes each, allocated on first use. */
#define PLATMEMO_SLOTS 16384u

typedef struct platmemo {
    char digest[REF_DIGEST_MAX + 1]; /* "" when empty */
    platform_t platform;
} platmemo_t;

struct prefetcher {
    const config_t *cfg;
    platmemo_t *memo;   /* NULL until an index is noted */
    job_t *queue;       /* FIFO, singly linked through next */
    job_t **queue_tail; /* the last next field (or &queue) */
    size_t queued;
    job_list_t running;
    size_t per_up[CONFIG_MAX_UPSTREAMS];
    bool pumping;
    bool stopped;
    uint64_t dropped; /* queue full */
};

static void list_push(job_list_t *l, job_t *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->n++;
}

static void list_remove(job_list_t *l, job_t *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    l->n--;
}

static bool chain_has(const job_t *j, const char *digest)
{
    for (; j; j = j->next)
        if (strcmp(j->bg.route.ref, digest) == 0)
            return true;
    return false;
}

static void pump(prefetcher_t *pf);

/* A running job ended: its slot is free. */
static void job_done(job_t *j)
{
    prefetcher_t *pf = j->pf;
    if (pf->stopped) { /* prefetcher_cancel_all took the lists already */
        free(j);
        return;
    }
    list_remove(&pf->running, j);
    pf->per_up[j->up]--;
    free(j);
    pump(pf);
}

/* Queues a fetch of digest in the repository of tmpl (a client's call or a job's). */
static void enqueue(prefetcher_t *pf, const call_t *tmpl, enum job_kind kind, const char *digest,
                    uint64_t size)
{
    if (pf->stopped || chain_has(pf->queue, digest) || chain_has(pf->running.head, digest))
        return;
    if (pf->queued >= pf->cfg->prefetch_max_queue) {
        if (pf->dropped++ % 1000 == 0)
            LOG_WARN("prefetch: queue full (prefetch_max_queue %u): %s not prefetched",
                     pf->cfg->prefetch_max_queue, digest);
        return;
    }
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return;
    j->pf = pf;
    j->kind = kind;
    j->size = size;
    j->up = (size_t)(tmpl->route.upstream - pf->cfg->upstreams);
    j->bg.env = tmpl->env;
    j->bg.up = tmpl->up;
    j->bg.health = tmpl->health;
    j->bg.route.op = kind == JOB_MANIFEST ? ROUTE_MANIFEST : ROUTE_BLOB;
    j->bg.route.upstream = tmpl->route.upstream;
    snprintf(j->bg.route.name, sizeof j->bg.route.name, "%s", tmpl->route.name);
    snprintf(j->bg.route.ref, sizeof j->bg.route.ref, "%s", digest);
    j->bg.route.ref_is_digest = true;
    j->bg.cache_status = "prefetch";
    *pf->queue_tail = j;
    pf->queue_tail = &j->next;
    pf->queued++;
}

/* The config and layers of a platform manifest. */
static void enqueue_blobs(job_t *j, const image_t *img)
{
    if (img->kind != IMAGE_MANIFEST)
        return;
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        if (r->role == IMAGE_CONFIG || r->role == IMAGE_LAYER)
            enqueue(j->pf, &j->bg, JOB_BLOB, r->digest, r->size);
    }
}

/* ---- Blob jobs ------------------------------------------------------------------------------ */

static void blob_notify(fill_sub_t *s)
{
    job_t *j = (job_t *)((char *)s - offsetof(job_t, sub));
    enum fill_state st = fill_state(j->fill);
    if (st != FILL_DONE && st != FILL_FAILED)
        return;
    LOG_DEBUG("prefetch: blob %s of %s/%s %s", j->bg.route.ref, j->bg.route.upstream->name,
              j->bg.route.name, st == FILL_DONE ? "cached" : "failed");
    fill_unsubscribe(&j->sub);
    fill_unref(j->fill);
    j->fill = NULL;
    job_done(j);
}

/* Returns true when the job is over already. */
static bool blob_start(job_t *j)
{
    call_t *bg = &j->bg;
    cache_entry_t e;
    if (cache_lookup(bg->env->cache, bg->route.ref, &e) == 0 ||
        fill_running(bg->env->cache, bg->route.ref))
        return true;
    if (negcache_hit(bg->env->neg, bg->route.upstream->name, bg->route.name, bg->route.ref,
                     time_mono_ms()) ||
        (bg->health && health_down(bg->health)))
        return true;
    bool created;
    int err = fill_get(bg->env->cache, bg->route.ref, &j->fill, &created);
    if (err < 0)
        return true;
    if (!created) {
        fill_unref(j->fill);
        j->fill = NULL;
        return true;
    }
    LOG_DEBUG("prefetch: blob %s of %s/%s", bg->route.ref, bg->route.upstream->name,
              bg->route.name);
    producer_start(bg, j->fill);
    fill_subscribe(j->fill, &j->sub, blob_notify);
    return false;
}

/* ---- Manifest jobs -------------------------------------------------------------------------- */

static void manifest_free_cb(void *ctx)
{
    job_done(ctx);
}

static void on_manifest(call_t *bg, void *ctx, int status, int err, upreq_t *up, char *body,
                        size_t len)
{
    job_t *j = ctx;
    if (err || status != 200) {
        LOG_INFO("prefetch: manifest %s of %s/%s: upstream %d %s", bg->route.ref,
                 bg->route.upstream->name, bg->route.name, status, err ? err_str(err) : "");
        free(body);
        job_done(j);
        return;
    }
    intake_t in;
    if (intake_check(bg, up, body, len, bg->route.ref, &in) == 0) {
        intake_store(bg, &in, body, len, NULL);
        LOG_DEBUG("prefetch: manifest %s of %s/%s stored", bg->route.ref, bg->route.upstream->name,
                  bg->route.name);
        enqueue_blobs(j, in.image);
        intake_free(&in);
    }
    free(body);
    job_done(j);
}

/* Returns true when the job is over already. */
static bool manifest_start(job_t *j)
{
    call_t *bg = &j->bg;
    cache_t *cache = bg->env->cache;
    cache_entry_t e;
    if (cache_lookup(cache, bg->route.ref, &e) == 0 && e.kind == CACHE_MANIFEST &&
        e.media_type[0]) {
        char *body, errbuf[160];
        size_t len;
        image_t *img = NULL;
        if (cache_read_manifest(cache, bg->route.ref, bg->env->cfg->max_manifest_bytes, &body,
                                &len) == 0) {
            if (image_parse(body, len, e.media_type, &img, errbuf, sizeof errbuf) == 0) {
                enqueue_blobs(j, img);
                image_free(img);
            }
            free(body);
        }
        return true;
    }
    if (negcache_hit(bg->env->neg, bg->route.upstream->name, bg->route.name, bg->route.ref,
                     time_mono_ms()) ||
        (bg->health && health_down(bg->health)))
        return true;
    char path[REF_NAME_MAX + 400];
    fetch_path(bg, "manifests", bg->route.ref, path, sizeof path);
    /* The bulk lane: prefetch never takes the connections kept for what clients wait on. */
    int err = fetch_start_in(bg, UPREQ_BULK, "GET", path, OCI_UPSTREAM_ACCEPT,
                             bg->env->cfg->max_manifest_bytes, on_manifest, j, manifest_free_cb);
    return err < 0;
}

/* ---- The queue ------------------------------------------------------------------------------ */

static void pump(prefetcher_t *pf)
{
    if (pf->pumping)
        return;
    pf->pumping = true;
    for (;;) {
        if (pf->stopped || pf->running.n >= pf->cfg->prefetch_max_concurrent)
            break;
        job_t **link = &pf->queue;
        while (*link && pf->per_up[(*link)->up] >= pf->cfg->prefetch_max_per_upstream)
            link = &(*link)->next;
        job_t *j = *link;
        if (!j)
            break;
        *link = j->next;
        if (!j->next)
            pf->queue_tail = link;
        j->next = NULL;
        pf->queued--;
        /* Linked only once started: nothing a start does calls back into this job. */
        if (j->kind == JOB_MANIFEST ? manifest_start(j) : blob_start(j)) {
            free(j);
            continue;
        }
        list_push(&pf->running, j);
        pf->per_up[j->up]++;
    }
    pf->pumping = false;
}

void prefetch_index(call_t *c, const image_t *img)
{
    prefetcher_t *pf = c->env->prefetch;
    if (!pf || !c->route.upstream || img->kind != IMAGE_INDEX)
        return;
    platsel_t sel;
    platforms_select(c, &sel);
    if (!sel.rule || !sel.rule->prefetch)
        return;
    size_t queued = 0;
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        if (r->role != IMAGE_CHILD || image_type_is_index(r->media_type))
            continue;
        bool want;
        if (platforms_is_attestation(r)) {
            want = sel.rule->attestations;
        } else {
            platform_t p;
            want = r->has_platform &&
                   platform_from_parts(r->platform.os, r->platform.arch, r->platform.variant, &p) ==
                       0 &&
                   platform_in(sel.set, sel.n, &p);
        }
        if (!want)
            continue;
        enqueue(pf, c, JOB_MANIFEST, r->digest, r->size);
        queued++;
    }
    char first[PLATFORM_STR_MAX] = "";
    if (sel.n)
        platform_format(&sel.set[0], first, sizeof first);
    LOG_INFO("req=%llu prefetch: %zu manifest%s of %s/%s for %s%s (%s%s%s)",
             (unsigned long long)call_id(c), queued, queued == 1 ? "" : "s",
             c->route.upstream->name, c->route.name, first, sel.n > 1 ? ", ..." : "", sel.source,
             sel.group ? " " : "", sel.group ? sel.group->name : "");
    pump(pf);
}

static size_t memo_slot(const char *digest)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = digest; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h % PLATMEMO_SLOTS;
}

void prefetch_note_index(prefetcher_t *pf, const image_t *img)
{
    if (!pf || img->kind != IMAGE_INDEX)
        return;
    if (!pf->memo && !(pf->memo = calloc(PLATMEMO_SLOTS, sizeof *pf->memo)))
        return;
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        platform_t p;
        if (r->role != IMAGE_CHILD || !r->has_platform || platforms_is_attestation(r) ||
            platform_from_parts(r->platform.os, r->platform.arch, r->platform.variant, &p) != 0)
            continue;
        platmemo_t *m = &pf->memo[memo_slot(r->digest)];
        snprintf(m->digest, sizeof m->digest, "%s", r->digest);
        m->platform = p;
    }
}

int prefetch_platform_of(const prefetcher_t *pf, const char *digest, platform_t *out)
{
    if (!pf || !pf->memo)
        return -1;
    const platmemo_t *m = &pf->memo[memo_slot(digest)];
    if (strcmp(m->digest, digest) != 0)
        return -1;
    *out = m->platform;
    return 0;
}

int prefetcher_create(prefetcher_t **out, const config_t *cfg)
{
    prefetcher_t *pf = calloc(1, sizeof *pf);
    if (!pf)
        return -ENOMEM;
    pf->cfg = cfg;
    pf->queue_tail = &pf->queue;
    *out = pf;
    return 0;
}

void prefetcher_cancel_all(prefetcher_t *pf)
{
    if (!pf || pf->stopped)
        return;
    pf->stopped = true;
    for (job_t *j = pf->queue, *next; j; j = next) {
        next = j->next;
        free(j);
    }
    job_t *run = pf->running.head;
    pf->queue = NULL;
    pf->queue_tail = &pf->queue;
    pf->queued = 0;
    pf->running = (job_list_t){0};
    memset(pf->per_up, 0, sizeof pf->per_up);
    for (job_t *j = run, *next; j; j = next) {
        next = j->next;
        if (j->kind == JOB_BLOB) {
            fill_unsubscribe(&j->sub);
            fill_unref(j->fill);
            free(j);
        } else if (j->bg.cancel) {
            void (*cancel)(call_t *) = j->bg.cancel;
            j->bg.cancel = NULL;
            cancel(&j->bg); /* runs manifest_free_cb: job_done frees j */
        } else {
            free(j);
        }
    }
}

size_t prefetcher_running(const prefetcher_t *pf)
{
    return pf->running.n;
}

size_t prefetcher_queued(const prefetcher_t *pf)
{
    return pf->queued;
}

void prefetcher_free(prefetcher_t *pf)
{
    if (pf)
        free(pf->memo);
    free(pf);
}
