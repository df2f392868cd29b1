/** The cache: a content-addressed store on disk, an LMDB index, and the fill object that
 * downloads each digest once while every waiting client reads it as it grows.
 *
 * This is the one public face of cache/. It knows nothing of HTTP: the proxy drives fills with
 * bytes and reads what the cache has. All functions run on the loop thread given at open;
 * blocking work (fsync, rename, LMDB commits, hashing) happens on libuv's threadpool and its
 * results come back on the loop thread.
 *
 * Layout under the cache directory:
 *   lock                        flock: one winch process per cache directory
 *   index/                      LMDB environment (data.mdb, lock.mdb)
 *   blobs/<alg>/<2 hex>/<hex>   published content, blobs and manifests alike
 *   tmp/                        fills in progress; swept at open
 */
#ifndef WINCH_CACHE_CACHE_H
#define WINCH_CACHE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "common/platform.h"
#include "common/ref.h"

typedef struct cache cache_t;
typedef struct fill fill_t;

/** File operations the store uses, so tests can inject ENOSPC, EIO and short writes. Each
 * returns what the libc call returns (-1 and errno on failure). Called on threadpool threads. */
typedef struct cache_io {
    ssize_t (*pwrite)(int fd, const void *buf, size_t n, off_t off);
    int (*fsync)(int fd);
    int (*rename)(const char *from, const char *to);
    /* Moves up to n bytes from the pipe read end pipe_r to fd at off (splice(2)). */
    ssize_t (*splice)(int pipe_r, int fd, size_t n, off_t off);
} cache_io_t;

typedef struct cache_opts {
    uv_loop_t *loop;      /* borrowed; every callback runs on it */
    const char *dir;      /* borrowed; created if missing */
    uint64_t map_size;    /* LMDB map size in bytes; 0 = 4 GiB */
    const cache_io_t *io; /* borrowed; NULL = the real libc calls */
    /* A tool (the CLI) opening the cache of a winch that may be serving it: the cache must
     * exist already; tmp/ is never swept; the directory lock is taken when free (so no server
     * starts under the tool) and otherwise left to the server (cache_server_running). LMDB
     * serialises writers across processes, so the tool's index writes are safe beside it. */
    bool shared;
} cache_opts_t;

/** Opens (creating if needed) the cache at o->dir: takes the directory lock, opens the index,
 * removes leftover temp files. Never scans blobs/. On success *out is owned by the caller.
 * Errors: -errno, WE_INDEX, -EBUSY when another process holds the lock. */
int cache_open(cache_t **out, const cache_opts_t *o);

/** True when c was opened shared while another process (a serving winch) held the lock. */
bool cache_server_running(const cache_t *c);

/** The directory the cache lives in (borrowed). */
const char *cache_dir(const cache_t *c);

/** Bytes an unprivileged writer may still put on the cache's filesystem (statvfs: f_bavail),
 * into *bytes. A syscall, no I/O: cheap enough for the loop. Returns 0 or -errno. */
int cache_space_free(const cache_t *c, uint64_t *bytes);

/** Closes the index and frees the cache. Call after the loop has finished every fill and
 * pending index write (uv_run returned); NULL is fine. Fills still referenced or writes still
 * pending at that point are a bug: they are logged (and the index is leaked rather than freed
 * under a commit in flight). */
void cache_close(cache_t *c);

/* ---- Content index ---------------------------------------------------------------------- */

enum cache_kind { CACHE_BLOB = 1, CACHE_MANIFEST = 2 };

typedef struct cache_entry {
    uint64_t size;
    int kind;             /* enum cache_kind */
    int64_t created_ms;   /* wall clock, when published */
    int64_t accessed_ms;  /* wall clock, last recorded access (see cache_note_access) */
    uint32_t pulls;       /* times served (recorded in batches, see cache_note_access) */
    char media_type[128]; /* "" when unknown; manifests always have one */
} cache_entry_t;

/** Looks a digest up in the index (a read transaction on the loop thread: no I/O beyond the
 * mmap). Returns 0 and fills *out, WE_NOTFOUND, or WE_INDEX. */
