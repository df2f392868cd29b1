/** The OCI distribution API's vocabulary on the client side: error codes and their JSON body,
 * Accept negotiation, and media types. Pure functions; no I/O. */
#ifndef WINCH_PROXY_OCI_H
#define WINCH_PROXY_OCI_H

#include <stdbool.h>
#include <stddef.h>

#include "common/mediatype.h"

#define OCI_CODES(X)                                                                               \
    X(OCI_BLOB_UNKNOWN, "BLOB_UNKNOWN", 404)                                                       \
    X(OCI_DIGEST_INVALID, "DIGEST_INVALID", 400)                                                   \
    X(OCI_MANIFEST_INVALID, "MANIFEST_INVALID", 400)                                               \
    X(OCI_MANIFEST_UNKNOWN, "MANIFEST_UNKNOWN", 404)                                               \
    X(OCI_NAME_INVALID, "NAME_INVALID", 400)                                                       \
    X(OCI_NAME_UNKNOWN, "NAME_UNKNOWN", 404)                                                       \
    X(OCI_SIZE_INVALID, "SIZE_INVALID", 400)                                                       \
    X(OCI_UNAUTHORIZED, "UNAUTHORIZED", 401)                                                       \
    X(OCI_DENIED, "DENIED", 403)                                                                   \
    X(OCI_UNSUPPORTED, "UNSUPPORTED", 405)                                                         \
    X(OCI_TOOMANYREQUESTS, "TOOMANYREQUESTS", 429)                                                 \
    X(OCI_RANGE_INVALID, "RANGE_INVALID", 416)                                                     \
    X(OCI_PAGINATION_NUMBER_INVALID, "PAGINATION_NUMBER_INVALID", 400)                             \
    X(OCI_UNKNOWN, "UNKNOWN", 500)                                                                 \
    X(OCI_UNAVAILABLE, "UNAVAILABLE", 503)                                                         \
    X(OCI_BAD_GATEWAY, "UNAVAILABLE", 502)                                                         \
    X(OCI_GATEWAY_TIMEOUT, "UNAVAILABLE", 504)

enum oci_code {
#define OCI_CODE_ENUM(id, name, status) id,
    OCI_CODES(OCI_CODE_ENUM)
#undef OCI_CODE_ENUM
};

/** HTTP status for code (e.g. 404). */
int oci_status(enum oci_code code);
/** The code's wire name ("MANIFEST_UNKNOWN"); static. */
const char *oci_code_name(enum oci_code code);

/** Writes {"errors":[{"code":..,"message":..,"detail":..}]} into buf[cap] (NUL-terminated,
 * escaped; message may be NULL; detail_json, if not NULL, is inserted verbatim and must be valid
 * JSON). Returns the length, or 0 if cap is too small. */
size_t oci_error_json(char *buf, size_t cap, enum oci_code code, const char *message,
                      const char *detail_json);

/** The Accept header winch sends upstream: every modern manifest type, never schema1, so the
 * cached manifest is the canonical one. */
#define OCI_UPSTREAM_ACCEPT MT_OCI_INDEX ", " MT_OCI_MANIFEST ", " MT_DOCKER_LIST ", " MT_DOCKER_V2

/** Bits for what a client accepts. */
enum {
    ACCEPT_DOCKER_V2 = 1 << 0,
    ACCEPT_DOCKER_LIST = 1 << 1,
    ACCEPT_OCI_MANIFEST = 1 << 2,
    ACCEPT_OCI_INDEX = 1 << 3,
    ACCEPT_DOCKER_V1 = 1 << 4,
    ACCEPT_ANY = 1 << 5, /* the client sent * / * (or application / *) */
};

/** Adds one Accept header line's media types to mask and returns the new mask. Call once per
 * Accept line: handles comma lists, whitespace, parameters (q=...) and case. */
unsigned oci_accept_parse(unsigned mask, const char *value, size_t len);

/** Distribution's rule for serving a stored manifest of media_type to a client with mask:
 * returns NULL when it may be served, else the 404 MANIFEST_UNKNOWN message distribution uses
 * ("OCI manifest found, but accept header does not support OCI manifests", and the same for
 * indexes). Docker types are always served as stored (winch never rewrites to schema1). */
const char *oci_accept_refusal(unsigned mask, const char *media_type);

/** Guesses the media type of a manifest with no Content-Type from its JSON (moby's
 * heuristics: "manifests" -> index, "config"/"layers" -> manifest, "fsLayers" -> schema1;
 * a "mediaType" field wins). Returns a static string, or NULL if it is not a manifest. */
const char *oci_detect_media_type(const char *json, size_t len);

/** True if media_type is one of the manifest types above (parameters ignored). */
bool oci_is_manifest_type(const char *media_type);

#endif
