#include "proxy/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "proxy/usage.h"

#ifndef WINCH_VERSION
#define WINCH_VERSION "0.1.0"
#endif
#ifndef WINCH_COMMIT
#define WINCH_COMMIT "unknown"
#endif
const char cli_version[] = WINCH_VERSION;
const char cli_commit[] = WINCH_COMMIT;

/* Reads "--name VALUE" or "--name=VALUE" at argv[*i]; true when argv[*i] is that flag. */
static bool flag_value(int argc, char **argv, int *i, const char *name, const char **value,
                       bool *missing)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return false;
    if (a[n] == '=') {
        *value = a + n + 1;
        return true;
    }
    if (a[n] != '\0')
        return false;
    if (*i + 1 >= argc) {
        *missing = true;
        return true;
    }
    *value = argv[++*i];
    return true;
}

int cli_common_parse(int argc, char **argv, char **rest, cli_common_t *out)
{
    memset(out, 0, sizeof *out);
    out->argv = rest;
    rest[out->argc++] = argv[0];
    for (int i = 1; i < argc; i++) {
        bool missing = false;
        if (flag_value(argc, argv, &i, "--config", &out->config, &missing) ||
            flag_value(argc, argv, &i, "--cache-dir", &out->cache_dir, &missing)) {
            if (missing) {
                fprintf(stderr, "winch %s: %s needs a value\n", argv[0], argv[i]);
                return 2;
            }
            continue;
        }
        if (strcmp(argv[i], "--json") == 0) {
            out->json = true;
            continue;
        }
        /* Asked for help, a command answers with the usage, before it opens anything (a cache
         * that is not there must not hide the answer). */
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage_print_cmd(stdout, argv[0]);
            exit(0);
        }
        rest[out->argc++] = argv[i];
    }
    return 0;
}

int cli_load_config(const cli_common_t *o, config_t **cfg)
{
    char *args[4];
    int n = 0;
    if (o->config) {
        args[n++] = "--config";
        args[n++] = (char *)o->config;
    }
    if (o->cache_dir) {
        args[n++] = "--cache-dir";
        args[n++] = (char *)o->cache_dir;
    }
    char err[512];
    if (config_load(cfg, n, args, err, sizeof err) < 0) {
        fprintf(stderr, "winch: %s\n", err);
        return 2;
    }
    return 0;
}

int cli_open_cache(uv_loop_t *loop, const config_t *cfg, cache_t **out)
{
    cache_opts_t co = {
        .loop = loop, .dir = cfg->cache_dir, .map_size = cfg->index_map_size, .shared = true};
    int rc = cache_open(out, &co);
    if (rc < 0) {
        fprintf(stderr, "winch: cache %s: %s\n", cfg->cache_dir,
                rc == -ENOENT ? "no cache there (run winch serve with it first)" : err_str(rc));
        return 1;
    }
    return 0;
}

void cli_size(uint64_t bytes, char *out, size_t len)
{
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1000.0 && u + 1 < sizeof units / sizeof units[0]) {
        v /= 1000.0;
        u++;
    }
    /* docker's units.HumanSize: %.4g, so three or four significant digits. */
    snprintf(out, len, "%.4g%s", v, units[u]);
}

void cli_ago(int64_t then_ms, int64_t now_ms, char *out, size_t len)
{
    if (then_ms <= 0) {
        snprintf(out, len, "never");
        return;
    }
    int64_t s = (now_ms - then_ms) / 1000;
    if (s < 0)
        s = 0;
    /* docker's units.HumanDuration, the thresholds and words it uses. */
    if (s < 1)
        snprintf(out, len, "Less than a second ago");
    else if (s == 1)
        snprintf(out, len, "1 second ago");
    else if (s < 60)
        snprintf(out, len, "%lld seconds ago", (long long)s);
    else if (s / 60 == 1)
        snprintf(out, len, "About a minute ago");
    else if (s / 60 < 60)
        snprintf(out, len, "%lld minutes ago", (long long)(s / 60));
    else if (s / 3600 == 1)
        snprintf(out, len, "About an hour ago");
    else if (s / 3600 < 48)
        snprintf(out, len, "%lld hours ago", (long long)(s / 3600));
    else if (s / 3600 < 24 * 7 * 2)
        snprintf(out, len, "%lld days ago", (long long)(s / 86400));
    else if (s / 3600 < 24 * 30 * 2)
        snprintf(out, len, "%lld weeks ago", (long long)(s / 86400 / 7));
    else if (s / 3600 < 24 * 365 * 2)
        snprintf(out, len, "%lld months ago", (long long)(s / 86400 / 30));
    else
        snprintf(out, len, "%lld years ago", (long long)(s / 86400 / 365));
}

struct cli_table {
    size_t ncols, nrows, cap;
    char **cells; /* nrows * ncols, row-major; row 0 is the header */
};

static int table_push(cli_table_t *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **nc = realloc(t->cells, cap * t->ncols * sizeof *nc);
        if (!nc)
            return -ENOMEM;
        t->cells = nc;
        t->cap = cap;
    }
    char **row = t->cells + t->nrows * t->ncols;
    for (size_t i = 0; i < t->ncols; i++) {
        row[i] = strdup(cells[i] ? cells[i] : "");
        if (!row[i]) {
            while (i--)
                free(row[i]);
            return -ENOMEM;
        }
    }
    t->nrows++;
    return 0;
}

int cli_table_new(cli_table_t **out, size_t ncols, const char *const *headers)
{
    if (ncols == 0 || ncols > CLI_TABLE_COLS)
        return WE_INVALID;
    cli_table_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->ncols = ncols;
    int rc = table_push(t, headers);
    if (rc) {
        cli_table_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int cli_table_add(cli_table_t *t, const char *const *cells)
{
    return table_push(t, cells);
}

void cli_table_print(cli_table_t *t)
{
    size_t width[CLI_TABLE_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t w = strlen(t->cells[r * t->ncols + c]);
            if (w > width[c])
                width[c] = w;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            if (c + 1 == t->ncols)
                printf("%s\n", cell);
            else
                printf("%-*s   ", (int)width[c], cell);
        }
    }
    cli_table_free(t);
}

void cli_table_free(cli_table_t *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

void cli_local_address(const char *host, uint16_t port, char *out, size_t len)
{
    if (strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        host = "::1";
    bool v6 = strchr(host, ':') != NULL;
    snprintf(out, len, "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "", (unsigned)port);
}
