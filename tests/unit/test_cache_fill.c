/* Fills on real files and a real loop: single flight, subscribers reading the growing file,
 * publishing, verification failures, injected I/O faults and reference handling. (The
 * crash-consistency test that SIGKILLs a filling child is test_cache_crash.) */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/internal.h"
#include "cachetest.h"
#include "check.h"
#include "common/err.h"
#include "common/log.h"
#include "common/splice.h"
#include "common/util.h"
#include "testutil.h"

#define MT_LAYER "application/vnd.oci.image.layer.v1.tar+gzip"

static uv_loop_t loop;
static const char *root; /* test_tmpdir, made in main */
static int dir_seq;

/* ---- Fault injection through cache_io_t -------------------------------------------------- */

static size_t inj_max_chunk;          /* 0: pwrite writes everything asked */
static int64_t inj_enospc_after = -1; /* fail pwrite with ENOSPC once this many bytes went */
static int inj_fsync_errno;
static int inj_rename_errno;
static int64_t inj_written;
static long inj_pwrite_calls;

static size_t inj_splice_max;          /* 0: splice moves everything asked */
static int64_t inj_splice_enospc = -1; /* fail splice with ENOSPC once this many bytes went */
static int64_t inj_spliced;
static long inj_splice_calls;

static void inj_reset(void)
{
    inj_max_chunk = 0;
    inj_enospc_after = -1;
    inj_fsync_errno = 0;
    inj_rename_errno = 0;
    inj_written = 0;
    inj_pwrite_calls = 0;
    inj_splice_max = 0;
    inj_splice_enospc = -1;
    inj_spliced = 0;
    inj_splice_calls = 0;
}

static ssize_t inj_pwrite(int fd, const void *buf, size_t n, off_t off)
{
    inj_pwrite_calls++;
    if (inj_enospc_after >= 0 && inj_written + (int64_t)n > inj_enospc_after) {
        errno = ENOSPC;
        return -1;
    }
    if (inj_max_chunk && n > inj_max_chunk)
        n = inj_max_chunk - (size_t)(inj_pwrite_calls % 7); /* ragged short writes */
    ssize_t w = pwrite(fd, buf, n, off);
    if (w > 0)
        inj_written += w;
    return w;
}

static int inj_fsync(int fd)
{
    if (inj_fsync_errno) {
        errno = inj_fsync_errno;
        return -1;
    }
    return fsync(fd);
}

static int inj_rename(const char *from, const char *to)
{
    if (inj_rename_errno) {
        errno = inj_rename_errno;
        return -1;
    }
    return rename(from, to);
}

static ssize_t inj_splice(int pipe_r, int fd, size_t n, off_t off)
{
    inj_splice_calls++;
    if (inj_splice_enospc >= 0 && inj_spliced + (int64_t)n > inj_splice_enospc) {
        errno = ENOSPC;
        return -1;
    }
    if (inj_splice_max && n > inj_splice_max)
        n = inj_splice_max - (size_t)(inj_splice_calls % 5); /* ragged short moves */
    ssize_t w = splice_to_file(pipe_r, fd, n, off);
    if (w > 0)
        inj_spliced += w;
    return w;
}

static const cache_io_t inj_io = {inj_pwrite, inj_fsync, inj_rename, inj_splice};

/* ---- Helpers ------------------------------------------------------------------------------- */

static void run(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
}

static cache_t *open_cache(char *dir, size_t cap, const cache_io_t *io)
{
    cache_t *c = NULL;
    snprintf(dir, cap, "%s/c%d", root, dir_seq++);
    cache_opts_t o = {.loop = &loop, .dir = dir, .io = io};
    CHECK_INT(cache_open(&c, &o), 0);
    return c;
}

static void close_cache(cache_t *c)
{
    run(); /* lets released fills finish closing */
    CHECK_INT(c->live_fills, 0);
    cache_close(c);
}

static void status_cb(void *arg, int status)
{
    *(int *)arg = status;
}

static bool published_equals(cache_t *c, const char *digest, const void *data, size_t len)
{
    int fd;
    if (cache_open_content(c, digest, &fd))
        return false;
    unsigned char *b = cachetest_read_all(fd, len);
    close(fd);
    bool eq = memcmp(b, data, len) == 0;
    free(b);
    return eq;
}

