/* proxy/access.c's rules (access_rules_decide): a table of who may read what, first match wins,
 * groups, anonymous and authenticated rules, explicit denials, Docker Hub names. */
#include "proxy/access.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

static config_t *load(const char *access_and_groups)
{
    const char *dir = test_tmpdir("winch-access");
    char pw[512];
    snprintf(pw, sizeof pw, "%s/htpasswd", dir);
    FILE *f = fopen(pw, "w");
    CHECK(f);
    CHECK_INT(fclose(f), 0);
    char json[4096];
    snprintf(json, sizeof json,
             "{\"upstreams\": [{\"name\": \"docker.io\", \"url\": \"http://127.0.0.1:1\"},"
             " {\"name\": \"ghcr.io\", \"url\": \"http://127.0.0.1:2\"},"
             " {\"name\": \"127.0.0.1:5001\", \"url\": \"http://127.0.0.1:5001\"}],"
             " \"auth\": {\"htpasswd\": \"%s\", %s}}",
             pw, access_and_groups);
    config_t *c = NULL;
    char err[512] = "";
    if (config_from_json(&c, json, strlen(json), "t.json", err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        CHECK(0);
    }
    return c;
}

typedef struct row {
    const char *user; /* NULL: anonymous */
    const char *upstream, *repo;
    enum access_decision want;
} row_t;

#define A ACCESS_ALLOW
#define C ACCESS_CHALLENGE
#define F ACCESS_FORBIDDEN

static void run(const config_t *c, const row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const row_t *r = &rows[i];
        enum access_decision d = access_rules_decide(c->auth, r->user, r->upstream, r->repo);
        if (d != r->want) {
            fprintf(stderr, "row %zu: user %s reading %s/%s: got %d, want %d\n", i,
                    r->user ? r->user : "(anonymous)", r->upstream, r->repo, (int)d, (int)r->want);
            CHECK(0);
        }
    }
}

static void test_mixed(void)
{
    config_t *c = load("\"groups\": {\"ci\": [\"runner1\", \"runner2\"], \"empty\": []},"
                       "\"access\": ["
                       " {\"match\": \"docker.io/library/**\", \"anonymous\": true},"
                       " {\"match\": \"docker.io/acme/secret/**\"},"
                       " {\"match\": \"docker.io/acme/**\", \"users\": [\"alice\"],"
                       "  \"groups\": [\"ci\", \"empty\"]},"
                       " {\"match\": \"ghcr.io/*/public\", \"anonymous\": true},"
                       " {\"match\": \"ghcr.io/**\", \"authenticated\": true},"
                       " {\"match\": \"127.0.0.1:5001/team-?/**\", \"groups\": [\"ci\"]},"
                       " {\"match\": \"**\", \"users\": [\"admin\"]}]");
    static const row_t rows[] = {
        /* Anonymous library images; everyone else too (anonymous means anyone). */
        {NULL, "docker.io", "library/busybox", A},
        {"alice", "docker.io", "library/busybox", A},
        {"nobody", "docker.io", "library/busybox", A},
        {NULL, "docker.io", "library/a/b/c", A},
        /* The pattern also matches "library" itself (it ends in slash-star-star). */
        {NULL, "docker.io", "library", A},
        /* An explicit denial before a wider grant: nobody, not even admin (first match). */
        {"alice", "docker.io", "acme/secret/x", F},
        {"admin", "docker.io", "acme/secret/x", F},
        {NULL, "docker.io", "acme/secret/x", C},
        {"alice", "docker.io", "acme/secret", F},
        /* Users and groups. */
        {"alice", "docker.io", "acme/app", A},
        {"runner2", "docker.io", "acme/app/sub", A},
        {"runner3", "docker.io", "acme/app", F},
        {NULL, "docker.io", "acme/app", C},
        {"Alice", "docker.io", "acme/app", F}, /* names are case-sensitive */
        {"admin", "docker.io", "acme/app", F}, /* the acme rule matched first */
        /* Patterns are per upstream: docker.io/acme is not ghcr.io/acme. */
        {"alice", "ghcr.io", "acme/app", A}, /* authenticated */
        {NULL, "ghcr.io", "acme/app", C},
        {NULL, "ghcr.io", "acme/public", A},
        {NULL, "ghcr.io", "acme/x/public", C}, /* '*' is one component */
        /* '?' and an upstream with a port. */
        {"runner1", "127.0.0.1:5001", "team-a/app", A},
        {"runner1", "127.0.0.1:5001", "team-ab/app", F},
        {"alice", "127.0.0.1:5001", "team-a/app", F},
        {"admin", "127.0.0.1:5001", "team-ab/app", A},
        /* The catch-all. */
        {"admin", "docker.io", "other/thing", A},
        {"alice", "docker.io", "other/thing", F},
        {NULL, "docker.io", "other/thing", C},
    };
    run(c, rows, ARRAY_SIZE(rows));
    config_free(c);
}

static void test_defaults_and_no_match(void)
{
    /* No "access": every authenticated user reads everything; anonymous nothing. */
    config_t *c = load("\"realm\": \"r\"");
    static const row_t d[] = {
        {"alice", "docker.io", "library/busybox", A},
        {"x", "127.0.0.1:5001", "a/b/c/d", A},
        {NULL, "docker.io", "library/busybox", C},
    };
    run(c, d, ARRAY_SIZE(d));
    config_free(c);

    /* No rule matches: denied (401 anonymous, 403 authenticated). */
    c = load("\"access\": [{\"match\": \"docker.io/library/*\", \"anonymous\": true}]");
    static const row_t n[] = {
        {NULL, "docker.io", "library/busybox", A},
        {NULL, "docker.io", "library/busybox/extra", C},
        {"alice", "docker.io", "library/busybox/extra", F},
        {"alice", "ghcr.io", "library/busybox", F},
        {NULL, "ghcr.io", "library/busybox", C},
    };
    run(c, n, ARRAY_SIZE(n));
    config_free(c);

    /* An empty list denies everything. */
    c = load("\"access\": []");
    static const row_t e[] = {
        {NULL, "docker.io", "library/busybox", C},
        {"admin", "docker.io", "library/busybox", F},
    };
    run(c, e, ARRAY_SIZE(e));
    config_free(c);
}

static void test_long_names(void)
{
    /* A name longer than the decision's buffer never matches (and never overflows). */
    config_t *c = load("\"access\": [{\"match\": \"**\", \"anonymous\": true}]");
    char repo[2000];
    memset(repo, 'a', sizeof repo - 1);
    repo[sizeof repo - 1] = '\0';
    CHECK_INT(access_rules_decide(c->auth, NULL, "docker.io", repo), C);
    CHECK_INT(access_rules_decide(c->auth, NULL, "docker.io", "x"), A);
    config_free(c);
}

static const test_case_t cases[] = {TEST_CASE(test_mixed), TEST_CASE(test_defaults_and_no_match),
                                    TEST_CASE(test_long_names)};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
