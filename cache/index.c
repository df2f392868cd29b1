/* The LMDB index: opening and closing the environment, the record formats, the loop thread's
 * reads, and the one write queue every index write goes through. It knows nothing of files or
 * of manifest puts in progress (cache.c combines its reads with those).
 *
 * Schema (named databases, all keys compared bytewise):
 *   content  digest string -> content record (below)
 *   tags     "upstream\0repo\0tag" -> {u8 version, i64 checked_ms, digest string}
 *   repos    "upstream\0repo" -> i64 last_ms (when a manifest of the repo was last stored)
 *   refs     manifest digest -> {u8 version, then per reference: u8 role, u64 size, u8 digest
 *            length, digest bytes}: what the manifest references (retention keeps them)
 *   owners   "upstream\0repo\0digest" -> {u8 version, i64 seen_ms, u64 size}: the repository is
 *            known to hold digest (one of its stored manifests references it, or the upstream
 *            served it under that repository); blobs are served per repository from this
 *   tagstats "upstream\0repo\0tag" -> {u8 version, i64 pulled_ms, u32 pulls} (stats.c)
 *   pins     "upstream\0repo\0tag" -> {u8 version, i64 since_ms, u8 source, digest} (pins.c writes
 *            and reads them for the request path; pins_read.c for retention)
 *   taghist  "upstream\0repo\0tag" -> the tag's history for soak (pins.c)
 *   childplat "child\0index\0upstream" -> the platform an index gives a child (childplat.c)
 * Integers are little-endian. The content record is a fixed 32-byte header
 *   {u8 version, u8 kind, u16 flags, u32 pulls, u64 size, i64 created_ms, i64 accessed_ms}
 * followed by the media type bytes. flags is zero today and kept across updates; pulls counts
 * the times the content was served (stats.c adds to it in batches).
 *
 * Reads run on the loop thread in one cached read transaction that is renewed for each lookup
 * and reset right after, so it never pins old pages between lookups. Writes never run on the
 * loop: ops are queued, and at most one threadpool job at a time commits every queued op in a
 * single write transaction (group commit); ops queued meanwhile form the next batch. One job
 * at a time keeps threadpool threads from queueing up on LMDB's writer lock, and one fsync per
 * batch is what makes thousands of small writes a second affordable. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"

#define CONTENT_VERSION 1
#define CONTENT_HDR 32
#define TAG_VERSION 1
#define TAG_HDR 9
#define REFS_VERSION 1
#define OWNER_VERSION 1
#define OWNER_REC 17
#define DEFAULT_MAP_SIZE (4ULL << 30)
/* Bounds one write transaction's dirty pages; the rest waits for the next batch. */
#define MAX_BATCH 1024

/* ---- Errors ---------------------------------------------------------------------------------- */

/* LMDB returns positive errnos and its own negative codes; neither leaves this file raw. */
int index_err(int rc, const char *what)
{
    if (rc == 0)
        return 0;
    if (rc == MDB_NOTFOUND)
        return WE_NOTFOUND;
    if (rc == MDB_MAP_FULL) {
        LOG_ERROR("cache: index full during %s: raise the cache map size", what);
        return WE_INDEX;
    }
    if (rc > 0) {
        LOG_ERROR("cache: index %s: %s", what, strerror(rc));
        return -rc;
    }
    LOG_ERROR("cache: index %s: %s", what, mdb_strerror(rc));
    return WE_INDEX;
}

/* ---- Record formats -------------------------------------------------------------------------- */

void index_put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

uint64_t index_get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

struct content_rec {
    cache_entry_t e;
    uint16_t flags;
};

