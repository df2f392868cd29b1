/* The producer of a blob fill (producer.h).
 *
 * The producer copies upstream bytes into one of two buffers while the threadpool hashes and
 * writes the other, so reading from the upstream overlaps hashing and writing (SHA-256 runs at
 * about the speed of a local upstream: done in turn, they halve the fill's speed). A write
 * starts whenever none is in flight and bytes are waiting, so a slow upstream still reaches
 * subscribers piece by piece; the upstream is paused only when both buffers are busy. The
 * buffers are allocated when the upstream answers, not when the request is queued.
 *
 * Sizes: the fill's size is the upstream's Content-Length, which must equal the size a cached
 * manifest gives for the blob when one does; a chunked body takes that size, or, unknown, is
 * cut at max_blob_bytes. Past the size, fill_write fails the fill (WE_TOOBIG).
 *
 * Splicing: from a plain-HTTP upstream, a body with a Content-Length of at least PIPE_MIN bytes
 * takes a shorter road (common/splice.h): the upstream connection moves it into the producer's
 * pipe, and fill_write_pipe moves it on into the fill's file (one job at a time, everything
 * the pipe holds at its start) and hashes it there. No byte passes through user space on the
 * way in; the buffers hold only what was read with the head. A full pipe pauses the upstream
 * until a job has drained it. TLS upstreams and chunked bodies keep the buffers.
 *
 * Resuming: when the stream is cut after the headers (and the size is known), the producer asks
 * again with Range: bytes=<what it has>- and goes on with the 206, up to PRODUCER_RESUMES times;
 * subscribers only see the fill grow a little later. */
#include "proxy/producer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/splice.h"
#include "common/timeutil.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/metrics.h"
#include "proxy/negcache.h"
#include "proxy/retention.h"

#define PRODUCER_BUF ((size_t)1 << 20)
/* The pipe a spliced body goes through, and the smallest body worth one (two fds, a few
 * syscalls: below this, the buffers are as cheap). */
#define PIPE_SIZE ((size_t)1 << 20)
#define PIPE_MIN ((uint64_t)256 << 10)
/* Cuts of one blob's stream answered with a Range request before the fill fails. */
#define PRODUCER_RESUMES 3

/* Free space a fill leaves on the cache's filesystem for the index and directories. */
#define PASS_RESERVE ((uint64_t)4 << 20)

typedef struct producer producer_t;
struct producer {
    blob_producers_t *owner;
    producer_t *prev, *next;
    bool linked; /* on the owner's list */
    fill_t *fill;
    cache_t *cache;              /* borrowed */
    upstream_t *client;          /* borrowed */
    health_t *health;            /* borrowed: told how the exchange ended */
    struct retention *retention; /* told when the disk is full */
    negcache_t *neg;             /* borrowed: an upstream 404 is remembered there */
    metrics_t *metrics;          /* borrowed: answers, latency, bytes */
    int upstream_ix;             /* the upstream's index, for the metrics */
    uint64_t req_id;             /* the request that started the fill (its upstream logs) */
    uint64_t t0_ns;              /* uv_hrtime when the current request was sent */
    const config_t *cfg;
    upreq_t *up;   /* NULL between requests and once over */
    bool answered; /* the first request's headers arrived */
    bool writing;  /* a fill_write is in flight: its callback still needs this struct */
    bool paused;   /* the upstream is paused: `in` holds bytes that did not fit yet */
    bool ended;    /* the upstream is done; end_err says how */
    int end_err;
    int resumes;       /* Range requests sent after cuts */
    uint64_t expect;   /* the size a manifest gives, UINT64_MAX when unknown */
    uint64_t size;     /* the fill's size, UINT64_MAX when unknown (chunked) */
    uint64_t received; /* bytes taken from the upstream so far */
    const char *in;    /* upstream bytes not yet copied (valid while paused) */
    size_t in_len;
    int fillidx; /* the buffer being filled; the other one may be being written */
    size_t blen[2];
    char *buf[2];
    int pipe[2];      /* the splice pipe (read end, write end), or -1 */
    uint64_t in_pipe; /* bytes spliced into the pipe and not yet taken by a job */
    size_t pipe_job;  /* bytes the job in flight takes from the pipe (0: a buffer write) */
    bool pipe_full;   /* the upstream is paused until the pipe drains */
    char digest[REF_DIGEST_MAX + 1];
    char upstream[REF_NAME_MAX + 1];
    char repo[REF_NAME_MAX + 1];
    char path[REF_NAME_MAX + 400];
};