/* A subscriber that copies the fill as it grows, like a client being served. */
static bool in_subscribe;

struct reader {
    fill_sub_t sub;
    fill_t *f; /* its own reference */
    uint64_t last_written;
    int notes;
    bool ended;
    enum fill_state final;
    int err;
    unsigned char *copy;
    size_t cap, copied;
};

static void reader_notify(fill_sub_t *s)
{
    struct reader *r = container_of(s, struct reader, sub);
    CHECK(!in_subscribe);
    CHECK(r->f != NULL);
    r->notes++;
    uint64_t w = fill_written(r->f);
    CHECK(w >= r->last_written);
    r->last_written = w;
    CHECK(w <= r->cap);
    while (r->copied < w) {
        ssize_t n = pread(fill_fd(r->f), r->copy + r->copied, w - r->copied, (off_t)r->copied);
        CHECK(n > 0);
        r->copied += (size_t)n;
    }
    enum fill_state st = fill_state(r->f);
    /* DONE implies verified; verified means every byte is in. */
    if (st == FILL_DONE)
        CHECK(fill_verified(r->f));
    if (fill_verified(r->f))
        CHECK(fill_written(r->f) == r->cap || fill_size(r->f) == FILL_SIZE_UNKNOWN);
    if (st == FILL_DONE || st == FILL_FAILED) {
        r->ended = true;
        r->final = st;
        r->err = fill_error(r->f);
        fill_unsubscribe(s);
        fill_unref(r->f);
        r->f = NULL;
    }
}

static void reader_start(struct reader *r, fill_t *f, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->cap = cap;
    r->copy = malloc(cap ? cap : 1);
    CHECK(r->copy != NULL);
    fill_ref(f);
    r->f = f;
    in_subscribe = true;
    fill_subscribe(f, &r->sub, reader_notify);
    in_subscribe = false;
    CHECK_INT(r->notes, 0);
}

/* ---- Tests ---------------------------------------------------------------------------------- */

static void test_single_flight_done(void)
{
    char dir[256];
    char digest[REF_DIGEST_MAX + 1];
    cache_t *c = open_cache(dir, sizeof dir, NULL);
    size_t len = 3 * 1024 * 1024 + 123;
    unsigned char *data = cachetest_random_bytes(len, 7);
    cachetest_digest_of(REF_ALG_SHA256, data, len, digest);

    fill_t *f, *f2;
    bool created;
    CHECK_INT(fill_get(c, "sha256:nothex", &f2, &created), WE_INVALID);
    CHECK_INT(fill_get(c, "md5:0123456789abcdef", &f2, &created), -ENOTSUP);
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    CHECK(created);
    CHECK_INT(fill_get(c, digest, &f2, &created), 0);
    CHECK(!created);
    CHECK(f2 == f);
    fill_unref(f2);
    /* No file and no fd before the upstream answered (issue 8: a queue of fills for digests the
     * upstream does not have must not hold temp files and fds). */
    CHECK_INT(cachetest_tmp_count(dir), 0);
    CHECK_INT(fill_fd(f), -1);
    CHECK_INT(fill_state(f), FILL_WAITING);
    CHECK_INT(fill_size(f), FILL_SIZE_UNKNOWN);
    CHECK_STR(fill_digest(f), digest);
    CHECK_STR(fill_media_type(f), "");

    struct reader a, b, late;
    reader_start(&a, f, len); /* before the size is known */
    CHECK_INT(fill_set_size(f, len, MT_LAYER), 0);
    CHECK_INT(fill_state(f), FILL_STREAMING);
    CHECK_INT(cachetest_tmp_count(dir), 1);
    CHECK(fill_fd(f) >= 0);
    CHECK_INT(fill_set_size(f, len, MT_LAYER), -EINVAL);
    CHECK_INT(a.notes, 0); /* notifications are never synchronous */
    reader_start(&b, f, len);

    cachetest_producer_t p = {.f = f, .data = data, .len = len, .chunk = 64 * 1024};
    cachetest_producer_next(&p);
    CHECK_INT(fill_write(f, data, 1, cachetest_producer_cb, &p), -EBUSY); /* one write in flight */
    run();

    CHECK_INT(p.status, 0);
    CHECK_INT(fill_state(f), FILL_DONE);
    CHECK_INT(fill_error(f), 0);
    CHECK_INT(fill_written(f), len);
    CHECK_STR(fill_media_type(f), MT_LAYER);
    struct reader *rs[] = {&a, &b};
    for (int i = 0; i < 2; i++) {
        CHECK(rs[i]->ended);
        CHECK_INT(rs[i]->final, FILL_DONE);
        CHECK_INT(rs[i]->copied, len);
        CHECK(memcmp(rs[i]->copy, data, len) == 0);
        CHECK(rs[i]->notes > 10); /* saw the file grow, not just the end */
        free(rs[i]->copy);
    }

    /* The read fd outlived the rename; the published file and the index agree with it. */
    unsigned char *back = cachetest_read_all(fill_fd(f), len);
    CHECK(memcmp(back, data, len) == 0);
    free(back);
    CHECK(published_equals(c, digest, data, len));
    cache_entry_t e;
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.kind, CACHE_BLOB);
    CHECK_INT(e.size, len);
    CHECK_STR(e.media_type, MT_LAYER);
    CHECK_INT(cachetest_tmp_count(dir), 0);

    /* A subscriber arriving after DONE gets one notification, on a later loop iteration. */
    reader_start(&late, f, len);
    CHECK_INT(late.notes, 0);
    run();
    CHECK_INT(late.notes, 1);
    CHECK(late.ended && late.final == FILL_DONE);
    CHECK_INT(late.copied, len);
    free(late.copy);

    /* DONE left the single-flight table: the next fill_get starts afresh. Its producer
     * vanishing without finish or fail cancels it and removes its temp file, never the
     * published one. */
    CHECK_INT(fill_get(c, digest, &f2, &created), 0);
    CHECK(created && f2 != f);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    CHECK_INT(fill_set_size(f2, len, NULL), 0);
    CHECK_INT(cachetest_tmp_count(dir), 1);
    fill_unref(f2);
    fill_unref(f);
    run();
    CHECK_INT(cachetest_tmp_count(dir), 0);
    CHECK(published_equals(c, digest, data, len));

    /* A producer that vanishes before the upstream answered leaves nothing behind either. */
    CHECK_INT(fill_get(c, digest, &f2, &created), 0);
    CHECK(created);
    fill_unref(f2);
    run();
    CHECK_INT(cachetest_tmp_count(dir), 0);
    free(data);
    close_cache(c);
}

