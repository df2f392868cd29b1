#!/usr/bin/python3
"""The pull API as clients see it through winch, request by request: /v2/, manifests (GET/HEAD,
tag/digest, headers, 304, Accept negotiation and distribution's fallbacks), blobs (HEAD, GET,
Range 206/416), tags/list (sorted, n/last, Link), _catalog, ?ns= and path-prefix routing, and bad
input (names, tags, digests, unknown hosts, write methods), each answered with the right status
and OCI error code, before any upstream request. No response may leak a filesystem path
(lab.request checks every response from winch)."""

import json
import os
import re
import time
import urllib.parse

import lab

H = lab.accept


class Api(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.img = cls.data["images"]
        cls.up = lab.seeded_registry()
        # A second upstream name that reaches the same registry through its own counter, to
        # see which upstream a request was routed to.
        cls.up2 = lab.CountingForwarder(cls.up.port)
        # tag_ttl_s 0: every tag request asks the upstream, which shows where it was routed.
        cls.winch = lab.Winch([("docker.io", cls.up.url), ("ghcr.io", "http://" + cls.up2.hostport)],
                              config={"tag_ttl_s": 0})
        cls.w = cls.winch.hostport

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.up2.stop()
        cls.up.stop()

    # helpers
    def upstream_requests(self):
        return self.up.count() + self.up2.count()

    def direct(self, method, path, headers=()):
        return lab.request(self.up.direct_hostport, method, path, headers)

    def check_manifest_response(self, r, body, digest, ctype, what, head=False):
        self.assertStatus(r, 200, what)
        self.assertEqual(r.header("Content-Type"), ctype, what + ": Content-Type replayed")
        self.assertEqual(r.header("Docker-Content-Digest"), digest, what + ": Docker-Content-Digest")
        self.assertEqual(r.header("Content-Length"), str(len(body)), what + ": Content-Length")
        etag = r.header("ETag")
        self.assertIsNotNone(etag, what + ": ETag")
        self.assertEqual(etag.strip('"'), digest, what + ": ETag is the quoted digest")
        if head:
            self.assertEqual(r.body, b"", what + ": HEAD has no body")
        else:
            self.assertEqual(r.body, body, what + ": body")
            self.assertEqual(lab.sha256_digest(r.body), digest, what)

    # /v2/
    def test_ping(self):
        r = lab.get(self.w, "/v2/")
        self.assertStatus(r, 200, "GET /v2/")
        self.assertEqual(json.loads(r.body), {}, "GET /v2/ body")
        self.assertEqual(r.header("Docker-Distribution-API-Version"), "registry/2.0")
        self.assertTrue(r.header("Content-Type", "").startswith("application/json"), r)
        r = lab.head(self.w, "/v2/")
        self.assertStatus(r, 200, "HEAD /v2/")
        self.assertEqual(r.header("Docker-Distribution-API-Version"), "registry/2.0")
        r = lab.get(self.w, "/v2")
        self.assertIn(r.status, (200, 301, 404), "GET /v2 (no slash): %r" % r)

    # manifests
    def test_manifests_get_head(self):
        for name in ("busybox", "busybox-v2s2", "multi", "multi-docker", "busybox-tools"):
            img = self.img[name]
            repo, tag, digest, ctype = img["repo"], img["tag"], img["digest"], img["media_type"]
            d = self.direct("GET", "/v2/%s/manifests/%s" % (repo, tag), H(lab.ALL_MANIFEST_ACCEPT))
            self.assertStatus(d, 200, "direct")
            body = d.body
            with self.subTest(image=name):
                # HEAD first, cold: docker needs Docker-Content-Digest on HEAD by tag.
                r = lab.head(self.w, "/v2/%s/manifests/%s" % (repo, tag), H(lab.SKOPEO_ACCEPT))
                self.check_manifest_response(r, body, digest, ctype, "cold HEAD %s:%s" % (repo, tag),
                                             head=True)
                r = lab.get(self.w, "/v2/%s/manifests/%s" % (repo, tag), H(lab.SKOPEO_ACCEPT))
                self.check_manifest_response(r, body, digest, ctype, "GET %s:%s" % (repo, tag))
                r = lab.get(self.w, "/v2/%s/manifests/%s" % (repo, digest), H(lab.SKOPEO_ACCEPT))
                self.check_manifest_response(r, body, digest, ctype, "GET %s@digest" % repo)
                r = lab.head(self.w, "/v2/%s/manifests/%s" % (repo, digest), H(lab.SKOPEO_ACCEPT))
                self.check_manifest_response(r, body, digest, ctype, "HEAD %s@digest" % repo,
                                             head=True)
                # containerd's single comma list with */*
                r = lab.get(self.w, "/v2/%s/manifests/%s" % (repo, tag),
                            [("Accept", lab.CONTAINERD_ACCEPT)])
                self.check_manifest_response(r, body, digest, ctype, "GET %s:%s (containerd Accept)"
                                             % (repo, tag))
                # and its fetch by digest: "<mediaType>, */*"
                r = lab.get(self.w, "/v2/%s/manifests/%s" % (repo, digest),
                            [("Accept", ctype + ", */*")])
                self.check_manifest_response(r, body, digest, ctype, "GET %s@digest (mt, */*)" % repo)
            # every platform manifest of an index, by digest
            for p in img["platforms"]:
                d = self.direct("GET", "/v2/%s/manifests/%s" % (repo, p["digest"]),
                                H(lab.ALL_MANIFEST_ACCEPT))
                r = lab.get(self.w, "/v2/%s/manifests/%s" % (repo, p["digest"]), H(lab.SKOPEO_ACCEPT))
                self.check_manifest_response(r, d.body, p["digest"], p["media_type"],
                                             "GET %s@%s (%s)" % (repo, p["digest"], p["platform"]))

    def test_if_none_match(self):
        img = self.img["busybox"]
        base = "/v2/%s/manifests/" % img["repo"]
        for refname in (img["tag"], img["digest"]):
            r = lab.get(self.w, base + refname,
                        H(lab.SKOPEO_ACCEPT) + [("If-None-Match", '"%s"' % img["digest"])])
            self.assertStatus(r, 304, "If-None-Match on %s" % refname)
            self.assertEqual(r.body, b"")
            r = lab.get(self.w, base + refname,
                        H(lab.SKOPEO_ACCEPT) + [("If-None-Match", '"sha256:%s"' % ("0" * 64))])
            self.assertStatus(r, 200, "non-matching If-None-Match on %s" % refname)

    def test_accept_fallbacks(self):
        multi, bb, v2 = self.img["multi"], self.img["busybox"], self.img["busybox-v2s2"]
        idx_msg = "OCI index found, but accept header does not support OCI indexes"
        man_msg = "OCI manifest found, but accept header does not support OCI manifests"
        cases = [
            # By tag, a client that reads no index gets the linux/amd64 manifest (issue 11):
            # an OCI manifest, which Docker v2 alone does not accept.
            ("/v2/lab/multi/manifests/v1", [lab.MT_DOCKER_V2], man_msg),
            ("/v2/lab/multi/manifests/v1", [lab.MT_DOCKER_V2, lab.MT_DOCKER_LIST], idx_msg),
            ("/v2/lab/multi/manifests/" + multi["digest"], [lab.MT_DOCKER_V2], idx_msg),
            ("/v2/lab/busybox-oci/manifests/1.36", [lab.MT_DOCKER_V2], man_msg),
            ("/v2/lab/busybox-oci/manifests/" + bb["digest"], [lab.MT_DOCKER_V2, lab.MT_DOCKER_LIST],
             man_msg),
            ("/v2/lab/busybox-oci/manifests/1.36", [], man_msg),
        ]
        for path, types, msg in cases:
            for method in ("GET", "HEAD"):
                what = "%s %s Accept %s" % (method, path, types)
                r = lab.request(self.w, method, path, H(types))
                if method == "HEAD":
                    self.assertStatus(r, 404, what)
                    continue
                self.assertOciError(r, 404, "MANIFEST_UNKNOWN", what)
                self.assertEqual(r.json()["errors"][0].get("message"), msg, what)
        # Accepted forms: one line with a comma list, parameters and odd spacing, repeated lines.
        ok = [
            ("/v2/lab/multi/manifests/v1", [lab.MT_DOCKER_V2 + ",  " + lab.MT_OCI_INDEX + ";q=0.5"]),
            ("/v2/lab/multi/manifests/v1", [lab.MT_DOCKER_V2, lab.MT_OCI_INDEX]),
            ("/v2/lab/multi/manifests/v1", [lab.MT_OCI_MANIFEST]),  # its amd64 manifest
            ("/v2/lab/busybox-oci/manifests/1.36", [lab.MT_OCI_MANIFEST + "; charset=utf-8"]),
            ("/v2/library/busybox/manifests/1.36", [lab.MT_DOCKER_V2]),
            ("/v2/library/busybox/manifests/1.36", [lab.MT_OCI_MANIFEST + "," + lab.MT_DOCKER_V2]),
            ("/v2/library/busybox/manifests/" + v2["digest"], [lab.MT_DOCKER_V2]),
        ]
        for path, types in ok:
            r = lab.get(self.w, path, H(types))
            self.assertStatus(r, 200, "GET %s Accept %s" % (path, types))

    def test_unknown_manifests(self):
        r = lab.get(self.w, "/v2/lab/busybox-oci/manifests/nosuchtag", H(lab.SKOPEO_ACCEPT))
        self.assertOciError(r, 404, "MANIFEST_UNKNOWN", "unknown tag")
        r = lab.head(self.w, "/v2/lab/busybox-oci/manifests/nosuchtag", H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 404, "HEAD unknown tag")
        r = lab.get(self.w, "/v2/lab/busybox-oci/manifests/sha256:" + "0" * 64,
                    H(lab.SKOPEO_ACCEPT))
        self.assertOciError(r, 404, "MANIFEST_UNKNOWN", "unknown manifest digest")
        r = lab.get(self.w, "/v2/lab/nosuchrepo/manifests/latest", H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 404, "unknown repository")
        self.assertIn(r.error_codes()[0] if r.error_codes() else None,
                      ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"), r)

    # blobs
    def blob_cases(self):
        bb = self.img["busybox"]
        layer = bb["layers"][0]
        config = [d for d in bb["blobs"] if d not in bb["layers"]][0]
        return bb["repo"], layer, bb["blobs"][layer]["size"], config, bb["blobs"][config]["size"]

    def test_upstream_lines_carry_request_id(self):
        """The debug lines of upstream work name the client request that caused it: a manifest
        by tag (a shared fetch; tag_ttl_s 0 asks the upstream every time) and a cold blob (a
        fill's producer). lab/range16 is pulled by no other test here (test_catalog, which
        runs before this one, checks that it is not listed)."""
        img = self.img["range16"]
        layer = img["layers"][0]
        self.assertFalse(os.path.exists(self.winch.blob_path(layer)),
                         "range16's layer is cached already: this test needs it cold")
        r = lab.get(self.w, "/v2/lab/range16/manifests/v1", H([img["media_type"]]), timeout=30)
        self.assertStatus(r, 200, "manifest")
        self.assertEqual(lab.fetch_blob_digest(self.w, "/v2/lab/range16/blobs/" + layer)[0], 200)
        log = self.winch.log()
        for target in ("/v2/lab/range16/manifests/v1", "/v2/lab/range16/blobs/" + layer):
            ids = re.findall(r"req=(\d+) GET %s " % re.escape(target), log)
            self.assertTrue(ids, "no access line for " + target)
            self.assertRegex(log, r"upstream docker\.io: req=(%s) (GET|HEAD) /v2/lab/range16/" %
                             "|".join(ids), "no upstream line names the request of " + target)

    def test_blobs(self):
        repo, layer, size, config, csize = self.blob_cases()
        path = "/v2/%s/blobs/%s" % (repo, layer)
        full = self.direct("GET", path).body
        self.assertEqual(len(full), size)
        # Cold: the first request for this blob is a Range.
        r = lab.get(self.w, path, [("Range", "bytes=0-9")])
        self.assertStatus(r, 206, "cold Range bytes=0-9")
        self.assertEqual(r.header("Content-Range"), "bytes 0-9/%d" % size)
        self.assertEqual(r.header("Content-Length"), "10")
        self.assertEqual(r.body, full[:10])
        r = lab.head(self.w, path)
        self.assertStatus(r, 200, "HEAD blob")
        self.assertEqual(r.header("Content-Length"), str(size))
        self.assertEqual(r.header("Docker-Content-Digest"), layer)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.header("Accept-Ranges"), "bytes", "Accept-Ranges on HEAD")
        r = lab.get(self.w, path)
        self.assertStatus(r, 200, "GET blob")
        self.assertEqual(lab.sha256_digest(r.body), layer)
        self.assertEqual(r.header("Docker-Content-Digest"), layer)
        self.assertEqual(r.header("Content-Length"), str(size))
        self.assertNotIn(r.header("Content-Encoding", ""), ("gzip", "deflate"))
        ranges = [
            ("bytes=0-9", 206, "bytes 0-9/%d" % size, full[:10]),
            ("bytes=100-", 206, "bytes 100-%d/%d" % (size - 1, size), full[100:]),
            ("bytes=-100", 206, "bytes %d-%d/%d" % (size - 100, size - 1, size), full[-100:]),
            ("bytes=%d-%d" % (size - 5, size + 100), 206,
             "bytes %d-%d/%d" % (size - 5, size - 1, size), full[-5:]),
            ("bytes=%d-" % size, 416, "bytes */%d" % size, None),
            ("bytes=%d-%d" % (size + 10, size + 20), 416, "bytes */%d" % size, None),
        ]
        for rng, status, crange, body in ranges:
            r = lab.get(self.w, path, [("Range", rng), ("Accept-Encoding", "gzip")])
            self.assertStatus(r, status, "Range %s" % rng)
            self.assertEqual(r.header("Content-Range"), crange, "Range %s: Content-Range" % rng)
            if body is not None:
                self.assertEqual(r.body, body, "Range %s: body" % rng)
                self.assertEqual(r.header("Content-Length"), str(len(body)))
        # config blob, cold GET with containerd's Accept
        r = lab.get(self.w, "/v2/%s/blobs/%s" % (repo, config),
                    [("Accept", "application/vnd.oci.image.config.v1+json, */*")])
        self.assertStatus(r, 200, "GET config")
        self.assertEqual(lab.sha256_digest(r.body), config)
        # unknown blob
        r = lab.get(self.w, "/v2/%s/blobs/sha256:%s" % (repo, "1" * 64))
        self.assertOciError(r, 404, "BLOB_UNKNOWN", "unknown blob")
        r = lab.head(self.w, "/v2/%s/blobs/sha256:%s" % (repo, "1" * 64))
        self.assertStatus(r, 404, "HEAD unknown blob")

    # tags/list
    def test_tags_list(self):
        img = self.img["busybox"]
        repo = img["repo"]
        want = sorted(img["tags"])
        r = lab.get(self.w, "/v2/%s/tags/list" % repo)
        self.assertStatus(r, 200, "tags/list")
        self.assertEqual(r.json(), {"name": repo, "tags": want})
        self.assertTrue(r.header("Content-Type", "").startswith("application/json"))
        # Pagination: follow Link with n=2 to the end.
        got, url, pages = [], "/v2/%s/tags/list?n=2" % repo, 0
        while url:
            pages += 1
            self.assertLess(pages, 10, "pagination does not end")
            r = lab.get(self.w, url)
            self.assertStatus(r, 200, url)
            tags = r.json()["tags"]
            self.assertLessEqual(len(tags), 2, url)
            got += tags
            link = r.header("Link")
            url = None
            if link:
                m = re.match(r'^<([^>]+)>;\s*rel="next"$', link)
                self.assertIsNotNone(m, "Link header %r" % link)
                u = urllib.parse.urlsplit(m.group(1))
                self.assertEqual(u.path, "/v2/%s/tags/list" % repo, link)
                url = u.path + "?" + u.query
            else:
                self.assertTrue(len(tags) < 2 or got == want, "no Link before the end: %r" % r)
        self.assertEqual(got, want, "tags collected page by page")
        r = lab.get(self.w, "/v2/%s/tags/list?n=0" % repo)
        self.assertStatus(r, 200, "n=0")
        self.assertEqual(r.json()["tags"], [])
        self.assertIsNone(r.header("Link"), "n=0 has no Link")
        r = lab.get(self.w, "/v2/%s/tags/list?last=latest" % repo)
        self.assertStatus(r, 200, "last=latest")
        self.assertEqual(r.json()["tags"], [t for t in want if t > "latest"])
        r = lab.get(self.w, "/v2/%s/tags/list?n=1&last=a-first" % repo)
        self.assertEqual(r.json()["tags"], [t for t in want if t > "a-first"][:1])
        self.assertIsNotNone(r.header("Link"), "more results follow: Link expected")
        r = lab.get(self.w, "/v2/%s/tags/list?n=-1" % repo)
        self.assertOciError(r, 400, "PAGINATION_NUMBER_INVALID", "n=-1")
        r = lab.get(self.w, "/v2/%s/tags/list?n=abc" % repo)
        self.assertOciError(r, 400, "PAGINATION_NUMBER_INVALID", "n=abc")
        r = lab.get(self.w, "/v2/lab/nosuchrepo/tags/list")
        self.assertOciError(r, 404, "NAME_UNKNOWN", "tags/list of an unknown repository")

    # catalog
    def test_catalog(self):
        for repo, tag in (("lab/busybox-oci", "1.36"), ("library/busybox", "1.36"),
                          ("lab/tools/busybox", "1.36")):
            self.assertStatus(lab.get(self.w, "/v2/%s/manifests/%s" % (repo, tag),
                                      H(lab.SKOPEO_ACCEPT)), 200, repo)
        want = ("lab/busybox-oci", "library/busybox", "lab/tools/busybox")

        def listed():
            r = lab.get(self.w, "/v2/_catalog")
            self.assertStatus(r, 200, "_catalog")
            repos = r.json()["repositories"]
            self.assertEqual(repos, sorted(repos), "_catalog is sorted")
            missing = [x for x in want if x not in repos]
            return repos if not missing else None

        # The index is written off the loop thread, in batches: allow it a moment.
        try:
            repos = lab.wait_for(listed, 5, interval=0.1, what="_catalog to list %s" % (want,))
        except TimeoutError:
            self.fail("_catalog does not list %s after 5s: %r" % (want, lab.get(self.w, "/v2/_catalog")))
        self.assertFalse(any(x.endswith("lab/range16") for x in repos),
                         "never pulled repo listed: %s" % repos)
        r = lab.get(self.w, "/v2/_catalog?n=1")
        self.assertStatus(r, 200, "_catalog?n=1")
        self.assertEqual(len(r.json()["repositories"]), 1)
        self.assertIsNotNone(r.header("Link"), "_catalog?n=1 with more repos: Link expected")

    # routing
    def test_ns_routing(self):
        img = self.img["busybox-tools"]
        path = "/v2/%s/manifests/%s" % (img["repo"], img["tag"])
        for ns, fwd in (("docker.io", self.up.forwarder), ("ghcr.io", self.up2)):
            before = fwd.count(contains="/v2/" + img["repo"] + "/")
            r = lab.get(self.w, path + "?ns=" + ns, H(lab.SKOPEO_ACCEPT))
            self.assertStatus(r, 200, "?ns=" + ns)
            self.assertEqual(r.header("OCI-Namespace"), ns, "OCI-Namespace echoed for ns=" + ns)
            self.assertEqual(r.header("Docker-Content-Digest"), img["digest"])
            self.assertGreater(fwd.count(contains="/v2/" + img["repo"] + "/"), before,
                               "?ns=%s was not routed to its upstream" % ns)
        # index.docker.io means docker.io; unknown query parameters are ignored
        r = lab.get(self.w, path + "?ns=index.docker.io&foo=bar", H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "?ns=index.docker.io")
        r = lab.get(self.w, path + "?foo=bar", H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "unknown query parameter")
        self.assertIsNone(r.header("OCI-Namespace"), "no ns, no OCI-Namespace")
        # one-component names: library/ on docker.io only
        before = self.up.count(contains="/v2/library/busybox/")
        r = lab.get(self.w, "/v2/busybox/manifests/1.36?ns=docker.io", H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "busybox on docker.io")
        self.assertEqual(r.header("Docker-Content-Digest"), self.img["busybox-v2s2"]["digest"])
        r = lab.get(self.w, "/v2/busybox/blobs/" + self.img["busybox-v2s2"]["layers"][0])
        self.assertStatus(r, 200, "busybox blob on docker.io")
        self.assertGreater(self.up.count(contains="/v2/library/busybox/"), before)
        r = lab.get(self.w, "/v2/busybox/manifests/1.36?ns=ghcr.io", H(lab.SKOPEO_ACCEPT))
        self.assertOciError(r, 404, "MANIFEST_UNKNOWN", "busybox on ghcr.io is not library/")
        # unknown hosts are never proxied
        n = self.upstream_requests()
        r = lab.get(self.w, path + "?ns=evil.example.com", H(lab.SKOPEO_ACCEPT))
        self.assertOciError(r, 403, "DENIED", "?ns= an unconfigured host")
        self.assertEqual(self.upstream_requests(), n, "a denied request reached an upstream")

    def test_path_prefix_routing(self):
        img = self.img["busybox-tools"]
        for host, fwd in (("ghcr.io", self.up2), ("docker.io", self.up.forwarder)):
            before = fwd.count(path="/v2/%s/manifests/%s" % (img["repo"], img["tag"]))
            r = lab.get(self.w, "/v2/%s/%s/manifests/%s" % (host, img["repo"], img["tag"]),
                        H(lab.SKOPEO_ACCEPT))
            self.assertStatus(r, 200, "/v2/%s/... prefix" % host)
            self.assertEqual(r.header("Docker-Content-Digest"), img["digest"])
            self.assertGreater(fwd.count(path="/v2/%s/manifests/%s" % (img["repo"], img["tag"])),
                               before, "/v2/%s/... not routed to %s" % (host, host))
            layer = img["layers"][0]
            r = lab.get(self.w, "/v2/%s/%s/blobs/%s" % (host, img["repo"], layer))
            self.assertStatus(r, 200, "blob via /v2/%s/..." % host)
            self.assertEqual(lab.sha256_digest(r.body), layer)
        r = lab.get(self.w, "/v2/docker.io/busybox/manifests/1.36", H(lab.SKOPEO_ACCEPT))
        self.assertStatus(r, 200, "/v2/docker.io/busybox -> library/busybox")
        n = self.upstream_requests()
        for p in ("/v2/quay.io/lab/busybox-oci/manifests/1.36",
                  "/v2/localhost/lab/busybox-oci/manifests/1.36",
                  "/v2/127.0.0.1:1/lab/busybox-oci/manifests/1.36"):
            r = lab.get(self.w, p, H(lab.SKOPEO_ACCEPT))
            self.assertOciError(r, 403, "DENIED", p)
        self.assertEqual(self.upstream_requests(), n, "a denied request reached an upstream")

    # bad input
    def test_bad_input(self):
        d64 = "a" * 64
        cases = [
            ("GET", "/v2/UPPER/manifests/latest", 400, "NAME_INVALID"),
            ("GET", "/v2/lab/Busybox/manifests/latest", 400, "NAME_INVALID"),
            ("GET", "/v2/%s/manifests/latest" % ("a" * 256), 400, "NAME_INVALID"),
            ("GET", "/v2/%s/%s/manifests/latest" % ("a" * 127, "b" * 128), 400, "NAME_INVALID"),
            ("GET", "/v2/lab/-bad/manifests/latest", 400, "NAME_INVALID"),
            ("GET", "/v2/lab/bad-/manifests/latest", 400, "NAME_INVALID"),
            ("GET", "/v2/lab/a..b/manifests/latest", 400, "NAME_INVALID"),
            ("GET", "/v2/lab/a___b/manifests/latest", 400, "NAME_INVALID"),
            ("GET", "/v2/lab//x/manifests/latest", 400, "NAME_INVALID"),
            ("GET", "/v2/lab/%2e%2e/manifests/latest", 400, "NAME_INVALID"),
            ("GET", "/v2/lab/x/blobs/sha256:" + d64 + "?x", None, None),  # valid: query ignored
            ("GET", "/v2/lab/busybox-oci/manifests/-bad", 404, "MANIFEST_UNKNOWN"),
            ("GET", "/v2/lab/busybox-oci/manifests/.bad", 404, "MANIFEST_UNKNOWN"),
            ("GET", "/v2/lab/busybox-oci/manifests/" + "t" * 129, 404, "MANIFEST_UNKNOWN"),
            ("HEAD", "/v2/lab/busybox-oci/manifests/" + "t" * 129, 404, None),
            ("GET", "/v2/lab/busybox-oci/manifests/sha256:totallywrong", 400, "DIGEST_INVALID"),
            ("GET", "/v2/lab/busybox-oci/manifests/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
            ("GET", "/v2/lab/busybox-oci/blobs/sha256:abc", 400, "DIGEST_INVALID"),
            ("GET", "/v2/lab/busybox-oci/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
            ("GET", "/v2/lab/busybox-oci/blobs/sha256:" + "a" * 65, 400, "DIGEST_INVALID"),
            ("GET", "/v2/lab/busybox-oci/blobs/sha512:" + d64, 400, "DIGEST_INVALID"),
            ("GET", "/v2/lab/busybox-oci/blobs/notadigest", 400, "DIGEST_INVALID"),
            ("GET", "/v2/lab/busybox-oci/blobs/sha256:", 400, "DIGEST_INVALID"),
            ("GET", "/v2/lab/busybox-oci/manifests/1.36?ns=evil.example.com", 403, "DENIED"),
            ("GET", "/v2/lab/busybox-oci/blobs/sha256:%s?ns=evil.example.com" % d64, 403,
             "DENIED"),
            ("POST", "/v2/lab/busybox-oci/blobs/uploads/", 405, "UNSUPPORTED"),
            ("PUT", "/v2/lab/busybox-oci/manifests/1.36", 405, "UNSUPPORTED"),
            ("DELETE", "/v2/lab/busybox-oci/manifests/1.36", 405, "UNSUPPORTED"),
            ("DELETE", "/v2/lab/busybox-oci/blobs/sha256:" + d64, 405, "UNSUPPORTED"),
            ("PATCH", "/v2/lab/busybox-oci/blobs/uploads/0123", 405, "UNSUPPORTED"),
            ("POST", "/v2/", 405, "UNSUPPORTED"),
            ("OPTIONS", "/v2/", 405, "UNSUPPORTED"),
        ]
        n = self.upstream_requests()
        for method, path, status, code in cases:
            what = "%s %s" % (method, path[:120])
            body = b'{"schemaVersion":2}' if method in ("PUT", "PATCH", "POST") else None
            r = lab.request(self.w, method, path, H(lab.SKOPEO_ACCEPT), body=body)
            if status is None:
                self.assertNotEqual(r.status // 100, 5, what)
                continue
            if method == "HEAD" or code is None:
                self.assertStatus(r, status, what)
                continue
            self.assertOciError(r, status, code, what)
            self.assertEqual(r.header("Docker-Distribution-API-Version"), "registry/2.0", what)
        # The one valid request above may have gone upstream (unknown blob); nothing else did.
        self.assertLessEqual(self.upstream_requests() - n, 2,
                             "invalid requests reached the upstream: %s" % [
                                 r.target for r in self.up.seen()[-10:]])
        # Unknown paths under /v2/ and outside it: a 4xx with an OCI error body.
        for path in ("/", "/v2/lab/x/foo", "/v2/lab/x/manifests", "/v2/lab/x/blobs/",
                     "/v2/lab/x/tags/lists", "/metrics-nope", "/v2/_catalog/x"):
            r = lab.get(self.w, path)
            self.assertIn(r.status // 100, (4,), "GET %s: %r" % (path, r))
            self.assertIsNotNone(r.error_codes(), "GET %s: OCI error body expected: %r" % (path, r))

    def test_malformed_http(self):
        """Garbage and oversized request heads get a 4xx (or a closed connection), and winch
        keeps serving."""
        import socket
        host, port = self.w.rsplit(":", 1)
        for raw in (b"GARBAGE\r\n\r\n", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " +
                    b"a" * 200000 + b"\r\n\r\n", b"GET /v2/\x00 HTTP/1.1\r\n\r\n"):
            s = socket.create_connection((host, int(port)), timeout=10)
            try:
                try:
                    s.sendall(raw)
                except OSError:
                    pass
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data:
                    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
                    self.assertIsNotNone(m, "not an HTTP answer to %r: %r" % (raw[:40], data[:200]))
                    self.assertEqual(m.group(1)[:1], b"4", "answer to %r: %r" % (raw[:40], data[:200]))
            finally:
                s.close()
        self.assertStatus(lab.get(self.w, "/v2/"), 200, "winch still serves")

    def test_keepalive_many_requests(self):
        """Many requests on one keep-alive connection, including errors and HEADs."""
        import http.client
        host, port = self.w.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        img = self.img["busybox"]
        try:
            for i in range(30):
                path = ["/v2/", "/v2/%s/manifests/%s" % (img["repo"], img["tag"]),
                        "/v2/UPPER/manifests/x", "/v2/%s/blobs/%s" % (img["repo"], img["layers"][0])][i % 4]
                method = "HEAD" if i % 3 == 0 else "GET"
                conn.request(method, path, headers={"Accept": lab.CONTAINERD_ACCEPT})
                r = conn.getresponse()
                body = r.read()
                if method == "HEAD":
                    self.assertEqual(body, b"")
                self.assertIn(r.status, (200, 400), "%s %s on a keep-alive connection" % (method, path))
        finally:
            conn.close()


class TagTtl(lab.TestCase):
    """With the default tag_ttl_s, a tag fetched a moment ago is served without asking the
    upstream; a digest never asks the upstream once cached."""

    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()
        cls.winch = lab.Winch([("docker.io", cls.up.url)])

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.up.stop()

    def test_fresh_tag_not_revalidated(self):
        img = self.data["images"]["multi"]
        for path in ("/v2/lab/multi/manifests/v1", "/v2/lab/multi/manifests/" + img["digest"]):
            self.assertStatus(lab.get(self.winch.hostport, path, H(lab.SKOPEO_ACCEPT)), 200, path)
        time.sleep(1)  # let background index writes land; read-your-writes is tested below
        n = self.up.count()
        for path in ("/v2/lab/multi/manifests/v1", "/v2/lab/multi/manifests/" + img["digest"]):
            for method in ("GET", "HEAD"):
                r = lab.request(self.winch.hostport, method, path, H(lab.SKOPEO_ACCEPT))
                self.assertStatus(r, 200, "%s %s" % (method, path))
                self.assertEqual(r.header("Docker-Content-Digest"), img["digest"])
        self.assertEqual(self.up.count(), n, "fresh tag / cached digest went upstream: %s" % [
            (x.method, x.target) for x in self.up.seen()[-6:]])


    def test_read_your_writes(self):
        """docker's flow: HEAD by tag, then at once GET by the digest it returned. The manifest
        winch just fetched must serve the second request: one upstream GET, not two."""
        img = self.data["images"]["multi-docker"]
        path = "/v2/lab/multi-docker/manifests/"
        r = lab.head(self.winch.hostport, path + "v1", H(lab.ALL_MANIFEST_ACCEPT))
        self.assertStatus(r, 200, "HEAD by tag")
        r = lab.get(self.winch.hostport, path + img["digest"], H(lab.ALL_MANIFEST_ACCEPT))
        self.assertStatus(r, 200, "GET by digest right after")
        r = lab.get(self.winch.hostport, path + "v1", H(lab.ALL_MANIFEST_ACCEPT))
        self.assertStatus(r, 200, "GET by tag right after")
        self.assertEqual(self.up.count("GET", path + img["digest"]), 1,
                         "upstream requests: %s" % [(x.method, x.target) for x in self.up.seen()
                                                    if x.path.startswith(path)])
        self.assertEqual(self.up.count("HEAD", path + "v1") + self.up.count("GET", path + "v1"), 1,
                         "the fresh tag was revalidated: %s" % [
                             (x.method, x.target) for x in self.up.seen() if x.path.startswith(path)])


if __name__ == "__main__":
    lab.main()
