#!/usr/bin/python3
"""podman 4.3 pulls through winch as a registries.conf mirror, inside a loopback-only network
namespace. docker.io's primary location is a dead local port and its mirror is winch;
ghcr.io's primary location is another dead port and its mirror is winch with a path
(`127.0.0.1:P/ghcr.io`), which winch routes to its ghcr.io upstream by the first path
component. Flows: docker.io/library/busybox:1.36 (Docker v2 manifest),
docker.io/lab/busybox-oci:1.36 (OCI), ghcr.io/lab/multi:v1 --arch arm64 (OCI index with an attestation entry) and
ghcr.io/lab/multi-docker:v1 --arch arm --variant v7 (Docker manifest list). Every pulled
image's digest (`podman image inspect`) equals the upstream's, and winch fetched each blob from
each upstream at most once. (`podman run` does not work on this kind of machine: no
CAP_SYS_RESOURCE for rlimits; pulling does.)

The docker.io flows then run through distribution's proxy mode for comparison; the upstream
requests of each flow are printed (summary at the end).

Needs root, podman, conmon, iproute2 (see tests/integration/netns.py)."""

import json

import lab
import netns


class PodmanThroughWinch(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        netns.require("podman", "ip", "nsenter")
        cls.data = lab.seeded()
        cls.ns = netns.Netns()

    @classmethod
    def tearDownClass(cls):
        cls.ns.stop()

    def check_pull(self, p, upstream, ref, key, extra=(), via="winch", platform=None):
        """podman pull ref; checks the image digest against the seed and the live upstream,
        and for an index the platform picked. Returns the Flow."""
        img = self.data["images"][key]
        want = img["digest"]
        self.assertEqual(netns.upstream_tag_digest(upstream.direct_hostport, img["repo"],
                                                   img["tag"]), want,
                         "the upstream's digest for %s:%s" % (img["repo"], img["tag"]))
        with netns.Flow("podman", "pull %s%s" % (ref, "".join(" " + e for e in extra)), via,
                        upstream) as f:
            p.podman("pull", *extra, ref)
        info = json.loads(p.podman("image", "inspect", ref).stdout)[0]
        name = ref.rsplit(":", 1)[0]
        self.assertIn("%s@%s" % (name, want), info["RepoDigests"], "RepoDigests of %s" % ref)
        if platform:
            # .Digest is the digest the image was first pulled by: here the index's (the
            # single-platform busybox images share one image ID, so theirs is the first's).
            self.assertEqual(info["Digest"], want, "podman image inspect .Digest of %s" % ref)
            arch, variant = platform
            self.assertEqual(info["Architecture"], arch, ref)
            pd = netns.platform_digest(img, arch, variant)
            self.assertIn("%s@%s" % (name, pd), info["RepoDigests"],
                          "platform manifest of %s in RepoDigests" % ref)
        else:
            self.assertEqual("sha256:" + info["Id"], netns.config_digest(img), "image ID")
        return f

    def test_1_winch(self):
        up = lab.seeded_registry(name="upstream-docker.io")
        up2 = lab.seeded_registry(name="upstream-ghcr.io")
        winch = lab.Winch([("docker.io", up.url), ("ghcr.io", up2.url)])
        down = lab.CountingForwarder(winch.port)  # what podman sends to winch
        fwd = netns.Forward(self.ns, down.hostport, port=winch.port, name="forward-winch")
        dead1, dead2 = netns.dead_port(), netns.dead_port()
        p = netns.Podman(self.ns, [
            ("docker.io", "127.0.0.1:%d" % dead1, fwd.hostport),
            ("ghcr.io", "127.0.0.1:%d" % dead2, fwd.hostport + "/ghcr.io"),
        ])
        try:
            n0 = len(down.seen())
            self.check_pull(p, up, "docker.io/library/busybox:1.36", "busybox-v2s2")
            self.check_pull(p, up, "docker.io/lab/busybox-oci:1.36", "busybox")
            self.assertEqual(len(up2.seen()), 0, "docker.io pulls reached the ghcr.io upstream")
            seen = [q for q in down.seen()[n0:] if q.path not in ("/v2/", "/v2")]
            self.assertTrue(seen and all(q.path.startswith(("/v2/library/", "/v2/lab/"))
                                         for q in seen), [q.target for q in seen])

            n1, nup = len(down.seen()), len(up.seen())
            self.check_pull(p, up2, "ghcr.io/lab/multi:v1", "multi", ["--arch", "arm64"],
                            platform=("arm64", None))
            self.check_pull(p, up2, "ghcr.io/lab/multi-docker:v1", "multi-docker",
                            ["--arch", "arm", "--variant", "v7"], platform=("arm", "v7"))
            seen = [q for q in down.seen()[n1:] if q.path not in ("/v2/", "/v2")]
            self.assertTrue(seen and all(q.path.startswith("/v2/ghcr.io/lab/") for q in seen),
                            [q.target for q in seen])
            self.assertEqual(len(up.seen()), nup, "ghcr.io pulls reached the docker.io upstream")

            netns.assert_blobs_fetched_once(self, up, "podman via winch (docker.io)")
            netns.assert_blobs_fetched_once(self, up2, "podman via winch (ghcr.io)")
        finally:
            fwd.stop()
            down.stop()
            winch.stop()
            up2.stop()
            up.stop()

    def test_2_distribution_proxy(self):
        """The docker.io flows through distribution's proxy mode, for comparison (printed)."""
        up = lab.seeded_registry(name="upstream-of-distribution")
        proxy = netns.ProxyRegistry(up.url)
        fwd = netns.Forward(self.ns, proxy.direct_hostport, name="forward-distribution")
        p = netns.Podman(self.ns, [
            ("docker.io", "127.0.0.1:%d" % netns.dead_port(), fwd.hostport),
        ])
        via = "distribution-proxy"
        try:
            self.check_pull(p, up, "docker.io/library/busybox:1.36", "busybox-v2s2", via=via)
            self.check_pull(p, up, "docker.io/lab/busybox-oci:1.36", "busybox", via=via)
            self.check_pull(p, up, "docker.io/lab/multi:v1", "multi", ["--arch", "arm64"],
                            via=via, platform=("arm64", None))
            self.check_pull(p, up, "docker.io/lab/multi-docker:v1", "multi-docker",
                            ["--arch", "arm", "--variant", "v7"], via=via,
                            platform=("arm", "v7"))
        finally:
            fwd.stop()
            proxy.stop()
            up.stop()


if __name__ == "__main__":
    netns.main()