/* The temp file is made by fill_set_size: when that fails, the fill fails with the error. */
static void test_temp_file_at_size(void)
{
    char dir[256], digest[REF_DIGEST_MAX + 1], tmp[300], moved[300];
    cache_t *c = open_cache(dir, sizeof dir, NULL);
    cachetest_digest_of(REF_ALG_SHA256, "", 0, digest);
    fill_t *f;
    bool created;
    struct reader r;
    /* Many fills waiting for their upstream: no files. */
    enum { N = 100 };
    fill_t *many[N];
    char d[REF_DIGEST_MAX + 1];
    for (int i = 0; i < N; i++) {
        char seed[16];
        snprintf(seed, sizeof seed, "%d", i);
        cachetest_digest_of(REF_ALG_SHA256, seed, strlen(seed), d);
        CHECK_INT(fill_get(c, d, &many[i], &created), 0);
        CHECK(created);
    }
    CHECK_INT(cachetest_tmp_count(dir), 0);
    for (int i = 0; i < N; i++)
        fill_unref(many[i]);
    run();
    /* tmp/ gone: fill_set_size fails, and so does the fill, for its subscribers too. */
    snprintf(tmp, sizeof tmp, "%s/tmp", dir);
    snprintf(moved, sizeof moved, "%s/tmp.away", dir);
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    reader_start(&r, f, 1);
    CHECK_INT(rename(tmp, moved), 0);
    int saved = log_threshold;
    log_threshold = -1; /* the expected error line is not news */
    CHECK_INT(fill_set_size(f, 0, NULL), -ENOENT);
    log_threshold = saved;
    CHECK_INT(rename(moved, tmp), 0);
    CHECK_INT(fill_state(f), FILL_FAILED);
    CHECK_INT(fill_error(f), -ENOENT);
    CHECK_INT(fill_fd(f), -1);
    run();
    CHECK(r.ended && r.final == FILL_FAILED);
    free(r.copy);
    fill_unref(f);
    /* An empty blob finished without a size announced still gets its (empty) file. */
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    fill_finish(f);
    run();
    CHECK_INT(fill_state(f), FILL_DONE);
    fill_unref(f);
    cache_entry_t e;
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.size, 0);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    close_cache(c);
}

