/* `winch warm REF... [--platform P]... [--server URL]`: pulls images into the cache ahead of
 * the clients that will need them (CI pre-seeding, a new mirror before a rollout).
 *
 * It pulls through a winch, exactly as a client does (warm.c), so the cache is filled by the
 * same fills, checks and index writes as any pull:
 *
 *   --server URL     through that winch (http or https);
 *   a winch serves   the cache (its lock is held): through its plain listener, as --config
 *                    or --cache-dir describe it (0.0.0.0 and :: are reached on loopback);
 *   none serves      winch warm runs one itself: the same configuration on this process's own
 *                    loop, listening on an ephemeral 127.0.0.1 port only for the pulls, and
 *                    stops it afterwards. It holds the cache's lock meanwhile, as winch serve
 *                    would, and creates the cache if there is none.
 *
 * An index is pulled for the platforms asked for (--platform linux/arm64, repeatable; "all"
 * for every one; linux/amd64 by default). Afterwards every manifest and blob fetched is looked
 * up in the cache (waiting a little for the server's last index writes): warm succeeds only
 * when it is all there. On a terminal a status line shows blobs and bytes as they arrive;
 * otherwise (logs, CI) each blob gets a plain line; --json prints one summary. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proxy/app.h"
#include "proxy/cli_cache.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"
#include "proxy/warm.h"

#define MAX_PLATFORMS 32 /* the message in parse_args says so */
#define CHECK_WAIT_MS 30000

/* What the user sees while warm runs. */
typedef struct view {
    bool tty, json;
    char ref[600];
    char platforms[512];
    size_t nblobs, ndone;
    uint64_t total, got;
    int64_t t0_ms;
    uv_timer_t tick;
    json_t *results;
    bool done;
    unsigned failed;
} view_t;

static void draw(view_t *v)
{
    char got[16], total[16], rate[16];
    double s = (double)(time_mono_ms() - v->t0_ms) / 1000.0;
    cli_size(v->got, got, sizeof got);
    cli_size(v->total, total, sizeof total);
    cli_size(s > 0.05 ? (uint64_t)((double)v->got / s) : 0, rate, sizeof rate);
    printf("\r\033[K%s: %zu/%zu blobs  %s / %s  %s/s", v->ref, v->ndone, v->nblobs, got, total,
           rate);
    fflush(stdout);
}

static void on_tick(uv_timer_t *t)
{
    view_t *v = t->data;
    if (v->ref[0])
        draw(v);
}

static void ev_start(void *arg, const char *ref, const char *platforms, size_t nblobs,
                     uint64_t bytes)
{
    view_t *v = arg;
    snprintf(v->ref, sizeof v->ref, "%s", ref);
    snprintf(v->platforms, sizeof v->platforms, "%s", platforms);
    v->nblobs = nblobs;
    v->ndone = 0;
    v->total = bytes;
    v->got = 0;
    v->t0_ms = time_mono_ms();
    if (v->json)
        return;
    char size[16];
    cli_size(bytes, size, sizeof size);
    if (v->tty)
        draw(v);
    else
        printf("%s: %zu blobs, %s%s%s\n", ref, nblobs, size, platforms[0] ? ", " : "", platforms);
}

static void ev_bytes(void *arg, uint64_t n)
{
    view_t *v = arg;
    v->got += n;
}

static void ev_blob(void *arg, const char *digest, uint64_t size, int status)
{
    view_t *v = arg;
    v->ndone++;
    if (v->json || v->tty)
        return;
    char sz[16];
    cli_size(size, sz, sizeof sz);
    const char *colon = strchr(digest, ':');
    printf("  %.12s %s %s%s\n", colon ? colon + 1 : digest, sz, status ? "failed: " : "done",
           status ? err_str(status) : "");
    fflush(stdout);
}

static void ev_done(void *arg, const char *ref, const char *digest, int status, const char *why)
{
    view_t *v = arg;
    double s = (double)(time_mono_ms() - v->t0_ms) / 1000.0;
    bool started = strcmp(v->ref, ref) == 0;
    json_array_append_new(v->results,
                          json_pack("{s:s, s:s, s:s, s:I, s:I, s:b, s:s?}", "ref", ref, "digest",
                                    digest, "platforms", started ? v->platforms : "", "blobs",
                                    (json_int_t)(started ? v->nblobs : 0), "bytes",
                                    (json_int_t)(started ? v->total : 0), "ok", status == 0,
                                    "error", status ? why : NULL));
    if (!v->json) {
        char size[16];
        cli_size(started ? v->total : 0, size, sizeof size);
        if (v->tty)
            printf("\r\033[K");
        if (status)
            printf("%s: FAILED: %s\n", ref, why);
        else
            printf("%s: done (%s), %zu blobs, %s in %.1fs\n", ref, digest, started ? v->nblobs : 0,
                   size, s);
        fflush(stdout);
    }
    v->ref[0] = '\0';
}

static void on_warm_done(void *arg, unsigned failed)
{
    view_t *v = arg;
    v->done = true;
    v->failed = failed;
}