static int content_decode(const MDB_val *v, struct content_rec *r)
{
    const unsigned char *p = v->mv_data;
    if (v->mv_size < CONTENT_HDR || p[0] != CONTENT_VERSION ||
        v->mv_size - CONTENT_HDR > CACHE_MEDIA_MAX)
        return WE_INDEX;
    r->e.kind = p[1];
    r->flags = (uint16_t)(p[2] | p[3] << 8);
    r->e.pulls = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    r->e.size = index_get_u64(p + 8);
    r->e.created_ms = (int64_t)index_get_u64(p + 16);
    r->e.accessed_ms = (int64_t)index_get_u64(p + 24);
    size_t ml = v->mv_size - CONTENT_HDR;
    memcpy(r->e.media_type, p + CONTENT_HDR, ml);
    r->e.media_type[ml] = '\0';
    return 0;
}

int index_content_decode(const MDB_val *v, cache_entry_t *e)
{
    struct content_rec r;
    int rc = content_decode(v, &r);
    if (rc == 0)
        *e = r.e;
    return rc;
}

/* buf holds CONTENT_HDR + CACHE_MEDIA_MAX bytes; returns the record length. */
static size_t content_encode(const struct content_rec *r, unsigned char *buf)
{
    size_t ml = strnlen(r->e.media_type, CACHE_MEDIA_MAX);
    memset(buf, 0, CONTENT_HDR);
    buf[0] = CONTENT_VERSION;
    buf[1] = (unsigned char)r->e.kind;
    buf[2] = (unsigned char)(r->flags & 0xff);
    buf[3] = (unsigned char)(r->flags >> 8);
    for (int i = 0; i < 4; i++)
        buf[4 + i] = (unsigned char)(r->e.pulls >> (8 * i));
    index_put_u64(buf + 8, r->e.size);
    index_put_u64(buf + 16, (uint64_t)r->e.created_ms);
    index_put_u64(buf + 24, (uint64_t)r->e.accessed_ms);
    memcpy(buf + CONTENT_HDR, r->e.media_type, ml);
    return CONTENT_HDR + ml;
}

/* Joins up to three strings with NULs into buf ("a\0b\0c"); NULL ends the list early. */
int index_make_key(char *buf, size_t cap, const char *a, const char *b, const char *c3, size_t *len)
{
    const char *parts[3] = {a, b, c3};
    size_t n = 0;
    for (int i = 0; i < 3 && parts[i]; i++) {
        size_t pl = strlen(parts[i]);
        if (n + (i > 0) + pl > cap)
            return WE_INVALID;
        if (i > 0)
            buf[n++] = '\0';
        memcpy(buf + n, parts[i], pl);
        n += pl;
    }
    *len = n;
    return 0;
}

/* ---- Open and close -------------------------------------------------------------------------- */

int index_open(cache_t *c, uint64_t map_size)
{
    char path[CACHE_PATH_MAX];
    MDB_txn *t = NULL;
    int rc;

    if ((rc = index_err(mdb_env_create(&c->env), "create")))
        goto fail;
    if ((rc = index_err(mdb_env_set_mapsize(c->env, map_size ? map_size : DEFAULT_MAP_SIZE),
                        "set map size")) ||
        /* Nine named databases today (below); room for more without a format change. */
        (rc = index_err(mdb_env_set_maxdbs(c->env, 16), "set max dbs")))
        goto fail;
    snprintf(path, sizeof path, "%s/index", c->dir);
    /* MDB_NOTLS: the loop's read transaction and the threadpool's write transactions are not
     * tied to threads, and the loop may hold more than one read transaction (repos_each). */
    if ((rc = index_err(mdb_env_open(c->env, path, MDB_NOTLS, 0644), "open"))) {
        LOG_ERROR("cache: cannot open the index at %s", path);
        goto fail;
    }
    /* A previous process killed mid-read leaves reader slots behind; free them now rather
     * than let them pin pages forever. */
    int dead = 0;
    mdb_reader_check(c->env, &dead);
    c->max_key = (size_t)mdb_env_get_maxkeysize(c->env);

    if ((rc = index_err(mdb_txn_begin(c->env, NULL, 0, &t), "begin")))
        goto fail;
    if ((rc = index_err(mdb_dbi_open(t, "content", MDB_CREATE, &c->dbi_content), "open content")) ||
        (rc = index_err(mdb_dbi_open(t, "tags", MDB_CREATE, &c->dbi_tags), "open tags")) ||
        (rc = index_err(mdb_dbi_open(t, "repos", MDB_CREATE, &c->dbi_repos), "open repos")) ||
        (rc = index_err(mdb_dbi_open(t, "refs", MDB_CREATE, &c->dbi_refs), "open refs")) ||
        (rc = index_err(mdb_dbi_open(t, "owners", MDB_CREATE, &c->dbi_owners), "open owners")) ||
        (rc = index_err(mdb_dbi_open(t, "tagstats", MDB_CREATE, &c->dbi_tagstats),
                        "open tagstats")) ||
        (rc = index_err(mdb_dbi_open(t, "pins", MDB_CREATE, &c->dbi_pins), "open pins")) ||
        (rc = index_err(mdb_dbi_open(t, "taghist", MDB_CREATE, &c->dbi_taghist), "open taghist")) ||
        (rc = index_err(mdb_dbi_open(t, "childplat", MDB_CREATE, &c->dbi_childplat),
                        "open childplat")))
        goto fail;
    rc = mdb_txn_commit(t);
    t = NULL;
    if ((rc = index_err(rc, "commit")))
        goto fail;
    if ((rc = index_err(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &c->rtxn), "begin read")))
        goto fail;
    mdb_txn_reset(c->rtxn);
    return 0;
