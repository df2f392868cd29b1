#!/usr/bin/python3
"""containerd 1.6 + ctr pull through winch as a hosts.toml mirror, inside a loopback-only
network namespace (containerd and ctr both inside: ctr 1.6 fetches in the ctr process).

Two registry names, each with its own hosts.toml whose `server` is a dead local port and whose
one host is winch: containerd adds `?ns=docker.io` / `?ns=ghcr.io` to every request, and winch
routes each to its own upstream (two docker-registry processes on the seeded storage). Flows:
docker.io/library/busybox:1.36 (Docker v2 manifest; then `ctr run --rm ... echo hello`),
docker.io/lab/busybox-oci:1.36 (OCI), ghcr.io/lab/multi:v1 --platform linux/arm64 (OCI index
with an attestation entry) and ghcr.io/lab/multi-docker:v1 --all-platforms (Docker manifest
list). Every image's digest in `ctr images ls` equals the upstream's, and winch fetched each
blob from each upstream at most once.

With a platforms rule prefetching linux/arm64, a pull of ghcr.io/lab/multi:v1 --platform
linux/arm64 fetches the arm64 image's blobs once each and no other platform's.

The docker.io flows then run through distribution's proxy mode for comparison; the upstream
requests of each flow are printed (summary at the end).

Needs root, containerd, runc, iproute2 (see tests/integration/netns.py)."""

import lab
import netns

SNAP = ["--snapshotter", "native"]  # no overlayfs assumptions about the host


