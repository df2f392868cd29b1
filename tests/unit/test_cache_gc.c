/* Retention's mark and sweep on a real cache: shared base layers, dangling manifests and
 * unreferenced blobs, least-recently-used order under a size bound, protect globs, pins, kept
 * digests, explicit rm, dry runs that match the real run, slices, content used after the scan,
 * readers holding a removed file, and a fill in progress. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/gc.h"
#include "cachetest.h"
#include "check.h"
#include "common/err.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "testutil.h"

#define MT_M "application/vnd.oci.image.manifest.v1+json"
#define MT_I "application/vnd.oci.image.index.v1+json"
#define MT_L "application/vnd.oci.image.layer.v1.tar+gzip"
#define MT_C "application/vnd.oci.image.config.v1+json"

static uv_loop_t loop;
static const char *root;

static void run(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
}

static cache_t *open_fresh(const char *name)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    cache_t *c = NULL;
    cache_opts_t o = {.loop = &loop, .dir = dir};
    CHECK_INT(cache_open(&c, &o), 0);
    return c;
}

typedef struct blob {
    char digest[REF_DIGEST_MAX + 1];
    size_t size;
} blob_t;

/* A blob of size pseudo-random bytes, filled and indexed. */
static blob_t put_blob(cache_t *c, size_t size, uint32_t seed)
{
    blob_t b = {.size = size};
    unsigned char *data = cachetest_random_bytes(size, seed);
    cachetest_digest_of(REF_ALG_SHA256, data, size, b.digest);
    fill_t *f;
    bool created;
    CHECK_INT(fill_get(c, b.digest, &f, &created), 0);
    CHECK(created);
    CHECK_INT(fill_set_size(f, size, MT_L), 0);
    cachetest_producer_t p = {.f = f, .data = data, .len = size, .chunk = 4096};
    cachetest_producer_next(&p);
    run();
    CHECK_INT(p.status, 0);
    CHECK_INT(fill_state(f), FILL_DONE);
    fill_unref(f);
    run();
    free(data);
    return b;
}

static void stored(void *arg, int status)
{
    CHECK_INT(status, 0);
    (*(int *)arg)++;
}

/* Stores a manifest (body built by the caller) under upstream/repo[:tag]; returns its digest. */
static void put_manifest(cache_t *c, const char *mt, const char *body, const char *repo,
                         const char *tag, char digest[REF_DIGEST_MAX + 1])
{
    image_t *img = NULL;
    char err[256];
    cachetest_digest_of(REF_ALG_SHA256, body, strlen(body), digest);
    CHECK_INT(image_parse(body, strlen(body), mt, &img, err, sizeof err), 0);
    cache_manifest_put_t p = {.digest = digest,
                              .media_type = mt,
                              .bytes = body,
                              .len = strlen(body),
                              .upstream = "docker.io",
                              .repo = repo,
                              .tag = tag,
                              .image = img};
    int done = 0;
    CHECK_INT(cache_put_manifest(c, &p, stored, &done), 0);
    run();
    CHECK_INT(done, 1);
    image_free(img);
}

/* An image manifest of config + layers; returns its digest. */
static void image(cache_t *c, const char *repo, const char *tag, const blob_t *cfg,
                  const blob_t *layers, size_t n, char digest[REF_DIGEST_MAX + 1])
{
    char body[4096];
    int k = snprintf(body, sizeof body,
                     "{\"schemaVersion\":2,\"mediaType\":\"" MT_M "\",\"config\":{\"mediaType\":"
                     "\"" MT_C "\",\"digest\":\"%s\",\"size\":%zu},\"layers\":[",
                     cfg->digest, cfg->size);
    for (size_t i = 0; i < n; i++)
        k += snprintf(body + k, sizeof body - (size_t)k,
                      "%s{\"mediaType\":\"" MT_L "\",\"digest\":\"%s\",\"size\":%zu}", i ? "," : "",
                      layers[i].digest, layers[i].size);
    snprintf(body + k, sizeof body - (size_t)k, "]}");
    put_manifest(c, MT_M, body, repo, tag, digest);
}

static bool present(cache_t *c, const char *digest)
{
    cache_entry_t e;
    int fd;
    bool indexed = cache_lookup(c, digest, &e) == 0;
    bool file = cache_open_content(c, digest, &fd) == 0;
    if (file)
        close(fd);
    /* Never an index entry without its file. */
    CHECK(!indexed || file);
    return indexed;
}

static bool tagged(cache_t *c, const char *repo, const char *tag)
{
    char d[REF_DIGEST_MAX + 1];
    int64_t checked;
    return cache_tag_get(c, "docker.io", repo, tag, d, &checked) == 0;
}

struct gc_out {
    int calls, status;
    cache_gc_result_t r;
    char items[64][REF_DIGEST_MAX + 80];
    int nitems;
};

