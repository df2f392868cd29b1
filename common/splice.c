/* splice(2) wrappers (splice.h). splice, F_SETPIPE_SZ and pipe2 are Linux extensions: this
 * file alone defines _GNU_SOURCE, before any header, so the rest of the tree stays POSIX. */
#define _GNU_SOURCE
#include "common/splice.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

int splice_pipe_open(int fds[2], size_t want)
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    /* Only the loop's end must not block; the threadpool's end moves bytes it knows are there. */
    int fl = fcntl(fds[1], F_GETFL);
    if (fl < 0 || fcntl(fds[1], F_SETFL, fl | O_NONBLOCK) < 0) {
        int err = -errno;
        close(fds[0]);
        close(fds[1]);
        return err;
    }
    if (want > 0 && want <= (size_t)0x7fffffff)
        (void)fcntl(fds[1], F_SETPIPE_SZ, (int)want); /* a smaller pipe only means more rounds */
    return 0;
}

ssize_t splice_from_socket(int sock, int pipe_w, size_t len)
{
    for (;;) {
        ssize_t n = splice(sock, NULL, pipe_w, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        /* EAGAIN from either side: an empty socket, or a pipe with no free slot (a slot holds
         * one page or less, so a pipe can be full well before its byte capacity). */
        int queued = 0;
        if (ioctl(sock, FIONREAD, &queued) == 0 && queued > 0)
            return -ENOBUFS;
        return -EAGAIN;
    }
}

ssize_t splice_to_file(int pipe_r, int fd, size_t n, off_t off)
{
    loff_t o = off;
    return splice(pipe_r, NULL, fd, &o, n, SPLICE_F_MOVE);
}
