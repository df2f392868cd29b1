/* The operator's endpoints (ops.h). */
#include "proxy/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "proxy/cli_commands.h"
#include "proxy/fetch.h"
#include "proxy/health.h"
#include "proxy/producer.h"
#include "proxy/reply.h"
#include "proxy/retention.h"
#include "proxy/server.h"
#include "proxy/status.h"

/* The exposition grows with the upstreams (a few KiB each); far above any real one. */
#define METRICS_MAX ((size_t)1 << 20)
#define READYZ_MAX 8192

static bool path_is(const char *t, size_t len, const char *lit)
{
    const char *q = memchr(t, '?', len);
    size_t plen = q ? (size_t)(q - t) : len;
    return plen == strlen(lit) && memcmp(t, lit, plen) == 0;
}

enum ops_endpoint ops_route(const char *target, size_t len)
{
    if (!target)
        return OPS_NONE;
    if (path_is(target, len, "/metrics"))
        return OPS_METRICS;
    if (path_is(target, len, "/healthz") || path_is(target, len, "/livez"))
        return OPS_HEALTHZ;
    if (path_is(target, len, "/readyz"))
        return OPS_READYZ;
    if (path_is(target, len, "/_winch/") || path_is(target, len, "/_winch"))
        return OPS_STATUS;
    if (path_is(target, len, "/_winch/status.json"))
        return OPS_STATUS_JSON;
    return OPS_NONE;
}

static void send_text(call_t *c, int status, const char *type, char *body, size_t len)
{
    resp_begin(c->req, status);
    resp_header(c->req, "Content-Type", "%s", type);
    resp_header(c->req, "Cache-Control", "no-store");
    resp_send(c->req, len, body, len, true);
}

static void answer_metrics(call_t *c, const ops_env_t *e)
{
    const config_t *cfg = c->env->cfg;
    metrics_upstream_view_t ups[CONFIG_MAX_UPSTREAMS];
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        upstream_ratelimit_t rl;
        bool known = upstream_ratelimit(e->upstreams[i], &rl);
        ups[i] = (metrics_upstream_view_t){
            .name = cfg->upstreams[i].name,
            .down = health_down(e->health[i]),
            .ratelimit_known = known,
            .ratelimit_remaining = known ? rl.remaining : -1,
            .queued = upstream_waiting(e->upstreams[i], UPREQ_BULK) +
                      upstream_waiting(e->upstreams[i], UPREQ_PRIORITY),
        };
    }
    retention_view_t rv;
    retention_view(e->retention, &rv);
    metrics_view_t v = {
        .connections = server_connections(e->server),
        .fills = blob_producers_count(c->env->producers),
        .fetches = flight_table_count(c->env->fetches),
        .cache_known = rv.known,
        .cache_bytes = rv.bytes,
        .cache_max_bytes = rv.max_bytes,
        .evicted_items = rv.evicted_items,
        .evicted_bytes = rv.evicted_bytes,
        .upstreams = ups,
        .version = cli_version,
    };
    buf_t b;
    buf_init(&b, METRICS_MAX);
    int rc = metrics_render(e->metrics, &v, &b);
    size_t len = 0;
    char *body = rc == 0 ? buf_take(&b, &len) : NULL;
    buf_free(&b);
    if (!body) {
        reply_failure(c, rc < 0 ? rc : -ENOMEM, OCI_UNKNOWN);
        return;
    }
    c->cache_status = "local";
    send_text(c, 200, "text/plain; version=0.0.4; charset=utf-8", body, len);
}

/* ---- /readyz: a file created and removed in tmp/ on the threadpool, then an index read ---- */

typedef struct probe {
    call_t *c; /* NULL once the client went away */
    const ops_env_t *e;
    uv_fs_t fs;
    char path[4200];
    int err; /* of the file step, 0 when fine */
} probe_t;

static void probe_cancel(call_t *c)
{
    probe_t *p = c->op;
    p->c = NULL;
}