int cache_lookup(cache_t *c, const char *digest, cache_entry_t *out);

/** Opens published content for reading. *fd is owned by the caller (close it). -errno when
 * the file is missing (the index and the store disagree: the caller should treat it as a
 * miss). digest must already be valid (ref_digest_parse). */
int cache_open_content(cache_t *c, const char *digest, int *fd);

/** Reads a published manifest whole into *bytes (malloc'd, NUL-terminated, owned by the
 * caller) when its size is at most max. Recently read manifests come from a bounded in-memory
 * tier, others with a small synchronous read. Returns 0, WE_NOTFOUND, WE_TOOBIG or -errno. */
int cache_read_manifest(cache_t *c, const char *digest, size_t max, char **bytes, size_t *len);

/** Records that digest was served. Cheap: only queues an index write when the recorded access
 * time is older than a minute; writes are batched with other index writes. */
void cache_note_access(cache_t *c, const char *digest);

/* ---- Manifests as content (image.c) ----------------------------------------------------- */

/** At most this many descriptors in one manifest or index (a 4 MiB manifest could hold ~40,000;
 * real ones hold tens). */
#define IMAGE_MAX_REFS 10000

enum image_kind { IMAGE_MANIFEST = 1, IMAGE_INDEX = 2 };

/** What a descriptor is to the manifest that holds it. */
enum image_role {
    IMAGE_CONFIG = 1,  /* an image manifest's config blob */
    IMAGE_LAYER = 2,   /* one of its layers */
    IMAGE_CHILD = 3,   /* an index's manifest */
    IMAGE_SUBJECT = 4, /* the manifest this one refers to (OCI 1.1 referrers) */
};

typedef struct image_platform {
    char os[32];
    char arch[32];
    char variant[32];
    char os_version[64];
} image_platform_t;

typedef struct image_ref {
    enum image_role role;
    char digest[REF_DIGEST_MAX + 1];
    uint64_t size;
    char media_type[128]; /* "" when the descriptor has none */
    bool has_platform;    /* index children only */
    image_platform_t platform;
    bool attestation; /* a BuildKit attestation manifest (index children only) */
} image_ref_t;

typedef struct image {
    enum image_kind kind;
    const char *media_type; /* static: one of the four modern manifest types */
    size_t nrefs;
    image_ref_t *refs; /* owned; config first, then layers, for an image manifest */
} image_t;

/** Parses and validates bytes[0..len) as a manifest or index of media_type (the type it claims:
 * the upstream's Content-Type, or what the body's shape says). It must be a JSON object with
 * schemaVersion 2, a mediaType field (if any) equal to the claim, the fields of its kind and
 * well-formed descriptors (sha256/sha512 digests, sizes >= 0). On success *out is owned by the
 * caller (image_free). Returns 0, WE_INVALID (with one line saying why in err[errlen]), or
 * -ENOMEM. Schema 1 and unknown types are WE_INVALID. */
int image_parse(const char *bytes, size_t len, const char *media_type, image_t **out, char *err,
                size_t errlen);
void image_free(image_t *img);
/** Config plus layers, in bytes (0 for an index): what pulling the image transfers. */
uint64_t image_bytes(const image_t *img);
/** True for the index types (OCI index, Docker manifest list); parameters ignored. */
bool image_type_is_index(const char *media_type);
/** True for the four modern manifest and index types winch serves. */
bool image_type_known(const char *media_type);

/* ---- Tags and repositories -------------------------------------------------------------- */

/** Looks up the digest a tag pointed to when last checked. upstream is the upstream's name
 * ("docker.io"), repo the name at that upstream ("library/alpine"). On 0, digest_out holds a
 * NUL-terminated digest and *checked_ms the wall time of the last check. WE_NOTFOUND if never
 * seen. */
int cache_tag_get(cache_t *c, const char *upstream, const char *repo, const char *tag,
                  char digest_out[REF_DIGEST_MAX + 1], int64_t *checked_ms);

