/* Platforms of index children in the cache index (cache_child_platforms): recorded with every
 * index put, seen before the commit, kept across a reopen, scoped to the upstream, several
 * indexes of one child, attestations skipped, removed with their index by rm and verify --fix
 * while another index's record of the same child stays, 2,000 indexes with nothing lost,
 * a cache made before the records existed (no database, then an index without records), and
 * records that do not decode. */
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cachetest.h"
#include "check.h"
#include "common/err.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "testutil.h"

#define MT_M "application/vnd.oci.image.manifest.v1+json"
#define MT_I "application/vnd.oci.image.index.v1+json"

static uv_loop_t loop;
static const char *root;

static void run(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
}

static void dir_of(const char *name, char dir[512])
{
    snprintf(dir, 512, "%s/%s", root, name);
}

static cache_t *open_dir(const char *dir)
{
    cache_t *c = NULL;
    cache_opts_t o = {.loop = &loop, .dir = dir};
    CHECK_INT(cache_open(&c, &o), 0);
    return c;
}

/* A made-up manifest digest: "sha256:" and 64 hex digits from n and salt. */
static void fake_digest(unsigned n, unsigned salt, char out[80])
{
    snprintf(out, 80, "sha256:%08x%08x%048x", n, salt, 0u);
}

typedef struct child {
    const char *digest;
    const char *platform; /* "os/arch[/variant]"; "attestation" for an attestation manifest */
} child_t;

/* An OCI index listing children; body into buf. */
static void index_body(const child_t *ch, size_t n, const char *salt, char *buf, size_t cap)
{
    int k = snprintf(buf, cap, "{\"schemaVersion\":2,\"mediaType\":\"" MT_I "\",\"manifests\":[");
    for (size_t i = 0; i < n; i++) {
        char os[32] = "", arch[32] = "", variant[32] = "", plat[160], extra[200] = "";
        if (strcmp(ch[i].platform, "attestation") == 0) {
            snprintf(plat, sizeof plat, "{\"os\":\"unknown\",\"architecture\":\"unknown\"}");
            snprintf(extra, sizeof extra,
                     ",\"annotations\":{\"vnd.docker.reference.type\":\"attestation-manifest\"}");
        } else {
            CHECK(sscanf(ch[i].platform, "%31[^/]/%31[^/]/%31s", os, arch, variant) >= 2);
            snprintf(plat, sizeof plat, "{\"os\":\"%s\",\"architecture\":\"%s\"%s%s%s}", os, arch,
                     variant[0] ? ",\"variant\":\"" : "", variant, variant[0] ? "\"" : "");
        }
        k += snprintf(buf + k, cap - (size_t)k,
                      "%s{\"mediaType\":\"" MT_M "\",\"digest\":\"%s\",\"size\":500,"
                      "\"platform\":%s%s}",
                      i ? "," : "", ch[i].digest, plat, extra);
    }
    snprintf(buf + k, cap - (size_t)k, "],\"annotations\":{\"salt\":\"%s\"}}", salt);
}

static void stored(void *arg, int status)
{
    CHECK_INT(status, 0);
    (*(int *)arg)++;
}

/* Queues the put of an index (does not run the loop); digest out. */
static void queue_index(cache_t *c, const char *upstream, const char *repo, const char *tag,
                        const child_t *ch, size_t n, const char *salt,
                        char digest[REF_DIGEST_MAX + 1], int *done)
{
    char body[8192], err[256];
    image_t *img = NULL;
    index_body(ch, n, salt, body, sizeof body);
    cachetest_digest_of(REF_ALG_SHA256, body, strlen(body), digest);
    CHECK_INT(image_parse(body, strlen(body), MT_I, &img, err, sizeof err), 0);
    cache_manifest_put_t p = {.digest = digest,
                              .media_type = MT_I,
                              .bytes = body,
                              .len = strlen(body),
                              .upstream = upstream,
                              .repo = repo,
                              .tag = tag,
                              .image = img};
    CHECK_INT(cache_put_manifest(c, &p, stored, done), 0);
    image_free(img);
}

