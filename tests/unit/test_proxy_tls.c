/* TLS on conn: contexts (tls.c), client handshakes with verification failures and their
 * messages, server conns, reads and writes in both directions, sendfile over TLS (the
 * pread+SSL_write fallback), lazy read stop and buffered plaintext. Certificates are made here,
 * at run time, with OpenSSL's APIs: a test CA, a leaf for "localhost" + 127.0.0.1 signed by it,
 * and a second, unrelated CA. Real loopback sockets throughout. */
#include "proxy/conn.h"
#include "proxy/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "common/err.h"
#include "common/util.h"
#include "testutil.h"

static uv_loop_t *loop;
static const char *dir;
static char ca_pem[300], ca2_pem[300], cert_pem[300], key_pem[300], key2_pem[300];

/* ---- Certificates. ---- */

static EVP_PKEY *new_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    CHECK(k != NULL);
    return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    CHECK(ext != NULL);
    CHECK_INT(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* A certificate for key with subject cn, signed by issuer/ikey (self-signed when NULL). */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey, bool ca,
                       long serial)
{
    X509 *x = X509_new();
    CHECK(x != NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509 *iss = issuer ? issuer : x;
    if (ca) {
        add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
        add_ext(x, iss, NID_subject_key_identifier, "hash");
    } else {
        add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(x, iss, NID_ext_key_usage, "serverAuth");
        add_ext(x, iss, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
        add_ext(x, iss, NID_authority_key_identifier, "keyid");
    }
    CHECK(X509_sign(x, ikey ? ikey : key, EVP_sha256()) > 0);
    return x;
}

static void write_cert(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    CHECK_INT(PEM_write_X509(f, x), 1);
    fclose(f);
}

static void write_key(const char *path, EVP_PKEY *k)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    CHECK_INT(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

static void make_pki(void)
{
    dir = test_tmpdir("winch-tls-test"); /* removed at exit */
    snprintf(ca_pem, sizeof ca_pem, "%s/ca.pem", dir);
    snprintf(ca2_pem, sizeof ca2_pem, "%s/other-ca.pem", dir);
    snprintf(cert_pem, sizeof cert_pem, "%s/cert.pem", dir);
    snprintf(key_pem, sizeof key_pem, "%s/key.pem", dir);
    snprintf(key2_pem, sizeof key2_pem, "%s/other-key.pem", dir);
    EVP_PKEY *cak = new_key(), *ca2k = new_key(), *k = new_key();
    X509 *ca = make_cert(cak, "winch test CA", NULL, NULL, true, 1);
    X509 *ca2 = make_cert(ca2k, "unrelated CA", NULL, NULL, true, 2);
    X509 *leaf = make_cert(k, "localhost", ca, cak, false, 3);
    write_cert(ca_pem, ca);
    write_cert(ca2_pem, ca2);
    write_cert(cert_pem, leaf);
    write_key(key_pem, k);
    write_key(key2_pem, ca2k);
    X509_free(ca);
    X509_free(ca2);
    X509_free(leaf);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(ca2k);
    EVP_PKEY_free(k);
}

/* The PKI and the two contexts most cases use, made once per run; freed at exit. */
static SSL_CTX *server_ctx, *client_ctx;

static void free_contexts(void)
{
    tls_ctx_free(client_ctx);
    tls_ctx_free(server_ctx);
}

static void setup(void)
{
    if (dir)
        return;
    make_pki();
    char err[512];
    CHECK_INT(tls_server_ctx_new(cert_pem, key_pem, &server_ctx, err, sizeof err), 0);
    CHECK_INT(tls_client_ctx_new(ca_pem, false, &client_ctx, err, sizeof err), 0);
    atexit(free_contexts);
}

/* ---- Sockets and pairs. ---- */

static int connect_status;
static int connect_calls;
static int closed_count;

static void on_connect(conn_t *c, int status)
{
    (void)c;
    connect_status = status;
    connect_calls++;
}

static void on_closed(conn_t *c)
{
    (void)c;
    closed_count++;
}

/* Server side: what it read, and whether it saw an error. */
typedef struct sink {
    unsigned char *buf;
    size_t cap, len;
    int status;      /* 0 while reading, then UV_EOF or the error */
    bool pause_each; /* stop reading after each callback; the test restarts it */
    int calls;
} sink_t;

static void on_sink_read(conn_t *c, ssize_t n, const char *data)
{
    sink_t *s = c->data;
    s->calls++;
    if (n < 0) {
        s->status = (int)n;
        return;
    }
    CHECK(s->len + (size_t)n <= s->cap);
    memcpy(s->buf + s->len, data, (size_t)n);
    s->len += (size_t)n;
    if (s->pause_each)
        conn_read_stop(c);
}

static void close_one(conn_t *c)
{
    int before = closed_count;
    conn_close(c, on_closed);
    while (closed_count == before)
        uv_run(loop, UV_RUN_ONCE);
}

/* Connects a TLS client to a TLS server conn. Returns the client's connect status; the server
 * conn is reading into sv_sink (it must read for the handshake to progress). */
static int tls_pair(conn_t *cl, conn_t *sv, SSL_CTX *cctx, SSL_CTX *sctx, const char *host,
                    bool verify_host, size_t rcap, sink_t *sv_sink)
{
    struct sockaddr_in addr;
    int lfd = test_listen_any(&addr, NULL);
    connect_status = 1;
    connect_calls = 0;
    CHECK_INT(conn_connect_tls(cl, loop, (struct sockaddr *)&addr, rcap, cctx, host, verify_host,
                               on_connect),
              0);
    CHECK_INT(connect_calls, 0); /* never inside the call */
    int sfd = accept(lfd, NULL, NULL);
    CHECK(sfd >= 0);
    close(lfd);
    CHECK_INT(conn_init_tls_server(sv, loop, sfd, rcap, sctx), 0);
    CHECK(conn_is_tls(sv));
    sv->data = sv_sink;
    CHECK_INT(conn_read_start(sv, on_sink_read), 0);
    while (connect_calls == 0)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT(connect_calls, 1);
    return connect_status;
}

static int wr_status;
static int wr_calls;

static void on_wr(conn_t *c, int status)
{
    CHECK(!conn_writing(c));
    wr_status = status;
    wr_calls++;
}

static int back_status;
static int back_calls;

static void on_back_written(conn_t *c, int status)
{
    (void)c;
    back_status = status;
    back_calls++;
}

/* ---- Contexts. ---- */

static void test_contexts(void)
{
    setup();
    char err[512];
    SSL_CTX *ctx = NULL;
    CHECK_INT(tls_client_ctx_new("/nonexistent/ca.pem", false, &ctx, err, sizeof err), WE_TLS);
    CHECK(ctx == NULL);
    printf("missing CA: %s\n", err);
    CHECK(strstr(err, "cannot load CA file /nonexistent/ca.pem") != NULL);
    CHECK(ERR_peek_error() == 0);

    /* A file that is not PEM. */
    char junk[300];
    snprintf(junk, sizeof junk, "%s/junk.pem", dir);
    FILE *f = fopen(junk, "w");
    CHECK(f != NULL);
    fputs("not a certificate\n", f);
    fclose(f);
    CHECK_INT(tls_client_ctx_new(junk, false, &ctx, err, sizeof err), WE_TLS);
    printf("junk CA: %s\n", err);
    CHECK(strstr(err, junk) != NULL);

    CHECK_INT(tls_server_ctx_new(cert_pem, key2_pem, &ctx, err, sizeof err), WE_TLS);
    printf("mismatched key: %s\n", err);
    CHECK(strstr(err, "tls_key") != NULL && strstr(err, "mismatch") != NULL);
    CHECK_INT(tls_server_ctx_new(junk, key_pem, &ctx, err, sizeof err), WE_TLS);
    printf("junk cert: %s\n", err);
    CHECK(strstr(err, "tls_cert") != NULL);
    CHECK_INT(tls_server_ctx_new(cert_pem, junk, &ctx, err, sizeof err), WE_TLS);
    printf("junk key: %s\n", err);
    CHECK(strstr(err, "tls_key") != NULL);
    unlink(junk);
    CHECK(ERR_peek_error() == 0);

    CHECK_INT(tls_server_ctx_new(cert_pem, key_pem, &ctx, err, sizeof err), 0);
    tls_ctx_free(ctx);
    CHECK_INT(tls_client_ctx_new(NULL, false, &ctx, err, sizeof err), 0); /* system store */
    tls_ctx_free(ctx);
    config_upstream_t u;
    memset(&u, 0, sizeof u);
    u.ca_file = ca_pem;
    CHECK_INT(tls_client_ctx_for(&u, &ctx, err, sizeof err), 0);
    tls_ctx_free(ctx);
    tls_ctx_free(NULL);
}

/* ---- Handshakes: success and every kind of verification failure. ---- */

enum { CA_SYSTEM, CA_TEST, CA_OTHER };

typedef struct hs_case {
    const char *label;
    int ca;
    bool insecure;
    const char *host;
    bool verify_host;
    int want;        /* connect status */
    const char *msg; /* substring of conn_tls_error, or NULL */
} hs_case_t;

static void test_handshakes(void)
{
    setup();
    static const hs_case_t cases[] = {
        {"name + CA", CA_TEST, false, "localhost", true, 0, NULL},
        {"IP + CA", CA_TEST, false, "127.0.0.1", true, 0, NULL},
        {"no CA (system store)", CA_SYSTEM, false, "localhost", true, WE_TLS,
         "certificate verify failed: unable to get local issuer certificate"},
        {"wrong CA", CA_OTHER, false, "localhost", true, WE_TLS,
         "certificate verify failed: unable to get local issuer certificate"},
        {"name mismatch", CA_TEST, false, "registry.example", true, WE_TLS,
         "certificate verify failed: hostname mismatch"},
        {"IP mismatch", CA_TEST, false, "127.0.0.2", true, WE_TLS,
         "certificate verify failed: IP address mismatch"},
        {"insecure, wrong CA and name", CA_OTHER, true, "registry.example", false, 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const hs_case_t *k = &cases[i];
        const char *ca = k->ca == CA_TEST ? ca_pem : k->ca == CA_OTHER ? ca2_pem : NULL;
        char err[512];
        SSL_CTX *cctx;
        CHECK_INT(tls_client_ctx_new(ca, k->insecure, &cctx, err, sizeof err), 0);
        conn_t cl, sv;
        unsigned char buf[64];
        sink_t s = {.buf = buf, .cap = sizeof buf};
        int st = tls_pair(&cl, &sv, cctx, server_ctx, k->host, k->verify_host, 4096, &s);
        const char *why = conn_tls_error(&cl);
        printf("handshake %-28s -> %s%s%s\n", k->label, err_str(st), why ? ": " : "",
               why ? why : "");
        CHECK_INT(st, k->want);
        if (k->msg) {
            CHECK(why != NULL);
            CHECK(strstr(why, k->msg) != NULL);
            /* The server sees the client's alert as a failed read. */
            close_one(&cl);
            while (s.status == 0)
                uv_run(loop, UV_RUN_ONCE);
            CHECK(s.status < 0);
            close_one(&sv);
        } else {
            CHECK(why == NULL);
            /* A round trip, then a clean close: the server reads EOF. */
            uv_buf_t b = uv_buf_init("ping", 4);
            CHECK_INT(conn_write(&cl, &b, 1, on_wr), 0);
            while (s.len < 4)
                uv_run(loop, UV_RUN_ONCE);
            CHECK(memcmp(buf, "ping", 4) == 0);
            close_one(&cl);
            while (s.status == 0)
                uv_run(loop, UV_RUN_ONCE);
            CHECK_INT(s.status, UV_EOF);
            close_one(&sv);
        }
        tls_ctx_free(cctx);
        CHECK(ERR_peek_error() == 0);
    }
}

/* ---- A plain client on a TLS server conn: the read fails with WE_TLS, nothing else. ---- */

static void test_plain_client(void)
{
    setup();
    struct sockaddr_in addr;
    int lfd = test_listen_any(&addr, NULL);
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK_INT(connect(cfd, (struct sockaddr *)&addr, sizeof addr), 0);
    int sfd = accept(lfd, NULL, NULL);
    close(lfd);
    conn_t sv;
    unsigned char buf[64];
    sink_t s = {.buf = buf, .cap = sizeof buf};
    CHECK_INT(conn_init_tls_server(&sv, loop, sfd, 4096, server_ctx), 0);
    sv.data = &s;
    CHECK_INT(conn_read_start(&sv, on_sink_read), 0);
    static const char req[] = "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_INT(write(cfd, req, sizeof req - 1), (long long)(sizeof req - 1));
    while (s.status == 0)
        uv_run(loop, UV_RUN_ONCE);
    printf("plain client: %s (%s)\n", err_str(s.status),
           conn_tls_error(&sv) ? conn_tls_error(&sv) : "");
    CHECK_INT(s.status, WE_TLS);
    CHECK_INT(s.len, 0);
    close_one(&sv);
    close(cfd);
    CHECK(ERR_peek_error() == 0);
}

/* ---- The peer is not there / closes at once. ---- */

static void test_connect_failures(void)
{
    setup();
    struct sockaddr_in addr;
    int lfd = test_listen_any(&addr, NULL);
    close(lfd);
    conn_t c;
    connect_calls = 0;
    CHECK_INT(conn_connect_tls(&c, loop, (struct sockaddr *)&addr, 64, client_ctx, "localhost",
                               true, on_connect),
              0);
    while (connect_calls == 0)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT(connect_status, -ECONNREFUSED);
    close_one(&c);

    /* A server that accepts and closes without a word. */
    lfd = test_listen_any(&addr, NULL);
    connect_calls = 0;
    CHECK_INT(conn_connect_tls(&c, loop, (struct sockaddr *)&addr, 64, client_ctx, "localhost",
                               true, on_connect),
              0);
    int sfd = accept(lfd, NULL, NULL);
    close(sfd);
    close(lfd);
    while (connect_calls == 0)
        uv_run(loop, UV_RUN_ONCE);
    printf("peer closed during handshake: %s (%s)\n", err_str(connect_status),
           conn_tls_error(&c) ? conn_tls_error(&c) : "");
    CHECK(connect_status == WE_TLS || connect_status == -ECONNRESET || connect_status == -EPIPE);
    CHECK(conn_tls_error(&c) != NULL);
    close_one(&c);

    /* Close while the handshake is running: no connect callback afterwards. */
    lfd = test_listen_any(&addr, NULL);
    connect_calls = 0;
    CHECK_INT(conn_connect_tls(&c, loop, (struct sockaddr *)&addr, 64, client_ctx, "localhost",
                               true, on_connect),
              0);
    for (int i = 0; i < 3; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    close_one(&c);
    sfd = accept(lfd, NULL, NULL);
    close(sfd);
    close(lfd);
    CHECK_INT(connect_calls, 0);
}

/* ---- Bulk: 20 MiB through conn_sendfile (server -> client), client pausing reads; a 3 MiB
 * conn_write the other way. Byte-exact. ---- */

static void fill_pattern(unsigned char *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed | 1;
    for (size_t i = 0; i < len; i++) {
        if (i % 8 == 0) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        buf[i] = (unsigned char)(x >> (8 * (i % 8)));
    }
}

/* Restarts a paused reader from a timer, so reads resume from the loop (and from buffered
 * plaintext OpenSSL already holds). */
static void on_resume_timer(uv_timer_t *t)
{
    conn_t *c = t->data;
    sink_t *s = c->data;
    if (s->status == 0 && !c->reading)
        CHECK_INT(conn_read_start(c, on_sink_read), 0);
}

#define BULK ((size_t)20 << 20)
#define BACK ((size_t)3 << 20)

static void test_bulk(void)
{
    setup();
    unsigned char *src = malloc(BULK), *dst = malloc(BULK + 64), *back = malloc(BACK),
                  *back_got = malloc(BACK);
    CHECK(src && dst && back && back_got);
    fill_pattern(src, BULK, 7);
    fill_pattern(back, BACK, 11);
    char path[300];
    snprintf(path, sizeof path, "%s/bulk-XXXXXX", dir);
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unlink(path);
    /* 1 MiB of junk before the range, so the offset is exercised too. */
    static unsigned char junk[1 << 20];
    CHECK_INT(write(fd, junk, sizeof junk), (long long)sizeof junk);
    CHECK_INT(write(fd, src, BULK), (long long)BULK);

    conn_t cl, sv;
    sink_t ss = {.buf = back_got, .cap = BACK};
    /* A small client read buffer: many reads, plaintext left inside OpenSSL between them. */
    CHECK_INT(tls_pair(&cl, &sv, client_ctx, server_ctx, "localhost", true, 8192, &ss), 0);
    sink_t cs = {.buf = dst, .cap = BULK + 64, .pause_each = true};
    cl.data = &cs;
    uv_timer_t rt;
    uv_timer_init(loop, &rt);
    rt.data = &cl;
    uv_timer_start(&rt, on_resume_timer, 1, 1);
    CHECK_INT(conn_read_start(&cl, on_sink_read), 0);

    wr_calls = 0;
    CHECK_INT(conn_sendfile(&sv, fd, sizeof junk, BULK, on_wr), 0);
    CHECK_INT(conn_writing(&sv), 1);
    CHECK_INT(conn_sendfile(&sv, fd, 0, 1, on_wr), -EBUSY);
    /* Meanwhile the client sends 3 MiB the other way, on the same conns. */
    uv_buf_t b = uv_buf_init((char *)back, (unsigned)BACK);
    back_calls = 0;
    CHECK_INT(conn_write(&cl, &b, 1, on_back_written), 0);
    while (wr_calls == 0 || cs.len < BULK || ss.len < BACK || back_calls == 0)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT(wr_status, 0);
    CHECK_INT(back_status, 0);
    CHECK_INT(cs.len, BULK);
    CHECK(memcmp(dst, src, BULK) == 0);
    CHECK_INT(ss.len, BACK);
    CHECK(memcmp(back_got, back, BACK) == 0);
    printf("bulk: 20 MiB sendfile over TLS in %d client reads (paused after each), 3 MiB back\n",
           cs.calls);
    CHECK(cs.calls > (int)(BULK / 8192) - 1);

    /* A short file: the 10 bytes there go out, then the fallback reports WE_SHORT. */
    wr_calls = 0;
    CHECK_INT(conn_sendfile(&sv, fd, sizeof junk + BULK - 10, 100, on_wr), 0);
    while (wr_calls == 0 || cs.len < BULK + 10)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT(wr_status, WE_SHORT);
    CHECK(memcmp(dst + BULK, src + BULK - 10, 10) == 0);

    uv_timer_stop(&rt);
    uv_close((uv_handle_t *)&rt, NULL);
    close_one(&cl);
    close_one(&sv);
    close(fd);
    free(src);
    free(dst);
    free(back);
    free(back_got);
    CHECK(ERR_peek_error() == 0);
}

/* ---- Keep-alive pattern: request, stop reading, answer, restart reading; many times. ---- */

static int ka_rounds;
static char ka_reply[64];

static void on_ka_server_read(conn_t *c, ssize_t n, const char *data);

static void on_ka_sent(conn_t *c, int status)
{
    CHECK_INT(status, 0);
    CHECK_INT(conn_read_start(c, on_ka_server_read), 0);
}

static void on_ka_server_read(conn_t *c, ssize_t n, const char *data)
{
    if (n < 0) {
        /* Only once the client has closed, after the last round. */
        CHECK_INT(n, UV_EOF);
        CHECK_INT(ka_rounds, 200);
        return;
    }
    (void)data;
    conn_read_stop(c);
    int len = snprintf(ka_reply, sizeof ka_reply, "pong %d", ka_rounds);
    uv_buf_t b = uv_buf_init(ka_reply, (unsigned)len);
    CHECK_INT(conn_write(c, &b, 1, on_ka_sent), 0);
}

static char ka_got[64];
static size_t ka_got_len;

static void on_ka_client_read(conn_t *c, ssize_t n, const char *data)
{
    (void)c;
    CHECK(n > 0);
    CHECK(ka_got_len + (size_t)n < sizeof ka_got);
    memcpy(ka_got + ka_got_len, data, (size_t)n);
    ka_got_len += (size_t)n;
}

static void test_keepalive(void)
{
    setup();
    conn_t cl, sv;
    unsigned char buf[16];
    sink_t s = {.buf = buf, .cap = sizeof buf};
    CHECK_INT(tls_pair(&cl, &sv, client_ctx, server_ctx, "localhost", true, 4096, &s), 0);
    CHECK_INT(conn_read_start(&sv, on_ka_server_read), 0);
    CHECK_INT(conn_read_start(&cl, on_ka_client_read), 0);
    for (ka_rounds = 0; ka_rounds < 200; ka_rounds++) {
        ka_got_len = 0;
        uv_buf_t b = uv_buf_init("ping", 4);
        CHECK_INT(conn_write(&cl, &b, 1, on_back_written), 0);
        char want[64];
        int wl = snprintf(want, sizeof want, "pong %d", ka_rounds);
        while (ka_got_len < (size_t)wl)
            uv_run(loop, UV_RUN_ONCE);
        CHECK(memcmp(ka_got, want, (size_t)wl) == 0);
    }
    close_one(&cl);
    close_one(&sv);
}

static const test_case_t cases[] = {
    TEST_CASE(test_contexts),         TEST_CASE(test_handshakes), TEST_CASE(test_plain_client),
    TEST_CASE(test_connect_failures), TEST_CASE(test_keepalive),  TEST_CASE(test_bulk),
};

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    loop = uv_default_loop();
    int rc = test_main(argc, argv, cases, ARRAY_SIZE(cases));
    while (uv_run(loop, UV_RUN_NOWAIT))
        ;
    CHECK_INT(uv_loop_close(loop), 0);
    return rc;
}
