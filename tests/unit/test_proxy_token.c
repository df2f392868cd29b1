/* proxy/token.c: tokens round-trip, expire, and refuse every change to a byte, another key,
 * other spellings and oversized input. */
#include "proxy/token.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

static void test_roundtrip(void)
{
    token_key_t k;
    CHECK_INT(token_key_init(&k), 0);
    char tok[TOKEN_MAX], user[300];
    const char *users[] = {"alice", "", "CN With Spaces", "d\xc3\xa9", "a:b"};
    for (size_t i = 0; i < ARRAY_SIZE(users); i++) {
        CHECK_INT(token_mint(&k, users[i], 10000, tok, sizeof tok), 0);
        CHECK(strncmp(tok, "wt1.", 4) == 0);
        CHECK(strlen(tok) < TOKEN_MAX);
        /* Only URL-safe characters: tokens go into headers as they are. */
        for (const char *p = tok; *p; p++)
            CHECK((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.');
        strcpy(user, "junk");
        CHECK_INT(token_verify(&k, tok, 9999, user, sizeof user), 0);
        CHECK_STR(user, users[i]);
        /* Expired at its expiry and after. */
        CHECK_INT(token_verify(&k, tok, 10000, user, sizeof user), WE_NOTFOUND);
        CHECK_INT(token_verify(&k, tok, 99999, user, sizeof user), WE_NOTFOUND);
    }
    /* The longest user fits; longer ones and newlines are refused. */
    char longu[258];
    memset(longu, 'u', 256);
    longu[256] = '\0';
    CHECK_INT(token_mint(&k, longu, 1, tok, sizeof tok), 0);
    CHECK_INT(token_verify(&k, tok, 0, user, sizeof user), 0);
    CHECK_STR(user, longu);
    CHECK_INT(token_verify(&k, tok, 0, user, 256), WE_INVALID); /* no room */
    longu[256] = 'u';
    longu[257] = '\0';
    CHECK_INT(token_mint(&k, longu, 1, tok, sizeof tok), WE_INVALID);
    CHECK_INT(token_mint(&k, "a\nb", 1, tok, sizeof tok), WE_INVALID);
    CHECK_INT(token_mint(&k, "alice", 1, tok, 20), WE_TOOBIG);
}

static void test_forgery(void)
{
    token_key_t k, other;
    CHECK_INT(token_key_init(&k), 0);
    CHECK_INT(token_key_init(&other), 0);
    CHECK(memcmp(k.k, other.k, sizeof k.k) != 0);
    char tok[TOKEN_MAX], bad[TOKEN_MAX], user[300];
    CHECK_INT(token_mint(&k, "alice", 1000000, tok, sizeof tok), 0);
    /* Another key's token. */
    CHECK_INT(token_verify(&other, tok, 0, user, sizeof user), WE_INVALID);
    /* Every single-byte change. */
    size_t n = strlen(tok);
    static const char repl[] = "Aa0-_.=x";
    for (size_t i = 0; i < n; i++) {
        for (size_t r = 0; r < sizeof repl - 1; r++) {
            if (tok[i] == repl[r])
                continue;
            strcpy(bad, tok);
            bad[i] = repl[r];
            int rc = token_verify(&k, bad, 0, user, sizeof user);
            if (rc != WE_INVALID) {
                fprintf(stderr, "accepted %s (from %s)\n", bad, tok);
                CHECK(0);
            }
        }
    }
    /* Truncations, extensions and junk. */
    for (size_t i = 0; i < n; i++) {
        memcpy(bad, tok, i);
        bad[i] = '\0';
        CHECK_INT(token_verify(&k, bad, 0, user, sizeof user), WE_INVALID);
    }
    snprintf(bad, sizeof bad, "%sA", tok);
    CHECK_INT(token_verify(&k, bad, 0, user, sizeof user), WE_INVALID);
    snprintf(bad, sizeof bad, "%s.x", tok);
    CHECK_INT(token_verify(&k, bad, 0, user, sizeof user), WE_INVALID);
    CHECK_INT(token_verify(&k, "", 0, user, sizeof user), WE_INVALID);
    CHECK_INT(token_verify(&k, "wt1.", 0, user, sizeof user), WE_INVALID);
    CHECK_INT(token_verify(&k, "wt1..", 0, user, sizeof user), WE_INVALID);
    CHECK_INT(token_verify(&k, "Basic YWxpY2U6c2VjcmV0", 0, user, sizeof user), WE_INVALID);
    char huge[4096];
    memset(huge, 'A', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    memcpy(huge, "wt1.", 4);
    huge[1000] = '.';
    CHECK_INT(token_verify(&k, huge, 0, user, sizeof user), WE_INVALID);
    /* A forged payload with a MAC of the right length. */
    CHECK_INT(token_verify(&k,
                           "wt1.YWRtaW4KOTk5OTk5OTk5OTk."
                           "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                           0, user, sizeof user),
              WE_INVALID);
    CHECK_INT(token_verify(&k, tok, 0, user, sizeof user), 0);
}

static const test_case_t cases[] = {TEST_CASE(test_roundtrip), TEST_CASE(test_forgery)};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