static void put_index(cache_t *c, const char *upstream, const char *repo, const char *tag,
                      const child_t *ch, size_t n, const char *salt,
                      char digest[REF_DIGEST_MAX + 1])
{
    int done = 0;
    queue_index(c, upstream, repo, tag, ch, n, salt, digest, &done);
    run();
    CHECK_INT(done, 1);
}

/* The one platform recorded for digest under upstream, formatted; "" when none. */
static const char *platform_of(cache_t *c, const char *upstream, const char *digest, char *buf)
{
    platform_t ps[CACHE_CHILD_PLATFORMS_MAX];
    size_t n = 99;
    int rc = cache_child_platforms(c, upstream, digest, ps, &n);
    if (rc == WE_NOTFOUND) {
        CHECK_INT((int)n, 0);
        buf[0] = '\0';
        return buf;
    }
    CHECK_INT(rc, 0);
    CHECK_INT((int)n, 1);
    return platform_format(&ps[0], buf, PLATFORM_STR_MAX);
}

static char d_amd[80], d_arm[80], d_v7[80], d_att[80], d_other[80];

static const child_t *multi(size_t *n)
{
    static child_t ch[4];
    fake_digest(1, 1, d_amd);
    fake_digest(2, 1, d_arm);
    fake_digest(3, 1, d_v7);
    fake_digest(4, 1, d_att);
    fake_digest(5, 1, d_other);
    ch[0] = (child_t){d_amd, "linux/amd64"};
    ch[1] = (child_t){d_arm, "linux/arm64/v8"};
    ch[2] = (child_t){d_v7, "linux/arm"};
    ch[3] = (child_t){d_att, "attestation"};
    *n = 4;
    return ch;
}

static void test_recorded_and_reopened(void)
{
    char dir[512], idx[REF_DIGEST_MAX + 1], p[PLATFORM_STR_MAX];
    dir_of("basic", dir);
    cache_t *c = open_dir(dir);
    size_t n;
    const child_t *ch = multi(&n);
    int done = 0;
    queue_index(c, "docker.io", "lab/multi", "v1", ch, n, "a", idx, &done);
    /* Accepted, not committed: already seen (a client asks for a child right after the index). */
    CHECK_STR(platform_of(c, "docker.io", d_arm, p), "linux/arm64");
    run();
    CHECK_INT(done, 1);
    CHECK_STR(platform_of(c, "docker.io", d_amd, p), "linux/amd64");
    CHECK_STR(platform_of(c, "docker.io", d_arm, p), "linux/arm64"); /* normalised: v8 dropped */
    CHECK_STR(platform_of(c, "docker.io", d_v7, p), "linux/arm/v7"); /* arm means arm/v7 */
    CHECK_STR(platform_of(c, "docker.io", d_att, p), "");            /* attestations: none */
    CHECK_STR(platform_of(c, "docker.io", d_other, p), "");
    CHECK_STR(platform_of(c, "docker.io", idx, p), ""); /* the index itself is no child */
    /* Another upstream's request learns nothing from this upstream's index. */
    CHECK_STR(platform_of(c, "ghcr.io", d_arm, p), "");
    /* Bad input. */
    platform_t ps[CACHE_CHILD_PLATFORMS_MAX];
    size_t k = 7;
    CHECK_INT(cache_child_platforms(c, "docker.io", "sha256:nothex", ps, &k), WE_NOTFOUND);
    CHECK_INT((int)k, 0);
    CHECK_INT(cache_child_platforms(c, "", d_arm, ps, &k), WE_NOTFOUND);
    CHECK_INT(cache_child_platforms(c, NULL, d_arm, ps, &k), WE_NOTFOUND);
    char prefix[40];
    snprintf(prefix, sizeof prefix, "%.30s", d_arm);
    CHECK_INT(cache_child_platforms(c, "docker.io", prefix, ps, &k), WE_NOTFOUND);
    cache_close(c);
    run();

    /* A restart: the records are in the index. */
    c = open_dir(dir);
    CHECK_STR(platform_of(c, "docker.io", d_arm, p), "linux/arm64");
    CHECK_STR(platform_of(c, "docker.io", d_v7, p), "linux/arm/v7");
    cache_close(c);
    run();
}

