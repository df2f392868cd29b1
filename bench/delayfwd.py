#!/usr/bin/env python3
"""A TCP forwarder that holds every HTTP request for a fixed time before passing it on: the
bench's stand-in for a registry one round trip away (each request costs its delay, as a request
to a remote registry costs its RTT). Responses pass unpaced. Standard library only.

    delayfwd.py --to 127.0.0.1:UPSTREAM --delay-ms 50 [--listen 127.0.0.1:0]

Prints "listening on HOST:PORT" once it accepts. On SIGTERM it prints "requests N" (every request
head seen, all connections) and exits. Request bodies are skipped by Content-Length (the bench
only sends GET and HEAD); chunked request bodies are not supported.
"""

import argparse
import signal
import socket
import sys
import threading
import time

CHUNK = 256 * 1024
count_lock = threading.Lock()
count = [0]


def pump_down(src, dst):
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def pump_up(src, dst, delay):
    """client -> upstream: each complete request head waits `delay` s, then leaves."""
    buf = b''
    skip = 0
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            buf += data
            while buf:
                if skip:
                    n = min(skip, len(buf))
                    dst.sendall(buf[:n])
                    buf, skip = buf[n:], skip - n
                    continue
                end = buf.find(b'\r\n\r\n')
                if end < 0:
                    if len(buf) > 1 << 20:
                        raise OSError('request head over 1 MiB')
                    break
                head, buf = buf[:end + 4], buf[end + 4:]
                for line in head.split(b'\r\n')[1:]:
                    k, _, v = line.partition(b':')
                    if k.strip().lower() == b'content-length':
                        skip = int(v.strip() or 0)
                with count_lock:
                    count[0] += 1
                time.sleep(delay)
                dst.sendall(head)
    except (OSError, ValueError):
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--listen', default='127.0.0.1:0')
    ap.add_argument('--to', required=True)
    ap.add_argument('--delay-ms', type=float, required=True)
    a = ap.parse_args()
    lh, lp = a.listen.rsplit(':', 1)
    th, tp = a.to.rsplit(':', 1)
    if lh != '127.0.0.1' or th != '127.0.0.1':
        sys.exit('delayfwd: loopback only')
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lh, int(lp)))
    ls.listen(256)

    def on_term(signum, frame):
        print('requests %d' % count[0], flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print('listening on %s:%d' % ls.getsockname(), flush=True)
    while True:
        c, _ = ls.accept()
        try:
            u = socket.create_connection((th, int(tp)), timeout=10)
            u.settimeout(None)
        except OSError:
            c.close()
            continue
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump_up, args=(c, u, a.delay_ms / 1000.0), daemon=True).start()
        threading.Thread(target=pump_down, args=(u, c), daemon=True).start()


if __name__ == '__main__':
    main()
