#!/usr/bin/env python3
"""Prints the functions of host/ over a number of lines (default 80) and the files over
another (default 500): what docs/ARCHITECTURE.md ("Size") keeps short.

    scripts/sizes.py [FUNCTION_LINES [FILE_LINES]]
"""

import glob
import re
import sys


def long_functions(path, limit):
    lines = open(path, encoding="utf-8").read().split("\n")
    fn = re.compile(r"\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
    for i, line in enumerate(lines):
        m = fn.match(line)
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            for ch in lines[j]:
                if ch == "{":
                    depth, started = depth + 1, True
                elif ch == "}":
                    depth -= 1
            if started and depth == 0:
                break
            if not started and lines[j].rstrip().endswith(";"):
                break
            j += 1
        if j - i + 1 > limit:
            yield j - i + 1, i + 1, m.group(5)


def main():
    fn_limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    file_limit = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    paths = sorted(glob.glob("host/**/*.rs", recursive=True))
    for path in paths:
        for n, line, name in long_functions(path, fn_limit):
            print(f"function {n:5d} lines  {path}:{line} {name}")
    for path in paths:
        n = len(open(path, encoding="utf-8").read().split("\n")) - 1
        if n > file_limit:
            print(f"file     {n:5d} lines  {path}")


if __name__ == "__main__":
    main()