/** Completion of an asynchronous index write; runs on the loop thread, never before the call
 * that queued it returns. status is 0 or negative. */
typedef void (*cache_done_cb)(void *arg, int status);

typedef struct cache_manifest_put {
    const char *digest;     /* the manifest's digest, already verified by the caller */
    const char *media_type; /* Content-Type to replay */
    const void *bytes;      /* copied before cache_put_manifest returns */
    size_t len;
    const char *upstream; /* upstream name; with repo, recorded for _catalog */
    const char *repo;
    const char *tag;      /* NULL when fetched by digest; else the tag now points here */
    const image_t *image; /* the parsed manifest (borrowed; its references are copied): they
                             * are recorded, and upstream/repo becomes an owner of each; NULL
                             * records none */
} cache_manifest_put_t;

/** Stores a manifest: file written and published like a blob, then the content entry, the
 * repository and (if p->tag) the tag mapping with checked = now, in one index transaction.
 * Every string and the bytes are copied. cb may be NULL. Returns 0 when queued (cb will run,
 * with WE_DIGEST if the bytes do not hash to p->digest, -errno for a write failure); WE_INVALID
 * (cb never runs) for a bad digest, repo or tag, a missing or over-127-byte media type, or a
 * tag without upstream and repo. upstream and repo go together: both or neither. */
int cache_put_manifest(cache_t *c, const cache_manifest_put_t *p, cache_done_cb cb, void *arg);

/** Records that upstream confirmed tag -> digest now (a revalidation that found no change, or a
 * tag that moved to a manifest already cached), and the repository for _catalog. Batched; cb
 * may be NULL. Returns 0 when queued, WE_INVALID (cb never runs) for bad names or digest. */
int cache_tag_set(cache_t *c, const char *upstream, const char *repo, const char *tag,
                  const char *digest, cache_done_cb cb, void *arg);

/** Whether upstream/repo is known to hold digest (repo NULL: any repository of upstream): one
 * of the repository's stored manifests references it (or is it), or cache_owner_set recorded
 * that the upstream served it there.
 * Sees writes this process queued but has not committed. On 0, *size (may be NULL) gets the
 * size recorded with it (the descriptor's). Returns 0, WE_NOTFOUND, WE_INDEX. */
int cache_owner_get(cache_t *c, const char *upstream, const char *repo, const char *digest,
                    uint64_t *size);

/** Records that upstream/repo holds digest of size bytes (the upstream served or confirmed it
 * under that repository). Batched; cb may be NULL. Returns 0 when queued, WE_INVALID (cb never
 * runs) for bad names or digest. */
int cache_owner_set(cache_t *c, const char *upstream, const char *repo, const char *digest,
                    uint64_t size, cache_done_cb cb, void *arg);

/** Visits the tags recorded for upstream/repo in byte order (committed ones; a tag recorded in
 * the last moments may be missing). fn returns nonzero to stop. Read transaction on the loop
 * thread. Returns 0 or WE_INDEX. */
int cache_tags_each(cache_t *c, const char *upstream, const char *repo,
                    int (*fn)(void *arg, const char *tag, const char *digest), void *arg);

/** Visits the cached repositories of one upstream in lexical order, starting after `after`
 * (exclusive; NULL or "" for the start). fn returns nonzero to stop. Read transaction on the
 * loop thread. Returns 0 or WE_INDEX. */
int cache_repos_each(cache_t *c, const char *upstream, const char *after,
                     int (*fn)(void *arg, const char *repo), void *arg);

/* ---- Platforms of index children (childplat.c) -------------------------------------------
 * Every index stored with cache_put_manifest (by the proxy, `winch import`, `winch warm`)
 * records, in the same index transaction, the platform it gives each of its platform manifests
 * (attestation manifests and children without a platform are skipped): records
 * "child digest, index digest" -> {platform, upstream}. They go when the index does (rm, prune,
 * eviction, verify --fix) and survive restarts. A cache made before them simply has none. */

