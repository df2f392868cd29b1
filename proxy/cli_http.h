/** The CLI's requests to a running winch (cli_http.c): one plain-HTTP/1.1 exchange with
 * HOST:PORT (an IP literal: no name is ever resolved), blocking, under one deadline that covers
 * the connect, the request and the whole answer, whose head and body are bounded. `winch pin`
 * asks the listener for a tag's digest with it, `winch status` the admin listener for its
 * status. Internal to proxy/. */
#ifndef WINCH_PROXY_CLI_HTTP_H
#define WINCH_PROXY_CLI_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define CLI_HTTP_HEAD_MAX 16384

/** An answer: status, the head (NUL-terminated, with its blank line) and the body. */
typedef struct cli_http_resp {
    int status;
    char head[CLI_HTTP_HEAD_MAX + 1];
    char *body; /* owned (cli_http_resp_free); NUL-terminated; NULL for HEAD */
    size_t body_len;
} cli_http_resp_t;

/** Splits "HOST:PORT" or "[V6]:PORT" into host[hcap] and port[pcap]. */
bool cli_http_split_hostport(const char *s, char *host, size_t hcap, char *port, size_t pcap);

/** Sends `METHOD target` (headers: extra lines, each ending in "\r\n", or "") to hostport and
 * reads the answer within timeout_ms in all; a body (Content-Length, or up to the close) over
 * max_body bytes is an error. Returns 0 with *out filled (cli_http_resp_free it), or -1 with
 * the reason in err ("nothing listens there: Connection refused", "no answer within 5 s",
 * "the answer is over N bytes", "not an HTTP answer"); refused: true when the connection
 * itself failed (nothing listens, or HOST:PORT is unusable). */
int cli_http_request(const char *hostport, const char *method, const char *target,
                     const char *headers, int timeout_ms, size_t max_body, cli_http_resp_t *out,
                     bool *refused, char *err, size_t errlen);

/** The value of header name in r's head (case-insensitive), its length in *len; NULL if absent.
 * Borrowed from r. */
const char *cli_http_header(const cli_http_resp_t *r, const char *name, size_t *len);

/** NULL is fine. */
void cli_http_resp_free(cli_http_resp_t *r);

#endif
