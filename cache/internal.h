/* Private to cache/: the cache struct and the helpers store.c, index.c and fill.c share.
 * Nothing outside cache/ (tests excepted) includes this. */
#ifndef WINCH_CACHE_INTERNAL_H
#define WINCH_CACHE_INTERNAL_H

#include <lmdb.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache/cache.h"

/* Every path the cache builds is <dir>/ plus at most ~150 bytes; cache_open refuses a
 * directory name that would not leave room for them. */
#define CACHE_PATH_MAX 4096
#define CACHE_DIR_MAX (CACHE_PATH_MAX - 512)
/* Longest media type stored; cache_entry_t.media_type holds it with its NUL. */
#define CACHE_MEDIA_MAX 127
/* A hot digest's access time is rewritten at most once per this interval. */
#define CACHE_ACCESS_SLACK_MS 60000
#define CACHE_GUARD_BUCKETS 256
#define CACHE_FILL_BUCKETS 64

/* ---- The index write queue (index.c) ------------------------------------------------------
 * One op is one caller's request; a batch of ops commits in one LMDB write transaction. */
enum wop_what {
    WOP_CONTENT = 1, /* put the content record for digest (kind, size, media_type) */
    WOP_REPO = 2,    /* put repos[key[0..repo_key_len)] = now */
    WOP_TAG = 4,     /* put tags[key[0..tag_key_len)] = {now, digest} */
    WOP_ACCESS = 8,  /* raise the content record's accessed_ms to now, if it exists */
};

typedef struct hot hot_t;

typedef struct wop wop_t;
struct wop {
    wop_t *next;       /* queue / batch chain */
    wop_t *guard_next; /* access-guard bucket chain (WOP_ACCESS only) */
    unsigned what;     /* enum wop_what bits */
    int status;        /* result, set by the batch job */
    cache_done_cb cb;  /* may be NULL */
    void *arg;
    int64_t now_ms; /* wall time at queueing: "checked now" means when the caller asked */
    uint64_t size;
    int kind;
    char digest[REF_DIGEST_MAX + 1];
    char media_type[CACHE_MEDIA_MAX + 1];
    size_t repo_key_len; /* "upstream\0repo" */
    size_t tag_key_len;  /* "upstream\0repo\0tag" */
    char key[];          /* the longer of the two keys; the repo key is its prefix */
};

struct cache {
    uv_loop_t *loop;
    char *dir; /* owned copy of opts->dir */
    cache_io_t io;
    int lock_fd;

    MDB_env *env;
    MDB_dbi dbi_content, dbi_tags, dbi_repos;
    MDB_txn *rtxn; /* the loop thread's cached read transaction, kept reset between reads */
    size_t max_key;

    wop_t *wq_head, *wq_tail; /* waiting for the next batch */
    wop_t *wq_batch;          /* owned by the job in flight */
    bool wq_running;
    uv_work_t wq_work;
    wop_t *guard[CACHE_GUARD_BUCKETS]; /* access ops queued or in flight, by digest */

    fill_t *fills[CACHE_FILL_BUCKETS]; /* the single-flight table: fills not yet DONE/FAILED */
    unsigned live_fills;               /* allocated fills, for cache_close's check */
    unsigned live_puts;                /* cache_put_manifest jobs in flight */
    uint64_t tmp_seq;                  /* names temp files; the lock makes it unique */
    hot_t *hot;                        /* recently read manifests (hot.c) */
    /* Manifests accepted by cache_put_manifest but not yet committed: cache_lookup sees them,
     * so a client's GET by digest right after the HEAD that fetched the manifest is a hit. */
    struct pending_put *pending;
};

struct pending_put {
    struct pending_put *next;
    wop_t *op;        /* the index op it will queue; valid while pending (tag lookups) */
    cache_done_cb cb; /* the caller's */
    void *arg;
    cache_t *c;
    uint64_t size;
    char digest[REF_DIGEST_MAX + 1];
    char media_type[CACHE_MEDIA_MAX + 1];
};

/** The pending put for digest, or NULL (store.c). */
const struct pending_put *pending_find(const cache_t *c, const char *digest);

/* ---- hot.c: the in-memory tier of manifests ------------------------------------------------ */

int hot_new(hot_t **out);
void hot_free(hot_t *t);
/** On a hit, *bytes is a malloc'd copy (owned by the caller, NUL-terminated). */
bool hot_get(hot_t *t, const char *digest, char **bytes, size_t *len);
/** Remembers a copy of bytes (borrowed) unless too large; evicts as needed. */
void hot_put(hot_t *t, const char *digest, const char *bytes, size_t len);

/* ---- index.c ------------------------------------------------------------------------------ */

/** Allocates an op with room for the keys of upstream/repo/tag (each may be NULL: then no
 * repo/tag key). Validates lengths against the LMDB key limit. Returns 0, WE_INVALID or
 * -ENOMEM; *out owned by the caller until index_queue takes it. */
int wop_new(cache_t *c, const char *upstream, const char *repo, const char *tag, wop_t **out);
/** Takes op; its cb runs on the loop thread after the batch holding it commits (or fails). */
void index_queue(cache_t *c, wop_t *op);
/** Visits every content record (test and maintenance use). fn returns nonzero to stop. */
int index_content_each(cache_t *c, int (*fn)(void *arg, const char *digest, const cache_entry_t *e),
                       void *arg);

/* ---- store.c ------------------------------------------------------------------------------ */

/** Creates the directory layout, takes the lock and sweeps tmp/. Sets c->lock_fd. */
int store_open(cache_t *c);
/** Writes <dir>/blobs/<alg>/<2 hex>/<hex> for a digest that passes ref_digest_parse. */
int store_content_path(const cache_t *c, const char *digest, char *buf, size_t cap);
/** Creates tmp/<seq>.<hex>.part exclusively (O_RDWR); *path is malloc'd, owned by the caller.
 * seq comes from c->tmp_seq, which only the loop thread advances. */
int store_create_temp(const cache_t *c, uint64_t seq, const char *digest, int *fd, char **path);
/** pwrite all of buf at off through c->io, retrying short writes and EINTR. Threadpool. */
int store_write_all(const cache_t *c, int fd, const void *buf, size_t len, uint64_t off);
/** fsyncs fd, renames tmp_path to the content path (creating the 2-hex directory), fsyncs the
 * directory. Threadpool. Does not close fd nor unlink tmp_path on failure. */
int store_publish(const cache_t *c, int fd, const char *tmp_path, const char *digest);

#endif
