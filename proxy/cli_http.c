/* The CLI's blocking HTTP client (cli_http.h). A non-blocking socket driven by poll() against
 * one deadline: a server that accepts and never answers, or trickles a byte now and then, ends
 * the exchange at the deadline, not at a per-read timeout that every byte would restart. */
#include "proxy/cli_http.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/timeutil.h"

bool cli_http_split_hostport(const char *s, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon = strrchr(s, ':');
    if (!colon || !colon[1] || strlen(colon + 1) >= pcap)
        return false;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hcap)
        return false;
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, pcap, "%s", colon + 1);
    return true;
}

/* Waits until fd is ready for events or the deadline passes: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, int64_t deadline_ms)
{
    for (;;) {
        int64_t left = deadline_ms - time_mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -1 : n > 0;
    }
}

typedef struct xfer {
    int fd;
    int64_t deadline;
    int timeout_ms;
    char *err;
    size_t errlen;
} xfer_t;

static int timed_out(xfer_t *x)
{
    snprintf(x->err, x->errlen, "no answer within %d ms", x->timeout_ms);
    return -1;
}

static int connect_to(xfer_t *x, const char *hostport, bool *refused)
{
    char host[256], port[16];
    *refused = true;
    if (!cli_http_split_hostport(hostport, host, sizeof host, port, sizeof port)) {
        snprintf(x->err, x->errlen, "%s is not HOST:PORT", hostport);
        return -1;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        snprintf(x->err, x->errlen, "%s is not HOST:PORT with an IP address", hostport);
        return -1;
    }
    x->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = x->fd < 0 ? -1 : connect(x->fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rc < 0 && errno == EINPROGRESS) {
        int w = wait_fd(x->fd, POLLOUT, x->deadline);
        if (w == 0) {
            snprintf(x->err, x->errlen, "no connection within %d ms", x->timeout_ms);
            return -1;
        }
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (w < 0 || getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            soerr = errno;
        rc = soerr ? -1 : 0;
        errno = soerr;
    }
    if (rc < 0) {
        snprintf(x->err, x->errlen, "nothing answers there: %s", strerror(errno));
        return -1;
    }
    *refused = false;
    return 0;
}

static int send_all(xfer_t *x, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = send(x->fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            int w = wait_fd(x->fd, POLLOUT, x->deadline);
            if (w <= 0)
                return w == 0 ? timed_out(x) : -1;
            continue;
        }
        if (n <= 0) {
            snprintf(x->err, x->errlen, "sending the request: %s", strerror(errno));
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads into buf[*got..cap): >0 bytes read, 0 at the end, -1 (err said) on error or deadline. */
static ssize_t recv_some(xfer_t *x, char *buf, size_t cap)
{
    for (;;) {
        ssize_t n = recv(x->fd, buf, cap, 0);
        if (n >= 0)
            return n;
        if (errno != EAGAIN && errno != EINTR) {
            snprintf(x->err, x->errlen, "reading the answer: %s", strerror(errno));
            return -1;
        }
        int w = wait_fd(x->fd, POLLIN, x->deadline);
        if (w <= 0)
            return w == 0 ? timed_out(x) : -1;
    }
}

/* The head, up to its blank line; bytes after it (the body's start) stay in out->head past
 * *head_len. Returns the bytes read in all, or -1. */
static ssize_t read_head(xfer_t *x, cli_http_resp_t *out, size_t *head_len)
{
    size_t got = 0;
    for (;;) {
        if (got == CLI_HTTP_HEAD_MAX) {
            snprintf(x->err, x->errlen, "the answer's head is over %d bytes", CLI_HTTP_HEAD_MAX);
            return -1;
        }
        ssize_t n = recv_some(x, out->head + got, CLI_HTTP_HEAD_MAX - got);
        if (n < 0)
            return -1;
        if (n == 0) {
            snprintf(x->err, x->errlen, "the connection closed before an answer");
            return -1;
        }
        got += (size_t)n;
        out->head[got] = '\0';
        char *end = strstr(out->head, "\r\n\r\n");
        if (end) {
            *head_len = (size_t)(end + 4 - out->head);
            return (ssize_t)got;
        }
    }
}

