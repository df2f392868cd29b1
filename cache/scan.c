/* Listings of the index: the repositories of an upstream, the tags of a repository, every
 * content record. Each walk runs in a read transaction of its own (not the loop's cached one:
 * the visitors' callers may look things up meanwhile) on the loop thread; index.c owns the
 * environment and the record formats. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "common/err.h"

/* Walks the keys of dbi that start with prefix[0..pl), from start[0..sl) on (start begins with
 * the prefix), handing visit the rest of each key and its value; visit returns nonzero to stop.
 * A read transaction of its own, not the cached one: the visitors' callers may look things up
 * meanwhile. */
static int prefix_scan(cache_t *c, MDB_dbi dbi, const char *start, size_t sl, size_t pl,
                       int (*visit)(void *arg, const char *rest, size_t rl, const MDB_val *v),
                       void *arg, const char *what)
{
    MDB_txn *t = NULL;
    MDB_cursor *cur = NULL;
    int rc;
    if (sl > c->max_key)
        return 0; /* too long to have been stored */
    if ((rc = index_err(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t), "begin read")))
        goto out;
    if ((rc = index_err(mdb_cursor_open(t, dbi, &cur), "cursor")))
        goto out;
    MDB_val k = {sl, (void *)start}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < pl || memcmp(k.mv_data, start, pl) != 0)
            break;
        if (visit(arg, (const char *)k.mv_data + pl, k.mv_size - pl, &v))
            break;
    }
    rc = rc == MDB_NOTFOUND || rc == 0 ? 0 : index_err(rc, what);
out:
    if (cur)
        mdb_cursor_close(cur);
    if (t)
        mdb_txn_abort(t);
    return rc;
}

struct repos_walk {
    const char *after;
    int (*fn)(void *arg, const char *repo);
    void *arg;
};

static int visit_repo(void *arg, const char *rest, size_t rl, const MDB_val *v)
{
    struct repos_walk *w = arg;
    char repo[REF_NAME_MAX + 1];
    (void)v;
    if (rl == 0 || rl > REF_NAME_MAX)
        return 0;
    memcpy(repo, rest, rl);
    repo[rl] = '\0';
    if (w->after && strcmp(repo, w->after) == 0)
        return 0;
    return w->fn(w->arg, repo);
}

int cache_repos_each(cache_t *c, const char *upstream, const char *after,
                     int (*fn)(void *arg, const char *repo), void *arg)
{
    char start[CACHE_KEY_MAX];
    size_t sl, pl;
    if (!upstream || !upstream[0])
        return 0;
    if (after && !after[0])
        after = NULL;
    if (index_make_key(start, sizeof start, upstream, "", NULL, &pl))
        return 0; /* an upstream name too long to be stored has no repositories */
    if (index_make_key(start, sizeof start, upstream, after ? after : "", NULL, &sl))
        return 0;
    struct repos_walk w = {after, fn, arg};
    return prefix_scan(c, c->dbi_repos, start, sl, pl, visit_repo, &w, "repos scan");
}

struct tags_walk {
    int (*fn)(void *arg, const char *tag, const char *digest);
    void *arg;
};

static int visit_tag(void *arg, const char *rest, size_t tl, const MDB_val *v)
{
    struct tags_walk *w = arg;
    char tag[REF_TAG_MAX + 1], digest[REF_DIGEST_MAX + 1];
    int64_t checked;
    if (tl == 0 || tl > REF_TAG_MAX || index_tag_decode(v, digest, &checked))
        return 0;
    memcpy(tag, rest, tl);
    tag[tl] = '\0';
    return w->fn(w->arg, tag, digest);
}

int cache_tags_each(cache_t *c, const char *upstream, const char *repo,
                    int (*fn)(void *arg, const char *tag, const char *digest), void *arg)
{
    char prefix[CACHE_KEY_MAX];
    size_t pl;
    if (!upstream || !repo || index_make_key(prefix, sizeof prefix, upstream, repo, "", &pl))
        return 0; /* names too long to be stored have no tags */
    struct tags_walk w = {fn, arg};
    return prefix_scan(c, c->dbi_tags, prefix, pl, pl, visit_tag, &w, "tags scan");
}

int index_content_each(cache_t *c, int (*fn)(void *arg, const char *digest, const cache_entry_t *e),
                       void *arg)
{
    char digest[REF_DIGEST_MAX + 1];
    cache_entry_t e;
    MDB_txn *t = NULL;
    MDB_cursor *cur = NULL;
    int rc;

    if ((rc = index_err(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t), "begin read")))
        goto out;
    if ((rc = index_err(mdb_cursor_open(t, c->dbi_content, &cur), "cursor")))
        goto out;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size > REF_DIGEST_MAX || index_content_decode(&v, &e))
            continue;
        memcpy(digest, k.mv_data, k.mv_size);
        digest[k.mv_size] = '\0';
        if (fn(arg, digest, &e))
            break;
    }
    rc = rc == MDB_NOTFOUND || rc == 0 ? 0 : index_err(rc, "content scan");
out:
    if (cur)
        mdb_cursor_close(cur);
    if (t)
        mdb_txn_abort(t);
    return rc;
}
