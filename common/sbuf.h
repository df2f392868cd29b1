/** A fixed-capacity string builder over caller-owned memory. It never allocates: appends past
 * the capacity set `overflow` and are dropped, so a builder for response headers or JSON can
 * never grow without bound. Check `overflow` once at the end. */
#ifndef WINCH_COMMON_SBUF_H
#define WINCH_COMMON_SBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sbuf {
    char *p;    /* borrowed memory, always NUL-terminated while cap > 0 */
    size_t len; /* bytes used, excluding the NUL */
    size_t cap; /* bytes available including the NUL */
    bool overflow;
} sbuf_t;

/** mem (borrowed) must outlive the builder; cap includes room for the terminating NUL. */
void sbuf_init(sbuf_t *b, char *mem, size_t cap);
void sbuf_add(sbuf_t *b, const void *data, size_t n);
void sbuf_puts(sbuf_t *b, const char *s);
void sbuf_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Appends s as the inside of a JSON string (quotes not included), escaping as RFC 8259 asks. */
void sbuf_json_escape(sbuf_t *b, const char *s, size_t n);

#endif
