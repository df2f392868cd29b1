/* Client access (access.h): a call's identity, then the rules.
 *
 *   access_admit: certificate name | Authorization: Basic -> authn_check (maybe pending) |
 *                 Authorization: Bearer -> token_verify | anonymous
 *                 ->  decide(route)  ->  proceed, or 401 / 403 (/ 429 / 503)
 *   access_intercept (GET /v2/_token, bearer challenge only): the same identity -> a token
 *
 * Nothing here logs a credential: the Authorization header is never copied into a message,
 * passwords live in authn.c's jobs only while bcrypt runs, and a failed login names the user
 * only when that user exists (a user name field sometimes holds a mistyped password).
 */
#include "proxy/access.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/err.h"
#include "common/glob.h"
#include "common/log.h"
#include "common/ref.h"
#include "common/timeutil.h"
#include "proxy/authn.h"
#include "proxy/call.h"
#include "proxy/reply.h"
#include "proxy/token.h"

#define TOKEN_PATH "/v2/_token"

struct access {
    const config_auth_t *auth; /* borrowed from the config */
    authn_t *authn;            /* NULL without htpasswd */
    bool any_anonymous;        /* some rule lets anonymous clients read */
    token_key_t key;           /* signs the tokens of the bearer challenge */
};

/* A call waiting for its password check. */
typedef struct pending {
    authn_wait_t w;
    access_t *a;
    call_t *c;
    void (*resume)(call_t *c);
    bool token; /* a request to the token service (no route, no authorization) */
} pending_t;

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* ---- Rules ---------------------------------------------------------------------------- */

static bool rule_names(const config_auth_t *auth, const config_access_rule_t *r, const char *user)
{
    if (r->authenticated)
        return true;
    for (size_t i = 0; i < r->n_users; i++)
        if (strcmp(r->users[i], user) == 0)
            return true;
    for (size_t i = 0; i < r->n_groups; i++) {
        const config_auth_group_t *g = &auth->groups[r->groups[i]];
        for (size_t k = 0; k < g->n_members; k++)
            if (strcmp(g->members[k], user) == 0)
                return true;
    }
    return false;
}

enum access_decision access_rules_decide(const config_auth_t *auth, const char *user,
                                         const char *upstream, const char *repo)
{
    char name[REF_NAME_MAX + 300]; /* an upstream name (a host and port), '/', a repository */
    int n = snprintf(name, sizeof name, "%s/%s", upstream, repo);
    const config_access_rule_t *rule = NULL;
    if (n > 0 && (size_t)n < sizeof name) {
        for (size_t i = 0; !rule && i < auth->n_rules; i++)
            if (glob_match(auth->rules[i].match, name))
                rule = &auth->rules[i];
    }
    if (rule && (rule->anonymous || (user && rule_names(auth, rule, user))))
        return ACCESS_ALLOW;
    return user ? ACCESS_FORBIDDEN : ACCESS_CHALLENGE;
}

static const char *who(const call_t *c)
{
    return c->user[0] ? c->user : NULL;
}

bool access_may_read(const access_t *a, const call_t *c, const char *upstream, const char *repo)
{
    return !a || access_rules_decide(a->auth, who(c), upstream, repo) == ACCESS_ALLOW;
}

/* ---- Answers -------------------------------------------------------------------------- */

/* A Host header fit for a URL in a quoted-string: a name, an IPv4 or a bracketed IPv6
 * address, and a port. */
static bool host_ok(const char *h)
{
    size_t n = strlen(h);
    if (n == 0 || n > 262)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = h[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == ':' || ch == '[' || ch == ']'))
            return false;
    }
    return true;
}

/* The token service's URL as this client reaches winch. */
static bool realm_url(const access_t *a, call_t *c, char *buf, size_t cap)
{
    const char *host = req_header(c->req, "Host");
    int n;
    if (a->auth->token_realm)
        n = snprintf(buf, cap, "%s", a->auth->token_realm);
    else if (host && host_ok(host))
        n = snprintf(buf, cap, "%s://%s" TOKEN_PATH, req_is_tls(c->req) ? "https" : "http", host);
    else
        return false;
    return n > 0 && (size_t)n < cap;
}

