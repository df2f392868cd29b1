/* `winch rm REF...` and `winch prune [--dry-run] [--unused-for DURATION]`: removals through
 * cache_gc (scan, then slices that delete index entries before files), safe beside a serving
 * winch. Each removal is printed as it is committed; --dry-run prints exactly what the same
 * prune would remove (unless something is pulled in between: then the real run keeps it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/timeutil.h"
#include "proxy/cli_cache.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"

struct gc_print {
    bool json, dry;
    json_t *items;
    int status;
    cache_gc_result_t r;
    bool done;
};

static void print_item(void *arg, const cache_gc_item_t *it)
{
    struct gc_print *p = arg;
    if (it->what == CACHE_GC_TAG) {
        if (p->json)
            json_array_append_new(p->items,
                                  json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "tag",
                                            "upstream", it->upstream, "repository", it->repo, "tag",
                                            it->tag, "digest", it->digest, "why", it->why));
        else
            printf("%s: %s/%s:%s\n", p->dry ? "Would untag" : "Untagged", it->upstream, it->repo,
                   it->tag);
        return;
    }
    const char *kind = it->kind == CACHE_MANIFEST ? "manifest" : "blob";
    if (p->json) {
        json_array_append_new(p->items,
                              json_pack("{s:s, s:s, s:I, s:s}", "type", kind, "digest", it->digest,
                                        "size", (json_int_t)it->size, "why", it->why));
        return;
    }
    char size[16];
    cli_size(it->size, size, sizeof size);
    printf("%s: %s (%s, %s, %s)\n", p->dry ? "Would delete" : "Deleted", it->digest, kind, size,
           it->why);
}

static void on_done(void *arg, int status, const cache_gc_result_t *r)
{
    struct gc_print *p = arg;
    p->status = status;
    p->r = *r;
    p->done = true;
}

static int run_gc(cache_cmd_t *cmd, cache_gc_opts_t *o, struct gc_print *p)
{
    p->items = json_array();
    o->on_item = print_item;
    o->arg = p;
    int rc = cache_gc(cmd->cache, o, on_done, p);
    if (rc < 0) {
        fprintf(stderr, "winch %s: %s\n", cmd->o.argv[0], err_str(rc));
        json_decref(p->items);
        return 1;
    }
    uv_run(&cmd->loop, UV_RUN_DEFAULT);
    if (!p->done || p->status < 0) {
        fprintf(stderr, "winch %s: %s\n", cmd->o.argv[0], err_str(p->done ? p->status : -EIO));
        json_decref(p->items);
        return 1;
    }
    char size[16];
    cli_size(p->r.freed, size, sizeof size);
    if (p->json)
        cache_cmd_json(json_pack("{s:o, s:I, s:b, s:I}", "items", p->items, "freed",
                                 (json_int_t)p->r.freed, "dry_run", p->dry, "kept_in_use",
                                 (json_int_t)p->r.skipped));
    else {
        json_decref(p->items);
        if (p->r.skipped)
            printf("Kept %llu item(s) pulled since the scan\n", (unsigned long long)p->r.skipped);
        printf("Total reclaimed space: %s%s\n", size, p->dry ? " (dry run: nothing removed)" : "");
    }
    return 0;
}

int cli_rm(int argc, char **argv)
{
    cache_cmd_t cmd;
    cache_gc_target_t *t = NULL;
    cli_ref_t *refs = NULL;
    size_t n = 0;
    int rc = cache_cmd_open(argc, argv, &cmd);
    if (rc)
        goto out;
    for (int i = 1; i < cmd.o.argc && rc == 0; i++)
        if (cmd.o.argv[i][0] == '-') {
            fprintf(stderr, "winch rm: unknown option %s\n", cmd.o.argv[i]);
            rc = 2;
        }
    if (rc || cmd.o.argc < 2) {
        usage_error("rm");
        rc = 2;
        goto out;
    }
    t = calloc((size_t)cmd.o.argc, sizeof *t);
    refs = calloc((size_t)cmd.o.argc, sizeof *refs);
    if (!t || !refs) {
        rc = 1;
        goto out;
    }
    for (int i = 1; i < cmd.o.argc; i++) {
        cli_ref_t *r = &refs[n];
        char digest[REF_DIGEST_MAX + 1];
        if (cli_ref_parse(cmd.cfg, cmd.o.argv[i], r)) {
            fprintf(stderr, "winch rm: \"%s\" is not an image reference\n", cmd.o.argv[i]);
            rc = 1;
            continue;
        }
        cache_entry_t e;
        if (cli_ref_resolve(cmd.cache, r, digest) || cache_lookup(cmd.cache, digest, &e)) {
            fprintf(stderr, "winch rm: no such image in the cache: %s\n", cmd.o.argv[i]);
            rc = 1;
            continue;
        }
        t[n] = (cache_gc_target_t){.upstream = r->upstream,
                                   .repo = r->repo,
                                   .tag = r->digest[0] ? NULL : r->tag,
                                   .digest = r->digest[0] ? r->digest : NULL};
        n++;
    }
    if (n) {
        cache_gc_opts_t o = {.rm = t, .nrm = n, .target_bytes = UINT64_MAX};
        struct gc_print p = {.json = cmd.o.json};
        if (run_gc(&cmd, &o, &p))
            rc = 1;
    }
out:
    free(t);
    free(refs);
    cache_cmd_close(&cmd);
    return rc;
}

int cli_prune(int argc, char **argv)
{
    cache_cmd_t cmd;
    int rc = cache_cmd_open(argc, argv, &cmd);
    bool dry = false;
    uint64_t unused_s = 0;
    if (rc)
        goto out;
    for (int i = 1; i < cmd.o.argc; i++) {
        const char *a = cmd.o.argv[i];
        const char *why = NULL;
        if (strcmp(a, "--dry-run") == 0 || strcmp(a, "-n") == 0) {
            dry = true;
        } else if (strcmp(a, "--unused-for") == 0 && i + 1 < cmd.o.argc) {
            why = config_parse_duration(cmd.o.argv[++i], &unused_s);
            if (!why && unused_s == 0)
                why = "must be longer than 0";
        } else if (strncmp(a, "--unused-for=", 13) == 0) {
            why = config_parse_duration(a + 13, &unused_s);
            if (!why && unused_s == 0)
                why = "must be longer than 0";
        } else {
            usage_error("prune");
            rc = 2;
            goto out;
        }
        if (why) {
            fprintf(stderr, "winch prune: --unused-for: %s\n", why);
            rc = 2;
            goto out;
        }
    }
    cache_gc_opts_t o = {
        .unreferenced = true,
        .target_bytes = UINT64_MAX,
        .dry_run = dry,
        .protect = (const char *const *)cmd.cfg->retention_protect,
        .nprotect = cmd.cfg->retention_nprotect,
    };
    if (unused_s)
        o.unused_before_ms = time_wall_ms() - (int64_t)unused_s * 1000;
    /* The configuration's pins are kept like stored ones (cache_gc copies the list). */
    const char **keep;
    if (config_pin_digests(cmd.cfg, &keep, &o.nkeep) < 0) {
        fprintf(stderr, "winch prune: out of memory\n");
        rc = 1;
        goto out;
    }
    o.keep = keep;
    struct gc_print p = {.json = cmd.o.json, .dry = dry};
    rc = run_gc(&cmd, &o, &p);
    free(keep);
out:
    cache_cmd_close(&cmd);
    return rc;
}