/* ---- Where to pull through -------------------------------------------------------------------- */

/* The URL of a serving winch's plain listener as cfg describes it. */
static int server_url(const config_t *cfg, char *out, size_t len)
{
    if (!cfg->listen_enabled || cfg->listen_port == 0) {
        fprintf(stderr,
                "winch warm: a winch serves this cache, but its address is not in the "
                "configuration (%s); give --server URL\n",
                !cfg->listen_enabled ? "no plain listener" : "listen port 0");
        return 2;
    }
    char hp[128];
    cli_local_address(cfg->listen_host, cfg->listen_port, hp, sizeof hp);
    snprintf(out, len, "http://%s", hp);
    return 0;
}

/* Opens the cache: shared when a winch serves it (*own false), else as a server would, creating
 * it if needed (*own true: this process will serve the pulls). */
static int open_cache(cache_cmd_t *cmd, bool *own)
{
    const config_t *cfg = cmd->cfg;
    cache_opts_t co = {.loop = &cmd->loop, .dir = cfg->cache_dir, .map_size = cfg->index_map_size};
    char path[4200];
    snprintf(path, sizeof path, "%s/index/data.mdb", cfg->cache_dir);
    for (int attempt = 0; attempt < 3; attempt++) {
        *own = false;
        if (access(path, F_OK) == 0) {
            co.shared = true;
            int rc = cache_open(&cmd->cache, &co);
            if (rc < 0 || cache_server_running(cmd->cache))
                return rc;
            /* Nobody serves it: reopen it as its server. */
            cache_close(cmd->cache);
            cmd->cache = NULL;
        }
        co.shared = false;
        *own = true;
        int rc = cache_open(&cmd->cache, &co);
        if (rc != -EBUSY)
            return rc;
        /* A winch started serving it meanwhile: go through that one. */
    }
    return -EBUSY;
}

/* Starts the application in this process on 127.0.0.1:0. */
static int start_own(uv_loop_t *loop, config_t *cfg, cache_t *cache, app_t **app, char *url,
                     size_t len)
{
    char err[512], bound[96], tls_bound[96];
    char *host = strdup("127.0.0.1");
    if (!host)
        return 1;
    free(cfg->listen_host);
    cfg->listen_host = host;
    cfg->listen_port = 0;
    cfg->listen_enabled = true;
    cfg->tls_listen_enabled = false;
    /* Nothing but the pulls' listener: client groups' own listeners serve clients of a running
     * winch, not this one. */
    for (size_t i = 0; i < cfg->n_client_groups; i++) {
        free(cfg->client_groups[i].listen_host);
        cfg->client_groups[i].listen_host = NULL;
    }
    if (app_create(app, loop, cfg, cache, err, sizeof err) < 0 ||
        app_listen(*app, bound, tls_bound, sizeof bound, err, sizeof err) < 0) {
        fprintf(stderr, "winch warm: %s\n", err);
        return 1;
    }
    snprintf(url, len, "http://%s", bound);
    return 0;
}

static void noop_timer(uv_timer_t *t)
{
    (void)t;
}

/* Waits (running the loop) until every digest fetched is in the cache or CHECK_WAIT_MS pass;
 * returns how many are missing, printing them. */
