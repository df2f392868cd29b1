/* `winch serve`: the process around the application — its loop, its cache, the signals that
 * stop it — and what it says at start. */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "cache/cache.h"
#include "common/err.h"
#include "common/log.h"
#include "config/config.h"
#include "proxy/app.h"
#include "proxy/cli_commands.h"
#include "proxy/reload.h"
#include "proxy/server.h"
#include "proxy/usage.h"

/* The process around the application: its loop and the signals that stop it. */
typedef struct process {
    uv_loop_t *loop;
    uv_work_t warm;
    app_t *app;
    uv_signal_t sigterm, sigint, sighup;
    reloader_t *reloader;
    bool stopping;
} process_t;

static void warm_noop(uv_work_t *w)
{
    (void)w;
}

static void warm_done(uv_work_t *w, int status)
{
    (void)w;
    (void)status;
}

/* libuv starts its threadpool (16 threads here) on the first queued job, and OpenSSL reads its
 * configuration on the first digest: both would land on the first cold request. Pay for them
 * at start instead. */
static void warm_up(uv_loop_t *loop, uv_work_t *w)
{
    digester_t *d;
    if (digester_new(&d, REF_ALG_SHA256) == 0)
        digester_free(d);
    uv_queue_work(loop, w, warm_noop, warm_done);
}

static void on_signal(uv_signal_t *h, int signum)
{
    process_t *a = h->data;
    if (a->stopping)
        return;
    a->stopping = true;
    LOG_INFO("signal %d: shutting down", signum);
    app_shutdown(a->app);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sighup, NULL);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    process_t *a = h->data;
    if (!a->stopping)
        reloader_run(a->reloader);
}

/* True for a host winch's listener binds that only this machine reaches. */
static bool host_is_loopback(const char *host)
{
    unsigned char b[16];
    if (strcasecmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, b) == 1)
        return b[0] == 127;
    if (inet_pton(AF_INET6, host, b) == 1)
        return memcmp(b, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
    return false;
}

/* Anyone who reaches a listener may pull through winch (and fill its disk, spend its upstream
 * credentials and rate limit): say so when that is more than this machine. */
static void warn_open_listeners(const config_t *cfg)
{
    if (cfg->auth)
        return;
    const char *open[2] = {NULL, NULL};
    if (cfg->listen_enabled && !host_is_loopback(cfg->listen_host))
        open[0] = cfg->listen_host;
    if (cfg->tls_listen_enabled && !host_is_loopback(cfg->tls_listen_host))
        open[1] = cfg->tls_listen_host;
    for (int i = 0; i < 2; i++)
        if (open[i])
            LOG_WARN("listening on %s%s, which is not loopback, with no client authentication "
                     "(\"auth\"): anyone who reaches it can pull through winch and fill its "
                     "cache; see README \"Client authentication\"",
                     open[i], i ? " (tls)" : "");
    for (size_t i = 0; i < cfg->n_client_groups; i++) {
        const config_client_group_t *g = &cfg->client_groups[i];
        if (g->listen_host && !host_is_loopback(g->listen_host))
            LOG_WARN("group %s listener on %s, which is not loopback, with no client "
                     "authentication (\"auth\"): anyone who reaches it can pull through winch",
                     g->name, g->listen_host);
    }
}

/* Says at start which upstreams winch uses, and what about them is unsafe. */
static void log_upstreams(const config_t *cfg)
{
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        const config_upstream_t *u = &cfg->upstreams[i];
        LOG_INFO("upstream %s%s = %s%s", u->name, i == 0 ? " (default)" : "", u->url,
                 u->username ? " (with credentials)" : "");
        if (u->insecure_skip_verify)
            LOG_WARN("upstream %s: insecure_skip_verify is on: its TLS certificates and host "
                     "names are NOT verified",
                     u->name);
        if (u->username && !u->tls)
            LOG_WARN("upstream %s: credentials configured for a plain-HTTP upstream: they "
                     "travel unencrypted",
                     u->name);
    }
}

/* SIGTERM and SIGINT stop; SIGHUP reloads the configuration (reload.h) instead of ending the
 * process. */
