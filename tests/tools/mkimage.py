#!/usr/bin/python3
"""Deterministic offline builder of the OCI image layouts winch's tests and benchmarks push into
a local upstream registry.

    mkimage.py OUTDIR [--big-mib N] [--only NAME,...]

Builds OCI image layouts under OUTDIR (one directory per image set) and writes OUTDIR/images.json,
a list of push jobs:

    {"name", "layout": dir relative to OUTDIR, "ref": tag inside the layout, "repo", "tag",
     "extra_tags": [...], "format": "oci"|"v2s2", "all": bool}

Everything is deterministic: fixed mtimes and owners in tars, a seeded PRNG for random layers,
JSON with sorted keys and no whitespace, gzip with mtime 0 and no file name. Two runs with the
same arguments give byte-identical layouts (and so identical digests).

Layers are always gzip: containers/image recompresses plain tars when pushing, which would make
the pushed digests differ from the layout's. Random layers use gzip level 0 (stored blocks): random
data does not compress and level 0 runs at memory speed.

Python 3 standard library only.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile

BUILDER_VERSION = 1

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_INTOTO = "application/vnd.in-toto+json"

FIXED_MTIME = 1704067200  # 2024-01-01T00:00:00Z
FIXED_CREATED = "2024-01-01T00:00:00Z"
CHUNK = 1 << 20

# The image sets and what each produces; --only takes these names (or entry names).
ALL_SETS = ("busybox", "multi", "range16", "big")

MULTI_PLATFORMS = [
    {"architecture": "amd64", "os": "linux"},
    {"architecture": "arm64", "os": "linux", "variant": "v8"},
    {"architecture": "arm", "os": "linux", "variant": "v7"},
    {"architecture": "arm", "os": "linux", "variant": "v6"},
    {"architecture": "ppc64le", "os": "linux"},
    {"architecture": "s390x", "os": "linux"},
]

BUSYBOX_APPLETS = ["sh", "ls", "cat", "echo", "true", "false", "sleep", "env", "id", "uname",
                   "wc", "sha256sum", "head", "tail", "grep", "mkdir", "rm", "cp", "mv", "pwd"]


def canon_json(obj):
    """Deterministic JSON bytes: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class HashWriter:
    """File-like sink that hashes and counts what passes through, then forwards it."""

    def __init__(self, inner):
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        if self.inner is not None:
            self.inner.write(data)
        return len(data)

    def flush(self):
        if self.inner is not None:
            self.inner.flush()

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


class RandomReader:
    """Readable stream of `size` pseudo-random bytes from a seeded PRNG."""

    def __init__(self, seed, size):
        self.rng = random.Random(seed)
        self.left = size

    def read(self, n=-1):
        if n is None or n < 0 or n > self.left:
            n = self.left
        self.left -= n
        return self.rng.randbytes(n) if n else b""


