#!/usr/bin/python3
"""winch nodes behind a real HAProxy configured from deploy/haproxy/haproxy.cfg:
  - 8 concurrent clients pull the same cold 3-layer image through haproxy in front of 3 nodes:
    the upstream (a real docker-registry) sees one GET per blob and one fetch of the manifest in
    total; the blobs asked with ?ns= or a /v2/docker.io/ prefix land on the same nodes (nothing
    more upstream);
  - the same layer pulled (skopeo) under two repository names is fetched upstream once;
  - kill -9 of the node owning a big blob while a client pulls it: the client resumes with Range
    through haproxy, gets the rest from the next node of the ring, and the bytes are right; the
    killed node restarts with a sound store and owns its keys again;
  - a 4th node added to the ring: the share of cached blobs that become misses is measured (and
    must be near 1/4, far from the ~3/4 a modulo hash would move);
  - X-Forwarded-For: a client on 127.0.0.5 that claims another address through haproxy is
    logged by every node (text and JSON access lines) as 127.0.0.5, via haproxy, with the
    node's name; the header from an untrusted peer is ignored; several lines, ports, IPv6,
    garbage and a huge value from the trusted peer."""

import collections
import concurrent.futures
import json
import os
import random
import threading
import time

import cluster
import lab


def node_of(resp_or_stream):
    return resp_or_stream.header("X-Winch-Node")


