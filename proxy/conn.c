/* A non-blocking TCP connection on a uv_poll_t, plain or TLS: the poll machinery, deferred
 * reports and the plain transport. The TLS transport is conn_tls.c.
 *
 * Lifecycle: conn_init / conn_connect / conn_init_tls_server / conn_connect_tls -> (reads, one
 * write operation at a time) -> conn_close -> close callback once both libuv handles have
 * closed.
 *
 * Two handles back a conn: the uv_poll_t embedded in the struct, which watches the fd, and a
 * uv_idle_t kept in a small private extension (conn->ext points at it). The idle handle
 * exists only to deliver callbacks "later": a write that completes inside conn_write, or a
 * connect that completes inside connect(2), must still report from the loop and never from
 * inside the caller's call. uv_idle (rather than uv_check) is used because an active idle
 * handle makes the loop poll with a zero timeout, so the deferred callback runs in the next
 * iteration even when nothing else is happening. When the call came from one of the conn's own
 * callbacks the report does not need the idle handle at all (see drain()).
 *
 * Every byte goes through do_recv / do_send / do_sendfile, the transport switch: plain sockets,
 * or OpenSSL on the same fd (c->tls, conn_tls.c). With TLS, do_sendfile reports -ENOSYS and the
 * bounded pread + SSL_write fallback takes over (no kTLS).
 *
 * SIGPIPE: sendmsg uses MSG_NOSIGNAL, but Linux sendfile(2) to a socket whose peer is gone
 * raises SIGPIPE and has no flag against it. main ignores SIGPIPE; conn does not rely on that:
 * do_sendfile blocks SIGPIPE in the calling thread for the call and swallows the one it caused,
 * so a library user (a test, a tool) cannot be killed either. Two sigprocmask calls per
 * sendfile call (each moves up to a socket buffer of data) cost nothing measurable.
 */
#include "proxy/conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/splice.h"
#include "proxy/conn_internal.h"

/* Reads per poll wakeup: enough to drain a burst, small enough that one busy socket cannot
 * starve the other connections on the loop. */
#define READS_PER_WAKEUP 4
/* The most one splice(2) call is asked to move (a pipe holds about this much at most). */
#define SPLICE_PER_CALL ((size_t)1 << 20)
/* Bytes asked of one sendfile(2) call; the kernel returns early when the socket is full. */
#define SENDFILE_CHUNK ((size_t)4 << 20)
/* Bytes a sendfile operation may push in one wakeup before yielding to the loop (the socket
 * stays writable, so the poll fires again in the next iteration). Encrypting costs CPU where
 * sendfile costs none, so TLS yields sooner. */
#define SENDFILE_PER_WAKEUP ((uint64_t)16 << 20)
#define TLS_FILE_PER_WAKEUP ((uint64_t)1 << 20)
/* Bounce buffer of the pread+send fallback (on the stack of the loop thread). */
#define FALLBACK_BUF (64 * 1024)
/* Completions chained from completions (a write callback that writes again, and the socket
 * takes it at once) are bounded per callback; the rest go to the next loop iteration. */
#define DRAIN_ROUNDS 16

/* ---- Transport switch. Each returns bytes (>= 0) or -errno; never raises SIGPIPE. ---- */

static ssize_t do_recv(conn_t *c, char *buf, size_t len)
{
    if (c->tls)
        return conn_tls_recv(c, buf, len);
    ssize_t n = recv(c->fd, buf, len, 0);
    return n >= 0 ? n : -errno;
}

static ssize_t do_send(conn_t *c, const struct iovec *iov, int niov)
{
    if (c->tls)
        return conn_tls_send(c, iov, niov);
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)niov;
    ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    return n >= 0 ? n : -errno;
}

/* Advances *off by the bytes sent. -ENOSYS/-EINVAL mean "not possible here": the caller falls
 * back to pread+send. */
