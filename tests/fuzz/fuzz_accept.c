/* Accept negotiation (proxy/oci.h): oci_accept_parse over one or more Accept lines (split at
 * '\n', as separate header lines arrive), then oci_accept_refusal for every manifest type and
 * for the input itself as a stored media type. The refusal rule is checked against the
 * header's own statement of it. */
#include "fuzz.h"
#include "proxy/oci.h"

#define ACCEPT_ALL_BITS                                                                            \
    (ACCEPT_DOCKER_V2 | ACCEPT_DOCKER_LIST | ACCEPT_OCI_MANIFEST | ACCEPT_OCI_INDEX |              \
     ACCEPT_DOCKER_V1 | ACCEPT_ANY)

static void check_refusal(unsigned mask, const char *type)
{
    const char *why = oci_accept_refusal(mask, type);
    bool oci_manifest = strcmp(type, MT_OCI_MANIFEST) == 0;
    bool oci_index = strcmp(type, MT_OCI_INDEX) == 0;
    if (mask & ACCEPT_ANY)
        FUZZ_CHECK(why == NULL);
    else if (oci_manifest)
        FUZZ_CHECK((why == NULL) == !!(mask & ACCEPT_OCI_MANIFEST));
    else if (oci_index)
        FUZZ_CHECK((why == NULL) == !!(mask & ACCEPT_OCI_INDEX));
    else
        FUZZ_CHECK(why == NULL); /* Docker types are always served as stored. */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const types[] = {MT_DOCKER_V2,        MT_DOCKER_LIST,  MT_DOCKER_V1,
                                        MT_DOCKER_V1_SIGNED, MT_OCI_MANIFEST, MT_OCI_INDEX};
    /* Heap copies of each line, exactly sized, so ASan catches a read past a line's end. */
    unsigned mask = 0;
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != '\n')
            continue;
        size_t n = i - start;
        char *line = malloc(n ? n : 1);
        FUZZ_CHECK(line != NULL);
        memcpy(line, data + start, n);
        unsigned before = mask;
        mask = oci_accept_parse(mask, line, n);
        FUZZ_CHECK((mask & before) == before); /* lines only add */
        free(line);
        start = i + 1;
    }
    FUZZ_CHECK((mask & ~(unsigned)ACCEPT_ALL_BITS) == 0);
    FUZZ_CHECK(oci_accept_parse(mask, NULL, 0) == mask);

    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        check_refusal(mask, types[i]);
        FUZZ_CHECK(oci_is_manifest_type(types[i]));
    }

    char *s = fuzz_cstr(data, size);
    const char *why = oci_accept_refusal(mask, s);
    if (why)
        FUZZ_CHECK(oci_is_manifest_type(s));
    FUZZ_CHECK(oci_accept_refusal(mask, NULL) == NULL);
    free(s);
    return 0;
}
