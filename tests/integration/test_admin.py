#!/usr/bin/python3
"""The admin listener and the status page, against the real docker-registry:
  - admin_listen serves /metrics, /healthz, /readyz and /_winch/ and nothing else (404, 405 for
    other methods); the public listener then answers /metrics and /_winch/ with 404 unless
    public_metrics is true, and keeps its health probes; bad admin_listen / public_metrics
    values are refused at start with a message naming the field;
  - the status page in Debian's headless chromium (never reaching beyond 127.0.0.1): it loads,
    the console shows no error, the DOM holds the numbers this test produced (hits, misses,
    bytes saved), and a screenshot is saved as an artifact in the build directory;
  - top images by bytes served (page and /_winch/status.json): two images pulled whole, the
    bigger first with its exact byte count; then a flood of 10,000 distinct repository names
    keeps the table at its bound, the two on top exact, the page marked approximate and fast."""

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

import lab

H = lab.accept


def admin_hostport(w):
    m = re.search(r"admin listener on (127\.0\.0\.1:\d+)", w.log())
    if not m:
        raise AssertionError("no 'admin listener on' line:\n" + w.log())
    return m.group(1)


def artifact_dir():
    d = os.environ.get("WINCH_ARTIFACT_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(lab.WINCH_BIN)), "test-artifacts")
    os.makedirs(d, exist_ok=True)
    return d


class Admin(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.reg = lab.seeded_registry(count=False)
        cls.winch = lab.Winch([("docker.io", cls.reg.url)],
                              config={"admin_listen": "127.0.0.1:0"})
        cls.admin = admin_hostport(cls.winch)

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.reg.stop()

    RESULTS = {"winch; hit": "hit", "winch; fwd=miss; stored": "miss",
               "winch; fwd=miss; collapsed": "coalesced"}

    def pulls(self):
        """A manifest and a blob, each twice: ({result: n} from Cache-Status, bytes saved)."""
        img = self.data["images"]["busybox"]
        w = self.winch.hostport
        acc = H(lab.SKOPEO_ACCEPT)
        got, saved = {}, 0
        paths = ["/v2/%s/manifests/%s" % (img["repo"], img["tag"]),
                 "/v2/%s/blobs/%s" % (img["repo"], img["layers"][0])]
        for path in paths:
            for _ in range(2):
                r = lab.get(w, path, acc)
                self.assertStatus(r, 200, path)
                res = self.RESULTS[r.header("Cache-Status")]
                got[res] = got.get(res, 0) + 1
                if res != "miss":
                    saved += len(r.body)
                # A fill commits after its client has the last byte; a request before that
                # joins it (coalesced, still saved bandwidth).
                lab.wait_for(lambda: re.search(rb"^winch_fills_in_flight 0$",
                                               lab.get(self.admin, "/metrics").body, re.M),
                             20, what="the fill to end")
        self.assertEqual(got.get("miss"), 2, got)
        return got, saved

    def test_admin_listener(self):
        w, a = self.winch.hostport, self.admin
        _, saved = self.pulls()
        r = lab.get(a, "/metrics")
        self.assertStatus(r, 200, "admin /metrics")
        fams = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
        cache_bytes = sum(s.value for s in fams["winch_served_bytes"].samples
                          if s.name == "winch_served_bytes_total"
                          and s.labels.get("source") == "cache")
        self.assertEqual(cache_bytes, saved)
        for path in ("/healthz", "/readyz", "/_winch/", "/_winch"):
            self.assertStatus(lab.get(a, path), 200, "admin " + path)
        # Only the operator's endpoints on the admin listener; read-only.
        for path in ("/v2/", "/", "/v2/library/busybox/manifests/latest", "/metricsx"):
            self.assertStatus(lab.get(a, path), 404, "admin " + path)
        self.assertStatus(lab.request(a, "POST", "/metrics", body=b"x"), 405, "admin POST")
        # The public listener: no /metrics or status page without public_metrics.
        self.assertStatus(lab.get(w, "/metrics"), 404, "public /metrics")
        self.assertStatus(lab.get(w, "/_winch/"), 404, "public /_winch/")
        self.assertStatus(lab.get(w, "/healthz"), 200, "public /healthz")
        self.assertStatus(lab.get(w, "/v2/"), 200, "public /v2/")

    def test_public_metrics(self):
        w2 = lab.Winch([("docker.io", self.reg.url)], name="winch-public",
                       config={"admin_listen": "127.0.0.1:0", "public_metrics": True})
        try:
            self.assertStatus(lab.get(w2.hostport, "/metrics"), 200, "public /metrics")
            self.assertStatus(lab.get(w2.hostport, "/_winch/"), 200, "public /_winch/")
            self.assertStatus(lab.get(admin_hostport(w2), "/metrics"), 200, "admin /metrics")
        finally:
            w2.stop()

    def test_bad_config_refused(self):
        port = lab.free_port()
        cases = [
            ({"admin_listen": "localhost:5001"}, "admin_listen"),
            ({"admin_listen": "127.0.0.1"}, "admin_listen"),
            ({"admin_listen": 5001}, "admin_listen"),
            ({"admin_listen": "127.0.0.1:99999"}, "admin_listen"),
            ({"admin_listen": "127.0.0.1:%d" % port}, "same address as listen"),
            ({"admin_listen": "127.0.0.1:0", "public_metrics": "yes"}, "public_metrics"),
        ]
        d = lab.tmpdir()
        for i, (cfg, want) in enumerate(cases):
            path = os.path.join(d, "c%d.json" % i)
            with open(path, "w") as f:
                json.dump(cfg, f)
            p = subprocess.run([lab.WINCH_BIN, "serve", "--listen", "127.0.0.1:%d" % port,
                                "--cache-dir", os.path.join(d, "cache"), "--upstream",
                                "docker.io=" + self.reg.url, "--config", path],
                               capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
            out = (p.stdout + p.stderr).decode(errors="replace")
            self.assertNotEqual(p.returncode, 0, "%s accepted:\n%s" % (cfg, out))
            self.assertIn(want, out, cfg)
            self.assertNotIn("listening on", out, cfg)

    def test_status_page_in_chromium(self):
        lab.require("chromium")
        got, saved = self.pulls_fresh()
        url = "http://%s/_winch/" % self.admin
        prof = lab.tmpdir("winch-chromium-")
        shot = os.path.join(artifact_dir(), "status-page.png")
        if os.path.exists(shot):
            os.unlink(shot)
        # Loopback only: no proxy, every name unresolvable but 127.0.0.1, no background
        # fetches (component updates, safe browsing, sync).
        base = ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--no-proxy-server",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--user-data-dir=" + prof, "--no-first-run", "--disable-sync",
                "--disable-background-networking", "--disable-component-update",
                "--disable-default-apps", "--disable-extensions", "--enable-logging=stderr",
                "--v=0", "--window-size=1200,900"]
        dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, timeout=120)
        html = dom.stdout.decode(errors="replace")
        log = dom.stderr.decode(errors="replace")
        self.assertEqual(dom.returncode, 0, log)
        console = [l for l in log.splitlines() if "CONSOLE" in l or "Uncaught" in l]
        self.assertEqual(console, [], log)
        self.assertIn("<h1>winch", html)
        for res, n in got.items():
            self.assertIn('id="result-%s">%d<' % (res, n), html)
        self.assertIn('id="bytes-saved" data-bytes="%d"' % saved, html)
        # This winch is younger than an hour: the last hour holds everything since start.
        self.assertIn('id="hour-bytes-saved" data-bytes="%d"' % saved, html)
        self.assertIn('id="hour-chart"', html)
        self.assertIn("<svg", html)
        shot_run = subprocess.run(base + ["--screenshot=" + shot, url], capture_output=True,
                                  timeout=120)
        log = shot_run.stderr.decode(errors="replace")
        self.assertEqual(shot_run.returncode, 0, log)
        self.assertEqual([l for l in log.splitlines() if "CONSOLE" in l or "Uncaught" in l], [],
                         log)
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(shot), 5000)
        lab.log("status page screenshot: %s" % shot)
        shutil.rmtree(prof, ignore_errors=True)

    def test_status_fills_and_last_hour(self):
        """A fill held at 1 MiB by the upstream shows in "Fills in progress" with what it has
        received; once done it is gone, and the last hour counts its bytes, fetched and served,
        minute by minute in the chart."""
        fake = lab.FakeUpstream()
        self.addCleanup(fake.stop)
        w = lab.Winch([("docker.io", fake.url)], name="winch-fills",
                      config={"admin_listen": "127.0.0.1:0"})
        self.addCleanup(w.stop)
        admin = admin_hostport(w)
        blob = bytes(range(256)) * (16 << 10)  # 4 MiB
        digest = fake.add_blob(blob)
        path = "/v2/lab/slow/blobs/" + digest
        hold = lab.Fault("stall", after=1 << 20, times=1)
        fake.set_fault(path, hold)
        s = lab.Stream(w.hostport, path, timeout=30)
        self.assertTrue(hold.reached.wait(10), "the upstream never reached the stall")

        def page():
            r = lab.get(admin, "/_winch/")
            self.assertStatus(r, 200, "status page")
            return r.body.decode()

        lab.wait_for(lambda: 'data-bytes="%d"' % (1 << 20) in page(), 10,
                     what="the fill at 1 MiB on the status page")
        html = page()
        self.assertIn('id="fills-table"', html)
        self.assertIn("docker.io/lab/slow@" + digest, html)
        hold.release()
        self.assertEqual(len(s.read_all(keep=True)), len(blob))
        s.close()
        self.assertEqual(lab.fetch_blob_digest(w.hostport, path), (200, digest, len(blob)))
        lab.wait_for(lambda: 'id="fills-none"' in page(), 10, what="no fill in progress")
        html = page()
        self.assertIn('id="hour-bytes-fetched" data-bytes="%d"' % len(blob), html)
        self.assertIn('id="hour-bytes-upstream" data-bytes="%d"' % len(blob), html)
        self.assertIn('id="hour-bytes-saved" data-bytes="%d"' % len(blob), html)
        bars = [int(x) for x in re.findall(r'class="hit"[^>]*data-bytes="(\d+)"', html)]
        self.assertEqual(len(bars), 60)
        self.assertEqual(sum(bars), len(blob))

    def pull_whole(self, hostport, name):
        """GETs a seeded image's manifest and every blob; returns the body bytes received."""
        img = self.data["images"][name]
        r = lab.get(hostport, "/v2/%s/manifests/%s" % (img["repo"], img["tag"]),
                    H([img["media_type"]]))
        self.assertStatus(r, 200, name)
        n = len(r.body)
        self.assertEqual(n, img["size"])
        for digest, b in img["blobs"].items():
            st, got, size = lab.fetch_blob_digest(hostport, "/v2/%s/blobs/%s" % (img["repo"],
                                                                                 digest))
            self.assertEqual((st, got, size), (200, digest, b["size"]))
            n += size
        return n

    def test_top_images_by_bytes(self):
        w = lab.Winch([("docker.io", self.reg.url)], name="winch-top",
                      config={"admin_listen": "127.0.0.1:0",
                              "policy": [{"match": "docker.io/flood/**", "deny": True}]})
        self.addCleanup(w.stop)
        admin = admin_hostport(w)
        small = self.pull_whole(w.hostport, "busybox")
        big = self.pull_whole(w.hostport, "range16")
        self.assertGreater(big, small)

        def status():
            r = lab.get(admin, "/_winch/status.json")
            self.assertStatus(r, 200, "status.json")
            self.assertEqual(r.header("Content-Type"), "application/json")
            return json.loads(r.body)

        # Counted as each request completes, after its last byte left: wait for the last one.
        lab.wait_for(lambda: len(status()["top_images"]["images"]) == 2, 10, what="two images")
        top = status()["top_images"]
        self.assertEqual(top["images"], [
            {"image": "docker.io/lab/range16", "bytes": big, "overcount_max": 0},
            {"image": "docker.io/lab/busybox-oci", "bytes": small, "overcount_max": 0}])
        self.assertFalse(top["approximate"])
        html = lab.get(admin, "/_winch/").body.decode()
        rows = re.findall(r"<tr><td>([^<]+)</td><td data-bytes=\"(\d+)\">",
                          html.split('id="top-images"', 1)[1])
        self.assertEqual(rows[:2], [("docker.io/lab/range16", str(big)),
                                    ("docker.io/lab/busybox-oci", str(small))])
        self.assertNotIn('id="top-images-approx"', html)

        # 10,000 distinct names, each refused by the policy (a body of its own each), over
        # four keep-alive connections.
        errors = []

        def flood(k):
            host, port = w.hostport.rsplit(":", 1)
            c = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                for i in range(k, 10000, 4):
                    c.request("GET", "/v2/flood/r%05d/manifests/v1" % i)
                    r = c.getresponse()
                    r.read()
                    if r.status != 403:
                        errors.append(r.status)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
            finally:
                c.close()

        threads = [threading.Thread(target=flood, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        lab.wait_for(lambda: status()["requests"]["by_result"]["denied"] == 10000, 10,
                     what="10000 refusals counted")
        t0 = time.monotonic()
        top = status()["top_images"]
        r = lab.get(admin, "/_winch/")
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, 1.0, "status.json and the page after the flood")
        self.assertEqual(top["tracked"], 256)
        self.assertGreaterEqual(top["replaced"], 10000 - 256 + 2)
        self.assertTrue(top["approximate"])
        self.assertEqual(len(top["images"]), 10)
        # The two heavy ones never left the table: their counts are still exact.
        self.assertEqual(top["images"][:2], [
            {"image": "docker.io/lab/range16", "bytes": big, "overcount_max": 0},
            {"image": "docker.io/lab/busybox-oci", "bytes": small, "overcount_max": 0}])
        html = r.body.decode()
        self.assertIn('id="top-images-approx"', html)
        self.assertEqual(html.split('id="top-images"', 1)[1].split("</table>")[0].count("<tr>"),
                         11)

    def pulls_fresh(self):
        """pulls() on a winch of its own, so the counts are this test's alone."""
        old, oldadmin = self.winch, self.admin
        w = lab.Winch([("docker.io", self.reg.url)], name="winch-status",
                      config={"admin_listen": "127.0.0.1:0"})
        self.addCleanup(w.stop)
        self.winch, self.admin = w, admin_hostport(w)
        self.addCleanup(self._restore, old, oldadmin)
        return self.pulls()

    def _restore(self, w, a):
        self.winch, self.admin = w, a


if __name__ == "__main__":
    lab.main()
