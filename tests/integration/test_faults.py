#!/usr/bin/python3
"""Upstream faults, scripted with the fake upstream:
  - the upstream cuts a blob stream at byte N (and at the same offset on every resume): the
    client sees a cut connection, never a complete-looking short body; nothing is cached, tmp/
    is cleaned, and the next GET fetches again and succeeds;
  - the upstream serves wrong bytes for a digest (blob or manifest): the client never gets a
    successful response with those bytes; nothing is indexed; the next GET fetches again;
  - 429 from the upstream: 429 TOOMANYREQUESTS with Retry-After for the client;
  - 500 / 404 from the upstream: clean OCI errors."""

import http.client
import os
import random
import threading
import time

import lab

H = lab.accept


class Faults(lab.TestCase):
    def setUp(self):
        self.fake = lab.FakeUpstream()
        self.winch = lab.Winch([("docker.io", self.fake.url)],
                               config={"upstream_response_timeout_ms": 5000,
                                       "upstream_idle_timeout_ms": 5000})
        self.w = self.winch.hostport

    def tearDown(self):
        self.fake.clear_faults()
        self.winch.stop()
        self.fake.stop()

    def assertCut(self, path, size, what):
        """A GET whose answer must not look like a success: either an error status, or a 200
        whose body stops short of Content-Length with the connection closed."""
        try:
            s = lab.Stream(self.w, path, timeout=30)
        except (http.client.HTTPException, OSError):
            return "no response"
        try:
            if s.status != 200:
                self.assertIn(s.status // 100, (5,), "%s: status %d" % (what, s.status))
                return "status %d" % s.status
            self.assertEqual(s.header("Content-Length"), str(size), what + ": Content-Length")
            self.assertIsNone(s.header("Transfer-Encoding"), what)
            try:
                s.read_all()
            except (http.client.IncompleteRead, OSError):
                return "cut after %d bytes" % s.received
            self.fail("%s: the client got a complete %d-byte body (digest %s)" % (
                what, s.received, s.digest()))
        finally:
            s.close()

    def blob_not_cached(self, digest):
        lab.wait_for(lambda: not self.winch.tmp_files(), 10, what="tmp/ to be cleaned")
        self.assertFalse(os.path.exists(self.winch.blob_path(digest)),
                         "a failed blob is in the store")
        self.assertEqual(self.winch.verify_store(), [])

    def test_cut_stream(self):
        blob = random.Random(5).randbytes(8 << 20)
        digest = self.fake.add_blob(blob)
        path = "/v2/lab/cut/blobs/" + digest
        self.fake.set_fault(path, lab.Fault("cut", after=2 << 20))
        how = self.assertCut(path, len(blob), "upstream cut at 2 MiB")
        lab.log("cut stream: client saw %s" % how)
        self.blob_not_cached(digest)
        self.fake.clear_faults()
        before = self.fake.count("GET", path)
        self.assertEqual(lab.fetch_blob_digest(self.w, path), (200, digest, len(blob)))
        self.assertGreater(self.fake.count("GET", path), before, "refetched after the cut")
        lab.wait_for(lambda: os.path.exists(self.winch.blob_path(digest)), 10,
                     what="the blob in the store")

    def test_spliced_fill_resumes_and_verifies(self):
        """A plain-HTTP upstream's blob body goes socket -> pipe -> file (splice): the winch log
        says so; a cut mid-body is resumed with a Range request on the same pipe; the stored
        blob hashes to its digest; a second client, reading while the fill grows, gets the same
        bytes. With "fill_splice": false the same fill goes through the buffers."""
        blob = random.Random(7).randbytes(6 << 20)
        digest = self.fake.add_blob(blob)
        path = "/v2/lab/splice/blobs/" + digest
        self.fake.set_fault(path, lab.Fault("cut", after=(3 << 20) + 12345, times=1))
        self.assertEqual(lab.fetch_blob_digest(self.w, path), (200, digest, len(blob)))
        log = self.winch.log()
        self.assertIn("body bytes by splice", log)
        self.assertIn("resumed at byte", log)
        lab.wait_for(lambda: os.path.exists(self.winch.blob_path(digest)), 10,
                     what="the blob in the store")
        self.assertEqual(self.winch.verify_store(), [])
        self.assertEqual(self.fake.count("GET", path), 2)  # the first and the resumed request

        # Many small pipe rounds: a throttled upstream and a slow reader, both at once.
        blob2 = random.Random(17).randbytes(3 << 20)
        d2 = self.fake.add_blob(blob2)
        p2 = "/v2/lab/splice/blobs/" + d2
        self.fake.set_fault(p2, lab.Fault("throttle", rate=12 << 20, times=1))
        slow = lab.Stream(self.w, p2, timeout=30)
        first = slow.read(1000)
        self.assertEqual(lab.fetch_blob_digest(self.w, p2), (200, d2, len(blob2)))
        rest = slow.read_all(chunk=64 << 10, keep=True)
        self.assertEqual(first + rest, blob2)
        slow.close()

        # The buffered road, for comparison: same result, no splice.
        w2 = lab.Winch([("docker.io", self.fake.url)], config={"fill_splice": False})
        try:
            blob3 = random.Random(27).randbytes(2 << 20)
            d3 = self.fake.add_blob(blob3)
            self.assertEqual(lab.fetch_blob_digest(w2.hostport, "/v2/lab/splice/blobs/" + d3),
                             (200, d3, len(blob3)))
            self.assertNotIn("by splice", w2.log())
            self.assertEqual(w2.verify_store(), [])
        finally:
            w2.stop()

    def test_bytes_after_a_body(self):
        """An upstream that sends more than its Content-Length (here a forged response) after a
        blob, spliced or buffered, while the next request waits for that very connection (one
        connection to the upstream): the connection is not reused, so the forged bytes never
        answer it. (Without the check, the spliced case fails.)"""
        for splice in (True, False):
            with self.subTest(fill_splice=splice):
                self.one_conn_trailing(splice)

    def one_conn_trailing(self, splice):
        w = lab.Winch([("docker.io", self.fake.url)], name="winch-one-conn",
                      config={"upstream_max_conns": 1, "fill_splice": splice})
        self.addCleanup(w.stop)
        blob = random.Random(11 + splice).randbytes(1 << 20)
        digest = self.fake.add_blob(blob)
        path = "/v2/lab/trail/blobs/" + digest
        forged = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforge"
        self.fake.set_fault(path, lab.Fault("trailing", body=forged, seconds=0.5, times=1))
        other = random.Random(13 + splice).randbytes(300 << 10)
        d2 = self.fake.add_blob(other)
        first = {}
        t = threading.Thread(target=lambda: first.update(r=lab.fetch_blob_digest(w.hostport,
                                                                                 path)))
        t.start()
        time.sleep(0.2)  # the first holds the one connection; the second queues behind it
        second = lab.fetch_blob_digest(w.hostport, "/v2/lab/trail/blobs/" + d2)
        t.join(30)
        self.assertEqual(first.get("r"), (200, digest, len(blob)))
        self.assertEqual(second, (200, d2, len(other)))

    def test_cut_stream_range_client(self):
        """Same, for a client that asked for a range beyond the cut."""
        blob = random.Random(6).randbytes(4 << 20)
        digest = self.fake.add_blob(blob)
        path = "/v2/lab/cut/blobs/" + digest
        self.fake.set_fault(path, lab.Fault("cut", after=1 << 20))
        try:
            r = lab.get(self.w, path, [("Range", "bytes=%d-" % (3 << 20))], timeout=30)
            self.assertNotIn(r.status, (200, 206), "Range past the cut: %r" % r)
        except (http.client.HTTPException, OSError):
            pass
        self.blob_not_cached(digest)

    def test_wrong_bytes_blob(self):
        blob = random.Random(8).randbytes(3 << 20)
        digest = self.fake.add_blob(blob)
        path = "/v2/lab/wrong/blobs/" + digest
        self.fake.set_fault(path, lab.Fault("wrong"))
        how = self.assertCut(path, len(blob), "upstream sent wrong bytes")
        lab.log("wrong bytes: client saw %s" % how)
        self.blob_not_cached(digest)
        # A second client gets the same treatment: nothing was indexed.
        self.assertCut(path, len(blob), "upstream sent wrong bytes again")
        self.fake.clear_faults()
        before = self.fake.count("GET", path)
        self.assertEqual(lab.fetch_blob_digest(self.w, path), (200, digest, len(blob)))
        self.assertGreater(self.fake.count("GET", path), before)

    def test_wrong_bytes_cold_range(self):
        """A cold Range that ends before the blob does cannot hold back a last byte: on a blob up
        to range_verify_max_bytes it waits for the digest check, so wrong bytes are never
        served as a 206 (they were, with a one-year Cache-Control, before)."""
        blob = random.Random(9).randbytes(3 << 20)
        digest = self.fake.add_blob(blob)
        path = "/v2/lab/wrong/blobs/" + digest
        self.fake.set_fault(path, lab.Fault("wrong"))
        try:
            r = lab.get(self.w, path, [("Range", "bytes=0-9")], timeout=30)
            self.assertNotIn(r.status, (200, 206), "unverified range served: %r" % r)
        except (http.client.HTTPException, OSError):
            pass
        self.blob_not_cached(digest)
        # With good bytes, the same cold range is served once verified, cacheable.
        self.fake.clear_faults()
        r = lab.get(self.w, path, [("Range", "bytes=0-9")], timeout=30)
        self.assertStatus(r, 206, "cold range, good bytes")
        self.assertEqual(r.body, blob[:10])
        self.assertEqual(r.header("Cache-Control"), "max-age=31536000")

    def test_cold_range_big_blob_streams_no_store(self):
        """Past range_verify_max_bytes a cold range streams as bytes land, marked no-store."""
        blob = random.Random(10).randbytes(3 << 20)
        digest = self.fake.add_blob(blob)
        w = lab.Winch([("docker.io", self.fake.url)],
                      config={"range_verify_max_bytes": 1 << 20})
        try:
            path = "/v2/lab/big/blobs/" + digest
            r = lab.get(w.hostport, path, [("Range", "bytes=100-199")], timeout=30)
            self.assertStatus(r, 206, "cold range on a big blob")
            self.assertEqual(r.body, blob[100:200])
            self.assertEqual(r.header("Cache-Control"), "no-store")
            # Warm now: verified, cacheable.
            lab.wait_for(lambda: os.path.exists(w.blob_path(digest)), 10, what="blob stored")
            r = lab.get(w.hostport, path, [("Range", "bytes=100-199")])
            self.assertEqual(r.header("Cache-Control"), "max-age=31536000")
        finally:
            w.stop()

    def test_wrong_bytes_small_blob(self):
        """A blob small enough to arrive in one read must not slip through either."""
        blob = b'{"architecture":"amd64","os":"linux"}'
        digest = self.fake.add_blob(blob)
        path = "/v2/lab/wrong/blobs/" + digest
        self.fake.set_fault(path, lab.Fault("wrong"))
        self.assertCut(path, len(blob), "small blob with wrong bytes")
        self.blob_not_cached(digest)

    def test_wrong_bytes_manifest(self):
        md, mb, cd, lds = self.fake.add_image("lab/wrongman", "v1", [b"x" * 100])
        path = "/v2/lab/wrongman/manifests/" + md
        self.fake.set_fault(path, lab.Fault("wrong"))
        r = lab.get(self.w, path, H(lab.SKOPEO_ACCEPT))
        self.assertNotEqual(r.status, 200, "manifest with wrong bytes served: %r" % r)
        self.assertIn(r.status // 100, (4, 5), r)
        self.assertIsNotNone(r.error_codes(), r)
        self.fake.clear_faults()
        r = lab.get(self.w, path, H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "manifest after the fault")
        self.assertEqual(r.body, mb)

    def test_429(self):
        md, mb, cd, lds = self.fake.add_image("lab/limited", "v1", [b"y" * 100])
        body = (b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull '
                b'rate limit."}]}')
        for p in ("/v2/lab/limited/manifests/v1", "/v2/lab/limited/manifests/" + md,
                  "/v2/lab/limited/blobs/" + lds[0]):
            self.fake.set_fault(p, lab.Fault("status", status=429, body=body, headers=[
                ("Content-Type", "application/json"), ("Retry-After", "17")]))
        for method, p in (("GET", "/v2/lab/limited/manifests/v1"),
                          ("HEAD", "/v2/lab/limited/manifests/v1"),
                          ("GET", "/v2/lab/limited/manifests/" + md),
                          ("GET", "/v2/lab/limited/blobs/" + lds[0])):
            r = lab.request(self.w, method, p, H(lab.SKOPEO_ACCEPT))
            what = "%s %s, upstream 429" % (method, p)
            if method == "HEAD":
                self.assertStatus(r, 429, what)
            else:
                self.assertOciError(r, 429, "TOOMANYREQUESTS", what)
            ra = r.header("Retry-After")
            self.assertIsNotNone(ra, what + ": Retry-After")
            self.assertTrue(ra.strip().isdigit(), what + ": Retry-After %r" % ra)
        self.fake.clear_faults()
        r = lab.get(self.w, "/v2/lab/limited/manifests/v1", H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "after the rate limit lifted")

    def test_upstream_500_and_404(self):
        md, mb, cd, lds = self.fake.add_image("lab/broken", "v1", [b"z" * 100])
        self.fake.set_fault("/v2/lab/broken/manifests/v1", lab.Fault(
            "status", status=500, body=b"panic: runtime error at /home/build/registry.go:42",
            headers=[("Content-Type", "text/plain")]))
        r = lab.get(self.w, "/v2/lab/broken/manifests/v1", H(lab.SKOPEO_ACCEPT))
        self.assertIn(r.status, (500, 502, 503), "upstream 500: %r" % r)
        self.assertIsNotNone(r.error_codes(), r)
        self.assertNotIn(b"registry.go", r.body, "upstream internals passed through")
        r = lab.get(self.w, "/v2/lab/broken/manifests/nope", H(lab.SKOPEO_ACCEPT))
        self.assertOciError(r, 404, "MANIFEST_UNKNOWN", "upstream 404 manifest")
        r = lab.get(self.w, "/v2/lab/broken/blobs/sha256:" + "2" * 64)
        self.assertOciError(r, 404, "BLOB_UNKNOWN", "upstream 404 blob")
        self.assertStatus(lab.get(self.w, "/v2/lab/broken/blobs/" + lds[0]), 200, "good blob")


if __name__ == "__main__":
    lab.main()
