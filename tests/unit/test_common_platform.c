/* common/platform.c: platform syntax, containerd's normalisation, matching, the User-Agent
 * hint, and bad or huge input. */
#include <string.h>

#include "check.h"
#include "common/platform.h"
#include "common/util.h"
#include "testutil.h"

static const char *fmt(const char *s)
{
    static char buf[PLATFORM_STR_MAX];
    platform_t p;
    const char *why = NULL;
    if (platform_parse(s, strlen(s), &p, &why) != 0)
        return why ? "ERR" : "ERR(no reason)";
    return platform_format(&p, buf, sizeof buf);
}

static void test_normalise(void)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"linux/amd64", "linux/amd64"},
        {"linux/x86_64", "linux/amd64"},
        {"linux/x86-64", "linux/amd64"},
        {"linux/amd64/v1", "linux/amd64"},
        {"linux/amd64/v3", "linux/amd64/v3"},
        {"linux/arm64/v8", "linux/arm64"},
        {"linux/arm64/8", "linux/arm64"},
        {"linux/aarch64", "linux/arm64"},
        {"linux/arm64", "linux/arm64"},
        {"linux/arm", "linux/arm/v7"},
        {"linux/arm/7", "linux/arm/v7"},
        {"linux/arm/v6", "linux/arm/v6"},
        {"linux/arm/6", "linux/arm/v6"},
        {"linux/armhf", "linux/arm/v7"},
        {"linux/armel", "linux/arm/v6"},
        {"linux/i386", "linux/386"},
        {"Linux/AMD64", "linux/amd64"},
        {"macos/arm64", "darwin/arm64"},
        {"arm64", "linux/arm64"},
        {"x86_64", "linux/amd64"},
        {"windows/amd64", "windows/amd64"},
        {"linux/ppc64le", "linux/ppc64le"},
        {"linux/s390x", "linux/s390x"},
        {"linux/riscv64", "linux/riscv64"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        CHECK_STR(fmt(cases[i].in), cases[i].out);
}

static void test_bad(void)
{
    static const char *bad[] = {"",          "/",           "linux/",          "/amd64",
                                "linux//v7", "a/b/c/d",     "linux/amd 64",    "linux/amd64/",
                                "linux/é",   "linux\n/x86", "linux/amd64/v8/", "linux/*"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        platform_t p;
        const char *why = NULL;
        if (platform_parse(bad[i], strlen(bad[i]), &p, &why) == 0) {
            fprintf(stderr, "accepted: \"%s\"\n", bad[i]);
            CHECK(0);
        }
        CHECK(why != NULL && why[0] != '\0');
    }
    /* Huge: a long component, and a long string of slashes. */
    char big[4096];
    memset(big, 'a', sizeof big);
    memcpy(big, "linux/", 6);
    platform_t p;
    const char *why = NULL;
    CHECK_INT(platform_parse(big, sizeof big, &p, &why), -1);
    CHECK(strstr(why, "longer than 31"));
    memset(big, '/', sizeof big);
    CHECK_INT(platform_parse(big, sizeof big, &p, &why), -1);
    /* 31 bytes is fine, 32 is not. */
    char edge[64] = "linux/";
    memset(edge + 6, 'x', 31);
    CHECK_INT(platform_parse(edge, 37, &p, &why), 0);
    edge[37] = 'x';
    CHECK_INT(platform_parse(edge, 38, &p, &why), -1);
    /* A NUL inside the given length is not a component character. */
    CHECK_INT(platform_parse("linux/a\0b", 9, &p, &why), -1);
}

static void test_parts_and_match(void)
{
    platform_t a, b, set[2];
    const char *why;
    CHECK_INT(platform_from_parts("linux", "arm64", "v8", &a), 0);
    CHECK_INT(platform_parse("linux/arm64", 11, &b, &why), 0);
    CHECK(platform_equal(&a, &b));
    CHECK_INT(platform_from_parts("linux", "arm", NULL, &a), 0);
    CHECK_INT(platform_parse("linux/arm/v7", 12, &b, &why), 0);
    CHECK(platform_equal(&a, &b));
    CHECK_INT(platform_from_parts("linux", "arm", "v6", &a), 0);
    CHECK(!platform_equal(&a, &b));
    CHECK_INT(platform_from_parts("unknown", "unknown", "", &a), 0);
    CHECK_INT(platform_from_parts("", "amd64", "", &a), -1);
    CHECK_INT(platform_from_parts("linux", NULL, "", &a), -1);
    CHECK_INT(platform_from_parts("linux", "amd64!", "", &a), -1);
    CHECK_INT(platform_parse("linux/amd64", 11, &set[0], &why), 0);
    CHECK_INT(platform_parse("linux/arm64", 11, &set[1], &why), 0);
    CHECK_INT(platform_from_parts("linux", "aarch64", "", &a), 0);
    CHECK(platform_in(set, 2, &a));
    CHECK_INT(platform_from_parts("linux", "arm", "v7", &a), 0);
    CHECK(!platform_in(set, 2, &a));
    CHECK(!platform_in(set, 0, &a));
    char small[8];
    CHECK_STR(platform_format(&set[0], small, sizeof small), "linux/a");
}

static void test_user_agent(void)
{
    static const struct {
        const char *ua, *want;
    } cases[] = {
        {"docker/24.0.7 go/go1.20.10 git-commit/311b9ff kernel/6.1.0-13-amd64 os/linux "
         "arch/amd64 UpstreamClient(Docker-Client/24.0.7 \\(linux\\))",
         "linux/amd64"},
        {"cri-o/1.28.1 go/go1.21 os/linux arch/arm64", "linux/arm64"},
        {"cri-o/1.28.1 os/linux arch/arm variant/v6", "linux/arm/v6"},
        {"containerd/1.7.2", NULL},
        {"skopeo/1.9.3", NULL},
        {"os/linux", NULL},
        {"xos/linux arch/amd64", NULL},
        {"os/linux arch/", NULL},
        {"", NULL},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        platform_t p;
        char buf[PLATFORM_STR_MAX];
        int rc = platform_from_user_agent(cases[i].ua, strlen(cases[i].ua), &p);
        if (!cases[i].want) {
            CHECK_INT(rc, -1);
            continue;
        }
        CHECK_INT(rc, 0);
        CHECK_STR(platform_format(&p, buf, sizeof buf), cases[i].want);
    }
    /* A huge User-Agent with an over-long arch. */
    static char ua[70000];
    memset(ua, 'z', sizeof ua);
    memcpy(ua, "os/linux arch/", 14);
    platform_t p;
    CHECK_INT(platform_from_user_agent(ua, sizeof ua, &p), -1);
}

int main(int argc, char **argv)
{
    static const test_case_t cases[] = {TEST_CASE(test_normalise), TEST_CASE(test_bad),
                                        TEST_CASE(test_parts_and_match),
                                        TEST_CASE(test_user_agent)};
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
