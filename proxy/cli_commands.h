/** The commands of the winch binary, one per cli_*.c file, and what main.c tells them. Each
 * takes its own name as argv[0] and returns the process's exit status. Internal to proxy/. */
#ifndef WINCH_PROXY_CLI_COMMANDS_H
#define WINCH_PROXY_CLI_COMMANDS_H

#include "proxy/cli.h"

extern const char cli_version[]; /* "0.1.0" */
extern const char cli_commit[];  /* the git commit built ("abc1234"), or "unknown" */

/** winch serve: runs the mirror until SIGTERM or SIGINT; SIGHUP reloads the configuration
 * (cli_serve.c, reload.c). */
int cli_serve(int argc, char **argv);

/** winch check-config [--config FILE] [flags]: validates, prints the effective configuration
 * as JSON (cli_check.c). Exit 0 valid, 2 invalid. */
int cli_check_config(int argc, char **argv);

/** winch status [--config FILE | --admin HOST:PORT] [--json]: a running winch's status, from
 * its admin listener (cli_status.c). Exit 0, 1 when it cannot be had, 2 for a usage error. */
int cli_status(int argc, char **argv);

/* The cache commands (README "Managing the cache"). */
int cli_ls(int argc, char **argv);      /* cli_cache.c */
int cli_df(int argc, char **argv);      /* cli_cache.c */
int cli_rm(int argc, char **argv);      /* cli_gc.c */
int cli_prune(int argc, char **argv);   /* cli_gc.c */
int cli_inspect(int argc, char **argv); /* cli_inspect.c */
int cli_verify(int argc, char **argv);  /* cli_verify.c */
int cli_warm(int argc, char **argv);    /* cli_warm.c */
int cli_export(int argc, char **argv);  /* cli_export.c */
int cli_import(int argc, char **argv);  /* cli_import.c */

/** winch pin REF [DIGEST], winch unpin REF, winch pins: stored pins (cli_pin.c). */
int cli_pin(int argc, char **argv);
int cli_unpin(int argc, char **argv);
int cli_pins(int argc, char **argv);

/** winch policy explain REF...: which rule decides and why (cli_policy.c). */
int cli_policy(int argc, char **argv);

#endif
