/* Access tracking: when each blob, manifest and tag was last pulled, and how often.
 *
 * Every hit would be a write if it went to LMDB directly; instead the loop thread counts pulls
 * in a small table (digest or tag key -> pulls since the last flush, time of the last one) and
 * flushes the whole table as one op on the index write queue (index.c), so it commits in the
 * same group transaction as whatever else is queued. A flush happens when the table has been
 * collecting for STATS_FLUSH_MS (checked at the next pull: no timer, nothing keeps the loop
 * alive), when it is full, and when someone needs the numbers on disk (cache_stats_flush:
 * retention before it ranks content, the app at shutdown). A crash loses at most the pulls
 * of the last interval: access times are for ranking, never for correctness.
 *
 * Content records keep their counter and time in the content record itself (index.c); tags
 * have their own database, tagstats: "upstream\0repo\0tag" -> {u8 version, i64 pulled_ms,
 * u32 pulls}, written only here and read by cache_tags_all_each (walk.c) and retention. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/timeutil.h"

#define STATS_FLUSH_MS 1000
#define STATS_MAX 4096 /* entries held before a flush is forced */
#define STATS_BUCKETS 1024
#define TAGSTAT_VERSION 1
#define TAGSTAT_REC 13

typedef struct stat_ent {
    struct stat_ent *next;
    bool is_tag;
    uint32_t pulls;
    int64_t last_ms;
    size_t klen;
    char key[]; /* digest, or the tag key (with NULs) */
} stat_ent_t;

struct stats {
    stat_ent_t *b[STATS_BUCKETS];
    size_t n;
    int64_t first_ms; /* when the oldest unflushed pull was counted */
};

/* What one flush op carries: the entries, chained. */
typedef struct stats_batch {
    stat_ent_t *head;
} stats_batch_t;

static unsigned bucket(const char *key, size_t klen)
{
    return (unsigned)(hash_bytes64(key, klen) % STATS_BUCKETS);
}

static void batch_free(void *p)
{
    stats_batch_t *b = p;
    if (!b)
        return;
    for (stat_ent_t *e = b->head, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    free(b);
}

int stats_tag_decode(const void *data, size_t len, int64_t *pulled_ms, uint32_t *pulls)
{
    const unsigned char *p = data;
    if (len != TAGSTAT_REC || p[0] != TAGSTAT_VERSION)
        return WE_INDEX;
    *pulled_ms = (int64_t)index_get_u64(p + 1);
    *pulls = (uint32_t)p[9] | (uint32_t)p[10] << 8 | (uint32_t)p[11] << 16 | (uint32_t)p[12] << 24;
    return 0;
}

static int touch_tag(cache_t *c, MDB_txn *t, const stat_ent_t *e)
{
    unsigned char rec[TAGSTAT_REC];
    int64_t pulled = 0;
    uint32_t pulls = 0;
    MDB_val k = {e->klen, (void *)e->key}, v;
    int rc = mdb_get(t, c->dbi_tagstats, &k, &v);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    if (rc == 0)
        stats_tag_decode(v.mv_data, v.mv_size, &pulled, &pulls);
    pulls = UINT32_MAX - pulls < e->pulls ? UINT32_MAX : pulls + e->pulls;
    if (pulled < e->last_ms)
        pulled = e->last_ms;
    rec[0] = TAGSTAT_VERSION;
    index_put_u64(rec + 1, (uint64_t)pulled);
    for (int i = 0; i < 4; i++)
        rec[9 + i] = (unsigned char)(pulls >> (8 * i));
    v.mv_data = rec;
    v.mv_size = sizeof rec;
    return mdb_put(t, c->dbi_tagstats, &k, &v, 0);
}

/* Threadpool, inside the batch's write transaction. */
static int apply_stats(cache_t *c, MDB_txn *t, const wop_t *op)
{
    stats_batch_t *b = op->payload;
    for (stat_ent_t *e = b->head; e; e = e->next) {
        int rc;
        if (e->is_tag) {
            rc = touch_tag(c, t, e);
        } else {
            char digest[REF_DIGEST_MAX + 1];
            memcpy(digest, e->key, e->klen);
            digest[e->klen] = '\0';
            rc = index_touch_content(c, t, digest, e->pulls, e->last_ms);
        }
        if (rc)
            return rc;
    }
    return 0;
}

void cache_stats_flush(cache_t *c)
{
    struct stats *s = c->stats;
    if (!s || s->n == 0)
        return;
    wop_t *op;
    stats_batch_t *b = calloc(1, sizeof *b);
    if (!b || wop_new(c, NULL, NULL, NULL, &op)) {
        free(b);
        return; /* out of memory: keep counting, try again at the next flush */
    }
    for (unsigned i = 0; i < STATS_BUCKETS; i++) {
        for (stat_ent_t *e = s->b[i], *next; e; e = next) {
            next = e->next;
            e->next = b->head;
            b->head = e;
        }
        s->b[i] = NULL;
    }
    s->n = 0;
    op->what = WOP_CUSTOM;
    op->apply = apply_stats;
    op->payload = b;
    op->payload_free = batch_free;
    index_queue(c, op);
}

static void note(cache_t *c, const char *key, size_t klen, bool is_tag)
{
    struct stats *s = c->stats;
    if (!s) {
        s = c->stats = calloc(1, sizeof *s);
        if (!s)
            return;
    }
    int64_t now = time_wall_ms();
    unsigned bi = bucket(key, klen);
    stat_ent_t *e;
    for (e = s->b[bi]; e; e = e->next)
        if (e->is_tag == is_tag && e->klen == klen && memcmp(e->key, key, klen) == 0)
            break;
    if (!e) {
        e = calloc(1, sizeof *e + klen);
        if (!e)
            return;
        e->is_tag = is_tag;
        e->klen = klen;
        memcpy(e->key, key, klen);
        e->next = s->b[bi];
        s->b[bi] = e;
        if (s->n++ == 0)
            s->first_ms = now;
    }
    if (e->pulls < UINT32_MAX)
        e->pulls++;
    e->last_ms = now;
    if (s->n >= STATS_MAX || now - s->first_ms >= STATS_FLUSH_MS)
        cache_stats_flush(c);
}

void cache_note_access(cache_t *c, const char *digest)
{
    enum ref_alg alg;
    if (store_digest_parse(digest, &alg))
        return;
    note(c, digest, strlen(digest), false);
}

void cache_note_tag_pull(cache_t *c, const char *upstream, const char *repo, const char *tag)
{
    char key[CACHE_KEY_MAX];
    size_t kl;
    if (!repo || !ref_name_valid(repo, strlen(repo)) || !tag || !ref_tag_valid(tag, strlen(tag)))
        return;
    if (index_tag_key(c, upstream, repo, tag, key, &kl))
        return;
    note(c, key, kl, true);
}

void stats_close(cache_t *c)
{
    struct stats *s = c->stats;
    if (!s)
        return;
    if (s->n)
        LOG_DEBUG("cache: %zu access record(s) not flushed at close", s->n);
    for (unsigned i = 0; i < STATS_BUCKETS; i++) {
        for (stat_ent_t *e = s->b[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    free(s);
    c->stats = NULL;
}
