/* What an upstream answer means, and where the request goes next (upstream_internal.h has the
 * map of the files).
 *
 * A request may travel several hops before its caller sees any answer: redirects (301, 302,
 * 303, 307, 308 with a Location, GET and HEAD only, up to upstream_max_redirects, to http and
 * https only) and one answer to a 401 (upstream_auth.c). Such answers never reach the caller:
 * the wire reads and drops their bodies when small (so the connection is reused) or closes the
 * connection, then hops_next rebuilds the request for its next origin and queues it there.
 * on_headers sees the final answer only.
 *
 * Authorization is only ever sent to the origin it was obtained for: a redirect to another
 * scheme, host or port drops it (pre-signed CDN URLs fail when a token comes along). No token,
 * password or Authorization header is ever logged; request lines are logged without their query
 * (pre-signed URLs carry signatures there), and a Location never is.
 *
 * The primary origin's rate-limit headers (Docker Hub's RateLimit-Limit, RateLimit-Remaining,
 * Docker-RateLimit-Source, and a 429's Retry-After) are noted here as answers arrive.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proxy/upstream_internal.h"

/* ---- Rate limits (Docker Hub). ---- */

/* The leading number of "100;w=21600" (-1 if none), and its w= window (0 if none). */
static int64_t rl_number(const char *v, uint32_t *window)
{
    int64_t n = -1;
    const char *p = v;
    while (*p == ' ')
        p++;
    if (*p >= '0' && *p <= '9') {
        n = 0;
        for (int i = 0; *p >= '0' && *p <= '9' && i < 15; p++, i++)
            n = n * 10 + (*p - '0');
    }
    const char *w = strstr(v, "w=");
    if (w) {
        uint32_t s = 0;
        int i = 0;
        for (w += 2; *w >= '0' && *w <= '9' && i < 9; w++, i++)
            s = s * 10 + (uint32_t)(*w - '0');
        if (i > 0)
            *window = s;
    }
    return n;
}

/* Copies the printable bytes of v (NULL: none) into out[cap]; spaces only when keep_space. */
static void copy_printable(char *out, size_t cap, const char *v, bool keep_space)
{
    size_t k = 0;
    for (const char *s = v; s && *s && k + 1 < cap; s++)
        if ((unsigned char)*s >= (keep_space ? ' ' : '!') && (unsigned char)*s < 0x7f)
            out[k++] = *s;
    out[k] = '\0';
}

static void note_ratelimit(upreq_t *r, int status)
{
    upstream_ratelimit_t *rl = &r->u->rl;
    /* Seconds or an HTTP date: keep any short single-line printable value. */
    if (status == 429)
        copy_printable(rl->retry_after, sizeof rl->retry_after, upreq_header(r, "Retry-After"),
                       true);
    const char *lim = upreq_header(r, "RateLimit-Limit");
    const char *rem = upreq_header(r, "RateLimit-Remaining");
    if (!lim && !rem)
        return;
    int64_t before = rl->known ? rl->remaining : -2;
    rl->known = true;
    rl->window_s = 0;
    rl->limit = lim ? rl_number(lim, &rl->window_s) : -1;
    rl->remaining = rem ? rl_number(rem, &rl->window_s) : -1;
    /* Printable only: it goes into logs and metrics. */
    copy_printable(rl->source, sizeof rl->source, upreq_header(r, "Docker-RateLimit-Source"),
                   false);
    rl->updated_ms = time_wall_ms();
    /* Low values are worth an info line each time they drop, not on every response. */
    if (rl->remaining >= 0 && rl->remaining < UP_RATELIMIT_LOW && rl->remaining != before)
        LOG_INFO("upstream %s: rate limit nearly used up: %lld of %lld pulls left (window %us)",
                 r->u->ucfg->name, (long long)rl->remaining, (long long)rl->limit,
                 (unsigned)rl->window_s);
    else
        LOG_DEBUG("upstream %s: rate limit: %lld of %lld pulls left (window %us)", r->u->ucfg->name,
                  (long long)rl->remaining, (long long)rl->limit, (unsigned)rl->window_s);
}

/* ---- Deciding what an answer means. ---- */

static bool is_redirect(int status)
{
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* A redirect to follow: sets r->next_url and returns true. */
static bool redirect_target(upreq_t *r, int status)
{
    upstream_t *u = r->u;
    const char *loc = upreq_header(r, "Location");
    if (!loc || !*loc)
        return false;
    if ((uint32_t)r->redirects >= u->gcfg->upstream_max_redirects) {
        LOG_WARN("upstream %s: %s: %d redirect not followed: at most %u redirects are followed",
                 u->ucfg->name, r->logline, status, (unsigned)u->gcfg->upstream_max_redirects);
        return false;
    }
    url_t *base = malloc(sizeof *base);
    url_t *next = malloc(sizeof *next);
    int rc = -ENOMEM;
    if (base && next) {
        base->tls = r->o->tls;
        base->port = r->o->port;
        snprintf(base->host, sizeof base->host, "%s", r->o->host);
        snprintf(base->path, sizeof base->path, "%s", r->path);
        rc = url_resolve(next, base, loc);
    }
    free(base);
    if (rc < 0) {
        /* Never log the Location: a pre-signed URL is a credential. */
        LOG_WARN("upstream %s: %s: %d redirect not followed: unusable Location (%s)", u->ucfg->name,
                 r->logline, status, err_str(rc));
        free(next);
        return false;
    }
    free(r->next_url);
    r->next_url = next;
    return true;
}

bool hops_intercept(upreq_t *r, int status)
{
    if (r->o->primary && !r->internal)
        note_ratelimit(r, status);
    if (is_redirect(status) && r->idempotent)
        return redirect_target(r, status);
    if (status == 401) {
        auth_challenge_t *c = upauth_challenge(r);
        if (!c)
            return false;
        free(r->chal);
        r->chal = c;
        return true;
    }
    return false;
}

/* ---- Going on. ---- */

static int follow_redirect(upreq_t *r)
{
    upstream_t *u = r->u;
    url_t *nu = r->next_url;
    r->next_url = NULL;
    origin_t *o;
    int rc = pool_origin_get(u, nu->tls, nu->host, nu->port, &o);
    if (rc < 0) {
        LOG_WARN("upstream %s: %s: cannot follow a redirect to %s://%s:%u: %s", u->ucfg->name,
                 r->logline, nu->tls ? "https" : "http", nu->host, (unsigned)nu->port, err_str(rc));
        goto out;
    }
    char *p = strdup(nu->path);
    if (!p) {
        rc = -ENOMEM;
        goto out;
    }
    free(r->path);
    r->path = p;
    if (r->status == 303 && !r->is_head)
        snprintf(r->method, sizeof r->method, "GET");
    r->redirects++;
    LOG_DEBUG("upstream %s: %s -> %d, redirect %d to %s%.*s", u->ucfg->name, r->logline, r->status,
              r->redirects, o->key, (int)strcspn(r->path, "?"), r->path);
    rc = pool_queue(r, o);
out:
    free(nu);
    return rc;
}

void hops_next(upreq_t *r)
{
    int rc = r->next_url ? follow_redirect(r) : upauth_answer(r);
    if (rc < 0)
        req_fail_later(r, rc);
}
