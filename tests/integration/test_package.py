#!/usr/bin/python3
"""Installing winch: `cmake --install` into a scratch prefix (binary, systemd unit naming that
binary and config, default config, a local config kept on reinstall); `cpack -G DEB` builds a
.deb whose contents dpkg-deb lists (binary, unit, conffile /etc/winch/config.json) and whose unit
`systemd-analyze verify` accepts without a word; the default config loads; winch run with
NOTIFY_SOCKET sends READY=1 to a socket the test binds once it listens, STOPPING=1 at exit."""

import json
import os
import re
import socket
import subprocess

import lab

BUILD = os.path.dirname(os.path.abspath(lab.WINCH_BIN))


def run(argv, **kw):
    p = subprocess.run(argv, capture_output=True, timeout=600, stdin=subprocess.DEVNULL, **kw)
    out = (p.stdout + p.stderr).decode(errors="replace")
    if p.returncode != 0:
        raise AssertionError("%s: exit %d\n%s" % (" ".join(argv), p.returncode, out))
    return out


class Package(lab.TestCase):
    def test_cmake_install(self):
        prefix = os.path.join(lab.tmpdir(), "p")
        run(["cmake", "--install", BUILD, "--prefix", prefix])
        self.assertTrue(os.access(os.path.join(prefix, "bin", "winch"), os.X_OK))
        with open(os.path.join(prefix, "lib/systemd/system/winch.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=%s/bin/winch serve --config %s/etc/winch/config.json"
                      % (prefix, prefix), unit)
        for want in ("Type=notify", "DynamicUser=yes", "User=winch", "StateDirectory=winch",
                     "ProtectSystem=strict", "NoNewPrivileges=yes"):
            self.assertIn("\n" + want + "\n", unit)
        self.check_man(os.path.join(prefix, "share/man/man1/winch.1"))
        cfg = os.path.join(prefix, "etc/winch/config.json")
        with open(cfg) as f:
            self.assertEqual(json.load(f)["admin_listen"], "127.0.0.1:5001")
        with open(cfg, "w") as f:
            f.write('{"listen": "127.0.0.1:5999"}\n')
        run(["cmake", "--install", BUILD, "--prefix", prefix])
        with open(cfg) as f:
            self.assertIn("5999", f.read(), "a local config was overwritten by a reinstall")

    def check_man(self, path):
        """winch(1) is installed, is `winch --man`'s output, groff renders it without a warning,
        and it names every command `winch --help` lists."""
        lab.require("groff")
        # Generated at build time from the table --help prints (proxy/usage.c), not written by
        # hand: the installed page is exactly what `winch --man` prints.
        with open(path) as f:
            self.assertEqual(f.read(), subprocess.run([lab.WINCH_BIN, "--man"], capture_output=True,
                                                      text=True, check=True).stdout)
        p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", path], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual((p.returncode, p.stderr), (0, ""), "groff on winch.1")
        text = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", path], capture_output=True,
                              text=True, timeout=30).stdout
        usage = subprocess.run([lab.WINCH_BIN, "--help"], capture_output=True, text=True).stdout
        lines = [l for l in usage.splitlines() if re.match(r"(usage: | +)winch ", l)]
        cmds = set()
        for l in lines:
            cmds |= set(re.findall(r"(?:winch|\|) ([a-z][a-z-]+)(?= |$)", l))
        self.assertGreater(len(cmds), 12, usage)
        for c in sorted(cmds):
            self.assertRegex(text, r"\n {7}%s\b" % re.escape(c), "winch(1) lacks " + c)

    def test_deb(self):
        lab.require("dpkg-deb", "systemd-analyze")
        out = lab.tmpdir()
        run(["cpack", "-G", "DEB", "-B", out], cwd=BUILD)
        pkgs = out
        debs = [f for f in os.listdir(pkgs) if f.endswith(".deb")]
        self.assertEqual(len(debs), 1, os.listdir(pkgs))
        deb = os.path.join(pkgs, debs[0])
        listing = run(["dpkg-deb", "-c", deb])
        files = set(re.findall(r" \./(\S+)$", listing, re.M))
        for want in ("usr/bin/winch", "usr/lib/systemd/system/winch.service",
                     "usr/share/man/man1/winch.1",
                     "etc/winch/config.json"):
            self.assertIn(want, files, listing)
        self.assertFalse([f for f in files if f.startswith(("tmp/", "work/", "root/"))], listing)
        info = run(["dpkg-deb", "-I", deb])
        self.assertIn("Package: winch", info)
        self.assertIn("libuv1", info)
        root = lab.tmpdir()
        run(["dpkg-deb", "-e", deb, os.path.join(root, "DEBIAN")])
        with open(os.path.join(root, "DEBIAN", "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/winch/config.json"])
        run(["dpkg-deb", "-x", deb, root])
        unit_path = os.path.join(root, "usr/lib/systemd/system/winch.service")
        with open(unit_path) as f:
            unit = f.read()
        self.assertIn("ExecStart=/usr/bin/winch serve --config /etc/winch/config.json\n", unit)
        # verify wants the binary on this machine: the same unit, pointed at the extracted one.
        vdir = lab.tmpdir()
        with open(os.path.join(vdir, "winch.service"), "w") as f:
            f.write(unit.replace("ExecStart=/usr/bin/winch",
                                 "ExecStart=%s/usr/bin/winch" % root))
        p = subprocess.run(["systemd-analyze", "verify", "--man=no",
                            os.path.join(vdir, "winch.service")], capture_output=True, timeout=60)
        said = (p.stdout + p.stderr).decode(errors="replace").strip()
        # A bad value is only a warning (exit 0): any output at all fails the test.
        self.assertEqual((p.returncode, said), (0, ""))
        # The packaged default config loads (with a scratch cache and loopback listeners).
        cfg = os.path.join(root, "etc/winch/config.json")
        w = lab.Winch([], extra_args=["--config", cfg, "--cache-dir",
                                      os.path.join(root, "cache"),
                                      "--listen", "127.0.0.1:0"], name="winch-default-config")
        try:
            self.assertStatus(lab.get(w.hostport, "/healthz"), 200, "default config")
        finally:
            w.stop()

    def test_sd_notify(self):
        d = lab.tmpdir()
        path = os.path.join(d, "notify")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.settimeout(20)
        reg = lab.seeded_registry(count=False)
        w = lab.Winch([("docker.io", reg.url)], env={"NOTIFY_SOCKET": path})
        try:
            msg = s.recv(4096).decode()
            self.assertIn("READY=1", msg.split("\n"))
            # READY=1 comes once listening: the port answers.
            self.assertStatus(lab.get(w.hostport, "/healthz"), 200, "after READY=1")
        finally:
            w.stop()
            reg.stop()
        self.assertEqual(s.recv(4096).decode(), "STOPPING=1")
        s.close()


if __name__ == "__main__":
    lab.main()
