/* common/tar.c: what winch export writes reads back, GNU tar reads it and lists the same names,
 * what GNU tar writes (ustar, pax, GNU long names) reads, and malformed archives fail cleanly:
 * a bad checksum, a truncated header or body, a missing end block, oversized metadata. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/err.h"
#include "common/tar.h"
#include "common/util.h"
#include "testutil.h"

typedef struct mem {
    char *p;
    size_t len, cap, off;
    size_t max_read; /* bytes per read call (0: all): exercises short reads */
} mem_t;

static int mem_write(void *arg, const void *data, size_t len)
{
    mem_t *m = arg;
    if (m->len + len > m->cap) {
        size_t cap = (m->len + len) * 2 + 4096;
        char *p = realloc(m->p, cap);
        CHECK(p != NULL);
        m->p = p;
        m->cap = cap;
    }
    memcpy(m->p + m->len, data, len);
    m->len += len;
    return 0;
}

static ssize_t mem_read(void *arg, void *buf, size_t len)
{
    mem_t *m = arg;
    size_t left = m->len - m->off;
    if (len > left)
        len = left;
    if (m->max_read && len > m->max_read)
        len = m->max_read;
    memcpy(buf, m->p + m->off, len);
    m->off += len;
    return (ssize_t)len;
}

static int mem_skip(void *arg, uint64_t n)
{
    mem_t *m = arg;
    if (n > m->len - m->off)
        return WE_SHORT;
    m->off += (size_t)n;
    return 0;
}

static void put_file(mem_t *m, const char *name, const char *data, size_t len)
{
    CHECK_INT(tar_put_header(mem_write, m, name, len, false), 0);
    CHECK_INT(mem_write(m, data, len), 0);
    CHECK_INT(tar_put_pad(mem_write, m, len), 0);
}

/* Sets the type of the header block at off and fixes its checksum. */
static void patch_type(mem_t *m, size_t off, char type)
{
    char *h = m->p + off;
    unsigned sum = 0;
    h[156] = type;
    memset(h + 148, ' ', 8);
    for (int i = 0; i < TAR_BLOCK; i++)
        sum += (unsigned char)h[i];
    snprintf(h + 148, 8, "%06o", sum);
}

static char long_name[300];

/* oci-layout, a directory, a short file, an empty file, a 200-byte name. */
static void build(mem_t *m)
{
    memset(m, 0, sizeof *m);
    memset(long_name, 'a', sizeof long_name - 1);
    memcpy(long_name, "blobs/sha512/", 13);
    long_name[220] = '\0';
    put_file(m, "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}", 30);
    CHECK_INT(tar_put_header(mem_write, m, "blobs/", 0, true), 0);
    put_file(m, "blobs/sha256/x", "hello", 5);
    put_file(m, "empty", "", 0);
    char big[1500];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('A' + i % 26);
    put_file(m, long_name, big, sizeof big);
    CHECK_INT(tar_put_end(mem_write, m), 0);
}

static int next(tar_reader_t *t, tar_entry_t *e, const char *name, uint64_t size,
                enum tar_type type)
{
    int rc = tar_next(t, e);
    CHECK_INT(rc, 1);
    CHECK_STR(e->name, name);
    CHECK_INT(e->size, size);
    CHECK_INT(e->type, type);
    return rc;
}

static void read_back(mem_t *m, bool skip)
{
    tar_io_t io = {.read = mem_read, .skip = skip ? mem_skip : NULL, .arg = m};
    tar_reader_t *t;
    tar_entry_t e;
    char buf[2000];
    m->off = 0;
    CHECK_INT(tar_reader_new(&t, &io), 0);
    next(t, &e, "oci-layout", 30, TAR_FILE);
    size_t got = 0;
    ssize_t n;
    while ((n = tar_read(t, buf + got, sizeof buf - got)) > 0)
        got += (size_t)n;
    CHECK_INT(got, 30);
    CHECK(memcmp(buf, "{\"imageLayoutVersion\"", 21) == 0);
    CHECK_INT(tar_read(t, buf, sizeof buf), 0);
    next(t, &e, "blobs/", 0, TAR_DIR);
    next(t, &e, "blobs/sha256/x", 5, TAR_FILE);
    /* Left unread: tar_next skips it. */
    next(t, &e, "empty", 0, TAR_FILE);
    next(t, &e, long_name, 1500, TAR_FILE);
    got = 0;
    while ((n = tar_read(t, buf + got, 7)) > 0)
        got += (size_t)n;
    CHECK_INT(got, 1500);
    CHECK(buf[0] == 'A' && buf[1499] == (char)('A' + 1499 % 26));
    CHECK_INT(tar_next(t, &e), 0);
    tar_reader_free(t);
}

