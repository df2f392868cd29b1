/* `winch pin`, `winch unpin`, `winch pins`: pins managed without editing the configuration.
 *
 *   winch pin [--config FILE | --cache-dir DIR] [--server HOST:PORT] REF [DIGEST]
 *   winch unpin [--config FILE | --cache-dir DIR] REF
 *   winch pins [--config FILE | --cache-dir DIR] [--json]
 *
 * A stored pin lives in the cache's LMDB (cache/pins.c), written from this process beside a
 * serving winch, which reads the pin of a tag on every request by tag: a pin takes effect on the
 * next request, without a restart. Without DIGEST, `winch pin` pins what the tag resolves to
 * now: through the running winch (a HEAD by tag to --server, else to the configured listener when
 * a server holds the cache), else from the tag's last known digest in the cache. A pin may name
 * a tag the upstream does not have (an alias, as `docker tag` makes one).
 *
 * Config pins and stored pins both count; on the same tag the configuration's wins, and the
 * commands say so. */
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/mediatype.h"
#include "common/timeutil.h"
#include "proxy/cli_commands.h"
#include "proxy/cli_http.h"
#include "proxy/cli_policy.h"
#include "proxy/usage.h"

#define HEAD_TIMEOUT_S 15

/* ---- Resolving a tag through a running winch ---------------------------------------------- */

/* HEAD /v2/REPO/manifests/REF?ns=UPSTREAM at server (REF a tag or a digest). Returns the HTTP
 * status, with the Docker-Content-Digest answered in digest ("" when none); 0 when no answer
 * came (said on stderr). */
static int head_manifest(const char *server, const policy_ref_t *r, const char *ref,
                         char digest[REF_DIGEST_MAX + 1])
{
    char target[1024], accept[512], err[256];
    digest[0] = '\0';
    snprintf(target, sizeof target, "/v2/%s/manifests/%s?ns=%s", r->repo, ref, r->upstream->name);
    snprintf(accept, sizeof accept, "Accept: %s, %s, %s, %s\r\n", MT_OCI_INDEX, MT_OCI_MANIFEST,
             MT_DOCKER_LIST, MT_DOCKER_V2);
    cli_http_resp_t *resp = malloc(sizeof *resp);
    bool refused = false;
    if (!resp) {
        fprintf(stderr, "winch pin: out of memory\n");
        return 0;
    }
    if (cli_http_request(server, "HEAD", target, accept, HEAD_TIMEOUT_S * 1000, 0, resp, &refused,
                         err, sizeof err) < 0) {
        if (refused)
            fprintf(stderr, "winch pin: no winch answers at %s: %s\n", server, err);
        else
            fprintf(stderr, "winch pin: the winch at %s did not answer: %s\n", server, err);
        free(resp);
        return 0;
    }
    int status = resp->status;
    size_t n = 0;
    const char *v = cli_http_header(resp, "Docker-Content-Digest", &n);
    if (status == 200 && v && n <= REF_DIGEST_MAX && ref_digest_parse(v, n, NULL) == 0) {
        memcpy(digest, v, n);
        digest[n] = '\0';
    }
    cli_http_resp_free(resp);
    free(resp);
    return status;
}

/* What the tag resolves to at server: 0 with digest, or -1 after saying why on stderr. */
static int head_digest(const char *server, const policy_ref_t *r, char digest[REF_DIGEST_MAX + 1])
{
    int status = head_manifest(server, r, r->tag, digest);
    if (status == 0)
        return -1;
    if (status != 200) {
        fprintf(stderr, "winch pin: the winch at %s answered %d for %s/%s:%s\n", server, status,
                r->upstream->name, r->repo, r->tag);
        return -1;
    }
    if (!digest[0]) {
        fprintf(stderr, "winch pin: the winch at %s sent no usable Docker-Content-Digest\n",
                server);
        return -1;
    }
    return 0;
}

/* The listener of the winch serving this cache, as its configuration says; "" when unknown. */
static void configured_server(const config_t *cfg, char *out, size_t len)
{
    out[0] = '\0';
    if (!cfg->listen_enabled || cfg->listen_port == 0)
        return;
    const char *h = cfg->listen_host;
    bool v6 = strchr(h, ':') != NULL;
    if (strcmp(h, "0.0.0.0") == 0)
        h = "127.0.0.1";
    else if (strcmp(h, "::") == 0)
        h = "::1";
    snprintf(out, len, v6 ? "[%s]:%u" : "%s:%u", h, (unsigned)cfg->listen_port);
}

/* A digest given by hand: asks the running winch (which fetches and caches it) whether the
 * upstream has it in the repository, since a pin to a digest it lacks makes every pull of the
 * tag fail. Only a note: the pin may be set ahead of a push. */
