#!/usr/bin/python3
"""Client authentication for winch itself ("auth"): htpasswd users (bcrypt, made by the real
`htpasswd -B`), access rules by upstream/repository glob with anonymous repositories, the
`401` + `WWW-Authenticate: Basic` challenge, `403 DENIED`, client certificates on the TLS
listener, and the four real clients:

  - curl-level edge cases (raw HTTP): the challenge on /v2/ and on repositories, wrong and
    malformed credentials, bad base64, duplicate / huge / control-byte Authorization headers,
    403 that never tells whether a repository exists, _catalog filtered per user, 100
    concurrent requests costing one bcrypt, the failure throttle (429 + Retry-After), the
    htpasswd reload, and no credential in winch's log;
  - skopeo --src-creds;
  - podman login + pull (as a registries.conf mirror, and by name), and anonymous podman on
    anonymous repositories;
  - dockerd: `docker login` + pull by name; as a registry mirror with the Docker Hub
    credentials (what dockerd sends to mirrors); anonymous dockerd refused (documented);
  - containerd's ctr: --user, hosts.toml mirror, and a static Authorization header in
    hosts.toml (the CRI way);
  - skopeo with a client certificate (--src-cert-dir) against the TLS listener.

Daemons run in loopback-only network namespaces (netns.py). Needs root, apache2-utils
(htpasswd), skopeo, podman, docker.io, containerd, openssl: a missing one fails the test.
"""

import base64
import collections
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import lab
import netns

PASSWORDS = {
    "alice": "alice-Pa55-word",
    "bob": "bob-Pa55-word",
    "ci-bot": "ci-bot-Pa55-word",
    "admin": "admin-Pa55-word",
    "fleet": "fleet-Pa55-word",  # only test_concurrent_logins_cost_one_bcrypt logs in as it
}
SECRET_IMAGE = "lab/busybox-oci:1.36"  # alice and the ci group only
PUBLIC_IMAGE = "library/busybox:1.36"  # anonymous


def basic(user, password):
    return ("Authorization", "Basic " + base64.b64encode(
        ("%s:%s" % (user, password)).encode()).decode())


def htpasswd_file(path, users):
    """An htpasswd file made by the real tool (bcrypt, -B)."""
    if shutil.which("htpasswd") is None:
        raise RuntimeError("htpasswd is not installed (apt-get install apache2-utils)")
    with open(path, "w") as f:
        for user, password in users.items():
            p = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            f.write(p.stdout.decode().strip() + "\n")


def auth_config(pw_path, **extra):
    cfg = {"htpasswd": pw_path,
           "groups": {"ci": ["ci-bot", "fleet"]},
           "access": [
               {"match": "docker.io/library/**", "anonymous": True},
               {"match": "docker.io/lab/**", "users": ["alice"], "groups": ["ci"]},
               {"match": "**", "users": ["admin"]},
           ]}
    cfg.update(extra)
    return {"auth": cfg}


def bcrypt_runs(w):
    return len(re.findall(r"password check \(bcrypt\)", w.log()))


def raw_challenge(port, host):
    """The WWW-Authenticate of GET /v2/ sent with exactly this Host header (bytes)."""
    with socket.create_connection((lab.LOOPBACK, port), timeout=10) as s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    m = re.search(rb"\r\nWWW-Authenticate: ([^\r]*)\r\n", data)
    return m.group(1).decode() if m else None


def assert_no_secret(tc, w):
    log = w.log()
    for user, password in PASSWORDS.items():
        tc.assertNotIn(password, log, "winch logged %s's password" % user)
        tc.assertNotIn(basic(user, password)[1].split(" ")[1], log,
                       "winch logged %s's Authorization header" % user)
    tc.assertNotRegex(log, r"(?i)authorization:|basic [a-z0-9+/=]{8,}",
                      "winch logged an Authorization header")


