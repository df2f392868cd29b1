/* The cache index on real files: content records, tags, repositories, reopening, the
 * directory lock, the temp sweep, the write queue's group commit and the access-time rule. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/internal.h"
#include "cachetest.h"
#include "check.h"
#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "testutil.h"

#define MT_OCI "application/vnd.oci.image.manifest.v1+json"

static uv_loop_t loop;
static const char *root; /* test_tmpdir, made in main */

static cache_t *open_at(const char *dir)
{
    cache_t *c = NULL;
    cache_opts_t o = {.loop = &loop, .dir = dir};
    CHECK_INT(cache_open(&c, &o), 0);
    return c;
}

/* Completion recorder for cache_done_cb. */
struct done {
    int calls;
    int status;
};

static void on_done(void *arg, int status)
{
    struct done *d = arg;
    d->calls++;
    if (status)
        d->status = status;
}

static void run(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
}

/* ---- Layout, lock, sweep ------------------------------------------------------------------ */

static void test_layout_lock_sweep(void)
{
    char dir[256], path[512];
    struct stat st;
    snprintf(dir, sizeof dir, "%s/a/b/cache", root);
    cache_t *c = open_at(dir);
    static const char *const subdirs[] = {"index", "tmp", "blobs", "blobs/sha256", "blobs/sha512"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, subdirs[i]);
        CHECK_INT(stat(path, &st), 0);
        CHECK(S_ISDIR(st.st_mode));
    }
    snprintf(path, sizeof path, "%s/lock", dir);
    CHECK_INT(stat(path, &st), 0);

    /* flock belongs to the open file description: a second open in this process is refused. */
    cache_t *c2 = NULL;
    cache_opts_t o = {.loop = &loop, .dir = dir};
    CHECK_INT(cache_open(&c2, &o), -EBUSY);
    CHECK(c2 == NULL);

    /* Leftover temp files appear; the next open removes them. */
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/tmp/%d.deadbeef.part", dir, 900 + i);
        int fd = open(path, O_CREAT | O_WRONLY, 0644);
        CHECK(fd >= 0);
        CHECK_INT(write(fd, "junk", 4), 4);
        close(fd);
    }
    /* blobs/ is never scanned nor touched at open. */
    snprintf(path, sizeof path, "%s/blobs/sha256/zz", dir);
    CHECK_INT(mkdir(path, 0755), 0);
    cache_close(c);

    c = open_at(dir);
    snprintf(path, sizeof path, "%s/tmp", dir);
    CHECK_INT(cachetest_count_entries(path), 0);
    snprintf(path, sizeof path, "%s/blobs/sha256/zz", dir);
    CHECK_INT(stat(path, &st), 0);
    cache_close(c);

    cache_opts_t bad = {.loop = &loop, .dir = ""};
    CHECK_INT(cache_open(&c2, &bad), WE_INVALID);
}

/* ---- Manifests, content records, tags ----------------------------------------------------- */

static const char manifest_body[] = "{\"schemaVersion\":2,\"mediaType\":\"" MT_OCI "\"}";

