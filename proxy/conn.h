/** A non-blocking TCP connection driven by a uv_poll_t, used on both sides (clients and
 * upstreams). winch owns the socket rather than using uv_tcp_t because it needs three things a
 * uv_stream_t cannot give: sendfile(2) straight from the cache to a non-blocking socket with
 * writability notification, reads that stop exactly where a parser paused (so upstream body
 * bytes can be written to disk from the read buffer without a copy), and TLS on the same fd,
 * where OpenSSL reads and writes the socket itself. Every I/O call goes through one transport
 * switch (plain or TLS), so callers do not care which one a conn uses.
 *
 * Rules: one write operation (conn_write or conn_sendfile) in flight at a time; reading runs
 * independently. Callbacks run on the loop thread and never inside the call that started the
 * operation: an operation that completes at once reports as soon as the conn callback it was
 * started from has returned (no extra loop iteration), or, when started elsewhere, on the next
 * loop iteration. After conn_close, no callback but the close callback fires.
 */
#ifndef WINCH_PROXY_CONN_H
#define WINCH_PROXY_CONN_H

#include <openssl/types.h>
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
/** n > 0: n bytes went from the socket into the pipe. n < 0: UV_EOF, -ENOBUFS (the pipe is
 * full while the socket holds more) or -errno; splicing stopped. */
typedef void (*conn_splice_cb)(conn_t *c, ssize_t n);

#define CONN_MAX_IOV 8

struct conn {
    /* All fields are private to conn.c and conn_tls.c; the struct is public only so owners can
     * embed it. */
    uv_poll_t poll;
    uv_loop_t *loop;
    int fd;
    int events; /* UV_READABLE | UV_WRITABLE currently polled */
    bool closing;
    /* Read side. */
    char *rbuf; /* owned, rcap bytes; NULL until a read needs it */
    size_t rcap;
    conn_read_cb read_cb;
    bool reading;
    bool splicing;        /* reading moves bytes into splice_fd instead of rbuf */
    int splice_fd;        /* a pipe's write end, borrowed */
    uint64_t splice_left; /* bytes still to move; splicing stops at 0 */
    conn_splice_cb splice_cb;
    /* Write side: one operation at a time. */
    conn_write_cb write_cb;
    uv_buf_t iov[CONN_MAX_IOV]; /* borrowed buffers, advanced as bytes go out */
    int niov;
    int file_fd; /* sendfile source, or -1 */
    off_t file_off;
    uint64_t file_left;
    conn_connect_cb connect_cb;
    conn_close_cb close_cb;
    uv_idle_t *ext; /* conn.c's private extension (deferred callbacks, TLS buffers) */
    void *tls;      /* TLS transport state, NULL for plain sockets */
    void *data;     /* the owner's */
};

/** Wraps an accepted or connected non-blocking socket fd (taken: closed by conn_close).
 * rcap is the read buffer size (allocated at the first read). Returns 0 or -errno/UV_E*; on failure the fd
 * is not taken (the caller closes it) and there is nothing to conn_close. */
int conn_init(conn_t *c, uv_loop_t *loop, int fd, size_t rcap);

/** Starts a non-blocking connect to addr (copied). On 0, cb runs later with 0 or -errno
 * (immediate failures such as ECONNREFUSED also arrive through cb). On a negative return
 * nothing was created and there is nothing to conn_close. The caller arms its own connect
 * timeout and calls conn_close on expiry. */
int conn_connect(conn_t *c, uv_loop_t *loop, const struct sockaddr *addr, size_t rcap,
                 conn_connect_cb cb);

/** Like conn_connect, then a TLS handshake as a client: cb runs once the handshake is done
 * (0), or with -errno (connect failure, reset) or WE_TLS (handshake or certificate failure;
 * conn_tls_error then says why). ctx is borrowed and must outlive the conn (SSL objects hold
 * a reference). sni_host (borrowed, copied) is the server name: sent as SNI unless it is an
 * IP literal, and, when verify_host, the name (or IP address) the certificate must match; the
 * chain itself is verified as ctx says. On a negative return nothing was created. The connect
 * timeout the caller arms covers the handshake. */
