/** Password checks for winch's own clients: HTTP Basic credentials against the bcrypt
 * htpasswd file (proxy/htpasswd.h). Internal to proxy/; proxy/access.c is its one user.
 *
 * bcrypt costs tens of milliseconds a check by design, so it never runs on the loop thread:
 *  - a check runs on libuv's threadpool, at most `max_running` at a time (the pool also does
 *    the cache's file work), with a bounded queue behind them (beyond: AUTHN_BUSY);
 *  - a success is remembered for cache_ttl_ms, keyed by an HMAC-SHA-256 of user and password
 *    under a key drawn at start (never the password; and a memory dump does not give a fast
 *    offline attack, as a plain hash would); a failure is remembered as a failure (never as a
 *    success) for at most 30 s, so a client retrying the same wrong password costs no bcrypt
 *    and spends no failure budget;
 *  - identical credentials checked while one check runs join it (one bcrypt for a burst of a
 *    CI fleet's requests);
 *  - every client address (IPv6 by /64) has a budget of failed checks: max_failures in a burst,
 *    refilled at max_failures per failure_window_ms; while it is spent, new checks from that
 *    address answer AUTHN_THROTTLED (successes already cached still pass); an address also has
 *    a bound on checks of its own waiting at once;
 *  - an unknown user costs the same bcrypt as a known one (checked against another entry's
 *    hash, result discarded), so timing does not tell which names exist.
 * The htpasswd file is re-read when its mtime, size, inode or ctime change (checked at most once
 * a second, on the threadpool), or on authn_reload; a file that no longer parses is logged
 * and the previous users stay. Loop thread only.
 */
#ifndef WINCH_PROXY_AUTHN_H
#define WINCH_PROXY_AUTHN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "common/flight.h"

typedef struct authn authn_t;

typedef struct authn_opts {
    uv_loop_t *loop;           /* borrowed */
    const char *htpasswd_path; /* borrowed; must outlive the authn */
    uint32_t cache_ttl_ms;     /* 0: every request pays a bcrypt */
    uint32_t max_failures;     /* >= 1 */
    uint32_t failure_window_ms;
    uint32_t reload_check_ms; /* how often the file's metadata is checked; 0: never */
    unsigned max_running;     /* bcrypt checks at once; 0: a default from the CPU count */
    unsigned max_queued;      /* checks waiting for a thread; 0: 1024 */
    unsigned max_per_peer;    /* checks one address may have running or waiting; 0: 64 */
} authn_opts_t;

/** Creates the checker and reads the htpasswd file (blocking: at start). On success *out is
 * owned by the caller (authn_shutdown, then authn_free once the loop has drained). On failure
 * returns an error and writes one line naming the file (and line) into err[errlen]. */
int authn_create(authn_t **out, const authn_opts_t *o, char *err, size_t errlen);

/** Stops the reload timer and starts no more checks; running ones finish while the loop
 * drains (waiters should have cancelled). Idempotent. */
void authn_shutdown(authn_t *a);

/** Frees it; call after uv_run has returned. NULL is fine. */
void authn_free(authn_t *a);

enum authn_result {
    AUTHN_OK,        /* user and password match */
    AUTHN_BAD,       /* they do not (unknown user, wrong password, a password bcrypt cannot take) */
    AUTHN_THROTTLED, /* this address failed too often, or has too many checks waiting */
    AUTHN_BUSY,      /* too many checks queued overall */
    AUTHN_PENDING,   /* the answer comes through the callback */
};

typedef struct authn_wait authn_wait_t;
/** The result of a pending check, on the loop thread; w is no longer waiting and may be freed.
 * retry_after_s is meaningful for AUTHN_THROTTLED and AUTHN_BUSY. */
typedef void (*authn_cb)(authn_wait_t *w, enum authn_result r, uint32_t retry_after_s);

/** A pending check's waiter, embedded by the caller. Fields are private. */
struct authn_wait {
    flight_waiter_t fw;
    authn_cb cb;
    authn_t *a;
};

/** Checks user[0..ulen) with password pass[0..plen) for a client at peer (borrowed). Returns
 * AUTHN_OK, AUTHN_BAD, AUTHN_THROTTLED or AUTHN_BUSY at once (then *retry_after_s is set for
 * the last two), or AUTHN_PENDING: then cb(w, ...) runs later on the loop thread (never inside
 * this call) unless authn_cancel(w) runs first. The password is copied (and wiped after use)
 * only while a check needs it. */
enum authn_result authn_check(authn_t *a, const char *user, size_t ulen, const char *pass,
                              size_t plen, const struct sockaddr_storage *peer, authn_wait_t *w,
                              authn_cb cb, uint32_t *retry_after_s);

/** w stops waiting (its client went away); cb will not run. A check nobody waits for any more
 * is dropped if it has not started, else it finishes (and a success is cached). */
void authn_cancel(authn_wait_t *w);

/** True when the htpasswd file (as last read) has user. */
bool authn_has_user(const authn_t *a, const char *user);
/** Users in the file as last read. */
size_t authn_user_count(const authn_t *a);

/** Re-reads the htpasswd file now, in the background (e.g. on SIGHUP). */
void authn_reload(authn_t *a);

/** Counters, for tests and logs. */
typedef struct authn_stats {
    uint64_t bcrypt_runs; /* checks that ran bcrypt */
    uint64_t cache_hits;  /* successes answered from the cache */
    uint64_t repeats;     /* failures answered from the cache (the same wrong pair again) */
    uint64_t joined;      /* requests that joined a check already running */
    uint64_t failures;    /* checks that failed */
    uint64_t throttled;   /* refused: the address's failure budget was spent */
    uint64_t busy;        /* refused: the queue was full */
    uint64_t reloads;     /* successful re-reads of the file */
} authn_stats_t;
void authn_get_stats(const authn_t *a, authn_stats_t *out);

/* ---- HTTP Basic (RFC 7617) ---------------------------------------------------------------- */

#define AUTHN_USER_MAX 256
#define AUTHN_PASS_MAX 511 /* libcrypt's limit (CRYPT_MAX_PASSPHRASE_SIZE, with its NUL) */

/** Parses an Authorization header value. Returns 1 when its scheme is not Basic (the value is
 * left alone), 0 when it is a well-formed Basic credential — then user[0..*ulen) and
 * pass[0..*plen) hold the decoded parts (user_cap must be > AUTHN_USER_MAX, pass_cap >
 * AUTHN_PASS_MAX; both NUL-terminated) — or WE_INVALID for a malformed one: bad base64, no
 * ':', a user over AUTHN_USER_MAX bytes or with control bytes, a password over AUTHN_PASS_MAX
 * bytes or holding a NUL byte (bcrypt reads C strings: "a\0b" would check as "a"). An empty
 * user with an empty password (containers/image sends it when it has no credentials) parses
 * with *ulen == *plen == 0: the caller treats it as anonymous. */
int authn_basic_parse(const char *value, char *user, size_t user_cap, size_t *ulen, char *pass,
                      size_t pass_cap, size_t *plen);

#endif
