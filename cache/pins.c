/* Pins and tag history: two small LMDB databases index.c opens with the others.
 *
 *   pins      "upstream\0repo\0tag" -> {u8 version (1), i64 set_ms, u8 source, digest bytes}
 *             (the format pins_read.c reads for retention; source 1: winch pin)
 *   taghist   "upstream\0repo\0tag" -> {u8 version, i64 seen_first_ms, u8 n, served, u8 n, seen}
 *
 * The cache gives them no meaning (the policy does): a pin is a digest with who set it and
 * when; a history is the digest last served and the digest last seen with when it was first
 * seen. Pins are written by `winch pin` in its own process beside a serving winch (LMDB
 * serialises the writers) and read by the server on every request by tag, so a new pin is seen
 * by the first request after its commit, without a restart.
 *
 * Reads run on the loop thread in a cached read transaction of this file's own (renewed per
 * read, reset after). Writes are rare (a pin, a tag whose digest moved under soak): each is one
 * write transaction on the threadpool, one at a time, in the order queued; reads see queued
 * writes first. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"

#define PIN_VERSION 1
#define PIN_HDR 10
#define HIST_VERSION 1
#define REC_MAX (1 + 8 + 2 * (1 + REF_DIGEST_MAX))

enum pop_kind { POP_PIN_SET = 1, POP_PIN_DELETE, POP_HIST_SET };

/* One queued write. */
typedef struct pop pop_t;
struct pop {
    pop_t *next;
    enum pop_kind kind;
    int status; /* set by the job */
    cache_done_cb cb;
    void *arg;
    size_t kl, vl;
    char key[CACHE_KEY_MAX];
    unsigned char val[REC_MAX];
};

struct pins {
    MDB_txn *rtxn;      /* the loop's read transaction, reset between reads */
    pop_t *head, *tail; /* waiting */
    pop_t *running;     /* owned by the job in flight */
    uv_work_t work;
};

/* ---- Records ---------------------------------------------------------------------------- */

static void put_i64(unsigned char *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(u >> (8 * i));
}

static int64_t get_i64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return (int64_t)v;
}

/* Appends a short string (length byte, then bytes); returns the new length. */
static size_t put_str(unsigned char *rec, size_t n, const char *s, size_t max)
{
    size_t l = strnlen(s, max);
    rec[n++] = (unsigned char)l;
    memcpy(rec + n, s, l);
    return n + l;
}

/* Reads a short string at *off into out[cap]; false when it does not fit the record. */
static bool get_str(const unsigned char *rec, size_t len, size_t *off, char *out, size_t cap)
{
    if (*off >= len)
        return false;
    size_t l = rec[(*off)++];
    if (l >= cap || *off + l > len)
        return false;
    memcpy(out, rec + *off, l);
    out[l] = '\0';
    *off += l;
    return true;
}

static int pin_decode(const unsigned char *rec, size_t len, cache_pin_t *out)
{
    memset(out, 0, sizeof *out);
    if (len <= PIN_HDR || rec[0] != PIN_VERSION || len - PIN_HDR > REF_DIGEST_MAX)
        return WE_INDEX;
    out->set_ms = get_i64(rec + 1);
    out->source = rec[9];
    memcpy(out->digest, rec + PIN_HDR, len - PIN_HDR);
    out->digest[len - PIN_HDR] = '\0';
    return 0;
}

static int hist_decode(const unsigned char *rec, size_t len, cache_tag_history_t *out)
{
    size_t off = 9;
    memset(out, 0, sizeof *out);
    if (len < 9 || rec[0] != HIST_VERSION)
        return WE_INDEX;
    out->seen_first_ms = get_i64(rec + 1);
    if (!get_str(rec, len, &off, out->served, sizeof out->served) ||
        !get_str(rec, len, &off, out->seen, sizeof out->seen))
        return WE_INDEX;
    return 0;
}