static ssize_t do_sendfile(conn_t *c, int file_fd, off_t *off, size_t count)
{
    if (c->tls)
        return -ENOSYS; /* TLS needs the bytes in user space (no kTLS) */
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t n = sendfile(c->fd, file_fd, off, count);
    int err = errno;
    if (!sigismember(&old, SIGPIPE)) {
        /* A SIGPIPE this call raised is pending on the thread: take it before unblocking. It
         * can come with a partial count too (some bytes went out, then the peer was gone). */
        sigset_t pending;
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE)) {
            struct timespec zero = {0, 0};
            while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
                ;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return n >= 0 ? n : -err;
}

/* ---- Poll mask.
 *
 * Every uv_poll_start (libuv 1.44) first drops the fd from epoll (EPOLL_CTL_DEL) and re-adds
 * it on the next loop iteration (a failing EPOLL_CTL_MOD, then EPOLL_CTL_ADD): three syscalls
 * per mask change. A keep-alive request stops and restarts reading each time, so an eager mask
 * cost three epoll_ctl per request. Bits are therefore added eagerly but dropped lazily: a
 * readable bit nobody wants stays until the fd reports readability while nobody reads (then it
 * goes, with one mask change). A writable bit goes at the end of the poll callback in which
 * it stopped being wanted: a socket is nearly always writable, so keeping it would only wake
 * the loop for nothing. ---- */

static void on_poll(uv_poll_t *h, int status, int events);

static int wanted(const conn_t *c)
{
    conn_ext_t *x = ext_of(c);
    tls_conn_t *t = tls_of(c);
    int want = 0;
    if (x->connecting)
        return UV_WRITABLE;
    if (t && t->handshaking)
        return t->hs_need;
    if (c->reading)
        want |= t ? t->rd_need : UV_READABLE;
    if (x->wr_wait)
        want |= t ? t->wr_need : UV_WRITABLE;
    return want;
}

/* Adds the wanted bits that are missing; never removes any (see above). */
int conn_update_poll(conn_t *c)
{
    if (c->closing)
        return 0;
    int want = wanted(c);
    if ((want & ~c->events) == 0)
        return 0;
    int ev = c->events | want;
    int rc = uv_poll_start(&c->poll, ev, on_poll);
    if (rc == 0)
        c->events = ev;
    return rc;
}

/* Drops the bits of `stale` that are still unwanted. */
static void trim_poll(conn_t *c, int stale)
{
    if (c->closing)
        return;
    stale &= c->events & ~wanted(c);
    if (stale == 0)
        return;
    int ev = c->events & ~stale;
    if (ev == 0) {
        c->events = 0;
        (void)uv_poll_stop(&c->poll);
        return;
    }
    if (uv_poll_start(&c->poll, ev, on_poll) == 0)
        c->events = ev;
}

/* ---- Deferred reports.
 *
 * An operation that completes inside the call that started it (a write the socket took at
 * once, a connect that succeeded at once) must still report later. When that call came from a
 * callback of this same conn (the usual case: a response written from the read callback), the
 * report runs as soon as that callback has returned, before the poll callback ends: no extra
 * loop iteration. Otherwise the idle handle delivers it on the next iteration. ---- */

static void on_idle(uv_idle_t *h);
static void do_reads(conn_t *c);

static void defer_start(conn_t *c)
{
    conn_ext_t *x = ext_of(c);
    if (x->in_cb == 0)
        uv_idle_start(&x->idle, on_idle);
}

static void finish_write(conn_t *c, int status)
{
    conn_write_cb cb = c->write_cb;
    tls_conn_t *t = tls_of(c);
    c->write_cb = NULL;
    c->niov = 0;
    c->file_fd = -1;
    c->file_left = 0;
    if (t)
        t->staged = 0;
    if (cb)
        cb(c, status);
}

/* A TCP connect finished with status: TLS connections go on to the handshake. */
static void connect_done(conn_t *c, int status)
{
    tls_conn_t *t = tls_of(c);
    if (status == 0 && t) {
        t->handshaking = true;
        conn_tls_handshake(c);
        return;
    }
    c->connect_cb(c, status);
}

