/* Manifests: storing them (cache_put_manifest) and reading them back (cache_read_manifest),
 * with the hot tier of recently used ones in front of the disk.
 *
 * A put copies the bytes, then a threadpool job verifies them, writes a temp file and
 * publishes it (store.c); only then is the index op queued (index.c), so after a kill -9 every
 * indexed manifest is a complete, verified file. Between the call and the commit the put is
 * pending: cache_lookup and cache_tag_get see it (cache.c asks manifests_pending_entry and
 * manifests_pending_tag), and its bytes are already in the hot tier, so a client's GET by
 * digest right after the HEAD that fetched the manifest is a hit. A put that fails anywhere
 * stops being pending and reports the error to its callback; nothing of it is indexed.
 *
 * Loop thread, except mput_work. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

/* A put between cache_put_manifest and its commit (or failure). */
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

/* The threadpool job of one put. */
struct mput {
    uv_work_t work;
    cache_t *c;
    wop_t *op; /* queued once the file is published; carries digest, cb and arg */
    void *bytes;
    size_t len;
    uint64_t seq; /* temp file name, reserved on the loop thread */
    int status;
};

int manifests_open(cache_t *c)
{
    return hot_new(&c->hot);
}

void manifests_close(cache_t *c)
{
    hot_free(c->hot);
    c->hot = NULL;
}

/* ---- Reads ----------------------------------------------------------------------------------- */

int cache_read_manifest(cache_t *c, const char *digest, size_t max, char **bytes, size_t *len)
{
    char *buf = NULL;
    int fd = -1, rc;
    struct stat st;

    if (hot_get(c->hot, digest, bytes, len)) {
        if (*len <= max)
            return 0;
        free(*bytes);
        *bytes = NULL;
        return WE_TOOBIG;
    }
    if ((rc = cache_open_content(c, digest, &fd))) {
        if (rc == -ENOENT)
            rc = WE_NOTFOUND;
        goto fail;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        goto fail;
    }
    if ((uint64_t)st.st_size > max) {
        rc = WE_TOOBIG;
        goto fail;
    }
    size_t size = (size_t)st.st_size;
    /* One spare byte keeps the buffer NUL-terminated for callers that parse it as text. */
    buf = malloc(size + 1);
    if (!buf) {
        rc = -ENOMEM;
        goto fail;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto fail;
        }
        if (n == 0) {
            /* Published files never change; a shrink means someone else touched the store. */
            rc = -EIO;
            goto fail;
        }
        got += (size_t)n;
    }
    buf[size] = '\0';
    close(fd);
    hot_put(c->hot, digest, buf, size);
    *bytes = buf;
    *len = size;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

/* ---- Puts ------------------------------------------------------------------------------------ */

/* Threadpool: verify, write the temp file, publish. */
static void mput_work(uv_work_t *w)
{
    struct mput *m = container_of(w, struct mput, work);
    char *tmp = NULL;
    int fd = -1, rc;

    /* The caller verified the digest already; checking again is cheap for a manifest and
     * keeps "every indexed digest verifies" independent of the caller. */
    if ((rc = digest_verify(m->op->digest, m->bytes, m->len)))
        goto fail;
    if ((rc = store_create_temp(m->c, m->seq, m->op->digest, &fd, &tmp)))
        goto fail;
    if ((rc = store_write_all(m->c, fd, m->bytes, m->len, 0)))
        goto fail;
    if ((rc = store_publish(m->c, fd, tmp, m->op->digest)))
        goto fail;
    close(fd);
    free(tmp);
    m->status = 0;
    return;
fail:
    if (fd >= 0)
        close(fd);
    if (tmp) {
        /* After a failed rename the temp file is still there; after a failed directory fsync
         * it is gone and ENOENT is expected. */
        unlink(tmp);
        free(tmp);
    }
    m->status = rc;
}

static void mput_done(uv_work_t *w, int status)
{
    struct mput *m = container_of(w, struct mput, work);
    cache_t *c = m->c;
    wop_t *op = m->op;
    int rc = status ? status : m->status;

    c->live_puts--;
    free(m->bytes);
    free(m);
    if (rc) {
        LOG_WARN("cache: storing manifest %s failed: %s", op->digest, err_str(rc));
        if (op->cb)
            op->cb(op->arg, rc);
        wop_free(op);
        return;
    }
    index_queue(c, op);
}

