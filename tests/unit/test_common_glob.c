/* common/glob.c: the globs of policy, platform, access and retention rules. */
#include "check.h"
#include "common/glob.h"
#include "common/util.h"
#include "testutil.h"

static void test_match(void)
{
    static const struct {
        const char *p, *s;
        bool m;
    } cases[] = {
        {"docker.io/library/*", "docker.io/library/alpine", true},
        {"docker.io/library/*", "docker.io/library/a/b", false},
        {"docker.io/library/*", "docker.io/library", false},
        {"docker.io/**", "docker.io/acme/app", true},
        {"docker.io/**", "docker.io/x", true},
        {"docker.io/**", "docker.io", true},
        {"docker.io/**", "ghcr.io/x", false},
        {"**", "anything/at/all", true},
        {"**", "x", true},
        {"**/busybox", "docker.io/library/busybox", true},
        {"**/busybox", "busybox", true},
        {"**/busybox", "docker.io/library/busybox2", false},
        {"docker.io/**/tools/*", "docker.io/lab/tools/busybox", true},
        {"docker.io/**/tools/*", "docker.io/tools/busybox", true},
        {"docker.io/**/tools/*", "docker.io/a/b/c/tools/x", true},
        {"docker.io/**/tools/*", "docker.io/a/tools", false},
        {"docker.io/library/busybox", "docker.io/library/busybox", true},
        {"docker.io/library/busybox", "docker.io/library/busybo", false},
        {"docker.io/library/bu*x", "docker.io/library/busybox", true},
        {"docker.io/library/node?", "docker.io/library/node1", true},
        {"docker.io/library/node?", "docker.io/library/node", false},
        {"127.0.0.1:5000/*/*", "127.0.0.1:5000/lab/busybox", true},
        {"ghcr.io/a**", "ghcr.io/abc", true}, /* ** inside a component is * */
        {"ghcr.io/a**", "ghcr.io/abc/d", false},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        if (glob_match(cases[i].p, cases[i].s) != cases[i].m) {
            fprintf(stderr, "case %zu: %s ~ %s\n", i, cases[i].p, cases[i].s);
            CHECK(false);
        }
    }
}

static void test_valid(void)
{
    const char *why;
    CHECK(glob_valid("docker.io/**", &why));
    CHECK(!glob_valid("", &why));
    CHECK(!glob_valid("/a", &why));
    CHECK(!glob_valid("a/", &why));
    CHECK(!glob_valid("a//b", &why));
    CHECK(!glob_valid("a b", &why));
    CHECK(why != NULL);
}

/* Many ** and * must not take exponential time. */
static void test_adversarial(void)
{
    char p[GLOB_MAX + 1] = "";
    for (int i = 0; i < 20; i++)
        strcat(p, "**/");
    strcat(p, "x");
    char s[400] = "";
    for (int i = 0; i < 60; i++)
        strcat(s, "a/");
    strcat(s, "b");
    CHECK(!glob_match(p, s));
    CHECK(!glob_match("*a*a*a*a*a*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
}

static const test_case_t cases[] = {
    TEST_CASE(test_match),
    TEST_CASE(test_valid),
    TEST_CASE(test_adversarial),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