fail:
    if (t)
        mdb_txn_abort(t);
    if (c->rtxn)
        mdb_txn_abort(c->rtxn);
    c->rtxn = NULL;
    if (c->env)
        mdb_env_close(c->env);
    c->env = NULL;
    return rc;
}

int index_close(cache_t *c)
{
    if (c->wq_head)
        LOG_ERROR("cache: closing with index writes pending; they are lost (a bug)");
    for (wop_t *op = c->wq_head, *next; op; op = next) {
        next = op->next;
        wop_free(op);
    }
    c->wq_head = c->wq_tail = NULL;
    /* The job in flight uses the environment: the caller leaks it rather than free it under
     * the job. */
    if (c->wq_running)
        return -EBUSY;
    if (c->rtxn)
        mdb_txn_abort(c->rtxn);
    c->rtxn = NULL;
    if (c->env)
        mdb_env_close(c->env);
    c->env = NULL;
    return 0;
}

/* ---- Reads on the loop thread ---------------------------------------------------------------- */

int index_read_begin(cache_t *c, MDB_txn **t)
{
    if (c->rtxn) {
        if (mdb_txn_renew(c->rtxn) == 0) {
            *t = c->rtxn;
            return 0;
        }
        mdb_txn_abort(c->rtxn);
        c->rtxn = NULL;
    }
    int rc = index_err(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &c->rtxn), "begin read");
    if (rc) {
        c->rtxn = NULL;
        return rc;
    }
    *t = c->rtxn;
    return 0;
}

void index_read_end(cache_t *c)
{
    mdb_txn_reset(c->rtxn);
}

int index_lookup(cache_t *c, const char *digest, cache_entry_t *out)
{
    struct content_rec r;
    MDB_txn *t;
    size_t n = strnlen(digest, REF_DIGEST_MAX + 1);
    if (n == 0 || n > REF_DIGEST_MAX)
        return WE_NOTFOUND;
    int rc = index_read_begin(c, &t);
    if (rc)
        return rc;
    MDB_val k = {n, (void *)digest}, v;
    rc = mdb_get(t, c->dbi_content, &k, &v);
    if (rc == 0) {
        rc = content_decode(&v, &r);
        if (rc)
            LOG_ERROR("cache: index record for %s is corrupt or of an unknown version", digest);
    } else {
        rc = index_err(rc, "lookup");
    }
    index_read_end(c);
    if (rc == 0)
        *out = r.e;
    return rc;
}

const wop_t *wop_newest_tag(const wop_t *op, const char *key, size_t kl, const wop_t *best)
{
    if ((op->what & WOP_TAG) && op->tag_key_len == kl && memcmp(op->key, key, kl) == 0 &&
        (!best || op->now_ms >= best->now_ms))
        return op;
    return best;
}

