/** Bearer tokens winch issues to its own clients (auth.challenge "bearer"): a signed statement
 * "this client is USER (or anonymous) until T", checked on every request without a bcrypt.
 * Internal to proxy/; access.c issues them at /v2/_token and checks them.
 *
 * Form: "wt1." base64url(USER "\n" EXPIRY_MS) "." base64url(HMAC-SHA-256(key, what precedes the
 * second dot)). The key is drawn at start and never leaves the process: tokens die with it (a
 * client whose token is refused after a restart fetches a new one). Expiry is on the monotonic
 * clock, so a wall-clock jump neither extends nor cuts a token. Pure besides the key's
 * randomness; no allocation.
 */
#ifndef WINCH_PROXY_TOKEN_H
#define WINCH_PROXY_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#define TOKEN_KEY_LEN 32
/** Longest token: the prefix, a 256-byte user and an expiry in base64url, a MAC, two dots. */
#define TOKEN_MAX 512

typedef struct token_key {
    uint8_t k[TOKEN_KEY_LEN];
} token_key_t;

/** Draws a fresh key. Returns 0, or WE_INVALID when no randomness is available. */
int token_key_init(token_key_t *key);

/** Writes a token for user (NUL-terminated, at most 256 bytes, no '\n'; "" for anonymous) that
 * expires at expires_ms (time_mono_ms clock) into out[cap]. Returns 0, or WE_TOOBIG / WE_INVALID. */
int token_mint(const token_key_t *key, const char *user, int64_t expires_ms, char *out, size_t cap);

/** Checks tok (NUL-terminated) at now_ms. Returns 0 and writes its user ("" for anonymous) into
 * user[cap]; WE_INVALID for anything malformed or not signed with key (compared in constant
 * time); WE_NOTFOUND for a well-signed token that has expired. */
int token_verify(const token_key_t *key, const char *tok, int64_t now_ms, char *user, size_t cap);

#endif
