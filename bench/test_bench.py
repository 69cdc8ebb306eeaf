#!/usr/bin/env python3
"""CPU-only checks of the benchmark (no GPU, no torch, no library): the generated ctypes mirror bench/fa_abi.py
imports (its layout check against libclang's offsets runs at import), notices a drifted layout, covers every
export and struct of the header, binds to a library object; `run.py --dry-run` runs with torch and triton
made unimportable and writes a record of the expected shape; the forward's per-path timings, kernel names and
per-column errors, the e4m3 rows' fp8 and bf16 timings (and a GPU that does not serve fp8), the matmul ceilings and
the table are checked against fakes of torch and of the library.

    python3 bench/test_bench.py        (exit 0 when every check passes; ctest runs it as bench_cpu)
"""
import ctypes
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import types
import unittest
from unittest import mock

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
        # 0.7 appended sinks and dsinks (two fa_tensor_t) to the backward's 824 bytes, 0.8 alibi_slopes, 0.9 the
        # dropout block (p, reserved2, seed, offset, two device pointers: 40 bytes).
        self.assertEqual(ctypes.sizeof(fa_abi.FaBackwardParams), 824 + 3 * 80 + 40)
        # 784 through 0.6; 0.7 appended cache_batch_idx, cache_leftpad and their host copies at offset 784.
        # 0.8 appended alibi_slopes (an 80-byte fa_tensor_t) at 960, then the rotary block (two table pointers,
        # rotary_dim, rotary_seqlen, rotary_interleaved, reserved1: 32 bytes); 0.12 the per-sequence counts
        # (cu_seqlens_q, cu_seqlens_k_new, their host copies, max_seqlen_q, reserved2: 184 bytes) at 1072; 0.13 the fp8
        # cache's k_descale and v_descale (160 bytes) at 1256.
        self.assertEqual(ctypes.sizeof(fa_abi.FaDecodeParams), 960 + 80 + 32 + 184 + 160)
        self.assertEqual(fa_abi.FaDecodeParams.k_descale.offset, 960 + 80 + 32 + 184)
        self.assertEqual(fa_abi.FaDecodeParams.cu_seqlens_q.offset, 960 + 80 + 32)
        self.assertEqual(fa_abi.FaDecodeParams.cache_batch_idx.offset, 784)
        self.assertEqual(fa_abi.FaDecodeParams.rotary_cos.offset, 960 + 80)

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
        rows = record["rows"]
        passes = [r["pass"] for r in rows]
        fwd = [r for r in rows if r["pass"] == "fwd"]
        # The forward grid, GQA and varlen rows in bf16 and fp16, the grid in e4m3; the backward in bf16.
        self.assertEqual([r["dtype"] for r in fwd], ["bf16"] * 20 + ["fp16"] * 20 + ["e4m3"] * 18)
        self.assertEqual(sum(1 for r in fwd if r.get("varlen")), 2)
        self.assertEqual(sum(1 for r in fwd if r["hkv"] != r["h"]), 2)
        self.assertEqual([r["dtype"] for r in rows if r["pass"] == "bwd"], ["bf16"] * 20)
        # Both ceilings, null, before the interop row (still last).
        self.assertEqual(passes[-3:], ["matmul", "matmul", "interop"])
        self.assertEqual([(r["dtype"], r["op"], r["matmul_tflops"]) for r in rows if r["pass"] == "matmul"],
                         [("bf16", "torch.matmul", None), ("e4m3", "torch._scaled_mm", None)])
        for key in ("ours_ms", "ours_sm80_ms", "ours_sm80_tflops", "ours_sm80_rel_err", "path", "ours_kernel",
                    "ours_sm80_kernel", "ours_sinks_ms", "ours_sinks_tflops", "ours_sinks_rel_err", "ours_sinks_kernel",
                    "sinks_ratio", "ours_alibi_ms", "ours_alibi_tflops", "ours_alibi_rel_err", "ours_alibi_kernel",
                    "alibi_ratio"):
            self.assertIn(key, fwd[0])
            self.assertIsNone(fwd[0][key])
        # The learnable sinks' timing (C ABI 0.7): on every fixed-length 16-bit row of both passes, not on varlen or e4m3.
        for r in rows:
            if r["pass"] in ("fwd", "bwd"):
                self.assertEqual("sinks_ratio" in r, r["dtype"] != "e4m3" and not r.get("varlen"), r)
                self.assertEqual("alibi_ratio" in r, r["dtype"] != "e4m3" and not r.get("varlen"), r)
        # e4m3: TARGETS.md's grid (D 64/128/256, causal or not, S 1k/4k/16k; no GQA or varlen row), measured (the C
        # ABI has an fp8 dtype): ours, our bf16 beside it, SDPA in bf16; no sm80 timing; not sent to the managed exe.
        e4m3 = [r for r in fwd if r["dtype"] == "e4m3"]
        self.assertEqual(sorted({(r["d"], r["causal"], r["sq"]) for r in e4m3}),
                         sorted((d, c, s) for d in (64, 128, 256) for c in (0, 1) for s in (1024, 4096, 16384)))
        self.assertTrue(all(r["h"] == r["hkv"] == 2048 // r["d"] and r["b"] == 16384 // r["sq"] for r in e4m3))
        for key in ("ours_ms", "ours_tflops", "ours_bf16_ms", "ours_bf16_tflops", "ours_bf16_rel_err", "ours_kernel",
                    "path", "flash_ms", "cudnn_ms"):
            self.assertIsNone(e4m3[0][key], key)
        self.assertEqual(e4m3[0]["sdpa_dtype"], "bf16")
        self.assertNotIn("ours_sm80_ms", e4m3[0])
        self.assertEqual(record["skipped_groups"], [])
        managed_lines = [line for line in stdout.splitlines() if line.startswith("# fwd e4m3")]
        self.assertEqual(len(managed_lines), 18)
        self.assertTrue(all("managed:" not in line for line in managed_lines))
        self.assertNotIn("ours_base_ms", rows[0])
        for text in ("bf16 fwd TFLOP/s", "fp16 fwd TFLOP/s", "e4m3 fwd TFLOP/s", "ours/bf16", "sm80/cu", "ours/mm",
                     "ceiling (same run): e4m3 matmul 8192^3", "PyTorch has no fp8 attention"):
            self.assertIn(text, stdout)
        self.assertIn("interop (host us per Forward call", stdout.splitlines()[-1])

    def test_dry_run_baseline_and_only(self):
        record, stdout = self.dry_run("--quick", "--only", "bwd", "--baseline-lib", "/nowhere/libflash_attention.so")
        passes = [r["pass"] for r in record["rows"]]
        self.assertEqual(passes.count("fwd"), 0)
        self.assertEqual(passes.count("bwd"), 14)
        self.assertEqual(record["skipped_groups"], [])  # no forward pass, nothing skipped in it
        self.assertIn("ours_base_ms", record["rows"][0])
        self.assertIn("ours/base", stdout)

    def test_dry_run_fwd_dtypes(self):
        record, stdout = self.dry_run("--quick", "--only", "fwd", "--fwd-dtypes", "fp16")
        fwd = [r for r in record["rows"] if r["pass"] == "fwd"]
        self.assertEqual(len(fwd), 14)
        self.assertEqual({r["dtype"] for r in fwd}, {"fp16"})
        self.assertEqual(record["skipped_groups"], [])
        self.assertNotIn("bf16 fwd TFLOP/s", stdout)
        record, _ = self.dry_run("--quick", "--only", "fwd", "--fwd-dtypes", "e4m3")
        fwd = [r for r in record["rows"] if r["pass"] == "fwd"]
        self.assertEqual(len(fwd), 12)  # the grid without S 16k
        self.assertEqual({r["dtype"] for r in fwd}, {"e4m3"})
        self.assertEqual(record["skipped_groups"], [])

    def test_e4m3_is_skipped_with_a_mirror_without_fp8(self):
        import shapes
        with mock.patch.dict(fa_abi.__dict__):
            del fa_abi.__dict__["FA_DTYPE_FLOAT8_E4M3"]
            self.assertIn("no fp8 dtype", shapes.skip_reason("e4m3"))
            self.assertEqual(shapes.shapes_grid(True, "fwd", ["e4m3"]), [])
            self.assertIsNone(shapes.skip_reason("bf16"))
        self.assertIsNone(shapes.skip_reason("e4m3"))
        self.assertEqual(len(shapes.shapes_grid(False, "fwd", ["e4m3"])), 18)

    def test_bad_fwd_dtypes_are_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([sys.executable, "-c", NO_TORCH, os.path.join(HERE, "run.py"), "--dry-run", "--out",
                                os.path.join(tmp, "b.json"), "--fwd-dtypes", "bf16,fp32"],
                               capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--fwd-dtypes", p.stderr)


# ---- fakes of torch and of a loaded library, for the GPU code paths --------------------------------------------

class FakeTensor:
    """A scalar standing in for a tensor: enough for fwd.compare (float, -, norm) and fill_."""

    def __init__(self, value=0.0):
        self.value = value

    def float(self):
        return self

    def __sub__(self, other):
        return FakeTensor(self.value - other.value)

    def norm(self):
        return abs(self.value)

    def fill_(self, value):
        self.value = value
        return self

    def transpose(self, *dims):
        return self


def fake_torch(scaled_mm=True, float8=True, matmul_error=None):
    """Modules torch, torch.nn, torch.nn.functional and torch.nn.attention with what fwd.py, common.py and
    ceilings.py touch; matmul_error: an exception the bf16 matmul raises."""
    torch = types.ModuleType("torch")
    torch.__version__ = "0.0-fake"
    torch.bfloat16, torch.float16, torch.float32 = "bfloat16", "float16", "float32"
    torch.calls = []
    torch.cuda = types.SimpleNamespace(synchronize=lambda: None, empty_cache=lambda: None)

    class Matrix:
        def __init__(self, n, dtype):
            self.shape, self.dtype = (n, n), dtype

        def to(self, dtype):
            return Matrix(self.shape[0], dtype)

        def t(self):
            return self

        def __matmul__(self, other):
            if matmul_error:
                raise matmul_error
            torch.calls.append("matmul")
            return Matrix(self.shape[0], self.dtype)

    torch.randn = lambda *shape, device=None, dtype=None: Matrix(shape[0], dtype)
    torch.ones = lambda *shape, device=None, dtype=None: FakeTensor(1.0)
    if float8:
        torch.float8_e4m3fn = "float8_e4m3fn"
    if scaled_mm:
        def _scaled_mm(a, b, scale_a=None, scale_b=None, out_dtype=None, use_fast_accum=None):
            torch.calls.append(("scaled_mm", a.dtype, scale_a.value, out_dtype, use_fast_accum))
            return Matrix(a.shape[0], out_dtype)
        torch._scaled_mm = _scaled_mm
    nn = types.ModuleType("torch.nn")
    functional = types.ModuleType("torch.nn.functional")
    attention = types.ModuleType("torch.nn.attention")
    attention.SDPBackend = types.SimpleNamespace(FLASH_ATTENTION="flash", CUDNN_ATTENTION="cudnn")
    attention.sdpa_kernel = lambda backends: None
    torch.nn, nn.functional, nn.attention = nn, functional, attention
    return {"torch": torch, "torch.nn": nn, "torch.nn.functional": functional, "torch.nn.attention": attention,
            "triton": None}


class FakeLib:
    """A loaded library as fwd.py sees it (FaLib's forward_params/forward_call/launched_kernels): each kernel path
    writes `value` into the output and reports `kernel`, or raises `error`."""

    def __init__(self, out, paths, log=True):
        self.out, self.paths, self.log = out, paths, log

    def forward_call(self, path):
        spec = self.paths[path]

        def call():
            if spec.get("error"):
                raise RuntimeError(f"fa_forward: {spec['error']}")
            self.out.value = spec["value"]
        call.kernel = spec.get("kernel")
        return call

    def launched_kernels(self, call):
        call()
        return [call.kernel] if self.log and call.kernel else ([] if self.log else None)


class ForwardPathTests(unittest.TestCase):
    """fwd.time_ours: our two paths side by side, each with its kernel name and its own errors."""

    def run_ours(self, paths, base_paths=None, ref=1.0, log=True):
        with mock.patch.dict(sys.modules, fake_torch()):  # restores sys.modules (fwd, inputs gone) on exit
            for name in ("fwd", "inputs"):
                sys.modules.pop(name, None)
            fwd = importlib.import_module("fwd")
            from common import finish_row
            from fa_abi import FA_PATH_AUTO, FA_PATH_SM80
            out = FakeTensor(float("nan"))
            paths = {FA_PATH_AUTO: paths[0], FA_PATH_SM80: paths[1]}
            fa = FakeLib(out, paths, log)
            base = FakeLib(out, {FA_PATH_AUTO: base_paths}) if base_paths else None
            row = {"errors": {}, "path": None}
            timed = []

            def bench(fn):
                fn()
                timed.append(out.value)
                return 2.0
            fwd.time_ours(row, 4e12, fa, base, bench, lambda lib, path: path,
                          None if ref is None else FakeTensor(ref), "the reference", out)
            failed = finish_row(row)
        return row, failed, timed

    def test_both_paths_timed_with_their_kernels(self):
        row, failed, timed = self.run_ours([{"value": 1.0, "kernel": "sm90_fwd_bf16_hdim128_128x128_2wg"},
                                            {"value": 1.001, "kernel": "sm80_fwd_bf16_hdim128_128x64_4w"}])
        self.assertFalse(failed)
        self.assertNotIn("errors", row)
        self.assertEqual(timed, [1.0, 1.001])
        self.assertEqual((row["ours_ms"], row["ours_sm80_ms"]), (2.0, 2.0))
        self.assertAlmostEqual(row["ours_tflops"], 2000.0)
        self.assertAlmostEqual(row["ours_sm80_tflops"], 2000.0)
        self.assertEqual(row["path"], "sm90")
        self.assertEqual(row["ours_kernel"], "sm90_fwd_bf16_hdim128_128x128_2wg")
        self.assertEqual(row["ours_sm80_kernel"], "sm80_fwd_bf16_hdim128_128x64_4w")
        self.assertEqual(row["ours_rel_err"], 0.0)
        self.assertAlmostEqual(row["ours_sm80_rel_err"], 1e-3)

    def test_a_failing_sm80_path_is_its_own_error(self):
        row, failed, _ = self.run_ours([{"value": 1.0, "kernel": "sm90_fwd_x"},
                                        {"error": "FA_STATUS_UNSUPPORTED: no"}])
        self.assertTrue(failed)
        self.assertEqual(list(row["errors"]), ["ours_sm80"])
        self.assertIn("FA_STATUS_UNSUPPORTED", row["errors"]["ours_sm80"])
        self.assertEqual(row["ours_ms"], 2.0)
        self.assertNotIn("ours_sm80_ms", row)

    def test_a_failing_default_path_leaves_sm80_measured(self):
        row, failed, _ = self.run_ours([{"error": "boom"}, {"value": 1.0, "kernel": "sm80_fwd_x"}])
        self.assertTrue(failed)
        self.assertEqual(list(row["errors"]), ["ours"])
        self.assertIsNone(row["path"])
        self.assertEqual(row["ours_sm80_ms"], 2.0)

    def test_wrong_results_are_named_per_path(self):
        row, failed, _ = self.run_ours([{"value": 1.0, "kernel": "sm80_fwd_x"}, {"value": 1.5, "kernel": "sm80_fwd_x"}])
        self.assertTrue(failed)
        self.assertEqual(list(row["errors"]), ["mismatch_sm80"])
        self.assertEqual(row["ours_sm80_ms"], 2.0)  # still timed, as the default path always was

    def test_forced_sm80_running_another_family_is_an_error(self):
        row, failed, _ = self.run_ours([{"value": 1.0, "kernel": "sm90_fwd_x"}, {"value": 1.0, "kernel": "sm90_fwd_x"}])
        self.assertTrue(failed)
        self.assertIn("not an sm80 kernel", row["errors"]["ours_sm80"])

    def test_no_launch_log_leaves_kernel_and_path_null(self):
        row, failed, _ = self.run_ours([{"value": 1.0}, {"value": 1.0}], ref=None, log=False)
        self.assertFalse(failed)
        self.assertIsNone(row["path"])
        self.assertIsNone(row["ours_kernel"])
        self.assertIsNone(row["ours_sm80_kernel"])
        self.assertNotIn("ours_rel_err", row)  # no reference, no check

    def test_baseline_failure_does_not_fail_the_row(self):
        row, failed, _ = self.run_ours([{"value": 1.0, "kernel": "sm80_fwd_x"}, {"value": 1.0, "kernel": "sm80_fwd_x"}],
                                       base_paths={"error": "old build"})
        self.assertFalse(failed)
        self.assertEqual(list(row["errors"]), ["base"])


class Fp8RowTests(unittest.TestCase):
    """fwd.time_fp8: an e4m3 row's fp8 forward (checked with the fp8 limit), our bf16 forward beside it, and what a GPU
    without the fp8 kernels does to the row."""

    class Lib:
        """A loaded library whose calls are keyed by what make_params returns: each writes its value into its own
        output and reports its kernel, or raises its error."""

        def __init__(self, specs, outs):
            self.specs, self.outs = specs, outs

        def forward_call(self, key):
            spec = self.specs[key]

            def call():
                if spec.get("error"):
                    raise RuntimeError(f"fa_forward: {spec['error']}")
                self.outs[key].value = spec["value"]
            call.kernel = spec.get("kernel")
            return call

        def launched_kernels(self, call):
            call()
            return [call.kernel] if call.kernel else []

    def run_fp8(self, fp8, bf16, served_here=True, base=None):
        with mock.patch.dict(sys.modules, fake_torch()):
            for name in ("fwd", "inputs"):
                sys.modules.pop(name, None)
            fwd = importlib.import_module("fwd")
            from common import finish_row
            outs = {"fp8": FakeTensor(float("nan")), "bf16": FakeTensor(float("nan"))}
            lib = self.Lib({"fp8": fp8, "bf16": bf16}, outs)
            base_lib = self.Lib({"fp8": base, "bf16": bf16}, outs) if base else None
            row = {"errors": {}, "path": None, "note": None}
            fwd.time_fp8(row, 4e12, lib, base_lib, lambda fn: (fn(), 2.0)[1], lambda lib, path: "fp8",
                         lambda lib, path: "bf16", FakeTensor(1.0), "the flash backend", outs["fp8"], outs["bf16"],
                         served_here)
            failed = finish_row(row)
        return row, failed

    def test_fp8_and_bf16_timed_side_by_side(self):
        row, failed = self.run_fp8({"value": 1.03, "kernel": "sm90_fwd_e4m3_hdim128_128x128_2wg"},
                                   {"value": 1.001, "kernel": "sm90_fwd_bf16_hdim128_128x128_2wg"})
        self.assertFalse(failed)
        self.assertNotIn("errors", row)
        self.assertEqual((row["ours_ms"], row["ours_bf16_ms"]), (2.0, 2.0))
        self.assertAlmostEqual(row["ours_tflops"], 2000.0)
        self.assertEqual(row["path"], "sm90")
        self.assertEqual(row["ours_kernel"], "sm90_fwd_e4m3_hdim128_128x128_2wg")
        self.assertEqual(row["ours_bf16_kernel"], "sm90_fwd_bf16_hdim128_128x128_2wg")
        # 3e-2 off: beyond the bf16 limit, within fp8's (the rounded weights cost about that).
        self.assertAlmostEqual(row["ours_rel_err"], 3e-2)
        self.assertAlmostEqual(row["ours_bf16_rel_err"], 1e-3)

    def test_a_wrong_fp8_result_is_a_failure(self):
        row, failed = self.run_fp8({"value": 1.1, "kernel": "sm90_fwd_e4m3_x"}, {"value": 1.0, "kernel": "sm90_fwd_bf16_x"})
        self.assertTrue(failed)
        self.assertEqual(list(row["errors"]), ["mismatch"])
        self.assertIn("exceeds 0.06", row["errors"]["mismatch"])
        row, failed = self.run_fp8({"value": 1.0, "kernel": "sm90_fwd_e4m3_x"}, {"value": 1.03, "kernel": "sm90_fwd_bf16_x"})
        self.assertTrue(failed)  # the bf16 forward keeps the bf16 limit
        self.assertEqual(list(row["errors"]), ["mismatch_bf16"])

    def test_refused_fp8_is_a_note_off_hopper_and_a_failure_on_it(self):
        refused = {"error": "FA_STATUS_UNSUPPORTED: fp8 (e4m3) is served by the sm90 forward only"}
        row, failed = self.run_fp8(refused, {"value": 1.0, "kernel": "sm80_fwd_bf16_x"}, served_here=False)
        self.assertFalse(failed)
        self.assertNotIn("errors", row)
        self.assertIn("does not serve it", row["note"])
        self.assertIn("FA_STATUS_UNSUPPORTED", row["note"])
        self.assertIsNone(row.get("ours_ms"))
        self.assertEqual(row["ours_bf16_ms"], 2.0)
        row, failed = self.run_fp8(refused, {"value": 1.0, "kernel": "sm90_fwd_bf16_x"}, served_here=True)
        self.assertTrue(failed)
        self.assertEqual(list(row["errors"]), ["ours"])

    def test_fp8_is_expected_where_the_library_says_it_serves_it(self):
        """fwd.fp8_served_here asks fa_query_support (common.FaLib.serves) for the fp8 forward on cc 9.0, so that a
        Hopper build without the fp8 kernels makes a note, not a failure; another GPU never expects fp8."""
        asked = []

        def query(ptr):
            q = ctypes.cast(ptr, ctypes.POINTER(fa_abi.FaSupportQuery)).contents
            asked.append((getattr(q, "pass"), q.dtype, q.head_dim, q.causal, q.compute_capability, q.struct_size))
            return 0 if q.head_dim == 128 else fa_abi.FA_STATUS_UNSUPPORTED
        with mock.patch.dict(sys.modules, fake_torch()):
            for name in ("fwd", "inputs"):
                sys.modules.pop(name, None)
            fwd = importlib.import_module("fwd")
            import common
            lib = common.FaLib.__new__(common.FaLib)
            lib.lib = types.SimpleNamespace(fa_query_support=lambda ptr: query(ptr))
            for cc, d, want in (((9, 0), 128, True), ((9, 0), 256, False), ((8, 0), 128, False)):
                sys.modules["torch"].cuda.get_device_capability = lambda cc=cc: cc
                self.assertEqual(fwd.fp8_served_here(lib, d, True), want, (cc, d))
        self.assertEqual(asked[0], (fa_abi.FA_PASS_FORWARD, fa_abi.FA_DTYPE_FLOAT8_E4M3, 128, 1, 90,
                                    ctypes.sizeof(fa_abi.FaSupportQuery)))
        self.assertEqual(len(asked), 2)  # cc 8.0 is answered without asking
        lib.lib = types.SimpleNamespace()
        self.assertFalse(lib.serves(fa_abi.FA_PASS_FORWARD, fa_abi.FA_DTYPE_FLOAT8_E4M3, 128, True, 90))

    def test_baseline_times_its_fp8_forward(self):
        row, failed = self.run_fp8({"value": 1.0, "kernel": "sm90_fwd_e4m3_x"}, {"value": 1.0, "kernel": "sm90_fwd_bf16_x"},
                                   base={"error": "FA_STATUS_UNSUPPORTED: an older build"})
        self.assertFalse(failed)
        self.assertEqual(list(row["errors"]), ["base"])


class KernelLogTests(unittest.TestCase):
    def test_launch_messages(self):
        from common import kernel_from_log, kernel_path_of
        self.assertEqual(kernel_from_log("fa_forward: sm80_fwd_bf16_hdim128_local_128x64_4w for b=1 ..."),
                         ("fa_forward", "sm80_fwd_bf16_hdim128_local_128x64_4w"))
        self.assertEqual(kernel_from_log("fa_backward: sm90_bwd_bf16_hdim128_64x128_2wg for x")[0], "fa_backward")
        self.assertIsNone(kernel_from_log("fa_forward: nothing to launch for varlen ..."))
        self.assertIsNone(kernel_from_log("fa_forward: (unnamed kernel) for x"))
        self.assertIsNone(kernel_from_log("fa_context_create: device 0 (NVIDIA H200)"))
        self.assertEqual(kernel_path_of("sm90_fwd_bf16_hdim128_128x128_2wg"), "sm90")
        self.assertEqual(kernel_path_of("sm80_fwd_fp16_hdim64_128x64_4w"), "sm80")
        self.assertIsNone(kernel_path_of("hopper_fwd"))
        self.assertIsNone(kernel_path_of(None))

    def test_launched_kernels_sets_and_clears_the_callback(self):
        from common import FaLib
        state = {}

        class Lib:
            def fa_set_log_callback(self, callback, user_data):
                state["callback"] = callback
                return 0

        fa = object.__new__(FaLib)
        fa.lib, fa.missing, fa.name = Lib(), [], "fake"

        def call():
            cb = state["callback"]
            cb(0, b"fa_context_create: device 0", None)
            cb(0, b"fa_backward: sm90_bwd_x for y", None)
            cb(0, b"fa_forward: sm90_fwd_bf16_hdim256_128x80_2wg for b=2", None)
        self.assertEqual(fa.launched_kernels(call), ["sm90_fwd_bf16_hdim256_128x80_2wg"])
        self.assertFalse(state["callback"])  # a NULL callback: logging off for the timed calls
        fa.missing = ["fa_set_log_callback"]
        ran = []
        self.assertIsNone(fa.launched_kernels(lambda: ran.append(1)))
        self.assertEqual(ran, [1])


class CeilingTests(unittest.TestCase):
    def measure(self, dtype, **fake):
        import ceilings
        with mock.patch.dict(sys.modules, fake_torch(**fake)):
            torch = sys.modules["torch"]
            row = ceilings.measure(dtype, lambda fn: (fn(), 2.0)[1])
        return row, torch.calls

    def test_bf16_and_fp8(self):
        row, calls = self.measure("bf16")
        self.assertEqual(calls, ["matmul"])
        self.assertEqual((row["pass"], row["dtype"], row["matmul_ms"]), ("matmul", "bf16", 2.0))
        self.assertAlmostEqual(row["matmul_tflops"], 2 * 8192 ** 3 / 2.0 / 1e9)
        self.assertNotIn("errors", row)
        row, calls = self.measure("e4m3")
        self.assertEqual(calls[0], ("scaled_mm", "float8_e4m3fn", 1.0, "bfloat16", False))
        self.assertEqual(len(calls), 2)  # the check call, then the timed one
        self.assertEqual((row["op"], row["out_dtype"], row["scale_a"], row["scale_b"]),
                         ("torch._scaled_mm", "bf16", 1.0, 1.0))
        self.assertAlmostEqual(row["matmul_tflops"], 2 * 8192 ** 3 / 2.0 / 1e9)

    def test_failures_are_recorded_not_raised(self):
        row, _ = self.measure("e4m3", scaled_mm=False)
        self.assertIsNone(row["matmul_tflops"])
        self.assertIn("torch._scaled_mm is not available", row["errors"]["matmul"])
        row, _ = self.measure("e4m3", float8=False)
        self.assertIn("float8_e4m3fn", row["errors"]["matmul"])
        row, _ = self.measure("bf16", matmul_error=RuntimeError("CUDA out of memory.\nmore"))
        self.assertEqual(row["errors"]["matmul"], "RuntimeError: CUDA out of memory.")
        import ceilings
        with mock.patch.dict(sys.modules, {"torch": None}):
            row = ceilings.measure("bf16", lambda fn: 1.0)
        self.assertIn("torch", row["errors"]["matmul"])
        self.assertEqual(ceilings.rate([row], "bf16"), None)


class ReportTests(unittest.TestCase):
    def rows(self):
        from shapes import matmul_row
        fwd = {"pass": "fwd", "dtype": "fp16", "d": 128, "causal": 1, "b": 4, "h": 16, "hkv": 16, "sq": 4096,
               "sk": 4096,
               "ours_tflops": 540.0, "ours_sm80_tflops": 300.0, "managed_tflops": 530.0, "flash_tflops": 300.0,
               "cudnn_tflops": 600.0, "matmul_tflops": 700.0, "path": "sm90", "ours_rel_err": 1e-3,
               "ours_sm80_rel_err": 4e-3, "errors": {"cudnn": "late"}}
        mm, fp8 = matmul_row("bf16"), matmul_row("e4m3")
        mm["matmul_tflops"] = 700.0
        fp8["errors"] = {"matmul": "RuntimeError: torch._scaled_mm is not available in torch 2.0"}
        return [fwd, mm, fp8]

    def test_forward_ratios_and_matmul_fraction(self):
        import report
        table = report.format_table(self.rows())
        header, line = table.splitlines()[:2]
        self.assertTrue(header.startswith("fp16 fwd TFLOP/s"))
        cells = dict(zip(header[28:].split(), line[28:].split()))
        self.assertEqual(cells["ours"], "540")
        self.assertEqual(cells["sm80"], "300")
        self.assertEqual(cells["ours/cu"], "0.90")
        self.assertEqual(cells["sm80/cu"], "0.50")
        self.assertEqual(cells["ours/fl"], "1.80")
        self.assertEqual(cells["ours/mm"], "0.77")
        self.assertEqual(cells["path"], "sm90")
        self.assertEqual(cells["rel.err"], "4.0e-03")  # the worse of the two paths
        self.assertIn("[cudnn: late]", line)
        self.assertIn("(700 TFLOP/s)", table)

    def test_ceiling_lines_show_rates_and_errors(self):
        import report
        lines = report.format_ceilings(self.rows()).splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("bf16 matmul 8192^3 (torch.matmul) 700 TFLOP/s", lines[0])
        self.assertIn("e4m3 matmul 8192^3", lines[1])
        self.assertIn("torch._scaled_mm is not available", lines[1])
        self.assertEqual(report.format_ceilings([], {"matmul_tflops": 694.0}),
                         "ceiling (same run): bf16 matmul 8192^3 694 TFLOP/s (cuBLAS through torch)")

    def test_e4m3_section(self):
        import report
        from shapes import new_row, shapes_grid
        r = new_row(shapes_grid(True, "fwd", ["e4m3"])[0])
        r.update(ours_tflops=900.0, ours_bf16_tflops=450.0, flash_tflops=300.0, cudnn_tflops=600.0,
                 matmul_tflops=1200.0, path="sm90", ours_rel_err=2.5e-2, ours_bf16_rel_err=1e-3,
                 note="fp8 not timed here")
        bf = {"pass": "fwd", "dtype": "bf16", "d": 64, "causal": 0, "b": 16, "h": 32, "hkv": 32, "sq": 1024,
              "sk": 1024, "ours_tflops": 300.0, "matmul_tflops": 700.0}
        lines = report.format_table([bf, r]).splitlines()
        header = next(line for line in lines if line.startswith("e4m3 fwd TFLOP/s"))
        line = lines[lines.index(header) + 1]
        cells = dict(zip(header[28:].split(), line[28:].split()))
        self.assertEqual((cells["ours"], cells["bf16"], cells["flash"], cells["cudnn"]), ("900", "450", "300", "600"))
        self.assertEqual(cells["ours/bf16"], "2.00")
        self.assertEqual(cells["ours/cu"], "1.50")
        self.assertEqual(cells["ours/mm"], "0.75")  # over the e4m3 matmul rate
        self.assertEqual(cells["rel.err"], "2.5e-02")
        self.assertNotIn("sm80", header)
        self.assertIn("(fp8 not timed here)", line)
        self.assertIn("(700 TFLOP/s)", lines[-2])  # the bf16 legend keeps the bf16 rate
        self.assertIn("e4m3 matmul rate of this run (1200 TFLOP/s)", lines[-1])

    def test_missing_figures_are_dashes(self):
        import report
        from shapes import new_row, shapes_grid
        line = report.format_table([new_row(shapes_grid(True, "fwd", ["bf16"])[0])]).splitlines()[1]
        self.assertEqual(set(line[28:].split()), {"-"})


class DecodeFp8CacheRowTests(unittest.TestCase):
    """bench/decode.py's fp8-cache rows (issue 15, C ABI 0.13) without a GPU: planned beside the bf16 rows, their bytes
    and ratio, and how the report names them."""

    def test_planned_fp8_rows(self):
        import decode
        rows = decode.planned_rows()
        fp8 = [r for r in rows if r.get("kv_cache_dtype") == "e4m3"]
        # B 16 / 32 / 8 / D 128 at every length (4k, 16k, 32k and 128k among them), and the b1 row at 128k.
        self.assertTrue({4096, 16384, 32768, 131072} <= {r["sk"] for r in fp8 if r["b"] == decode.B})
        self.assertTrue(all((r["h"], r["hkv"], r["d"], r["sq"]) == (32, 8, 128, 1) for r in fp8))
        self.assertIn((1, 131072), {(r["b"], r["sk"]) for r in fp8})
        for r in fp8:
            self.assertEqual(r["dtype"], "bf16")  # q's (and out's): the cache's dtype is kv_cache_dtype
            self.assertIn("SDPA has no fp8 cache", r["note"])
            self.assertIn("fp8_speedup", r)
            self.assertIsNone(r["paged_block"])
        # Each fp8 row has the bf16 row of its shape planned too (its ratio's denominator).
        for r in fp8:
            self.assertTrue(any(o["sk"] == r["sk"] and o["b"] == r["b"] and o["paged_block"] is None and
                                not o.get("kv_cache_dtype") and o["serving"] in (None, "b1") for o in rows), r)

    def test_fp8_bandwidth_counts_the_bytes_read(self):
        import decode
        row = decode.new_row(32768, None, "fp8_cache")
        row.update(kv_cache_dtype="e4m3", ours_ms=0.25, flash_ms=0.5, cudnn_ms=0.5)
        decode._rates(row, 32768)
        bf16_bytes = 2.0 * 16 * 8 * 32768 * 128 * 2
        self.assertAlmostEqual(row["ours_tbps"], bf16_bytes / 2 / 0.25 / 1e9)  # one byte an element
        self.assertAlmostEqual(row["flash_tbps"], bf16_bytes / 0.5 / 1e9)  # SDPA reads the bf16 cache

    def test_report_names_the_fp8_rows_and_their_ratio(self):
        import decode
        import report
        row = decode.new_row(32768, None, "fp8_cache")
        row.update(kv_cache_dtype="e4m3", ours_ms=0.25, bf16_cache_ms=0.5, fp8_speedup=2.0, copy_tbps=4.2)
        self.assertIn("kv-e4m3", report.describe_decode(row))
        table = report.format_decode_table([row])
        self.assertIn("bf16/fp8 2.00x", table)
        self.assertIn("bf16/fp8 2.00x", decode.format_table([row]))


class DetSimTest(unittest.TestCase):
    """bench/det_sim.py, the schedule model of the deterministic backward's turns, on cases with a closed form."""

    def test_turns_cost_nothing_without_lag(self):
        from det_sim import makespan
        for causal in (False, True):
            base = makespan(4, 8, 16, 12, False, causal, False)
            self.assertEqual(makespan(4, 8, 16, 12, True, causal, False, lag=0.0), base)

    def test_one_head_resident_lags_by_rank(self):
        # Every key block resident at once, the same pace: key block n of copy n % 2 waits (n // 2) lags once.
        from det_sim import makespan
        n, m, lag = 8, 16, 0.25
        self.assertEqual(makespan(1, n, m, n, False, False, False), m)
        self.assertAlmostEqual(makespan(1, n, m, n, True, False, False, lag=lag), m + (n - 1) // 2 * lag)
        self.assertAlmostEqual(makespan(1, n, m, n, True, False, False, lag=lag, copies=1), m + (n - 1) * lag)


class BwdGridOrderTest(unittest.TestCase):
    """bench/bwd_grid_order.py, the schedule model behind FA_BWD_GRID_LPT (its grid_coord mirrors
    common/bwd_schedule.h, which native/tests/schedule_test.cpp checks)."""

    def test_makespan_closed_forms(self):
        from bwd_grid_order import makespan
        self.assertEqual(makespan([1.0] * 10, 5), 2.0)
        self.assertEqual(makespan([3.0, 1.0, 1.0, 1.0], 2), 3.0)
        self.assertEqual(makespan([1.0, 1.0, 1.0, 3.0], 2), 4.0)  # the long job last: what the head-major order risks

    def test_orders_are_permutations(self):
        from bwd_grid_order import orders
        for causal in (False, True):
            runs = orders(2048, 6, 128, 64, causal, 1.0, sms=8)
            for r in runs[1:]:
                self.assertEqual(sorted(r), sorted(runs[0]))
            self.assertEqual(len(runs[0]), 6 * 16)
        head, tailed, lpt = orders(2048, 6, 128, 64, True, 0.0, sms=8)
        self.assertEqual(lpt[:6], [32.0] * 6)  # every pair's key block 0 (all 32 query blocks) first
        self.assertEqual(head[:2], [32.0, 30.0])
        self.assertEqual(tailed[:16], head[:16])  # tail of 1 pair (16 key blocks >= 2 waves of 8): the rest head-major

    def test_unmasked_orders_agree_and_causal_tail_is_near_the_bound(self):
        from bwd_grid_order import ratios
        hm, tl, kb = ratios(1024, 256, causal=False)
        self.assertEqual(hm, tl)
        self.assertEqual(hm, kb)
        for seq, heads, group in ((1024, 256, 1), (4096, 64, 1), (4096, 32, 4)):
            hm, tl, kb = ratios(seq, heads, causal=True, group=group)
            self.assertLess(tl, 1.035)
            self.assertLess(tl, hm - 0.03)


class WsProtocolTest(unittest.TestCase):
    """bench/ws_protocol.py, the model of the warp-specialized sm90 backward's hand-overs: the kernel's rules pass under
    random interleavings; a stage released once too often, or a dQ buffer handed back twice, is caught."""

    def test_kernel_rules_hold(self):
        from ws_protocol import sweep
        self.assertEqual(sweep(max_iters=10, seeds=40), [])

    def test_extra_release_is_caught(self):
        from ws_protocol import sweep
        failures = sweep(max_iters=6, seeds=10, release_if=lambda it, n, s: it + s <= n)
        self.assertTrue(any("pending at exit" in f[-1] for f in failures))

    def test_buffer_handed_back_twice_is_caught(self):
        from ws_protocol import sweep
        failures = sweep(max_iters=6, seeds=10, dq_refree_if=lambda it, n, b: it + 1 < n)
        self.assertTrue(any("over-subscribed" in f[-1] and f[2] == 2 for f in failures))
        self.assertFalse(any(f[2] == 1 for f in failures))  # (with one buffer the two rules agree)

    def test_missing_release_deadlocks(self):
        from ws_protocol import sweep
        failures = sweep(max_iters=6, seeds=5, release_if=lambda it, n, s: it + s < n - 1)
        self.assertTrue(any("deadlock" in f[-1] for f in failures))


class LagProtocolTest(unittest.TestCase):
    """bench/lag_protocol.py, the model of the sm90 backward's dQ lag (FA_SM90_BWD_DQ_LAG): the kernel's hand-over
    passes under random interleavings (varlen partial blocks' CTA barrier included); one barrier per warpgroup instead
    of two, a wait on the wrong parity, thread 0's load before its wait, or an arrival before the products retire is
    caught."""

    def test_kernel_rules_hold(self):
        from lag_protocol import sweep
        self.assertEqual(sweep(max_iters=10, seeds=40), [])

    def test_one_barrier_a_warpgroup_is_caught(self):
        from lag_protocol import sweep
        failures = sweep(max_iters=4, seeds=3, wait_parity=lambda it: 1, arrive_parity=lambda it: 1)
        self.assertTrue(failures)

    def test_wrong_parity_deadlocks(self):
        from lag_protocol import sweep
        failures = sweep(max_iters=4, seeds=2, wait_parity=lambda it: it % 2)
        self.assertTrue(any("deadlock" in f[-1] for f in failures))

    def test_load_before_the_wait_is_caught(self):
        from lag_protocol import sweep
        failures = sweep(max_iters=6, seeds=20, load_first=True)
        self.assertTrue(any("load into stage" in f[-1] for f in failures))

    def test_arrival_before_the_retirement_is_caught(self):
        from lag_protocol import sweep
        failures = sweep(max_iters=6, seeds=10, mut="arrive_early")
        self.assertTrue(any("before both warpgroups finished" in f[-1] for f in failures))


class BwdTraceTest(unittest.TestCase):
    """bench/bwd_trace.py's summary of a trace (no GPU): cycles per iteration from the per-CTA sums."""

    def test_phase_cycles_per_iteration(self):
        import bwd_trace
        cells = {(0, 0, 1): 1000, (0, 0, 8): 500, (0, 0, 9): 10, (0, 0, 10): 300, (0, 0, 11): 150,
                 (1, 0, 1): 1000, (1, 0, 8): 500, (1, 0, 9): 10,
                 (1, 2, 0): 80, (1, 2, 2): 20, (1, 2, 9): 4}
        text = bwd_trace.summarize(lambda c, r, e: cells.get((c, r, e), 0), "synthetic")
        self.assertIn("consumer 0: 2 CTAs, 20 iterations, 150 cycles an iteration", text)
        self.assertIn("S,dP 100 (67%)  dQ adds 50 (33%)", text)
        self.assertIn("prologue 150, epilogue 75 cycles (1.50 iterations)", text)
        self.assertIn("turn warp: 1 CTAs, 4 iterations, 25 cycles an iteration", text)
        self.assertNotIn("consumer 1", text)

    def test_rows(self):  # (shapes.parse_rows, which bench/ab.py --rows takes too)
        import shapes
        self.assertEqual(shapes.parse_rows("16x16x1024x64, 1x8x4096x128c, 4x32/8x4096x128c"),
                         [(16, 16, 16, 1024, 64, False), (1, 8, 8, 4096, 128, True), (4, 32, 8, 4096, 128, True)])
        for bad in ("4x32/6x4096x128", "4x32/0x4096x128", "4x32x4096"):
            with self.assertRaises(ValueError):
                shapes.parse_rows(bad)


class PtxasRegsTest(unittest.TestCase):
    """bench/ptxas_regs.py on a canned -Xptxas -v log, and bench/ab_knobs.sh's argument checks (no GPU, no build)."""
    LOG = """ptxas info    : Compiling entry function '_ZN2fa4sm9015fwd_kernel_sm90I13__nv_bfloat16Li128EEEvNS0_9FwdArgs90E' for 'sm_90a'
ptxas info    : Function properties for _ZN2fa4sm9015fwd_kernel_sm90I13__nv_bfloat16Li128EEEvNS0_9FwdArgs90E
    16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 16 bytes cumulative stack size
ptxas info    : Compiling entry function '_ZN2fa4sm8014fwd_kernel_sm80ILi64EEEvNS_9FwdParamsE' for 'sm_90a'
ptxas info    : Used 255 registers
ptxas /tmp/x.ptx, line 9; warning : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized
ptxas info    : Compiling entry function '_ZN2fa4sm9015fwd_kernel_sm90I13__nv_bfloat16Li128EEEvNS0_9FwdArgs90E' for 'sm_90a'
ptxas info    : Used 168 registers
"""

    def test_parse(self):
        import ptxas_regs
        rows = ptxas_regs.parse(self.LOG.splitlines(), re.compile("fwd_kernel_sm90"))
        # the sm90 kernel once (the log repeats it), with its spills; the sm80 one left out by the pattern
        self.assertEqual(rows, [("_ZN2fa4sm9015fwd_kernel_sm90I13__nv_bfloat16Li128EEEvNS0_9FwdArgs90E", 168, 12, 20)])
        rows = ptxas_regs.parse(self.LOG.splitlines(), re.compile("sm80"))
        self.assertEqual(rows, [("_ZN2fa4sm8014fwd_kernel_sm80ILi64EEEvNS_9FwdParamsE", 255, 0, 0)])

    def test_main(self):
        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, "build.log")
            with open(log, "w") as f:
                f.write(self.LOG)
            out = subprocess.run([sys.executable, os.path.join(HERE, "ptxas_regs.py"), log, "sm90", "--tail", "0",
                                  "--serialized"], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout.splitlines(), [
                "168 12/20 _ZN2fa4sm9015fwd_kernel_sm90I13__nv_bfloat16Li128EEEvNS0_9FwdArgs90E",
                "wgmma serialization warnings (C7510-C7515): 1"])
            out = subprocess.run([sys.executable, os.path.join(HERE, "ptxas_regs.py"), log, "no_such_kernel"],
                                 capture_output=True, text=True)
            self.assertEqual((out.returncode, out.stdout), (1, ""))

    def test_ab_bitwise(self):
        """ab.py --bitwise: only with the deterministic backward or the forward under dropout; bit_diff counts the
        elements whose bits differ."""
        with mock.patch.dict(sys.modules, fake_torch()):
            sys.modules.pop("ab", None)
            ab = importlib.import_module("ab")
            self.assertTrue(ab.parse_args(["--lib", "A=x", "--pass", "bwd", "--det", "--bitwise"]).bitwise)
            self.assertTrue(ab.parse_args(["--lib", "A=x", "--dropout", "0.17", "--bitwise"]).bitwise)
            for bad in (["--bitwise"], ["--pass", "bwd", "--bitwise"], ["--det", "--bitwise"],
                        ["--pass", "bwd", "--dropout", "0.17", "--bitwise"]):
                with self.assertRaises(SystemExit), mock.patch("sys.stderr"):
                    ab.parse_args(["--lib", "A=x"] + bad)

            class Bits:  # a tensor of 16-bit patterns: view() keeps them, != compares them element by element
                def __init__(self, bits):
                    self.bits = list(bits)

                def view(self, _dtype):
                    return self

                def __ne__(self, other):
                    return Bits(int(a != b) for a, b in zip(self.bits, other.bits))

                def sum(self):
                    return sum(self.bits)

            ab.torch.int16 = "int16"
            a, b = Bits([1, 2, 0x8000]), Bits([1, 2, 0])  # -0.0 against +0.0: equal values, different bits
            self.assertEqual(ab.bit_diff((a, a), (a, b)), 1)
            self.assertEqual(ab.bit_diff((a,), (a,)), 0)

    def test_ab_dropout(self):
        """ab.py --dropout: p in [0, 1), 16-bit only, one (p, seed, offset) for every build; its check compares each
        build's outputs with the first build's (the same mask), not with the reference."""
        with mock.patch.dict(sys.modules, fake_torch()):
            sys.modules.pop("ab", None)
            ab = importlib.import_module("ab")
            self.assertIsNone(ab.parse_args(["--lib", "A=x"]).drop)
            self.assertEqual(ab.parse_args(["--lib", "A=x", "--dropout", "0.2"]).drop,
                             (0.2, ab.BENCH_DROPOUT_SEED, ab.BENCH_DROPOUT_OFFSET))
            for bad in (["--dropout", "1"], ["--dropout", "-0.1"], ["--dropout", "0.1", "--dtype", "e4m3"]):
                with self.assertRaises(SystemExit), mock.patch("sys.stderr"):
                    ab.parse_args(["--lib", "A=x"] + bad)

            class Out(float):
                def clone(self):
                    return Out(self)

            with mock.patch.object(ab, "rel_err", lambda a, r: abs(a - r)):
                plain = ab.parse_args(["--lib", "A=x"])
                check = ab.checker(plain, lambda alibi: (Out(1.0),), 0.01)
                self.assertIsNone(check((Out(1.005),)))
                self.assertIn("rel.err", check((Out(2.0),)))
                dropped = ab.parse_args(["--lib", "A=x", "--dropout", "0.1"])
                check = ab.checker(dropped, lambda alibi: (Out(1.0),), 0.01)
                self.assertIsNone(check((Out(5.0),)))           # the first build's outputs: kept
                self.assertIsNone(check((Out(5.004),)))         # the next build's, against them
                self.assertIn("rel.err", check((Out(1.0),)))    # (not against the reference)
                check = ab.checker(dropped, lambda alibi: (Out(1.0),), 0.01)
                self.assertIn("non-finite", check((Out(float("nan")),)))  # a first build's unwritten outputs
            sys.modules.pop("ab", None)

    def test_ab_knobs_arguments(self):
        script = os.path.join(HERE, "ab_knobs.sh")
        for args, message in ((["--bogus"], "unknown option --bogus"), (["--", "bad name=x"], "is not NAME=FLAGS"),
                              (["--tests", "Q", "--", "A="], "--tests Q is not a build"), ([], "usage")):
            out = subprocess.run(["bash", script] + args, capture_output=True, text=True)
            self.assertEqual(out.returncode, 2, (args, out.stdout, out.stderr))
            self.assertIn(message, out.stderr)


if __name__ == "__main__":
    unittest.main()
