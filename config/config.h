/** winch's configuration: a JSON file (--config FILE), then command-line flags that override
 * it, then defaults. Everything is validated here, once, at start: a bad value stops winch
 * with a message naming the field (and line:column for JSON syntax errors). Unknown fields are
 * errors. The rest of winch reads a config_t and never re-validates it. */
#ifndef WINCH_CONFIG_CONFIG_H
#define WINCH_CONFIG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/platform.h"

#define CONFIG_MAX_UPSTREAMS 32
#define CONFIG_MAX_ALLOW_HOSTS 64

/* ---- Pull-time policy (issue 9; parsed in config_policy.c, compiled by policy/) ----------- */

#define CONFIG_MAX_POLICY_RULES 1024
#define CONFIG_MAX_DENY_TAGS 64    /* regexes per rule */
#define CONFIG_MAX_REGEX_LEN 256   /* bytes of one regex */
#define CONFIG_MAX_PINS 1024       /* pins per rule */
#define CONFIG_MAX_MESSAGE_LEN 512 /* bytes of a rule's message */

/** One tag -> digest pin of a rule. */
typedef struct config_pin {
    char *tag;    /* owned; a valid tag */
    char *digest; /* owned; a valid sha256/sha512 digest */
} config_pin_t;

/** One rule of "policy", as written (validated; policy_create compiles it). Rules are ordered:
 * the first whose match fits a request decides with every field it carries. */
typedef struct config_policy_rule {
    char *match;      /* owned; glob over "UPSTREAM/REPOSITORY" (common/glob.h) */
    bool allow;       /* "allow": true */
    bool deny;        /* "deny": true (or "allow": false) */
    char **deny_tags; /* owned; n_deny_tags POSIX extended regexes */
    size_t n_deny_tags;
    bool require_digest;
    config_pin_t *pins; /* owned; n_pins, tags unique within the rule */
    size_t n_pins;
    uint32_t soak_s;             /* 0: no soak */
    bool freeze;                 /* tags never revalidated once cached */
    uint64_t max_image_bytes;    /* 0: no bound */
    uint32_t max_image_age_days; /* 0: no bound */
    bool audit;                  /* refusals logged, not enforced */
    char *message;               /* owned; appended to refusals; NULL when none */
} config_policy_rule_t;

/* ---- Platforms and client groups (issue 11; parsed in config_platforms.c) ------------------ */

#define CONFIG_MAX_PLATFORM_RULES 256
#define CONFIG_MAX_PLATFORMS 32 /* platforms in one rule or group */
#define CONFIG_MAX_CLIENT_GROUPS 64
#define CONFIG_MAX_GROUP_CIDRS 64 /* per group */
#define CONFIG_GROUP_NAME_MAX 64
#define CONFIG_PATH_PREFIX_MAX 128

/** One rule of "platforms": the first whose match fits a repository decides which platforms
 * of its indexes winch cares about. */
typedef struct config_platform_rule {
    char *match;           /* owned; glob over "UPSTREAM/REPOSITORY" (common/glob.h) */
    platform_t *platforms; /* owned; n_platforms (>= 1), normalised, no duplicates */
    size_t n_platforms;
    bool prefetch;     /* an index fetches its platforms' manifests, configs, layers ahead */
    bool attestations; /* prefetch attestation manifests too (needs prefetch) */
    bool filter;       /* tag requests get an index of the allowed platforms only */
    bool restrict_;    /* "restrict": platform manifests outside the set are refused (403) */
} config_platform_rule_t;

/** An IPv4 or IPv6 network of a client group. */
typedef struct config_cidr {
    bool v6;
    uint8_t addr[16]; /* network byte order; host bits zero */
    uint8_t prefix;   /* 0..32 or 0..128 */
} config_cidr_t;

/** One of "client_groups": clients recognised by the group's own listener, by source address
 * or by a path prefix on the mirror URL, whose platform set replaces the matching rule's. */
