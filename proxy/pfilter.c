/* Filtered indexes: see pfilter.h. jansson keeps an object's keys in insertion order, so the
 * output follows the upstream's order and is stable: the same index gives the same digest on
 * every tag request and on every winch. */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "common/err.h"
#include "proxy/pfilter.h"

static const char *str_field(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* True when the descriptor is an attestation manifest; *subject gets the digest it refers to. */
static bool attestation_of(const json_t *desc, const char **subject)
{
    const json_t *ann = json_object_get(desc, "annotations");
    if (strcmp(str_field(ann, "vnd.docker.reference.type"), "attestation-manifest") != 0)
        return false;
    *subject = str_field(ann, "vnd.docker.reference.digest");
    return true;
}

static bool allowed(const json_t *desc, const platform_t *set, size_t n)
{
    const json_t *p = json_object_get(desc, "platform");
    platform_t q;
    if (!json_is_object(p) || platform_from_parts(str_field(p, "os"), str_field(p, "architecture"),
                                                  str_field(p, "variant"), &q) != 0)
        return false;
    return platform_in(set, n, &q);
}

/* True when kept[0..n) holds a descriptor whose digest is d. */
static bool kept_digest(const json_t *kept, const char *d)
{
    size_t i;
    const json_t *k;
    json_array_foreach(kept, i, k)
    {
        if (d[0] && strcmp(str_field(k, "digest"), d) == 0)
            return true;
    }
    return false;
}

static int sha256_of(const char *b, size_t len, char digest[REF_DIGEST_MAX + 1])
{
    digester_t *d;
    if (digester_new(&d, REF_ALG_SHA256) < 0)
        return -ENOMEM;
    digester_update(d, b, len);
    int err = digester_final(d, digest);
    digester_free(d);
    return err;
}

int pfilter_index(const char *body, size_t len, const platform_t *set, size_t n, char **out,
                  size_t *out_len, char digest[REF_DIGEST_MAX + 1])
{
    int err = WE_INVALID;
    *out = NULL;
    *out_len = 0;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *kept = json_array(), *images = json_array();
    json_t *list = json_object_get(root, "manifests");
    size_t i, total = json_array_size(list), nimages = 0;
    const json_t *desc;
    if (!kept || !images)
        err = -ENOMEM;
    if (!kept || !images || !json_is_object(root) || !json_is_array(list))
        goto fail;
    /* The images allowed first, then the list in its order: those images and their attestations. */
    json_array_foreach(list, i, desc)
    {
        const char *subject;
        if (!attestation_of(desc, &subject) && allowed(desc, set, n)) {
            if (json_array_append(images, (json_t *)desc) < 0)
                goto nomem;
            nimages++;
        }
    }
    if (nimages == 0) {
        err = WE_NOTFOUND;
        goto fail;
    }
    json_array_foreach(list, i, desc)
    {
        const char *subject;
        bool att = attestation_of(desc, &subject);
        if ((!att && allowed(desc, set, n)) || (att && kept_digest(images, subject))) {
            if (json_array_append(kept, (json_t *)desc) < 0)
                goto nomem;
        }
    }
    if (json_array_size(kept) == total) {
        err = 0; /* nothing to leave out: the original is the answer */
        goto fail;
    }
    if (json_object_set(root, "manifests", kept) < 0)
        goto nomem;
    *out = json_dumps(root, JSON_COMPACT);
    if (!*out)
        goto nomem;
    *out_len = strlen(*out);
    err = sha256_of(*out, *out_len, digest);
    if (err < 0) {
        free(*out);
        *out = NULL;
        *out_len = 0;
    }
    goto fail;
nomem:
    err = -ENOMEM;
fail:
    json_decref(kept);
    json_decref(images);
    json_decref(root);
    return err;
}
