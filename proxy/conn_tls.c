/* The TLS transport of a conn (conn.h): OpenSSL on the conn's own socket, behind the
 * transport switch of conn.c.
 *
 * OpenSSL reads and writes the socket through a minimal BIO of ours (send with MSG_NOSIGNAL,
 * recv), not the stock socket BIO, whose write(2) would raise SIGPIPE. A stalled SSL call may
 * wait for the *other* direction (SSL_read wanting to write during a handshake, SSL_write
 * wanting to read): rd_need / wr_need record which poll bit each side waits for. SSL_write is
 * always retried with the same buffer and length after WANT_*: the bytes are staged in a
 * conn-owned 64 KiB buffer (copied from the caller's iov, or pread from the file) and stay
 * there until OpenSSL accepts them. Plaintext OpenSSL has already pulled off the socket is
 * invisible to the poll, so reads with such bytes pending are continued from the idle handle
 * (conn_tls_buffered). Client connections handshake before the connect callback (which then
 * reports TLS failures with a readable reason, conn_tls_error); server connections handshake
 * inside their first reads. There is no kTLS: conn_sendfile on a TLS conn always takes the
 * pread + SSL_write path (conn_tls_send_file).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/err.h"
#include "proxy/conn.h"
#include "proxy/conn_internal.h"

/* ---- The BIO OpenSSL reads and writes the socket through. ---- */

static BIO_METHOD *sock_method;
static pthread_once_t sock_method_once = PTHREAD_ONCE_INIT;

static int bio_write(BIO *b, const char *buf, int len)
{
    conn_t *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n;
    do
        n = send(c->fd, buf, (size_t)len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        BIO_set_retry_write(b);
        return -1;
    }
    tls_of(c)->sys_err = -errno;
    return -1;
}

static int bio_read(BIO *b, char *buf, int len)
{
    conn_t *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n;
    do
        n = recv(c->fd, buf, (size_t)len, 0);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        BIO_set_retry_read(b);
        return -1;
    }
    tls_of(c)->sys_err = -errno;
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    /* OpenSSL flushes after each flight; nothing is buffered here. Everything else (kTLS,
     * datagram and fd queries) is "not supported". */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void sock_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "winch socket");
    if (!m)
        return;
    if (!BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
        BIO_meth_free(m);
        return;
    }
    sock_method = m;
}

/* ---- TLS helpers. ---- */

/* Records why a TLS call failed, from the verify result or OpenSSL's error queue (which it
 * then empties). Certificate problems read "certificate verify failed: <reason>". */
static void tls_note_error(tls_conn_t *t, int ssl_err, const char *when)
{
    if (t->err[0])
        goto out;
    if (SSL_get_verify_mode(t->ssl) & SSL_VERIFY_PEER) {
        long vr = SSL_get_verify_result(t->ssl);
        if (vr != X509_V_OK) {
            snprintf(t->err, sizeof t->err, "certificate verify failed: %s",
                     X509_verify_cert_error_string(vr));
            goto out;
        }
    }
    unsigned long e = ERR_peek_error();
    if (e) {
        const char *reason = ERR_reason_error_string(e);
        char buf[160];
        if (ERR_SYSTEM_ERROR(e))
            reason = strerror(ERR_GET_REASON(e));
        if (!reason) {
            ERR_error_string_n(e, buf, sizeof buf);
            reason = buf;
        }
        snprintf(t->err, sizeof t->err, "%s: %s", when, reason);
    } else if (ssl_err == SSL_ERROR_SYSCALL && t->sys_err) {
        snprintf(t->err, sizeof t->err, "%s: %s", when, strerror(-t->sys_err));
    } else if (ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_ZERO_RETURN) {
        snprintf(t->err, sizeof t->err, "%s: connection closed by the peer", when);
    } else {
        snprintf(t->err, sizeof t->err, "%s: failed (SSL error %d)", when, ssl_err);
    }
out:
    ERR_clear_error();
}