static void check_digest(cli_pctx_t *x, const char *server, const policy_ref_t *r,
                         const char *digest)
{
    char addr[300], got[REF_DIGEST_MAX + 1];
    if (!server) {
        configured_server(x->cfg, addr, sizeof addr);
        if (!addr[0] || !cache_server_running(x->cache))
            return;
        server = addr;
    }
    int status = head_manifest(server, r, digest, got);
    if (status == 404)
        printf("note: %s/%s has no manifest %s upstream: pulls of the tag fail until it has\n",
               r->upstream->name, r->repo, digest);
    else if (status != 200 && status != 0)
        printf("note: the winch at %s answered %d for %s/%s@%s\n", server, status,
               r->upstream->name, r->repo, digest);
}

/* What the tag resolves to now: through a running winch, else the cache's last known digest. */
static int resolve(cli_pctx_t *x, const char *server, const policy_ref_t *r,
                   char digest[REF_DIGEST_MAX + 1])
{
    char addr[300];
    if (server)
        return head_digest(server, r, digest);
    configured_server(x->cfg, addr, sizeof addr);
    if (addr[0] && cache_server_running(x->cache) && head_digest(addr, r, digest) == 0)
        return 0;
    int64_t checked;
    if (cache_tag_get(x->cache, r->upstream->name, r->repo, r->tag, digest, &checked) == 0) {
        char ago[64];
        cli_ago(checked, time_wall_ms(), ago, sizeof ago);
        printf("%s/%s:%s was %s when winch last asked the upstream (%s)\n", r->upstream->name,
               r->repo, r->tag, digest, ago);
        return 0;
    }
    fprintf(stderr,
            "winch pin: cannot tell what %s/%s:%s is: no running winch answered and the cache "
            "has never seen the tag; give the digest (winch pin REF sha256:...)\n",
            r->upstream->name, r->repo, r->tag);
    return -1;
}

/* ---- Shared ------------------------------------------------------------------------------- */

/* The configuration's pin of r's tag (the first matching rule's), or NULL; *rule gets its index. */
static const char *config_pin_of(const cli_pctx_t *x, const policy_ref_t *r, int *rule)
{
    *rule = policy_match(x->policy, r->upstream->name, r->repo);
    if (*rule < 0)
        return NULL;
    const config_policy_rule_t *c = policy_rule(x->policy, (size_t)*rule);
    for (size_t i = 0; i < c->n_pins; i++)
        if (strcmp(c->pins[i].tag, r->tag) == 0)
            return c->pins[i].digest;
    return NULL;
}

static int parse_tag_ref(const cli_pctx_t *x, const char *cmd, const char *text, policy_ref_t *r)
{
    char err[256];
    if (policy_ref_parse(x->cfg, text, r, err, sizeof err) != 0) {
        fprintf(stderr, "winch %s: %s\n", cmd, err);
        return 2;
    }
    if (!r->tag[0]) {
        fprintf(stderr, "winch %s: %s names a digest; a pin is a tag (REPO:TAG)\n", cmd, text);
        return 2;
    }
    return 0;
}

typedef struct wait_op {
    bool done;
    int status;
} wait_op_t;

static void on_written(void *arg, int status)
{
    wait_op_t *w = arg;
    w->status = status;
    w->done = true;
}

/* Reads the options of a pin command: the common ones, and --server for pin. */
static int parse_args(int argc, char **argv, char **rest, cli_common_t *o, const char **server,
                      int min, int max)
{
    int rc = cli_common_parse(argc, argv, rest, o);
    if (rc)
        return rc;
    int k = 1;
    for (int i = 1; i < o->argc; i++) {
        const char *a = o->argv[i];
        if (server && strcmp(a, "--server") == 0 && i + 1 < o->argc) {
            *server = o->argv[++i];
        } else if (server && strncmp(a, "--server=", 9) == 0) {
            *server = a + 9;
        } else if (a[0] == '-') {
            fprintf(stderr, "winch %s: unknown option %s\n", argv[0], a);
            usage_error(argv[0]);
            return 2;
        } else {
            o->argv[k++] = o->argv[i];
        }
    }
    o->argc = k;
    if (o->argc - 1 < min || o->argc - 1 > max) {
        usage_error(argv[0]);
        return 2;
    }
    return 0;
}

/* ---- winch pin ----------------------------------------------------------------------------- */

