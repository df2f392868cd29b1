#!/usr/bin/python3
"""Pins, soak and freeze against a real, writable docker-registry whose tags the tests re-push
to other images (tiny images built on the spot, pushed with skopeo):

- a pinned tag keeps serving the pinned digest (HEAD and GET, Docker-Content-Digest, skopeo)
  after the tag is re-pushed upstream, with a short tag_ttl_s; `winch pin` while winch runs
  takes effect within a second; `winch unpin` makes the new upstream digest visible after the
  TTL; `winch pin` without a digest pins what the tag resolves to through the running winch;
  a pin may name a tag the upstream does not have (tags/list lists it); the configuration's
  pin wins over a stored one and `winch pins` says so; bad input and concurrent pins;
- soak_s with the test clock (WINCH_TEST_CLOCK_OFFSET_S, restarts on the same cache): the
  previous digest is served until the new one has soaked, then the new one;
- freeze: a cached tag is never revalidated (no HEAD reaches the upstream), while a tag of
  another repository moves with the upstream."""

import concurrent.futures
import json
import os
import time

import lab
import policy_images as pi

ALL = pi.ALL


def upstream_config(up, extra):
    """A winch config naming the upstream (so CLI commands given --config see the same rules)."""
    cfg = {"upstreams": [{"name": "docker.io", "url": up.url}]}
    cfg.update(extra)
    return cfg