/* "upstream\0repo\0tag", validated; WE_INVALID when a part is bad or the key too long. */
static int make_key(const cache_t *c, const char *upstream, const char *repo, const char *tag,
                    char key[CACHE_KEY_MAX], size_t *kl)
{
    if (!upstream || !repo || !tag || !upstream[0] || !ref_name_valid(repo, strlen(repo)) ||
        !ref_tag_valid(tag, strlen(tag)))
        return WE_INVALID;
    size_t ul = strlen(upstream), rl = strlen(repo), tl = strlen(tag);
    size_t n = ul + 1 + rl + 1 + tl;
    if (n > CACHE_KEY_MAX || n > c->max_key || memchr(upstream, '\0', ul))
        return WE_INVALID;
    memcpy(key, upstream, ul);
    key[ul] = '\0';
    memcpy(key + ul + 1, repo, rl);
    key[ul + 1 + rl] = '\0';
    memcpy(key + ul + 2 + rl, tag, tl);
    *kl = n;
    return 0;
}

static bool digest_ok(const char *d)
{
    size_t n = strnlen(d, REF_DIGEST_MAX + 1);
    return n <= REF_DIGEST_MAX && ref_digest_parse(d, n, NULL) == 0;
}

static int lmdb_err(int rc, const char *what)
{
    if (rc == 0)
        return 0;
    if (rc == MDB_NOTFOUND)
        return WE_NOTFOUND;
    LOG_ERROR("cache: pins %s: %s", what, mdb_strerror(rc));
    return rc > 0 ? -rc : WE_INDEX;
}

/* ---- Open and close ---------------------------------------------------------------------- */

int pins_open(cache_t *c)
{
    c->pins = calloc(1, sizeof *c->pins);
    return c->pins ? 0 : -ENOMEM;
}

int pins_close(cache_t *c)
{
    struct pins *p = c->pins;
    if (!p)
        return 0;
    if (p->head)
        LOG_ERROR("cache: closing with pin or tag history writes pending; they are lost (a bug)");
    for (pop_t *op = p->head, *next; op; op = next) {
        next = op->next;
        free(op);
    }
    p->head = p->tail = NULL;
    if (p->running)
        return -EBUSY;
    if (p->rtxn)
        mdb_txn_abort(p->rtxn);
    free(p);
    c->pins = NULL;
    return 0;
}

/* ---- Reads ------------------------------------------------------------------------------- */

/* The newest queued or running write of key in dbi's kind (set or delete), or NULL. */
static const pop_t *pending(const struct pins *p, bool pin, const char *key, size_t kl)
{
    const pop_t *best = NULL;
    const pop_t *lists[2] = {p->running, p->head};
    for (int l = 0; l < 2; l++) {
        for (const pop_t *op = lists[l]; op; op = op->next) {
            bool is_pin = op->kind == POP_PIN_SET || op->kind == POP_PIN_DELETE;
            if (is_pin == pin && op->kl == kl && memcmp(op->key, key, kl) == 0)
                best = op; /* later in the order is newer */
        }
    }
    return best;
}

/* Reads key in dbi into rec[REC_MAX]: 0 with *len, WE_NOTFOUND, WE_INDEX. */
static int read_rec(cache_t *c, MDB_dbi dbi, const char *key, size_t kl, unsigned char *rec,
                    size_t *len)
{
    struct pins *p = c->pins;
    int rc;
    if (p->rtxn && mdb_txn_renew(p->rtxn) != 0) {
        mdb_txn_abort(p->rtxn);
        p->rtxn = NULL;
    }
    if (!p->rtxn && (rc = lmdb_err(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &p->rtxn), "read"))) {
        p->rtxn = NULL;
        return rc;
    }
    MDB_val k = {kl, (void *)key}, v;
    rc = mdb_get(p->rtxn, dbi, &k, &v);
    if (rc == 0 && v.mv_size > REC_MAX)
        rc = MDB_CORRUPTED;
    if (rc == 0) {
        memcpy(rec, v.mv_data, v.mv_size);
        *len = v.mv_size;
    }
    mdb_txn_reset(p->rtxn);
    return rc == MDB_NOTFOUND ? WE_NOTFOUND : lmdb_err(rc, "read");
}

