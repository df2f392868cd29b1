/* The access line (proxy/accesslog.c), text and JSON: the client's address, the proxy it came
 * through (via, only when a trusted proxy named the client), the node's name (only when
 * node_name is set) and the client's group (only when one matched). stderr is redirected to a file and read back. */
#include "proxy/accesslog.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

/* Writes e (text or JSON) with stderr going to a file; returns the line (static). */
static const char *line_of(const accesslog_entry_t *e, bool json)
{
    static char out[4096];
    char path[512];
    snprintf(path, sizeof path, "%s/err", test_tmpdir("winch-accesslog-"));
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    int saved = dup(STDERR_FILENO);
    CHECK(saved >= 0);
    CHECK(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
    accesslog_write(e, json);
    CHECK(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
    close(saved);
    ssize_t n = pread(fd, out, sizeof out - 1, 0);
    close(fd);
    CHECK(n > 0);
    out[n] = '\0';
    CHECK(out[n - 1] == '\n');
    CHECK(strchr(out, '\n') == out + n - 1); /* one line */
    return out;
}

static accesslog_entry_t entry(void)
{
    return (accesslog_entry_t){.id = 7,
                               .peer = "127.0.0.1",
                               .method = "GET",
                               .target = "/v2/",
                               .ua = "curl/8",
                               .user = "-",
                               .upstream = "docker.io",
                               .cache = "-",
                               .status = 200,
                               .bytes = 2,
                               .ms = 1};
}

static void test_text(void)
{
    accesslog_entry_t e = entry();
    const char *l = line_of(&e, false);
    CHECK(strstr(l, " peer=127.0.0.1 ua=\"curl/8\"") != NULL);
    CHECK(strstr(l, "via=") == NULL);
    CHECK(strstr(l, "node=") == NULL);
    e.peer = "2001:db8::7";
    e.via = "127.0.0.1";
    e.node = "winch-2";
    l = line_of(&e, false);
    CHECK(strstr(l, " peer=2001:db8::7 via=127.0.0.1 node=winch-2 ua=\"curl/8\"") != NULL);
    e.via = NULL;
    l = line_of(&e, false);
    CHECK(strstr(l, " peer=2001:db8::7 node=winch-2 ua=") != NULL);
    CHECK(strstr(l, "group=") == NULL);
    e.group = "arm-pool";
    l = line_of(&e, false);
    CHECK(strstr(l, " peer=2001:db8::7 node=winch-2 group=arm-pool ua=\"curl/8\"") != NULL);
    e.node = NULL;
    l = line_of(&e, false);
    CHECK(strstr(l, " peer=2001:db8::7 group=arm-pool ua=") != NULL);
}

static void test_json(void)
{
    accesslog_entry_t e = entry();
    json_t *o = json_loads(line_of(&e, true), 0, NULL);
    CHECK(o != NULL);
    CHECK_STR(json_string_value(json_object_get(o, "peer")), "127.0.0.1");
    CHECK(json_object_get(o, "via") == NULL);
    CHECK(json_object_get(o, "node") == NULL);
    CHECK(json_object_get(o, "group") == NULL);
    json_decref(o);
    e.peer = "203.0.113.7";
    e.via = "::1";
    e.node = "edge.site_b:1";
    e.group = "edge";
    o = json_loads(line_of(&e, true), 0, NULL);
    CHECK(o != NULL);
    CHECK_STR(json_string_value(json_object_get(o, "peer")), "203.0.113.7");
    CHECK_STR(json_string_value(json_object_get(o, "via")), "::1");
    CHECK_STR(json_string_value(json_object_get(o, "node")), "edge.site_b:1");
    CHECK_STR(json_string_value(json_object_get(o, "group")), "edge");
    CHECK_INT(json_integer_value(json_object_get(o, "status")), 200);
    json_decref(o);
}

static const test_case_t cases[] = {
    TEST_CASE(test_text),
    TEST_CASE(test_json),
};

int main(int argc, char **argv)
{
    log_set_level(WLOG_INFO);
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
