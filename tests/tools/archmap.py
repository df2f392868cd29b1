#!/usr/bin/env python3
"""winch's architecture map and check, from the code's own #include lines.

Prints the folder/file map with line counts, the include arrows between modules (folders, with
counts) and between files, and the longest functions. Then checks the conventions of
docs/architecture.md and fails (exit 1) on:

  - a cycle between file nodes (a file's node is its stem: x.c and x.h together; a header with
    no .c of its own, such as cache/internal.h, is a node by itself);
  - an include against the module order proxy -> {cache, policy} -> config -> common (cache and
    policy never include each other; proxy may include everything);
  - a private header (internal.h, *_internal.h) included from another module;
  - a third-party header a module may not use (common is libc only; cache never knows HTTP, so
    no llhttp; policy does no I/O, so no libuv, LMDB or OpenSSL);
  - a file over 900 lines or a function over 100 lines.

Usage: archmap.py [--root DIR] [--report] [--dot]
  --report  print everything, exit 0 whatever is found
  --dot     print the file graph in Graphviz dot instead (dot -Tsvg > map.svg)

Only python3's standard library; only common/ config/ cache/ policy/ proxy/ are read.
"""

import argparse
import os
import re
import sys

MODULES = ["common", "config", "cache", "policy", "proxy"]

# Which modules each module may include (besides itself): the arrows of docs/architecture.md.
ALLOWED = {
    "common": set(),
    "config": {"common"},
    "cache": {"config", "common"},
    "policy": {"config", "common"},
    "proxy": {"cache", "policy", "config", "common"},
}

# Third-party headers, by library, and which modules may include them. <...> headers not listed
# here are libc/POSIX/system headers, which everyone may use.
THIRD_PARTY = [
    ("uv.h", "libuv"),
    ("jansson.h", "jansson"),
    ("lmdb.h", "lmdb"),
    ("llhttp.h", "llhttp"),
    ("openssl/", "openssl"),
]
THIRD_PARTY_ALLOWED = {
    "common": set(),
    "config": {"jansson"},
    "cache": {"libuv", "lmdb", "openssl", "jansson"},
    "policy": {"jansson"},
    "proxy": {"libuv", "jansson", "lmdb", "llhttp", "openssl"},
}

MAX_FILE_LINES = 900
MAX_FUNC_LINES = 100
TOP_FUNCS = 10

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def is_private_header(path):
    base = os.path.basename(path)
    return base == "internal.h" or base.endswith("_internal.h")


def node_of(path):
    """A file's node: its path without the extension (x.c and x.h are one node)."""
    return os.path.splitext(path)[0]


def module_of(path):
    return path.split("/", 1)[0]


def third_party_lib(header):
    for prefix, lib in THIRD_PARTY:
        if header == prefix or (prefix.endswith("/") and header.startswith(prefix)):
            return lib
    return None


class Include:
    def __init__(self, src, line, target, angle):
        self.src = src  # repo-relative path of the including file
        self.line = line
        self.target = target  # as written
        self.angle = angle
        self.resolved = None  # repo-relative path of a project file, or None


def collect_files(root):
    files = []
    for mod in MODULES:
        d = os.path.join(root, mod)
        if not os.path.isdir(d):
            continue
        for dirpath, dirnames, names in os.walk(d):
            dirnames.sort()
            for n in sorted(names):
                if n.endswith((".c", ".h")):
                    full = os.path.join(dirpath, n)
                    files.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return files


def read_text(root, path):
    with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
        return f.read()


def parse_includes(root, path, text, known):
    incs = []
    for i, line in enumerate(text.splitlines(), 1):
        m = INCLUDE_RE.match(line)
        if not m:
            continue
        inc = Include(path, i, m.group(2), m.group(1) == "<")
        if not inc.angle:
            # Project includes are written from the repository root ("cache/cache.h"); a bare
            # name is looked up beside the including file, as the compiler would.
            here = os.path.dirname(path)
            for cand in (inc.target, os.path.normpath(os.path.join(here, inc.target))):
                cand = cand.replace(os.sep, "/")
                if cand in known:
                    inc.resolved = cand
                    break
        incs.append(inc)
    return incs


def strip_c(text):
    """Text with comments, string and character literals and preprocessor lines blanked out
    (newlines kept, so line numbers stay right)."""
    out = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c in " \t":
            out.append(c)
            i += 1
            continue
        if at_line_start and c == "#":
            # A preprocessor line, with its backslash continuations.
            while i < n and text[i] != "\n":
                if text[i] == "\\" and i + 1 < n and text[i + 1] == "\n":
                    out.append("\n")
                    i += 2
                    continue
                i += 1
            continue
        at_line_start = False
        if c == "/" and i + 1 < n and text[i + 1] == "*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j - 1]) + c)
            i = j
            continue
        if c == "\n":
            at_line_start = True
        out.append(c)
        i += 1
    return "".join(out)


