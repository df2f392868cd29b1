/* cache_gc: planning on the threadpool, removal in slices.
 *
 *   cache_gc       copies the options; a threadpool job opens a read transaction, loads the
 *                  model and plans (gc.c). The loop is not involved while it runs.
 *   slices         each slice is one op on the index write queue (index.c) holding up to
 *                  `slice` items, whole groups only. Inside the write transaction the op
 *                  checks each group against the index as it is now: a tag checked or pulled
 *                  since the scan, or content accessed since, keeps the whole group (an
 *                  explicit rm still removes its tag). Then it deletes the entries.
 *   after commit   on the loop: every removed digest's file leaves blobs/ by a rename into
 *                  trash/, unless a fill or a manifest put of that digest is in progress
 *                  (its publish will rename a fresh file over the path; for a tool beside a
 *                  server, tmp/ tells); a threadpool job unlinks the trash (freeing a big
 *                  file's blocks can take long). Then the next slice.
 *
 * Order is the store's crash rule reversed: the index entry goes (committed, fsynced) before
 * the file, so after a crash at any instant no index entry names a missing file; a file left
 * behind is an orphan that verify (and the background check) removes. A reader that opened the
 * file before the rename keeps reading it; one that looks the digest up afterwards misses and
 * refetches. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/gc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"

#define DEFAULT_SLICE 256

struct gc_run {
    cache_t *c;
    cache_gc_opts_t o;
    char **strs; /* every string copied from the options, freed at the end */
    size_t nstrs;
    gc_target_t *rm;
    gc_model_t m;
    cache_gc_cb cb;
    void *arg;
    uv_work_t work;
    int status;
    cache_gc_result_t res;
    int64_t t0_ms;
    size_t next, end; /* the slice in flight: items [next, end) */
    uint8_t *skip;    /* per item of the slice in flight: 1 = kept (written by the apply) */
    char **trash;     /* files to unlink after the slice */
    size_t ntrash;
};

static const char *keep_str(struct gc_run *g, const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        return NULL;
    g->strs[g->nstrs++] = d;
    return d;
}

static void run_free(struct gc_run *g)
{
    for (size_t i = 0; i < g->nstrs; i++)
        free(g->strs[i]);
    free(g->strs);
    free((void *)g->o.protect);
    free((void *)g->o.keep);
    free(g->rm);
    free(g->skip);
    for (size_t i = 0; i < g->ntrash; i++)
        free(g->trash[i]);
    free(g->trash);
    gc_model_free(&g->m);
    free(g);
}

static void finish(struct gc_run *g, int status)
{
    cache_t *c = g->c;
    g->res.total_ms = time_mono_ms() - g->t0_ms;
    c->gc = NULL;
    cache_gc_cb cb = g->cb;
    void *arg = g->arg;
    cache_gc_result_t res = g->res;
    run_free(g);
    if (cb)
        cb(arg, status, &res);
}

/* ---- Reporting -------------------------------------------------------------------------- */

static void report(struct gc_run *g, const gc_item_t *it)
{
    const gc_model_t *m = &g->m;
    cache_gc_item_t ci = {.why = it->why};
    char key[CACHE_KEY_MAX + 1];
    if (it->what == GC_ITEM_TAG) {
        const gc_root_t *r = &m->roots[it->ref];
        memcpy(key, r->key, r->klen);
        key[r->klen] = '\0';
        ci.what = CACHE_GC_TAG;
        ci.upstream = key;
        ci.repo = key + strlen(key) + 1;
        ci.tag = ci.repo + strlen(ci.repo) + 1;
        ci.digest = r->digest;
        g->res.tags++;
    } else {
        const gc_node_t *n = &m->nodes[it->ref];
        ci.what = CACHE_GC_CONTENT;
        ci.digest = n->digest;
        ci.kind = n->kind;
        ci.size = n->size;
        g->res.contents++;
        g->res.freed += n->size;
    }
    if (g->o.on_item)
        g->o.on_item(g->o.arg, &ci);
}

