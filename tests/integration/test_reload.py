#!/usr/bin/python3
"""SIGHUP reload of `winch serve` against the real seeded docker-registry:

- a changed tag_ttl_s, log_level, trusted_proxies and policy rule take effect after SIGHUP
  (X-Forwarded-For from 127.0.0.1 is believed only after it), and a keep-alive
  connection opened before the reload keeps working (and sees the new policy) after it;
- a broken configuration (JSON syntax, an unknown field, a bad regex) is refused with the usual
  message in the log and the old policy keeps deciding; a changed listen address is reported
  and kept;
- upstream credentials change in place (a rotated password in the same file, another user),
  proven with cold blobs against a registry with htpasswd auth; with the URL changed too,
  nothing of the upstream changes;
- 20 SIGHUPs in a row, alternating two configurations, while requests run: no crash, every
  answer is one of the two configurations' (also under the ASan+UBSan build)."""

import http.client
import json
import os
import signal
import subprocess
import threading
import time

import lab
import policy_images as pi

ALL = pi.ALL
APPLIED = "reload: configuration applied"
REFUSED = "reload refused: "


class NoLevelFlagWinch(lab.Winch):
    """A winch whose log level comes from the config file (lab passes --log-level, which as a
    flag would override the file at every reload too)."""

    def argv(self):
        args = super().argv()
        i = args.index("--log-level")
        return args[:i] + args[i + 2:]


