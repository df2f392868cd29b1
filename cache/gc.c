/* Reachability over the index: who references what, and what a removal frees.
 *
 * A scan loads the whole index into a compact model in one read transaction (threadpool for
 * the server, synchronously for the tools): a node per content record, a manifest's
 * references as edges (subjects excluded: a signature does not keep its image alive, nor the
 * reverse), and roots — every tag, every manifest that no tag and no other manifest names
 * (dangling, docker's <none>), every blob that no manifest references. Each root adds one to
 * the count of every node it reaches (rc); protected roots (protect globs, pins, kept digests)
 * mark what they reach as protected instead of merely counting.
 *
 * Removing a root walks what it reaches again and subtracts; a node whose count reaches zero
 * and is not protected is freed, and its bytes counted. So a base layer shared by two images
 * goes only with the second, and nothing a retained manifest references is ever planned for
 * removal. The plan is a list of groups (one per removed root: the tag, then the content it
 * freed) that evict.c applies one transaction at a time, skipping a group whose root or
 * content was used after the scan.
 *
 * Work is linear in the index size (each root's walk is short: an index, its manifests, their
 * blobs); memory is about 150 bytes per content record. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/gc.h"
#include "common/err.h"
#include "common/glob.h"
#include "common/hash.h"
#include "common/log.h"

#define ARENA_BLOCK ((size_t)1 << 20)

/* ---- Arena and hash ----------------------------------------------------------------------- */

struct arena_block {
    struct arena_block *next;
    size_t used;
    char data[];
};

static char *arena_dup(gc_model_t *m, const char *s, size_t n)
{
    struct arena_block *b = m->arena;
    if (!b || b->used + n + 1 > ARENA_BLOCK) {
        size_t cap = n + 1 > ARENA_BLOCK ? n + 1 : ARENA_BLOCK;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->next = m->arena;
        b->used = 0;
        m->arena = b;
    }
    char *p = b->data + b->used;
    memcpy(p, s, n);
    p[n] = '\0';
    b->used += n + 1;
    return p;
}

uint32_t gc_find(const gc_model_t *m, const char *digest, size_t n)
{
    if (!m->htcap)
        return GC_NONE;
    size_t mask = m->htcap - 1;
    for (size_t i = hash_bytes64(digest, n) & mask;; i = (i + 1) & mask) {
        uint32_t v = m->ht[i];
        if (v == 0)
            return GC_NONE;
        const char *d = m->nodes[v - 1].digest;
        if (d && strncmp(d, digest, n) == 0 && d[n] == '\0')
            return v - 1;
    }
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np)
        return -ENOMEM;
    *p = np;
    *cap = nc;
    return 0;
}

/* ---- Loading ------------------------------------------------------------------------------ */

