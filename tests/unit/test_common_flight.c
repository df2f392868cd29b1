/* common/flight.c (many waiters, one operation) and common/buf.c (bounded buffer). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/flight.h"
#include "common/util.h"
#include "testutil.h"

typedef struct waiter {
    flight_waiter_t w;
    int landed;
    int result;
    int order;
} waiter_t;

static int land_seq;

static void on_land(flight_waiter_t *fw, void *result)
{
    waiter_t *w = (waiter_t *)fw;
    w->landed++;
    w->result = *(int *)result;
    w->order = ++land_seq;
}

static void test_join_and_land(void)
{
    flight_table_t *t;
    CHECK_INT(flight_table_create(&t), 0);
    waiter_t a = {0}, b = {0}, c = {0};
    flight_t *fa, *fb, *fc;
    bool created;
    CHECK_INT(flight_join(t, "GET /x", &a.w, on_land, &fa, &created), 0);
    CHECK(created);
    flight_set_op(fa, &a);
    CHECK_INT(flight_join(t, "GET /x", &b.w, on_land, &fb, &created), 0);
    CHECK(!created);
    CHECK(fa == fb);
    CHECK(flight_op(fb) == &a);
    CHECK_INT(flight_join(t, "GET /y", &c.w, on_land, &fc, &created), 0);
    CHECK(created);
    CHECK(fc != fa);
    CHECK_INT(flight_table_count(t), 2);
    CHECK_INT(flight_waiters(fa), 2);
    CHECK_STR(flight_key(fa), "GET /x");

    land_seq = 0;
    int result = 7;
    flight_land(fa, &result);
    CHECK_INT(a.landed, 1);
    CHECK_INT(b.landed, 1);
    CHECK_INT(a.result, 7);
    CHECK_INT(a.order, 1); /* joining order */
    CHECK_INT(b.order, 2);
    CHECK_INT(c.landed, 0);
    CHECK_INT(flight_table_count(t), 1);

    /* A new join for a landed key starts a new flight. */
    CHECK_INT(flight_join(t, "GET /x", &a.w, on_land, &fa, &created), 0);
    CHECK(created);
    result = 9;
    flight_land(fa, &result);
    flight_land(fc, &result);
    CHECK_INT(c.result, 9);
    CHECK_INT(flight_table_count(t), 0);
    flight_table_free(t);
}

static void test_leave(void)
{
    flight_table_t *t;
    CHECK_INT(flight_table_create(&t), 0);
    waiter_t a = {0}, b = {0};
    flight_t *f;
    bool created;
    CHECK_INT(flight_join(t, "k", &a.w, on_land, &f, &created), 0);
    CHECK_INT(flight_join(t, "k", &b.w, on_land, NULL, &created), 0);
    CHECK(flight_leave(&a.w) == NULL); /* b still waits */
    CHECK(flight_leave(&a.w) == NULL); /* idempotent */
    CHECK(flight_leave(&b.w) == f);    /* last one: the owner decides */
    CHECK_INT(flight_table_count(t), 1);
    flight_drop(f);
    CHECK_INT(flight_table_count(t), 0);
    CHECK_INT(a.landed + b.landed, 0);
    flight_table_free(t);
}

/* A land callback that makes another waiter of the same flight leave must not free it. */
static waiter_t *victim;
static void on_land_evict(flight_waiter_t *fw, void *result)
{
    on_land(fw, result);
    if (victim) {
        CHECK(flight_leave(&victim->w) == NULL);
        victim = NULL;
    }
}

static void test_leave_while_landing(void)
{
    flight_table_t *t;
    CHECK_INT(flight_table_create(&t), 0);
    waiter_t a = {0}, b = {0};
    flight_t *f;
    bool created;
    CHECK_INT(flight_join(t, "k", &a.w, on_land_evict, &f, &created), 0);
    CHECK_INT(flight_join(t, "k", &b.w, on_land, NULL, &created), 0);
    victim = &b;
    int result = 1;
    flight_land(f, &result);
    CHECK_INT(a.landed, 1);
    CHECK_INT(b.landed, 0);
    CHECK_INT(flight_table_count(t), 0);
    flight_table_free(t);
}

static void test_buf(void)
{
    buf_t b;
    buf_init(&b, 10);
    CHECK_INT(buf_append(&b, "hello", 5), 0);
    CHECK_INT(buf_append(&b, "world!", 6), WE_TOOBIG); /* refused whole */
    CHECK_INT(b.len, 5);
    CHECK_INT(buf_append(&b, "world", 5), 0);
    CHECK_INT(b.len, 10);
    CHECK(b.cap <= 11);
    size_t len;
    char *p = buf_take(&b, &len);
    CHECK_INT(len, 10);
    CHECK_STR(p, "helloworld");
    free(p);
    CHECK(b.p == NULL);
    p = buf_take(&b, &len);
    CHECK(p != NULL);
    CHECK_INT(len, 0);
    CHECK_STR(p, "");
    free(p);
    CHECK_INT(buf_append(&b, "secret", 6), 0);
    buf_free_secret(&b);
    CHECK(b.p == NULL);
    CHECK_INT(buf_append(&b, "", 0), 0);
    buf_free(&b);
}

static const test_case_t cases[] = {
    TEST_CASE(test_join_and_land),
    TEST_CASE(test_leave),
    TEST_CASE(test_leave_while_landing),
    TEST_CASE(test_buf),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
