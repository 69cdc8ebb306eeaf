"""Forward or backward A/B/C...: several builds of libflash_attention timed on the same tensors in one process, with
cuDNN's SDPA as the anchor, the order of the builds rotated between rounds (so none is always timed first), the median of
the rounds kept. For kernel experiments: build the variants side by side (e.g. with -DCMAKE_CUDA_FLAGS=-D...),
then

    python3 bench/ab.py --lib base=build/a --lib try=build/b [--pass bwd [--det]] [--dtype bf16] [--quick] [--path sm80]

prints TFLOP/s per build and cuDNN, and each build over the first. Outputs (backward: dq, dk, dv) are checked
against cuDNN's (relative Frobenius error above common.MAX_REL_ERR / MAX_BWD_REL_ERR marks the row); a build that
fails a shape shows "-". The backward rows time fa_backward alone (O and the log-sum-exp from the first build's
forward; --det: deterministic mode) against cuDNN's SDPA backward. --dtype e4m3 (forward only): each build's fp8
forward (bf16 out, descales of 1) on bf16 normals rounded to e4m3, cuDNN's bf16 SDPA on the same values as the
anchor, outputs within common.MAX_FP8_REL_ERR of it. --alibi on (forward, 16-bit): each build's forward carries ALiBi's
standard slopes (fwd.alibi_slopes, [H]), outputs checked against fwd.alibi_reference (float32 SDPA with the bias, one
head at a time) instead of cuDNN's, which stays the timing anchor (without a bias); --alibi both: each build twice,
NAME without slopes and NAME+alibi with them, so that one run gives every build's ALiBi cost (NAME+alibi over NAME) and
the builds' plain rows side by side. --dropout P (16-bit): every build's call (forward, or backward from the first
build's forward) with dropout p = P under one seed and offset, so that all draw the same mask: each build's outputs
are checked against the first build's (cuDNN's own dropout draws another mask), and cuDNN's SDPA with the same
dropout_p is the timing anchor. Needs torch and a GPU."""
import argparse
import math
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from common import (BENCH_DROPOUT_OFFSET, BENCH_DROPOUT_SEED, MAX_BWD_REL_ERR, MAX_FP8_REL_ERR, MAX_REL_ERR,  # noqa: E402
                    FaLib, Timer, dtype_code, first_line, lib_file, rel_err, tflops)