int cache_pin_get(cache_t *c, const char *upstream, const char *repo, const char *tag,
                  cache_pin_t *out)
{
    char key[CACHE_KEY_MAX];
    unsigned char rec[REC_MAX];
    size_t kl, len = 0;
    if (make_key(c, upstream, repo, tag, key, &kl))
        return WE_NOTFOUND;
    const pop_t *op = pending(c->pins, true, key, kl);
    if (op)
        return op->kind == POP_PIN_DELETE ? WE_NOTFOUND : pin_decode(op->val, op->vl, out);
    int rc = read_rec(c, c->dbi_pins, key, kl, rec, &len);
    if (rc == 0 && (rc = pin_decode(rec, len, out)) != 0)
        LOG_ERROR("cache: pin record %s/%s:%s is corrupt or of an unknown version", upstream, repo,
                  tag);
    return rc;
}

int cache_tag_history_get(cache_t *c, const char *upstream, const char *repo, const char *tag,
                          cache_tag_history_t *out)
{
    char key[CACHE_KEY_MAX];
    unsigned char rec[REC_MAX];
    size_t kl, len = 0;
    if (make_key(c, upstream, repo, tag, key, &kl))
        return WE_NOTFOUND;
    const pop_t *op = pending(c->pins, false, key, kl);
    if (op)
        return hist_decode(op->val, op->vl, out);
    int rc = read_rec(c, c->dbi_taghist, key, kl, rec, &len);
    if (rc == 0 && (rc = hist_decode(rec, len, out)) != 0)
        LOG_ERROR("cache: tag history %s/%s:%s is corrupt or of an unknown version", upstream, repo,
                  tag);
    return rc;
}

/* Splits a pins key "upstream\0repo\0tag" (k[0..kl), NUL-terminated copy in key) into its
 * parts; false for anything else. */
static bool split_key(const char *key, size_t kl, const char **repo, const char **tag)
{
    const char *r = memchr(key, '\0', kl);
    if (!r || (size_t)(r - key) + 1 >= kl)
        return false;
    r++;
    const char *t = memchr(r, '\0', kl - (size_t)(r - key));
    if (!t || (size_t)(t - key) + 1 >= kl)
        return false;
    *repo = r;
    *tag = t + 1;
    return true;
}

int cache_pins_list(cache_t *c, const char *upstream, const char *repo,
                    int (*fn)(void *arg, const char *upstream, const char *repo, const char *tag,
                              const cache_pin_t *pin),
                    void *arg)
{
    char prefix[CACHE_KEY_MAX];
    size_t pl = 0;
    MDB_txn *t = NULL;
    MDB_cursor *cur = NULL;
    int rc;
    if (upstream) {
        size_t ul = strlen(upstream), rl = repo ? strlen(repo) : 0;
        if (ul + rl + 2 > sizeof prefix)
            return 0; /* too long to have been stored */
        memcpy(prefix, upstream, ul + 1);
        pl = ul + 1;
        if (repo) {
            memcpy(prefix + pl, repo, rl + 1);
            pl += rl + 1;
        }
    }
    if ((rc = lmdb_err(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t), "begin read")) ||
        (rc = lmdb_err(mdb_cursor_open(t, c->dbi_pins, &cur), "cursor")))
        goto out;
    MDB_val k = {pl, prefix}, v;
    rc = mdb_cursor_get(cur, &k, &v, pl ? MDB_SET_RANGE : MDB_FIRST);
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        char key[CACHE_KEY_MAX + 1];
        const char *r, *tg;
        cache_pin_t pin;
        if (k.mv_size < pl || memcmp(k.mv_data, prefix, pl) != 0)
            break;
        if (k.mv_size > CACHE_KEY_MAX || pin_decode(v.mv_data, v.mv_size, &pin) != 0)
            continue;
        memcpy(key, k.mv_data, k.mv_size);
        key[k.mv_size] = '\0';
        if (!split_key(key, k.mv_size, &r, &tg))
            continue;
        if (fn(arg, key, r, tg, &pin))
            break;
    }
    rc = rc == MDB_NOTFOUND || rc == 0 ? 0 : lmdb_err(rc, "scan");
out:
    if (cur)
        mdb_cursor_close(cur);
    if (t)
        mdb_txn_abort(t);
    return rc;
}

/* ---- Writes ------------------------------------------------------------------------------ */

static void start_next(cache_t *c);