static void test_round_trip(void)
{
    mem_t m;
    build(&m);
    CHECK_INT(m.len % TAR_BLOCK, 0);
    read_back(&m, true);
    read_back(&m, false);
    m.max_read = 3; /* a pipe that hands out bytes in dribbles */
    read_back(&m, false);
    free(m.p);
}

/* Runs a shell command (the test's own fixed text: GNU tar to make reference archives);
 * returns its exit status. */
static int sh(const char *cmd)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_gnu_tar_reads_ours(void)
{
    const char *dir = test_tmpdir("tar");
    char path[512], list[512], cmd[2048];
    mem_t m;
    build(&m);
    snprintf(path, sizeof path, "%s/ours.tar", dir);
    snprintf(list, sizeof list, "%s/list", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK_INT(fwrite(m.p, 1, m.len, f), m.len);
    fclose(f);
    snprintf(cmd, sizeof cmd, "tar -tf %s > %s", path, list);
    CHECK_INT(sh(cmd), 0);
    f = fopen(list, "r");
    CHECK(f != NULL);
    char line[400];
    const char *want[] = {"oci-layout", "blobs/", "blobs/sha256/x", "empty", long_name};
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        CHECK(fgets(line, sizeof line, f) != NULL);
        line[strcspn(line, "\n")] = '\0';
        CHECK_STR(line, want[i]);
    }
    CHECK(fgets(line, sizeof line, f) == NULL);
    fclose(f);
    /* And extracts the same bytes. */
    snprintf(cmd, sizeof cmd,
             "mkdir %s/x && tar -xf %s -C %s/x && printf hello | cmp -s %s/x/blobs/sha256/x -", dir,
             path, dir, dir);
    CHECK_INT(sh(cmd), 0);
    free(m.p);
}

static void read_file(const char *path, mem_t *m)
{
    memset(m, 0, sizeof *m);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        mem_write(m, buf, n);
    fclose(f);
}

/* GNU tar's own formats: long names as pax records, GNU 'L' entries, ustar prefixes. */
static void test_reads_gnu_tar(void)
{
    static const char *const formats[] = {"gnu", "pax", "ustar", "posix"};
    const char *dir = test_tmpdir("tarsrc");
    char sub[1024], cmd[4096];
    /* A 150-byte path of which each component is short, so ustar can split it too. */
    snprintf(sub, sizeof sub, "%s/src/%s/%s", dir,
             "d1234567890123456789012345678901234567890123456789",
             "d1234567890123456789012345678901234567890123456789");
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s && printf hello > %s/f12345678901234567890123456789012345678901234567"
             " && printf x > %s/../../top",
             sub, sub, sub);
    CHECK_INT(sh(cmd), 0);
    for (size_t i = 0; i < ARRAY_SIZE(formats); i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.tar", dir, formats[i]);
        snprintf(cmd, sizeof cmd, "tar --format=%s -cf %s -C %s/src .", formats[i], path, dir);
        CHECK_INT(sh(cmd), 0);
        mem_t m;
        read_file(path, &m);
        tar_io_t io = {.read = mem_read, .arg = &m};
        tar_reader_t *t;
        tar_entry_t e;
        CHECK_INT(tar_reader_new(&t, &io), 0);
        bool seen_long = false, seen_top = false;
        int rc;
        while ((rc = tar_next(t, &e)) == 1) {
            char data[16] = "";
            if (e.type == TAR_FILE)
                CHECK(tar_read(t, data, sizeof data) == (ssize_t)e.size);
            if (strcmp(e.name, "top") == 0) {
                seen_top = true;
                CHECK(memcmp(data, "x", 1) == 0);
            }
            if (strstr(e.name, "/f1234567890") && e.type == TAR_FILE) {
                seen_long = true;
                CHECK(strlen(e.name) > 100);
                CHECK(memcmp(data, "hello", 5) == 0);
            }
        }
        CHECK_INT(rc, 0);
        CHECK(seen_long && seen_top);
        tar_reader_free(t);
        free(m.p);
    }
}

static int next_rc(mem_t *m)
{
    tar_io_t io = {.read = mem_read, .arg = m};
    tar_reader_t *t;
    tar_entry_t e;
    int rc;
    m->off = 0;
    CHECK_INT(tar_reader_new(&t, &io), 0);
    while ((rc = tar_next(t, &e)) == 1) {
        char buf[4096];
        ssize_t n;
        while ((n = tar_read(t, buf, sizeof buf)) > 0)
            ;
        if (n < 0) {
            rc = (int)n;
            break;
        }
    }
    /* Errors are sticky. */
    if (rc < 0)
        CHECK_INT(tar_next(t, &e), rc);
    tar_reader_free(t);
    return rc;
}

