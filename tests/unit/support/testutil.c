#define _GNU_SOURCE /* nftw's FTW_PHYS and FTW_DEPTH */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define MAX_TMPDIRS 64

static char *tmpdirs[MAX_TMPDIRS];
static int ntmpdirs;

static void remove_tmpdirs(void)
{
    const char *keep = getenv("WINCH_KEEP");
    for (int i = 0; i < ntmpdirs; i++) {
        if (keep && strcmp(keep, "1") == 0)
            fprintf(stderr, "kept %s\n", tmpdirs[i]);
        else
            test_rm_rf(tmpdirs[i]);
        free(tmpdirs[i]);
    }
    ntmpdirs = 0;
}

const char *test_tmpdir(const char *prefix)
{
    const char *base = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s-XXXXXX", base && *base ? base : "/tmp", prefix);
    CHECK(ntmpdirs < MAX_TMPDIRS);
    CHECK(mkdtemp(path) != NULL);
    if (ntmpdirs == 0)
        atexit(remove_tmpdirs);
    tmpdirs[ntmpdirs] = strdup(path);
    CHECK(tmpdirs[ntmpdirs] != NULL);
    return tmpdirs[ntmpdirs++];
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

int test_rm_rf(const char *path)
{
    if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
        return errno == ENOENT ? 0 : -errno;
    return 0;
}

void test_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int test_listen_any(struct sockaddr_in *addr, uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(fd, 128) == 0);
    socklen_t sl = sizeof a;
    CHECK(getsockname(fd, (struct sockaddr *)&a, &sl) == 0);
    if (addr)
        *addr = a;
    if (port)
        *port = ntohs(a.sin_port);
    return fd;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run_one(const test_case_t *c)
{
    fprintf(stderr, "-- %s\n", c->name);
    double t0 = now_s();
    c->fn();
    fprintf(stderr, "-- %s ok (%.2fs)\n", c->name, now_s() - t0);
}

int test_main(int argc, char **argv, const test_case_t *cases, size_t n)
{
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", cases[i].name);
        return 0;
    }
    if (argc <= 1) {
        for (size_t i = 0; i < n; i++)
            run_one(&cases[i]);
        return 0;
    }
    for (int a = 1; a < argc; a++) {
        size_t i = 0;
        while (i < n && strcmp(cases[i].name, argv[a]) != 0)
            i++;
        if (i == n) {
            fprintf(stderr, "%s: no case named %s (--list shows them)\n", argv[0], argv[a]);
            return 2;
        }
        run_one(&cases[i]);
    }
    return 0;
}
