#!/usr/bin/env python3
"""archmap.py against tiny synthetic trees: it must pass a clean tree and name every kind of
violation it promises to catch (ctest: unit.test_archmap)."""

import contextlib
import io
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archmap  # noqa: E402

CLEAN = {
    "common/err.h": "#include <stddef.h>\nint err(void);\n",
    "common/err.c": '#include "common/err.h"\n\nint err(void)\n{\n    return 0;\n}\n',
    "config/config.h": '#include "common/err.h"\n',
    "config/config.c": '#include "config/config.h"\n#include <jansson.h>\n',
    "cache/cache.h": '#include "config/config.h"\n#include <uv.h>\n',
    "cache/internal.h": '#include "cache/cache.h"\n',
    "cache/store.c": '#include "cache/internal.h"\n#include "common/err.h"\n',
    "policy/policy.h": '#include "config/config.h"\n',
    "policy/policy.c": '#include "policy/policy.h"\n',
    "proxy/server.h": '#include "cache/cache.h"\n#include "policy/policy.h"\n',
    "proxy/server.c": '#include "proxy/server.h"\n#include <llhttp.h>\n',
    "proxy/conn_internal.h": '#include "proxy/server.h"\n',
    "proxy/conn.c": '#include "proxy/conn_internal.h"\n',
    "proxy/conn_tls.c": '#include "proxy/conn_internal.h"\n',
    # Outside the modules: never read.
    "tests/unit/test_x.c": '#include "proxy/server.h"\n#include "cache/internal.h"\n',
}


def body(n):
    """A function whose body spans n lines, brace to brace."""
    return "void f%d(void)\n{\n" % n + "    x();\n" * (n - 2) + "}\n"


class ArchmapTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="archmap-")
        self.write(CLEAN)

    def tearDown(self):
        shutil.rmtree(self.root)

    def write(self, files):
        for path, text in files.items():
            full = os.path.join(self.root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)

    def run_map(self, *extra):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = archmap.main(["--root", self.root] + list(extra))
        return rc, out.getvalue()

    def assert_fails_with(self, text):
        rc, out = self.run_map()
        self.assertEqual(rc, 1, out)
        self.assertIn(text, out)
        rc2, out2 = self.run_map("--report")
        self.assertEqual(rc2, 0)
        self.assertIn(text, out2)
        return out

    def test_clean_tree_passes(self):
        rc, out = self.run_map()
        self.assertEqual(rc, 0, out)
        self.assertIn("archmap: ok: 0 cycles, 0 wrong includes", out)
        self.assertIn("proxy   -> cache (1), policy (1)", out)
        self.assertIn("config  -> common (1)", out)
        # x.c and x.h are one node; a private header is a node of its own.
        self.assertRegex(out, r"proxy/conn +-> proxy/conn_internal\n")
        self.assertRegex(out, r"proxy/conn_internal +-> proxy/server\n")
        self.assertNotIn("tests/", out)

    def test_file_cycle(self):
        self.write({"proxy/handlers.h": '#include "proxy/server.h"\n',
                    "proxy/server.c": '#include "proxy/server.h"\n#include "proxy/handlers.h"\n',
                    "proxy/server.h": '#include "proxy/handlers.h"\n'})
        # server.h includes handlers.h, handlers.h includes server.h: a two-node cycle.
        self.assert_fails_with("include cycle: proxy/handlers -> proxy/server -> proxy/handlers")

    def test_longer_cycle_through_c_files(self):
        self.write({"proxy/a.h": "", "proxy/b.h": "", "proxy/c.h": "",
                    "proxy/a.c": '#include "proxy/b.h"\n',
                    "proxy/b.c": '#include "proxy/c.h"\n',
                    "proxy/c.c": '#include "proxy/a.h"\n'})
        self.assert_fails_with("include cycle: proxy/a -> proxy/b -> proxy/c -> proxy/a")

    def test_private_header_including_its_module_is_no_cycle(self):
        # cache.c -> internal.h -> cache.h: internal.h is part of cache's own interface.
        self.write({"cache/cache.c": '#include "cache/cache.h"\n#include "cache/internal.h"\n',
                    "common/util.h": '#include "common/err.h"\n',
                    "common/err.c": '#include "common/err.h"\n#include "common/util.h"\n'})
        rc, out = self.run_map()
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"cache/internal +-> cache/cache\n")

    def test_cycle_through_a_private_header(self):
        # store.c -> internal.h -> fill.h, and fill.c -> store.h: store and fill need each other.
        self.write({"cache/internal.h": '#include "cache/cache.h"\n#include "cache/fill.h"\n',
                    "cache/fill.h": "", "cache/fill.c": '#include "cache/store.h"\n',
                    "cache/store.h": ""})
        self.assert_fails_with("include cycle: cache/fill -> cache/store -> cache/fill")

    def test_cycle_between_headers(self):
        self.write({"proxy/a.h": '#include "proxy/b.h"\n', "proxy/b.h": '#include "proxy/a.h"\n'})
        self.assert_fails_with("include cycle: proxy/a -> proxy/b -> proxy/a")

    def test_arrow_against_module_order(self):
        self.write({"config/config.c": '#include "config/config.h"\n#include "cache/cache.h"\n'})
        out = self.assert_fails_with(
            "config/config.c:2: config includes cache/cache.h: against the module order")
        self.assertIn("1 wrong includes", out)

    def test_cache_and_policy_do_not_include_each_other(self):
        self.write({"policy/policy.c": '#include "policy/policy.h"\n#include "cache/cache.h"\n'})
        self.assert_fails_with("policy/policy.c:2: policy includes cache/cache.h")

    def test_common_includes_nothing_of_ours(self):
        self.write({"common/err.c": '#include "common/err.h"\n#include "config/config.h"\n'})
        self.assert_fails_with("(common may include no other module)")

    def test_private_header_of_another_module(self):
        self.write({"proxy/server.c": '#include "proxy/server.h"\n#include "cache/internal.h"\n'})
        self.assert_fails_with("proxy/server.c:2: includes cache/internal.h, a private header")

    def test_third_party_headers(self):
        self.write({"cache/store.c": '#include "cache/internal.h"\n#include <llhttp.h>\n',
                    "common/err.c": "#include <stdio.h>\n#include <openssl/evp.h>\n"})
        out = self.assert_fails_with("cache/store.c:2: cache includes <llhttp.h>")
        self.assertIn("common/err.c:2: common includes <openssl/evp.h>", out)

    def test_unresolved_quoted_include(self):
        self.write({"proxy/server.c": '#include "proxy/nope.h"\n'})
        self.assert_fails_with('proxy/server.c:1: #include "proxy/nope.h" names no file')

    def test_bare_name_resolves_beside_the_file(self):
        self.write({"cache/store.c": '#include "internal.h"\n'})
        rc, out = self.run_map()
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"cache/store +-> cache/internal\n")

    def test_file_length(self):
        self.write({"proxy/big.c": "int x;\n" * 901, "proxy/ok.c": "int y;\n" * 900})
        out = self.assert_fails_with("proxy/big.c: 901 lines (over 900)")
        self.assertNotIn("proxy/ok.c: 900 lines", out)

    def test_function_length(self):
        self.write({"proxy/f.c": body(101) + "\n" + body(100)})
        out = self.assert_fails_with("proxy/f.c:2: f101(): 101 lines (over 100)")
        self.assertNotIn("f100():", out)
        self.assertIn(" 100  proxy/f.c:105:f100", out)

    def test_function_scan_ignores_literals_comments_and_initialisers(self):
        src = (
            "static const char *s = \"{ not a body }\";\n"
            "static const struct x tbl[] = {\n    {1, 2},\n};\n"
            "struct y {\n    int a;\n};\n"
            "#define M(x) { x }\n"
            "/* int fake(void) { */\n"
            "static int real(int a,\n                int (*cb)(void))\n{\n"
            "    if (a) {\n        return '}';\n    }\n    return 0;\n}\n")
        self.write({"proxy/f.c": src})
        funcs = archmap.functions(src)
        self.assertEqual(funcs, [("real", 12, 17)])


if __name__ == "__main__":
    unittest.main()
