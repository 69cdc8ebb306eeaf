#!/usr/bin/env python3
"""Side-by-side forward benchmark on one GPU: our libflash_attention against PyTorch SDPA.

For each shape of the foundation grid (bf16; D 64 and 128; causal and not; S 1k, 4k, 16k;
B = 16384 / S; H = 2048 / D) this measures, in one process and with the same method
(triton.testing.do_bench, median, L2 flushed before every call, as shared/tools/sdpa_anchors.py):

  ours    fa_forward called through the C ABI with ctypes on torch-allocated tensors
          ([B, S, H, D], contiguous), on torch's current stream;
  flash   torch SDPA with the FLASH_ATTENTION backend (FlashAttention-2 kernels);
  cudnn   torch SDPA with the CUDNN_ATTENTION backend.

Our output is checked against the flash backend's (relative Frobenius error), so a fast but wrong
kernel shows up in the table. When --bench-exe names the managed benchmark (bench/README.md has its
contract) it runs first, in a child process, and its median goes to the `managed_ms` column: the same
kernel timed through the C# API.

Writes the TARGETS.md record ({card, date, commit, rows}) to --out and prints a table last.
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile

# ---- the C ABI (native/include/flash_attention.h), as ctypes ---------------------------------------

FA_MAX_RANK = 4
FA_DTYPE_FLOAT16, FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT32 = 1, 2, 3
FA_CAUSAL_BOTTOM_RIGHT, FA_CAUSAL_TOP_LEFT = 0, 1
# Two bf16 results of the same attention differ by a few 1e-3 (relative Frobenius norm); beyond this
# our kernel is wrong, however fast.
MAX_REL_ERR = 2e-2


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
    ]


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
        L.fa_forward_params_init.argtypes = [ctypes.POINTER(FaForwardParams)]
        L.fa_forward.argtypes = [ctypes.c_void_p, ctypes.POINTER(FaForwardParams), ctypes.c_void_p]
        for name in ("fa_context_create", "fa_context_destroy", "fa_forward_params_init", "fa_forward"):
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

def foundation_grid():
    rows = []
    for d in (64, 128):
        for causal in (0, 1):
            for s in (1024, 4096, 16384):
                h = 2048 // d
                rows.append(dict(pass_="fwd", dtype="bf16", d=d, causal=causal, b=16384 // s, h=h, hkv=h, sq=s, sk=s))
    return rows


def fwd_flops(shape):
    """4·B·H·Sq·Sk·D, halved when causal and Sq = Sk (as TARGETS.md counts)."""
    f = 4.0 * shape["b"] * shape["h"] * shape["sq"] * shape["sk"] * shape["d"]
    if shape["causal"] and shape["sq"] == shape["sk"]:
        f /= 2
    return f


def tflops(flops, ms):
    return None if ms is None or ms <= 0 else flops / ms / 1e9


def shape_key(s):
    """Identity of a shape; tolerant of a managed line that leaves out hkv or writes causal as a bool."""
    return (str(s["dtype"]), int(s["d"]), int(bool(s["causal"])), int(s["b"]), int(s["h"]),
            int(s.get("hkv", s["h"])), int(s["sq"]), int(s["sk"]))


# ---- the managed benchmark (child process) ---------------------------------------------------------

def run_managed(exe, shapes, lib, warmup, iters, log):
    """Runs the C# bench once for all shapes; returns {shape_key: row} from its JSON lines."""
    if not exe:
        return {}, None, None
    if not os.path.exists(exe):
        return {}, f"{exe} not found", None
    spec = [dict(dtype=s["dtype"], d=s["d"], causal=s["causal"], b=s["b"], h=s["h"], hkv=s["hkv"],
                 sq=s["sq"], sk=s["sk"]) for s in shapes]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    env = dict(os.environ)
    if lib:
        env["FLASH_ATTENTION_NATIVE_PATH"] = lib
    cmd = [exe, "--shapes", spec_path, "--warmup", str(warmup), "--iters", str(iters), "--interop"]
    print("# managed bench:", " ".join(cmd), file=log, flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    except Exception as e:  # noqa: BLE001 - any failure is reported, the PyTorch side still runs
        return {}, f"bench exe did not run: {e}", None
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
        except (ValueError, KeyError) as e:
            print(f"# managed: unreadable line ({e}): {line}", file=log)
    for line in p.stderr.splitlines()[-20:]:
        print("# managed stderr:", line, file=log)
    err = None if p.returncode == 0 else f"bench exe exit code {p.returncode}"
    return out, err, interop


# ---- main ------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.environ.get("FLASH_ATTENTION_NATIVE_PATH", "artifacts/native/libflash_attention.so"),
                    help="path of libflash_attention.so (a folder is accepted)")
    ap.add_argument("--bench-exe", default=None, help="the self-contained FlashAttention.Bench (optional)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "build/gpu-test"), "bench.json"))
    ap.add_argument("--table", default=None, help="also write the table to this file")
    ap.add_argument("--png", default=None, help="bar chart of TFLOP/s (needs matplotlib)")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measuring time, ms")
    ap.add_argument("--quick", action="store_true", help="only S 1k and 4k")
    args = ap.parse_args()

    lib_path = args.lib
    if os.path.isdir(lib_path):
        lib_path = os.path.join(lib_path, "libflash_attention.so")
    lib_path = os.path.abspath(lib_path)

    shapes = foundation_grid()
    if args.quick:
        shapes = [s for s in shapes if s["sq"] <= 4096]

    log = sys.stdout
    # The managed bench runs first, before this process holds GPU memory.
    managed, managed_err, interop = run_managed(args.bench_exe, shapes, lib_path, 20, 100, log)
    if managed_err:
        print("# managed bench:", managed_err, flush=True)

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

    def bench(fn):
        return do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    rows = []
    any_error = False
    for s in shapes:
        torch.manual_seed(0)
        b, h, hkv, sq, sk, d = s["b"], s["h"], s["hkv"], s["sq"], s["sk"], s["d"]
        causal = bool(s["causal"])
        dt = torch.bfloat16 if s["dtype"] == "bf16" else torch.float16
        code = FA_DTYPE_BFLOAT16 if s["dtype"] == "bf16" else FA_DTYPE_FLOAT16
        # PyTorch's natural layout [B, H, S, D] for SDPA (as the anchors); ours [B, S, H, D] contiguous.
        q = torch.randn(b, h, sq, d, device=dev, dtype=dt)
        k = torch.randn(b, hkv, sk, d, device=dev, dtype=dt)
        v = torch.randn(b, hkv, sk, d, device=dev, dtype=dt)
        q2, k2, v2 = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        o2 = torch.full_like(q2, float("nan"))
        row = dict(**{"pass": s["pass_"]}, dtype=s["dtype"], d=d, causal=int(causal), b=b, h=h, hkv=hkv, sq=sq, sk=sk,
                   paged_block=None, ours_ms=None, flash_ms=None, cudnn_ms=None, ours_tflops=None,
                   flash_tflops=None, cudnn_tflops=None, ours_tbps=None, copy_tbps=None,
                   managed_ms=None, managed_tflops=None, ours_rel_err=None, errors={})
        flops = fwd_flops(s)

        ref = None
        for name, be in backends.items():
            try:
                with sdpa_kernel([be]):
                    f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=(h != hkv))  # noqa: E731
                    o = f()
                    if ref is None:
                        ref = o
                    row[f"{name}_ms"] = bench(f)
                    row[f"{name}_tflops"] = tflops(flops, row[f"{name}_ms"])
            except Exception as e:  # noqa: BLE001
                row["errors"][name] = str(e).split("\n")[0][:200]

        try:
            p = FaForwardParams()
            fa.check(fa.lib.fa_forward_params_init(ctypes.byref(p)), "fa_forward_params_init")
            p.q, p.k, p.v, p.out = (describe(t, code) for t in (q2, k2, v2, o2))
            p.causal = int(causal)
            p.causal_alignment = FA_CAUSAL_TOP_LEFT  # PyTorch's is_causal; equal to bottom-right when sq == sk
            pp = ctypes.byref(p)

            def ours():
                st = fa.lib.fa_forward(ctx, pp, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
                if st != 0:
                    fa.check(st, "fa_forward")

            ours()
            torch.cuda.synchronize()
            if ref is not None:
                r = ref.transpose(1, 2).float()
                diff = float((o2.float() - r).norm() / r.norm())
                if math.isnan(diff) or math.isinf(diff):
                    raise RuntimeError("our output holds NaN/Inf (the poison was not overwritten everywhere?)")
                row["ours_rel_err"] = diff
                if diff > MAX_REL_ERR:
                    row["errors"]["mismatch"] = f"relative error {diff:.2e} against the flash backend exceeds {MAX_REL_ERR}"
            row["ours_ms"] = bench(ours)
            row["ours_tflops"] = tflops(flops, row["ours_ms"])
        except Exception as e:  # noqa: BLE001
            row["errors"]["ours"] = str(e).split("\n")[0][:300]

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
        del q, k, v, q2, k2, v2, o2, ref
        torch.cuda.empty_cache()

    fa.lib.fa_context_destroy(ctx)

    commit = args.commit
    if not commit:
        try:
            commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip() or None
        except OSError:
            commit = None
    record = dict(card=card, date=datetime.date.today().isoformat(), commit=commit or "unknown",
                  torch=torch.__version__, cudnn=torch.backends.cudnn.version(), managed_interop=interop, rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)

    table = format_table(rows)
    if interop and interop.get("call_us") is not None:
        table += (f"\nmanaged Forward call, host cost: {interop['call_us']:.2f} us median "
                  f"(min {interop.get('min_call_us', float('nan')):.2f}; tiny shape, launches queued)")
    if args.table:
        with open(args.table, "w") as f:
            f.write(table + "\n")
    if args.png:
        write_png(rows, args.png, card)
    print(f"# wrote {args.out}")
    print(table)
    return 1 if any_error else 0


def fmt(x, spec="6.0f"):
    return format(x, spec) if isinstance(x, (int, float)) and x is not None and not math.isnan(x) else "-".rjust(len(format(0, spec)))


def format_table(rows):
    lines = ["bf16 fwd TFLOP/s     ours  C#api  flash  cudnn  ours/fl  ours/cu  rel.err"]
    for r in rows:
        name = f"d{r['d']} {'causal' if r['causal'] else 'full  '} s{r['sq'] // 1024}k".ljust(19)
        o, fl, cu = r["ours_tflops"], r["flash_tflops"], r["cudnn_tflops"]
        ratio_f = o / fl if o and fl else None
        ratio_c = o / cu if o and cu else None
        err = r["ours_rel_err"]
        lines.append(f"{name} {fmt(o)} {fmt(r['managed_tflops'])} {fmt(fl)} {fmt(cu)}  {fmt(ratio_f, '7.2f')}  "
                     f"{fmt(ratio_c, '7.2f')}  {fmt(err, '7.1e')}"
                     + (f"  [{'; '.join(f'{k}: {v}' for k, v in r['errors'].items())}]" if r.get("errors") else ""))
    return "\n".join(lines)


def write_png(rows, path, card):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not available; no chart")
        return
    labels = [f"d{r['d']}{' c' if r['causal'] else ''} {r['sq'] // 1024}k" for r in rows]
    series = [("ours", "ours_tflops"), ("flash", "flash_tflops"), ("cudnn", "cudnn_tflops")]
    width = 0.27
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for i, (name, key) in enumerate(series):
        ax.bar([x + (i - 1) * width for x in range(len(rows))], [r[key] or 0 for r in rows], width, label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("TFLOP/s (bf16 forward)")
    ax.set_title(f"FlashAttention.Interop vs PyTorch SDPA - {card}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"# wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