/* Every running producer, so shutdown can stop them. */
struct blob_producers {
    producer_t *head;
};

static void unlink_producer(producer_t *f)
{
    if (!f->linked)
        return;
    f->linked = false;
    if (f->prev)
        f->prev->next = f->next;
    else
        f->owner->head = f->next;
    if (f->next)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
}

/* Ends the producer: finish or fail the fill, free everything. Never while a write is in
 * flight. */
static void end(producer_t *f, int err)
{
    unlink_producer(f);
    if (f->up) {
        upreq_cancel(f->up);
        f->up = NULL;
    }
    if (err == 0) {
        fill_finish(f->fill);
    } else {
        LOG_WARN("fill %s failed: %s", f->digest, err_str(err));
        if (err == -ENOSPC || err == -EDQUOT)
            retention_disk_full(f->retention, f->size != UINT64_MAX ? f->size : 0);
        if (fill_state(f->fill) != FILL_FAILED)
            fill_fail(f->fill, err);
    }
    fill_unref(f->fill);
    free(f->buf[0]);
    free(f->buf[1]);
    for (int i = 0; i < 2; i++)
        if (f->pipe[i] >= 0)
            close(f->pipe[i]);
    free(f);
}

/* Fails the producer now, or as soon as the write in flight lands. */
static void abort_producer(producer_t *f, int err)
{
    if (f->up) {
        upreq_cancel(f->up);
        f->up = NULL;
    }
    if (f->writing) {
        f->ended = true;
        f->end_err = err;
        return;
    }
    end(f, err);
}

static void on_written(void *arg, int status);

/* Moves bytes along: input into the filling buffer, a full-enough buffer to the disk, the
 * upstream paused or resumed, and the end once everything is written. */
static void pump(producer_t *f)
{
    for (;;) {
        size_t *bl = &f->blen[f->fillidx];
        size_t n = PRODUCER_BUF - *bl < f->in_len ? PRODUCER_BUF - *bl : f->in_len;
        if (n) {
            memcpy(f->buf[f->fillidx] + *bl, f->in, n);
            *bl += n;
            f->in += n;
            f->in_len -= n;
        }
        if (f->writing || *bl == 0)
            break;
        int idx = f->fillidx;
        f->fillidx ^= 1;
        f->writing = true;
        int err = fill_write(f->fill, f->buf[idx], f->blen[idx], on_written, f);
        if (err < 0) {
            f->writing = false;
            abort_producer(f, err);
            return;
        }
    }
    /* Spliced bytes come after every buffered one: a job only once the buffers are empty. */
    if (!f->writing && f->blen[f->fillidx] == 0 && f->in_pipe > 0) {
        f->writing = true;
        f->pipe_job = f->in_pipe < PIPE_SIZE ? (size_t)f->in_pipe : PIPE_SIZE;
        int err = fill_write_pipe(f->fill, f->pipe[0], f->pipe_job, on_written, f);
        if (err < 0) {
            f->writing = false;
            f->pipe_job = 0;
            abort_producer(f, err);
            return;
        }
    }
    if (f->up) {
        if (f->in_len > 0 && !f->paused) {
            upreq_pause(f->up);
            f->paused = true;
        } else if (f->in_len == 0 && f->paused) {
            f->paused = false;
            upreq_resume(f->up);
        }
    }
    if (f->ended && !f->writing && f->blen[f->fillidx] == 0 && f->in_pipe == 0)
        end(f, f->end_err);
}

