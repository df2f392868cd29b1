/* What conn.c (the plain transport and the poll machinery) and conn_tls.c (the TLS transport)
 * share, and nobody else may include (tests/tools/archmap.py checks): the private extension
 * of a conn, the TLS state, and the few calls each side makes into the other. */
#ifndef WINCH_PROXY_CONN_INTERNAL_H
#define WINCH_PROXY_CONN_INTERNAL_H

#include <openssl/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <uv.h>

#include "proxy/conn.h"

/* TLS staging buffer: what one SSL_write gets (four full records). */
#define TLS_WBUF (64 * 1024)

typedef struct conn_ext {
    uv_idle_t idle;   /* first member: conn->ext points here */
    int open_handles; /* handles still to close after conn_close */
    bool connecting;  /* connect(2) in progress: waiting for writability */
    bool wr_wait;     /* write operation waiting for writability */
    bool no_sendfile; /* sendfile(2) refused this fd pair: use pread+send */
    bool defer_connect;
    int connect_status;
    bool defer_write;
    int write_status;
    bool defer_read; /* TLS: plaintext is buffered in OpenSSL, the poll will not report it */
    int in_cb;       /* > 0 while a callback of this conn runs: reports wait for its end */
} conn_ext_t;

typedef struct tls_conn {
    SSL *ssl;
    bool handshaking; /* client: handshake running, the connect callback has not fired */
    bool fatal;       /* an SSL call failed for good: no SSL_shutdown */
    int hs_need;      /* poll bit the handshake waits for */
    int rd_need;      /* poll bit a stalled SSL_read waits for (normally UV_READABLE) */
    int wr_need;      /* poll bit a stalled SSL_write waits for (normally UV_WRITABLE) */
    int sys_err;      /* -errno of the last failed socket call in the BIO, 0 if none */
    int rd_err;       /* read error or EOF (UV_EOF) found after returning data; next read */
    char *wbuf;       /* TLS_WBUF bytes, allocated at a write, freed by conn_tls_release */
    size_t staged;    /* bytes of wbuf handed to SSL_write and not yet accepted */
    char err[256];    /* why the handshake failed, "" if it did not */
} tls_conn_t;

static inline conn_ext_t *ext_of(const conn_t *c)
{
    return (conn_ext_t *)c->ext;
}

static inline tls_conn_t *tls_of(const conn_t *c)
{
    return (tls_conn_t *)c->tls;
}

/* ---- conn.c, for the TLS side ------------------------------------------------------------ */

/** Adds the poll bits the conn now wants (never removes any). Returns 0 or a UV_E* code. */
int conn_update_poll(conn_t *c);

/** The TCP connect behind conn_connect and conn_connect_tls. t (may be NULL) is taken: bound
 * to c on success, discarded on failure. */
int conn_start_connect(conn_t *c, uv_loop_t *loop, const struct sockaddr *addr, size_t rcap,
                       tls_conn_t *t, conn_connect_cb cb);

/* ---- conn_tls.c, for the transport switch and the poll machinery -------------------------- */

/** SSL_read into buf until it is full or OpenSSL would block. Returns bytes (0: EOF),
 * -EAGAIN, -errno or WE_TLS. */
ssize_t conn_tls_recv(conn_t *c, char *buf, size_t len);

/** Stages up to TLS_WBUF bytes of iov (unless bytes are already staged: a retry) and hands
 * them to SSL_write. Returns the staged count once OpenSSL took it all, -EAGAIN, or an error.
 * The caller's iov must not move until bytes are reported. */
ssize_t conn_tls_send(conn_t *c, const struct iovec *iov, int niov);

/** The TLS side of the pread+send fallback for conn_sendfile: stages up to count bytes of
 * c->file_fd at c->file_off, SSL_writes them, and advances c->file_off once they are taken. */
ssize_t conn_tls_send_file(conn_t *c, size_t count);

/** One step of a client handshake; fires c->connect_cb when it ends either way. */
void conn_tls_handshake(conn_t *c);

/** True when OpenSSL holds bytes the poll cannot see, or a read result waits for delivery. */
bool conn_tls_buffered(const conn_t *c);

/** Frees the staging buffer unless bytes are staged in it (the next write allocates it). */
void conn_tls_release(conn_t *c);

/** Sends close_notify (best effort) and frees c's TLS state; nothing for plain conns. */
void conn_tls_free(conn_t *c);

/** Frees a TLS state that was never bound to a conn. */
void conn_tls_discard(tls_conn_t *t);

/** Binds t to c (after conn.c's setup, which clears the struct). */
void conn_tls_bind(conn_t *c, tls_conn_t *t);

#endif