typedef struct config_client_group {
    char *name;           /* owned; unique; [a-z0-9._-]{1,64} */
    config_cidr_t *cidrs; /* owned; n_cidrs (may be 0) */
    size_t n_cidrs;
    char *path_prefix; /* owned; "/edge" (no trailing '/'); NULL when none */
    /* "listen": "HOST:PORT", a plain-HTTP listener of the group's own: every request on it is
     * the group's. IP literal (no brackets), port 0 asks the kernel; no two groups share one
     * (by value: it is how a reload finds the group of an open listener). NULL when none. */
    char *listen_host; /* owned */
    uint16_t listen_port;
    platform_t *platforms; /* owned; n_platforms (>= 1) */
    size_t n_platforms;
} config_client_group_t;

/** True when the IP literals h1 and h2 (as in config_t's listen hosts: no brackets) name the
 * same address and p1 == p2 (port 0 included): the same listener as configured. */
bool config_listen_same(const char *h1, uint16_t p1, const char *h2, uint16_t p2);

/** One upstream registry. `name` is the registry host it stands for ("docker.io", "ghcr.io");
 * clients address it by that name (?ns=, /v2/<name>/... prefix). */
/** Which requests may be served a cached blob of an upstream: any repository of the upstream
 * that is known to hold it (global), or only a repository known to hold it (repository). */
enum blob_scope { BLOB_SCOPE_GLOBAL = 0, BLOB_SCOPE_REPOSITORY = 1 };

typedef struct config_upstream {
    char *name;      /* owned; lowercase host[:port], e.g. "docker.io", "127.0.0.1:5001" */
    char *url;       /* owned; as written, e.g. "https://registry-1.docker.io" */
    bool tls;        /* scheme was https */
    char *host;      /* owned; host part of url (no brackets for IPv6) */
    uint16_t port;   /* port of url; 80/443 by default */
    char *base_path; /* owned; path of url without trailing '/', "" when none */
    /* Docker Hub semantics: one-component names mean library/<name>. True when name is
     * docker.io (index.docker.io and registry-1.docker.io are normalised to docker.io). */
    bool dockerhub;

    /* TLS to the upstream (issue 3). The system CA store verifies by default. */
    char *ca_file;             /* owned; PEM bundle trusted besides the system store; NULL */
    bool insecure_skip_verify; /* no certificate or hostname check; only when asked by name */

    /* Credentials for the upstream's Basic auth or token realm. Never logged. */
    char *username;      /* owned; NULL = anonymous */
    char *password;      /* owned; read at load from password_file or the env variable */
    char *password_file; /* owned; as configured (for messages), NULL if unused */
    char *password_env;  /* owned; the environment variable's name, NULL if unused */

    /* Redirect targets and token realms of this upstream that may be reached even at a
     * loopback, private, link-local, unspecified or multicast address (issue 8): host names
     * or IP literals, lowercase, IPv6 without brackets; "*.example.com" allows any name below
     * example.com. Owned (array and strings); NULL when none. */
    char **allow_redirect_hosts;
    size_t n_allow_redirect_hosts; /* <= CONFIG_MAX_ALLOW_HOSTS */

    /* Default: repository when the upstream has credentials, else global. */
    enum blob_scope blob_scope;

    /* "pass_ns": every request to this upstream names the registry it stands for with
     * ?ns=<name> (as containerd does), so that an upstream serving several registries (another
     * winch, a tier above) answers for this one. Default false. */
    bool pass_ns;
} config_upstream_t;

/** One rule of "auth.access": who may read the repositories whose "UPSTREAM/REPOSITORY"
 * (Docker Hub one-component names as library/NAME) matches `match` (common/glob.h). The first
 * rule that matches decides; a rule that names nobody denies. */