static void on_written(void *arg, int status)
{
    producer_t *f = arg;
    f->writing = false;
    if (f->pipe_job) {
        f->in_pipe -= f->pipe_job;
        f->pipe_job = 0;
        if (f->pipe_full && f->up && status == 0) {
            f->pipe_full = false;
            upreq_resume(f->up);
        }
    } else {
        f->blen[f->fillidx ^ 1] = 0;
    }
    if (status < 0) {
        abort_producer(f, status);
        return;
    }
    if (f->ended && f->end_err) {
        end(f, f->end_err);
        return;
    }
    pump(f);
}

/* on_disk_full "pass_through": a blob that cannot fit is not even started (each client then
 * streams it from the upstream, passthru.c), rather than written until the disk is full. Not an
 * eviction trigger: a blob bigger than the space there is would otherwise empty the cache. */
static bool fits_on_disk(const producer_t *f)
{
    uint64_t room;
    if (f->size == UINT64_MAX || cache_space_free(f->cache, &room) < 0)
        return true;
    if (room >= PASS_RESERVE && f->size <= room - PASS_RESERVE)
        return true;
    LOG_WARN("blob %s: %" PRIu64 " bytes, %" PRIu64 " free on the cache's filesystem: passed "
             "through",
             f->digest, f->size, room);
    return false;
}

/* Asks for the rest of the body in the pipe (made at the first try); where the upstream
 * connection cannot splice (TLS), the body keeps coming through the buffers. */
static void try_splice(producer_t *f, upreq_t *up)
{
    if (f->pipe[0] < 0) {
        int rc = splice_pipe_open(f->pipe, PIPE_SIZE);
        if (rc < 0) {
            LOG_DEBUG("blob %s: no splice pipe (%s); buffered", f->digest, err_str(rc));
            return;
        }
    }
    (void)upreq_splice_body(up, f->pipe[1]);
}

/* The first answer: the size, the owner record, the buffers. */
static int take_first_answer(producer_t *f, upreq_t *up)
{
    uint64_t cl = upreq_content_length(up);
    if (cl != UINT64_MAX && f->expect != UINT64_MAX && cl != f->expect) {
        LOG_WARN("upstream %s: blob %s is %" PRIu64 " bytes, its manifest says %" PRIu64,
                 f->upstream, f->digest, cl, f->expect);
        return WE_UPSTREAM;
    }
    f->size = cl != UINT64_MAX ? cl : f->expect;
    if (f->size != UINT64_MAX && f->size > f->cfg->max_blob_bytes) {
        LOG_WARN("upstream %s: blob %s is %" PRIu64 " bytes, over max_blob_bytes", f->upstream,
                 f->digest, f->size);
        return WE_TOOBIG;
    }
    if (f->cfg->disk_full_pass_through && !fits_on_disk(f))
        return -EFBIG;
    f->buf[0] = malloc(PRODUCER_BUF);
    f->buf[1] = malloc(PRODUCER_BUF);
    if (!f->buf[0] || !f->buf[1])
        return -ENOMEM;
    /* The upstream's word that the repository holds the blob (blob scoping). */
    cache_owner_set(f->cache, f->upstream, f->repo, f->digest, f->size != UINT64_MAX ? f->size : 0,
                    NULL, NULL);
    int rc = fill_set_size(f->fill, f->size, upreq_header(up, "Content-Type"));
    if (rc == 0 && f->cfg->fill_splice && cl != UINT64_MAX && cl >= PIPE_MIN)
        try_splice(f, up);
    return rc;
}

/* One decimal number at *p, then the byte sep (none when sep is 0); advances *p past both. */
static bool take_number(const char **p, char sep, unsigned long long *out)
{
    char *end;
    if (**p < '0' || **p > '9')
        return false;
    errno = 0;
    *out = strtoull(*p, &end, 10);
    if (errno == ERANGE || (sep && *end != sep))
        return false;
    *p = sep ? end + 1 : end;
    return true;
}