from fa_abi import FA_PATH_AUTO, FA_PATH_SM80, FA_PATH_SM90  # noqa: E402
from inputs import sdpa_inputs, torch_dtype  # noqa: E402
from shapes import fwd_row, parse_rows, pass_flops, shapes_grid  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", action="append", required=True, help="NAME=PATH of a build (a folder is accepted)")
    ap.add_argument("--pass", dest="pass_", default="fwd", choices=("fwd", "bwd"))
    ap.add_argument("--det", action="store_true", help="backward: the deterministic mode")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "e4m3"), help="e4m3: the forward only")
    ap.add_argument("--quick", action="store_true", help="S 1k and 4k only")
    ap.add_argument("--d", default="", help="comma-separated head dims to keep (default: all of the grid); one outside "
                    "the grid adds the grid's rows at that head dim")
    ap.add_argument("--rows", default="", help="comma-separated rows BxHxSxD (c appended: causal), e.g. 8x32x2048x64,"
                    "1x8x4096x64c, 4x32/8x4096x128c (32 q and 8 k/v heads), instead of the grid (q and k/v heads H, "
                    "Sq = Sk = S; --d and --quick then do not apply)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rep", type=int, default=30)
    ap.add_argument("--path", default="auto", choices=("auto", "sm80", "sm90"),
                    help="the kernel path every build is forced to (default: each build's own choice)")
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="16-bit: dropout p in (0, 1) on every call (one seed and offset: the same mask in every build)")
    ap.add_argument("--bitwise", action="store_true",
                    help="backward --det, or forward --dropout: every build's outputs must equal the first build's bit "
                         "for bit (a change that keeps the deterministic adds' order, e.g. FA_SM90_BWD_WS_DET, or one "
                         "that only moves where the dropout mask is drawn, e.g. FA_SM90_FWD_DROPOUT_MASKER_MAX_D, must "
                         "not change a bit)")
    ap.add_argument("--alibi", default="off", choices=("off", "on", "both"),
                    help="forward: ALiBi's standard slopes on every build's call (on), or each build with and without "
                         "them (both: NAME and NAME+alibi)")
    args = ap.parse_args(argv)
    args.kernel_path = {"auto": FA_PATH_AUTO, "sm80": FA_PATH_SM80, "sm90": FA_PATH_SM90}[args.path]
    if args.dtype == "e4m3" and args.pass_ != "fwd":
        ap.error("--dtype e4m3 times the forward only (the library has no fp8 backward)")
    if args.alibi != "off" and (args.pass_ != "fwd" or args.dtype == "e4m3"):
        ap.error("--alibi times the 16-bit forward only")
    if args.bitwise and not ((args.pass_ == "bwd" and args.det) or (args.pass_ == "fwd" and args.dropout > 0)):
        ap.error("--bitwise compares the deterministic backward's gradients (--pass bwd --det) or the forward's "
                 "outputs under dropout (--dropout P)")
    if not 0.0 <= args.dropout < 1.0 or (args.dropout > 0 and args.dtype == "e4m3"):
        ap.error("--dropout takes p in [0, 1), 16-bit only (the fp8 forward has no dropout)")
    # (p, seed, offset) of every call: FaLib.forward_params' and backward_params' dropout.
    args.drop = (args.dropout, BENCH_DROPOUT_SEED, BENCH_DROPOUT_OFFSET) if args.dropout > 0 else None
    args.libs = []
    for spec in args.lib:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--lib takes NAME=PATH, got {spec!r}")
        args.libs.append((name, lib_file(path)))
    return args