static void start_signals(process_t *a)
{
    uv_signal_init(a->loop, &a->sigterm);
    uv_signal_init(a->loop, &a->sigint);
    uv_signal_init(a->loop, &a->sighup);
    a->sigterm.data = a->sigint.data = a->sighup.data = a;
    /* SIGHUP reloads the configuration (reload.h) instead of ending the process. */
    uv_signal_start(&a->sighup, on_sighup, SIGHUP);
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    uv_signal_start(&a->sigint, on_signal, SIGINT);
}

int cli_serve(int argc, char **argv)
{
    char err[512];
    config_t *cfg = NULL;
    cache_t *cache = NULL;
    process_t a = {0};
    int rc = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage_print_cmd(stdout, "serve");
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            printf("winch %s (commit %s)\n", cli_version, cli_commit);
            return 0;
        }
    }
    if (config_load(&cfg, argc - 1, argv + 1, err, sizeof err) < 0) {
        fprintf(stderr, "winch: %s\n", err);
        return 2;
    }
    log_set_level(log_level_parse(cfg->log_level));
    /* A client that goes away mid-response must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);
    /* A SIGHUP before the reload handler is in place (below) must not end the process. */
    signal(SIGHUP, SIG_IGN);
    /* Every connection is an fd: take all the kernel allows (as nginx's worker_rlimit_nofile
     * would) before the server plans its limits on it. */
    uint64_t nofile_was = 0, nofile = 0;
    int lim = server_raise_nofile(&nofile_was, &nofile);
    if (lim < 0)
        LOG_WARN("cannot raise the fd limit to its hard limit: %s", err_str(lim));
    else if (nofile != nofile_was)
        LOG_INFO("fd limit raised from %llu to %llu (the hard limit)",
                 (unsigned long long)nofile_was, (unsigned long long)nofile);

    /* Fills hash and write on libuv's threadpool, beside fsyncs and index commits; the default
     * of 4 threads would let a few slow disks stall every fill. Set before the pool starts. */
    if (!getenv("UV_THREADPOOL_SIZE"))
        setenv("UV_THREADPOOL_SIZE", "16", 0);
    a.loop = uv_default_loop();
    cache_opts_t co = {.loop = a.loop, .dir = cfg->cache_dir, .map_size = cfg->index_map_size};
    int e = cache_open(&cache, &co);
    if (e < 0) {
        fprintf(stderr, "winch: cache directory %s: %s\n", cfg->cache_dir,
                e == -EBUSY ? "in use by another winch process" : err_str(e));
        goto out;
    }
    e = app_create(&a.app, a.loop, cfg, cache, err, sizeof err);
    if (e < 0) {
        fprintf(stderr, "winch: %s\n", err);
        goto out;
    }
    char bound[96], tls_bound[96];
    e = app_listen(a.app, bound, tls_bound, sizeof bound, err, sizeof err);
    if (e < 0) {
        fprintf(stderr, "winch: %s\n", err);
        app_shutdown(a.app);
        uv_run(a.loop, UV_RUN_DEFAULT);
        goto out;
    }
    log_upstreams(cfg);
    /* The handlers before the "listening on" lines: whoever reads them may signal at once
     * (delivered when the loop runs). */
    e = reloader_create(&a.reloader, cfg, a.app, argc - 1, argv + 1);
    if (e < 0) {
        fprintf(stderr, "winch: %s\n", err_str(e));
        app_shutdown(a.app);
        uv_run(a.loop, UV_RUN_DEFAULT);
        goto out;
    }
    start_signals(&a);
    warn_open_listeners(cfg);
    /* Always printed, whatever the level: scripts read the bound ports from them (the plain
     * listener's line first: harnesses take the first "listening on"). */
    if (cfg->listen_enabled)
        log_write(WLOG_INFO, "winch %s listening on %s, cache %s", cli_version, bound,
                  cfg->cache_dir);
    if (cfg->tls_listen_enabled)
        log_write(WLOG_INFO, "winch %s listening on %s (tls), cache %s", cli_version, tls_bound,
                  cfg->cache_dir);

    warm_up(a.loop, &a.warm);
    uv_run(a.loop, UV_RUN_DEFAULT);
    rc = 0;
out:
    app_destroy(a.app);
    reloader_free(a.reloader); /* the configurations and policies reloads replaced */
    cache_close(cache);
    if (a.loop)
        uv_loop_close(a.loop);
    config_free(cfg);
    return rc;
}
