#!/usr/bin/python3
"""Client groups by the listener a client came in on (issue 11, "client_groups[].listen"),
against the seeded lab/multi index (six platforms, one attestation) in a real docker-registry:
  - two groups with listeners of their own on one winch: a tag request on A's listener
    prefetches A's platform, on B's listener B's (counted per platform upstream), even from a
    source address of a CIDR group (the listener wins); a client of no group on the main
    listener gets the rule's set; B's own path prefix strips on B's listener, another group's
    prefix there is refused; an old client on A's listener gets A's platform manifest; the
    access lines name the group;
  - SIGHUP reload: group B renamed, moved and given another platform takes effect on B's
    listener through a connection opened before the reload; a new group address is reported
    (needs a restart); B removed: its listener serves like the main one, with a warning;
  - connection limits: connections on a group listener count against the same
    max_connections_per_client and max_connections as the main listener's."""

import http.client
import json
import os
import re
import signal
import socket
import time

import lab
from test_platforms import ALL_TYPES, Image, get_from

APPLIED = "reload: configuration applied"


def group_listeners(w):
    """{group name: "host:port"} from the "group NAME listener on HOST:PORT" lines."""
    return dict(re.findall(r"group (\S+) listener on (\S+)", w.log()))


class GroupListeners(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()

    def start(self, config):
        self.up = lab.seeded_registry()
        self.addCleanup(self.up.stop)
        self.winch = lab.Winch([("docker.io", self.up.url)], config=config)
        self.addCleanup(self.winch.stop)
        self.img = Image(self.up, self.data["images"]["multi"]["repo"], "v1")
        self.tag = "/v2/%s/manifests/v1" % self.img.repo
        self.accept = [("Accept", t) for t in ALL_TYPES]

    def fetched(self, platform):
        """Upstream GETs of platform's manifest, config and layers (one number per path)."""
        info = self.img.by_platform[platform]
        paths = [self.img.manifest_path(info["manifest"])]
        paths += [self.img.blob_path(d) for d in self.img.blobs(platform)]
        return [self.up.count("GET", p) for p in paths]

    def wait_prefetched(self, platform, what):
        lab.wait_for(lambda: all(n == 1 for n in self.fetched(platform)) and all(
            os.path.exists(self.winch.blob_path(d)) for d in self.img.blobs(platform)), 30,
            what=what)

    def assert_untouched(self, platforms):
        for plat in platforms:
            self.assertEqual(self.fetched(plat), [0] * len(self.fetched(plat)),
                             "%s was fetched upstream" % plat)
        for d in self.img.attestations:
            self.assertEqual(self.up.count("GET", self.img.manifest_path(d)), 0)

    def access_lines(self, needle):
        return [ln for ln in self.winch.log().splitlines() if needle in ln and " bytes=" in ln]

    def test_two_group_listeners(self):
        self.start({
            "platforms": [{"match": "**", "platforms": ["linux/amd64"], "prefetch": True}],
            "client_groups": [
                {"name": "arm", "listen": "127.0.0.1:0", "platforms": ["linux/arm64"]},
                {"name": "power", "listen": "127.0.0.2:0", "path_prefix": "/power",
                 "platforms": ["linux/ppc64le"]},
                {"name": "edge", "path_prefix": "/edge", "platforms": ["linux/arm/v7"]},
                {"name": "third", "cidrs": ["127.0.0.3/32"], "platforms": ["linux/s390x"]}]})
        gl = group_listeners(self.winch)
        self.assertEqual(set(gl), {"arm", "power"}, self.winch.log())
        self.assertTrue(gl["power"].startswith("127.0.0.2:"), gl)
        self.assertNotIn(self.winch.hostport, gl.values())
        lab.log("group listeners: %s, main %s" % (gl, self.winch.hostport))

        # A's listener: A's platform, nothing else.
        r = lab.get(gl["arm"], self.tag, self.accept)
        self.assertStatus(r, 200, "tag request on arm's listener")
        self.assertEqual(r.header("Docker-Content-Digest"), self.img.index_digest)
        self.wait_prefetched("linux/arm64/v8", "arm64 prefetched for arm's listener")
        self.assert_untouched(["linux/amd64", "linux/ppc64le", "linux/s390x", "linux/arm/v7",
                               "linux/arm/v6"])

        # B's listener, from the address of the CIDR group "third": the listener decides.
        status, _ = get_from("127.0.0.3", gl["power"], self.tag, self.accept)
        self.assertEqual(status, 200)
        self.wait_prefetched("linux/ppc64le", "ppc64le prefetched for power's listener")
        self.assert_untouched(["linux/amd64", "linux/s390x", "linux/arm/v7", "linux/arm/v6"])
        self.assertEqual(self.fetched("linux/arm64/v8"), [1] * len(self.fetched("linux/arm64/v8")))

        # The main listener, a client of no group: the rule's platform.
        r = lab.get(self.winch.hostport, self.tag, self.accept)
        self.assertStatus(r, 200, "tag request on the main listener")
        self.wait_prefetched("linux/amd64", "amd64 (the rule's) prefetched for the main listener")
        self.assert_untouched(["linux/s390x", "linux/arm/v7", "linux/arm/v6"])

        # B's own prefix on B's listener strips; another group's prefix on a group listener is
        # refused (and fetches nothing); a prefix on the main listener still works.
        r = lab.get(gl["power"], "/power" + self.tag, self.accept)
        self.assertStatus(r, 200, "power's prefix on power's listener")
        self.assertEqual(r.header("Docker-Content-Digest"), self.img.index_digest)
        for hp, path in ((gl["arm"], "/edge" + self.tag), (gl["arm"], "/power" + self.tag),
                         (gl["power"], "/edge/v2/")):
            r = lab.get(hp, path, self.accept)
            self.assertOciError(r, 404, "UNSUPPORTED", "%s on %s" % (path, hp))
            self.assertIn(b"this listener is client group", r.body)
        self.assertIn(b"path prefix /power is client group power's; this listener is client "
                      b"group arm's", lab.get(gl["arm"], "/power/v2/", self.accept).body)
        self.assertStatus(lab.get(self.winch.hostport, "/edge/v2/"), 200, "/edge on main")
        time.sleep(0.5)
        self.assert_untouched(["linux/s390x", "linux/arm/v7", "linux/arm/v6"])

        # A client that reads no index, on A's listener: A's platform manifest by tag.
        single = [("Accept", "application/vnd.oci.image.manifest.v1+json")]
        r = lab.get(gl["arm"], self.tag, single)
        want = self.img.by_platform["linux/arm64/v8"]["manifest"]
        self.assertStatus(r, 200, "old client on arm's listener")
        self.assertEqual(r.header("Docker-Content-Digest"), want)
        self.assertEqual(lab.sha256_digest(r.body), want)

        # The log: prefetch by group, and the access lines name the group.
        log = self.winch.log()
        self.assertIn("for linux/arm64 (group arm)", log)
        self.assertIn("for linux/ppc64le (group power)", log)
        self.assertIn("for linux/amd64 (rule)", log)
        # (An access line is written once the answer is sent: wait for the last one.)
        lab.wait_for(lambda: len([ln for ln in self.access_lines("GET " + self.tag + " 200")
                                  if " group=arm " in ln]) == 2, 10,
                     what="the access lines of arm's two tag requests")
        log = self.winch.log()
        self.assertTrue(any(" peer=127.0.0.3 group=power " in ln
                            for ln in self.access_lines("GET " + self.tag + " 200")), log)
        main = [ln for ln in self.access_lines("GET " + self.tag + " 200") if "group=" not in ln]
        self.assertEqual(len(main), 1, "one request of no group:\n" + log)
        refused = self.access_lines("GET /edge" + self.tag + " 404")
        self.assertEqual(len(refused), 1, log)
        self.assertIn(" group=arm ", refused[0])

    def test_reload_moves_groups_by_address(self):
        groups = [
            {"name": "arm", "listen": "127.0.0.1:0", "platforms": ["linux/arm64"]},
            {"name": "power", "listen": "127.0.0.2:0", "platforms": ["linux/ppc64le"]}]
        rule = [{"match": "**", "platforms": ["linux/amd64"], "prefetch": True}]
        self.start({"platforms": rule, "client_groups": groups})
        gl = group_listeners(self.winch)
        host, port = gl["power"].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.addCleanup(conn.close)

        def get(path):
            conn.request("GET", path, headers={"Accept": ", ".join(ALL_TYPES)})
            r = conn.getresponse()
            r.read()
            return r.status

        self.assertEqual(get(self.tag), 200)
        sock = conn.sock
        local = sock.getsockname()
        self.wait_prefetched("linux/ppc64le", "ppc64le for power before the reload")

        # Reordered, B renamed and given s390x, a new group whose address is not open yet.
        path = os.path.join(self.winch.workdir, "config.json")
        new = [{"name": "big-endian", "listen": "127.0.0.2:0", "platforms": ["linux/s390x"]},
               {"name": "arm", "listen": "127.0.0.1:0", "platforms": ["linux/arm64"]},
               {"name": "later", "listen": "127.0.0.4:0", "platforms": ["linux/arm/v6"]}]
        with open(path, "w") as f:
            json.dump({"platforms": rule, "client_groups": new}, f)
        self.sighup(APPLIED)
        log = self.winch.log()
        self.assertIn("reload: the listener on %s is now group big-endian's (was power's)"
                      % gl["power"], log)
        self.assertIn("reload: client_groups[2].listen (127.0.0.4:0, group later) changed in the "
                      "file but needs a restart", log)
        self.assertIn("3 client groups, 0 trusted proxies; 1 field kept until restart", log)
        self.assertNotIn("group later listener on", log)

        # The same connection: the group of B's listener is the renamed one, with its platform.
        self.assertEqual(get(self.tag), 200)
        self.assertIs(conn.sock, sock, "the connection was reopened")
        self.assertEqual(conn.sock.getsockname(), local)
        self.wait_prefetched("linux/s390x", "s390x for big-endian after the reload")
        lab.wait_for(lambda: self.access_lines(" group=big-endian "), 10, what="access line")
        self.assertIn("for linux/s390x (group big-endian)", self.winch.log())
        # A's listener still A's.
        r = lab.get(gl["arm"], self.tag, self.accept)
        self.assertStatus(r, 200, "arm after the reload")
        self.wait_prefetched("linux/arm64/v8", "arm64 for arm after the reload")
        self.assert_untouched(["linux/amd64", "linux/arm/v6", "linux/arm/v7"])

        # B's address dropped from the file: the listener stays, serving like the main one
        # (no group here: the rule's amd64), and the reload says so.
        with open(path, "w") as f:
            json.dump({"platforms": rule, "client_groups": [new[1]]}, f)
        self.sighup(APPLIED)
        self.assertIn("reload: no client group has listen %s any more (it was group "
                      "big-endian's)" % gl["power"], self.winch.log())
        self.assertEqual(get(self.tag), 200)
        self.assertIs(conn.sock, sock)
        self.wait_prefetched("linux/amd64", "the rule's amd64 on the orphaned listener")
        last = self.access_lines("GET " + self.tag + " 200")[-1]
        self.assertNotIn("group=", last)
        self.assert_untouched(["linux/arm/v6", "linux/arm/v7"])

        # And back: the address named again, the listener is that group's again.
        with open(path, "w") as f:
            json.dump({"platforms": rule, "client_groups": groups}, f)
        self.sighup(APPLIED)
        self.assertEqual(get(self.tag), 200)
        lab.wait_for(lambda: " group=power " in self.access_lines("GET " + self.tag)[-1], 10,
                     what="power's access line after the second reload")

    def sighup(self, needle):
        before = self.winch.log().count(needle)
        self.winch.proc.send_signal(signal.SIGHUP)
        lab.wait_for(lambda: self.winch.log().count(needle) > before, 10,
                     what="%r after SIGHUP" % needle)
        self.assertTrue(self.winch.running(), "winch exited on SIGHUP")

    def test_connection_limits_shared(self):
        self.start({"max_connections_per_client": 4, "max_connections": 10,
                    "client_header_timeout_ms": 60000,
                    "client_groups": [{"name": "arm", "listen": "127.0.0.1:0",
                                       "platforms": ["linux/arm64"]}]})
        gl = group_listeners(self.winch)

        def busy(source, hostport):
            """A connection in the middle of a request head: neither idle nor closable."""
            host, port = hostport.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=10,
                                         source_address=(source, 0))
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            self.addCleanup(s.close)
            return s

        def answered(source, hostport, timeout):
            """"ok" (200), "refused" (closed unanswered) or "waits" (no answer in timeout)."""
            host, port = hostport.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=timeout,
                                         source_address=(source, 0))
            try:
                s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = s.recv(64)
                return "ok" if got.startswith(b"HTTP/1.1 200") else "refused" if not got else got
            except socket.timeout:
                return "waits"
            except ConnectionError:
                return "refused"
            finally:
                s.close()

        # One client address: 4 busy connections on the group listener use its whole share,
        # so the main listener refuses it a fifth; another address is still served.
        held = [busy("127.0.0.5", gl["arm"]) for _ in range(4)]
        time.sleep(0.3)
        self.assertEqual(answered("127.0.0.5", self.winch.hostport, 5), "refused",
                         "a fifth connection of 127.0.0.5 on the main listener")
        self.assertIn("127.0.0.5 has max_connections_per_client (4) connections, none idle",
                      self.winch.log())
        self.assertEqual(answered("127.0.0.6", self.winch.hostport, 5), "ok", "another client")
        # The other way round: the main listener's share counts on the group listener.
        held += [busy("127.0.0.7", self.winch.hostport) for _ in range(4)]
        time.sleep(0.3)
        self.assertEqual(answered("127.0.0.7", gl["arm"], 5), "refused",
                         "a fifth connection of 127.0.0.7 on the group listener")
        self.assertEqual(answered("127.0.0.6", gl["arm"], 5), "ok", "another client")
        # max_connections (10): two more busy ones fill it; a new client on either listener
        # waits in the backlog until one of them goes.
        held += [busy("127.0.0.9", gl["arm"]) for _ in range(2)]
        time.sleep(0.3)
        self.assertEqual(answered("127.0.0.8", gl["arm"], 1.5), "waits", "beyond max_connections")
        self.assertEqual(answered("127.0.0.8", self.winch.hostport, 1.5), "waits",
                         "beyond max_connections (main listener)")
        self.assertIn("at the connection limit (10 connections", self.winch.log())
        held.pop(0).close()
        self.assertEqual(answered("127.0.0.8", gl["arm"], 10), "ok", "once one closed")

if __name__ == "__main__":
    lab.main()
