/* Client groups' own listeners (grouplisten.h). */
#include "proxy/grouplisten.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

/* Plain, TLS and admin, then the groups': the server takes them all. */
_Static_assert(3 + CONFIG_MAX_CLIENT_GROUPS <= SERVER_MAX_LISTENERS,
               "the server must take a listener per client group");
_Static_assert(CONFIG_MAX_CLIENT_GROUPS < 128, "by_li holds entry indexes as signed char");

/* One open listener. Its address as configured is its identity across reloads; the group is
 * whichever group of the live configuration names that address. */
typedef struct entry {
    int li;
    char *host; /* owned; as config_t held it at start (no brackets) */
    uint16_t port;
    char bound[96];                       /* the address it got (the real port) */
    char name[CONFIG_GROUP_NAME_MAX + 1]; /* the group it last belonged to, for log lines */
    const config_client_group_t *group;   /* borrowed from the live config; NULL: none now */
} entry_t;

struct grouplisten {
    entry_t e[CONFIG_MAX_CLIENT_GROUPS];
    size_t n;
    signed char by_li[SERVER_MAX_LISTENERS]; /* listener index -> entry index, or -1 */
};

int grouplisten_create(grouplisten_t **out)
{
    grouplisten_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    memset(t->by_li, -1, sizeof t->by_li);
    *out = t;
    return 0;
}

static void show_addr(char *out, size_t cap, const char *host, uint16_t port)
{
    snprintf(out, cap, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, (unsigned)port);
}

int grouplisten_open(grouplisten_t *t, server_t *s, const config_t *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->n_client_groups; i++) {
        const config_client_group_t *g = &cfg->client_groups[i];
        if (!g->listen_host)
            continue;
        char asked[96];
        show_addr(asked, sizeof asked, g->listen_host, g->listen_port);
        if (t->n == CONFIG_MAX_CLIENT_GROUPS) {
            snprintf(err, errlen, "cannot listen on %s (client_groups[%zu].listen): too many",
                     asked, i);
            return -EMFILE;
        }
        entry_t *e = &t->e[t->n];
        int li = server_listen(s, g->listen_host, g->listen_port, NULL, e->bound, sizeof e->bound);
        if (li < 0) {
            snprintf(err, errlen, "cannot listen on %s (client_groups[%zu].listen, group %s): %s",
                     asked, i, g->name, err_str(li));
            return li;
        }
        if (li >= SERVER_MAX_LISTENERS || !(e->host = strdup(g->listen_host))) {
            snprintf(err, errlen, "client_groups[%zu].listen: out of memory", i);
            return -ENOMEM;
        }
        e->li = li;
        e->port = g->listen_port;
        e->group = g;
        snprintf(e->name, sizeof e->name, "%s", g->name);
        t->by_li[li] = (signed char)t->n;
        t->n++;
        /* Always printed, whatever the level, like the main listeners' lines: scripts and tests
         * read the bound ports from it. */
        log_write(WLOG_INFO, "group %s listener on %s", g->name, e->bound);
    }
    return 0;
}

const config_client_group_t *grouplisten_group(const grouplisten_t *t, int li)
{
    if (li < 0 || li >= SERVER_MAX_LISTENERS || t->by_li[li] < 0)
        return NULL;
    return t->e[t->by_li[li]].group;
}

static const config_client_group_t *group_at(const config_t *cfg, const char *host, uint16_t port,
                                             size_t *idx)
{
    for (size_t i = 0; i < cfg->n_client_groups; i++) {
        const config_client_group_t *g = &cfg->client_groups[i];
        if (g->listen_host && config_listen_same(g->listen_host, g->listen_port, host, port)) {
            *idx = i;
            return g;
        }
    }
    return NULL;
}

size_t grouplisten_reload(grouplisten_t *t, const config_t *cfg)
{
    size_t kept = 0, idx = 0;
    for (size_t k = 0; k < t->n; k++) {
        entry_t *e = &t->e[k];
        const config_client_group_t *g = group_at(cfg, e->host, e->port, &idx);
        e->group = g;
        if (!g) {
            LOG_WARN("reload: no client group has listen %s any more (it was group %s's): the "
                     "listener stays open until restart and its requests are grouped as on the "
                     "main listener (path prefix, source address)",
                     e->bound, e->name);
            kept++;
            continue;
        }
        if (strcmp(e->name, g->name) != 0) {
            LOG_INFO("reload: the listener on %s is now group %s's (was %s's)", e->bound, g->name,
                     e->name);
            snprintf(e->name, sizeof e->name, "%s", g->name);
        }
    }
    for (size_t i = 0; i < cfg->n_client_groups; i++) {
        const config_client_group_t *g = &cfg->client_groups[i];
        bool open = false;
        for (size_t k = 0; g->listen_host && k < t->n && !open; k++)
            open = config_listen_same(g->listen_host, g->listen_port, t->e[k].host, t->e[k].port);
        if (!g->listen_host || open)
            continue;
        char asked[96];
        show_addr(asked, sizeof asked, g->listen_host, g->listen_port);
        LOG_WARN("reload: client_groups[%zu].listen (%s, group %s) changed in the file but needs "
                 "a restart: no listener is open there, the group is matched by its cidrs and "
                 "path_prefix until then",
                 i, asked, g->name);
        kept++;
    }
    return kept;
}

void grouplisten_free(grouplisten_t *t)
{
    if (!t)
        return;
    for (size_t k = 0; k < t->n; k++)
        free(t->e[k].host);
    free(t);
}