class Base(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.work = lab.tmpdir("winch-client-auth-")
        cls.pw = os.path.join(cls.work, "htpasswd")
        htpasswd_file(cls.pw, PASSWORDS)
        cls.up = lab.seeded_registry(name="upstream")

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()


class Http(Base):
    """Raw HTTP and skopeo against one winch with auth."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.w = lab.Winch([("docker.io", cls.up.url)], config=auth_config(cls.pw))

    @classmethod
    def tearDownClass(cls):
        cls.w.stop()
        super().tearDownClass()

    def assertChallenge(self, r, what):
        self.assertOciError(r, 401, "UNAUTHORIZED", what)
        self.assertEqual(r.header("WWW-Authenticate"), 'Basic realm="winch", charset="UTF-8"',
                         what)
        self.assertEqual(r.header("Docker-Distribution-API-Version"), "registry/2.0", what)

    def manifest(self, repo, ref, headers=(), method="GET"):
        return lab.request(self.w.hostport, method, "/v2/%s/manifests/%s" % (repo, ref),
                           lab.accept(lab.ALL_MANIFEST_ACCEPT) + list(headers))

    def test_ping(self):
        h = self.w.hostport
        self.assertChallenge(lab.get(h, "/v2/"), "anonymous GET /v2/")
        r = lab.head(h, "/v2/")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.body, b"")
        self.assertIn("Basic realm=", r.header("WWW-Authenticate"))
        r = lab.get(h, "/v2/", [basic("alice", PASSWORDS["alice"])])
        self.assertStatus(r, 200, "alice GET /v2/")
        self.assertEqual(r.body, b"{}")
        # Any valid user may ping, even one who may read nothing but anonymous repositories.
        self.assertStatus(lab.get(h, "/v2/", [basic("bob", PASSWORDS["bob"])]), 200, "bob")

    def test_bad_credentials(self):
        h = self.w.hostport
        cases = [
            ("wrong password", [basic("alice", "nope")]),
            ("wrong case", [basic("alice", PASSWORDS["alice"].upper())]),
            ("unknown user", [basic("mallory", PASSWORDS["alice"])]),
            ("another user's password", [basic("bob", PASSWORDS["alice"])]),
            ("empty user", [basic("", PASSWORDS["alice"])]),
            ("bad base64", [("Authorization", "Basic !!!notbase64!!!")]),
            ("no colon", [("Authorization", "Basic " + base64.b64encode(b"alice").decode())]),
            ("scheme only", [("Authorization", "Basic")]),
            ("bearer", [("Authorization", "Bearer abc.def.ghi")]),
            ("NUL in password", [("Authorization", "Basic " + base64.b64encode(
                b"alice:" + PASSWORDS["alice"].encode() + b"\0x").decode())]),
            ("two headers", [basic("alice", PASSWORDS["alice"]),
                             basic("alice", PASSWORDS["alice"])]),
            ("huge", [("Authorization", "Basic " + "QUFB" * 5000)]),
            ("long password", [basic("alice", "p" * 600)]),
        ]
        for what, headers in cases:
            for path in ("/v2/", "/v2/%s/manifests/1.36" % SECRET_IMAGE.split(":")[0],
                         "/v2/library/busybox/manifests/1.36"):
                with self.subTest(what=what, path=path):
                    r = lab.get(h, path, lab.accept(lab.ALL_MANIFEST_ACCEPT) + headers)
                    # Wrong credentials are never anonymous, even for an anonymous repository.
                    self.assertChallenge(r, "%s on %s" % (what, path))
        # Over the head limit (32 KiB): the server's 431, winch stays up.
        r = lab.get(h, "/v2/", [("Authorization", "Basic " + "QUFB" * 9000)])
        self.assertEqual(r.status, 431)
        # Control bytes in the header: refused (the parser's 400 or the challenge), no crash.
        for raw in (b"Basic \x01\x02\x03", b"Basic YWxp\x7fY2U6", b"Basic \xff\xfe"):
            with socket.create_connection((lab.LOOPBACK, self.w.port), timeout=10) as s:
                s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: " + raw +
                          b"\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    data += b
            status = int(data.split(b" ", 2)[1])
            self.assertIn(status, (400, 401), data[:300])
        self.assertStatus(lab.get(h, "/v2/", [basic("alice", PASSWORDS["alice"])]), 200,
                          "winch still answers")
        self.assertTrue(self.w.running())

    def test_access(self):
        h = self.w.hostport
        secret_repo = SECRET_IMAGE.split(":")[0]
        anon = []
        empty = [("Authorization", "Basic Og==")]  # containers/image: no credentials
        alice = [basic("alice", PASSWORDS["alice"])]
        bob = [basic("bob", PASSWORDS["bob"])]
        ci = [basic("ci-bot", PASSWORDS["ci-bot"])]
        admin = [basic("admin", PASSWORDS["admin"])]
        img = self.data["images"]["busybox"]
        pub = self.data["images"]["busybox-v2s2"]
        # Anonymous repositories: anyone, with or without (valid) credentials.
        for who, hd in (("anonymous", anon), ("empty Basic", empty), ("bob", bob)):
            r = self.manifest("library/busybox", "1.36", hd)
            self.assertStatus(r, 200, "%s reading library/busybox" % who)
            self.assertEqual(r.header("Docker-Content-Digest"), pub["digest"])
        # The private repository.
        for who, hd in (("anonymous", anon), ("empty Basic", empty)):
            self.assertChallenge(self.manifest(secret_repo, "1.36", hd), who)
            r = self.manifest(secret_repo, "1.36", hd, "HEAD")
            self.assertEqual((r.status, r.body), (401, b""), who + " HEAD")
            self.assertIn("Basic realm=", r.header("WWW-Authenticate"))
        for who, hd in (("alice", alice), ("ci-bot (group ci)", ci)):
            r = self.manifest(secret_repo, "1.36", hd)
            self.assertStatus(r, 200, who)
            self.assertEqual(r.header("Docker-Content-Digest"), img["digest"])
        # bob may not; neither may admin (the lab rule matched first).
        for who, hd in (("bob", bob), ("admin", admin)):
            r = self.manifest(secret_repo, "1.36", hd)
            self.assertOciError(r, 403, "DENIED", who)
            self.assertIsNone(r.header("WWW-Authenticate"))
        # Every route is guarded: blobs, tags, referrers.
        config = netns.config_digest(img)
        for path in ("/v2/%s/blobs/%s" % (secret_repo, config),
                     "/v2/%s/tags/list" % secret_repo,
                     "/v2/%s/referrers/%s" % (secret_repo, img["digest"])):
            self.assertChallenge(lab.get(h, path), "anonymous " + path)
            self.assertOciError(lab.get(h, path, bob), 403, "DENIED", "bob " + path)
        st, dig, _ = lab.fetch_blob_digest(h, "/v2/%s/blobs/%s" % (secret_repo, config), alice)
        self.assertEqual((st, dig), (200, config))
        # The answer never tells whether a repository exists.
        for hd, check in ((anon, lambda r, w: self.assertChallenge(r, w)),
                          (bob, lambda r, w: self.assertOciError(r, 403, "DENIED", w))):
            a = self.manifest(secret_repo, "1.36", hd)
            b = self.manifest("lab/no-such-repo", "1.36", hd)
            c = self.manifest("lab/busybox-oci", "no-such-tag", hd)
            for r, w in ((a, "existing"), (b, "missing repo"), (c, "missing tag")):
                check(r, w)
            self.assertEqual(a.body, b.body)
            self.assertEqual(a.body, c.body)
        # A repository no rule names: admin only (the catch-all).
        self.assertOciError(self.manifest("other/thing", "1", alice), 403, "DENIED", "alice")
        self.assertEqual(self.manifest("other/thing", "1", admin).status, 404,
                         "admin: allowed, not there")
        # Dockerhub's one-component names are library/NAME for the rules too.
        self.assertStatus(self.manifest("busybox", "1.36"), 200, "busybox = library/busybox")
        # The access log names the user, and never a claimed one that failed.
        log = self.w.log()
        self.assertRegex(log, r"GET /v2/lab/busybox-oci/manifests/1\.36 200 .* user=alice")
        self.assertRegex(log, r"GET /v2/lab/busybox-oci/manifests/1\.36 403 .* user=bob")
        self.assertRegex(log, r"GET /v2/lab/busybox-oci/manifests/1\.36 401 .* user=-")
        self.assertNotRegex(log, r"user=mallory")

    def test_catalog(self):
        h = self.w.hostport
        # Cache something in both kinds of repositories first.
        self.assertStatus(self.manifest("library/busybox", "1.36"), 200, "public")
        alice = [basic("alice", PASSWORDS["alice"])]
        self.assertStatus(self.manifest("lab/busybox-oci", "1.36", alice), 200, "secret")

        def repos(headers):
            r = lab.get(h, "/v2/_catalog", headers)
            self.assertStatus(r, 200, "catalog")
            return r.json()["repositories"]
        # The index records repositories in batches: wait for both.
        lab.wait_for(lambda: {"lab/busybox-oci", "library/busybox"} <= set(repos(alice)), 10,
                     what="both repositories in alice's catalog")
        self.assertIn("library/busybox", repos(alice))
        for who, hd in (("anonymous", []), ("bob", [basic("bob", PASSWORDS["bob"])])):
            got = repos(hd)
            self.assertIn("library/busybox", got, who)
            self.assertEqual([x for x in got if not x.startswith("library/")], [], who)
        # Pagination counts only what the client sees.
        r = lab.get(h, "/v2/_catalog?n=1")
        self.assertEqual(r.json()["repositories"], ["library/busybox"])

    def test_concurrent_logins_cost_one_bcrypt(self):
        """100 concurrent requests with the same (right) password: one bcrypt. The next 100,
        none (the cache)."""
        h = self.w.hostport
        cred = [basic("fleet", PASSWORDS["fleet"])]
        before = bcrypt_runs(self.w)
        statuses = collections.Counter()
        lock = threading.Lock()
        start = threading.Barrier(100)

        def one():
            start.wait()
            st = lab.get(h, "/v2/lab/busybox-oci/tags/list", cred).status
            with lock:
                statuses[st] += 1
        for _round in range(2):
            threads = [threading.Thread(target=one) for _ in range(100)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            start.reset()
        self.assertEqual(statuses, {200: 200})
        lab.wait_for(lambda: bcrypt_runs(self.w) > before, 5, what="the bcrypt log line")
        self.assertEqual(bcrypt_runs(self.w) - before, 1, "bcrypt runs for 200 requests")

    def test_skopeo(self):
        h = self.w.hostport
        out = lab.tmpdir("winch-client-auth-skopeo-")
        direct = os.path.join(out, "direct")
        lab.skopeo_copy("docker://%s/%s" % (self.up.direct_hostport, SECRET_IMAGE),
                        "dir:" + direct)
        mine = os.path.join(out, "via-winch")
        lab.skopeo_copy("docker://%s/%s" % (h, SECRET_IMAGE), "dir:" + mine,
                        ["--src-creds", "alice:" + PASSWORDS["alice"]])
        self.assertEqual(lab.compare_dirs(direct, mine), [])
        for what, extra in (("without credentials", []),
                            ("with a wrong password", ["--src-creds", "alice:wrong"]),
                            ("as bob", ["--src-creds", "bob:" + PASSWORDS["bob"]])):
            with self.subTest(what=what):
                with self.assertRaises(Exception) as cm:
                    lab.skopeo_copy("docker://%s/%s" % (h, SECRET_IMAGE),
                                    "dir:" + os.path.join(out, "refused"), extra)
                self.assertRegex(str(cm.exception), r"(?i)unauthorized|denied|401|403")
        # Anonymous repositories need nothing.
        lab.skopeo_copy("docker://%s/%s" % (h, PUBLIC_IMAGE), "dir:" + os.path.join(out, "pub"))

    def test_zz_no_credentials_logged(self):
        assert_no_secret(self, self.w)
        self.assertRegex(self.w.log(), r"wrong password for user \"alice\"")
        self.assertRegex(self.w.log(), r"login as an unknown user")


class ThrottleAndReload(Base):
    def test_throttle(self):
        """3 failed logins from one address, then one a second: the 4th is 429 with
        Retry-After, without a bcrypt; a right password already cached still passes. Behind a
        trusted proxy, the address its X-Forwarded-For names is throttled, not the proxy's."""
        w = lab.Winch([("docker.io", self.up.url)],
                      config=dict(auth_config(self.pw, max_failures=3, failure_window_s=3),
                                  trusted_proxies=["127.0.0.1"]))
        try:
            h = w.hostport
            good = [basic("alice", PASSWORDS["alice"])]
            self.assertStatus(lab.get(h, "/v2/", good), 200, "alice")
            for i in range(3):
                self.assertEqual(lab.get(h, "/v2/", [basic("alice", "guess%d" % i)]).status, 401)
            # The same wrong password again is no new guess: 401, not charged.
            self.assertEqual(lab.get(h, "/v2/", [basic("alice", "guess0")]).status, 401)
            runs = bcrypt_runs(w)
            r = lab.get(h, "/v2/", [basic("alice", "guess9")])
            self.assertOciError(r, 429, "TOOMANYREQUESTS", "4th failure")
            self.assertEqual(r.header("Retry-After"), "1")
            r = lab.get(h, "/v2/", [basic("bob", PASSWORDS["bob"])])  # uncached: must wait
            self.assertEqual(r.status, 429)
            self.assertStatus(lab.get(h, "/v2/", good), 200, "alice, cached")
            self.assertEqual(bcrypt_runs(w), runs, "a throttled address ran bcrypt")
            time.sleep(1.2)
            self.assertStatus(lab.get(h, "/v2/", [basic("bob", PASSWORDS["bob"])]), 200, "bob")
            # Two clients behind the proxy (127.0.0.1): one guesses and is throttled, the other
            # logs in; the lines name the client, never the proxy.
            xff = [("X-Forwarded-For", "6.6.6.6, 198.51.100.7")]
            for i in range(3):
                r = lab.get(h, "/v2/", xff + [basic("alice", "xff-guess%d" % i)])
                self.assertEqual(r.status, 401)
            r = lab.get(h, "/v2/", xff + [basic("alice", "xff-guess9")])
            self.assertOciError(r, 429, "TOOMANYREQUESTS", "4th failure behind the proxy")
            r = lab.get(h, "/v2/", [("X-Forwarded-For", "198.51.100.8"),
                                    basic("admin", PASSWORDS["admin"])])
            self.assertStatus(r, 200, "another client behind the proxy")
            log = w.log()
            self.assertIn('client 198.51.100.7: wrong password for user "alice"', log)
            self.assertIn("client 198.51.100.7: too many failed logins", log)
            self.assertNotIn("6.6.6.6", log)
            assert_no_secret(self, w)
        finally:
            w.stop()

    def test_reload(self):
        """A user added to the htpasswd file can log in within seconds, without a restart; a
        broken file is refused and the old users stay."""
        pw = os.path.join(self.work, "htpasswd-reload")
        htpasswd_file(pw, {"alice": PASSWORDS["alice"]})
        w = lab.Winch([("docker.io", self.up.url)], config=auth_config(pw))
        try:
            h = w.hostport
            carol = [basic("carol", "carol-Pa55")]
            self.assertEqual(lab.get(h, "/v2/", carol).status, 401)
            htpasswd_file(pw + ".new", {"alice": PASSWORDS["alice"], "carol": "carol-Pa55"})
            os.rename(pw + ".new", pw)
            lab.wait_for(lambda: lab.get(h, "/v2/", carol).status == 200, 10,
                         what="carol after the reload")
            self.assertIn("htpasswd reloaded: 2 users", w.log())
            with open(pw, "a") as f:
                f.write("mallory:$apr1$abc$def\n")
            lab.wait_for(lambda: "htpasswd not reloaded" in w.log(), 10, what="the refusal")
            self.assertNotIn("$apr1$abc$def", w.log())
            self.assertStatus(lab.get(h, "/v2/", carol), 200, "carol after a bad file")
        finally:
            w.stop()

    def test_bad_files_stop_winch(self):
        """A missing htpasswd file or a non-bcrypt entry stops winch at start, naming the file
        and line, never the hash."""
        bad = os.path.join(self.work, "htpasswd-md5")
        with open(bad, "w") as f:
            f.write("alice:$2y$05$NfGS1cB61jrqj4xx5BrCo.WjoFlUQM7TMpZSxDMdlBFaD.ydWQfY.\n"
                    "bob:$apr1$sEcReTsAlT$0123456789abcdefghijk.\n")
        for path, want in ((bad, bad + ":2: user \"bob\": an MD5 (apr1) hash"),
                           (os.path.join(self.work, "nope"), "auth.htpasswd: cannot open")):
            w = lab.Winch([("docker.io", self.up.url)], config=auth_config(path), start=False)
            p = subprocess.run(w.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=20)
            out = p.stdout.decode(errors="replace")
            self.assertNotEqual(p.returncode, 0, out)
            self.assertIn(want, out)
            self.assertNotIn("sEcReTsAlT", out)
            self.assertNotIn("NfGS1cB61", out)


class AuthBeforePolicy(Base):
    """Client authentication decides before the pull-time policy: a client the access rules
    refuse gets their 401/403, never the policy's message (which would tell it what exists and
    what the rules are); a client they admit meets the policy like any other."""

    MARK = "ask-the-platform-team"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cfg = auth_config(cls.pw)
        cfg["policy"] = [
            {"match": "docker.io/lab/denied", "deny": True, "message": cls.MARK},
            {"match": "docker.io/lab/**", "deny_tags": ["^latest$"], "message": cls.MARK},
            {"match": "docker.io/library/busybox", "deny_tags": ["^1\\.36$"],
             "message": cls.MARK},
        ]
        cls.w = lab.Winch([("docker.io", cls.up.url)], config=cfg)

    @classmethod
    def tearDownClass(cls):
        cls.w.stop()
        super().tearDownClass()

    def get(self, path, headers=()):
        return lab.get(self.w.hostport, path, lab.accept(lab.ALL_MANIFEST_ACCEPT) + list(headers))

    def test_order(self):
        alice = [basic("alice", PASSWORDS["alice"])]
        bob = [basic("bob", PASSWORDS["bob"])]
        for path in ("/v2/lab/busybox-oci/manifests/latest", "/v2/lab/denied/tags/list",
                     "/v2/lab/denied/manifests/1.36"):
            with self.subTest(path=path):
                r = self.get(path)
                self.assertOciError(r, 401, "UNAUTHORIZED", "anonymous " + path)
                self.assertIn("Basic realm=", r.header("WWW-Authenticate"))
                self.assertNotIn(self.MARK.encode(), r.body)
                r = self.get(path, bob)
                self.assertOciError(r, 403, "DENIED", "bob " + path)
                self.assertNotIn(self.MARK.encode(), r.body)
                r = self.get(path, alice)
                self.assertOciError(r, 403, "DENIED", "alice " + path)
                self.assertIn(self.MARK.encode(), r.body, "alice meets the policy")
        self.assertStatus(self.get("/v2/lab/busybox-oci/manifests/1.36", alice), 200, "alice")
        # An anonymous repository admits everyone, and the policy still applies to them.
        r = self.get("/v2/library/busybox/manifests/1.36")
        self.assertOciError(r, 403, "DENIED", "anonymous, refused by the policy")
        self.assertIn(self.MARK.encode(), r.body)
        self.assertIsNone(r.header("WWW-Authenticate"))


# ---- real clients in namespaces ------------------------------------------------------------

class Clients(Base):
    @classmethod
    def setUpClass(cls):
        netns.require("ip", "nsenter")
        super().setUpClass()
        cls.w = lab.Winch([("docker.io", cls.up.url)], config=auth_config(cls.pw))
        cls.ns = netns.Netns()
        cls.fwd = netns.Forward(cls.ns, cls.w.hostport, name="forward-winch")
        cls.dead = netns.dead_port()

    @classmethod
    def tearDownClass(cls):
        cls.fwd.stop()
        cls.ns.stop()
        cls.w.stop()
        super().tearDownClass()

    def tearDown(self):
        assert_no_secret(self, self.w)

    def want(self, key):
        return self.data["images"][key]["digest"]

    def test_podman(self):
        netns.require("podman")
        p = netns.Podman(self.ns, [("docker.io", "127.0.0.1:%d" % self.dead, self.fwd.hostport)])

        def has(ref, key):
            """ref was pulled with the seed's digest of key (images sharing a config share an
            image ID, so .Digest may be another ref's; RepoDigests lists each)."""
            info = json.loads(p.podman("image", "inspect", ref).stdout)[0]
            name = ref.rsplit(":", 1)[0]
            self.assertIn("%s@%s" % (name, self.want(key)), info["RepoDigests"], ref)
        # Anonymous: the anonymous repository (podman sends empty Basic credentials after the
        # challenge on /v2/, which winch takes as anonymous); not the private one.
        p.podman("pull", "docker.io/" + PUBLIC_IMAGE)
        has("docker.io/" + PUBLIC_IMAGE, "busybox-v2s2")
        r = p.podman("pull", "docker.io/" + SECRET_IMAGE, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unauthorized", r.stderr)
        # A wrong password: login refuses it.
        r = p.podman("login", "--tls-verify=false", "-u", "alice", "-p", "wrong",
                     self.fwd.hostport, check=False)
        self.assertNotEqual(r.returncode, 0)
        # login to the mirror's host: podman then sends those credentials to the mirror.
        p.podman("login", "--tls-verify=false", "-u", "alice", "-p", PASSWORDS["alice"],
                 self.fwd.hostport)
        p.podman("pull", "docker.io/" + SECRET_IMAGE)
        has("docker.io/" + SECRET_IMAGE, "busybox")
        # And by name.
        ref = "%s/%s" % (self.fwd.hostport, SECRET_IMAGE)
        p.podman("pull", "--tls-verify=false", ref)
        has(ref, "busybox")
        # bob is refused.
        p.podman("logout", self.fwd.hostport)
        p.podman("login", "--tls-verify=false", "-u", "bob", "-p", PASSWORDS["bob"],
                 self.fwd.hostport)
        p.podman("rmi", "-a", "-f")
        r = p.podman("pull", "--tls-verify=false", ref, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stderr, r"(?i)denied")

    def test_dockerd(self):
        netns.require("dockerd", "docker", "containerd", "runc")
        d = netns.Dockerd(self.ns, mirror=self.fwd.hostport)
        try:
            # 1. By name: `docker login` to winch, then pull winch's names.
            ref = "%s/%s" % (self.fwd.hostport, SECRET_IMAGE)
            r = d.docker("login", "-u", "alice", "-p", "wrong", self.fwd.hostport, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("401 Unauthorized", r.stderr)
            d.docker("login", "-u", "alice", "-p", PASSWORDS["alice"], self.fwd.hostport)
            out = d.docker("pull", ref).stdout
            self.assertIn("Digest: " + self.want("busybox"), out)
            out = d.docker("pull", "%s/%s" % (self.fwd.hostport, PUBLIC_IMAGE)).stdout
            self.assertIn("Digest: " + self.want("busybox-v2s2"), out)
            r = d.docker("run", "--rm", "--network", "none", ref, "echo", "hello")
            self.assertEqual(r.stdout.strip(), "hello")
            d.docker("logout", self.fwd.hostport)
            # Anonymous dockerd gets "no basic auth credentials" after the challenge on /v2/,
            # even for an anonymous repository (README: anonymous docker clients).
            r = d.docker("pull", "%s/library/busybox:1.36" % self.fwd.hostport, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("no basic auth credentials", r.stderr)

            # 2. As a registry mirror: dockerd sends the credentials it has for Docker Hub
            # (https://index.docker.io/v1/) to its mirrors. `docker login` would talk to the
            # real Docker Hub, so the entry is written as docker login would write it.
            with open(os.path.join(d.cli_config, "config.json"), "w") as f:
                json.dump({"auths": {"https://index.docker.io/v1/": {
                    "auth": base64.b64encode(
                        ("alice:" + PASSWORDS["alice"]).encode()).decode()}}}, f)
            out = d.docker("pull", "lab/busybox-oci:1.36").stdout
            self.assertIn("Digest: " + self.want("busybox"), out)
            fallback = [ln for ln in d.log().splitlines()
                        if "Trying to pull" in ln and "registry-1.docker.io" in ln]
            self.assertEqual(fallback, [], "dockerd fell back from the mirror to Docker Hub")
            os.remove(os.path.join(d.cli_config, "config.json"))
            d.docker("rmi", "lab/busybox-oci:1.36")
            # Without them, dockerd gives up on the mirror and falls back to Docker Hub (which
            # does not exist in this namespace): the pull fails.
            r = d.docker("pull", "lab/busybox-oci:1.36", check=False)
            self.assertNotEqual(r.returncode, 0)
        finally:
            d.stop()

    def test_containerd(self):
        netns.require("containerd", "ctr", "runc")
        c = netns.Containerd(self.ns)
        snap = ["--snapshotter", "native"]
        try:
            hosts = c.hosts_dir({"docker.io": ("http://127.0.0.1:%d" % self.dead,
                                               "http://" + self.fwd.hostport)})
            pub, sec = "docker.io/" + PUBLIC_IMAGE, "docker.io/" + SECRET_IMAGE
            # Anonymous: containerd does not ping /v2/; the anonymous repository answers.
            c.ctr("images", "pull", "--hosts-dir", hosts, *snap, pub)
            self.assertEqual(c.images().get(pub), self.want("busybox-v2s2"))
            r = c.ctr("images", "pull", "--hosts-dir", hosts, *snap, sec, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("401 Unauthorized", r.stderr)
            r = c.ctr("images", "pull", "--hosts-dir", hosts, *snap, "--user", "alice:wrong",
                      sec, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("401 Unauthorized", r.stderr)
            r = c.ctr("images", "pull", "--hosts-dir", hosts, *snap, "--user",
                      "bob:" + PASSWORDS["bob"], sec, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("403 Forbidden", r.stderr)
            # ctr --user.
            c.ctr("images", "pull", "--hosts-dir", hosts, *snap, "--user",
                  "alice:" + PASSWORDS["alice"], sec)
            self.assertEqual(c.images().get(sec), self.want("busybox"))
            # --sync: containerd's own collection of the image's content is over before the prune,
            # which otherwise races it ("content digest ...: not found").
            c.ctr("images", "rm", "--sync", sec)
            c.ctr("content", "prune", "references")
            # hosts.toml with a static Authorization header: what CRI (kubelet) pulls use.
            hosts2 = lab.tmpdir("winch-ctr-hosts-auth-")
            os.makedirs(os.path.join(hosts2, "docker.io"))
            with open(os.path.join(hosts2, "docker.io", "hosts.toml"), "w") as f:
                f.write('server = "http://127.0.0.1:%d"\n\n[host."http://%s"]\n'
                        '  capabilities = ["pull", "resolve"]\n'
                        '  [host."http://%s".header]\n    Authorization = ["%s"]\n'
                        % (self.dead, self.fwd.hostport, self.fwd.hostport,
                           basic("ci-bot", PASSWORDS["ci-bot"])[1]))
            c.ctr("images", "pull", "--hosts-dir", hosts2, *snap, sec)
            self.assertEqual(c.images().get(sec), self.want("busybox"))
            r = c.ctr("run", "--rm", *snap, sec, "winch-it-auth", "echo", "hello")
            self.assertEqual(r.stdout.strip(), "hello")
        finally:
            c.stop()
        self.assertRegex(self.w.log(), r"HEAD /v2/lab/busybox-oci/manifests/1\.36\?ns=docker\.io "
                         r"200 .* user=ci-bot")


# ---- the bearer challenge: winch as its own token service ----------------------------------

class Bearer(Base):
    """"challenge": "bearer": the same access rules, with tokens from GET /v2/_token. What it
    adds: anonymous dockerd pulls anonymous repositories (with the Basic challenge it cannot)."""

    @classmethod
    def setUpClass(cls):
        netns.require("ip", "nsenter")
        super().setUpClass()
        cls.pw2 = os.path.join(cls.work, "htpasswd-bearer")
        htpasswd_file(cls.pw2, dict(PASSWORDS, carol="carol-Pa55"))
        cls.w = lab.Winch([("docker.io", cls.up.url)],
                          config=auth_config(cls.pw2, challenge="bearer"))
        cls.ns = netns.Netns()
        cls.fwd = netns.Forward(cls.ns, cls.w.hostport, name="forward-winch")
        cls.dead = netns.dead_port()

    @classmethod
    def tearDownClass(cls):
        cls.fwd.stop()
        cls.ns.stop()
        cls.w.stop()
        super().tearDownClass()

    def tearDown(self):
        assert_no_secret(self, self.w)
        self.assertNotRegex(self.w.log(), r"wt1\.[A-Za-z0-9_-]{8,}", "winch logged a token")

    def token(self, headers=()):
        r = lab.get(self.w.hostport, "/v2/_token?service=winch&scope=repository:x:pull", headers)
        self.assertStatus(r, 200, "token")
        doc = r.json()
        self.assertEqual(doc["token"], doc["access_token"])
        self.assertEqual(doc["expires_in"], 300)
        self.assertRegex(doc["issued_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        return [("Authorization", "Bearer " + doc["token"])]

    def test_http(self):
        h = self.w.hostport
        secret = "/v2/lab/busybox-oci/manifests/1.36"
        acc = lab.accept(lab.ALL_MANIFEST_ACCEPT)
        realm = 'Bearer realm="http://%s/v2/_token",service="winch"' % h
        r = lab.get(h, "/v2/")
        self.assertOciError(r, 401, "UNAUTHORIZED", "anonymous ping")
        self.assertEqual(r.header("WWW-Authenticate"), realm)
        # The realm follows the Host the client used; an unusable one gets the Basic challenge.
        self.assertEqual(raw_challenge(self.w.port, b"mirror.example:5000"),
                         'Bearer realm="http://mirror.example:5000/v2/_token",service="winch"')
        for host in (b'evil"x', b"a b", b"x\\y", b""):
            self.assertEqual(raw_challenge(self.w.port, host),
                             'Basic realm="winch", charset="UTF-8"', host)
        anon, alice = self.token(), self.token([basic("alice", PASSWORDS["alice"])])
        self.assertStatus(lab.get(h, "/v2/", anon), 200, "ping with an anonymous token")
        self.assertStatus(lab.get(h, "/v2/library/busybox/manifests/1.36", acc + anon), 200, "")
        r = lab.get(h, secret, acc + anon)
        self.assertOciError(r, 401, "UNAUTHORIZED", "anonymous token, private repository")
        self.assertEqual(r.header("WWW-Authenticate"), realm)
        self.assertStatus(lab.get(h, secret, acc + alice), 200, "alice's token")
        bob = self.token([basic("bob", PASSWORDS["bob"])])
        r = lab.get(h, secret, acc + bob)
        self.assertOciError(r, 403, "DENIED", "bob's token")
        # Basic still works beside tokens (curl, scripts).
        self.assertStatus(lab.get(h, secret, acc + [basic("alice", PASSWORDS["alice"])]), 200,
                          "Basic in bearer mode")
        # The token service: wrong credentials, POST (containerd's OAuth2 attempt), others.
        r = lab.get(h, "/v2/_token", [basic("alice", "wrong")])
        self.assertOciError(r, 401, "UNAUTHORIZED", "wrong password at the token service")
        self.assertEqual(r.header("WWW-Authenticate"), 'Basic realm="winch", charset="UTF-8"')
        r = lab.request(h, "POST", "/v2/_token", body=b"grant_type=password&username=alice")
        self.assertEqual(r.status, 404)
        # Forged, truncated, foreign and malformed tokens.
        tok = alice[0][1].split(" ", 1)[1]
        for what, t in (("forged", tok[:-2] + ("AA" if not tok.endswith("AA") else "BB")),
                        ("truncated", tok[:-5]), ("junk", "abc"), ("empty", ""),
                        ("another winch's", "wt1.YWxpY2UKOTk5OTk5OTk5OTk5OQ." + "A" * 43)):
            r = lab.get(h, secret, acc + [("Authorization", "Bearer " + t)])
            self.assertOciError(r, 401, "UNAUTHORIZED", what)
            if t:
                self.assertIn('error="invalid_token"', r.header("WWW-Authenticate"), what)
        # A user removed from the file loses access at once, token or not.
        carol = self.token([basic("carol", "carol-Pa55")])
        self.assertStatus(lab.get(h, "/v2/", carol), 200, "carol")
        htpasswd_file(self.pw2 + ".new", PASSWORDS)
        os.rename(self.pw2 + ".new", self.pw2)
        lab.wait_for(lambda: lab.get(h, "/v2/", carol).status == 401, 10, what="carol refused")
        self.assertStatus(lab.get(h, secret, acc + alice), 200, "alice's token after reload")

    def test_skopeo(self):
        out = lab.tmpdir("winch-client-auth-bearer-skopeo-")
        lab.skopeo_copy("docker://%s/%s" % (self.w.hostport, SECRET_IMAGE), "dir:" + out + "/a",
                        ["--src-creds", "alice:" + PASSWORDS["alice"]])
        lab.skopeo_copy("docker://%s/%s" % (self.w.hostport, PUBLIC_IMAGE), "dir:" + out + "/p")
        with self.assertRaises(Exception):
            lab.skopeo_copy("docker://%s/%s" % (self.w.hostport, SECRET_IMAGE),
                            "dir:" + out + "/x")

    def test_dockerd(self):
        netns.require("dockerd", "docker", "containerd", "runc")
        d = netns.Dockerd(self.ns, mirror=self.fwd.hostport, name="dockerd-bearer")
        want = self.data["images"]
        try:
            # Anonymous, as a mirror: the anonymous repository works...
            out = d.docker("pull", "busybox:1.36").stdout
            self.assertIn("Digest: " + want["busybox-v2s2"]["digest"], out)
            # ...the private one does not (dockerd then falls back to Docker Hub, unreachable).
            r = d.docker("pull", "lab/busybox-oci:1.36", check=False)
            self.assertNotEqual(r.returncode, 0)
            # With the Docker Hub credentials dockerd sends to its mirrors.
            with open(os.path.join(d.cli_config, "config.json"), "w") as f:
                json.dump({"auths": {"https://index.docker.io/v1/": {
                    "auth": base64.b64encode(
                        ("alice:" + PASSWORDS["alice"]).encode()).decode()}}}, f)
            out = d.docker("pull", "lab/busybox-oci:1.36").stdout
            self.assertIn("Digest: " + want["busybox"]["digest"], out)
            os.remove(os.path.join(d.cli_config, "config.json"))
            # docker login by name.
            d.docker("login", "-u", "alice", "-p", PASSWORDS["alice"], self.fwd.hostport)
            out = d.docker("pull", "%s/%s" % (self.fwd.hostport, SECRET_IMAGE)).stdout
            self.assertIn("Digest: " + want["busybox"]["digest"], out)
            d.docker("logout", self.fwd.hostport)
            fallback = [ln for ln in d.log().splitlines()
                        if "Trying to pull" in ln and "registry-1.docker.io" in ln and
                        "busybox:1.36" in ln and "lab/" not in ln]
            self.assertEqual(fallback, [], "dockerd fell back to Docker Hub for busybox")
        finally:
            d.stop()

    def test_podman_and_ctr(self):
        netns.require("podman", "containerd", "ctr", "runc")
        p = netns.Podman(self.ns, [("docker.io", "127.0.0.1:%d" % self.dead, self.fwd.hostport)])
        p.podman("pull", "docker.io/" + PUBLIC_IMAGE)
        self.assertNotEqual(p.podman("pull", "docker.io/" + SECRET_IMAGE, check=False).returncode,
                            0)
        p.podman("login", "--tls-verify=false", "-u", "alice", "-p", PASSWORDS["alice"],
                 self.fwd.hostport)
        p.podman("pull", "docker.io/" + SECRET_IMAGE)
        c = netns.Containerd(self.ns, name="containerd-bearer")
        snap = ["--snapshotter", "native"]
        try:
            hosts = c.hosts_dir({"docker.io": ("http://127.0.0.1:%d" % self.dead,
                                               "http://" + self.fwd.hostport)})
            c.ctr("images", "pull", "--hosts-dir", hosts, *snap, "docker.io/" + PUBLIC_IMAGE)
            r = c.ctr("images", "pull", "--hosts-dir", hosts, *snap, "docker.io/" + SECRET_IMAGE,
                      check=False)
            self.assertNotEqual(r.returncode, 0)
            c.ctr("images", "pull", "--hosts-dir", hosts, *snap, "--user",
                  "alice:" + PASSWORDS["alice"], "docker.io/" + SECRET_IMAGE)
            self.assertEqual(c.images().get("docker.io/" + SECRET_IMAGE),
                             self.data["images"]["busybox"]["digest"])
        finally:
            c.stop()


# ---- client certificates -----------------------------------------------------------------

def openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s" % (" ".join(args), p.stdout.decode()))


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + ".key", "-out", name + ".crt", "-days", "2",
            "-subj", "/CN=winch test " + name,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d, ca, name, subject, usage, san=None):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject, cwd=d)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=%s\n" % usage)
        if san:
            f.write("subjectAltName=%s\n" % san)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", name + ".ext",
            cwd=d)


class ClientCertificates(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        d = cls.pki = lab.tmpdir("winch-client-auth-pki-")
        make_ca(d, "ca")
        make_ca(d, "clients")
        make_ca(d, "other")
        make_leaf(d, "ca", "server", "/CN=localhost", "serverAuth",
                  "DNS:localhost,IP:127.0.0.1")
        make_leaf(d, "clients", "alice", "/O=winch/CN=alice", "clientAuth")
        make_leaf(d, "clients", "mallory", "/CN=mallory", "clientAuth")
        make_leaf(d, "clients", "nocn", "/O=winch only", "clientAuth", "email:ci-bot")
        make_leaf(d, "other", "forged", "/CN=alice", "clientAuth")

    def start(self, require):
        d = self.pki
        cfg = auth_config(self.pw, client_ca=os.path.join(d, "clients.crt"),
                          require_client_cert=require)
        cfg.update({"tls_listen": "127.0.0.1:0", "tls_cert": os.path.join(d, "server.crt"),
                    "tls_key": os.path.join(d, "server.key")})
        w = lab.Winch([("docker.io", self.up.url)], config=cfg)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+) \(tls\)", w.log())
        self.assertIsNotNone(m, w.log())
        w.tls_port = int(m.group(1))
        return w

    def get(self, w, path, cert=None, headers=()):
        """(status, body) over TLS with an optional client certificate (name in self.pki)."""
        import http.client
        ctx = ssl.create_default_context(cafile=os.path.join(self.pki, "ca.crt"))
        if cert:
            ctx.load_cert_chain(os.path.join(self.pki, cert + ".crt"),
                                os.path.join(self.pki, cert + ".key"))
        conn = http.client.HTTPSConnection("localhost", w.tls_port, timeout=30, context=ctx)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            for k, v in list(headers) + lab.accept(lab.ALL_MANIFEST_ACCEPT):
                conn.putheader(k, v)
            conn.endheaders()
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def test_optional(self):
        w = self.start(require=False)
        try:
            secret = "/v2/%s/manifests/1.36" % SECRET_IMAGE.split(":")[0]
            self.assertEqual(self.get(w, "/v2/", "alice")[0], 200)
            self.assertEqual(self.get(w, secret, "alice")[0], 200)
            self.assertEqual(self.get(w, secret, "mallory")[0], 403)
            self.assertEqual(self.get(w, secret, "nocn")[0], 200)  # e-mail SAN: ci-bot
            # A verified certificate decides: a password beside it is not looked at.
            self.assertEqual(self.get(w, secret, "mallory",
                                      [basic("alice", PASSWORDS["alice"])])[0], 403)
            # No certificate: Basic, as on the plain listener.
            self.assertEqual(self.get(w, "/v2/")[0], 401)
            self.assertEqual(self.get(w, secret, None, [basic("alice", PASSWORDS["alice"])])[0],
                             200)
            # A certificate from another CA (same CN) fails the handshake.
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                self.get(w, "/v2/", "forged")
            # skopeo with a client certificate (--src-cert-dir: ca.crt, client.cert/.key).
            cd = lab.tmpdir("winch-client-auth-certdir-")
            shutil.copy(os.path.join(self.pki, "ca.crt"), os.path.join(cd, "ca.crt"))
            shutil.copy(os.path.join(self.pki, "alice.crt"), os.path.join(cd, "client.cert"))
            shutil.copy(os.path.join(self.pki, "alice.key"), os.path.join(cd, "client.key"))
            out = lab.tmpdir("winch-client-auth-mtls-")
            lab.skopeo(["copy", "--quiet", "--src-cert-dir", cd,
                        "docker://localhost:%d/%s" % (w.tls_port, SECRET_IMAGE),
                        "dir:" + os.path.join(out, "img")])
            direct = os.path.join(out, "direct")
            lab.skopeo_copy("docker://%s/%s" % (self.up.direct_hostport, SECRET_IMAGE),
                            "dir:" + direct)
            self.assertEqual(lab.compare_dirs(direct, os.path.join(out, "img")), [])
            self.assertRegex(w.log(), r"GET /v2/lab/busybox-oci/manifests/1\.36 200 .* "
                             r"user=alice")
            # The plain listener knows no certificates: passwords there.
            self.assertEqual(lab.get(w.hostport, "/v2/").status, 401)
            assert_no_secret(self, w)
        finally:
            w.stop()

    def test_required(self):
        w = self.start(require=True)
        try:
            self.assertEqual(self.get(w, "/v2/", "alice")[0], 200)
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                self.get(w, "/v2/", None, [basic("alice", PASSWORDS["alice"])])
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                self.get(w, "/v2/", "forged")
            self.assertEqual(self.get(w, "/v2/", "alice")[0], 200)
        finally:
            w.stop()


if __name__ == "__main__":
    netns.main()
