/* The reference grammar (common/ref.h): ref_name_valid, ref_tag_valid and ref_digest_parse,
 * each checked against an independent oracle, the grammar written as a POSIX extended
 * regular expression (docs/protocol.md, "Grammars"), so a disagreement in either direction is a
 * finding. */
#include <errno.h>
#include <regex.h>

#include "common/err.h"
#include "common/ref.h"
#include "fuzz.h"

#define COMPONENT "[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*"
static const char name_re[] = "^" COMPONENT "(/" COMPONENT ")*$";
static const char tag_re[] = "^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";
static const char digest_re[] = "^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$";
static const char sha256_re[] = "^sha256:[0-9a-f]{64}$";
static const char sha512_re[] = "^sha512:[0-9a-f]{128}$";

static regex_t re_name, re_tag, re_digest, re_sha256, re_sha512;

static void compile(regex_t *re, const char *pattern)
{
    if (regcomp(re, pattern, REG_EXTENDED | REG_NOSUB) != 0)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    compile(&re_name, name_re);
    compile(&re_tag, tag_re);
    compile(&re_digest, digest_re);
    compile(&re_sha256, sha256_re);
    compile(&re_sha512, sha512_re);
    return 0;
}

static int matches(const regex_t *re, const char *s, size_t n)
{
    /* regexec stops at a NUL; no grammar admits one, so a NUL means "no match". */
    if (memchr(s, '\0', n))
        return 0;
    return regexec(re, s, 0, NULL, 0) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);

    bool name_ok = ref_name_valid(s, size);
    FUZZ_CHECK(name_ok == (size <= REF_NAME_MAX && matches(&re_name, s, size)));

    bool tag_ok = ref_tag_valid(s, size);
    FUZZ_CHECK(tag_ok == matches(&re_tag, s, size));

    enum ref_alg alg = 0;
    int rc = ref_digest_parse(s, size, &alg);
    if (size > REF_DIGEST_MAX || !matches(&re_digest, s, size)) {
        FUZZ_CHECK(rc == WE_INVALID);
    } else if (matches(&re_sha256, s, size)) {
        FUZZ_CHECK(rc == 0 && alg == REF_ALG_SHA256);
        FUZZ_CHECK(strcmp(ref_alg_name(alg), "sha256") == 0 && ref_alg_size(alg) == 32);
    } else if (matches(&re_sha512, s, size)) {
        FUZZ_CHECK(rc == 0 && alg == REF_ALG_SHA512);
        FUZZ_CHECK(strcmp(ref_alg_name(alg), "sha512") == 0 && ref_alg_size(alg) == 64);
    } else if (strncmp(s, "sha256:", 7) == 0 || strncmp(s, "sha512:", 7) == 0) {
        /* A registered algorithm with the wrong encoding is malformed, not unsupported. */
        FUZZ_CHECK(rc == WE_INVALID);
    } else {
        FUZZ_CHECK(rc == -ENOTSUP);
    }
    /* The out-parameter is optional. */
    FUZZ_CHECK(ref_digest_parse(s, size, NULL) == rc);

    free(s);
    return 0;
}
