/* `winch ls`, `winch df`, `winch rm`, `winch prune`: the cache as docker images / system df /
 * rmi / image prune show and manage a host's images. Reads go straight to the index (a serving
 * winch may run beside); removals go through cache_gc, whose transactions are safe beside a
 * serving winch (cache.h). Every listing has --json. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/timeutil.h"
#include "proxy/cli_cache.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"

/* ---- Shared by the commands -------------------------------------------------------------- */

static int cmd_open(int argc, char **argv, cache_cmd_t *cmd, bool create)
{
    memset(cmd, 0, sizeof *cmd);
    cmd->rest = calloc((size_t)argc + 1, sizeof *cmd->rest);
    if (!cmd->rest)
        return 1;
    int rc = cli_common_parse(argc, argv, cmd->rest, &cmd->o);
    if (rc)
        return rc;
    if ((rc = cli_load_config(&cmd->o, &cmd->cfg)))
        return rc;
    uv_loop_init(&cmd->loop);
    cmd->loop_ok = true;
    if (create) {
        /* No cache yet: make it, holding the lock as a server would. A server that made it
         * meanwhile holds the lock (-EBUSY): then open it shared like any other. */
        cache_opts_t co = {
            .loop = &cmd->loop, .dir = cmd->cfg->cache_dir, .map_size = cmd->cfg->index_map_size};
        char path[4200];
        snprintf(path, sizeof path, "%s/index/data.mdb", cmd->cfg->cache_dir);
        if (access(path, F_OK) != 0 && cache_open(&cmd->cache, &co) == 0)
            return 0;
    }
    return cli_open_cache(&cmd->loop, cmd->cfg, &cmd->cache);
}

int cache_cmd_open(int argc, char **argv, cache_cmd_t *cmd)
{
    return cmd_open(argc, argv, cmd, false);
}

int cache_cmd_open_create(int argc, char **argv, cache_cmd_t *cmd)
{
    return cmd_open(argc, argv, cmd, true);
}

void cache_cmd_close(cache_cmd_t *cmd)
{
    if (cmd->cache) {
        uv_run(&cmd->loop, UV_RUN_DEFAULT);
        cache_close(cmd->cache);
    }
    if (cmd->loop_ok) {
        uv_run(&cmd->loop, UV_RUN_DEFAULT);
        uv_loop_close(&cmd->loop);
    }
    config_free(cmd->cfg);
    free(cmd->rest);
}

void cache_cmd_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(j);
}

/* Bytes on disk for the image at digest: the manifest and every cached thing it reaches, each
 * once. */
struct seen {
    char (*d)[REF_DIGEST_MAX + 1];
    size_t n, cap;
};

static bool seen_add(struct seen *s, const char *digest)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->d[i], digest) == 0)
            return false;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 32;
        void *p = realloc(s->d, nc * sizeof *s->d);
        if (!p)
            return false;
        s->d = p;
        s->cap = nc;
    }
    snprintf(s->d[s->n++], REF_DIGEST_MAX + 1, "%s", digest);
    return true;
}

static uint64_t size_walk(cache_t *c, const char *digest, struct seen *s, int depth)
{
    cache_entry_t e;
    if (depth > 4 || !seen_add(s, digest) || cache_lookup(c, digest, &e))
        return 0;
    uint64_t total = e.size;
    cache_ref_t *refs;
    size_t n;
    if (e.kind == CACHE_MANIFEST && cache_refs_get(c, digest, &refs, &n) == 0) {
        for (size_t i = 0; i < n; i++)
            if (refs[i].role != IMAGE_SUBJECT)
                total += size_walk(c, refs[i].digest, s, depth + 1);
        free(refs);
    }
    return total;
}

uint64_t cache_cmd_image_size(cache_t *c, const char *digest)
{
    struct seen s = {0};
    uint64_t n = size_walk(c, digest, &s, 0);
    free(s.d);
    return n;
}

/* "os/arch[/variant]" of a config blob, or "" */
static void config_platform(cache_t *c, const char *digest, char *out, size_t len)
{
    char *bytes;
    size_t n;
    out[0] = '\0';
    if (cache_read_manifest(c, digest, 1 << 20, &bytes, &n))
        return;
    json_t *j = json_loadb(bytes, n, 0, NULL);
    free(bytes);
    const char *os = json_string_value(json_object_get(j, "os"));
    const char *arch = json_string_value(json_object_get(j, "architecture"));
    const char *var = json_string_value(json_object_get(j, "variant"));
    if (os && arch)
        snprintf(out, len, "%s/%s%s%s", os, arch, var ? "/" : "", var ? var : "");
    json_decref(j);
}

