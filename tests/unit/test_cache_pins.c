/* cache/pins.c: stored pins and tag history. Reads see queued writes at once and committed ones
 * after, in this process and in a server beside a tool (another process writing the same
 * environment, as winch pin does beside winch serve); bad names and digests are refused before
 * anything is queued; records survive a reopen. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache/cache.h"
#include "common/err.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "testutil.h"
#include "unit/check.h"

#define DA "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define DB "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

typedef struct done {
    int n;
    int status;
} done_t;

static void on_done(void *arg, int status)
{
    done_t *d = arg;
    d->n++;
    d->status = status;
}

static void wait_done(uv_loop_t *loop, done_t *d, int n)
{
    while (d->n < n)
        uv_run(loop, UV_RUN_ONCE);
}

static cache_t *open_cache(uv_loop_t *loop, const char *dir, bool shared)
{
    cache_t *c;
    cache_opts_t o = {.loop = loop, .dir = dir, .shared = shared};
    CHECK_INT(cache_open(&c, &o), 0);
    return c;
}

static void close_cache(uv_loop_t *loop, cache_t *c)
{
    cache_close(c);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void test_pins(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    const char *dir = test_tmpdir("winch-test-pins");
    cache_t *c = open_cache(&loop, dir, false);
    cache_pin_t p;
    done_t d = {0};
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox", "stable", &p), WE_NOTFOUND);
    int64_t t0 = time_wall_ms();
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox", "stable", DA, on_done, &d), 0);
    /* Queued, not committed: already visible. */
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox", "stable", &p), 0);
    CHECK_STR(p.digest, DA);
    CHECK_INT(p.source, CACHE_PIN_STORED);
    wait_done(&loop, &d, 1);
    CHECK_INT(d.status, 0);
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox", "stable", &p), 0);
    CHECK_STR(p.digest, DA);
    CHECK(p.set_ms >= t0 && p.set_ms <= time_wall_ms());
    /* Other tags, repositories and upstreams are other keys. */
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox", "stabl", &p), WE_NOTFOUND);
    CHECK_INT(cache_pin_get(c, "ghcr.io", "library/busybox", "stable", &p), WE_NOTFOUND);
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox2", "stable", &p), WE_NOTFOUND);

    /* Replace, then delete, then delete what is not there. */
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox", "stable", DB, on_done, &d), 0);
    CHECK_INT(cache_pin_delete(c, "docker.io", "library/busybox", "stable", on_done, &d), 0);
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox", "stable", &p), WE_NOTFOUND);
    wait_done(&loop, &d, 3);
    CHECK_INT(d.status, 0);
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox", "stable", &p), WE_NOTFOUND);
    CHECK_INT(cache_pin_delete(c, "docker.io", "library/busybox", "stable", on_done, &d), 0);
    wait_done(&loop, &d, 4);
    CHECK_INT(d.status, WE_NOTFOUND);
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox", "x", DB, on_done, &d), 0);
    wait_done(&loop, &d, 5);
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox", "x", &p), 0);
    CHECK_STR(p.digest, DB);

    /* Refused before anything is queued (callbacks never run). */
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox", "x", "sha256:abc", on_done, &d),
              WE_INVALID);
    CHECK_INT(cache_pin_set(c, "docker.io", "Library/busybox", "x", DA, on_done, &d), WE_INVALID);
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox", ".x", DA, on_done, &d), WE_INVALID);
    CHECK_INT(cache_pin_set(c, "", "library/busybox", "x", DA, on_done, &d), WE_INVALID);
    CHECK_INT(cache_pin_set(c, NULL, "library/busybox", "x", DA, on_done, &d), WE_INVALID);
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox", "x", NULL, on_done, &d), WE_INVALID);
    CHECK_INT(cache_pin_delete(c, "docker.io", "library/busybox", NULL, on_done, &d), WE_INVALID);
    char longup[600];
    memset(longup, 'u', sizeof longup - 1);
    longup[sizeof longup - 1] = '\0';
    CHECK_INT(cache_pin_set(c, longup, "library/busybox", "x", DA, on_done, &d), WE_INVALID);
    CHECK_INT(cache_pin_get(c, longup, "library/busybox", "x", &p), WE_NOTFOUND);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT(d.n, 5);
    close_cache(&loop, c);

    /* Persistent. */
    c = open_cache(&loop, dir, false);
    CHECK_INT(cache_pin_get(c, "docker.io", "library/busybox", "x", &p), 0);
    CHECK_STR(p.digest, DB);
    close_cache(&loop, c);
    CHECK_INT(uv_loop_close(&loop), 0);
}