typedef struct config_access_rule {
    char *match;        /* owned glob over "UPSTREAM/REPOSITORY" */
    bool anonymous;     /* anyone, with or without credentials */
    bool authenticated; /* any authenticated user (a password or a client certificate) */
    char **users;       /* owned; user names (htpasswd users or certificate names) */
    size_t n_users;
    size_t *groups; /* owned; indexes into config_auth_t.groups */
    size_t n_groups;
} config_access_rule_t;

/** A named set of users, for access rules. */
typedef struct config_auth_group {
    char *name;     /* owned */
    char **members; /* owned user names */
    size_t n_members;
} config_auth_group_t;

/** Client authentication for winch itself ("auth"; README "Client authentication"). */
typedef struct config_auth {
    char *htpasswd;           /* owned path of the bcrypt htpasswd file; NULL: no passwords */
    char *realm;              /* owned; the Basic challenge's realm, default "winch" */
    char *client_ca;          /* owned path; PEM CAs that sign client certificates (TLS listener) */
    bool require_client_cert; /* the TLS handshake fails without a verified certificate */
    config_auth_group_t *groups; /* owned */
    size_t n_groups;
    config_access_rule_t *rules; /* owned; default one rule: "**", authenticated */
    size_t n_rules;
    /* "challenge": "bearer" makes winch its own token service (GET /v2/_token): clients
     * without credentials get anonymous tokens, so anonymous docker pulls work beside
     * logged-in ones. Default "basic". */
    bool bearer;
    uint32_t token_ttl_s; /* tokens issued live this long; default 300 */
    char *token_realm;    /* owned; the realm URL to announce; NULL: from the request's Host */
    uint32_t verify_cache_ttl_s; /* a verified password is trusted this long; default 300 */
    uint32_t max_failures;       /* failed checks per client address in a burst; default 10 */
    uint32_t failure_window_s;   /* ... refilled at max_failures per this; default 60 */
} config_auth_t;

/** Bytes of config_t.node_name, its NUL included. */
#define CONFIG_NODE_NAME_MAX 64

/** Entries of "trusted_proxies" at most. */
#define CONFIG_MAX_TRUSTED_PROXIES 64

