/* Configuration: defaults, then the JSON file, then flags, each validated as it is applied.
 *
 * Every value is checked here once, so the rest of winch can trust a config_t. Errors are one
 * line, "ORIGIN: FIELD: what is wrong", where ORIGIN is the file (or the flag) and FIELD the
 * JSON path ("upstreams[1].url"). Values are echoed only when they cannot carry secrets
 * (never a URL, which may hold user:password), and always through quote(), so a hostile or
 * broken value can never split the line or fill the terminal with control bytes.
 *
 * Nothing here resolves a host name: the listener must be an IP literal, and upstream hosts are
 * only checked for syntax (the upstream client resolves them when it connects).
 *
 * Files named by the configuration (TLS certificate and key, CA bundles, password files) are
 * checked for readability here, so a typo stops winch at start with the field's name rather
 * than failing every connection later. Upstream passwords are read here too (from a file or an
 * environment variable) and never appear in any message: messages name the file or the
 * variable instead. Their memory is wiped before it is freed.
 */
#include "config/config.h"

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A config file is a few hundred bytes; the bound only stops a mistaken path (a disk image, a
 * device) from being read into memory. */
#define CONFIG_FILE_MAX (1024 * 1024)
/* Bounds on strings that reach the rest of winch, well above any real value. */
#define URL_MAX 2048
#define HOST_MAX 253
#define PATH_MAX_LEN 4095
/* Upstream credentials: generous bounds (registry tokens used as passwords are ~2 KiB). */
#define USERNAME_MAX 256
#define PASSWORD_MAX 4096
#define ENV_NAME_MAX 255

#define KIB 1024ull
#define MIB (1024ull * 1024ull)
#define GIB (1024ull * 1024ull * 1024ull)
#define TIB (1024ull * GIB)

/* Where a message goes and whom it blames. */
typedef struct diag {
    char *buf;
    size_t cap;
    const char *origin; /* file name, "--listen", ... */
} diag_t;

