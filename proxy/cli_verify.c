/* `winch verify [--json]`: rehashes every blob and manifest, reports corrupt and missing files
 * and files without an index entry, and fixes what it found (corrupt content quarantined, so
 * it is never served again and a later pull refetches it). Exit status 1 when it found
 * anything, 0 on a clean cache. */
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "proxy/cli_cache.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"

struct vout {
    bool json, done;
    json_t *items;
    int status;
    cache_verify_result_t r;
};

static void on_problem(void *arg, const cache_verify_problem_t *p)
{
    struct vout *o = arg;
    static const char *const names[] = {"", "corrupt", "missing", "orphan"};
    static const char *const fixes[] = {"", "quarantined", "index entry removed", "removed"};
    const char *what = names[p->what];
    if (o->json)
        json_array_append_new(o->items, json_pack("{s:s, s:s, s:b}", "problem", what, "digest",
                                                  p->digest, "fixed", p->fixed));
    else
        printf("%-8s %s%s%s\n", what, p->digest, p->fixed ? ": " : "",
               p->fixed ? fixes[p->what] : "");
}

static void on_done(void *arg, int status, const cache_verify_result_t *r)
{
    struct vout *o = arg;
    o->done = true;
    o->status = status;
    o->r = *r;
}

int cli_verify(int argc, char **argv)
{
    cache_cmd_t cmd;
    int rc = cache_cmd_open(argc, argv, &cmd);
    if (rc)
        goto out;
    if (cmd.o.argc > 1) {
        usage_error("verify");
        rc = 2;
        goto out;
    }
    struct vout o = {.json = cmd.o.json, .items = json_array()};
    cache_verify_opts_t vo = {
        .rehash = true, .orphans = true, .fix = true, .on_problem = on_problem, .arg = &o};
    if ((rc = cache_verify(cmd.cache, &vo, on_done, &o)) == 0)
        uv_run(&cmd.loop, UV_RUN_DEFAULT);
    if (rc || !o.done || o.status < 0) {
        fprintf(stderr, "winch verify: %s\n", err_str(rc ? rc : o.status));
        json_decref(o.items);
        rc = 1;
        goto out;
    }
    char hashed[16];
    cli_size(o.r.bytes_hashed, hashed, sizeof hashed);
    if (o.json)
        cache_cmd_json(json_pack("{s:o, s:I, s:I}", "problems", o.items, "checked",
                                 (json_int_t)o.r.checked, "bytes_hashed",
                                 (json_int_t)o.r.bytes_hashed));
    else {
        json_decref(o.items);
        printf("%llu item(s) checked (%s hashed), %llu problem(s)\n",
               (unsigned long long)o.r.checked, hashed, (unsigned long long)o.r.problems);
    }
    rc = o.r.problems ? 1 : 0;
out:
    cache_cmd_close(&cmd);
    return rc;
}
