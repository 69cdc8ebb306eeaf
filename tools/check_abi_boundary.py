#!/usr/bin/env python3
"""Proves that no C++ exception can cross the C ABI of libflash_attention.

Checks, and fails (exit 1) with one line per problem:
  1. every function the header declares with FA_API is defined exactly once in native/src;
  2. every such definition's body starts with FA_API_BEGIN and ends with FA_API_END (or the
     FA_API_BEGIN_NOFAIL / FA_API_END_NOFAIL(...) pair), with nothing but comments outside them;
  3. no other fa_* function is defined with FA_API or inside an extern "C" block in native/src;
  4. with --library: the shared library exports exactly the header's functions (nm -D), nothing else.

  --self-test first proves the checker can fail: it runs checks 1-3 on broken copies of the sources
  (a boundary macro removed, a stray export added) and requires each to be reported.

Usage: check_abi_boundary.py [--header H] [--sources DIR] [--library SO [--nm NM]] [--self-test]
Run from ctest (see CMakeLists.txt) or by hand from the repository root.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def strip_comments_and_strings(text):
    """Blanks out comments and string/char literals (keeping newlines and offsets)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + " " * (j - i - 2) + c if j - i >= 2 else text[i:j])
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def header_functions(header_path):
    text = strip_comments_and_strings(open(header_path, encoding="utf-8").read())
    # Skip the macro definitions of FA_API itself.
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    names = re.findall(r"\bFA_API\b[^;{()]*?\b(fa_\w+)\s*\(", text)
    return sorted(set(names))


def matching_brace(text, open_index):
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def extern_c_ranges(text):
    ranges = []
    for m in re.finditer(r'extern\s+"\s*C\s*"\s*\{', text):
        end = matching_brace(text, m.end() - 1)
        ranges.append((m.end(), end if end >= 0 else len(text)))
    return ranges


BEGIN = re.compile(r"^\s*(FA_API_BEGIN_NOFAIL|FA_API_BEGIN)\b")
END = re.compile(r"(FA_API_END_NOFAIL\s*\([^;{}]*\)|FA_API_END)\s*$")


def check_sources(header, sources, declared):
    """Checks 1-3; returns a list of problems."""
    problems = []
    if not declared:
        problems.append(f"{header}: no FA_API functions found")
    definitions = {}  # name -> list of (file, line, body)
    stray = []
    for directory, _, files in os.walk(sources):
        for file in sorted(files):
            if not file.endswith((".cpp", ".cc", ".cu", ".h", ".hpp", ".cuh")):
                continue
            path = os.path.join(directory, file)
            raw = open(path, encoding="utf-8").read()
            text = strip_comments_and_strings(raw)
            externs = extern_c_ranges(text)
            # A function definition: name, parameter list, then an opening brace (not a ';').
            for m in re.finditer(r"\b(fa_\w+)\s*\(([^;{}()]|\([^;{}()]*\))*\)\s*(noexcept\s*)?\{", text):
                name = m.group(1)
                start = m.start()
                line = text.count("\n", 0, start) + 1
                # The declaration's own tokens: from the end of the previous statement/block to the name.
                prefix = re.split(r"[;{}]", text[max(0, start - 400) : start])[-1]
                exported = "FA_API" in prefix or any(a <= start < b for a, b in externs)
                open_brace = m.end() - 1
                close_brace = matching_brace(text, open_brace)
                body = text[open_brace + 1 : close_brace]
                if name in declared:
                    definitions.setdefault(name, []).append((path, line, body))
                elif exported:
                    stray.append(f"{path}:{line}: {name} is exported but not declared in the header")

    for name in declared:
        defs = definitions.get(name, [])
        if not defs:
            problems.append(f"{name}: declared in the header but not defined in {sources}")
            continue
        if len(defs) > 1:
            where = ", ".join(f"{p}:{l}" for p, l, _ in defs)
            problems.append(f"{name}: defined {len(defs)} times ({where})")
        for path, line, body in defs:
            stripped = body.strip()
            b = BEGIN.match(stripped)
            e = END.search(stripped)
            if not b:
                problems.append(f"{path}:{line}: {name} does not start with FA_API_BEGIN")
            if not e:
                problems.append(f"{path}:{line}: {name} does not end with FA_API_END")
            if b and e:
                nofail_begin = b.group(1) == "FA_API_BEGIN_NOFAIL"
                nofail_end = e.group(1).startswith("FA_API_END_NOFAIL")
                if nofail_begin != nofail_end:
                    problems.append(f"{path}:{line}: {name} pairs {b.group(1)} with {e.group(1).split('(')[0]}")
                inner = stripped[b.end() : e.start()]
                if re.search(r"\bFA_API_(BEGIN|END)", inner):
                    problems.append(f"{path}:{line}: {name} has more than one FA_API_BEGIN/END pair")
    problems.extend(stray)
    return problems


