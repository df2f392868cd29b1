/* The tar reader (common/tar.c) over arbitrary bytes, as winch import reads an archive from
 * anyone: it never reads past the input, every entry it returns has a NUL-free name within
 * TAR_NAME_MAX and no more data than the input holds, and errors are sticky. */
#include "common/err.h"
#include "common/tar.h"
#include "fuzz.h"

typedef struct src {
    const uint8_t *p;
    size_t len, off;
} src_t;

static ssize_t src_read(void *arg, void *buf, size_t len)
{
    src_t *s = arg;
    size_t left = s->len - s->off;
    if (len > left)
        len = left;
    /* Short reads, to exercise the loops that refill. */
    if (len > 700)
        len = 700;
    memcpy(buf, s->p + s->off, len);
    s->off += len;
    return (ssize_t)len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    src_t s = {.p = data, .len = size};
    tar_io_t io = {.read = src_read, .arg = &s};
    tar_reader_t *t;
    tar_entry_t e;
    FUZZ_CHECK(tar_reader_new(&t, &io) == 0);
    uint64_t data_total = 0;
    int rc;
    int entries = 0;
    while ((rc = tar_next(t, &e)) == 1) {
        entries++;
        size_t n = strlen(e.name);
        FUZZ_CHECK(n > 0 && n <= TAR_NAME_MAX);
        FUZZ_CHECK(e.type == TAR_FILE || e.type == TAR_DIR || e.type == TAR_OTHER);
        FUZZ_CHECK(tar_left(t) == e.size);
        char buf[1024];
        ssize_t got;
        uint64_t sum = 0;
        /* Read half the entries whole, skip the others. */
        if (entries % 2) {
            while ((got = tar_read(t, buf, sizeof buf)) > 0)
                sum += (uint64_t)got;
            if (got == 0)
                FUZZ_CHECK(sum == e.size);
            else
                FUZZ_CHECK(got == WE_SHORT);
            data_total += sum;
        }
        FUZZ_CHECK(s.off <= s.len);
        FUZZ_CHECK(data_total <= size);
    }
    FUZZ_CHECK(rc == 0 || rc == WE_INVALID || rc == WE_SHORT || rc == WE_TOOBIG);
    if (rc < 0)
        FUZZ_CHECK(tar_next(t, &e) == rc);
    tar_reader_free(t);
    return 0;
}