int cli_pin(int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    const char *server = NULL;
    cli_common_t o;
    cli_pctx_t x = {0};
    policy_ref_t r;
    char digest[REF_DIGEST_MAX + 1] = "";
    int status = 2, rule;
    if (!rest || (status = parse_args(argc, argv, rest, &o, &server, 1, 2)) != 0)
        goto out;
    if ((status = cli_pctx_open(&x, &o, true)) != 0 ||
        (status = parse_tag_ref(&x, "pin", o.argv[1], &r)) != 0)
        goto out;
    status = 1;
    if (o.argc == 3) {
        if (strlen(o.argv[2]) > REF_DIGEST_MAX ||
            ref_digest_parse(o.argv[2], strlen(o.argv[2]), NULL) != 0) {
            fprintf(stderr, "winch pin: %s is not a sha256 or sha512 digest\n", o.argv[2]);
            status = 2;
            goto out;
        }
        snprintf(digest, sizeof digest, "%s", o.argv[2]);
        check_digest(&x, server, &r, digest);
    } else if (resolve(&x, server, &r, digest) != 0) {
        goto out;
    }
    /* Said before writing: a pin the policy refuses, or that the configuration overrides. */
    policy_request_t q = {.upstream = r.upstream->name,
                          .repo = r.repo,
                          .object = POLICY_MANIFEST,
                          .tag = r.tag,
                          .stored_pin = digest,
                          .now_ms = cli_policy_now_ms()};
    policy_decision_t d;
    policy_decide(x.policy, &q, &d);
    if (d.verdict == POLICY_DENY)
        printf("note: the policy refuses this tag, so the pin has no effect while it does: %s\n",
               d.message);
    const char *cfg_pin = config_pin_of(&x, &r, &rule);
    if (cfg_pin && strcmp(cfg_pin, digest) != 0)
        printf("note: the configuration pins this tag to %s (rule %d); it wins over the stored "
               "pin while it is there\n",
               cfg_pin, rule + 1);
    wait_op_t w = {0};
    int rc = cache_pin_set(x.cache, r.upstream->name, r.repo, r.tag, digest, on_written, &w);
    if (rc == 0)
        cli_pctx_wait(&x, &w.done);
    if (rc < 0 || w.status < 0) {
        fprintf(stderr, "winch pin: storing the pin failed: %s\n", err_str(rc < 0 ? rc : w.status));
        goto out;
    }
    printf("pinned %s/%s:%s to %s%s\n", r.upstream->name, r.repo, r.tag, digest,
           cache_server_running(x.cache) ? "; the running winch serves it from its next request"
                                         : "");
    status = 0;
out:
    cli_pctx_close(&x);
    free(rest);
    return status;
}

/* ---- winch unpin --------------------------------------------------------------------------- */

int cli_unpin(int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    cli_common_t o;
    cli_pctx_t x = {0};
    policy_ref_t r;
    cache_pin_t pin;
    int status = 2, rule;
    if (!rest || (status = parse_args(argc, argv, rest, &o, NULL, 1, 1)) != 0)
        goto out;
    if ((status = cli_pctx_open(&x, &o, true)) != 0 ||
        (status = parse_tag_ref(&x, "unpin", o.argv[1], &r)) != 0)
        goto out;
    status = 1;
    const char *cfg_pin = config_pin_of(&x, &r, &rule);
    bool stored = cache_pin_get(x.cache, r.upstream->name, r.repo, r.tag, &pin) == 0;
    wait_op_t w = {0};
    int rc = stored ? cache_pin_delete(x.cache, r.upstream->name, r.repo, r.tag, on_written, &w)
                    : WE_NOTFOUND;
    if (rc == 0)
        cli_pctx_wait(&x, &w.done);
    if (rc == WE_NOTFOUND || w.status == WE_NOTFOUND) {
        fprintf(stderr, "winch unpin: %s/%s:%s has no stored pin\n", r.upstream->name, r.repo,
                r.tag);
    } else if (rc < 0 || w.status < 0) {
        fprintf(stderr, "winch unpin: removing the pin failed: %s\n",
                err_str(rc < 0 ? rc : w.status));
        goto out;
    } else {
        printf("unpinned %s/%s:%s (was %s)\n", r.upstream->name, r.repo, r.tag, pin.digest);
        status = 0;
    }
    if (cfg_pin)
        printf("note: the configuration pins %s/%s:%s to %s (rule %d); remove it there\n",
               r.upstream->name, r.repo, r.tag, cfg_pin, rule + 1);
out:
    cli_pctx_close(&x);
    free(rest);
    return status;
}

/* ---- winch pins ---------------------------------------------------------------------------- */

typedef struct pins_out {
    cli_pctx_t *x;
    bool json;
    json_t *arr;
    cli_table_t *t;
    int64_t now;
    int failed;
} pins_out_t;