static void test_malformed(void)
{
    mem_t m;
    build(&m);
    CHECK_INT(next_rc(&m), 0);
    /* A flipped byte in a header: the checksum catches it. */
    m.p[10] ^= 1;
    CHECK_INT(next_rc(&m), WE_INVALID);
    m.p[10] ^= 1;
    /* Truncated: inside a body, inside a header, and before the end block. */
    size_t full = m.len;
    m.len = TAR_BLOCK + 10;
    CHECK_INT(next_rc(&m), WE_SHORT);
    m.len = TAR_BLOCK * 2 + 100;
    CHECK_INT(next_rc(&m), WE_SHORT);
    m.len = full - 2 * TAR_BLOCK;
    CHECK_INT(next_rc(&m), WE_SHORT);
    m.len = 0;
    CHECK_INT(next_rc(&m), WE_SHORT);
    m.len = full;
    free(m.p);

    /* A bad size field (not octal), re-checksummed so only the number is wrong. */
    memset(&m, 0, sizeof m);
    put_file(&m, "f", "abc", 3);
    CHECK_INT(tar_put_end(mem_write, &m), 0);
    memcpy(m.p + 124, "0000000009x", 11);
    patch_type(&m, 0, '0');
    CHECK_INT(next_rc(&m), WE_INVALID);
    free(m.p);

    /* A pax header over the bound, and ones whose records do not parse. */
    memset(&m, 0, sizeof m);
    char *huge = calloc(1, TAR_META_MAX + 10);
    CHECK(huge != NULL);
    put_file(&m, "PaxHeaders/x", huge, TAR_META_MAX + 10);
    patch_type(&m, 0, 'x');
    put_file(&m, "f", "", 0);
    tar_put_end(mem_write, &m);
    CHECK_INT(next_rc(&m), WE_TOOBIG);
    free(m.p);
    free(huge);

    static const char *const bad_pax[] = {"5 a=b",      "99 path=x\n", "7 path\n", "x path=y\n",
                                          "9 size=z\n", "3 =\n",       "0 \n"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_pax); i++) {
        memset(&m, 0, sizeof m);
        put_file(&m, "PaxHeaders/x", bad_pax[i], strlen(bad_pax[i]));
        patch_type(&m, 0, 'x');
        put_file(&m, "f", "", 0);
        tar_put_end(mem_write, &m);
        if (next_rc(&m) != WE_INVALID) {
            fprintf(stderr, "pax %zu accepted: %s\n", i, bad_pax[i]);
            abort();
        }
        free(m.p);
    }
    /* A good pax header renames and resizes the entry after it. */
    memset(&m, 0, sizeof m);
    put_file(&m, "PaxHeaders/x", "16 path=renamed\n10 size=3\n", 26);
    patch_type(&m, 0, 'x');
    put_file(&m, "f", "abcdef", 6);
    tar_put_end(mem_write, &m);
    {
        tar_io_t io = {.read = mem_read, .arg = &m};
        tar_reader_t *t;
        tar_entry_t e;
        CHECK_INT(tar_reader_new(&t, &io), 0);
        next(t, &e, "renamed", 3, TAR_FILE);
        tar_reader_free(t);
    }
    free(m.p);
    /* Names the writer refuses. */
    memset(&m, 0, sizeof m);
    CHECK_INT(tar_put_header(mem_write, &m, "", 0, false), WE_INVALID);
    char *toolong = malloc(TAR_NAME_MAX + 2);
    CHECK(toolong != NULL);
    memset(toolong, 'n', TAR_NAME_MAX + 1);
    toolong[TAR_NAME_MAX + 1] = '\0';
    CHECK_INT(tar_put_header(mem_write, &m, toolong, 0, false), WE_INVALID);
    free(toolong);
    free(m.p);
}

/* A size beyond 11 octal digits travels as a pax record and base-256. */
static void test_big_size(void)
{
    mem_t m = {0};
    uint64_t size = 10ULL << 30;
    CHECK_INT(tar_put_header(mem_write, &m, "blobs/sha256/big", size, false), 0);
    tar_io_t io = {.read = mem_read, .arg = &m};
    tar_reader_t *t;
    tar_entry_t e;
    CHECK_INT(tar_reader_new(&t, &io), 0);
    CHECK_INT(tar_next(t, &e), 1);
    CHECK_STR(e.name, "blobs/sha256/big");
    CHECK(e.size == size);
    CHECK(tar_left(t) == size);
    tar_reader_free(t);
    free(m.p);
}

int main(int argc, char **argv)
{
    static const test_case_t cases[] = {
        TEST_CASE(test_round_trip), TEST_CASE(test_gnu_tar_reads_ours),
        TEST_CASE(test_reads_gnu_tar), TEST_CASE(test_malformed), TEST_CASE(test_big_size)};
    return test_main(argc, argv, cases, ARRAY_SIZE(cases));
}
