/* WWW-Authenticate parsing (proxy/auth.h): auth_challenge_parse over one or more header lines
 * (split at '\n', merged into one best challenge as the upstream client does), then the token
 * cache key and token URL built from a Bearer challenge. */
#include "common/err.h"
#include "fuzz.h"
#include "proxy/auth.h"

static void check_terminated(const char *s, size_t cap)
{
    FUZZ_CHECK(strnlen(s, cap) < cap);
}

static void check_bearer(const auth_challenge_t *c)
{
    static char buf[AUTH_MAX_KEY + 4096];
    int rc = auth_token_key(c, buf, AUTH_MAX_KEY);
    FUZZ_CHECK(rc == 0 || rc == WE_TOOBIG || rc == WE_INVALID);
    if (rc == 0) {
        /* realm "\n" service "\n" scopes */
        size_t rl = strlen(c->realm), sl = strlen(c->service);
        FUZZ_CHECK(strlen(buf) < AUTH_MAX_KEY);
        FUZZ_CHECK(strncmp(buf, c->realm, rl) == 0 && buf[rl] == '\n');
        FUZZ_CHECK(strncmp(buf + rl + 1, c->service, sl) == 0 && buf[rl + 1 + sl] == '\n');
    }
    int krc = rc;
    rc = auth_token_url(c, buf, sizeof buf);
    FUZZ_CHECK(rc == 0 || rc == WE_TOOBIG || rc == WE_INVALID);
    if (rc == 0) {
        FUZZ_CHECK(strlen(buf) < sizeof buf);
        FUZZ_CHECK(strncmp(buf, c->realm, strlen(c->realm)) == 0);
        FUZZ_CHECK(krc != WE_INVALID); /* both refuse too many scopes */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    auth_challenge_t best;
    memset(&best, 0, sizeof best);
    int total = 0;
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != '\n')
            continue;
        char *line = fuzz_cstr(data + start, i - start);
        int rc = auth_challenge_parse(line, &best);
        FUZZ_CHECK(rc >= 0 || rc == WE_INVALID);
        if (rc > 0)
            total += rc;
        free(line);
        start = i + 1;
    }
    FUZZ_CHECK(best.scheme == AUTH_NONE || best.scheme == AUTH_BASIC || best.scheme == AUTH_BEARER);
    FUZZ_CHECK((best.scheme != AUTH_NONE) == (total > 0));
    check_terminated(best.realm, sizeof best.realm);
    check_terminated(best.service, sizeof best.service);
    check_terminated(best.scope, sizeof best.scope);
    check_terminated(best.error, sizeof best.error);
    if (best.scheme == AUTH_BEARER) {
        FUZZ_CHECK(best.realm[0] != '\0');
        check_bearer(&best);
    }
    return 0;
}
