/* Crash consistency: a child process fills blobs and stores manifests back to back on a real
 * cache and is SIGKILLed at random instants (once in the middle of a 96 MiB blob); after each
 * kill the parent reopens the cache, finds tmp/ swept and verifies that every index entry
 * hashes to its digest and that nothing committed before was lost.
 *
 * Its own binary: the parent forks while it has no threadpool threads (it only opens, scans
 * and closes the cache between kills), which fork requires, and ThreadSanitizer with it. */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/internal.h"
#include "cachetest.h"
#include "check.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "testutil.h"

#define MT_LAYER "application/vnd.oci.image.layer.v1.tar+gzip"

static uv_loop_t loop;

/* The child: fills blobs and stores manifests back to back until it is killed. */
struct crasher {
    cache_t *c;
    uint32_t rng;
    size_t big; /* first blob's size; 0 for none */
    unsigned char *buf;
    size_t cap;
    fill_t *f;
    fill_sub_t sub;
    cachetest_producer_t p;
    int count;
};

static void crasher_next(struct crasher *cr);

static void crasher_notify(fill_sub_t *s)
{
    struct crasher *cr = container_of(s, struct crasher, sub);
    enum fill_state st = fill_state(cr->f);
    if (st != FILL_DONE && st != FILL_FAILED)
        return;
    fill_unsubscribe(s);
    fill_unref(cr->f);
    cr->f = NULL;
    crasher_next(cr);
}

static void crasher_next(struct crasher *cr)
{
    char digest[REF_DIGEST_MAX + 1], body[256], tag[32];
    bool created;
    size_t len = cr->big ? cr->big : cachetest_rng(&cr->rng) % (2 * 1024 * 1024);
    cr->big = 0;
    if (len > cr->cap)
        len = cr->cap;
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = cachetest_rng(&cr->rng);
        memcpy(cr->buf + i, &v, len - i < 4 ? len - i : 4);
    }
    int n = snprintf(body, sizeof body, "{\"schemaVersion\":2,\"n\":%d,\"r\":%u}", cr->count,
                     cachetest_rng(&cr->rng));
    cachetest_digest_of(REF_ALG_SHA256, body, (size_t)n, digest);
    snprintf(tag, sizeof tag, "t%d", cr->count++);
    cache_manifest_put_t mp = {.digest = digest,
                               .media_type = "application/vnd.oci.image.manifest.v1+json",
                               .bytes = body,
                               .len = (size_t)n,
                               .upstream = "docker.io",
                               .repo = "library/crash",
                               .tag = tag};
    CHECK_INT(cache_put_manifest(cr->c, &mp, NULL, NULL), 0);

    cachetest_digest_of(cr->count % 2 ? REF_ALG_SHA256 : REF_ALG_SHA512, cr->buf, len, digest);
    CHECK_INT(fill_get(cr->c, digest, &cr->f, &created), 0);
    CHECK_INT(fill_set_size(cr->f, len, MT_LAYER), 0);
    fill_subscribe(cr->f, &cr->sub, crasher_notify);
    cr->p = (cachetest_producer_t){.f = cr->f, .data = cr->buf, .len = len, .chunk = 256 * 1024};
    cachetest_producer_next(&cr->p);
}

static void crash_child(const char *dir, uint32_t seed, size_t big)
{
    uv_loop_t l;
    cache_t *c;
    CHECK_INT(uv_loop_init(&l), 0);
    cache_opts_t o = {.loop = &l, .dir = dir};
    CHECK_INT(cache_open(&c, &o), 0);
    struct crasher cr = {.c = c, .rng = seed, .big = big, .cap = big > 4 << 20 ? big : 4 << 20};
    cr.buf = malloc(cr.cap);
    CHECK(cr.buf != NULL);
    crasher_next(&cr);
    uv_run(&l, UV_RUN_DEFAULT);
    _exit(3); /* never reached: the chain does not end */
}

/* Size of the largest file in <dir>/tmp. */
static off_t largest_tmp(const char *dir)
{
    char path[512], file[1024];
    snprintf(path, sizeof path, "%s/tmp", dir);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    off_t max = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        snprintf(file, sizeof file, "%s/%s", path, e->d_name);
        if (e->d_name[0] != '.' && stat(file, &st) == 0 && st.st_size > max)
            max = st.st_size;
    }
    closedir(d);
    return max;
}

struct verify {
    cache_t *c;
    int entries;
};

static int verify_entry(void *arg, const char *digest, const cache_entry_t *e)
{
    struct verify *v = arg;
    enum ref_alg alg;
    char got[REF_DIGEST_MAX + 1];
    int fd;
    CHECK_INT(ref_digest_parse(digest, strlen(digest), &alg), 0);
    CHECK_INT(cache_open_content(v->c, digest, &fd), 0);
    struct stat st;
    CHECK_INT(fstat(fd, &st), 0);
    CHECK_INT(st.st_size, e->size);
    unsigned char *b = cachetest_read_all(fd, e->size);
    close(fd);
    cachetest_digest_of(alg, b, e->size, got);
    free(b);
    CHECK_STR(got, digest);
    v->entries++;
    return 0;
}

static void test_crash_consistency(void)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/crash", test_tmpdir("winch-cache-crash"));
    uint32_t rng = (uint32_t)time(NULL) | 1;
    fprintf(stderr, "crash test seed %u\n", rng);
    int total = 0;
    for (int round = 0; round < 8; round++) {
        size_t big = round == 0 ? 96u << 20 : 0;
        uint32_t seed = cachetest_rng(&rng);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0)
            crash_child(dir, seed, big);
        if (big) {
            /* Kill it mid-way through the big blob: once its temp file is well under way. */
            int64_t deadline = time_mono_ms() + 10000;
            while (largest_tmp(dir) < (off_t)(big / 3) && time_mono_ms() < deadline)
                test_sleep_ms(1);
            fprintf(stderr, "crash test: killing with a %lld-byte temp file of %zu\n",
                    (long long)largest_tmp(dir), big);
        } else {
            test_sleep_ms(20 + (long)(cachetest_rng(&rng) % 400));
        }
        CHECK_INT(kill(pid, SIGKILL), 0);
        int wstatus;
        CHECK_INT(waitpid(pid, &wstatus, 0), pid);
        CHECK(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);

        /* Reopen: temp files are swept, every index entry hashes to its digest. */
        cache_t *c;
        cache_opts_t o = {.loop = &loop, .dir = dir};
        CHECK_INT(cache_open(&c, &o), 0);
        CHECK_INT(cachetest_tmp_count(dir), 0);
        struct verify v = {.c = c};
        CHECK_INT(index_content_each(c, verify_entry, &v), 0);
        CHECK(v.entries >= total); /* nothing committed is ever lost */
        total = v.entries;
        cache_close(c);
    }
    fprintf(stderr, "crash test: %d index entries verified after 8 kills\n", total);
    CHECK(total > 0);
}

static const test_case_t cases[] = {
    TEST_CASE(test_crash_consistency),
};

int main(int argc, char **argv)
{
    CHECK_INT(uv_loop_init(&loop), 0);
    int rc = test_main(argc, argv, cases, ARRAY_SIZE(cases));
    CHECK_INT(uv_loop_close(&loop), 0);
    return rc;
}
