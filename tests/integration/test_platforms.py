#!/usr/bin/python3
"""Multi-arch images resolved per client platform (issue 11), against the seeded lab/multi
index (six platforms, one attestation manifest) in a real docker-registry:
  - prefetch: with the platform set linux/arm64, one tag request makes winch fetch the arm64
    manifest, config and layer with no client asking; `skopeo copy --override-arch arm64` then
    makes no upstream blob or manifest request; no other platform's manifest or layer and no
    attestation was fetched; a second tag request costs nothing upstream;
  - client groups: a group by source address (a client bound to 127.0.0.2, and one behind a
    trusted proxy named by X-Forwarded-For) and a group by path prefix (/edge/v2/...) each get
    their own platform prefetched;
  - filter: a tag request gets an index of the allowed platforms under its own digest, stable,
    served by that digest; the original by its digest unchanged; skopeo copy --all of both;
  - restrict: skopeo copy --all is refused naming the rule, the allowed platforms pull; after a
    restart, forbidden children asked for by digest alone (curl, skopeo) are still refused
    (the cache's records), also while one of two tags sharing the index remains."""

import http.client
import json
import os
import subprocess
import time

import lab

INDEX_TYPES = ["application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"]
ALL_TYPES = ["application/vnd.oci.image.manifest.v1+json",
             "application/vnd.docker.distribution.manifest.v2+json"] + INDEX_TYPES


def platform_of(desc):
    p = desc.get("platform", {})
    s = "%s/%s" % (p.get("os"), p.get("architecture"))
    return s + ("/" + p["variant"] if p.get("variant") else "")


class Image:
    """The multi-arch image as the upstream holds it: platform -> manifest, config, layers."""

    def __init__(self, up, repo, tag):
        self.repo = repo
        r = lab.get(up.direct_hostport, "/v2/%s/manifests/%s" % (repo, tag),
                    [("Accept", t) for t in ALL_TYPES])
        assert r.status == 200, r
        self.index_digest = r.header("Docker-Content-Digest")
        self.index = r.json()
        self.by_platform = {}
        self.attestations = []
        for d in self.index["manifests"]:
            ann = d.get("annotations", {})
            if ann.get("vnd.docker.reference.type") == "attestation-manifest":
                self.attestations.append(d["digest"])
                continue
            m = lab.get(up.direct_hostport, "/v2/%s/manifests/%s" % (repo, d["digest"]),
                        [("Accept", d["mediaType"])]).json()
            self.by_platform[platform_of(d)] = {
                "manifest": d["digest"], "config": m["config"]["digest"],
                "layers": [layer["digest"] for layer in m["layers"]]}

    def blobs(self, platform):
        p = self.by_platform[platform]
        return [p["config"]] + p["layers"]

    def manifest_path(self, digest):
        return "/v2/%s/manifests/%s" % (self.repo, digest)

    def blob_path(self, digest):
        return "/v2/%s/blobs/%s" % (self.repo, digest)


