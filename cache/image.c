/* Manifests and indexes as content: parsing, validating, and what they reference.
 *
 * Every manifest body winch caches or serves passes through image_parse first. A body from the
 * network is only a manifest if it is one: a JSON object of the type it claims, schemaVersion
 * 2, a mediaType field (when present) equal to the claim, and descriptors whose digests and
 * sizes are well formed. Anything else — an HTML error page, a cloud metadata document behind
 * a redirect, a truncated body — is refused before it is stored (docs/protocol.md, "What a
 * manifest is").
 *
 * The references (config, layers, an index's manifests, a subject) are what retention keeps,
 * what a repository is known to hold, and what the size of an image adds up to. */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "common/err.h"
#include "common/mediatype.h"
#include "common/util.h"

static const char *const modern_types[] = {MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_V2,
                                           MT_DOCKER_LIST};

static int why(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int why(char *buf, size_t cap, const char *fmt, ...)
{
    if (buf && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, cap, fmt, ap);
        va_end(ap);
    }
    return WE_INVALID;
}

/* The static constant for a known modern type (parameters ignored), or NULL. */
static const char *modern_type(const char *mt)
{
    if (!mt)
        return NULL;
    size_t n = strcspn(mt, "; \t");
    for (size_t i = 0; i < ARRAY_SIZE(modern_types); i++) {
        if (strlen(modern_types[i]) == n && strncmp(mt, modern_types[i], n) == 0)
            return modern_types[i];
    }
    return NULL;
}

bool image_type_is_index(const char *media_type)
{
    const char *t = modern_type(media_type);
    return t && (strcmp(t, MT_OCI_INDEX) == 0 || strcmp(t, MT_DOCKER_LIST) == 0);
}

bool image_type_known(const char *media_type)
{
    return modern_type(media_type) != NULL;
}

/* Copies a JSON string member into out[cap]; false when present but not a string or too long
 * (absent is fine: out stays ""). */
static bool get_str(const json_t *obj, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    const json_t *v = json_object_get(obj, key);
    if (!v)
        return true;
    if (!json_is_string(v) || json_string_length(v) >= cap)
        return false;
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return memchr(out, '\0', json_string_length(v)) == NULL;
}

static int parse_platform(const json_t *p, image_ref_t *r, char *err, size_t errlen, size_t i)
{
    image_platform_t *pl = &r->platform;
    if (!json_is_object(p))
        return why(err, errlen, "manifests[%zu].platform is not an object", i);
    if (!get_str(p, "os", pl->os, sizeof pl->os) || !pl->os[0] ||
        !get_str(p, "architecture", pl->arch, sizeof pl->arch) || !pl->arch[0])
        return why(err, errlen, "manifests[%zu].platform needs os and architecture", i);
    if (!get_str(p, "variant", pl->variant, sizeof pl->variant) ||
        !get_str(p, "os.version", pl->os_version, sizeof pl->os_version))
        return why(err, errlen, "manifests[%zu].platform has a bad variant or os.version", i);
    r->has_platform = true;
    return 0;
}

/* BuildKit stores provenance and SBOMs as manifests with platform unknown/unknown and a
 * vnd.docker.reference.type annotation (moby/buildkit docs/attestations). */
static bool is_attestation(const json_t *d, const image_ref_t *r)
{
    const json_t *ann = json_object_get(d, "annotations");
    const json_t *t = json_is_object(ann) ? json_object_get(ann, "vnd.docker.reference.type")
                                          : NULL;
    if (json_is_string(t) && strcmp(json_string_value(t), "attestation-manifest") == 0)
        return true;
    return r->has_platform && strcmp(r->platform.os, "unknown") == 0 &&
           strcmp(r->platform.arch, "unknown") == 0;
}

static int parse_descriptor(const json_t *d, enum image_role role, image_ref_t *r,
                            const char *where, size_t i, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->role = role;
    if (!json_is_object(d))
        return why(err, errlen, "%s[%zu] is not a descriptor", where, i);
    const json_t *dg = json_object_get(d, "digest");
    const json_t *sz = json_object_get(d, "size");
    if (!json_is_string(dg) || json_string_length(dg) > REF_DIGEST_MAX)
        return why(err, errlen, "%s[%zu].digest is missing or too long", where, i);
    enum ref_alg alg;
    if (ref_digest_parse(json_string_value(dg), json_string_length(dg), &alg) != 0)
        return why(err, errlen, "%s[%zu].digest is not a sha256 or sha512 digest", where, i);
    memcpy(r->digest, json_string_value(dg), json_string_length(dg) + 1);
    if (!json_is_integer(sz) || json_integer_value(sz) < 0)
        return why(err, errlen, "%s[%zu].size is missing or negative", where, i);
    r->size = (uint64_t)json_integer_value(sz);
    if (!get_str(d, "mediaType", r->media_type, sizeof r->media_type))
        return why(err, errlen, "%s[%zu].mediaType is not a short string", where, i);
    const json_t *p = json_object_get(d, "platform");
    if (p && parse_platform(p, r, err, errlen, i))
        return WE_INVALID;
    if (role == IMAGE_CHILD)
        r->attestation = is_attestation(d, r);
    return 0;
}

