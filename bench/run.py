#!/usr/bin/env python3
"""Side-by-side forward and backward benchmark on one GPU: our libflash_attention against PyTorch SDPA.

Forward rows ("forward features" issue, TARGETS.md): the grid bf16, D 64/128/256, causal and not, S 1k/4k/16k,
B = 16384 / S, H = 2048 / D; a GQA row (32 q heads, 8 kv heads, D 128, S 4096, B 4, causal); and a
variable-length row (a packed batch of 16 sequences of random lengths 256..2048, fixed seed, D 128,
H 16, causal). Each is measured, in one process and with one method (triton.testing.do_bench, median,
L2 flushed before every call, as shared/tools/sdpa_anchors.py):

  ours    fa_forward called through the C ABI with ctypes on torch-allocated tensors
          ([B, S, H, D] contiguous; varlen: packed [total, H, D] with cu_seqlens and host copies),
          on torch's current stream, with the default path (FA_PATH_AUTO: the Hopper kernels where they
          serve); the kernel it ran (from the library's launch log) in ours_kernel, its family in path;
  sm80    the same call forced onto the portable mma.sync kernels (kernel_path = FA_PATH_SM80): ours_sm80_*;
  flash   torch SDPA with the FLASH_ATTENTION backend (FlashAttention-2 kernels); for varlen,
          torch.ops.aten._flash_attention_forward with cum_seq_q / cum_seq_k when this PyTorch has it;
  cudnn   torch SDPA with the CUDNN_ATTENTION backend (null for varlen).

The grid, GQA and varlen rows are run in bf16 and in fp16, and the grid in e4m3 (--fwd-dtypes): the fp8 forward
(ours, descales of 1 per (batch, kv head)) beside our bf16 forward on the same shape and values (ours_bf16_*) and
PyTorch SDPA's flash and cuDNN backends in bf16 (PyTorch has no fp8 attention), with the e4m3 matmul ceiling as the
row's matmul_tflops; a GPU that the library's fp8 kernels do not serve (compute capability other than 9.0) gets a note
instead of fp8 figures. With a C ABI mirror that has no fp8 dtype the e4m3 group is declared and skipped (the
record's skipped_groups says so), and no row is made up.
Our outputs (both paths) are checked against the flash backend's (relative Frobenius error; varlen: against PyTorch's
varlen output, else a per-sequence SDPA loop), so a fast but wrong kernel shows up in the table. When
--bench-exe names the managed benchmark (bench/README.md has its contract) it runs first, in a child
process, and its median goes to the `managed_ms` column: the same kernel timed through the C# API.
Its interop line (host cost of one managed Forward call) is set beside bench/interop_c.c's figure for
the same launch from C (compiled here with cc) in an extra "interop" row.

Backward rows (pass "bwd", unless --skip-bwd): the same grid, GQA row and varlen row. Each times only the backward
kernels: ours is fa_backward through the ctypes mirror of fa_backward_params_t, with O and the log-sum-exp from our
own forward and a caller workspace (fa_backward_workspace_size), in the default (atomic) mode and in deterministic
mode (ours_det_ms); PyTorch's is torch.autograd.grad(out, (q, k, v), dO, retain_graph=True) after one forward with
requires_grad (flash and cuDNN backends; varlen: aten._flash_attention_backward after aten._flash_attention_forward).
FLOPs are 2.5x the forward's. Our dq, dk and dv are checked against the flash backend's gradients.

Decode rows (pass "decode", unless --skip-decode) come from bench/decode.py's decode_rows(lib_path, quick) when that
module exists (its own method; see bench/README.md).

With --baseline-lib, a second build of the library (say, the previous commit's) is loaded beside the first with its
own ctypes.CDLL and timed on the same tensors right after ours in every forward and backward row (default mode):
ours_base_ms / ours_base_tflops, and a base and ours/base column in the table. --only picks a subset of the passes
(fwd, which includes the managed bench and the interop row's measurements; bwd; decode).

Ceilings, measured in the same run (ceilings.py; pass "matmul" rows): an 8192^3 bf16 matmul (torch.matmul) and an
8192^3 fp8 e4m3 matmul (torch._scaled_mm, unit scales, bf16 output); one that cannot be measured keeps null figures
and its error. Every forward and backward row gets the bf16 figure as matmul_tflops, the e4m3 rows the e4m3 one.

Writes the TARGETS.md record ({card, date, commit, rows}) to --out and prints a table last.
--dry-run needs no GPU and no torch: it lists the rows, their FLOP counts, and writes a record with
null figures (to check the pure-Python parts).

Modules: run.py (arguments, the order of the passes, the record) -> fwd.py, bwd.py (GPU passes, imported only when
they run), decode.py (optional), ceilings.py (matmul rows), external.py (managed exe, interop_c), report.py (table,
PNG), shapes.py (rows, FLOPs) -> common.py (library loading, descriptors, timing) -> fa_abi.py (the ctypes mirror
bench/fa_abi.py, generated from the header by bindings/Generator).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

from ceilings import CEILING_DTYPES, ceiling_rows, rate
from common import HERE, REPO, FaLib, Timer, lib_file
from external import run_interop_c, run_managed
from fa_abi import FA_VERSION_CODE
from report import describe_decode, describe_shape, write_outputs
from shapes import (FP8_FWD_DTYPES, FWD_DTYPES, interop_row, managed_spec, matmul_row, new_row, pass_flops,
                    shapes_grid, skip_reason)

PASSES = ("fwd", "bwd", "decode")


def git_commit(given):
    """--commit, else git's description of this tree, but only when this tree is a git checkout's top level: a copy
    of the tree inside another checkout (say, a snapshot taken to the GPU machine) would otherwise be described by
    the enclosing checkout's commit, which is not the code measured."""
    if given:
        return given
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             cwd=REPO).stdout.strip()
        if not top or os.path.realpath(top) != os.path.realpath(REPO):
            return "unknown (not a git checkout of this tree: pass --commit)"
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=REPO).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def decode_module(log):
    """bench/decode.py (the decode engineer's rows) when it exists: (module, None), (None, why not), or
    (None, error) when it exists but cannot be imported."""
    path = os.path.join(HERE, "decode.py")
    if not os.path.exists(path):
        return None, None
    try:
        if HERE not in sys.path:
            sys.path.insert(0, HERE)
        import decode  # noqa: PLC0415 - optional module, imported only when present
        if not callable(getattr(decode, "decode_rows", None)):
            return None, "bench/decode.py has no decode_rows(lib_path, quick)"
        return decode, None
    except Exception as e:  # noqa: BLE001 - a broken module is reported, the rest of the run goes on
        print(f"# decode: import failed: {e}", file=log, flush=True)
        return None, f"bench/decode.py failed to import: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"


