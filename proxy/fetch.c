/* Buffered upstream fetches (fetch.h). Every one has a deadline for the whole exchange
 * (upstream_fetch_deadline_ms): a client waits on it. Most go in the priority lane. A body over its
 * bound is abandoned the moment that is known, never drained: a Content-Length over the bound
 * ends the request at its headers, a chunked body at the byte that crosses the bound, and the
 * connection is closed (upreq_abort). An error answer's body is not needed at all: it is read
 * up to ERROR_BODY_MAX to keep the connection, or abandoned beyond. */
#include "proxy/fetch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "proxy/health.h"
#include "proxy/metrics.h"

/* Error bodies are read but not kept beyond this: they are never relayed. */
#define ERROR_BODY_MAX 4096

/* The operation of a flight: one upstream request and the body it collects. */
typedef struct fetch_op {
    flight_t *fl;
    health_t *health;   /* borrowed: told how the exchange ended */
    metrics_t *metrics; /* borrowed: answers, latency, bytes */
    int upstream;       /* index for the metrics */
    enum metrics_kind kind;
    uint64_t t0_ns; /* uv_hrtime at the start */
    upreq_t *up;
    buf_t body;
    size_t max;
    int status;
    bool head; /* HEAD: Content-Length describes what a GET would send, not a body */
    bool too_big;
    bool cut; /* an error answer's body was abandoned: the status is all that counts */
} fetch_op_t;

/* One call waiting for a flight. */
typedef struct fetch_waiter {
    flight_waiter_t w; /* first: the land callback gets it back */
    call_t *c;
    fetch_cb cb;
    void *ctx;
    void (*ctx_free)(void *);
} fetch_waiter_t;

/* What a landing flight tells its waiters. */
typedef struct fetch_result {
    int status;
    int err;
    upreq_t *up;
    const buf_t *body;
} fetch_result_t;

int fetch_status_err(int status)
{
    switch (status) {
    case 404:
        return WE_NOTFOUND;
    case 401:
    case 403:
        return WE_DENIED;
    case 429:
        return WE_RATELIMIT;
    default:
        return WE_UPSTREAM;
    }
}

void fetch_path(const call_t *c, const char *kind, const char *ref, char *out, size_t len)
{
    const config_upstream_t *u = c->route.upstream;
    snprintf(out, len, "%s/v2/%s/%s%s%s", u->base_path, c->route.name, kind, ref ? "/" : "",
             ref ? ref : "");
}

static void op_free(fetch_op_t *op)
{
    buf_free(&op->body);
    free(op);
}

/* A waiting client went away: the flight goes on for the others, or is cancelled. */
static void waiter_cancel(call_t *c)
{
    fetch_waiter_t *fw = c->op;
    c->op = NULL;
    flight_t *last = flight_leave(&fw->w);
    if (fw->ctx_free)
        fw->ctx_free(fw->ctx);
    free(fw);
    if (last) {
        fetch_op_t *op = flight_op(last);
        upreq_cancel(op->up);
        flight_drop(last);
        op_free(op);
    }
}

/* The body passed its bound: stop reading now and close the connection. */
static void over_bound(fetch_op_t *op, upreq_t *up)
{
    if (op->status == 200)
        op->too_big = true;
    else
        op->cut = true;
    upreq_abort(up, WE_TOOBIG);
}

static void op_on_headers(upreq_t *up, void *arg, int status)
{
    fetch_op_t *op = arg;
    op->status = status;
    metrics_upstream_answer(op->metrics, op->upstream, status, 0, (uv_hrtime() - op->t0_ns) / 1000);
    /* Only a 200's body is kept; an error body is bounded and dropped. */
    op->body.max = status == 200 ? op->max : ERROR_BODY_MAX;
    uint64_t cl = upreq_content_length(up);
    if (!op->head && cl != UINT64_MAX && cl > op->body.max)
        over_bound(op, up);
}

static void op_on_body(upreq_t *up, void *arg, const char *data, size_t len)
{
    fetch_op_t *op = arg;
    if (op->too_big || op->cut)
        return;
    metrics_upstream_bytes(op->metrics, op->upstream, op->kind, len);
    if (buf_append(&op->body, data, len) < 0)
        over_bound(op, up);
}

static void on_land(flight_waiter_t *w, void *result)
{
    fetch_waiter_t *fw = (fetch_waiter_t *)w;
    const fetch_result_t *res = result;
    call_t *c = fw->c;
    c->cancel = NULL;
    c->op = NULL;
    int err = res->err;
    char *body = NULL;
    size_t len = 0;
    if (err == 0 && res->status == 200) {
        body = malloc(res->body->len + 1);
        if (body) {
            if (res->body->len)
                memcpy(body, res->body->p, res->body->len);
            body[res->body->len] = '\0';
            len = res->body->len;
        } else {
            err = -ENOMEM;
        }
    }
    fetch_cb cb = fw->cb;
    void *ctx = fw->ctx;
    free(fw);
    cb(c, ctx, res->status, err, res->up, body, len);
}

