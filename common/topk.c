/* Space-saving top-k (topk.h). Entries live in one array; an open-addressing index (linear
 * probing, backward-shift deletion, twice the capacity) finds a key's entry without a scan.
 * Finding the smallest count is a scan of the entries, done only when a new key replaces one:
 * at a few hundred entries it costs less than the request that brought the key. */
#include "common/topk.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

typedef struct entry {
    uint64_t count, error;
    uint32_t hash;
    uint16_t len;
} entry_t;

struct topk {
    size_t cap, used, key_max, nslots;
    uint64_t replaced;
    entry_t *e;
    char *keys;      /* cap * (key_max + 1) */
    uint32_t *slots; /* nslots (a power of two): entry index, or NONE */
};

static uint32_t hash_key(const char *k, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h;
}

static char *key_of(const topk_t *t, size_t i)
{
    return t->keys + i * (t->key_max + 1);
}

int topk_create(topk_t **out, size_t capacity, size_t key_max)
{
    *out = NULL;
    if (capacity == 0 || capacity > 65536 || key_max == 0 || key_max > 65535)
        return -EINVAL;
    topk_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->cap = capacity;
    t->key_max = key_max;
    t->nslots = 1;
    while (t->nslots < capacity * 2)
        t->nslots <<= 1;
    t->e = calloc(capacity, sizeof *t->e);
    t->keys = calloc(capacity, key_max + 1);
    t->slots = malloc(t->nslots * sizeof *t->slots);
    if (!t->e || !t->keys || !t->slots) {
        topk_free(t);
        return -ENOMEM;
    }
    for (size_t i = 0; i < t->nslots; i++)
        t->slots[i] = NONE;
    *out = t;
    return 0;
}

void topk_free(topk_t *t)
{
    if (!t)
        return;
    free(t->e);
    free(t->keys);
    free(t->slots);
    free(t);
}

/* The slot holding key, or the empty slot where it would go. */
static size_t find_slot(const topk_t *t, const char *key, size_t len, uint32_t h, bool *found)
{
    size_t mask = t->nslots - 1;
    for (size_t s = h & mask;; s = (s + 1) & mask) {
        uint32_t i = t->slots[s];
        if (i == NONE) {
            *found = false;
            return s;
        }
        const entry_t *e = &t->e[i];
        if (e->hash == h && e->len == len && memcmp(key_of(t, i), key, len) == 0) {
            *found = true;
            return s;
        }
    }
}

/* Empties slot s and shifts back the entries after it that probed past it. */
static void slot_delete(topk_t *t, size_t s)
{
    size_t mask = t->nslots - 1;
    size_t hole = s;
    for (size_t j = (s + 1) & mask; t->slots[j] != NONE; j = (j + 1) & mask) {
        size_t home = t->e[t->slots[j]].hash & mask;
        /* j's entry may move into the hole if its home is not in (hole, j] (cyclically). */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            t->slots[hole] = t->slots[j];
            hole = j;
        }
    }
    t->slots[hole] = NONE;
}

void topk_add(topk_t *t, const char *key, size_t len, uint64_t n)
{
    if (!t)
        return;
    if (len > t->key_max)
        len = t->key_max;
    uint32_t h = hash_key(key, len);
    bool found;
    size_t s = find_slot(t, key, len, h, &found);
    if (found) {
        t->e[t->slots[s]].count += n;
        return;
    }
    size_t i;
    uint64_t base = 0;
    if (t->used < t->cap) {
        i = t->used++;
    } else {
        i = 0;
        for (size_t k = 1; k < t->cap; k++)
            if (t->e[k].count < t->e[i].count)
                i = k;
        base = t->e[i].count;
        bool old_found;
        size_t old = find_slot(t, key_of(t, i), t->e[i].len, t->e[i].hash, &old_found);
        slot_delete(t, old);
        t->replaced++;
        /* The deletion may have moved entries: find the new key's empty slot again. */
        s = find_slot(t, key, len, h, &found);
    }
    memcpy(key_of(t, i), key, len);
    key_of(t, i)[len] = '\0';
    t->e[i] = (entry_t){.count = base + n, .error = base, .hash = h, .len = (uint16_t)len};
    t->slots[s] = (uint32_t)i;
}

size_t topk_top(const topk_t *t, topk_entry_t *out, size_t m)
{
    size_t n = 0;
    for (size_t i = 0; t && m && i < t->used; i++) {
        topk_entry_t x = {key_of(t, i), t->e[i].count, t->e[i].error};
        /* Insertion into the sorted prefix out[0..n): m is small (a page's worth). */
        size_t at = n;
        while (at > 0 && (out[at - 1].count < x.count ||
                          (out[at - 1].count == x.count && strcmp(out[at - 1].key, x.key) > 0)))
            at--;
        if (at >= m)
            continue;
        size_t keep = n < m ? n : m - 1;
        memmove(&out[at + 1], &out[at], (keep - at) * sizeof *out);
        out[at] = x;
        if (n < m)
            n++;
    }
    return n;
}

uint64_t topk_replaced(const topk_t *t)
{
    return t ? t->replaced : 0;
}

size_t topk_size(const topk_t *t)
{
    return t ? t->used : 0;
}
