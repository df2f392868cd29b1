#!/usr/bin/python3
"""Operating winch: /metrics, Cache-Status, /healthz, /readyz and unknown paths, against the real
docker-registry (behind a forwarder of our own that can hold the upstream's answers):
  - a scripted mix of pulls (manifest miss, hit, stale, denied, upstream 404 then negative; blob
    miss, coalesced, hit, denied), then /metrics parsed with prometheus_client's text parser:
    every request and cache-result counter equals what the test did, the bytes served from the
    cache (the bandwidth saved) equal the test's own sum, the blob bytes fetched upstream equal
    the one fill, and the upstream exchanges counted equal the requests the forwarder saw;
  - Cache-Status (RFC 9211) on a miss, a hit, a coalesced waiter and a stale answer;
  - the JSON access log (log_format "json"): every line parses and carries time, request id,
    client address, method, target, status, bytes, duration, cache result, upstream and user
    agent; a TLS handshake on the plain listener is logged once as such; an upstream 404 is a
    miss, not an error;
  - /healthz, /readyz (503 while the cache's tmp/ cannot take a file: chattr +i, since the
    suite runs as root), unknown paths answer 404."""

import json
import os
import socket
import ssl
import subprocess
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

import lab

H = lab.accept
TTL_S = 3


class GatedForwarder(lab.CountingForwarder):
    """A CountingForwarder whose upstream -> winch direction can be held: while held, request
    heads still pass (and are counted), answers wait."""

    def __init__(self, target_port):
        self.gate = threading.Event()
        self.gate.set()
        super().__init__(target_port)

    def _pump(self, src, dst, cid, parse):
        if parse:
            return super()._pump(src, dst, cid, parse)
        real = dst.sendall

        class Held:
            def __init__(self, gate):
                self.gate = gate

            def sendall(self, data):
                self.gate.wait(120)
                return real(data)

            def __getattr__(self, name):
                return getattr(dst, name)

            def __hash__(self):
                return hash(dst)

            def __eq__(self, other):
                return other is dst or other is self

        return super()._pump(src, Held(self.gate), cid, parse)