/** Most distinct platforms cache_child_platforms reports for one digest. */
#define CACHE_CHILD_PLATFORMS_MAX 8

/** The platforms the indexes stored from upstream (the name the put gave; indexes stored with
 * no upstream count for none) give digest, as one of their children: normalised
 * (common/platform.h), distinct, in no particular order, at most CACHE_CHILD_PLATFORMS_MAX into
 * out (caller's storage), *n of them. Usually one; more when indexes disagree. Sees puts this
 * process accepted but has not committed; otherwise a read transaction on the loop thread (no
 * I/O beyond the mmap). Looks at no more than 1024 records of one digest. Returns 0 (*n >= 1),
 * WE_NOTFOUND (no index of upstream lists digest with a platform), or WE_INDEX. */
int cache_child_platforms(cache_t *c, const char *upstream, const char *digest,
                          platform_t out[CACHE_CHILD_PLATFORMS_MAX], size_t *n);

/* ---- Pins and tag history (pins.c) -------------------------------------------------------
 * Two small records per (upstream, repo, tag), kept beside the tags for the policy (which the
 * cache knows nothing of): pins set with `winch pin`, and what soak needs to know of a tag.
 *
 * Retention: a pinned manifest and everything its references reach (refs) are never evicted,
 * whether the pin is stored here (pins_read.c marks them) or written in the configuration
 * (passed as cache_gc_opts_t.keep: config_pin_digests). */

#define CACHE_PIN_STORED 1 /* cache_pin_t.source: set with winch pin */

/** A stored pin: the tag resolves to digest for every client until it is removed. */
typedef struct cache_pin {
    char digest[REF_DIGEST_MAX + 1];
    int64_t set_ms; /* wall clock, when it was set */
    int source;     /* CACHE_PIN_STORED */
} cache_pin_t;

/** The stored pin of upstream/repo:tag (sees writes this process queued): 0 and *out,
 * WE_NOTFOUND, or WE_INDEX. A read transaction on the loop thread (cheap: no I/O beyond the
 * mmap), so a pin set by another process is seen by the next request after its commit. */
int cache_pin_get(cache_t *c, const char *upstream, const char *repo, const char *tag,
                  cache_pin_t *out);

/** Stores (or replaces) the pin of upstream/repo:tag -> digest, now. Asynchronous: cb (may be
 * NULL) runs on the loop thread after the commit, with 0 or an error. Returns 0 when queued,
 * WE_INVALID (cb never runs) for bad names, tag or digest. */
int cache_pin_set(cache_t *c, const char *upstream, const char *repo, const char *tag,
                  const char *digest, cache_done_cb cb, void *arg);

/** Removes the pin of upstream/repo:tag; cb gets 0, WE_NOTFOUND when there was none, or an
 * error. Returns 0 when queued, WE_INVALID for bad names. */
int cache_pin_delete(cache_t *c, const char *upstream, const char *repo, const char *tag,
                     cache_done_cb cb, void *arg);

/** Visits the committed stored pins in key order (upstream, repo, tag), with their records: all
 * of them when upstream is NULL, else those of upstream (and of repo, when not NULL: a prefix
 * scan). fn returns nonzero to stop. Returns 0 or WE_INDEX. */
int cache_pins_list(cache_t *c, const char *upstream, const char *repo,
                    int (*fn)(void *arg, const char *upstream, const char *repo, const char *tag,
                              const cache_pin_t *pin),
                    void *arg);

/** What is remembered of a tag for soak: the digest last served for it, and the digest its
 * upstream last announced with when that digest was first seen (on the caller's clock). */
typedef struct cache_tag_history {
    char served[REF_DIGEST_MAX + 1]; /* "" when none */
    char seen[REF_DIGEST_MAX + 1];   /* "" when none */
    int64_t seen_first_ms;
} cache_tag_history_t;

/** The history of upstream/repo:tag (sees writes this process queued): 0, WE_NOTFOUND,
 * WE_INDEX. Loop thread. */
int cache_tag_history_get(cache_t *c, const char *upstream, const char *repo, const char *tag,
                          cache_tag_history_t *out);

