/** A non-blocking TCP connection driven by a uv_poll_t, used on both sides (clients and
 * upstreams). winch owns the socket rather than using uv_tcp_t because it needs three things a
 * uv_stream_t cannot give: sendfile(2) straight from the cache to a non-blocking socket with
 * writability notification, reads that stop exactly where a parser paused (so upstream body
 * bytes can be written to disk from the read buffer without a copy), and TLS on the same fd
 * (issue 3), where OpenSSL reads and writes the socket itself. Every I/O call goes through one
 * transport switch (plain today) so TLS slots in without touching callers.
 *
 * Rules: one write operation (conn_write or conn_sendfile) in flight at a time; reading runs
 * independently. Callbacks run on the loop thread and never inside the call that started the
 * operation. After conn_close, no callback but the close callback fires.
 */
#ifndef WINCH_PROXY_CONN_H
#define WINCH_PROXY_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct conn conn_t;

/** nread > 0: data[0..nread) is valid until the next read callback, or, if the callback calls
 * conn_read_stop, until reading is started again. nread < 0: UV_EOF or -errno; reading stopped. */
typedef void (*conn_read_cb)(conn_t *c, ssize_t nread, const char *data);
/** status 0: everything asked was sent; else -errno (e.g. -EPIPE) and the conn should close. */
typedef void (*conn_write_cb)(conn_t *c, int status);
typedef void (*conn_connect_cb)(conn_t *c, int status);
typedef void (*conn_close_cb)(conn_t *c);

#define CONN_MAX_IOV 8

struct conn {
    /* All fields are private to conn.c; the struct is public only so owners can embed it. */
    uv_poll_t poll;
    uv_loop_t *loop;
    int fd;
    int events; /* UV_READABLE | UV_WRITABLE currently polled */
    bool closing;
    /* Read side. */
    char *rbuf; /* owned, rcap bytes */
    size_t rcap;
    conn_read_cb read_cb;
    bool reading;
    /* Write side: one operation at a time. */
    conn_write_cb write_cb;
    uv_buf_t iov[CONN_MAX_IOV]; /* borrowed buffers, advanced as bytes go out */
    int niov;
    int file_fd;      /* sendfile source, or -1 */
    off_t file_off;
    uint64_t file_left;
    conn_connect_cb connect_cb;
    conn_close_cb close_cb;
    uv_idle_t *unused; /* reserved */
    void *tls; /* reserved for issue 3: the transport state */
    void *data; /* the owner's */
};

/** Wraps an accepted or connected non-blocking socket fd (taken: closed by conn_close).
 * rcap is the read buffer size (allocated here). Returns 0 or -errno/UV_E*; on failure the fd
 * is not taken (the caller closes it) and there is nothing to conn_close. */
int conn_init(conn_t *c, uv_loop_t *loop, int fd, size_t rcap);

/** Starts a non-blocking connect to addr (copied). On 0, cb runs later with 0 or -errno
 * (immediate failures such as ECONNREFUSED also arrive through cb). On a negative return
 * nothing was created and there is nothing to conn_close. The caller arms its own connect
 * timeout and calls conn_close on expiry. */
int conn_connect(conn_t *c, uv_loop_t *loop, const struct sockaddr *addr, size_t rcap,
                 conn_connect_cb cb);

int conn_read_start(conn_t *c, conn_read_cb cb);
void conn_read_stop(conn_t *c);

/** Sends bufs[0..n) (n <= CONN_MAX_IOV); the bytes are borrowed until cb. Tries to write at
 * once, then waits for writability. */
int conn_write(conn_t *c, const uv_buf_t *bufs, int n, conn_write_cb cb);

/** Sends len bytes of file fd (borrowed) from offset off with sendfile(2) (or a read+write
 * fallback where sendfile is not possible). cb when all len bytes went out or on error. */
int conn_sendfile(conn_t *c, int fd, off_t off, uint64_t len, conn_write_cb cb);

/** True while a write or sendfile operation is in flight. */
bool conn_writing(const conn_t *c);

/** Closes the socket (taken fd) and frees the read buffer; cb (may be NULL) runs on a later
 * loop iteration, after which the struct may be freed. Idempotent. */
void conn_close(conn_t *c, conn_close_cb cb);

#endif
