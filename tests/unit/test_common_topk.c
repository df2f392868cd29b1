/* common/topk.c: the space-saving table behind the status page's top images by bytes. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/topk.h"
#include "common/util.h"
#include "testutil.h"

static void add(topk_t *t, const char *k, uint64_t n)
{
    topk_add(t, k, strlen(k), n);
}

static void test_exact_until_full(void)
{
    topk_t *t;
    CHECK_INT(topk_create(&t, 4, 32), 0);
    add(t, "a", 10);
    add(t, "b", 30);
    add(t, "a", 5);
    add(t, "c", 15);
    topk_entry_t e[8];
    CHECK_INT((int)topk_top(t, e, 8), 3);
    CHECK_STR(e[0].key, "b");
    CHECK_INT((int)e[0].count, 30);
    CHECK_STR(e[1].key, "a"); /* 15, tie with c broken by key */
    CHECK_INT((int)e[1].count, 15);
    CHECK_STR(e[2].key, "c");
    CHECK_INT((int)e[2].error, 0);
    CHECK_INT((int)topk_replaced(t), 0);
    CHECK_INT((int)topk_top(t, e, 1), 1);
    CHECK_STR(e[0].key, "b");
    CHECK_INT((int)topk_top(t, e, 0), 0);
    /* Keys are cut to key_max. */
    char long_key[100];
    memset(long_key, 'x', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    add(t, long_key, 1);
    CHECK_INT((int)topk_top(t, e, 8), 4);
    CHECK_INT((int)strlen(e[3].key), 32);
    topk_free(t);
    CHECK_INT(topk_create(&t, 0, 32), -EINVAL);
    topk_free(NULL);
    topk_add(NULL, "a", 1, 1);
}

/* Two heavy keys among a flood of 100000 distinct light ones: the table stays at its capacity,
 * the heavy keys stay first with counts within their stated error of the truth. */
static void test_flood(void)
{
    topk_t *t;
    CHECK_INT(topk_create(&t, 64, 64), 0);
    char k[64];
    for (int i = 0; i < 100000; i++) {
        snprintf(k, sizeof k, "docker.io/flood/r%d", i);
        add(t, k, 100);
        if (i % 1000 == 0) {
            add(t, "docker.io/big", 1000000);
            add(t, "docker.io/small", 400000);
        }
    }
    CHECK_INT((int)topk_size(t), 64);
    CHECK(topk_replaced(t) > 90000);
    topk_entry_t e[3];
    CHECK_INT((int)topk_top(t, e, 3), 3);
    CHECK_STR(e[0].key, "docker.io/big");
    CHECK_STR(e[1].key, "docker.io/small");
    CHECK(e[0].count >= 100000000ULL && e[0].count - e[0].error <= 100000000ULL);
    CHECK(e[1].count >= 40000000ULL && e[1].count - e[1].error <= 40000000ULL);
    topk_free(t);
}

/* A random stream against a brute-force count: the space-saving invariants hold (counts sum to
 * the stream's weight, every tracked key's count bounds its truth within its error, every key
 * heavier than the smallest count is tracked, no key twice), exercising the index's deletions
 * with a small table. */
/* A fixed pseudo-random sequence (xorshift32): the same stream every run. */
static uint32_t next_rand(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

static void test_invariants(void)
{
    enum { KEYS = 200, CAP = 16, STEPS = 20000 };
    static uint64_t truth[KEYS];
    topk_t *t;
    CHECK_INT(topk_create(&t, CAP, 16), 0);
    uint32_t seed = 7;
    uint64_t total = 0;
    for (int s = 0; s < STEPS; s++) {
        /* Skewed: low keys far more often. */
        int r = (int)(next_rand(&seed) % KEYS);
        int key = r % (1 + (int)(next_rand(&seed) % KEYS));
        uint64_t n = 1 + next_rand(&seed) % 50;
        char k[16];
        snprintf(k, sizeof k, "k%d", key);
        add(t, k, n);
        truth[key] += n;
        total += n;
        if (s % 997 != 0 && s != STEPS - 1)
            continue;
        topk_entry_t e[CAP];
        size_t m = topk_top(t, e, CAP);
        uint64_t sum = 0, min = UINT64_MAX;
        bool seen[KEYS] = {false};
        for (size_t i = 0; i < m; i++) {
            int id = (int)strtol(e[i].key + 1, NULL, 10);
            CHECK(!seen[id]);
            seen[id] = true;
            sum += e[i].count;
            CHECK(e[i].count >= truth[id]);
            CHECK(e[i].count - e[i].error <= truth[id]);
            if (i > 0)
                CHECK(e[i - 1].count >= e[i].count);
            if (e[i].count < min)
                min = e[i].count;
        }
        CHECK(sum == total);
        for (int id = 0; m == CAP && id < KEYS; id++)
            if (truth[id] > min)
                CHECK(seen[id]);
    }
    topk_free(t);
}

static const test_case_t cases[] = {
    TEST_CASE(test_exact_until_full),
    TEST_CASE(test_flood),
    TEST_CASE(test_invariants),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