FUNC_HEAD_RE = re.compile(r"([A-Za-z_]\w*)\s*\(([^()]|\([^()]*\))*\)\s*$", re.S)
NOT_FUNCS = {"if", "for", "while", "switch", "return", "sizeof"}


def functions(text):
    """(name, first line, last line) of every function definition: a top-level '{' whose
    preceding declaration ends in a parameter list. Lines are counted from the opening brace
    to the closing one."""
    s = strip_c(text)
    found = []
    depth = 0
    head_start = 0  # where the current top-level declaration began
    current = None
    line = 1
    for i, c in enumerate(s):
        if c == "\n":
            line += 1
        elif c == "{":
            if depth == 0:
                head = s[head_start:i]
                m = FUNC_HEAD_RE.search(head)
                if m and "=" not in head and m.group(1) not in NOT_FUNCS:
                    current = (m.group(1), line)
                else:
                    current = None
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                if current:
                    found.append((current[0], current[1], line))
                current = None
                head_start = i + 1
            if depth < 0:
                depth = 0
        elif c == ";" and depth == 0:
            head_start = i + 1
    return found


def cycle_edges(edges, h_edges, c_edges, with_c):
    """The arrows cycles are looked for in. A header with no .c of its own (cache/internal.h,
    common/util.h) has no implementation that could depend back on anything: what a .c file
    gets through it is what it includes. So an arrow from a .c file into such a header stands
    for the arrows out of it (followed through further such headers): config.c -> internal.h
    -> config.h is config's own business, not a cycle, while a.c -> internal.h -> b.h together
    with b.c -> a.h is one. Arrows from headers are kept as they are, so two headers that
    include each other are a cycle whether or not they have a .c."""
    def closure(start):
        seen, todo, out = {start}, [start], set()
        while todo:
            for w in edges.get(todo.pop(), ()):
                if w in with_c:
                    out.add(w)
                elif w not in seen:
                    seen.add(w)
                    todo.append(w)
        return out
    result = {}
    for a in set(h_edges) | set(c_edges):
        targets = set(h_edges.get(a, ()))
        for b in c_edges.get(a, ()):
            targets |= {b} if b in with_c else closure(b)
        targets.discard(a)
        result[a] = targets
    return result


def find_cycles(nodes, edges):
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    sccs.append(sorted(comp))
    return sccs


def cycle_path(comp, edges):
    """One concrete cycle through a strongly connected component: a -> b -> ... -> a."""
    members = set(comp)
    start = comp[0]
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, ())):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    return comp + [start]


def analyse(root):
    files = collect_files(root)
    known = set(files)
    lines = {}
    incs = []
    funcs = []
    for f in files:
        text = read_text(root, f)
        lines[f] = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        incs.extend(parse_includes(root, f, text, known))
        if f.endswith(".c"):
            funcs.extend((f, name, a, b) for name, a, b in functions(text))
    return files, lines, incs, funcs


def check(files, lines, incs, funcs):
    problems = []
    edges, h_edges, c_edges = {}, {}, {}
    for inc in incs:
        src_mod = module_of(inc.src)
        if inc.resolved:
            a, b = node_of(inc.src), node_of(inc.resolved)
            if a != b:
                edges.setdefault(a, set()).add(b)
                by_kind = c_edges if inc.src.endswith(".c") else h_edges
                by_kind.setdefault(a, set()).add(b)
            dst_mod = module_of(inc.resolved)
            if dst_mod != src_mod:
                if dst_mod not in ALLOWED[src_mod]:
                    problems.append("%s:%d: %s includes %s: against the module order "
                                    "(%s may include %s)" %
                                    (inc.src, inc.line, src_mod, inc.resolved, src_mod,
                                     ", ".join(sorted(ALLOWED[src_mod])) or "no other module"))
                if is_private_header(inc.resolved):
                    problems.append("%s:%d: includes %s, a private header of %s" %
                                    (inc.src, inc.line, inc.resolved, dst_mod))
        elif not inc.angle:
            problems.append('%s:%d: #include "%s" names no file under %s' %
                            (inc.src, inc.line, inc.target, ", ".join(MODULES)))
        else:
            lib = third_party_lib(inc.target)
            if lib and lib not in THIRD_PARTY_ALLOWED[src_mod]:
                problems.append("%s:%d: %s includes <%s>: %s may not use %s" %
                                (inc.src, inc.line, src_mod, inc.target, src_mod, lib))
    nodes = {node_of(f) for f in files}
    with_c = {node_of(f) for f in files if f.endswith(".c")}
    ce = cycle_edges(edges, h_edges, c_edges, with_c)
    cycles = find_cycles(nodes, ce)
    for comp in cycles:
        problems.append("include cycle: " + " -> ".join(cycle_path(comp, ce)))
    for f in files:
        if lines[f] > MAX_FILE_LINES:
            problems.append("%s: %d lines (over %d)" % (f, lines[f], MAX_FILE_LINES))
    for f, name, a, b in funcs:
        if b - a + 1 > MAX_FUNC_LINES:
            problems.append("%s:%d: %s(): %d lines (over %d)" %
                            (f, a, name, b - a + 1, MAX_FUNC_LINES))
    return problems, edges, cycles


