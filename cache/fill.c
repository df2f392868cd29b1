/* Fills: one download per digest, read by every waiting client while it grows.
 *
 * Lifecycle (states WAITING -> STREAMING -> DONE | FAILED; fill_state() tells which)
 *
 *   fill_get (miss)        enters the single-flight table; state WAITING; the caller is the
 *                          producer. Later fill_get calls for the digest return the same fill.
 *                          No file yet: a fill whose upstream never answers (a queue full of
 *                          requests for blobs that do not exist) costs memory, not fds.
 *   fill_set_size          creates tmp/<seq>.<hex>.part (write fd) and a read-only fd on it;
 *                          WAITING -> STREAMING (size may stay unknown for chunked upstreams).
 *   fill_write (repeated)  one at a time: a threadpool job hashes the chunk and pwrites it at
 *                          `written`; back on the loop, written grows, subscribers are
 *                          notified, then the producer's callback runs (and sends the next).
 *                          fill_write_pipe is the same with the chunk in a pipe: the job
 *                          splices it into the file, then hashes it from the page cache.
 *   fill_finish            once the last write has landed (at once, or when the write in
 *                          flight completes), the loop checks the size (WE_SHORT) and the
 *                          digest (WE_DIGEST); the fill is then `verified` and subscribers are
 *                          notified, so they may send the last byte. A threadpool job fsyncs,
 *                          renames into blobs/ and fsyncs the directories; back on the loop
 *                          the content entry is queued on the index write queue. Only when that
 *                          commit succeeds: DONE, out of the table, subscribers notified. After
 *                          fill_finish, fill_fail is ignored: the finish decides.
 *   fill_fail / any error  FAILED at once, out of the table (so the next request starts a new
 *                          fill), subscribers notified; a threadpool job unlinks the temp file
 *                          as soon as no other job is using it. A failed publish removes the
 *                          temp file itself; a failed index commit leaves a published file the
 *                          index never names, which the next fill of the digest overwrites.
 *
 * The read fd (fill_fd) lives until the last reference goes: it survives the rename and the
 * unlink, so subscribers of a DONE or FAILED fill can still read the bytes below fill_written.
 *
 * References: the producer and every subscriber hold one. Each threadpool job, the pending
 * index commit and a notification round in progress hold one more, so nobody dropping
 * references can free memory a job or a round uses. The last reference of a fill that was
 * never finished nor failed (a producer that vanished) cancels it, which removes the temp file.
 * Memory is freed once the fill's timer handle has closed (the next loop iteration); fds and
 * the temp file go immediately.
 *
 * Notifications never run inside the call that caused them: fill_subscribe, fill_set_size
 * and failures arm a zero-timeout timer ("kick") that notifies on the next loop iteration;
 * write completions, the verdict and DONE notify from their own loop callbacks. Notifying a
 * subscriber who has seen nothing new is harmless: a notification means "look at the fill
 * again".
 *
 * On a crash (kill -9 at any instant) a fill leaves at most its temp file, which the next
 * cache_open sweeps, and perhaps a published file the index never heard of (harmless, see
 * above). The index names a blob only after its bytes were verified, fsynced and renamed into
 * place with the directory fsynced, so every indexed digest verifies after any crash.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/util.h"

/* The buffer a spliced chunk is hashed through: small enough to stay in the CPU's cache. */
#define FILL_HASH_BUF ((size_t)256 << 10)

enum fill_job {
    JOB_NONE,
    JOB_WRITE,   /* hash + pwrite of one chunk */
    JOB_PIPE,    /* splice of one chunk from a pipe, then its hash from the page cache */
    JOB_FINISH,  /* verify, fsync, rename, fsync dir */
    JOB_INDEX,   /* waiting for the index write queue */
    JOB_CLEANUP, /* close the write fd, unlink the temp file */
};