static void test_manifest_roundtrip(void)
{
    char dir[256], path[512], digest[REF_DIGEST_MAX + 1], got[REF_DIGEST_MAX + 1];
    snprintf(dir, sizeof dir, "%s/manifests", root);
    cache_t *c = open_at(dir);
    const char *body = manifest_body;
    cachetest_digest_of(REF_ALG_SHA256, body, strlen(body), digest);

    cache_entry_t e;
    CHECK_INT(cache_lookup(c, digest, &e), WE_NOTFOUND);
    CHECK_INT(cache_lookup(c, "garbage", &e), WE_NOTFOUND);
    CHECK_INT(cache_lookup(c, "", &e), WE_NOTFOUND);

    int64_t before = time_wall_ms();
    struct done d = {0};
    cache_manifest_put_t p = {.digest = digest,
                              .media_type = MT_OCI,
                              .bytes = body,
                              .len = strlen(body),
                              .upstream = "docker.io",
                              .repo = "library/alpine",
                              .tag = "3.19"};
    CHECK_INT(cache_put_manifest(c, &p, on_done, &d), 0);
    CHECK_INT(d.calls, 0); /* never before the call returns */
    /* Visible at once, before the file and the index entry land: a client's GET by digest
     * right after the HEAD that fetched the manifest must be a hit. */
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.kind, CACHE_MANIFEST);
    CHECK_INT(e.size, strlen(body));
    CHECK_STR(e.media_type, MT_OCI);
    {
        char *early = NULL;
        size_t early_len = 0;
        CHECK_INT(cache_read_manifest(c, digest, 1 << 20, &early, &early_len), 0);
        CHECK_INT(early_len, strlen(body));
        CHECK(memcmp(early, body, early_len) == 0);
        free(early);
        int64_t early_checked = 0;
        CHECK_INT(cache_tag_get(c, "docker.io", "library/alpine", "3.19", got, &early_checked), 0);
        CHECK_STR(got, digest);
        CHECK(early_checked >= before);
    }
    run();
    CHECK_INT(d.calls, 1);
    CHECK_INT(d.status, 0);

    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.kind, CACHE_MANIFEST);
    CHECK_INT(e.size, strlen(body));
    CHECK_STR(e.media_type, MT_OCI);
    CHECK(e.created_ms >= before && e.created_ms <= time_wall_ms());
    CHECK_INT(e.accessed_ms, e.created_ms);

    char *bytes = NULL;
    size_t len = 0;
    CHECK_INT(cache_read_manifest(c, digest, 1 << 20, &bytes, &len), 0);
    CHECK_INT(len, strlen(body));
    CHECK(memcmp(bytes, body, len) == 0);
    free(bytes);
    CHECK_INT(cache_read_manifest(c, digest, 10, &bytes, &len), WE_TOOBIG);

    /* The published file sits at its content path. */
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", dir, digest + 7, digest + 7);
    CHECK(access(path, R_OK) == 0);
    int fd = -1;
    CHECK_INT(cache_open_content(c, digest, &fd), 0);
    CHECK(fd >= 0);
    close(fd);

    int64_t checked = 0;
    CHECK_INT(cache_tag_get(c, "docker.io", "library/alpine", "3.19", got, &checked), 0);
    CHECK_STR(got, digest);
    CHECK(checked >= before);
    CHECK_INT(cache_tag_get(c, "docker.io", "library/alpine", "3.20", got, &checked), WE_NOTFOUND);
    CHECK_INT(cache_tag_get(c, "ghcr.io", "library/alpine", "3.19", got, &checked), WE_NOTFOUND);

    /* A second put of the same content keeps created_ms. */
    int64_t created = e.created_ms;
    p.tag = NULL;
    d = (struct done){0};
    CHECK_INT(cache_put_manifest(c, &p, on_done, &d), 0);
    run();
    CHECK_INT(d.status, 0);
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.created_ms, created);
    cache_close(c);

    /* Everything survives a reopen. */
    c = open_at(dir);
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.kind, CACHE_MANIFEST);
    CHECK_STR(e.media_type, MT_OCI);
    CHECK_INT(cache_tag_get(c, "docker.io", "library/alpine", "3.19", got, &checked), 0);
    CHECK_STR(got, digest);
    cache_close(c);
}

static void test_manifest_refused(void)
{
    char dir[256], path[512], digest[REF_DIGEST_MAX + 1];
    snprintf(dir, sizeof dir, "%s/refused", root);
    cache_t *c = open_at(dir);
    const char *body = manifest_body;
    cachetest_digest_of(REF_ALG_SHA256, body, strlen(body), digest);
    cache_manifest_put_t p = {.digest = digest,
                              .media_type = MT_OCI,
                              .bytes = body,
                              .len = strlen(body),
                              .upstream = "docker.io",
                              .repo = "library/alpine"};
    cache_entry_t e;
    struct done d;
    char *bytes = NULL;
    size_t len = 0;
    int fd = -1;

    /* Nothing there, and names that are not digests. */
    CHECK_INT(cache_read_manifest(
                  c, "sha256:0000000000000000000000000000000000000000000000000000000000000000", 100,
                  &bytes, &len),
              WE_NOTFOUND);
    CHECK_INT(cache_read_manifest(c, "../../etc/passwd", 100, &bytes, &len), WE_INVALID);
    CHECK_INT(
        cache_open_content(
            c, "sha256:1111111111111111111111111111111111111111111111111111111111111111", &fd),
        -ENOENT);

    /* Bytes that do not match the digest are refused and nothing is indexed or left behind. */
    static const char other[] = "{\"schemaVersion\":2}";
    char other_digest[REF_DIGEST_MAX + 1];
    cachetest_digest_of(REF_ALG_SHA256, other, strlen(other), other_digest);
    p.digest = other_digest;
    p.bytes = body;
    d = (struct done){0};
    CHECK_INT(cache_put_manifest(c, &p, on_done, &d), 0);
    run();
    CHECK_INT(d.calls, 1);
    CHECK_INT(d.status, WE_DIGEST);
    CHECK_INT(cache_lookup(c, other_digest, &e), WE_NOTFOUND);
    snprintf(path, sizeof path, "%s/tmp", dir);
    CHECK_INT(cachetest_count_entries(path), 0);

    /* Invalid inputs are refused at the call, without a callback. */
    p.digest = "sha256:xyz";
    CHECK_INT(cache_put_manifest(c, &p, on_done, &d), WE_INVALID);
    p.digest = digest;
    p.repo = "Bad/Repo";
    CHECK_INT(cache_put_manifest(c, &p, on_done, &d), WE_INVALID);
    p.repo = "library/alpine";
    p.tag = "-bad";
    CHECK_INT(cache_put_manifest(c, &p, on_done, &d), WE_INVALID);
    p.tag = NULL;
    p.media_type = NULL;
    CHECK_INT(cache_put_manifest(c, &p, on_done, &d), WE_INVALID);
    CHECK_INT(d.calls, 1);
    CHECK_INT(cache_tag_set(c, "docker.io", "library/alpine", "x", "sha256:00", NULL, NULL),
              WE_INVALID);
    CHECK_INT(cache_tag_set(c, "", "library/alpine", "x", digest, NULL, NULL), WE_INVALID);
    cache_close(c);
}