def run_decode(args, lib_path, log):
    """The decode rows from bench/decode.py: (rows, error). Rows without a "pass" get "decode"."""
    if args.skip_decode:
        return [], None
    mod, err = decode_module(log)
    if mod is None:
        if err is None:
            print("# decode: bench/decode.py not present; no decode rows", file=log, flush=True)
        return [], err
    try:
        got = mod.decode_rows(lib_path, quick=args.quick, baseline_path=args.baseline_lib)
    except Exception as e:  # noqa: BLE001
        return [], f"decode_rows raised {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    rows = []
    for r in got or []:
        if isinstance(r, dict):
            r.setdefault("pass", "decode")
            rows.append(r)
    return rows, None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.environ.get("FLASH_ATTENTION_NATIVE_PATH", "artifacts/native/libflash_attention.so"),
                    help="path of libflash_attention.so (a folder is accepted)")
    ap.add_argument("--baseline-lib", default=None,
                    help="a second build of libflash_attention.so (a folder is accepted), timed beside --lib in the same "
                         "process on the same tensors for every forward and backward row (ours_base_ms)")
    ap.add_argument("--bench-exe", default=None, help="the self-contained FlashAttention.Bench (optional)")
    ap.add_argument("--interop-c", default=os.path.join(HERE, "interop_c.c"),
                    help="C source of the interop baseline (compiled with cc against --lib); '' skips it")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "build/gpu-test"), "bench.json"))
    ap.add_argument("--table", default=None, help="also write the table to this file")
    ap.add_argument("--png", default=None, help="bar chart of TFLOP/s (needs matplotlib)")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measuring time, ms")
    ap.add_argument("--managed-warmup", type=int, default=10, help="managed exe: untimed calls per shape")
    ap.add_argument("--managed-iters", type=int, default=60, help="managed exe: timed calls per shape")
    ap.add_argument("--bwd-warmup", type=int, default=25, help="do_bench warm-up time of the backward rows, ms")
    ap.add_argument("--bwd-rep", type=int, default=60, help="do_bench measuring time of the backward rows, ms")
    ap.add_argument("--only", default=",".join(PASSES),
                    help="comma-separated passes to run, of fwd (with the managed bench and the interop measurements), "
                         "bwd, decode (default: all)")
    ap.add_argument("--skip-bwd", action="store_true", help="no backward rows")
    ap.add_argument("--skip-decode", action="store_true", help="no decode rows (bench/decode.py is not called)")
    ap.add_argument("--quick", action="store_true", help="only S 1k and 4k in the grid (also passed to decode_rows)")
    ap.add_argument("--fwd-dtypes", default=",".join(FWD_DTYPES + FP8_FWD_DTYPES),
                    help="comma-separated dtypes of the forward rows, of " + ",".join(FWD_DTYPES + FP8_FWD_DTYPES)
                         + " (default: all; e4m3 times the grid only, and is skipped with a C ABI mirror that has no "
                           "fp8 dtype)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: list rows and FLOPs, write a null record")
    args = ap.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in only if p not in PASSES]
    if unknown or not only:
        ap.error(f"--only takes a comma-separated subset of {','.join(PASSES)}; got {args.only!r}")
    # The passes this run does: --only's, less the --skip-* ones.
    args.passes = [p for p in PASSES if p in only and not (p == "bwd" and args.skip_bwd)
                   and not (p == "decode" and args.skip_decode)]
    args.skip_bwd = "bwd" not in args.passes
    args.skip_decode = "decode" not in args.passes
    dtypes = [d.strip() for d in args.fwd_dtypes.split(",") if d.strip()]
    known = FWD_DTYPES + FP8_FWD_DTYPES
    if not dtypes or any(d not in known for d in dtypes):
        ap.error(f"--fwd-dtypes takes a comma-separated subset of {','.join(known)}; got {args.fwd_dtypes!r}")
    # The forward dtypes measured, and the declared groups skipped (with the reason the record gives).
    args.fwd_dtypes = [d for d in known if d in dtypes and skip_reason(d) is None]
    args.skipped_groups = ([{"pass": "fwd", "dtype": d, "reason": skip_reason(d)} for d in known
                            if d in dtypes and skip_reason(d) is not None] if "fwd" in args.passes else [])
    return args