def self_test(header, sources):
    """Breaks copies of the sources three ways and requires check_sources to notice each."""
    declared = header_functions(header)
    failures = []
    if check_sources(header, sources, declared):
        failures.append("the unmodified sources already fail; fix them first")
        return failures
    api = None
    for name in sorted(os.listdir(sources)):
        path = os.path.join(sources, name)
        if name.endswith(".cpp") and "FA_API_BEGIN\n" in open(path, encoding="utf-8").read():
            api = name
            break
    if api is None:
        return ["no source file with FA_API_BEGIN found"]
    original = open(os.path.join(sources, api), encoding="utf-8").read()
    mutations = {
        "FA_API_BEGIN removed": original.replace("    FA_API_BEGIN\n", "", 1),
        "FA_API_END removed": original.replace("    FA_API_END\n", "", 1),
        "stray export added": original + '\nextern "C" {\nFA_API int fa_not_in_header(void) { return 0; }\n}\n',
    }
    for label, text in mutations.items():
        if text == original:
            failures.append(f"{label}: could not mutate {api}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for name in os.listdir(sources):
                if os.path.isfile(os.path.join(sources, name)):
                    shutil.copy(os.path.join(sources, name), tmp)
            with open(os.path.join(tmp, api), "w", encoding="utf-8") as f:
                f.write(text)
            if not check_sources(header, tmp, declared):
                failures.append(f"{label}: not reported")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--header", default=os.path.join(ROOT, "native", "include", "flash_attention.h"))
    parser.add_argument("--sources", default=os.path.join(ROOT, "native", "src"))
    parser.add_argument("--library", help="built libflash_attention.so whose exports to check")
    parser.add_argument("--nm", default="nm")
    parser.add_argument("--self-test", action="store_true", help="first prove the checker reports broken sources")
    args = parser.parse_args()

    if args.self_test:
        failures = self_test(args.header, args.sources)
        if failures:
            for f in failures:
                print("ABI boundary self-test FAILED: " + f)
            return 1
        print("self-test: a removed FA_API_BEGIN, a removed FA_API_END and a stray export are all reported")

    declared = header_functions(args.header)
    problems = check_sources(args.header, args.sources, declared)


    if args.library:
        try:
            result = subprocess.run([args.nm, "-D", "--defined-only", args.library], check=True,
                                    capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as error:
            problems.append(f"could not run {args.nm} on {args.library}: {error}")
        else:
            exported = set()
            for line in result.stdout.splitlines():
                parts = line.split()  # "<address> <type> <name>"
                if len(parts) >= 3 and parts[1] not in ("U", "w", "v", "A", "N"):
                    exported.add(parts[2].split("@")[0])
            missing = sorted(set(declared) - exported)
            extra = sorted(exported - set(declared))
            for name in missing:
                problems.append(f"{args.library}: {name} is declared in the header but not exported")
            for name in extra:
                problems.append(f"{args.library}: exports {name}, which the header does not declare")
            if not missing and not extra:
                print(f"exports: {len(exported)} symbols, exactly the header's fa_* functions")

    if problems:
        for p in problems:
            print("ABI boundary check FAILED: " + p)
        return 1
    print(f"ABI boundary: all {len(declared)} exported fa_* functions are wrapped in FA_API_BEGIN/FA_API_END")
    return 0


if __name__ == "__main__":
    sys.exit(main())