static void add_row(pins_out_t *p, const char *ref, const char *digest, int64_t since,
                    const char *by, const char *note, const char *source, int rule, bool active)
{
    if (p->json) {
        json_t *o = json_object();
        json_object_set_new(o, "reference", json_string(ref));
        json_object_set_new(o, "digest", json_string(digest));
        json_object_set_new(o, "source", json_string(source));
        json_object_set_new(o, "set_ms", since > 0 ? json_integer(since) : json_null());
        json_object_set_new(o, "set_by", json_string(by));
        json_object_set_new(o, "rule", rule >= 0 ? json_integer(rule + 1) : json_null());
        json_object_set_new(o, "active", json_boolean(active));
        json_object_set_new(o, "note", note[0] ? json_string(note) : json_null());
        if (json_array_append_new(p->arr, o) < 0)
            p->failed = 1;
        return;
    }
    char ago[64];
    if (since > 0)
        cli_ago(since, p->now, ago, sizeof ago);
    else
        snprintf(ago, sizeof ago, "-");
    const char *cells[] = {ref, digest, ago, by, note};
    if (cli_table_add(p->t, cells) < 0)
        p->failed = 1;
}

static int config_pin_row(void *arg, size_t rule, const char *match, const char *tag,
                          const char *digest)
{
    pins_out_t *p = arg;
    char ref[700], note[200] = "";
    snprintf(ref, sizeof ref, "%s:%s", match, tag);
    int k = policy_shadowed_by(p->x->policy, rule);
    if (k >= 0)
        snprintf(note, sizeof note, "never used: rule %d (%s) comes first", k + 1,
                 policy_rule(p->x->policy, (size_t)k)->match);
    char by[32];
    snprintf(by, sizeof by, "config (rule %zu)", rule + 1);
    add_row(p, ref, digest, 0, by, note, "config", (int)rule, k < 0);
    return 0;
}

static int stored_pin_row(void *arg, const char *upstream, const char *repo, const char *tag,
                          const cache_pin_t *pin)
{
    pins_out_t *p = arg;
    char ref[700], note[200] = "";
    policy_ref_t r = {.upstream = config_upstream_find(p->x->cfg, upstream, strlen(upstream))};
    snprintf(ref, sizeof ref, "%s/%s:%s", upstream, repo, tag);
    snprintf(r.repo, sizeof r.repo, "%s", repo);
    snprintf(r.tag, sizeof r.tag, "%s", tag);
    int rule = -1;
    const char *cfg_pin = r.upstream ? config_pin_of(p->x, &r, &rule) : NULL;
    bool active = r.upstream != NULL;
    if (!r.upstream) {
        snprintf(note, sizeof note, "upstream %s is not configured", upstream);
    } else if (cfg_pin) {
        active = strcmp(cfg_pin, pin->digest) == 0;
        snprintf(note, sizeof note, "%s: the configuration pins it (rule %d)%s",
                 active ? "same as config" : "overridden", rule + 1,
                 active ? "" : " to another digest");
    }
    add_row(p, ref, pin->digest, pin->set_ms, "winch pin", note, "stored", rule, active);
    return 0;
}

int cli_pins(int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    cli_common_t o;
    cli_pctx_t x = {0};
    pins_out_t p = {0};
    int status = 2;
    static const char *const headers[] = {"REFERENCE", "DIGEST", "SINCE", "SET BY", "NOTE"};
    if (!rest || (status = parse_args(argc, argv, rest, &o, NULL, 0, 0)) != 0)
        goto out;
    if ((status = cli_pctx_open(&x, &o, false)) != 0)
        goto out;
    p.x = &x;
    p.json = o.json;
    p.now = time_wall_ms();
    if ((o.json && !(p.arr = json_array())) || (!o.json && cli_table_new(&p.t, 5, headers) < 0)) {
        fprintf(stderr, "winch: out of memory\n");
        status = 1;
        goto out;
    }
    policy_pins_each(x.policy, config_pin_row, &p);
    if (x.cache && cache_pins_list(x.cache, NULL, NULL, stored_pin_row, &p) < 0) {
        fprintf(stderr, "winch pins: reading the stored pins failed\n");
        status = 1;
        goto out;
    }
    if (o.json) {
        char *text = json_dumps(p.arr, JSON_INDENT(2));
        if (text)
            printf("%s\n", text);
        free(text);
    } else {
        cli_table_print(p.t);
        p.t = NULL;
        if (!x.cache)
            printf("(no cache at %s yet: only the configuration's pins)\n", x.cfg->cache_dir);
    }
    status = p.failed ? 1 : 0;
out:
    cli_table_free(p.t);
    json_decref(p.arr);
    cli_pctx_close(&x);
    free(rest);
    return status;
}