static void on_item(void *arg, const cache_gc_item_t *it)
{
    struct gc_out *o = arg;
    if (o->nitems < 64) {
        if (it->what == CACHE_GC_TAG)
            snprintf(o->items[o->nitems++], sizeof o->items[0], "tag %s/%s:%s %s", it->upstream,
                     it->repo, it->tag, it->why);
        else
            snprintf(o->items[o->nitems++], sizeof o->items[0], "content %s %s", it->digest,
                     it->why);
    }
}

static void on_gc(void *arg, int status, const cache_gc_result_t *r)
{
    struct gc_out *o = arg;
    o->calls++;
    o->status = status;
    o->r = *r;
}

static struct gc_out gc(cache_t *c, cache_gc_opts_t o)
{
    struct gc_out out = {0};
    o.on_item = on_item;
    o.arg = &out;
    CHECK_INT(cache_gc(c, &o, on_gc, &out), 0);
    CHECK(cache_gc_running(c));
    CHECK_INT(cache_gc(c, &o, on_gc, &out), -EBUSY);
    run();
    CHECK_INT(out.calls, 1);
    CHECK_INT(out.status, 0);
    CHECK(!cache_gc_running(c));
    return out;
}

static bool has_item(const struct gc_out *o, const char *prefix)
{
    for (int i = 0; i < o->nitems; i++)
        if (strncmp(o->items[i], prefix, strlen(prefix)) == 0)
            return true;
    return false;
}

/* Two images sharing a base layer; a dangling manifest; an unreferenced blob. */
struct world {
    blob_t base, a_cfg, a_top, b_cfg, b_top, lone;
    char a[REF_DIGEST_MAX + 1], b[REF_DIGEST_MAX + 1], old[REF_DIGEST_MAX + 1];
};

static void build(cache_t *c, struct world *w)
{
    w->base = put_blob(c, 10000, 1);
    w->a_cfg = put_blob(c, 100, 2);
    w->a_top = put_blob(c, 3000, 3);
    w->b_cfg = put_blob(c, 101, 4);
    w->b_top = put_blob(c, 5000, 5);
    w->lone = put_blob(c, 700, 6);
    blob_t al[2] = {w->base, w->a_top}, bl[2] = {w->base, w->b_top};
    /* "old" was app:1 before the tag moved to a: now dangling. */
    image(c, "acme/app", "1", &w->a_cfg, &w->base, 1, w->old);
    image(c, "acme/app", "1", &w->a_cfg, al, 2, w->a);
    image(c, "acme/web", "2", &w->b_cfg, bl, 2, w->b);
}

static void test_usage(void)
{
    cache_t *c = open_fresh("usage");
    struct world w;
    build(c, &w);
    cache_usage_t u;
    CHECK_INT(cache_usage(c, &u), 0);
    CHECK_INT(u.blobs, 6);
    CHECK_INT(u.manifests, 3);
    CHECK_INT(u.tags, 2);
    CHECK_INT(u.dangling, 1);
    cache_entry_t ea, eb, eo;
    CHECK_INT(cache_lookup(c, w.a, &ea), 0);
    CHECK_INT(cache_lookup(c, w.b, &eb), 0);
    CHECK_INT(cache_lookup(c, w.old, &eo), 0);
    uint64_t blobs = 10000 + 100 + 3000 + 101 + 5000 + 700;
    CHECK_INT(u.total, blobs + ea.size + eb.size + eo.size);
    /* The dangling manifest and the lone blob are unreferenced; the base layer is shared. */
    CHECK_INT(u.unreferenced, 700 + eo.size);
    CHECK_INT(u.referenced, u.total - u.unreferenced);
    CHECK_INT(u.shared_saved, 10000);
    cache_close(c);
}

static void test_prune_dry_run_then_prune(void)
{
    cache_t *c = open_fresh("prune");
    struct world w;
    build(c, &w);
    struct gc_out dry =
        gc(c, (cache_gc_opts_t){.unreferenced = true, .target_bytes = UINT64_MAX, .dry_run = true});
    CHECK_INT(dry.nitems, 2);
    CHECK(present(c, w.old) && present(c, w.lone.digest));
    struct gc_out real = gc(c, (cache_gc_opts_t){.unreferenced = true, .target_bytes = UINT64_MAX});
    CHECK_INT(real.nitems, dry.nitems);
    for (int i = 0; i < dry.nitems; i++)
        CHECK_STR(real.items[i], dry.items[i]);
    CHECK_INT(real.r.freed, dry.r.freed);
    CHECK(!present(c, w.old) && !present(c, w.lone.digest));
    /* Everything a tag reaches stays; the shared base stays. */
    CHECK(present(c, w.a) && present(c, w.b) && present(c, w.base.digest) &&
          present(c, w.a_top.digest) && present(c, w.b_top.digest) && present(c, w.a_cfg.digest));
    /* A second prune finds nothing. */
    struct gc_out again =
        gc(c, (cache_gc_opts_t){.unreferenced = true, .target_bytes = UINT64_MAX});
    CHECK_INT(again.nitems, 0);
    cache_close(c);
}

