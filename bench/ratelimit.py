#!/usr/bin/env python3
"""A TCP forwarder that limits each connection's downstream direction (upstream -> client) to a
fixed rate: the bench's stand-in for a remote registry, where each TCP stream gets its own share
of the link. Requests (client -> upstream) pass unpaced. Standard library only.

    ratelimit.py --listen 127.0.0.1:PORT --to 127.0.0.1:UPSTREAM --rate BYTES_PER_S

Pacing is a token bucket per connection: a chunk may leave when the connection's schedule says
so (each byte costs 1/rate s), with at most --burst bytes of credit. Because the schedule is a
deadline and not a sleep per chunk, a late wake-up (the machine is busy) is made up afterwards
as long as it stays within the burst, so the long-run rate is exact. Credit does not pile up
while the connection is idle (between keep-alive requests) beyond the burst either.

nginx's limit_rate was tried first: it does not pace proxy_buffering off, and buffered it
budgets per whole second of ngx_time(), which moved the time of one 512 MiB transfer by ±5 %.
"""

import argparse
import signal
import socket
import sys
import threading
import time

CHUNK = 128 * 1024


def pump_up(src, dst):
    """client -> upstream, unpaced."""
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def pump_down(src, dst, rate, burst):
    """upstream -> client, paced to `rate` bytes/s with `burst` bytes of credit."""
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    burst_s = burst / rate
    due = time.monotonic()  # when the next byte may leave
    try:
        while True:
            n = src.recv_into(mv)
            if n == 0:
                break
            now = time.monotonic()
            if due < now:
                due = now  # idle or behind by more than the burst: no older credit
            due += n / rate
            # The chunk leaves once the bucket holds it: at due - burst_s.
            wait = due - burst_s - now
            if wait > 0:
                time.sleep(wait)
            dst.sendall(mv[:n])
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve_conn(client, to, rate, burst):
    up = None
    try:
        up = socket.create_connection(to, timeout=10)
        up.settimeout(None)
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = threading.Thread(target=pump_up, args=(client, up), daemon=True)
        t.start()
        pump_down(up, client, rate, burst)
        t.join()
    except OSError as e:
        print('ratelimit: %s' % e, file=sys.stderr, flush=True)
    finally:
        for s in (client, up):
            if s is not None:
                s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--listen', required=True, help='host:port')
    ap.add_argument('--to', required=True, help='host:port of the upstream')
    ap.add_argument('--rate', type=float, required=True, help='bytes/s per connection')
    ap.add_argument('--burst', type=int, default=1 << 20, help='bytes of credit (default 1 MiB)')
    a = ap.parse_args()
    lh, lp = a.listen.rsplit(':', 1)
    th, tp = a.to.rsplit(':', 1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lh, int(lp)))
    ls.listen(256)
    print('ratelimit: listening on %s, to %s, %.0f bytes/s per connection, burst %d' % (
        a.listen, a.to, a.rate, a.burst), file=sys.stderr, flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve_conn, args=(c, (th, int(tp)), a.rate, a.burst),
                         daemon=True).start()


if __name__ == '__main__':
    main()
