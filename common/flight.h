/** Many waiters, one operation.
 *
 * A flight is an operation in progress (an upstream request, a token fetch) that every caller
 * asking for the same thing while it runs shares, instead of starting its own. A flight table
 * finds the flight for a key; the first caller creates it and starts the operation (it owns the
 * operation, whose handle it may park in the flight); later callers join as waiters. When the
 * operation ends, its owner lands the flight with a result: the flight leaves the table first
 * (so a waiter that asks again from its callback starts a new flight), then every waiter is
 * told, in the order they joined, and the flight is freed.
 *
 * A waiter that stops waiting (its client went away) leaves; when the last one leaves, the
 * owner decides whether the operation is still worth finishing (a token that will be cached)
 * or is cancelled (flight_drop).
 *
 * The blob fill (cache/fill.c) is the one single-flight mechanism that is not a flight: its
 * waiters read a growing file as it is written, rather than wait for one result.
 *
 * No I/O and no allocation besides the flight itself: waiters are embedded in the callers' own
 * structs. Loop thread only.
 */
#ifndef WINCH_COMMON_FLIGHT_H
#define WINCH_COMMON_FLIGHT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct flight flight_t;
typedef struct flight_table flight_table_t;
typedef struct flight_waiter flight_waiter_t;

/** A waiter is told the result, which is borrowed for the duration of the call. The waiter has
 * already left the flight when this runs; it may free the struct it is embedded in. */
typedef void (*flight_land_fn)(flight_waiter_t *w, void *result);

struct flight_waiter {
    /* Private to flight.c; zero-initialise. */
    flight_land_fn land;
    flight_waiter_t *next;
    flight_t *fl;
};

/** An empty table. *out owned by the caller (flight_table_free). Returns 0 or -ENOMEM. */
int flight_table_create(flight_table_t **out);

/** Frees the table. Every flight must have landed or been dropped. NULL is fine. */
void flight_table_free(flight_table_t *t);

/** Flights in the table (for shutdown checks and metrics). */
size_t flight_table_count(const flight_table_t *t);

/** Makes w wait for the flight keyed key (NUL-terminated, copied), creating the flight when
 * none is running: then *created is true and the caller must start the operation and, if it
 * wants it back later, flight_set_op. land runs when the flight lands, never inside this call.
 * *out (may be NULL) is the flight, borrowed. Returns 0 or -ENOMEM (w not waiting). */
int flight_join(flight_table_t *t, const char *key, flight_waiter_t *w, flight_land_fn land,
                flight_t **out, bool *created);

/** The owner's handle of the operation (borrowed both ways); NULL until set. */
void flight_set_op(flight_t *f, void *op);
void *flight_op(const flight_t *f);
/** The key the flight was created with (borrowed). */
const char *flight_key(const flight_t *f);
/** Waiters still waiting. */
size_t flight_waiters(const flight_t *f);

/** w stops waiting (idempotent: a waiter that is not waiting is left alone). Returns the flight
 * when w was its last waiter — the flight stays in the table, and the owner either lets the
 * operation finish and lands it (to nobody), or cancels it and calls flight_drop — else NULL
 * (also while the flight is landing: a land callback may make other waiters leave). */
flight_t *flight_leave(flight_waiter_t *w);

/** Removes a flight that has no waiters from the table and frees it; nobody is told. */
void flight_drop(flight_t *f);

/** The operation ended with result (borrowed by each land call): the flight leaves the table,
 * every waiter is told in joining order, and the flight is freed. A waiter that joins a new
 * flight for the same key from its land call starts a new one. */
void flight_land(flight_t *f, void *result);

#endif