/** Replaces the history of upstream/repo:tag with *h (copied). Asynchronous like
 * cache_pin_set; returns 0 when queued, WE_INVALID for bad names or digests. */
int cache_tag_history_set(cache_t *c, const char *upstream, const char *repo, const char *tag,
                          const cache_tag_history_t *h, cache_done_cb cb, void *arg);

/* ---- Fills: one download per digest ----------------------------------------------------- */

enum fill_state {
    FILL_WAITING,   /* created; size not known yet */
    FILL_STREAMING, /* size known (or unknowable: chunked), bytes arriving */
    FILL_DONE,      /* verified, published and indexed */
    FILL_FAILED,    /* nothing indexed; see fill_error */
};

#define FILL_SIZE_UNKNOWN UINT64_MAX

/** Single flight. Returns the fill already running for digest, or creates one and sets
 * *created: the caller is then the producer and must end it with fill_finish or fill_fail.
 * Either way the caller holds one reference (fill_unref). digest must be valid. A new fill has
 * no file and no fd until fill_set_size (nothing on disk for a fill whose upstream never
 * answers). A digest that is already published gets a new fill too: check cache_lookup first. */
int fill_get(cache_t *c, const char *digest, fill_t **out, bool *created);

/** True while a fill for digest runs (not yet DONE or FAILED): fill_get would join it. */
bool fill_running(cache_t *c, const char *digest);

void fill_ref(fill_t *f);
/** Drops a reference; the last one closes the fill's read fd at once and frees its memory on a
 * later loop iteration (a libuv handle closes), so run the loop before cache_close. If the
 * last reference goes while the fill was neither finished nor failed (a producer that vanished),
 * the fill is failed with WE_CANCELLED and its temp file removed. NULL is fine. */
void fill_unref(fill_t *f);

/* Producer side. */

/** Announces the total size (FILL_SIZE_UNKNOWN for a chunked upstream) and the media type
 * (borrowed, copied; may be NULL; one longer than 127 bytes is dropped), and creates the fill's
 * temp file. WAITING -> STREAMING; subscribers are notified asynchronously. Returns 0,
 * fill_error() if already FAILED, -EINVAL when not WAITING, or the temp file's -errno (the fill
 * is then FAILED with it). */
int fill_set_size(fill_t *f, uint64_t size, const char *media_type);

typedef void (*fill_write_cb)(void *arg, int status);
/** Appends len bytes. data is borrowed until cb runs (on the loop thread, never before this
 * returns; cb may be NULL). One write in flight at a time. Hashing and the file write happen
 * on the threadpool; when they complete, fill_written() grows, subscribers are notified, then
 * cb runs with 0 — or with the error that failed the fill (the write's -errno, or the error of a
 * fill_fail that came while the write was in flight). Returns 0 when cb will run; otherwise cb
 * never runs: -EBUSY (a write in flight), -EINVAL (not STREAMING, or after fill_finish),
 * fill_error() if FAILED, WE_TOOBIG when the write goes past the announced size (which fails
 * the fill). */
int fill_write(fill_t *f, const void *data, size_t len, fill_write_cb cb, void *arg);

/** Like fill_write, for len bytes that are already in a pipe (pipe_r: its read end, borrowed
 * until cb): a threadpool job splices them into the temp file, then hashes them back from the
 * page cache. The same rules and returns as fill_write, and -ENOMEM (the hashing buffer). The
 * caller must not read from pipe_r until cb runs; writing into the pipe meanwhile is fine. */
int fill_write_pipe(fill_t *f, int pipe_r, size_t len, fill_write_cb cb, void *arg);

/** The producer has written everything. The fill checks size and digest, fsyncs, renames into
 * blobs/, commits the index entry, then becomes DONE; on a mismatch it becomes FAILED with
 * WE_DIGEST or WE_SHORT (or -errno / WE_INDEX when publishing fails). Asynchronous; the
 * outcome reaches subscribers. May be called while the last write is in flight: it starts
 * after that write. The producer may drop its reference right after calling it. */