class ClusterRealUpstream(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.seed = lab.seeded()["images"]
        cls.up = lab.seeded_registry()
        # haproxy reaches the nodes from 127.0.0.1: its X-Forwarded-For names the client. One
        # node logs JSON, the others text.
        cls.nodes = [lab.Winch([("docker.io", cls.up.url)],
                               config=dict({"node_name": "winch%d" % i,
                                            "trusted_proxies": ["127.0.0.1"]},
                                           **({"log_format": "json"} if i == 3 else {})),
                               name="winch%d" % i, log_level="info") for i in (1, 2, 3)]
        cls.hap = cluster.Haproxy([("winch%d" % (i + 1), w.hostport)
                                   for i, w in enumerate(cls.nodes)])

    @classmethod
    def tearDownClass(cls):
        cls.hap.stop()
        for w in cls.nodes:
            w.stop()
        cls.up.stop()

    def upstream_table(self):
        return collections.Counter((r.method, r.target) for r in self.up.seen())

    def test_1_eight_clients_one_upstream_fetch(self):
        img = self.seed["big"]
        repo, tag = img["repo"], img["tag"]
        mpath = "/v2/%s/manifests/%s" % (repo, tag)
        n = 8
        barrier = threading.Barrier(n)
        results = [None] * n
        served = [None] * n

        def client(i):
            try:
                barrier.wait(10)
                r = lab.get(self.hap.hostport, mpath, lab.accept(lab.SKOPEO_ACCEPT))
                if r.status != 200:
                    raise AssertionError("manifest: %r" % r)
                m = r.json()
                blobs = [m["config"]["digest"]] + [x["digest"] for x in m["layers"]]
                got, nodes = {}, {}
                # Each client walks the blobs in its own order, as parallel pulls do.
                order = list(blobs)
                random.Random(i).shuffle(order)
                for d in order:
                    s = lab.Stream(self.hap.hostport, "/v2/%s/blobs/%s" % (repo, d), timeout=300)
                    try:
                        s.read_all()
                        got[d] = (s.status, s.digest(), s.received)
                        nodes[d] = node_of(s)
                    finally:
                        s.close()
                results[i] = (node_of(r), got, r.header("Docker-Content-Digest"))
                served[i] = nodes
            except Exception as e:  # noqa: BLE001 - reported below
                results[i] = e

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        elapsed = time.monotonic() - t0
        for i, res in enumerate(results):
            self.assertNotIsInstance(res, Exception, "client %d: %r" % (i, res))
            self.assertEqual(len(res[1]), len(img["layers"]) + 1, "client %d: blobs" % i)
            for d, (status, dig, size) in res[1].items():
                self.assertEqual((status, dig), (200, d), "client %d" % i)
                if d in img["blobs"]:
                    self.assertEqual(size, img["blobs"][d]["size"], "client %d: size" % i)
        # Every client was served each blob by the same node: the digest decides.
        for d in results[0][1]:
            owners = set(s[d] for s in served)
            self.assertEqual(len(owners), 1, "blob %s served by %s" % (d, owners))
        table = self.upstream_table()
        lab.log("8 clients, cold %s through haproxy + 3 nodes: %.1fs; upstream saw %s" % (
            repo, elapsed, sorted(table.items())))
        # Exactly what the upstream saw, in total for the 8 clients and 3 nodes: the node that
        # owns the tag asked HEAD by tag (the digest) then GET by digest; the node of each blob
        # one GET. Nothing else (no second fetch anywhere, no confirmation HEAD).
        mdigest = results[0][2]
        want = collections.Counter({("HEAD", mpath): 1,
                                    ("GET", "/v2/%s/manifests/%s" % (repo, mdigest)): 1})
        for d in results[0][1]:
            want[("GET", "/v2/%s/blobs/%s" % (repo, d))] = 1
        self.assertEqual(table, want, "upstream requests")
        node_busy = collections.Counter(o for s in served for o in s.values())
        lab.log("blob owners: %s" % dict(node_busy))

        # The same blobs asked with ?ns= and a /v2/docker.io/ prefix: same keys, same nodes,
        # nothing upstream.
        before = self.up.count()
        for d in results[0][1]:
            for path in ("/v2/%s/blobs/%s?ns=docker.io" % (repo, d),
                         "/v2/docker.io/%s/blobs/%s" % (repo, d)):
                s = lab.Stream(self.hap.hostport, path)
                try:
                    s.read_all()
                    self.assertEqual((s.status, s.digest()), (200, d), path)
                    self.assertEqual(node_of(s), served[0][d], path)
                    # The node names itself in Cache-Status (config node_name).
                    self.assertEqual(s.header("Cache-Status"), "%s; hit" % served[0][d], path)
                finally:
                    s.close()
        self.assertEqual(self.up.count(), before, "ns/prefix blob requests went upstream")

    def test_2_same_layer_two_repositories(self):
        a, b = self.seed["busybox"], self.seed["busybox-tools"]
        shared = sorted(set(a["layers"]) & set(b["layers"]))
        self.assertTrue(shared, "the seed images share a layer")
        out = lab.tmpdir("winch-cluster-skopeo-")
        lab.skopeo_copy("docker://%s/%s:%s" % (self.hap.hostport, a["repo"], a["tag"]),
                        "dir:" + os.path.join(out, "a"))
        lab.skopeo_copy("docker://%s/%s:%s" % (self.hap.hostport, b["repo"], b["tag"]),
                        "dir:" + os.path.join(out, "b"))
        table = self.upstream_table()
        for d in shared:
            gets = sum(v for (m, t), v in table.items() if m == "GET" and t.endswith("/" + d))
            heads = sum(v for (m, t), v in table.items() if m == "HEAD" and t.endswith("/" + d))
            lab.log("shared layer %s: upstream GETs %d, HEADs %d" % (d[:19], gets, heads))
            self.assertEqual(gets, 1, "upstream GETs of the shared layer: %s" % table)
            # global blob scope (anonymous upstream): no confirmation HEAD either.
            self.assertEqual(heads, 0, "upstream HEADs of the shared layer: %s" % table)
        for d in shared:
            self.assertEqual(lab.file_digest(os.path.join(out, "b", d.split(":")[1])), d)

    def test_3_kill_owner_mid_pull(self):
        img = self.seed["big"]
        layer = max(img["layers"], key=lambda d: img["blobs"][d]["size"])
        size = img["blobs"][layer]["size"]
        # Cached on its owner since test 1 or not: the owner dies while a client reads it.
        path = "/v2/%s/blobs/%s" % (img["repo"], layer)
        s = lab.Stream(self.hap.hostport, path, timeout=120)
        self.assertEqual(s.status, 200)
        owner = node_of(s)
        first = s.read(20 << 20)
        victim = self.nodes[int(owner[-1]) - 1]
        # Keep haproxy from noticing through its health check, so that the resume below must
        # take the retry-on conn-failure + redispatch path (the window before a check fails).
        self.hap.command("disable health winch/%s" % owner)
        victim.kill()
        t_kill = time.monotonic()
        rest = b""
        try:
            while True:
                b = s.resp.read(1 << 20)
                if not b:
                    break
                rest += b
        except OSError:
            pass
        s.close()
        got = first + rest
        self.assertLess(len(got), size, "the kill did not cut the stream (%d of %d bytes)" % (
            len(got), size))
        # Resume at once (before the health check notices): haproxy's connect to the dead node
        # fails, retry-on conn-failure + redispatch take the next node of the ring.
        r = lab.get(self.hap.hostport, path, [("Range", "bytes=%d-" % len(got))], timeout=300)
        t_resume = time.monotonic() - t_kill
        self.assertStatus(r, 206, "Range resume through haproxy")
        self.assertEqual(r.header("Content-Range"), "bytes %d-%d/%d" % (len(got), size - 1, size))
        new_owner = node_of(r)
        self.assertNotEqual(new_owner, owner)
        self.assertEqual(lab.sha256_digest(got + r.body), layer, "resumed bytes differ")
        # "no check": in the ring (up), its health check off.
        self.assertEqual(self.hap.states()[owner], "no check", "haproxy took the node out")
        # haproxy's log shows the redispatch: the retries field of the 206 reads "+1".
        line = [x for x in self.hap.log().splitlines() if '" 206 ' not in x and " 206 " in x
                and layer in x][-1]
        self.assertRegex(line, r" \d+/\d+/\d+/\d+/\+\d+ ", "redispatch in %s" % line)
        self.hap.command("enable health winch/%s" % owner)
        lab.log("killed %s after %d MiB of %d MiB; resume from %s in %.2fs" % (
            owner, len(got) >> 20, size >> 20, new_owner, t_resume))
        # The killed node restarts with a sound store and gets its keys back.
        self.assertEqual(victim.verify_store(), [], "store of the killed node")
        victim.restart()
        self.assertEqual(victim.verify_store(), [], "store after restart")
        self.hap.command("set server winch/%s addr %s port %d" % (owner, lab.LOOPBACK,
                                                                  victim.port))
        self.hap.wait_states({owner: "UP"}, 30)
        st, dig, n = lab.fetch_blob_digest(self.hap.hostport, path)
        self.assertEqual((st, dig, n), (200, layer, size))
        s = lab.Stream(self.hap.hostport, path)
        self.assertEqual(node_of(s), owner, "the restarted node owns its key again")
        s.read_all()
        s.close()
        self.assertEqual(victim.tmp_files(), [], "temporary files left after the restart")

    def access_line(self, node, target):
        """The access line of target in node's log, as a dict (JSON) or a str (text)."""
        def find():
            for line in node.log().splitlines():
                if line.startswith("{"):
                    e = json.loads(line)
                    if e.get("msg") == "access" and e.get("target") == target:
                        return e
                elif " GET %s 200 " % target in line:
                    return line
            return None
        return lab.wait_for(find, 10, what="access line of %s in %s" % (target, node.name))

    def assertClient(self, node, target, client, via, name):
        e = self.access_line(node, target)
        if isinstance(e, dict):
            self.assertEqual((e["peer"], e.get("via"), e["node"]), (client, via, name), e)
        else:
            want = " peer=%s%s node=%s " % (client, " via=" + via if via else "", name)
            self.assertIn(want, e)

    def test_4_forwarded_for(self):
        client = "127.0.0.5"
        # /v2/?ns=K hashes on K (path + ns): a few keys reach every node.
        target = {}
        for k in range(200):
            path = "/v2/?ns=xff-%d" % k
            r = lab.get(self.hap.hostport, path, [("X-Forwarded-For", "6.6.6.6")], source=client)
            self.assertStatus(r, 200, path)
            target.setdefault(node_of(r), path)
            if len(target) == 3:
                break
        self.assertEqual(sorted(target), ["winch1", "winch2", "winch3"])
        for i, node in enumerate(self.nodes):
            name = "winch%d" % (i + 1)
            # haproxy drops what the client claims (del-header) and names the client itself.
            self.assertClient(node, target[name], client, "127.0.0.1", name)
            self.assertNotIn("6.6.6.6", node.log())
        text, js = self.nodes[0], self.nodes[2]
        for node in (text, js):
            name = node.name
            # An untrusted peer's X-Forwarded-For is ignored.
            r = lab.get(node.hostport, "/v2/?direct=1", [("X-Forwarded-For", "203.0.113.1")],
                        source="127.0.0.7")
            self.assertStatus(r, 200)
            self.assertClient(node, "/v2/?direct=1", "127.0.0.7", None, name)
            # From the trusted peer: several lines, ports, IPv6, garbage left of the client.
            cases = [
                ("/v2/?lines=2", [("X-Forwarded-For", "6.6.6.6"),
                                  ("X-Forwarded-For", "garbage, [2001:db8::5]:443 , 127.0.0.1")],
                 "2001:db8::5"),
                ("/v2/?port=1", [("X-Forwarded-For", "198.51.100.2:5555")], "198.51.100.2"),
                # Garbage right of any address: the trusted peer is all winch can vouch for.
                ("/v2/?garbage=1", [("X-Forwarded-For", "198.51.100.3, unknown")], None),
                # 40 lines: the last ones are read.
                ("/v2/?many=1", [("X-Forwarded-For", "10.0.0.%d" % j) for j in range(39)] +
                 [("X-Forwarded-For", "198.51.100.40")], "198.51.100.40"),
                # A 20 KB value (the head bound is 32 KiB).
                ("/v2/?huge=1", [("X-Forwarded-For", "6.6.6.6, " * 2200 + "198.51.100.41")],
                 "198.51.100.41"),
            ]
            for path, headers, want in cases:
                r = lab.get(node.hostport, path, headers)
                self.assertStatus(r, 200, path)
                if want:
                    self.assertClient(node, path, want, "127.0.0.1", name)
                else:
                    self.assertClient(node, path, "127.0.0.1", None, name)
            self.assertNotIn("6.6.6.6", node.log())


class AddNode(lab.TestCase):
    """Consistent hashing: a 4th node takes ~1/4 of the keys; the rest stay cached."""

    N = 1200

    def test_add_fourth_node(self):
        fake = lab.FakeUpstream()
        rnd = random.Random(14)
        digests = [fake.add_blob(rnd.randbytes(64) + b"%d" % i) for i in range(self.N)]
        nodes = [lab.Winch([("docker.io", fake.url)], name="winch%d" % i, log_level="info")
                 for i in (1, 2, 3, 4)]
        names = [("winch%d" % (i + 1), w.hostport) for i, w in enumerate(nodes)]
        hap = cluster.Haproxy(names[:3])

        def pull_all():
            def one(d):
                s = lab.Stream(hap.hostport, "/v2/lab/keys/blobs/%s" % d)
                try:
                    s.read_all()
                    if (s.status, s.digest()) != (200, d):
                        raise AssertionError("%s: %d %s" % (d, s.status, s.digest()))
                    return node_of(s)
                finally:
                    s.close()
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                return dict(zip(digests, ex.map(one, digests)))

        try:
            before = pull_all()
            self.assertEqual(fake.count("GET"), self.N)
            spread3 = collections.Counter(before.values())
            hap.stop()
            hap = cluster.Haproxy(names)
            after = pull_all()
            misses = fake.count("GET") - self.N
            moved = [d for d in digests if after[d] != before[d]]
            spread4 = collections.Counter(after.values())
            share = misses / self.N
            lab.log("4th node: %d of %d cached blobs became misses (%.1f%%); spread with 3 "
                    "nodes %s, with 4 %s" % (misses, self.N, 100 * share, dict(spread3),
                                            dict(spread4)))
            # Exactly the keys that moved were fetched again, and all moved to the new node.
            self.assertEqual(misses, len(moved))
            self.assertEqual(set(after[d] for d in moved), {"winch4"})
            self.assertGreater(share, 0.15)
            self.assertLess(share, 0.35)
        finally:
            hap.stop()
            for w in nodes:
                w.stop()
            fake.stop()


if __name__ == "__main__":
    lab.main()
