/** What the commands of the winch binary share (main.c dispatches; cli_*.c implement): the
 * options every cache command takes (--config FILE, --cache-dir DIR, --json), opening the cache
 * beside a serving winch, and output as docker prints it (sizes "12.3MB", times "3 days ago",
 * aligned tables). Internal to proxy/. */
#ifndef WINCH_PROXY_CLI_H
#define WINCH_PROXY_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cache/cache.h"
#include "config/config.h"

/** A command: argv[0] is its name; returns the process's exit status. */
typedef int (*cli_command_fn)(int argc, char **argv);

/** The options every cache command takes, and the operands left once they are read. */
typedef struct cli_common {
    const char *config;    /* --config FILE, or NULL */
    const char *cache_dir; /* --cache-dir DIR, or NULL */
    bool json;             /* --json */
    int argc;              /* what remains: operands and the command's own flags */
    char **argv;           /* borrowed from the caller's argv (argv[0] is the command) */
} cli_common_t;

/** Reads --config, --cache-dir and --json (also as --x=value) out of argv[1..argc); the rest
 * stays in order in out->argv (which points into storage the caller provides: rest, with room
 * for argc pointers). Returns 0, or 2 after printing a message for a flag without its value. */
int cli_common_parse(int argc, char **argv, char **rest, cli_common_t *out);

/** The configuration the options name (defaults, then --config, then --cache-dir). On failure
 * prints "winch: <why>" and returns 2; on success *cfg is owned by the caller (config_free). */
int cli_load_config(const cli_common_t *o, config_t **cfg);

/** Opens cfg's cache shared (beside a serving winch, see cache_opts_t.shared) on loop. Prints
 * "winch: <why>" and returns 1 on failure; *out owned by the caller (cache_close, then run the
 * loop). */
int cli_open_cache(uv_loop_t *loop, const config_t *cfg, cache_t **out);

/** Bytes as docker prints them: decimal units, three significant digits ("512B", "4.1kB",
 * "12.3MB", "1.07GB"). out holds at least 16 bytes. */
void cli_size(uint64_t bytes, char *out, size_t len);

/** How long ago then_ms was, at now_ms, as docker says it ("Less than a second ago", "About a
 * minute ago", "3 days ago", "2 months ago"); "never" for 0. */
void cli_ago(int64_t then_ms, int64_t now_ms, char *out, size_t len);

/** An image reference from the command line, resolved against the configured upstreams
 * (cli_ref.c): [UPSTREAM/]REPOSITORY[:TAG][@DIGEST]; Docker Hub's library/ added; a missing tag
 * (and no digest) means "latest". */
typedef struct cli_ref {
    char upstream[256];
    char repo[REF_NAME_MAX + 1];
    char tag[REF_TAG_MAX + 1];       /* "" when only a digest was given */
    char digest[REF_DIGEST_MAX + 1]; /* "" when none */
} cli_ref_t;
/** Parses s into *out. Returns 0 or WE_INVALID. */
int cli_ref_parse(const config_t *cfg, const char *s, cli_ref_t *out);
/** The manifest digest r names: its digest, or what its tag points to in the cache. Returns 0
 * or WE_NOTFOUND. */
int cli_ref_resolve(cache_t *c, const cli_ref_t *r, char digest[REF_DIGEST_MAX + 1]);

/** A table printed with its columns aligned (three spaces between columns, as docker's). Cells
 * are copied; at most CLI_TABLE_COLS columns. */
#define CLI_TABLE_COLS 12
typedef struct cli_table cli_table_t;
int cli_table_new(cli_table_t **out, size_t ncols, const char *const *headers);
/** Adds a row of ncols cells (NULL prints as ""). Returns 0 or -ENOMEM. */
int cli_table_add(cli_table_t *t, const char *const *cells);
/** Prints the header and the rows to stdout, then frees the table. */
void cli_table_print(cli_table_t *t);
void cli_table_free(cli_table_t *t);

/** "HOST:PORT" ("[HOST]:PORT" for IPv6) by which this machine reaches a listener configured on
 * host (borrowed) and port: a wildcard (0.0.0.0, ::) becomes loopback. Into out[len]. */
void cli_local_address(const char *host, uint16_t port, char *out, size_t len);

#endif
