/* Private to cache/ (and its unit tests): the reachability model gc.c builds from the index, the
 * plan it makes, and what evict.c and the pins reader need of it. See gc.c for the idea. */
#ifndef WINCH_CACHE_GC_H
#define WINCH_CACHE_GC_H

#include "cache/internal.h"

#define GC_NONE UINT32_MAX

enum gc_node_flag {
    GC_PARENT = 1,    /* some manifest references it */
    GC_TAGGED = 2,    /* some tag names it */
    GC_PROTECTED = 4, /* reached from a protected root or kept node: never removed */
    GC_FREED = 8,     /* planned for removal */
    GC_KEEP = 16,     /* kept by itself (pin, kept digest, protected repository's owner) */
};

typedef struct gc_node {
    const char *digest; /* arena */
    uint64_t size;
    int64_t last_ms; /* last access (or creation) */
    uint32_t edge0, nedges;
    uint32_t rc;     /* roots that reach it */
    uint32_t tag_rc; /* tag roots that reach it */
    uint32_t img_rc; /* distinct tagged images that reach it (gc_count_images) */
    uint32_t stamp;
    uint8_t kind;
    uint8_t flags;
} gc_node_t;

enum gc_root_type { GC_ROOT_TAG = 1, GC_ROOT_DANGLING = 2, GC_ROOT_BLOB = 3 };

typedef struct gc_root {
    uint32_t node;      /* GC_NONE: a tag whose manifest is not cached */
    uint8_t type;       /* enum gc_root_type */
    bool protected;     /* protect glob, pin or kept digest */
    bool removed;       /* planned */
    uint16_t klen;      /* tags: key length */
    const char *key;    /* tags: "upstream\0repo\0tag" (arena) */
    const char *digest; /* the tag's digest, or the node's */
    int64_t last_ms;    /* last use: pull, check, access */
    int64_t checked_ms; /* tags: the record's check time at the scan */
    int64_t pulled_ms;  /* tags: the tagstats time at the scan */
} gc_root_t;

enum gc_item_what { GC_ITEM_TAG = 1, GC_ITEM_CONTENT = 2 };

typedef struct gc_item {
    uint8_t what;    /* enum gc_item_what */
    uint32_t ref;    /* root index (tag) or node index (content) */
    uint32_t group;  /* the removed root it belongs to: applied, or skipped, together */
    const char *why; /* static */
} gc_item_t;

typedef struct gc_target {
    const char *upstream, *repo, *tag, *digest;
} gc_target_t;

typedef struct gc_plan_opts {
    const gc_target_t *rm;
    size_t nrm;
    bool unreferenced;
    int64_t unused_before_ms;
    uint64_t target_bytes;
} gc_plan_opts_t;

struct arena_block;

typedef struct gc_model {
    /* Inputs, set before gc_model_load (borrowed). */
    const char *const *protect;
    size_t nprotect;
    const char *const *keep;
    size_t nkeep;

    gc_node_t *nodes;
    size_t nn, ncap;
    uint32_t *edges;
    size_t ne, ecap;
    uint32_t *ht; /* open addressing: node index + 1, 0 = empty */
    size_t htcap;
    gc_root_t *roots;
    size_t nr, rcap;
    size_t ntags;
    uint64_t total; /* content bytes; shrinks as a plan frees */
    uint64_t freed;
    uint32_t stamp;
    uint32_t *stack;
    size_t scap;
    uint32_t *order;
    gc_item_t *items;
    size_t nitems, icap;
    uint32_t ngroups;
    struct arena_block *arena;
} gc_model_t;

/** Loads the index seen by t into m (inputs set, the rest zero) and counts references.
 * Returns 0, -ENOMEM or WE_INDEX. */
int gc_model_load(gc_model_t *m, cache_t *c, MDB_txn *t);
void gc_model_free(gc_model_t *m);
/** The node of digest[0..n), or GC_NONE. */
uint32_t gc_find(const gc_model_t *m, const char *digest, size_t n);
/** Plans the removals o asks for into m->items. 0 or -ENOMEM. */
int gc_plan(gc_model_t *m, const gc_plan_opts_t *o);
/** Removes root ri and frees what only it reached. */
int gc_remove_root(gc_model_t *m, size_t ri, const char *why);
/** Counts, for each node, the distinct tagged images reaching it (for df). */
int gc_count_images(gc_model_t *m);
void gc_usage(const gc_model_t *m, cache_usage_t *u);

/** Pins (pins_read.c): marks pinned tags' roots protected and pinned digests kept. Runs inside
 * the scan's read transaction; a cache without pins is fine. Returns LMDB's code. */
int pins_mark(gc_model_t *m, cache_t *c, MDB_txn *t);

#endif
