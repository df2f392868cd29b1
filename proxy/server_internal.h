/* What the files of the HTTP/1.1 server share, and nobody else may include: the connection
 * (client_t, which doubles as its current request), the server struct, and the calls between
 *   server.c        connection lifecycle, request heads (llhttp), listeners;
 *   server_admit.c  who gets in: accepting, the idle LRU, the per-address table, the fd budget;
 *   server_resp.c   the request accessors and the response primitives of server.h.
 */
#ifndef WINCH_PROXY_SERVER_INTERNAL_H
#define WINCH_PROXY_SERVER_INTERNAL_H

#include <llhttp.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "common/buf.h"
#include "common/sbuf.h"
#include "proxy/conn.h"
#include "proxy/server.h"

#define CLIENT_RBUF 16384
#define URL_MAX 4096
#define HEAD_MAX 2048
#define MAX_LISTENERS SERVER_MAX_LISTENERS
_Static_assert(MAX_LISTENERS <= 255, "client_t.listener is a uint8_t");
#define FDS_PER_REQUEST SERVER_FDS_PER_REQUEST

enum client_state { CS_IDLE, CS_HEAD, CS_HANDLING, CS_CLOSING };

struct req {
    char unused; /* the request is its connection: see client_t */
};

typedef struct peer peer_t;

/* One client connection. What only a request in progress needs (the application's storage and
 * the response head) lives in `rq`, allocated when a head is handed over and freed when the
 * request completes; the request head's buffers are freed when the connection goes idle; the
 * read buffer is conn's, released while idle too. An idle connection costs about 1 KiB. */
typedef struct client {
    conn_t conn;
    server_t *srv;
    struct client *prev, *next;           /* every connection */
    struct client *lru_prev, *lru_next;   /* idle connections, oldest first (idle_listed) */
    struct client *plru_prev, *plru_next; /* idle connections of the same peer, oldest first */
    peer_t *peer;                         /* its address's entry; NULL when not counted */
    llhttp_t parser;
    uv_timer_t timer;
    int handles_open; /* conn + timer; freed when both closed */
    enum client_state state;
    bool tls;
    uint8_t listener; /* index of the listener it came in on (server_listen's order) */
    bool keep_alive;
    bool has_body;    /* the request announced a body: answer, then close */
    bool handed;      /* on_request ran and on_complete is still due */
    bool idle_listed; /* on the idle LRU (and its peer's) */
    bool served;      /* a request was handed over before: the head timer starts at its first
                         byte, not at accept */
    bool budgeted;    /* the request in progress counts FDS_PER_REQUEST in the fd budget */
    int bad;          /* req_bad: 0, 400, 414, 431 or 503 */
    bool tls_hello;   /* the bad request was a TLS handshake on the plain listener */
    uint64_t head_bytes;
    uint64_t id;
    struct sockaddr_storage peer_addr;
    char peer_str[48];

    /* Request head being parsed (allocated on the first byte, freed when idle). */
    buf_t url;
    bool url_too_long;
    buf_t hdrs; /* "name\0value\0" pairs, bounded by the head limit */

    /* Bytes after the current request in the read buffer (pipelining). */
    const char *rest;
    size_t rest_len;

    /* Response. */
    void *rq; /* from hand_over to completion: data_size bytes of application storage, then
                 HEAD_MAX bytes of response head */
    sbuf_t hb;
    int status;
    bool head_begun;
    uint64_t body_sent;
    char *body;
    bool free_body;
    int file_fd; /* taken file for resp_send_file, or -1 */
    off_t file_off;
    uint64_t file_left;
    req_io_cb io_cb;
    uv_buf_t bufs[2];
    int64_t start_ms;

    req_t req;
} client_t;

/* A rate-limited log line: the first occurrence is logged, later ones within the interval are
 * counted and reported with the next line that gets out. */
typedef struct ratelog {
    int64_t last_ms;
    uint64_t suppressed;
    bool ever;
} ratelog_t;

enum accept_pause { PAUSE_NONE, PAUSE_LIMIT, PAUSE_FDS };

struct server {
    uv_loop_t *loop;
    server_limits_t limits;
    void (*on_request)(req_t *r, void *arg);
    void (*on_complete)(req_t *r, void *arg, enum req_outcome outcome);
    void *arg;
    size_t data_size;             /* rounded up to max_align_t */
    int listen_fd[MAX_LISTENERS]; /* -1 when not open */
    uv_poll_t listen_poll[MAX_LISTENERS];
    SSL_CTX *listen_tls[MAX_LISTENERS];
    int nlisteners;
    bool accepting; /* polling the listeners */
    enum accept_pause paused;
    bool shutting_down;
    client_t *clients;
    uint32_t nclients;
    uint64_t next_id;

    /* Admission (server_admit.c). */
    server_plan_t plan;
    client_t *lru_head, *lru_tail; /* idle connections, oldest first */
    uint32_t nidle;
    uint32_t nbudgeted; /* requests holding FDS_PER_REQUEST */
    peer_t **peers;     /* open-addressing table of the addresses with connections */
    uint32_t peers_cap, npeers;
    uint64_t peer_key[2]; /* random: an attacker cannot aim addresses at one chain */
    uv_timer_t resume_timer;
    bool resume_timer_open;
    ratelog_t log_limit, log_fds, log_refused, log_busy;
};

static inline client_t *client_of(const req_t *r)
{
    return (client_t *)((char *)r - offsetof(client_t, req));
}

/* ---- server.c ---------------------------------------------------------------------------- */

/** Closes the connection (on_complete(REQ_GONE) first when a request is in progress); its fd
 * is closed at once, the memory once libuv has closed its handles. Idempotent. */
void client_close(client_t *c);

/** Wraps an accepted, non-blocking fd (taken) in a connection of peer (may be NULL; the
 * caller counts the connection in it on success). Returns NULL when it could not (the fd is
 * closed). */
client_t *client_accept(server_t *s, int fd, const struct sockaddr_storage *addr, peer_t *peer,
                        SSL_CTX *tls);

/** (Re)arms the connection's one timer; on expiry the connection closes. */
void client_arm_timer(client_t *c, uint32_t ms);

/* ---- server_admit.c ---------------------------------------------------------------------- */

/** The listeners' poll callback. */
void admit_on_listen_ready(uv_poll_t *h, int status, int events);
/** Sets up admission for a new server (its random hash key, its plan). */
void admit_init(server_t *s);
/** Computes s->plan from the limits and RLIMIT_NOFILE. */
void admit_plan(server_t *s);
/** c has nothing to do (fresh, or between requests): it may be closed to admit another. */
void admit_idle_add(client_t *c);
void admit_idle_remove(client_t *c);
/** A request head is complete: takes FDS_PER_REQUEST of the fd budget for it (closing idle
 * connections to make room); false when even that leaves no room. */
bool admit_request(client_t *c);
/** The request no longer needs its fds. */
void admit_request_done(client_t *c);
/** c is closing: gives back its address's count; accepting resumes if it was paused. */
void admit_release(client_t *c);
/** Stops the timers and frees the tables (server_shutdown, server_destroy). */
void admit_shutdown(server_t *s);
void admit_free(server_t *s);
/** Starts or stops polling the listeners. */
void admit_poll_listeners(server_t *s, bool on);

/* ---- server_resp.c ----------------------------------------------------------------------- */

/** Frees what the response still holds (a taken body, a taken file). */
void resp_release(client_t *c);

#endif
