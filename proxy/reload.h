/** SIGHUP reload of `winch serve` (README "Reloading the configuration"): re-reads the
 * configuration with the arguments serve started with and applies what can change while
 * serving, on the loop thread, into the live config_t that everything borrows:
 *   - plain scalars read at use time (timeouts, TTLs, size bounds, prefetch bounds, log level,
 *     log format, retention's low watermark and max_unused) are written in place;
 *   - arrays (policy rules, platform rules, client groups, retention.protect, trusted_proxies)
 *     are swapped with the new config's, and the policy is rebuilt over them.
 * What cannot change without a restart (listeners, TLS files, cache_dir, index_map_size, the
 * upstream list and its credentials, auth, the client-side connection limits,
 * upstream_max_conns, retention.max_size) is kept, and each difference is logged.
 *
 * Calls in flight may hold pointers into the superseded arrays and policy (a decision's rule
 * match, a client group), so nothing superseded is freed before exit: each reload keeps the
 * old arrays and policy (a few KB for a typical configuration) and at most RELOAD_MAX_KEPT
 * reloads are accepted per process; later ones are refused with a message to restart.
 * Internal to proxy/; cli_serve.c drives it. */
#ifndef WINCH_PROXY_RELOAD_H
#define WINCH_PROXY_RELOAD_H

#include "config/config.h"
#include "proxy/app.h"

#define RELOAD_MAX_KEPT 256

typedef struct reloader reloader_t;

/** live (the config app runs on), app and argv[argc] (serve's arguments after "serve",
 * re-read at each reload) are borrowed and must outlive the reloader. On success *out is owned
 * by the caller (reloader_free, after app_destroy). Returns 0 or -ENOMEM. */
int reloader_create(reloader_t **out, config_t *live, app_t *app, int argc, char **argv);

/** Reloads once (the SIGHUP handler's work), on the loop thread. A configuration that does not
 * load is refused: its error is logged and nothing changes. */
void reloader_run(reloader_t *r);

/** Frees every superseded configuration and policy; call after app_destroy. NULL is fine. */
void reloader_free(reloader_t *r);

#endif
