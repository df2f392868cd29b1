/* Configuration: defaults, then the JSON file (config_json.c), then flags (config_flags.c),
 * each validated as it is applied. This file holds the config object: its defaults, the
 * setters both sources share, the checks that need every field, and the public lookups.
 *
 * Every value is checked here once, so the rest of winch can trust a config_t. Errors are one
 * line, "ORIGIN: FIELD: what is wrong", where ORIGIN is the file (or the flag) and FIELD the
 * JSON path ("upstreams[1].url"). Values are echoed only when they cannot carry secrets
 * (never a URL, which may hold user:password), and always through diag_quote() or
 * diag_printable(), so a hostile or broken value can never split the line or fill the
 * terminal with control bytes.
 *
 * Files named by the configuration (TLS certificate and key, CA bundles, password files) are
 * checked for readability here, so a typo stops winch at start with the field's name rather
 * than failing every connection later.
 */
#include "config/config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "config/internal.h"

#define KIB 1024ull
#define MIB (1024ull * 1024ull)
#define GIB (1024ull * 1024ull * 1024ull)
#define TIB (1024ull * GIB)

/* ---------------------------------------------------------------------------------------- */
/* Messages.                                                                                 */

int diag_fail(const diag_t *d, const char *field, const char *fmt, ...)
{
    if (!d->buf || d->cap == 0)
        return WE_CONFIG;
    int n;
    if (field)
        n = snprintf(d->buf, d->cap, "%s: %s: ", d->origin, field);
    else
        n = snprintf(d->buf, d->cap, "%s: ", d->origin);
    if (n < 0)
        n = 0;
    if ((size_t)n < d->cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->buf + n, d->cap - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return WE_CONFIG;
}

int diag_oom(const diag_t *d)
{
    diag_fail(d, NULL, "out of memory");
    return -ENOMEM;
}

/* Copies s[0..n) into tmp[cap] as printable ASCII (other bytes become '?'), inside quotes
 * when quotes is set, cutting long values with "...". */
static const char *printable(char *tmp, size_t cap, const char *s, size_t n, bool quotes)
{
    size_t o = 0;
    if (cap < 8) {
        if (cap)
            tmp[0] = '\0';
        return tmp;
    }
    if (quotes)
        tmp[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (o + 5 >= cap) {
            memcpy(tmp + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char ch = (unsigned char)s[i];
        tmp[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (quotes)
        tmp[o++] = '"';
    tmp[o] = '\0';
    return tmp;
}

const char *diag_quote(char *tmp, size_t cap, const char *s, size_t n)
{
    return printable(tmp, cap, s, n, true);
}

const char *diag_printable(char *tmp, size_t cap, const char *s)
{
    return printable(tmp, cap, s, strlen(s), false);
}

/* ---------------------------------------------------------------------------------------- */
/* The config object.                                                                      */

static const int_field_t int_fields[] = {
    {"upstream_connect_timeout_ms", offsetof(config_t, upstream_connect_timeout_ms), false, 1,
     3600000, 5000},
    {"upstream_response_timeout_ms", offsetof(config_t, upstream_response_timeout_ms), false, 1,
     3600000, 15000},
    {"upstream_idle_timeout_ms", offsetof(config_t, upstream_idle_timeout_ms), false, 1, 3600000,
     30000},
    {"upstream_keepalive_ms", offsetof(config_t, upstream_keepalive_ms), false, 1, 3600000, 30000},
    {"upstream_max_conns", offsetof(config_t, upstream_max_conns), false, 1, 1024, 32},
    {"upstream_max_redirects", offsetof(config_t, upstream_max_redirects), false, 0, 20, 5},
    /* Issue 8: the upstream wait queue, the buffered fetch deadline, negative caching. */
    {"upstream_max_queue", offsetof(config_t, upstream_max_queue), false, 1, 100000, 256},
    {"upstream_queue_timeout_ms", offsetof(config_t, upstream_queue_timeout_ms), false, 1, 3600000,
     10000},
    {"upstream_fetch_deadline_ms", offsetof(config_t, upstream_fetch_deadline_ms), false, 1,
     3600000, 60000},
    {"negative_ttl_s", offsetof(config_t, negative_ttl_s), false, 0, 3600, 10},
    /* Docker clients send their head at once; a socket that says nothing for 10 s is an idle
     * slot holder, cheap to drop (nginx's 60 s suits slower networks than a registry's). */
    {"client_header_timeout_ms", offsetof(config_t, client_header_timeout_ms), false, 1, 3600000,
     10000},
    {"client_idle_timeout_ms", offsetof(config_t, client_idle_timeout_ms), false, 1, 3600000,
     120000},
    {"max_connections", offsetof(config_t, max_connections), false, 1, 1000000, 4096},
    {"max_connections_per_client", offsetof(config_t, max_connections_per_client), false, 0,
     1000000, 256},
    {"max_header_bytes", offsetof(config_t, max_header_bytes), false, KIB, MIB, 32 * KIB},
    {"tag_ttl_s", offsetof(config_t, tag_ttl_s), false, 0, 31536000, 300},
    {"max_manifest_bytes", offsetof(config_t, max_manifest_bytes), false, KIB, 64 * MIB, 4 * MIB},
    {"max_tags_list_bytes", offsetof(config_t, max_tags_list_bytes), false, KIB, 256 * MIB,
     8 * MIB},
    {"range_verify_max_bytes", offsetof(config_t, range_verify_max_bytes), true, 0, TIB, 64 * MIB},
    {"max_blob_bytes", offsetof(config_t, max_blob_bytes), true, MIB, 64 * TIB, 64 * GIB},
    {"tag_revalidate_wait_ms", offsetof(config_t, tag_revalidate_wait_ms), false, 0, 3600000, 1000},
    {"upstream_failure_threshold", offsetof(config_t, upstream_failure_threshold), false, 0, 1000,
     5},
    {"upstream_probe_interval_ms", offsetof(config_t, upstream_probe_interval_ms), false, 100,
     3600000, 5000},
    /* LMDB reserves the map as address space only; 1 TiB is far beyond any index. */
    {"index_map_size", offsetof(config_t, index_map_size), true, MIB, TIB, 4 * GIB},
    /* Issue 11: prefetch of the platform manifests, configs and layers of an index. */
    {"prefetch_max_concurrent", offsetof(config_t, prefetch_max_concurrent), false, 1, 1024, 8},
    {"prefetch_max_per_upstream", offsetof(config_t, prefetch_max_per_upstream), false, 1, 1024, 4},
    {"prefetch_max_queue", offsetof(config_t, prefetch_max_queue), false, 1, 1000000, 4096},
};

const int_field_t *config_int_field(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(int_fields); i++)
        if (strcmp(name, int_fields[i].name) == 0)
            return &int_fields[i];
    return NULL;
}

const int_field_t *config_int_field_at(size_t i)
{
    return i < ARRAY_SIZE(int_fields) ? &int_fields[i] : NULL;
}

void config_int_field_set(config_t *c, const int_field_t *f, uint64_t v)
{
    char *base = (char *)c + f->off;
    if (f->wide)
        *(uint64_t *)(void *)base = v;
    else
        *(uint32_t *)(void *)base = (uint32_t)v;
}

void config_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

static void free_secret(char *s)
{
    if (s) {
        config_wipe(s, strlen(s));
        free(s);
    }
}

static void upstream_clear(config_upstream_t *u)
{
    free(u->name);
    free(u->url);
    free(u->host);
    free(u->base_path);
    free(u->ca_file);
    free(u->username);
    free_secret(u->password);
    free(u->password_file);
    free(u->password_env);
    config_allow_hosts_free(u);
    memset(u, 0, sizeof *u);
}

void config_upstreams_clear(config_t *c)
{
    for (size_t i = 0; i < c->n_upstreams; i++)
        upstream_clear(&c->upstreams[i]);
    c->n_upstreams = 0;
}

void config_free(config_t *c)
{
    if (!c)
        return;
    config_upstreams_clear(c);
    config_policy_free(c);
    config_platforms_free(c);
    free(c->listen_host);
    free(c->tls_listen_host);
    free(c->admin_listen_host);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->cache_dir);
    free(c->log_level);
    free(c->trusted_proxies);
    config_retention_free(c);
    config_auth_free(c->auth);
    free(c);
}

const config_upstream_t *config_upstream_find(const config_t *c, const char *name, size_t len)
{
    if (!c || !name)
        return NULL;
    if (addr_is_dockerhub_alias(name, len)) {
        name = "docker.io";
        len = strlen(name);
    }
    for (size_t i = 0; i < c->n_upstreams; i++)
        if (ascii_eq_nocase(name, len, c->upstreams[i].name))
            return &c->upstreams[i];
    return NULL;
}

/* Validates NAME and URL and appends the upstream. `field` is the JSON path of the upstream
 * ("upstreams[1]") or NULL for a flag; messages then say "name"/"url". */
int config_upstream_add(config_t *c, const diag_t *d, const char *field, const char *name,
                        const char *url)
{
    char fname[64], furl[64], q[80];
    snprintf(fname, sizeof fname, "%s%sname", field ? field : "", field ? "." : "");
    snprintf(furl, sizeof furl, "%s%surl", field ? field : "", field ? "." : "");
    size_t nlen = strlen(name);

    if (c->n_upstreams >= CONFIG_MAX_UPSTREAMS)
        return diag_fail(d, field, "at most %d upstreams", CONFIG_MAX_UPSTREAMS);
    hostport_t hp;
    const char *why = nlen ? addr_parse_hostport(name, nlen, &hp) : "must not be empty";
    if (!why && hp.has_port && hp.port == 0)
        why = "port must be a number 1..65535";
    if (why)
        return diag_fail(d, fname, "%s is not a registry host[:port]: %s",
                         diag_quote(q, sizeof q, name, nlen), why);
    url_parts_t up;
    why = addr_parse_url(url, &up);
    if (why)
        return diag_fail(d, furl, "%s", why);

    char *lname = addr_is_dockerhub_alias(name, nlen) ? dup_n("docker.io", 9) : dup_n(name, nlen);
    if (!lname)
        return diag_oom(d);
    for (char *p = lname; *p; p++)
        *p = ascii_lower(*p);
    for (size_t i = 0; i < c->n_upstreams; i++) {
        if (strcmp(c->upstreams[i].name, lname) == 0) {
            diag_fail(d, fname, "duplicate upstream %s",
                      diag_quote(q, sizeof q, lname, strlen(lname)));
            free(lname);
            return WE_CONFIG;
        }
    }
    config_upstream_t *u = &c->upstreams[c->n_upstreams];
    memset(u, 0, sizeof *u);
    u->name = lname;
    u->url = strdup(url);
    u->host = dup_n(up.host, up.hlen);
    u->base_path = dup_n(up.path, up.plen);
    if (!u->url || !u->host || !u->base_path)
        goto fail;
    /* Host names compare case-insensitively; one spelling keeps SNI, Host and logs uniform. */
    for (char *p = u->host; *p; p++)
        *p = ascii_lower(*p);
    u->tls = up.tls;
    u->port = up.port;
    u->dockerhub = strcmp(lname, "docker.io") == 0;
    c->n_upstreams++;
    return 0;
fail:
    upstream_clear(u);
    return diag_oom(d);
}

/* The listener binds without resolving names, so only IP literals are accepted. Port 0 asks
 * the kernel for a free port; winch logs the one it got (tests and benches use that). Writes
 * the host (owned) and port; "" is left to the callers (it turns a listener off). */
int config_parse_listen(const diag_t *d, const char *field, const char *s, char **host,
                        uint16_t *port)
{
    size_t n = strlen(s);
    hostport_t hp;
    const char *why = addr_parse_hostport(s, n, &hp);
    if (!why && !hp.has_port)
        why = "expected HOST:PORT, e.g. 0.0.0.0:5000 or [::1]:5000";
    if (!why && hp.kind == HOST_DNS)
        why = "host must be an IP address (IPv4, or IPv6 in brackets); names are not resolved";
    if (why)
        return diag_fail(d, field, "%s", why);
    char *h = dup_n(hp.host, hp.hlen);
    if (!h)
        return diag_oom(d);
    *host = h;
    *port = hp.port;
    return 0;
}

/* "listen": "" (or null) turns the plain listener off (a TLS-only winch). */
int config_set_listen(config_t *c, const diag_t *d, const char *field, const char *s)
{
    char *h = NULL;
    uint16_t port = 0;
    if (!s || s[0] == '\0') {
        c->listen_enabled = false;
        return 0;
    }
    int rc = config_parse_listen(d, field, s, &h, &port);
    if (rc < 0)
        return rc;
    free(c->listen_host);
    c->listen_host = h;
    c->listen_port = port;
    c->listen_enabled = true;
    return 0;
}

/* "tls_listen": "HOST:PORT" turns the TLS listener on; "" (or null) off. */
int config_set_tls_listen(config_t *c, const diag_t *d, const char *field, const char *s)
{
    char *h = NULL;
    uint16_t port = 0;
    if (!s || s[0] == '\0') {
        free(c->tls_listen_host);
        c->tls_listen_host = NULL;
        c->tls_listen_port = 0;
        c->tls_listen_enabled = false;
        return 0;
    }
    int rc = config_parse_listen(d, field, s, &h, &port);
    if (rc < 0)
        return rc;
    free(c->tls_listen_host);
    c->tls_listen_host = h;
    c->tls_listen_port = port;
    c->tls_listen_enabled = true;
    return 0;
}

/* A file winch will read later (a certificate, a key, a CA bundle): it must be a readable
 * regular file now. */
static int check_readable_file(const diag_t *d, const char *field, const char *path)
{
    size_t n = strlen(path);
    if (n == 0)
        return diag_fail(d, field, "must not be empty");
    if (n > PATH_MAX_LEN)
        return diag_fail(d, field, "longer than %d bytes", PATH_MAX_LEN);
    char shown[DIAG_PATH_CAP];
    diag_printable(shown, sizeof shown, path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return diag_fail(d, field, "cannot open %s: %s", shown, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0)
        rc = diag_fail(d, field, "cannot stat %s: %s", shown, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = diag_fail(d, field, "%s is not a regular file", shown);
    close(fd);
    return rc;
}

/* Sets *slot to a copy of path after checking it is readable. */
int config_set_file(const diag_t *d, const char *field, const char *path, char **slot)
{
    int rc = check_readable_file(d, field, path);
    if (rc < 0)
        return rc;
    char *p = strdup(path);
    if (!p)
        return diag_oom(d);
    free(*slot);
    *slot = p;
    return 0;
}

int config_set_cache_dir(config_t *c, const diag_t *d, const char *field, const char *s)
{
    size_t n = strlen(s);
    if (n == 0)
        return diag_fail(d, field, "must not be empty");
    if (n > PATH_MAX_LEN)
        return diag_fail(d, field, "longer than %d bytes", PATH_MAX_LEN);
    char *p = strdup(s);
    if (!p)
        return diag_oom(d);
    free(c->cache_dir);
    c->cache_dir = p;
    return 0;
}

int config_set_log_level(config_t *c, const diag_t *d, const char *field, const char *s)
{
    char q[80];
    if (log_level_parse(s) < 0)
        return diag_fail(d, field, "%s is not a log level (error, warn, info, debug)",
                         diag_quote(q, sizeof q, s, strlen(s)));
    char *p = strdup(s);
    if (!p)
        return diag_oom(d);
    free(c->log_level);
    c->log_level = p;
    return 0;
}

int config_defaults(config_t **out, const diag_t *d)
{
    config_t *c = calloc(1, sizeof *c);
    if (!c)
        return diag_oom(d);
    c->listen_enabled = true;
    c->listen_host = strdup("0.0.0.0");
    c->listen_port = 5000;
    c->cache_dir = strdup("./winch-cache");
    c->log_level = strdup("info");
    c->retention_low_watermark_pct = 90;
    c->fill_splice = true;
    memcpy(c->node_name, "winch", sizeof "winch");
    if (!c->listen_host || !c->cache_dir || !c->log_level)
        goto fail;
    for (size_t i = 0; i < ARRAY_SIZE(int_fields); i++)
        config_int_field_set(c, &int_fields[i], int_fields[i].def);
    int rc = config_upstream_add(c, d, NULL, "docker.io", "https://registry-1.docker.io");
    if (rc < 0) {
        config_free(c);
        return rc;
    }
    *out = c;
    return 0;
fail:
    config_free(c);
    return diag_oom(d);
}

/* Checks that need every field: run once, after the file and the flags. */
int config_check_whole(const config_t *c, const diag_t *d)
{
    if (!c->listen_enabled && !c->tls_listen_enabled)
        return diag_fail(d, "listen",
                         "no listener: listen is off (\"\") and tls_listen is not set");
    if (c->tls_listen_enabled) {
        if (!c->tls_cert)
            return diag_fail(d, "tls_cert", "missing: tls_listen needs tls_cert and tls_key");
        if (!c->tls_key)
            return diag_fail(d, "tls_key", "missing: tls_listen needs tls_cert and tls_key");
        if (c->listen_enabled && c->listen_port != 0 && c->listen_port == c->tls_listen_port &&
            strcmp(c->listen_host, c->tls_listen_host) == 0)
            return diag_fail(d, "tls_listen", "same address as listen");
    }
    int rc = config_admin_check(c, d);
    if (rc < 0)
        return rc;
    rc = config_policy_check(c, d);
    if (rc < 0)
        return rc;
    rc = config_auth_check_whole(c, d);
    return rc < 0 ? rc : config_platforms_check(c, d);
}
