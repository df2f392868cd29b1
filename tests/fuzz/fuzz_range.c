/* The HTTP grammar of proxy/http.h: Range values and If-None-Match lists. A usable range must
 * resolve inside any representation it fits, and an unusable one must mean "the whole". */
#include "fuzz.h"
#include "proxy/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *v = fuzz_cstr(data, size);
    http_range_t r;
    http_range_parse(v, &r);
    FUZZ_CHECK(r.kind == HTTP_RANGE_OK || r.kind == HTTP_RANGE_BAD);
    if (r.kind == HTTP_RANGE_OK)
        FUZZ_CHECK(r.suffix ? r.last > 0 : r.first <= r.last);
    static const uint64_t sizes[] = {0, 1, 10, 1000, UINT64_MAX / 2};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint64_t first, last;
        int st = http_range_resolve(&r, sizes[i], &first, &last);
        FUZZ_CHECK(st == 200 || st == 206 || st == 416);
        if (st == 200)
            FUZZ_CHECK(first == 0 && (sizes[i] == 0 || last == sizes[i] - 1));
        if (st == 206)
            FUZZ_CHECK(first <= last && last < sizes[i]);
    }
    /* The If-None-Match matcher over the same bytes, against a fixed digest. */
    static const char digest[] =
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    bool m = http_etag_matches(v, digest);
    if (strcmp(v, "*") == 0)
        FUZZ_CHECK(m);
    else if (m)
        FUZZ_CHECK(strstr(v, digest) != NULL);
    free(v);
    return 0;
}
