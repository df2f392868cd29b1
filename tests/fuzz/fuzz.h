/* What the fuzz targets share: an abort that names the broken property (libFuzzer saves the
 * input that triggered it), and a NUL-terminated copy of the input for APIs that take C
 * strings. Each target checks properties the public header promises, not just "no crash". */
#ifndef WINCH_TESTS_FUZZ_H
#define WINCH_TESTS_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property broken: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A malloc'd copy of data with a NUL after it (the copy may hold earlier NULs). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* True if s has no byte below 0x20 and no DEL: what a one-line message may hold. */
static inline int fuzz_printable_line(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f)
            return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