class ContainerdThroughWinch(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        netns.require("containerd", "ctr", "runc", "ip", "nsenter")
        cls.data = lab.seeded()
        cls.ns = netns.Netns()

    @classmethod
    def tearDownClass(cls):
        cls.ns.stop()

    def check_pull(self, c, hosts, upstream, ref, key, extra=(), via="winch"):
        """ctr pull ref; checks the image's digest against the seed and the live upstream,
        and that the platform manifests asked for are in the content store."""
        img = self.data["images"][key]
        want = img["digest"]
        self.assertEqual(netns.upstream_tag_digest(upstream.direct_hostport, img["repo"],
                                                   img["tag"]), want,
                         "the upstream's digest for %s:%s" % (img["repo"], img["tag"]))
        with netns.Flow("containerd", "pull %s%s" % (ref, "".join(" " + e for e in extra)),
                        via, upstream) as f:
            c.ctr("images", "pull", "--hosts-dir", hosts, *SNAP, *extra, ref)
        self.assertEqual(c.images().get(ref), want, "ctr images ls digest of %s" % ref)
        content = c.ctr("content", "ls", "-q").stdout.split()
        self.assertIn(want, content)
        return f, content

    def test_1_winch(self):
        up = lab.seeded_registry(name="upstream-docker.io")
        up2 = lab.seeded_registry(name="upstream-ghcr.io")
        winch = lab.Winch([("docker.io", up.url), ("ghcr.io", up2.url)])
        down = lab.CountingForwarder(winch.port)  # what containerd sends to winch
        fwd = netns.Forward(self.ns, down.hostport, port=winch.port, name="forward-winch")
        c = netns.Containerd(self.ns)
        dead1, dead2 = netns.dead_port(), netns.dead_port()
        hosts = c.hosts_dir({
            "docker.io": ("http://127.0.0.1:%d" % dead1, "http://" + fwd.hostport),
            "ghcr.io": ("http://127.0.0.1:%d" % dead2, "http://" + fwd.hostport),
        })
        try:
            n0 = len(down.seen())
            self.check_pull(c, hosts, up, "docker.io/library/busybox:1.36", "busybox-v2s2")
            self.check_pull(c, hosts, up, "docker.io/lab/busybox-oci:1.36", "busybox")
            r = c.ctr("run", "--rm", *SNAP, "docker.io/library/busybox:1.36",
                      "winch-it-hello", "echo", "hello")
            self.assertEqual(r.stdout.strip(), "hello")
            seen = down.seen()[n0:]
            self.assertTrue(seen)
            self.assertEqual([q.target for q in seen if "ns=docker.io" not in q.target], [],
                             "docker.io requests without ?ns=docker.io")
            self.assertEqual(len(up2.seen()), 0, "docker.io pulls reached the ghcr.io upstream")

            n1, nup = len(down.seen()), len(up.seen())
            multi = self.data["images"]["multi"]
            arm64 = netns.platform_digest(multi, "arm64")
            _, content = self.check_pull(c, hosts, up2, "ghcr.io/lab/multi:v1", "multi",
                                         ["--platform", "linux/arm64"])
            self.assertIn(arm64, content, "arm64 manifest of ghcr.io/lab/multi:v1")

            md = self.data["images"]["multi-docker"]
            _, content = self.check_pull(c, hosts, up2, "ghcr.io/lab/multi-docker:v1",
                                         "multi-docker", ["--all-platforms"])
            for p in md["platforms"]:
                self.assertIn(p["digest"], content, "platform %s of multi-docker" % p["platform"])
            seen = down.seen()[n1:]
            self.assertEqual([q.target for q in seen if "ns=ghcr.io" not in q.target], [],
                             "ghcr.io requests without ?ns=ghcr.io")
            self.assertTrue(all(q.path.startswith("/v2/lab/") for q in seen),
                            [q.target for q in seen])
            self.assertEqual(len(up.seen()), nup, "ghcr.io pulls reached the docker.io upstream")

            netns.assert_blobs_fetched_once(self, up, "containerd via winch (docker.io)")
            netns.assert_blobs_fetched_once(self, up2, "containerd via winch (ghcr.io)")
        finally:
            c.stop()
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
        c = netns.Containerd(self.ns, name="containerd-distribution")
        hosts = c.hosts_dir({
            "docker.io": ("http://127.0.0.1:%d" % netns.dead_port(), "http://" + fwd.hostport),
        })
        try:
            via = "distribution-proxy"
            self.check_pull(c, hosts, up, "docker.io/library/busybox:1.36", "busybox-v2s2",
                            via=via)
            self.check_pull(c, hosts, up, "docker.io/lab/busybox-oci:1.36", "busybox", via=via)
            self.check_pull(c, hosts, up, "docker.io/lab/multi:v1", "multi",
                            ["--platform", "linux/arm64"], via=via)
            self.check_pull(c, hosts, up, "docker.io/lab/multi-docker:v1", "multi-docker",
                            ["--all-platforms"], via=via)
        finally:
            c.stop()
            fwd.stop()
            proxy.stop()
            up.stop()

    def test_3_winch_prefetch(self):
        """ghcr.io/lab/multi:v1 --platform linux/arm64 with a platforms rule prefetching
        linux/arm64: the upstream's digest, the arm64 blobs fetched once each (the prefetch and
        containerd share the fills), no other platform's blob."""
        up = lab.seeded_registry(name="upstream-prefetch")
        winch = lab.Winch([("ghcr.io", up.url)], config={
            "platforms": [{"match": "ghcr.io/**", "platforms": ["linux/arm64"],
                           "prefetch": True}]})
        fwd = netns.Forward(self.ns, winch.hostport, port=winch.port, name="forward-prefetch")
        c = netns.Containerd(self.ns, name="containerd-prefetch")
        hosts = c.hosts_dir({
            "ghcr.io": ("http://127.0.0.1:%d" % netns.dead_port(), "http://" + fwd.hostport)})
        try:
            multi = self.data["images"]["multi"]
            _, content = self.check_pull(c, hosts, up, "ghcr.io/lab/multi:v1", "multi",
                                         ["--platform", "linux/arm64"], via="winch (prefetch)")
            self.assertIn(netns.platform_digest(multi, "arm64"), content)
            self.assertIn("prefetch: 1 manifest of ghcr.io/lab/multi for linux/arm64 (rule)",
                          winch.log())
            netns.settle(up)
            want = netns.platform_blobs(up.direct_hostport, multi, "arm64")
            got = netns.blob_gets(up.seen())
            self.assertEqual({p.rsplit("/", 1)[1] for p in got}, want,
                             "blobs fetched upstream: the arm64 image's only")
            netns.assert_blobs_fetched_once(self, up, "containerd via winch, prefetch on")
        finally:
            c.stop()
            fwd.stop()
            winch.stop()
            up.stop()


if __name__ == "__main__":
    netns.main()
