/* Authorization headers (proxy/authn.h): authn_basic_parse over arbitrary values. It never
 * writes past its buffers, and a credential it accepts is what authn.h promises: a user of at
 * most AUTHN_USER_MAX bytes without control bytes, a password of at most AUTHN_PASS_MAX bytes
 * without NUL, both NUL-terminated at the lengths it reports. */
#include <strings.h>

#include "common/err.h"
#include "fuzz.h"
#include "proxy/authn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *value = fuzz_cstr(data, size);
    char user[AUTHN_USER_MAX + 1], pass[AUTHN_PASS_MAX + 1];
    size_t ulen = (size_t)-1, plen = (size_t)-1;
    int rc = authn_basic_parse(value, user, sizeof user, &ulen, pass, sizeof pass, &plen);
    FUZZ_CHECK(rc == 0 || rc == 1 || rc == WE_INVALID);
    if (rc == 0) {
        FUZZ_CHECK(ulen <= AUTHN_USER_MAX && plen <= AUTHN_PASS_MAX);
        FUZZ_CHECK(strlen(user) == ulen && strlen(pass) == plen);
        for (size_t i = 0; i < ulen; i++)
            FUZZ_CHECK((unsigned char)user[i] >= 0x20 && (unsigned char)user[i] != 0x7f &&
                       user[i] != ':');
        /* The scheme was Basic. */
        const char *v = value;
        while (*v == ' ' || *v == '\t')
            v++;
        FUZZ_CHECK(strncasecmp(v, "basic", 5) == 0);
    }
    free(value);
    return 0;
}
