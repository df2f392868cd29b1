#!/usr/bin/python3
"""TLS on both sides of winch, with a test CA made here by `openssl req` (and an unrelated
second CA for the failure cases).

Upstream side: a docker-registry serving the seeded storage over HTTPS (`http.tls`) with
htpasswd Basic auth; winch is configured with the https URL, `ca_file` and `username` +
`password_file`, and skopeo pulls through winch byte-identically to a pull straight from the
registry. A winch trusting the wrong CA answers 502 with an OCI error that says TLS, logs the
verification failure, and caches nothing. The TLS half alone is also checked against an
https registry without auth, so a failure of the auth half is told apart.

Listener side: winch's own TLS listener (`tls_listen`, `tls_cert`, `tls_key`), with and without
the plain listener, serving skopeo (`--src-cert-dir`, the CA as *.crt) and curl (`--cacert`);
a plain-HTTP client on the TLS port gets no HTTP answer; a key that does not match the
certificate stops winch at start with a message naming tls_key.
"""

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import lab

USER = "winch-user"
PASSWORD = "s3cret-Pa55"  # must never show up in winch's output
IMAGE = "lab/busybox-oci:1.36"
BIG_IMAGE = "lab/range16:v1"  # a 16 MiB layer: many TLS records, sendfile fallback


def openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s" % (" ".join(args), p.stdout.decode()))


def make_ca(d, name):
    """A CA key and self-signed certificate: d/name.key, d/name.crt."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + ".key", "-out", name + ".crt", "-days", "2",
            "-subj", "/CN=winch test " + name,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d, ca, name):
    """A server certificate for localhost and 127.0.0.1 signed by ca: d/name.key, d/name.crt."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=localhost", cwd=d)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", name + ".ext",
            cwd=d)


class TlsRegistry(lab.Registry):
    """The seeded registry over HTTPS, optionally with htpasswd Basic auth."""

    def __init__(self, cert, key, ca, htpasswd=None, name="tls-upstream"):
        self.cert, self.key, self.ca, self.htpasswd = cert, key, ca, htpasswd
        lab.seeded()
        root = os.path.join(lab.TESTDATA, "registry")
        lab._forbidden.add(os.path.realpath(lab.TESTDATA))
        super().__init__(root=root, readonly=True, count=False, name=name)

    def _config(self):
        cfg = super()._config()
        cfg["http"]["tls"] = {"certificate": self.cert, "key": self.key}
        if self.htpasswd:
            cfg["auth"] = {"htpasswd": {"realm": "winch-test", "path": self.htpasswd}}
        return cfg

    def _wait_ready(self, timeout):
        ctx = ssl.create_default_context(cafile=self.ca)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((lab.LOOPBACK, self.port), timeout=2) as s:
                    with ctx.wrap_socket(s, server_hostname="localhost") as t:
                        t.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Connection: close\r\n\r\n")
                        head = t.recv(64)
                if head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 401"):
                    return True
            except (OSError, ssl.SSLError):
                pass
            time.sleep(0.05)
        return False

    @property
    def url(self):
        return "https://" + self.direct_hostport


class WinchNoPlainArgs(lab.Winch):
    """A winch whose argv carries no --listen flag (the config decides the listeners) and no
    --upstream flags (the config's upstreams carry credentials, which flags would drop)."""

    def argv(self):
        args = super().argv()
        i = args.index("--listen")
        del args[i:i + 2]
        return args


def tls_get(port, path, ca, headers=(), timeout=30):
    """One HTTPS request to 127.0.0.1:port verifying against ca; returns (status, headers, body)."""
    import http.client
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(lab.LOOPBACK, port, timeout=timeout, context=ctx)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        conn.close()