class Layout:
    """One OCI image layout directory (oci-layout, index.json, blobs/sha256/)."""

    def __init__(self, path):
        self.path = path
        self.refs = []  # index.json manifests entries
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        with open(os.path.join(path, "oci-layout"), "wb") as f:
            f.write(canon_json({"imageLayoutVersion": "1.0.0"}))

    def blob_path(self, digest):
        return os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1])

    def put_bytes(self, data, media_type, annotations=None):
        """Stores data as a blob; returns its descriptor."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(self.blob_path(digest), "wb") as f:
            f.write(data)
        desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            desc["annotations"] = annotations
        return desc

    def put_json(self, obj, media_type, annotations=None):
        return self.put_bytes(canon_json(obj), media_type, annotations)

    def put_layer(self, add_members, level):
        """Writes a gzip tar layer; add_members(tarfile) fills it. Returns (descriptor, diff_id)."""
        tmp = os.path.join(self.path, "blobs", "tmp-layer")
        with open(tmp, "wb") as raw:
            outer = HashWriter(raw)
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=outer, compresslevel=level, mtime=0)
            inner = HashWriter(gz)
            tar = tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT,
                               bufsize=CHUNK)
            tar.copybufsize = CHUNK
            add_members(tar)
            tar.close()
            gz.close()
        digest = outer.digest()
        os.rename(tmp, self.blob_path(digest))
        desc = {"mediaType": MT_OCI_LAYER_GZIP, "digest": digest, "size": outer.size}
        return desc, inner.digest()

    def tag(self, desc, ref):
        entry = dict(desc)
        ann = dict(entry.get("annotations", {}))
        ann["org.opencontainers.image.ref.name"] = ref
        entry["annotations"] = ann
        self.refs.append(entry)

    def finish(self):
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": self.refs}
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(canon_json(index))


def tarinfo(name, kind=tarfile.REGTYPE, size=0, mode=0o644, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode
    ti.mtime = FIXED_MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.linkname = linkname
    return ti


def add_dir(tar, name):
    tar.addfile(tarinfo(name, tarfile.DIRTYPE, mode=0o755))


def add_file_bytes(tar, name, data, mode=0o644):
    tar.addfile(tarinfo(name, size=len(data), mode=mode), io.BytesIO(data))


def image_config(platform, diff_ids, cmd=None, extra_env=None):
    cfg = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if extra_env:
        cfg["Env"] += extra_env
    if cmd:
        cfg["Cmd"] = cmd
    conf = {
        "architecture": platform["architecture"],
        "os": platform["os"],
        "created": FIXED_CREATED,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": FIXED_CREATED, "created_by": "winch tests/tools/mkimage.py"}
                    for _ in diff_ids],
    }
    if "variant" in platform:
        conf["variant"] = platform["variant"]
    return conf


def put_image(layout, platform, layers, cmd=None, extra_env=None, annotations=None):
    """layers: list of (descriptor, diff_id). Returns the manifest descriptor."""
    config = layout.put_json(image_config(platform, [d for _, d in layers], cmd, extra_env),
                             MT_OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": config,
                "layers": [desc for desc, _ in layers]}
    if annotations:
        manifest["annotations"] = annotations
    return layout.put_json(manifest, MT_OCI_MANIFEST)


# ---- image sets ----------------------------------------------------------------------------

def build_busybox(outdir):
    src = "/bin/busybox"
    if not os.path.exists(src):
        sys.exit("mkimage: %s not found (apt-get install busybox-static)" % src)
    with open(src, "rb") as f:
        bb = f.read()
    layout = Layout(os.path.join(outdir, "busybox"))

    def members(tar):
        for d in ("bin", "etc", "root", "tmp"):
            add_dir(tar, d)
        add_file_bytes(tar, "bin/busybox", bb, 0o755)
        for applet in BUSYBOX_APPLETS:
            tar.addfile(tarinfo("bin/" + applet, tarfile.SYMTYPE, mode=0o777, linkname="busybox"))
        add_file_bytes(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_file_bytes(tar, "etc/group", b"root:x:0:\n")

    layer = layout.put_layer(members, level=6)
    man = put_image(layout, {"architecture": "amd64", "os": "linux"}, [layer], cmd=["sh"])
    layout.tag(man, "1.36")
    layout.finish()
    base = {"layout": "busybox", "ref": "1.36", "tag": "1.36", "all": False, "extra_tags": []}
    return [
        dict(base, name="busybox", repo="lab/busybox-oci", format="oci",
             extra_tags=["1", "1.36.1", "latest", "stable", "a-first"]),
        dict(base, name="busybox-v2s2", repo="library/busybox", format="v2s2"),
        dict(base, name="busybox-tools", repo="lab/tools/busybox", format="oci"),
    ]


def build_multi(outdir):
    layout = Layout(os.path.join(outdir, "multi"))
    entries = []
    for i, plat in enumerate(MULTI_PLATFORMS):
        pstr = "/".join([plat["os"], plat["architecture"]] + ([plat["variant"]] if "variant" in plat else []))
        payload = ("%s\nimage %d of lab/multi\n" % (pstr, i)).encode()

        def members(tar, payload=payload):
            add_dir(tar, "etc")
            add_file_bytes(tar, "etc/platform", payload)

        layer = layout.put_layer(members, level=9)
        man = put_image(layout, plat, [layer], cmd=["/bin/true"], extra_env=["PLATFORM=" + pstr])
        entry = dict(man)
        entry["platform"] = dict(plat)
        entries.append(entry)

    # A buildx-style attestation manifest for the amd64 image: platform unknown/unknown,
    # in-toto layer, annotations pointing at the image it describes.
    statement = canon_json({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "pkg:docker/lab/multi@v1",
                     "digest": {"sha256": entries[0]["digest"].split(":", 1)[1]}}],
        "predicate": {"spdxVersion": "SPDX-2.3", "name": "winch-test-sbom"},
    })
    att_layer = layout.put_bytes(statement, MT_INTOTO,
                                 {"in-toto.io/predicate-type": "https://spdx.dev/Document"})
    att_config = layout.put_json({"architecture": "unknown", "os": "unknown", "config": {},
                                  "rootfs": {"type": "layers",
                                             "diff_ids": [att_layer["digest"]]}},
                                 MT_OCI_CONFIG)
    att_man = layout.put_json({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                               "config": att_config, "layers": [att_layer]}, MT_OCI_MANIFEST)
    att_entry = dict(att_man)
    att_entry["platform"] = {"architecture": "unknown", "os": "unknown"}
    att_entry["annotations"] = {"vnd.docker.reference.type": "attestation-manifest",
                                "vnd.docker.reference.digest": entries[0]["digest"]}

    with_att = layout.put_json({"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
                                "manifests": entries + [att_entry]}, MT_OCI_INDEX)
    plain = layout.put_json({"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
                             "manifests": entries}, MT_OCI_INDEX)
    layout.tag(with_att, "v1")
    layout.tag(plain, "v1-noattest")
    layout.finish()
    return [
        {"name": "multi", "layout": "multi", "ref": "v1", "repo": "lab/multi", "tag": "v1",
         "extra_tags": [], "format": "oci", "all": True},
        {"name": "multi-docker", "layout": "multi", "ref": "v1-noattest",
         "repo": "lab/multi-docker", "tag": "v1", "extra_tags": [], "format": "v2s2", "all": True},
    ]


def random_layer(layout, name, size, seed):
    def members(tar):
        add_dir(tar, "data")
        tar.addfile(tarinfo("data/" + name, size=size), RandomReader(seed, size))

    return layout.put_layer(members, level=0)


def build_range16(outdir):
    layout = Layout(os.path.join(outdir, "range16"))
    layer = random_layer(layout, "range16.bin", 16 << 20, seed=1616)
    man = put_image(layout, {"architecture": "amd64", "os": "linux"}, [layer])
    layout.tag(man, "v1")
    layout.finish()
    return [{"name": "range16", "layout": "range16", "ref": "v1", "repo": "lab/range16",
             "tag": "v1", "extra_tags": [], "format": "oci", "all": False}]


def big_layer_sizes(total_mib):
    """Three layers: 1/2, 1/3 and the rest of the total (512/341/171 MiB for 1024)."""
    total = total_mib << 20
    a = (total_mib // 2) << 20
    b = (total_mib // 3) << 20
    return [a, b, total - a - b]


def build_big(outdir, big_mib):
    layout = Layout(os.path.join(outdir, "big"))
    layers = [random_layer(layout, "big%d.bin" % i, size, seed=1000 + i)
              for i, size in enumerate(big_layer_sizes(big_mib))]
    man = put_image(layout, {"architecture": "amd64", "os": "linux"}, layers)
    layout.tag(man, "v1")
    layout.finish()
    return [{"name": "big", "layout": "big", "ref": "v1", "repo": "lab/big", "tag": "v1",
             "extra_tags": [], "format": "oci", "all": False, "big_mib": big_mib}]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--big-mib", type=int, default=300,
                    help="total size of the big image's three layers (default 300)")
    ap.add_argument("--only", default="",
                    help="comma-separated image sets to build: " + ",".join(ALL_SETS))
    args = ap.parse_args(argv)
    if args.big_mib < 3:
        ap.error("--big-mib must be at least 3")
    only = [s for s in args.only.split(",") if s] or list(ALL_SETS)
    for s in only:
        if s not in ALL_SETS:
            ap.error("unknown image set %r (known: %s)" % (s, ", ".join(ALL_SETS)))

    os.makedirs(args.outdir, exist_ok=True)
    jobs = []
    for s in ALL_SETS:
        if s not in only:
            continue
        if s == "busybox":
            jobs += build_busybox(args.outdir)
        elif s == "multi":
            jobs += build_multi(args.outdir)
        elif s == "range16":
            jobs += build_range16(args.outdir)
        elif s == "big":
            jobs += build_big(args.outdir, args.big_mib)
    with open(os.path.join(args.outdir, "images.json"), "w") as f:
        json.dump(jobs, f, indent=1, sort_keys=True)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
