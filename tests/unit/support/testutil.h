/** What the unit tests share: a runner that runs every case or the one named on the command
 * line, temporary directories, sleeping, and a listening loopback socket. Each test binary
 * defines its cases in a table and calls test_main:
 *
 *     static const test_case_t cases[] = {TEST_CASE(test_chunked), TEST_CASE(test_head)};
 *     int main(int argc, char **argv) { return test_main(argc, argv, cases, ARRAY_SIZE(cases)); }
 *
 * `test_proxy_upstream test_chunked` then runs that case alone; `--list` prints the names. */
#ifndef WINCH_TESTS_TESTUTIL_H
#define WINCH_TESTS_TESTUTIL_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case_t;

#define TEST_CASE(fn)                                                                              \
    {                                                                                              \
#fn, fn                                                                                    \
    }

/** Runs every case in order, or those named in argv[1..] (exit 2 for an unknown name; --list
 * prints the names). Prints each case's name and time to stderr. Returns the exit status. */
int test_main(int argc, char **argv, const test_case_t *cases, size_t n);

/** A fresh directory under $TMPDIR (or /tmp) named prefix-XXXXXX, removed with everything in it
 * at exit unless WINCH_KEEP=1. Returns a static copy that stays valid until exit (at most 64
 * such directories per process); aborts on failure. */
const char *test_tmpdir(const char *prefix);

/** Removes path and everything below it (no symlinks followed). Returns 0 or -errno. */
int test_rm_rf(const char *path);

void test_sleep_ms(long ms);

/** A listening TCP socket on 127.0.0.1 with a kernel-chosen port (blocking). Sets *addr when
 * not NULL and *port when not NULL. Aborts on failure. */
int test_listen_any(struct sockaddr_in *addr, uint16_t *port);

#endif
