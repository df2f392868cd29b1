/** Request routing: method + target -> operation, validated name/reference, and the upstream
 * that serves it. Every name, tag and digest is validated here, before any I/O. Pure: the only
 * input besides the request line is the configuration.
 *
 * Upstream choice (docs/protocol.md, "Choosing the upstream"): `?ns=<host>` (containerd),
 * else `/v2/<host>/<name>` when the first path component is a configured upstream name, else
 * the default upstream.
 * On Docker Hub a one-component name means library/<name>. A host that is not configured is an
 * error: winch is never an open proxy.
 */
#ifndef WINCH_PROXY_ROUTE_H
#define WINCH_PROXY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/ref.h"
#include "config/config.h"
#include "proxy/oci.h"

enum route_op {
    ROUTE_PING,      /* /v2/ */
    ROUTE_MANIFEST,  /* /v2/<name>/manifests/<ref> */
    ROUTE_BLOB,      /* /v2/<name>/blobs/<digest> */
    ROUTE_TAGS,      /* /v2/<name>/tags/list */
    ROUTE_REFERRERS, /* /v2/<name>/referrers/<digest> */
    ROUTE_CATALOG,   /* /v2/_catalog */
};

enum route_method { ROUTE_GET, ROUTE_HEAD, ROUTE_OTHER };

typedef struct route {
    enum route_op op;
    bool head;                         /* HEAD rather than GET */
    const config_upstream_t *upstream; /* borrowed from the config */
    bool ns_given;                     /* ?ns= chose the upstream: echo OCI-Namespace */
    char ns[REF_NAME_MAX + 1];         /* the ns value as given */
    char name[REF_NAME_MAX + 1];       /* repository at the upstream, e.g. "library/alpine" */
    char ref[REF_DIGEST_MAX + 1];      /* tag or digest (manifests, blobs, referrers) */
    bool ref_is_digest;
    /* Pagination (tags, catalog): n < 0 when absent. */
    long n;
    char last[REF_NAME_MAX + 1]; /* "" when absent */
    /* referrers ?artifactType= ; "" when absent */
    char artifact_type[128];
} route_t;

typedef struct route_error {
    enum oci_code code;
    const char *message; /* static text, or text[] below when it names a host */
    int status;          /* 0 = oci_status(code); else an override (e.g. 404 for an unknown path) */
    char text[REF_NAME_MAX + 64]; /* storage for a message naming the host; message may point
                                   * here, so use message while this struct is alive */
} route_error_t;

/** Parses one request. target is the raw request-target (path and query; the path is not
 * percent-decoded, since nothing legal in names, tags or digests needs it). Returns 0 and fills *out, or
 * WE_INVALID and fills *err with the OCI error to answer:
 *   bad name -> 400 NAME_INVALID; bad or unsupported digest -> 400 DIGEST_INVALID;
 *   bad tag -> 404 MANIFEST_UNKNOWN (what distribution answers: no manifest has that name);
 *   ?ns= naming an unconfigured host, or a /v2/<host>/... prefix whose first component looks
 *   like a host (has '.' or ':' or is "localhost") but is not configured -> 403 DENIED with a
 *   message naming the host (never an open proxy);
 *   bad n (not 0..10000) / last (not a tag for tags/list, not a name for _catalog)
 *   -> 400 PAGINATION_NUMBER_INVALID;
 *   absolute-form targets, '%', empty or dot segments in the path, targets over 4096 bytes
 *   -> 400 NAME_INVALID;
 *   any other method, or any other path -> 405 UNSUPPORTED.
 * Query values are percent-decoded ('+' stays '+'); unknown parameters are ignored and empty
 * ones count as absent. With ?ns=, a leading /v2/<host>/ naming the same upstream is dropped
 * (containerd override_path mirrors send both). On failure *out may be partly filled (ns and
 * ns_given when ?ns= was read). */
int route_parse(route_t *out, const config_t *cfg, enum route_method method, const char *target,
                size_t len, route_error_t *err);

#endif
