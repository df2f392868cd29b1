/** Which platforms a call's client runs, by the "platforms" rules and "client_groups"
 * (config_platforms.c): the rule for the repository, the client's group (by source address or
 * by the path prefix it came in on), the User-Agent hint, and the child of an index that a
 * platform picks. Pure apart from reading the call. Internal to proxy/. */
#ifndef WINCH_PROXY_PLATFORMS_H
#define WINCH_PROXY_PLATFORMS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "cache/cache.h"
#include "common/glob.h"
#include "common/platform.h"
#include "config/config.h"

struct call;

/** The platforms a call's client runs. */
typedef struct platsel {
    const config_platform_rule_t *rule; /* borrowed; the first rule matching; NULL when none */
    const config_client_group_t *group; /* borrowed; the client's group; NULL when none */
    const platform_t *set;              /* borrowed (config, or hint below); n of them */
    size_t n;
    platform_t hint;    /* storage for the User-Agent hint */
    const char *source; /* static: "group", "user-agent", "rule", "default" */
} platsel_t;

/** The first rule whose match fits "upstream/repo"; NULL when none. */
const config_platform_rule_t *platforms_rule(const config_t *cfg, const char *upstream,
                                             const char *repo);

/** The first group with a CIDR holding the address peer (NULL: none, or peer NULL): the
 * client's address (call_t.client), which behind a trusted proxy is not the socket's peer. */
const config_client_group_t *platforms_group_by_peer(const config_t *cfg,
                                                     const struct sockaddr_storage *peer);

/** The group whose path_prefix starts target[0..len) and is followed by "/v2/" or is followed
 * by "/v2" at the end of the path; *prefix_len gets the prefix's length. NULL when none. */
const config_client_group_t *platforms_group_by_path(const config_t *cfg, const char *target,
                                                     size_t len, size_t *prefix_len);

/** Fills *out for c (route.upstream and route.name set): the group's set (c->group), else the
 * User-Agent's platform, else the rule's set, else linux/amd64. */
void platforms_select(const struct call *c, platsel_t *out);

/** The index of img's child (an image manifest, not an attestation) for platform p, or -1. */
int platforms_pick(const image_t *img, const platform_t *p);

/** Writes an index entry's platform as "os/arch[/variant]", as the index spells it (not
 * normalised), into buf[cap] (cut when too small). Returns buf. */
const char *platforms_entry_format(const image_platform_t *p, char *buf, size_t cap);

/** Room for platforms_refusal's text. */
#define PLATFORMS_REFUSAL_MAX (GLOB_MAX + PLATFORM_STR_MAX + 96)

/** restrict's 403 text for platform p under rule r (one of cfg's rules): "platform P is not
 * allowed by platforms[i] (MATCH)", into buf[cap]. Returns buf. */
const char *platforms_refusal(const config_t *cfg, const config_platform_rule_t *r,
                              const platform_t *p, char *buf, size_t cap);

/** True when the child ref of an index is an attestation manifest (BuildKit's, or a platform
 * of unknown/unknown). */
bool platforms_is_attestation(const image_ref_t *ref);

#endif