class Pins(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = pi.build_image("a", pi.rfc3339(time.time() - 86400))
        cls.b = pi.build_image("b", pi.rfc3339(time.time() - 86400))
        cls.c = pi.build_image("c", pi.rfc3339(time.time() - 86400))

    def setUp(self):
        self.up = lab.Registry()

    def tearDown(self):
        self.up.stop()

    def start(self, policy=(), ttl=1, env=None):
        cfg = upstream_config(self.up, {"tag_ttl_s": ttl, "policy": list(policy)})
        w = lab.Winch([("docker.io", self.up.url)], config=cfg, env=env)
        # What the CLI reads: the same rules and cache, and the running winch's listener.
        self.cfgpath = pi.config_file(dict(cfg, cache_dir=w.cache_dir, listen=w.hostport))
        # The same with a listener nobody answers on: the CLI falls back to the cache.
        self.deadcfg = pi.config_file(dict(cfg, cache_dir=w.cache_dir,
                                           listen="127.0.0.1:%d" % lab.free_port()))
        return w

    def cli(self, *args, env=None):
        return pi.winch_cli(args[0], "--config", self.cfgpath, *args[1:], env=env)

    def assertServes(self, w, repo, ref, digest, what):
        for method in ("HEAD", "GET"):
            st, dcd, body, r = pi.served_digest(w, repo, ref, method)
            self.assertEqual(st, 200, "%s %s: %r" % (what, method, r))
            self.assertEqual(dcd, digest, "%s: Docker-Content-Digest of %s" % (what, method))
            if body:
                self.assertEqual(body, digest, "%s: GET body" % what)

    def test_cli_pin_unpin(self):
        pi.push(self.up, self.a, "lab/app", "1")
        pi.push(self.up, self.b, "lab/app", "other")
        w = self.start(ttl=1)
        try:
            self.assertServes(w, "lab/app", "1", self.a.digest, "before any pin")
            self.assertServes(w, "lab/app", "other", self.b.digest, "another tag")

            # winch pin while winch runs: effective within a second.
            r = self.cli("pin", "lab/app:1", self.b.digest)
            t0 = time.monotonic()
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("pinned docker.io/lab/app:1 to %s" % self.b.digest, r.stdout)
            lab.wait_for(lambda: pi.served_digest(w, "lab/app", "1")[1] == self.b.digest, 1.0,
                         interval=0.02, what="the pin to take effect")
            took = time.monotonic() - t0
            print("pin took effect %.3fs after winch pin exited" % took)
            self.assertServes(w, "lab/app", "1", self.b.digest, "pinned")
            pi.wait_log(w, "tag pinned to %s by winch pin" % self.b.digest)
            heads = self.up.count("HEAD", "/v2/lab/app/manifests/1")

            # The upstream moves the tag: the pin holds, past the TTL, for skopeo too.
            pi.push(self.up, self.c, "lab/app", "1")
            time.sleep(1.5)
            self.assertServes(w, "lab/app", "1", self.b.digest, "pinned after the re-push")
            self.assertEqual(pi.skopeo_copy_manifest("docker://%s/lab/app:1" % w.hostport),
                             self.b.digest, "skopeo copy of the pinned tag")
            # A pinned tag is served by digest: winch asked the upstream for no tag check.
            self.assertEqual(self.up.count("HEAD", "/v2/lab/app/manifests/1"), heads,
                             [q.target for q in self.up.seen()])

            r = self.cli("pins")
            self.assertEqual(r.returncode, 0, r.stderr)
            line = [ln for ln in r.stdout.splitlines() if "docker.io/lab/app:1 " in ln]
            self.assertEqual(len(line), 1, r.stdout)
            self.assertIn(self.b.digest, line[0])
            self.assertIn("winch pin", line[0])
            self.assertIn("ago", line[0])

            # winch unpin while winch runs: the upstream's new digest, once the TTL has passed.
            r = self.cli("unpin", "lab/app:1")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("unpinned docker.io/lab/app:1 (was %s)" % self.b.digest, r.stdout)
            lab.wait_for(lambda: pi.served_digest(w, "lab/app", "1")[1] == self.c.digest, 2.5,
                         interval=0.05, what="the upstream's digest after unpin")
            self.assertServes(w, "lab/app", "1", self.c.digest, "unpinned")
            r = self.cli("unpin", "lab/app:1")
            self.assertEqual(r.returncode, 1)
            self.assertIn("has no stored pin", r.stderr)

            # winch pin without a digest: what the tag resolves to now, through the running
            # winch (its listener from the configuration); then the upstream moves again and
            # the pin holds.
            r = self.cli("pin", "lab/app:1")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("pinned docker.io/lab/app:1 to %s" % self.c.digest, r.stdout)
            self.assertNotIn("when winch last asked", r.stdout)
            pi.push(self.up, self.a, "lab/app", "1")
            time.sleep(1.5)
            self.assertServes(w, "lab/app", "1", self.c.digest, "pinned without a digest")
            # --server names the winch to ask.
            r = pi.winch_cli("pin", "--config", self.deadcfg, "--server", w.hostport,
                             "lab/app:other")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("to %s" % self.b.digest, r.stdout)
            # No winch answers: the cache's last known digest of the tag.
            r = pi.winch_cli("unpin", "--config", self.deadcfg, "lab/app:other")
            self.assertEqual(r.returncode, 0, r.stderr)
            r = pi.winch_cli("pin", "--config", self.deadcfg, "lab/app:other")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("was %s when winch last asked the upstream" % self.b.digest, r.stdout)
            r = pi.winch_cli("pin", "--config", self.deadcfg, "lab/app:never-seen")
            self.assertEqual(r.returncode, 1)
            self.assertIn("give the digest", r.stderr)
        finally:
            w.stop()

    def test_alias_and_tags_list(self):
        pi.push(self.up, self.a, "lab/app", "1")
        pi.push(self.up, self.b, "lab/app", "2")
        w = self.start(ttl=300)
        try:
            st, _, _, _ = pi.served_digest(w, "lab/app", "production")
            self.assertEqual(st, 404, "no such tag upstream")
            r = self.cli("pin", "lab/app:production", self.b.digest)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("note:", r.stdout)
            self.assertServes(w, "lab/app", "production", self.b.digest, "the alias")
            # A digest the repository does not have: pinned, with a note (set ahead of a push).
            r = self.cli("pin", "lab/app:ghost", self.c.digest)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("note: docker.io/lab/app has no manifest %s upstream" % self.c.digest,
                          r.stdout)
            self.assertEqual(pi.served_digest(w, "lab/app", "ghost")[0], 404)
            self.assertEqual(self.cli("unpin", "lab/app:ghost").returncode, 0)
            self.assertEqual(pi.skopeo_copy_manifest(
                "docker://%s/lab/app:production" % w.hostport), self.b.digest)
            # The alias is fetched by digest and not recorded as an upstream tag.
            self.assertEqual(self.up.count(contains="manifests/production"), 1)
            self.cli("pin", "lab/app:1", self.a.digest)  # a pin the upstream has too
            tags = lab.get(w.hostport, "/v2/lab/app/tags/list").json()["tags"]
            self.assertEqual(tags, ["1", "2", "production"])
            page = lab.get(w.hostport, "/v2/lab/app/tags/list?n=2")
            self.assertEqual(page.json()["tags"], ["1", "2"])
            self.assertIn("last=2", page.header("Link"))
            page = lab.get(w.hostport, "/v2/lab/app/tags/list?n=2&last=2")
            self.assertEqual(page.json()["tags"], ["production"])
        finally:
            w.stop()

    def test_config_pin_wins(self):
        pi.push(self.up, self.a, "lab/app", "stable")
        pi.push(self.up, self.b, "lab/app", "b")  # a pinned digest must be in the repository
        pi.push(self.up, self.c, "lab/app", "c")
        w = self.start(policy=[{"match": "docker.io/lab/app", "pin": {"stable": self.b.digest}}])
        try:
            self.assertServes(w, "lab/app", "stable", self.b.digest, "config pin")
            r = self.cli("pin", "lab/app:stable", self.c.digest)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("the configuration pins this tag to %s (rule 1); it wins" %
                          self.b.digest, r.stdout)
            time.sleep(0.3)
            self.assertServes(w, "lab/app", "stable", self.b.digest, "config over stored")
            pi.wait_log(w, "by the configuration (over a different stored pin)")
            r = self.cli("pins", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            pins = json.loads(r.stdout)
            cfg = [p for p in pins if p["source"] == "config"]
            stored = [p for p in pins if p["source"] == "stored"]
            self.assertEqual(len(cfg), 1, pins)
            self.assertEqual(cfg[0]["reference"], "docker.io/lab/app:stable")
            self.assertEqual(cfg[0]["digest"], self.b.digest)
            self.assertTrue(cfg[0]["active"])
            self.assertEqual(len(stored), 1, pins)
            self.assertEqual(stored[0]["digest"], self.c.digest)
            self.assertFalse(stored[0]["active"])
            self.assertIn("overridden", stored[0]["note"])
            self.assertIsInstance(stored[0]["set_ms"], int)
            r = self.cli("unpin", "lab/app:stable")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("the configuration pins docker.io/lab/app:stable", r.stdout)
        finally:
            w.stop()

    def test_pins_survive_prune(self):
        """Retention keeps what pins name, stored or configured: `winch prune` (untagged
        manifests and unreferenced blobs go) beside the running winch."""
        pi.push(self.up, self.a, "lab/app", "a")
        pi.push(self.up, self.b, "lab/app", "b")
        pi.push(self.up, self.c, "lab/app", "c")
        w = self.start(ttl=300, policy=[
            {"match": "docker.io/lab/app", "pin": {"stable": self.c.digest}}])
        try:
            r = self.cli("pin", "lab/app:production", self.b.digest)
            self.assertEqual(r.returncode, 0, r.stderr)
            for ref in ("production", "stable", "@" + self.a.digest):
                src = "docker://%s/lab/app%s" % (w.hostport, ref if ref[0] == "@" else ":" + ref)
                pi.skopeo_copy_manifest(src)
            for img in (self.a, self.b, self.c):
                self.assertTrue(os.path.exists(w.blob_path(img.digest)))
            r = self.cli("prune")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            for img, what in ((self.b, "stored pin"), (self.c, "config pin")):
                for d in (img.digest, img.config, img.layer):
                    self.assertTrue(os.path.exists(w.blob_path(d)), "%s: %s pruned" % (what, d))
            # Nothing pins the image pulled by digest only: pruned (the prune does prune).
            self.assertFalse(os.path.exists(w.blob_path(self.a.digest)), r.stdout)
            self.assertFalse(os.path.exists(w.blob_path(self.a.layer)), r.stdout)
        finally:
            w.stop()

    def test_bad_input_and_concurrency(self):
        pi.push(self.up, self.a, "lab/app", "1")
        pi.push(self.up, self.b, "lab/app", "b")
        pi.push(self.up, self.c, "lab/app", "c")
        w = self.start()
        try:
            for args, want in [
                (("pin",), "usage: winch pin"),
                (("pin", "lab/app:1", "sha256:abc"), "is not a sha256 or sha512 digest"),
                (("pin", "lab/app@" + self.a.digest, self.a.digest), "a pin is a tag"),
                (("pin", "Lab/App:1", self.a.digest), "not a repository name"),
                (("pin", "quay.io/x:1", self.a.digest), "registry quay.io is not a configured"),
                (("pin", "lab/app:" + "x" * 200, self.a.digest), "is not a tag"),
                (("pin", "lab/app:1", self.a.digest, "extra"), "usage: winch pin"),
                (("pin", "--frob", "lab/app:1"), "unknown option --frob"),
                (("pin", "--server", "nonsense", "lab/app:1"), "nonsense is not HOST:PORT"),
                (("unpin", "lab/app@" + self.a.digest), "a pin is a tag"),
                (("pins", "extra"), "usage: winch pins"),
            ]:
                r = self.cli(*args)
                self.assertNotEqual(r.returncode, 0, args)
                self.assertIn(want, r.stderr, args)
            r = self.cli("pin", "--server", "127.0.0.1:%d" % lab.free_port(), "lab/app:1")
            self.assertEqual(r.returncode, 1)
            self.assertIn("no winch answers", r.stderr)

            # Eight pins at once beside the running server, while clients pull: all stored.
            def pin(i):
                return self.cli("pin", "lab/app:p%d" % i, [self.a, self.b, self.c][i % 3].digest)

            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                pulls = [ex.submit(pi.served_digest, w, "lab/app", "1") for _ in range(16)]
                results = list(ex.map(pin, range(8)))
            for r in results:
                self.assertEqual(r.returncode, 0, r.stderr)
            for f in pulls:
                self.assertEqual(f.result()[0], 200)
            for i in range(8):
                self.assertServes(w, "lab/app", "p%d" % i, [self.a, self.b, self.c][i % 3].digest,
                                  "concurrent pin %d" % i)
            pins = json.loads(self.cli("pins", "--json").stdout)
            self.assertEqual(len([p for p in pins if p["source"] == "stored"]), 8)
        finally:
            w.stop()


class Soak(lab.TestCase):
    def test_soak_with_test_clock(self):
        up = lab.Registry()
        a = pi.build_image("soak-a")
        b = pi.build_image("soak-b")
        c = pi.build_image("soak-c")
        pi.push(up, a, "lab/node", "20")
        cfg = upstream_config(up, {"tag_ttl_s": 0, "policy": [
            {"match": "docker.io/lab/node", "soak_s": 3600}]})
        w = lab.Winch([("docker.io", up.url)], config=cfg)
        cfgpath = pi.config_file(dict(cfg, cache_dir=w.cache_dir))

        def serves(digest, what):
            for method in ("HEAD", "GET"):
                st, dcd, body, r = pi.served_digest(w, "lab/node", "20", method)
                self.assertEqual((st, dcd), (200, digest), "%s (%s): %r" % (what, method, r))
                if body:
                    self.assertEqual(body, digest, what)

        def restart(offset_s):
            w.stop()
            w.env["WINCH_TEST_CLOCK_OFFSET_S"] = str(offset_s)
            w.restart()

        try:
            serves(a.digest, "first digest, no previous")
            pi.wait_log(w, "soak: no previous digest for this tag; serving %s at once" % a.digest)
            pi.push(up, b, "lab/node", "20")
            serves(a.digest, "new upstream digest, soaking")
            pi.wait_log(w, "soak: %s is new for this tag, served in 3600s; serving the previous %s"
                        % (b.digest, a.digest))
            self.assertEqual(pi.skopeo_copy_manifest("docker://%s/lab/node:20" % w.hostport),
                             a.digest, "skopeo while the new digest soaks")
            # explain reads the same history from the cache, beside the running winch.
            r = pi.winch_cli("policy", "explain", "--config", cfgpath, "lab/node:20")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("now        serving %s; the upstream's %s is served in" %
                          (a.digest, b.digest), r.stdout)

            # Half the soak later (the clock, not a sleep): still the previous digest.
            restart(1800)
            self.assertIn("TEST CLOCK", w.log())
            serves(a.digest, "half-way through the soak")
            # Past the soak: the new digest.
            restart(3601)
            serves(b.digest, "soaked")
            pi.wait_log(w, "soak: %s has soaked; serving it" % b.digest)
            # Another push: it soaks behind the one served now.
            pi.push(up, c, "lab/node", "20")
            serves(b.digest, "the next digest soaking")
            restart(3601 + 1800)
            serves(b.digest, "half-way through the next soak")
            restart(3601 + 3601)
            serves(c.digest, "the next digest soaked")
        finally:
            w.stop()
            up.stop()


class Freeze(lab.TestCase):
    def test_freeze(self):
        up = lab.Registry()
        a = pi.build_image("freeze-a")
        b = pi.build_image("freeze-b")
        for repo in ("lab/frozen", "lab/thawed"):
            pi.push(up, a, repo, "1")
        w = lab.Winch([("docker.io", up.url)], config={"tag_ttl_s": 0, "policy": [
            {"match": "docker.io/lab/frozen", "freeze": True}]})
        try:
            for repo in ("lab/frozen", "lab/thawed"):
                self.assertEqual(pi.served_digest(w, repo, "1", "GET")[1], a.digest)
            heads = up.count("HEAD", "/v2/lab/frozen/manifests/1")
            for repo in ("lab/frozen", "lab/thawed"):
                pi.push(up, b, repo, "1")
            for _ in range(3):
                self.assertEqual(pi.served_digest(w, "lab/frozen", "1", "GET")[1], a.digest,
                                 "a frozen tag stays")
                self.assertEqual(pi.served_digest(w, "lab/thawed", "1", "GET")[1], b.digest,
                                 "a tag that is not frozen follows the upstream (tag_ttl_s 0)")
            self.assertEqual(up.count("HEAD", "/v2/lab/frozen/manifests/1"), heads,
                             "a frozen tag was revalidated")
            self.assertEqual(up.count(path="/v2/lab/frozen/manifests/" + b.digest), 0)
            pi.wait_log(w, "policy rule 1 (docker.io/lab/frozen): freeze")
            # Frozen means revalidation: a digest request or a new tag still works.
            self.assertEqual(pi.served_digest(w, "lab/frozen", b.digest, "GET")[0], 200)
        finally:
            w.stop()
            up.stop()


if __name__ == "__main__":
    lab.main()