int cache_cmd_platforms(cache_t *c, const char *digest, json_t *list)
{
    char *bytes;
    size_t n;
    cache_entry_t e;
    image_t *img = NULL;
    if (cache_lookup(c, digest, &e) || cache_read_manifest(c, digest, 64 << 20, &bytes, &n))
        return WE_NOTFOUND;
    int rc = image_parse(bytes, n, e.media_type, &img, NULL, 0);
    free(bytes);
    if (rc)
        return rc;
    char p[128];
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        if (img->kind == IMAGE_MANIFEST && r->role == IMAGE_CONFIG) {
            config_platform(c, r->digest, p, sizeof p);
            if (p[0])
                json_array_append_new(list, json_string(p));
        } else if (r->role == IMAGE_CHILD && r->has_platform && !r->attestation) {
            snprintf(p, sizeof p, "%s/%s%s%s", r->platform.os, r->platform.arch,
                     r->platform.variant[0] ? "/" : "", r->platform.variant);
            json_array_append_new(list, json_string(p));
        }
    }
    image_free(img);
    return 0;
}

/* ---- winch ls ------------------------------------------------------------------------------ */

struct ls {
    cache_cmd_t *cmd;
    const char *filter_repo;
    json_t *rows;
    json_t *pins; /* "upstream/repo:tag" -> true */
};

static bool repo_matches(const struct ls *l, const char *upstream, const char *repo)
{
    const char *f = l->filter_repo;
    if (!f)
        return true;
    size_t ul = strlen(upstream);
    if (strcmp(f, repo) == 0 || (strncmp(f, "library/", 8) != 0 &&
                                 strncmp(repo, "library/", 8) == 0 && strcmp(f, repo + 8) == 0))
        return true;
    return strncmp(f, upstream, ul) == 0 && f[ul] == '/' && strcmp(f + ul + 1, repo) == 0;
}

static json_t *ls_row(struct ls *l, const char *upstream, const char *repo, const char *tag,
                      const char *digest, int64_t pulled, uint32_t pulls)
{
    cache_t *c = l->cmd->cache;
    json_t *plats = json_array();
    cache_cmd_platforms(c, digest, plats);
    char pin_key[600];
    snprintf(pin_key, sizeof pin_key, "%s/%s:%s", upstream, repo, tag ? tag : "");
    bool pinned = tag && json_object_get(l->pins, pin_key) != NULL;
    return json_pack("{s:s, s:s, s:s?, s:s, s:o, s:I, s:I, s:I, s:b}", "upstream", upstream,
                     "repository", repo, "tag", tag, "digest", digest, "platforms", plats, "size",
                     (json_int_t)cache_cmd_image_size(c, digest), "last_pulled_ms",
                     (json_int_t)pulled, "pulls", (json_int_t)pulls, "pinned", pinned);
}

static int ls_tag(void *arg, const cache_tag_info_t *t)
{
    struct ls *l = arg;
    if (!repo_matches(l, t->upstream, t->repo))
        return 0;
    cache_entry_t e;
    uint32_t pulls = t->pulls;
    if (cache_lookup(l->cmd->cache, t->digest, &e))
        return 0; /* a tag whose manifest is gone: prune's business */
    json_t *row = ls_row(l, t->upstream, t->repo, t->tag, t->digest,
                         t->pulled_ms ? t->pulled_ms : e.accessed_ms, pulls);
    if (row)
        json_array_append_new(l->rows, row);
    return 0;
}

static int ls_dangling(void *arg, const char *digest)
{
    struct ls *l = arg;
    cache_entry_t e;
    if (cache_lookup(l->cmd->cache, digest, &e))
        return 0;
    json_t *row = ls_row(l, "<none>", "<none>", NULL, digest, e.accessed_ms, e.pulls);
    if (row)
        json_array_append_new(l->rows, row);
    return 0;
}

static int ls_pin(void *arg, const char *up, const char *repo, const char *tag, const char *d)
{
    struct ls *l = arg;
    char k[600];
    (void)d;
    snprintf(k, sizeof k, "%s/%s:%s", up, repo, tag);
    json_object_set_new(l->pins, k, json_true());
    return 0;
}

static void ls_print(json_t *rows)
{
    static const char *const hdr[] = {"UPSTREAM", "REPOSITORY",  "TAG",   "DIGEST", "PLATFORMS",
                                      "SIZE",     "LAST PULLED", "PULLS", "PINNED"};
    cli_table_t *t;
    if (cli_table_new(&t, 9, hdr))
        return;
    int64_t now = time_wall_ms();
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r)
    {
        char dig[20], size[16], ago[40], pulls[16], plats[256] = "";
        const char *d = json_string_value(json_object_get(r, "digest"));
        const char *colon = strchr(d, ':');
        snprintf(dig, sizeof dig, "%.12s", colon ? colon + 1 : d);
        cli_size((uint64_t)json_integer_value(json_object_get(r, "size")), size, sizeof size);
        cli_ago(json_integer_value(json_object_get(r, "last_pulled_ms")), now, ago, sizeof ago);
        snprintf(pulls, sizeof pulls, "%lld",
                 (long long)json_integer_value(json_object_get(r, "pulls")));
        size_t k;
        json_t *p;
        json_array_foreach(json_object_get(r, "platforms"), k, p)
        {
            size_t pl = strlen(plats);
            snprintf(plats + pl, sizeof plats - pl, "%s%s", k ? "," : "", json_string_value(p));
        }
        const char *tag = json_string_value(json_object_get(r, "tag"));
        const char *cells[9] = {json_string_value(json_object_get(r, "upstream")),
                                json_string_value(json_object_get(r, "repository")),
                                tag ? tag : "<none>",
                                dig,
                                plats[0] ? plats : "-",
                                size,
                                ago,
                                pulls,
                                json_is_true(json_object_get(r, "pinned")) ? "yes" : "no"};
        cli_table_add(t, cells);
    }
    cli_table_print(t);
}