/* Two tags sharing an index; a second index (another salt) listing the same child with another
 * platform: both claims are reported. */
static void test_shared_and_disagreeing(void)
{
    char dir[512], i1[REF_DIGEST_MAX + 1], i2[REF_DIGEST_MAX + 1], p[PLATFORM_STR_MAX];
    dir_of("shared", dir);
    cache_t *c = open_dir(dir);
    size_t n;
    const child_t *ch = multi(&n);
    put_index(c, "docker.io", "lab/multi", "v1", ch, n, "a", i1);
    put_index(c, "docker.io", "lab/multi", "latest", ch, n, "a", i2);
    CHECK_STR(i1, i2);
    CHECK_STR(platform_of(c, "docker.io", d_arm, p), "linux/arm64");
    child_t liar[1] = {{d_arm, "linux/s390x"}};
    put_index(c, "docker.io", "other/repo", "v1", liar, 1, "b", i2);
    platform_t ps[CACHE_CHILD_PLATFORMS_MAX];
    size_t k = 0;
    CHECK_INT(cache_child_platforms(c, "docker.io", d_arm, ps, &k), 0);
    CHECK_INT((int)k, 2);
    char a[PLATFORM_STR_MAX], b[PLATFORM_STR_MAX];
    platform_format(&ps[0], a, sizeof a);
    platform_format(&ps[1], b, sizeof b);
    CHECK((strcmp(a, "linux/arm64") == 0 && strcmp(b, "linux/s390x") == 0) ||
          (strcmp(b, "linux/arm64") == 0 && strcmp(a, "linux/s390x") == 0));
    cache_close(c);
    run();
}

struct gc_done {
    int calls, status;
};

static void on_gc(void *arg, int status, const cache_gc_result_t *r)
{
    struct gc_done *g = arg;
    (void)r;
    g->calls++;
    g->status = status;
}

static void on_verified(void *arg, int status, const cache_verify_result_t *r)
{
    struct gc_done *g = arg;
    (void)r;
    g->calls++;
    g->status = status;
}

/* rm of a tag removes its index and the index's records; another index's record of the same
 * child stays. verify --fix of a corrupt index drops its records too. */
static void test_removed_with_index(void)
{
    char dir[512], i1[REF_DIGEST_MAX + 1], i2[REF_DIGEST_MAX + 1], p[PLATFORM_STR_MAX];
    dir_of("removal", dir);
    cache_t *c = open_dir(dir);
    size_t n;
    const child_t *ch = multi(&n);
    put_index(c, "docker.io", "lab/multi", "v1", ch, n, "a", i1);
    child_t two[2] = {{d_amd, "linux/amd64"}, {d_other, "linux/ppc64le"}};
    put_index(c, "docker.io", "lab/two", "v1", two, 2, "c", i2);

    cache_gc_target_t t = {.upstream = "docker.io", .repo = "lab/multi", .tag = "v1"};
    cache_gc_opts_t o = {.rm = &t, .nrm = 1, .target_bytes = UINT64_MAX};
    struct gc_done g = {0};
    CHECK_INT(cache_gc(c, &o, on_gc, &g), 0);
    run();
    CHECK_INT(g.calls, 1);
    CHECK_INT(g.status, 0);
    cache_entry_t e;
    CHECK_INT(cache_lookup(c, i1, &e), WE_NOTFOUND);
    CHECK_STR(platform_of(c, "docker.io", d_arm, p), "");
    CHECK_STR(platform_of(c, "docker.io", d_v7, p), "");
    CHECK_STR(platform_of(c, "docker.io", d_amd, p), "linux/amd64"); /* lab/two's claim */
    CHECK_STR(platform_of(c, "docker.io", d_other, p), "linux/ppc64le");

    /* The other index's file goes bad: verify --fix drops its entry and its records. */
    char path[1024];
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", dir, i2 + 7, i2 + 7);
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK_INT((int)pwrite(fd, "X", 1, 0), 1);
    close(fd);
    cache_verify_opts_t vo = {.rehash = true, .fix = true};
    g = (struct gc_done){0};
    CHECK_INT(cache_verify(c, &vo, on_verified, &g), 0);
    run();
    CHECK_INT(g.calls, 1);
    CHECK_INT(g.status, 0);
    CHECK_INT(cache_lookup(c, i2, &e), WE_NOTFOUND);
    CHECK_STR(platform_of(c, "docker.io", d_amd, p), "");
    CHECK_STR(platform_of(c, "docker.io", d_other, p), "");
    cache_close(c);
    run();
}