static void test_rm_keeps_shared(void)
{
    cache_t *c = open_fresh("rm");
    struct world w;
    build(c, &w);
    cache_gc_target_t t = {.upstream = "docker.io", .repo = "acme/app", .tag = "1"};
    struct gc_out o = gc(c, (cache_gc_opts_t){.rm = &t, .nrm = 1, .target_bytes = UINT64_MAX});
    CHECK(has_item(&o, "tag docker.io/acme/app:1 removed"));
    CHECK(!tagged(c, "acme/app", "1"));
    CHECK(!present(c, w.a) && !present(c, w.a_top.digest));
    /* The base layer is still web's, the config still the dangling manifest's; the dangling
     * manifest and the lone blob are not rm's business. */
    CHECK(present(c, w.a_cfg.digest));
    CHECK(present(c, w.base.digest) && present(c, w.b));
    CHECK(present(c, w.old) && present(c, w.lone.digest));
    /* rm by digest removes every tag naming it. */
    cache_gc_target_t t2 = {.upstream = "docker.io", .repo = "acme/web", .digest = w.b};
    gc(c, (cache_gc_opts_t){.rm = &t2, .nrm = 1, .target_bytes = UINT64_MAX});
    CHECK(!tagged(c, "acme/web", "2") && !present(c, w.b) && !present(c, w.b_top.digest));
    /* The base layer is only the dangling manifest's now. */
    CHECK(present(c, w.base.digest));
    cache_close(c);
}

static void test_lru_size_bound(void)
{
    cache_t *c = open_fresh("lru");
    struct world w;
    build(c, &w);
    /* web pulled most recently. */
    test_sleep_ms(5);
    cache_note_tag_pull(c, "docker.io", "acme/web", "2");
    cache_stats_flush(c);
    run();
    cache_usage_t u;
    CHECK_INT(cache_usage(c, &u), 0);
    cache_entry_t eb;
    CHECK_INT(cache_lookup(c, w.b, &eb), 0);
    uint64_t web = 10000 + 101 + 5000 + eb.size;
    struct gc_out o = gc(c, (cache_gc_opts_t){.target_bytes = web, .slice = 1});
    CHECK(o.r.total_before == u.total);
    CHECK(o.r.slices >= 2);
    CHECK_INT(cache_usage(c, &u), 0);
    CHECK(u.total <= web);
    /* The most recently used image is whole. */
    CHECK(tagged(c, "acme/web", "2") && present(c, w.b) && present(c, w.base.digest) &&
          present(c, w.b_top.digest) && present(c, w.b_cfg.digest));
    CHECK(!tagged(c, "acme/app", "1") && !present(c, w.a_top.digest));
    cache_close(c);
}

static void test_protect_and_keep(void)
{
    cache_t *c = open_fresh("protect");
    struct world w;
    build(c, &w);
    const char *protect[] = {"docker.io/acme/app"};
    const char *keep[] = {w.lone.digest};
    gc(c, (cache_gc_opts_t){.target_bytes = 0,
                            .unreferenced = true,
                            .protect = protect,
                            .nprotect = 1,
                            .keep = keep,
                            .nkeep = 1});
    /* app is protected: its tag, image, and what the repository is known to hold (the old
     * manifest too). The kept digest stays. web goes, except the base layer app uses. */
    CHECK(tagged(c, "acme/app", "1") && present(c, w.a) && present(c, w.a_top.digest));
    CHECK(present(c, w.old));
    CHECK(present(c, w.lone.digest));
    CHECK(present(c, w.base.digest));
    CHECK(!tagged(c, "acme/web", "2") && !present(c, w.b) && !present(c, w.b_top.digest));
    cache_close(c);
}

static void put_pin(cache_t *c, const char *repo, const char *tag, const char *digest)
{
    MDB_txn *t;
    char key[256];
    unsigned char rec[10 + REF_DIGEST_MAX];
    size_t kl = (size_t)snprintf(key, sizeof key, "docker.io%c%s%c%s", 0, repo, 0, tag);
    memset(rec, 0, 10);
    rec[0] = 1;
    memcpy(rec + 10, digest, strlen(digest));
    CHECK_INT(mdb_txn_begin(c->env, NULL, 0, &t), 0);
    MDB_val k = {kl, key}, v = {10 + strlen(digest), rec};
    CHECK_INT(mdb_put(t, c->dbi_pins, &k, &v, 0), 0);
    CHECK_INT(mdb_txn_commit(t), 0);
}