def fwd_shapes(args):
    """The forward rows' shapes of this run (every measured dtype of --fwd-dtypes)."""
    return shapes_grid(args.quick, "fwd", args.fwd_dtypes)


def dry_run(args):
    """No GPU, no torch: the row list, FLOP counts, the managed spec and a record with null figures."""
    baseline = args.baseline_lib is not None
    shapes = (fwd_shapes(args) if "fwd" in args.passes else []) + \
        (shapes_grid(args.quick, "bwd") if "bwd" in args.passes else [])
    rows = []
    for s in shapes:
        timed_managed = s["pass_"] == "fwd" and s["dtype"] not in FP8_FWD_DTYPES
        managed = f"  managed: {json.dumps(managed_spec(s))}" if timed_managed else ""
        name = describe_shape(new_row(s))
        print(f"# {s['pass_']} {s['dtype']:4s} {name:28s} {pass_flops(s) / 1e12:9.3f} TFLOP{managed}")
        rows.append(new_row(s, baseline))
    for r in rows:
        r.pop("errors")
    for g in args.skipped_groups:
        print(f"# {g['pass']} {g['dtype']}: skipped ({g['reason']})")
    rows += [matmul_row(d) for d in CEILING_DTYPES]
    if not args.skip_decode:
        present = os.path.exists(os.path.join(HERE, "decode.py"))
        print("# decode rows: " + ("from bench/decode.py's decode_rows() at run time (needs the GPU)" if present
                                   else "none (bench/decode.py not present)"))
        mod, _ = decode_module(sys.stdout) if present else (None, None)
        if mod is not None and callable(getattr(mod, "planned_rows", None)):
            for r in mod.planned_rows(args.quick):  # what decode_rows will measure (skeletons: no figures)
                print(f"# {describe_decode(r)}")
    if baseline:
        print(f"# baseline: {lib_file(args.baseline_lib)} timed beside --lib in every forward and backward row")
    rows.append(interop_row(None, None, {}))
    record = dict(card="dry-run", date=datetime.date.today().isoformat(), commit=git_commit(args.commit),
                  skipped_groups=args.skipped_groups, rows=rows)
    write_outputs(args, record, rows, None, None, "dry-run")
    return 0


