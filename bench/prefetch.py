#!/usr/bin/env python3
"""Prefetch bench (issue 11): a first pull's client-visible time of a multi-arch 3-layer image
through winch with prefetch on against prefetch off, the upstream one round trip away.

    bench/run prefetch [--reps N] [--delay-ms 50]     (or bench/prefetch.py --winch BUILD/winch)

Setup, all on 127.0.0.1: Debian's docker-registry seeded with bench/multi3:v1, an OCI index of
four platforms (linux/amd64, linux/arm64, linux/arm/v7, linux/s390x), each an image of three
layers (random, gzip level 0: 2 MiB, 1 MiB, 512 KiB) built with tests/tools/mkimage.py's
Layout and pushed with push.py; bench/delayfwd.py in front of it holding every request for
--delay-ms (the round trip to a remote registry); winch with one platforms rule
`{"match": "**", "platforms": ["linux/amd64"], "prefetch": ON}`, restarted on an empty cache
for every pull.

Four clients are measured. Two are a script pulling as containerd and skopeo do, one step
after the other: the index by tag, the linux/amd64 manifest by digest, then the config and the
layers:
  - sequential: config, then each layer in turn, on one keep-alive connection;
  - parallel:   config and the three layers at once (4 connections) after the manifest.
Two are the real daemons, each in a loopback-only network namespace (tests/integration/netns.py)
with winch as its mirror on a fixed port (winch restarts on the same port for every pull):
  - dockerd:    `docker pull bench/multi3:v1` (registry-mirrors; max-concurrent-downloads 3);
  - containerd: `ctr images pull --hosts-dir DIR docker.io/bench/multi3:v1` (hosts.toml mirror).
Their time is the wall time of the docker / ctr command, unpacking included; before each pull
the image is removed (`docker rmi`, `ctr images rm --sync`: content too), so every pull is cold
on the client's side as well. `--clients` picks a subset.
Before each pull, one request for another repository (a 404) makes winch's first contact with
the upstream, as a running winch has had. Time = from the index request to the last body byte. Bodies are checked against their digests.
Every number is the median of --reps pulls; on and off take turns within a repetition.
Results: printed, and written to bench/work/prefetch.json and bench/RESULTS-prefetch.md.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(ROOT, 'tests', 'tools'))
import bench as B  # noqa: E402
import mkimage  # noqa: E402

REPO, TAG = 'bench/multi3', 'v1'
PLATFORMS = [{'architecture': 'amd64', 'os': 'linux'}, {'architecture': 'arm64', 'os': 'linux'},
             {'architecture': 'arm', 'os': 'linux', 'variant': 'v7'},
             {'architecture': 's390x', 'os': 'linux'}]
LAYER_SIZES = [2 << 20, 1 << 20, 512 << 10]
ACCEPT_ALL = B.MANIFEST_ACCEPT.split(': ', 1)[1]
CLIENTS = ('sequential', 'parallel', 'dockerd', 'containerd')


def build_image(imgdir):
    layout = mkimage.Layout(os.path.join(imgdir, 'multi3'))
    entries = []
    for i, plat in enumerate(PLATFORMS):
        layers = [mkimage.random_layer(layout, 'l%d.bin' % j, size, seed=3000 + 10 * i + j)
                  for j, size in enumerate(LAYER_SIZES)]
        man = mkimage.put_image(layout, plat, layers)
        entry = dict(man)
        entry['platform'] = dict(plat)
        entries.append(entry)
    index = layout.put_json({'schemaVersion': 2, 'mediaType': mkimage.MT_OCI_INDEX,
                             'manifests': entries}, mkimage.MT_OCI_INDEX)
    layout.tag(index, 'v1')
    layout.finish()
    with open(os.path.join(imgdir, 'images.json'), 'w') as f:
        json.dump([{'name': 'multi3', 'layout': 'multi3', 'ref': 'v1', 'repo': REPO, 'tag': TAG,
                    'extra_tags': [], 'format': 'oci', 'all': True}], f)


class Delay:
    """bench/delayfwd.py in front of the upstream; counts the requests it held."""

    def __init__(self, workdir, upstream, delay_ms):
        self.log = os.path.join(workdir, 'delayfwd.log')
        if os.path.exists(self.log):
            os.unlink(self.log)
        self.proc = B.Proc('delayfwd', [sys.executable, os.path.join(BENCH, 'delayfwd.py'),
                                        '--to', '127.0.0.1:%d' % upstream.port,
                                        '--delay-ms', str(delay_ms)], self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(r'listening on 127\.0\.0\.1:(\d+)', open(self.log).read())
            if m:
                self.port = int(m.group(1))
                return
            time.sleep(0.01)
        raise RuntimeError('delayfwd did not start; see ' + self.log)

    def stop(self):
        self.proc.stop()
        m = re.search(r'requests (\d+)', open(self.log).read())
        return int(m.group(1)) if m else None


def get(conn, path, accept=None):
    conn.putrequest('GET', path, skip_accept_encoding=True)
    if accept:
        conn.putheader('Accept', accept)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError('GET %s: HTTP %d %r' % (path, r.status, body[:200]))
    return r, body


def check(body, digest):
    if 'sha256:' + hashlib.sha256(body).hexdigest() != digest:
        raise RuntimeError('body of %s does not hash to it' % digest)


def pull(port, parallel):
    """One pull of linux/amd64; returns seconds from the index request to the last byte."""
    base = '/v2/%s/' % REPO
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    t0 = time.monotonic()
    _, body = get(conn, base + 'manifests/' + TAG, ACCEPT_ALL)
    index = json.loads(body)
    desc = next(d for d in index['manifests']
                if d['platform'] == {'architecture': 'amd64', 'os': 'linux'})
    _, body = get(conn, base + 'manifests/' + desc['digest'], desc['mediaType'])
    check(body, desc['digest'])
    man = json.loads(body)
    blobs = [man['config']['digest']] + [layer['digest'] for layer in man['layers']]
    if not parallel:
        for d in blobs:
            check(get(conn, base + 'blobs/' + d)[1], d)
    else:
        errors = []

        def one(d):
            c = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
            try:
                check(get(c, base + 'blobs/' + d)[1], d)
            except Exception as e:  # reported below
                errors.append(e)
            finally:
                c.close()
        ts = [threading.Thread(target=one, args=(d,)) for d in blobs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
    t = time.monotonic() - t0
    conn.close()
    return t


class FixedWinch(B.Winch):
    """B.Winch on one fixed port across restarts: the daemons' mirror address stays put."""

    def __init__(self, port, *args, **kw):
        super().__init__(*args, **kw)
        self.fixed = port

    def argv(self, listen=None, cache=None):
        return super().argv('127.0.0.1:%d' % self.fixed, cache)


