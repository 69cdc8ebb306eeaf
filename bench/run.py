#!/usr/bin/env python3
"""Side-by-side forward and backward benchmark on one GPU: our libflash_attention against PyTorch SDPA.

Forward rows ("forward features" issue, TARGETS.md): the grid bf16, D 64/128/256, causal and not, S 1k/4k/16k,
B = 16384 / S, H = 2048 / D; a GQA row (32 q heads, 8 kv heads, D 128, S 4096, B 4, causal); and a
variable-length row (a packed batch of 16 sequences of random lengths 256..2048, fixed seed, D 128,
H 16, causal). Each is measured, in one process and with one method (triton.testing.do_bench, median,
L2 flushed before every call, as shared/tools/sdpa_anchors.py):

  ours    fa_forward called through the C ABI with ctypes on torch-allocated tensors
          ([B, S, H, D] contiguous; varlen: packed [total, H, D] with cu_seqlens and host copies),
          on torch's current stream;
  flash   torch SDPA with the FLASH_ATTENTION backend (FlashAttention-2 kernels); for varlen,
          torch.ops.aten._flash_attention_forward with cum_seq_q / cum_seq_k when this PyTorch has it;
  cudnn   torch SDPA with the CUDNN_ATTENTION backend (null for varlen).

Our output is checked against the flash backend's (relative Frobenius error; varlen: against PyTorch's
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

Writes the TARGETS.md record ({card, date, commit, rows}) to --out and prints a table last.
--dry-run needs no GPU and no torch: it lists the rows, their FLOP counts, and writes a record with
null figures (to check the pure-Python parts).
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

# ---- the C ABI (native/include/flash_attention.h, version 0.2), as ctypes ----------------------------

FA_MAX_RANK = 4
FA_VERSION_CODE = 400  # the header version this ctypes mirror follows (0.3: fa_backward_params_t; 0.4: FA_PATH_SM90)
FA_DTYPE_FLOAT16, FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT32 = 1, 2, 3
FA_CAUSAL_BOTTOM_RIGHT, FA_CAUSAL_TOP_LEFT = 0, 1
FA_PATH_AUTO, FA_PATH_SM80 = 0, 1
# Two bf16 results of the same attention differ by a few 1e-3 (relative Frobenius norm); beyond this
# our kernel is wrong, however fast.
MAX_REL_ERR = 2e-2
# The same for each of dq, dk and dv against the flash backend's gradients: both are bf16 results of fp32
# accumulations (a few 1e-3 apart, dq the most); beyond this our backward is wrong.
MAX_BWD_REL_ERR = 3e-2
# TARGETS.md, aim 4: a managed Forward call within this many microseconds of the same launch from C.
INTEROP_TARGET_US = 5.0
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


class FaTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("shape", ctypes.c_int64 * FA_MAX_RANK),
        ("strides", ctypes.c_int64 * FA_MAX_RANK),
    ]


class FaForwardParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("q", FaTensor),
        ("k", FaTensor),
        ("v", FaTensor),
        ("out", FaTensor),
        ("lse", FaTensor),
        ("softmax_scale", ctypes.c_float),
        ("causal", ctypes.c_int32),
        ("causal_alignment", ctypes.c_int32),
        ("kernel_path", ctypes.c_int32),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
        ("softcap", ctypes.c_float),
        ("reserved1", ctypes.c_int32),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("cu_seqlens_q_host", ctypes.POINTER(ctypes.c_int32)),
        ("cu_seqlens_k_host", ctypes.POINTER(ctypes.c_int32)),
        ("varlen_batch", ctypes.c_int32),
        ("max_seqlen_q", ctypes.c_int32),
        ("max_seqlen_k", ctypes.c_int32),
        ("reserved2", ctypes.c_int32),
    ]


class FaBackwardParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("q", FaTensor),
        ("k", FaTensor),
        ("v", FaTensor),
        ("out", FaTensor),
        ("dout", FaTensor),
        ("lse", FaTensor),
        ("dq", FaTensor),
        ("dk", FaTensor),
        ("dv", FaTensor),
        ("softmax_scale", ctypes.c_float),
        ("causal", ctypes.c_int32),
        ("causal_alignment", ctypes.c_int32),
        ("kernel_path", ctypes.c_int32),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
        ("softcap", ctypes.c_float),
        ("deterministic", ctypes.c_int32),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("cu_seqlens_q_host", ctypes.POINTER(ctypes.c_int32)),
        ("cu_seqlens_k_host", ctypes.POINTER(ctypes.c_int32)),
        ("varlen_batch", ctypes.c_int32),
        ("max_seqlen_q", ctypes.c_int32),
        ("max_seqlen_k", ctypes.c_int32),
        ("reserved1", ctypes.c_int32),
        ("workspace", ctypes.c_void_p),
        ("workspace_size", ctypes.c_size_t),
    ]


# sizeof(fa_backward_params_t) on x86-64 Linux, as the generated bindings record it; a mismatch means this
# mirror no longer follows the header.
FA_BACKWARD_PARAMS_SIZE = 824
assert ctypes.sizeof(FaBackwardParams) == FA_BACKWARD_PARAMS_SIZE, ctypes.sizeof(FaBackwardParams)


class FaLib:
    """The few exports the benchmark needs."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        L = self.lib
        L.fa_status_string.restype = ctypes.c_char_p
        L.fa_status_string.argtypes = [ctypes.c_int]
        L.fa_last_error_message.restype = ctypes.c_char_p
        L.fa_last_error_message.argtypes = []
        L.fa_version.restype = ctypes.c_int32
        L.fa_context_create.argtypes = [ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)]
        L.fa_context_destroy.argtypes = [ctypes.c_void_p]
        L.fa_forward_params_init.argtypes = [ctypes.POINTER(FaForwardParams), ctypes.c_size_t]
        L.fa_forward.argtypes = [ctypes.c_void_p, ctypes.POINTER(FaForwardParams), ctypes.c_void_p]
        for name in ("fa_context_create", "fa_context_destroy", "fa_forward_params_init", "fa_forward"):
            getattr(L, name).restype = ctypes.c_int
        # The backward exports (ABI 0.3); a library without them gets an error on every backward row.
        self.has_backward = all(hasattr(L, n) for n in ("fa_backward_params_init", "fa_backward", "fa_backward_workspace_size"))
        if self.has_backward:
            L.fa_backward_params_init.argtypes = [ctypes.POINTER(FaBackwardParams), ctypes.c_size_t]
            L.fa_backward.argtypes = [ctypes.c_void_p, ctypes.POINTER(FaBackwardParams), ctypes.c_void_p]
            L.fa_backward_workspace_size.argtypes = [ctypes.c_void_p, ctypes.POINTER(FaBackwardParams),
                                                     ctypes.POINTER(ctypes.c_size_t)]
            for name in ("fa_backward_params_init", "fa_backward", "fa_backward_workspace_size"):
                getattr(L, name).restype = ctypes.c_int

    def check(self, status, what):
        if status != 0:
            name = self.lib.fa_status_string(status).decode()
            msg = self.lib.fa_last_error_message().decode(errors="replace")
            raise RuntimeError(f"{what}: {name}: {msg}")


