#!/usr/bin/python3
"""Tiers of winch: two edge winches whose upstream is one central winch whose upstream is a real
docker-registry.
  - cold pulls through both edges at once (skopeo and raw HTTP): the registry sees each blob
    once and the tag once (HEAD) + the manifest by digest once, end to end;
  - ?ns=docker.io and a /v2/docker.io/ path prefix at an edge route through the central tier to
    the registry; Docker-Content-Digest passes through (HEAD by tag, as dockerd asks);
  - central stopped: both edges still serve what they cached (tags revalidated every time here,
    so they are served stale), and answer an error for what they never cached."""

import collections
import os
import threading

import lab


class Tiers(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.seed = lab.seeded()["images"]
        cls.up = lab.seeded_registry()
        cls.central = lab.Winch([("docker.io", cls.up.url)], name="central", log_level="info")
        # Count what the edges ask the central tier.
        cls.cfwd = lab.CountingForwarder(cls.central.port)
        edge_cfg = {"tag_ttl_s": 0}
        cls.edges = [lab.Winch([("docker.io", "http://" + cls.cfwd.hostport)], config=edge_cfg,
                               name="edge%d" % i, log_level="info") for i in (1, 2)]

    @classmethod
    def tearDownClass(cls):
        for w in cls.edges:
            w.stop()
        cls.cfwd.stop()
        cls.central.stop()
        cls.up.stop()

    def test_tiers(self):
        rng, bb = self.seed["range16"], self.seed["busybox-v2s2"]
        out = lab.tmpdir("winch-tiers-")
        errors = []

        def pull(i, edge, img):
            try:
                lab.skopeo_copy("docker://%s/%s:%s" % (edge.hostport, img["repo"], img["tag"]),
                                "dir:" + os.path.join(out, "%s-%d" % (img["repo"].replace(
                                    "/", "_"), i)))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((i, img["repo"], e))

        threads = []
        for img in (rng, bb):
            for i, edge in enumerate(self.edges):
                for k in range(2):  # two clients per edge and image
                    threads.append(threading.Thread(target=pull, args=(2 * i + k, edge, img)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertEqual(errors, [])
        table = collections.Counter((r.method, r.target) for r in self.up.seen())
        ctable = collections.Counter((r.method, r.target) for r in self.cfwd.seen())
        lab.log("registry saw %s" % sorted(table.items()))
        lab.log("central saw %s" % sorted(ctable.items()))
        for img in (rng, bb):
            for d in img["blobs"]:
                self.assertEqual(table[("GET", "/v2/%s/blobs/%s" % (img["repo"], d))], 1,
                                 "registry GETs of %s: %s" % (d, table))
            self.assertEqual(table[("HEAD", "/v2/%s/manifests/%s" % (img["repo"], img["tag"]))],
                             1, "registry HEADs of the tag: %s" % table)
        self.assertFalse([k for k, v in table.items() if v > 1], "repeated upstream requests")
        # Same bytes through both edges.
        for img in (rng, bb):
            name = img["repo"].replace("/", "_")
            for i in range(1, 4):
                self.assertEqual(lab.compare_dirs(os.path.join(out, "%s-0" % name),
                                                  os.path.join(out, "%s-%d" % (name, i))), [])

        # ?ns= and the path prefix through the tier; Docker-Content-Digest on HEAD by tag.
        mpath = "/v2/%s/manifests/%s" % (bb["repo"], bb["tag"])
        direct = lab.head(self.up.direct_hostport, mpath, lab.accept(lab.ALL_MANIFEST_ACCEPT))
        for edge in self.edges:
            for path in (mpath + "?ns=docker.io", "/v2/docker.io/%s/manifests/%s" % (
                    bb["repo"], bb["tag"])):
                r = lab.head(edge.hostport, path, lab.accept(lab.ALL_MANIFEST_ACCEPT))
                self.assertStatus(r, 200, path)
                self.assertEqual(r.header("Docker-Content-Digest"),
                                 direct.header("Docker-Content-Digest"), path)
            layer = bb["layers"][0]
            st, dig, _ = lab.fetch_blob_digest(
                edge.hostport, "/v2/docker.io/%s/blobs/%s" % (bb["repo"], layer))
            self.assertEqual((st, dig), (200, layer))
        # Each edge asks the central tier with the plain path (its upstream is the central's
        # default upstream): no ?ns= and no prefix reach the central tier.
        self.assertFalse([r.target for r in self.cfwd.seen() if "ns=" in r.target
                          or r.target.startswith("/v2/docker.io/")], "ns/prefix leaked upstream")

        # The central tier goes away (listener closed: connections refused).
        self.cfwd.stop()
        self.central.stop()
        for edge in self.edges:
            for img in (rng, bb):
                r = lab.get(edge.hostport, "/v2/%s/manifests/%s" % (img["repo"], img["tag"]),
                            lab.accept(lab.ALL_MANIFEST_ACCEPT))
                self.assertStatus(r, 200, "cached tag with the central tier down")
                self.assertIn("served-stale", r.header("Cache-Status", ""), r)
                for d in img["blobs"]:
                    st, dig, _ = lab.fetch_blob_digest(
                        edge.hostport, "/v2/%s/blobs/%s" % (img["repo"], d))
                    self.assertEqual((st, dig), (200, d), "cached blob, central down")
            # What the edge never cached: an error, not a hang.
            big = self.seed["big"]
            r = lab.get(edge.hostport, "/v2/%s/manifests/%s" % (big["repo"], big["tag"]),
                        lab.accept(lab.ALL_MANIFEST_ACCEPT), timeout=30)
            self.assertGreaterEqual(r.status, 500, "uncached tag, central down: %r" % r)
            self.assertIsNotNone(r.error_codes(), r)
        # And a restarted central with the same cache serves the edges again without the
        # registry.
        self.up.stop()
        self.central.restart()
        for edge in self.edges:
            edge.stop()
        edges = [lab.Winch([("docker.io", self.central.url)], name="edge-new%d" % i,
                           log_level="info") for i in (1, 2)]
        try:
            for edge in edges:
                st, dig, _ = lab.fetch_blob_digest(
                    edge.hostport, "/v2/%s/blobs/%s" % (rng["repo"], rng["layers"][0]))
                self.assertEqual((st, dig), (200, rng["layers"][0]))
        finally:
            for edge in edges:
                edge.stop()
        self.edges = []
        type(self).edges = []


if __name__ == "__main__":
    lab.main()
