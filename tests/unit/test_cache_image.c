/* cache/image.c (what a manifest is, and what it references) and the owners records a stored
 * manifest leaves behind (cache_owner_get / cache_owner_set). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cache/cache.h"
#include "cachetest.h"
#include "check.h"
#include "common/err.h"
#include "common/mediatype.h"
#include "common/util.h"
#include "testutil.h"

#define D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"
#define D3 "sha256:3333333333333333333333333333333333333333333333333333333333333333"

static const char oci_manifest[] =
    "{\"schemaVersion\":2,\"mediaType\":\"" MT_OCI_MANIFEST "\","
    "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"" D1
    "\",\"size\":100},"
    "\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"" D2
    "\",\"size\":2000},{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\","
    "\"digest\":\"" D3 "\",\"size\":30000}]}";

static const char oci_index[] =
    "{\"schemaVersion\":2,\"mediaType\":\"" MT_OCI_INDEX "\",\"manifests\":["
    "{\"mediaType\":\"" MT_OCI_MANIFEST "\",\"digest\":\"" D1 "\",\"size\":500,"
    "\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}},"
    "{\"mediaType\":\"" MT_OCI_MANIFEST "\",\"digest\":\"" D2 "\",\"size\":501,"
    "\"platform\":{\"architecture\":\"arm\",\"os\":\"linux\",\"variant\":\"v7\"}},"
    "{\"mediaType\":\"" MT_OCI_MANIFEST "\",\"digest\":\"" D3 "\",\"size\":502,"
    "\"annotations\":{\"vnd.docker.reference.type\":\"attestation-manifest\"},"
    "\"platform\":{\"architecture\":\"unknown\",\"os\":\"unknown\"}}]}";

static void test_manifest(void)
{
    image_t *img;
    char why[200];
    CHECK_INT(
        image_parse(oci_manifest, strlen(oci_manifest), MT_OCI_MANIFEST, &img, why, sizeof why), 0);
    CHECK_INT(img->kind, IMAGE_MANIFEST);
    CHECK_INT(img->nrefs, 3);
    CHECK_INT(img->refs[0].role, IMAGE_CONFIG);
    CHECK_STR(img->refs[0].digest, D1);
    CHECK_INT(img->refs[2].role, IMAGE_LAYER);
    CHECK_INT(img->refs[2].size, 30000);
    CHECK_INT(image_bytes(img), 32100);
    image_free(img);
    /* A parameter on the claimed type is fine. */
    CHECK_INT(image_parse(oci_manifest, strlen(oci_manifest), MT_OCI_MANIFEST "; charset=x", &img,
                          why, sizeof why),
              0);
    image_free(img);
}

static void test_index(void)
{
    image_t *img;
    char why[200];
    CHECK_INT(image_parse(oci_index, strlen(oci_index), MT_OCI_INDEX, &img, why, sizeof why), 0);
    CHECK_INT(img->kind, IMAGE_INDEX);
    CHECK_INT(img->nrefs, 3);
    CHECK(img->refs[0].has_platform);
    CHECK_STR(img->refs[1].platform.arch, "arm");
    CHECK_STR(img->refs[1].platform.variant, "v7");
    CHECK(!img->refs[0].attestation);
    CHECK(img->refs[2].attestation);
    CHECK_INT(image_bytes(img), 0);
    image_free(img);
    CHECK(image_type_is_index(MT_DOCKER_LIST));
    CHECK(!image_type_is_index(MT_DOCKER_V2));
    CHECK(image_type_known(MT_DOCKER_V2));
    CHECK(!image_type_known(MT_DOCKER_V1));
}

/* What the upstream can send instead of a manifest, and must never get cached. */
static void test_refusals(void)
{
    static const struct {
        const char *body;
        const char *type;
    } bad[] = {
        {"{\"ami-id\":\"ami-123\",\"instance-type\":\"t3\"}", MT_OCI_MANIFEST}, /* metadata */
        {"<html><body>502</body></html>", MT_OCI_MANIFEST},
        {"[1,2,3]", MT_OCI_INDEX},
        {"{\"schemaVersion\":1,\"config\":{}}", MT_OCI_MANIFEST},
        {"{\"schemaVersion\":2,\"manifests\":[]}", MT_OCI_MANIFEST}, /* shape of an index */
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1 "\",\"size\":1}}", MT_OCI_INDEX},
        {"{\"schemaVersion\":2,\"mediaType\":\"" MT_DOCKER_V2 "\",\"config\":{\"digest\":\"" D1
         "\",\"size\":1}}",
         MT_OCI_MANIFEST}, /* mediaType contradicts the claim */
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:abc\",\"size\":1}}",
         MT_OCI_MANIFEST},
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1 "\",\"size\":-1}}", MT_OCI_MANIFEST},
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1 "\"}}", MT_OCI_MANIFEST},
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1 "\",\"size\":1},\"layers\":{}}",
         MT_OCI_MANIFEST},
        {"{\"schemaVersion\":2,\"fsLayers\":[],\"config\":{}}", MT_OCI_MANIFEST},
        {"{\"schemaVersion\":2,\"manifests\":[{\"digest\":\"" D1
         "\",\"size\":1,\"platform\":{\"os\":\"linux\"}}]}",
         MT_OCI_INDEX}, /* platform without architecture */
        {"{\"schemaVersion\":2,\"schemaVersion\":2,\"manifests\":[]}", MT_OCI_INDEX},
        {"{}", MT_DOCKER_V1},
        {"{\"schemaVersion\":2,\"manifests\":[]}", "application/json"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        image_t *img = NULL;
        char why[200] = "";
        int rc = image_parse(bad[i].body, strlen(bad[i].body), bad[i].type, &img, why, sizeof why);
        if (rc != WE_INVALID)
            fprintf(stderr, "case %zu accepted: %s\n", i, bad[i].body);
        CHECK_INT(rc, WE_INVALID);
        CHECK(img == NULL);
        CHECK(why[0] != '\0');
    }
    /* An empty index is an index. */
    image_t *img;
    const char *empty = "{\"schemaVersion\":2,\"manifests\":[]}";
    CHECK_INT(image_parse(empty, strlen(empty), MT_OCI_INDEX, &img, NULL, 0), 0);
    CHECK_INT(img->nrefs, 0);
    image_free(img);
}

