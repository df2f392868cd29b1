"""What the policy tests share: tiny images built on the spot (tests/tools/mkimage.py's layout
writer) with the created time and size each test needs, pushed with skopeo into a writable
docker-registry (so a tag can be re-pushed to another image), and the winch CLI.

Python 3 standard library only."""

import json
import os
import subprocess
import time

import lab
import mkimage  # noqa: E402  (tests/tools/mkimage.py, on sys.path through lab)

ALL = lab.accept(lab.ALL_MANIFEST_ACCEPT)


class Image:
    def __init__(self, layout, digest, config_digest, size, layer_digest):
        self.layout = layout          # OCI layout directory, image tagged "x"
        self.digest = digest          # manifest digest
        self.config = config_digest   # config blob digest
        self.size = size              # config + layers, bytes
        self.layer = layer_digest


def rfc3339(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def build_image(name, created=None, pad=0, seed=0):
    """An OCI image of one small layer naming `name` (plus `pad` pseudo-random bytes) whose
    config says `created` (RFC 3339 text, or None for no created field)."""
    d = os.path.join(lab.tmpdir("winch-pol-img-"), "layout")
    layout = mkimage.Layout(d)

    def members(tar):
        mkimage.add_dir(tar, "etc")
        mkimage.add_file_bytes(tar, "etc/image", ("%s %d\n" % (name, seed)).encode())
        if pad:
            mkimage.add_file_bytes(tar, "etc/pad", mkimage.RandomReader(seed + 7, pad).read())

    desc, diff_id = layout.put_layer(members, level=0 if pad else 6)
    cfg = {"architecture": "amd64", "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    if created is not None:
        cfg["created"] = created
    cdesc = layout.put_json(cfg, mkimage.MT_OCI_CONFIG)
    man = layout.put_json({"schemaVersion": 2, "mediaType": mkimage.MT_OCI_MANIFEST,
                           "config": cdesc, "layers": [desc]}, mkimage.MT_OCI_MANIFEST)
    layout.tag(man, "x")
    layout.finish()
    return Image(d, man["digest"], cdesc["digest"], cdesc["size"] + desc["size"],
                 desc["digest"])


def push(registry, image, repo, tag):
    """Pushes image to registry (directly, not through its counting forwarder) as repo:tag and
    checks the registry serves it under the digest built."""
    lab.skopeo_copy("oci:%s:x" % image.layout, "docker://%s/%s:%s" % (
        registry.direct_hostport, repo, tag))
    r = lab.head(registry.direct_hostport, "/v2/%s/manifests/%s" % (repo, tag), ALL)
    got = r.header("Docker-Content-Digest")
    if got != image.digest:
        raise AssertionError("pushed %s:%s as %s, the registry says %s" % (
            repo, tag, image.digest, got))


def served_digest(winch, repo, ref, method="HEAD", ns=None):
    """(status, Docker-Content-Digest, body digest or None) of a manifest request to winch."""
    path = "/v2/%s/manifests/%s%s" % (repo, ref, "?ns=" + ns if ns else "")
    r = lab.request(winch.hostport, method, path, ALL)
    body = lab.sha256_digest(r.body) if method == "GET" and r.status == 200 else None
    return r.status, r.header("Docker-Content-Digest"), body, r


def winch_cli(*args, env=None, timeout=60):
    """Runs the winch binary with args; returns the CompletedProcess (text)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([lab.WINCH_BIN] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          env=e, universal_newlines=True)


def config_file(config):
    """Writes config (a dict) to a fresh file; returns its path."""
    path = os.path.join(lab.tmpdir("winch-pol-cfg-"), "config.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


def skopeo_copy_error(src, extra=()):
    """skopeo copy src to a temp dir; returns None on success, else its error text."""
    dst = "dir:" + os.path.join(lab.tmpdir("winch-pol-skopeo-"), "out")
    try:
        lab.skopeo_copy(src, dst, extra)
        return None
    except RuntimeError as e:
        return str(e)


def skopeo_copy_manifest(src, extra=()):
    """skopeo copy src into a dir: transport; returns the sha256 of the copied manifest."""
    out = os.path.join(lab.tmpdir("winch-pol-skopeo-"), "out")
    lab.skopeo_copy(src, "dir:" + out, extra)
    return lab.file_digest(os.path.join(out, "manifest.json"))


def wait_log(winch, needle, timeout=5):
    """Waits until winch's log contains needle; returns the log."""
    return lab.wait_for(lambda: needle in winch.log() and winch.log(), timeout,
                        what="%r in winch's log" % needle)
