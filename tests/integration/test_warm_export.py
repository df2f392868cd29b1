#!/usr/bin/python3
"""winch warm, export and import against the real upstream (the seeded docker-registry):

- warm through a serving winch (--server), and warm on its own (no winch serves the cache: it
  runs one on an ephemeral loopback port), then the upstream is stopped and skopeo pulls the
  images through winch: byte-identical to what the upstream served; an index is warmed for the
  platforms asked for only;
- export -> import into an empty cache -> pull with no upstream at all (the configured one is a
  closed port): byte-identical to the original; skopeo copy oci-archive: reads the export
  (plain and gzip); the archive is checked as an OCI layout and a docker-archive;
- bad input: an archive with a tampered layer, a truncated one, garbage, and a missing image are
  refused: no tag or manifest appears, nothing unverified is
  kept."""

import json
import os
import socket
import subprocess
import tarfile

import lab


def closed_port_url():
    """http://127.0.0.1:PORT where nothing listens (bound then closed)."""
    s = socket.socket()
    s.bind((lab.LOOPBACK, 0))
    port = s.getsockname()[1]
    s.close()
    return "http://%s:%d" % (lab.LOOPBACK, port)


def write_config(path, cache_dir, upstream_url, **extra):
    cfg = dict({"cache_dir": cache_dir, "listen": "%s:0" % lab.LOOPBACK,
                "upstreams": [{"name": "docker.io", "url": upstream_url}]}, **extra)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def winch(*args, check=True, timeout=300):
    p = subprocess.run([lab.WINCH_BIN] + list(args), capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError("winch %s: exit %d\n%s\n%s" % (" ".join(args), p.returncode,
                                                           p.stdout, p.stderr))
    return p


class WarmExport(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab.seeded()
        cls.out = lab.tmpdir("winch-warm-")
        cls.n = 0
        # What the upstream itself serves, for the byte comparisons.
        up = lab.seeded_registry()
        try:
            cls.direct = {}
            for name, ref, extra in (("bb", "lab/busybox-oci:1.36", ()),
                                     ("big", "lab/big:v1", ()),
                                     ("multi", "lab/multi:v1", ()),
                                     ("multi-arm64", "lab/multi:v1",
                                      ("--override-arch", "arm64", "--override-variant", "v8")),
                                     ("v2s2", "library/busybox:1.36", ())):
                d = os.path.join(cls.out, "direct-" + name)
                lab.skopeo_copy("docker://%s/%s" % (up.hostport, ref), "dir:" + d, extra)
                cls.direct[name] = d
        finally:
            up.stop()

    def tmp(self, name):
        WarmExport.n += 1
        return os.path.join(self.out, "%s-%d" % (name, WarmExport.n))

    def pull_same(self, w, ref, key, extra=()):
        dest = self.tmp("pull")
        lab.skopeo_copy("docker://%s/%s" % (w.hostport, ref), "dir:" + dest, extra)
        self.assertEqual(lab.compare_dirs(dest, self.direct[key]), [])

    # ---- warm ----------------------------------------------------------------------------

    def test_warm_through_serving_winch(self):
        up = lab.seeded_registry()
        w = lab.Winch([("docker.io", up.url)])
        try:
            before = up.count(contains="/blobs/")
            p = winch("warm", "lab/busybox-oci:1.36", "lab/multi:v1", "--server", w.url,
                      "--cache-dir", w.cache_dir)
            # Not a terminal: plain lines, one per blob.
            self.assertIn("pulling through %s" % w.url, p.stdout)
            self.assertNotIn("\r", p.stdout)
            multi = self.data["images"]["multi"]
            amd64 = [m for m in multi["platforms"]
                     if m["platform"] == {"architecture": "amd64", "os": "linux"}][0]
            arm64 = [m for m in multi["platforms"] if m["platform"]["architecture"] == "arm64"][0]
            self.assertGreater(up.count(contains="/manifests/" + amd64["digest"]), 0)
            self.assertEqual(up.count(contains="/manifests/" + arm64["digest"]), 0,
                             "a platform nobody asked for was warmed")
            self.assertGreater(up.count(contains="/blobs/"), before)
            # Warm again: everything is there, the upstream sees no blob request.
            before = up.count(contains="/blobs/")
            winch("warm", "lab/busybox-oci:1.36", "lab/multi:v1", "--server", w.url,
                  "--cache-dir", w.cache_dir)
            self.assertEqual(up.count(contains="/blobs/"), before)
            up.stop()
            up = None
            self.pull_same(w, "lab/busybox-oci:1.36", "bb")
            self.pull_same(w, "lab/multi:v1", "multi")
            # arm64 was not warmed: with the upstream gone it cannot be pulled.
            with self.assertRaises(Exception):
                lab.skopeo_copy("docker://%s/lab/multi:v1" % w.hostport, "dir:" + self.tmp("x"),
                                ("--override-arch", "arm64", "--override-variant", "v8"),
                                timeout=120)
        finally:
            w.stop()
            if up:
                up.stop()

    def test_warm_on_its_own(self):
        """No winch serves the cache: warm runs its own, then stops it."""
        up = lab.seeded_registry()
        cache = self.tmp("cache")
        cfg = write_config(self.tmp("config.json"), cache, up.url)
        try:
            p = winch("warm", "--config", cfg, "lab/big:v1", "library/busybox:1.36",
                      "lab/multi:v1", "--platform", "linux/arm64/v8", "--platform",
                      "linux/amd64")
            self.assertIn("its own winch at http://127.0.0.1:", p.stdout)
            # --json: one summary, and nothing left to fetch the second time.
            p = winch("warm", "--config", cfg, "lab/big:v1", "--json")
            summary = json.loads(p.stdout)
            self.assertEqual(summary["via"], "own")
            self.assertEqual(summary["not_cached"], [])
        finally:
            up.stop()
        # The upstream is gone for good: a new winch on the warmed cache serves it all.
        w = lab.Winch([("docker.io", up.url)], cache_dir=cache)
        try:
            self.pull_same(w, "lab/big:v1", "big")
            self.pull_same(w, "library/busybox:1.36", "v2s2")
            self.pull_same(w, "lab/multi:v1", "multi")
            self.pull_same(w, "lab/multi:v1", "multi-arm64",
                           ("--override-arch", "arm64", "--override-variant", "v8"))
        finally:
            w.stop()

    def test_warm_bad_input(self):
        up = lab.seeded_registry()
        w = lab.Winch([("docker.io", up.url)])
        try:
            for args in (["warm"], ["warm", "lab/x", "--platform", "linux"],
                         ["warm", "lab/x", "--platform", "a/" + "b" * 5000],
                         ["warm", "lab/x", "--bogus"]):
                p = winch(*(args + ["--cache-dir", w.cache_dir]), check=False)
                self.assertEqual(p.returncode, 2, p.stderr)
            # An unknown image, an invalid reference: exit 1, named; the others still warm.
            p = winch("warm", "lab/nope:v1", "lab/busybox-oci:1.36", "--server", w.url,
                      "--cache-dir", w.cache_dir, check=False)
            self.assertEqual(p.returncode, 1)
            self.assertIn("lab/nope", p.stdout + p.stderr)
            p = winch("warm", "UPPER/Case::x", "--server", w.url, "--cache-dir", w.cache_dir,
                      check=False)
            self.assertNotEqual(p.returncode, 0)
            # Nothing listens at --server.
            p = winch("warm", "lab/busybox-oci:1.36", "--server", closed_port_url(),
                      "--cache-dir", w.cache_dir, check=False, timeout=120)
            self.assertEqual(p.returncode, 1)
        finally:
            w.stop()
            up.stop()

    # ---- export / import -------------------------------------------------------------------

    def warmed_cache(self):
        """A cache holding bb, big, multi (amd64 + arm64) and the v2s2 busybox, no winch on it."""
        if getattr(WarmExport, "warmed", None):
            return WarmExport.warmed
        up = lab.seeded_registry()
        cache = self.tmp("src-cache")
        cfg = write_config(self.tmp("config.json"), cache, up.url)
        try:
            winch("warm", "--config", cfg, "lab/busybox-oci:1.36", "lab/big:v1",
                  "library/busybox:1.36", "lab/multi:v1", "--platform", "linux/amd64",
                  "--platform", "linux/arm64/v8")
        finally:
            up.stop()
        WarmExport.warmed = cache
        return cache

    def test_export_import_pull_without_upstream(self):
        src = self.warmed_cache()
        every = ["lab/busybox-oci:1.36", "lab/big:v1", "library/busybox:1.36", "lab/multi:v1"]
        for ext in ("tar", "tar.gz"):
            # gzip is the same code whatever the size: the 300 MiB of random bytes in lab/big
            # (gzip's worst case, ~15 s each way) go through the plain tar only.
            refs = every if ext == "tar" else [r for r in every if r != "lab/big:v1"]
            with self.subTest(ext=ext):
                archive = self.tmp("images") + "." + ext
                winch("export", *refs, "-o", archive, "--cache-dir", src)
                if ext == "tar":
                    self.check_layout(archive, refs)
                else:
                    with open(archive, "rb") as f:
                        self.assertEqual(f.read(2), b"\x1f\x8b")
                # Into an empty cache, with no upstream at all.
                dst = self.tmp("dst-cache")
                cfg = write_config(self.tmp("config.json"), dst, closed_port_url())
                os.makedirs(dst)
                p = winch("import", archive, "--config", cfg, "--json")
                self.assertTrue(json.loads(p.stdout))
                p = winch("verify", "--config", cfg)
                w = lab.Winch([("docker.io", closed_port_url())], cache_dir=dst)
                try:
                    self.pull_same(w, "lab/busybox-oci:1.36", "bb")
                    if "lab/big:v1" in refs:
                        self.pull_same(w, "lab/big:v1", "big")
                    self.pull_same(w, "library/busybox:1.36", "v2s2")
                    self.pull_same(w, "lab/multi:v1", "multi")
                    self.pull_same(w, "lab/multi:v1", "multi-arm64",
                                   ("--override-arch", "arm64", "--override-variant", "v8"))
                finally:
                    w.stop()
                # skopeo reads the export itself.
                for ref, key in (("lab/busybox-oci:1.36", "bb"), ("lab/big:v1", "big")):
                    if ref not in refs:
                        continue
                    dest = self.tmp("oci")
                    lab.skopeo(["copy", "--quiet",
                                "oci-archive:%s:docker.io/%s" % (archive, ref), "dir:" + dest])
                    self.assertEqual(lab.compare_dirs(dest, self.direct[key]), [])

    def check_layout(self, archive, refs):
        with tarfile.open(archive) as t:
            names = set(t.getnames())
            self.assertEqual(json.load(t.extractfile("oci-layout")),
                             {"imageLayoutVersion": "1.0.0"})
            index = json.load(t.extractfile("index.json"))
            docker = json.load(t.extractfile("manifest.json"))
        got = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
        self.assertEqual(got, ["docker.io/" + r for r in refs])
        for m in index["manifests"]:
            self.assertIn("blobs/sha256/" + m["digest"].split(":")[1], names)
        # docker-archive: one image per tag, its files present.
        self.assertEqual(sorted(t for e in docker for t in e["RepoTags"]),
                         sorted("docker.io/" + r for r in refs))
        for e in docker:
            for f in [e["Config"]] + e["Layers"]:
                self.assertIn(f, names)

    def test_import_refuses_bad_archives(self):
        src = self.warmed_cache()
        good = self.tmp("good") + ".tar"
        winch("export", "lab/busybox-oci:1.36", "-o", good, "--cache-dir", src)
        layer = self.data["images"]["busybox"]["layers"][0].split(":")[1]
        # A tampered layer: same size, one byte flipped.
        tampered = self.tmp("tampered") + ".tar"
        with open(good, "rb") as f:
            raw = bytearray(f.read())
        with tarfile.open(good) as t:
            off = t.getmember("blobs/sha256/" + layer).offset_data
        raw[off + 10] ^= 0xFF
        with open(tampered, "wb") as f:
            f.write(raw)
        truncated = self.tmp("truncated") + ".tar"
        with open(truncated, "wb") as f:
            f.write(raw[:len(raw) // 2])
        garbage = self.tmp("garbage") + ".tar"
        with open(garbage, "wb") as f:
            f.write(os.urandom(100000))
        dst = self.tmp("dst-cache")
        cfg = write_config(self.tmp("config.json"), dst, closed_port_url())
        os.makedirs(dst)
        layer_file = os.path.join(dst, "blobs", "sha256", layer[:2], layer)
        for bad in (tampered, truncated, garbage, self.tmp("missing") + ".tar"):
            p = winch("import", bad, "--config", cfg, check=False)
            self.assertEqual(p.returncode, 1, "%s: %s %s" % (bad, p.stdout, p.stderr))
            # No tag, no manifest, no bad layer. Blobs that matched their digests before the
            # bad one was found may stay (unreferenced: prune and retention remove them).
            p = winch("ls", "--config", cfg, "--json")
            self.assertEqual(json.loads(p.stdout), [])
            self.assertFalse(os.path.exists(layer_file), bad)
            winch("verify", "--config", cfg)
        self.assertIn("digest", winch("import", tampered, "--config", cfg, check=False).stderr)
        # Exporting what is not cached writes nothing.
        out = self.tmp("nothing") + ".tar"
        p = winch("export", "lab/nope:v1", "-o", out, "--cache-dir", src, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertFalse(os.path.exists(out))
        # The good archive still imports after all that.
        winch("import", good, "--config", cfg)
        p = winch("ls", "--config", cfg, "--json")
        self.assertEqual([e["tag"] for e in json.loads(p.stdout)], ["1.36"])


class DockerLoad(lab.TestCase):
    """docker load (Debian's dockerd 20.10, in a loopback-only namespace, its mirror a closed
    port) reads winch export's docker-archive side: the image gets its tag and the upstream's
    config digest as its ID, and it runs."""

    def test_docker_load(self):
        import netns
        netns.require("dockerd", "docker", "containerd", "runc", "ip", "nsenter")
        data = lab.seeded()
        out = lab.tmpdir("winch-dload-")
        up = lab.seeded_registry()
        cache = os.path.join(out, "cache")
        cfg = write_config(os.path.join(out, "config.json"), cache, up.url)
        try:
            winch("warm", "--config", cfg, "library/busybox:1.36", "lab/busybox-oci:1.36")
        finally:
            up.stop()
        archive = os.path.join(out, "images.tar")
        winch("export", "library/busybox:1.36", "lab/busybox-oci:1.36", "-o", archive,
              "--cache-dir", cache)
        ns = netns.Netns()
        try:
            d = netns.Dockerd(ns, mirror=closed_port_url()[len("http://"):])
            try:
                r = d.docker("load", "-i", archive)
                self.assertEqual(sorted(r.stdout.splitlines()),
                                 ["Loaded image: busybox:1.36",
                                  "Loaded image: lab/busybox-oci:1.36"])
                for ref, key in (("busybox:1.36", "busybox-v2s2"),
                                 ("lab/busybox-oci:1.36", "busybox")):
                    got = d.docker("image", "inspect", ref, "--format", "{{.Id}}").stdout
                    self.assertEqual(got.strip(), netns.config_digest(data["images"][key]))
                r = d.docker("run", "--rm", "--network", "none", "busybox:1.36", "echo", "hi")
                self.assertEqual(r.stdout.strip(), "hi")
            finally:
                d.stop()
        finally:
            ns.stop()


if __name__ == "__main__":
    lab.main()
