/* Private to cache/: the cache struct and what the files of cache/ offer each other. Nothing
 * outside cache/ includes this, except the unit tests and bench/mkindex (which feeds the write
 * queue directly).
 *
 * Who calls whom inside cache/ (a -> b: a calls functions b defines; no arrow points back):
 *
 *   cache.c      -> manifests.c, index.c, store.c, childplat.c
 *   manifests.c  -> index.c, store.c, hot.c, digest.c, childplat.c
 *   childplat.c  -> index.c (its read transaction), walk.c (refs records)
 *   fill.c       -> index.c, store.c, digest.c
 *   pins.c       -> nothing in cache/ (it uses index.c's environment and databases)
 *   index.c, store.c, hot.c, digest.c -> nothing in cache/
 *
 * index.c, store.c, hot.c and digest.c are leaves: they call nothing else in cache/. So the
 * index never learns about files and the store never about the index; only the layers on top
 * (cache.c: open, close and the reads that must see uncommitted writes; manifests.c: manifest
 * puts and reads; fill.c: blob fills) order "publish the file, then index it", which is the
 * crash-consistency rule of the whole cache. */
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
/* Room for the longest index key this process builds ("upstream\0repo\0tag"); LMDB's own key
 * limit (c->max_key) is usually lower and is what is checked. */
#define CACHE_KEY_MAX 512

/* ---- The index write queue (index.c) ------------------------------------------------------
 * One op is one caller's request; a batch of ops commits in one LMDB write transaction. */
enum wop_what {
    WOP_CONTENT = 1, /* put the content record for digest (kind, size, media_type) */
    WOP_REPO = 2,    /* put repos[key[0..repo_key_len)] = now */
    WOP_TAG = 4,     /* put tags[key[0..tag_key_len)] = {now, digest} */
    WOP_ACCESS = 8,  /* raise the content record's accessed_ms to now, if it exists */
    WOP_REFS = 16,   /* put refs[digest] = the manifest's references; with a repo key, also
                      * owners[repo key + each reference and digest itself] */
    WOP_OWNER = 32,  /* put owners[repo key + digest] = {now, size}: the repo holds digest */
    WOP_CUSTOM = 64, /* op->apply(c, txn, op) does the work (stats.c, evict.c, verify.c) */
};

/* One reference of a manifest as the index keeps it. */
typedef struct wop_ref {
    uint8_t role; /* enum image_role */
    uint64_t size;
    char digest[REF_DIGEST_MAX + 1];
} wop_ref_t;

typedef struct hot hot_t;
struct pending_put; /* manifests.c */

typedef struct wop wop_t;
struct wop {
    wop_t *next;       /* queue / batch chain */
    wop_t *guard_next; /* access-guard bucket chain (WOP_ACCESS only) */
    unsigned what;     /* enum wop_what bits */
    int status;        /* result, set by the batch job (the only field it writes) */
    cache_done_cb cb;  /* may be NULL */
    void *arg;
    int64_t now_ms; /* wall time at queueing: "checked now" means when the caller asked */
    uint64_t size;
    int kind;
    char digest[REF_DIGEST_MAX + 1];
    char media_type[CACHE_MEDIA_MAX + 1];
    wop_ref_t *refs; /* WOP_REFS: owned, nrefs of them */
    size_t nrefs;
    /* WOP_CUSTOM: runs on the threadpool inside the batch's write transaction; returns LMDB's
     * code. payload is owned by the op (payload_free, if set, runs in wop_free). */
    int (*apply)(cache_t *c, MDB_txn *t, const wop_t *op);
    void *payload;
    void (*payload_free)(void *payload);
    size_t repo_key_len; /* "upstream\0repo" */
    size_t tag_key_len;  /* "upstream\0repo\0tag" */
    char key[];          /* the longer of the two keys; the repo key is its prefix */
};

/* One per cache_open. Each group of fields belongs to the file named on it: only that file
 * writes them. All of it lives on the loop thread; threadpool jobs (index.c's commit, and the
 * writes and publishes fill.c and manifests.c run through store.c) read only the fields set
 * at open, and index.c's job the batch it owns. */
struct cache {
    /* cache.c; set at open, read-only afterwards (threadpool jobs read dir and io) */
    uv_loop_t *loop;
    char *dir; /* owned copy of opts->dir */
    cache_io_t io;

    /* store.c */
    bool shared;         /* opened by a tool (cache_opts_t.shared) */
    bool server_running; /* shared, and another process holds the lock */
    int lock_fd;
    uint64_t tmp_seq; /* names temp files; the lock makes it unique; advanced on the loop by
                         fill.c and manifests.c when they reserve a name */