struct fill {
    cache_t *c;
    fill_t *tnext, *tprev; /* single-flight bucket chain */
    bool in_table;
    unsigned refs;
    enum fill_state state;
    int err;
    uint64_t size, written;
    int wfd;       /* producer side; owned by the job in flight, closed at publish or cleanup */
    int rfd;       /* fill_fd; closed with the last reference; -1 until the temp file exists */
    bool tmp_gone; /* no temp file: not made yet (fill_set_size makes it), renamed or unlinked */
    bool finish_called; /* the producer called fill_finish: fill_fail no longer applies */
    bool verified;      /* every byte is in and hashes to the digest (publishing may go on) */
    digester_t *dg;
    char *tmp_path;
    char digest[REF_DIGEST_MAX + 1];
    char media_type[CACHE_MEDIA_MAX + 1];

    uv_work_t work; /* the one threadpool job */
    enum fill_job job;
    int job_status;
    const void *wdata; /* the write in flight */
    int wpipe;         /* or the pipe it comes from (JOB_PIPE) */
    size_t wlen;
    char *hbuf; /* FILL_HASH_BUF bytes for hashing spliced chunks back from the file; or NULL */
    uint64_t woff;
    fill_write_cb wcb;
    void *warg;

    fill_sub_t *subs_head, *subs_tail;
    fill_sub_t *notify_next; /* the next subscriber of the round in progress */
    bool notifying, renotify;
    uv_timer_t kick;
};

static void fill_fail_now(fill_t *f, int err);

/* ---- The single-flight table ----------------------------------------------------------------- */

static unsigned bucket_of(const char *digest)
{
    return hash_str(digest) % CACHE_FILL_BUCKETS;
}

static fill_t *table_find(cache_t *c, const char *digest)
{
    for (fill_t *f = c->fills[bucket_of(digest)]; f; f = f->tnext)
        if (strcmp(f->digest, digest) == 0)
            return f;
    return NULL;
}

static void table_insert(fill_t *f)
{
    fill_t **head = &f->c->fills[bucket_of(f->digest)];
    f->tprev = NULL;
    f->tnext = *head;
    if (*head)
        (*head)->tprev = f;
    *head = f;
    f->in_table = true;
}

static void table_remove(fill_t *f)
{
    if (!f->in_table)
        return;
    if (f->tprev)
        f->tprev->tnext = f->tnext;
    else
        f->c->fills[bucket_of(f->digest)] = f->tnext;
    if (f->tnext)
        f->tnext->tprev = f->tprev;
    f->tnext = f->tprev = NULL;
    f->in_table = false;
}

/* ---- References and notifications ------------------------------------------------------------ */

static void fill_closed(uv_handle_t *h)
{
    free(container_of(h, fill_t, kick));
}

static void fill_free(fill_t *f)
{
    if (f->subs_head)
        LOG_ERROR("cache: fill %s freed with subscribers still attached (a bug)", f->digest);
    /* Detached, so their later fill_unsubscribe is a no-op instead of a use after free. */
    for (fill_sub_t *s = f->subs_head, *next; s; s = next) {
        next = s->next;
        s->prev = s->next = NULL;
        s->fill = NULL;
    }
    table_remove(f);
    if (f->rfd >= 0)
        close(f->rfd);
    /* Both are handled by jobs before the last reference can go; this is only a backstop. */
    if (f->wfd >= 0)
        close(f->wfd);
    if (!f->tmp_gone)
        unlink(f->tmp_path);
    digester_free(f->dg);
    free(f->hbuf);
    free(f->tmp_path);
    f->c->live_fills--;
    uv_close((uv_handle_t *)&f->kick, fill_closed);
}

void fill_ref(fill_t *f)
{
    f->refs++;
}