# ---- the passes of a GPU run, in the order main runs them -------------------------------------------------------

def child_processes(args, shapes, lib_path, log):
    """The managed bench and the C interop baseline, before this process holds GPU memory (both belong to the fwd
    pass). Returns (managed rows by shape, managed error, managed interop line, C interop line, C error)."""
    if "fwd" not in args.passes:
        why = "skipped (--only without fwd)"
        return {}, (why if args.bench_exe else None), None, None, why
    # The managed exe times the 16-bit rows (its contract has no fp8).
    managed_shapes = [s for s in shapes if s["dtype"] not in FP8_FWD_DTYPES]
    managed, managed_err, managed_interop = run_managed(args.bench_exe, managed_shapes, lib_path, args.managed_warmup,
                                                        args.managed_iters, log)
    if managed_err:
        print("# managed bench:", managed_err, flush=True)
    c_interop, c_err = (None, "skipped (--interop-c '')") if not args.interop_c else run_interop_c(args.interop_c, lib_path, log)
    if c_err:
        print("# interop_c:", c_err, flush=True)
    else:
        print("# interop_c:", json.dumps(c_interop), flush=True)
    return managed, managed_err, managed_interop, c_interop, c_err


def open_library(path, what):
    """Loads one build through the generated mirror, opens its context on device 0 and checks that it is the ABI
    version bench/fa_abi.py mirrors (the params structs are passed as this header lays them out)."""
    fa = FaLib(path, what)
    fa.open(0)
    print(f"# {what}: fa_version={fa.version()} {path}", flush=True)
    if fa.version() != FA_VERSION_CODE:
        raise SystemExit(f"the {what} {path} is version code {fa.version()} but bench/fa_abi.py mirrors "
                         f"{FA_VERSION_CODE}: build it from a commit with this header, or regenerate the mirror")
    return fa


def forward_pass(args, shapes, fa, base, managed, managed_err):
    """The forward rows (fwd.py), with the managed exe's figures merged in."""
    from fwd import forward_rows
    managed_missing = (managed_err or "no line for this shape") if args.bench_exe else None
    return forward_rows(shapes, fa, base, Timer(args.warmup, args.rep), managed, managed_missing)


def backward_pass(args, fa, base):
    """The backward rows (bwd.py), on the same grid."""
    from bwd import backward_rows
    return backward_rows(shapes_grid(args.quick, "bwd"), fa, base, Timer(args.bwd_warmup, args.bwd_rep))


def decode_pass(args, lib_path):
    """The decode rows of bench/decode.py: (rows, error, whether any failed). Each row is printed."""
    import torch
    rows, error = run_decode(args, lib_path, sys.stdout)
    failed = False
    if error:
        print("# decode:", error, flush=True)
        failed = True
    for row in rows:
        errs = row.get("errors") or {}
        failed = failed or "ours" in errs or "mismatch" in errs
        print("#", json.dumps(row), flush=True)
    torch.cuda.empty_cache()
    return rows, error, failed