typedef struct config {
    bool listen_enabled;  /* plain HTTP listener; "listen": "" turns it off */
    char *listen_host;    /* owned; default "0.0.0.0" */
    uint16_t listen_port; /* default 5000 */
    /* Optional TLS listener (issue 3): "tls_listen": "HOST:PORT" with tls_cert and tls_key. */
    bool tls_listen_enabled;
    char *tls_listen_host; /* owned; NULL when disabled */
    uint16_t tls_listen_port;
    /* Optional admin listener (config_admin.c): "admin_listen": "HOST:PORT", plain HTTP, only the
     * operator's endpoints (/metrics, /healthz, /readyz, /_winch/). When it is on, the public
     * listeners answer /metrics and /_winch/ only with "public_metrics": true. */
    bool admin_listen_enabled;
    char *admin_listen_host; /* owned; NULL when disabled */
    uint16_t admin_listen_port;
    bool public_metrics; /* default false */
    char *tls_cert;      /* owned; PEM certificate chain */
    char *tls_key;       /* owned; PEM private key */
    char *cache_dir;     /* owned; default "./winch-cache" */
    /* [0] is the default upstream. */
    config_upstream_t upstreams[CONFIG_MAX_UPSTREAMS];
    size_t n_upstreams; /* >= 1; default one: docker.io=https://registry-1.docker.io */
    char *log_level;    /* owned; "error" | "warn" | "info" (default) | "debug" */
    bool log_json;      /* "log_format": "json" (one JSON object per access line); else "text" */
    /* "node_name": this node's name in Cache-Status (clusters); default "winch". */
    char node_name[CONFIG_NODE_NAME_MAX];
    bool node_name_set; /* the file names the node: access lines carry it too */
    /* "trusted_proxies" (config_trusted.c): the peers whose X-Forwarded-For names the client
     * (proxy/realip.h) in access and auth lines, login throttling and client groups. Owned;
     * NULL when none (X-Forwarded-For is then ignored). No network is /0. */
    config_cidr_t *trusted_proxies;
    size_t n_trusted_proxies;

    /* Upstream timeouts, milliseconds. */
    uint32_t upstream_connect_timeout_ms;  /* TCP (+TLS) connect; default 5000 */
    uint32_t upstream_response_timeout_ms; /* request sent -> response headers; default 15000 */
    /* No body byte for this long fails a transfer; default 30000. */
    uint32_t upstream_idle_timeout_ms;
    uint32_t upstream_keepalive_ms; /* idle pooled connection lifetime; default 30000 */
    /* Per origin (the registry, each CDN or token host it sends winch to), busy + idle;
     * default 32. */
    uint32_t upstream_max_conns;
    uint32_t upstream_max_redirects; /* redirects followed per request; default 5 */
    /* Requests that may wait for a connection, per origin and lane (priority: manifests, tag
     * checks, lists, tokens; bulk: blob fills); more are refused at once (503). Default 256. */
    uint32_t upstream_max_queue;
    /* A request still waiting for a connection after this long fails (503); default 10000. */
    uint32_t upstream_queue_timeout_ms;
    /* Whole buffered exchange (manifest, tag check, list, token), from the request to the last
     * body byte, redirects included; default 60000. Blob fills have no such deadline. */
    uint32_t upstream_fetch_deadline_ms;
    /* An upstream 404 for a manifest reference or a blob is remembered this long and answered
     * without asking again; 0 turns it off. Default 10. */
    uint32_t negative_ttl_s;

    /* Client side. */
    uint32_t client_header_timeout_ms; /* head whole within, from accept or 1st byte; 10000 */
    uint32_t client_idle_timeout_ms;   /* keep-alive idle and stalled send; default 120000 */
    uint32_t max_connections;          /* accepted at once; default 4096 */
    uint32_t max_header_bytes;         /* request head, and upstream response head; default 32768 */
    /* Connections from one client address at once (0: no limit); default 256. */
    uint32_t max_connections_per_client;

    /* Cache. */
    /* A tag younger than this is served without asking upstream; default 300. */
    uint32_t tag_ttl_s;
    /* A tag past its TTL waits this long for the upstream's answer, then is served stale while
     * the revalidation finishes in the background; default 1000. */
    uint32_t tag_revalidate_wait_ms;
    /* Consecutive failures that mark an upstream down (0: never), and how often a down
     * upstream is probed; while down, cached content answers at once and uncached requests
     * fail fast. Defaults 5 and 5000. */
    uint32_t upstream_failure_threshold;
    uint32_t upstream_probe_interval_ms;
    /* A Range that ends before the blob does, on a blob still being fetched, waits for the
     * digest check when the blob is at most this big (else it streams, Cache-Control:
     * no-store); default 64 MiB. */
    uint64_t range_verify_max_bytes;
    /* No blob is fetched past this size (chunked upstreams, or a Content-Length beyond it);
     * default 64 GiB. */
    uint64_t max_blob_bytes;
    /* Blob bodies from plain-HTTP upstreams go socket -> pipe -> file by splice(2) rather than
     * through user-space buffers (proxy/producer.c); default true. */
    bool fill_splice;
    uint32_t max_manifest_bytes;  /* default 4 MiB (distribution's own limit) */
    uint32_t max_tags_list_bytes; /* upstream tags/list body bound; default 8 MiB */
    uint64_t index_map_size;      /* LMDB map size in bytes; default 4 GiB */

    /* Retention (config_retention.c): "retention": {...} and "on_disk_full". */
    uint64_t retention_max_size;          /* bytes; 0 = no bound (or a percentage below) */
    uint32_t retention_max_size_pct;      /* 1..100: max_size is this share of the filesystem */
    uint32_t retention_low_watermark_pct; /* evict down to this share of max_size; default 90 */
    uint64_t retention_max_unused_s;      /* evict what was not pulled for this long; 0 = never */
    char **retention_protect;             /* owned; globs over "upstream/repo", never evicted */
    size_t retention_nprotect;
    bool disk_full_pass_through; /* on_disk_full "pass_through": stream uncached when full */

    /* Pull-time policy rules, in order (none by default: everything is allowed). */
    config_policy_rule_t *policy; /* owned; n_policy of them */
    size_t n_policy;

    /* Client authentication (config_auth.c). */
    config_auth_t *auth; /* owned; NULL: no client authentication (everyone reads everything) */
    /* Platforms (config_platforms.c): rules in order, client groups, prefetch bounds. */
    config_platform_rule_t *platform_rules; /* owned; n_platform_rules; NULL when none */
    size_t n_platform_rules;
    config_client_group_t *client_groups; /* owned; n_client_groups; NULL when none */
    size_t n_client_groups;
    uint32_t prefetch_max_concurrent;   /* prefetch fetches running at once; default 8 */
    uint32_t prefetch_max_per_upstream; /* of them, to one upstream; default 4 */
    uint32_t prefetch_max_queue;        /* prefetch fetches waiting; more are dropped; 4096 */
} config_t;

