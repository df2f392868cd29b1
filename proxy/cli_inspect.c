/* `winch inspect REF...`: what docker inspect and docker history show, from the cache, as JSON
 * (as docker inspect prints): the manifest or index (with its platforms, which are cached and
 * which complete: manifest, config and every layer, as a prefetch leaves them),
 * each image's layers with sizes and media types, its config's created time, os/arch and
 * history, and the file where each piece is cached. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "proxy/cli_cache.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"

#define MAX_READ (64u << 20)

/* {digest, size, mediaType, cached, path} for one descriptor. */
static json_t *piece(cache_t *c, const char *digest, uint64_t size, const char *mt)
{
    char path[4200];
    cache_entry_t e;
    bool cached = cache_lookup(c, digest, &e) == 0;
    const char *colon = strchr(digest, ':');
    snprintf(path, sizeof path, "%s/blobs/%.*s/%.2s/%s", cache_dir(c),
             (int)(colon ? colon - digest : 0), digest, colon ? colon + 1 : "",
             colon ? colon + 1 : "");
    json_t *j =
        json_pack("{s:s, s:I, s:b}", "digest", digest, "size", (json_int_t)size, "cached", cached);
    if (mt && mt[0])
        json_object_set_new(j, "mediaType", json_string(mt));
    if (cached)
        json_object_set_new(j, "path", json_string(path));
    return j;
}

/* The config blob's created, os, architecture, variant and history. */
static void add_config(cache_t *c, json_t *cfg, const char *digest)
{
    char *bytes;
    size_t n;
    if (cache_read_manifest(c, digest, MAX_READ, &bytes, &n))
        return;
    json_t *j = json_loadb(bytes, n, 0, NULL);
    free(bytes);
    if (!json_is_object(j)) {
        json_decref(j);
        return;
    }
    static const char *const keys[] = {"created", "os", "architecture", "variant", "history"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(j, keys[i]);
        if (v)
            json_object_set(cfg, keys[i], v);
    }
    json_decref(j);
}

static json_t *describe(cache_t *c, const char *digest, int depth)
{
    cache_entry_t e;
    char *bytes;
    size_t n;
    image_t *img = NULL;
    char why[200];
    if (cache_lookup(c, digest, &e) || e.kind != CACHE_MANIFEST)
        return NULL;
    json_t *out = piece(c, digest, e.size, e.media_type);
    json_object_set_new(out, "pulls", json_integer(e.pulls));
    json_object_set_new(out, "last_pulled_ms", json_integer(e.accessed_ms));
    if (cache_read_manifest(c, digest, MAX_READ, &bytes, &n) ||
        image_parse(bytes, n, e.media_type, &img, why, sizeof why)) {
        json_object_set_new(out, "error", json_string("manifest unreadable or invalid"));
        return out;
    }
    free(bytes);
    json_t *layers = json_array(), *plats = json_array();
    bool complete = true; /* an image manifest: its config and every layer cached */
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        json_t *p = piece(c, r->digest, r->size, r->media_type);
        if (r->role == IMAGE_CONFIG || r->role == IMAGE_LAYER)
            complete = complete && json_is_true(json_object_get(p, "cached"));
        if (r->role == IMAGE_CONFIG) {
            add_config(c, p, r->digest);
            json_object_set_new(out, "config", p);
        } else if (r->role == IMAGE_LAYER) {
            json_array_append_new(layers, p);
        } else if (r->role == IMAGE_CHILD) {
            char pl[160];
            snprintf(pl, sizeof pl, "%s/%s%s%s", r->platform.os, r->platform.arch,
                     r->platform.variant[0] ? "/" : "", r->platform.variant);
            json_object_set_new(p, "platform", json_string(r->has_platform ? pl : "unknown"));
            json_object_set_new(p, "attestation", json_boolean(r->attestation));
            json_t *child = depth < 2 ? describe(c, r->digest, depth + 1) : NULL;
            json_object_set_new(
                p, "complete",
                json_boolean(child && json_is_true(json_object_get(child, "complete"))));
            if (child)
                json_object_set_new(p, "image", child);
            json_array_append_new(plats, p);
        } else {
            json_object_set_new(out, "subject", p);
        }
    }
    if (img->kind == IMAGE_INDEX) {
        json_object_set_new(out, "platforms", plats);
        json_decref(layers);
    } else {
        json_object_set_new(out, "layers", layers);
        json_object_set_new(out, "complete", json_boolean(complete));
        json_decref(plats);
        json_object_set_new(out, "image_bytes", json_integer((json_int_t)image_bytes(img)));
    }
    json_object_set_new(out, "cached_bytes",
                        json_integer((json_int_t)cache_cmd_image_size(c, digest)));
    image_free(img);
    return out;
}

int cli_inspect(int argc, char **argv)
{
    cache_cmd_t cmd;
    int rc = cache_cmd_open(argc, argv, &cmd);
    if (rc)
        goto out;
    for (int i = 1; i < cmd.o.argc && rc == 0; i++)
        if (cmd.o.argv[i][0] == '-') {
            fprintf(stderr, "winch inspect: unknown option %s\n", cmd.o.argv[i]);
            rc = 2;
        }
    if (rc || cmd.o.argc < 2) {
        usage_error("inspect");
        rc = 2;
        goto out;
    }
    json_t *all = json_array();
    for (int i = 1; i < cmd.o.argc; i++) {
        cli_ref_t r;
        char digest[REF_DIGEST_MAX + 1];
        json_t *d = NULL;
        if (cli_ref_parse(cmd.cfg, cmd.o.argv[i], &r) == 0 &&
            cli_ref_resolve(cmd.cache, &r, digest) == 0)
            d = describe(cmd.cache, digest, 0);
        if (!d) {
            fprintf(stderr, "winch inspect: no such image in the cache: %s\n", cmd.o.argv[i]);
            rc = 1;
            continue;
        }
        json_object_set_new(d, "upstream", json_string(r.upstream));
        json_object_set_new(d, "repository", json_string(r.repo));
        if (!r.digest[0])
            json_object_set_new(d, "tag", json_string(r.tag));
        json_array_append_new(all, d);
    }
    cache_cmd_json(all);
out:
    cache_cmd_close(&cmd);
    return rc;
}
