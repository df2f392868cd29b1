/* Platforms of index children: what restrict (proxy/manifest.c) needs to refuse a platform
 * manifest asked for by digest, which names no platform, after a restart or when the client
 * never fetched the index through this process.
 *
 * Schema (index.c opens the database):
 *   childplat  "child digest\0index digest\0upstream" -> {u8 version, u8 n, os, u8 n, arch,
 *              u8 n, variant} (normalised, common/platform.h)
 * One record per (child, index, upstream): several indexes may list the same child (tags that
 * share a child, a filtered copy and its original), and none of them may erase what another
 * says. The child digest comes first so that a lookup is one range read of a few records;
 * the index digest second so that dropping an index deletes exactly its own records (the
 * children named by its refs record, read in the same transaction). The upstream is the one
 * the put named ("" for an unnamed import): a claim made by one upstream's index never decides
 * for another upstream.
 *
 * Written by the manifest put's own op (manifests.c queues it with WOP_CUSTOM: apply_records),
 * so the records commit in the transaction that stores the index, and never without it.
 * Dropped by removal (evict.c) and verify --fix (verify.c) with the index's refs record.
 * Loop thread except apply_records and childplat_drop (threadpool, inside a write txn). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/log.h"

#define CHILDPLAT_VERSION 1
/* Records of one digest a lookup reads at most: real children appear in a handful of indexes;
 * the bound keeps a digest listed by thousands of cached indexes from costing the loop. */
#define SCAN_MAX 1024

typedef struct childplat_item {
    char digest[REF_DIGEST_MAX + 1];
    platform_t p;
} childplat_item_t;

typedef struct childplat_payload {
    size_t n;
    childplat_item_t items[];
} childplat_payload_t;

static int apply_records(cache_t *c, MDB_txn *t, const wop_t *op);

static bool is_attestation(const image_ref_t *r)
{
    return r->attestation ||
           (strcmp(r->platform.os, "unknown") == 0 && strcmp(r->platform.arch, "unknown") == 0);
}

int childplat_prepare(wop_t *op, const image_t *img)
{
    if (img->kind != IMAGE_INDEX)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < img->nrefs; i++)
        n += img->refs[i].role == IMAGE_CHILD && img->refs[i].has_platform;
    if (n == 0)
        return 0;
    childplat_payload_t *pl = calloc(1, sizeof *pl + n * sizeof pl->items[0]);
    if (!pl)
        return -ENOMEM;
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        childplat_item_t *it = &pl->items[pl->n];
        if (r->role != IMAGE_CHILD || !r->has_platform || is_attestation(r) ||
            platform_from_parts(r->platform.os, r->platform.arch, r->platform.variant, &it->p))
            continue;
        memcpy(it->digest, r->digest, sizeof it->digest);
        pl->n++;
    }
    if (pl->n == 0) {
        free(pl);
        return 0;
    }
    op->what |= WOP_CUSTOM;
    op->apply = apply_records;
    op->payload = pl;
    op->payload_free = free;
    return 0;
}

/* The upstream an op's put named: the first component of its repo key, or "". */
static const char *op_upstream(const wop_t *op, size_t *len)
{
    *len = op->repo_key_len ? strnlen(op->key, op->repo_key_len) : 0;
    return op->key;
}

/* "child\0index\0upstream" into key; false when it is over LMDB's key limit. */
static bool make_key(const cache_t *c, char key[CACHE_KEY_MAX], size_t *kl, const char *child,
                     const char *index, const char *up, size_t ul)
{
    size_t cl = strlen(child), il = strlen(index);
    size_t n = cl + 1 + il + 1 + ul;
    if (n > CACHE_KEY_MAX || n > c->max_key)
        return false;
    memcpy(key, child, cl);
    key[cl] = '\0';
    memcpy(key + cl + 1, index, il);
    key[cl + 1 + il] = '\0';
    memcpy(key + cl + il + 2, up, ul);
    *kl = n;
    return true;
}

static size_t encode(const platform_t *p, unsigned char *rec)
{
    const char *parts[3] = {p->os, p->arch, p->variant};
    size_t n = 0;
    rec[n++] = CHILDPLAT_VERSION;
    for (int i = 0; i < 3; i++) {
        size_t l = strnlen(parts[i], PLATFORM_PART_MAX);
        rec[n++] = (unsigned char)l;
        memcpy(rec + n, parts[i], l);
        n += l;
    }
    return n;
}

static int decode(const MDB_val *v, platform_t *p)
{
    const unsigned char *rec = v->mv_data;
    char *parts[3] = {p->os, p->arch, p->variant};
    size_t n = 1;
    if (v->mv_size < 4 || rec[0] != CHILDPLAT_VERSION)
        return WE_INDEX;
    for (int i = 0; i < 3; i++) {
        size_t l = rec[n++];
        if (l > PLATFORM_PART_MAX || v->mv_size - n < l)
            return WE_INDEX;
        memcpy(parts[i], rec + n, l);
        parts[i][l] = '\0';
        n += l;
        if (i < 2 && n >= v->mv_size)
            return WE_INDEX;
    }
    return n == v->mv_size && p->os[0] && p->arch[0] ? 0 : WE_INDEX;
}

