#!/usr/bin/python3
"""`winch status` and GET /_winch/status.json on the admin listener, against the real
docker-registry: the JSON parses and its numbers are what the test did (misses, hits, bytes
served from the cache and fetched upstream, top images); `winch status` (by --admin and by
--config) prints the same numbers as tables, `--json` the document. Against nothing, a port that
accepts and never answers, one that trickles a byte a second, garbage, a head without an end and
bodies over the bound: one line on stderr, exit 1, within the 5 s deadline. No admin listener
configured: exit 1 naming it; a bad option: exit 2."""

import json
import os
import re
import socket
import subprocess
import threading
import time

import lab

DEADLINE_S = 5


def admin_hostport(w):
    m = re.search(r"admin listener on (127\.0\.0\.1:\d+)", w.log())
    if not m:
        raise AssertionError("no 'admin listener on' line:\n" + w.log())
    return m.group(1)


def docker_size(n):
    """cli_size: decimal units, %.4g."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    v, u = float(n), 0
    while v >= 1000 and u + 1 < len(units):
        v /= 1000
        u += 1
    return "%.4g%s" % (v, units[u])


def winch_status(*args, timeout=30):
    t0 = time.monotonic()
    p = subprocess.run([lab.WINCH_BIN, "status"] + list(args), capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p, time.monotonic() - t0


class FakeAdmin:
    """A loopback listener that does `behave(conn)` with each connection it accepts (or, with
    behave None, never accepts: connections wait in the backlog)."""

    def __init__(self, behave):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.hostport = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop_ev = threading.Event()
        self.conns = []
        self.thread = None
        if behave:
            self.thread = threading.Thread(target=self.loop, args=(behave,), daemon=True)
            self.thread.start()

    def loop(self, behave):
        self.sock.settimeout(0.2)
        while not self.stop_ev.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(behave, c), daemon=True).start()

    def serve(self, behave, c):
        try:
            c.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    return
                data += chunk
            behave(c, self.stop_ev)
        except OSError:
            pass

    def stop(self):
        self.stop_ev.set()
        self.sock.close()
        for c in self.conns:
            c.close()
        if self.thread:
            self.thread.join(5)


def send_then_hold(payload):
    def behave(c, stop):
        c.sendall(payload)
        stop.wait(30)
    return behave


def send_then_close(payload):
    def behave(c, stop):
        c.sendall(payload)
        c.close()
    return behave


def trickle(c, stop):
    c.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(1):
        c.sendall(b"X")


def endless_body(c, stop):
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    chunk = b"[" * 65536
    try:
        while not stop.is_set():
            c.sendall(chunk)
    except OSError:
        pass


class StatusCli(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.reg = lab.seeded_registry(count=False)

    @classmethod
    def tearDownClass(cls):
        cls.reg.stop()

    def assert_fails_fast(self, args, want, rc=1):
        p, elapsed = winch_status(*args)
        self.assertEqual(p.returncode, rc, (args, p.stdout, p.stderr))
        self.assertEqual(p.stdout, "", args)
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, (args, p.stderr))
        self.assertIn(want, lines[0], args)
        self.assertTrue(lines[0].startswith("winch status: "), lines[0])
        self.assertLess(elapsed, DEADLINE_S + 2, (args, p.stderr))
        return elapsed

    def test_status_of_a_running_winch(self):
        d = lab.tmpdir()
        cfg = os.path.join(d, "config.json")
        w = lab.Winch([("docker.io", self.reg.url)], config={"admin_listen": "127.0.0.1:0"})
        self.addCleanup(w.stop)
        admin = admin_hostport(w)
        img = self.data["images"]["busybox"]
        man = "/v2/%s/manifests/%s" % (img["repo"], img["tag"])
        blob_digest = img["layers"][0]
        blob = "/v2/%s/blobs/%s" % (img["repo"], blob_digest)
        blob_size = img["blobs"][blob_digest]["size"]
        acc = lab.accept([img["media_type"]])
        for path, h in ((man, acc), (man, acc), (blob, ()), (blob, ())):
            r = lab.get(w.hostport, path, h)
            self.assertStatus(r, 200, path)

        def status_done():
            by = self.status(admin)["requests"]["by_result"]
            return by["hit"] + by["coalesced"] + by["miss"] == 4

        lab.wait_for(status_done, 10, what="four requests counted")
        s = self.status(admin)
        by = s["requests"]["by_result"]
        # The second GET of the blob may join the fill still committing (coalesced): served
        # from the cache either way.
        self.assertEqual((by["hit"] + by["coalesced"], by["miss"]), (2, 2))
        self.assertEqual(s["requests"]["total"], 4 + by["local"])
        self.assertEqual((s["requests"]["from_cache"], s["requests"]["cacheable"]), (2, 4))
        self.assertEqual(s["requests"]["hit_ratio"], 0.5)
        saved = img["size"] + blob_size
        self.assertEqual(s["bytes"], {"served_from_cache": saved,
                                      "served_from_upstream": saved,
                                      "fetched_from_upstream": saved})
        self.assertEqual(s["last_hour"]["served_from_cache"], saved)
        self.assertEqual(s["upstreams"], [{"name": "docker.io", "state": "up",
                                           "consecutive_failures": 0,
                                           "ratelimit_remaining": None, "queued": 0}])
        self.assertEqual(s["fills"], {"count": 0, "waiters": 0, "items": []})
        self.assertEqual(s["top_images"]["images"],
                         [{"image": "docker.io/" + img["repo"], "bytes": 2 * saved,
                           "overcount_max": 0}])
        self.assertIsNone(s["cache"]["max_bytes"])
        self.assertRegex(s["version"], r"^\d+\.\d+\.\d+$")
        self.assertGreaterEqual(s["uptime_s"], 0)

        # winch status by --admin and by --config prints the same numbers.
        with open(cfg, "w") as f:
            json.dump({"admin_listen": admin, "cache_dir": os.path.join(d, "unused")}, f)
        for args in (["--admin", admin], ["--config", cfg]):
            p, _ = winch_status(*args)
            self.assertEqual(p.returncode, 0, p.stderr)
            out = p.stdout
            self.assertIn("winch %s (commit %s) at %s" % (s["version"], s["commit"], admin), out)
            row = out.split("FETCHES IN FLIGHT\n", 1)[1].splitlines()[0].split()
            total = int(row[0])
            self.assertGreaterEqual(total, s["requests"]["total"])
            self.assertEqual(row[1:4], ["50.0%", "(2", "of"])
            self.assertEqual(row[5:8], [docker_size(saved)] * 3)
            self.assertRegex(out, r"\ndocker\.io +up +0 +- +0\n")
            self.assertRegex(out, r"\ndocker\.io/%s +%s\n" % (re.escape(img["repo"]),
                                                             re.escape(docker_size(2 * saved))))
        p, _ = winch_status("--admin", admin, "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        j = json.loads(p.stdout)
        self.assertEqual(j["bytes"], s["bytes"])
        self.assertEqual(j["top_images"], s["top_images"])
        # Only on the admin listener when there is one.
        self.assertStatus(lab.get(w.hostport, "/_winch/status.json"), 404, "public status.json")

    def test_fill_in_progress(self):
        """A fill held at 1 MiB by the upstream, two clients streaming it: status.json and
        `winch status` show it with its bytes received, its size and its two clients."""
        fake = lab.FakeUpstream()
        self.addCleanup(fake.stop)
        w = lab.Winch([("docker.io", fake.url)], name="winch-fill",
                      config={"admin_listen": "127.0.0.1:0"})
        self.addCleanup(w.stop)
        admin = admin_hostport(w)
        blob = bytes(range(256)) * (16 << 10)  # 4 MiB
        digest = fake.add_blob(blob)
        path = "/v2/lab/slow/blobs/" + digest
        hold = lab.Fault("stall", after=1 << 20, times=1)
        fake.set_fault(path, hold)
        s1 = lab.Stream(w.hostport, path, timeout=30)
        self.assertTrue(hold.reached.wait(10), "the upstream never reached the stall")
        s2 = lab.Stream(w.hostport, path, timeout=30)

        def fill():
            items = self.status(admin)["fills"]["items"]
            return items[0] if items and items[0]["waiters"] == 2 and \
                items[0]["received"] == 1 << 20 else None

        lab.wait_for(fill, 10, what="the fill at 1 MiB with two clients")
        s = self.status(admin)
        self.assertEqual(s["fills"]["count"], 1)
        self.assertEqual(s["fills"]["items"], [{
            "upstream": "docker.io", "repository": "lab/slow", "digest": digest,
            "received": 1 << 20, "size": len(blob), "waiters": 2}])
        p, _ = winch_status("--admin", admin)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"\ndocker\.io/lab/slow@%s +1\.049MB +4\.194MB +2\n"
                         % re.escape(digest))
        hold.release()
        self.assertEqual(len(s1.read_all(keep=True)), len(blob))
        self.assertEqual(len(s2.read_all(keep=True)), len(blob))
        s1.close()
        s2.close()
        lab.wait_for(lambda: self.status(admin)["fills"]["count"] == 0, 10, what="fill end")

    def status(self, admin):
        r = lab.get(admin, "/_winch/status.json")
        self.assertStatus(r, 200, "status.json")
        self.assertEqual(r.header("Content-Type"), "application/json")
        return json.loads(r.body)

    def test_errors(self):
        d = lab.tmpdir()
        # No admin listener configured.
        cfg = os.path.join(d, "noadmin.json")
        with open(cfg, "w") as f:
            json.dump({"cache_dir": os.path.join(d, "c")}, f)
        self.assert_fails_fast(["--config", cfg], "no admin listener is configured")
        # Nothing listens.
        port = lab.free_port()
        self.assert_fails_fast(["--admin", "127.0.0.1:%d" % port], "Connection refused")
        self.assert_fails_fast(["--admin", "localhost:5001"], "not HOST:PORT with an IP address")
        p, _ = winch_status("--frob")
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown option --frob", p.stderr)
        cases = [
            (None, "no answer within"),  # accepts (backlog), never answers
            (send_then_hold(b""), "no answer within"),  # accepts, reads, says nothing
            (trickle, "no answer within"),  # a byte a second: the deadline is overall
            (send_then_close(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), "not an HTTP answer"),
            (send_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!"),
             "not a winch status"),
            (send_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
             "not a winch status"),
            (send_then_close(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
             "answered 404"),
            (send_then_hold(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n"),
             "over 1048576 bytes"),
            (endless_body, "over 1048576 bytes"),
            (send_then_hold(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 20000),
             "head is over"),
            (send_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\""),
             "cut short"),
        ]
        for behave, want in cases:
            fake = FakeAdmin(behave)
            try:
                elapsed = self.assert_fails_fast(["--admin", fake.hostport], want)
                if want == "no answer within":
                    self.assertGreater(elapsed, DEADLINE_S - 0.5, want)
            finally:
                fake.stop()


if __name__ == "__main__":
    lab.main()