static int add_refs(image_t *img, const json_t *arr, enum image_role role, const char *where,
                    size_t max_refs, char *err, size_t errlen)
{
    if (!json_is_array(arr))
        return why(err, errlen, "%s is not an array", where);
    size_t n = json_array_size(arr);
    if (n > max_refs - img->nrefs)
        return why(err, errlen, "%s has more than %zu entries", where, max_refs);
    for (size_t i = 0; i < n; i++) {
        int rc = parse_descriptor(json_array_get(arr, i), role, &img->refs[img->nrefs], where, i,
                                  err, errlen);
        if (rc)
            return rc;
        img->nrefs++;
    }
    return 0;
}

/* The shape the claimed type asks for: an index has manifests and nothing of a manifest, a
 * manifest has a config (and layers) and no manifests. */
static int check_shape(const json_t *root, bool index, char *err, size_t errlen)
{
    bool has_manifests = json_object_get(root, "manifests") != NULL;
    bool has_config = json_object_get(root, "config") != NULL;
    bool has_layers = json_object_get(root, "layers") != NULL;
    if (json_object_get(root, "fsLayers"))
        return why(err, errlen, "a schema 1 manifest");
    if (index && (!has_manifests || has_config || has_layers))
        return why(err, errlen, "not an index: it needs manifests and no config or layers");
    if (!index && (!has_config || has_manifests))
        return why(err, errlen, "not an image manifest: it needs a config and no manifests");
    return 0;
}

static int parse_root(image_t *img, const json_t *root, size_t max_refs, char *err, size_t errlen)
{
    if (!json_is_object(root))
        return why(err, errlen, "not a JSON object");
    const json_t *sv = json_object_get(root, "schemaVersion");
    if (!json_is_integer(sv) || json_integer_value(sv) != 2)
        return why(err, errlen, "schemaVersion is not 2");
    const json_t *mt = json_object_get(root, "mediaType");
    if (mt && (!json_is_string(mt) || modern_type(json_string_value(mt)) != img->media_type))
        return why(err, errlen, "its mediaType does not match %s", img->media_type);
    bool index = img->kind == IMAGE_INDEX;
    int rc = check_shape(root, index, err, errlen);
    if (rc)
        return rc;
    if (index) {
        rc = add_refs(img, json_object_get(root, "manifests"), IMAGE_CHILD, "manifests", max_refs,
                      err, errlen);
    } else {
        json_t *cfg = json_array();
        if (!cfg || json_array_append(cfg, json_object_get(root, "config")) < 0) {
            json_decref(cfg);
            return -ENOMEM;
        }
        rc = add_refs(img, cfg, IMAGE_CONFIG, "config", max_refs, err, errlen);
        json_decref(cfg);
        const json_t *layers = json_object_get(root, "layers");
        /* An artifact manifest may carry no layers at all. */
        if (rc == 0 && layers)
            rc = add_refs(img, layers, IMAGE_LAYER, "layers", max_refs, err, errlen);
    }
    const json_t *subject = json_object_get(root, "subject");
    if (rc == 0 && subject) {
        json_t *one = json_array();
        if (!one || json_array_append(one, (json_t *)subject) < 0) {
            json_decref(one);
            return -ENOMEM;
        }
        rc = add_refs(img, one, IMAGE_SUBJECT, "subject", max_refs, err, errlen);
        json_decref(one);
    }
    return rc;
}

int image_parse(const char *bytes, size_t len, const char *media_type, image_t **out, char *err,
                size_t errlen)
{
    image_t *img = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    int rc;
    const char *mt = modern_type(media_type);
    if (!mt)
        return why(err, errlen, "%s is not a manifest or index type winch serves",
                   media_type ? media_type : "(none)");
    /* Descriptors take at least ~90 bytes of JSON each: the body's length bounds their number
     * (and so the memory below) whatever it holds. */
    size_t max_refs = len / 64 + 2;
    if (max_refs > IMAGE_MAX_REFS)
        max_refs = IMAGE_MAX_REFS;
    img = calloc(1, sizeof *img);
    if (img)
        img->refs = calloc(max_refs, sizeof *img->refs);
    if (!img || !img->refs) {
        rc = -ENOMEM;
        goto fail;
    }
    img->media_type = mt;
    img->kind = image_type_is_index(mt) ? IMAGE_INDEX : IMAGE_MANIFEST;
    /* jansson bounds nesting depth itself (JSON_PARSER_MAX_DEPTH), and the caller bounds len. */
    root = json_loadb(bytes, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = why(err, errlen, "not JSON (%s at %d:%d)", jerr.text, jerr.line, jerr.column);
        goto fail;
    }
    if ((rc = parse_root(img, root, max_refs, err, errlen)))
        goto fail;
    json_decref(root);
    *out = img;
    return 0;
fail:
    json_decref(root);
    image_free(img);
    return rc;
}

void image_free(image_t *img)
{
    if (!img)
        return;
    free(img->refs);
    free(img);
}

uint64_t image_bytes(const image_t *img)
{
    uint64_t total = 0;
    for (size_t i = 0; i < img->nrefs; i++) {
        enum image_role r = img->refs[i].role;
        if ((r == IMAGE_CONFIG || r == IMAGE_LAYER) && img->refs[i].size <= UINT64_MAX - total)
            total += img->refs[i].size;
    }
    return total;
}