const wop_t *index_pending_tag(const cache_t *c, const char *key, size_t kl, const wop_t *best)
{
    for (const wop_t *op = c->wq_head; op; op = op->next)
        best = wop_newest_tag(op, key, kl, best);
    for (const wop_t *op = c->wq_batch; op; op = op->next)
        best = wop_newest_tag(op, key, kl, best);
    return best;
}

int index_tag_key(const cache_t *c, const char *upstream, const char *repo, const char *tag,
                  char key[CACHE_KEY_MAX], size_t *kl)
{
    if (!upstream || !repo || !tag)
        return WE_INVALID;
    return index_make_key(key, CACHE_KEY_MAX < c->max_key ? CACHE_KEY_MAX : c->max_key, upstream,
                          repo, tag, kl);
}

int index_tag_decode(const MDB_val *v, char digest_out[REF_DIGEST_MAX + 1], int64_t *checked_ms)
{
    const unsigned char *p = v->mv_data;
    if (v->mv_size <= TAG_HDR || p[0] != TAG_VERSION || v->mv_size - TAG_HDR > REF_DIGEST_MAX)
        return WE_INDEX;
    size_t dl = v->mv_size - TAG_HDR;
    *checked_ms = (int64_t)index_get_u64(p + 1);
    memcpy(digest_out, p + TAG_HDR, dl);
    digest_out[dl] = '\0';
    return 0;
}

int index_tag_read(cache_t *c, const char *upstream, const char *repo, const char *tag,
                   char digest_out[REF_DIGEST_MAX + 1], int64_t *checked_ms)
{
    char key[CACHE_KEY_MAX];
    size_t kl;
    MDB_txn *t;
    if (index_tag_key(c, upstream, repo, tag, key, &kl))
        return WE_NOTFOUND;
    int rc = index_read_begin(c, &t);
    if (rc)
        return rc;
    MDB_val k = {kl, key}, v;
    rc = mdb_get(t, c->dbi_tags, &k, &v);
    if (rc == 0) {
        if (index_tag_decode(&v, digest_out, checked_ms)) {
            LOG_ERROR("cache: tag record %s/%s:%s is corrupt or of an unknown version", upstream,
                      repo, tag);
            rc = WE_INDEX;
        }
    } else {
        rc = index_err(rc, "tag lookup");
    }
    index_read_end(c);
    return rc;
}

/* ---- The write queue ------------------------------------------------------------------------- */

int wop_new(cache_t *c, const char *upstream, const char *repo, const char *tag, wop_t **out)
{
    char key[CACHE_KEY_MAX];
    size_t rl = 0, tl = 0;
    int rc;

    if (repo || tag) {
        if (!upstream || !upstream[0] || !repo || !ref_name_valid(repo, strlen(repo)))
            return WE_INVALID;
        if (tag && !ref_tag_valid(tag, strlen(tag)))
            return WE_INVALID;
        size_t cap = CACHE_KEY_MAX < c->max_key ? CACHE_KEY_MAX : c->max_key;
        if ((rc = index_make_key(key, cap, upstream, repo, NULL, &rl)))
            return rc;
        if (tag && (rc = index_make_key(key, cap, upstream, repo, tag, &tl)))
            return rc;
    }
    size_t kl = tl ? tl : rl;
    wop_t *op = calloc(1, sizeof *op + kl);
    if (!op)
        return -ENOMEM;
    memcpy(op->key, key, kl);
    op->repo_key_len = rl;
    op->tag_key_len = tl;
    op->now_ms = time_wall_ms();
    *out = op;
    return 0;
}

