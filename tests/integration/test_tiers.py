#!/usr/bin/python3
"""Tiers of winch: two edge winches whose upstream is one central winch whose upstreams are two
real docker-registries (docker.io and ghcr.io, as the central tier names them).
  - cold pulls through both edges at once (skopeo and raw HTTP): the registry sees each blob
    once and the tag once (HEAD) + the manifest by digest once, end to end;
  - ?ns=docker.io and a /v2/docker.io/ path prefix at an edge route through the central tier to
    the registry; Docker-Content-Digest passes through (HEAD by tag, as dockerd asks);
  - the edges name the registry on every request to the central tier (upstreams[].pass_ns:
    ?ns=docker.io, ?ns=ghcr.io): the two registries hold different images under the same
    repository name and tag, and each edge serves each one from the right registry (skopeo by
    the /v2/ghcr.io/ prefix, ?ns=ghcr.io, and plain docker.io), one registry GET per blob;
  - central stopped: both edges still serve what they cached (tags revalidated every time here,
    so they are served stale), and answer an error for what they never cached."""

import collections
import os
import re
import threading

import lab
import policy_images as pi


class Tiers(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.seed = lab.seeded()["images"]
        cls.up = lab.seeded_registry()
        # A second registry holding another image as lab/range16:v1, which the first holds too.
        cls.up2 = lab.Registry(name="upstream-ghcr")
        cls.ghcr_img = pi.build_image("ghcr.io lab/range16", seed=14)
        pi.push(cls.up2, cls.ghcr_img, cls.seed["range16"]["repo"], cls.seed["range16"]["tag"])
        cls.central = lab.Winch([("docker.io", cls.up.url), ("ghcr.io", cls.up2.url)],
                                name="central", log_level="info")
        # Count what the edges ask the central tier.
        cls.cfwd = lab.CountingForwarder(cls.central.port)
        tier = "http://" + cls.cfwd.hostport
        edge_cfg = {"tag_ttl_s": 0,
                    "upstreams": [{"name": "docker.io", "url": tier, "pass_ns": True},
                                  {"name": "ghcr.io", "url": tier, "pass_ns": True}]}
        cls.edges = [lab.Winch([], config=edge_cfg, name="edge%d" % i, log_level="info")
                     for i in (1, 2)]

    @classmethod
    def tearDownClass(cls):
        for w in cls.edges:
            w.stop()
        cls.cfwd.stop()
        cls.central.stop()
        cls.up.stop()
        cls.up2.stop()

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

        # The same repository and tag from the other registry behind the central tier.
        g = self.ghcr_img
        gout = os.path.join(out, "ghcr")
        lab.skopeo_copy("docker://%s/ghcr.io/%s:%s" % (self.edges[0].hostport, rng["repo"],
                                                       rng["tag"]), "dir:" + gout)
        self.assertEqual(lab.file_digest(os.path.join(gout, "manifest.json")), g.digest)
        self.assertEqual(lab.file_digest(os.path.join(gout, g.layer.split(":")[1])), g.layer)
        rpath = "/v2/%s/manifests/%s" % (rng["repo"], rng["tag"])
        for edge in self.edges:
            r = lab.get(edge.hostport, rpath + "?ns=ghcr.io", lab.accept(lab.ALL_MANIFEST_ACCEPT))
            self.assertStatus(r, 200, "ghcr.io by ?ns= at %s" % edge.name)
            self.assertEqual(r.header("Docker-Content-Digest"), g.digest)
            self.assertEqual(lab.sha256_digest(r.body), g.digest)
            st, dig, _ = lab.fetch_blob_digest(edge.hostport, "/v2/ghcr.io/%s/blobs/%s" % (
                rng["repo"], g.layer))
            self.assertEqual((st, dig), (200, g.layer))
            # docker.io's lab/range16:v1 through the same edge is still the first registry's.
            r = lab.head(edge.hostport, rpath, lab.accept(lab.ALL_MANIFEST_ACCEPT))
            self.assertEqual(r.header("Docker-Content-Digest"), rng["digest"], edge.name)
        gtable = collections.Counter((r.method, r.target) for r in self.up2.seen())
        lab.log("ghcr.io registry saw %s" % sorted(gtable.items()))
        for d in (g.config, g.layer):
            self.assertEqual(gtable[("GET", "/v2/%s/blobs/%s" % (rng["repo"], d))], 1, gtable)
        self.assertEqual(gtable[("HEAD", rpath)], 1, gtable)
        self.assertFalse([k for k, v in gtable.items() if v > 1], "repeated requests: %s" % gtable)
        # Nothing of the ghcr.io image was asked of the docker.io registry.
        self.assertFalse([r.target for r in self.up.seen() if g.layer in r.target or g.digest in
                          r.target or g.config in r.target])
        # Each edge names the registry on every request to the central tier (pass_ns), never
        # with a path prefix.
        targets = [r.target for r in self.cfwd.seen()]
        self.assertTrue(targets)
        self.assertFalse([t for t in targets if not re.search(r"[?&]ns=(docker\.io|ghcr\.io)$", t)
                          or re.match(r"/v2/(docker|ghcr)\.io/", t)], "targets at the central tier")
        self.assertTrue([t for t in targets if t.endswith("ns=ghcr.io")])

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
