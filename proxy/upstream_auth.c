/* Answering an upstream's 401 (upstream_internal.h has the map of the files; proxy/auth.c
 * parses challenges and token answers and keeps the token cache, without I/O).
 *
 * A 401 is answered once per request. Basic: the configured credentials, to the configured
 * upstream only; from then on they go up front. Bearer: a token for the challenge's realm,
 * service and scopes. A cached one is used when it is not the one just refused; otherwise the
 * request joins the token flight of that cache key (common/flight.h): the first request starts
 * the fetch, the flight's operation, an internal GET to the realm (with Basic credentials when
 * configured, the challenge came from the primary origin and the realm may have them: see
 * realm_gets_credentials); every request that needs the
 * same token meanwhile waits on the same flight. The fetch lands the flight with the token (or
 * the transport error, or nothing), and each waiter goes on from its land callback: sent again
 * with the token, failed, or shown the original 401 (headers only) from the deferred list.
 * A waiter that is cancelled leaves the flight; the fetch still runs to the end, since its
 * token will be cached for the next request.
 *
 * Tokens are cached per (realm, service, scopes) until issued_at + expires_in; later requests
 * to the primary origin for a repository a cached token covers send it up front, so a warm
 * cache needs no 401 round trip. A second 401 reaches the caller. The caller's own
 * Authorization lines go to the primary origin only and turn this off for the request.
 */
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"
#include "proxy/upstream_internal.h"

/* A token fetch: the operation of one flight in u->token_flights, keyed by the token cache key. */
typedef struct token_op {
    upstream_t *u;
    flight_t *fl;
    bool proactive; /* the challenge came from the primary origin */
    int status;
    bool too_big;
    bool cut;         /* an error answer's body was abandoned (its status says enough) */
    uint64_t ignored; /* bytes of an error answer's body read and dropped */
    buf_t body;       /* the realm's answer, at most AUTH_MAX_BODY; freed with buf_free_secret */
} token_op_t;

/* What a token flight lands with: the token (borrowed for the land call) or why there is none. */
typedef struct token_result {
    const char *token; /* NULL when no token could be had */
    uint64_t gen;      /* its cache generation, 0 when not cached */
    int err;           /* the realm could not be reached (transport error), else 0 */
} token_result_t;

static bool has_credentials(const upstream_t *u)
{
    return u->ucfg->username && u->ucfg->password;
}

static bool starts_http(const char *s)
{
    return strncasecmp(s, "http://", 7) == 0 || strncasecmp(s, "https://", 8) == 0;
}

bool upauth_caller_has(const upreq_t *r)
{
    if (!r->extra || !r->o->primary)
        return false;
    for (const char *l = r->extra; *l; l = strstr(l, "\r\n") + 2)
        if (strncasecmp(l, "Authorization:", 14) == 0)
            return true;
    return false;
}

auth_challenge_t *upauth_challenge(upreq_t *r)
{
    upstream_t *u = r->u;
    if (r->internal || r->auth_tries > 0 || upauth_caller_has(r))
        return NULL;
    auth_challenge_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    for (const char *v = upreq_header_next(r, "WWW-Authenticate", NULL); v;
         v = upreq_header_next(r, "WWW-Authenticate", v))
        (void)auth_challenge_parse(v, c);
    bool ok = false;
    if (c->scheme == AUTH_BEARER)
        ok = starts_http(c->realm);
    else if (c->scheme == AUTH_BASIC)
        /* Credentials go to the configured upstream only, and only once. */
        ok = r->o->primary && has_credentials(u) &&
             !(r->auth_basic && strcmp(r->auth_okey, r->o->key) == 0);
    if (!ok) {
        free(c);
        return NULL;
    }
    return c;
}

/* ---- Credentials on a request. ---- */

static int set_bearer(upreq_t *r, const origin_t *o, const char *token, uint64_t gen)
{
    static const char prefix[] = "Authorization: Bearer ";
    size_t n = sizeof prefix + strlen(token);
    char *h = malloc(n);
    if (!h)
        return -ENOMEM;
    snprintf(h, n, "%s%s", prefix, token);
    req_clear_auth(r);
    r->auth_hdr = h;
    snprintf(r->auth_okey, sizeof r->auth_okey, "%s", o->key);
    r->auth_gen = gen;
    return 0;
}

