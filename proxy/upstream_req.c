/* The upstream request object (upstream_internal.h has the map of the files): creating and
 * freeing it, its state and the one place that changes it, its request head, its response
 * headers as the caller reads them, and its end.
 *
 * Endings. Every failure, and the replay of a 401 winch could not answer, is reported through
 * the deferred list, drained by a 0 ms timer on the next loop iteration. That gives one rule
 * for the whole client: upreq_start, upreq_cancel and the pool's pump never call user code,
 * and on_done(error) never runs inside a libuv callback that is still using the connection.
 * A successful answer ends (req_complete) from the wire, outside llhttp, once its connection
 * is back in the pool.
 */
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/log.h"
#include "proxy/upstream_internal.h"

/* ---- State. ---- */

#define BIT(s) (1u << (s))

static const char *const state_names[] = {
    [UR_NEW] = "new",
    [UR_QUEUED] = "queued",
    [UR_CONNECTING] = "connecting",
    [UR_SENT] = "sent",
    [UR_DRAINING] = "draining",
    [UR_BODY] = "body",
    [UR_PAUSED] = "paused",
    [UR_RESUMING] = "resuming",
    [UR_COMPLETE] = "complete",
    [UR_TOKEN] = "token",
    [UR_ENDING] = "ending",
    [UR_DONE] = "done",
    [UR_CANCELLED] = "cancelled",
};

/* For each state, the states it may be entered from. */
static const unsigned legal_from[] = {
    [UR_NEW] = 0,
    /* The first hop; a retry after a stale pooled connection; the next hop of a redirect or a
     * 401 (sent again with credentials or a token). */
    [UR_QUEUED] = BIT(UR_NEW) | BIT(UR_SENT) | BIT(UR_DRAINING) | BIT(UR_COMPLETE) | BIT(UR_TOKEN),
    /* The next address after a refused connect is a new connection for the same request. */
    [UR_CONNECTING] = BIT(UR_QUEUED) | BIT(UR_CONNECTING),
    [UR_SENT] = BIT(UR_QUEUED) | BIT(UR_CONNECTING),
    [UR_DRAINING] = BIT(UR_SENT),
    [UR_BODY] = BIT(UR_SENT) | BIT(UR_PAUSED) | BIT(UR_RESUMING),
    [UR_PAUSED] = BIT(UR_BODY) | BIT(UR_RESUMING),
    [UR_RESUMING] = BIT(UR_PAUSED),
    /* PAUSED: a HEAD answer has no body to hold back. */
    [UR_COMPLETE] = BIT(UR_BODY) | BIT(UR_PAUSED) | BIT(UR_DRAINING),
    [UR_TOKEN] = BIT(UR_DRAINING) | BIT(UR_COMPLETE),
    [UR_ENDING] = BIT(UR_QUEUED) | BIT(UR_CONNECTING) | BIT(UR_SENT) | BIT(UR_DRAINING) |
                  BIT(UR_BODY) | BIT(UR_PAUSED) | BIT(UR_RESUMING) | BIT(UR_COMPLETE) |
                  BIT(UR_TOKEN),
    [UR_DONE] = BIT(UR_COMPLETE) | BIT(UR_ENDING),
    [UR_CANCELLED] = ~(BIT(UR_DONE) | BIT(UR_CANCELLED)),
};

void req_set_state(upreq_t *r, enum upreq_state s)
{
    enum upreq_state from = r->state;
    if (!(legal_from[s] & BIT(from))) {
        /* The request would be in two places at once (a queue and a connection): continuing
         * means a use after free later, far from the cause. */
        LOG_ERROR("upstream %s: %s: request state %s -> %s is not a legal change (a bug)",
                  r->u->ucfg->name, r->logline, state_names[from], state_names[s]);
        abort();
    }
    r->state = s;
    /* Flow control changes state once or twice per body piece: not worth a line each. */
    unsigned flow = BIT(UR_BODY) | BIT(UR_PAUSED) | BIT(UR_RESUMING);
    if (!((flow & BIT(from)) && (flow & BIT(s))))
        LOG_DEBUG("upstream %s: %s: %s -> %s", r->u->ucfg->name, r->logline, state_names[from],
                  state_names[s]);
}

