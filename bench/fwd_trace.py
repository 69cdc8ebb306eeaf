"""Where a tile's time goes in the sm90 forward: reads the clock64 stamps of a build configured with
-DFA_SM90_FWD_TRACE=ON (native/kernels/sm90/fwd_trace.cuh; the head-dim-128 bf16 kernels only) after one call per
shape and prints each phase's median in cycles and in key-block times (the median main-loop iteration), the tile's
fixed cost beyond its key blocks, and the producer's Q latency. A measuring tool, not a benchmark (the stamps move
the kernel's timing a little: compare trace builds with trace builds).

    cmake -S . -B build/trace -DFA_CUDA_ARCHS=90a -DFA_HEAD_DIMS=128 -DFA_BUILD_TESTS=OFF -DFA_SM90_FWD_TRACE=ON
    cmake --build build/trace -j16
    python3 bench/fwd_trace.py --lib build/trace [--shapes 16x16x1024,4x16x4096] [--causal]
"""
import argparse
import ctypes
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from common import FaLib, dtype_code, lib_file, run_traced  # noqa: E402

CTAS, TILES, ROLES, EVENTS = 132, 40, 4, 8


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def read(lib):
    buf = (ctypes.c_longlong * (CTAS * TILES * ROLES * EVENTS))()
    got = lib.lib.fa_debug_fwd_trace(buf, ctypes.sizeof(buf))
    if got <= 0:
        raise RuntimeError(f"fa_debug_fwd_trace: {got}")
    return lambda c, t, r, e: buf[((c * TILES + t) * ROLES + r) * EVENTS + e]


def analyse(at, label):
    names = ["q wait", "k wait", "first blk", "loop/iter", "last pv", "epilogue", "to next"]
    per = {n: [] for n in names}
    tile_total, blocks, cta_span, qlat, kfirst = [], [], [], [], []
    for c in range(CTAS):
        for r in (1, 2):
            first, last = None, None
            for t in range(TILES):
                e = [at(c, t, r, i) for i in range(EVENTS)]
                if e[0] == 0 or e[6] == 0:
                    continue
                nb = e[7] >> 32
                if nb < 2:
                    continue
                blocks.append(nb)
                per["q wait"].append(e[1] - e[0])
                per["k wait"].append(e[2] - e[1])
                per["first blk"].append(e[3] - e[2])
                per["loop/iter"].append((e[4] - e[3]) / (nb - 1))
                per["last pv"].append(e[5] - e[4])
                per["epilogue"].append(e[6] - e[5])
                if t + 1 < TILES and at(c, t + 1, r, 0) != 0:
                    per["to next"].append(at(c, t + 1, r, 0) - e[6])
                    tile_total.append(at(c, t + 1, r, 0) - e[0])
                first = e[0] if first is None else first
                last = e[6]
                if r == 1:
                    p = [at(c, t, 0, i) for i in range(EVENTS)]
                    if p[2]:
                        qlat.append(e[1] - p[2])  # Q issued -> consumer 0 saw it
                        kfirst.append(p[1] - p[0])
            if first is not None:
                cta_span.append(last - first)
    if not blocks:
        print(f"== {label}: no traced tile of two or more key blocks (a build without the trace, or S <= 128)")
        return
    it = med(per["loop/iter"])
    print(f"== {label}: key blocks per tile {med(blocks)}, tiles traced {len(blocks)}")
    for n in names:
        m = med(per[n])
        print(f"  {n:10s} median {m:9.0f} cycles = {m / it:5.2f} blocks   mean {statistics.fmean(per[n]) if per[n] else 0:9.0f}")
    tt = med(tile_total)
    print(f"  tile total median {tt:.0f} cycles = {tt / it:.2f} blocks (overhead {tt / it - med(blocks):.2f} blocks)")
    print(f"  producer: Q issue -> consumer 0 has it median {med(qlat):.0f}; tile top -> first K slot free {med(kfirst):.0f}")
    if cta_span:
        print(f"  CTA span (first tile top -> last epilogue end, per consumer) min {min(cta_span)} "
              f"median {med(cta_span):.0f} max {max(cta_span)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--shapes", default="16x16x1024,4x16x4096", help="BxHxS,... (D 128, bf16)")
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    lib = FaLib(lib_file(args.lib)).open()
    lib.lib.fa_debug_fwd_trace.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    code = dtype_code("bf16")
    for spec in args.shapes.split(","):
        b, h, s = (int(x) for x in spec.split("x"))
        q, k, v = (torch.randn(b, s, h, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        o = torch.empty_like(q)
        p = lib.forward_params(code, q, k, v, o, args.causal)
        run_traced(lib.forward_call(p), lib.lib.fa_debug_fwd_trace_clear, warmups=3)
        analyse(read(lib), f"B{b} H{h} S{s} D128 {'causal' if args.causal else 'full'}")


if __name__ == "__main__":
    main()
