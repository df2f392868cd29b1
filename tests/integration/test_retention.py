#!/usr/bin/python3
"""Retention inside the server, with a real upstream: max_size below the seeded images' total
keeps the cache under the bound with the most recently used image whole and protected content
kept; a slow client keeps reading a blob evicted under it; ENOSPC on a real small filesystem
(tmpfs) fails the fill cleanly, indexes nothing partial, keeps serving what is cached, and
pulls that fit work again; a blob that can never fit on the filesystem evicts nothing."""

import hashlib
import os
import subprocess
import time

import lab


def df(cache_dir):
    import json
    p = subprocess.run([lab.WINCH_BIN, "df", "--json", "--cache-dir", cache_dir],
                       capture_output=True, text=True, timeout=120, check=True)
    return json.loads(p.stdout)


class Retention(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()
        cls.out = lab.tmpdir("winch-retention-")
        cls.n = 0

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def pull(self, winch, ref, extra=()):
        Retention.n += 1
        dest = os.path.join(self.out, "p%d" % Retention.n)
        lab.skopeo_copy("docker://%s/%s" % (winch.hostport, ref), "dir:" + dest, extra)
        return dest

    def img(self, name):
        return self.data["images"][name]

    def test_1_bound_lru_protect(self):
        # range16 (16 MiB) + busybox (1 MiB) + multi's amd64 image: the bound holds about two.
        bound = 12 << 20
        w = lab.Winch([("docker.io", self.up.url)],
                      config={"tag_ttl_s": 3600,
                              "retention": {"max_size": bound, "low_watermark": "90%",
                                            "protect": ["docker.io/lab/tools/**"]}})
        try:
            self.pull(w, "lab/tools/busybox:1.36")  # protected (1 MiB)
            self.pull(w, "lab/range16:v1")           # 16 MiB: over the bound by itself
            time.sleep(1.2)
            self.pull(w, "lab/multi:v1")             # the most recent
            lab.wait_for(lambda: df(w.cache_dir)["total"] <= bound, 15,
                         what="the cache back under max_size")
            d = df(w.cache_dir)
            self.assertLessEqual(sum(os.path.getsize(p) for p in w.blob_files()), bound)
            # The most recently used image is whole: pulling it asks the upstream for no blob.
            before = self.up.count(contains="/blobs/")
            self.pull(w, "lab/multi:v1")
            self.pull(w, "lab/tools/busybox:1.36")
            self.assertEqual(self.up.count(contains="/blobs/"), before, d)
            # range16 was evicted (least recently used, not protected).
            self.assertFalse(os.path.exists(w.blob_path(self.img("range16")["layers"][0])))
            self.assertIn("retention: removed", w.log())
            self.assertEqual(w.verify_store(), [])
        finally:
            w.stop()

    def test_2_slow_reader_survives_eviction(self):
        w = lab.Winch([("docker.io", self.up.url)],
                      config={"tag_ttl_s": 3600, "retention": {"max_size": 4 << 20}})
        try:
            r16 = self.img("range16")
            layer = r16["layers"][0]
            path = "/v2/lab/range16/blobs/%s" % layer
            self.pull(w, "lab/range16:v1")
            s = lab.Stream(w.hostport, path)
            h = hashlib.sha256()
            h.update(s.read(64 << 10))
            # Something newer arrives; the tick evicts range16 while the client reads slowly.
            self.pull(w, "lab/busybox-oci:1.36")
            lab.wait_for(lambda: not os.path.exists(w.blob_path(layer)), 15,
                         what="range16 evicted")
            for b in iter(lambda: s.read(256 << 10), b""):
                h.update(b)
                time.sleep(0.001)
            s.close()
            self.assertEqual("sha256:" + h.hexdigest(), layer)
        finally:
            w.stop()

    def test_3_enospc_on_tmpfs(self):
        mnt = lab.tmpdir("winch-tmpfs-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", mnt], check=True)
        try:
            w = lab.Winch([("docker.io", self.up.url)], cache_dir=os.path.join(mnt, "cache"),
                          config={"tag_ttl_s": 3600})
            try:
                self.pull(w, "lab/range16:v1")
                self.pull(w, "lab/busybox-oci:1.36")
                # big (300 MiB) cannot fit: the fill fails, the client's connection is cut.
                with self.assertRaises(Exception):
                    self.pull(w, "lab/big:v1")
                self.assertEqual(w.tmp_files(), [])
                for d in self.img("big")["layers"]:
                    self.assertFalse(os.path.exists(w.blob_path(d)))
                # Retention hears of the full disk at once; at its next tick (1 s) it sees that
                # big (300 MiB) can never fit on the 48 MiB filesystem and evicts nothing, at
                # this tick or at any later one (a client retrying big fails more fills).
                lab.wait_for(lambda: "can never fit" in w.log(), 10, what="the disk-full tick")
                time.sleep(2.5)
                self.assertNotIn("retention: removed", w.log())
                self.assertNotIn("retention: disk full: evicting", w.log())
                for key in ("range16", "busybox"):
                    for d in self.img(key)["blobs"]:
                        self.assertTrue(os.path.exists(w.blob_path(d)), "%s %s evicted" % (key, d))
                self.assertEqual(w.verify_store(), [])
                p = subprocess.run([lab.WINCH_BIN, "verify", "--cache-dir", w.cache_dir],
                                   capture_output=True, text=True, timeout=120)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                # Cached content is still served: no blob the store still holds is asked of
                # the upstream.
                kept = [d for d in self.img("busybox")["blobs"]
                        if os.path.exists(w.blob_path(d))]
                asked = {d: self.up.count(contains=d) for d in kept}
                self.pull(w, "lab/busybox-oci:1.36")
                self.assertEqual({d: self.up.count(contains=d) for d in kept}, asked)
                # New pulls that fit work.
                self.pull(w, "lab/multi:v1", ["--override-arch", "arm64"])
                self.pull(w, "lab/range16:v1")
            finally:
                w.stop()
        finally:
            subprocess.run(["umount", "-l", mnt], check=False)


if __name__ == "__main__":
    lab.main()
