/* Image references on the command line, as docker reads them, resolved against the configured
 * upstreams: [UPSTREAM/]REPOSITORY[:TAG][@DIGEST]. The first component is an upstream when it
 * names a configured one (docker.io, 127.0.0.1:5001); otherwise the default upstream is meant.
 * On Docker Hub a one-component name means library/NAME. A missing tag means "latest". */
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "proxy/cli.h"

/* The last ch in s[0..n), or NULL (memrchr is a GNU extension). */
static const char *last_of(const char *s, char ch, size_t n)
{
    while (n-- > 0)
        if (s[n] == ch)
            return s + n;
    return NULL;
}

int cli_ref_parse(const config_t *cfg, const char *s, cli_ref_t *out)
{
    memset(out, 0, sizeof *out);
    size_t n = strlen(s);
    if (n == 0 || n > sizeof out->repo + 256)
        return WE_INVALID;
    const char *at = strchr(s, '@');
    size_t name_end = at ? (size_t)(at - s) : n;
    if (at) {
        size_t dl = n - name_end - 1;
        enum ref_alg alg;
        if (dl > REF_DIGEST_MAX || ref_digest_parse(at + 1, dl, &alg))
            return WE_INVALID;
        memcpy(out->digest, at + 1, dl);
        out->digest[dl] = '\0';
    }
    /* A tag is after the last ':' that follows the last '/'. */
    const char *slash = last_of(s, '/', name_end);
    const char *colon =
        last_of(slash ? slash : s, ':', name_end - (size_t)((slash ? slash : s) - s));
    size_t repo_end = name_end;
    if (colon) {
        size_t tl = name_end - (size_t)(colon - s) - 1;
        if (!ref_tag_valid(colon + 1, tl))
            return WE_INVALID;
        memcpy(out->tag, colon + 1, tl);
        out->tag[tl] = '\0';
        repo_end = (size_t)(colon - s);
    } else if (!at) {
        snprintf(out->tag, sizeof out->tag, "latest");
    }
    const char *first_slash = memchr(s, '/', repo_end);
    const config_upstream_t *up = NULL;
    const char *name = s;
    if (first_slash) {
        up = config_upstream_find(cfg, s, (size_t)(first_slash - s));
        if (up)
            name = first_slash + 1;
    }
    if (!up)
        up = &cfg->upstreams[0];
    size_t nl = repo_end - (size_t)(name - s);
    bool lib = up->dockerhub && !memchr(name, '/', nl);
    if (nl == 0 || nl + (lib ? 8 : 0) > REF_NAME_MAX)
        return WE_INVALID;
    snprintf(out->repo, sizeof out->repo, "%s%.*s", lib ? "library/" : "", (int)nl, name);
    if (!ref_name_valid(out->repo, strlen(out->repo)))
        return WE_INVALID;
    snprintf(out->upstream, sizeof out->upstream, "%s", up->name);
    return 0;
}

int cli_ref_resolve(cache_t *c, const cli_ref_t *r, char digest[REF_DIGEST_MAX + 1])
{
    if (r->digest[0]) {
        snprintf(digest, REF_DIGEST_MAX + 1, "%s", r->digest);
        return 0;
    }
    int64_t checked;
    return cache_tag_get(c, r->upstream, r->repo, r->tag, digest, &checked);
}