static void pop_work(uv_work_t *w)
{
    struct pins *p = container_of(w, struct pins, work);
    cache_t *c = w->data;
    pop_t *op = p->running;
    MDB_txn *t;
    int rc = mdb_txn_begin(c->env, NULL, 0, &t);
    if (rc == 0) {
        MDB_val k = {op->kl, op->key}, v = {op->vl, op->val};
        MDB_dbi dbi = op->kind == POP_HIST_SET ? c->dbi_taghist : c->dbi_pins;
        rc = op->kind == POP_PIN_DELETE ? mdb_del(t, dbi, &k, NULL) : mdb_put(t, dbi, &k, &v, 0);
        if (rc == 0)
            rc = mdb_txn_commit(t);
        else
            mdb_txn_abort(t);
    }
    op->status = rc == MDB_NOTFOUND ? WE_NOTFOUND : lmdb_err(rc, "write");
}

static void pop_done(uv_work_t *w, int status)
{
    cache_t *c = w->data;
    struct pins *p = c->pins;
    pop_t *op = p->running;
    p->running = NULL;
    if (op->cb)
        op->cb(op->arg, status ? status : op->status);
    free(op);
    start_next(c);
}

static void start_next(cache_t *c)
{
    struct pins *p = c->pins;
    if (p->running || !p->head)
        return;
    p->running = p->head;
    p->head = p->head->next;
    if (!p->head)
        p->tail = NULL;
    p->running->next = NULL;
    p->work.data = c;
    /* uv_queue_work only fails for a NULL work callback. */
    uv_queue_work(c->loop, &p->work, pop_work, pop_done);
}

static int queue(cache_t *c, enum pop_kind kind, const char *upstream, const char *repo,
                 const char *tag, cache_done_cb cb, void *arg, pop_t **out)
{
    pop_t *op = calloc(1, sizeof *op);
    if (!op)
        return -ENOMEM;
    int rc = make_key(c, upstream, repo, tag, op->key, &op->kl);
    if (rc) {
        free(op);
        return rc;
    }
    op->kind = kind;
    op->cb = cb;
    op->arg = arg;
    *out = op;
    return 0;
}

static void submit(cache_t *c, pop_t *op)
{
    struct pins *p = c->pins;
    if (p->tail)
        p->tail->next = op;
    else
        p->head = op;
    p->tail = op;
    start_next(c);
}

int cache_pin_set(cache_t *c, const char *upstream, const char *repo, const char *tag,
                  const char *digest, cache_done_cb cb, void *arg)
{
    pop_t *op;
    if (!digest || !digest_ok(digest))
        return WE_INVALID;
    int rc = queue(c, POP_PIN_SET, upstream, repo, tag, cb, arg, &op);
    if (rc)
        return rc;
    size_t dl = strlen(digest);
    op->val[0] = PIN_VERSION;
    put_i64(op->val + 1, time_wall_ms());
    op->val[9] = CACHE_PIN_STORED;
    memcpy(op->val + PIN_HDR, digest, dl);
    op->vl = PIN_HDR + dl;
    submit(c, op);
    return 0;
}

int cache_pin_delete(cache_t *c, const char *upstream, const char *repo, const char *tag,
                     cache_done_cb cb, void *arg)
{
    pop_t *op;
    int rc = queue(c, POP_PIN_DELETE, upstream, repo, tag, cb, arg, &op);
    if (rc)
        return rc;
    submit(c, op);
    return 0;
}

int cache_tag_history_set(cache_t *c, const char *upstream, const char *repo, const char *tag,
                          const cache_tag_history_t *h, cache_done_cb cb, void *arg)
{
    pop_t *op;
    if ((h->served[0] && !digest_ok(h->served)) || (h->seen[0] && !digest_ok(h->seen)))
        return WE_INVALID;
    int rc = queue(c, POP_HIST_SET, upstream, repo, tag, cb, arg, &op);
    if (rc)
        return rc;
    op->val[0] = HIST_VERSION;
    put_i64(op->val + 1, h->seen_first_ms);
    size_t n = put_str(op->val, 9, h->served, REF_DIGEST_MAX);
    op->vl = put_str(op->val, n, h->seen, REF_DIGEST_MAX);
    submit(c, op);
    return 0;
}