/* ---- Repositories: order and pagination -------------------------------------------------- */

struct collect {
    char names[16][64];
    int n;
    int stop_at;
};

static int collect_fn(void *arg, const char *repo)
{
    struct collect *col = arg;
    CHECK(col->n < 16);
    snprintf(col->names[col->n++], sizeof col->names[0], "%s", repo);
    return col->stop_at && col->n >= col->stop_at;
}

static int collect_tag_fn(void *arg, const char *tag, const char *digest)
{
    CHECK(strncmp(digest, "sha256:", 7) == 0);
    return collect_fn(arg, tag);
}

static void expect_repos(cache_t *c, const char *upstream, const char *after, int stop_at,
                         const char *const *want, int nwant)
{
    struct collect col = {.stop_at = stop_at};
    CHECK_INT(cache_repos_each(c, upstream, after, collect_fn, &col), 0);
    CHECK_INT(col.n, nwant);
    for (int i = 0; i < nwant; i++)
        CHECK_STR(col.names[i], want[i]);
}

static void test_repos(void)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/repos", root);
    cache_t *c = open_at(dir);
    const char *digest = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    static const char *const repos[] = {"library/b", "library/a", "a/x", "library/a/sub",
                                        "library/b"};
    struct done d = {0};
    for (size_t i = 0; i < sizeof repos / sizeof repos[0]; i++)
        CHECK_INT(cache_tag_set(c, "docker.io", repos[i], "latest", digest, on_done, &d), 0);
    CHECK_INT(cache_tag_set(c, "ghcr.io", "z", "v1", digest, on_done, &d), 0);
    CHECK_INT(cache_tag_set(c, "docker.i", "zz", "v1", digest, on_done, &d), 0);
    run();
    CHECK_INT(d.calls, 7);
    CHECK_INT(d.status, 0);

    static const char *const all[] = {"a/x", "library/a", "library/a/sub", "library/b"};
    expect_repos(c, "docker.io", NULL, 0, all, 4);
    expect_repos(c, "docker.io", "", 0, all, 4);
    expect_repos(c, "docker.io", "library/a", 0, all + 2, 2);
    expect_repos(c, "docker.io", "a", 0, all, 4);
    expect_repos(c, "docker.io", "library/aa", 0, all + 3, 1);
    expect_repos(c, "docker.io", "library/b", 0, NULL, 0);
    expect_repos(c, "docker.io", "zzz", 0, NULL, 0);
    expect_repos(c, "docker.io", NULL, 2, all, 2);
    expect_repos(c, "docker.io", "a/x", 1, all + 1, 1);
    static const char *const ghcr[] = {"z"};
    expect_repos(c, "ghcr.io", NULL, 0, ghcr, 1);
    expect_repos(c, "quay.io", NULL, 0, NULL, 0);

    /* Tags of one repository, in order, not those of a repository whose name it prefixes. */
    CHECK_INT(cache_tag_set(c, "docker.io", "library/a", "9", digest, on_done, &d), 0);
    CHECK_INT(cache_tag_set(c, "docker.io", "library/a", "10", digest, on_done, &d), 0);
    run();
    CHECK_INT(d.status, 0);
    struct collect tags = {0};
    CHECK_INT(cache_tags_each(c, "docker.io", "library/a", collect_tag_fn, &tags), 0);
    CHECK_INT(tags.n, 3);
    CHECK_STR(tags.names[0], "10");
    CHECK_STR(tags.names[1], "9");
    CHECK_STR(tags.names[2], "latest");
    struct collect none = {0};
    CHECK_INT(cache_tags_each(c, "docker.io", "library", collect_tag_fn, &none), 0);
    CHECK_INT(none.n, 0);
    cache_close(c);

    c = open_at(dir);
    expect_repos(c, "docker.io", NULL, 0, all, 4);
    cache_close(c);
}

