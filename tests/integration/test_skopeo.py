#!/usr/bin/python3
"""skopeo pulls through winch give exactly what the upstream has: the same manifest digests and
byte-identical files as the same copy straight from the upstream, for OCI and Docker v2
manifests, a 3-component name, Docker Hub's one-component names, a multi-arch index (--all and
per-platform), a Docker manifest list and a 300 MiB image. Then the upstream stops, and every
copy still succeeds through winch, byte-identical (tags served stale)."""

import hashlib
import os

import lab

# (label, path through winch, path at the upstream, extra skopeo args, what manifest.json is)
#   expect: "tag"      -> the tagged manifest (pushed digest)
#           "platform:ARCH[/VARIANT]" -> that platform's manifest from the index
CASES = [
    ("oci", "lab/busybox-oci:1.36", "lab/busybox-oci:1.36", [], "busybox", "tag"),
    ("v2s2", "library/busybox:1.36", "library/busybox:1.36", [], "busybox-v2s2", "tag"),
    ("three-components", "lab/tools/busybox:1.36", "lab/tools/busybox:1.36", [],
     "busybox-tools", "tag"),
    ("hub-one-component", "busybox:1.36", "library/busybox:1.36", [], "busybox-v2s2", "tag"),
    ("by-digest", "lab/busybox-oci@{busybox}", "lab/busybox-oci@{busybox}", [], "busybox", "tag"),
    ("index-all", "lab/multi:v1", "lab/multi:v1", ["--all"], "multi", "tag"),
    ("manifest-list-all", "lab/multi-docker:v1", "lab/multi-docker:v1", ["--all"],
     "multi-docker", "tag"),
    ("index-arm64", "lab/multi:v1", "lab/multi:v1", ["--override-arch", "arm64"], "multi",
     "platform:arm64/v8"),
    ("index-armv7", "lab/multi:v1", "lab/multi:v1",
     ["--override-arch", "arm", "--override-variant", "v7"], "multi", "platform:arm/v7"),
    ("list-armv6", "lab/multi-docker:v1", "lab/multi-docker:v1",
     ["--override-arch", "arm", "--override-variant", "v6"], "multi-docker", "platform:arm/v6"),
    ("index-amd64", "lab/multi:v1", "lab/multi:v1", [], "multi", "platform:amd64"),
    ("big", "lab/big:v1", "lab/big:v1", [], "big", "tag"),
]


def ref(template, data):
    return template.replace("{busybox}", data["images"]["busybox"]["digest"])


def expected_manifest_digest(data, image, expect):
    img = data["images"][image]
    if expect == "tag":
        return img["digest"]
    want = expect.split(":", 1)[1].split("/")
    for p in img["platforms"]:
        plat = p["platform"] or {}
        got = [plat.get("architecture")] + ([plat["variant"]] if plat.get("variant") else [])
        if got == want and plat.get("os") == "linux":
            return p["digest"]
    raise AssertionError("no platform %s in %s" % (expect, image))


class SkopeoThroughWinch(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()
        # tag_ttl_s 0: every tag request revalidates upstream, so the offline phase really
        # exercises serving stale tags rather than a fresh cache.
        cls.winch = lab.Winch([("docker.io", cls.up.url)], config={"tag_ttl_s": 0})
        cls.out = lab.tmpdir("winch-skopeo-out-")
        cls.direct = {}

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.up.stop()

    def copy(self, hostport, path, extra, dest):
        lab.skopeo_copy("docker://%s/%s" % (hostport, path), "dir:" + dest, extra)

    def check_case(self, case, phase):
        label, via, at, extra, image, expect = case
        direct = os.path.join(self.out, "direct-" + label)
        if label not in self.direct:
            self.copy(self.up.direct_hostport, ref(at, self.data), extra, direct)
            self.direct[label] = direct
        mine = os.path.join(self.out, "%s-%s" % (phase, label))
        self.copy(self.winch.hostport, ref(via, self.data), extra, mine)
        with open(os.path.join(mine, "manifest.json"), "rb") as f:
            got = "sha256:" + hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(got, expected_manifest_digest(self.data, image, expect),
                         "%s (%s): manifest digest through winch" % (label, phase))
        diffs = lab.compare_dirs(direct, mine)
        self.assertEqual(diffs, [], "%s (%s): skopeo dir through winch differs from the "
                                    "direct copy" % (label, phase))

    def test_1_online(self):
        for case in CASES:
            with self.subTest(case=case[0]):
                self.check_case(case, "online")

    def test_2_warm_copy_fetches_no_blob(self):
        """A second copy of cached images asks the upstream for no blob again."""
        for case in CASES[:3]:
            self.check_case(case, "online")
        before = self.up.count(contains="/blobs/")
        self.check_case(CASES[0], "warm")
        self.check_case(CASES[5], "warm")
        self.assertEqual(self.up.count(contains="/blobs/"), before,
                         "upstream blob requests during a warm copy: %s" % [
                             r.target for r in self.up.seen()[-20:]])

    def test_3_upstream_stopped(self):
        # Make sure everything is cached even if this test runs alone.
        for case in CASES:
            if case[0] not in self.direct:
                self.check_case(case, "online")
        self.up.stop()
        for case in CASES:
            with self.subTest(case=case[0]):
                self.check_case(case, "offline")


if __name__ == "__main__":
    lab.main()