/* ---- Owners ------------------------------------------------------------------------------- */

static void on_done(void *arg, int status)
{
    int *p = arg;
    *p = status == 0 ? 1 : status;
}

static void test_owners(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    const char *dir = test_tmpdir("winch-test-image");
    cache_t *c;
    cache_opts_t o = {.loop = &loop, .dir = dir};
    CHECK_INT(cache_open(&c, &o), 0);

    image_t *img;
    CHECK_INT(image_parse(oci_manifest, strlen(oci_manifest), MT_OCI_MANIFEST, &img, NULL, 0), 0);
    char md[REF_DIGEST_MAX + 1];
    cachetest_digest_of(REF_ALG_SHA256, oci_manifest, strlen(oci_manifest), md);
    cache_manifest_put_t put = {.digest = md,
                                .media_type = MT_OCI_MANIFEST,
                                .bytes = oci_manifest,
                                .len = strlen(oci_manifest),
                                .upstream = "docker.io",
                                .repo = "library/a",
                                .tag = "1",
                                .image = img};
    int done = 0;
    CHECK_INT(cache_put_manifest(c, &put, on_done, &done), 0);
    image_free(img); /* copied */
    uint64_t size = 0;
    /* Pending: already visible. */
    CHECK_INT(cache_owner_get(c, "docker.io", "library/a", D3, &size), 0);
    CHECK_INT(size, 30000);
    while (!done)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(done, 1);
    /* Committed. */
    CHECK_INT(cache_owner_get(c, "docker.io", "library/a", D3, &size), 0);
    CHECK_INT(size, 30000);
    CHECK_INT(cache_owner_get(c, "docker.io", "library/a", D1, &size), 0);
    CHECK_INT(size, 100);
    CHECK_INT(cache_owner_get(c, "docker.io", "library/a", md, &size), 0);
    CHECK_INT(size, strlen(oci_manifest));
    /* Another repository, another upstream: not an owner. */
    CHECK_INT(cache_owner_get(c, "docker.io", "library/b", D3, NULL), WE_NOTFOUND);
    CHECK_INT(cache_owner_get(c, "ghcr.io", "library/a", D3, NULL), WE_NOTFOUND);
    CHECK_INT(cache_owner_get(c, "docker.io", "library/a", "sha256:zz", NULL), WE_NOTFOUND);

    /* Recorded by hand (the upstream confirmed it). */
    done = 0;
    CHECK_INT(cache_owner_set(c, "ghcr.io", "acme/x", D3, 30000, on_done, &done), 0);
    CHECK_INT(cache_owner_get(c, "ghcr.io", "acme/x", D3, &size), 0); /* queued: visible */
    while (!done)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(cache_owner_get(c, "ghcr.io", "acme/x", D3, &size), 0);
    CHECK_INT(cache_owner_set(c, "ghcr.io", "Bad Name", D3, 1, NULL, NULL), WE_INVALID);
    CHECK_INT(cache_owner_set(c, "ghcr.io", "acme/x", "sha256:zz", 1, NULL, NULL), WE_INVALID);

    cache_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* Persisted across a reopen. */
    CHECK_INT(cache_open(&c, &o), 0);
    CHECK_INT(cache_owner_get(c, "docker.io", "library/a", D2, &size), 0);
    CHECK_INT(size, 2000);
    cache_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
}

/* A tool (the CLI) beside a serving winch: both see each other's index writes; with no server,
 * the tool holds the lock so that none starts under it. */
static void test_shared_open(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    const char *dir = test_tmpdir("winch-test-shared");
    cache_t *server, *tool;
    cache_opts_t so = {.loop = &loop, .dir = dir};
    cache_opts_t to = {.loop = &loop, .dir = dir, .shared = true};
    char missing[600];
    snprintf(missing, sizeof missing, "%s/none", dir);
    cache_opts_t mo = {.loop = &loop, .dir = missing, .shared = true};
    CHECK_INT(cache_open(&tool, &mo), -ENOENT);

    CHECK_INT(cache_open(&server, &so), 0);
    CHECK(!cache_server_running(server));
    CHECK_INT(cache_open(&tool, &to), 0);
    CHECK(cache_server_running(tool));
    int done = 0;
    CHECK_INT(cache_owner_set(tool, "docker.io", "library/a", D1, 5, on_done, &done), 0);
    while (!done)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(cache_owner_get(server, "docker.io", "library/a", D1, NULL), 0);
    cache_close(tool);
    cache_close(server);
    uv_run(&loop, UV_RUN_DEFAULT);

    CHECK_INT(cache_open(&tool, &to), 0);
    CHECK(!cache_server_running(tool));
    CHECK_INT(cache_open(&server, &so), -EBUSY);
    cache_close(tool);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
}

static const test_case_t cases[] = {
    TEST_CASE(test_shared_open), TEST_CASE(test_manifest), TEST_CASE(test_index),
    TEST_CASE(test_refusals),    TEST_CASE(test_owners),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