static void test_history(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    const char *dir = test_tmpdir("winch-test-hist");
    cache_t *c = open_cache(&loop, dir, false);
    cache_tag_history_t h = {.seen_first_ms = 12345}, got;
    done_t d = {0};
    CHECK_INT(cache_tag_history_get(c, "docker.io", "library/node", "20", &got), WE_NOTFOUND);
    snprintf(h.seen, sizeof h.seen, "%s", DA);
    CHECK_INT(cache_tag_history_set(c, "docker.io", "library/node", "20", &h, on_done, &d), 0);
    CHECK_INT(cache_tag_history_get(c, "docker.io", "library/node", "20", &got), 0);
    CHECK_STR(got.seen, DA);
    CHECK_STR(got.served, "");
    CHECK(got.seen_first_ms == 12345);
    /* Two writes in a row: the newer one is what reads see, before and after the commits. */
    snprintf(h.served, sizeof h.served, "%s", DA);
    snprintf(h.seen, sizeof h.seen, "%s", DB);
    h.seen_first_ms = -5; /* any value the caller's clock gives */
    CHECK_INT(cache_tag_history_set(c, "docker.io", "library/node", "20", &h, on_done, &d), 0);
    CHECK_INT(cache_tag_history_get(c, "docker.io", "library/node", "20", &got), 0);
    CHECK_STR(got.seen, DB);
    wait_done(&loop, &d, 2);
    CHECK_INT(d.status, 0);
    CHECK_INT(cache_tag_history_get(c, "docker.io", "library/node", "20", &got), 0);
    CHECK_STR(got.served, DA);
    CHECK_STR(got.seen, DB);
    CHECK(got.seen_first_ms == -5);
    /* The history and the pins are separate records of the same key. */
    cache_pin_t p;
    CHECK_INT(cache_pin_get(c, "docker.io", "library/node", "20", &p), WE_NOTFOUND);
    snprintf(h.seen, sizeof h.seen, "sha256:nothex");
    CHECK_INT(cache_tag_history_set(c, "docker.io", "library/node", "20", &h, on_done, &d),
              WE_INVALID);
    close_cache(&loop, c);
    CHECK_INT(uv_loop_close(&loop), 0);
}

typedef struct seen {
    int n;
    char keys[8][200];
} seen_t;

static int collect(void *arg, const char *upstream, const char *repo, const char *tag,
                   const cache_pin_t *pin)
{
    seen_t *s = arg;
    CHECK(s->n < 8);
    snprintf(s->keys[s->n++], sizeof s->keys[0], "%s/%s:%s=%c", upstream, repo, tag,
             pin->digest[7]);
    return s->n == 3; /* stop after three */
}

static int count_for_retention(void *arg, const char *upstream, const char *repo, const char *tag,
                               const char *digest)
{
    (void)upstream;
    (void)repo;
    (void)tag;
    CHECK(strcmp(digest, DA) == 0 || strcmp(digest, DB) == 0);
    (*(int *)arg)++;
    return 0;
}

