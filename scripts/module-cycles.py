#!/usr/bin/env python3
"""Fails when a module of a host crate imports one that imports it back (directly or
through others): the layout rule of docs/ARCHITECTURE.md. Run by scripts/test.sh.

What it reads, outside comments and test modules:
- every `crate::` and `super::` path, written inline or in a `use`, grouped ones
  (`use crate::{a::B, c}`) expanded;
- the crate root (lib.rs or main.rs) as a module of its own, `<root>`: a path that names
  an item the root defines (`crate::Engine`) depends on the root, one that names what the
  root re-exports (`pub use plugin::Plugin`, then `crate::Plugin`) depends on the module
  it comes from, and the root depends on the child modules its own code uses. A root
  that only declares modules and re-exports them (a curated face) depends on nothing.
At the level of top modules (`grpc`) and of their children (`grpc::health`); a parent
and its own children may use each other, the root and its children may not.

    scripts/module-cycles.py [CRATE_SRC_DIR ...]   # default: every host/*/src
"""

import glob
import os
import re
import sys

ROOT = "<root>"
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(src_dir, path):
    parts = os.path.relpath(path, src_dir)[: -len(".rs")].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def strip(code):
    """The code without comments, string literals and test modules."""
    code = code.split("#[cfg(test)]")[0]
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    code = re.sub(r"//[^\n]*", " ", code)
    code = re.sub(r'r#*"(?:.|\n)*?"#*', '""', code)
    code = re.sub(r'"(?:\\.|[^"\\])*"', '""', code)
    return code


def expand(tree):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]]."""
    tree = tree.strip()
    out = []
    depth, start, brace = 0, 0, None
    # Split a top-level `prefix::{...}` group.
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0 and brace is None:
                brace = i
            depth += 1
        elif ch == "}":
            depth -= 1
    if brace is None:
        path = re.sub(r"\s+as\s+" + IDENT + r"$", "", tree)
        return [[p for p in path.split("::") if p]]
    prefix = [p for p in tree[:brace].split("::") if p]
    inner = tree[brace + 1 : tree.rindex("}")]
    depth, start = 0, 0
    items = []
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    for item in items:
        if item.strip():
            for sub in expand(item):
                out.append(prefix + sub)
    return out


def paths(code):
    """Every path the code names that starts with crate, super or self, as segments;
    and the `pub use` trees (re-exports), as segments."""
    found, reexports = [], []
    for m in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", code):
        for path in expand(m.group(2)):
            if m.group(1):
                reexports.append(path)
            found.append(path)
    rest = re.sub(r"\buse\s+[^;]+;", " ", code)
    for m in re.finditer(r"\b((?:crate|super|self)(?:::" + IDENT + r")+)", rest):
        found.append(m.group(1).split("::"))
    return found, reexports


def root_faces(code, modules):
    """What the root re-exports ({name: module path}) and defines ({name})."""
    faces, defined = {}, set()
    _, reexports = paths(code)
    for path in reexports:
        segs = path[1:] if path[0] in ("crate", "self") else path
        if segs and segs[0] in modules:
            faces[segs[-1]] = segs[0] if len(segs) < 3 else "::".join(segs[:2])
    for m in re.finditer(
        r"\b(?:struct|enum|fn|trait|type|const|static|union|macro_rules!)\s+(" + IDENT + ")",
        code,
    ):
        defined.add(m.group(1))
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", code):
        defined.add(m.group(1))
    return faces, defined


def resolve(segs, modules, faces, defined):
    """The module (cut at two levels) that a crate-relative path names, or None."""
    if not segs:
        return ROOT
    head = segs[0]
    if head in modules:
        if len(segs) > 1 and f"{head}::{segs[1]}" in modules:
            return f"{head}::{segs[1]}"
        return head
    if head in faces:
        return faces[head]
    if head in defined:
        return ROOT
    return None


def imports(src_dir):
    """{module path: set of module paths it names}, for one crate."""
    files = {}
    for path in glob.glob(os.path.join(src_dir, "**", "*.rs"), recursive=True):
        parts = module_of(src_dir, path)
        with open(path, encoding="utf-8") as f:
            code = strip(f.read())
        if parts in (["lib"], ["main"]):
            # A binary and a library in one folder: main.rs is the binary's root, which
            # uses the library by its crate name; only lib.rs is this crate's root.
            if parts == ["main"] and os.path.exists(os.path.join(src_dir, "lib.rs")):
                continue
            files[ROOT] = code
        else:
            files["::".join(parts)] = code
    modules = {m for m in files if m != ROOT}
    faces, defined = root_faces(files.get(ROOT, ""), modules)
    found = {}
    for module, code in files.items():
        parts = [] if module == ROOT else module.split("::")
        named = set()
        for segs in paths(code)[0]:
            if segs[0] == "crate":
                rel = segs[1:]
            elif segs[0] in ("super", "self"):
                base = list(parts)
                i = 0
                while i < len(segs) and segs[i] in ("super", "self"):
                    if segs[i] == "super":
                        base = base[:-1]
                    i += 1
                rel = base + segs[i:]
            elif module == ROOT:
                rel = segs  # the root names its children without `crate::`
            else:
                continue
            target = resolve(rel, modules, faces, defined)
            if target is not None:
                named.add(target)
        if module == ROOT:
            # The root's own code (not its `mod` and `pub use` lines) naming a child.
            body = re.sub(r"\bpub(?:\([^)]*\))?\s+use\s+[^;]+;", " ", code)
            body = re.sub(r"\b(?:pub(?:\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*;", " ", body)
            named = {n for n in named if n != ROOT}
            named = {
                n
                for n in named
                if re.search(r"\b" + re.escape(n.split("::")[0]) + r"::", body)
            }
        found[module] = named
    return found


def cycles(found, depth):
    """Cycles between modules cut at `depth` path segments (a parent and its own
    children may use each other; the root is nobody's parent here)."""
    cut = lambda m: m if m == ROOT else "::".join(m.split("::")[:depth])
    graph = {}
    for module, named in found.items():
        a = cut(module)
        for target in named:
            b = cut(target)
            if a == b:
                continue
            related = ROOT not in (a, b) and (a.startswith(b + "::") or b.startswith(a + "::"))
            if not related:
                graph.setdefault(a, set()).add(b)
    out, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                out.append(stack[stack.index(nxt) :] + [nxt])
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
        seen = set()
        for depth in (1, 2):
            for cycle in cycles(found, depth):
                key = " -> ".join(cycle)
                if key not in seen:
                    seen.add(key)
                    failed = True
                    print(f"{src_dir}: import cycle: {key}")
    if failed:
        sys.exit(1)
    print(f"no import cycles in {', '.join(dirs)}")


if __name__ == "__main__":
    main()
