/** Platforms as the command line names them ("linux/amd64", "linux/arm64/v8", "linux/arm/v7")
 * and how they match an index's entries (winch warm picks what to pull, winch export what
 * `docker load` gets). Internal to proxy/. */
#ifndef WINCH_PROXY_PLATFORM_H
#define WINCH_PROXY_PLATFORM_H

#include <stdbool.h>

#include "cache/cache.h"

typedef struct platform_spec {
    char os[32];
    char arch[32];
    char variant[32]; /* "" matches any variant */
} platform_spec_t;

/** Parses "OS/ARCH[/VARIANT]" (lowercase letters, digits, '.', '_', '-'; each part 1..31
 * bytes). Common aliases are normalised (x86_64 -> amd64, aarch64 -> arm64). Returns 0 or
 * WE_INVALID. */
int platform_parse(const char *s, platform_spec_t *out);

/** True when the index entry r (an IMAGE_CHILD with a platform, not an attestation) is of
 * platform want: os and architecture equal, and the variant equal unless want has none
 * (arm64's "v8" and no variant are the same). */
bool platform_match(const platform_spec_t *want, const image_ref_t *r);

/** Writes "os/arch[/variant]" of p into out[len]. */
void platform_format(const image_platform_t *p, char *out, size_t len);

#endif