static void test_many_concurrent(void)
{
    enum { N = 12 };
    char dir[256];
    char digests[N][REF_DIGEST_MAX + 1];
    unsigned char *data[N];
    size_t lens[N];
    fill_t *fills[N];
    cachetest_producer_t prods[N];
    struct reader readers[N];
    cache_t *c = open_cache(dir, sizeof dir, NULL);
    for (int i = 0; i < N; i++) {
        bool created;
        lens[i] = (size_t)(i * 37001) % 700000;
        data[i] = cachetest_random_bytes(lens[i], 100 + (uint32_t)i);
        cachetest_digest_of(i % 3 ? REF_ALG_SHA256 : REF_ALG_SHA512, data[i], lens[i], digests[i]);
        CHECK_INT(fill_get(c, digests[i], &fills[i], &created), 0);
        CHECK(created);
        CHECK_INT(fill_set_size(fills[i], i % 2 ? lens[i] : FILL_SIZE_UNKNOWN, NULL), 0);
        reader_start(&readers[i], fills[i], lens[i]);
        prods[i] = (cachetest_producer_t){.f = fills[i],
                                          .data = data[i],
                                          .len = lens[i],
                                          .chunk = 16384 + (size_t)i * 1000,
                                          .unref_at_finish = true};
        cachetest_producer_next(&prods[i]);
    }
    run();
    for (int i = 0; i < N; i++) {
        cache_entry_t e;
        CHECK_INT(prods[i].status, 0);
        CHECK(readers[i].ended);
        CHECK_INT(readers[i].final, FILL_DONE);
        CHECK_INT(readers[i].copied, lens[i]);
        CHECK(memcmp(readers[i].copy, data[i], lens[i]) == 0);
        CHECK_INT(cache_lookup(c, digests[i], &e), 0);
        CHECK_INT(e.size, lens[i]);
        CHECK(published_equals(c, digests[i], data[i], lens[i]));
        free(readers[i].copy);
        free(data[i]);
    }
    CHECK_INT(cachetest_tmp_count(dir), 0);
    close_cache(c);
}

/* Whether the last fill_once's fill ended verified. */
static bool last_verified;

/* Runs one fill of data under digest to its end; returns the reader's verdict. */
static int fill_once(cache_t *c, const char *digest, const unsigned char *data, size_t len,
                     uint64_t announce, int *write_status)
{
    fill_t *f;
    bool created;
    struct reader r;
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    CHECK(created);
    CHECK_INT(fill_set_size(f, announce, NULL), 0);
    reader_start(&r, f, len);
    cachetest_producer_t p = {.f = f, .data = data, .len = len, .chunk = 100000};
    cachetest_producer_next(&p);
    run();
    CHECK(r.ended);
    CHECK(r.copied <= len);
    CHECK(memcmp(r.copy, data, r.copied) == 0);
    free(r.copy);
    if (write_status)
        *write_status = p.status;
    int err = fill_error(f);
    CHECK_INT(fill_state(f), err ? FILL_FAILED : FILL_DONE);
    last_verified = fill_verified(f);
    fill_unref(f);
    return err;
}

static void test_digest_mismatch_and_short(void)
{
    char dir[256], digest[REF_DIGEST_MAX + 1], path[512];
    cache_t *c = open_cache(dir, sizeof dir, NULL);
    size_t len = 500000;
    unsigned char *data = cachetest_random_bytes(len, 11);
    unsigned char *other = cachetest_random_bytes(len, 12);
    cachetest_digest_of(REF_ALG_SHA256, other, len, digest);

    CHECK_INT(fill_once(c, digest, data, len, len, NULL), WE_DIGEST);
    CHECK(!last_verified);
    cache_entry_t e;
    CHECK_INT(cache_lookup(c, digest, &e), WE_NOTFOUND);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", dir, digest + 7, digest + 7);
    CHECK(access(path, F_OK) < 0);

    /* The stream ends before the announced size. */
    cachetest_digest_of(REF_ALG_SHA256, data, len, digest);
    CHECK_INT(fill_once(c, digest, data, len / 2, len, NULL), WE_SHORT);
    CHECK_INT(cache_lookup(c, digest, &e), WE_NOTFOUND);
    CHECK_INT(cachetest_tmp_count(dir), 0);

    /* And then the right bytes go through. */
    CHECK_INT(fill_once(c, digest, data, len, len, NULL), 0);
    CHECK_INT(cache_lookup(c, digest, &e), 0);

    /* Unknown size and empty blobs. */
    cachetest_digest_of(REF_ALG_SHA512, data, 1000, digest);
    CHECK_INT(fill_once(c, digest, data, 1000, FILL_SIZE_UNKNOWN, NULL), 0);
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.size, 1000);
    cachetest_digest_of(REF_ALG_SHA256, "", 0, digest);
    CHECK_INT(fill_once(c, digest, data, 0, 0, NULL), 0);
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.size, 0);
    CHECK(published_equals(c, digest, "", 0));
    free(data);
    free(other);
    close_cache(c);
}

