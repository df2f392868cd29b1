/** Platforms as the command line names them ("linux/amd64", "linux/arm64/v8", "linux/arm/v7")
 * and how they match an index's entries (winch warm picks what to pull, winch export what
 * `docker load` gets). Internal to proxy/. */
#ifndef WINCH_PROXY_WARM_PLATFORM_H
#define WINCH_PROXY_WARM_PLATFORM_H

#include <stdbool.h>

#include "cache/cache.h"

typedef struct warm_platform {
    char os[32];
    char arch[32];
    char variant[32]; /* "" matches any variant */
} warm_platform_t;

/** Parses "OS/ARCH[/VARIANT]" (lowercase letters, digits, '.', '_', '-'; each part 1..31
 * bytes). Common aliases are normalised (x86_64 -> amd64, aarch64 -> arm64). Returns 0 or
 * WE_INVALID. */
int warm_platform_parse(const char *s, warm_platform_t *out);

/** True when the index entry r (an IMAGE_CHILD with a platform, not an attestation) is of
 * platform want: os and architecture equal, and the variant equal unless want has none
 * (arm64's "v8" and no variant are the same). */
bool warm_platform_match(const warm_platform_t *want, const image_ref_t *r);

/** Writes "os/arch[/variant]" of p into out[len]. */
void warm_platform_format(const image_platform_t *p, char *out, size_t len);

#endif
