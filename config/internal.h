/* What the files of config/ share, and nobody else may include (tests/tools/archmap.py checks):
 * the message sink every check writes to, the host/port/URL grammar (config_addr.c), the
 * config object's setters and checks (config.c), and the JSON walk (config_json.c) that the
 * flag parser (config_flags.c) runs on a --config file.
 *
 * Every setter validates its value and, on failure, writes one line "ORIGIN: FIELD: what is
 * wrong" through diag_fail and returns WE_CONFIG (or -ENOMEM); `field` is the JSON path
 * ("upstreams[1].url") or NULL for a flag, whose name is then the origin.
 */
#ifndef WINCH_CONFIG_INTERNAL_H
#define WINCH_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

/* Bounds on strings that reach the rest of winch, well above any real value. */
#define URL_MAX 2048
#define HOST_MAX 253
#define PATH_MAX_LEN 4095
/* Upstream credentials: generous bounds (registry tokens used as passwords are ~2 KiB). */
#define USERNAME_MAX 256
#define PASSWORD_MAX 4096
#define ENV_NAME_MAX 255

/* ---- Messages (config.c) ----------------------------------------------------------------- */

/** Where a message goes and whom it blames. */
typedef struct diag {
    char *buf; /* borrowed; NULL or cap 0: no message */
    size_t cap;
    const char *origin; /* borrowed; file name, "--listen", ... */
} diag_t;

/** Writes "origin: field: <fmt...>" (or "origin: <fmt...>" when field is NULL) into d's
 * buffer. Returns WE_CONFIG. Values from the input go through diag_quote or diag_printable. */