def describe(t, dtype_code):
    """An fa_tensor_t for a torch tensor (element strides, as the ABI wants)."""
    d = FaTensor()
    d.data = t.data_ptr()
    d.dtype = dtype_code
    d.rank = t.dim()
    for i in range(t.dim()):
        d.shape[i] = t.shape[i]
        d.strides[i] = t.stride(i)
    return d


# ---- shapes and FLOPs ------------------------------------------------------------------------------

VARLEN_SEED = 2026
VARLEN_COUNT, VARLEN_MIN, VARLEN_MAX = 16, 256, 2048


def varlen_lengths(seed=VARLEN_SEED, count=VARLEN_COUNT, lo=VARLEN_MIN, hi=VARLEN_MAX):
    """The varlen row's sequence lengths: fixed seed, so every run (and the managed exe) sees the same batch."""
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(count)]


def fwd_row(d, causal, b, h, hkv, s, pass_="fwd"):
    return dict(pass_=pass_, dtype="bf16", d=d, causal=causal, b=b, h=h, hkv=hkv, sq=s, sk=s)


def shapes_grid(quick=False, pass_="fwd"):
    """TARGETS.md's grid, then the GQA row and the varlen row, for the forward ("fwd") or backward ("bwd") pass."""
    rows = []
    for d in (64, 128, 256):
        for causal in (0, 1):
            for s in (1024, 4096, 16384):
                if quick and s > 4096:
                    continue
                h = 2048 // d
                rows.append(fwd_row(d, causal, 16384 // s, h, h, s, pass_))
    rows.append(fwd_row(128, 1, 4, 32, 8, 4096, pass_))  # GQA: 32 q heads over 8 kv heads
    lens = varlen_lengths()
    rows.append(dict(pass_=pass_, dtype="bf16", d=128, causal=1, b=len(lens), h=16, hkv=16, sq=max(lens), sk=max(lens),
                     varlen=1, lens=lens))
    return rows


def fwd_flops(shape):
    """4·B·H·Sq·Sk·D, halved when causal and Sq = Sk (as TARGETS.md counts); varlen: the sum of that over
    the sequences (each with B = 1 and its own Sq = Sk)."""
    if shape.get("varlen"):
        f = 0.0
        for n in shape["lens"]:
            f += 4.0 * shape["h"] * n * n * shape["d"] / (2 if shape["causal"] else 1)
        return f
    f = 4.0 * shape["b"] * shape["h"] * shape["sq"] * shape["sk"] * shape["d"]
    if shape["causal"] and shape["sq"] == shape["sk"]:
        f /= 2
    return f


def pass_flops(shape):
    """FLOPs of a row's pass: the forward's, or 2.5x that for the backward (as TARGETS.md counts)."""
    return fwd_flops(shape) * (2.5 if shape["pass_"] == "bwd" else 1.0)


def tflops(flops, ms):
    return None if ms is None or ms <= 0 else flops / ms / 1e9


def shape_key(s):
    """Identity of a shape; tolerant of a managed line that leaves out hkv or writes causal as a bool."""
    h = int(s["h"])
    if s.get("varlen") or s.get("kind") == "varlen":
        return ("varlen", str(s.get("dtype", "bf16")), int(s["d"]), int(bool(s["causal"])), h, int(s.get("hkv", h)),
                tuple(int(n) for n in s["lens"]))
    return (str(s["dtype"]), int(s["d"]), int(bool(s["causal"])), int(s["b"]), h,
            int(s.get("hkv", h)), int(s["sq"]), int(s["sk"]))


def managed_spec(s):
    """The shape object the managed exe takes (bench/README.md)."""
    if s.get("varlen"):
        return dict(kind="varlen", dtype=s["dtype"], d=s["d"], causal=s["causal"], h=s["h"], hkv=s["hkv"], lens=s["lens"])
    return dict(dtype=s["dtype"], d=s["d"], causal=s["causal"], b=s["b"], h=s["h"], hkv=s["hkv"], sq=s["sq"], sk=s["sk"])


def new_row(s):
    """A record row for shape s with every figure null (TARGETS.md's fields, then ours)."""
    row = {"pass": s["pass_"], "dtype": s["dtype"], "d": s["d"], "causal": int(bool(s["causal"])), "b": s["b"], "h": s["h"],
           "hkv": s["hkv"], "sq": s["sq"], "sk": s["sk"], "paged_block": None,
           "ours_ms": None, "flash_ms": None, "cudnn_ms": None, "ours_tflops": None, "flash_tflops": None,
           "cudnn_tflops": None, "ours_tbps": None, "copy_tbps": None,
           "managed_ms": None, "managed_tflops": None, "ours_rel_err": None, "note": None, "errors": {}}
    if s.get("varlen"):
        # b is the number of sequences; sq/sk the longest one; lens the lengths in packing order.
        row.update(varlen=1, lens=list(s["lens"]), total_q=sum(s["lens"]), total_k=sum(s["lens"]))
    if s["pass_"] == "bwd":
        # Deterministic mode's time and its cost relative to the default mode; per-gradient errors.
        row.update(ours_det_ms=None, ours_det_tflops=None, ours_sm80_ms=None, ours_sm80_tflops=None, ours_sm80_rel_err=None,
                   det_ratio=None, grad_rel_err=None, det_rel_err=None,
                   workspace_bytes=None, det_workspace_bytes=None)
    return row


def interop_row(managed, c, errors):
    """The extra "interop" row: host cost of one Forward call on the tiny shape, managed (ours_us) and from C (c_us)."""
    m_us = managed.get("call_us") if managed else None
    c_us = c.get("call_us") if c else None
    diff = m_us - c_us if m_us is not None and c_us is not None else None
    row = {"pass": "interop", "dtype": "bf16", "d": 64, "causal": 0, "b": 1, "h": 1, "hkv": 1, "sq": 128, "sk": 128,
           "paged_block": None, "ours_ms": None, "flash_ms": None, "cudnn_ms": None, "ours_tflops": None,
           "flash_tflops": None, "cudnn_tflops": None, "ours_tbps": None, "copy_tbps": None,
           "ours_us": m_us, "c_us": c_us, "diff_us": diff,
           "ours_min_us": managed.get("min_call_us") if managed else None,
           "c_min_us": c.get("min_call_us") if c else None,
           "target_diff_us": INTEROP_TARGET_US,
           "within_target": None if diff is None else bool(diff <= INTEROP_TARGET_US)}
    if errors:
        row["errors"] = dict(errors)
    return row


# ---- the managed benchmark (child process) ---------------------------------------------------------

def run_managed(exe, shapes, lib, warmup, iters, log):
    """Runs the C# bench once for all shapes; returns ({shape_key: row}, error, interop line)."""
    if not exe:
        return {}, None, None
    if not os.path.exists(exe):
        return {}, f"{exe} not found", None
    spec = [managed_spec(s) for s in shapes]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    env = dict(os.environ)
    if lib:
        env["FLASH_ATTENTION_NATIVE_PATH"] = lib
    cmd = [exe, "--shapes", spec_path, "--warmup", str(warmup), "--iters", str(iters), "--interop"]
    print("# managed bench:", " ".join(cmd), file=log, flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    except Exception as e:  # noqa: BLE001 - any failure is reported, the PyTorch side still runs
        return {}, f"bench exe did not run: {e}", None
    finally:
        os.unlink(spec_path)
    out = {}
    interop = None
    for line in p.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            print("# managed:", line, file=log)
            continue
        try:
            r = json.loads(line)
            if r.get("pass") == "interop":
                interop = r  # host cost of one managed Forward call
                continue
            out[shape_key(r)] = r
        except (ValueError, KeyError, TypeError) as e:
            print(f"# managed: unreadable line ({e}): {line}", file=log)
    for line in p.stderr.splitlines()[-20:]:
        print("# managed stderr:", line, file=log)
    err = None if p.returncode == 0 else f"bench exe exit code {p.returncode}"
    return out, err, interop


def run_interop_c(src, lib_path, log):
    """Compiles bench/interop_c.c against the library and runs it; returns (its JSON line, error)."""
    if not os.path.exists(src):
        return None, f"{src} not found"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler (cc, gcc, clang) on PATH"
    libdir = os.path.dirname(lib_path)
    include = os.path.join(REPO, "native", "include")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "interop_c")
        cmd = [cc, "-O2", src, f"-I{include}", f"-L{libdir}", "-lflash_attention", f"-Wl,-rpath,{libdir}", "-o", exe]
        print("# interop_c:", " ".join(cmd), file=log, flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            return None, f"compile failed: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]}"
        try:
            p = subprocess.run([exe], capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return None, "interop_c timed out"
    for line in p.stderr.splitlines()[-5:]:
        print("# interop_c stderr:", line, file=log)
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            try:
                return json.loads(line), None
            except ValueError:
                pass
    return None, f"interop_c exit code {p.returncode}: {(p.stderr.strip().splitlines() or ['no output'])[-1][:200]}"


# ---- main ------------------------------------------------------------------------------------------

def git_commit(given):
    if given:
        return given
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=REPO).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def write_outputs(args, record, rows, managed_interop, c_interop, card):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    table = format_table(rows)
    if any(r["pass"] == "bwd" for r in rows):
        table += "\n" + format_bwd_table(rows)
    if any(r["pass"] == "decode" for r in rows):
        table += "\n" + format_decode_table(rows)
    table += "\n" + format_interop(managed_interop, c_interop)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table + "\n")
    if args.png:
        write_png(rows, args.png, card)
    print(f"# wrote {args.out}")
    print(table)


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
        got = mod.decode_rows(lib_path, quick=args.quick)
    except Exception as e:  # noqa: BLE001
        return [], f"decode_rows raised {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    rows = []
    for r in got or []:
        if isinstance(r, dict):
            r.setdefault("pass", "decode")
            rows.append(r)
    return rows, None


def dry_run(args):
    """No GPU, no torch: the row list, FLOP counts, the managed spec and a record with null figures."""
    shapes = shapes_grid(args.quick) + ([] if args.skip_bwd else shapes_grid(args.quick, "bwd"))
    rows = []
    for s in shapes:
        managed = f"  managed: {json.dumps(managed_spec(s))}" if s["pass_"] == "fwd" else ""
        print(f"# {s['pass_']} {describe_shape(new_row(s)):28s} {pass_flops(s) / 1e12:9.3f} TFLOP{managed}")
        rows.append(new_row(s))
    for r in rows:
        r.pop("errors")
    if not args.skip_decode:
        present = os.path.exists(os.path.join(HERE, "decode.py"))
        print("# decode rows: " + ("from bench/decode.py's decode_rows() at run time (needs the GPU)" if present
                                   else "none (bench/decode.py not present)"))
    rows.append(interop_row(None, None, {}))
    record = dict(card="dry-run", date=datetime.date.today().isoformat(), commit=git_commit(args.commit), rows=rows)
    write_outputs(args, record, rows, None, None, "dry-run")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.environ.get("FLASH_ATTENTION_NATIVE_PATH", "artifacts/native/libflash_attention.so"),
                    help="path of libflash_attention.so (a folder is accepted)")
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
    ap.add_argument("--skip-bwd", action="store_true", help="no backward rows")
    ap.add_argument("--skip-decode", action="store_true", help="no decode rows (bench/decode.py is not called)")
    ap.add_argument("--quick", action="store_true", help="only S 1k and 4k in the grid (also passed to decode_rows)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: list rows and FLOPs, write a null record")
    args = ap.parse_args()

    if args.dry_run:
        return dry_run(args)

    lib_path = args.lib
    if os.path.isdir(lib_path):
        lib_path = os.path.join(lib_path, "libflash_attention.so")
    lib_path = os.path.abspath(lib_path)

    shapes = shapes_grid(args.quick)
    log = sys.stdout
    run_started = time.monotonic()
    # The managed bench and the C interop baseline run first, before this process holds GPU memory.
    managed, managed_err, managed_interop = run_managed(args.bench_exe, shapes, lib_path, args.managed_warmup,
                                                        args.managed_iters, log)
    if managed_err:
        print("# managed bench:", managed_err, flush=True)
    c_interop, c_err = (None, "skipped (--interop-c '')") if not args.interop_c else run_interop_c(args.interop_c, lib_path, log)
    if c_err:
        print("# interop_c:", c_err, flush=True)
    else:
        print("# interop_c:", json.dumps(c_interop), flush=True)

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel, SDPBackend
    from triton.testing import do_bench

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    card = props.name
    print(f"# {card} sms={props.multi_processor_count} torch={torch.__version__} cuda={torch.version.cuda} "
          f"cudnn={torch.backends.cudnn.version()} lib={lib_path}", flush=True)

    fa = FaLib(lib_path)
    ctx = ctypes.c_void_p()
    fa.check(fa.lib.fa_context_create(0, ctypes.byref(ctx)), "fa_context_create")
    print(f"# fa_version={fa.lib.fa_version()}", flush=True)
    if fa.lib.fa_version() != FA_VERSION_CODE:
        raise SystemExit(f"the library is version code {fa.lib.fa_version()} but run.py's ctypes mirror is for "
                         f"{FA_VERSION_CODE}: update FaForwardParams to the header")

    def bench(fn):
        return do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")

    def stream():
        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    def new_params(code, q2, k2, v2, o2, causal):
        p = FaForwardParams()
        fa.check(fa.lib.fa_forward_params_init(ctypes.byref(p), ctypes.sizeof(p)), "fa_forward_params_init")
        p.q, p.k, p.v, p.out = (describe(t, code) for t in (q2, k2, v2, o2))
        p.causal = int(causal)
        p.causal_alignment = FA_CAUSAL_TOP_LEFT  # PyTorch's is_causal; equal to bottom-right when sq == sk
        return p

    def make_ours(p):
        pp = ctypes.byref(p)

        def ours():
            st = fa.lib.fa_forward(ctx, pp, stream())
            if st != 0:
                fa.check(st, "fa_forward")
        return ours

    def compare(row, out, ref, against):
        """Relative Frobenius error of our output (poisoned before the call) against ref, both [..., H, D]."""
        r = ref.float()
        diff = float((out.float() - r).norm() / r.norm())
        if math.isnan(diff) or math.isinf(diff):
            raise RuntimeError("our output holds NaN/Inf (the poison was not overwritten everywhere?)")
        row["ours_rel_err"] = diff
        if diff > MAX_REL_ERR:
            row["errors"]["mismatch"] = f"relative error {diff:.2e} against {against} exceeds {MAX_REL_ERR}"

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}

    def fixed_row(s, row, flops):
        b, h, hkv, sq, sk, d = s["b"], s["h"], s["hkv"], s["sq"], s["sk"], s["d"]
        causal = bool(s["causal"])
        dt = torch.bfloat16 if s["dtype"] == "bf16" else torch.float16
        code = FA_DTYPE_BFLOAT16 if s["dtype"] == "bf16" else FA_DTYPE_FLOAT16
        # PyTorch's natural layout [B, H, S, D] for SDPA (as the anchors); ours [B, S, H, D] contiguous.
        q = torch.randn(b, h, sq, d, device=dev, dtype=dt)
        k = torch.randn(b, hkv, sk, d, device=dev, dtype=dt)
        v = torch.randn(b, hkv, sk, d, device=dev, dtype=dt)
        ref, ref_name = None, None
        notes = []
        for name, be in backends.items():
            try:
                with sdpa_kernel([be]):
                    f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=(h != hkv))  # noqa: E731
                    try:
                        o = f()
                    except RuntimeError:
                        if h == hkv:
                            raise
                        # This backend refuses enable_gqa: give it k/v expanded to h heads (what it would read).
                        ke, ve = (t.repeat_interleave(h // hkv, dim=1) for t in (k, v))
                        f = lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=causal)  # noqa: E731
                        o = f()
                        notes.append(f"{name}: enable_gqa refused, k/v expanded to {h} heads")
                    if ref is None:
                        ref, ref_name = o, f"the {name} backend"
                    row[f"{name}_ms"] = bench(f)
                    row[f"{name}_tflops"] = tflops(flops, row[f"{name}_ms"])
            except Exception as e:  # noqa: BLE001
                row["errors"][name] = str(e).split("\n")[0][:200]
        if notes:
            row["note"] = "; ".join(notes)
        q2, k2, v2 = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        o2 = torch.full_like(q2, float("nan"))
        try:
            p = new_params(code, q2, k2, v2, o2, causal)
            ours = make_ours(p)
            ours()
            torch.cuda.synchronize()
            if ref is not None:
                compare(row, o2, ref.transpose(1, 2), ref_name)
            row["ours_ms"] = bench(ours)
            row["ours_tflops"] = tflops(flops, row["ours_ms"])
        except Exception as e:  # noqa: BLE001
            row["errors"]["ours"] = str(e).split("\n")[0][:300]

    def varlen_row(s, row, flops):
        lens, h, hkv, d = s["lens"], s["h"], s["hkv"], s["d"]
        causal = bool(s["causal"])
        dt = torch.bfloat16 if s["dtype"] == "bf16" else torch.float16
        code = FA_DTYPE_BFLOAT16 if s["dtype"] == "bf16" else FA_DTYPE_FLOAT16
        total, max_len = sum(lens), max(lens)
        cu_host = [0]
        for n in lens:
            cu_host.append(cu_host[-1] + n)
        cu = torch.tensor(cu_host, dtype=torch.int32, device=dev)
        q = torch.randn(total, h, d, device=dev, dtype=dt)
        k = torch.randn(total, hkv, d, device=dev, dtype=dt)
        v = torch.randn(total, hkv, d, device=dev, dtype=dt)
        ref, against = None, None
        notes = []
        # PyTorch's flash varlen entry point (private; its signature is checked before use).
        try:
            op = torch.ops.aten._flash_attention_forward
            names = [a.name for a in op.default._schema.arguments]
            want = ["query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p", "is_causal",
                    "return_debug_mask"]
            if names[:len(want)] != want:
                raise RuntimeError(f"unexpected signature {names}")
            f = lambda: op(q, k, v, cu, cu, max_len, max_len, 0.0, causal, False)  # noqa: E731
            ref = f()[0]
            against = "aten._flash_attention_forward (varlen)"
            row["flash_ms"] = bench(f)
            row["flash_tflops"] = tflops(flops, row["flash_ms"])
        except Exception as e:  # noqa: BLE001
            notes.append("flash_ms null: torch.ops.aten._flash_attention_forward with cum_seq_q/cum_seq_k not usable here ("
                         + str(e).split("\n")[0][:160] + ")")
            ref = None
        notes.append("cudnn_ms null: no varlen entry point timed for cuDNN")
        if ref is None:
            # Reference: a per-sequence SDPA loop (any backend), [1, H, L, D] per sequence.
            try:
                parts = []
                for i in range(len(lens)):
                    a, e = cu_host[i], cu_host[i + 1]
                    qs, ks, vs = (t[a:e].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
                    o1 = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, enable_gqa=(h != hkv))
                    parts.append(o1[0].transpose(0, 1))
                ref = torch.cat(parts, 0)
                against = "a per-sequence SDPA loop"
            except Exception as e:  # noqa: BLE001
                row["errors"]["reference"] = "per-sequence SDPA loop failed: " + str(e).split("\n")[0][:200]
        row["note"] = "; ".join(notes)
        o = torch.full_like(q, float("nan"))
        try:
            p = new_params(code, q, k, v, o, causal)
            host_q = (ctypes.c_int32 * len(cu_host))(*cu_host)
            host_k = (ctypes.c_int32 * len(cu_host))(*cu_host)
            p.cu_seqlens_q = cu.data_ptr()
            p.cu_seqlens_k = cu.data_ptr()
            p.cu_seqlens_q_host = ctypes.cast(host_q, ctypes.POINTER(ctypes.c_int32))
            p.cu_seqlens_k_host = ctypes.cast(host_k, ctypes.POINTER(ctypes.c_int32))
            p.varlen_batch = len(lens)
            p.max_seqlen_q = max_len
            p.max_seqlen_k = max_len
            p._keep = (host_q, host_k)  # the host copies must outlive every call
            ours = make_ours(p)
            ours()
            torch.cuda.synchronize()
            if ref is not None:
                compare(row, o, ref, against)
            row["ours_ms"] = bench(ours)
            row["ours_tflops"] = tflops(flops, row["ours_ms"])
        except Exception as e:  # noqa: BLE001
            row["errors"]["ours"] = str(e).split("\n")[0][:300]

    # ---- backward rows ---------------------------------------------------------------------------------

    def bwd_bench(fn):
        return do_bench(fn, warmup=args.bwd_warmup, rep=args.bwd_rep, return_mode="median")

    def set_varlen(p, cu, cu_host, max_len):
        """The variable-length fields of a forward or backward params struct (same names in both)."""
        host_q = (ctypes.c_int32 * len(cu_host))(*cu_host)
        host_k = (ctypes.c_int32 * len(cu_host))(*cu_host)
        p.cu_seqlens_q = cu.data_ptr()
        p.cu_seqlens_k = cu.data_ptr()
        p.cu_seqlens_q_host = ctypes.cast(host_q, ctypes.POINTER(ctypes.c_int32))
        p.cu_seqlens_k_host = ctypes.cast(host_k, ctypes.POINTER(ctypes.c_int32))
        p.varlen_batch = len(cu_host) - 1
        p.max_seqlen_q = max_len
        p.max_seqlen_k = max_len
        p._keep = (host_q, host_k)  # the host copies must outlive every call

    def our_forward_for_bwd(code, q2, k2, v2, causal, lse, varlen=None):
        """Our forward, for the O and log-sum-exp the backward reads; varlen = (cu, cu_host, max_len)."""
        o2 = torch.full_like(q2, float("nan"))
        p = new_params(code, q2, k2, v2, o2, causal)
        p.lse = describe(lse, FA_DTYPE_FLOAT32)
        if varlen:
            set_varlen(p, *varlen)
        fa.check(fa.lib.fa_forward(ctx, ctypes.byref(p), stream()), "fa_forward (for the backward)")
        return o2

    def new_bwd_params(code, tensors, lse, causal, deterministic, varlen=None, path=0):
        """fa_backward_params_t over tensors = (q, k, v, out, dout, dq, dk, dv), with a caller workspace of the size
        fa_backward_workspace_size asks for (a torch allocation kept on the struct)."""
        p = FaBackwardParams()
        fa.check(fa.lib.fa_backward_params_init(ctypes.byref(p), ctypes.sizeof(p)), "fa_backward_params_init")
        p.q, p.k, p.v, p.out, p.dout, p.dq, p.dk, p.dv = (describe(t, code) for t in tensors)
        p.lse = describe(lse, FA_DTYPE_FLOAT32)
        p.causal = int(causal)
        p.causal_alignment = FA_CAUSAL_TOP_LEFT  # PyTorch's is_causal
        p.deterministic = int(deterministic)
        p.kernel_path = path
        if varlen:
            set_varlen(p, *varlen)
        n = ctypes.c_size_t(0)
        fa.check(fa.lib.fa_backward_workspace_size(ctx, ctypes.byref(p), ctypes.byref(n)), "fa_backward_workspace_size")
        ws = torch.empty(max(n.value, 1), dtype=torch.uint8, device=dev)  # the caching allocator aligns to 512 bytes
        p.workspace = ws.data_ptr()
        p.workspace_size = n.value
        p._ws = ws
        return p

    def make_ours_bwd(p):
        pp = ctypes.byref(p)

        def ours():
            st = fa.lib.fa_backward(ctx, pp, stream())
            if st != 0:
                fa.check(st, "fa_backward")
        return ours

    def grad_errors(grads, ref):
        """Relative Frobenius error of each of our gradients (poisoned before the call) against ref, same layouts."""
        errs = {}
        for name, a, r in zip(("dq", "dk", "dv"), grads, ref):
            r = r.float()
            den = float(r.norm())
            num = float((a.float() - r).norm())
            e = num / den if den > 0 else num
            if math.isnan(e) or math.isinf(e):
                raise RuntimeError(f"our {name} holds NaN/Inf (the poison was not overwritten everywhere?)")
            errs[name] = e
        return errs

    def run_ours_bwd(row, flops, code, tensors, lse, causal, ref, against, varlen=None):
        """Times our backward in the default and the deterministic mode, then the default mode on the portable sm80
        kernels alone (FA_PATH_SM80; on an H100 the default picks the sm90 kernels where they serve); gradients are
        checked against ref first."""
        grads = tensors[5:]
        # (deterministic, kernel path, row key of the times, row key of the worst error)
        for det, path, key, err_key in ((False, FA_PATH_AUTO, "ours", "ours_rel_err"),
                                        (True, FA_PATH_AUTO, "ours_det", "det_rel_err"),
                                        (False, FA_PATH_SM80, "ours_sm80", "ours_sm80_rel_err")):
            p = new_bwd_params(code, tensors, lse, causal, det, varlen, path)
            row["det_workspace_bytes" if det else "workspace_bytes"] = int(p.workspace_size)
            ours = make_ours_bwd(p)
            for t in grads:
                t.fill_(float("nan"))
            ours()
            torch.cuda.synchronize()
            if ref is not None:
                errs = grad_errors(grads, ref)
                worst = max(errs.values())
                row[err_key] = worst
                if key == "ours":
                    row["grad_rel_err"] = errs
                if worst > MAX_BWD_REL_ERR:
                    row["errors"]["mismatch"] = (f"{key}: gradient relative errors "
                                                 f"{', '.join(f'{k} {v:.2e}' for k, v in errs.items())} against {against} "
                                                 f"exceed {MAX_BWD_REL_ERR}")
            ms = bwd_bench(ours)
            row[key + "_ms"] = ms
            row[key + "_tflops"] = tflops(flops, ms)
        if row["ours_ms"] and row["ours_det_ms"]:
            row["det_ratio"] = row["ours_det_ms"] / row["ours_ms"]

    def torch_bwd(name, be, q, k, v, do, h, hkv, causal, notes):
        """Times PyTorch's SDPA backward alone for one backend ([B, H, S, D] tensors): one forward with requires_grad,
        then torch.autograd.grad(out, (q, k, v), dO, retain_graph=True) under do_bench. Returns (ms, (dq, dk, dv)),
        dk and dv at hkv heads."""
        ql, kl, vl = (t.detach().requires_grad_() for t in (q, k, v))
        expanded = False
        with sdpa_kernel([be]):
            try:
                o = F.scaled_dot_product_attention(ql, kl, vl, is_causal=causal, enable_gqa=(h != hkv))
            except RuntimeError:
                if h == hkv:
                    raise
                # This backend refuses enable_gqa: expanded k/v as leaves, so only the attention backward is timed.
                kl, vl = (t.detach().repeat_interleave(h // hkv, dim=1).requires_grad_() for t in (k, v))
                o = F.scaled_dot_product_attention(ql, kl, vl, is_causal=causal)
                expanded = True
                notes.append(f"{name}: enable_gqa refused, k/v expanded to {h} heads")
            inputs = (ql, kl, vl)
            f = lambda: torch.autograd.grad(o, inputs, do, retain_graph=True)  # noqa: E731
            gq, gk, gv = f()
            ms = bwd_bench(f)
        if expanded:
            b_, _, s_, d_ = gk.shape
            gk, gv = (g.view(b_, hkv, h // hkv, s_, d_).sum(2) for g in (gk, gv))
        return ms, (gq, gk, gv)

    def fixed_bwd_row(s, row, flops):
        b, h, hkv, sq, sk, d = s["b"], s["h"], s["hkv"], s["sq"], s["sk"], s["d"]
        causal = bool(s["causal"])
        dt = torch.bfloat16 if s["dtype"] == "bf16" else torch.float16
        code = FA_DTYPE_BFLOAT16 if s["dtype"] == "bf16" else FA_DTYPE_FLOAT16
        q = torch.randn(b, h, sq, d, device=dev, dtype=dt)
        k = torch.randn(b, hkv, sk, d, device=dev, dtype=dt)
        v = torch.randn(b, hkv, sk, d, device=dev, dtype=dt)
        do = torch.randn(b, h, sq, d, device=dev, dtype=dt)
        ref, against, notes = None, None, []
        for name, be in backends.items():
            try:
                ms, g = torch_bwd(name, be, q, k, v, do, h, hkv, causal, notes)
                row[f"{name}_ms"] = ms
                row[f"{name}_tflops"] = tflops(flops, ms)
                if ref is None:
                    ref, against = tuple(t.transpose(1, 2) for t in g), f"the {name} backend's gradients"
            except Exception as e:  # noqa: BLE001
                row["errors"][name] = str(e).split("\n")[0][:200]
        if notes:
            row["note"] = "; ".join(notes)
        if not fa.has_backward:
            row["errors"]["ours"] = "the library exports no fa_backward (C ABI before 0.3)"
            return
        q2, k2, v2, do2 = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
        del q, k, v, do
        try:
            lse = torch.full((b, h, sq), float("nan"), device=dev, dtype=torch.float32)
            o2 = our_forward_for_bwd(code, q2, k2, v2, causal, lse)
            grads = tuple(torch.full_like(t, float("nan")) for t in (q2, k2, v2))
            run_ours_bwd(row, flops, code, (q2, k2, v2, o2, do2) + grads, lse, causal, ref, against)
        except Exception as e:  # noqa: BLE001
            row["errors"]["ours"] = str(e).split("\n")[0][:300]

    def varlen_bwd_row(s, row, flops):
        lens, h, hkv, d = s["lens"], s["h"], s["hkv"], s["d"]
        causal = bool(s["causal"])
        dt = torch.bfloat16 if s["dtype"] == "bf16" else torch.float16
        code = FA_DTYPE_BFLOAT16 if s["dtype"] == "bf16" else FA_DTYPE_FLOAT16
        total, max_len = sum(lens), max(lens)
        cu_host = [0]
        for n in lens:
            cu_host.append(cu_host[-1] + n)
        cu = torch.tensor(cu_host, dtype=torch.int32, device=dev)
        q = torch.randn(total, h, d, device=dev, dtype=dt)
        k = torch.randn(total, hkv, d, device=dev, dtype=dt)
        v = torch.randn(total, hkv, d, device=dev, dtype=dt)
        do = torch.randn(total, h, d, device=dev, dtype=dt)
        ref, against, notes = None, None, []
        # PyTorch's flash varlen entry points (private; their signatures are checked before use).
        try:
            fwd = torch.ops.aten._flash_attention_forward
            bwd = torch.ops.aten._flash_attention_backward
            want_f = ["query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p", "is_causal",
                      "return_debug_mask"]
            want_b = ["grad_out", "query", "key", "value", "out", "logsumexp", "cum_seq_q", "cum_seq_k", "max_q", "max_k",
                      "dropout_p", "is_causal"]
            names_f = [a.name for a in fwd.default._schema.arguments]
            names_b = [a.name for a in bwd.default._schema.arguments]
            if names_f[:len(want_f)] != want_f or names_b[:len(want_b)] != want_b or len(names_b) < len(want_b) + 2:
                raise RuntimeError(f"unexpected signatures {names_f} / {names_b}")
            res = fwd(q, k, v, cu, cu, max_len, max_len, 0.0, causal, False)
            o_t, lse_t, rng1, rng2 = res[0], res[1], res[2], res[3]
            f = lambda: bwd(do, q, k, v, o_t, lse_t, cu, cu, max_len, max_len, 0.0, causal, rng1, rng2)  # noqa: E731
            ref = tuple(f()[:3])
            against = "aten._flash_attention_backward (varlen)"
            row["flash_ms"] = bwd_bench(f)
            row["flash_tflops"] = tflops(flops, row["flash_ms"])
        except Exception as e:  # noqa: BLE001
            notes.append("flash_ms null: aten._flash_attention_forward/_backward with cum_seq_q/cum_seq_k not usable here ("
                         + str(e).split("\n")[0][:160] + ")")
            ref = None
        notes.append("cudnn_ms null: no varlen entry point timed for cuDNN")
        if ref is None:
            # Reference: per-sequence SDPA with autograd (any backend), [1, H, L, D] per sequence.
            try:
                parts = ([], [], [])
                for i in range(len(lens)):
                    a, e = cu_host[i], cu_host[i + 1]
                    qs, ks, vs = (t[a:e].transpose(0, 1).unsqueeze(0).detach().requires_grad_() for t in (q, k, v))
                    o1 = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, enable_gqa=(h != hkv))
                    g = torch.autograd.grad(o1, (qs, ks, vs), do[a:e].transpose(0, 1).unsqueeze(0))
                    for j in range(3):
                        parts[j].append(g[j][0].transpose(0, 1))
                ref = tuple(torch.cat(part, 0) for part in parts)
                against = "a per-sequence SDPA autograd loop"
            except Exception as e:  # noqa: BLE001
                row["errors"]["reference"] = "per-sequence SDPA autograd loop failed: " + str(e).split("\n")[0][:200]
        row["note"] = "; ".join(notes)
        if not fa.has_backward:
            row["errors"]["ours"] = "the library exports no fa_backward (C ABI before 0.3)"
            return
        try:
            varlen = (cu, cu_host, max_len)
            lse = torch.full((h, total), float("nan"), device=dev, dtype=torch.float32)
            o2 = our_forward_for_bwd(code, q, k, v, causal, lse, varlen)
            grads = tuple(torch.full_like(t, float("nan")) for t in (q, k, v))
            run_ours_bwd(row, flops, code, (q, k, v, o2, do) + grads, lse, causal, ref, against, varlen)
        except Exception as e:  # noqa: BLE001
            row["errors"]["ours"] = str(e).split("\n")[0][:300]

    rows = []
    any_error = False
    elapsed = {"setup": time.monotonic() - run_started}  # managed bench, interop_c, torch start-up
    started = time.monotonic()
    for s in shapes:
        torch.manual_seed(0)
        row = new_row(s)
        flops = fwd_flops(s)
        if s.get("varlen"):
            varlen_row(s, row, flops)
        else:
            fixed_row(s, row, flops)

        m = managed.get(shape_key(row))
        if m is not None:
            if m.get("ours_ms") is not None:
                row["managed_ms"] = m["ours_ms"]
                row["managed_tflops"] = tflops(flops, m["ours_ms"])
            if m.get("error"):
                row["errors"]["managed"] = str(m["error"])[:300]
        elif args.bench_exe:
            row["errors"]["managed"] = managed_err or "no line for this shape"

        if not row["errors"]:
            row.pop("errors")
        else:
            any_error = any_error or "ours" in row["errors"] or "mismatch" in row["errors"]
        rows.append(row)
        print("#", json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    elapsed["fwd"] = time.monotonic() - started

    if not args.skip_bwd:
        started = time.monotonic()
        for s in shapes_grid(args.quick, "bwd"):
            torch.manual_seed(0)
            row = new_row(s)
            flops = pass_flops(s)
            if s.get("varlen"):
                varlen_bwd_row(s, row, flops)
            else:
                fixed_bwd_row(s, row, flops)
            if not row["errors"]:
                row.pop("errors")
            else:
                any_error = any_error or "ours" in row["errors"] or "mismatch" in row["errors"]
            rows.append(row)
            print("#", json.dumps(row), flush=True)
            torch.cuda.empty_cache()
        elapsed["bwd"] = time.monotonic() - started

    fa.lib.fa_context_destroy(ctx)

    decode_error = None
    if not args.skip_decode:
        started = time.monotonic()
        decode_rows, decode_error = run_decode(args, lib_path, sys.stdout)
        if decode_error:
            print("# decode:", decode_error, flush=True)
            any_error = True
        for row in decode_rows:
            errs = row.get("errors") or {}
            any_error = any_error or "ours" in errs or "mismatch" in errs
            rows.append(row)
            print("#", json.dumps(row), flush=True)
        elapsed["decode"] = time.monotonic() - started
        torch.cuda.empty_cache()

    ierr = {}
    if args.bench_exe and not managed_interop:
        ierr["managed"] = managed_err or "no interop line from the bench exe"
    if c_err:
        ierr["c"] = c_err
    rows.append(interop_row(managed_interop, c_interop, ierr))

    record = dict(card=card, date=datetime.date.today().isoformat(), commit=git_commit(args.commit),
                  torch=torch.__version__, cudnn=torch.backends.cudnn.version(), managed_interop=managed_interop,
                  c_interop=c_interop, elapsed_s={k: round(v, 1) for k, v in elapsed.items()}, rows=rows)
    if decode_error:
        record["decode_error"] = decode_error
    print("# elapsed: " + ", ".join(f"{k} {v:.0f} s" for k, v in elapsed.items()), flush=True)
    write_outputs(args, record, rows, managed_interop, c_interop, card)
    return 1 if any_error else 0


def fmt(x, spec="6.0f"):
    return format(x, spec) if isinstance(x, (int, float)) and x is not None and not math.isnan(x) else "-".rjust(len(format(0, spec)))


def describe_shape(r):
    c = "causal" if r["causal"] else "full"
    if r.get("varlen"):
        return f"d{r['d']} {c} varlen{r['b']} h{r['h']}"
    name = f"d{r['d']} {c} s{r['sq'] // 1024}k" if r["sq"] % 1024 == 0 else f"d{r['d']} {c} s{r['sq']}"
    if r["hkv"] != r["h"]:
        name += f" gqa{r['h']}/{r['hkv']}"
    return name


def format_table(rows):
    lines = ["bf16 fwd TFLOP/s              ours  C#api  flash  cudnn  ours/fl  ours/cu  rel.err"]
    for r in rows:
        if r["pass"] != "fwd":
            continue
        name = describe_shape(r).ljust(28)
        o, fl, cu = r["ours_tflops"], r["flash_tflops"], r["cudnn_tflops"]
        ratio_f = o / fl if o and fl else None
        ratio_c = o / cu if o and cu else None
        err = r["ours_rel_err"]
        lines.append(f"{name} {fmt(o)} {fmt(r['managed_tflops'])} {fmt(fl)} {fmt(cu)}  {fmt(ratio_f, '7.2f')}  "
                     f"{fmt(ratio_c, '7.2f')}  {fmt(err, '7.1e')}"
                     + (f"  [{'; '.join(f'{k}: {v}' for k, v in r['errors'].items())}]" if r.get("errors") else ""))
    return "\n".join(lines)


def format_bwd_table(rows):
    """The backward rows: TFLOP/s (2.5x the forward's FLOPs) of ours (default and deterministic mode), flash, cuDNN;
    ratios; det/ours is the deterministic mode's time over the default's; rel.err the worst of dq, dk, dv."""
    lines = ["bf16 bwd TFLOP/s              ours    det   sm80  flash  cudnn  ours/fl  ours/cu  det/ours  rel.err"]
    for r in rows:
        if r["pass"] != "bwd":
            continue
        name = describe_shape(r).ljust(28)
        o, det, fl, cu = r["ours_tflops"], r.get("ours_det_tflops"), r["flash_tflops"], r["cudnn_tflops"]
        ratio_f = o / fl if o and fl else None
        ratio_c = o / cu if o and cu else None
        lines.append(f"{name} {fmt(o)} {fmt(det)} {fmt(r.get('ours_sm80_tflops'))} {fmt(fl)} {fmt(cu)}  {fmt(ratio_f, '7.2f')}  {fmt(ratio_c, '7.2f')}  "
                     f"{fmt(r.get('det_ratio'), '8.2f')}  {fmt(r['ours_rel_err'], '7.1e')}"
                     + (f"  [{'; '.join(f'{k}: {v}' for k, v in r['errors'].items())}]" if r.get("errors") else ""))
    return "\n".join(lines)


def describe_decode(r):
    """A decode row's name from whichever of TARGETS.md's fields bench/decode.py filled in."""
    parts = [f"d{r.get('d', '?')}", f"b{r.get('b', '?')}", f"h{r.get('h', '?')}/{r.get('hkv', r.get('h', '?'))}"]
    sk = r.get("sk")
    if isinstance(sk, int):
        parts.append(f"sk{sk // 1024}k" if sk % 1024 == 0 else f"sk{sk}")
    if r.get("paged_block"):
        parts.append(f"paged{r['paged_block']}")
    return "decode " + " ".join(parts)


def format_decode_table(rows):
    """The decode rows (bench/decode.py): times in microseconds, K/V bandwidth in TB/s, ours over flash's time."""
    lines = ["bf16 decode                   ours_us  flash_us  cudnn_us  ours TB/s  copy TB/s  fl/ours"]
    for r in rows:
        if r["pass"] != "decode":
            continue
        us = {k: (r.get(f"{k}_ms") * 1e3 if isinstance(r.get(f"{k}_ms"), (int, float)) else None) for k in ("ours", "flash", "cudnn")}
        speed = us["flash"] / us["ours"] if us["ours"] and us["flash"] else None
        errs = r.get("errors")
        lines.append(f"{describe_decode(r)[:28].ljust(28)} {fmt(us['ours'], '8.1f')}  {fmt(us['flash'], '8.1f')}  "
                     f"{fmt(us['cudnn'], '8.1f')}  {fmt(r.get('ours_tbps'), '9.2f')}  {fmt(r.get('copy_tbps'), '9.2f')}  "
                     f"{fmt(speed, '7.2f')}" + (f"  [{'; '.join(f'{k}: {v}' for k, v in errs.items())}]" if errs else ""))
    return "\n".join(lines)


def format_interop(managed, c):
    m_us = managed.get("call_us") if managed else None
    c_us = c.get("call_us") if c else None
    line = (f"interop (host us per Forward call, b1 s128 h1 d64, median): C#api {fmt(m_us, '.2f')}, "
            f"C {fmt(c_us, '.2f')}")
    if m_us is not None and c_us is not None:
        diff = m_us - c_us
        line += f", difference {diff:+.2f} (target <= {INTEROP_TARGET_US:.0f}: {'met' if diff <= INTEROP_TARGET_US else 'NOT met'})"
    return line


def write_png(rows, path, card):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not available; no chart")
        return
    panels = [("forward", [r for r in rows if r["pass"] == "fwd"],
               [("ours", "ours_tflops"), ("flash", "flash_tflops"), ("cudnn", "cudnn_tflops")]),
              ("backward", [r for r in rows if r["pass"] == "bwd"],
               [("ours", "ours_tflops"), ("ours deterministic", "ours_det_tflops"), ("flash", "flash_tflops"),
                ("cudnn", "cudnn_tflops")])]
    panels = [pn for pn in panels if pn[1]]
    if not panels:
        print("# no forward or backward rows; no chart")
        return
    n = max(len(pn[1]) for pn in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(12, 0.7 * n), 5 * len(panels)), squeeze=False)
    for ax, (what, prow, series) in zip(axes[:, 0], panels):
        width = 0.8 / len(series)
        for i, (name, key) in enumerate(series):
            offset = (i - (len(series) - 1) / 2) * width
            ax.bar([x + offset for x in range(len(prow))], [r.get(key) or 0 for r in prow], width, label=name)
        ax.set_xticks(range(len(prow)))
        ax.set_xticklabels([describe_shape(r) for r in prow], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(f"TFLOP/s (bf16 {what})")
        ax.set_title(f"FlashAttention.Interop vs PyTorch SDPA, {what} - {card}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"# wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
