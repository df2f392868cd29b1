#!/usr/bin/python3
"""Pushes the images built by mkimage.py into a registry and records what the registry assigned.

    push.py OUTDIR REGISTRY_HOSTPORT

For every job in OUTDIR/images.json runs

    skopeo copy --dest-tls-verify=false [--format v2s2] [--all] oci:LAYOUT:REF docker://HOSTPORT/REPO:TAG

(and once more per extra tag), then reads the pushed manifests back over plain HTTP and writes
OUTDIR/pushed.json:

    {"images": {NAME: {"repo", "tag", "tags": [...], "format", "all",
                       "digest", "media_type", "size",          # the tagged manifest
                       "platforms": [{"digest", "media_type", "size", "platform",
                                      "annotations"}],          # index entries, in order
                       "manifests": {DIGEST: {"media_type", "size"}},   # every manifest reachable
                       "blobs": {DIGEST: {"size", "media_type"}},       # every config and layer
                       "layers": [DIGEST, ...]}}}               # single-image layers, in order

The registry must be a plain-HTTP registry on 127.0.0.1. Python 3 standard library only.
"""

import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile

MANIFEST_ACCEPT = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
]
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")


def skopeo_env(workdir):
    """An environment that makes skopeo hermetic: an accept-anything policy and an empty
    registries.conf, so that nothing outside the given references is ever contacted."""
    policy = os.path.join(workdir, "policy.json")
    regconf = os.path.join(workdir, "registries.conf")
    if not os.path.exists(policy):
        with open(policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    if not os.path.exists(regconf):
        with open(regconf, "w") as f:
            f.write("unqualified-search-registries = []\n")
    env = dict(os.environ)
    env["CONTAINERS_REGISTRIES_CONF"] = regconf
    env["REGISTRY_AUTH_FILE"] = os.path.join(workdir, "auth.json")
    if not os.path.exists(env["REGISTRY_AUTH_FILE"]):
        with open(env["REGISTRY_AUTH_FILE"], "w") as f:
            f.write('{"auths":{}}\n')
    return env, policy


def run_skopeo(args, workdir, timeout=600):
    env, policy = skopeo_env(workdir)
    cmd = ["skopeo", "--policy", policy] + args
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("%s failed (exit %d):\n%s%s" % (
            " ".join(cmd), p.returncode, p.stdout.decode(errors="replace"),
            p.stderr.decode(errors="replace")))
    return p


def http_get(hostport, path, accept=None):
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest("GET", path)
        for a in accept or []:
            conn.putheader("Accept", a)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body
    finally:
        conn.close()


def fetch_manifest(hostport, repo, ref):
    status, headers, body = http_get(hostport, "/v2/%s/manifests/%s" % (repo, ref),
                                     MANIFEST_ACCEPT)
    if status != 200:
        raise RuntimeError("GET %s/manifests/%s from %s: %d %r" % (repo, ref, hostport, status,
                                                                   body[:300]))
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    dcd = headers.get("docker-content-digest")
    if dcd and dcd != digest:
        raise RuntimeError("%s:%s: Docker-Content-Digest %s but body hashes to %s" % (
            repo, ref, dcd, digest))
    if ref.startswith("sha256:") and ref != digest:
        raise RuntimeError("%s@%s: body hashes to %s" % (repo, ref, digest))
    ctype = headers.get("content-type", "").split(";")[0].strip()
    return digest, ctype, body


def describe(hostport, job):
    repo, tag = job["repo"], job["tag"]
    digest, ctype, body = fetch_manifest(hostport, repo, tag)
    doc = json.loads(body)
    out = {"repo": repo, "tag": tag, "tags": [tag] + list(job.get("extra_tags", [])),
           "format": job["format"], "all": job["all"], "digest": digest, "media_type": ctype,
           "size": len(body), "platforms": [], "manifests": {}, "blobs": {}, "layers": []}
    out["manifests"][digest] = {"media_type": ctype, "size": len(body)}

    def add_image(doc):
        cfg = doc["config"]
        out["blobs"][cfg["digest"]] = {"size": cfg["size"], "media_type": cfg["mediaType"]}
        for layer in doc.get("layers", []):
            out["blobs"][layer["digest"]] = {"size": layer["size"],
                                             "media_type": layer["mediaType"]}

    if ctype in INDEX_TYPES:
        for entry in doc["manifests"]:
            out["platforms"].append({"digest": entry["digest"], "media_type": entry["mediaType"],
                                     "size": entry["size"], "platform": entry.get("platform"),
                                     "annotations": entry.get("annotations", {})})
            cd, ct, cbody = fetch_manifest(hostport, repo, entry["digest"])
            out["manifests"][cd] = {"media_type": ct, "size": len(cbody)}
            add_image(json.loads(cbody))
    else:
        add_image(doc)
        out["layers"] = [layer["digest"] for layer in doc.get("layers", [])]
    return out


def push_all(outdir, hostport, log=sys.stderr):
    with open(os.path.join(outdir, "images.json")) as f:
        jobs = json.load(f)
    result = {"images": {}}
    with tempfile.TemporaryDirectory(prefix="winch-push-") as work:
        for job in jobs:
            src = "oci:%s:%s" % (os.path.join(outdir, job["layout"]), job["ref"])
            for tag in [job["tag"]] + list(job.get("extra_tags", [])):
                args = ["copy", "--quiet", "--dest-tls-verify=false"]
                if job["format"] == "v2s2":
                    args += ["--format", "v2s2"]
                if job["all"]:
                    args += ["--all"]
                dst = "docker://%s/%s:%s" % (hostport, job["repo"], tag)
                print("push: %s -> %s" % (src, dst), file=log)
                run_skopeo(args + [src, dst], work)
            result["images"][job["name"]] = describe(hostport, job)
    tmp = os.path.join(outdir, "pushed.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    os.rename(tmp, os.path.join(outdir, "pushed.json"))
    return result


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: push.py OUTDIR REGISTRY_HOSTPORT")
    push_all(argv[1], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