/* Runs the deferred reports; called at the end of every callback of the conn. */
static void drain(conn_t *c)
{
    conn_ext_t *x = ext_of(c);
    for (int round = 0; round < DRAIN_ROUNDS; round++) {
        if (c->closing)
            return;
        x->in_cb++;
        if (x->defer_connect) {
            x->defer_connect = false;
            connect_done(c, x->connect_status);
        } else if (x->defer_write) {
            x->defer_write = false;
            finish_write(c, x->write_status);
        } else if (x->defer_read) {
            x->defer_read = false;
            if (c->reading)
                do_reads(c);
        } else {
            x->in_cb--;
            return;
        }
        x->in_cb--;
    }
    if (!c->closing && (x->defer_connect || x->defer_write || x->defer_read))
        defer_start(c);
}

static void on_idle(uv_idle_t *h)
{
    conn_t *c = h->data;
    uv_idle_stop(h);
    if (c->closing)
        return;
    drain(c);
    if (!c->closing)
        (void)conn_update_poll(c);
}

/* ---- Setup. ---- */

static int setup(conn_t *c, uv_loop_t *loop, int fd, size_t rcap)
{
    int rc;
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->fd = fd;
    c->file_fd = -1;
    if (rcap == 0)
        return -EINVAL;
    /* The read buffer comes with the first read (do_reads): an accepted connection that never
     * sends, or one idle between requests (conn_release_rbuf), holds none. */
    conn_ext_t *x = calloc(1, sizeof *x);
    if (!x) {
        rc = -ENOMEM;
        goto fail;
    }
    c->rcap = rcap;
    rc = uv_poll_init(loop, &c->poll, fd);
    if (rc < 0)
        goto fail;
    uv_idle_init(loop, &x->idle);
    c->poll.data = c;
    x->idle.data = c;
    c->ext = &x->idle;
    return 0;
fail:
    free(x);
    c->ext = NULL;
    return rc;
}

