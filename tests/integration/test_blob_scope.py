#!/usr/bin/python3
"""Blobs scoped to their repositories and upstreams; blob sizes bounded; fills that resume.

- blob_scope "repository" (the default behind credentials): a blob cached through one
  repository is served through another only after the upstream confirms that repository holds
  it (one HEAD); a repository the upstream says does not hold it gets 404 BLOB_UNKNOWN, never
  the cached bytes.
- "global": any repository of the same upstream, but never another upstream: a digest alone
  does not open what another upstream (with other credentials) served.
- An upstream with credentials defaults to repository scope (a real docker-registry with
  htpasswd Basic auth).
- A stream cut mid-blob resumes with Range and completes with the right bytes.
- A chunked blob with no known size is cut at max_blob_bytes; one whose manifest gives its size
  is cut there; a Content-Length that contradicts the manifest is refused."""

import http.client
import http.client
import os
import random
import subprocess

import lab

H = lab.accept


def pull_image(w, repo, tag, ns=None):
    """GETs the manifest and every blob of repo:tag through winch; returns the blob digests."""
    q = "?ns=%s" % ns if ns else ""
    r = lab.get(w, "/v2/%s/manifests/%s%s" % (repo, tag, q), H(lab.ALL_MANIFEST_ACCEPT))
    assert r.status == 200, r
    m = r.json()
    blobs = [m["config"]["digest"]] + [x["digest"] for x in m["layers"]]
    for d in blobs:
        status, got, _ = lab.fetch_blob_digest(w, "/v2/%s/blobs/%s%s" % (repo, d, q))
        assert (status, got) == (200, d), (status, got, d)
    return blobs


