#!/usr/bin/python3
"""The command-line help, printed from one table (proxy/usage.c): `winch --help` names every
command, `winch help CMD` and `winch CMD --help` print the same text, and every long option a
command's help lists is accepted by that command's parser: the command run with the option (and
a valid value) never answers with an unknown-option or usage error, while the same run with an
option nobody defines does (so the check can fail). serve's options are checked through
check-config: both hand their arguments to the same config_load, and serve would not exit.
Everything runs against a scratch cache whose only upstream is a closed loopback port."""

import json
import os
import re
import subprocess

import lab

REJECTED = ("unknown option", "unknown flag", "unexpected argument", "usage:", "needs a value",
            "missing value")


def winch(*args, timeout=60):
    return subprocess.run([lab.WINCH_BIN] + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def commands():
    out = winch("--help").stdout
    return [m.group(1) for m in re.finditer(r"^  winch ([a-z][a-z-]*)", out, re.M)]


def options(cmd):
    """[(flags, arg)] from the options section of `winch help CMD`."""
    text = winch("help", cmd).stdout
    if "\noptions:\n" not in text:
        return []
    res = []
    for line in text.split("\noptions:\n", 1)[1].splitlines():
        m = re.match(r"^  (-[^\s,]+(?:, -[^\s,]+)*)(?: (\S+))?(?:  |$)", line)
        if m:
            res.append(([f.strip(",") for f in m.group(1).split(", ")], m.group(2)))
    return res


class CliHelp(lab.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = lab.tmpdir("winch-help-")
        cls.cache = os.path.join(cls.d, "cache")
        cls.cfg = os.path.join(cls.d, "config.json")
        with open(cls.cfg, "w") as f:
            json.dump({"cache_dir": cls.cache, "listen": "127.0.0.1:0",
                       "upstreams": [{"name": "docker.io", "url": "http://127.0.0.1:1"}]}, f)
        # import creates the cache (then fails on the missing file): the other commands get as
        # far as their own options.
        winch("import", "--config", cls.cfg, os.path.join(cls.d, "none.tar"))
        assert os.path.isdir(os.path.join(cls.cache, "index")), "no cache created"

    def value(self, opt, arg):
        return {
            "FILE": self.cfg if opt == "--config" else os.path.join(self.d, "out.tar"),
            "DIR": self.cache, "HOST:PORT": "127.0.0.1:1", "URL": "http://127.0.0.1:1",
            "NAME=URL": "docker.io=http://127.0.0.1:1", "LEVEL": "info", "DURATION": "30d",
            "dangling=true": "dangling=true", "OS/ARCH[/VARIANT]|all": "linux/amd64",
        }[arg]

    def argv(self, cmd, opt, value):
        """A whole invocation of cmd with opt (value None: a switch)."""
        ref = "lab/app:v1"
        pre, operands = {
            "serve": (["check-config"], []), "check-config": (["check-config"], []),
            "inspect": ([cmd], [ref]), "rm": ([cmd], [ref]),
            "warm": ([cmd], [ref] + ([] if opt == "--server" else
                                     ["--server", "http://127.0.0.1:1"])),
            "export": ([cmd], [ref] + ([] if opt in ("--output", "-o") else
                                       ["-o", os.path.join(self.d, "x.tar")])),
            "import": ([cmd], [os.path.join(self.d, "none.tar")]),
            "pin": ([cmd], [ref, "sha256:" + "0" * 64]), "unpin": ([cmd], [ref]),
            "policy": (["policy", "explain"], [ref]),
        }.get(cmd, ([cmd], []))
        common = [] if opt == "--config" else ["--config", self.cfg]
        return pre + common + [opt] + ([value] if value is not None else []) + operands

    def test_help_from_one_table(self):
        cmds = commands()
        self.assertGreater(len(cmds), 12)
        for cmd in cmds:
            a = winch("help", cmd)
            b = winch(cmd, "--help") if cmd not in ("version", "help") else a
            self.assertEqual(a.returncode, 0, (cmd, a.stderr))
            self.assertEqual(a.stdout, b.stdout, cmd)
            self.assertTrue(a.stdout.startswith("usage: winch " + cmd), a.stdout)
        self.assertEqual(winch("help", "frob").returncode, 2)
        # A usage error prints the same synopsis on stderr.
        p = winch("prune", "--cache-dir", self.cache, "--frob")
        self.assertEqual(p.returncode, 2)
        self.assertIn(winch("help", "prune").stdout.split("\n\n")[0], p.stderr)

    def test_every_listed_option_is_accepted(self):
        checked = 0
        for cmd in commands():
            opts = options(cmd)
            longs = [(f, arg) for flags, arg in opts for f in flags if f.startswith("--")]
            if cmd == "serve":
                # Not config_load's: answered by serve itself before it loads anything.
                p = winch("serve", "--version")
                self.assertRegex(p.stdout, r"^winch \S+ \(commit \S+\)")
                longs = [(f, a) for f, a in longs if f != "--version"]
            for opt, arg in longs:
                value = self.value(opt, arg) if arg else None
                p = winch(*self.argv(cmd, opt, value))
                said = p.stderr.lower()
                self.assertFalse([r for r in REJECTED if r in said],
                                 "winch %s: listed option %s refused: %s" % (cmd, opt, p.stderr))
                # The same run with an option nobody defines is refused: the check above can
                # tell the difference.
                p = winch(*self.argv(cmd, "--no-such-option", value))
                self.assertEqual(p.returncode, 2, (cmd, p.stderr))
                self.assertTrue([r for r in REJECTED if r in p.stderr.lower()], (cmd, p.stderr))
                checked += 1
        self.assertGreater(checked, 30)


if __name__ == "__main__":
    lab.main()
