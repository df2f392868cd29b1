#!/usr/bin/python3
"""on_disk_full "pass_through" on a real small filesystem (tmpfs caches; the tests run as
root): a blob that cannot fit is streamed from the upstream to each client without being
cached, byte-identical to the upstream's and with its last byte held until the digest checks;
a fill that runs out of space mid-stream hands its client over to such a stream at the byte
it had reached; a corrupt upstream cuts the client instead of completing a wrong body; cached
content keeps being served from disk; and once there is room again, blobs are cached as usual."""

import datetime
import hashlib
import http.client
import os
import re
import subprocess
import threading
import time

import lab

PT = {"on_disk_full": "pass_through"}


class Tmpfs:
    def __init__(self, size):
        self.path = lab.tmpdir("winch-pt-tmpfs-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", self.path],
                       check=True)

    def free(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill_up(self, leave):
        """Writes a filler file until only `leave` bytes are free."""
        with open(os.path.join(self.path, "filler"), "wb") as f:
            left = self.free() - leave
            while left > 0:
                n = min(left, 4 << 20)
                f.write(b"\0" * n)
                left -= n

    def unfill(self):
        os.unlink(os.path.join(self.path, "filler"))

    def stop(self):
        subprocess.run(["umount", "-l", self.path], check=False)


class PassThroughSeeded(lab.TestCase):
    """Against the real upstream: an image bigger than the whole cache filesystem."""

    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()
        cls.out = lab.tmpdir("winch-pt-")

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def test_big_image_passes_through(self):
        fs = Tmpfs("48m")
        w = None
        try:
            w = lab.Winch([("docker.io", self.up.url)], cache_dir=os.path.join(fs.path, "cache"),
                          config=dict(PT, tag_ttl_s=3600))
            lab.skopeo_copy("docker://%s/lab/range16:v1" % w.hostport, "dir:%s/r16" % self.out)
            lab.skopeo_copy("docker://%s/lab/busybox-oci:1.36" % w.hostport,
                            "dir:%s/bb" % self.out)
            big = self.data["images"]["big"]
            lab.skopeo_copy("docker://%s/lab/big:v1" % self.up.hostport,
                            "dir:%s/big-direct" % self.out)
            # 300 MiB of layers on a 48 MiB filesystem: every layer passes through.
            before = self.up.count(contains="/blobs/")
            lab.skopeo_copy("docker://%s/lab/big:v1" % w.hostport, "dir:%s/big" % self.out)
            self.assertEqual(lab.compare_dirs("%s/big" % self.out, "%s/big-direct" % self.out),
                             [])
            for d in big["layers"]:
                self.assertFalse(os.path.exists(w.blob_path(d)), "layer %s cached" % d)
            self.assertIn("cache=pass-through", w.log())
            self.assertEqual(w.tmp_files(), [])
            self.assertEqual(w.verify_store(), [])
            p = subprocess.run([lab.WINCH_BIN, "verify", "--cache-dir", w.cache_dir],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            # A blob that passes through costs its client one upstream GET, plus the fill's,
            # given up once the upstream's size showed it cannot fit; the config is cached.
            self.assertEqual(self.up.count(contains="/blobs/") - before,
                             2 * len(big["layers"]) + 1)
            # Cached content is still served from disk.
            before = self.up.count(contains="/blobs/")
            lab.skopeo_copy("docker://%s/lab/busybox-oci:1.36" % w.hostport,
                            "dir:%s/bb2" % self.out)
            self.assertEqual(self.up.count(contains="/blobs/"), before)
            # A Range of a blob that passes through: the right bytes, marked no-store.
            layer = big["layers"][0]
            r = lab.get(w.hostport, "/v2/lab/big/blobs/%s" % layer,
                        headers=[("Range", "bytes=100-199")])
            self.assertEqual(r.status, 206)
            with open(os.path.join(self.out, "big-direct", layer.split(":")[1]), "rb") as f:
                f.seek(100)
                self.assertEqual(r.body, f.read(100))
            self.assertEqual(r.header("Cache-Control"), "no-store")
            # Several clients at once, each with its own stream.
            results = []

            def one():
                results.append(lab.fetch_blob_digest(w.hostport, "/v2/lab/big/blobs/%s" % layer))

            threads = [threading.Thread(target=one) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            self.assertEqual([(s, d) for s, d, _ in results], [(200, layer)] * 3)
            w.stop()
            w = None
        finally:
            if w:
                w.stop(check=False)
            fs.stop()


class PassThroughFaults(lab.TestCase):
    """Against a scripted upstream: the disk filling up mid-stream, a corrupt upstream."""

    def setUp(self):
        self.fake = lab.FakeUpstream()
        self.fs = Tmpfs("40m")
        self.w = lab.Winch([("docker.io", self.fake.url)],
                           cache_dir=os.path.join(self.fs.path, "cache"), config=PT)

    def tearDown(self):
        self.w.stop()
        self.fs.stop()
        self.fake.stop()

    def test_disk_full_mid_stream(self):
        blob = os.urandom(24 << 20)
        _, _, _, (layer,) = self.fake.add_image("lab/pt", "v1", [blob])
        path = "/v2/lab/pt/blobs/" + layer
        stall = self.fake.set_fault(path, lab.Fault("stall", after=6 << 20, times=1))
        res = {}

        def pull():
            s = lab.Stream(self.w.hostport, path)
            try:
                res["status"] = s.status
                res["body"] = s.read_all(keep=True)
            except Exception as e:  # noqa: BLE001 - reported below
                res["error"] = e
            finally:
                s.close()

        t = threading.Thread(target=pull)
        t.start()
        self.assertTrue(stall.reached.wait(15))
        # The client has its head and the first 6 MiB (less the bytes still in flight); now
        # the disk fills up under the fill.
        time.sleep(0.3)
        self.fs.fill_up(leave=1 << 20)
        stall.release()
        t.join(60)
        self.assertNotIn("error", res)
        self.assertEqual(res["status"], 200)
        self.assertEqual(hashlib.sha256(res["body"]).hexdigest(), layer.split(":")[1])
        log = self.w.log()
        self.assertIn("No space left on device", log)
        self.assertIn("cache=pass-through", log)
        self.assertEqual(self.fake.count(path=path), 2)
        self.assertFalse(os.path.exists(self.w.blob_path(layer)))
        self.assertEqual(self.w.tmp_files(), [])
        # Retention hears of the full disk at once and evicts at its next tick (1 s): let that
        # tick pass first, or it may evict the blob the next pull caches (a fast spliced fill
        # can land before it).
        lab.wait_for(lambda: "retention: disk full" in self.w.log(), 10,
                     what="retention's disk-full tick")
        # Room again: the next pull caches it.
        self.fs.unfill()
        status, got, _ = lab.fetch_blob_digest(self.w.hostport, path)
        self.assertEqual((status, got), (200, layer))
        lab.wait_for(lambda: os.path.exists(self.w.blob_path(layer)), 10, what="blob cached")
        self.assertEqual(self.w.verify_store(), [])

    def test_corrupt_upstream_is_cut(self):
        blob = os.urandom(12 << 20)
        _, _, _, (layer,) = self.fake.add_image("lab/bad", "v1", [blob])
        path = "/v2/lab/bad/blobs/" + layer
        self.fs.fill_up(leave=4 << 20)  # the blob cannot fit: passed through from the start
        self.fake.set_fault(path, lab.Fault("wrong"))
        s = lab.Stream(self.w.hostport, path)
        self.assertEqual(s.status, 200)
        with self.assertRaises((http.client.IncompleteRead, OSError)):
            s.read_all()
        s.close()
        # The client got everything but the held last byte, never a complete wrong body.
        self.assertEqual(s.received, len(blob) - 1)
        self.assertIn("digest mismatch", self.w.log())
        self.assertFalse(os.path.exists(self.w.blob_path(layer)))
        # A HEAD needs no disk at all.
        self.fake.clear_faults()
        r = lab.head(self.w.hostport, path)
        self.assertEqual((r.status, r.header("Content-Length")), (200, str(len(blob))))

    def test_fail_mode_still_cuts(self):
        """on_disk_full "fail" (the default) keeps failing the fill: the contrast."""
        self.w.stop()
        self.w = lab.Winch([("docker.io", self.fake.url)],
                           cache_dir=os.path.join(self.fs.path, "cache"))
        blob = os.urandom(12 << 20)
        _, _, _, (layer,) = self.fake.add_image("lab/f", "v1", [blob])
        self.fs.fill_up(leave=2 << 20)
        s = lab.Stream(self.w.hostport, "/v2/lab/f/blobs/" + layer)
        whole = False
        try:
            s.read_all()
            whole = s.status == 200 and s.digest() == layer
        except (http.client.IncompleteRead, OSError):
            pass
        s.close()
        self.assertFalse(whole, "a fill that failed for lack of space served the whole blob")
        self.assertNotIn("cache=pass-through", self.w.log())


    def test_stale_disk_full_signal_evicts_nothing(self):
        """A fill fails for lack of space; room comes back before retention's next tick (an
        operator freed space): that tick drops the signal and evicts nothing."""
        self.w.stop()
        self.w = lab.Winch([("docker.io", self.fake.url)],
                           cache_dir=os.path.join(self.fs.path, "cache"))
        keep = os.urandom(1 << 20)
        _, _, _, (kept,) = self.fake.add_image("lab/keep", "v1", [keep])
        status, got, _ = lab.fetch_blob_digest(self.w.hostport, "/v2/lab/keep/blobs/" + kept)
        self.assertEqual((status, got), (200, kept))
        lab.wait_for(lambda: os.path.exists(self.w.blob_path(kept)), 10, what="blob cached")
        big = os.urandom(8 << 20)
        _, _, _, (layer,) = self.fake.add_image("lab/late", "v1", [big])
        decision = re.compile(r"^(\S+) \S+\s+retention: disk full(?: signal dropped|:)(.*)$",
                              re.M)
        for _ in range(3):
            seen = len(decision.findall(self.w.log()))
            failures = self.w.log().count("No space left on device")
            self.fs.fill_up(leave=2 << 20)
            s = lab.Stream(self.w.hostport, "/v2/lab/late/blobs/" + layer)
            try:
                s.read_all()
            except (http.client.IncompleteRead, OSError):
                pass
            s.close()
            lab.wait_for(lambda: self.w.log().count("No space left on device") > failures, 10,
                         what="the fill to fail for lack of space")
            self.fs.unfill()
            freed_at = time.time()
            lab.wait_for(lambda: len(decision.findall(self.w.log())) > seen, 10,
                         what="retention's tick to decide on the signal")
            when, what = decision.findall(self.w.log())[seen]
            t = datetime.datetime.strptime(when, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            if t < freed_at:
                continue  # the tick came between the failure and the freeing: try again
            self.assertIn("bytes free now, the failed fill needed %d" % len(big), what)
            time.sleep(1.5)  # one more tick: nothing else happens
            self.assertNotIn("retention: removed", self.w.log())
            self.assertTrue(os.path.exists(self.w.blob_path(kept)), "the cached blob was evicted")
            # Room is back: the blob is cached on the next pull.
            status, got, _ = lab.fetch_blob_digest(self.w.hostport, "/v2/lab/late/blobs/" + layer)
            self.assertEqual((status, got), (200, layer))
            return
        self.fail("retention's tick came before the room did, three times running")


if __name__ == "__main__":
    lab.main()