/* The -errno or winch code for a failed SSL call (not WANT_*). */
static int tls_fail_code(tls_conn_t *t, int ssl_err)
{
    t->fatal = true;
    if (ssl_err == SSL_ERROR_SYSCALL && t->sys_err)
        return t->sys_err; /* the socket failed (reset, ...): its errno tells more */
    return WE_TLS;
}

void conn_tls_free(conn_t *c)
{
    tls_conn_t *t = tls_of(c);
    if (!t)
        return;
    if (t->ssl) {
        ERR_clear_error();
        /* Best effort close_notify: one non-blocking attempt, never after a fatal error or in
         * the middle of a write (OpenSSL forbids both). */
        if (!t->fatal && t->staged == 0 && c->fd >= 0 && SSL_is_init_finished(t->ssl))
            (void)SSL_shutdown(t->ssl);
        SSL_free(t->ssl); /* frees the BIO too */
        ERR_clear_error();
    }
    free(t->wbuf);
    free(t);
    c->tls = NULL;
}

/* Creates the SSL object and its BIO, not yet bound to a conn. Returns 0 or -ENOMEM. */
static int tls_new(SSL_CTX *ctx, tls_conn_t **out)
{
    if (pthread_once(&sock_method_once, sock_method_init) != 0 || !sock_method)
        return -ENOMEM;
    tls_conn_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    ERR_clear_error();
    t->rd_need = UV_READABLE;
    t->wr_need = UV_WRITABLE;
    t->hs_need = UV_WRITABLE;
    t->ssl = SSL_new(ctx);
    BIO *b = t->ssl ? BIO_new(sock_method) : NULL;
    if (!b) {
        if (t->ssl)
            SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return -ENOMEM;
    }
    SSL_set_bio(t->ssl, b, b);
    *out = t;
    return 0;
}

void conn_tls_discard(tls_conn_t *t)
{
    SSL_free(t->ssl);
    ERR_clear_error();
    free(t);
}

void conn_tls_bind(conn_t *c, tls_conn_t *t)
{
    BIO_set_data(SSL_get_rbio(t->ssl), c);
    c->tls = t;
}

/* True for an IPv4 or IPv6 literal (no brackets): those get no SNI and are verified as IPs. */
static bool is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

/* ---- Reading and writing. ---- */

/* SSL_read into buf until it is full or OpenSSL would block, so callers get chunks as big as
 * with recv (one SSL_read returns one record, 16 KiB at most). An error or EOF after some data
 * is kept in rd_err for the next call. */
ssize_t conn_tls_recv(conn_t *c, char *buf, size_t len)
{
    tls_conn_t *t = tls_of(c);
    size_t got = 0;
    if (t->rd_err) {
        int e = t->rd_err;
        return e == UV_EOF ? 0 : e;
    }
    while (got < len) {
        size_t n = 0;
        ERR_clear_error();
        t->sys_err = 0;
        int want = len - got > INT32_MAX ? INT32_MAX : (int)(len - got);
        int r = SSL_read_ex(t->ssl, buf + got, (size_t)want, &n);
        if (r == 1) {
            got += n;
            t->rd_need = UV_READABLE;
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        int status;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            t->rd_need = e == SSL_ERROR_WANT_READ ? UV_READABLE : UV_WRITABLE;
            ERR_clear_error();
            if (got > 0)
                return (ssize_t)got;
            return -EAGAIN;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            status = UV_EOF; /* close_notify, or a plain close (SSL_OP_IGNORE_UNEXPECTED_EOF) */
            ERR_clear_error();
        } else {
            status = tls_fail_code(t, e);
            if (status == WE_TLS)
                tls_note_error(t, e, "TLS read failed");
            ERR_clear_error();
        }
        if (got > 0) {
            t->rd_err = status;
            return (ssize_t)got;
        }
        t->rd_err = status;
        return status == UV_EOF ? 0 : status;
    }
    return (ssize_t)got;
}

/* Hands the staged bytes to SSL_write (the same pointer and length on every retry). Returns
 * the staged count once OpenSSL took it all, -EAGAIN when it would block, or an error. */
