/* Manifest media-type detection (proxy/oci.h): oci_detect_media_type over arbitrary bytes.
 * Whatever it answers must be a manifest type, and the same bytes must give the same answer. */
#include "fuzz.h"
#include "proxy/oci.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size heap copy with no NUL after it: the function takes a length. */
    char *json = malloc(size ? size : 1);
    FUZZ_CHECK(json != NULL);
    memcpy(json, data, size);
    const char *mt = oci_detect_media_type(json, size);
    if (mt)
        FUZZ_CHECK(oci_is_manifest_type(mt));
    FUZZ_CHECK(oci_detect_media_type(json, size) == mt);
    free(json);
    return 0;
}
