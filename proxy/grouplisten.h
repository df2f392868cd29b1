/** The listeners of client groups ("client_groups[].listen", config_platforms.c): a group may
 * have a plain-HTTP listener of its own, and every request that arrives on it is the group's
 * (before its source address; its own path prefix still strips). This table opens them, after
 * the main listeners, and says which group a listener index (req_listener) belongs to.
 *
 * Listeners open at start only. A SIGHUP reload swaps the configuration's groups: each open
 * listener is then matched to the group whose "listen" is its address (by value), so renaming,
 * reordering or changing a group's platforms takes effect on its listener at once. An open
 * listener that no group names any more stays open until restart and serves like the main
 * listener (path prefix, then source address, else no group); a group whose listen address has
 * no open listener is matched by its cidrs and path_prefix only until restart. Both are logged
 * at every reload ("kept until restart"). Internal to proxy/; app.c owns one. */
#ifndef WINCH_PROXY_GROUPLISTEN_H
#define WINCH_PROXY_GROUPLISTEN_H

#include <stddef.h>

#include "config/config.h"
#include "proxy/server.h"

typedef struct grouplisten grouplisten_t;

/** An empty table. *out owned by the caller (grouplisten_free). Returns 0 or -ENOMEM. */
int grouplisten_create(grouplisten_t **out);

/** Opens the listener of every group of cfg (borrowed; the live configuration, which must
 * outlive t) that has "listen", on s (borrowed), in the groups' order, and logs each bound
 * address ("group NAME listener on HOST:PORT": the real port when 0 was asked). On failure
 * returns an error and writes one line into err[errlen] naming the address and the field;
 * listeners opened before it stay open (server_shutdown closes them). */
int grouplisten_open(grouplisten_t *t, server_t *s, const config_t *cfg, char *err, size_t errlen);

/** The group of listener li (req_listener): borrowed from the live configuration (valid until
 * exit: reloads keep superseded groups). NULL when li is no group's listener, or no group of
 * the configuration names its address any more. */
const config_client_group_t *grouplisten_group(const grouplisten_t *t, int li);

/** After a reload swapped cfg's groups (cfg: the live configuration, as given to
 * grouplisten_open): matches each open listener to the group that names its address, and logs
 * each difference between the groups' listen addresses and the open listeners. Returns the
 * number of those differences (each kept until restart). */
size_t grouplisten_reload(grouplisten_t *t, const config_t *cfg);

/** Frees the table (not the listeners: the server's); NULL is fine. */
void grouplisten_free(grouplisten_t *t);

#endif
