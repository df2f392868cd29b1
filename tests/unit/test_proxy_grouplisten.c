/* Client groups' own listeners (proxy/grouplisten.c) on a real server: each group with
 * "listen" gets a listener and its index maps to the group; after a reload the open listeners
 * are matched to the new groups by address (renamed, reordered, removed, added), and a listener
 * that cannot bind is an error naming the field. */
#include "proxy/grouplisten.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "common/err.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

static void on_request(req_t *r, void *arg)
{
    (void)r;
    (void)arg;
    CHECK(0); /* no client in these tests */
}

static void on_complete(req_t *r, void *arg, enum req_outcome outcome)
{
    (void)r;
    (void)arg;
    (void)outcome;
}

static config_t *load(const char *groups)
{
    char json[4096], err[512] = "";
    snprintf(json, sizeof json,
             "{\"listen\": \"127.0.0.1:0\", \"upstreams\": [{\"name\": \"docker.io\", \"url\": "
             "\"http://127.0.0.1:1\"}], \"client_groups\": [%s]}",
             groups);
    config_t *c = NULL;
    if (config_from_json(&c, json, strlen(json), "t.json", err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        CHECK(0);
    }
    return c;
}

typedef struct fixture {
    uv_loop_t loop;
    server_t *srv;
    grouplisten_t *gl;
} fixture_t;

static void setup(fixture_t *f)
{
    CHECK_INT(uv_loop_init(&f->loop), 0);
    server_opts_t o = {.loop = &f->loop,
                       .limits = {.header_timeout_ms = 1000,
                                  .idle_timeout_ms = 1000,
                                  .max_connections = 16,
                                  .max_header_bytes = 8192},
                       .on_request = on_request,
                       .on_complete = on_complete,
                       .data_size = 16};
    CHECK_INT(server_create(&f->srv, &o), 0);
    CHECK_INT(grouplisten_create(&f->gl), 0);
}

static void teardown(fixture_t *f)
{
    server_shutdown(f->srv);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    server_destroy(f->srv);
    grouplisten_free(f->gl);
    CHECK_INT(uv_loop_close(&f->loop), 0);
}

#define P "\"platforms\": [\"arm64\"]"

static void test_open_and_reload(void)
{
    fixture_t f;
    setup(&f);
    config_t *c1 = load("{\"name\": \"a\", \"listen\": \"127.0.0.1:0\", " P "},"
                        "{\"name\": \"c\", \"cidrs\": [\"10.0.0.0/8\"], " P "},"
                        "{\"name\": \"b\", \"listen\": \"127.0.0.2:0\", " P "}");
    char err[256] = "";
    CHECK_INT(grouplisten_open(f.gl, f.srv, c1, err, sizeof err), 0);
    /* Listener 0 is a's, 1 is b's (the groups' order); nothing else is a group's. */
    CHECK(grouplisten_group(f.gl, 0) == &c1->client_groups[0]);
    CHECK(grouplisten_group(f.gl, 1) == &c1->client_groups[2]);
    CHECK(grouplisten_group(f.gl, 2) == NULL);
    CHECK(grouplisten_group(f.gl, -1) == NULL);
    CHECK(grouplisten_group(f.gl, SERVER_MAX_LISTENERS) == NULL);
    CHECK(grouplisten_group(f.gl, 1000) == NULL);
    /* A reload changing nothing about addresses: no difference, the same mapping into the new
     * arrays. */
    config_t *same = load("{\"name\": \"a\", \"listen\": \"127.0.0.1:0\", " P "},"
                          "{\"name\": \"b\", \"listen\": \"127.0.0.2:0\", " P "}");
    CHECK_INT(grouplisten_reload(f.gl, same), 0);
    CHECK(grouplisten_group(f.gl, 0) == &same->client_groups[0]);
    CHECK(grouplisten_group(f.gl, 1) == &same->client_groups[1]);
    /* b renamed and moved first, a gone (its listener has no group: 1 difference), a new
     * address with no listener (another). */
    config_t *c2 = load("{\"name\": \"b2\", \"listen\": \"127.0.0.2:0\", \"platforms\": "
                        "[\"s390x\"]},"
                        "{\"name\": \"d\", \"listen\": \"127.0.0.3:0\", " P "}");
    CHECK_INT(grouplisten_reload(f.gl, c2), 2);
    CHECK(grouplisten_group(f.gl, 0) == NULL);
    CHECK(grouplisten_group(f.gl, 1) == &c2->client_groups[0]);
    CHECK_STR(grouplisten_group(f.gl, 1)->name, "b2");
    /* And back: a's listener is a's again. */
    config_t *c3 = load("{\"name\": \"b\", \"listen\": \"127.0.0.2:0\", " P "},"
                        "{\"name\": \"a\", \"listen\": \"127.0.0.1:0\", " P "}");
    CHECK_INT(grouplisten_reload(f.gl, c3), 0);
    CHECK(grouplisten_group(f.gl, 0) == &c3->client_groups[1]);
    CHECK(grouplisten_group(f.gl, 1) == &c3->client_groups[0]);
    /* No groups at all: both listeners orphaned. */
    config_t *none = load("");
    CHECK_INT(grouplisten_reload(f.gl, none), 2);
    CHECK(grouplisten_group(f.gl, 0) == NULL && grouplisten_group(f.gl, 1) == NULL);
    teardown(&f);
    config_free(c1);
    config_free(same);
    config_free(c2);
    config_free(c3);
    config_free(none);
}

/* A port already taken: the error names the address, the field and the group. */
static void test_bind_failure(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(s >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(s, 1) == 0);
    socklen_t al = sizeof a;
    CHECK(getsockname(s, (struct sockaddr *)&a, &al) == 0);
    char groups[256], want[128], err[256] = "";
    snprintf(groups, sizeof groups,
             "{\"name\": \"ok\", \"listen\": \"127.0.0.1:0\", " P "},"
             "{\"name\": \"taken\", \"listen\": \"127.0.0.1:%u\", " P "}",
             (unsigned)ntohs(a.sin_port));
    config_t *c = load(groups);
    fixture_t f;
    setup(&f);
    CHECK(grouplisten_open(f.gl, f.srv, c, err, sizeof err) < 0);
    snprintf(want, sizeof want,
             "cannot listen on 127.0.0.1:%u (client_groups[1].listen, group taken): ",
             (unsigned)ntohs(a.sin_port));
    fprintf(stderr, "err: %s\n", err);
    CHECK(strncmp(err, want, strlen(want)) == 0);
    /* The first one opened stays mapped until the server closes it. */
    CHECK(grouplisten_group(f.gl, 0) == &c->client_groups[0]);
    teardown(&f);
    close(s);
    config_free(c);
}

int main(int argc, char **argv)
{
    static const test_case_t cases[] = {TEST_CASE(test_open_and_reload),
                                        TEST_CASE(test_bind_failure)};
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