/** Parses a size: digits (bytes) with an optional unit B, KB, MB, GB, TB (powers of 1000) or
 * KiB, MiB, GiB, TiB (powers of 1024), or, when pct is not NULL, "N%" (1..100, into *pct with
 * *bytes 0). Returns NULL when fine, else a static reason. */
const char *config_parse_size(const char *s, uint64_t *bytes, uint32_t *pct);
/** Parses a duration: digits with a unit s, m, h, d or w ("30d", "12h"); plain digits are
 * seconds. Returns NULL when fine, else a static reason. */
const char *config_parse_duration(const char *s, uint64_t *seconds);

/** Builds the configuration from argv (the arguments after the "serve" command: --config FILE,
 * --listen HOST:PORT, --cache-dir DIR, --upstream NAME=URL (repeatable; the first flag given
 * replaces the file's list, later ones append), --log-level LEVEL). On success *out is owned
 * by the caller (config_free). On failure returns WE_CONFIG and writes one line naming the
 * field or flag (and file:line:column for JSON syntax) into err[errlen]. */
int config_load(config_t **out, int argc, char **argv, char *err, size_t errlen);

/** Same, from a JSON text (for tests and tools); `origin` names it in messages. */
int config_from_json(config_t **out, const char *json, size_t len, const char *origin, char *err,
                     size_t errlen);

/** The digests the configuration's pins name (every rule's), for retention to keep with everything
 * they reference. *out is a malloc'd array (free it) of n strings borrowed from c; NULL when n
 * is 0. Returns 0 or -ENOMEM. */
int config_pin_digests(const config_t *c, const char ***out, size_t *n);

/** Looks an upstream up by its name, case-insensitively; "index.docker.io" and
 * "registry-1.docker.io" find "docker.io". Returns a borrowed pointer or NULL. */
const config_upstream_t *config_upstream_find(const config_t *c, const char *name, size_t len);

/** The effective configuration as indented JSON (config_dump.c): every field, defaults
 * included, in the file's spelling. Upstream passwords never appear (only "(redacted)" and
 * where they are read from). Returns a malloc'd string (free it), NULL when out of memory. */
char *config_dump_json(const config_t *c);

/** True when top-level field (as config_dump_json names it: "listen", "upstreams", "auth",
 * ...) has the same effective value in a and b. False when out of memory. */
bool config_same_field(const config_t *a, const config_t *b, const char *field);

/** True when a and b configure the same upstreams, in the same order, with the same effective
 * settings apart from their credentials (username, password, password_file, password_env).
 * False when out of memory. */
bool config_same_upstreams_but_credentials(const config_t *a, const config_t *b);

/** Frees everything; NULL is fine. */
void config_free(config_t *c);

#endif