static int set_basic(upreq_t *r, const origin_t *o)
{
    const config_upstream_t *c = r->u->ucfg;
    char buf[1500];
    int rc = auth_basic_header(c->username, c->password, buf, sizeof buf);
    if (rc == 0) {
        char *h = strdup(buf);
        if (!h) {
            rc = -ENOMEM;
        } else {
            req_clear_auth(r);
            r->auth_hdr = h;
            snprintf(r->auth_okey, sizeof r->auth_okey, "%s", o->key);
            r->auth_basic = true;
        }
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return rc;
}

void upauth_attach_known(upreq_t *r)
{
    upstream_t *u = r->u;
    origin_t *o = u->origins[0];
    if (upauth_caller_has(r))
        return;
    if (u->basic && has_credentials(u)) {
        (void)set_basic(r, o);
        return;
    }
    char scope[600];
    if (auth_repo_scope(r->path, u->ucfg->base_path, scope, sizeof scope) < 0)
        return;
    uint64_t gen;
    const char *tok = auth_cache_find_scope(u->tokens, scope, time_wall_ms(), &gen);
    if (tok)
        (void)set_bearer(r, o, tok, gen);
}

/* ---- Token flights: one token fetch per cache key, however many requests need it. ---- */

static void token_op_free(token_op_t *op)
{
    buf_free_secret(&op->body);
    free(op);
}

/* Bytes of a realm's error answer read (to keep the connection) before it is abandoned. */
#define TOKEN_ERROR_BODY_MAX 4096

/* The answer is bigger than it may be: nothing more is read, the connection closes. */
static void abandon_body(token_op_t *op, upreq_t *t)
{
    if (op->status == 200)
        op->too_big = true; /* over AUTH_MAX_BODY (or out of memory): no token from this */
    else
        op->cut = true;
    upreq_abort(t, WE_TOOBIG);
}

static void op_on_headers(upreq_t *t, void *arg, int status)
{
    token_op_t *op = arg;
    op->status = status;
    uint64_t cl = upreq_content_length(t);
    if (cl != UINT64_MAX && cl > (status == 200 ? AUTH_MAX_BODY : TOKEN_ERROR_BODY_MAX))
        abandon_body(op, t);
}

static void op_on_body(upreq_t *t, void *arg, const char *data, size_t len)
{
    token_op_t *op = arg;
    if (op->too_big || op->cut)
        return;
    if (op->status != 200) {
        op->ignored += len;
        if (op->ignored > TOKEN_ERROR_BODY_MAX)
            abandon_body(op, t);
        return;
    }
    if (buf_append(&op->body, data, len) < 0)
        abandon_body(op, t);
}

/* The token in the fetch's answer, cached; NULL when there is none (logged). */
static char *token_of(token_op_t *op, int err, uint64_t *gen)
{
    upstream_t *u = op->u;
    char *token = NULL;
    int64_t expires = 0, now = time_wall_ms();
    int perr = 0;
    *gen = 0;
    if (err == 0 && op->status == 200 && !op->too_big) {
        perr = auth_token_parse(op->body.p ? op->body.p : "", op->body.len, now, &token, &expires);
        if (perr == 0 &&
            auth_cache_put(u->tokens, flight_key(op->fl), op->proactive, token, expires, gen) < 0)
            *gen = 0;
    }
    if (token)
        LOG_DEBUG("upstream %s: got a token, valid for %llds", u->ucfg->name,
                  (long long)((expires - now) / 1000));
    else if (err)
        LOG_WARN("upstream %s: token request failed: %s", u->ucfg->name, err_str(err));
    else if (op->status != 200)
        LOG_WARN("upstream %s: token request answered %d", u->ucfg->name, op->status);
    else
        LOG_WARN("upstream %s: token request gave no usable token (%s)", u->ucfg->name,
                 err_str(op->too_big ? WE_TOOBIG : perr));
    return token;
}

/* The token fetch ended: its flight lands, and every waiting request goes on. */
static void op_on_done(upreq_t *t, void *arg, int err)
{
    token_op_t *op = arg;
    (void)t;
    uint64_t gen;
    if (op->too_big || op->cut)
        err = 0; /* what went wrong is in op: no token (too big), or the realm's status */
    char *token = token_of(op, err, &gen);
    token_result_t res = {.token = token, .gen = gen, .err = token ? 0 : err};
    flight_land(op->fl, &res);
    if (token) {
        OPENSSL_cleanse(token, strlen(token));
        free(token);
    }
    token_op_free(op);
}

static const upreq_cbs_t token_op_cbs = {
    .on_headers = op_on_headers,
    .on_body = op_on_body,
    .on_done = op_on_done,
};

/* A request's token flight landed: it goes on with the token, or fails. */
static void on_token_landed(flight_waiter_t *w, void *result)
{
    upreq_t *r = container_of(w, upreq_t, token_wait);
    const token_result_t *res = result;
    if (r->u->destroying) {
        LOG_WARN("upstream %s: destroyed with a request waiting for a token", r->u->ucfg->name);
        req_free(r);
        return;
    }
    int rc = 0;
    if (res->token) {
        rc = set_bearer(r, r->o, res->token, res->gen);
        if (rc == 0)
            rc = pool_queue(r, r->o);
        if (rc < 0)
            req_fail_later(r, rc);
    } else if (res->err) {
        req_fail_later(r, res->err); /* the realm is unreachable: say so, like the upstream */
    } else {
        req_replay_later(r);
    }
}

/* The configured credentials go to a token realm the configured upstream named (never one a
 * redirect target named: from_primary) when the realm is https, or is the upstream's own origin
 * (a plain-http lab registry that is its own token server). Never to a plain-http realm
 * elsewhere, where anyone on the path reads them, and so never downgraded from an https
 * upstream to an http realm. */
static bool realm_gets_credentials(upstream_t *u, const origin_t *realm)
{
    if (realm->tls || realm->primary)
        return true;
    if (!u->warned_realm_creds)
        LOG_WARN("upstream %s: not sending the configured credentials to the token realm %s: "
                 "it is plain http and not the upstream itself; fetching a token anonymously",
                 u->ucfg->name, realm->key);
    u->warned_realm_creds = true;
    return false;
}

/* Starts the fetch of flight f, which answers challenge c. */
static int start_fetch(upstream_t *u, flight_t *f, const auth_challenge_t *c, bool from_primary,
                       uint64_t req_id)
{
    int rc;
    upreq_t *t = NULL;
    char *turl = malloc(URL_MAX + 1);
    url_t *tu = malloc(sizeof *tu);
    token_op_t *op = calloc(1, sizeof *op);
    if (!turl || !tu || !op) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = auth_token_url(c, turl, URL_MAX + 1);
    if (rc == 0)
        rc = url_parse(tu, turl);
    origin_t *o = NULL;
    if (rc == 0)
        rc = pool_origin_get(u, tu->tls, tu->host, tu->port, &o);
    if (rc != 0 || !o) {
        rc = rc < 0 ? rc : -EINVAL;
        goto fail;
    }
    op->u = u;
    op->fl = f;
    op->proactive = from_primary;
    buf_init(&op->body, AUTH_MAX_BODY);
    static const char *const hdrs[] = {"Accept: application/json", NULL};
    rc = req_create(&t, u, "GET", tu->path, hdrs, &token_op_cbs, op);
    if (rc < 0)
        goto fail;
    t->internal = true;
    t->bulk = false; /* a token gates a client's request: priority lane */
    if (req_id) {
        t->req_id = req_id; /* the request that needed the token first */
        req_logline(t, "");
    }
    if (from_primary && has_credentials(u) && realm_gets_credentials(u, o))
        rc = set_basic(t, o);
    if (rc == 0)
        rc = pool_queue(t, o);
    if (rc < 0)
        goto fail;
    req_set_deadline(t, u->gcfg->upstream_fetch_deadline_ms);
    flight_set_op(f, op);
    LOG_DEBUG("upstream %s: fetching a token from %s%.*s (%s)", u->ucfg->name, o->key,
              (int)strcspn(tu->path, "?"), tu->path, c->scope[0] ? c->scope : "no scope");
    free(turl);
    free(tu);
    return 0;
fail:
    if (t)
        req_free(t);
    free(op);
    free(turl);
    free(tu);
    return rc;
}

/* r waits for the token of challenge c (cache key key): it joins the flight for that key, or
 * starts one. Returns 0 (r is waiting, TOKEN) or an error (r is not). */
static int wait_token(upreq_t *r, const auth_challenge_t *c, const char *key)
{
    upstream_t *u = r->u;
    flight_t *f;
    bool created;
    int rc = flight_join(u->token_flights, key, &r->token_wait, on_token_landed, &f, &created);
    if (rc < 0)
        return rc;
    if (created) {
        if (flight_table_count(u->token_flights) > UP_MAX_TOKEN_FETCHES)
            rc = -EAGAIN;
        else
            rc = start_fetch(u, f, c, r->o->primary, r->req_id);
        if (rc < 0) {
            flight_drop(flight_leave(&r->token_wait));
            return rc;
        }
    }
    req_set_state(r, UR_TOKEN);
    return 0;
}

void upauth_abandon_fetch(upreq_t *r)
{
    token_op_t *op = r->arg;
    token_result_t res = {.err = WE_CANCELLED};
    flight_land(op->fl, &res);
    token_op_free(op);
}

/* ---- Answering a 401. ---- */

static int answer_basic(upreq_t *r)
{
    upstream_t *u = r->u;
    int rc = set_basic(r, r->o);
    if (rc < 0) {
        LOG_WARN("upstream %s: cannot use the configured credentials: %s", u->ucfg->name,
                 err_str(rc));
        req_replay_later(r);
        return 0;
    }
    if (!u->basic)
        LOG_INFO("upstream %s: asks for Basic auth; sending the configured credentials",
                 u->ucfg->name);
    u->basic = true;
    return pool_queue(r, r->o);
}

static int answer_bearer(upreq_t *r, const auth_challenge_t *c)
{
    upstream_t *u = r->u;
    LOG_DEBUG("upstream %s: %s -> 401, answering its Bearer challenge (%s)", u->ucfg->name,
              r->logline, c->error[0] ? c->error : "no error given");
    char key[AUTH_MAX_KEY];
    int rc = auth_token_key(c, key, sizeof key);
    if (rc < 0) {
        LOG_WARN("upstream %s: %s: unusable Bearer challenge (%s)", u->ucfg->name, r->logline,
                 err_str(rc));
        req_replay_later(r);
        return 0;
    }
    uint64_t gen = 0;
    const char *tok = auth_cache_get(u->tokens, key, time_wall_ms(), &gen);
    if (tok && gen != r->auth_gen) {
        /* Someone else already has a fresh token for this challenge. */
        rc = set_bearer(r, r->o, tok, gen);
        return rc < 0 ? rc : pool_queue(r, r->o);
    }
    if (tok)
        auth_cache_drop(u->tokens, gen); /* the token r carried was refused: forget it */
    rc = wait_token(r, c, key);
    if (rc == WE_BUSY)
        return rc; /* the realm's queue is full: say so, as for any request */
    if (rc < 0) {
        LOG_WARN("upstream %s: %s: cannot fetch a token: %s", u->ucfg->name, r->logline,
                 err_str(rc));
        req_replay_later(r);
    }
    return 0;
}

int upauth_answer(upreq_t *r)
{
    auth_challenge_t *c = r->chal;
    r->chal = NULL;
    r->auth_tries++;
    int rc = c->scheme == AUTH_BASIC ? answer_basic(r) : answer_bearer(r, c);
    free(c);
    return rc;
}