static int fail(const diag_t *d, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(const diag_t *d, const char *field, const char *fmt, ...)
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

static int fail_oom(const diag_t *d)
{
    fail(d, NULL, "out of memory");
    return -ENOMEM;
}

/* Copies s into tmp as a double-quoted, printable-ASCII string for a message: other bytes
 * become '?', and long values are cut with "...". Returns tmp. */
static const char *quote(char *tmp, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    if (cap < 8) {
        if (cap)
            tmp[0] = '\0';
        return tmp;
    }
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
    tmp[o++] = '"';
    tmp[o] = '\0';
    return tmp;
}

static char ascii_lower(char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

static bool ascii_eq_nocase(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    return true;
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool is_alnum(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static bool is_hex(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---------------------------------------------------------------------------------------- */
/* Hosts, ports, URLs. The checks return NULL when fine, else a static reason.               */

enum host_kind { HOST_DNS, HOST_V4, HOST_V6 };

/* RFC 1123 host names: labels of letters, digits and '-', 1..63 long, not starting or ending
 * with '-'. A name whose last label is all digits is only allowed as a dotted-quad IPv4
 * address, so "1.2.3" or "256.0.0.1" cannot sneak through as a "name". */
static const char *check_host(const char *h, size_t n, bool bracketed, enum host_kind *kind)
{
    if (n == 0)
        return "missing host";
    if (bracketed) {
        char tmp[64];
        unsigned char addr[16];
        if (n >= sizeof tmp)
            return "not a valid IPv6 address";
        memcpy(tmp, h, n);
        tmp[n] = '\0';
        if (inet_pton(AF_INET6, tmp, addr) != 1)
            return "not a valid IPv6 address";
        *kind = HOST_V6;
        return NULL;
    }
    if (memchr(h, ':', n))
        return "an IPv6 address must be written in brackets, e.g. [::1]";
    if (n > HOST_MAX)
        return "host name longer than 253 characters";
    size_t label = 0, last_start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || h[i] == '.') {
            if (label == 0)
                return "host has an empty label (\"..\", or a leading or trailing dot)";
            if (h[i - 1] == '-' || h[i - label] == '-')
                return "host label starts or ends with '-'";
            last_start = i - label;
            label = 0;
            continue;
        }
        if (!is_alnum(h[i]) && h[i] != '-')
            return "host may only contain letters, digits, '-' and '.'";
        if (++label > 63)
            return "host label longer than 63 characters";
    }
    bool numeric_tail = true;
    for (size_t i = last_start; i < n; i++)
        if (!is_digit(h[i]))
            numeric_tail = false;
    if (numeric_tail) {
        char tmp[32];
        unsigned char addr[4];
        if (n >= sizeof tmp)
            return "not a valid IPv4 address";
        memcpy(tmp, h, n);
        tmp[n] = '\0';
        if (inet_pton(AF_INET, tmp, addr) != 1)
            return "not a valid IPv4 address";
        *kind = HOST_V4;
        return NULL;
    }
    *kind = HOST_DNS;
    return NULL;
}

/* Port 0 parses (the listener may ask the kernel for a free port); callers that need a real
 * port reject it. */
static const char *parse_port(const char *s, size_t n, uint16_t *port)
{
    if (n == 0)
        return "empty port";
    if (n > 5)
        return "port must be a number 1..65535";
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return "port must be a number 1..65535";
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return "port must be a number 1..65535";
    *port = (uint16_t)v;
    return NULL;
}

/* Splits "host[:port]" or "[v6][:port]". *host points into s (inside the brackets). */
typedef struct hostport {
    const char *host;
    size_t hlen;
    enum host_kind kind;
    bool has_port;
    uint16_t port;
} hostport_t;

static const char *parse_hostport(const char *s, size_t n, hostport_t *hp)
{
    const char *rest;
    size_t rlen;
    bool bracketed = false;
    memset(hp, 0, sizeof *hp);
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return "missing ']' after the IPv6 address";
        bracketed = true;
        hp->host = s + 1;
        hp->hlen = (size_t)(close - s) - 1;
        rest = close + 1;
        rlen = n - (size_t)(rest - s);
        if (rlen > 0 && rest[0] != ':')
            return "unexpected text after ']'";
    } else {
        /* One colon separates the port; more than one is an unbracketed IPv6 address, which
         * check_host reports as such. */
        const char *colon = memchr(s, ':', n);
        if (colon && memchr(colon + 1, ':', n - (size_t)(colon - s) - 1))
            colon = NULL;
        hp->host = s;
        hp->hlen = colon ? (size_t)(colon - s) : n;
        rest = s + hp->hlen;
        rlen = n - hp->hlen;
    }
    const char *why = check_host(hp->host, hp->hlen, bracketed, &hp->kind);
    if (why)
        return why;
    if (rlen > 0) {
        hp->has_port = true;
        why = parse_port(rest + 1, rlen - 1, &hp->port);
        if (why)
            return why;
    }
    return NULL;
}

/* RFC 3986 pchar plus '/': unreserved, sub-delims, ':', '@' and %XX escapes. */
static const char *check_path(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (is_alnum(ch) || strchr("-._~!$&'()*+,;=:@/", ch))
            continue;
        if (ch == '%' && i + 2 < n && is_hex(p[i + 1]) && is_hex(p[i + 2])) {
            i += 2;
            continue;
        }
        return "path has a character that must be percent-encoded";
    }
    return NULL;
}

typedef struct url_parts {
    bool tls;
    const char *host;
    size_t hlen;
    uint16_t port;
    const char *path;
    size_t plen; /* without trailing slashes */
} url_parts_t;

static const char *parse_url(const char *url, url_parts_t *u)
{
    size_t n = strlen(url);
    memset(u, 0, sizeof *u);
    if (n > URL_MAX)
        return "longer than 2048 characters";
    const char *sep = strstr(url, "://");
    if (!sep)
        return "must start with http:// or https://";
    size_t slen = (size_t)(sep - url);
    if (ascii_eq_nocase(url, slen, "https"))
        u->tls = true;
    else if (!ascii_eq_nocase(url, slen, "http"))
        return "scheme must be http or https";
    if (strpbrk(url, "?#"))
        return "query and fragment are not allowed";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
            return "spaces, control and non-ASCII characters are not allowed";
    const char *auth = sep + 3;
    const char *slash = strchr(auth, '/');
    size_t alen = slash ? (size_t)(slash - auth) : strlen(auth);
    if (memchr(auth, '@', alen))
        return "userinfo (user:password@) is not allowed; credentials do not belong in the URL";
    if (alen == 0)
        return "missing host";
    hostport_t hp;
    const char *why = parse_hostport(auth, alen, &hp);
    if (why)
        return why;
    if (hp.has_port && hp.port == 0)
        return "port must be a number 1..65535";
    u->host = hp.host;
    u->hlen = hp.hlen;
    u->port = hp.has_port ? hp.port : (u->tls ? 443 : 80);
    if (slash) {
        size_t plen = strlen(slash);
        why = check_path(slash, plen);
        if (why)
            return why;
        while (plen > 0 && slash[plen - 1] == '/')
            plen--;
        u->path = slash;
        u->plen = plen;
    } else {
        u->path = "";
        u->plen = 0;
    }
    return NULL;
}

/* Docker Hub answers to three names; winch knows it by the one in image references. */
static bool is_dockerhub_alias(const char *name, size_t len)
{
    return ascii_eq_nocase(name, len, "index.docker.io") ||
           ascii_eq_nocase(name, len, "registry-1.docker.io") ||
           ascii_eq_nocase(name, len, "docker.io");
}

/* ---------------------------------------------------------------------------------------- */
/* The config object.                                                                      */

/* Integer fields: one row each, so JSON parsing, defaults and range checks cannot drift. */
typedef struct int_field {
    const char *name;
    size_t off;
    bool wide; /* uint64_t, else uint32_t */
    uint64_t min, max, def;
} int_field_t;

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
    {"client_header_timeout_ms", offsetof(config_t, client_header_timeout_ms), false, 1, 3600000,
     30000},
    {"client_idle_timeout_ms", offsetof(config_t, client_idle_timeout_ms), false, 1, 3600000,
     120000},
    {"max_connections", offsetof(config_t, max_connections), false, 1, 1000000, 4096},
    {"max_header_bytes", offsetof(config_t, max_header_bytes), false, KIB, MIB, 32 * KIB},
    {"tag_ttl_s", offsetof(config_t, tag_ttl_s), false, 0, 31536000, 300},
    {"max_manifest_bytes", offsetof(config_t, max_manifest_bytes), false, KIB, 64 * MIB, 4 * MIB},
    {"max_tags_list_bytes", offsetof(config_t, max_tags_list_bytes), false, KIB, 256 * MIB,
     8 * MIB},
    /* LMDB reserves the map as address space only; 1 TiB is far beyond any index. */
    {"index_map_size", offsetof(config_t, index_map_size), true, MIB, TIB, 4 * GIB},
};