class Daemons:
    """dockerd and containerd in one loopback-only namespace, winch's fixed port forwarded in."""

    def __init__(self, which):
        sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
        import netns  # noqa: E402 (tests/integration: the suite's namespace harness)
        self.netns = netns
        self.port = B.free_port()
        self.ns = netns.Netns()
        self.ns.check_isolated()
        self.fwd = netns.Forward(self.ns, '127.0.0.1:%d' % self.port, port=self.port,
                                 name='forward-bench')
        mirror = self.fwd.hostport
        self.dockerd = netns.Dockerd(self.ns, mirror=mirror, name='dockerd-bench') \
            if 'dockerd' in which else None
        self.ctrd = netns.Containerd(self.ns, name='containerd-bench') \
            if 'containerd' in which else None
        if self.ctrd:
            self.hosts = self.ctrd.hosts_dir({'docker.io': (
                'http://127.0.0.1:%d' % netns.dead_port(), 'http://' + mirror)})

    def pull(self, client):
        """One cold pull by the daemon; returns its wall time in seconds."""
        ref = 'docker.io/%s:%s' % (REPO, TAG)
        t0 = time.monotonic()
        if client == 'dockerd':
            self.dockerd.docker('pull', '%s:%s' % (REPO, TAG))
        else:
            self.ctrd.ctr('images', 'pull', '--hosts-dir', self.hosts, '--snapshotter', 'native',
                          ref)
        t = time.monotonic() - t0
        if client == 'dockerd':
            got = self.dockerd.docker('image', 'inspect', '--format', '{{.Id}}',
                                      '%s:%s' % (REPO, TAG)).stdout.strip()
            self.dockerd.docker('rmi', '%s:%s' % (REPO, TAG))
        else:
            got = self.ctrd.images().get(ref)
            self.ctrd.ctr('images', 'rm', '--sync', ref)
        if not got:
            raise RuntimeError('%s pulled nothing' % client)
        return t

    def stop(self):
        for d in (self.dockerd, self.ctrd):
            if d:
                d.stop()
        self.fwd.stop()
        self.ns.stop()


