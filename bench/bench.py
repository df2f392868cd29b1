#!/usr/bin/env python3
"""winch benchmark harness: winch against distribution's proxy mode, nginx and the upstream.

Run it through bench/run, which installs the Debian packages and builds winch in Release first.
Everything listens on 127.0.0.1, every child process is stopped on exit (also on Ctrl-C), every
request loop is bounded in count and in time. Scratch data lives in bench/work/ (git-ignored).
The results table is printed and written to bench/RESULTS.md; the raw numbers go to
bench/work/results.json.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import cachemgmt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'bench')
MiB = 1 << 20
GiB = 1 << 30
MB = 1000 * 1000

# Every Accept a real client sends for a manifest (one comma list, like containerd).
MANIFEST_ACCEPT = ('Accept: application/vnd.oci.image.manifest.v1+json, '
                   'application/vnd.docker.distribution.manifest.v2+json, '
                   'application/vnd.oci.image.index.v1+json, '
                   'application/vnd.docker.distribution.manifest.list.v2+json')


def log(*a):
    print('[bench %s]' % time.strftime('%H:%M:%S'), *a, file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def rmtree(path):
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def rss_kib(pid, field='VmRSS'):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pids):
    """user + system CPU seconds of the processes (all their threads) so far."""
    ticks = 0
    for pid in pids:
        try:
            with open('/proc/%d/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf('SC_CLK_TCK')


def sha256_s_per_gib():
    """CPU seconds one core spends on SHA-256 per GiB here (OpenSSL, through hashlib: SHA-NI
    where the CPU has it): the cost of one verification pass."""
    buf = os.urandom(64 * MiB)
    best = None
    for _ in range(3):
        t0 = time.process_time()
        hashlib.sha256(buf).digest()
        t = time.process_time() - t0
        best = t if best is None else min(best, t)
    return best * (GiB / len(buf))


def children_of(pid):
    """Direct children of pid (nginx's workers)."""
    kids = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(')') + 2:].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(d))
    return kids


# ---- Processes ---------------------------------------------------------------------------------

class Proc:
    """A child process in its own process group, logged to a file, stopped at exit."""
    live = []

    def __init__(self, name, argv, logpath, stdout_path=None, env=None):
        self.name = name
        self.logpath = logpath
        self.err = open(logpath, 'ab')
        self.out = open(stdout_path, 'ab') if stdout_path else self.err
        self.t_exec = time.monotonic()
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
                                  env=env, start_new_session=True)
        self.pid = self.p.pid
        Proc.live.append(self)

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=10):
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log('%s did not stop within %ss: SIGKILL' % (self.name, timeout))
                self.p.kill()
                self.p.wait(5)
        for f in {self.err, self.out}:
            f.close()
        if self in Proc.live:
            Proc.live.remove(self)

    @classmethod
    def stop_all(cls):
        for p in list(cls.live):
            try:
                p.stop()
            except Exception as e:  # keep stopping the others
                log('stopping %s: %s' % (p.name, e))


def wait_http(url, timeout=15.0, ok=(200,)):
    """Polls url until it answers one of ok, bounded by timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            code = http_status(url)
            if code in ok:
                return
            last = code
        except OSError as e:
            last = e
        time.sleep(0.02)
    raise RuntimeError('%s not ready after %ss (last: %s)' % (url, timeout, last))


def wait_port(port, timeout=15.0):
    """Waits until 127.0.0.1:port accepts a TCP connection (a TLS server)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError('nothing listens on 127.0.0.1:%d' % port)
            time.sleep(0.02)


def http_status(url, method='GET', headers=(), timeout=5.0):
    host, port, path = split_url(url)
    with socket.create_connection((host, port), timeout=timeout) as s:
        req = '%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n%s\r\n' % (
            method, path, host, port, ''.join(h + '\r\n' for h in headers))
        s.sendall(req.encode())
        data = s.recv(64)
        m = re.match(rb'HTTP/1\.[01] (\d{3})', data)
        if not m:
            raise OSError('bad status line %r' % data[:40])
        return int(m.group(1))


def split_url(url):
    m = re.match(r'http://([^:/]+):(\d+)(/.*)?$', url)
    return m.group(1), int(m.group(2)), m.group(3) or '/'


def http_get_body(url, headers=(), timeout=30.0):
    """Small GETs (manifests): returns (status, headers dict lowercased, body)."""
    argv = ['curl', '-s', '-S', '--max-time', str(timeout), '-D', '-', '-o', '-']
    for h in headers:
        argv += ['-H', h]
    out = subprocess.run(argv + [url], capture_output=True, timeout=timeout + 5).stdout
    head, _, body = out.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1]) if lines and lines[0].startswith('HTTP/') else 0
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(':')
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


# ---- Upstream and peers ------------------------------------------------------------------------

def registry_yaml(port, root, remote=None):
    y = ['version: 0.1',
         'log: {level: error}',
         'storage:',
         '  filesystem: {rootdirectory: %s}' % root,
         '  delete: {enabled: true}',
         'http: {addr: 127.0.0.1:%d}' % port,
         'health: {storagedriver: {enabled: false}}']
    if remote:
        y.append('proxy: {remoteurl: %s}' % remote)
    return '\n'.join(y) + '\n'


class Registry:
    """Debian's docker-registry (distribution 2.8): the upstream, or with remote= its proxy mode.
    Its access log (Apache format, one line per finished request) goes to access.log; that is how
    upstream GETs are counted."""

    def __init__(self, name, workdir, remote=None):
        self.name = name
        self.dir = workdir
        self.remote = remote
        self.proc = None
        self.port = None
        os.makedirs(workdir, exist_ok=True)
        self.access = os.path.join(workdir, 'access.log')

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    def start(self, fresh=False):
        self.stop()
        root = os.path.join(self.dir, 'store')
        if fresh:
            rmtree(root)
        os.makedirs(root, exist_ok=True)
        # The port stays across restarts: the proxies' configs point at the upstream's.
        self.port = self.port or free_port()
        cfg = os.path.join(self.dir, 'config.yml')
        with open(cfg, 'w') as f:
            f.write(registry_yaml(self.port, root, self.remote))
        self.proc = Proc(self.name, ['docker-registry', 'serve', cfg],
                         os.path.join(self.dir, 'registry.log'), stdout_path=self.access)
        wait_http(self.url + '/v2/')
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def pids(self):
        return [self.proc.pid]

    def log_offset(self):
        try:
            return os.path.getsize(self.access)
        except OSError:
            return 0

    def requests_since(self, offset, settle=0.5, limit=15.0):
        """Access-log lines written since offset, once the log has been quiet for `settle` s
        (a proxy may still be fetching in the background after its client finished)."""
        deadline = time.monotonic() + limit
        last = -1
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            size = self.log_offset()
            if size != last:
                last = size
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                break
            time.sleep(0.05)
        with open(self.access, 'rb') as f:
            f.seek(offset)
            data = f.read().decode('latin-1')
        out = []
        for line in data.splitlines():
            m = re.search(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})', line)
            if m:
                out.append((m.group(1), m.group(2), int(m.group(3))))
        return out


NGINX_COMMON = '''
daemon off;
master_process on;
user root;
worker_processes %(workers)s;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %(dir)s/tmp/body;
  proxy_temp_path %(dir)s/tmp/proxy;
  fastcgi_temp_path %(dir)s/tmp/fastcgi;
  uwsgi_temp_path %(dir)s/tmp/uwsgi;
  scgi_temp_path %(dir)s/tmp/scgi;
  keepalive_requests 1000000;
  sendfile on;
  # tcp_nopush on (Debian's default nginx.conf) halves one stream's rate here: 858 against
  # 1888 MB/s median over 8 GETs of the 512 MiB blob, same 8-client aggregate. The ceiling
  # should be nginx at its best.
  tcp_nopush off;
  types { }
  default_type application/octet-stream;
%(body)s
}
'''


