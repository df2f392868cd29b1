/* negcache: upstream 404s remembered for a TTL, per (upstream, repository, reference),
 * bounded with least-recently-used eviction. */
#include "proxy/negcache.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "common/util.h"
#include "testutil.h"

static void test_ttl_and_keys(void)
{
    negcache_t *n;
    CHECK_INT(negcache_create(&n, 0), -EINVAL);
    CHECK_INT(negcache_create(&n, 16), 0);
    CHECK(!negcache_hit(n, "docker.io", "library/a", "latest", 0));
    negcache_put(n, "docker.io", "library/a", "latest", 1000, 10000);
    CHECK(negcache_hit(n, "docker.io", "library/a", "latest", 1000));
    CHECK(negcache_hit(n, "docker.io", "library/a", "latest", 10999));
    /* Another upstream, repository or reference is another key. */
    CHECK(!negcache_hit(n, "ghcr.io", "library/a", "latest", 2000));
    CHECK(!negcache_hit(n, "docker.io", "library/b", "latest", 2000));
    CHECK(!negcache_hit(n, "docker.io", "library/a", "v1", 2000));
    /* No concatenation ambiguity: the separator cannot occur in the parts. */
    negcache_put(n, "a", "b/c", "d", 0, 10000);
    CHECK(!negcache_hit(n, "a", "b", "c/d", 1));
    /* Expired: not a hit, and dropped. */
    size_t before = negcache_count(n);
    CHECK(!negcache_hit(n, "docker.io", "library/a", "latest", 11000));
    CHECK_INT(negcache_count(n), before - 1);
    /* A renewed put extends the time. */
    negcache_put(n, "x", "r", "t", 0, 100);
    negcache_put(n, "x", "r", "t", 50, 100);
    CHECK(negcache_hit(n, "x", "r", "t", 149));
    CHECK_INT(negcache_count(n), before + 0);
    negcache_forget(n, "x", "r", "t");
    CHECK(!negcache_hit(n, "x", "r", "t", 60));
    /* TTL 0 keeps nothing; NULL cache is a no-op. */
    negcache_put(n, "y", "r", "t", 0, 0);
    CHECK(!negcache_hit(n, "y", "r", "t", 0));
    negcache_put(NULL, "y", "r", "t", 0, 10);
    CHECK(!negcache_hit(NULL, "y", "r", "t", 0));
    /* Keys too long to hold are not cached (never truncated into another key). */
    char huge[2000];
    memset(huge, 'a', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    negcache_put(n, "u", huge, "t", 0, 1000);
    CHECK(!negcache_hit(n, "u", huge, "t", 1));
    negcache_free(n);
    negcache_free(NULL);
}

static void test_bound_and_lru(void)
{
    enum { MAX = 100 };
    negcache_t *n;
    CHECK_INT(negcache_create(&n, MAX), 0);
    char ref[80];
    /* A flood of distinct 404s keeps the count at the bound. */
    for (int i = 0; i < 10 * MAX; i++) {
        snprintf(ref, sizeof ref, "sha256:%064d", i);
        negcache_put(n, "up", "repo", ref, 0, 60000);
        CHECK(negcache_count(n) <= MAX);
    }
    CHECK_INT(negcache_count(n), MAX);
    /* The last MAX survive; the first went. */
    snprintf(ref, sizeof ref, "sha256:%064d", 0);
    CHECK(!negcache_hit(n, "up", "repo", ref, 1));
    snprintf(ref, sizeof ref, "sha256:%064d", 10 * MAX - 1);
    CHECK(negcache_hit(n, "up", "repo", ref, 1));
    /* A hit refreshes: the oldest-but-used entry outlives newer unused ones. */
    char oldest[80];
    snprintf(oldest, sizeof oldest, "sha256:%064d", 9 * MAX);
    CHECK(negcache_hit(n, "up", "repo", oldest, 1));
    for (int i = 0; i < MAX - 1; i++) {
        snprintf(ref, sizeof ref, "new%d", i);
        negcache_put(n, "up", "repo", ref, 0, 60000);
    }
    CHECK(negcache_hit(n, "up", "repo", oldest, 1));
    snprintf(ref, sizeof ref, "sha256:%064d", 9 * MAX + 1);
    CHECK(!negcache_hit(n, "up", "repo", ref, 1));
    negcache_free(n);
}

static const test_case_t cases[] = {
    TEST_CASE(test_ttl_and_keys),
    TEST_CASE(test_bound_and_lru),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
