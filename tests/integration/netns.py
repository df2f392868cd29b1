#!/usr/bin/python3
"""Loopback-only network namespaces for the real-client tests (dockerd, containerd + ctr,
podman), a forwarder that exposes a root-namespace TCP service (winch) inside one, and helpers
that run each daemon hermetically (own config, state, sockets) and stop it again.

Why: dockerd, containerd and podman fall back to the real registry when a mirror answers an
error, and that fallback would query DNS off the machine. Inside a namespace that has only
`lo`, there is no route anywhere else; primary registry locations also point at a dead local
port, so even a fallback goes nowhere (see docs/architecture.md, "Tests").

  ns = netns.Netns()                        # ip netns add winch-it-<pid>-<random>; lo up
  fwd = netns.Forward(ns, winch.hostport)   # 127.0.0.1:<same port> inside ns -> winch
  d = netns.Dockerd(ns, mirror=fwd.hostport)
  d.docker("pull", "busybox:1.36")
  with netns.Flow("dockerd", "pull busybox:1.36", "winch", upstream):  # counts upstream
      ...                                                              # requests, prints them

Daemons start with `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which remounts /sys
and hides the cgroup mounts) plus `unshare --mount --propagation private` and a fresh tmpfs
on /run, so every mount a daemon makes and every file it puts in a hard-coded /run path
(/run/containerd/s, /run/docker/plugins, ...) disappears with it; ctr joins containerd's
mount namespace. Nothing is written outside the temp dirs. Everything is stopped at exit, even
after a failure: the daemons (SIGTERM, then SIGKILL), any process still in the namespace
(found by its net namespace inode, so only processes we started), mounts left under our temp
dirs, the namespace itself; lab.py then removes the temp dirs. If the test process is
SIGKILLed, the daemons and forwarders get a parent-death signal, and the next Netns() deletes
namespaces whose owner PID (in the name) is gone.

This file is also the forwarder program: `python3 netns.py forward --listen-tcp|--listen-unix
... --connect-tcp|--connect-unix ...` (one process per side; unix sockets are not
namespace-scoped, so netns TCP -> unix socket -> root TCP crosses the boundary).
"""

import argparse
import atexit
import collections
import ctypes
import json
import os
import re
import secrets
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THIS_FILE = os.path.abspath(__file__)


# ---- the forwarder program (runs as its own process; standard library only) --------------

def _parse_hostport(s):
    host, port = s.rsplit(":", 1)
    if not host.startswith("127."):
        raise SystemExit("forward: refusing a non-loopback address %r" % s)
    return host, int(port)


def _pump(src, dst, done):
    try:
        while True:
            data = src.recv(262144)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    # Pass the half-close on, so a client that shuts down its write side is seen as such.
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    with done[0]:
        done[1] += 1
        last = done[1] == 2
    if last:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


def _serve_forward(args):
    if args.listen_tcp:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(_parse_hostport(args.listen_tcp))
    else:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(args.listen_unix):
            os.unlink(args.listen_unix)
        lsock.bind(args.listen_unix)
    lsock.listen(256)
    if args.connect_tcp:
        target = _parse_hostport(args.connect_tcp)

        def connect():
            return socket.create_connection(target, timeout=10)
    else:
        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(args.connect_unix)
            return s

    parent = args.parent_pid

    def watchdog():
        # Exit when the test process is gone (even if it was SIGKILLed and never cleaned up).
        while True:
            time.sleep(1)
            if parent and not _pid_alive(parent):
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        try:
            c, _ = lsock.accept()
        except OSError as e:
            sys.stderr.write("forward: accept: %s\n" % e)
            time.sleep(0.05)
            continue
        try:
            u = connect()
            u.settimeout(None)
        except OSError as e:
            sys.stderr.write("forward: connect: %s\n" % e)
            c.close()
            continue
        done = [threading.Lock(), 0]
        threading.Thread(target=_pump, args=(c, u, done), daemon=True).start()
        threading.Thread(target=_pump, args=(u, c, done), daemon=True).start()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def forward_main(argv):
    p = argparse.ArgumentParser(prog="netns.py forward")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--listen-tcp")
    g.add_argument("--listen-unix")
    g2 = p.add_mutually_exclusive_group(required=True)
    g2.add_argument("--connect-tcp")
    g2.add_argument("--connect-unix")
    p.add_argument("--parent-pid", type=int, default=0)
    _serve_forward(p.parse_args(argv))


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "forward":
    forward_main(sys.argv[2:])
    sys.exit(0)


