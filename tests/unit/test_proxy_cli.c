/* proxy/cli.c: sizes and times as docker prints them, and the common options. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "common/util.h"
#include "proxy/cli.h"
#include "testutil.h"

static void test_size(void)
{
    static const struct {
        uint64_t n;
        const char *s;
    } cases[] = {
        {0, "0B"},       {512, "512B"},         {999, "999B"},           {1000, "1kB"},
        {4100, "4.1kB"}, {12345678, "12.35MB"}, {1073741824, "1.074GB"}, {5000000000000ULL, "5TB"}};
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char buf[32];
        cli_size(cases[i].n, buf, sizeof buf);
        CHECK_STR(buf, cases[i].s);
    }
}

static void test_ago(void)
{
    static const struct {
        int64_t secs;
        const char *s;
    } cases[] = {
        {0, "Less than a second ago"}, {1, "1 second ago"},         {59, "59 seconds ago"},
        {60, "About a minute ago"},    {600, "10 minutes ago"},     {3600, "About an hour ago"},
        {7200, "2 hours ago"},         {86400 * 3, "3 days ago"},   {86400 * 20, "2 weeks ago"},
        {86400 * 90, "3 months ago"},  {86400 * 800, "2 years ago"}};
    int64_t now = 1700000000000;
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char buf[64];
        cli_ago(now - cases[i].secs * 1000, now, buf, sizeof buf);
        CHECK_STR(buf, cases[i].s);
    }
    char buf[64];
    cli_ago(0, now, buf, sizeof buf);
    CHECK_STR(buf, "never");
}

static void test_common_options(void)
{
    char *argv[] = {"ls", "--json", "--cache-dir", "/c", "busybox", "--config=/f.json", "-x"};
    char *rest[8];
    cli_common_t o;
    CHECK_INT(cli_common_parse(7, argv, rest, &o), 0);
    CHECK(o.json);
    CHECK_STR(o.cache_dir, "/c");
    CHECK_STR(o.config, "/f.json");
    CHECK_INT(o.argc, 3);
    CHECK_STR(o.argv[0], "ls");
    CHECK_STR(o.argv[1], "busybox");
    CHECK_STR(o.argv[2], "-x");
    char *bad[] = {"ls", "--cache-dir"};
    CHECK_INT(cli_common_parse(2, bad, rest, &o), 2);
}

static const test_case_t cases[] = {
    TEST_CASE(test_size),
    TEST_CASE(test_ago),
    TEST_CASE(test_common_options),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
