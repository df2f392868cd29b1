/** The operator's endpoints, beside the registry API: `GET /metrics` (Prometheus text),
 * `GET /healthz` (liveness: the loop answers) and `GET /readyz` (readiness: the cache directory
 * takes a new file and the index answers a read; each upstream's breaker state is reported in
 * the body but never fails readiness, since a stale tag can still be served). Internal to
 * proxy/; app.c routes to it before the registry routes. */
#ifndef WINCH_PROXY_OPS_H
#define WINCH_PROXY_OPS_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/call.h"
#include "proxy/metrics.h"
#include "proxy/ops_env.h"

/* OPS_STATUS: the status page `/_winch/` (status.h). */
/* OPS_STATUS_JSON: the same as JSON, `/_winch/status.json` (what `winch status` reads). */
enum ops_endpoint { OPS_NONE, OPS_METRICS, OPS_HEALTHZ, OPS_READYZ, OPS_STATUS, OPS_STATUS_JSON };

/** Which endpoint the request-target names (path exactly, any query ignored); OPS_NONE for
 * anything else. */
enum ops_endpoint ops_route(const char *target, size_t len);

/** Answers c (a GET or HEAD) for ep. /readyz answers later, after its file probe on the
 * threadpool; the probe outlives a client that goes away. */
void ops_handle(call_t *c, const ops_env_t *e, enum ops_endpoint ep);

#endif
