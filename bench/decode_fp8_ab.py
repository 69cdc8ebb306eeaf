#!/usr/bin/env python3
"""A/B of builds of the fp8 (e4m3) KV-cache decode kernel, side by side in one process on one GPU.

  python3 bench/decode_fp8_ab.py --lib def=build/ab_def --lib k16s3b3=build/ab_k16s3b3 [--lengths 4096,32768]
                                 [--rounds 2] [--out ab.json]

Each --lib is a build of the library (its folder or .so), typically one with FA_DECODE_FP8_* overrides
(native/kernels/sm80/decode_traits.h). Shape: bench/decode.py's contiguous B 16 rows (32/8 heads, D 128, one bf16
query token, no append), the cache quantized to e4m3 per KV head as decode.py's fp8 rows. Per length, every build
times its fp8 call and its bf16 call on the same caches (bench/decode.py's _ours_fp8 / _ours: triton do_bench,
median, L2 flushed), the builds interleaved over `rounds` rounds (median of the rounds); the fp8 output is checked
against SDPA on the dequantized cache, as decode.py does. Prints per build and length: the fp8 kernel's registry name
(the tile: 16x<BlockN>_<warps>w<stages>s[<MinBlocks>b]), its split count, fp8 us, bf16 us, bf16/fp8 (the goal: 1.8 at
32k) and fp8 against the first build's fp8 time.
"""
import argparse
import ctypes
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import decode as dec  # noqa: E402
from common import FaLib, lib_file  # noqa: E402


def fp8_kernel_name(fa):
    """The registry name of this build's contiguous bf16-q fp8-cache decode kernel at D 128 (None if not built)."""
    n = ctypes.c_int32()
    fa.check(fa.lib.fa_kernel_count(ctypes.byref(n)), "fa_kernel_count")
    for i in range(n.value):
        name = ctypes.c_char_p()
        if fa.lib.fa_kernel_name(i, ctypes.byref(name)) == 0 and name.value:
            s = name.value.decode()
            if s.startswith(f"sm80_decode_bf16_hdim{dec.D}_e4m3kv_") and "_paged" not in s:
                return s
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", action="append", required=True, help="name=path (repeat; the first is the reference)")
    ap.add_argument("--lengths", default="32768", help="cache lengths, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--bitwise", action="store_true",
                    help="also count the elements of each build's fp8 output whose bits differ from the first build's "
                         "(a change that keeps the arithmetic, e.g. FA_DECODE_CLUSTER_SPLITS, must leave none)")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from triton.testing import do_bench

    def bench(fn):
        return do_bench(fn, warmup=25, rep=100, return_mode="median")

    libs = []
    for spec in args.lib:
        name, _, path = spec.partition("=")
        fa = FaLib(lib_file(path), name).open(torch.cuda.current_device())
        libs.append((name, fa, fp8_kernel_name(fa)))
    dev = torch.device("cuda")
    B, HQ, HKV, D, SQ = dec.B, dec.HQ, dec.HKV, dec.D, dec.SQ
    results = []
    try:
        for s in [int(x) for x in args.lengths.split(",")]:
            torch.manual_seed(s)
            q = torch.randn(B, HQ, SQ, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn(B, HKV, s, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn(B, HKV, s, D, device=dev, dtype=torch.bfloat16)
            q2 = q.transpose(1, 2).contiguous()
            kc, vc = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
            del k, v
            lens = torch.full((B,), s, dtype=torch.int32, device=dev)
            k8, v8, kd, vd, kdeq, vdeq = dec.fp8_cache_of(kc, vc, torch)
            ref8 = F.scaled_dot_product_attention(q, kdeq, vdeq, enable_gqa=True)
            del kdeq, vdeq
            times = {name: {"fp8": [], "bf16": []} for name, _, _ in libs}
            rows = {}
            outs = {}  # --bitwise: each build's fp8 output of its first round
            for rnd in range(args.rounds):
                order = libs if rnd % 2 == 0 else libs[::-1]
                for name, fa, kname in order:
                    r8 = dec.new_row(s, None, "fp8_cache")
                    r16 = dec.new_row(s, None, None)
                    try:
                        kept = [] if args.bitwise and name not in outs else None
                        dec._ours_fp8(fa, fa.ctx, r8, q2, k8, v8, kd, vd, lens, ref8, bench, torch, outs=kept)
                        if kept:
                            outs[name] = kept[0]
                        dec._ours(fa, fa.ctx, r16, q2, kc, vc, lens, s, None, None, bench, torch)
                    except Exception as e:  # noqa: BLE001
                        r8["errors"]["ours"] = str(e).split("\n")[0][:300]
                    times[name]["fp8"].append(r8["ours_ms"])
                    times[name]["bf16"].append(r16["ours_ms"])
                    rows[name] = (r8, kname)
            first_fp8 = None
            for name, _, kname in libs:
                r8 = rows[name][0]
                f8 = [t for t in times[name]["fp8"] if t]
                f16 = [t for t in times[name]["bf16"] if t]
                fp8_ms = statistics.median(f8) if f8 else None
                bf16_ms = statistics.median(f16) if f16 else None
                if first_fp8 is None:
                    first_fp8 = fp8_ms
                res = {"variant": name, "kernel": kname, "sk": s, "splits": r8.get("ours_splits"),
                       "fp8_us": fp8_ms and fp8_ms * 1e3, "bf16_us": bf16_ms and bf16_ms * 1e3,
                       "bf16_over_fp8": bf16_ms / fp8_ms if fp8_ms and bf16_ms else None,
                       "fp8_vs_first": first_fp8 / fp8_ms if fp8_ms and first_fp8 else None,
                       "fp8_tbps": dec.kv_bytes(s, elem=1) / fp8_ms / 1e9 if fp8_ms else None,
                       "fp8_rel_err": r8.get("ours_rel_err"), "fp8_rounds_us": [t * 1e3 for t in f8],
                       "errors": r8.get("errors") or None}
                if args.bitwise and name in outs and libs[0][0] in outs:
                    res["fp8_bits_differ"] = int((outs[name].view(torch.int16) != outs[libs[0][0]].view(torch.int16)).sum())
                results.append(res)
                print("#", json.dumps(res), flush=True)
            del q, q2, kc, vc, k8, v8, ref8, outs
            torch.cuda.empty_cache()
    finally:
        for _, fa, _ in libs:
            fa.close()
    print(f"{'variant':10s} {'sk':>6s} {'fp8 kernel':44s} {'splits':>6s} {'fp8 us':>8s} {'bf16 us':>8s} "
          f"{'bf16/fp8':>8s} {'vs first':>8s} {'fp8 TB/s':>8s}")

    def f(x, spec):
        return format(x, spec) if isinstance(x, (int, float)) else "-"

    for r in results:
        print(f"{r['variant']:10s} {r['sk']:6d} {str(r['kernel']):44s} {f(r['splits'], '6d')} {f(r['fp8_us'], '8.1f')} "
              f"{f(r['bf16_us'], '8.1f')} {f(r['bf16_over_fp8'], '8.3f')} {f(r['fp8_vs_first'], '8.3f')} "
              f"{f(r['fp8_tbps'], '8.2f')}" + (f"  bits differ {r['fp8_bits_differ']}" if "fp8_bits_differ" in r else "")
              + (f"  ERR {r['errors']}" if r["errors"] else ""))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
