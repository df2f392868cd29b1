/* Reference grammars (docs/protocol.md, "Grammars"): repository names, tags, digests. */
#include <errno.h>
#include <string.h>

#include "common/err.h"
#include "common/ref.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

static const char hex64[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void test_names(void)
{
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"alpine", true},
        {"library/alpine", true},
        {"foo/bar/baz", true},
        {"a", true},
        {"0", true},
        {"a.b", true},
        {"a_b", true},
        {"a__b", true},
        {"a-b", true},
        {"a---b", true},
        {"my-org/my.repo_name__x--y", true},
        {"a1/b2/c3/d4", true},
        {"", false},
        {"Alpine", false},
        {"library/Alpine", false},
        {"a..b", false},
        {"a___b", false},
        {"a.-b", false},
        {"a_-b", false},
        {"-a", false},
        {"a-", false},
        {".a", false},
        {"a.", false},
        {"_a", false},
        {"a/", false},
        {"/a", false},
        {"a//b", false},
        {"a b", false},
        {"a:b", false},
        {"127.0.0.1:5001/foo", false},
        {"a@b", false},
        {"a/../b", false},
        {"é", false},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        bool got = ref_name_valid(cases[i].s, strlen(cases[i].s));
        if (got != cases[i].ok)
            fprintf(stderr, "name case %zu \"%s\"\n", i, cases[i].s);
        CHECK_INT(got, cases[i].ok);
    }

    /* Length: 255 is the limit, counting every byte including the slashes. */
    char buf[300];
    memset(buf, 'a', sizeof(buf));
    CHECK(ref_name_valid(buf, 255));
    CHECK(!ref_name_valid(buf, 256));
    buf[100] = '/';
    CHECK(ref_name_valid(buf, 255));
    CHECK(!ref_name_valid(buf, 256));
    /* Only n bytes are read: a valid prefix of an invalid string is valid. */
    CHECK(ref_name_valid("abc/DEF", 3));
    CHECK(!ref_name_valid("abc/DEF", 4));
}

static void test_tags(void)
{
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"latest", true}, {"v1.2.3", true},     {"3.20", true}, {"_x", true},   {"A-b_C.d", true},
        {"0", true},      {"sha256-abc", true}, {"", false},    {".x", false},  {"-x", false},
        {"a:b", false},   {"a/b", false},       {"a b", false}, {"a+b", false}, {"a@b", false},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        bool got = ref_tag_valid(cases[i].s, strlen(cases[i].s));
        if (got != cases[i].ok)
            fprintf(stderr, "tag case %zu \"%s\"\n", i, cases[i].s);
        CHECK_INT(got, cases[i].ok);
    }
    char buf[200];
    memset(buf, 'x', sizeof(buf));
    CHECK(ref_tag_valid(buf, 128));
    CHECK(!ref_tag_valid(buf, 129));
}

static void test_digests(void)
{
    char sha256[100], sha256_upper[100], sha256_short[100], sha256_long[100];
    char sha512[200], sha512_short[200], blake3[100], mixed[100];
    snprintf(sha256, sizeof(sha256), "sha256:%s", hex64);
    snprintf(sha256_short, sizeof(sha256_short), "sha256:%.63s", hex64);
    snprintf(sha256_long, sizeof(sha256_long), "sha256:%s0", hex64);
    snprintf(sha512, sizeof(sha512), "sha512:%s%s", hex64, hex64);
    snprintf(sha512_short, sizeof(sha512_short), "sha512:%s", hex64);
    snprintf(blake3, sizeof(blake3), "blake3:%s", hex64);
    snprintf(mixed, sizeof(mixed), "sha256+b64u:%s", "LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564");
    strcpy(sha256_upper, "sha256:");
    for (size_t i = 0; i < 64; i++)
        sha256_upper[7 + i] = "0123456789ABCDEF"[i % 16];
    sha256_upper[71] = '\0';

    static const char long_unknown[] =
        "foo:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    const struct {
        const char *s;
        int rc;
        enum ref_alg alg;
    } cases[] = {
        {sha256, 0, REF_ALG_SHA256},
        {sha512, 0, REF_ALG_SHA512},
        {sha256_upper, WE_INVALID, 0},
        {sha256_short, WE_INVALID, 0},
        {sha256_long, WE_INVALID, 0},
        {sha512_short, WE_INVALID, 0},
        {"sha256:abc", WE_INVALID, 0},
        {"sha256:totallywrong", WE_INVALID, 0},
        {"sha256:", WE_INVALID, 0},
        {":abc", WE_INVALID, 0},
        {"sha256", WE_INVALID, 0},
        {"", WE_INVALID, 0},
        {"SHA256:abc", WE_INVALID, 0},
        {"sha256::abc", WE_INVALID, 0},
        {"sha256:ab/cd", WE_INVALID, 0},
        {"sha256:ab cd", WE_INVALID, 0},
        {"sha256+:abc", WE_INVALID, 0},
        {"+sha256:abc", WE_INVALID, 0},
        {"sha--256:abc", WE_INVALID, 0},
        {blake3, -ENOTSUP, 0},
        {mixed, -ENOTSUP, 0},
        {"md5:abc=", -ENOTSUP, 0},
        {"multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", -ENOTSUP, 0},
        {long_unknown, WE_INVALID, 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        enum ref_alg alg = 0;
        int rc = ref_digest_parse(cases[i].s, strlen(cases[i].s), &alg);
        if (rc != cases[i].rc)
            fprintf(stderr, "digest case %zu \"%s\"\n", i, cases[i].s);
        CHECK_INT(rc, cases[i].rc);
        if (rc == 0)
            CHECK_INT(alg, cases[i].alg);
    }
    /* alg may be NULL. */
    CHECK_INT(ref_digest_parse(sha256, strlen(sha256), NULL), 0);
    /* Only n bytes are read. */
    CHECK_INT(ref_digest_parse(sha256, strlen(sha256) - 1, NULL), WE_INVALID);

    CHECK_INT(ref_alg_size(REF_ALG_SHA256), 32);
    CHECK_INT(ref_alg_size(REF_ALG_SHA512), 64);
    CHECK_STR(ref_alg_name(REF_ALG_SHA256), "sha256");
    CHECK_STR(ref_alg_name(REF_ALG_SHA512), "sha512");
}

static const test_case_t cases[] = {
    TEST_CASE(test_names),
    TEST_CASE(test_tags),
    TEST_CASE(test_digests),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
