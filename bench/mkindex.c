/* mkindex: fills a cache directory's index with synthetic entries, for the start-up benchmark
 * (bench/bench.py, test 8). No content files are written: start-up must not look at blobs/, so
 * the index alone is what an old, large cache costs at start.
 *
 *   mkindex DIR [N]   N content records (default 1,000,000): 90% blobs, 10% manifests; every
 *                     manifest also gets a tag, spread over N/100 repositories.
 *
 * It goes through the cache's own write queue (cache/internal.h), so the records have exactly
 * the format winch writes, batched and committed the way winch commits them. bench/run builds
 * it against the Release build's static libraries. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cache/internal.h"
#include "common/err.h"

/* Ops queued at once: bounds the memory the queue holds while LMDB commits. */
#define CHUNK 20000

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

int main(int argc, char **argv)
{
    uv_loop_t loop;
    cache_t *c = NULL;
    uint64_t seed = 42, queued = 0;
    int rc;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: mkindex DIR [N]\n");
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