def fwd_setup(args, libs, q, k, v, h, hkv, causal, code):
    """The forward: cuDNN's SDPA on expanded k/v as the anchor; each build's fa_forward into a NaN-poisoned O.
    e4m3: q, k, v are rounded to e4m3 for ours, the anchor runs on the same values in bf16 (exact). make_call(lib,
    alibi): with ALiBi's standard slopes when alibi is true (--alibi), checked against fwd.alibi_reference."""
    fp8 = args.dtype == "e4m3"
    if fp8:
        q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
        q, k, v = (t.to(torch.bfloat16) for t in (q8, k8, v8))
    ke, ve = (t.repeat_interleave(h // hkv, dim=1) for t in (k, v))

    def anchor():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, ke, ve, is_causal=causal, dropout_p=args.dropout)
    ref = anchor().transpose(1, 2)
    q2, k2, v2 = (t.transpose(1, 2).contiguous() for t in ((q8, k8, v8) if fp8 else (q, k, v)))
    cap = MAX_FP8_REL_ERR if fp8 else MAX_REL_ERR
    slopes = ref_alibi = None
    if args.alibi != "off":
        from fwd import alibi_reference, alibi_slopes
        slopes = alibi_slopes(h, q2.device)
        ref_alibi = alibi_reference(q2, k2, v2, slopes, causal)

    def make_call(lib, alibi=False):
        o = torch.full(q2.shape, float("nan"), device=q2.device, dtype=torch.bfloat16 if fp8 else q2.dtype)
        params = lib.forward_params(code, q2, k2, v2, o, causal, out_code=dtype_code("bf16") if fp8 else None,
                                    path=args.kernel_path, alibi_slopes=slopes if alibi else None, dropout=args.drop)
        return lib.forward_call(params), (params, o), (o,)

    return anchor, make_call, checker(args, lambda alibi: (ref_alibi if alibi else ref,), cap)


def bit_diff(outs, refs):
    """How many elements of outs differ from refs in their bits (NaN payloads and signed zeros included)."""
    return sum(int((a.view(torch.int16) != r.view(torch.int16)).sum()) for a, r in zip(outs, refs))


def checker(args, reference, cap, what="rel.err"):
    """check(outs, alibi): None or a note ("<what> <error>"). Against reference(alibi) (cuDNN's, or the ALiBi
    reference), relative error up to cap; with --dropout against the first build's outputs (kept at its first check),
    whose mask every build draws; with --bitwise also bit for bit against the first build's outputs."""
    first = {}  # the first build's outputs (--dropout, --bitwise), kept at its first check
    bitwise = getattr(args, "bitwise", False)

    def check(outs, alibi=False):
        if (args.drop is not None or bitwise) and alibi not in first:
            first[alibi] = tuple(t.clone() for t in outs)
            if args.drop is not None:
                # (the reference of the builds after it: at least finite, so not NaN-poisoned, i.e. written)
                self_err = max(rel_err(t, t) for t in outs)
                return None if self_err == 0 else "non-finite outputs (the --dropout reference of the builds after it)"
        elif bitwise:
            n = bit_diff(outs, first[alibi])
            if n:
                return f"{n} elements differ in bits from the first build"
        refs = first[alibi] if args.drop is not None else reference(alibi)
        err = max(rel_err(a, r) for a, r in zip(outs, refs))
        return f"{what} {err:.2e}" if math.isnan(err) or err > cap else None
    return check


def bwd_setup(args, libs, q, k, v, h, hkv, causal, code):
    """The backward: cuDNN's SDPA backward (bwd.torch_bwd_call: autograd.grad over one forward, as the benchmark
    times it) as the anchor; each build's fa_backward (O and LSE from the forward of the first build that serves the
    shape) into poisoned gradients."""
    from bwd import our_forward_for_bwd, torch_bwd_call
    do = torch.randn_like(q)
    notes = []
    anchor, gradients = torch_bwd_call("cudnn", SDPBackend.CUDNN_ATTENTION, q, k, v, do, h, hkv, causal, notes,
                                       args.dropout)
    for note in notes:
        print("#", note, flush=True)
    ref = tuple(t.transpose(1, 2) for t in gradients(anchor()))
    q2, k2, v2, do2 = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
    lse = torch.full((q.shape[0], h, q.shape[2]), float("nan"), device=q.device, dtype=torch.float32)
    # O and LSE from the first build that serves the shape (one built without this head dim is skipped; the backward
    # rows of the builds that cannot serve it then say so).
    o2, failures = None, []
    for name, lib in libs:
        try:
            o2 = our_forward_for_bwd(lib, code, q2, k2, v2, causal, lse, dropout=args.drop)
            break
        except RuntimeError as e:
            failures.append(f"{name}: {first_line(e, 120)}")
    if o2 is None:
        raise RuntimeError("no build runs the forward for this backward row: " + "; ".join(failures))

    def make_call(lib, alibi=False):
        grads = tuple(torch.full_like(t, float("nan")) for t in (q2, k2, v2))
        params = lib.backward_params(code, (q2, k2, v2, o2, do2) + grads, lse, causal, args.det,
                                     path=args.kernel_path, dropout=args.drop)
        return lib.backward_call(params), (params, grads), grads

    return anchor, make_call, checker(args, lambda alibi: ref, MAX_BWD_REL_ERR, "grad rel.err")


def main(argv=None):
    args = parse_args(argv)
    bench = Timer(args.warmup, args.rep)
    libs = [(name, FaLib(path, name).open()) for name, path in args.libs]
    # The timed calls: (name, library, with ALiBi slopes) per build, or two per build with --alibi both.
    runs = [(name + ("+alibi" if alibi else ""), lib, alibi) for name, lib in libs
            for alibi in {"off": (False,), "on": (True,), "both": (False, True)}[args.alibi]]
    keep = {int(x) for x in args.d.split(",") if x}
    # A head dim outside the grid (e.g. 96 or 192, which run a larger kernel with zero-filled columns) gets the grid's
    # rows for it.
    grid = shapes_grid(args.quick, args.pass_, (args.dtype,), sorted(keep) if keep else (64, 128, 256))
    shapes = [s for s in grid if not s.get("varlen") and (not keep or s["d"] in keep)]
    if args.rows:
        shapes = [fwd_row(d, int(causal), b, h, hkv, sq, args.pass_, args.dtype)
                  for b, h, hkv, sq, d, causal in parse_rows(args.rows)]
    names = [n for n, _, _ in runs]
    # --alibi both: each build's ALiBi cost, the time with slopes over the time without (1.05: 5% slower).
    costs = [n for n, _ in libs] if args.alibi == "both" else []
    print(f"{'row':26s} " + " ".join(f"{n:>8s}" for n in names) + f" {'cudnn':>7s} " +
          " ".join(f"{n + '/' + names[0]:>10s}" for n in names[1:]) + " " +
          " ".join(f"{n + '/cu':>9s}" for n in names) + "".join(f" {n + ' alibi t':>14s}" for n in costs))
    for s in shapes:
        torch.manual_seed(0)
        h, hkv, sq, d, causal = s["h"], s["hkv"], s["sq"], s["d"], bool(s["causal"])
        code = dtype_code(s["dtype"])
        q, k, v = sdpa_inputs(s, torch_dtype("bf16" if s["dtype"] == "e4m3" else s["dtype"]))
        flops = pass_flops(s)
        setup = fwd_setup if args.pass_ == "fwd" else bwd_setup
        key = f"d{d} {'causal' if causal else 'full'} s{sq} h{h}/{hkv}" + (f" b{s['b']}" if args.rows else "")
        try:
            anchor, make_call, check = setup(args, libs, q, k, v, h, hkv, causal, code)
        except RuntimeError as e:
            print(f"{key:26s} skipped: {first_line(e, 200)}", flush=True)
            continue
        times = {"cudnn": [bench(anchor)]}
        calls, notes = {}, []
        for name, lib, alibi in runs:
            try:
                call, keep_alive, outs = make_call(lib, alibi)
                call()
                torch.cuda.synchronize()
                err = check(outs, alibi)
                if err is not None:
                    notes.append(f"{name}: {err}")
                calls[name] = (call, keep_alive)  # the params and outputs stay alive with the call
                times[name] = []
            except Exception as e:  # noqa: BLE001
                notes.append(f"{name}: {first_line(e, 120)}")
        order = [n for n in names if n in calls]
        for r in range(args.rounds):
            rot = order[r % len(order):] + order[:r % len(order)] if order else []
            for name in rot:
                times[name].append(bench(calls[name][0]))
        times["cudnn"].append(bench(anchor))
        tf = {n: tflops(flops, statistics.median(t)) for n, t in times.items() if t}
        cu = tf.get("cudnn")
        cells = [f"{tf[n]:8.0f}" if n in tf else f"{'-':>8s}" for n in names]
        ratios = [f"{tf[n] / tf[names[0]]:10.3f}" if n in tf and names[0] in tf else f"{'-':>10s}" for n in names[1:]]
        vs_cu = [f"{tf[n] / cu:9.3f}" if n in tf and cu else f"{'-':>9s}" for n in names]
        cost = [f" {tf[n] / tf[n + '+alibi']:14.3f}" if n in tf and n + "+alibi" in tf else f" {'-':>14s}"
                for n in costs]
        print(f"{key:26s} " + " ".join(cells) + f" {cu or 0:7.0f} " + " ".join(ratios) + " " + " ".join(vs_cu) +
              "".join(cost) + (("  # " + "; ".join(notes)) if notes else ""), flush=True)
        del calls
        torch.cuda.empty_cache()
    for _, lib in libs:
        lib.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
