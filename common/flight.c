#include "common/flight.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"

/* A few hundred flights at most run at once (bounded by the upstream queues): a fixed table
 * keeps lookups short without resizing. */
#define FLIGHT_BUCKETS 256

struct flight {
    flight_table_t *t;     /* NULL once out of the table (landing) */
    flight_t *tnext;       /* bucket chain */
    flight_waiter_t *head; /* waiters in joining order */
    flight_waiter_t *tail;
    size_t nwaiters;
    void *op;
    char key[];
};

struct flight_table {
    flight_t *buckets[FLIGHT_BUCKETS];
    size_t count;
};

int flight_table_create(flight_table_t **out)
{
    flight_table_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    *out = t;
    return 0;
}

void flight_table_free(flight_table_t *t)
{
    free(t);
}

size_t flight_table_count(const flight_table_t *t)
{
    return t->count;
}

static flight_t **slot_of(flight_table_t *t, const char *key)
{
    return &t->buckets[hash_str(key) % FLIGHT_BUCKETS];
}

static void table_remove(flight_t *f)
{
    flight_table_t *t = f->t;
    if (!t)
        return;
    for (flight_t **pp = slot_of(t, f->key); *pp; pp = &(*pp)->tnext) {
        if (*pp == f) {
            *pp = f->tnext;
            break;
        }
    }
    f->t = NULL;
    t->count--;
}

int flight_join(flight_table_t *t, const char *key, flight_waiter_t *w, flight_land_fn land,
                flight_t **out, bool *created)
{
    flight_t **slot = slot_of(t, key);
    flight_t *f = *slot;
    while (f && strcmp(f->key, key) != 0)
        f = f->tnext;
    *created = false;
    if (!f) {
        size_t kl = strlen(key);
        f = calloc(1, sizeof *f + kl + 1);
        if (!f)
            return -ENOMEM;
        memcpy(f->key, key, kl + 1);
        f->t = t;
        f->tnext = *slot;
        *slot = f;
        t->count++;
        *created = true;
    }
    w->land = land;
    w->next = NULL;
    w->fl = f;
    if (f->tail)
        f->tail->next = w;
    else
        f->head = w;
    f->tail = w;
    f->nwaiters++;
    if (out)
        *out = f;
    return 0;
}

void flight_set_op(flight_t *f, void *op)
{
    f->op = op;
}

void *flight_op(const flight_t *f)
{
    return f->op;
}

const char *flight_key(const flight_t *f)
{
    return f->key;
}

size_t flight_waiters(const flight_t *f)
{
    return f->nwaiters;
}

flight_t *flight_leave(flight_waiter_t *w)
{
    flight_t *f = w->fl;
    if (!f)
        return NULL;
    flight_waiter_t *prev = NULL;
    for (flight_waiter_t *x = f->head; x; prev = x, x = x->next) {
        if (x != w)
            continue;
        if (prev)
            prev->next = w->next;
        else
            f->head = w->next;
        if (f->tail == w)
            f->tail = prev;
        f->nwaiters--;
        break;
    }
    w->fl = NULL;
    w->next = NULL;
    /* While landing (out of the table) the flight is flight_land's to free, never the owner's. */
    return f->nwaiters == 0 && f->t ? f : NULL;
}

void flight_drop(flight_t *f)
{
    table_remove(f);
    free(f);
}

void flight_land(flight_t *f, void *result)
{
    table_remove(f);
    /* Each waiter is unlinked before it is told, so it may free itself, leave other flights or
     * join new ones from its callback. */
    while (f->head) {
        flight_waiter_t *w = f->head;
        f->head = w->next;
        if (!f->head)
            f->tail = NULL;
        f->nwaiters--;
        w->fl = NULL;
        w->next = NULL;
        w->land(w, result);
    }
    free(f);
}
