#include "proxy/intake.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

/* Media type of a fetched manifest: the upstream's Content-Type when it names a manifest type,
 * else what the JSON says it is. */
static const char *fetched_media_type(upreq_t *up, const char *body, size_t len, char *buf,
                                      size_t cap)
{
    const char *ct = up ? upreq_header(up, "Content-Type") : NULL;
    if (ct) {
        size_t n = strcspn(ct, "; \t");
        if (n < cap) {
            memcpy(buf, ct, n);
            buf[n] = '\0';
            if (oci_is_manifest_type(buf))
                return buf;
        }
    }
    return oci_detect_media_type(body, len);
}

int intake_check(const call_t *c, upreq_t *up, const char *body, size_t len, const char *want,
                 intake_t *out)
{
    unsigned long long id = (unsigned long long)call_id(c);
    char mtbuf[128];
    memset(out, 0, sizeof *out);
    const char *mt = fetched_media_type(up, body, len, mtbuf, sizeof mtbuf);
    if (!mt) {
        LOG_WARN("req=%llu upstream sent something that is not a manifest", id);
        return WE_UPSTREAM;
    }
    /* Schema 1 digests are not the hash of the bytes (the JWS signature is excluded), so they
     * cannot be verified or stored content-addressed. winch never asks for them. */
    if (strcmp(mt, MT_DOCKER_V1) == 0 || strcmp(mt, MT_DOCKER_V1_SIGNED) == 0) {
        LOG_WARN("req=%llu upstream answered with a schema1 manifest; refusing", id);
        return WE_UPSTREAM;
    }
    char why[160];
    if (image_parse(body, len, mt, &out->image, why, sizeof why) != 0) {
        LOG_WARN("req=%llu upstream sent an invalid %s: %s", id, mt, why);
        return WE_UPSTREAM;
    }
    snprintf(out->media_type, sizeof out->media_type, "%s", mt);
    if (want && want[0]) {
        if (digest_verify(want, body, len) < 0) {
            LOG_WARN("req=%llu manifest from upstream does not match %s", id, want);
            intake_free(out);
            return WE_DIGEST;
        }
        snprintf(out->digest, sizeof out->digest, "%s", want);
        return 0;
    }
    digester_t *d;
    if (digester_new(&d, REF_ALG_SHA256) < 0) {
        intake_free(out);
        return -ENOMEM;
    }
    digester_update(d, body, len);
    digester_final(d, out->digest);
    digester_free(d);
    return 0;
}

static void on_stored(void *arg, int status)
{
    char *digest = arg;
    if (status < 0)
        LOG_ERROR("storing manifest %s failed: %s", digest, err_str(status));
    free(digest);
}

void intake_store(const call_t *c, const intake_t *in, const char *body, size_t len,
                  const char *tag)
{
    cache_entry_t have;
    const char *upstream = c->route.upstream->name, *repo = c->route.name;
    if (cache_lookup(c->env->cache, in->digest, &have) == 0 && have.kind == CACHE_MANIFEST) {
        /* A request sharing this upstream fetch stored it already. */
        if (tag)
            cache_tag_set(c->env->cache, upstream, repo, tag, in->digest, NULL, NULL);
        return;
    }
    cache_manifest_put_t put = {
        .digest = in->digest,
        .media_type = in->media_type,
        .bytes = body,
        .len = len,
        .upstream = upstream,
        .repo = repo,
        .tag = tag,
        .image = in->image,
    };
    char *arg = strdup(in->digest);
    int err = arg ? cache_put_manifest(c->env->cache, &put, on_stored, arg) : -ENOMEM;
    if (err < 0) {
        free(arg);
        LOG_ERROR("req=%llu caching manifest %s failed: %s", (unsigned long long)call_id(c),
                  in->digest, err_str(err));
    }
}

void intake_free(intake_t *in)
{
    image_free(in->image);
    in->image = NULL;
}
