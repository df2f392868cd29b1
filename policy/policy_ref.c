/* References as people write them (winch pin, winch policy explain), read with the router's
 * rules: a configured upstream as the first component picks it, a first component that looks
 * like a host but is not configured is an error (winch never guesses an upstream), anything
 * else goes to the default upstream; Docker Hub one-component names are library/NAME. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "policy/policy.h"

#define REF_INPUT_MAX 1024

static int bad(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return WE_INVALID;
}

static bool looks_like_host(const char *s, size_t n)
{
    return (n == 9 && strncmp(s, "localhost", 9) == 0) || memchr(s, '.', n) || memchr(s, ':', n);
}

/* Splits "name[:tag][@digest]" into its parts (pointers into s). */
static void split_ref(const char *s, size_t n, size_t *name_len, const char **tag, size_t *tag_len,
                      const char **digest, size_t *digest_len)
{
    const char *at = memchr(s, '@', n);
    size_t rest = at ? (size_t)(at - s) : n;
    *digest = at ? at + 1 : NULL;
    *digest_len = at ? n - rest - 1 : 0;
    /* A tag's ':' comes after the last '/' (a ':' before it is a host's port). */
    const char *slash = NULL;
    for (size_t i = 0; i < rest; i++)
        if (s[i] == '/')
            slash = s + i;
    const char *from = slash ? slash + 1 : s;
    const char *colon = memchr(from, ':', rest - (size_t)(from - s));
    *tag = colon ? colon + 1 : NULL;
    *tag_len = colon ? rest - (size_t)(colon + 1 - s) : 0;
    *name_len = colon ? (size_t)(colon - s) : rest;
}

static int set_name(const config_t *cfg, const char *s, size_t n, policy_ref_t *out, char *err,
                    size_t errlen)
{
    const char *slash = memchr(s, '/', n);
    const char *name = s;
    out->upstream = &cfg->upstreams[0];
    if (slash) {
        size_t first = (size_t)(slash - s);
        const config_upstream_t *u = config_upstream_find(cfg, s, first);
        if (u) {
            out->upstream = u;
            name = slash + 1;
        } else if (looks_like_host(s, first)) {
            return bad(err, errlen, "registry %.*s is not a configured upstream", (int)first, s);
        }
    }
    size_t len = n - (size_t)(name - s);
    const char *lib = out->upstream->dockerhub && !memchr(name, '/', len) ? "library/" : "";
    if (len == 0 || strlen(lib) + len > REF_NAME_MAX)
        return bad(err, errlen, "the repository name is empty or longer than %d bytes",
                   REF_NAME_MAX);
    snprintf(out->repo, sizeof out->repo, "%s%.*s", lib, (int)len, name);
    if (!ref_name_valid(out->repo, strlen(out->repo)))
        return bad(err, errlen,
                   "%.*s is not a repository name (lowercase components [a-z0-9] joined by "
                   "'.', '_', '__' or '-', separated by '/')",
                   (int)len, name);
    return 0;
}

int policy_ref_parse(const config_t *cfg, const char *ref, policy_ref_t *out, char *err,
                     size_t errlen)
{
    memset(out, 0, sizeof *out);
    size_t n = ref ? strnlen(ref, REF_INPUT_MAX + 1) : 0;
    if (n == 0 || n > REF_INPUT_MAX)
        return bad(err, errlen, "a reference is 1..%d bytes", REF_INPUT_MAX);
    if (!cfg || cfg->n_upstreams == 0)
        return bad(err, errlen, "no upstream is configured");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)ref[i] <= 0x20 || (unsigned char)ref[i] >= 0x7f)
            return bad(err, errlen, "a reference has no spaces, control or non-ASCII characters");
    size_t name_len, tag_len, digest_len;
    const char *tag, *digest;
    split_ref(ref, n, &name_len, &tag, &tag_len, &digest, &digest_len);
    int rc = set_name(cfg, ref, name_len, out, err, errlen);
    if (rc)
        return rc;
    if (digest) {
        if (digest_len > REF_DIGEST_MAX || ref_digest_parse(digest, digest_len, NULL) != 0)
            return bad(err, errlen, "%.*s is not a sha256 or sha512 digest",
                       (int)(digest_len > 80 ? 80 : digest_len), digest);
        memcpy(out->digest, digest, digest_len);
        out->digest[digest_len] = '\0';
        /* name:tag@digest: the digest decides, as for docker. */
        return 0;
    }
    if (!tag) {
        tag = "latest";
        tag_len = 6;
    }
    if (!ref_tag_valid(tag, tag_len))
        return bad(err, errlen, "%.*s is not a tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127})",
                   (int)(tag_len > 130 ? 130 : tag_len), tag);
    memcpy(out->tag, tag, tag_len);
    out->tag[tag_len] = '\0';
    return 0;
}
