/* OCI vocabulary (proxy/oci.c): Accept parsing, distribution's Accept refusals, the error JSON
 * body, media-type detection. */
#include <jansson.h>
#include <string.h>

#include "common/util.h"
#include "proxy/oci.h"
#include "testutil.h"
#include "unit/check.h"

static unsigned parse(const char *s)
{
    return oci_accept_parse(0, s, strlen(s));
}

static void test_accept_parse(void)
{
    static const struct {
        const char *value;
        unsigned mask;
    } cases[] = {
        {"", 0},
        {MT_DOCKER_V2, ACCEPT_DOCKER_V2},
        {MT_DOCKER_LIST, ACCEPT_DOCKER_LIST},
        {MT_OCI_MANIFEST, ACCEPT_OCI_MANIFEST},
        {MT_OCI_INDEX, ACCEPT_OCI_INDEX},
        {MT_DOCKER_V1, ACCEPT_DOCKER_V1},
        {MT_DOCKER_V1_SIGNED, ACCEPT_DOCKER_V1},
        {"*/*", ACCEPT_ANY},
        {"application/*", ACCEPT_ANY},
        {"application/json", 0},
        {"text/html", 0},
        /* containerd's resolve line (docs/protocol.md, "Accept negotiation"). */
        {"application/vnd.docker.distribution.manifest.v2+json, "
         "application/vnd.docker.distribution.manifest.list.v2+json, "
         "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
         ACCEPT_DOCKER_V2 | ACCEPT_DOCKER_LIST | ACCEPT_OCI_MANIFEST | ACCEPT_OCI_INDEX |
             ACCEPT_ANY},
        /* containerd's fetch-by-digest line. */
        {"application/vnd.oci.image.index.v1+json, */*", ACCEPT_OCI_INDEX | ACCEPT_ANY},
        /* Case, whitespace (spaces and tabs), parameters and q-values. */
        {"APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON", ACCEPT_OCI_MANIFEST},
        {" \t" MT_OCI_INDEX " \t", ACCEPT_OCI_INDEX},
        {MT_OCI_INDEX ";q=0.5", ACCEPT_OCI_INDEX},
        {MT_OCI_INDEX " ; q=0.5, " MT_DOCKER_V2 ";charset=utf-8",
         ACCEPT_OCI_INDEX | ACCEPT_DOCKER_V2},
        {",,," MT_DOCKER_LIST ",,", ACCEPT_DOCKER_LIST},
        /* Near misses are not matches. */
        {MT_OCI_INDEX "x", 0},
        {"application/vnd.oci.image.index.v1", 0},
        {"*/*x", 0},
        {"*", 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        unsigned got = parse(cases[i].value);
        if (got != cases[i].mask)
            fprintf(stderr, "accept case %zu \"%s\"\n", i, cases[i].value);
        CHECK_INT(got, cases[i].mask);
    }

    /* Several Accept lines (docker classic, containers/image) accumulate. */
    static const char *const skopeo[] = {MT_OCI_MANIFEST, MT_DOCKER_V2,   MT_DOCKER_V1_SIGNED,
                                         MT_DOCKER_V1,    MT_DOCKER_LIST, MT_OCI_INDEX};
    unsigned mask = 0;
    for (size_t i = 0; i < ARRAY_SIZE(skopeo); i++)
        mask = oci_accept_parse(mask, skopeo[i], strlen(skopeo[i]));
    CHECK_INT(mask, ACCEPT_OCI_MANIFEST | ACCEPT_DOCKER_V2 | ACCEPT_DOCKER_V1 | ACCEPT_DOCKER_LIST |
                        ACCEPT_OCI_INDEX);

    /* Only len bytes are read. */
    CHECK_INT(oci_accept_parse(0, MT_OCI_INDEX ", " MT_DOCKER_V2, strlen(MT_OCI_INDEX)),
              ACCEPT_OCI_INDEX);
    CHECK_INT(oci_accept_parse(ACCEPT_DOCKER_V2, NULL, 0), ACCEPT_DOCKER_V2);
}

static void test_accept_refusal(void)
{
    static const char oci_m[] =
        "OCI manifest found, but accept header does not support OCI manifests";
    static const char oci_i[] = "OCI index found, but accept header does not support OCI indexes";
    static const struct {
        unsigned mask;
        const char *type;
        const char *refusal; /* NULL: served */
    } cases[] = {
        /* Stored OCI manifest. */
        {0, MT_OCI_MANIFEST, oci_m},
        {ACCEPT_DOCKER_V2 | ACCEPT_DOCKER_LIST, MT_OCI_MANIFEST, oci_m},
        {ACCEPT_OCI_INDEX, MT_OCI_MANIFEST, oci_m},
        {ACCEPT_OCI_MANIFEST, MT_OCI_MANIFEST, NULL},
        {ACCEPT_ANY, MT_OCI_MANIFEST, NULL},
        /* Stored OCI index. */
        {0, MT_OCI_INDEX, oci_i},
        {ACCEPT_OCI_MANIFEST, MT_OCI_INDEX, oci_i},
        {ACCEPT_DOCKER_V2, MT_OCI_INDEX, oci_i},
        {ACCEPT_OCI_INDEX, MT_OCI_INDEX, NULL},
        {ACCEPT_ANY, MT_OCI_INDEX, NULL},
        /* Stored type with parameters or odd case is still recognised. */
        {ACCEPT_DOCKER_V2, "Application/vnd.oci.image.index.v1+json; charset=utf-8", oci_i},
        /* Docker types are always served as stored. */
        {0, MT_DOCKER_V2, NULL},
        {0, MT_DOCKER_LIST, NULL},
        {ACCEPT_OCI_MANIFEST, MT_DOCKER_LIST, NULL},
        {0, MT_DOCKER_V1_SIGNED, NULL},
        /* Unknown types and no type at all are served. */
        {0, "application/vnd.oci.artifact.manifest.v1+json", NULL},
        {0, NULL, NULL},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const char *got = oci_accept_refusal(cases[i].mask, cases[i].type);
        if (!cases[i].refusal) {
            if (got)
                fprintf(stderr, "refusal case %zu: unexpected \"%s\"\n", i, got);
            CHECK(got == NULL);
        } else {
            CHECK_STR(got, cases[i].refusal);
        }
    }

    /* End to end: the skopeo and containerd sets take everything; a docker-v2-only client
     * is refused OCI types, as distribution does. */
    unsigned containerd =
        parse(MT_DOCKER_V2 ", " MT_DOCKER_LIST ", " MT_OCI_MANIFEST ", " MT_OCI_INDEX ", */*");
    CHECK(oci_accept_refusal(containerd, MT_OCI_INDEX) == NULL);
    CHECK(oci_accept_refusal(containerd, MT_OCI_MANIFEST) == NULL);
    CHECK_STR(oci_accept_refusal(parse(MT_DOCKER_V2), MT_OCI_MANIFEST), oci_m);
}

/* Parses the JSON error body back and checks its fields. */
static void check_error_body(const char *body, const char *code, const char *message,
                             const char *detail_key, const char *detail_val)
{
    json_error_t jerr;
    json_t *root = json_loads(body, 0, &jerr);
    if (!root)
        fprintf(stderr, "not JSON: %s (%s)\n", body, jerr.text);
    CHECK(root != NULL);
    CHECK_INT(json_object_size(root), 1);
    json_t *errors = json_object_get(root, "errors");
    CHECK(json_is_array(errors));
    CHECK_INT(json_array_size(errors), 1);
    json_t *e = json_array_get(errors, 0);
    CHECK_STR(json_string_value(json_object_get(e, "code")), code);
    CHECK_STR(json_string_value(json_object_get(e, "message")), message);
    json_t *detail = json_object_get(e, "detail");
    if (detail_key) {
        CHECK(json_is_object(detail));
        CHECK_STR(json_string_value(json_object_get(detail, detail_key)), detail_val);
    } else {
        CHECK(detail == NULL);
    }
    json_decref(root);
}

static void test_error_json(void)
{
    char buf[512];
    size_t n;

    n = oci_error_json(buf, sizeof(buf), OCI_MANIFEST_UNKNOWN, "manifest unknown", NULL);
    CHECK_STR(buf,
              "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest unknown\"}]}");
    CHECK_INT(n, strlen(buf));

    n = oci_error_json(buf, sizeof(buf), OCI_BLOB_UNKNOWN, "blob unknown to registry",
                       "\"sha256:abc\"");
    CHECK_STR(buf, "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"blob unknown to "
                   "registry\",\"detail\":\"sha256:abc\"}]}");
    CHECK_INT(n, strlen(buf));

    /* Messages are escaped; details are inserted as given. */
    n = oci_error_json(buf, sizeof(buf), OCI_DENIED, "say \"no\"\\\n\t\x01",
                       "{\"Tag\":\"latest\"}");
    CHECK(n > 0);
    check_error_body(buf, "DENIED", "say \"no\"\\\n\t\x01", "Tag", "latest");

    /* A NULL message falls back to distribution's text for the code. */
    n = oci_error_json(buf, sizeof(buf), OCI_UNSUPPORTED, NULL, NULL);
    CHECK(n > 0);
    check_error_body(buf, "UNSUPPORTED", "The operation is unsupported.", NULL, NULL);

    /* The three UNAVAILABLE variants share the wire name. */
    n = oci_error_json(buf, sizeof(buf), OCI_GATEWAY_TIMEOUT, "upstream timed out", NULL);
    CHECK(n > 0);
    check_error_body(buf, "UNAVAILABLE", "upstream timed out", NULL, NULL);

    /* Too small: 0, and never a partial body. */
    const char *full = "{\"errors\":[{\"code\":\"NAME_INVALID\",\"message\":\"x\"}]}";
    size_t need = strlen(full) + 1;
    CHECK_INT(oci_error_json(buf, need, OCI_NAME_INVALID, "x", NULL), need - 1);
    CHECK_STR(buf, full);
    CHECK_INT(oci_error_json(buf, need - 1, OCI_NAME_INVALID, "x", NULL), 0);
    CHECK_STR(buf, "");
    CHECK_INT(oci_error_json(buf, 1, OCI_NAME_INVALID, "x", NULL), 0);
    CHECK_INT(oci_error_json(buf, 0, OCI_NAME_INVALID, "x", NULL), 0);
}

static void test_codes(void)
{
    static const struct {
        enum oci_code code;
        const char *name;
        int status;
    } cases[] = {
        {OCI_BLOB_UNKNOWN, "BLOB_UNKNOWN", 404},
        {OCI_DIGEST_INVALID, "DIGEST_INVALID", 400},
        {OCI_MANIFEST_INVALID, "MANIFEST_INVALID", 400},
        {OCI_MANIFEST_UNKNOWN, "MANIFEST_UNKNOWN", 404},
        {OCI_NAME_INVALID, "NAME_INVALID", 400},
        {OCI_NAME_UNKNOWN, "NAME_UNKNOWN", 404},
        {OCI_UNAUTHORIZED, "UNAUTHORIZED", 401},
        {OCI_DENIED, "DENIED", 403},
        {OCI_UNSUPPORTED, "UNSUPPORTED", 405},
        {OCI_TOOMANYREQUESTS, "TOOMANYREQUESTS", 429},
        {OCI_RANGE_INVALID, "RANGE_INVALID", 416},
        {OCI_PAGINATION_NUMBER_INVALID, "PAGINATION_NUMBER_INVALID", 400},
        {OCI_UNKNOWN, "UNKNOWN", 500},
        {OCI_UNAVAILABLE, "UNAVAILABLE", 503},
        {OCI_BAD_GATEWAY, "UNAVAILABLE", 502},
        {OCI_GATEWAY_TIMEOUT, "UNAVAILABLE", 504},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        CHECK_STR(oci_code_name(cases[i].code), cases[i].name);
        CHECK_INT(oci_status(cases[i].code), cases[i].status);
    }
}

static void test_media_types(void)
{
    static const struct {
        const char *json;
        const char *type; /* NULL: not a manifest */
    } cases[] = {
        /* mediaType wins. */
        {"{\"schemaVersion\":2,\"mediaType\":\"" MT_DOCKER_V2 "\",\"config\":{},\"layers\":[]}",
         MT_DOCKER_V2},
        {"{\"mediaType\":\"" MT_DOCKER_LIST "\",\"manifests\":[]}", MT_DOCKER_LIST},
        {"{\"mediaType\":\"" MT_OCI_INDEX "\",\"config\":{}}", MT_OCI_INDEX},
        /* OCI manifests and indexes without mediaType: shape decides. */
        {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/"
         "vnd.oci.image.config.v1+json\"},"
         "\"layers\":[]}",
         MT_OCI_MANIFEST},
        {"{\"schemaVersion\":2,\"layers\":[]}", MT_OCI_MANIFEST},
        {"{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_OCI_MANIFEST "\"}]}",
         MT_OCI_INDEX},
        /* An unknown mediaType falls back to the shape. */
        {"{\"mediaType\":\"application/x-unknown\",\"manifests\":[]}", MT_OCI_INDEX},
        /* Schema 1, signed or not. */
        {"{\"schemaVersion\":1,\"name\":\"a\",\"fsLayers\":[],\"history\":[]}", MT_DOCKER_V1},
        {"{\"schemaVersion\":1,\"fsLayers\":[],\"signatures\":[]}", MT_DOCKER_V1_SIGNED},
        /* Not manifests. */
        {"{}", NULL},
        {"{\"schemaVersion\":2}", NULL},
        {"{\"manifests\":[],\"layers\":[]}", NULL},
        {"{\"fsLayers\":[],\"config\":{}}", NULL},
        {"[]", NULL},
        {"\"x\"", NULL},
        {"not json", NULL},
        {"{\"config\":", NULL},
        {"", NULL},
        /* Duplicate keys are ambiguous: refused. */
        {"{\"mediaType\":\"" MT_DOCKER_V2 "\",\"mediaType\":\"" MT_OCI_INDEX "\"}", NULL},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const char *got = oci_detect_media_type(cases[i].json, strlen(cases[i].json));
        if (!cases[i].type) {
            if (got)
                fprintf(stderr, "detect case %zu: unexpected %s\n", i, got);
            CHECK(got == NULL);
        } else {
            CHECK_STR(got, cases[i].type);
        }
    }
    CHECK(oci_detect_media_type(NULL, 0) == NULL);

    /* Deep nesting is refused by the parser, not a stack overflow. */
    static char deep[1 << 20];
    size_t depth = (sizeof(deep) - 32) / 2;
    size_t o = 0;
    o += (size_t)snprintf(deep, 32, "{\"config\":");
    for (size_t i = 0; i < depth - 8; i++)
        deep[o++] = '[';
    for (size_t i = 0; i < depth - 8; i++)
        deep[o++] = ']';
    deep[o++] = '}';
    CHECK(oci_detect_media_type(deep, o) == NULL);

    /* oci_is_manifest_type */
    CHECK(oci_is_manifest_type(MT_DOCKER_V2));
    CHECK(oci_is_manifest_type(MT_DOCKER_LIST));
    CHECK(oci_is_manifest_type(MT_DOCKER_V1));
    CHECK(oci_is_manifest_type(MT_DOCKER_V1_SIGNED));
    CHECK(oci_is_manifest_type(MT_OCI_MANIFEST));
    CHECK(oci_is_manifest_type(MT_OCI_INDEX));
    CHECK(oci_is_manifest_type("application/vnd.oci.image.index.v1+json; charset=utf-8"));
    CHECK(oci_is_manifest_type("APPLICATION/VND.DOCKER.DISTRIBUTION.MANIFEST.V2+JSON"));
    CHECK(!oci_is_manifest_type("application/octet-stream"));
    CHECK(!oci_is_manifest_type("application/vnd.oci.image.config.v1+json"));
    CHECK(!oci_is_manifest_type(""));
    CHECK(!oci_is_manifest_type(NULL));

    /* The upstream Accept line names every modern type and parses back to all four. */
    CHECK_INT(parse(OCI_UPSTREAM_ACCEPT),
              ACCEPT_DOCKER_V2 | ACCEPT_DOCKER_LIST | ACCEPT_OCI_MANIFEST | ACCEPT_OCI_INDEX);
}

static const test_case_t cases[] = {
    TEST_CASE(test_accept_parse), TEST_CASE(test_accept_refusal), TEST_CASE(test_error_json),
    TEST_CASE(test_codes),        TEST_CASE(test_media_types),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