class RepositoryScope(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.seed = lab.seeded()["images"]
        cls.up = lab.seeded_registry()

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def setUp(self):
        self.w = lab.Winch([], config={"upstreams": [{"name": "docker.io", "url": self.up.url,
                                                  "blob_scope": "repository"}]})

    def tearDown(self):
        self.w.stop()

    def test_other_repository_must_be_confirmed(self):
        w = self.w.hostport
        rng16 = self.seed["range16"]
        blobs = pull_image(w, rng16["repo"], rng16["tag"])
        layer = blobs[-1]
        # The same repository: a hit, nothing upstream.
        n = self.up.count("HEAD") + self.up.count("GET")
        self.assertEqual(lab.fetch_blob_digest(w, "/v2/%s/blobs/%s" % (rng16["repo"], layer))[0],
                         200)
        self.assertEqual(self.up.count("HEAD") + self.up.count("GET"), n, "hit went upstream")
        # Another repository that does not hold it upstream: 404, never the cached bytes.
        other = self.seed["big"]["repo"]
        r = lab.get(w, "/v2/%s/blobs/%s" % (other, layer))
        self.assertOciError(r, 404, "BLOB_UNKNOWN", "blob of %s asked through %s" % (
            rng16["repo"], other))
        self.assertEqual(self.up.count("HEAD", "/v2/%s/blobs/%s" % (other, layer)), 1,
                         "the upstream was asked once")
        r = lab.head(w, "/v2/%s/blobs/%s" % (other, layer))
        self.assertStatus(r, 404, "HEAD through the other repository")

    def test_shared_layer_confirmed_once(self):
        """busybox's layer is in two repositories upstream: the second one is confirmed with
        one HEAD and then served from the cache (no second GET)."""
        w = self.w.hostport
        a, b = self.seed["busybox"], self.seed["busybox-tools"]
        shared = sorted(set(a["layers"]) & set(b["layers"]))
        self.assertTrue(shared, "the seed images share a layer")
        pull_image(w, a["repo"], a["tag"])
        d = shared[0]
        path = "/v2/%s/blobs/%s" % (b["repo"], d)
        self.assertEqual(lab.fetch_blob_digest(w, path)[:2], (200, d))
        self.assertEqual(self.up.count("HEAD", path), 1)
        self.assertEqual(self.up.count("GET", path), 0, "a confirmed blob was fetched again")
        # Remembered: no second HEAD.
        self.assertEqual(lab.fetch_blob_digest(w, path)[:2], (200, d))
        self.assertEqual(self.up.count("HEAD", path), 1)


class GlobalScopeAcrossUpstreams(lab.TestCase):
    """Two upstreams: a blob cached through the first is not served through the second."""

    @classmethod
    def setUpClass(cls):
        cls.seed = lab.seeded()["images"]
        cls.up1 = lab.seeded_registry(name="upstream-1")
        cls.up2 = lab.Registry(name="upstream-2")  # empty

    @classmethod
    def tearDownClass(cls):
        cls.up1.stop()
        cls.up2.stop()

    def test_no_cross_upstream_leak(self):
        n1, n2 = self.up1.hostport, self.up2.hostport
        w = lab.Winch([(n1, self.up1.url), (n2, self.up2.url)])
        try:
            img = self.seed["range16"]
            layer = pull_image(w.hostport, img["repo"], img["tag"], ns=n1)[-1]
            # Any repository of the same (global) upstream: served from the cache.
            r = lab.get(w.hostport, "/v2/lab/elsewhere/blobs/%s?ns=%s" % (layer, n1))
            self.assertStatus(r, 200, "global scope, same upstream")
            # The other upstream does not hold it: 404, and it was asked.
            path = "/v2/%s/blobs/%s" % (img["repo"], layer)
            r = lab.get(w.hostport, "%s?ns=%s" % (path, n2))
            self.assertOciError(r, 404, "BLOB_UNKNOWN", "blob of upstream 1 through upstream 2")
            self.assertEqual(self.up2.count("HEAD", path), 1)
            r = lab.get(w.hostport, "/v2/%s/%s" % (n2, path[len("/v2/"):]))
            self.assertOciError(r, 404, "BLOB_UNKNOWN", "path-prefixed form")
        finally:
            w.stop()


class CredentialedUpstream(lab.TestCase):
    """A docker-registry with htpasswd Basic auth: winch's default scope there is
    repository."""

    USER, PASSWORD = "scope-user", "s3cret-scope"

    @classmethod
    def setUpClass(cls):
        lab.require("htpasswd")
        cls.seed = lab.seeded()
        d = lab.tmpdir("winch-scope-auth-")
        line = subprocess.run(["htpasswd", "-Bbn", cls.USER, cls.PASSWORD], check=True,
                              capture_output=True, text=True).stdout.strip()
        cls.htpasswd = os.path.join(d, "htpasswd")
        with open(cls.htpasswd, "w") as f:
            f.write(line + "\n")
        cls.pwfile = os.path.join(d, "password")
        with open(cls.pwfile, "w") as f:
            f.write(cls.PASSWORD)
        cls.up = lab.Registry(name="auth-upstream", auth_htpasswd=cls.htpasswd)
        img = cls.seed["images"]["range16"]
        src = "oci:%s:%s" % (os.path.join(cls.seed["images_dir"], "range16"), img["tag"])
        lab.skopeo_copy(src, "docker://%s/lab/private:v1" % cls.up.direct_hostport,
                        ["--dest-creds", "%s:%s" % (cls.USER, cls.PASSWORD)])
        cls.layer = img["layers"][-1]

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def test_default_scope_is_repository(self):
        w = lab.Winch([], config={"upstreams": [{
            "name": "docker.io", "url": self.up.url, "username": self.USER,
            "password_file": self.pwfile}]})
        try:
            pull_image(w.hostport, "lab/private", "v1")
            r = lab.get(w.hostport, "/v2/lab/other/blobs/" + self.layer)
            self.assertOciError(r, 404, "BLOB_UNKNOWN", "private blob through another repo")
            self.assertEqual(self.up.count("HEAD", "/v2/lab/other/blobs/" + self.layer), 1)
        finally:
            w.stop()


class Sizes(lab.TestCase):
    def setUp(self):
        self.fake = lab.FakeUpstream()
        self.w = lab.Winch([("docker.io", self.fake.url)], config={"max_blob_bytes": 1 << 20})

    def tearDown(self):
        self.fake.clear_faults()
        self.w.stop()
        self.fake.stop()

    def test_resume_after_cut(self):
        blob = random.Random(11).randbytes(6 << 20)
        w = lab.Winch([("docker.io", self.fake.url)])
        try:
            d = self.fake.add_blob(blob)
            path = "/v2/lab/resume/blobs/" + d
            self.fake.set_fault(path, lab.Fault("cut", after=2 << 20, times=1, methods=("GET",)))
            self.assertEqual(lab.fetch_blob_digest(w.hostport, path), (200, d, len(blob)))
            ranges = [dict((k.lower(), v) for k, v in r.headers).get("range")
                      for r in self.fake.seen() if r.path == path]
            self.assertEqual(len(ranges), 2, "one GET and one resumed GET: %r" % ranges)
            self.assertIsNone(ranges[0])
            self.assertRegex(ranges[1] or "", r"^bytes=\d+-$")
            lab.wait_for(lambda: os.path.exists(w.blob_path(d)), 10, what="the blob stored")
            self.assertEqual(w.verify_store(), [])
        finally:
            w.stop()

    def assertNotServed(self, path, what):
        try:
            r = lab.get(self.w.hostport, path, timeout=30)
            self.assertNotEqual(r.status, 200, "%s: served %r" % (what, r))
        except (OSError, http.client.HTTPException):
            pass  # cut: never a complete-looking body

    def test_chunked_without_size_cut_at_max_blob_bytes(self):
        blob = random.Random(12).randbytes(3 << 20)
        d = self.fake.add_blob(blob)
        path = "/v2/lab/huge/blobs/" + d
        self.fake.set_fault(path, lab.Fault("chunked"))
        self.assertNotServed(path, "chunked blob over max_blob_bytes")
        lab.wait_for(lambda: not self.w.tmp_files(), 10, what="tmp/ cleaned")
        self.assertFalse(os.path.exists(self.w.blob_path(d)))

    def test_size_from_manifest_bounds_the_body(self):
        """The manifest says 1000 bytes; the upstream streams more (chunked), or announces
        another Content-Length: both refused, nothing stored."""
        layer = random.Random(13).randbytes(1000)
        md, mb, cd, lds = self.fake.add_image("lab/sized", "v1", [layer])
        r = lab.get(self.w.hostport, "/v2/lab/sized/manifests/v1", H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "manifest")
        path = "/v2/lab/sized/blobs/" + lds[0]
        self.fake.set_fault(path, lab.Fault("chunked", body=b"extra bytes past the size"))
        self.assertNotServed(path, "chunked body past the manifest's size")
        self.fake.set_fault(path, lab.Fault("status", status=200, body=layer + b"!",
                                            headers=[("Content-Type",
                                                      "application/octet-stream")]))
        r = lab.get(self.w.hostport, path)
        self.assertIn(r.status, (502,), "Content-Length contradicting the manifest: %r" % r)
        self.assertFalse(os.path.exists(self.w.blob_path(lds[0])))
        self.fake.clear_faults()
        self.assertEqual(lab.fetch_blob_digest(self.w.hostport, path)[:2], (200, lds[0]))


if __name__ == "__main__":
    lab.main()
