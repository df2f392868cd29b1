/** A scripted fake HTTP/1.1 upstream for the unit tests: a listening socket on 127.0.0.1 with
 * an accept thread and one thread per connection (blocking sockets, so it never depends on
 * the loop under test). Each request is answered by the first route whose pattern matches its
 * target: a fixed script (fu_route) or a handler that writes one (fu_route_fn). A script says
 * what to send and how: status, headers, a body (literal, or N bytes of fu_pattern), chunked or
 * close-delimited, in small pieces, a delay before the head or in the middle of the body, cut
 * after N body bytes, raw bytes instead of a response, close afterwards or hold the connection
 * until the client closes it. Requests without a route get a 404.
 *
 * Every request is recorded (connection, its number on that connection, method, target, the
 * whole head) for assertions, and connections are counted: accepted, closed by the client,
 * open at most at once. Start one per test case; fu_stop joins every thread.
 *
 *     fake_upstream_t *f = fu_start();
 *     fu_route(f, "/v2/", &(fu_response_t){.status = 200, .body = "{}"});
 *     ... point the client at 127.0.0.1:fu_port(f) ...
 *     CHECK_INT(fu_count(f, "/v2/"), 1);
 *     fu_stop(f);
 */
#ifndef WINCH_TESTS_FAKE_UPSTREAM_H
#define WINCH_TESTS_FAKE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FU_MAX_HEAD 20000  /* a request head longer than this closes the connection */
#define FU_MAX_TARGET 2048 /* request targets are recorded up to this */

typedef struct fake_upstream fake_upstream_t;

/** One request as the fake upstream received it. */
typedef struct fu_request {
    fake_upstream_t *server;
    int conn; /* connection number, from 1, in accept order */
    int nth;  /* request number on its connection, from 1 */
    char method[16];
    char target[FU_MAX_TARGET];
    char head[FU_MAX_HEAD + 1]; /* request line and headers, as received */
} fu_request_t;

/** What to send for one request. Zero-initialise; pointers are borrowed (a route's must outlive
 * the server: literals or static buffers; a handler's may point into its fu_request_t or buf). */
typedef struct fu_response {
    int status;          /* 0: no response at all (then close, hold or neither) */
    const char *headers; /* extra header lines, each "Name: value\r\n"; NULL for none */
    const char *body;    /* a literal body: body_len bytes, or strlen(body) when body_len is 0 */
    size_t body_len;
    uint64_t pattern_len; /* instead of body: bytes 0..pattern_len of fu_pattern */
    bool chunked;         /* Transfer-Encoding: chunked, one chunk per piece */
    const char *trailers; /* chunked: trailer lines after the last chunk */
    bool no_length;       /* neither Content-Length nor chunked: the body ends at close */
    size_t piece_max;     /* the body goes out in pieces of 1..piece_max bytes (0: 64 KiB) */
    unsigned seed;        /* for the piece sizes */
    int sleep_every;      /* sleep 1 ms after every sleep_every pieces (0: never) */
    int delay_ms;         /* before the head */
    uint64_t pause_at;    /* after this many body bytes, sleep pause_ms (0 ms: no pause) */
    int pause_ms;
    bool cut; /* stop sending after cut_at body bytes */
    uint64_t cut_at;
    const char *raw; /* send exactly these bytes instead (everything above is ignored) */
    bool close;      /* close the connection after the response, close_delay_ms later */
    int close_delay_ms;
    bool hold;      /* after the response, read until the client closes the connection */
    char buf[8192]; /* scratch for handlers */
} fu_response_t;

/** Runs on the connection's thread; *resp is zeroed and filled in by the handler. */
typedef void (*fu_handler_fn)(const fu_request_t *q, fu_response_t *resp, void *arg);

/** Starts a fake upstream on 127.0.0.1 with a kernel-chosen port. Aborts on failure. */
fake_upstream_t *fu_start(void);

/** Stops accepting, shuts every connection down (a handler waiting in fu_sleep returns early),
 * joins every thread and frees everything. NULL is fine. */
void fu_stop(fake_upstream_t *f);

uint16_t fu_port(const fake_upstream_t *f);

/** Answers targets matching pattern (exact; a trailing '*' matches any rest) with a copy of
 * *resp. Routes are tried in the order they were added. */
void fu_route(fake_upstream_t *f, const char *pattern, const fu_response_t *resp);

/** Answers targets matching pattern with what fn writes. */
void fu_route_fn(fake_upstream_t *f, const char *pattern, fu_handler_fn fn, void *arg);

/** Requests received whose target starts with prefix (NULL: all). */
int fu_count(fake_upstream_t *f, const char *prefix);

/** Copies into *out the i-th (from 0) request received whose target starts with prefix (NULL:
 * any). Returns false when there is none. */
bool fu_nth(fake_upstream_t *f, const char *prefix, int i, fu_request_t *out);

/** Whether target is prefix followed by a decimal number (whatever follows its digits is
 * ignored), stored in *out. For handlers that take a number from the path: /slow/50. */
bool fu_target_num(const char *target, const char *prefix, unsigned long long *out);

/** The value of q's first header named name (case-insensitive), copied into out[cap]; NULL
 * when absent. */
const char *fu_header(const fu_request_t *q, const char *name, char *out, size_t cap);

/** Connections accepted; closed by the client (seen while waiting for a request or holding);
 * open at the same time at most. */
int fu_accepts(fake_upstream_t *f);
int fu_closed(fake_upstream_t *f);
int fu_max_open(fake_upstream_t *f);
/** Responses the client cut short: a send failed (the client closed the connection) before the
 * whole response went out. */
int fu_send_failures(fake_upstream_t *f);
/** Body bytes written to clients so far, every response together. */
uint64_t fu_body_bytes(fake_upstream_t *f);

/** Sleeps ms milliseconds, or less when the server is stopping; returns false then. For
 * handlers that wait for the test. */
bool fu_sleep(fake_upstream_t *f, int ms);

/** Byte i of every pattern body. */
unsigned char fu_pattern(uint64_t i);

/** A loopback port nothing listens on (it was free a moment ago). */
uint16_t fu_unused_port(void);

#endif
