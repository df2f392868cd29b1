/** What the cache commands (cli_cache.c, cli_gc.c, cli_inspect.c, cli_verify.c,
 * cli_archive.c) share: opening the cache with the common options, JSON output, an image's
 * size and platforms. Internal to proxy/. */
#ifndef WINCH_PROXY_CLI_CACHE_H
#define WINCH_PROXY_CLI_CACHE_H

#include <jansson.h>

#include "proxy/cli.h"

typedef struct cache_cmd {
    cli_common_t o;
    char **rest; /* owned: storage of o.argv */
    config_t *cfg;
    uv_loop_t loop;
    bool loop_ok;
    cache_t *cache;
} cache_cmd_t;

/** Parses the common options, loads the configuration and opens the cache shared on a loop of
 * the command's own. Returns 0 or the exit status (a message printed); cache_cmd_close either
 * way. */
int cache_cmd_open(int argc, char **argv, cache_cmd_t *cmd);
/** The same, but a cache that does not exist yet is created (opened as a server would, taking
 * its lock), for the commands that fill one from nothing (import). */
int cache_cmd_open_create(int argc, char **argv, cache_cmd_t *cmd);
/** Runs the loop dry, closes the cache and frees everything. */
void cache_cmd_close(cache_cmd_t *cmd);
/** Prints j (taken) indented, keys sorted. */
void cache_cmd_json(json_t *j);
/** Bytes the image at digest holds in the cache (each item once). */
uint64_t cache_cmd_image_size(cache_t *c, const char *digest);
/** Appends the platforms of the image at digest to list ("os/arch[/variant]"): an index's
 * (attestations left out), or a manifest's config's. */
int cache_cmd_platforms(cache_t *c, const char *digest, json_t *list);

#endif
