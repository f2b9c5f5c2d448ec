#!/usr/bin/env python3
"""Fails when a module of a host crate imports one that imports it back (directly or
through others): the layout rule of docs/ARCHITECTURE.md. Reads `crate::` and `super::`
paths outside comments and test modules, at the level of top modules (`grpc`) and of
their children (`grpc::health`). Run by scripts/test.sh.

    scripts/module-cycles.py [CRATE_SRC_DIR ...]   # default: every host/*/src
"""

import glob
import os
import re
import sys


def module_of(src_dir, path):
    parts = os.path.relpath(path, src_dir)[: -len(".rs")].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def imports(src_dir):
    """{module path: set of module paths it names}, for one crate."""
    found = {}
    for path in glob.glob(os.path.join(src_dir, "**", "*.rs"), recursive=True):
        parts = module_of(src_dir, path)
        if parts in (["lib"], ["main"]):
            continue
        with open(path, encoding="utf-8") as f:
            code = "\n".join(
                line for line in f.read().split("\n") if not line.strip().startswith("//")
            )
        code = code.split("#[cfg(test)]")[0]
        named = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)?)", code))
        for name in re.findall(r"\bsuper::([a-z_][a-z0-9_]*)", code):
            named.add("::".join(parts[:-1] + [name]))
        found["::".join(parts)] = named
    return found


def cycles(found, depth):
    """Cycles between modules cut at `depth` path segments (a parent and its own
    children may use each other)."""
    cut = lambda m: "::".join(m.split("::")[:depth])
    graph = {}
    for module, named in found.items():
        a = cut(module)
        for target in named:
            b = cut(target)
            related = a == b or a.startswith(b + "::") or b.startswith(a + "::")
            if not related:
                graph.setdefault(a, set()).add(b)
    out, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                out.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return out


def main():
    dirs = sys.argv[1:] or sorted(glob.glob("host/*/src"))
    failed = False
    for src_dir in dirs:
        found = imports(src_dir)
        for depth in (1, 2):
            for cycle in cycles(found, depth):
                failed = True
                print(f"{src_dir}: import cycle: {' -> '.join(cycle)}")
    if failed:
        sys.exit(1)
    print(f"no import cycles in {', '.join(dirs)}")


if __name__ == "__main__":
    main()