static void test_each(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    cache_t *c = open_cache(&loop, test_tmpdir("winch-test-pins-each"), false);
    done_t d = {0};
    CHECK_INT(cache_pin_set(c, "ghcr.io", "acme/app", "1.2", DA, on_done, &d), 0);
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox", "stable", DB, on_done, &d), 0);
    CHECK_INT(cache_pin_set(c, "docker.io", "acme/app", "production", DA, on_done, &d), 0);
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox", "old", DA, on_done, &d), 0);
    wait_done(&loop, &d, 4);
    seen_t s = {0};
    CHECK_INT(cache_pins_list(c, NULL, NULL, collect, &s), 0);
    CHECK_INT(s.n, 3);
    CHECK_STR(s.keys[0], "docker.io/acme/app:production=a");
    CHECK_STR(s.keys[1], "docker.io/library/busybox:old=a");
    CHECK_STR(s.keys[2], "docker.io/library/busybox:stable=b");
    /* By upstream, and by repository: nothing of another repository with the same prefix. */
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybox2", "x", DA, on_done, &d), 0);
    CHECK_INT(cache_pin_set(c, "docker.io", "library/busybo", "x", DA, on_done, &d), 0);
    wait_done(&loop, &d, 6);
    memset(&s, 0, sizeof s);
    CHECK_INT(cache_pins_list(c, "ghcr.io", NULL, collect, &s), 0);
    CHECK_INT(s.n, 1);
    CHECK_STR(s.keys[0], "ghcr.io/acme/app:1.2=a");
    memset(&s, 0, sizeof s);
    CHECK_INT(cache_pins_list(c, "docker.io", "library/busybox", collect, &s), 0);
    CHECK_INT(s.n, 2);
    CHECK_STR(s.keys[0], "docker.io/library/busybox:old=a");
    CHECK_STR(s.keys[1], "docker.io/library/busybox:stable=b");
    memset(&s, 0, sizeof s);
    CHECK_INT(cache_pins_list(c, "quay.io", NULL, collect, &s), 0);
    CHECK_INT(s.n, 0);
    /* Retention reads the same records (pins_read.c): every pin, with its digest. */
    int n = 0;
    CHECK_INT(cache_pin_each(c, count_for_retention, &n), 0);
    CHECK_INT(n, 6);
    close_cache(&loop, c);
    CHECK_INT(uv_loop_close(&loop), 0);
}

/* A tool in another process (winch pin) writes pins while the server reads them on its loop:
 * every pin the tool committed is seen by the server's next read, without a reopen. */
/* The other process of test_other_process (run as --pins-child DIR GO_FD BACK_FD): a tool
 * beside the server, setting pins one by one while the server checks each. */
static int pins_child(const char *dir, int go, int back)
{
    char b;
    if (read(go, &b, 1) != 1)
        return 3;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cache_t *tool = open_cache(&loop, dir, true);
    if (!cache_server_running(tool))
        return 4;
    for (int i = 0; i < 20; i++) {
        char tag[16];
        done_t d = {0};
        snprintf(tag, sizeof tag, "t%d", i);
        if (cache_pin_set(tool, "docker.io", "lab/app", tag, i % 2 ? DA : DB, on_done, &d) != 0)
            return 5;
        wait_done(&loop, &d, 1);
        if (d.status != 0)
            return 6;
        /* Tell the server this one is committed; it checks before the next. */
        if (write(back, "x", 1) != 1 || read(go, &b, 1) != 1)
            return 7;
    }
    close_cache(&loop, tool);
    return uv_loop_close(&loop) == 0 ? 0 : 8;
}

static void test_other_process(void)
{
    const char *dir = test_tmpdir("winch-test-pins-proc");
    int go[2], back[2];
    CHECK_INT(pipe(go), 0);
    CHECK_INT(pipe(back), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* A fresh image, not a fork of this one: the earlier cases started libuv's threadpool,
         * and a forked child of a threaded process may not start threads of its own (it hangs
         * under ThreadSanitizer). */
        char fds[2][16];
        snprintf(fds[0], sizeof fds[0], "%d", go[0]);
        snprintf(fds[1], sizeof fds[1], "%d", back[1]);
        execl("/proc/self/exe", "test_cache_pins", "--pins-child", dir, fds[0], fds[1],
              (char *)NULL);
        _exit(2);
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    cache_t *server = open_cache(&loop, dir, false);
    cache_pin_t p;
    CHECK_INT(write(go[1], "x", 1), 1);
    for (int i = 0; i < 20; i++) {
        char b, tag[16];
        CHECK_INT(read(back[0], &b, 1), 1);
        snprintf(tag, sizeof tag, "t%d", i);
        CHECK_INT(cache_pin_get(server, "docker.io", "lab/app", tag, &p), 0);
        CHECK_STR(p.digest, i % 2 ? DA : DB);
        CHECK_INT(p.source, CACHE_PIN_STORED);
        CHECK_INT(write(go[1], "x", 1), 1);
    }
    int st;
    CHECK_INT(waitpid(pid, &st, 0), pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close_cache(&loop, server);
    CHECK_INT(uv_loop_close(&loop), 0);
    close(go[0]);
    close(go[1]);
    close(back[0]);
    close(back[1]);
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--pins-child") == 0)
        return pins_child(argv[2], (int)strtol(argv[3], NULL, 10), (int)strtol(argv[4], NULL, 10));
    static const test_case_t cases[] = {TEST_CASE(test_pins), TEST_CASE(test_history),
                                        TEST_CASE(test_each), TEST_CASE(test_other_process)};
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