    /* index.c */
    MDB_env *env;
    MDB_dbi dbi_content, dbi_tags, dbi_repos, dbi_refs, dbi_owners, dbi_tagstats, dbi_pins;
    MDB_dbi dbi_taghist, dbi_childplat;
    MDB_txn *rtxn; /* the loop thread's cached read transaction, kept reset between reads */
    size_t max_key;
    wop_t *wq_head, *wq_tail; /* waiting for the next batch */
    wop_t *wq_batch;          /* owned by the job in flight */
    bool wq_running;
    uv_work_t wq_work;
    wop_t *guard[CACHE_GUARD_BUCKETS]; /* access ops queued or in flight, by digest */

    /* fill.c */
    fill_t *fills[CACHE_FILL_BUCKETS]; /* the single-flight table: fills not yet DONE/FAILED */
    unsigned live_fills;               /* allocated fills, for cache_close's check */

    /* stats.c */
    struct stats *stats;

    /* evict.c; bytes_added also by fill.c and manifests.c (content newly indexed) */
    struct gc_run *gc;
    uint64_t bytes_added;
    uint64_t trash_seq;

    /* manifests.c */
    hot_t *hot;                  /* recently read manifests (hot.c) */
    unsigned live_puts;          /* cache_put_manifest jobs in flight */
    struct pending_put *pending; /* puts accepted but not committed yet */

    /* pins.c */
    struct pins *pins; /* reads and writes of the pins and tag history databases */
};

/* ---- index.c: the LMDB index ----------------------------------------------------------------- */

/** Opens the environment under <dir>/index, its databases and the loop's read transaction.
 * map_size 0 means the default. On failure nothing of the index stays open. */
int index_open(cache_t *c, uint64_t map_size);
/** Frees ops still queued (logging them as lost: a bug) and closes the environment. Returns
 * -EBUSY, leaving the environment open, when a commit job is still running. */
int index_close(cache_t *c);
/** LMDB's codes (positive errnos, its own negatives) as winch errors, logged with what. */
int index_err(int rc, const char *what);
/** Little-endian integers of the record formats. */
void index_put_u64(unsigned char *p, uint64_t v);
uint64_t index_get_u64(const unsigned char *p);
/** Joins up to three strings with NULs into buf ("a\0b\0c"); NULL ends the list early.
 * WE_INVALID when they do not fit cap. */
int index_make_key(char *buf, size_t cap, const char *a, const char *b, const char *c3,
                   size_t *len);
/** The loop's cached read transaction, renewed (index_read_end resets it). */
int index_read_begin(cache_t *c, MDB_txn **t);
void index_read_end(cache_t *c);
/** The committed content record of digest: 0, WE_NOTFOUND or WE_INDEX. Sees no queued op. */
int index_lookup(cache_t *c, const char *digest, cache_entry_t *out);
/** Writes the tags key of upstream/repo/tag into key; WE_INVALID if one is NULL or the key
 * would exceed LMDB's limit. */
int index_tag_key(const cache_t *c, const char *upstream, const char *repo, const char *tag,
                  char key[CACHE_KEY_MAX], size_t *kl);
/** Returns op if it writes the tag key[0..kl) and is at least as recent as best (NULL: none
 * yet), else best. */
const wop_t *wop_newest_tag(const wop_t *op, const char *key, size_t kl, const wop_t *best);
/** The newest of best and the queued or in-flight ops that write tag key[0..kl). The ops'
 * keys, digests and times never change once queued, so reading them beside a job is safe. */
const wop_t *index_pending_tag(const cache_t *c, const char *key, size_t kl, const wop_t *best);
/** A tags record: its digest and check time. 0 or WE_INDEX (corrupt, unknown version). */
int index_tag_decode(const MDB_val *v, char digest_out[REF_DIGEST_MAX + 1], int64_t *checked_ms);
/** The committed tag record of upstream/repo/tag: 0, WE_NOTFOUND or WE_INDEX. */
int index_tag_read(cache_t *c, const char *upstream, const char *repo, const char *tag,
                   char digest_out[REF_DIGEST_MAX + 1], int64_t *checked_ms);
/** Visits every op queued or in flight (their fields never change once queued, so reading them
 * beside the commit job is safe). Loop thread. */