static void int_field_set(config_t *c, const int_field_t *f, uint64_t v)
{
    char *base = (char *)c + f->off;
    if (f->wide)
        *(uint64_t *)(void *)base = v;
    else
        *(uint32_t *)(void *)base = (uint32_t)v;
}

/* memset that the compiler may not drop as a dead store before free(). */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

static void free_secret(char *s)
{
    if (s) {
        wipe(s, strlen(s));
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
    memset(u, 0, sizeof *u);
}

static void upstreams_clear(config_t *c)
{
    for (size_t i = 0; i < c->n_upstreams; i++)
        upstream_clear(&c->upstreams[i]);
    c->n_upstreams = 0;
}

void config_free(config_t *c)
{
    if (!c)
        return;
    upstreams_clear(c);
    free(c->listen_host);
    free(c->tls_listen_host);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->cache_dir);
    free(c->log_level);
    free(c);
}

const config_upstream_t *config_upstream_find(const config_t *c, const char *name, size_t len)
{
    if (!c || !name)
        return NULL;
    if (is_dockerhub_alias(name, len)) {
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
static int upstream_add(config_t *c, const diag_t *d, const char *field, const char *name,
                        const char *url)
{
    char fname[64], furl[64], q[80];
    snprintf(fname, sizeof fname, "%s%sname", field ? field : "", field ? "." : "");
    snprintf(furl, sizeof furl, "%s%surl", field ? field : "", field ? "." : "");
    size_t nlen = strlen(name);

    if (c->n_upstreams >= CONFIG_MAX_UPSTREAMS)
        return fail(d, field, "at most %d upstreams", CONFIG_MAX_UPSTREAMS);
    hostport_t hp;
    const char *why = nlen ? parse_hostport(name, nlen, &hp) : "must not be empty";
    if (!why && hp.has_port && hp.port == 0)
        why = "port must be a number 1..65535";
    if (why)
        return fail(d, fname, "%s is not a registry host[:port]: %s",
                    quote(q, sizeof q, name, nlen), why);
    url_parts_t up;
    why = parse_url(url, &up);
    if (why)
        return fail(d, furl, "%s", why);

    char *lname = is_dockerhub_alias(name, nlen) ? dup_n("docker.io", 9) : dup_n(name, nlen);
    if (!lname)
        return fail_oom(d);
    for (char *p = lname; *p; p++)
        *p = ascii_lower(*p);
    for (size_t i = 0; i < c->n_upstreams; i++) {
        if (strcmp(c->upstreams[i].name, lname) == 0) {
            fail(d, fname, "duplicate upstream %s", quote(q, sizeof q, lname, strlen(lname)));
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
    return fail_oom(d);
}

/* The listener binds without resolving names, so only IP literals are accepted. Port 0 asks
 * the kernel for a free port; winch logs the one it got (tests and benches use that). Writes
 * the host (owned) and port; "" is left to the callers (it turns a listener off). */
static int parse_listen(const diag_t *d, const char *field, const char *s, char **host,
                        uint16_t *port)
{
    size_t n = strlen(s);
    hostport_t hp;
    const char *why = parse_hostport(s, n, &hp);
    if (!why && !hp.has_port)
        why = "expected HOST:PORT, e.g. 0.0.0.0:5000 or [::1]:5000";
    if (!why && hp.kind == HOST_DNS)
        why = "host must be an IP address (IPv4, or IPv6 in brackets); names are not resolved";
    if (why)
        return fail(d, field, "%s", why);
    char *h = dup_n(hp.host, hp.hlen);
    if (!h)
        return fail_oom(d);
    *host = h;
    *port = hp.port;
    return 0;
}

/* "listen": "" (or null) turns the plain listener off (a TLS-only winch). */
static int set_listen(config_t *c, const diag_t *d, const char *field, const char *s)
{
    char *h;
    uint16_t port;
    if (!s || s[0] == '\0') {
        c->listen_enabled = false;
        return 0;
    }
    int rc = parse_listen(d, field, s, &h, &port);
    if (rc < 0)
        return rc;
    free(c->listen_host);
    c->listen_host = h;
    c->listen_port = port;
    c->listen_enabled = true;
    return 0;
}

/* "tls_listen": "HOST:PORT" turns the TLS listener on; "" (or null) off. */
static int set_tls_listen(config_t *c, const diag_t *d, const char *field, const char *s)
{
    char *h;
    uint16_t port;
    if (!s || s[0] == '\0') {
        free(c->tls_listen_host);
        c->tls_listen_host = NULL;
        c->tls_listen_port = 0;
        c->tls_listen_enabled = false;
        return 0;
    }
    int rc = parse_listen(d, field, s, &h, &port);
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
        return fail(d, field, "must not be empty");
    if (n > PATH_MAX_LEN)
        return fail(d, field, "longer than %d bytes", PATH_MAX_LEN);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return fail(d, field, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0)
        rc = fail(d, field, "cannot stat %s: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = fail(d, field, "%s is not a regular file", path);
    close(fd);
    return rc;
}

/* Sets *slot to a copy of path after checking it is readable. */
static int set_file(const diag_t *d, const char *field, const char *path, char **slot)
{
    int rc = check_readable_file(d, field, path);
    if (rc < 0)
        return rc;
    char *p = strdup(path);
    if (!p)
        return fail_oom(d);
    free(*slot);
    *slot = p;
    return 0;
}

static int set_cache_dir(config_t *c, const diag_t *d, const char *field, const char *s)
{
    size_t n = strlen(s);
    if (n == 0)
        return fail(d, field, "must not be empty");
    if (n > PATH_MAX_LEN)
        return fail(d, field, "longer than %d bytes", PATH_MAX_LEN);
    char *p = strdup(s);
    if (!p)
        return fail_oom(d);
    free(c->cache_dir);
    c->cache_dir = p;
    return 0;
}

static int set_log_level(config_t *c, const diag_t *d, const char *field, const char *s)
{
    char q[80];
    if (log_level_parse(s) < 0)
        return fail(d, field, "%s is not a log level (error, warn, info, debug)",
                    quote(q, sizeof q, s, strlen(s)));
    char *p = strdup(s);
    if (!p)
        return fail_oom(d);
    free(c->log_level);
    c->log_level = p;
    return 0;
}

static int config_defaults(config_t **out, const diag_t *d)
{
    config_t *c = calloc(1, sizeof *c);
    if (!c)
        return fail_oom(d);
    c->listen_enabled = true;
    c->listen_host = strdup("0.0.0.0");
    c->listen_port = 5000;
    c->cache_dir = strdup("./winch-cache");
    c->log_level = strdup("info");
    if (!c->listen_host || !c->cache_dir || !c->log_level)
        goto fail;
    for (size_t i = 0; i < ARRAY_SIZE(int_fields); i++)
        int_field_set(c, &int_fields[i], int_fields[i].def);
    int rc = upstream_add(c, d, NULL, "docker.io", "https://registry-1.docker.io");
    if (rc < 0) {
        config_free(c);
        return rc;
    }
    *out = c;
    return 0;
fail:
    config_free(c);
    return fail_oom(d);
}

/* ---------------------------------------------------------------------------------------- */
/* JSON.                                                                                     */

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number with a fraction or exponent";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

/* Builds "prefix.key" with the key made printable; keys in messages come from the file. */
static void field_path(char *buf, size_t cap, const char *prefix, const char *key)
{
    char q[80];
    quote(q, sizeof q, key, strlen(key));
    /* quote() wraps in '"'; paths read better without them. */
    size_t ql = strlen(q);
    if (ql >= 2) {
        q[ql - 1] = '\0';
        snprintf(buf, cap, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", q + 1);
    } else {
        snprintf(buf, cap, "%s", prefix ? prefix : "");
    }
}

static int want_string(const diag_t *d, const char *field, const json_t *v, const char **s)
{
    if (!json_is_string(v))
        return fail(d, field, "expected a string, got %s", json_type_name(v));
    *s = json_string_value(v);
    return 0;
}

/* Reads an upstream password from a file: at most PASSWORD_MAX bytes, trailing newlines
 * (\n, \r\n) stripped, not empty, no NUL. The message names the file, never the content. */
static int read_password_file(const diag_t *d, const char *field, const char *path, char **out)
{
    char *buf = NULL;
    int rc;
    int fd = -1;
    size_t n = 0;
    if (path[0] == '\0')
        return fail(d, field, "must not be empty");
    if (strlen(path) > PATH_MAX_LEN)
        return fail(d, field, "longer than %d bytes", PATH_MAX_LEN);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return fail(d, field, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = fail(d, field, "cannot stat %s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = fail(d, field, "%s is not a regular file", path);
        goto fail;
    }
    buf = malloc(PASSWORD_MAX + 2);
    if (!buf) {
        rc = fail_oom(d);
        goto fail;
    }
    /* One byte past the bound tells "too big" from "exactly the bound". */
    while (n < PASSWORD_MAX + 1) {
        ssize_t r = read(fd, buf + n, PASSWORD_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = fail(d, field, "cannot read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > PASSWORD_MAX) {
        rc = fail(d, field, "%s is larger than %d bytes; is it the password file?", path,
                  PASSWORD_MAX);
        goto fail;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    if (n == 0) {
        rc = fail(d, field, "%s is empty", path);
        goto fail;
    }
    if (memchr(buf, '\0', n)) {
        rc = fail(d, field, "%s contains a NUL byte", path);
        goto fail;
    }
    close(fd);
    *out = buf;
    return 0;
fail:
    if (buf) {
        wipe(buf, PASSWORD_MAX + 2);
        free(buf);
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Reads an upstream password from the environment variable `name`. */
static int read_password_env(const diag_t *d, const char *field, const char *name, char **out)
{
    char q[80];
    size_t n = strlen(name);
    if (n == 0)
        return fail(d, field, "must not be empty");
    bool ok = n <= ENV_NAME_MAX && !(name[0] >= '0' && name[0] <= '9');
    for (size_t i = 0; ok && i < n; i++)
        ok = is_alnum(name[i]) || name[i] == '_';
    if (!ok)
        return fail(d, field, "%s is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    quote(q, sizeof q, name, n));
    const char *v = getenv(name);
    if (!v)
        return fail(d, field, "environment variable %s is not set", name);
    size_t vn = strlen(v);
    if (vn == 0)
        return fail(d, field, "environment variable %s is empty", name);
    if (vn > PASSWORD_MAX)
        return fail(d, field, "environment variable %s is longer than %d bytes", name,
                    PASSWORD_MAX);
    char *p = strdup(v);
    if (!p)
        return fail_oom(d);
    *out = p;
    return 0;
}

/* The TLS and credential fields of one upstream, as found in its object. */
typedef struct upstream_extra {
    const char *ca_file;
    int insecure; /* -1 absent, else 0/1 */
    const char *username, *password_file, *password_env;
} upstream_extra_t;

static int apply_upstream_extra(config_upstream_t *u, const diag_t *d, const char *field,
                                const upstream_extra_t *x)
{
    char sub[128], q[80];
    int rc;
    if (x->insecure == 1 && x->ca_file) {
        snprintf(sub, sizeof sub, "%s.insecure_skip_verify", field);
        return fail(d, sub, "true contradicts ca_file (which asks for verification)");
    }
    if (x->ca_file) {
        snprintf(sub, sizeof sub, "%s.ca_file", field);
        rc = set_file(d, sub, x->ca_file, &u->ca_file);
        if (rc < 0)
            return rc;
    }
    u->insecure_skip_verify = x->insecure == 1;
    if (x->password_file && x->password_env) {
        snprintf(sub, sizeof sub, "%s.password_env", field);
        return fail(d, sub, "give either password_file or password_env, not both");
    }
    bool has_password = x->password_file || x->password_env;
    if (x->username) {
        size_t n = strlen(x->username);
        snprintf(sub, sizeof sub, "%s.username", field);
        if (n == 0)
            return fail(d, sub, "must not be empty");
        if (n > USERNAME_MAX)
            return fail(d, sub, "longer than %d bytes", USERNAME_MAX);
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)x->username[i];
            if (ch < 0x20 || ch == 0x7f)
                return fail(d, sub, "must not contain control characters");
            if (ch == ':')
                return fail(d, sub, "%s must not contain ':' (HTTP Basic auth, RFC 7617)",
                            quote(q, sizeof q, x->username, n));
        }
        if (!has_password)
            return fail(d, sub,
                        "is set but there is no password: add password_file or "
                        "password_env");
        u->username = strdup(x->username);
        if (!u->username)
            return fail_oom(d);
    } else if (has_password) {
        snprintf(sub, sizeof sub, "%s.%s", field,
                 x->password_file ? "password_file" : "password_env");
        return fail(d, sub, "is set but username is not");
    }
    if (x->password_file) {
        snprintf(sub, sizeof sub, "%s.password_file", field);
        u->password_file = strdup(x->password_file);
        if (!u->password_file)
            return fail_oom(d);
        rc = read_password_file(d, sub, x->password_file, &u->password);
        if (rc < 0)
            return rc;
    }
    if (x->password_env) {
        snprintf(sub, sizeof sub, "%s.password_env", field);
        u->password_env = strdup(x->password_env);
        if (!u->password_env)
            return fail_oom(d);
        rc = read_password_env(d, sub, x->password_env, &u->password);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int parse_upstream_obj(config_t *c, const diag_t *d, size_t idx, json_t *v)
{
    char field[32], sub[128];
    snprintf(field, sizeof field, "upstreams[%zu]", idx);
    if (!json_is_object(v))
        return fail(d, field, "expected an object {\"name\": ..., \"url\": ...}, got %s",
                    json_type_name(v));
    const char *key, *name = NULL, *url = NULL;
    upstream_extra_t x = {.insecure = -1};
    json_t *val;
    int rc;
    json_object_foreach(v, key, val)
    {
        field_path(sub, sizeof sub, field, key);
        if (strcmp(key, "name") == 0) {
            rc = want_string(d, sub, val, &name);
        } else if (strcmp(key, "url") == 0) {
            rc = want_string(d, sub, val, &url);
        } else if (strcmp(key, "ca_file") == 0) {
            rc = want_string(d, sub, val, &x.ca_file);
        } else if (strcmp(key, "insecure_skip_verify") == 0) {
            rc = json_is_boolean(val)
                     ? 0
                     : fail(d, sub, "expected true or false, got %s", json_type_name(val));
            x.insecure = json_is_true(val);
        } else if (strcmp(key, "username") == 0) {
            rc = want_string(d, sub, val, &x.username);
        } else if (strcmp(key, "password_file") == 0) {
            rc = want_string(d, sub, val, &x.password_file);
        } else if (strcmp(key, "password_env") == 0) {
            rc = want_string(d, sub, val, &x.password_env);
        } else if (strcmp(key, "password") == 0) {
            /* Said plainly, since it is the field people try first; the value is not echoed. */
            rc = fail(d, sub,
                      "not supported: passwords are read from password_file or "
                      "password_env, never written in the config file");
        } else {
            rc = fail(d, sub,
                      "unknown field (an upstream has \"name\", \"url\", \"ca_file\", "
                      "\"insecure_skip_verify\", \"username\", \"password_file\", "
                      "\"password_env\")");
        }
        if (rc < 0)
            return rc;
    }
    if (!name) {
        snprintf(sub, sizeof sub, "%s.name", field);
        return fail(d, sub, "missing (the registry host this upstream stands for, e.g. docker.io)");
    }
    if (!url) {
        snprintf(sub, sizeof sub, "%s.url", field);
        return fail(d, sub, "missing");
    }
    rc = upstream_add(c, d, field, name, url);
    if (rc < 0)
        return rc;
    /* A failure leaves the upstream in the list; config_free (the caller's path) frees it. */
    return apply_upstream_extra(&c->upstreams[c->n_upstreams - 1], d, field, &x);
}

static int parse_upstreams(config_t *c, const diag_t *d, json_t *v)
{
    if (!json_is_array(v))
        return fail(d, "upstreams", "expected an array, got %s", json_type_name(v));
    size_t n = json_array_size(v);
    if (n == 0)
        return fail(d, "upstreams", "must list at least one upstream");
    if (n > CONFIG_MAX_UPSTREAMS)
        return fail(d, "upstreams", "at most %d upstreams", CONFIG_MAX_UPSTREAMS);
    upstreams_clear(c);
    for (size_t i = 0; i < n; i++) {
        int rc = parse_upstream_obj(c, d, i, json_array_get(v, i));
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int parse_int_field(config_t *c, const diag_t *d, const int_field_t *f, const json_t *v)
{
    if (!json_is_integer(v))
        return fail(d, f->name, "expected an integer, got %s", json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x < f->min || (uint64_t)x > f->max)
        return fail(d, f->name, "must be %llu..%llu, got %lld", (unsigned long long)f->min,
                    (unsigned long long)f->max, (long long)x);
    int_field_set(c, f, (uint64_t)x);
    return 0;
}

static int apply_json(config_t *c, const diag_t *d, json_t *root)
{
    if (!json_is_object(root))
        return fail(d, NULL, "expected a JSON object at the top level, got %s",
                    json_type_name(root));
    const char *key;
    json_t *v;
    char field[128];
    json_object_foreach(root, key, v)
    {
        const char *s = NULL;
        int rc;
        if (strcmp(key, "listen") == 0) {
            rc = json_is_null(v) ? 0 : want_string(d, key, v, &s);
            if (rc == 0)
                rc = set_listen(c, d, key, s);
        } else if (strcmp(key, "tls_listen") == 0) {
            rc = json_is_null(v) ? 0 : want_string(d, key, v, &s);
            if (rc == 0)
                rc = set_tls_listen(c, d, key, s);
        } else if (strcmp(key, "tls_cert") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0)
                rc = set_file(d, key, s, &c->tls_cert);
        } else if (strcmp(key, "tls_key") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0)
                rc = set_file(d, key, s, &c->tls_key);
        } else if (strcmp(key, "cache_dir") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0)
                rc = set_cache_dir(c, d, key, s);
        } else if (strcmp(key, "log_level") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0)
                rc = set_log_level(c, d, key, s);
        } else if (strcmp(key, "upstreams") == 0) {
            rc = parse_upstreams(c, d, v);
        } else {
            const int_field_t *f = NULL;
            for (size_t i = 0; i < ARRAY_SIZE(int_fields); i++)
                if (strcmp(key, int_fields[i].name) == 0)
                    f = &int_fields[i];
            if (f) {
                rc = parse_int_field(c, d, f, v);
            } else {
                field_path(field, sizeof field, NULL, key);
                rc = fail(d, field, "unknown field");
            }
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Parses text over an existing config (defaults already in place). */
static int apply_json_text(config_t *c, const char *json, size_t len, const char *origin, char *err,
                           size_t errlen)
{
    diag_t d = {err, errlen, origin};
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char text[sizeof je.text + 8];
        quote(text, sizeof text, je.text, strnlen(je.text, sizeof je.text));
        /* Drop the quotes quote() adds: jansson's text is a sentence, not a value. */
        text[strlen(text) - 1] = '\0';
        if (json_error_code(&je) == json_error_out_of_memory)
            return fail_oom(&d);
        if (err && errlen) {
            if (je.line > 0)
                snprintf(err, errlen, "%s:%d:%d: %s", origin, je.line, je.column, text + 1);
            else
                snprintf(err, errlen, "%s: %s", origin, text + 1);
        }
        return WE_CONFIG;
    }
    int rc = apply_json(c, &d, root);
    json_decref(root);
    return rc;
}

/* Checks that need every field: run once, after the file and the flags. */
static int check_whole(const config_t *c, const diag_t *d)
{
    if (!c->listen_enabled && !c->tls_listen_enabled)
        return fail(d, "listen", "no listener: listen is off (\"\") and tls_listen is not set");
    if (c->tls_listen_enabled) {
        if (!c->tls_cert)
            return fail(d, "tls_cert", "missing: tls_listen needs tls_cert and tls_key");
        if (!c->tls_key)
            return fail(d, "tls_key", "missing: tls_listen needs tls_cert and tls_key");
        if (c->listen_enabled && c->listen_port != 0 && c->listen_port == c->tls_listen_port &&
            strcmp(c->listen_host, c->tls_listen_host) == 0)
            return fail(d, "tls_listen", "same address as listen");
    }
    return 0;
}

int config_from_json(config_t **out, const char *json, size_t len, const char *origin, char *err,
                     size_t errlen)
{
    config_t *c = NULL;
    diag_t d = {err, errlen, origin ? origin : "config"};
    *out = NULL;
    int rc = config_defaults(&c, &d);
    if (rc < 0)
        return rc;
    rc = apply_json_text(c, json, len, d.origin, err, errlen);
    if (rc == 0)
        rc = check_whole(c, &d);
    if (rc < 0) {
        config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* Reads the whole file, bounded. *buf is owned by the caller. */
static int read_file(const char *path, char **buf, size_t *len, const diag_t *d)
{
    char *p = NULL;
    int rc;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(d, NULL, "cannot open: %s", strerror(errno));
    p = malloc(CONFIG_FILE_MAX + 1);
    if (!p) {
        rc = fail_oom(d);
        goto fail;
    }
    size_t n = fread(p, 1, CONFIG_FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = fail(d, NULL, "cannot read: %s", strerror(errno));
        goto fail;
    }
    if (n > CONFIG_FILE_MAX) {
        rc = fail(d, NULL, "larger than %d bytes; is this the config file?", CONFIG_FILE_MAX);
        goto fail;
    }
    fclose(f);
    *buf = p;
    *len = n;
    return 0;
fail:
    fclose(f);
    free(p);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Flags.                                                                                    */

enum flag_id {
    FLAG_CONFIG,
    FLAG_LISTEN,
    FLAG_CACHE_DIR,
    FLAG_UPSTREAM,
    FLAG_LOG_LEVEL,
    FLAG_TLS_LISTEN,
    FLAG_TLS_CERT,
    FLAG_TLS_KEY,
};

static const char *const flag_names[] = {
    [FLAG_CONFIG] = "--config",       [FLAG_LISTEN] = "--listen",
    [FLAG_CACHE_DIR] = "--cache-dir", [FLAG_UPSTREAM] = "--upstream",
    [FLAG_LOG_LEVEL] = "--log-level", [FLAG_TLS_LISTEN] = "--tls-listen",
    [FLAG_TLS_CERT] = "--tls-cert",   [FLAG_TLS_KEY] = "--tls-key",
};

typedef struct flag_arg {
    enum flag_id id;
    const char *value; /* borrowed from argv */
} flag_arg_t;

static int apply_flag(config_t *c, const flag_arg_t *fa, bool *upstreams_replaced, char *err,
                      size_t errlen)
{
    diag_t d = {err, errlen, flag_names[fa->id]};
    switch (fa->id) {
    case FLAG_CONFIG:
        return 0;
    case FLAG_LISTEN:
        return set_listen(c, &d, NULL, fa->value);
    case FLAG_CACHE_DIR:
        return set_cache_dir(c, &d, NULL, fa->value);
    case FLAG_LOG_LEVEL:
        return set_log_level(c, &d, NULL, fa->value);
    case FLAG_TLS_LISTEN:
        return set_tls_listen(c, &d, NULL, fa->value);
    case FLAG_TLS_CERT:
        return set_file(&d, NULL, fa->value, &c->tls_cert);
    case FLAG_TLS_KEY:
        return set_file(&d, NULL, fa->value, &c->tls_key);
    case FLAG_UPSTREAM: {
        const char *eq = strchr(fa->value, '=');
        if (!eq || eq == fa->value)
            return fail(&d, NULL, "expected NAME=URL, e.g. docker.io=https://registry-1.docker.io");
        char *name = dup_n(fa->value, (size_t)(eq - fa->value));
        if (!name)
            return fail_oom(&d);
        /* Flags describe the whole list: the first one drops what the file said. */
        if (!*upstreams_replaced) {
            upstreams_clear(c);
            *upstreams_replaced = true;
        }
        int rc = upstream_add(c, &d, NULL, name, eq + 1);
        free(name);
        return rc;
    }
    }
    return fail(&d, NULL, "unhandled flag");
}

int config_load(config_t **out, int argc, char **argv, char *err, size_t errlen)
{
    diag_t d = {err, errlen, "winch serve"};
    flag_arg_t *flags = NULL;
    size_t nflags = 0;
    const char *config_path = NULL;
    config_t *c = NULL;
    char *text = NULL;
    char q[80];
    int rc;

    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (argc > 0) {
        flags = calloc((size_t)argc, sizeof *flags);
        if (!flags)
            return fail_oom(&d);
    }
    /* First pass: syntax only, so an unknown flag is reported before the file is read, and
     * --config may come anywhere on the line. */
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            rc = fail(&d, NULL, "unexpected argument %s", quote(q, sizeof q, arg, strlen(arg)));
            goto fail;
        }
        const char *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        int id = -1;
        for (size_t k = 0; k < ARRAY_SIZE(flag_names); k++)
            if (strlen(flag_names[k]) == nlen && strncmp(arg, flag_names[k], nlen) == 0)
                id = (int)k;
        if (id < 0) {
            rc = fail(&d, NULL,
                      "unknown flag %s (known: --config, --listen, --cache-dir, "
                      "--upstream, --log-level, --tls-listen, --tls-cert, --tls-key)",
                      quote(q, sizeof q, arg, nlen));
            goto fail;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
            value = argv[++i];
        } else {
            diag_t fd = {err, errlen, flag_names[id]};
            rc = fail(&fd, NULL, "missing value");
            goto fail;
        }
        if (id == FLAG_CONFIG) {
            if (config_path) {
                diag_t fd = {err, errlen, flag_names[id]};
                rc = fail(&fd, NULL, "given more than once");
                goto fail;
            }
            if (value[0] == '\0') {
                diag_t fd = {err, errlen, flag_names[id]};
                rc = fail(&fd, NULL, "missing value");
                goto fail;
            }
            config_path = value;
        }
        flags[nflags].id = (enum flag_id)id;
        flags[nflags].value = value;
        nflags++;
    }

    rc = config_defaults(&c, &d);
    if (rc < 0)
        goto fail;
    if (config_path) {
        size_t len = 0;
        diag_t fd = {err, errlen, config_path};
        rc = read_file(config_path, &text, &len, &fd);
        if (rc < 0)
            goto fail;
        rc = apply_json_text(c, text, len, config_path, err, errlen);
        if (rc < 0)
            goto fail;
    }
    bool replaced = false;
    for (size_t i = 0; i < nflags; i++) {
        rc = apply_flag(c, &flags[i], &replaced, err, errlen);
        if (rc < 0)
            goto fail;
    }
    diag_t wd = {err, errlen, config_path ? config_path : "winch serve"};
    rc = check_whole(c, &wd);
    if (rc < 0)
        goto fail;
    free(text);
    free(flags);
    *out = c;
    return 0;
fail:
    free(text);
    free(flags);
    config_free(c);
    return rc;
}