void fill_finish(fill_t *f);

/** The producer gives up (upstream error, timeout, cut stream): the temp file is removed,
 * nothing is indexed, state FAILED with err (WE_CANCELLED if err >= 0) at once, and the fill
 * leaves the single-flight table so the next fill_get starts a new one; subscribers are
 * notified asynchronously. No effect after fill_finish (the finish decides) or once FAILED. */
void fill_fail(fill_t *f, int err);

/* Subscriber side. A subscriber is embedded in the caller's own struct. */

typedef struct fill_sub fill_sub_t;
typedef void (*fill_notify_fn)(fill_sub_t *s);
struct fill_sub {
    fill_notify_fn notify;   /* private: set by fill_subscribe */
    fill_sub_t *prev, *next; /* private */
    fill_t *fill;            /* private */
};

/** Subscribes s to f's progress. notify(s) runs on the loop thread after each change (size
 * known, bytes written, done, failed), never inside the call that caused the change and never
 * inside fill_subscribe itself. If f is already past WAITING, a first notification follows
 * on a later loop iteration, so a subscriber can simply act on notifications; a notification
 * only means "look at the fill again" and may come with nothing new. The subscriber must hold
 * a reference on f while subscribed. notify may call fill_unsubscribe (on itself or others),
 * fill_unref, and other fill and cache functions (not cache_close). */
void fill_subscribe(fill_t *f, fill_sub_t *s, fill_notify_fn notify);
/** Idempotent: an unsubscribed or zero-initialized fill_sub_t is left alone. */
void fill_unsubscribe(fill_sub_t *s);

enum fill_state fill_state(const fill_t *f);
uint64_t fill_size(const fill_t *f);    /* FILL_SIZE_UNKNOWN until announced */
uint64_t fill_written(const fill_t *f); /* bytes readable from fill_fd(); never shrinks */
int fill_error(const fill_t *f);        /* 0 unless FAILED */
/** How many subscribers f has now (clients streaming it, a prefetch waiting on it): a walk of
 * the list, for the status page. */
size_t fill_subscribers(const fill_t *f);
/** True once every byte is in and matches the digest: the content is final even while the fill
 * is still being published (fsync, rename, index). Subscribers hold back a blob's last byte
 * until then. Stays true if publishing later fails (the bytes were right; only the cache
 * entry is lost). */
bool fill_verified(const fill_t *f);
const char *fill_media_type(const fill_t *f); /* borrowed; "" if none */
const char *fill_digest(const fill_t *f);     /* borrowed */
/** A read-only fd on the fill's file, valid while the caller holds a reference, across the
 * publishing rename; -1 before fill_set_size (or fill_finish) made the file. Read it only with
 * explicit offsets (pread, sendfile with an offset) below fill_written(). Borrowed: do not
 * close. */
int fill_fd(const fill_t *f);

/* ---- Hashing ---------------------------------------------------------------------------- */

typedef struct digester digester_t;
/** Incremental hash for alg; *out owned (digester_free). */
int digester_new(digester_t **out, enum ref_alg alg);
void digester_update(digester_t *d, const void *data, size_t len);
/** Writes "alg:hex" (NUL-terminated) into out; the digester can not be updated afterwards. */
int digester_final(digester_t *d, char out[REF_DIGEST_MAX + 1]);
void digester_free(digester_t *d);
/** One-shot: does sha(bytes) equal digest? 0, WE_DIGEST, WE_INVALID, -ENOTSUP. */
int digest_verify(const char *digest, const void *bytes, size_t len);

/* ---- Access tracking and whole-cache reads (stats.c, walk.c) ----------------------------- */

/* cache_note_access (above) counts a pull of content; these count tags and force the write. */

/** Records a pull of upstream/repo:tag (a manifest request by tag). Batched like
 * cache_note_access: counted in memory, written with the next flush. */
void cache_note_tag_pull(cache_t *c, const char *upstream, const char *repo, const char *tag);
/** Queues the pulls counted so far as one index write (no-op when none). Retention calls it
 * before ranking content; the app at shutdown. */
