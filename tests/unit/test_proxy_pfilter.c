/* proxy/pfilter.c: filtered indexes keep the allowed platforms and their attestations in the
 * upstream's order, are stable (same bytes, same digest), hash to their digest, and bad input. */
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "check.h"
#include "common/err.h"
#include "common/platform.h"
#include "common/util.h"
#include "proxy/pfilter.h"
#include "testutil.h"

#define D(c) "sha256:" c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c

static const char INDEX[] =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\","
    "\"manifests\":["
    "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" D(
        "a1") "\",\"size\":10,\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}},"
              "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" D(
                  "b2") "\",\"size\":11,\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\","
                        "\"variant\":\"v8\"}},"
                        "{\"mediaType\":\"application/"
                        "vnd.oci.image.manifest.v1+json\",\"digest\":\"" D(
                            "c3") "\",\"size\":12,\"platform\":{\"architecture\":\"arm\",\"os\":"
                                  "\"linux\",\"variant\":\"v7\"}},"
                                  "{\"mediaType\":\"application/"
                                  "vnd.oci.image.manifest.v1+json\",\"digest\":\"" D(
                                      "d4") "\",\"size\":13,\"platform\":{\"architecture\":"
                                            "\"unknown\",\"os\":\"unknown\"},"
                                            "\"annotations\":{\"vnd.docker.reference.type\":"
                                            "\"attestation-manifest\","
                                            "\"vnd.docker.reference.digest\":\"" D(
                                                "b2") "\"}},"
                                                      "{\"mediaType\":\"application/"
                                                      "vnd.oci.image.manifest.v1+json\",\"digest\":"
                                                      "\"" D(
                                                          "e5") "\",\"size\":14,\"platform\":{"
                                                                "\"architecture\":\"unknown\","
                                                                "\"os\":\"unknown\"},"
                                                                "\"annotations\":{\"vnd.docker."
                                                                "reference.type\":\"attestation-"
                                                                "manifest\","
                                                                "\"vnd.docker.reference.digest\":"
                                                                "\"" D(
                                                                    "a1") "\"}}],"
                                                                          "\"annotations\":{\"org."
                                                                          "opencontainers.image."
                                                                          "created\":\"2024-01-"
                                                                          "01T00:00:00Z\"}}";

static platform_t P(const char *s)
{
    platform_t p;
    const char *why;
    CHECK_INT(platform_parse(s, strlen(s), &p, &why), 0);
    return p;
}

static void test_keeps_allowed(void)
{
    platform_t set[] = {P("linux/arm64"), P("linux/s390x")};
    char *out = NULL, digest[REF_DIGEST_MAX + 1];
    size_t n = 0;
    CHECK_INT(pfilter_index(INDEX, strlen(INDEX), set, 2, &out, &n, digest), 0);
    CHECK(out != NULL && n == strlen(out));
    /* arm64 (v8 normalised away) and its attestation, nothing else; other fields kept. */
    CHECK(strstr(out, D("b2")) && strstr(out, D("d4")));
    CHECK(!strstr(out, D("a1")) && !strstr(out, D("c3")) && !strstr(out, D("e5")));
    CHECK(strstr(out, "\"org.opencontainers.image.created\":\"2024-01-01T00:00:00Z\""));
    CHECK(strncmp(out, "{\"schemaVersion\":2,\"mediaType\":", 31) == 0);
    CHECK(strstr(out, D("b2")) < strstr(out, D("d4")));
    CHECK_INT(digest_verify(digest, out, n), 0);
    /* It parses as an index of the same type, with two children. */
    image_t *img;
    char err[160];
    CHECK_INT(image_parse(out, n, "application/vnd.oci.image.index.v1+json", &img, err, sizeof err),
              0);
    CHECK_INT(img->nrefs, 2);
    image_free(img);
    /* Stable: the same input gives the same bytes. */
    char *again = NULL, digest2[REF_DIGEST_MAX + 1];
    size_t n2 = 0;
    CHECK_INT(pfilter_index(INDEX, strlen(INDEX), set, 2, &again, &n2, digest2), 0);
    CHECK_STR(digest2, digest);
    CHECK(n2 == n && memcmp(again, out, n) == 0);
    free(again);
    free(out);
}

static void test_nothing_to_filter_or_nothing_left(void)
{
    platform_t all[] = {P("linux/amd64"), P("linux/arm64"), P("linux/arm/v7")};
    char *out = (char *)1, digest[REF_DIGEST_MAX + 1];
    size_t n = 1;
    CHECK_INT(pfilter_index(INDEX, strlen(INDEX), all, 3, &out, &n, digest), 0);
    CHECK(out == NULL && n == 0);
    platform_t none[] = {P("windows/amd64")};
    CHECK_INT(pfilter_index(INDEX, strlen(INDEX), none, 1, &out, &n, digest), WE_NOTFOUND);
    CHECK(out == NULL);
    /* unknown/unknown is never an allowed image, even when named. */
    platform_t unk[] = {P("unknown/unknown")};
    CHECK_INT(pfilter_index(INDEX, strlen(INDEX), unk, 1, &out, &n, digest), WE_NOTFOUND);
}

static void test_bad_input(void)
{
    platform_t set[] = {P("linux/amd64")};
    char *out, digest[REF_DIGEST_MAX + 1];
    size_t n;
    static const char *bad[] = {
        "",
        "{",
        "[]",
        "{\"manifests\": 3}",
        "{\"manifests\": {}}",
        "null",
        "{\"manifests\": [], \"manifests\": []}", /* duplicate keys */
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        CHECK_INT(pfilter_index(bad[i], strlen(bad[i]), set, 1, &out, &n, digest), WE_INVALID);
    /* Entries that are not objects, platforms of the wrong type, over-long parts: left out. */
    static char big[100000];
    int k = snprintf(big, sizeof big,
                     "{\"manifests\":[7,\"x\",{\"platform\":3},{\"platform\":{\"os\":\"linux\","
                     "\"architecture\":\"amd64\"},\"digest\":\"" D(
                         "a1") "\"},"
                               "{\"platform\":{\"os\":\"linux\",\"architecture\":\"");
    memset(big + k, 'z', 90000);
    k += 90000;
    snprintf(big + k, sizeof big - (size_t)k, "\"}}]}");
    CHECK_INT(pfilter_index(big, strlen(big), set, 1, &out, &n, digest), 0);
    CHECK(out && strstr(out, D("a1")) && !strstr(out, "zzz") && !strstr(out, "\"x\""));
    free(out);
}

int main(int argc, char **argv)
{
    static const test_case_t cases[] = {TEST_CASE(test_keeps_allowed),
                                        TEST_CASE(test_nothing_to_filter_or_nothing_left),
                                        TEST_CASE(test_bad_input)};
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
