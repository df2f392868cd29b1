/* Token endpoint answers (proxy/auth.h): auth_token_parse over arbitrary bytes, and
 * auth_rfc3339_ms over the same bytes as a string. A token that is accepted must be one a
 * header can carry, within AUTH_MAX_TOKEN, and its expiry must lie in the promised window. */
#include <errno.h>

#include "common/err.h"
#include "fuzz.h"
#include "proxy/auth.h"

#define NOW_MS 1714564800000LL /* 2024-05-01T12:00:00Z */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = malloc(size ? size : 1);
    FUZZ_CHECK(body != NULL);
    memcpy(body, data, size);
    char *token = NULL;
    int64_t expires = 0;
    int rc = auth_token_parse(body, size, NOW_MS, &token, &expires);
    FUZZ_CHECK(rc == 0 || rc == WE_PROTO || rc == -ENOMEM);
    if (rc == 0) {
        FUZZ_CHECK(token != NULL);
        size_t n = strlen(token);
        FUZZ_CHECK(n > 0 && n <= AUTH_MAX_TOKEN);
        FUZZ_CHECK(fuzz_printable_line(token));
        /* issued_at is never after now; expires_in is at least 60 s and at most a year. */
        FUZZ_CHECK(expires <= NOW_MS + 366LL * 86400 * 1000);
        free(token);
    }
    free(body);

    char *s = fuzz_cstr(data, size);
    int64_t ms = 0;
    rc = auth_rfc3339_ms(s, &ms);
    FUZZ_CHECK(rc == 0 || rc == WE_INVALID);
    free(s);
    return 0;
}
