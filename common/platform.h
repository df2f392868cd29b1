/** Platforms ("linux/arm64/v8"): parsing, containerd's normalisation and matching. Pure: no
 * I/O, no allocation. Used by the configuration (platform lists), by the proxy (which platform
 * manifests of an index a client will ask for) and by the User-Agent hint. */
#ifndef WINCH_COMMON_PLATFORM_H
#define WINCH_COMMON_PLATFORM_H

#include <stdbool.h>
#include <stddef.h>

/** Longest OS, architecture or variant winch accepts (real ones are under 16 bytes). */
#define PLATFORM_PART_MAX 31
/** Room for "os/arch/variant" and its NUL. */
#define PLATFORM_STR_MAX (3 * (PLATFORM_PART_MAX + 1))

/** A normalised platform: lowercase, canonical names ("amd64", "arm64", "arm" + "v7"). */
typedef struct platform {
    char os[PLATFORM_PART_MAX + 1];
    char arch[PLATFORM_PART_MAX + 1];
    char variant[PLATFORM_PART_MAX + 1]; /* "" when none */
} platform_t;

/** Parses s[0..n) as OS/ARCH[/VARIANT] (a lone ARCH means linux/ARCH), each part 1..31 bytes
 * of [A-Za-z0-9._-], and normalises it (platform_normalize). Returns 0 with *out set, or -1
 * with *why (static text) saying what is wrong; *out is then unspecified. */
int platform_parse(const char *s, size_t n, platform_t *out, const char **why);

/** containerd's normalisation, in place: lowercase; macos -> darwin; i386 -> 386;
 * x86_64/x86-64 -> amd64 (variant v1 dropped); aarch64 -> arm64 (variants 8, v8 dropped);
 * armhf -> arm/v7, armel -> arm/v6; arm with no variant -> arm/v7, and a bare digit variant
 * gets its "v" ("arm/7" -> "arm/v7"). */
void platform_normalize(platform_t *p);

/** Builds a normalised platform from an index descriptor's fields (borrowed; variant may be
 * NULL or ""). Returns 0, or -1 when a part is empty, too long or has other characters. */
int platform_from_parts(const char *os, const char *arch, const char *variant, platform_t *out);

/** True when a and b (both normalised) are the same platform. */
bool platform_equal(const platform_t *a, const platform_t *b);

/** True when p is one of set[0..n). */
bool platform_in(const platform_t *set, size_t n, const platform_t *p);

/** Writes "os/arch[/variant]" into buf[cap] (cut when too small). Returns buf. */
const char *platform_format(const platform_t *p, char *buf, size_t cap);

/** The platform dockerd and CRI-O put in their User-Agent ("... os/linux arch/amd64 ..."; a
 * variant as "variant/v7" when present), normalised. Returns 0 with *out set, -1 when ua[0..n)
 * names no OS and architecture. */
int platform_from_user_agent(const char *ua, size_t n, platform_t *out);

#endif