# ---- everything below is the library side (imports lab.py) -------------------------------

sys.path.insert(0, HERE)
import lab  # noqa: E402

_objects = []  # things with stop(), stopped at exit in reverse order (before lab's cleanup)
_obj_lock = threading.Lock()
_tmp_roots = []  # our temp dirs: mounts left under them are unmounted at exit


def _register(obj):
    with _obj_lock:
        _objects.append(obj)


def _unregister(obj):
    with _obj_lock:
        if obj in _objects:
            _objects.remove(obj)


def _add_log(label, path):
    # lab.main() dumps every log in lab._logs when a test fails; ours belong there too.
    logs = getattr(lab, "_logs", None)
    if logs is not None and (label, path) not in logs:
        logs.append((label, path))


def tmpdir(prefix):
    """A temp dir (removed by lab at exit) whose leftover mounts we unmount first."""
    d = lab.tmpdir(prefix)
    _tmp_roots.append(os.path.realpath(d))
    return d


def _mountpoints_under(roots):
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                for r in roots:
                    if mp == r or mp.startswith(r + "/"):
                        out.append(mp)
    except OSError:
        pass
    return out


def unmount_leftovers(roots=None):
    """Lazily unmounts every mount under our temp dirs (deepest first). Returns the list."""
    mps = _mountpoints_under(roots or _tmp_roots)
    for mp in sorted(set(mps), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    return mps


_created_dirs = []  # directories ensure_dir() created on the host, removed at exit if empty


def ensure_dir(path):
    """Makes sure path exists (a tmpfs is mounted on it in a private mount namespace); the
    directories this creates are removed again at exit when still empty."""
    missing = []
    p = path
    while not os.path.exists(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        os.mkdir(d)
        _created_dirs.append(d)
    return path


def _at_exit():
    for obj in reversed(list(_objects)):
        try:
            obj.stop()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            lab.log("netns cleanup of %r failed: %s" % (obj, e))
    left = unmount_leftovers()
    if left:
        lab.log("unmounted leftovers: %s" % left)
    for d in reversed(_created_dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass
    del _created_dirs[:]


# Registered after lab's own atexit (lab is imported above), so it runs before it: daemons and
# namespaces go first, then lab stops winch/registries and removes the temp dirs.
atexit.register(_at_exit)


def _set_pdeathsig(sig):
    """preexec_fn: the child gets sig when the test process dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def fn():
        libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    return fn


def require(*programs):
    """Raises (the test then fails loudly, never skips) when a program or root is missing."""
    if os.geteuid() != 0:
        raise RuntimeError("the client tests need root (network namespaces, daemons)")
    lab.require(*programs)


def _run(argv, timeout=60, env=None, check=True, what=None):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, env=env)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    if check and r.returncode != 0:
        raise RuntimeError("%s failed with status %d\nstdout:\n%s\nstderr:\n%s" % (
            what or " ".join(argv), r.returncode, out[-8000:], err[-8000:]))
    return subprocess.CompletedProcess(argv, r.returncode, out, err)


# ---- the namespace -----------------------------------------------------------------------

NS_PREFIX = "winch-it-"


def sweep_stale():
    """Deletes namespaces named winch-it-<pid>-* whose owner process is gone (a test killed
    with SIGKILL): kills what still runs in them (our daemons get SIGTERM when the test
    process dies, so normally nothing), then `ip netns delete`. Returns the names deleted."""
    gone = []
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return gone
    for name in names:
        m = re.match(r"^%s(\d+)-[0-9a-f]+$" % re.escape(NS_PREFIX), name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        try:
            inode = os.stat("/run/netns/" + name).st_ino
        except OSError:
            continue
        stale = Netns.__new__(Netns)
        stale.name, stale.path, stale.inode = name, "/run/netns/" + name, inode
        stale.kill_all(grace=2.0)
        _run(["ip", "netns", "delete", name], check=False)
        gone.append(name)
    if gone:
        lab.log("deleted stale namespaces of dead test processes: %s" % gone)
    return gone


class Netns:
    """A fresh network namespace with only `lo` (up). stop() kills every process still in it
    and deletes it."""

    def __init__(self):
        require("ip", "nsenter", "unshare")
        sweep_stale()
        # The owner's PID is in the name, so a later run can tell a namespace left behind by
        # a test process that was SIGKILLed (no atexit) from one still in use.
        self.name = "%s%d-%s" % (NS_PREFIX, os.getpid(), secrets.token_hex(3))
        self.path = "/run/netns/" + self.name
        self.inode = None
        _run(["ip", "netns", "add", self.name])
        _register(self)
        try:
            self.inode = os.stat(self.path).st_ino
            _run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"])
            self.check_isolated()
        except Exception:
            self.stop()
            raise
        lab.log("netns %s (net:[%d]) up" % (self.name, self.inode))

    def check_isolated(self):
        """Asserts the namespace has no interface but lo and no route off 127.0.0.0/8."""
        links = _run(["ip", "-n", self.name, "-o", "link", "show"]).stdout
        names = [ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines() if ":" in ln]
        if names != ["lo"]:
            raise RuntimeError("netns %s has interfaces %s (want only lo)" % (self.name, names))
        routes = _run(["ip", "-n", self.name, "-4", "route", "show", "table", "all"]).stdout
        for ln in routes.splitlines():
            if "dev lo" not in ln:
                raise RuntimeError("netns %s has a route off lo: %s" % (self.name, ln))

    def argv(self, cmd, mount_ns=False, hide=(), mount_of=None):
        """cmd run inside the namespace. mount_ns: also in a private mount namespace with a
        fresh tmpfs on /run and on every directory in hide, so that whatever the program puts
        there (containerd's /run/containerd/{s,runc,fifo}, dockerd's /run/docker/plugins,
        podman's /run/libpod and /var/lib/containers/cache) vanishes with it. mount_of=PID:
        in that process's mount namespace instead (ctr must share containerd's
        /run/containerd/fifo), and under its root directory (entering a mount namespace
        resets the root to the namespace's, which differs from ours when the suite runs
        in a chroot)."""
        pre = ["nsenter", "--net=" + self.path]
        if mount_of is not None:
            pre += ["--mount=/proc/%d/ns/mnt" % mount_of, "--root=/proc/%d/root" % mount_of]
        elif mount_ns:
            dirs = ["/run"] + [ensure_dir(d) for d in hide]
            script = " && ".join("mount -t tmpfs -o mode=0755,size=256m winch-it %s" %
                                 shlex.quote(d) for d in dirs) + ' && exec "$@"'
            pre += ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        return pre + list(cmd)

    def run(self, cmd, timeout=120, env=None, check=True, mount_ns=False, hide=(),
            mount_of=None):
        """Runs cmd inside the namespace; returns CompletedProcess (text); raises on failure
        with the output when check."""
        return _run(self.argv(cmd, mount_ns, hide, mount_of), timeout=timeout, env=env,
                    check=check, what="%s (in netns %s)" % (" ".join(cmd), self.name))

    def popen(self, cmd, logpath, env=None, mount_ns=False, stdout=None,
              deathsig=signal.SIGTERM):
        logf = open(logpath, "ab")
        try:
            return subprocess.Popen(self.argv(cmd, mount_ns), stdin=subprocess.DEVNULL,
                                    stdout=stdout if stdout is not None else logf, stderr=logf,
                                    env=env, preexec_fn=_set_pdeathsig(deathsig))
        finally:
            logf.close()

    def pids(self):
        """PIDs of every process whose network namespace is this one."""
        if self.inode is None:
            return []
        want = "net:[%d]" % self.inode
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.readlink("/proc/%s/ns/net" % d) == want:
                    out.append(int(d))
            except OSError:
                pass
        return out

    def kill_all(self, grace=5.0):
        """SIGTERM every process left in the namespace, then SIGKILL after grace seconds."""
        pids = self.pids()
        if not pids:
            return []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        end = time.monotonic() + grace
        while time.monotonic() < end and self.pids():
            time.sleep(0.1)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return pids

    def stop(self, check=False):
        left = self.kill_all()
        if left:
            lab.log("netns %s: killed leftover processes %s" % (self.name, left))
        if os.path.exists(self.path):
            _run(["ip", "netns", "delete", self.name], check=False)
        _unregister(self)

    def __repr__(self):
        return "<Netns %s>" % self.name


# ---- forwarder: netns 127.0.0.1:PORT -> unix socket -> root-namespace TCP ---------------

class Forward:
    """Exposes target (a root-namespace 127.0.0.1:PORT, e.g. winch) inside netns on
    127.0.0.1:port (default: the same port number, so the address reads the same on both
    sides). Two processes: the root side listens on a unix socket and connects to target;
    the netns side (started with nsenter) listens on TCP and connects to the unix socket."""

    def __init__(self, netns, target, port=None, name="forward"):
        self.netns = netns
        self.target = target
        self.port = port or int(target.rsplit(":", 1)[1])
        self.name = name
        self.work = tmpdir("winch-fwd-")
        self.sock = os.path.join(self.work, "fwd.sock")
        self.logpath = os.path.join(self.work, "forward.log")
        _add_log("%s %s -> %s" % (name, self.hostport, target), self.logpath)
        self.procs = []
        _register(self)
        try:
            self._start([sys.executable, THIS_FILE, "forward", "--listen-unix", self.sock,
                         "--connect-tcp", target, "--parent-pid", str(os.getpid())], False)
            self._start([sys.executable, THIS_FILE, "forward", "--listen-tcp", self.hostport,
                         "--connect-unix", self.sock, "--parent-pid", str(os.getpid())], True)
        except Exception:
            self.stop()
            raise

    @property
    def hostport(self):
        return "127.0.0.1:%d" % self.port

    def _start(self, argv, in_netns):
        logf = open(self.logpath, "ab")
        try:
            if in_netns:
                p = self.netns.popen(argv, self.logpath, stdout=subprocess.PIPE,
                                     deathsig=signal.SIGKILL)
            else:
                p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=logf, preexec_fn=_set_pdeathsig(signal.SIGKILL))
        finally:
            logf.close()
        self.procs.append(p)
        r, _, _ = select.select([p.stdout], [], [], 10)
        line = p.stdout.readline() if r else b""
        if line.strip() != b"ready":
            raise RuntimeError("forwarder %s did not start (%r); log:\n%s" % (
                " ".join(argv), line, lab._tail(self.logpath)))

    def stop(self, check=False):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        self.procs = []
        _unregister(self)


# ---- daemons -------------------------------------------------------------------------------

class Daemon:
    """A long-running program inside the namespace (own mount namespace), with a log file.
    start() waits until ready() is true; if the daemon exits or times out first, it raises
    with the log (a test must fail loudly, never skip)."""

    def __init__(self, netns, name, argv, workdir, env=None, ready=None, timeout=60,
                 stop_timeout=30):
        self.netns = netns
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.ready = ready
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.logpath = os.path.join(workdir, name + ".log")
        self.proc = None
        _add_log(name, self.logpath)

    def start(self):
        self.proc = self.netns.popen(self.argv, self.logpath, env=self.env, mount_ns=True)
        _register(self)
        end = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with status %s while starting\nargv: %s\n"
                                   "log:\n%s" % (self.name, self.proc.returncode,
                                                 " ".join(self.argv), self.log(60000)))
            try:
                if self.ready is None or self.ready():
                    break
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            if time.monotonic() > end:
                log = self.log(60000)
                self.stop()
                raise RuntimeError("%s not ready within %ds\nargv: %s\nlog:\n%s" % (
                    self.name, self.timeout, " ".join(self.argv), log))
            time.sleep(0.1)
        lab.log("%s up (pid %d) in netns %s" % (self.name, self.proc.pid, self.netns.name))
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self, limit=1 << 20):
        return lab._tail(self.logpath, limit)

    def stop(self, check=False):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                lab.log("%s did not exit within %ds of SIGTERM; killing" % (
                    self.name, self.stop_timeout))
                p.kill()
                p.wait()
        _unregister(self)


def unix_http(sock_path, method, path, timeout=5):
    """(status, body) of one HTTP request over a unix socket (docker's API)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall(("%s %s HTTP/1.0\r\nHost: docker\r\n\r\n" % (method, path)).encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


class Dockerd:
    """dockerd 20.10 with its own data-root, exec-root, pidfile and socket, no networking
    setup, vfs storage, and one registry mirror (a 127.0.0.1 address inside the namespace).
    dockerd starts its own managed containerd (under exec-root) when none is given."""

    def __init__(self, netns, mirror, name="dockerd"):
        require("dockerd", "docker", "containerd", "runc")
        self.netns = netns
        self.work = tmpdir("winch-dockerd-")
        self.sock = os.path.join(self.work, "docker.sock")
        self.cli_config = os.path.join(self.work, "cli")
        os.makedirs(self.cli_config)
        cfg = {
            "data-root": os.path.join(self.work, "data"),
            "exec-root": os.path.join(self.work, "exec"),
            "pidfile": os.path.join(self.work, "docker.pid"),
            "hosts": ["unix://" + self.sock],
            "storage-driver": "vfs",
            "iptables": False,
            "ip6tables": False,
            "ip-forward": False,
            "ip-masq": False,
            "bridge": "none",
            "userland-proxy": False,
            "registry-mirrors": ["http://" + mirror],
            "insecure-registries": [mirror],
            "log-level": "debug",
            "max-concurrent-downloads": 3,
            # Else dockerd 20.10 writes /etc/docker/key.json.
            "deprecated-key-path": os.path.join(self.work, "key.json"),
        }
        self.config_path = os.path.join(self.work, "daemon.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=1)
        env = dict(os.environ)
        env.pop("DOCKER_HOST", None)
        argv = ["dockerd", "--config-file", self.config_path]
        self.daemon = Daemon(netns, name, argv,
                             self.work, env=env, ready=self._ready, timeout=60)
        self.daemon.start()

    def _ready(self):
        st, body = unix_http(self.sock, "GET", "/_ping", timeout=2)
        return st == 200 and body.strip() == b"OK"

    def docker(self, *args, timeout=180, check=True):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.work,
               "DOCKER_CONFIG": self.cli_config}
        return self.netns.run(["docker", "-H", "unix://" + self.sock] + list(args),
                              timeout=timeout, env=env, check=check)

    def log(self, limit=1 << 20):
        return self.daemon.log(limit)

    def stop(self):
        self.daemon.stop()


class Containerd:
    """containerd 1.6 with its own root, state, sockets and opt dir, the CRI plugin disabled;
    ctr runs inside the namespace too (ctr 1.6 fetches in the ctr process)."""

    def __init__(self, netns, name="containerd"):
        require("containerd", "ctr", "runc", "containerd-shim-runc-v2")
        self.netns = netns
        self.work = tmpdir("winch-ctrd-")
        self.sock = os.path.join(self.work, "c.sock")
        w = self.work
        toml = "\n".join([
            "version = 2",
            'root = "%s/root"' % w,
            'state = "%s/state"' % w,
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            '  address = "%s"' % self.sock,
            "[ttrpc]",
            '  address = "%s.ttrpc"' % self.sock,
            "[debug]",
            '  address = ""',
            '  level = "debug"',
            "[metrics]",
            '  address = ""',
            "[plugins]",
            '  [plugins."io.containerd.internal.v1.opt"]',
            '    path = "%s/opt"' % w,
            "",
        ])
        self.config_path = os.path.join(w, "config.toml")
        with open(self.config_path, "w") as f:
            f.write(toml)
        self.daemon = Daemon(netns, name, ["containerd", "--config", self.config_path], w,
                             ready=self._ready, timeout=60)
        self.daemon.start()

    def _ready(self):
        if not os.path.exists(self.sock):
            return False
        return self.ctr("version", timeout=10, check=False).returncode == 0

    def ctr(self, *args, timeout=180, check=True):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.work}
        pid = self.daemon.proc.pid if self.daemon.proc is not None else None
        if pid is None:
            raise RuntimeError("containerd is not running; its log:\n" + self.log(60000))
        return self.netns.run(["ctr", "--address", self.sock] + list(args), timeout=timeout,
                              env=env, check=check, mount_of=pid)

    def hosts_dir(self, hosts):
        """Writes a --hosts-dir tree: hosts is {registry host: (server URL, mirror URL)}
        -> DIR/<host>/hosts.toml with the server (a dead port) and the mirror host allowed to
        pull and resolve. Returns DIR."""
        d = tmpdir("winch-ctr-hosts-")
        for host, (server, mirror) in hosts.items():
            os.makedirs(os.path.join(d, host))
            with open(os.path.join(d, host, "hosts.toml"), "w") as f:
                f.write('server = "%s"\n\n[host."%s"]\n  capabilities = ["pull", "resolve"]\n'
                        % (server, mirror))
        return d

    def images(self):
        """{ref: target digest} from `ctr images ls`."""
        out = self.ctr("images", "ls").stdout.splitlines()
        res = {}
        for ln in out[1:]:
            parts = ln.split()
            if len(parts) >= 3:
                res[parts[0]] = parts[2]
        return res

    def log(self, limit=1 << 20):
        return self.daemon.log(limit)

    def stop(self):
        self.daemon.stop()


class Podman:
    """podman 4.3 run hermetically: own registries.conf (docker.io and other registries:
    primary location a dead port, mirror a 127.0.0.1 address inside the namespace, optionally
    with a path), own storage (vfs, runroot/graphroot in a temp dir), own containers.conf,
    tmpdir and auth file. Not a daemon; each call runs podman inside the namespace."""

    def __init__(self, netns, registries):
        """registries: list of (prefix, dead location, mirror location)."""
        require("podman", "conmon")
        self.netns = netns
        self.work = tmpdir("winch-podman-")
        w = self.work
        for sub in ("graph", "run", "tmp", "libpod", "home", "net"):
            os.makedirs(os.path.join(w, sub))
        reg = ['unqualified-search-registries = []', 'short-name-mode = "disabled"', ""]
        for prefix, dead, mirror in registries:
            reg += ['[[registry]]', 'prefix = "%s"' % prefix, 'location = "%s"' % dead,
                    'insecure = true', '[[registry.mirror]]', 'location = "%s"' % mirror,
                    'insecure = true', ""]
        self.registries_conf = os.path.join(w, "registries.conf")
        with open(self.registries_conf, "w") as f:
            f.write("\n".join(reg))
        self.storage_conf = os.path.join(w, "storage.conf")
        with open(self.storage_conf, "w") as f:
            f.write('[storage]\ndriver = "vfs"\nrunroot = "%s/run"\ngraphroot = "%s/graph"\n'
                    % (w, w))
        self.containers_conf = os.path.join(w, "containers.conf")
        with open(self.containers_conf, "w") as f:
            # network_config_dir: else podman creates /etc/containers/networks/netavark.lock
            # and /etc/cni/net.d/cni.lock even for a pull.
            f.write('[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n'
                    'tmp_dir = "%s/libpod"\nimage_copy_tmp_dir = "%s/tmp"\n'
                    '[network]\nnetwork_config_dir = "%s/net"\n' % (w, w, w))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.path.join(w, "home"),
            "TMPDIR": os.path.join(w, "tmp"),
            "XDG_CONFIG_HOME": os.path.join(w, "home", ".config"),
            "CONTAINERS_REGISTRIES_CONF": self.registries_conf,
            "CONTAINERS_STORAGE_CONF": self.storage_conf,
            "CONTAINERS_CONF": self.containers_conf,
            "REGISTRY_AUTH_FILE": os.path.join(w, "auth.json"),
        }
        with open(self.env["REGISTRY_AUTH_FILE"], "w") as f:
            f.write("{}\n")
        self.logpath = os.path.join(w, "podman.log")
        _add_log("podman", self.logpath)

    def podman(self, *args, timeout=180, check=True):
        argv = ["podman", "--events-backend=file", "--cgroup-manager=cgroupfs",
                "--tmpdir", os.path.join(self.work, "libpod"), "--log-level=debug"] + list(args)
        # /var/lib/containers hidden: podman 4.3 keeps its blob info cache in
        # /var/lib/containers/cache whatever the storage config says.
        r = self.netns.run(argv, timeout=timeout, env=self.env, check=False, mount_ns=True,
                           hide=["/var/lib/containers"])
        with open(self.logpath, "a") as f:
            f.write("\n$ %s\n[exit %d]\n--- stdout\n%s\n--- stderr\n%s\n" % (
                " ".join(argv), r.returncode, r.stdout, r.stderr))
        if check and r.returncode != 0:
            raise RuntimeError("%s failed with status %d (in netns %s)\nstdout:\n%s\n"
                               "stderr:\n%s" % (" ".join(argv), r.returncode, self.netns.name,
                                                r.stdout[-8000:], r.stderr[-12000:]))
        return r


# ---- upstream request accounting -------------------------------------------------------

_MB_RE = re.compile(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$")


def classify(rq):
    """'GET blob', 'HEAD manifest-by-tag', 'GET manifest-by-digest', 'GET /v2/', ..."""
    if rq.path in ("/v2/", "/v2"):
        return "%s /v2/" % rq.method
    m = _MB_RE.match(rq.path)
    if not m:
        return "%s other" % rq.method
    if m.group(2) == "blobs":
        return "%s blob" % rq.method
    kind = "manifest-by-digest" if ":" in m.group(3) else "manifest-by-tag"
    return "%s %s" % (rq.method, kind)


_ORDER = ["/v2/", "manifest-by-tag", "manifest-by-digest", "blob", "other"]


def summarize(reqs):
    """'1 HEAD manifest-by-tag, 1 GET manifest-by-digest, 2 GET blob' (or 'none')."""
    c = collections.Counter(classify(r) for r in reqs)

    def key(item):
        method, kind = item[0].split(" ", 1)
        return (_ORDER.index(kind) if kind in _ORDER else 99, method)
    parts = ["%d %s" % (n, k) for k, n in sorted(c.items(), key=key)]
    return ", ".join(parts) if parts else "none"


def blob_gets(reqs):
    """{blob path: number of GETs} of the requests."""
    return collections.Counter(r.path for r in reqs
                               if r.method == "GET" and classify(r) == "GET blob")


class Window:
    """The requests a CountingForwarder-backed lab.Registry saw between start and now."""

    def __init__(self, registry):
        self.registry = registry
        self.start = len(registry.seen())

    def requests(self):
        return self.registry.seen()[self.start:]


def settle(registry, quiet=0.3, limit=5.0):
    """Waits until registry has seen no new request for quiet seconds (at most limit)."""
    end = time.monotonic() + limit
    n = len(registry.seen())
    last = time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        m = len(registry.seen())
        if m != n:
            n, last = m, time.monotonic()
        elif time.monotonic() - last >= quiet:
            return


class Flow:
    """Records the upstream requests one client flow causes and reports them:

      with netns.Flow("dockerd", "pull busybox:1.36", "winch", upstream) as f:
          d.docker("pull", "busybox:1.36")
      f.requests  # lab.RequestSeen list

    prints e.g. `upstream requests for dockerd pull busybox:1.36 via winch: 1 HEAD
    manifest-by-tag, 1 GET manifest-by-digest, 2 GET blob` (and every request on stderr)."""

    def __init__(self, client, what, via, registry):
        self.client, self.what, self.via, self.registry = client, what, via, registry
        self.requests = []
        self.seconds = 0.0

    def __enter__(self):
        settle(self.registry)
        self.window = Window(self.registry)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, et, ev, tb):
        self.seconds = time.monotonic() - self.t0
        settle(self.registry)
        self.requests = self.window.requests()
        for r in self.requests:
            lab.log("  upstream saw: %s %s" % (r.method, r.target))
        rep = collections.Counter("%s %s" % (r.method, r.path) for r in self.requests)
        rep = [re.sub(r"(sha256:[0-9a-f]{12})[0-9a-f]{52}", r"\1...", "%s x%d" % (k, n))
               for k, n in sorted(rep.items()) if n > 1 and not k.endswith(("/v2/", "/v2"))]
        report("upstream requests for %s %s via %s: %s (%.1fs%s)%s" % (
            self.client, self.what, self.via, summarize(self.requests), self.seconds,
            ", FAILED" if et else "", "\n    repeated: " + "; ".join(rep) if rep else ""))
        return False

    def summary(self):
        return summarize(self.requests)


def upstream_tag_digest(hostport, repo, tag):
    """The Docker-Content-Digest the upstream gives for repo:tag (HEAD, any manifest type)."""
    r = lab.head(hostport, "/v2/%s/manifests/%s" % (repo, tag),
                 lab.accept(lab.ALL_MANIFEST_ACCEPT))
    if r.status != 200 or not r.header("Docker-Content-Digest"):
        raise AssertionError("upstream HEAD %s:%s: %r" % (repo, tag, r))
    return r.header("Docker-Content-Digest")


def platform_digest(img, arch, variant=None, os_name="linux"):
    """The manifest digest of one platform of a seeded index (pushed.json entry)."""
    for p in img["platforms"]:
        plat = p.get("platform") or {}
        if plat.get("os") == os_name and plat.get("architecture") == arch and \
                (variant is None or plat.get("variant") == variant):
            return p["digest"]
    raise AssertionError("no platform %s/%s/%s in %s" % (os_name, arch, variant, img["repo"]))


def platform_blobs(hostport, img, arch, variant=None):
    """The config and layer digests of one platform of a seeded index, read from the upstream."""
    digest = platform_digest(img, arch, variant)
    r = lab.get(hostport, "/v2/%s/manifests/%s" % (img["repo"], digest),
                [("Accept", "application/vnd.oci.image.manifest.v1+json, "
                            "application/vnd.docker.distribution.manifest.v2+json")])
    man = json.loads(r.body)
    return {man["config"]["digest"]} | {layer["digest"] for layer in man["layers"]}


def config_digest(img):
    """The config blob digest of a seeded single-platform image."""
    for d, b in img["blobs"].items():
        if "config" in b["media_type"] or b["media_type"].endswith("container.image.v1+json"):
            return d
    raise AssertionError("no config blob in %s" % img["repo"])


def assert_blobs_fetched_once(testcase, registry, what):
    """Every blob was GET from registry at most once (winch's single flight + cache)."""
    twice = {p: n for p, n in blob_gets(registry.seen()).items() if n > 1}
    testcase.assertEqual(twice, {}, "%s: blobs fetched from the upstream more than once" % what)


SUMMARY_LINES = []


def report(line):
    """Prints a summary line now (stdout) and keeps it for print_summary()."""
    SUMMARY_LINES.append(line)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def print_summary():
    if SUMMARY_LINES:
        sys.stdout.write("\n==== upstream request summary ====\n%s\n" % "\n".join(SUMMARY_LINES))
        sys.stdout.flush()


class ProxyRegistry(lab.Registry):
    """distribution's pull-through cache (docker-registry with proxy.remoteurl) on a fresh
    root: the peer winch is compared with."""

    def __init__(self, remoteurl, name="distribution-proxy"):
        self.remoteurl = remoteurl
        super().__init__(root=None, readonly=False, count=False, name=name)

    def _config(self):
        cfg = super()._config()
        cfg["proxy"] = {"remoteurl": self.remoteurl}
        return cfg


def dead_port():
    """A loopback port nothing listens on (inside a fresh netns nothing listens anyway)."""
    return lab.free_port()


def main():
    """Like lab.main(): runs the calling module's tests verbosely, prints the upstream request
    summary, dumps every process log when a test failed, stops everything; exits 0/1."""
    import unittest
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    ok = prog.result.wasSuccessful() and prog.result.testsRun > 0
    ok = lab.no_skips(prog.result) and ok
    print_summary()
    if not ok:
        lab.dump_logs()
    _at_exit()
    for obj in reversed(list(getattr(lab, "_cleanups", []))):
        try:
            obj.stop(check=False)
        except Exception:  # noqa: BLE001
            pass
    sys.exit(0 if ok else 1)