void cache_stats_flush(cache_t *c);

/** One tag as cache_tags_all_each shows it; the strings are borrowed for the callback. */
typedef struct cache_tag_info {
    const char *upstream, *repo, *tag;
    char digest[REF_DIGEST_MAX + 1];
    int64_t checked_ms; /* last confirmed upstream */
    int64_t pulled_ms;  /* last pulled through winch; 0 when never recorded */
    uint32_t pulls;
} cache_tag_info_t;

/** Visits every tag of every upstream in key order (committed records). fn returns nonzero to
 * stop. A read transaction of its own. Returns 0 or WE_INDEX. */
int cache_tags_all_each(cache_t *c, int (*fn)(void *arg, const cache_tag_info_t *t), void *arg);

/** Visits every content record (committed) in digest order. fn returns nonzero to stop. */
int cache_content_each(cache_t *c, int (*fn)(void *arg, const char *digest, const cache_entry_t *e),
                       void *arg);

typedef struct cache_ref {
    enum image_role role;
    uint64_t size;
    char digest[REF_DIGEST_MAX + 1];
} cache_ref_t;

/** The references recorded for manifest digest: *refs malloc'd (owned by the caller, free),
 * *n of them. Returns 0, WE_NOTFOUND (no record), WE_INDEX. */
int cache_refs_get(cache_t *c, const char *digest, cache_ref_t **refs, size_t *n);

/* ---- Removal: rm, prune, eviction (gc.c, evict.c) ---------------------------------------- */

/** A tag or a digest to remove (winch rm). */
typedef struct cache_gc_target {
    const char *upstream, *repo; /* borrowed; copied by cache_gc */
    const char *tag;             /* exactly one of tag and digest */
    const char *digest;
} cache_gc_target_t;

enum cache_gc_what { CACHE_GC_TAG = 1, CACHE_GC_CONTENT = 2 };

/** One removal, as cache_gc reports it (strings borrowed for the callback). */
typedef struct cache_gc_item {
    enum cache_gc_what what;
    const char *upstream, *repo, *tag; /* CACHE_GC_TAG */
    const char *digest;                /* the tag's manifest, or the content removed */
    int kind;                          /* CACHE_GC_CONTENT: enum cache_kind */
    uint64_t size;                     /* CACHE_GC_CONTENT */
    const char *why;                   /* "removed", "unreferenced", "unused", "over max_size" */
} cache_gc_item_t;

typedef struct cache_gc_opts {
    const cache_gc_target_t *rm; /* remove these tags/manifests (and what only they reference) */
    size_t nrm;
    bool unreferenced;          /* remove every untagged manifest and unreferenced blob (prune) */
    int64_t unused_before_ms;   /* remove tags and content last pulled before this; 0: none */
    uint64_t target_bytes;      /* then least recently used first until the total content is at
                               * most this; UINT64_MAX: no size pass */
    const char *const *protect; /* globs over "upstream/repo" (common/glob.h): never removed */
    size_t nprotect;
    const char *const *keep; /* digests kept with everything they reference (config pins) */
    size_t nkeep;
    bool dry_run; /* plan and report only */
    size_t slice; /* items per write transaction and loop slice; 0: 256 */
    /* Each removal once committed (or planned, on a dry run), on the loop thread. May be NULL. */
    void (*on_item)(void *arg, const cache_gc_item_t *it);
    void *arg;
} cache_gc_opts_t;

typedef struct cache_gc_result {
    uint64_t total_before;    /* content bytes indexed when the scan ran */
    uint64_t freed;           /* content bytes removed (or that would be) */
    uint64_t tags, contents;  /* removed (or that would be) */
    uint64_t skipped;         /* planned but used again before removal: kept */
    int64_t scan_ms;          /* the threadpool scan */
    int64_t total_ms;         /* from cache_gc to the callback */
    int64_t longest_slice_us; /* longest stretch the loop spent in one slice */
    unsigned slices;
} cache_gc_result_t;