class Metrics(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.reg = lab.seeded_registry(count=False)
        cls.fwd = GatedForwarder(cls.reg.port)
        cls.winch = lab.Winch([("docker.io", "http://" + cls.fwd.hostport)], config={
            "tag_ttl_s": TTL_S, "tag_revalidate_wait_ms": 300, "negative_ttl_s": 600,
            "policy": [{"match": "docker.io/lab/tools/*", "deny": True, "message": "no tools"}]})
        cls.scrapes = 0

    @classmethod
    def tearDownClass(cls):
        cls.fwd.gate.set()
        cls.winch.stop()
        cls.fwd.stop()
        cls.reg.stop()

    def scrape(self):
        r = lab.get(self.winch.hostport, "/metrics")
        self.assertStatus(r, 200, "/metrics")
        self.assertTrue(r.header("Content-Type", "").startswith("text/plain; version=0.0.4"))
        type(self).scrapes += 1
        out = {}
        for fam in text_string_to_metric_families(r.body.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, m, name, **labels):
        return m.get((name, tuple(sorted(labels.items()))), 0)

    def test_mix(self):
        w = self.winch.hostport
        img = self.data["images"]["busybox"]
        tools = self.data["images"]["busybox-tools"]
        r16 = self.data["images"]["range16"]
        acc = H(lab.SKOPEO_ACCEPT)
        want_req = {}  # (route, class) -> n
        want_res = {}  # (route, result) -> n
        saved = 0

        def did(route, r, result):
            want_req[(route, "%dxx" % (r.status // 100))] = \
                want_req.get((route, "%dxx" % (r.status // 100)), 0) + 1
            want_res[(route, result)] = want_res.get((route, result), 0) + 1

        tag_path = "/v2/%s/manifests/%s" % (img["repo"], img["tag"])
        # Manifest: miss, then hit.
        r = lab.get(w, tag_path, acc)
        self.assertStatus(r, 200, "cold tag")
        self.assertEqual(r.header("Cache-Status"), "winch; fwd=miss; stored")
        did("manifest", r, "miss")
        t_tag = time.monotonic()
        r = lab.get(w, tag_path, acc)
        self.assertStatus(r, 200, "warm tag")
        self.assertEqual(r.header("Cache-Status"), "winch; hit")
        did("manifest", r, "hit")
        saved += len(r.body)
        manifest_body = r.body

        # Denied by the policy: manifest and blob.
        r = lab.get(w, "/v2/%s/manifests/%s" % (tools["repo"], tools["tag"]), acc)
        self.assertOciError(r, 403, "DENIED", "denied manifest")
        did("manifest", r, "denied")
        r = lab.get(w, "/v2/%s/blobs/%s" % (tools["repo"], tools["layers"][0]))
        self.assertOciError(r, 403, "DENIED", "denied blob")
        did("blob", r, "denied")

        # Upstream 404, then the remembered 404.
        r = lab.get(w, "/v2/%s/manifests/no-such-tag" % img["repo"], acc)
        self.assertOciError(r, 404, "MANIFEST_UNKNOWN", "unknown tag")
        did("manifest", r, "miss")
        r = lab.get(w, "/v2/%s/manifests/no-such-tag" % img["repo"], acc)
        self.assertOciError(r, 404, "MANIFEST_UNKNOWN", "unknown tag again")
        self.assertEqual(r.header("Cache-Status"), "winch; hit; detail=negative")
        did("manifest", r, "negative")

        # Blob: a miss held at the upstream, a second client joins the fill (coalesced).
        layer = r16["layers"][0]
        size = r16["blobs"][layer]["size"]
        bpath = "/v2/%s/blobs/%s" % (r16["repo"], layer)
        self.fwd.gate.clear()
        results = {}

        def pull(key):
            st = lab.Stream(w, bpath)
            results[key] = (st, st.read_all(keep=True))

        a = threading.Thread(target=pull, args=("a",))
        a.start()
        lab.wait_for(lambda: self.fwd.count("GET", bpath) == 1, 20, what="the fill's upstream GET")
        b = threading.Thread(target=pull, args=("b",))
        b.start()
        lab.wait_for(lambda: self.value(self.scrape(), "winch_fill_waiters") == 2, 20,
                     what="two clients on the fill")
        self.fwd.gate.set()
        a.join(120)
        b.join(120)
        for key, status in (("a", "winch; fwd=miss; stored"), ("b", "winch; fwd=miss; collapsed")):
            st, body = results[key]
            self.assertEqual(st.status, 200, key)
            self.assertEqual(len(body), size, key)
            self.assertEqual(lab.sha256_digest(body), layer, key)
            self.assertEqual(st.header("Cache-Status"), status, key)
            st.close()
        want_req[("blob", "2xx")] = want_req.get(("blob", "2xx"), 0) + 2
        want_res[("blob", "miss")] = 1
        want_res[("blob", "coalesced")] = 1
        saved += size
        # ... and a hit.
        r = lab.get(w, bpath)
        self.assertStatus(r, 200, "warm blob")
        self.assertEqual(r.header("Cache-Status"), "winch; hit")
        did("blob", r, "hit")
        saved += len(r.body)

        # Stale: the tag is past its TTL and the upstream holds its answer.
        time.sleep(max(0, TTL_S + 0.5 - (time.monotonic() - t_tag)))
        self.fwd.gate.clear()
        r = lab.get(w, tag_path, acc)
        self.fwd.gate.set()
        self.assertStatus(r, 200, "stale tag")
        self.assertEqual(r.body, manifest_body)
        self.assertEqual(r.header("Cache-Status"), "winch; fwd=stale; detail=served-stale")
        did("manifest", r, "stale")
        saved += len(r.body)

        # Operator endpoints and an unknown path.
        r = lab.get(w, "/healthz")
        self.assertStatus(r, 200, "/healthz")
        did("ops", r, "local")
        r = lab.get(w, "/readyz")
        self.assertStatus(r, 200, "/readyz")
        self.assertIn(b"upstream docker.io: up", r.body)
        did("ops", r, "local")
        r = lab.get(w, "/nope")
        self.assertOciError(r, 404, "UNSUPPORTED", "unknown path")
        did("other", r, "error")

        # Everything the upstream was asked has been answered (the stale tag's check too).
        lab.wait_for(lambda: self.value(self.scrape(), "winch_upstream_fetches_in_flight") == 0
                     and self.value(self.scrape(), "winch_fills_in_flight") == 0, 20,
                     what="upstream work to settle")
        before = self.scrapes
        m = self.scrape()
        want_req[("ops", "2xx")] = want_req.get(("ops", "2xx"), 0) + before
        want_res[("ops", "local")] = want_res.get(("ops", "local"), 0) + before

        got_req = {(dict(k[1])["route"], dict(k[1])["code"]): v for k, v in m.items()
                   if k[0] == "winch_requests_total" and v}
        self.assertEqual(got_req, {k: float(v) for k, v in want_req.items()})
        got_res = {(dict(k[1])["route"], dict(k[1])["result"]): v for k, v in m.items()
                   if k[0] == "winch_cache_results_total" and v}
        self.assertEqual(got_res, {k: float(v) for k, v in want_res.items()})
        self.assertEqual(self.value(m, "winch_served_bytes_total", upstream="docker.io",
                                    source="cache"), saved, "bytes saved")
        self.assertEqual(self.value(m, "winch_upstream_fetched_bytes_total", upstream="docker.io",
                                    kind="blob"), size, "blob bytes fetched upstream")
        answered = sum(v for k, v in m.items() if k[0] == "winch_upstream_responses_total")
        self.assertEqual(answered, self.fwd.count(), "upstream exchanges: %s" % [
            (q.method, q.target) for q in self.fwd.seen()])
        self.assertEqual(self.value(m, "winch_upstream_request_duration_seconds_count",
                                    upstream="docker.io"), answered)
        self.assertEqual(self.value(m, "winch_upstream_errors_total", upstream="docker.io"), 0)
        self.assertEqual(self.value(m, "winch_fill_waiters"), 0)
        self.assertGreaterEqual(self.value(m, "winch_connections_open"), 1)
        self.assertEqual(self.value(m, "winch_upstream_up", upstream="docker.io"), 1)

    def test_readyz_unwritable(self):
        w = self.winch.hostport
        tmp = os.path.join(self.winch.cache_dir, "tmp")
        subprocess.run(["chattr", "+i", tmp], check=True)
        try:
            r = lab.get(w, "/readyz")
            self.assertStatus(r, 503, "/readyz with tmp/ immutable")
            self.assertIn(b"cache_dir writable: no", r.body)
            r = lab.get(w, "/healthz")
            self.assertStatus(r, 200, "/healthz stays up")
        finally:
            subprocess.run(["chattr", "-i", tmp], check=True)
        r = lab.get(w, "/readyz")
        self.assertStatus(r, 200, "/readyz once writable again")
        for path in ("/", "/index.html", "/v1/", "/metricsx", "/v2x"):
            self.assertStatus(lab.get(w, path), 404, path)
        self.assertStatus(lab.request(w, "POST", "/metrics"), 405, "POST /metrics")


class AccessLog(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()
        cls.winch = lab.Winch([("docker.io", cls.up.url)], config={"log_format": "json"},
                              log_level="info")

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.up.stop()

    def access_lines(self):
        out = []
        for line in self.winch.log().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))  # every JSON line parses
        return out

    def test_json_lines(self):
        w = self.winch.hostport
        img = self.data["images"]["busybox"]
        ua = 'ci-runner/1.0 "quoted"\tand tab'
        path = "/v2/%s/manifests/%s" % (img["repo"], img["tag"])
        r = lab.get(w, path, H(lab.SKOPEO_ACCEPT) + [("User-Agent", ua),
                                                     ("Authorization", "Bearer s3cr3t-token")])
        self.assertStatus(r, 200, path)
        body_len = len(r.body)
        r = lab.get(w, "/v2/%s/manifests/missing" % img["repo"], H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 404, "upstream 404")
        # A TLS client on the plain port: one line, said as such.
        raw = socket.create_connection(("127.0.0.1", self.winch.port), timeout=10)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with self.assertRaises((ssl.SSLError, OSError)):
            ctx.wrap_socket(raw, server_hostname="localhost")
        raw.close()
        lab.wait_for(lambda: len(self.access_lines()) >= 3, 10, what="three access lines")
        lines = self.access_lines()
        self.assertNotIn("s3cr3t", self.winch.log())
        fields = {"time", "level", "msg", "req", "peer", "method", "target", "status", "bytes",
                  "ms", "cache", "upstream", "ua"}
        for e in lines:
            self.assertTrue(fields <= set(e), "fields missing in %r" % e)
        ok = [e for e in lines if e["target"] == path]
        self.assertEqual(len(ok), 1, lines)
        e = ok[0]
        self.assertEqual((e["method"], e["status"], e["cache"], e["upstream"], e["peer"]),
                         ("GET", 200, "miss", "docker.io", "127.0.0.1"))
        self.assertEqual(e["bytes"], body_len)
        self.assertIn("ci-runner/1.0", e["ua"])
        self.assertNotIn("\t", e["ua"])  # control bytes escaped
        self.assertIsInstance(e["req"], int)
        miss = [e for e in lines if e["target"].endswith("/manifests/missing")]
        self.assertEqual([(m["status"], m["cache"]) for m in miss], [(404, "miss")])
        hello = [e for e in lines if "TLS handshake" in e.get("note", "")]
        self.assertEqual(len(hello), 1, lines)
        self.assertNotEqual(hello[0]["cache"], "error")
        bad = [e for e in lines if e["cache"] == "error"]
        self.assertEqual(bad, [])


if __name__ == "__main__":
    lab.main()
