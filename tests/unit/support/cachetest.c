#include "cachetest.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

uint32_t cachetest_rng(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

unsigned char *cachetest_random_bytes(size_t len, uint32_t seed)
{
    unsigned char *b = malloc(len ? len : 1);
    CHECK(b != NULL);
    uint32_t s = seed ? seed : 1;
    for (size_t i = 0; i < len; i++)
        b[i] = (unsigned char)cachetest_rng(&s);
    return b;
}

void cachetest_digest_of(enum ref_alg alg, const void *data, size_t len,
                         char out[REF_DIGEST_MAX + 1])
{
    digester_t *d;
    CHECK_INT(digester_new(&d, alg), 0);
    digester_update(d, data, len);
    CHECK_INT(digester_final(d, out), 0);
    digester_free(d);
}

unsigned char *cachetest_read_all(int fd, size_t len)
{
    unsigned char *b = malloc(len ? len : 1);
    CHECK(b != NULL);
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, b + got, len - got, (off_t)got);
        CHECK(n > 0);
        got += (size_t)n;
    }
    unsigned char extra;
    CHECK_INT(pread(fd, &extra, 1, (off_t)len), 0);
    return b;
}

int cachetest_count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

int cachetest_tmp_count(const char *cache_dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tmp", cache_dir);
    return cachetest_count_entries(path);
}

void cachetest_producer_cb(void *arg, int status)
{
    cachetest_producer_t *p = arg;
    if (status) {
        p->status = status;
        return;
    }
    p->off += p->last;
    cachetest_producer_next(p);
}

void cachetest_producer_next(cachetest_producer_t *p)
{
    if (p->off == p->len) {
        if (p->no_finish)
            return;
        fill_finish(p->f);
        if (p->unref_at_finish) {
            fill_unref(p->f);
            p->f = NULL;
        }
        return;
    }
    size_t n = p->len - p->off < p->chunk ? p->len - p->off : p->chunk;
    p->last = n;
    int rc = fill_write(p->f, p->data + p->off, n, cachetest_producer_cb, p);
    if (rc)
        p->status = rc;
}