bool manifests_pending_entry(const cache_t *c, const char *digest, cache_entry_t *out)
{
    for (const struct pending_put *pp = c->pending; pp; pp = pp->next) {
        if (strcmp(pp->digest, digest) != 0)
            continue;
        memset(out, 0, sizeof *out);
        out->size = pp->size;
        out->kind = CACHE_MANIFEST;
        snprintf(out->media_type, sizeof out->media_type, "%s", pp->media_type);
        return true;
    }
    return false;
}

void manifests_pending_each(const cache_t *c, void (*fn)(void *arg, const wop_t *op), void *arg)
{
    for (const struct pending_put *pp = c->pending; pp; pp = pp->next)
        fn(arg, pp->op);
}

bool manifests_pending_owner(const cache_t *c, const char *key, size_t kl, const char *digest,
                             uint64_t *size)
{
    for (const struct pending_put *pp = c->pending; pp; pp = pp->next)
        if (wop_owns(pp->op, key, kl, digest, size))
            return true;
    return false;
}

const wop_t *manifests_pending_tag(const cache_t *c, const char *key, size_t kl, const wop_t *best)
{
    for (const struct pending_put *pp = c->pending; pp; pp = pp->next)
        best = wop_newest_tag(pp->op, key, kl, best);
    return best;
}

/* The put's last step (committed, or failed anywhere): it stops being pending. */
static void pending_done(void *arg, int status)
{
    struct pending_put *pp = arg;
    cache_t *c = pp->c;
    for (struct pending_put **q = &c->pending; *q; q = &(*q)->next) {
        if (*q == pp) {
            *q = pp->next;
            break;
        }
    }
    if (status == 0)
        c->bytes_added += pp->size;
    if (pp->cb)
        pp->cb(pp->arg, status);
    free(pp);
}

int cache_put_manifest(cache_t *c, const cache_manifest_put_t *p, cache_done_cb cb, void *arg)
{
    enum ref_alg alg;
    struct mput *m = NULL;
    struct pending_put *pp = NULL;
    wop_t *op = NULL;
    int rc;

    if ((rc = store_digest_parse(p->digest, &alg)))
        goto fail;
    if (!p->media_type || strlen(p->media_type) > CACHE_MEDIA_MAX || (!p->bytes && p->len) ||
        (p->tag && (!p->upstream || !p->repo)) || (!p->upstream != !p->repo)) {
        rc = WE_INVALID;
        goto fail;
    }
    if ((rc = wop_new(c, p->upstream, p->repo, p->tag, &op)))
        goto fail;
    m = calloc(1, sizeof *m);
    if (!m) {
        rc = -ENOMEM;
        goto fail;
    }
    m->bytes = malloc(p->len ? p->len : 1);
    if (!m->bytes) {
        rc = -ENOMEM;
        goto fail;
    }
    if (p->len)
        memcpy(m->bytes, p->bytes, p->len);
    m->len = p->len;
    m->c = c;
    m->seq = c->tmp_seq++;
    op->what = WOP_CONTENT | (p->repo ? WOP_REPO : 0) | (p->tag ? WOP_TAG : 0);
    if (p->image && ((rc = wop_set_refs(op, p->image)) || (rc = childplat_prepare(op, p->image))))
        goto fail;
    op->kind = CACHE_MANIFEST;
    op->size = p->len;
    snprintf(op->digest, sizeof op->digest, "%s", p->digest);
    snprintf(op->media_type, sizeof op->media_type, "%s", p->media_type);
    pp = calloc(1, sizeof *pp);
    if (!pp) {
        rc = -ENOMEM;
        goto fail;
    }
    pp->c = c;
    pp->cb = cb;
    pp->arg = arg;
    pp->size = p->len;
    snprintf(pp->digest, sizeof pp->digest, "%s", p->digest);
    snprintf(pp->media_type, sizeof pp->media_type, "%s", p->media_type);
    op->cb = pending_done;
    op->arg = pp;
    pp->op = op;
    m->op = op;
    if ((rc = uv_queue_work(c->loop, &m->work, mput_work, mput_done)))
        goto fail;
    c->live_puts++;
    pp->next = c->pending;
    c->pending = pp;
    /* The bytes are verified (by the caller, and again before publishing): readers may have
     * them from memory before the file lands. */
    hot_put(c->hot, p->digest, p->bytes, p->len);
    return 0;
fail:
    if (m)
        free(m->bytes);
    free(m);
    wop_free(op);
    free(pp);
    return rc;
}
