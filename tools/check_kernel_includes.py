#!/usr/bin/env python3
"""Checks the layering rule of native/kernels (docs/DESIGN-NOTES.md): no file under native/kernels/ includes a
header of the host (native/src/) or the C ABI (native/include/). A quoted include must name a file inside
native/kernels/ (resolved against the including file's folder, then against native/kernels/); angle-bracket
includes (<cuda_runtime.h>, <cstdint>) are system headers and allowed, except the ABI header by name.

  check_kernel_includes.py --root native [--self-test]

--self-test first proves the checker reports deliberately broken copies (a kernel including "params.h" of
native/src, one including <flash_attention.h>, one including "../src/error.h") and accepts a clean one.
Exit code 0 when clean, 1 when a file breaks the rule (each printed), 2 for bad arguments."""
import argparse
import pathlib
import re
import shutil
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]', re.MULTILINE)
SOURCE_SUFFIXES = {".h", ".cuh", ".cu", ".cpp", ".hpp", ".inl"}


def violations(root: pathlib.Path) -> list:
    kernels = (root / "kernels").resolve()
    host = [(root / "src").resolve(), (root / "include").resolve()]
    abi_names = {p.name for p in (root / "include").glob("*.h")}
    found = []
    for path in sorted(kernels.rglob("*")):
        if not path.is_file() or path.suffix not in SOURCE_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in INCLUDE.finditer(text):
            kind, name = m.group(1), m.group(2)
            line = text.count("\n", 0, m.start()) + 1
            where = f"{path.relative_to(root.resolve().parent) if root.resolve().parent in path.parents else path}:{line}"
            if kind == "<":
                if pathlib.PurePath(name).name in abi_names:
                    found.append(f"{where}: includes the C ABI header <{name}>")
                continue
            candidates = [(path.parent / name).resolve(), (kernels / name).resolve()]
            inside = [c for c in candidates if c.is_file() and kernels in c.parents]
            if inside:
                continue
            outside = [c for c in candidates if c.is_file()]
            if any(h in c.parents for c in outside for h in host):
                found.append(f"{where}: includes \"{name}\", a host or ABI header ({outside[0]})")
            else:
                found.append(f"{where}: includes \"{name}\", which is no file of native/kernels/")
    return found


def self_test(root: pathlib.Path) -> bool:
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(tmp) / "native"
        (base / "kernels" / "sm80").mkdir(parents=True)
        (base / "kernels" / "params").mkdir()
        (base / "src").mkdir()
        (base / "include").mkdir()
        (base / "src" / "params.h").write_text("#pragma once\n")
        (base / "src" / "error.h").write_text("#pragma once\n")
        shutil.copy(root / "include" / "flash_attention.h", base / "include" / "flash_attention.h")
        (base / "kernels" / "params" / "fwd_params.h").write_text("#pragma once\n#include <cstdint>\n")
        clean = '#include <cuda_runtime.h>\n#include "params/fwd_params.h"\n#include "../params/fwd_params.h"\n'
        (base / "kernels" / "sm80" / "k.cuh").write_text(clean)
        if violations(base):
            print("self-test: a clean tree was reported: " + "; ".join(violations(base)))
            ok = False
        for bad in ('#include "params.h"\n', "#include <flash_attention.h>\n", '#include "../../src/error.h"\n',
                    '#include "flash_attention.h"\n'):
            (base / "kernels" / "sm80" / "k.cuh").write_text(clean + bad)
            if len(violations(base)) != 1:
                print(f"self-test: {bad.strip()!r} was not reported exactly once: {violations(base)}")
                ok = False
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="the native/ folder")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    root = pathlib.Path(a.root)
    if not (root / "kernels").is_dir():
        print(f"{root}/kernels is not a folder", file=sys.stderr)
        return 2
    if a.self_test and not self_test(root):
        return 1
    found = violations(root)
    for v in found:
        print(v)
    if found:
        print(f"{len(found)} include(s) of native/kernels break the layering rule (kernels see only native/kernels/)")
        return 1
    print("native/kernels includes nothing of native/src or native/include")
    return 0


if __name__ == "__main__":
    sys.exit(main())