void fill_unref(fill_t *f)
{
    if (!f)
        return;
    if (f->refs == 0) {
        LOG_ERROR("cache: fill %s: reference count underflow (a bug)", f->digest);
        return;
    }
    if (f->refs == 1 && !f->finish_called && f->state <= FILL_STREAMING) {
        /* Nobody is left to finish or fail this fill: cancel it so the temp file goes. The
         * cleanup job takes its own reference, so the fill outlives this call. */
        fill_fail_now(f, WE_CANCELLED);
    }
    if (--f->refs > 0)
        return;
    fill_free(f);
}

static void notify_all(fill_t *f)
{
    /* A notify callback that causes another round (rare) gets it after this one ends, never
     * nested inside it, so notify_next stays meaningful. */
    if (f->notifying) {
        f->renotify = true;
        return;
    }
    f->notifying = true;
    f->refs++; /* callbacks may drop every other reference */
    do {
        f->renotify = false;
        for (fill_sub_t *s = f->subs_head; s; s = f->notify_next) {
            f->notify_next = s->next;
            s->notify(s);
        }
    } while (f->renotify);
    f->notify_next = NULL;
    f->notifying = false;
    fill_unref(f);
}

static void kick_cb(uv_timer_t *t)
{
    notify_all(container_of(t, fill_t, kick));
}

/* Notifies every subscriber on the next loop iteration. */
static void kick(fill_t *f)
{
    uv_timer_start(&f->kick, kick_cb, 0, 0);
}

void fill_subscribe(fill_t *f, fill_sub_t *s, fill_notify_fn notify)
{
    s->notify = notify;
    s->fill = f;
    s->next = NULL;
    s->prev = f->subs_tail;
    if (f->subs_tail)
        f->subs_tail->next = s;
    else
        f->subs_head = s;
    f->subs_tail = s;
    if (f->state != FILL_WAITING)
        kick(f);
}

void fill_unsubscribe(fill_sub_t *s)
{
    fill_t *f = s->fill;
    if (!f)
        return;
    if (f->notify_next == s)
        f->notify_next = s->next;
    if (s->prev)
        s->prev->next = s->next;
    else
        f->subs_head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        f->subs_tail = s->prev;
    s->prev = s->next = NULL;
    s->fill = NULL;
}

size_t fill_subscribers(const fill_t *f)
{
    size_t n = 0;
    for (const fill_sub_t *s = f->subs_head; s; s = s->next)
        n++;
    return n;
}

/* ---- Jobs ------------------------------------------------------------------------------------ */

static void start_job(fill_t *f, enum fill_job job, uv_work_cb work, uv_after_work_cb done)
{
    f->job = job;
    f->refs++;
    /* uv_queue_work only fails for a NULL work callback. */
    uv_queue_work(f->c->loop, &f->work, work, done);
}

static void cleanup_work(uv_work_t *w)
{
    fill_t *f = container_of(w, fill_t, work);
    if (f->wfd >= 0) {
        close(f->wfd);
        f->wfd = -1;
    }
    if (unlink(f->tmp_path) < 0 && errno != ENOENT)
        LOG_WARN("cache: cannot remove temp file %s: %s", f->tmp_path, strerror(errno));
}

static void cleanup_done(uv_work_t *w, int status)
{
    fill_t *f = container_of(w, fill_t, work);
    f->job = JOB_NONE;
    f->tmp_gone = status == 0;
    fill_unref(f);
}

static void start_cleanup(fill_t *f)
{
    if (f->tmp_gone || f->job != JOB_NONE)
        return;
    start_job(f, JOB_CLEANUP, cleanup_work, cleanup_done);
}

/* FAILED now, whatever the producer intended; the temp file goes once no job uses it. */
static void fill_fail_now(fill_t *f, int err)
{
    if (f->state == FILL_FAILED || f->state == FILL_DONE)
        return;
    f->state = FILL_FAILED;
    f->err = err < 0 ? err : WE_CANCELLED;
    LOG_DEBUG("cache: fill %s failed: %s", f->digest, err_str(f->err));
    table_remove(f);
    kick(f);
    start_cleanup(f);
}