typedef void (*cache_gc_cb)(void *arg, int status, const cache_gc_result_t *r);

/** Removes what o asks for: a scan of the whole index on the threadpool (mark from every tag,
 * untagged manifest and unreferenced blob; count who references what) plans the removals; then
 * slices of at most o->slice items each commit one index write (entries first, so the index
 * never names a file that is gone) and move their files out of blobs/ (a rename on the loop,
 * skipped for a digest being filled or stored right now; the unlink on the threadpool). A
 * blob referenced by a manifest that stays, protected or kept content, and anything pulled
 * after the scan are never removed. Readers holding a file keep reading it. Everything in o is
 * copied. cb runs once, on the loop, never before this returns. Returns 0, -EBUSY (a gc runs),
 * WE_INVALID or -ENOMEM (cb never runs then). */
int cache_gc(cache_t *c, const cache_gc_opts_t *o, cache_gc_cb cb, void *arg);
/** True while a cache_gc runs. */
bool cache_gc_running(const cache_t *c);
/** Bytes of content this process has indexed since open (fills and manifest puts), never
 * decreasing: with a gc's total_before and freed, retention keeps its estimate of the total
 * without scanning. */
uint64_t cache_bytes_added(const cache_t *c);

/** What the cache holds, as `winch df` shows it. */
typedef struct cache_usage {
    uint64_t total, referenced, unreferenced, shared_saved;
    uint64_t blobs, manifests, tags, dangling;
} cache_usage_t;
/** Scans the index (synchronously: for the CLI) and fills *u. 0 or WE_INDEX/-ENOMEM. */
int cache_usage(cache_t *c, cache_usage_t *u);
/** Visits every dangling manifest (untagged, referenced by no other manifest: docker's
 * <none>), after a synchronous scan (for the CLI). fn returns nonzero to stop. */
int cache_dangling_each(cache_t *c, int (*fn)(void *arg, const char *digest), void *arg);

/* ---- Pins, as retention reads them (pins_read.c) ------------------------------------------ */

/** Visits every stored pin (upstream/repo:tag -> digest; strings borrowed for the call). A pinned
 * tag, its manifest and everything it references are never evicted or pruned. fn returns
 * nonzero to stop. Returns 0 or WE_INDEX. */
int cache_pin_each(cache_t *c,
                   int (*fn)(void *arg, const char *upstream, const char *repo, const char *tag,
                             const char *digest),
                   void *arg);

/* ---- Verification (verify.c) ------------------------------------------------------------ */

enum cache_verify_problem {
    CACHE_VERIFY_CORRUPT = 1, /* the file's size or digest is wrong: quarantined by a fix */
    CACHE_VERIFY_MISSING = 2, /* an index entry without its file: the entry goes */
    CACHE_VERIFY_ORPHAN = 3,  /* a file no index entry names: removed */
};

typedef struct cache_verify_problem_s {
    enum cache_verify_problem what;
    const char *digest; /* borrowed for the callback */
    bool fixed;
} cache_verify_problem_t;

typedef struct cache_verify_opts {
    bool rehash;  /* hash every file (else sizes and presence only: the check after start) */
    bool orphans; /* walk blobs/ for files without an entry */
    bool fix;     /* drop bad entries (first), quarantine corrupt files, remove orphans */
    void (*on_problem)(void *arg, const cache_verify_problem_t *p); /* loop; may be NULL */
    void *arg;
} cache_verify_opts_t;

typedef struct cache_verify_result {
    uint64_t checked, problems, bytes_hashed;
    int64_t scan_ms;
} cache_verify_result_t;

typedef void (*cache_verify_cb)(void *arg, int status, const cache_verify_result_t *r);

/** Checks every indexed file on the threadpool (a snapshot of the index, then the files), then
 * fixes on the loop as o says. cb runs once on the loop, never before this returns. A verify
 * may run beside a gc and beside serving. Returns 0 or -ENOMEM. */
int cache_verify(cache_t *c, const cache_verify_opts_t *o, cache_verify_cb cb, void *arg);

#endif
