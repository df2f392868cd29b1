/** Filtered indexes (the "filter" of a platforms rule): an index cut down to the platforms a
 * site runs, as new bytes with their own digest. Pure apart from allocation. Internal to
 * proxy/. */
#ifndef WINCH_PROXY_PFILTER_H
#define WINCH_PROXY_PFILTER_H

#include <stddef.h>

#include "common/platform.h"
#include "common/ref.h"

/** Builds from body[0..len) (an index: OCI index or Docker manifest list) the index that lists
 * only the children whose platform is in set[0..n), and the attestation manifests
 * (vnd.docker.reference.type "attestation-manifest") that refer to one of them; every other
 * field and the order are kept, the result is compact JSON, the same for the same input.
 * Returns 0 with *out (owned: free) of *out_len bytes and their SHA-256 in digest; 0 with *out
 * NULL when every child is kept (the original is the answer); WE_NOTFOUND when no child is
 * allowed; WE_INVALID when body is not an index; -ENOMEM. */
int pfilter_index(const char *body, size_t len, const platform_t *set, size_t n, char **out,
                  size_t *out_len, char digest[REF_DIGEST_MAX + 1]);

#endif
