/* `winch status [--config FILE | --admin HOST:PORT] [--json]`: asks a running winch's admin
 * listener for GET /_winch/status.json (status_json.c) and prints it as tables, as docker
 * prints things, or the JSON itself. Everything in the answer is the server's: it is parsed
 * with a bound on its size, every string is stripped of control bytes before it reaches the
 * terminal, and a missing or mistyped field prints as "-", never as a crash. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/cli_commands.h"
#include "proxy/cli_http.h"
#include "proxy/usage.h"

#define STATUS_TIMEOUT_MS 5000
#define STATUS_BODY_MAX ((size_t)1 << 20)

/* Where the admin listener is: --admin, else the configuration's admin_listen (a wildcard
 * address reached on loopback). Returns 0, or the exit status after saying why. */
static int admin_address(const cli_common_t *o, const char *admin, char *out, size_t len)
{
    if (admin) {
        snprintf(out, len, "%s", admin);
        return 0;
    }
    config_t *cfg = NULL;
    int rc = cli_load_config(o, &cfg);
    if (rc)
        return rc;
    if (!cfg->admin_listen_enabled || cfg->admin_listen_port == 0) {
        fprintf(stderr, "winch status: %s (admin_listen in %s); give --admin HOST:PORT\n",
                cfg->admin_listen_enabled ? "the admin listener's port is 0 in the configuration"
                                          : "no admin listener is configured",
                o->config ? o->config : "the configuration");
        config_free(cfg);
        return 1;
    }
    cli_local_address(cfg->admin_listen_host, cfg->admin_listen_port, out, len);
    config_free(cfg);
    return 0;
}

/* ---- Reading the answer --------------------------------------------------------------------- */

/* o[path] where path is "a.b.c"; NULL when any step is missing. */
static json_t *at(json_t *o, const char *path)
{
    char key[64];
    while (o && *path) {
        size_t n = strcspn(path, ".");
        snprintf(key, sizeof key, "%.*s", (int)n, path);
        o = json_object_get(o, key);
        path += n + (path[n] == '.');
    }
    return o;
}

/* A number as text: bytes docker-style, or a count; "-" when absent or not a number. */
static const char *num(json_t *o, const char *path, bool bytes, char *buf, size_t len)
{
    json_t *v = at(o, path);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return "-";
    if (bytes)
        cli_size((uint64_t)json_integer_value(v), buf, len);
    else
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    return buf;
}

/* A string from the server, printable: control bytes become '?', cut to len - 1. */
static const char *str(json_t *o, const char *path, char *buf, size_t len)
{
    const char *s = json_string_value(at(o, path));
    if (!s)
        return "-";
    size_t i = 0;
    for (; s[i] && i + 1 < len; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    buf[i] = '\0';
    return buf;
}

/* ---- Printing ----------------------------------------------------------------------------- */

static void print_summary(json_t *j, const char *where)
{
    char a[64], b[64], c[64], d[64], e[64], f[64], g[64];
    long long up = json_integer_value(at(j, "uptime_s"));
    printf("winch %s (commit %s) at %s, up %lldd %02lld:%02lld:%02lld\n\n",
           str(j, "version", a, sizeof a), str(j, "commit", b, sizeof b), where, up / 86400,
           up / 3600 % 24, up / 60 % 60, up % 60);
    json_t *ratio = at(j, "requests.hit_ratio");
    char hit[96] = "-";
    if (json_is_number(ratio))
        snprintf(hit, sizeof hit, "%.1f%% (%s of %s)", json_number_value(ratio) * 100,
                 num(j, "requests.from_cache", false, c, sizeof c),
                 num(j, "requests.cacheable", false, d, sizeof d));
    static const char *const h1[] = {"REQUESTS",         "HIT RATIO",        "FROM CACHE",
                                     "FROM UPSTREAM",    "FETCHED UPSTREAM", "CONNECTIONS",
                                     "FETCHES IN FLIGHT"};
    cli_table_t *t;
    if (cli_table_new(&t, 7, h1) < 0)
        return;
    const char *row[] = {num(j, "requests.total", false, a, sizeof a),
                         hit,
                         num(j, "bytes.served_from_cache", true, b, sizeof b),
                         num(j, "bytes.served_from_upstream", true, e, sizeof e),
                         num(j, "bytes.fetched_from_upstream", true, f, sizeof f),
                         num(j, "connections", false, g, sizeof g),
                         num(j, "fetches_in_flight", false, c, sizeof c)};
    cli_table_add(t, row);
    cli_table_print(t);
}

static void print_upstreams(json_t *j)
{
    static const char *const h[] = {"UPSTREAM", "STATE", "FAILURES", "RATE-LIMIT REMAINING",
                                    "QUEUED"};
    cli_table_t *t;
    if (cli_table_new(&t, 5, h) < 0)
        return;
    json_t *ups = at(j, "upstreams");
    for (size_t i = 0; i < json_array_size(ups); i++) {
        json_t *u = json_array_get(ups, i);
        char a[256], b[16], c[32], d[32], e[32];
        const char *row[] = {str(u, "name", a, sizeof a), str(u, "state", b, sizeof b),
                             num(u, "consecutive_failures", false, c, sizeof c),
                             num(u, "ratelimit_remaining", false, d, sizeof d),
                             num(u, "queued", false, e, sizeof e)};
        cli_table_add(t, row);
    }
    putchar('\n');
    cli_table_print(t);
}

static void print_cache_and_fills(json_t *j)
{
    static const char *const h[] = {"CACHE SIZE",    "MAX SIZE", "EVICTED",
                                    "EVICTED BYTES", "FILLS",    "CLIENTS WAITING"};
    char a[32], b[32], c[32], d[32], e[32], f[32];
    cli_table_t *t;
    if (cli_table_new(&t, 6, h) < 0)
        return;
    const char *row[] = {num(j, "cache.size_bytes", true, a, sizeof a),
                         num(j, "cache.max_bytes", true, b, sizeof b),
                         num(j, "cache.evicted_items", false, c, sizeof c),
                         num(j, "cache.evicted_bytes", true, d, sizeof d),
                         num(j, "fills.count", false, e, sizeof e),
                         num(j, "fills.waiters", false, f, sizeof f)};
    cli_table_add(t, row);
    putchar('\n');
    cli_table_print(t);
    json_t *items = at(j, "fills.items");
    if (json_array_size(items) == 0)
        return;
    static const char *const hf[] = {"FILLING", "RECEIVED", "SIZE", "CLIENTS"};
    if (cli_table_new(&t, 4, hf) < 0)
        return;
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *x = json_array_get(items, i);
        char u[256], r[256], dg[160], blob[700], got[32], size[32], n[32];
        snprintf(blob, sizeof blob, "%s/%s@%s", str(x, "upstream", u, sizeof u),
                 str(x, "repository", r, sizeof r), str(x, "digest", dg, sizeof dg));
        const char *row2[] = {blob, num(x, "received", true, got, sizeof got),
                              num(x, "size", true, size, sizeof size),
                              num(x, "waiters", false, n, sizeof n)};
        cli_table_add(t, row2);
    }
    putchar('\n');
    cli_table_print(t);
}