/* 401 with the challenge: Basic, or (challenge "bearer", outside the token service itself) a
 * Bearer challenge naming winch's token service; bearer_error (may be NULL) is RFC 6750's
 * error parameter. Without a usable Host header the Basic challenge stands in. */
static void answer_challenge(access_t *a, call_t *c, const char *message, bool token_service,
                             const char *bearer_error)
{
    char realm[2048 + 64];
    reply_begin(c, 401);
    if (a->auth->bearer && !token_service && realm_url(a, c, realm, sizeof realm))
        resp_header(c->req, "WWW-Authenticate", "Bearer realm=\"%s\",service=\"%s\"%s%s%s", realm,
                    a->auth->realm, bearer_error ? ",error=\"" : "",
                    bearer_error ? bearer_error : "", bearer_error ? "\"" : "");
    else
        resp_header(c->req, "WWW-Authenticate", "Basic realm=\"%s\", charset=\"UTF-8\"",
                    a->auth->realm);
    reply_error(c, 401, OCI_UNAUTHORIZED, message, NULL);
}

static void answer_retry(call_t *c, int status, enum oci_code code, uint32_t retry_after_s,
                         const char *message)
{
    reply_begin(c, status);
    resp_header(c->req, "Retry-After", "%u", retry_after_s ? retry_after_s : 1);
    reply_error(c, status, code, message, NULL);
}

/* A user name for a log line: printable ASCII as is, other bytes as \xHH. */
static const char *log_name(const char *s, char *buf, size_t cap)
{
    size_t o = 0;
    for (; *s && o + 5 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch > 0x20 && ch < 0x7f && ch != '\\' && ch != '"')
            buf[o++] = (char)ch;
        else
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
    }
    buf[o] = '\0';
    return buf;
}

const char *access_log_user(const call_t *c, char *buf, size_t cap)
{
    if (!c->user[0]) {
        snprintf(buf, cap, "-");
        return buf;
    }
    return log_name(c->user, buf, cap);
}

/* ---- Decisions ------------------------------------------------------------------------ */

/* The call's identity is settled (c->user; token: it came with a valid token of ours, maybe
 * an anonymous one): may it do what it asks? Answers when not. */
static bool authorize(access_t *a, call_t *c, bool token)
{
    const char *user = who(c);
    enum access_decision d;
    switch (c->route.op) {
    case ROUTE_PING:
        /* Every client pings /v2/ first and sends credentials only after a 401 there, so an
         * anonymous ping is challenged whenever there are passwords to send (or, with the
         * bearer challenge, a token to fetch). */
        d = user || token || (!a->authn && a->any_anonymous) ? ACCESS_ALLOW : ACCESS_CHALLENGE;
        break;
    case ROUTE_CATALOG:
        /* Filtered by access_may_read; anonymous clients see it only when some rule lets
         * them read, else they are asked for credentials. */
        d = user || a->any_anonymous ? ACCESS_ALLOW : ACCESS_CHALLENGE;
        break;
    default:
        d = access_rules_decide(a->auth, user, c->route.upstream->name, c->route.name);
        break;
    }
    if (d == ACCESS_ALLOW)
        return true;
    if (d == ACCESS_CHALLENGE) {
        answer_challenge(a, c, "authentication required", false,
                         user ? "insufficient_scope" : NULL);
        return false;
    }
    char shown[CALL_USER_MAX * 4 + 1];
    LOG_INFO("req=%llu client %s: user \"%s\" may not read %s/%s",
             (unsigned long long)req_id(c->req), call_client_str(c),
             log_name(c->user, shown, sizeof shown), c->route.upstream->name, c->route.name);
    reply_error(c, 403, OCI_DENIED, "access to this repository is denied", NULL);
    return false;
}

