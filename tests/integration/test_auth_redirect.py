#!/usr/bin/python3
"""Upstream auth and redirects, end to end with skopeo through winch:

(a) a token-auth upstream, the way Docker Hub works: a small Bearer-token proxy in front of the
    seeded docker-registry answers 401 + `WWW-Authenticate: Bearer realm=...,service=...,
    scope=repository:<name>:pull` to any request without a valid token, and a token server
    (on https, with a test CA) issues tokens as JSON. A pull fetches one token and reuses it;
    the configured credentials reach the https token server as Basic; tokens that arrive
    expired (issued_at in the past) are fetched again instead of reused; no token or password
    ever shows up in winch's log.
(a') the configured credentials never go to a plain-http token realm that is not the upstream
    itself (anyone on the path would read them), from an http upstream or (a downgrade) from an
    https one: the token request goes out anonymous, and the pull is refused.
(b) a redirecting upstream: authorised blob GETs answer 307 to a "CDN" that refuses any request
    carrying Authorization (like pre-signed S3/R2 URLs) and serves the bytes from the real
    registry. Pulls through winch succeed and each blob is fetched from the CDN once.

The helpers here (TokenServer, AuthProxy, Cdn) are small threaded http.server servers on
random loopback ports, stopped at the end of each test class.
"""

import base64
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import ssl
import threading
import time
import unittest
import urllib.parse

import lab
from test_tls import make_ca, make_leaf

SERVICE = "test"
PULL_RE = re.compile(r"^/v2/(.+?)/(manifests|blobs|referrers)/([^/]+)$|^/v2/(.+?)/tags/list$")


def repo_of(path):
    m = PULL_RE.match(path)
    if not m:
        return None, None
    if m.group(4):
        return m.group(4), "tags"
    return m.group(1), m.group(2)


class _Server:
    """A ThreadingHTTPServer on a random loopback port, serving handler_cls (HTTP/1.1); over TLS
    when tls is (certificate file, key file)."""

    def __init__(self, handler_cls, tls=None):
        handler_cls.owner = self
        self.httpd = http.server.ThreadingHTTPServer((lab.LOOPBACK, 0), handler_cls)
        self.httpd.daemon_threads = True
        self.tls = tls
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "%s://%s:%d" % ("https" if self.tls else "http", lab.LOOPBACK, self.port)

    def stop(self, check=True):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner = None

    def log_message(self, fmt, *args):  # quiet
        pass

    def reply(self, status, headers=(), body=b"", head=False):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)


