#!/usr/bin/python3
"""Pull-time policy against the real seeded docker-registry (and a writable one for image
ages), with skopeo and raw HTTP:

- deny_tags: `skopeo copy ...:latest` fails with 403 DENIED and the rule's message, for GET and
  HEAD, without a byte of upstream traffic; the same image by version tag and by digest passes;
- deny / allow by glob, first match deciding (manifests, blobs, tags/list and referrers alike);
- require_digest on a second upstream (both routings: /v2/NAME/... and ?ns=);
- max_image_bytes: an image over the bound refused, an index judged per platform manifest;
- max_image_age_days: the config blob fetched (once, then cached) to read `created`;
- audit: the pull is served, the log says what would have been refused and by which rule;
- `winch policy explain` output for several references, text and --json;
- a configuration with an invalid regex or glob stops `winch serve` (and explain) at start,
  naming the rule and field."""

import json
import os
import time

import lab
import policy_images as pi

ALL = pi.ALL


def error_message(resp):
    """The first OCI error's message of resp."""
    return resp.json()["errors"][0]["message"]


class Policy(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.bb = cls.data["images"]["busybox"]  # lab/busybox-oci, tags 1.36 ... latest

    def setUp(self):
        self.up = lab.seeded_registry()

    def tearDown(self):
        self.up.stop()

    def winch(self, policy, extra=None, upstreams=None, **kw):
        cfg = {"policy": policy}
        cfg.update(extra or {})
        return lab.Winch(upstreams or [("docker.io", self.up.url)], config=cfg, **kw)

    def test_deny_tags_skopeo(self):
        w = self.winch([{"match": "docker.io/lab/busybox-oci", "deny_tags": ["^latest$"],
                         "message": "pin a version: see wiki/images"}])
        try:
            want = ("tag latest is not allowed by policy rule 1 (docker.io/lab/busybox-oci, "
                    "deny_tags ^latest$): pull a version tag or @sha256:...; pin a version: see "
                    "wiki/images")
            err = pi.skopeo_copy_error("docker://%s/lab/busybox-oci:latest" % w.hostport)
            self.assertIsNotNone(err, "skopeo copy of :latest succeeded")
            self.assertIn("denied", err.lower())
            self.assertIn(want, err)
            r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/latest", ALL)
            self.assertOciError(r, 403, "DENIED", "GET :latest")
            self.assertEqual(error_message(r), want)
            r = lab.head(w.hostport, "/v2/lab/busybox-oci/manifests/latest", ALL)
            self.assertEqual(r.status, 403, "HEAD :latest")
            self.assertIsNone(r.header("Docker-Content-Digest"))
            # No body for HEAD: the status line carries the text (containerd shows it).
            self.assertEqual(r.reason, "DENIED: " + want)
            self.assertEqual(self.up.count(contains="manifests/latest"), 0,
                             "a refused tag reached the upstream")
            pi.wait_log(w, "lab/busybox-oci:latest policy rule 1 (docker.io/lab/busybox-oci) "
                           "refuses: tag latest")

            # The same image by version tag and by digest.
            out = lab.tmpdir("winch-pol-ok-")
            lab.skopeo_copy("docker://%s/lab/busybox-oci:1.36" % w.hostport, "dir:" + out + "/t")
            self.assertEqual(lab.file_digest(out + "/t/manifest.json"), self.bb["digest"])
            lab.skopeo_copy("docker://%s/lab/busybox-oci@%s" % (w.hostport, self.bb["digest"]),
                            "dir:" + out + "/d")
            self.assertEqual(lab.compare_dirs(out + "/t", out + "/d"), [])
            # Tags a regex does not match: anchored, so "a-first" and "1.36.1" pass.
            for tag in ("1.36.1", "a-first"):
                st, dcd, _, _ = pi.served_digest(w, "lab/busybox-oci", tag)
                self.assertEqual((st, dcd), (200, self.bb["digest"]), tag)
        finally:
            w.stop()

    def test_deny_allow_first_match(self):
        multi = self.data["images"]["multi"]
        w = self.winch([{"match": "docker.io/lab/busybox-oci", "allow": True},
                        {"match": "docker.io/lab/**", "deny": True,
                         "message": "lab images are internal"}])
        try:
            st, dcd, _, _ = pi.served_digest(w, "lab/busybox-oci", "1.36", "GET")
            self.assertEqual((st, dcd), (200, self.bb["digest"]), "allowed by the first rule")
            st, dcd, _, _ = pi.served_digest(w, "library/busybox", "1.36", "GET")
            self.assertEqual(st, 200, "no rule matches: allowed")
            want = ("repository docker.io/lab/multi is denied by policy rule 2 (docker.io/lab/**)"
                    ": use an allowed repository; lab images are internal")
            blob = multi["platforms"][0]["digest"]
            layer = next(iter(self.data["images"]["multi"]["blobs"]))
            for method, path in [
                    ("GET", "/v2/lab/multi/manifests/v1"),
                    ("HEAD", "/v2/lab/multi/manifests/v1"),
                    ("GET", "/v2/lab/multi/manifests/" + multi["digest"]),
                    ("GET", "/v2/lab/multi/manifests/" + blob),
                    ("GET", "/v2/lab/multi/blobs/" + layer),
                    ("HEAD", "/v2/lab/multi/blobs/" + layer),
                    ("GET", "/v2/lab/multi/tags/list"),
                    ("GET", "/v2/lab/multi/referrers/" + multi["digest"])]:
                r = lab.request(w.hostport, method, path, ALL)
                self.assertEqual(r.status, 403, "%s %s: %r" % (method, path, r))
                if method == "GET":
                    self.assertEqual(error_message(r), want, path)
            # ** spans any depth under lab/.
            r = lab.get(w.hostport, "/v2/lab/tools/busybox/manifests/1.36", ALL)
            self.assertOciError(r, 403, "DENIED", "three components")
            self.assertIn("docker.io/lab/tools/busybox is denied by policy rule 2", error_message(r))
            err = pi.skopeo_copy_error("docker://%s/lab/multi:v1" % w.hostport)
            self.assertIn(want, err or "")
            self.assertEqual(self.up.count(contains="/lab/multi/"), 0)
            self.assertEqual(self.up.count(contains="/lab/tools/"), 0)
        finally:
            w.stop()
        # The other order: the deny comes first and decides for busybox-oci as well.
        w = self.winch([{"match": "docker.io/lab/**", "deny": True},
                        {"match": "docker.io/lab/busybox-oci", "allow": True}])
        try:
            r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/1.36", ALL)
            self.assertOciError(r, 403, "DENIED", "deny first")
            self.assertIn("policy rule 1 (docker.io/lab/**)", error_message(r))
            self.assertIn("policy rule 2 (docker.io/lab/busybox-oci) is never used", w.log())
        finally:
            w.stop()

    def test_catalog_hides_denied(self):
        """A denied repository already in the cache is not listed by _catalog either."""
        w = self.winch([])
        try:
            for repo in ("lab/busybox-oci", "library/busybox"):
                st, _, _, _ = pi.served_digest(w, repo, "1.36", "GET")
                self.assertEqual(st, 200, repo)
            # Repositories reach the index with the manifests' commit, just after the answers.
            lab.wait_for(lambda: sorted(json.loads(lab.get(w.hostport, "/v2/_catalog", ALL).body)
                                        ["repositories"]) == ["lab/busybox-oci", "library/busybox"],
                         10, what="both repositories in _catalog")
            cache = w.cache_dir
        finally:
            w.stop()
        w = self.winch([{"match": "docker.io/lab/**", "deny": True}], cache_dir=cache)
        try:
            r = lab.get(w.hostport, "/v2/_catalog", ALL)
            self.assertStatus(r, 200, "catalog")
            self.assertEqual(json.loads(r.body)["repositories"], ["library/busybox"])
            r = lab.get(w.hostport, "/v2/_catalog?n=1", ALL)
            self.assertEqual(json.loads(r.body)["repositories"], ["library/busybox"])
        finally:
            w.stop()

    def test_require_digest(self):
        up2 = lab.seeded_registry(name="upstream-ghcr.io")
        multi = self.data["images"]["multi"]
        w = self.winch([{"match": "ghcr.io/**", "require_digest": True}],
                       upstreams=[("docker.io", self.up.url), ("ghcr.io", up2.url)])
        try:
            for path in ("/v2/ghcr.io/lab/multi/manifests/v1",
                         "/v2/lab/multi/manifests/v1?ns=ghcr.io"):
                r = lab.get(w.hostport, path, ALL)
                self.assertOciError(r, 403, "DENIED", path)
                self.assertEqual(error_message(r),
                                 "pulls by tag (lab/multi:v1) are not allowed by policy rule 1 "
                                 "(ghcr.io/**): pull by digest (lab/multi@sha256:...)")
            err = pi.skopeo_copy_error("docker://%s/ghcr.io/lab/multi:v1" % w.hostport)
            self.assertIn("pulls by tag (lab/multi:v1) are not allowed", err or "")
            got = pi.skopeo_copy_manifest("docker://%s/ghcr.io/lab/multi@%s" % (
                w.hostport, multi["digest"]), ["--override-arch", "arm64"])
            self.assertEqual(got, netns_platform(multi, "arm64"))
            # The default upstream has no such rule.
            self.assertEqual(pi.served_digest(w, "lab/multi", "v1")[0], 200)
            self.assertEqual(up2.count(contains="manifests/v1"), 0)
        finally:
            w.stop()
            up2.stop()

    def test_max_image_bytes(self):
        md = self.data["images"]["multi-docker"]
        w = self.winch([{"match": "docker.io/lab/multi-docker", "max_image_bytes": 10},
                        {"match": "docker.io/lab/**", "max_image_bytes": 100000}])
        try:
            size = sum(b["size"] for b in self.bb["blobs"].values())
            for method in ("GET", "HEAD"):
                for ref in ("1.36", self.bb["digest"]):
                    r = lab.request(w.hostport, method, "/v2/lab/busybox-oci/manifests/" + ref,
                                    ALL)
                    self.assertEqual(r.status, 403, "%s %s: %r" % (method, ref, r))
            r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/1.36", ALL)
            self.assertIn("image docker.io/lab/busybox-oci@%s is " % self.bb["digest"],
                          error_message(r))
            self.assertIn("(%d bytes), over the 100kB (100000 bytes) allowed by policy rule 2 "
                          "(docker.io/lab/**): use a smaller image" % size, error_message(r))
            self.assertIsNotNone(pi.skopeo_copy_error(
                "docker://%s/lab/busybox-oci:1.36" % w.hostport))
            # An index is judged per platform manifest: the small ones pass.
            pi.skopeo_copy_manifest("docker://%s/lab/multi:v1" % w.hostport,
                                    ["--override-arch", "arm64"])
            # Every platform of multi-docker is over 10 bytes: the list is served, each
            # platform manifest refused.
            st, dcd, _, _ = pi.served_digest(w, "lab/multi-docker", "v1", "GET")
            self.assertEqual((st, dcd), (200, md["digest"]))
            for p in md["platforms"]:
                r = lab.get(w.hostport, "/v2/lab/multi-docker/manifests/" + p["digest"], ALL)
                self.assertOciError(r, 403, "DENIED", "platform %s" % p["platform"])
            err = pi.skopeo_copy_error("docker://%s/lab/multi-docker:v1" % w.hostport)
            self.assertIn("allowed by policy rule 1 (docker.io/lab/multi-docker)", err or "")
            # Size needs no config blob: none was fetched.
            cfg = [d for d, b in self.bb["blobs"].items() if "config" in b["media_type"]][0]
            self.assertEqual(self.up.count(contains=cfg), 0)
        finally:
            w.stop()

    def test_max_image_age_days(self):
        up = lab.Registry()
        now = time.time()
        old_created = pi.rfc3339(now - 400 * 86400)
        old = pi.build_image("old", old_created)
        new = pi.build_image("new", pi.rfc3339(now - 10 * 86400))
        none = pi.build_image("none", None)
        for img, tag in ((old, "old"), (new, "new"), (none, "none")):
            pi.push(up, img, "lab/app", tag)
        w = lab.Winch([("docker.io", up.url)],
                      config={"policy": [{"match": "docker.io/lab/app",
                                          "max_image_age_days": 365}]})
        try:
            self.assertEqual(pi.served_digest(w, "lab/app", "new", "GET")[:2], (200, new.digest))
            r = lab.get(w.hostport, "/v2/lab/app/manifests/old", ALL)
            self.assertOciError(r, 403, "DENIED", "old image")
            self.assertIn("image docker.io/lab/app@%s was created %s, 400 days ago, more than "
                          "the 365 days allowed by policy rule 1 (docker.io/lab/app): use a more "
                          "recent build" % (old.digest, old_created),
                          error_message(r))
            self.assertEqual(lab.head(w.hostport, "/v2/lab/app/manifests/" + old.digest,
                                      ALL).status, 403)
            err = pi.skopeo_copy_error("docker://%s/lab/app:old" % w.hostport)
            self.assertIn("400 days ago", err or "")
            # No created field: the age is unknown, the image is not refused for it.
            self.assertEqual(pi.served_digest(w, "lab/app", "none", "GET")[0], 200)
            pi.wait_log(w, "has no created time winch can read")
            # The config blob was fetched once and is in the cache like any blob.
            self.assertEqual(up.count("GET", "/v2/lab/app/blobs/" + old.config), 1)
            self.assertTrue(os.path.exists(w.blob_path(old.config)))
            r = lab.get(w.hostport, "/v2/lab/app/manifests/old", ALL)
            self.assertEqual(r.status, 403)
            self.assertEqual(up.count("GET", "/v2/lab/app/blobs/" + old.config), 1)
            # The test clock makes the new image old.
            w.stop()
            w.env["WINCH_TEST_CLOCK_OFFSET_S"] = str(400 * 86400)
            w.restart()
            r = lab.get(w.hostport, "/v2/lab/app/manifests/" + new.digest, ALL)
            self.assertOciError(r, 403, "DENIED", "new image, 400 days later")
        finally:
            w.stop()
            up.stop()

    def test_audit(self):
        w = self.winch([{"match": "docker.io/lab/busybox-oci", "deny_tags": ["^latest$"],
                         "max_image_bytes": 1000, "audit": True}])
        try:
            got = pi.skopeo_copy_manifest("docker://%s/lab/busybox-oci:latest" % w.hostport)
            self.assertEqual(got, self.bb["digest"])
            pi.wait_log(w, "lab/busybox-oci:latest policy rule 1 (docker.io/lab/busybox-oci): "
                           "audit: would refuse: tag latest is not allowed by policy rule 1")
            got = pi.skopeo_copy_manifest("docker://%s/lab/busybox-oci:1.36" % w.hostport)
            self.assertEqual(got, self.bb["digest"])
            pi.wait_log(w, "audit: would refuse: image docker.io/lab/busybox-oci@%s is" %
                        self.bb["digest"])
            # Once per request: one audit line per manifest request.
            lines = [ln for ln in w.log().splitlines() if "audit: would refuse" in ln]
            reqs = set(ln.split("req=")[1].split()[0] for ln in lines)
            self.assertEqual(len(lines), len(reqs), lines)
        finally:
            w.stop()

    def test_explain(self):
        cfg = pi.config_file({
            "upstreams": [{"name": "docker.io", "url": self.up.url},
                          {"name": "ghcr.io", "url": self.up.url}],
            "cache_dir": os.path.join(lab.tmpdir("winch-pol-explain-"), "none"),
            "policy": [
                {"match": "docker.io/library/*", "deny_tags": ["^latest$"],
                 "message": "pin a version: see wiki/images"},
                {"match": "docker.io/acme/**", "allow": True},
                {"match": "ghcr.io/**", "require_digest": True},
                {"match": "docker.io/lab/app", "pin": {"stable": self.bb["digest"]}},
                {"match": "docker.io/lab/node", "soak_s": 86400},
                {"match": "docker.io/**", "max_image_bytes": 2147483648,
                 "max_image_age_days": 365, "audit": True},
                {"match": "docker.io/library/busybox", "freeze": True},
                {"match": "**", "deny": True}]})

        def explain(*refs):
            return pi.winch_cli("policy", "explain", "--config", cfg, *refs)

        r = explain("busybox:latest")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("warning: rule 7 (docker.io/library/busybox) is never used: rule 1 "
                      "(docker.io/library/*) comes first", r.stdout)
        self.assertIn("docker.io/library/busybox:latest\n"
                      "  rule       1 (docker.io/library/*) decides, with every field it carries\n"
                      "  not used   later rules that match too: 6 (docker.io/**), "
                      "7 (docker.io/library/busybox), 8 (**)\n"
                      "  decision   refused: 403 DENIED\n"
                      "  message    tag latest is not allowed by policy rule 1 "
                      "(docker.io/library/*, deny_tags ^latest$): pull a version tag or "
                      "@sha256:...; pin a version: see wiki/images\n", r.stdout)
        r = explain("busybox:1.36", "acme/app:latest", "lab/app:stable", "lab/node:20",
                    "lab/x:1", "ghcr.io/a/b@" + self.bb["digest"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout
        self.assertIn("docker.io/library/busybox:1.36\n  rule       1 (docker.io/library/*)", out)
        self.assertIn("docker.io/acme/app:latest\n  rule       2 (docker.io/acme/**) decides",
                      out)
        self.assertIn("  decision   allowed (allow: true)\n", out)
        self.assertIn("  serves     %s: pinned by the configuration (rule 4)" % self.bb["digest"],
                      out)
        self.assertIn("  soak       a new upstream digest for the tag is served once winch has "
                      "seen it for 86400s", out)
        self.assertIn("docker.io/lab/x:1\n  rule       6 (docker.io/**)", out)
        self.assertIn("  image      checked when pulled: at most 2.147GB (2147483648 bytes), "
                      "built in the last 365 days (an index: each platform manifest); audit",
                      out)
        self.assertIn("ghcr.io/a/b@%s\n  rule       3 (ghcr.io/**)" % self.bb["digest"], out)
        r = explain("ghcr.io/a/b:1", "quay.io/x:1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("registry quay.io is not a configured upstream", r.stderr)
        r = explain("ghcr.io/a/b:1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("pulls by tag (a/b:1) are not allowed by policy rule 3", r.stdout)
        r = pi.winch_cli("policy", "explain", "--config", cfg, "--json", "busybox:latest",
                         "docker.io/zz/top:1")
        self.assertEqual(r.returncode, 1, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual([d["decision"] for d in doc], ["refused", "allowed"])
        self.assertEqual(doc[0]["rule"], 1)
        self.assertEqual(doc[0]["reason"], "deny_tags")
        self.assertEqual(doc[1]["rule"], 6)
        self.assertEqual(doc[1]["checked_when_pulled"], ["image", "created"])
        for bad in (["policy"], ["policy", "explain"], ["policy", "frob", "x"],
                    ["policy", "explain", "--frob", "x"]):
            r = pi.winch_cli(*bad)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn("usage" if "--frob" not in bad else "unknown option", r.stderr)

    def test_invalid_config_refused_at_start(self):
        for policy, want in [
                ([{"match": "docker.io/x", "deny": True},
                  {"match": "docker.io/y", "deny_tags": ["^ok$", "(unclosed"]}],
                 "policy[1].deny_tags[1]: invalid regex \"(unclosed\""),
                ([{"match": "docker.io//x", "deny": True}],
                 "policy[0].match: \"docker.io//x\" is not a usable glob"),
                ([{"match": "quay.io/**", "deny": True}],
                 "policy[0].match: \"quay.io\" is not a configured upstream"),
                ([{"match": "docker.io/x", "pin": {"v1": "sha256:1234"}}],
                 "policy[0].pin.v1: \"sha256:1234\" is not a digest"),
                ([{"match": "docker.io/x", "freeze": True, "soak_s": 60}],
                 "policy[0].soak_s: has no effect")]:
            path = pi.config_file({"policy": policy})
            r = pi.winch_cli("serve", "--config", path, "--listen", "127.0.0.1:0",
                             "--cache-dir", os.path.join(lab.tmpdir("winch-pol-bad-"), "c"),
                             "--upstream", "docker.io=" + self.up.url, timeout=20)
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            self.assertIn(want, r.stderr)
            self.assertNotIn("listening", r.stdout + r.stderr)
            r = pi.winch_cli("policy", "explain", "--config", path, "busybox")
            self.assertEqual(r.returncode, 2)
            self.assertIn(want, r.stderr)


def netns_platform(img, arch):
    for p in img["platforms"]:
        if (p.get("platform") or {}).get("architecture") == arch:
            return p["digest"]
    raise KeyError(arch)


if __name__ == "__main__":
    lab.main()