/* ---- The slice's index write (threadpool) ------------------------------------------------- */

/* Whether the item's entry changed since the scan: pulled, checked, accessed. */
static bool used_since(struct gc_run *g, MDB_txn *t, const gc_item_t *it)
{
    cache_t *c = g->c;
    MDB_val k, v;
    if (it->what == GC_ITEM_TAG) {
        const gc_root_t *r = &g->m.roots[it->ref];
        char digest[REF_DIGEST_MAX + 1];
        int64_t checked, pulled;
        uint32_t pulls;
        k = (MDB_val){r->klen, (void *)r->key};
        if (mdb_get(t, c->dbi_tags, &k, &v) == 0 &&
            (index_tag_decode(&v, digest, &checked) || checked != r->checked_ms ||
             strcmp(digest, r->digest) != 0))
            return true;
        return mdb_get(t, c->dbi_tagstats, &k, &v) == 0 &&
               stats_tag_decode(v.mv_data, v.mv_size, &pulled, &pulls) == 0 &&
               pulled > r->pulled_ms;
    }
    const gc_node_t *n = &g->m.nodes[it->ref];
    cache_entry_t e;
    k = (MDB_val){strlen(n->digest), (void *)n->digest};
    return mdb_get(t, c->dbi_content, &k, &v) == 0 && index_content_decode(&v, &e) == 0 &&
           e.accessed_ms > n->last_ms;
}

