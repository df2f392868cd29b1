/** Client access: who a request comes from (authentication) and whether it may read what it
 * asks for (authorization), by the "auth" section of the configuration (README "Client
 * authentication"). Owned by app.c, lent to calls through call_env_t. Internal to proxy/.
 *
 * Who: a verified client certificate on the TLS listener names the user (its CN); otherwise an
 * `Authorization: Basic` header checked against the htpasswd file (proxy/authn.c: bcrypt on
 * the threadpool, cached, throttled per address), or with the bearer challenge an
 * `Authorization: Bearer` token winch issued (proxy/token.c); otherwise the client is
 * anonymous. Wrong or malformed credentials are never anonymous: they get 401.
 *
 * The challenge is Basic (`WWW-Authenticate: Basic realm=...`), or with auth.challenge
 * "bearer", `Bearer realm="<scheme>://<Host>/v2/_token",service=...`: winch is then its own
 * token service, and a client without credentials gets an anonymous token, which is what
 * lets anonymous docker pull anonymous repositories (docker gives up on a Basic challenge it
 * has no credentials for).
 *
 * What: repositories are named "UPSTREAM/REPOSITORY" (Docker Hub one-component names as
 * library/NAME, as routing normalises them); the first rule of auth.access whose glob matches
 * decides, and no matching rule denies. An anonymous client that may not read gets 401 with
 * the `WWW-Authenticate: Basic` challenge (so that clients with credentials send them); an
 * authenticated one gets 403 DENIED. The decision comes before any cache or upstream lookup,
 * so the answer never tells whether a repository exists. /v2/ answers 200 to authenticated
 * clients and 401 to anonymous ones (every client pings it to learn the challenge; see the
 * README for what that means for anonymous docker); _catalog lists only repositories the
 * client may read.
 */
#ifndef WINCH_PROXY_ACCESS_H
#define WINCH_PROXY_ACCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "config/config.h"

typedef struct access access_t;
typedef struct call call_t;

/** Builds the access rules of cfg (borrowed; must outlive it) and reads the htpasswd file
 * (blocking: at start). With no "auth" section *out is NULL: everyone reads everything. On
 * failure returns an error and writes one line into err[errlen] naming the file and line.
 * Warns (log) about users and group members that are not in the htpasswd file. */
int access_create(access_t **out, uv_loop_t *loop, const config_t *cfg, char *err, size_t errlen);

/** Stops background work (the htpasswd reload timer) and starts no more password checks.
 * Pending calls are cancelled by the server closing their connections. NULL is fine. */
void access_shutdown(access_t *a);

/** Frees it; call after the loop has drained. NULL is fine. */
void access_free(access_t *a);

/** Re-reads the htpasswd file in the background (SIGHUP). NULL is fine. */
void access_reload(access_t *a);

/** Admits routed call c (c->route set): true when it may proceed now (c->user names the user,
 * "" for anonymous). false when it was answered (401, 403, 429, 503, 400), or when a password
 * check is pending: then c->cancel and c->op are set, and later either resume(c) runs (with
 * both cleared) or the call is answered. a NULL admits everything. */
bool access_admit(access_t *a, call_t *c, void (*resume)(call_t *c));

/** c's user for the access log into buf[cap] (cap >= 4 * CALL_USER_MAX + 1): printable ASCII as
 * is, other bytes (spaces included) as \xHH; "-" when anonymous. Returns buf. */
const char *access_log_user(const call_t *c, char *buf, size_t cap);

/** With the bearer challenge, winch is its own token service at GET /v2/_token: when c (not
 * routed yet) asks for a token, this answers it (a token for the user of its Basic
 * credentials or client certificate, an anonymous one without credentials, 401 for wrong
 * ones; maybe after a pending password check, as access_admit) and returns true. Otherwise
 * false, and c goes on to routing. a NULL: false. */
bool access_intercept(access_t *a, call_t *c);

/** Whether c's client may read upstream/repo (for _catalog's listing). True when a is NULL. */
bool access_may_read(const access_t *a, const call_t *c, const char *upstream, const char *repo);

/* ---- The rules alone (pure; for tests) ---------------------------------------------------- */

enum access_decision {
    ACCESS_ALLOW,
    ACCESS_CHALLENGE, /* 401: anonymous, credentials would be needed */
    ACCESS_FORBIDDEN, /* 403: authenticated, not allowed */
};

/** The decision for user (NULL: anonymous) reading upstream/repo by auth's rules. */
enum access_decision access_rules_decide(const config_auth_t *auth, const char *user,
                                         const char *upstream, const char *repo);

#endif
