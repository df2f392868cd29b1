"""A real HAProxy in front of winch nodes, configured from deploy/haproxy/haproxy.cfg.

The deploy file is used as it is, except for three things a test must change: the `bind` line
(a random loopback port), the `server` lines of backend winch (the test's nodes) and, added, a
stats socket (to wait until the nodes are up) and an `X-Winch-Node` response header (the name of
the node that answered, so tests can tell which node owns a key). Used by test_cluster.py and the
bench harness."""

import os
import re
import socket
import subprocess
import time

import lab

TEMPLATE = os.path.join(lab.SOURCE_DIR, "deploy", "haproxy", "haproxy.cfg")


def render(port, nodes, stats_path):
    """The deploy config with the test's bind address and nodes. nodes: [(name, hostport)]."""
    with open(TEMPLATE) as f:
        lines = f.read().split("\n")
    out = []
    seen_bind = seen_server = False
    backend = None
    for line in lines:
        s = line.strip()
        if re.match(r"^(frontend|backend|defaults|global|listen)\b", line):
            backend = s.split()[1] if s.startswith("backend ") and len(s.split()) > 1 else None
        if s.startswith("bind "):
            out.append("    bind %s:%d" % (lab.LOOPBACK, port))
            seen_bind = True
            continue
        if backend == "winch" and s.startswith("server "):
            if not seen_server:
                out += ["    server %s %s" % (n, hp) for n, hp in nodes]
                out.append("    http-response set-header X-Winch-Node %s")
                seen_server = True
            continue
        out.append(line)
        if line.startswith("global"):
            out.append("    stats socket %s mode 600 level admin" % stats_path)
    if not (seen_bind and seen_server):
        raise RuntimeError("%s: no bind line or no server line in backend winch" % TEMPLATE)
    return "\n".join(out) + "\n"


class Haproxy:
    """haproxy -db (foreground) on a random loopback port in front of nodes [(name, hostport)]."""

    def __init__(self, nodes, name="haproxy"):
        lab.require("haproxy")
        self.workdir = lab.tmpdir("winch-haproxy-")
        self.stats = os.path.join(self.workdir, "stats.sock")
        self.name = name
        self.proc = None
        self.port = None
        self.start(nodes)

    def start(self, nodes):
        self.nodes = list(nodes)
        self.logpath = os.path.join(self.workdir, "haproxy.log")
        last = ""
        for _attempt in range(5):
            self.port = lab.free_port()
            if os.path.exists(self.stats):
                os.unlink(self.stats)
            cfg = os.path.join(self.workdir, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(render(self.port, self.nodes, self.stats))
            check = subprocess.run(["haproxy", "-c", "-q", "-f", cfg], capture_output=True,
                                   text=True)
            if check.returncode != 0:
                raise RuntimeError("haproxy -c refused the config:\n%s%s" % (check.stdout,
                                                                          check.stderr))
            logf = open(self.logpath, "ab")
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            logf.close()
            if (self.name, self.logpath) not in lab._logs:
                lab._logs.append((self.name, self.logpath))
            try:
                lab.wait_for(self._ready, 10, what="haproxy listening")
                # Another process may hold the port free_port() saw free (the connect above then
                # reached it): haproxy exits at once when it cannot bind. Make sure it did not.
                time.sleep(0.2)
                if self.proc.poll() is None and self._ready():
                    break
                last = lab._tail(self.logpath)
            except (TimeoutError, RuntimeError):
                last = lab._tail(self.logpath)
            self._kill()
            if "Address already in use" not in last and "cannot bind" not in last:
                raise RuntimeError("haproxy did not start; its log:\n%s" % last)
        else:
            raise RuntimeError("haproxy could not bind a port; its log:\n%s" % last)
        lab._register(self)
        self.wait_states({n: "UP" for n, _ in self.nodes})
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("haproxy exited: %s" % lab._tail(self.logpath))
        if not os.path.exists(self.stats):
            return False
        try:
            socket.create_connection((lab.LOOPBACK, self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @property
    def hostport(self):
        return "%s:%d" % (lab.LOOPBACK, self.port)

    def command(self, cmd):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.stats)
        s.sendall(cmd.encode() + b"\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        return data.decode()

    def states(self):
        """{server name: status} of backend winch ("UP", "DOWN", "UP 1/2", ...)."""
        out = {}
        text = self.command("show stat")
        head = None
        for line in text.splitlines():
            if line.startswith("# "):
                head = line[2:].split(",")
                continue
            if not line or head is None:
                continue
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == "winch" and row.get("svname") not in ("BACKEND", "FRONTEND"):
                out[row["svname"]] = row["status"]
        return out

    def wait_states(self, want, timeout=20):
        lab.wait_for(lambda: all(self.states().get(n) == st for n, st in want.items()), timeout,
                     what="haproxy server states %s (now %s)" % (want, "see log"))

    def log(self):
        return lab._tail(self.logpath, 1 << 24)

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self, check=True):
        self._kill()
        lab._unregister(self)