static void set_nodelay(int fd)
{
    /* Requests and response heads are small and latency-bound; Nagle only delays them. Fails
     * harmlessly on non-TCP sockets. */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int conn_init(conn_t *c, uv_loop_t *loop, int fd, size_t rcap)
{
    /* On failure the fd stays open and the caller's: nothing was taken, nothing to close. */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
        return -errno;
    set_nodelay(fd);
    int rc = setup(c, loop, fd, rcap);
    if (rc < 0)
        c->fd = -1;
    return rc;
}

int conn_start_connect(conn_t *c, uv_loop_t *loop, const struct sockaddr *addr, size_t rcap,
                       tls_conn_t *t, conn_connect_cb cb)
{
    int rc;
    int fd = -1;
    socklen_t alen;
    if (addr->sa_family == AF_INET) {
        alen = sizeof(struct sockaddr_in);
    } else if (addr->sa_family == AF_INET6) {
        alen = sizeof(struct sockaddr_in6);
    } else {
        rc = -EAFNOSUPPORT;
        goto fail;
    }
    fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    set_nodelay(fd);
    rc = setup(c, loop, fd, rcap);
    if (rc < 0)
        goto fail;
    if (t)
        conn_tls_bind(c, t);
    c->connect_cb = cb;
    conn_ext_t *x = ext_of(c);
    if (connect(fd, addr, alen) == 0) {
        x->defer_connect = true;
        x->connect_status = 0;
        defer_start(c);
    } else if (errno == EINPROGRESS || errno == EINTR) {
        /* EINTR: the connect continues asynchronously, exactly like EINPROGRESS. */
        x->connecting = true;
        rc = conn_update_poll(c);
        if (rc < 0) {
            x->connecting = false;
            x->defer_connect = true;
            x->connect_status = rc;
            defer_start(c);
        }
    } else {
        /* Immediate failure (ECONNREFUSED on loopback, ENETUNREACH...): still reported through
         * the callback so the caller has one path for connect errors. */
        x->defer_connect = true;
        x->connect_status = -errno;
        defer_start(c);
    }
    return 0;
fail:
    if (fd >= 0) {
        close(fd);
        c->fd = -1;
    }
    if (t)
        conn_tls_discard(t);
    return rc;
}

int conn_connect(conn_t *c, uv_loop_t *loop, const struct sockaddr *addr, size_t rcap,
                 conn_connect_cb cb)
{
    if (!cb)
        return -EINVAL;
    return conn_start_connect(c, loop, addr, rcap, NULL, cb);
}

/* ---- Reading. ---- */

int conn_read_start(conn_t *c, conn_read_cb cb)
{
    if (c->closing)
        return -EBADF;
    if (!cb)
        return -EINVAL;
    c->read_cb = cb;
    c->reading = true;
    c->splicing = false;
    int rc = conn_update_poll(c);
    if (rc < 0) {
        c->reading = false;
        return rc;
    }
    if (conn_tls_buffered(c)) {
        ext_of(c)->defer_read = true;
        defer_start(c);
    }
    return 0;
}

int conn_splice_start(conn_t *c, int pipe_fd, uint64_t max, conn_splice_cb cb)
{
    if (c->closing)
        return -EBADF;
    if (c->tls)
        return -ENOTSUP;
    if (!cb || pipe_fd < 0 || max == 0)
        return -EINVAL;
    c->splice_fd = pipe_fd;
    c->splice_left = max;
    c->splice_cb = cb;
    c->splicing = true;
    c->reading = true;
    int rc = conn_update_poll(c);
    if (rc < 0) {
        c->reading = c->splicing = false;
        return rc;
    }
    return 0;
}

/* The splice mode of do_reads: the same budget per wakeup, no read buffer. */
static void do_splices(conn_t *c)
{
    /* The callback may have switched the conn back to plain reads (a pooled connection). */
    for (int i = 0; i < READS_PER_WAKEUP && c->reading && c->splicing && !c->closing; i++) {
        size_t want = c->splice_left < SPLICE_PER_CALL ? (size_t)c->splice_left : SPLICE_PER_CALL;
        ssize_t n = splice_from_socket(c->fd, c->splice_fd, want);
        if (n == -EAGAIN)
            break; /* drained; the level-triggered poll reports more */
        if (n > 0) {
            c->splice_left -= (uint64_t)n;
            if (c->splice_left == 0)
                c->reading = false; /* lazily, as conn_read_stop */
        } else {
            c->reading = false;
            n = n == 0 ? UV_EOF : n;
        }
        c->splice_cb(c, n);
    }
}

bool conn_input_pending(const conn_t *c)
{
    if (c->closing)
        return false;
    if (conn_tls_buffered(c))
        return true;
    char b;
    return recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

void conn_release_buffers(conn_t *c)
{
    free(c->rbuf);
    c->rbuf = NULL;
    if (c->tls && !c->write_cb)
        conn_tls_release(c);
}

void conn_read_stop(conn_t *c)
{
    if (c->closing || !c->reading)
        return;
    c->reading = false; /* lazily: the mask keeps UV_READABLE until it fires for nobody */
}

static void read_fail(conn_t *c, int err)
{
    c->reading = false;
    c->read_cb(c, err, NULL);
}

static void do_reads(conn_t *c)
{
    if (c->splicing) {
        do_splices(c);
        return;
    }
    if (!c->rbuf && c->reading && !c->closing) {
        c->rbuf = malloc(c->rcap);
        if (!c->rbuf) {
            read_fail(c, -ENOMEM);
            return;
        }
    }
    /* The callback may switch the conn to splicing: the next bytes are not the buffer's. */
    for (int i = 0; i < READS_PER_WAKEUP && c->reading && !c->splicing && !c->closing; i++) {
        ssize_t n = do_recv(c, c->rbuf, c->rcap);
        if (n > 0) {
            c->read_cb(c, n, c->rbuf);
            if ((size_t)n < c->rcap && !conn_tls_buffered(c))
                break; /* drained; the level-triggered poll reports more */
        } else if (n == 0) {
            read_fail(c, UV_EOF);
            break;
        } else if (n == -EINTR) {
            continue;
        } else if (n == -EAGAIN || n == -EWOULDBLOCK) {
            break;
        } else {
            read_fail(c, (int)n);
            break;
        }
    }
    if (c->closing)
        return;
    if (c->reading && conn_tls_buffered(c)) {
        /* The budget ran out with bytes OpenSSL already holds: no poll event will come. */
        ext_of(c)->defer_read = true;
        defer_start(c);
    }
    if (c->tls)
        (void)conn_update_poll(c); /* SSL_read may now wait for writability */
}

/* ---- Writing. Each flush returns 1 when done, 0 when it must wait, < 0 on error. ---- */

static int flush_iov(conn_t *c)
{
    struct iovec iov[CONN_MAX_IOV];
    for (;;) {
        while (c->niov > 0 && c->iov[0].len == 0) {
            memmove(c->iov, c->iov + 1, (size_t)(c->niov - 1) * sizeof c->iov[0]);
            c->niov--;
        }
        if (c->niov == 0)
            return 1;
        for (int i = 0; i < c->niov; i++) {
            iov[i].iov_base = c->iov[i].base;
            iov[i].iov_len = c->iov[i].len;
        }
        ssize_t n = do_send(c, iov, c->niov);
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN || n == -EWOULDBLOCK)
            return 0;
        if (n < 0)
            return (int)n;
        size_t left = (size_t)n;
        for (int i = 0; i < c->niov && left > 0; i++) {
            size_t k = left < c->iov[i].len ? left : c->iov[i].len;
            c->iov[i].base += k;
            c->iov[i].len -= k;
            left -= k;
        }
    }
}

/* pread into a bounded buffer and send what the socket takes. Plain sockets: unsent bytes are
 * simply read again next time, so nothing has to be kept between wakeups. TLS keeps them
 * staged instead (conn_tls_send_file). */
static ssize_t fallback_send(conn_t *c, size_t count)
{
    if (c->tls)
        return conn_tls_send_file(c, count);
    char buf[FALLBACK_BUF];
    size_t want = count < sizeof buf ? count : sizeof buf;
    ssize_t r;
    do
        r = pread(c->file_fd, buf, want, c->file_off);
    while (r < 0 && errno == EINTR);
    if (r <= 0)
        return r < 0 ? -errno : 0;
    struct iovec iov = {.iov_base = buf, .iov_len = (size_t)r};
    ssize_t n;
    do
        n = do_send(c, &iov, 1);
    while (n == -EINTR);
    if (n > 0)
        c->file_off += n;
    return n;
}

static int flush_file(conn_t *c)
{
    conn_ext_t *x = ext_of(c);
    uint64_t budget = c->tls ? TLS_FILE_PER_WAKEUP : SENDFILE_PER_WAKEUP;
    while (c->file_left > 0) {
        if (budget == 0)
            return 0;
        size_t count = c->file_left < SENDFILE_CHUNK ? (size_t)c->file_left : SENDFILE_CHUNK;
        ssize_t n;
        if (!x->no_sendfile) {
            n = do_sendfile(c, c->file_fd, &c->file_off, count);
            if (n == -EINVAL || n == -ENOSYS) {
                x->no_sendfile = true;
                continue;
            }
        } else {
            n = fallback_send(c, count);
        }
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN || n == -EWOULDBLOCK)
            return 0;
        if (n < 0)
            return (int)n;
        if (n == 0)
            return WE_SHORT; /* the file ends before off + len */
        c->file_left -= (uint64_t)n;
        budget = (uint64_t)n >= budget ? 0 : budget - (uint64_t)n;
    }
    return 1;
}

