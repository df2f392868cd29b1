#!/usr/bin/python3
"""The upstream side of issue 8, end to end through the winch binary, against scripted
upstreams (lab.FakeUpstream and small variants):

(a) Flood: 1,000 concurrent GETs of random blob digests against an upstream that takes a second
    to say 404. A cached tag and a cold manifest must still answer within 1 s; winch's fds
    and tmp/ files stay bounded; every flood request ends with 404 or 503 + Retry-After (the
    bulk queue is bounded and has a deadline), and a 404 is remembered (negative_ttl_s).
(b) Oversized and endless manifests: a 5 GiB Content-Length and an endless chunked body are
    abandoned at the bound (502 at once, the upstream connection closed, never drained); a
    body that trickles forever is cut by upstream_fetch_deadline_ms (504).
(c) Redirects and token realms that point at an address of another class than the upstream's
    own (here 0.0.0.0, "unspecified", which reaches the local host): refused, the target never
    sees a request, unless allow_redirect_hosts names it.
"""

import os
import random
import selectors
import socket
import threading
import time

import lab

H = lab.accept(lab.ALL_MANIFEST_ACCEPT)


def now():
    return time.monotonic()


class SlowNotFound(lab.FakeUpstream):
    """Answers 404 for unknown blobs only after `delay` seconds (a slow registry, or one that
    makes every miss expensive); everything else as lab.FakeUpstream."""

    delay = 1.0

    def _answer(self, c, rq):
        if "/blobs/" in rq.path and rq.path.rsplit("/", 1)[1] not in self.blobs:
            if self.stopped.wait(self.delay):
                return False
        return super()._answer(c, rq)


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def flood(hostport, paths, timeout=90, method="GET"):
    """Sends one request per path, each on its own connection, all at once (non-blocking
    sockets), and reads every answer to the end. Returns {path: (status, headers, seconds)}."""
    host, port = hostport.split(":")
    sel = selectors.DefaultSelector()
    state = {}
    t0 = now()
    for p in paths:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        req = ("%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (method, p, hostport))
        state[s] = {"path": p, "out": req.encode(), "in": b""}
        sel.register(s, selectors.EVENT_WRITE)
    results = {}
    while state and now() - t0 < timeout:
        for key, ev in sel.select(0.5):
            s = key.fileobj
            st = state[s]
            try:
                if ev & selectors.EVENT_WRITE:
                    n = s.send(st["out"])
                    st["out"] = st["out"][n:]
                    if not st["out"]:
                        sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                st["in"] += data
                continue
            sel.unregister(s)
            s.close()
            del state[s]
            head = st["in"].split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            status = int(head[0].split(" ")[1]) if head and head[0].startswith("HTTP/") else 0
            hdrs = {}
            for line in head[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            results[st["path"]] = (status, hdrs, now() - t0)
    for s in state:
        sel.unregister(s)
        s.close()
    return results


class Flood(lab.TestCase):
    N = 1000

    @classmethod
    def setUpClass(cls):
        cls.fake = SlowNotFound()
        rnd = random.Random(8)
        cls.cached = cls.fake.add_image("lab/flood", "cached", [rnd.randbytes(1000)])
        cls.cold = cls.fake.add_image("lab/flood", "cold", [rnd.randbytes(1000)])
        cls.cold2 = cls.fake.add_image("lab/flood", "cold2", [rnd.randbytes(1000)])
        # All the flood comes from 127.0.0.1: the per-client connection limit (test_limits.py
        # proves it) is raised so that the upstream side's limits are what is measured here.
        cls.winch = lab.Winch([("docker.io", cls.fake.url)], log_level="info",
                              config={"max_connections_per_client": 4000})
        cls.w = cls.winch.hostport

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.fake.stop()

    def timed_get(self, path):
        t0 = now()
        r = lab.get(self.w, path, H, timeout=30)
        return r, now() - t0

    def test_flood(self):
        r, _ = self.timed_get("/v2/lab/flood/manifests/cached")
        self.assertStatus(r, 200, "warming the cached tag")
        rnd = random.Random(9)
        paths = ["/v2/lab/flood/blobs/sha256:%064x" % rnd.getrandbits(256) for _ in range(self.N)]
        out = {}
        th = threading.Thread(target=lambda: out.update(flood(self.w, paths)), daemon=True)
        t0 = now()
        th.start()
        # The flood is on once the upstream holds as many blob requests as winch lets it.
        # (Each cold blob is first confirmed with a HEAD: blob scoping.)
        lab.wait_for(lambda: self.fake.count(contains="/blobs/") >= 20, 20,
                     what="the flood to reach the upstream")
        pid = self.winch.proc.pid
        max_fds, max_tmp, samples = 0, 0, 0
        flood_hex = set(p.rsplit(":", 1)[1] for p in paths)

        def sample():
            # tmp/<seq>.<hex>.part: count the flood's blobs (manifest puts use tmp/ too).
            nonlocal max_fds, max_tmp, samples
            max_fds = max(max_fds, fd_count(pid))
            mine = [f for f in self.winch.tmp_files()
                    if os.path.basename(f).split(".")[1:2] and
                    os.path.basename(f).split(".")[1] in flood_hex]
            max_tmp = max(max_tmp, len(mine))
            samples += 1

        sample()
        cached_r, cached_s = self.timed_get("/v2/lab/flood/manifests/cached")
        sample()
        cold_r, cold_s = self.timed_get("/v2/lab/flood/manifests/cold")
        sample()
        while th.is_alive():
            sample()
            th.join(0.1)
        flood_s = now() - t0
        self.assertStatus(cached_r, 200, "cached tag during the flood")
        self.assertEqual(cached_r.header("Docker-Content-Digest"), self.cached[0])
        self.assertStatus(cold_r, 200, "cold manifest during the flood")
        self.assertEqual(cold_r.header("Docker-Content-Digest"), self.cold[0])
        statuses = {}
        for st, _h, _t in out.values():
            statuses[st] = statuses.get(st, 0) + 1
        busy = [h for st, h, _t in out.values() if st == 503]
        upstream_blob_reqs = self.fake.count(contains="/blobs/")
        lab.log("flood: %d GETs of random blobs against a 1 s 404 upstream, done in %.1f s: "
                "statuses %s, %d upstream blob requests" % (self.N, flood_s, sorted(statuses.items()),
                                                           upstream_blob_reqs))
        lab.log("flood: cached tag answered in %.1f ms, cold manifest in %.1f ms" % (
            cached_s * 1000, cold_s * 1000))
        lab.log("flood: winch held at most %d fds and %d tmp/ files of flood blobs (%d samples)" % (
            max_fds, max_tmp, samples))
        # What the issue measured before: a cold manifest waited 29.7 s, 968 temp files,
        # 2,952 fds. The bounds here are generous; the figures above are the measure.
        self.assertLess(cached_s, 1.0)
        self.assertLess(cold_s, 1.0)
        self.assertEqual(len(out), self.N, "every flood request got an answer")
        self.assertEqual(set(statuses) - {404, 503}, set(), statuses)
        self.assertGreater(statuses.get(503, 0), 0, "the bounded queue refused some")
        self.assertGreater(statuses.get(404, 0), 0, "some reached the upstream")
        for h in busy:
            self.assertEqual(h.get("retry-after"), "5")
        self.assertEqual(max_tmp, 0, "temp files for blobs the upstream never sent")
        self.assertLess(max_fds, self.N + 150)
        # The queue's deadline (10 s) bounds the flood, whatever the upstream does.
        self.assertLess(flood_s, 30)
        self.assertTrue(self.winch.running())
        # A full queue is winch's own limit, not the upstream failing: the breaker stays shut.
        self.assertNotIn("is down after", self.winch.log())

        # A 404 is remembered (negative_ttl_s, 10 s by default: the latest one, so it is still
        # fresh): asking again costs the upstream nothing and answers at once.
        p404 = max((t, p) for p, (st, _h, t) in out.items() if st == 404)[1]
        before = self.fake.count(path=p404)
        r, secs = self.timed_get(p404)
        self.assertOciError(r, 404, "BLOB_UNKNOWN", "a remembered 404")
        self.assertEqual(self.fake.count(path=p404), before)
        self.assertLess(secs, 0.5)
        r = lab.head(self.w, p404)
        self.assertStatus(r, 404, "HEAD of a remembered 404")
        self.assertEqual(self.fake.count(path=p404), before)


    def test_head_flood(self):
        """Blob HEADs go in the bulk lane too: 500 of them cannot hold the connections kept for
        manifests."""
        rnd = random.Random(10)
        paths = ["/v2/lab/flood/blobs/sha256:%064x" % rnd.getrandbits(256) for _ in range(500)]
        out = {}
        th = threading.Thread(target=lambda: out.update(flood(self.w, paths, method="HEAD")),
                              daemon=True)
        n0 = self.fake.count(contains="/blobs/")
        th.start()
        lab.wait_for(lambda: self.fake.count(contains="/blobs/") - n0 >= 20, 20,
                     what="the HEAD flood to reach the upstream")
        cold_r, cold_s = self.timed_get("/v2/lab/flood/manifests/cold2")
        th.join(60)
        statuses = {}
        for st, _h, _t in out.values():
            statuses[st] = statuses.get(st, 0) + 1
        lab.log("HEAD flood: statuses %s; cold manifest answered in %.1f ms" % (
            sorted(statuses.items()), cold_s * 1000))
        self.assertStatus(cold_r, 200, "cold manifest during the HEAD flood")
        self.assertLess(cold_s, 1.0)
        self.assertEqual(len(out), 500)
        self.assertEqual(set(statuses) - {404, 503}, set(), statuses)


class OversizedAndEndless(lab.TestCase):
    """The fake answers these manifest paths with bodies that must never be read whole."""

    @classmethod
    def setUpClass(cls):
        cls.fake = BodyBomb()
        cls.winch = lab.Winch([("docker.io", cls.fake.url)])

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.fake.stop()

    def check(self, kind, status, code, max_s, w=None):
        path = "/v2/lab/%s/manifests/sha256:%064x" % (kind, random.getrandbits(256))
        t0 = now()
        r = lab.get((w or self.winch).hostport, path, H, timeout=60)
        secs = now() - t0
        self.assertOciError(r, status, code, kind)
        lab.wait_for(lambda: path in self.fake.closed, 10, what="the upstream to see the close")
        sent, closed_after = self.fake.closed[path]
        lab.log("%s: winch answered %d in %.2f s; the upstream had sent %d body bytes when it "
                "saw the connection close (%.2f s)" % (kind, status, secs, sent, closed_after))
        self.assertLess(secs, max_s)
        return sent

    def test_5gib_content_length(self):
        sent = self.check("big", 502, "UNAVAILABLE", 2.0)
        self.assertLess(sent, 64 << 20, "winch read on past the bound")

    def test_endless_chunked(self):
        sent = self.check("endless", 502, "UNAVAILABLE", 5.0)
        self.assertLess(sent, 256 << 20)

    def test_trickle_hits_the_deadline(self):
        w = lab.Winch([("docker.io", self.fake.url)], config={"upstream_fetch_deadline_ms": 2000})
        try:
            self.check("trickle", 504, "UNAVAILABLE", 4.0, w)
        finally:
            w.stop()


class BodyBomb(lab.FakeUpstream):
    """/v2/lab/big/...: 200 with Content-Length 5 GiB; /v2/lab/endless/...: chunked, never
    ends; /v2/lab/trickle/...: chunked, 10 bytes every 50 ms, never ends. Each keeps sending
    until a send fails and records (bytes sent, seconds) in closed[path]."""

    def __init__(self):
        self.closed = {}
        super().__init__()

    def _answer(self, c, rq):
        kind = rq.path.split("/")[3] if rq.path.count("/") >= 4 else ""
        if kind not in ("big", "endless", "trickle"):
            return super()._answer(c, rq)
        t0, sent = now(), 0
        chunk = b"\0" * 65536
        try:
            if kind == "big":
                self._send_head(c, 200, [("Content-Type", lab.MT_OCI_MANIFEST),
                                         ("Content-Length", str(5 << 30))])
                while not self.stopped.is_set():
                    c.sendall(chunk)
                    sent += len(chunk)
            else:
                self._send_head(c, 200, [("Content-Type", lab.MT_OCI_MANIFEST),
                                         ("Transfer-Encoding", "chunked")])
                piece = chunk if kind == "endless" else b" " * 10
                while not self.stopped.is_set():
                    c.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent += len(piece)
                    if kind == "trickle":
                        time.sleep(0.05)
        except OSError:
            pass
        with self.cond:
            self.closed[rq.path] = (sent, now() - t0)
        return False


class MetadataService:
    """Stands for a cloud metadata service: any request is recorded and answered with JSON."""

    def __init__(self):
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind((lab.LOOPBACK, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(5)
                try:
                    data = c.recv(65536)
                    self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    body = b'{"AccessKeyId":"AKIA-not-a-manifest","schemaVersion":2}'
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" %
                              (len(body), body))
                except OSError:
                    pass

    def stop(self):
        self.stopped = True
        lab._close_listener(self.sock)


class Redirector(lab.FakeUpstream):
    """/v2/lab/redirect/...: 302 to `target` + "/latest/meta-data/"; /v2/lab/realm/...: a
    Bearer challenge whose realm is `target` + "/token"."""

    target = None

    def _answer(self, c, rq):
        if rq.path.startswith("/v2/lab/redirect/"):
            self._send_head(c, 302, [("Location", self.target + "/latest/meta-data/"),
                                     ("Content-Length", "0")])
            return True
        if rq.path.startswith("/v2/lab/realm/"):
            chal = 'Bearer realm="%s/token",service="x",scope="repository:lab/realm:pull"' % (
                self.target)
            self._send_head(c, 401, [("WWW-Authenticate", chal), ("Content-Length", "0")])
            return True
        return super()._answer(c, rq)


class RedirectTargets(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.meta = MetadataService()
        cls.fake = Redirector()
        cls.fake.target = "http://0.0.0.0:%d" % cls.meta.port

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()
        cls.meta.stop()

    def get(self, w, kind):
        path = "/v2/lab/%s/manifests/sha256:%064x" % (kind, random.getrandbits(256))
        return lab.get(w.hostport, path, H)

    def test_refused_without_allow_list(self):
        w = lab.Winch([("docker.io", self.fake.url)])
        try:
            n0 = len(self.meta.requests)
            r = self.get(w, "redirect")
            self.assertOciError(r, 502, "UNAVAILABLE", "redirect to 0.0.0.0")
            self.assertIn("address it may not reach", r.body.decode())
            r = self.get(w, "realm")
            self.assertOciError(r, 502, "UNAVAILABLE", "token realm on 0.0.0.0")
            self.assertEqual(self.meta.requests[n0:], [], "the metadata service was reached")
            self.assertIn("refusing http://0.0.0.0:%d at 0.0.0.0: unspecified addresses" %
                          self.meta.port, w.log())
        finally:
            w.stop()

    def test_allow_list(self):
        w = lab.Winch([], config={"upstreams": [
            {"name": "docker.io", "url": self.fake.url, "allow_redirect_hosts": ["0.0.0.0"]}]})
        try:
            n0 = len(self.meta.requests)
            r = self.get(w, "redirect")
            # Followed now; what came back is no manifest, so it is still refused.
            self.assertOciError(r, 502, "UNAVAILABLE", "redirect to an allowed host")
            self.assertEqual(len(self.meta.requests) - n0, 1)
            self.assertTrue(self.meta.requests[-1].startswith("GET /latest/meta-data/"))
        finally:
            w.stop()


if __name__ == "__main__":
    lab.main()
