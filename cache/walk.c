/* Whole-cache reads for the tools (winch ls, df, inspect) and for retention's scan: every tag
 * with its pull record, every content record, a manifest's recorded references. Read
 * transactions of their own (never the loop's cached one), so a visitor may look other
 * things up meanwhile. The record formats are index.c's (schema at its top) and stats.c's. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/log.h"

#define REFS_VERSION 1

static int lmdb_err(int rc)
{
    if (rc == 0 || rc == MDB_NOTFOUND)
        return 0;
    LOG_ERROR("cache: index scan: %s", mdb_strerror(rc));
    return rc > 0 ? -rc : WE_INDEX;
}

int walk_refs_decode(const void *data, size_t len, cache_ref_t **refs, size_t *n)
{
    const unsigned char *p = data;
    size_t count = 0, off = 1;
    if (len < 1 || p[0] != REFS_VERSION)
        return WE_INDEX;
    while (off < len) {
        if (len - off < 10 || p[off + 9] > REF_DIGEST_MAX || len - off - 10 < p[off + 9])
            return WE_INDEX;
        off += 10 + p[off + 9];
        count++;
    }
    cache_ref_t *r = calloc(count ? count : 1, sizeof *r);
    if (!r)
        return -ENOMEM;
    off = 1;
    for (size_t i = 0; i < count; i++) {
        uint64_t size = 0;
        for (int b = 0; b < 8; b++)
            size |= (uint64_t)p[off + 1 + b] << (8 * b);
        size_t dl = p[off + 9];
        r[i].role = (enum image_role)p[off];
        r[i].size = size;
        memcpy(r[i].digest, p + off + 10, dl);
        r[i].digest[dl] = '\0';
        off += 10 + dl;
    }
    *refs = r;
    *n = count;
    return 0;
}

int cache_refs_get(cache_t *c, const char *digest, cache_ref_t **refs, size_t *n)
{
    MDB_txn *t = NULL;
    size_t dl = strnlen(digest, REF_DIGEST_MAX + 1);
    if (dl == 0 || dl > REF_DIGEST_MAX)
        return WE_NOTFOUND;
    int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t);
    if (rc)
        return lmdb_err(rc);
    MDB_val k = {dl, (void *)digest}, v;
    rc = mdb_get(t, c->dbi_refs, &k, &v);
    if (rc == MDB_NOTFOUND)
        rc = WE_NOTFOUND;
    else if (rc)
        rc = lmdb_err(rc);
    else
        rc = walk_refs_decode(v.mv_data, v.mv_size, refs, n);
    mdb_txn_abort(t);
    return rc;
}

int cache_content_each(cache_t *c, int (*fn)(void *arg, const char *digest, const cache_entry_t *e),
                       void *arg)
{
    return index_content_each(c, fn, arg);
}

/* Splits a tag key "upstream\0repo\0tag" into NUL-terminated parts in buf. */
static bool split_tag_key(const MDB_val *k, char *buf, size_t cap, const char **up,
                          const char **repo, const char **tag)
{
    if (k->mv_size == 0 || k->mv_size >= cap)
        return false;
    memcpy(buf, k->mv_data, k->mv_size);
    buf[k->mv_size] = '\0';
    const char *end = buf + k->mv_size;
    *up = buf;
    *repo = buf + strlen(buf) + 1;
    if (*repo >= end)
        return false;
    *tag = *repo + strlen(*repo) + 1;
    return *tag < end && (*up)[0] && (*repo)[0] && (*tag)[0];
}

int cache_tags_all_each(cache_t *c, int (*fn)(void *arg, const cache_tag_info_t *t), void *arg)
{
    char key[CACHE_KEY_MAX + 1];
    MDB_txn *t = NULL;
    MDB_cursor *cur = NULL;
    int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t);
    if (rc)
        return lmdb_err(rc);
    if ((rc = mdb_cursor_open(t, c->dbi_tags, &cur)))
        goto out;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        cache_tag_info_t ti = {0};
        if (!split_tag_key(&k, key, sizeof key, &ti.upstream, &ti.repo, &ti.tag) ||
            index_tag_decode(&v, ti.digest, &ti.checked_ms))
            continue;
        MDB_val sv;
        if (mdb_get(t, c->dbi_tagstats, &k, &sv) == 0)
            stats_tag_decode(sv.mv_data, sv.mv_size, &ti.pulled_ms, &ti.pulls);
        if (fn(arg, &ti))
            break;
    }
out:
    rc = lmdb_err(rc);
    if (cur)
        mdb_cursor_close(cur);
    mdb_txn_abort(t);
    return rc;
}