static void op_on_done(upreq_t *up, void *arg, int err)
{
    fetch_op_t *op = arg;
    /* The breaker hears how the upstream answered: a body abandoned over its bound was still an
     * answer. */
    if (op->health)
        health_report(op->health, op->status, op->too_big || op->cut ? 0 : err);
    if (op->status == 0)
        metrics_upstream_answer(op->metrics, op->upstream, 0, err, 0);
    if (op->too_big)
        err = WE_TOOBIG;
    else if (op->cut)
        err = 0; /* the answer is its status; its body was never going to be used */
    fetch_result_t res = {.status = op->status, .err = err, .up = up, .body = &op->body};
    /* The flight leaves the table before anyone is told: a waiter that asks again from its
     * callback starts a new flight. */
    flight_land(op->fl, &res);
    op_free(op);
}

static const upreq_cbs_t op_cbs = {
    .on_headers = op_on_headers,
    .on_body = op_on_body,
    .on_done = op_on_done,
};

/* Starts the upstream request of a new flight. */
static int op_start(call_t *c, flight_t *fl, enum upreq_lane lane, const char *method,
                    const char *path, const char *accept, size_t max)
{
    upreq_opts_t opts = {.lane = lane, .deadline_ms = c->env->cfg->upstream_fetch_deadline_ms};
    fetch_op_t *op = calloc(1, sizeof *op);
    if (!op)
        return -ENOMEM;
    op->fl = fl;
    op->health = c->health;
    op->metrics = c->env->metrics;
    op->upstream = call_upstream_ix(c);
    op->kind = c->route.op == ROUTE_MANIFEST ? METRICS_KIND_MANIFEST : METRICS_KIND_OTHER;
    op->t0_ns = uv_hrtime();
    op->max = max;
    op->head = strcmp(method, "HEAD") == 0;
    buf_init(&op->body, max);
    char acc[512];
    const char *hdrs[2] = {NULL, NULL};
    if (accept) {
        snprintf(acc, sizeof acc, "Accept: %s", accept);
        hdrs[0] = acc;
    }
    opts.req_id = call_id(c);
    int err = upreq_start_opts(&op->up, c->up, method, path, hdrs, &op_cbs, op, &opts);
    if (err < 0) {
        op_free(op);
        return err;
    }
    flight_set_op(fl, op);
    return 0;
}

int fetch_start(call_t *c, const char *method, const char *path, const char *accept, size_t max,
                fetch_cb cb, void *ctx, void (*ctx_free)(void *))
{
    return fetch_start_in(c, UPREQ_PRIORITY, method, path, accept, max, cb, ctx, ctx_free);
}

int fetch_start_in(call_t *c, enum upreq_lane lane, const char *method, const char *path,
                   const char *accept, size_t max, fetch_cb cb, void *ctx, void (*ctx_free)(void *))
{
    /* Identical means: same upstream, method, path, Accept and bound. */
    char key[REF_NAME_MAX + 1200];
    int kl = snprintf(key, sizeof key, "%s\n%s %s\n%s\n%zu", c->route.upstream->name, method, path,
                      accept ? accept : "", max);
    if (kl < 0 || (size_t)kl >= sizeof key)
        return WE_TOOBIG;
    /* A down upstream is not asked: the caller answers from its cache or fails fast. */
    if (c->health && health_down(c->health))
        return WE_DOWN;
    fetch_waiter_t *fw = calloc(1, sizeof *fw);
    if (!fw)
        return -ENOMEM;
    fw->c = c;
    fw->cb = cb;
    fw->ctx = ctx;
    fw->ctx_free = ctx_free;
    flight_t *fl;
    bool created;
    int err = flight_join(c->env->fetches, key, &fw->w, on_land, &fl, &created);
    if (err < 0) {
        free(fw);
        return err;
    }
    if (created) {
        err = op_start(c, fl, lane, method, path, accept, max);
        if (err < 0) {
            flight_leave(&fw->w);
            flight_drop(fl);
            free(fw);
            return err;
        }
    } else {
        c->joined = true;
        LOG_DEBUG("req=%llu joins the upstream %s in flight", (unsigned long long)call_id(c),
                  method);
    }
    c->op = fw;
    c->cancel = waiter_cancel;
    return 0;
}
