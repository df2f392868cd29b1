/* The client behind trusted proxies (proxy/realip.c): the element grammar (IPv4, IPv6,
 * brackets, ports, mapped addresses) and what it refuses, and the right-most-untrusted walk
 * over one or several X-Forwarded-For lines from a trusted or an untrusted peer, with spoofed
 * entries, garbage, spaces, empty elements, huge and many values. The trusted list comes from
 * the real configuration parser. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "common/util.h"
#include "config/config.h"
#include "proxy/realip.h"
#include "testutil.h"
#include "unit/check.h"

static config_t *trusted_cfg(void)
{
    static const char json[] =
        "{\"trusted_proxies\": [\"127.0.0.1\", \"10.0.0.0/8\", \"fd00::/8\"]}";
    config_t *c = NULL;
    char err[256] = "";
    if (config_from_json(&c, json, strlen(json), "t.json", err, sizeof err) != 0)
        fprintf(stderr, "%s\n", err);
    CHECK(c != NULL);
    CHECK_INT(c->n_trusted_proxies, 3);
    return c;
}

static struct sockaddr_storage addr(const char *s)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, s, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(40000);
    } else {
        CHECK(inet_pton(AF_INET6, s, &in6->sin6_addr) == 1);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(40000);
    }
    return ss;
}

static void parses(const char *elem, const char *want)
{
    struct sockaddr_storage ss;
    char buf[REALIP_STR_MAX];
    if (!realip_parse(elem, strlen(elem), &ss)) {
        fprintf(stderr, "not parsed: \"%s\"\n", elem);
        CHECK(0);
    }
    CHECK_STR(realip_format(&ss, buf, sizeof buf), want);
}

static void refused(const char *elem, size_t len)
{
    struct sockaddr_storage ss;
    if (realip_parse(elem, len, &ss)) {
        fprintf(stderr, "parsed, should not: \"%.*s\"\n", (int)len, elem);
        CHECK(0);
    }
}

static void test_element_grammar(void)
{
    parses("203.0.113.7", "203.0.113.7");
    parses("203.0.113.7:5555", "203.0.113.7");
    parses("203.0.113.7:0", "203.0.113.7");
    parses("203.0.113.7:65535", "203.0.113.7");
    parses("2001:db8::7", "2001:db8::7");
    parses("2001:DB8::7", "2001:db8::7");
    parses("[2001:db8::7]", "2001:db8::7");
    parses("[2001:db8::7]:443", "2001:db8::7");
    parses("::1", "::1");
    parses("::ffff:203.0.113.7", "203.0.113.7"); /* mapped: the IPv4 client it is */
    parses("[::ffff:203.0.113.7]:80", "203.0.113.7");
    static const char *const bad[] = {"unknown",
                                      "_hidden",
                                      "host.example.com",
                                      "1.2.3",
                                      "256.1.1.1",
                                      "1.2.3.4.5",
                                      "0x7f.0.0.1",
                                      "1.2.3.4:",
                                      "1.2.3.4:65536",
                                      "1.2.3.4:123456",
                                      "1.2.3.4:8x",
                                      "1.2.3.4:-1",
                                      "[::1",
                                      "[::1]x",
                                      "[::1]:",
                                      "[::1]:99999",
                                      "::1]",
                                      "[1.2.3.4]",
                                      "[]",
                                      "fe80::1%eth0",
                                      "fe80::1%25eth0",
                                      "1.2.3.4 ",
                                      " 1.2.3.4",
                                      "1.2.3.4\t",
                                      "\"1.2.3.4\"",
                                      "1.2.3.4;x",
                                      "for=1.2.3.4",
                                      ":::",
                                      "2001:db8:::7",
                                      "[[::1]]",
                                      "*"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        refused(bad[i], strlen(bad[i]));
    refused("", 0);
    refused("1.2.3.4\0", 8); /* a NUL byte is never part of an address */
    char huge[5000];
    memset(huge, '1', sizeof huge);
    refused(huge, sizeof huge);
    /* The longest real element parses; one byte over the bound does not. */
    parses("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535",
           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    char over[REALIP_ELEM_MAX + 1];
    memset(over, '0', sizeof over);
    memcpy(over, "::", 2);
    refused(over, sizeof over);
}

/* The client of lines[0..n) from peer, as text, and how it was found. */
static void walk(const config_t *c, const char *peer, const char *const *lines, size_t n,
                 enum realip_how how, const char *want)
{
    struct sockaddr_storage p = addr(peer), out;
    char buf[REALIP_STR_MAX];
    enum realip_how got =
        realip_client(c->trusted_proxies, c->n_trusted_proxies, &p, lines, n, &out);
    realip_format(&out, buf, sizeof buf);
    if (got != how || strcmp(buf, want) != 0) {
        fprintf(stderr, "peer %s, %zu lines (last \"%s\"): got %d %s, want %d %s\n", peer, n,
                n ? lines[n - 1] : "", (int)got, buf, (int)how, want);
        CHECK(0);
    }
}

#define WALK1(c, peer, line, how, want)                                                            \
    do {                                                                                           \
        const char *l_[] = {line};                                                                 \
        walk(c, peer, l_, 1, how, want);                                                           \
    } while (0)

static void test_untrusted_peer_is_the_client(void)
{
    config_t *c = trusted_cfg();
    WALK1(c, "192.0.2.9", "203.0.113.7", REALIP_PEER, "192.0.2.9");
    WALK1(c, "192.0.2.9", "127.0.0.1", REALIP_PEER, "192.0.2.9");
    WALK1(c, "11.0.0.1", "203.0.113.7", REALIP_PEER, "11.0.0.1"); /* just outside 10/8 */
    WALK1(c, "fe00::1", "203.0.113.7", REALIP_PEER, "fe00::1");   /* outside fd00::/8 */
    WALK1(c, "::1", "203.0.113.7", REALIP_PEER, "::1");           /* 127.0.0.1 is not ::1 */
    /* No trusted proxies at all: never read. */
    config_t none = {0};
    WALK1(&none, "127.0.0.1", "203.0.113.7", REALIP_PEER, "127.0.0.1");
    config_free(c);
}

static void test_rightmost_untrusted(void)
{
    config_t *c = trusted_cfg();
    walk(c, "127.0.0.1", NULL, 0, REALIP_PEER, "127.0.0.1"); /* trusted, no header */
    WALK1(c, "127.0.0.1", "203.0.113.7", REALIP_FORWARDED, "203.0.113.7");
    /* What the client wrote itself (left) never wins over what the proxy appended. */
    WALK1(c, "127.0.0.1", "6.6.6.6, 203.0.113.7", REALIP_FORWARDED, "203.0.113.7");
    WALK1(c, "127.0.0.1", "10.9.9.9, 203.0.113.7", REALIP_FORWARDED, "203.0.113.7");
    WALK1(c, "127.0.0.1", "127.0.0.1,203.0.113.7", REALIP_FORWARDED, "203.0.113.7");
    /* Two proxies: the second (10.1.2.3) is trusted, so the walk goes past it. */
    WALK1(c, "127.0.0.1", "6.6.6.6, 203.0.113.7, 10.1.2.3", REALIP_FORWARDED, "203.0.113.7");
    /* Every hop trusted: the left-most is the closest to the client. */
    WALK1(c, "127.0.0.1", "10.0.0.1, 10.0.0.2", REALIP_FORWARDED, "10.0.0.1");
    WALK1(c, "10.3.3.3", "127.0.0.1", REALIP_FORWARDED, "127.0.0.1");
    /* A dual-stack listener's IPv4 peer (mapped) is trusted as the IPv4 address it is. */
    WALK1(c, "::ffff:127.0.0.1", "203.0.113.7", REALIP_FORWARDED, "203.0.113.7");
    WALK1(c, "::ffff:127.0.0.1", "::ffff:10.0.0.4, ::ffff:198.51.100.2, 10.0.0.4", REALIP_FORWARDED,
          "198.51.100.2");
    config_free(c);
}

static void test_ipv6_ports_spaces_empty(void)
{
    config_t *c = trusted_cfg();
    WALK1(c, "fd00::1", "2001:db8::7", REALIP_FORWARDED, "2001:db8::7");
    WALK1(c, "fd00::1", "[2001:db8::7]:443", REALIP_FORWARDED, "2001:db8::7");
    WALK1(c, "127.0.0.1", "2001:db8::7, fd12::1", REALIP_FORWARDED, "2001:db8::7");
    WALK1(c, "127.0.0.1", "203.0.113.7:5555", REALIP_FORWARDED, "203.0.113.7");
    WALK1(c, "127.0.0.1", "[2001:db8::9]:1, 203.0.113.7:80, [fd00::3]:8080", REALIP_FORWARDED,
          "203.0.113.7");
    WALK1(c, "127.0.0.1", " \t203.0.113.7 \t", REALIP_FORWARDED, "203.0.113.7");
    WALK1(c, "127.0.0.1", "6.6.6.6 ,\t 203.0.113.7\t,, , ", REALIP_FORWARDED, "203.0.113.7");
    /* Only separators or nothing: as if there were no header. */
    WALK1(c, "127.0.0.1", "", REALIP_PEER, "127.0.0.1");
    WALK1(c, "127.0.0.1", " , ,\t,", REALIP_PEER, "127.0.0.1");
    config_free(c);
}

static void test_garbage_stops_the_walk(void)
{
    config_t *c = trusted_cfg();
    /* The right-most element is garbage: the trusted peer is all winch can vouch for. */
    WALK1(c, "127.0.0.1", "203.0.113.7, unknown", REALIP_GARBAGE, "127.0.0.1");
    WALK1(c, "127.0.0.1", "not an address", REALIP_GARBAGE, "127.0.0.1");
    WALK1(c, "127.0.0.1", "203.0.113.7 198.51.100.1", REALIP_GARBAGE, "127.0.0.1");
    WALK1(c, "127.0.0.1", "\"203.0.113.7\"", REALIP_GARBAGE, "127.0.0.1");
    WALK1(c, "127.0.0.1", "for=203.0.113.7;proto=http", REALIP_GARBAGE, "127.0.0.1");
    WALK1(c, "127.0.0.1", "203.0.113.7\r\nX-Evil: 1", REALIP_GARBAGE, "127.0.0.1");
    /* Garbage behind a trusted hop: that hop. */
    WALK1(c, "127.0.0.1", "203.0.113.7, garbage, 10.0.0.9", REALIP_GARBAGE, "10.0.0.9");
    /* Garbage left of the client is never read. */
    WALK1(c, "127.0.0.1", "garbage, ::zz, 203.0.113.7", REALIP_FORWARDED, "203.0.113.7");
    config_free(c);
}

static void test_several_lines(void)
{
    config_t *c = trusted_cfg();
    /* HAProxy adds a line of its own after what the client sent. */
    const char *two[] = {"6.6.6.6", "203.0.113.7"};
    walk(c, "127.0.0.1", two, 2, REALIP_FORWARDED, "203.0.113.7");
    const char *hop[] = {"203.0.113.7", "10.0.0.5"};
    walk(c, "127.0.0.1", hop, 2, REALIP_FORWARDED, "203.0.113.7");
    const char *mixed[] = {"6.6.6.6, 198.51.100.1", "", "10.0.0.5, 10.0.0.6", " , "};
    walk(c, "127.0.0.1", mixed, 4, REALIP_FORWARDED, "198.51.100.1");
    const char *junk_first[] = {"\x01\x02garbage", "10.0.0.5"};
    walk(c, "127.0.0.1", junk_first, 2, REALIP_GARBAGE, "10.0.0.5");
    /* Many lines, all trusted: the left-most of them. */
    const char *many[REALIP_MAX_LINES];
    for (size_t i = 0; i < REALIP_MAX_LINES; i++)
        many[i] = i == 0 ? "10.0.0.1" : "10.0.0.2";
    walk(c, "127.0.0.1", many, REALIP_MAX_LINES, REALIP_FORWARDED, "10.0.0.1");
    config_free(c);
}

/* A huge header: tens of thousands of elements are walked in one pass from the right; the
 * client is found at once whatever the client put before it. */
static void test_huge_values(void)
{
    config_t *c = trusted_cfg();
    size_t n = 64 * 1024;
    char *line = malloc(n + 64);
    CHECK(line != NULL);
    /* "6.6.6.6, 10.0.0.1, 10.0.0.1, ..., LAST" */
    size_t len = 9;
    memcpy(line, "6.6.6.6, ", len);
    while (len + 10 < n) {
        memcpy(line + len, "10.0.0.1, ", 10);
        len += 10;
    }
    snprintf(line + len, 64, "203.0.113.7");
    const char *one[] = {line};
    walk(c, "127.0.0.1", one, 1, REALIP_FORWARDED, "203.0.113.7");
    /* The right-most untrusted address is far left: every hop after it is trusted. */
    snprintf(line + len, 64, "10.0.0.3");
    walk(c, "127.0.0.1", one, 1, REALIP_FORWARDED, "6.6.6.6");
    /* One element of 64 KiB: garbage, refused without being copied anywhere. */
    memset(line, '7', n);
    line[n] = '\0';
    walk(c, "127.0.0.1", one, 1, REALIP_GARBAGE, "127.0.0.1");
    free(line);
    config_free(c);
}

static void test_in_and_format(void)
{
    config_t *c = trusted_cfg();
    struct sockaddr_storage a = addr("10.255.255.255"), b = addr("fdff::1"),
                            m = addr("::ffff:10.1.1.1");
    CHECK(realip_in(c->trusted_proxies, c->n_trusted_proxies, &a));
    CHECK(realip_in(c->trusted_proxies, c->n_trusted_proxies, &b));
    CHECK(realip_in(c->trusted_proxies, c->n_trusted_proxies, &m));
    struct sockaddr_storage u = {0};
    u.ss_family = AF_UNIX;
    CHECK(!realip_in(c->trusted_proxies, c->n_trusted_proxies, &u));
    CHECK(!realip_in(c->trusted_proxies, c->n_trusted_proxies, NULL));
    char buf[REALIP_STR_MAX];
    CHECK_STR(realip_format(&u, buf, sizeof buf), "-");
    CHECK_STR(realip_format(&m, buf, sizeof buf), "10.1.1.1");
    config_free(c);
}

static const test_case_t cases[] = {
    TEST_CASE(test_element_grammar),
    TEST_CASE(test_untrusted_peer_is_the_client),
    TEST_CASE(test_rightmost_untrusted),
    TEST_CASE(test_ipv6_ports_spaces_empty),
    TEST_CASE(test_garbage_stops_the_walk),
    TEST_CASE(test_several_lines),
    TEST_CASE(test_huge_values),
    TEST_CASE(test_in_and_format),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