static void answer_ready(probe_t *p)
{
    call_t *c = p->c;
    c->cancel = NULL;
    c->op = NULL;
    const config_t *cfg = c->env->cfg;
    cache_entry_t ent;
    /* A digest nobody stores: the read itself is the check. */
    int irc = cache_lookup(
        c->env->cache, "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        &ent);
    bool index_ok = irc == 0 || irc == WE_NOTFOUND;
    bool ok = p->err == 0 && index_ok;
    char *body = malloc(READYZ_MAX);
    if (!body) {
        reply_failure(c, -ENOMEM, OCI_UNKNOWN);
        return;
    }
    size_t n = 0;
    n += (size_t)snprintf(body + n, READYZ_MAX - n, "%s\ncache_dir writable: %s%s%s\n",
                          ok ? "ready" : "not ready", p->err ? "no (" : "yes",
                          p->err ? err_str(p->err) : "", p->err ? ")" : "");
    n +=
        (size_t)snprintf(body + n, READYZ_MAX - n, "index readable: %s\n", index_ok ? "yes" : "no");
    for (size_t i = 0; i < cfg->n_upstreams && n < READYZ_MAX - 400; i++)
        n += (size_t)snprintf(body + n, READYZ_MAX - n,
                              "upstream %.200s: %s (%u consecutive failures)\n",
                              cfg->upstreams[i].name, health_down(p->e->health[i]) ? "down" : "up",
                              health_failures(p->e->health[i]));
    c->cache_status = "local";
    send_text(c, ok ? 200 : 503, "text/plain; charset=utf-8", body, n);
}

static void probe_end(probe_t *p)
{
    uv_fs_req_cleanup(&p->fs);
    if (p->c)
        answer_ready(p);
    free(p);
}

static void on_unlinked(uv_fs_t *fs)
{
    probe_t *p = fs->data;
    if (fs->result < 0 && p->err == 0)
        p->err = (int)fs->result;
    probe_end(p);
}

static void on_closed(uv_fs_t *fs)
{
    probe_t *p = fs->data;
    uv_fs_req_cleanup(&p->fs);
    if (uv_fs_unlink(fs->loop, &p->fs, p->path, on_unlinked) < 0)
        probe_end(p);
}

static void on_opened(uv_fs_t *fs)
{
    probe_t *p = fs->data;
    if (fs->result < 0) {
        p->err = (int)fs->result;
        probe_end(p);
        return;
    }
    uv_file f = (uv_file)fs->result;
    uv_fs_req_cleanup(&p->fs);
    if (uv_fs_close(fs->loop, &p->fs, f, on_closed) < 0)
        probe_end(p);
}

static void answer_readyz(call_t *c, const ops_env_t *e)
{
    probe_t *p = calloc(1, sizeof *p);
    if (!p) {
        reply_failure(c, -ENOMEM, OCI_UNKNOWN);
        return;
    }
    p->c = c;
    p->e = e;
    p->fs.data = p;
    snprintf(p->path, sizeof p->path, "%s/tmp/readyz.%ld.%llu", cache_dir(c->env->cache),
             (long)getpid(), (unsigned long long)call_id(c));
    c->op = p;
    c->cancel = probe_cancel;
    int rc = uv_fs_open(c->env->loop, &p->fs, p->path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC,
                        0600, on_opened);
    if (rc < 0) {
        p->err = rc;
        probe_end(p);
    }
}

void ops_handle(call_t *c, const ops_env_t *e, enum ops_endpoint ep)
{
    switch (ep) {
    case OPS_METRICS:
        answer_metrics(c, e);
        return;
    case OPS_READYZ:
        answer_readyz(c, e);
        return;
    case OPS_STATUS:
        status_answer(c, e);
        return;
    case OPS_STATUS_JSON:
        status_json_answer(c, e);
        return;
    case OPS_HEALTHZ: {
        static const char ok[] = "ok\n";
        c->cache_status = "local";
        resp_begin(c->req, 200);
        resp_header(c->req, "Content-Type", "text/plain; charset=utf-8");
        resp_header(c->req, "Cache-Control", "no-store");
        resp_send(c->req, sizeof ok - 1, (char *)ok, sizeof ok - 1, false);
        return;
    }
    case OPS_NONE:
        break;
    }
    reply_error(c, 404, OCI_UNSUPPORTED, "unknown path", NULL);
}
