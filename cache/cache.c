/* The cache object: its lifecycle, and the public reads that must see writes this process has
 * accepted but not committed yet.
 *
 * Lifecycle
 *
 *   cache_open   validates the options, then store_open (creates the layout, takes the
 *                directory lock, sweeps tmp/), manifests_open (the hot tier), index_open (the
 *                LMDB environment and the loop's read transaction). Any failure undoes what was
 *                done, in reverse order. blobs/ is never scanned: LMDB is the index.
 *   serving      everything runs on the loop thread; fills (fill.c), manifest puts
 *                (manifests.c) and index commits (index.c) run jobs on libuv's threadpool,
 *                each holding what it uses until its completion runs on the loop.
 *   cache_close  only once the loop has drained (no fill referenced, no put or commit in
 *                flight). Closes the index first and releases the lock last, so no other
 *                process can open the directory while this one still has the index open.
 *                What is still in flight at that point is a bug: logged, and a commit job
 *                still running makes close leak the index rather than free it under the job.
 *
 * On a crash (kill -9) nothing here needs undoing: the kernel drops the lock, LMDB keeps its
 * last committed state, and the next cache_open sweeps the temp files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/log.h"
#include "common/splice.h"

int cache_open(cache_t **out, const cache_opts_t *o)
{
    cache_t *c = NULL;
    int rc;

    if (!o || !o->loop || !o->dir || !o->dir[0])
        return WE_INVALID;
    if (strlen(o->dir) > CACHE_DIR_MAX)
        return -ENAMETOOLONG;
    c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->lock_fd = -1;
    c->loop = o->loop;
    c->shared = o->shared;
    c->dir = strdup(o->dir);
    if (!c->dir) {
        rc = -ENOMEM;
        goto fail;
    }
    c->io.pwrite = o->io && o->io->pwrite ? o->io->pwrite : pwrite;
    c->io.fsync = o->io && o->io->fsync ? o->io->fsync : fsync;
    c->io.rename = o->io && o->io->rename ? o->io->rename : rename;
    c->io.splice = o->io && o->io->splice ? o->io->splice : splice_to_file;

    if ((rc = store_open(c)))
        goto fail;
    if ((rc = manifests_open(c)))
        goto fail;
    if ((rc = index_open(c, o->map_size)))
        goto fail;
    if ((rc = pins_open(c))) {
        index_close(c);
        goto fail;
    }
    *out = c;
    return 0;
fail:
    manifests_close(c);
    store_close(c);
    free(c->dir);
    free(c);
    return rc;
}

void cache_close(cache_t *c)
{
    if (!c)
        return;
    if (c->live_fills)
        LOG_ERROR("cache: closing with %u fill(s) still referenced (a bug)", c->live_fills);
    if (c->live_puts)
        LOG_ERROR("cache: closing with %u manifest put(s) in flight; they are lost (a bug)",
                  c->live_puts);
    if (c->gc)
        LOG_ERROR("cache: closing while a gc runs (a bug)");
    stats_close(c);
    if (pins_close(c)) {
        LOG_ERROR("cache: closing while a pin write runs (a bug); leaking the index");
        return;
    }
    if (index_close(c)) {
        LOG_ERROR("cache: closing while an index commit runs (a bug); leaking the index");
        return;
    }
    store_close(c);
    manifests_close(c);
    free(c->dir);
    free(c);
}

bool cache_server_running(const cache_t *c)
{
    return c->server_running;
}

const char *cache_dir(const cache_t *c)
{
    return c->dir;
}

/* ---- Reads that see uncommitted writes ------------------------------------------------------- */

int cache_lookup(cache_t *c, const char *digest, cache_entry_t *out)
{
    int rc = index_lookup(c, digest, out);
    /* A manifest put not committed yet: a client's GET by digest right after the HEAD that
     * fetched the manifest must be a hit. */
    if (rc == WE_NOTFOUND && manifests_pending_entry(c, digest, out))
        rc = 0;
    return rc;
}

int cache_tag_get(cache_t *c, const char *upstream, const char *repo, const char *tag,
                  char digest_out[REF_DIGEST_MAX + 1], int64_t *checked_ms)
{
    char key[CACHE_KEY_MAX];
    size_t kl;
    if (index_tag_key(c, upstream, repo, tag, key, &kl))
        return WE_NOTFOUND;
    /* A tag written by this process but not committed yet: reads must see it, or a client that
     * pulls right after the request that recorded it makes winch ask the upstream again. The
     * newest write wins, a pending put's over a queued op of the same millisecond. */
    const wop_t *pend = index_pending_tag(c, key, kl, NULL);
    pend = manifests_pending_tag(c, key, kl, pend);
    if (pend) {
        *checked_ms = pend->now_ms;
        snprintf(digest_out, REF_DIGEST_MAX + 1, "%s", pend->digest);
        return 0;
    }
    return index_tag_read(c, upstream, repo, tag, digest_out, checked_ms);
}

int cache_owner_get(cache_t *c, const char *upstream, const char *repo, const char *digest,
                    uint64_t *size)
{
    char key[CACHE_KEY_MAX];
    size_t kl;
    uint64_t sz = 0;
    enum ref_alg alg;
    if (store_digest_parse(digest, &alg) || index_repo_key(c, upstream, repo, key, &kl))
        return WE_NOTFOUND;
    int rc = manifests_pending_owner(c, key, kl, digest, &sz)
                 ? 0
                 : index_owner_read(c, key, kl, digest, &sz);
    if (rc == 0 && size)
        *size = sz;
    return rc;
}

/* What one op records for the digest asked about (cache_child_platforms). */
struct childplat_query {
    const char *upstream, *digest;
    childplat_acc_t acc;
};

static void childplat_visit(void *arg, const wop_t *op)
{
    struct childplat_query *q = arg;
    childplat_op(op, q->upstream, q->digest, &q->acc);
}

int cache_child_platforms(cache_t *c, const char *upstream, const char *digest,
                          platform_t out[CACHE_CHILD_PLATFORMS_MAX], size_t *n)
{
    enum ref_alg alg;
    *n = 0;
    if (!upstream || !upstream[0] || store_digest_parse(digest, &alg))
        return WE_NOTFOUND;
    /* An index served a moment ago may not be committed yet: its client asks for a child next. */
    struct childplat_query q = {upstream, digest, {out, 0}};
    manifests_pending_each(c, childplat_visit, &q);
    index_queued_each(c, childplat_visit, &q);
    int rc = childplat_read(c, upstream, digest, &q.acc);
    *n = q.acc.n;
    if (rc < 0)
        return rc;
    return q.acc.n ? 0 : WE_NOTFOUND;
}
