#include "upclient.h"

#include <stdio.h>
#include <string.h>

#include "check.h"
#include "fake_upstream.h"
#include "testutil.h"

config_t up_gcfg;
config_upstream_t up_ucfg;
static char host_buf[64], name_buf[64], user_buf[64], pass_buf[64];

void up_config(uint16_t port)
{
    memset(&up_gcfg, 0, sizeof up_gcfg);
    up_gcfg.upstream_connect_timeout_ms = 2000;
    up_gcfg.upstream_response_timeout_ms = 5000;
    up_gcfg.upstream_idle_timeout_ms = 5000;
    up_gcfg.upstream_keepalive_ms = 30000;
    up_gcfg.upstream_max_conns = 8;
    up_gcfg.upstream_max_redirects = 5;
    up_gcfg.upstream_max_queue = 256;
    up_gcfg.upstream_queue_timeout_ms = 10000;
    up_gcfg.upstream_fetch_deadline_ms = 60000;
    up_gcfg.max_header_bytes = 32768;
    memset(&up_ucfg, 0, sizeof up_ucfg);
    snprintf(host_buf, sizeof host_buf, "127.0.0.1");
    snprintf(name_buf, sizeof name_buf, "127.0.0.1:%u", (unsigned)port);
    up_ucfg.name = name_buf;
    up_ucfg.host = host_buf;
    up_ucfg.port = port;
    up_ucfg.base_path = (char *)"";
}

void up_config_host(const char *host)
{
    snprintf(host_buf, sizeof host_buf, "%s", host);
}

void up_credentials(const char *user, const char *pass)
{
    snprintf(user_buf, sizeof user_buf, "%s", user);
    snprintf(pass_buf, sizeof pass_buf, "%s", pass);
    up_ucfg.username = user_buf;
    up_ucfg.password = pass_buf;
}

upstream_t *up_make(void)
{
    upstream_t *u;
    CHECK_INT(upstream_create(&u, uv_default_loop(), &up_ucfg, &up_gcfg), 0);
    CHECK(upstream_config(u) == &up_ucfg);
    return u;
}

void up_destroy(upstream_t *u)
{
    upstream_destroy(u);
    for (int i = 0; i < 10; i++) {
        uv_run(uv_default_loop(), UV_RUN_NOWAIT);
        test_sleep_ms(1);
    }
}

/* ---- Callbacks. ---- */

static void take_body(upres_t *s, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] != fu_pattern(s->body_len + i))
            s->mismatches++;
    for (size_t i = 0; i < len && s->body_len + i < sizeof s->body - 1; i++)
        s->body[s->body_len + i] = data[i];
    s->body_len += len;
}

static void on_resume_timer(uv_timer_t *t)
{
    upres_t *s = t->data;
    /* The held pointer must still hold exactly what on_body was given, however long ago. */
    take_body(s, s->held, s->held_len);
    s->held = NULL;
    s->resumes++;
    upreq_resume(s->req);
}

static void copy_header(upreq_t *r, const char *name, char *out, size_t cap)
{
    const char *v = upreq_header(r, name);
    snprintf(out, cap, "%s", v ? v : "");
}

static void on_headers(upreq_t *r, void *arg, int status)
{
    upres_t *s = arg;
    CHECK(!s->done);
    s->status = status;
    s->headers_calls++;
    s->clen = upreq_content_length(r);
    s->redirects = upreq_redirects(r);
    copy_header(r, "Retry-After", s->retry_after, sizeof s->retry_after);
    copy_header(r, "WWW-Authenticate", s->www_auth, sizeof s->www_auth);
    if (s->check_headers)
        s->check_headers(r, s);
    if (s->cancel_in_headers) {
        upreq_cancel(r);
        s->cancelled = true;
    }
    if (s->abort_in_headers) {
        upreq_abort(r, s->abort_err);
        s->aborted = true;
    }
}