/* A resumed request must answer 206 from exactly the byte the producer has. */
static int take_resumed_answer(producer_t *f, upreq_t *up, int status)
{
    const char *cr = upreq_header(up, "Content-Range");
    unsigned long long first = 0, last = 0, total = 0;
    const char *p = cr && strncmp(cr, "bytes ", 6) == 0 ? cr + 6 : NULL;
    if (status != 206 || !p || !take_number(&p, '-', &first) || !take_number(&p, '/', &last) ||
        !take_number(&p, 0, &total) || first != f->received || total != f->size) {
        LOG_WARN("upstream %s: blob %s: the resumed request did not answer from byte %" PRIu64,
                 f->upstream, f->digest, f->received);
        return WE_UPSTREAM;
    }
    LOG_INFO("upstream %s: blob %s resumed at byte %" PRIu64 " (%d of %d)", f->upstream, f->digest,
             f->received, f->resumes, PRODUCER_RESUMES);
    return 0;
}

static void on_headers(upreq_t *up, void *arg, int status)
{
    producer_t *f = arg;
    int err;
    metrics_upstream_answer(f->metrics, f->upstream_ix, status, 0, (uv_hrtime() - f->t0_ns) / 1000);
    if (!f->answered) {
        f->answered = true;
        if (f->health)
            health_report(f->health, status, 0);
        if (status != 200) {
            LOG_WARN("upstream answered %d for blob %s", status, f->digest);
            if (status == 404)
                negcache_put(f->neg, f->upstream, f->repo, f->digest, time_mono_ms(),
                             f->cfg->negative_ttl_s * 1000);
            abort_producer(f, fetch_status_err(status));
            return;
        }
        err = take_first_answer(f, up);
    } else {
        err = take_resumed_answer(f, up, status);
        if (err == 0 && f->pipe[0] >= 0)
            try_splice(f, up);
    }
    if (err < 0)
        abort_producer(f, err);
}

static void on_body(upreq_t *up, void *arg, const char *data, size_t len)
{
    producer_t *f = arg;
    (void)up;
    f->received += len;
    metrics_upstream_bytes(f->metrics, f->upstream_ix, METRICS_KIND_BLOB, len);
    /* Of unknown size: no bigger than max_blob_bytes, whatever the upstream streams. */
    if (f->size == UINT64_MAX && f->received > f->cfg->max_blob_bytes) {
        LOG_WARN("upstream %s: blob %s passed max_blob_bytes; cut", f->upstream, f->digest);
        abort_producer(f, WE_TOOBIG);
        return;
    }
    f->in = data;
    f->in_len = len;
    pump(f);
}

/* Body bytes in the pipe (n > 0), or the pipe is full and the upstream paused (n == 0). */
static void on_spliced(upreq_t *up, void *arg, size_t n)
{
    producer_t *f = arg;
    if (n == 0) {
        if (!f->writing && f->in_pipe == 0) {
            upreq_resume(up); /* nothing to drain: the pipe had room by the time it was asked */
            return;
        }
        f->pipe_full = true;
        pump(f);
        return;
    }
    f->received += n;
    f->in_pipe += n;
    metrics_upstream_bytes(f->metrics, f->upstream_ix, METRICS_KIND_BLOB, n);
    pump(f);
}

static const upreq_cbs_t producer_cbs;

/* Asks again from the byte the producer has. Returns 0 when the request is on its way. */
static int resume(producer_t *f)
{
    char range[64];
    snprintf(range, sizeof range, "Range: bytes=%" PRIu64 "-", f->received);
    const char *hdrs[] = {range, NULL};
    f->resumes++;
    f->t0_ns = uv_hrtime();
    upreq_opts_t opts = {.lane = UPREQ_BULK, .req_id = f->req_id};
    return upreq_start_opts(&f->up, f->client, "GET", f->path, hdrs, &producer_cbs, f, &opts);
}

/* A cut after the headers, of a blob whose end is known, with nothing left unread. */
static bool resumable(const producer_t *f, int err)
{
    return err != WE_TOOBIG && err != WE_CANCELLED && f->answered && f->size != UINT64_MAX &&
           f->received < f->size && f->in_len == 0 && !f->paused && f->resumes < PRODUCER_RESUMES;
}

