/* Negative cache (negcache.h): a chained hash table of entries that are also on an LRU list,
 * most recently used first. Keys are "upstream\nrepo\nref": none of the three may contain a
 * newline (the route validated them), so distinct triples never share a key. */
#include "proxy/negcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"

typedef struct neg {
    struct neg *hnext; /* bucket chain */
    struct neg *lru_prev, *lru_next;
    int64_t expires_ms;
    uint32_t hash;
    char key[]; /* "upstream\nrepo\nref" */
} neg_t;

struct negcache {
    neg_t **buckets;
    size_t nbuckets, count, max;
    neg_t *lru_head, *lru_tail;
};

int negcache_create(negcache_t **out, size_t max_entries)
{
    if (max_entries == 0)
        return -EINVAL;
    negcache_t *n = calloc(1, sizeof *n);
    if (!n)
        return -ENOMEM;
    n->max = max_entries;
    n->nbuckets = max_entries;
    n->buckets = calloc(n->nbuckets, sizeof(neg_t *));
    if (!n->buckets) {
        free(n);
        return -ENOMEM;
    }
    *out = n;
    return 0;
}

void negcache_free(negcache_t *n)
{
    if (!n)
        return;
    for (neg_t *e = n->lru_head, *next; e; e = next) {
        next = e->lru_next;
        free(e);
    }
    free(n->buckets);
    free(n);
}

/* The key in buf[cap]; false when it does not fit (then nothing is cached). */
static bool make_key(char *buf, size_t cap, const char *upstream, const char *repo, const char *ref)
{
    size_t a = strlen(upstream), b = strlen(repo), c = strlen(ref);
    if (a + b + c + 3 > cap)
        return false;
    memcpy(buf, upstream, a);
    buf[a] = '\n';
    memcpy(buf + a + 1, repo, b);
    buf[a + 1 + b] = '\n';
    memcpy(buf + a + b + 2, ref, c + 1);
    return true;
}

static neg_t *find(const negcache_t *n, const char *key, uint32_t h, neg_t ***slot)
{
    neg_t **p = &n->buckets[h % n->nbuckets];
    for (; *p; p = &(*p)->hnext) {
        if ((*p)->hash == h && strcmp((*p)->key, key) == 0) {
            *slot = p;
            return *p;
        }
    }
    *slot = p;
    return NULL;
}

static void lru_unlink(negcache_t *n, neg_t *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        n->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        n->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(negcache_t *n, neg_t *e)
{
    e->lru_prev = NULL;
    e->lru_next = n->lru_head;
    if (n->lru_head)
        n->lru_head->lru_prev = e;
    else
        n->lru_tail = e;
    n->lru_head = e;
}

/* Removes e from its bucket and the list, and frees it. */
static void drop(negcache_t *n, neg_t *e)
{
    neg_t **p = &n->buckets[e->hash % n->nbuckets];
    while (*p && *p != e)
        p = &(*p)->hnext;
    if (*p)
        *p = e->hnext;
    lru_unlink(n, e);
    n->count--;
    free(e);
}

/* Room for the longest upstream name, repository and digest, with separators. */
#define NEG_KEY_MAX 1024

void negcache_put(negcache_t *n, const char *upstream, const char *repo, const char *ref,
                  int64_t now_ms, uint32_t ttl_ms)
{
    char key[NEG_KEY_MAX];
    if (!n || ttl_ms == 0 || !make_key(key, sizeof key, upstream, repo, ref))
        return;
    uint32_t h = hash_str(key);
    neg_t **slot;
    neg_t *e = find(n, key, h, &slot);
    if (e) {
        e->expires_ms = now_ms + ttl_ms;
        lru_unlink(n, e);
        lru_push_front(n, e);
        return;
    }
    if (n->count >= n->max)
        drop(n, n->lru_tail);
    size_t klen = strlen(key);
    e = malloc(sizeof *e + klen + 1);
    if (!e)
        return;
    memcpy(e->key, key, klen + 1);
    e->hash = h;
    e->expires_ms = now_ms + ttl_ms;
    /* The eviction above may have emptied the slot's chain: look the slot up again. */
    (void)find(n, key, h, &slot);
    e->hnext = NULL;
    *slot = e;
    lru_push_front(n, e);
    n->count++;
}

bool negcache_hit(negcache_t *n, const char *upstream, const char *repo, const char *ref,
                  int64_t now_ms)
{
    char key[NEG_KEY_MAX];
    if (!n || !make_key(key, sizeof key, upstream, repo, ref))
        return false;
    neg_t **slot;
    neg_t *e = find(n, key, hash_str(key), &slot);
    if (!e)
        return false;
    if (now_ms >= e->expires_ms) {
        drop(n, e);
        return false;
    }
    lru_unlink(n, e);
    lru_push_front(n, e);
    return true;
}

void negcache_forget(negcache_t *n, const char *upstream, const char *repo, const char *ref)
{
    char key[NEG_KEY_MAX];
    if (!n || !make_key(key, sizeof key, upstream, repo, ref))
        return;
    neg_t **slot;
    neg_t *e = find(n, key, hash_str(key), &slot);
    if (e)
        drop(n, e);
}

size_t negcache_count(const negcache_t *n)
{
    return n ? n->count : 0;
}
