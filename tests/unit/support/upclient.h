/** The client side of the upstream tests (test_proxy_upstream*): a configuration that points
 * proxy/upstream at a fake upstream on 127.0.0.1, a result struct that records what the
 * callbacks saw (and can pause, resume or cancel as it goes), and loop helpers. Everything runs
 * on uv_default_loop(); one test at a time (the configuration is static). */
#ifndef WINCH_TESTS_UPCLIENT_H
#define WINCH_TESTS_UPCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "proxy/upstream.h"

/** The configuration up_make uses; tests may change fields after up_config. */
extern config_t up_gcfg;
extern config_upstream_t up_ucfg;

/** Test defaults (connect 2 s, response and idle 5 s, keep-alive 30 s, 8 connections, 5
 * redirects, 32 KiB of headers, 256 waiting per lane for at most 10 s, 60 s token fetch
 * deadline), for the upstream http://127.0.0.1:port. */
void up_config(uint16_t port);
/** The upstream's host name instead of 127.0.0.1 (copied). */
void up_config_host(const char *host);
/** Credentials for the upstream (copied). */
void up_credentials(const char *user, const char *pass);

upstream_t *up_make(void);
/** Destroys u and runs the loop until its handles are closed. */
void up_destroy(upstream_t *u);

typedef struct upres upres_t;

/** What one request's callbacks saw. Zero-initialise; set the knobs before starting. */
struct upres {
    upreq_t *req;
    int status;
    int headers_calls;
    int body_calls;
    int redirects;
    uint64_t clen;
    bool done;
    int done_status;
    bool cancelled; /* the knobs below cancelled it */
    uint64_t body_len;
    uint64_t mismatches; /* body bytes that differ from fu_pattern */
    char body[1024];     /* the body's first bytes, NUL-terminated */
    char retry_after[64];
    char www_auth[512];
    /* Knobs. */
    bool pause_each;          /* pause in every on_body; a timer resumes later */
    bool pause_resume_inline; /* pause and resume inside on_body */
    bool cancel_in_headers;
    bool cancel_in_body;
    void (*check_headers)(upreq_t *r, upres_t *s); /* extra checks in on_headers */
    void (*check_done)(upreq_t *r, upres_t *s);    /* extra checks in on_done */
    bool priority;         /* the priority lane (else bulk, upreq_start's default) */
    uint32_t deadline_ms;  /* upreq_opts_t.deadline_ms */
    int abort_err;         /* with the next two: upreq_abort(r, abort_err) ... */
    bool abort_in_headers; /* ... in on_headers */
    uint64_t abort_after;  /* ... in on_body once more than this many body bytes came (0: no) */
    bool aborted;          /* one of them did */
    double done_ms;        /* up_mono_ms() when on_done ran */
    int done_seq;          /* order of on_done among every upres_t, from 1 */
    /* pause_each. */
    const char *held;
    size_t held_len;
    uv_timer_t rt;
    bool rt_init;
    int resumes;
};

/** Callbacks that fill an upres_t (the arg). */
extern const upreq_cbs_t up_cbs;

/** upreq_start with up_cbs; checks that it returned 0 and that nothing fired inside it. */
void up_start(upstream_t *u, const char *method, const char *path, const char *const *hdrs,
              upres_t *s);
/** up_start, then runs the loop until s is done (or cancelled). */
void up_get(upstream_t *u, const char *method, const char *path, const char *const *hdrs,
            upres_t *s);
/** Runs the loop until every one of s[0..n) is done or cancelled (at most 20 s). */
void up_wait(upres_t *s, int n);
/** Runs the loop until pred(arg) (at most 20 s), waking at least every 10 ms. */
void up_run_until(bool (*pred)(void *), void *arg);
/** Runs the loop for ms milliseconds. */
void up_run_for(int ms);
/** Closes the resume timer of a pause_each result. */
void up_res_close(upres_t *s);

double up_mono_ms(void);

#endif