def interop_pass(args, managed_interop, managed_err, c_interop, c_err):
    """The last row: the managed and the C host cost of one Forward call, side by side."""
    ierr = {}
    if args.bench_exe and not managed_interop:
        ierr["managed"] = managed_err or "no interop line from the bench exe"
    if c_err:
        ierr["c"] = c_err
    return interop_row(managed_interop, c_interop, ierr)


def gpu_run(args):
    """The passes on the GPU, in order (managed bench and interop_c, forward, backward, decode, interop row), then
    the record, the table and the PNG. Exit code 1 when our kernel failed or mismatched on any row."""
    lib_path = lib_file(args.lib)
    shapes = fwd_shapes(args)
    log = sys.stdout
    run_started = time.monotonic()
    managed, managed_err, managed_interop, c_interop, c_err = child_processes(args, shapes, lib_path, log)

    import torch
    props = torch.cuda.get_device_properties(0)
    card = props.name
    print(f"# {card} sms={props.multi_processor_count} torch={torch.__version__} cuda={torch.version.cuda} "
          f"cudnn={torch.backends.cudnn.version()} lib={lib_path}", flush=True)

    fa = open_library(lib_path, "library")
    base = open_library(lib_file(args.baseline_lib), "baseline library") if args.baseline_lib else None
    rows, failed = [], False
    elapsed = {"setup": time.monotonic() - run_started}  # managed bench, interop_c, torch start-up
    if "fwd" in args.passes:
        started = time.monotonic()
        got, bad = forward_pass(args, shapes, fa, base, managed, managed_err)
        rows, failed, elapsed["fwd"] = rows + got, failed or bad, time.monotonic() - started
    if "bwd" in args.passes:
        started = time.monotonic()
        got, bad = backward_pass(args, fa, base)
        rows, failed, elapsed["bwd"] = rows + got, failed or bad, time.monotonic() - started
    fa.close()
    if base is not None:
        base.close()

    decode_error = None
    if "decode" in args.passes:
        started = time.monotonic()
        got, decode_error, bad = decode_pass(args, lib_path)
        rows, failed, elapsed["decode"] = rows + got, failed or bad, time.monotonic() - started

    # The ceilings (bf16 and fp8 matmul), measured in this process; a failure stays on its row.
    started = time.monotonic()
    ceilings = ceiling_rows(Timer(args.warmup, args.rep))
    elapsed["matmul"] = time.monotonic() - started
    matmul, fp8_matmul = rate(ceilings, "bf16"), rate(ceilings, "e4m3")
    for r in rows:
        if r.get("pass") in ("fwd", "bwd"):
            r["matmul_tflops"] = fp8_matmul if r.get("dtype") in FP8_FWD_DTYPES else matmul
    rows += ceilings
    rows.append(interop_pass(args, managed_interop, managed_err, c_interop, c_err))
    record = dict(matmul_tflops=matmul, fp8_matmul_tflops=fp8_matmul, card=card, date=datetime.date.today().isoformat(),
                  commit=git_commit(args.commit), skipped_groups=args.skipped_groups, torch=torch.__version__,
                  cudnn=torch.backends.cudnn.version(), managed_interop=managed_interop, c_interop=c_interop,
                  elapsed_s={k: round(v, 1) for k, v in elapsed.items()}, rows=rows)
    if base is not None:
        record["baseline_lib"] = base.path
    if decode_error:
        record["decode_error"] = decode_error
    print("# elapsed: " + ", ".join(f"{k} {v:.0f} s" for k, v in elapsed.items()), flush=True)
    write_outputs(args, record, rows, managed_interop, c_interop, card)
    return 1 if failed else 0


def main(argv=None):
    args = parse_args(argv)
    return dry_run(args) if args.dry_run else gpu_run(args)


if __name__ == "__main__":
    sys.exit(main())
