#!/usr/bin/python3
"""When the upstream is gone or hangs:
  - cached manifests (by tag, served stale, and by digest) and blobs keep working, and
    tags/list of a cached repository lists the tags winch has seen;
  - uncached content gets a clean 502/503/504 OCI error JSON, fast, with no internals (no
    upstream address, no dial error text, no paths);
  - with an upstream that accepts connections and never answers, a cached tag is still served
    within upstream_response_timeout_ms (tag_ttl_s 0, so every tag request revalidates), and
    uncached content fails within that timeout too."""

import time

import lab

H = lab.accept

INTERNALS = ("dial", "refused", "ECONNREFUSED", "errno", "connect(", "127.0.0.1", "timed out:",
             "uv_", "llhttp", "EOF")


class UpstreamStopped(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()
        cls.winch = lab.Winch([("docker.io", cls.up.url)], config={"tag_ttl_s": 0})

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.up.stop()

    def assertCleanUpstreamError(self, r, what, head=False):
        self.assertIn(r.status, (502, 503, 504), "%s: %r" % (what, r))
        if head:
            return
        codes = r.error_codes()
        self.assertIsNotNone(codes, "%s: OCI error JSON expected: %r" % (what, r))
        text = r.body.decode(errors="replace")
        for word in INTERNALS + (self.up.hostport, str(self.up.port)):
            self.assertNotIn(word, text, "%s: the error leaks internals: %r" % (what, r))
        self.assertTrue(r.header("Content-Type", "").startswith("application/json"), what)

    def test_cached_content_survives(self):
        w = self.winch.hostport
        img = self.data["images"]["busybox"]
        multi = self.data["images"]["multi"]
        tag_path = "/v2/%s/manifests/%s" % (img["repo"], img["tag"])
        warm = {}
        for path in (tag_path, "/v2/%s/manifests/%s" % (img["repo"], img["digest"]),
                     "/v2/lab/multi/manifests/v1",
                     "/v2/lab/multi/manifests/" + multi["platforms"][1]["digest"]):
            r = lab.get(w, path, H(lab.SKOPEO_ACCEPT))
            self.assertStatus(r, 200, "warming " + path)
            warm[path] = r
        for d in img["blobs"]:
            self.assertEqual(lab.fetch_blob_digest(w, "/v2/%s/blobs/%s" % (img["repo"], d))[:2],
                             (200, d), "warming blob")
        time.sleep(1)  # index writes land in the background (see test_api TagTtl)
        self.up.stop()
        for path, r0 in warm.items():
            t0 = time.monotonic()
            r = lab.get(w, path, H(lab.SKOPEO_ACCEPT))
            self.assertStatus(r, 200, "cached %s with the upstream stopped" % path)
            self.assertEqual(r.body, r0.body, path)
            self.assertEqual(r.header("Docker-Content-Digest"), r0.header("Docker-Content-Digest"))
            self.assertEqual(r.header("Content-Type"), r0.header("Content-Type"))
            self.assertLess(time.monotonic() - t0, 5, "%s took too long" % path)
            r = lab.head(w, path, H(lab.SKOPEO_ACCEPT))
            self.assertStatus(r, 200, "cached HEAD %s with the upstream stopped" % path)
            self.assertEqual(r.header("Docker-Content-Digest"), r0.header("Docker-Content-Digest"))
        for d, info in img["blobs"].items():
            self.assertEqual(lab.fetch_blob_digest(w, "/v2/%s/blobs/%s" % (img["repo"], d)),
                             (200, d, info["size"]), "cached blob with the upstream stopped")
            r = lab.get(w, "/v2/%s/blobs/%s" % (img["repo"], d), [("Range", "bytes=1-2")])
            self.assertStatus(r, 206, "cached blob Range with the upstream stopped")

        # Uncached: clean 5xx errors, quickly.
        r16 = self.data["images"]["range16"]
        cases = [("GET", "/v2/lab/range16/manifests/v1"),
                 ("HEAD", "/v2/lab/range16/manifests/v1"),
                 ("GET", "/v2/lab/range16/manifests/" + r16["digest"]),
                 ("GET", "/v2/lab/range16/blobs/" + r16["layers"][0]),
                 ("HEAD", "/v2/lab/range16/blobs/" + r16["layers"][0]),
                 ("GET", "/v2/lab/multi/manifests/" + multi["platforms"][2]["digest"])]
        for method, path in cases:
            t0 = time.monotonic()
            r = lab.request(w, method, path, H(lab.SKOPEO_ACCEPT))
            self.assertCleanUpstreamError(r, "%s %s (uncached, upstream stopped)" % (method, path),
                                          head=(method == "HEAD"))
            self.assertLess(time.monotonic() - t0, 5, "%s %s took too long" % (method, path))
        # tags/list: an unknown repository gets a clean error; a cached one lists the tags winch
        # has seen (the upstream cannot be asked).
        r = lab.get(w, "/v2/lab/range16/tags/list")
        self.assertCleanUpstreamError(r, "tags/list of an uncached repository, upstream stopped")
        r = lab.get(w, "/v2/%s/tags/list" % img["repo"])
        self.assertStatus(r, 200, "tags/list of a cached repository, upstream stopped")
        self.assertEqual(r.json(), {"name": img["repo"], "tags": [img["tag"]]}, r)
        r = lab.get(w, "/v2/lab/multi/tags/list?n=1")
        self.assertStatus(r, 200, "cached tags/list with n, upstream stopped")
        self.assertEqual(r.json()["tags"], ["v1"], r)
        # winch itself is fine.
        self.assertStatus(lab.get(w, "/v2/"), 200, "/v2/ with the upstream stopped")


class UpstreamHangs(lab.TestCase):
    TIMEOUT_MS = 1000

    def setUp(self):
        self.fake = lab.FakeUpstream()
        self.winch = lab.Winch([("docker.io", self.fake.url)],
                               config={"tag_ttl_s": 0,
                                       "upstream_response_timeout_ms": self.TIMEOUT_MS,
                                       "upstream_connect_timeout_ms": 1000})

    def tearDown(self):
        self.fake.clear_faults()
        self.winch.stop()
        self.fake.stop()

    def test_cached_tag_served_within_timeout(self):
        w = self.winch.hostport
        layer = b"layer bytes " * 1000
        md, mb, cd, lds = self.fake.add_image("lab/hang", "v1", [layer])
        self.fake.add_image("lab/hang", "v2", [b"other layer"])  # never fetched
        path = "/v2/lab/hang/manifests/v1"
        r = lab.get(w, path, H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "warming the tag")
        self.assertEqual(r.body, mb)
        self.assertEqual(lab.get(w, "/v2/lab/hang/blobs/" + lds[0]).body, layer)
        # Index writes land in the background; read-your-writes is test_api's TagTtl.
        time.sleep(1)
        hang = lab.Fault("hang")
        self.fake.fault_all = hang
        limit = self.TIMEOUT_MS / 1000.0 + 3.0
        for method in ("GET", "HEAD"):
            t0 = time.monotonic()
            r = lab.request(w, method, path, H(lab.SKOPEO_ACCEPT), timeout=30)
            elapsed = time.monotonic() - t0
            self.assertStatus(r, 200, "%s cached tag, upstream hanging" % method)
            self.assertEqual(r.header("Docker-Content-Digest"), md)
            if method == "GET":
                self.assertEqual(r.body, mb)
            self.assertLess(elapsed, limit, "%s cached tag took %.1fs with a hanging upstream "
                                            "(timeout %d ms)" % (method, elapsed, self.TIMEOUT_MS))
        self.assertTrue(hang.reached.is_set(), "winch did not revalidate the tag upstream "
                                               "(tag_ttl_s 0)")
        # Cached by digest and blobs: no upstream needed at all.
        t0 = time.monotonic()
        self.assertEqual(lab.get(w, "/v2/lab/hang/manifests/" + md, H(lab.SKOPEO_ACCEPT)).body, mb)
        self.assertEqual(lab.get(w, "/v2/lab/hang/blobs/" + lds[0]).body, layer)
        self.assertLess(time.monotonic() - t0, 2, "cached digest/blob waited on the upstream")
        # Uncached: a timeout error, within the timeout plus slack.
        for method, p in (("GET", "/v2/lab/hang/manifests/v2"),
                          ("GET", "/v2/lab/hang/blobs/" + lab.sha256_digest(b"other layer"))):
            t0 = time.monotonic()
            r = lab.request(w, method, p, H(lab.SKOPEO_ACCEPT), timeout=30)
            elapsed = time.monotonic() - t0
            self.assertIn(r.status, (502, 503, 504), "%s %s with a hanging upstream: %r" % (
                method, p, r))
            self.assertIsNotNone(r.error_codes(), r)
            self.assertLess(elapsed, limit, "%s %s took %.1fs" % (method, p, elapsed))


class StaleWhileRevalidate(lab.TestCase):
    """A hung upstream: a stale cached tag answers within tag_revalidate_wait_ms (plus a little),
    the revalidation finishes (or times out) in the background; once the breaker opens the
    tag answers at once and uncached content fails fast with 503 + Retry-After; when the
    upstream answers again, a probe closes the breaker."""

    WAIT_MS = 400

    def setUp(self):
        self.fake = lab.FakeUpstream()
        self.winch = lab.Winch([("docker.io", self.fake.url)],
                               config={"tag_ttl_s": 0,
                                       "tag_revalidate_wait_ms": self.WAIT_MS,
                                       "upstream_response_timeout_ms": 1500,
                                       "upstream_connect_timeout_ms": 1000,
                                       "upstream_failure_threshold": 2,
                                       "upstream_probe_interval_ms": 300})

    def tearDown(self):
        self.fake.clear_faults()
        self.winch.stop()
        self.fake.stop()

    def timed_get(self, path, headers=None):
        t0 = time.monotonic()
        r = lab.get(self.winch.hostport, path, headers or [], timeout=30)
        return r, time.monotonic() - t0

    def test_stale_then_breaker_then_recovery(self):
        md, mb, cd, lds = self.fake.add_image("lab/swr", "v1", [b"swr layer"])
        path = "/v2/lab/swr/manifests/v1"
        r, _ = self.timed_get(path, H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "warming the tag")
        time.sleep(0.5)  # the index write lands
        self.fake.fault_all = lab.Fault("hang")
        # Stale while revalidating: each answer within the wait plus slack, while the
        # revalidation still waits for the hung upstream.
        waits = []
        for _ in range(2):
            r, dt = self.timed_get(path, H(lab.SKOPEO_ACCEPT))
            waits.append(dt)
            self.assertStatus(r, 200, "stale tag, upstream hanging")
            self.assertEqual(r.body, mb)
            self.assertEqual(r.header("Docker-Content-Digest"), md)
        lab.log("stale answers with a hung upstream: %s s (wait %d ms)" % (
            ["%.3f" % w for w in waits], self.WAIT_MS))
        for w in waits:
            self.assertGreaterEqual(w, self.WAIT_MS / 1000.0 - 0.05)
            self.assertLess(w, self.WAIT_MS / 1000.0 + 0.5, "stale answer waited too long")
        # The revalidations time out (1.5 s each): two failures in a row open the breaker.
        # Requests keep coming meanwhile (each one past a finished check starts the next).
        def opened():
            self.timed_get(path, H(lab.SKOPEO_ACCEPT))
            return "is down after" in self.winch.log()
        lab.wait_for(opened, 15, what="the breaker to open")
        r, dt = self.timed_get(path, H(lab.SKOPEO_ACCEPT))
        lab.log("stale answer with the breaker open: %.3f s" % dt)
        self.assertStatus(r, 200, "stale tag, breaker open")
        self.assertLess(dt, 0.2, "a stale tag waited although the upstream is known down")
        r, dt = self.timed_get("/v2/lab/swr/blobs/" + lab.sha256_digest(b"not cached"))
        self.assertOciError(r, 503, "UNAVAILABLE", "uncached blob, breaker open")
        self.assertIsNotNone(r.header("Retry-After"))
        self.assertLess(dt, 0.2, "an uncached blob waited although the upstream is known down")
        # An upstream answering 503 to everything is still down: its probes keep the breaker
        # open (they are answered, but with the failure that opened it).
        self.fake.fault_all = lab.Fault("status", status=503)
        n0 = self.fake.count("GET", "/v2/")
        lab.wait_for(lambda: self.fake.count("GET", "/v2/") >= n0 + 3, 10,
                     what="three probes answered 503")
        self.assertNotIn("answers again", self.winch.log(), "a 503 probe closed the breaker")
        r, dt = self.timed_get("/v2/lab/swr/blobs/" + lab.sha256_digest(b"not cached"))
        self.assertOciError(r, 503, "UNAVAILABLE", "uncached blob, upstream answering 503")
        self.assertLess(dt, 0.2, "the breaker let a request through to a 503 upstream")
        # The upstream answers again: a probe closes the breaker, tags revalidate upstream.
        self.fake.clear_faults()
        lab.wait_for(lambda: "answers again" in self.winch.log(), 10,
                     what="a probe to close the breaker")
        self.fake.add_image("lab/swr", "v1", [b"swr layer, pushed again"])
        new_md = self.fake.manifests[("lab/swr", "v1")]
        r, _ = self.timed_get(path, H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "tag after recovery")
        self.assertEqual(r.header("Docker-Content-Digest"), lab.sha256_digest(new_md[1]),
                         "the tag revalidated upstream after recovery")


if __name__ == "__main__":
    lab.main()