static void on_done(upreq_t *up, void *arg, int err)
{
    producer_t *f = arg;
    (void)up;
    f->up = NULL; /* freed by the client after this returns */
    if (err && resumable(f, err)) {
        if (resume(f) == 0)
            return;
        f->up = NULL;
    }
    f->ended = true;
    f->end_err = err;
    /* No answer at all counts against the upstream's health; a cut after the headers is the
     * fill's business (the client retries). */
    if (err && !f->answered && f->health)
        health_report(f->health, 0, err);
    if (err && !f->answered)
        metrics_upstream_answer(f->metrics, f->upstream_ix, 0, err, 0);
    if (err && f->writing)
        return; /* on_written ends it */
    if (err) {
        end(f, err);
        return;
    }
    pump(f);
}

static const upreq_cbs_t producer_cbs = {
    .on_headers = on_headers,
    .on_body = on_body,
    .on_spliced = on_spliced,
    .on_done = on_done,
};

void producer_start(call_t *c, fill_t *fill)
{
    producer_t *f = calloc(1, sizeof *f);
    if (!f) {
        fill_fail(fill, -ENOMEM);
        return;
    }
    fill_ref(fill);
    f->fill = fill;
    f->cache = c->env->cache;
    f->client = c->up;
    f->health = c->health;
    f->retention = c->env->retention;
    f->neg = c->env->neg;
    f->metrics = c->env->metrics;
    f->upstream_ix = call_upstream_ix(c);
    f->t0_ns = uv_hrtime();
    f->cfg = c->env->cfg;
    f->size = UINT64_MAX;
    f->pipe[0] = f->pipe[1] = -1;
    snprintf(f->digest, sizeof f->digest, "%s", c->route.ref);
    snprintf(f->upstream, sizeof f->upstream, "%s", c->route.upstream->name);
    snprintf(f->repo, sizeof f->repo, "%s", c->route.name);
    uint64_t known;
    f->expect = cache_owner_get(c->env->cache, f->upstream, NULL, f->digest, &known) == 0 && known
                    ? known
                    : UINT64_MAX;
    fetch_path(c, "blobs", c->route.ref, f->path, sizeof f->path);
    f->owner = c->env->producers;
    f->next = f->owner->head;
    if (f->next)
        f->next->prev = f;
    f->owner->head = f;
    f->linked = true;
    /* Bulk lane (resumes too: upreq_start's default): a blob fill never takes the connections
     * kept for manifests and tag checks, and has no overall deadline (a big blob may take long;
     * the idle timeout and the size bounds hold it). */
    f->req_id = call_id(c);
    upreq_opts_t opts = {.lane = UPREQ_BULK, .req_id = f->req_id};
    int err = upreq_start_opts(&f->up, c->up, "GET", f->path, NULL, &producer_cbs, f, &opts);
    if (err < 0) {
        f->up = NULL;
        end(f, err);
    }
}

bool producer_runs_for(const blob_producers_t *p, const char *digest, const char *upstream,
                       const char *repo)
{
    for (const producer_t *f = p->head; f; f = f->next) {
        if (strcmp(f->digest, digest) == 0 && strcmp(f->upstream, upstream) == 0 &&
            (!repo || strcmp(f->repo, repo) == 0))
            return true;
    }
    return false;
}

void blob_producers_each(const blob_producers_t *p, size_t max,
                         void (*cb)(void *arg, const producer_view_t *v), void *arg)
{
    size_t n = 0;
    for (const producer_t *f = p->head; f && n < max; f = f->next, n++) {
        producer_view_t v = {f->upstream, f->repo, f->digest,
                             f->received, f->size, f->fill ? fill_subscribers(f->fill) : 0};
        cb(arg, &v);
    }
}

size_t blob_producers_count(const blob_producers_t *p)
{
    size_t n = 0;
    for (const producer_t *f = p->head; f; f = f->next)
        n++;
    return n;
}

int blob_producers_create(blob_producers_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : -ENOMEM;
}

void blob_producers_free(blob_producers_t *p)
{
    free(p);
}

void blob_producers_cancel_all(blob_producers_t *p)
{
    /* The whole list is taken first: a producer with a write in flight ends later, in its write
     * callback, and must not be found on the list then. */
    producer_t *list = p->head;
    p->head = NULL;
    while (list) {
        producer_t *f = list;
        list = f->next;
        f->linked = false;
        f->prev = f->next = NULL;
        abort_producer(f, WE_CANCELLED);
    }
}
