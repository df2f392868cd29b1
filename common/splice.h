/** splice(2): Linux's moves of bytes through a pipe without copying them through user space.
 *
 * Blob fills from plain-HTTP upstreams use it (proxy/producer.c): the loop moves the body from
 * the upstream socket into a pipe (socket pages change hands, nothing is copied), and a
 * threadpool job moves it from the pipe into the fill's temp file (the one copy, into the page
 * cache), then hashes it from there. The read/memcpy/pwrite path stays for TLS upstreams and
 * chunked bodies. This is the only file that asks for _GNU_SOURCE. */
#ifndef WINCH_COMMON_SPLICE_H
#define WINCH_COMMON_SPLICE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/** Opens a pipe for splicing into fds[0] (read end) and fds[1] (write end, O_NONBLOCK), both
 * O_CLOEXEC, and raises its capacity toward `want` bytes (the kernel's default stays when that
 * is refused, e.g. over /proc/sys/fs/pipe-max-size). Returns 0 or -errno; the caller closes
 * both fds. */
int splice_pipe_open(int fds[2], size_t want);

/** Moves up to len bytes from the socket sock into the pipe's write end pipe_w without
 * blocking. Returns the count moved (> 0), 0 at the peer's end of stream, -EAGAIN when the
 * socket holds nothing, -ENOBUFS when the pipe is full while the socket holds bytes (the
 * caller waits for the pipe to drain: polling the socket again would spin), or -errno. */
ssize_t splice_from_socket(int sock, int pipe_w, size_t len);

/** Moves up to n bytes from the pipe's read end pipe_r into fd at offset off (fd's own offset
 * unchanged), blocking while the pipe is empty. The shape of a libc call, for cache_io_t:
 * returns the count moved, or -1 with errno set. For threadpool threads. */
ssize_t splice_to_file(int pipe_r, int fd, size_t n, off_t off);

#endif