/* ---- Producer -------------------------------------------------------------------------------- */

bool fill_running(cache_t *c, const char *digest)
{
    return table_find(c, digest) != NULL;
}

int fill_get(cache_t *c, const char *digest, fill_t **out, bool *created)
{
    enum ref_alg alg;
    fill_t *f = NULL;
    size_t n = strnlen(digest, REF_DIGEST_MAX + 1);
    int rc;

    if (n > REF_DIGEST_MAX)
        return WE_INVALID;
    if ((rc = ref_digest_parse(digest, n, &alg)))
        return rc;
    if ((f = table_find(c, digest))) {
        f->refs++;
        *out = f;
        *created = false;
        return 0;
    }
    f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->c = c;
    f->wfd = f->rfd = -1;
    f->tmp_gone = true; /* none yet */
    f->size = FILL_SIZE_UNKNOWN;
    f->state = FILL_WAITING;
    memcpy(f->digest, digest, n + 1);
    if ((rc = digester_new(&f->dg, alg)))
        goto fail;
    /* Last: from here on, freeing the fill goes through uv_close. */
    if ((rc = uv_timer_init(c->loop, &f->kick)))
        goto fail;
    f->refs = 1;
    table_insert(f);
    c->live_fills++;
    *out = f;
    *created = true;
    return 0;
fail:
    LOG_ERROR("cache: cannot start a fill for %s: %s", digest, err_str(rc));
    digester_free(f->dg);
    free(f);
    return rc;
}

/* The temp file and its two fds, made when the producer knows the upstream answered. */
static int make_temp(fill_t *f)
{
    cache_t *c = f->c;
    char *path = NULL;
    int rc = store_create_temp(c, c->tmp_seq++, f->digest, &f->wfd, &path);
    if (rc || !path)
        return rc ? rc : -ENOMEM;
    f->tmp_path = path;
    f->tmp_gone = false;
    f->rfd = open(f->tmp_path, O_RDONLY | O_CLOEXEC);
    if (f->rfd < 0)
        return -errno; /* fill_fail_now removes the file and closes wfd */
    return 0;
}

int fill_set_size(fill_t *f, uint64_t size, const char *media_type)
{
    if (f->state == FILL_FAILED)
        return f->err;
    if (f->state != FILL_WAITING || f->finish_called)
        return -EINVAL;
    int rc = make_temp(f);
    if (rc) {
        LOG_ERROR("cache: cannot create the temp file of fill %s: %s", f->digest, err_str(rc));
        fill_fail_now(f, rc);
        return rc;
    }
    f->size = size;
    /* A blob's media type is informational; one too long to store is dropped, not fatal. */
    if (media_type && strlen(media_type) <= CACHE_MEDIA_MAX)
        memcpy(f->media_type, media_type, strlen(media_type) + 1);
    f->state = FILL_STREAMING;
    kick(f);
    return 0;
}

static void write_work(uv_work_t *w)
{
    fill_t *f = container_of(w, fill_t, work);
    digester_update(f->dg, f->wdata, f->wlen);
    f->job_status = store_write_all(f->c, f->wfd, f->wdata, f->wlen, f->woff);
}

/* Spliced bytes never pass through user space on their way in: they are hashed from the page
 * cache right after landing there (a copy into a small buffer that stays in the CPU's cache,
 * cheaper than the two copies of read + pwrite). A chunk that does not read back whole fails
 * the fill like a failed write. */
static void pipe_work(uv_work_t *w)
{
    fill_t *f = container_of(w, fill_t, work);
    f->job_status = store_splice_all(f->c, f->wpipe, f->wfd, f->wlen, f->woff);
    for (size_t done = 0; f->job_status == 0 && done < f->wlen;) {
        size_t n = f->wlen - done < FILL_HASH_BUF ? f->wlen - done : FILL_HASH_BUF;
        ssize_t got = pread(f->rfd, f->hbuf, n, (off_t)(f->woff + done));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            f->job_status = got < 0 ? -errno : -EIO;
            break;
        }
        digester_update(f->dg, f->hbuf, (size_t)got);
        done += (size_t)got;
    }
}

