#!/usr/bin/python3
"""winch cluster bench: HAProxy (deploy/haproxy/haproxy.cfg) + 3 winch nodes on loopback, in
front of a docker-registry holding the test images (tests/integration's seeded storage).

Reports:
  1. upstream fetches per blob when 8 clients (curl) pull the same cold 3-layer image through
     HAProxy at once;
  2. warm throughput of the biggest layer through HAProxy vs from its node directly (one curl,
     median of --reps; and 8 concurrent curls, aggregate);
  3. the share of cached blobs that become misses when a 4th node joins the ring (--keys small
     blobs on a scripted upstream).

  bench/run cluster [--reps 3] [--keys 2000]
  bench/cluster.py --winch build/winch [--testdata build/testdata] [--reps 3] [--keys 2000]

Writes the table to stdout and bench/RESULTS-cluster.md (--results to change). Uses
tests/integration/lab.py and cluster.py (the same harness as test_cluster.py); everything
listens on 127.0.0.1."""

import argparse
import collections
import concurrent.futures
import datetime
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def curl_speed(url, out=os.devnull):
    """(HTTP status, bytes, bytes/s) of one GET with curl."""
    r = subprocess.run(["curl", "-s", "-o", out, "--max-time", "300", "-w",
                        "%{http_code} %{size_download} %{speed_download}", url],
                       capture_output=True, text=True, check=True)
    code, size, speed = r.stdout.split()
    return int(code), int(size), float(speed)


def parallel(n, fn):
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        return list(ex.map(fn, range(n)))


def cold_pull(lab, cluster, img, clients):
    up = lab.seeded_registry()
    nodes = [lab.Winch([("docker.io", up.url)], config={"node_name": "winch%d" % i},
                       name="winch%d" % i, log_level="warn") for i in (1, 2, 3)]
    hap = cluster.Haproxy([("winch%d" % i, w.hostport) for i, w in enumerate(nodes, 1)])
    blobs = list(img["blobs"])
    try:
        def client(i):
            order = list(blobs)
            random.Random(i).shuffle(order)
            for d in order:
                code, size, _ = curl_speed("http://%s/v2/%s/blobs/%s" % (hap.hostport,
                                                                        img["repo"], d))
                assert code == 200 and size == img["blobs"][d]["size"], (code, size, d)
        t0 = time.monotonic()
        parallel(clients, client)
        elapsed = time.monotonic() - t0
        gets = collections.Counter(r.path for r in up.seen() if r.method == "GET")
        per_blob = [gets["/v2/%s/blobs/%s" % (img["repo"], d)] for d in blobs]
        return {"per_blob": per_blob, "elapsed": elapsed, "up": up, "nodes": nodes, "hap": hap}
    except BaseException:
        hap.stop()
        for w in nodes:
            w.stop()
        up.stop()
        raise


def warm_throughput(lab, env, img, reps, clients):
    hap = env["hap"]
    layer = max(img["layers"], key=lambda d: img["blobs"][d]["size"])
    path = "/v2/%s/blobs/%s" % (img["repo"], layer)
    owner = lab.get(hap.hostport, path, read_body=False).header("X-Winch-Node")
    node = env["nodes"][int(owner[-1]) - 1]
    res = {}
    for label, hp in (("haproxy", hap.hostport), ("node", node.hostport)):
        one = [curl_speed("http://%s%s" % (hp, path))[2] for _ in range(reps)]
        agg = []
        for _ in range(reps):
            t0 = time.monotonic()
            sizes = parallel(clients, lambda i: curl_speed("http://%s%s" % (hp, path))[1])
            agg.append(sum(sizes) / (time.monotonic() - t0))
        res[label] = (statistics.median(one), statistics.median(agg))
    return img["blobs"][layer]["size"], res


def miss_share(lab, cluster, keys):
    fake = lab.FakeUpstream()
    rnd = random.Random(14)
    digests = [fake.add_blob(rnd.randbytes(64) + b"%d" % i) for i in range(keys)]
    nodes = [lab.Winch([("docker.io", fake.url)], name="winch%d" % i, log_level="warn")
             for i in (1, 2, 3, 4)]
    names = [("winch%d" % i, w.hostport) for i, w in enumerate(nodes, 1)]
    hap = cluster.Haproxy(names[:3])
    try:
        def pull_all(hp):
            def one(d):
                r = lab.get(hp, "/v2/lab/keys/blobs/%s" % d)
                assert r.status == 200 and lab.sha256_digest(r.body) == d, r
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                list(ex.map(one, digests))
        pull_all(hap.hostport)
        first = fake.count("GET")
        hap.stop()
        hap = cluster.Haproxy(names)
        pull_all(hap.hostport)
        return first, fake.count("GET") - first
    finally:
        hap.stop()
        for w in nodes:
            w.stop()
        fake.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--winch", required=True, help="winch binary")
    ap.add_argument("--testdata", default=os.path.join(ROOT, "build", "testdata"),
                    help="seeded test images (built when missing)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS-cluster.md"))
    args = ap.parse_args()
    os.environ["WINCH_BIN"] = os.path.abspath(args.winch)
    os.environ["WINCH_TESTDATA"] = os.path.abspath(args.testdata)
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import cluster  # noqa: E402 - needs the environment above
    import lab  # noqa: E402

    img = lab.seeded()["images"]["big"]
    env = cold_pull(lab, cluster, img, args.clients)
    try:
        size, tput = warm_throughput(lab, env, img, args.reps, args.clients)
    finally:
        env["hap"].stop()
        for w in env["nodes"]:
            w.stop()
        env["up"].stop()
    first, misses = miss_share(lab, cluster, args.keys)
    mb = 1e6
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    with open("/proc/loadavg") as f:
        load = f.read().split(" ", 3)[:3]
    lines = [
        "# winch cluster bench (HAProxy + 3 nodes, loopback)",
        "",
        "Written by `bench/run cluster` on %s; method: the docstring of bench/cluster.py (and "
        "bench/README.md, \"Cluster\")." % datetime.datetime.now(
            datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "",
        "- winch %s, %s; %d CPUs; HAProxy from deploy/haproxy/haproxy.cfg; %d repetitions, "
        "medians; load average at the end: %s" % (
            commit, subprocess.run(["haproxy", "-v"], capture_output=True,
                                   text=True).stdout.split("\n")[0].strip(),
            os.cpu_count(), args.reps, load),
        "",
        "| measure | value |",
        "|---|---|",
        "| cold pull of %s (%d blobs, %d MiB) by %d clients at once: upstream GETs per blob "
        "| %s (%.1f s) |" % (img["repo"], len(env["per_blob"]),
                             sum(b["size"] for b in img["blobs"].values()) >> 20, args.clients,
                             env["per_blob"], env["elapsed"]),
    ]
    for label in ("haproxy", "node"):
        one, agg = tput[label]
        lines.append("| warm GET of a %d MiB blob, %s: one client / %d clients aggregate "
                     "| %.0f MB/s / %.0f MB/s |" % (size >> 20, "through HAProxy" if label ==
                                                    "haproxy" else "its node directly",
                                                    args.clients, one / mb, agg / mb))
    lines.append("| 4th node added: cached blobs that became misses | %d of %d (%.1f %%; "
                 "modulo hashing: ~75 %%) |" % (misses, first, 100.0 * misses / first))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