static void pause_each(upreq_t *r, upres_t *s, const char *data, size_t len)
{
    upreq_pause(r);
    s->held = data;
    s->held_len = len;
    if (!s->rt_init) {
        uv_timer_init(uv_default_loop(), &s->rt);
        s->rt.data = s;
        s->rt_init = true;
    }
    /* Mostly the next iteration; now and then 2 ms, so the server fills the socket and a conn
     * that kept reading would overwrite the held bytes. */
    uv_timer_start(&s->rt, on_resume_timer, s->body_calls % 97 == 0 ? 2 : 0, 0);
}

static void on_body(upreq_t *r, void *arg, const char *data, size_t len)
{
    upres_t *s = arg;
    s->body_calls++;
    CHECK(!s->done);
    CHECK(s->held == NULL); /* never a body call while paused */
    if (s->cancel_in_body) {
        take_body(s, data, len);
        upreq_cancel(r);
        s->cancelled = true;
        return;
    }
    if (s->pause_each) {
        pause_each(r, s, data, len);
        return;
    }
    if (s->pause_resume_inline) {
        upreq_pause(r);
        upreq_resume(r);
    }
    take_body(s, data, len);
    if (s->abort_after && s->body_len > s->abort_after && !s->aborted) {
        upreq_abort(r, s->abort_err);
        s->aborted = true;
    }
}

static int done_seq;

static void on_done(upreq_t *r, void *arg, int status)
{
    upres_t *s = arg;
    CHECK(!s->done);
    CHECK(!s->cancelled); /* no callback after upreq_cancel */
    if (s->check_done)
        s->check_done(r, s);
    s->done = true;
    s->done_status = status;
    s->done_ms = up_mono_ms();
    s->done_seq = ++done_seq;
}

const upreq_cbs_t up_cbs = {.on_headers = on_headers, .on_body = on_body, .on_done = on_done};

/* ---- Running. ---- */

void up_start(upstream_t *u, const char *method, const char *path, const char *const *hdrs,
              upres_t *s)
{
    upreq_opts_t o = {.lane = s->priority ? UPREQ_PRIORITY : UPREQ_BULK,
                      .deadline_ms = s->deadline_ms};
    CHECK_INT(upreq_start_opts(&s->req, u, method, path, hdrs, &up_cbs, s, &o), 0);
    CHECK(!s->done && s->headers_calls == 0); /* nothing fires inside upreq_start */
}

void up_get(upstream_t *u, const char *method, const char *path, const char *const *hdrs,
            upres_t *s)
{
    up_start(u, method, path, hdrs, s);
    up_wait(s, 1);
}

typedef struct many {
    upres_t *s;
    int n;
} many_t;

static bool all_over(void *arg)
{
    many_t *m = arg;
    for (int i = 0; i < m->n; i++)
        if (!m->s[i].done && !m->s[i].cancelled)
            return false;
    return true;
}

void up_wait(upres_t *s, int n)
{
    many_t m = {s, n};
    up_run_until(all_over, &m);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void on_tick_closed(uv_handle_t *h)
{
    *(bool *)h->data = true;
}

void up_run_until(bool (*pred)(void *), void *arg)
{
    uv_loop_t *loop = uv_default_loop();
    double t0 = up_mono_ms();
    uv_timer_t tick;
    bool closed = false;
    uv_timer_init(loop, &tick);
    tick.data = &closed;
    uv_timer_start(&tick, on_tick, 10, 10);
    while (!pred(arg)) {
        uv_run(loop, UV_RUN_ONCE);
        CHECK(up_mono_ms() - t0 < 20000);
    }
    uv_close((uv_handle_t *)&tick, on_tick_closed);
    while (!closed)
        uv_run(loop, UV_RUN_NOWAIT);
}

void up_run_for(int ms)
{
    double t0 = up_mono_ms();
    while (up_mono_ms() - t0 < ms) {
        uv_run(uv_default_loop(), UV_RUN_NOWAIT);
        test_sleep_ms(1);
    }
}

void up_res_close(upres_t *s)
{
    if (s->rt_init)
        uv_close((uv_handle_t *)&s->rt, NULL);
    s->rt_init = false;
}

double up_mono_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}
