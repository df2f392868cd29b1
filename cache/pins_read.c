/* Pins as retention reads them. Issue 9 stores pins in the index's "pins" database (set by
 * `winch pin`, read by the request path); retention only needs to know what they name, so this
 * file reads that database and nothing else:
 *
 *   pins  "upstream\0repo\0tag" -> {u8 version (1), i64 since_ms, u8 source, digest string}
 *
 * A record of another version is skipped with a warning rather than guessed at. */
#include <string.h>

#include "cache/gc.h"
#include "common/err.h"
#include "common/log.h"

#define PIN_VERSION 1
#define PIN_HDR 10

static bool pin_decode(const MDB_val *k, const MDB_val *v, char *key, const char **up,
                       const char **repo, const char **tag, char digest[REF_DIGEST_MAX + 1])
{
    const unsigned char *p = v->mv_data;
    if (k->mv_size == 0 || k->mv_size >= CACHE_KEY_MAX || v->mv_size <= PIN_HDR ||
        p[0] != PIN_VERSION || v->mv_size - PIN_HDR > REF_DIGEST_MAX)
        return false;
    memcpy(key, k->mv_data, k->mv_size);
    key[k->mv_size] = '\0';
    *up = key;
    *repo = key + strlen(key) + 1;
    if (*repo >= key + k->mv_size)
        return false;
    *tag = *repo + strlen(*repo) + 1;
    if (*tag >= key + k->mv_size)
        return false;
    memcpy(digest, p + PIN_HDR, v->mv_size - PIN_HDR);
    digest[v->mv_size - PIN_HDR] = '\0';
    return true;
}

static int pins_scan(cache_t *c, MDB_txn *t,
                     int (*fn)(void *arg, const MDB_val *k, const char *up, const char *repo,
                               const char *tag, const char *digest),
                     void *arg)
{
    MDB_cursor *cur = NULL;
    char key[CACHE_KEY_MAX + 1], digest[REF_DIGEST_MAX + 1];
    const char *up, *repo, *tag;
    int rc = mdb_cursor_open(t, c->dbi_pins, &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (!pin_decode(&k, &v, key, &up, &repo, &tag, digest)) {
            LOG_WARN("cache: a pin record of an unknown format is ignored");
            continue;
        }
        if (fn(arg, &k, up, repo, tag, digest))
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int mark_one(void *arg, const MDB_val *k, const char *up, const char *repo, const char *tag,
                    const char *digest)
{
    gc_model_t *m = arg;
    (void)up;
    (void)repo;
    (void)tag;
    for (size_t i = 0; i < m->nr; i++) {
        gc_root_t *r = &m->roots[i];
        if (r->type == GC_ROOT_TAG && r->klen == k->mv_size &&
            memcmp(r->key, k->mv_data, r->klen) == 0)
            r->protected = true;
    }
    uint32_t n = gc_find(m, digest, strlen(digest));
    if (n != GC_NONE)
        m->nodes[n].flags |= GC_KEEP;
    return 0;
}

int pins_mark(gc_model_t *m, cache_t *c, MDB_txn *t)
{
    return pins_scan(c, t, mark_one, m);
}

struct each {
    int (*fn)(void *arg, const char *upstream, const char *repo, const char *tag,
              const char *digest);
    void *arg;
};

static int each_one(void *arg, const MDB_val *k, const char *up, const char *repo, const char *tag,
                    const char *digest)
{
    struct each *e = arg;
    (void)k;
    return e->fn(e->arg, up, repo, tag, digest);
}

int cache_pin_each(cache_t *c,
                   int (*fn)(void *arg, const char *upstream, const char *repo, const char *tag,
                             const char *digest),
                   void *arg)
{
    MDB_txn *t = NULL;
    struct each e = {fn, arg};
    if (mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t))
        return WE_INDEX;
    int rc = pins_scan(c, t, each_one, &e);
    mdb_txn_abort(t);
    return rc ? WE_INDEX : 0;
}