/* Writes the content record for a WOP_CONTENT or WOP_ACCESS op. Threadpool. */
static int apply_content(cache_t *c, MDB_txn *t, const wop_t *op)
{
    unsigned char buf[CONTENT_HDR + CACHE_MEDIA_MAX];
    struct content_rec r;
    MDB_val k = {strlen(op->digest), (void *)op->digest}, v;
    int rc = mdb_get(t, c->dbi_content, &k, &v);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    /* An unreadable record is rewritten by a put and left alone by an access. */
    bool have = rc == 0 && content_decode(&v, &r) == 0;
    if (op->what & WOP_CONTENT) {
        if (!have) {
            memset(&r, 0, sizeof r);
            r.e.created_ms = op->now_ms;
        }
        /* The same bytes fetched through the blob endpoint must not erase what a manifest
         * entry knows (its kind and media type). */
        if (!(have && r.e.kind == CACHE_MANIFEST && op->kind == CACHE_BLOB)) {
            r.e.kind = op->kind;
            memcpy(r.e.media_type, op->media_type, sizeof r.e.media_type);
        }
        r.e.size = op->size;
        if (r.e.accessed_ms < op->now_ms)
            r.e.accessed_ms = op->now_ms;
    } else {
        if (!have || r.e.accessed_ms >= op->now_ms)
            return 0;
        r.e.accessed_ms = op->now_ms;
    }
    v.mv_data = buf;
    v.mv_size = content_encode(&r, buf);
    return mdb_put(t, c->dbi_content, &k, &v, 0);
}

