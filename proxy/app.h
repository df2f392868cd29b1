/** The application: winch as a registry mirror. It owns everything a running winch has — the
 * configuration (borrowed from main), the upstream clients, the tables of work in flight (shared
 * upstream fetches, blob producers), the policy and the HTTP server — and turns each request the
 * server hands it into a registry call for one handler (manifest.c, blob.c, lists.c).
 *
 * Background work that no client request starts (platform prefetch, eviction, tag
 * revalidation) belongs here too: it runs on the app's loop with the app's upstream clients and
 * cache, and stops in app_shutdown. Nothing in proxy/ is process-wide: two apps on two loops
 * would not share a byte. Internal to proxy/; main.c drives it.
 */
#ifndef WINCH_PROXY_APP_H
#define WINCH_PROXY_APP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cache/cache.h"
#include "config/config.h"
#include "policy/policy.h"

typedef struct app app_t;

/** Creates the application on loop: one upstream client per configured upstream (no network
 * activity yet), the policy, the server (not listening yet). cfg and cache are borrowed and
 * must outlive it. On success *out is owned by the caller (app_destroy). On failure returns an
 * error and writes one line into err[errlen]. */
int app_create(app_t **out, uv_loop_t *loop, const config_t *cfg, cache_t *cache, char *err,
               size_t errlen);

/** Opens the configured listeners (plain and/or TLS, admin, client groups' own). Writes the bound "host:port" of each into
 * bound[len] and tls_bound[len] ("" for one not configured). On failure returns an error and
 * writes one line into err[errlen] (which address or file, and why). */
int app_listen(app_t *a, char *bound, char *tls_bound, size_t len, char *err, size_t errlen);

/** Stops accepting, closes every connection (cancelling what their requests still wait for),
 * stops blob producers and closes the upstream pools. The loop then drains; call app_destroy
 * after uv_run returns. Idempotent. */
void app_shutdown(app_t *a);

/** Makes p (taken; compiled over the live config's rules) the policy of every request
 * dispatched from now on (SIGHUP reload, reload.c). Returns the previous policy, owned by the
 * caller, who must keep it until app_destroy: calls in flight may still read it. */
policy_t *app_set_policy(app_t *a, policy_t *p);

/** The live config's client groups were swapped (SIGHUP reload): matches the groups' own
 * listeners to the new groups by address and logs what differs (grouplisten_reload). Returns
 * the number of differences kept until restart. */
size_t app_groups_reloaded(app_t *a);

/** Upstream i's credentials in the live config changed (SIGHUP reload): see
 * upstream_credentials_changed. */
void app_credentials_changed(app_t *a, size_t i);

/** Frees the application; NULL is fine. */
void app_destroy(app_t *a);

/** The test clock: WINCH_TEST_CLOCK_OFFSET_S=N (seconds, |N| <= 100 years) makes the policy
 * (soak, image age) see the time N seconds from now, so tests check a day's soak without waiting
 * a day. Read at start (app_create, and the policy commands); a set value is announced with a
 * warning, a bad one logged and ignored. Returns the offset in ms (0 when unset). For tests
 * only. */
int64_t app_test_clock_offset_ms(void);

#endif
