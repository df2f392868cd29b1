/* mkindex: fills a cache directory's index with synthetic entries, for the start-up benchmark
 * (bench/bench.py, test 8). No content files are written: start-up must not look at blobs/, so
 * the index alone is what an old, large cache costs at start.
 *
 *   mkindex DIR [N]   N content records (default 1,000,000): 90% blobs, 10% manifests; every
 *                     manifest also gets a tag, spread over N/100 repositories.
 *
 *   mkindex DIR [N] --graph [--files]
 *                     the same number of content records as images (eviction and ls/df, test
 *                     9): a pool of BASE_POOL shared base layers, then images of a config, six
 *                     layers of their own and two base layers, each image manifest with its
 *                     tag, its references (refs), the repository's owners records for all of
 *                     them and a tagstats record (pulls, last pulled), ten tags per
 *                     repository. --files also creates every content file, sparse, of the
 *                     indexed size, so the check after start finds them and eviction renames
 *                     and unlinks real files.
 *
 * It goes through the cache's own write queue (cache/internal.h), so the records have exactly
 * the format winch writes, batched and committed the way winch commits them. bench/run builds
 * it against the Release build's static libraries. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/timeutil.h"

/* Ops queued at once: bounds the memory the queue holds while LMDB commits. */
#define CHUNK 20000
/* Shared base layers, and per image: config + own layers + base layers + manifest. */
#define BASE_POOL 1000
#define OWN_LAYERS 6
#define BASE_LAYERS 2
#define PER_IMAGE (1 + OWN_LAYERS + 1)
/* The tagstats record, as cache/stats.c writes it: {u8 version, i64 pulled_ms, u32 pulls}. */
#define TAGSTAT_VERSION 1
#define TAGSTAT_REC 13

static bool make_files;

static uint64_t done_ops;
static int first_err;

static void op_done(void *arg, int status)
{
    (void)arg;
    done_ops++;
    if (status && !first_err)
        first_err = status;
}

/* splitmix64: a fast, seeded source of well-spread digests (keys land all over the B-tree, as
 * real digests do). */
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void make_digest(uint64_t *seed, char out[REF_DIGEST_MAX + 1])
{
    int n = snprintf(out, REF_DIGEST_MAX + 1, "sha256:");
    for (int i = 0; i < 4; i++)
        n += snprintf(out + n, (size_t)(REF_DIGEST_MAX + 1 - n), "%016" PRIx64, mix(seed));
}

static int queue_one(cache_t *c, uint64_t i, uint64_t n_repos, uint64_t *seed)
{
    char repo[64], tag[32];
    bool manifest = i % 10 == 9;
    wop_t *op;
    int rc;

    if (manifest) {
        snprintf(repo, sizeof repo, "bench/repo%" PRIu64, (i / 10) % n_repos);
        snprintf(tag, sizeof tag, "v%" PRIu64, i / 10);
        rc = wop_new(c, "docker.io", repo, tag, &op);
    } else {
        rc = wop_new(c, NULL, NULL, NULL, &op);
    }
    if (rc)
        return rc;
    make_digest(seed, op->digest);
    op->what = WOP_CONTENT | (manifest ? WOP_TAG | WOP_REPO : 0);
    op->kind = manifest ? CACHE_MANIFEST : CACHE_BLOB;
    op->size = manifest ? 1000 + i % 4000 : (mix(seed) % (64u << 20)) + 1;
    snprintf(op->media_type, sizeof op->media_type, "%s",
             manifest ? "application/vnd.oci.image.manifest.v1+json"
                      : "application/vnd.oci.image.layer.v1.tar+gzip");
    op->cb = op_done;
    index_queue(c, op);
    return 0;
}