class Nginx:
    """nginx with its own prefix and config under bench/work: either the static ceiling (the
    same blob file served with sendfile, and the manifest as a static file) or a registry cache
    (proxy_cache + proxy_cache_lock, the design of nginx-based registry mirrors)."""

    def __init__(self, name, workdir, workers):
        self.name = name
        self.dir = workdir
        self.workers = workers
        self.proc = None
        self.port = None
        self.body = None

    @property
    def url(self):
        return '%s://127.0.0.1:%d' % ('https' if self.name == 'nginx-tls' else 'http', self.port)

    def start(self, fresh=False):
        self.stop()
        if fresh:
            rmtree(os.path.join(self.dir, 'cache'))
        for d in ('tmp', 'cache'):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        # The port stays across restarts: the proxies' configs point at the upstream's.
        self.port = self.port or free_port()
        conf = os.path.join(self.dir, 'nginx.conf')
        with open(conf, 'w') as f:
            f.write(NGINX_COMMON % {'dir': self.dir, 'workers': self.workers,
                                    'body': self.body(self.port)})
        self.proc = Proc(self.name, ['nginx', '-p', self.dir, '-c', conf, '-e',
                                     os.path.join(self.dir, 'error.log')],
                         os.path.join(self.dir, 'stderr.log'))
        if self.url.startswith('https:'):
            wait_port(self.port)
        else:
            wait_http(self.url + '/v2/', ok=(200, 403, 404))
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def pids(self):
        return [self.proc.pid] + children_of(self.proc.pid)


def nginx_static(workdir, workers, blob_file, blob_path, manifest_bytes, manifest_type,
                 manifest_paths):
    n = Nginx('nginx', workdir, workers)
    www = os.path.join(workdir, 'www')
    rmtree(www)
    os.makedirs(os.path.join(www, os.path.dirname(blob_path.lstrip('/'))), exist_ok=True)
    os.symlink(blob_file, os.path.join(www, blob_path.lstrip('/')))
    for p in manifest_paths:
        fp = os.path.join(www, p.lstrip('/'))
        os.makedirs(os.path.dirname(fp), exist_ok=True)
        with open(fp, 'wb') as f:
            f.write(manifest_bytes)
    mdir = os.path.dirname(manifest_paths[0])
    n.body = lambda port: '''
  server {
    listen 127.0.0.1:%d;
    root %s;
    location = /v2/ { return 200 "{}"; }
    location %s/ { default_type %s; }
  }''' % (port, www, mdir, manifest_type)
    return n


def make_cert(workdir):
    """A self-signed P-256 certificate for 127.0.0.1 (both TLS servers use it). Returns
    (cert path, key path)."""
    os.makedirs(workdir, exist_ok=True)
    cert, key = os.path.join(workdir, 'cert.pem'), os.path.join(workdir, 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days',
                    '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
                   check=True, capture_output=True)
    return cert, key


def nginx_tls(workdir, workers, www_of, cert, key):
    """nginx serving the static blob of nginx_static (its www directory) over TLS: no sendfile
    (there is no kernel TLS here), nginx's default 16 KiB ssl_buffer_size."""
    n = Nginx('nginx-tls', workdir, workers)
    n.body = lambda port: '''
  server {
    listen 127.0.0.1:%d ssl;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.3;
    root %s;
    location = /v2/ { return 200 "{}"; }
  }''' % (port, cert, key, www_of)
    return n


def nginx_cache(workdir, workers, upstream):
    n = Nginx('nginx-cache', workdir, workers)
    n.body = lambda port: '''
  proxy_cache_path %(dir)s/cache levels=1:2 keys_zone=reg:16m max_size=20g inactive=1d
                   use_temp_path=off;
  upstream registry { server 127.0.0.1:%(up)d; keepalive 32; }
  server {
    listen 127.0.0.1:%(port)d;
    location /v2/ {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
      proxy_cache reg;
      proxy_cache_key $request_uri;
      proxy_cache_valid 200 206 1d;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 600s;
      proxy_cache_lock_age 600s;
      proxy_read_timeout 600s;
    }
  }''' % {'dir': workdir, 'up': upstream.port, 'port': port}
    return n


class Limiter:
    """The remote-registry stand-in: bench/ratelimit.py, a TCP forwarder to the upstream that
    paces each connection's responses to `rate` bytes/s (each TCP stream gets its own share, as
    on a remote link or from a CDN). Exact to ~0.2 % on a 512 MiB blob; costs ~0.1 core per
    100 MB/s stream, the same on every path measured through it."""

    def __init__(self, workdir, upstream, rate, burst=None):
        self.dir = workdir
        self.upstream = upstream
        self.rate = rate
        self.burst = burst  # None: ratelimit.py's default (1 MiB)
        self.proc = None
        self.port = None
        os.makedirs(workdir, exist_ok=True)

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    def start(self, fresh=False):
        self.stop()
        self.port = self.port or free_port()
        self.proc = Proc('ratelimit', [sys.executable, os.path.join(BENCH, 'ratelimit.py'),
                                       '--listen', '127.0.0.1:%d' % self.port,
                                       '--to', '127.0.0.1:%d' % self.upstream.port,
                                       '--rate', '%d' % self.rate] +
                         (['--burst', '%d' % self.burst] if self.burst else []),
                         os.path.join(self.dir, 'ratelimit.log'))
        wait_http(self.url + '/v2/')
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def pids(self):
        return [self.proc.pid]


class Winch:
    def __init__(self, binary, workdir, upstream, tag_ttl_s, log_level=None, extra=None):
        self.bin = binary
        self.dir = workdir
        self.upstream = upstream
        self.proc = None
        self.port = None
        self.cache = os.path.join(workdir, 'cache')
        self.cfg = os.path.join(workdir, 'winch.json')
        os.makedirs(workdir, exist_ok=True)
        cfg = {'tag_ttl_s': tag_ttl_s}
        if log_level:
            cfg['log_level'] = log_level
        cfg.update(extra or {})
        with open(self.cfg, 'w') as f:
            json.dump(cfg, f)

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    def argv(self, listen='127.0.0.1:0', cache=None):
        return [self.bin, 'serve', '--listen', listen, '--cache-dir', cache or self.cache,
                '--upstream', 'docker.io=http://127.0.0.1:%d' % self.upstream.port,
                '--config', self.cfg]

    def start(self, fresh=False):
        self.stop()
        if fresh:
            rmtree(self.cache)
        logpath = os.path.join(self.dir, 'winch.log')
        off = os.path.getsize(logpath) if os.path.exists(logpath) else 0
        self.proc = Proc('winch', self.argv(), logpath)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with open(logpath, 'rb') as f:
                f.seek(off)
                m = re.search(rb'listening on 127\.0\.0\.1:(\d+)', f.read())
            if m:
                self.port = int(m.group(1))
                break
            if not self.proc.alive():
                raise RuntimeError('winch exited (%s); see %s' % (self.proc.p.returncode, logpath))
            time.sleep(0.005)
        else:
            raise RuntimeError('winch did not log "listening on" within 15 s; see ' + logpath)
        wait_http(self.url + '/v2/')
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def pids(self):
        return [self.proc.pid]


# ---- Clients -----------------------------------------------------------------------------------

CURL_FMT = '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\\n'


# Test T: every TLS client asks for the same suite, so both servers encrypt alike.
TLS_SUITE = 'TLS_AES_128_GCM_SHA256'


def curl_argv(url, headers=(), max_time=120):
    argv = ['curl', '-s', '-o', '/dev/null', '-w', CURL_FMT, '--max-time', '%g' % max_time]
    if url.startswith('https:'):
        # A self-signed certificate made by the bench (tls_cert); TLS 1.3 with one suite.
        argv += ['-k', '--tlsv1.3', '--tls13-ciphers', TLS_SUITE]
    for h in headers:
        argv += ['-H', h]
    return argv + [url]


