/* What a manifest is (cache/image.c): image_parse over arbitrary bytes, claimed as each of the
 * four manifest types. An accepted body must give references with valid digests and the kind
 * its claim names; a refusal must say why. */
#include "cache/cache.h"
#include "common/mediatype.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const types[] = {MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_V2,
                                        MT_DOCKER_LIST};
    char *json = malloc(size ? size : 1);
    FUZZ_CHECK(json != NULL);
    memcpy(json, data, size);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        image_t *img = NULL;
        char why[200] = "";
        int rc = image_parse(json, size, types[t], &img, why, sizeof why);
        if (rc != 0) {
            FUZZ_CHECK(img == NULL && why[0] != '\0');
            continue;
        }
        FUZZ_CHECK(img->kind == (image_type_is_index(types[t]) ? IMAGE_INDEX : IMAGE_MANIFEST));
        FUZZ_CHECK(img->nrefs <= IMAGE_MAX_REFS);
        for (size_t i = 0; i < img->nrefs; i++) {
            const char *d = img->refs[i].digest;
            FUZZ_CHECK(ref_digest_parse(d, strlen(d), NULL) == 0);
            if (img->kind == IMAGE_MANIFEST)
                FUZZ_CHECK(img->refs[i].role != IMAGE_CHILD);
        }
        (void)image_bytes(img);
        image_free(img);
    }
    free(json);
    return 0;
}