static void print_top(json_t *j)
{
    json_t *imgs = at(j, "top_images.images");
    if (json_array_size(imgs) == 0)
        return;
    bool approx = json_is_true(at(j, "top_images.approximate"));
    static const char *const h[] = {"TOP IMAGES", "BYTES SERVED", "AT MOST HIGH BY"};
    cli_table_t *t;
    if (cli_table_new(&t, approx ? 3 : 2, h) < 0)
        return;
    for (size_t i = 0; i < json_array_size(imgs); i++) {
        json_t *x = json_array_get(imgs, i);
        char a[600], b[32], c[32];
        const char *row[] = {str(x, "image", a, sizeof a), num(x, "bytes", true, b, sizeof b),
                             num(x, "overcount_max", true, c, sizeof c)};
        cli_table_add(t, row);
    }
    putchar('\n');
    cli_table_print(t);
    if (approx)
        printf("(approximate: a repository that replaced another in the bounded table starts "
               "from its count)\n");
}

/* ---- The command ---------------------------------------------------------------------------- */

/* --admin HOST:PORT out of o's remaining arguments. Returns 0, or 2 after the usage. */
static int parse_admin(cli_common_t *o, const char **admin)
{
    for (int i = 1; i < o->argc; i++) {
        const char *a = o->argv[i];
        if (strcmp(a, "--admin") == 0 && i + 1 < o->argc) {
            *admin = o->argv[++i];
        } else if (strncmp(a, "--admin=", 8) == 0) {
            *admin = a + 8;
        } else {
            fprintf(stderr, "winch status: %s %s\n",
                    a[0] == '-' ? "unknown option" : "unexpected argument", a);
            usage_error("status");
            return 2;
        }
    }
    return 0;
}

int cli_status(int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    cli_http_resp_t *resp = calloc(1, sizeof *resp);
    cli_common_t o;
    const char *admin = NULL;
    char where[300], err[256];
    json_t *j = NULL;
    int rc = 1;
    if (!rest || !resp) {
        fprintf(stderr, "winch status: out of memory\n");
        goto out;
    }
    if ((rc = cli_common_parse(argc, argv, rest, &o)) || (rc = parse_admin(&o, &admin)) ||
        (rc = admin_address(&o, admin, where, sizeof where)))
        goto out;
    rc = 1;
    bool refused;
    if (cli_http_request(where, "GET", "/_winch/status.json", "Accept: application/json\r\n",
                         STATUS_TIMEOUT_MS, STATUS_BODY_MAX, resp, &refused, err, sizeof err) < 0) {
        fprintf(stderr, "winch status: the admin listener at %s: %s\n", where, err);
        goto out;
    }
    if (resp->status != 200) {
        fprintf(stderr,
                "winch status: the admin listener at %s answered %d (not a winch admin "
                "listener, or a winch without status.json)\n",
                where, resp->status);
        goto out;
    }
    json_error_t jerr;
    j = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(j) || !json_is_string(at(j, "version")) ||
        !json_is_object(at(j, "requests"))) {
        fprintf(stderr, "winch status: the answer from %s is not a winch status%s%s\n", where,
                j ? "" : ": ", j ? "" : jerr.text);
        goto out;
    }
    if (o.json) {
        char *text = json_dumps(j, JSON_INDENT(2) | JSON_ENSURE_ASCII);
        if (text)
            printf("%s\n", text);
        free(text);
    } else {
        print_summary(j, where);
        print_upstreams(j);
        print_cache_and_fills(j);
        print_top(j);
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    json_decref(j);
    cli_http_resp_free(resp);
    free(resp);
    free(rest);
    return rc;
}
