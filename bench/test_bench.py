#!/usr/bin/env python3
"""CPU-only checks of the benchmark (no GPU, no torch, no library): the generated ctypes mirror bench/fa_abi.py
imports (its layout check against libclang's offsets runs at import), notices a drifted layout, covers every
export and struct of the header, binds to a library object; and `run.py --dry-run` runs with torch and triton
made unimportable and writes a record of the expected shape.

    python3 bench/test_bench.py        (exit 0 when every check passes; ctest runs it as bench_cpu)
"""
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HEADER = os.path.join(REPO, "native", "include", "flash_attention.h")
sys.path.insert(0, HERE)

import fa_abi  # noqa: E402  (its import runs check_layout)

# Runs run.py's main with torch and triton unimportable, so a dry run that reaches for either fails here.
NO_TORCH = ("import os, runpy, sys; sys.modules['torch'] = None; sys.modules['triton'] = None; "
            "sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0])); "
            "runpy.run_path(sys.argv[0], run_name='__main__')")


class MirrorTests(unittest.TestCase):
    def test_layout_matches_libclang(self):
        fa_abi.check_layout()
        # What the hand-written mirrors asserted before the generator wrote them.
        self.assertEqual(ctypes.sizeof(fa_abi.FaTensor), 80)
        self.assertEqual(ctypes.sizeof(fa_abi.FaBackwardParams), 824)
        self.assertEqual(ctypes.sizeof(fa_abi.FaDecodeParams), 784)

    def test_layout_check_catches_a_drifted_field(self):
        with open(fa_abi.__file__) as f:
            text = f.read()
        drifted = text.replace('("rank", ctypes.c_int32)', '("rank", ctypes.c_int64)', 1)
        self.assertNotEqual(text, drifted)
        with self.assertRaises(ImportError):
            exec(compile(drifted, "fa_abi_drifted.py", "exec"), {"__name__": "fa_abi_drifted"})

    def test_every_export_and_struct_of_the_header(self):
        with open(HEADER) as f:
            header = f.read()
        exports = set(re.findall(r"FA_API\s+[^;(]*?\b(fa_\w+)\s*\(", header))
        self.assertTrue(exports)
        self.assertEqual(exports, set(fa_abi.PROTOTYPES))
        for typedef in re.findall(r"\}\s*(fa_\w+_t)\s*;", header):
            if typedef in ("fa_status_t", "fa_dtype_t", "fa_causal_alignment_t", "fa_kernel_path_t", "fa_pass_t",
                           "fa_log_level_t"):
                continue  # enums
            self.assertTrue(issubclass(getattr(fa_abi, typedef), ctypes.Structure), typedef)
        self.assertEqual(fa_abi.FA_VERSION_CODE, fa_abi.FA_VERSION_MAJOR * 10000 + fa_abi.FA_VERSION_MINOR * 100
                         + fa_abi.FA_VERSION_PATCH)

    def test_bind_sets_prototypes_and_reports_missing_exports(self):
        names = list(fa_abi.PROTOTYPES)
        lib = types.SimpleNamespace(**{n: types.SimpleNamespace() for n in names[:-1]})
        self.assertEqual(fa_abi.bind(lib), [names[-1]])
        self.assertIs(lib.fa_last_error_message.restype, ctypes.c_char_p)
        self.assertEqual(lib.fa_forward.argtypes[1], ctypes.POINTER(fa_abi.FaForwardParams))


class DryRunTests(unittest.TestCase):
    def dry_run(self, *extra):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "bench.json")
            p = subprocess.run([sys.executable, "-c", NO_TORCH, os.path.join(HERE, "run.py"), "--dry-run", "--out", out,
                                "--commit", "test", *extra], capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            with open(out) as f:
                return json.load(f), p.stdout

    def test_dry_run_without_torch(self):
        record, stdout = self.dry_run()
        passes = [r["pass"] for r in record["rows"]]
        self.assertEqual(passes.count("fwd"), 20)
        self.assertEqual(passes.count("bwd"), 20)
        self.assertEqual(passes[-1], "interop")
        self.assertNotIn("ours_base_ms", record["rows"][0])
        self.assertIn("interop (host us per Forward call", stdout.splitlines()[-1])

    def test_dry_run_baseline_and_only(self):
        record, stdout = self.dry_run("--quick", "--only", "bwd", "--baseline-lib", "/nowhere/libflash_attention.so")
        passes = [r["pass"] for r in record["rows"]]
        self.assertEqual(passes.count("fwd"), 0)
        self.assertEqual(passes.count("bwd"), 14)
        self.assertIn("ours_base_ms", record["rows"][0])
        self.assertIn("ours/base", stdout)


if __name__ == "__main__":
    unittest.main()