static int read_body(xfer_t *x, cli_http_resp_t *out, const char *early, size_t nearly,
                     size_t max_body)
{
    size_t len;
    const char *cl = cli_http_header(out, "Content-Length", &len);
    uint64_t want = UINT64_MAX;
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (end == cl || (size_t)(end - cl) != len || errno) {
            snprintf(x->err, x->errlen, "a bad Content-Length");
            return -1;
        }
        want = v;
    } else if (cli_http_header(out, "Transfer-Encoding", &len)) {
        snprintf(x->err, x->errlen, "a chunked answer (not expected here)");
        return -1;
    }
    if (want != UINT64_MAX && want > max_body) {
        snprintf(x->err, x->errlen, "the answer is over %zu bytes", max_body);
        return -1;
    }
    /* One byte more than allowed tells a body that goes on past the bound. */
    size_t cap = (want != UINT64_MAX ? (size_t)want : max_body + 1) + 1;
    out->body = malloc(cap);
    if (!out->body) {
        snprintf(x->err, x->errlen, "out of memory");
        return -1;
    }
    size_t got = nearly < cap - 1 ? nearly : cap - 1;
    memcpy(out->body, early, got);
    while (got < cap - 1 && (want == UINT64_MAX || got < want)) {
        ssize_t n = recv_some(x, out->body + got, cap - 1 - got);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    out->body[got] = '\0';
    out->body_len = got;
    if (got > max_body) {
        snprintf(x->err, x->errlen, "the answer is over %zu bytes", max_body);
        return -1;
    }
    if (want != UINT64_MAX && got < want) {
        snprintf(x->err, x->errlen, "the answer was cut short");
        return -1;
    }
    return 0;
}

int cli_http_request(const char *hostport, const char *method, const char *target,
                     const char *headers, int timeout_ms, size_t max_body, cli_http_resp_t *out,
                     bool *refused, char *err, size_t errlen)
{
    xfer_t x = {.fd = -1,
                .deadline = time_mono_ms() + timeout_ms,
                .timeout_ms = timeout_ms,
                .err = err,
                .errlen = errlen};
    char req[4096];
    size_t head_len = 0;
    memset(out, 0, sizeof *out);
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: winch-cli\r\n%sConnection: "
                     "close\r\n\r\n",
                     method, target, hostport, headers);
    if (n < 0 || (size_t)n >= sizeof req) {
        snprintf(err, errlen, "request too long");
        *refused = true;
        return -1;
    }
    ssize_t got;
    if (connect_to(&x, hostport, refused) < 0 || send_all(&x, req, (size_t)n) < 0 ||
        (got = read_head(&x, out, &head_len)) < 0)
        goto fail;
    /* "HTTP/1.x NNN ..." */
    if (strncmp(out->head, "HTTP/1.", 7) != 0 || !out->head[7] || out->head[8] != ' ' ||
        (out->status = (int)strtol(out->head + 9, NULL, 10)) < 100 || out->status > 999) {
        snprintf(err, errlen, "not an HTTP answer");
        goto fail;
    }
    if (strcmp(method, "HEAD") != 0 &&
        read_body(&x, out, out->head + head_len, (size_t)got - head_len, max_body) < 0)
        goto fail;
    out->head[head_len] = '\0';
    close(x.fd);
    return 0;
fail:
    if (x.fd >= 0)
        close(x.fd);
    cli_http_resp_free(out);
    return -1;
}

const char *cli_http_header(const cli_http_resp_t *r, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    const char *end = strstr(r->head, "\r\n\r\n");
    for (const char *line = strstr(r->head, "\r\n"); line && line < end;
         line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nl) != 0 || h[nl] != ':')
            continue;
        const char *v = h + nl + 1;
        v += strspn(v, " \t");
        size_t n = strcspn(v, "\r\n");
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        *len = n;
        return v;
    }
    return NULL;
}

void cli_http_resp_free(cli_http_resp_t *r)
{
    if (!r)
        return;
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}