def warm_up(port):
    """A running winch has talked to its upstream before: one request for another repository
    makes winch's first contact (its GET /v2/ to the upstream) before the measured pull, which
    would otherwise pay one more round trip in both modes."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    conn.request('GET', '/v2/bench/warm-up/manifests/none', headers={'Accept': ACCEPT_ALL})
    conn.getresponse().read()
    conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--winch', required=True)
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--delay-ms', type=float, default=50.0)
    ap.add_argument('--clients', default=','.join(CLIENTS),
                    help='comma-separated subset of %s' % ', '.join(CLIENTS))
    ap.add_argument('--work', default=os.path.join(BENCH, 'work', 'prefetch'))
    ap.add_argument('--results', default=os.path.join(BENCH, 'RESULTS-prefetch.md'))
    a = ap.parse_args()
    clients = [c for c in CLIENTS if c in a.clients.split(',')]
    if not clients or set(a.clients.split(',')) - set(CLIENTS):
        ap.error('--clients: a subset of ' + ','.join(CLIENTS))
    os.makedirs(a.work, exist_ok=True)
    daemons = None
    imgdir = os.path.join(a.work, 'images')
    try:
        up = B.Registry('upstream', os.path.join(a.work, 'upstream')).start(fresh=True)
        build_image(imgdir)
        subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'tools', 'push.py'), imgdir,
                        '127.0.0.1:%d' % up.port], check=True, timeout=300,
                       stderr=subprocess.DEVNULL)
        if set(clients) & {'dockerd', 'containerd'}:
            daemons = Daemons(clients)
        res = {}
        for rep in range(a.reps):
            for client in clients:
                for mode in (('on', 'off') if rep % 2 == 0 else ('off', 'on')):
                    wdir = os.path.join(a.work, 'winch-' + mode)
                    delay = Delay(a.work, up, a.delay_ms)
                    if client in ('dockerd', 'containerd'):
                        w = FixedWinch(daemons.port, a.winch, wdir, delay, 3600)
                    else:
                        w = B.Winch(a.winch, wdir, delay, 3600)
                    with open(w.cfg, 'w') as f:
                        json.dump({'tag_ttl_s': 3600, 'log_level': 'info', 'platforms': [
                            {'match': '**', 'platforms': ['linux/amd64'],
                             'prefetch': mode == 'on'}]}, f)
                    w.start(fresh=True)
                    warm_up(w.port)
                    if daemons and client in ('dockerd', 'containerd'):
                        t = daemons.pull(client)
                    else:
                        t = pull(w.port, client == 'parallel')
                    time.sleep(0.5)  # a prefetch still running is counted too
                    w.stop()
                    n = delay.stop()
                    r = res.setdefault(client, {}).setdefault(mode, {'s': [], 'upstream': []})
                    r['s'].append(t)
                    r['upstream'].append(n - 1)  # not the warm-up's HEAD (404)
                    B.log('rep %d %-10s prefetch %-3s %.1f ms, %s upstream requests' % (
                        rep + 1, client, mode, t * 1000, n))
    finally:
        if daemons:
            daemons.stop()
        B.Proc.stop_all()
    lines = ['# Prefetch bench results', '',
             'Written by `bench/run prefetch` on %s; method: the docstring of bench/prefetch.py '
             '(and bench/README.md, "Prefetch").' % datetime.datetime.now(
                 datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), '',
             '- winch %s; upstream docker-registry behind bench/delayfwd.py holding each request '
             '%g ms; image: 4 platforms x 3 layers (%s KiB) + config; %d repetitions, medians; '
             'load average at the end: %s' % (
                 subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                                capture_output=True, text=True).stdout.strip(),
                 a.delay_ms, '/'.join(str(s >> 10) for s in LAYER_SIZES), a.reps,
                 open('/proc/loadavg').read().split(' ', 3)[:3]), '',
             '| client | prefetch off (ms) | prefetch on (ms) | on/off | target | '
             'upstream requests off / on |', '|---|---|---|---|---|---|']
    raw = ['', 'Every pull (ms):', '']
    for client in clients:
        off, on = res[client]['off'], res[client]['on']
        ratio = B.median(on['s']) / B.median(off['s'])
        target = ('≤ 0.7: %s' % ('PASS' if ratio <= 0.7 else 'FAIL')) \
            if client != 'parallel' else 'none'
        lines.append('| %s | %.1f | %.1f | %.3f× | %s | %s / %s |' % (
            client, B.median(off['s']) * 1000, B.median(on['s']) * 1000, ratio, target,
            B.median(off['upstream']), B.median(on['upstream'])))
        for mode in ('off', 'on'):
            raw.append('- %s, prefetch %s: %s' % (client, mode, ', '.join(
                '%.0f' % (x * 1000) for x in res[client][mode]['s'])))
    text = '\n'.join(lines + raw) + '\n'
    print(text)
    with open(os.path.join(a.work, 'prefetch.json'), 'w') as f:
        json.dump(res, f, indent=1)
    with open(a.results, 'w') as f:
        f.write(text)


if __name__ == '__main__':
    main()