static int load_content(gc_model_t *m, cache_t *c, MDB_txn *t)
{
    MDB_stat st;
    MDB_cursor *cur = NULL;
    int rc = mdb_stat(t, c->dbi_content, &st);
    if (rc)
        return rc;
    size_t want = st.ms_entries + 16;
    m->htcap = 64;
    while (m->htcap < want * 2)
        m->htcap *= 2;
    m->ht = calloc(m->htcap, sizeof *m->ht);
    m->nodes = calloc(want, sizeof *m->nodes);
    if (!m->ht || !m->nodes)
        return ENOMEM;
    m->ncap = want;
    if ((rc = mdb_cursor_open(t, c->dbi_content, &cur)))
        return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        cache_entry_t e;
        if (k.mv_size == 0 || k.mv_size > REF_DIGEST_MAX || index_content_decode(&v, &e))
            continue;
        if (m->nn == m->ncap)
            break; /* more records than mdb_stat said: a writer in between cannot happen */
        gc_node_t *n = &m->nodes[m->nn];
        n->digest = arena_dup(m, k.mv_data, k.mv_size);
        if (!n->digest) {
            rc = ENOMEM;
            break;
        }
        n->size = e.size;
        n->last_ms = e.accessed_ms > e.created_ms ? e.accessed_ms : e.created_ms;
        n->kind = (uint8_t)e.kind;
        size_t mask = m->htcap - 1;
        size_t i = hash_bytes64(n->digest, k.mv_size) & mask;
        while (m->ht[i])
            i = (i + 1) & mask;
        m->ht[i] = (uint32_t)(m->nn + 1);
        m->total += e.size;
        m->nn++;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int load_refs(gc_model_t *m, cache_t *c, MDB_txn *t)
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(t, c->dbi_refs, &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint32_t from = gc_find(m, k.mv_data, k.mv_size);
        cache_ref_t *refs = NULL;
        size_t nrefs = 0;
        if (from == GC_NONE || walk_refs_decode(v.mv_data, v.mv_size, &refs, &nrefs))
            continue;
        if (grow((void **)&m->edges, &m->ecap, m->ne + nrefs, sizeof *m->edges)) {
            free(refs);
            rc = ENOMEM;
            break;
        }
        m->nodes[from].edge0 = (uint32_t)m->ne;
        for (size_t i = 0; i < nrefs; i++) {
            if (refs[i].role == IMAGE_SUBJECT)
                continue;
            uint32_t to = gc_find(m, refs[i].digest, strlen(refs[i].digest));
            if (to == GC_NONE || to == from)
                continue;
            m->edges[m->ne++] = to;
            m->nodes[to].flags |= GC_PARENT;
        }
        m->nodes[from].nedges = (uint32_t)(m->ne - m->nodes[from].edge0);
        free(refs);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static bool repo_protected(const gc_model_t *m, const char *upstream, const char *repo)
{
    char name[CACHE_KEY_MAX * 2];
    if (!m->nprotect)
        return false;
    size_t ul = strlen(upstream), rl = strlen(repo);
    if (ul + rl + 2 > sizeof name)
        return false;
    memcpy(name, upstream, ul);
    name[ul] = '/';
    memcpy(name + ul + 1, repo, rl + 1);
    for (size_t i = 0; i < m->nprotect; i++)
        if (glob_match(m->protect[i], name))
            return true;
    return false;
}

static int add_root(gc_model_t *m, gc_root_t **out)
{
    if (grow((void **)&m->roots, &m->rcap, m->nr + 1, sizeof *m->roots))
        return ENOMEM;
    *out = &m->roots[m->nr++];
    memset(*out, 0, sizeof **out);
    return 0;
}

static int load_tags(gc_model_t *m, cache_t *c, MDB_txn *t)
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(t, c->dbi_tags, &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        char digest[REF_DIGEST_MAX + 1];
        int64_t checked;
        if (k.mv_size == 0 || k.mv_size > CACHE_KEY_MAX || index_tag_decode(&v, digest, &checked))
            continue;
        gc_root_t *r;
        if ((rc = add_root(m, &r)))
            break;
        r->type = GC_ROOT_TAG;
        r->key = arena_dup(m, k.mv_data, k.mv_size);
        r->digest = arena_dup(m, digest, strlen(digest));
        if (!r->key || !r->digest) {
            rc = ENOMEM;
            break;
        }
        r->klen = (uint16_t)k.mv_size;
        r->checked_ms = checked;
        r->last_ms = checked;
        MDB_val sv;
        int64_t pulled = 0;
        uint32_t pulls;
        if (mdb_get(t, c->dbi_tagstats, &k, &sv) == 0 &&
            stats_tag_decode(sv.mv_data, sv.mv_size, &pulled, &pulls) == 0) {
            r->pulled_ms = pulled;
            if (pulled > r->last_ms)
                r->last_ms = pulled;
        }
        r->node = gc_find(m, digest, strlen(digest));
        if (r->node != GC_NONE)
            m->nodes[r->node].flags |= GC_TAGGED;
        const char *repo = r->key + strlen(r->key) + 1;
        r->protected = repo_protected(m, r->key, repo);
        m->ntags++;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Everything a protected repository is known to hold (owners) is kept. */
static int load_protected_owners(gc_model_t *m, cache_t *c, MDB_txn *t)
{
    MDB_cursor *rcur = NULL, *ocur = NULL;
    int rc;
    if (!m->nprotect)
        return 0;
    if ((rc = mdb_cursor_open(t, c->dbi_repos, &rcur)) ||
        (rc = mdb_cursor_open(t, c->dbi_owners, &ocur)))
        goto out;
    MDB_val k, v;
    for (rc = mdb_cursor_get(rcur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(rcur, &k, &v, MDB_NEXT)) {
        char key[CACHE_KEY_MAX + 1];
        if (k.mv_size == 0 || k.mv_size >= CACHE_KEY_MAX)
            continue;
        memcpy(key, k.mv_data, k.mv_size);
        key[k.mv_size] = '\0';
        size_t ul = strlen(key);
        if (ul + 1 >= k.mv_size || !repo_protected(m, key, key + ul + 1))
            continue;
        key[k.mv_size] = '\0'; /* the prefix "upstream\0repo\0" */
        size_t pl = k.mv_size + 1;
        MDB_val ok = {pl, key}, ov;
        int orc;
        for (orc = mdb_cursor_get(ocur, &ok, &ov, MDB_SET_RANGE); orc == 0;
             orc = mdb_cursor_get(ocur, &ok, &ov, MDB_NEXT)) {
            if (ok.mv_size <= pl || memcmp(ok.mv_data, key, pl) != 0)
                break;
            uint32_t n = gc_find(m, (const char *)ok.mv_data + pl, ok.mv_size - pl);
            if (n != GC_NONE)
                m->nodes[n].flags |= GC_KEEP;
        }
        if (orc && orc != MDB_NOTFOUND) {
            rc = orc;
            goto out;
        }
    }
    rc = rc == MDB_NOTFOUND ? 0 : rc;
out:
    if (ocur)
        mdb_cursor_close(ocur);
    if (rcur)
        mdb_cursor_close(rcur);
    return rc;
}

/* ---- Counting ----------------------------------------------------------------------------- */

/* Visits every node reachable from start once (a fresh stamp), calling visit(m, node, arg). */
static int walk(gc_model_t *m, uint32_t start, void (*visit)(gc_model_t *, uint32_t, void *),
                void *arg)
{
    if (start == GC_NONE)
        return 0;
    uint32_t stamp = ++m->stamp;
    size_t sp = 0;
    if (grow((void **)&m->stack, &m->scap, 1, sizeof *m->stack))
        return -ENOMEM;
    m->stack[sp++] = start;
    m->nodes[start].stamp = stamp;
    while (sp) {
        uint32_t n = m->stack[--sp];
        visit(m, n, arg);
        const gc_node_t *nd = &m->nodes[n];
        if (grow((void **)&m->stack, &m->scap, sp + nd->nedges, sizeof *m->stack))
            return -ENOMEM;
        /* Pushed in reverse so the walk meets a manifest's references in their order. */
        for (uint32_t e = nd->nedges; e-- > 0;) {
            uint32_t to = m->edges[nd->edge0 + e];
            if (m->nodes[to].stamp != stamp) {
                m->nodes[to].stamp = stamp;
                m->stack[sp++] = to;
            }
        }
    }
    return 0;
}

static void count_up(gc_model_t *m, uint32_t n, void *arg)
{
    const gc_root_t *r = arg;
    m->nodes[n].rc++;
    if (r->type == GC_ROOT_TAG)
        m->nodes[n].tag_rc++;
}

static void mark_protected(gc_model_t *m, uint32_t n, void *arg)
{
    (void)arg;
    m->nodes[n].flags |= GC_PROTECTED;
}

static int count_roots(gc_model_t *m)
{
    int rc;
    /* Untagged manifests no manifest names, and blobs no manifest names, are roots too. */
    for (uint32_t i = 0; i < m->nn; i++) {
        gc_node_t *n = &m->nodes[i];
        if (n->flags & (GC_PARENT | GC_TAGGED))
            continue;
        gc_root_t *r;
        if (add_root(m, &r))
            return -ENOMEM;
        r->type = n->kind == CACHE_MANIFEST ? GC_ROOT_DANGLING : GC_ROOT_BLOB;
        r->node = i;
        r->digest = n->digest;
        r->last_ms = n->last_ms;
    }
    for (size_t i = 0; i < m->nr; i++) {
        gc_root_t *r = &m->roots[i];
        if (r->node != GC_NONE && (m->nodes[r->node].flags & GC_KEEP))
            r->protected = true;
        if ((rc = walk(m, r->node, count_up, r)))
            return rc;
        if (r->protected && (rc = walk(m, r->node, mark_protected, NULL)))
            return rc;
    }
    for (uint32_t i = 0; i < m->nn; i++)
        if ((m->nodes[i].flags & GC_KEEP) && !(m->nodes[i].flags & GC_PROTECTED) &&
            (rc = walk(m, i, mark_protected, NULL)))
            return rc;
    return 0;
}

int gc_model_load(gc_model_t *m, cache_t *c, MDB_txn *t)
{
    int rc;
    if ((rc = load_content(m, c, t)) || (rc = load_refs(m, c, t)) || (rc = load_tags(m, c, t)))
        goto fail;
    /* Pins and kept digests protect what they name; protect globs what their repositories
     * hold. */
    if ((rc = pins_mark(m, c, t)) || (rc = load_protected_owners(m, c, t)))
        goto fail;
    for (size_t i = 0; i < m->nkeep; i++) {
        uint32_t n = gc_find(m, m->keep[i], strlen(m->keep[i]));
        if (n != GC_NONE)
            m->nodes[n].flags |= GC_KEEP;
    }
    if ((rc = count_roots(m)) < 0)
        return rc;
    return 0;
fail:
    if (rc == ENOMEM)
        return -ENOMEM;
    LOG_ERROR("cache: index scan failed: %s", mdb_strerror(rc));
    return rc > 0 ? -rc : WE_INDEX;
}

void gc_model_free(gc_model_t *m)
{
    for (struct arena_block *b = m->arena, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(m->nodes);
    free(m->edges);
    free(m->ht);
    free(m->roots);
    free(m->stack);
    free(m->items);
    free(m->order);
    memset(m, 0, sizeof *m);
}

/* ---- Planning ----------------------------------------------------------------------------- */

static int push_item(gc_model_t *m, uint8_t what, uint32_t ref, const char *why)
{
    if (grow((void **)&m->items, &m->icap, m->nitems + 1, sizeof *m->items))
        return -ENOMEM;
    m->items[m->nitems++] = (gc_item_t){.what = what, .ref = ref, .group = m->ngroups, .why = why};
    return 0;
}

struct freeing {
    const char *why;
    int rc;
};

static void count_down(gc_model_t *m, uint32_t n, void *arg)
{
    struct freeing *f = arg;
    gc_node_t *nd = &m->nodes[n];
    if (nd->rc > 0)
        nd->rc--;
    if (nd->rc == 0 && !(nd->flags & (GC_PROTECTED | GC_FREED))) {
        nd->flags |= GC_FREED;
        m->freed += nd->size;
        m->total -= nd->size;
        if (push_item(m, GC_ITEM_CONTENT, n, f->why))
            f->rc = -ENOMEM;
    }
}

int gc_remove_root(gc_model_t *m, size_t ri, const char *why)
{
    gc_root_t *r = &m->roots[ri];
    if (r->removed)
        return 0;
    r->removed = true;
    struct freeing f = {why, 0};
    if (r->type == GC_ROOT_TAG && push_item(m, GC_ITEM_TAG, (uint32_t)ri, why))
        return -ENOMEM;
    int rc = walk(m, r->node, count_down, &f);
    m->ngroups++;
    return rc ? rc : f.rc;
}

static bool root_matches(const gc_model_t *m, const gc_root_t *r, const gc_target_t *tg)
{
    if (r->type == GC_ROOT_TAG) {
        const char *repo = r->key + strlen(r->key) + 1;
        const char *tag = repo + strlen(repo) + 1;
        if (strcmp(r->key, tg->upstream) != 0 || strcmp(repo, tg->repo) != 0)
            return false;
        return tg->tag ? strcmp(tag, tg->tag) == 0 : strcmp(r->digest, tg->digest) == 0;
    }
    (void)m;
    return r->type == GC_ROOT_DANGLING && tg->digest && strcmp(r->digest, tg->digest) == 0;
}

static int cmp_last(const void *a, const void *b, void *arg)
{
    const gc_model_t *m = arg;
    const gc_root_t *x = &m->roots[*(const uint32_t *)a], *y = &m->roots[*(const uint32_t *)b];
    return x->last_ms < y->last_ms ? -1 : x->last_ms > y->last_ms;
}

/* qsort_r is a GNU extension; a plain insertion-free merge sort keeps this portable. */
static void sort_order(gc_model_t *m, uint32_t *a, uint32_t *tmp, size_t n)
{
    if (n < 2)
        return;
    size_t h = n / 2;
    sort_order(m, a, tmp, h);
    sort_order(m, a + h, tmp, n - h);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n)
        tmp[k++] = cmp_last(&a[j], &a[i], m) < 0 ? a[j++] : a[i++];
    while (i < h)
        tmp[k++] = a[i++];
    while (j < n)
        tmp[k++] = a[j++];
    memcpy(a, tmp, n * sizeof *a);
}

static int plan_size(gc_model_t *m, uint64_t target)
{
    size_t n = 0;
    m->order = malloc((m->nr ? m->nr : 1) * sizeof *m->order);
    uint32_t *tmp = malloc((m->nr ? m->nr : 1) * sizeof *tmp);
    if (!m->order || !tmp) {
        free(tmp);
        return -ENOMEM;
    }
    for (size_t i = 0; i < m->nr; i++)
        if (!m->roots[i].removed && !m->roots[i].protected)
            m->order[n++] = (uint32_t)i;
    sort_order(m, m->order, tmp, n);
    free(tmp);
    int rc = 0;
    for (size_t i = 0; i < n && m->total > target && rc == 0; i++)
        rc = gc_remove_root(m, m->order[i], "over max_size");
    return rc;
}

int gc_plan(gc_model_t *m, const gc_plan_opts_t *o)
{
    int rc = 0;
    for (size_t t = 0; t < o->nrm && rc == 0; t++)
        for (size_t i = 0; i < m->nr && rc == 0; i++)
            if (root_matches(m, &m->roots[i], &o->rm[t]))
                rc = gc_remove_root(m, i, "removed");
    for (size_t i = 0; i < m->nr && rc == 0; i++) {
        gc_root_t *r = &m->roots[i];
        if (r->removed || r->protected)
            continue;
        if (o->unreferenced && (r->type != GC_ROOT_TAG || r->node == GC_NONE))
            rc = gc_remove_root(m, i, "unreferenced");
        else if (o->unused_before_ms && r->last_ms < o->unused_before_ms)
            rc = gc_remove_root(m, i, "unused");
    }
    if (rc == 0 && o->target_bytes != UINT64_MAX && m->total > o->target_bytes)
        rc = plan_size(m, o->target_bytes);
    return rc;
}

void gc_usage(const gc_model_t *m, cache_usage_t *u)
{
    memset(u, 0, sizeof *u);
    u->total = m->total;
    u->tags = m->ntags;
    for (uint32_t i = 0; i < m->nn; i++) {
        const gc_node_t *n = &m->nodes[i];
        if (n->kind == CACHE_MANIFEST)
            u->manifests++;
        else
            u->blobs++;
        if (n->tag_rc > 0 || (n->flags & GC_PROTECTED))
            u->referenced += n->size;
        if (n->img_rc > 1)
            u->shared_saved += n->size * (n->img_rc - 1);
    }
    u->unreferenced = u->total - u->referenced;
    for (size_t i = 0; i < m->nr; i++)
        if (m->roots[i].type == GC_ROOT_DANGLING)
            u->dangling++;
}

static void count_image(gc_model_t *m, uint32_t n, void *arg)
{
    (void)arg;
    m->nodes[n].img_rc++;
}

int gc_count_images(gc_model_t *m)
{
    /* Each distinct tagged manifest counts once, however many tags name it; an index counts
     * as one image. */
    uint8_t *seen = calloc(m->nn ? m->nn : 1, 1);
    if (!seen)
        return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < m->nr && rc == 0; i++) {
        const gc_root_t *r = &m->roots[i];
        if (r->type != GC_ROOT_TAG || r->node == GC_NONE || seen[r->node])
            continue;
        seen[r->node] = 1;
        rc = walk(m, r->node, count_image, NULL);
    }
    free(seen);
    return rc;
}

int cache_dangling_each(cache_t *c, int (*fn)(void *arg, const char *digest), void *arg)
{
    gc_model_t m = {0};
    MDB_txn *t = NULL;
    if (mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t))
        return WE_INDEX;
    int rc = gc_model_load(&m, c, t);
    mdb_txn_abort(t);
    for (size_t i = 0; rc == 0 && i < m.nr; i++)
        if (m.roots[i].type == GC_ROOT_DANGLING && fn(arg, m.roots[i].digest))
            break;
    gc_model_free(&m);
    return rc;
}

int cache_usage(cache_t *c, cache_usage_t *u)
{
    gc_model_t m = {0};
    MDB_txn *t = NULL;
    int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t);
    if (rc)
        return WE_INDEX;
    rc = gc_model_load(&m, c, t);
    mdb_txn_abort(t);
    if (rc == 0)
        rc = gc_count_images(&m);
    if (rc == 0)
        gc_usage(&m, u);
    gc_model_free(&m);
    return rc;
}
