/** What the operator's endpoints (ops.c, status.c) read from the app. Internal to proxy/. */
#ifndef WINCH_PROXY_OPS_ENV_H
#define WINCH_PROXY_OPS_ENV_H

#include "common/topk.h"
#include "proxy/call.h"
#include "proxy/metrics.h"

/** What the endpoints read; every pointer borrowed from the app, valid while it runs. */
typedef struct ops_env {
    metrics_t *metrics;
    const topk_t *top_bytes; /* body bytes served per "UPSTREAM/REPOSITORY" (app.c) */
    struct server *server;
    struct retention *retention;
    health_t *const *health;      /* [i] for cfg->upstreams[i] */
    upstream_t *const *upstreams; /* [i] for cfg->upstreams[i] */
} ops_env_t;

#endif
