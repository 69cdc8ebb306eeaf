#!/usr/bin/env python3
"""Registers and spills of the kernels ptxas compiled, from a build log of `-DFA_PTXAS_VERBOSE=ON` (nvcc -Xptxas -v):
one line per kernel whose mangled name matches REGEX, `REGISTERS STORES/LOADS NAME` (spill stores and loads in bytes),
each kernel once (a log repeats what ptxas printed per object), then, with --serialized, the count of ptxas's wgmma
serialization warnings (C7510-C7515) in the log.

    python3 bench/ptxas_regs.py build/x/build.log 'fwd_kernel_sm90.*bfloat16' [--tail 60] [--serialized]

--tail N keeps the last N characters of each name (0: the whole mangled name). Exit code 0 (1: no kernel matched)."""
import argparse
import re
import sys

ENTRY_RE = re.compile(r"Compiling entry function '([^']+)'")
SPILL_RE = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
USED_RE = re.compile(r"Used (\d+) registers")
SERIAL_RE = re.compile(r"\bC751[0-5]\b")


def parse(lines, pattern):
    """(name, registers, spill stores, spill loads) of each kernel matching pattern, in the log's order, once each."""
    rows, seen, name, spill = [], set(), None, None
    for line in lines:
        m = ENTRY_RE.search(line)
        if m:
            name, spill = m.group(1), None
            continue
        m = SPILL_RE.search(line)
        if m and name is not None:
            spill = (int(m.group(1)), int(m.group(2)))
            continue
        m = USED_RE.search(line)
        if m and name is not None:
            if pattern.search(name) and name not in seen:
                seen.add(name)
                stores, loads = spill if spill is not None else (0, 0)
                rows.append((name, int(m.group(1)), stores, loads))
            name = None
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log")
    ap.add_argument("regex")
    ap.add_argument("--tail", type=int, default=60)
    ap.add_argument("--serialized", action="store_true")
    args = ap.parse_args(argv)
    with open(args.log, errors="replace") as f:
        lines = f.readlines()
    rows = parse(lines, re.compile(args.regex))
    for name, regs, stores, loads in rows:
        print(f"{regs} {stores}/{loads} {name[-args.tail:] if args.tail > 0 else name}")
    if args.serialized:
        print(f"wgmma serialization warnings (C7510-C7515): {sum(1 for l in lines if SERIAL_RE.search(l))}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