class TlsBase(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        lab.require("openssl", "skopeo")
        cls.pki = lab.tmpdir("winch-tls-pki-")
        make_ca(cls.pki, "ca")
        make_ca(cls.pki, "other-ca")
        make_leaf(cls.pki, "ca", "server")
        cls.ca = os.path.join(cls.pki, "ca.crt")
        cls.other_ca = os.path.join(cls.pki, "other-ca.crt")
        cls.cert = os.path.join(cls.pki, "server.crt")
        cls.key = os.path.join(cls.pki, "server.key")
        # skopeo's --src-cert-dir wants the CA as *.crt in a directory of its own.
        cls.cert_dir = lab.tmpdir("winch-tls-certdir-")
        shutil.copy(cls.ca, os.path.join(cls.cert_dir, "ca.crt"))
        cls.out = lab.tmpdir("winch-tls-out-")

    def direct_copy(self, label, ref, src_hostport, extra):
        dest = os.path.join(self.out, "direct-" + label)
        if not os.path.isdir(dest):
            lab.skopeo(["copy", "--quiet", "--src-cert-dir", self.cert_dir] + extra +
                       ["docker://%s/%s" % (src_hostport, ref), "dir:" + dest])
        return dest

    def assertSameDirs(self, a, b):
        diffs = lab.compare_dirs(a, b)
        self.assertEqual(diffs, [], "\n".join(diffs))

    def assertNoSecret(self, w):
        self.assertNotIn(PASSWORD, w.log(), "winch logged the upstream password")


class UpstreamTls(TlsBase):
    """winch -> https docker-registry."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.up = TlsRegistry(cls.cert, cls.key, cls.ca)

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def winch(self, **upstream):
        cfg = {"upstreams": [dict({"name": "docker.io", "url": self.up.url}, **upstream)]}
        return lab.Winch([], config=cfg)

    def test_pull_over_tls(self):
        w = self.winch(ca_file=self.ca)
        try:
            for label, ref in (("busybox", IMAGE), ("range16", BIG_IMAGE)):
                direct = self.direct_copy(label, ref, self.up.direct_hostport, [])
                mine = os.path.join(self.out, "winch-tls-" + label)
                lab.skopeo_copy("docker://%s/%s" % (w.hostport, ref), "dir:" + mine)
                self.assertSameDirs(direct, mine)
            # Keep-alive: the second pull reuses pooled TLS connections (no new handshake
            # per request); winch's store is intact.
            self.assertEqual(w.verify_store(), [])
        finally:
            w.stop()

    def test_wrong_ca(self):
        for label, upstream in (("other CA", {"ca_file": self.other_ca}),
                                ("system store only", {})):
            w = self.winch(**upstream)
            try:
                path = "/v2/%s/manifests/%s" % tuple(IMAGE.split(":"))
                for _ in range(2):  # and the second time is not served from a cache either
                    r = lab.get(w.hostport, path, lab.accept(lab.SKOPEO_ACCEPT))
                    self.assertEqual(r.status, 502, "%s: %r" % (label, r))
                    self.assertIsNotNone(r.error_codes(), r)
                    msg = json.dumps(r.json())
                    self.assertIn("TLS", msg, "%s: the error should say TLS: %s" % (label, msg))
                blob = self.data["images"]["busybox"]
                r = lab.get(w.hostport, "/v2/lab/busybox-oci/blobs/" + blob["digest"])
                self.assertEqual(r.status, 502, r)
                self.assertRegex(w.log(), r"certificate verify failed: unable to get local "
                                          r"issuer certificate")
                self.assertEqual(w.blob_files(), [])
                # A fill's temp file goes away asynchronously (threadpool).
                lab.wait_for(lambda: not w.tmp_files(), 10, what="tmp/ to be cleaned")
            finally:
                w.stop()

    def test_hostname_checked(self):
        # The certificate is for localhost and 127.0.0.1; the URL names 127.0.0.1. Insecure
        # mode skips every check (and warns at start).
        w = self.winch(insecure_skip_verify=True)
        try:
            self.assertIn("insecure_skip_verify is on", w.log())
            r = lab.get(w.hostport, "/v2/%s/manifests/%s" % tuple(IMAGE.split(":")),
                        lab.accept(lab.SKOPEO_ACCEPT))
            self.assertEqual(r.status, 200, r)
        finally:
            w.stop()

    def test_bad_ca_file_stops_winch(self):
        junk = os.path.join(self.pki, "junk.crt")
        with open(junk, "w") as f:
            f.write("not a certificate\n")
        for path, want in ((junk, "cannot load CA file"),
                           ("/nonexistent/ca.crt", "upstreams[0].ca_file: cannot open")):
            cfg = {"upstreams": [{"name": "docker.io", "url": self.up.url, "ca_file": path}]}
            w = lab.Winch([], config=cfg, start=False)
            p = subprocess.run(w.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=20)
            out = p.stdout.decode(errors="replace")
            self.assertNotEqual(p.returncode, 0, out)
            self.assertIn(want, out)


class UpstreamTlsBasicAuth(TlsBase):
    """winch -> https docker-registry with htpasswd Basic auth. Needs the upstream auth layer
    (Basic credentials from username + password_file)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        lab.require("htpasswd")
        line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                              stdout=subprocess.PIPE).stdout.decode().strip()
        cls.htpasswd = os.path.join(cls.pki, "htpasswd")
        with open(cls.htpasswd, "w") as f:
            f.write(line + "\n")
        cls.pwfile = os.path.join(cls.pki, "password")
        with open(cls.pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        cls.up = TlsRegistry(cls.cert, cls.key, cls.ca, htpasswd=cls.htpasswd,
                             name="tls-auth-upstream")

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def winch(self, **upstream):
        cfg = {"upstreams": [dict({"name": "docker.io", "url": self.up.url,
                                   "ca_file": self.ca}, **upstream)]}
        return lab.Winch([], config=cfg)

    def test_registry_wants_auth(self):
        # Without credentials the registry says 401, and so does winch (not 502).
        w = self.winch()
        try:
            r = lab.get(w.hostport, "/v2/%s/manifests/%s" % tuple(IMAGE.split(":")),
                        lab.accept(lab.SKOPEO_ACCEPT))
            self.assertIn(r.status, (401, 403), r)
        finally:
            w.stop()

    def test_pull_with_basic_auth(self):
        w = self.winch(username=USER, password_file=self.pwfile)
        try:
            for label, ref in (("busybox", IMAGE), ("range16", BIG_IMAGE)):
                direct = self.direct_copy("auth-" + label, ref, self.up.direct_hostport,
                                          ["--src-creds", "%s:%s" % (USER, PASSWORD)])
                mine = os.path.join(self.out, "winch-auth-" + label)
                lab.skopeo_copy("docker://%s/%s" % (w.hostport, ref), "dir:" + mine)
                self.assertSameDirs(direct, mine)
            self.assertIn("(with credentials)", w.log())
            self.assertNoSecret(w)
        finally:
            w.stop()

    def test_wrong_password(self):
        bad = os.path.join(self.pki, "bad-password")
        with open(bad, "w") as f:
            f.write("not-the-password\n")
        w = self.winch(username=USER, password_file=bad)
        try:
            r = lab.get(w.hostport, "/v2/%s/manifests/%s" % tuple(IMAGE.split(":")),
                        lab.accept(lab.SKOPEO_ACCEPT))
            self.assertIn(r.status, (401, 403, 502), r)
            self.assertEqual(w.blob_files(), [])
            self.assertNotIn("not-the-password", w.log())
        finally:
            w.stop()


class ListenerTls(TlsBase):
    """clients -> winch's TLS listener -> plain seeded registry."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.up = lab.seeded_registry(count=False, name="plain-upstream")

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def start(self, plain=True):
        cfg = {"tls_listen": "127.0.0.1:0", "tls_cert": self.cert, "tls_key": self.key,
               "upstreams": [{"name": "docker.io", "url": self.up.url}]}
        if plain:
            w = lab.Winch([], config=cfg)
        else:
            cfg["listen"] = ""
            w = WinchNoPlainArgs([], config=cfg)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+) \(tls\)", w.log())
        self.assertIsNotNone(m, w.log())
        w.tls_port = int(m.group(1))
        return w

    def test_both_listeners(self):
        w = self.start()
        try:
            self.assertNotEqual(w.port, w.tls_port)
            # The plain listener's line comes first (harnesses take the first one).
            first = re.search(r"listening on 127\.0\.0\.1:(\d+)", w.log())
            self.assertEqual(int(first.group(1)), w.port)
            st, _, body = tls_get(w.tls_port, "/v2/", self.ca)
            self.assertEqual(st, 200, body)
            self.assertEqual(lab.get(w.hostport, "/v2/").status, 200)
            # skopeo over TLS, verifying with the test CA: byte-identical to a direct copy.
            for label, ref in (("busybox", IMAGE), ("range16", BIG_IMAGE)):
                direct = os.path.join(self.out, "plain-direct-" + label)
                if not os.path.isdir(direct):
                    lab.skopeo_copy("docker://%s/%s" % (self.up.direct_hostport, ref),
                                    "dir:" + direct)
                mine = os.path.join(self.out, "via-tls-listener-" + label)
                lab.skopeo(["copy", "--quiet", "--src-cert-dir", self.cert_dir,
                            "docker://127.0.0.1:%d/%s" % (w.tls_port, ref), "dir:" + mine])
                self.assertSameDirs(direct, mine)
            # Again, now from winch's cache (files go out through pread + SSL_write).
            mine2 = os.path.join(self.out, "via-tls-listener-range16-warm")
            lab.skopeo(["copy", "--quiet", "--src-cert-dir", self.cert_dir,
                        "docker://127.0.0.1:%d/%s" % (w.tls_port, BIG_IMAGE), "dir:" + mine2])
            self.assertSameDirs(os.path.join(self.out, "plain-direct-range16"), mine2)
            # curl verifies too.
            lab.require("curl")
            p = subprocess.run(["curl", "-sS", "--cacert", self.ca, "-o", "/dev/null",
                                "-w", "%{http_code}", "https://localhost:%d/v2/" % w.tls_port],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            self.assertEqual(p.stdout.decode(), "200")
            # Without the CA the client refuses winch's certificate.
            with self.assertRaises(ssl.SSLError):
                tls_get(w.tls_port, "/v2/", None)
        finally:
            w.stop()

    def test_tls_only_and_plain_client(self):
        w = self.start(plain=False)
        try:
            self.assertEqual(w.port, w.tls_port)
            self.assertNotRegex(w.log(), r"listening on [^ ]+, cache")  # no plain listener
            st, _, _ = tls_get(w.tls_port, "/v2/", self.ca)
            self.assertEqual(st, 200)
            # Plain HTTP to the TLS port: no HTTP answer, the connection just ends.
            with socket.create_connection((lab.LOOPBACK, w.tls_port), timeout=10) as s:
                s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                self.assertFalse(data.startswith(b"HTTP/"), data)
            # winch is still fine.
            st, _, _ = tls_get(w.tls_port, "/v2/", self.ca)
            self.assertEqual(st, 200)
        finally:
            w.stop()

    def test_bad_key_stops_winch(self):
        make_leaf(self.pki, "other-ca", "stranger")
        cfg = {"tls_listen": "127.0.0.1:0", "tls_cert": self.cert,
               "tls_key": os.path.join(self.pki, "stranger.key"),
               "upstreams": [{"name": "docker.io", "url": self.up.url}]}
        w = lab.Winch([], config=cfg, start=False)
        p = subprocess.run(w.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=20)
        out = p.stdout.decode(errors="replace")
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn("tls_key", out)
        self.assertIn("mismatch", out)


if __name__ == "__main__":
    lab.main()