static void test_too_big(void)
{
    char dir[256], digest[REF_DIGEST_MAX + 1];
    cache_t *c = open_cache(dir, sizeof dir, NULL);
    unsigned char *data = cachetest_random_bytes(20, 13);
    cachetest_digest_of(REF_ALG_SHA256, data, 20, digest);
    fill_t *f, *f2;
    bool created;
    struct reader r;
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    CHECK_INT(fill_set_size(f, 10, NULL), 0);
    reader_start(&r, f, 20);
    CHECK_INT(fill_write(f, data, 11, NULL, NULL), WE_TOOBIG);
    CHECK_INT(fill_state(f), FILL_FAILED);
    CHECK_INT(fill_error(f), WE_TOOBIG);
    CHECK_INT(fill_write(f, data, 1, NULL, NULL), WE_TOOBIG);
    /* Failing took it out of the table at once. */
    CHECK_INT(fill_get(c, digest, &f2, &created), 0);
    CHECK(created && f2 != f);
    CHECK_INT(fill_set_size(f2, 20, NULL), 0);
    fill_fail(f2, WE_UPSTREAM);
    CHECK_INT(fill_state(f2), FILL_FAILED);
    CHECK_INT(fill_error(f2), WE_UPSTREAM);
    fill_unref(f2);
    run();
    CHECK(r.ended);
    CHECK_INT(r.err, WE_TOOBIG);
    free(r.copy);
    fill_unref(f);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    free(data);
    close_cache(c);
}

static void test_injected_faults(void)
{
    char dir[256], digest[REF_DIGEST_MAX + 1];
    size_t len = 3 * 1024 * 1024;
    unsigned char *data = cachetest_random_bytes(len, 21);
    cachetest_digest_of(REF_ALG_SHA256, data, len, digest);
    cache_entry_t e;
    int ws;

    /* ENOSPC in the middle: the write callback and the subscribers see it, nothing indexed. */
    inj_reset();
    inj_enospc_after = 1024 * 1024;
    cache_t *c = open_cache(dir, sizeof dir, &inj_io);
    int saved = log_threshold;
    log_set_level(WLOG_ERROR);
    CHECK_INT(fill_once(c, digest, data, len, len, &ws), -ENOSPC);
    CHECK_INT(ws, -ENOSPC);
    CHECK_INT(cache_lookup(c, digest, &e), WE_NOTFOUND);
    CHECK_INT(cachetest_tmp_count(dir), 0);

    /* Short writes are continued, not failures. */
    inj_reset();
    inj_max_chunk = 1000;
    CHECK_INT(fill_once(c, digest, data, len, len, &ws), 0);
    CHECK_INT(ws, 0);
    CHECK(inj_pwrite_calls > (long)(len / 1000));
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK(published_equals(c, digest, data, len));
    close_cache(c);

    /* fsync and rename failures fail the fill before anything is indexed. */
    inj_reset();
    c = open_cache(dir, sizeof dir, &inj_io);
    inj_fsync_errno = EIO;
    CHECK_INT(fill_once(c, digest, data, len, len, &ws), -EIO);
    CHECK_INT(ws, 0);
    CHECK_INT(cache_lookup(c, digest, &e), WE_NOTFOUND);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    inj_reset();
    inj_rename_errno = EXDEV;
    CHECK_INT(fill_once(c, digest, data, len, len, &ws), -EXDEV);
    CHECK_INT(cache_lookup(c, digest, &e), WE_NOTFOUND);
    CHECK_INT(cachetest_tmp_count(dir), 0);

    /* A manifest put sees the same faults. */
    static const char body[] = "{\"schemaVersion\":2}";
    char mdigest[REF_DIGEST_MAX + 1];
    cachetest_digest_of(REF_ALG_SHA256, body, strlen(body), mdigest);
    cache_manifest_put_t mp = {.digest = mdigest,
                               .media_type = "application/vnd.oci.image.index.v1+json",
                               .bytes = body,
                               .len = strlen(body)};
    int status = 1;
    inj_reset();
    inj_enospc_after = 0;
    CHECK_INT(cache_put_manifest(c, &mp, status_cb, &status), 0);
    run();
    CHECK_INT(status, -ENOSPC);
    CHECK_INT(cache_lookup(c, mdigest, &e), WE_NOTFOUND);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    log_set_level(saved);
    inj_reset();
    free(data);
    close_cache(c);
}