/* 2,000 indexes of two children each, put at once (group commits), then every child looked up,
 * also after a reopen: nothing is evicted by another digest. */
static void test_many_indexes(void)
{
    enum { N = 2000 };
    char dir[512], idx[REF_DIGEST_MAX + 1], p[PLATFORM_STR_MAX];
    dir_of("many", dir);
    cache_t *c = open_dir(dir);
    static char digests[N][2][80];
    int done = 0;
    int64_t t0 = time_mono_ms();
    for (unsigned i = 0; i < N; i++) {
        char salt[16];
        fake_digest(i, 100, digests[i][0]);
        fake_digest(i, 200, digests[i][1]);
        child_t ch[2] = {{digests[i][0], "linux/amd64"}, {digests[i][1], "linux/arm64"}};
        snprintf(salt, sizeof salt, "%u", i);
        queue_index(c, "docker.io", "lab/many", NULL, ch, 2, salt, idx, &done);
    }
    run();
    CHECK_INT(done, N);
    int64_t t1 = time_mono_ms();
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned i = 0; i < N; i++) {
            CHECK_STR(platform_of(c, "docker.io", digests[i][0], p), "linux/amd64");
            CHECK_STR(platform_of(c, "docker.io", digests[i][1], p), "linux/arm64");
        }
        if (pass == 0) {
            cache_close(c);
            run();
            c = open_dir(dir);
        }
    }
    int64_t t2 = time_mono_ms();
    fprintf(stderr, "childplat: %d index puts in %lld ms; %d lookups in %lld ms\n", N,
            (long long)(t1 - t0), 4 * N, (long long)(t2 - t1));
    cache_close(c);
    run();
}

/* A cache made before the records existed: no childplat database at all. It opens, knows no
 * child's platform (the index stays served; restrict then passes, as before), removes such an
 * index cleanly, and records the next index put. */
static void test_cache_without_records(void)
{
    char dir[512], path[600], idx[REF_DIGEST_MAX + 1], p[PLATFORM_STR_MAX];
    dir_of("old", dir);
    cache_t *c = open_dir(dir);
    size_t n;
    const child_t *ch = multi(&n);
    put_index(c, "docker.io", "lab/multi", "v1", ch, n, "a", idx);
    cache_close(c);
    run();

    /* Make it an old cache: drop the database the way an older winch never had it. */
    MDB_env *env;
    MDB_txn *t;
    MDB_dbi dbi;
    snprintf(path, sizeof path, "%s/index", dir);
    CHECK_INT(mdb_env_create(&env), 0);
    CHECK_INT(mdb_env_set_maxdbs(env, 16), 0);
    CHECK_INT(mdb_env_set_mapsize(env, 4ULL << 30), 0);
    CHECK_INT(mdb_env_open(env, path, MDB_NOTLS, 0644), 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &t), 0);
    CHECK_INT(mdb_dbi_open(t, "childplat", 0, &dbi), 0);
    CHECK_INT(mdb_drop(t, dbi, 1), 0);
    CHECK_INT(mdb_txn_commit(t), 0);
    CHECK_INT(mdb_txn_begin(env, NULL, MDB_RDONLY, &t), 0);
    CHECK_INT(mdb_dbi_open(t, "childplat", 0, &dbi), MDB_NOTFOUND);
    mdb_txn_abort(t);
    mdb_env_close(env);

    c = open_dir(dir);
    cache_entry_t e;
    CHECK_INT(cache_lookup(c, idx, &e), 0);
    CHECK_STR(platform_of(c, "docker.io", d_arm, p), "");
    /* The index without records is removed cleanly. */
    cache_gc_target_t tg = {.upstream = "docker.io", .repo = "lab/multi", .tag = "v1"};
    cache_gc_opts_t o = {.rm = &tg, .nrm = 1, .target_bytes = UINT64_MAX};
    struct gc_done g = {0};
    CHECK_INT(cache_gc(c, &o, on_gc, &g), 0);
    run();
    CHECK_INT(g.calls, 1);
    CHECK_INT(g.status, 0);
    CHECK_INT(cache_lookup(c, idx, &e), WE_NOTFOUND);
    /* Put again: recorded now. */
    put_index(c, "docker.io", "lab/multi", "v1", ch, n, "a", idx);
    CHECK_STR(platform_of(c, "docker.io", d_arm, p), "linux/arm64");
    cache_close(c);
    run();
}