def print_map(files, lines, incs, funcs, edges):
    print("== files (lines) ==")
    for mod in MODULES:
        mine = [f for f in files if module_of(f) == mod]
        if not mine:
            continue
        print("%s/  %d files, %d lines" % (mod, len(mine), sum(lines[f] for f in mine)))
        for f in mine:
            mark = "  <-- over %d" % MAX_FILE_LINES if lines[f] > MAX_FILE_LINES else ""
            print("  %-28s %5d%s" % (f.split("/", 1)[1], lines[f], mark))

    print("\n== module arrows (include lines) ==")
    counts = {}
    for inc in incs:
        if inc.resolved and module_of(inc.resolved) != module_of(inc.src):
            key = (module_of(inc.src), module_of(inc.resolved))
            counts[key] = counts.get(key, 0) + 1
    for mod in MODULES:
        outs = ["%s (%d)" % (b, n) for (a, b), n in sorted(counts.items()) if a == mod]
        print("  %-7s -> %s" % (mod, ", ".join(outs) if outs else "-"))

    print("\n== file arrows (x = x.c + x.h) ==")
    for mod in MODULES:
        for node in sorted({node_of(f) for f in files if module_of(f) == mod}):
            outs = sorted(edges.get(node, ()))
            print("  %-24s -> %s" % (node, " ".join(outs) if outs else "-"))

    print("\n== longest functions (lines, brace to brace) ==")
    ranked = sorted(funcs, key=lambda x: (-(x[3] - x[2] + 1), x[0], x[2]))
    over = [x for x in ranked if x[3] - x[2] + 1 > MAX_FUNC_LINES]
    shown = ranked[:max(TOP_FUNCS, len(over))]
    for f, name, a, b in shown:
        n = b - a + 1
        mark = "  <-- over %d" % MAX_FUNC_LINES if n > MAX_FUNC_LINES else ""
        print("  %4d  %s:%d:%s%s" % (n, f, a, name, mark))


def print_dot(files, edges):
    print("digraph winch {")
    print("  rankdir=LR; node [shape=box, fontsize=10];")
    for mod in MODULES:
        nodes = sorted({node_of(f) for f in files if module_of(f) == mod})
        if not nodes:
            continue
        print('  subgraph "cluster_%s" { label="%s/";' % (mod, mod))
        for n in nodes:
            print('    "%s";' % n)
        print("  }")
    for a in sorted(edges):
        for b in sorted(edges[a]):
            print('  "%s" -> "%s";' % (a, b))
    print("}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--root", default=os.path.normpath(os.path.join(here, "..", "..")))
    ap.add_argument("--report", action="store_true", help="print only; always exit 0")
    ap.add_argument("--dot", action="store_true", help="print the file graph as Graphviz dot")
    args = ap.parse_args(argv)

    files, lines, incs, funcs = analyse(args.root)
    problems, edges, cycles = check(files, lines, incs, funcs)
    if args.dot:
        print_dot(files, edges)
        return 0
    print_map(files, lines, incs, funcs, edges)
    print("\n== checks ==")
    for p in problems:
        print("  " + p)
    n_files = sum(1 for f in files if lines[f] > MAX_FILE_LINES)
    n_funcs = sum(1 for x in funcs if x[3] - x[2] + 1 > MAX_FUNC_LINES)
    n_arrows = len(problems) - len(cycles) - n_files - n_funcs
    summary = ("%d cycles, %d wrong includes, %d files over %d lines, %d functions over %d "
               "lines" % (len(cycles), n_arrows, n_files, MAX_FILE_LINES, n_funcs,
                          MAX_FUNC_LINES))
    if problems:
        print("archmap: FAIL: " + summary + (" (--report: not failing)" if args.report else ""))
        return 0 if args.report else 1
    print("archmap: ok: " + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