def run_curls(urls, headers=(), max_time=120, on_start=None):
    """Runs one curl process per URL, all at once. Returns (wall seconds, [(code, size, ttfb,
    total)]). The wall time is taken from the launch of the first curl to the end of the last
    one, using each curl's own transfer time, so the fork/exec of later curls does not count."""
    procs = []
    try:
        for u in urls:
            t = time.monotonic()
            procs.append((t, subprocess.Popen(curl_argv(u, headers, max_time),
                                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)))
        if on_start:
            on_start()
        res = []
        end = 0.0
        for t, p in procs:
            out = p.communicate(timeout=max_time + 15)[0].decode().split()
            code, size, ttfb, total = int(out[0]), int(out[1]), float(out[2]), float(out[3])
            res.append((code, size, ttfb, total))
            end = max(end, t + total)
        return end - procs[0][0], res
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def timed_get(url, headers=(), start_evt=None, delay=0.0, max_time=120, bufsize=4 * MiB):
    """One GET on a fresh connection, read to the end. Returns a dict with the time of the first
    response byte (head) and of the first body byte, both from this client's own request start,
    the total time, status and body size. Used where the first *body* byte matters (a proxy may
    send headers early and still make the client wait)."""
    host, port, path = split_url(url)
    r = {'status': 0, 'size': 0, 'head': None, 'first': None, 'total': None, 'error': None}
    s = None
    try:
        s = socket.create_connection((host, port), timeout=max_time)
        req = ('GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: winch-bench\r\nConnection: close\r\n'
               '%s\r\n' % (path, host, port, ''.join(h + '\r\n' for h in headers))).encode()
        if start_evt is not None:
            start_evt.wait(30)
        if delay:
            time.sleep(delay)
        t0 = time.monotonic()
        r['t0'] = t0
        s.sendall(req)
        deadline = t0 + max_time
        buf = b''
        while b'\r\n\r\n' not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError('connection closed in the response head')
            if r['head'] is None:
                r['head'] = time.monotonic() - t0
            buf += chunk
            if len(buf) > 65536:
                raise OSError('response head too large')
        head, _, rest = buf.partition(b'\r\n\r\n')
        lines = head.decode('latin-1').split('\r\n')
        r['status'] = int(lines[0].split()[1])
        clen = None
        for line in lines[1:]:
            k, _, v = line.partition(':')
            if k.strip().lower() == 'content-length':
                clen = int(v.strip())
        got = len(rest)
        if got:
            r['first'] = time.monotonic() - t0
        mv = memoryview(bytearray(bufsize))
        while clen is None or got < clen:
            if time.monotonic() > deadline:
                raise OSError('timed out after %d bytes' % got)
            n = s.recv_into(mv)
            if n == 0:
                break
            if r['first'] is None:
                r['first'] = time.monotonic() - t0
            got += n
        r['size'] = got
        r['total'] = time.monotonic() - t0
        if clen is not None and got != clen:
            r['error'] = 'short body: %d of %d' % (got, clen)
    except (OSError, ValueError, IndexError) as e:
        r['error'] = str(e)
    finally:
        if s:
            s.close()
    return r


def concurrent_gets(url, n, stagger=0.0, max_time=120):
    """n timed_get in threads released together; clients 2..n start `stagger` s after the first.
    Returns (wall seconds, [results])."""
    evt = threading.Event()
    res = [None] * n

    def work(i):
        res[i] = timed_get(url, start_evt=evt, delay=(stagger if i else 0.0), max_time=max_time)

    ts = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    time.sleep(0.05)  # every thread has its connection open and waits on the event
    evt.set()
    for t in ts:
        t.join(max_time + 10)
    t0 = min(r['t0'] for r in res if r and 't0' in r)
    ends = [r['t0'] + r['total'] for r in res if r and r.get('total') is not None]
    return (max(ends) - t0 if ends else None), res


class RssSampler:
    """Samples the summed VmRSS of a set of processes every `every` s, in a thread."""

    def __init__(self, pids_fn, every=0.01):
        self.pids_fn = pids_fn
        self.every = every
        self.peak = 0
        self.stop_evt = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        pids = self.pids_fn()  # once: listing nginx's workers walks /proc
        while not self.stop_evt.is_set():
            self.peak = max(self.peak, sum(rss_kib(p) for p in pids))
            time.sleep(self.every)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_evt.set()
        self.t.join(5)