int index_touch_content(cache_t *c, MDB_txn *t, const char *digest, uint32_t pulls, int64_t at_ms)
{
    unsigned char buf[CONTENT_HDR + CACHE_MEDIA_MAX];
    struct content_rec r;
    MDB_val k = {strlen(digest), (void *)digest}, v;
    int rc = mdb_get(t, c->dbi_content, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0; /* removed since: nothing to count */
    if (rc)
        return rc;
    if (content_decode(&v, &r))
        return 0;
    r.e.pulls = UINT32_MAX - r.e.pulls < pulls ? UINT32_MAX : r.e.pulls + pulls;
    if (r.e.accessed_ms < at_ms)
        r.e.accessed_ms = at_ms;
    v.mv_data = buf;
    v.mv_size = content_encode(&r, buf);
    return mdb_put(t, c->dbi_content, &k, &v, 0);
}

/* One owners record: key + '\0' + digest -> {now, size}. */
static int put_owner_key(cache_t *c, MDB_txn *t, const char *prefix, size_t pl, int64_t now,
                         const char *digest, uint64_t size)
{
    char key[CACHE_KEY_MAX];
    size_t dl = strlen(digest);
    size_t kl = pl + 1 + dl;
    if (kl > c->max_key || kl > sizeof key)
        return 0;
    memcpy(key, prefix, pl);
    key[pl] = '\0';
    memcpy(key + pl + 1, digest, dl);
    unsigned char rec[OWNER_REC];
    rec[0] = OWNER_VERSION;
    index_put_u64(rec + 1, (uint64_t)now);
    index_put_u64(rec + 9, size);
    MDB_val k = {kl, key}, v = {sizeof rec, rec};
    return mdb_put(t, c->dbi_owners, &k, &v, 0);
}

/* owners[repo key + digest] and owners[upstream + "\0" + digest] (the upstream holds it under
 * some repository: what a globally scoped upstream asks) = {now, size}. A key over LMDB's limit
 * (a very long upstream name and repository) is skipped: that repository then proves each blob
 * to the upstream. */
static int put_owner(cache_t *c, MDB_txn *t, const wop_t *op, const char *digest, uint64_t size)
{
    if (!op->repo_key_len)
        return 0;
    int rc = put_owner_key(c, t, op->key, op->repo_key_len, op->now_ms, digest, size);
    if (rc)
        return rc;
    size_t ul = strnlen(op->key, op->repo_key_len); /* the upstream part, then "\0repo" */
    return put_owner_key(c, t, op->key, ul + 1, op->now_ms, digest, size);
}

/* refs[digest] = the packed references; owners for the manifest and each reference. */
static int apply_refs(cache_t *c, MDB_txn *t, const wop_t *op)
{
    size_t len = 1;
    for (size_t i = 0; i < op->nrefs; i++)
        len += 10 + strlen(op->refs[i].digest);
    unsigned char *rec = malloc(len);
    if (!rec)
        return ENOMEM;
    size_t n = 0;
    rec[n++] = REFS_VERSION;
    for (size_t i = 0; i < op->nrefs; i++) {
        size_t dl = strlen(op->refs[i].digest);
        rec[n++] = op->refs[i].role;
        index_put_u64(rec + n, op->refs[i].size);
        n += 8;
        rec[n++] = (unsigned char)dl;
        memcpy(rec + n, op->refs[i].digest, dl);
        n += dl;
    }
    MDB_val k = {strlen(op->digest), (void *)op->digest}, v = {n, rec};
    int rc = mdb_put(t, c->dbi_refs, &k, &v, 0);
    free(rec);
    if (rc)
        return rc;
    if ((rc = put_owner(c, t, op, op->digest, op->size)))
        return rc;
    for (size_t i = 0; i < op->nrefs && rc == 0; i++)
        rc = put_owner(c, t, op, op->refs[i].digest, op->refs[i].size);
    return rc;
}

static int apply_op(cache_t *c, MDB_txn *t, const wop_t *op)
{
    int rc;
    if ((op->what & (WOP_CONTENT | WOP_ACCESS)) && (rc = apply_content(c, t, op)))
        return rc;
    if (op->what & WOP_REPO) {
        unsigned char last[8];
        index_put_u64(last, (uint64_t)op->now_ms);
        MDB_val k = {op->repo_key_len, (void *)op->key}, v = {sizeof last, last};
        if ((rc = mdb_put(t, c->dbi_repos, &k, &v, 0)))
            return rc;
    }
    if ((op->what & WOP_REFS) && (rc = apply_refs(c, t, op)))
        return rc;
    if ((op->what & WOP_OWNER) && (rc = put_owner(c, t, op, op->digest, op->size)))
        return rc;
    if ((op->what & WOP_CUSTOM) && (rc = op->apply(c, t, op)))
        return rc;
    if (op->what & WOP_TAG) {
        unsigned char rec[TAG_HDR + REF_DIGEST_MAX];
        size_t dl = strlen(op->digest);
        rec[0] = TAG_VERSION;
        index_put_u64(rec + 1, (uint64_t)op->now_ms);
        memcpy(rec + TAG_HDR, op->digest, dl);
        MDB_val k = {op->tag_key_len, (void *)op->key}, v = {TAG_HDR + dl, rec};
        if ((rc = mdb_put(t, c->dbi_tags, &k, &v, 0)))
            return rc;
    }
    return 0;
}

/* Commits ops [first, end) in one write transaction; returns LMDB's code. */
static int commit_ops(cache_t *c, wop_t *first, wop_t *end)
{
    MDB_txn *t;
    int rc = mdb_txn_begin(c->env, NULL, 0, &t);
    if (rc)
        return rc;
    for (wop_t *op = first; op != end; op = op->next) {
        if ((rc = apply_op(c, t, op))) {
            mdb_txn_abort(t);
            return rc;
        }
    }
    return mdb_txn_commit(t);
}

static void wq_work(uv_work_t *w)
{
    cache_t *c = container_of(w, cache_t, wq_work);
    wop_t *batch = c->wq_batch;
    int rc = commit_ops(c, batch, NULL);
    if (rc == 0 || !batch->next || rc == MDB_MAP_FULL) {
        int err = index_err(rc, "commit");
        for (wop_t *op = batch; op; op = op->next)
            op->status = err;
        return;
    }
    /* One bad op must not fail the batch it happened to share: redo them one by one. */
    for (wop_t *op = batch; op; op = op->next)
        op->status = index_err(commit_ops(c, op, op->next), "commit");
}

static unsigned guard_bucket(const char *digest)
{
    return hash_str(digest) % CACHE_GUARD_BUCKETS;
}

static void guard_remove(cache_t *c, wop_t *op)
{
    for (wop_t **pp = &c->guard[guard_bucket(op->digest)]; *pp; pp = &(*pp)->guard_next) {
        if (*pp == op) {
            *pp = op->guard_next;
            return;
        }
    }
}

static void wq_start(cache_t *c);

static void wq_done(uv_work_t *w, int status)
{
    cache_t *c = container_of(w, cache_t, wq_work);
    wop_t *batch = c->wq_batch;
    c->wq_batch = NULL;
    /* wq_running stays set while the callbacks run so that what they queue accumulates into
     * one next batch instead of starting a job per callback. */
    for (wop_t *op = batch, *next; op; op = next) {
        next = op->next;
        if (op->what & WOP_ACCESS)
            guard_remove(c, op);
        if (op->cb)
            op->cb(op->arg, status ? status : op->status);
        wop_free(op);
    }
    c->wq_running = false;
    wq_start(c);
}

static void wq_start(cache_t *c)
{
    if (c->wq_running || !c->wq_head)
        return;
    wop_t *batch = c->wq_head, *last = batch;
    for (int n = 1; n < MAX_BATCH && last->next; n++)
        last = last->next;
    c->wq_head = last->next;
    if (!c->wq_head)
        c->wq_tail = NULL;
    last->next = NULL;
    c->wq_batch = batch;
    c->wq_running = true;
    /* uv_queue_work only fails for a NULL work callback. */
    uv_queue_work(c->loop, &c->wq_work, wq_work, wq_done);
}

void index_queue(cache_t *c, wop_t *op)
{
    op->next = NULL;
    if (c->wq_tail)
        c->wq_tail->next = op;
    else
        c->wq_head = op;
    c->wq_tail = op;
    wq_start(c);
}

void wop_free(wop_t *op)
{
    if (!op)
        return;
    free(op->refs);
    if (op->payload_free)
        op->payload_free(op->payload);
    free(op);
}

int wop_set_refs(wop_t *op, const image_t *img)
{
    op->refs = calloc(img->nrefs ? img->nrefs : 1, sizeof *op->refs);
    if (!op->refs)
        return -ENOMEM;
    for (size_t i = 0; i < img->nrefs; i++) {
        op->refs[i].role = (uint8_t)img->refs[i].role;
        op->refs[i].size = img->refs[i].size;
        memcpy(op->refs[i].digest, img->refs[i].digest, sizeof op->refs[i].digest);
    }
    op->nrefs = img->nrefs;
    op->what |= WOP_REFS;
    return 0;
}

bool wop_owns(const wop_t *op, const char *key, size_t kl, const char *digest, uint64_t *size)
{
    if (!(op->what & (WOP_REFS | WOP_OWNER)) || !op->repo_key_len)
        return false;
    /* key is "upstream\0repo", or "upstream\0" for any repository of the upstream. */
    bool any_repo = kl > 0 && key[kl - 1] == '\0';
    if (any_repo ? kl > op->repo_key_len || memcmp(op->key, key, kl) != 0
                 : op->repo_key_len != kl || memcmp(op->key, key, kl) != 0)
        return false;
    if (strcmp(op->digest, digest) == 0) {
        *size = op->size;
        return true;
    }
    for (size_t i = 0; (op->what & WOP_REFS) && i < op->nrefs; i++) {
        if (op->refs[i].role != IMAGE_SUBJECT && strcmp(op->refs[i].digest, digest) == 0) {
            *size = op->refs[i].size;
            return true;
        }
    }
    return false;
}

int index_repo_key(const cache_t *c, const char *upstream, const char *repo,
                   char key[CACHE_KEY_MAX], size_t *kl)
{
    if (upstream && upstream[0] && !repo) {
        /* Any repository of the upstream: "upstream\0". */
        size_t ul = strlen(upstream);
        if (ul + 1 > CACHE_KEY_MAX || ul + 1 > c->max_key)
            return WE_INVALID;
        memcpy(key, upstream, ul);
        key[ul] = '\0';
        *kl = ul + 1;
        return 0;
    }
    if (!upstream || !upstream[0] || !repo || !ref_name_valid(repo, strlen(repo)))
        return WE_INVALID;
    size_t cap = CACHE_KEY_MAX < c->max_key ? CACHE_KEY_MAX : c->max_key;
    return index_make_key(key, cap, upstream, repo, NULL, kl);
}

int index_owner_read(cache_t *c, const char *key, size_t kl, const char *digest, uint64_t *size)
{
    /* Newest first is not needed: any op that records ownership proves it. */
    for (const wop_t *op = c->wq_batch; op; op = op->next)
        if (wop_owns(op, key, kl, digest, size))
            return 0;
    for (const wop_t *op = c->wq_head; op; op = op->next)
        if (wop_owns(op, key, kl, digest, size))
            return 0;
    char k[CACHE_KEY_MAX];
    size_t dl = strlen(digest);
    if (kl + 1 + dl > sizeof k || kl + 1 + dl > c->max_key)
        return WE_NOTFOUND;
    memcpy(k, key, kl);
    k[kl] = '\0';
    memcpy(k + kl + 1, digest, dl);
    MDB_txn *t;
    int rc = index_read_begin(c, &t);
    if (rc)
        return rc;
    MDB_val mk = {kl + 1 + dl, k}, v;
    rc = mdb_get(t, c->dbi_owners, &mk, &v);
    if (rc == 0 && (v.mv_size != OWNER_REC || ((unsigned char *)v.mv_data)[0] != OWNER_VERSION))
        rc = MDB_INCOMPATIBLE;
    if (rc == 0)
        *size = index_get_u64((unsigned char *)v.mv_data + 9);
    mdb_txn_reset(t);
    return rc == MDB_NOTFOUND ? WE_NOTFOUND : index_err(rc, "owners read");
}

void index_queued_each(const cache_t *c, void (*fn)(void *arg, const wop_t *op), void *arg)
{
    for (const wop_t *op = c->wq_batch; op; op = op->next)
        fn(arg, op);
    for (const wop_t *op = c->wq_head; op; op = op->next)
        fn(arg, op);
}

void index_note_access(cache_t *c, const char *digest)
{
    wop_t *op;
    /* The record changes only when the batch commits; until then the guard stops a hot
     * digest from queueing one op per request. */
    unsigned b = guard_bucket(digest);
    for (op = c->guard[b]; op; op = op->guard_next)
        if (strcmp(op->digest, digest) == 0)
            return;
    if (wop_new(c, NULL, NULL, NULL, &op))
        return;
    op->what = WOP_ACCESS;
    snprintf(op->digest, sizeof op->digest, "%s", digest);
    op->guard_next = c->guard[b];
    c->guard[b] = op;
    index_queue(c, op);
}

/* Queues an op of what for digest under upstream/repo[/tag]. */
static int queue_digest_op(cache_t *c, unsigned what, const char *upstream, const char *repo,
                           const char *tag, const char *digest, uint64_t size, cache_done_cb cb,
                           void *arg)
{
    enum ref_alg alg;
    wop_t *op;
    size_t dl = strnlen(digest, REF_DIGEST_MAX + 1);
    if (dl > REF_DIGEST_MAX || !repo)
        return WE_INVALID;
    int rc = ref_digest_parse(digest, dl, &alg);
    if (rc)
        return rc;
    if ((rc = wop_new(c, upstream, repo, tag, &op)))
        return rc;
    op->what = what;
    op->size = size;
    memcpy(op->digest, digest, dl + 1);
    op->cb = cb;
    op->arg = arg;
    index_queue(c, op);
    return 0;
}

int cache_tag_set(cache_t *c, const char *upstream, const char *repo, const char *tag,
                  const char *digest, cache_done_cb cb, void *arg)
{
    if (!tag)
        return WE_INVALID;
    return queue_digest_op(c, WOP_TAG | WOP_REPO, upstream, repo, tag, digest, 0, cb, arg);
}

int cache_owner_set(cache_t *c, const char *upstream, const char *repo, const char *digest,
                    uint64_t size, cache_done_cb cb, void *arg)
{
    return queue_digest_op(c, WOP_OWNER, upstream, repo, NULL, digest, size, cb, arg);
}
