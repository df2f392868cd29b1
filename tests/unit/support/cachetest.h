/** What the cache unit tests (test_cache_*.c) share: made-up content and its digest, a
 * producer that drives a fill chunk by chunk the way the proxy does, and reading files and
 * directories back. Everything aborts through CHECK on a failure it does not report. */
#ifndef WINCH_TESTS_CACHETEST_H
#define WINCH_TESTS_CACHETEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/cache.h"

/** xorshift32: advances *s (never 0) and returns it. */
uint32_t cachetest_rng(uint32_t *s);

/** len pseudo-random bytes from seed; malloc'd, owned by the caller. */
unsigned char *cachetest_random_bytes(size_t len, uint32_t seed);

/** "alg:hex" of data into out. */
void cachetest_digest_of(enum ref_alg alg, const void *data, size_t len,
                         char out[REF_DIGEST_MAX + 1]);

/** Reads exactly len bytes of fd with pread from offset 0 and checks that nothing follows;
 * malloc'd, owned by the caller. */
unsigned char *cachetest_read_all(int fd, size_t len);

/** Entries of dir, "." and ".." not counted. */
int cachetest_count_entries(const char *dir);

/** Entries of <cache_dir>/tmp: fills and puts in progress, or leftovers. */
int cachetest_tmp_count(const char *cache_dir);

/** A producer: writes data in chunks of `chunk`, one write in flight, then finishes. */
typedef struct cachetest_producer {
    fill_t *f;                 /* borrowed: the producer's reference, dropped only if asked */
    const unsigned char *data; /* borrowed until the last write completes */
    size_t len, off, chunk, last;
    int status;           /* the first error a write returned or reported */
    bool no_finish;       /* stop after the last write without fill_finish */
    bool unref_at_finish; /* drop the producer's reference right after fill_finish */
} cachetest_producer_t;

/** Sends the next chunk (or finishes); each completion sends the following one. */
void cachetest_producer_next(cachetest_producer_t *p);

/** The producer's fill_write_cb (arg is the producer). */
void cachetest_producer_cb(void *arg, int status);

#endif