static ssize_t tls_write_staged(conn_t *c)
{
    tls_conn_t *t = tls_of(c);
    size_t n = 0;
    ERR_clear_error();
    t->sys_err = 0;
    int r = SSL_write_ex(t->ssl, t->wbuf, t->staged, &n);
    if (r == 1) {
        size_t done = t->staged;
        t->staged = 0;
        t->wr_need = UV_WRITABLE;
        return (ssize_t)done;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        t->wr_need = e == SSL_ERROR_WANT_WRITE ? UV_WRITABLE : UV_READABLE;
        ERR_clear_error();
        return -EAGAIN;
    }
    int status = tls_fail_code(t, e);
    if (status == WE_TLS)
        tls_note_error(t, e, "TLS write failed");
    ERR_clear_error();
    return status;
}

static int tls_stage_buf(tls_conn_t *t)
{
    if (!t->wbuf) {
        t->wbuf = malloc(TLS_WBUF);
        if (!t->wbuf)
            return -ENOMEM;
    }
    return 0;
}

void conn_tls_release(conn_t *c)
{
    tls_conn_t *t = tls_of(c);
    if (t && t->staged == 0) {
        free(t->wbuf);
        t->wbuf = NULL;
    }
}

ssize_t conn_tls_send(conn_t *c, const struct iovec *iov, int niov)
{
    tls_conn_t *t = tls_of(c);
    if (t->staged == 0) {
        /* Copy (coalescing a head and a small body into one record) up to TLS_WBUF. The
         * caller's iov does not move until we report bytes, so a retry after WANT_* finds the
         * same bytes staged. */
        int rc = tls_stage_buf(t);
        if (rc < 0)
            return rc;
        for (int i = 0; i < niov && t->staged < TLS_WBUF; i++) {
            size_t k = iov[i].iov_len;
            if (k > TLS_WBUF - t->staged)
                k = TLS_WBUF - t->staged;
            memcpy(t->wbuf + t->staged, iov[i].iov_base, k);
            t->staged += k;
        }
        if (t->staged == 0)
            return 0;
    }
    return tls_write_staged(c);
}

/* The bytes stay staged until SSL_write accepts them: it must be retried with the same
 * buffer. */
ssize_t conn_tls_send_file(conn_t *c, size_t count)
{
    tls_conn_t *t = tls_of(c);
    if (t->staged == 0) {
        int rc = tls_stage_buf(t);
        if (rc < 0)
            return rc;
        size_t want = count < TLS_WBUF ? count : TLS_WBUF;
        ssize_t r;
        do
            r = pread(c->file_fd, t->wbuf, want, c->file_off);
        while (r < 0 && errno == EINTR);
        if (r <= 0)
            return r < 0 ? -errno : 0;
        t->staged = (size_t)r;
    }
    ssize_t n = tls_write_staged(c);
    if (n > 0)
        c->file_off += n;
    return n;
}

/* True when OpenSSL holds bytes the poll cannot see (plaintext or a whole record), or a read
 * result is waiting to be delivered. */
bool conn_tls_buffered(const conn_t *c)
{
    tls_conn_t *t = tls_of(c);
    return t && !t->handshaking && (t->rd_err || SSL_has_pending(t->ssl));
}

/* ---- Setting up. ---- */

/* Prepares a client SSL object: SNI (not for IP literals, RFC 6066) and, when asked, the
 * name or address the certificate must match. */
static int tls_client_new(SSL_CTX *ctx, const char *host, bool verify_host, tls_conn_t **out)
{
    tls_conn_t *t;
    int rc = tls_new(ctx, &t);
    if (rc < 0)
        return rc;
    if (host && *host) {
        bool ip = is_ip_literal(host);
        ERR_clear_error();
        if (!ip && !SSL_set_tlsext_host_name(t->ssl, host))
            rc = WE_TLS;
        if (rc == 0 && verify_host && ip &&
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host) != 1)
            rc = WE_TLS;
        if (rc == 0 && verify_host && !ip) {
            SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            if (SSL_set1_host(t->ssl, host) != 1)
                rc = WE_TLS;
        }
    }
    if (rc < 0) {
        conn_tls_discard(t);
        return rc;
    }
    SSL_set_connect_state(t->ssl);
    *out = t;
    return 0;
}

