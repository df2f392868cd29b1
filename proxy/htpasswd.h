/** An htpasswd file of bcrypt entries (`htpasswd -B`): the users winch's clients log in as.
 * Pure parsing plus one blocking file read (htpasswd_load: at start, and on the threadpool when
 * the file changes); no verification here (proxy/authn.c runs bcrypt, off the loop thread).
 *
 * Grammar, one entry a line: USER:HASH, HASH a bcrypt hash ($2y$, $2b$ or $2a$, cost 04..31,
 * 53 characters of bcrypt's base64). Lines may end in CRLF; blank lines and lines starting
 * with '#' are skipped. USER is 1..256 bytes without ':' or control characters, and unique.
 * Anything else is an error naming the file and line (and the user when there is one),
 * never the hash: an htpasswd line is a secret's fingerprint. Internal to proxy/. */
#ifndef WINCH_PROXY_HTPASSWD_H
#define WINCH_PROXY_HTPASSWD_H

#include <stddef.h>
#include <stdint.h>

/** Bounds: a bigger file or more users is refused (an htpasswd line is about 70 bytes). */
#define HTPASSWD_MAX_BYTES (16u << 20)
#define HTPASSWD_MAX_USERS 200000u
#define HTPASSWD_USER_MAX 256
/** A bcrypt hash is exactly this long. */
#define HTPASSWD_HASH_LEN 60

typedef struct htpasswd htpasswd_t;

/** Parses text[0..len) (any bytes); origin names it in messages ("/etc/winch/htpasswd"). On
 * success *out is owned by the caller (htpasswd_free). On failure returns WE_CONFIG (or
 * -ENOMEM) and writes one line "ORIGIN:LINE: what is wrong" into err[errlen]. */
int htpasswd_parse(htpasswd_t **out, const char *text, size_t len, const char *origin, char *err,
                   size_t errlen);

/** Reads and parses the file at path (blocking: call it at start or on a worker thread). Errors
 * as htpasswd_parse, plus "PATH: cannot open: ..." and "PATH: larger than ... bytes". */
int htpasswd_load(htpasswd_t **out, const char *path, char *err, size_t errlen);

/** The bcrypt hash of user (NUL-terminated), borrowed from h; NULL when there is no such user. */
const char *htpasswd_hash(const htpasswd_t *h, const char *user);

/** Some user's hash (the first in sorted order), or NULL when the file has no users: verifying
 * a password for an unknown user against it takes as long as for a known one, so the time a
 * failure takes does not tell which user names exist. */
const char *htpasswd_any_hash(const htpasswd_t *h);

/** Users in the file. */
size_t htpasswd_count(const htpasswd_t *h);

/** Frees h and wipes the hashes; NULL is fine. */
void htpasswd_free(htpasswd_t *h);

#endif
