"""Test harness for winch's integration tests (and the benchmarks): real docker-registry
upstreams, the real winch binary, skopeo, raw HTTP, a counting forwarder and a scripted fake
upstream. Python 3 standard library only.

Everything listens on 127.0.0.1 random ports and lives in temporary directories; everything
started here is stopped at exit (atexit), and each test also stops what it started. Nothing
ever talks to an address outside 127.0.0.0/8.

Environment (set by tests/CMakeLists.txt; defaults let a test run by hand from the source tree):
  WINCH_BIN         the winch binary (default <source>/build/winch)
  WINCH_TESTDATA    seeded images and upstream storage (default <source>/build/testdata)
  WINCH_SOURCE_DIR  the source tree
  WINCH_KEEP=1      keep temporary directories (their paths are printed)
"""

import atexit
import collections
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("WINCH_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
TOOLS_DIR = os.path.join(SOURCE_DIR, "tests", "tools")
sys.path.insert(0, TOOLS_DIR)
import push as pushtool  # noqa: E402  (tests/tools/push.py)

WINCH_BIN = os.environ.get("WINCH_BIN") or os.path.join(SOURCE_DIR, "build", "winch")
TESTDATA = os.environ.get("WINCH_TESTDATA") or os.path.join(SOURCE_DIR, "build", "testdata")
KEEP = os.environ.get("WINCH_KEEP") == "1"

LOOPBACK = "127.0.0.1"

# Every program the suite runs, and the Debian package that ships it. A missing program is a
# failure that names its package (require()), never a skipped test: tests/run installs them all.
PACKAGES = {
    "docker-registry": "docker-registry", "skopeo": "skopeo", "openssl": "openssl",
    "htpasswd": "apache2-utils", "curl": "curl", "dockerd": "docker.io", "docker": "docker.io",
    "containerd": "containerd", "ctr": "containerd", "containerd-shim-runc-v2": "containerd",
    "runc": "runc", "podman": "podman", "conmon": "conmon", "ip": "iproute2",
    "nsenter": "util-linux", "unshare": "util-linux", "umount": "mount", "chromium": "chromium",
    "systemd-analyze": "systemd", "dpkg-deb": "dpkg", "haproxy": "haproxy",
}


def require(*programs):
    """Raises, naming the packages to install, unless every program is on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pkgs = sorted(set(PACKAGES.get(p, "<the package shipping %s>" % p) for p in missing))
        raise RuntimeError("missing program%s %s: apt-get install %s (tests/run installs what "
                           "the suite needs)" % ("s" if len(missing) > 1 else "",
                                                 ", ".join(missing), " ".join(pkgs)))


def no_skips(result):
    """False (with a FAIL line per test) if any test was skipped: nothing in this suite may
    skip, since a skip reads as a pass in ctest."""
    for test, reason in result.skipped:
        sys.stderr.write("FAIL: %s was skipped (%s); nothing in this suite may skip\n" % (
            test, reason))
    return not result.skipped

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
MT_DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# What containers/image (skopeo, podman) sends: six separate Accept lines, in this order.
SKOPEO_ACCEPT = [MT_OCI_MANIFEST, MT_DOCKER_V2, MT_DOCKER_V1_SIGNED, MT_DOCKER_V1, MT_DOCKER_LIST,
                 MT_OCI_INDEX]
# What containerd sends: one comma-joined line ending in */*.
CONTAINERD_ACCEPT = ", ".join([MT_DOCKER_V2, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_OCI_INDEX, "*/*"])
ALL_MANIFEST_ACCEPT = [MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_V2, MT_DOCKER_LIST]


def log(msg):
    sys.stderr.write("[lab %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def sha256_digest(data):
    return "sha256:" + sha256_hex(data)


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


# ---- lifetime: temp dirs, processes, logs ------------------------------------------------

_cleanups = []  # objects with stop(), stopped at exit in reverse order
_tmpdirs = []
_logs = []  # (label, path) of every process log, dumped when a test fails
_lock = threading.Lock()


def _at_exit():
    for obj in reversed(_cleanups):
        try:
            obj.stop(check=False)
        except Exception as e:  # noqa: BLE001 - best effort at exit
            log("cleanup of %r failed: %s" % (obj, e))
    for d in _tmpdirs:
        if KEEP:
            log("kept %s" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_at_exit)


def tmpdir(prefix="winch-it-"):
    """A fresh temporary directory removed at exit (kept with WINCH_KEEP=1)."""
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def _register(obj):
    with _lock:
        _cleanups.append(obj)


def _unregister(obj):
    with _lock:
        if obj in _cleanups:
            _cleanups.remove(obj)


def _tail(path, limit=20000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read().decode(errors="replace")
        return ("...(%d bytes cut)...\n" % (size - limit) if size > limit else "") + data
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)


def dump_logs(out=sys.stderr):
    """Prints the tail of every process log of this run (called when a test failed)."""
    for label, path in _logs:
        out.write("\n===== %s: %s =====\n%s\n" % (label, path, _tail(path)))
    out.flush()


def _close_listener(sock):
    """Closes a listening socket so that new connections are refused at once. shutdown() first:
    on Linux it wakes a thread blocked in accept(), which otherwise keeps the socket listening."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def free_port():
    """A port that was free a moment ago (for programs that cannot bind port 0 themselves)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_for(pred, timeout, interval=0.05, what="condition"):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---- raw HTTP ------------------------------------------------------------------------------

class Response:
    def __init__(self, status, reason, headers, body, elapsed):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) in wire order
        self.body = body
        self.elapsed = elapsed

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body.decode())

    def error_codes(self):
        """Codes of an OCI error body, or None if the body is not one."""
        try:
            doc = self.json()
            return [e["code"] for e in doc["errors"]]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def __repr__(self):
        return "<HTTP %d %s %s body=%r>" % (self.status, self.reason, self.headers,
                                            self.body[:400])


# Hosts of running winch instances, and strings that must never appear in their responses
# (filesystem paths: cache dirs, registry roots, temp dirs).
_winch_hostports = set()
_forbidden = set()


def check_no_leak(hostport, resp, what=""):
    if hostport not in _winch_hostports:
        return
    blob = resp.body if isinstance(resp.body, bytes) else b""
    if len(blob) > 65536:  # blob bodies are checked by digest elsewhere
        blob = b""
    text = blob.decode(errors="replace") + "\n" + "\n".join("%s: %s" % h for h in resp.headers)
    for s in list(_forbidden):
        if s and s in text:
            raise AssertionError("%s: response leaks the filesystem path %r:\n%r" % (what, s, resp))


def request(hostport, method, path, headers=(), body=None, timeout=30, read_body=True,
            source=None):
    """One HTTP/1.1 request on a fresh connection. headers is a list of (name, value) pairs,
    sent in order and as given (so several Accept lines stay several lines). No
    Accept-Encoding is added. source: the local address to connect from (any of 127.0.0.0/8,
    to look like another client). Returns a Response."""
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout,
                                      source_address=(source, 0) if source else None)
    t0 = time.monotonic()
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read() if read_body else b""
        resp = Response(r.status, r.reason, list(r.getheaders()), data, time.monotonic() - t0)
    finally:
        conn.close()
    check_no_leak(hostport, resp, "%s %s" % (method, path))
    return resp


def get(hostport, path, headers=(), **kw):
    return request(hostport, "GET", path, headers, **kw)


def head(hostport, path, headers=(), **kw):
    return request(hostport, "HEAD", path, headers, **kw)


def accept(types):
    """[("Accept", t) ...] for a list of types (one line each)."""
    return [("Accept", t) for t in types]


class Stream:
    """A GET whose body the caller reads at its own pace (for slow clients and cut streams)."""

    def __init__(self, hostport, path, headers=(), timeout=60):
        host, port = hostport.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self.conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in headers:
            self.conn.putheader(k, v)
        self.conn.endheaders()
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = list(self.resp.getheaders())
        self.sha = hashlib.sha256()
        self.received = 0

    def header(self, name, default=None):
        return self.resp.getheader(name, default)

    def read(self, n):
        """Reads up to n bytes (fewer only at the end); raises on a cut connection."""
        data = self.resp.read(n)
        self.sha.update(data)
        self.received += len(data)
        if len(data) < n and self.resp.length:
            raise http.client.IncompleteRead(data, self.resp.length)
        return data

    def read_all(self, chunk=1 << 20, keep=False):
        """Reads to the end; returns the bytes if keep, else b"". Raises
        http.client.IncompleteRead (or an OSError) when the connection is cut short."""
        parts = []
        while True:
            data = self.resp.read(chunk)
            if not data:
                break
            self.sha.update(data)
            self.received += len(data)
            if keep:
                parts.append(data)
        # http.client's read(amt) returns b"" on a connection closed before Content-Length
        # bytes arrived (only read() without amt raises): check it here.
        if self.resp.length:
            raise http.client.IncompleteRead(b"", self.resp.length)
        return b"".join(parts)

    def digest(self):
        return "sha256:" + self.sha.hexdigest()

    def close(self):
        self.conn.close()


def fetch_blob_digest(hostport, path, headers=(), timeout=120):
    """GETs a blob and returns (status, sha256 digest of the body, length) without keeping it."""
    s = Stream(hostport, path, headers, timeout)
    try:
        s.read_all()
        return s.status, s.digest(), s.received
    finally:
        s.close()


# ---- counting TCP forwarder ----------------------------------------------------------------

RequestSeen = collections.namedtuple("RequestSeen", "method target path headers time conn")


class CountingForwarder:
    """A TCP forwarder to target (host, port) that records every HTTP request head passing
    client -> server (method, target, headers) at the moment it arrives. Used between winch and
    a real registry to count upstream requests exactly. Works for GET/HEAD traffic (request
    bodies are skipped by Content-Length)."""

    def __init__(self, target_port, target_host=LOOPBACK):
        self.target = (target_host, target_port)
        self.requests = []
        self.cond = threading.Condition()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = set()
        self.nconn = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name="forwarder-%d" % self.port)
        self.thread.start()
        _register(self)

    @property
    def hostport(self):
        return "%s:%d" % (LOOPBACK, self.port)

    def _accept_loop(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=10)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.cond:
                self.nconn += 1
                cid = self.nconn
                self.conns.add(c)
                self.conns.add(u)
            threading.Thread(target=self._pump, args=(c, u, cid, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, cid, False), daemon=True).start()

    def _pump(self, src, dst, cid, parse):
        buf = b""
        skip = 0
        try:
            while True:
                data = src.recv(262144)
                if not data:
                    break
                if parse:
                    buf, skip = self._observe(buf + data, skip, cid)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            # Close each socket once; the other pump closes nothing twice thanks to the set.
            with self.cond:
                for s in (src, dst):
                    if s in self.conns:
                        self.conns.discard(s)
                        try:
                            s.close()
                        except OSError:
                            pass

    def _observe(self, buf, skip, cid):
        while True:
            if skip:
                n = min(skip, len(buf))
                buf = buf[n:]
                skip -= n
                if skip:
                    return buf, skip
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 1 << 20:  # not HTTP; stop looking
                    return b"", 0
                return buf, 0
            head_bytes, buf = buf[:end], buf[end + 4:]
            lines = head_bytes.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            headers = []
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers.append((k.strip(), v.strip()))
            if len(parts) >= 2:
                target = parts[1]
                rq = RequestSeen(parts[0], target, target.split("?", 1)[0], headers,
                                 time.monotonic(), cid)
                with self.cond:
                    self.requests.append(rq)
                    self.cond.notify_all()
            for k, v in headers:
                if k.lower() == "content-length":
                    try:
                        skip = int(v)
                    except ValueError:
                        skip = 0

    def count(self, method=None, path=None, contains=None):
        """Requests seen so far matching method, exact path (no query) and/or a substring."""
        with self.cond:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method)
                       and (path is None or r.path == path)
                       and (contains is None or contains in r.target))

    def seen(self):
        with self.cond:
            return list(self.requests)

    def reset(self):
        with self.cond:
            self.requests = []

    def stop(self, check=True):
        self.stopped = True
        _close_listener(self.sock)
        with self.cond:
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        _unregister(self)


# ---- docker-registry (distribution 2.8.2) --------------------------------------------------

class Registry:
    """A real docker-registry on a random loopback port.

    root: storage directory (default: a fresh temp dir). readonly: distribution's maintenance
    read-only mode (tests use the seeded root read-only). count: put a CountingForwarder in
    front; then .hostport is the forwarder (what winch should use) and .direct_hostport the
    registry itself."""

    def __init__(self, root=None, readonly=False, count=True, log_level="info", name="registry",
                 auth_htpasswd=None):
        self.root = root or os.path.join(tmpdir("winch-registry-"), "root")
        self.readonly = readonly
        self.auth_htpasswd = auth_htpasswd  # htpasswd file: Basic auth on every request
        self.count_requests = count
        self.log_level = log_level
        self.name = name
        self.proc = None
        self.forwarder = None
        self.port = None
        self.workdir = tmpdir("winch-registry-run-")
        self.logpath = os.path.join(self.workdir, "registry.log")
        self.start()

    def _config(self):
        cfg = self._base_config()
        if self.auth_htpasswd:
            cfg["auth"] = {"htpasswd": {"realm": "winch-test", "path": self.auth_htpasswd}}
        return cfg

    def _base_config(self):
        return {
            "version": "0.1",
            "log": {"level": self.log_level, "formatter": "text",
                    "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": self.root},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False},
                                "readonly": {"enabled": self.readonly}},
            },
            "http": {"addr": "%s:%d" % (LOOPBACK, self.port)},
            "health": {"storagedriver": {"enabled": False}},
        }

    def start(self):
        require("docker-registry")
        os.makedirs(self.root, exist_ok=True)
        last = ""
        for _attempt in range(5):
            self.port = free_port()
            cfgpath = os.path.join(self.workdir, "config.yml")
            with open(cfgpath, "w") as f:
                json.dump(self._config(), f)  # JSON is YAML
            logf = open(self.logpath, "ab")
            self.proc = subprocess.Popen(["docker-registry", "serve", cfgpath], stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            logf.close()
            if (self.name, self.logpath) not in _logs:
                _logs.append((self.name, self.logpath))
            ok = self._wait_ready(10)
            if ok:
                break
            last = _tail(self.logpath)
            self._kill()
            if "address already in use" not in last:
                raise RuntimeError("docker-registry did not start on port %d; its log:\n%s" % (
                    self.port, last))
        else:
            raise RuntimeError("docker-registry could not bind a port; its log:\n%s" % last)
        if self.count_requests:
            self.forwarder = CountingForwarder(self.port)
        _register(self)
        return self

    def _wait_ready(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                r = request("%s:%d" % (LOOPBACK, self.port), "GET", "/v2/", timeout=2)
                if r.status == 200 or (r.status == 401 and self.auth_htpasswd):
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    @property
    def direct_hostport(self):
        return "%s:%d" % (LOOPBACK, self.port)

    @property
    def hostport(self):
        return self.forwarder.hostport if self.forwarder else self.direct_hostport

    @property
    def url(self):
        return "http://" + self.hostport

    def count(self, method=None, path=None, contains=None):
        if not self.forwarder:
            raise RuntimeError("registry started without count=True")
        return self.forwarder.count(method, path, contains)

    def seen(self):
        return self.forwarder.seen() if self.forwarder else []

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self, check=True):
        if self.forwarder:
            self.forwarder.stop()
            self.forwarder = None
        self._kill()
        _unregister(self)

    def log(self):
        return _tail(self.logpath, 1 << 24)


# ---- winch ---------------------------------------------------------------------------------

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ThreadSanitizer", "AddressSanitizer:DEADLYSIGNAL")
LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class Winch:
    """The winch daemon under test.

    upstreams: list of (NAME, URL); the first is the default. config: dict written as the
    --config JSON file (e.g. {"tag_ttl_s": 0}). cache_dir: reused across restart(). env: extra
    environment variables for the process (e.g. the test clock), changeable before restart()."""

    def __init__(self, upstreams, config=None, cache_dir=None, log_level="debug", extra_args=(),
                 start=True, name="winch", env=None):
        if not os.path.exists(WINCH_BIN):
            raise RuntimeError("winch binary not found at %s (set WINCH_BIN)" % WINCH_BIN)
        self.upstreams = list(upstreams)
        self.config = dict(config or {})
        self.workdir = tmpdir("winch-run-")
        self.cache_dir = cache_dir or os.path.join(self.workdir, "cache")
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.name = name
        self.env = dict(env or {})
        self.proc = None
        self.port = None
        self.generation = 0
        self.logpath = None
        _forbidden.add(self.cache_dir)
        _forbidden.add(self.workdir)
        _forbidden.add(os.path.realpath(self.cache_dir))
        if start:
            self.start()

    def argv(self):
        args = [WINCH_BIN, "serve", "--listen", "%s:0" % LOOPBACK, "--cache-dir", self.cache_dir,
                "--log-level", self.log_level]
        for name, url in self.upstreams:
            args += ["--upstream", "%s=%s" % (name, url)]
        if self.config:
            cfgpath = os.path.join(self.workdir, "config.json")
            with open(cfgpath, "w") as f:
                json.dump(self.config, f, indent=1)
            args += ["--config", cfgpath]
        return args + self.extra_args

    def start(self, timeout=10):
        self.generation += 1
        self.logpath = os.path.join(self.workdir, "winch.%d.log" % self.generation)
        _logs.append(("%s #%d" % (self.name, self.generation), self.logpath))
        argv = self.argv()
        logf = open(self.logpath, "wb")
        env = dict(os.environ)
        env.update(self.env)
        self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        logf.close()
        _register(self)
        end = time.monotonic() + timeout
        while True:
            with open(self.logpath, "rb") as f:
                m = LISTEN_RE.search(f.read().decode(errors="replace"))
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError("winch exited with status %s before listening.\nargv: %s\n"
                                   "output:\n%s" % (self.proc.returncode, " ".join(argv),
                                                    _tail(self.logpath)))
            if time.monotonic() > end:
                out = _tail(self.logpath)
                self.kill()
                raise RuntimeError("winch did not log 'listening on 127.0.0.1:PORT' within "
                                   "%ds.\nargv: %s\noutput:\n%s" % (timeout, " ".join(argv), out))
            time.sleep(0.02)
        _winch_hostports.add(self.hostport)
        return self

    @property
    def hostport(self):
        return "%s:%d" % (LOOPBACK, self.port)

    @property
    def url(self):
        return "http://" + self.hostport

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        return _tail(self.logpath, 1 << 24) if self.logpath else ""

    def sanitizer_report(self):
        text = self.log()
        for m in SANITIZER_MARKERS:
            if m in text:
                return text
        return None

    def stop(self, check=True, timeout=15):
        """SIGTERM and wait. With check, a non-zero exit (a leak report under ASan included),
        a hang, or any sanitizer report is an error."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        _winch_hostports.discard(self.hostport)
        _unregister(self)
        problem = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problem = "winch did not exit within %ds of SIGTERM" % timeout
        else:
            problem = "winch had already exited with status %s" % proc.returncode
        if problem is None and proc.returncode != 0:
            problem = "winch exited with status %s after SIGTERM" % proc.returncode
        if problem is None and self.sanitizer_report():
            problem = "sanitizer report in winch's output"
        if check and problem:
            raise AssertionError("%s; output:\n%s" % (problem, _tail(self.logpath)))

    def kill(self):
        """kill -9, no questions asked (crash tests)."""
        if self.proc is None:
            return
        _winch_hostports.discard(self.hostport)
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        _unregister(self)

    def restart(self, timeout=10):
        """Starts again on the same cache dir (after stop() or kill())."""
        if self.proc is not None:
            self.stop()
        return self.start(timeout)

    # Cache layout helpers.
    def blob_path(self, digest):
        alg, hexd = digest.split(":", 1)
        return os.path.join(self.cache_dir, "blobs", alg, hexd[:2], hexd)

    def tmp_files(self):
        d = os.path.join(self.cache_dir, "tmp")
        out = []
        for root, _dirs, files in os.walk(d):
            out += [os.path.join(root, f) for f in files]
        return out

    def blob_files(self):
        d = os.path.join(self.cache_dir, "blobs")
        out = []
        for root, _dirs, files in os.walk(d):
            out += [os.path.join(root, f) for f in files]
        return out

    def verify_store(self):
        """Every file under blobs/<alg>/<2hex>/<hex> hashes to its name. Returns the list of
        problems (empty when the store is sound)."""
        bad = []
        for path in self.blob_files():
            rel = os.path.relpath(path, os.path.join(self.cache_dir, "blobs"))
            parts = rel.split(os.sep)
            if len(parts) != 3 or parts[0] not in ("sha256", "sha512") or \
                    parts[1] != parts[2][:2]:
                bad.append("unexpected file blobs/%s" % rel)
                continue
            h = hashlib.new(parts[0])
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                # Retention may remove a blob between the walk and the open: a removed blob
                # is allowed, only a present one with the wrong bytes is a problem.
                continue
            with f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            if h.hexdigest() != parts[2]:
                bad.append("blobs/%s hashes to %s:%s" % (rel, parts[0], h.hexdigest()))
        return bad


# ---- skopeo ----------------------------------------------------------------------------------

_skopeo_work = None


def skopeo(args, timeout=600):
    """Runs skopeo hermetically (own policy, empty registries.conf). Raises on failure."""
    global _skopeo_work
    require("skopeo")
    if _skopeo_work is None:
        _skopeo_work = tmpdir("winch-skopeo-")
    return pushtool.run_skopeo(args, _skopeo_work, timeout)


def skopeo_copy(src, dst, extra=(), timeout=600):
    """skopeo copy with TLS verification off on both sides (all loopback HTTP)."""
    args = ["copy", "--quiet"]
    if src.startswith("docker://"):
        args.append("--src-tls-verify=false")
    if dst.startswith("docker://"):
        args.append("--dest-tls-verify=false")
    return skopeo(args + list(extra) + [src, dst], timeout)


def dir_files(path):
    """{relative name: sha256 digest} of every file under path."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = file_digest(full)
    return out


def compare_dirs(a, b):
    """Differences between two directory trees, as readable lines (empty when identical)."""
    fa, fb = dir_files(a), dir_files(b)
    diffs = []
    for k in sorted(set(fa) | set(fb)):
        if k not in fa:
            diffs.append("only in %s: %s" % (b, k))
        elif k not in fb:
            diffs.append("only in %s: %s" % (a, k))
        elif fa[k] != fb[k]:
            diffs.append("differs: %s (%s vs %s)" % (k, fa[k], fb[k]))
    return diffs


# ---- seeded upstream -------------------------------------------------------------------------

def seeded():
    """The seeded image set: pushed.json (see tests/tools/push.py) as a dict, plus
    ["images_dir"] and ["registry_root"]. Seeds first when needed (like the ctest fixture)."""
    import seed  # noqa: E402 - tests/integration/seed.py
    seed.ensure(TESTDATA)
    with open(os.path.join(TESTDATA, "images", "pushed.json")) as f:
        data = json.load(f)
    data["images_dir"] = os.path.join(TESTDATA, "images")
    data["registry_root"] = os.path.join(TESTDATA, "registry")
    return data


def seeded_registry(count=True, name="upstream"):
    """A read-only docker-registry on the seeded storage (seeding first when needed)."""
    seeded()
    root = os.path.join(TESTDATA, "registry")
    if not os.path.isdir(root):
        raise RuntimeError("seeded registry storage missing at %s" % root)
    _forbidden.add(os.path.realpath(TESTDATA))
    _forbidden.add(TESTDATA)
    return Registry(root=root, readonly=True, count=count, name=name)


# ---- fake upstream ---------------------------------------------------------------------------

class Fault:
    """What the fake upstream does instead of (or while) answering a request.

    kind:
      "status": answer status with headers and body (e.g. 429 + Retry-After, 500).
      "hang":   read the request, never answer (until release() or stop).
      "cut":    send the headers (full Content-Length) and the body up to blob offset `after`,
                then close. The offset is absolute: a Range request starting at or past it gets
                the headers and nothing, so resuming never gets past the cut.
      "stall":  send the headers and the body up to blob offset `after`, wait until release(),
                then go on (then="continue") or close (then="close").
      "wrong":  send same-length bytes that do not hash to the digest.
      "trailing": after `seconds`, send the answer, then `body` on the same connection (bytes
                no request asked for, e.g. a forged second response).
      "delay":  wait `seconds` before answering normally.
      "throttle": send the body at `rate` bytes/s.
      "chunked": send the body with Transfer-Encoding: chunked (no Content-Length), followed
                by `body` (extra bytes past the real ones, if any).
    times: apply to this many matching requests, then behave normally (None = always)."""

    def __init__(self, kind, status=None, headers=(), body=b"", after=0, then="continue",
                 seconds=0.0, rate=0, times=None, methods=("GET", "HEAD")):
        self.kind = kind
        self.status = status
        self.headers = list(headers)
        self.body = body
        self.after = after
        self.then = then
        self.seconds = seconds
        self.rate = rate
        self.times = times
        self.methods = methods
        self.event = threading.Event()
        self.reached = threading.Event()  # set when a stall/hang point is reached
        self.hits = 0

    def release(self):
        self.event.set()


class FakeUpstream:
    """A scripted registry (HTTP/1.1, threaded) for fault tests.

    Serves /v2/, manifests (by tag and digest; GET and HEAD), blobs (GET, HEAD, Range) and
    tags/list from what add_manifest()/add_blob() put in, and applies Faults by path."""

    def __init__(self):
        self.blobs = {}      # digest -> bytes
        self.manifests = {}  # (repo, ref) -> (media_type, bytes)
        self.faults = {}     # path -> Fault
        self.fault_all = None
        self.requests = []   # RequestSeen
        self.cond = threading.Condition()
        self.stopped = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = set()
        self.nconn = 0
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name="fake-%d" % self.port)
        self.thread.start()
        _register(self)

    @property
    def hostport(self):
        return "%s:%d" % (LOOPBACK, self.port)

    @property
    def url(self):
        return "http://" + self.hostport

    # content
    def add_blob(self, data):
        d = sha256_digest(data)
        self.blobs[d] = data
        return d

    def add_manifest(self, repo, tag, data, media_type=MT_OCI_MANIFEST):
        if isinstance(data, (dict, list)):
            data = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        d = sha256_digest(data)
        self.manifests[(repo, d)] = (media_type, data)
        if tag:
            self.manifests[(repo, tag)] = (media_type, data)
        return d, data

    def add_image(self, repo, tag, layers, config=None):
        """An OCI image of the given layer bytes. Returns (manifest digest, manifest bytes,
        config digest, [layer digests])."""
        config = config or json.dumps({"architecture": "amd64", "os": "linux",
                                       "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        cd = self.add_blob(config)
        lds = [self.add_blob(x) for x in layers]
        man = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                          "digest": cd, "size": len(config)},
               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                           "digest": d, "size": len(x)} for d, x in zip(lds, layers)]}
        md, mb = self.add_manifest(repo, tag, man)
        return md, mb, cd, lds

    # faults
    def set_fault(self, path, fault):
        with self.cond:
            self.faults[path] = fault
        return fault

    def clear_faults(self):
        with self.cond:
            for f in list(self.faults.values()) + ([self.fault_all] if self.fault_all else []):
                f.release()
            self.faults = {}
            self.fault_all = None

    # counting
    def count(self, method=None, path=None, contains=None):
        with self.cond:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method)
                       and (path is None or r.path == path)
                       and (contains is None or contains in r.target))

    def seen(self):
        with self.cond:
            return list(self.requests)

    def stop(self, check=True):
        self.stopped.set()
        with self.cond:
            for f in list(self.faults.values()) + ([self.fault_all] if self.fault_all else []):
                f.release()
            conns = list(self.conns)
        _close_listener(self.sock)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        _unregister(self)

    # server
    def _accept_loop(self):
        while not self.stopped.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self.nconn += 1
                cid = self.nconn
                self.conns.add(c)
            threading.Thread(target=self._serve_conn, args=(c, cid), daemon=True).start()

    def _serve_conn(self, c, cid):
        buf = b""
        try:
            while not self.stopped.is_set():
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                    if len(buf) > 1 << 20:
                        return
                end = buf.index(b"\r\n\r\n")
                head_bytes, buf = buf[:end], buf[end + 4:]
                lines = head_bytes.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    return
                headers = []
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers.append((k.strip(), v.strip()))
                method, target = parts[0], parts[1]
                path = target.split("?", 1)[0]
                rq = RequestSeen(method, target, path, headers, time.monotonic(), cid)
                with self.cond:
                    self.requests.append(rq)
                    self.cond.notify_all()
                if not self._answer(c, rq):
                    return
        except OSError:
            pass
        finally:
            with self.cond:
                self.conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def _fault_for(self, rq):
        with self.cond:
            f = self.faults.get(rq.path) or self.fault_all
            if f is None or rq.method not in f.methods:
                return None
            if f.times is not None and f.hits >= f.times:
                return None
            f.hits += 1
            return f

    def _send_head(self, c, status, headers, reason=None):
        reasons = {200: "OK", 206: "Partial Content", 304: "Not Modified", 404: "Not Found",
                   416: "Range Not Satisfiable", 429: "Too Many Requests",
                   500: "Internal Server Error", 503: "Service Unavailable"}
        out = ["HTTP/1.1 %d %s" % (status, reason or reasons.get(status, "Status"))]
        out += ["%s: %s" % (k, v) for k, v in headers]
        c.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))

    def _error(self, code, message, status):
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        return status, [("Content-Type", "application/json; charset=utf-8"),
                        ("Docker-Distribution-API-Version", "registry/2.0")], body

    def _resolve(self, rq):
        """(status, headers, body, offset of body in the blob) for a normal answer."""
        status, hs, body = self._resolve3(rq)
        start = 0
        for k, v in hs:
            if k == "Content-Range" and status == 206:
                start = int(v.split(" ", 1)[1].split("-", 1)[0])
        return status, hs, body, start

    def _resolve3(self, rq):
        path = rq.path
        hdr = dict((k.lower(), v) for k, v in rq.headers)
        base = [("Docker-Distribution-API-Version", "registry/2.0")]
        if path in ("/v2/", "/v2"):
            return 200, base + [("Content-Type", "application/json; charset=utf-8")], b"{}"
        m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$", path)
        if m:
            repo, kind, ref = m.groups()
            if kind == "manifests":
                got = self.manifests.get((repo, ref))
                if not got:
                    return self._error("MANIFEST_UNKNOWN", "manifest unknown", 404)
                mt, data = got
                d = sha256_digest(data)
                return 200, base + [("Content-Type", mt), ("Docker-Content-Digest", d),
                                    ("Etag", '"%s"' % d)], data
            data = self.blobs.get(ref)
            if data is None:
                return self._error("BLOB_UNKNOWN", "blob unknown to registry", 404)
            hs = base + [("Content-Type", "application/octet-stream"),
                         ("Docker-Content-Digest", ref), ("Accept-Ranges", "bytes"),
                         ("Etag", '"%s"' % ref)]
            rng = hdr.get("range")
            if rng:
                m2 = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip())
                size = len(data)
                if m2 and (m2.group(1) or m2.group(2)):
                    if m2.group(1):
                        a = int(m2.group(1))
                        b = int(m2.group(2)) if m2.group(2) else size - 1
                    else:
                        a, b = max(0, size - int(m2.group(2))), size - 1
                    b = min(b, size - 1)
                    if a >= size or a > b:
                        return 416, base + [("Content-Range", "bytes */%d" % size)], b""
                    return 206, hs + [("Content-Range", "bytes %d-%d/%d" % (a, b, size))], \
                        data[a:b + 1]
            return 200, hs, data
        m = re.match(r"^/v2/(.+)/tags/list$", path)
        if m:
            repo = m.group(1)
            tags = sorted(ref for (r, ref) in self.manifests if r == repo and ":" not in ref)
            if not tags:
                return self._error("NAME_UNKNOWN", "repository name not known to registry", 404)
            return 200, base + [("Content-Type", "application/json; charset=utf-8")], \
                json.dumps({"name": repo, "tags": tags}).encode()
        return 404, [("Content-Type", "text/plain; charset=utf-8")], b"404 page not found\n"

    def _answer(self, c, rq):
        """Answers one request; returns False when the connection must close."""
        f = self._fault_for(rq)
        if f is not None and f.kind == "hang":
            f.reached.set()
            f.event.wait()
            return False
        if f is not None and f.kind == "delay":
            f.reached.set()
            self.stopped.wait(f.seconds)
        if f is not None and f.kind == "status":
            body = f.body if isinstance(f.body, bytes) else f.body.encode()
            hs = list(f.headers) + [("Content-Length", str(len(body)))]
            self._send_head(c, f.status, hs)
            if rq.method != "HEAD":
                c.sendall(body)
            return True
        status, hs, body, start = self._resolve(rq)
        if f is not None and f.kind == "chunked":
            # Transfer-Encoding: chunked, no Content-Length; f.body (if any) follows the real
            # bytes, so the stream is longer than the blob.
            extra = f.body if isinstance(f.body, bytes) else f.body.encode()
            self._send_head(c, status, hs + [("Transfer-Encoding", "chunked")])
            if rq.method == "HEAD":
                return True
            data = body + extra
            for i in range(0, len(data), 65536):
                piece = data[i:i + 65536]
                c.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            c.sendall(b"0\r\n\r\n")
            return True
        if f is not None and f.kind == "wrong" and body:
            mid = len(body) // 2
            body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:]
        hs = hs + [("Content-Length", str(len(body)))]
        self._send_head(c, status, hs)
        if rq.method == "HEAD":
            return True
        if f is None or f.kind in ("wrong", "delay"):
            c.sendall(body)
            return True
        if f.kind == "trailing":
            time.sleep(f.seconds)
            c.sendall(body + (f.body if isinstance(f.body, bytes) else f.body.encode()))
            return True
        upto = max(0, f.after - start)
        if f.kind == "cut":
            c.sendall(body[:upto])
            time.sleep(0.1)
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False
        if f.kind == "stall":
            c.sendall(body[:upto])
            f.reached.set()
            f.event.wait()
            if f.then == "close" or self.stopped.is_set():
                return False
            c.sendall(body[upto:])
            return True
        if f.kind == "throttle":
            step = max(1, f.rate // 20)
            for i in range(0, len(body), step):
                if self.stopped.is_set():
                    return False
                c.sendall(body[i:i + step])
                time.sleep(step / f.rate)
            return True
        c.sendall(body)
        return True


# ---- unittest glue ---------------------------------------------------------------------------

class TestCase(unittest.TestCase):
    """unittest.TestCase with helpers for OCI error checks."""

    maxDiff = 4000

    def assertStatus(self, resp, status, what=""):
        if resp.status != status:
            self.fail("%s: expected HTTP %d, got %r" % (what, status, resp))

    def assertOciError(self, resp, status, code, what=""):
        """resp has the status and an OCI error JSON body whose first code is code."""
        self.assertStatus(resp, status, what)
        codes = resp.error_codes()
        if not codes:
            self.fail("%s: expected an OCI error body with %s, got %r" % (what, code, resp))
        if codes[0] != code:
            self.fail("%s: expected error code %s, got %s in %r" % (what, code, codes, resp))
        ctype = resp.header("Content-Type", "")
        if not ctype.startswith("application/json"):
            self.fail("%s: error body with Content-Type %r" % (what, ctype))


def main():
    """Runs the calling module's tests; dumps every process log when one fails; exits 0/1."""
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    ok = prog.result.wasSuccessful() and prog.result.testsRun > 0
    ok = no_skips(prog.result) and ok
    # Sanitizer reports from winch processes that were killed rather than stopped (stop()
    # checks its own) still fail the run.
    for label, path in _logs:
        if label.startswith("winch"):
            text = _tail(path, 1 << 24)
            if any(m in text for m in SANITIZER_MARKERS):
                sys.stderr.write("\nFAIL: sanitizer report in %s (%s)\n" % (label, path))
                ok = False
    if not ok:
        dump_logs()
    for obj in reversed(list(_cleanups)):
        try:
            obj.stop(check=False)
        except Exception:  # noqa: BLE001
            pass
    sys.exit(0 if ok else 1)
