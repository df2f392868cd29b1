/** systemd's readiness protocol (sd_notify(3)), written by hand: one datagram to the unix socket
 * named by $NOTIFY_SOCKET ("/path", or "@name" for the abstract namespace). No libsystemd.
 * Internal to proxy/. */
#ifndef WINCH_PROXY_SDNOTIFY_H
#define WINCH_PROXY_SDNOTIFY_H

/** Sends state ("READY=1", "STOPPING=1", "STATUS=...", newline-separated assignments; borrowed)
 * to $NOTIFY_SOCKET without blocking. Returns 1 when sent, 0 when NOTIFY_SOCKET is unset or
 * empty (not run by systemd: nothing to do), or -errno (EINVAL: the variable is not a socket
 * path winch can use). */
int sdnotify_send(const char *state);

#endif
