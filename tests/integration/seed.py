#!/usr/bin/python3
"""ctest fixture `integration.seed`: builds the test images and seeds an upstream registry's
storage with them, once.

  $WINCH_TESTDATA/images/     OCI layouts from tests/tools/mkimage.py, images.json, pushed.json
  $WINCH_TESTDATA/registry/   docker-registry storage holding every image (pushed with skopeo)

Both steps are skipped when their stamp matches (a hash of mkimage.py, push.py, this file and the
big image size), so re-running the tests costs nothing. Tests then start their own read-only
docker-registry processes on the registry storage (lab.seeded_registry()).

Environment: WINCH_TESTDATA (required under ctest), WINCH_BIG_MIB (default 300).
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BIG_MIB = int(os.environ.get("WINCH_BIG_MIB", "300"))


def stamp_value():
    import lab
    h = hashlib.sha256()
    for p in (os.path.join(lab.TOOLS_DIR, "mkimage.py"), os.path.join(lab.TOOLS_DIR, "push.py"),
              os.path.abspath(__file__)):
        with open(p, "rb") as f:
            h.update(f.read())
    h.update(b"big_mib=%d" % BIG_MIB)
    return h.hexdigest()


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text + "\n")
    os.rename(path + ".tmp", path)


def ensure(testdata, log=sys.stderr):
    """Builds and pushes what is missing or stale. Safe to call from several processes: an
    exclusive lock on testdata/.lock serialises them."""
    import lab
    os.makedirs(testdata, exist_ok=True)
    images = os.path.join(testdata, "images")
    registry = os.path.join(testdata, "registry")
    stamp = stamp_value()
    with open(os.path.join(testdata, ".lock"), "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        t0 = time.monotonic()
        images_stamp = os.path.join(testdata, "images.stamp")
        registry_stamp = os.path.join(testdata, "registry.stamp")
        if read(images_stamp) != stamp or not os.path.exists(os.path.join(images, "images.json")):
            for p in (images_stamp, registry_stamp):
                if os.path.exists(p):
                    os.unlink(p)
            shutil.rmtree(images, ignore_errors=True)
            print("seed: building images into %s (big image %d MiB)" % (images, BIG_MIB),
                  file=log)
            subprocess.run([sys.executable, os.path.join(lab.TOOLS_DIR, "mkimage.py"), images,
                            "--big-mib", str(BIG_MIB)], check=True)
            write(images_stamp, stamp)
        else:
            print("seed: images up to date in %s" % images, file=log)

        if read(registry_stamp) != stamp or not os.path.exists(
                os.path.join(images, "pushed.json")) or not os.path.isdir(registry):
            if os.path.exists(registry_stamp):
                os.unlink(registry_stamp)
            shutil.rmtree(registry, ignore_errors=True)
            print("seed: pushing into a fresh registry at %s" % registry, file=log)
            reg = lab.Registry(root=registry, readonly=False, count=False, name="seed-registry")
            try:
                lab.pushtool.push_all(images, reg.direct_hostport, log=log)
            except Exception:
                print(reg.log(), file=log)
                raise
            finally:
                reg.stop()
            write(registry_stamp, stamp)
        else:
            print("seed: registry storage up to date in %s" % registry, file=log)
        print("seed: done in %.1fs" % (time.monotonic() - t0), file=log)
    with open(os.path.join(images, "pushed.json")) as f:
        return json.load(f)


def main():
    import lab
    pushed = ensure(lab.TESTDATA)
    for name, img in sorted(pushed["images"].items()):
        print("seed: %-14s %s:%s %s %s" % (name, img["repo"], img["tag"], img["media_type"],
                                           img["digest"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
