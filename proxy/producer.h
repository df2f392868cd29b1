/** The upstream side of a blob fill: one GET per fill, owned by no client, pouring the body into
 * the fill (cache/cache.h). Owned by the app through a list (no process-wide state).
 * Internal to proxy/. */
#ifndef WINCH_PROXY_PRODUCER_H
#define WINCH_PROXY_PRODUCER_H

#include <stdbool.h>

#include "proxy/call.h"

/** Starts the producer of fill (which c's request created): GET c's blob through c's upstream
 * and repository. The size the cache knows for the blob (from a manifest that references it)
 * must match the upstream's Content-Length and bounds a chunked body; max_blob_bytes bounds a
 * body of unknown size. A 200 records that the repository holds the blob. A stream cut after
 * the headers resumes with a Range request from the byte it has (a few times). On any failure
 * the fill fails. The caller keeps its own fill reference. */
void producer_start(call_t *c, fill_t *fill);

/** True when a producer for digest runs that was started through upstream/repo (repo NULL: any
 * repository of upstream): its GET is the upstream's word that the repository holds it. */
bool producer_runs_for(const blob_producers_t *p, const char *digest, const char *upstream,
                       const char *repo);

/** The producers running, owned by the application. *out owned by the caller
 * (blob_producers_free, once empty). Returns 0 or -ENOMEM. */
int blob_producers_create(blob_producers_t **out);
/** Fails every running producer's fill with WE_CANCELLED (shutdown). A producer whose write is
 * in flight ends when that write lands: run the loop afterwards. */
void blob_producers_cancel_all(blob_producers_t *p);
/** Producers running now (the fills in flight, for the metrics). */
size_t blob_producers_count(const blob_producers_t *p);

/** What the status page shows of one running fill. The strings are borrowed for the call. */
typedef struct producer_view {
    const char *upstream, *repo, *digest;
    uint64_t received; /* bytes taken from the upstream so far */
    uint64_t size;     /* UINT64_MAX while unknown (no answer yet, or chunked) */
    size_t waiters;    /* the fill's subscribers: clients streaming it, a prefetch */
} producer_view_t;
/** Calls cb for the running producers, newest first, at most max of them. */
void blob_producers_each(const blob_producers_t *p, size_t max,
                         void (*cb)(void *arg, const producer_view_t *v), void *arg);
/** Frees the list; NULL is fine. */
void blob_producers_free(blob_producers_t *p);

#endif