static int del(MDB_txn *t, MDB_dbi dbi, const void *key, size_t len)
{
    MDB_val k = {len, (void *)key};
    int rc = mdb_del(t, dbi, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int apply_slice(cache_t *c, MDB_txn *t, const wop_t *op)
{
    struct gc_run *g = op->payload;
    const gc_item_t *items = g->m.items;
    size_t a = g->next, b = g->end;
    int rc = 0;
    memset(g->skip, 0, b - a);
    /* Decide per group first: a group is applied or kept whole (an explicit rm keeps only the
     * content used since, never its tag). */
    for (size_t i = a; i < b;) {
        size_t j = i;
        bool keep = false;
        bool explicit_rm = strcmp(items[i].why, "removed") == 0;
        while (j < b && items[j].group == items[i].group) {
            if (used_since(g, t, &items[j])) {
                if (explicit_rm && items[j].what == GC_ITEM_CONTENT)
                    g->skip[j - a] = 1;
                else if (!explicit_rm)
                    keep = true;
            }
            j++;
        }
        if (keep)
            memset(g->skip + (i - a), 1, j - i);
        i = j;
    }
    for (size_t i = a; i < b && rc == 0; i++) {
        if (g->skip[i - a])
            continue;
        if (items[i].what == GC_ITEM_TAG) {
            const gc_root_t *r = &g->m.roots[items[i].ref];
            if (!(rc = del(t, c->dbi_tags, r->key, r->klen)))
                rc = del(t, c->dbi_tagstats, r->key, r->klen);
        } else {
            const char *d = g->m.nodes[items[i].ref].digest;
            /* An index's child platforms go with it (they are read from its refs record). */
            if (!(rc = del(t, c->dbi_content, d, strlen(d))) && !(rc = childplat_drop(c, t, d)))
                rc = del(t, c->dbi_refs, d, strlen(d));
        }
    }
    return rc;
}

/* ---- Slices on the loop -------------------------------------------------------------------- */

static void next_slice(struct gc_run *g);

static void unlink_work(uv_work_t *w)
{
    struct gc_run *g = container_of(w, struct gc_run, work);
    for (size_t i = 0; i < g->ntrash; i++)
        if (unlink(g->trash[i]) < 0 && errno != ENOENT)
            LOG_WARN("cache: cannot remove %s: %s", g->trash[i], strerror(errno));
}

static void unlink_done(uv_work_t *w, int status)
{
    struct gc_run *g = container_of(w, struct gc_run, work);
    (void)status;
    for (size_t i = 0; i < g->ntrash; i++)
        free(g->trash[i]);
    g->ntrash = 0;
    g->next = g->end;
    next_slice(g);
}

static bool hex_busy(char **hexes, size_t n, const char *digest)
{
    const char *hex = strchr(digest, ':');
    for (size_t i = 0; hex && i < n; i++)
        if (strcmp(hexes[i], hex + 1) == 0)
            return true;
    return false;
}

/* The digest's file must stay: something is about to publish it again. */
static bool publishing(cache_t *c, const char *digest, char **hexes, size_t nhex)
{
    cache_entry_t e;
    if (fill_in_progress(c, digest) || manifests_pending_entry(c, digest, &e))
        return true;
    return hex_busy(hexes, nhex, digest);
}

static void slice_committed(void *arg, int status)
{
    struct gc_run *g = arg;
    cache_t *c = g->c;
    uint64_t t0 = uv_hrtime();
    char **hexes = NULL;
    size_t nhex = 0;
    if (status < 0) {
        finish(g, status);
        return;
    }
    /* A tool beside a server cannot see the server's fills: tmp/ shows them. */
    if (c->server_running)
        store_tmp_hexes(c, &hexes, &nhex);
    for (size_t i = g->next; i < g->end; i++) {
        const gc_item_t *it = &g->m.items[i];
        if (g->skip[i - g->next]) {
            g->res.skipped++;
            continue;
        }
        if (it->what == GC_ITEM_CONTENT) {
            const char *d = g->m.nodes[it->ref].digest;
            char *path = NULL;
            if (!publishing(c, d, hexes, nhex) && store_trash(c, d, &path) == 0)
                g->trash[g->ntrash++] = path;
        }
        report(g, it);
    }
    for (size_t i = 0; i < nhex; i++)
        free(hexes[i]);
    free(hexes);
    int64_t us = (int64_t)((uv_hrtime() - t0) / 1000);
    if (us > g->res.longest_slice_us)
        g->res.longest_slice_us = us;
    g->res.slices++;
    uv_queue_work(c->loop, &g->work, unlink_work, unlink_done);
}

static void next_slice(struct gc_run *g)
{
    cache_t *c = g->c;
    const gc_item_t *items = g->m.items;
    size_t n = g->m.nitems, a = g->next;
    if (a >= n) {
        finish(g, 0);
        return;
    }
    size_t b = a + g->o.slice < n ? a + g->o.slice : n;
    /* Whole groups only: extend to the end of the last group. */
    while (b < n && items[b].group == items[b - 1].group)
        b++;
    free(g->skip);
    free(g->trash);
    g->skip = calloc(b - a, 1);
    g->trash = calloc(b - a, sizeof *g->trash);
    wop_t *op;
    if (!g->skip || !g->trash || wop_new(c, NULL, NULL, NULL, &op)) {
        finish(g, -ENOMEM);
        return;
    }
    g->end = b;
    op->what = WOP_CUSTOM;
    op->apply = apply_slice;
    op->payload = g;
    op->cb = slice_committed;
    op->arg = g;
    index_queue(c, op);
}

/* ---- Scan ------------------------------------------------------------------------------------ */

static void scan_work(uv_work_t *w)
{
    struct gc_run *g = container_of(w, struct gc_run, work);
    int64_t t0 = time_mono_ms();
    MDB_txn *t = NULL;
    int rc = mdb_txn_begin(g->c->env, NULL, MDB_RDONLY, &t);
    if (rc) {
        g->status = WE_INDEX;
        return;
    }
    rc = gc_model_load(&g->m, g->c, t);
    mdb_txn_abort(t);
    g->res.total_before = g->m.total;
    if (rc == 0) {
        gc_plan_opts_t po = {.rm = g->rm,
                             .nrm = g->o.nrm,
                             .unreferenced = g->o.unreferenced,
                             .unused_before_ms = g->o.unused_before_ms,
                             .target_bytes = g->o.target_bytes};
        rc = gc_plan(&g->m, &po);
    }
    g->status = rc;
    g->res.scan_ms = time_mono_ms() - t0;
}

static void scan_done(uv_work_t *w, int status)
{
    struct gc_run *g = container_of(w, struct gc_run, work);
    if (status || g->status) {
        finish(g, status ? status : g->status);
        return;
    }
    if (g->o.dry_run) {
        for (size_t i = 0; i < g->m.nitems; i++)
            report(g, &g->m.items[i]);
        finish(g, 0);
        return;
    }
    g->next = 0;
    next_slice(g);
}

static void start_scan(void *arg, int status)
{
    struct gc_run *g = arg;
    (void)status; /* a failed flush loses access times, not the gc */
    uv_queue_work(g->c->loop, &g->work, scan_work, scan_done);
}

static int copy_opts(struct gc_run *g, const cache_gc_opts_t *o)
{
    size_t n = o->nprotect + o->nkeep + o->nrm * 4;
    g->o = *o;
    g->o.protect = NULL;
    g->o.keep = NULL;
    g->o.rm = NULL;
    g->strs = calloc(n ? n : 1, sizeof *g->strs);
    const char **prot = calloc(o->nprotect ? o->nprotect : 1, sizeof *prot);
    const char **keep = calloc(o->nkeep ? o->nkeep : 1, sizeof *keep);
    g->rm = calloc(o->nrm ? o->nrm : 1, sizeof *g->rm);
    g->o.protect = prot;
    g->o.keep = keep;
    if (!g->strs || !prot || !keep || !g->rm)
        return -ENOMEM;
    for (size_t i = 0; i < o->nprotect; i++)
        if (!(prot[i] = keep_str(g, o->protect[i])))
            return -ENOMEM;
    for (size_t i = 0; i < o->nkeep; i++)
        if (!(keep[i] = keep_str(g, o->keep[i])))
            return -ENOMEM;
    for (size_t i = 0; i < o->nrm; i++) {
        const cache_gc_target_t *t = &o->rm[i];
        if (!t->upstream || !t->repo || !t->tag == !t->digest)
            return WE_INVALID;
        g->rm[i] = (gc_target_t){keep_str(g, t->upstream), keep_str(g, t->repo),
                                 keep_str(g, t->tag), keep_str(g, t->digest)};
        if (!g->rm[i].upstream || !g->rm[i].repo || (!g->rm[i].tag && !g->rm[i].digest))
            return -ENOMEM;
    }
    g->m.protect = prot;
    g->m.nprotect = o->nprotect;
    g->m.keep = keep;
    g->m.nkeep = o->nkeep;
    if (!g->o.slice)
        g->o.slice = DEFAULT_SLICE;
    return 0;
}

int cache_gc(cache_t *c, const cache_gc_opts_t *o, cache_gc_cb cb, void *arg)
{
    if (c->gc)
        return -EBUSY;
    struct gc_run *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->c = c;
    g->cb = cb;
    g->arg = arg;
    g->t0_ms = time_mono_ms();
    int rc = copy_opts(g, o);
    if (rc) {
        run_free(g);
        return rc;
    }
    wop_t *op;
    if ((rc = wop_new(c, NULL, NULL, NULL, &op))) {
        run_free(g);
        return rc;
    }
    c->gc = g;
    /* Pulls counted so far must be on disk before the scan ranks anything: the scan starts
     * once an empty op queued after the flush has committed (the queue commits in order). */
    cache_stats_flush(c);
    op->cb = start_scan;
    op->arg = g;
    index_queue(c, op);
    return 0;
}

uint64_t cache_bytes_added(const cache_t *c)
{
    return c->bytes_added;
}

bool cache_gc_running(const cache_t *c)
{
    return c->gc != NULL;
}