/* ---- Group commit ---------------------------------------------------------------------- */

static void test_group_commit(void)
{
    char dir[256], tag[32], got[REF_DIGEST_MAX + 1];
    snprintf(dir, sizeof dir, "%s/group", root);
    cache_t *c = open_at(dir);
    const char *digest = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    enum { N = 3000 };
    struct done d = {0};
    for (int i = 0; i < N; i++) {
        snprintf(tag, sizeof tag, "t%d", i);
        CHECK_INT(cache_tag_set(c, "docker.io", "library/busybox", tag, digest, on_done, &d), 0);
    }
    /* The first op went out alone; everything queued behind it waits for one next batch. */
    CHECK(c->wq_running);
    int queued = 0;
    for (wop_t *op = c->wq_head; op; op = op->next)
        queued++;
    CHECK_INT(queued, N - 1);
    CHECK_INT(d.calls, 0);
    /* Queued and in-flight tags are visible to readers before they commit. */
    {
        int64_t when;
        CHECK_INT(cache_tag_get(c, "docker.io", "library/busybox", "t0", got, &when), 0);
        CHECK_STR(got, digest);
        CHECK_INT(cache_tag_get(c, "docker.io", "library/busybox", "t2999", got, &when), 0);
        CHECK_STR(got, digest);
        CHECK_INT(cache_tag_get(c, "docker.io", "library/busybox", "t3000", got, &when),
                  WE_NOTFOUND);
    }
    int64_t t0 = time_mono_ms();
    run();
    CHECK_INT(d.calls, N);
    CHECK_INT(d.status, 0);
    fprintf(stderr, "group commit: %d tag writes in %lld ms\n", N,
            (long long)(time_mono_ms() - t0));
    int64_t checked;
    for (int i = 0; i < N; i += 97) {
        snprintf(tag, sizeof tag, "t%d", i);
        CHECK_INT(cache_tag_get(c, "docker.io", "library/busybox", tag, got, &checked), 0);
        CHECK_STR(got, digest);
    }
    cache_close(c);
}

/* Callbacks that queue more writes: they join the next batch and all complete. */
struct chain {
    cache_t *c;
    int left;
    int calls;
};

static void chain_cb(void *arg, int status)
{
    struct chain *ch = arg;
    CHECK_INT(status, 0);
    ch->calls++;
    if (ch->left-- > 0)
        CHECK_INT(
            cache_tag_set(ch->c, "docker.io", "library/chain", "x",
                          "sha256:4444444444444444444444444444444444444444444444444444444444444444",
                          chain_cb, ch),
            0);
}

static void test_chained_writes(void)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/chain", root);
    struct chain ch = {.c = open_at(dir), .left = 20};
    chain_cb(&ch, 0);
    run();
    CHECK_INT(ch.calls, 21); /* the direct call and 20 completions */
    cache_close(ch.c);
}

/* ---- Access times ------------------------------------------------------------------------- */