static size_t check_cache(uv_loop_t *loop, cache_t *c, const warm_t *w, json_t *missing)
{
    const char *const *d;
    size_t n = warm_fetched(w, &d);
    int64_t end = time_mono_ms() + CHECK_WAIT_MS;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    size_t left;
    for (;;) {
        left = 0;
        for (size_t i = 0; i < n; i++) {
            cache_entry_t e;
            if (cache_lookup(c, d[i], &e) != 0)
                left++;
        }
        if (left == 0 || time_mono_ms() > end)
            break;
        /* The server's last index writes land shortly after the last bytes went out. */
        uv_timer_start(&t, noop_timer, 100, 0);
        while (uv_is_active((uv_handle_t *)&t))
            uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    for (size_t i = 0; i < n && left; i++) {
        cache_entry_t e;
        if (cache_lookup(c, d[i], &e) != 0)
            json_array_append_new(missing, json_string(d[i]));
    }
    return left;
}

/* ---- The command ------------------------------------------------------------------------------ */

typedef struct warm_args {
    char **refs;
    size_t nrefs;
    platform_t plats[MAX_PLATFORMS];
    size_t nplats;
    bool all;
    const char *server;
} warm_args_t;

static int parse_args(const cli_common_t *o, warm_args_t *a)
{
    a->refs = o->argv + 1;
    for (int i = 1; i < o->argc; i++) {
        const char *s = o->argv[i], *val = NULL;
        if ((strcmp(s, "--platform") == 0 || strcmp(s, "--server") == 0) && i + 1 < o->argc)
            val = o->argv[++i];
        else if (strncmp(s, "--platform=", 11) == 0 || strncmp(s, "--server=", 9) == 0)
            val = strchr(s, '=') + 1;
        else if (s[0] == '-')
            return 2;
        if (!val) {
            a->refs[a->nrefs++] = o->argv[i];
            continue;
        }
        if (strncmp(s, "--server", 8) == 0) {
            a->server = val;
        } else if (strcmp(val, "all") == 0) {
            a->all = true;
        } else {
            const char *why = "more than 32 platforms";
            if (!strchr(val, '/'))
                why = "no OS"; /* platform_parse would take a lone word as linux/ARCH */
            if (a->nplats == MAX_PLATFORMS || !strchr(val, '/') ||
                platform_parse(val, strlen(val), &a->plats[a->nplats++], &why) < 0) {
                fprintf(stderr,
                        "winch warm: invalid platform \"%s\": %s (OS/ARCH[/VARIANT] or all)\n", val,
                        why);
                return 2;
            }
        }
    }
    return a->nrefs ? 0 : 2;
}

static void print_summary(view_t *v, size_t fetched, json_t *missing, const char *via)
{
    if (v->json) {
        json_t *j = json_pack("{s:O, s:I, s:O, s:s}", "images", v->results, "fetched",
                              (json_int_t)fetched, "not_cached", missing, "via", via);
        cache_cmd_json(j);
        return;
    }
    if (json_array_size(missing))
        fprintf(stderr,
                "winch warm: %zu item(s) were pulled but are not in the cache (the disk full, "
                "or evicted at once: see winch df)\n",
                json_array_size(missing));
}

int cli_warm(int argc, char **argv)
{
    cache_cmd_t cmd = {0};
    warm_args_t a = {0};
    view_t v = {.results = json_array()};
    json_t *missing = json_array();
    app_t *app = NULL;
    warm_t *w = NULL;
    char url[600], err[600];
    int rc = 1;
    bool own = false;
    memset(&cmd, 0, sizeof cmd);
    cmd.rest = calloc((size_t)argc + 1, sizeof *cmd.rest);
    if (!cmd.rest || (rc = cli_common_parse(argc, argv, cmd.rest, &cmd.o)))
        goto out_early;
    if ((rc = parse_args(&cmd.o, &a)) == 2) {
        usage_error("warm");
        goto out_early;
    }
    if ((rc = cli_load_config(&cmd.o, &cmd.cfg)))
        goto out_early;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&cmd.loop);
    cmd.loop_ok = true;
    v.json = cmd.o.json;
    v.tty = !v.json && isatty(STDOUT_FILENO);
    if (a.server) {
        snprintf(url, sizeof url, "%s", a.server);
        /* The cache checked afterwards is this configuration's, if there is one here. */
        cache_opts_t co = {.loop = &cmd.loop,
                           .dir = cmd.cfg->cache_dir,
                           .map_size = cmd.cfg->index_map_size,
                           .shared = true};
        if (cache_open(&cmd.cache, &co) < 0)
            cmd.cache = NULL;
    } else {
        int e = open_cache(&cmd, &own);
        if (e < 0) {
            fprintf(stderr, "winch warm: cache %s: %s\n", cmd.cfg->cache_dir, err_str(e));
            rc = 1;
            goto out;
        }
        if (own) {
            log_set_level(WLOG_WARN);
            if ((rc = start_own(&cmd.loop, cmd.cfg, cmd.cache, &app, url, sizeof url)))
                goto out;
        } else if ((rc = server_url(cmd.cfg, url, sizeof url))) {
            goto out;
        }
    }
    warm_opts_t wo = {
        .loop = &cmd.loop,
        .cfg = cmd.cfg,
        .server = url,
        .refs = a.refs,
        .nrefs = a.nrefs,
        .platforms = a.plats,
        .nplatforms = a.nplats,
        .all_platforms = a.all,
        .ev = {.start = ev_start, .bytes = ev_bytes, .blob = ev_blob, .done = ev_done, .arg = &v},
    };
    if (warm_start(&w, &wo, on_warm_done, &v, err, sizeof err) < 0) {
        fprintf(stderr, "winch warm: %s\n", err);
        rc = 2;
        goto out;
    }
    if (!v.json && !v.tty)
        printf("winch warm: pulling through %s%s\n", own ? "its own winch at " : "", url);
    uv_timer_init(&cmd.loop, &v.tick);
    v.tick.data = &v;
    if (v.tty)
        uv_timer_start(&v.tick, on_tick, 200, 200);
    while (!v.done)
        uv_run(&cmd.loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&v.tick, NULL);
    const char *const *d;
    size_t fetched = warm_fetched(w, &d);
    if (cmd.cache)
        check_cache(&cmd.loop, cmd.cache, w, missing);
    print_summary(&v, fetched, missing, own ? "own" : url);
    rc = v.failed || json_array_size(missing) ? 1 : 0;
out:
    warm_free(w);
    if (app) {
        app_shutdown(app);
        uv_run(&cmd.loop, UV_RUN_DEFAULT);
        app_destroy(app);
    }
    cache_cmd_close(&cmd);
    json_decref(v.results);
    json_decref(missing);
    return rc;
out_early:
    json_decref(v.results);
    json_decref(missing);
    config_free(cmd.cfg);
    free(cmd.rest);
    return rc ? rc : 1;
}