void index_queued_each(const cache_t *c, void (*fn)(void *arg, const wop_t *op), void *arg);
/** Queues an access-time update for digest unless one is already queued or in flight. */
void index_note_access(cache_t *c, const char *digest);
/** Allocates an op with room for the keys of upstream/repo/tag (each may be NULL: then no
 * repo/tag key). Validates lengths against the LMDB key limit. Returns 0, WE_INVALID or
 * -ENOMEM; *out owned by the caller until index_queue takes it. */
int wop_new(cache_t *c, const char *upstream, const char *repo, const char *tag, wop_t **out);
/** Takes op; its cb runs on the loop thread after the batch holding it commits (or fails). */
void index_queue(cache_t *c, wop_t *op);
/** Frees an op that was never queued (and its refs). NULL is fine. */
void wop_free(wop_t *op);
/** Copies the references of img into op (WOP_REFS). Returns 0 or -ENOMEM. */
int wop_set_refs(wop_t *op, const image_t *img);
/** True when op records that its repository holds digest (WOP_OWNER for digest, or WOP_REFS
 * naming it or being it, with a repo key equal to key[0..kl)); *size gets the size it records. */
bool wop_owns(const wop_t *op, const char *key, size_t kl, const char *digest, uint64_t *size);
/** The owners record of key[0..kl) ("upstream\0repo") and digest among the queued and in-flight
 * ops, or committed: 0 with *size, WE_NOTFOUND, WE_INDEX. */
int index_owner_read(cache_t *c, const char *key, size_t kl, const char *digest, uint64_t *size);
/** Writes the repos key of upstream/repo into key; WE_INVALID if invalid or too long. */
int index_repo_key(const cache_t *c, const char *upstream, const char *repo,
                   char key[CACHE_KEY_MAX], size_t *kl);
/** Visits every content record (test and maintenance use). fn returns nonzero to stop. */
int index_content_each(cache_t *c, int (*fn)(void *arg, const char *digest, const cache_entry_t *e),
                       void *arg);

/** Decodes a content record (index.c's format). 0 or WE_INDEX. */
int index_content_decode(const MDB_val *v, cache_entry_t *e);
/** Inside a write transaction: adds pulls to digest's record and raises its access time to
 * at_ms. A digest no longer indexed is skipped. Returns LMDB's code. Threadpool. */
int index_touch_content(cache_t *c, MDB_txn *t, const char *digest, uint32_t pulls, int64_t at_ms);

/* ---- stats.c: access tracking ------------------------------------------------------------- */

struct stats; /* stats.c: pulls not yet written, by digest and by tag */
/** Frees what was never flushed (cache_close: the caller flushed first). */
void stats_close(cache_t *c);

/** Decodes a tagstats record (stats.c's format). 0 or WE_INDEX. */
int stats_tag_decode(const void *data, size_t len, int64_t *pulled_ms, uint32_t *pulls);

/* ---- walk.c: record decoding for whole-index reads ----------------------------------------- */

/** Decodes a refs record into a malloc'd array (owned by the caller). 0, WE_INDEX, -ENOMEM. */
int walk_refs_decode(const void *data, size_t len, cache_ref_t **refs, size_t *n);

/* ---- gc.c / evict.c: removal ----------------------------------------------------------------- */

struct gc_run; /* evict.c: the one cache_gc in progress */

/* ---- trash (store.c): files leave blobs/ by a rename, then an unlink off the loop ---------- */

/** Renames digest's published file into trash/ (a metadata operation: cheap enough for the
 * loop). Returns 0, -ENOENT when there is none, or -errno. *trash_path (malloc'd, owned by the
 * caller) names the moved file. */
int store_trash(cache_t *c, const char *digest, char **trash_path);
/** The hex digests of the fills and puts in progress in tmp/ (names "<seq>.<hex>.part"): for a
 * tool beside a server, which cannot see the server's fill table. *hexes is a malloc'd array
 * of malloc'd strings (owned by the caller). Returns 0 or -errno (then *n is 0). */
int store_tmp_hexes(const cache_t *c, char ***hexes, size_t *n);
/** True while a fill of digest is in this process's single-flight table (fill.c). */
bool fill_in_progress(cache_t *c, const char *digest);

/* ---- store.c: files on disk ------------------------------------------------------------------ */

/** Creates the directory layout, takes the lock and sweeps tmp/. Sets c->lock_fd. */
int store_open(cache_t *c);
/** Releases the lock (after the index is closed); fine after a failed store_open. */
void store_close(cache_t *c);
/** Validates a NUL-terminated digest (ref_digest_parse) and gives its algorithm: 0,
 * WE_INVALID or -ENOTSUP. */