/* Answers a finished password check that did not succeed; logs why. */
static void refuse(access_t *a, call_t *c, enum authn_result r, uint32_t retry_after_s,
                   const char *user, bool token_service)
{
    char shown[CALL_USER_MAX * 4 + 1];
    switch (r) {
    case AUTHN_THROTTLED:
        LOG_WARN("req=%llu client %s: too many failed logins; refused for %us",
                 (unsigned long long)req_id(c->req), call_client_str(c), retry_after_s);
        answer_retry(c, 429, OCI_TOOMANYREQUESTS, retry_after_s,
                     "too many failed logins from this address");
        return;
    case AUTHN_BUSY:
        LOG_WARN("req=%llu client %s: too many password checks queued",
                 (unsigned long long)req_id(c->req), call_client_str(c));
        answer_retry(c, 503, OCI_UNAVAILABLE, retry_after_s, "too many logins at once");
        return;
    default:
        if (a->authn && authn_has_user(a->authn, user))
            LOG_WARN("req=%llu client %s: wrong password for user \"%s\"",
                     (unsigned long long)req_id(c->req), call_client_str(c),
                     log_name(user, shown, sizeof shown));
        else
            LOG_WARN("req=%llu client %s: login as an unknown user",
                     (unsigned long long)req_id(c->req), call_client_str(c));
        answer_challenge(a, c, "invalid username or password", token_service, NULL);
        return;
    }
}

static void on_checked(authn_wait_t *w, enum authn_result r, uint32_t retry_after_s)
{
    pending_t *p = (pending_t *)w; /* w is its first member */
    call_t *c = p->c;
    access_t *a = p->a;
    void (*resume)(call_t *) = p->resume;
    bool token = p->token;
    free(p);
    c->cancel = NULL;
    c->op = NULL;
    if (r != AUTHN_OK) {
        refuse(a, c, r, retry_after_s, c->user, token);
        c->user[0] = '\0';
        return;
    }
    if (token || authorize(a, c, false))
        resume(c);
}

static void cancel_pending(call_t *c)
{
    pending_t *p = c->op;
    authn_cancel(&p->w);
    free(p);
    c->user[0] = '\0'; /* never verified: not for the access log */
}

/* Checks Basic credentials; true when c may go on (to authorize(), or to be given a token)
 * now. */
static bool check_password(access_t *a, call_t *c, const char *authz, void (*resume)(call_t *c),
                           bool token)
{
    char pass[AUTHN_PASS_MAX + 1];
    size_t ulen = 0, plen = 0;
    int rc = authn_basic_parse(authz, c->user, sizeof c->user, &ulen, pass, sizeof pass, &plen);
    bool go_on = false;
    if (rc == 1) {
        answer_challenge(a, c, "unsupported authorization scheme", token, NULL);
        goto out;
    }
    if (rc < 0) {
        c->user[0] = '\0';
        answer_challenge(a, c, "malformed Basic credentials", token, NULL);
        goto out;
    }
    if (ulen == 0 && plen == 0) {
        go_on = true; /* containers/image's "no credentials" */
        goto out;
    }
    if (!a->authn) {
        answer_challenge(a, c, "invalid username or password", token, NULL);
        c->user[0] = '\0';
        goto out;
    }
    pending_t *p = calloc(1, sizeof *p);
    if (!p) {
        answer_retry(c, 503, OCI_UNAVAILABLE, 1, "out of memory");
        goto out;
    }
    *p = (pending_t){.a = a, .c = c, .resume = resume, .token = token};
    uint32_t retry = 0;
    enum authn_result r =
        authn_check(a->authn, c->user, ulen, pass, plen, call_client(c), &p->w, on_checked, &retry);
    if (r == AUTHN_PENDING) {
        c->op = p;
        c->cancel = cancel_pending;
        goto out;
    }
    free(p);
    if (r == AUTHN_OK) {
        go_on = true;
    } else {
        refuse(a, c, r, retry, c->user, token);
        c->user[0] = '\0';
    }
out:
    wipe(pass, sizeof pass);
    return go_on;
}

static bool is_scheme(const char *v, const char *scheme);
static bool check_token(access_t *a, call_t *c, const char *authz);

