/* Platform selection (platforms.h). */
#include "proxy/platforms.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "common/glob.h"
#include "proxy/call.h"
#include "proxy/realip.h"

const config_platform_rule_t *platforms_rule(const config_t *cfg, const char *upstream,
                                             const char *repo)
{
    char name[2 * REF_NAME_MAX + 2];
    int n = snprintf(name, sizeof name, "%s/%s", upstream, repo);
    if (n < 0 || (size_t)n >= sizeof name)
        return NULL;
    for (size_t i = 0; i < cfg->n_platform_rules; i++)
        if (glob_match(cfg->platform_rules[i].match, name))
            return &cfg->platform_rules[i];
    return NULL;
}

const config_client_group_t *platforms_group_by_peer(const config_t *cfg,
                                                     const struct sockaddr_storage *peer)
{
    if (!peer)
        return NULL;
    for (size_t i = 0; i < cfg->n_client_groups; i++) {
        const config_client_group_t *g = &cfg->client_groups[i];
        if (realip_in(g->cidrs, g->n_cidrs, peer))
            return g;
    }
    return NULL;
}

const config_client_group_t *platforms_group_by_path(const config_t *cfg, const char *target,
                                                     size_t len, size_t *prefix_len)
{
    for (size_t i = 0; i < cfg->n_client_groups; i++) {
        const config_client_group_t *g = &cfg->client_groups[i];
        if (!g->path_prefix)
            continue;
        size_t pl = strlen(g->path_prefix);
        if (len < pl + 3 || memcmp(target, g->path_prefix, pl) != 0 ||
            memcmp(target + pl, "/v2", 3) != 0)
            continue;
        char next = len > pl + 3 ? target[pl + 3] : '\0';
        if (next == '\0' || next == '/' || next == '?') {
            *prefix_len = pl;
            return g;
        }
    }
    return NULL;
}

void platforms_select(const call_t *c, platsel_t *out)
{
    static const platform_t amd64 = {"linux", "amd64", ""};
    memset(out, 0, sizeof *out);
    const config_t *cfg = c->env->cfg;
    if (c->route.upstream)
        out->rule = platforms_rule(cfg, c->route.upstream->name, c->route.name);
    out->group = c->group;
    if (out->group) {
        out->set = out->group->platforms;
        out->n = out->group->n_platforms;
        out->source = "group";
        return;
    }
    const char *ua = c->req ? req_header(c->req, "User-Agent") : NULL;
    if (ua && platform_from_user_agent(ua, strlen(ua), &out->hint) == 0) {
        out->set = &out->hint;
        out->n = 1;
        out->source = "user-agent";
        return;
    }
    if (out->rule) {
        out->set = out->rule->platforms;
        out->n = out->rule->n_platforms;
        out->source = "rule";
        return;
    }
    out->set = &amd64;
    out->n = 1;
    out->source = "default";
}

const char *platforms_refusal(const config_t *cfg, const config_platform_rule_t *r,
                              const platform_t *p, char *buf, size_t cap)
{
    char ps[PLATFORM_STR_MAX];
    snprintf(buf, cap, "platform %s is not allowed by platforms[%zu] (%s)",
             platform_format(p, ps, sizeof ps), (size_t)(r - cfg->platform_rules), r->match);
    return buf;
}

bool platforms_is_attestation(const image_ref_t *ref)
{
    return ref->attestation || (ref->has_platform && strcmp(ref->platform.os, "unknown") == 0 &&
                                strcmp(ref->platform.arch, "unknown") == 0);
}

const char *platforms_entry_format(const image_platform_t *p, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s%s%s", p->os, p->arch, p->variant[0] ? "/" : "", p->variant);
    return buf;
}

int platforms_pick(const image_t *img, const platform_t *p)
{
    if (img->kind != IMAGE_INDEX)
        return -1;
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        platform_t q;
        if (r->role != IMAGE_CHILD || !r->has_platform || platforms_is_attestation(r) ||
            image_type_is_index(r->media_type))
            continue;
        if (platform_from_parts(r->platform.os, r->platform.arch, r->platform.variant, &q) == 0 &&
            platform_equal(&q, p))
            return (int)i;
    }
    return -1;
}
