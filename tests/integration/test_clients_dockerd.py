#!/usr/bin/python3
"""dockerd 20.10 (Debian's docker.io) pulls through winch as its `registry-mirrors` entry,
inside a loopback-only network namespace: Docker Hub's one-component name (busybox:1.36 ->
library/busybox), a two-component OCI image, an OCI index with an attestation entry and a
Docker manifest list. Each pulled image carries exactly the upstream's manifest digest, the
busybox image runs (`docker run ... echo hello`), dockerd never falls back to Docker Hub, and
winch fetched each blob from the upstream at most once. A warm pull after `docker rmi` asks the
upstream for no blob. With a platforms rule prefetching linux/amd64, the pull of lab/multi:v1
fetches the amd64 image's blobs once each and no other platform's.

The same flows then run against distribution's proxy mode (docker-registry with
proxy.remoteurl), and the upstream requests each caused are printed side by side (summary at
the end): the comparison for the issue note, not an assertion.

Needs root, docker.io, containerd, runc, iproute2 (see tests/integration/netns.py)."""

import json

import lab
import netns

# (ref as the user types it, seeded image key, what the ref resolves to)
FLOWS = [
    ("busybox:1.36", "busybox-v2s2"),
    ("lab/busybox-oci:1.36", "busybox"),
    ("lab/multi:v1", "multi"),
    ("lab/multi-docker:v1", "multi-docker"),
]


class DockerdThroughWinch(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        netns.require("dockerd", "docker", "containerd", "runc", "ip", "nsenter")
        cls.data = lab.seeded()
        cls.ns = netns.Netns()

    @classmethod
    def tearDownClass(cls):
        cls.ns.stop()

    def pull(self, d, via, upstream, ref, key):
        """docker pull ref through d; checks the digest against the seed and the live
        upstream; returns the Flow."""
        img = self.data["images"][key]
        want = img["digest"]
        self.assertEqual(netns.upstream_tag_digest(upstream.direct_hostport, img["repo"],
                                                   img["tag"]), want,
                         "the upstream's digest for %s:%s" % (img["repo"], img["tag"]))
        with netns.Flow("dockerd", "pull " + ref, via, upstream) as f:
            out = d.docker("pull", ref).stdout
        self.assertIn("Digest: " + want, out, "docker pull %s output" % ref)
        got = d.docker("image", "inspect", ref, "--format",
                       "{{json .RepoDigests}} {{.Id}} {{.Architecture}}").stdout.split()
        repo_digests, image_id, arch = json.loads(got[0]), got[1], got[2]
        name = ref.rsplit(":", 1)[0]
        self.assertIn("%s@%s" % (name, want), repo_digests, "RepoDigests of %s" % ref)
        self.assertEqual(arch, "amd64", "architecture picked for %s" % ref)
        if not img["platforms"]:
            self.assertEqual(image_id, netns.config_digest(img), "image ID of %s" % ref)
        return f

    def assert_no_fallback(self, d):
        bad = [ln for ln in d.log().splitlines()
               if "Trying to pull" in ln and "registry-1.docker.io" in ln]
        self.assertEqual(bad, [], "dockerd fell back from the mirror to Docker Hub")

    def test_1_winch(self):
        up = lab.seeded_registry(name="upstream")
        winch = lab.Winch([("docker.io", up.url)])
        down = lab.CountingForwarder(winch.port)  # what dockerd sends to winch
        fwd = netns.Forward(self.ns, down.hostport, port=winch.port, name="forward-winch")
        d = netns.Dockerd(self.ns, mirror=fwd.hostport)
        try:
            for ref, key in FLOWS:
                with self.subTest(ref=ref):
                    self.pull(d, "winch", up, ref, key)

            r = d.docker("run", "--rm", "--network", "none", "busybox:1.36", "echo", "hello")
            self.assertEqual(r.stdout.strip(), "hello")

            # One-component names arrive as library/<name> (dockerd adds it).
            paths = [q.path for q in down.seen() if "busybox/" in q.path
                     and "busybox-oci" not in q.path]
            self.assertTrue(paths and all(p.startswith("/v2/library/busybox/") for p in paths),
                            paths)
            self.assert_no_fallback(d)
            netns.assert_blobs_fetched_once(self, up, "dockerd via winch (cold)")

            # Warm: remove the image (both tags share it, so layers go too) and pull again.
            d.docker("rmi", "busybox:1.36", "lab/busybox-oci:1.36")
            f = self.pull(d, "winch (warm)", up, "busybox:1.36", "busybox-v2s2")
            self.assertEqual(netns.blob_gets(f.requests), {},
                             "warm pull fetched blobs upstream: %s" % f.summary())
            self.assert_no_fallback(d)
            netns.assert_blobs_fetched_once(self, up, "dockerd via winch")
        finally:
            d.stop()
            fwd.stop()
            down.stop()
            winch.stop()
            up.stop()

    def test_2_distribution_proxy(self):
        """The same flows through distribution's proxy mode, for comparison (printed)."""
        up = lab.seeded_registry(name="upstream-of-distribution")
        proxy = netns.ProxyRegistry(up.url)
        fwd = netns.Forward(self.ns, proxy.direct_hostport, name="forward-distribution")
        d = netns.Dockerd(self.ns, mirror=fwd.hostport, name="dockerd-distribution")
        try:
            for ref, key in FLOWS:
                with self.subTest(ref=ref):
                    self.pull(d, "distribution-proxy", up, ref, key)
            d.docker("rmi", "busybox:1.36", "lab/busybox-oci:1.36")
            self.pull(d, "distribution-proxy (warm)", up, "busybox:1.36", "busybox-v2s2")
            self.assert_no_fallback(d)
        finally:
            d.stop()
            fwd.stop()
            proxy.stop()
            up.stop()

    def test_3_winch_prefetch(self):
        """lab/multi:v1 with a platforms rule prefetching linux/amd64 (dockerd's User-Agent
        names it too): the pull gets the upstream's digest, the amd64 manifest, config and
        layer came from the upstream once each (the prefetch and dockerd share the fills), no
        other platform's blob was fetched."""
        up = lab.seeded_registry(name="upstream-prefetch")
        winch = lab.Winch([("docker.io", up.url)], config={
            "platforms": [{"match": "**", "platforms": ["linux/amd64"], "prefetch": True}]})
        fwd = netns.Forward(self.ns, winch.hostport, port=winch.port, name="forward-prefetch")
        d = netns.Dockerd(self.ns, mirror=fwd.hostport, name="dockerd-prefetch")
        try:
            multi = self.data["images"]["multi"]
            self.pull(d, "winch (prefetch)", up, "lab/multi:v1", "multi")
            self.assertIn("prefetch: 1 manifest of docker.io/lab/multi for linux/amd64",
                          winch.log())
            netns.settle(up)
            want = netns.platform_blobs(up.direct_hostport, multi, "amd64")
            got = netns.blob_gets(up.seen())
            self.assertEqual({p.rsplit("/", 1)[1] for p in got}, want,
                             "blobs fetched upstream: the amd64 image's only")
            netns.assert_blobs_fetched_once(self, up, "dockerd via winch, prefetch on")
            self.assert_no_fallback(d)
        finally:
            d.stop()
            fwd.stop()
            winch.stop()
            up.stop()


if __name__ == "__main__":
    netns.main()
