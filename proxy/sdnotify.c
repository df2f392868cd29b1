/* sd_notify by hand (sdnotify.h). The protocol is a single datagram of text to an AF_UNIX
 * socket; an address that starts with '@' is abstract (the '@' stands for a leading NUL, and
 * the address length then counts exactly the name's bytes, no terminator). */
#include "proxy/sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int sdnotify_send(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path || n < 2)
        return -EINVAL;
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    socklen_t len =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '@' ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = 1;
    size_t sl = strlen(state);
    ssize_t w = sendto(fd, state, sl, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    if (w < 0)
        rc = -errno;
    else if ((size_t)w != sl)
        rc = -EIO;
    close(fd);
    return rc;
}
