/* TLS contexts. See tls.h; the per-connection side is in conn.c.
 *
 * OpenSSL's error queue is thread-local and sticky: every function here clears it before its
 * calls and empties it after turning the first entry into a message, so no stale entry can be
 * blamed on a later, unrelated connection.
 */
#include "proxy/tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* ALPN protocol list (length-prefixed): winch speaks HTTP/1.1 only. */
static const unsigned char alpn_http11[] = "\x08http/1.1";

/* Writes "what: reason" from OpenSSL's first queued error, then empties the queue. */
static int tls_fail(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_error();
    if (err && errlen) {
        if (e) {
            const char *reason = ERR_reason_error_string(e);
            char buf[160];
            if (ERR_SYSTEM_ERROR(e))
                reason = strerror(ERR_GET_REASON(e));
            if (!reason) {
                ERR_error_string_n(e, buf, sizeof buf);
                reason = buf;
            }
            snprintf(err, errlen, "%s: %s", what, reason);
        } else {
            snprintf(err, errlen, "%s", what);
        }
    }
    ERR_clear_error();
    return WE_TLS;
}

/* Settings shared by both sides. */
static int ctx_common(SSL_CTX *ctx)
{
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        return -1;
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_NO_COMPRESSION);
    return 0;
}

/* The system store as a hashed directory (/etc/ssl/certs on Debian), whose certificates are
 * read when a chain needs them. SSL_CTX_set_default_verify_paths would also parse the whole
 * bundle file at once: ~50 ms of start-up, on the loop, for every TLS upstream. The usual
 * SSL_CERT_FILE and SSL_CERT_DIR overrides still apply. */
static int system_store(SSL_CTX *ctx)
{
    const char *file = getenv(X509_get_default_cert_file_env());
    const char *dir = getenv(X509_get_default_cert_dir_env());
    if (file && *file && SSL_CTX_load_verify_file(ctx, file) != 1)
        return -1;
    if (!dir || !*dir)
        dir = X509_get_default_cert_dir();
    return SSL_CTX_load_verify_dir(ctx, dir) == 1 ? 0 : -1;
}

int tls_client_ctx_new(const char *ca_file, bool insecure, SSL_CTX **out, char *err, size_t errlen)
{
    char what[320];
    int rc;
    *out = NULL;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return tls_fail(err, errlen, "cannot create a TLS client context");
    if (ctx_common(ctx) < 0 || SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof alpn_http11 - 1)) {
        rc = tls_fail(err, errlen, "cannot configure a TLS client context");
        goto fail;
    }
    if (insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        /* ca_file adds to the system store rather than replacing it (as docker's and
         * containers/image's per-registry CAs do): an upstream's redirects to a CDN and its
         * token realm usually carry public certificates. */
        if (system_store(ctx) < 0) {
            rc = tls_fail(err, errlen, "cannot load the system CA store");
            goto fail;
        }
        if (ca_file && SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            snprintf(what, sizeof what, "cannot load CA file %.256s", ca_file);
            rc = tls_fail(err, errlen, what);
            goto fail;
        }
    }
    ERR_clear_error();
    *out = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    return rc;
}

int tls_client_ctx_for(const config_upstream_t *u, SSL_CTX **out, char *err, size_t errlen)
{
    return tls_client_ctx_new(u->ca_file, u->insecure_skip_verify, out, err, errlen);
}

/* Picks http/1.1 when the client offers it; otherwise no ALPN (the client then decides). */
static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof alpn_http11 - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

int tls_server_ctx_new(const char *cert_file, const char *key_file, SSL_CTX **out, char *err,
                       size_t errlen)
{
    char what[320];
    int rc;
    *out = NULL;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return tls_fail(err, errlen, "cannot create a TLS server context");
    if (ctx_common(ctx) < 0) {
        rc = tls_fail(err, errlen, "cannot configure a TLS server context");
        goto fail;
    }
    /* Clients fetch many blobs over several connections: let them resume sessions (stateless
     * tickets, OpenSSL's default) instead of paying a full handshake each time. */
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, NULL);
    /* Thousands of clients may idle on keep-alive connections: OpenSSL's record buffers
     * (about 34 KiB a connection) are freed while nothing is buffered, and come back with the
     * next record. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(what, sizeof what, "tls_cert %.256s: cannot load the certificate chain",
                 cert_file);
        rc = tls_fail(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(what, sizeof what, "tls_key %.256s: cannot load the private key", key_file);
        rc = tls_fail(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(what, sizeof what, "tls_key %.256s does not match the certificate in tls_cert",
                 key_file);
        rc = tls_fail(err, errlen, what);
        goto fail;
    }
    ERR_clear_error();
    *out = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    return rc;
}

int tls_server_ctx_client_ca(SSL_CTX *ctx, const char *ca_file, bool require, char *err,
                             size_t errlen)
{
    char what[320];
    ERR_clear_error();
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        snprintf(what, sizeof what, "auth.client_ca %.256s: cannot load the CA certificates",
                 ca_file);
        return tls_fail(err, errlen, what);
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
    if (!names) {
        snprintf(what, sizeof what, "auth.client_ca %.256s: no CA certificate in it", ca_file);
        return tls_fail(err, errlen, what);
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* takes names */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (require ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                       NULL);
    /* Sessions resumed with a ticket carry the client's verified certificate; OpenSSL refuses
     * to resume a verified session without a context id, failing the handshake instead. */
    static const unsigned char sid_ctx[] = "winch-client-auth";
    if (SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1) != 1)
        return tls_fail(err, errlen, "cannot set the TLS session id context");
    ERR_clear_error();
    return 0;
}

void tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}
