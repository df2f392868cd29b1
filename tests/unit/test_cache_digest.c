/* Digesters and digest_verify against published test vectors (FIPS 180-2). */
#include <errno.h>
#include <string.h>

#include "cache/cache.h"
#include "check.h"
#include "common/err.h"
#include "common/util.h"
#include "testutil.h"

#define SHA256_EMPTY "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA256_ABC "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA512_ABC                                                                                 \
    "sha512:"                                                                                      \
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c"       \
    "23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
/* "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq" */
#define SHA256_448 "sha256:248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"

static void digest_of(enum ref_alg alg, const void *data, size_t len, size_t step,
                      char out[REF_DIGEST_MAX + 1])
{
    digester_t *d;
    CHECK_INT(digester_new(&d, alg), 0);
    const char *p = data;
    for (size_t off = 0; off < len; off += step)
        digester_update(d, p + off, len - off < step ? len - off : step);
    CHECK_INT(digester_final(d, out), 0);
    digester_free(d);
}

static void test_vectors(void)
{
    char out[REF_DIGEST_MAX + 1];
    static const char msg448[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

    digest_of(REF_ALG_SHA256, "", 0, 1, out);
    CHECK_STR(out, SHA256_EMPTY);
    digest_of(REF_ALG_SHA256, "abc", 3, 3, out);
    CHECK_STR(out, SHA256_ABC);
    digest_of(REF_ALG_SHA512, "abc", 3, 3, out);
    CHECK_STR(out, SHA512_ABC);
    /* Incremental updates in odd pieces give the same answer as one update. */
    for (size_t step = 1; step <= sizeof msg448; step += 7) {
        digest_of(REF_ALG_SHA256, msg448, strlen(msg448), step, out);
        CHECK_STR(out, SHA256_448);
    }
}

static void test_final_once(void)
{
    digester_t *d;
    char out[REF_DIGEST_MAX + 1];
    CHECK_INT(digester_new(&d, REF_ALG_SHA256), 0);
    digester_update(d, "abc", 3);
    CHECK_INT(digester_final(d, out), 0);
    CHECK_STR(out, SHA256_ABC);
    CHECK(digester_final(d, out) < 0);
    digester_free(d);
    digester_free(NULL);
    CHECK_INT(digester_new(&d, (enum ref_alg)99), -ENOTSUP);
}

static void test_verify(void)
{
    CHECK_INT(digest_verify(SHA256_ABC, "abc", 3), 0);
    CHECK_INT(digest_verify(SHA512_ABC, "abc", 3), 0);
    CHECK_INT(digest_verify(SHA256_EMPTY, NULL, 0), 0);
    CHECK_INT(digest_verify(SHA256_ABC, "abd", 3), WE_DIGEST);
    CHECK_INT(digest_verify(SHA256_EMPTY, "abc", 3), WE_DIGEST);
    CHECK_INT(digest_verify("sha256:abc", "abc", 3), WE_INVALID);
    CHECK_INT(digest_verify("not a digest", "abc", 3), WE_INVALID);
    /* Uppercase hex is not a valid sha256 encoding. */
    CHECK_INT(
        digest_verify("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
                      "abc", 3),
        WE_INVALID);
    CHECK_INT(digest_verify("blake3:0123456789abcdef", "abc", 3), -ENOTSUP);
}

static const test_case_t cases[] = {
    TEST_CASE(test_vectors),
    TEST_CASE(test_final_once),
    TEST_CASE(test_verify),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
