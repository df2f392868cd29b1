/* sdnotify: the datagram reaches a socket the test binds, at a path and in the abstract
 * namespace; unset means nothing sent; bad values are refused. */
#include "proxy/sdnotify.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "check.h"
#include "common/util.h"
#include "testutil.h"

/* A datagram socket bound at name ("/path" or "@abstract"). */
static int bind_dgram(const char *name)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(name);
    CHECK(n < sizeof sa.sun_path);
    memcpy(sa.sun_path, name, n);
    bool abstract = name[0] == '@';
    if (abstract)
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (abstract ? 0 : 1));
    CHECK_INT(bind(fd, (struct sockaddr *)&sa, len), 0);
    return fd;
}

static void expect_datagram(int fd, const char *want)
{
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    CHECK(n >= 0);
    buf[n] = '\0';
    CHECK_STR(buf, want);
}

static void test_path(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/notify", test_tmpdir("sdnotify"));
    int fd = bind_dgram(path);
    setenv("NOTIFY_SOCKET", path, 1);
    CHECK_INT(sdnotify_send("READY=1\nSTATUS=serving"), 1);
    expect_datagram(fd, "READY=1\nSTATUS=serving");
    CHECK_INT(sdnotify_send("STOPPING=1"), 1);
    expect_datagram(fd, "STOPPING=1");
    close(fd);
}

static void test_abstract(void)
{
    char name[64];
    snprintf(name, sizeof name, "@winch-test-notify-%ld", (long)getpid());
    int fd = bind_dgram(name);
    setenv("NOTIFY_SOCKET", name, 1);
    CHECK_INT(sdnotify_send("READY=1"), 1);
    expect_datagram(fd, "READY=1");
    close(fd);
}

static void test_unset_and_bad(void)
{
    unsetenv("NOTIFY_SOCKET");
    CHECK_INT(sdnotify_send("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    CHECK_INT(sdnotify_send("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    CHECK_INT(sdnotify_send("READY=1"), -EINVAL);
    setenv("NOTIFY_SOCKET", "@", 1);
    CHECK_INT(sdnotify_send("READY=1"), -EINVAL);
    char huge[300];
    memset(huge, 'a', sizeof huge - 1);
    huge[0] = '/';
    huge[sizeof huge - 1] = '\0';
    setenv("NOTIFY_SOCKET", huge, 1);
    CHECK_INT(sdnotify_send("READY=1"), -EINVAL);
    /* Nobody bound there: an error, never a crash or a block. */
    char path[512];
    snprintf(path, sizeof path, "%s/nobody", test_tmpdir("sdnotify"));
    setenv("NOTIFY_SOCKET", path, 1);
    CHECK(sdnotify_send("READY=1") < 0);
}

static const test_case_t cases[] = {TEST_CASE(test_path), TEST_CASE(test_abstract),
                                    TEST_CASE(test_unset_and_bad)};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