def wrk(url, headers, seconds, conns=16, threads=2):
    argv = ['wrk', '-t%d' % threads, '-c%d' % conns, '-d%ds' % seconds, '--timeout', '5s']
    for h in headers:
        argv += ['-H', h]
    out = subprocess.run(argv + [url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    m = re.search(r'Requests/sec:\s+([\d.]+)', out)
    bad = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', out)
    errs = re.search(r'Socket errors: (.*)', out)
    if not m:
        raise RuntimeError('wrk output not understood:\n' + out)
    return float(m.group(1)), (int(bad.group(1)) if bad else 0), (errs.group(1) if errs else '')


# ---- The bench ---------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.a = args
        self.work = os.path.abspath(args.work)
        self.reps = args.reps
        self.res = {}          # raw results, written to results.json
        self.rows = []         # the table
        self.notes = []        # anomalies worth reporting
        self.up = self.dist = self.winch = self.ngx = self.ncache = None
        self.winch_manifests = True
        self.lim = None        # the rate-limited upstream (tests 3L, 5L) and its own peers
        self.winch_buf = None  # winch with "fill_splice": false (test 3B)
        self.lpeers = None

    # -- setup --

    def seed(self):
        """Seeds the upstream with the project's own offline images (tests/tools), once per
        builder version and size; the upstream's storage is kept in bench/work between runs."""
        a = self.a
        tools = os.path.join(ROOT, 'tests', 'tools')
        mk, push = os.path.join(tools, 'mkimage.py'), os.path.join(tools, 'push.py')
        imgdir = os.path.join(self.work, 'images')
        updir = os.path.join(self.work, 'upstream')
        stamp_path = os.path.join(updir, 'seeded.json')
        if os.path.exists(mk) and os.path.exists(push):
            h = subprocess.run(['sha256sum', mk, push], capture_output=True, text=True).stdout
            stamp = {'big_mib': a.big_mib, 'tools': h.split()[::2]}
            cmds = [[sys.executable, mk, imgdir, '--big-mib', str(a.big_mib)],
                    [sys.executable, push, imgdir, None]]
        else:
            raise SystemExit('tests/tools/mkimage.py and push.py are needed to seed the upstream')
        old = None
        if os.path.exists(stamp_path) and not a.reseed:
            with open(stamp_path) as f:
                old = json.load(f)
        self.up = Registry('upstream', updir)
        if old != stamp:
            log('seeding the upstream (%s)' % stamp)
            rmtree(os.path.join(updir, 'store'))
            if os.path.exists(stamp_path):
                os.unlink(stamp_path)
            rmtree(imgdir)
            self.up.start(fresh=True)
            for c in cmds:
                c = [x if x is not None else '127.0.0.1:%d' % self.up.port for x in c]
                log('  ' + ' '.join(c))
                subprocess.run(c, check=True, timeout=900)
            with open(stamp_path, 'w') as f:
                json.dump(stamp, f)
        else:
            log('upstream already seeded (%s)' % updir)
            self.up.start()

    def find_image(self):
        repo, tag = 'lab/big', 'v1'
        ij = os.path.join(self.work, 'images', 'images.json')
        if os.path.exists(ij):
            with open(ij) as f:
                imgs = json.load(f)
            imgs = imgs.get('images', imgs) if isinstance(imgs, dict) else imgs
            for im in imgs:
                if im.get('name') == 'big':
                    repo, tag = im['repo'], im['tag']
        st, hd, body = http_get_body('%s/v2/%s/manifests/%s' % (self.up.url, repo, tag),
                                     [MANIFEST_ACCEPT])
        if st != 200:
            raise SystemExit('upstream has no %s:%s (HTTP %d)' % (repo, tag, st))
        man = json.loads(body)
        if 'manifests' in man:
            raise SystemExit('%s:%s is an index; the bench needs a single image' % (repo, tag))
        self.repo, self.tag = repo, tag
        self.mbytes = body
        self.mtype = hd.get('content-type')
        self.mdigest = hd.get('docker-content-digest')
        self.cfg = (man['config']['digest'], man['config']['size'])
        self.layers = [(l['digest'], l['size']) for l in man['layers']]
        self.big = max(self.layers, key=lambda l: l[1])
        hexd = self.big[0].split(':')[1]
        self.big_file = os.path.join(self.up.dir, 'store', 'docker', 'registry', 'v2', 'blobs',
                                     'sha256', hexd[:2], hexd, 'data')
        if os.path.getsize(self.big_file) != self.big[1]:
            raise SystemExit('blob file %s has the wrong size' % self.big_file)
        total = sum(s for _, s in self.layers) + self.cfg[1]
        self.res['image'] = {'repo': repo, 'tag': tag, 'manifest': self.mdigest,
                             'media_type': self.mtype, 'total_bytes': total,
                             'layers': self.layers, 'big': self.big}
        log('image %s:%s, %d layers (%s MiB), the big blob %s (%.0f MiB)' % (
            repo, tag, len(self.layers), '/'.join('%.0f' % (s / MiB) for _, s in self.layers),
            self.big[0][:19], self.big[1] / MiB))

    def start_peers(self):
        w = self.work
        self.dist = Registry('distribution', os.path.join(w, 'distribution'),
                             remote=self.up.url).start(fresh=True)
        self.ngx = nginx_static(os.path.join(w, 'nginx'), self.a.nginx_workers, self.big_file,
                                self.blob_path(self.big[0]), self.mbytes, self.mtype,
                                [self.manifest_path(self.tag), self.manifest_path(self.mdigest)])
        self.ngx.start()
        self.ncache = nginx_cache(os.path.join(w, 'nginx-cache'), self.a.nginx_workers, self.up)
        self.ncache.start(fresh=True)
        if self.a.winch:
            self.winch = Winch(self.a.winch, os.path.join(w, 'winch'), self.up, self.a.tag_ttl,
                               self.a.winch_log_level)
            self.winch.start(fresh=True)
            self.winch_buf = Winch(self.a.winch, os.path.join(w, 'winch-buffered'), self.up,
                                   self.a.tag_ttl, self.a.winch_log_level,
                                   extra={'fill_splice': False})
        # Sanity: every server gives the same manifest bytes.
        for name, s in self.servers(['direct', 'distribution', 'nginx', 'nginx-cache', 'winch']):
            st, hd, body = http_get_body(s.url + self.manifest_path(self.tag), [MANIFEST_ACCEPT])
            if st != 200 or body != self.mbytes:
                msg = '%s: manifest by tag gives HTTP %d, %d bytes (want %d): %s' % (
                    name, st, len(body), len(self.mbytes), body[:200].decode('latin-1'))
                if name != 'winch':
                    raise SystemExit(msg)
                # A winch that can not serve manifests is still measured on blobs; the tests
                # that need manifests (3, 6) leave it out, and the notes say why.
                self.note(msg + '; winch left out of tests 3 and 6')
                self.winch_manifests = False

    def servers(self, names, manifests=False):
        if manifests and not self.winch_manifests:
            names = [n for n in names if n != 'winch']
        m = {'direct': self.up, 'distribution': self.dist, 'nginx': self.ngx,
             'nginx-cache': self.ncache, 'winch': self.winch}
        return [(n, m[n]) for n in names if m.get(n) is not None]

    def limited(self, manifests=False):
        """The peers of the rate-limited variant: 'direct' is the limiter itself, the proxies are
        separate instances (own directories under bench/work/limited/) whose upstream is the
        limiter. They are started fresh for each measurement and stopped right after it."""
        if self.lim is None:
            d = os.path.join(self.work, 'limited')
            self.lim = Limiter(os.path.join(d, 'ratelimit'), self.up,
                               self.a.limit_rate * MB).start()
            self.lpeers = [('direct', self.lim),
                           ('distribution', Registry('distribution-limited',
                                                     os.path.join(d, 'distribution'),
                                                     remote=self.lim.url)),
                           ('nginx-cache', nginx_cache(os.path.join(d, 'nginx-cache'),
                                                       self.a.nginx_workers, self.lim))]
            if self.a.winch:
                self.lpeers.append(('winch', Winch(self.a.winch, os.path.join(d, 'winch'),
                                                   self.lim, self.a.tag_ttl,
                                                   self.a.winch_log_level)))
        if not self.lim.proc.alive():
            self.note('the rate limiter exited on its own (code %s); restarted' %
                      self.lim.proc.p.returncode)
            self.lim.stop()
            self.lim.start()
        return [(n, s) for n, s in self.lpeers
                if not (manifests and n == 'winch' and not self.winch_manifests)]

    def drop_limited_caches(self):
        """The limited peers start on an empty cache every time: their ~3 GiB need not stay."""
        for n, s in self.lpeers or []:
            if n != 'direct':
                s.stop()
                rmtree(os.path.join(s.dir, 'store' if isinstance(s, Registry) else 'cache'))

    def limited_what(self):
        return 'upstream limited to %g MB/s per connection' % self.a.limit_rate

    def blob_path(self, digest):
        return '/v2/%s/blobs/%s' % (self.repo, digest)

    def manifest_path(self, ref):
        return '/v2/%s/manifests/%s' % (self.repo, ref)

    def flush(self):
        """Writes back the previous cold test's cache files outside any timed region."""
        os.sync()

    def revive(self, after=None):
        """Restarts (on its current cache) every server a test stopped, and reports any that
        died on its own, with the end of its log."""
        for name, s in self.servers(['direct', 'distribution', 'nginx', 'nginx-cache', 'winch']):
            if s.proc is not None and not s.proc.alive():
                try:
                    with open(s.proc.logpath, 'rb') as f:
                        f.seek(max(0, os.path.getsize(s.proc.logpath) - 600))
                        tail = f.read().decode('latin-1').strip().splitlines()[-3:]
                except OSError:
                    tail = []
                self.note('%s exited on its own (code %s)%s; last log lines: %s' % (
                    name, s.proc.p.returncode, ' during test %s' % after if after else '',
                    ' | '.join(tail)))
                s.proc.stop()
                s.proc = None
            if s.proc is None:
                s.start()

    def warm(self):
        """Makes sure distribution and winch hold the whole image (after the cold tests they
        do; this covers --only)."""
        for name, s in self.servers(['distribution', 'winch']):
            for _ in range(2):
                http_get_body(s.url + self.manifest_path(self.tag), [MANIFEST_ACCEPT])
                urls = [s.url + self.blob_path(d) for d, _ in [self.cfg] + self.layers]
                _, res = run_curls(urls)
                for (code, size, _, _), (d, want) in zip(res, [self.cfg] + self.layers):
                    if code != 200 or size != want:
                        raise SystemExit('%s: warming %s gave HTTP %d, %d bytes' % (
                            name, d, code, size))
            off = self.up.log_offset()
            self.up.requests_since(off, settle=1.0, limit=10)
        self.flush()

    # -- measurements --

    def t1_warm_single(self):
        names = ['direct', 'distribution', 'nginx', 'winch']
        out = {n: [] for n in names}
        cpu = {n: [] for n in names}
        # One GET takes well under a second and is at the mercy of the scheduler: take more
        # (with 5, nginx ranged 1747-3353 MB/s in one run), and also the server's CPU time per
        # GET, which the scheduler moves much less.
        for rep in range(max(self.reps, self.a.warm_samples)):
            for n, s in self.servers(names):
                pids = s.pids()
                c0 = cpu_s(pids)
                _, [(code, size, ttfb, total)] = run_curls([s.url + self.blob_path(self.big[0])])
                ok = code == 200 and size == self.big[1]
                out[n].append(size / total / MB if ok else None)
                cpu[n].append((cpu_s(pids) - c0) * 1000 if ok else None)
        self.res['t1'] = out
        self.res['t1_cpu_ms'] = cpu
        self.row('1', 'warm GET of the %.0f MiB blob, 1 client' % (self.big[1] / MiB), 'MB/s',
                 {n: median(v) for n, v in out.items()}, ref='nginx',
                 target=('winch/nginx ≥ 0.9', lambda v, r: r['nginx'] and v >= 0.9 * r['nginx']))
        self.row('1', '… the server\'s CPU time per GET (user + system, all its processes; '
                 'clock ticks of 10 ms)', 'ms', {n: median(v) for n, v in cpu.items()},
                 ref='nginx', lower=True)

    def t2_warm_concurrent(self):
        names = ['direct', 'distribution', 'nginx', 'winch']
        self.res['t2'] = {}
        for k in self.a.concurrency:
            out = {n: [] for n in names}
            for rep in range(self.reps):
                for n, s in self.servers(names):
                    wall, res = run_curls([s.url + self.blob_path(self.big[0])] * k,
                                          max_time=self.a.window_s)
                    ok = all(c == 200 and sz > 0 for c, sz, _, _ in res)
                    if not ok:
                        self.note('%d clients on %s rep %d: %s' % (
                            k, n, rep, [(c, sz) for c, sz, _, _ in res if c != 200 or not sz]))
                    out[n].append(sum(sz for _, sz, _, _ in res) / wall / MB if ok else None)
            self.res['t2'][k] = out
            self.row('2', 'warm GET of the big blob, %d concurrent clients, aggregate over '
                     '≤ %d s' % (k, self.a.window_s),
                     'MB/s', {n: median(v) for n, v in out.items()}, ref='nginx',
                     target=('winch/nginx ≥ 0.9',
                             lambda v, r: r['nginx'] and v >= 0.9 * r['nginx']))

    def pull(self, base):
        t0 = time.monotonic()
        st, _, body = http_get_body(base + self.manifest_path(self.tag), [MANIFEST_ACCEPT])
        if st != 200 or body != self.mbytes:
            return None, 'manifest HTTP %d' % st
        man = json.loads(body)
        blobs = [(man['config']['digest'], man['config']['size'])] + \
                [(l['digest'], l['size']) for l in man['layers']]
        _, res = run_curls([base + self.blob_path(d) for d, _ in blobs], max_time=300)
        wall = time.monotonic() - t0
        for (code, size, _, _), (d, want) in zip(res, blobs):
            if code != 200 or size != want:
                return None, '%s: HTTP %d, %d of %d bytes' % (d[:19], code, size, want)
        return wall, None

    def cold_pulls(self, servers, reps, stop_after=False):
        """Cold pulls, `reps` rounds over `servers`; every proxy restarted on an empty cache
        first (and stopped after its pull with stop_after). Returns {times, errors}."""
        out = {n: [] for n, _ in servers}
        cpu = {n: [] for n, _ in servers}
        errs = []
        for rep in range(reps):
            for n, s in servers:
                if n != 'direct':
                    s.start(fresh=True)
                self.flush()
                pids = s.pids()
                c0 = cpu_s(pids)
                wall, err = self.pull(s.url)
                cpu[n].append(cpu_s(pids) - c0 if not err else None)
                if stop_after and n != 'direct':
                    s.stop()
                out[n].append(wall)
                if err:
                    errs.append('%s rep %d: %s' % (n, rep, err))
        return {'times': out, 'cpu_s': cpu, 'errors': errs}

    def tT_warm_tls(self):
        """Warm GETs over TLS: winch's TLS listener (on the warm cache of the other tests)
        against nginx with ssl serving the same file, same certificate and cipher suite."""
        cert, key = make_cert(os.path.join(self.work, 'tls'))
        ngx = nginx_tls(os.path.join(self.work, 'nginx-tls'), self.a.nginx_workers,
                        os.path.join(self.work, 'nginx', 'www'), cert, key).start()
        tport = free_port()
        wt = Winch(self.a.winch, os.path.join(self.work, 'winch-tls'), self.up, self.a.tag_ttl,
                   self.a.winch_log_level,
                   extra={'tls_listen': '127.0.0.1:%d' % tport, 'tls_cert': cert,
                          'tls_key': key})
        wt.cache = self.winch.cache  # the same warm cache; one winch at a time opens it
        self.winch.stop()
        try:
            wt.start()
            turl = 'https://127.0.0.1:%d' % tport
            path = self.blob_path(self.big[0])
            servers = [('nginx', ngx.url), ('winch', turl)]
            one = {n: [] for n, _ in servers}
            cpu = {n: [] for n, _ in servers}
            pidsof = {'nginx': ngx.pids, 'winch': wt.pids}
            for rep in range(max(self.reps, self.a.warm_samples)):
                for n, u in servers:
                    pids = pidsof[n]()
                    c0 = cpu_s(pids)
                    _, [(code, size, _, total)] = run_curls([u + path])
                    ok = code == 200 and size == self.big[1]
                    one[n].append(size / total / MB if ok else None)
                    cpu[n].append((cpu_s(pids) - c0) * 1000 if ok else None)
            eight = {n: [] for n, _ in servers}
            for rep in range(self.reps):
                for n, u in servers:
                    wall, res = run_curls([u + path] * 8, max_time=self.a.window_s)
                    ok = all(c == 200 and sz > 0 for c, sz, _, _ in res)
                    eight[n].append(sum(sz for _, sz, _, _ in res) / wall / MB if ok else None)
            self.res['tT'] = {'one': one, 'cpu_ms': cpu, 'eight': eight}
            tgt = ('winch/nginx ≥ 0.8', lambda v, r: r['nginx'] and v >= 0.8 * r['nginx'])
            self.row('T', 'warm GET of the big blob over TLS (TLS 1.3, %s; nginx: ssl, no '
                     'kernel TLS here), 1 client' % TLS_SUITE, 'MB/s',
                     {n: median(v) for n, v in one.items()}, ref='nginx', target=tgt)
            self.row('T', '… the server\'s CPU time per GET', 'ms',
                     {n: median(v) for n, v in cpu.items()}, ref='nginx', lower=True)
            self.row('T', 'warm GET of the big blob over TLS, 8 concurrent clients, aggregate '
                     'over ≤ %d s' % self.a.window_s, 'MB/s',
                     {n: median(v) for n, v in eight.items()}, ref='nginx', target=tgt)
        finally:
            wt.stop()
            ngx.stop()
            self.winch.start()

    def t3_cold_pull(self):
        names = ['direct', 'distribution', 'nginx-cache', 'winch']
        mib = self.res['image']['total_bytes'] / MiB
        r = self.res['t3'] = self.cold_pulls(self.servers(names, manifests=True), self.reps)
        for e in r['errors']:
            self.note('cold pull: ' + e)
        self.row('3', 'cold pull of the %.0f MiB image (manifest, then config + layers in '
                 'parallel), local upstream, unlimited: CPU-bound on this machine' % mib, 's',
                 {n: median(v) for n, v in r['times'].items()}, ref='direct', lower=True,
                 target=('winch/direct ≤ 1.5, ahead of dist and nginx-cache',
                         lambda v, r: r['direct'] and v <= 1.5 * r['direct'] and
                         all(r.get(k) is None or v < r[k] for k in ('distribution', 'nginx-cache'))))
        gib = self.res['image']['total_bytes'] / GiB
        sha = self.res['sha256_s_per_gib'] = sha256_s_per_gib()
        self.row('3', '… the server\'s CPU seconds per GiB pulled (user + system, all its '
                 'processes; direct: the upstream alone; target: nginx-cache + one SHA-256 pass, '
                 '%.2f s/GiB here)' % sha, 's/GiB',
                 {n: (median(v) or 0) / gib or None for n, v in r['cpu_s'].items()},
                 ref='nginx-cache', lower=True,
                 target=('≤ nginx-cache + SHA-256',
                         lambda v, r: r.get('nginx-cache') and v <= r['nginx-cache'] + sha))
        if self.winch_buf:
            b = self.res['t3B'] = self.cold_pulls([('winch', self.winch_buf)], self.reps,
                                                  stop_after=True)
            for e in b['errors']:
                self.note('cold pull, fill_splice false: ' + e)
            self.row('3B', 'cold pull as in 3, winch with "fill_splice": false (the buffered '
                     'road TLS upstreams take)', 's',
                     {'direct': median(r['times']['direct']),
                      'winch': median(b['times']['winch'])}, ref='direct', lower=True)
            self.row('3B', '… winch\'s CPU seconds per GiB pulled', 's/GiB',
                     {'winch': (median(b['cpu_s']['winch']) or 0) / gib or None}, lower=True)
        if not self.a.limit_rate:
            return
        r = self.res['t3L'] = self.cold_pulls(self.limited(manifests=True), self.a.limited_reps,
                                              stop_after=True)
        self.drop_limited_caches()
        for e in r['errors']:
            self.note('cold pull, %s: %s' % (self.limited_what(), e))
        self.row('3L', 'cold pull of the %.0f MiB image, %s (remote-registry model; direct = '
                 'through the limiter)' % (mib, self.limited_what()), 's',
                 {n: median(v) for n, v in r['times'].items()}, ref='direct', lower=True,
                 target=('winch/direct ≤ 1.15',
                         lambda v, r: r['direct'] and v <= 1.15 * r['direct']))

    def t4_cold_concurrent(self):
        names = ['distribution', 'nginx-cache', 'winch']
        self.res['t4'] = {}
        for stagger in self.a.staggers:
            out = {n: {'wall': [], 'gets': [], 'heads': [], 'ttfb_max': [], 'ttfb_med': [],
                       'rss_peak_kib': [], 'errors': []} for n in names}
            for rep in range(self.reps):
                for n, s in self.servers(names):
                    s.start(fresh=True)
                    self.flush()
                    off = self.up.log_offset()
                    pids = s.pids
                    with RssSampler(pids) as rs:
                        wall, res = concurrent_gets(s.url + self.blob_path(self.big[0]),
                                                    self.a.clients, stagger=stagger,
                                                    max_time=self.a.max_stream_s)
                    # distribution keeps fetching in the background after its clients are
                    # served: wait until the upstream is quiet, then stop the peer so that any
                    # fetch still running is logged now and not in the next peer's window.
                    self.up.requests_since(off, settle=1.5, limit=30)
                    s.stop()
                    reqs = self.up.requests_since(off, settle=0.3)
                    bp = self.blob_path(self.big[0])
                    o = out[n]
                    o['wall'].append(wall)
                    o['gets'].append(sum(1 for m, p, _ in reqs if m == 'GET' and p == bp))
                    o['heads'].append(sum(1 for m, p, _ in reqs if m == 'HEAD' and p == bp))
                    firsts = [r['first'] for r in res if r and r['first'] is not None]
                    bad = [r for r in res if not r or r['error'] or r['status'] != 200
                           or r['size'] != self.big[1]]
                    o['ttfb_max'].append(max(firsts) * 1000 if len(firsts) == len(res) else None)
                    o['ttfb_med'].append(median(firsts) * 1000 if firsts else None)
                    o['rss_peak_kib'].append(rs.peak)
                    o.setdefault('ttfb_all', []).append([round(f * 1000, 1) for f in firsts])
                    if bad:
                        b = bad[0]
                        why = 'no result' if not b else b['error'] or 'HTTP %d, %d bytes' % (
                            b['status'], b['size'])
                        o['errors'].append('rep %d: %d of %d clients failed (%s)' % (
                            rep, len(bad), len(res), why))
            self.res['t4'][stagger] = out
            for n in names:
                for e in out[n]['errors']:
                    self.note('%d clients on one cold blob (%s): %s %s' % (
                        self.a.clients, self.stagger_text(stagger), n, e))
            what = '%d clients on the same cold blob%s' % (
                self.a.clients, '' if not stagger else
                ' (%d join %.0f ms after the first)' % (self.a.clients - 1, stagger * 1000))
            med = lambda k: {n: median(out[n][k]) for n in names}
            self.row('4', what + ': wall time', 's', med('wall'), lower=True)
            gets = med('gets')
            heads = med('heads')
            self.row('4', what + ': upstream GETs (HEADs) of the blob', 'GETs',
                     gets, fmt={n: '%g (%g)' % (gets[n], heads[n]) for n in names
                                if gets[n] is not None},
                     target=('1 GET', lambda v, r: v == 1), ratios=False)
            self.row('4', what + ': slowest client\'s first body byte', 'ms', med('ttfb_max'),
                     lower=True, target=('≤ 50 ms', lambda v, r: v <= 50), ratios=False)
            self.row('4', what + ': median client\'s first body byte', 'ms', med('ttfb_med'),
                     lower=True, ratios=False)
            self.row('4', what + ': peak RSS of the proxy', 'MiB',
                     {n: (median(out[n]['rss_peak_kib']) or 0) / 1024 or None for n in names},
                     lower=True, ratios=False)

    def stagger_text(self, s):
        return 'together' if not s else 'joiners +%.0f ms' % (s * 1000)

    def cold_blobs(self, servers, reps, what, stop_after=False):
        out = {n: {'first': [], 'head': [], 'total': []} for n, _ in servers}
        for rep in range(reps):
            for n, s in servers:
                if n != 'direct':
                    s.start(fresh=True)
                self.flush()
                r = timed_get(s.url + self.blob_path(self.big[0]), max_time=self.a.max_stream_s)
                if stop_after and n != 'direct':
                    s.stop()
                ok = not r['error'] and r['status'] == 200 and r['size'] == self.big[1]
                if not ok:
                    self.note('cold TTFB%s: %s rep %d: %s HTTP %d %d bytes' % (
                        what, n, rep, r['error'], r['status'], r['size']))
                for k in ('first', 'head', 'total'):
                    out[n][k].append(r[k] * 1000 if ok and r[k] is not None else None)
        return out

    def t5_cold_ttfb(self):
        names = ['direct', 'distribution', 'nginx-cache', 'winch']
        out = self.res['t5'] = self.cold_blobs(self.servers(names), self.reps, '')
        self.row('5', 'first body byte of the cold big blob, 1 client (direct: origin), local '
                 'upstream, unlimited', 'ms',
                 {n: median(out[n]['first']) for n in out}, lower=True, ref='direct')
        self.row('5', '… and the whole cold blob, same client', 's',
                 {n: (median(out[n]['total']) or 0) / 1000 or None for n in out}, lower=True,
                 ref='direct')
        if not self.a.limit_rate:
            return
        out = self.res['t5L'] = self.cold_blobs(self.limited(), self.a.limited_reps,
                                                ' (%s)' % self.limited_what(), stop_after=True)
        self.drop_limited_caches()
        self.row('5L', 'first body byte of the cold big blob, 1 client, %s' %
                 self.limited_what(), 'ms',
                 {n: median(out[n]['first']) for n in out}, lower=True, ref='direct')
        self.row('5L', '… and the whole cold blob, same client', 's',
                 {n: (median(out[n]['total']) or 0) / 1000 or None for n in out}, lower=True,
                 ref='direct')

    def t6_manifests(self):
        names = ['direct', 'distribution', 'nginx', 'winch']
        self.res['t6'] = {}
        for kind, ref in (('tag', self.tag), ('digest', self.mdigest)):
            out = {n: [] for n in names}
            for rep in range(self.reps):
                for n, s in self.servers(names, manifests=True):
                    url = s.url + self.manifest_path(ref)
                    http_get_body(url, [MANIFEST_ACCEPT])
                    rps, bad, errs = wrk(url, [MANIFEST_ACCEPT], self.a.wrk_s)
                    if bad or errs:
                        self.note('wrk %s by %s rep %d: %d non-2xx, socket errors: %s' % (
                            n, kind, rep, bad, errs or 'none'))
                    out[n].append(rps if not bad else None)
            self.res['t6'][kind] = out
            med = {n: median(v) for n, v in out.items()}
            if kind == 'tag':
                tgt = ('winch/nginx ≥ 0.5 and winch/dist ≥ 50',
                       lambda v, r: r['nginx'] and r['distribution'] and v >= 0.5 * r['nginx']
                       and v >= 50 * r['distribution'])
            else:
                tgt = None
            self.row('6', 'manifest GET by %s%s, wrk %d connections' % (
                kind, ' (within the TTL)' if kind == 'tag' else '', 16), 'req/s', med,
                ref='nginx', target=tgt)

    def t7_rss(self):
        names = ['distribution', 'nginx', 'winch']
        out = {n: {'peak_kib': [], 'base_kib': [], 'hwm_kib': [], 'mbps': [], 'streaming': []}
               for n in names}
        k = self.a.rss_streams
        for rep in range(self.reps):
            for n, s in self.servers(names):
                s.start()
                single = n != 'nginx'
                pids = s.pids
                base = sum(rss_kib(p) for p in pids())
                with RssSampler(pids) as rs:
                    wall, res = run_curls([s.url + self.blob_path(self.big[0])] * k,
                                          max_time=self.a.rss_max_s)
                hwm = rss_kib(pids()[0], 'VmHWM') if single else None
                o = out[n]
                o['base_kib'].append(base)
                o['hwm_kib'].append(hwm)
                o['peak_kib'].append(max(rs.peak, hwm or 0))
                o['mbps'].append(sum(sz for _, sz, _, _ in res) / wall / MB)
                o['streaming'].append(sum(1 for c, sz, _, _ in res if c == 200 and sz > 0))
        self.res['t7'] = out
        self.row('7', 'peak RSS during %d concurrent streams of the big blob (%d s; nginx: '
                 'master + workers)' % (k, self.a.rss_max_s), 'MiB',
            {n: median(out[n]['peak_kib']) / 1024 for n in names if out[n]['peak_kib']},
            lower=True, ratios=False, target=('≤ 64 MiB', lambda v, r: v <= 64))
        self.row('7', '… aggregate throughput of those %d streams' % k, 'MB/s',
                 {n: median(out[n]['mbps']) for n in names}, ref='nginx')
        for n in names:
            if any(c < k for c in out[n]['streaming']):
                self.note('RSS test: %s had only %s of %d streams answering 200' % (
                    n, out[n]['streaming'], k))

    def startup_once(self, cache, env=None):
        """exec -> "listening on" line, and exec -> first 200 to GET /v2/, in ms."""
        port = free_port()
        argv = self.winch.argv(listen='127.0.0.1:%d' % port, cache=cache)
        t_listen = [None]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True, env=env)

        def reader():
            for line in p.stderr:
                if t_listen[0] is None and b'listening on' in line:
                    t_listen[0] = time.monotonic() - t0
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        t_ready = None
        try:
            deadline = t0 + 10
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    if http_status('http://127.0.0.1:%d/v2/' % port, timeout=1) == 200:
                        t_ready = time.monotonic() - t0
                        break
                except OSError:
                    pass
                time.sleep(0.001)
        finally:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            th.join(5)
        ms = lambda t: t * 1000 if t is not None else None
        return ms(t_listen[0]), ms(t_ready)

    def t8_startup(self):
        self.winch.stop()
        out = {}
        cases = [('current', self.winch.cache, None)]
        big = self.big_index()
        if big:
            cases.append(('big', big, None))
        # OpenSSL's SSL_CERT_FILE (set in many CI and container environments, and inherited by
        # winch here) makes winch parse that whole bundle when it builds an upstream's TLS
        # context at start, http upstreams included: measure without it too.
        cert_file = os.environ.get('SSL_CERT_FILE')
        if big and cert_file:
            env = {k: v for k, v in os.environ.items() if k != 'SSL_CERT_FILE'}
            cases.append(('big_no_cert_file', big, env))
        for name, cache, env in cases:
            o = out[name] = {'listen_ms': [], 'ready_ms': []}
            for rep in range(max(self.reps, 3)):
                l, r = self.startup_once(cache, env)
                o['listen_ms'].append(l)
                o['ready_ms'].append(r)
        self.res['t8'] = out
        self.row('8', 'start-up, exec to first 200 on /v2/, this run\'s cache', 'ms',
                 {'winch': median(out['current']['ready_ms'])}, lower=True, ratios=False)
        what = 'start-up, exec to first 200 on /v2/, index of {:,} entries'.format(
            self.a.index_entries)
        if 'big' in out:
            self.row('8', what + (' (SSL_CERT_FILE=%s set, as inherited)' % cert_file
                                  if cert_file else ''), 'ms',
                     {'winch': median(out['big']['ready_ms'])}, lower=True,
                     ratios=False, target=('< 200 ms', lambda v, r: v < 200))
        if 'big_no_cert_file' in out:
            self.row('8', what + ', SSL_CERT_FILE unset', 'ms',
                     {'winch': median(out['big_no_cert_file']['ready_ms'])}, lower=True,
                     ratios=False, target=('< 200 ms', lambda v, r: v < 200))
        else:
            self.row('8', what, 'ms', {}, ratios=False, target=('< 200 ms', None))
            self.note('start-up with a large index not measured: bench/mkindex is missing')
        self.winch.start()

    def big_index(self):
        """A cache directory whose index holds --index-entries synthetic entries (bench/mkindex),
        or None without the generator. Kept in bench/work while the generator's sources and the
        index code are unchanged: generating 1,000,000 entries takes ~40 s."""
        if not self.a.mkindex or not os.path.exists(self.a.mkindex):
            return None
        d = os.path.join(self.work, 'index-big')
        stamp_path = os.path.join(self.work, 'index-big.json')
        srcs = [os.path.join(ROOT, p) for p in ('bench/mkindex.c', 'cache/index.c',
                                                 'cache/internal.h')]
        h = subprocess.run(['sha256sum'] + srcs, capture_output=True, text=True).stdout
        stamp = {'n': self.a.index_entries, 'src': h.split()[::2]}
        old = None
        if os.path.exists(stamp_path):
            with open(stamp_path) as f:
                old = json.load(f)
        if old != stamp or not os.path.isdir(os.path.join(d, 'index')):
            rmtree(d)
            log('generating an index of %d entries in %s' % (self.a.index_entries, d))
            r = subprocess.run([self.a.mkindex, d, str(self.a.index_entries)],
                               capture_output=True, text=True, timeout=600)
            if r.returncode:
                self.note('mkindex failed: ' + (r.stderr or r.stdout).strip()[-300:])
                return None
            with open(stamp_path, 'w') as f:
                json.dump(stamp, f)
        return d

    def t9_cache(self):
        """Eviction, ls and df on a cache of --cache-entries content records (cachemgmt.py)."""
        if not self.a.mkindex or not os.path.exists(self.a.mkindex):
            self.note('test 9 not run: bench/mkindex is missing')
            return
        n = self.a.cache_entries
        r = self.res['t9'] = cachemgmt.run(self.a.winch, self.a.mkindex, self.work, n,
                                           max(self.reps, 1))
        e = r['evict']
        what = '{:,} content records'.format(n)
        self.row('9', '`winch df`, ' + what, 's', {'winch': r['df_s']}, lower=True, ratios=False)
        self.row('9', '`winch ls` (%d tags), %s' % (r['ls_rows'], what), 's',
                 {'winch': r['ls_s']}, lower=True, ratios=False)
        self.row('9', 'eviction at start to 90%% of max_size (%d tags, %d items, %.0f GB), %s'
                 % (e['tags'], e['items'], e['freed'] / 1e9, what), 's',
                 {'winch': e['evict_s']}, lower=True, ratios=False)
        self.row('9', '… its scan (threadpool)', 'ms', {'winch': e['scan_ms']}, lower=True,
                 ratios=False)
        self.row('9', '… longest loop slice (winch\'s own measure)', 'ms',
                 {'winch': e['longest_slice_ms']}, lower=True, ratios=False)
        self.row('9', '… longest wait of a client GET /v2/ during it (%d probes)' % e['probes'],
                 'ms', {'winch': e['longest_wait_ms']}, lower=True, ratios=False)
        self.note('test 9: mkindex took %.0f s; the check after start said: %s'
                  % (r['generate_s'], e['check_line'].strip()))

    # -- report --

    def note(self, text):
        log('NOTE ' + text)
        self.notes.append(text)

    def row(self, tid, measure, unit, vals, ref=None, lower=False, target=None, fmt=None,
            ratios=True):
        ok = None
        w = vals.get('winch')
        if target and target[1] and w is not None:
            try:
                ok = bool(target[1](w, vals))
            except TypeError:
                ok = None
        self.rows.append({'id': tid, 'measure': measure, 'unit': unit, 'vals': vals, 'ref': ref,
                          'lower': lower, 'target': target[0] if target else '', 'ok': ok,
                          'fmt': fmt or {}, 'ratios': ratios})

    COLS = ['direct', 'distribution', 'nginx', 'nginx-cache', 'winch']

    def table(self):
        def num(v, unit):
            if v is None:
                return '—'
            if unit in ('MB/s', 'req/s'):
                return '%.0f' % v
            if unit in ('s', 's/GiB'):
                return '%.2f' % v
            if unit in ('ms', 'MiB'):
                return '%.1f' % v
            return '%g' % v

        def ratio(a, b):
            return '%.2f×' % (a / b) if a is not None and b else '—'

        head = ['#', 'measure', 'unit'] + self.COLS + ['winch/dist', 'winch/ref', 'target', '']
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for r in sorted(self.rows, key=lambda r: r['id']):
            v = r['vals']
            cells = [r['id'], r['measure'], r['unit']]
            for c in self.COLS:
                cells.append(r['fmt'].get(c) or num(v.get(c), r['unit']))
            w = v.get('winch')
            if r['ratios']:
                cells.append(ratio(w, v.get('distribution')))
                cells.append(ratio(w, v.get(r['ref'])) + (' (%s)' % r['ref'] if r['ref'] and
                                                          w is not None else ''))
            else:
                cells += ['', '']
            cells.append(r['target'])
            cells.append({True: 'PASS', False: 'FAIL', None: ('n/a' if r['target'] else '')}[
                r['ok']])
            lines.append('| ' + ' | '.join(cells) + ' |')
        return '\n'.join(lines)

    def machine(self):
        def sh(cmd):
            try:
                return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                                      timeout=10).stdout.strip()
            except Exception:
                return '?'
        cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip()
        return {
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'nproc': sh('nproc'),
            'cpu': cpu,
            'memory': sh("free -h | awk '/^Mem:/ {print $2}'"),
            'free': subprocess.run(['free', '-h'], capture_output=True, text=True).stdout.rstrip(),
            'kernel': platform.release(),
            'os': sh('. /etc/os-release && echo "$PRETTY_NAME"'),
            'disk': sh('df -h %s | tail -1' % self.work),
            # bench/ itself does not count: it is not part of the binary measured.
            'winch': sh('git -C %s rev-parse --short HEAD 2>/dev/null || echo "(no commit)"'
                        % ROOT) + (' + local changes' if sh('git -C %s status --porcelain '
                                                             "-- . ':(exclude)bench' 2>/dev/null "
                                                             '| head -1' % ROOT)
                                   else ''),
            'distribution': sh('docker-registry --version'),
            'nginx': sh('nginx -v 2>&1'),
            'curl': sh("curl --version | head -1 | cut -d' ' -f1,2"),
            'wrk': sh("wrk --version 2>&1 | head -1 | cut -d' ' -f1,2"),
        }

    def write(self, elapsed):
        m = self.machine()
        self.res['machine'] = m
        self.res['notes'] = self.notes
        table = self.table()
        with open(os.path.join(self.work, 'results.json'), 'w') as f:
            json.dump(self.res, f, indent=1, default=str)
        a = self.a
        md = ['# winch benchmark results', '',
              'Written by `bench/run` on %s; earlier results are in git history. Method, peers '
              'and how to read each line: bench/README.md.' % m['date'], '',
              '## Machine', '',
              '- CPU: %s, %s cores (`nproc`); memory %s; %s; kernel %s' % (
                  m['cpu'], m['nproc'], m['memory'], m['os'], m['kernel']),
              '- disk (bench/work): `%s`' % m['disk'],
              '- winch %s (Release); %s; %s; %s; %s' % (
                  m['winch'], m['distribution'], m['nginx'], m['curl'], m['wrk']),
              '- run: %d repetitions, medians; %s; nginx worker_processes %s; winch tag_ttl_s '
              '%d; wrk %d s per point; %s; total %.0f s' % (
                  self.reps, ('big blob %.0f MiB' % (self.big[1] / MiB))
                  if getattr(self, 'big', None) else 'no upstream tests', a.nginx_workers,
                  a.tag_ttl, a.wrk_s,
                  ('tests 3L and 5L: upstream limited to %g MB/s per connection '
                   '(bench/ratelimit.py), %d repetitions' % (a.limit_rate, a.limited_reps))
                  if a.limit_rate else 'rate-limited variants skipped', elapsed),
              '- load average at the start: %s' % ' '.join(self.res['loadavg_at_start']),
              '', '```', m['free'], '```', '',
              '## Results', '',
              'Columns: **direct** = the upstream `docker-registry` itself; **distribution** = '
              '`docker-registry` in proxy mode; **nginx** = nginx serving the same blob file '
              'and the manifest as static files with sendfile (the ceiling); **nginx-cache** = '
              'nginx `proxy_cache` + `proxy_cache_lock on` in front of the upstream. '
              '`winch/ref` divides by the column named in brackets. Times: lower is better. '
              'Rows 3L and 5L repeat 3 and 5 with the upstream behind bench/ratelimit.py (each '
              'connection paced to the rate named), every proxy pointed at that limiter, and '
              '**direct** = the client through the limiter.',
              '', table, '']
        if self.notes:
            md += ['## Anomalies seen during the run', ''] + ['- ' + n for n in self.notes] + ['']
        def rounded(v):
            if isinstance(v, float):
                return round(v, 1)
            if isinstance(v, dict):
                return {str(k): rounded(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [rounded(x) for x in v]
            return v
        md += ['## Per-repetition data', '',
               'Times in ms unless named `wall` (s); throughputs in MB/s; RSS in KiB. Test 4 is '
               'keyed by the joiners\' delay in seconds.', '', '```json']
        for k in sorted(x for x in self.res if re.match(r't\d(L|_cpu_ms)?$', x)):
            md.append('"%s": %s' % (k, json.dumps(rounded(self.res[k]))))
        md += ['```', '']
        with open(a.results, 'w') as f:
            f.write('\n'.join(md))
        print(table)
        if self.notes:
            print('\nNotes:\n' + '\n'.join('- ' + n for n in self.notes))
        print('\nwritten to %s' % a.results)

    def run(self):
        t0 = time.monotonic()
        os.makedirs(self.work, exist_ok=True)
        # Anything else using the CPU skews every number: say so in the results.
        with open('/proc/loadavg') as f:
            self.res['loadavg_at_start'] = f.read().split()[:3]
        if float(self.res['loadavg_at_start'][0]) > 0.5:
            self.note('the machine was busy when the bench started (load average %s): other '
                      'work competes with the measured servers' %
                      ' '.join(self.res['loadavg_at_start']))
        # Test 9 alone needs no upstream, peers nor images.
        if any(t in self.a.only for t in '12345678T'):
            self.seed()
            self.find_image()
            self.start_peers()
        tests = {'5': self.t5_cold_ttfb, '4': self.t4_cold_concurrent, '3': self.t3_cold_pull,
                 '1': self.t1_warm_single, '2': self.t2_warm_concurrent, '6': self.t6_manifests,
                 '7': self.t7_rss, '8': self.t8_startup, '9': self.t9_cache,
                 'T': self.tT_warm_tls}
        warmed = False
        for tid in ['5', '4', '3', '1', '2', 'T', '6', '7', '8', '9']:
            if tid not in self.a.only:
                continue
            if tid in '89T' and not self.a.winch:
                continue
            if tid in '1267T' and not warmed:
                self.warm()
                warmed = True
            self.revive()
            log('test %s' % tid)
            t = time.monotonic()
            tests[tid]()
            self.revive(after=tid)
            if tid == '3':
                warmed = True
            log('test %s took %.1f s' % (tid, time.monotonic() - t))
        self.write(time.monotonic() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--winch', help='winch binary (default: none, peers only)')
    ap.add_argument('--work', default=os.path.join(BENCH, 'work'))
    ap.add_argument('--mkindex', help='the index generator (bench/mkindex.c, built by bench/run)')
    ap.add_argument('--index-entries', type=int, default=1000000)
    ap.add_argument('--cache-entries', type=int, default=1000000,
                    help='content records of test 9\'s cache (eviction, ls, df)')
    ap.add_argument('--results', default=os.path.join(BENCH, 'RESULTS.md'))
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--limit-rate', type=float, default=100,
                    help='MB/s per connection of the rate-limited upstream in tests 3L and 5L '
                         '(0: skip those)')
    ap.add_argument('--limited-reps', type=int, default=None,
                    help='repetitions of tests 3L and 5L (default: --reps)')
    ap.add_argument('--only', default='12345678T', help='tests to run, e.g. 126 (T: TLS)')
    ap.add_argument('--big-mib', type=int, default=1024, help='size of the big image')
    ap.add_argument('--reseed', action='store_true', help='rebuild and repush the images')
    ap.add_argument('--warm-samples', type=int, default=11,
                    help='GETs per server in test 1 (at least --reps)')
    ap.add_argument('--concurrency', type=lambda s: [int(x) for x in s.split(',')],
                    default=[8, 32])
    ap.add_argument('--clients', type=int, default=8, help='clients in test 4')
    ap.add_argument('--staggers', type=lambda s: [float(x) / 1000 for x in s.split(',')],
                    default=[0.0, 0.1], help='test 4: ms after which clients 2..N join')
    ap.add_argument('--rss-streams', type=int, default=64)
    ap.add_argument('--rss-max-s', type=int, default=6, help='time bound of each RSS run')
    ap.add_argument('--window-s', type=int, default=4,
                    help='time bound of each concurrent-throughput run (streams are cut)')
    ap.add_argument('--max-stream-s', type=int, default=120)
    ap.add_argument('--wrk-s', type=int, default=3)
    ap.add_argument('--tag-ttl', type=int, default=3600)
    ap.add_argument('--winch-log-level', default=None)
    ap.add_argument('--nginx-workers', default='auto')
    ap.add_argument('--peers-only', action='store_true', help='(bench/run) do not build winch')
    ap.add_argument('--quick', action='store_true',
                    help='1 repetition, short wrk runs: to check the harness, not to publish')
    a = ap.parse_args()
    if a.quick:
        a.reps, a.wrk_s = 1, 2
        if a.results == os.path.join(BENCH, 'RESULTS.md'):
            a.results = os.path.join(a.work, 'RESULTS-quick.md')
    if a.limited_reps is None:
        a.limited_reps = a.reps

    def on_signal(signum, frame):
        raise KeyboardInterrupt('signal %d' % signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    b = Bench(a)
    try:
        b.run()
    except KeyboardInterrupt as e:
        log('interrupted (%s); stopping everything' % (e or 'Ctrl-C'))
        sys.exit(130)
    finally:
        Proc.stop_all()


if __name__ == '__main__':
    main()
