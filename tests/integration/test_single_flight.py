#!/usr/bin/python3
"""One upstream fetch per cold blob, whatever the number of clients, and Range on a miss:
  - 8 concurrent GETs of the same cold 150 MiB blob: exactly one upstream GET, 8 correct bodies;
  - a Range GET of a cold blob: 206 with the right bytes and Content-Range, one upstream GET;
  - Range GETs while another client's fill is in progress (fake upstream that pauses mid-blob):
    bytes already written come at once, bytes past the fill point come when they arrive, all
    from the one upstream fetch;
  - 12 concurrent cold requests for one manifest (by tag and by digest): one upstream HEAD and
    one upstream GET."""

import os
import random
import threading
import time

import lab


class SingleFlightRealUpstream(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()
        cls.winch = lab.Winch([("docker.io", cls.up.url)])

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.up.stop()

    def test_eight_concurrent_cold_gets(self):
        img = self.data["images"]["big"]
        layer = max(img["layers"], key=lambda d: img["blobs"][d]["size"])
        size = img["blobs"][layer]["size"]
        path = "/v2/%s/blobs/%s" % (img["repo"], layer)
        n = 8
        barrier = threading.Barrier(n)
        results = [None] * n

        def client(i):
            try:
                barrier.wait(10)
                results[i] = lab.fetch_blob_digest(self.winch.hostport, path, timeout=120)
            except Exception as e:  # noqa: BLE001 - reported below
                results[i] = e

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        elapsed = time.monotonic() - t0
        for i, res in enumerate(results):
            self.assertEqual(res, (200, layer, size), "client %d of %d" % (i, n))
        gets = self.up.count("GET", path)
        self.assertEqual(gets, 1, "upstream GETs of the cold blob for %d concurrent clients "
                                  "(%.1fs): %s" % (n, elapsed, [(r.method, r.target)
                                                                for r in self.up.seen()]))
        # Warm now: no upstream request at all.
        before = self.up.count()
        self.assertEqual(lab.fetch_blob_digest(self.winch.hostport, path), (200, layer, size))
        self.assertEqual(self.up.count(), before, "a warm blob GET went upstream")
        self.assertTrue(os.path.exists(self.winch.blob_path(layer)), "blob not in the store")
        lab.log("8 concurrent cold GETs of %d MiB: %.1fs" % (size >> 20, elapsed))

    def test_range_on_cold_blob(self):
        img = self.data["images"]["range16"]
        layer = img["layers"][0]
        size = img["blobs"][layer]["size"]
        path = "/v2/%s/blobs/%s" % (img["repo"], layer)
        off = 5000000
        r = lab.get(self.winch.hostport, path, [("Range", "bytes=%d-" % off)], timeout=120)
        self.assertStatus(r, 206, "cold Range bytes=%d-" % off)
        self.assertEqual(r.header("Content-Range"), "bytes %d-%d/%d" % (off, size - 1, size))
        self.assertEqual(r.header("Content-Length"), str(size - off))
        direct = lab.get(self.up.direct_hostport, path, [("Range", "bytes=%d-" % off)])
        self.assertStatus(direct, 206, "direct Range")
        self.assertEqual(len(r.body), size - off)
        self.assertTrue(r.body == direct.body, "Range body differs from the upstream's")
        # A bounded range in the middle, and then the whole blob: all from the one fetch.
        r = lab.get(self.winch.hostport, path, [("Range", "bytes=1000-1999")])
        self.assertStatus(r, 206, "Range bytes=1000-1999")
        self.assertEqual(r.body, lab.get(self.up.direct_hostport, path,
                                         [("Range", "bytes=1000-1999")]).body)
        self.assertEqual(lab.fetch_blob_digest(self.winch.hostport, path), (200, layer, size))
        self.assertEqual(self.up.count("GET", path), 1,
                         "upstream GETs for a cold Range then full GETs: %s" %
                         [(x.method, x.target, dict(x.headers).get("Range")) for x in
                          self.up.seen() if x.path == path])


class FillIndependentOfClients(lab.TestCase):
    """The fill runs at upstream speed whatever the clients do (docs/lifecycle.md, "A blob")."""

    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def setUp(self):
        self.winch = lab.Winch([("docker.io", self.up.url)])

    def tearDown(self):
        self.winch.stop()

    def big_layer(self, rank):
        img = self.data["images"]["big"]
        layers = sorted(img["layers"], key=lambda d: -img["blobs"][d]["size"])
        d = layers[rank]
        return "/v2/%s/blobs/%s" % (img["repo"], d), d, img["blobs"][d]["size"]

    def test_vanished_client_does_not_cancel_fill(self):
        path, digest, size = self.big_layer(1)
        before = self.up.count("GET", path)  # the registry is shared by this class's tests
        s = lab.Stream(self.winch.hostport, path, timeout=60)
        self.assertEqual(s.status, 200)
        s.read(1 << 20)
        s.close()
        lab.wait_for(lambda: os.path.exists(self.winch.blob_path(digest)), 60,
                     what="the fill to complete after its only client left")
        self.assertEqual(lab.fetch_blob_digest(self.winch.hostport, path), (200, digest, size))
        self.assertEqual(self.up.count("GET", path) - before, 1, "the blob was fetched again")

    def test_stalled_client_does_not_slow_others(self):
        path, digest, size = self.big_layer(2)
        before = self.up.count("GET", path)
        slow = lab.Stream(self.winch.hostport, path, timeout=120)
        self.assertEqual(slow.status, 200)
        head = slow.read(64 << 10)
        t0 = time.monotonic()
        # A second client reads everything while the first one reads nothing.
        self.assertEqual(lab.fetch_blob_digest(self.winch.hostport, path, timeout=60),
                         (200, digest, size), "fast client next to a stalled one")
        lab.wait_for(lambda: os.path.exists(self.winch.blob_path(digest)), 30,
                     what="the blob published while a client is stalled")
        fast = time.monotonic() - t0
        rest = slow.read_all(keep=True)
        slow.close()
        self.assertEqual(lab.sha256_digest(head + rest), digest, "the stalled client's body")
        self.assertEqual(self.up.count("GET", path) - before, 1)
        lab.log("fast client next to a stalled one: %d MiB in %.1fs" % (size >> 20, fast))

    def test_parallel_skopeo_pulls(self):
        """4 skopeo pulls of the cold 300 MiB image at once: identical results, and every blob
        fetched from the upstream once."""
        import subprocess
        img = self.data["images"]["big"]
        before = dict((d, self.up.count("GET", "/v2/lab/big/blobs/" + d)) for d in img["blobs"])
        out = lab.tmpdir("winch-sf-skopeo-")
        env, policy = lab.pushtool.skopeo_env(lab.tmpdir("winch-sf-skopeo-conf-"))
        procs = []
        for i in range(4):
            procs.append(subprocess.Popen(
                ["skopeo", "--policy", policy, "copy", "--quiet", "--src-tls-verify=false",
                 "docker://%s/lab/big:v1" % self.winch.hostport, "dir:%s/p%d" % (out, i)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for i, p in enumerate(procs):
            text = p.communicate(timeout=300)[0]
            self.assertEqual(p.returncode, 0, "skopeo #%d: %s" % (i, text.decode(errors="replace")))
        for i in range(1, 4):
            self.assertEqual(lab.compare_dirs("%s/p0" % out, "%s/p%d" % (out, i)), [])
        for d in img["blobs"]:
            self.assertEqual(self.up.count("GET", "/v2/lab/big/blobs/" + d) - before[d], 1,
                             "upstream GETs of %s for 4 parallel pulls" % d)
        self.assertEqual(lab.dir_files("%s/p0" % out).get("manifest.json"),
                         img["digest"], "manifest digest")


class RangeDuringFill(lab.TestCase):
    """Deterministic: the fake upstream sends 8 MiB of a 32 MiB blob and waits. The blob is
    over range_verify_max_bytes here, so ranges stream as the bytes land (marked no-store);
    test_faults covers the smaller blobs whose ranges wait for the digest check."""

    def setUp(self):
        self.fake = lab.FakeUpstream()
        self.winch = lab.Winch([("docker.io", self.fake.url)],
                               config={"range_verify_max_bytes": 1 << 20})

    def tearDown(self):
        self.fake.clear_faults()
        self.winch.stop()
        self.fake.stop()

    def test_range_while_fill_in_progress(self):
        rng = random.Random(7)
        size = 32 << 20
        blob = rng.randbytes(size)
        digest = self.fake.add_blob(blob)
        path = "/v2/lab/fill/blobs/" + digest
        stall_at = 8 << 20
        fault = self.fake.set_fault(path, lab.Fault("stall", after=stall_at))
        w = self.winch.hostport

        a = lab.Stream(w, path, timeout=60)
        self.assertEqual(a.status, 200, "first client")
        self.assertEqual(a.header("Content-Length"), str(size))
        first = a.read(1 << 20)
        self.assertEqual(first, blob[:1 << 20], "first MiB")
        self.assertTrue(fault.reached.wait(10), "upstream fetch did not reach the stall point")

        # Bytes the fill already has: served at once, while upstream is paused.
        t0 = time.monotonic()
        r = lab.get(w, path, [("Range", "bytes=100-1099")], timeout=10)
        self.assertStatus(r, 206, "Range inside the filled part")
        self.assertEqual(r.header("Content-Range"), "bytes 100-1099/%d" % size)
        self.assertEqual(r.body, blob[100:1100])
        self.assertEqual(r.header("Cache-Control"), "no-store", "unverified range")
        self.assertLess(time.monotonic() - t0, 5, "Range inside the filled part waited")

        # Bytes past the fill point: the answer waits for them.
        results = {}

        def later(name, rng_hdr):
            try:
                results[name] = lab.get(w, path, [("Range", rng_hdr)], timeout=60)
            except Exception as e:  # noqa: BLE001
                results[name] = e

        tail = threading.Thread(target=later, args=("tail", "bytes=%d-" % (size - 1000)))
        mid = threading.Thread(target=later, args=("mid", "bytes=20000000-20000999"))
        tail.start()
        mid.start()
        time.sleep(0.5)
        self.assertEqual(results, {}, "a Range past the fill point was answered before the "
                                      "bytes existed: %r" % results)
        fault.release()
        tail.join(60)
        mid.join(60)
        r = results.get("tail")
        self.assertIsInstance(r, lab.Response, "tail range: %r" % r)
        self.assertStatus(r, 206, "tail range")
        self.assertEqual(r.header("Content-Range"), "bytes %d-%d/%d" % (size - 1000, size - 1, size))
        self.assertEqual(r.body, blob[-1000:])
        r = results.get("mid")
        self.assertIsInstance(r, lab.Response, "mid range: %r" % r)
        self.assertStatus(r, 206, "mid range")
        self.assertEqual(r.body, blob[20000000:20001000])

        rest = a.read_all(keep=True)
        a.close()
        self.assertEqual(first + rest, blob, "first client's body")
        self.assertEqual(self.fake.count("GET", path), 1,
                         "upstream GETs: %s" % [(x.method, x.target) for x in self.fake.seen()])
        lab.wait_for(lambda: os.path.exists(self.winch.blob_path(digest)), 10,
                     what="the blob to be published in the store")


class ManifestSingleFlight(lab.TestCase):
    """A rollout: many nodes ask for the same cold tag at the same moment. Every manifest GET
    counts against Docker Hub's pull limit, so they must share one upstream HEAD and one GET."""

    def setUp(self):
        self.fake = lab.FakeUpstream()
        self.winch = lab.Winch([("docker.io", self.fake.url)])

    def tearDown(self):
        self.fake.clear_faults()
        self.winch.stop()
        self.fake.stop()

    def test_concurrent_cold_tag_and_digest(self):
        md, mb, cd, lds = self.fake.add_image("lab/rollout", "v1", [b"r" * 1000])
        tag_path = "/v2/lab/rollout/manifests/v1"
        dig_path = "/v2/lab/rollout/manifests/" + md
        # Slow answers keep every request in flight together.
        self.fake.set_fault(tag_path, lab.Fault("delay", seconds=0.5))
        self.fake.set_fault(dig_path, lab.Fault("delay", seconds=0.5))
        n = 12
        results = [None] * n

        def client(i):
            path = tag_path if i % 2 == 0 else dig_path
            results[i] = lab.get(self.winch.hostport, path, lab.accept(lab.SKOPEO_ACCEPT))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for i, r in enumerate(results):
            self.assertIsNotNone(r, "client %d got no answer" % i)
            self.assertStatus(r, 200, "client %d" % i)
            self.assertEqual(r.body, mb, "client %d: manifest bytes" % i)
            self.assertEqual(r.header("Docker-Content-Digest"), md, "client %d" % i)
        self.assertEqual(self.fake.count("HEAD", tag_path), 1, "upstream HEADs of the tag")
        # The digest GETs share one fetch; the tag's HEAD names the same digest and its GET
        # joins that fetch or finds the manifest already stored: one GET in all.
        gets = self.fake.count("GET", dig_path) + self.fake.count("GET", tag_path)
        self.assertEqual(gets, 1, "upstream manifest GETs: %s" % self.fake.seen())


if __name__ == "__main__":
    lab.main()
