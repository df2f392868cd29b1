/** A growable byte buffer with a hard bound, for bodies that arrive in pieces from the network
 * (an upstream manifest, a tags list, a token answer). It grows by doubling and never past
 * `max`: an append that would cross it is refused whole, so a caller can never be made to
 * hold more than it configured. */
#ifndef WINCH_COMMON_BUF_H
#define WINCH_COMMON_BUF_H

#include <stddef.h>

typedef struct buf {
    char *p;    /* owned; NULL until the first append; always NUL-terminated after one */
    size_t len; /* bytes held, excluding the NUL */
    size_t cap; /* bytes allocated */
    size_t max; /* the bound on len */
} buf_t;

/** An empty buffer that will hold at most max bytes. Allocates nothing. */
void buf_init(buf_t *b, size_t max);

/** Appends data[0..n). Returns 0; WE_TOOBIG when len + n would pass max (nothing appended,
 * the buffer unchanged); -ENOMEM. */
int buf_append(buf_t *b, const void *data, size_t n);

/** Hands the bytes to the caller: returns a malloc'd, NUL-terminated block of *len bytes (owned
 * by the caller; never NULL: an empty buffer gives a fresh "" block, or NULL only on -ENOMEM)
 * and leaves b empty with the same bound. */
char *buf_take(buf_t *b, size_t *len);

/** Empties b but keeps its memory for the next use (a connection's request headers). */
void buf_clear(buf_t *b);

/** Frees the bytes; b is empty afterwards (same bound). */
void buf_free(buf_t *b);

/** Like buf_free, but overwrites the bytes first, in a way the compiler may not elide: for
 * buffers that held a token or a password. */
void buf_free_secret(buf_t *b);

#endif