def relay(handler, reg_port, method, path, head):
    """Forwards the request to the registry (without Host/Authorization) and relays the
    answer."""
    conn = http.client.HTTPConnection(lab.LOOPBACK, reg_port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in handler.headers.items():
            if k.lower() not in ("host", "authorization", "connection", "accept-encoding"):
                conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        headers = [(k, v) for k, v in resp.getheaders()
                   if k.lower() not in ("connection", "transfer-encoding", "content-length",
                                        "keep-alive")]
        if head:
            handler.send_response(resp.status)
            for k, v in headers:
                handler.send_header(k, v)
            handler.send_header("Content-Length", resp.getheader("Content-Length", "0"))
            handler.end_headers()
        else:
            handler.reply(resp.status, headers, body)
        return resp.status
    finally:
        conn.close()


class TokenServer(_Server):
    """GET /token?service=..&scope=..: issues a fresh random token per request, as JSON.
    expired=True backdates issued_at so the token is expired on arrival (the test hook for
    expiry); spelling="access_token" uses the OAuth2 field name."""

    def __init__(self, username=None, password=None, tls=None):
        self.valid = set()
        self.requests = []  # (query dict, Authorization header)
        self.expired = False
        self.spelling = "token"
        self.username, self.password = username, password
        super().__init__(TokenHandler, tls)

    def count(self):
        with self.lock:
            return len(self.requests)

    def issued(self):
        with self.lock:
            return set(self.valid)


class TokenHandler(_Handler):
    def do_GET(self):
        ts = self.owner
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        auth = self.headers.get("Authorization", "")
        with ts.lock:
            ts.requests.append((q, auth))
        if u.path != "/token" or q.get("service") != [SERVICE] or not q.get("scope"):
            self.reply(400, body=b'{"details":"bad token request"}')
            return
        if ts.username is not None:
            want = "Basic " + base64.b64encode(
                ("%s:%s" % (ts.username, ts.password)).encode()).decode()
            if auth != want:
                self.reply(401, body=b'{"details":"bad credentials"}')
                return
        tok = "tok-" + secrets.token_hex(24)
        with ts.lock:
            ts.valid.add(tok)
        doc = {ts.spelling: tok, "expires_in": 300}
        if ts.expired:
            doc["issued_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                             time.gmtime(time.time() - 3600))
        else:
            doc["issued_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.reply(200, [("Content-Type", "application/json")], json.dumps(doc).encode())


class AuthProxy(_Server):
    """A registry front that wants Bearer tokens from `tokens` and relays to the real registry.
    redirect_to (a Cdn) makes authorised blob GETs answer 307 there instead."""

    def __init__(self, reg_port, tokens, redirect_to=None, tls=None):
        self.reg_port = reg_port
        self.tokens = tokens
        self.redirect_to = redirect_to
        self.seen = []  # (method, path, had valid token, status)
        super().__init__(ProxyHandler, tls)

    def count(self, pred=lambda s: True):
        with self.lock:
            return sum(1 for s in self.seen if pred(s))


class ProxyHandler(_Handler):
    def serve(self, method):
        px = self.owner
        path = self.path
        upath = path.split("?", 1)[0]
        name, kind = repo_of(upath)
        auth = self.headers.get("Authorization", "")
        ok = auth.startswith("Bearer ") and auth[7:] in px.tokens.issued()
        if not ok:
            scope = ',scope="repository:%s:pull"' % name if name else ""
            err = ',error="invalid_token"' if auth else ""
            chal = 'Bearer realm="%s/token",service="%s"%s%s' % (px.tokens.url, SERVICE, scope,
                                                                 err)
            body = json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                           "message": "authentication required"}]}).encode()
            with px.lock:
                px.seen.append((method, upath, False, 401))
            self.reply(401, [("WWW-Authenticate", chal),
                             ("Content-Type", "application/json; charset=utf-8"),
                             ("Docker-Distribution-API-Version", "registry/2.0")],
                       body, head=method == "HEAD")
            return
        if px.redirect_to is not None and kind == "blobs" and method == "GET":
            loc = "%s/cdn%s?X-Amz-Signature=%s" % (px.redirect_to.url, upath,
                                                   secrets.token_hex(8))
            with px.lock:
                px.seen.append((method, upath, True, 307))
            self.reply(307, [("Location", loc)])
            return
        status = relay(self, px.reg_port, method, path, method == "HEAD")
        with px.lock:
            px.seen.append((method, upath, True, status))

    def do_GET(self):
        self.serve("GET")

    def do_HEAD(self):
        self.serve("HEAD")

    def end_headers(self):
        # Docker Hub's rate-limit headers on every answer, nearly used up.
        self.send_header("RateLimit-Limit", "100;w=21600")
        self.send_header("RateLimit-Remaining", "3;w=21600")
        self.send_header("Docker-RateLimit-Source", "192.0.2.7")
        super().end_headers()


class Cdn(_Server):
    """Serves /cdn/v2/<name>/blobs/<digest>?sig from the registry; any Authorization -> 400."""

    def __init__(self, reg_port):
        self.reg_port = reg_port
        self.seen = []  # (path, had Authorization, status)
        super().__init__(CdnHandler)

    def blob_count(self, digest):
        with self.lock:
            return sum(1 for p, _a, st in self.seen if p.endswith("/" + digest) and st == 200)

    def with_auth(self):
        with self.lock:
            return [p for p, a, _st in self.seen if a]


class CdnHandler(_Handler):
    def do_GET(self):
        cdn = self.owner
        upath = self.path.split("?", 1)[0]
        had = "Authorization" in self.headers
        if had or not upath.startswith("/cdn/v2/") or "X-Amz-Signature=" not in self.path:
            with cdn.lock:
                cdn.seen.append((upath, had, 400))
            self.reply(400, [("Content-Type", "application/xml")],
                       b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                       b"allowed</Message></Error>")
            return
        status = relay(self, cdn.reg_port, "GET", upath[len("/cdn"):], False)
        with cdn.lock:
            cdn.seen.append((upath, had, status))


