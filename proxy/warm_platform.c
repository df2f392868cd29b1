/* Platform names on the command line and their match against index entries (platform.h). */
#include "proxy/warm_platform.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"

static bool part_ok(const char *s, size_t n)
{
    if (n == 0 || n > 31)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

int warm_platform_parse(const char *s, warm_platform_t *out)
{
    memset(out, 0, sizeof *out);
    const char *a = strchr(s, '/');
    if (!a)
        return WE_INVALID;
    const char *v = strchr(a + 1, '/');
    size_t ol = (size_t)(a - s);
    size_t al = v ? (size_t)(v - a - 1) : strlen(a + 1);
    size_t vl = v ? strlen(v + 1) : 0;
    if (!part_ok(s, ol) || !part_ok(a + 1, al) || (v && !part_ok(v + 1, vl)))
        return WE_INVALID;
    memcpy(out->os, s, ol);
    memcpy(out->arch, a + 1, al);
    if (v)
        memcpy(out->variant, v + 1, vl);
    if (strcmp(out->arch, "x86_64") == 0 || strcmp(out->arch, "x86-64") == 0)
        snprintf(out->arch, sizeof out->arch, "amd64");
    else if (strcmp(out->arch, "aarch64") == 0)
        snprintf(out->arch, sizeof out->arch, "arm64");
    return 0;
}

bool warm_platform_match(const warm_platform_t *want, const image_ref_t *r)
{
    if (r->role != IMAGE_CHILD || !r->has_platform || r->attestation)
        return false;
    const image_platform_t *p = &r->platform;
    if (strcmp(want->os, p->os) != 0 || strcmp(want->arch, p->arch) != 0)
        return false;
    if (!want->variant[0] || strcmp(want->variant, p->variant) == 0)
        return true;
    /* arm64 images often carry no variant: v8 is the only one there is. */
    return strcmp(p->arch, "arm64") == 0 && strcmp(want->variant, "v8") == 0 && !p->variant[0];
}

void warm_platform_format(const image_platform_t *p, char *out, size_t len)
{
    snprintf(out, len, "%s/%s%s%s", p->os, p->arch, p->variant[0] ? "/" : "", p->variant);
}