static void start_finish(fill_t *f);

static void write_done(uv_work_t *w, int status)
{
    fill_t *f = container_of(w, fill_t, work);
    int rc = status ? status : f->job_status;
    fill_write_cb cb = f->wcb;
    void *arg = f->warg;

    f->job = JOB_NONE;
    f->wcb = NULL;
    f->wdata = NULL;
    if (f->state == FILL_FAILED) {
        /* Failed while the chunk was being written: the cleanup waited for this job. */
        rc = f->err;
        start_cleanup(f);
    } else if (rc) {
        LOG_WARN("cache: fill %s: writing %s failed: %s", f->digest, f->tmp_path, err_str(rc));
        fill_fail_now(f, rc);
    } else {
        f->written += f->wlen;
        notify_all(f);
    }
    if (cb)
        cb(arg, rc);
    /* fill_finish arrived while this chunk was in flight. */
    if (f->finish_called && f->job == JOB_NONE && f->state <= FILL_STREAMING)
        start_finish(f);
    fill_unref(f);
}

/* What fill_write and fill_write_pipe check before a chunk may go. */
static int write_allowed(fill_t *f, size_t len)
{
    if (f->state == FILL_FAILED)
        return f->err;
    if (f->state != FILL_STREAMING || f->finish_called)
        return -EINVAL;
    if (f->job != JOB_NONE)
        return -EBUSY;
    if (f->size != FILL_SIZE_UNKNOWN && len > f->size - f->written) {
        LOG_WARN("cache: fill %s: upstream sent more than the announced %llu bytes", f->digest,
                 (unsigned long long)f->size);
        fill_fail_now(f, WE_TOOBIG);
        return WE_TOOBIG;
    }
    return 0;
}

/* The chunk of len bytes lands at `written`; write_done reports it to cb. */
static void start_chunk(fill_t *f, size_t len, fill_write_cb cb, void *arg, enum fill_job job,
                        uv_work_cb work)
{
    f->wlen = len;
    f->woff = f->written;
    f->wcb = cb;
    f->warg = arg;
    start_job(f, job, work, write_done);
}

int fill_write(fill_t *f, const void *data, size_t len, fill_write_cb cb, void *arg)
{
    int rc = write_allowed(f, len);
    if (rc)
        return rc;
    f->wdata = data;
    start_chunk(f, len, cb, arg, JOB_WRITE, write_work);
    return 0;
}

int fill_write_pipe(fill_t *f, int pipe_r, size_t len, fill_write_cb cb, void *arg)
{
    int rc = write_allowed(f, len);
    if (rc)
        return rc;
    if (!f->hbuf && !(f->hbuf = malloc(FILL_HASH_BUF)))
        return -ENOMEM;
    f->wpipe = pipe_r;
    start_chunk(f, len, cb, arg, JOB_PIPE, pipe_work);
    return 0;
}

static void finish_work(uv_work_t *w)
{
    fill_t *f = container_of(w, fill_t, work);
    int rc = store_publish(f->c, f->wfd, f->tmp_path, f->digest);
    close(f->wfd);
    f->wfd = -1;
    /* After a failed publish the temp file may or may not have been renamed; either way it
     * must not stay in tmp/. */
    if (rc && unlink(f->tmp_path) < 0 && errno != ENOENT)
        LOG_WARN("cache: cannot remove temp file %s: %s", f->tmp_path, strerror(errno));
    f->job_status = rc;
}

static void fill_indexed(void *arg, int status)
{
    fill_t *f = arg;
    f->job = JOB_NONE;
    if (status == 0) {
        f->c->bytes_added += f->written;
        f->state = FILL_DONE;
        table_remove(f);
        notify_all(f);
    } else {
        /* The file is published but unindexed: garbage that the next fill overwrites. */
        LOG_ERROR("cache: fill %s: index commit failed: %s", f->digest, err_str(status));
        fill_fail_now(f, status);
    }
    fill_unref(f);
}