def manifest_digest(d):
    with open(os.path.join(d, "manifest.json"), "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def blob_digests(d):
    """Digests of the config and layers in a skopeo dir: copy."""
    with open(os.path.join(d, "manifest.json")) as f:
        m = json.load(f)
    return [m["config"]["digest"]] + [x["digest"] for x in m["layers"]]


_pki = None


def pki():
    """A test CA and a certificate for localhost/127.0.0.1 it signed: (ca.crt, (crt, key))."""
    global _pki
    if _pki is None:
        d = lab.tmpdir("winch-auth-pki-")
        make_ca(d, "ca")
        make_leaf(d, "ca", "server")
        _pki = (os.path.join(d, "ca.crt"),
                (os.path.join(d, "server.crt"), os.path.join(d, "server.key")))
    return _pki


def password_file(password):
    work = lab.tmpdir("winch-auth-")
    pwfile = os.path.join(work, "password")
    with open(pwfile, "w") as f:
        f.write(password + "\n")
    os.chmod(pwfile, 0o600)
    return pwfile


class TokenAuthUpstream(lab.TestCase):
    USER, PASSWORD = "winch-bot", "s3cret-" + secrets.token_hex(6)

    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.reg = lab.seeded_registry(count=False)
        ca, tls = pki()
        # The token server on https: the configured credentials may go there.
        cls.tokens = TokenServer(cls.USER, cls.PASSWORD, tls=tls)
        cls.proxy = AuthProxy(cls.reg.port, cls.tokens)
        cls.winch = lab.Winch([], config={
            "upstreams": [{"name": "docker.io", "url": cls.proxy.url, "username": cls.USER,
                           "password_file": password_file(cls.PASSWORD), "ca_file": ca}],
        })
        cls.out = lab.tmpdir("winch-auth-out-")

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.proxy.stop()
        cls.tokens.stop()
        cls.reg.stop()

    def pull(self, ref, label):
        dest = os.path.join(self.out, label)
        lab.skopeo_copy("docker://%s/%s" % (self.winch.hostport, ref), "dir:" + dest)
        direct = os.path.join(self.out, label + "-direct")
        lab.skopeo_copy("docker://%s/%s" % (self.reg.direct_hostport, ref), "dir:" + direct)
        self.assertEqual(lab.compare_dirs(direct, dest), [], "%s through winch" % ref)
        return dest

    def test_1_one_token_per_pull(self):
        t0 = self.tokens.count()
        u0 = self.proxy.count(lambda s: s[3] == 401)
        dest = self.pull("lab/busybox-oci:1.36", "oci")
        self.assertEqual(manifest_digest(dest), self.data["images"]["busybox"]["digest"])
        self.assertEqual(self.tokens.count() - t0, 1, "token requests for one pull: %s" %
                         self.tokens.requests[t0:])
        self.assertEqual(self.proxy.count(lambda s: s[3] == 401) - u0, 1,
                         "401s: only the first request lacks a token")
        q, auth = self.tokens.requests[t0]
        self.assertEqual(q.get("scope"), ["repository:lab/busybox-oci:pull"])
        want = "Basic " + base64.b64encode(
            ("%s:%s" % (self.USER, self.PASSWORD)).encode()).decode()
        self.assertEqual(auth, want, "the configured credentials go to the https token server")
        # Authorised upstream requests: manifest and every blob, each once.
        ok = self.proxy.count(lambda s: s[2] and s[1].startswith("/v2/lab/busybox-oci/"))
        self.assertGreaterEqual(ok, 3)

    def test_2_expired_tokens_are_fetched_again(self):
        """Tokens that arrive already expired serve the request they were fetched for but are
        never reused: every new request starts with a 401 and a new token fetch."""
        self.tokens.expired = True
        self.tokens.spelling = "access_token"
        try:
            t0 = self.tokens.count()
            u0 = self.proxy.count(lambda s: s[3] == 401)
            # An image whose blobs no other test pulls: manifest, config and layer all come
            # from the upstream.
            self.pull("lab/range16:v1", "range16")
            fetched = self.tokens.count() - t0
            denied = self.proxy.count(lambda s: s[3] == 401) - u0
        finally:
            self.tokens.expired = False
            self.tokens.spelling = "token"
        # Manifest, then config and layer (concurrent 401s may share one fetch).
        self.assertGreaterEqual(fetched, 2, "an expired token was reused")
        self.assertGreaterEqual(denied, fetched)
        # Fresh tokens are reused again.
        t1 = self.tokens.count()
        self.pull("library/busybox:1.36", "v2s2")
        self.assertEqual(self.tokens.count() - t1, 1)

    def test_3_no_secrets_in_the_log(self):
        if not self.tokens.count():
            self.pull("lab/busybox-oci:1.36", "oci-log")
        text = self.winch.log()
        self.assertNotIn(self.PASSWORD, text)
        self.assertNotIn(base64.b64encode(("%s:%s" % (self.USER, self.PASSWORD)).encode())
                         .decode(), text)
        for tok in self.tokens.issued():
            self.assertNotIn(tok, text, "a token is in winch's log")
        self.assertIn("rate limit nearly used up", text)


class PlainHttpRealm(lab.TestCase):
    """A token server on plain http at another origin than the upstream: it asks for the
    credentials, and must never get them, whether the upstream is http or https."""

    USER, PASSWORD = "winch-bot", "s3cret-" + secrets.token_hex(6)

    @classmethod
    def setUpClass(cls):
        cls.reg = lab.seeded_registry(count=False)
        cls.tokens = TokenServer(cls.USER, cls.PASSWORD)  # plain http, wants Basic
        cls.pwfile = password_file(cls.PASSWORD)

    @classmethod
    def tearDownClass(cls):
        cls.tokens.stop()
        cls.reg.stop()

    def refused_without_credentials(self, tls):
        ca, cert = pki()
        proxy = AuthProxy(self.reg.port, self.tokens, tls=cert if tls else None)
        up = {"name": "docker.io", "url": proxy.url, "username": self.USER,
              "password_file": self.pwfile}
        if tls:
            up["ca_file"] = ca
        w = lab.Winch([], config={"upstreams": [up]})
        try:
            t0 = self.tokens.count()
            r = lab.get(w.hostport, "/v2/lab/busybox-oci/manifests/1.36",
                        lab.accept(lab.ALL_MANIFEST_ACCEPT))
            self.assertOciError(r, 403, "DENIED", "no token without credentials")
            asked = self.tokens.requests[t0:]
            self.assertGreaterEqual(len(asked), 1, "winch asked the token server")
            self.assertEqual([a for _q, a in asked if a], [],
                             "credentials sent to a plain-http realm")
            self.assertIn("not sending the configured credentials to the token realm "
                          "http://127.0.0.1:%d" % self.tokens.port, w.log())
            self.assertNotIn(self.PASSWORD, w.log())
        finally:
            w.stop()
            proxy.stop()

    def test_http_upstream(self):
        self.refused_without_credentials(tls=False)

    def test_https_upstream_never_downgrades(self):
        self.refused_without_credentials(tls=True)


class RedirectingUpstream(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.reg = lab.seeded_registry(count=False)
        cls.tokens = TokenServer()
        cls.cdn = Cdn(cls.reg.port)
        cls.proxy = AuthProxy(cls.reg.port, cls.tokens, redirect_to=cls.cdn)
        cls.winch = lab.Winch([("docker.io", cls.proxy.url)])
        cls.out = lab.tmpdir("winch-redirect-out-")

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.proxy.stop()
        cls.cdn.stop()
        cls.tokens.stop()
        cls.reg.stop()

    def test_1_blobs_via_cdn_once_without_authorization(self):
        refs = [("lab/busybox-oci:1.36", "busybox"), ("lab/tools/busybox:1.36", "busybox-tools")]
        for ref, image in refs:
            dest = os.path.join(self.out, image)
            lab.skopeo_copy("docker://%s/%s" % (self.winch.hostport, ref), "dir:" + dest)
            direct = os.path.join(self.out, image + "-direct")
            lab.skopeo_copy("docker://%s/%s" % (self.reg.direct_hostport, ref),
                            "dir:" + direct)
            self.assertEqual(lab.compare_dirs(direct, dest), [], ref)
            self.assertEqual(manifest_digest(dest), self.data["images"][image]["digest"])
            for d in blob_digests(dest):
                self.assertEqual(self.cdn.blob_count(d), 1, "CDN fetches of %s" % d)
        self.assertEqual(self.cdn.with_auth(), [], "requests that carried Authorization to "
                                                   "the CDN")
        # Every blob went through a 307 (winch never fetched one from the registry itself).
        relayed = self.proxy.count(lambda s: s[1].split("/")[-2:-1] == ["blobs"] and
                                   s[3] == 200)
        self.assertEqual(relayed, 0)
        self.assertEqual(self.tokens.count(), 2, "one token per repository")

    def test_2_warm_pull_asks_nothing(self):
        ref = "lab/busybox-oci:1.36"
        dest = os.path.join(self.out, "warm")
        lab.skopeo_copy("docker://%s/%s" % (self.winch.hostport, ref), "dir:" + dest)
        before = len(self.cdn.seen)
        dest2 = os.path.join(self.out, "warm2")
        lab.skopeo_copy("docker://%s/%s" % (self.winch.hostport, ref), "dir:" + dest2)
        self.assertEqual(len(self.cdn.seen), before, "CDN requests for cached blobs")
        self.assertEqual(lab.compare_dirs(dest, dest2), [])


if __name__ == "__main__":
    lab.main()