/* Producer failures, failures racing a write, and finish racing a write. */
struct step_prod {
    fill_t *f;
    int calls;
    int status;
};

static void step_cb(void *arg, int status)
{
    struct step_prod *sp = arg;
    sp->calls++;
    sp->status = status;
}

static void test_fail_and_races(void)
{
    char dir[256], digest[REF_DIGEST_MAX + 1];
    cache_t *c = open_cache(dir, sizeof dir, NULL);
    size_t len = 200000;
    unsigned char *data = cachetest_random_bytes(len, 31);
    cachetest_digest_of(REF_ALG_SHA256, data, len, digest);
    fill_t *f, *f2;
    bool created;
    struct reader r;

    /* The producer gives up after one chunk; subscribers still read what was written. */
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    CHECK_INT(fill_set_size(f, len, NULL), 0);
    reader_start(&r, f, len);
    struct step_prod sp = {.f = f};
    CHECK_INT(fill_write(f, data, 1000, step_cb, &sp), 0);
    run();
    CHECK_INT(sp.calls, 1);
    CHECK_INT(sp.status, 0);
    CHECK_INT(r.copied, 1000);
    fill_fail(f, WE_UPSTREAM);
    fill_fail(f, WE_PROTO); /* the first verdict stands */
    CHECK_INT(fill_error(f), WE_UPSTREAM);
    CHECK_INT(fill_get(c, digest, &f2, &created), 0);
    CHECK(created && f2 != f);
    fill_unref(f2);
    run();
    CHECK(r.ended);
    CHECK_INT(r.final, FILL_FAILED);
    CHECK_INT(r.err, WE_UPSTREAM);
    free(r.copy);
    /* Unlinked, but still readable through the fill's fd while referenced. */
    unsigned char buf[1000];
    CHECK_INT(pread(fill_fd(f), buf, sizeof buf, 0), 1000);
    CHECK(memcmp(buf, data, 1000) == 0);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    fill_unref(f);

    /* A failure while a chunk is being written: the chunk's callback reports it. */
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    CHECK_INT(fill_set_size(f, len, NULL), 0);
    sp = (struct step_prod){.f = f};
    CHECK_INT(fill_write(f, data, len, step_cb, &sp), 0);
    fill_fail(f, WE_CANCELLED);
    fill_unref(f); /* the job keeps the fill alive */
    run();
    CHECK_INT(sp.calls, 1);
    CHECK_INT(sp.status, WE_CANCELLED);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    CHECK_INT(c->live_fills, 0);

    /* The producer vanishes while a chunk is in flight: the fill cancels itself. */
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    CHECK_INT(fill_set_size(f, len, NULL), 0);
    sp = (struct step_prod){.f = f};
    CHECK_INT(fill_write(f, data, len, step_cb, &sp), 0);
    fill_unref(f);
    run();
    CHECK_INT(sp.calls, 1);
    CHECK_INT(sp.status, 0);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    CHECK_INT(c->live_fills, 0);

    /* fill_finish while the last chunk is in flight waits for it; the producer's reference
     * goes at once and the readers hold the last ones. */
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    CHECK_INT(fill_set_size(f, len, NULL), 0);
    reader_start(&r, f, len);
    sp = (struct step_prod){.f = f};
    CHECK_INT(fill_write(f, data, len, step_cb, &sp), 0);
    fill_finish(f);
    CHECK_INT(fill_write(f, data, 1, step_cb, &sp), -EINVAL);
    fill_fail(f, WE_UPSTREAM); /* too late: the finish decides */
    fill_unref(f);
    run();
    CHECK_INT(sp.calls, 1);
    CHECK_INT(sp.status, 0);
    CHECK(r.ended);
    CHECK_INT(r.final, FILL_DONE);
    CHECK_INT(r.copied, len);
    free(r.copy);
    cache_entry_t e;
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(cachetest_tmp_count(dir), 0);
    free(data);
    close_cache(c);
}

