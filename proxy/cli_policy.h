/** What the policy commands share (cli_policy.c: winch policy explain; cli_pin.c: winch pin,
 * unpin, pins): the configuration and its compiled policy, and the cache opened beside a
 * serving winch when there is one. Internal to proxy/. */
#ifndef WINCH_PROXY_CLI_POLICY_H
#define WINCH_PROXY_CLI_POLICY_H

#include <stdbool.h>
#include <uv.h>

#include "cache/cache.h"
#include "config/config.h"
#include "policy/policy.h"
#include "proxy/cli.h"

typedef struct cli_pctx {
    config_t *cfg;    /* owned */
    policy_t *policy; /* owned */
    uv_loop_t loop;
    bool loop_ready;
    cache_t *cache; /* owned; NULL when there is none and it was optional */
} cli_pctx_t;

/** Loads the configuration the options name, compiles its policy and opens its cache shared:
 * required (need_cache), or when it exists (else x->cache stays NULL). Prints "winch: <why>" and
 * returns the exit status (2: configuration, 1: cache) on failure, 0 on success; call
 * cli_pctx_close either way. */
int cli_pctx_open(cli_pctx_t *x, const cli_common_t *o, bool need_cache);

/** Runs the loop until *flag is set (an asynchronous cache write's callback sets it). */
void cli_pctx_wait(cli_pctx_t *x, const bool *flag);

/** Closes the cache (draining the loop) and frees everything; fine after a failed open. */
void cli_pctx_close(cli_pctx_t *x);

/** The policy clock: the wall clock, offset by WINCH_TEST_CLOCK_OFFSET_S as `winch serve` does
 * (tests only). */
int64_t cli_policy_now_ms(void);

#endif