bool access_admit(access_t *a, call_t *c, void (*resume)(call_t *c))
{
    if (!a)
        return true;
    c->user[0] = '\0';
    int rc = req_tls_peer_name(c->req, c->user, sizeof c->user);
    if (rc == 0)
        return authorize(a, c, false); /* a verified certificate decides, not Authorization */
    c->user[0] = '\0';
    if (rc != WE_NOTFOUND)
        LOG_WARN("req=%llu client %s: its certificate's name is unusable; treated as without "
                 "one",
                 (unsigned long long)req_id(c->req), call_client_str(c));
    const char *authz = req_header(c->req, "Authorization");
    if (authz && req_header_next(c->req, "Authorization", authz)) {
        answer_challenge(a, c, "more than one Authorization header", false, NULL);
        return false;
    }
    if (authz && a->auth->bearer && is_scheme(authz, "bearer"))
        return check_token(a, c, authz) && authorize(a, c, true);
    if (authz && !check_password(a, c, authz, resume, false))
        return false;
    return authorize(a, c, false);
}

/* ---- The token service (challenge "bearer") ------------------------------------------- */

/* The value is "SCHEME <credentials>" (case-insensitive scheme). */
static bool is_scheme(const char *v, const char *scheme)
{
    size_t n = strlen(scheme);
    while (*v == ' ' || *v == '\t')
        v++;
    return strncasecmp(v, scheme, n) == 0 && (v[n] == ' ' || v[n] == '\t');
}

/* An Authorization: Bearer token of ours: true with c->user set ("" for an anonymous token),
 * else answered. */
static bool check_token(access_t *a, call_t *c, const char *authz)
{
    while (*authz == ' ' || *authz == '\t')
        authz++;
    authz += 6;
    while (*authz == ' ' || *authz == '\t')
        authz++;
    int rc = token_verify(&a->key, authz, time_mono_ms(), c->user, sizeof c->user);
    /* A user removed from the htpasswd file loses access with its next request, not when its
     * token expires. */
    if (rc == 0 && c->user[0] && !(a->authn && authn_has_user(a->authn, c->user)))
        rc = WE_INVALID;
    if (rc == 0)
        return true;
    c->user[0] = '\0';
    answer_challenge(a, c, rc == WE_NOTFOUND ? "token expired" : "invalid token", false,
                     "invalid_token");
    return false;
}