static int flush(conn_t *c)
{
    return c->file_fd >= 0 ? flush_file(c) : flush_iov(c);
}

/* Runs the first flush of a new operation inside the caller's call; completion is deferred. */
static void start_op(conn_t *c)
{
    conn_ext_t *x = ext_of(c);
    int rc = flush(c);
    if (rc == 0) {
        x->wr_wait = true;
        rc = conn_update_poll(c);
        if (rc == 0)
            return;
        x->wr_wait = false;
    }
    x->defer_write = true;
    x->write_status = rc < 0 ? rc : 0;
    defer_start(c);
}

int conn_write(conn_t *c, const uv_buf_t *bufs, int n, conn_write_cb cb)
{
    if (c->closing)
        return -EBADF;
    if (c->write_cb)
        return -EBUSY;
    if (!cb || n < 0 || n > CONN_MAX_IOV)
        return -EINVAL;
    c->niov = 0;
    for (int i = 0; i < n; i++)
        if (bufs[i].len > 0)
            c->iov[c->niov++] = bufs[i];
    c->file_fd = -1;
    c->write_cb = cb;
    start_op(c);
    return 0;
}

int conn_sendfile(conn_t *c, int fd, off_t off, uint64_t len, conn_write_cb cb)
{
    if (c->closing)
        return -EBADF;
    if (c->write_cb)
        return -EBUSY;
    if (!cb || fd < 0 || off < 0)
        return -EINVAL;
    c->niov = 0;
    c->file_fd = fd;
    c->file_off = off;
    c->file_left = len;
    c->write_cb = cb;
    ext_of(c)->no_sendfile = c->tls != NULL;
    start_op(c);
    return 0;
}

