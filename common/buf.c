#include "common/buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

void buf_init(buf_t *b, size_t max)
{
    b->p = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

int buf_append(buf_t *b, const void *data, size_t n)
{
    if (n > b->max - b->len)
        return WE_TOOBIG;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        /* Never reserve much more than the bound allows. */
        if (cap > b->max + 1)
            cap = b->max + 1;
        char *p = realloc(b->p, cap);
        if (!p)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

char *buf_take(buf_t *b, size_t *len)
{
    char *p = b->p;
    *len = b->len;
    if (!p) {
        p = malloc(1);
        if (p)
            p[0] = '\0';
    }
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

void buf_clear(buf_t *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

void buf_free(buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void buf_free_secret(buf_t *b)
{
    /* A volatile pointer keeps the stores: memset before free may be removed as dead. */
    volatile char *v = b->p;
    for (size_t i = 0; v && i < b->cap; i++)
        v[i] = 0;
    buf_free(b);
}