int diag_fail(const diag_t *d, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Writes "origin: out of memory". Returns -ENOMEM. */
int diag_oom(const diag_t *d);

/** Copies s[0..n) into tmp[cap] as a double-quoted, printable-ASCII string: other bytes become
 * '?', and long values are cut with "...". Returns tmp. */
const char *diag_quote(char *tmp, size_t cap, const char *s, size_t n);

/** The same without the quotes, for a path in a message ("cannot open PATH: ..."): a path
 * from the configuration may hold any byte, and a message is one printable line. */
const char *diag_printable(char *tmp, size_t cap, const char *s);

/* Room for a path in a message: long paths are cut, which is fine for a message. */
#define DIAG_PATH_CAP 512

/* ---- Characters (locale-independent, unlike <ctype.h>) ------------------------------------ */

static inline char ascii_lower(char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

static inline bool ascii_eq_nocase(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    return true;
}

static inline bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static inline bool is_alnum(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static inline bool is_hex(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/** A malloc'd, NUL-terminated copy of s[0..n); NULL when out of memory. */
static inline char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- Hosts, ports, URLs (config_addr.c) ---------------------------------------------------- */
/* The parsers return NULL when fine, else a static reason for the message. */

enum host_kind { HOST_DNS, HOST_V4, HOST_V6 };

/** "host[:port]" or "[v6][:port]". host points into the parsed string (inside the brackets). */
typedef struct hostport {
    const char *host;
    size_t hlen;
    enum host_kind kind;
    bool has_port;
    uint16_t port; /* 0 parses: the listener may ask the kernel for a free port */
} hostport_t;

typedef struct url_parts {
    bool tls;
    const char *host; /* points into the URL */
    size_t hlen;
    uint16_t port; /* 80/443 unless given */
    const char *path;
    size_t plen; /* without trailing slashes */
} url_parts_t;

const char *addr_parse_hostport(const char *s, size_t n, hostport_t *hp);
/** url must be NUL-terminated; *u points into it. */
const char *addr_parse_url(const char *url, url_parts_t *u);
/** Docker Hub answers to three names; winch knows it by the one in image references. */
bool addr_is_dockerhub_alias(const char *name, size_t len);
/** "A.B.C.D/N", "V6/N" or a bare address (a /32 or /128) at field into *out: 0, or WE_CONFIG
 * naming field. Host bits must be zero; an IPv4-mapped IPv6 network becomes an IPv4 one. */
int config_cidr_parse(const diag_t *d, const char *field, const char *s, config_cidr_t *out);

/* ---- The config object (config.c) -------------------------------------------------------- */

/** Integer fields: one row each, so JSON parsing, defaults and range checks cannot drift. */
typedef struct int_field {
    const char *name;
    size_t off;
    bool wide; /* uint64_t, else uint32_t */
    uint64_t min, max, def;
} int_field_t;

/** The row of the integer field called name, or NULL. */
const int_field_t *config_int_field(const char *name);
/** The i-th row of the integer fields, or NULL past the last (for config_dump_json). */
const int_field_t *config_int_field_at(size_t i);
void config_int_field_set(config_t *c, const int_field_t *f, uint64_t v);

/** A config holding the defaults (one upstream: Docker Hub). *out owned by the caller. */
int config_defaults(config_t **out, const diag_t *d);
/** Checks that need every field: run once, after the file and the flags. */
int config_check_whole(const config_t *c, const diag_t *d);

/** Validates NAME and URL (both borrowed) and appends the upstream; field is the upstream's
 * JSON path ("upstreams[1]") or NULL for a flag. */
int config_upstream_add(config_t *c, const diag_t *d, const char *field, const char *name,
                        const char *url);
void config_upstreams_clear(config_t *c);

/** "listen" / "tls_listen": HOST:PORT with an IP literal; NULL or "" turns the listener off. */
int config_set_listen(config_t *c, const diag_t *d, const char *field, const char *s);
int config_set_tls_listen(config_t *c, const diag_t *d, const char *field, const char *s);
/** The listener grammar of "listen" (s non-empty: HOST:PORT with an IP literal, port 0 asks the
 * kernel): *host (owned by the caller, no brackets) and *port, or an error naming field. */
int config_parse_listen(const diag_t *d, const char *field, const char *s, char **host,
                        uint16_t *port);
/** Sets *slot (freeing the old value) to a copy of path once it is a readable regular file. */
int config_set_file(const diag_t *d, const char *field, const char *path, char **slot);
int config_set_cache_dir(config_t *c, const diag_t *d, const char *field, const char *s);
int config_set_log_level(config_t *c, const diag_t *d, const char *field, const char *s);

/** memset that the compiler may not drop as a dead store before free(). */
void config_wipe(void *p, size_t n);

/* ---- Redirect and realm allow list (config_redirect.c) ------------------------------------ */

struct json_t;
/** "upstreams[i].allow_redirect_hosts": an array of host names, "*.suffix" patterns or IP
 * literals, validated and stored in u. field is the JSON path of the list. */
int config_allow_hosts_parse(config_upstream_t *u, const diag_t *d, const char *field,
                             const struct json_t *v);
/** Frees u's list. */
void config_allow_hosts_free(config_upstream_t *u);

/* ---- Retention (config_retention.c) ------------------------------------------------------- */

/** "retention": the object's fields, each validated with its path in messages. */
int config_retention_json(config_t *c, const diag_t *d, const struct json_t *v);
/** "on_disk_full": "fail" (default) or "pass_through". */
int config_disk_full_json(config_t *c, const diag_t *d, const struct json_t *v);
void config_retention_free(config_t *c);

/* ---- Node name (config_node.c) ---------------------------------------------------------- */

/** "node_name": an RFC 8941 token of at most CONFIG_NODE_NAME_MAX - 1 bytes, into c. */
int config_node_json(config_t *c, const diag_t *d, const struct json_t *v);

/* ---- Trusted proxies (config_trusted.c) --------------------------------------------------- */

/** "trusted_proxies": an array of addresses and CIDRs (no /0) into c, replacing its list. */
int config_trusted_json(config_t *c, const diag_t *d, const struct json_t *v);

/* ---- JSON (config_json.c) ----------------------------------------------------------------- */

struct json_t; /* jansson's value type */

/** "an object", "a string", ...: what a JSON value is, for messages. */
const char *config_json_type_name(const struct json_t *v);
/** A boolean at field into *out: 0, or WE_CONFIG with the message written to d. */
int config_want_bool(const diag_t *d, const char *field, const struct json_t *v, bool *out);
/** A string without NUL characters at field into *out (borrowed from v): 0, or WE_CONFIG. */
int config_want_str(const diag_t *d, const char *field, const struct json_t *v, const char **out);
/** Builds "prefix.key" (or "key" when prefix is NULL) with the key made printable. */
void config_field_path(char *buf, size_t cap, const char *prefix, const char *key);

/** Parses the JSON text json[0..len) over c (defaults already in place); origin names it in
 * messages, which go to err[errlen]. */
int config_apply_json_text(config_t *c, const char *json, size_t len, const char *origin, char *err,
                           size_t errlen);

/* ---- The "auth" section (config_auth.c) --------------------------------------------------- */

struct json_t;
/** Parses the "auth" object v over c->auth (replacing it). */
int config_auth_parse(config_t *c, const diag_t *d, struct json_t *v);
/** The auth checks that need the rest of the configuration (upstreams, the TLS listener). */
int config_auth_check_whole(const config_t *c, const diag_t *d);
void config_auth_free(config_auth_t *a);

/* ---- The admin listener (config_admin.c) ------------------------------------------------- */

/** "admin_listen" (v: "HOST:PORT", "" or null) or "public_metrics" (v: a boolean) over c:
 * 0 or an error naming the field. */
int config_admin_json(config_t *c, const diag_t *d, const char *key, const struct json_t *v);
/** The checks that need the other listeners: no address shared with listen or tls_listen. */
int config_admin_check(const config_t *c, const diag_t *d);

/* ---- Pull-time policy (config_policy.c) ---------------------------------------------------- */

/** Parses the "policy" array over c (replacing any rules there): every field validated, every
 * dead or contradictory combination refused, with messages naming policy[i].field. */
int config_parse_policy(config_t *c, const diag_t *d, const struct json_t *v);
/** The checks that need the final upstream list (flags may replace it): each rule's match
 * names a configured upstream (or starts with a glob). */
int config_policy_check(const config_t *c, const diag_t *d);
/** Frees the rules; c->policy is NULL afterwards. */
void config_policy_free(config_t *c);

/* ---- Platforms and client groups (config_platforms.c) ------------------------------------- */

/** Parses the "platforms" array over c (replacing any rules there). */
int config_parse_platforms(config_t *c, const diag_t *d, const struct json_t *v);
/** Parses the "client_groups" array over c (replacing any groups there). */
int config_parse_client_groups(config_t *c, const diag_t *d, const struct json_t *v);
/** The checks that need the final upstream list and every field: each rule's match names a
 * configured upstream (or starts with a glob); prefetch bounds agree. */
int config_platforms_check(const config_t *c, const diag_t *d);
/** Frees the rules and groups. */
void config_platforms_free(config_t *c);

#endif