/* ---- Lists. ---- */

void req_push(upreq_t **head, upreq_t **tail, upreq_t *r, bool front)
{
    if (front) {
        r->prev = NULL;
        r->next = *head;
        if (*head)
            (*head)->prev = r;
        else
            *tail = r;
        *head = r;
        return;
    }
    r->next = NULL;
    r->prev = *tail;
    if (*tail)
        (*tail)->next = r;
    else
        *head = r;
    *tail = r;
}

void req_pull(upreq_t **head, upreq_t **tail, upreq_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        *head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        *tail = r->prev;
    r->prev = r->next = NULL;
}

void req_unlist(upreq_t *r)
{
    switch (r->state) {
    case UR_QUEUED: {
        int l = req_lane(r);
        req_pull(&r->o->wait_head[l], &r->o->wait_tail[l], r);
        r->o->nwait[l]--;
        break;
    }
    case UR_TOKEN:
        /* The last waiter leaving lets the fetch finish: its token will be cached. */
        (void)flight_leave(&r->token_wait);
        break;
    case UR_ENDING:
        req_pull(&r->u->defer_head, &r->u->defer_tail, r);
        break;
    default:
        break;
    }
}

int req_lane(const upreq_t *r)
{
    return r->bulk ? UPREQ_BULK : UPREQ_PRIORITY;
}

/* The deadline list is sorted by deadline_at; requests mostly arrive in deadline order (one
 * deadline per kind of caller), so the walk from the tail is short. */
void req_set_deadline(upreq_t *r, uint32_t ms)
{
    upstream_t *u = r->u;
    req_clear_deadline(r);
    if (ms == 0)
        return;
    r->deadline_at = uv_now(u->loop) + ms;
    upreq_t *after = u->dl_tail;
    while (after && after->deadline_at > r->deadline_at)
        after = after->dl_prev;
    r->dl_prev = after;
    r->dl_next = after ? after->dl_next : u->dl_head;
    if (r->dl_next)
        r->dl_next->dl_prev = r;
    else
        u->dl_tail = r;
    if (after)
        after->dl_next = r;
    else
        u->dl_head = r;
    r->in_dl = true;
    if (u->dl_head == r)
        uv_timer_start(&u->dl_timer, u->deadline_cb, ms, 0);
}

/* Leaves the timer as it is: when it fires early, it finds nothing due and re-arms. */
void req_clear_deadline(upreq_t *r)
{
    upstream_t *u = r->u;
    if (!r->in_dl)
        return;
    if (r->dl_prev)
        r->dl_prev->dl_next = r->dl_next;
    else
        u->dl_head = r->dl_next;
    if (r->dl_next)
        r->dl_next->dl_prev = r->dl_prev;
    else
        u->dl_tail = r->dl_prev;
    r->dl_prev = r->dl_next = NULL;
    r->in_dl = false;
}

/* ---- Creating and freeing. ---- */

static bool valid_token(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || s[i] == '-'))
            return false;
    return true;
}

/* No control characters and no spaces: nothing that could split the request line. */
static bool valid_path(const char *s)
{
    if (s[0] != '/')
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f)
            return false;
    return true;
}

/* "Name: value" with no CR or LF (which would inject headers). */
static bool valid_header_line(const char *s)
{
    const char *colon = strchr(s, ':');
    if (!colon || colon == s)
        return false;
    return strpbrk(s, "\r\n") == NULL;
}

/* The caller's header lines as one block, "Name: value\r\n" each. */
static int copy_extra(upreq_t *r, const char *const *extra_headers, size_t xlen)
{
    r->extra = malloc(xlen + 1);
    if (!r->extra)
        return -ENOMEM;
    size_t len = 0;
    for (const char *const *h = extra_headers; *h; h++) {
        size_t k = strlen(*h);
        memcpy(r->extra + len, *h, k);
        memcpy(r->extra + len + k, "\r\n", 2);
        len += k + 2;
    }
    r->extra[len] = '\0';
    return 0;
}

