/** Manifests arriving from the upstream: checked before anything of them is kept or served,
 * then stored. Shared by the manifest handler (fetches by digest) and tag revalidation.
 * Internal to proxy/. */
#ifndef WINCH_PROXY_INTAKE_H
#define WINCH_PROXY_INTAKE_H

#include <stddef.h>

#include "proxy/call.h"

/** A manifest the upstream sent, checked. */
typedef struct intake {
    char media_type[128];
    char digest[REF_DIGEST_MAX + 1];
    image_t *image; /* owned (intake_free) */
} intake_t;

/** Checks body[0..len) from up (its Content-Type is read): a modern manifest type (schema 1
 * refused), a well-formed manifest of that type (image_parse: an error page, or a document
 * from wherever a redirect led, is not one), and its digest — want when not NULL/"" (what was
 * asked for), else the SHA-256 of exactly these bytes. Returns 0 with *out filled, or
 * WE_UPSTREAM (not a manifest), WE_DIGEST, -ENOMEM; logs why with c's request id. */
int intake_check(const call_t *c, upreq_t *up, const char *body, size_t len, const char *want,
                 intake_t *out);

/** Stores a checked manifest under c's upstream and repository (and tag, when tag is not NULL)
 * unless the cache holds it already (then only the tag is recorded). Failures are logged: the
 * client is answered from memory either way. */
void intake_store(const call_t *c, const intake_t *in, const char *body, size_t len,
                  const char *tag);

void intake_free(intake_t *in);

#endif
