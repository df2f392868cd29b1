/** TLS contexts (OpenSSL 3): one client SSL_CTX per upstream origin, one server SSL_CTX for
 * winch's own TLS listener. The per-connection work (handshake, reads, writes on the
 * non-blocking fd) lives in conn.c; this module only builds and checks the contexts, once, at
 * start, so a bad CA file or key stops winch with a clear message instead of failing every
 * connection later.
 *
 * Both kinds require TLS 1.2 or newer, offer ALPN "http/1.1" (winch speaks nothing else), and
 * treat a peer that closes without close_notify as a plain EOF (HTTP framing, and digests for
 * blobs, detect truncation; registries and CDNs often skip close_notify).
 */
#ifndef WINCH_PROXY_TLS_H
#define WINCH_PROXY_TLS_H

#include <openssl/types.h>
#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

/** A client context. Certificates are verified against the system store
 * (SSL_CTX_set_default_verify_paths) plus ca_file (a PEM bundle, borrowed path) when given;
 * insecure
 * turns verification off entirely (chain and host name: conn_connect_tls should then get
 * verify_host = false). On success *out is owned by the caller (tls_ctx_free). On failure
 * returns WE_TLS (or -ENOMEM) and writes one line into err[errlen] naming the file and
 * OpenSSL's reason. */
int tls_client_ctx_new(const char *ca_file, bool insecure, SSL_CTX **out, char *err, size_t errlen);

/** The client context an upstream's configuration asks for (ca_file, insecure_skip_verify).
 * For https upstreams and for other origins of the same upstream (redirect targets, token
 * realms), which are trusted the same way. Same ownership and errors as tls_client_ctx_new. */
int tls_client_ctx_for(const config_upstream_t *u, SSL_CTX **out, char *err, size_t errlen);

/** A server context from a PEM certificate chain (leaf first) and its PEM private key (paths
 * borrowed); checks that they match. Same ownership and errors as tls_client_ctx_new. Error
 * messages name the files, never their contents. */
int tls_server_ctx_new(const char *cert_file, const char *key_file, SSL_CTX **out, char *err,
                       size_t errlen);

/** Makes a server context ask its clients for a certificate signed by a CA of ca_file (PEM,
 * borrowed path; its names are also sent as the acceptable CAs). With require, the handshake
 * fails without one; without, a client may send none (and is then anonymous, or logs in with
 * a password). A certificate that does not verify always fails the handshake. Returns 0, or
 * WE_TLS with one line naming the file in err[errlen]. */
int tls_server_ctx_client_ca(SSL_CTX *ctx, const char *ca_file, bool require, char *err,
                             size_t errlen);

/** Frees a context (NULL is fine). Connections still using it keep it alive (OpenSSL counts
 * references), but every context should outlive its connections anyway. */
void tls_ctx_free(SSL_CTX *ctx);

#endif