static int apply_records(cache_t *c, MDB_txn *t, const wop_t *op)
{
    const childplat_payload_t *pl = op->payload;
    size_t ul;
    const char *up = op_upstream(op, &ul);
    for (size_t i = 0; i < pl->n; i++) {
        char key[CACHE_KEY_MAX];
        unsigned char rec[4 + 3 * PLATFORM_PART_MAX];
        size_t kl;
        if (!make_key(c, key, &kl, pl->items[i].digest, op->digest, up, ul))
            continue; /* an upstream name too long for a key: that index teaches nothing */
        MDB_val k = {kl, key}, v = {encode(&pl->items[i].p, rec), rec};
        int rc = mdb_put(t, c->dbi_childplat, &k, &v, 0);
        if (rc)
            return rc;
    }
    return 0;
}

int childplat_drop(cache_t *c, MDB_txn *t, const char *index_digest)
{
    MDB_val k = {strlen(index_digest), (void *)index_digest}, v;
    int rc = mdb_get(t, c->dbi_refs, &k, &v);
    if (rc)
        return rc == MDB_NOTFOUND ? 0 : rc;
    cache_ref_t *refs = NULL;
    size_t nrefs = 0;
    /* A refs record that does not decode names no children we could find: nothing to drop. */
    if (walk_refs_decode(v.mv_data, v.mv_size, &refs, &nrefs))
        return 0;
    MDB_cursor *cur = NULL;
    if ((rc = mdb_cursor_open(t, c->dbi_childplat, &cur))) {
        free(refs);
        return rc;
    }
    for (size_t i = 0; i < nrefs && rc == 0; i++) {
        char prefix[CACHE_KEY_MAX];
        size_t pl;
        if (refs[i].role != IMAGE_CHILD ||
            !make_key(c, prefix, &pl, refs[i].digest, index_digest, "", 0))
            continue;
        /* Every upstream's record of this (child, index): the keys that start with prefix.
         * The range read starts again after each delete rather than trust where a cursor
         * stands after one. */
        for (;;) {
            MDB_val ck = {pl, prefix}, cv;
            rc = mdb_cursor_get(cur, &ck, &cv, MDB_SET_RANGE);
            if (rc || ck.mv_size < pl || memcmp(ck.mv_data, prefix, pl) != 0)
                break;
            if ((rc = mdb_cursor_del(cur, 0)))
                break;
        }
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    mdb_cursor_close(cur);
    free(refs);
    return rc;
}

static void acc_add(childplat_acc_t *acc, const platform_t *p)
{
    for (size_t i = 0; i < acc->n; i++)
        if (platform_equal(&acc->out[i], p))
            return;
    if (acc->n < CACHE_CHILD_PLATFORMS_MAX)
        acc->out[acc->n++] = *p;
}

void childplat_op(const wop_t *op, const char *upstream, const char *digest, childplat_acc_t *acc)
{
    if (!(op->what & WOP_CUSTOM) || op->apply != apply_records)
        return;
    size_t ul;
    const char *up = op_upstream(op, &ul);
    if (ul == 0 || strlen(upstream) != ul || memcmp(up, upstream, ul) != 0)
        return;
    const childplat_payload_t *pl = op->payload;
    for (size_t i = 0; i < pl->n; i++)
        if (strcmp(pl->items[i].digest, digest) == 0)
            acc_add(acc, &pl->items[i].p);
}

int childplat_read(cache_t *c, const char *upstream, const char *digest, childplat_acc_t *acc)
{
    size_t dl = strlen(digest), ul = strlen(upstream);
    MDB_txn *t;
    MDB_cursor *cur = NULL;
    if (dl == 0 || ul == 0)
        return 0;
    int rc = index_read_begin(c, &t);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(t, c->dbi_childplat, &cur))) {
        index_read_end(c);
        return index_err(rc, "child platforms");
    }
    /* The keys "digest\0...": from the first at or after "digest\0". */
    char prefix[REF_DIGEST_MAX + 2];
    memcpy(prefix, digest, dl);
    prefix[dl] = '\0';
    MDB_val k = {dl + 1, prefix}, v;
    int seen = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && seen < SCAN_MAX;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT), seen++) {
        const char *key = k.mv_data;
        if (k.mv_size <= dl + 1 || memcmp(key, prefix, dl + 1) != 0)
            break;
        /* After the child and its NUL: the index digest, a NUL, the upstream. */
        const char *rest = key + dl + 1;
        size_t rl = k.mv_size - dl - 1;
        const char *nul = memchr(rest, '\0', rl);
        if (!nul || (size_t)(rest + rl - nul - 1) != ul || memcmp(nul + 1, upstream, ul) != 0)
            continue;
        platform_t p;
        if (decode(&v, &p) == 0)
            acc_add(acc, &p);
        else
            LOG_WARN("cache: a child platform record of %s is corrupt or of an unknown version",
                     digest);
    }
    mdb_cursor_close(cur);
    index_read_end(c);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : index_err(rc, "child platforms");
}