int conn_connect_tls(conn_t *c, uv_loop_t *loop, const struct sockaddr *addr, size_t rcap,
                     SSL_CTX *ctx, const char *sni_host, bool verify_host, conn_connect_cb cb)
{
    tls_conn_t *t;
    if (!cb || !ctx)
        return -EINVAL;
    int rc = tls_client_new(ctx, sni_host, verify_host, &t);
    if (rc < 0)
        return rc;
    return conn_start_connect(c, loop, addr, rcap, t, cb); /* takes t */
}

int conn_init_tls_server(conn_t *c, uv_loop_t *loop, int fd, size_t rcap, SSL_CTX *ctx)
{
    tls_conn_t *t;
    if (!ctx)
        return -EINVAL;
    int rc = tls_new(ctx, &t);
    if (rc < 0)
        return rc;
    rc = conn_init(c, loop, fd, rcap);
    if (rc < 0) {
        conn_tls_discard(t);
        return rc;
    }
    SSL_set_accept_state(t->ssl);
    conn_tls_bind(c, t);
    return 0;
}

const char *conn_tls_error(const conn_t *c)
{
    tls_conn_t *t = tls_of(c);
    return t && t->err[0] ? t->err : NULL;
}

bool conn_is_tls(const conn_t *c)
{
    return c->tls != NULL;
}

/* Copies an ASN.1 string as UTF-8 when it is a usable name. */
static int name_from(const ASN1_STRING *s, char *buf, size_t len)
{
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, s);
    int rc = WE_TLS;
    if (n > 0 && (size_t)n < len) {
        rc = 0;
        for (int i = 0; i < n; i++)
            if (utf8[i] < 0x20 || utf8[i] == 0x7f)
                rc = WE_TLS;
        if (rc == 0) {
            memcpy(buf, utf8, (size_t)n);
            buf[n] = '\0';
        }
    }
    OPENSSL_free(utf8);
    return rc;
}

int conn_tls_peer_name(const conn_t *c, char *buf, size_t len)
{
    tls_conn_t *t = tls_of(c);
    X509 *cert = t ? SSL_get0_peer_certificate(t->ssl) : NULL;
    if (!cert)
        return WE_NOTFOUND;
    /* The handshake fails on a certificate that does not verify (SSL_VERIFY_PEER); checked
     * again so that no other path can ever turn an unverified name into a user. */
    if (SSL_get_verify_result(t->ssl) != X509_V_OK)
        return WE_TLS;
    const X509_NAME *subject = X509_get_subject_name(cert);
    int idx = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
    if (idx >= 0)
        return name_from(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)), buf, len);
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int rc = WE_TLS;
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type == GEN_EMAIL || g->type == GEN_DNS) {
            rc = name_from(g->d.ia5, buf, len);
            break;
        }
    }
    GENERAL_NAMES_free(sans);
    return rc;
}

/* ---- TLS handshake (client side). ---- */

void conn_tls_handshake(conn_t *c)
{
    tls_conn_t *t = tls_of(c);
    ERR_clear_error();
    t->sys_err = 0;
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->handshaking = false;
        ERR_clear_error();
        (void)conn_update_poll(c);
        c->connect_cb(c, 0);
        return;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        t->hs_need = e == SSL_ERROR_WANT_READ ? UV_READABLE : UV_WRITABLE;
        ERR_clear_error();
        int rc = conn_update_poll(c);
        if (rc == 0)
            return;
        t->handshaking = false;
        c->connect_cb(c, rc);
        return;
    }
    tls_note_error(t, e, "TLS handshake failed");
    int status = tls_fail_code(t, e);
    if (status != WE_TLS) {
        /* A reset or the like: keep the socket's errno for the caller, the text for logs. */
        if (!t->err[0])
            snprintf(t->err, sizeof t->err, "TLS handshake failed: %s", strerror(-status));
    }
    t->handshaking = false;
    c->connect_cb(c, status);
}
