/** The heaviest keys of a stream in fixed memory: the space-saving algorithm (Metwally,
 * Agrawal, El Abbadi 2005). A table of `capacity` entries, each a key with a count; adding to a
 * key not in a full table replaces the entry with the smallest count, and the new key starts
 * from that count (kept as its `error`, the most it may be overcounted). Any key whose true
 * total is above the smallest count of the table is in it, and a count is exact when its error
 * is 0, so however many distinct keys arrive, memory stays capacity * key_max and the heavy
 * keys stay, with bounded overcounts. Not thread-safe: one owner thread. */
#ifndef WINCH_COMMON_TOPK_H
#define WINCH_COMMON_TOPK_H

#include <stddef.h>
#include <stdint.h>

typedef struct topk topk_t;

/** A table of capacity entries (1..65536) holding keys of at most key_max bytes (longer keys
 * are cut). *out owned by the caller (topk_free). Returns 0, -EINVAL or -ENOMEM; allocates
 * everything here, nothing later. */
int topk_create(topk_t **out, size_t capacity, size_t key_max);
/** NULL is fine. */
void topk_free(topk_t *t);

/** Adds n to key[0..len)'s count (len cut to key_max). Never allocates. NULL t: nothing. */
void topk_add(topk_t *t, const char *key, size_t len, uint64_t n);

/** An entry as topk_top reports it; key borrowed from the table until its next topk_add. */
typedef struct topk_entry {
    const char *key; /* NUL-terminated */
    uint64_t count;  /* an upper bound of the key's true total */
    uint64_t error;  /* count - error is a lower bound; 0: exact */
} topk_entry_t;

/** Up to m entries with the largest counts, largest first (ties: by key). Returns how many
 * were written. */
size_t topk_top(const topk_t *t, topk_entry_t *out, size_t m);

/** How many times an entry was replaced by a new key (0: every count is exact). */
uint64_t topk_replaced(const topk_t *t);
/** Entries in use (at most the capacity). */
size_t topk_size(const topk_t *t);

#endif