int cli_ls(int argc, char **argv)
{
    cache_cmd_t cmd;
    bool dangling_only = false;
    int rc = cache_cmd_open(argc, argv, &cmd);
    if (rc)
        goto out;
    struct ls l = {.cmd = &cmd, .rows = json_array(), .pins = json_object()};
    for (int i = 1; i < cmd.o.argc; i++) {
        const char *a = cmd.o.argv[i];
        if (strcmp(a, "--filter") == 0 && i + 1 < cmd.o.argc) {
            a = cmd.o.argv[++i];
            if (strcmp(a, "dangling=true") == 0) {
                dangling_only = true;
                continue;
            }
            if (strcmp(a, "dangling=false") == 0)
                continue;
            fprintf(stderr, "winch ls: unknown filter \"%s\" (dangling=true|false)\n", a);
            rc = 2;
        } else if (a[0] == '-' || l.filter_repo) {
            usage_error("ls");
            rc = 2;
        } else {
            l.filter_repo = a;
        }
    }
    if (rc == 0) {
        cache_pin_each(cmd.cache, ls_pin, &l);
        if (!dangling_only && cache_tags_all_each(cmd.cache, ls_tag, &l) < 0)
            rc = 1;
        if (!l.filter_repo && cache_dangling_each(cmd.cache, ls_dangling, &l) < 0)
            rc = 1;
    }
    if (rc == 0) {
        if (cmd.o.json)
            cache_cmd_json(json_incref(l.rows));
        else
            ls_print(l.rows);
    }
    json_decref(l.rows);
    json_decref(l.pins);
out:
    cache_cmd_close(&cmd);
    return rc;
}

/* ---- winch df ---------------------------------------------------------------------------------- */

int cli_df(int argc, char **argv)
{
    cache_cmd_t cmd;
    cache_usage_t u;
    int rc = cache_cmd_open(argc, argv, &cmd);
    if (rc)
        goto out;
    if (cmd.o.argc > 1) {
        usage_error("df");
        rc = 2;
        goto out;
    }
    if (cache_usage(cmd.cache, &u) < 0) {
        fprintf(stderr, "winch df: cannot read the index\n");
        rc = 1;
        goto out;
    }
    const config_t *cfg = cmd.cfg;
    char bound[48] = "none";
    if (cfg->retention_max_size_pct)
        snprintf(bound, sizeof bound, "%u%% of the filesystem", cfg->retention_max_size_pct);
    else if (cfg->retention_max_size)
        cli_size(cfg->retention_max_size, bound, sizeof bound);
    if (cmd.o.json) {
        cache_cmd_json(json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "total", (json_int_t)u.total,
            "referenced", (json_int_t)u.referenced, "reclaimable", (json_int_t)u.unreferenced,
            "shared_saved", (json_int_t)u.shared_saved, "blobs", (json_int_t)u.blobs, "manifests",
            (json_int_t)u.manifests, "tags", (json_int_t)u.tags, "dangling", (json_int_t)u.dangling,
            "max_size", (json_int_t)cfg->retention_max_size, "max_size_pct",
            (json_int_t)cfg->retention_max_size_pct, "bound", bound));
        goto out;
    }
    static const char *const hdr[] = {"TOTAL", "REFERENCED", "RECLAIMABLE", "SHARED",
                                      "BLOBS", "MANIFESTS",  "TAGS",        "BOUND"};
    char c0[16], c1[16], c2[40], c3[16], c4[24], c5[24], c6[24];
    cli_size(u.total, c0, sizeof c0);
    cli_size(u.referenced, c1, sizeof c1);
    char rs[16];
    cli_size(u.unreferenced, rs, sizeof rs);
    snprintf(c2, sizeof c2, "%s (%llu%%)", rs,
             u.total ? (unsigned long long)(u.unreferenced * 100 / u.total) : 0ULL);
    cli_size(u.shared_saved, c3, sizeof c3);
    snprintf(c4, sizeof c4, "%llu", (unsigned long long)u.blobs);
    snprintf(c5, sizeof c5, "%llu (%llu dangling)", (unsigned long long)u.manifests,
             (unsigned long long)u.dangling);
    snprintf(c6, sizeof c6, "%llu", (unsigned long long)u.tags);
    const char *cells[8] = {c0, c1, c2, c3, c4, c5, c6, bound};
    cli_table_t *t;
    if (cli_table_new(&t, 8, hdr) == 0 && cli_table_add(t, cells) == 0)
        cli_table_print(t);
out:
    cache_cmd_close(&cmd);
    return rc;
}