static void finish_done(uv_work_t *w, int status)
{
    fill_t *f = container_of(w, fill_t, work);
    cache_t *c = f->c;
    wop_t *op;
    int rc = status ? status : f->job_status;

    f->job = JOB_NONE;
    f->tmp_gone = status == 0;
    if (rc == 0 && (rc = wop_new(c, NULL, NULL, NULL, &op)) == 0) {
        op->what = WOP_CONTENT;
        op->kind = CACHE_BLOB;
        op->size = f->written;
        memcpy(op->digest, f->digest, sizeof op->digest);
        memcpy(op->media_type, f->media_type, sizeof op->media_type);
        op->cb = fill_indexed;
        op->arg = f;
        f->job = JOB_INDEX;
        f->refs++; /* released by fill_indexed */
        index_queue(c, op);
    } else if (rc) {
        fill_fail_now(f, rc);
    }
    fill_unref(f);
}

/* Runs once the last write has landed. The hash is complete by then and finalizing it is one
 * block's work, so the verdict is reached here on the loop: subscribers may release the blob's
 * last byte at once instead of after the fsync, rename and commit that follow. */
static void start_finish(fill_t *f)
{
    char got[REF_DIGEST_MAX + 1];
    int rc = 0;
    if (f->size != FILL_SIZE_UNKNOWN && f->written != f->size) {
        LOG_WARN("cache: fill %s: stream ended at %llu of %llu bytes", f->digest,
                 (unsigned long long)f->written, (unsigned long long)f->size);
        rc = WE_SHORT;
    } else if ((rc = digester_final(f->dg, got)) == 0 && strcmp(got, f->digest) != 0) {
        LOG_WARN("cache: fill %s: content hashes to %s; discarded", f->digest, got);
        rc = WE_DIGEST;
    }
    if (rc) {
        fill_fail_now(f, rc);
        return;
    }
    f->verified = true;
    notify_all(f);
    start_job(f, JOB_FINISH, finish_work, finish_done);
}

void fill_finish(fill_t *f)
{
    if (f->state == FILL_FAILED || f->state == FILL_DONE || f->finish_called)
        return;
    if (f->tmp_gone && !f->tmp_path) {
        /* Finished without fill_set_size (an empty blob): its (empty) file is made now. */
        int rc = make_temp(f);
        if (rc) {
            fill_fail_now(f, rc);
            return;
        }
    }
    f->finish_called = true;
    /* With a write in flight, write_done starts the finish once the chunk is on disk. */
    if (f->job == JOB_NONE)
        start_finish(f);
}

void fill_fail(fill_t *f, int err)
{
    if (f->finish_called) {
        /* The verdict belongs to the finish in progress. */
        LOG_DEBUG("cache: fill %s: fail after finish ignored", f->digest);
        return;
    }
    fill_fail_now(f, err);
}

bool fill_in_progress(cache_t *c, const char *digest)
{
    return table_find(c, digest) != NULL;
}

/* ---- Accessors ------------------------------------------------------------------------------- */

bool fill_verified(const fill_t *f)
{
    return f->verified;
}

enum fill_state fill_state(const fill_t *f)
{
    return f->state;
}

uint64_t fill_size(const fill_t *f)
{
    return f->size;
}

uint64_t fill_written(const fill_t *f)
{
    return f->written;
}

int fill_error(const fill_t *f)
{
    return f->state == FILL_FAILED ? f->err : 0;
}

const char *fill_media_type(const fill_t *f)
{
    return f->media_type;
}

const char *fill_digest(const fill_t *f)
{
    return f->digest;
}

int fill_fd(const fill_t *f)
{
    return f->rfd;
}