bool conn_writing(const conn_t *c)
{
    return c->write_cb != NULL;
}

/* ---- Poll events. ---- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    conn_t *c = h->data;
    conn_ext_t *x = ext_of(c);
    tls_conn_t *t = tls_of(c);
    if (c->closing)
        return;
    if (status < 0) {
        /* libuv reports POLLERR as UV_EBADF and stops the handle. The socket's real error
         * (ECONNREFUSED, ECONNRESET...) is still pending, and data received before it is still
         * queued: re-arm, and let the normal paths (getsockopt, recv, send) find both. */
        c->events = 0;
        events = wanted(c);
        (void)conn_update_poll(c);
    }
    /* Readability nobody asked for: reading was stopped lazily (see update_poll). */
    int stale = events & UV_READABLE & ~wanted(c);
    x->in_cb++;
    if (x->connecting) {
        if (events & UV_WRITABLE) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                soerr = errno;
            x->connecting = false;
            connect_done(c, -soerr);
        }
    } else if (t && t->handshaking) {
        if (events & t->hs_need)
            conn_tls_handshake(c);
    } else {
        if (!c->closing && x->wr_wait && (events & (t ? t->wr_need : UV_WRITABLE))) {
            int rc = flush(c);
            if (rc != 0) {
                x->wr_wait = false;
                finish_write(c, rc < 0 ? rc : 0);
            } else if (t) {
                (void)conn_update_poll(c); /* SSL_write may now wait for readability */
            }
        }
        if (!c->closing && c->reading && (events & (t ? t->rd_need : UV_READABLE)))
            do_reads(c);
    }
    x->in_cb--;
    drain(c);
    if (c->closing)
        return;
    stale |= events & UV_WRITABLE;
    trim_poll(c, stale);
}

/* ---- Closing. ---- */

static void on_handle_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    conn_ext_t *x = ext_of(c);
    if (--x->open_handles > 0)
        return;
    free(x);
    c->ext = NULL;
    if (c->close_cb)
        c->close_cb(c);
}

void conn_close(conn_t *c, conn_close_cb cb)
{
    if (c->closing)
        return;
    conn_ext_t *x = ext_of(c);
    c->closing = true;
    c->reading = false;
    c->close_cb = cb;
    c->write_cb = NULL;
    c->events = 0;
    x->connecting = x->wr_wait = x->defer_connect = x->defer_write = x->defer_read = false;
    x->open_handles = 2;
    /* close_notify goes out (best effort) while the fd is still open. */
    conn_tls_free(c);
    /* uv_close stops the poll watcher before the fd is closed, so epoll never sees a closed
     * (or reused) descriptor. */
    uv_close((uv_handle_t *)&c->poll, on_handle_closed);
    uv_close((uv_handle_t *)&x->idle, on_handle_closed);
    close(c->fd);
    c->fd = -1;
    free(c->rbuf);
    c->rbuf = NULL;
}
