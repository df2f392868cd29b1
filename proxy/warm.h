/** winch warm's engine (warm.c): pulls images through a winch listener the way a client does —
 * the manifest by tag or digest, for an index the manifests of the wanted platforms (resolved
 * here with image_parse), then every config and layer, a few at a time — so that the winch
 * behind the listener fills its cache. Bodies are counted and dropped: the server verifies
 * every digest before it sends a blob's last byte, so a complete response is verified content.
 * Internal to proxy/ (cli_warm.c drives it). */
#ifndef WINCH_PROXY_WARM_H
#define WINCH_PROXY_WARM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/platform.h"
#include "config/config.h"
#include "proxy/cli.h"

typedef struct warm warm_t;

/** What the engine tells its driver, on the loop. Strings are borrowed for the call. */
typedef struct warm_events {
    /** A REF's content is known: nblobs blobs of bytes in all will be fetched for it, for the
     * platforms listed ("" for a single-platform image). */
    void (*start)(void *arg, const char *ref, const char *platforms, size_t nblobs, uint64_t bytes);
    /** n more body bytes arrived. */
    void (*bytes)(void *arg, uint64_t n);
    /** One blob is done: status 0, or the error after the last retry. */
    void (*blob)(void *arg, const char *digest, uint64_t size, int status);
    /** A REF is done: status 0, or an error with why (one line). digest: its manifest's ("" if
     * unknown). */
    void (*done)(void *arg, const char *ref, const char *digest, int status, const char *why);
    void *arg;
} warm_events_t;

typedef struct warm_opts {
    uv_loop_t *loop;
    const config_t *cfg; /* the mirror's configuration: upstream names, the default one */
    const char *server;  /* base URL of the listener: "http://127.0.0.1:5000" */
    char *const *refs;   /* [UPSTREAM/]REPOSITORY[:TAG][@DIGEST], as cli_ref_parse reads */
    size_t nrefs;
    const platform_t *platforms; /* of an index: these, normalised (none: linux/amd64) */
    size_t nplatforms;
    bool all_platforms; /* of an index: every platform (attestations left out) */
    unsigned parallel;  /* blobs in flight at once; 0: 4 */
    warm_events_t ev;
} warm_opts_t;

/** Starts pulling o->refs one after the other. Everything in o is borrowed until done runs
 * (once, on the loop, never inside this call) with the number of REFs that failed. On failure
 * to start returns an error and writes why into err[errlen]; done never runs then. *out owned
 * by the caller (warm_free, after done). */
int warm_start(warm_t **out, const warm_opts_t *o, void (*done)(void *arg, unsigned failed),
               void *arg, char *err, size_t errlen);

/** The digests of every manifest and blob the engine fetched whole (borrowed, valid until
 * warm_free): what the cache behind the listener should now hold. */
size_t warm_fetched(const warm_t *w, const char *const **digests);

/** Frees the engine and its client (run the loop afterwards: handles close). NULL is fine. */
void warm_free(warm_t *w);

#endif
