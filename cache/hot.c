/* The hot tier: copies of recently read manifests in memory, so the busiest request a mirror
 * sees (a manifest by tag, dozens of nodes at once) costs an index lookup and a memcpy rather
 * than an open, a read and a close. Content-addressed entries never go stale; the tier is
 * bounded by bytes and entries and evicts least recently used. Loop thread only. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "common/hash.h"

#define HOT_BUCKETS 1024
#define HOT_MAX_ENTRY (256u << 10) /* larger manifests are rare: read them from disk */
#define HOT_MAX_BYTES (32u << 20)
#define HOT_MAX_ENTRIES 8192

typedef struct hot_entry hot_entry_t;
struct hot_entry {
    hot_entry_t *hnext;               /* bucket chain */
    hot_entry_t *lru_prev, *lru_next; /* most recent at the head */
    size_t len;
    char digest[REF_DIGEST_MAX + 1];
    char bytes[];
};

struct hot {
    hot_entry_t *buckets[HOT_BUCKETS];
    hot_entry_t *lru_head, *lru_tail;
    size_t bytes, entries;
};

static unsigned hot_hash(const char *digest)
{
    return hash_str(digest) % HOT_BUCKETS;
}

static void lru_unlink(hot_t *t, hot_entry_t *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        t->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        t->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push(hot_t *t, hot_entry_t *e)
{
    e->lru_next = t->lru_head;
    e->lru_prev = NULL;
    if (t->lru_head)
        t->lru_head->lru_prev = e;
    t->lru_head = e;
    if (!t->lru_tail)
        t->lru_tail = e;
}

static void evict(hot_t *t, hot_entry_t *e)
{
    hot_entry_t **pp = &t->buckets[hot_hash(e->digest)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(t, e);
    t->bytes -= e->len;
    t->entries--;
    free(e);
}

/* The least recently used entry: the tail, whose successor is always NULL. */
static void evict_oldest(hot_t *t)
{
    hot_entry_t *e = t->lru_tail;
    t->lru_tail = e->lru_prev;
    if (t->lru_tail)
        t->lru_tail->lru_next = NULL;
    else
        t->lru_head = NULL;
    e->lru_prev = NULL;
    evict(t, e);
}

int hot_new(hot_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : -ENOMEM;
}

void hot_free(hot_t *t)
{
    if (!t)
        return;
    while (t->lru_head)
        evict(t, t->lru_head);
    free(t);
}

bool hot_get(hot_t *t, const char *digest, char **bytes, size_t *len)
{
    for (hot_entry_t *e = t->buckets[hot_hash(digest)]; e; e = e->hnext) {
        if (strcmp(e->digest, digest) != 0)
            continue;
        char *copy = malloc(e->len + 1);
        if (!copy)
            return false;
        memcpy(copy, e->bytes, e->len);
        copy[e->len] = '\0';
        *bytes = copy;
        *len = e->len;
        if (t->lru_head != e) {
            lru_unlink(t, e);
            lru_push(t, e);
        }
        return true;
    }
    return false;
}

void hot_put(hot_t *t, const char *digest, const char *bytes, size_t len)
{
    if (len > HOT_MAX_ENTRY || strlen(digest) > REF_DIGEST_MAX)
        return;
    unsigned b = hot_hash(digest);
    for (hot_entry_t *e = t->buckets[b]; e; e = e->hnext)
        if (strcmp(e->digest, digest) == 0)
            return;
    while (t->lru_tail && (t->bytes + len > HOT_MAX_BYTES || t->entries >= HOT_MAX_ENTRIES))
        evict_oldest(t);
    hot_entry_t *e = malloc(sizeof *e + len);
    if (!e)
        return;
    memcpy(e->bytes, bytes, len);
    e->len = len;
    strcpy(e->digest, digest);
    e->hnext = t->buckets[b];
    t->buckets[b] = e;
    lru_push(t, e);
    t->bytes += len;
    t->entries++;
}
