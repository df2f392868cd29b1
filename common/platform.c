/* Platforms (platform.h). The normalisation follows containerd's platforms.Normalize, so that
 * "linux/arm64/v8" in a configuration and "arm64" + "v8" in an index descriptor are one
 * platform, as they are to the clients that pick manifests out of indexes. */
#include "common/platform.h"

#include <stdio.h>
#include <string.h>

static bool part_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '-';
}

/* Copies s[0..n) lowercased into dst (PLATFORM_PART_MAX + 1 bytes). */
static const char *take_part(char *dst, const char *s, size_t n, bool may_be_empty)
{
    if (n == 0 && !may_be_empty)
        return "empty component (expected OS/ARCH[/VARIANT], e.g. linux/arm64)";
    if (n > PLATFORM_PART_MAX)
        return "component longer than 31 bytes";
    for (size_t i = 0; i < n; i++) {
        if (!part_char(s[i]))
            return "components are made of [A-Za-z0-9._-]";
        dst[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    }
    dst[n] = '\0';
    return NULL;
}

static void set(char *dst, const char *v)
{
    snprintf(dst, PLATFORM_PART_MAX + 1, "%s", v);
}

void platform_normalize(platform_t *p)
{
    if (strcmp(p->os, "macos") == 0)
        set(p->os, "darwin");
    const char *a = p->arch, *v = p->variant;
    if (strcmp(a, "i386") == 0) {
        set(p->arch, "386");
        set(p->variant, "");
    } else if (strcmp(a, "x86_64") == 0 || strcmp(a, "x86-64") == 0 || strcmp(a, "amd64") == 0) {
        set(p->arch, "amd64");
        if (strcmp(v, "v1") == 0)
            set(p->variant, "");
    } else if (strcmp(a, "aarch64") == 0 || strcmp(a, "arm64") == 0) {
        set(p->arch, "arm64");
        if (strcmp(v, "8") == 0 || strcmp(v, "v8") == 0 || strcmp(v, "v8.0") == 0)
            set(p->variant, "");
    } else if (strcmp(a, "armhf") == 0) {
        set(p->arch, "arm");
        set(p->variant, "v7");
    } else if (strcmp(a, "armel") == 0) {
        set(p->arch, "arm");
        set(p->variant, "v6");
    } else if (strcmp(a, "arm") == 0) {
        if (v[0] == '\0' || strcmp(v, "7") == 0)
            set(p->variant, "v7");
        else if (strcmp(v, "5") == 0 || strcmp(v, "6") == 0 || strcmp(v, "8") == 0) {
            char tmp[4] = {'v', v[0], '\0', '\0'};
            set(p->variant, tmp);
        }
    }
}

int platform_parse(const char *s, size_t n, platform_t *out, const char **why)
{
    const char *parts[4];
    size_t lens[4], np = 0, start = 0;
    memset(out, 0, sizeof *out);
    if (n == 0) {
        *why = "empty (expected OS/ARCH[/VARIANT], e.g. linux/arm64)";
        return -1;
    }
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '/')
            continue;
        if (np == 3) {
            *why = "too many components (expected OS/ARCH[/VARIANT])";
            return -1;
        }
        parts[np] = s + start;
        lens[np++] = i - start;
        start = i + 1;
    }
    const char *e;
    if (np == 1) {
        /* containerd reads a lone architecture as the host's OS; winch serves Linux nodes. */
        set(out->os, "linux");
        e = take_part(out->arch, parts[0], lens[0], false);
    } else {
        e = take_part(out->os, parts[0], lens[0], false);
        if (!e)
            e = take_part(out->arch, parts[1], lens[1], false);
        if (!e && np == 3)
            e = take_part(out->variant, parts[2], lens[2], false);
    }
    if (e) {
        *why = e;
        return -1;
    }
    platform_normalize(out);
    return 0;
}

int platform_from_parts(const char *os, const char *arch, const char *variant, platform_t *out)
{
    memset(out, 0, sizeof *out);
    if (!os || !arch || take_part(out->os, os, strlen(os), false) ||
        take_part(out->arch, arch, strlen(arch), false) ||
        take_part(out->variant, variant ? variant : "", variant ? strlen(variant) : 0, true))
        return -1;
    platform_normalize(out);
    return 0;
}

bool platform_equal(const platform_t *a, const platform_t *b)
{
    return strcmp(a->os, b->os) == 0 && strcmp(a->arch, b->arch) == 0 &&
           strcmp(a->variant, b->variant) == 0;
}

bool platform_in(const platform_t *set_, size_t n, const platform_t *p)
{
    for (size_t i = 0; i < n; i++)
        if (platform_equal(&set_[i], p))
            return true;
    return false;
}

const char *platform_format(const platform_t *p, char *buf, size_t cap)
{
    if (cap == 0)
        return buf;
    snprintf(buf, cap, "%s/%s%s%s", p->os, p->arch, p->variant[0] ? "/" : "", p->variant);
    return buf;
}

/* The value of the space-separated token "key/VALUE" in ua, or NULL. */
static const char *ua_token(const char *ua, size_t n, const char *key, size_t *vlen)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl <= n; i++) {
        if ((i > 0 && ua[i - 1] != ' ' && ua[i - 1] != '(') || memcmp(ua + i, key, kl) != 0)
            continue;
        size_t j = i + kl;
        while (j < n && part_char(ua[j]))
            j++;
        if (j > i + kl) {
            *vlen = j - i - kl;
            return ua + i + kl;
        }
    }
    return NULL;
}

int platform_from_user_agent(const char *ua, size_t n, platform_t *out)
{
    size_t ol = 0, al = 0, vl = 0;
    const char *os = ua_token(ua, n, "os/", &ol);
    const char *arch = ua_token(ua, n, "arch/", &al);
    const char *variant = ua_token(ua, n, "variant/", &vl);
    memset(out, 0, sizeof *out);
    if (!os || !arch || take_part(out->os, os, ol, false) || take_part(out->arch, arch, al, false))
        return -1;
    if (variant && take_part(out->variant, variant, vl, false))
        return -1;
    platform_normalize(out);
    return 0;
}
