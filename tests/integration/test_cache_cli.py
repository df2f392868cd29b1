#!/usr/bin/python3
"""The cache commands against a real upstream, with a serving winch beside them: ls, df and
inspect checked against the seeded images' known sizes (a multi-arch index, a base layer shared
by two images); prune --dry-run lists exactly what prune removes, and every remaining tag then
pulls with no upstream blob request; rm keeps a shared layer; rm while a slow client reads a
big blob; verify clean, then a flipped byte found, quarantined and refetched."""

import hashlib
import json
import os
import subprocess
import threading

import lab


def winch_cli(cache_dir, *args, check=True):
    p = subprocess.run([lab.WINCH_BIN] + list(args) + ["--cache-dir", cache_dir],
                       capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError("winch %s: exit %d\n%s\n%s" % (args, p.returncode, p.stdout,
                                                           p.stderr))
    return p


def cli_json(cache_dir, *args, check=True):
    p = winch_cli(cache_dir, *(list(args) + ["--json"]), check=check)
    return json.loads(p.stdout), p.returncode


class CacheCli(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.up = lab.seeded_registry()
        cls.winch = lab.Winch([("docker.io", cls.up.url)], config={"tag_ttl_s": 3600})
        cls.out = lab.tmpdir("winch-cachecli-")
        cls.n = 0

    @classmethod
    def tearDownClass(cls):
        cls.winch.stop()
        cls.up.stop()

    def pull(self, ref, extra=()):
        CacheCli.n += 1
        dest = os.path.join(self.out, "p%d" % CacheCli.n)
        lab.skopeo_copy("docker://%s/%s" % (self.winch.hostport, ref), "dir:" + dest, extra)
        return dest

    def img(self, name):
        return self.data["images"][name]

    def image_bytes(self, name):
        """Manifest + config + layers of a single-arch seeded image."""
        i = self.img(name)
        return i["size"] + sum(b["size"] for b in i["blobs"].values())

    def seed_cache(self):
        if getattr(CacheCli, "seeded_cache", False):
            return
        self.pull("lab/busybox-oci:1.36")
        self.pull("lab/tools/busybox:1.36")
        self.pull("library/busybox:1.36")
        self.pull("lab/multi:v1", ["--override-arch", "arm64"])
        # Let the server write its counters and commits.
        lab.wait_for(lambda: [r["pulls"] >= 1 for r in cli_json(self.winch.cache_dir,
                                                                 "ls")[0]] == [True] * 4, 10,
                     what="ls shows four tags, pulled")
        CacheCli.seeded_cache = True

    def test_1_ls_df_inspect(self):
        self.seed_cache()
        rows, _ = cli_json(self.winch.cache_dir, "ls")
        by = {(r["repository"], r["tag"]): r for r in rows}
        bb = by[("lab/busybox-oci", "1.36")]
        self.assertEqual(bb["upstream"], "docker.io")
        self.assertEqual(bb["digest"], self.img("busybox")["digest"])
        self.assertEqual(bb["size"], self.image_bytes("busybox"))
        self.assertEqual(bb["platforms"], ["linux/amd64"])
        self.assertGreaterEqual(bb["pulls"], 1)
        self.assertFalse(bb["pinned"])
        multi = by[("lab/multi", "v1")]
        self.assertEqual(multi["digest"], self.img("multi")["digest"])
        self.assertIn("linux/arm64/v8", multi["platforms"])
        self.assertIn("linux/s390x", multi["platforms"])
        self.assertNotIn("unknown/unknown", multi["platforms"])
        # The table prints too, aligned, one line per tag plus the header.
        table = winch_cli(self.winch.cache_dir, "ls").stdout.splitlines()
        self.assertTrue(table[0].startswith("UPSTREAM"), table)
        self.assertEqual(len(table), 1 + len(rows))
        col = table[0].index("REPOSITORY")
        self.assertTrue(all(line[col - 3:col] == "   " for line in table[1:]), table)
        # A repository filter.
        only, _ = cli_json(self.winch.cache_dir, "ls", "lab/multi")
        self.assertEqual([(r["repository"], r["tag"]) for r in only], [("lab/multi", "v1")])

        df, _ = cli_json(self.winch.cache_dir, "df")
        self.assertEqual(df["tags"], 4)
        # busybox-oci (also tagged as tools/busybox: the same manifest) and library/busybox (a
        # Docker manifest of the same layers) share their blobs: df counts them once and says
        # what sharing saved.
        self.assertEqual(self.img("busybox")["digest"], self.img("busybox-tools")["digest"])
        shared = set(self.img("busybox")["blobs"]) & set(self.img("busybox-v2s2")["blobs"])
        self.assertTrue(shared, "the seeded images share a base layer")
        saved = sum(self.img("busybox")["blobs"][d]["size"] for d in shared)
        self.assertEqual(df["shared_saved"], saved)
        self.assertEqual(df["referenced"] + df["reclaimable"], df["total"])
        files = sum(os.path.getsize(p) for p in self.winch.blob_files())
        self.assertEqual(df["total"], files)

        ins, _ = cli_json(self.winch.cache_dir, "inspect", "lab/multi:v1")
        ins = ins[0]
        self.assertEqual(ins["digest"], self.img("multi")["digest"])
        cached = {p["platform"]: p["cached"] for p in ins["platforms"]}
        self.assertTrue(cached["linux/arm64/v8"])
        self.assertFalse(cached["linux/s390x"])
        complete = {p["platform"]: p["complete"] for p in ins["platforms"]}
        self.assertTrue(complete["linux/arm64/v8"])
        self.assertFalse(complete["linux/s390x"])
        arm = [p for p in ins["platforms"] if p["platform"] == "linux/arm64/v8"][0]["image"]
        self.assertEqual(arm["config"]["architecture"], "arm64")
        self.assertIn("created", arm["config"])
        self.assertIsInstance(arm["config"]["history"], list)
        for layer in arm["layers"]:
            self.assertTrue(layer["cached"])
            self.assertEqual(os.path.getsize(layer["path"]), layer["size"])
        one, _ = cli_json(self.winch.cache_dir, "inspect", "lab/busybox-oci:1.36")
        self.assertEqual([l["digest"] for l in one[0]["layers"]], self.img("busybox")["layers"])
        # Bad and unknown references fail cleanly.
        for bad in ("nosuch/repo:1", "UPPER/case", "a@sha256:00", "x" * 5000):
            p = winch_cli(self.winch.cache_dir, "inspect", bad, check=False)
            self.assertEqual(p.returncode, 1, bad)

    def test_2_prune_dry_run_matches_prune(self):
        self.seed_cache()
        # An unreferenced blob (fetched by digest alone) and a dangling manifest (by digest).
        r16 = self.img("range16")
        lab.fetch_blob_digest(self.winch.hostport,
                              "/v2/lab/range16/blobs/%s" % r16["layers"][0])
        v2 = self.img("multi-docker")["platforms"][0]
        resp = lab.get(self.winch.hostport, "/v2/lab/multi-docker/manifests/%s" % v2["digest"],
                       headers=[("Accept", v2["media_type"])])
        self.assertEqual(resp.status, 200)
        lab.wait_for(lambda: any(r["tag"] is None for r in cli_json(self.winch.cache_dir,
                                                                      "ls")[0]), 10,
                     what="the dangling manifest listed")
        dang, _ = cli_json(self.winch.cache_dir, "ls", "--filter", "dangling=true")
        self.assertEqual([r["digest"] for r in dang], [v2["digest"]])
        dry, _ = cli_json(self.winch.cache_dir, "prune", "--dry-run")
        self.assertTrue(dry["dry_run"])
        got = sorted(i["digest"] for i in dry["items"])
        self.assertEqual(got, sorted([r16["layers"][0], v2["digest"]]))
        self.assertTrue(os.path.exists(self.winch.blob_path(v2["digest"])))
        real, _ = cli_json(self.winch.cache_dir, "prune")
        self.assertEqual(sorted(i["digest"] for i in real["items"]), got)
        self.assertEqual(real["freed"], dry["freed"])
        self.assertFalse(os.path.exists(self.winch.blob_path(v2["digest"])))
        self.assertFalse(os.path.exists(self.winch.blob_path(r16["layers"][0])))
        # Every remaining tag pulls again completely, with no upstream blob request.
        before = self.up.count(contains="/blobs/")
        self.pull("lab/busybox-oci:1.36")
        self.pull("lab/tools/busybox:1.36")
        self.pull("library/busybox:1.36")
        self.pull("lab/multi:v1", ["--override-arch", "arm64"])
        self.assertEqual(self.up.count(contains="/blobs/"), before)
        again, _ = cli_json(self.winch.cache_dir, "prune", "--dry-run")
        self.assertEqual(again["items"], [])
        self.assertEqual(self.winch.verify_store(), [])

    def test_3_rm_keeps_shared_layer(self):
        self.seed_cache()
        out, _ = cli_json(self.winch.cache_dir, "rm", "lab/tools/busybox:1.36")
        self.assertIn("tag", [i["type"] for i in out["items"]])
        rows, _ = cli_json(self.winch.cache_dir, "ls")
        self.assertNotIn("lab/tools/busybox", [r["repository"] for r in rows])
        # The manifest is still busybox-oci's; its layers are library/busybox's too.
        self.assertNotIn(self.img("busybox")["digest"], [i["digest"] for i in out["items"]
                                                         if i["type"] != "tag"])
        for d in self.img("busybox")["layers"]:
            self.assertTrue(os.path.exists(self.winch.blob_path(d)), "shared layer kept")
        out, _ = cli_json(self.winch.cache_dir, "rm", "lab/busybox-oci:1.36")
        removed = [i["digest"] for i in out["items"] if i["type"] != "tag"]
        self.assertEqual(removed, [self.img("busybox")["digest"]])
        for d in self.img("busybox")["layers"]:
            self.assertTrue(os.path.exists(self.winch.blob_path(d)), "shared layer kept")
        before = self.up.count(contains="/blobs/")
        self.pull("lab/busybox-oci:1.36")
        self.pull("library/busybox:1.36")
        self.assertEqual(self.up.count(contains="/blobs/"), before)
        p = winch_cli(self.winch.cache_dir, "rm", "lab/tools/busybox:1.36", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no such image", p.stderr)
        # It comes back with the next pull.
        self.pull("lab/tools/busybox:1.36")

    def test_4_rm_while_slow_client_reads(self):
        big = self.img("big")
        layer = max(big["layers"], key=lambda d: big["blobs"][d]["size"])
        path = "/v2/lab/big/blobs/%s" % layer
        self.pull("lab/big:v1")
        s = lab.Stream(self.winch.hostport, path)
        h = hashlib.sha256()
        h.update(s.read(1 << 20))
        out, _ = cli_json(self.winch.cache_dir, "rm", "lab/big:v1")
        self.assertIn(layer, [i["digest"] for i in out["items"]])
        self.assertFalse(os.path.exists(self.winch.blob_path(layer)))
        for b in iter(lambda: s.read(1 << 20), b""):
            h.update(b)
        s.close()
        self.assertEqual("sha256:" + h.hexdigest(), layer)

    def test_5_verify_and_quarantine(self):
        self.seed_cache()
        clean, rc = cli_json(self.winch.cache_dir, "verify")
        self.assertEqual((clean["problems"], rc), ([], 0))
        self.assertGreater(clean["bytes_hashed"], 1000000)
        layer = self.img("busybox")["layers"][0]
        p = self.winch.blob_path(layer)
        with open(p, "r+b") as f:
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0xff]))
        found, rc = cli_json(self.winch.cache_dir, "verify", check=False)
        self.assertEqual(rc, 1)
        self.assertEqual(found["problems"], [{"problem": "corrupt", "digest": layer,
                                              "fixed": True}])
        self.assertFalse(os.path.exists(p))
        q = os.listdir(os.path.join(self.winch.cache_dir, "quarantine"))
        self.assertEqual(len(q), 1)
        before = self.up.count(contains="/blobs/")
        status, got, _ = lab.fetch_blob_digest(self.winch.hostport,
                                               "/v2/lab/busybox-oci/blobs/%s" % layer)
        self.assertEqual((status, got), (200, layer))
        self.assertEqual(self.up.count(contains="/blobs/"), before + 1)
        again, rc = cli_json(self.winch.cache_dir, "verify")
        self.assertEqual((again["problems"], rc), ([], 0))

    def test_6_bad_arguments(self):
        for args in (["prune", "--unused-for", "soon"], ["prune", "--unused-for", "0"],
                     ["ls", "--filter", "label=x"], ["df", "extra"], ["verify", "x"],
                     ["rm"], ["inspect"]):
            p = winch_cli(self.winch.cache_dir, *args, check=False)
            self.assertEqual(p.returncode, 2, (args, p.stdout, p.stderr))
        p = subprocess.run([lab.WINCH_BIN, "ls", "--cache-dir", "/nonexistent/winch"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        # --help answers with the usage even where no cache is.
        for cmd in ("ls", "df", "inspect", "rm", "prune", "verify"):
            p = subprocess.run([lab.WINCH_BIN, cmd, "--help", "--cache-dir", "/nonexistent/winch"],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, (cmd, p.stderr))
            self.assertRegex(p.stdout, r"winch .*\b%s\b" % cmd)


if __name__ == "__main__":
    lab.main()