void req_logline(upreq_t *r, const char *origin)
{
    char id[32] = "";
    if (r->req_id)
        snprintf(id, sizeof id, "req=%llu ", (unsigned long long)r->req_id);
    snprintf(r->logline, sizeof r->logline, "%s%s %s%.*s", id, r->method, origin,
             (int)strcspn(r->path, "?"), r->path);
}

int req_create(upreq_t **out, upstream_t *u, const char *method, const char *path,
               const char *const *extra_headers, const upreq_cbs_t *cbs, void *arg)
{
    int rc;
    size_t xlen = 0;
    if (!valid_token(method, 16) || !valid_path(path))
        return WE_INVALID;
    for (const char *const *h = extra_headers; h && *h; h++) {
        if (!valid_header_line(*h))
            return WE_INVALID;
        xlen += strlen(*h) + 2;
        if (xlen > UP_MAX_HEAD)
            return WE_TOOBIG;
    }
    upreq_t *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->u = u;
    r->state = UR_NEW;
    r->path = strdup(path);
    if (!r->path) {
        rc = -ENOMEM;
        goto fail;
    }
    if (xlen > 0) {
        rc = copy_extra(r, extra_headers, xlen);
        if (rc < 0)
            goto fail;
    }
    snprintf(r->method, sizeof r->method, "%s", method);
    req_logline(r, "");
    r->cbs = cbs;
    r->arg = arg;
    r->is_head = strcmp(method, "HEAD") == 0;
    r->idempotent = r->is_head || strcmp(method, "GET") == 0;
    r->clen = UINT64_MAX;
    *out = r;
    return 0;
fail:
    req_free(r);
    return rc;
}

void req_set_origin(upreq_t *r, origin_t *o)
{
    if (r->o)
        r->o->nreqs--;
    r->o = o;
    o->nreqs++;
    o->last_used = ++r->u->tick;
}

void req_clear_auth(upreq_t *r)
{
    if (r->auth_hdr)
        OPENSSL_cleanse(r->auth_hdr, strlen(r->auth_hdr));
    free(r->auth_hdr);
    r->auth_hdr = NULL;
    r->auth_okey[0] = '\0';
    r->auth_gen = 0;
    r->auth_basic = false;
}

void req_free(upreq_t *r)
{
    req_clear_deadline(r);
    if (r->o)
        r->o->nreqs--;
    req_clear_auth(r);
    if (r->head)
        OPENSSL_cleanse(r->head, r->head_len); /* it may hold a token */
    free(r->head);
    free(r->hdr);
    free(r->path);
    free(r->extra);
    free(r->next_url);
    free(r->chal);
    free(r);
}

/* ---- The request head. ---- */

static bool line_is_auth(const char *l)
{
    return strncasecmp(l, "Authorization:", 14) == 0;
}

/* Bytes of r's head for origin o. */
static size_t head_size(const upreq_t *r, const origin_t *o, bool own_auth)
{
    size_t need = strlen(r->method) + 1 + strlen(r->path) + sizeof " HTTP/1.1\r\n" - 1;
    need += sizeof "Host: \r\n" - 1 + strlen(o->host_hdr) + 2;
    need += sizeof "User-Agent: " UP_USER_AGENT "\r\n" - 1 + sizeof "Connection: keep-alive\r\n" -
            1;
    if (r->extra)
        need += strlen(r->extra);
    if (own_auth)
        need += strlen(r->auth_hdr) + 2;
    return need;
}

/* Authorization goes only where it belongs: winch's own to the origin it was obtained for, the
 * caller's to the primary. */