static void test_note_access(void)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/access", root);
    cache_t *c = open_at(dir);
    const char *digest = "sha256:5555555555555555555555555555555555555555555555555555555555555555";

    /* A content record stored two minutes ago. */
    wop_t *op;
    CHECK_INT(wop_new(c, NULL, NULL, NULL, &op), 0);
    int64_t old = time_wall_ms() - 120000;
    op->what = WOP_CONTENT;
    op->kind = CACHE_BLOB;
    op->size = 42;
    op->now_ms = old;
    snprintf(op->digest, sizeof op->digest, "%s", digest);
    index_queue(c, op);
    run();
    cache_entry_t e;
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.accessed_ms, old);
    CHECK_INT(e.created_ms, old);
    CHECK_INT(e.pulls, 0);
    CHECK_STR(e.media_type, "");

    /* Pulls are counted in memory: no write per request. */
    for (int i = 0; i < 100; i++)
        cache_note_access(c, digest);
    cache_note_tag_pull(c, "docker.io", "library/a", "1");
    cache_note_tag_pull(c, "docker.io", "library/a", "1");
    CHECK(!c->wq_running && !c->wq_head);
    /* Invalid names and digests are ignored. */
    cache_note_access(c, "sha256:zz");
    cache_note_tag_pull(c, "docker.io", "UPPER", "1");
    cache_note_tag_pull(c, "docker.io", "library/a", "bad tag");
    /* One flush: one op, whatever was counted. */
    cache_stats_flush(c);
    CHECK(c->wq_running);
    CHECK(c->wq_head == NULL);
    run();
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK(e.accessed_ms > old + 60000);
    CHECK_INT(e.created_ms, old);
    CHECK_INT(e.size, 42);
    CHECK_INT(e.pulls, 100);

    /* Counts add up across flushes; the kind and media type stay. */
    cache_note_access(c, digest);
    cache_note_tag_pull(c, "docker.io", "library/a", "1");
    cache_stats_flush(c);
    run();
    CHECK_INT(cache_lookup(c, digest, &e), 0);
    CHECK_INT(e.pulls, 101);
    CHECK_INT(e.kind, CACHE_BLOB);

    /* Nothing counted: nothing queued. */
    cache_stats_flush(c);
    CHECK(!c->wq_running && !c->wq_head);
    cache_close(c);
}

/* ---- A full index -------------------------------------------------------------------------- */

static void test_map_full(void)
{
    char dir[256], repo[200], tag[32];
    snprintf(dir, sizeof dir, "%s/full", root);
    cache_t *c = NULL;
    cache_opts_t o = {.loop = &loop, .dir = dir, .map_size = 64 * 1024};
    CHECK_INT(cache_open(&c, &o), 0);
    const char *digest = "sha256:6666666666666666666666666666666666666666666666666666666666666666";
    struct done d = {0};
    memset(repo, 'r', 180);
    repo[180] = '\0';
    int saved = log_threshold;
    log_set_level(-1); /* the MAP_FULL lines are expected */
    for (int i = 0; i < 2000; i++) {
        snprintf(tag, sizeof tag, "t%d", i);
        CHECK_INT(cache_tag_set(c, "docker.io", repo, tag, digest, on_done, &d), 0);
    }
    run();
    log_set_level(saved);
    CHECK_INT(d.calls, 2000);
    CHECK_INT(d.status, WE_INDEX);
    cache_close(c);
}

/* ---- Lookup speed ----------------------------------------------------------------------- */

static void test_lookup_speed(void)
{
    char dir[256], digest[REF_DIGEST_MAX + 1];
    snprintf(dir, sizeof dir, "%s/speed", root);
    cache_t *c = open_at(dir);
    static const char body[] = "{}";
    cachetest_digest_of(REF_ALG_SHA256, body, 2, digest);
    cache_manifest_put_t p = {.digest = digest, .media_type = MT_OCI, .bytes = body, .len = 2};
    struct done d = {0};
    CHECK_INT(cache_put_manifest(c, &p, on_done, &d), 0);
    run();
    CHECK_INT(d.status, 0);
    enum { N = 200000 };
    cache_entry_t e;
    int64_t t0 = time_mono_ms();
    for (int i = 0; i < N; i++)
        CHECK_INT(cache_lookup(c, digest, &e), 0);
    int64_t ms = time_mono_ms() - t0;
    double rate = N / ((ms ? ms : 1) / 1000.0);
    fprintf(stderr, "lookup: %d hits in %lld ms (%.0f/s)\n", N, (long long)ms, rate);
    /* The requirement is tens of thousands a second; even a sanitizer build clears that. */
    CHECK(rate > 50000);
    cache_close(c);
}

static const test_case_t cases[] = {
    TEST_CASE(test_layout_lock_sweep), TEST_CASE(test_manifest_roundtrip),
    TEST_CASE(test_manifest_refused),  TEST_CASE(test_repos),
    TEST_CASE(test_group_commit),      TEST_CASE(test_chained_writes),
    TEST_CASE(test_note_access),       TEST_CASE(test_map_full),
    TEST_CASE(test_lookup_speed),
};

int main(int argc, char **argv)
{
    CHECK_INT(uv_loop_init(&loop), 0);
    root = test_tmpdir("winch-cache-index");
    int rc = test_main(argc, argv, cases, ARRAY_SIZE(cases));
    CHECK_INT(uv_loop_close(&loop), 0);
    return rc;
}