class Reload(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()

    def setUp(self):
        self.up = lab.seeded_registry()

    def tearDown(self):
        self.up.stop()

    def rewrite(self, w, cfg=None, text=None):
        path = os.path.join(w.workdir, "config.json")
        with open(path, "w") as f:
            f.write(text if text is not None else json.dumps(cfg, indent=1))
        return path

    def sighup(self, w, needle):
        """Sends SIGHUP and waits for one more needle line than before."""
        before = w.log().count(needle)
        w.proc.send_signal(signal.SIGHUP)
        lab.wait_for(lambda: w.log().count(needle) > before, 10, what="%r after SIGHUP" % needle)
        self.assertTrue(w.running(), "winch exited on SIGHUP")

    def manifest_gets(self, repo, tag):
        return self.up.count(contains="/v2/%s/manifests/%s" % (repo, tag))

    def test_ttl_level_policy_keepalive(self):
        base = {"tag_ttl_s": 3600, "log_level": "info"}
        w = NoLevelFlagWinch([("docker.io", self.up.url)], config=base)
        try:
            conn = http.client.HTTPConnection(lab.LOOPBACK, w.port, timeout=30)

            def get(path):
                conn.request("GET", path, headers={"Accept": ", ".join(v for _, v in ALL)})
                r = conn.getresponse()
                r.read()
                return r.status

            self.assertEqual(get("/v2/lab/busybox-oci/manifests/1.36"), 200)
            self.assertEqual(get("/v2/library/busybox/manifests/1.36"), 200)
            n = self.manifest_gets("library/busybox", "1.36")
            self.assertEqual(get("/v2/library/busybox/manifests/1.36"), 200)
            self.assertEqual(self.manifest_gets("library/busybox", "1.36"), n,
                             "tag_ttl_s 3600: a fresh tag went upstream")
            self.assertNotIn(" debug ", w.log(), "log_level info logged debug lines")
            xff = [("X-Forwarded-For", "203.0.113.9")]
            self.assertStatus(lab.get(w.hostport, "/v2/?before=1", xff), 200)

            self.rewrite(w, {"tag_ttl_s": 0, "log_level": "debug",
                             "trusted_proxies": ["127.0.0.1"],
                             "policy": [{"match": "docker.io/lab/busybox-oci", "deny": True,
                                         "message": "reloaded rule"}]})
            self.sighup(w, APPLIED)
            self.assertIn(APPLIED + " (log level debug, tag_ttl_s 0, 1 policy rules", w.log())
            self.assertIn("1 trusted proxies", w.log())
            self.assertStatus(lab.get(w.hostport, "/v2/?after=1", xff), 200)
            lab.wait_for(lambda: "/v2/?after=1 200" in w.log(), 10, what="access line")
            log = w.log()
            self.assertRegex(log, r"GET /v2/\?before=1 200 .* peer=127\.0\.0\.1 ua=")
            self.assertRegex(log, r"GET /v2/\?after=1 200 .* peer=203\.0\.113\.9 via=127\.0\.0\.1 ")
            mark = len(w.log())
            # The same keep-alive connection: the new policy decides, tag_ttl_s 0 revalidates.
            self.assertEqual(get("/v2/lab/busybox-oci/manifests/1.36"), 403)
            self.assertEqual(get("/v2/library/busybox/manifests/1.36"), 200)
            lab.wait_for(lambda: self.manifest_gets("library/busybox", "1.36") > n, 10,
                         what="revalidation with tag_ttl_s 0")
            self.assertIn(" debug ", w.log()[mark:], "log_level debug: no debug line after it")
            r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/1.36", ALL)
            self.assertOciError(r, 403, "DENIED", "new connection after reload")
            self.assertIn("reloaded rule", r.json()["errors"][0]["message"])

            # And back: the rule removed, the repository is served again on the same connection.
            self.rewrite(w, base)
            self.sighup(w, APPLIED)
            self.assertEqual(get("/v2/lab/busybox-oci/manifests/1.36"), 200)
            conn.close()
        finally:
            w.stop()

    def test_broken_config_refused(self):
        deny = {"policy": [{"match": "docker.io/lab/**", "deny": True}]}
        w = lab.Winch([("docker.io", self.up.url)], config=deny)
        try:
            r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/1.36", ALL)
            self.assertOciError(r, 403, "DENIED", "before")
            cases = [
                ('{"policy": [', "config.json:1:"),
                (json.dumps({"policy": [], "tag_ttl": 5}), "tag_ttl: unknown field"),
                (json.dumps({"policy": [{"match": "docker.io/**", "deny_tags": ["(x"]}]}),
                 "policy[0].deny_tags[0]"),
            ]
            for text, want in cases:
                self.rewrite(w, text=text)
                self.sighup(w, REFUSED)
                line = [ln for ln in w.log().splitlines() if REFUSED in ln][-1]
                self.assertIn(want, line)
                self.assertIn("the running configuration stays", line)
                r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/1.36", ALL)
                self.assertOciError(r, 403, "DENIED", "old policy after refused %r" % text)
            self.assertNotIn(APPLIED, w.log())

            # A good one applies. --listen and --cache-dir are flags here: they override the
            # file at every reload too, so nothing needs a restart.
            cfg = {"listen": "127.0.0.1:1", "cache_dir": "/nonexistent/elsewhere", "policy": []}
            self.rewrite(w, cfg)
            self.sighup(w, APPLIED)
            self.assertIn("0 fields kept until restart", w.log())
            r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/1.36", ALL)
            self.assertEqual(r.status, 200, "the policy emptied by the reload")
        finally:
            w.stop()

    def test_fixed_fields_reported(self):
        """Without the flags, a changed listen address and upstream list are reported, kept."""
        path = os.path.join(lab.tmpdir("winch-reload-"), "c.json")
        cache = lab.tmpdir("winch-reload-cache-")
        cfg = {"listen": "127.0.0.1:0", "cache_dir": cache,
               "upstreams": [{"name": "docker.io", "url": self.up.url}]}
        w = lab.Winch([], config=None, cache_dir=cache, extra_args=["--config", path],
                      start=False)
        with open(path, "w") as f:
            json.dump(cfg, f)
        w.argv = lambda: [lab.WINCH_BIN, "serve", "--config", path]
        w.start()
        try:
            cfg2 = dict(cfg, listen="127.0.0.1:1",
                        upstreams=[{"name": "docker.io", "url": "http://127.0.0.1:1"}])
            with open(path, "w") as f:
                json.dump(cfg2, f)
            self.sighup(w, APPLIED)
            log = w.log()
            self.assertIn("reload: listen changed in the file but needs a restart", log)
            self.assertIn("reload: upstreams changed in the file but needs a restart", log)
            st, dcd, _, _ = pi.served_digest(w, "lab/busybox-oci", "1.36", "GET")
            self.assertEqual(st, 200, "the old listener and upstream keep serving")
        finally:
            w.stop()

    def test_upstream_credentials(self):
        """Upstream credentials change in place: a rotated password in the same password_file,
        then a new username and file; the tokens the old ones earned are dropped. The rest of
        an upstream stays fixed (reported). Against a registry with htpasswd Basic auth."""
        lab.require("htpasswd")
        d = lab.tmpdir("winch-reload-creds-")
        htp = os.path.join(d, "htpasswd")
        with open(htp, "w") as f:
            for user, pw in (("alice", "right-one"), ("bob", "bobs-secret")):
                f.write(subprocess.run(["htpasswd", "-Bbn", user, pw], check=True,
                                       capture_output=True, text=True).stdout.strip() + "\n")
        up = lab.Registry(name="creds-upstream", auth_htpasswd=htp)
        try:
            img = self.data["images"]["range16"]
            src = "oci:%s:%s" % (os.path.join(self.data["images_dir"], "range16"), img["tag"])
            lab.skopeo_copy(src, "docker://%s/lab/private:v1" % up.direct_hostport,
                            ["--dest-creds", "alice:right-one"])
            pwfile = os.path.join(d, "pw")
            with open(pwfile, "w") as f:
                f.write("wrong")
            cfg = {"upstreams": [{"name": "docker.io", "url": up.url, "username": "alice",
                                  "password_file": pwfile}], "tag_ttl_s": 0}
            w = lab.Winch([], config=cfg)
            try:
                path = "/v2/lab/private/manifests/v1"
                acc = lab.accept([img["media_type"]])
                self.assertNotEqual(lab.get(w.hostport, path, acc).status, 200, "wrong password")
                with open(pwfile, "w") as f:
                    f.write("right-one")
                self.sighup(w, APPLIED)
                self.assertIn("reload: upstream docker.io: new credentials", w.log())
                self.assertEqual(lab.get(w.hostport, path, acc).status, 200, "rotated password")
                # Another user and file; a bad one is refused as at start, the old one stays.
                pw2 = os.path.join(d, "pw2")
                with open(pw2, "w") as f:
                    f.write("bobs-secret")
                cfg2 = json.loads(json.dumps(cfg))
                cfg2["upstreams"][0].update(username="bob", password_file=pw2)
                with open(pwfile, "w") as f:
                    f.write("wrong")  # alice's no longer works: only bob's can fetch now
                self.rewrite(w, cfg2)
                self.sighup(w, APPLIED)
                # A stale tag would be served anyway: cold blobs must come from the upstream.
                blobs = sorted(img["blobs"])
                self.assertEqual(lab.fetch_blob_digest(w.hostport, "/v2/lab/private/blobs/" +
                                                       blobs[0])[0], 200, "a cold blob as bob")
                cfg3 = json.loads(json.dumps(cfg2))
                cfg3["upstreams"][0]["password_file"] = os.path.join(d, "missing")
                self.rewrite(w, cfg3)
                self.sighup(w, REFUSED)
                self.assertEqual(lab.get(w.hostport, path, acc).status, 200, "after refusal")
                # Credentials and the URL at once: nothing of the upstream changes.
                cfg4 = json.loads(json.dumps(cfg))  # alice with the wrong password again
                cfg4["upstreams"][0]["url"] = "http://127.0.0.1:1"
                self.rewrite(w, cfg4)
                self.sighup(w, "upstreams changed in the file but needs a restart")
                self.assertEqual(lab.fetch_blob_digest(w.hostport, "/v2/lab/private/blobs/" +
                                                       blobs[1])[0], 200, "still bob, same URL")
                self.assertNotIn("bobs-secret", w.log())
                self.assertNotIn("right-one", w.log())
            finally:
                w.stop()
        finally:
            up.stop()

    def test_many_sighups_under_load(self):
        a = {"tag_ttl_s": 0, "policy": []}
        b = {"tag_ttl_s": 5, "policy": [{"match": "docker.io/lab/busybox-oci", "deny": True}]}
        w = lab.Winch([("docker.io", self.up.url)], config=a, log_level="info")
        stop = threading.Event()
        seen, errors = {}, []

        def load():
            while not stop.is_set():
                try:
                    for path in ("/v2/lab/busybox-oci/manifests/1.36",
                                 "/v2/library/busybox/manifests/1.36", "/v2/"):
                        r = lab.get(w.hostport, path, ALL, timeout=20)
                        seen[(path, r.status)] = seen.get((path, r.status), 0) + 1
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))

        threads = [threading.Thread(target=load) for _ in range(3)]
        try:
            for t in threads:
                t.start()
            for i in range(20):
                self.rewrite(w, b if i % 2 == 0 else a)
                w.proc.send_signal(signal.SIGHUP)
                time.sleep(0.05)
            lab.wait_for(lambda: w.log().count(APPLIED) + w.log().count(REFUSED) >= 1, 10,
                         what="reloads")
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        try:
            self.assertTrue(w.running(), "winch died during the SIGHUPs")
            self.assertEqual(errors, [])
            allowed = {("/v2/lab/busybox-oci/manifests/1.36", 200),
                       ("/v2/lab/busybox-oci/manifests/1.36", 403),
                       ("/v2/library/busybox/manifests/1.36", 200), ("/v2/", 200)}
            self.assertLessEqual(set(seen), allowed, seen)
            self.assertGreater(sum(seen.values()), 20)
            # Signals coalesce: fewer reloads than SIGHUPs is fine, none refused.
            self.assertNotIn(REFUSED, w.log())
            # The last file written is a's (i = 19): after a final reload it is in force.
            self.sighup(w, APPLIED)
            r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/1.36", ALL)
            self.assertEqual(r.status, 200)
        finally:
            w.stop()


if __name__ == "__main__":
    lab.main()