/* Answers the token request c for c->user ("" anonymous). */
static void issue_token(call_t *c)
{
    access_t *a = c->env->access;
    char tok[TOKEN_MAX], when[32], *body = NULL;
    uint32_t ttl = a->auth->token_ttl_s;
    if (token_mint(&a->key, c->user, time_mono_ms() + (int64_t)ttl * 1000, tok, sizeof tok) != 0 ||
        !(body = malloc(2 * TOKEN_MAX + 160))) {
        reply_error(c, 500, OCI_UNKNOWN, "cannot issue a token", NULL);
        return;
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int n = snprintf(body, 2 * TOKEN_MAX + 160,
                     "{\"token\":\"%s\",\"access_token\":\"%s\",\"expires_in\":%u,"
                     "\"issued_at\":\"%s\"}",
                     tok, tok, ttl, when);
    wipe(tok, sizeof tok);
    c->cache_status = "local";
    reply_begin(c, 200);
    resp_header(c->req, "Content-Type", "application/json; charset=utf-8");
    resp_header(c->req, "Cache-Control", "no-store");
    resp_send(c->req, (uint64_t)n, body, (size_t)n, true);
}

bool access_intercept(access_t *a, call_t *c)
{
    const char *t = req_target(c->req);
    size_t n = strcspn(t, "?");
    if (!a || !a->auth->bearer || n != strlen(TOKEN_PATH) || memcmp(t, TOKEN_PATH, n) != 0)
        return false;
    c->cache_status = "local";
    if (!req_is_get(c->req)) {
        /* containerd posts an OAuth2 form first, and falls back to GET on a 404. */
        reply_error(c, 404, OCI_UNSUPPORTED, "the token service answers GET", NULL);
        return true;
    }
    c->user[0] = '\0';
    if (req_tls_peer_name(c->req, c->user, sizeof c->user) == 0) {
        issue_token(c);
        return true;
    }
    c->user[0] = '\0';
    const char *authz = req_header(c->req, "Authorization");
    if (authz && req_header_next(c->req, "Authorization", authz))
        answer_challenge(a, c, "more than one Authorization header", true, NULL);
    else if (!authz || check_password(a, c, authz, issue_token, true))
        issue_token(c); /* no credentials: an anonymous token */
    return true;
}

/* ---- Lifecycle ------------------------------------------------------------------------ */

/* Names in rules and groups that no htpasswd entry has are allowed (they may be certificate
 * names, or users added to the file later) but worth a word: a typo there only denies. */
static void warn_unknown(const access_t *a)
{
    const config_auth_t *auth = a->auth;
    char shown[CALL_USER_MAX * 4 + 1];
    const char *also = auth->client_ca ? " (fine if it is a client certificate's name)" : "";
    for (size_t g = 0; a->authn && g < auth->n_groups; g++)
        for (size_t i = 0; i < auth->groups[g].n_members; i++)
            if (!authn_has_user(a->authn, auth->groups[g].members[i]))
                LOG_WARN("auth.groups.%s[%zu]: user \"%s\" is not in %s%s", auth->groups[g].name, i,
                         log_name(auth->groups[g].members[i], shown, sizeof shown), auth->htpasswd,
                         also);
    for (size_t r = 0; a->authn && r < auth->n_rules; r++)
        for (size_t i = 0; i < auth->rules[r].n_users; i++)
            if (!authn_has_user(a->authn, auth->rules[r].users[i]))
                LOG_WARN("auth.access[%zu].users[%zu]: user \"%s\" is not in %s%s", r, i,
                         log_name(auth->rules[r].users[i], shown, sizeof shown), auth->htpasswd,
                         also);
}

int access_create(access_t **out, uv_loop_t *loop, const config_t *cfg, char *err, size_t errlen)
{
    *out = NULL;
    const config_auth_t *auth = cfg->auth;
    if (!auth)
        return 0;
    access_t *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return WE_INVALID;
    }
    a->auth = auth;
    if (token_key_init(&a->key) != 0) {
        snprintf(err, errlen, "cannot draw a random key for tokens");
        free(a);
        return WE_INVALID;
    }
    for (size_t i = 0; i < auth->n_rules; i++)
        a->any_anonymous = a->any_anonymous || auth->rules[i].anonymous;
    if (auth->htpasswd) {
        authn_opts_t o = {
            .loop = loop,
            .htpasswd_path = auth->htpasswd,
            .cache_ttl_ms = auth->verify_cache_ttl_s * 1000u,
            .max_failures = auth->max_failures,
            .failure_window_ms = auth->failure_window_s * 1000u,
            .reload_check_ms = 1000,
        };
        int rc = authn_create(&a->authn, &o, err, errlen);
        if (rc < 0) {
            free(a);
            return rc;
        }
        if (authn_user_count(a->authn) == 0)
            LOG_WARN("auth.htpasswd: %s has no users", auth->htpasswd);
    }
    warn_unknown(a);
    LOG_INFO("client authentication on: %zu users, %zu access rules, challenge=%s%s%s",
             a->authn ? authn_user_count(a->authn) : 0, auth->n_rules,
             auth->bearer ? "bearer (token service " TOKEN_PATH ")" : "basic",
             auth->client_ca ? ", client certificates" : "",
             auth->require_client_cert ? " (required on the TLS listener)" : "");
    *out = a;
    return 0;
}

void access_shutdown(access_t *a)
{
    if (a)
        authn_shutdown(a->authn);
}

void access_free(access_t *a)
{
    if (!a)
        return;
    authn_free(a->authn);
    wipe(&a->key, sizeof a->key);
    free(a);
}

void access_reload(access_t *a)
{
    if (a && a->authn)
        authn_reload(a->authn);
}