/* Notify callbacks that unsubscribe themselves and others, and one that arrives mid-round. */
struct fickle {
    fill_sub_t sub;
    int notes;
    fill_sub_t *also_drop;
    bool drop_self;
    struct fickle *subscribe_new;
    fill_t *f;
};

static void fickle_notify(fill_sub_t *s)
{
    struct fickle *k = container_of(s, struct fickle, sub);
    CHECK(!in_subscribe);
    k->notes++;
    if (k->also_drop) {
        fill_unsubscribe(k->also_drop);
        k->also_drop = NULL;
    }
    if (k->drop_self)
        fill_unsubscribe(s);
    if (k->subscribe_new) {
        in_subscribe = true;
        fill_subscribe(k->f, &k->subscribe_new->sub, fickle_notify);
        in_subscribe = false;
        k->subscribe_new = NULL;
    }
}

static void test_unsubscribe_in_notify(void)
{
    char dir[256], digest[REF_DIGEST_MAX + 1];
    cache_t *c = open_cache(dir, sizeof dir, NULL);
    fill_t *f;
    bool created;
    cachetest_digest_of(REF_ALG_SHA256, "x", 1, digest);
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    struct fickle a = {0}, b = {0}, d = {0}, late = {0};
    a.drop_self = true;
    a.also_drop = &b.sub;
    d.subscribe_new = &late;
    d.f = f;
    in_subscribe = true;
    fill_subscribe(f, &a.sub, fickle_notify);
    fill_subscribe(f, &b.sub, fickle_notify);
    fill_subscribe(f, &d.sub, fickle_notify);
    in_subscribe = false;
    CHECK_INT(fill_set_size(f, 1, NULL), 0);
    run();
    CHECK_INT(a.notes, 1);
    CHECK_INT(b.notes, 0);
    CHECK(d.notes >= 1);
    CHECK(late.notes >= 1);   /* its own first notification came asynchronously */
    fill_unsubscribe(&a.sub); /* idempotent */
    fill_unsubscribe(&d.sub);
    fill_unsubscribe(&late.sub);
    fill_fail(f, WE_CANCELLED);
    fill_unref(f);
    close_cache(c);
}

/* A producer that sends its bytes through a pipe (fill_write_pipe), after a first buffered
 * chunk, as proxy/producer.c does with a spliced upstream body. */
typedef struct pipe_prod {
    fill_t *f;
    const unsigned char *data;
    size_t len, off, chunk;
    int pipe[2];
    int status;
    bool done;
} pipe_prod_t;

static void pipe_prod_cb(void *arg, int status);

static void pipe_prod_next(pipe_prod_t *p)
{
    if (p->off == p->len) {
        fill_finish(p->f);
        p->done = true;
        return;
    }
    size_t n = p->len - p->off < p->chunk ? p->len - p->off : p->chunk;
    CHECK_INT(write(p->pipe[1], p->data + p->off, n), (ssize_t)n); /* n fits in the pipe */
    p->off += n;
    int rc = fill_write_pipe(p->f, p->pipe[0], n, pipe_prod_cb, p);
    if (rc) {
        p->status = rc;
        p->done = true;
    }
}

static void pipe_prod_cb(void *arg, int status)
{
    pipe_prod_t *p = arg;
    p->status = status;
    if (status == 0)
        pipe_prod_next(p);
    else
        p->done = true;
}

/* Fills data[len] as digest: 1000 buffered bytes, then the rest through a pipe. Returns the
 * fill's error; *ws the producer's last status. */
