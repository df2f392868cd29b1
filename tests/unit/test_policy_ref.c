/* policy_ref_parse: references as winch pin and winch policy explain read them, with the
 * router's rules (configured upstream first, Docker Hub normalisation, hosts never guessed). */
#include "policy/policy.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

#define D64 "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static config_t *load(const char *json)
{
    config_t *c = NULL;
    char err[256];
    if (config_from_json(&c, json, strlen(json), "t", err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        CHECK(0);
    }
    return c;
}

static void test_parse(void)
{
    config_t *c =
        load("{\"upstreams\": [{\"name\": \"docker.io\", \"url\": \"http://127.0.0.1:1\"},"
             "{\"name\": \"ghcr.io\", \"url\": \"http://127.0.0.1:2\"},"
             "{\"name\": \"127.0.0.1:5001\", \"url\": \"http://127.0.0.1:5001\"}]}");
    static const struct {
        const char *in, *up, *repo, *tag, *digest;
    } ok[] = {
        {"busybox", "docker.io", "library/busybox", "latest", ""},
        {"busybox:1.36", "docker.io", "library/busybox", "1.36", ""},
        {"library/busybox:stable", "docker.io", "library/busybox", "stable", ""},
        {"docker.io/busybox:stable", "docker.io", "library/busybox", "stable", ""},
        {"index.docker.io/acme/app:1", "docker.io", "acme/app", "1", ""},
        {"acme/app:production", "docker.io", "acme/app", "production", ""},
        {"ghcr.io/acme/app:1.2", "ghcr.io", "acme/app", "1.2", ""},
        {"ghcr.io/app", "ghcr.io", "app", "latest", ""},
        {"ghcr.io/acme/app@" D64, "ghcr.io", "acme/app", "", D64},
        {"busybox:1.36@" D64, "docker.io", "library/busybox", "", D64},
        {"127.0.0.1:5001/lab/tools/busybox:1.36", "127.0.0.1:5001", "lab/tools/busybox", "1.36",
         ""},
        {"a/b/c/d:x_Y-1.2", "docker.io", "a/b/c/d", "x_Y-1.2", ""},
    };
    for (size_t i = 0; i < ARRAY_SIZE(ok); i++) {
        policy_ref_t r;
        char err[256] = "";
        int rc = policy_ref_parse(c, ok[i].in, &r, err, sizeof err);
        if (rc != 0 || strcmp(r.upstream->name, ok[i].up) != 0 || strcmp(r.repo, ok[i].repo) != 0 ||
            strcmp(r.tag, ok[i].tag) != 0 || strcmp(r.digest, ok[i].digest) != 0) {
            fprintf(stderr, "%s: rc %d (%s) -> %s %s %s %s\n", ok[i].in, rc, err,
                    rc ? "" : r.upstream->name, r.repo, r.tag, r.digest);
            CHECK(0);
        }
    }
    static const struct {
        const char *in, *why;
    } bad[] = {
        {"", "1..1024 bytes"},
        {"quay.io/x/y:1", "registry quay.io is not a configured upstream"},
        {"localhost/x", "registry localhost is not a configured upstream"},
        {"127.0.0.1:5002/x:1", "registry 127.0.0.1:5002 is not a configured upstream"},
        {"BusyBox", "not a repository name"},
        {"busybox:", "is not a tag"},
        {"busybox:.hidden", "is not a tag"},
        {"busybox@sha256:abc", "not a sha256 or sha512 digest"},
        {"busybox@", "not a sha256 or sha512 digest"},
        {"ghcr.io/", "empty"},
        {"bus box", "no spaces"},
        {"busybox\n", "no spaces"},
        {"a//b", "not a repository name"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        policy_ref_t r;
        char err[256] = "";
        int rc = policy_ref_parse(c, bad[i].in, &r, err, sizeof err);
        if (rc != WE_INVALID || !strstr(err, bad[i].why)) {
            fprintf(stderr, "%s: rc %d err %s (want %s)\n", bad[i].in, rc, err, bad[i].why);
            CHECK(0);
        }
    }
    /* Huge input: refused by length, never copied. */
    static char huge[5000];
    memset(huge, 'a', sizeof huge - 1);
    policy_ref_t r;
    char err[256];
    CHECK_INT(policy_ref_parse(c, huge, &r, err, sizeof err), WE_INVALID);
    char tag[200] = "busybox:";
    memset(tag + 8, 'x', 150);
    CHECK_INT(policy_ref_parse(c, tag, &r, err, sizeof err), WE_INVALID);
    config_free(c);
}

/* On an upstream that is not Docker Hub, one-component names stay as they are. */
static void test_not_dockerhub(void)
{
    config_t *c =
        load("{\"upstreams\": [{\"name\": \"ghcr.io\", \"url\": \"http://127.0.0.1:2\"}]}");
    policy_ref_t r;
    char err[256];
    CHECK_INT(policy_ref_parse(c, "app:1", &r, err, sizeof err), 0);
    CHECK_STR(r.upstream->name, "ghcr.io");
    CHECK_STR(r.repo, "app");
    CHECK_INT(policy_ref_parse(c, "docker.io/x:1", &r, err, sizeof err), WE_INVALID);
    config_free(c);
}

int main(int argc, char **argv)
{
    static const test_case_t cases[] = {TEST_CASE(test_parse), TEST_CASE(test_not_dockerhub)};
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