int req_build_head(upreq_t *r)
{
    origin_t *o = r->o;
    bool own_auth = r->auth_hdr && strcmp(r->auth_okey, o->key) == 0;
    size_t need = head_size(r, o, own_auth);
    if (need > UP_MAX_HEAD)
        return WE_TOOBIG;
    char *h = malloc(need + 1);
    if (!h)
        return -ENOMEM;
    int n = snprintf(h, need + 1,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: " UP_USER_AGENT
                     "\r\nConnection: keep-alive\r\n",
                     r->method, r->path, o->host_hdr);
    size_t len = (size_t)n;
    for (const char *l = r->extra; l && *l;) {
        const char *e = strstr(l, "\r\n") + 2;
        if (o->primary || !line_is_auth(l)) {
            memcpy(h + len, l, (size_t)(e - l));
            len += (size_t)(e - l);
        }
        l = e;
    }
    if (own_auth) {
        size_t k = strlen(r->auth_hdr);
        memcpy(h + len, r->auth_hdr, k);
        memcpy(h + len + k, "\r\n", 2);
        len += k + 2;
    }
    memcpy(h + len, "\r\n", 2);
    len += 2;
    h[len] = '\0';
    if (r->head)
        OPENSSL_cleanse(r->head, r->head_len);
    free(r->head);
    r->head = h;
    r->head_len = len;
    req_logline(r, o->primary ? "" : o->key);
    return 0;
}

/* ---- Response headers, as the caller reads them (upstream.h). ---- */

const char *upreq_header_next(const upreq_t *r, const char *name, const char *prev)
{
    if (!r->hdr)
        return NULL;
    const char *p = prev ? prev + strlen(prev) + 1 : r->hdr;
    const char *end = r->hdr + r->hdone;
    if (p < r->hdr || p > end)
        return NULL;
    while (p < end) {
        const char *n = p;
        const char *v = n + strlen(n) + 1;
        if (v >= end)
            break;
        if (strcasecmp(n, name) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

const char *upreq_header(const upreq_t *r, const char *name)
{
    return upreq_header_next(r, name, NULL);
}

uint64_t upreq_content_length(const upreq_t *r)
{
    return r->clen;
}

int upreq_redirects(const upreq_t *r)
{
    return r->redirects;
}

/* ---- Endings. ---- */

void req_complete(upreq_t *r, int status)
{
    upstream_t *u = r->u;
    if (status == 0 && r->redirects > 0)
        LOG_DEBUG("upstream %s: %s -> %d (after %d redirect%s)", u->ucfg->name, r->logline,
                  r->status, r->redirects, r->redirects == 1 ? "" : "s");
    else if (status == 0)
        LOG_DEBUG("upstream %s: %s -> %d", u->ucfg->name, r->logline, r->status);
    else
        LOG_DEBUG("upstream %s: %s failed: %s", u->ucfg->name, r->logline, err_str(status));
    req_clear_deadline(r);
    req_set_state(r, UR_DONE);
    r->cbs->on_done(r, r->arg, status);
    req_free(r);
}

static void on_defer(uv_timer_t *t);

static void end_later(upreq_t *r, int status, bool replay)
{
    upstream_t *u = r->u;
    req_clear_deadline(r);
    req_set_state(r, UR_ENDING);
    r->end_status = status;
    r->end_replay = replay;
    req_push(&u->defer_head, &u->defer_tail, r, false);
    uv_timer_start(&u->defer_timer, on_defer, 0, 0);
}

void req_fail_later(upreq_t *r, int status)
{
    end_later(r, status, false);
}

void req_replay_later(upreq_t *r)
{
    end_later(r, 0, true);
}

/* The 401 that winch could not answer reaches the caller as it came, without its body: its
 * headers are still in r->hdr (nothing was sent since). */
static void replay(upreq_t *r)
{
    r->clen = 0;
    r->in_parser++; /* a cancel from on_headers only marks r */
    r->cbs->on_headers(r, r->arg, r->status);
    r->in_parser--;
    if (r->state == UR_CANCELLED) {
        req_free(r);
        return;
    }
    req_complete(r, r->abort_err);
}

static void on_defer(uv_timer_t *t)
{
    upstream_t *u = t->data;
    /* Only what is queued now: callbacks may queue more, which waits for the next round. */
    size_t n = 0;
    for (upreq_t *r = u->defer_head; r; r = r->next)
        n++;
    while (n-- > 0 && u->defer_head && !u->destroying) {
        upreq_t *r = u->defer_head;
        /* Off the list before its callbacks run (they free r). */
        u->defer_head = r->next;
        if (u->defer_head)
            u->defer_head->prev = NULL;
        else
            u->defer_tail = NULL;
        r->prev = r->next = NULL;
        if (r->end_replay)
            replay(r);
        else
            req_complete(r, r->end_status);
    }
}
