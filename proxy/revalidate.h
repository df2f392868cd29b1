/** Tag checks: what a tag names now at the upstream, asked once however many requests want to
 * know, and finished whether or not anyone still waits — the background half of
 * stale-while-revalidate. A check asks with HEAD (free under Docker Hub's rate limit); a digest
 * the cache holds is recorded at once, an unknown one is fetched by digest, checked and stored
 * (intake.c). The requests waiting for a check are flights' waiters (common/flight.h); one
 * that stops waiting (its stale answer went out, or its client left) leaves, and the check
 * goes on and records what it found. Owned by the app; loop thread only. Internal to proxy/. */
#ifndef WINCH_PROXY_REVALIDATE_H
#define WINCH_PROXY_REVALIDATE_H

#include <stddef.h>

#include "common/flight.h"
#include "proxy/call.h"

/** What a check found. */
typedef struct reval_result {
    /* 0: the tag names digest, whose manifest is in the cache now (or, if storing it failed,
     * in body); WE_NOTFOUND: the upstream says the tag does not exist; else why the check
     * failed (status is the upstream's HTTP status then, 0 if none). */
    int err;
    int status;
    const char *retry_after; /* the upstream's, for a 429; borrowed, may be NULL */
    char digest[REF_DIGEST_MAX + 1];
    const char *media_type; /* of body; borrowed */
    const char *body;       /* the manifest fetched by this check (borrowed), NULL if cached */
    size_t len;
} reval_result_t;

typedef struct reval_waiter reval_waiter_t;
struct reval_waiter {
    flight_waiter_t w; /* private */
    /** The check ended; res is borrowed for the call. w has left the check already. */
    void (*done)(reval_waiter_t *w, const reval_result_t *res);
};

/** Makes w wait for the check of c's tag (route.upstream, route.name, route.ref), starting it
 * when none runs. w->done runs exactly once, never inside this call, unless w leaves first.
 * Returns 0, or an error (w not waiting): WE_DOWN when the upstream's breaker is open. */
int revalidate_join(call_t *c, reval_waiter_t *w);
/** w stops waiting; the check goes on. Idempotent. */
void revalidate_leave(reval_waiter_t *w);

typedef struct revalidator revalidator_t;
/** The table of checks running. *out owned by the caller. */
int revalidator_create(revalidator_t **out);
/** Cancels every check (shutdown): upstream requests are cancelled, waiters told WE_CANCELLED. */
void revalidator_cancel_all(revalidator_t *v);
/** Checks running (for shutdown checks and metrics). */
size_t revalidator_count(const revalidator_t *v);
void revalidator_free(revalidator_t *v);

#endif