int store_digest_parse(const char *digest, enum ref_alg *alg);
/** Writes <dir>/blobs/<alg>/<2 hex>/<hex> for a digest that passes ref_digest_parse. */
int store_content_path(const cache_t *c, const char *digest, char *buf, size_t cap);
/** Creates tmp/<seq>.<hex>.part exclusively (O_RDWR); *path is malloc'd, owned by the caller.
 * seq comes from c->tmp_seq, which only the loop thread advances. */
int store_create_temp(const cache_t *c, uint64_t seq, const char *digest, int *fd, char **path);
/** Moves exactly len bytes, already in the pipe pipe_r, to fd at off through c->io.splice,
 * retrying short moves and EINTR. Threadpool. */
int store_splice_all(const cache_t *c, int pipe_r, int fd, size_t len, uint64_t off);
/** pwrite all of buf at off through c->io, retrying short writes and EINTR. Threadpool. */
int store_write_all(const cache_t *c, int fd, const void *buf, size_t len, uint64_t off);
/** fsyncs fd, renames tmp_path to the content path (creating the 2-hex directory), fsyncs the
 * directory. Threadpool. Does not close fd nor unlink tmp_path on failure. */
int store_publish(const cache_t *c, int fd, const char *tmp_path, const char *digest);

/* ---- manifests.c: manifest puts and reads ---------------------------------------------------- */

/** Creates the hot tier. */
int manifests_open(cache_t *c);
/** Frees the hot tier; fine after a failed manifests_open. */
void manifests_close(cache_t *c);
/** A manifest accepted by cache_put_manifest but not committed yet: true and *out filled (as
 * cache_lookup would after the commit, times zero), or false. */
bool manifests_pending_entry(const cache_t *c, const char *digest, cache_entry_t *out);
/** Visits the op of every put accepted but not queued to the index yet (fn must not keep it). */
void manifests_pending_each(const cache_t *c, void (*fn)(void *arg, const wop_t *op), void *arg);
/** True when a pending put records that repo key[0..kl) holds digest (wop_owns). */
bool manifests_pending_owner(const cache_t *c, const char *key, size_t kl, const char *digest,
                             uint64_t *size);
/** The newest of best and the pending puts' tag writes of key[0..kl) (wop_newest_tag). */
const wop_t *manifests_pending_tag(const cache_t *c, const char *key, size_t kl, const wop_t *best);

/* ---- childplat.c: platforms of index children ------------------------------------------------ */

/** Distinct platforms collected for cache_child_platforms (out: the caller's array). */
typedef struct childplat_acc {
    platform_t *out; /* CACHE_CHILD_PLATFORMS_MAX of them */
    size_t n;
} childplat_acc_t;

/** Makes op, a manifest put of img, also record the platforms img gives its children when img
 * is an index (WOP_CUSTOM; the payload is owned by op). 0, or -ENOMEM. */
int childplat_prepare(wop_t *op, const image_t *img);
/** Inside a write transaction: deletes the records of index_digest's children (the children its
 * refs record names). Call before the refs record goes. Returns LMDB's code. Threadpool. */
int childplat_drop(cache_t *c, MDB_txn *t, const char *index_digest);
/** Adds what op (queued or pending, any op) records for digest under upstream to acc. */
void childplat_op(const wop_t *op, const char *upstream, const char *digest, childplat_acc_t *acc);
/** Adds the committed records of digest under upstream to acc: 0 or WE_INDEX. */
int childplat_read(cache_t *c, const char *upstream, const char *digest, childplat_acc_t *acc);

/* ---- pins.c: pins and tag history ------------------------------------------------------------ */

/** Sets up the pins' reads and writes (index_open first: it opens their databases). */
int pins_open(cache_t *c);
/** Frees queued writes (logging them: a bug) and the read transaction; -EBUSY, leaving the
 * state allocated, while a write job runs. Fine after a failed pins_open. Before index_close. */
int pins_close(cache_t *c);

/* ---- hot.c: the in-memory tier of manifests -------------------------------------------------- */

int hot_new(hot_t **out);
void hot_free(hot_t *t);
/** On a hit, *bytes is a malloc'd copy (owned by the caller, NUL-terminated). */
bool hot_get(hot_t *t, const char *digest, char **bytes, size_t *len);
/** Remembers a copy of bytes (borrowed) unless too large; evicts as needed. */
void hot_put(hot_t *t, const char *digest, const char *bytes, size_t len);

#endif