static int count_pin(void *arg, const char *up, const char *repo, const char *tag,
                     const char *digest)
{
    (void)up;
    (void)repo;
    (void)tag;
    (void)digest;
    (*(int *)arg)++;
    return 0;
}

static void test_pins(void)
{
    cache_t *c = open_fresh("pins");
    struct world w;
    build(c, &w);
    put_pin(c, "acme/web", "2", w.b);
    put_pin(c, "acme/other", "x", w.old);
    int n = 0;
    CHECK_INT(cache_pin_each(c, count_pin, &n), 0);
    CHECK_INT(n, 2);
    gc(c, (cache_gc_opts_t){.target_bytes = 0, .unreferenced = true});
    CHECK(tagged(c, "acme/web", "2") && present(c, w.b) && present(c, w.b_top.digest) &&
          present(c, w.base.digest));
    CHECK(present(c, w.old)); /* pinned by digest */
    CHECK(!tagged(c, "acme/app", "1") && !present(c, w.a_top.digest));
    CHECK(!present(c, w.lone.digest));
    cache_close(c);
}

static void test_unused_and_used_since(void)
{
    cache_t *c = open_fresh("unused");
    struct world w;
    build(c, &w);
    /* Nothing was used before an hour ago: nothing goes. */
    struct gc_out o = gc(c, (cache_gc_opts_t){.unused_before_ms = time_wall_ms() - 3600000,
                                              .target_bytes = UINT64_MAX});
    CHECK_INT(o.nitems, 0);
    /* Everything older than now goes... */
    test_sleep_ms(5);
    o = gc(c, (cache_gc_opts_t){.unused_before_ms = time_wall_ms(), .target_bytes = UINT64_MAX});
    CHECK(o.r.tags >= 2 && o.r.freed == o.r.total_before);
    CHECK(!tagged(c, "acme/app", "1") && !tagged(c, "acme/web", "2"));
    cache_usage_t u;
    CHECK_INT(cache_usage(c, &u), 0);
    CHECK_INT(u.total, 0);
    cache_close(c);
}

/* A reader holding a removed blob reads it whole; a fill of a digest in progress keeps its
 * file path free of trash moves. */
static void test_reader_keeps_file(void)
{
    cache_t *c = open_fresh("reader");
    blob_t b = put_blob(c, 200000, 9);
    int fd;
    CHECK_INT(cache_open_content(c, b.digest, &fd), 0);
    gc(c, (cache_gc_opts_t){.unreferenced = true, .target_bytes = UINT64_MAX});
    CHECK(!present(c, b.digest));
    unsigned char *got = cachetest_read_all(fd, b.size);
    char d[REF_DIGEST_MAX + 1];
    cachetest_digest_of(REF_ALG_SHA256, got, b.size, d);
    CHECK_STR(d, b.digest);
    free(got);
    close(fd);
    /* trash/ is emptied once the slice's unlink ran. */
    char path[600];
    snprintf(path, sizeof path, "%s/trash", cache_dir(c));
    CHECK_INT(cachetest_count_entries(path), 0);
    cache_close(c);
}

static void test_model_counts(void)
{
    cache_t *c = open_fresh("model");
    struct world w;
    build(c, &w);
    gc_model_t m = {0};
    MDB_txn *t;
    CHECK_INT(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t), 0);
    CHECK_INT(gc_model_load(&m, c, t), 0);
    mdb_txn_abort(t);
    CHECK_INT(m.nn, 9);
    uint32_t base = gc_find(&m, w.base.digest, strlen(w.base.digest));
    CHECK(base != GC_NONE);
    /* app:1, web:2 and the dangling manifest reach the base layer. */
    CHECK_INT(m.nodes[base].rc, 3);
    CHECK_INT(m.nodes[base].tag_rc, 2);
    uint32_t lone = gc_find(&m, w.lone.digest, strlen(w.lone.digest));
    CHECK_INT(m.nodes[lone].rc, 1);
    CHECK_INT(m.nodes[lone].tag_rc, 0);
    CHECK(gc_find(&m, "sha256:00", 9) == GC_NONE);
    gc_model_free(&m);
    cache_close(c);
}

static const test_case_t cases[] = {
    TEST_CASE(test_model_counts),
    TEST_CASE(test_usage),
    TEST_CASE(test_prune_dry_run_then_prune),
    TEST_CASE(test_rm_keeps_shared),
    TEST_CASE(test_lru_size_bound),
    TEST_CASE(test_protect_and_keep),
    TEST_CASE(test_pins),
    TEST_CASE(test_unused_and_used_since),
    TEST_CASE(test_reader_keeps_file),
};

int main(int argc, char **argv)
{
    uv_loop_init(&loop);
    root = test_tmpdir("winch-gc");
    int rc = test_main(argc, argv, cases, ARRAY_SIZE(cases));
    uv_loop_close(&loop);
    return rc;
}
