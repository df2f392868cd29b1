#include "proxy/oci.h"

#include <jansson.h>
#include <string.h>

#include "common/sbuf.h"
#include "common/util.h"

static const struct {
    const char *name;
    int status;
} codes[] = {
#define OCI_CODE_ROW(id, name, status) [id] = {name, status},
    OCI_CODES(OCI_CODE_ROW)
#undef OCI_CODE_ROW
};

int oci_status(enum oci_code code)
{
    if ((size_t)code >= ARRAY_SIZE(codes))
        return 500;
    return codes[code].status;
}

const char *oci_code_name(enum oci_code code)
{
    if ((size_t)code >= ARRAY_SIZE(codes))
        return "UNKNOWN";
    return codes[code].name;
}

/* distribution's default message per code (registry/api/errcode/register.go), used when the
 * caller has nothing more specific: clients print the message, and an empty one helps nobody. */
static const char *default_message(enum oci_code code)
{
    switch (code) {
    case OCI_BLOB_UNKNOWN:
        return "blob unknown to registry";
    case OCI_DIGEST_INVALID:
        return "provided digest did not match uploaded content";
    case OCI_MANIFEST_INVALID:
        return "manifest invalid";
    case OCI_MANIFEST_UNKNOWN:
        return "manifest unknown";
    case OCI_NAME_INVALID:
        return "invalid repository name";
    case OCI_NAME_UNKNOWN:
        return "repository name not known to registry";
    case OCI_SIZE_INVALID:
        return "provided length did not match content length";
    case OCI_UNAUTHORIZED:
        return "authentication required";
    case OCI_DENIED:
        return "requested access to the resource is denied";
    case OCI_UNSUPPORTED:
        return "The operation is unsupported.";
    case OCI_TOOMANYREQUESTS:
        return "too many requests";
    case OCI_RANGE_INVALID:
        return "invalid content range";
    case OCI_PAGINATION_NUMBER_INVALID:
        return "invalid number of results requested";
    case OCI_UNKNOWN:
        return "unknown error";
    case OCI_UNAVAILABLE:
    case OCI_BAD_GATEWAY:
    case OCI_GATEWAY_TIMEOUT:
        return "service unavailable";
    }
    return "unknown error";
}

size_t oci_error_json(char *buf, size_t cap, enum oci_code code, const char *message,
                      const char *detail_json)
{
    sbuf_t b;

    if (!buf || cap == 0)
        return 0;
    if (!message)
        message = default_message(code);
    sbuf_init(&b, buf, cap);
    sbuf_puts(&b, "{\"errors\":[{\"code\":\"");
    sbuf_puts(&b, oci_code_name(code));
    sbuf_puts(&b, "\",\"message\":\"");
    sbuf_json_escape(&b, message, strlen(message));
    sbuf_puts(&b, "\"");
    if (detail_json) {
        sbuf_puts(&b, ",\"detail\":");
        sbuf_puts(&b, detail_json);
    }
    sbuf_puts(&b, "}]}");
    if (b.overflow) {
        buf[0] = '\0';
        return 0;
    }
    return b.len;
}

/* ASCII-only case folding: media types are ASCII tokens, and the C library's tolower()
 * depends on the locale. */
static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool ieq(const char *a, size_t n, const char *b)
{
    size_t m = strlen(b);
    if (n != m)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (lower(a[i]) != lower(b[i]))
            return false;
    }
    return true;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Narrows s[0..*n) to the bare media type: parameters after ';' dropped, spaces and tabs
 * trimmed on both sides. */
static const char *bare_type(const char *s, size_t *n)
{
    size_t len = *n;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ';') {
            len = i;
            break;
        }
    }
    while (len > 0 && is_space(s[0])) {
        s++;
        len--;
    }
    while (len > 0 && is_space(s[len - 1]))
        len--;
    *n = len;
    return s;
}

static unsigned accept_bit(const char *t, size_t n)
{
    if (ieq(t, n, MT_DOCKER_V2))
        return ACCEPT_DOCKER_V2;
    if (ieq(t, n, MT_DOCKER_LIST))
        return ACCEPT_DOCKER_LIST;
    if (ieq(t, n, MT_OCI_MANIFEST))
        return ACCEPT_OCI_MANIFEST;
    if (ieq(t, n, MT_OCI_INDEX))
        return ACCEPT_OCI_INDEX;
    if (ieq(t, n, MT_DOCKER_V1) || ieq(t, n, MT_DOCKER_V1_SIGNED))
        return ACCEPT_DOCKER_V1;
    if (ieq(t, n, "*/*") || ieq(t, n, "application/*"))
        return ACCEPT_ANY;
    return 0;
}