/* The content file of digest, sparse, of size bytes (the check after start compares sizes). */
static int make_file(cache_t *c, const char *digest, uint64_t size)
{
    char path[4200];
    int rc = store_content_path(c, digest, path, sizeof path);
    if (rc)
        return rc;
    char *slash = strrchr(path, '/');
    *slash = '\0';
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return -errno;
    *slash = '/';
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    rc = ftruncate(fd, (off_t)size) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* A blob record (and file); its digest into out. */
static int queue_blob(cache_t *c, uint64_t *seed, uint64_t size, bool config, wop_ref_t *out)
{
    wop_t *op;
    int rc = wop_new(c, NULL, NULL, NULL, &op);
    if (rc)
        return rc;
    make_digest(seed, op->digest);
    op->what = WOP_CONTENT;
    op->kind = CACHE_BLOB;
    op->size = size;
    snprintf(op->media_type, sizeof op->media_type, "%s",
             config ? "application/vnd.oci.image.config.v1+json"
                    : "application/vnd.oci.image.layer.v1.tar+gzip");
    op->cb = op_done;
    out->role = config ? IMAGE_CONFIG : IMAGE_LAYER;
    out->size = size;
    memcpy(out->digest, op->digest, sizeof out->digest);
    if (make_files && (rc = make_file(c, op->digest, size))) {
        wop_free(op);
        return rc;
    }
    index_queue(c, op);
    return 0;
}

static int apply_tagstat(cache_t *c, MDB_txn *t, const wop_t *op)
{
    unsigned char rec[TAGSTAT_REC];
    const int64_t *pulled = op->payload;
    uint32_t pulls = (uint32_t)op->size;
    rec[0] = TAGSTAT_VERSION;
    index_put_u64(rec + 1, (uint64_t)*pulled);
    for (int i = 0; i < 4; i++)
        rec[9 + i] = (unsigned char)(pulls >> (8 * i));
    MDB_val k = {op->tag_key_len, (void *)op->key}, v = {sizeof rec, rec};
    return mdb_put(t, c->dbi_tagstats, &k, &v, 0);
}

/* Image i: its blobs, then its manifest (tag, repo, refs, owners), then its tagstats. */
static int queue_image(cache_t *c, uint64_t i, uint64_t n_images, const wop_ref_t *base,
                       uint64_t *seed)
{
    wop_ref_t refs[1 + OWN_LAYERS + BASE_LAYERS];
    size_t n = 0;
    char repo[64], tag[32];
    int rc = queue_blob(c, seed, 1000 + mix(seed) % 9000, true, &refs[n++]);
    for (int k = 0; k < OWN_LAYERS && !rc; k++)
        rc = queue_blob(c, seed, mix(seed) % (32u << 20) + 1, false, &refs[n++]);
    if (rc)
        return rc;
    refs[n++] = base[i % BASE_POOL];
    refs[n++] = base[(i * 7 + 3) % BASE_POOL];
    snprintf(repo, sizeof repo, "bench/repo%" PRIu64, i / 10);
    snprintf(tag, sizeof tag, "v%" PRIu64, i % 10);
    wop_t *op;
    if ((rc = wop_new(c, "docker.io", repo, tag, &op)))
        return rc;
    make_digest(seed, op->digest);
    op->what = WOP_CONTENT | WOP_TAG | WOP_REPO | WOP_REFS;
    op->kind = CACHE_MANIFEST;
    op->size = 500 + n * 100;
    snprintf(op->media_type, sizeof op->media_type, "application/vnd.oci.image.manifest.v1+json");
    op->refs = malloc(n * sizeof *op->refs);
    if (!op->refs) {
        wop_free(op);
        return -ENOMEM;
    }
    memcpy(op->refs, refs, n * sizeof *refs);
    op->nrefs = n;
    op->cb = op_done;
    if (make_files && (rc = make_file(c, op->digest, op->size))) {
        wop_free(op);
        return rc;
    }
    index_queue(c, op);
    /* Pulled at some time in the last n_images minutes, older images longer ago. */
    int64_t *pulled = malloc(sizeof *pulled);
    if (!pulled || (rc = wop_new(c, "docker.io", repo, tag, &op))) {
        free(pulled);
        return rc ? rc : -ENOMEM;
    }
    *pulled = time_wall_ms() - (int64_t)(n_images - i) * 60000;
    op->what = WOP_CUSTOM;
    op->apply = apply_tagstat;
    op->payload = pulled;
    op->payload_free = free;
    op->size = 1 + i % 50;
    op->cb = NULL;
    index_queue(c, op);
    return 0;
}

/* Content records for n: BASE_POOL base layers, then PER_IMAGE per image. */
static int make_graph(uv_loop_t *loop, cache_t *c, uint64_t n, uint64_t *seed)
{
    static wop_ref_t base[BASE_POOL];
    uint64_t n_images = n > BASE_POOL ? (n - BASE_POOL) / PER_IMAGE : 1;
    int rc = 0;
    for (int k = 0; k < BASE_POOL && !rc; k++)
        rc = queue_blob(c, seed, mix(seed) % (64u << 20) + 1, false, &base[k]);
    uv_run(loop, UV_RUN_DEFAULT);
    for (uint64_t i = 0; i < n_images && !rc && !first_err; i++) {
        rc = queue_image(c, i, n_images, base, seed);
        if (i % (CHUNK / PER_IMAGE) == 0)
            uv_run(loop, UV_RUN_DEFAULT);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    if (rc)
        fprintf(stderr, "mkindex: %s\n", err_str(rc));
    else
        printf("mkindex: %" PRIu64 " images, %" PRIu64 " content records%s\n", n_images,
               BASE_POOL + n_images * PER_IMAGE, make_files ? ", with their files" : "");
    return rc;
}

int main(int argc, char **argv)
{
    uv_loop_t loop;
    cache_t *c = NULL;
    uint64_t seed = 42, queued = 0;
    int rc;

    bool graph = false;
    while (argc > 2 && strncmp(argv[argc - 1], "--", 2) == 0) {
        if (strcmp(argv[argc - 1], "--graph") == 0)
            graph = true;
        else if (strcmp(argv[argc - 1], "--files") == 0)
            make_files = true;
        else
            argc = 0;
        argc--;
    }
    if (argc < 2 || argc > 3 || (make_files && !graph)) {
        fprintf(stderr, "usage: mkindex DIR [N] [--graph [--files]]\n");
        return 2;
    }
    uint64_t n = argc == 3 ? strtoull(argv[2], NULL, 10) : 1000000;
    uint64_t n_repos = n / 100 ? n / 100 : 1;
    if ((rc = uv_loop_init(&loop))) {
        fprintf(stderr, "mkindex: loop: %s\n", uv_strerror(rc));
        return 1;
    }
    cache_opts_t o = {.loop = &loop, .dir = argv[1]};
    if ((rc = cache_open(&c, &o))) {
        fprintf(stderr, "mkindex: cache_open %s: %s\n", argv[1], err_str(rc));
        goto fail;
    }
    if (graph) {
        rc = make_graph(&loop, c, n, &seed);
        if (!rc && first_err)
            fprintf(stderr, "mkindex: commit: %s\n", err_str(first_err));
        if (rc || first_err)
            goto fail;
        cache_close(c);
        uv_loop_close(&loop);
        return 0;
    }
    while (queued < n && !first_err) {
        for (uint64_t k = 0; k < CHUNK && queued < n; k++, queued++) {
            if ((rc = queue_one(c, queued, n_repos, &seed))) {
                fprintf(stderr, "mkindex: entry %" PRIu64 ": %s\n", queued, err_str(rc));
                goto fail;
            }
        }
        /* Runs until this chunk's batches have all committed. */
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    if (first_err) {
        rc = first_err;
        fprintf(stderr, "mkindex: commit: %s\n", err_str(rc));
        goto fail;
    }
    cache_close(c);
    uv_loop_close(&loop);
    printf("mkindex: %" PRIu64 " entries in %s\n", done_ops, argv[1]);
    return 0;
fail:
    uv_run(&loop, UV_RUN_DEFAULT);
    cache_close(c);
    uv_loop_close(&loop);
    return 1;
}
