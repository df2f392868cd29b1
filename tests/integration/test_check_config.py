#!/usr/bin/python3
"""`winch check-config`, `winch --version`, and the ./serve script's working directory:

- a good configuration: exit 0, the effective configuration as JSON (defaults filled in), an
  upstream password never printed (its file's path and env variable's name are);
- broken configurations (JSON syntax with line:column, an unknown field, a bad regex, a file
  over the 1 MiB bound, a missing file): exit 2 and the message serve would print;
- --version / -V / serve --version name the version and a commit;
- a non-loopback listener without client authentication is warned about at start;
- ./serve run from another directory reads the caller's relative --config (a stub winch and
  cmake stand in, so the shared build directory is not reconfigured); winch-cache/ in the
  repository is git-ignored."""

import json
import os
import re
import shutil
import subprocess

import lab

SECRET = "s3cret-Pa55word-xyz"


def run(*args, env=None, cwd=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([lab.WINCH_BIN] + list(args), capture_output=True, text=True, env=e,
                       cwd=cwd, timeout=30)
    return p.returncode, p.stdout, p.stderr


class CheckConfig(lab.TestCase):
    def setUp(self):
        self.dir = lab.tmpdir("winch-check-")

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_good_config(self):
        pwfile = self.write("pw", SECRET + "\n")
        cfg = {"listen": "127.0.0.1:5999", "cache_dir": "/tmp/somewhere", "tag_ttl_s": 7,
               "upstreams": [{"name": "a.example", "url": "https://a.example",
                              "username": "u", "password_file": pwfile},
                             {"name": "b.example", "url": "https://b.example",
                              "username": "v", "password_env": "WINCH_TEST_PW"}],
               "policy": [{"match": "a.example/**", "deny_tags": ["^latest$"]}],
               "auth": {"htpasswd": pwfile},
               "trusted_proxies": ["127.0.0.1", "fd00::/8"]}
        cfg["upstreams"][1]["pass_ns"] = True
        path = self.write("good.json", json.dumps(cfg))
        rc, out, err = run("check-config", "--config", path, env={"WINCH_TEST_PW": SECRET})
        self.assertEqual(rc, 0, err)
        self.assertNotIn(SECRET, out + err)
        eff = json.loads(out)
        self.assertEqual(eff["listen"], "127.0.0.1:5999")
        self.assertEqual(eff["tag_ttl_s"], 7)
        self.assertEqual(eff["negative_ttl_s"], 10, "a default is shown")
        self.assertEqual(eff["upstreams"][0]["password_file"], pwfile)
        self.assertEqual(eff["upstreams"][1]["password_env"], "WINCH_TEST_PW")
        self.assertEqual(eff["upstreams"][0]["password"], "(redacted)")
        self.assertEqual(eff["auth"]["htpasswd"], pwfile)
        self.assertEqual(eff["policy"][0]["deny_tags"], ["^latest$"])
        self.assertEqual(eff["trusted_proxies"], ["127.0.0.1/32", "fd00::/8"])
        self.assertEqual([u["pass_ns"] for u in eff["upstreams"]], [False, True])
        # Flags override the file, as for serve.
        rc, out, _ = run("check-config", "--config", path, "--listen", "127.0.0.1:7000",
                         env={"WINCH_TEST_PW": SECRET})
        self.assertEqual((rc, json.loads(out)["listen"]), (0, "127.0.0.1:7000"))
        # No config at all: the defaults.
        rc, out, _ = run("check-config")
        self.assertEqual(rc, 0)
        self.assertEqual(json.loads(out)["upstreams"][0]["name"], "docker.io")

    def bad(self, text, want, name="bad.json"):
        path = self.write(name, text) if text is not None else os.path.join(self.dir, name)
        rc, out, err = run("check-config", "--config", path)
        self.assertEqual(rc, 2, "%r: %s" % (text and text[:80], err))
        self.assertEqual(out, "")
        self.assertRegex(err, want)
        return err

    def test_broken_configs(self):
        self.bad('{"tag_ttl_s": 5,\n "listen": }', r"^winch: .*bad\.json:2:\d+: ")
        self.bad('{"tag_ttl": 5}', r"tag_ttl: unknown field")
        self.bad('{"upstreams": [{"name": "x", "url": "http://x", "colour": 1}]}',
                 r"upstreams\[0\]\.colour: unknown field")
        self.bad('{"policy": [{"match": "**", "deny_tags": ["(x"]}]}',
                 r"policy\[0\]\.deny_tags\[0\]")
        self.bad('{"tag_ttl_s": -1}', r"tag_ttl_s: must be")
        self.bad('{"trusted_proxies": ["10.0.0.0/8", "haproxy"]}',
                 r"trusted_proxies\[1\]: \"haproxy\" is not an IPv4 or IPv6 address")
        self.bad('{"trusted_proxies": ["0.0.0.0/0"]}', r"trusted_proxies\[0\]: .* trusts every")
        huge = '{"policy": [' + ",".join(['{"match": "a/b%d"}' % i for i in range(80000)]) + "]}"
        self.assertGreater(len(huge), 1 << 20)
        self.bad(huge, r"larger than 1048576 bytes", name="huge.json")
        self.bad(None, r"nope\.json: cannot open: No such file", name="nope.json")
        self.bad("\x00\xff garbage", r"bad\.json:1:\d+")

    def test_version(self):
        outs = set()
        for args in (["--version"], ["-V"], ["version"], ["serve", "--version"]):
            rc, out, _ = run(*args)
            self.assertEqual(rc, 0, args)
            self.assertRegex(out, r"^winch \d+\.\d+\.\d+ \(commit ([0-9a-f]{4,}|unknown)\)\n$")
            outs.add(out)
        self.assertEqual(len(outs), 1)
        git = shutil.which("git")
        if git and os.path.exists(os.path.join(lab.SOURCE_DIR, ".git")):
            head = subprocess.run([git, "-C", lab.SOURCE_DIR, "rev-parse", "HEAD"],
                                  capture_output=True, text=True).stdout.strip()
            commit = re.search(r"commit ([0-9a-f]+)", outs.pop()).group(1)
            # Configure-time: the build may be older than HEAD, but is a commit of this repo.
            full = subprocess.run([git, "-C", lab.SOURCE_DIR, "rev-parse", "--verify", "-q",
                                   commit + "^{commit}"], capture_output=True, text=True)
            self.assertEqual(full.returncode, 0, "commit %s not in the repository" % commit)
            self.assertTrue(head)

    def test_open_listener_warning(self):
        """0.0.0.0 without auth is warned about at start; 127.0.0.1 is not. Port 0, stopped at
        once (nothing is sent anywhere)."""
        for host, warned in (("0.0.0.0", True), ("127.0.0.1", False)):
            cache = lab.tmpdir("winch-warn-cache-")
            p = subprocess.Popen([lab.WINCH_BIN, "serve", "--listen", host + ":0", "--cache-dir",
                                  cache, "--upstream", "docker.io=http://127.0.0.1:9"],
                                 stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            lines = []
            try:
                for line in p.stderr:
                    lines.append(line)
                    if "listening on" in line:
                        break
            finally:
                p.terminate()
                rest, _ = p.communicate(timeout=15)
            text = "".join(lines)
            self.assertIn("listening on", text)
            self.assertEqual("which is not loopback, with no client authentication" in text,
                             warned, "%s: %s" % (host, text))
            self.assertEqual(p.returncode, 0)


class ServeScript(lab.TestCase):
    def test_relative_paths_are_the_callers(self):
        root = lab.tmpdir("winch-serve-")
        repo = os.path.join(root, "repo")
        os.makedirs(os.path.join(repo, "build"))
        os.makedirs(os.path.join(root, "stubs"))
        shutil.copy(os.path.join(lab.SOURCE_DIR, "serve"), repo)
        with open(os.path.join(repo, "build", "winch"), "w") as f:
            f.write('#!/bin/sh\necho "cwd=$(pwd)"\necho "args=$*"\ncat "$3"\n')
        with open(os.path.join(root, "stubs", "cmake"), "w") as f:
            f.write('#!/bin/sh\necho "cmake $*" >&2\n')
        for p in (os.path.join(repo, "build", "winch"), os.path.join(root, "stubs", "cmake")):
            os.chmod(p, 0o755)
        caller = os.path.join(root, "elsewhere")
        os.makedirs(caller)
        with open(os.path.join(caller, "mycfg.json"), "w") as f:
            f.write('{"marker": "the caller\'s"}\n')
        env = dict(os.environ, PATH=os.path.join(root, "stubs") + ":" + os.environ["PATH"])
        p = subprocess.run([os.path.join(repo, "serve"), "--config", "mycfg.json"], cwd=caller,
                           env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("cwd=%s\n" % caller, p.stdout)
        self.assertIn("args=serve --config mycfg.json\n", p.stdout)
        self.assertIn("the caller's", p.stdout)
        self.assertIn("cmake -S %s -B %s/build" % (repo, repo), p.stderr)

    def test_default_cache_ignored(self):
        git = shutil.which("git")
        if not git or not os.path.exists(os.path.join(lab.SOURCE_DIR, ".git")):
            with open(os.path.join(lab.SOURCE_DIR, ".gitignore")) as f:
                self.assertIn("/winch-cache/", f.read().split("\n"))
            return
        p = subprocess.run([git, "-C", lab.SOURCE_DIR, "check-ignore", "-q",
                            "winch-cache/index/data.mdb"])
        self.assertEqual(p.returncode, 0, "winch-cache/ is not git-ignored")


if __name__ == "__main__":
    lab.main()