static int pipe_fill(cache_t *c, const char *digest, const unsigned char *data, size_t len, int *ws)
{
    fill_t *f;
    bool created;
    struct reader r;
    pipe_prod_t p = {.data = data, .len = len, .off = 1000, .chunk = 60000};
    CHECK_INT(pipe(p.pipe), 0);
    CHECK_INT(fill_get(c, digest, &f, &created), 0);
    CHECK(created);
    p.f = f;
    CHECK_INT(fill_set_size(f, len, NULL), 0);
    reader_start(&r, f, len);
    int st = 1;
    CHECK_INT(fill_write(f, data, 1000, status_cb, &st), 0);
    CHECK_INT(fill_write_pipe(f, p.pipe[0], 1, status_cb, &st), -EBUSY); /* one at a time */
    run();
    CHECK_INT(st, 0);
    pipe_prod_next(&p);
    run();
    CHECK(p.done);
    CHECK(r.ended);
    CHECK(memcmp(r.copy, data, r.copied) == 0); /* subscribers never see a wrong byte */
    free(r.copy);
    *ws = p.status;
    int err = fill_error(f);
    fill_unref(f);
    close(p.pipe[0]);
    close(p.pipe[1]);
    return err;
}

static void test_write_pipe(void)
{
    char dir[256], digest[REF_DIGEST_MAX + 1], wrong[REF_DIGEST_MAX + 1];
    size_t len = 2 * 1024 * 1024 + 4321;
    unsigned char *data = cachetest_random_bytes(len, 31);
    cachetest_digest_of(REF_ALG_SHA256, data, len, digest);
    unsigned char *other = cachetest_random_bytes(len, 32);
    cachetest_digest_of(REF_ALG_SHA256, other, len, wrong);
    cache_entry_t e;
    int ws;
    int saved = log_threshold;
    log_set_level(WLOG_ERROR);

    /* Whole, verified and published; short splices are continued. */
    inj_reset();
    inj_splice_max = 7000;
    cache_t *c = open_cache(dir, sizeof dir, &inj_io);
    CHECK_INT(pipe_fill(c, digest, data, len, &ws), 0);
    CHECK_INT(ws, 0);
    CHECK(inj_splice_calls > (long)(len / 7000));
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK(published_equals(c, digest, data, len));

    /* Bytes that do not hash to the digest are never published (hashed from the file). */
    inj_reset();
    CHECK_INT(pipe_fill(c, wrong, data, len, &ws), WE_DIGEST);
    CHECK_INT(cache_lookup(c, wrong, &e), WE_NOTFOUND);
    CHECK_INT(cachetest_tmp_count(dir), 0);

    /* ENOSPC in the middle of a splice: the producer and subscribers see it; nothing kept. */
    inj_reset();
    inj_splice_enospc = 500000;
    CHECK_INT(pipe_fill(c, wrong, other, len, &ws), -ENOSPC);
    CHECK_INT(ws, -ENOSPC);
    CHECK_INT(cache_lookup(c, wrong, &e), WE_NOTFOUND);
    CHECK_INT(cachetest_tmp_count(dir), 0);

    /* Past the announced size: WE_TOOBIG before anything moves. */
    inj_reset();
    fill_t *f;
    bool created;
    int pfd[2];
    CHECK_INT(pipe(pfd), 0);
    CHECK_INT(fill_get(c, wrong, &f, &created), 0);
    CHECK_INT(fill_set_size(f, 10, NULL), 0);
    CHECK_INT(fill_write_pipe(f, pfd[0], 11, status_cb, &ws), WE_TOOBIG);
    CHECK_INT(fill_state(f), FILL_FAILED);
    fill_unref(f);
    close(pfd[0]);
    close(pfd[1]);
    log_set_level(saved);
    inj_reset();
    free(data);
    free(other);
    close_cache(c);
}

static const test_case_t cases[] = {
    TEST_CASE(test_single_flight_done),
    TEST_CASE(test_many_concurrent),
    TEST_CASE(test_digest_mismatch_and_short),
    TEST_CASE(test_too_big),
    TEST_CASE(test_injected_faults),
    TEST_CASE(test_fail_and_races),
    TEST_CASE(test_unsubscribe_in_notify),
    TEST_CASE(test_temp_file_at_size),
    TEST_CASE(test_write_pipe),
};

int main(int argc, char **argv)
{
    CHECK_INT(uv_loop_init(&loop), 0);
    root = test_tmpdir("winch-cache-fill");
    int rc = test_main(argc, argv, cases, ARRAY_SIZE(cases));
    CHECK_INT(uv_loop_close(&loop), 0);
    return rc;
}