def get_from(source, hostport, path, headers):
    """GET from a given source address (a second loopback address is another client)."""
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class PlatformsTest(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()

    def start(self, config):
        self.up = lab.seeded_registry()
        self.addCleanup(self.up.stop)
        self.winch = lab.Winch([("docker.io", self.up.url)], config=config)
        self.addCleanup(self.winch.stop)
        self.img = Image(self.up, self.data["images"]["multi"]["repo"], "v1")

    def upstream_gets(self, path):
        return self.up.count("GET", path)

    def wait_cached(self, platform, what):
        paths = [self.img.blob_path(d) for d in self.img.blobs(platform)]
        paths.append(self.img.manifest_path(self.img.by_platform[platform]["manifest"]))
        lab.wait_for(lambda: all(self.upstream_gets(p) == 1 for p in paths) and all(
            os.path.exists(self.winch.blob_path(d))
            for d in self.img.blobs(platform)), 30, what=what)

    def assert_untouched(self, platforms):
        for plat in platforms:
            info = self.img.by_platform[plat]
            self.assertEqual(self.upstream_gets(self.img.manifest_path(info["manifest"])), 0,
                             "manifest of %s fetched" % plat)
            for d in self.img.blobs(plat):
                self.assertEqual(self.upstream_gets(self.img.blob_path(d)), 0,
                                 "blob %s of %s fetched" % (d, plat))
        for d in self.img.attestations:
            self.assertEqual(self.upstream_gets(self.img.manifest_path(d)), 0,
                             "attestation %s fetched" % d)

    def test_prefetch_arm64(self):
        self.start({"platforms": [{"match": "docker.io/**", "platforms": ["linux/arm64"],
                                   "prefetch": True}]})
        hp = self.winch.hostport
        t0 = time.monotonic()
        r = lab.get(hp, "/v2/%s/manifests/v1" % self.img.repo, [("Accept", t) for t in ALL_TYPES])
        self.assertStatus(r, 200, "tag request")
        self.assertEqual(r.header("Docker-Content-Digest"), self.img.index_digest)
        self.wait_cached("linux/arm64/v8", "the arm64 manifest, config and layer prefetched")
        lab.log("prefetch of the arm64 image after one tag request: %.2fs" % (time.monotonic() - t0))
        others = [p for p in self.img.by_platform if p != "linux/arm64/v8"]
        self.assert_untouched(others)
        # winch inspect, beside the running winch: the index's platforms, arm64 complete.
        p = subprocess.run([lab.WINCH_BIN, "inspect", "%s:v1" % self.img.repo, "--json",
                            "--cache-dir", self.winch.cache_dir], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        ins = json.loads(p.stdout)[0]
        self.assertEqual(ins["digest"], self.img.index_digest)
        plats = {e["platform"]: e for e in ins["platforms"] if not e["attestation"]}
        self.assertEqual(set(plats), set(self.img.by_platform))
        self.assertTrue(plats["linux/arm64/v8"]["cached"] and plats["linux/arm64/v8"]["complete"])
        for other in others:
            self.assertFalse(plats[other]["cached"] or plats[other]["complete"], other)

        before_blobs = self.up.count("GET", contains="/blobs/")
        before_all = self.up.count()
        dest = lab.tmpdir("winch-it-plat-")
        lab.skopeo_copy("docker://%s/%s:v1" % (hp, self.img.repo), "dir:" + dest,
                        ["--override-arch", "arm64", "--override-os", "linux"])
        self.assertEqual(self.up.count("GET", contains="/blobs/"), before_blobs,
                         "skopeo's pull of arm64 fetched blobs upstream: %s" % self.up.seen())
        manifest = json.load(open(dest + "/manifest.json"))
        self.assertEqual(manifest["config"]["digest"], self.img.by_platform["linux/arm64/v8"]["config"])
        # skopeo's requests: the tag (a fresh check is a hit within tag_ttl_s) and the arm64
        # manifest by digest (cached by the prefetch).
        self.assertEqual(self.up.count(), before_all,
                         "skopeo's pull went upstream: %s" % self.up.seen()[-5:])
        self.assert_untouched(others)
        # A second tag request: everything cached, prefetch costs nothing upstream.
        r = lab.get(hp, "/v2/%s/manifests/v1" % self.img.repo, [("Accept", t) for t in ALL_TYPES])
        self.assertStatus(r, 200, "second tag request")
        time.sleep(0.5)
        self.assertEqual(self.up.count(), before_all, "a cached prefetch went upstream")
        self.assertIn("prefetch: 1 manifest of docker.io/%s for linux/arm64 (rule)" % self.img.repo,
                      self.winch.log())

    def test_attestations_when_asked(self):
        self.start({"platforms": [{"match": "**", "platforms": ["linux/s390x"],
                                   "prefetch": True, "attestations": True}]})
        r = lab.get(self.winch.hostport, "/v2/%s/manifests/v1" % self.img.repo,
                    [("Accept", t) for t in ALL_TYPES])
        self.assertStatus(r, 200, "tag request")
        self.wait_cached("linux/s390x", "s390x prefetched")
        for d in self.img.attestations:
            lab.wait_for(lambda d=d: self.upstream_gets(self.img.manifest_path(d)) == 1, 30,
                         what="the attestation manifest prefetched")

    def test_no_rule_no_prefetch(self):
        self.start({"platforms": [{"match": "docker.io/other/*", "platforms": ["linux/arm64"],
                                   "prefetch": True}]})
        r = lab.get(self.winch.hostport, "/v2/%s/manifests/v1" % self.img.repo,
                    [("Accept", t) for t in ALL_TYPES])
        self.assertStatus(r, 200, "tag request")
        time.sleep(1.0)
        self.assert_untouched(list(self.img.by_platform))

    def test_client_groups(self):
        self.start({
            "platforms": [{"match": "**", "platforms": ["linux/amd64"], "prefetch": True}],
            "client_groups": [
                {"name": "second-address", "cidrs": ["127.0.0.2/32"],
                 "platforms": ["linux/ppc64le"]},
                {"name": "edge", "path_prefix": "/edge", "platforms": ["linux/arm/v7"]},
                {"name": "behind-proxy", "cidrs": ["198.51.100.0/24"],
                 "platforms": ["linux/s390x"]}],
            # A client behind a proxy on 127.0.0.3 is grouped by the address the proxy names.
            "trusted_proxies": ["127.0.0.3"]})
        hp = self.winch.hostport
        accept = [("Accept", t) for t in ALL_TYPES]
        status, _ = get_from("127.0.0.2", hp, "/v2/%s/manifests/v1" % self.img.repo, accept)
        self.assertEqual(status, 200)
        self.wait_cached("linux/ppc64le", "the CIDR group's platform prefetched")
        r = lab.get(hp, "/edge/v2/%s/manifests/v1" % self.img.repo, accept)
        self.assertStatus(r, 200, "tag request through /edge")
        self.assertEqual(r.header("Docker-Content-Digest"), self.img.index_digest)
        self.wait_cached("linux/arm/v7", "the path group's platform prefetched")
        status, _ = get_from("127.0.0.3", hp, "/v2/%s/manifests/v1" % self.img.repo,
                             accept + [("X-Forwarded-For", "198.51.100.20")])
        self.assertEqual(status, 200)
        self.wait_cached("linux/s390x", "the forwarded client's group's platform prefetched")
        # /edge/v2/ is the registry API too; a prefix that is no group's is not.
        self.assertStatus(lab.get(hp, "/edge/v2/"), 200, "/edge/v2/")
        self.assertOciError(lab.get(hp, "/other/v2/%s/manifests/v1" % self.img.repo, accept),
                            404, "UNSUPPORTED", "a prefix that is no group's")
        self.assert_untouched(["linux/amd64", "linux/arm/v6", "linux/arm64/v8"])
        log = self.winch.log()
        self.assertIn("for linux/ppc64le (group second-address)", log)
        self.assertIn("for linux/arm/v7 (group edge)", log)
        self.assertIn("for linux/s390x (group behind-proxy)", log)

    def test_user_agent_hint(self):
        self.start({"platforms": [{"match": "**", "platforms": ["linux/amd64"], "prefetch": True}]})
        r = lab.get(self.winch.hostport, "/v2/%s/manifests/v1" % self.img.repo,
                    [("Accept", t) for t in ALL_TYPES] +
                    [("User-Agent", "docker/24.0.7 go/go1.20 os/linux arch/arm64 "
                                    "UpstreamClient(Docker-Client/24.0.7)")])
        self.assertStatus(r, 200, "tag request")
        self.wait_cached("linux/arm64/v8", "the User-Agent's platform prefetched")
        self.assert_untouched(["linux/amd64"])


    def test_clients_without_index_types(self):
        self.start({
            "platforms": [{"match": "**", "platforms": ["linux/s390x", "linux/amd64"],
                           "prefetch": False}],
            "client_groups": [{"name": "edge", "path_prefix": "/edge",
                               "platforms": ["linux/arm/v7"]}]})
        hp = self.winch.hostport
        single = ["application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.manifest.v1+json"]
        tag = "/v2/%s/manifests/v1" % self.img.repo
        cases = [
            ("rule's first platform", tag, [], "linux/s390x"),
            ("User-Agent", tag, [("User-Agent", "cri-o/1.28 os/linux arch/arm64")],
             "linux/arm64/v8"),
            ("group by path", "/edge" + tag, [], "linux/arm/v7"),
        ]
        for what, path, extra, plat in cases:
            want = self.img.by_platform[plat]["manifest"]
            for accept in ([("Accept", t) for t in single], [("Accept", ", ".join(single))],
                           [("Accept", single[1])]):
                r = lab.get(hp, path, accept + extra)
                self.assertStatus(r, 200, "%s: %s" % (what, accept))
                self.assertEqual(r.header("Docker-Content-Digest"), want, what)
                self.assertEqual(lab.sha256_digest(r.body), want, "%s: body's digest" % what)
                self.assertEqual(r.header("Content-Type"),
                                 "application/vnd.oci.image.manifest.v1+json")
                h = lab.head(hp, path, accept + extra)
                self.assertStatus(h, 200, "HEAD " + what)
                self.assertEqual(h.header("Docker-Content-Digest"), want, "HEAD " + what)
        # A client that reads indexes gets the index, by tag.
        r = lab.get(hp, tag, [("Accept", t) for t in ALL_TYPES])
        self.assertEqual(r.header("Docker-Content-Digest"), self.img.index_digest)
        r = lab.get(hp, tag, [("Accept", "*/*")])
        self.assertEqual(r.header("Docker-Content-Digest"), self.img.index_digest)
        # By digest: never altered, whatever Accept says: as the upstream answers. (Not */*:
        # docker-registry answers an OCI index to */* with 404, winch serves it, as before.)
        for digest in (self.img.index_digest, self.img.by_platform["linux/amd64"]["manifest"]):
            path = "/v2/%s/manifests/%s" % (self.img.repo, digest)
            for accept in ([("Accept", t) for t in ALL_TYPES], [("Accept", ", ".join(single))],
                           [("Accept", INDEX_TYPES[0])], []):
                direct = lab.get(self.up.direct_hostport, path, accept)
                r = lab.get(hp, path, accept)
                self.assertEqual(r.status, direct.status, "by digest %s, %s" % (digest, accept))
                if direct.status == 200:
                    self.assertEqual(r.body, direct.body, "by digest, %s" % accept)
                    self.assertEqual(r.header("Docker-Content-Digest"), digest)


    def test_restrict(self):
        self.start({"platforms": [{"match": "docker.io/lab/*", "platforms": ["linux/arm64",
                                                                            "linux/amd64"],
                                   "restrict": True}]})
        hp = self.winch.hostport
        # skopeo copy --all asks for every platform manifest: refused, naming the rule.
        dest = lab.tmpdir("winch-it-plat-")
        with self.assertRaises(RuntimeError) as cm:
            lab.skopeo_copy("docker://%s/%s:v1" % (hp, self.img.repo), "dir:" + dest, ["--all"])
        self.assertIn("denied", str(cm.exception).lower())
        self.assertIn("is not allowed by platforms[0] (docker.io/lab/*)", str(cm.exception))
        # The raw answer: 403 DENIED for a platform outside the set, 200 inside.
        ppc = self.img.by_platform["linux/ppc64le"]["manifest"]
        r = lab.get(hp, self.img.manifest_path(ppc), [("Accept", t) for t in ALL_TYPES])
        self.assertOciError(r, 403, "DENIED", "ppc64le by digest")
        self.assertIn(b"platform linux/ppc64le is not allowed by platforms[0]", r.body)
        self.assertEqual(self.upstream_gets(self.img.manifest_path(ppc)), 0,
                         "a refused manifest was fetched upstream")
        # The allowed platforms pull.
        for arch in ("arm64", "amd64"):
            dest = lab.tmpdir("winch-it-plat-")
            lab.skopeo_copy("docker://%s/%s:v1" % (hp, self.img.repo), "dir:" + dest,
                            ["--override-arch", arch, "--override-os", "linux"])

    def test_restrict_across_restart(self):
        """restrict knows a child's platform from the cache's records of the indexes it stored:
        after a restart, a forbidden child asked for by digest alone (curl, skopeo) is refused
        without going upstream; an allowed one is served byte-identical. Two tags share the
        index: removing one keeps the records (the index stays); removing both drops them."""
        seeded = lab.seeded_registry(count=False, name="seeded")
        self.addCleanup(seeded.stop)
        self.up = lab.Registry(name="upstream-two-tags")
        self.addCleanup(self.up.stop)
        repo = self.data["images"]["multi"]["repo"]
        for tag in ("v1", "v2"):
            lab.skopeo_copy("docker://%s/%s:v1" % (seeded.direct_hostport, repo),
                            "docker://%s/%s:%s" % (self.up.direct_hostport, repo, tag),
                            ["--all", "--preserve-digests"])
        self.img = Image(self.up, repo, "v1")
        self.assertEqual(Image(self.up, repo, "v2").index_digest, self.img.index_digest)
        self.winch = lab.Winch([("docker.io", self.up.url)], config={
            "tag_ttl_s": 3600,
            "platforms": [{"match": "docker.io/lab/*",
                           "platforms": ["linux/arm64", "linux/amd64"], "restrict": True}]})
        self.addCleanup(self.winch.stop)
        accept = [("Accept", t) for t in ALL_TYPES]
        for tag in ("v1", "v2"):
            r = lab.get(self.winch.hostport, "/v2/%s/manifests/%s" % (repo, tag), accept)
            self.assertStatus(r, 200, "tag " + tag)
            self.assertEqual(r.header("Docker-Content-Digest"), self.img.index_digest)
        forbidden = {p: self.img.by_platform[p]["manifest"] for p in self.img.by_platform
                     if p not in ("linux/amd64", "linux/arm64/v8")}
        self.assertEqual(len(forbidden), 4, forbidden)
        arm64 = self.img.by_platform["linux/arm64/v8"]["manifest"]
        ppc = forbidden["linux/ppc64le"]
        msg = "platform linux/ppc64le is not allowed by platforms[0] (docker.io/lab/*)"

        def refused_after_restart(what):
            self.winch.restart()
            hp = self.winch.hostport
            # curl with the OCI Accept, as a client that never saw the index would ask.
            out = subprocess.run(
                ["curl", "-sS", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
                 "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json",
                 "-w", "\n%{http_code}", "http://%s%s" % (hp, self.img.manifest_path(ppc))],
                capture_output=True, text=True, timeout=30, check=True).stdout
            body, code = out.rsplit("\n", 1)
            self.assertEqual(code, "403", "%s: curl %s" % (what, out))
            self.assertEqual(json.loads(body)["errors"][0]["code"], "DENIED", body)
            self.assertIn(msg, body)
            for plat, digest in forbidden.items():
                r = lab.get(hp, self.img.manifest_path(digest), accept)
                self.assertOciError(r, 403, "DENIED", "%s: %s by digest" % (what, plat))
                self.assertIn(("platform %s is not allowed" % plat.replace("/v8", "")).encode(),
                              r.body)
            with self.assertRaises(RuntimeError) as cm:
                lab.skopeo_copy("docker://%s/%s@%s" % (hp, repo, ppc),
                                "dir:" + lab.tmpdir("winch-it-plat-"))
            self.assertIn("denied", str(cm.exception).lower())
            self.assertIn(msg, str(cm.exception))
            for digest in forbidden.values():
                self.assertEqual(self.upstream_gets(self.img.manifest_path(digest)), 0,
                                 "%s: a refused manifest was fetched upstream" % what)

        refused_after_restart("after a restart")
        # The allowed child by digest: 200, the upstream's bytes.
        direct = lab.get(self.up.direct_hostport, self.img.manifest_path(arm64), accept)
        r = lab.get(self.winch.hostport, self.img.manifest_path(arm64), accept)
        self.assertStatus(r, 200, "the allowed child by digest")
        self.assertEqual(r.body, direct.body)
        self.assertEqual(r.header("Docker-Content-Digest"), arm64)
        dest = lab.tmpdir("winch-it-plat-")
        lab.skopeo_copy("docker://%s/%s@%s" % (self.winch.hostport, repo, arm64), "dir:" + dest)
        with open(os.path.join(dest, "manifest.json"), "rb") as fh:
            self.assertEqual(fh.read(), direct.body)

        # One of the two tags removed: the index stays (the other names it), so do its records.
        self.winch.stop()
        rm = subprocess.run([lab.WINCH_BIN, "rm", "%s:v1" % repo, "--cache-dir",
                             self.winch.cache_dir], capture_output=True, text=True, timeout=60)
        self.assertEqual(rm.returncode, 0, rm.stderr)
        refused_after_restart("v1 removed")
        # Both removed: the index and its records go. No index names the child any more: its
        # manifest is fetched and its config decides (refused all the same, no layer fetched).
        self.winch.stop()
        rm = subprocess.run([lab.WINCH_BIN, "rm", "%s:v2" % repo, "--cache-dir",
                             self.winch.cache_dir], capture_output=True, text=True, timeout=60)
        self.assertEqual(rm.returncode, 0, rm.stderr)
        self.winch.restart()
        r = lab.get(self.winch.hostport, self.img.manifest_path(ppc), accept)
        self.assertOciError(r, 403, "DENIED", "a child of no cached index")
        self.assertIn(msg.encode(), r.body)
        self.assertEqual(self.upstream_gets(self.img.manifest_path(ppc)), 1)
        self.assertIn("refused: %s (its config's platform)" % msg, self.winch.log())

    def test_restrict_without_index(self):
        """A child asked for by digest when winch never saw its index (a fresh cache): its
        config says its platform. A forbidden one is refused after its manifest and config
        (never a layer); an allowed one is served byte-identical and its config, read for the
        check, is cached for the client's next request (one upstream GET)."""
        self.start({"platforms": [{"match": "docker.io/lab/*", "platforms": ["linux/arm64",
                                                                            "linux/amd64"],
                                   "restrict": True}]})
        hp = self.winch.hostport
        repo = self.img.repo
        accept = [("Accept", t) for t in ALL_TYPES]
        for plat in ("linux/ppc64le", "linux/arm/v7"):
            info = self.img.by_platform[plat]
            with self.assertRaises(RuntimeError) as cm:
                lab.skopeo_copy("docker://%s/%s@%s" % (hp, repo, info["manifest"]),
                                "dir:" + lab.tmpdir("winch-it-plat-"))
            self.assertIn("platform %s is not allowed by platforms[0] (docker.io/lab/*)" % plat,
                          str(cm.exception))
            r = lab.get(hp, self.img.manifest_path(info["manifest"]), accept)
            self.assertOciError(r, 403, "DENIED", plat)
            self.assertEqual(self.upstream_gets(self.img.manifest_path(info["manifest"])), 1,
                             "%s: the manifest is fetched once" % plat)
            self.assertEqual(self.upstream_gets(self.img.blob_path(info["config"])), 1,
                             "%s: the config is fetched once" % plat)
            for d in info["layers"]:
                self.assertEqual(self.upstream_gets(self.img.blob_path(d)), 0, plat)
        self.assertEqual(self.upstream_gets(self.img.manifest_path(self.img.index_digest)), 0)
        info = self.img.by_platform["linux/arm64/v8"]
        direct = lab.get(self.up.direct_hostport, self.img.manifest_path(info["manifest"]), accept)
        dest = lab.tmpdir("winch-it-plat-")
        lab.skopeo_copy("docker://%s/%s@%s" % (hp, repo, info["manifest"]), "dir:" + dest)
        with open(os.path.join(dest, "manifest.json"), "rb") as fh:
            self.assertEqual(fh.read(), direct.body)
        self.assertEqual(self.upstream_gets(self.img.blob_path(info["config"])), 1,
                         "the allowed image's config: one upstream GET, check and client")
        r = lab.get(hp, self.img.manifest_path(info["manifest"]), accept)
        self.assertStatus(r, 200, "the allowed child by digest")
        self.assertEqual(r.body, direct.body)
        # An attestation manifest names no platform (its config says unknown/unknown): served.
        self.assertTrue(self.img.attestations)
        for d in self.img.attestations:
            r = lab.get(hp, self.img.manifest_path(d), accept)
            self.assertStatus(r, 200, "attestation %s by digest" % d)
            self.assertEqual(lab.sha256_digest(r.body), d)

    def test_filter(self):
        self.start({"platforms": [{"match": "docker.io/lab/*", "platforms": ["linux/arm64",
                                                                            "linux/amd64"],
                                   "filter": True}]})
        hp = self.winch.hostport
        tag = "/v2/%s/manifests/v1" % self.img.repo
        accept = [("Accept", t) for t in ALL_TYPES]
        r = lab.get(hp, tag, accept)
        self.assertStatus(r, 200, "tag request")
        fdigest = r.header("Docker-Content-Digest")
        self.assertNotEqual(fdigest, self.img.index_digest, "the filtered index's own digest")
        self.assertEqual(lab.sha256_digest(r.body), fdigest)
        self.assertEqual(r.header("Content-Type"), self.img.index.get("mediaType", INDEX_TYPES[0]))
        kept = {d["digest"] for d in r.json()["manifests"]}
        allowed = {self.img.by_platform[p]["manifest"] for p in ("linux/amd64", "linux/arm64/v8")}
        # The attestations of the kept images stay (the lab's one describes amd64).
        atts = {d["digest"] for d in self.img.index["manifests"]
                if d.get("annotations", {}).get("vnd.docker.reference.digest") in allowed}
        self.assertTrue(atts, "the lab image has an attestation of amd64")
        self.assertEqual(kept, allowed | atts)
        # Stable: the next tag request (and HEAD) names the same digest.
        self.assertEqual(lab.get(hp, tag, accept).header("Docker-Content-Digest"), fdigest)
        self.assertEqual(lab.head(hp, tag, accept).header("Docker-Content-Digest"), fdigest)
        # By digest: the filtered index, and the original unchanged.
        f = lab.get(hp, self.img.manifest_path(fdigest), accept)
        self.assertStatus(f, 200, "the filtered index by digest")
        self.assertEqual(f.body, r.body)
        o = lab.get(hp, self.img.manifest_path(self.img.index_digest), accept)
        direct = lab.get(self.up.direct_hostport, self.img.manifest_path(self.img.index_digest),
                         accept)
        self.assertStatus(o, 200, "the original by digest")
        self.assertEqual(o.body, direct.body)
        # skopeo copy --all through the tag: the allowed platforms only.
        dest = lab.tmpdir("winch-it-plat-")
        lab.skopeo_copy("docker://%s/%s:v1" % (hp, self.img.repo), "dir:" + dest, ["--all"])
        with open(os.path.join(dest, "manifest.json"), "rb") as fh:
            copied = fh.read()
        self.assertEqual(lab.sha256_digest(copied), fdigest)
        for d in allowed:
            self.assertTrue(os.path.exists(os.path.join(dest, d.split(":", 1)[1] +
                                                        ".manifest.json")), d)
        # Nothing of the other platforms went upstream (the kept attestation did: skopeo --all
        # copies every entry of the index it gets).
        for plat in self.img.by_platform:
            if plat in ("linux/amd64", "linux/arm64/v8"):
                continue
            info = self.img.by_platform[plat]
            for path in [self.img.manifest_path(info["manifest"])] + [
                    self.img.blob_path(d) for d in self.img.blobs(plat)]:
                self.assertEqual(self.upstream_gets(path), 0, "%s of %s fetched" % (path, plat))
        # and the original by digest, every platform.
        dest = lab.tmpdir("winch-it-plat-")
        lab.skopeo_copy("docker://%s/%s@%s" % (hp, self.img.repo, self.img.index_digest),
                        "dir:" + dest, ["--all"])
        with open(os.path.join(dest, "manifest.json"), "rb") as fh:
            self.assertEqual(fh.read(), direct.body)
        self.assertIn("filtered index %s of %s" % (fdigest, self.img.index_digest),
                      self.winch.log())

    def test_restrict_knows_imported_and_warmed(self):
        """Indexes stored by `winch warm` and `winch import` record their children too: a winch
        serving such a cache, with no reachable upstream, refuses a forbidden child by digest
        from the records alone."""
        up = lab.seeded_registry(count=False)
        self.addCleanup(up.stop)
        self.img = Image(up, self.data["images"]["multi"]["repo"], "v1")
        ppc = self.img.by_platform["linux/ppc64le"]["manifest"]
        work = lab.tmpdir("winch-it-plat-")
        dead = "http://127.0.0.1:%d" % lab.free_port()
        restrict = {"platforms": [{"match": "docker.io/lab/*", "platforms": ["linux/arm64"],
                                   "restrict": True}]}

        def run(*args):
            p = subprocess.run([lab.WINCH_BIN] + list(args), capture_output=True, text=True,
                               timeout=300, stdin=subprocess.DEVNULL)
            self.assertEqual(p.returncode, 0, "winch %s\n%s%s" % (args, p.stdout, p.stderr))

        def config(cache, url):
            path = os.path.join(work, os.path.basename(cache) + ".json")
            with open(path, "w") as f:
                json.dump({"cache_dir": cache, "listen": "127.0.0.1:0",
                           "upstreams": [{"name": "docker.io", "url": url}]}, f)
            return path

        warmed = os.path.join(work, "warmed")
        run("warm", "--config", config(warmed, up.url), "%s:v1" % self.img.repo, "--platform",
            "linux/arm64/v8")
        imported = os.path.join(work, "imported")
        os.makedirs(imported)
        archive = os.path.join(work, "multi.tar")
        lab.skopeo_copy("docker://%s/%s:v1" % (up.direct_hostport, self.img.repo),
                        "oci-archive:%s:docker.io/%s:v1" % (archive, self.img.repo),
                        ["--all", "--preserve-digests"])
        run("import", archive, "--config", config(imported, dead))
        for cache in (warmed, imported):
            w = lab.Winch([("docker.io", dead)], config=restrict, cache_dir=cache)
            try:
                r = lab.get(w.hostport, self.img.manifest_path(ppc),
                            [("Accept", t) for t in ALL_TYPES])
                self.assertOciError(r, 403, "DENIED", cache)
                self.assertIn(b"platform linux/ppc64le is not allowed by platforms[0]", r.body)
            finally:
                w.stop()

    def test_filter_and_restrict(self):
        """filter and restrict together: skopeo copy --all of the tag (the filtered index, with
        the attestation of an allowed platform) works; of the original index by digest it is
        refused, naming the rule."""
        self.start({"platforms": [{"match": "docker.io/lab/*", "platforms": ["linux/arm64",
                                                                            "linux/amd64"],
                                   "filter": True, "restrict": True}]})
        hp = self.winch.hostport
        lab.skopeo_copy("docker://%s/%s:v1" % (hp, self.img.repo),
                        "dir:" + lab.tmpdir("winch-it-plat-"), ["--all"])
        with self.assertRaises(RuntimeError) as cm:
            lab.skopeo_copy("docker://%s/%s@%s" % (hp, self.img.repo, self.img.index_digest),
                            "dir:" + lab.tmpdir("winch-it-plat-"), ["--all"])
        self.assertIn("is not allowed by platforms[0] (docker.io/lab/*)", str(cm.exception))

    def test_filter_nothing_allowed(self):
        self.start({"platforms": [{"match": "**", "platforms": ["windows/amd64"],
                                   "filter": True}]})
        hp = self.winch.hostport
        accept = [("Accept", t) for t in ALL_TYPES]
        r = lab.get(hp, "/v2/%s/manifests/v1" % self.img.repo, accept)
        self.assertOciError(r, 403, "DENIED", "an index with no allowed platform, by tag")
        self.assertIn(b"no platform of this index is allowed by platforms[0] (**)", r.body)
        r = lab.get(hp, self.img.manifest_path(self.img.index_digest), accept)
        self.assertStatus(r, 200, "the original by digest")
        self.assertEqual(r.header("Docker-Content-Digest"), self.img.index_digest)
        # A single-platform image under the same rule is no index: served as it is.
        bb = self.data["images"]["busybox"]
        r = lab.get(hp, "/v2/%s/manifests/%s" % (bb["repo"], bb["tag"]), accept)
        self.assertStatus(r, 200, "a single image by tag")
        self.assertEqual(r.header("Docker-Content-Digest"), bb["digest"])


if __name__ == "__main__":
    lab.main()
