/* status: the page's HTML escaping of names that came from clients or upstreams. */
#include "proxy/status.h"

#include <string.h>

#include "check.h"
#include "common/buf.h"
#include "common/util.h"
#include "testutil.h"

static void expect_escaped(const char *in, size_t n, const char *want)
{
    buf_t b;
    buf_init(&b, 4096);
    CHECK_INT(status_html_escape(&b, in, n), 0);
    CHECK_INT(buf_append(&b, "", 1), 0);
    CHECK_STR(b.p, want);
    buf_free(&b);
}

static void test_escape(void)
{
    expect_escaped("lab/busybox:1.36", 16, "lab/busybox:1.36");
    const char *evil = "<script>alert(\"x\")</script>&'";
    expect_escaped(evil, strlen(evil),
                   "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;");
    expect_escaped("a\nb\x1b[0m\x7f", 8, "a?b?[0m?");
    expect_escaped("a\0b", 3, "a?b");
}

static void test_bound(void)
{
    buf_t b;
    buf_init(&b, 8);
    CHECK(status_html_escape(&b, "<<<<", 4) < 0); /* 16 bytes do not fit in 8 */
    buf_free(&b);
}

static const test_case_t cases[] = {TEST_CASE(test_escape), TEST_CASE(test_bound)};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
