/* common/log.c: log_escape, which stands between what clients send and the log. */
#include <string.h>

#include "check.h"
#include "common/log.h"
#include "common/util.h"
#include "testutil.h"

static const char *esc(char *buf, size_t cap, const char *s, size_t n)
{
    return log_escape(buf, cap, s, n);
}

static void test_escape_bytes(void)
{
    static const struct {
        const char *in;
        size_t len;
        const char *out;
    } cases[] = {
        {"", 0, ""},
        {"/v2/library/alpine/manifests/3.19", 33, "/v2/library/alpine/manifests/3.19"},
        {"a b~!#$%&'()*+,-./:;<=>?@[]^_`{|}", 33, "a b~!#$%&'()*+,-./:;<=>?@[]^_`{|}"},
        /* Quotes and backslashes cannot close or fake a quoted field. */
        {"say \"hi\" \\", 10, "say \\x22hi\\x22 \\x5c"},
        /* Control bytes: no new line, no terminal escape, no bell, no NUL cut. */
        {"a\r\nb", 4, "a\\x0d\\x0ab"},
        {"\x1b[2J\x07", 5, "\\x1b[2J\\x07"},
        {"a\tb\x7f", 4, "a\\x09b\\x7f"},
        {"nul\0after", 9, "nul\\x00after"},
        /* Non-ASCII, valid UTF-8 or not, byte by byte. */
        {"caf\xc3\xa9", 5, "caf\\xc3\\xa9"},
        {"\xff\x80", 2, "\\xff\\x80"},
        /* Only len bytes are read. */
        {"abcdef", 3, "abc"},
    };
    char buf[128];
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        CHECK_STR(esc(buf, sizeof buf, cases[i].in, cases[i].len), cases[i].out);
    /* Every byte value: the output is printable ASCII without quotes, and reads back. */
    char all[256], out[4 * 256 + 1];
    for (int b = 0; b < 256; b++)
        all[b] = (char)b;
    esc(out, sizeof out, all, sizeof all);
    size_t n = strlen(out), plain = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(out[i] >= 0x20 && out[i] < 0x7f && out[i] != '"');
        if (out[i] == '\\')
            CHECK(out[i + 1] == 'x'); /* a backslash only ever starts an escape */
    }
    for (int b = 0x20; b < 0x7f; b++)
        plain += b != '"' && b != '\\';
    CHECK_INT(n, plain + 4 * (256 - plain));
}

static void test_escape_bounds(void)
{
    char buf[16];
    /* Fits exactly: no "...". */
    CHECK_STR(esc(buf, sizeof buf, "0123456789abcde", 15), "0123456789abcde");
    /* Too long: cut, marked, NUL-terminated within cap. */
    CHECK_STR(esc(buf, sizeof buf, "0123456789abcdefXYZ", 19), "0123456789ab...");
    /* An escape is never split by the cut. */
    CHECK_STR(esc(buf, sizeof buf, "0123456789\x01\x02\x03", 13), "0123456789...");
    CHECK_STR(esc(buf, sizeof buf, "01234567\x01\x02", 10), "01234567\\x01...");
    CHECK_STR(esc(buf, sizeof buf, "012345678901\x01", 13), "012345678901...");
    /* Tiny buffers. */
    char one[1] = {'x'};
    CHECK_STR(esc(one, 1, "abc", 3), "");
    char four[4];
    CHECK_STR(esc(four, sizeof four, "abcdef", 6), "...");
    CHECK_STR(esc(four, sizeof four, "abc", 3), "abc");
    CHECK_STR(esc(four, sizeof four, "\x01", 1), "...");
    char five[5];
    CHECK_STR(esc(five, sizeof five, "\x01", 1), "\\x01");
    CHECK_STR(esc(five, sizeof five, "a\x01", 2), "a...");
    /* cap 0 writes nothing. */
    char untouched = 'u';
    log_escape(&untouched, 0, "abc", 3);
    CHECK_INT(untouched, 'u');
    /* A huge hostile value costs only cap bytes. */
    static char big[1 << 20];
    memset(big, '\n', sizeof big);
    char line[1024];
    esc(line, sizeof line, big, sizeof big);
    CHECK(strlen(line) < sizeof line);
    CHECK(strcmp(line + strlen(line) - 3, "...") == 0);
}

static const test_case_t cases[] = {
    TEST_CASE(test_escape_bytes),
    TEST_CASE(test_escape_bounds),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