int conn_connect_tls(conn_t *c, uv_loop_t *loop, const struct sockaddr *addr, size_t rcap,
                     SSL_CTX *ctx, const char *sni_host, bool verify_host, conn_connect_cb cb);

/** Like conn_init, for an accepted socket that speaks TLS as the server (ctx borrowed, must
 * outlive the conn). The handshake runs inside the first reads: the read callback sees only
 * application data, or an error (WE_TLS for a failed handshake, e.g. a plain-HTTP client). */
int conn_init_tls_server(conn_t *c, uv_loop_t *loop, int fd, size_t rcap, SSL_CTX *ctx);

/** Why the TLS handshake (or a TLS read/write) failed, e.g. "certificate verify failed: unable
 * to get local issuer certificate"; NULL for plain conns and when nothing failed. Borrowed,
 * valid until conn_close. Never holds secrets. */
const char *conn_tls_error(const conn_t *c);

/** True when c speaks TLS. */
bool conn_is_tls(const conn_t *c);

/** The name in the peer's verified certificate (a client certificate on the TLS listener): its
 * subject CN, or without one its first e-mail or DNS subject alternative name, as UTF-8 into
 * buf[len]. Returns 0; WE_NOTFOUND when the peer sent no certificate (or c is not TLS);
 * WE_TLS when the certificate did not verify or its name is unusable (empty, longer than
 * len - 1, or holding control characters). */
int conn_tls_peer_name(const conn_t *c, char *buf, size_t len);

/** Reading runs until conn_read_stop or an error. Stopping is cheap and lazy: the fd stays
 * in the poll set until it reports readability while nobody reads. */
int conn_read_start(conn_t *c, conn_read_cb cb);
void conn_read_stop(conn_t *c);

/** Plain conns only: like conn_read_start, but as bytes arrive, up to max of them go straight
 * from the socket into pipe_fd (a pipe's non-blocking write end, borrowed) with splice(2), and
 * cb reports each move; nothing passes through the read buffer. Stops by itself once max bytes
 * moved (cb has seen the last of them), on an error or a full pipe (cb's n < 0), or at
 * conn_read_stop; conn_read_start or conn_splice_start again goes on. The caller must have
 * consumed every byte it read before (there is no read buffer to drain). Returns 0, -ENOTSUP
 * for a TLS conn, -EINVAL, -EBADF. */
int conn_splice_start(conn_t *c, int pipe_fd, uint64_t max, conn_splice_cb cb);

/** True when bytes have arrived that nobody has read yet (in the socket, or decrypted in
 * OpenSSL): the peer is sending. */
bool conn_input_pending(const conn_t *c);

/** Frees the read buffer (and TLS's staging buffer when no write is in flight) until the next
 * read or write needs them: for a connection idle between requests. Bytes of the last read
 * callback are gone: only for a caller that holds none. */
void conn_release_buffers(conn_t *c);

/** Sends bufs[0..n) (n <= CONN_MAX_IOV); the bytes are borrowed until cb. Tries to write at
 * once, then waits for writability. */
int conn_write(conn_t *c, const uv_buf_t *bufs, int n, conn_write_cb cb);

/** Sends len bytes of file fd (borrowed) from offset off with sendfile(2) (or a bounded
 * pread+write fallback where sendfile is not possible, always with TLS). cb when all len bytes
 * went out or on error. */
int conn_sendfile(conn_t *c, int fd, off_t off, uint64_t len, conn_write_cb cb);

/** True while a write or sendfile operation is in flight. */
bool conn_writing(const conn_t *c);

/** Closes the socket (taken fd) and frees the read buffer; cb (may be NULL) runs on a later
 * loop iteration, after which the struct may be freed. Idempotent. */
void conn_close(conn_t *c, conn_close_cb cb);

#endif