unsigned oci_accept_parse(unsigned mask, const char *value, size_t len)
{
    if (!value)
        return mask;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || value[i] == ',') {
            size_t n = i - start;
            const char *t = bare_type(value + start, &n);
            mask |= accept_bit(t, n);
            start = i + 1;
        }
    }
    return mask;
}

/* Compares a media type that may carry parameters ("...+json; charset=utf-8") with a bare one. */
static bool type_is(const char *media_type, const char *want)
{
    size_t n = strlen(media_type);
    const char *t = bare_type(media_type, &n);
    return ieq(t, n, want);
}

const char *oci_accept_refusal(unsigned mask, const char *media_type)
{
    /* distribution refuses OCI types to clients that did not list them (docs/protocol.md,
     * "Accept negotiation"). winch also lets a wildcard through: containerd lists every type
     * and then * / *, and a client that says it takes anything should get what is stored. */
    if (!media_type || (mask & ACCEPT_ANY))
        return NULL;
    if (type_is(media_type, MT_OCI_MANIFEST) && !(mask & ACCEPT_OCI_MANIFEST))
        return "OCI manifest found, but accept header does not support OCI manifests";
    if (type_is(media_type, MT_OCI_INDEX) && !(mask & ACCEPT_OCI_INDEX))
        return "OCI index found, but accept header does not support OCI indexes";
    return NULL;
}

bool oci_is_manifest_type(const char *media_type)
{
    static const char *const types[] = {MT_DOCKER_V2,        MT_DOCKER_LIST,  MT_DOCKER_V1,
                                        MT_DOCKER_V1_SIGNED, MT_OCI_MANIFEST, MT_OCI_INDEX};
    if (!media_type)
        return false;
    for (size_t i = 0; i < ARRAY_SIZE(types); i++) {
        if (type_is(media_type, types[i]))
            return true;
    }
    return false;
}

/* The static constant equal to s, or NULL: the caller gets a string that outlives the JSON. */
static const char *known_type(const char *s)
{
    static const char *const types[] = {MT_DOCKER_V2,        MT_DOCKER_LIST,  MT_DOCKER_V1,
                                        MT_DOCKER_V1_SIGNED, MT_OCI_MANIFEST, MT_OCI_INDEX};
    for (size_t i = 0; i < ARRAY_SIZE(types); i++) {
        if (type_is(s, types[i]))
            return types[i];
    }
    return NULL;
}

const char *oci_detect_media_type(const char *json, size_t len)
{
    json_error_t jerr;
    const char *result = NULL;

    /* The caller bounds len (max_manifest_bytes), and jansson bounds nesting depth itself
     * (JSON_PARSER_MAX_DEPTH), so parsing a hostile body costs bounded memory and stack. */
    if (!json || len == 0)
        return NULL;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return NULL;
    if (!json_is_object(root))
        goto done;

    /* An explicit, known mediaType wins over the shape. */
    json_t *mt = json_object_get(root, "mediaType");
    if (json_is_string(mt)) {
        result = known_type(json_string_value(mt));
        if (result)
            goto done;
    }

    /* moby's detectManifestBlobMediaType, except that an object with none of the fields is
     * "not a manifest" rather than an index. */
    bool manifests = json_object_get(root, "manifests") != NULL;
    bool config = json_object_get(root, "config") != NULL;
    bool layers = json_object_get(root, "layers") != NULL;
    bool fs_layers = json_object_get(root, "fsLayers") != NULL;

    if (fs_layers && !manifests && !config && !layers)
        result = json_object_get(root, "signatures") ? MT_DOCKER_V1_SIGNED : MT_DOCKER_V1;
    else if ((config || layers) && !manifests && !fs_layers)
        result = MT_OCI_MANIFEST;
    else if (manifests && !config && !layers && !fs_layers)
        result = MT_OCI_INDEX;

done:
    json_decref(root);
    return result;
}