/* Records that do not decode (cut short, another version, a part too long) are skipped with a
 * warning; the good record of the same digest still counts. */
static void test_bad_records(void)
{
    char dir[512], path[600], idx[REF_DIGEST_MAX + 1], p[PLATFORM_STR_MAX];
    dir_of("bad", dir);
    cache_t *c = open_dir(dir);
    size_t n;
    const child_t *ch = multi(&n);
    put_index(c, "docker.io", "lab/multi", "v1", ch, n, "a", idx);
    cache_close(c);
    run();

    static const struct {
        const char *index; /* the key's index part */
        const char *val;
        size_t len;
    } bad[] = {
        {"sha256:b1", "\x01\x05lin", 5},                     /* cut inside os */
        {"sha256:b2", "\x02\x05linux\x05s390x\x00", 14},     /* version 2 */
        {"sha256:b3", "\x01\x05linux\x05s390x", 13},         /* no variant length */
        {"sha256:b4", "\x01\x05linux\xff", 8},               /* arch length past the end */
        {"sha256:b5", "\x01\x00\x05s390x\x00", 9},           /* empty os */
        {"sha256:b6", "\x01\x05linux\x05s390x\x00junk", 18}, /* trailing bytes */
    };
    MDB_env *env;
    MDB_txn *t;
    MDB_dbi dbi;
    snprintf(path, sizeof path, "%s/index", dir);
    CHECK_INT(mdb_env_create(&env), 0);
    CHECK_INT(mdb_env_set_maxdbs(env, 16), 0);
    CHECK_INT(mdb_env_set_mapsize(env, 4ULL << 30), 0);
    CHECK_INT(mdb_env_open(env, path, MDB_NOTLS, 0644), 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &t), 0);
    CHECK_INT(mdb_dbi_open(t, "childplat", 0, &dbi), 0);
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char key[300];
        int kl = snprintf(key, sizeof key, "%s%c%s%cdocker.io", d_other, 0, bad[i].index, 0);
        MDB_val k = {(size_t)kl, key}, v = {bad[i].len, (void *)bad[i].val};
        CHECK_INT(mdb_put(t, dbi, &k, &v, 0), 0);
        /* The same bad records beside d_arm's good one. */
        kl = snprintf(key, sizeof key, "%s%c%s%cdocker.io", d_arm, 0, bad[i].index, 0);
        k = (MDB_val){(size_t)kl, key};
        CHECK_INT(mdb_put(t, dbi, &k, &v, 0), 0);
    }
    CHECK_INT(mdb_txn_commit(t), 0);
    mdb_env_close(env);

    c = open_dir(dir);
    CHECK_STR(platform_of(c, "docker.io", d_other, p), "");
    CHECK_STR(platform_of(c, "docker.io", d_arm, p), "linux/arm64");
    cache_close(c);
    run();
}

static const test_case_t cases[] = {
    TEST_CASE(test_recorded_and_reopened), TEST_CASE(test_shared_and_disagreeing),
    TEST_CASE(test_removed_with_index),    TEST_CASE(test_many_indexes),
    TEST_CASE(test_cache_without_records), TEST_CASE(test_bad_records),
};

int main(int argc, char **argv)
{
    CHECK_INT(uv_loop_init(&loop), 0);
    root = test_tmpdir("winch-cache-childplat");
    int rc = test_main(argc, argv, cases, ARRAY_SIZE(cases));
    CHECK_INT(uv_loop_close(&loop), 0);
    return rc;
}
