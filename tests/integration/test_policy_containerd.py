#!/usr/bin/python3
"""A policy refusal holds with containerd when winch is the registry's `server` in hosts.toml
(not a mirror host, so there is nothing to fall back to): `ctr pull ...:latest` fails and its
error shows the DENIED message, while the same image by version tag pulls. containerd 1.6 and
ctr run inside a loopback-only network namespace; winch in the root namespace behind a
forwarder; the upstream is the seeded docker-registry.

Needs root, containerd, runc, iproute2 (see tests/integration/netns.py)."""

import os

import lab
import netns

SNAP = ["--snapshotter", "native"]


class ContainerdRefusal(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        netns.require("containerd", "ctr", "runc", "ip", "nsenter")
        cls.data = lab.seeded()
        cls.ns = netns.Netns()

    @classmethod
    def tearDownClass(cls):
        cls.ns.stop()

    def test_ctr_pull_latest_refused(self):
        bb = self.data["images"]["busybox"]  # docker.io/lab/busybox-oci
        up = lab.seeded_registry()
        winch = lab.Winch([("docker.io", up.url)], config={"policy": [
            {"match": "docker.io/lab/busybox-oci", "deny_tags": ["^latest$"],
             "message": "pin a version: see wiki/images"}]})
        fwd = netns.Forward(self.ns, winch.hostport, name="forward-winch")
        c = netns.Containerd(self.ns)
        # winch is the registry itself for docker.io: `server`, and the one host (containerd
        # 1.6 wants a [host] table) is winch too, so there is nowhere else to go.
        hosts = lab.tmpdir("winch-ctr-hosts-")
        os.makedirs(os.path.join(hosts, "docker.io"))
        with open(os.path.join(hosts, "docker.io", "hosts.toml"), "w") as f:
            f.write('server = "http://%s"\n\n[host."http://%s"]\n'
                    '  capabilities = ["pull", "resolve"]\n' % (fwd.hostport, fwd.hostport))
        try:
            want = ("tag latest is not allowed by policy rule 1 (docker.io/lab/busybox-oci, "
                    "deny_tags ^latest$): pull a version tag or @sha256:...; pin a version: see "
                    "wiki/images")
            r = c.ctr("images", "pull", "--hosts-dir", hosts, *SNAP,
                      "docker.io/lab/busybox-oci:latest", check=False)
            self.assertNotEqual(r.returncode, 0, "ctr pull :latest succeeded:\n" + r.stdout)
            print("ctr says: " + r.stderr.strip())
            self.assertIn("DENIED", r.stderr)
            self.assertIn(want, r.stderr)
            self.assertNotIn("docker.io/lab/busybox-oci:latest", c.images())
            self.assertEqual(up.count(contains="manifests/latest"), 0)

            c.ctr("images", "pull", "--hosts-dir", hosts, *SNAP,
                  "docker.io/lab/busybox-oci:1.36")
            self.assertEqual(c.images().get("docker.io/lab/busybox-oci:1.36"), bb["digest"])
            ref = "docker.io/lab/busybox-oci@" + bb["digest"]
            c.ctr("images", "pull", "--hosts-dir", hosts, *SNAP, ref)
            self.assertEqual(c.images().get(ref), bb["digest"])
            self.assertIn("refuses: tag latest is not allowed", winch.log())
        finally:
            c.stop()
            fwd.stop()
            winch.stop()
            up.stop()


if __name__ == "__main__":
    netns.main()
